/* train.c — training forward and backward (spec 9).  Tokens are processed in expert order (all
 * und tokens, i.e. text and ViT, first; then the VAE latents) so each expert runs on one
 * contiguous row range; attention uses per-token metadata (packed index, sample, split, mode),
 * so the reordering changes nothing.  Every activation the backward needs is kept. */
#include "train.h"
#include "bagel_internal.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* written: G was asked for g since the last zero_grads; dirty: since the last memset of g; stale:
 * zero_grads found it dirty and left it so, as zero in meaning, for its first writer to overwrite
 * (G_dw) or clear (G), or settle_grads to clear */
typedef struct { void *w; float *g; int64_t n; char *name; void **dst; bool written, dirty, stale; } gslot;

/* Step buffers.  A step allocates its activations in nearly the same pattern every time, so
 * buffers are kept between steps as spares instead of being returned to the device allocator: no
 * cudaMalloc/cudaFree inside the training loop once the sizes are known.  New blocks are rounded
 * up to eight classes per power of two (at most 12.5 % slack); a request takes the smallest spare
 * that holds it and is at most twice its size, so batches whose token counts differ a little
 * reuse the same blocks. */
typedef struct { void *p; size_t cap; } pblk;
typedef struct { usbx_backend *be; pblk *used, *spare; int n, cap, ns, scap; } pool;
static size_t size_class(size_t b) {
  if (b <= 256) return 256;
  size_t top = 256;
  while (top * 2 <= b) top *= 2;
  size_t step = top / 8;
  return (b + step - 1) / step * step;
}
static void *P_alloc(pool *P, size_t bytes) {
  size_t c = size_class(bytes);
  void *p = NULL;
  int best = -1;
  for (int i = 0; i < P->ns; i++)
    if (P->spare[i].cap >= bytes && P->spare[i].cap <= 2 * c && (best < 0 || P->spare[i].cap < P->spare[best].cap)) best = i;
  if (best >= 0) { p = P->spare[best].p; c = P->spare[best].cap; P->spare[best] = P->spare[--P->ns]; }
  if (!p) p = P->be->alloc(P->be, c);
  if (P->n == P->cap) { P->cap = P->cap ? 2 * P->cap : 256; P->used = xrealloc(P->used, sizeof *P->used * (size_t)P->cap); }
  P->used[P->n++] = (pblk){p, c};
  return p;
}
/* end of a step: every buffer becomes spare */
static void P_release(pool *P) {
  if (P->ns + P->n > P->scap) { P->scap = P->ns + P->n + 64; P->spare = xrealloc(P->spare, sizeof *P->spare * (size_t)P->scap); }
  for (int i = 0; i < P->n; i++) P->spare[P->ns++] = P->used[i];
  P->n = 0;
}
static void P_destroy(pool *P) {
  P_release(P);
  for (int i = 0; i < P->ns; i++) P->be->free(P->be, P->spare[i].p);
  free(P->used); free(P->spare);
  memset(P, 0, sizeof *P);
}
struct usbx_trainer {
  usbx_bagel *m;
  usbx_backend *be;
  gslot *slots;
  int nslots, cap;        /* open addressing on the weight pointer */
  usbx_wlist wl;
  pool pool;              /* step buffers, kept between steps */
  bool recompute;         /* keep only each decoder layer's input; recompute the layer in the backward */
  float *layer_ws;        /* shared gradient buffers of the decoder layers (usbx_trainer_share_layer_grads) */
  size_t layer_ws_n;      /* floats in all of them */
  void (*layer_done)(void *ctx, int layer);
  void *layer_ctx;
  void (*gather)(void *ctx, int layer);   /* ZeRO-3 (usbx_trainer_gather_layers) */
  void *gather_ctx;
  /* USBX_TRAIN_PROFILE=1: seconds per phase of add_grads, synchronised at each boundary */
  bool profile;
  double prof[9];
  int prof_steps;
  void *dy_mm; size_t dy_cap;   /* lin_bwd's mm copy of an output gradient */
  double *loss_sum;             /* device [2]: CE and MSE since zero_grads */
};

static const char *const PROF_NAMES[9] = {"inputs", "layers forward", "losses", "bwd recompute", "bwd MLP", "bwd o-proj",
                                          "bwd attention", "bwd qkv+norms", "input backward"};
static void prof_mark(usbx_trainer *t, int phase, double *t0) {
  if (!t->profile) return;
  t->be->sync(t->be);
  double now = usbx_now();
  t->prof[phase] += now - *t0;
  *t0 = now;
}

static size_t hash_ptr(const void *p, int cap) { uint64_t x = (uint64_t)(uintptr_t)p; x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; return (size_t)(x & (uint64_t)(cap - 1)); }

static gslot *slot_of(usbx_trainer *t, const void *w) {
  if (!w) return NULL;
  for (size_t i = hash_ptr(w, t->cap);; i = (i + 1) & (size_t)(t->cap - 1)) {
    if (t->slots[i].w == w) return &t->slots[i];
    if (!t->slots[i].w) return NULL;
  }
}
/* a stale gradient cleared now */
static void clear_stale(usbx_trainer *t, gslot *s) {
  if (!s->stale) return;
  t->be->memset0(t->be, s->g, sizeof(float) * (size_t)s->n);
  s->stale = false;
}
/* the gradient of weight w, for adding to (NULL: not trained) */
static float *G(usbx_trainer *t, const void *w) {
  gslot *s = slot_of(t, w);
  if (!s) return NULL;
  clear_stale(t, s);
  s->written = s->dirty = true;
  return s->g;
}
/* the same for a writer that sets every value (a product's dW): *add false when the gradient holds
 * no contribution yet, so the writer overwrites it instead of its being cleared first */
static float *G_dw(usbx_trainer *t, const void *w, bool writes_all, bool *add) {
  gslot *s = slot_of(t, w);
  *add = !(s && writes_all && s->stale);
  if (!*add) s->stale = false;
  return G(t, w);
}
static bool trained(usbx_trainer *t, const void *w) { return slot_of(t, w) != NULL; }

bool usbx_trainer_grad_written(usbx_trainer *t, const void *w) {
  gslot *s = slot_of(t, w);
  return s && s->written;
}

usbx_trainer *usbx_trainer_new(usbx_bagel *m, const char *const *frozen) {
  usbx_trainer *t = xcalloc(1, sizeof *t);
  t->m = m; t->be = m->be;
  t->profile = getenv("USBX_TRAIN_PROFILE") && strcmp(getenv("USBX_TRAIN_PROFILE"), "0") != 0;
  usbx_bagel_enumerate(&m->cfg, m->parts, m, &t->wl);
  t->cap = 64;
  while (t->cap < 2 * t->wl.n + 2) t->cap *= 2;
  t->slots = xcalloc((size_t)t->cap, sizeof *t->slots);
  for (int i = 0; i < t->wl.n; i++) {
    usbx_wdesc *d = &t->wl.v[i];
    if (d->init == USBX_INIT_SINCOS_LATENT || d->init == USBX_INIT_SINCOS_VIT || !*d->dst) continue;
    bool fz = false;
    for (int k = 0; frozen && frozen[k]; k++) if (strncmp(d->name, frozen[k], strlen(frozen[k])) == 0) fz = true;
    if (fz) continue;
    int64_t n = usbx_shape_numel(d->ndim, d->shape);
    size_t h = hash_ptr(*d->dst, t->cap);
    while (t->slots[h].w) h = (h + 1) & (size_t)(t->cap - 1);
    t->slots[h] = (gslot){*d->dst, t->be->alloc(t->be, sizeof(float) * (size_t)n), n, d->name, d->dst, false, true, false};
    t->nslots++;
  }
  t->loss_sum = t->be->alloc(t->be, 2 * sizeof(double));
  t->be->memset0(t->be, t->loss_sum, 2 * sizeof(double));
  return t;
}


void usbx_trainer_set_recompute(usbx_trainer *t, bool on) { t->recompute = on; }

void usbx_trainer_share_layer_grads(usbx_trainer *t, int nbuf, void (*layer_done)(void *ctx, int layer), void *ctx) {
  if (nbuf < 1) usbx_die("usbx_trainer_share_layer_grads: %d buffers", nbuf);
  int L = t->m->cfg.layers;
  size_t *used = xcalloc((size_t)L, sizeof(size_t)), total = 0;
  /* offsets within a layer follow the enumeration order, the same for every layer */
  for (int i = 0; i < t->wl.n; i++) {
    gslot *g = slot_of(t, *t->wl.v[i].dst);
    int l = g ? usbx_bagel_layer_of(g->name) : -1;
    if (l < 0 || l >= L) continue;
    used[l] += (size_t)g->n;
  }
  for (int l = 0; l < L; l++) if (used[l] > total) total = used[l];
  for (int l = 0; l < L; l++)
    if (used[l] != total) usbx_die("usbx_trainer_share_layer_grads: layer %d has %zu trained values, layer 0 %zu", l, used[l], used[0]);
  if (total) {
    t->layer_ws_n = total * (size_t)nbuf;
    t->layer_ws = t->be->alloc(t->be, sizeof(float) * t->layer_ws_n);
    t->be->memset0(t->be, t->layer_ws, sizeof(float) * t->layer_ws_n);
    memset(used, 0, sizeof(size_t) * (size_t)L);
    for (int i = 0; i < t->wl.n; i++) {
      gslot *g = slot_of(t, *t->wl.v[i].dst);
      int l = g ? usbx_bagel_layer_of(g->name) : -1;
      if (l < 0 || l >= L) continue;
      t->be->free(t->be, g->g);
      g->g = t->layer_ws + (size_t)(l % nbuf) * total + used[l];
      used[l] += (size_t)g->n;
    }
  }
  free(used);
  t->layer_done = layer_done;
  t->layer_ctx = ctx;
}

void usbx_trainer_gather_layers(usbx_trainer *t, void (*gather)(void *ctx, int layer), void *ctx) {
  if (!t->layer_ws) usbx_die("usbx_trainer_gather_layers: the layers' gradients must be shared first");
  t->gather = gather;
  t->gather_ctx = ctx;
}

void usbx_trainer_weights_moved(usbx_trainer *t) {
  gslot *old = t->slots;
  t->slots = xcalloc((size_t)t->cap, sizeof *t->slots);
  for (int i = 0; i < t->cap; i++) {
    if (!old[i].w) continue;
    gslot g = old[i];
    g.w = *g.dst;
    if (!g.w) usbx_die("usbx_trainer_weights_moved: %s has no weights", g.name);
    size_t h = hash_ptr(g.w, t->cap);
    while (t->slots[h].w) h = (h + 1) & (size_t)(t->cap - 1);
    t->slots[h] = g;
  }
  free(old);
}

void usbx_trainer_free(usbx_trainer *t) {
  if (!t) return;
  if (t->profile && t->prof_steps) {
    double tot = 0;
    for (int i = 0; i < 9; i++) tot += t->prof[i];
    for (int i = 0; i < 9; i++)
      usbx_err("profile: %-16s %8.2f ms per batch (%4.1f %%)", PROF_NAMES[i], 1e3 * t->prof[i] / t->prof_steps, 100 * t->prof[i] / tot);
  }
  for (int i = 0; i < t->cap; i++)
    if (t->slots[i].w && !(t->layer_ws && usbx_bagel_layer_of(t->slots[i].name) >= 0)) t->be->free(t->be, t->slots[i].g);
  if (t->layer_ws) t->be->free(t->be, t->layer_ws);
  if (t->dy_mm) t->be->free(t->be, t->dy_mm);
  t->be->free(t->be, t->loss_sum);
  P_destroy(&t->pool);
  free(t->slots); free(t->wl.v); free(t);
}

float *usbx_trainer_grad(usbx_trainer *t, const char *name, int64_t *numel) {
  for (int i = 0; i < t->cap; i++)
    if (t->slots[i].w && strcmp(t->slots[i].name, name) == 0) { if (numel) *numel = t->slots[i].n; return t->slots[i].g; }
  return NULL;
}

/* ---------------------------------------------------------------- buffers */

static float *F32(pool *P, size_t n) { return P_alloc(P, sizeof(float) * n); }
static float *F32Z(pool *P, size_t n) { float *p = F32(P, n); P->be->memset0(P->be, p, sizeof(float) * n); return p; }
static void *MM(pool *P, size_t n) { return P_alloc(P, usbx_dtype_size(P->be->mm_dtype) * n); }
static int32_t *I32(pool *P, const int32_t *host, size_t n) {
  int32_t *p = P_alloc(P, sizeof(int32_t) * n);
  if (host) P->be->upload(P->be, p, host, sizeof(int32_t) * n);
  return p;
}

static size_t MMB(usbx_backend *be) { return usbx_dtype_size(be->mm_dtype); }

/* ---------------------------------------------------------------- linear helpers */

/* y = x·Wᵀ + b on rows, with x given in f32 (converted to mm into xm, kept for the backward) */
static void lin_f32(usbx_backend *be, float *y, void *xm, const float *x, const void *w, const float *b, int M, int N, int K) {
  be->to_mm(be, xm, K, x, M, K);
  be->matmul(be, y, xm, w, b, M, N, K, false);
}

/* backward of y = x·Wᵀ + b from dy's mm copy dym (written by dy's producer): dx += dy·W (when dx;
 * dx = dy·W when !dx_add), dW, db accumulated into the weight's slots; dy (f32, may be NULL without
 * b) for the bias gradient */
static void lin_bwd_given(usbx_trainer *t, float *dx, bool dx_add, const void *dym, const float *dy, const void *xm, const void *w,
                          const float *b, int M, int N, int K) {
  bool dw_add;
  float *dw = G_dw(t, w, (dym || dy) && M > 0 && N > 0 && K > 0, &dw_add), *db = b ? G(t, b) : NULL;
  if (dx || dw || db) t->be->matmul_bwd(t->be, dx, dw, db, dym, dy, xm, w, M, N, K, dx_add, dw_add);
}
/* the same from an f32 dy, converted here.  dy's mm copy lives only for the product, so one buffer
 * serves every call (stream order keeps it safe; growing it frees the old one, which waits for the
 * device). */
static void lin_bwd_dx(usbx_trainer *t, float *dx, bool dx_add, const float *dy, const void *xm, const void *w, const float *b, int M, int N,
                       int K) {
  usbx_backend *be = t->be;
  if (!dx && !trained(t, w) && !(b && trained(t, b))) return;   /* nothing to compute: no conversion */
  size_t bytes = MMB(be) * (size_t)M * N;
  if (bytes > t->dy_cap) {
    if (t->dy_mm) be->free(be, t->dy_mm);
    t->dy_mm = be->alloc(be, bytes);
    t->dy_cap = bytes;
  }
  be->to_mm(be, t->dy_mm, N, dy, M, N);
  lin_bwd_given(t, dx, dx_add, t->dy_mm, dy, xm, w, b, M, N, K);
}
static void lin_bwd(usbx_trainer *t, float *dx, const float *dy, const void *xm, const void *w, const float *b, int M, int N, int K) {
  lin_bwd_dx(t, dx, true, dy, xm, w, b, M, N, K);
}
/* without bias, for a dy its producer wrote in mm only */
static void lin_bwd_mm(usbx_trainer *t, float *dx, bool dx_add, const void *dym, const void *xm, const void *w, int M, int N, int K) {
  lin_bwd_given(t, dx, dx_add, dym, NULL, xm, w, NULL, M, N, K);
}

/* ---------------------------------------------------------------- ViT */

typedef struct {
  float *x_in, *x_mid, *fc1;       /* f32 */
  void *ln1, *q, *k, *v, *o, *ln2, *act;   /* mm */
  float *lse;
} vit_saved;

typedef struct {
  int n;
  vit_saved *L;
  float *x_final;                  /* before post_layernorm */
  void *post_mm, *patch_mm, *conn_in_mm, *conn_act_mm;
  float *conn_h;                   /* fc1 output */
  int32_t *pid, *meta_order, *meta_sample, *meta_split, *meta_mode;
  uint64_t meta_id;                /* of the attention metadata (ops.h) */
} vit_state;

/* ViT + connector for all images of the batch; out [n_vit, D] (the LLM embeddings) */
static void vit_forward(usbx_trainer *t, pool *P, const usbx_train_batch *b, vit_state *s, float *out) {
  usbx_bagel *m = t->m;
  usbx_backend *be = t->be;
  const usbx_bagel_config *c = &m->cfg;
  int n = b->n_vit, Dv = c->vit_hidden, Fv = c->vit_inter, D = c->hidden, pp = c->vit_patch * c->vit_patch * 3;
  int heads = c->vit_heads, hd = Dv / heads;
  s->n = n;
  s->L = xcalloc((size_t)c->vit_layers, sizeof *s->L);
  s->pid = I32(P, b->vit_pid, (size_t)n);
  /* attention metadata: each image is its own sample with one full split */
  int32_t *ord = xmalloc(sizeof(int32_t) * (size_t)n), *smp = xmalloc(sizeof(int32_t) * (size_t)n), *mode = xmalloc(sizeof(int32_t) * (size_t)n);
  for (int i = 0, img = 0, left = b->n_vit_img ? b->vit_seqlen[0] : 0; i < n; i++) {
    while (left == 0 && img + 1 < b->n_vit_img) left = b->vit_seqlen[++img];
    ord[i] = i; smp[i] = img; mode[i] = USBX_SPLIT_FULL; left--;
  }
  s->meta_order = I32(P, ord, (size_t)n); s->meta_sample = I32(P, smp, (size_t)n); s->meta_split = s->meta_sample; s->meta_mode = I32(P, mode, (size_t)n);
  free(ord); free(smp); free(mode);
  s->meta_id = usbx_attn_meta_id();
  usbx_attn_masked_args aa = {.n = n, .n_heads = heads, .n_kv_heads = heads, .head_dim = hd, .order = s->meta_order, .sample = s->meta_sample, .split = s->meta_split, .mode = s->meta_mode,
                              .meta_id = s->meta_id};
  float *x = F32(P, (size_t)n * Dv), *tmp = F32(P, (size_t)n * (Dv > D ? Dv : D));
  float *patches = F32(P, (size_t)n * pp);
  be->upload(be, patches, b->vit_patches, sizeof(float) * (size_t)n * pp);
  s->patch_mm = MM(P, (size_t)n * pp);
  lin_f32(be, x, s->patch_mm, patches, m->patch_w, m->patch_b, n, Dv, pp);
  be->gather_rows(be, tmp, m->vit_pos, s->pid, n, Dv);
  be->add(be, x, tmp, (size_t)n * Dv);
  float *q = F32(P, (size_t)n * Dv);
  for (int l = 0; l < c->vit_layers; l++) {
    const vit_layer_w *w = &m->vit[l];
    vit_saved *v = &s->L[l];
    v->x_in = F32(P, (size_t)n * Dv);
    be->copy(be, v->x_in, x, sizeof(float) * (size_t)n * Dv);
    v->ln1 = MM(P, (size_t)n * Dv); v->q = MM(P, (size_t)n * Dv); v->k = MM(P, (size_t)n * Dv); v->v = MM(P, (size_t)n * Dv);
    v->o = MM(P, (size_t)n * Dv); v->lse = F32(P, (size_t)heads * n);
    be->layernorm(be, v->ln1, true, x, w->ln1_w, w->ln1_b, n, Dv, c->vit_eps);
    be->matmul(be, q, v->ln1, w->q_w, w->q_b, n, Dv, Dv, false); be->to_mm(be, v->q, Dv, q, n, Dv);
    be->matmul(be, q, v->ln1, w->k_w, w->k_b, n, Dv, Dv, false); be->to_mm(be, v->k, Dv, q, n, Dv);
    be->matmul(be, q, v->ln1, w->v_w, w->v_b, n, Dv, Dv, false); be->to_mm(be, v->v, Dv, q, n, Dv);
    be->attention_masked(be, v->o, v->lse, v->q, v->k, v->v, &aa);
    be->matmul(be, x, v->o, w->o_w, w->o_b, n, Dv, Dv, true);
    v->x_mid = F32(P, (size_t)n * Dv);
    be->copy(be, v->x_mid, x, sizeof(float) * (size_t)n * Dv);
    v->ln2 = MM(P, (size_t)n * Dv); v->fc1 = F32(P, (size_t)n * Fv); v->act = MM(P, (size_t)n * Fv);
    be->layernorm(be, v->ln2, true, x, w->ln2_w, w->ln2_b, n, Dv, c->vit_eps);
    be->matmul(be, v->fc1, v->ln2, w->fc1_w, w->fc1_b, n, Fv, Dv, false);
    be->gelu_tanh(be, v->act, v->fc1, (size_t)n * Fv);
    be->matmul(be, x, v->act, w->fc2_w, w->fc2_b, n, Dv, Fv, true);
  }
  s->x_final = x;
  s->post_mm = MM(P, (size_t)n * Dv);
  be->layernorm(be, s->post_mm, true, x, m->post_ln_w, m->post_ln_b, n, Dv, c->vit_eps);
  s->conn_h = F32(P, (size_t)n * D);
  be->matmul(be, s->conn_h, s->post_mm, m->conn_w1, m->conn_b1, n, D, Dv, false);
  s->conn_act_mm = MM(P, (size_t)n * D);
  be->gelu_tanh(be, s->conn_act_mm, s->conn_h, (size_t)n * D);
  be->matmul(be, out, s->conn_act_mm, m->conn_w2, m->conn_b2, n, D, D, false);
  be->gather_rows(be, tmp, m->vit_pos_embed, s->pid, n, D);
  be->add(be, out, tmp, (size_t)n * D);
}

static void vit_backward(usbx_trainer *t, pool *P, const usbx_train_batch *b, vit_state *s, const float *dout) {
  usbx_bagel *m = t->m;
  usbx_backend *be = t->be;
  const usbx_bagel_config *c = &m->cfg;
  int n = s->n, Dv = c->vit_hidden, Fv = c->vit_inter, D = c->hidden, pp = c->vit_patch * c->vit_patch * 3;
  int heads = c->vit_heads, hd = Dv / heads;
  usbx_attn_masked_args aa = {.n = n, .n_heads = heads, .n_kv_heads = heads, .head_dim = hd, .order = s->meta_order, .sample = s->meta_sample, .split = s->meta_split, .mode = s->meta_mode,
                              .meta_id = s->meta_id};
  float *dh = F32Z(P, (size_t)n * D);
  lin_bwd(t, dh, dout, s->conn_act_mm, m->conn_w2, m->conn_b2, n, D, D);
  float *dpre = F32(P, (size_t)n * D);
  be->gelu_tanh_bwd(be, dpre, dh, s->conn_h, (size_t)n * D);
  float *dpost = F32Z(P, (size_t)n * Dv);
  lin_bwd(t, dpost, dpre, s->post_mm, m->conn_w1, m->conn_b1, n, D, Dv);
  float *dx = F32Z(P, (size_t)n * Dv);
  be->layernorm_bwd(be, dx, G(t, m->post_ln_w), G(t, m->post_ln_b), dpost, s->x_final, m->post_ln_w, n, Dv, c->vit_eps);
  float *da = F32(P, (size_t)n * Fv), *dln = F32(P, (size_t)n * Dv), *dq = F32(P, (size_t)n * Dv), *dk = F32(P, (size_t)n * Dv),
        *dv = F32(P, (size_t)n * Dv), *dact = F32(P, (size_t)n * Fv), *dO = F32(P, (size_t)n * Dv);
  for (int l = c->vit_layers - 1; l >= 0; l--) {
    const vit_layer_w *w = &m->vit[l];
    vit_saved *v = &s->L[l];
    /* MLP: x_out = x_mid + fc2(gelu(fc1(LN2(x_mid)))) */
    lin_bwd_dx(t, dact, false, dx, v->act, w->fc2_w, w->fc2_b, n, Dv, Fv);
    be->gelu_tanh_bwd(be, da, dact, v->fc1, (size_t)n * Fv);
    lin_bwd_dx(t, dln, false, da, v->ln2, w->fc1_w, w->fc1_b, n, Fv, Dv);
    be->layernorm_bwd(be, dx, G(t, w->ln2_w), G(t, w->ln2_b), dln, v->x_mid, w->ln2_w, n, Dv, c->vit_eps);
    /* attention: x_mid = x_in + out_proj(attn(q, k, v)) */
    lin_bwd_dx(t, dO, false, dx, v->o, w->o_w, w->o_b, n, Dv, Dv);
    be->attention_masked_bwd(be, dq, dk, dv, dO, v->q, v->k, v->v, v->o, v->lse, &aa);
    lin_bwd_dx(t, dln, false, dq, v->ln1, w->q_w, w->q_b, n, Dv, Dv);
    lin_bwd(t, dln, dk, v->ln1, w->k_w, w->k_b, n, Dv, Dv);
    lin_bwd(t, dln, dv, v->ln1, w->v_w, w->v_b, n, Dv, Dv);
    be->layernorm_bwd(be, dx, G(t, w->ln1_w), G(t, w->ln1_b), dln, v->x_in, w->ln1_w, n, Dv, c->vit_eps);
  }
  /* patch embedding (the position table is learned: its rows get the gradient too) */
  lin_bwd(t, NULL, dx, s->patch_mm, m->patch_w, m->patch_b, n, Dv, pp);
  float *dpos = G(t, m->vit_pos);
  if (dpos) be->embed_bwd(be, dpos, dx, s->pid, n, Dv);
  free(s->L);
  (void)b;
}

/* ---------------------------------------------------------------- LLM */

typedef struct {
  float *x_in, *x_mid, *qf, *kf;
  void *h1, *q, *k, *v, *o, *h2, *gate, *up, *act;   /* mm */
  float *lse;
} llm_saved;

void usbx_trainer_zero_grads(usbx_trainer *t) {
  for (int i = 0; i < t->cap; i++) {
    gslot *s = &t->slots[i];
    if (!s->w) continue;
    s->written = false;
    /* a gradient nothing wrote since its last clearing is still zero; a shared layer buffer is
     * cleared whole below */
    if (!s->dirty || (t->layer_ws && usbx_bagel_layer_of(s->name) >= 0)) continue;
    s->stale = true;
    s->dirty = false;
  }
  if (t->layer_ws) t->be->memset0(t->be, t->layer_ws, sizeof(float) * t->layer_ws_n);
  t->be->memset0(t->be, t->loss_sum, 2 * sizeof(double));
}

void usbx_trainer_settle_grads(usbx_trainer *t) {
  for (int i = 0; i < t->cap; i++)
    if (t->slots[i].w) clear_stale(t, &t->slots[i]);
}

void usbx_trainer_losses(usbx_trainer *t, double *ce, double *mse) {
  double s[2];
  t->be->download(t->be, s, t->loss_sum, sizeof s);
  *ce = s[0];
  *mse = s[1];
}

/* ---------------------------------------------------------------- decoder layer forward */

typedef struct { int r0, n, e; } run;

typedef struct {
  usbx_trainer *t;
  const usbx_attn_masked_args *aa;
  const int32_t *d_pos;
  const run *runs;
  int nr, n;
} layer_ctx;

/* buffers of one layer's saved activations (from the pool) */
static void saved_alloc(pool *P, llm_saved *s, const usbx_bagel_config *c, int n) {
  int D = c->hidden, F = c->inter, Hd = c->heads * c->head_dim, KVd = c->kv_heads * c->head_dim;
  s->x_in = NULL; s->x_mid = F32(P, (size_t)n * D);   /* x_in: the layer's input buffer itself (layer_forward) */
  s->h1 = MM(P, (size_t)n * D); s->qf = F32(P, (size_t)n * Hd); s->kf = F32(P, (size_t)n * KVd);
  s->q = MM(P, (size_t)n * Hd); s->k = MM(P, (size_t)n * KVd); s->v = MM(P, (size_t)n * KVd); s->o = MM(P, (size_t)n * Hd);
  s->lse = F32(P, (size_t)c->heads * n);
  s->h2 = MM(P, (size_t)n * D); s->gate = MM(P, (size_t)n * F); s->up = MM(P, (size_t)n * F); s->act = MM(P, (size_t)n * F);
}

/* layer l from xin (f32 [n, D], left as it is and kept as s->x_in) into xout, keeping its activations
 * in s; vf: f32 [n, KVd] scratch.  The residual adds write beside their input (matmul_res), so no
 * copy of the stream is made. */
static void layer_forward(const layer_ctx *L, int l, llm_saved *s, const float *xin, float *xout, float *vf) {
  usbx_trainer *t = L->t;
  if (t->gather) t->gather(t->gather_ctx, l);
  usbx_bagel *m = t->m;
  usbx_backend *be = t->be;
  const usbx_bagel_config *c = &m->cfg;
  int n = L->n, D = c->hidden, F = c->inter, H = c->heads, Hkv = c->kv_heads, d = c->head_dim, Hd = H * d, KVd = Hkv * d;
  size_t mmb = MMB(be);
  s->x_in = (float *)xin;
  for (int r = 0; r < L->nr; r++) {
    const expert_w *w = &m->layers[l].e[L->runs[r].e];
    int r0 = L->runs[r].r0, nn = L->runs[r].n;
    char *h1 = (char *)s->h1 + (size_t)r0 * D * mmb;
    be->rmsnorm(be, h1, true, xin + (size_t)r0 * D, w->in_norm, nn, D, c->eps);
    be->matmul(be, s->qf + (size_t)r0 * Hd, h1, w->q_w, w->q_b, nn, Hd, D, false);
    be->matmul(be, s->kf + (size_t)r0 * KVd, h1, w->k_w, w->k_b, nn, KVd, D, false);
    be->matmul(be, vf + (size_t)r0 * KVd, h1, w->v_w, w->v_b, nn, KVd, D, false);
    be->qk_norm_rope(be, (char *)s->q + (size_t)r0 * Hd * mmb, Hd, s->qf + (size_t)r0 * Hd, w->q_norm, L->d_pos + r0, nn, H, d, c->eps, c->theta);
    be->qk_norm_rope(be, (char *)s->k + (size_t)r0 * KVd * mmb, KVd, s->kf + (size_t)r0 * KVd, w->k_norm, L->d_pos + r0, nn, Hkv, d, c->eps, c->theta);
  }
  be->to_mm(be, s->v, KVd, vf, n, KVd);
  be->attention_masked(be, s->o, s->lse, s->q, s->k, s->v, L->aa);
  for (int r = 0; r < L->nr; r++) {
    const expert_w *w = &m->layers[l].e[L->runs[r].e];
    int r0 = L->runs[r].r0, nn = L->runs[r].n;
    be->matmul_res(be, s->x_mid + (size_t)r0 * D, xin + (size_t)r0 * D, (char *)s->o + (size_t)r0 * Hd * mmb, w->o_w, nn, D, Hd);
  }
  for (int r = 0; r < L->nr; r++) {
    const expert_w *w = &m->layers[l].e[L->runs[r].e];
    int r0 = L->runs[r].r0, nn = L->runs[r].n;
    char *h2 = (char *)s->h2 + (size_t)r0 * D * mmb, *act = (char *)s->act + (size_t)r0 * F * mmb;
    char *gate = (char *)s->gate + (size_t)r0 * F * mmb, *up = (char *)s->up + (size_t)r0 * F * mmb;
    be->rmsnorm(be, h2, true, s->x_mid + (size_t)r0 * D, w->post_norm, nn, D, c->eps);
    be->matmul_mm(be, gate, h2, w->gate, nn, F, D);
    be->matmul_mm(be, up, h2, w->up, nn, F, D);
    be->silu_mul_mm(be, act, gate, up, nn, F);
    be->matmul_res(be, xout + (size_t)r0 * D, s->x_mid + (size_t)r0 * D, act, w->down, nn, D, F);
  }
}

void usbx_trainer_step_grads(usbx_trainer *t, const usbx_train_batch *b, float ce_weight, float mse_weight, usbx_train_out *out) {
  usbx_trainer_zero_grads(t);
  usbx_trainer_add_grads(t, b, ce_weight, mse_weight, out);
  usbx_trainer_settle_grads(t);
}

void usbx_trainer_add_grads(usbx_trainer *t, const usbx_train_batch *b, float ce_weight, float mse_weight, usbx_train_out *out) {
  usbx_bagel *m = t->m;
  usbx_backend *be = t->be;
  const usbx_bagel_config *c = &m->cfg;
  pool *P = &t->pool;
  P->be = be;
  int n = b->n, D = c->hidden, F = c->inter, H = c->heads, Hkv = c->kv_heads, d = c->head_dim, Hd = H * d, KVd = Hkv * d;
  int PL = c->latent_patch * c->latent_patch * c->latent_channels;

  /* expert order: und (text, ViT) rows first, then VAE rows; perm[i] = packed index */
  int32_t *perm = xmalloc(sizeof(int32_t) * (size_t)n), *inv = xmalloc(sizeof(int32_t) * (size_t)n);
  int n_und = 0;
  for (int p = 0; p < n; p++) if (b->kind[p] != USBX_TOK_VAE) perm[n_und++] = p;
  for (int p = 0, k = n_und; p < n; p++) if (b->kind[p] == USBX_TOK_VAE) perm[k++] = p;
  for (int i = 0; i < n; i++) inv[perm[i]] = i;
  int n_gen = n - n_und;
  int32_t *hp = xmalloc(sizeof(int32_t) * (size_t)n * 5);
  int32_t *h_pos = hp, *h_smp = hp + n, *h_spl = hp + 2 * n, *h_mode = hp + 3 * n, *h_tmp = hp + 4 * n;
  for (int i = 0; i < n; i++) { int p = perm[i]; h_pos[i] = b->pos[p]; h_smp[i] = b->sample[p]; h_spl[i] = b->split[p]; h_mode[i] = b->mode[p]; }
  int32_t *d_perm = I32(P, perm, (size_t)n), *d_inv = I32(P, inv, (size_t)n), *d_pos = I32(P, h_pos, (size_t)n);
  usbx_attn_masked_args aa = {.n = n, .n_heads = H, .n_kv_heads = Hkv, .head_dim = d, .order = d_perm, .sample = I32(P, h_smp, (size_t)n),
                              .split = I32(P, h_spl, (size_t)n), .mode = I32(P, h_mode, (size_t)n), .meta_id = usbx_attn_meta_id()};
  /* each sample's rows, for backends that work sample by sample */
  int32_t *seg_off = NULL;
  {
    int ns = 0;
    bool ok = true;
    for (int i = 0; i < n; i++) { if (h_smp[i] < 0) ok = false; else if (h_smp[i] + 1 > ns) ns = h_smp[i] + 1; }
    if (ok && ns > 0) {
      seg_off = xcalloc((size_t)ns + 1, sizeof *seg_off);
      int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)n), *at = xmalloc(sizeof(int32_t) * (size_t)ns);
      for (int i = 0; i < n; i++) seg_off[h_smp[i] + 1]++;
      for (int k = 0; k < ns; k++) { seg_off[k + 1] += seg_off[k]; at[k] = seg_off[k]; }
      for (int i = 0; i < n; i++) rows[at[h_smp[i]]++] = i;
      aa.n_seg = ns; aa.seg_off = seg_off; aa.seg_rows = I32(P, rows, (size_t)n);
      free(rows); free(at);
    }
  }

  double pt = usbx_now();
  if (t->profile) { be->sync(be); pt = usbx_now(); t->prof_steps++; }
  /* ---- input embeddings, assembled in packed order then permuted */
  float *xp = F32Z(P, (size_t)n * D);
  int n_text = 0;
  for (int p = 0; p < n; p++) if (b->kind[p] == USBX_TOK_TEXT) { h_tmp[n_text] = p; n_text++; }
  int32_t *text_idx = I32(P, h_tmp, (size_t)n_text), *text_ids;
  for (int i = 0; i < n_text; i++) h_tmp[i] = b->text_id[h_tmp[i]];
  text_ids = I32(P, h_tmp, (size_t)n_text);
  float *rows = F32(P, (size_t)(n > 0 ? n : 1) * D);
  if (n_text) { be->embed(be, rows, m->embed, text_ids, n_text, D); be->scatter_rows(be, xp, rows, text_idx, n_text, D); }
  vit_state vs = {0};
  int32_t *vit_idx = NULL;
  if (b->n_vit) {
    int k = 0;
    for (int p = 0; p < n; p++) if (b->kind[p] == USBX_TOK_VIT) h_tmp[k++] = p;
    vit_idx = I32(P, h_tmp, (size_t)k);
    vit_forward(t, P, b, &vs, rows);
    be->scatter_rows(be, xp, rows, vit_idx, b->n_vit, D);
  }
  /* the attention's work on the metadata, queued before the rest of the forward (after the ViT's,
   * which has its own metadata) */
  if (be->attention_masked_prepare) be->attention_masked_prepare(be, &aa);
  /* VAE tokens: x_t = (1 - t) x0 + t noise; vae2llm(x_t) + TimestepEmbed(t) + latent_pos_embed[pid] */
  int nv = b->n_vae;
  int32_t *vae_idx = NULL, *d_lpid = NULL;
  void *xt_mm = NULL, *feat_mm = NULL, *te_act_mm = NULL;
  float *te_h = NULL;
  if (nv) {
    int k = 0;
    for (int p = 0; p < n; p++) if (b->kind[p] == USBX_TOK_VAE) h_tmp[k++] = p;
    vae_idx = I32(P, h_tmp, (size_t)k);
    /* an image's tokens share one t: its features are computed and uploaded once (nf rows), then
     * gathered per token (fidx) on the device */
    float *xt = xmalloc(sizeof(float) * (size_t)nv * PL), *feat = xmalloc(sizeof(float) * (size_t)nv * 256);
    int32_t *fidx = xmalloc(sizeof(int32_t) * (size_t)nv);
    int nf = 0;
    for (int i = 0; i < nv; i++) {
      float tt = b->t[i];
      for (int j = 0; j < PL; j++) xt[(size_t)i * PL + j] = (1.0f - tt) * b->x0[(size_t)i * PL + j] + tt * b->noise[(size_t)i * PL + j];
      if (i == 0 || b->t[i - 1] != tt) usbx_timestep_features(tt, feat + (size_t)nf++ * 256);
      fidx[i] = nf - 1;
    }
    float *dxt = F32(P, (size_t)nv * PL), *dfeat = F32(P, (size_t)nv * 256), *dfeat_u = F32(P, (size_t)nf * 256);
    be->upload(be, dxt, xt, sizeof(float) * (size_t)nv * PL);
    be->upload(be, dfeat_u, feat, sizeof(float) * (size_t)nf * 256);
    be->gather_rows(be, dfeat, dfeat_u, I32(P, fidx, (size_t)nv), nv, 256);
    free(xt); free(feat); free(fidx);
    xt_mm = MM(P, (size_t)nv * PL); feat_mm = MM(P, (size_t)nv * 256); te_act_mm = MM(P, (size_t)nv * D);
    te_h = F32(P, (size_t)nv * D);
    lin_f32(be, rows, xt_mm, dxt, m->vae2llm_w, m->vae2llm_b, nv, D, PL);
    float *te = F32(P, (size_t)nv * D);
    lin_f32(be, te_h, feat_mm, dfeat, m->te_w1, m->te_b1, nv, D, 256);
    float *tmp = F32(P, (size_t)nv * D);
    be->silu(be, tmp, te_h, (size_t)nv * D);
    be->to_mm(be, te_act_mm, D, tmp, nv, D);
    be->matmul(be, te, te_act_mm, m->te_w2, m->te_b2, nv, D, D, false);
    be->add(be, rows, te, (size_t)nv * D);
    for (int i = 0; i < nv; i++) h_tmp[i] = b->lat_pid[i];
    d_lpid = I32(P, h_tmp, (size_t)nv);
    be->gather_rows(be, te, m->latent_pos, d_lpid, nv, D);
    be->add(be, rows, te, (size_t)nv * D);
    be->scatter_rows(be, xp, rows, vae_idx, nv, D);
  }
  float *x = F32(P, (size_t)n * D);
  be->gather_rows(be, x, xp, d_perm, n, D);

  prof_mark(t, 0, &pt);
  /* ---- decoder layers, keeping activations (or, with recompute, each layer's input only) */
  run runs[2];
  int nr = 0;
  if (n_und) runs[nr++] = (run){0, n_und, 0};
  if (n_gen) runs[nr++] = (run){n_und, n_gen, 1};
  size_t mmb = MMB(be);
  layer_ctx LC = {t, &aa, d_pos, runs, nr, n};
  float *vf = F32(P, (size_t)n * KVd);
  llm_saved *S = xcalloc((size_t)c->layers, sizeof *S), R = {0};
  float **x_in = xcalloc((size_t)c->layers, sizeof *x_in), *x_rec = NULL;
  if (t->recompute) { saved_alloc(P, &R, c, n); x_rec = F32(P, (size_t)n * D); }
  for (int l = 0; l < c->layers; l++) {
    float *xo = F32(P, (size_t)n * D);   /* the layer's output: the next one's input, kept for its backward */
    if (t->recompute) {
      x_in[l] = x;
      layer_forward(&LC, l, &R, x, xo, vf);
    } else {
      saved_alloc(P, &S[l], c, n);
      layer_forward(&LC, l, &S[l], x, xo, vf);
    }
    x = xo;
  }
  /* final norm per expert */
  float *hfin = F32(P, (size_t)n * D);
  for (int r = 0; r < nr; r++)
    be->rmsnorm(be, hfin + (size_t)runs[r].r0 * D, false, x + (size_t)runs[r].r0 * D, m->norm[runs[r].e], runs[r].n, D, c->eps);

  prof_mark(t, 1, &pt);
  /* ---- losses */
  float *dfin = F32Z(P, (size_t)n * D);
  if (b->n_ce) {
    int nc = b->n_ce;
    for (int i = 0; i < nc; i++) {
      h_tmp[i] = inv[b->ce_idx[i]];
      if (b->kind[b->ce_idx[i]] == USBX_TOK_VAE) usbx_die("CE row %d is not a text token", b->ce_idx[i]);
    }
    int32_t *rows_ce = I32(P, h_tmp, (size_t)nc), *labels = I32(P, b->ce_label, (size_t)nc);
    float *hc = F32(P, (size_t)nc * D), *logits = F32(P, (size_t)nc * c->vocab), *loss = F32(P, (size_t)nc);
    void *hcm = MM(P, (size_t)nc * D);
    be->gather_rows(be, hc, hfin, rows_ce, nc, D);
    lin_f32(be, logits, hcm, hc, m->lm_head, NULL, nc, c->vocab, D);
    int den = b->ce_den > 0 ? b->ce_den : nc;
    be->cross_entropy(be, loss, logits, logits, labels, nc, c->vocab, ce_weight / (float)den);
    be->sum_acc(be, t->loss_sum, loss, (size_t)nc, 1.0 / den);
    if (out && out->ce_tok) be->download(be, out->ce_tok, loss, sizeof(float) * (size_t)nc);
    float *dhc = F32Z(P, (size_t)nc * D);
    lin_bwd(t, dhc, logits, hcm, m->lm_head, NULL, nc, c->vocab, D);
    be->scatter_rows(be, dfin, dhc, rows_ce, nc, D);
  }
  if (b->n_mse) {
    int nm = b->n_mse;
    /* VAE token k (in packed order of VAE tokens) of each MSE row */
    int32_t *vrank = xmalloc(sizeof(int32_t) * (size_t)n);
    for (int p = 0, k = 0; p < n; p++) vrank[p] = b->kind[p] == USBX_TOK_VAE ? k++ : -1;
    for (int i = 0; i < nm; i++) {
      if (vrank[b->mse_idx[i]] < 0) usbx_die("MSE row %d is not a VAE token", b->mse_idx[i]);
      h_tmp[i] = inv[b->mse_idx[i]];
    }
    int32_t *rows_m = I32(P, h_tmp, (size_t)nm);
    float *hm = F32(P, (size_t)nm * D), *pred = F32(P, (size_t)nm * PL);
    void *hmm = MM(P, (size_t)nm * D);
    be->gather_rows(be, hm, hfin, rows_m, nm, D);
    lin_f32(be, pred, hmm, hm, m->llm2vae_w, m->llm2vae_b, nm, PL, D);
    /* target = noise - x0; loss = Σ_tok mean_P(err²) / n_mse; its gradient replaces pred */
    int den = b->mse_den > 0 ? b->mse_den : nm;
    float *htgt = xmalloc(sizeof(float) * (size_t)nm * PL);
    for (int i = 0; i < nm; i++) {
      int k = vrank[b->mse_idx[i]];
      for (int j = 0; j < PL; j++) htgt[(size_t)i * PL + j] = b->noise[(size_t)k * PL + j] - b->x0[(size_t)k * PL + j];
    }
    float *tgt = F32(P, (size_t)nm * PL), *sq = out && out->mse_elem ? F32(P, (size_t)nm * PL) : NULL;
    be->upload(be, tgt, htgt, sizeof(float) * (size_t)nm * PL);
    free(htgt); free(vrank);
    be->mse_grad(be, t->loss_sum + 1, pred, sq, pred, tgt, (size_t)nm * PL, mse_weight, (float)(PL * den), 1.0 / ((double)PL * den));
    if (sq) be->download(be, out->mse_elem, sq, sizeof(float) * (size_t)nm * PL);
    float *dhm = F32Z(P, (size_t)nm * D);
    lin_bwd(t, dhm, pred, hmm, m->llm2vae_w, m->llm2vae_b, nm, PL, D);
    be->scatter_rows(be, dfin, dhm, rows_m, nm, D);
  }
  if (out) {
    usbx_trainer_losses(t, &out->ce, &out->mse);
    out->loss = ce_weight * out->ce + mse_weight * out->mse;
  }

  prof_mark(t, 2, &pt);
  /* ---- backward through the decoder */
  /* dx, the gradient of the residual stream, and dxm, its mm copy for the product that takes it
   * next (the MLP's down, then o), written by the norm backward that updates dx */
  float *dx = F32Z(P, (size_t)n * D);
  void *dxm = MM(P, (size_t)n * D);
  for (int r = 0; r < nr; r++) {
    int r0 = runs[r].r0;
    be->rmsnorm_bwd(be, dx + (size_t)r0 * D, (char *)dxm + (size_t)r0 * D * mmb, G(t, m->norm[runs[r].e]), dfin + (size_t)r0 * D,
                    x + (size_t)r0 * D, m->norm[runs[r].e], runs[r].n, D, c->eps);
  }
  void *dact = MM(P, (size_t)n * F);   /* the MLP's input gradient to SiLU·up, in mm as autocast keeps it */
  float *dh = F32(P, (size_t)n * D);
  void *dg = MM(P, (size_t)n * F), *du = MM(P, (size_t)n * F);
  float *dO = F32(P, (size_t)n * Hd), *dq = F32(P, (size_t)n * Hd), *dk = F32(P, (size_t)n * KVd), *dv = F32(P, (size_t)n * KVd);
  float *dqf = F32(P, (size_t)n * Hd), *dkf = F32(P, (size_t)n * KVd);
  void *dqm = MM(P, (size_t)n * Hd), *dkm = MM(P, (size_t)n * KVd);   /* their mm copies for the q and k products */
  for (int l = c->layers - 1; l >= 0; l--) {
    llm_saved *s = &S[l];
    if (t->gather) t->gather(t->gather_ctx, l);
    if (t->recompute) {
      layer_forward(&LC, l, &R, x_in[l], x_rec, vf);   /* x_rec: the output, not needed */
      s = &R;
    }
    prof_mark(t, 3, &pt);
    /* each run writes its own rows of dact, dh, dO (the first product of each overwrites) */
    for (int r = 0; r < nr; r++) {
      const expert_w *w = &m->layers[l].e[runs[r].e];
      int r0 = runs[r].r0, nn = runs[r].n;
      char *dxm_r = (char *)dxm + (size_t)r0 * D * mmb;
      char *dact_r = (char *)dact + (size_t)r0 * F * mmb;
      be->matmul_dx_mm(be, dact_r, dxm_r, w->down, nn, D, F);
      lin_bwd_mm(t, NULL, false, dxm_r, (char *)s->act + (size_t)r0 * F * mmb, w->down, nn, D, F);   /* dW */
      /* dgate, dup straight in mm */
      void *dgm = (char *)dg + (size_t)r0 * F * mmb, *dum = (char *)du + (size_t)r0 * F * mmb;
      be->silu_mul_bwd_mm(be, dgm, dum, dact_r, (char *)s->gate + (size_t)r0 * F * mmb, (char *)s->up + (size_t)r0 * F * mmb, nn, F);
      char *h2 = (char *)s->h2 + (size_t)r0 * D * mmb;
      lin_bwd_mm(t, dh + (size_t)r0 * D, false, dgm, h2, w->gate, nn, F, D);
      lin_bwd_mm(t, dh + (size_t)r0 * D, true, dum, h2, w->up, nn, F, D);
      be->rmsnorm_bwd(be, dx + (size_t)r0 * D, dxm_r, G(t, w->post_norm), dh + (size_t)r0 * D, s->x_mid + (size_t)r0 * D, w->post_norm, nn,
                      D, c->eps);
    }
    prof_mark(t, 4, &pt);
    for (int r = 0; r < nr; r++) {
      const expert_w *w = &m->layers[l].e[runs[r].e];
      int r0 = runs[r].r0, nn = runs[r].n;
      lin_bwd_mm(t, dO + (size_t)r0 * Hd, false, (char *)dxm + (size_t)r0 * D * mmb, (char *)s->o + (size_t)r0 * Hd * mmb, w->o_w, nn, D, Hd);
    }
    prof_mark(t, 5, &pt);
    be->attention_masked_bwd(be, dq, dk, dv, dO, s->q, s->k, s->v, s->o, s->lse, &aa);
    prof_mark(t, 6, &pt);
    for (int r = 0; r < nr; r++) {
      const expert_w *w = &m->layers[l].e[runs[r].e];
      int r0 = runs[r].r0, nn = runs[r].n;
      char *dqm_r = (char *)dqm + (size_t)r0 * Hd * mmb, *dkm_r = (char *)dkm + (size_t)r0 * KVd * mmb;
      be->qk_norm_rope_bwd(be, dqf + (size_t)r0 * Hd, dqm_r, G(t, w->q_norm), dq + (size_t)r0 * Hd, Hd, s->qf + (size_t)r0 * Hd, w->q_norm,
                           d_pos + r0, nn, H, d, c->eps, c->theta);
      be->qk_norm_rope_bwd(be, dkf + (size_t)r0 * KVd, dkm_r, G(t, w->k_norm), dk + (size_t)r0 * KVd, KVd, s->kf + (size_t)r0 * KVd, w->k_norm,
                           d_pos + r0, nn, Hkv, d, c->eps, c->theta);
      char *h1 = (char *)s->h1 + (size_t)r0 * D * mmb;
      lin_bwd_given(t, dh + (size_t)r0 * D, false, dqm_r, dqf + (size_t)r0 * Hd, h1, w->q_w, w->q_b, nn, Hd, D);
      lin_bwd_given(t, dh + (size_t)r0 * D, true, dkm_r, dkf + (size_t)r0 * KVd, h1, w->k_w, w->k_b, nn, KVd, D);
      lin_bwd(t, dh + (size_t)r0 * D, dv + (size_t)r0 * KVd, h1, w->v_w, w->v_b, nn, KVd, D);
      be->rmsnorm_bwd(be, dx + (size_t)r0 * D, l > 0 ? (char *)dxm + (size_t)r0 * D * mmb : NULL, G(t, w->in_norm), dh + (size_t)r0 * D,
                      s->x_in + (size_t)r0 * D, w->in_norm, nn, D, c->eps);
    }
    if (t->layer_done) t->layer_done(t->layer_ctx, l);
    prof_mark(t, 7, &pt);
  }
  /* ---- back to packed order, then into the embeddings */
  float *dxp = F32(P, (size_t)n * D);
  be->gather_rows(be, dxp, dx, d_inv, n, D);
  if (n_text && trained(t, m->embed)) {
    be->gather_rows(be, rows, dxp, text_idx, n_text, D);
    be->embed_bwd(be, G(t, m->embed), rows, text_ids, n_text, D);
  }
  if (b->n_vit) {
    be->gather_rows(be, rows, dxp, vit_idx, b->n_vit, D);
    vit_backward(t, P, b, &vs, rows);
  }
  if (nv) {
    be->gather_rows(be, rows, dxp, vae_idx, nv, D);
    lin_bwd(t, NULL, rows, xt_mm, m->vae2llm_w, m->vae2llm_b, nv, D, PL);
    float *dte = F32Z(P, (size_t)nv * D), *dpre = F32(P, (size_t)nv * D);
    lin_bwd(t, dte, rows, te_act_mm, m->te_w2, m->te_b2, nv, D, D);
    be->silu_bwd(be, dpre, dte, te_h, (size_t)nv * D);
    lin_bwd(t, NULL, dpre, feat_mm, m->te_w1, m->te_b1, nv, D, 256);
  }
  /* no synchronisation: the pool's buffers are reused in stream order and every upload is staged, so
   * the host may prepare the next batch while this one runs (the step's gradient norm waits) */
  prof_mark(t, 8, &pt);
  free(S); free(x_in); free(perm); free(inv); free(hp); free(seg_off);
  P_release(P);
}
