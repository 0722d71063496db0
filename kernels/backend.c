/* backend.c — choosing a backend: --device cpu|cpu-bf16|cuda|auto. */
#include <stdatomic.h>
#include "ops.h"
#include "util.h"
#include <string.h>

#ifndef USBX_HAVE_CUDA
usbx_backend *usbx_backend_cuda(char *err, size_t errlen) {
  snprintf(err, errlen, "this build has no CUDA support (nvcc was not found or USBX_CUDA=0)");
  return NULL;
}
#endif

usbx_backend *usbx_backend_open(const char *device) {
  char err[256] = "";
  if (!device || !*device || strcmp(device, "auto") == 0) {
    usbx_backend *be = usbx_backend_cuda(err, sizeof err);
    return be ? be : usbx_backend_cpu();
  }
  if (strcmp(device, "cpu") == 0) return usbx_backend_cpu();
  if (strcmp(device, "cpu-bf16") == 0) return usbx_backend_cpu_bf16();
  if (strcmp(device, "cuda") == 0 || strcmp(device, "gpu") == 0) {
    usbx_backend *be = usbx_backend_cuda(err, sizeof err);
    if (!be) usbx_die("--device cuda: %s", err);
    return be;
  }
  usbx_usage_die("--device: expected cpu, cpu-bf16, cuda or auto, got '%s'", device);
}

uint64_t usbx_attn_meta_id(void) {
  static _Atomic uint64_t last;
  return atomic_fetch_add(&last, 1) + 1;
}
