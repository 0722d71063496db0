/* train_data.h — training records (design.md) to packed batches as upstream builds them
 * (spec 9.2, 4.4): text-to-image pairs and text conversations, token-budget packing,
 * deterministic shuffling by seed and epoch, per-sample randomness derived from
 * (seed, epoch, sample) so a resumed run sees exactly the same batches. */
#ifndef USBX_TRAIN_DATA_H
#define USBX_TRAIN_DATA_H
#include <stdbool.h>
#include <stdint.h>
#include "bagel.h"
#include "train.h"

struct usbx_tokenizer;
struct usbx_vae;

typedef struct {
  int expected_tokens, max_tokens, max_tokens_per_sample;
  int prefer_buffer_before;     /* packing: take waiting samples first below this many tokens (16384) */
  float text_cond_dropout;      /* probability of dropping a T2I caption (0.1) */
  float timestep_shift;         /* training shift of t = sigmoid(N(0,1)) (1.0) */
  uint64_t seed;
  bool visual_gen, visual_und;  /* which kinds of record are used */
} usbx_data_opts;

typedef struct usbx_train_data usbx_train_data;

/* Reads every record of the files (NULL/"-" = stdin), tokenises, loads and resizes images and
 * encodes them with the autoencoder (its mean and log-variance; the posterior is sampled per
 * use), so a bad record fails here with "<file>:<line>: <problem>".  vae NULL for pixel-space
 * models.  NULL with err set. */
usbx_train_data *usbx_train_data_load(char *const *files, int nfiles, const usbx_bagel_config *cfg,
                                      const struct usbx_tokenizer *tok, struct usbx_vae *vae, const usbx_data_opts *o,
                                      char *err, size_t errlen);
void usbx_train_data_free(usbx_train_data *d);
int usbx_train_data_count(const usbx_train_data *d);      /* usable samples */
int usbx_train_data_skipped(const usbx_train_data *d);    /* samples over max_tokens_per_sample */

/* Upstream's packing (dbase.py PackedDataset): a sample that would push a batch past max_tokens
 * waits in an overflow buffer (at most USBX_PACK_BUFFER, first in first out) while later samples
 * fill the batch; a batch below prefer_buffer_before tokens takes its next sample from the
 * buffer first. */
enum { USBX_PACK_BUFFER = 50 };

/* The data position: epoch and index into that epoch's shuffled order, and the overflow buffer
 * (each waiting sample with the epoch it was drawn in, which seeds its randomness). */
typedef struct {
  int epoch, index;
  int nbuf;
  int buf_epoch[USBX_PACK_BUFFER], buf_sample[USBX_PACK_BUFFER];
} usbx_data_pos;

/* Builds the next packed batch from *pos (advanced past the samples used; a new epoch starts
 * when the order is exhausted).  The batch owns its arrays (free with usbx_train_batch_free).
 * Returns the number of samples packed. */
int usbx_train_data_next(usbx_train_data *d, usbx_data_pos *pos, usbx_train_batch *b);
void usbx_train_batch_free(usbx_train_batch *b);

#endif
