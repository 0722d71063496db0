/* bagel_internal.h — the model's weight layout, shared by the loader, the tensor enumerator
 * and the forward passes (not part of the public API). */
#ifndef USBX_BAGEL_INTERNAL_H
#define USBX_BAGEL_INTERNAL_H
#include "bagel.h"

typedef struct {
  void *q_w, *k_w, *v_w, *o_w, *gate, *up, *down;   /* mm */
  float *q_b, *k_b, *v_b, *q_norm, *k_norm, *in_norm, *post_norm;  /* f32 */
  bool fused;   /* q|k|v, their biases and gate|up sit back to back (k_w, v_w, k_b, v_b, up are views) */
} expert_w;

typedef struct { expert_w e[2]; } layer_w;   /* e[0] = und, e[1] = gen (*_moe_gen) */

typedef struct {
  void *q_w, *k_w, *v_w, *o_w, *fc1_w, *fc2_w;                       /* mm */
  float *q_b, *k_b, *v_b, *o_b, *fc1_b, *fc2_b, *ln1_w, *ln1_b, *ln2_w, *ln2_b;
} vit_layer_w;

struct usbx_bagel {
  usbx_bagel_config cfg;
  usbx_backend *be;
  unsigned parts;
  void *embed, *lm_head;           /* mm [V, D] */
  float *norm[2];                  /* final norms (und, gen) */
  layer_w *layers;
  /* scratch, grown on demand */
  int cap_T;
  float *x, *q, *k, *v, *tmp, *gate, *up;     /* f32 */
  void *h_mm, *q_mm, *o_mm, *act_mm;         /* mm */
  int32_t *d_ids, *d_pos;
  float *logits; int cap_logits_T;
  /* generation side */
  void *te_w1, *te_w2, *vae2llm_w, *llm2vae_w;            /* mm */
  /* fp32 copies of those four for inference where mm is not f32 (the heads are cheap and their
   * inputs, the noisy latents and timestep features, would otherwise be rounded to bf16) */
  float *te_w1_32, *te_w2_32, *vae2llm_w32, *llm2vae_w32;
  float *te_b1, *te_b2, *vae2llm_b, *llm2vae_b, *latent_pos; /* f32 */
  /* understanding side */
  void *patch_w, *conn_w1, *conn_w2;                       /* mm */
  float *patch_b, *vit_pos, *post_ln_w, *post_ln_b, *conn_b1, *conn_b2, *vit_pos_embed;
  vit_layer_w *vit;
};

struct usbx_ctx {
  int len, pos, cap;
  void **k, **v;   /* per layer, [cap, Hkv, d] mm */
};


/* How `usbx-ckpt init` fills a tensor. */
typedef enum { USBX_INIT_NORMAL, USBX_INIT_ZERO, USBX_INIT_ONE, USBX_INIT_SINCOS_LATENT, USBX_INIT_SINCOS_VIT } usbx_init_kind;

/* One checkpoint tensor: its name and shape, how init fills it, and (when enumerated for a
 * model) where the loader puts it and whether it is a matmul operand (mm) or f32. */
typedef struct {
  char name[160];
  int ndim;
  int64_t shape[4];
  usbx_init_kind init;
  void **dst;
  bool mm;
} usbx_wdesc;
typedef struct { usbx_wdesc *v; int n, cap; } usbx_wlist;

/* Every tensor of ema.safetensors that the given parts need, in a fixed order.  m may be NULL
 * (names and shapes only). */
void usbx_bagel_enumerate(const usbx_bagel_config *c, unsigned parts, usbx_bagel *m, usbx_wlist *out);
/* The decoder layer a tensor name belongs to (language_model.model.layers.L.*), or -1. */
int usbx_bagel_layer_of(const char *name);
/* Frees every decoder layer's weights and clears their pointers (and the fused layout): ZeRO-3
 * training points them at gathered copies instead, and clears them again before usbx_bagel_free. */
void usbx_bagel_drop_layer_weights(usbx_bagel *m);
/* The shared forward of one block of T tokens against context c (bagel.c): rows [0, n_und)
 * und expert, the rest gen; m->x holds the input embeddings and m->d_pos the positions; on
 * return m->x holds the final-normed hidden states.  K/V go to cache rows [len, len+T); the
 * context grows only when update_cache. */
void usbx_bagel_forward_block(usbx_bagel *m, usbx_ctx *c, int T, int n_und, bool causal, bool update_cache);
/* Advances a context's next RoPE position (an image block takes one position). */
void usbx_bagel_ctx_advance(usbx_ctx *c, int n);
/* The 256 sinusoidal features of a timestep (mutils.py): [cos(sigma f_j), sin(sigma f_j)]. */
void usbx_timestep_features(float sigma, float *feat);
/* Time-embedding rows of n sigmas into out (device f32 [n, D]). */
void usbx_bagel_time_embed(usbx_bagel *m, const float *sigmas, int n, float *out);
/* Uncached image queries of nb contexts (the CFG branches) in one forward; see bagel.c. */
void usbx_bagel_forward_branches(usbx_bagel *m, usbx_ctx **cs, int nb, int n_mark, int n_lat);
/* Grows the per-forward scratch buffers to T tokens. */
void usbx_bagel_scratch(usbx_bagel *m, int T);
/* y [M, N] = x [M, K] (f32) · Wᵀ + b through one of the generation heads: fp32 operands where an
 * fp32 copy w32 exists, else x converted into scratch_mm and w_mm. */
void usbx_bagel_head(usbx_bagel *m, float *y, const float *x, const void *w_mm, const float *w32, const float *b,
                     int M, int N, int K, void *scratch_mm);
/* bytes usbx_bagel_scratch would hold for T rows */
size_t usbx_bagel_scratch_bytes(const usbx_bagel *m, int T);

/* Every tensor of ae.safetensors (encoder.*, decoder.*) for these parameters. */
void usbx_ae_enumerate(const usbx_ae_config *ae, usbx_wlist *out);
/* The fixed 2-D sin-cos table (spec 7.2): grid side G, width D, row m = i*G + j. */
void usbx_sincos_2d(float *table, int G, int D);

#endif
