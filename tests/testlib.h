/* testlib.h — minimal assertions for the C unit tests.  A test binary exits 0 when every check
 * passed, 1 when any failed, 77 when it must be skipped (e.g. ../shared is missing). */
#ifndef USBX_TESTLIB_H
#define USBX_TESTLIB_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_checks, t_fails;
#define CHECK(cond) do { t_checks++; if (!(cond)) { t_fails++; \
  fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECKF(cond, ...) do { t_checks++; if (!(cond)) { t_fails++; \
  fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
  fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define CHECK_EQ_INT(a, b) CHECKF((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))
#define CHECK_STR(a, b) CHECKF(strcmp((a), (b)) == 0, "\"%s\" != \"%s\"", (a), (b))
#define CHECK_NEAR(a, b, tol) CHECKF(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", (double)(a), (double)(b), (double)(tol))

static inline int t_done(const char *name) {
  fprintf(stderr, "%s: %d checks, %d failed\n", name, t_checks, t_fails);
  return t_fails ? 1 : 0;
}
#define T_SKIP(why) do { fprintf(stderr, "skipped: %s\n", why); exit(77); } while (0)

/* Path to ../shared (USBX_SHARED from the Makefile), or NULL when missing. */
static inline const char *t_shared(void) {
  const char *s = getenv("USBX_SHARED");
  static char buf[4096];
  if (!s || !*s) s = "../shared";
  snprintf(buf, sizeof buf, "%s/design.md", s);
  FILE *f = fopen(buf, "r");
  if (!f) return NULL;
  fclose(f);
  return s;
}
#endif
