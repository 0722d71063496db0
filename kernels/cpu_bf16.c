/* cpu_bf16.c — the cpu-bf16 backend: the CPU reference whose mm values are rounded to bf16
 * (round to nearest even) wherever the CUDA backend stores them as bf16: weights and other
 * matrix-product inputs as they are uploaded or written (norm outputs, q/k after RoPE, the KV
 * cache, SiLU/GELU products, products written in mm (matmul_mm, matmul_dx_mm), attention outputs, im2col
 * patches, AdamW's weight copy) and the flash kernel's unnormalised probabilities
 * (cpu_attention.c).  Storage and all arithmetic stay fp32,
 * so the difference to the cpu backend is what bf16 rounding alone costs; check-fixtures on it
 * predicts the CUDA backend's errors on a machine without a GPU. */
#include "cpu_ops.h"
#include "tensor.h"
#include "util.h"
#include <stdio.h>
#include <unistd.h>

/* rows x cols values at row stride `stride` (elements), rounded in place */
static void round_rows(void *p, size_t stride, size_t rows, size_t cols) {
  float *f = p;
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++) f[r * stride + c] = usbx_bf16_to_f32(usbx_f32_to_bf16(f[r * stride + c]));
}

static void b_upload_convert(usbx_backend *be, void *dst, bool to_mm, const void *src, usbx_dtype dt, size_t n) {
  usbx_backend_cpu()->upload_convert(be, dst, to_mm, src, dt, n);
  if (to_mm) round_rows(dst, n, 1, n);
}
static void b_rmsnorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, int rows, int dim, float eps) {
  usbx_cpu_rmsnorm(be, out, out_mm, x, w, rows, dim, eps);
  if (out_mm) round_rows(out, (size_t)dim, (size_t)rows, (size_t)dim);
}
static void b_layernorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, const float *b, int rows, int dim,
                        float eps) {
  usbx_cpu_layernorm(be, out, out_mm, x, w, b, rows, dim, eps);
  if (out_mm) round_rows(out, (size_t)dim, (size_t)rows, (size_t)dim);
}
static void b_qk_norm_rope(usbx_backend *be, void *out, int out_stride, const float *x, const float *norm_w, const int32_t *pos, int T,
                           int heads, int d, float eps, float theta) {
  usbx_cpu_qk_norm_rope(be, out, out_stride, x, norm_w, pos, T, heads, d, eps, theta);
  round_rows(out, (size_t)out_stride, (size_t)T, (size_t)heads * d);
}
static void b_to_mm(usbx_backend *be, void *out, int out_stride, const float *x, int T, int cols) {
  usbx_cpu_to_mm(be, out, out_stride, x, T, cols);
  round_rows(out, (size_t)out_stride, (size_t)T, (size_t)cols);
}
static void b_silu_mul(usbx_backend *be, void *out, const float *gate, const float *up, int T, int F) {
  usbx_cpu_silu_mul(be, out, gate, up, T, F);
  round_rows(out, (size_t)F, (size_t)T, (size_t)F);
}
static void b_silu_mul_mm(usbx_backend *be, void *out, const void *gate, const void *up, int T, int F) {
  b_silu_mul(be, out, gate, up, T, F);
}
static void b_matmul_mm(usbx_backend *be, void *y, const void *x, const void *w, int M, int N, int K) {
  usbx_cpu_matmul_mm(be, y, x, w, M, N, K);
  round_rows(y, (size_t)N, (size_t)M, (size_t)N);
}
static void b_matmul_dx_mm(usbx_backend *be, void *dx, const void *dy, const void *w, int M, int N, int K) {
  usbx_cpu_matmul_dx_mm(be, dx, dy, w, M, N, K);
  round_rows(dx, (size_t)K, (size_t)M, (size_t)K);
}
static void b_silu_mul_bwd_mm(usbx_backend *be, void *dgate, void *dup, const void *dout, const void *gate, const void *up, int T, int F) {
  usbx_cpu_silu_mul_bwd_mm(be, dgate, dup, dout, gate, up, T, F);
  if (dgate) round_rows(dgate, (size_t)F, (size_t)T, (size_t)F);
  if (dup) round_rows(dup, (size_t)F, (size_t)T, (size_t)F);
}
static void b_gelu_tanh(usbx_backend *be, void *out, const float *x, size_t n) {
  usbx_cpu_gelu_tanh(be, out, x, n);
  round_rows(out, n, 1, n);
}
static void b_attention(usbx_backend *be, void *out, const void *q, const void *k, const void *v, const usbx_attn_args *a) {
  usbx_cpu_attention(be, out, q, k, v, a);
  round_rows(out, 0, 1, (size_t)a->n_q * a->n_heads * a->head_dim);
}
static void b_attention_masked(usbx_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
                               const usbx_attn_masked_args *a) {
  usbx_cpu_attention_masked(be, out, lse, q, k, v, a);
  round_rows(out, 0, 1, (size_t)a->n * a->n_heads * a->head_dim);
}
static void b_im2col(usbx_backend *be, void *out, const float *x, const usbx_im2col_args *a) {
  usbx_cpu_im2col(be, out, x, a);
  size_t Ho = (size_t)(a->H + a->pad_t + a->pad_b - a->k) / a->stride + 1, Wo = (size_t)(a->W + a->pad_l + a->pad_r - a->k) / a->stride + 1;
  round_rows(out, 0, 1, Ho * Wo * a->C * a->k * a->k);
}
static void b_adamw(usbx_backend *be, float *w, void *w_mm, const float *g, float *m, float *v, float *ema, size_t n,
                    const usbx_adamw_args *a) {
  usbx_cpu_adamw(be, w, w_mm, g, m, v, ema, n, a);
  if (w_mm) round_rows(w_mm, n, 1, n);
}

usbx_backend *usbx_backend_cpu_bf16(void) {
  static usbx_backend be;
  static char name[96];
  if (!be.alloc) {
    be = *usbx_backend_cpu();
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(name, sizeof name, "cpu-bf16 (fp32 with bf16-rounded matmul inputs, OpenBLAS, %ld threads)", n < 1 ? 1 : n);
    be.name = name;
    be.mm_rounded = true;
    be.upload_convert = b_upload_convert;
    be.rmsnorm = b_rmsnorm; be.layernorm = b_layernorm; be.qk_norm_rope = b_qk_norm_rope; be.to_mm = b_to_mm;
    be.silu_mul = b_silu_mul; be.silu_mul_mm = b_silu_mul_mm; be.matmul_mm = b_matmul_mm; be.silu_mul_bwd_mm = b_silu_mul_bwd_mm; be.matmul_dx_mm = b_matmul_dx_mm; be.gelu_tanh = b_gelu_tanh; be.attention = b_attention;
    be.attention_masked = b_attention_masked; be.im2col = b_im2col; be.adamw = b_adamw;
  }
  return &be;
}
