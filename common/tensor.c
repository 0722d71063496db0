/* tensor.c — see tensor.h.  The float conversions follow PyTorch's c10 scalar code bit for bit. */
#include "tensor.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *name; size_t size; } dtype_info[USBX_DTYPE_COUNT] = {
  [USBX_BOOL] = {"BOOL", 1}, [USBX_U8] = {"U8", 1}, [USBX_I8] = {"I8", 1},
  [USBX_F8_E5M2] = {"F8_E5M2", 1}, [USBX_F8_E4M3] = {"F8_E4M3", 1},
  [USBX_I16] = {"I16", 2}, [USBX_U16] = {"U16", 2}, [USBX_F16] = {"F16", 2}, [USBX_BF16] = {"BF16", 2},
  [USBX_I32] = {"I32", 4}, [USBX_U32] = {"U32", 4}, [USBX_F32] = {"F32", 4},
  [USBX_F64] = {"F64", 8}, [USBX_I64] = {"I64", 8}, [USBX_U64] = {"U64", 8},
};

const char *usbx_dtype_name(usbx_dtype t) { return (unsigned)t < USBX_DTYPE_COUNT ? dtype_info[t].name : "?"; }
size_t usbx_dtype_size(usbx_dtype t) { return (unsigned)t < USBX_DTYPE_COUNT ? dtype_info[t].size : 0; }
bool usbx_dtype_is_float(usbx_dtype t) { return t == USBX_F16 || t == USBX_BF16 || t == USBX_F32 || t == USBX_F64; }

bool usbx_dtype_parse(const char *name, usbx_dtype *t) {
  for (int i = 0; i < USBX_DTYPE_COUNT; i++)
    if (strcmp(name, dtype_info[i].name) == 0) { *t = (usbx_dtype)i; return true; }
  static const struct { const char *a; usbx_dtype t; } alias[] = {
    {"f32", USBX_F32}, {"float32", USBX_F32}, {"bf16", USBX_BF16}, {"bfloat16", USBX_BF16},
    {"f16", USBX_F16}, {"float16", USBX_F16}, {"fp16", USBX_F16}, {"f64", USBX_F64}, {"float64", USBX_F64},
  };
  for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
    if (strcmp(name, alias[i].a) == 0) { *t = alias[i].t; return true; }
  return false;
}

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t usbx_f32_to_bf16(float f) {
  if (isnan(f)) return 0x7FC0;
  uint32_t u = f2u(f);
  uint32_t bias = ((u >> 16) & 1u) + 0x7FFFu;
  return (uint16_t)((u + bias) >> 16);
}
float usbx_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t usbx_f32_to_f16(float f) {
  /* c10::detail::fp16_ieee_from_fp32_value: the scaling trick rounds to nearest even in the
   * FPU, including subnormal results. */
  const float scale_to_inf = 0x1.0p+112f, scale_to_zero = 0x1.0p-110f;
  float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = f2u(f), shl1_w = w + w, sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = u2f((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f2u(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u, mant = bits & 0x00000FFFu;
  return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : exp_bits + mant));
}

float usbx_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0x1F) return u2f(sign | 0x7F800000u | (mant << 13));     /* Inf / NaN (payload kept) */
  if (exp == 0) {
    if (mant == 0) return u2f(sign);
    float v = (float)mant * 0x1.0p-24f;                                 /* subnormal: exact */
    return sign ? -v : v;
  }
  return u2f(sign | ((exp + 112u) << 23) | (mant << 13));
}

bool usbx_convert(const void *src, usbx_dtype st, void *dst, usbx_dtype dt, size_t n) {
  if (!usbx_dtype_is_float(st) || !usbx_dtype_is_float(dt)) return false;
  if (st == dt) { memmove(dst, src, n * usbx_dtype_size(st)); return true; }
  const uint16_t *s16 = src; const float *s32 = src; const double *s64 = src;
  uint16_t *d16 = dst; float *d32 = dst; double *d64 = dst;
  /* Doubles go through float first, as c10's Half/BFloat16 constructors take a float. */
  for (size_t i = 0; i < n; i++) {
    if (st == USBX_F64 && dt == USBX_F32) { d32[i] = (float)s64[i]; continue; }
    if (dt == USBX_F64) {
      d64[i] = st == USBX_F32 ? (double)s32[i] : st == USBX_BF16 ? (double)usbx_bf16_to_f32(s16[i]) : (double)usbx_f16_to_f32(s16[i]);
      continue;
    }
    float x = st == USBX_F32 ? s32[i] : st == USBX_F64 ? (float)s64[i] : st == USBX_BF16 ? usbx_bf16_to_f32(s16[i]) : usbx_f16_to_f32(s16[i]);
    if (dt == USBX_F32) d32[i] = x;
    else if (dt == USBX_BF16) d16[i] = usbx_f32_to_bf16(x);
    else d16[i] = usbx_f32_to_f16(x);
  }
  return true;
}

int64_t usbx_shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}
int64_t usbx_tensor_numel(const usbx_tensor *t) { return usbx_shape_numel(t->ndim, t->shape); }
size_t usbx_tensor_nbytes(const usbx_tensor *t) { return (size_t)usbx_tensor_numel(t) * usbx_dtype_size(t->dtype); }

usbx_tensor usbx_tensor_view(void *data, usbx_dtype dt, int ndim, const int64_t *shape) {
  usbx_tensor t;
  memset(&t, 0, sizeof t);
  if (ndim > USBX_MAX_DIMS) usbx_die("tensor with %d dims (max %d)", ndim, USBX_MAX_DIMS);
  t.dtype = dt; t.ndim = ndim; t.dev = USBX_DEV_CPU; t.data = data; t.owns = false;
  for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
  return t;
}

usbx_tensor usbx_tensor_cpu(usbx_dtype dt, int ndim, const int64_t *shape) {
  usbx_tensor t = usbx_tensor_view(NULL, dt, ndim, shape);
  t.data = xcalloc((size_t)usbx_tensor_numel(&t), usbx_dtype_size(dt));
  t.owns = true;
  return t;
}

void usbx_tensor_free(usbx_tensor *t) {
  if (t->owns && t->dev == USBX_DEV_CPU) free(t->data);
  t->data = NULL; t->owns = false;
}

const char *usbx_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t off = 0;
  off += (size_t)snprintf(buf + off, n - off, "[");
  for (int i = 0; i < ndim && off < n; i++)
    off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (off < n) snprintf(buf + off, n - off, "]");
  return buf;
}
