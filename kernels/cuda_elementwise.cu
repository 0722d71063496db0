/* cuda_elementwise.cu — the CUDA backend's element-wise, normalisation, row and reduction ops,
 * dtype conversion for uploads, the bias kernel and the small-M GEMV.  Math in fp32; mm outputs
 * are bf16 with round-to-nearest-even.  16-byte accesses where the shapes and pointers allow. */
#include "cuda_common.cuh"
#include <math.h>

static inline int grid_for(size_t n, int threads, int cap = 65535 * 8) {
  size_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > (size_t)cap) g = cap;
  return (int)g;
}
static inline cudaStream_t S(usbx_backend *be) { return CU(be)->stream; }

__device__ __forceinline__ void store1(void *out, bool mm, size_t i, float v) {
  if (mm) ((uint16_t *)out)[i] = f32_to_bf16_bits(v);
  else ((float *)out)[i] = v;
}

/* ---------------------------------------------------------------- conversion (uploads) */
__device__ __forceinline__ float load_any(const void *src, usbx_dtype st, size_t i) {
  switch (st) {
    case USBX_F32: return ((const float *)src)[i];
    case USBX_F64: return (float)((const double *)src)[i];
    case USBX_BF16: return bf2f(((const bf16 *)src)[i]);
    default: return __half2float(((const __half *)src)[i]);
  }
}
__global__ void k_convert_bf16(uint16_t *dst, const void *src, usbx_dtype st, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] = f32_to_bf16_bits(load_any(src, st, i));
}
__global__ void k_convert_f32(float *dst, const void *src, usbx_dtype st, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] = load_any(src, st, i);
}
void cu_convert_to_bf16(cudaStream_t s, bf16 *dst, const void *src, usbx_dtype st, size_t n) {
  if (!n) return;
  k_convert_bf16<<<grid_for(n, 256, 4096), 256, 0, s>>>((uint16_t *)dst, src, st, n);
  CUDA_LAUNCHED();
}
void cu_convert_to_f32(cudaStream_t s, float *dst, const void *src, usbx_dtype st, size_t n) {
  if (!n) return;
  k_convert_f32<<<grid_for(n, 256, 4096), 256, 0, s>>>(dst, src, st, n);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- bias */
__global__ void k_add_bias(float *y, const float *bias, int M, int N) {
  size_t n = (size_t)M * N;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] += bias[i % N];
}
void cu_add_bias(cudaStream_t s, float *y, const float *bias, int M, int N) {
  if (!M || !N) return;
  k_add_bias<<<grid_for((size_t)M * N, 256, 4096), 256, 0, s>>>(y, bias, M, N);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- embed */
__global__ void k_embed(float *out, const bf16 *table, const int32_t *ids, int D, bool vec) {
  int t = blockIdx.x;
  const bf16 *row = table + (size_t)ids[t] * D;
  float *o = out + (size_t)t * D;
  if (vec) {
    for (int c = threadIdx.x * 8; c < D; c += blockDim.x * 8) {
      uint4 u = *(const uint4 *)(row + c);
      float4 a, b;
      a.x = __uint_as_float(u.x << 16); a.y = __uint_as_float(u.x & 0xffff0000u);
      a.z = __uint_as_float(u.y << 16); a.w = __uint_as_float(u.y & 0xffff0000u);
      b.x = __uint_as_float(u.z << 16); b.y = __uint_as_float(u.z & 0xffff0000u);
      b.z = __uint_as_float(u.w << 16); b.w = __uint_as_float(u.w & 0xffff0000u);
      *(float4 *)(o + c) = a;
      *(float4 *)(o + c + 4) = b;
    }
  } else {
    for (int c = threadIdx.x; c < D; c += blockDim.x) o[c] = bf2f(row[c]);
  }
}
void cu_embed(usbx_backend *be, float *out, const void *table, const int32_t *ids, int T, int D) {
  if (T <= 0 || D <= 0) return;
  bool vec = D % 8 == 0 && aligned16(out) && aligned16(table);
  k_embed<<<T, 256, 0, S(be)>>>(out, (const bf16 *)table, ids, D, vec);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- block reduction */
template <int NT>
__device__ __forceinline__ float block_sum(float v, float *red) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();                      /* red may still be read from a previous call */
  if (l == 0) red[w] = v;
  __syncthreads();
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < NT / 32; i++) s += red[i];
  return s;
}

/* ---------------------------------------------------------------- rmsnorm / layernorm */
template <int NT>
__global__ void __launch_bounds__(NT) k_rmsnorm(void *out, bool mm, const float *x, const float *w, int dim, float eps, bool vec) {
  __shared__ float red[NT / 32];
  size_t r = blockIdx.x;
  const float *xr = x + r * dim;
  float ss = 0.f;
  if (vec) {
    for (int c = threadIdx.x * 4; c < dim; c += NT * 4) {
      float4 v = *(const float4 *)(xr + c);
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += NT) ss += xr[c] * xr[c];
  }
  ss = block_sum<NT>(ss, red);
  float rs = rsqrtf(ss / (float)dim + eps);
  if (vec) {
    for (int c = threadIdx.x * 4; c < dim; c += NT * 4) {
      float4 v = *(const float4 *)(xr + c), g = *(const float4 *)(w + c);
      v.x = v.x * rs * g.x; v.y = v.y * rs * g.y; v.z = v.z * rs * g.z; v.w = v.w * rs * g.w;
      store4(out, mm, r * dim + c, v);
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += NT) store1(out, mm, r * dim + c, xr[c] * rs * w[c]);
  }
}
template <int NT>
__global__ void __launch_bounds__(NT) k_layernorm(void *out, bool mm, const float *x, const float *w, const float *b, int dim, float eps, bool vec) {
  __shared__ float red[NT / 32];
  size_t r = blockIdx.x;
  const float *xr = x + r * dim;
  float s = 0.f;
  if (vec) {
    for (int c = threadIdx.x * 4; c < dim; c += NT * 4) { float4 v = *(const float4 *)(xr + c); s += v.x + v.y + v.z + v.w; }
  } else {
    for (int c = threadIdx.x; c < dim; c += NT) s += xr[c];
  }
  float mean = block_sum<NT>(s, red) / (float)dim;
  float ss = 0.f;
  if (vec) {
    for (int c = threadIdx.x * 4; c < dim; c += NT * 4) {
      float4 v = *(const float4 *)(xr + c);
      float a = v.x - mean, bb = v.y - mean, cc = v.z - mean, d = v.w - mean;
      ss += a * a + bb * bb + cc * cc + d * d;
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += NT) { float a = xr[c] - mean; ss += a * a; }
  }
  float rs = rsqrtf(block_sum<NT>(ss, red) / (float)dim + eps);
  if (vec) {
    for (int c = threadIdx.x * 4; c < dim; c += NT * 4) {
      float4 v = *(const float4 *)(xr + c), g = *(const float4 *)(w + c), bb = *(const float4 *)(b + c);
      v.x = (v.x - mean) * rs * g.x + bb.x; v.y = (v.y - mean) * rs * g.y + bb.y;
      v.z = (v.z - mean) * rs * g.z + bb.z; v.w = (v.w - mean) * rs * g.w + bb.w;
      store4(out, mm, r * dim + c, v);
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += NT) store1(out, mm, r * dim + c, (xr[c] - mean) * rs * w[c] + b[c]);
  }
}
void cu_rmsnorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, int rows, int dim, float eps) {
  if (rows <= 0 || dim <= 0) return;
  bool vec = dim % 4 == 0 && aligned16(out) && aligned16(x) && aligned16(w);
  k_rmsnorm<256><<<rows, 256, 0, S(be)>>>(out, out_mm, x, w, dim, eps, vec);
  CUDA_LAUNCHED();
}
void cu_layernorm(usbx_backend *be, void *out, bool out_mm, const float *x, const float *w, const float *b, int rows, int dim, float eps) {
  if (rows <= 0 || dim <= 0) return;
  bool vec = dim % 4 == 0 && aligned16(out) && aligned16(x) && aligned16(w) && aligned16(b);
  k_layernorm<256><<<rows, 256, 0, S(be)>>>(out, out_mm, x, w, b, dim, eps, vec);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- qk-norm + RoPE
 * One block per token: the cos/sin table of its position is computed once into shared memory
 * (powf/sincosf in fp32 as the CPU does), then one warp per head; lane handles pairs
 * (j, j + d/2) for j = lane + 32p, d <= 256. */
__global__ void k_qk_norm_rope(uint16_t *out, int out_stride, const float *x, const float *nw, const int32_t *pos,
                               int heads, int d, float eps, float theta) {
  __shared__ float cs[128], sn[128];
  const int t = blockIdx.x, half = d / 2, lane = threadIdx.x & 31;
  const float fp = (float)pos[t];
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    float inv = 1.0f / powf(theta, (float)(2 * j) / (float)d);
    sincosf(fp * inv, &sn[j], &cs[j]);
  }
  __syncthreads();
  for (int h = threadIdx.x >> 5; h < heads; h += blockDim.x >> 5) {
    const float *xr = x + ((size_t)t * heads + h) * d;
    float a[4], b[4], ss = 0.f;
#pragma unroll
    for (int p = 0; p < 4; p++) {
      int j = lane + 32 * p;
      a[p] = j < half ? xr[j] : 0.f;
      b[p] = j < half ? xr[j + half] : 0.f;
      ss += a[p] * a[p] + b[p] * b[p];
    }
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    float rs = rsqrtf(ss / (float)d + eps);
    uint16_t *o = out + (size_t)t * out_stride + (size_t)h * d;
#pragma unroll
    for (int p = 0; p < 4; p++) {
      int j = lane + 32 * p;
      if (j < half) {
        float y1 = a[p] * rs * nw[j], y2 = b[p] * rs * nw[j + half];
        float c = cs[j], s = sn[j];
        o[j] = f32_to_bf16_bits(y1 * c - y2 * s);
        o[j + half] = f32_to_bf16_bits(y2 * c + y1 * s);
      }
    }
  }
}
void cu_qk_norm_rope(usbx_backend *be, void *out, int out_stride, const float *x, const float *norm_w,
                     const int32_t *pos, int T, int heads, int d, float eps, float theta) {
  if (T <= 0 || heads <= 0) return;
  if (d <= 0 || d % 2 || d > 256) usbx_die("cuda qk_norm_rope: head dim %d must be even and <= 256", d);
  int threads = heads >= 8 ? 256 : 128;
  k_qk_norm_rope<<<T, threads, 0, S(be)>>>((uint16_t *)out, out_stride, x, norm_w, pos, heads, d, eps, theta);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- to_mm, silu_mul, gelu, add */
__global__ void k_to_mm(uint16_t *out, int stride, const float *x, int T, int cols, bool vec) {
  if (vec) {
    int c4 = cols / 4;
    size_t n = (size_t)T * c4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
      size_t t = i / c4; int c = (int)(i % c4) * 4;
      store4(out, true, t * stride + c, *(const float4 *)(x + t * cols + c));
    }
  } else {
    size_t n = (size_t)T * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
      size_t t = i / cols; int c = (int)(i % cols);
      out[t * stride + c] = f32_to_bf16_bits(x[i]);
    }
  }
}
void cu_to_mm(usbx_backend *be, void *out, int out_stride, const float *x, int T, int cols) {
  if (T <= 0 || cols <= 0) return;
  bool vec = cols % 4 == 0 && out_stride % 4 == 0 && ((uintptr_t)out & 7u) == 0 && aligned16(x);
  k_to_mm<<<grid_for((size_t)T * cols / (vec ? 4 : 1), 256), 256, 0, S(be)>>>((uint16_t *)out, out_stride, x, T, cols, vec);
  CUDA_LAUNCHED();
}

__device__ __forceinline__ float gelu_f(float x) {
  const float k = 0.7978845608028654f; /* sqrt(2/pi) */
  return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}
/* op 0: out(bf16) = silu(a)*b   op 1: out(bf16) = gelu(a)   op 2: a(f32) += b */
template <int OP>
__global__ void k_ew(void *out, const float *a, const float *b, size_t n, bool vec) {
  size_t n4 = vec ? n / 4 : 0;
  size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
  for (size_t i = tid; i < n4; i += step) {
    float4 x = ((const float4 *)a)[i], r;
    if (OP == 0) { float4 y = ((const float4 *)b)[i]; r.x = silu_f(x.x) * y.x; r.y = silu_f(x.y) * y.y; r.z = silu_f(x.z) * y.z; r.w = silu_f(x.w) * y.w; store4(out, true, i * 4, r); }
    if (OP == 1) { r.x = gelu_f(x.x); r.y = gelu_f(x.y); r.z = gelu_f(x.z); r.w = gelu_f(x.w); store4(out, true, i * 4, r); }
    if (OP == 2) { float4 y = ((const float4 *)b)[i]; r.x = x.x + y.x; r.y = x.y + y.y; r.z = x.z + y.z; r.w = x.w + y.w; ((float4 *)out)[i] = r; }
  }
  for (size_t i = n4 * 4 + tid; i < n; i += step) {
    if (OP == 0) store1(out, true, i, silu_f(a[i]) * b[i]);
    if (OP == 1) store1(out, true, i, gelu_f(a[i]));
    if (OP == 2) ((float *)out)[i] = a[i] + b[i];
  }
}
void cu_silu_mul(usbx_backend *be, void *out, const float *gate, const float *up, int T, int F) {
  size_t n = (size_t)T * F;
  if (!n || T < 0 || F < 0) return;
  bool vec = ((uintptr_t)out & 7u) == 0 && aligned16(gate) && aligned16(up);
  k_ew<0><<<grid_for(n / 4 + 1, 256), 256, 0, S(be)>>>(out, gate, up, n, vec);
  CUDA_LAUNCHED();
}
/* silu(gate) * up from one bf16 [T, 2F] product, two columns per thread */
__global__ void k_silu_mul_gu(bf16 *out, const bf16 *gu, size_t T, size_t F) {
  const size_t pairs = T * (F / 2), step = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += step) {
    size_t t = i / (F / 2), j = (i - t * (F / 2)) * 2;
    __nv_bfloat162 g = *(const __nv_bfloat162 *)(gu + t * 2 * F + j), u = *(const __nv_bfloat162 *)(gu + t * 2 * F + F + j);
    float g0 = __low2float(g), g1 = __high2float(g);
    out[t * F + j] = f2bf(g0 / (1.0f + __expf(-g0)) * __low2float(u));
    out[t * F + j + 1] = f2bf(g1 / (1.0f + __expf(-g1)) * __high2float(u));
  }
}
void cu_silu_mul_gu(usbx_backend *be, void *out, const void *gu, int T, int F) {
  if (T <= 0 || F <= 0) return;
  if (F % 2) usbx_die("silu_mul_gu: F = %d must be even", F);
  size_t pairs = (size_t)T * (size_t)(F / 2);
  k_silu_mul_gu<<<grid_for(pairs, 256), 256, 0, S(be)>>>((bf16 *)out, (const bf16 *)gu, (size_t)T, (size_t)F);
  CUDA_LAUNCHED();
}
/* silu(gate) * up with all three in bf16 (the trainer's forward), 16-byte accesses */
__global__ void k_silu_mul_mm(bf16 *out, const bf16 *gate, const bf16 *up, size_t n, bool vec) {
  size_t n8 = vec ? n / 8 : 0;
  size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
  for (size_t i = tid; i < n8; i += step) {
    float g[8], u[8];
    bf8_to_f(((const uint4 *)gate)[i], g);
    bf8_to_f(((const uint4 *)up)[i], u);
    for (int k = 0; k < 8; k++) g[k] = silu_f(g[k]) * u[k];
    ((uint4 *)out)[i] = f_to_bf8(g);
  }
  for (size_t i = n8 * 8 + tid; i < n; i += step) out[i] = f2bf(silu_f(bf2f(gate[i])) * bf2f(up[i]));
}
void cu_silu_mul_mm(usbx_backend *be, void *out, const void *gate, const void *up, int T, int F) {
  size_t n = (size_t)T * F;
  if (!n || T < 0 || F < 0) return;
  bool vec = aligned16(out) && aligned16(gate) && aligned16(up);
  k_silu_mul_mm<<<grid_for(n / 8 + 1, 256), 256, 0, S(be)>>>((bf16 *)out, (const bf16 *)gate, (const bf16 *)up, n, vec);
  CUDA_LAUNCHED();
}
void cu_gelu_tanh(usbx_backend *be, void *out, const float *x, size_t n) {
  if (!n) return;
  bool vec = ((uintptr_t)out & 7u) == 0 && aligned16(x);
  k_ew<1><<<grid_for(n / 4 + 1, 256), 256, 0, S(be)>>>(out, x, NULL, n, vec);
  CUDA_LAUNCHED();
}
void cu_add(usbx_backend *be, float *x, const float *y, size_t n) {
  if (!n) return;
  bool vec = aligned16(x) && aligned16(y);
  k_ew<2><<<grid_for(n / 4 + 1, 256), 256, 0, S(be)>>>(x, x, y, n, vec);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- scatter / gather rows */
template <bool SCATTER>
__global__ void k_rows(float *dst, const float *src, const int32_t *idx, int cols, bool vec) {
  int i = blockIdx.x;
  size_t di = SCATTER ? (size_t)idx[i] : (size_t)i, si = SCATTER ? (size_t)i : (size_t)idx[i];
  float *d = dst + di * cols;
  const float *s = src + si * cols;
  if (vec) {
    for (int c = threadIdx.x * 4; c < cols; c += blockDim.x * 4) *(float4 *)(d + c) = *(const float4 *)(s + c);
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
  }
}
void cu_scatter_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols) {
  if (n <= 0 || cols <= 0) return;
  k_rows<true><<<n, 256, 0, S(be)>>>(dst, src, idx, cols, cols % 4 == 0 && aligned16(dst) && aligned16(src));
  CUDA_LAUNCHED();
}
void cu_gather_rows(usbx_backend *be, float *dst, const float *src, const int32_t *idx, int n, int cols) {
  if (n <= 0 || cols <= 0) return;
  k_rows<false><<<n, 256, 0, S(be)>>>(dst, src, idx, cols, cols % 4 == 0 && aligned16(dst) && aligned16(src));
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- argmax (ties -> lowest index) */
__device__ __forceinline__ void am_merge(float &v, int &i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) { v = v2; i = i2; }
}
template <int NT>
__global__ void __launch_bounds__(NT) k_argmax(int32_t *idx, const float *x, int n) {
  __shared__ float sv[NT / 32];
  __shared__ int si[NT / 32];
  const float *xr = x + (size_t)blockIdx.x * n;
  float bv = -INFINITY; int bi = 0x7fffffff;
  for (int c = threadIdx.x; c < n; c += NT) am_merge(bv, bi, xr[c], c);
  for (int o = 16; o; o >>= 1) am_merge(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
  if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = bv; si[threadIdx.x >> 5] = bi; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < NT / 32; w++) am_merge(bv, bi, sv[w], si[w]);
    idx[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;   /* all -inf/NaN: index 0 */
  }
}
void cu_argmax(usbx_backend *be, int32_t *idx, const float *x, int rows, int n) {
  if (rows <= 0) return;
  if (n >= 16384) k_argmax<1024><<<rows, 1024, 0, S(be)>>>(idx, x, n);
  else k_argmax<256><<<rows, 256, 0, S(be)>>>(idx, x, n);
  CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------- GEMV (M <= 4)
 * One warp per output column n (a weight row), 16-byte loads of W and x, fp32 sums.  Decode is
 * bandwidth-bound: W is read exactly once. */
/* WPR warps share one weight row (each takes every WPR-th 16-byte chunk) so that short outputs
 * (N = 512) still spread over all multiprocessors; partial sums meet in shared memory. */
template <int MR>
__global__ void __launch_bounds__(256) k_gemv(float *y, const bf16 *x, const bf16 *w, const float *bias, int N, int K, bool acc, int WPR) {
  __shared__ float red[8][MR];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * (8 / WPR) + warp / WPR, part = warp % WPR;
  const int K8 = K / 8, step = 32 * WPR;
  float s[MR];
#pragma unroll
  for (int m = 0; m < MR; m++) s[m] = 0.f;
  if (n < N) {
    const uint4 *wr = (const uint4 *)(w + (size_t)n * K);
    const uint4 *xr = (const uint4 *)x;
    int k = part * 32 + lane;
    for (; k + 3 * step < K8; k += 4 * step) {       /* four 16-byte weight loads in flight per lane */
      uint4 u[4];
#pragma unroll
      for (int q = 0; q < 4; q++) u[q] = __ldcs(wr + k + step * q);
#pragma unroll
      for (int q = 0; q < 4; q++) {
        float wf[8]; bf8_to_f(u[q], wf);
#pragma unroll
        for (int m = 0; m < MR; m++) {
          float xf[8]; bf8_to_f(xr[(size_t)m * K8 + k + step * q], xf);
#pragma unroll
          for (int e = 0; e < 8; e++) s[m] += wf[e] * xf[e];
        }
      }
    }
    for (; k < K8; k += step) {
      float wf[8]; bf8_to_f(__ldcs(wr + k), wf);
#pragma unroll
      for (int m = 0; m < MR; m++) {
        float xf[8]; bf8_to_f(xr[(size_t)m * K8 + k], xf);
#pragma unroll
        for (int e = 0; e < 8; e++) s[m] += wf[e] * xf[e];
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MR; m++) {
    float v = s[m];
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    s[m] = v;
  }
  if (WPR > 1) {
    if (lane == 0) {
#pragma unroll
      for (int m = 0; m < MR; m++) red[warp][m] = s[m];
    }
    __syncthreads();
    if (part == 0 && lane == 0) {
#pragma unroll
      for (int m = 0; m < MR; m++) {
        float v = 0.f;
        for (int q = 0; q < WPR; q++) v += red[warp + q][m];
        s[m] = v;
      }
    }
  }
  if (n < N && part == 0 && lane == 0) {
#pragma unroll
    for (int m = 0; m < MR; m++) {
      float *yp = y + (size_t)m * N + n;
      *yp = (acc ? *yp : 0.f) + s[m] + (bias ? bias[n] : 0.f);
    }
  }
}
bool cu_gemv(cudaStream_t s, float *y, const bf16 *x, const bf16 *w, const float *bias, int M, int N, int K, bool acc) {
  if (M < 1 || M > 4 || K % 8 || !aligned16(x) || !aligned16(w)) return false;
  int wpr = 1;                          /* enough blocks for ~2 per SM on an H100 */
  while (wpr < 8 && (size_t)N * wpr / 8 < 264 && K / 8 >= 64 * wpr) wpr *= 2;
  int rpb = 8 / wpr;
  unsigned g = (unsigned)((N + rpb - 1) / rpb);
  switch (M) {
    case 1: k_gemv<1><<<g, 256, 0, s>>>(y, x, w, bias, N, K, acc, wpr); break;
    case 2: k_gemv<2><<<g, 256, 0, s>>>(y, x, w, bias, N, K, acc, wpr); break;
    case 3: k_gemv<3><<<g, 256, 0, s>>>(y, x, w, bias, N, K, acc, wpr); break;
    default: k_gemv<4><<<g, 256, 0, s>>>(y, x, w, bias, N, K, acc, wpr); break;
  }
  CUDA_LAUNCHED();
  return true;
}

/* ---------------------------------------------------------------- add_row, silu (f32) */
__global__ void k_add_row(float *x, const float *row, int T, int D, bool vec) {
  if (vec) {
    int d4 = D / 4;
    size_t n = (size_t)T * d4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
      float4 a = ((float4 *)x)[i], b = ((const float4 *)row)[i % d4];
      a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
      ((float4 *)x)[i] = a;
    }
  } else {
    size_t n = (size_t)T * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
      x[i] += row[i % D];
  }
}
void cu_add_row(usbx_backend *be, float *x, const float *row, int T, int D) {
  if (T <= 0 || D <= 0) return;
  bool vec = D % 4 == 0 && aligned16(x) && aligned16(row);
  k_add_row<<<grid_for((size_t)T * D / (vec ? 4 : 1), 256), 256, 0, S(be)>>>(x, row, T, D, vec);
  CUDA_LAUNCHED();
}
__global__ void k_silu(float *out, const float *x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = silu_f(x[i]);
}
void cu_silu(usbx_backend *be, float *out, const float *x, size_t n) {
  if (!n) return;
  k_silu<<<grid_for(n, 256), 256, 0, S(be)>>>(out, x, n);
  CUDA_LAUNCHED();
}
