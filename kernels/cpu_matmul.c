/* cpu_matmul.c — y = x·Wᵀ (+b) through OpenBLAS sgemm. */
#include "cpu_ops.h"
#include <cblas.h>
#include <string.h>

void usbx_cpu_matmul(usbx_backend *be, float *y, const void *x, const void *w, const float *bias, int M, int N, int K, bool acc) {
  float beta = acc ? 1.0f : 0.0f;
  if (bias) {
    /* Seed y with the bias (or add it to the accumulator), then accumulate the product. */
    for (int i = 0; i < M; i++) {
      float *row = y + (size_t)i * N;
      if (acc) for (int j = 0; j < N; j++) row[j] += bias[j];
      else for (int j = 0; j < N; j++) row[j] = bias[j];
    }
    beta = 1.0f;
  }
  if (M == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, K, x, 1, beta, y, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, beta, y, N);
}

void usbx_cpu_matmul_res(usbx_backend *be, float *y, const float *res, const void *x, const void *w, int M, int N, int K) {
  if (M <= 0 || N <= 0) return;
  if (res != y) memcpy(y, res, sizeof(float) * (size_t)M * N);
  usbx_cpu_matmul(be, y, x, w, NULL, M, N, K, true);
}

/* On the CPU the mm type is f32: matmul_mm and matmul_f32 are matmul. */
void usbx_cpu_matmul_mm(usbx_backend *be, void *y, const void *x, const void *w, int M, int N, int K) {
  usbx_cpu_matmul(be, y, x, w, NULL, M, N, K, false);
}
void usbx_cpu_matmul_f32(usbx_backend *be, float *y, const float *x, const float *w, const float *bias, int M, int N, int K, bool acc) {
  usbx_cpu_matmul(be, y, x, w, bias, M, N, K, acc);
}
