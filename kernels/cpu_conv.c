/* cpu_conv.c — the autoencoder's building blocks on channels-last images: im2col (so a
 * convolution is one matrix product), GroupNorm (+SiLU), nearest x2 upsampling. */
#include "cpu_ops.h"
#include <math.h>
#include <string.h>

void usbx_cpu_im2col(usbx_backend *be, void *out, const float *x, const usbx_im2col_args *a) {
  float *o = out;
  int k = a->k, C = a->C;
  int Ho = (a->H + a->pad_t + a->pad_b - k) / a->stride + 1, Wo = (a->W + a->pad_l + a->pad_r - k) / a->stride + 1;
  size_t row = (size_t)C * k * k;
  for (int oy = 0; oy < Ho; oy++)
    for (int ox = 0; ox < Wo; ox++) {
      float *r = o + ((size_t)oy * Wo + ox) * row;
      for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
          int iy = oy * a->stride + ky - a->pad_t, ix = ox * a->stride + kx - a->pad_l;
          bool in = iy >= 0 && iy < a->H && ix >= 0 && ix < a->W;
          const float *px = in ? x + ((size_t)iy * a->W + ix) * C : NULL;
          for (int c = 0; c < C; c++) r[((size_t)c * k + ky) * k + kx] = in ? px[c] : 0.0f;
        }
    }
}

void usbx_cpu_group_norm(usbx_backend *be, float *out, const float *x, const float *w, const float *b, int HW, int C, int groups, float eps, bool silu) {
  int cg = C / groups;
  for (int g = 0; g < groups; g++) {
    double s = 0, ss = 0;
    for (int p = 0; p < HW; p++)
      for (int c = g * cg; c < (g + 1) * cg; c++) { double v = x[(size_t)p * C + c]; s += v; ss += v * v; }
    double cnt = (double)HW * cg, mean = s / cnt, var = ss / cnt - mean * mean;
    if (var < 0) var = 0;
    float inv = (float)(1.0 / sqrt(var + eps)), mf = (float)mean;
    for (int p = 0; p < HW; p++)
      for (int c = g * cg; c < (g + 1) * cg; c++) {
        float v = (x[(size_t)p * C + c] - mf) * inv * w[c] + b[c];
        out[(size_t)p * C + c] = silu ? v / (1.0f + expf(-v)) : v;
      }
  }
}

void usbx_cpu_upsample2x(usbx_backend *be, float *out, const float *x, int H, int W, int C) {
  for (int y = 0; y < 2 * H; y++)
    for (int xx = 0; xx < 2 * W; xx++)
      memcpy(out + ((size_t)y * 2 * W + xx) * C, x + ((size_t)(y / 2) * W + xx / 2) * C, sizeof(float) * (size_t)C);
}

void usbx_cpu_im2col_f32(usbx_backend *be, float *out, const float *x, const usbx_im2col_args *a) {
  usbx_cpu_im2col(be, out, x, a);
}
