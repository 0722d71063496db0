/* bench_gen.c — seconds per image of usbx's text-to-image path (UniSandbox settings unless
 * changed), think-mode overhead, and the peak of the backend's own allocations.
 *   bench_gen --model DIR [--device cuda] [--size 1024x1024] [--steps 50] [--reps 2]
 *             [--think-tokens 100]
 * Prints one JSON record. */
#include "bagel.h"
#include "cli.h"
#include "jsonl.h"
#include "t2i.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

/* Allocation accounting: the backend's alloc/free wrapped to track live and peak bytes. */
static usbx_backend *g_be;
static void *(*real_alloc)(usbx_backend *, size_t);
static void (*real_free)(usbx_backend *, void *);
typedef struct { void *p; size_t n; } blk;
static blk *blks; static size_t nblk, capblk, live, peak;
static void *count_alloc(usbx_backend *be, size_t n) {
  void *p = real_alloc(be, n);
  if (nblk == capblk) { capblk = capblk ? capblk * 2 : 1024; blks = xrealloc(blks, capblk * sizeof *blks); }
  blks[nblk++] = (blk){p, n};
  live += n;
  if (live > peak) peak = live;
  return p;
}
static void count_free(usbx_backend *be, void *p) {
  for (size_t i = nblk; i-- > 0;)
    if (blks[i].p == p) { live -= blks[i].n; blks[i] = blks[--nblk]; break; }
  real_free(be, p);
}

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
  usbx_set_progname("bench_gen");
  const char *model = NULL, *device = "auto", *size = "1024x1024", *tokenizer = NULL;
  long steps = 50, reps = 2, think_tokens = 100, batch = 1;
  usbx_opt opts[] = {
    {"model", USBX_OPT_STR, &model, "DIR", "checkpoint folder", false},
    {"tokenizer", USBX_OPT_STR, &tokenizer, "PATH", "tokenizer (default: the model folder)", false},
    {"device", USBX_OPT_STR, &device, "cpu|cuda|auto", "backend", false},
    {"size", USBX_OPT_STR, &size, "WxH", "image size (default 1024x1024)", false},
    {"steps", USBX_OPT_INT, &steps, "N", "num_timesteps (default 50)", false},
    {"reps", USBX_OPT_INT, &reps, "N", "timed repetitions after one warm-up; median reported (default 2)", false},
    {"batch", USBX_OPT_INT, &batch, "N", "images per batched sampling run (usbx-gen --batch); s_per_image = time / N (default 1)", false},
    {"think-tokens", USBX_OPT_INT, &think_tokens, "N", "think tokens for the think-mode timing (default 100; 0 skips)", false},
    {0},
  };
  usbx_cli_parse(argc, argv, opts, "bench_gen --model DIR [--device D] [--size WxH] [--steps N] [--reps N]", NULL, NULL, NULL);
  if (!model) usbx_usage_die("--model is required");
  usbx_backend *be = usbx_backend_open(device);
  g_be = be; real_alloc = be->alloc; real_free = be->free;
  be->alloc = count_alloc; be->free = count_free;
  char err[1024];
  double t0 = usbx_now();
  usbx_t2i *t = usbx_t2i_open(model, be, tokenizer, err, sizeof err);
  if (!t) usbx_die("%s", err);
  double load_s = usbx_now() - t0;
  size_t weights = live;
  usbx_t2i_opts o = {0};
  usbx_gen_defaults(&o.gen);
  o.gen.steps = (int)steps;
  usbx_parse_size(size, &o.width, &o.height);
  o.max_think_tokens = (int)think_tokens + 1;
  uint8_t *rgb = xmalloc((size_t)o.width * o.height * 3);
  const char *prompt = "Generate as many cups as the result of 8 / 4.";
  double *tn = xcalloc((size_t)reps, sizeof(double)), *tt = xcalloc((size_t)reps, sizeof(double));
  int think_len = 0;
  for (long r = -1; r < reps; r++) {
    double a = usbx_now();
    o.think = false;
    if (batch > 1) {
      const char **ps = xmalloc(sizeof(char *) * (size_t)batch);
      uint64_t *seeds = xmalloc(sizeof(uint64_t) * (size_t)batch);
      uint8_t **rgbs = xmalloc(sizeof(uint8_t *) * (size_t)batch);
      char **errs = xmalloc(sizeof(char *) * (size_t)batch);
      for (long i = 0; i < batch; i++) { ps[i] = prompt; seeds[i] = (uint64_t)(100 * (r + 1) + i); rgbs[i] = xmalloc((size_t)o.width * o.height * 3); }
      if (usbx_t2i_generate_batch(t, (int)batch, ps, NULL, &o, seeds, rgbs, NULL, errs)) usbx_die("%s", errs[0]);
      for (long i = 0; i < batch; i++) free(rgbs[i]);
      free(ps); free(seeds); free(rgbs); free(errs);
    } else if (usbx_t2i_generate(t, prompt, &o, 1 + (uint64_t)r, rgb, NULL, err, sizeof err)) usbx_die("%s", err);
    be->sync(be);
    double b = usbx_now();
    if (r >= 0) tn[r] = (b - a) / (double)batch;
    if (think_tokens > 0) {
      char *think = NULL;
      o.think = true;
      if (usbx_t2i_generate(t, prompt, &o, 1 + (uint64_t)r, rgb, &think, err, sizeof err)) usbx_die("%s", err);
      be->sync(be);
      if (r >= 0) tt[r] = usbx_now() - b;
      think_len = think ? (int)strlen(think) : 0;
      free(think);
    }
  }
  qsort(tn, (size_t)reps, sizeof(double), cmp_d);
  qsort(tt, (size_t)reps, sizeof(double), cmp_d);
  jv rec = jv_object();
  rec = usbx_jv_set_str(rec, "bench", "gen");
  rec = usbx_jv_set_str(rec, "backend", be->name);
  rec = usbx_jv_set_str(rec, "model", model);
  rec = usbx_jv_set_num(rec, "width", o.width);
  rec = usbx_jv_set_num(rec, "height", o.height);
  rec = usbx_jv_set_num(rec, "steps", (double)steps);
  rec = usbx_jv_set_num(rec, "batch", (double)batch);
  rec = usbx_jv_set_num(rec, "load_s", load_s);
  rec = usbx_jv_set_num(rec, "s_per_image", tn[reps / 2]);
  if (think_tokens > 0) {
    rec = usbx_jv_set_num(rec, "s_per_image_think", tt[reps / 2]);
    rec = usbx_jv_set_num(rec, "think_overhead_s", tt[reps / 2] - tn[reps / 2]);
    rec = usbx_jv_set_num(rec, "think_max_tokens", (double)think_tokens);
    rec = usbx_jv_set_num(rec, "think_text_bytes", think_len);
  }
  rec = usbx_jv_set_num(rec, "weights_gib", (double)weights / (1 << 30));
  rec = usbx_jv_set_num(rec, "peak_alloc_gib", (double)peak / (1 << 30));
  usbx_jsonl_write(stdout, rec);
  usbx_t2i_close(t);
  free(rgb); free(tn); free(tt); free(blks);
  be->alloc = real_alloc; be->free = real_free;
  usbx_backend_close(be);
  return 0;
}
