/* judge_backend.c — judge backends: the OpenAI-compatible two-stage judge (many images in
 * flight through usbx_oai) and an adapter for synchronous one-image judges. */
#include "judge.h"
#include "openai.h"
#include "util.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared: a FIFO of finished items ---------------------------------------------------- */

typedef struct { usbx_judge_item *head, *tail; } item_fifo;
static void fifo_push(item_fifo *f, usbx_judge_item *it) {
  it->next = NULL;
  if (f->tail) f->tail->next = it; else f->head = it;
  f->tail = it;
}
static int fifo_take(item_fifo *f, usbx_judge_item **out, int max) {
  int k = 0;
  while (f->head && k < max) {
    usbx_judge_item *it = f->head;
    f->head = it->next;
    if (!f->head) f->tail = NULL;
    it->next = NULL;
    out[k++] = it;
  }
  return k;
}

static void set_error(usbx_judge_item *it, int stage, const char *why) {
  it->verdict = USBX_V_ERROR;
  free(it->error);
  it->error = xasprintf("%s stage: %s", stage == 1 ? (it->task == USBX_TASK_MAPPING ? "identify" : "caption") : "evaluate", why);
  free(it->analysis);
  it->analysis = usbx_judge_analysis_failed(it->task, stage, it->caption ? it->caption : "");
  if (!it->caption) it->caption = xstrdup("");
}

/* ---- OpenAI-compatible backend ------------------------------------------------------------- */

typedef struct {
  usbx_oai *oai;
  char *model;
  const usbx_judge_prompts *prompts;
  item_fifo done;
  usbx_oai_result res[64];
} oa_ctx;

static void oa_send(oa_ctx *c, usbx_judge_item *it, char *body, size_t len) {
  usbx_oai_submit(c->oai, "chat/completions", body, len, it);
}

static void oa_submit(usbx_judge_backend *b, usbx_judge_item *it) {
  oa_ctx *c = b->ctx;
  it->stage = 1;
  it->proto_attempt = 0;
  it->requests = 0;
  size_t ulen;
  char *uri = usbx_oai_image_uri(it->image, &ulen);
  if (!uri) {
    char why[512];
    snprintf(why, sizeof why, "cannot read image %s: %s", it->image, strerror(errno));
    set_error(it, 1, why);
    fifo_push(&c->done, it);
    return;
  }
  size_t len;
  char *body = usbx_oai_chat_body(c->model, uri, c->prompts->stage1[it->task], c->prompts->max_tokens1[it->task], 0, &len);
  free(uri);
  oa_send(c, it, body, len);
}

/* A reply that gave no usable content: ask again (upstream's max_retries) or give up. */
static void oa_ask_again(oa_ctx *c, usbx_judge_item *it, usbx_oai_result *r, const char *content) {
  if (++it->proto_attempt < USBX_JUDGE_PROTO_ATTEMPTS) {
    oa_send(c, it, r->body, r->body_len);
    r->body = NULL;
    return;
  }
  char ex[200];
  size_t k = 0;
  for (const char *p = content ? content : ""; *p && k < 120; p++) ex[k++] = (*p == '\n' || *p == '\r') ? ' ' : *p;
  ex[k] = 0;
  char why[400];
  if (!content || !*content)
    snprintf(why, sizeof why, "empty reply %d times", USBX_JUDGE_PROTO_ATTEMPTS);
  else
    snprintf(why, sizeof why, "no 'Score: YES|NO' in %d replies (last: \"%s%s\")", USBX_JUDGE_PROTO_ATTEMPTS, ex,
             strlen(content) > 120 ? "..." : "");
  set_error(it, it->stage, why);
  fifo_push(&c->done, it);
}

static void oa_result(oa_ctx *c, usbx_oai_result *r) {
  usbx_judge_item *it = r->user;
  it->requests += r->attempts;
  if (!r->ok) {
    set_error(it, it->stage, r->err);
    fifo_push(&c->done, it);
    return;
  }
  const char *content = usbx_oai_content(r->reply);
  if (it->stage == 1) {
    char *cap = NULL, *full = NULL;
    int s = usbx_judge_stage1(it->task, content, &cap, &full);
    if (s < 0) { oa_ask_again(c, it, r, content); return; }
    free(it->caption); free(it->full);
    it->caption = cap;
    it->full = full;
    if (s == 0) {
      it->verdict = USBX_V_NO;
      it->analysis = usbx_judge_analysis_short(it->task, full, cap, it->answer);
      fifo_push(&c->done, it);
      return;
    }
    char err[256];
    char *text = usbx_judge_stage2_text(c->prompts, it->task, cap, it->answer, err, sizeof err);
    if (!text) { set_error(it, 2, err); fifo_push(&c->done, it); return; }
    size_t len;
    char *body = usbx_oai_chat_body(c->model, NULL, text, c->prompts->max_tokens2[it->task], 0, &len);
    free(text);
    it->stage = 2;
    it->proto_attempt = 0;
    oa_send(c, it, body, len);
    return;
  }
  char *eval = NULL;
  int s = usbx_judge_stage2(it->task, content, &eval);
  if (s < 0) { oa_ask_again(c, it, r, content); return; }
  it->verdict = s ? USBX_V_YES : USBX_V_NO;
  it->analysis = usbx_judge_analysis(it->task, it->full, it->caption, it->answer, eval);
  free(eval);
  fifo_push(&c->done, it);
}

static int oa_poll(usbx_judge_backend *b, usbx_judge_item **done, int max, int wait_ms) {
  oa_ctx *c = b->ctx;
  if (!c->done.head) {
    int n = usbx_oai_wait(c->oai, c->res, 64, wait_ms);
    for (int i = 0; i < n; i++) {
      oa_result(c, &c->res[i]);
      jv_free(c->res[i].reply);
      free(c->res[i].body);
    }
  }
  return fifo_take(&c->done, done, max);
}

static void oa_wakeup(usbx_judge_backend *b) { usbx_oai_wakeup(((oa_ctx *)b->ctx)->oai); }

static void oa_destroy(usbx_judge_backend *b) {
  oa_ctx *c = b->ctx;
  usbx_oai_free(c->oai);
  free(c->model);
  free(c);
  free(b->label);
  free(b);
}

usbx_judge_backend *usbx_judge_backend_openai(const usbx_judge_openai_opts *o, char *err, size_t errlen) {
  usbx_oai_opts oo;
  usbx_oai_opts_default(&oo);
  if (o->url) oo.url = o->url;
  oo.api_key = o->api_key;
  if (o->jobs > 0) oo.max_inflight = o->jobs;
  if (o->timeout_s > 0) oo.timeout_s = o->timeout_s;
  if (o->retries >= 0) oo.max_retries = o->retries;
  if (o->retry_time_s >= 0) oo.retry_time_s = o->retry_time_s;
  usbx_oai *oai = usbx_oai_new(&oo, err, errlen);
  if (!oai) return NULL;
  oa_ctx *c = xcalloc(1, sizeof *c);
  c->oai = oai;
  c->model = xstrdup(o->model);
  c->prompts = o->prompts;
  usbx_judge_backend *b = xcalloc(1, sizeof *b);
  b->name = "openai";
  b->label = xasprintf("openai:%s", o->model);
  b->capacity = oo.max_inflight;
  b->ctx = c;
  b->submit = oa_submit;
  b->poll = oa_poll;
  b->wakeup = oa_wakeup;
  b->destroy = oa_destroy;
  return b;
}

/* ---- synchronous adapter ------------------------------------------------------------------- */

typedef struct { usbx_judge_sync_fn fn; item_fifo done; } sy_ctx;

static void sy_submit(usbx_judge_backend *b, usbx_judge_item *it) {
  sy_ctx *c = b->ctx;
  char *caption = NULL, *analysis = NULL, err[512] = "";
  int yes = 0;
  it->requests = 0;
  int rc = c->fn(usbx_task_name(it->task), it->image, it->answer, &caption, &analysis, &yes, err, sizeof err);
  if (rc != 0) {
    /* 1: judged unreadable (analysis says why); -1: bad argument (err says why) */
    it->verdict = USBX_V_ERROR;
    it->error = xstrdup(rc == 1 && analysis && *analysis ? analysis : err[0] ? err : "judge failed");
    it->caption = xstrdup("");
    it->analysis = xasprintf("Error: %s", it->error);
    free(caption); free(analysis);
  } else {
    it->verdict = yes ? USBX_V_YES : USBX_V_NO;
    it->caption = caption ? caption : xstrdup("");
    it->analysis = analysis ? analysis : xstrdup("");
  }
  fifo_push(&c->done, it);
}

static int sy_poll(usbx_judge_backend *b, usbx_judge_item **done, int max, int wait_ms) {
  return fifo_take(&((sy_ctx *)b->ctx)->done, done, max);
}
static void sy_wakeup(usbx_judge_backend *b) {}
static void sy_destroy(usbx_judge_backend *b) { free(b->ctx); free(b->label); free(b); }

usbx_judge_backend *usbx_judge_backend_sync(const char *name, const char *label, usbx_judge_sync_fn fn) {
  sy_ctx *c = xcalloc(1, sizeof *c);
  c->fn = fn;
  usbx_judge_backend *b = xcalloc(1, sizeof *b);
  b->name = name;
  b->label = xstrdup(label);
  b->capacity = 1;
  b->ctx = c;
  b->submit = sy_submit;
  b->poll = sy_poll;
  b->wakeup = sy_wakeup;
  b->destroy = sy_destroy;
  return b;
}
