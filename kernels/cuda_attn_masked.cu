/* cuda_attn_masked.cu — packed training attention (ops.h usbx_attn_masked_args) on tensor cores:
 * forward with log-sum-exp, and backward (dK/dV per key tile, dQ per query tile), bf16 q/k/v.
 *
 * Tiles of 64 tokens (32 queries in the dK/dV kernel) of one head go through shared memory; the
 * products are WMMA 16x16x16 bf16 with fp32 accumulation, the accumulators of O / dQ / dK / dV
 * live in shared memory (fp32).  The visibility predicate of ops.h is evaluated per element from
 * per-token metadata staged in shared memory, before any product: a tile pair with no visible
 * element (keys of other samples, keys after every query of a causal block, ...) is skipped
 * without loading K/V (one __syncthreads_or).
 *
 * Precision.  Forward: S from exact bf16 inputs in fp32; P rounded to bf16 for P·V (the output is
 * bf16 anyway); row sums and the lse from unrounded fp32 P.  Backward: fp32 operands (dO, P, dS)
 * are split into bf16 hi + lo (x − hi, rounded), and each product takes the hi·hi, hi·lo, lo·hi
 * terms (two terms when the other operand is an exact bf16 input), which keeps about 16 mantissa
 * bits: the gradients stay within ~1e-5 of fp32 math instead of the ~3e-3 of plain bf16.
 * Deterministic: no atomics; dK/dV of a KV head sum its G query heads in a fixed order. */
#include "cuda_common.cuh"
#include <mma.h>
#include <math.h>
#include <limits.h>

using namespace nvcuda;

namespace {

struct MP {
  const int32_t *order, *sample, *split, *mode;
  int n, H, Hkv, G, d;
  float sl2;            /* scale · log2(e) */
  float scale;
  bool vec;             /* 16-byte loads of q/k/v rows */
};

constexpr int NT = 128;  /* threads per block (4 warps) */
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;


/* rows [t0, t0 + rows) of head hh of src [n, HH, d] (bf16) into dst [rows][ld], zero padded */
template <int DP>
__device__ void load_bf16(bf16 *dst, int ld, const bf16 *src, int HH, int hh, const MP &m, int t0, int rows) {
  constexpr int CH = DP / 8;
  const bf16 z = __ushort_as_bfloat16((unsigned short)0);
  for (int c = threadIdx.x; c < rows * CH; c += NT) {
    int r = c / CH, c8 = (c % CH) * 8, t = t0 + r;
    bf16 *o = dst + r * ld + c8;
    if (t < m.n && m.vec && c8 + 8 <= m.d) {
      *(uint4 *)o = *(const uint4 *)(src + ((size_t)t * HH + hh) * m.d + c8);
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) o[e] = (t < m.n && c8 + e < m.d) ? src[((size_t)t * HH + hh) * m.d + c8 + e] : z;
    }
  }
}
/* the same for an f32 source, split into bf16 hi and lo = bf16(x - hi) */
template <int DP>
__device__ void load_split(bf16 *hi, bf16 *lo, int ld, const float *src, int HH, int hh, const MP &m, int t0, int rows) {
  for (int c = threadIdx.x; c < rows * DP; c += NT) {
    int r = c / DP, col = c % DP, t = t0 + r;
    float x = (t < m.n && col < m.d) ? src[((size_t)t * HH + hh) * m.d + col] : 0.f;
    bf16 h = __float2bfloat16_rn(x);
    hi[r * ld + col] = h;
    lo[r * ld + col] = __float2bfloat16_rn(x - __bfloat162float(h));
  }
}
/* metadata of tokens [t0, t0 + rows) into meta[4][rows]; tokens past n get samples that match
 * nothing (keys INT_MIN, queries INT_MIN + 1) */
__device__ void load_meta(int *meta, const MP &m, int t0, int rows, bool query) {
  for (int i = threadIdx.x; i < rows; i += NT) {
    int t = t0 + i;
    bool ok = t < m.n;
    meta[i] = ok ? m.order[t] : 0;
    meta[rows + i] = ok ? m.sample[t] : (query ? INT_MIN + 1 : INT_MIN);
    meta[2 * rows + i] = ok ? m.split[t] : 0;
    meta[3 * rows + i] = ok ? m.mode[t] : 0;
  }
}
__device__ __forceinline__ void split_store(bf16 *hi, bf16 *lo, float x) {
  bf16 h = __float2bfloat16_rn(x);
  *hi = h;
  *lo = __float2bfloat16_rn(x - __bfloat162float(h));
}

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragAr;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> FragAc;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragBr;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBc;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

/* ================================================================ forward
 * Block: 64 queries of head h.  Thread t owns query row t/2 and keys (t%2)·32 .. +32 of each key
 * tile for the softmax.  Shared: Q, K, V [64][DP+8] bf16, S [64][68] f32, P [64][72] bf16,
 * O [64][DP+4] f32, key metadata. */
template <int DP>
struct FwdSmem {
  static constexpr int BQ = 64, BK = 64, LDB = DP + 8, LDS = BK + 4, LDP = BK + 8, LDO = DP + 4;
  static constexpr size_t oQ = 0, oK = oQ + (size_t)BQ * LDB * 2, oV = oK + (size_t)BK * LDB * 2,
                          oS = oV + (size_t)BK * LDB * 2, oP = oS + (size_t)BQ * LDS * 4, oO = oP + (size_t)BQ * LDP * 2,
                          oM = oO + (size_t)BQ * LDO * 4, bytes = oM + (size_t)4 * BK * 4;
};

template <int DP>
__global__ void __launch_bounds__(NT) k_am_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, MP m) {
  typedef FwdSmem<DP> L;
  constexpr int BQ = L::BQ, BK = L::BK, LDB = L::LDB, LDS = L::LDS, LDP = L::LDP, LDO = L::LDO;
  extern __shared__ __align__(128) unsigned char sm[];
  bf16 *sQ = (bf16 *)(sm + L::oQ), *sK = (bf16 *)(sm + L::oK), *sV = (bf16 *)(sm + L::oV), *sP = (bf16 *)(sm + L::oP);
  float *sS = (float *)(sm + L::oS), *sO = (float *)(sm + L::oO);
  int *km = (int *)(sm + L::oM);
  const int tid = threadIdx.x, warp = tid >> 5;
  const int h = blockIdx.y, g = h / m.G, q0 = blockIdx.x * BQ;
  const int r = tid >> 1, half = tid & 1, qi = q0 + r;
  const bool qv = qi < m.n;
  const int oq = qv ? m.order[qi] : 0, sq = qv ? m.sample[qi] : INT_MIN + 1, pq = qv ? m.split[qi] : 0,
            mq = qv ? m.mode[qi] : 0;

  load_bf16<DP>(sQ, LDB, q, m.H, h, m, q0, BQ);
  for (int i = tid; i < BQ * LDO; i += NT) sO[i] = 0.f;
  float mrow = -INFINITY, lrow = 0.f;   /* log2 domain; both threads of a row keep the same values */

  for (int k0 = 0; k0 < m.n; k0 += BK) {
    __syncthreads();                    /* the previous tile is done with K, V, P, metadata */
    load_meta(km, m, k0, BK, false);
    __syncthreads();
    uint32_t bits = 0;
#pragma unroll 8
    for (int i = 0; i < 32; i++) {
      int j = half * 32 + i;
      if (usbx_attn_visible(oq, sq, pq, mq, km[j], km[BK + j], km[2 * BK + j], km[3 * BK + j])) bits |= 1u << i;
    }
    if (!__syncthreads_or(bits != 0)) continue;
    load_bf16<DP>(sK, LDB, k, m.Hkv, g, m, k0, BK);
    load_bf16<DP>(sV, LDB, v, m.Hkv, g, m, k0, BK);
    __syncthreads();
    /* S = Q·Kᵀ: warp w computes query rows 16w..16w+15 against the 64 keys */
#pragma unroll
    for (int fc = 0; fc < BK / 16; fc++) {
      FragC acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < DP / 16; kk++) {
        FragAr a;
        FragBc b;
        wmma::load_matrix_sync(a, sQ + warp * 16 * LDB + kk * 16, LDB);
        wmma::load_matrix_sync(b, sK + fc * 16 * LDB + kk * 16, LDB);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(sS + warp * 16 * LDS + fc * 16, acc, LDS, wmma::mem_row_major);
    }
    __syncthreads();
    /* online softmax of row r over this tile's 64 keys (two threads per row) */
    const float *srow = sS + r * LDS + half * 32;
    float mx = -INFINITY;
#pragma unroll 8
    for (int i = 0; i < 32; i++) if (bits >> i & 1u) mx = fmaxf(mx, srow[i] * m.sl2);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mn = fmaxf(mrow, mx), mu = mn == -INFINITY ? 0.f : mn;
    const float alpha = exp2f(mrow - mu);
    float sum = 0.f;
    bf16 *prow = sP + r * LDP + half * 32;
#pragma unroll 8
    for (int i = 0; i < 32; i++) {
      float p = (bits >> i & 1u) ? exp2f(srow[i] * m.sl2 - mu) : 0.f;
      prow[i] = __float2bfloat16_rn(p);
      sum += p;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    lrow = lrow * alpha + sum;
    mrow = mn;
    float *orow = sO + r * LDO + half * (DP / 2);
    if (alpha != 1.f)
      for (int c = 0; c < DP / 2; c++) orow[c] *= alpha;
    __syncthreads();
    /* O += P·V: warp w owns rows 16w..16w+15 */
#pragma unroll
    for (int fc = 0; fc < DP / 16; fc++) {
      FragC acc;
      wmma::load_matrix_sync(acc, sO + warp * 16 * LDO + fc * 16, LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {
        FragAr a;
        FragBr b;
        wmma::load_matrix_sync(a, sP + warp * 16 * LDP + kk * 16, LDP);
        wmma::load_matrix_sync(b, sV + kk * 16 * LDB + fc * 16, LDB);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(sO + warp * 16 * LDO + fc * 16, acc, LDO, wmma::mem_row_major);
    }
  }
  __syncthreads();
  if (!qv) return;
  const float inv = lrow > 0.f ? 1.f / lrow : 0.f;
  bf16 *og = out + ((size_t)qi * m.H + h) * m.d;
  for (int c = half * (DP / 2); c < (half + 1) * (DP / 2); c++)
    if (c < m.d) og[c] = f2bf(sO[r * LDO + c] * inv);
  if (half == 0 && lse) lse[(size_t)h * m.n + qi] = lrow > 0.f ? (mrow + log2f(lrow)) * LN2 : -INFINITY;
}

/* ================================================================ backward: dK, dV
 * Block: 64 keys of KV head g; loops over query tiles of 32 and, inside, the G query heads of
 * the group.  Thread t owns query row t/4 and keys (t%4)·16 .. +16 for the element-wise step. */
template <int DP>
struct KvSmem {
  static constexpr int BQ = 32, BK = 64, LDB = DP + 8, LDS = BK + 4, LDP = BK + 8, LDO = DP + 4;
  static constexpr size_t oK = 0, oV = oK + (size_t)BK * LDB * 2, oQ = oV + (size_t)BK * LDB * 2,
                          oGh = oQ + (size_t)BQ * LDB * 2, oGl = oGh + (size_t)BQ * LDB * 2,
                          oS = oGl + (size_t)BQ * LDB * 2, oDP = oS + (size_t)BQ * LDS * 4,
                          oPh = oDP + (size_t)BQ * LDS * 4, oPl = oPh + (size_t)BQ * LDP * 2,
                          oSh = oPl + (size_t)BQ * LDP * 2, oSl = oSh + (size_t)BQ * LDP * 2,
                          odK = oSl + (size_t)BQ * LDP * 2, odV = odK + (size_t)BK * LDO * 4,
                          oL = odV + (size_t)BK * LDO * 4, oD = oL + (size_t)BQ * 4, oKM = oD + (size_t)BQ * 4,
                          oQM = oKM + (size_t)4 * BK * 4, bytes = oQM + (size_t)4 * BQ * 4;
};

template <int DP>
__global__ void __launch_bounds__(NT) k_am_bwd_kv(float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k,
                                                  const bf16 *v, const float *lse, const float *D, MP m) {
  typedef KvSmem<DP> L;
  constexpr int BQ = L::BQ, BK = L::BK, LDB = L::LDB, LDS = L::LDS, LDP = L::LDP, LDO = L::LDO;
  extern __shared__ __align__(128) unsigned char sm[];
  bf16 *sK = (bf16 *)(sm + L::oK), *sV = (bf16 *)(sm + L::oV), *sQ = (bf16 *)(sm + L::oQ);
  bf16 *sGh = (bf16 *)(sm + L::oGh), *sGl = (bf16 *)(sm + L::oGl);
  float *sS = (float *)(sm + L::oS), *sdP = (float *)(sm + L::oDP);
  bf16 *sPh = (bf16 *)(sm + L::oPh), *sPl = (bf16 *)(sm + L::oPl), *sSh = (bf16 *)(sm + L::oSh), *sSl = (bf16 *)(sm + L::oSl);
  float *sdK = (float *)(sm + L::odK), *sdV = (float *)(sm + L::odV), *sL = (float *)(sm + L::oL), *sD = (float *)(sm + L::oD);
  int *km = (int *)(sm + L::oKM), *qm = (int *)(sm + L::oQM);
  const int tid = threadIdx.x, warp = tid >> 5;
  const int g = blockIdx.y, k0 = blockIdx.x * BK;
  const int r = tid >> 2, quarter = tid & 3;

  load_bf16<DP>(sK, LDB, k, m.Hkv, g, m, k0, BK);
  load_bf16<DP>(sV, LDB, v, m.Hkv, g, m, k0, BK);
  load_meta(km, m, k0, BK, false);
  for (int i = tid; i < BK * LDO; i += NT) { sdK[i] = 0.f; sdV[i] = 0.f; }

  for (int q0 = 0; q0 < m.n; q0 += BQ) {
    __syncthreads();
    load_meta(qm, m, q0, BQ, true);
    __syncthreads();
    const int oq = qm[r], sq = qm[BQ + r], pq = qm[2 * BQ + r], mq = qm[3 * BQ + r];
    uint32_t bits = 0;
#pragma unroll
    for (int i = 0; i < 16; i++) {
      int j = quarter * 16 + i;
      if (usbx_attn_visible(oq, sq, pq, mq, km[j], km[BK + j], km[2 * BK + j], km[3 * BK + j])) bits |= 1u << i;
    }
    if (!__syncthreads_or(bits != 0)) continue;
    for (int hh = 0; hh < m.G; hh++) {
      const int h = g * m.G + hh;
      __syncthreads();                  /* the previous head is done with Q, dO, P, dS */
      load_bf16<DP>(sQ, LDB, q, m.H, h, m, q0, BQ);
      load_split<DP>(sGh, sGl, LDB, dout, m.H, h, m, q0, BQ);
      for (int i = tid; i < BQ; i += NT) {
        int t = q0 + i;
        sL[i] = t < m.n ? lse[(size_t)h * m.n + t] * LOG2E : 0.f;
        sD[i] = t < m.n ? D[(size_t)h * m.n + t] : 0.f;
      }
      __syncthreads();
      /* S = Q·Kᵀ and dP = dO·Vᵀ, [32 queries][64 keys]: warp w takes rows 16(w/2).., keys 32(w%2).. */
      const int rb = warp >> 1;
#pragma unroll
      for (int f = 0; f < 2; f++) {
        const int cb = (warp & 1) * 2 + f;
        FragC accS, accP;
        wmma::fill_fragment(accS, 0.f);
        wmma::fill_fragment(accP, 0.f);
#pragma unroll
        for (int kk = 0; kk < DP / 16; kk++) {
          FragAr a;
          FragBc b;
          wmma::load_matrix_sync(b, sK + cb * 16 * LDB + kk * 16, LDB);
          wmma::load_matrix_sync(a, sQ + rb * 16 * LDB + kk * 16, LDB);
          wmma::mma_sync(accS, a, b, accS);
          wmma::load_matrix_sync(b, sV + cb * 16 * LDB + kk * 16, LDB);
          wmma::load_matrix_sync(a, sGh + rb * 16 * LDB + kk * 16, LDB);
          wmma::mma_sync(accP, a, b, accP);
          wmma::load_matrix_sync(a, sGl + rb * 16 * LDB + kk * 16, LDB);
          wmma::mma_sync(accP, a, b, accP);
        }
        wmma::store_matrix_sync(sS + rb * 16 * LDS + cb * 16, accS, LDS, wmma::mem_row_major);
        wmma::store_matrix_sync(sdP + rb * 16 * LDS + cb * 16, accP, LDS, wmma::mem_row_major);
      }
      __syncthreads();
      /* P = exp(scale·S − lse) on visible keys, dS = P ∘ (dP − D) */
      {
        const float Lr = sL[r], Dr = sD[r];
#pragma unroll
        for (int i = 0; i < 16; i++) {
          const int j = quarter * 16 + i;
          float p = (bits >> i & 1u) ? exp2f(sS[r * LDS + j] * m.sl2 - Lr) : 0.f;
          float ds = p * (sdP[r * LDS + j] - Dr);
          split_store(sPh + r * LDP + j, sPl + r * LDP + j, p);
          split_store(sSh + r * LDP + j, sSl + r * LDP + j, ds);
        }
      }
      __syncthreads();
      /* dV += Pᵀ·dO and dK += dSᵀ·Q: warp w owns keys 16w..16w+15 */
#pragma unroll 2
      for (int fc = 0; fc < DP / 16; fc++) {
        FragC accV, accK;
        wmma::load_matrix_sync(accV, sdV + warp * 16 * LDO + fc * 16, LDO, wmma::mem_row_major);
        wmma::load_matrix_sync(accK, sdK + warp * 16 * LDO + fc * 16, LDO, wmma::mem_row_major);
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) {
          FragAc ah, al;
          FragBr bh, bl;
          wmma::load_matrix_sync(ah, sPh + kk * 16 * LDP + warp * 16, LDP);
          wmma::load_matrix_sync(al, sPl + kk * 16 * LDP + warp * 16, LDP);
          wmma::load_matrix_sync(bh, sGh + kk * 16 * LDB + fc * 16, LDB);
          wmma::load_matrix_sync(bl, sGl + kk * 16 * LDB + fc * 16, LDB);
          wmma::mma_sync(accV, ah, bh, accV);
          wmma::mma_sync(accV, ah, bl, accV);
          wmma::mma_sync(accV, al, bh, accV);
          wmma::load_matrix_sync(ah, sSh + kk * 16 * LDP + warp * 16, LDP);
          wmma::load_matrix_sync(al, sSl + kk * 16 * LDP + warp * 16, LDP);
          wmma::load_matrix_sync(bh, sQ + kk * 16 * LDB + fc * 16, LDB);
          wmma::mma_sync(accK, ah, bh, accK);
          wmma::mma_sync(accK, al, bh, accK);
        }
        wmma::store_matrix_sync(sdV + warp * 16 * LDO + fc * 16, accV, LDO, wmma::mem_row_major);
        wmma::store_matrix_sync(sdK + warp * 16 * LDO + fc * 16, accK, LDO, wmma::mem_row_major);
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < BK * DP; i += NT) {
    int rr = i / DP, c = i % DP, t = k0 + rr;
    if (t >= m.n || c >= m.d) continue;
    size_t o = ((size_t)t * m.Hkv + g) * m.d + c;
    if (dk) dk[o] = sdK[rr * LDO + c] * m.scale;
    if (dv) dv[o] = sdV[rr * LDO + c];
  }
}

/* ================================================================ backward: dQ
 * Block: 64 queries of head h; loops over key tiles of 64.  Thread t owns row t/2 and keys
 * (t%2)·32 .. +32 for the element-wise step. */
template <int DP>
struct QSmem {
  static constexpr int BQ = 64, BK = 64, LDB = DP + 8, LDS = BK + 4, LDP = BK + 8, LDO = DP + 4;
  static constexpr size_t oQ = 0, oGh = oQ + (size_t)BQ * LDB * 2, oGl = oGh + (size_t)BQ * LDB * 2,
                          oK = oGl + (size_t)BQ * LDB * 2, oV = oK + (size_t)BK * LDB * 2,
                          oS = oV + (size_t)BK * LDB * 2, oDP = oS + (size_t)BQ * LDS * 4,
                          oSh = oDP + (size_t)BQ * LDS * 4, oSl = oSh + (size_t)BQ * LDP * 2,
                          odQ = oSl + (size_t)BQ * LDP * 2, oKM = odQ + (size_t)BQ * LDO * 4, bytes = oKM + (size_t)4 * BK * 4;
};

template <int DP>
__global__ void __launch_bounds__(NT) k_am_bwd_q(float *dq, const float *dout, const bf16 *q, const bf16 *k, const bf16 *v,
                                                 const float *lse, const float *D, MP m) {
  typedef QSmem<DP> L;
  constexpr int BQ = L::BQ, BK = L::BK, LDB = L::LDB, LDS = L::LDS, LDP = L::LDP, LDO = L::LDO;
  extern __shared__ __align__(128) unsigned char sm[];
  bf16 *sQ = (bf16 *)(sm + L::oQ), *sGh = (bf16 *)(sm + L::oGh), *sGl = (bf16 *)(sm + L::oGl);
  bf16 *sK = (bf16 *)(sm + L::oK), *sV = (bf16 *)(sm + L::oV), *sSh = (bf16 *)(sm + L::oSh), *sSl = (bf16 *)(sm + L::oSl);
  float *sS = (float *)(sm + L::oS), *sdP = (float *)(sm + L::oDP), *sdQ = (float *)(sm + L::odQ);
  int *km = (int *)(sm + L::oKM);
  const int tid = threadIdx.x, warp = tid >> 5;
  const int h = blockIdx.y, g = h / m.G, q0 = blockIdx.x * BQ;
  const int r = tid >> 1, half = tid & 1, qi = q0 + r;
  const bool qv = qi < m.n;
  const int oq = qv ? m.order[qi] : 0, sq = qv ? m.sample[qi] : INT_MIN + 1, pq = qv ? m.split[qi] : 0,
            mq = qv ? m.mode[qi] : 0;
  const float Lr = qv ? lse[(size_t)h * m.n + qi] * LOG2E : 0.f, Dr = qv ? D[(size_t)h * m.n + qi] : 0.f;

  load_bf16<DP>(sQ, LDB, q, m.H, h, m, q0, BQ);
  load_split<DP>(sGh, sGl, LDB, dout, m.H, h, m, q0, BQ);
  for (int i = tid; i < BQ * LDO; i += NT) sdQ[i] = 0.f;

  for (int k0 = 0; k0 < m.n; k0 += BK) {
    __syncthreads();
    load_meta(km, m, k0, BK, false);
    __syncthreads();
    uint32_t bits = 0;
#pragma unroll 8
    for (int i = 0; i < 32; i++) {
      int j = half * 32 + i;
      if (usbx_attn_visible(oq, sq, pq, mq, km[j], km[BK + j], km[2 * BK + j], km[3 * BK + j])) bits |= 1u << i;
    }
    if (!__syncthreads_or(bits != 0)) continue;
    load_bf16<DP>(sK, LDB, k, m.Hkv, g, m, k0, BK);
    load_bf16<DP>(sV, LDB, v, m.Hkv, g, m, k0, BK);
    __syncthreads();
    /* S = Q·Kᵀ, dP = dO·Vᵀ: warp w owns query rows 16w.. */
#pragma unroll
    for (int fc = 0; fc < BK / 16; fc++) {
      FragC accS, accP;
      wmma::fill_fragment(accS, 0.f);
      wmma::fill_fragment(accP, 0.f);
#pragma unroll
      for (int kk = 0; kk < DP / 16; kk++) {
        FragAr a;
        FragBc b;
        wmma::load_matrix_sync(b, sK + fc * 16 * LDB + kk * 16, LDB);
        wmma::load_matrix_sync(a, sQ + warp * 16 * LDB + kk * 16, LDB);
        wmma::mma_sync(accS, a, b, accS);
        wmma::load_matrix_sync(b, sV + fc * 16 * LDB + kk * 16, LDB);
        wmma::load_matrix_sync(a, sGh + warp * 16 * LDB + kk * 16, LDB);
        wmma::mma_sync(accP, a, b, accP);
        wmma::load_matrix_sync(a, sGl + warp * 16 * LDB + kk * 16, LDB);
        wmma::mma_sync(accP, a, b, accP);
      }
      wmma::store_matrix_sync(sS + warp * 16 * LDS + fc * 16, accS, LDS, wmma::mem_row_major);
      wmma::store_matrix_sync(sdP + warp * 16 * LDS + fc * 16, accP, LDS, wmma::mem_row_major);
    }
    __syncthreads();
#pragma unroll 8
    for (int i = 0; i < 32; i++) {
      const int j = half * 32 + i;
      float p = (bits >> i & 1u) ? exp2f(sS[r * LDS + j] * m.sl2 - Lr) : 0.f;
      split_store(sSh + r * LDP + j, sSl + r * LDP + j, p * (sdP[r * LDS + j] - Dr));
    }
    __syncthreads();
    /* dQ += dS·K: warp w owns rows 16w.. */
#pragma unroll 2
    for (int fc = 0; fc < DP / 16; fc++) {
      FragC acc;
      wmma::load_matrix_sync(acc, sdQ + warp * 16 * LDO + fc * 16, LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {
        FragAr ah, al;
        FragBr b;
        wmma::load_matrix_sync(ah, sSh + warp * 16 * LDP + kk * 16, LDP);
        wmma::load_matrix_sync(al, sSl + warp * 16 * LDP + kk * 16, LDP);
        wmma::load_matrix_sync(b, sK + kk * 16 * LDB + fc * 16, LDB);
        wmma::mma_sync(acc, ah, b, acc);
        wmma::mma_sync(acc, al, b, acc);
      }
      wmma::store_matrix_sync(sdQ + warp * 16 * LDO + fc * 16, acc, LDO, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int i = tid; i < BQ * DP; i += NT) {
    int rr = i / DP, c = i % DP, t = q0 + rr;
    if (t >= m.n || c >= m.d) continue;
    dq[((size_t)t * m.H + h) * m.d + c] = sdQ[rr * LDO + c] * m.scale;
  }
}

MP make_mp(const usbx_attn_masked_args *a, const void *q, const void *k, const void *v) {
  MP m;
  m.order = a->order; m.sample = a->sample; m.split = a->split; m.mode = a->mode;
  m.n = a->n; m.H = a->n_heads; m.Hkv = a->n_kv_heads; m.G = m.H / m.Hkv; m.d = a->head_dim;
  m.scale = 1.0f / sqrtf((float)m.d);
  m.sl2 = m.scale * LOG2E;
  m.vec = m.d % 8 == 0 && ((((uintptr_t)q) | ((uintptr_t)k) | ((uintptr_t)v)) & 15u) == 0;
  return m;
}
bool shape_ok(const usbx_attn_masked_args *a) {
  return a->n > 0 && a->n_heads > 0 && a->n_kv_heads > 0 && a->n_heads % a->n_kv_heads == 0 && a->head_dim > 0 &&
         a->head_dim <= 128;
}
template <typename K>
void smem_attr(K kern, size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int DP>
void fwd_launch(usbx_cuda *c, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const MP &m) {
  const size_t smem = FwdSmem<DP>::bytes;
  smem_attr(k_am_fwd<DP>, smem);
  dim3 grid((m.n + 63) / 64, m.H);
  k_am_fwd<DP><<<grid, NT, smem, c->stream>>>(out, lse, q, k, v, m);
  CUDA_LAUNCHED();
}
template <int DP>
void bwd_launch(usbx_cuda *c, float *dq, float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k, const bf16 *v,
                const float *lse, const float *D, const MP &m) {
  if (dk || dv) {
    const size_t smem = KvSmem<DP>::bytes;
    smem_attr(k_am_bwd_kv<DP>, smem);
    dim3 grid((m.n + 63) / 64, m.Hkv);
    k_am_bwd_kv<DP><<<grid, NT, smem, c->stream>>>(dk, dv, dout, q, k, v, lse, D, m);
    CUDA_LAUNCHED();
  }
  if (dq) {
    const size_t smem = QSmem<DP>::bytes;
    smem_attr(k_am_bwd_q<DP>, smem);
    dim3 grid((m.n + 63) / 64, m.H);
    k_am_bwd_q<DP><<<grid, NT, smem, c->stream>>>(dq, dout, q, k, v, lse, D, m);
    CUDA_LAUNCHED();
  }
}

}  // namespace

bool cu_attn_masked_fwd_tc(usbx_backend *be, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                           const usbx_attn_masked_args *a) {
  if (!shape_ok(a)) return false;
  MP m = make_mp(a, q, k, v);
  if (m.d <= 64) fwd_launch<64>(CU(be), out, lse, q, k, v, m);
  else fwd_launch<128>(CU(be), out, lse, q, k, v, m);
  return true;
}

bool cu_attn_masked_bwd_tc(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k,
                           const bf16 *v, const float *lse, const float *D, const usbx_attn_masked_args *a) {
  if (!shape_ok(a)) return false;
  MP m = make_mp(a, q, k, v);
  if (m.d <= 64) bwd_launch<64>(CU(be), dq, dk, dv, dout, q, k, v, lse, D, m);
  else bwd_launch<128>(CU(be), dq, dk, dv, dout, q, k, v, lse, D, m);
  return true;
}
