/* openai.h — an OpenAI-compatible HTTP client on libcurl's multi interface: many requests in
 * flight on one thread over kept-alive connections, a timeout per attempt, and retries with
 * exponential backoff and jitter on connection errors, timeouts, truncated or malformed replies,
 * HTTP 429 and 5xx (never on other 4xx).  JSON through libjq.
 *
 * Typical use: submit request bodies (each with a caller tag), then call usbx_oai_wait in a loop;
 * it drives the transfers and hands back finished requests (after their retries). */
#ifndef USBX_OPENAI_H
#define USBX_OPENAI_H
#include <stddef.h>
#include <stdint.h>
#include <jv.h>

typedef struct usbx_oai usbx_oai;

typedef struct {
  const char *url;          /* base URL, e.g. "http://localhost:8000/v1" */
  const char *api_key;      /* sent as "Authorization: Bearer <key>"; NULL or "" sends "EMPTY" */
  int max_inflight;         /* requests in flight at once (connections kept alive), >= 1 */
  double timeout_s;         /* per attempt (connect + send + reply) */
  int max_retries;          /* retries after the first attempt */
  double retry_time_s;      /* no retry is started later than this after the first attempt */
  double backoff_s;         /* first backoff; doubles per retry, jittered to [d/2, d) */
  double backoff_max_s;     /* backoff cap */
  uint64_t seed;            /* jitter RNG seed */
} usbx_oai_opts;
/* Defaults: 32 in flight, 60 s timeout, 5 retries, 30 s retry time, 0.5 s .. 8 s backoff. */
void usbx_oai_opts_default(usbx_oai_opts *o);

typedef struct {
  void *user;
  int ok;                   /* 1: HTTP 2xx with a JSON object body in reply */
  long status;              /* HTTP status of the last attempt; 0 when there was no response */
  int attempts;
  double seconds;           /* from the first attempt to the end */
  jv reply;                 /* the parsed body when ok (caller frees), else jv_null() */
  char *body;               /* the request body, handed back (caller frees or resubmits) */
  size_t body_len;
  char err[400];            /* why, when !ok: "HTTP 500: ...", "timeout after 60 s", ... */
} usbx_oai_result;

/* NULL with a message in err (bad URL, curl failure). */
usbx_oai *usbx_oai_new(const usbx_oai_opts *o, char *err, size_t errlen);
void usbx_oai_free(usbx_oai *c);
/* Queues a POST of body (ownership passes to the client until the result hands it back) to
 * <url>/<endpoint>, e.g. endpoint "chat/completions". */
void usbx_oai_submit(usbx_oai *c, const char *endpoint, char *body, size_t len, void *user);
/* Requests queued, waiting for a retry, or in flight. */
size_t usbx_oai_pending(const usbx_oai *c);
/* Drives transfers until at least one request finished or wait_ms passed; returns how many
 * results were stored in out (at most max). */
int usbx_oai_wait(usbx_oai *c, usbx_oai_result *out, int max, int wait_ms);
/* Wakes a usbx_oai_wait blocked in another thread (thread-safe). */
void usbx_oai_wakeup(usbx_oai *c);
/* Total HTTP attempts made so far. */
long usbx_oai_attempts(const usbx_oai *c);

/* Chat-completions request body: one user message whose content is [image_url part, text part]
 * when image_uri is given, else the text string.  malloc'd JSON text. */
char *usbx_oai_chat_body(const char *model, const char *image_uri, const char *text, int max_tokens,
                         double temperature, size_t *len);
/* "data:image;base64,<base64 of the file bytes>", malloc'd; NULL with errno on read failure. */
char *usbx_oai_image_uri(const char *path, size_t *len);
/* Standard base64 with padding; malloc'd, NUL-terminated. */
char *usbx_base64(const void *data, size_t n, size_t *outlen);
/* choices[0].message.content when it is a string (pointer valid while reply lives), else NULL. */
const char *usbx_oai_content(jv reply);
/* Reads an API key file (first line, surrounding whitespace removed).  0 ok, -1 with err. */
int usbx_oai_read_key_file(const char *path, char **key, char *err, size_t errlen);

#endif
