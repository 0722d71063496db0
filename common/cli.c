/* cli.c — see cli.h. */
#include "cli.h"
#include "util.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void print_help(const usbx_opt *opts, const char *usage, const char *desc) {
  printf("usage: %s\n", usage);
  if (desc && *desc) printf("\n%s\n", desc);
  printf("\noptions:\n");
  for (const usbx_opt *o = opts; o && o->name; o++) {
    char left[96];
    if (o->kind == USBX_OPT_FLAG)
      snprintf(left, sizeof left, "--%s%s", o->allow_no ? "[no-]" : "", o->name);
    else
      snprintf(left, sizeof left, "--%s %s", o->name, o->metavar ? o->metavar : "VALUE");
    printf("  %-28s %s\n", left, o->help ? o->help : "");
  }
  printf("  %-28s %s\n  %-28s %s\n", "--help", "show this help and exit", "--version", "show the version and exit");
}

static void set_value(const usbx_opt *o, const char *val) {
  char *end = NULL;
  switch (o->kind) {
  case USBX_OPT_STR: *(const char **)o->dest = val; break;
  case USBX_OPT_INT: {
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end) usbx_usage_die("--%s: not an integer: '%s'", o->name, val);
    *(long *)o->dest = v;
    break;
  }
  case USBX_OPT_DOUBLE: {
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !isfinite(v)) usbx_usage_die("--%s: not a number: '%s'", o->name, val);
    *(double *)o->dest = v;
    break;
  }
  case USBX_OPT_FLAG: break;
  }
}

void usbx_cli_parse(int argc, char **argv, const usbx_opt *opts, const char *usage,
                    const char *description, char ***pos, int *npos) {
  char **p = xcalloc((size_t)argc + 1, sizeof *p);
  int np = 0;
  bool only_pos = false;
  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    if (only_pos || a[0] != '-' || a[1] != '-' || a[2] == 0) {
      if (!only_pos && strcmp(a, "--") == 0) { only_pos = true; continue; }
      p[np++] = a;
      continue;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    if (nlen == 4 && strncmp(name, "help", 4) == 0) { print_help(opts, usage, description); exit(0); }
    if (nlen == 7 && strncmp(name, "version", 7) == 0) { printf("%s %s\n", usbx_progname(), USBX_VERSION); exit(0); }
    const usbx_opt *hit = NULL;
    bool negated = false;
    for (const usbx_opt *o = opts; o && o->name; o++) {
      if (strlen(o->name) == nlen && strncmp(o->name, name, nlen) == 0) { hit = o; break; }
      if (o->kind == USBX_OPT_FLAG && o->allow_no && nlen == strlen(o->name) + 3 &&
          strncmp(name, "no-", 3) == 0 && strncmp(name + 3, o->name, nlen - 3) == 0) { hit = o; negated = true; break; }
    }
    if (!hit) usbx_usage_die("unknown option '--%.*s'", (int)nlen, name);
    if (hit->kind == USBX_OPT_FLAG) {
      if (eq) usbx_usage_die("--%s takes no value", hit->name);
      *(bool *)hit->dest = !negated;
      continue;
    }
    const char *val;
    if (eq) val = eq + 1;
    else {
      if (i + 1 >= argc) usbx_usage_die("--%s needs a value (%s)", hit->name, hit->metavar ? hit->metavar : "VALUE");
      val = argv[++i];
    }
    set_value(hit, val);
  }
  p[np] = NULL;
  if (pos) *pos = p; else free(p);
  if (npos) *npos = np;
}

void usbx_parse_shard(const char *s, long *index, long *count) {
  char *end;
  long i = strtol(s, &end, 10);
  if (end == s || *end != '/') usbx_usage_die("--shard: expected I/N, got '%s'", s);
  const char *q = end + 1;
  long n = strtol(q, &end, 10);
  if (end == q || *end || n < 1 || i < 0 || i >= n) usbx_usage_die("--shard: expected I/N with 0 <= I < N, got '%s'", s);
  *index = i; *count = n;
}

void usbx_parse_size(const char *s, int *w, int *h) {
  char *end;
  long a = strtol(s, &end, 10);
  if (end == s || (*end != 'x' && *end != 'X')) usbx_usage_die("--size: expected WxH, got '%s'", s);
  const char *q = end + 1;
  long b = strtol(q, &end, 10);
  if (end == q || *end || a < 1 || b < 1 || a > 65536 || b > 65536) usbx_usage_die("--size: expected WxH, got '%s'", s);
  *w = (int)a; *h = (int)b;
}

int usbx_parse_doubles(const char *s, double *out, int max) {
  int n = 0;
  const char *p = s;
  while (*p) {
    if (n >= max) usbx_usage_die("too many values in '%s' (at most %d)", s, max);
    char *end;
    errno = 0;
    double v = strtod(p, &end);
    if (end == p || errno || !isfinite(v)) usbx_usage_die("not a number list: '%s'", s);
    out[n++] = v;
    if (*end == ',') p = end + 1;
    else if (*end == 0) p = end;
    else usbx_usage_die("not a number list: '%s'", s);
  }
  return n;
}

void usbx_progress_init(usbx_progress *p, bool force, int64_t total, const char *unit) {
  memset(p, 0, sizeof *p);
  p->tty = isatty(2);
  p->enabled = force || p->tty;
  p->start = p->last = usbx_now();
  p->total = total;
  p->unit = unit ? unit : "records";
}

static void progress_print(usbx_progress *p, bool final) {
  double now = usbx_now(), el = now - p->start;
  double rate = el > 0 ? (double)p->count / el : 0;
  char eta[32] = "";
  if (p->total > 0 && rate > 0 && p->count < p->total) {
    long s = (long)((double)(p->total - p->count) / rate);
    snprintf(eta, sizeof eta, " ETA %ld:%02ld", s / 60, s % 60);
  }
  char tot[48] = "";
  if (p->total > 0) snprintf(tot, sizeof tot, "/%lld (%.0f%%)", (long long)p->total, 100.0 * (double)p->count / (double)p->total);
  fprintf(stderr, "%s%s: %lld%s %s, %.2f/s%s%s", p->tty ? "\r" : "", usbx_progname(),
          (long long)p->count, tot, p->unit, rate, eta, (final || !p->tty) ? "\n" : "\033[K");
  fflush(stderr);
}

void usbx_progress_tick(usbx_progress *p, int64_t n) {
  p->count += n;
  if (!p->enabled) return;
  double now = usbx_now();
  /* Terminals get frequent redraws; logs a line every 10 s. */
  if (now - p->last < (p->tty ? 0.25 : 10.0)) return;
  p->last = now;
  progress_print(p, false);
}

void usbx_progress_done(usbx_progress *p) {
  if (p->enabled) progress_print(p, true);
}
