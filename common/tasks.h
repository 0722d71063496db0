/* tasks.h — task records: the project's own form and the upstream UniSandBox benchmark forms
 * (design.md), normalised to {id, task, prompt, answer, [group]} with other fields kept. */
#ifndef USBX_TASKS_H
#define USBX_TASKS_H
#include <jv.h>

/* The task kind upstream derives from a file name: "mapping" if it contains mapping, "math" if
 * it contains math, otherwise "knowledge". */
const char *usbx_task_kind_from_name(const char *name);
/* Stem of a path: base name without ".jsonl" (or ".json"). Caller frees. */
char *usbx_path_stem(const char *path);

/* Normalises one input record (consumed).  Returns an array of task objects (an upstream mapping
 * line can carry both Question_A and Question_B), or jv_invalid with a message.  kind: the task
 * kind to use when the record has no "task" field (from the file name or --task). */
jv usbx_task_normalize(jv rec, const char *kind);

#endif
