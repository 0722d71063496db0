/* bagel.h — the BAGEL-7B-MoT model (Qwen2 MoT language model; generation and understanding
 * parts follow) on a backend from kernels/ops.h.  Spec: ../shared/spec/bagel.md. */
#ifndef USBX_BAGEL_H
#define USBX_BAGEL_H
#include <stdbool.h>
#include <stdint.h>
#include "ops.h"

typedef struct {
  /* language model (llm_config.json) */
  int vocab, hidden, inter, layers, heads, kv_heads, head_dim;
  float eps, theta;
  /* SigLIP ViT (vit_config.json; layers = JSON value - 1, as upstream builds it) */
  int vit_hidden, vit_inter, vit_layers, vit_heads, vit_patch, vit_image_size;
  float vit_eps;
  /* BagelConfig (bagel_config.json where present, else the 7B-MoT inference values) */
  bool visual_gen, visual_und;
  int latent_patch, max_latent, vit_max_patch;
  float timestep_shift;
  /* latent space: the FLUX autoencoder of ae_config.json (z_channels, downsample), or pixels
   * when bagel_config.json says "vae": null (channels 3, downsample 1) */
  bool has_vae;
  int latent_channels, vae_downsample;
  /* special token ids: bagel_config.json special_token_ids, else from the tokenizer */
  int32_t bos, eos, vis_start, vis_end;
} usbx_bagel_config;

/* The FLUX autoencoder's parameters (ae_config.json; FLUX values when the file is absent). */
typedef struct {
  int in_channels, out_ch, ch, ch_mult[8], n_mult, num_res_blocks, z_channels, downsample;
  float scale_factor, shift_factor;
} usbx_ae_config;
int usbx_ae_read_config(const char *dir, usbx_ae_config *ae, char *err, size_t errlen);

/* Reads the configs of a checkpoint folder.  -1 with "<file>: <problem>" in err. */
int usbx_bagel_read_config(const char *dir, usbx_bagel_config *cfg, char *err, size_t errlen);

typedef struct usbx_bagel usbx_bagel;

/* Which parts to load. */
enum { USBX_PART_LLM = 1, USBX_PART_GEN = 2, USBX_PART_VIT = 4 };

/* Loads weights from DIR/model.safetensors if present, else DIR/ema.safetensors.  Every tensor
 * the requested parts need is checked by name and shape before anything is uploaded; a missing
 * one is named, with a pointer to `usbx-ckpt complete`.  Tensors are uploaded one at a time
 * from the memory map (no second host copy of the checkpoint). */
usbx_bagel *usbx_bagel_load(const char *dir, usbx_backend *be, unsigned parts, char *err, size_t errlen);
void usbx_bagel_free(usbx_bagel *m);
/* Replaces the loaded weights with those of a safetensors file (every tensor the loaded parts
 * have must be present with its shape).  0, or -1 with err set. */
int usbx_bagel_load_weights(usbx_bagel *m, const char *path, char *err, size_t errlen);
const usbx_bagel_config *usbx_bagel_cfg(const usbx_bagel *m);
/* Sets the special ids (from the tokenizer when bagel_config.json does not carry them). */
void usbx_bagel_set_special_ids(usbx_bagel *m, int32_t bos, int32_t eos, int32_t vis_start, int32_t vis_end);
usbx_backend *usbx_bagel_backend(const usbx_bagel *m);

/* A context: one KV cache (per layer K after k-norm+RoPE, V raw; mm dtype) with its length and
 * next free RoPE position.  Copyable, as the upstream inferencer copies contexts. */
typedef struct usbx_ctx usbx_ctx;
usbx_ctx *usbx_ctx_new(usbx_bagel *m);
usbx_ctx *usbx_ctx_copy(usbx_bagel *m, const usbx_ctx *c);
void usbx_ctx_free(usbx_bagel *m, usbx_ctx *c);
int usbx_ctx_len(const usbx_ctx *c);
int usbx_ctx_pos(const usbx_ctx *c);

/* Text prefill: ids (already wrapped, e.g. <|im_start|> text <|im_end|>) appended to the context
 * as a causal und-mode segment at consecutive positions.  If logits is non-NULL, the lm_head
 * logits of every position are copied there (host f32 [T, vocab]). */
void usbx_bagel_prefill_text(usbx_bagel *m, usbx_ctx *c, const int32_t *ids, int T, float *logits);

/* One causal decoding step: feeds token at the context's next position (appending its K/V),
 * returns the greedy next id (ties to the lowest id).  logits (host [vocab]) receives the step's
 * logits when non-NULL; otherwise nothing but the id leaves the device. */
int32_t usbx_bagel_decode_step(usbx_bagel *m, usbx_ctx *c, int32_t token, float *logits);

/* Text generation as upstream generate_text: feeds <|im_start|> at the context's next position,
 * then each chosen token, appending K/V; stops when <|im_end|> is chosen (not emitted) or after
 * max_length-1 new tokens.  Greedy when temperature <= 0 (ties to the lowest id), else softmax
 * sampling with the seeded RNG.  Writes the new token ids (without the start token) to out and
 * returns their count; step_logits (host [max_length, vocab]) receives each step's logits when
 * non-NULL.  The context is extended (copy it first to keep the original). */
int usbx_bagel_generate_text(usbx_bagel *m, usbx_ctx *c, int max_length, double temperature, uint64_t seed,
                             int32_t *out, float *step_logits);

/* ---------------------------------------------------------------- image generation */

/* Sampling settings (spec 5.4-5.6); usbx_gen_defaults gives UniSandbox's. */
typedef struct {
  int steps;               /* num_timesteps: steps-1 model evaluations */
  float shift;             /* timestep shift */
  float cfg_text, cfg_img;
  float interval[2];       /* CFG applies when interval[0] < sigma <= interval[1] */
  usbx_renorm renorm;
  float renorm_min;
} usbx_gen_opts;
void usbx_gen_defaults(usbx_gen_opts *o);
/* sigma_0..sigma_{steps-1} (shifted linspace(1, 0, steps) in fp32, as torch computes it). */
void usbx_gen_timesteps(int steps, float shift, float *sigma);

/* Optional per-step record of a sampling run (host arrays of (steps-1) * N * P floats each;
 * any may be NULL). */
typedef struct { float *x_t, *v_cond, *v_text_uncond, *v_img_uncond, *v; } usbx_gen_trace;

/* Generates the latent of an H x W image (multiples of the latent downsample) from the three
 * contexts (cond, text-unconditional, image-unconditional; the last two may be NULL when their
 * scale is <= 1).  noise: host [N, P] f32, the initial state at sigma = 1.  latent: host [N, P]
 * f32 out.  On the GPU nothing returns to the host inside the step loop. */
void usbx_bagel_generate_latent(usbx_bagel *m, usbx_ctx *cond, usbx_ctx *text_uncond, usbx_ctx *img_uncond,
                                int H, int W, const usbx_gen_opts *o, const float *noise, float *latent, usbx_gen_trace *trace);
/* The same for B tasks in one batched forward per step (kind-major branches: every task's cond,
 * then text-uncond, then img-uncond).  noise and latent: host [B, N, P].  trace needs B == 1. */
void usbx_bagel_generate_latents(usbx_bagel *m, int B, usbx_ctx *const *cond, usbx_ctx *const *text_uncond, usbx_ctx *const *img_uncond,
                                 int H, int W, const usbx_gen_opts *o, const float *noise, float *latent, usbx_gen_trace *trace);
/* Device bytes the sampler holds for B tasks at H x W (step buffers and the image rows of the
 * branches' caches; the contexts' prompts aside), 0 for an invalid size. */
size_t usbx_bagel_gen_batch_bytes(const usbx_bagel *m, int B, int H, int W, const usbx_gen_opts *o);
int usbx_bagel_latent_tokens(const usbx_bagel *m, int H, int W, int *h, int *w, int *P);

/* ---------------------------------------------------------------- image context */

/* Optional intermediate values of the ViT path (host arrays, any may be NULL). */
typedef struct { float *patches, *embeddings, *encoder, *connector, *pos_emb, *llm_embeddings; } usbx_vit_trace;

/* Adds an image as understanding tokens: SigLIP ViT + connector + vit_pos_embed (spec 7.4-7.5),
 * then a non-causal und-mode block [<|vision_start|>, patches, <|vision_end|>] at one position;
 * the context's position then advances by one.  img: host [H, W, 3] in [-1, 1], H and W
 * multiples of the ViT patch size. */
void usbx_bagel_prefill_vit_image(usbx_bagel *m, usbx_ctx *c, const float *img, int H, int W, usbx_vit_trace *trace);
/* Adds a clean VAE image (t = 0) as a gen-mode block [<|vision_start|>, latents, <|vision_end|>]
 * at one position (markers und, latents gen); tokens: host [h*w, P] (patchified, scaled). */
void usbx_bagel_prefill_vae_latent(usbx_bagel *m, usbx_ctx *c, const float *tokens, int h, int w);

#endif
