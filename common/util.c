/* util.c — see util.h. */
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <math.h>

static const char *g_progname = "usbx";
void usbx_set_progname(const char *name) { g_progname = name; }
const char *usbx_progname(void) { return g_progname; }

static void vreport(const char *fmt, va_list ap) {
  /* One write so concurrent processes do not interleave a line. */
  char buf[4096];
  int n = snprintf(buf, sizeof buf, "%s: ", g_progname);
  if (n < 0) n = 0;
  int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
  if (m < 0) m = 0;
  size_t len = (size_t)n + (size_t)m;
  if (len > sizeof buf - 2) len = sizeof buf - 2;
  buf[len++] = '\n';
  fflush(stdout);
  fwrite(buf, 1, len, stderr);
}
void usbx_err(const char *fmt, ...) { va_list ap; va_start(ap, fmt); vreport(fmt, ap); va_end(ap); }
_Noreturn void usbx_die(const char *fmt, ...) { va_list ap; va_start(ap, fmt); vreport(fmt, ap); va_end(ap); exit(1); }
_Noreturn void usbx_usage_die(const char *fmt, ...) {
  va_list ap; va_start(ap, fmt); vreport(fmt, ap); va_end(ap);
  fprintf(stderr, "Try '%s --help'.\n", g_progname);
  exit(2);
}

void *xmalloc(size_t n) { void *p = malloc(n ? n : 1); if (!p) usbx_die("out of memory (%zu bytes)", n); return p; }
void *xcalloc(size_t n, size_t s) { void *p = calloc(n ? n : 1, s ? s : 1); if (!p) usbx_die("out of memory (%zu x %zu bytes)", n, s); return p; }
void *xrealloc(void *p, size_t n) { void *q = realloc(p, n ? n : 1); if (!q) usbx_die("out of memory (%zu bytes)", n); return q; }
char *xstrdup(const char *s) { size_t n = strlen(s) + 1; char *p = xmalloc(n); memcpy(p, s, n); return p; }
char *xasprintf(const char *fmt, ...) {
  va_list ap; va_start(ap, fmt);
  char *p = NULL;
  int n = vasprintf(&p, fmt, ap);
  va_end(ap);
  if (n < 0) usbx_die("out of memory");
  return p;
}

void usbx_buf_append(usbx_buf *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
}
void usbx_buf_appendf(usbx_buf *b, const char *fmt, ...) {
  va_list ap; va_start(ap, fmt);
  char *p = NULL;
  int n = vasprintf(&p, fmt, ap);
  va_end(ap);
  if (n < 0) usbx_die("out of memory");
  usbx_buf_append(b, p, (size_t)n);
  free(p);
}
void usbx_buf_free(usbx_buf *b) { free(b->data); b->data = NULL; b->len = b->cap = 0; }

static char *dir_of(const char *path) {
  const char *s = strrchr(path, '/');
  if (!s) return xstrdup(".");
  if (s == path) return xstrdup("/");
  char *d = xmalloc((size_t)(s - path) + 1);
  memcpy(d, path, (size_t)(s - path));
  d[s - path] = 0;
  return d;
}

int usbx_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  /* Some filesystems refuse fsync on directories; that is not a data-loss condition. */
  if (rc != 0 && (errno == EINVAL || errno == EROFS)) rc = 0;
  close(fd);
  return rc;
}

int usbx_atomic_open(usbx_atomic *a, const char *path) {
  static unsigned counter;
  memset(a, 0, sizeof *a);
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  char *dir = dir_of(path);
  a->tmp = xasprintf("%s/.%s.tmp.%ld.%u", dir, base, (long)getpid(), __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
  free(dir);
  int fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) { free(a->tmp); a->tmp = NULL; return -1; }
  a->f = fdopen(fd, "wb");
  if (!a->f) { int e = errno; close(fd); unlink(a->tmp); free(a->tmp); a->tmp = NULL; errno = e; return -1; }
  a->path = xstrdup(path);
  return 0;
}

int usbx_atomic_commit(usbx_atomic *a) {
  int rc = 0, e = 0;
  if (fflush(a->f) != 0 || ferror(a->f)) { rc = -1; e = errno ? errno : EIO; }
  if (rc == 0 && fsync(fileno(a->f)) != 0) { rc = -1; e = errno; }
  if (fclose(a->f) != 0 && rc == 0) { rc = -1; e = errno; }
  a->f = NULL;
  if (rc == 0 && rename(a->tmp, a->path) != 0) { rc = -1; e = errno; }
  if (rc == 0) {
    char *dir = dir_of(a->path);
    usbx_fsync_dir(dir);
    free(dir);
  } else {
    unlink(a->tmp);
  }
  free(a->tmp); free(a->path);
  a->tmp = a->path = NULL;
  if (rc) errno = e;
  return rc;
}

void usbx_atomic_abort(usbx_atomic *a) {
  if (a->f) fclose(a->f);
  if (a->tmp) unlink(a->tmp);
  free(a->tmp); free(a->path);
  memset(a, 0, sizeof *a);
}

int usbx_write_file_atomic(const char *path, const void *data, size_t n) {
  usbx_atomic a;
  if (usbx_atomic_open(&a, path) != 0) return -1;
  if (n && fwrite(data, 1, n, a.f) != n) { int e = errno; usbx_atomic_abort(&a); errno = e ? e : EIO; return -1; }
  return usbx_atomic_commit(&a);
}

int usbx_mkdirs(const char *path) {
  char *p = xstrdup(path);
  size_t n = strlen(p);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] == '/' || p[i] == 0) {
      char c = p[i];
      p[i] = 0;
      if (mkdir(p, 0755) != 0 && errno != EEXIST) { int e = errno; free(p); errno = e; return -1; }
      p[i] = c;
    }
  }
  struct stat st;
  int ok = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
  free(p);
  if (!ok) { errno = ENOTDIR; return -1; }
  return 0;
}

char *usbx_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  usbx_buf b = {0};
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) usbx_buf_append(&b, chunk, n);
  int bad = ferror(f);
  fclose(f);
  if (bad) { usbx_buf_free(&b); errno = EIO; return NULL; }
  if (!b.data) usbx_buf_append(&b, "", 0);
  if (len) *len = b.len;
  return b.data;
}

int usbx_file_exists(const char *path) { struct stat st; return stat(path, &st) == 0; }

char *usbx_path_join(const char *a, const char *b) {
  size_t la = strlen(a);
  if (la && a[la - 1] == '/') return xasprintf("%s%s", a, b);
  return xasprintf("%s/%s", a, b);
}

double usbx_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t usbx_hash64(const void *p, size_t n, uint64_t seed) {
  const unsigned char *s = p;
  uint64_t h = 1469598103934665603ULL ^ seed;
  for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ULL; }
  /* final avalanche so nearby inputs give unrelated seeds */
  h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL; h ^= h >> 33;
  return h;
}

uint64_t usbx_splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void usbx_rng_seed(usbx_rng *r, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) r->s[i] = usbx_splitmix64(&x);
  r->has_spare = 0;
  r->spare = 0;
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
uint64_t usbx_rng_u64(usbx_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
  s[2] ^= t; s[3] = rotl(s[3], 45);
  return result;
}
double usbx_rng_uniform(usbx_rng *r) { return (double)(usbx_rng_u64(r) >> 11) * 0x1.0p-53; }
double usbx_rng_normal(usbx_rng *r) {
  if (r->has_spare) { r->has_spare = 0; return r->spare; }
  double u1, u2;
  do { u1 = usbx_rng_uniform(r); } while (u1 <= 0.0);
  u2 = usbx_rng_uniform(r);
  double mag = sqrt(-2.0 * log(u1));
  r->spare = mag * sin(2.0 * M_PI * u2);
  r->has_spare = 1;
  return mag * cos(2.0 * M_PI * u2);
}
uint64_t usbx_rng_below(usbx_rng *r, uint64_t n) {
  if (n == 0) return 0;
  uint64_t lim = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do { x = usbx_rng_u64(r); } while (x >= lim);
  return x % n;
}
