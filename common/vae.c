/* vae.c — FLUX autoencoder: encoder and decoder built from im2col + matmul convolutions,
 * GroupNorm(+SiLU), nearest upsampling and single-head attention, all channels-last.
 * Everything runs in fp32 on every backend, as upstream runs the autoencoder: conv weights stay
 * f32 on the device and the products go through matmul_f32 / im2col_f32 / attention_f32. */
#include "vae.h"
#include "bagel_internal.h"
#include "safetensors.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char *name; void *p; int co, k; } vt;   /* all f32; conv weights [co, ci*k*k] */

#define VAE_POOL 32
struct usbx_vae {
  usbx_backend *be;
  usbx_ae_config cfg;
  vt *t;
  int n;
  /* device buffers given back during a decode/encode, reused by size (the same activation and
   * column-matrix sizes recur layer after layer); emptied when the decode/encode returns.  On
   * CUDA this saves a cudaMalloc + synchronising cudaFree per activation. */
  struct { void *p; size_t bytes; } pool[VAE_POOL];
  int npool;
};

static void *vbuf_get(usbx_vae *v, size_t bytes) {
  for (int i = 0; i < v->npool; i++)
    if (v->pool[i].bytes == bytes) {
      void *p = v->pool[i].p;
      v->pool[i] = v->pool[--v->npool];
      return p;
    }
  /* a miss: smaller buffers left over from an earlier (lower-resolution) level are not needed again */
  for (int i = 0; i < v->npool;)
    if (v->pool[i].bytes < bytes) { v->be->free(v->be, v->pool[i].p); v->pool[i] = v->pool[--v->npool]; }
    else i++;
  return v->be->alloc(v->be, bytes);
}
static void vbuf_put(usbx_vae *v, void *p, size_t bytes) {
  if (!p) return;
  if (v->npool < VAE_POOL) { v->pool[v->npool].p = p; v->pool[v->npool].bytes = bytes; v->npool++; }
  else v->be->free(v->be, p);
}
static void vbuf_release(usbx_vae *v) {
  for (int i = 0; i < v->npool; i++) v->be->free(v->be, v->pool[i].p);
  v->npool = 0;
}

static int cmp_vt(const void *a, const void *b) { return strcmp(((const vt *)a)->name, ((const vt *)b)->name); }

static const vt *get(const usbx_vae *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const vt *get(const usbx_vae *v, const char *fmt, ...) {
  char name[256];
  va_list ap; va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  vt key = {.name = name};
  const vt *r = bsearch(&key, v->t, (size_t)v->n, sizeof *v->t, cmp_vt);
  if (!r) usbx_die("autoencoder tensor %s missing (internal)", name);
  return r;
}

usbx_vae *usbx_vae_load(const char *dir, usbx_backend *be, char *err, size_t errlen) {
  usbx_vae *v = xcalloc(1, sizeof *v);
  v->be = be;
  if (usbx_ae_read_config(dir, &v->cfg, err, errlen)) { free(v); return NULL; }
  char *path = usbx_path_join(dir, "ae.safetensors");
  usbx_st_file f;
  if (!usbx_file_exists(path)) {
    snprintf(err, errlen, "%s: missing (the checkpoint declares an autoencoder; a pixel-space model says \"vae\": null in bagel_config.json)", path);
    free(path); free(v); return NULL;
  }
  if (usbx_st_open(path, &f, err, errlen)) { free(path); free(v); return NULL; }
  usbx_wlist L = {0};
  usbx_ae_enumerate(&v->cfg, &L);
  const usbx_st_tensor **src = xcalloc((size_t)L.n, sizeof *src);
  for (int i = 0; i < L.n; i++) {
    const usbx_st_tensor *t = usbx_st_find(&f, L.v[i].name);
    bool ok = t && t->ndim == L.v[i].ndim && usbx_dtype_is_float(t->dtype);
    for (int k = 0; ok && k < t->ndim; k++) ok = t->shape[k] == L.v[i].shape[k];
    if (!ok) {
      char a[96] = "absent", b[96];
      if (t) usbx_shape_str(t->ndim, t->shape, a, sizeof a);
      snprintf(err, errlen, "%s: tensor %s is %s, expected %s", path, L.v[i].name, a, usbx_shape_str(L.v[i].ndim, L.v[i].shape, b, sizeof b));
      usbx_st_close(&f); free(src); free(L.v); free(path); free(v);
      return NULL;
    }
    src[i] = t;
  }
  v->t = xcalloc((size_t)L.n, sizeof *v->t);
  v->n = L.n;
  for (int i = 0; i < L.n; i++) {
    const usbx_st_tensor *t = src[i];
    bool conv = L.v[i].ndim == 4;
    size_t n = (size_t)usbx_shape_numel(t->ndim, t->shape);
    v->t[i].name = xstrdup(L.v[i].name);
    v->t[i].p = be->alloc(be, n * sizeof(float));
    v->t[i].co = (int)t->shape[0];
    v->t[i].k = conv ? (int)t->shape[2] : 0;
    be->upload_convert(be, v->t[i].p, false, t->data, t->dtype, n);
  }
  be->sync(be);
  qsort(v->t, (size_t)v->n, sizeof *v->t, cmp_vt);
  usbx_st_close(&f);
  free(src); free(L.v); free(path);
  return v;
}

void usbx_vae_free(usbx_vae *v) {
  if (!v) return;
  vbuf_release(v);
  for (int i = 0; i < v->n; i++) { v->be->free(v->be, v->t[i].p); free(v->t[i].name); }
  free(v->t);
  free(v);
}

const usbx_ae_config *usbx_vae_cfg(const usbx_vae *v) { return &v->cfg; }

/* An activation: channels-last [H, W, C] f32 on the device. */
typedef struct { float *d; int H, W, C; } act;

static act act_new(usbx_vae *v, int H, int W, int C) {
  act a = {vbuf_get(v, sizeof(float) * (size_t)H * W * C), H, W, C};
  return a;
}
static void act_free(usbx_vae *v, act *a) { vbuf_put(v, a->d, sizeof(float) * (size_t)a->H * a->W * a->C); a->d = NULL; }

/* y = conv(x) with the weights under prefix; k and Co come from the weight.  A 1x1 convolution
 * is one product on x itself; others go through im2col in bands of output rows, so that the
 * column matrix stays under COLS_BYTES (4.8 GB for a whole 1024x1024x128 layer otherwise).  A
 * band of output rows [oy0, oy0 + nr) reads input rows [oy0·s − pt, (oy0 + nr − 1)·s − pt + k);
 * the part outside the image becomes the band's own top/bottom padding. */
#define COLS_BYTES ((size_t)512 << 20)
static act conv(usbx_vae *v, const act *x, const char *prefix, int stride, int pt, int pl, int pb, int pr) {
  usbx_backend *be = v->be;
  const vt *w = get(v, "%s.weight", prefix), *b = get(v, "%s.bias", prefix);
  int k = w->k;
  int Ho = (x->H + pt + pb - k) / stride + 1, Wo = (x->W + pl + pr - k) / stride + 1;
  size_t K = (size_t)x->C * k * k;
  act y = act_new(v, Ho, Wo, w->co);
  if (k == 1 && stride == 1 && !pt && !pl && !pb && !pr) {
    be->matmul_f32(be, y.d, x->d, w->p, b->p, Ho * Wo, w->co, x->C, false);
    return y;
  }
  size_t row_bytes = sizeof(float) * (size_t)Wo * K;
  int band = (int)(COLS_BYTES / row_bytes);
  if (band < 1) band = 1;
  if (band > Ho) band = Ho;
  float *cols = vbuf_get(v, row_bytes * (size_t)band);
  for (int oy0 = 0; oy0 < Ho; oy0 += band) {
    int nr = Ho - oy0 < band ? Ho - oy0 : band;
    int iy0 = oy0 * stride - pt, iy1 = (oy0 + nr - 1) * stride - pt + k;
    int cy0 = iy0 < 0 ? 0 : iy0, cy1 = iy1 > x->H ? x->H : iy1;
    usbx_im2col_args a = {cy1 - cy0, x->W, x->C, k, stride, cy0 - iy0, pl, iy1 - cy1, pr};
    be->im2col_f32(be, cols, x->d + (size_t)cy0 * x->W * x->C, &a);
    be->matmul_f32(be, y.d + (size_t)oy0 * Wo * w->co, cols, w->p, b->p, nr * Wo, w->co, (int)K, false);
  }
  vbuf_put(v, cols, row_bytes * (size_t)band);
  return y;
}

static act conv_same(usbx_vae *v, const act *x, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static act conv_same(usbx_vae *v, const act *x, const char *fmt, ...) {
  char prefix[200];
  va_list ap; va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  int k = get(v, "%s.weight", prefix)->k;
  return conv(v, x, prefix, 1, k / 2, k / 2, k / 2, k / 2);
}

static act gnorm(usbx_vae *v, const act *x, const char *prefix, bool silu) {
  act y = act_new(v, x->H, x->W, x->C);
  v->be->group_norm(v->be, y.d, x->d, get(v, "%s.weight", prefix)->p, get(v, "%s.bias", prefix)->p, x->H * x->W, x->C, 32, 1e-6f, silu);
  return y;
}

/* ResnetBlock: h = conv2(swish(GN2(conv1(swish(GN1(x)))))); out = shortcut(x) + h.  Consumes x. */
static act resblock(usbx_vae *v, act x, const char *pre) {
  char b[256];
  snprintf(b, sizeof b, "%s.norm1", pre);
  act h = gnorm(v, &x, b, true);
  act h1 = conv_same(v, &h, "%s.conv1", pre);
  act_free(v, &h);
  snprintf(b, sizeof b, "%s.norm2", pre);
  h = gnorm(v, &h1, b, true);
  act_free(v, &h1);
  act h2 = conv_same(v, &h, "%s.conv2", pre);
  act_free(v, &h);
  snprintf(b, sizeof b, "%s.nin_shortcut.weight", pre);
  vt key = {.name = b};
  if (bsearch(&key, v->t, (size_t)v->n, sizeof *v->t, cmp_vt)) {
    act s = conv_same(v, &x, "%s.nin_shortcut", pre);
    act_free(v, &x);
    x = s;
  }
  v->be->add(v->be, h2.d, x.d, (size_t)x.H * x.W * x.C);
  act_free(v, &x);
  return h2;
}

/* AttnBlock: x + proj_out(softmax(q kᵀ / sqrt(C)) v) over the H*W positions.  Consumes x. */
static act attnblock(usbx_vae *v, act x, const char *pre) {
  usbx_backend *be = v->be;
  char b[256];
  snprintf(b, sizeof b, "%s.norm", pre);
  act n = gnorm(v, &x, b, false);
  act q = conv_same(v, &n, "%s.q", pre), k = conv_same(v, &n, "%s.k", pre), vv = conv_same(v, &n, "%s.v", pre);
  act_free(v, &n);
  int HW = x.H * x.W, C = x.C;
  act o = act_new(v, x.H, x.W, C);
  usbx_attn_args a = {.n_q = HW, .q_start = 0, .kv_len = HW, .n_heads = 1, .n_kv_heads = 1, .head_dim = C, .causal = false};
  be->attention_f32(be, o.d, q.d, k.d, vv.d, &a);
  act_free(v, &q); act_free(v, &k); act_free(v, &vv);
  const vt *w = get(v, "%s.proj_out.weight", pre), *bias = get(v, "%s.proj_out.bias", pre);
  be->matmul_f32(be, x.d, o.d, w->p, bias->p, HW, C, C, true);   /* residual accumulate */
  act_free(v, &o);
  return x;
}

static act mid(usbx_vae *v, act x, const char *pre) {
  char b[256];
  snprintf(b, sizeof b, "%s.mid.block_1", pre); x = resblock(v, x, b);
  snprintf(b, sizeof b, "%s.mid.attn_1", pre); x = attnblock(v, x, b);
  snprintf(b, sizeof b, "%s.mid.block_2", pre); x = resblock(v, x, b);
  return x;
}

static act upload_act(usbx_vae *v, const float *host, int H, int W, int C) {
  act a = act_new(v, H, W, C);
  v->be->upload(v->be, a.d, host, sizeof(float) * (size_t)H * W * C);
  return a;
}

void usbx_vae_decode(usbx_vae *v, const float *z, int h, int w, float *img) {
  usbx_backend *be = v->be;
  const usbx_ae_config *c = &v->cfg;
  size_t n = (size_t)h * w * c->z_channels;
  float *zz = xmalloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) zz[i] = z[i] / c->scale_factor + c->shift_factor;
  act x = upload_act(v, zz, h, w, c->z_channels);
  free(zz);
  act y = conv_same(v, &x, "decoder.conv_in");
  act_free(v, &x);
  y = mid(v, y, "decoder");
  char b[256];
  for (int l = c->n_mult - 1; l >= 0; l--) {
    for (int i = 0; i <= c->num_res_blocks; i++) { snprintf(b, sizeof b, "decoder.up.%d.block.%d", l, i); y = resblock(v, y, b); }
    if (l != 0) {
      act u = act_new(v, 2 * y.H, 2 * y.W, y.C);
      be->upsample2x(be, u.d, y.d, y.H, y.W, y.C);
      act_free(v, &y);
      y = conv_same(v, &u, "decoder.up.%d.upsample.conv", l);
      act_free(v, &u);
    }
  }
  act n2 = gnorm(v, &y, "decoder.norm_out", true);
  act_free(v, &y);
  act out = conv_same(v, &n2, "decoder.conv_out");
  act_free(v, &n2);
  be->download(be, img, out.d, sizeof(float) * (size_t)out.H * out.W * out.C);
  be->sync(be);
  act_free(v, &out);
  vbuf_release(v);
}

void usbx_vae_encode(usbx_vae *v, const float *img, int H, int W, const float *eps, float *z, float *moments) {
  usbx_backend *be = v->be;
  const usbx_ae_config *c = &v->cfg;
  act x = upload_act(v, img, H, W, c->in_channels);
  act y = conv_same(v, &x, "encoder.conv_in");
  act_free(v, &x);
  char b[256];
  for (int l = 0; l < c->n_mult; l++) {
    for (int i = 0; i < c->num_res_blocks; i++) { snprintf(b, sizeof b, "encoder.down.%d.block.%d", l, i); y = resblock(v, y, b); }
    if (l != c->n_mult - 1) {
      snprintf(b, sizeof b, "encoder.down.%d.downsample.conv", l);
      act d = conv(v, &y, b, 2, 0, 0, 1, 1);   /* pad right and bottom by one, stride 2 */
      act_free(v, &y);
      y = d;
    }
  }
  y = mid(v, y, "encoder");
  act n2 = gnorm(v, &y, "encoder.norm_out", true);
  act_free(v, &y);
  act mo = conv_same(v, &n2, "encoder.conv_out");
  act_free(v, &n2);
  size_t hw = (size_t)mo.H * mo.W;
  int Z = c->z_channels;
  float *m = xmalloc(sizeof(float) * hw * 2 * Z);
  be->download(be, m, mo.d, sizeof(float) * hw * 2 * Z);
  be->sync(be);
  act_free(v, &mo);
  vbuf_release(v);
  for (size_t p = 0; p < hw; p++)
    for (int ch = 0; ch < Z; ch++) {
      float mean = m[p * 2 * Z + ch], logvar = m[p * 2 * Z + Z + ch];
      /* DiagonalGaussian clamps logvar to [-30, 20] */
      logvar = logvar < -30.0f ? -30.0f : logvar > 20.0f ? 20.0f : logvar;
      float s = eps ? mean + expf(0.5f * logvar) * eps[p * Z + ch] : mean;
      z[p * Z + ch] = c->scale_factor * (s - c->shift_factor);
    }
  if (moments) memcpy(moments, m, sizeof(float) * hw * 2 * Z);
  free(m);
}

void usbx_unpatchify(const float *tokens, int h, int w, int p, int C, float *z) {
  int Wz = w * p;
  for (int r = 0; r < h; r++)
    for (int c = 0; c < w; c++)
      for (int dy = 0; dy < p; dy++)
        for (int dx = 0; dx < p; dx++)
          memcpy(z + ((size_t)(r * p + dy) * Wz + (size_t)(c * p + dx)) * C,
                 tokens + ((size_t)r * w + c) * (size_t)(p * p * C) + (size_t)(dy * p + dx) * C, sizeof(float) * (size_t)C);
}

void usbx_patchify(const float *z, int h, int w, int p, int C, float *tokens) {
  int Wz = w * p;
  for (int r = 0; r < h; r++)
    for (int c = 0; c < w; c++)
      for (int dy = 0; dy < p; dy++)
        for (int dx = 0; dx < p; dx++)
          memcpy(tokens + ((size_t)r * w + c) * (size_t)(p * p * C) + (size_t)(dy * p + dx) * C,
                 z + ((size_t)(r * p + dy) * Wz + (size_t)(c * p + dx)) * C, sizeof(float) * (size_t)C);
}

void usbx_pixels_to_u8(const float *img, size_t n, uint8_t *out) {
  for (size_t i = 0; i < n; i++) {
    float y = img[i] * 0.5f + 0.5f;
    y = y < 0 ? 0 : y > 1 ? 1 : y;
    out[i] = (uint8_t)(y * 255.0f);   /* truncation, as .to(torch.uint8) */
  }
}

void usbx_u8_to_pixels(const uint8_t *in, size_t n, float *img) {
  for (size_t i = 0; i < n; i++) img[i] = ((float)in[i] / 255.0f - 0.5f) / 0.5f;
}
