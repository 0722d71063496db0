/* jsonl.h — streaming JSONL records on libjq's jv.  One JSON object per line, lines of any
 * length, unknown fields kept (records are passed through as jv objects). */
#ifndef USBX_JSONL_H
#define USBX_JSONL_H
#include <stdbool.h>
#include <stdio.h>
#include <jv.h>

typedef struct usbx_jsonl usbx_jsonl;

/* path NULL or "-" reads stdin (named "<stdin>" in messages).  NULL with errno on failure. */
usbx_jsonl *usbx_jsonl_open(const char *path);
/* Reads the next record.  Returns 1 and sets *rec (caller owns it) on success, 0 at end of
 * input, -1 on a malformed line (not JSON, not an object, invalid UTF-8, I/O error); then
 * usbx_jsonl_error() gives "<file>:<line>: <what>" and reading can continue with the next line.
 * Blank lines are skipped. */
int usbx_jsonl_next(usbx_jsonl *r, jv *rec);
const char *usbx_jsonl_error(const usbx_jsonl *r);
const char *usbx_jsonl_name(const usbx_jsonl *r);
long usbx_jsonl_line(const usbx_jsonl *r);     /* line number of the last record/error */
/* True if the last line read had no terminating newline (a truncated tail). */
bool usbx_jsonl_last_unterminated(const usbx_jsonl *r);
void usbx_jsonl_close(usbx_jsonl *r);

/* Writes rec (consumed) as one compact line + '\n' and flushes.  0 ok, -1 on I/O error. */
int usbx_jsonl_write(FILE *f, jv rec);
/* Compact serialisation without the newline; caller frees. */
char *usbx_jv_dump(jv v);   /* does not consume v */

/* Field access helpers; none consumes obj.  str returns a pointer valid while obj lives, or
 * NULL when absent / not a string. */
const char *usbx_jv_str(jv obj, const char *key);
bool usbx_jv_num(jv obj, const char *key, double *out);
bool usbx_jv_has(jv obj, const char *key);
/* Set helpers; consume obj, return the new object. */
jv usbx_jv_set_str(jv obj, const char *key, const char *val);
jv usbx_jv_set_num(jv obj, const char *key, double val);

#endif
