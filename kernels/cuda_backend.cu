/* cuda_backend.cu — the CUDA implementation of the operation table in ops.h: device memory,
 * uploads with conversion, matrix products through cuBLAS(Lt), and the table itself.  The
 * element-wise ops live in cuda_elementwise.cu, attention in cuda_attention.cu.
 * mm type: bf16.  One stream per backend; every op is asynchronous on it; download and sync wait. */
#include "cuda_common.cuh"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>

extern "C" void usbx_backend_cuda_free(usbx_backend *be);

static const size_t WORKSPACE_BYTES = 64u << 20;   /* cuBLAS(Lt) workspace */
static const size_t STAGE_BYTES = 32u << 20;       /* upload_convert chunk (pinned + device), x2 */

/* ------------------------------------------------------------------ memory */
static void *c_alloc(usbx_backend *be, size_t bytes) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
  if (e != cudaSuccess) {
    size_t fr = 0, tot = 0;
    cudaGetLastError();
    cudaMemGetInfo(&fr, &tot);
    usbx_die("cuda: cannot allocate %zu bytes on %s (%zu of %zu MiB free): %s", bytes, CU(be)->name,
             fr >> 20, tot >> 20, cudaGetErrorString(e));
  }
  return p;
}
static void c_free(usbx_backend *be, void *p) {
  if (p) CUDA_CHECK(cudaFree(p));
}
/* Uploads of up to a ring segment on lane 0 are copied into a pinned ring and sent from there: a
 * copy from pageable memory may first wait for the stream (the driver stages it), which would stop
 * the host from preparing the next batch while the GPU works.  A segment is reused 3 segments
 * later, after its event.  Larger uploads go from pageable memory.  Either way the call returns
 * once src has been read, so src may be reused at once. */
static const size_t RING_SEG = 8u << 20;
static const int RING_SEGS = 4;
static void c_upload(usbx_backend *be, void *dst, const void *src, size_t bytes) {
  usbx_cuda *c = CU(be);
  if (!bytes) return;
  if (bytes > RING_SEG || c->lane != 0) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    return;
  }
  if (!c->ring) {
    CUDA_CHECK(cudaHostAlloc((void **)&c->ring, RING_SEG * RING_SEGS, cudaHostAllocDefault));
    for (int i = 0; i < RING_SEGS; i++) CUDA_CHECK(cudaEventCreateWithFlags(&c->ring_ev[i], cudaEventDisableTiming));
  }
  if (c->ring_off + bytes > RING_SEG) {   /* next segment: this one's copies are all enqueued */
    CUDA_CHECK(cudaEventRecord(c->ring_ev[c->ring_seg], c->stream));
    c->ring_seg = (c->ring_seg + 1) % RING_SEGS;
    CUDA_CHECK(cudaEventSynchronize(c->ring_ev[c->ring_seg]));   /* its copies of 4 segments ago (never recorded: done) */
    c->ring_off = 0;
  }
  char *stage = c->ring + (size_t)c->ring_seg * RING_SEG + c->ring_off;
  memcpy(stage, src, bytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, stage, bytes, cudaMemcpyHostToDevice, c->stream));
  c->ring_off += (bytes + 255) & ~(size_t)255;
}
static void c_download(usbx_backend *be, void *dst, const void *src, size_t bytes) {
  if (!bytes) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, CU(be)->stream));
  CUDA_CHECK(cudaStreamSynchronize(CU(be)->stream));
}
static void c_copy(usbx_backend *be, void *dst, const void *src, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, CU(be)->stream));
}
static void c_memset0(usbx_backend *be, void *p, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, CU(be)->stream));
}
static void c_sync(usbx_backend *be) {
  usbx_cuda *c = CU(be);
  CUDA_CHECK(cudaStreamSynchronize(c->stream));
  if (c->lanes[1].stream) CUDA_CHECK(cudaStreamSynchronize(c->lane ? c->lanes[0].stream : c->lanes[1].stream));
}

/* lane 1: a stream of the highest priority (its short kernels go first when SMs free up), its own
 * cuBLAS workspace and scratch (ops on both lanes may run at once) */
static void lane1_make(usbx_cuda *c) {
  if (c->lanes[1].stream) return;
  int lo = 0, hi = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  CUDA_CHECK(cudaStreamCreateWithPriority(&c->lanes[1].stream, cudaStreamNonBlocking, hi));
  CUDA_CHECK(cudaMalloc(&c->lanes[1].workspace, WORKSPACE_BYTES));
  for (int i = 0; i < 2; i++) CUDA_CHECK(cudaEventCreateWithFlags(&c->lane_ev[i], cudaEventDisableTiming));
}
/* makes lane's stream, workspace and scratch the current ones (the fields ops use) */
static void lane_swap(usbx_cuda *c, int lane) {
  c->lanes[c->lane].scratch = c->attn_scratch; c->lanes[c->lane].scratch_bytes = c->attn_scratch_bytes;
  c->lane = lane;
  c->stream = c->lanes[lane].stream;
  c->workspace = c->lanes[lane].workspace;
  c->attn_scratch = c->lanes[lane].scratch; c->attn_scratch_bytes = c->lanes[lane].scratch_bytes;
}
static void c_set_lane(usbx_backend *be, int lane) {
  usbx_cuda *c = CU(be);
  if (lane != 0 && lane != 1) usbx_die("cuda: lane %d (0 or 1)", lane);
  if (lane == c->lane) return;
  lane1_make(c);
  lane_swap(c, lane);
  CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
  CUBLAS_CHECK(cublasSetWorkspace(c->blas, c->workspace, c->workspace_bytes));
}
static void c_lane_wait(usbx_backend *be, int waiter, int signaler) {
  usbx_cuda *c = CU(be);
  if (waiter == signaler) return;
  if ((waiter != 0 && waiter != 1) || (signaler != 0 && signaler != 1)) usbx_die("cuda: lane_wait(%d, %d)", waiter, signaler);
  if (signaler == 1 && !c->lanes[1].stream) return;   /* nothing was ever enqueued there */
  lane1_make(c);
  CUDA_CHECK(cudaEventRecord(c->lane_ev[signaler], c->lanes[signaler].stream));
  CUDA_CHECK(cudaStreamWaitEvent(c->lanes[waiter].stream, c->lane_ev[signaler], 0));
}
static size_t c_mem_available(usbx_backend *be) {
  (void)be;
  size_t fr = 0, tot = 0;
  CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
  return fr;
}

/* Host values (f32/bf16/f16/f64) -> device bf16 (to_mm) or f32.  Chunks are copied into one of
 * two pinned buffers by the CPU, sent raw, and converted on the GPU; an event per buffer guards
 * its reuse, so the CPU fills one chunk while the GPU takes the other.  src is not read after
 * the call returns. */
static void c_upload_convert(usbx_backend *be, void *dst, bool to_mm, const void *src, usbx_dtype st, size_t n) {
  usbx_cuda *c = CU(be);
  if (st != USBX_F32 && st != USBX_BF16 && st != USBX_F16 && st != USBX_F64)
    usbx_die("cuda upload_convert: unsupported source dtype %s", usbx_dtype_name(st));
  if (!n) return;
  if (!c->pinned[0]) {
    for (int b = 0; b < 2; b++) {
      CUDA_CHECK(cudaHostAlloc(&c->pinned[b], STAGE_BYTES, cudaHostAllocDefault));
      CUDA_CHECK(cudaMalloc(&c->raw[b], STAGE_BYTES));
      CUDA_CHECK(cudaEventCreateWithFlags(&c->staged[b], cudaEventDisableTiming));
    }
    c->stage_bytes = STAGE_BYTES;
  }
  size_t es = usbx_dtype_size(st), os = to_mm ? 2 : 4;
  bool same = (to_mm && st == USBX_BF16) || (!to_mm && st == USBX_F32);
  size_t per = c->stage_bytes / es;
  for (size_t off = 0, k = 0; off < n; off += per, k++) {
    int b = (int)(k & 1);
    size_t cnt = std::min(per, n - off);
    CUDA_CHECK(cudaEventSynchronize(c->staged[b]));
    memcpy(c->pinned[b], (const char *)src + off * es, cnt * es);
    char *d = (char *)dst + off * os;
    if (same) {
      CUDA_CHECK(cudaMemcpyAsync(d, c->pinned[b], cnt * es, cudaMemcpyHostToDevice, c->stream));
      CUDA_CHECK(cudaEventRecord(c->staged[b], c->stream));
    } else {
      CUDA_CHECK(cudaMemcpyAsync(c->raw[b], c->pinned[b], cnt * es, cudaMemcpyHostToDevice, c->stream));
      CUDA_CHECK(cudaEventRecord(c->staged[b], c->stream));
      if (to_mm) cu_convert_to_bf16(c->stream, (bf16 *)d, c->raw[b], st, cnt);
      else cu_convert_to_f32(c->stream, (float *)d, c->raw[b], st, cnt);
    }
  }
}

bool cu_grow(void **buf, size_t *cap, size_t bytes) {
  if (bytes <= *cap) return false;
  if (*buf) CUDA_CHECK(cudaFree(*buf));   /* synchronising: no user left */
  CUDA_CHECK(cudaMalloc(buf, bytes));
  *cap = bytes;
  return true;
}

void *cu_scratch(usbx_cuda *c, size_t bytes) {
  cu_grow(&c->attn_scratch, &c->attn_scratch_bytes, std::max(bytes, (size_t)8 << 20));
  return c->attn_scratch;
}

void *cu_attn_ws(usbx_cuda *c, size_t bytes) {
  cu_grow(&c->attn_ws, &c->attn_ws_bytes, bytes);
  return c->attn_ws;
}

/* ------------------------------------------------------------------ matmul
 * Row-major y[M,N] = x[M,K]·W[N,K]ᵀ is column-major yᵀ[N,M] = op_T(W as K×N)·(x as K×M): one "TN"
 * product with m = N, n = M, k = K.  cublasLt with the BIAS epilogue adds bias[N] per column of
 * yᵀ (per row of y) in the same kernel; accumulate sets beta = 1. */
static void plan_destroy(usbx_cuda_plan *p) {
  if (p->desc) cublasLtMatmulDescDestroy(p->desc);
  if (p->la) cublasLtMatrixLayoutDestroy(p->la);
  if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
  if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
  memset(p, 0, sizeof *p);
}
static size_t dtype_bytes(int t) { return t == CUDA_R_32F ? 4 : 2; }
bool cu_gemm_tunes(const usbx_cuda *c, int m, int n, int k) {
  return c->opt_gemm_tune > 0 && 2.0 * m * n * k >= c->opt_gemm_tune * 1e6;
}
/* the bucket of a tuned key: its token dimension (n where B, the activations, is not transposed;
 * k in the weight gradient's NT product; the leading dimensions never follow it) rounded up to a
 * power of two up to 2,048, to a multiple of 2,048 above */
static usbx_gemm_key tune_bucket(const usbx_gemm_key *k) {
  usbx_gemm_key b = *k;
  int *t = b.tb == CUBLAS_OP_N ? &b.n : &b.k, r = 64;
  if (*t > 2048) r = (*t + 2047) / 2048 * 2048;
  else while (r < *t) r *= 2;
  *t = r;
  return b;
}
/* times each of cublasLt's candidates for p (one warm-up, then three runs between two events) on
 * the operands given, the products going to D (C = D: beta 1 reads what the previous run left) */
static int plan_time(usbx_cuda *c, usbx_cuda_plan *p, const cublasLtMatmulHeuristicResult_t *res, int count, const void *A,
                     const void *B, void *D) {
  const float one = 1.f, zero = 0.f;
  const float *beta = p->key.acc ? &one : &zero;
  cudaEvent_t e[2];
  CUDA_CHECK(cudaEventCreate(&e[0]));
  CUDA_CHECK(cudaEventCreate(&e[1]));
  int best = 0;
  float best_ms = 1e30f;
  for (int i = 0; i < count; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > c->workspace_bytes) continue;
    bool ok = true;
    for (int r = 0; r < 4 && ok; r++) {
      if (r == 1) CUDA_CHECK(cudaEventRecord(e[0], c->stream));
      ok = cublasLtMatmul(c->lt, p->desc, &one, A, p->la, B, p->lb, beta, D, p->lc, D, p->lc, &res[i].algo, c->workspace,
                          res[i].workspaceSize, c->stream) == CUBLAS_STATUS_SUCCESS;
    }
    if (!ok) continue;   /* a candidate that will not launch is not chosen */
    CUDA_CHECK(cudaEventRecord(e[1], c->stream));
    CUDA_CHECK(cudaEventSynchronize(e[1]));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e[0], e[1]));
    if (ms < best_ms) { best_ms = ms; best = i; }
  }
  CUDA_CHECK(cudaEventDestroy(e[0]));
  CUDA_CHECK(cudaEventDestroy(e[1]));
  return best;
}
/* k's plan: cached, else made with cublasLt's heuristic; a tuned product takes its bucket's timed
 * algorithm where cublasLt accepts it for these sizes, else times the candidates on the caller's
 * operands (into D itself when it is overwritten anyway, into a stream-ordered temporary of D's
 * size when it accumulates; without memory for that, the first candidate is kept) */
static usbx_cuda_plan *gemm_plan(usbx_cuda *c, const usbx_gemm_key *k, const void *A, const void *B, void *D, const float *bias) {
  for (int i = 0; i < c->n_plans; i++)
    if (!memcmp(&c->plans[i].key, k, sizeof *k)) return &c->plans[i];
  usbx_cuda_plan *p;
  if (c->n_plans < USBX_CUDA_PLAN_CACHE) p = &c->plans[c->n_plans++];
  else { p = &c->plans[(unsigned)(k->m + k->n + k->k) % USBX_CUDA_PLAN_CACHE]; plan_destroy(p); }
  memset(p, 0, sizeof *p);
  p->key = *k;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, (cublasComputeType_t)k->compute, CUDA_R_32F));
  cublasOperation_t tA = (cublasOperation_t)k->ta, tB = (cublasOperation_t)k->tb;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB));
  if (k->bias) {
    cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
    cudaDataType_t bt = CUDA_R_32F;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  const cudaDataType_t ab = (cudaDataType_t)k->ab, cd = (cudaDataType_t)k->cd;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, ab, tA == CUBLAS_OP_N ? k->m : k->k, tA == CUBLAS_OP_N ? k->k : k->m, k->lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, ab, tB == CUBLAS_OP_N ? k->k : k->n, tB == CUBLAS_OP_N ? k->n : k->k, k->ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, cd, k->m, k->n, k->ldc));
  const bool tune = ab == CUDA_R_16BF && cu_gemm_tunes(c, k->m, k->n, k->k);
  usbx_gemm_key bucket;
  if (tune) {
    bucket = tune_bucket(k);
    for (int i = 0; i < c->n_tuned; i++) {
      usbx_cuda_tuned *t = &c->tuned[i];
      cublasLtMatmulHeuristicResult_t chk;
      if (memcmp(&t->bucket, &bucket, sizeof bucket) ||
          cublasLtMatmulAlgoCheck(c->lt, p->desc, p->la, p->lb, p->lc, p->lc, &t->algo, &chk) != CUBLAS_STATUS_SUCCESS ||
          chk.state != CUBLAS_STATUS_SUCCESS || chk.workspaceSize > c->workspace_bytes)
        continue;
      p->algo = t->algo;
      p->ws = chk.workspaceSize;
      p->ok = true;
      return p;
    }
  }
  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = c->workspace_bytes;
  uint32_t al = (uint32_t)k->align;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al));
  cublasLtMatmulHeuristicResult_t res[8];
  int count = 0;
  cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, tune ? 8 : 1, res, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS || count < 1 || res[0].state != CUBLAS_STATUS_SUCCESS) return p;
  int pick = 0;
  if (tune && count > 1) {
    void *T = D;
    if (k->acc) {
      const size_t bytes = (size_t)k->ldc * k->n * dtype_bytes(cd);
      if (cudaMallocAsync(&T, bytes, c->stream) != cudaSuccess) { cudaGetLastError(); T = NULL; }
      else CUDA_CHECK(cudaMemsetAsync(T, 0, bytes, c->stream));
    }
    if (T) {
      pick = plan_time(c, p, res, count, A, B, T);
      if (T != D) CUDA_CHECK(cudaFreeAsync(T, c->stream));
      usbx_cuda_tuned *t = &c->tuned[c->n_tuned < USBX_CUDA_TUNED_CACHE ? c->n_tuned++ : (unsigned)bucket.m % USBX_CUDA_TUNED_CACHE];
      t->bucket = bucket;
      t->algo = res[pick].algo;
    }
  }
  p->algo = res[pick].algo;
  p->ws = res[pick].workspaceSize;
  p->ok = true;
  return p;
}
bool cu_gemm(usbx_cuda *c, const usbx_gemm_key *k, const void *A, const void *B, const void *C, void *D, const float *bias) {
  usbx_cuda_plan *p = gemm_plan(c, k, A, B, D, bias);
  if (!p->ok) return false;
  if (k->bias) CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  const float one = 1.f, zero = 0.f;
  CUBLAS_CHECK(cublasLtMatmul(c->lt, p->desc, &one, A, p->la, B, p->lb, k->acc ? &one : &zero, k->acc ? C : D, p->lc, D, p->lc,
                              &p->algo, c->workspace, p->ws, c->stream));
  return true;
}
/* the TN key of row-major y[M,N] = x[M,K]·W[N,K]ᵀ (ab: the operands' type, cd: y's) */
static usbx_gemm_key tn_key(int M, int N, int K, int ab, int cd, int compute, bool bias, bool acc, int align) {
  usbx_gemm_key k;
  memset(&k, 0, sizeof k);
  k.m = N; k.n = M; k.k = K; k.lda = K; k.ldb = K; k.ldc = N;
  k.ta = CUBLAS_OP_T; k.tb = CUBLAS_OP_N;
  k.ab = ab; k.cd = cd; k.compute = compute;
  k.bias = bias; k.acc = acc; k.align = align;
  return k;
}
/* y = (res +) x·Wᵀ (+ bias): res NULL overwrites, res == y accumulates in place, another res is
 * read as cublasLt's C beside the output D */
static void matmul_into(usbx_cuda *c, float *y, const float *res, const void *x, const void *w, const float *bias, int M, int N, int K) {
  if (M <= 0 || N <= 0) return;
  const auto res_into_y = [&] {   /* for the paths that only accumulate in place */
    if (res && res != y) CUDA_CHECK(cudaMemcpyAsync(y, res, (size_t)M * N * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
    if (res) res = y;
  };
  if (K <= 0 || !c->opt_lt || (c->opt_gemv && M <= 4)) res_into_y();
  const bool accumulate = res != NULL;
  if (K <= 0) {       /* empty product */
    if (!accumulate) CUDA_CHECK(cudaMemsetAsync(y, 0, (size_t)M * N * sizeof(float), c->stream));
    if (bias) cu_add_bias(c->stream, y, bias, M, N);
    return;
  }
  if (c->opt_gemv && M <= 4 && cu_gemv(c->stream, y, (const bf16 *)x, (const bf16 *)w, bias, M, N, K, accumulate)) return;
  float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  if (c->opt_lt) {
    int al = std::min(std::min(ptr_align(x), ptr_align(w)), std::min(std::min(ptr_align(y), res ? ptr_align(res) : 256), bias ? ptr_align(bias) : 256));
    const usbx_gemm_key k = tn_key(M, N, K, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, bias != NULL, accumulate, al);
    if (cu_gemm(c, &k, w, x, res, y, bias)) return;
  }
  res_into_y();
  CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w, CUDA_R_16BF, K, x, CUDA_R_16BF, K,
                            &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (bias) cu_add_bias(c->stream, y, bias, M, N);
}
static void c_matmul(usbx_backend *be, float *y, const void *x, const void *w, const float *bias,
                     int M, int N, int K, bool accumulate) {
  matmul_into(CU(be), y, accumulate ? y : NULL, x, w, bias, M, N, K);
}
static void c_matmul_res(usbx_backend *be, float *y, const float *res, const void *x, const void *w, int M, int N, int K) {
  matmul_into(CU(be), y, res, x, w, NULL, M, N, K);
}

static void c_matmul_mm(usbx_backend *be, void *y, const void *x, const void *w, int M, int N, int K) {
  usbx_cuda *c = CU(be);
  if (M <= 0 || N <= 0) return;
  if (K <= 0) { CUDA_CHECK(cudaMemsetAsync(y, 0, (size_t)M * N * 2, c->stream)); return; }
  float alpha = 1.f, beta = 0.f;
  if (c->opt_lt) {
    int al = std::min(std::min(ptr_align(x), ptr_align(w)), ptr_align(y));
    const usbx_gemm_key k = tn_key(M, N, K, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, false, false, al);
    if (cu_gemm(c, &k, w, x, NULL, y, NULL)) return;
  }
  CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w, CUDA_R_16BF, K, x, CUDA_R_16BF, K,
                            &beta, y, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* fp32 operands (the autoencoder): the same TN product with f32 A/B.
 * Mode 0 (default): cublasLt in fp32 (SIMT, ~52 TFLOP/s on H100), bias epilogue.
 * Mode 1: the same with TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32; ~3e-4 relative).
 * Mode 2: "bf16x3": each operand is split into bf16 hi + lo (lo = bf16(x − hi)); x is laid out
 *   as rows [hi | lo] (2K) and W as rows [hi | hi] plus W_lo, so one bf16 product over 2K gives
 *   x_hi·W_hi + x_lo·W_hi and a second over K (x_hi rows at stride 2K) adds x_hi·W_lo.  The
 *   dropped x_lo·W_lo term and the split's residual are ~2^-16 relative: fp32-class results on
 *   bf16 tensor cores, for one extra pass over x. */
template <typename I>
__global__ void k_split_bf16(uint16_t *dst, uint16_t *lo_out, const float *src, I R, I K, bool dup_hi) {
  const I n = R * K;
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    I r = i / K, c = i - r * K;
    float x = src[i];
    uint16_t h = f32_to_bf16_bits(x);
    uint16_t l = f32_to_bf16_bits(x - __uint_as_float((uint32_t)h << 16));
    dst[r * 2 * K + c] = h;
    dst[r * 2 * K + K + c] = dup_hi ? h : l;
    if (lo_out) lo_out[i] = l;
  }
}
static void split_bf16(cudaStream_t s, uint16_t *dst, uint16_t *lo_out, const float *src, size_t R, size_t K, bool dup_hi) {
  size_t n = R * K;
  unsigned grid = (unsigned)std::min<size_t>((n + 255) / 256, 65535u * 8);
  if (n < (size_t)INT32_MAX / 2) k_split_bf16<int><<<grid, 256, 0, s>>>(dst, lo_out, src, (int)R, (int)K, dup_hi);
  else k_split_bf16<size_t><<<grid, 256, 0, s>>>(dst, lo_out, src, R, K, dup_hi);
  CUDA_LAUNCHED();
}
static void c_matmul(usbx_backend *be, float *y, const void *x, const void *w, const float *bias,
                     int M, int N, int K, bool accumulate);
static void c_matmul_f32(usbx_backend *be, float *y, const float *x, const float *w, const float *bias,
                         int M, int N, int K, bool accumulate) {
  usbx_cuda *c = CU(be);
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate) CUDA_CHECK(cudaMemsetAsync(y, 0, (size_t)M * N * sizeof(float), c->stream));
    if (bias) cu_add_bias(c->stream, y, bias, M, N);
    return;
  }
  float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  /* mode 3: bf16x3 where it is faster than fp32 SIMT (the wider products; at N = 128 its extra
   * pass over x costs more than it saves) */
  if (c->opt_f32_mode == 2 || (c->opt_f32_mode == 3 && N >= 256)) {
    const size_t xs_b = ((size_t)M * K * 4 + 255) & ~(size_t)255, ws_b = ((size_t)N * K * 4 + 255) & ~(size_t)255;
    char *scr = (char *)cu_scratch(c, xs_b + ws_b + (size_t)N * K * 2);
    uint16_t *xs = (uint16_t *)scr, *ws = (uint16_t *)(scr + xs_b), *wl = (uint16_t *)(scr + xs_b + ws_b);
    split_bf16(c->stream, xs, NULL, x, (size_t)M, (size_t)K, false);
    split_bf16(c->stream, ws, wl, w, (size_t)N, (size_t)K, true);
    c_matmul(be, y, xs, ws, bias, M, N, 2 * K, accumulate);             /* x_hi·W_hi + x_lo·W_hi (+ bias) */
    const float one = 1.f;
    CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, wl, CUDA_R_16BF, K, xs, CUDA_R_16BF, 2 * K,
                              &one, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));   /* + x_hi·W_lo */
    return;
  }
  const int kind = c->opt_f32_mode == 1 ? 2 : 1;
  if (c->opt_lt) {
    int al = std::min(std::min(ptr_align(x), ptr_align(w)), std::min(ptr_align(y), bias ? ptr_align(bias) : 256));
    const usbx_gemm_key k = tn_key(M, N, K, CUDA_R_32F, CUDA_R_32F, kind == 2 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                   bias != NULL, accumulate, al);
    if (cu_gemm(c, &k, w, x, y, y, bias)) return;
  }
  CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w, CUDA_R_32F, K, x, CUDA_R_32F, K, &beta, y,
                            CUDA_R_32F, N, kind == 2 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (bias) cu_add_bias(c->stream, y, bias, M, N);
}

/* ------------------------------------------------------------------ construction */
static void cuda_release(usbx_cuda *c) {
  if (!c) return;
  if (c->lane) lane_swap(c, 0);   /* lane 0's resources are freed below */
  if (c->lanes[1].stream) {
    cudaStreamSynchronize(c->lanes[1].stream);
    cudaStreamDestroy(c->lanes[1].stream);
    cudaFree(c->lanes[1].workspace);
    if (c->lanes[1].scratch) cudaFree(c->lanes[1].scratch);
    for (int i = 0; i < 2; i++) cudaEventDestroy(c->lane_ev[i]);
  }
  for (int i = 0; i < c->n_plans; i++) plan_destroy(&c->plans[i]);
  if (c->ring) {
    if (c->stream) cudaStreamSynchronize(c->stream);   /* no copy still reading the ring */
    cudaFreeHost(c->ring);
    for (int i = 0; i < RING_SEGS; i++) cudaEventDestroy(c->ring_ev[i]);
  }
  for (int b = 0; b < 2; b++) {
    if (c->pinned[b]) cudaFreeHost(c->pinned[b]);
    if (c->raw[b]) cudaFree(c->raw[b]);
    if (c->staged[b]) cudaEventDestroy(c->staged[b]);
  }
  if (c->attn_scratch) cudaFree(c->attn_scratch);
  if (c->attn_ws) cudaFree(c->attn_ws);
  if (c->fa_meta) cudaFree(c->fa_meta);
  if (c->fa_bits) cudaFree(c->fa_bits);
  if (c->fa_parts) cudaFree(c->fa_parts);
  if (c->fa_host) cudaFreeHost(c->fa_host);
  if (c->fa_ev) cudaEventDestroy(c->fa_ev);
  if (c->sumsq_done) cudaFree(c->sumsq_done);
  if (c->workspace) cudaFree(c->workspace);
  if (c->lt) cublasLtDestroy(c->lt);
  if (c->blas) cublasDestroy(c->blas);
  if (c->stream) cudaStreamDestroy(c->stream);
  free(c);
}

extern "C" usbx_backend *usbx_backend_cuda(char *err, size_t errlen) {
  char dummy[8];
  if (!err || !errlen) { err = dummy; errlen = sizeof dummy; }
  err[0] = 0;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    snprintf(err, errlen, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    cudaGetLastError();
    return NULL;
  }
  int dev = 0;
  const char *env = getenv("USBX_CUDA_DEVICE");
  if (env && *env) dev = atoi(env);
  if (dev < 0 || dev >= n) { snprintf(err, errlen, "USBX_CUDA_DEVICE=%d but %d device(s) visible", dev, n); return NULL; }
  usbx_cuda *c = (usbx_cuda *)calloc(1, sizeof *c);
  if (!c) { snprintf(err, errlen, "out of host memory"); return NULL; }
  c->device = dev;
#define INIT_TRY(call, what) do { cudaError_t e2 = (call); if (e2 != cudaSuccess) { \
    snprintf(err, errlen, "CUDA %s failed: %s", what, cudaGetErrorString(e2)); cudaGetLastError(); cuda_release(c); return NULL; } } while (0)
  INIT_TRY(cudaSetDevice(dev), "cudaSetDevice");
  INIT_TRY(cudaGetDeviceProperties(&c->prop, dev), "cudaGetDeviceProperties");
  if (c->prop.major < 8) {
    snprintf(err, errlen, "%s has compute capability %d.%d; the CUDA backend needs 8.0 or newer (bf16 tensor cores)",
             c->prop.name, c->prop.major, c->prop.minor);
    cuda_release(c);
    return NULL;
  }
  INIT_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "stream creation");
  INIT_TRY(cudaMalloc(&c->workspace, WORKSPACE_BYTES), "workspace allocation");
  c->workspace_bytes = WORKSPACE_BYTES;
  c->lanes[0].stream = c->stream;
  c->lanes[0].workspace = c->workspace;
#undef INIT_TRY
  cublasStatus_t s = cublasCreate(&c->blas);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(c->blas, c->stream);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetWorkspace(c->blas, c->workspace, c->workspace_bytes);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtCreate(&c->lt);
  if (s != CUBLAS_STATUS_SUCCESS) {
    snprintf(err, errlen, "cuBLAS initialisation failed: %s", cublasGetStatusString(s));
    cuda_release(c);
    return NULL;
  }
  c->opt_gemv = 1; c->opt_lt = 1; c->opt_attn_split = 1; c->opt_attn_variant = 5;
  if (getenv("USBX_CUDA_ATTN_VARIANT")) c->opt_attn_variant = atoi(getenv("USBX_CUDA_ATTN_VARIANT"));
  c->opt_f32_mode = 3;
  if (getenv("USBX_CUDA_F32_MODE")) c->opt_f32_mode = atoi(getenv("USBX_CUDA_F32_MODE"));
  c->opt_attn_masked_tc = 1;
  if (getenv("USBX_CUDA_ATTN_MASKED_TC")) c->opt_attn_masked_tc = atoi(getenv("USBX_CUDA_ATTN_MASKED_TC"));
  c->opt_attn_masked_gemm = 1;
  if (getenv("USBX_CUDA_ATTN_MASKED_GEMM")) c->opt_attn_masked_gemm = atoi(getenv("USBX_CUDA_ATTN_MASKED_GEMM"));
  c->opt_attn_masked_flash = 1;
  if (getenv("USBX_CUDA_ATTN_MASKED_FLASH")) c->opt_attn_masked_flash = atoi(getenv("USBX_CUDA_ATTN_MASKED_FLASH"));
  c->opt_attn_masked_row = 1;
  if (getenv("USBX_CUDA_ATTN_MASKED_ROW")) c->opt_attn_masked_row = atoi(getenv("USBX_CUDA_ATTN_MASKED_ROW"));
  c->opt_attn_masked_wg = 1;
  if (getenv("USBX_CUDA_ATTN_MASKED_WG")) c->opt_attn_masked_wg = atoi(getenv("USBX_CUDA_ATTN_MASKED_WG"));
  c->opt_attn_bwd_fused = 1;
  if (getenv("USBX_CUDA_ATTN_BWD_FUSED")) c->opt_attn_bwd_fused = atoi(getenv("USBX_CUDA_ATTN_BWD_FUSED"));
  c->opt_rms_bwd_fused = 1;
  if (getenv("USBX_CUDA_RMS_BWD_FUSED")) c->opt_rms_bwd_fused = atoi(getenv("USBX_CUDA_RMS_BWD_FUSED"));
  c->opt_gemm_tune = 2048;
  if (getenv("USBX_CUDA_GEMM_TUNE")) c->opt_gemm_tune = atoi(getenv("USBX_CUDA_GEMM_TUNE"));
  c->opt_gate_up_fused = 1;
  if (getenv("USBX_CUDA_GATEUP_FUSED")) c->opt_gate_up_fused = atoi(getenv("USBX_CUDA_GATEUP_FUSED"));
  snprintf(c->name, sizeof c->name, "cuda (%s, %d SMs, cc %d.%d)", c->prop.name, c->prop.multiProcessorCount,
           c->prop.major, c->prop.minor);

  usbx_backend *be = (usbx_backend *)calloc(1, sizeof *be);
  if (!be) { snprintf(err, errlen, "out of host memory"); cuda_release(c); return NULL; }
  be->dev = USBX_DEV_CUDA;
  be->mm_dtype = USBX_BF16;
  be->name = c->name;
  be->alloc = c_alloc;
  be->free = c_free;
  be->upload = c_upload;
  be->download = c_download;
  be->copy = c_copy;
  be->memset0 = c_memset0;
  be->sync = c_sync;
  be->set_lane = c_set_lane;
  be->lane_wait = c_lane_wait;
  be->mem_available = c_mem_available;
  be->upload_convert = c_upload_convert;
  be->matmul = c_matmul;
  be->matmul_res = c_matmul_res;
  be->embed = cu_embed;
  be->rmsnorm = cu_rmsnorm;
  be->layernorm = cu_layernorm;
  be->qk_norm_rope = cu_qk_norm_rope;
  be->to_mm = cu_to_mm;
  be->silu_mul = cu_silu_mul;
  be->silu_mul_mm = cu_silu_mul_mm;
  be->matmul_mm = c_matmul_mm;
  be->gate_up_silu = cu_gate_up_silu;
  {
    /* USBX_CUDA_GATEUP_BF16=1 rounds the MLP's gate|up product to bf16 (as upstream does) where
     * gate_up_silu does not run: 2-3 % faster than f32 on an H100, but the gen fixture error rises
     * from 7.9e-3 to 1.02e-2 (benchmark/RESULTS.md), so f32 stays the default */
    const char *gu = getenv("USBX_CUDA_GATEUP_BF16");
    if (gu && strcmp(gu, "1") == 0) usbx_cuda_set_option(be, "gateup_bf16", 1);
  }
  be->gelu_tanh = cu_gelu_tanh;
  be->add = cu_add;
  be->scatter_rows = cu_scatter_rows;
  be->gather_rows = cu_gather_rows;
  be->attention = cu_attention;
  be->add_row = cu_add_row;
  be->silu = cu_silu;
  be->cfg_euler = cu_cfg_euler;
  be->im2col = cu_im2col;
  be->group_norm = cu_group_norm;
  be->upsample2x = cu_upsample2x;
  be->argmax = cu_argmax;
  be->matmul_f32 = c_matmul_f32;
  be->im2col_f32 = cu_im2col_f32;
  be->attention_f32 = cu_attention_f32;
  cu_install_train_ops(be);
  be->destroy = usbx_backend_cuda_free;
  be->impl = c;
  return be;
}

extern "C" void usbx_backend_cuda_free(usbx_backend *be) {
  if (!be) return;
  usbx_cuda *c = CU(be);
  if (c) {
    cudaStreamSynchronize(c->stream);
    cuda_release(c);
  }
  free(be);
}

extern "C" int usbx_cuda_set_option(usbx_backend *be, const char *name, int value) {
  usbx_cuda *c = CU(be);
  int *o = !strcmp(name, "gemv") ? &c->opt_gemv : !strcmp(name, "lt") ? &c->opt_lt
         : !strcmp(name, "attn_split") ? &c->opt_attn_split
         : !strcmp(name, "attn_variant") ? &c->opt_attn_variant
         : !strcmp(name, "f32_mode") ? &c->opt_f32_mode
         : !strcmp(name, "attn_masked_tc") ? &c->opt_attn_masked_tc
         : !strcmp(name, "attn_masked_gemm") ? &c->opt_attn_masked_gemm
         : !strcmp(name, "attn_masked_row") ? &c->opt_attn_masked_row
         : !strcmp(name, "attn_masked_wg") ? &c->opt_attn_masked_wg
         : !strcmp(name, "attn_bwd_fused") ? &c->opt_attn_bwd_fused
         : !strcmp(name, "gate_up_fused") ? &c->opt_gate_up_fused
         : !strcmp(name, "rms_bwd_fused") ? &c->opt_rms_bwd_fused
         : !strcmp(name, "gemm_tune") ? &c->opt_gemm_tune
         : !strcmp(name, "attn_masked_flash") ? &c->opt_attn_masked_flash : NULL;
  if (!strcmp(name, "gateup_bf16")) {
    int old = be->silu_mul_gu != NULL;
    be->silu_mul_gu = value ? cu_silu_mul_gu : NULL;
    return old;
  }
  if (!o) return -1;
  int old = *o;
  *o = value;
  return old;
}

extern "C" double usbx_cuda_time_ms(usbx_backend *be, void (*fn)(void *), void *arg, int warmup, int reps) {
  usbx_cuda *c = CU(be);
  for (int i = 0; i < warmup; i++) fn(arg);
  CUDA_CHECK(cudaStreamSynchronize(c->stream));
  if (reps < 1) reps = 1;
  std::vector<cudaEvent_t> ev(2 * (size_t)reps);
  for (auto &x : ev) CUDA_CHECK(cudaEventCreate(&x));
  for (int i = 0; i < reps; i++) {
    CUDA_CHECK(cudaEventRecord(ev[2 * i], c->stream));
    fn(arg);
    CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], c->stream));
  }
  CUDA_CHECK(cudaStreamSynchronize(c->stream));
  std::vector<float> t(reps);
  for (int i = 0; i < reps; i++) CUDA_CHECK(cudaEventElapsedTime(&t[i], ev[2 * i], ev[2 * i + 1]));
  for (auto &x : ev) CUDA_CHECK(cudaEventDestroy(x));
  std::sort(t.begin(), t.end());
  return reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
}

extern "C" void *usbx_cuda_stream(usbx_backend *be) { return (void *)CU(be)->stream; }
extern "C" int usbx_cuda_sm_count(usbx_backend *be) { return CU(be)->prop.multiProcessorCount; }
extern "C" size_t usbx_cuda_l2_bytes(usbx_backend *be) { return (size_t)CU(be)->prop.l2CacheSize; }
