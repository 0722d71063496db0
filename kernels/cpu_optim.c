/* cpu_optim.c — AdamW (PyTorch's torch.optim.AdamW update), gradient norm, EMA. */
#include "cpu_ops.h"
#include <math.h>

void usbx_cpu_adamw(usbx_backend *be, float *w, void *w_mm, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                    float beta2, float eps, float weight_decay, float grad_scale, int step) {
  /* torch: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
   * p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) */
  float bc1 = 1.0f - powf(beta1, (float)step), bc2 = 1.0f - powf(beta2, (float)step);
  float step_size = lr / bc1, bc2_sqrt = sqrtf(bc2);
  float *out = w_mm;
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] * grad_scale;
    w[i] *= 1.0f - lr * weight_decay;
    m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
    v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    w[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    if (out) out[i] = w[i];
  }
}

void usbx_cpu_sumsq_acc(usbx_backend *be, float *acc, const float *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  acc[0] += (float)s;
}

void usbx_cpu_ema(usbx_backend *be, float *ema, const float *w, float decay, size_t n) {
  for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + (1.0f - decay) * w[i];
}
