/* helper_sandbox_judge — judges a JSONL of generation records (task, image, answer) with the
 * offline sandbox judge (usbx_sandbox_judge) and writes verdict records, like
 * `usbx-judge --backend sandbox` will once it is wired to this function.  Used by the tests and
 * by pipelines/eval.sh (JUDGE=...) until then. */
#include "jsonl.h"
#include "sandbox.h"
#include "util.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  usbx_set_progname("helper_sandbox_judge");
  usbx_jsonl *r = usbx_jsonl_open(argc > 1 ? argv[1] : NULL);
  if (!r) usbx_die("%s: cannot open: %s", argc > 1 ? argv[1] : "<stdin>", strerror(errno));
  int status = 0;
  for (;;) {
    jv rec;
    int rc = usbx_jsonl_next(r, &rec);
    if (rc == 0) break;
    if (rc < 0) { usbx_err("%s", usbx_jsonl_error(r)); status = 1; break; }
    const char *task = usbx_jv_str(rec, "task");
    if (!task) task = (usbx_jv_has(rec, "Question_A") || usbx_jv_has(rec, "Question_B")) ? "mapping" : "math";
    const char *image = usbx_jv_str(rec, "image");
    const char *answer = usbx_jv_str(rec, "answer");
    if (!answer) answer = usbx_jv_str(rec, "Answer");
    if (!answer) { usbx_err("%s:%ld: no answer", usbx_jsonl_name(r), usbx_jsonl_line(r)); jv_free(rec); status = 1; break; }
    char *caption = NULL, *analysis = NULL, err[256];
    int yes = 0;
    int j = usbx_sandbox_judge(task, image ? image : "", answer, &caption, &analysis, &yes, err, sizeof err);
    const char *verdict = j == 0 ? (yes ? "YES" : "NO") : (image && usbx_file_exists(image) ? "ERROR" : "IMAGE_NOT_FOUND");
    if (j < 0) { usbx_err("%s", err); jv_free(rec); status = 1; break; }
    rec = usbx_jv_set_str(rec, "verdict", verdict);
    rec = usbx_jv_set_num(rec, "score", yes ? 1 : 0);
    rec = usbx_jv_set_str(rec, "caption", caption);
    rec = usbx_jv_set_str(rec, "judge", "sandbox");
    rec = usbx_jv_set_str(rec, "analysis", analysis);
    free(caption);
    free(analysis);
    if (usbx_jsonl_write(stdout, rec)) { usbx_err("<stdout>: write failed"); status = 1; break; }
  }
  usbx_jsonl_close(r);
  return status;
}
