/* train.h — the upstream training forward (spec 9) and its backward pass on a backend: packed
 * batches of text, ViT and VAE splits with the split attention rules, flow-matching MSE and text
 * cross-entropy, gradients for every trainable tensor. */
#ifndef USBX_TRAIN_H
#define USBX_TRAIN_H
#include <stdbool.h>
#include <stdint.h>
#include "bagel.h"

enum { USBX_TOK_TEXT = 0, USBX_TOK_VIT = 1, USBX_TOK_VAE = 2 };
enum { USBX_SPLIT_CAUSAL = 0, USBX_SPLIT_FULL = 1, USBX_SPLIT_NOISE = 2 };

/* A packed batch, every array in packed order (host memory). */
typedef struct {
  int n;
  int32_t *pos, *sample, *split, *mode;   /* [n] RoPE position, sample id, split id, split mode */
  int8_t *kind;                           /* [n] USBX_TOK_* */
  int32_t *text_id;                       /* [n] token id of TEXT tokens (markers included), else -1 */
  /* ViT tokens in packed order: patches [n_vit, p*p*3] (flattened (py, px, c)), position ids,
   * and the patch count of each image (images are consecutive runs of VIT tokens) */
  int n_vit, n_vit_img;
  float *vit_patches;
  int32_t *vit_pid, *vit_seqlen;
  /* VAE latent tokens in packed order: clean latent x0 [n_vae, P], flow noise [n_vae, P],
   * t [n_vae] (after sigmoid and shift; 0 for a clean condition image), position ids */
  int n_vae;
  float *x0, *noise, *t;
  int32_t *lat_pid;
  /* losses: CE rows (packed index, label) and MSE rows (packed index of VAE tokens) */
  int n_ce, n_mse;
  int32_t *ce_idx, *ce_label, *mse_idx;
  /* the token counts the losses are divided by: 0 = this batch's n_ce / n_mse; a step made of
   * several batches (accumulation, data parallel ranks) sets the counts of all of them */
  int ce_den, mse_den;
} usbx_train_batch;

typedef struct usbx_trainer usbx_trainer;

/* Gradient buffers for every loaded tensor except the fixed sin-cos tables.  frozen: names with
 * one of these prefixes get no gradient (NULL-terminated list, may be NULL). */
usbx_trainer *usbx_trainer_new(usbx_bagel *m, const char *const *frozen);
void usbx_trainer_free(usbx_trainer *t);

typedef struct {
  double loss, ce, mse;
  float *ce_tok;       /* optional host [n_ce]: per-token cross entropy */
  float *mse_elem;     /* optional host [n_mse, P]: squared error per element */
} usbx_train_out;

/* Forward and backward of loss = ce_weight*CE + mse_weight*MSE (CE = Σ ce / n_ce, MSE =
 * Σ_tokens mean_P(err²) / n_mse, as upstream; with ce_den/mse_den set those replace n_ce/n_mse,
 * and a batch adds its share of a step made of several batches).
 * add_grads adds the batch's gradients to those held and its CE and MSE to the sums kept on the
 * device; step_grads and zero_grads zero both first.  zero_grads clears lazily (a product's
 * weight gradient is then written, not added, by the step's first batch): after the step's last
 * add_grads, settle_grads clears what no batch reached, before anything reads the gradients
 * (step_grads does).  usbx_trainer_losses reads the sums (waiting
 * for the device).  out (nullable) gets those sums after this batch, and, where asked, this
 * batch's per-token CE and per-element squared errors. */
void usbx_trainer_zero_grads(usbx_trainer *t);
void usbx_trainer_settle_grads(usbx_trainer *t);
void usbx_trainer_losses(usbx_trainer *t, double *ce, double *mse);
/* Whether the gradient of weight w (the model's pointer) was written since the last zero_grads.
 * One no batch reached (lm_head without text answers, the generation expert without images)
 * is zero. */
bool usbx_trainer_grad_written(usbx_trainer *t, const void *w);
void usbx_trainer_add_grads(usbx_trainer *t, const usbx_train_batch *b, float ce_weight, float mse_weight, usbx_train_out *out);
void usbx_trainer_step_grads(usbx_trainer *t, const usbx_train_batch *b, float ce_weight, float mse_weight, usbx_train_out *out);

/* Keep only each decoder layer's input in the forward and recompute the layer before its
 * backward (activation checkpointing: memory of one layer's activations instead of all of them,
 * for about a third more compute; the results are identical). */
void usbx_trainer_set_recompute(usbx_trainer *t, bool on);
/* The decoder layers' gradients share nbuf buffers of one layer's size, layer l using buffer
 * l % nbuf (call before asking for gradient pointers): after the backward of layer l,
 * layer_done(ctx, l) must take the layer's gradients (usbx_trainer_grad pointers of its tensors,
 * which point into the shared buffer) and leave them zero.  Data parallel training reduces them
 * to their owners there (ZeRO-2); with 2 buffers it may do that beside the next layer's backward. */
void usbx_trainer_share_layer_grads(usbx_trainer *t, int nbuf, void (*layer_done)(void *ctx, int layer), void *ctx);
/* ZeRO-3: the decoder layers' weights are not resident; before the trainer reads layer l's
 * weights (forward, recomputation, backward) it calls gather(ctx, l), which must make the model's
 * layer l pointers valid.  Needs share_layer_grads first.  usbx_trainer_weights_moved: the model's
 * weight pointers changed (layers now point at gathered copies, several layers at one); the
 * gradient lookup is rebuilt from them, and layers sharing addresses must share the gradient
 * buffer (with k copies used in turn, k = nbuf). */
void usbx_trainer_gather_layers(usbx_trainer *t, void (*gather)(void *ctx, int layer), void *ctx);
void usbx_trainer_weights_moved(usbx_trainer *t);

/* The gradient of a named tensor (device f32, same shape), or NULL (unknown, frozen or fixed). */
float *usbx_trainer_grad(usbx_trainer *t, const char *name, int64_t *numel);

#endif
