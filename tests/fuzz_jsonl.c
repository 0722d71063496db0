/* fuzz_jsonl — libFuzzer target for the JSONL reader (usbx_jsonl_next on arbitrary bytes).
 * The input is put in a memfd and opened by its /proc path, so the real file path of
 * usbx_jsonl_open is exercised.  Invariants: every record is an object; every error message is
 * non-empty, names the file and line, and is one line.  Build and run: bash tests/fuzz.sh. */
#include "jsonl.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = memfd_create("fuzz_jsonl", MFD_CLOEXEC);
  if (fd < 0) abort();
  for (size_t o = 0; o < size;) {
    ssize_t k = write(fd, data + o, size - o);
    if (k <= 0) abort();
    o += (size_t)k;
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  usbx_jsonl *r = usbx_jsonl_open(path);
  if (!r) abort();
  jv rec;
  int rc, guard = 0;
  while ((rc = usbx_jsonl_next(r, &rec)) != 0) {
    if (rc > 0) {
      if (jv_get_kind(rec) != JV_KIND_OBJECT) abort();
      char *s = usbx_jv_dump(rec);   /* serialisation must work on whatever was parsed */
      free(s);
      jv_free(rec);
    } else {
      const char *e = usbx_jsonl_error(r);
      if (!e || strncmp(e, path, strlen(path)) != 0 || strchr(e, '\n')) abort();
    }
    if (++guard > 1000000) abort();   /* no endless loop */
  }
  usbx_jsonl_close(r);
  close(fd);
  return 0;
}
