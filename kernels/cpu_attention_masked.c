/* cpu_attention_masked.c — packed training attention (spec 4.2-4.3) with the per-token
 * visibility rule of ops.h, its log-sum-exp, and its backward; fp32 reference.
 *
 * Work is done in blocks of QB query rows: the block's visibility mask is built once and reused
 * by every head; per head, S = scale·Q·Kᵀ over all n keys and the products with V go through
 * OpenBLAS (threaded inside), the masked softmax in between is a scalar loop (sums in double).
 * Invisible keys get probability exactly 0.  Memory: two [QB, n] float buffers and a [QB, n]
 * byte mask, independent of the number of heads.
 *
 * Backward (dout = dO):  P = exp(S − lse) on visible keys;  Dᵢ = Σ_c dOᵢ·Oᵢ;
 *   dV_g += Pᵀ·dO_h ;  dS = P ∘ (dO_h·V_gᵀ − D) ;  dQ_h = scale·dS·K_g ;  dK_g += scale·dSᵀ·Q_h,
 * with dK/dV of a KV head summed over the query heads of its group.  dq may alias q; dk, dv
 * must not alias anything (they are zeroed first).
 * On the cpu-bf16 backend (be->mm_rounded) the values the CUDA flash kernels keep in bf16 are
 * rounded: the forward's unnormalised P for P·V, and the backward's dO, P (for Pᵀ·dO) and dS. */
#include "cpu_ops.h"
#include "util.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { QB = 128 };

static inline int visible(const usbx_attn_masked_args *a, int q, int k) {
  return usbx_attn_visible(a->order[q], a->sample[q], a->split[q], a->mode[q], a->order[k], a->sample[k], a->split[k], a->mode[k]);
}

/* mask[i*n + k] for queries q0..q0+nb-1; dies when a query sees nothing (invalid metadata:
 * every token sees at least itself). */
static void build_mask(unsigned char *mask, const usbx_attn_masked_args *a, int q0, int nb) {
  int n = a->n;
  for (int i = 0; i < nb; i++) {
    unsigned char *mr = mask + (size_t)i * n;
    int cnt = 0;
    for (int k = 0; k < n; k++) cnt += (mr[k] = (unsigned char)visible(a, q0 + i, k));
    if (!cnt) usbx_die("attention_masked: query token %d sees no key (invalid order/sample/split/mode metadata)", q0 + i);
  }
}

static inline float bf16_round(float x) { return usbx_bf16_to_f32(usbx_f32_to_bf16(x)); }

static void check_args(const usbx_attn_masked_args *a) {
  if (a->n < 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->head_dim <= 0 || a->n_heads % a->n_kv_heads)
    usbx_die("attention_masked: bad shape n=%d heads=%d kv_heads=%d head_dim=%d", a->n, a->n_heads, a->n_kv_heads,
             a->head_dim);
}

void usbx_cpu_attention_masked(usbx_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
                               const usbx_attn_masked_args *a) {
  check_args(a);
  int n = a->n, H = a->n_heads, Hkv = a->n_kv_heads, d = a->head_dim, group = H / Hkv;
  if (n == 0) return;
  const float *Q = q, *K = k, *V = v;
  float *O = out;
  float scale = 1.0f / sqrtf((float)d);
  int qb = n < QB ? n : QB;
  float *S = xmalloc(sizeof(float) * (size_t)qb * n);
  unsigned char *mask = xmalloc((size_t)qb * n);
  for (int q0 = 0; q0 < n; q0 += qb) {
    int nb = n - q0 < qb ? n - q0 : qb;
    build_mask(mask, a, q0, nb);
    for (int h = 0; h < H; h++) {
      int g = h / group;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, d, scale, Q + ((size_t)q0 * H + h) * d, H * d,
                  K + (size_t)g * d, Hkv * d, 0.0f, S, n);
      for (int i = 0; i < nb; i++) {
        float *sr = S + (size_t)i * n;
        const unsigned char *mr = mask + (size_t)i * n;
        float m = -INFINITY;
        for (int j = 0; j < n; j++) if (mr[j] && sr[j] > m) m = sr[j];
        double sum = 0;
        for (int j = 0; j < n; j++) {
          float e = mr[j] ? expf(sr[j] - m) : 0.0f;
          sr[j] = e;
          sum += e;
        }
        float inv = (float)(1.0 / sum);
        /* the flash kernel's P·V takes the unnormalised probabilities in bf16 */
        if (be->mm_rounded) for (int j = 0; j < n; j++) sr[j] = bf16_round(sr[j]);
        for (int j = 0; j < n; j++) sr[j] *= inv;
        if (lse) lse[(size_t)h * n + q0 + i] = (float)((double)m + log(sum));
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, d, n, 1.0f, S, n, V + (size_t)g * d, Hkv * d, 0.0f,
                  O + ((size_t)q0 * H + h) * d, H * d);
    }
  }
  free(mask);
  free(S);
}

void usbx_cpu_attention_masked_bwd(usbx_backend *be, float *dq, float *dk, float *dv, const float *dout, const void *q,
                                   const void *k, const void *v, const void *out, const float *lse,
                                   const usbx_attn_masked_args *a) {
  check_args(a);
  int n = a->n, H = a->n_heads, Hkv = a->n_kv_heads, d = a->head_dim, group = H / Hkv;
  if (dk) memset(dk, 0, sizeof(float) * (size_t)n * Hkv * d);
  if (dv) memset(dv, 0, sizeof(float) * (size_t)n * Hkv * d);
  if (n == 0 || (!dq && !dk && !dv)) return;
  const float *Q = q, *K = k, *V = v, *O = out;
  float scale = 1.0f / sqrtf((float)d);
  int qb = n < QB ? n : QB;
  float *P = xmalloc(sizeof(float) * (size_t)qb * n), *dP = xmalloc(sizeof(float) * (size_t)qb * n);
  float *D = xmalloc(sizeof(float) * (size_t)qb);
  const bool rounded = be->mm_rounded;
  float *dOr = rounded ? xmalloc(sizeof(float) * (size_t)qb * d) : NULL;
  unsigned char *mask = xmalloc((size_t)qb * n);
  for (int q0 = 0; q0 < n; q0 += qb) {
    int nb = n - q0 < qb ? n - q0 : qb;
    build_mask(mask, a, q0, nb);
    for (int h = 0; h < H; h++) {
      int g = h / group;
      const float *Qh = Q + ((size_t)q0 * H + h) * d, *dOh = dout + ((size_t)q0 * H + h) * d;
      const float *Kg = K + (size_t)g * d, *Vg = V + (size_t)g * d;
      int ldo = H * d;
      if (rounded) {   /* the flash kernels take dO in bf16 */
        for (int i = 0; i < nb; i++)
          for (int c = 0; c < d; c++) dOr[(size_t)i * d + c] = bf16_round(dOh[(size_t)i * H * d + c]);
      }
      const float *dOp = rounded ? dOr : dOh;
      int ldp = rounded ? d : ldo;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, d, scale, Qh, H * d, Kg, Hkv * d, 0.0f, P, n);
      for (int i = 0; i < nb; i++) {
        float *pr = P + (size_t)i * n, l = lse[(size_t)h * n + q0 + i];
        const unsigned char *mr = mask + (size_t)i * n;
        for (int j = 0; j < n; j++) pr[j] = mr[j] ? expf(pr[j] - l) : 0.0f;
        const float *oi = O + ((size_t)(q0 + i) * H + h) * d, *gi = dOh + (size_t)i * H * d;
        double s = 0;
        for (int c = 0; c < d; c++) s += (double)gi[c] * oi[c];
        D[i] = (float)s;
      }
      if (dq || dk) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, d, 1.0f, dOp, ldp, Vg, Hkv * d, 0.0f, dP, n);
        for (int i = 0; i < nb; i++) {
          float *dr = dP + (size_t)i * n;
          const float *pr = P + (size_t)i * n;
          for (int j = 0; j < n; j++) dr[j] = pr[j] * (dr[j] - D[i]);
          if (rounded) for (int j = 0; j < n; j++) dr[j] = bf16_round(dr[j]);
        }
      }
      if (dv) {
        if (rounded) for (size_t e = 0; e < (size_t)nb * n; e++) P[e] = bf16_round(P[e]);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, nb, 1.0f, P, n, dOp, ldp, 1.0f, dv + (size_t)g * d, Hkv * d);
      }
      if (!dq && !dk) continue;
      /* dk before dq: these rows of Q_h are not read again after dq overwrites them */
      if (dk)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, nb, scale, dP, n, Qh, H * d, 1.0f, dk + (size_t)g * d,
                    Hkv * d);
      if (dq)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, d, n, scale, dP, n, Kg, Hkv * d, 0.0f,
                    dq + ((size_t)q0 * H + h) * d, H * d);
    }
  }
  free(dOr);
  free(mask);
  free(D);
  free(dP);
  free(P);
}
