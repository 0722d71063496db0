/* util.h — process-wide helpers every tool shares: the error format, checked allocation,
 * atomic file output, directories, timing.  One place for each. */
#ifndef USBX_UTIL_H
#define USBX_UTIL_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdarg.h>

#define USBX_VERSION "0.1.0"

/* The tool name used as the prefix of every diagnostic ("usbx-gen"). */
void usbx_set_progname(const char *name);
const char *usbx_progname(void);

/* "usbx-<tool>: <message>\n" on stderr.  usbx_die exits with status 1 (or 2 for usage errors
 * via usbx_usage_die).  Messages name the file/line/problem; see usbx_jsonl_error. */
void usbx_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void usbx_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void usbx_usage_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Checked allocation: dies with a clear message on failure. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Growable byte buffer (used for strings and binary data alike). */
typedef struct { char *data; size_t len, cap; } usbx_buf;
void usbx_buf_append(usbx_buf *b, const void *p, size_t n);
void usbx_buf_appendf(usbx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void usbx_buf_free(usbx_buf *b);

/* Atomic output file: writes go to "<dir>/.<name>.tmp.<pid>.<n>" in the same folder; commit
 * flushes, fsyncs, renames over the target and fsyncs the folder.  abort unlinks the temporary.
 * A crash at any moment leaves either the old file or the new one, never a half-written file. */
typedef struct { char *path; char *tmp; FILE *f; } usbx_atomic;
int usbx_atomic_open(usbx_atomic *a, const char *path);      /* 0 ok, -1 errno set */
int usbx_atomic_commit(usbx_atomic *a);                      /* 0 ok, -1 errno set (temp removed) */
void usbx_atomic_abort(usbx_atomic *a);
/* Write a whole buffer atomically. */
int usbx_write_file_atomic(const char *path, const void *data, size_t n);

/* mkdir -p; 0 ok, -1 errno set. */
int usbx_mkdirs(const char *path);
/* Read a whole file (NUL-terminated for convenience); NULL with errno on failure. */
char *usbx_read_file(const char *path, size_t *len);
int usbx_file_exists(const char *path);
/* Join two path parts with one '/'. Caller frees. */
char *usbx_path_join(const char *a, const char *b);
/* fsync a directory (after a rename inside it). */
int usbx_fsync_dir(const char *dir);

/* Monotonic seconds. */
double usbx_now(void);

/* 64-bit hash (FNV-1a) of bytes, and a splitmix64 step: the project's seed derivation. */
uint64_t usbx_hash64(const void *p, size_t n, uint64_t seed);
uint64_t usbx_splitmix64(uint64_t *state);

/* Counter-based RNG (xoshiro256**, seeded with splitmix64): deterministic per seed. */
typedef struct { uint64_t s[4]; int has_spare; double spare; } usbx_rng;
void usbx_rng_seed(usbx_rng *r, uint64_t seed);
uint64_t usbx_rng_u64(usbx_rng *r);
double usbx_rng_uniform(usbx_rng *r);          /* [0,1) with 53 bits */
double usbx_rng_normal(usbx_rng *r);           /* N(0,1), Box-Muller */
uint64_t usbx_rng_below(usbx_rng *r, uint64_t n); /* unbiased integer in [0,n) */

#endif
