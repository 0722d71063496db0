/* t2i.c — see t2i.h.  Contexts as upstream's interleave_inference builds them (spec 5.1, 6.2):
 *   think: gen <- system; cfg_img <- system
 *   cfg_text <- copy of gen (system only, or empty)
 *   gen <- + prompt; cfg_img <- + prompt (only consulted when cfg_img > 1)
 *   think: the think text is decoded greedily from a throw-away copy of gen, re-tokenised and
 *          appended to gen as its own text segment
 * then the image is sampled and decoded. */
#include "t2i.h"
#include "tokenizer.h"
#include "util.h"
#include "vae.h"
#include <stdlib.h>
#include <string.h>

const char *const USBX_THINK_SYSTEM_PROMPT =
  "You should first think about the planning process in the mind and then generate the image. \n"
  "The planning process is enclosed within <think> </think> tags, i.e. <think> planning process here </think> image here";

struct usbx_t2i {
  usbx_backend *be;
  usbx_bagel *m;
  usbx_vae *vae;          /* NULL for pixel-space models */
  usbx_tokenizer *tok;
};

usbx_t2i *usbx_t2i_open(const char *dir, usbx_backend *be, const char *tokenizer, char *err, size_t errlen) {
  usbx_t2i *t = xcalloc(1, sizeof *t);
  t->be = be;
  t->tok = usbx_tok_load(tokenizer ? tokenizer : dir, err, errlen);
  if (!t->tok) { free(t); return NULL; }
  t->m = usbx_bagel_load(dir, be, USBX_PART_LLM | USBX_PART_GEN, err, errlen);
  if (!t->m) { usbx_tok_free(t->tok); free(t); return NULL; }
  const usbx_bagel_config *c = usbx_bagel_cfg(t->m);
  usbx_bagel_ids ids;
  if (usbx_tok_bagel_ids(t->tok, &ids, err, errlen) == 0) {
    usbx_bagel_set_special_ids(t->m, ids.bos, ids.eos, ids.start_of_image, ids.end_of_image);
  } else if (c->bos < 0 || c->vis_start < 0) {
    usbx_t2i_close(t);
    return NULL;
  }
  if ((size_t)c->vocab < usbx_tok_vocab_size(t->tok)) {
    snprintf(err, errlen, "%s: the tokenizer has %zu ids but the model's vocab_size is %d", dir, usbx_tok_vocab_size(t->tok), c->vocab);
    usbx_t2i_close(t);
    return NULL;
  }
  if (c->has_vae) {
    t->vae = usbx_vae_load(dir, be, err, errlen);
    if (!t->vae) { usbx_t2i_close(t); return NULL; }
  }
  return t;
}

void usbx_t2i_close(usbx_t2i *t) {
  if (!t) return;
  usbx_vae_free(t->vae);
  usbx_bagel_free(t->m);
  usbx_tok_free(t->tok);
  free(t);
}

usbx_bagel *usbx_t2i_model(usbx_t2i *t) { return t->m; }

static int prefill(usbx_t2i *t, usbx_ctx *c, const char *text, char *err, size_t errlen) {
  int32_t *ids; size_t n;
  if (usbx_tok_encode_segment(t->tok, text, strlen(text), &ids, &n)) { snprintf(err, errlen, "text is not valid UTF-8"); return -1; }
  usbx_bagel_prefill_text(t->m, c, ids, (int)n, NULL);
  free(ids);
  return 0;
}

/* The three contexts of one task (img only when cfg_img > 1), with thinking first in think mode. */
static int build_contexts(usbx_t2i *t, const char *prompt, const usbx_t2i_opts *o, bool thinking, usbx_ctx **gen_out,
                          usbx_ctx **txt_out, usbx_ctx **img_out, char **think, char *err, size_t errlen) {
  usbx_bagel *m = t->m;
  usbx_ctx *gen = usbx_ctx_new(m), *img = NULL, *txt = NULL;
  int rc = 0;
  if (thinking) rc = prefill(t, gen, USBX_THINK_SYSTEM_PROMPT, err, errlen);
  txt = usbx_ctx_copy(m, gen);
  if (!rc) rc = prefill(t, gen, prompt, err, errlen);
  if (!rc && o->gen.cfg_img > 1.0f) img = usbx_ctx_copy(m, gen);
  if (!rc && thinking) {
    usbx_ctx *scratch = usbx_ctx_copy(m, gen);
    int max = o->max_think_tokens > 1 ? o->max_think_tokens : 2;
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)max);
    int n = usbx_bagel_generate_text(m, scratch, max, 0.0, 0, ids, NULL);
    usbx_ctx_free(m, scratch);
    /* upstream decodes with special tokens kept; the text is what came before <|im_end|> */
    char *text = usbx_tok_decode(t->tok, ids, (size_t)n, false);
    free(ids);
    rc = prefill(t, gen, text, err, errlen);
    if (think) *think = text; else free(text);
  }
  if (rc) { usbx_ctx_free(m, gen); usbx_ctx_free(m, txt); usbx_ctx_free(m, img); gen = txt = img = NULL; }
  *gen_out = gen; *txt_out = txt; *img_out = img;
  return rc;
}

int usbx_t2i_max_batch(usbx_t2i *t, const usbx_t2i_opts *o, int want) {
  usbx_backend *be = t->be;
  size_t avail = be->mem_available(be);
  if (avail == SIZE_MAX) return want;
  /* keep a tenth of the free memory (at least 1 GiB) for the contexts and the VAE */
  size_t reserve = avail / 10 > ((size_t)1 << 30) ? avail / 10 : (size_t)1 << 30;
  int b = want;
  while (b > 1 && usbx_bagel_gen_batch_bytes(t->m, b, o->height, o->width, &o->gen) + reserve > avail) b--;
  return b;
}

int usbx_t2i_generate_batch(usbx_t2i *t, int n, const char *const *prompts, const bool *think_mode, const usbx_t2i_opts *o,
                            const uint64_t *noise_seeds, uint8_t *const *rgb, char **think, char **errs) {
  usbx_bagel *m = t->m;
  const usbx_bagel_config *c = usbx_bagel_cfg(m);
  int h, w, P, failed = 0;
  char err[512];
  for (int i = 0; i < n; i++) { errs[i] = NULL; if (think) think[i] = NULL; }
  if (usbx_bagel_latent_tokens(m, o->height, o->width, &h, &w, &P)) {
    int ds = c->vae_downsample * c->latent_patch;
    for (int i = 0; i < n; i++)
      errs[i] = xasprintf("image size %dx%d: sides must be multiples of %d, at most %d", o->width, o->height, ds, ds * c->max_latent);
    return n;
  }
  usbx_ctx **gen = xcalloc((size_t)n, sizeof *gen), **txt = xcalloc((size_t)n, sizeof *txt), **img = xcalloc((size_t)n, sizeof *img);
  int *slot = xmalloc(sizeof(int) * (size_t)n), B = 0;
  for (int i = 0; i < n; i++) {
    usbx_ctx *g, *tx, *im;
    bool thinking = think_mode ? think_mode[i] : o->think;
    if (build_contexts(t, prompts[i], o, thinking, &g, &tx, &im, think ? &think[i] : NULL, err, sizeof err)) {
      errs[i] = xstrdup(err);
      failed++;
      continue;
    }
    gen[B] = g; txt[B] = tx; img[B] = im; slot[B++] = i;
  }
  if (B > 0) {
    size_t NP = (size_t)h * w * P;
    float *noise = xmalloc(sizeof(float) * NP * (size_t)B), *lat = xmalloc(sizeof(float) * NP * (size_t)B);
    for (int b = 0; b < B; b++) {
      usbx_rng r;
      usbx_rng_seed(&r, noise_seeds[slot[b]]);
      for (size_t j = 0; j < NP; j++) noise[(size_t)b * NP + j] = (float)usbx_rng_normal(&r);
    }
    usbx_bagel_generate_latents(m, B, gen, txt, img, o->height, o->width, &o->gen, noise, lat, NULL);
    int p = c->latent_patch, C = c->latent_channels;
    float *z = xmalloc(sizeof(float) * NP), *pix = xmalloc(sizeof(float) * (size_t)o->height * o->width * 3);
    for (int b = 0; b < B; b++) {
      usbx_unpatchify(lat + (size_t)b * NP, h, w, p, C, z);
      if (t->vae) usbx_vae_decode(t->vae, z, h * p, w * p, pix);
      else memcpy(pix, z, sizeof(float) * NP);          /* pixel-space latents are the image */
      usbx_pixels_to_u8(pix, (size_t)o->height * o->width * 3, rgb[slot[b]]);
    }
    free(noise); free(lat); free(z); free(pix);
  }
  for (int b = 0; b < B; b++) { usbx_ctx_free(m, gen[b]); usbx_ctx_free(m, txt[b]); usbx_ctx_free(m, img[b]); }
  free(gen); free(txt); free(img); free(slot);
  return failed;
}

int usbx_t2i_generate(usbx_t2i *t, const char *prompt, const usbx_t2i_opts *o, uint64_t noise_seed, uint8_t *rgb,
                      char **think, char *err, size_t errlen) {
  char *e = NULL;
  int rc = usbx_t2i_generate_batch(t, 1, &prompt, NULL, o, &noise_seed, &rgb, think, &e);
  if (rc) snprintf(err, errlen, "%s", e);
  free(e);
  return rc ? -1 : 0;
}
