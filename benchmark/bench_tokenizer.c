/* bench_tokenizer.c — encoding speed of the Qwen tokenizer on English text, one thread.
 *   bench_tokenizer --tokenizer PATH [--text FILE] [--mb 16] [--reps 3]
 * The text defaults to the English licence texts in /usr/share/common-licenses (about 300 KB of
 * prose), repeated to --mb MB.  Measured, median of --reps:
 *   whole    one usbx_tok_encode call on the whole buffer
 *   records  one call per line (the way usbx-tok sees JSONL records)
 *   cold     the first pass over the distinct text with a freshly loaded tokenizer (empty word
 *            cache), i.e. the speed on text whose words were never seen
 *   decode   usbx_tok_decode of all ids of "whole"
 * Prints one JSON record (MB = 10^6 bytes). */
#include "cli.h"
#include "tokenizer.h"
#include "util.h"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

static char *licences(size_t *len) {
  const char *dir = "/usr/share/common-licenses";
  DIR *d = opendir(dir);
  if (!d) return NULL;
  usbx_buf b = {0};
  struct dirent *e;
  char **names = NULL;
  size_t nn = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    names = xrealloc(names, (nn + 1) * sizeof *names);
    names[nn++] = xstrdup(e->d_name);
  }
  closedir(d);
  qsort(names, nn, sizeof *names, (int (*)(const void *, const void *))strcmp);
  for (size_t i = 0; i < nn; i++) {
    char *p = usbx_path_join(dir, names[i]);
    size_t n;
    char *t = usbx_read_file(p, &n);
    if (t) { usbx_buf_append(&b, t, n); free(t); }
    free(p);
    free(names[i]);
  }
  free(names);
  *len = b.len;
  return b.data;
}

static double time_lines(const usbx_tokenizer *t, const char *s, size_t n, size_t *nids) {
  double t0 = usbx_now();
  size_t total = 0;
  for (size_t i = 0; i < n;) {
    const char *nl = memchr(s + i, '\n', n - i);
    size_t e = nl ? (size_t)(nl - s) + 1 : n;
    int32_t *ids;
    size_t k;
    if (usbx_tok_encode(t, s + i, e - i, &ids, &k) != 0) usbx_die("encode failed (invalid UTF-8 in the text?)");
    total += k;
    free(ids);
    i = e;
  }
  *nids = total;
  return usbx_now() - t0;
}

int main(int argc, char **argv) {
  usbx_set_progname("bench_tokenizer");
  const char *path = NULL, *text_path = NULL;
  long mb = 16, reps = 3;
  usbx_opt opts[] = {
    {"tokenizer", USBX_OPT_STR, &path, "PATH", "tokenizer.json or folder", false},
    {"text", USBX_OPT_STR, &text_path, "FILE", "UTF-8 text (default: /usr/share/common-licenses/*)", false},
    {"mb", USBX_OPT_INT, &mb, "N", "repeat the text to at least N MB (default 16)", false},
    {"reps", USBX_OPT_INT, &reps, "N", "repetitions; the median is reported (default 3)", false},
    {0},
  };
  usbx_cli_parse(argc, argv, opts, "bench_tokenizer --tokenizer PATH [--text FILE] [--mb N] [--reps N]", NULL, NULL, NULL);
  if (!path) usbx_usage_die("--tokenizer is required");
  if (reps < 1 || reps > 99 || mb < 1 || mb > 4096) usbx_usage_die("--reps 1..99, --mb 1..4096");
  size_t slen = 0;
  char *src = text_path ? usbx_read_file(text_path, &slen) : licences(&slen);
  if (!src || !slen) usbx_die("no text (give --text FILE)");
  char err[1024];
  double t0 = usbx_now();
  usbx_tokenizer *tok = usbx_tok_load(path, err, sizeof err);
  if (!tok) usbx_die("%s", err);
  double load_s = usbx_now() - t0;

  /* cold: first pass over the distinct text */
  size_t cold_ids;
  double cold = time_lines(tok, src, slen, &cold_ids);

  size_t target = (size_t)mb * 1000000, n = 0;
  char *big = xmalloc(target + slen + 1);
  while (n < target) { memcpy(big + n, src, slen); n += slen; }
  big[n] = 0;

  double *tw = xcalloc((size_t)reps, sizeof *tw), *tr = xcalloc((size_t)reps, sizeof *tr), *td = xcalloc((size_t)reps, sizeof *td);
  size_t nids = 0, nids_lines = 0;
  for (long r = 0; r < reps; r++) {
    int32_t *ids;
    double a = usbx_now();
    if (usbx_tok_encode(tok, big, n, &ids, &nids) != 0) usbx_die("encode failed");
    tw[r] = usbx_now() - a;
    a = usbx_now();
    char *d = usbx_tok_decode(tok, ids, nids, false);
    td[r] = usbx_now() - a;
    if (strcmp(d, big) != 0) usbx_err("warning: decode(encode(text)) differs from the text (not NFC?)");
    free(d);
    free(ids);
    tr[r] = time_lines(tok, big, n, &nids_lines);
  }
  qsort(tw, (size_t)reps, sizeof *tw, cmp_d);
  qsort(tr, (size_t)reps, sizeof *tr, cmp_d);
  qsort(td, (size_t)reps, sizeof *td, cmp_d);
  double mbytes = (double)n / 1e6;
  printf("{\"bench\":\"tokenizer\",\"text\":\"%s\",\"bytes\":%zu,\"ids\":%zu,\"bytes_per_id\":%.2f,"
         "\"load_s\":%.3f,\"whole_MBps\":%.1f,\"records_MBps\":%.1f,\"cold_MBps\":%.1f,\"cold_bytes\":%zu,"
         "\"decode_MBps\":%.1f,\"reps\":%ld,\"threads\":1}\n",
         text_path ? text_path : "/usr/share/common-licenses/*", n, nids, (double)n / (double)(nids ? nids : 1),
         load_s, mbytes / tw[reps / 2], mbytes / tr[reps / 2], (double)slen / 1e6 / cold, slen,
         mbytes / td[reps / 2], reps);
  (void)nids_lines;
  (void)cold_ids;
  free(tw); free(tr); free(td);
  free(big);
  free(src);
  usbx_tok_free(tok);
  return 0;
}
