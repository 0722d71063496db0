/* cuda_train.cu — the training ops of ops.h on CUDA: backward passes (matmul through cuBLAS,
 * norms, QK-norm + RoPE, activations, embedding), packed masked attention with its log-sum-exp
 * and backward, cross entropy, AdamW, squared-norm accumulation and EMA.
 *
 * Written for correctness first: each kernel follows the CPU reference (kernels/cpu_backward.c,
 * cpu_attention_masked.c, cpu_optim.c) step by step in fp32, with column reductions (dw, db)
 * done deterministically in two passes (per-block partials, then an ordered sum).  The masked
 * attention runs on the tiled tensor-core kernels of cuda_attn_masked.cu; the one-warp-per-
 * (token, head) online-softmax kernels here remain as the reference path (option
 * "attn_masked_tc" = 0).  Conventions as ops.h: "+=" outputs accumulate, "overwrite" outputs are
 * written, NULL outputs are skipped. */
#include "cuda_common.cuh"
#include <math.h>
#include <algorithm>
#include <vector>

static inline cudaStream_t S(usbx_backend *be) { return CU(be)->stream; }
static inline int grid_for(size_t n, int threads, int cap = 65535 * 8) {
  size_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > (size_t)cap) g = cap;
  return (int)g;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
/* sum over a block of NT threads (NT multiple of 32, <= 1024); every thread gets the result */
template <typename T>
__device__ T block_sum_t(T v, T *red) {
  int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (l == 0) red[w] = v;
  __syncthreads();
  T s = 0;
  for (int i = 0; i < nw; i++) s += red[i];
  return s;
}

/* ---------------------------------------------------------------- column sums
 * out[c] += Σ_r part[r][c] for an [nparts, cols] partial table, in a fixed order (deterministic):
 * a block per 32 columns, its 32 warps summing every 32nd part, then the 32 sums in warp order.  (One
 * thread per column, summing all parts in turn, took ~22 us for the 1024 parts of a q/k-norm
 * weight gradient, whose 128 columns gave one block; 8 warps per block: 10 us.) */
#define COLSUM_GROUPS 32
__global__ void __launch_bounds__(32 * COLSUM_GROUPS) k_colsum_parts(float *out, const float *part, int nparts, int cols) {
  __shared__ double red[COLSUM_GROUPS][32];
  const int c = blockIdx.x * 32 + threadIdx.x, g = threadIdx.y;
  double s = 0;
  if (c < cols)
    for (int r = g; r < nparts; r += COLSUM_GROUPS) s += part[(size_t)r * cols + c];
  red[g][threadIdx.x] = s;
  __syncthreads();
  if (g == 0 && c < cols) {
    double t = 0;
    for (int k = 0; k < COLSUM_GROUPS; k++) t += red[k][threadIdx.x];
    out[c] += (float)t;
  }
}
static void colsum_parts(usbx_cuda *c, float *out, const float *part, int nparts, int cols) {
  k_colsum_parts<<<(cols + 31) / 32, dim3(32, COLSUM_GROUPS), 0, c->stream>>>(out, part, nparts, cols);
  CUDA_LAUNCHED();
}
/* rows split into gridDim.y chunks; part[chunk][c] = Σ_{rows of chunk} src[r][c] (f32 or bf16) */
template <bool BF>
__global__ void k_colsum_chunks(float *part, const void *src, int rows, int cols) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  int per = (rows + gridDim.y - 1) / gridDim.y, r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  double s = 0;
  for (int r = r0; r < r1; r++)
    s += BF ? (double)bf2f(((const bf16 *)src)[(size_t)r * cols + c]) : (double)((const float *)src)[(size_t)r * cols + c];
  part[(size_t)blockIdx.y * cols + c] = (float)s;
}
/* row chunks of the column partials (bias and norm weight gradients): at least 32 rows each, at most
 * 256 chunks, so that 8k rows give enough blocks to keep loads in flight; the partial rows are then
 * summed by k_colsum_parts */
static int row_chunks(int rows) { return std::max(1, std::min(256, rows / 32)); }

/* ---------------------------------------------------------------- matmul_bwd */
/* dxᵀ[K,M] (+)= (W as stored, K×N column-major) · dyᵀ[N,M]: dx in f32 (CUDA_R_32F) or bf16 (CUDA_R_16BF,
 * rounded once); beta 1 accumulates.  Products large enough to be tuned go through cu_gemm. */
static void dx_product(usbx_cuda *c, void *dx, cudaDataType dx_type, float beta, const void *dy_mm, const void *w, int M, int N, int K) {
  const float one = 1.f;
  if (cu_gemm_tunes(c, K, M, N)) {
    const usbx_gemm_key k = {K, M, N, K, N, K, CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_16BF, dx_type, CUBLAS_COMPUTE_32F, 0, beta != 0.f, gemm_align(dx, dy_mm, w)};
    if (cu_gemm(c, &k, w, dy_mm, dx, dx, NULL)) return;
  }
  CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, &one, w, CUDA_R_16BF, K, dy_mm, CUDA_R_16BF, N, &beta, dx, dx_type, K,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
/* dwᵀ[K,N] (+)= xᵀ[K,M] · dy[M,N] (f32; beta 1 accumulates) */
static void dw_product(usbx_cuda *c, float *dw, float beta, const void *x, const void *g, int M, int N, int K) {
  const float one = 1.f;
  if (cu_gemm_tunes(c, K, N, M)) {
    const usbx_gemm_key k = {K, N, M, K, N, K, CUBLAS_OP_N, CUBLAS_OP_T, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, 0, beta != 0.f,
                             gemm_align(dw, x, g)};
    if (cu_gemm(c, &k, x, g, dw, dw, NULL)) return;
  }
  CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, &one, x, CUDA_R_16BF, K, g, CUDA_R_16BF, N,
                            &beta, dw, CUDA_R_32F, K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
static void c_matmul_bwd(usbx_backend *be, float *dx, float *dw, float *db, const void *dy_mm, const float *dy,
                         const void *x, const void *w, int M, int N, int K, bool dx_add, bool dw_add) {
  usbx_cuda *c = CU(be);
  if ((!dy_mm && !dy) || M <= 0 || N <= 0) return;
  /* one scratch request for everything (a later, larger request would reallocate it) */
  const bool convert = (dx || dw) && K > 0 && !dy_mm;      /* cuBLAS takes bf16 operands */
  const int ch = row_chunks(M);
  const size_t conv_bytes = convert ? (((size_t)M * N * sizeof(bf16) + 255) & ~(size_t)255) : 0;
  char *scr = (char *)cu_scratch(c, conv_bytes + (db ? (size_t)ch * N * sizeof(float) : 0) + 256);
  const void *g = dy_mm;
  if (convert) {
    cu_to_mm(be, scr, N, dy, M, N);
    g = scr;
  }
  if (dx && K > 0) dx_product(c, dx, CUDA_R_32F, dx_add ? 1.f : 0.f, g, w, M, N, K);
  if (dw && K > 0) dw_product(c, dw, dw_add ? 1.f : 0.f, x, g, M, N, K);
  if (db) {
    float *part = (float *)(scr + conv_bytes);
    dim3 grid((N + 255) / 256, ch);
    if (dy) k_colsum_chunks<false><<<grid, 256, 0, c->stream>>>(part, dy, M, N);
    else k_colsum_chunks<true><<<grid, 256, 0, c->stream>>>(part, dy_mm, M, N);
    CUDA_LAUNCHED();
    colsum_parts(c, db, part, ch, N);
  }
}

static void c_matmul_dx_mm(usbx_backend *be, void *dx, const void *dy, const void *w, int M, int N, int K) {
  if (M > 0 && N > 0 && K > 0) dx_product(CU(be), dx, CUDA_R_16BF, 0.f, dy, w, M, N, K);
}

/* ---------------------------------------------------------------- rmsnorm_bwd / layernorm_bwd
 * Pass 1, one block per row: the forward's statistics (computed the same way), dx, and the
 * row's scalars for the weight gradients (rstd; mean too for LayerNorm).  Pass 2: column
 * partials over row chunks; pass 3: ordered sum into dw (and db). */
__global__ void k_rms_bwd_rows(float *dx, float *rstat, const float *dy, const float *x, const float *w, int dim, float eps) {
  __shared__ double redd[32];
  __shared__ float redf[32];
  size_t r = blockIdx.x;
  const float *xr = x + r * dim, *gr = dy + r * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum_t<float>(ss, redf);
  float rs = 1.0f / sqrtf(ss / (float)dim + eps);
  double dot = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dot += (double)gr[i] * w[i] * xr[i];
  dot = block_sum_t<double>(dot, redd);
  if (dx) {
    double cc = dot * (double)rs * rs * rs / dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dx[r * dim + j] += (float)((double)rs * w[j] * gr[j] - cc * xr[j]);
  }
  if (threadIdx.x == 0 && rstat) rstat[r] = rs;
}
__global__ void k_ln_bwd_rows(float *dx, float2 *rstat, const float *dy, const float *x, const float *w, int dim, float eps) {
  __shared__ double redd[32];
  __shared__ float redf[32];
  size_t r = blockIdx.x;
  const float *xr = x + r * dim, *gr = dy + r * dim;
  /* the CPU forward/backward statistics: mean and var summed sequentially in float; a block sum
   * in float differs only by rounding */
  float s = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
  float mean = block_sum_t<float>(s, redf) / (float)dim;
  float v = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) { float dd = xr[i] - mean; v += dd * dd; }
  float var = block_sum_t<float>(v, redf) / (float)dim;
  float inv = 1.0f / sqrtf(var + eps);
  double mg = 0, mgx = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    double xh = (double)(xr[i] - mean) * inv, g = (double)gr[i] * w[i];
    mg += g; mgx += g * xh;
  }
  mg = block_sum_t<double>(mg, redd) / dim;
  mgx = block_sum_t<double>(mgx, redd) / dim;
  if (dx)
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      double xh = (double)(xr[i] - mean) * inv, g = (double)gr[i] * w[i];
      dx[r * dim + i] += (float)(inv * (g - mg - xh * mgx));
    }
  if (threadIdx.x == 0 && rstat) rstat[r] = make_float2(mean, inv);
}
/* part[chunk][c] = Σ_rows dy·x̂ (x̂ = x·rstd for RMSNorm, (x−mean)·inv for LayerNorm); partb: Σ dy */
template <bool LN>
__global__ void k_norm_wgrad(float *partw, float *partb, const float *dy, const float *x, const void *rstat, int rows, int dim) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= dim) return;
  int per = (rows + gridDim.y - 1) / gridDim.y, r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  double sw = 0, sb = 0;
  for (int r = r0; r < r1; r++) {
    float g = dy[(size_t)r * dim + c], xv = x[(size_t)r * dim + c];
    double xh;
    if (LN) { float2 st = ((const float2 *)rstat)[r]; xh = (double)(xv - st.x) * st.y; }
    else xh = (double)xv * ((const float *)rstat)[r];
    sw += (double)g * xh;
    sb += g;
  }
  if (partw) partw[(size_t)blockIdx.y * dim + c] = (float)sw;
  if (partb) partb[(size_t)blockIdx.y * dim + c] = (float)sb;
}
/* RMSNorm backward with the weight gradient's column partials in the same pass, so x and dy are read
 * once: a block of 128 threads per chunk of rpb rows, each thread V float4 columns (dim = 512·V).
 * Per row one block sum of (Σx², Σdy·w·x), then dx (and its mm copy); the thread's partials
 * Σ dy·x·rstd stay in registers until the chunk ends.  Two summation buffers alternate between
 * rows, so one barrier per row suffices.  (The two-pass kernels, rows then column partials over
 * x and dy again: 157 us for 8192 x 1536 on an H100.) */
template <int V>
__global__ void __launch_bounds__(128) k_rms_bwd_fused(float *dx, void *dx_mm, float *partw, const float *dy, const float *x,
                                                       const float *w, int rows, int rpb, float eps) {
  constexpr int DIM = 512 * V;
  __shared__ float2 red[2][4];
  const int t = threadIdx.x, lane = t & 31, wid = t >> 5, r0 = blockIdx.x * rpb, r1 = min(rows, r0 + rpb);
  float4 wv[V], pw[V];
#pragma unroll
  for (int v = 0; v < V; v++) { wv[v] = ((const float4 *)w)[v * 128 + t]; pw[v] = make_float4(0.f, 0.f, 0.f, 0.f); }
  for (int r = r0, b = 0; r < r1; r++, b ^= 1) {
    const float4 *xr = (const float4 *)(x + (size_t)r * DIM), *gr = (const float4 *)(dy + (size_t)r * DIM);
    float4 xv[V], gv[V];
#pragma unroll
    for (int v = 0; v < V; v++) { xv[v] = xr[v * 128 + t]; gv[v] = gr[v * 128 + t]; }
    float ss = 0.f, dot = 0.f;
#pragma unroll
    for (int v = 0; v < V; v++) {
      ss += xv[v].x * xv[v].x + xv[v].y * xv[v].y + xv[v].z * xv[v].z + xv[v].w * xv[v].w;
      dot += gv[v].x * wv[v].x * xv[v].x + gv[v].y * wv[v].y * xv[v].y + gv[v].z * wv[v].z * xv[v].z + gv[v].w * wv[v].w * xv[v].w;
    }
    for (int o = 16; o; o >>= 1) { ss += __shfl_xor_sync(0xffffffffu, ss, o); dot += __shfl_xor_sync(0xffffffffu, dot, o); }
    if (lane == 0) red[b][wid] = make_float2(ss, dot);
    __syncthreads();
    const float2 s0 = red[b][0], s1 = red[b][1], s2 = red[b][2], s3 = red[b][3];
    ss = (s0.x + s1.x) + (s2.x + s3.x);
    dot = (s0.y + s1.y) + (s2.y + s3.y);
    const float rs = 1.0f / sqrtf(ss / (float)DIM + eps), cc = dot * rs * rs * rs / (float)DIM;
    if (dx) {
      float4 *dr = (float4 *)(dx + (size_t)r * DIM);
#pragma unroll
      for (int v = 0; v < V; v++) {
        float4 d = dr[v * 128 + t];
        d.x += rs * wv[v].x * gv[v].x - cc * xv[v].x;
        d.y += rs * wv[v].y * gv[v].y - cc * xv[v].y;
        d.z += rs * wv[v].z * gv[v].z - cc * xv[v].z;
        d.w += rs * wv[v].w * gv[v].w - cc * xv[v].w;
        dr[v * 128 + t] = d;
        if (dx_mm) store4(dx_mm, true, (size_t)r * DIM + (size_t)(v * 128 + t) * 4, d);
      }
    }
#pragma unroll
    for (int v = 0; v < V; v++) {
      pw[v].x += gv[v].x * xv[v].x * rs; pw[v].y += gv[v].y * xv[v].y * rs;
      pw[v].z += gv[v].z * xv[v].z * rs; pw[v].w += gv[v].w * xv[v].w * rs;
    }
  }
  if (partw)
#pragma unroll
    for (int v = 0; v < V; v++) ((float4 *)(partw + (size_t)blockIdx.x * DIM))[v * 128 + t] = pw[v];
}
template <int V>
static void rms_bwd_fused(usbx_cuda *c, float *dx, void *dx_mm, float *dw, const float *dy, const float *x, const float *w, int rows,
                          float eps) {
  static int occ;   /* resident blocks per SM: the chunks fill one wave */
  if (!occ) CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k_rms_bwd_fused<V>, 128, 0));
  const int target = std::max(1, occ) * c->prop.multiProcessorCount, rpb = (rows + target - 1) / target, nb = (rows + rpb - 1) / rpb;
  float *part = dw ? (float *)cu_scratch(c, (size_t)nb * 512 * V * sizeof(float)) : NULL;
  k_rms_bwd_fused<V><<<nb, 128, 0, c->stream>>>(dx, dx_mm, part, dy, x, w, rows, rpb, eps);
  CUDA_LAUNCHED();
  if (dw) colsum_parts(c, dw, part, nb, 512 * V);
}
static bool rms_bwd_fast(usbx_cuda *c, float *dx, void *dx_mm, float *dw, const float *dy, const float *x, const float *w, int rows,
                         int dim, float eps) {
  if (dim % 512 || dim > 4096 || !aligned16(dy) || !aligned16(x) || !aligned16(w) || (dx && !aligned16(dx)) || ((uintptr_t)dx_mm & 7u))
    return false;
  switch (dim / 512) {
  case 1: rms_bwd_fused<1>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  case 2: rms_bwd_fused<2>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  case 3: rms_bwd_fused<3>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  case 4: rms_bwd_fused<4>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  case 5: rms_bwd_fused<5>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  case 6: rms_bwd_fused<6>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  case 7: rms_bwd_fused<7>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  default: rms_bwd_fused<8>(c, dx, dx_mm, dw, dy, x, w, rows, eps); break;
  }
  return true;
}
static void norm_bwd(usbx_backend *be, bool ln, float *dx, float *dw, float *db, const float *dy, const float *x,
                     const float *w, int rows, int dim, float eps) {
  usbx_cuda *c = CU(be);
  if (rows <= 0 || dim <= 0) return;
  int ch = row_chunks(rows);
  size_t stat_bytes = (((size_t)rows * (ln ? sizeof(float2) : sizeof(float))) + 255) & ~(size_t)255;
  size_t part_bytes = (size_t)ch * dim * sizeof(float);
  char *scr = (char *)cu_scratch(c, stat_bytes + 2 * part_bytes);
  void *rstat = scr;
  float *pw = (float *)(scr + stat_bytes), *pb = (float *)(scr + stat_bytes + part_bytes);
  int threads = dim >= 1024 ? 512 : dim >= 256 ? 256 : 128;
  if (ln) k_ln_bwd_rows<<<rows, threads, 0, c->stream>>>(dx, (float2 *)rstat, dy, x, w, dim, eps);
  else k_rms_bwd_rows<<<rows, threads, 0, c->stream>>>(dx, (float *)rstat, dy, x, w, dim, eps);
  CUDA_LAUNCHED();
  if (dw || db) {
    dim3 grid((dim + 255) / 256, ch);
    if (ln) k_norm_wgrad<true><<<grid, 256, 0, c->stream>>>(dw ? pw : NULL, db ? pb : NULL, dy, x, rstat, rows, dim);
    else k_norm_wgrad<false><<<grid, 256, 0, c->stream>>>(pw, NULL, dy, x, rstat, rows, dim);
    CUDA_LAUNCHED();
    if (dw) colsum_parts(c, dw, pw, ch, dim);
    if (db && ln) colsum_parts(c, db, pb, ch, dim);
  }
}
static void c_rmsnorm_bwd(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, const float *x, const float *w,
                          int rows, int dim, float eps) {
  if (rows <= 0 || dim <= 0) return;
  if (CU(be)->opt_rms_bwd_fused && rms_bwd_fast(CU(be), dx, dx_mm, dw, dy, x, w, rows, dim, eps)) return;
  norm_bwd(be, false, dx, dw, NULL, dy, x, w, rows, dim, eps);
  if (dx && dx_mm) cu_to_mm(be, dx_mm, dim, dx, rows, dim);
}
static void c_layernorm_bwd(usbx_backend *be, float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, int rows, int dim, float eps) {
  norm_bwd(be, true, dx, dw, db, dy, x, w, rows, dim, eps);
}

/* ---------------------------------------------------------------- qk_norm_rope_bwd
 * A block per tpb = T / (2 · SMs) tokens, within [1, QKB_TOK] (so that a call over a batch's few
 * text tokens spreads over blocks instead of leaving each warp a dozen (token, head) pairs in
 * turn), as the forward: the rotation's cos and sin computed once per token
 * into shared memory, then a warp per (token, head), lanes over pairs (j, j + d/2).  Every value a
 * lane needs is read before it writes, and it writes only the positions it read, so dx may alias x
 * (or dy when dy_stride = heads·d); dx_mm gets the bf16 of each dx value it writes.  dw: per-block
 * column partials, then an ordered sum.  (The
 * earlier grid of 256 blocks, each computing the rotation again per head, took 3.6 ms of a 1.59 B
 * step at 8k tokens on an H100.)  The pairs per lane are a template parameter and the sums are in
 * float, so a block needs 40 registers per thread at d = 128 instead of 95 (6 resident blocks per
 * SM instead of 2: the trainer's q call, 8k tokens x 12 heads, had taken ~122 us, 2.4x its reads
 * and writes at memory bandwidth). */
#define QKB_TOK 8
template <int P>   /* pairs (j, j + d/2) per lane: head dims up to 64·P */
__global__ void __launch_bounds__(256, 4) k_qk_bwd(float *dx, uint16_t *dx_mm, float *partw, const float *dy, int dy_stride, const float *x,
                                                   const float *w, const int32_t *pos, int T, int tpb, int heads, int d, float eps,
                                                   float theta) {
  __shared__ float cs[QKB_TOK][128], sn[QKB_TOK][128], accw[8][256];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, half = d / 2, t0 = blockIdx.x * tpb;
  const int nt = min(tpb, T - t0);
  for (int i = threadIdx.x; i < nt * half; i += blockDim.x) {
    const int tt = i / half, j = i % half;
    const float inv = 1.0f / powf(theta, (float)(2 * j) / (float)d);
    sincosf((float)pos[t0 + tt] * inv, &sn[tt][j], &cs[tt][j]);
  }
  float wa[P], wb[P], aw[P], bw[P];
#pragma unroll
  for (int p = 0; p < P; p++) {
    const int j = lane + 32 * p;
    wa[p] = j < half ? w[j] : 0.f;
    wb[p] = j < half ? w[j + half] : 0.f;
    aw[p] = bw[p] = 0.f;
  }
  __syncthreads();
  for (int pr = warp; pr < nt * heads; pr += 8) {
    const int tt = pr / heads, h = pr % heads, t = t0 + tt;
    const float *go = dy + (size_t)t * dy_stride + (size_t)h * d;
    const float *xh = x + ((size_t)t * heads + h) * d;
    float xa[P], xb[P], ta[P], tb[P], ss = 0.f, dot = 0.f;
#pragma unroll
    for (int p = 0; p < P; p++) {
      const int j = lane + 32 * p;
      xa[p] = xb[p] = ta[p] = tb[p] = 0.f;
      if (j < half) {
        const float sv = sn[tt][j], cv = cs[tt][j], g1 = go[j], g2 = go[j + half];
        ta[p] = g1 * cv + g2 * sv;
        tb[p] = g2 * cv - g1 * sv;
        xa[p] = xh[j]; xb[p] = xh[j + half];
      }
      ss += xa[p] * xa[p] + xb[p] * xb[p];
      dot += ta[p] * wa[p] * xa[p] + tb[p] * wb[p] * xb[p];
    }
    for (int o = 16; o; o >>= 1) { ss += __shfl_xor_sync(0xffffffffu, ss, o); dot += __shfl_xor_sync(0xffffffffu, dot, o); }
    const float rs = 1.0f / sqrtf(ss / (float)d + eps), cc = dot * rs * rs * rs / (float)d;
#pragma unroll
    for (int p = 0; p < P; p++) {
      const int j = lane + 32 * p;
      if (j < half) {
        if (dx) {
          const size_t o = ((size_t)t * heads + h) * d;
          const float va = rs * wa[p] * ta[p] - cc * xa[p], vb = rs * wb[p] * tb[p] - cc * xb[p];
          dx[o + j] = va;
          dx[o + j + half] = vb;
          if (dx_mm) { dx_mm[o + j] = f32_to_bf16_bits(va); dx_mm[o + j + half] = f32_to_bf16_bits(vb); }
        }
        aw[p] += ta[p] * xa[p] * rs;
        bw[p] += tb[p] * xb[p] * rs;
      }
    }
  }
  if (!partw) return;
#pragma unroll
  for (int p = 0; p < P; p++) {
    const int j = lane + 32 * p;
    if (j < half) { accw[warp][j] = aw[p]; accw[warp][j + half] = bw[p]; }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float v = 0.f;
    for (int k = 0; k < 8; k++) v += accw[k][j];
    partw[(size_t)blockIdx.x * d + j] = v;
  }
}
static void c_qk_norm_rope_bwd(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, int dy_stride, const float *x,
                               const float *w, const int32_t *pos, int T, int heads, int d, float eps, float theta) {
  usbx_cuda *c = CU(be);
  if (d <= 0 || (d & 1) || d > 256) usbx_die("cuda qk_norm_rope_bwd: head dim %d must be even and <= 256", d);
  if (T <= 0 || heads <= 0) return;
  const int tpb = std::max(1, std::min(QKB_TOK, T / (2 * c->prop.multiProcessorCount))), nb = (T + tpb - 1) / tpb;
  float *part = dw ? (float *)cu_scratch(c, (size_t)nb * d * sizeof(float)) : NULL;
  uint16_t *dm = dx ? (uint16_t *)dx_mm : NULL;
  if (d <= 64) k_qk_bwd<1><<<nb, 256, 0, c->stream>>>(dx, dm, part, dy, dy_stride, x, w, pos, T, tpb, heads, d, eps, theta);
  else if (d <= 128) k_qk_bwd<2><<<nb, 256, 0, c->stream>>>(dx, dm, part, dy, dy_stride, x, w, pos, T, tpb, heads, d, eps, theta);
  else k_qk_bwd<4><<<nb, 256, 0, c->stream>>>(dx, dm, part, dy, dy_stride, x, w, pos, T, tpb, heads, d, eps, theta);
  CUDA_LAUNCHED();
  if (dw) colsum_parts(c, dw, part, nb, d);
}

/* ---------------------------------------------------------------- activation backward, embed_bwd */
/* T = float (silu_mul_bwd: dout, gate, up f32) or bf16 (silu_mul_bwd_mm: dout, gate, up bf16,
 * outputs rounded as to_mm rounds; 8 values per 16-byte access when vec) */
__device__ __forceinline__ void silu_mul_grads(float go, float g, float u, float *dg, float *du) {
  float s = 1.0f / (1.0f + expf(-g));
  *du = go * g * s;
  *dg = go * u * s * (1.0f + g * (1.0f - s));
}
template <typename T>
__global__ void k_silu_mul_bwd(T *dgate, T *dup, const T *dout, const T *gate, const T *up, size_t n, bool vec) {
  size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x, n8 = 0;
  if constexpr (sizeof(T) == 2) {
    n8 = vec ? n / 8 : 0;
    for (size_t i = tid; i < n8; i += step) {
      float g[8], u[8], go[8], dg[8], du[8];
      bf8_to_f(((const uint4 *)gate)[i], g);
      bf8_to_f(((const uint4 *)up)[i], u);
      bf8_to_f(((const uint4 *)dout)[i], go);
      for (int k = 0; k < 8; k++) silu_mul_grads(go[k], g[k], u[k], &dg[k], &du[k]);
      if (dgate) ((uint4 *)dgate)[i] = f_to_bf8(dg);
      if (dup) ((uint4 *)dup)[i] = f_to_bf8(du);
    }
  }
  for (size_t i = n8 * 8 + tid; i < n; i += step) {
    float dg, du;
    silu_mul_grads(to_f(dout[i]), to_f(gate[i]), to_f(up[i]), &dg, &du);
    if constexpr (sizeof(T) == 2) {
      if (dup) dup[i] = f2bf(du);
      if (dgate) dgate[i] = f2bf(dg);
    } else {
      if (dup) dup[i] = du;
      if (dgate) dgate[i] = dg;
    }
  }
}
__global__ void k_gelu_bwd(float *dx, const float *dy, const float *x, size_t n) {
  const float k = 0.7978845608028654f, c = 0.044715f;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = x[i], th = tanhf(k * (v + c * v * v * v)), g = dy[i];
    dx[i] = g * (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * k * (1.0f + 3.0f * c * v * v));
  }
}
__global__ void k_silu_bwd(float *dx, const float *dy, const float *x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = x[i], s = 1.0f / (1.0f + expf(-v));
    dx[i] = dy[i] * s * (1.0f + v * (1.0f - s));
  }
}
static void c_silu_mul_bwd(usbx_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                           int T, int F) {
  size_t n = (size_t)T * F;
  if (!n || T < 0 || F < 0 || (!dgate && !dup)) return;
  k_silu_mul_bwd<float><<<grid_for(n, 256), 256, 0, S(be)>>>(dgate, dup, dout, gate, up, n, false);
  CUDA_LAUNCHED();
}
static void c_silu_mul_bwd_mm(usbx_backend *be, void *dgate, void *dup, const void *dout, const void *gate, const void *up, int T,
                              int F) {
  size_t n = (size_t)T * F;
  if (!n || T < 0 || F < 0 || (!dgate && !dup)) return;
  bool vec = ((uintptr_t)dgate & 15u) == 0 && ((uintptr_t)dup & 15u) == 0 && ((uintptr_t)dout & 15u) == 0 && ((uintptr_t)gate & 15u) == 0 &&
             ((uintptr_t)up & 15u) == 0;
  k_silu_mul_bwd<bf16><<<grid_for(n / 8 + 1, 256), 256, 0, S(be)>>>((bf16 *)dgate, (bf16 *)dup, (const bf16 *)dout, (const bf16 *)gate,
                                                                     (const bf16 *)up, n, vec);
  CUDA_LAUNCHED();
}
static void c_gelu_tanh_bwd(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n) {
  if (!n) return;
  k_gelu_bwd<<<grid_for(n, 256), 256, 0, S(be)>>>(dx, dy, x, n);
  CUDA_LAUNCHED();
}
static void c_silu_bwd(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n) {
  if (!n) return;
  k_silu_bwd<<<grid_for(n, 256), 256, 0, S(be)>>>(dx, dy, x, n);
  CUDA_LAUNCHED();
}
/* repeated ids accumulate through atomics (order of the adds is not fixed) */
/* dtable[ids[t], :] += dout[t, :] without atomics: the block of an id's first occurrence adds
 * every occurrence's row in token order, the CPU's order, so repeated ids give the same bits on
 * every run (atomicAdd made GPU training differ from run to run in the embeddings). */
__global__ void k_embed_bwd(float *dtable, const float *dout, const int32_t *ids, int T, int D) {
  constexpr int CAP = 256;
  __shared__ int rows[CAP];
  __shared__ int nrow, next, seen_before;
  const int t = blockIdx.x, id = ids[t];
  if (threadIdx.x == 0) seen_before = 0;
  __syncthreads();
  for (int u = threadIdx.x; u < t; u += blockDim.x)
    if (ids[u] == id) seen_before = 1;
  __syncthreads();
  if (seen_before) return;
  float *row = dtable + (size_t)id * D;
  for (int start = t; start < T;) {
    if (threadIdx.x == 0) {   /* the next CAP occurrences, in order */
      int k = 0, u = start;
      for (; u < T && k < CAP; u++)
        if (ids[u] == id) rows[k++] = u;
      nrow = k;
      next = u;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      float acc = row[i];
      for (int k = 0; k < nrow; k++) acc += dout[(size_t)rows[k] * D + i];
      row[i] = acc;
    }
    start = next;
    __syncthreads();
  }
}
static void c_embed_bwd(usbx_backend *be, float *dtable, const float *dout, const int32_t *ids, int T, int D) {
  if (T <= 0 || D <= 0) return;
  k_embed_bwd<<<T, 256, 0, S(be)>>>(dtable, dout, ids, T, D);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- masked (training) attention */
struct MaskP {
  const int32_t *order, *sample, *split, *mode;
  int n, H, Hkv, G, d;
  float scale;
};
__device__ __forceinline__ bool visible(const MaskP &m, int oq, int sq, int pq, int mq, int k) {
  return usbx_attn_visible(oq, sq, pq, mq, m.order[k], m.sample[k], m.split[k], m.mode[k]);
}
/* forward: one warp per (token q, head h); warps of a block take consecutive tokens of one head
 * so that they stream the same keys.  lse in natural log, [H, n]. */
__global__ void k_attn_masked_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, MaskP m) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= m.n * m.H) return;
  int h = wid / m.n, qi = wid % m.n, g = h / m.G;
  int oq = m.order[qi], sq = m.sample[qi], pq = m.split[qi], mq = m.mode[qi];
  const bf16 *qr = q + ((size_t)qi * m.H + h) * m.d;
  float qv[4], o[4];
#pragma unroll
  for (int c = 0; c < 4; c++) { int col = lane + 32 * c; qv[c] = col < m.d ? bf2f(qr[col]) : 0.f; o[c] = 0.f; }
  float mx = -INFINITY, l = 0.f;
  for (int j = 0; j < m.n; j++) {
    if (!visible(m, oq, sq, pq, mq, j)) continue;           /* uniform across the warp */
    const bf16 *kr = k + ((size_t)j * m.Hkv + g) * m.d, *vr = v + ((size_t)j * m.Hkv + g) * m.d;
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < 4; c++) { int col = lane + 32 * c; if (col < m.d) s += qv[c] * bf2f(kr[col]); }
    s = warp_sum(s) * m.scale;
    float mn = fmaxf(mx, s), al = expf(mx - mn), p = expf(s - mn);
    l = l * al + p;
#pragma unroll
    for (int c = 0; c < 4; c++) { int col = lane + 32 * c; o[c] = o[c] * al + (col < m.d ? p * bf2f(vr[col]) : 0.f); }
    mx = mn;
  }
  float inv = l > 0.f ? 1.f / l : 0.f;
  bf16 *orow = out + ((size_t)qi * m.H + h) * m.d;
#pragma unroll
  for (int c = 0; c < 4; c++) { int col = lane + 32 * c; if (col < m.d) orow[col] = f2bf(o[c] * inv); }
  if (lane == 0 && lse) lse[(size_t)h * m.n + qi] = l > 0.f ? mx + logf(l) : -INFINITY;
}
/* D[h, q] = Σ_c dout·out, a warp per (q, h), consecutive warps over a token's heads (contiguous
 * rows); dob (may be NULL): dout in bf16 as well, for the flash backward (one pass over dout
 * instead of a conversion pass besides) */
__global__ void k_attn_masked_D(float *D, bf16 *dob, const float *dout, const bf16 *out, int n, int H, int d) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= n * H) return;
  int qi = wid / H, h = wid % H;
  const size_t row = ((size_t)qi * H + h) * d;
  double s = 0;
  for (int c = lane; c < d; c += 32) {
    const float g = dout[row + c];
    s += (double)g * bf2f(out[row + c]);
    if (dob) dob[row + c] = f2bf(g);
  }
  s = warp_sum_d(s);
  if (lane == 0) D[(size_t)h * n + qi] = (float)s;
}
void cu_attn_D(usbx_cuda *c, float *D, bf16 *dob, const float *dout, const bf16 *out, int n, int H, int d) {
  const size_t warps = (size_t)n * H;
  k_attn_masked_D<<<(unsigned)((warps + 7) / 8), 256, 0, c->stream>>>(D, dob, dout, out, n, H, d);
  CUDA_LAUNCHED();
}
/* dq[q, h] = scale Σ_j P (dO·v_j − D) k_j : one warp per (q, h) */
__global__ void k_attn_masked_dq(float *dq, const float *dout, const bf16 *q, const bf16 *k, const bf16 *v,
                                 const float *lse, const float *D, MaskP m) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= m.n * m.H) return;
  int h = wid / m.n, qi = wid % m.n, g = h / m.G;
  int oq = m.order[qi], sq = m.sample[qi], pq = m.split[qi], mq = m.mode[qi];
  const bf16 *qr = q + ((size_t)qi * m.H + h) * m.d;
  const float *gr = dout + ((size_t)qi * m.H + h) * m.d;
  float qv[4], gv[4], acc[4];
#pragma unroll
  for (int c = 0; c < 4; c++) {
    int col = lane + 32 * c;
    qv[c] = col < m.d ? bf2f(qr[col]) : 0.f;
    gv[c] = col < m.d ? gr[col] : 0.f;
    acc[c] = 0.f;
  }
  float L = lse[(size_t)h * m.n + qi], Dq = D[(size_t)h * m.n + qi];
  for (int j = 0; j < m.n; j++) {
    if (!visible(m, oq, sq, pq, mq, j)) continue;
    const bf16 *kr = k + ((size_t)j * m.Hkv + g) * m.d, *vr = v + ((size_t)j * m.Hkv + g) * m.d;
    float s = 0.f, dp = 0.f;
    float kv[4];
#pragma unroll
    for (int c = 0; c < 4; c++) {
      int col = lane + 32 * c;
      kv[c] = col < m.d ? bf2f(kr[col]) : 0.f;
      s += qv[c] * kv[c];
      dp += col < m.d ? gv[c] * bf2f(vr[col]) : 0.f;
    }
    s = warp_sum(s) * m.scale;
    dp = warp_sum(dp);
    float p = expf(s - L), ds = p * (dp - Dq);
#pragma unroll
    for (int c = 0; c < 4; c++) acc[c] += ds * kv[c];
  }
  float *o = dq + ((size_t)qi * m.H + h) * m.d;
#pragma unroll
  for (int c = 0; c < 4; c++) { int col = lane + 32 * c; if (col < m.d) o[col] = acc[c] * m.scale; }
}
/* dk[j, g] = scale Σ_{q, h in group} dS q ; dv[j, g] = Σ P dO : one warp per (key j, kv head g) */
__global__ void k_attn_masked_dkv(float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k, const bf16 *v,
                                  const float *lse, const float *D, MaskP m) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= m.n * m.Hkv) return;
  int g = wid / m.n, j = wid % m.n;
  int sk = m.sample[j], pk = m.split[j], mk = m.mode[j], ok_ = m.order[j];
  const bf16 *kr = k + ((size_t)j * m.Hkv + g) * m.d, *vr = v + ((size_t)j * m.Hkv + g) * m.d;
  float kv[4], vv[4], ak[4], av[4];
#pragma unroll
  for (int c = 0; c < 4; c++) {
    int col = lane + 32 * c;
    kv[c] = col < m.d ? bf2f(kr[col]) : 0.f;
    vv[c] = col < m.d ? bf2f(vr[col]) : 0.f;
    ak[c] = av[c] = 0.f;
  }
  for (int qi = 0; qi < m.n; qi++) {
    int sq = m.sample[qi], pq = m.split[qi], mq = m.mode[qi];
    bool vis = usbx_attn_visible(m.order[qi], sq, pq, mq, ok_, sk, pk, mk);
    if (!vis) continue;
    for (int h = g * m.G; h < (g + 1) * m.G; h++) {
      const bf16 *qr = q + ((size_t)qi * m.H + h) * m.d;
      const float *gr = dout + ((size_t)qi * m.H + h) * m.d;
      float s = 0.f, dp = 0.f, qv[4], gv[4];
#pragma unroll
      for (int c = 0; c < 4; c++) {
        int col = lane + 32 * c;
        qv[c] = col < m.d ? bf2f(qr[col]) : 0.f;
        gv[c] = col < m.d ? gr[col] : 0.f;
        s += qv[c] * kv[c];
        dp += gv[c] * vv[c];
      }
      s = warp_sum(s) * m.scale;
      dp = warp_sum(dp);
      float p = expf(s - lse[(size_t)h * m.n + qi]), ds = p * (dp - D[(size_t)h * m.n + qi]);
#pragma unroll
      for (int c = 0; c < 4; c++) { av[c] += p * gv[c]; ak[c] += ds * qv[c]; }
    }
  }
#pragma unroll
  for (int c = 0; c < 4; c++) {
    int col = lane + 32 * c;
    if (col < m.d) {
      if (dk) dk[((size_t)j * m.Hkv + g) * m.d + col] = ak[c] * m.scale;
      if (dv) dv[((size_t)j * m.Hkv + g) * m.d + col] = av[c];
    }
  }
}
static MaskP mask_params(const usbx_attn_masked_args *a) {
  if (a->n < 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->head_dim <= 0 || a->n_heads % a->n_kv_heads || a->head_dim > 128)
    usbx_die("cuda attention_masked: bad shape n=%d heads=%d kv_heads=%d head_dim=%d (head dim at most 128)", a->n,
             a->n_heads, a->n_kv_heads, a->head_dim);
  MaskP m;
  m.order = a->order; m.sample = a->sample; m.split = a->split; m.mode = a->mode;
  m.n = a->n; m.H = a->n_heads; m.Hkv = a->n_kv_heads; m.G = m.H / m.Hkv; m.d = a->head_dim;
  m.scale = 1.0f / sqrtf((float)m.d);
  return m;
}
static void c_attention_masked(usbx_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
                               const usbx_attn_masked_args *a) {
  MaskP m = mask_params(a);
  if (m.n == 0) return;
  if (CU(be)->opt_attn_masked_flash &&
      cu_attn_masked_fwd_flash(be, (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, a))
    return;
  if (CU(be)->opt_attn_masked_gemm &&
      cu_attn_masked_fwd_gemm(be, (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, a))
    return;
  if (CU(be)->opt_attn_masked_tc &&
      cu_attn_masked_fwd_tc(be, (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, a))
    return;
  size_t warps = (size_t)m.n * m.H;
  k_attn_masked_fwd<<<(unsigned)((warps + 7) / 8), 256, 0, S(be)>>>((bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k,
                                                                     (const bf16 *)v, m);
  CUDA_LAUNCHED();
}
static void c_attention_masked_prepare(usbx_backend *be, const usbx_attn_masked_args *a) {
  if (a->n > 0) cu_attn_masked_prepare_flash(be, a);
}
static void c_attention_masked_bwd(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const void *q,
                                   const void *k, const void *v, const void *out, const float *lse,
                                   const usbx_attn_masked_args *a) {
  usbx_cuda *c = CU(be);
  MaskP m = mask_params(a);
  if (m.n == 0 || (!dq && !dk && !dv)) return;
  float *D = (float *)cu_scratch(c, (size_t)m.n * m.H * sizeof(float));
  size_t warps = (size_t)m.n * m.H;
  if (c->opt_attn_masked_flash &&   /* it computes D itself, with dout's bf16 copy */
      cu_attn_masked_bwd_flash(be, dq, dk, dv, dout, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, (const bf16 *)out, lse, D, a))
    return;
  cu_attn_D(c, D, NULL, dout, (const bf16 *)out, m.n, m.H, m.d);
  if (c->opt_attn_masked_gemm &&
      cu_attn_masked_bwd_gemm(be, dq, dk, dv, dout, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, lse, D, a))
    return;
  if (c->opt_attn_masked_tc &&
      cu_attn_masked_bwd_tc(be, dq, dk, dv, dout, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, lse, D, a))
    return;
  if (dk || dv) {   /* before dq: dq may share memory with nothing it reads, but keep the CPU order */
    size_t w2 = (size_t)m.n * m.Hkv;
    k_attn_masked_dkv<<<(unsigned)((w2 + 7) / 8), 256, 0, c->stream>>>(dk, dv, dout, (const bf16 *)q, (const bf16 *)k,
                                                                       (const bf16 *)v, lse, D, m);
    CUDA_LAUNCHED();
  }
  if (dq) {
    k_attn_masked_dq<<<(unsigned)((warps + 7) / 8), 256, 0, c->stream>>>(dq, dout, (const bf16 *)q, (const bf16 *)k,
                                                                         (const bf16 *)v, lse, D, m);
    CUDA_LAUNCHED();
  }
}

/* ---------------------------------------------------------------- cross entropy
 * One block per row.  A label outside [0, V) gives loss NaN (the CPU backend dies; a kernel
 * cannot), and that row's gradient is left unwritten. */
__global__ void k_xent(float *loss, float *dlogits, const float *logits, const int32_t *labels, int V, float scale) {
  __shared__ double redd[32];
  __shared__ float redf[32];
  size_t r = blockIdx.x;
  const float *xr = logits + r * V;
  int lab = labels[r];
  if (lab < 0 || lab >= V) {
    if (threadIdx.x == 0 && loss) loss[r] = __int_as_float(0x7fc00000);
    return;
  }
  float xl = xr[lab];
  float m = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, xr[j]);
  for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) redf[threadIdx.x >> 5] = m;
  __syncthreads();
  m = -INFINITY;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++) m = fmaxf(m, redf[i]);
  double s = 0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) s += exp((double)xr[j] - m);
  s = block_sum_t<double>(s, redd);
  double lse = (double)m + log(s);
  if (threadIdx.x == 0 && loss) loss[r] = (float)(lse - xl);
  __syncthreads();     /* every thread has read xr[lab] and the sums before any write */
  if (dlogits) {
    float *dr = dlogits + r * V;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      double p = exp((double)xr[j] - lse);
      dr[j] = (float)((p - (j == lab ? 1.0 : 0.0)) * scale);
    }
  }
}
static void c_cross_entropy(usbx_backend *be, float *loss, float *dlogits, const float *logits, const int32_t *labels, int n,
                            int V, float scale) {
  if (n <= 0 || V <= 0) return;
  k_xent<<<n, 512, 0, S(be)>>>(loss, dlogits, logits, labels, V, scale);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- optimizer */
/* AdamW with the EMA in the same pass: the updated weight is used while in registers (the EMA as
 * its own kernel read the weights again: 7.3 of 24 ms per 1.5B step) */
struct AdamStep {
  usbx_adamw_args a;
  float step_size, bc2_sqrt;
};
/* one element: w, m, v updated in place; e (when non-null) the EMA */
__device__ __forceinline__ void adamw_elem(float &w, float &m, float &v, float *e, float g, const AdamStep &s) {
  const usbx_adamw_args &a = s.a;
  g *= a.grad_scale;
  w *= 1.0f - a.lr * a.weight_decay;
  m = a.beta1 * m + (1.0f - a.beta1) * g;
  v = a.beta2 * v + (1.0f - a.beta2) * g * g;
  w -= s.step_size * m / (sqrtf(v) / s.bc2_sqrt + a.eps);
  if (e) *e = a.ema_decay * *e + (1.0f - a.ema_decay) * w;
}
/* VEC: four elements per thread through 16-byte loads (all pointers aligned), the last n % 4 one
 * by one; the same arithmetic per element either way */
template <bool VEC>
__global__ void k_adamw(float *w, uint16_t *w_mm, const float *g, float *m, float *v, float *ema, size_t n, AdamStep s) {
  const size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
  size_t n4 = 0;
  if constexpr (VEC) n4 = n / 4;
  for (size_t q = tid; q < n4; q += step) {
    float4 wq = ((float4 *)w)[q], mq = ((float4 *)m)[q], vq = ((float4 *)v)[q], gq = ((const float4 *)g)[q], eq;
    if (ema) eq = ((float4 *)ema)[q];
    float *wv = (float *)&wq, *mv = (float *)&mq, *vv = (float *)&vq, *gv = (float *)&gq, *ev = (float *)&eq;
#pragma unroll
    for (int k = 0; k < 4; k++) adamw_elem(wv[k], mv[k], vv[k], ema ? ev + k : nullptr, gv[k], s);
    ((float4 *)w)[q] = wq; ((float4 *)m)[q] = mq; ((float4 *)v)[q] = vq;
    if (ema) ((float4 *)ema)[q] = eq;
    if (w_mm) ((uint2 *)w_mm)[q] = make_uint2(f32_to_bf16_bits(wv[0]) | (uint32_t)f32_to_bf16_bits(wv[1]) << 16,
                                              f32_to_bf16_bits(wv[2]) | (uint32_t)f32_to_bf16_bits(wv[3]) << 16);
  }
  for (size_t i = n4 * 4 + tid; i < n; i += step) {
    float wi = w[i], mi = m[i], vi = v[i];
    adamw_elem(wi, mi, vi, ema ? ema + i : nullptr, g[i], s);
    w[i] = wi; m[i] = mi; v[i] = vi;
    if (w_mm) w_mm[i] = f32_to_bf16_bits(wi);
  }
}
static void c_adamw(usbx_backend *be, float *w, void *w_mm, const float *g, float *m, float *v, float *ema, size_t n,
                    const usbx_adamw_args *a) {
  if (!n) return;
  float bc1 = 1.0f - powf(a->beta1, (float)a->step), bc2 = 1.0f - powf(a->beta2, (float)a->step);
  AdamStep s = {*a, a->lr / bc1, sqrtf(bc2)};
  const bool vec = ((((uintptr_t)w) | ((uintptr_t)g) | ((uintptr_t)m) | ((uintptr_t)v) | ((uintptr_t)ema)) & 15u) == 0 &&
                   ((uintptr_t)w_mm & 7u) == 0;
  if (vec) k_adamw<true><<<grid_for(n / 4 + 1, 256), 256, 0, S(be)>>>(w, (uint16_t *)w_mm, g, m, v, ema, n, s);
  else k_adamw<false><<<grid_for(n, 256), 256, 0, S(be)>>>(w, (uint16_t *)w_mm, g, m, v, ema, n, s);
  CUDA_LAUNCHED();
}
/* enough blocks and 16-byte loads to keep the memory busy: the norm reads every gradient once */
#define SUMSQ_BLOCKS 1056
/* Σ x² over x[0..n) by the threads tid, tid + step, ... (float4 loads when x is 16-byte aligned) */
__device__ __forceinline__ double range_sumsq(const float *x, size_t n, size_t tid, size_t step) {
  double s = 0;
  size_t seen = 0;
  if (((uintptr_t)x & 15u) == 0) {
    const size_t n4 = n / 4;
    for (size_t i = tid; i < n4; i += step) {
      float4 v = ((const float4 *)x)[i];
      s += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    seen = n4 * 4;
  }
  for (size_t i = seen + tid; i < n; i += step) s += (double)x[i] * x[i];
  return s;
}
/* Each block writes its partial sum s; the last block to finish (counted in *done, reset to 0 for
 * the next call) adds them in a fixed order (deterministic) to acc: one launch, not two (a second
 * kernel of one block per tensor cost 1.4 ms of a 1.59 B step's 348 tensors). */
__device__ void finish_sumsq(float *acc, double *part, unsigned *done, double s) {
  __shared__ double red[32];
  __shared__ bool last;
  s = block_sum_t<double>(s, red);
  if (threadIdx.x == 0) {
    part[blockIdx.x] = s;
    __threadfence();
    last = atomicAdd(done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  /* strided partial sums then a tree (a single thread summing ~1000 parts took 20 us) */
  double t = 0;
  for (int i = threadIdx.x; i < (int)gridDim.x; i += blockDim.x) t += ((volatile double *)part)[i];
  t = block_sum_t<double>(t, red);
  if (threadIdx.x == 0) {
    acc[0] += (float)t;
    *done = 0;
  }
}
__global__ void k_sumsq(float *acc, double *part, unsigned *done, const float *x, size_t n) {
  finish_sumsq(acc, part, done, range_sumsq(x, n, blockIdx.x * (size_t)blockDim.x + threadIdx.x, (size_t)gridDim.x * blockDim.x));
}
/* many ranges in one launch: block b takes chunks b, b + gridDim.x, ... of the chunk table */
struct SumsqChunk { const float *x; size_t n; };
__global__ void k_sumsq_multi(float *acc, double *part, unsigned *done, const SumsqChunk *ch, int nch) {
  double s = 0;
  for (int c = blockIdx.x; c < nch; c += gridDim.x) s += range_sumsq(ch[c].x, ch[c].n, threadIdx.x, blockDim.x);
  finish_sumsq(acc, part, done, s);
}
static unsigned *sumsq_counter(usbx_cuda *c) {
  if (!c->sumsq_done) {
    CUDA_CHECK(cudaMalloc(&c->sumsq_done, sizeof(unsigned)));
    CUDA_CHECK(cudaMemsetAsync(c->sumsq_done, 0, sizeof(unsigned), c->stream));
  }
  return c->sumsq_done;
}
static void c_sumsq_acc(usbx_backend *be, float *acc, const float *x, size_t n) {
  usbx_cuda *c = CU(be);
  if (!n) return;
  int nb = (int)std::min<size_t>(SUMSQ_BLOCKS, (n + 255) / 256);
  double *part = (double *)cu_scratch(c, (size_t)nb * sizeof(double));
  k_sumsq<<<nb, 256, 0, c->stream>>>(acc, part, sumsq_counter(c), x, n);
  CUDA_LAUNCHED();
}
/* the ranges cut into chunks of up to 1 MiB (the table goes up through the upload ring) */
static void c_sumsq_multi(usbx_backend *be, float *acc, const float *const *x, const size_t *n, int count) {
  usbx_cuda *c = CU(be);
  const size_t CH = (size_t)1 << 18;
  std::vector<SumsqChunk> ch;
  for (int i = 0; i < count; i++)
    for (size_t o = 0; o < n[i]; o += CH) ch.push_back({x[i] + o, std::min(CH, n[i] - o)});
  if (ch.empty()) return;
  const int nch = (int)ch.size(), nb = std::min(nch, 4 * c->prop.multiProcessorCount);
  const size_t tb = ((size_t)nch * sizeof(SumsqChunk) + 255) & ~(size_t)255;
  char *ws = (char *)cu_scratch(c, tb + (size_t)nb * sizeof(double));
  be->upload(be, ws, ch.data(), (size_t)nch * sizeof(SumsqChunk));
  k_sumsq_multi<<<nb, 256, 0, c->stream>>>(acc, (double *)(ws + tb), sumsq_counter(c), (const SumsqChunk *)ws, nch);
  CUDA_LAUNCHED();
}

/* acc[0] += scale · Σ x in one block, a fixed order: the CE rows (a few thousand, float) and the
 * MSE's per-block partial sums (double) */
template <typename T, typename N>
__global__ void k_sum_acc(double *acc, const T *x, N n, double scale) {
  __shared__ double red[32];
  double s = 0;
  for (N i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = block_sum_t<double>(s, red);
  if (threadIdx.x == 0) acc[0] += s * scale;
}
__global__ void k_mse_grad(double *part, float *grad, float *sq, const float *pred, const float *target, size_t n, float num, float den) {
  __shared__ double red[32];
  double s = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const float err = pred[i] - target[i];
    if (sq) sq[i] = err * err;
    s += (double)err * err;
    grad[i] = 2.0f * err * num / den;
  }
  s = block_sum_t<double>(s, red);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}
static void c_sum_acc(usbx_backend *be, double *acc, const float *x, size_t n, double scale) {
  k_sum_acc<float, size_t><<<1, 1024, 0, CU(be)->stream>>>(acc, x, n, scale);
  CUDA_LAUNCHED();
}
static void c_mse_grad(usbx_backend *be, double *acc, float *grad, float *sq, const float *pred, const float *target, size_t n, float num,
                       float den, double scale) {
  usbx_cuda *c = CU(be);
  if (!n) return;
  const int nb = (int)std::min<size_t>(264, (n + 255) / 256);
  double *part = (double *)cu_scratch(c, (size_t)nb * sizeof(double));
  k_mse_grad<<<nb, 256, 0, c->stream>>>(part, grad, sq, pred, target, n, num, den);
  CUDA_LAUNCHED();
  k_sum_acc<double, int><<<1, 256, 0, c->stream>>>(acc, part, nb, scale);
  CUDA_LAUNCHED();
}

void cu_install_train_ops(usbx_backend *be) {
  be->matmul_bwd = c_matmul_bwd;
  be->rmsnorm_bwd = c_rmsnorm_bwd;
  be->layernorm_bwd = c_layernorm_bwd;
  be->qk_norm_rope_bwd = c_qk_norm_rope_bwd;
  be->silu_mul_bwd = c_silu_mul_bwd;
  be->silu_mul_bwd_mm = c_silu_mul_bwd_mm;
  be->matmul_dx_mm = c_matmul_dx_mm;
  be->gelu_tanh_bwd = c_gelu_tanh_bwd;
  be->silu_bwd = c_silu_bwd;
  be->embed_bwd = c_embed_bwd;
  be->attention_masked = c_attention_masked;
  be->attention_masked_bwd = c_attention_masked_bwd;
  be->attention_masked_prepare = c_attention_masked_prepare;
  be->cross_entropy = c_cross_entropy;
  be->adamw = c_adamw;
  be->sumsq_acc = c_sumsq_acc;
  be->sumsq_multi = c_sumsq_multi;
  be->sum_acc = c_sum_acc;
  be->mse_grad = c_mse_grad;
}
