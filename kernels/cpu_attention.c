/* cpu_attention.c — packed attention with the ops.h visibility rule, fp32, one query row at a
 * time with a numerically stable softmax (max subtracted).  Threads over heads. */
#include "cpu_ops.h"
#include "util.h"
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct { float *out; const float *q, *k, *v; const usbx_attn_args *a; int h0, h1; } job;

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
    jobs[t] = (job){out, q, k, v, a, (int)(a->n_heads * t / nt), (int)(a->n_heads * (t + 1) / nt)};
    if (t > 0 && pthread_create(&th[t], NULL, run, &jobs[t]) != 0) usbx_die("pthread_create failed");
  }
  run(&jobs[0]);
  for (int t = 1; t < nt; t++) pthread_join(th[t], NULL);
}
