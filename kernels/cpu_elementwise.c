/* cpu_elementwise.c — embedding gather, conversions, activations, row gather/scatter, argmax. */
#include "cpu_ops.h"
#include <math.h>
#include <string.h>

void usbx_cpu_embed(usbx_backend *be, float *out, const void *table, const int32_t *ids, int T, int D) {
  const float *tab = table;
  for (int t = 0; t < T; t++) memcpy(out + (size_t)t * D, tab + (size_t)ids[t] * D, sizeof(float) * (size_t)D);
}

void usbx_cpu_to_mm(usbx_backend *be, void *out, int out_stride, const float *x, int T, int cols) {
  float *o = out;
  for (int t = 0; t < T; t++) memcpy(o + (size_t)t * out_stride, x + (size_t)t * cols, sizeof(float) * (size_t)cols);
}

void usbx_cpu_silu_mul(usbx_backend *be, void *out, const float *gate, const float *up, int T, int F) {
  float *o = out;
  size_t n = (size_t)T * F;
  for (size_t i = 0; i < n; i++) { float g = gate[i]; o[i] = g / (1.0f + expf(-g)) * up[i]; }
}

/* mm is f32 on the CPU */
void usbx_cpu_silu_mul_mm(usbx_backend *be, void *out, const void *gate, const void *up, int T, int F) {
  usbx_cpu_silu_mul(be, out, gate, up, T, F);
}

void usbx_cpu_gelu_tanh(usbx_backend *be, void *out, const float *x, size_t n) {
  float *o = out;
  const float k = 0.7978845608028654f; /* sqrt(2/pi) */
  for (size_t i = 0; i < n; i++) { float v = x[i]; o[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v))); }
}

void usbx_cpu_add(usbx_backend *be, float *x, const float *y, size_t n) { for (size_t i = 0; i < n; i++) x[i] += y[i]; }

void usbx_cpu_scatter_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols) {
  for (int i = 0; i < n; i++) memcpy(dst + (size_t)idx[i] * cols, src + (size_t)i * cols, sizeof(float) * (size_t)cols);
}
void usbx_cpu_gather_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols) {
  for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * cols, src + (size_t)idx[i] * cols, sizeof(float) * (size_t)cols);
}

void usbx_cpu_argmax(usbx_backend *be, int32_t *idx, const float *x, int rows, int n) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * n;
    int best = 0;
    for (int i = 1; i < n; i++) if (xr[i] > xr[best]) best = i;   /* strict: ties keep the lowest */
    idx[r] = best;
  }
}

void usbx_cpu_add_row(usbx_backend *be, float *x, const float *row, int T, int D) {
  for (int t = 0; t < T; t++) for (int i = 0; i < D; i++) x[(size_t)t * D + i] += row[i];
}

void usbx_cpu_silu(usbx_backend *be, float *out, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + expf(-x[i]));
}
