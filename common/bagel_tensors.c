/* bagel_tensors.c — the one list of BAGEL checkpoint tensors (names, shapes, init rules), used
 * by the loader and by `usbx-ckpt init`; and the fixed sin-cos position tables. */
#include "bagel_internal.h"
#include "util.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void add(usbx_wlist *L, void **dst, bool mm, usbx_init_kind init, int ndim, int64_t a, int64_t b, const char *fmt, ...)
  __attribute__((format(printf, 8, 9)));
static void add(usbx_wlist *L, void **dst, bool mm, usbx_init_kind init, int ndim, int64_t a, int64_t b, const char *fmt, ...) {
  if (L->n == L->cap) { L->cap = L->cap ? L->cap * 2 : 256; L->v = xrealloc(L->v, sizeof *L->v * (size_t)L->cap); }
  usbx_wdesc *w = &L->v[L->n++];
  memset(w, 0, sizeof *w);
  va_list ap; va_start(ap, fmt);
  vsnprintf(w->name, sizeof w->name, fmt, ap);
  va_end(ap);
  w->ndim = ndim; w->shape[0] = a; w->shape[1] = b; w->dst = dst; w->mm = mm; w->init = init;
}

#define SLOT(field) (m ? (void **)&(field) : NULL)

void usbx_bagel_enumerate(const usbx_bagel_config *c, unsigned parts, usbx_bagel *m, usbx_wlist *L) {
  int D = c->hidden, F = c->inter, Hd = c->heads * c->head_dim, KVd = c->kv_heads * c->head_dim, d = c->head_dim;
  const usbx_init_kind N = USBX_INIT_NORMAL, Z = USBX_INIT_ZERO, O = USBX_INIT_ONE;
  if (parts & USBX_PART_LLM) {
    add(L, SLOT(m->embed), true, N, 2, c->vocab, D, "language_model.model.embed_tokens.weight");
    for (int l = 0; l < c->layers; l++) {
      for (int e = 0; e < 2; e++) {
        expert_w *x = m ? &m->layers[l].e[e] : NULL;
        const char *s = e ? "_moe_gen" : "", *pre = "language_model.model.layers";
        add(L, SLOT(x->in_norm), false, O, 1, D, 0, "%s.%d.input_layernorm%s.weight", pre, l, s);
        add(L, SLOT(x->post_norm), false, O, 1, D, 0, "%s.%d.post_attention_layernorm%s.weight", pre, l, s);
        add(L, SLOT(x->q_w), true, N, 2, Hd, D, "%s.%d.self_attn.q_proj%s.weight", pre, l, s);
        add(L, SLOT(x->q_b), false, Z, 1, Hd, 0, "%s.%d.self_attn.q_proj%s.bias", pre, l, s);
        add(L, SLOT(x->k_w), true, N, 2, KVd, D, "%s.%d.self_attn.k_proj%s.weight", pre, l, s);
        add(L, SLOT(x->k_b), false, Z, 1, KVd, 0, "%s.%d.self_attn.k_proj%s.bias", pre, l, s);
        add(L, SLOT(x->v_w), true, N, 2, KVd, D, "%s.%d.self_attn.v_proj%s.weight", pre, l, s);
        add(L, SLOT(x->v_b), false, Z, 1, KVd, 0, "%s.%d.self_attn.v_proj%s.bias", pre, l, s);
        add(L, SLOT(x->o_w), true, N, 2, D, Hd, "%s.%d.self_attn.o_proj%s.weight", pre, l, s);
        add(L, SLOT(x->q_norm), false, O, 1, d, 0, "%s.%d.self_attn.q_norm%s.weight", pre, l, s);
        add(L, SLOT(x->k_norm), false, O, 1, d, 0, "%s.%d.self_attn.k_norm%s.weight", pre, l, s);
        const char *mlp = e ? "mlp_moe_gen" : "mlp";
        add(L, SLOT(x->gate), true, N, 2, F, D, "%s.%d.%s.gate_proj.weight", pre, l, mlp);
        add(L, SLOT(x->up), true, N, 2, F, D, "%s.%d.%s.up_proj.weight", pre, l, mlp);
        add(L, SLOT(x->down), true, N, 2, D, F, "%s.%d.%s.down_proj.weight", pre, l, mlp);
      }
    }
    add(L, SLOT(m->norm[0]), false, O, 1, D, 0, "language_model.model.norm.weight");
    add(L, SLOT(m->norm[1]), false, O, 1, D, 0, "language_model.model.norm_moe_gen.weight");
    add(L, SLOT(m->lm_head), true, N, 2, c->vocab, D, "language_model.lm_head.weight");
  }
  if ((parts & USBX_PART_GEN) && c->visual_gen) {
    int P = c->latent_patch * c->latent_patch * c->latent_channels;
    add(L, SLOT(m->te_w1), true, N, 2, D, 256, "time_embedder.mlp.0.weight");
    add(L, SLOT(m->te_b1), false, Z, 1, D, 0, "time_embedder.mlp.0.bias");
    add(L, SLOT(m->te_w2), true, N, 2, D, D, "time_embedder.mlp.2.weight");
    add(L, SLOT(m->te_b2), false, Z, 1, D, 0, "time_embedder.mlp.2.bias");
    add(L, SLOT(m->vae2llm_w), true, N, 2, D, P, "vae2llm.weight");
    add(L, SLOT(m->vae2llm_b), false, Z, 1, D, 0, "vae2llm.bias");
    add(L, SLOT(m->llm2vae_w), true, N, 2, P, D, "llm2vae.weight");
    add(L, SLOT(m->llm2vae_b), false, Z, 1, P, 0, "llm2vae.bias");
    add(L, SLOT(m->latent_pos), false, USBX_INIT_SINCOS_LATENT, 2, (int64_t)c->max_latent * c->max_latent, D, "latent_pos_embed.pos_embed");
  }
  if ((parts & USBX_PART_VIT) && c->visual_und) {
    int Dv = c->vit_hidden, Fv = c->vit_inter, pp = c->vit_patch * c->vit_patch * 3;
    int side = c->vit_image_size / c->vit_patch;
    const char *vm = "vit_model.vision_model";
    add(L, SLOT(m->patch_w), true, N, 2, Dv, pp, "%s.embeddings.patch_embedding.weight", vm);
    add(L, SLOT(m->patch_b), false, Z, 1, Dv, 0, "%s.embeddings.patch_embedding.bias", vm);
    add(L, SLOT(m->vit_pos), false, N, 2, (int64_t)side * side, Dv, "%s.embeddings.position_embedding.weight", vm);
    for (int j = 0; j < c->vit_layers; j++) {
      vit_layer_w *x = m ? &m->vit[j] : NULL;
      const char *pre = "vit_model.vision_model.encoder.layers";
      add(L, SLOT(x->ln1_w), false, O, 1, Dv, 0, "%s.%d.layer_norm1.weight", pre, j);
      add(L, SLOT(x->ln1_b), false, Z, 1, Dv, 0, "%s.%d.layer_norm1.bias", pre, j);
      add(L, SLOT(x->q_w), true, N, 2, Dv, Dv, "%s.%d.self_attn.q_proj.weight", pre, j);
      add(L, SLOT(x->q_b), false, Z, 1, Dv, 0, "%s.%d.self_attn.q_proj.bias", pre, j);
      add(L, SLOT(x->k_w), true, N, 2, Dv, Dv, "%s.%d.self_attn.k_proj.weight", pre, j);
      add(L, SLOT(x->k_b), false, Z, 1, Dv, 0, "%s.%d.self_attn.k_proj.bias", pre, j);
      add(L, SLOT(x->v_w), true, N, 2, Dv, Dv, "%s.%d.self_attn.v_proj.weight", pre, j);
      add(L, SLOT(x->v_b), false, Z, 1, Dv, 0, "%s.%d.self_attn.v_proj.bias", pre, j);
      add(L, SLOT(x->o_w), true, N, 2, Dv, Dv, "%s.%d.self_attn.out_proj.weight", pre, j);
      add(L, SLOT(x->o_b), false, Z, 1, Dv, 0, "%s.%d.self_attn.out_proj.bias", pre, j);
      add(L, SLOT(x->ln2_w), false, O, 1, Dv, 0, "%s.%d.layer_norm2.weight", pre, j);
      add(L, SLOT(x->ln2_b), false, Z, 1, Dv, 0, "%s.%d.layer_norm2.bias", pre, j);
      add(L, SLOT(x->fc1_w), true, N, 2, Fv, Dv, "%s.%d.mlp.fc1.weight", pre, j);
      add(L, SLOT(x->fc1_b), false, Z, 1, Fv, 0, "%s.%d.mlp.fc1.bias", pre, j);
      add(L, SLOT(x->fc2_w), true, N, 2, Dv, Fv, "%s.%d.mlp.fc2.weight", pre, j);
      add(L, SLOT(x->fc2_b), false, Z, 1, Dv, 0, "%s.%d.mlp.fc2.bias", pre, j);
    }
    add(L, SLOT(m->post_ln_w), false, O, 1, Dv, 0, "%s.post_layernorm.weight", vm);
    add(L, SLOT(m->post_ln_b), false, Z, 1, Dv, 0, "%s.post_layernorm.bias", vm);
    add(L, SLOT(m->conn_w1), true, N, 2, D, Dv, "connector.fc1.weight");
    add(L, SLOT(m->conn_b1), false, Z, 1, D, 0, "connector.fc1.bias");
    add(L, SLOT(m->conn_w2), true, N, 2, D, D, "connector.fc2.weight");
    add(L, SLOT(m->conn_b2), false, Z, 1, D, 0, "connector.fc2.bias");
    add(L, SLOT(m->vit_pos_embed), false, USBX_INIT_SINCOS_VIT, 2, (int64_t)c->vit_max_patch * c->vit_max_patch, D, "vit_pos_embed.pos_embed");
  }
}

static void add4(usbx_wlist *L, usbx_init_kind init, int ndim, const int64_t *shape, const char *fmt, ...)
  __attribute__((format(printf, 5, 6)));
static void add4(usbx_wlist *L, usbx_init_kind init, int ndim, const int64_t *shape, const char *fmt, ...) {
  char name[160];
  va_list ap; va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  add(L, NULL, false, init, ndim, shape[0], ndim > 1 ? shape[1] : 0, "%s", name);
  for (int i = 2; i < ndim; i++) L->v[L->n - 1].shape[i] = shape[i];
}

static void conv(usbx_wlist *L, const char *pre, int out, int in, int k) {
  add4(L, USBX_INIT_NORMAL, 4, (int64_t[]){out, in, k, k}, "%s.weight", pre);
  add4(L, USBX_INIT_ZERO, 1, (int64_t[]){out}, "%s.bias", pre);
}
static void gnorm(usbx_wlist *L, const char *pre, int c) {
  add4(L, USBX_INIT_ONE, 1, (int64_t[]){c}, "%s.weight", pre);
  add4(L, USBX_INIT_ZERO, 1, (int64_t[]){c}, "%s.bias", pre);
}
static void resblock(usbx_wlist *L, const char *pre, int in, int out) {
  char b[128];
  snprintf(b, sizeof b, "%s.norm1", pre); gnorm(L, b, in);
  snprintf(b, sizeof b, "%s.conv1", pre); conv(L, b, out, in, 3);
  snprintf(b, sizeof b, "%s.norm2", pre); gnorm(L, b, out);
  snprintf(b, sizeof b, "%s.conv2", pre); conv(L, b, out, out, 3);
  if (in != out) { snprintf(b, sizeof b, "%s.nin_shortcut", pre); conv(L, b, out, in, 1); }
}
static void mid(usbx_wlist *L, const char *pre, int c) {
  char b[128];
  snprintf(b, sizeof b, "%s.mid.block_1", pre); resblock(L, b, c, c);
  snprintf(b, sizeof b, "%s.mid.attn_1.norm", pre); gnorm(L, b, c);
  const char *qkv[] = {"q", "k", "v", "proj_out"};
  for (int i = 0; i < 4; i++) { snprintf(b, sizeof b, "%s.mid.attn_1.%s", pre, qkv[i]); conv(L, b, c, c, 1); }
  snprintf(b, sizeof b, "%s.mid.block_2", pre); resblock(L, b, c, c);
}

void usbx_ae_enumerate(const usbx_ae_config *a, usbx_wlist *L) {
  char b[128];
  int n = a->n_mult, ch = a->ch;
  /* encoder (ae.py Encoder): in_ch_mult = (1,) + ch_mult */
  conv(L, "encoder.conv_in", ch, a->in_channels, 3);
  int block_in = ch;
  for (int l = 0; l < n; l++) {
    block_in = ch * (l == 0 ? 1 : a->ch_mult[l - 1]);
    int block_out = ch * a->ch_mult[l];
    for (int i = 0; i < a->num_res_blocks; i++) {
      snprintf(b, sizeof b, "encoder.down.%d.block.%d", l, i);
      resblock(L, b, block_in, block_out);
      block_in = block_out;
    }
    if (l != n - 1) { snprintf(b, sizeof b, "encoder.down.%d.downsample.conv", l); conv(L, b, block_in, block_in, 3); }
  }
  mid(L, "encoder", block_in);
  gnorm(L, "encoder.norm_out", block_in);
  conv(L, "encoder.conv_out", 2 * a->z_channels, block_in, 3);
  /* decoder: up levels run n-1 .. 0, each with num_res_blocks + 1 blocks */
  block_in = ch * a->ch_mult[n - 1];
  conv(L, "decoder.conv_in", block_in, a->z_channels, 3);
  mid(L, "decoder", block_in);
  for (int l = n - 1; l >= 0; l--) {
    int block_out = ch * a->ch_mult[l];
    for (int i = 0; i <= a->num_res_blocks; i++) {
      snprintf(b, sizeof b, "decoder.up.%d.block.%d", l, i);
      resblock(L, b, block_in, block_out);
      block_in = block_out;
    }
    if (l != 0) { snprintf(b, sizeof b, "decoder.up.%d.upsample.conv", l); conv(L, b, block_in, block_in, 3); }
  }
  gnorm(L, "decoder.norm_out", block_in);
  conv(L, "decoder.conv_out", a->out_ch, block_in, 3);
}

void usbx_sincos_2d(float *table, int G, int D) {
  /* Upstream (mutils.py): omega in float64, the first half of each row encodes the column j,
   * the second half the row i; each half is [sin | cos]. */
  int Q = D / 4;
  for (int i = 0; i < G; i++)
    for (int j = 0; j < G; j++) {
      float *row = table + ((size_t)i * G + j) * D;
      for (int k = 0; k < Q; k++) {
        double omega = 1.0 / pow(10000.0, (double)k / (double)Q);
        row[k] = (float)sin(j * omega);
        row[Q + k] = (float)cos(j * omega);
        row[2 * Q + k] = (float)sin(i * omega);
        row[3 * Q + k] = (float)cos(i * omega);
      }
    }
}

int usbx_bagel_layer_of(const char *name) {
  int l, k = 0;
  if (sscanf(name, "language_model.model.layers.%d.%n", &l, &k) == 1 && k > 0) return l;
  return -1;
}
