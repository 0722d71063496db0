/* cpu_attention.c — packed attention with the ops.h visibility rule, fp32, one query row at a
 * time with a numerically stable softmax (max subtracted).  Threads over heads. */
#include "cpu_ops.h"
#include "util.h"
#include "tensor.h"
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <cblas.h>

typedef struct { float *out; const float *q, *k, *v; const usbx_attn_args *a; int h0, h1; bool round_p; } job;

static void *run(void *p) {
  job *j = p;
  const usbx_attn_args *a = j->a;
  int H = a->n_heads, Hkv = a->n_kv_heads, d = a->head_dim, group = H / Hkv;
  float scale = 1.0f / sqrtf((float)d);
  float *s = xmalloc(sizeof(float) * (size_t)(a->kv_len > 0 ? a->kv_len : 1));
  for (int h = j->h0; h < j->h1; h++) {
    int g = h / group;
    for (int i = 0; i < a->n_q; i++) {
      int hi = a->causal ? a->q_start + i + 1 : a->q_start + a->n_q;
      if (hi > a->kv_len) hi = a->kv_len;
      const float *qi = j->q + ((size_t)i * H + h) * d;
      float m = -INFINITY;
      for (int t = 0; t < hi; t++) {
        const float *kt = j->k + ((size_t)t * Hkv + g) * d;
        float dot = 0;
        for (int c = 0; c < d; c++) dot += qi[c] * kt[c];
        s[t] = dot * scale;
        if (s[t] > m) m = s[t];
      }
      float sum = 0;
      for (int t = 0; t < hi; t++) { s[t] = expf(s[t] - m); sum += s[t]; }
      float *oi = j->out + ((size_t)i * H + h) * d;
      for (int c = 0; c < d; c++) oi[c] = 0;
      if (j->round_p) {
        /* as the CUDA flash kernel: unnormalised probabilities rounded to bf16 for P·V, the
         * fp32 sum applied at the end */
        for (int t = 0; t < hi; t++) {
          const float *vt = j->v + ((size_t)t * Hkv + g) * d;
          float p = usbx_bf16_to_f32(usbx_f32_to_bf16(s[t]));
          for (int c = 0; c < d; c++) oi[c] += p * vt[c];
        }
        for (int c = 0; c < d; c++) oi[c] /= sum;
        continue;
      }
      for (int t = 0; t < hi; t++) {
        const float *vt = j->v + ((size_t)t * Hkv + g) * d;
        float p = s[t] / sum;
        for (int c = 0; c < d; c++) oi[c] += p * vt[c];
      }
    }
  }
  free(s);
  return NULL;
}

void usbx_cpu_attention(usbx_backend *be, void *out, const void *q, const void *k, const void *v, const usbx_attn_args *a) {
  long nt = sysconf(_SC_NPROCESSORS_ONLN);
  if (nt < 1) nt = 1;
  if (nt > a->n_heads) nt = a->n_heads;
  if ((size_t)a->n_q * (size_t)a->kv_len < 4096) nt = 1;   /* not worth a thread */
  job jobs[64];
  pthread_t th[64];
  if (nt > 64) nt = 64;
  for (int t = 0; t < nt; t++) {
    jobs[t] = (job){out, q, k, v, a, (int)(a->n_heads * t / nt), (int)(a->n_heads * (t + 1) / nt), be->mm_rounded};
    if (t > 0 && pthread_create(&th[t], NULL, run, &jobs[t]) != 0) usbx_die("pthread_create failed");
  }
  run(&jobs[0]);
  for (int t = 1; t < nt; t++) pthread_join(th[t], NULL);
}

/* attention_f32: the same rule, blocked for the autoencoder's long single-head attention
 * (16384 positions at 1024x1024): per head and block of QB query rows, S = scale·Q·Kᵀ over the
 * block's widest key range and O = P·V go through OpenBLAS (threaded inside); the softmax in
 * between is a scalar loop with keys beyond a row's limit at probability exactly 0. */
void usbx_cpu_attention_f32(usbx_backend *be, float *out, const float *q, const float *k, const float *v, const usbx_attn_args *a) {
  enum { QB = 256 };
  int H = a->n_heads, Hkv = a->n_kv_heads, d = a->head_dim, group = H / Hkv;
  if (a->n_q <= 0 || a->kv_len <= 0) return;
  float scale = 1.0f / sqrtf((float)d);
  int qb = a->n_q < QB ? a->n_q : QB;
  float *S = xmalloc(sizeof(float) * (size_t)qb * a->kv_len);
  for (int h = 0; h < H; h++) {
    int g = h / group;
    for (int q0 = 0; q0 < a->n_q; q0 += qb) {
      int nb = a->n_q - q0 < qb ? a->n_q - q0 : qb;
      int hi = a->causal ? a->q_start + q0 + nb : a->q_start + a->n_q;
      if (hi > a->kv_len) hi = a->kv_len;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, hi, d, scale, q + ((size_t)q0 * H + h) * d, H * d,
                  k + (size_t)g * d, Hkv * d, 0.0f, S, hi);
      for (int i = 0; i < nb; i++) {
        int lim = a->causal ? a->q_start + q0 + i + 1 : hi;
        if (lim > hi) lim = hi;
        float *sr = S + (size_t)i * hi, m = -INFINITY;
        for (int j = 0; j < lim; j++) if (sr[j] > m) m = sr[j];
        double sum = 0;
        for (int j = 0; j < lim; j++) { sr[j] = expf(sr[j] - m); sum += sr[j]; }
        float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
        for (int j = 0; j < lim; j++) sr[j] *= inv;
        for (int j = lim; j < hi; j++) sr[j] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, d, hi, 1.0f, S, hi, v + (size_t)g * d, Hkv * d, 0.0f,
                  out + ((size_t)q0 * H + h) * d, H * d);
    }
  }
  free(S);
}
