/* ops.h — the operation API the BAGEL model is written against.  Every operation has a CPU
 * implementation (kernels/<op>.c, fp32, the reference) and a CUDA one (kernels/<op>.cu) behind
 * one backend table.  The model code calls be->op(...) and never branches on the device.
 *
 * Buffers are device pointers of the backend (host memory on CPU).  Two element types exist:
 *   f32  — activations, residual stream, norm weights, biases, outputs of matrix products;
 *   mm   — "matmul input" type: inputs and weights of matrix products and the KV cache.
 *          fp32 on the CPU backend, bf16 on the CUDA backend (be->mm_dtype says which); the
 *          cpu-bf16 backend stores fp32 rounded to bf16 values (be->mm_rounded).
 * Row-major everywhere.  Linear weights are [N, K] (out, in): y = x·Wᵀ + b.
 * All ops are asynchronous on CUDA (one stream per backend); be->sync waits. */
#ifndef USBX_OPS_H
#define USBX_OPS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tensor.h"

typedef struct usbx_backend usbx_backend;

/* Attention over a packed query block against keys that already hold the block's own K/V.
 * Keys/values: rows [0, kv_len) of K/V ([kv_len, Hkv, d] in mm type).  Queries: n_q rows that
 * correspond to key rows [q_start, q_start + n_q).  Query i may see key j when
 *   j <  q_start                       (the context: every earlier key), or
 *   causal && j <= q_start + i, or      (causal text)
 *   !causal && j < q_start + n_q        (a bidirectional image block).
 * GQA: query head h reads KV head h / (H / Hkv).  Scale 1/sqrt(d).  Output [n_q, H, d] mm. */
typedef struct {
  int n_q, q_start, kv_len;
  int n_heads, n_kv_heads, head_dim;
  bool causal;
} usbx_attn_args;

/* Packed training attention (spec 4.2-4.3).  The n tokens of a packed batch attend among
 * themselves; tokens may be stored in any order (the model groups them by expert), so each token
 * carries its metadata: order[t] (its index in the packed sequence), sample[t], split[t] and
 * mode[t] (0 causal, 1 full, 2 noise).  Query q may see key k iff
 *   sample[q] == sample[k]
 *   && (order[k] <= order[q] || (split[k] == split[q] && mode[q] != 0))
 *   && !(mode[k] == 2 && split[k] != split[q]).
 * q/k/v/out as in usbx_attn_args (mm, [n, H, d] / [n, Hkv, d]); lse [H, n] f32 keeps the
 * log-sum-exp of every query row for the backward pass. */
typedef struct {
  int n, n_heads, n_kv_heads, head_dim;
  const int32_t *order, *sample, *split, *mode;   /* device arrays of n */
  /* optional (n_seg 0 when absent): the rows of each sample, seg_rows[seg_off[s] .. seg_off[s+1])
   * (seg_off on the host, n_seg + 1 entries ending at n; seg_rows a device array of n), so a
   * backend can work sample by sample */
  int n_seg;
  const int32_t *seg_off, *seg_rows;
  /* optional (0 when absent): calls with the same nonzero meta_id carry the same n and metadata,
   * so a backend may keep what it derives from them (the layers of one batch share it);
   * usbx_attn_meta_id() hands out fresh ones */
  uint64_t meta_id;
} usbx_attn_masked_args;
/* The rule above for query (order, sample, split, mode) = (oq, sq, pq, mq) and key (ok, sk, pk, mk):
 * the one definition every backend and kernel evaluates (host and device code alike). */
#ifdef __CUDACC__
#define USBX_HOST_DEVICE __host__ __device__
#else
#define USBX_HOST_DEVICE
#endif
static inline USBX_HOST_DEVICE bool usbx_attn_visible(int oq, int sq, int pq, int mq, int ok, int sk, int pk, int mk) {
  return sq == sk && (ok <= oq || (pk == pq && mq != 0)) && !(mk == 2 && pk != pq);
}
uint64_t usbx_attn_meta_id(void);

/* Classifier-free guidance, renormalisation and the Euler update of one sampling step
 * (spec 5.6-5.7), on [N, P] velocities (f32).  vu / vi may be NULL when their scale is <= 1.
 * renorm: 0 global, 1 channel, 2 text_channel.  Writes the guided velocity to v and updates
 * x <- x - v * dt.  Nothing is read back to the host. */
typedef enum { USBX_RENORM_GLOBAL = 0, USBX_RENORM_CHANNEL = 1, USBX_RENORM_TEXT_CHANNEL = 2 } usbx_renorm;
typedef struct {
  int N, P;
  float cfg_text, cfg_img, renorm_min, dt;
  usbx_renorm renorm;
} usbx_cfg_args;

/* Convolution input layout: channels-last images [H, W, C] (f32).  im2col writes, for every
 * output pixel, the k*k*C patch in the order (c, ky, kx) — the flattening of a PyTorch
 * [Co, Ci, k, k] weight — as one row of an mm matrix [Ho*Wo, C*k*k], so a convolution is
 * im2col + matmul.  Padding (top, left, bottom, right) reads zeros. */
typedef struct {
  int H, W, C, k, stride, pad_t, pad_l, pad_b, pad_r;
} usbx_im2col_args;

/* One AdamW update (PyTorch's torch.optim.AdamW) and the EMA that follows it. */
typedef struct {
  float lr, beta1, beta2, eps, weight_decay;
  float grad_scale;   /* the gradient used is g * grad_scale (global-norm clipping) */
  float ema_decay;
  int step;           /* counts from 1 (bias correction) */
} usbx_adamw_args;

struct usbx_backend {
  usbx_device dev;
  usbx_dtype mm_dtype;        /* USBX_F32 on CPU, USBX_BF16 on CUDA */
  bool mm_rounded;            /* mm values are f32 rounded to bf16 (cpu-bf16): lossy like bf16 */
  const char *name;           /* "cpu (OpenBLAS, N threads)" / "cuda (NVIDIA H100 ...)" */

  /* memory */
  void *(*alloc)(usbx_backend *be, size_t bytes);           /* dies on failure */
  void (*free)(usbx_backend *be, void *p);
  void (*upload)(usbx_backend *be, void *dst, const void *src, size_t bytes);
  void (*download)(usbx_backend *be, void *dst, const void *src, size_t bytes);
  void (*copy)(usbx_backend *be, void *dst, const void *src, size_t bytes);   /* device to device */
  void (*memset0)(usbx_backend *be, void *p, size_t bytes);
  void (*sync)(usbx_backend *be);       /* waits for the work of every lane */
  /* Two lanes of work that the GPU runs side by side (CUDA: two streams, lane 1 of the higher
   * priority).  Ops go to the lane set last (0 at start).  lane_wait(be, a, b): what is enqueued
   * on lane a from now on starts after everything enqueued on lane b so far.  Download waits for
   * its own lane only.  NULL on the CPU backends, which run every op in order: use usbx_lane and
   * usbx_lane_wait, which do nothing there. */
  void (*set_lane)(usbx_backend *be, int lane);
  void (*lane_wait)(usbx_backend *be, int waiter, int signaler);
  /* device memory free for new allocations now; SIZE_MAX when unknown (CPU) */
  size_t (*mem_available)(usbx_backend *be);
  /* upload n host values of dtype src_dt into an mm (to_mm) or f32 buffer, converting */
  void (*upload_convert)(usbx_backend *be, void *dst, bool to_mm, const void *src, usbx_dtype src_dt, size_t n);

  /* y[M,N] (f32) = x[M,K] (mm) · W[N,K]ᵀ (mm) (+ bias[N] f32) ; accumulate: y += ... */
  void (*matmul)(usbx_backend *be, float *y, const void *x, const void *w, const float *bias,
                 int M, int N, int K, bool accumulate);
  /* out[T,D] f32 = table[ids[t], :] (table mm [V,D]); ids is a device int32 array */
  void (*embed)(usbx_backend *be, float *out, const void *table, const int32_t *ids, int T, int D);
  /* out[rows,dim] (mm if out_mm else f32) = x / rms(x) * w, rms in fp32, eps */
  void (*rmsnorm)(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, int rows, int dim, float eps);
  /* LayerNorm with bias (ViT): out mm or f32 */
  void (*layernorm)(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, const float *b, int rows, int dim, float eps);
  /* Per-head RMSNorm (weight [d]) then rotate-half RoPE at positions pos[t] (device int32),
   * on x [T, heads, d] f32, written to out (mm) at row stride out_stride (elements). */
  void (*qk_norm_rope)(usbx_backend *be, void *out, int out_stride, const float *x, const float *norm_w,
                       const int32_t *pos, int T, int heads, int d, float eps, float theta);
  /* out (mm) [T, cols] = convert(x f32), row stride out_stride */
  void (*to_mm)(usbx_backend *be, void *out, int out_stride, const float *x, int T, int cols);
  /* out[T,F] (mm) = silu(gate) * up, gate/up f32 */
  void (*silu_mul)(usbx_backend *be, void *out, const float *gate, const float *up, int T, int F);
  /* y[M,N] (f32) = res[M,N] (f32) + x[M,K] (mm) · W[N,K]ᵀ (mm): a residual add that leaves its input
   * as it was (res may be y), so the trainer keeps each layer's input without copying it */
  void (*matmul_res)(usbx_backend *be, float *y, const float *res, const void *x, const void *w, int M, int N, int K);
  /* y[M,N] (mm) = x[M,K] (mm) · W[N,K]ᵀ, fp32 accumulation rounded once; silu_mul_mm: the same
   * as silu_mul with gate/up in mm.  The trainer keeps the MLP's gate and up this way (bf16 on
   * CUDA, as upstream's autocast does), halving the traffic of its widest activations. */
  void (*matmul_mm)(usbx_backend *be, void *y, const void *x, const void *w, int M, int N, int K);
  void (*silu_mul_mm)(usbx_backend *be, void *out, const void *gate, const void *up, int T, int F);
  /* Optional (NULL unless the CUDA option gateup_bf16 is on): inference's gate|up product in mm,
   * out[T,F] (mm) = silu(gu[:, :F]) * gu[:, F:] for gu (mm) [T, 2F] made by one matmul_mm. */
  void (*silu_mul_gu)(usbx_backend *be, void *out, const void *gu, int T, int F);
  /* Optional (NULL where not offered): act[T,F] (mm) = silu(x·Wgᵀ) * (x·Wuᵀ) for x (mm) [T, K] and
   * wg, wu (mm) [F, K]: fp32 accumulation rounded once, the values of matmul + silu_mul up to the
   * order of the sums.  Returns false, doing nothing, for a shape or device it does not take (CUDA:
   * sm_90, at least 128 rows, F a multiple of 128, K of 8); the caller then runs those ops. */
  bool (*gate_up_silu)(usbx_backend *be, void *act, const void *x, const void *wg, const void *wu, int T, int F, int K);
  /* out (mm) = gelu_tanh(x) elementwise, n elements */
  void (*gelu_tanh)(usbx_backend *be, void *out, const float *x, size_t n);
  /* x[n] += y[n] (f32) */
  void (*add)(usbx_backend *be, float *x, const float *y, size_t n);
  /* rows: dst[idx[i], :] = src[i, :] (scatter) or dst[i, :] = src[idx[i], :] (gather); f32 */
  void (*scatter_rows)(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols);
  void (*gather_rows)(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols);
  /* attention, out mm [n_q, H, d] */
  void (*attention)(usbx_backend *be, void *out, const void *q, const void *k, const void *v, const usbx_attn_args *a);
  /* x[T, D] += row[D] (f32), broadcast over rows */
  void (*add_row)(usbx_backend *be, float *x, const float *row, int T, int D);
  /* out[n] (f32) = silu(x) */
  void (*silu)(usbx_backend *be, float *out, const float *x, size_t n);
  void (*cfg_euler)(usbx_backend *be, float *x, float *v, const float *vc, const float *vu, const float *vi, const usbx_cfg_args *a);
  void (*im2col)(usbx_backend *be, void *out, const float *x, const usbx_im2col_args *a);
  /* GroupNorm over channels-last x [HW, C] with `groups` groups (affine w, b), optionally
   * followed by SiLU; out f32 (may alias x) */
  void (*group_norm)(usbx_backend *be, float *out, const float *x, const float *w, const float *b, int HW, int C,
                     int groups, float eps, bool silu);
  /* nearest-neighbour x2 upsampling of channels-last [H, W, C] into [2H, 2W, C] (f32) */
  void (*upsample2x)(usbx_backend *be, float *out, const float *x, int H, int W, int C);
  /* ---------------------------------------------------------------- training
   * Backward ops: dy are gradients of an op's output (f32; dy_mm is the same in mm type, made by
   * the caller with to_mm).  Outputs marked += accumulate; NULL outputs are skipped. */
  /* dx[M,K] += dy·W (dx_add; else dx = dy·W, no need to clear it) ; dw[N,K] += dyᵀ·x (dw_add;
   * else dw = dyᵀ·x, as the first contribution of a step to a gradient not cleared since the last) ;
   * db[N] += Σ_rows dy.  x, w mm. */
  void (*matmul_bwd)(usbx_backend *be, float *dx, float *dw, float *db, const void *dy_mm, const float *dy,
                     const void *x, const void *w, int M, int N, int K, bool dx_add, bool dw_add);
  /* dx[M,K] (mm, overwrite) = dy[M,N] (mm) · W[N,K] (mm, as stored): an input gradient written in
   * mm for the op after it (as PyTorch's bf16 autocast rounds it) */
  void (*matmul_dx_mm)(usbx_backend *be, void *dx, const void *dy, const void *w, int M, int N, int K);
  /* RMSNorm (out = x/rms(x)*w): dx += ..., dw += ...; dx_mm (with dx; may be NULL): the updated dx
   * in mm as well, as to_mm would make it, for the product that takes dx next */
  void (*rmsnorm_bwd)(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, const float *x, const float *w, int rows,
                      int dim, float eps);
  /* LayerNorm: dx, dw, db all += */
  void (*layernorm_bwd)(usbx_backend *be, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                        int rows, int dim, float eps);
  /* qk_norm_rope: dy [T, out_stride] (the rows written by the forward), x [T, heads, d];
   * dx = (overwrites) [T, heads, d], dw += [d]; dx_mm (with dx; may be NULL): dx in mm as well, as
   * to_mm would make it, for the product that takes it next */
  void (*qk_norm_rope_bwd)(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, int dy_stride, const float *x, const float *w,
                           const int32_t *pos, int T, int heads, int d, float eps, float theta);
  /* silu(gate)*up: dgate, dup (overwrite) */
  void (*silu_mul_bwd)(usbx_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up, int T, int F);
  /* the same for dout, gate, up in mm (dout as matmul_dx_mm writes it, gate and up silu_mul_mm's
   * inputs), with dgate, dup written in mm as the products after it take them (the values to_mm
   * would make of silu_mul_bwd's); no aliasing */
  void (*silu_mul_bwd_mm)(usbx_backend *be, void *dgate, void *dup, const void *dout, const void *gate, const void *up, int T, int F);
  /* dx (overwrite) = dy * f'(x) */
  void (*gelu_tanh_bwd)(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n);
  void (*silu_bwd)(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n);
  /* dtable[ids[t], :] += dout[t, :] */
  void (*embed_bwd)(usbx_backend *be, float *dtable, const float *dout, const int32_t *ids, int T, int D);
  /* training attention (forward keeps lse) and its backward: dq, dk, dv (overwrite, f32) from
   * dout (f32 [n, H, d]) and the forward's q, k, v, out, lse */
  void (*attention_masked)(usbx_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
                           const usbx_attn_masked_args *a);
  void (*attention_masked_bwd)(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const void *q, const void *k,
                               const void *v, const void *out, const float *lse, const usbx_attn_masked_args *a);
  /* optional (NULL where it has nothing to do): start what the attention of a's batch needs from
   * its metadata alone, before the first attention_masked call with a->meta_id (CUDA: the tile
   * classification, which the host must wait for; queued early, the wait finds work still queued) */
  void (*attention_masked_prepare)(usbx_backend *be, const usbx_attn_masked_args *a);
  /* cross entropy rows: loss[i] = logsumexp(logits[i]) - logits[i, labels[i]];
   * dlogits (overwrite, may alias logits) = (softmax - onehot) * scale */
  void (*cross_entropy)(usbx_backend *be, float *loss, float *dlogits, const float *logits, const int32_t *labels, int n, int V, float scale);
  /* optimizer: AdamW (usbx_adamw_args) on fp32 master weights w; w_mm (nullable) receives the
   * updated weights in mm type; ema (nullable) = decay * ema + (1 - decay) * the updated w, in
   * the same pass over memory */
  void (*adamw)(usbx_backend *be, float *w, void *w_mm, const float *g, float *m, float *v, float *ema, size_t n,
                const usbx_adamw_args *a);
  /* acc[0] (device f32) += Σ x²; sumsq_multi: the same over count ranges x[i][0..n[i]) (host
   * lists) in one pass (the CPU: range by range, as sumsq_acc) */
  void (*sumsq_acc)(usbx_backend *be, float *acc, const float *x, size_t n);
  void (*sumsq_multi)(usbx_backend *be, float *acc, const float *const *x, const size_t *n, int count);
  /* the losses, kept on the device (no host round trip inside a batch):
   * sum_acc: acc[0] (device f64) += scale · Σ x (in index order on the CPU);
   * mse_grad: err = pred - target over n values; acc[0] (device f64) += scale · Σ err²; grad[i]
   * (may alias pred) = 2·err·num / den; sq (nullable) receives err² */
  void (*sum_acc)(usbx_backend *be, double *acc, const float *x, size_t n, double scale);
  void (*mse_grad)(usbx_backend *be, double *acc, float *grad, float *sq, const float *pred, const float *target, size_t n, float num,
                   float den, double scale);
  /* argmax over each row of x [rows, n] (f32) into idx (device int32); ties -> lowest index */
  void (*argmax)(usbx_backend *be, int32_t *idx, const float *x, int rows, int n);

  /* ---------------------------------------------------------------- fp32 ops (the autoencoder)
   * Upstream runs the FLUX autoencoder in fp32; these keep every operand f32 on every backend.
   * y[M,N] (f32) = x[M,K] (f32) · W[N,K]ᵀ (f32) (+ bias[N]) ; accumulate: y += ...
   * (CUDA: products of 256 or more columns as bf16x3 split products, ~1e-5 relative, the others
   * in fp32; option "f32_mode" of cuda_extra.h selects fp32, TF32 or bf16x3 throughout) */
  void (*matmul_f32)(usbx_backend *be, float *y, const float *x, const float *w, const float *bias,
                     int M, int N, int K, bool accumulate);
  /* im2col into an f32 matrix [Ho*Wo, C*k*k] (same layout as im2col) */
  void (*im2col_f32)(usbx_backend *be, float *out, const float *x, const usbx_im2col_args *a);
  /* attention with the visibility rule of usbx_attn_args on f32 q/k/v/out, fp32 math (any head
   * dim: the autoencoder's single head has d = C = 512 over up to 128·128 positions) */
  void (*attention_f32)(usbx_backend *be, float *out, const float *q, const float *k, const float *v, const usbx_attn_args *a);

  void (*destroy)(usbx_backend *be);   /* frees handles/streams; NULL for the static CPU table */
  void *impl;                 /* backend private state */
};

static inline void usbx_lane(usbx_backend *be, int lane) { if (be->set_lane) be->set_lane(be, lane); }
static inline void usbx_lane_wait(usbx_backend *be, int waiter, int signaler) { if (be->lane_wait) be->lane_wait(be, waiter, signaler); }

/* Backends. usbx_backend_cpu never fails; usbx_backend_cuda returns NULL (with a reason in
 * err) when the build has no CUDA or no GPU is visible. */
usbx_backend *usbx_backend_cpu(void);
/* The CPU backend with every value the CUDA backend keeps in bf16 rounded to bf16 (weights and
 * other matmul inputs, the KV cache, attention outputs, the flash kernels' probabilities, the
 * training attention's dO and dS, and the weights AdamW writes); everything else fp32.  Shows on any machine which errors bf16
 * arithmetic itself causes (kernels/cpu_bf16.c). */
usbx_backend *usbx_backend_cpu_bf16(void);
usbx_backend *usbx_backend_cuda(char *err, size_t errlen);
/* true when mm values lose precision against fp32 (CUDA's bf16, cpu-bf16's rounding): then the
 * model keeps fp32 copies where it needs them (generation heads, training masters) */
static inline bool usbx_mm_lossy(const usbx_backend *be) { return be->mm_dtype != USBX_F32 || be->mm_rounded; }
/* "--device cpu|cpu-bf16|cuda|auto": auto = CUDA when a GPU is present, else CPU.  Dies on a
 * request that cannot be met (--device cuda without a GPU). */
usbx_backend *usbx_backend_open(const char *device);
void usbx_backend_close(usbx_backend *be);

#endif
