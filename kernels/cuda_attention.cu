/* cuda_attention.cu — flash attention (online softmax, no S×S matrix) for the rules of ops.h:
 * a context prefix plus a causal or bidirectional query block, GQA, bf16 q/k/v/out, fp32 math.
 *
 * Layout of the work.  The G = H/Hkv query heads that share one KV head are packed into the row
 * dimension: row r = i·G + g is query i of head kvh·G + g.  A block owns Br = 16·NW such rows of
 * one KV head, so each K/V tile it loads serves G heads at once.  Each warp owns 16 rows and
 * computes S = Q·Kᵀ and O += P·V with mma.sync m16n8k16 (bf16 in, fp32 accumulate); K/V tiles of
 * 64 keys are double-buffered in shared memory through cp.async.  Visibility is a prefix per
 * query: query i sees keys [0, lim_i) with lim_i = q_start+i+1 (causal) or q_start+n_q (block).
 *
 * When the grid would leave multiprocessors idle (decode: n_q = 1, G = 7 rows per KV head), the
 * key tiles of each block are split over gridDim.z blocks (flash-decoding); each writes a
 * normalised partial O and its log-sum-exp, and a second kernel merges them.
 * Head dims that are not a multiple of 8, or above 128 (up to 512: the autoencoder's single-head
 * attention over 512 channels), take a simple one-warp-per-(query, head) kernel.
 * On sm_90 with head dim 128, grids that need no key split run the Hopper kernels below
 * (warpgroup MMAs, K and V through TMA from a producer warp: k_flash_tma). */
#include "cuda_common.cuh"
#include "cuda_mma.cuh"
#include "cuda_wgmma.cuh"
#include <cuda.h>
#include <math.h>
#include <algorithm>

#define BC 64          /* keys per tile */

struct AttnP {
  const bf16 *q, *k, *v;
  bf16 *out;
  float *part_o, *part_lse;     /* split mode only */
  int n_q, q_start, kv_len, H, Hkv, G, d, R;
  int causal, n_split;
  float scale_log2;
};

__device__ __forceinline__ int row_lim(const AttnP &p, int r) {
  if (r >= p.R) return 0;
  int i = r / p.G;
  int lim = p.causal ? p.q_start + i + 1 : p.q_start + p.n_q;
  return min(lim, p.kv_len);
}

/* QA: the Q tile is staged in K/V buffer 1 (free until the second key tile), which saves
 * BR·LD·2 bytes of shared memory per block.
 * OPT: fewer instructions per key tile — K/V load addresses from per-thread bases (no division
 * per chunk, no bounds test on full tiles), O rescaled only when a row maximum moved, and tree
 * reductions for the row max and sum. */
template <int DP, int NW, bool QA, bool OPT>
__global__ void __launch_bounds__(NW * 32, NW == 4 ? 3 : 1) k_flash(AttnP p) {
  constexpr int BR = 16 * NW, LD = DP + 8, NT = NW * 32, CH = DP / 8;
  constexpr bool FASTLOAD = OPT && (NT % CH == 0);
  constexpr int RPI = FASTLOAD ? NT / CH : 1;    /* K/V rows per load iteration */
  static_assert(!QA || BR <= 2 * BC, "Q tile must fit in one K/V buffer pair");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16 *sKV = (bf16 *)smem_raw;        /* [2 buffers][K, V][BC][LD] */
  bf16 *sQ = QA ? sKV + 2 * BC * LD : sKV + 4 * BC * LD;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int kvh = blockIdx.y, split = blockIdx.z;
  const int r0 = blockIdx.x * BR;
  const int r_last = min(r0 + BR, p.R) - 1;
  const int kv_end = row_lim(p, r_last);          /* the block's widest row */
  const int n_tiles = (kv_end + BC - 1) / BC;
  const int tps = (n_tiles + p.n_split - 1) / p.n_split;
  const int t_begin = split * tps, t_end = min(n_tiles, t_begin + tps);

  /* rows of this thread: lr (fragment rows g and g+8 of the warp's 16) */
  const int ra = r0 + warp * 16 + (lane >> 2), rb = ra + 8;
  const int lim_a = row_lim(p, ra), lim_b = row_lim(p, rb);
  int wmax = max(lim_a, lim_b), wmin = min(ra < p.R ? lim_a : 1 << 30, rb < p.R ? lim_b : 1 << 30);
  for (int o = 1; o < 32; o <<= 1) {
    wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));
    wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, o));
  }

  float o_acc[DP / 8][4];
#pragma unroll
  for (int j = 0; j < DP / 8; j++) o_acc[j][0] = o_acc[j][1] = o_acc[j][2] = o_acc[j][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;

  if (t_begin < t_end) {
    /* Q tile */
    for (int c = tid; c < BR * CH; c += NT) {
      int rr = c / CH, cc = (c % CH) * 8, r = r0 + rr;
      bool ok = r < p.R && cc < p.d;
      const bf16 *src = p.q;
      if (ok) { int i = r / p.G, h = kvh * p.G + r % p.G; src = p.q + ((size_t)i * p.H + h) * p.d + cc; }
      cp_async16(sQ + rr * LD + cc, src, ok);
    }
    cp_commit();
    const int row0 = tid / CH, cc0 = (tid % CH) * 8;
    const bool col_ok = cc0 < p.d;
    const size_t rstride = (size_t)p.Hkv * p.d;
    const bf16 *kbase = p.k + (size_t)kvh * p.d + cc0, *vbase = p.v + (size_t)kvh * p.d + cc0;
    auto load_kv = [&](int t, int buf) {
      int j0 = t * BC;
      if constexpr (FASTLOAD) {
        const bool full = j0 + BC <= kv_end;
        bf16 *sk = sKV + (2 * buf * BC + row0) * LD + cc0, *sv = sk + BC * LD;
#pragma unroll 4
        for (int i = 0; i < BC / RPI; i++) {
          int j = j0 + row0 + i * RPI;
          bool ok = col_ok && (full || j < kv_end);
          size_t off = ok ? (size_t)j * rstride : 0;
          cp_async16(sk + i * RPI * LD, kbase + off, ok);
          cp_async16(sv + i * RPI * LD, vbase + off, ok);
        }
      } else {
#pragma unroll 2
        for (int c = tid; c < BC * CH; c += NT) {
          int jj = c / CH, cc = (c % CH) * 8, j = j0 + jj;
          bool ok = j < kv_end && cc < p.d;
          size_t off = ok ? ((size_t)j * p.Hkv + kvh) * p.d + cc : 0;
          cp_async16(sKV + (2 * buf * BC + jj) * LD + cc, p.k + off, ok);
          cp_async16(sKV + ((2 * buf + 1) * BC + jj) * LD + cc, p.v + off, ok);
        }
      }
      cp_commit();
    };
    load_kv(t_begin, 0);

    uint32_t qf[DP / 16][4];
    if (QA) {                           /* Q to registers before buffer 1 is reused */
      cp_wait<1>();
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < DP / 16; kk++) ldsm_a(qf[kk], sQ + warp * 16 * LD + kk * 16, LD, lane);
      __syncthreads();
    }
    for (int t = t_begin; t < t_end; t++) {
      const int buf = (t - t_begin) & 1;
      if (t + 1 < t_end) { load_kv(t + 1, buf ^ 1); cp_wait<1>(); }
      else cp_wait<0>();
      __syncthreads();
      if (!QA && t == t_begin) {
#pragma unroll
        for (int kk = 0; kk < DP / 16; kk++) ldsm_a(qf[kk], sQ + warp * 16 * LD + kk * 16, LD, lane);
      }
      const int j0 = t * BC;
      if (j0 < wmax) {                  /* some row of this warp sees keys of this tile */
        const bf16 *kb = sKV + 2 * buf * BC * LD, *vb = kb + BC * LD;
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; kk++) mma_nk<8>(s, qf[kk], kb + kk * 16, LD, lane);
        const bool need_mask = j0 + BC > wmin;
        float mx_a = -INFINITY, mx_b = -INFINITY;
        float ma[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, mb[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
          for (int e = 0; e < 2; e++) {
            int key = j0 + j * 8 + 2 * (lane & 3) + e;
            float xa = s[j][e], xb = s[j][2 + e];      /* raw q·k; scaled inside the exponent */
            if (need_mask) {
              if (key >= lim_a) xa = -INFINITY;
              if (key >= lim_b) xb = -INFINITY;
            }
            s[j][e] = xa; s[j][2 + e] = xb;
            if constexpr (OPT) { ma[(j & 1) * 2 + e] = fmaxf(ma[(j & 1) * 2 + e], xa); mb[(j & 1) * 2 + e] = fmaxf(mb[(j & 1) * 2 + e], xb); }
            else { mx_a = fmaxf(mx_a, xa); mx_b = fmaxf(mx_b, xb); }
          }
        }
        if constexpr (OPT) {
          mx_a = fmaxf(fmaxf(ma[0], ma[1]), fmaxf(ma[2], ma[3]));
          mx_b = fmaxf(fmaxf(mb[0], mb[1]), fmaxf(mb[2], mb[3]));
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        /* m_a, m_b: running maxima of the scaled scores (log2 domain) */
        const float mn_a = fmaxf(m_a, mx_a * p.scale_log2), mn_b = fmaxf(m_b, mx_b * p.scale_log2);
        const float mu_a = mn_a == -INFINITY ? 0.f : mn_a, mu_b = mn_b == -INFINITY ? 0.f : mn_b;
        const float al_a = ex2(m_a - mu_a), al_b = ex2(m_b - mu_b);
        m_a = mn_a; m_b = mn_b;
        const float sc = p.scale_log2;
        float sum_a = 0.f, sum_b = 0.f;
        float sa[4] = {0.f, 0.f, 0.f, 0.f}, sb[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int j = 0; j < 8; j++) {
          s[j][0] = ex2(fmaf(s[j][0], sc, -mu_a)); s[j][1] = ex2(fmaf(s[j][1], sc, -mu_a));
          s[j][2] = ex2(fmaf(s[j][2], sc, -mu_b)); s[j][3] = ex2(fmaf(s[j][3], sc, -mu_b));
          if constexpr (OPT) {
            sa[(j & 1) * 2] += s[j][0]; sa[(j & 1) * 2 + 1] += s[j][1];
            sb[(j & 1) * 2] += s[j][2]; sb[(j & 1) * 2 + 1] += s[j][3];
          } else {
            sum_a += s[j][0] + s[j][1]; sum_b += s[j][2] + s[j][3];
          }
        }
        if constexpr (OPT) {
          sum_a = (sa[0] + sa[1]) + (sa[2] + sa[3]);
          sum_b = (sb[0] + sb[1]) + (sb[2] + sb[3]);
        }
        l_a = l_a * al_a + sum_a; l_b = l_b * al_b + sum_b;
        if (!OPT || __any_sync(0xffffffffu, al_a != 1.f || al_b != 1.f)) {
#pragma unroll
          for (int j = 0; j < DP / 8; j++) { o_acc[j][0] *= al_a; o_acc[j][1] *= al_a; o_acc[j][2] *= al_b; o_acc[j][3] *= al_b; }
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
          uint32_t a[4];
          acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
          mma_kn<DP>(o_acc, a, vb + kk * 16 * LD, LD, lane);
        }
      }
      __syncthreads();
    }
  }

  /* epilogue */
  l_a = quad_sum(l_a); l_b = quad_sum(l_b);
  const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
  const int cb = 2 * (lane & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int r = half ? rb : ra;
    if (r >= p.R) continue;
    const float inv = half ? inv_b : inv_a;
    if (p.n_split == 1) {
      const int i = r / p.G, h = kvh * p.G + r % p.G;
      bf16 *orow = p.out + ((size_t)i * p.H + h) * p.d;
#pragma unroll
      for (int j = 0; j < DP / 8; j++) {
        int col = j * 8 + cb;
        if (col < p.d) *(uint32_t *)(orow + col) = pack_bf16(o_acc[j][2 * half] * inv, o_acc[j][2 * half + 1] * inv);
      }
    } else {
      size_t prow = ((size_t)split * p.Hkv + kvh) * p.R + r;
      float *po = p.part_o + prow * DP;
#pragma unroll
      for (int j = 0; j < DP / 8; j++) {
        int col = j * 8 + cb;
        *(float2 *)(po + col) = make_float2(o_acc[j][2 * half] * inv, o_acc[j][2 * half + 1] * inv);
      }
      if ((lane & 3) == 0) {
        float l = half ? l_b : l_a, m = half ? m_b : m_a;
        p.part_lse[prow] = l > 0.f ? m + log2f(l) : -INFINITY;
      }
    }
  }
}

/* Hopper variants (sm_90a, head dim 128): the same row packing and online softmax, with the two
 * products as warpgroup MMAs (wgmma m64n128k16) straight from 128-byte-swizzled shared memory
 * tiles (cuda_wgmma.cuh).  A block is NWG warpgroups of 64 rows each; key tiles of 128.  Per tile
 * and warpgroup (wg_tile): S = Q·Kᵀ (8 wgmma, A and B from shared memory), the softmax on the
 * accumulators, then O += P·V (8 wgmma, P from registers, V transposed by the hardware).
 *   k_flash_wg: every thread loads the next tile through cp.async (double-buffered) and a
 *     block-wide barrier per tile keeps the warpgroups in step.
 *   k_flash_tma: a producer warp feeds two stages through TMA (tensor maps of K and V) and
 *     mbarriers, and the two consumer warpgroups take turns at the tensor cores, each issuing P·V
 *     of its previous tile with S of the next (wg_flash_tiles), so one's softmax overlaps the
 *     other's products.
 * No split keys: the launcher uses them for blocks of many rows. */
struct WgRows {                 /* a thread's two rows (fragment rows g and g+8) */
  int lim_a, lim_b, wmin;       /* visible keys of each; the warp's smallest */
  WgSoftmax sm;
};

#if USBX_WGMMA_DEVICE
/* keys from each row's limit on are hidden (a prefix per query row) */
struct PrefixMask {
  int j0, lim_a, lim_b;
  bool on;                      /* some row of the warp ends inside this tile */
  __device__ __forceinline__ bool active() const { return on; }
  __device__ __forceinline__ void bits(int lane, uint32_t &ba, uint32_t &bb) const {
    ba = bb = 0;
#pragma unroll
    for (int i = 0; i < 32; i++) {
      const int key = j0 + (i >> 1) * 8 + 2 * (lane & 3) + (i & 1);
      ba |= (uint32_t)(key < lim_a) << i;
      bb |= (uint32_t)(key < lim_b) << i;
    }
  }
};
static __device__ __forceinline__ PrefixMask prefix_mask(const WgRows &w, int j0) { return {j0, w.lim_a, w.lim_b, j0 + WG_BK > w.wmin}; }

/* rows ra and ra + 8 of this thread: limits, and the warp's smallest (masking is needed from there) */
static __device__ __forceinline__ WgRows wg_rows(const AttnP &p, int ra, int rb) {
  WgRows w;
  w.lim_a = row_lim(p, ra); w.lim_b = row_lim(p, rb);
  int wmin = min(ra < p.R ? w.lim_a : 1 << 30, rb < p.R ? w.lim_b : 1 << 30);
  for (int o = 1; o < 32; o <<= 1) wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, o));
  w.wmin = wmin;
  w.sm = wg_softmax_init();
  return w;
}

/* the Q tile (BR packed rows of KV head kvh) into swizzled shared memory by the block's threads */
template <int BR>
static __device__ __forceinline__ void wg_load_q(const AttnP &p, unsigned char *sQ, int r0, int kvh, int tid, int nt) {
  for (int c = tid; c < BR * 16; c += nt) {
    int rr = c >> 4, ch = c & 15, r = r0 + rr;
    bool ok = r < p.R;
    const bf16 *src = p.q;
    if (ok) { int i = r / p.G, h = kvh * p.G + r % p.G; src = p.q + ((size_t)i * p.H + h) * 128 + ch * 8; }
    cp_async16(sQ + swz_off(rr, ch, BR), src, ok);
  }
  cp_commit();
}

static __device__ __forceinline__ void wg_store(const AttnP &p, const float (&o_acc)[64], WgRows w, int ra, int rb, int kvh, int lane) {
  const float l_a = quad_sum(w.sm.l_a), l_b = quad_sum(w.sm.l_b);
  const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
  const int cb = 2 * (lane & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int r = half ? rb : ra;
    if (r >= p.R) continue;
    const float inv = half ? inv_b : inv_a;
    const int i = r / p.G, h = kvh * p.G + r % p.G;
    bf16 *orow = p.out + ((size_t)i * p.H + h) * 128;
#pragma unroll
    for (int j = 0; j < 16; j++)
      *(uint32_t *)(orow + j * 8 + cb) = pack_bf16(o_acc[4 * j + 2 * half] * inv, o_acc[4 * j + 2 * half + 1] * inv);
  }
}
#endif

template <int NWG>
__global__ void __launch_bounds__(NWG * 128, 1) k_flash_wg(AttnP p) {
#if USBX_WGMMA_DEVICE
  constexpr int BR = 64 * NWG, NT = NWG * 128, RPI = NT / 16;   /* RPI: key rows per load pass */
  static_assert(RPI % 8 == 0, "a thread's rows must share their swizzle (row % 8)");
  constexpr uint32_t TILE = WG_KV_TILE;
  extern __shared__ unsigned char smem_raw[];
  unsigned char *base = wg_smem_base(smem_raw);
  unsigned char *sQ = base, *sKV = base + BR * 256; /* [2 buffers][K, V] */

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int kvh = blockIdx.y, r0 = blockIdx.x * BR;
  const int kv_end = row_lim(p, min(r0 + BR, p.R) - 1);
  const int n_tiles = (kv_end + WG_BK - 1) / WG_BK;
  /* the limits grow with the row: a warpgroup's widest row is its last */
  const int wg_max = r0 + wg * 64 < p.R ? row_lim(p, min(r0 + wg * 64 + 63, p.R - 1)) : 0;
  const int ra = r0 + warp * 16 + (lane >> 2), rb = ra + 8;
  WgRows w = wg_rows(p, ra, rb);
  float o_acc[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o_acc[i] = 0.f;

  wg_load_q<BR>(p, sQ, r0, kvh, tid, NT);
  /* this thread's chunk of every RPI-th key row: the swizzled position depends on row % 8 only */
  const int ch = tid & 15, row0 = tid >> 4;
  const uint32_t soff = swz_off(row0, ch, WG_BK);
  const size_t rstride = (size_t)p.Hkv * 128;
  const bf16 *kbase = p.k + (size_t)kvh * 128 + ch * 8, *vbase = p.v + (size_t)kvh * 128 + ch * 8;
  auto load_kv = [&](int t, int buf) {
    const int j0 = t * WG_BK;
    unsigned char *sk = sKV + 2 * buf * TILE + soff, *sv = sk + TILE;
#pragma unroll
    for (int i = 0; i < (WG_BK + RPI - 1) / RPI; i++) {
      if (WG_BK % RPI && row0 + i * RPI >= WG_BK) break;
      int j = j0 + row0 + i * RPI;
      bool ok = j < kv_end;
      size_t off = ok ? (size_t)j * rstride : 0;
      cp_async16(sk + i * RPI * 128, kbase + off, ok);
      cp_async16(sv + i * RPI * 128, vbase + off, ok);
    }
    cp_commit();
  };
  if (n_tiles > 0) load_kv(0, 0);
  /* K-major Q and K: 8-row groups 1024 bytes apart (the leading offset is unused); V, read
   * MN-major: the same, and its two 64-column halves WG_BK rows of 128 bytes apart */
  const uint64_t dq = wg_desc(sQ + wg * 64 * 128, 16, 1024);
  const uint64_t dk = wg_desc(sKV, 16, 1024), dv = wg_desc(sKV, WG_BK * 128, 1024);

  for (int t = 0; t < n_tiles; t++) {
    const int buf = t & 1;
    if (t + 1 < n_tiles) { load_kv(t + 1, buf ^ 1); cp_wait<1>(); }
    else cp_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (t * WG_BK < wg_max)
      wg_tile<BR>(o_acc, w.sm, dq, dk + ((2 * buf * TILE) >> 4), dv + (((2 * buf + 1) * TILE) >> 4), p.scale_log2, lane, prefix_mask(w, t * WG_BK));
    __syncthreads();
  }
  wg_store(p, o_acc, w, ra, rb, kvh, lane);
#else
  __trap();   /* launched only on sm_90 devices, which run the sm_90a image */
#endif
}

/* 2 consumer warpgroups (warps 0-7) and a producer warpgroup (warp 8 issues the copies; the
 * warpgroup gives its registers to the consumers, whose pipelined tiles need more than the 168 a
 * 384-thread block starts with); K and V through TMA boxes of 64 columns x 128 keys (128-byte
 * swizzle: the layout the descriptors expect), 2 stages */
__global__ void __launch_bounds__(384, 1) k_flash_tma(AttnP p, const __grid_constant__ CUtensorMap tm_k,
                                                      const __grid_constant__ CUtensorMap tm_v) {
#if USBX_WGMMA_DEVICE
  constexpr int NWG = 2, BR = 64 * NWG;   /* two consumer warpgroups: wg_flash_tiles takes them in turns */
  extern __shared__ unsigned char smem_raw[];
  unsigned char *base = wg_smem_base(smem_raw);
  unsigned char *sQ = base, *sKV = base + BR * 256;   /* [2 stages][K, V] */
  const WgKV kv = wg_kv_at(sKV);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int kvh = blockIdx.y, r0 = blockIdx.x * BR;
  const int kv_end = row_lim(p, min(r0 + BR, p.R) - 1);
  const int n_tiles = (kv_end + WG_BK - 1) / WG_BK;

  wg_load_q<BR>(p, sQ, r0, kvh, tid, blockDim.x);
  if (tid == 0) wg_kv_init(kv, 4 * NWG);
  cp_wait<0>();
  fence_proxy_async();
  __syncthreads();

  if (warp >= 4 * NWG) {        /* producer warpgroup: one thread issues the copies */
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (warp == 4 * NWG && lane == 0) wg_kv_produce(kv, &tm_k, &tm_v, kvh * 128, n_tiles, [](int t) { return t * WG_BK; });
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  const int ra = r0 + warp * 16 + (lane >> 2), rb = ra + 8;
  WgRows w = wg_rows(p, ra, rb);
  float o_acc[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o_acc[i] = 0.f;
  /* a tile past the limits of every row of a warp is wholly hidden by its prefix mask (which is on
   * from the warp's smallest limit): no tile is skipped */
  wg_flash_tiles<BR>(o_acc, w.sm, kv, n_tiles, wg_desc(sQ + wg * 64 * 128, 16, 1024), p.scale_log2, lane, wg,
                     [&](int t, int) { return prefix_mask(w, t * WG_BK); });
  wg_store(p, o_acc, w, ra, rb, kvh, lane);
#else
  __trap();
#endif
}

template <int NWG>
static void launch_flash_wg(usbx_cuda *c, AttnP &p) {
  constexpr int BR = 64 * NWG;
  const size_t smem = 1024 + (size_t)BR * 256 + 4 * (size_t)WG_BK * 256;
  static bool attr_set[64];
  if (c->device < 64 && !attr_set[c->device]) {
    CUDA_CHECK(cudaFuncSetAttribute(k_flash_wg<NWG>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attr_set[c->device] = true;
  }
  p.n_split = 1;
  dim3 grid((p.R + BR - 1) / BR, p.Hkv, 1);
  k_flash_wg<NWG><<<grid, NWG * 128, smem, c->stream>>>(p);
  CUDA_LAUNCHED();
}

/* false when the tensor maps cannot be made (no driver entry point): the caller falls back */
static bool launch_flash_tma(usbx_cuda *c, AttnP &p) {
  CUtensorMap tk, tv;
  if (!kv_tmap(&tk, p.k, p.kv_len, p.Hkv) || !kv_tmap(&tv, p.v, p.kv_len, p.Hkv)) return false;
  constexpr int BR = 128;
  const size_t smem = 1024 + (size_t)BR * 256 + WG_KV_SMEM;
  static bool attr_set[64];
  if (c->device < 64 && !attr_set[c->device]) {
    CUDA_CHECK(cudaFuncSetAttribute(k_flash_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attr_set[c->device] = true;
  }
  p.n_split = 1;
  dim3 grid((p.R + BR - 1) / BR, p.Hkv, 1);
  k_flash_tma<<<grid, 384, smem, c->stream>>>(p, tk, tv);
  CUDA_LAUNCHED();
  return true;
}

/* Merge the n_split partial results of each (kvh, row): one warp per row. */
template <int DP>
__global__ void k_flash_combine(AttnP p) {
  int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (w >= p.Hkv * p.R) return;
  int kvh = w / p.R, r = w % p.R;
  float mx = -INFINITY;
  for (int s = 0; s < p.n_split; s++) mx = fmaxf(mx, p.part_lse[((size_t)s * p.Hkv + kvh) * p.R + r]);
  constexpr int NC = (DP + 31) / 32;
  float acc[NC];
#pragma unroll
  for (int c = 0; c < NC; c++) acc[c] = 0.f;
  float wsum = 0.f;
  for (int s = 0; s < p.n_split; s++) {
    size_t prow = ((size_t)s * p.Hkv + kvh) * p.R + r;
    float lse = p.part_lse[prow];
    if (lse == -INFINITY) continue;
    float wt = exp2f(lse - mx);
    wsum += wt;
    const float *po = p.part_o + prow * DP;
#pragma unroll
    for (int c = 0; c < NC; c++) if (lane + 32 * c < DP) acc[c] += wt * po[lane + 32 * c];
  }
  float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  int i = r / p.G, h = kvh * p.G + r % p.G;
  bf16 *orow = p.out + ((size_t)i * p.H + h) * p.d;
#pragma unroll
  for (int c = 0; c < NC; c++) {
    int col = lane + 32 * c;
    if (col < p.d) orow[col] = f2bf(acc[c] * inv);
  }
}

/* Fallback for any head dim <= 32·NC (NC = 8: 256, NC = 16: 512, e.g. the autoencoder's
 * single-head attention over 512 channels): one warp per (query, head), keys one by one. */
template <int NC>
__global__ void k_attn_simple(AttnP p) {
  int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (w >= p.n_q * p.H) return;
  int i = w / p.H, h = w % p.H, kvh = h / p.G;
  int lim = p.causal ? p.q_start + i + 1 : p.q_start + p.n_q;
  lim = min(lim, p.kv_len);
  const bf16 *qr = p.q + ((size_t)i * p.H + h) * p.d;
  float qv[NC], o[NC];
#pragma unroll
  for (int c = 0; c < NC; c++) { int col = lane + 32 * c; qv[c] = col < p.d ? bf2f(qr[col]) : 0.f; o[c] = 0.f; }
  float m = -INFINITY, l = 0.f;
  for (int j = 0; j < lim; j++) {
    const bf16 *kr = p.k + ((size_t)j * p.Hkv + kvh) * p.d, *vr = p.v + ((size_t)j * p.Hkv + kvh) * p.d;
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < NC; c++) { int col = lane + 32 * c; if (col < p.d) s += qv[c] * bf2f(kr[col]); }
    for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    s *= p.scale_log2;
    float mn = fmaxf(m, s), al = exp2f(m - mn), pe = exp2f(s - mn);
    l = l * al + pe;
#pragma unroll
    for (int c = 0; c < NC; c++) { int col = lane + 32 * c; o[c] = o[c] * al + (col < p.d ? pe * bf2f(vr[col]) : 0.f); }
    m = mn;
  }
  bf16 *orow = p.out + ((size_t)i * p.H + h) * p.d;
  float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int c = 0; c < NC; c++) { int col = lane + 32 * c; if (col < p.d) orow[col] = f2bf(o[c] * inv); }
}

template <int DP, int NW, bool QA, bool OPT>
static void launch_flash(usbx_cuda *c, AttnP &p) {
  constexpr int BR = 16 * NW;
  const size_t smem = (size_t)((QA ? 0 : BR) + 4 * BC) * (DP + 8) * sizeof(bf16);
  static bool attr_set[64];                       /* per device */
  if (c->device < 64 && !attr_set[c->device]) {
    CUDA_CHECK(cudaFuncSetAttribute(k_flash<DP, NW, QA, OPT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attr_set[c->device] = true;
  }
  const int row_blocks = (p.R + BR - 1) / BR;
  const int base = row_blocks * p.Hkv, sms = c->prop.multiProcessorCount;
  const int max_tiles = (std::min(p.kv_len, p.q_start + p.n_q) + BC - 1) / BC;
  int n_split = 1;
  if (c->opt_attn_split && base < sms && max_tiles > 1)
    n_split = std::max(1, std::min({(2 * sms + base - 1) / base, max_tiles, 64}));
  p.n_split = n_split;
  if (n_split > 1) {
    size_t need = (size_t)n_split * p.Hkv * p.R * (DP + 1) * sizeof(float);
    p.part_o = (float *)cu_scratch(c, need);
    p.part_lse = p.part_o + (size_t)n_split * p.Hkv * p.R * DP;
  }
  dim3 grid(row_blocks, p.Hkv, n_split);
  k_flash<DP, NW, QA, OPT><<<grid, NW * 32, smem, c->stream>>>(p);
  CUDA_LAUNCHED();
  if (n_split > 1) {
    size_t warps = (size_t)p.Hkv * p.R;
    k_flash_combine<DP><<<(unsigned)((warps + 7) / 8), 256, 0, c->stream>>>(p);
    CUDA_LAUNCHED();
  }
}

/* variants (option "attn_variant"): 0 = 4 warps, Q own smem; 1 = 4 warps, Q staged;
 * 2 = 8 warps, Q staged; 3 = variant 1 + OPT; 4 = variant 2 + OPT; 6, 7 = wgmma with 2 or 3
 * warpgroups; 8 = wgmma fed by TMA and a producer warp (6-8: sm_90 and head dim 128 only, else
 * 5); 5 (default) = auto.  Auto on sm_90 with head dim 128, unless the mma.sync launcher would
 * split the keys of a short grid (decoding): 8, or where tensor maps cannot be made, 7 when its
 * 192-row blocks fill three waves, 6 when its 128-row blocks fill one.  H100, 2026-11-26 21:40 UTC,
 * TFLOP/s: 4098-token image block v3 278, v7 387, v8 509; 1026-token block v4 175, v6 240, v8 309;
 * 1000-token causal prefill v3 124, v6 145, v8 179; 300 tokens after a 4128-token prefix v3 171,
 * v8 248.  Otherwise 3, except for a bidirectional block of >= 1024 rows that gives 3 fewer than
 * two full waves (3 blocks of 4 warps per SM), where 4 leaves less of the last wave idle
 * (4098-token block v3 276 vs v4 242; 1026-token block v3 161 vs v4 173). */
template <int DP>
static void launch_variant(usbx_cuda *c, AttnP &p) {
  int v = c->opt_attn_variant;
  const bool wg_ok = DP == 128 && p.d == 128 && c->prop.major == 9;
  const long sms = c->prop.multiProcessorCount;
  if ((v == 6 || v == 7 || v == 8) && !wg_ok) v = 5;
  if (v == 8 && launch_flash_tma(c, p)) return;
  if (v == 8) v = 5;
  if (v == 5 && wg_ok) {
    const int max_tiles = (std::min(p.kv_len, p.q_start + p.n_q) + BC - 1) / BC;
    const bool would_split = c->opt_attn_split && (long)((p.R + 63) / 64) * p.Hkv < sms && max_tiles > 1;
    if (!would_split) {
      if (launch_flash_tma(c, p)) return;
      if ((long)((p.R + 191) / 192) * p.Hkv >= 3 * sms) v = 7;
      else if ((long)((p.R + 127) / 128) * p.Hkv >= sms) v = 6;
    }
  }
  if (v == 5) {
    long blocks3 = (long)((p.R + 63) / 64) * p.Hkv;
    v = (!p.causal && p.R >= 1024 && blocks3 < 2L * 3 * c->prop.multiProcessorCount) ? 4 : 3;
  }
  switch (v) {
    case 6: launch_flash_wg<2>(c, p); break;
    case 7: launch_flash_wg<3>(c, p); break;
    case 0: launch_flash<DP, 4, false, false>(c, p); break;
    case 2: launch_flash<DP, 8, true, false>(c, p); break;
    case 3: launch_flash<DP, 4, true, true>(c, p); break;
    case 4: launch_flash<DP, 8, true, true>(c, p); break;
    default: launch_flash<DP, 4, true, false>(c, p); break;
  }
}

void cu_attention(usbx_backend *be, void *out, const void *q, const void *k, const void *v, const usbx_attn_args *a) {
  usbx_cuda *c = CU(be);
  if (a->n_q <= 0) return;
  if (a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads)
    usbx_die("cuda attention: %d query heads are not a multiple of %d KV heads", a->n_heads, a->n_kv_heads);
  if (a->head_dim <= 0 || a->head_dim > 512) usbx_die("cuda attention: head dim %d not in 1..512", a->head_dim);
  if (a->q_start < 0 || a->kv_len < a->q_start + a->n_q || a->kv_len <= 0)
    usbx_die("cuda attention: kv_len %d too short for q_start %d + n_q %d", a->kv_len, a->q_start, a->n_q);
  AttnP p;
  p.q = (const bf16 *)q; p.k = (const bf16 *)k; p.v = (const bf16 *)v; p.out = (bf16 *)out;
  p.part_o = p.part_lse = NULL;
  p.n_q = a->n_q; p.q_start = a->q_start; p.kv_len = a->kv_len;
  p.H = a->n_heads; p.Hkv = a->n_kv_heads; p.G = p.H / p.Hkv; p.d = a->head_dim;
  p.R = p.n_q * p.G;
  p.causal = a->causal; p.n_split = 1;
  p.scale_log2 = (float)(1.4426950408889634 / sqrt((double)p.d));
  const int d = p.d;
  bool al = (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)out) & 15u) == 0;
  if (d % 8 == 0 && al && d <= 128) {
    if (d <= 64) launch_variant<64>(c, p);
    else if (d <= 80) launch_variant<80>(c, p);
    else if (d <= 96) launch_variant<96>(c, p);
    else launch_variant<128>(c, p);
    return;
  }
  size_t warps = (size_t)p.n_q * p.H;
  if (d <= 256) k_attn_simple<8><<<(unsigned)((warps + 7) / 8), 256, 0, c->stream>>>(p);
  else k_attn_simple<16><<<(unsigned)((warps + 7) / 8), 256, 0, c->stream>>>(p);
  CUDA_LAUNCHED();
}
