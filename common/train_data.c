/* train_data.c — see train_data.h. */
#include "train_data.h"
#include "image.h"
#include "jsonl.h"
#include "png.h"
#include "tokenizer.h"
#include "util.h"
#include "vae.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { S_T2I, S_CONV };

typedef struct {
  int kind;
  int32_t *cap; int ncap;                 /* T2I caption ids (unwrapped) */
  int h, w;                               /* latent token grid */
  float *mom;                             /* VAE moments [zh, zw, 2Z] or, pixel-space, x0 tokens [h*w, P] */
  int nturn; int32_t **turn; int *turn_n; bool *turn_loss;
  int tokens;
} sample;

struct usbx_train_data {
  usbx_bagel_config cfg;
  usbx_data_opts o;
  usbx_ae_config ae;
  bool has_vae;
  sample *s;
  int n, cap, skipped;
  int32_t *perm;
  int perm_epoch;
};

int usbx_train_data_count(const usbx_train_data *d) { return d->n; }
int usbx_train_data_skipped(const usbx_train_data *d) { return d->skipped; }

static void sample_free(sample *s) {
  free(s->cap); free(s->mom);
  for (int i = 0; i < s->nturn; i++) free(s->turn[i]);
  free(s->turn); free(s->turn_n); free(s->turn_loss);
}

void usbx_train_data_free(usbx_train_data *d) {
  if (!d) return;
  for (int i = 0; i < d->n; i++) sample_free(&d->s[i]);
  free(d->s); free(d->perm); free(d);
}

static int encode(const struct usbx_tokenizer *tok, const char *text, int32_t **ids, int *n) {
  size_t nn;
  if (usbx_tok_encode(tok, text, strlen(text), ids, &nn)) return -1;
  *n = (int)nn;
  return 0;
}

/* image file -> resized [-1, 1] pixels -> moments (VAE) or x0 tokens (pixel space) */
static int load_image(usbx_train_data *d, struct usbx_vae *vae, const char *path, sample *s, char *why, size_t wl) {
  const usbx_bagel_config *c = &d->cfg;
  int w, h;
  const char *reason = NULL;
  uint8_t *rgb = usbx_image_read(path, &w, &h, 3, &reason);
  if (!rgb) { snprintf(why, wl, "image %s: %s", path, reason ? reason : "unreadable"); return -1; }
  int ds = c->vae_downsample * c->latent_patch, maxl = c->max_latent * ds;
  int max_long = maxl < 1024 ? maxl : 1024, min_short = max_long < 512 ? max_long : 512, W, H;
  usbx_transform_size(w, h, max_long, min_short, ds, 14L * 14 * 9 * 1024 * 64, &W, &H);
  uint8_t *rs = xmalloc((size_t)W * H * 3);
  usbx_resize_bicubic(rgb, w, h, 3, rs, W, H);
  free(rgb);
  float *pix = xmalloc(sizeof(float) * (size_t)W * H * 3);
  usbx_u8_to_pixels(rs, (size_t)W * H * 3, pix);
  free(rs);
  s->h = H / ds; s->w = W / ds;
  int p = c->latent_patch, Z = c->latent_channels;
  if (d->has_vae) {
    int zh = H / c->vae_downsample, zw = W / c->vae_downsample;
    float *z = xmalloc(sizeof(float) * (size_t)zh * zw * Z);
    s->mom = xmalloc(sizeof(float) * (size_t)zh * zw * 2 * Z);
    usbx_vae_encode(vae, pix, H, W, NULL, z, s->mom);
    free(z);
  } else {
    s->mom = xmalloc(sizeof(float) * (size_t)s->h * s->w * p * p * Z);
    usbx_patchify(pix, s->h, s->w, p, Z, s->mom);
  }
  free(pix);
  return 0;
}

usbx_train_data *usbx_train_data_load(char *const *files, int nfiles, const usbx_bagel_config *cfg,
                                      const struct usbx_tokenizer *tok, struct usbx_vae *vae, const usbx_data_opts *o,
                                      char *err, size_t errlen) {
  usbx_train_data *d = xcalloc(1, sizeof *d);
  d->cfg = *cfg; d->o = *o; d->perm_epoch = -1;
  d->has_vae = cfg->has_vae;
  if (d->has_vae) {
    if (!vae) { snprintf(err, errlen, "the model has an autoencoder but none was loaded"); free(d); return NULL; }
    d->ae = *usbx_vae_cfg(vae);
  }
  int nin = nfiles ? nfiles : 1;
  for (int f = 0; f < nin; f++) {
    const char *path = nfiles ? files[f] : NULL;
    usbx_jsonl *r = usbx_jsonl_open(path);
    if (!r) { snprintf(err, errlen, "%s: %s", path, strerror(errno)); usbx_train_data_free(d); return NULL; }
    jv rec;
    int st;
    char why[512];
    while ((st = usbx_jsonl_next(r, &rec)) != 0) {
      if (st < 0) { snprintf(err, errlen, "%s", usbx_jsonl_error(r)); usbx_jsonl_close(r); usbx_train_data_free(d); return NULL; }
      sample s = {0};
      why[0] = 0;
      const char *prompt = usbx_jv_str(rec, "prompt"), *image = usbx_jv_str(rec, "image");
      jv conv = jv_object_get(jv_copy(rec), jv_string("conversations"));
      bool use = true;
      if (prompt && image) {
        s.kind = S_T2I;
        if (!o->visual_gen) use = false;
        else if (encode(tok, prompt, &s.cap, &s.ncap)) snprintf(why, sizeof why, "\"prompt\" is not valid UTF-8");
        else if (load_image(d, vae, image, &s, why, sizeof why) == 0)
          s.tokens = s.ncap + 2 + s.h * s.w + 2;
      } else if (jv_get_kind(conv) == JV_KIND_ARRAY) {
        s.kind = S_CONV;
        int nt = jv_array_length(jv_copy(conv));
        s.turn = xcalloc((size_t)(nt ? nt : 1), sizeof *s.turn);
        s.turn_n = xcalloc((size_t)(nt ? nt : 1), sizeof *s.turn_n);
        s.turn_loss = xcalloc((size_t)(nt ? nt : 1), sizeof *s.turn_loss);
        int any_loss = 0;
        for (int i = 0; i < nt && !why[0]; i++) {
          jv turn = jv_array_get(jv_copy(conv), i);
          const char *from = usbx_jv_str(turn, "from"), *value = usbx_jv_str(turn, "value");
          if (!from || !value) snprintf(why, sizeof why, "conversations[%d] needs string \"from\" and \"value\"", i);
          else if (strcmp(from, "human") && strcmp(from, "gpt")) snprintf(why, sizeof why, "conversations[%d].from is \"%s\" (human or gpt)", i, from);
          else if (strstr(value, "<image>")) snprintf(why, sizeof why, "conversations[%d] refers to an <image>; image conversations are not supported yet", i);
          else if (encode(tok, value, &s.turn[i], &s.turn_n[i])) snprintf(why, sizeof why, "conversations[%d].value is not valid UTF-8", i);
          else { s.turn_loss[i] = strcmp(from, "gpt") == 0; any_loss |= s.turn_loss[i]; s.tokens += s.turn_n[i] + 2; s.nturn++; }
          jv_free(turn);
        }
        if (!why[0] && !any_loss) snprintf(why, sizeof why, "conversation has no \"gpt\" turn (nothing to learn)");
      } else {
        snprintf(why, sizeof why, "training record needs \"prompt\" + \"image\" or \"conversations\"");
      }
      jv_free(conv);
      jv_free(rec);
      if (why[0]) {
        snprintf(err, errlen, "%s:%ld: %s", usbx_jsonl_name(r), usbx_jsonl_line(r), why);
        sample_free(&s);
        usbx_jsonl_close(r);
        usbx_train_data_free(d);
        return NULL;
      }
      if (!use) { sample_free(&s); continue; }
      if (s.tokens > o->max_tokens_per_sample) { d->skipped++; sample_free(&s); continue; }
      if (d->n == d->cap) { d->cap = d->cap ? 2 * d->cap : 64; d->s = xrealloc(d->s, sizeof *d->s * (size_t)d->cap); }
      d->s[d->n++] = s;
    }
    usbx_jsonl_close(r);
  }
  if (!d->n) { snprintf(err, errlen, "no usable training records (%d longer than --max-tokens-per-sample)", d->skipped); usbx_train_data_free(d); return NULL; }
  d->perm = xmalloc(sizeof(int32_t) * (size_t)d->n);
  return d;
}

static void shuffle(usbx_train_data *d, int epoch) {
  usbx_rng r;
  usbx_rng_seed(&r, d->o.seed ^ (0x5eedULL * (uint64_t)(epoch + 1)));
  for (int i = 0; i < d->n; i++) d->perm[i] = i;
  for (int i = d->n - 1; i > 0; i--) { int j = (int)usbx_rng_below(&r, (uint64_t)i + 1); int32_t t = d->perm[i]; d->perm[i] = d->perm[j]; d->perm[j] = t; }
  d->perm_epoch = epoch;
}

void usbx_train_batch_free(usbx_train_batch *b) {
  free(b->pos); free(b->kind); free(b->text_id); free(b->vit_patches); free(b->vit_pid); free(b->vit_seqlen);
  free(b->x0); free(b->noise); free(b->t); free(b->lat_pid); free(b->ce_idx); free(b->ce_label); free(b->mse_idx);
  memset(b, 0, sizeof *b);
}

/* growable batch arrays */
typedef struct { usbx_train_batch *b; int cap, vcap, ccap; int P; } builder;

static int push_tok(builder *B, int kind, int32_t id, int pos, int sample, int split, int mode) {
  usbx_train_batch *b = B->b;
  if (b->n == B->cap) {
    /* pos, sample, split, mode live in one block of four sections of cap entries each */
    int old = B->cap;
    B->cap = B->cap ? 2 * B->cap : 256;
    int32_t *blk = xmalloc(sizeof(int32_t) * 4 * (size_t)B->cap);
    for (int f = 0; f < 4 && b->pos; f++) memcpy(blk + (size_t)f * B->cap, b->pos + (size_t)f * old, sizeof(int32_t) * (size_t)b->n);
    free(b->pos);
    b->pos = blk;
    b->kind = xrealloc(b->kind, (size_t)B->cap);
    b->text_id = xrealloc(b->text_id, sizeof(int32_t) * (size_t)B->cap);
  }
  int i = b->n++;
  b->kind[i] = (int8_t)kind; b->text_id[i] = id;
  b->pos[i] = pos;
  /* sample/split/mode live after pos in the same block; fixed up in finish() */
  b->pos[B->cap + i] = sample; b->pos[2 * B->cap + i] = split; b->pos[3 * B->cap + i] = mode;
  return i;
}

static void push_ce(builder *B, int idx, int32_t label) {
  usbx_train_batch *b = B->b;
  if (b->n_ce == B->ccap) {
    B->ccap = B->ccap ? 2 * B->ccap : 256;
    b->ce_idx = xrealloc(b->ce_idx, sizeof(int32_t) * (size_t)B->ccap);
    b->ce_label = xrealloc(b->ce_label, sizeof(int32_t) * (size_t)B->ccap);
  }
  b->ce_idx[b->n_ce] = idx; b->ce_label[b->n_ce] = label; b->n_ce++;
}

static void push_vae(builder *B, int idx, const float *x0, const float *noise, float t, int32_t pid) {
  usbx_train_batch *b = B->b;
  int P = B->P;
  if (b->n_vae == B->vcap) {
    B->vcap = B->vcap ? 2 * B->vcap : 256;
    b->x0 = xrealloc(b->x0, sizeof(float) * (size_t)B->vcap * P);
    b->noise = xrealloc(b->noise, sizeof(float) * (size_t)B->vcap * P);
    b->t = xrealloc(b->t, sizeof(float) * (size_t)B->vcap);
    b->lat_pid = xrealloc(b->lat_pid, sizeof(int32_t) * (size_t)B->vcap);
    b->mse_idx = xrealloc(b->mse_idx, sizeof(int32_t) * (size_t)B->vcap);
  }
  int k = b->n_vae++;
  memcpy(b->x0 + (size_t)k * P, x0, sizeof(float) * (size_t)P);
  memcpy(b->noise + (size_t)k * P, noise, sizeof(float) * (size_t)P);
  b->t[k] = t; b->lat_pid[k] = pid;
  b->mse_idx[b->n_mse++] = idx;
}

static void finish(builder *B) {
  usbx_train_batch *b = B->b;
  int n = b->n;
  int32_t *blk = xmalloc(sizeof(int32_t) * 4 * (size_t)(n ? n : 1));
  for (int f = 0; f < 4; f++) memcpy(blk + (size_t)f * n, b->pos + (size_t)f * B->cap, sizeof(int32_t) * (size_t)n);
  free(b->pos);
  b->pos = blk; b->sample = blk + n; b->split = blk + 2 * n; b->mode = blk + 3 * n;
}

/* adds sample s (its randomness from rng) to the batch as sample number si */
static void add_sample(usbx_train_data *d, builder *B, const sample *s, int si, int *split, usbx_rng *rng) {
  const usbx_bagel_config *c = &d->cfg;
  int pos = 0;
  if (s->kind == S_CONV) {
    for (int t = 0; t < s->nturn; t++) {
      int sp = (*split)++, n = s->turn_n[t];
      int start = push_tok(B, USBX_TOK_TEXT, c->bos, pos++, si, sp, USBX_SPLIT_CAUSAL);
      for (int i = 0; i < n; i++) push_tok(B, USBX_TOK_TEXT, s->turn[t][i], pos++, si, sp, USBX_SPLIT_CAUSAL);
      push_tok(B, USBX_TOK_TEXT, c->eos, pos++, si, sp, USBX_SPLIT_CAUSAL);
      if (s->turn_loss[t])   /* <|im_start|>, t1..tn predict t1..tn, <|im_end|> */
        for (int i = 0; i <= n; i++) push_ce(B, start + i, i < n ? s->turn[t][i] : c->eos);
    }
    return;
  }
  /* T2I: caption split (dropped with probability text_cond_dropout), then the noisy image */
  bool drop = usbx_rng_uniform(rng) < d->o.text_cond_dropout;
  if (!drop) {
    int sp = (*split)++;
    push_tok(B, USBX_TOK_TEXT, c->bos, pos++, si, sp, USBX_SPLIT_CAUSAL);
    for (int i = 0; i < s->ncap; i++) push_tok(B, USBX_TOK_TEXT, s->cap[i], pos++, si, sp, USBX_SPLIT_CAUSAL);
    push_tok(B, USBX_TOK_TEXT, c->eos, pos++, si, sp, USBX_SPLIT_CAUSAL);
  }
  int sp = (*split)++, P = B->P, N = s->h * s->w, p = c->latent_patch, Z = c->latent_channels;
  float raw = (float)usbx_rng_normal(rng), sh = d->o.timestep_shift;
  float t = 1.0f / (1.0f + expf(-raw));
  t = sh * t / (1.0f + (sh - 1.0f) * t);
  float *x0 = xmalloc(sizeof(float) * (size_t)N * P), *noise = xmalloc(sizeof(float) * (size_t)P);
  if (d->has_vae) {
    /* sample the posterior, scale and shift, patchify */
    int zh = s->h * p, zw = s->w * p;
    float *z = xmalloc(sizeof(float) * (size_t)zh * zw * Z);
    for (int i = 0; i < zh * zw; i++)
      for (int ch = 0; ch < Z; ch++) {
        float mean = s->mom[(size_t)i * 2 * Z + ch], lv = s->mom[(size_t)i * 2 * Z + Z + ch];
        lv = lv < -30 ? -30 : lv > 20 ? 20 : lv;
        float v = mean + expf(0.5f * lv) * (float)usbx_rng_normal(rng);
        z[(size_t)i * Z + ch] = d->ae.scale_factor * (v - d->ae.shift_factor);
      }
    usbx_patchify(z, s->h, s->w, p, Z, x0);
    free(z);
  } else {
    memcpy(x0, s->mom, sizeof(float) * (size_t)N * P);
  }
  push_tok(B, USBX_TOK_TEXT, c->vis_start, pos, si, sp, USBX_SPLIT_NOISE);
  for (int r = 0; r < s->h; r++)
    for (int q = 0; q < s->w; q++) {
      int idx = push_tok(B, USBX_TOK_VAE, -1, pos, si, sp, USBX_SPLIT_NOISE);
      for (int j = 0; j < P; j++) noise[j] = (float)usbx_rng_normal(rng);
      push_vae(B, idx, x0 + (size_t)(r * s->w + q) * P, noise, t, r * c->max_latent + q);
    }
  push_tok(B, USBX_TOK_TEXT, c->vis_end, pos, si, sp, USBX_SPLIT_NOISE);   /* a noisy image does not advance the position */
  free(x0); free(noise);
}

int usbx_train_data_next(usbx_train_data *d, usbx_data_pos *pos, usbx_train_batch *b) {
  memset(b, 0, sizeof *b);
  builder B = {.b = b, .P = d->cfg.latent_patch * d->cfg.latent_patch * d->cfg.latent_channels};
  int total = 0, ns = 0, split = 0;
  for (;;) {
    int ep, id;
    bool from_buffer = total < d->o.prefer_buffer_before && pos->nbuf > 0;
    if (from_buffer) {
      ep = pos->buf_epoch[0]; id = pos->buf_sample[0];
    } else {
      if (pos->index >= d->n) { pos->epoch++; pos->index = 0; }
      if (d->perm_epoch != pos->epoch) shuffle(d, pos->epoch);
      ep = pos->epoch; id = d->perm[pos->index];
    }
    const sample *s = &d->s[id];
    if (ns > 0 && total + s->tokens > d->o.max_tokens) {
      if (!from_buffer && pos->nbuf < USBX_PACK_BUFFER) {
        pos->buf_epoch[pos->nbuf] = ep; pos->buf_sample[pos->nbuf] = id; pos->nbuf++;
        pos->index++;
        continue;
      }
      break;   /* the batch is done; upstream drops this sample, here it opens the next batch */
    }
    if (from_buffer) {
      pos->nbuf--;
      memmove(pos->buf_epoch, pos->buf_epoch + 1, sizeof(int) * (size_t)pos->nbuf);
      memmove(pos->buf_sample, pos->buf_sample + 1, sizeof(int) * (size_t)pos->nbuf);
    } else pos->index++;
    usbx_rng r;
    usbx_rng_seed(&r, d->o.seed ^ usbx_hash64(&(int64_t[2]){ep, id}, 16, 0x7a11));
    add_sample(d, &B, s, ns, &split, &r);
    ns++; total += s->tokens;
    if (total >= d->o.expected_tokens) break;
  }
  finish(&B);
  return ns;
}
