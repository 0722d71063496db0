/* cpu_norm.c — RMSNorm, LayerNorm, per-head q/k RMSNorm fused with RoPE.  Statistics in
 * double-free fp32 as the reference (fp32 mean of squares), inputs fp32. */
#include "cpu_ops.h"
#include <math.h>
#include <string.h>

void usbx_cpu_rmsnorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, int rows, int dim, float eps) {
  float *o = out;
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * dim;
    float ss = 0;
    for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    float *orow = o + (size_t)r * dim;
    for (int i = 0; i < dim; i++) orow[i] = (xr[i] * inv) * w[i];
  }
}

void usbx_cpu_layernorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, const float *b, int rows, int dim, float eps) {
  float *o = out;
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * dim;
    float mean = 0, var = 0;
    for (int i = 0; i < dim; i++) mean += xr[i];
    mean /= (float)dim;
    for (int i = 0; i < dim; i++) { float d = xr[i] - mean; var += d * d; }
    var /= (float)dim;
    float inv = 1.0f / sqrtf(var + eps);
    float *orow = o + (size_t)r * dim;
    for (int i = 0; i < dim; i++) orow[i] = (xr[i] - mean) * inv * w[i] + b[i];
  }
}

void usbx_cpu_qk_norm_rope(usbx_backend *be, void *out, int out_stride, const float *x, const float *norm_w,
                           const int32_t *pos, int T, int heads, int d, float eps, float theta) {
  float *o = out;
  int half = d / 2;
  float inv_freq[512], cs[512], sn[512], tmp[1024];
  for (int j = 0; j < half; j++) inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)d);
  for (int t = 0; t < T; t++) {
    for (int j = 0; j < half; j++) {
      float ang = (float)pos[t] * inv_freq[j];
      cs[j] = cosf(ang); sn[j] = sinf(ang);
    }
    for (int h = 0; h < heads; h++) {
      const float *xh = x + ((size_t)t * heads + h) * d;
      float ss = 0;
      for (int i = 0; i < d; i++) ss += xh[i] * xh[i];
      float inv = 1.0f / sqrtf(ss / (float)d + eps);
      for (int i = 0; i < d; i++) tmp[i] = xh[i] * inv * norm_w[i];
      float *oh = o + (size_t)t * out_stride + (size_t)h * d;
      for (int j = 0; j < half; j++) {
        float a = tmp[j], b = tmp[j + half];
        oh[j] = a * cs[j] - b * sn[j];
        oh[j + half] = b * cs[j] + a * sn[j];
      }
    }
  }
}
