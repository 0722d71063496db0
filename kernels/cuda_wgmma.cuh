/* cuda_wgmma.cuh — Hopper (sm_90a) warpgroup matrix products for the flash attention kernels and the
 * MLP's gate|up kernel: shared-memory matrix descriptors for 128-byte-swizzled bf16 tiles, wgmma
 * m64n{64,128,256}k16 with fp32 accumulation (the A operand from shared memory or from registers),
 * mbarriers and TMA copies.
 *
 * Tile layout (both operands): a tile of R rows x 128 bf16 columns is two halves of R rows x 64
 * columns (128 bytes per row), the second half R*128 bytes after the first; within a half the
 * 16-byte chunk c of row r sits at chunk c ^ (r % 8) (the hardware's 128-byte swizzle, which needs
 * each half 1024-byte aligned).  swz_off gives that byte offset.
 * Accumulators: a thread of warp w (of the warpgroup) holds d[4j + e] = (row 16w + lane/4,
 * column 8j + 2(lane%4) + e) and d[4j + 2 + e] = (row + 8, same column): mma.sync's m16n8
 * layout repeated over the 16 column blocks, so a 16-column slice of an accumulator is the A
 * fragment of the next product (acc_to_a). */
#ifndef USBX_CUDA_WGMMA_CUH
#define USBX_CUDA_WGMMA_CUH
#include "cuda_common.cuh"
#include "cuda_mma.cuh"
#include <cuda.h>

/* the wgmma code is compiled only into the sm_90a image; launches check the device first */
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define USBX_WGMMA_DEVICE 1
#else
#define USBX_WGMMA_DEVICE 0
#endif

static __device__ __forceinline__ uint32_t swz_off(int row, int chunk, int rows) {
  return (uint32_t)((chunk >> 3) * rows * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

/* descriptor of a 128-byte-swizzled tile at smem: lbo / sbo in bytes (sbo: the stride of 8-row
 * groups, 1024 here; lbo: for an MN-major operand, the stride of its 64-element column blocks) */
static __device__ __forceinline__ uint64_t wg_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
  return (uint64_t)((a >> 4) & 0x3FFF) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) | ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) |
         (1ull << 62);
}

#if USBX_WGMMA_DEVICE
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/* wait until at most N of this warpgroup's committed groups are still running */
template <int N>
static __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
/* cp.async writes (generic proxy) made visible to wgmma's reads (async proxy) */
static __device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

static __device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
/* mbarriers (shared memory, 8 bytes): transaction counts for TMA copies, arrivals for consumers */
static __device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
static __device__ __forceinline__ void mbar_expect_tx(uint64_t *bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
static __device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity) {
  asm volatile(
      "{\n.reg .pred P1;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(smem_u32(bar)), "r"(parity) : "memory");
}
/* one TMA box of a 2-D tensor map (coordinates innermost first) into shared memory; completion
 * is counted in bytes on bar */
static __device__ __forceinline__ void tma_load_2d(void *dst, const void *tmap, uint64_t *bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n"
      ::"r"(smem_u32(dst)), "l"((uint64_t)tmap), "r"(smem_u32(bar)), "r"(c0), "r"(c1) : "memory");
}

/* one TMA box of shared memory added into a 2-D tensor map's global memory (fp32 add in L2), as a
 * bulk group of the issuing thread */
static __device__ __forceinline__ void tma_reduce_add_2d(const void *tmap, const void *src, int c0, int c1) {
  asm volatile("cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3}], [%1];\n"
               ::"l"((uint64_t)tmap), "r"(smem_u32(src)), "r"(c0), "r"(c1) : "memory");
}
/* one TMA box of shared memory stored to a 2-D tensor map's global memory (rows past the map's end
 * are left alone), as a bulk group of the issuing thread */
static __device__ __forceinline__ void tma_store_2d(const void *tmap, const void *src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n"
               ::"l"((uint64_t)tmap), "r"(smem_u32(src)), "r"(c0), "r"(c1) : "memory");
}
static __device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/* the issuing thread's bulk groups: all have read their shared memory / all are complete */
static __device__ __forceinline__ void bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
static __device__ __forceinline__ void bulk_wait0() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

/* the 64 fp32 accumulators of an m64n128 product: their PTX operand list and their bindings */
#define WG_ACC64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
/* ... bound to d[o .. o + 63] (WG_OUT32_AT: d[o .. o + 31]) */
#define WG_OUT32_AT(d, o) \
  "+f"(d[(o) + 0]), "+f"(d[(o) + 1]), "+f"(d[(o) + 2]), "+f"(d[(o) + 3]), "+f"(d[(o) + 4]), "+f"(d[(o) + 5]), "+f"(d[(o) + 6]), "+f"(d[(o) + 7]), \
  "+f"(d[(o) + 8]), "+f"(d[(o) + 9]), "+f"(d[(o) + 10]), "+f"(d[(o) + 11]), "+f"(d[(o) + 12]), "+f"(d[(o) + 13]), "+f"(d[(o) + 14]), "+f"(d[(o) + 15]), \
  "+f"(d[(o) + 16]), "+f"(d[(o) + 17]), "+f"(d[(o) + 18]), "+f"(d[(o) + 19]), "+f"(d[(o) + 20]), "+f"(d[(o) + 21]), "+f"(d[(o) + 22]), "+f"(d[(o) + 23]), \
  "+f"(d[(o) + 24]), "+f"(d[(o) + 25]), "+f"(d[(o) + 26]), "+f"(d[(o) + 27]), "+f"(d[(o) + 28]), "+f"(d[(o) + 29]), "+f"(d[(o) + 30]), "+f"(d[(o) + 31])
#define WG_OUT64_AT(d, o) WG_OUT32_AT(d, o), WG_OUT32_AT(d, (o) + 32)
#define WG_OUT64(d) WG_OUT64_AT(d, 0)

/* d (+)= A·Bᵀ, A [64 x 16] and B [128 x 16], both K-major tiles in shared memory */
static __device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_ACC64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : WG_OUT64(d)
      : "l"(da), "l"(db), "r"(accumulate));
}
/* the 32 fp32 accumulators of an m64n64 product */
#define WG_ACC32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_OUT32(d) WG_OUT32_AT(d, 0)
/* m64n64k16 from shared memory: d (+)= A·Bᵀ with A [64 x 16] and B [64 x 16] K-major tiles (TRANS
 * 0), or d (+)= A·B with A [16 x 64] and B [16 x 64] MN-major tiles (TRANS 1: both read transposed) */
template <int TRANS>
static __device__ __forceinline__ void wgmma_ss64(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_ACC32 ", %32, %33, p, 1, 1, %35, %35;\n}\n"
      : WG_OUT32(d)
      : "l"(da), "l"(db), "r"(accumulate), "n"(TRANS));
}
/* the 128 fp32 accumulators of an m64n256 product */
#define WG_ACC128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define WG_OUT128(d) WG_OUT64_AT(d, 0), WG_OUT64_AT(d, 64)
/* d (+)= A·Bᵀ, A [64 x 16] and B [256 x 16], both K-major tiles in shared memory */
static __device__ __forceinline__ void wgmma_ss256(float (&d)[128], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " WG_ACC128 ", %128, %129, p, 1, 1, 0, 0;\n}\n"
      : WG_OUT128(d)
      : "l"(da), "l"(db), "r"(accumulate));
}
/* d += A·B, A [64 x 16] bf16 in registers (the m16n8k16 A fragment of each warp's 16 rows), B
 * [16 x 128] an MN-major tile in shared memory (rows of 128 columns, transposed on the fly) */
static __device__ __forceinline__ void wgmma_rs_t(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_ACC64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : WG_OUT64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}
#endif

/* ---------------------------------------------------------------- flash attention tiles */
#define WG_BK 128               /* keys per tile */
#define WG_KV_TILE (WG_BK * 256)           /* bytes of one K or V tile */
#define WG_KV_SMEM (4 * WG_KV_TILE + 64)   /* the K/V pipeline's two stages and their eight barriers */
/* a thread's softmax state of its two rows (fragment rows g and g+8): running maxima of the
 * scaled scores (log2 domain) and sums */
struct WgSoftmax { float m_a, m_b, l_a, l_b; };
static __host__ __device__ __forceinline__ WgSoftmax wg_softmax_init() { return {-INFINITY, -INFINITY, 0.f, 0.f}; }

#if USBX_WGMMA_DEVICE
/* The K/V pipeline of the TMA kernels (k_flash_tma, k_fa_fwd_tma, k_fa_bwd_q_tma): two stages, stage
 * st holding a K and a V tile of WG_BK rows (two 64-column halves each) at sKV + 2·st·WG_KV_TILE.
 * K and V have their own barriers (full_k[st] / full_v[st] count the bytes of the copies, empty_k /
 * empty_v the consumer warps done reading), so a warpgroup that still needs V of the previous tile
 * does not hold back the next K (wg_flash_tiles). */
struct WgKV { unsigned char *sKV; uint64_t *full_k, *full_v, *empty_k, *empty_v; };
/* the pipeline at sKV: two stages, then their barriers; what follows starts at sKV + WG_KV_SMEM */
static __device__ __forceinline__ WgKV wg_kv_at(unsigned char *sKV) {
  uint64_t *bar = (uint64_t *)(sKV + 4 * WG_KV_TILE);
  return {sKV, bar, bar + 2, bar + 4, bar + 6};
}
/* dynamic shared memory rounded up to the 1024 bytes the 128-byte swizzle's atoms need */
static __device__ __forceinline__ unsigned char *wg_smem_base(unsigned char *smem_raw) {
  return (unsigned char *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
}
/* one thread, before the block's barrier; producer_lanes: the lanes of the producer warp that run
 * wg_kv_produce (1: lane 0 alone; 32: the whole warp, staging more of each tile through `stage`) */
static __device__ __forceinline__ void wg_kv_init(const WgKV &s, unsigned consumer_warps, unsigned producer_lanes = 1) {
  for (int i = 0; i < 2; i++) {
    mbar_init(&s.full_k[i], producer_lanes); mbar_init(&s.full_v[i], 1);
    mbar_init(&s.empty_k[i], consumer_warps); mbar_init(&s.empty_v[i], consumer_warps);
  }
  mbar_init_fence();
}
/* the producer: n tiles, tile a from row row_of(a) of the maps' column col (a KV head).  Run by lane
 * 0 alone or by the whole warp (wg_kv_init's producer_lanes); each running lane first calls
 * stage(a, st) to write its share of what else the consumers read with K of tile a in stage st. */
template <typename RowOf, typename Stage>
static __device__ __forceinline__ void wg_kv_produce(const WgKV &s, const CUtensorMap *tm_k, const CUtensorMap *tm_v, int col, int n,
                                                     RowOf row_of, int lane, Stage stage) {
  constexpr uint32_t HALF = WG_KV_TILE / 2;
  for (int a = 0; a < n; a++) {
    const int st = a & 1;
    const unsigned ph = ((a >> 1) - 1) & 1;
    if (a >= 2) mbar_wait(&s.empty_k[st], ph);
    stage(a, st);
    if (lane != 0) {
      mbar_arrive(&s.full_k[st]);
      continue;
    }
    unsigned char *sk = s.sKV + 2 * st * WG_KV_TILE, *sv = sk + WG_KV_TILE;
    const int row = row_of(a);
    mbar_expect_tx(&s.full_k[st], WG_KV_TILE);
    tma_load_2d(sk, tm_k, &s.full_k[st], col, row);
    tma_load_2d(sk + HALF, tm_k, &s.full_k[st], col + 64, row);
    if (a >= 2) mbar_wait(&s.empty_v[st], ph);
    mbar_expect_tx(&s.full_v[st], WG_KV_TILE);
    tma_load_2d(sv, tm_v, &s.full_v[st], col, row);
    tma_load_2d(sv + HALF, tm_v, &s.full_v[st], col + 64, row);
  }
}
template <typename RowOf>
static __device__ __forceinline__ void wg_kv_produce(const WgKV &s, const CUtensorMap *tm_k, const CUtensorMap *tm_v, int col, int n,
                                                     RowOf row_of) {
  wg_kv_produce(s, tm_k, tm_v, col, n, row_of, 0, [](int, int) {});
}
/* a consumer warp: wait for K (V) of tile a; after reading it, release its stage.  Every consumer
 * warp releases both of every tile, read or not (the producer counts them). */
static __device__ __forceinline__ void wg_k_acquire(const WgKV &s, int a) { mbar_wait(&s.full_k[a & 1], (a >> 1) & 1); }
static __device__ __forceinline__ void wg_v_acquire(const WgKV &s, int a) { mbar_wait(&s.full_v[a & 1], (a >> 1) & 1); }
static __device__ __forceinline__ void wg_k_release(const WgKV &s, int a, int lane) {
  __syncwarp();
  if (lane == 0) mbar_arrive(&s.empty_k[a & 1]);
}
static __device__ __forceinline__ void wg_v_release(const WgKV &s, int a, int lane) {
  __syncwarp();
  if (lane == 0) mbar_arrive(&s.empty_v[a & 1]);
}
/* named barriers 8 and 9: the two consumer warpgroups' turns at the tensor cores (wg_flash_tiles) */
static __device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
static __device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
#define WG_TURN_BAR 8

/* the online softmax of one key tile for this warpgroup: s its scores (64 rows x WG_BK keys, as
 * Q·Kᵀ left them); sc the softmax scale times log2(e); mask hides keys: mask.active() says whether
 * it applies to this tile, mask.bits(lane, ba, bb) gives the visibility of the thread's 32 columns
 * for its rows g and g + 8 (bit 2j + e: tile column 8j + 2·(lane % 4) + e).  Updates the running maxima and sums, rescales o_acc (which must hold every
 * earlier tile's P·V) and writes P in bf16 as the A fragments of P·V into pa. */
template <typename Mask>
static __device__ __forceinline__ void wg_softmax_tile(float (&s)[64], WgSoftmax &w, float (&o_acc)[64], uint32_t (&pa)[8][4], float sc,
                                                       int lane, const Mask &mask) {
  if (mask.active()) {   /* bits first (a short loop), then selects: the code stays small */
    uint32_t ba, bb;
    mask.bits(lane, ba, bb);
#pragma unroll
    for (int i = 0; i < 32; i++) {
      if (!((ba >> i) & 1)) s[4 * (i >> 1) + (i & 1)] = -INFINITY;
      if (!((bb >> i) & 1)) s[4 * (i >> 1) + 2 + (i & 1)] = -INFINITY;
    }
  }
  float ma[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, mb[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < 16; j++) {
#pragma unroll
    for (int e = 0; e < 2; e++) {
      ma[(j & 1) * 2 + e] = fmaxf(ma[(j & 1) * 2 + e], s[4 * j + e]);
      mb[(j & 1) * 2 + e] = fmaxf(mb[(j & 1) * 2 + e], s[4 * j + 2 + e]);
    }
  }
  float mx_a = fmaxf(fmaxf(ma[0], ma[1]), fmaxf(ma[2], ma[3])), mx_b = fmaxf(fmaxf(mb[0], mb[1]), fmaxf(mb[2], mb[3]));
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
  const float mn_a = fmaxf(w.m_a, mx_a * sc), mn_b = fmaxf(w.m_b, mx_b * sc);
  const float mu_a = mn_a == -INFINITY ? 0.f : mn_a, mu_b = mn_b == -INFINITY ? 0.f : mn_b;
  const float al_a = ex2(w.m_a - mu_a), al_b = ex2(w.m_b - mu_b);
  w.m_a = mn_a; w.m_b = mn_b;
  float sa[4] = {0.f, 0.f, 0.f, 0.f}, sb[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int j = 0; j < 16; j++) {
    s[4 * j] = ex2(fmaf(s[4 * j], sc, -mu_a)); s[4 * j + 1] = ex2(fmaf(s[4 * j + 1], sc, -mu_a));
    s[4 * j + 2] = ex2(fmaf(s[4 * j + 2], sc, -mu_b)); s[4 * j + 3] = ex2(fmaf(s[4 * j + 3], sc, -mu_b));
    sa[(j & 1) * 2] += s[4 * j]; sa[(j & 1) * 2 + 1] += s[4 * j + 1];
    sb[(j & 1) * 2] += s[4 * j + 2]; sb[(j & 1) * 2 + 1] += s[4 * j + 3];
    if (j & 1) acc_to_a(pa[j >> 1], &s[4 * (j - 1)], &s[4 * j]);
  }
  w.l_a = w.l_a * al_a + ((sa[0] + sa[1]) + (sa[2] + sa[3]));
  w.l_b = w.l_b * al_b + ((sb[0] + sb[1]) + (sb[2] + sb[3]));
  if (__any_sync(0xffffffffu, al_a != 1.f || al_b != 1.f)) {
#pragma unroll
    for (int j = 0; j < 16; j++) { o_acc[4 * j] *= al_a; o_acc[4 * j + 1] *= al_a; o_acc[4 * j + 2] *= al_b; o_acc[4 * j + 3] *= al_b; }
  }
}
/* S = Q·Kᵀ of one key tile into s: dq the descriptor of this warpgroup's Q rows (tile of BR rows),
 * dk of the tile's K (issued, not waited for) */
template <int BR>
static __device__ __forceinline__ void wg_issue_s(float (&s)[64], uint64_t dq, uint64_t dk) {
#pragma unroll
  for (int kk = 0; kk < 8; kk++)   /* k slice kk of d: half kk/4 of a tile, 32 bytes per slice */
    wgmma_ss(s, dq + (uint64_t)(((kk >> 2) * BR * 128 + (kk & 3) * 32) >> 4),
             dk + (uint64_t)(((kk >> 2) * WG_BK * 128 + (kk & 3) * 32) >> 4), kk > 0);
}
/* O += P·V of one key tile: dv the descriptor of its V, read MN-major (issued, not waited for) */
static __device__ __forceinline__ void wg_issue_pv(float (&o_acc)[64], const uint32_t (&pa)[8][4], uint64_t dv) {
#pragma unroll
  for (int kk = 0; kk < 8; kk++)   /* keys 16kk..16kk+15: 16 rows of 128 bytes into each half */
    wgmma_rs_t(o_acc, pa[kk], dv + (uint64_t)((kk * 16 * 128) >> 4));
}

/* one key tile for this warpgroup, start to end (k_flash_wg's loop: a block-wide barrier per tile) */
template <int BR, typename Mask>
static __device__ __forceinline__ void wg_tile(float (&o_acc)[64], WgSoftmax &w, uint64_t dq, uint64_t dk, uint64_t dv,
                                               float sc, int lane, const Mask &mask) {
  float s[64];
  uint32_t pa[8][4];
  wg_fence();
  wg_issue_s<BR>(s, dq, dk);
  wg_commit();
  wg_wait<0>();
  wg_softmax_tile(s, w, o_acc, pa, sc, lane, mask);
  wg_fence();
  wg_issue_pv(o_acc, pa, dv);
  wg_commit();
  wg_wait<0>();
}

/* The key tiles of a TMA pipeline (wg_kv_produce) for warpgroup wg (0 or 1) of two, FlashAttention-3's
 * way: the tensor cores take the warpgroups in turns (named barriers WG_TURN_BAR + wg), and in its
 * turn a warpgroup issues P·V of its previous tile together with S of the next, so one warpgroup's
 * softmax runs while the other's products do.  mask_at(a, st): tile a's mask (wg_softmax_tile),
 * which hides every key of a tile that has none for this warpgroup: no product is issued under a
 * branch, which would make ptxas serialise them.  Both warpgroups run all n tiles. */
template <int BR, typename MaskAt>
static __device__ __forceinline__ void wg_flash_tiles(float (&o_acc)[64], WgSoftmax &w, const WgKV &kv, int n, uint64_t dq, float sc,
                                                      int lane, int wg, MaskAt mask_at) {
  if (n <= 0) return;
  const uint64_t dk = wg_desc(kv.sKV, 16, 1024), dv = wg_desc(kv.sKV, WG_BK * 128, 1024);
  const auto dk_at = [&](int a) { return dk + (uint64_t)((2 * (a & 1) * WG_KV_TILE) >> 4); };
  const auto dv_at = [&](int a) { return dv + (uint64_t)(((2 * (a & 1) + 1) * WG_KV_TILE) >> 4); };
  uint32_t pa[8][4];
  float s[64];
  if (wg == 1) named_bar_arrive(WG_TURN_BAR, 256);   /* warpgroup 0 goes first */
  wg_k_acquire(kv, 0);
  named_bar_sync(WG_TURN_BAR + wg, 256);
  wg_fence();
  wg_issue_s<BR>(s, dq, dk_at(0));
  wg_commit();
  if (wg == 0 || n > 1) named_bar_arrive(WG_TURN_BAR + (wg ^ 1), 256);   /* the other's turn */
  wg_wait<0>();
  wg_softmax_tile(s, w, o_acc, pa, sc, lane, mask_at(0, 0));
  wg_k_release(kv, 0, lane);
  for (int a = 1; a < n; a++) {
    wg_v_acquire(kv, a - 1);
    wg_k_acquire(kv, a);
    named_bar_sync(WG_TURN_BAR + wg, 256);
    wg_fence();
    wg_issue_pv(o_acc, pa, dv_at(a - 1));
    wg_issue_s<BR>(s, dq, dk_at(a));
    wg_commit();
    if (wg == 0 || a + 1 < n) named_bar_arrive(WG_TURN_BAR + (wg ^ 1), 256);
    wg_wait<0>();
    wg_v_release(kv, a - 1, lane);
    wg_softmax_tile(s, w, o_acc, pa, sc, lane, mask_at(a, a & 1));
    wg_k_release(kv, a, lane);
  }
  wg_v_acquire(kv, n - 1);
  wg_fence();
  wg_issue_pv(o_acc, pa, dv_at(n - 1));
  wg_commit();
  wg_wait<0>();
  wg_v_release(kv, n - 1, lane);
}

#endif

/* cuTensorMapEncodeTiled from the driver, through the runtime (no link against libcuda) */
typedef CUresult (*tmap_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *, const cuuint64_t *,
                                   const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static tmap_encode_fn tmap_encoder(void) {
  static tmap_encode_fn fn;
  static bool tried;
  if (!tried) {
    tried = true;
    void *f = NULL;
    cudaDriverEntryPointQueryResult q;
#if CUDART_VERSION >= 12050   /* the unversioned lookup is deprecated from 12.5 on */
    cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
    cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
    if (e == cudaSuccess && q == cudaDriverEntryPointSuccess)
      fn = (tmap_encode_fn)f;
    else
      (void)cudaGetLastError();
  }
  return fn;
}
/* a row-major [rows, cols] matrix of elem-byte elements as TMA boxes of box_cols x box_rows with the
 * 128-byte swizzle (box_cols·elem = 128: a box row is one swizzle row); rows past `rows` read as
 * zeros, and a store or reduction leaves them alone.  False when the driver entry point is missing */
static bool tmap_2d(CUtensorMap *m, CUtensorMapDataType dtype, int elem, const void *base, int rows, int cols, int box_cols, int box_rows) {
  tmap_encode_fn enc = tmap_encoder();
  if (!enc) return false;
  cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * elem};
  cuuint32_t box[2] = {(cuuint32_t)box_cols, (cuuint32_t)box_rows}, estr[2] = {1, 1};
  return enc(m, dtype, 2, (void *)base, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
/* a [rows, heads·128] bf16 matrix (a K or V cache; Q or dO) in boxes of 64 columns x box_rows: the
 * layout of the tiles above */
static bool kv_tmap(CUtensorMap *m, const void *base, int rows, int heads, int box_rows = WG_BK) {
  return tmap_2d(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, rows, heads * 128, 64, box_rows);
}
#endif
