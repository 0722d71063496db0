/* cuda_gate_up.cu — the MLP's gate|up product with SiLU·up in its epilogue, for inference on
 * sm_90 (ops.h gate_up_silu):  act[T,F] (bf16) = silu(x·Wgᵀ) * (x·Wuᵀ), fp32 accumulation, one
 * rounding at the end: the values of matmul (f32) + silu_mul up to the order of the sums, without
 * writing the [T, 2F] f32 product to memory and reading it back (2.5 GB per layer of a two-branch
 * 1024² sampling pass at the 7B-MoT shape).
 *
 * A persistent kernel of one block per SM: a producer warp feeds a ring of GU_STAGES stages by TMA,
 * each holding 64 columns of K of a 128-row tile of x and of the 128 gate rows and the 128 up rows
 * of W for one 128-column tile of act (128-byte swizzle, the layout the descriptors read); two
 * consumer warpgroups each run 64 rows x 256 columns (gate | up) as wgmma m64n256k16 and release a
 * stage as soon as its products are done.  Each thread then holds the gate and the up value of the
 * same (row, column) in its accumulators (columns c and c + 128), so the epilogue is thread-local.
 * (The trainer keeps gate and up for its backward and runs matmul_mm twice + silu_mul_mm: a version
 * of this kernel writing them too was slower with stores from registers, and with staged TMA stores
 * needed more registers than a consumer has; benchmark/RESULTS.md, 2026-11-27.) */
#include "cuda_common.cuh"
#include "cuda_wgmma.cuh"

#define GU_BM 128                                  /* rows of x per tile (64 per consumer warpgroup) */
#define GU_BN 128                                  /* columns of act per tile: 128 gate + 128 up rows of W */
#define GU_BK 64                                   /* K per stage: one 128-byte swizzle row */
#define GU_STAGES 4
#define GU_A_BYTES (GU_BM * GU_BK * 2)
#define GU_B_BYTES (2 * GU_BN * GU_BK * 2)
#define GU_STAGE (GU_A_BYTES + GU_B_BYTES)
#define GU_OUT_BYTES (64 * GU_BN * 2)                 /* a consumer warpgroup's 64 x 128 bf16 output, staged for TMA */
#define GU_SMEM (1024 + GU_STAGES * GU_STAGE + 2 * GU_OUT_BYTES + 2 * GU_STAGES * 8)
#define GU_GROUP 16                                /* row tiles per group of the tile order (gu_tile) */

struct GuP {
  bf16 *act;
  int M, F, K;
};

/* tile t -> (row tile mt, column tile nt): groups of GU_GROUP row tiles, the row tile fastest within
 * a group, so the 132 blocks running at one time read ~16 row tiles of x and ~8 column tiles of W,
 * which stay in L2 (row tile fastest over all of an 8192-row x had every wave read its 59 MB) */
static __device__ __forceinline__ void gu_tile(int t, int n_mt, int n_nt, int &mt, int &nt) {
  const int g = t / (GU_GROUP * n_nt), first = g * GU_GROUP, rows = min(GU_GROUP, n_mt - first), r = t - g * GU_GROUP * n_nt;
  mt = first + r % rows;
  nt = r / rows;
}

__global__ void __launch_bounds__(384, 1) k_gate_up_silu(GuP p, const __grid_constant__ CUtensorMap tm_x,
                                                         const __grid_constant__ CUtensorMap tm_wg,
                                                         const __grid_constant__ CUtensorMap tm_wu,
                                                         const __grid_constant__ CUtensorMap tm_act) {
#if USBX_WGMMA_DEVICE
  extern __shared__ unsigned char smem_raw[];
  unsigned char *base = wg_smem_base(smem_raw);
  unsigned char *out_stage = base + GU_STAGES * GU_STAGE;
  uint64_t *full = (uint64_t *)(out_stage + 2 * GU_OUT_BYTES), *empty = full + GU_STAGES;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int n_mt = (p.M + GU_BM - 1) / GU_BM, n_nt = p.F / GU_BN, n_tiles = n_mt * n_nt, nk = (p.K + GU_BK - 1) / GU_BK;
  if (tid == 0) {
    for (int s = 0; s < GU_STAGES; s++) { mbar_init(&full[s], 1); mbar_init(&empty[s], 8); }
    mbar_init_fence();
  }
  __syncthreads();

  if (warp >= 8) {   /* producer warpgroup: one thread issues the copies, the rest give their registers away */
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (warp == 8 && lane == 0) {
      unsigned it = 0;
      for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
        int mt, nt;
        gu_tile(t, n_mt, n_nt, mt, nt);
        const int row = mt * GU_BM, col = nt * GU_BN;
        for (int kb = 0; kb < nk; kb++, it++) {
          const int s = it % GU_STAGES;
          if (it >= GU_STAGES) mbar_wait(&empty[s], (it / GU_STAGES - 1) & 1);
          unsigned char *st = base + s * GU_STAGE;
          mbar_expect_tx(&full[s], GU_STAGE);
          tma_load_2d(st, &tm_x, &full[s], kb * GU_BK, row);
          tma_load_2d(st + GU_A_BYTES, &tm_wg, &full[s], kb * GU_BK, col);
          tma_load_2d(st + GU_A_BYTES + GU_BN * GU_BK * 2, &tm_wu, &full[s], kb * GU_BK, col);
        }
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int wg = warp >> 2, wt = tid & 127;
  const uint64_t d0 = wg_desc(base, 16, 1024);
  const auto release = [&](unsigned it) {
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[it % GU_STAGES]);
  };
  unsigned it = 0;
  for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
    int mt, nt;
    gu_tile(t, n_mt, n_nt, mt, nt);
    const int row0 = mt * GU_BM, col0 = nt * GU_BN;
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    for (int kb = 0; kb < nk; kb++, it++) {
      const int s = it % GU_STAGES;
      mbar_wait(&full[s], (it / GU_STAGES) & 1);
      const uint64_t da = d0 + (uint64_t)((s * GU_STAGE + wg * 64 * 128) >> 4), db = d0 + (uint64_t)((s * GU_STAGE + GU_A_BYTES) >> 4);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < GU_BK / 16; kk++)   /* 16 columns of K: 32 bytes into the swizzled rows */
        wgmma_ss256(acc, da + (uint64_t)((kk * 32) >> 4), db + (uint64_t)((kk * 32) >> 4), 1);
      wg_commit();
      wg_wait<1>();                /* the previous stage's products are done: hand it back */
      if (kb > 0) release(it - 1);
    }
    wg_wait<0>();
    release(it - 1);
    /* thread: rows rr and rr + 8 of the warp's 16; columns 8j + 2(lane % 4) + e, gate in acc[4j..],
     * up 128 columns on (acc[64 + 4j..]).  A 64 x 128 output goes through this warpgroup's staging
     * buffer (two 128-byte-swizzled boxes of 64 columns: conflict-free stores) to a TMA store, which
     * runs on while the next tile's products do. */
    const int rr = (warp & 3) * 16 + (lane >> 2);
    unsigned char *stg = out_stage + wg * GU_OUT_BYTES + rr * 128 + 4 * (lane & 3);   /* swz_off's terms of this thread */
    const uint32_t sw = (uint32_t)(rr & 7) << 4;                                   /* rows rr and rr + 8 swizzle alike */
    if (wt == 0) bulk_wait_read0();   /* the previous tile's store has read the staging buffer */
    named_bar_sync(1 + wg, 128);
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const float *g = &acc[4 * j + 2 * h], *u = &acc[64 + 4 * j + 2 * h];
        *(uint32_t *)(stg + (j >> 3) * (GU_OUT_BYTES / 2) + h * 1024 + (((j & 7) << 4) ^ sw)) =
            pack_bf16(silu_f(g[0]) * u[0], silu_f(g[1]) * u[1]);
      }
    fence_proxy_async();
    named_bar_sync(1 + wg, 128);
    if (wt == 0) {
      tma_store_2d(&tm_act, out_stage + wg * GU_OUT_BYTES, col0, row0 + wg * 64);
      tma_store_2d(&tm_act, out_stage + wg * GU_OUT_BYTES + GU_OUT_BYTES / 2, col0 + 64, row0 + wg * 64);
      bulk_commit();
    }
  }
  if (wt == 0) bulk_wait0();   /* the last stores are done before the block's shared memory goes */
#else
  __trap();
#endif
}

bool cu_gate_up_silu(usbx_backend *be, void *act, const void *x, const void *wg, const void *wu, int T, int F, int K) {
  usbx_cuda *c = CU(be);
  const uintptr_t ptrs = (uintptr_t)act | (uintptr_t)x | (uintptr_t)wg | (uintptr_t)wu;
  if (!c->opt_gate_up_fused || c->prop.major != 9 || T < GU_BM || F < GU_BN || F % GU_BN || K < 1 || K % 8 || (ptrs & 15u))
    return false;
  const CUtensorMapDataType B16 = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  CUtensorMap tx, tg, tu, ta;
  if (!tmap_2d(&tx, B16, 2, x, T, K, GU_BK, GU_BM) || !tmap_2d(&tg, B16, 2, wg, F, K, GU_BK, GU_BN) ||
      !tmap_2d(&tu, B16, 2, wu, F, K, GU_BK, GU_BN) || !tmap_2d(&ta, B16, 2, act, T, F, 64, 64))
    return false;
  static bool attr_set[64];
  if (c->device < 64 && !attr_set[c->device]) {
    CUDA_CHECK(cudaFuncSetAttribute(k_gate_up_silu, cudaFuncAttributeMaxDynamicSharedMemorySize, GU_SMEM));
    attr_set[c->device] = true;
  }
  const long tiles = (long)((T + GU_BM - 1) / GU_BM) * (F / GU_BN);
  const int grid = (int)(tiles < c->prop.multiProcessorCount ? tiles : c->prop.multiProcessorCount);
  GuP p = {(bf16 *)act, T, F, K};
  k_gate_up_silu<<<grid, 384, GU_SMEM, c->stream>>>(p, tx, tg, tu, ta);
  CUDA_LAUNCHED();
  return true;
}
