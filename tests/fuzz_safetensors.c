/* fuzz_safetensors — libFuzzer target for the safetensors header parser/validator.
 * Input: a whole file image.  Invariants checked on top of ASan/UBSan: a rejected file gives one
 * non-empty line that starts with the file name; an accepted file's tensors lie inside the data
 * area, do not overlap, have consistent sizes and are all found by name.
 * Build and run: bash tests/fuzz.sh (make fuzz). */
#include "safetensors.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  usbx_st_file f;
  char err[1024];
  if (usbx_st_open_mem(data, size, "fuzz", &f, err, sizeof err) != 0) {
    if (strncmp(err, "fuzz: ", 6) != 0 || strlen(err) <= 6 || strchr(err, '\n')) abort();
    return 0;
  }
  volatile unsigned sum = 0;
  for (size_t i = 0; i < f.n; i++) {
    const usbx_st_tensor *t = &f.t[i];
    if (t->end < t->begin || t->end > f.data_len) abort();
    uint64_t ne = 1;
    for (int k = 0; k < t->ndim; k++) ne *= (uint64_t)t->shape[k];
    if (ne * usbx_dtype_size(t->dtype) != t->end - t->begin) abort();
    if (usbx_st_find(&f, t->name) != t) abort();
    const uint8_t *p = t->data;
    if (t->end > t->begin) sum += p[0] + p[t->end - t->begin - 1];   /* ASan checks the bounds */
    for (size_t j = 0; j < f.n; j++)
      if (j != i && t->begin < t->end && f.t[j].begin < f.t[j].end && t->begin < f.t[j].end && f.t[j].begin < t->end)
        abort();
  }
  (void)sum;
  usbx_st_close(&f);
  return 0;
}
