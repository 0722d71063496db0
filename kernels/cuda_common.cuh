/* cuda_common.cuh — shared pieces of the CUDA backend (kernels/cuda_*.cu): error checking, the
 * backend's private state, and the launchers each .cu file exports to cuda_backend.cu. */
#ifndef USBX_CUDA_COMMON_CUH
#define USBX_CUDA_COMMON_CUH
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <stdint.h>
#include <algorithm>

/* util.h declares usbx_die with C11's _Noreturn, which nvcc's C++ front end does not know. */
#define _Noreturn [[noreturn]]
extern "C" {
#include "util.h"
#include "tensor.h"
#include "ops.h"
#include "cuda_extra.h"
}
#undef _Noreturn

/* Every CUDA / cuBLAS call goes through one of these: a failure dies with file:line and text. */
#define CUDA_CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) \
  usbx_die("cuda: %s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); } while (0)
#define CUBLAS_CHECK(call) do { cublasStatus_t s_ = (call); if (s_ != CUBLAS_STATUS_SUCCESS) \
  usbx_die("cublas: %s:%d: %s: %s", __FILE__, __LINE__, #call, cublasGetStatusString(s_)); } while (0)
/* After every kernel launch. */
#define CUDA_LAUNCHED() CUDA_CHECK(cudaGetLastError())

typedef __nv_bfloat16 bf16;

/* f32 -> bf16 round-to-nearest-even with PyTorch's NaN (0x7FC0), as usbx_f32_to_bf16. */
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
__device__ __forceinline__ bf16 f2bf(float f) { return __ushort_as_bfloat16(f32_to_bf16_bits(f)); }
__device__ __forceinline__ float bf2f(bf16 h) { return __uint_as_float(((uint32_t)__bfloat16_as_ushort(h)) << 16); }
/* a value of either storage type as f32 (kernels templated on it) */
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 h) { return bf2f(h); }
__device__ __forceinline__ float silu_f(float g) { return g / (1.f + expf(-g)); }
/* 8 bf16 (16 bytes) to f32 and back */
__device__ __forceinline__ void bf8_to_f(const uint4 &u, float *f) {
  f[0] = __uint_as_float(u.x << 16); f[1] = __uint_as_float(u.x & 0xffff0000u);
  f[2] = __uint_as_float(u.y << 16); f[3] = __uint_as_float(u.y & 0xffff0000u);
  f[4] = __uint_as_float(u.z << 16); f[5] = __uint_as_float(u.z & 0xffff0000u);
  f[6] = __uint_as_float(u.w << 16); f[7] = __uint_as_float(u.w & 0xffff0000u);
}
__device__ __forceinline__ uint4 f_to_bf8(const float *f) {
  uint4 u;
  u.x = (uint32_t)f32_to_bf16_bits(f[0]) | ((uint32_t)f32_to_bf16_bits(f[1]) << 16);
  u.y = (uint32_t)f32_to_bf16_bits(f[2]) | ((uint32_t)f32_to_bf16_bits(f[3]) << 16);
  u.z = (uint32_t)f32_to_bf16_bits(f[4]) | ((uint32_t)f32_to_bf16_bits(f[5]) << 16);
  u.w = (uint32_t)f32_to_bf16_bits(f[6]) | ((uint32_t)f32_to_bf16_bits(f[7]) << 16);
  return u;
}

/* a pointer's alignment in bytes, up to 256 (cublasLt's alignment preferences) */
static inline int ptr_align(const void *p) {
  uintptr_t u = (uintptr_t)p;
  int a = 256;
  while (a > 1 && (u & (uintptr_t)(a - 1))) a >>= 1;
  return a;
}
static inline int gemm_align(const void *d, const void *a, const void *b) { return std::min(ptr_align(d), std::min(ptr_align(a), ptr_align(b))); }
static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
/* store 4 floats to bf16 (8 bytes) or f32 (16 bytes) */
__device__ __forceinline__ void store4(void *out, bool mm, size_t i, float4 v) {
  if (mm) {
    uint2 u;
    u.x = (uint32_t)f32_to_bf16_bits(v.x) | ((uint32_t)f32_to_bf16_bits(v.y) << 16);
    u.y = (uint32_t)f32_to_bf16_bits(v.z) | ((uint32_t)f32_to_bf16_bits(v.w) << 16);
    *(uint2 *)((uint16_t *)out + i) = u;
  } else {
    *(float4 *)((float *)out + i) = v;
  }
}
/* Private state behind be->impl. */
#define USBX_CUDA_PLAN_CACHE 96
#define USBX_CUDA_TUNED_CACHE 128
/* a cublasLt product, column-major D[m,n] = op(A)·op(B) (+ C) (+ bias per row of D): its key
 * (ints only, compared with memcmp).  ab: A and B's cudaDataType_t, cd: C and D's; compute: the
 * cublasComputeType_t; acc: beta = 1 (C is read); align: the smallest pointer alignment in bytes. */
typedef struct {
  int m, n, k, lda, ldb, ldc, ta, tb, ab, cd, compute, bias, acc, align;
} usbx_gemm_key;
typedef struct {
  usbx_gemm_key key;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatmulAlgo_t algo;
  bool ok;                                         /* false: the heuristic found nothing */
  size_t ws;
} usbx_cuda_plan;
/* an algorithm chosen by timing (option gemm_tune) for a bucket of keys (the token dimension
 * rounded up: cuda_backend.cu tune_bucket), so that batches of slightly different lengths reuse it */
typedef struct {
  usbx_gemm_key bucket;
  cublasLtMatmulAlgo_t algo;
} usbx_cuda_tuned;

typedef struct {
  int device;
  cudaDeviceProp prop;
  cudaStream_t stream;      /* the current lane's (ops.h set_lane); the fields below it marked "lane" too */
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  void *workspace; size_t workspace_bytes;   /* lane */
  /* upload_convert: two pinned host chunks and two raw device chunks, events guard reuse */
  void *pinned[2]; void *raw[2]; cudaEvent_t staged[2]; size_t stage_bytes;
  /* upload on lane 0: a pinned ring of segments, an event per segment guards its reuse */
  char *ring; int ring_seg; size_t ring_off; cudaEvent_t ring_ev[4];
  /* scratch for attention split-K partials, GroupNorm and CFG sums (grown on demand) */
  void *attn_scratch; size_t attn_scratch_bytes;   /* lane */
  /* lanes: each keeps its own stream, cuBLAS workspace and scratch; the current one's are in the
   * fields above.  Lane 1 is made when first used. */
  int lane;
  struct { cudaStream_t stream; void *workspace; void *scratch; size_t scratch_bytes; } lanes[2];
  cudaEvent_t lane_ev[2];   /* recorded on lane i for a wait of the other */
  usbx_cuda_plan plans[USBX_CUDA_PLAN_CACHE]; int n_plans;
  usbx_cuda_tuned tuned[USBX_CUDA_TUNED_CACHE]; int n_tuned;
  /* options (cuda_extra.h) */
  int opt_gemv, opt_lt, opt_attn_split, opt_attn_variant;
  int opt_f32_mode;         /* matmul_f32 / attention_f32: 0 fp32, 1 TF32, 2 bf16x3 split, 3 bf16x3 at N >= 256 (cuda_extra.h) */
  int opt_attn_masked_tc;   /* attention_masked(_bwd): 1 tiled tensor-core kernels, 0 the scalar ones */
  int opt_attn_masked_gemm; /* attention_masked(_bwd): 1 sample by sample through cuBLAS when segments are given */
  int opt_attn_masked_flash; /* attention_masked(_bwd): 1 flash kernels (cuda_attn_flash.cu) where they apply */
  int opt_attn_masked_row;  /* cuBLAS path: 1 one block per L x L row in registers (softmax, P/dS), 0 warp per row */
  int opt_attn_masked_wg;   /* flash forward: 1 warpgroup MMAs fed by TMA on sm_90 at head dim 128, 0 mma.sync */
  int opt_gate_up_fused;    /* gate_up_silu: 1 the fused sm_90 kernel (cuda_gate_up.cu), 0 off (matmul + silu_mul) */
  int opt_attn_bwd_fused;   /* that Hopper path's backward: 1 dK, dV and dQ in one kernel (dQ by TMA reductions), 0 two kernels */
  int opt_rms_bwd_fused;    /* rmsnorm_bwd: 1 dx and the weight gradient's partials in one pass where dim = 512·k <= 4096, 0 two passes */
  int opt_gemm_tune;        /* bf16 products of at least this many MFLOP: algorithm chosen by timing (cu_gemm); 0 off */
  void *attn_ws; size_t attn_ws_bytes;   /* workspace of cuda_attn_gemm.cu (grown on demand) */
  /* cuda_attn_flash.cu: per-token metadata and tile statuses of the last meta_id (ops.h) */
  void *fa_meta; size_t fa_meta_bytes; uint64_t fa_meta_id;
  void *fa_bits; size_t fa_bits_bytes;   /* the visibility bits of its masked tile pairs (1 KB each) */
  void *fa_parts; size_t fa_parts_bytes;  /* k_fa_bwd_kv's per-head dK and dV shares (GQA) */
  int fa_units, fa_chunk, fa_meta_H;     /* the one-kernel backward's units and their size (usbx_attn_plan_units), for H heads */
  uint64_t fa_pending_id;                /* a classification queued by attention_masked_prepare */
  cudaEvent_t fa_ev;                     /* ... recorded after it */
  int *fa_host; size_t fa_host_n;        /* pinned: its masked count, per key block its active query tiles, the units */
  unsigned *sumsq_done;   /* cuda_train.cu: blocks of the running sumsq_acc that finished (0 between calls) */
  char name[160];
} usbx_cuda;

static inline usbx_cuda *CU(usbx_backend *be) { return (usbx_cuda *)be->impl; }

/* cuda_elementwise.cu */
void cu_convert_to_bf16(cudaStream_t s, bf16 *dst, const void *src, usbx_dtype st, size_t n);
void cu_convert_to_f32(cudaStream_t s, float *dst, const void *src, usbx_dtype st, size_t n);
void cu_add_bias(cudaStream_t s, float *y, const float *bias, int M, int N);
void cu_embed(usbx_backend *be, float *out, const void *table, const int32_t *ids, int T, int D);
void cu_rmsnorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, int rows, int dim, float eps);
void cu_layernorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, const float *b, int rows, int dim, float eps);
void cu_qk_norm_rope(usbx_backend *be, void *out, int out_stride, const float *x, const float *norm_w,
                     const int32_t *pos, int T, int heads, int d, float eps, float theta);
void cu_to_mm(usbx_backend *be, void *out, int out_stride, const float *x, int T, int cols);
void cu_silu_mul(usbx_backend *be, void *out, const float *gate, const float *up, int T, int F);
void cu_silu_mul_gu(usbx_backend *be, void *out, const void *gu, int T, int F);
void cu_silu_mul_mm(usbx_backend *be, void *out, const void *gate, const void *up, int T, int F);
void cu_gelu_tanh(usbx_backend *be, void *out, const float *x, size_t n);
void cu_add(usbx_backend *be, float *x, const float *y, size_t n);
void cu_scatter_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols);
void cu_gather_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols);
void cu_argmax(usbx_backend *be, int32_t *idx, const float *x, int rows, int n);
/* y[M,N] (+)= x[M,K]·W[N,K]ᵀ (+bias) for small M with 16-byte rows; false if it does not apply */
bool cu_gemv(cudaStream_t s, float *y, const bf16 *x, const bf16 *w, const float *bias, int M, int N, int K, bool acc);

void cu_add_row(usbx_backend *be, float *x, const float *row, int T, int D);
void cu_silu(usbx_backend *be, float *out, const float *x, size_t n);

/* cuda_vae.cu: sampler step and the autoencoder's image ops */
void cu_cfg_euler(usbx_backend *be, float *x, float *v, const float *vc, const float *vu, const float *vi, const usbx_cfg_args *a);
void cu_im2col(usbx_backend *be, void *out, const float *x, const usbx_im2col_args *a);
void cu_group_norm(usbx_backend *be, float *out, const float *x, const float *w, const float *b, int HW, int C,
                   int groups, float eps, bool silu);
void cu_upsample2x(usbx_backend *be, float *out, const float *x, int H, int W, int C);
void cu_im2col_f32(usbx_backend *be, float *out, const float *x, const usbx_im2col_args *a);
void cu_attention_f32(usbx_backend *be, float *out, const float *q, const float *k, const float *v, const usbx_attn_args *a);
/* a device buffer *buf of *cap bytes made at least `bytes` (the old contents are lost; synchronising
 * when it grows); true when it did */
bool cu_grow(void **buf, size_t *cap, size_t bytes);
/* D = op(A)·op(B) (+ C when key->acc; C may be D) (+ bias) through cublasLt with k's cached plan;
 * bf16 products of at least opt_gemm_tune MFLOP get the fastest of cublasLt's candidates, timed
 * once per bucket (usbx_cuda_tuned).  False when cublasLt offers no algorithm (the caller falls
 * back to cublasGemmEx). */
bool cu_gemm(usbx_cuda *c, const usbx_gemm_key *k, const void *A, const void *B, const void *C, void *D, const float *bias);
/* whether a bf16 product of these dimensions is timed (then cu_gemm beats cublasGemmEx's choice) */
bool cu_gemm_tunes(const usbx_cuda *c, int m, int n, int k);
/* device scratch of at least `bytes` (stream-ordered reuse; grows with a synchronising free) */
void *cu_scratch(usbx_cuda *c, size_t bytes);
/* a second such scratch, for cuda_attn_gemm.cu (which runs while cu_scratch holds D) */
void *cu_attn_ws(usbx_cuda *c, size_t bytes);
/* cuda_attn_gemm.cu: attention_masked and its backward sample by sample through cuBLAS; false when the
 * arguments carry no segments or a sample is too long for its L x L workspace */
bool cu_attn_masked_fwd_gemm(usbx_backend *be, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                             const usbx_attn_masked_args *a);
bool cu_attn_masked_bwd_gemm(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k,
                             const bf16 *v, const float *lse, const float *D, const usbx_attn_masked_args *a);

/* cuda_attn_flash.cu: attention_masked and its backward as flash attention; false when the head dim
 * is not a multiple of 8 up to 128 or a pointer is not 16-byte aligned */
void cu_attn_masked_prepare_flash(usbx_backend *be, const usbx_attn_masked_args *a);
bool cu_attn_masked_fwd_flash(usbx_backend *be, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                              const usbx_attn_masked_args *a);
/* (the backward computes D = rowsum(dout·out) into D itself, with dout's bf16 copy: cu_attn_D) */
bool cu_attn_masked_bwd_flash(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k,
                              const bf16 *v, const bf16 *out, const float *lse, float *D, const usbx_attn_masked_args *a);
/* cuda_train.cu: D[h, q] = Σ_c dout·out of the training attention's backward; dob (may be NULL):
 * dout in bf16 */
void cu_attn_D(usbx_cuda *c, float *D, bf16 *dob, const float *dout, const bf16 *out, int n, int H, int d);

/* cuda_train.cu: sets the training ops of the table */
void cu_install_train_ops(usbx_backend *be);
/* cuda_attn_masked.cu: tiled tensor-core training attention; false when the shape is not
 * supported (the caller then uses the scalar kernels of cuda_train.cu).  D: [H, n] f32 Σ dO·O. */
bool cu_attn_masked_fwd_tc(usbx_backend *be, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                           const usbx_attn_masked_args *a);
bool cu_attn_masked_bwd_tc(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const bf16 *q, const bf16 *k,
                           const bf16 *v, const float *lse, const float *D, const usbx_attn_masked_args *a);

/* cuda_gate_up.cu: ops.h gate_up_silu */
bool cu_gate_up_silu(usbx_backend *be, void *act, const void *x, const void *wg, const void *wu, int T, int F, int K);

/* cuda_attention.cu */
void cu_attention(usbx_backend *be, void *out, const void *q, const void *k, const void *v, const usbx_attn_args *a);

#endif
