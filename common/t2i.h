/* t2i.h — text-to-image as UniSandbox runs it (spec 5, 6): contexts, optional thinking,
 * sampling, decoding to RGB.  One object holds the model, its autoencoder and its tokenizer. */
#ifndef USBX_T2I_H
#define USBX_T2I_H
#include <stdbool.h>
#include <stdint.h>
#include "bagel.h"

typedef struct usbx_t2i usbx_t2i;

/* Loads DIR (weights, configs, autoencoder unless pixel-space) and the tokenizer (tokenizer
 * path, or DIR when NULL).  Special ids come from bagel_config.json or, failing that, the
 * tokenizer.  NULL with the reason in err. */
usbx_t2i *usbx_t2i_open(const char *dir, usbx_backend *be, const char *tokenizer, char *err, size_t errlen);
void usbx_t2i_close(usbx_t2i *t);
usbx_bagel *usbx_t2i_model(usbx_t2i *t);

typedef struct {
  usbx_gen_opts gen;
  int width, height;
  bool think;              /* the generation think system prompt + greedy thinking first */
  int max_think_tokens;    /* upstream max_length: at most this many minus one new tokens */
} usbx_t2i_opts;

/* The system prompt of think mode (spec 6.1), exactly as upstream. */
extern const char *const USBX_THINK_SYSTEM_PROMPT;

/* Generates one image.  The initial noise is N(0, 1) from noise_seed.  rgb: H*W*3 bytes.
 * *think (when non-NULL) receives the malloc'd think text in think mode, NULL otherwise.
 * Returns 0, or -1 with err set (e.g. a prompt that is not valid UTF-8). */
int usbx_t2i_generate(usbx_t2i *t, const char *prompt, const usbx_t2i_opts *o, uint64_t noise_seed, uint8_t *rgb,
                      char **think, char *err, size_t errlen);

/* Generates n images with one batched forward per sampling step (contexts and thinking are
 * built task by task first).  think_mode[i] says whether task i thinks first (NULL: o->think
 * for all; the other settings of o hold for every task).  rgb[i]: H*W*3 bytes each; think (may be NULL): think[i] receives
 * the think text in think mode.  errs[i] receives a malloc'd message for a task that failed (its
 * image is not written), else NULL.  Returns the number of failed tasks. */
int usbx_t2i_generate_batch(usbx_t2i *t, int n, const char *const *prompts, const bool *think_mode, const usbx_t2i_opts *o,
                            const uint64_t *noise_seeds, uint8_t *const *rgb, char **think, char **errs);
/* The largest batch <= want whose sampler buffers fit the backend's free memory (want on CPU). */
int usbx_t2i_max_batch(usbx_t2i *t, const usbx_t2i_opts *o, int want);

#endif
