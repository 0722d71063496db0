/* cpu_sampler.c — CFG with renormalisation and the Euler step (spec 5.6-5.7), fp32. */
#include "cpu_ops.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>

static double norm2(const float *v, size_t n) { double s = 0; for (size_t i = 0; i < n; i++) s += (double)v[i] * v[i]; return sqrt(s); }
static float clampf(double r, float lo, float hi) { return (float)(r < lo ? lo : r > hi ? hi : r); }

void usbx_cpu_cfg_euler(usbx_backend *be, float *x, float *v, const float *vc, const float *vu, const float *vi, const usbx_cfg_args *a) {
  size_t n = (size_t)a->N * a->P;
  if (!(a->cfg_text > 1.0f) || !vu) {
    for (size_t i = 0; i < n; i++) v[i] = vc[i];
  } else {
    for (size_t i = 0; i < n; i++) v[i] = vu[i] + a->cfg_text * (vc[i] - vu[i]);
    bool img = a->cfg_img > 1.0f && vi;
    if (a->renorm == USBX_RENORM_TEXT_CHANNEL) {
      for (int t = 0; t < a->N; t++) {
        const float *c = vc + (size_t)t * a->P;
        float *g = v + (size_t)t * a->P;
        float r = clampf(norm2(c, (size_t)a->P) / (norm2(g, (size_t)a->P) + 1e-8), a->renorm_min, 1.0f);
        for (int i = 0; i < a->P; i++) g[i] *= r;
      }
      if (img) for (size_t i = 0; i < n; i++) v[i] = vi[i] + a->cfg_img * (v[i] - vi[i]);
    } else {
      if (img) for (size_t i = 0; i < n; i++) v[i] = vi[i] + a->cfg_img * (v[i] - vi[i]);
      if (a->renorm == USBX_RENORM_GLOBAL) {
        float r = clampf(norm2(vc, n) / (norm2(v, n) + 1e-8), a->renorm_min, 1.0f);
        for (size_t i = 0; i < n; i++) v[i] *= r;
      } else {
        for (int t = 0; t < a->N; t++) {
          float *g = v + (size_t)t * a->P;
          float r = clampf(norm2(vc + (size_t)t * a->P, (size_t)a->P) / (norm2(g, (size_t)a->P) + 1e-8), a->renorm_min, 1.0f);
          for (int i = 0; i < a->P; i++) g[i] *= r;
        }
      }
    }
  }
  for (size_t i = 0; i < n; i++) x[i] -= v[i] * a->dt;
}
