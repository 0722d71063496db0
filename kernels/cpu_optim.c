/* cpu_optim.c — AdamW (PyTorch's torch.optim.AdamW update) with the EMA folded in, gradient norm,
 * the sums of the losses. */
#include "cpu_ops.h"
#include <math.h>

void usbx_cpu_adamw(usbx_backend *be, float *w, void *w_mm, const float *g, float *m, float *v, float *ema, size_t n,
                    const usbx_adamw_args *a) {
  /* torch: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
   * p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) */
  const float lr = a->lr, beta1 = a->beta1, beta2 = a->beta2, eps = a->eps, wd = a->weight_decay, grad_scale = a->grad_scale;
  const float decay = a->ema_decay;
  float bc1 = 1.0f - powf(beta1, (float)a->step), bc2 = 1.0f - powf(beta2, (float)a->step);
  float step_size = lr / bc1, bc2_sqrt = sqrtf(bc2);
  float *out = w_mm;
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] * grad_scale;
    w[i] *= 1.0f - lr * wd;
    m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
    v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    w[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    if (out) out[i] = w[i];
    if (ema) ema[i] = decay * ema[i] + (1.0f - decay) * w[i];
  }
}

void usbx_cpu_sumsq_acc(usbx_backend *be, float *acc, const float *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  acc[0] += (float)s;
}

void usbx_cpu_sumsq_multi(usbx_backend *be, float *acc, const float *const *x, const size_t *n, int count) {
  for (int i = 0; i < count; i++) usbx_cpu_sumsq_acc(be, acc, x[i], n[i]);
}

void usbx_cpu_sum_acc(usbx_backend *be, double *acc, const float *x, size_t n, double scale) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += x[i];
  acc[0] += s * scale;
}

void usbx_cpu_mse_grad(usbx_backend *be, double *acc, float *grad, float *sq, const float *pred, const float *target, size_t n, float num,
                       float den, double scale) {
  double s = 0;
  for (size_t i = 0; i < n; i++) {
    float err = pred[i] - target[i];
    if (sq) sq[i] = err * err;
    s += (double)err * err;
    grad[i] = 2.0f * err * num / den;
  }
  acc[0] += s * scale;
}
