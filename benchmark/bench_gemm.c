/* bench_gemm.c — the trainer's cuBLAS products at the 1.59 B timing model's shapes (benchmark/
 * mfu-1p5b.json: hidden 1536, MLP 8960, 2 KV heads of 128), each timed as usbx-train issues it
 * (cublasGemmEx with the default algorithm, or cublasLt's first heuristic for the forward) and with
 * every algorithm cublasLt's heuristic offers (up to 32): is there a faster one the default misses?
 * Rows: M tokens of one expert (BENCH_GEMM_M, default "8160,32688"); for each weight W[N,K] the
 * forward y = x·Wᵀ, the input gradient dx = dy·W and the weight gradient dW += dyᵀ·x.
 * Median of 10 timed runs after 3 warm-up runs (CUDA events).  Prints a markdown table on stdout.
 * Without CUDA it says "skipped" and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef USBX_HAVE_CUDA
int main(void) {
  printf("skipped: this build has no CUDA support\n");
  return 0;
}
#else
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "bench_gemm: %s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define BK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "bench_gemm: %s: status %d\n", #x, (int)s_); exit(1); } } while (0)

enum { RUNS = 10, WARM = 3, MAX_ALGOS = 32 };
static cublasHandle_t blas;
static cublasLtHandle_t lt;
static cudaStream_t st;
static void *ws;
static const size_t WS_BYTES = 32u << 20;

/* one cuBLAS column-major product D[m,n] = op(A)·op(B) (+ beta·D) */
typedef struct {
  const char *name;
  cublasOperation_t ta, tb;
  int m, n, k;
  cudaDataType_t out;
  float beta;
  const void *A, *B;
  void *D;
} prod;

static int cmp_f(const void *a, const void *b) { float x = *(const float *)a, y = *(const float *)b; return (x > y) - (x < y); }

typedef void (*run_fn)(const prod *p, const cublasLtMatmulAlgo_t *algo, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la,
                       cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, size_t wsz);
static float time_median(const prod *p, run_fn f, const cublasLtMatmulAlgo_t *algo, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la,
                         cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, size_t wsz) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  float t[RUNS];
  for (int i = 0; i < WARM; i++) f(p, algo, d, la, lb, lc, wsz);
  for (int i = 0; i < RUNS; i++) {
    CK(cudaEventRecord(e0, st));
    f(p, algo, d, la, lb, lc, wsz);
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&t[i], e0, e1));
  }
  CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
  qsort(t, RUNS, sizeof t[0], cmp_f);
  return t[RUNS / 2];
}
static int lda_of(cublasOperation_t t, int rows, int cols) { return t == CUBLAS_OP_N ? rows : cols; }
static void run_gemmex(const prod *p, const cublasLtMatmulAlgo_t *algo, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la,
                       cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, size_t wsz) {
  (void)algo; (void)d; (void)la; (void)lb; (void)lc; (void)wsz;
  const float one = 1.f;
  BK(cublasGemmEx(blas, p->ta, p->tb, p->m, p->n, p->k, &one, p->A, CUDA_R_16BF, lda_of(p->ta, p->m, p->k), p->B, CUDA_R_16BF,
                  lda_of(p->tb, p->k, p->n), &p->beta, p->D, p->out, p->m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
static void run_lt(const prod *p, const cublasLtMatmulAlgo_t *algo, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la,
                   cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, size_t wsz) {
  const float one = 1.f;
  BK(cublasLtMatmul(lt, d, &one, p->A, la, p->B, lb, &p->beta, p->D, lc, p->D, lc, algo, ws, wsz, st));
}

static void bench(const prod *p, double *t_def, double *t_best) {
  cublasLtMatmulDesc_t d;
  cublasLtMatrixLayout_t la, lb, lc;
  BK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  BK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &p->ta, sizeof p->ta));
  BK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &p->tb, sizeof p->tb));
  BK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, p->ta == CUBLAS_OP_N ? p->m : p->k, p->ta == CUBLAS_OP_N ? p->k : p->m,
                                lda_of(p->ta, p->m, p->k)));
  BK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, p->tb == CUBLAS_OP_N ? p->k : p->n, p->tb == CUBLAS_OP_N ? p->n : p->k,
                                lda_of(p->tb, p->k, p->n)));
  BK(cublasLtMatrixLayoutCreate(&lc, p->out, p->m, p->n, p->m));
  cublasLtMatmulPreference_t pref;
  BK(cublasLtMatmulPreferenceCreate(&pref));
  size_t wsb = WS_BYTES;
  BK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
  cublasLtMatmulHeuristicResult_t res[MAX_ALGOS];
  int count = 0;
  BK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, MAX_ALGOS, res, &count));
  cublasLtMatmulPreferenceDestroy(pref);
  const double flop = 2.0 * p->m * p->n * p->k;
  *t_def = time_median(p, run_gemmex, NULL, d, la, lb, lc, 0);
  double first = 0, best = 1e30;
  int best_i = -1;
  for (int i = 0; i < count; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    double t = time_median(p, run_lt, &res[i].algo, d, la, lb, lc, res[i].workspaceSize);
    if (i == 0) first = t;
    if (t < best) { best = t; best_i = i; }
  }
  *t_best = best < *t_def ? best : *t_def;
  printf("| %s | %d x %d x %d | %.3f (%.0f) | %.3f (%.0f) | %.3f (%.0f), #%d of %d | %+.1f %% |\n", p->name, p->m, p->n, p->k, *t_def,
         flop / *t_def * 1e-9, first, flop / first * 1e-9, best, flop / best * 1e-9, best_i, count, (*t_def / best - 1) * 100);
  fflush(stdout);
  cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(d);
}

static void *dev_rand(size_t n_bf16) {
  unsigned short *h = malloc(n_bf16 * 2);
  if (!h) { fprintf(stderr, "bench_gemm: out of host memory\n"); exit(1); }
  unsigned s = 12345;
  for (size_t i = 0; i < n_bf16; i++) { s = s * 1664525u + 1013904223u; h[i] = (unsigned short)(0x3c00 | (s >> 25)); h[i] ^= (s >> 31) << 15; }
  void *d;
  CK(cudaMalloc(&d, n_bf16 * 2));
  CK(cudaMemcpy(d, h, n_bf16 * 2, cudaMemcpyHostToDevice));
  free(h);
  return d;
}

int main(void) {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) { printf("skipped: no CUDA device\n"); return 0; }
  BK(cublasCreate(&blas)); BK(cublasLtCreate(&lt));
  CK(cudaStreamCreate(&st));
  CK(cudaMalloc(&ws, WS_BYTES));
  BK(cublasSetStream(blas, st)); BK(cublasSetWorkspace(blas, ws, WS_BYTES));
  const char *ms = getenv("BENCH_GEMM_M");
  if (!ms || !*ms) ms = "8160,32688";
  const int D = 1536, F = 8960, KV = 256;
  struct { const char *w; int N, K; } W[] = {{"q", D, D}, {"k", KV, D}, {"o", D, D}, {"gate", F, D}, {"down", D, F}};
  struct cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("# %s\n\nms (TFLOP/s); default: what usbx-train calls (cublasGemmEx, CUBLAS_GEMM_DEFAULT); lt#0: cublasLt's first heuristic\n\n", prop.name);
  printf("| product | m x n x k | default | lt#0 | best | best vs default |\n| --- | --- | --- | --- | --- | --- |\n");
  double sum_def = 0, sum_best = 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", ms);
  for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
    const int M = atoi(tok);
    if (M <= 0) { fprintf(stderr, "bench_gemm: BENCH_GEMM_M: bad row count '%s'\n", tok); return 1; }
    for (size_t w = 0; w < sizeof W / sizeof W[0]; w++) {
      const int N = W[w].N, K = W[w].K;
      void *x = dev_rand((size_t)M * K), *wt = dev_rand((size_t)N * K), *dy = dev_rand((size_t)M * N), *out;
      size_t out_elems = (size_t)M * (N > K ? N : K);
      if ((size_t)N * K > out_elems) out_elems = (size_t)N * K;
      CK(cudaMalloc(&out, out_elems * 4));
      CK(cudaMemset(out, 0, out_elems * 4));
      char name[3][64];
      snprintf(name[0], 64, "%s fwd, M=%d", W[w].w, M);
      snprintf(name[1], 64, "%s dx, M=%d", W[w].w, M);
      snprintf(name[2], 64, "%s dW, M=%d", W[w].w, M);
      /* forward: y[M,N] = x·Wᵀ; column-major yᵀ[N,M] = W(K×N)ᵀ · xᵀ(K×M); bf16 out for gate/up, f32 otherwise */
      prod f = {name[0], CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, N == F ? CUDA_R_16BF : CUDA_R_32F, 0.f, wt, x, out};
      /* input gradient: dxᵀ[K,M] = W(K×N) · dyᵀ(N×M); bf16 out (the trainer's dx_mm) */
      prod g = {name[1], CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, CUDA_R_16BF, 0.f, wt, dy, out};
      /* weight gradient: dWᵀ[K,N] += xᵀ(K×M) · dy(M×N), f32 accumulation */
      prod h = {name[2], CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, CUDA_R_32F, 1.f, x, dy, out};
      const prod *ps[3] = {&f, &g, &h};
      for (int i = 0; i < 3; i++) {
        double a, b;
        bench(ps[i], &a, &b);
        const double reps = W[w].N == F ? 2 : W[w].N == KV ? 2 : 1;   /* gate and up; k and v */
        sum_def += a * reps; sum_best += b * reps;
      }
      CK(cudaFree(x)); CK(cudaFree(wt)); CK(cudaFree(dy)); CK(cudaFree(out));
    }
  }
  printf("\nAll rows, k and gate counted twice (for v and up): default %.3f ms, best %.3f ms (%.1f %% less)\n", sum_def,
         sum_best, (1 - sum_best / sum_def) * 100);
  return 0;
}
#endif
