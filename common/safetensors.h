/* safetensors.h — memory-mapped, fully validated reader and a streaming, atomic writer.
 *
 * Reader validation (before any tensor is touched): file at least 8 bytes; header length N
 * within the file and under 100 MB; header is valid UTF-8 JSON object; every entry except
 * "__metadata__" has a known dtype, an integer shape, data_offsets [begin,end] with
 * begin <= end, end <= data size and (end-begin) == numel*dtype size; no two tensors overlap;
 * "__metadata__" (if present) is an object of strings and is kept. */
#ifndef USBX_SAFETENSORS_H
#define USBX_SAFETENSORS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jv.h>
#include "tensor.h"

typedef struct {
  char *name;
  usbx_dtype dtype;
  int ndim;
  int64_t shape[USBX_MAX_DIMS];
  uint64_t begin, end;      /* byte offsets in the data area */
  const void *data;         /* into the mapping */
} usbx_st_tensor;

typedef struct {
  char *path;
  void *map;
  size_t map_len;
  const uint8_t *data_area;
  uint64_t data_len;
  size_t n;                 /* tensors, in header order */
  usbx_st_tensor *t;
  jv metadata;              /* object, or jv_null() */
  size_t *sorted;           /* indexes sorted by name, for lookup */
} usbx_st_file;

/* Opens and validates.  On failure returns -1 and writes "<path>: <problem>" into err. */
int usbx_st_open(const char *path, usbx_st_file *f, char *err, size_t errlen);
const usbx_st_tensor *usbx_st_find(const usbx_st_file *f, const char *name);
void usbx_st_close(usbx_st_file *f);
/* Advise the kernel that a tensor's pages will be read soon / are no longer needed. */
void usbx_st_willneed(const usbx_st_file *f, const usbx_st_tensor *t);
void usbx_st_dontneed(const usbx_st_file *f, const usbx_st_tensor *t);

/* Streaming writer.  Declare every tensor (name, dtype, shape) up front — the header is written
 * first — then stream each tensor's bytes in declaration order with usbx_st_writer_write (any
 * chunk size).  finish() checks every byte arrived, fsyncs, renames the temporary file (same
 * folder) over path and fsyncs the folder.  abort() removes the temporary. */
typedef struct {
  const char *name;
  usbx_dtype dtype;
  int ndim;
  int64_t shape[USBX_MAX_DIMS];
} usbx_st_decl;

typedef struct usbx_st_writer usbx_st_writer;
usbx_st_writer *usbx_st_writer_begin(const char *path, const usbx_st_decl *decls, size_t n,
                                     jv metadata /* consumed; object of strings or null */,
                                     char *err, size_t errlen);
int usbx_st_writer_write(usbx_st_writer *w, const void *data, size_t nbytes);
int usbx_st_writer_finish(usbx_st_writer *w, char *err, size_t errlen);
void usbx_st_writer_abort(usbx_st_writer *w);

/* Additions (safetensors.c):
 * Validate a file image already in memory (fuzzing, tests); tensors point into buf, which must
 * outlive f.  name is used in messages. */
int usbx_st_open_mem(const void *buf, size_t len, const char *name, usbx_st_file *f, char *err, size_t errlen);
/* Page advice for part of a tensor (streaming in chunks), and for the whole mapping. */
void usbx_st_willneed_range(const usbx_st_file *f, const void *p, size_t n);
void usbx_st_dontneed_range(const usbx_st_file *f, const void *p, size_t n);
void usbx_st_sequential(const usbx_st_file *f);
/* The writer's error after a failed write ("<path>: <problem>"), and bytes still expected.
 * Declare tensors in order of decreasing dtype size to keep every tensor aligned (readers such
 * as PyTorch's require it; the format allows no padding between tensors). */
const char *usbx_st_writer_error(const usbx_st_writer *w);
uint64_t usbx_st_writer_remaining(const usbx_st_writer *w);
/* Temporary files: "<dir>/.<base>.tmp.<pid>.<n>" beside path (caller frees); a registry of live
 * temporaries (slot, or -1 when full) that usbx_st_cleanup_on_signals() removes on SIGINT,
 * SIGTERM, SIGHUP and SIGPIPE before dying of the signal. */
char *usbx_st_temp_name(const char *path);
char *usbx_st_dirname(const char *path);
int usbx_st_track_temp(const char *path);
void usbx_st_untrack_temp(int slot);
void usbx_st_cleanup_on_signals(void);

#endif
