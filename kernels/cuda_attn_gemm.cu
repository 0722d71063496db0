/* cuda_attn_gemm.cu — packed training attention (ops.h usbx_attn_masked_args), forward and
 * backward, sample by sample through cuBLAS, when the caller lists each sample's rows
 * (seg_off/seg_rows).  Forward: S = Q·Kᵀ (GEMM), one warp per query row for the masked softmax
 * (lse, P as bf16 hi + lo; one block per row holding it in registers, up to ROW_MAX keys), O = P·V
 * (GEMMs), O rounded to bf16 into the output rows.
 *
 * For one sample of L tokens, its q/k/v/dO rows are gathered into dense [L, heads, d] blocks and,
 * for a few query heads of one KV head at a time, the L x L matrices are materialised:
 *   S = Q·Kᵀ, dP = dO·Vᵀ (GEMMs), P = vis ? exp(scale·S − lse) : 0 and dS = P ∘ (dP − D) (one
 *   element-wise pass), dV += Pᵀ·dO, dK += scale·dSᵀ·Q (one product per term for all the chunk's
 *   heads: Q and dO are gathered head-major so the heads' rows stack), dQ = scale·dS·K (GEMMs).
 * Keys are padded with zero rows to a multiple of 16 (ld_of) so every product has aligned operands.
 * At d = 128 the work is memory-bound on the L x L matrices, far less than the tiled kernel's
 * time (cuda_attn_masked.cu) for long samples.  Precision as that kernel: the fp32 operands (dO,
 * P, dS) enter the bf16 products as hi + lo halves, hi·hi + hi·lo + lo·hi where both operands are
 * fp32 and two terms where the other is an exact bf16 input (dO·Vᵀ as one product over the columns
 * [dO_hi | dO_lo] against [V | V]), so the gradients stay within ~1e-5 of fp32 math.
 * Deterministic: the heads of a KV group are summed in a fixed order. */
#include "cuda_common.cuh"
#include <algorithm>

namespace {

constexpr float LOG2E = 1.4426950408889634f;
constexpr size_t CHUNK_BYTES = (size_t)1 << 30;   /* L x L matrices of one head chunk, at most */

/* within one sample (these kernels work sample by sample) */
__device__ __forceinline__ bool vis(int oq, int pq, int mq, int ok, int pk, int mk) { return usbx_attn_visible(oq, 0, pq, mq, ok, 0, pk, mk); }
__device__ __forceinline__ void split(bf16 *hi, bf16 *lo, size_t i, float x) {
  bf16 h = f2bf(x);
  hi[i] = h;
  lo[i] = f2bf(x - bf2f(h));
}

/* dst[i, :] = src[rows[i], :] for rows of W bf16 values */
__global__ void k_gather_bf16(bf16 *dst, const bf16 *src, const int32_t *rows, int L, int W) {
  size_t n = (size_t)L * W, step = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
    size_t i = e / W, c = e - i * W;
    dst[e] = src[(size_t)rows[i] * W + c];
  }
}
/* f32 rows of heads x d values, head-major and split into bf16 hi and lo side by side:
 * G2[h][i][c] = hi, G2[h][i][d + c] = lo, so one product over 2d columns takes both halves and
 * the rows of consecutive heads stack into one [heads·L, 2d] matrix */
__global__ void k_gather_split2(bf16 *G2, const float *src, const int32_t *rows, int L, int heads, int d) {
  const size_t W = (size_t)heads * d, n = (size_t)L * W, step = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
    size_t i = e / W, c = e - i * W, h = c / d, cc = c - h * d;
    float x = src[(size_t)rows[i] * W + c];
    bf16 hi = f2bf(x), *dst = G2 + (h * L + i) * 2 * d;
    dst[cc] = hi;
    dst[d + cc] = f2bf(x - bf2f(hi));
  }
}
/* dst[h][i][c] = src[rows[i], h·d + c]: a sample's rows, head-major */
__global__ void k_gather_heads(bf16 *dst, const bf16 *src, const int32_t *rows, int L, int heads, int d) {
  const size_t W = (size_t)heads * d, n = (size_t)L * W, step = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
    size_t i = e / W, c = e - i * W, h = c / d, cc = c - h * d;
    dst[(h * L + i) * d + cc] = src[(size_t)rows[i] * W + c];
  }
}
/* V2[j, g·2d + c] = V2[j, g·2d + d + c] = V[j, g·d + c]: V twice per head, against G2 */
__global__ void k_dup_heads(bf16 *V2, const bf16 *V, int rows, int heads, int d) {
  const size_t W = (size_t)heads * d, n = (size_t)rows * W, step = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
    size_t j = e / W, c = e - j * W, g = c / d, cc = c - g * d;
    V2[j * 2 * W + g * 2 * d + cc] = V2[j * 2 * W + g * 2 * d + d + cc] = V[e];
  }
}
/* a token's visibility metadata in one 8-byte load: (order, split·4 + mode) */
__device__ __forceinline__ bool vis2(int2 q, int2 k) { return vis(q.x, q.y >> 2, q.y & 3, k.x, k.y >> 2, k.y & 3); }

/* the sample's metadata (separate and packed) and, when lse is given, per head lse·log2(e) and D: [H][L] */
__global__ void k_gather_meta(int *ord, int *spl, int *mod, int2 *meta, float *lse2, float *Ds, const int32_t *rows, const int32_t *order,
                              const int32_t *split_, const int32_t *mode, const float *lse, const float *D, int L, int n, int H) {
  size_t tot = (size_t)L * H, step = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < tot; e += step) {
    int h = (int)(e / L), i = (int)(e - (size_t)h * L), r = rows[i];
    if (h == 0) { ord[i] = order[r]; spl[i] = split_[r]; mod[i] = mode[r]; meta[i] = make_int2(order[r], split_[r] * 4 + mode[r]); }
    if (lse) {
      lse2[e] = lse[(size_t)h * n + r] * LOG2E;
      Ds[e] = D[(size_t)h * n + r];
    }
  }
}
/* P and dS of c heads ([c][L][L], query rows, key columns) as bf16 hi/lo */
__global__ void k_p_ds(bf16 *ph, bf16 *pl, bf16 *sh, bf16 *sl, const float *S, const float *dP, const float *lse2,
                       const float *Ds, const int *ord, const int *spl, const int *mod, int L, int ld, int c, float sl2) {
  /* columns L .. ld of each row are padding: zero, so products may run over ld (aligned) columns */
  size_t LL = (size_t)L * ld, n = LL * c, step = (size_t)gridDim.x * blockDim.x;
  for (size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += step) {
    size_t hh = x / LL, rem = x - hh * LL;
    int i = (int)(rem / ld), j = (int)(rem - (size_t)i * ld);
    size_t e = x;
    float p = j < L && vis(ord[i], spl[i], mod[i], ord[j], spl[j], mod[j]) ? exp2f(S[e] * sl2 - lse2[hh * L + i]) : 0.f;
    float ds = j < L ? p * (dP[e] - Ds[hh * L + i]) : 0.f;
    split(ph, pl, e, p);
    split(sh, sl, e, ds);
  }
}

/* masked softmax of c heads' S ([c][L][L]), one warp per (head, query row): lse (natural log, of
 * scale·S) to lse[h][rows[i]] of the full [H, n] array, P = exp(scale·S − lse) as bf16 hi/lo */
__global__ void k_softmax_rows(bf16 *ph, bf16 *pl, float *lse, const float *S, const int *ord, const int *spl, const int *mod,
                               const int32_t *rows, int L, int ld, int c, int h0, int n, float sl2) {
  const int lane = threadIdx.x & 31;
  const size_t warps = (size_t)gridDim.x * (blockDim.x / 32);
  for (size_t w = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < (size_t)c * L; w += warps) {
    const int hh = (int)(w / L), i = (int)(w - (size_t)hh * L);
    const float *row = S + w * ld;
    const int oq = ord[i], pq = spl[i], mq = mod[i];
    float m = -INFINITY, sum = 0.f;
    for (int j = lane; j < L; j += 32) {
      if (!vis(oq, pq, mq, ord[j], spl[j], mod[j])) continue;
      float x = row[j] * sl2;
      if (x > m) { sum *= exp2f(m - x); m = x; }
      sum += exp2f(x - m);
    }
    for (int o = 16; o > 0; o >>= 1) {
      float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, sum, o);
      float mx = fmaxf(m, m2);
      sum = (mx == -INFINITY) ? 0.f : sum * exp2f(m - mx) + s2 * exp2f(m2 - mx);
      m = mx;
    }
    const float l2 = m + log2f(sum);   /* log2 of the row's sum of exp(scale·S) */
    if (lane == 0) lse[(size_t)(h0 + hh) * n + rows[i]] = l2 / LOG2E;
    for (int j = lane; j < ld; j += 32) {   /* columns L .. ld: zero padding */
      float p = j < L && vis(oq, pq, mq, ord[j], spl[j], mod[j]) ? exp2f(row[j] * sl2 - l2) : 0.f;
      split(ph, pl, w * ld + j, p);
    }
  }
}
/* The same two passes with one block of ROW_THREADS per (head, query row) and the row held in
 * registers (float4 loads, packed metadata): S is read once.  Rows up to ROW_MAX columns; longer
 * ones use the kernels above.  About 3x less time than those on an H100 at L = 4102. */
constexpr int ROW_THREADS = 256, ROW_VEC = 16, ROW_MAX = ROW_THREADS * 4 * ROW_VEC;

__device__ __forceinline__ void store4(bf16 *hi, bf16 *lo, size_t e, float4 v) {
  bf16 h[4] = {f2bf(v.x), f2bf(v.y), f2bf(v.z), f2bf(v.w)};
  bf16 l[4] = {f2bf(v.x - bf2f(h[0])), f2bf(v.y - bf2f(h[1])), f2bf(v.z - bf2f(h[2])), f2bf(v.w - bf2f(h[3]))};
  *(uint2 *)(hi + e) = *(const uint2 *)h;
  *(uint2 *)(lo + e) = *(const uint2 *)l;
}
__device__ __forceinline__ float block_reduce(float v, float *red, bool is_max) {
  for (int o = 16; o; o >>= 1) { float u = __shfl_xor_sync(0xffffffffu, v, o); v = is_max ? fmaxf(v, u) : v + u; }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < ROW_THREADS / 32; w++) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

/* NV float4 per thread: ld <= NV * ROW_THREADS * 4 (instantiated for each NV so the row takes
 * only the registers it needs: more blocks per multiprocessor) */
template <int NV>
__global__ void __launch_bounds__(ROW_THREADS) k_softmax_row(bf16 *ph, bf16 *pl, float *lse, const float *S, const int2 *meta,
                                                             const int32_t *rows, int L, int ld, int h0, int n, float sl2) {
  __shared__ float red[ROW_THREADS / 32];
  const size_t w = blockIdx.x;   /* head-chunk row: hh·L + i */
  const int hh = (int)(w / L), i = (int)(w - (size_t)hh * L);
  const float *row = S + w * ld;
  const int2 mq = meta[i];
  float4 x[NV];
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const int j = (k * ROW_THREADS + threadIdx.x) * 4;
    x[k] = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    if (j < ld) {
      float4 s = *(const float4 *)(row + j);
      float *xs = (float *)&x[k], *ss = (float *)&s;
#pragma unroll
      for (int u = 0; u < 4; u++)
        if (j + u < L && vis2(mq, meta[j + u])) { xs[u] = ss[u] * sl2; m = fmaxf(m, xs[u]); }
    }
  }
  m = block_reduce(m, red, true);
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const float *xs = (const float *)&x[k];
#pragma unroll
    for (int u = 0; u < 4; u++) sum += m == -INFINITY ? 0.f : exp2f(xs[u] - m);
  }
  sum = block_reduce(sum, red, false);
  const float l2 = m + log2f(sum);   /* log2 of the row's sum of exp(scale·S) */
  if (threadIdx.x == 0) lse[(size_t)(h0 + hh) * n + rows[i]] = l2 / LOG2E;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const int j = (k * ROW_THREADS + threadIdx.x) * 4;
    if (j >= ld) continue;
    float4 p = x[k];
    float *ps = (float *)&p;
#pragma unroll
    for (int u = 0; u < 4; u++) ps[u] = m == -INFINITY ? 0.f : exp2f(ps[u] - l2);   /* masked and padding: exp2(-inf) = 0 */
    store4(ph, pl, w * ld + j, p);
  }
}

/* launches k_softmax_row with the smallest NV that holds ld columns */
void softmax_row(cudaStream_t st, unsigned blocks, bf16 *ph, bf16 *pl, float *lse, const float *S, const int2 *meta, const int32_t *rows,
                 int L, int ld, int h0, int n, float sl2) {
  const int nv = (ld + ROW_THREADS * 4 - 1) / (ROW_THREADS * 4);
#define ROW_CASE(V) case V: k_softmax_row<V><<<blocks, ROW_THREADS, 0, st>>>(ph, pl, lse, S, meta, rows, L, ld, h0, n, sl2); break;
  switch (nv) {
    ROW_CASE(1) ROW_CASE(2) ROW_CASE(3) ROW_CASE(4) ROW_CASE(5) ROW_CASE(6) ROW_CASE(7) ROW_CASE(8)
    ROW_CASE(9) ROW_CASE(10) ROW_CASE(11) ROW_CASE(12) ROW_CASE(13) ROW_CASE(14) ROW_CASE(15) ROW_CASE(16)
    default: break;   /* ld > ROW_MAX: the caller uses k_softmax_rows */
  }
#undef ROW_CASE
}

__global__ void __launch_bounds__(ROW_THREADS) k_p_ds_row(bf16 *ph, bf16 *pl, bf16 *sh, bf16 *sl, const float *S, const float *dP,
                                                          const float *lse2, const float *Ds, const int2 *meta, int L, int ld, float sl2) {
  const size_t w = blockIdx.x;   /* head-chunk row: hh·L + i */
  const int hh = (int)(w / L), i = (int)(w - (size_t)hh * L);
  const int2 mq = meta[i];
  const float l2 = lse2[(size_t)hh * L + i], Dv = Ds[(size_t)hh * L + i];
  for (int j = threadIdx.x * 4; j < ld; j += ROW_THREADS * 4) {
    const size_t e = w * ld + j;
    float4 s = *(const float4 *)(S + e), dp = *(const float4 *)(dP + e), p, ds;
    const float *ss = (const float *)&s, *dps = (const float *)&dp;
    float *pp = (float *)&p, *dss = (float *)&ds;
#pragma unroll
    for (int u = 0; u < 4; u++) {
      pp[u] = j + u < L && vis2(mq, meta[j + u]) ? exp2f(ss[u] * sl2 - l2) : 0.f;
      dss[u] = j + u < L ? pp[u] * (dps[u] - Dv) : 0.f;
    }
    store4(ph, pl, e, p);
    store4(sh, sl, e, ds);
  }
}

/* out[rows[i], :] = bf16(src[i, :]) for rows of W values */
__global__ void k_scatter_bf16(bf16 *out, const float *src, const int32_t *rows, int L, int W) {
  size_t n = (size_t)L * W, step = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
    size_t i = e / W, col = e - i * W;
    out[(size_t)rows[i] * W + col] = f2bf(src[e]);
  }
}

unsigned grid(size_t n) { return (unsigned)std::min<size_t>((n + 255) / 256, 65535u * 4); }

/* row-major C[M,N] (f32) = alpha·op(A)[M,K]·op(B)[K,N] + beta·C, bf16 A/B, batched with strides */
void gemm(usbx_cuda *c, bool tA, bool tB, int M, int N, int K, float alpha, const bf16 *A, int lda, long long sA, const bf16 *B,
          int ldb, long long sB, float beta, float *C, int ldc, long long sC, int batch) {
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                                          B, CUDA_R_16BF, ldb, sB, A, CUDA_R_16BF, lda, sA, &beta, C, CUDA_R_32F, ldc, sC, batch,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

template <typename T>
T *carve(char *&p, size_t n) {
  T *r = (T *)p;
  p += (n * sizeof(T) + 255) & ~(size_t)255;
  return r;
}

/* rows of the L x L matrices start at multiples of 16 elements (cuBLAS's fast bf16 kernels need
 * 16-byte aligned leading dimensions) */
int ld_of(int L) { return (L + 15) & ~15; }

/* the longest sample and how many heads of a KV group share one pass (their L x L matrices,
 * bytes_per_elem each, within CHUNK_BYTES); false when the arguments carry no segments or a
 * sample is too long */
bool seg_plan(const usbx_attn_masked_args *a, size_t bytes_per_elem, int *Lmax, int *Gc) {
  if (!a->n_seg || !a->seg_off || !a->seg_rows || a->seg_off[a->n_seg] != a->n) return false;
  int L = 0;
  for (int s = 0; s < a->n_seg; s++) L = std::max(L, a->seg_off[s + 1] - a->seg_off[s]);
  const size_t per_head = (size_t)L * ld_of(L) * bytes_per_elem;
  if (L == 0 || per_head > CHUNK_BYTES * 2) return false;
  *Lmax = L;
  *Gc = (int)std::max<size_t>(1, std::min<size_t>((size_t)(a->n_heads / a->n_kv_heads), CHUNK_BYTES / per_head));
  return true;
}

/* a sample's q, k, v rows into dense [L, heads·d] blocks (Q head-major, [heads][L][d], when
 * q_heads_major_d gives d); K and V get zero rows up to ld_of(L), the padded key count of the
 * products */
void gather_qkv(cudaStream_t st, bf16 *Qs, bf16 *Ks, bf16 *Vs, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *rows,
                int L, int Hd, int KVd, int q_heads_major_d) {
  if (q_heads_major_d) k_gather_heads<<<grid((size_t)L * Hd), 256, 0, st>>>(Qs, q, rows, L, Hd / q_heads_major_d, q_heads_major_d);
  else k_gather_bf16<<<grid((size_t)L * Hd), 256, 0, st>>>(Qs, q, rows, L, Hd);
  k_gather_bf16<<<grid((size_t)L * KVd), 256, 0, st>>>(Ks, k, rows, L, KVd);
  k_gather_bf16<<<grid((size_t)L * KVd), 256, 0, st>>>(Vs, v, rows, L, KVd);
  CUDA_LAUNCHED();
  const size_t pad = (size_t)(ld_of(L) - L) * KVd * sizeof(bf16);
  if (pad) {
    CUDA_CHECK(cudaMemsetAsync(Ks + (size_t)L * KVd, 0, pad, st));
    CUDA_CHECK(cudaMemsetAsync(Vs + (size_t)L * KVd, 0, pad, st));
  }
}

}  // namespace

bool cu_attn_masked_bwd_gemm(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k,
                             const bf16 *v, const float *lse, const float *D, const usbx_attn_masked_args *a) {
  usbx_cuda *c = CU(be);
  int Lmax, Gc;
  if (!seg_plan(a, 16, &Lmax, &Gc)) return false;   /* S, dP f32 + P, dS hi/lo bf16 */
  const int n = a->n, H = a->n_heads, Hkv = a->n_kv_heads, G = H / Hkv, d = a->head_dim, Hd = H * d, KVd = Hkv * d;
  const size_t LL = (size_t)Lmax * ld_of(Lmax);
  size_t bytes = 0;
  {
    size_t L = (size_t)Lmax;
    size_t parts[] = {L * Hd * 2 * 3, L * KVd * 2 * 2, L * 4 * 3 + L * 8, (size_t)H * L * 4 * 2, L * Hd * 4, L * KVd * 4 * 2,
                      (size_t)Gc * LL * 4 * 2, (size_t)Gc * LL * 2 * 4};
    for (size_t x : parts) bytes += x + 256 * 4;
    bytes += (size_t)16 * KVd * 2 * 2 + (size_t)ld_of(Lmax) * 2 * KVd * 2 + 256;   /* K, V padding rows; V2 */
  }
  char *p = (char *)cu_attn_ws(c, bytes);
  bf16 *Qs = carve<bf16>(p, (size_t)Lmax * Hd), *G2 = carve<bf16>(p, (size_t)Lmax * 2 * Hd);
  bf16 *Ks = carve<bf16>(p, (size_t)ld_of(Lmax) * KVd), *Vs = carve<bf16>(p, (size_t)ld_of(Lmax) * KVd);
  bf16 *V2 = carve<bf16>(p, (size_t)ld_of(Lmax) * 2 * KVd);
  int *ord = carve<int>(p, Lmax), *spl = carve<int>(p, Lmax), *mod = carve<int>(p, Lmax);
  int2 *meta = carve<int2>(p, Lmax);
  float *lse2 = carve<float>(p, (size_t)H * Lmax), *Ds = carve<float>(p, (size_t)H * Lmax);
  float *dQs = carve<float>(p, (size_t)Lmax * Hd), *dKs = carve<float>(p, (size_t)Lmax * KVd), *dVs = carve<float>(p, (size_t)Lmax * KVd);
  float *S = carve<float>(p, Gc * LL), *dP = carve<float>(p, Gc * LL);
  bf16 *Ph = carve<bf16>(p, Gc * LL), *Pl = carve<bf16>(p, Gc * LL), *Sh = carve<bf16>(p, Gc * LL), *Sl = carve<bf16>(p, Gc * LL);
  const float scale = 1.0f / sqrtf((float)d), sl2 = scale * LOG2E;
  cudaStream_t st = c->stream;
  for (int s = 0; s < a->n_seg; s++) {
    const int L = a->seg_off[s + 1] - a->seg_off[s];
    if (L == 0) continue;
    const int32_t *rows = a->seg_rows + a->seg_off[s];
    const int ld = ld_of(L);
    const long long LS = (long long)L * ld;   /* matrix stride */
    gather_qkv(st, Qs, Ks, Vs, q, k, v, rows, L, Hd, KVd, d);
    k_gather_split2<<<grid((size_t)L * Hd), 256, 0, st>>>(G2, dout, rows, L, H, d);
    k_dup_heads<<<grid((size_t)ld * KVd), 256, 0, st>>>(V2, Vs, ld, Hkv, d);
    k_gather_meta<<<grid((size_t)L * H), 256, 0, st>>>(ord, spl, mod, meta, lse2, Ds, rows, a->order, a->split, a->mode, lse, D, L, n, H);
    CUDA_LAUNCHED();
    CUDA_CHECK(cudaMemsetAsync(dKs, 0, sizeof(float) * (size_t)L * KVd, st));
    CUDA_CHECK(cudaMemsetAsync(dVs, 0, sizeof(float) * (size_t)L * KVd, st));
    for (int g = 0; g < Hkv; g++)
      for (int h0 = g * G; h0 < (g + 1) * G; h0 += Gc) {
        const int cn = std::min(Gc, (g + 1) * G - h0);
        const bf16 *Kg = Ks + (size_t)g * d;
        /* S = Q·Kᵀ, dP = dO·Vᵀ for heads h0 .. h0+cn (Q and dO head-major) */
        const bf16 *Qc = Qs + (size_t)h0 * L * d, *Gc2 = G2 + (size_t)h0 * L * 2 * d;
        gemm(c, false, true, L, ld, d, 1.f, Qc, d, (long long)L * d, Kg, KVd, 0, 0.f, S, ld, LS, cn);
        /* dP = dO_hi·Vᵀ + dO_lo·Vᵀ as one product over 2d columns */
        gemm(c, false, true, L, ld, 2 * d, 1.f, Gc2, 2 * d, (long long)L * 2 * d, V2 + (size_t)g * 2 * d, 2 * KVd, 0, 0.f, dP, ld, LS, cn);
        if (c->opt_attn_masked_row && ld <= ROW_MAX)
          k_p_ds_row<<<(unsigned)(cn * L), ROW_THREADS, 0, st>>>(Ph, Pl, Sh, Sl, S, dP, lse2 + (size_t)h0 * L, Ds + (size_t)h0 * L, meta, L,
                                                                 ld, sl2);
        else
          k_p_ds<<<grid((size_t)cn * LS), 256, 0, st>>>(Ph, Pl, Sh, Sl, S, dP, lse2 + (size_t)h0 * L, Ds + (size_t)h0 * L, ord, spl, mod,
                                                         L, ld, cn, sl2);
        CUDA_LAUNCHED();
        /* dV_g += Pᵀ·dO (hi·hi + hi·lo + lo·hi), dK_g += scale·dSᵀ·Q, summed over the chunk's heads
         * inside each product: the heads' query rows stack into one reduction of cn·L rows */
        const int Kc = cn * L;
        gemm(c, true, false, L, d, Kc, 1.f, Ph, ld, 0, Gc2, 2 * d, 0, 1.f, dVs + (size_t)g * d, KVd, 0, 1);
        gemm(c, true, false, L, d, Kc, 1.f, Ph, ld, 0, Gc2 + d, 2 * d, 0, 1.f, dVs + (size_t)g * d, KVd, 0, 1);
        gemm(c, true, false, L, d, Kc, 1.f, Pl, ld, 0, Gc2, 2 * d, 0, 1.f, dVs + (size_t)g * d, KVd, 0, 1);
        gemm(c, true, false, L, d, Kc, scale, Sh, ld, 0, Qc, d, 0, 1.f, dKs + (size_t)g * d, KVd, 0, 1);
        gemm(c, true, false, L, d, Kc, scale, Sl, ld, 0, Qc, d, 0, 1.f, dKs + (size_t)g * d, KVd, 0, 1);
        /* dQ = scale·dS·K */
        gemm(c, false, false, L, d, ld, scale, Sh, ld, LS, Kg, KVd, 0, 0.f, dQs + (size_t)h0 * d, Hd, d, cn);
        gemm(c, false, false, L, d, ld, scale, Sl, ld, LS, Kg, KVd, 0, 1.f, dQs + (size_t)h0 * d, Hd, d, cn);
      }
    if (dq) cu_scatter_rows(be, dq, dQs, rows, L, Hd);
    if (dk) cu_scatter_rows(be, dk, dKs, rows, L, KVd);
    if (dv) cu_scatter_rows(be, dv, dVs, rows, L, KVd);
  }
  return true;
}

bool cu_attn_masked_fwd_gemm(usbx_backend *be, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                             const usbx_attn_masked_args *a) {
  usbx_cuda *c = CU(be);
  int Lmax, Gc;
  if (!seg_plan(a, 8, &Lmax, &Gc)) return false;   /* S f32 + P hi/lo bf16 */
  const int n = a->n, H = a->n_heads, Hkv = a->n_kv_heads, G = H / Hkv, d = a->head_dim, Hd = H * d, KVd = Hkv * d;
  const size_t LL = (size_t)Lmax * ld_of(Lmax), L0 = (size_t)Lmax;
  size_t bytes = L0 * Hd * 2 + (size_t)ld_of(Lmax) * KVd * 2 * 2 + L0 * 4 * 3 + L0 * 8 + L0 * Hd * 4 + (size_t)Gc * LL * 8 + 256 * 11;
  char *p = (char *)cu_attn_ws(c, bytes);
  bf16 *Qs = carve<bf16>(p, L0 * Hd), *Ks = carve<bf16>(p, (size_t)ld_of(Lmax) * KVd), *Vs = carve<bf16>(p, (size_t)ld_of(Lmax) * KVd);
  int *ord = carve<int>(p, L0), *spl = carve<int>(p, L0), *mod = carve<int>(p, L0);
  int2 *meta = carve<int2>(p, L0);
  float *Os = carve<float>(p, L0 * Hd), *S = carve<float>(p, Gc * LL);
  bf16 *Ph = carve<bf16>(p, Gc * LL), *Pl = carve<bf16>(p, Gc * LL);
  const float sl2 = LOG2E / sqrtf((float)d);
  cudaStream_t st = c->stream;
  for (int s = 0; s < a->n_seg; s++) {
    const int L = a->seg_off[s + 1] - a->seg_off[s];
    if (L == 0) continue;
    const int32_t *rows = a->seg_rows + a->seg_off[s];
    const int ld = ld_of(L);
    const long long LS = (long long)L * ld;   /* matrix stride */
    gather_qkv(st, Qs, Ks, Vs, q, k, v, rows, L, Hd, KVd, 0);
    k_gather_meta<<<grid((size_t)L), 256, 0, st>>>(ord, spl, mod, meta, NULL, NULL, rows, a->order, a->split, a->mode, NULL, NULL, L, n, 1);
    CUDA_LAUNCHED();
    for (int g = 0; g < Hkv; g++)
      for (int h0 = g * G; h0 < (g + 1) * G; h0 += Gc) {
        const int cn = std::min(Gc, (g + 1) * G - h0);
        const bf16 *Kg = Ks + (size_t)g * d, *Vg = Vs + (size_t)g * d;
        gemm(c, false, true, L, ld, d, 1.f, Qs + (size_t)h0 * d, Hd, d, Kg, KVd, 0, 0.f, S, ld, LS, cn);
        if (c->opt_attn_masked_row && ld <= ROW_MAX)
          softmax_row(st, (unsigned)(cn * L), Ph, Pl, lse, S, meta, rows, L, ld, h0, n, sl2);
        else
          k_softmax_rows<<<grid((size_t)cn * L * 32), 256, 0, st>>>(Ph, Pl, lse, S, ord, spl, mod, rows, L, ld, cn, h0, n, sl2);
        CUDA_LAUNCHED();
        gemm(c, false, false, L, d, ld, 1.f, Ph, ld, LS, Vg, KVd, 0, 0.f, Os + (size_t)h0 * d, Hd, d, cn);
        gemm(c, false, false, L, d, ld, 1.f, Pl, ld, LS, Vg, KVd, 0, 1.f, Os + (size_t)h0 * d, Hd, d, cn);
      }
    k_scatter_bf16<<<grid((size_t)L * Hd), 256, 0, st>>>(out, Os, rows, L, Hd);
    CUDA_LAUNCHED();
  }
  return true;
}
