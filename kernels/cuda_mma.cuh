/* cuda_mma.cuh — the warp-level tensor-core pieces shared by the flash attention kernels
 * (cuda_attention.cu, cuda_attn_flash.cu): cp.async staging, ldmatrix, mma.sync m16n8k16 bf16
 * with fp32 accumulation, bf16 packing and ex2. */
#ifndef USBX_CUDA_MMA_CUH
#define USBX_CUDA_MMA_CUH
#include "cuda_common.cuh"

static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
static __device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

static __device__ __forceinline__ void ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const void *p) {
  unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(s));
}
static __device__ __forceinline__ void ldsm_x4_t(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const void *p) {
  unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(s));
}
static __device__ __forceinline__ void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return (uint32_t)f32_to_bf16_bits(lo) | ((uint32_t)f32_to_bf16_bits(hi) << 16);
}
/* P (finite, in [0, 1]) to bf16 pairs: one cvt.rn.bf16x2.f32, same rounding (RNE) */
static __device__ __forceinline__ uint32_t pack_bf16_fast(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *(uint32_t *)&h;
}
static __device__ __forceinline__ float ex2(float x) {   /* 2^x, flush-to-zero; ex2(-inf) = 0 */
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}


/* a fragment row's value summed over the quad of threads that hold the row */
static __device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
/* Fragments of one warp's m16n8k16 products from row-major bf16 tiles in shared memory (row
 * stride ld elements; s points at the tile's first row and k column):
 *   ldsm_a   A (16 rows x 16 k) from a [row][k] tile;
 *   ldsm_b   B of two n8 tiles (16 n rows) from an [n][k] tile (Kᵀ for Q·Kᵀ);
 *   ldsm_bt  B of two n8 tiles (16 n columns) from a [k][n] tile (V for P·V), transposed. */
static __device__ __forceinline__ void ldsm_a(uint32_t *a, const bf16 *s, int ld, int lane) {
  ldsm_x4(a[0], a[1], a[2], a[3], s + (lane & 15) * ld + (lane >> 4) * 8);
}
static __device__ __forceinline__ void ldsm_b(uint32_t &b0, uint32_t &b1, uint32_t &b2, uint32_t &b3, const bf16 *s, int ld, int lane) {
  ldsm_x4(b0, b1, b2, b3, s + ((lane & 7) + ((lane >> 4) << 3)) * ld + ((lane >> 3) & 1) * 8);
}
static __device__ __forceinline__ void ldsm_bt(uint32_t &b0, uint32_t &b1, uint32_t &b2, uint32_t &b3, const bf16 *s, int ld, int lane) {
  ldsm_x4_t(b0, b1, b2, b3, s + ((lane & 7) + (((lane >> 3) & 1) << 3)) * ld + ((lane >> 4) << 3));
}
/* the A fragment (16 rows x 16 k) of two m16n8 accumulator tiles (k 0-7, k 8-15), in bf16 */
static __device__ __forceinline__ void acc_to_a(uint32_t *a, const float *c0, const float *c1) {
  a[0] = pack_bf16_fast(c0[0], c0[1]);
  a[1] = pack_bf16_fast(c0[2], c0[3]);
  a[2] = pack_bf16_fast(c1[0], c1[1]);
  a[3] = pack_bf16_fast(c1[2], c1[3]);
}
/* acc[NJ][4] += a · Bᵀ over one k16 slice, B the NJ·8 rows of an [n][k] tile (S += Q·Kᵀ) */
template <int NJ>
static __device__ __forceinline__ void mma_nk(float (*acc)[4], const uint32_t *a, const bf16 *s, int ld, int lane) {
#pragma unroll
  for (int jp = 0; jp < NJ / 2; jp++) {
    uint32_t b0, b1, b2, b3;
    ldsm_b(b0, b1, b2, b3, s + jp * 16 * ld, ld, lane);
    mma16816(acc[2 * jp], a, b0, b1);
    mma16816(acc[2 * jp + 1], a, b2, b3);
  }
}
/* acc[DP/8][4] += a · B, B the 16 k rows x DP columns of a [k][n] tile (O += P·V) */
template <int DP>
static __device__ __forceinline__ void mma_kn(float (*acc)[4], const uint32_t *a, const bf16 *s, int ld, int lane) {
#pragma unroll
  for (int dp = 0; dp < DP / 16; dp++) {
    uint32_t b0, b1, b2, b3;
    ldsm_bt(b0, b1, b2, b3, s + dp * 16, ld, lane);
    mma16816(acc[2 * dp], a, b0, b1);
    mma16816(acc[2 * dp + 1], a, b2, b3);
  }
}

#endif
