/* bagel_und.c — images in a context: the SigLIP NaViT encoder + connector (understanding
 * tokens) and clean VAE latents (conditioning for editing), spec 7.3-7.6 and 4.5. */
#include "bagel.h"
#include "bagel_internal.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void positions(usbx_bagel *m, int T, int pos) {
  int32_t *p = xmalloc(sizeof(int32_t) * (size_t)T);
  for (int i = 0; i < T; i++) p[i] = pos;
  m->be->upload(m->be, m->d_pos, p, sizeof(int32_t) * (size_t)T);
  free(p);
}

/* the two marker embeddings into rows 0 and 1 of m->x */
static void markers(usbx_bagel *m) {
  int32_t ids[2] = {m->cfg.vis_start, m->cfg.vis_end};
  if (ids[0] < 0 || ids[1] < 0) usbx_die("the model has no <|vision_start|>/<|vision_end|> ids");
  m->be->upload(m->be, m->d_ids, ids, sizeof ids);
  m->be->embed(m->be, m->x, m->embed, m->d_ids, 2, m->cfg.hidden);
}

static void dl(usbx_backend *be, float *host, const float *dev, size_t n) { if (host) be->download(be, host, dev, sizeof(float) * n); }

/* ViT + connector: out (device f32 [n, D]) for the n patches of img. */
static void vit_embed(usbx_bagel *m, const float *img, int H, int W, float *out, usbx_vit_trace *tr) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *c = &m->cfg;
  int p = c->vit_patch, hp = H / p, wp = W / p, n = hp * wp, Dv = c->vit_hidden, Fv = c->vit_inter, D = c->hidden;
  int heads = c->vit_heads, hd = Dv / heads, pp = p * p * 3;
  size_t mm = usbx_dtype_size(be->mm_dtype);
  /* patchify: row-major patches, each flattened (py, px, c) */
  float *patches = xmalloc(sizeof(float) * (size_t)n * pp);
  int32_t *pid = xmalloc(sizeof(int32_t) * (size_t)n);
  for (int i = 0; i < hp; i++)
    for (int j = 0; j < wp; j++) {
      float *row = patches + ((size_t)i * wp + j) * pp;
      for (int py = 0; py < p; py++) memcpy(row + (size_t)py * p * 3, img + ((size_t)(i * p + py) * W + (size_t)j * p) * 3, sizeof(float) * (size_t)p * 3);
      pid[i * wp + j] = i * c->vit_max_patch + j;
    }
  if (tr && tr->patches) memcpy(tr->patches, patches, sizeof(float) * (size_t)n * pp);
  int wide = Fv > D ? Fv : D;
  if (pp > wide) wide = pp;
  float *x = be->alloc(be, sizeof(float) * (size_t)n * Dv), *t = be->alloc(be, sizeof(float) * (size_t)n * wide);
  float *q = be->alloc(be, sizeof(float) * (size_t)n * Dv), *k = be->alloc(be, sizeof(float) * (size_t)n * Dv), *v = be->alloc(be, sizeof(float) * (size_t)n * Dv);
  void *a = be->alloc(be, mm * (size_t)n * wide), *qm = be->alloc(be, mm * (size_t)n * Dv), *km = be->alloc(be, mm * (size_t)n * Dv),
       *vm = be->alloc(be, mm * (size_t)n * Dv), *om = be->alloc(be, mm * (size_t)n * Dv);
  int32_t *d_pid = be->alloc(be, sizeof(int32_t) * (size_t)n);
  be->upload(be, d_pid, pid, sizeof(int32_t) * (size_t)n);
  be->upload(be, t, patches, sizeof(float) * (size_t)n * pp);
  be->to_mm(be, a, pp, t, n, pp);
  be->matmul(be, x, a, m->patch_w, m->patch_b, n, Dv, pp, false);
  be->gather_rows(be, t, m->vit_pos, d_pid, n, Dv);
  be->add(be, x, t, (size_t)n * Dv);
  if (tr) { dl(be, tr->embeddings, x, (size_t)n * Dv); }
  usbx_attn_args aa = {.n_q = n, .q_start = 0, .kv_len = n, .n_heads = heads, .n_kv_heads = heads, .head_dim = hd, .causal = false};
  for (int l = 0; l < c->vit_layers; l++) {
    const vit_layer_w *w = &m->vit[l];
    be->layernorm(be, a, true, x, w->ln1_w, w->ln1_b, n, Dv, c->vit_eps);
    be->matmul(be, q, a, w->q_w, w->q_b, n, Dv, Dv, false);
    be->matmul(be, k, a, w->k_w, w->k_b, n, Dv, Dv, false);
    be->matmul(be, v, a, w->v_w, w->v_b, n, Dv, Dv, false);
    be->to_mm(be, qm, Dv, q, n, Dv); be->to_mm(be, km, Dv, k, n, Dv); be->to_mm(be, vm, Dv, v, n, Dv);
    be->attention(be, om, qm, km, vm, &aa);
    be->matmul(be, x, om, w->o_w, w->o_b, n, Dv, Dv, true);
    be->layernorm(be, a, true, x, w->ln2_w, w->ln2_b, n, Dv, c->vit_eps);
    be->matmul(be, t, a, w->fc1_w, w->fc1_b, n, Fv, Dv, false);
    be->gelu_tanh(be, a, t, (size_t)n * Fv);
    be->matmul(be, x, a, w->fc2_w, w->fc2_b, n, Dv, Fv, true);
  }
  be->layernorm(be, a, true, x, m->post_ln_w, m->post_ln_b, n, Dv, c->vit_eps);
  if (tr && tr->encoder) { be->layernorm(be, t, false, x, m->post_ln_w, m->post_ln_b, n, Dv, c->vit_eps); dl(be, tr->encoder, t, (size_t)n * Dv); }
  /* connector: fc1 -> gelu_tanh -> fc2, then + vit_pos_embed */
  be->matmul(be, t, a, m->conn_w1, m->conn_b1, n, D, Dv, false);
  be->gelu_tanh(be, a, t, (size_t)n * D);
  be->matmul(be, out, a, m->conn_w2, m->conn_b2, n, D, D, false);
  if (tr) dl(be, tr->connector, out, (size_t)n * D);
  be->gather_rows(be, t, m->vit_pos_embed, d_pid, n, D);
  if (tr) dl(be, tr->pos_emb, t, (size_t)n * D);
  be->add(be, out, t, (size_t)n * D);
  if (tr) dl(be, tr->llm_embeddings, out, (size_t)n * D);
  be->sync(be);
  void *bufs[] = {x, t, q, k, v, a, qm, km, vm, om, d_pid};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
  free(patches); free(pid);
}

void usbx_bagel_prefill_vit_image(usbx_bagel *m, usbx_ctx *c, const float *img, int H, int W, usbx_vit_trace *trace) {
  const usbx_bagel_config *cf = &m->cfg;
  if (!m->patch_w) usbx_die("the model was loaded without its understanding (ViT) weights");
  int p = cf->vit_patch;
  if (H % p || W % p || H / p > cf->vit_max_patch || W / p > cf->vit_max_patch)
    usbx_die("ViT image %dx%d: sides must be multiples of %d, at most %d patches", W, H, p, cf->vit_max_patch);
  int n = (H / p) * (W / p), T = n + 2;
  usbx_bagel_scratch(m, T);
  markers(m);
  vit_embed(m, img, H, W, m->x + 2 * (size_t)cf->hidden, trace);
  positions(m, T, usbx_ctx_pos(c));
  usbx_bagel_forward_block(m, c, T, T, false, true);
  usbx_bagel_ctx_advance(c, 1);
  m->be->sync(m->be);
}

void usbx_bagel_prefill_vae_latent(usbx_bagel *m, usbx_ctx *c, const float *tokens, int h, int w) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  if (!m->vae2llm_w) usbx_die("the model was loaded without its generation weights");
  int N = h * w, T = N + 2, D = cf->hidden, P = cf->latent_patch * cf->latent_patch * cf->latent_channels;
  usbx_bagel_scratch(m, T);
  markers(m);
  float *lat = m->x + 2 * (size_t)D;
  float zero = 0.0f;
  float *te = be->alloc(be, sizeof(float) * (size_t)D), *xt = be->alloc(be, sizeof(float) * (size_t)N * P);
  usbx_bagel_time_embed(m, &zero, 1, te);            /* a clean image sits at t = 0 */
  be->upload(be, xt, tokens, sizeof(float) * (size_t)N * P);
  usbx_bagel_head(m, lat, xt, m->vae2llm_w, m->vae2llm_w32, m->vae2llm_b, N, D, P, m->h_mm);
  be->add_row(be, lat, te, N, D);
  int32_t *pid = xmalloc(sizeof(int32_t) * (size_t)N);
  for (int r = 0; r < h; r++) for (int q = 0; q < w; q++) pid[r * w + q] = r * cf->max_latent + q;
  int32_t *d_pid = be->alloc(be, sizeof(int32_t) * (size_t)N);
  be->upload(be, d_pid, pid, sizeof(int32_t) * (size_t)N);
  float *rows = be->alloc(be, sizeof(float) * (size_t)N * D);
  be->gather_rows(be, rows, m->latent_pos, d_pid, N, D);
  be->add(be, lat, rows, (size_t)N * D);
  positions(m, T, usbx_ctx_pos(c));
  usbx_bagel_forward_block(m, c, T, 2, false, true);
  usbx_bagel_ctx_advance(c, 1);
  be->sync(be);
  be->free(be, te); be->free(be, xt); be->free(be, d_pid); be->free(be, rows);
  free(pid);
}
