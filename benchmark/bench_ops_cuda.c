/* bench_ops_cuda.c — micro-benchmarks of the CUDA backend's ops at BAGEL-7B shapes.
 * Times with CUDA events on the backend's stream (usbx_cuda_time_ms): warm-up, then the median of
 * N timed runs.  Inputs are random (never zeros).  Where one set of operands would fit in L2
 * (GEMV, decode attention), several copies are rotated so that every run reads device memory.
 * BENCH_WARM_S=S first runs each case for S seconds, so that the card reaches the clocks it holds
 * under sustained load (a long generation runs at its power limit; short bursts run at the boost
 * clock).  Prints a markdown report on stdout (and into argv[1] if given).  Without a GPU it says
 * "skipped" and exits 0. */
#include "ops.h"
#include "tensor.h"
#include "util.h"
#ifdef USBX_HAVE_CUDA
#include "cuda_extra.h"
#endif
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef USBX_HAVE_CUDA
int main(void) {
  printf("skipped: this build has no CUDA support\n");
  return 0;
}
#else

static usbx_backend *be;
static FILE *rep;
static uint64_t rs = 0x9E3779B97F4A7C15ull;
static float frand(void) {            /* uniform in [-1, 1), never exactly 0 */
  rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
  float f = (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f;
  return f == 0.f ? 0.5f : f;
}
static void *rand_dev(size_t n, bool mm, float scale) {
  float *h = xmalloc(n * sizeof *h);
  for (size_t i = 0; i < n; i++) h[i] = frand() * scale;
  void *d = be->alloc(be, n * (mm ? usbx_dtype_size(be->mm_dtype) : 4));
  be->upload_convert(be, d, mm, h, USBX_F32, n);
  free(h);
  return d;
}
static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt); vprintf(fmt, ap); va_end(ap);
  fflush(stdout);
  if (rep) { va_start(ap, fmt); vfprintf(rep, fmt, ap); va_end(ap); }
}

/* BENCH_WARM_S (0 when unset) */
static double warm_seconds(void) {
  const char *e = getenv("BENCH_WARM_S");
  return e ? atof(e) : 0;
}
/* usbx_cuda_time_ms after warm_seconds() of the same case */
static double time_ms(void (*fn)(void *), void *arg, int warmup, int reps) {
  const double warm_s = warm_seconds();
  for (double t0 = usbx_now(); warm_s > 0 && usbx_now() - t0 < warm_s;) {
    for (int i = 0; i < 8; i++) fn(arg);
    be->sync(be);
  }
  return usbx_cuda_time_ms(be, fn, arg, warmup, reps);
}

/* ---------------------------------------------------------------- matmul */
typedef struct { float *y; void **x, **w; float *b; int M, N, K, nrot, i; } mm_arg;
static void mm_fn(void *p) {
  mm_arg *a = p;
  int r = a->i++ % a->nrot;
  be->matmul(be, a->y, a->x[r], a->w[r], a->b, a->M, a->N, a->K, false);
}
static double time_matmul(int M, int N, int K, bool bias, int reps, double *gbs) {
  size_t wbytes = (size_t)N * K * 2;
  int nrot = M <= 16 ? (int)((size_t)(256u << 20) / wbytes + 1) : 1;   /* > 2x L2 of weights */
  if (nrot > 64) nrot = 64;
  mm_arg a = {0};
  a.M = M; a.N = N; a.K = K; a.nrot = nrot;
  a.x = xmalloc(nrot * sizeof(void *)); a.w = xmalloc(nrot * sizeof(void *));
  for (int r = 0; r < nrot; r++) { a.x[r] = rand_dev((size_t)M * K, true, 1.f); a.w[r] = rand_dev((size_t)N * K, true, 0.05f); }
  a.y = be->alloc(be, (size_t)M * N * 4);
  a.b = bias ? rand_dev(N, false, 1.f) : NULL;
  double ms = time_ms(mm_fn, &a, 5 + nrot, reps);
  if (gbs) *gbs = ((double)wbytes + (double)M * K * 2 + (double)M * N * 4) / (ms * 1e-3) / 1e9;
  for (int r = 0; r < nrot; r++) { be->free(be, a.x[r]); be->free(be, a.w[r]); }
  be->free(be, a.y); be->free(be, a.b);
  free(a.x); free(a.w);
  return ms;
}

/* ---------------------------------------------------------------- attention */
typedef struct { void *o; void **q, **k, **v; usbx_attn_args a; int nrot, i; } at_arg;
static void at_fn(void *p) {
  at_arg *a = p;
  int r = a->i++ % a->nrot;
  be->attention(be, a->o, a->q[r], a->k[r], a->v[r], &a->a);
}
static double time_attention(int n_q, int q_start, int kv, bool causal, int reps, double *tflops, double *gbs) {
  const int H = 28, Hkv = 4, d = 128;
  size_t kvbytes = (size_t)kv * Hkv * d * 2 * 2;
  int nrot = (int)((size_t)(256u << 20) / (kvbytes + (size_t)n_q * H * d * 4) + 1);
  if (nrot > 64) nrot = 64;
  at_arg a = {0};
  a.a = (usbx_attn_args){n_q, q_start, kv, H, Hkv, d, causal};
  a.nrot = nrot;
  a.q = xmalloc(nrot * sizeof(void *)); a.k = xmalloc(nrot * sizeof(void *)); a.v = xmalloc(nrot * sizeof(void *));
  for (int r = 0; r < nrot; r++) {
    a.q[r] = rand_dev((size_t)n_q * H * d, true, 2.f);
    a.k[r] = rand_dev((size_t)kv * Hkv * d, true, 2.f);
    a.v[r] = rand_dev((size_t)kv * Hkv * d, true, 1.f);
  }
  a.o = be->alloc(be, (size_t)n_q * H * d * 2);
  double ms = time_ms(at_fn, &a, 3 + nrot, reps);
  double keys = 0;     /* visible (query, key) pairs */
  for (int i = 0; i < n_q; i++) keys += causal ? q_start + i + 1 : q_start + n_q;
  *tflops = 4.0 * keys * H * d / (ms * 1e-3) / 1e12;
  *gbs = (kvbytes + (double)n_q * H * d * 4) / (ms * 1e-3) / 1e9;
  for (int r = 0; r < nrot; r++) { be->free(be, a.q[r]); be->free(be, a.k[r]); be->free(be, a.v[r]); }
  be->free(be, a.o);
  free(a.q); free(a.k); free(a.v);
  return ms;
}

/* ---------------------------------------------------------------- the MLP's gate|up product */
typedef struct { void *act, *x, *w, *gu_mm; float *gu; int M, F, K, path; } gu_arg;
static void gu_fn(void *p) {
  gu_arg *a = p;
  const size_t FK = (size_t)a->F * a->K * 2, MF = (size_t)a->M * a->F * 2;
  void *wu = (char *)a->w + FK, *g_mm = a->gu_mm, *u_mm = (char *)a->gu_mm + MF;
  switch (a->path) {
    case 0: {   /* f32 gate and up products, then silu_mul (bagel.c's path before the fused kernel) */
      float *g = a->gu, *u = a->gu + (size_t)a->M * a->F;
      be->matmul(be, g, a->x, a->w, NULL, a->M, a->F, a->K, false);
      be->matmul(be, u, a->x, wu, NULL, a->M, a->F, a->K, false);
      be->silu_mul(be, a->act, g, u, a->M, a->F);
      break;
    }
    case 1:     /* one bf16 product [gate | up], then silu_mul_gu (option gateup_bf16, upstream's rounding) */
      be->matmul_mm(be, a->gu_mm, a->x, a->w, a->M, 2 * a->F, a->K);
      be->silu_mul_gu(be, a->act, a->gu_mm, a->M, a->F);
      break;
    case 3:     /* the trainer's forward: gate and up kept in bf16 for the backward */
      be->matmul_mm(be, g_mm, a->x, a->w, a->M, a->F, a->K);
      be->matmul_mm(be, u_mm, a->x, wu, a->M, a->F, a->K);
      be->silu_mul_mm(be, a->act, g_mm, u_mm, a->M, a->F);
      break;
    default:    /* 2: fused */
      if (!be->gate_up_silu(be, a->act, a->x, a->w, wu, a->M, a->F, a->K)) usbx_die("gate_up_silu does not take M=%d F=%d K=%d", a->M, a->F, a->K);
  }
}
static double time_gate_up(int M, int F, int K, int path, int reps) {
  gu_arg a = {0};
  a.M = M; a.F = F; a.K = K; a.path = path;
  a.x = rand_dev((size_t)M * K, true, 1.f); a.w = rand_dev((size_t)2 * F * K, true, 0.05f);
  a.act = be->alloc(be, (size_t)M * F * 2);
  if (path == 0) a.gu = be->alloc(be, (size_t)M * 2 * F * 4);
  else a.gu_mm = be->alloc(be, (size_t)M * 2 * F * 2);
  double ms = time_ms(gu_fn, &a, 3, reps);
  be->free(be, a.x); be->free(be, a.w); be->free(be, a.act); be->free(be, a.gu); be->free(be, a.gu_mm);
  return ms;
}

/* ---------------------------------------------------------------- fp32 autoencoder ops */
typedef struct { float *y, *x, *w, *b; int M, N, K; } mf_arg;
static void mf_fn(void *p) {
  mf_arg *a = p;
  be->matmul_f32(be, a->y, a->x, a->w, a->b, a->M, a->N, a->K, false);
}
static double time_matmul_f32(int M, int N, int K, int reps) {
  mf_arg a = {0};
  a.M = M; a.N = N; a.K = K;
  a.x = rand_dev((size_t)M * K, false, 1.f); a.w = rand_dev((size_t)N * K, false, 0.05f); a.b = rand_dev(N, false, 1.f);
  a.y = be->alloc(be, (size_t)M * N * 4);
  double ms = time_ms(mf_fn, &a, 3, reps);
  be->free(be, a.x); be->free(be, a.w); be->free(be, a.b); be->free(be, a.y);
  return ms;
}
typedef struct { void *o, *q, *k, *v; usbx_attn_args a; bool f32; } af_arg;
static void af_fn(void *p) {
  af_arg *a = p;
  if (a->f32) be->attention_f32(be, a->o, a->q, a->k, a->v, &a->a);
  else be->attention(be, a->o, a->q, a->k, a->v, &a->a);
}
static double time_vae_attn(int HW, int C, bool f32, int reps) {
  af_arg a = {0};
  a.f32 = f32;
  a.a = (usbx_attn_args){HW, 0, HW, 1, 1, C, false};
  size_t n = (size_t)HW * C;
  a.q = rand_dev(n, !f32, 0.3f); a.k = rand_dev(n, !f32, 0.3f); a.v = rand_dev(n, !f32, 1.f);
  a.o = be->alloc(be, n * 4);
  double ms = time_ms(af_fn, &a, f32 ? 1 : 0, reps);
  be->free(be, a.q); be->free(be, a.k); be->free(be, a.v); be->free(be, a.o);
  return ms;
}

/* ---------------------------------------------------------------- training attention */
typedef struct { void *o, *q, *k, *v; float *lse, *dout, *dq, *dk, *dv; usbx_attn_masked_args a; bool bwd; } tm_arg;
static void tm_fn(void *p) {
  tm_arg *a = p;
  if (a->bwd) be->attention_masked_bwd(be, a->dq, a->dk, a->dv, a->dout, a->q, a->k, a->v, a->o, a->lse, &a->a);
  else be->attention_masked(be, a->o, a->lse, a->q, a->k, a->v, &a->a);
}
/* a packed batch of `ns` samples of n/ns tokens each: text (causal; `text` tokens, or 1/4 when
 * negative) + noisy image (noise) per sample, H / Hkv heads of 128, tokens in packed order; returns
 * the visible (query, key) pairs in *pairs */
static void time_train_attn(int n, int ns, int H, int Hkv, int text_len, int reps, bool by_sample, bool expert_order, double *fwd_ms,
                            double *bwd_ms, double *pairs) {
  const int d = 128;
  int32_t *meta = xmalloc(4 * (size_t)n * sizeof *meta);
  int per = n / ns, n_text = 0;
  /* expert_order: stored as the trainer stores them, every sample's text first, then the images */
  for (int t = 0; t < n; t++) n_text += t - (t / per < ns ? t / per : ns - 1) * per < (text_len < 0 ? per / 4 : text_len);
  for (int t = 0, ti = 0, ii = n_text; t < n; t++) {
    int smp = t / per < ns ? t / per : ns - 1, off = t - smp * per, text = text_len < 0 ? per / 4 : text_len;
    int at = !expert_order ? t : off < text ? ti++ : ii++;   /* storage slot of packed position t */
    meta[at] = t; meta[n + at] = smp; meta[2 * n + at] = 2 * smp + (off >= text); meta[3 * n + at] = off >= text ? 2 : 0;
  }
  double vis = 0;
  for (int q = 0; q < n; q++)
    for (int k = 0; k < n; k++) {
      vis += usbx_attn_visible(meta[q], meta[n + q], meta[2 * n + q], meta[3 * n + q], meta[k], meta[n + k], meta[2 * n + k], meta[3 * n + k]);
    }
  *pairs = vis * H;
  int32_t *dm = be->alloc(be, 4 * (size_t)n * sizeof *dm);
  be->upload(be, dm, meta, 4 * (size_t)n * sizeof *dm);
  free(meta);
  tm_arg a = {0};
  /* a meta_id, as the trainer passes: the tiles are classified once, not in every timed call */
  a.a = (usbx_attn_masked_args){.n = n, .n_heads = H, .n_kv_heads = Hkv, .head_dim = d, .order = dm, .sample = dm + n, .split = dm + 2 * n, .mode = dm + 3 * n,
                                .meta_id = usbx_attn_meta_id()};
  int32_t *seg_off = xmalloc(sizeof(int32_t) * (size_t)(ns + 1)), *rows = xmalloc(sizeof(int32_t) * (size_t)n), *drows = NULL;
  for (int s = 0; s <= ns; s++) seg_off[s] = s == ns ? n : s * per;
  for (int t = 0; t < n; t++) rows[t] = t;
  if (by_sample) {
    drows = be->alloc(be, sizeof(int32_t) * (size_t)n);
    be->upload(be, drows, rows, sizeof(int32_t) * (size_t)n);
    a.a.n_seg = ns; a.a.seg_off = seg_off; a.a.seg_rows = drows;
  }
  size_t nq = (size_t)n * H * d, nk = (size_t)n * Hkv * d;
  a.q = rand_dev(nq, true, 1.f); a.k = rand_dev(nk, true, 1.f); a.v = rand_dev(nk, true, 1.f);
  a.o = be->alloc(be, nq * 2); a.lse = be->alloc(be, (size_t)H * n * 4);
  a.dout = rand_dev(nq, false, 1.f);
  a.dq = be->alloc(be, nq * 4); a.dk = be->alloc(be, nk * 4); a.dv = be->alloc(be, nk * 4);
  a.bwd = false;
  *fwd_ms = time_ms(tm_fn, &a, 1, reps);
  a.bwd = true;
  *bwd_ms = time_ms(tm_fn, &a, 1, reps);
  be->free(be, a.q); be->free(be, a.k); be->free(be, a.v); be->free(be, a.o); be->free(be, a.lse); be->free(be, a.dout);
  be->free(be, a.dq); be->free(be, a.dk); be->free(be, a.dv); be->free(be, dm);
  if (drows) be->free(be, drows);
  free(seg_off); free(rows);
}

/* ---------------------------------------------------------------- element-wise */
typedef struct { int op; void *o, *o_mm; float *x, *y, *w, *dw; int32_t *pos; int T, D; } ew_arg;
static void ew_fn(void *p) {
  ew_arg *a = p;
  switch (a->op) {
    case 0: be->rmsnorm(be, a->o, true, a->x, a->w, a->T, a->D, 1e-6f); break;
    case 1: be->silu_mul(be, a->o, a->x, a->y, a->T, a->D); break;
    case 2: be->qk_norm_rope(be, a->o, a->D, a->x, a->w, a->pos, a->T, a->D / 128, 128, 1e-6f, 1e6f); break;
    case 3: be->add(be, a->x, a->y, (size_t)a->T * a->D); break;
    case 4: be->argmax(be, a->pos, a->x, a->T, a->D); break;
    case 5: be->rmsnorm_bwd(be, a->o, NULL, a->dw, a->y, a->x, a->w, a->T, a->D, 1e-6f); break;   /* dx, dw += */
    case 6: be->rmsnorm_bwd(be, a->o, a->o_mm, a->dw, a->y, a->x, a->w, a->T, a->D, 1e-6f); break;   /* and dx in bf16 */
  }
}
static void bench_ew(const char *name, int op, int T, int D, double bytes, int reps) {
  ew_arg a = {0};
  a.op = op; a.T = T; a.D = D;
  size_t n = (size_t)T * D;
  a.x = rand_dev(n, false, 1.f); a.y = rand_dev(n, false, 1.f); a.w = rand_dev(D, false, 1.f); a.dw = rand_dev(D, false, 1.f);
  a.o = rand_dev(n, false, 1.f); a.o_mm = be->alloc(be, n * 2);
  int32_t *pos = xmalloc((size_t)T * 4);
  for (int t = 0; t < T; t++) pos[t] = t;
  a.pos = be->alloc(be, (size_t)T * 4 > 64 ? (size_t)T * 4 : 64);
  be->upload(be, a.pos, pos, (size_t)T * 4);
  free(pos);
  double ms = time_ms(ew_fn, &a, 5, reps);
  out("| %s | %d x %d | %.1f | %.0f |\n", name, T, D, ms * 1e3, bytes / (ms * 1e-3) / 1e9);
  be->free(be, a.x); be->free(be, a.y); be->free(be, a.w); be->free(be, a.dw); be->free(be, a.o); be->free(be, a.o_mm); be->free(be, a.pos);
}

int main(int argc, char **argv) {
  usbx_set_progname("bench_ops_cuda");
  char err[256];
  be = usbx_backend_cuda(err, sizeof err);
  if (!be) { printf("skipped: %s\n", err); return 0; }
  if (argc > 1 && !(rep = fopen(argv[1], "w"))) usbx_die("%s: cannot write", argv[1]);
  time_t now = time(NULL);
  char date[32];
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
  int reps = getenv("BENCH_REPS") ? atoi(getenv("BENCH_REPS")) : 30;
  char warm[64] = "";
  if (warm_seconds() > 0) snprintf(warm, sizeof warm, " (each case first run for %g s)", warm_seconds());
  out("## CUDA ops at BAGEL-7B shapes\n\ncard: %s; date: %s; median of %d runs after warm-up%s, CUDA events, random data\n\n",
      be->name, date, reps, warm);

  /* BENCH_ONLY=gemm|gemv|attn|vae|train|mlp|ew runs one section; BENCH_ATTN_CASES=n the first n attention
   * cases; BENCH_VARIANT=v one prefill attention variant (for profiling) */
  const char *only = getenv("BENCH_ONLY");
#define SECTION(name) (!only || !strcmp(only, name))
  int Ms[] = {1000, 4098};
  int NK[][2] = {{3584, 3584}, {512, 3584}, {18944, 3584}, {3584, 18944}, {152064, 3584}};
  int ncases = getenv("BENCH_ATTN_CASES") ? atoi(getenv("BENCH_ATTN_CASES")) : 1000;
  int only_variant = getenv("BENCH_VARIANT") ? atoi(getenv("BENCH_VARIANT")) : -1;
  if (SECTION("gemm")) {
  out("### GEMM (bf16 in, fp32 accumulate, f32 out), y[M,N] = x[M,K] W[N,K]^T\n\n");
  out("| M | N | K | bias | path | ms | TFLOP/s |\n|---|---|---|---|---|---|---|\n");
  for (int mi = 0; mi < 2; mi++)
    for (int s = 0; s < 4; s++) {
      int M = Ms[mi], N = NK[s][0], K = NK[s][1];
      bool bias = N == 512 || (N == 3584 && K == 3584);
      double ms = time_matmul(M, N, K, bias, reps, NULL);
      out("| %d | %d | %d | %s | cublasLt | %.3f | %.0f |\n", M, N, K, bias ? "yes" : "no", ms, 2.0 * M * N * K / (ms * 1e-3) / 1e12);
    }
  /* fused bias epilogue vs GemmEx + bias kernel */
  usbx_cuda_set_option(be, "lt", 0);
  for (int mi = 0; mi < 2; mi++) {
    double ms = time_matmul(Ms[mi], 3584, 3584, true, reps, NULL);
    out("| %d | 3584 | 3584 | yes | cublasGemmEx + bias kernel | %.3f | %.0f |\n", Ms[mi], ms, 2.0 * Ms[mi] * 3584 * 3584 / (ms * 1e-3) / 1e12);
  }
  usbx_cuda_set_option(be, "lt", 1);
  }
  if (SECTION("gemv")) {

  out("\n### GEMV (decode, M = 1): GB/s of weights + activations read\n\n");
  out("| N | K | weights MB | own GEMV us | GB/s | cuBLAS(Lt) us | GB/s |\n|---|---|---|---|---|---|---|\n");
  for (int s = 0; s < 5; s++) {
    int N = NK[s][0], K = NK[s][1];
    double g1, g2;
    usbx_cuda_set_option(be, "gemv", 1);
    double t1 = time_matmul(1, N, K, false, reps, &g1);
    usbx_cuda_set_option(be, "gemv", 0);
    double t2 = time_matmul(1, N, K, false, reps, &g2);
    usbx_cuda_set_option(be, "gemv", 1);
    out("| %d | %d | %.1f | %.1f | %.0f | %.1f | %.0f |\n", N, K, N * (double)K * 2 / 1e6, t1 * 1e3, g1, t2 * 1e3, g2);
  }
  }
  if (SECTION("attn")) {

  out("\n### Attention (H = 28, Hkv = 4, d = 128, bf16)\n\n");
  out("| case | n_q | q_start | kv_len | mask | kernel | ms | TFLOP/s | GB/s (q,k,v,out) |\n|---|---|---|---|---|---|---|---|---|\n");
  struct { const char *name; int n_q, q_start, kv; bool causal; } ac[] = {
      {"image block after context", 4098, 30, 4128, false},
      {"image block 1024 tokens", 1026, 30, 1056, false},
      {"text prefill", 1000, 0, 1000, true},
      {"text prefill after image", 300, 4128, 4428, true},
      {"decode", 1, 1000, 1001, true},
      {"decode after 4k image", 1, 4200, 4201, true},
  };
  static const char *vname[] = {"v0: 4 warps, Q own smem", "v1: 4 warps, Q staged", "v2: 8 warps, Q staged",
                                 "v3: v1 + fewer instructions", "v4: v2 + fewer instructions",
                                 "v5: auto (default)", "v6: wgmma, 2 warpgroups", "v7: wgmma, 3 warpgroups",
                                 "v8: wgmma, TMA producer warp"};
  int vdef = usbx_cuda_set_option(be, "attn_variant", 1);
  usbx_cuda_set_option(be, "attn_variant", vdef);
  for (size_t i = 0; i < sizeof ac / sizeof ac[0] && (int)i < ncases; i++) {
    bool dec = ac[i].n_q <= 16;
    for (int k = 0; k < (dec ? 2 : 9); k++) {      /* decode: split auto / off; prefill: variants */
      if (!dec && only_variant >= 0 && k != only_variant) continue;
      if (dec) usbx_cuda_set_option(be, "attn_split", k == 0);
      else usbx_cuda_set_option(be, "attn_variant", k);
      double tf, gb;
      double ms = time_attention(ac[i].n_q, ac[i].q_start, ac[i].kv, ac[i].causal, reps, &tf, &gb);
      out("| %s | %d | %d | %d | %s | %s | %.4f | %.1f | %.0f |\n", ac[i].name, ac[i].n_q, ac[i].q_start, ac[i].kv,
          ac[i].causal ? "causal" : "block", dec ? (k == 0 ? "split keys (auto)" : "no split") : vname[k], ms, tf, gb);
    }
    usbx_cuda_set_option(be, "attn_split", 1);
    usbx_cuda_set_option(be, "attn_variant", vdef);
  }

  }
  if (SECTION("vae")) {
  out("\n### Autoencoder in fp32 (FLUX VAE, 7B config): matmul_f32 and attention_f32\n\n");
  out("| op | shape | compute | ms | TFLOP/s |\n|---|---|---|---|---|\n");
  struct { const char *name; int M, N, K; } vm[] = {
      {"conv 3x3 128->128 at 1024^2 (band of 455 rows)", 465920, 128, 1152},
      {"conv 3x3 256->256 at 512^2", 262144, 256, 2304},
      {"conv 3x3 512->512 at 256^2", 65536, 512, 4608},
      {"conv 3x3 512->512 at 128^2", 16384, 512, 4608},
  };
  static const char *mname[] = {"fp32", "TF32", "bf16x3 (split + 2 bf16 GEMMs)"};
  for (size_t i = 0; i < sizeof vm / sizeof vm[0]; i++)
    for (int md = 0; md < 3; md++) {
      int old = usbx_cuda_set_option(be, "f32_mode", md);
      double ms = time_matmul_f32(vm[i].M, vm[i].N, vm[i].K, reps > 10 ? 10 : reps);
      usbx_cuda_set_option(be, "f32_mode", old);
      out("| matmul_f32 %s | %d x %d x %d | %s | %.3f | %.1f |\n", vm[i].name, vm[i].M, vm[i].N, vm[i].K, mname[md],
          ms, 2.0 * vm[i].M * vm[i].N * vm[i].K / (ms * 1e-3) / 1e12);
    }
  int HWs[] = {4096, 16384};
  for (int i = 0; i < 2; i++) {
    double fl = 4.0 * HWs[i] * (double)HWs[i] * 512;
    for (int tf = 0; tf < 2; tf++) {
      int old = usbx_cuda_set_option(be, "f32_mode", tf);
      double ms = time_vae_attn(HWs[i], 512, true, 5);
      usbx_cuda_set_option(be, "f32_mode", old);
      out("| attention_f32 (cuBLAS + softmax) | HW=%d d=512 | %s | %.3f | %.1f |\n", HWs[i], tf ? "TF32" : "fp32", ms, fl / (ms * 1e-3) / 1e12);
    }
    if (i) continue;        /* the old path at 16384 positions would take seconds */
    double ms = time_vae_attn(HWs[i], 512, false, 1);
    out("| attention bf16 (old path: warp per query) | HW=%d d=512 | bf16 in, fp32 | %.3f | %.2f |\n", HWs[i], ms, fl / (ms * 1e-3) / 1e12);
  }
  }
  if (SECTION("train")) {
  out("\n### Training attention (attention_masked, H = 28, Hkv = 4, d = 128; samples of 1/4 causal text + 3/4 noisy image, packed order)\n\n");
  out("| n | samples | kernels | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |\n|---|---|---|---|---|---|---|\n");
  int tn[][2] = {{2048, 1}, {8192, 2}, {8204, 2}, {8192, 4}, {16384, 4}};   /* 8204: samples of 4102 tokens, as the trainer packs them */
  for (int i = 0; i < (getenv("BENCH_TRAIN_LAYOUT_ONLY") ? 0 : 5); i++)   /* BENCH_TRAIN_LAYOUT_ONLY: just the trainer layout below */
    for (int kind = 4; kind >= 0; kind--) {   /* 4 flash (Hopper forward on sm_90), 3 flash with the mma.sync forward,
                                                 2 by sample through cuBLAS, 1 tiled, 0 scalar; BENCH_TRAIN_KIND=34: those */
      if (getenv("BENCH_TRAIN_KIND") && !strchr(getenv("BENCH_TRAIN_KIND"), '0' + kind)) continue;
      if (!kind && (tn[i][0] > 8192 || tn[i][0] % 1024)) continue;    /* the scalar kernels take seconds there */
      int old = usbx_cuda_set_option(be, "attn_masked_tc", kind > 0), old_fl = usbx_cuda_set_option(be, "attn_masked_flash", kind >= 3);
      int old_wg = usbx_cuda_set_option(be, "attn_masked_wg", kind == 4);
      double f, b, pairs;
      time_train_attn(tn[i][0], tn[i][1], 28, 4, -1, kind ? (reps > 10 ? 10 : reps) : 2, kind == 2, false, &f, &b, &pairs);
      usbx_cuda_set_option(be, "attn_masked_tc", old);
      usbx_cuda_set_option(be, "attn_masked_flash", old_fl);
      usbx_cuda_set_option(be, "attn_masked_wg", old_wg);
      /* visible pairs: fwd 4·d flops each (QK, PV), bwd 10·d (QK, dO·V, dV, dK, dQ; hi/lo terms and the
       * flash dQ kernel's second QK and dO·V not counted) */
      out("| %d | %d | %s | %.3f | %.1f | %.3f | %.1f |\n", tn[i][0], tn[i][1],
          kind == 4 ? "flash" : kind == 3 ? "flash, mma.sync forward" : kind == 2 ? "by sample (cuBLAS)" : kind ? "tiled tensor cores" : "scalar (warp per row)",
          f, 4.0 * 128 * pairs / (f * 1e-3) / 1e12, b, 10.0 * 128 * pairs / (b * 1e-3) / 1e12);
    }
  /* the 1.59 B trainer's batches (benchmark/mfu-1p5b.json): two 256x256 scenes, each a 20-token
   * caption and 4,082 noisy image tokens, 12 query heads on 2 KV heads; the default kernels */
  /* BENCH_TRAIN_LAYOUT=n:text[:e][:sN],...: other token counts and caption lengths; e: stored in the
   * trainer's expert order (every caption first) instead of packed order; sN: N samples (default 2;
   * s8 is the one-batch 32k step's eight) */
  out("\n1.59 B trainer layout (H = 12, Hkv = 2; samples of 20 causal text + 4,082 image tokens):\n\n");
  out("| n | samples | text per sample | order | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |\n|---|---|---|---|---|---|---|---|\n");
  const char *lay = getenv("BENCH_TRAIN_LAYOUT") ? getenv("BENCH_TRAIN_LAYOUT") : "8204:20,8204:20:e";
  for (const char *q = lay; q && *q; q = strchr(q, ',') ? strchr(q, ',') + 1 : NULL) {
    int ln = 0, lt = 0, ns = 2, used = 0;
    bool expert = false, bad = sscanf(q, "%d:%d%n", &ln, &lt, &used) < 2;
    for (const char *r = q + used; !bad && *r == ':'; ) {   /* the optional fields */
      if (r[1] == 'e') { expert = true; r += 2; }
      else if (r[1] == 's' && sscanf(r + 2, "%d%n", &ns, &used) == 1) r += 2 + used;
      else bad = true;
    }
    if (bad || ln < 256 || lt < 0 || ns < 1 || lt >= ln / ns / 2) {
      fprintf(stderr, "BENCH_TRAIN_LAYOUT: bad entry %s\n", q);
      exit(2);
    }
    double f, b, pairs;
    time_train_attn(ln, ns, 12, 2, lt, reps > 10 ? 10 : reps, false, expert, &f, &b, &pairs);
    out("| %d | %d | %d | %s | %.3f | %.1f | %.3f | %.1f |\n", ln, ns, lt, expert ? "expert" : "packed", f, 4.0 * 128 * pairs / (f * 1e-3) / 1e12, b,
        10.0 * 128 * pairs / (b * 1e-3) / 1e12);
  }
  }
  if (SECTION("mlp")) {
  out("\n### MLP gate|up product and SiLU·up, act[M,F] (bf16) = silu(x Wg^T) * (x Wu^T), K = hidden\n\n");
  out("| M | F | K | path | ms | TFLOP/s (of the product) |\n|---|---|---|---|---|---|\n");
  /* the gen expert's latent rows of a two-branch 512² / 1024² pass at the 7B-MoT shape, a 1000-token
   * prefill, and the 1.59 B trainer's shape */
  int gs[][3] = {{2048, 18944, 3584}, {8192, 18944, 3584}, {1000, 18944, 3584}, {8192, 8960, 1536}};
  static const char *gname[] = {"f32 products + silu_mul", "bf16 product + silu_mul_gu", "gate_up_silu (fused)",
                                "trainer's: bf16 products kept + silu_mul_mm"};
  int old_bf = usbx_cuda_set_option(be, "gateup_bf16", 1);
  for (int i = 0; i < 4; i++)
    for (int path = 0; path < 4; path++) {
      if (path == 3 && i != 3) continue;   /* the trainer's path at its shape */
      double ms = time_gate_up(gs[i][0], gs[i][1], gs[i][2], path, reps > 20 ? 20 : reps);
      out("| %d | %d | %d | %s | %.3f | %.0f |\n", gs[i][0], gs[i][1], gs[i][2], gname[path], ms,
          4.0 * gs[i][0] * gs[i][1] * gs[i][2] / (ms * 1e-3) / 1e12);
    }
  usbx_cuda_set_option(be, "gateup_bf16", old_bf);
  /* for scale: the pass's other large product, down (cuBLAS), at the two-branch 1024² rows */
  double ms = time_matmul(8192, 3584, 18944, false, reps > 20 ? 20 : reps, NULL);
  out("\nFor scale, the down product through cublasLt (M 8192, N 3584, K 18944, f32 out): %.3f ms, %.0f TFLOP/s\n", ms,
      2.0 * 8192 * 3584 * 18944 / (ms * 1e-3) / 1e12);
  }
  if (SECTION("ew")) {
  out("\n### Element-wise (GB/s = bytes read + written)\n\n| op | shape | us | GB/s |\n|---|---|---|---|\n");
  bench_ew("rmsnorm f32 -> bf16", 0, 4098, 3584, 4098.0 * 3584 * 6, reps);
  bench_ew("rmsnorm f32 -> bf16 (decode)", 0, 1, 3584, 3584.0 * 6, reps);
  bench_ew("silu_mul f32 -> bf16", 1, 4098, 18944, 4098.0 * 18944 * 10, reps);
  bench_ew("qk_norm_rope (28 heads)", 2, 4098, 3584, 4098.0 * 3584 * 6, reps);
  bench_ew("qk_norm_rope (4 heads)", 2, 4098, 512, 4098.0 * 512 * 6, reps);
  bench_ew("add f32", 3, 4098, 3584, 4098.0 * 3584 * 12, reps);
  bench_ew("argmax (lm head logits)", 4, 1, 152064, 152064.0 * 4, reps);
  /* the trainer's norms (1.59 B: 8k tokens x 1536) and the 7B-MoT's; bytes: x and dy read, dx read and written */
  /* (the trainer's call also writes dx in bf16 for the next product: 18 bytes; two passes = the
   * previous kernels, then to_mm) */
  for (int fused = 1; fused >= 0; fused--) {
    usbx_cuda_set_option(be, "rms_bwd_fused", fused);
    const char *v = fused ? "" : ", two passes";
    char name[96];
    snprintf(name, sizeof name, "rmsnorm_bwd (dx, dw%s)", v);
    bench_ew(name, 5, 8192, 1536, 8192.0 * 1536 * 16, reps);
    bench_ew(name, 5, 8192, 3584, 8192.0 * 3584 * 16, reps);
    snprintf(name, sizeof name, "rmsnorm_bwd (dx, dx bf16, dw%s)", v);
    bench_ew(name, 6, 8192, 1536, 8192.0 * 1536 * 18, reps);
    bench_ew(name, 6, 8192, 3584, 8192.0 * 3584 * 18, reps);
    bench_ew(name, 6, 40, 1536, 40.0 * 1536 * 18, reps);
  }
  usbx_cuda_set_option(be, "rms_bwd_fused", 1);
  }
  if (rep) fclose(rep);
  be->destroy(be);
  return 0;
}
#endif
