/* helper_judge_server — a scripted OpenAI-compatible judge server for the usbx-judge tests.
 * Loopback only, one thread, many kept-alive connections; it stops by itself.
 *
 *   helper_judge_server --script S.jsonl --prompts P.json --model NAME [--key KEY]
 *       [--stats FILE] [--idle-exit SEC] [--max-time SEC] [--port-file FILE]
 *   helper_judge_server --write-pngs LIST W H      (writes each path of LIST as a distinct PNG)
 *
 * Script lines: {"image": PATH, "task": "math|mapping|knowledge", "answer": A,
 *                "reply1": stage-1 reply text, "caption": the caption usbx-judge must extract
 *                (stage 2 must carry the evaluation template filled with it and A),
 *                "reply2": stage-2 reply text, "faults1": [...], "faults2": [...]}
 * A fault list scripts the first attempts of a stage: "500", "503", "429", "400" (that status),
 * "429ra:N" (429 with "Retry-After: N"), "delay:MS" (the normal reply after MS ms), "hang" (no reply), "badjson" (200 with truncated JSON), "short"
 * (connection closed in the middle of the body), "reset" (connection reset, no reply), "empty"
 * (content ""), "null" (content null), "nochoices", "noscore" (content without a score).
 *
 * Every request is checked against the judge protocol: POST <any>/chat/completions, JSON body with
 * exactly model/messages/max_tokens/temperature, the model name, temperature 0, max_tokens of the
 * task and stage, one user message; stage 1: [image_url part, text part], the URL
 * "data:image;base64,..." decoding to the exact bytes of a scripted image, the task's stage-1
 * prompt; stage 2: the filled template.  A violation is answered with HTTP 400 and counted.
 * At exit the statistics go to --stats (JSON): requests, violations (and the first one),
 * attempts per image and stage, the largest number of requests in flight. */
#include "jsonl.h"
#include "png.h"
#include "util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jv.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
  char *image, *answer, *reply1, *reply2, *caption, *stage2_text;
  int task;
  uint8_t *bytes;
  size_t nbytes;
  uint64_t hash;
  jv faults[2];
  int attempts[2];
} entry;

static entry *E;
static size_t nE;
static char *prompt1[3], *tmpl2[3];
static int maxtok[2][3] = {{10240, 10240, 2048}, {10240, 10240, 1024}};
static const char *task_names[3] = {"math", "mapping", "knowledge"};
static const char *model, *api_key;
static long n_req, n_viol, n_stage[2], max_inflight, n_conn;
static char first_viol[512];

static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void violation(const char *fmt, ...) {
  n_viol++;
  if (first_viol[0]) return;
  va_list ap; va_start(ap, fmt);
  vsnprintf(first_viol, sizeof first_viol, fmt, ap);
  va_end(ap);
  fprintf(stderr, "helper_judge_server: violation: %s\n", first_viol);
}

/* Independent of usbx's formatter on purpose: plain substitution of the two named fields. */
static char *fill(const char *t, const char *f1, const char *v1, const char *f2, const char *v2) {
  usbx_buf b = {0};
  usbx_buf_append(&b, "", 0);
  char k1[64], k2[64];
  snprintf(k1, sizeof k1, "{%s}", f1);
  snprintf(k2, sizeof k2, "{%s}", f2);
  for (const char *p = t; *p;) {
    if (!strncmp(p, k1, strlen(k1))) { usbx_buf_append(&b, v1, strlen(v1)); p += strlen(k1); }
    else if (!strncmp(p, k2, strlen(k2))) { usbx_buf_append(&b, v2, strlen(v2)); p += strlen(k2); }
    else if (!strncmp(p, "{{", 2) || !strncmp(p, "}}", 2)) { usbx_buf_append(&b, p, 1); p += 2; }
    else { usbx_buf_append(&b, p, 1); p++; }
  }
  return b.data;
}

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
/* Strict base64 (padding required); NULL when malformed. */
static uint8_t *b64dec(const char *s, size_t n, size_t *out) {
  if (n % 4) return NULL;
  uint8_t *o = xmalloc(n / 4 * 3 + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i += 4) {
    int v[4];
    for (int j = 0; j < 4; j++) {
      v[j] = s[i + j] == '=' ? -2 : b64val((unsigned char)s[i + j]);
      if (v[j] == -1 || (v[j] == -2 && (i + 4 < n || j < 2))) { free(o); return NULL; }
    }
    if (v[2] == -2 && v[3] != -2) { free(o); return NULL; }
    o[k++] = (uint8_t)(v[0] << 2 | v[1] >> 4);
    if (v[2] >= 0) o[k++] = (uint8_t)((v[1] & 15) << 4 | v[2] >> 2);
    if (v[3] >= 0) o[k++] = (uint8_t)((v[2] & 3) << 6 | v[3]);
  }
  *out = k;
  return o;
}

static jv get(jv v, const char *k) {
  if (jv_get_kind(v) != JV_KIND_OBJECT) return jv_invalid();
  return jv_object_get(jv_copy(v), jv_string(k));
}
static const char *gets_(jv v, const char *k) {
  jv x = get(v, k);
  const char *s = jv_get_kind(x) == JV_KIND_STRING ? jv_string_value(x) : NULL;
  jv_free(x);
  return s;
}

static void load_prompts(const char *path) {
  size_t n;
  char *s = usbx_read_file(path, &n);
  if (!s) usbx_die("%s: %s", path, strerror(errno));
  jv root = jv_parse_sized(s, (int)n);
  free(s);
  if (!jv_is_valid(root)) usbx_die("%s: bad JSON", path);
  const char *k1[3] = {"caption", "identify", "caption"};
  const char *st1[3] = {"stage1_caption", "stage1_identify", "stage1_caption"};
  for (int t = 0; t < 3; t++) {
    jv tv = get(root, task_names[t]);
    const char *a = gets_(tv, k1[t]), *b = gets_(tv, "evaluate");
    if (!a || !b) usbx_die("%s: %s prompts missing", path, task_names[t]);
    prompt1[t] = xstrdup(a);
    tmpl2[t] = xstrdup(b);
    jv_free(tv);
    for (int s2 = 0; s2 < 2; s2++) {
      jv p = get(root, "protocol"), q = get(p, task_names[t]), r = get(q, s2 ? "stage2_evaluate" : st1[t]),
         u = get(r, "request"), m = get(u, "max_tokens");
      if (jv_get_kind(m) == JV_KIND_NUMBER) maxtok[s2][t] = (int)jv_number_value(m);
      jv_free(p); jv_free(q); jv_free(r); jv_free(u); jv_free(m);
    }
  }
  jv_free(root);
}

static void load_script(const char *path) {
  usbx_jsonl *r = usbx_jsonl_open(path);
  if (!r) usbx_die("%s: %s", path, strerror(errno));
  jv rec;
  int rc;
  size_t cap = 0;
  static const char *f1[3] = {"caption", "identified_object", "caption"};
  static const char *f2[3] = {"expected_answer", "expected_answer", "gt"};
  while ((rc = usbx_jsonl_next(r, &rec)) != 0) {
    if (rc < 0) usbx_die("%s", usbx_jsonl_error(r));
    if (nE == cap) { cap = cap ? cap * 2 : 64; E = xrealloc(E, cap * sizeof *E); }
    entry *e = &E[nE++];
    memset(e, 0, sizeof *e);
    const char *t = gets_(rec, "task");
    e->task = -1;
    for (int k = 0; k < 3; k++) if (t && !strcmp(t, task_names[k])) e->task = k;
    if (e->task < 0) usbx_die("%s: bad task", path);
#define S(f) e->f = xstrdup(gets_(rec, #f) ? gets_(rec, #f) : "")
    S(image); S(answer); S(reply1); S(reply2); S(caption);
#undef S
    e->faults[0] = get(rec, "faults1");
    e->faults[1] = get(rec, "faults2");
    e->stage2_text = fill(tmpl2[e->task], f1[e->task], e->caption, f2[e->task], e->answer);
    e->bytes = (uint8_t *)usbx_read_file(e->image, &e->nbytes);
    if (!e->bytes) e->nbytes = 0;   /* scripted as missing: never requested */
    e->hash = usbx_hash64(e->bytes ? e->bytes : (uint8_t *)"", e->nbytes, 1);
    jv_free(rec);
  }
  usbx_jsonl_close(r);
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

typedef struct {
  int fd;
  usbx_buf in, out;
  size_t out_off;
  double send_at;         /* > 0: response held until then */
  int after;              /* after sending: 0 keep, 1 close, 2 close mid-body (short) */
  bool busy, hang, reset;
} conn;

static conn *C[1024];
static int nC;

static int retry_after;   /* > 0: the next response carries "Retry-After: N" */

static void respond(conn *c, int status, const char *body, double delay, int after) {
  usbx_buf_appendf(&c->out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
                   status, status == 200 ? "OK" : "Error", strlen(body));
  if (retry_after > 0) usbx_buf_appendf(&c->out, "Retry-After: %d\r\n", retry_after);
  retry_after = 0;
  usbx_buf_append(&c->out, "\r\n", 2);
  if (after == 2) usbx_buf_append(&c->out, body, strlen(body) / 2);
  else usbx_buf_append(&c->out, body, strlen(body));
  c->send_at = delay > 0 ? usbx_now() + delay : 0;
  c->after = after;
}

static char *reply_json(const char *content, bool null_content, bool nochoices) {
  jv msg = jv_object_set(jv_object(), jv_string("role"), jv_string("assistant"));
  msg = jv_object_set(msg, jv_string("content"), null_content ? jv_null() : jv_string(content));
  jv ch = jv_object_set(jv_object(), jv_string("index"), jv_number(0));
  ch = jv_object_set(ch, jv_string("message"), msg);
  ch = jv_object_set(ch, jv_string("finish_reason"), jv_string("stop"));
  jv o = jv_object_set(jv_object(), jv_string("id"), jv_string("chatcmpl-test"));
  o = jv_object_set(o, jv_string("object"), jv_string("chat.completion"));
  o = jv_object_set(o, jv_string("model"), jv_string(model));
  if (nochoices) { jv_free(ch); o = jv_object_set(o, jv_string("choices"), jv_array()); }
  else o = jv_object_set(o, jv_string("choices"), jv_array_append(jv_array(), ch));
  jv s = jv_dump_string(o, 0);
  char *r = xstrdup(jv_string_value(s));
  jv_free(s);
  return r;
}

static void bad_request(conn *c, const char *why) {
  violation("%s", why);
  char body[700];
  snprintf(body, sizeof body, "{\"error\":{\"message\":\"protocol violation\",\"type\":\"BadRequest\"}}");
  respond(c, 400, body, 0, 0);
}

/* Answers one complete request (headers in hdr, body of blen bytes). */
static void handle(conn *c, const char *hdr, const char *body, size_t blen) {
  n_req++;
  if (strncmp(hdr, "POST ", 5) != 0) { bad_request(c, "method is not POST"); return; }
  const char *sp = strchr(hdr + 5, ' ');
  if (!sp || sp - (hdr + 5) < 17 || strncmp(sp - 17, "/chat/completions", 17) != 0) { bad_request(c, "path is not .../chat/completions"); return; }
  if (!strcasestr(hdr, "\r\nContent-Type: application/json")) { bad_request(c, "no Content-Type: application/json"); return; }
  char want[600];
  snprintf(want, sizeof want, "\r\nAuthorization: Bearer %s\r\n", api_key ? api_key : "EMPTY");
  if (!strstr(hdr, want)) { bad_request(c, "wrong or missing Authorization header"); return; }
  jv req = jv_parse_sized(body, (int)blen);
  if (!jv_is_valid(req) || jv_get_kind(req) != JV_KIND_OBJECT) { jv_free(req); bad_request(c, "body is not a JSON object"); return; }
  char why[400] = "";
  int stage = 0, ei = -1;
  jv keys = jv_keys(jv_copy(req));
  if (jv_array_length(jv_copy(keys)) != 4) snprintf(why, sizeof why, "body has %d keys, want model/messages/max_tokens/temperature", jv_array_length(jv_copy(keys)));
  jv_free(keys);
  const char *m = gets_(req, "model");
  jv temp = get(req, "temperature"), mt = get(req, "max_tokens"), msgs = get(req, "messages");
  if (!why[0] && (!m || strcmp(m, model) != 0)) snprintf(why, sizeof why, "model '%s', want '%s'", m ? m : "(none)", model);
  if (!why[0] && (jv_get_kind(temp) != JV_KIND_NUMBER || jv_number_value(temp) != 0)) snprintf(why, sizeof why, "temperature is not 0");
  if (!why[0] && jv_get_kind(mt) != JV_KIND_NUMBER) snprintf(why, sizeof why, "max_tokens missing");
  if (!why[0] && (jv_get_kind(msgs) != JV_KIND_ARRAY || jv_array_length(jv_copy(msgs)) != 1)) snprintf(why, sizeof why, "messages is not one message");
  jv msg = why[0] ? jv_null() : jv_array_get(jv_copy(msgs), 0);
  const char *role = why[0] ? NULL : gets_(msg, "role");
  if (!why[0] && (!role || strcmp(role, "user") != 0)) snprintf(why, sizeof why, "role is not user");
  jv content = why[0] ? jv_null() : get(msg, "content");
  if (!why[0] && jv_get_kind(content) == JV_KIND_ARRAY) {
    stage = 1;
    jv p0 = jv_array_get(jv_copy(content), 0), p1 = jv_array_get(jv_copy(content), 1);
    jv iu = get(p0, "image_url");
    const char *t0 = gets_(p0, "type"), *t1 = gets_(p1, "type"), *url = gets_(iu, "url"), *text = gets_(p1, "text");
    jv k0 = jv_keys(jv_copy(p0)), k1 = jv_keys(jv_copy(p1)), ki = jv_keys(jv_copy(iu));
    static const char pre[] = "data:image;base64,";
    if (jv_array_length(jv_copy(content)) != 2) snprintf(why, sizeof why, "content has %d parts, want 2", jv_array_length(jv_copy(content)));
    else if (!t0 || strcmp(t0, "image_url") != 0) snprintf(why, sizeof why, "first part is not image_url");
    else if (!t1 || strcmp(t1, "text") != 0 || !text) snprintf(why, sizeof why, "second part is not text");
    else if (jv_array_length(jv_copy(k0)) != 2 || jv_array_length(jv_copy(k1)) != 2 || jv_array_length(jv_copy(ki)) != 1)
      snprintf(why, sizeof why, "extra keys in content parts");
    else if (!url || strncmp(url, pre, sizeof pre - 1) != 0) snprintf(why, sizeof why, "image url does not start with data:image;base64,");
    else {
      size_t n;
      uint8_t *img = b64dec(url + sizeof pre - 1, strlen(url) - (sizeof pre - 1), &n);
      if (!img) snprintf(why, sizeof why, "image url is not valid base64");
      else {
        uint64_t h = usbx_hash64(img, n, 1);
        for (size_t i = 0; i < nE; i++)
          if (E[i].bytes && E[i].hash == h && E[i].nbytes == n && memcmp(E[i].bytes, img, n) == 0) { ei = (int)i; break; }
        free(img);
        if (ei < 0) snprintf(why, sizeof why, "image bytes match no scripted image (%zu bytes)", n);
        else if (strcmp(text, prompt1[E[ei].task]) != 0) snprintf(why, sizeof why, "%s: stage-1 text is not the %s prompt", E[ei].image, task_names[E[ei].task]);
      }
    }
    jv_free(p0); jv_free(p1); jv_free(iu); jv_free(k0); jv_free(k1); jv_free(ki);
  } else if (!why[0] && jv_get_kind(content) == JV_KIND_STRING) {
    stage = 2;
    const char *text = jv_string_value(content);
    for (size_t i = 0; i < nE; i++) if (strcmp(E[i].stage2_text, text) == 0) { ei = (int)i; break; }
    if (ei < 0) snprintf(why, sizeof why, "stage-2 text matches no scripted caption/answer: %.200s", text + (strlen(text) > 200 ? strlen(text) - 200 : 0));
  } else if (!why[0]) snprintf(why, sizeof why, "content is neither parts nor a string");
  if (!why[0] && (int)jv_number_value(mt) != maxtok[stage - 1][E[ei].task])
    snprintf(why, sizeof why, "max_tokens %d, want %d", (int)jv_number_value(mt), maxtok[stage - 1][E[ei].task]);
  jv_free(temp); jv_free(mt); jv_free(msgs); jv_free(msg); jv_free(content); jv_free(req);
  if (why[0]) { bad_request(c, why); return; }
  n_stage[stage - 1]++;
  entry *e = &E[ei];
  int att = e->attempts[stage - 1]++;
  const char *fault = NULL;
  jv f = e->faults[stage - 1];
  jv fv = jv_invalid();
  if (jv_get_kind(f) == JV_KIND_ARRAY && att < jv_array_length(jv_copy(f))) {
    fv = jv_array_get(jv_copy(f), att);
    if (jv_get_kind(fv) == JV_KIND_STRING) fault = jv_string_value(fv);
  }
  const char *text = stage == 1 ? e->reply1 : e->reply2;
  char *ok = NULL;
  if (!fault) { ok = reply_json(text, false, false); respond(c, 200, ok, 0, 0); }
  else if (!strncmp(fault, "delay:", 6)) { ok = reply_json(text, false, false); respond(c, 200, ok, atof(fault + 6) / 1000.0, 0); }
  else if (!strcmp(fault, "badjson")) { respond(c, 200, "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"Sco", 0, 0); }
  else if (!strcmp(fault, "short")) { ok = reply_json(text, false, false); respond(c, 200, ok, 0, 2); }
  else if (!strcmp(fault, "reset")) { c->reset = true; }
  else if (!strcmp(fault, "hang")) { c->hang = true; }
  else if (!strcmp(fault, "empty")) { ok = reply_json("", false, false); respond(c, 200, ok, 0, 0); }
  else if (!strcmp(fault, "null")) { ok = reply_json("", true, false); respond(c, 200, ok, 0, 0); }
  else if (!strcmp(fault, "nochoices")) { ok = reply_json("", false, true); respond(c, 200, ok, 0, 0); }
  else if (!strcmp(fault, "noscore")) { ok = reply_json("I cannot decide.", false, false); respond(c, 200, ok, 0, 0); }
  else if (!strncmp(fault, "429ra:", 6)) {
    retry_after = atoi(fault + 6);
    respond(c, 429, "{\"error\":{\"message\":\"slow down\",\"code\":429}}", 0, 0);
  } else if (atoi(fault) >= 400) {
    char body[200];
    snprintf(body, sizeof body, "{\"error\":{\"message\":\"scripted %d\",\"code\":%d}}", atoi(fault), atoi(fault));
    respond(c, atoi(fault), body, 0, 0);
  } else usbx_die("unknown fault '%s'", fault);
  jv_free(fv);
  free(ok);
}

static void close_conn(int i) {
  conn *c = C[i];
  if (c->reset) {
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close(c->fd);
  usbx_buf_free(&c->in); usbx_buf_free(&c->out);
  free(c);
  C[i] = C[--nC];
}

/* Parses complete requests out of c->in; returns -1 when the connection must close. */
static int process_input(conn *c) {
  while (!c->out.len && !c->hang && !c->reset) {
    if (!c->in.len) return 0;
    char *end = memmem(c->in.data, c->in.len, "\r\n\r\n", 4);
    if (!end) return c->in.len > 65536 ? -1 : 0;
    size_t hlen = (size_t)(end - c->in.data) + 4;
    char *hdr = strndup(c->in.data, hlen);
    long clen = 0;
    char *cl = strcasestr(hdr, "\r\nContent-Length:");
    if (cl) clen = atol(cl + 17);
    if (clen < 0 || clen > (1L << 30)) { free(hdr); return -1; }
    if (c->in.len < hlen + (size_t)clen) { free(hdr); return 0; }
    handle(c, hdr, c->in.data + hlen, (size_t)clen);
    if (strcasestr(hdr, "\r\nConnection: close")) c->after = c->after ? c->after : 1;
    free(hdr);
    memmove(c->in.data, c->in.data + hlen + clen, c->in.len - hlen - (size_t)clen);
    c->in.len -= hlen + (size_t)clen;
    if (c->reset) return -1;
  }
  return 0;
}

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

static void write_stats(const char *path) {
  jv o = jv_object();
  o = jv_object_set(o, jv_string("requests"), jv_number((double)n_req));
  o = jv_object_set(o, jv_string("stage1"), jv_number((double)n_stage[0]));
  o = jv_object_set(o, jv_string("stage2"), jv_number((double)n_stage[1]));
  o = jv_object_set(o, jv_string("violations"), jv_number((double)n_viol));
  o = jv_object_set(o, jv_string("first_violation"), jv_string(first_viol));
  o = jv_object_set(o, jv_string("max_inflight"), jv_number((double)max_inflight));
  o = jv_object_set(o, jv_string("connections"), jv_number((double)n_conn));
  jv att = jv_object();
  for (size_t i = 0; i < nE; i++)
    att = jv_object_set(att, jv_string(E[i].image),
                        jv_array_append(jv_array_append(jv_array(), jv_number(E[i].attempts[0])), jv_number(E[i].attempts[1])));
  o = jv_object_set(o, jv_string("attempts"), att);
  jv s = jv_dump_string(o, 0);
  FILE *f = path ? fopen(path, "w") : stdout;
  if (f) { fprintf(f, "%s\n", jv_string_value(s)); if (path) fclose(f); }
  jv_free(s);
}

static int write_pngs(const char *list, int w, int h) {
  FILE *f = fopen(list, "r");
  if (!f) usbx_die("%s: %s", list, strerror(errno));
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  uint8_t *pix = xmalloc((size_t)w * h * 3);
  while ((n = getline(&line, &cap, f)) > 0) {
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    if (!n) continue;
    usbx_rng r;
    usbx_rng_seed(&r, usbx_hash64(line, (size_t)n, 7));
    /* a smooth gradient plus a little noise: distinct files of realistic PNG size */
    uint8_t base[3] = {(uint8_t)usbx_rng_below(&r, 256), (uint8_t)usbx_rng_below(&r, 256), (uint8_t)usbx_rng_below(&r, 256)};
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        for (int k = 0; k < 3; k++)
          pix[((size_t)y * w + x) * 3 + k] = (uint8_t)(base[k] + x * (k + 1) + y * (3 - k) + (int)usbx_rng_below(&r, 8));
    char *dir = xstrdup(line);
    char *sl = strrchr(dir, '/');
    if (sl) { *sl = 0; if (usbx_mkdirs(dir) != 0) usbx_die("%s: %s", dir, strerror(errno)); }
    free(dir);
    if (usbx_png_write(line, pix, w, h, 3) != 0) usbx_die("%s: cannot write PNG", line);
  }
  free(pix); free(line);
  fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  usbx_set_progname("helper_judge_server");
  const char *script = NULL, *prompts = NULL, *stats = NULL, *port_file = NULL;
  double idle_exit = 10, max_time = 120;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--write-pngs") && i + 3 < argc) return write_pngs(argv[i + 1], atoi(argv[i + 2]), atoi(argv[i + 3]));
    if (i + 1 >= argc) usbx_die("usage: see the comment at the top of tests/helper_judge_server.c");
    const char *v = argv[++i];
    if (!strcmp(a, "--script")) script = v;
    else if (!strcmp(a, "--prompts")) prompts = v;
    else if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--key")) api_key = v;
    else if (!strcmp(a, "--stats")) stats = v;
    else if (!strcmp(a, "--port-file")) port_file = v;
    else if (!strcmp(a, "--idle-exit")) idle_exit = atof(v);
    else if (!strcmp(a, "--max-time")) max_time = atof(v);
    else usbx_die("unknown option %s", a);
  }
  if (!script || !prompts || !model) usbx_die("--script, --prompts and --model are required");
  load_prompts(prompts);
  load_script(script);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (ls < 0) usbx_die("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 256) != 0) usbx_die("bind/listen: %s", strerror(errno));
  socklen_t sl = sizeof sa;
  getsockname(ls, (struct sockaddr *)&sa, &sl);
  printf("port %d\n", ntohs(sa.sin_port));
  fflush(stdout);
  if (port_file) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", ntohs(sa.sin_port));
    if (usbx_write_file_atomic(port_file, buf, (size_t)n) != 0) usbx_die("%s: %s", port_file, strerror(errno));
  }
  double t_start = usbx_now(), t_last = t_start;
  struct pollfd pfd[1025];
  while (!stop) {
    double now = usbx_now();
    if (now - t_start > max_time || (now - t_last > idle_exit && nC == 0) || now - t_last > idle_exit * 3) break;
    int np = 0, timeout = 100;
    pfd[np++] = (struct pollfd){.fd = ls, .events = nC < 1024 ? POLLIN : 0};
    long busy = 0;
    for (int i = 0; i < nC; i++) {
      conn *c = C[i];
      short ev = POLLIN;
      if (c->out.len > c->out_off) {
        busy++;
        if (c->send_at <= now) ev |= POLLOUT;
        else { int ms = (int)((c->send_at - now) * 1000) + 1; if (ms < timeout) timeout = ms; }
      } else if (c->hang) busy++;
      pfd[np++] = (struct pollfd){.fd = c->fd, .events = ev};
    }
    if (busy > max_inflight) max_inflight = busy;
    if (poll(pfd, (nfds_t)np, timeout) < 0 && errno != EINTR) usbx_die("poll: %s", strerror(errno));
    now = usbx_now();
    if (pfd[0].revents & POLLIN) {
      int fd;
      while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        if (nC >= 1024) { close(fd); continue; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = xcalloc(1, sizeof *c);
        c->fd = fd;
        C[nC++] = c;
        n_conn++;
        t_last = now;
      }
    }
    /* connections are matched to pfd by fd (the array may shrink while we walk it) */
    for (int p = 1; p < np; p++) {
      int i = 0;
      while (i < nC && C[i]->fd != pfd[p].fd) i++;
      if (i == nC) continue;
      conn *c = C[i];
      bool dead = false;
      if (pfd[p].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[65536];
        for (;;) {
          ssize_t n = read(c->fd, buf, sizeof buf);
          if (n > 0) { usbx_buf_append(&c->in, buf, (size_t)n); t_last = now; continue; }
          if (n == 0 || (errno != EAGAIN && errno != EINTR)) dead = true;
          break;
        }
        if (!dead && process_input(c) < 0) dead = true;
      }
      if (!dead && c->out.len > c->out_off && c->send_at <= now) {
        ssize_t n = write(c->fd, c->out.data + c->out_off, c->out.len - c->out_off);
        if (n > 0) c->out_off += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EINTR) dead = true;
        if (!dead && c->out_off == c->out.len) {
          c->out.len = c->out_off = 0;
          t_last = now;
          if (c->after) dead = true;
          else if (process_input(c) < 0) dead = true;
        }
      }
      if (dead) close_conn(i);
    }
  }
  while (nC) close_conn(nC - 1);
  close(ls);
  write_stats(stats);
  return 0;
}
