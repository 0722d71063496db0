/* bench_llm.c — language-model speed: prefill throughput of one text segment and batch-1
 * greedy decode tokens/s after a context, on any checkpoint folder (usbx-ckpt init makes one
 * at the 7B-MoT shape).  Prints one JSON record.
 *   bench_llm --model DIR [--device cuda] [--prefill 1000] [--decode 200] [--reps 3] */
#include "bagel.h"
#include "cli.h"
#include "jsonl.h"
#include "util.h"
#include <stdlib.h>

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
  usbx_set_progname("bench_llm");
  const char *model = NULL, *device = "auto";
  long prefill = 1000, decode = 200, reps = 3;
  usbx_opt opts[] = {
    {"model", USBX_OPT_STR, &model, "DIR", "checkpoint folder", false},
    {"device", USBX_OPT_STR, &device, "cpu|cuda|auto", "backend", false},
    {"prefill", USBX_OPT_INT, &prefill, "N", "tokens in the prefilled text segment (default 1000)", false},
    {"decode", USBX_OPT_INT, &decode, "N", "greedy decode steps timed after the prefill (default 200)", false},
    {"reps", USBX_OPT_INT, &reps, "N", "repetitions; the median is reported (default 3)", false},
    {0},
  };
  usbx_cli_parse(argc, argv, opts, "bench_llm --model DIR [--device D] [--prefill N] [--decode N] [--reps N]", NULL, NULL, NULL);
  if (!model) usbx_usage_die("--model is required");
  char err[1024];
  usbx_backend *be = usbx_backend_open(device);
  double t0 = usbx_now();
  usbx_bagel *m = usbx_bagel_load(model, be, USBX_PART_LLM, err, sizeof err);
  if (!m) usbx_die("%s", err);
  double load_s = usbx_now() - t0;
  const usbx_bagel_config *c = usbx_bagel_cfg(m);
  int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)prefill);
  usbx_rng r; usbx_rng_seed(&r, 7);
  for (long i = 0; i < prefill; i++) ids[i] = (int32_t)usbx_rng_below(&r, (uint64_t)(c->vocab < 150000 ? c->vocab : 150000));
  double *tp = xcalloc((size_t)reps + 1, sizeof(double)), *td = xcalloc((size_t)reps + 1, sizeof(double));
  for (long rep = -1; rep < reps; rep++) {   /* rep -1 warms up */
    usbx_ctx *ctx = usbx_ctx_new(m);
    be->sync(be);
    double a = usbx_now();
    usbx_bagel_prefill_text(m, ctx, ids, (int)prefill, NULL);
    be->sync(be);
    double b = usbx_now();
    int32_t tok = ids[prefill - 1];
    for (long s = 0; s < decode; s++) tok = usbx_bagel_decode_step(m, ctx, tok, NULL);
    be->sync(be);
    double e = usbx_now();
    if (rep >= 0) { tp[rep] = b - a; td[rep] = e - b; }
    usbx_ctx_free(m, ctx);
  }
  qsort(tp, (size_t)reps, sizeof(double), cmp_d);
  qsort(td, (size_t)reps, sizeof(double), cmp_d);
  double pm = tp[reps / 2], dm = td[reps / 2];
  jv rec = jv_object();
  rec = usbx_jv_set_str(rec, "bench", "llm");
  rec = usbx_jv_set_str(rec, "backend", be->name);
  rec = usbx_jv_set_str(rec, "model", model);
  rec = usbx_jv_set_num(rec, "load_s", load_s);
  rec = usbx_jv_set_num(rec, "prefill_tokens", (double)prefill);
  rec = usbx_jv_set_num(rec, "prefill_s", pm);
  rec = usbx_jv_set_num(rec, "prefill_tok_per_s", (double)prefill / pm);
  rec = usbx_jv_set_num(rec, "decode_tokens", (double)decode);
  rec = usbx_jv_set_num(rec, "decode_tok_per_s", (double)decode / dm);
  rec = usbx_jv_set_num(rec, "decode_ms_per_tok", 1e3 * dm / (double)decode);
  usbx_jsonl_write(stdout, rec);
  usbx_bagel_free(m);
  usbx_backend_close(be);
  free(ids); free(tp); free(td);
  return 0;
}
