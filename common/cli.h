/* cli.h — flag parsing, --help/--version, --shard, progress lines: shared by every filter. */
#ifndef USBX_CLI_H
#define USBX_CLI_H
#include <stdbool.h>
#include <stdint.h>

typedef enum {
  USBX_OPT_FLAG,    /* bool*: set true; "--no-NAME" sets false when allow_no is set */
  USBX_OPT_STR,     /* const char**  */
  USBX_OPT_INT,     /* long*         */
  USBX_OPT_DOUBLE,  /* double*       */
} usbx_opt_kind;

typedef struct {
  const char *name;     /* long name without the dashes, e.g. "steps" */
  usbx_opt_kind kind;
  void *dest;
  const char *metavar;  /* shown in --help, e.g. "N"; NULL for flags */
  const char *help;     /* one line */
  bool allow_no;        /* for flags: accept --no-NAME */
} usbx_opt;

/* Parses argv: "--name value", "--name=value", "--" ends options.  --help prints
 * "usage: <usage>\n<description>\n" and the options, then exits 0; --version prints
 * "<prog> <version>" and exits 0.  Unknown options and bad values: one-line error, exit 2.
 * Positional arguments are collected, in order, into *pos (argv pointers, caller frees the array). */
void usbx_cli_parse(int argc, char **argv, const usbx_opt *opts, const char *usage,
                    const char *description, char ***pos, int *npos);

/* "--shard I/N" parsing (I in 0..N-1); dies with a usage error when malformed. */
void usbx_parse_shard(const char *s, long *index, long *count);
/* Parse "WxH". */
void usbx_parse_size(const char *s, int *w, int *h);
/* Parse a comma list of doubles "a,b"; returns count parsed, dies on malformed input. */
int usbx_parse_doubles(const char *s, double *out, int max);

/* Progress line on stderr: "\r<prog>: 12/100 (12%) 3.2/s ETA 0:27" at most every 0.25 s.
 * Enabled when stderr is a terminal or force is true; total 0 = unknown. */
typedef struct {
  bool enabled, tty;
  double start, last;
  int64_t count, total;
  const char *unit;
} usbx_progress;
void usbx_progress_init(usbx_progress *p, bool force, int64_t total, const char *unit);
void usbx_progress_tick(usbx_progress *p, int64_t n);
void usbx_progress_done(usbx_progress *p);

#endif
