/* safetensors.c — see safetensors.h.
 *
 * Reader: the file is memory-mapped read-only; the header is copied out, checked for strict
 * UTF-8, parsed with libjq and validated completely before any tensor pointer is handed out.
 * Writer: the header (declared up front) and the tensor bytes go through one large buffer into a
 * temporary file in the destination folder; finish() fsyncs, renames and fsyncs the folder. */
#include "safetensors.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u * 1000u * 1000u)   /* 100 MB, as the reference implementation */
#define ST_MAX_INT 9007199254740992.0          /* 2^53: every integer below is exact in a double */

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* A name fit for a one-line message: control characters and bytes >= 0x7f escaped, cut at 80. */
static const char *printable(const char *s, size_t n, char *buf, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 8 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i >= 80) { memcpy(buf + o, "...", 3); o += 3; break; }
    if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\') o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    else buf[o++] = (char)c;
  }
  buf[o] = 0;
  return buf;
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).  Returns the offset of the
 * first bad byte, or -1 when the whole buffer is valid. */
static long utf8_bad_at(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    if (c < 0x80) { i++; continue; }
    size_t len;
    unsigned cp, min;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return (long)i;
    if (i + len > n) return (long)i;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return (long)i;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return (long)i;
    i += len;
  }
  return -1;
}

static bool dtype_strict(const char *name, usbx_dtype *t) {
  for (int k = 0; k < USBX_DTYPE_COUNT; k++)
    if (strcmp(name, usbx_dtype_name((usbx_dtype)k)) == 0) { *t = (usbx_dtype)k; return true; }
  return false;
}

/* A non-negative integer below 2^53 held in a jv number. */
static bool jv_uint(jv v /* consumed */, uint64_t *out) {
  bool ok = jv_get_kind(v) == JV_KIND_NUMBER;
  double d = ok ? jv_number_value(v) : -1;
  jv_free(v);
  if (!ok || !(d >= 0 && d < ST_MAX_INT) || d != (double)(uint64_t)d) return false;
  *out = (uint64_t)d;
  return true;
}

/* qsort_r comparators (no global state: files may be opened from several threads). */
static int cmp_name(const void *a, const void *b, void *ctx) {
  const usbx_st_tensor *t = ctx;
  return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}
static int cmp_begin(const void *a, const void *b, void *ctx) {
  const usbx_st_tensor *t = ctx;
  const usbx_st_tensor *x = &t[*(const size_t *)a], *y = &t[*(const size_t *)b];
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static void free_tensors(usbx_st_file *f) {
  for (size_t i = 0; i < f->n; i++) free(f->t[i].name);
  free(f->t);
  free(f->sorted);
  f->t = NULL;
  f->sorted = NULL;
  f->n = 0;
}

/* Validates one tensor entry; on failure writes the problem (without the path) into msg. */
static bool parse_entry(const char *name, jv v, uint64_t data_len, usbx_st_tensor *t, char *msg, size_t ml) {
  char pn[400];
  printable(name, strlen(name), pn, sizeof pn);
  bool ok = false;
  jv dt = jv_invalid(), sh = jv_invalid(), off = jv_invalid();
  if (jv_get_kind(v) != JV_KIND_OBJECT) { seterr(msg, ml, "tensor '%s': entry is not an object", pn); goto out; }
  dt = jv_object_get(jv_copy(v), jv_string("dtype"));
  sh = jv_object_get(jv_copy(v), jv_string("shape"));
  off = jv_object_get(jv_copy(v), jv_string("data_offsets"));
  if (jv_get_kind(dt) != JV_KIND_STRING) { seterr(msg, ml, "tensor '%s': missing or non-string \"dtype\"", pn); goto out; }
  const char *ds = jv_string_value(dt);
  if ((size_t)jv_string_length_bytes(jv_copy(dt)) != strlen(ds) || !dtype_strict(ds, &t->dtype)) {
    char pd[400];
    seterr(msg, ml, "tensor '%s': unknown dtype '%s'", pn, printable(ds, strlen(ds), pd, sizeof pd));
    goto out;
  }
  if (jv_get_kind(sh) != JV_KIND_ARRAY) { seterr(msg, ml, "tensor '%s': missing or non-array \"shape\"", pn); goto out; }
  int nd = jv_array_length(jv_copy(sh));
  if (nd > USBX_MAX_DIMS) { seterr(msg, ml, "tensor '%s': %d dimensions (at most %d)", pn, nd, USBX_MAX_DIMS); goto out; }
  t->ndim = nd;
  uint64_t numel = 1;
  bool overflow = false;
  for (int k = 0; k < nd; k++) {
    uint64_t d;
    if (!jv_uint(jv_array_get(jv_copy(sh), k), &d)) {
      seterr(msg, ml, "tensor '%s': shape entry %d is not an integer in [0, 2^53)", pn, k);
      goto out;
    }
    t->shape[k] = (int64_t)d;
    if (__builtin_mul_overflow(numel, d, &numel)) overflow = true;
  }
  uint64_t nbytes = 0;
  if (overflow || __builtin_mul_overflow(numel, (uint64_t)usbx_dtype_size(t->dtype), &nbytes)) {
    seterr(msg, ml, "tensor '%s': shape too large (element count overflows)", pn);
    goto out;
  }
  if (jv_get_kind(off) != JV_KIND_ARRAY || jv_array_length(jv_copy(off)) != 2 ||
      !jv_uint(jv_array_get(jv_copy(off), 0), &t->begin) || !jv_uint(jv_array_get(jv_copy(off), 1), &t->end)) {
    seterr(msg, ml, "tensor '%s': \"data_offsets\" must be [begin, end] with non-negative integers", pn);
    goto out;
  }
  if (t->begin > t->end) {
    seterr(msg, ml, "tensor '%s': data_offsets [%llu, %llu] end before begin", pn,
           (unsigned long long)t->begin, (unsigned long long)t->end);
    goto out;
  }
  if (t->end > data_len) {
    seterr(msg, ml, "tensor '%s': data_offsets [%llu, %llu] outside the data area (%llu bytes)", pn,
           (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)data_len);
    goto out;
  }
  if (t->end - t->begin != nbytes) {
    char ss[256];
    usbx_shape_str(t->ndim, t->shape, ss, sizeof ss);
    seterr(msg, ml, "tensor '%s': shape %s of %s is %llu bytes but data_offsets span %llu", pn, ss,
           usbx_dtype_name(t->dtype), (unsigned long long)nbytes, (unsigned long long)(t->end - t->begin));
    goto out;
  }
  ok = true;
out:
  jv_free(dt);
  jv_free(sh);
  jv_free(off);
  jv_free(v);
  return ok;
}

/* Validates the whole file image (buf, len); fills f (tensors point into buf). */
static int parse_image(usbx_st_file *f, const uint8_t *buf, size_t len, char *msg, size_t ml) {
  if (len < 8) { seterr(msg, ml, "file too short for a safetensors header (%zu bytes)", len); return -1; }
  uint64_t hl = 0;
  for (int k = 7; k >= 0; k--) hl = (hl << 8) | buf[k];
  if (hl > ST_MAX_HEADER) {
    seterr(msg, ml, "header length %llu exceeds the 100 MB limit", (unsigned long long)hl);
    return -1;
  }
  if (hl > len - 8) {
    seterr(msg, ml, "header length %llu exceeds the file (%zu bytes)", (unsigned long long)hl, len);
    return -1;
  }
  if (hl < 2) { seterr(msg, ml, "header of %llu bytes is not a JSON object", (unsigned long long)hl); return -1; }
  long bad = utf8_bad_at(buf + 8, hl);
  if (bad >= 0) { seterr(msg, ml, "header is not valid UTF-8 (byte %ld of the header)", bad); return -1; }
  f->data_area = buf + 8 + hl;
  f->data_len = len - 8 - hl;

  /* jv_parse_sized quotes its input in error messages with %s: give it a terminated copy. */
  char *copy = xmalloc(hl + 1);
  memcpy(copy, buf + 8, hl);
  copy[hl] = 0;
  jv h = jv_parse_sized(copy, (int)hl);
  free(copy);
  if (!jv_is_valid(h)) {
    jv m = jv_invalid_get_msg(h);
    if (jv_get_kind(m) == JV_KIND_STRING) {
      const char *s = jv_string_value(m);
      const char *cut = strstr(s, " (while parsing");
      size_t n = cut ? (size_t)(cut - s) : strlen(s);
      char pm[400];
      seterr(msg, ml, "header is not valid JSON: %s", printable(s, n < 200 ? n : 200, pm, sizeof pm));
    } else {
      seterr(msg, ml, "header is not valid JSON");
    }
    jv_free(m);
    return -1;
  }
  if (jv_get_kind(h) != JV_KIND_OBJECT) { jv_free(h); seterr(msg, ml, "header is not a JSON object"); return -1; }

  int cap = jv_object_length(jv_copy(h));
  f->t = xcalloc((size_t)cap + 1, sizeof *f->t);
  f->n = 0;
  int rc = -1;
  for (int it = jv_object_iter(h); jv_object_iter_valid(h, it); it = jv_object_iter_next(h, it)) {
    jv key = jv_object_iter_key(h, it);
    jv val = jv_object_iter_value(h, it);
    const char *ks = jv_string_value(key);
    size_t kl = (size_t)jv_string_length_bytes(jv_copy(key));
    char pk[400];
    if (kl != strlen(ks)) {
      seterr(msg, ml, "tensor name '%s' contains a NUL character", printable(ks, kl, pk, sizeof pk));
      jv_free(key); jv_free(val);
      goto out;
    }
    if (strcmp(ks, "__metadata__") == 0) {
      bool good = jv_get_kind(val) == JV_KIND_OBJECT;
      if (good)
        for (int j = jv_object_iter(val); jv_object_iter_valid(val, j); j = jv_object_iter_next(val, j)) {
          jv mv = jv_object_iter_value(val, j);
          if (jv_get_kind(mv) != JV_KIND_STRING) good = false;
          jv_free(mv);
        }
      jv_free(key);
      if (!good) { jv_free(val); seterr(msg, ml, "\"__metadata__\" must be an object of strings"); goto out; }
      jv_free(f->metadata);
      f->metadata = val;
      continue;
    }
    usbx_st_tensor *t = &f->t[f->n];
    memset(t, 0, sizeof *t);
    if (!parse_entry(ks, val, f->data_len, t, msg, ml)) { jv_free(key); goto out; }
    t->name = xstrdup(ks);
    t->data = f->data_area + t->begin;
    f->n++;
    jv_free(key);
  }
  f->sorted = xmalloc((f->n + 1) * sizeof *f->sorted);
  size_t *byoff = xmalloc((f->n + 1) * sizeof *byoff);
  for (size_t i = 0; i < f->n; i++) f->sorted[i] = byoff[i] = i;
  qsort_r(byoff, f->n, sizeof *byoff, cmp_begin, f->t);
  qsort_r(f->sorted, f->n, sizeof *f->sorted, cmp_name, f->t);
  /* No overlaps: each non-empty tensor starts at or after the furthest end seen so far. */
  uint64_t far = 0;
  size_t far_i = 0;
  bool have = false;
  for (size_t k = 0; k < f->n; k++) {
    const usbx_st_tensor *t = &f->t[byoff[k]];
    if (t->begin == t->end) continue;
    if (have && t->begin < far) {
      char pa[400], pb[400];
      const usbx_st_tensor *o = &f->t[far_i];
      seterr(msg, ml, "tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap",
             printable(o->name, strlen(o->name), pa, sizeof pa), (unsigned long long)o->begin,
             (unsigned long long)o->end, printable(t->name, strlen(t->name), pb, sizeof pb),
             (unsigned long long)t->begin, (unsigned long long)t->end);
      free(byoff);
      goto out;
    }
    if (!have || t->end > far) { far = t->end; far_i = byoff[k]; }
    have = true;
  }
  free(byoff);
  rc = 0;
out:
  jv_free(h);
  return rc;
}

int usbx_st_open_mem(const void *buf, size_t len, const char *name, usbx_st_file *f, char *err, size_t errlen) {
  memset(f, 0, sizeof *f);
  f->metadata = jv_null();
  f->path = xstrdup(name ? name : "<memory>");
  char msg[1024];
  if (parse_image(f, buf, len, msg, sizeof msg) != 0) {
    seterr(err, errlen, "%s: %s", f->path, msg);
    usbx_st_close(f);
    return -1;
  }
  return 0;
}

int usbx_st_open(const char *path, usbx_st_file *f, char *err, size_t errlen) {
  memset(f, 0, sizeof *f);
  f->metadata = jv_null();
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { seterr(err, errlen, "%s: %s", path, strerror(errno)); return -1; }
  struct stat st;
  if (fstat(fd, &st) != 0) { seterr(err, errlen, "%s: %s", path, strerror(errno)); close(fd); return -1; }
  if (S_ISDIR(st.st_mode)) { seterr(err, errlen, "%s: is a directory", path); close(fd); return -1; }
  if (!S_ISREG(st.st_mode)) { seterr(err, errlen, "%s: not a regular file", path); close(fd); return -1; }
  size_t len = (size_t)st.st_size;
  if (len < 8) {
    seterr(err, errlen, "%s: file too short for a safetensors header (%zu bytes)", path, len);
    close(fd);
    return -1;
  }
  void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (map == MAP_FAILED) { seterr(err, errlen, "%s: mmap: %s", path, strerror(e)); return -1; }
  f->path = xstrdup(path);
  f->map = map;
  f->map_len = len;
  char msg[1024];
  if (parse_image(f, map, len, msg, sizeof msg) != 0) {
    seterr(err, errlen, "%s: %s", path, msg);
    usbx_st_close(f);
    return -1;
  }
  return 0;
}

const usbx_st_tensor *usbx_st_find(const usbx_st_file *f, const char *name) {
  if (!f->n || !name) return NULL;
  size_t lo = 0, hi = f->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(name, f->t[f->sorted[mid]].name);
    if (c == 0) return &f->t[f->sorted[mid]];
    if (c < 0) hi = mid; else lo = mid + 1;
  }
  return NULL;
}

void usbx_st_close(usbx_st_file *f) {
  if (!f) return;
  free_tensors(f);
  if (f->map) munmap(f->map, f->map_len);
  jv_free(f->metadata);
  free(f->path);
  memset(f, 0, sizeof *f);
  f->metadata = jv_null();
}

static void advise(const usbx_st_file *f, const void *p, size_t n, int advice) {
  if (!f->map || !n) return;
  long pg = sysconf(_SC_PAGESIZE);
  uintptr_t a = (uintptr_t)p & ~(uintptr_t)(pg - 1);
  uintptr_t b = ((uintptr_t)p + n + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);
  uintptr_t lo = (uintptr_t)f->map, hi = lo + f->map_len;
  if (a < lo) a = lo;
  if (b > ((hi + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1))) b = (hi + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);
  if (b > a) (void)madvise((void *)a, b - a, advice);
}

void usbx_st_willneed(const usbx_st_file *f, const usbx_st_tensor *t) {
  advise(f, t->data, (size_t)(t->end - t->begin), MADV_WILLNEED);
}
void usbx_st_dontneed(const usbx_st_file *f, const usbx_st_tensor *t) {
  advise(f, t->data, (size_t)(t->end - t->begin), MADV_DONTNEED);
}
void usbx_st_willneed_range(const usbx_st_file *f, const void *p, size_t n) { advise(f, p, n, MADV_WILLNEED); }
void usbx_st_dontneed_range(const usbx_st_file *f, const void *p, size_t n) { advise(f, p, n, MADV_DONTNEED); }
void usbx_st_sequential(const usbx_st_file *f) {
  if (f->map) (void)madvise(f->map, f->map_len, MADV_SEQUENTIAL);
}

/* ---------------------------------------------------------------------------------------------
 * Temporary files: remembered so that a signal handler can remove them (async-signal-safe). */

#define ST_TEMPS 16
static char g_temps[ST_TEMPS][PATH_MAX];
static volatile sig_atomic_t g_temp_used[ST_TEMPS];

int usbx_st_track_temp(const char *path) {
  if (strlen(path) >= PATH_MAX) return -1;
  for (int i = 0; i < ST_TEMPS; i++)
    if (!g_temp_used[i]) {
      memcpy(g_temps[i], path, strlen(path) + 1);
      g_temp_used[i] = 1;
      return i;
    }
  return -1;
}
void usbx_st_untrack_temp(int slot) {
  if (slot >= 0 && slot < ST_TEMPS) g_temp_used[slot] = 0;
}
static void on_signal(int sig) {
  for (int i = 0; i < ST_TEMPS; i++)
    if (g_temp_used[i]) unlink(g_temps[i]);
  signal(sig, SIG_DFL);
  raise(sig);
}
void usbx_st_cleanup_on_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
  for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
}

char *usbx_st_temp_name(const char *path) {
  static unsigned counter;
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  size_t dl = slash ? (size_t)(slash - path + 1) : 0;
  return xasprintf("%.*s.%s.tmp.%ld.%u", (int)dl, path, base, (long)getpid(), counter++);
}

char *usbx_st_dirname(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return xstrdup(".");
  if (slash == path) return xstrdup("/");
  return xasprintf("%.*s", (int)(slash - path), path);
}

/* ---------------------------------------------------------------------------------------------
 * Writer */

#define ST_WBUF (16u << 20)      /* bytes buffered before a write(2) */
#define ST_KICK (64ull << 20)    /* start writeback every this many bytes */
#define ST_WSLICE (512u << 10)   /* bytes per write(2) */

struct usbx_st_writer {
  char *path, *tmp;
  int fd, slot;
  uint64_t total, written;      /* data bytes declared / received */
  uint64_t file_off, kicked;    /* bytes handed to the kernel; writeback started up to */
  char *buf;
  size_t blen;
  bool failed;
  char err[512];
};

static void w_fail(usbx_st_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void w_fail(usbx_st_writer *w, const char *fmt, ...) {
  if (w->failed) return;
  w->failed = true;
  char m[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  snprintf(w->err, sizeof w->err, "%s: %s", w->path, m);
}

static int full_write(usbx_st_writer *w, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    /* At most ST_WSLICE per call: on Linux 6.x page-cache writes of 2 MB and more were measured
     * 3-10x slower (large-folio allocation) than 512 KB ones; see benchmark/ckpt.md. */
    ssize_t k = write(w->fd, c, n > ST_WSLICE ? ST_WSLICE : n);
    if (k < 0) {
      if (errno == EINTR) continue;
      w_fail(w, "write: %s", strerror(errno));
      return -1;
    }
    c += k;
    n -= (size_t)k;
    w->file_off += (uint64_t)k;
  }
  if (w->file_off - w->kicked >= ST_KICK) {
    /* Start writeback of what is written so far (non-blocking) so the final fsync is short and
     * dirty pages do not pile up; harmless where unsupported. */
    (void)sync_file_range(w->fd, (off64_t)w->kicked, (off64_t)(w->file_off - w->kicked), SYNC_FILE_RANGE_WRITE);
    w->kicked = w->file_off;
  }
  return 0;
}

static int w_flush(usbx_st_writer *w) {
  if (!w->blen) return 0;
  int rc = full_write(w, w->buf, w->blen);
  w->blen = 0;
  return rc;
}

static void w_free(usbx_st_writer *w) {
  if (w->fd >= 0) close(w->fd);
  if (w->tmp) unlink(w->tmp);
  usbx_st_untrack_temp(w->slot);
  free(w->path);
  free(w->tmp);
  free(w->buf);
  free(w);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

usbx_st_writer *usbx_st_writer_begin(const char *path, const usbx_st_decl *decls, size_t n, jv metadata,
                                     char *err, size_t errlen) {
  usbx_buf h = {0};
  const char **names = NULL;
  usbx_st_writer *w = NULL;
  char pn[400];
  if (jv_get_kind(metadata) != JV_KIND_NULL) {
    bool good = jv_get_kind(metadata) == JV_KIND_OBJECT;
    if (good)
      for (int j = jv_object_iter(metadata); jv_object_iter_valid(metadata, j); j = jv_object_iter_next(metadata, j)) {
        jv mv = jv_object_iter_value(metadata, j);
        if (jv_get_kind(mv) != JV_KIND_STRING) good = false;
        jv_free(mv);
      }
    if (!good) { seterr(err, errlen, "%s: metadata must be an object of strings", path); goto fail; }
  }
  names = xcalloc(n + 1, sizeof *names);
  usbx_buf_append(&h, "{", 1);
  if (jv_get_kind(metadata) == JV_KIND_OBJECT) {
    jv s = jv_dump_string(jv_copy(metadata), 0);
    usbx_buf_appendf(&h, "\"__metadata__\":%s", jv_string_value(s));
    jv_free(s);
  }
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const usbx_st_decl *d = &decls[i];
    if (!d->name || !*d->name) { seterr(err, errlen, "%s: tensor %zu has no name", path, i); goto fail; }
    printable(d->name, strlen(d->name), pn, sizeof pn);
    if (utf8_bad_at((const unsigned char *)d->name, strlen(d->name)) >= 0) {
      seterr(err, errlen, "%s: tensor name '%s' is not valid UTF-8", path, pn);
      goto fail;
    }
    if (strcmp(d->name, "__metadata__") == 0) {
      seterr(err, errlen, "%s: \"__metadata__\" cannot name a tensor", path);
      goto fail;
    }
    if ((int)d->dtype < 0 || d->dtype >= USBX_DTYPE_COUNT) {
      seterr(err, errlen, "%s: tensor '%s': bad dtype %d", path, pn, (int)d->dtype);
      goto fail;
    }
    if (d->ndim < 0 || d->ndim > USBX_MAX_DIMS) {
      seterr(err, errlen, "%s: tensor '%s': %d dimensions", path, pn, d->ndim);
      goto fail;
    }
    uint64_t numel = 1, nb;
    bool over = false;
    for (int k = 0; k < d->ndim; k++) {
      if (d->shape[k] < 0 || (double)d->shape[k] >= ST_MAX_INT) over = true;
      else if (__builtin_mul_overflow(numel, (uint64_t)d->shape[k], &numel)) over = true;
    }
    if (over || __builtin_mul_overflow(numel, (uint64_t)usbx_dtype_size(d->dtype), &nb) ||
        (double)(off + nb) >= ST_MAX_INT) {
      seterr(err, errlen, "%s: tensor '%s': bad or too large shape", path, pn);
      goto fail;
    }
    names[i] = d->name;
    if (h.len > 1) usbx_buf_append(&h, ",", 1);
    jv ns = jv_dump_string(jv_string(d->name), 0);
    usbx_buf_appendf(&h, "%s:{\"dtype\":\"%s\",\"shape\":[", jv_string_value(ns), usbx_dtype_name(d->dtype));
    jv_free(ns);
    for (int k = 0; k < d->ndim; k++) usbx_buf_appendf(&h, "%s%lld", k ? "," : "", (long long)d->shape[k]);
    usbx_buf_appendf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + nb));
    off += nb;
  }
  usbx_buf_append(&h, "}", 1);
  qsort(names, n, sizeof *names, cmp_str);
  for (size_t i = 1; i < n; i++)
    if (strcmp(names[i - 1], names[i]) == 0) {
      seterr(err, errlen, "%s: tensor '%s' declared twice", path, printable(names[i], strlen(names[i]), pn, sizeof pn));
      goto fail;
    }
  while ((8 + h.len) % 8) usbx_buf_append(&h, " ", 1);   /* align the data area, as the reference does */
  if (h.len > ST_MAX_HEADER) { seterr(err, errlen, "%s: header of %zu bytes exceeds 100 MB", path, h.len); goto fail; }

  w = xcalloc(1, sizeof *w);
  w->fd = -1;
  w->slot = -1;
  w->path = xstrdup(path);
  w->total = off;
  w->tmp = usbx_st_temp_name(path);
  w->slot = usbx_st_track_temp(w->tmp);
  w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (w->fd < 0) {
    seterr(err, errlen, "%s: cannot create temporary file %s: %s", path, w->tmp, strerror(errno));
    free(w->tmp);
    w->tmp = NULL;
    goto fail;
  }
  struct stat st;
  if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) (void)fchmod(w->fd, st.st_mode & 07777);
  /* Reserve the space now: a full disk fails here, not after gigabytes of work. */
  uint64_t fsize = 8 + h.len + off;
  if (fsize > 8 + h.len && fallocate(w->fd, 0, 0, (off_t)fsize) != 0 && errno == ENOSPC) {
    seterr(err, errlen, "%s: no space left for %llu bytes", path, (unsigned long long)fsize);
    goto fail;
  }
  w->buf = xmalloc(ST_WBUF);
  uint64_t hl = h.len;
  for (int k = 0; k < 8; k++) w->buf[k] = (char)(hl >> (8 * k));
  w->blen = 8;
  if (h.len + 8 <= ST_WBUF) {
    memcpy(w->buf + 8, h.data, h.len);
    w->blen += h.len;
  } else if (w_flush(w) != 0 || full_write(w, h.data, h.len) != 0) {
    seterr(err, errlen, "%s", w->err);
    goto fail;
  }
  usbx_buf_free(&h);
  free(names);
  jv_free(metadata);
  return w;
fail:
  usbx_buf_free(&h);
  free(names);
  jv_free(metadata);
  if (w) w_free(w);
  return NULL;
}

int usbx_st_writer_write(usbx_st_writer *w, const void *data, size_t nbytes) {
  if (w->failed) return -1;
  if (nbytes > w->total - w->written) {
    w_fail(w, "more data than declared (%llu + %zu > %llu bytes)", (unsigned long long)w->written, nbytes,
           (unsigned long long)w->total);
    return -1;
  }
  w->written += nbytes;
  if (w->blen + nbytes <= ST_WBUF) {
    memcpy(w->buf + w->blen, data, nbytes);
    w->blen += nbytes;
    if (w->blen == ST_WBUF) return w_flush(w);
    return 0;
  }
  if (w_flush(w) != 0) return -1;
  if (nbytes >= ST_WBUF / 2) return full_write(w, data, nbytes);
  memcpy(w->buf, data, nbytes);
  w->blen = nbytes;
  return 0;
}

const char *usbx_st_writer_error(const usbx_st_writer *w) { return w->failed ? w->err : ""; }
uint64_t usbx_st_writer_remaining(const usbx_st_writer *w) { return w->total - w->written; }

int usbx_st_writer_finish(usbx_st_writer *w, char *err, size_t errlen) {
  int rc = -1;
  if (!w->failed && w->written != w->total)
    w_fail(w, "only %llu of %llu data bytes were written", (unsigned long long)w->written, (unsigned long long)w->total);
  if (!w->failed) w_flush(w);
  if (!w->failed && fsync(w->fd) != 0) w_fail(w, "fsync: %s", strerror(errno));
  if (!w->failed) {
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) w_fail(w, "close: %s", strerror(errno));
  }
  if (!w->failed && rename(w->tmp, w->path) != 0) w_fail(w, "rename: %s", strerror(errno));
  if (!w->failed) {
    free(w->tmp);
    w->tmp = NULL;   /* renamed: nothing to remove */
    char *dir = usbx_st_dirname(w->path);
    if (usbx_fsync_dir(dir) != 0) w_fail(w, "fsync of folder %s: %s", dir, strerror(errno));
    free(dir);
  }
  if (w->failed) seterr(err, errlen, "%s", w->err);
  else rc = 0;
  w_free(w);
  return rc;
}

void usbx_st_writer_abort(usbx_st_writer *w) {
  if (w) w_free(w);
}
