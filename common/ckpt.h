/* ckpt.h — the usbx-ckpt subcommands and the streaming checkpoint operations behind them.
 *
 * Each *_main takes the subcommand's own argv (argv[0] is the subcommand name), writes JSONL
 * report records on stdout and diagnostics on stderr, and returns the exit status (0 only when
 * everything was handled).  filters/usbx-ckpt.c dispatches to them from a table. */
#ifndef USBX_CKPT_H
#define USBX_CKPT_H
#include <stddef.h>
#include <stdint.h>
#include <jv.h>
#include "safetensors.h"

int usbx_ckpt_inspect_main(int argc, char **argv);
int usbx_ckpt_complete_main(int argc, char **argv);
int usbx_ckpt_convert_main(int argc, char **argv);
int usbx_ckpt_init_main(int argc, char **argv);      /* common/ckpt_init.c */

/* One output tensor of a streamed write: the source tensor (in a mapped file) and the dtype it
 * is written as (a float tensor may change float dtype; any other tensor keeps its dtype). */
typedef struct {
  const usbx_st_file *file;
  const usbx_st_tensor *t;
  usbx_dtype out;
} usbx_ckpt_item;

/* Writes the items into a new safetensors file at path (temporary file + fsync + rename),
 * streaming each tensor in 4 MB chunks (a reader thread reads ahead with O_DIRECT where possible;
 * conversion and writing happen in the caller's thread), so memory stays bounded (~30 MB)
 * whatever the sizes.  The source files are reopened by path and checked against the mapping.  Tensors are laid out by decreasing dtype size (then in the given
 * order) so every tensor is aligned.  metadata is consumed.  0 ok; -1 with err set. */
int usbx_ckpt_write(const char *path, const usbx_ckpt_item *items, size_t n, jv metadata, char *err, size_t errlen);

/* Copies a regular file to dst through a temporary file in dst's folder, fsyncs, and moves it
 * into place without ever replacing an existing dst.  Returns 0 when copied (*bytes set), 1 when
 * dst already exists (nothing touched), -1 on error (err set, nothing left behind). */
int usbx_ckpt_copy_noreplace(const char *src, const char *dst, uint64_t *bytes, char *err, size_t errlen);

#endif
