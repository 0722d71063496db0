/* cuda_extra.h — extras of the CUDA backend that are not in the operation table (ops.h):
 * freeing the backend, tuning switches for benchmarks, and event timing.  Defined only when the
 * build has CUDA (USBX_HAVE_CUDA); callers guard their use with #ifdef USBX_HAVE_CUDA. */
#ifndef USBX_CUDA_EXTRA_H
#define USBX_CUDA_EXTRA_H
#include <stddef.h>

struct usbx_backend;

#ifdef USBX_HAVE_CUDA
/* Releases everything usbx_backend_cuda made (stream, cuBLAS handles, scratch, the table).
 * Buffers handed out by be->alloc must have been freed by the caller. */
void usbx_backend_cuda_free(struct usbx_backend *be);

/* Switches, for benchmarks and debugging (defaults in brackets):
 *   "gemv"       [1] own GEMV kernel for matmul with M <= 4 (else cuBLAS)
 *   "lt"         [1] cublasLt with fused bias epilogue (else cublasGemmEx + bias kernel)
 *   "attn_split" [1] flash-decoding key split when the grid would leave SMs idle
 *   "attn_variant" [5] flash kernel: 0 = 4 warps, Q tile in its own shared memory;
 *                  1 = 4 warps, Q staged in a K/V buffer (less shared memory, more blocks per SM);
 *                  2 = 8 warps (128 query rows per block), Q staged; 3 = 1 with fewer instructions
 *                  per key tile; 4 = 2 with fewer instructions; 6, 7 = warpgroup MMA (wgmma, sm_90
 *                  and head dim 128 only) with 2 or 3 warpgroups per block, all threads loading;
 *                  8 = wgmma fed by TMA from a producer warp; 5 = auto (on sm_90 with head dim 128,
 *                  8 unless decoding splits the keys; else 3, or 4 for image blocks too small to
 *                  fill two waves of 3).  Env USBX_CUDA_ATTN_VARIANT.
 *   "f32_mode"   [3] matmul_f32 / attention_f32 arithmetic: 0 = fp32 (cuBLAS SIMT); 1 = TF32
 *                  tensor cores (both ops; ~3e-4 relative); 2 = bf16x3 split for matmul_f32 (bf16
 *                  tensor cores on hi/lo halves, ~1e-5 relative; attention_f32 stays fp32);
 *                  3 = bf16x3 for products of 256 or more columns, fp32 below (where the split's
 *                  extra pass costs more than it saves).  Env USBX_CUDA_F32_MODE.
 *   "attn_masked_flash" [1] attention_masked(_bwd) as flash attention (cuda_attn_flash.cu: no n x n
 *                  matrices, bf16 P/dS/dO as FlashAttention-2) for head dims that are a multiple of 8
 *                  up to 128; 0 falls through to the two options below.  Env USBX_CUDA_ATTN_MASKED_FLASH.
 *   "attn_masked_wg" [1] in the flash path on sm_90 at head dim 128, the forward and dQ as warpgroup
 *                  MMAs fed by TMA (k_fa_fwd_tma, k_fa_bwd_q_tma); 0 the mma.sync kernels.
 *                  Env USBX_CUDA_ATTN_MASKED_WG.
 *   "attn_bwd_fused" [1] with that option, the backward as one kernel (k_fa_bwd_tma: dK, dV and dQ
 *                  of a 128-key block together, all three added into fp32 by the TMA unit's
 *                  reductions in no fixed order, so repeated backwards may differ in their last
 *                  bits); 0 the
 *                  deterministic dK/dV and dQ kernels (usbx-train --deterministic).
 *                  Env USBX_CUDA_ATTN_BWD_FUSED.
 *   "attn_masked_tc" [1] attention_masked(_bwd) through the tiled tensor-core kernels (else the
 *                  one-warp-per-row scalar kernels).  Env USBX_CUDA_ATTN_MASKED_TC.
 *   "attn_masked_gemm" [1] attention_masked and its backward sample by sample through cuBLAS when the arguments
 *                  list each sample's rows (cuda_attn_gemm.cu).  Env USBX_CUDA_ATTN_MASKED_GEMM.
 *   "attn_masked_row" [1] in that path, the masked softmax and the P/dS pass with one block per
 *                  row of the L x L matrices held in registers (up to 16,384 keys), else one warp
 *                  per row with two passes over memory.  Env USBX_CUDA_ATTN_MASKED_ROW.
 *   "gate_up_fused" [1] inference's MLP gate|up product with SiLU·up in the product's epilogue on
 *                  sm_90 (ops.h gate_up_silu, cuda_gate_up.cu): no f32 [T, 2F] product in memory;
 *                  0 runs matmul + silu_mul.  Env USBX_CUDA_GATEUP_FUSED.
 *   "rms_bwd_fused" [1] rmsnorm_bwd in one pass (dx, its mm copy and the weight gradient's column
 *                  partials) where dim is a multiple of 512 up to 4096; 0 the two-pass kernels.
 *                  Env USBX_CUDA_RMS_BWD_FUSED.
 *   "gemm_tune"  [2048] bf16 products (matmul, matmul_mm, matmul_res, matmul_bwd, matmul_dx_mm) of at
 *                  least this many MFLOP take the fastest of cublasLt's candidates (up to 8), timed
 *                  once on the first call's own operands (an accumulating product into a temporary);
 *                  shapes whose token dimension falls in the same bucket reuse the choice; 0 = off
 *                  (cublasLt's first heuristic for the forward products, cublasGemmEx for the
 *                  backward's, as before).  Env USBX_CUDA_GEMM_TUNE (usbx-train --deterministic: 0).
 *   "gateup_bf16" [0] where gate_up_fused does not apply, inference's MLP gate|up product rounded to
 *                  bf16 (ops.h silu_mul_gu, NULL when off; the trainer always keeps gate and up in bf16).  Env
 *                  USBX_CUDA_GATEUP_BF16=1.
 * Returns the previous value, or -1 for an unknown name. */
int usbx_cuda_set_option(struct usbx_backend *be, const char *name, int value);

/* Times fn(arg) (which enqueues work on the backend's stream) with CUDA events: warmup runs,
 * then reps timed runs; returns the median in milliseconds. */
double usbx_cuda_time_ms(struct usbx_backend *be, void (*fn)(void *arg), void *arg, int warmup, int reps);

/* The backend's stream (a cudaStream_t), for libraries that enqueue on it (NCCL). */
void *usbx_cuda_stream(struct usbx_backend *be);

/* Number of multiprocessors and L2 bytes of the backend's device. */
int usbx_cuda_sm_count(struct usbx_backend *be);
size_t usbx_cuda_l2_bytes(struct usbx_backend *be);
#endif

#endif
