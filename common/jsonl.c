/* jsonl.c — see jsonl.h.  Lines are read with getline (any length); each is checked for
 * valid UTF-8 and parsed with libjq's jv_parse_sized. */
#include "jsonl.h"
#include "util.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct usbx_jsonl {
  FILE *f;
  bool own;
  char *name;
  long line;
  char *buf;
  size_t cap;
  bool unterminated;
  char err[512];
};

usbx_jsonl *usbx_jsonl_open(const char *path) {
  FILE *f;
  bool own = true;
  if (!path || strcmp(path, "-") == 0) { f = stdin; own = false; path = "<stdin>"; }
  else if (!(f = fopen(path, "rb"))) return NULL;
  usbx_jsonl *r = xcalloc(1, sizeof *r);
  r->f = f; r->own = own; r->name = xstrdup(path);
  return r;
}

/* Returns the byte offset of the first invalid UTF-8 sequence, or -1 if valid. */
static long utf8_invalid_at(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    if (c < 0x80) { if (c == 0) return (long)i; i++; continue; }
    size_t len; unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
    else return (long)i;
    if (i + len > n) return (long)i;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return (long)i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return (long)i;
    i += len;
  }
  return -1;
}

int usbx_jsonl_next(usbx_jsonl *r, jv *rec) {
  for (;;) {
    errno = 0;
    ssize_t n = getline(&r->buf, &r->cap, r->f);
    if (n < 0) {
      if (ferror(r->f)) {
        snprintf(r->err, sizeof r->err, "%s:%ld: read error: %s", r->name, r->line + 1, strerror(errno ? errno : EIO));
        clearerr(r->f);
        return -1;
      }
      return 0;
    }
    r->line++;
    r->unterminated = !(n > 0 && r->buf[n - 1] == '\n');
    size_t len = (size_t)n;
    while (len && (r->buf[len - 1] == '\n' || r->buf[len - 1] == '\r')) len--;
    size_t k = 0;
    while (k < len && (r->buf[k] == ' ' || r->buf[k] == '\t')) k++;
    if (k == len) continue; /* blank line */
    long bad = utf8_invalid_at((const unsigned char *)r->buf, len);
    if (bad >= 0) {
      snprintf(r->err, sizeof r->err, "%s:%ld: invalid UTF-8 (or NUL byte) at byte %ld", r->name, r->line, bad + 1);
      return -1;
    }
    if (len > (size_t)0x7fffffff) {
      snprintf(r->err, sizeof r->err, "%s:%ld: line longer than 2 GiB", r->name, r->line);
      return -1;
    }
    jv v = jv_parse_sized(r->buf, (int)len);
    if (!jv_is_valid(v)) {
      jv msg = jv_invalid_get_msg(v);
      const char *m = jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "malformed JSON";
      snprintf(r->err, sizeof r->err, "%s:%ld: %s%s", r->name, r->line, m,
               r->unterminated ? " (truncated last line)" : "");
      jv_free(msg);
      return -1;
    }
    if (jv_get_kind(v) != JV_KIND_OBJECT) {
      snprintf(r->err, sizeof r->err, "%s:%ld: expected a JSON object, got %s", r->name, r->line,
               jv_kind_name(jv_get_kind(v)));
      jv_free(v);
      return -1;
    }
    *rec = v;
    return 1;
  }
}

const char *usbx_jsonl_error(const usbx_jsonl *r) { return r->err; }
const char *usbx_jsonl_name(const usbx_jsonl *r) { return r->name; }
long usbx_jsonl_line(const usbx_jsonl *r) { return r->line; }
bool usbx_jsonl_last_unterminated(const usbx_jsonl *r) { return r->unterminated; }

void usbx_jsonl_close(usbx_jsonl *r) {
  if (!r) return;
  if (r->own) fclose(r->f);
  free(r->buf); free(r->name); free(r);
}

char *usbx_jv_dump(jv v) {
  jv s = jv_dump_string(jv_copy(v), 0);
  char *out = xstrdup(jv_string_value(s));
  jv_free(s);
  return out;
}

int usbx_jsonl_write(FILE *f, jv rec) {
  jv s = jv_dump_string(rec, 0);
  int len = jv_string_length_bytes(jv_copy(s));
  int rc = 0;
  if (fwrite(jv_string_value(s), 1, (size_t)len, f) != (size_t)len || fputc('\n', f) == EOF || fflush(f) != 0) rc = -1;
  jv_free(s);
  return rc;
}

const char *usbx_jv_str(jv obj, const char *key) {
  if (jv_get_kind(obj) != JV_KIND_OBJECT) return NULL;
  jv v = jv_object_get(jv_copy(obj), jv_string(key));
  const char *s = NULL;
  /* The string lives inside obj (jv strings are refcounted), so the pointer stays valid. */
  if (jv_get_kind(v) == JV_KIND_STRING) s = jv_string_value(v);
  jv_free(v);
  return s;
}

bool usbx_jv_num(jv obj, const char *key, double *out) {
  if (jv_get_kind(obj) != JV_KIND_OBJECT) return false;
  jv v = jv_object_get(jv_copy(obj), jv_string(key));
  bool ok = jv_get_kind(v) == JV_KIND_NUMBER;
  if (ok) *out = jv_number_value(v);
  jv_free(v);
  return ok;
}

bool usbx_jv_has(jv obj, const char *key) {
  if (jv_get_kind(obj) != JV_KIND_OBJECT) return false;
  return jv_object_has(jv_copy(obj), jv_string(key));
}

jv usbx_jv_set_str(jv obj, const char *key, const char *val) { return jv_object_set(obj, jv_string(key), jv_string(val)); }
jv usbx_jv_set_num(jv obj, const char *key, double val) { return jv_object_set(obj, jv_string(key), jv_number(val)); }
