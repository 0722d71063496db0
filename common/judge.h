/* judge.h — the UniSandbox judge protocol: prompt sets, template filling, reply handling,
 * verdicts, the backend interface, and the upstream-compatible CSV/log.
 *
 * Every image is judged in two stages (see ../shared/upstream/eval_prompts.json, "protocol"):
 *   stage 1: image + caption/identify prompt -> a strict caption ("3 apples", "Object: cup",
 *            "Person: ...", "Flower: rose", or "Error"/"Reject");
 *   stage 2: text-only evaluation prompt filled with the caption and the expected answer ->
 *            "Score: YES" or "Score: NO".
 * The reply handling (which caption is kept, which replies short-circuit stage 2, which replies
 * count as empty and are asked again) follows the upstream scripts per task. */
#ifndef USBX_JUDGE_H
#define USBX_JUDGE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include "util.h"

typedef enum { USBX_TASK_MATH = 0, USBX_TASK_MAPPING, USBX_TASK_KNOWLEDGE, USBX_TASK_N } usbx_task;
/* "math" / "mapping" / "knowledge" -> task; -1 for anything else. */
int usbx_task_parse(const char *s);
const char *usbx_task_name(usbx_task t);

typedef enum { USBX_V_YES = 0, USBX_V_NO, USBX_V_ERROR, USBX_V_NOT_FOUND } usbx_verdict;
const char *usbx_verdict_name(usbx_verdict v);   /* "YES", "NO", "ERROR", "IMAGE_NOT_FOUND" */
/* -1 when s is none of the four names. */
int usbx_verdict_parse(const char *s);

/* Upstream protocol constants. */
#define USBX_JUDGE_PROTO_ATTEMPTS 4   /* max_retries 3: at most 4 replies asked per stage */

/* A prompt set: the file format of eval_prompts.json ({"math":{"caption","evaluate"},
 * "mapping":{"identify","evaluate"},"knowledge":{"caption","evaluate"}, optional "protocol"}).
 * max_tokens come from protocol.<task>.stage1_*.request / stage2_evaluate.request when the file
 * has them, else the upstream values (10240/10240, 10240/10240, 2048/1024). */
typedef struct {
  char *stage1[USBX_TASK_N];     /* caption / identify prompt (sent as is) */
  char *stage2[USBX_TASK_N];     /* evaluation template (str.format fields) */
  int max_tokens1[USBX_TASK_N], max_tokens2[USBX_TASK_N];
  char *source;                  /* "builtin" or the file path */
} usbx_judge_prompts;

/* The project's own default prompt set (JSON text in the eval_prompts.json format). */
extern const char usbx_judge_default_prompts[];
/* 0 ok; -1 with a message in err ("<name>: math.evaluate: unknown field {foo}"). */
int usbx_judge_prompts_parse(usbx_judge_prompts *p, const char *json, size_t len, const char *name,
                             char *err, size_t errlen);
int usbx_judge_prompts_load(usbx_judge_prompts *p, const char *path, char *err, size_t errlen);
int usbx_judge_prompts_builtin(usbx_judge_prompts *p, char *err, size_t errlen);
void usbx_judge_prompts_free(usbx_judge_prompts *p);

/* Python str.format with named fields only: "{name}" is replaced by the value of that field,
 * "{{" and "}}" give literal braces; values are inserted verbatim (never re-interpreted).
 * Returns a malloc'd string, or NULL with a message in err (unknown field, lone brace,
 * format spec / conversion, positional field). */
char *usbx_pyformat(const char *tmpl, const char *const *names, const char *const *values, int n,
                    char *err, size_t errlen);
/* The stage-2 text for a task: the template filled as upstream fills it (math: caption,
 * expected_answer; mapping: identified_object, expected_answer; knowledge: caption, gt). */
char *usbx_judge_stage2_text(const usbx_judge_prompts *p, usbx_task t, const char *caption,
                             const char *answer, char *err, size_t errlen);

/* Python str.strip() (Unicode whitespace) and str.splitlines()[0] (all Python line breaks);
 * malloc'd results. */
char *usbx_py_strip(const char *s);
char *usbx_py_first_line(const char *s);

/* Stage-1 reply handling.  content: message.content (NULL when absent).
 * Returns  1: proceed to stage 2 with *caption (and *full = the text kept for Analysis),
 *          0: short-circuit (Error / Reject): the verdict is NO without a stage-2 request,
 *         -1: empty reply, ask again.  Outputs are malloc'd (only when >= 0). */
int usbx_judge_stage1(usbx_task t, const char *content, char **caption, char **full);
/* Stage-2 reply: 1 = "Score: YES", 0 = "Score: NO", -1 = empty or no score (ask again).
 * *eval_text (malloc'd, when >= 0) is the text quoted in Analysis. */
int usbx_judge_stage2(usbx_task t, const char *content, char **eval_text);

/* Analysis texts, as upstream writes them (malloc'd). */
char *usbx_judge_analysis(usbx_task t, const char *full, const char *caption, const char *answer,
                          const char *eval_text);
char *usbx_judge_analysis_short(usbx_task t, const char *full, const char *caption, const char *answer);
/* Stage failure (stage 1 or 2): upstream's Analysis text for that failure. */
char *usbx_judge_analysis_failed(usbx_task t, int stage, const char *caption);
#define USBX_JUDGE_NOT_FOUND_ANALYSIS "Image file not found"

/* ---- backends --------------------------------------------------------------------------- */

/* One image to judge.  The caller fills the inputs, the backend the outputs. */
typedef struct usbx_judge_item {
  usbx_task task;
  const char *image;          /* path of the PNG */
  const char *answer;         /* expected answer */
  void *user;                 /* caller's tag */
  /* outputs */
  usbx_verdict verdict;
  char *caption;              /* malloc'd; "" when stage 1 failed */
  char *analysis;             /* malloc'd */
  char *error;                /* malloc'd reason when verdict == ERROR, else NULL */
  int requests;               /* HTTP requests sent for this item (retries included) */
  /* backend-private state */
  int stage, proto_attempt;
  char *full;
  struct usbx_judge_item *next;
} usbx_judge_item;
void usbx_judge_item_clear(usbx_judge_item *it);   /* frees the outputs and private state */

/* A backend judges items; submit may finish an item at once (a synchronous backend) or start
 * requests; poll returns finished items (at most max, waiting up to wait_ms when none is ready).
 * capacity is how many items the caller should keep submitted at once. */
typedef struct usbx_judge_backend {
  const char *name;           /* "openai", "sandbox" */
  char *label;                /* the verdict's "judge" field, e.g. "openai:Qwen/Qwen2.5-VL-7B-Instruct" */
  int capacity;
  void *ctx;
  void (*submit)(struct usbx_judge_backend *b, usbx_judge_item *it);
  int (*poll)(struct usbx_judge_backend *b, usbx_judge_item **done, int max, int wait_ms);
  void (*wakeup)(struct usbx_judge_backend *b);    /* thread-safe: interrupts a waiting poll */
  void (*destroy)(struct usbx_judge_backend *b);
} usbx_judge_backend;

typedef struct {
  const char *url, *model, *api_key;
  int jobs;
  double timeout_s, retry_time_s;
  int retries;
  const usbx_judge_prompts *prompts;
} usbx_judge_openai_opts;
/* NULL with err on failure. */
usbx_judge_backend *usbx_judge_backend_openai(const usbx_judge_openai_opts *o, char *err, size_t errlen);

/* Adapter for a synchronous one-image judge (the offline sandbox judge, usbx_sandbox_judge):
 * fn returns 0 and sets caption/analysis (malloc'd) and *yes; 1 when the image cannot be judged
 * (analysis says why) or -1 with a reason in err: both give verdict ERROR. */
typedef int (*usbx_judge_sync_fn)(const char *task, const char *image_path, const char *expected_answer,
                                  char **caption, char **analysis, int *yes, char *err, size_t errlen);
usbx_judge_backend *usbx_judge_backend_sync(const char *name, const char *label, usbx_judge_sync_fn fn);

/* ---- upstream CSV and log ----------------------------------------------------------------- */

/* One row of an image folder's report. */
typedef struct {
  usbx_task task;
  char *id, *question, *answer, *image, *caption, *analysis, *group;
  usbx_verdict verdict;
  int score;
  int slot;                   /* mapping: 0 = A, 1 = B */
} usbx_judge_row;

/* Writes <dir>/evaluation_results.csv and <dir>/evaluation_results.log atomically from rows (in
 * the given order; mapping rows are paired per group into one CSV row per group, first
 * appearance order).  Returns 0, or -1 with err.  Also returns the log text in *log (malloc'd)
 * when log is not NULL.  duration_s is the math "Duration" line. */
int usbx_judge_write_report(const char *dir, usbx_task task, const usbx_judge_row *rows, size_t n,
                            double duration_s, char **log, char *err, size_t errlen);
/* Python csv (excel dialect) field quoting, appended to buf. */
void usbx_csv_field(usbx_buf *b, const char *s);
/* Python "{:.2%}" of correct/total (0 when total is 0), e.g. "66.67%". */
void usbx_judge_pct(char *out, size_t n, long correct, long total);

#endif
