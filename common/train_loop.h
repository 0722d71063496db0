/* train_loop.h — the usbx-train loop: packed batches, gradients, global-norm clipping, AdamW
 * with warmup and a constant or cosine schedule, EMA, progress records, atomic checkpoints and
 * exact resumption. */
#ifndef USBX_TRAIN_LOOP_H
#define USBX_TRAIN_LOOP_H
#include <stdbool.h>
#include "train_data.h"

typedef struct {
  const char *model, *out, *device, *tokenizer;
  char *const *files; int nfiles;
  double lr, min_lr, beta1, beta2, eps, weight_decay, clip, ema, ce_weight, mse_weight;
  long warmup, steps, epochs, save_every, log_every;
  long accum;              /* packed batches per rank per step (gradient accumulation) */
  bool cosine, freeze_llm, freeze_vit, resume, progress, no_save;
  bool recompute;          /* activation recomputation per decoder layer */
  int zero;                /* data parallel sharding: 1 = optimizer state, 2 = + gradients (default), 3 = + decoder weights */
  usbx_data_opts data;
} usbx_train_opts;

void usbx_train_defaults(usbx_train_opts *o);
/* Runs the training; progress records on stdout (rank 0).  Data parallel when WORLD_SIZE > 1
 * in the environment (see dist.h).  Returns the exit status. */
int usbx_train_run(const usbx_train_opts *o);

#endif
