/* tensor.h — dtypes, dtype conversion (PyTorch .to() semantics), and a small tensor type
 * that lives in CPU or CUDA memory. */
#ifndef USBX_TENSOR_H
#define USBX_TENSOR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The dtypes safetensors allows. */
typedef enum {
  USBX_BOOL, USBX_U8, USBX_I8, USBX_F8_E5M2, USBX_F8_E4M3,
  USBX_I16, USBX_U16, USBX_F16, USBX_BF16,
  USBX_I32, USBX_U32, USBX_F32, USBX_F64, USBX_I64, USBX_U64,
  USBX_DTYPE_COUNT
} usbx_dtype;

const char *usbx_dtype_name(usbx_dtype t);            /* "F32", "BF16", ... (safetensors names) */
bool usbx_dtype_parse(const char *name, usbx_dtype *t); /* accepts safetensors names and f32/bf16/f16/f64 */
size_t usbx_dtype_size(usbx_dtype t);
bool usbx_dtype_is_float(usbx_dtype t);               /* F16, BF16, F32, F64 (fp8 excluded) */

/* Scalar conversions with round-to-nearest-even, exactly as PyTorch's c10 scalar casts:
 * NaN -> canonical quiet NaN (bf16 0x7FC0; f16 0x7E00 with the sign kept), Inf kept, overflow
 * to Inf, subnormals produced and consumed. */
uint16_t usbx_f32_to_bf16(float f);
float usbx_bf16_to_f32(uint16_t h);
uint16_t usbx_f32_to_f16(float f);
float usbx_f16_to_f32(uint16_t h);

/* Convert n elements between float dtypes (F16/BF16/F32/F64).  Returns false for other dtypes. */
bool usbx_convert(const void *src, usbx_dtype st, void *dst, usbx_dtype dt, size_t n);

typedef enum { USBX_DEV_CPU = 0, USBX_DEV_CUDA = 1 } usbx_device;

#define USBX_MAX_DIMS 8
typedef struct {
  usbx_dtype dtype;
  int ndim;
  int64_t shape[USBX_MAX_DIMS];
  void *data;
  usbx_device dev;
  bool owns;          /* data freed by usbx_tensor_free */
} usbx_tensor;

int64_t usbx_shape_numel(int ndim, const int64_t *shape);
int64_t usbx_tensor_numel(const usbx_tensor *t);
size_t usbx_tensor_nbytes(const usbx_tensor *t);
/* New zero-filled CPU tensor (CUDA tensors come from the backend). */
usbx_tensor usbx_tensor_cpu(usbx_dtype dt, int ndim, const int64_t *shape);
/* A view of existing CPU memory. */
usbx_tensor usbx_tensor_view(void *data, usbx_dtype dt, int ndim, const int64_t *shape);
void usbx_tensor_free(usbx_tensor *t);
/* "[3, 64, 64]" into buf. */
const char *usbx_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);

#endif
