/* cpu_backward.c — backward passes of the training ops (fp32 reference): matmul, RMSNorm,
 * LayerNorm, per-head QK-norm + RoPE, SwiGLU gate, GELU (tanh), SiLU, embedding, and the text
 * cross entropy.  Each one is the exact derivative of the forward in cpu_matmul.c, cpu_norm.c and
 * cpu_elementwise.c.  Reductions accumulate in double (the reference may be more precise than the
 * forward it differentiates, never less).  Conventions in ops.h: "+=" outputs accumulate,
 * "overwrite" outputs are written, NULL outputs are skipped. */
#include "cpu_ops.h"
#include "util.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* dx[M,K] (+)= dy·W ; dw[N,K] (+)= dyᵀ·x ; db[N] += Σ_rows dy.  On the CPU mm is f32, so dy_mm and
 * dy hold the same numbers; either may be NULL (the other is then used). */
void usbx_cpu_matmul_bwd(usbx_backend *be, float *dx, float *dw, float *db, const void *dy_mm, const float *dy,
                         const void *x, const void *w, int M, int N, int K, bool dx_add, bool dw_add) {
  const float *g = dy_mm ? (const float *)dy_mm : dy;
  const float *gf = dy ? dy : (const float *)dy_mm;
  if (!g || M <= 0 || N <= 0) return;
  if (dx && K > 0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, g, N, (const float *)w, K, dx_add ? 1.0f : 0.0f, dx, K);
  if (dw && K > 0)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, g, N, (const float *)x, K, dw_add ? 1.0f : 0.0f, dw, K);
  if (db) {
    double *acc = xcalloc((size_t)N, sizeof(double));
    for (int i = 0; i < M; i++) {
      const float *r = gf + (size_t)i * N;
      for (int j = 0; j < N; j++) acc[j] += r[j];
    }
    for (int j = 0; j < N; j++) db[j] += (float)acc[j];
    free(acc);
  }
}

/* y = x·r·w with r = (mean(x²) + eps)^(-1/2):
 *   dx_j += r·w_j·dy_j − x_j·r³/dim · Σ_i dy_i·w_i·x_i ;  dw_i += dy_i·x_i·r. */
static void rms_row_bwd(float *dx, double *dw, const float *dy, const float *x, const float *w, int dim, float eps) {
  float ss = 0;   /* the forward's own rms, computed the same way */
  for (int i = 0; i < dim; i++) ss += x[i] * x[i];
  float r = 1.0f / sqrtf(ss / (float)dim + eps);
  double dot = 0;
  for (int i = 0; i < dim; i++) dot += (double)dy[i] * w[i] * x[i];
  if (dx) {
    double c = dot * (double)r * r * r / dim;
    for (int j = 0; j < dim; j++) dx[j] += (float)((double)r * w[j] * dy[j] - c * x[j]);
  }
  if (dw) for (int i = 0; i < dim; i++) dw[i] += (double)dy[i] * x[i] * r;
}

void usbx_cpu_rmsnorm_bwd(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, const float *x, const float *w,
                          int rows, int dim, float eps) {
  if (dim <= 0) return;
  double *acc = dw ? xcalloc((size_t)dim, sizeof(double)) : NULL;
  for (int r = 0; r < rows; r++)
    rms_row_bwd(dx ? dx + (size_t)r * dim : NULL, acc, dy + (size_t)r * dim, x + (size_t)r * dim, w, dim, eps);
  if (dw) {
    for (int i = 0; i < dim; i++) dw[i] += (float)acc[i];
    free(acc);
  }
  if (dx && dx_mm) be->to_mm(be, dx_mm, dim, dx, rows, dim);
}

/* y = x̂·w + b, x̂ = (x − mean)·inv, inv = (var + eps)^(-1/2) (biased variance):
 *   g = dy·w ;  dx += inv·(g − mean(g) − x̂·mean(g·x̂)) ;  dw += dy·x̂ ;  db += dy. */
void usbx_cpu_layernorm_bwd(usbx_backend *be, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                            int rows, int dim, float eps) {
  if (dim <= 0) return;
  double *adw = dw ? xcalloc((size_t)dim, sizeof(double)) : NULL;
  double *adb = db ? xcalloc((size_t)dim, sizeof(double)) : NULL;
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * dim, *gr = dy + (size_t)r * dim;
    float mean = 0, var = 0;   /* the forward's statistics, computed the same way */
    for (int i = 0; i < dim; i++) mean += xr[i];
    mean /= (float)dim;
    for (int i = 0; i < dim; i++) { float dd = xr[i] - mean; var += dd * dd; }
    var /= (float)dim;
    float inv = 1.0f / sqrtf(var + eps);
    double mg = 0, mgx = 0;
    for (int i = 0; i < dim; i++) {
      double xh = (double)(xr[i] - mean) * inv, g = (double)gr[i] * w[i];
      mg += g; mgx += g * xh;
      if (adw) adw[i] += (double)gr[i] * xh;
      if (adb) adb[i] += gr[i];
    }
    mg /= dim; mgx /= dim;
    if (dx) {
      float *dr = dx + (size_t)r * dim;
      for (int i = 0; i < dim; i++) {
        double xh = (double)(xr[i] - mean) * inv, g = (double)gr[i] * w[i];
        dr[i] += (float)(inv * (g - mg - xh * mgx));
      }
    }
  }
  if (dw) { for (int i = 0; i < dim; i++) dw[i] += (float)adw[i]; free(adw); }
  if (db) { for (int i = 0; i < dim; i++) db[i] += (float)adb[i]; free(adb); }
}

/* Forward: t = x·r·w (per head), then out[j] = a·c − b·s, out[j+h] = b·c + a·s with a = t[j],
 * b = t[j+h].  Backward of the rotation: da = dout[j]·c + dout[j+h]·s, db = dout[j+h]·c − dout[j]·s;
 * then the RMSNorm backward.  dx is overwritten (it may alias x, or dy when dy_stride is
 * heads·d), dw accumulates. */
void usbx_cpu_qk_norm_rope_bwd(usbx_backend *be, float *dx, void *dx_mm, float *dw, const float *dy, int dy_stride, const float *x,
                               const float *w, const int32_t *pos, int T, int heads, int d, float eps, float theta) {
  if (d <= 0 || (d & 1)) usbx_die("qk_norm_rope_bwd: head_dim %d must be even", d);
  int half = d / 2;
  float *inv_freq = xmalloc(sizeof(float) * (size_t)half * 3), *cs = inv_freq + half, *sn = cs + half;
  float *dt = xmalloc(sizeof(float) * (size_t)d * 2), *gx = dt + d;
  double *acc = dw ? xcalloc((size_t)d, sizeof(double)) : NULL;
  /* the same fp32 frequencies and angles as the forward */
  for (int j = 0; j < half; j++) inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)d);
  for (int t = 0; t < T; t++) {
    for (int j = 0; j < half; j++) {
      float ang = (float)pos[t] * inv_freq[j];
      cs[j] = cosf(ang); sn[j] = sinf(ang);
    }
    for (int h = 0; h < heads; h++) {
      const float *go = dy + (size_t)t * dy_stride + (size_t)h * d;
      const float *xh = x + ((size_t)t * heads + h) * d;
      for (int j = 0; j < half; j++) {
        dt[j] = go[j] * cs[j] + go[j + half] * sn[j];
        dt[j + half] = go[j + half] * cs[j] - go[j] * sn[j];
      }
      memset(gx, 0, sizeof(float) * (size_t)d);
      rms_row_bwd(dx ? gx : NULL, acc, dt, xh, w, d, eps);
      if (dx) memcpy(dx + ((size_t)t * heads + h) * d, gx, sizeof(float) * (size_t)d);   /* dx may alias x or dy */
    }
  }
  if (dw) { for (int i = 0; i < d; i++) dw[i] += (float)acc[i]; free(acc); }
  free(dt);
  free(inv_freq);
  if (dx && dx_mm) be->to_mm(be, dx_mm, heads * d, dx, T, heads * d);
}

/* out = silu(g)·u, silu(g) = g·σ(g), silu'(g) = σ(g)·(1 + g·(1 − σ(g))). */
void usbx_cpu_silu_mul_bwd(usbx_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up, int T, int F) {
  size_t n = (size_t)T * F;
  for (size_t i = 0; i < n; i++) {
    float g = gate[i], u = up[i], s = 1.0f / (1.0f + expf(-g)), go = dout[i];   /* read all: outputs may alias inputs */
    if (dup) dup[i] = go * g * s;
    if (dgate) dgate[i] = go * u * s * (1.0f + g * (1.0f - s));
  }
}

/* mm is f32 on the CPU */
void usbx_cpu_silu_mul_bwd_mm(usbx_backend *be, void *dgate, void *dup, const void *dout, const void *gate, const void *up, int T, int F) {
  usbx_cpu_silu_mul_bwd(be, dgate, dup, dout, gate, up, T, F);
}
void usbx_cpu_matmul_dx_mm(usbx_backend *be, void *dx, const void *dy, const void *w, int M, int N, int K) {
  usbx_cpu_matmul_bwd(be, dx, NULL, NULL, dy, NULL, NULL, w, M, N, K, false, true);
}

/* gelu(x) = ½x(1 + tanh u), u = k(x + c·x³):
 * gelu'(x) = ½(1 + tanh u) + ½x(1 − tanh² u)·k(1 + 3c·x²). */
void usbx_cpu_gelu_tanh_bwd(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n) {
  const float k = 0.7978845608028654f, c = 0.044715f;
  for (size_t i = 0; i < n; i++) {
    float v = x[i], th = tanhf(k * (v + c * v * v * v));
    dx[i] = dy[i] * (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * k * (1.0f + 3.0f * c * v * v));
  }
}

void usbx_cpu_silu_bwd(usbx_backend *be, float *dx, const float *dy, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float s = 1.0f / (1.0f + expf(-x[i]));
    dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}

/* dtable[ids[t], :] += dout[t, :]; repeated ids accumulate. */
void usbx_cpu_embed_bwd(usbx_backend *be, float *dtable, const float *dout, const int32_t *ids, int T, int D) {
  for (int t = 0; t < T; t++) {
    float *row = dtable + (size_t)ids[t] * D;
    const float *g = dout + (size_t)t * D;
    for (int i = 0; i < D; i++) row[i] += g[i];
  }
}

/* loss[i] = logsumexp(logits[i]) − logits[i, labels[i]] ; dlogits = (softmax − onehot)·scale.
 * Max-subtracted, sums in double.  dlogits may alias logits (everything read first per row);
 * loss or dlogits may be NULL.  A label outside [0, V) is a caller bug and dies. */
void usbx_cpu_cross_entropy(usbx_backend *be, float *loss, float *dlogits, const float *logits, const int32_t *labels, int n, int V,
                            float scale) {
  for (int i = 0; i < n; i++) {
    const float *xr = logits + (size_t)i * V;
    int lab = labels[i];
    if (lab < 0 || lab >= V) usbx_die("cross_entropy: label %d of row %d outside [0, %d)", lab, i, V);
    float m = -INFINITY;
    for (int j = 0; j < V; j++) if (xr[j] > m) m = xr[j];
    double sum = 0;
    for (int j = 0; j < V; j++) sum += exp((double)xr[j] - m);
    double lse = (double)m + log(sum);
    if (loss) loss[i] = (float)(lse - xr[lab]);
    if (dlogits) {
      float *dr = dlogits + (size_t)i * V;
      for (int j = 0; j < V; j++) {
        double p = exp((double)xr[j] - lse);
        dr[j] = (float)((p - (j == lab ? 1.0 : 0.0)) * scale);
      }
    }
  }
}
