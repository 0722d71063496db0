/* cpu_ops.h — the CPU (fp32) implementations of the ops.h table, one file per op group. */
#ifndef USBX_CPU_OPS_H
#define USBX_CPU_OPS_H
#include "ops.h"
void usbx_cpu_matmul(usbx_backend *be, float *y, const void *x, const void *w, const float *bias, int M, int N, int K, bool acc);
void usbx_cpu_embed(usbx_backend *be, float *out, const void *table, const int32_t *ids, int T, int D);
void usbx_cpu_rmsnorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, int rows, int dim, float eps);
void usbx_cpu_layernorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, const float *b, int rows, int dim, float eps);
void usbx_cpu_qk_norm_rope(usbx_backend *be, void *out, int out_stride, const float *x, const float *norm_w,
                           const int32_t *pos, int T, int heads, int d, float eps, float theta);
void usbx_cpu_to_mm(usbx_backend *be, void *out, int out_stride, const float *x, int T, int cols);
void usbx_cpu_silu_mul(usbx_backend *be, void *out, const float *gate, const float *up, int T, int F);
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
#endif
