/* cpu_ops.h — the CPU (fp32) implementations of the ops.h table, one file per op group. */
#ifndef USBX_CPU_OPS_H
#define USBX_CPU_OPS_H
#include "ops.h"
void usbx_cpu_matmul(usbx_backend *be, float *y, const void *x, const void *w, const float *bias, int M, int N, int K, bool acc);
void usbx_cpu_matmul_res(usbx_backend *be, float *y, const float *res, const void *x, const void *w, int M, int N, int K);
void usbx_cpu_embed(usbx_backend *be, float *out, const void *table, const int32_t *ids, int T, int D);
void usbx_cpu_rmsnorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, int rows, int dim, float eps);
void usbx_cpu_layernorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, const float *b, int rows, int dim, float eps);
void usbx_cpu_qk_norm_rope(usbx_backend *be, void *out, int out_stride, const float *x, const float *norm_w,
                           const int32_t *pos, int T, int heads, int d, float eps, float theta);
void usbx_cpu_to_mm(usbx_backend *be, void *out, int out_stride, const float *x, int T, int cols);
void usbx_cpu_silu_mul(usbx_backend *be, void *out, const float *gate, const float *up, int T, int F);
void usbx_cpu_silu_mul_mm(usbx_backend *be, void *out, const void *gate, const void *up, int T, int F);
void usbx_cpu_matmul_mm(usbx_backend *be, void *y, const void *x, const void *w, int M, int N, int K);
void usbx_cpu_gelu_tanh(usbx_backend *be, void *out, const float *x, size_t n);
void usbx_cpu_add(usbx_backend *be, float *x, const float *y, size_t n);
void usbx_cpu_scatter_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols);
void usbx_cpu_gather_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols);
void usbx_cpu_attention(usbx_backend *be, void *out, const void *q, const void *k, const void *v, const usbx_attn_args *a);
void usbx_cpu_argmax(usbx_backend *be, int32_t *idx, const float *x, int rows, int n);
void usbx_cpu_add_row(usbx_backend *be, float *x, const float *row, int T, int D);
void usbx_cpu_silu(usbx_backend *be, float *out, const float *x, size_t n);
void usbx_cpu_cfg_euler(usbx_backend *be, float *x, float *v, const float *vc, const float *vu, const float *vi, const usbx_cfg_args *a);
void usbx_cpu_im2col(usbx_backend *be, void *out, const float *x, const usbx_im2col_args *a);
void usbx_cpu_group_norm(usbx_backend *be, float *out, const float *x, const float *w, const float *b, int HW, int C, int groups, float eps, bool silu);
void usbx_cpu_upsample2x(usbx_backend *be, float *out, const float *x, int H, int W, int C);
/* training (cpu_backward.c, cpu_attention_masked.c) */
void usbx_cpu_matmul_bwd(usbx_backend *be, float *dx, float *dw, float *db, const void *dy_mm, const float *dy,
                         const void *x, const void *w, int M, int N, int K, bool dx_add, bool dw_add);
void usbx_cpu_rmsnorm_bwd(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, const float *x, const float *w,
                          int rows, int dim, float eps);
void usbx_cpu_layernorm_bwd(usbx_backend *be, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                            int rows, int dim, float eps);
void usbx_cpu_qk_norm_rope_bwd(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, int dy_stride, const float *x,
                               const float *w, const int32_t *pos, int T, int heads, int d, float eps, float theta);
void usbx_cpu_silu_mul_bwd(usbx_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up, int T, int F);
void usbx_cpu_silu_mul_bwd_mm(usbx_backend *be, void *dgate, void *dup, const void *dout, const void *gate, const void *up, int T, int F);
void usbx_cpu_matmul_dx_mm(usbx_backend *be, void *dx, const void *dy, const void *w, int M, int N, int K);
void usbx_cpu_gelu_tanh_bwd(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n);
void usbx_cpu_silu_bwd(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n);
void usbx_cpu_embed_bwd(usbx_backend *be, float *dtable, const float *dout, const int32_t *ids, int T, int D);
void usbx_cpu_attention_masked(usbx_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
                               const usbx_attn_masked_args *a);
void usbx_cpu_attention_masked_bwd(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const void *q,
                                   const void *k, const void *v, const void *out, const float *lse,
                                   const usbx_attn_masked_args *a);
void usbx_cpu_cross_entropy(usbx_backend *be, float *loss, float *dlogits, const float *logits, const int32_t *labels, int n, int V,
                            float scale);
void usbx_cpu_adamw(usbx_backend *be, float *w, void *w_mm, const float *g, float *m, float *v, float *ema, size_t n,
                    const usbx_adamw_args *a);
void usbx_cpu_sumsq_acc(usbx_backend *be, float *acc, const float *x, size_t n);
void usbx_cpu_sumsq_multi(usbx_backend *be, float *acc, const float *const *x, const size_t *n, int count);
void usbx_cpu_sum_acc(usbx_backend *be, double *acc, const float *x, size_t n, double scale);
void usbx_cpu_mse_grad(usbx_backend *be, double *acc, float *grad, float *sq, const float *pred, const float *target, size_t n, float num,
                       float den, double scale);
/* fp32 ops (cpu_matmul.c, cpu_conv.c, cpu_attention.c) */
void usbx_cpu_matmul_f32(usbx_backend *be, float *y, const float *x, const float *w, const float *bias, int M, int N, int K, bool acc);
void usbx_cpu_im2col_f32(usbx_backend *be, float *out, const float *x, const usbx_im2col_args *a);
void usbx_cpu_attention_f32(usbx_backend *be, float *out, const float *q, const float *k, const float *v, const usbx_attn_args *a);
#endif
