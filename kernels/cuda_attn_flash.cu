/* cuda_attn_flash.cu — packed training attention (ops.h usbx_attn_masked_args) as flash
 * attention: the forward keeps only the log-sum-exp, the backward recomputes the probabilities
 * tile by tile, and no n x n matrix is ever written.  The default CUDA path for head dims that are
 * a multiple of 8 up to 128 (option attn_masked_flash; the cuBLAS and tiled paths stay behind it).
 *
 * Tiles are 64 tokens of the stored order.  A first pass classifies every (query tile, key tile)
 * pair by brute force over the per-token visibility rule of ops.h: none visible (skipped: other
 * samples, keys after a causal block, other noise splits), all visible (no per-element test),
 * or mixed (the rule evaluated per element from metadata staged in shared memory; the Hopper
 * kernels instead read bits made once per batch by that pass, k_status).
 *
 *   forward   one block per (query tile, query head), 4 warps of 16 query rows; active key tiles
 *             double-buffered through cp.async; S = Q·Kᵀ and O += P·V by mma.sync m16n8k16 bf16
 *             with fp32 accumulation; online softmax in the log2 domain; lse to [H, n].
 *   dK, dV    one block per (key tile, query head), 4 warps of 16 keys; the active query tiles
 *             stream Q and dO through; Pᵀ and dSᵀ are built in registers per half tile of 32
 *             queries; dV += Pᵀ·dO, dK += dSᵀ·Q.  With GQA each block writes its head's share to
 *             a workspace and a second pass sums the G heads of a KV head in a fixed order (one
 *             block per KV head would leave most of the GPU idle: 258 blocks for the 1.59 B model,
 *             and a key tile shared by two samples has twice the work of the others).
 *   dQ        one block per (query tile, query head): S and dP = dO·Vᵀ again, dQ += dS·K.
 * Two backward kernels instead of FlashAttention-2's one with atomic dQ: deterministic, at the
 * price of recomputing S and dP once more.  Blocks are launched longest first (k_tile_order).
 * On sm_90 at head dim 128 the forward runs as warpgroup MMAs fed by TMA instead (k_fa_fwd_tma
 * below; option attn_masked_wg), in blocks of 128 queries, and the backward as one kernel
 * (k_fa_bwd_tma, option attn_bwd_fused: dQ, dK and dV added up in fp32 by the TMA unit, so not
 * bit-stable in their last bits) or, with that option off, the mma.sync dK/dV kernel and
 * k_fa_bwd_q_tma.
 *
 * Precision is FlashAttention-2's (upstream trains with it): bf16 q/k/v, dO rounded to bf16, P
 * rounded to bf16 for P·V and Pᵀ·dO, dS rounded to bf16 for its two products; row sums, lse, D,
 * and all accumulation in fp32.  The cpu-bf16 backend rounds at the same places
 * (cpu_attention_masked.c). */
#include "cuda_mma.cuh"
#include "cuda_wgmma.cuh"
#include "attn_units.h"
#include <limits.h>
#include <math.h>
#include <algorithm>

namespace {

constexpr int TB = 64;                 /* tokens per tile, queries and keys */
constexpr int NW = 4, NT = NW * 32;    /* 4 warps of 16 rows */
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
constexpr uint8_t T_NONE = 0, T_PART = 1, T_FULL = 2;
constexpr int FULL_BIT = 1 << 30;      /* in the active-tile lists: no per-element test */

struct FP {
  const bf16 *q, *k, *v, *dob;         /* [n, H, d], [n, Hkv, d], [n, Hkv, d], dO [n, H, d] */
  bf16 *out;
  float *lse;                          /* forward output, [H, n] natural log */
  const float *lse_in, *D;             /* backward inputs, [H, n] */
  float *dq, *dk, *dv;
  float *part_k, *part_v;              /* GQA, k_fa_bwd_kv: [n, H, d] per query head, summed into dk / dv */
  const int4 *meta;                    /* per stored token: {order, sample, split·4 + mode, 1} */
  const uint8_t *status;               /* [nt][nt]: query tile x key tile */
  const int *slot;                     /* [nt][nt]: a masked pair's bits (k_status) */
  const uint16_t *bits;
  const int *units;                    /* the one-kernel backward's units (usbx_attn_plan_units) */
  int n_units, chunk;
  const int *q_order, *k_order;        /* query / key tiles by falling cost (k_tile_order) */
  const int *q2_order;                 /* the same for pairs of query tiles (the Hopper kernels' blocks) */
  int n, H, Hkv, G, d, nt;
  float sl2, scale;
};

/* ops.h's rule; w = 0 marks padding past n (zero-filled by cp.async): never visible as a key */
__device__ __forceinline__ bool vis(int4 q, int4 k) {
  return k.w != 0 && usbx_attn_visible(q.x, q.y, q.z >> 2, q.z & 3, k.x, k.y, k.z >> 2, k.z & 3);
}

#ifdef USBX_ATTN_TRACE
/* Debug build only (make NVDEFS=-DUSBX_ATTN_TRACE, benchmark/device_attn_trace.sh): per block of the
 * Hopper kernels its start, the end of each consumer warpgroup (%globaltimer, ns), its SM and
 * active tile count; dumped by trace_dump. */
constexpr int TRACE_MAX = 1 << 16;
__device__ unsigned long long g_trace[TRACE_MAX][5];
#if USBX_WGMMA_DEVICE
__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void trace_start() {
  if (threadIdx.x == 0 && blockIdx.x < TRACE_MAX) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    g_trace[blockIdx.x][0] = gtime();
    g_trace[blockIdx.x][3] = sm;
  }
}
__device__ __forceinline__ void trace_count(int n_act) {
  if (threadIdx.x == 0 && blockIdx.x < TRACE_MAX) g_trace[blockIdx.x][4] = (unsigned long long)n_act;
}
__device__ __forceinline__ void trace_end(int wg) {
  if ((threadIdx.x & 127) == 0 && blockIdx.x < TRACE_MAX && wg < 2) g_trace[blockIdx.x][1 + wg] = gtime();
}
#endif
#define TRACE_START() trace_start()
#define TRACE_COUNT(n) trace_count(n)
#define TRACE_END(w) trace_end(w)
#else
#define TRACE_START() ((void)0)
#define TRACE_COUNT(n) ((void)0)
#define TRACE_END(w) ((void)0)
#endif

__global__ void k_meta(int4 *meta, const int32_t *order, const int32_t *sample, const int32_t *split, const int32_t *mode, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) meta[i] = make_int4(order[i], sample[i], split[i] * 4 + mode[i], 1);
}

/* The Hopper kernels read a masked tile pair's visibility as bits instead of evaluating the rule per
 * element (which made a masked tile cost ~3x a whole one): per 64 x 64 pair with status T_PART,
 * k_status writes 1 KB, two tables of 64 rows x 4 u16 in the order of the threads' fragments:
 * bit 2j + e of word [r][c4] is column 8j + 2·c4 + e (j < 8, e < 2).  The first table's rows are
 * queries and its columns keys (the forward), the second's rows keys and columns queries (the
 * backward).  Columns past n are never visible. */
constexpr int MASK_WORDS = TB * 4;   /* u16 words per table */
constexpr size_t MASK_BYTES = 2 * MASK_WORDS * sizeof(uint16_t);   /* a masked pair's two tables */
__device__ __forceinline__ uint32_t vis_word_q(int4 q, const int4 *mk, int c4) {
  uint32_t w = 0;
#pragma unroll
  for (int i = 0; i < 16; i++) w |= (uint32_t)vis(q, mk[(i >> 1) * 8 + 2 * c4 + (i & 1)]) << i;
  return w;
}
__device__ __forceinline__ uint32_t vis_word_k(const int4 *mq, int4 k, int c4) {
  uint32_t w = 0;
#pragma unroll
  for (int i = 0; i < 16; i++) {
    const int4 q = mq[(i >> 1) * 8 + 2 * c4 + (i & 1)];
    w |= (uint32_t)(q.w != 0 && vis(q, k)) << i;
  }
  return w;
}

/* status of one (query tile, key tile) pair (padding queries, past n, do not count), and for a
 * masked one (T_PART) its slot, counted in *count, and its bits there while slot < cap (slot -1
 * past that: prepare grows the table and classifies again) */
__global__ void __launch_bounds__(256) k_status(uint8_t *st, int *slot, uint16_t *bits, int *count, int cap, const int4 *meta, int n, int nt) {
  __shared__ int4 mq[TB], mk[TB];
  __shared__ int s_slot;
  const int kt = blockIdx.x, qt = blockIdx.y, tid = threadIdx.x;
  if (tid < TB) {
    int t = qt * TB + tid;
    mq[tid] = t < n ? meta[t] : make_int4(0, 0, 0, 0);
  } else if (tid < 2 * TB) {
    int t = kt * TB + tid - TB;
    mk[tid - TB] = t < n ? meta[t] : make_int4(0, 0, 0, 0);
  }
  __syncthreads();
  const int r = tid >> 2, c4 = tid & 3;   /* 256 threads: one word of each table */
  const bool valid = qt * TB + r < n;
  const uint32_t wq = valid ? vis_word_q(mq[r], mk, c4) : 0;
  const bool any = __syncthreads_or(wq != 0), all = __syncthreads_and(!valid || wq == 0xffffu);
  const uint8_t s = any ? (all ? T_FULL : T_PART) : T_NONE;
  const size_t pair = (size_t)qt * nt + kt;
  if (tid == 0) {
    st[pair] = s;
    int sl = -1;
    if (s == T_PART) {
      sl = atomicAdd(count, 1);
      if (sl >= cap) sl = -1;
    }
    slot[pair] = sl;
    s_slot = sl;
  }
  __syncthreads();
  if (s_slot >= 0) {
    uint16_t *b = bits + (size_t)s_slot * 2 * MASK_WORDS;
    b[tid] = (uint16_t)wq;
    b[MASK_WORDS + tid] = (uint16_t)vis_word_k(mq, mk[r], c4);
  }
}

/* Blocks run roughly in launch order, and a tile whose tokens belong to two samples has about twice
 * the partners of the others (and is masked per element): launched last, it would run alone at
 * the end.  So tiles are launched by falling cost (longest first), every head of a tile together:
 * block b takes order[b / H] and head b % H.  A tile's cost sums its partners, 2 for a whole one
 * and 3 for one masked per element; the Hopper kernels' blocks of two query tiles (2i and 2i + 1)
 * add their tiles' costs.  One block ranks the three lists (cost, then index). */
__device__ void rank_by_cost(int *order, const int *cost, int m) {
  for (int i = threadIdx.x; i < m; i += blockDim.x) {
    int r = 0;
    for (int j = 0; j < m; j++) r += cost[j] > cost[i] || (cost[j] == cost[i] && j < i);
    order[r] = i;
  }
}
/* order: query tiles [nt], key tiles [nt], query tile pairs [np], then per 128-key block (two key
 * tiles) its active query tiles [np], which usbx_attn_plan_units reads */
__global__ void __launch_bounds__(1024) k_tile_order(int *order, const uint8_t *st, int nt) {
  extern __shared__ int cost[];   /* the same three lists */
  const int np = (nt + 1) / 2;
  int *cq = cost, *ck = cq + nt, *cq2 = ck + nt, *nkb = order + 2 * nt + np;
  for (int i = threadIdx.x; i < nt; i += blockDim.x) {
    int a = 0, b = 0;
    for (int j = 0; j < nt; j++) {
      const uint8_t sq = st[(size_t)i * nt + j], sk = st[(size_t)j * nt + i];
      a += sq == T_NONE ? 0 : sq == T_FULL ? 2 : 3;
      b += sk == T_NONE ? 0 : sk == T_FULL ? 2 : 3;
    }
    cq[i] = a;
    ck[i] = b;
  }
  for (int kb = threadIdx.x; kb < np; kb += blockDim.x) {
    int c = 0;
    for (int qt = 0; qt < nt; qt++)
      c += st[(size_t)qt * nt + 2 * kb] != T_NONE || (2 * kb + 1 < nt && st[(size_t)qt * nt + 2 * kb + 1] != T_NONE);
    nkb[kb] = c;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < np; i += blockDim.x) cq2[i] = cq[2 * i] + (2 * i + 1 < nt ? cq[2 * i + 1] : 0);
  __syncthreads();
  rank_by_cost(order, cq, nt);
  rank_by_cost(order + nt, ck, nt);
  rank_by_cost(order + 2 * nt, cq2, np);
}

/* The one-kernel Hopper backward (k_fa_bwd_tma) runs units: up to `chunk` consecutive entries of a
 * 128-key block's list of active query tiles, planned on the host (usbx_attn_plan_units). */
constexpr int UNIT_SHIFT = USBX_ATTN_UNIT_SHIFT;

/* warp-wide: the lanes with act append their e to list[c...] in lane order; returns the new count */
__device__ __forceinline__ int warp_append(int *list, int c, bool act, int e, int lane) {
  const unsigned b = __ballot_sync(0xffffffffu, act);
  if (act) list[c + __popc(b & ((1u << lane) - 1u))] = e;
  return c + __popc(b);
}

/* a block's work list: warp 0 appends, in order of j < n, the entries entry_of(j, act) whose act it
 * sets; returns their count (all threads, after a block barrier).  The three tile lists below differ
 * only in their entries. */
template <typename EntryOf>
__device__ __forceinline__ int build_list(int *list, int n, EntryOf entry_of) {
  __shared__ int count;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp == 0) {
    int c = 0;
    for (int base = 0; base < n; base += 32) {
      const int j = base + lane;
      bool act = false;
      const int e = j < n ? entry_of(j, act) : 0;
      c = warp_append(list, c, act, e, lane);
    }
    if (lane == 0) count = c;
  }
  __syncthreads();
  return count;
}

/* the non-empty entries of nt statuses st[j·stride] as j | FULL_BIT (all visible), in order;
 * returns their count (all threads) */
__device__ int active_tiles(int *list, const uint8_t *st, size_t stride, int nt) {
  return build_list(list, nt, [&](int j, bool &act) {
    const uint8_t s = st[(size_t)j * stride];
    act = s != T_NONE;
    return j | (s == T_FULL ? FULL_BIT : 0);
  });
}

/* TB rows of head hh from src [n, HH, d] (bf16) starting at token t0 into dst [TB][LD]; rows past
 * n and columns past d are zero */
template <int DP>
__device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *src, int HH, int hh, int t0, const FP &p) {
  /* each thread copies one 16-byte column chunk of every RPI-th row, from a running pointer (no
   * index arithmetic per chunk, no row test when the tile is whole) */
  constexpr int LD = DP + 8, CH = DP / 8, RPI = NT / CH;
  static_assert(NT % CH == 0 && TB % RPI == 0, "tile rows per thread");
  const int r0 = threadIdx.x / CH, cc = (threadIdx.x % CH) * 8;
  const bool col_ok = cc < p.d, whole = t0 + TB <= p.n;
  const size_t step = (size_t)RPI * HH * p.d;
  const bf16 *g = src + ((size_t)(t0 + r0) * HH + hh) * p.d + cc;
#pragma unroll
  for (int i = 0; i < TB / RPI; i++, g += step) {
    const int r = r0 + i * RPI;
    const bool ok = col_ok && (whole || t0 + r < p.n);
    cp_async16(dst + r * LD + cc, ok ? g : src, ok);
  }
}
__device__ __forceinline__ void load_meta(int4 *dst, int t0, const FP &p) {
  for (int r = threadIdx.x; r < TB; r += NT) {
    const int t = t0 + r;
    cp_async16(dst + r, t < p.n ? p.meta + t : p.meta, t < p.n);
  }
}

/* key tile k0 of KV head kvh into K/V buffer buf of sKV ([2][K, V][TB][LD]) and its metadata into
 * sMk[buf], as one cp.async group */
template <int DP>
__device__ __forceinline__ void load_kv_tile(bf16 *sKV, int4 *sMk, int buf, int k0, int kvh, const FP &p) {
  constexpr int LD = DP + 8;
  load_tile<DP>(sKV + 2 * buf * TB * LD, p.k, p.Hkv, kvh, k0, p);
  load_tile<DP>(sKV + (2 * buf + 1) * TB * LD, p.v, p.Hkv, kvh, k0, p);
  load_meta(sMk + buf * TB, k0, p);
  cp_commit();
}

template <int DP>
struct Smem {
  static constexpr int LD = DP + 8;
  static constexpr size_t tile = (size_t)TB * LD * sizeof(bf16);
  static size_t fwd(int nt) { return 4 * tile + 3 * TB * sizeof(int4) + (size_t)nt * sizeof(int); }
  static size_t bwd(int nt) { return 6 * tile + 3 * TB * sizeof(int4) + 4 * TB * sizeof(float) + (size_t)nt * sizeof(int); }
};

/* 3 blocks per multiprocessor: the Q tile is staged in K/V buffer 1 (free until the second key
 * tile) and moved to registers first */
template <int DP>
__global__ void __launch_bounds__(NT, 3) k_fa_fwd(FP p) {
  constexpr int LD = DP + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sKV = (bf16 *)smem, *sQ = sKV + 2 * TB * LD;   /* sKV: [2 buffers][K, V][TB][LD] */
  int4 *sMq = (int4 *)(sKV + 4 * TB * LD), *sMk = sMq + TB;
  int *list = (int *)(sMk + 2 * TB);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int qt = p.q_order[blockIdx.x / p.H], h = blockIdx.x % p.H, kvh = h / p.G, q0 = qt * TB;
  const int n_act = active_tiles(list, p.status + (size_t)qt * p.nt, 1, p.nt);

  load_tile<DP>(sQ, p.q, p.H, h, q0, p);
  load_meta(sMq, q0, p);
  auto load_kv = [&](int a, int buf) { load_kv_tile<DP>(sKV, sMk, buf, (list[a] & (FULL_BIT - 1)) * TB, kvh, p); };
  if (n_act > 0) load_kv(0, 0);
  else cp_commit();

  const int ra = warp * 16 + (lane >> 2), rb = ra + 8;
  float o[DP / 8][4];
#pragma unroll
  for (int j = 0; j < DP / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  uint32_t qf[DP / 16][4];
  cp_wait<0>();
  __syncthreads();
#pragma unroll
  for (int kk = 0; kk < DP / 16; kk++) ldsm_a(qf[kk], sQ + warp * 16 * LD + kk * 16, LD, lane);
  const int4 mqa = sMq[ra], mqb = sMq[rb];
  __syncthreads();   /* buffer 1 is free for the second key tile */

  for (int a = 0; a < n_act; a++) {
    const int buf = a & 1;
    if (a + 1 < n_act) { load_kv(a + 1, buf ^ 1); cp_wait<1>(); }
    else cp_wait<0>();
    __syncthreads();
    const bool full = list[a] & FULL_BIT;
    const bf16 *kb = sKV + 2 * buf * TB * LD, *vb = kb + TB * LD;
    const int4 *mk = sMk + buf * TB;
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; kk++) mma_nk<8>(s, qf[kk], kb + kk * 16, LD, lane);
    /* row maxima and sums in four partial chains each (independent instructions) */
    float pa[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, pb[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 8; j++) {
#pragma unroll
      for (int e = 0; e < 2; e++) {
        if (!full) {
          const int4 km = mk[j * 8 + 2 * (lane & 3) + e];
          if (!vis(mqa, km)) s[j][e] = -INFINITY;
          if (!vis(mqb, km)) s[j][2 + e] = -INFINITY;
        }
        pa[(j & 1) * 2 + e] = fmaxf(pa[(j & 1) * 2 + e], s[j][e]);
        pb[(j & 1) * 2 + e] = fmaxf(pb[(j & 1) * 2 + e], s[j][2 + e]);
      }
    }
    float mx_a = fmaxf(fmaxf(pa[0], pa[1]), fmaxf(pa[2], pa[3])), mx_b = fmaxf(fmaxf(pb[0], pb[1]), fmaxf(pb[2], pb[3]));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    /* running maxima of the scaled scores (log2 domain); a row with nothing visible yet keeps
     * -inf and its probabilities stay 0 */
    const float mn_a = fmaxf(m_a, mx_a * p.sl2), mn_b = fmaxf(m_b, mx_b * p.sl2);
    const float mu_a = mn_a == -INFINITY ? 0.f : mn_a, mu_b = mn_b == -INFINITY ? 0.f : mn_b;
    const float al_a = ex2(m_a - mu_a), al_b = ex2(m_b - mu_b);
    m_a = mn_a; m_b = mn_b;
#pragma unroll
    for (int k = 0; k < 4; k++) pa[k] = pb[k] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      s[j][0] = ex2(fmaf(s[j][0], p.sl2, -mu_a)); s[j][1] = ex2(fmaf(s[j][1], p.sl2, -mu_a));
      s[j][2] = ex2(fmaf(s[j][2], p.sl2, -mu_b)); s[j][3] = ex2(fmaf(s[j][3], p.sl2, -mu_b));
      pa[(j & 1) * 2] += s[j][0]; pa[(j & 1) * 2 + 1] += s[j][1];
      pb[(j & 1) * 2] += s[j][2]; pb[(j & 1) * 2 + 1] += s[j][3];
    }
    l_a = l_a * al_a + ((pa[0] + pa[1]) + (pa[2] + pa[3]));
    l_b = l_b * al_b + ((pb[0] + pb[1]) + (pb[2] + pb[3]));
    if (__any_sync(0xffffffffu, al_a != 1.f || al_b != 1.f)) {   /* a row maximum moved */
#pragma unroll
      for (int j = 0; j < DP / 8; j++) { o[j][0] *= al_a; o[j][1] *= al_a; o[j][2] *= al_b; o[j][3] *= al_b; }
    }
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      uint32_t af[4];
      acc_to_a(af, s[2 * kk], s[2 * kk + 1]);
      mma_kn<DP>(o, af, vb + kk * 16 * LD, LD, lane);
    }
    __syncthreads();
  }

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const int cb = 2 * (lane & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int t = q0 + (half ? rb : ra);
    if (t >= p.n) continue;
    const float l = half ? l_b : l_a, m = half ? m_b : m_a, inv = l > 0.f ? 1.f / l : 0.f;
    bf16 *orow = p.out + ((size_t)t * p.H + h) * p.d;
#pragma unroll
    for (int j = 0; j < DP / 8; j++) {
      const int col = j * 8 + cb;
      if (col < p.d) *(uint32_t *)(orow + col) = pack_bf16(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
    }
    if ((lane & 3) == 0) p.lse[(size_t)h * p.n + t] = l > 0.f ? (m + log2f(l)) * LN2 : -INFINITY;
  }
}

/* lse (as log2) and D of TB queries of head h into smem; padding rows get 0 (their Q and dO rows
 * are zero, so they add nothing) */
__device__ __forceinline__ void load_rows_f(float *sL, float *sD, int h, int q0, const FP &p) {
  for (int r = threadIdx.x; r < TB; r += NT) {
    const int t = q0 + r;
    sL[r] = t < p.n ? p.lse_in[(size_t)h * p.n + t] * LOG2E : 0.f;
    sD[r] = t < p.n ? p.D[(size_t)h * p.n + t] : 0.f;
  }
}

template <int DP>
__global__ void __launch_bounds__(NT) k_fa_bwd_kv(FP p) {
  constexpr int LD = DP + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sK = (bf16 *)smem, *sV = sK + TB * LD, *sQ = sV + TB * LD, *sO = sQ + 2 * TB * LD;   /* sQ, sO (dO): [2][TB][LD] */
  int4 *sMk = (int4 *)(sO + 2 * TB * LD), *sMq = sMk + TB;                                /* sMq: [2][TB] */
  float *sL = (float *)(sMq + 2 * TB), *sD = sL + 2 * TB;                                  /* [2][TB] each */
  int *list = (int *)(sD + 2 * TB);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int kt = p.k_order[blockIdx.x / p.H], h = blockIdx.x % p.H, kvh = h / p.G, k0 = kt * TB;
  const int items = active_tiles(list, p.status + kt, (size_t)p.nt, p.nt);   /* item i: query tile list[i] */

  load_tile<DP>(sK, p.k, p.Hkv, kvh, k0, p);
  load_tile<DP>(sV, p.v, p.Hkv, kvh, k0, p);
  load_meta(sMk, k0, p);
  auto load_item = [&](int i, int buf) {
    const int q0 = (list[i] & (FULL_BIT - 1)) * TB;
    load_tile<DP>(sQ + buf * TB * LD, p.q, p.H, h, q0, p);
    load_tile<DP>(sO + buf * TB * LD, p.dob, p.H, h, q0, p);
    load_meta(sMq + buf * TB, q0, p);
    cp_commit();
    load_rows_f(sL + buf * TB, sD + buf * TB, h, q0, p);
  };
  if (items > 0) load_item(0, 0);
  else cp_commit();

  float dk[DP / 8][4], dv[DP / 8][4];
#pragma unroll
  for (int j = 0; j < DP / 8; j++)
#pragma unroll
    for (int c = 0; c < 4; c++) dk[j][c] = dv[j][c] = 0.f;
  const int key_a = warp * 16 + (lane >> 2);   /* this thread's key rows: key_a, key_a + 8 */
  int4 mka = make_int4(0, 0, 0, 0), mkb = mka;

  for (int i = 0; i < items; i++) {
    const int buf = i & 1;
    if (i + 1 < items) { load_item(i + 1, buf ^ 1); cp_wait<1>(); }
    else cp_wait<0>();
    __syncthreads();
    if (i == 0) { mka = sMk[key_a]; mkb = sMk[key_a + 8]; }
    const bool full = list[i] & FULL_BIT;
    const bf16 *qb = sQ + buf * TB * LD, *ob = sO + buf * TB * LD;
    const int4 *mq = sMq + buf * TB;
    const float *lb = sL + buf * TB, *db = sD + buf * TB;
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const int qo = half * 32;
      /* Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ: this warp's 16 keys x 32 queries */
      float s[4][4], dp[4][4];
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int c = 0; c < 4; c++) s[j][c] = dp[j][c] = 0.f;
#pragma unroll
      for (int kk = 0; kk < DP / 16; kk++) {
        uint32_t ka[4], va[4];
        ldsm_a(ka, sK + warp * 16 * LD + kk * 16, LD, lane);
        ldsm_a(va, sV + warp * 16 * LD + kk * 16, LD, lane);
        mma_nk<4>(s, ka, qb + qo * LD + kk * 16, LD, lane);
        mma_nk<4>(dp, va, ob + qo * LD + kk * 16, LD, lane);
      }
      /* Pᵀ = exp2(S·sl2 − lse2), dSᵀ = Pᵀ ∘ (dPᵀ − D); element c: key row key_a (+8 for c >= 2),
       * query column qo + j·8 + 2·(lane & 3) + (c & 1) */
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
          const int qi = qo + j * 8 + 2 * (lane & 3) + (c & 1);
          float pv = ex2(fmaf(s[j][c], p.sl2, -lb[qi]));
          if (!full && !vis(mq[qi], c < 2 ? mka : mkb)) pv = 0.f;
          s[j][c] = pv;
          dp[j][c] = pv * (dp[j][c] - db[qi]);
        }
      /* dV += Pᵀ·dO, dK += dSᵀ·Q over these 32 queries */
#pragma unroll
      for (int kq = 0; kq < 2; kq++) {
        uint32_t pa[4], sa[4];
        acc_to_a(pa, s[2 * kq], s[2 * kq + 1]);
        acc_to_a(sa, dp[2 * kq], dp[2 * kq + 1]);
        mma_kn<DP>(dv, pa, ob + (qo + kq * 16) * LD, LD, lane);
        mma_kn<DP>(dk, sa, qb + (qo + kq * 16) * LD, LD, lane);
      }
    }
    __syncthreads();
  }

  /* G = 1: straight into dk / dv (h = kvh); else this head's share into the workspace */
  float *ok = p.G > 1 ? p.part_k : p.dk, *ov = p.G > 1 ? p.part_v : p.dv;
  const int cb = 2 * (lane & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int t = k0 + key_a + half * 8;
    if (t >= p.n) continue;
    const size_t row = ((size_t)t * p.H + h) * p.d;
#pragma unroll
    for (int j = 0; j < DP / 8; j++) {
      const int col = j * 8 + cb;
      if (col >= p.d) continue;
      if (ok) *(float2 *)(ok + row + col) = make_float2(dk[j][2 * half] * p.scale, dk[j][2 * half + 1] * p.scale);
      if (ov) *(float2 *)(ov + row + col) = make_float2(dv[j][2 * half], dv[j][2 * half + 1]);
    }
  }
}

/* dk / dv [n, Hkv, d] = the G query heads' shares summed in head order */
__global__ void k_sum_heads(float *dk, float *dv, const float *part_k, const float *part_v, int n, int Hkv, int G, int d) {
  const size_t total = (size_t)n * Hkv * d, step = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const size_t t = e / ((size_t)Hkv * d), r = e - t * Hkv * d, g = r / d, c = r - g * d;
    const size_t base = (t * Hkv * G + g * G) * d + c;
    float sk = 0.f, sv = 0.f;
    for (int j = 0; j < G; j++) { sk += part_k[base + (size_t)j * d]; sv += part_v[base + (size_t)j * d]; }
    if (dk) dk[e] = sk;
    if (dv) dv[e] = sv;
  }
}

template <int DP>
__global__ void __launch_bounds__(NT) k_fa_bwd_q(FP p) {
  constexpr int LD = DP + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sQ = (bf16 *)smem, *sO = sQ + TB * LD, *sKV = sO + TB * LD;   /* sKV: [2][K, V][TB][LD] */
  int4 *sMq = (int4 *)(sKV + 4 * TB * LD), *sMk = sMq + TB;           /* sMk: [2][TB] */
  float *sL = (float *)(sMk + 2 * TB), *sD = sL + TB;
  int *list = (int *)(sD + TB);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int qt = p.q_order[blockIdx.x / p.H], h = blockIdx.x % p.H, kvh = h / p.G, q0 = qt * TB;
  const int n_act = active_tiles(list, p.status + (size_t)qt * p.nt, 1, p.nt);

  load_tile<DP>(sQ, p.q, p.H, h, q0, p);
  load_tile<DP>(sO, p.dob, p.H, h, q0, p);
  load_meta(sMq, q0, p);
  load_rows_f(sL, sD, h, q0, p);
  auto load_kv = [&](int a, int buf) { load_kv_tile<DP>(sKV, sMk, buf, (list[a] & (FULL_BIT - 1)) * TB, kvh, p); };
  if (n_act > 0) load_kv(0, 0);
  else cp_commit();

  const int ra = warp * 16 + (lane >> 2), rb = ra + 8;
  float dq[DP / 8][4];
#pragma unroll
  for (int j = 0; j < DP / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;
  uint32_t qf[DP / 16][4];
  int4 mqa = make_int4(0, 0, 0, 0), mqb = mqa;
  float l2a = 0.f, l2b = 0.f, Da = 0.f, Db = 0.f;

  for (int a = 0; a < n_act; a++) {
    const int buf = a & 1;
    if (a + 1 < n_act) { load_kv(a + 1, buf ^ 1); cp_wait<1>(); }
    else cp_wait<0>();
    __syncthreads();
    if (a == 0) {
#pragma unroll
      for (int kk = 0; kk < DP / 16; kk++) ldsm_a(qf[kk], sQ + warp * 16 * LD + kk * 16, LD, lane);
      mqa = sMq[ra]; mqb = sMq[rb];
      l2a = sL[ra]; l2b = sL[rb]; Da = sD[ra]; Db = sD[rb];
    }
    const bool full = list[a] & FULL_BIT;
    const bf16 *kb = sKV + 2 * buf * TB * LD, *vb = kb + TB * LD;
    const int4 *mk = sMk + buf * TB;
    float s[8][4], dp[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
      for (int c = 0; c < 4; c++) s[j][c] = dp[j][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; kk++) {
      uint32_t of[4];
      ldsm_a(of, sO + warp * 16 * LD + kk * 16, LD, lane);
      mma_nk<8>(s, qf[kk], kb + kk * 16, LD, lane);
      mma_nk<8>(dp, of, vb + kk * 16, LD, lane);
    }
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
      for (int c = 0; c < 4; c++) {
        const bool b = c >= 2;
        float pv = ex2(fmaf(s[j][c], p.sl2, -(b ? l2b : l2a)));
        if (!full && !vis(b ? mqb : mqa, mk[j * 8 + 2 * (lane & 3) + (c & 1)])) pv = 0.f;
        dp[j][c] = pv * (dp[j][c] - (b ? Db : Da));
      }
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      uint32_t sa[4];
      acc_to_a(sa, dp[2 * kk], dp[2 * kk + 1]);
      mma_kn<DP>(dq, sa, kb + kk * 16 * LD, LD, lane);
    }
    __syncthreads();
  }

  const int cb = 2 * (lane & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int t = q0 + (half ? rb : ra);
    if (t >= p.n) continue;
    float *row = p.dq + ((size_t)t * p.H + h) * p.d;
#pragma unroll
    for (int j = 0; j < DP / 8; j++) {
      const int col = j * 8 + cb;
      if (col < p.d) *(float2 *)(row + col) = make_float2(dq[j][2 * half] * p.scale, dq[j][2 * half + 1] * p.scale);
    }
  }
}

/* ---------------------------------------------------------------- Hopper forward (sm_90a, d = 128)
 * One block per (128 queries, query head): two consumer warpgroups, one 64-query tile each, and a
 * producer warp that brings K and V of the block's active 128-key tiles into two stages through
 * TMA and stages their metadata, as cuda_attention.cu's k_flash_tma; the tiles run through
 * wg_flash_tiles (cuda_wgmma.cuh: the warpgroups take turns).  A key tile is active for the block
 * when one of its two 64-key halves is for one of the two query tiles; per warpgroup it is then
 * hidden whole (both halves empty), taken whole (both full) or masked per element. */
constexpr int WQ = 128;                /* queries per block */
constexpr int WG_BITS = 2 * 2 * MASK_WORDS;   /* mask bits per stage (stage_key_bits), u16 */
#if USBX_WGMMA_DEVICE
/* The Hopper kernels' tile lists: an entry is a tile index | the mode of warpgroup w << (28 + 2w),
 * the mode saying how that warpgroup takes the tile (k_fa_fwd_tma, k_fa_bwd_q_tma, k_fa_bwd_tma). */
constexpr int WG_IDX = (1 << 28) - 1;
constexpr int WG_SKIP = 0, WG_WHOLE = 1, WG_MASKED = 2;   /* no partner / all visible / per element */
__device__ __forceinline__ int entry_mode_bits(int mode, int w) { return mode << (28 + 2 * w); }
__device__ __forceinline__ int entry_mode(int e, int w) { return (e >> (28 + 2 * w)) & 3; }
__device__ __forceinline__ bool entry_masked(int e) { return entry_mode(e, 0) == WG_MASKED || entry_mode(e, 1) == WG_MASKED; }

/* the block's active 128-key tiles for query tiles qt0 and qt0 + 1 (warp 0 builds the list).
 * Returns the count (all threads). */
__device__ int wg_active_tiles(int *list, const uint8_t *st, int qt0, int nt) {
  return build_list(list, (nt + 1) / 2, [&](int t, bool &act) {
    int e = t;
    for (int w = 0; w < 2; w++) {
      const int qt = qt0 + w;
      if (qt >= nt) continue;
      const uint8_t s0 = st[(size_t)qt * nt + 2 * t], s1 = 2 * t + 1 < nt ? st[(size_t)qt * nt + 2 * t + 1] : T_NONE;
      const int mode = s0 == T_NONE && s1 == T_NONE ? WG_SKIP : s0 == T_FULL && s1 == T_FULL ? WG_WHOLE : WG_MASKED;
      e |= entry_mode_bits(mode, w);
    }
    act = (e >> 28) != 0;
    return e;
  });
}

/* ops.h's rule per element of a key tile: km its keys' metadata (staged in shared memory by the
 * producer: per-element loads from global memory made a masked tile cost 2.7x a whole one, as the
 * big shared-memory carve-out leaves L1 little room), qa / qb the thread's two query rows', mode
 * the tile's for these rows (WG_SKIP hides every key) */
struct MetaMask {
  const int4 *km;
  int4 qa, qb;
  int mode;
  __device__ __forceinline__ bool active() const { return mode != WG_WHOLE; }
  __device__ __forceinline__ void visible(int col, bool &va, bool &vb) const {
    if (mode == WG_SKIP) {   /* km may not be staged */
      va = vb = false;
      return;
    }
    const int4 k = km[col];
    va = vis(qa, k);
    vb = vis(qb, k);
  }
  /* a rolled loop: the per-element rule is long, and 32 inlined copies made the forward's code
   * 60 % larger */
  __device__ __forceinline__ void bits(int lane, uint32_t &ba, uint32_t &bb) const {
    ba = bb = 0;
    if (mode == WG_SKIP) return;
#pragma unroll 1
    for (int i = 0; i < 32; i++) {
      const int4 k = km[(i >> 1) * 8 + 2 * (lane & 3) + (i & 1)];
      ba |= (uint32_t)vis(qa, k) << i;
      bb |= (uint32_t)vis(qb, k) << i;
    }
  }
};

/* the producer warp's share of staging the metadata of key tile e (a list entry; keys past n:
 * zeros, never visible), for a tile some warpgroup masks per element: for the others the
 * consumers read none, and the loads would only delay the tile */
__device__ __forceinline__ void stage_key_meta(int4 *dst, const FP &p, int e, int lane) {
  if (!entry_masked(e)) return;
  const int k0 = (e & WG_IDX) * WG_BK;
  for (int r = lane; r < WG_BK; r += 32) dst[r] = k0 + r < p.n ? p.meta[k0 + r] : make_int4(0, 0, 0, 0);
}

/* the bits of a 128-key tile for the forward: per warpgroup [2 halves][64 rows][4] u16
 * (k_status's first table), staged by the producer warp from list entry e for the warpgroups that
 * mask it per element (a whole or empty half as all ones or zeros) */
__device__ __forceinline__ void stage_key_bits(uint16_t *dst, const FP &p, int e, int qt0, int lane) {
  const int kt0 = 2 * (e & WG_IDX);
  for (int w = 0; w < 2; w++) {
    if (entry_mode(e, w) != WG_MASKED) continue;
    for (int half = 0; half < 2; half++) {
      const int kt = kt0 + half;
      const size_t pair = (size_t)(qt0 + w) * p.nt + kt;
      const uint8_t s = kt < p.nt ? p.status[pair] : T_NONE;
      uint4 v = s == T_FULL ? make_uint4(~0u, ~0u, ~0u, ~0u) : make_uint4(0, 0, 0, 0);
      if (s == T_PART) v = ((const uint4 *)(p.bits + (size_t)p.slot[pair] * 2 * MASK_WORDS))[lane];
      ((uint4 *)(dst + (2 * w + half) * MASK_WORDS))[lane] = v;
    }
  }
}
/* the forward's mask from those bits: w this warpgroup's words of the stage, r the thread's first
 * row among its 64 (the second is r + 8), mode the tile's for this warpgroup (WG_SKIP hides every
 * key: its words are not staged) */
struct BitsMask {
  const uint16_t *w;
  int r, mode;
  __device__ __forceinline__ bool active() const { return mode != WG_WHOLE; }
  __device__ __forceinline__ void bits(int lane, uint32_t &ba, uint32_t &bb) const {
    ba = bb = 0;
    if (mode == WG_SKIP) return;
    const int c4 = lane & 3;
    ba = w[r * 4 + c4] | (uint32_t)w[MASK_WORDS + r * 4 + c4] << 16;
    bb = w[(r + 8) * 4 + c4] | (uint32_t)w[MASK_WORDS + (r + 8) * 4 + c4] << 16;
  }
};

/* dQ of one key tile of WG_BK keys for this warpgroup's 64 query rows: S = Q·Kᵀ and dP = dO·Vᵀ
 * (16 wgmma from shared memory), P = 2^(S·sl2 − L) in fp32 (0 where hidden), dS = P∘(dP − D)
 * rounded to bf16, dQ += dS·K (8 wgmma, dS from registers, K read MN-major).  dq, ddo: the
 * descriptors of this warpgroup's Q and dO rows (tiles of BR rows); dk, dv: K and V K-major;
 * dkt: K MN-major. */
template <int BR>
static __device__ __forceinline__ void wg_tile_dq(float (&dq_acc)[64], uint64_t dq, uint64_t ddo, uint64_t dk, uint64_t dv,
                                                  uint64_t dkt, float sl2, float l2a, float l2b, float Da, float Db, int lane,
                                                  const MetaMask &mask) {
  float s[64], dp[64];
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < 8; kk++) {
    const uint64_t oa = (uint64_t)(((kk >> 2) * BR * 128 + (kk & 3) * 32) >> 4), ob = (uint64_t)(((kk >> 2) * WG_BK * 128 + (kk & 3) * 32) >> 4);
    wgmma_ss(s, dq + oa, dk + ob, kk > 0);
  }
#pragma unroll
  for (int kk = 0; kk < 8; kk++) {
    const uint64_t oa = (uint64_t)(((kk >> 2) * BR * 128 + (kk & 3) * 32) >> 4), ob = (uint64_t)(((kk >> 2) * WG_BK * 128 + (kk & 3) * 32) >> 4);
    wgmma_ss(dp, ddo + oa, dv + ob, kk > 0);
  }
  wg_commit();
  wg_wait<0>();
  const bool need_mask = mask.active();
  uint32_t pa[8][4];
#pragma unroll
  for (int j = 0; j < 16; j++) {
#pragma unroll
    for (int e = 0; e < 2; e++) {
      float pa_ = ex2(fmaf(s[4 * j + e], sl2, -l2a)), pb_ = ex2(fmaf(s[4 * j + 2 + e], sl2, -l2b));
      if (need_mask) {
        bool va, vb;
        mask.visible(j * 8 + 2 * (lane & 3) + e, va, vb);
        if (!va) pa_ = 0.f;
        if (!vb) pb_ = 0.f;
      }
      dp[4 * j + e] = pa_ * (dp[4 * j + e] - Da);
      dp[4 * j + 2 + e] = pb_ * (dp[4 * j + 2 + e] - Db);
    }
    if (j & 1) acc_to_a(pa[j >> 1], &dp[4 * (j - 1)], &dp[4 * j]);
  }
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < 8; kk++)   /* keys 16kk..16kk+15 */
    wgmma_rs_t(dq_acc, pa[kk], dkt + (uint64_t)((kk * 16 * 128) >> 4));
  wg_commit();
  wg_wait<0>();
}
#endif

__global__ void __launch_bounds__(384, 1) k_fa_fwd_tma(FP p, const __grid_constant__ CUtensorMap tm_k,
                                                       const __grid_constant__ CUtensorMap tm_v) {
#if USBX_WGMMA_DEVICE
  extern __shared__ unsigned char smem_raw[];
  unsigned char *base = wg_smem_base(smem_raw);
  unsigned char *sQ = base;
  uint16_t *sKB = (uint16_t *)(base + WQ * 256);                        /* [2 stages][WG_BITS] mask bits */
  unsigned char *sKV = (unsigned char *)(sKB + 2 * WG_BITS);             /* [2 stages][K, V] */
  const WgKV kv = wg_kv_at(sKV);
  int *list = (int *)(sKV + WG_KV_SMEM);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  TRACE_START();
  const int qb = p.q2_order[blockIdx.x / p.H], h = blockIdx.x % p.H, kvh = h / p.G, q0 = qb * WQ;
  for (int c = tid; c < WQ * 16; c += blockDim.x) {   /* the Q tile, swizzled; rows past n zero */
    const int rr = c >> 4, ch = c & 15, t = q0 + rr;
    const bool ok = t < p.n;
    cp_async16(sQ + swz_off(rr, ch, WQ), ok ? p.q + ((size_t)t * p.H + h) * 128 + ch * 8 : p.q, ok);
  }
  cp_commit();
  if (tid == 0) wg_kv_init(kv, 8, 32);
  const int n_act = wg_active_tiles(list, p.status, 2 * qb, p.nt);
  TRACE_COUNT(n_act);
  cp_wait<0>();
  fence_proxy_async();
  __syncthreads();

  if (warp >= 8) {              /* producer warpgroup, its registers given to the consumers: warp 8's lane 0
                                   issues the copies, the warp stages the masks' bits */
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (warp == 8) {
      const auto row_of = [&](int a) { return (list[a] & WG_IDX) * WG_BK; };
      wg_kv_produce(kv, &tm_k, &tm_v, kvh * 128, n_act, row_of, lane, [&](int a, int st) { stage_key_bits(sKB + st * WG_BITS, p, list[a], 2 * qb, lane); });
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int ra = warp * 16 + (lane >> 2), rb = ra + 8, ta = q0 + ra, tb = q0 + rb;
  WgSoftmax sm = wg_softmax_init();
  float o_acc[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o_acc[i] = 0.f;
  wg_flash_tiles<WQ>(o_acc, sm, kv, n_act, wg_desc(sQ + wg * 64 * 128, 16, 1024), p.sl2, lane, wg,
                     [&](int a, int st) { return BitsMask{sKB + st * WG_BITS + wg * 2 * MASK_WORDS, ra - 64 * wg, entry_mode(list[a], wg)}; });
  TRACE_END(wg);
  const float l_a = quad_sum(sm.l_a), l_b = quad_sum(sm.l_b);
  const int cb = 2 * (lane & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int t = half ? tb : ta;
    if (t >= p.n) continue;
    const float l = half ? l_b : l_a, m = half ? sm.m_b : sm.m_a, inv = l > 0.f ? 1.f / l : 0.f;
    bf16 *orow = p.out + ((size_t)t * p.H + h) * 128;
#pragma unroll
    for (int j = 0; j < 16; j++)
      *(uint32_t *)(orow + j * 8 + cb) = pack_bf16(o_acc[4 * j + 2 * half] * inv, o_acc[4 * j + 2 * half + 1] * inv);
    if ((lane & 3) == 0) p.lse[(size_t)h * p.n + t] = l > 0.f ? (m + log2f(l)) * LN2 : -INFINITY;
  }
#else
  __trap();   /* launched only on sm_90 devices, which run the sm_90a image */
#endif
}

/* dQ on Hopper: k_fa_bwd_q's work in k_fa_fwd_tma's layout (Q and dO tiles of 128 queries, two
 * consumer warpgroups, K and V of the active key tiles through TMA from a producer warp).  S, dP
 * and dQ take 192 accumulator registers per thread: the producer is a whole warpgroup that gives
 * its registers to the consumers (setmaxnreg: 24 against 240), as FlashAttention-3 does.  (32 against
 * 240, which leaves no register of the SM free, hung its test on an H100, 2026-11-27.) */
__global__ void __launch_bounds__(384, 1) k_fa_bwd_q_tma(FP p, const __grid_constant__ CUtensorMap tm_k,
                                                         const __grid_constant__ CUtensorMap tm_v) {
#if USBX_WGMMA_DEVICE
  constexpr uint32_t TILE = WG_KV_TILE;
  extern __shared__ unsigned char smem_raw[];
  unsigned char *base = wg_smem_base(smem_raw);
  unsigned char *sQ = base, *sO = base + WQ * 256;
  int4 *sKM = (int4 *)(sO + WQ * 256);                                  /* [2 stages][WG_BK] key metadata */
  unsigned char *sKV = (unsigned char *)(sKM + 2 * WG_BK);               /* [2 stages][K, V] */
  const WgKV kv = wg_kv_at(sKV);
  int *list = (int *)(sKV + WG_KV_SMEM);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int qb = p.q2_order[blockIdx.x / p.H], h = blockIdx.x % p.H, kvh = h / p.G, q0 = qb * WQ;
  for (int c = tid; c < WQ * 16; c += blockDim.x) {   /* Q and dO tiles, swizzled; rows past n zero */
    const int rr = c >> 4, ch = c & 15, t = q0 + rr;
    const bool ok = t < p.n;
    const size_t off = ok ? ((size_t)t * p.H + h) * 128 + ch * 8 : 0;
    cp_async16(sQ + swz_off(rr, ch, WQ), p.q + off, ok);
    cp_async16(sO + swz_off(rr, ch, WQ), p.dob + off, ok);
  }
  cp_commit();
  if (tid == 0) wg_kv_init(kv, 8, 32);
  const int n_act = wg_active_tiles(list, p.status, 2 * qb, p.nt);
  cp_wait<0>();
  fence_proxy_async();
  __syncthreads();

  if (warp >= 8) {              /* producer warpgroup: one thread issues the copies */
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (warp == 8) {          /* lane 0 issues the copies, the warp stages the keys' metadata */
      const auto row_of = [&](int a) { return (list[a] & WG_IDX) * WG_BK; };
      wg_kv_produce(kv, &tm_k, &tm_v, kvh * 128, n_act, row_of, lane, [&](int a, int st) { stage_key_meta(sKM + st * WG_BK, p, list[a], lane); });
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");   /* the consumers get the producer's registers */
  const int ra = warp * 16 + (lane >> 2), rb = ra + 8, ta = q0 + ra, tb = q0 + rb;
  const bool oka = ta < p.n, okb = tb < p.n;
  const int4 mqa = oka ? p.meta[ta] : make_int4(0, 0, 0, 0), mqb = okb ? p.meta[tb] : make_int4(0, 0, 0, 0);
  /* padding rows: Q and dO are zero, so with L = D = 0 they add nothing */
  const float l2a = oka ? p.lse_in[(size_t)h * p.n + ta] * LOG2E : 0.f, l2b = okb ? p.lse_in[(size_t)h * p.n + tb] * LOG2E : 0.f;
  const float Da = oka ? p.D[(size_t)h * p.n + ta] : 0.f, Db = okb ? p.D[(size_t)h * p.n + tb] : 0.f;
  float dq_acc[64];
#pragma unroll
  for (int i = 0; i < 64; i++) dq_acc[i] = 0.f;
  const uint64_t dq = wg_desc(sQ + wg * 64 * 128, 16, 1024), ddo = wg_desc(sO + wg * 64 * 128, 16, 1024);
  const uint64_t dk = wg_desc(sKV, 16, 1024), dkt = wg_desc(sKV, WG_BK * 128, 1024);
  for (int a = 0; a < n_act; a++) {
    const int st = a & 1, e = list[a], mode = entry_mode(e, wg);
    wg_k_acquire(kv, a);
    wg_v_acquire(kv, a);
    if (mode)
      wg_tile_dq<WQ>(dq_acc, dq, ddo, dk + ((2 * st * TILE) >> 4), dk + (((2 * st + 1) * TILE) >> 4), dkt + ((2 * st * TILE) >> 4),
                     p.sl2, l2a, l2b, Da, Db, lane, MetaMask{sKM + st * WG_BK, mqa, mqb, mode});
    wg_k_release(kv, a, lane);
    wg_v_release(kv, a, lane);
  }
  const int cb = 2 * (lane & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int t = half ? tb : ta;
    if (t >= p.n) continue;
    float *row = p.dq + ((size_t)t * p.H + h) * 128;
#pragma unroll
    for (int j = 0; j < 16; j++)
      *(float2 *)(row + j * 8 + cb) = make_float2(dq_acc[4 * j + 2 * half] * p.scale, dq_acc[4 * j + 2 * half + 1] * p.scale);
  }
#else
  __trap();
#endif
}

/* ---------------------------------------------------------------- Hopper backward in one kernel
 * FlashAttention-3's schedule at head dim 128: one block per unit (up to usbx_attn_plan_units' chunk of the
 * active query tiles of 128 keys) and query head, two consumer warpgroups of 64 keys each (one
 * classification tile: skipped, whole or masked per query tile), K and V of the block staged once,
 * and the unit's 64-query tiles of Q and dO (with their lse, D and mask bits) streamed through two
 * stages by a producer warpgroup that gives its registers away.  Per query tile a warpgroup
 * computes Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (m64n64), Pᵀ and dSᵀ in registers, dV += Pᵀ·dO and dK += dSᵀ·Q
 * (A from registers), and writes dSᵀ (bf16) to shared memory; after a barrier of the two
 * warpgroups each computes dQ = dS·K for its 64 columns of d over all 128 keys, stages it in
 * shared memory, and the TMA unit adds it into dq (fp32, zeroed first; cp.reduce.async.bulk).  At
 * the end dK and dV go the same way into dk and dv: the G query heads of a KV head and the units
 * of a key block add up there, with no pass summing the heads' shares.  Against the two-kernel
 * backward this drops the second computation of S and dP (7 products per tile pair become 5); the
 * price is that the additions come in no fixed order.  (Per-thread float2 atomics instead of the
 * TMA reductions for dQ: 2.85 against 2.52 ms at 8192 tokens, H 28/4.) */
constexpr int FB_Q = 64;                       /* queries per streamed tile: the classification's tile */
constexpr int FB_K = 128;                      /* keys per block: two classification tiles */
constexpr uint32_t FB_QT = FB_Q * 256;         /* bytes of a Q or dO tile (two 64-column halves) */
#if USBX_WGMMA_DEVICE
/* the block's query tiles with an active partner among key tiles 2·kb and 2·kb + 1 (warpgroup w's
 * keys: key tile 2·kb + w); returns the count (all threads) */
__device__ int fb_active_tiles(int *list, const uint8_t *st, int kb, int nt) {
  return build_list(list, nt, [&](int qt, bool &act) {
    int e = qt;
    for (int w = 0; w < 2; w++) {
      const int kt = 2 * kb + w;
      const uint8_t s = kt < nt ? st[(size_t)qt * nt + kt] : T_NONE;
      e |= entry_mode_bits(s == T_NONE ? WG_SKIP : s == T_FULL ? WG_WHOLE : WG_MASKED, w);
    }
    act = (e >> 28) != 0;
    return e;
  });
}
#endif

#if USBX_WGMMA_DEVICE
/* a warpgroup's m64n64 fp32 accumulators (rows 16·wi + lane / 4 (+ 8), columns 8j + 2·(lane % 4)),
 * times scale, into two TMA boxes of 64 rows x 32 fp32 at dst (128-byte swizzle), as the TMA
 * reductions into dq, dk and dv read them */
__device__ __forceinline__ void stage_f32_64x64(unsigned char *dst, const float *acc, float scale, int wi, int lane) {
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int r = wi * 16 + (lane >> 2) + half * 8;
#pragma unroll
    for (int j = 0; j < 8; j++)   /* box j / 4; 16-byte chunk 2(j % 4) + (lane % 4) / 2 of row r, swizzled */
      *(float2 *)(dst + (j >> 2) * FB_Q * 128 + r * 128 + (((2 * (j & 3) + ((lane & 3) >> 1)) ^ (r & 7)) << 4) + (lane & 1) * 8) =
          make_float2(acc[4 * j + 2 * half] * scale, acc[4 * j + 2 * half + 1] * scale);
  }
}
#endif

__global__ void __launch_bounds__(384, 1) k_fa_bwd_tma(FP p, const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
                                                       const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_o,
                                                       const __grid_constant__ CUtensorMap tm_dq, const __grid_constant__ CUtensorMap tm_dk,
                                                       const __grid_constant__ CUtensorMap tm_dv) {
#if USBX_WGMMA_DEVICE
  extern __shared__ unsigned char smem_raw[];
  unsigned char *base = wg_smem_base(smem_raw);
  unsigned char *sK = base, *sV = sK + FB_K * 256, *sQO = sV + FB_K * 256;   /* sQO: [2 stages][Q, dO] */
  unsigned char *sdS = sQO + 4 * FB_QT;                                       /* [2][FB_K keys][64 queries] bf16 */
  unsigned char *sdQ = sdS + 2 * FB_K * 128;   /* per warpgroup: its dQ share, two boxes of 64 rows x 32 fp32 */
  uint16_t *sB = (uint16_t *)(sdQ + 2 * FB_Q * 256);   /* [2 stages][2 warpgroups][MASK_WORDS] mask bits (k_status's second table) */
  float *sLD = (float *)(sB + 4 * MASK_WORDS);                                     /* [2 stages][lse·log2e, D][FB_Q] */
  uint64_t *kv_full = (uint64_t *)(sLD + 4 * FB_Q), *full = kv_full + 1, *empty = full + 2;
  int *list = (int *)(empty + 2);

  TRACE_START();
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  /* units in usbx_attn_plan_units' order: by falling size, then key block (ranked by cost alone the key blocks ran
   * 0-13 % slower at 4 samples, H 28/4, 2026-11-27 01:55: neighbouring blocks then stream the same query tiles less
   * often together) */
  const int unit = p.units[blockIdx.x / p.H], kb = unit >> UNIT_SHIFT, h = blockIdx.x % p.H, kvh = h / p.G, k0 = kb * FB_K;
  if (tid == 0) {
    mbar_init(kv_full, 1);
    for (int i = 0; i < 2; i++) { mbar_init(&full[i], 32); mbar_init(&empty[i], 8); }
    mbar_init_fence();
  }
  /* this unit's share of the block's list: entries chunk·c .. */
  const int first = (unit & ((1 << UNIT_SHIFT) - 1)) * p.chunk, n_act = min(fb_active_tiles(list, p.status, kb, p.nt) - first, p.chunk);
  list += first;
  TRACE_COUNT(n_act);

  if (wg == 2) {   /* producer warpgroup: warp 8 loads, its lane 0 issues the copies */
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (warp != 8) return;
    if (lane == 0) {
      mbar_expect_tx(kv_full, 2 * FB_K * 256);
      for (int half = 0; half < 2; half++) {
        tma_load_2d(sK + half * FB_K * 128, &tm_k, kv_full, kvh * 128 + half * 64, k0);
        tma_load_2d(sV + half * FB_K * 128, &tm_v, kv_full, kvh * 128 + half * 64, k0);
      }
    }
    for (int a = 0; a < n_act; a++) {
      const int st = a & 1, q0 = (list[a] & WG_IDX) * FB_Q;
      if (a >= 2) mbar_wait(&empty[st], ((a >> 1) - 1) & 1);
      float *L = sLD + st * 2 * FB_Q, *Dd = L + FB_Q;
      for (int r = lane; r < FB_Q; r += 32) {   /* padding rows: 0 (their Q and dO rows read as zeros) */
        const int t = q0 + r;
        const float l = t < p.n ? p.lse_in[(size_t)h * p.n + t] : 0.f;
        L[r] = l > -INFINITY ? l * LOG2E : 0.f;   /* a row that sees no key: its scores are all -inf (masked) */
        Dd[r] = t < p.n ? p.D[(size_t)h * p.n + t] : 0.f;
      }
      for (int w = 0; w < 2; w++)   /* a masked pair's bits, for the warpgroup that masks it */
        if (entry_mode(list[a], w) == WG_MASKED)
          ((uint4 *)(sB + (2 * st + w) * MASK_WORDS))[lane] =
              ((const uint4 *)(p.bits + ((size_t)p.slot[(size_t)(q0 / FB_Q) * p.nt + 2 * kb + w] * 2 + 1) * MASK_WORDS))[lane];
      if (lane == 0) {
        mbar_expect_tx(&full[st], 2 * FB_QT);
        unsigned char *sq = sQO + 2 * st * FB_QT, *so = sq + FB_QT;
        for (int half = 0; half < 2; half++) {
          tma_load_2d(sq + half * FB_Q * 128, &tm_q, &full[st], h * 128 + half * 64, q0);
          tma_load_2d(so + half * FB_Q * 128, &tm_o, &full[st], h * 128 + half * 64, q0);
        }
      } else {
        mbar_arrive(&full[st]);   /* releases this lane's lse, D and bits */
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  const int wi = warp & 3, ctid = tid & 127;
  const int ra = wg * 64 + wi * 16 + (lane >> 2), rb = ra + 8;   /* this thread's key rows in the block */
  float dk[64], dv[64];
#pragma unroll
  for (int i = 0; i < 64; i++) dk[i] = dv[i] = 0.f;
  const uint64_t dKw = wg_desc(sK + wg * 64 * 128, 16, 1024), dVw = wg_desc(sV + wg * 64 * 128, 16, 1024);
  const uint64_t dKt = wg_desc(sK + wg * FB_K * 128, FB_K * 128, 1024);   /* columns 64wg.. of K, MN-major */
  mbar_wait(kv_full, 0);

  for (int a = 0; a < n_act; a++) {
    const int st = a & 1, e = list[a], mode = entry_mode(e, wg), q0 = (e & WG_IDX) * FB_Q;
    unsigned char *sq = sQO + 2 * st * FB_QT, *so = sq + FB_QT, *ds = sdS + st * FB_K * 128;
    mbar_wait(&full[st], (a >> 1) & 1);
    if (mode) {
      uint32_t pf[4][4], sf[4][4];
      {
        float s[32], dp[32];
        const uint64_t dQk = wg_desc(sq, 16, 1024), dOk = wg_desc(so, 16, 1024);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 8; kk++)
          wgmma_ss64<0>(s, dKw + (uint64_t)(((kk >> 2) * FB_K * 128 + (kk & 3) * 32) >> 4),
                        dQk + (uint64_t)(((kk >> 2) * FB_Q * 128 + (kk & 3) * 32) >> 4), kk > 0);
#pragma unroll
        for (int kk = 0; kk < 8; kk++)
          wgmma_ss64<0>(dp, dVw + (uint64_t)(((kk >> 2) * FB_K * 128 + (kk & 3) * 32) >> 4),
                        dOk + (uint64_t)(((kk >> 2) * FB_Q * 128 + (kk & 3) * 32) >> 4), kk > 0);
        wg_commit();
        wg_wait<0>();
        /* element 4j + e (+2): key row ra (rb), query column c + e, c = 8j + 2(lane % 4) */
        const float *L = sLD + st * 2 * FB_Q, *Dd = L + FB_Q;
        if (mode == WG_MASKED) {   /* hidden scores to -inf (P = 0): bit 2j + x of the words is column c + x */
          const uint16_t *wb = sB + (2 * st + wg) * MASK_WORDS + (ra - wg * 64) * 4 + (lane & 3);
          const uint32_t ba = wb[0], bb = wb[32];   /* rows ra, rb = ra + 8 */
#pragma unroll
          for (int i = 0; i < 16; i++) {
            if (!((ba >> i) & 1)) s[4 * (i >> 1) + (i & 1)] = -INFINITY;
            if (!((bb >> i) & 1)) s[4 * (i >> 1) + 2 + (i & 1)] = -INFINITY;
          }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
          const int c = 8 * j + 2 * (lane & 3);
          const float2 l2 = *(const float2 *)(L + c), d2 = *(const float2 *)(Dd + c);
#pragma unroll
          for (int x = 0; x < 2; x++) {
            const float lq = x ? l2.y : l2.x, dd = x ? d2.y : d2.x;
            float pa = ex2(fmaf(s[4 * j + x], p.sl2, -lq)), pb = ex2(fmaf(s[4 * j + 2 + x], p.sl2, -lq));
            s[4 * j + x] = pa;
            s[4 * j + 2 + x] = pb;
            dp[4 * j + x] = pa * (dp[4 * j + x] - dd);
            dp[4 * j + 2 + x] = pb * (dp[4 * j + 2 + x] - dd);
          }
          if (j & 1) {
            acc_to_a(pf[j >> 1], &s[4 * (j - 1)], &s[4 * j]);
            acc_to_a(sf[j >> 1], &dp[4 * (j - 1)], &dp[4 * j]);
          }
        }
      }
      /* dSᵀ (bf16, as its products read it) into this warpgroup's rows: fragment register r of
       * sf[jj] is row ra (r even) or rb, query chunk 2jj + r / 2 */
#pragma unroll
      for (int jj = 0; jj < 4; jj++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
          const int row = r & 1 ? rb : ra, ch = 2 * jj + (r >> 1);
          *(uint32_t *)(ds + row * 128 + ((ch ^ (row & 7)) << 4) + (lane & 3) * 4) = sf[jj][r];
        }
      const uint64_t dOt = wg_desc(so, FB_Q * 128, 1024), dQt = wg_desc(sq, FB_Q * 128, 1024);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < 4; kk++) wgmma_rs_t(dv, pf[kk], dOt + (uint64_t)((kk * 16 * 128) >> 4));
#pragma unroll
      for (int kk = 0; kk < 4; kk++) wgmma_rs_t(dk, sf[kk], dQt + (uint64_t)((kk * 16 * 128) >> 4));
      wg_commit();
    } else {   /* no partner here: zeros for this warpgroup's rows of dSᵀ */
      uint4 *z = (uint4 *)(ds + wg * 64 * 128) + ctid * 4;
#pragma unroll
      for (int i = 0; i < 4; i++) z[i] = make_uint4(0, 0, 0, 0);
    }
    fence_proxy_async();
    asm volatile("bar.sync 1, 256;\n" ::: "memory");   /* both warpgroups' dSᵀ written */
    float dqa[32];
#pragma unroll
    for (int i = 0; i < 32; i++) dqa[i] = 0.f;
    const uint64_t dsd = wg_desc(ds, FB_K * 128, 1024);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 8; kk++)   /* keys 16kk..16kk+15 */
      wgmma_ss64<1>(dqa, dsd + (uint64_t)((kk * 16 * 128) >> 4), dKt + (uint64_t)((kk * 16 * 128) >> 4), kk > 0);
    wg_commit();
    wg_wait<0>();
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[st]);
    {   /* dQ through shared memory, added into dq by the TMA unit (one reduction per 32 columns) */
      unsigned char *stg = sdQ + wg * FB_Q * 256;
      if (ctid == 0) bulk_wait_read0();   /* the previous tile's reductions have read it */
      asm volatile("bar.sync %0, 128;\n" ::"r"(2 + wg) : "memory");
      stage_f32_64x64(stg, dqa, p.scale, wi, lane);
      fence_proxy_async();
      asm volatile("bar.sync %0, 128;\n" ::"r"(2 + wg) : "memory");
      if (ctid == 0) {   /* rows past n are outside the tensor map: left alone */
        tma_reduce_add_2d(&tm_dq, stg, h * 128 + wg * 64, q0);
        tma_reduce_add_2d(&tm_dq, stg + FB_Q * 128, h * 128 + wg * 64 + 32, q0);
        bulk_commit();
      }
    }
  }
  if (ctid == 0) bulk_wait0();
  TRACE_END(wg);

  /* dK and dV added into dk / dv (zeroed first) by the TMA unit: the G query heads of a KV head and
   * the units of a key block each add their share.  Every tile's products are done (the loop ended
   * after its last dQ product), but the other warpgroup may still read K: both first. */
  asm volatile("bar.sync 1, 256;\n" ::: "memory");
  constexpr int BOX = FB_Q * 128;        /* 64 rows x 32 fp32 */
  unsigned char *stg = wg ? sQO : sK;    /* 64 KB each: dK's four boxes, then dV's */
#pragma unroll
  for (int half = 0; half < 2; half++) {   /* columns 64·half .. */
    stage_f32_64x64(stg + 2 * half * BOX, dk + 32 * half, p.scale, wi, lane);
    stage_f32_64x64(stg + (4 + 2 * half) * BOX, dv + 32 * half, 1.f, wi, lane);
  }
  fence_proxy_async();
  asm volatile("bar.sync %0, 128;\n" ::"r"(2 + wg) : "memory");
  if (ctid == 0) {   /* rows past n are outside the tensor maps: left alone */
    for (int b = 0; b < 4; b++) {
      tma_reduce_add_2d(&tm_dk, stg + b * BOX, kvh * 128 + 32 * b, k0 + 64 * wg);
      tma_reduce_add_2d(&tm_dv, stg + (4 + b) * BOX, kvh * 128 + 32 * b, k0 + 64 * wg);
    }
    bulk_commit();
    bulk_wait0();
  }
#else
  __trap();
#endif
}

/* the Hopper kernels apply: an sm_90 device, head dim 128, the option on, and shared memory for
 * the tile list; the tensor maps of K and V into tk, tv (false when they cannot be made) */
bool tma_ready(usbx_cuda *c, const FP &p, size_t smem, CUtensorMap *tk, CUtensorMap *tv) {
  if (p.d != 128 || !c->opt_attn_masked_wg || c->prop.major != 9 || c->prop.minor != 0 || smem > c->prop.sharedMemPerBlockOptin) return false;
  return kv_tmap(tk, p.k, p.n, p.Hkv) && kv_tmap(tv, p.v, p.n, p.Hkv);
}
bool bwd_q_tma(usbx_cuda *c, const FP &p) {
  const size_t smem = 1024 + 2 * (size_t)WQ * 256 + 2 * WG_BK * sizeof(int4) + WG_KV_SMEM + (size_t)(p.nt + 1) / 2 * sizeof(int);
  CUtensorMap tk, tv;
  if (!tma_ready(c, p, smem, &tk, &tv)) return false;
  CUDA_CHECK(cudaFuncSetAttribute(k_fa_bwd_q_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  k_fa_bwd_q_tma<<<(unsigned)((p.n + WQ - 1) / WQ * p.H), 384, smem, c->stream>>>(p, tk, tv);
  CUDA_LAUNCHED();
  return true;
}

#ifdef USBX_ATTN_TRACE
/* the trace of the launch just made into $USBX_ATTN_TRACE.<name> (each launch overwrites it):
 * block, start, end of warpgroup 0 and 1 (ns from the first start), SM, active tiles */
void trace_dump(usbx_cuda *c, const char *name, unsigned blocks) {
  const char *pre = getenv("USBX_ATTN_TRACE");
  if (!pre) return;
  CUDA_CHECK(cudaStreamSynchronize(c->stream));
  static unsigned long long h[TRACE_MAX][5];
  if (blocks > (unsigned)TRACE_MAX) blocks = TRACE_MAX;
  CUDA_CHECK(cudaMemcpyFromSymbol(h, g_trace, sizeof(h[0]) * blocks));
  unsigned long long t0 = ~0ull;
  for (unsigned b = 0; b < blocks; b++) t0 = std::min(t0, h[b][0]);
  char path[512];
  snprintf(path, sizeof path, "%s.%s", pre, name);
  FILE *f = fopen(path, "w");
  if (!f) return;
  for (unsigned b = 0; b < blocks; b++)
    fprintf(f, "%u %llu %llu %llu %llu %llu\n", b, h[b][0] - t0, h[b][1] - t0, h[b][2] - t0, h[b][3], h[b][4]);
  fclose(f);
}
#define TRACE_DUMP(c, name, blocks) trace_dump(c, name, blocks)
#else
#define TRACE_DUMP(c, name, blocks) ((void)0)
#endif

/* dK, dV and dQ by k_fa_bwd_tma; false when it does not apply (tma_ready, the option, all three
 * gradients wanted).  All three are added up by TMA reductions into zeroed fp32, in no fixed order. */
bool bwd_fused_tma(usbx_cuda *c, const FP &p) {
  if (!c->opt_attn_bwd_fused || !p.dq || !p.dk || !p.dv || (((uintptr_t)p.dq | (uintptr_t)p.dk | (uintptr_t)p.dv) & 15)) return false;
  const size_t smem = 1024 + 2 * (size_t)FB_K * 256 + 4 * (size_t)FB_QT + 2 * (size_t)FB_K * 128 + 2 * FB_Q * 256 + 4 * MASK_WORDS * sizeof(uint16_t) + 4 * FB_Q * sizeof(float) +
                      5 * 8 + (size_t)p.nt * sizeof(int);
  CUtensorMap tk, tv, tq, to, tdq, tdk, tdv;
  if (!tma_ready(c, p, smem, &tk, &tv) || !kv_tmap(&tq, p.q, p.n, p.H, FB_Q) || !kv_tmap(&to, p.dob, p.n, p.H, FB_Q) ||
      !tmap_2d(&tdq, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, p.dq, p.n, p.H * 128, 32, FB_Q) ||
      !tmap_2d(&tdk, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, p.dk, p.n, p.Hkv * 128, 32, FB_Q) ||
      !tmap_2d(&tdv, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, p.dv, p.n, p.Hkv * 128, 32, FB_Q))
    return false;
  CUDA_CHECK(cudaMemsetAsync(p.dq, 0, (size_t)p.n * p.H * 128 * sizeof(float), c->stream));
  CUDA_CHECK(cudaMemsetAsync(p.dk, 0, (size_t)p.n * p.Hkv * 128 * sizeof(float), c->stream));
  CUDA_CHECK(cudaMemsetAsync(p.dv, 0, (size_t)p.n * p.Hkv * 128 * sizeof(float), c->stream));
  if (!p.n_units) return true;   /* no visible pair */
  CUDA_CHECK(cudaFuncSetAttribute(k_fa_bwd_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  k_fa_bwd_tma<<<(unsigned)(p.n_units * p.H), 384, smem, c->stream>>>(p, tk, tv, tq, to, tdq, tdk, tdv);
  CUDA_LAUNCHED();
  TRACE_DUMP(c, "bwd", (unsigned)(p.n_units * p.H));
  return true;
}

/* false when they do not apply (tma_ready): the caller runs the mma.sync kernels */
bool fwd_tma(usbx_cuda *c, const FP &p) {
  const size_t smem = 1024 + (size_t)WQ * 256 + 2 * WG_BITS * sizeof(uint16_t) + WG_KV_SMEM + (size_t)(p.nt + 1) / 2 * sizeof(int);
  CUtensorMap tk, tv;
  if (!tma_ready(c, p, smem, &tk, &tv)) return false;
  CUDA_CHECK(cudaFuncSetAttribute(k_fa_fwd_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  k_fa_fwd_tma<<<(unsigned)((p.n + WQ - 1) / WQ * p.H), 384, smem, c->stream>>>(p, tk, tv);
  CUDA_LAUNCHED();
  TRACE_DUMP(c, "fwd", (unsigned)((p.n + WQ - 1) / WQ * p.H));
  return true;
}

bool flash_shape_ok(const usbx_attn_masked_args *a) {
  return a->n > 0 && a->n_heads > 0 && a->n_kv_heads > 0 && a->n_heads % a->n_kv_heads == 0 && a->head_dim % 8 == 0 &&
         a->head_dim > 0 && a->head_dim <= 128 && (a->n + TB - 1) / TB <= 8192;
}
bool flash_ok(const usbx_attn_masked_args *a, const void *q, const void *k, const void *v, const void *o) {
  return flash_shape_ok(a) && ((((uintptr_t)q) | ((uintptr_t)k) | ((uintptr_t)v) | ((uintptr_t)o)) & 15u) == 0;
}

/* The metadata and tile classification of a batch (kept while meta_id stays the same: the layers
 * of a batch classify the tiles once) in c->fa_meta; the masked pairs' bits in c->fa_bits.
 * classify_enqueue queues the passes and the copies of what the host needs (the masked pairs'
 * count, each key block's active query tiles) into pinned memory, then an event; classify_finish
 * waits for the event, grows the bits' table if it was short (and classifies again), plans the
 * backward's units and uploads them.  The trainer queues the classification at the start of a
 * batch (ops.h attention_masked_prepare), so the host waits while the device still has the
 * batch's first kernels to run, not with nothing queued. */
struct Layout {
  int np;
  size_t pairs;
  int4 *meta;
  int *order;
  uint8_t *st;
  int *slot, *masked, *units;
};
Layout layout(usbx_cuda *c, int n) {
  Layout L;
  const int nt = (n + TB - 1) / TB;
  L.np = (nt + 1) / 2;
  L.pairs = (size_t)nt * nt;
  const size_t meta_b = ((size_t)n * sizeof(int4) + 255) & ~(size_t)255,
               order_b = ((size_t)(2 * nt + 2 * L.np + 5 * L.np) * sizeof(int) + 255) & ~(size_t)255,   /* orders, nkb, units (<= 5 np) */
               st_b = (L.pairs + 255) & ~(size_t)255;
  if (cu_grow(&c->fa_meta, &c->fa_meta_bytes, meta_b + order_b + st_b + L.pairs * sizeof(int) + sizeof(int))) c->fa_meta_id = 0;
  L.meta = (int4 *)c->fa_meta;
  L.order = (int *)((char *)c->fa_meta + meta_b);
  L.st = (uint8_t *)c->fa_meta + meta_b + order_b;
  L.slot = (int *)(L.st + st_b);
  L.masked = L.slot + L.pairs;
  L.units = L.order + 2 * nt + 2 * L.np;
  return L;
}
/* the classification passes, and the copy of the masked count and nkb into c->fa_host */
void classify_passes(usbx_cuda *c, const usbx_attn_masked_args *a, const Layout &L) {
  const int n = a->n, nt = (n + TB - 1) / TB;
  CUDA_CHECK(cudaMemsetAsync(L.masked, 0, sizeof(int), c->stream));
  k_status<<<dim3(nt, nt), 256, 0, c->stream>>>(L.st, L.slot, (uint16_t *)c->fa_bits, L.masked, (int)std::min<size_t>(c->fa_bits_bytes / MASK_BYTES, INT_MAX),
                                                 L.meta, n, nt);
  CUDA_LAUNCHED();
  /* 16 bytes more than the counts: ptxas loads the remainder loop's counts as one 12-byte
   * access, which compute-sanitizer (memcheck) flagged as a read past the end at nt = 1 */
  const size_t smem = (size_t)(2 * nt + L.np) * sizeof(int) + 16;
  if (smem > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(k_tile_order, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  k_tile_order<<<1, 1024, smem, c->stream>>>(L.order, L.st, nt);
  CUDA_LAUNCHED();
  CUDA_CHECK(cudaMemcpyAsync(c->fa_host, L.masked, sizeof(int), cudaMemcpyDeviceToHost, c->stream));
  CUDA_CHECK(cudaMemcpyAsync(c->fa_host + 1, L.order + 2 * nt + L.np, (size_t)L.np * sizeof(int), cudaMemcpyDeviceToHost, c->stream));
}
void classify_enqueue(usbx_cuda *c, const usbx_attn_masked_args *a) {
  const Layout L = layout(c, a->n);
  const int nt = (a->n + TB - 1) / TB;
  /* pinned room for the count, nkb, then the units (<= 5 np) */
  const size_t host_n = 1 + 6 * (size_t)L.np;
  if (host_n > c->fa_host_n) {
    if (c->fa_host) CUDA_CHECK(cudaFreeHost(c->fa_host));   /* synchronising: no copy pending */
    CUDA_CHECK(cudaMallocHost(&c->fa_host, host_n * sizeof(int)));
    c->fa_host_n = host_n;
  }
  if (!c->fa_ev) CUDA_CHECK(cudaEventCreateWithFlags(&c->fa_ev, cudaEventDisableTiming));
  if (!c->fa_bits_bytes)   /* room for a few masked pairs per tile row (the trainer's batches need ~4) */
    cu_grow(&c->fa_bits, &c->fa_bits_bytes, (8 * (size_t)nt + 256) * MASK_BYTES);
  k_meta<<<(a->n + 255) / 256, 256, 0, c->stream>>>(L.meta, a->order, a->sample, a->split, a->mode, a->n);
  CUDA_LAUNCHED();
  classify_passes(c, a, L);
  CUDA_CHECK(cudaEventRecord(c->fa_ev, c->stream));
  c->fa_meta_id = 0;   /* the buffers now hold the pending batch's */
  c->fa_pending_id = a->meta_id;
}
void classify_finish(usbx_cuda *c, const usbx_attn_masked_args *a) {
  const Layout L = layout(c, a->n);
  CUDA_CHECK(cudaEventSynchronize(c->fa_ev));
  const size_t masked = (size_t)c->fa_host[0];
  if (masked * MASK_BYTES > c->fa_bits_bytes) {   /* the bits' table was short: a bigger one, and again */
    cu_grow(&c->fa_bits, &c->fa_bits_bytes, (masked + masked / 4) * MASK_BYTES);
    classify_passes(c, a, L);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
  }
  /* into the pinned buffer's tail: the previous batch's upload from there is done (stream order:
   * it came before this classification, whose event was waited for) */
  int *hu = c->fa_host + 1 + L.np;
  c->fa_chunk = usbx_attn_plan_units(c->fa_host + 1, L.np, a->n_heads, c->prop.multiProcessorCount, hu, &c->fa_units);
  if (c->fa_units) CUDA_CHECK(cudaMemcpyAsync(L.units, hu, (size_t)c->fa_units * sizeof(int), cudaMemcpyHostToDevice, c->stream));
  c->fa_meta_id = a->meta_id;
  c->fa_meta_H = a->n_heads;
  c->fa_pending_id = 0;
}

/* parameters, and the metadata, tile statuses and units of a's batch (classified now unless
 * attention_masked_prepare queued it); `extra` bytes of the attention workspace for the caller
 * (in *extra_p) */
FP prepare(usbx_cuda *c, const usbx_attn_masked_args *a, size_t extra, void **extra_p) {
  FP p = {};
  p.n = a->n; p.H = a->n_heads; p.Hkv = a->n_kv_heads; p.G = p.H / p.Hkv; p.d = a->head_dim;
  p.nt = (p.n + TB - 1) / TB;
  p.scale = 1.0f / sqrtf((float)p.d);
  p.sl2 = p.scale * LOG2E;
  *extra_p = extra ? cu_attn_ws(c, extra) : NULL;
  /* the units depend on H too (the layers of a batch share it) */
  if (!a->meta_id || a->meta_id != c->fa_meta_id || p.H != c->fa_meta_H) {
    if (!a->meta_id || a->meta_id != c->fa_pending_id) classify_enqueue(c, a);
    classify_finish(c, a);
  }
  const Layout L = layout(c, p.n);
  p.units = L.units; p.n_units = c->fa_units; p.chunk = c->fa_chunk;
  p.slot = L.slot; p.bits = (const uint16_t *)c->fa_bits;
  p.meta = L.meta; p.status = L.st; p.q_order = L.order; p.k_order = L.order + p.nt; p.q2_order = L.order + 2 * p.nt;
  return p;
}

template <typename K>
void launch(usbx_cuda *c, K kern, dim3 grid, size_t smem, const FP &p) {
  CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  kern<<<grid, NT, smem, c->stream>>>(p);
  CUDA_LAUNCHED();
}

template <int DP>
void fwd(usbx_cuda *c, const FP &p) {
  launch(c, k_fa_fwd<DP>, dim3(p.nt * p.H), Smem<DP>::fwd(p.nt), p);
}
/* GQA: the query heads' dK and dV shares summed into dk / dv */
void sum_heads(usbx_cuda *c, const FP &p) {
  if (p.G == 1) return;
  const size_t total = (size_t)p.n * p.Hkv * p.d;
  k_sum_heads<<<(unsigned)std::min<size_t>((total + 255) / 256, 65535u * 8), 256, 0, c->stream>>>(p.dk, p.dv, p.part_k, p.part_v, p.n, p.Hkv,
                                                                                               p.G, p.d);
  CUDA_LAUNCHED();
}
template <int DP>
void bwd(usbx_cuda *c, FP p) {
  if (DP == 128 && bwd_fused_tma(c, p)) return;
  if (p.dk || p.dv) {
    if (p.G > 1) {   /* the heads' dK and dV shares (fa_parts, grown on demand) */
      const size_t nq = (size_t)p.n * p.H * p.d, bytes = 2 * nq * sizeof(float);
      cu_grow(&c->fa_parts, &c->fa_parts_bytes, bytes);
      p.part_k = (float *)c->fa_parts;
      p.part_v = p.part_k + nq;
    }
    launch(c, k_fa_bwd_kv<DP>, dim3(p.nt * p.H), Smem<DP>::bwd(p.nt), p);
    sum_heads(c, p);
  }
  if (p.dq && !(DP == 128 && bwd_q_tma(c, p))) launch(c, k_fa_bwd_q<DP>, dim3(p.nt * p.H), Smem<DP>::bwd(p.nt), p);
}

}  // namespace

void cu_attn_masked_prepare_flash(usbx_backend *be, const usbx_attn_masked_args *a) {
  usbx_cuda *c = CU(be);
  if (!c->opt_attn_masked_flash || !a->meta_id || a->meta_id == c->fa_meta_id || a->meta_id == c->fa_pending_id ||
      !flash_shape_ok(a))
    return;
  classify_enqueue(c, a);
}

bool cu_attn_masked_fwd_flash(usbx_backend *be, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                              const usbx_attn_masked_args *a) {
  if (!flash_ok(a, q, k, v, out)) return false;
  usbx_cuda *c = CU(be);
  void *unused;
  FP p = prepare(c, a, 0, &unused);
  p.q = q; p.k = k; p.v = v; p.out = out; p.lse = lse;
  if (p.d <= 32) fwd<32>(c, p);
  else if (p.d <= 64) fwd<64>(c, p);
  else if (!fwd_tma(c, p)) fwd<128>(c, p);
  return true;
}

bool cu_attn_masked_bwd_flash(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k,
                              const bf16 *v, const bf16 *out, const float *lse, float *D, const usbx_attn_masked_args *a) {
  if (!flash_ok(a, q, k, v, NULL) || ((((uintptr_t)dq) | ((uintptr_t)dk) | ((uintptr_t)dv)) & 7u)) return false;
  usbx_cuda *c = CU(be);
  const size_t nq = (size_t)a->n * a->n_heads * a->head_dim;
  void *ws;   /* dO in bf16 */
  FP p = prepare(c, a, nq * sizeof(bf16), &ws);
  bf16 *dob = (bf16 *)ws;
  cu_attn_D(c, D, dob, dout, out, a->n, a->n_heads, a->head_dim);
  p.q = q; p.k = k; p.v = v; p.dob = dob; p.lse_in = lse; p.D = D;
  p.dq = dq; p.dk = dk; p.dv = dv;
  if (p.d <= 32) bwd<32>(c, p);
  else if (p.d <= 64) bwd<64>(c, p);
  else bwd<128>(c, p);
  return true;
}
