/* bagel.c — BAGEL language model: config, weight loading, MoT forward with KV cache, decoding.
 *
 * Token order inside one forward: the tokens of a forward are processed in expert-contiguous
 * runs (und rows first, then gen rows).  Inside an image block every token sees every other and
 * all share one position, so moving its two marker tokens next to each other changes nothing;
 * this lets each expert's norms, projections and MLP run on one contiguous row range. */
#include "bagel.h"
#include "bagel_internal.h"
#include "jsonl.h"
#include "safetensors.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- config */

static int json_file(const char *path, jv *out, char *err, size_t errlen) {
  size_t n;
  char *s = usbx_read_file(path, &n);
  if (!s) { snprintf(err, errlen, "%s: cannot read", path); return -1; }
  jv v = jv_parse_sized(s, (int)n);
  free(s);
  if (!jv_is_valid(v)) {
    jv m = jv_invalid_get_msg(v);
    snprintf(err, errlen, "%s: %s", path, jv_get_kind(m) == JV_KIND_STRING ? jv_string_value(m) : "invalid JSON");
    jv_free(m);
    return -1;
  }
  if (jv_get_kind(v) != JV_KIND_OBJECT) { jv_free(v); snprintf(err, errlen, "%s: not a JSON object", path); return -1; }
  *out = v;
  return 0;
}

static int get_int(jv o, const char *file, const char *key, int def, bool required, int *out, char *err, size_t errlen) {
  double d;
  if (!usbx_jv_num(o, key, &d)) {
    if (required) { snprintf(err, errlen, "%s: missing numeric field \"%s\"", file, key); return -1; }
    *out = def;
    return 0;
  }
  if (d != floor(d) || d < 0 || d > 1e9) { snprintf(err, errlen, "%s: field \"%s\" is not a valid size", file, key); return -1; }
  *out = (int)d;
  return 0;
}

static bool get_bool(jv o, const char *key, bool def) {
  if (!usbx_jv_has(o, key)) return def;
  jv v = jv_object_get(jv_copy(o), jv_string(key));
  bool r = jv_get_kind(v) == JV_KIND_TRUE ? true : jv_get_kind(v) == JV_KIND_FALSE ? false : def;
  jv_free(v);
  return r;
}

int usbx_bagel_read_config(const char *dir, usbx_bagel_config *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  char *p = usbx_path_join(dir, "llm_config.json");
  jv o;
  int rc = json_file(p, &o, err, errlen);
  if (rc == 0) {
    double d;
    rc |= get_int(o, p, "vocab_size", 0, true, &c->vocab, err, errlen);
    if (!rc) rc |= get_int(o, p, "hidden_size", 0, true, &c->hidden, err, errlen);
    if (!rc) rc |= get_int(o, p, "intermediate_size", 0, true, &c->inter, err, errlen);
    if (!rc) rc |= get_int(o, p, "num_hidden_layers", 0, true, &c->layers, err, errlen);
    if (!rc) rc |= get_int(o, p, "num_attention_heads", 0, true, &c->heads, err, errlen);
    if (!rc) rc |= get_int(o, p, "num_key_value_heads", c->heads, false, &c->kv_heads, err, errlen);
    c->eps = usbx_jv_num(o, "rms_norm_eps", &d) ? (float)d : 1e-6f;
    c->theta = usbx_jv_num(o, "rope_theta", &d) ? (float)d : 10000.0f;
    if (!rc) {
      jv rs = jv_object_get(jv_copy(o), jv_string("rope_scaling"));
      if (jv_get_kind(rs) != JV_KIND_NULL && jv_get_kind(rs) != JV_KIND_INVALID) {
        snprintf(err, errlen, "%s: rope_scaling is set; only the default RoPE is supported", p);
        rc = -1;
      }
      jv_free(rs);
    }
    if (!rc && (c->heads == 0 || c->hidden % c->heads || c->kv_heads == 0 || c->heads % c->kv_heads)) {
      snprintf(err, errlen, "%s: hidden_size %d, %d heads and %d kv heads do not divide", p, c->hidden, c->heads, c->kv_heads);
      rc = -1;
    }
    if (!rc) c->head_dim = c->hidden / c->heads;
    if (!rc && (c->head_dim % 2 || c->head_dim > 256)) { snprintf(err, errlen, "%s: head_dim %d unsupported", p, c->head_dim); rc = -1; }
    jv_free(o);
  }
  free(p);
  if (rc) return -1;

  /* BagelConfig: bagel_config.json when present, else the values the inference scripts hard-code. */
  c->visual_gen = c->visual_und = true;
  c->latent_patch = 2; c->max_latent = 64; c->vit_max_patch = 70; c->timestep_shift = 1.0f;
  c->bos = c->eos = c->vis_start = c->vis_end = -1;
  p = usbx_path_join(dir, "bagel_config.json");
  if (usbx_file_exists(p)) {
    if (json_file(p, &o, err, errlen)) { free(p); return -1; }
    double d;
    c->visual_gen = get_bool(o, "visual_gen", true);
    c->visual_und = get_bool(o, "visual_und", true);
    rc |= get_int(o, p, "latent_patch_size", 2, false, &c->latent_patch, err, errlen);
    if (!rc) rc |= get_int(o, p, "max_latent_size", 64, false, &c->max_latent, err, errlen);
    if (!rc) rc |= get_int(o, p, "vit_max_num_patch_per_side", 70, false, &c->vit_max_patch, err, errlen);
    if (usbx_jv_num(o, "timestep_shift", &d)) c->timestep_shift = (float)d;
    jv st = jv_object_get(jv_copy(o), jv_string("special_token_ids"));
    if (jv_get_kind(st) == JV_KIND_OBJECT) {
      if (usbx_jv_num(st, "bos_token_id", &d)) c->bos = (int32_t)d;
      if (usbx_jv_num(st, "eos_token_id", &d)) c->eos = (int32_t)d;
      if (usbx_jv_num(st, "start_of_image", &d)) c->vis_start = (int32_t)d;
      if (usbx_jv_num(st, "end_of_image", &d)) c->vis_end = (int32_t)d;
    }
    jv_free(st);
    jv_free(o);
    if (rc) { free(p); return -1; }
  }
  free(p);

  /* latent space */
  c->has_vae = true; c->latent_channels = 16; c->vae_downsample = 8;
  p = usbx_path_join(dir, "bagel_config.json");
  if (usbx_file_exists(p) && json_file(p, &o, err, errlen) == 0) {
    if (usbx_jv_has(o, "vae")) {
      jv v = jv_object_get(jv_copy(o), jv_string("vae"));
      if (jv_get_kind(v) == JV_KIND_NULL) {
        c->has_vae = false; c->vae_downsample = 1;
        rc |= get_int(o, p, "latent_channels", 3, false, &c->latent_channels, err, errlen);
      }
      jv_free(v);
    }
    jv_free(o);
  }
  free(p);
  if (rc) return -1;
  if (c->has_vae) {
    p = usbx_path_join(dir, "ae_config.json");
    if (usbx_file_exists(p)) {
      if (json_file(p, &o, err, errlen)) { free(p); return -1; }
      rc |= get_int(o, p, "z_channels", 16, false, &c->latent_channels, err, errlen);
      if (!rc) rc |= get_int(o, p, "downsample", 8, false, &c->vae_downsample, err, errlen);
      jv_free(o);
    }
    free(p);
    if (rc) return -1;
  }

  p = usbx_path_join(dir, "vit_config.json");
  if (usbx_file_exists(p)) {
    if (json_file(p, &o, err, errlen)) { free(p); return -1; }
    double d;
    rc |= get_int(o, p, "hidden_size", 0, true, &c->vit_hidden, err, errlen);
    if (!rc) rc |= get_int(o, p, "intermediate_size", 0, true, &c->vit_inter, err, errlen);
    if (!rc) rc |= get_int(o, p, "num_hidden_layers", 0, true, &c->vit_layers, err, errlen);
    if (!rc) rc |= get_int(o, p, "num_attention_heads", 0, true, &c->vit_heads, err, errlen);
    if (!rc) rc |= get_int(o, p, "patch_size", 14, false, &c->vit_patch, err, errlen);
    if (!rc) rc |= get_int(o, p, "image_size", 980, false, &c->vit_image_size, err, errlen);
    c->vit_eps = usbx_jv_num(o, "layer_norm_eps", &d) ? (float)d : 1e-6f;
    /* Upstream builds num_hidden_layers - 1 layers (vit_select_layer -2 with the last dropped). */
    if (!rc) c->vit_layers -= 1;
    jv_free(o);
    if (rc) { free(p); return -1; }
  } else {
    c->visual_und = false;
  }
  free(p);
  return 0;
}

int usbx_ae_read_config(const char *dir, usbx_ae_config *a, char *err, size_t errlen) {
  /* FLUX.1 values, as upstream load_ae hard-codes them */
  *a = (usbx_ae_config){.in_channels = 3, .out_ch = 3, .ch = 128, .ch_mult = {1, 2, 4, 4}, .n_mult = 4,
                        .num_res_blocks = 2, .z_channels = 16, .downsample = 8, .scale_factor = 0.3611f, .shift_factor = 0.1159f};
  char *p = usbx_path_join(dir, "ae_config.json");
  if (!usbx_file_exists(p)) { free(p); return 0; }
  jv o;
  if (json_file(p, &o, err, errlen)) { free(p); return -1; }
  int rc = 0;
  double d;
  rc |= get_int(o, p, "in_channels", 3, false, &a->in_channels, err, errlen);
  if (!rc) rc |= get_int(o, p, "out_ch", 3, false, &a->out_ch, err, errlen);
  if (!rc) rc |= get_int(o, p, "ch", 128, false, &a->ch, err, errlen);
  if (!rc) rc |= get_int(o, p, "num_res_blocks", 2, false, &a->num_res_blocks, err, errlen);
  if (!rc) rc |= get_int(o, p, "z_channels", 16, false, &a->z_channels, err, errlen);
  if (!rc) rc |= get_int(o, p, "downsample", 8, false, &a->downsample, err, errlen);
  if (usbx_jv_num(o, "scale_factor", &d)) a->scale_factor = (float)d;
  if (usbx_jv_num(o, "shift_factor", &d)) a->shift_factor = (float)d;
  jv cm = jv_object_get(jv_copy(o), jv_string("ch_mult"));
  if (!rc && jv_get_kind(cm) == JV_KIND_ARRAY) {
    int n = jv_array_length(jv_copy(cm));
    if (n < 1 || n > 8) { snprintf(err, errlen, "%s: ch_mult must have 1 to 8 entries", p); rc = -1; }
    for (int i = 0; !rc && i < n; i++) {
      jv e = jv_array_get(jv_copy(cm), i);
      if (jv_get_kind(e) != JV_KIND_NUMBER || jv_number_value(e) < 1) { snprintf(err, errlen, "%s: ch_mult[%d] is not a positive number", p, i); rc = -1; }
      else a->ch_mult[i] = (int)jv_number_value(e);
      jv_free(e);
    }
    if (!rc) a->n_mult = n;
  }
  jv_free(cm);
  if (!rc && (a->ch % 32 || a->ch < 32)) { snprintf(err, errlen, "%s: ch %d is not a multiple of 32 (GroupNorm has 32 groups)", p, a->ch); rc = -1; }
  jv_free(o);
  free(p);
  return rc ? -1 : 0;
}

/* ---------------------------------------------------------------- loading */

typedef struct {
  usbx_st_file *files;
  int nfiles;
  char *err;
  size_t errlen;
  const char *dir;
  int missing;
} loader;

static const usbx_st_tensor *find_checked(loader *L, const char *name, int ndim, const int64_t *shape) {
  for (int f = 0; f < L->nfiles; f++) {
    const usbx_st_tensor *t = usbx_st_find(&L->files[f], name);
    if (!t) continue;
    bool ok = t->ndim == ndim && usbx_dtype_is_float(t->dtype);
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
      char a[96], b[96];
      if (!L->missing)
        snprintf(L->err, L->errlen, "%s: tensor %s has shape %s dtype %s, expected %s (float)", L->files[f].path, name,
                 usbx_shape_str(t->ndim, t->shape, a, sizeof a), usbx_dtype_name(t->dtype), usbx_shape_str(ndim, shape, b, sizeof b));
      L->missing++;
      return NULL;
    }
    return t;
  }
  if (!L->missing)
    snprintf(L->err, L->errlen, "%s: checkpoint lacks tensor %s (a fine-tune saved without it? run `usbx-ckpt complete --base BASE_DIR %s`)",
             L->dir, name, L->dir);
  L->missing++;
  return NULL;
}

/* Moves q/k/v (and their biases) and gate/up of every expert into one allocation each, so a
 * decoding step reads them with one matrix-vector product; the individual pointers become views
 * into those blocks (q_w, q_b and gate own the memory). */
static void *join(usbx_backend *be, void **parts[], const size_t *bytes, int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += bytes[i];
  char *blk = be->alloc(be, total), *at = blk;
  for (int i = 0; i < n; i++) {
    be->copy(be, at, *parts[i], bytes[i]);
    be->free(be, *parts[i]);
    *parts[i] = at;
    at += bytes[i];
  }
  return blk;
}

static void fuse_experts(usbx_bagel *m) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *c = &m->cfg;
  size_t mm = usbx_dtype_size(be->mm_dtype), D = (size_t)c->hidden, Hd = (size_t)c->heads * c->head_dim,
         KVd = (size_t)c->kv_heads * c->head_dim, F = (size_t)c->inter;
  for (int l = 0; l < c->layers; l++)
    for (int e = 0; e < 2; e++) {
      expert_w *w = &m->layers[l].e[e];
      void **qkv[] = {&w->q_w, &w->k_w, &w->v_w}, **qkvb[] = {(void **)&w->q_b, (void **)&w->k_b, (void **)&w->v_b};
      void **gu[] = {&w->gate, &w->up};
      size_t b1[] = {Hd * D * mm, KVd * D * mm, KVd * D * mm}, b2[] = {Hd * 4, KVd * 4, KVd * 4}, b3[] = {F * D * mm, F * D * mm};
      join(be, qkv, b1, 3);
      join(be, qkvb, b2, 3);
      join(be, gu, b3, 2);
      w->fused = true;
    }
  be->sync(be);
}

/* the fp32 copy of a generation head (see bagel_internal.h), when dst is one and mm is not f32 */
static float **head32_of(usbx_bagel *m, void **dst) {
  if (!usbx_mm_lossy(m->be)) return NULL;
  if (dst == &m->te_w1) return &m->te_w1_32;
  if (dst == &m->te_w2) return &m->te_w2_32;
  if (dst == &m->vae2llm_w) return &m->vae2llm_w32;
  if (dst == &m->llm2vae_w) return &m->llm2vae_w32;
  return NULL;
}
static void upload_head32(usbx_bagel *m, void **dst, const usbx_st_tensor *t) {
  float **h = head32_of(m, dst);
  if (!h) return;
  size_t n = (size_t)usbx_shape_numel(t->ndim, t->shape);
  if (!*h) *h = m->be->alloc(m->be, sizeof(float) * n);
  m->be->upload_convert(m->be, *h, false, t->data, t->dtype, n);
}

void usbx_bagel_head(usbx_bagel *m, float *y, const float *x, const void *w_mm, const float *w32, const float *b,
                     int M, int N, int K, void *scratch_mm) {
  usbx_backend *be = m->be;
  if (w32) { be->matmul_f32(be, y, x, w32, b, M, N, K, false); return; }
  be->to_mm(be, scratch_mm, K, x, M, K);
  be->matmul(be, y, scratch_mm, w_mm, b, M, N, K, false);
}

usbx_bagel *usbx_bagel_load(const char *dir, usbx_backend *be, unsigned parts, char *err, size_t errlen) {
  usbx_bagel *m = xcalloc(1, sizeof *m);
  if (usbx_bagel_read_config(dir, &m->cfg, err, errlen)) { free(m); return NULL; }
  m->be = be;
  m->parts = parts;
  const usbx_bagel_config *c = &m->cfg;
  loader L = {0};
  L.err = err; L.errlen = errlen; L.dir = dir;
  L.files = xcalloc(2, sizeof *L.files);
  const char *names[] = {"model.safetensors", "ema.safetensors"};
  for (int i = 0; i < 2 && L.nfiles == 0; i++) {
    char *p = usbx_path_join(dir, names[i]);
    if (usbx_file_exists(p)) {
      if (usbx_st_open(p, &L.files[0], err, errlen)) { free(p); free(L.files); free(m); return NULL; }
      L.nfiles = 1;
    }
    free(p);
  }
  if (!L.nfiles) { snprintf(err, errlen, "%s: neither model.safetensors nor ema.safetensors found", dir); free(L.files); free(m); return NULL; }

  m->layers = xcalloc((size_t)c->layers, sizeof *m->layers);
  m->vit = xcalloc((size_t)(c->vit_layers > 0 ? c->vit_layers : 1), sizeof *m->vit);
  usbx_wlist wl = {0};
  usbx_bagel_enumerate(c, parts, m, &wl);
  usbx_wdesc *W = wl.v;
  int nW = wl.n;
  /* pass 1: every tensor present with its shape, before any upload */
  const usbx_st_tensor **src = xcalloc((size_t)(nW ? nW : 1), sizeof *src);
  for (int i = 0; i < nW; i++) src[i] = find_checked(&L, W[i].name, W[i].ndim, W[i].shape);
  if (L.missing) {
    if (L.missing > 1) {
      size_t k = strlen(err);
      snprintf(err + k, errlen - k, " (and %d more missing or mis-shaped tensors)", L.missing - 1);
    }
    for (int f = 0; f < L.nfiles; f++) usbx_st_close(&L.files[f]);
    free(L.files); free(src); free(W); free(m->layers); free(m->vit); free(m);
    return NULL;
  }
  /* pass 2: upload tensor by tensor, dropping each one's pages after use */
  for (int i = 0; i < nW; i++) {
    const usbx_st_tensor *t = src[i];
    size_t n = (size_t)usbx_shape_numel(t->ndim, t->shape);
    size_t bytes = n * (W[i].mm ? usbx_dtype_size(be->mm_dtype) : sizeof(float));
    void *p = be->alloc(be, bytes);
    be->upload_convert(be, p, W[i].mm, t->data, t->dtype, n);
    *W[i].dst = p;
    upload_head32(m, W[i].dst, t);
    usbx_st_dontneed(&L.files[0], t);
  }
  be->sync(be);
  for (int f = 0; f < L.nfiles; f++) usbx_st_close(&L.files[f]);
  free(L.files); free(src); free(W);
  if (parts & USBX_PART_LLM) fuse_experts(m);
  return m;
}

int usbx_bagel_load_weights(usbx_bagel *m, const char *path, char *err, size_t errlen) {
  usbx_st_file f;
  if (usbx_st_open(path, &f, err, errlen)) return -1;
  usbx_wlist wl = {0};
  usbx_bagel_enumerate(&m->cfg, m->parts, m, &wl);
  loader L = {.files = &f, .nfiles = 1, .err = err, .errlen = errlen, .dir = path};
  const usbx_st_tensor **src = xcalloc((size_t)(wl.n ? wl.n : 1), sizeof *src);
  for (int i = 0; i < wl.n; i++) src[i] = find_checked(&L, wl.v[i].name, wl.v[i].ndim, wl.v[i].shape);
  int rc = L.missing ? -1 : 0;
  for (int i = 0; rc == 0 && i < wl.n; i++) {
    m->be->upload_convert(m->be, *wl.v[i].dst, wl.v[i].mm, src[i]->data, src[i]->dtype, (size_t)usbx_shape_numel(src[i]->ndim, src[i]->shape));
    upload_head32(m, wl.v[i].dst, src[i]);
  }
  m->be->sync(m->be);
  usbx_st_close(&f);
  free(src); free(wl.v);
  return rc;
}

static void release(usbx_bagel *m, void **p) { if (*p) m->be->free(m->be, *p); *p = NULL; }

static void unfuse(usbx_bagel *m) {
  for (int l = 0; l < m->cfg.layers && m->layers; l++)
    for (int e = 0; e < 2; e++) {
      expert_w *w = &m->layers[l].e[e];
      if (w->fused) { w->k_w = w->v_w = w->up = NULL; w->k_b = w->v_b = NULL; }   /* views into q_w, q_b, gate */
      w->fused = false;
    }
}

void usbx_bagel_drop_layer_weights(usbx_bagel *m) {
  unfuse(m);
  usbx_wlist wl = {0};
  usbx_bagel_enumerate(&m->cfg, m->parts, m, &wl);
  for (int i = 0; i < wl.n; i++)
    if (usbx_bagel_layer_of(wl.v[i].name) >= 0) release(m, wl.v[i].dst);
  free(wl.v);
}

void usbx_bagel_free(usbx_bagel *m) {
  if (!m) return;
  void **scr[] = {(void **)&m->x, (void **)&m->q, (void **)&m->k, (void **)&m->v, (void **)&m->tmp, (void **)&m->gate,
                  (void **)&m->up, &m->h_mm, &m->q_mm, &m->o_mm, &m->act_mm, (void **)&m->d_ids, (void **)&m->d_pos,
                  (void **)&m->logits};
  for (size_t i = 0; i < sizeof scr / sizeof scr[0]; i++) release(m, scr[i]);
  void **h32[] = {(void **)&m->te_w1_32, (void **)&m->te_w2_32, (void **)&m->vae2llm_w32, (void **)&m->llm2vae_w32};
  for (size_t i = 0; i < sizeof h32 / sizeof h32[0]; i++) release(m, h32[i]);
  unfuse(m);
  usbx_wlist wl = {0};
  usbx_bagel_enumerate(&m->cfg, m->parts, m, &wl);
  for (int i = 0; i < wl.n; i++) release(m, wl.v[i].dst);
  free(wl.v);
  free(m->layers);
  free(m->vit);
  free(m);
}

const usbx_bagel_config *usbx_bagel_cfg(const usbx_bagel *m) { return &m->cfg; }
usbx_backend *usbx_bagel_backend(const usbx_bagel *m) { return m->be; }
void usbx_bagel_set_special_ids(usbx_bagel *m, int32_t bos, int32_t eos, int32_t vis_start, int32_t vis_end) {
  m->cfg.bos = bos; m->cfg.eos = eos; m->cfg.vis_start = vis_start; m->cfg.vis_end = vis_end;
}

/* ---------------------------------------------------------------- contexts */

usbx_ctx *usbx_ctx_new(usbx_bagel *m) {
  usbx_ctx *c = xcalloc(1, sizeof *c);
  c->k = xcalloc((size_t)m->cfg.layers, sizeof *c->k);
  c->v = xcalloc((size_t)m->cfg.layers, sizeof *c->v);
  return c;
}

static size_t kv_row_bytes(const usbx_bagel *m) {
  return (size_t)m->cfg.kv_heads * (size_t)m->cfg.head_dim * usbx_dtype_size(m->be->mm_dtype);
}

static void ctx_reserve(usbx_bagel *m, usbx_ctx *c, int need) {
  if (need <= c->cap) return;
  int cap = c->cap ? c->cap : 64;
  while (cap < need) cap *= 2;
  size_t rb = kv_row_bytes(m);
  for (int l = 0; l < m->cfg.layers; l++) {
    void *nk = m->be->alloc(m->be, rb * (size_t)cap), *nv = m->be->alloc(m->be, rb * (size_t)cap);
    if (c->len) { m->be->copy(m->be, nk, c->k[l], rb * (size_t)c->len); m->be->copy(m->be, nv, c->v[l], rb * (size_t)c->len); }
    if (c->k[l]) { m->be->free(m->be, c->k[l]); m->be->free(m->be, c->v[l]); }
    c->k[l] = nk; c->v[l] = nv;
  }
  c->cap = cap;
}

usbx_ctx *usbx_ctx_copy(usbx_bagel *m, const usbx_ctx *src) {
  usbx_ctx *c = usbx_ctx_new(m);
  c->pos = src->pos;
  ctx_reserve(m, c, src->len > 0 ? src->len : 1);
  size_t rb = kv_row_bytes(m);
  for (int l = 0; l < m->cfg.layers && src->len; l++) {
    m->be->copy(m->be, c->k[l], src->k[l], rb * (size_t)src->len);
    m->be->copy(m->be, c->v[l], src->v[l], rb * (size_t)src->len);
  }
  c->len = src->len;
  return c;
}

void usbx_ctx_free(usbx_bagel *m, usbx_ctx *c) {
  if (!c) return;
  for (int l = 0; l < m->cfg.layers; l++) if (c->k[l]) { m->be->free(m->be, c->k[l]); m->be->free(m->be, c->v[l]); }
  free(c->k); free(c->v); free(c);
}
int usbx_ctx_len(const usbx_ctx *c) { return c->len; }
void usbx_bagel_ctx_advance(usbx_ctx *c, int n) { c->pos += n; }
int usbx_ctx_pos(const usbx_ctx *c) { return c->pos; }

/* ---------------------------------------------------------------- forward */

static int scratch_cap(const usbx_bagel *m, int T) {
  int cap = m->cap_T ? m->cap_T : 16;
  while (cap < T) cap *= 2;
  return cap;
}

size_t usbx_bagel_scratch_bytes(const usbx_bagel *m, int T) {
  const usbx_bagel_config *c = &m->cfg;
  size_t mm = usbx_dtype_size(m->be->mm_dtype);
  size_t D = (size_t)c->hidden, Hd = (size_t)c->heads * c->head_dim, KVd = (size_t)c->kv_heads * c->head_dim, F = (size_t)c->inter;
  size_t wide = F > Hd ? F : Hd;
  if (D > wide) wide = D;
  /* the buffers usbx_bagel_scratch allocates, per row */
  size_t row = sizeof(float) * (2 * wide + Hd + 2 * KVd + 2 * F) + mm * (wide + 2 * Hd + F) + 2 * sizeof(int32_t);
  return row * (size_t)scratch_cap(m, T);
}

void usbx_bagel_scratch(usbx_bagel *m, int T) {
  if (T <= m->cap_T) return;
  int cap = scratch_cap(m, T);
  usbx_backend *be = m->be;
  const usbx_bagel_config *c = &m->cfg;
  size_t mm = usbx_dtype_size(be->mm_dtype);
  size_t D = (size_t)c->hidden, Hd = (size_t)c->heads * c->head_dim, KVd = (size_t)c->kv_heads * c->head_dim, F = (size_t)c->inter;
  size_t wide = F > Hd ? F : Hd;
  if (D > wide) wide = D;
  void **f32s[] = {(void **)&m->x, (void **)&m->tmp};
  for (int i = 0; i < 2; i++) { release(m, f32s[i]); *f32s[i] = be->alloc(be, sizeof(float) * (size_t)cap * wide); }
  release(m, (void **)&m->q); m->q = be->alloc(be, sizeof(float) * (size_t)cap * Hd);
  release(m, (void **)&m->k); m->k = be->alloc(be, sizeof(float) * (size_t)cap * KVd);
  release(m, (void **)&m->v); m->v = be->alloc(be, sizeof(float) * (size_t)cap * KVd);
  release(m, (void **)&m->gate); m->gate = be->alloc(be, sizeof(float) * (size_t)cap * F);
  release(m, (void **)&m->up); m->up = be->alloc(be, sizeof(float) * (size_t)cap * F);
  release(m, &m->h_mm); m->h_mm = be->alloc(be, mm * (size_t)cap * wide);
  release(m, &m->q_mm); m->q_mm = be->alloc(be, mm * (size_t)cap * Hd);
  release(m, &m->o_mm); m->o_mm = be->alloc(be, mm * (size_t)cap * Hd);
  release(m, &m->act_mm); m->act_mm = be->alloc(be, mm * (size_t)cap * F);
  release(m, (void **)&m->d_ids); m->d_ids = be->alloc(be, sizeof(int32_t) * (size_t)cap);
  release(m, (void **)&m->d_pos); m->d_pos = be->alloc(be, sizeof(int32_t) * (size_t)cap);
  m->cap_T = cap;
}

/* act (mm [n, F]) = silu(h·gateᵀ) * (h·upᵀ) for n rows starting at scratch row r0: one product
 * with SiLU·up in its epilogue where the backend's gate_up_silu takes the shape; else, gate and up
 * being adjacent after fuse_experts, one product [gate | up], in mm where the backend offers
 * silu_mul_gu (m->gate, f32 [cap, F], holds [n, 2F] mm values: the same bytes), else in f32. */
static void mlp_gate_up(usbx_bagel *m, const expert_w *w, void *act, const void *h, int n, int r0) {
  usbx_backend *be = m->be;
  int D = m->cfg.hidden, F = m->cfg.inter;
  if (n > 1 && be->gate_up_silu && be->gate_up_silu(be, act, h, w->gate, w->up, n, F, D)) return;
  if (w->fused && n > 1 && be->silu_mul_gu && F % 2 == 0) {
    void *gu = (char *)m->gate + (size_t)r0 * 2 * F * usbx_dtype_size(be->mm_dtype);
    be->matmul_mm(be, gu, h, w->gate, n, 2 * F, D);
    be->silu_mul_gu(be, act, gu, n, F);
    return;
  }
  float *gf = m->gate + (size_t)r0 * F, *uf = m->up + (size_t)r0 * F;
  if (w->fused) {   /* [gate | up] in f32 rows of 2F: the gate buffer has room for n = 1 */
    if (n == 1) { be->matmul(be, m->gate, h, w->gate, NULL, 1, 2 * F, D, false); gf = m->gate; uf = m->gate + F; }
    else { be->matmul(be, gf, h, w->gate, NULL, n, F, D, false); be->matmul(be, uf, h, w->up, NULL, n, F, D, false); }
  } else {
    be->matmul(be, gf, h, w->gate, NULL, n, F, D, false);
    be->matmul(be, uf, h, w->up, NULL, n, F, D, false);
  }
  be->silu_mul(be, act, gf, uf, n, F);
}

/* One forward of T tokens against context c.  Rows [0, n_und) use the und expert, rows
 * [n_und, T) the gen expert.  m->x must hold the input embeddings (f32 [T, D]) and m->d_pos the
 * positions.  K/V are written at cache rows [c->len, c->len + T); the context grows only when
 * update_cache.  On return m->x holds the final-normed hidden states. */
void usbx_bagel_forward_block(usbx_bagel *m, usbx_ctx *c, int T, int n_und, bool causal, bool update_cache) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  int D = cf->hidden, F = cf->inter, H = cf->heads, Hkv = cf->kv_heads, d = cf->head_dim;
  int Hd = H * d, KVd = Hkv * d;
  size_t mm = usbx_dtype_size(be->mm_dtype);
  ctx_reserve(m, c, c->len + T);
  typedef struct { int r0, n, e; } run;
  run runs[2];
  int nr = 0;
  if (n_und > 0) runs[nr++] = (run){0, n_und, 0};
  if (T - n_und > 0) runs[nr++] = (run){n_und, T - n_und, 1};
  usbx_attn_args aa = {.n_q = T, .q_start = c->len, .kv_len = c->len + T, .n_heads = H, .n_kv_heads = Hkv, .head_dim = d, .causal = causal};

  for (int l = 0; l < cf->layers; l++) {
    char *kc = (char *)c->k[l] + (size_t)c->len * KVd * mm, *vc = (char *)c->v[l] + (size_t)c->len * KVd * mm;
    for (int r = 0; r < nr; r++) {
      const expert_w *w = &m->layers[l].e[runs[r].e];
      int r0 = runs[r].r0, n = runs[r].n;
      char *h = (char *)m->h_mm + (size_t)r0 * D * mm;
      be->rmsnorm(be, h, true, m->x + (size_t)r0 * D, w->in_norm, n, D, cf->eps);
      float *qf = m->q + (size_t)r0 * Hd, *kf = m->k + (size_t)r0 * KVd, *vf = m->v + (size_t)r0 * KVd;
      if (n == 1 && w->fused) {
        /* one row (decoding): q, k and v are stored back to back, so one matrix-vector product
         * reads all three; its output rows are contiguous, [q | k | v] */
        be->matmul(be, m->q, h, w->q_w, w->q_b, 1, Hd + 2 * KVd, D, false);
        qf = m->q; kf = m->q + Hd; vf = m->q + Hd + KVd;
      } else {
        be->matmul(be, qf, h, w->q_w, w->q_b, n, Hd, D, false);
        be->matmul(be, kf, h, w->k_w, w->k_b, n, KVd, D, false);
        be->matmul(be, vf, h, w->v_w, w->v_b, n, KVd, D, false);
      }
      be->qk_norm_rope(be, (char *)m->q_mm + (size_t)r0 * Hd * mm, Hd, qf, w->q_norm, m->d_pos + r0, n, H, d, cf->eps, cf->theta);
      be->qk_norm_rope(be, kc + (size_t)r0 * KVd * mm, KVd, kf, w->k_norm, m->d_pos + r0, n, Hkv, d, cf->eps, cf->theta);
      be->to_mm(be, vc + (size_t)r0 * KVd * mm, KVd, vf, n, KVd);
    }
    be->attention(be, m->o_mm, m->q_mm, c->k[l], c->v[l], &aa);
    for (int r = 0; r < nr; r++) {
      const expert_w *w = &m->layers[l].e[runs[r].e];
      int r0 = runs[r].r0, n = runs[r].n;
      float *x = m->x + (size_t)r0 * D;
      be->matmul(be, x, (char *)m->o_mm + (size_t)r0 * Hd * mm, w->o_w, NULL, n, D, Hd, true);
      char *h = (char *)m->h_mm + (size_t)r0 * D * mm;
      be->rmsnorm(be, h, true, x, w->post_norm, n, D, cf->eps);
      char *act = (char *)m->act_mm + (size_t)r0 * F * mm;
      mlp_gate_up(m, w, act, h, n, r0);
      be->matmul(be, x, act, w->down, NULL, n, D, F, true);
    }
  }
  for (int r = 0; r < nr; r++) {
    int r0 = runs[r].r0, n = runs[r].n;
    /* final norm per expert, in place (f32) */
    be->rmsnorm(be, m->x + (size_t)r0 * D, false, m->x + (size_t)r0 * D, m->norm[runs[r].e], n, D, cf->eps);
  }
  if (update_cache) c->len += T;
}

/* Uncached image queries against nb contexts in one forward (the CFG branches of a sampling step).
 * Each branch b has n_mark marker rows (und) and n_lat latent rows (gen), bidirectional, at its
 * context's next position.  m->x is laid out by expert across branches — all marker rows
 * [b * n_mark ...], then all latent rows [nb * n_mark + b * n_lat ...] — so each expert's
 * norms, projections and MLP run once over every branch; q, k and v are then placed per branch,
 * next to that branch's cache, and attention runs per branch.  m->d_pos must hold the positions
 * in the same layout.  On return m->x holds the final-normed hidden states. */
void usbx_bagel_forward_branches(usbx_bagel *m, usbx_ctx **cs, int nb, int n_mark, int n_lat) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  int D = cf->hidden, F = cf->inter, H = cf->heads, Hkv = cf->kv_heads, d = cf->head_dim;
  int Hd = H * d, KVd = Hkv * d, T = n_mark + n_lat, U = nb * n_mark, G = nb * n_lat;
  size_t mm = usbx_dtype_size(be->mm_dtype);
  for (int b = 0; b < nb; b++) ctx_reserve(m, cs[b], cs[b]->len + T);
  typedef struct { int r0, n, e; } run;
  run runs[2];
  int nr = 0;
  if (U > 0) runs[nr++] = (run){0, U, 0};
  if (G > 0) runs[nr++] = (run){U, G, 1};
  /* The marker rows (a few matrix-vector products over the und expert's weights, bound by memory
   * bandwidth) run on lane 1 beside the latents' products (bound by the tensor cores); the two
   * meet at the attention.  USBX_GEN_LANES=0: one lane. */
  const char *ev = getenv("USBX_GEN_LANES");
  bool lanes = nr == 2 && be->set_lane && !(ev && strcmp(ev, "0") == 0);
#define LANE_OF(e) do { if (lanes) usbx_lane(be, (e) == 0 ? 1 : 0); } while (0)
  if (lanes) usbx_lane_wait(be, 1, 0);   /* the inputs (m->x, positions) were written on lane 0 */
  for (int l = 0; l < cf->layers; l++) {
    for (int r = 0; r < nr; r++) {
      int e = runs[r].e, r0 = runs[r].r0, n = runs[r].n;
      const expert_w *w = &m->layers[l].e[e];
      LANE_OF(e);
      char *h = (char *)m->h_mm + (size_t)r0 * D * mm;
      be->rmsnorm(be, h, true, m->x + (size_t)r0 * D, w->in_norm, n, D, cf->eps);
      be->matmul(be, m->q + (size_t)r0 * Hd, h, w->q_w, w->q_b, n, Hd, D, false);
      be->matmul(be, m->k + (size_t)r0 * KVd, h, w->k_w, w->k_b, n, KVd, D, false);
      be->matmul(be, m->v + (size_t)r0 * KVd, h, w->v_w, w->v_b, n, KVd, D, false);
      /* q, k and v of this expert's rows of each branch, next to that branch's cache */
      int nb_rows = e ? n_lat : n_mark, dst = e ? n_mark : 0;
      for (int b = 0; b < nb; b++) {
        usbx_ctx *c = cs[b];
        int src = r0 + b * nb_rows;
        char *kc = (char *)c->k[l] + (size_t)(c->len + dst) * KVd * mm, *vc = (char *)c->v[l] + (size_t)(c->len + dst) * KVd * mm;
        be->qk_norm_rope(be, (char *)m->q_mm + (size_t)(b * T + dst) * Hd * mm, Hd, m->q + (size_t)src * Hd, w->q_norm, m->d_pos + src, nb_rows, H, d, cf->eps, cf->theta);
        be->qk_norm_rope(be, kc, KVd, m->k + (size_t)src * KVd, w->k_norm, m->d_pos + src, nb_rows, Hkv, d, cf->eps, cf->theta);
        be->to_mm(be, vc, KVd, m->v + (size_t)src * KVd, nb_rows, KVd);
      }
    }
    LANE_OF(1);
    if (lanes) usbx_lane_wait(be, 0, 1);
    for (int b = 0; b < nb; b++) {
      usbx_ctx *c = cs[b];
      usbx_attn_args aa = {.n_q = T, .q_start = c->len, .kv_len = c->len + T, .n_heads = H, .n_kv_heads = Hkv, .head_dim = d, .causal = false};
      be->attention(be, (char *)m->o_mm + (size_t)b * T * Hd * mm, (char *)m->q_mm + (size_t)b * T * Hd * mm, c->k[l], c->v[l], &aa);
    }
    if (lanes) usbx_lane_wait(be, 1, 0);
    for (int r = 0; r < nr; r++) {
      int e = runs[r].e, r0 = runs[r].r0, n = runs[r].n;
      const expert_w *w = &m->layers[l].e[e];
      LANE_OF(e);
      int nb_rows = e ? n_lat : n_mark, src0 = e ? n_mark : 0;
      for (int b = 0; b < nb; b++)
        be->matmul(be, m->x + (size_t)(r0 + b * nb_rows) * D, (char *)m->o_mm + (size_t)(b * T + src0) * Hd * mm, w->o_w, NULL, nb_rows, D, Hd, true);
      float *x = m->x + (size_t)r0 * D;
      char *h = (char *)m->h_mm + (size_t)r0 * D * mm, *act = (char *)m->act_mm + (size_t)r0 * F * mm;
      be->rmsnorm(be, h, true, x, w->post_norm, n, D, cf->eps);
      mlp_gate_up(m, w, act, h, n, r0);
      be->matmul(be, x, act, w->down, NULL, n, D, F, true);
    }
  }
  for (int r = 0; r < nr; r++) {
    LANE_OF(runs[r].e);
    be->rmsnorm(be, m->x + (size_t)runs[r].r0 * D, false, m->x + (size_t)runs[r].r0 * D, m->norm[runs[r].e], runs[r].n, D, cf->eps);
  }
#undef LANE_OF
  if (lanes) { usbx_lane(be, 0); usbx_lane_wait(be, 0, 1); }
}

/* lm_head over the first T rows of m->x (already final-normed), into m->logits (device f32). */
static void lm_head(usbx_bagel *m, int T) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  if (T > m->cap_logits_T) {
    release(m, (void **)&m->logits);
    m->logits = be->alloc(be, sizeof(float) * (size_t)T * cf->vocab);
    m->cap_logits_T = T;
  }
  size_t mm = usbx_dtype_size(be->mm_dtype);
  (void)mm;
  be->to_mm(be, m->h_mm, cf->hidden, m->x, T, cf->hidden);
  be->matmul(be, m->logits, m->h_mm, m->lm_head, NULL, T, cf->vocab, cf->hidden, false);
}

void usbx_bagel_prefill_text(usbx_bagel *m, usbx_ctx *c, const int32_t *ids, int T, float *logits) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  for (int i = 0; i < T; i++)
    if (ids[i] < 0 || ids[i] >= cf->vocab) usbx_die("token id %d out of range (vocab %d)", ids[i], cf->vocab);
  usbx_bagel_scratch(m, T);
  int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)T);
  for (int i = 0; i < T; i++) pos[i] = c->pos + i;
  be->upload(be, m->d_ids, ids, sizeof(int32_t) * (size_t)T);
  be->upload(be, m->d_pos, pos, sizeof(int32_t) * (size_t)T);
  free(pos);
  be->embed(be, m->x, m->embed, m->d_ids, T, cf->hidden);
  usbx_bagel_forward_block(m, c, T, T, true, true);
  c->pos += T;
  if (logits) {
    lm_head(m, T);
    be->download(be, logits, m->logits, sizeof(float) * (size_t)T * cf->vocab);
  }
  be->sync(be);
}

/* Embeds one token, runs it through the model appending its K/V, leaves logits in m->logits. */
static void step_forward(usbx_bagel *m, usbx_ctx *c, int32_t token) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  if (token < 0 || token >= cf->vocab) usbx_die("token id %d out of range (vocab %d)", token, cf->vocab);
  usbx_bagel_scratch(m, 1);
  int32_t pos = c->pos;
  be->upload(be, m->d_ids, &token, sizeof token);
  be->upload(be, m->d_pos, &pos, sizeof pos);
  be->embed(be, m->x, m->embed, m->d_ids, 1, cf->hidden);
  usbx_bagel_forward_block(m, c, 1, 1, true, true);
  c->pos += 1;
  lm_head(m, 1);
}

int32_t usbx_bagel_decode_step(usbx_bagel *m, usbx_ctx *c, int32_t token, float *logits) {
  usbx_backend *be = m->be;
  step_forward(m, c, token);
  if (logits) be->download(be, logits, m->logits, sizeof(float) * (size_t)m->cfg.vocab);
  int32_t next;
  be->argmax(be, m->d_ids, m->logits, 1, m->cfg.vocab);
  be->download(be, &next, m->d_ids, sizeof next);
  be->sync(be);
  return next;
}

int usbx_bagel_generate_text(usbx_bagel *m, usbx_ctx *c, int max_length, double temperature, uint64_t seed,
                             int32_t *out, float *step_logits) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  if (cf->bos < 0 || cf->eos < 0) usbx_die("the model has no <|im_start|>/<|im_end|> ids (no bagel_config.json special_token_ids and no tokenizer)");
  usbx_rng rng;
  usbx_rng_seed(&rng, seed);
  float *host_logits = temperature > 0 ? xmalloc(sizeof(float) * (size_t)cf->vocab) : NULL;
  int32_t tok = cf->bos;
  int n = 0;
  for (int step = 0; step < max_length; step++) {
    int32_t next;
    if (temperature <= 0) {
      next = usbx_bagel_decode_step(m, c, tok, step_logits ? step_logits + (size_t)step * cf->vocab : NULL);
    } else {
      step_forward(m, c, tok);
      be->download(be, host_logits, m->logits, sizeof(float) * (size_t)cf->vocab);
      be->sync(be);
      if (step_logits) memcpy(step_logits + (size_t)step * cf->vocab, host_logits, sizeof(float) * (size_t)cf->vocab);
      double mx = -INFINITY, sum = 0;
      for (int i = 0; i < cf->vocab; i++) if (host_logits[i] > mx) mx = host_logits[i];
      for (int i = 0; i < cf->vocab; i++) sum += exp((host_logits[i] - mx) / temperature);
      double u = usbx_rng_uniform(&rng) * sum, acc = 0;
      next = cf->vocab - 1;
      for (int i = 0; i < cf->vocab; i++) { acc += exp((host_logits[i] - mx) / temperature); if (acc > u) { next = i; break; } }
    }
    /* upstream appends the fed token before predicting; the start token is not returned here */
    if (next == cf->eos || step == max_length - 1) break;
    out[n++] = next;
    tok = next;
  }
  free(host_logits);
  return n;
}
