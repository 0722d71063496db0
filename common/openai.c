/* openai.c — see openai.h.  One curl multi handle, a pool of easy handles (one per request in
 * flight, reused so connections stay alive), a FIFO of new requests and a list of requests
 * waiting out their backoff. */
#include "openai.h"
#include "util.h"
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct oreq {
  struct oreq *next;
  struct oreq *anext, *aprev;   /* in-flight list */
  void *user;
  char *url, *body;
  size_t len;
  int attempts;
  double t_first, t_next;
  CURL *easy;
  usbx_buf resp;
  char errbuf[CURL_ERROR_SIZE];
  /* outcome of the last attempt */
  int ok;
  long status;
  jv reply;
  char err[400];
} oreq;

struct usbx_oai {
  usbx_oai_opts o;
  char *base;
  CURLM *multi;
  struct curl_slist *headers;
  CURL **idle;                /* pool of easy handles */
  int nidle, neasy;
  oreq *q_head, *q_tail;      /* new requests, FIFO */
  oreq *wait_head;            /* waiting for a retry (unordered, small) */
  oreq *done_head, *done_tail;
  oreq *act_head;             /* in flight */
  int active;
  size_t pending;
  long attempts_total;
  double last_contact;        /* last time any HTTP response arrived (or creation) */
  usbx_rng rng;
};

void usbx_oai_opts_default(usbx_oai_opts *o) {
  memset(o, 0, sizeof *o);
  o->url = "http://localhost:8000/v1";
  o->max_inflight = 32;
  o->timeout_s = 60;
  o->max_retries = 5;
  o->retry_time_s = 30;
  o->backoff_s = 0.5;
  o->backoff_max_s = 8;
  o->seed = 0x5eed;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

usbx_oai *usbx_oai_new(const usbx_oai_opts *o, char *err, size_t errlen) {
  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK) { snprintf(err, errlen, "curl_global_init: %s", curl_easy_strerror(curl_init_rc)); return NULL; }
  if (!o->url || (strncmp(o->url, "http://", 7) != 0 && strncmp(o->url, "https://", 8) != 0)) {
    snprintf(err, errlen, "--url: expected http://HOST:PORT/PATH, got '%s'", o->url ? o->url : "");
    return NULL;
  }
  if (o->max_inflight < 1 || o->max_inflight > 4096) { snprintf(err, errlen, "--jobs: expected 1..4096"); return NULL; }
  if (!(o->timeout_s > 0) || o->timeout_s > 86400) { snprintf(err, errlen, "--timeout: expected seconds in (0, 86400]"); return NULL; }
  if (o->max_retries < 0 || o->max_retries > 100) { snprintf(err, errlen, "--retries: expected 0..100"); return NULL; }
  usbx_oai *c = xcalloc(1, sizeof *c);
  c->o = *o;
  c->base = xstrdup(o->url);
  size_t bl = strlen(c->base);
  while (bl && c->base[bl - 1] == '/') c->base[--bl] = 0;
  c->multi = curl_multi_init();
  if (!c->multi) { snprintf(err, errlen, "curl_multi_init failed"); free(c->base); free(c); return NULL; }
  CURLMcode mc = curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)o->max_inflight);
  if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)o->max_inflight);
  if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
  if (mc != CURLM_OK) {
    snprintf(err, errlen, "curl_multi_setopt: %s", curl_multi_strerror(mc));
    curl_multi_cleanup(c->multi); free(c->base); free(c);
    return NULL;
  }
  const char *key = o->api_key && *o->api_key ? o->api_key : "EMPTY";
  char *auth = xasprintf("Authorization: Bearer %s", key);
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  struct curl_slist *h2 = h ? curl_slist_append(h, "Expect:") : NULL;     /* no 100-continue round trip */
  struct curl_slist *h3 = h2 ? curl_slist_append(h2, auth) : NULL;
  memset(auth, 0, strlen(auth));
  free(auth);
  if (!h3) {
    snprintf(err, errlen, "out of memory (curl headers)");
    curl_slist_free_all(h2 ? h2 : h); curl_multi_cleanup(c->multi); free(c->base); free(c);
    return NULL;
  }
  c->headers = h3;
  c->idle = xcalloc((size_t)o->max_inflight, sizeof *c->idle);
  c->last_contact = usbx_now();
  usbx_rng_seed(&c->rng, o->seed);
  return c;
}

static void req_free(oreq *r) {
  free(r->url); free(r->body); usbx_buf_free(&r->resp);
  jv_free(r->reply);
  free(r);
}

void usbx_oai_free(usbx_oai *c) {
  if (!c) return;
  oreq *lists[3] = {c->q_head, c->wait_head, c->done_head};
  for (int i = 0; i < 3; i++)
    for (oreq *r = lists[i], *n; r; r = n) { n = r->next; req_free(r); }
  for (oreq *r = c->act_head, *n; r; r = n) {
    n = r->anext;
    curl_multi_remove_handle(c->multi, r->easy);
    curl_easy_cleanup(r->easy);
    req_free(r);
  }
  for (int i = 0; i < c->nidle; i++) curl_easy_cleanup(c->idle[i]);
  curl_multi_cleanup(c->multi);
  curl_slist_free_all(c->headers);
  free(c->idle); free(c->base);
  free(c);
}

void usbx_oai_submit(usbx_oai *c, const char *endpoint, char *body, size_t len, void *user) {
  oreq *r = xcalloc(1, sizeof *r);
  r->user = user;
  r->url = xasprintf("%s/%s", c->base, endpoint);
  r->body = body;
  r->len = len;
  r->reply = jv_null();
  if (c->q_tail) c->q_tail->next = r; else c->q_head = r;
  c->q_tail = r;
  c->pending++;
}

size_t usbx_oai_pending(const usbx_oai *c) { return c->pending; }
long usbx_oai_attempts(const usbx_oai *c) { return c->attempts_total; }
void usbx_oai_wakeup(usbx_oai *c) { curl_multi_wakeup(c->multi); }

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  usbx_buf *b = ud;
  size_t len = size * n;
  if (b->len + len > ((size_t)256 << 20)) return 0;   /* a reply over 256 MiB is not a chat reply */
  usbx_buf_append(b, p, len);
  return len;
}

static CURL *get_easy(usbx_oai *c, char *err, size_t errlen) {
  if (c->nidle) return c->idle[--c->nidle];
  CURL *e = curl_easy_init();
  if (!e) { snprintf(err, errlen, "curl_easy_init failed"); return NULL; }
  long tmo = (long)(c->o.timeout_s * 1000.0 + 0.5);
  CURLcode rc = CURLE_OK;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val); } while (0)
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_HTTPHEADER, c->headers);
  SET(CURLOPT_TIMEOUT_MS, tmo > 0 ? tmo : 1L);
  SET(CURLOPT_CONNECTTIMEOUT_MS, tmo < 10000 ? (tmo > 0 ? tmo : 1L) : 10000L);
  SET(CURLOPT_WRITEFUNCTION, on_write);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  SET(CURLOPT_TCP_NODELAY, 1L);
  SET(CURLOPT_USERAGENT, "usbx/" USBX_VERSION);
  SET(CURLOPT_POST, 1L);
#undef SET
  if (rc != CURLE_OK) { snprintf(err, errlen, "curl_easy_setopt: %s", curl_easy_strerror(rc)); curl_easy_cleanup(e); return NULL; }
  c->neasy++;
  return e;
}

static void put_easy(usbx_oai *c, CURL *e) {
  if (c->nidle < c->o.max_inflight) c->idle[c->nidle++] = e;
  else { curl_easy_cleanup(e); c->neasy--; }
}

static void finish(usbx_oai *c, oreq *r) {
  r->next = NULL;
  if (c->done_tail) c->done_tail->next = r; else c->done_head = r;
  c->done_tail = r;
}

/* Starts one attempt; on a local failure the request finishes at once. */
static void start(usbx_oai *c, oreq *r, double now) {
  if (r->attempts == 0) r->t_first = now;
  r->attempts++;
  c->attempts_total++;
  r->resp.len = 0;
  if (r->resp.data) r->resp.data[0] = 0;
  r->errbuf[0] = 0;
  r->status = 0;
  char err[200];
  CURL *e = get_easy(c, err, sizeof err);
  CURLcode rc = CURLE_OK;
  if (e) {
    rc = curl_easy_setopt(e, CURLOPT_URL, r->url);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->len);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->resp);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    if (rc != CURLE_OK) snprintf(err, sizeof err, "curl_easy_setopt: %s", curl_easy_strerror(rc));
  }
  if (e && rc == CURLE_OK) {
    CURLMcode mc = curl_multi_add_handle(c->multi, e);
    if (mc == CURLM_OK) {
      r->easy = e;
      c->active++;
      r->aprev = NULL;
      r->anext = c->act_head;
      if (c->act_head) c->act_head->aprev = r;
      c->act_head = r;
      return;
    }
    snprintf(err, sizeof err, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
  }
  if (e) put_easy(c, e);
  r->ok = 0;
  snprintf(r->err, sizeof r->err, "%s", err);
  c->pending--;
  finish(c, r);
}

static bool retryable_curl(CURLcode rc) {
  switch (rc) {
  case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_OPERATION_TIMEDOUT: case CURLE_SEND_ERROR: case CURLE_RECV_ERROR: case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE: case CURLE_WEIRD_SERVER_REPLY: case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
  case CURLE_SSL_CONNECT_ERROR: case CURLE_READ_ERROR:
    return true;
  default:
    return false;
  }
}

/* Short printable excerpt of a reply body for messages. */
static void excerpt(char *out, size_t n, const char *s, size_t len) {
  size_t k = 0;
  for (size_t i = 0; i < len && k + 4 < n && i < 240; i++) {
    unsigned char ch = (unsigned char)s[i];
    out[k++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
  }
  if (len > 240 && k + 4 < n) { out[k++] = '.'; out[k++] = '.'; out[k++] = '.'; }
  out[k] = 0;
}

/* A transfer finished: decide ok / retry / give up. */
static void completed(usbx_oai *c, oreq *r, CURLcode rc, double now) {
  CURL *e = r->easy;
  long status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_off_t retry_after = 0;
  curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &retry_after);
  curl_multi_remove_handle(c->multi, e);
  r->easy = NULL;
  c->active--;
  if (r->aprev) r->aprev->anext = r->anext; else c->act_head = r->anext;
  if (r->anext) r->anext->aprev = r->aprev;
  r->anext = r->aprev = NULL;
  r->status = status;
  bool retry = false;
  char ex[260];
  if (rc != CURLE_OK) {
    retry = retryable_curl(rc);
    if (rc == CURLE_OPERATION_TIMEDOUT)
      snprintf(r->err, sizeof r->err, "timeout after %g s (%s)", c->o.timeout_s, r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
    else
      snprintf(r->err, sizeof r->err, "%s%s%s", curl_easy_strerror(rc), r->errbuf[0] ? ": " : "", r->errbuf);
    if (rc != CURLE_COULDNT_CONNECT && rc != CURLE_COULDNT_RESOLVE_HOST && status) c->last_contact = now;
  } else {
    c->last_contact = now;
    excerpt(ex, sizeof ex, r->resp.data ? r->resp.data : "", r->resp.len);
    if (status >= 200 && status < 300) {
      jv v = r->resp.len < 0x7fffffff ? jv_parse_sized(r->resp.data ? r->resp.data : "", (int)r->resp.len) : jv_invalid();
      if (jv_is_valid(v) && jv_get_kind(v) == JV_KIND_OBJECT) {
        put_easy(c, e);
        jv_free(r->reply);
        r->reply = v;
        r->ok = 1;
        r->err[0] = 0;
        c->pending--;
        finish(c, r);
        return;
      }
      jv_free(v);
      snprintf(r->err, sizeof r->err, "malformed JSON reply (HTTP %ld, %zu bytes: %s)", status, r->resp.len, ex);
      retry = true;
    } else {
      snprintf(r->err, sizeof r->err, "HTTP %ld: %s", status, ex);
      retry = status == 429 || (status >= 500 && status <= 599);
    }
  }
  put_easy(c, e);
  r->ok = 0;
  if (retry && r->attempts <= c->o.max_retries) {
    /* A server unreachable for longer than the retry time fails fast: one attempt each. */
    bool dead = (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) &&
                now - c->last_contact > c->o.retry_time_s;
    double d = c->o.backoff_s * ldexp(1.0, r->attempts - 1);
    if (d > c->o.backoff_max_s) d = c->o.backoff_max_s;
    d = d * (0.5 + 0.5 * usbx_rng_uniform(&c->rng));
    if (retry_after > 0 && (double)retry_after > d) d = (double)retry_after;
    if (!dead && now + d - r->t_first <= c->o.retry_time_s) {
      r->t_next = now + d;
      r->next = c->wait_head;
      c->wait_head = r;
      return;
    }
  }
  if (r->attempts > 1) {
    size_t l = strlen(r->err);
    snprintf(r->err + l, sizeof r->err - l, " (%d attempts in %.1f s)", r->attempts, now - r->t_first);
  }
  c->pending--;
  finish(c, r);
}

/* Moves finished results out; returns the count. */
static int drain_done(usbx_oai *c, usbx_oai_result *out, int max, double now) {
  int k = 0;
  while (c->done_head && k < max) {
    oreq *r = c->done_head;
    c->done_head = r->next;
    if (!c->done_head) c->done_tail = NULL;
    usbx_oai_result *o = &out[k++];
    o->user = r->user;
    o->ok = r->ok;
    o->status = r->status;
    o->attempts = r->attempts;
    o->seconds = r->attempts ? now - r->t_first : 0;
    o->reply = r->reply;
    r->reply = jv_null();
    o->body = r->body;
    o->body_len = r->len;
    r->body = NULL;
    snprintf(o->err, sizeof o->err, "%s", r->err);
    req_free(r);
  }
  return k;
}

int usbx_oai_wait(usbx_oai *c, usbx_oai_result *out, int max, int wait_ms) {
  double t0 = usbx_now();
  for (;;) {
    double now = usbx_now();
    /* start due retries first, then new requests */
    for (oreq **pp = &c->wait_head; *pp && c->active < c->o.max_inflight;) {
      oreq *r = *pp;
      if (r->t_next <= now) { *pp = r->next; r->next = NULL; start(c, r, now); }
      else pp = &r->next;
    }
    while (c->q_head && c->active < c->o.max_inflight) {
      oreq *r = c->q_head;
      c->q_head = r->next;
      if (!c->q_head) c->q_tail = NULL;
      r->next = NULL;
      start(c, r, now);
    }
    int running = 0;
    CURLMcode mc = curl_multi_perform(c->multi, &running);
    if (mc != CURLM_OK) usbx_die("curl_multi_perform: %s", curl_multi_strerror(mc));
    CURLMsg *m;
    int left;
    now = usbx_now();
    while ((m = curl_multi_info_read(c->multi, &left))) {
      if (m->msg != CURLMSG_DONE) continue;
      oreq *r = NULL;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
      completed(c, r, m->data.result, now);
    }
    if (c->done_head) return drain_done(c, out, max, now);
    double left_ms = wait_ms - (now - t0) * 1000.0;
    if (left_ms <= 0 || c->pending == 0) return 0;
    /* sleep until the next due retry, a socket event, curl's own timeout, or the deadline */
    double next = left_ms;
    for (oreq *r = c->wait_head; r; r = r->next) {
      double d = (r->t_next - now) * 1000.0;
      if (d < next) next = d;
    }
    if (c->q_head && c->active < c->o.max_inflight) next = 0;
    int ms = next < 0 ? 0 : (int)ceil(next);
    if (ms > 0 || c->active) {
      mc = curl_multi_poll(c->multi, NULL, 0, ms, NULL);
      if (mc != CURLM_OK) usbx_die("curl_multi_poll: %s", curl_multi_strerror(mc));
    }
  }
}

/* ---- bodies ------------------------------------------------------------------------------ */

char *usbx_oai_chat_body(const char *model, const char *image_uri, const char *text, int max_tokens,
                         double temperature, size_t *len) {
  /* The structure goes through libjq; a data URI (megabytes of base64, which never needs
   * escaping) is spliced into the dumped text instead of being copied and escaped char by char. */
  bool splice = image_uri && strncmp(image_uri, "data:", 5) == 0 && !strpbrk(image_uri, "\"\\") &&
                strspn(image_uri + 5, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=;,:-._") == strlen(image_uri + 5);
  jv content;
  if (image_uri) {
    jv img = jv_object_set(jv_object(), jv_string("type"), jv_string("image_url"));
    img = jv_object_set(img, jv_string("image_url"),
                        jv_object_set(jv_object(), jv_string("url"), jv_string(splice ? "" : image_uri)));
    jv txt = jv_object_set(jv_object(), jv_string("type"), jv_string("text"));
    txt = jv_object_set(txt, jv_string("text"), jv_string(text));
    content = jv_array_append(jv_array_append(jv_array(), img), txt);
  } else {
    content = jv_string(text);
  }
  jv msg = jv_object_set(jv_object(), jv_string("role"), jv_string("user"));
  msg = jv_object_set(msg, jv_string("content"), content);
  jv body = jv_object_set(jv_object(), jv_string("model"), jv_string(model));
  body = jv_object_set(body, jv_string("messages"), jv_array_append(jv_array(), msg));
  body = jv_object_set(body, jv_string("max_tokens"), jv_number(max_tokens));
  body = jv_object_set(body, jv_string("temperature"), jv_number(temperature));
  jv s = jv_dump_string(body, 0);
  const char *d = jv_string_value(s);
  size_t n = (size_t)jv_string_length_bytes(jv_copy(s));
  char *out;
  static const char mark[] = "\"image_url\":{\"url\":\"\"}";
  const char *at = splice ? strstr(d, mark) : NULL;
  if (at) {
    size_t pre = (size_t)(at - d) + sizeof mark - 3, ul = strlen(image_uri);   /* up to the opening quote */
    out = xmalloc(n + ul + 1);
    memcpy(out, d, pre);
    memcpy(out + pre, image_uri, ul);
    memcpy(out + pre + ul, d + pre, n - pre + 1);
    n += ul;
  } else if (splice) {
    usbx_die("usbx_oai_chat_body: unexpected JSON layout");
  } else {
    out = xmalloc(n + 1);
    memcpy(out, d, n + 1);
  }
  jv_free(s);
  if (len) *len = n;
  return out;
}

char *usbx_base64(const void *data, size_t n, size_t *outlen) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const unsigned char *p = data;
  size_t m = 4 * ((n + 2) / 3);
  char *o = xmalloc(m + 1), *q = o;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
    *q++ = tbl[v >> 18]; *q++ = tbl[(v >> 12) & 63]; *q++ = tbl[(v >> 6) & 63]; *q++ = tbl[v & 63];
  }
  if (n - i == 1) {
    unsigned v = (unsigned)p[i] << 16;
    *q++ = tbl[v >> 18]; *q++ = tbl[(v >> 12) & 63]; *q++ = '='; *q++ = '=';
  } else if (n - i == 2) {
    unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
    *q++ = tbl[v >> 18]; *q++ = tbl[(v >> 12) & 63]; *q++ = tbl[(v >> 6) & 63]; *q++ = '=';
  }
  *q = 0;
  if (outlen) *outlen = m;
  return o;
}

char *usbx_oai_image_uri(const char *path, size_t *len) {
  size_t n;
  char *data = usbx_read_file(path, &n);
  if (!data) return NULL;
  static const char prefix[] = "data:image;base64,";
  size_t pl = sizeof prefix - 1, bl;
  char *b64 = usbx_base64(data, n, &bl);
  free(data);
  char *uri = xmalloc(pl + bl + 1);
  memcpy(uri, prefix, pl);
  memcpy(uri + pl, b64, bl + 1);
  free(b64);
  if (len) *len = pl + bl;
  return uri;
}

const char *usbx_oai_content(jv reply) {
  if (jv_get_kind(reply) != JV_KIND_OBJECT) return NULL;
  jv ch = jv_object_get(jv_copy(reply), jv_string("choices"));
  const char *s = NULL;
  if (jv_get_kind(ch) == JV_KIND_ARRAY && jv_array_length(jv_copy(ch)) > 0) {
    jv c0 = jv_array_get(jv_copy(ch), 0);
    if (jv_get_kind(c0) == JV_KIND_OBJECT) {
      jv msg = jv_object_get(jv_copy(c0), jv_string("message"));
      if (jv_get_kind(msg) == JV_KIND_OBJECT) {
        jv content = jv_object_get(jv_copy(msg), jv_string("content"));
        /* the string stays alive inside reply */
        if (jv_get_kind(content) == JV_KIND_STRING) s = jv_string_value(content);
        jv_free(content);
      }
      jv_free(msg);
    }
    jv_free(c0);
  }
  jv_free(ch);
  return s;
}

int usbx_oai_read_key_file(const char *path, char **key, char *err, size_t errlen) {
  size_t n;
  char *s = usbx_read_file(path, &n);
  if (!s) { snprintf(err, errlen, "--api-key-file: %s: %s", path, strerror(errno)); return -1; }
  char *b = s;
  while (*b == ' ' || *b == '\t' || *b == '\r' || *b == '\n') b++;
  char *e = b;
  while (*e && *e != '\n' && *e != '\r') e++;
  while (e > b && (e[-1] == ' ' || e[-1] == '\t')) e--;
  if (e == b) { memset(s, 0, n); free(s); snprintf(err, errlen, "--api-key-file: %s: empty", path); return -1; }
  *key = xmalloc((size_t)(e - b) + 1);
  memcpy(*key, b, (size_t)(e - b));
  (*key)[e - b] = 0;
  memset(s, 0, n);
  free(s);
  return 0;
}
