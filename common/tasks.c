/* tasks.c — see tasks.h. */
#include "tasks.h"
#include "jsonl.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *usbx_task_kind_from_name(const char *name) {
  if (strstr(name, "mapping")) return "mapping";
  if (strstr(name, "math")) return "math";
  return "knowledge";
}

char *usbx_path_stem(const char *path) {
  const char *b = strrchr(path, '/');
  b = b ? b + 1 : path;
  char *s = xstrdup(b);
  size_t n = strlen(s);
  if (n > 6 && strcmp(s + n - 6, ".jsonl") == 0) s[n - 6] = 0;
  else if (n > 5 && strcmp(s + n - 5, ".json") == 0) s[n - 5] = 0;
  return s;
}

/* A JSON value as an id string: strings as they are, integers printed. */
static char *id_string(jv v) {
  if (jv_get_kind(v) == JV_KIND_STRING) return xstrdup(jv_string_value(v));
  if (jv_get_kind(v) == JV_KIND_NUMBER) {
    double d = jv_number_value(v);
    if (d == (double)(long long)d) return xasprintf("%lld", (long long)d);
    return xasprintf("%g", d);
  }
  return NULL;
}


static jv field(jv o, const char *k) { return jv_object_get(jv_copy(o), jv_string(k)); }

/* A task from an upstream record: a copy with id, task, prompt, answer (from "Answer") and,
 * for mapping, group. */
static jv upstream_task(jv rec, const char *id, const char *task, const char *prompt, const char *group) {
  jv t = jv_copy(rec);
  t = usbx_jv_set_str(t, "id", id);
  if (group) t = usbx_jv_set_str(t, "group", group);
  t = usbx_jv_set_str(t, "task", task);
  t = usbx_jv_set_str(t, "prompt", prompt);
  jv ans = field(rec, "Answer");
  if (jv_get_kind(ans) == JV_KIND_STRING) t = jv_object_set(t, jv_string("answer"), ans); else jv_free(ans);
  return t;
}

jv usbx_task_normalize(jv rec, const char *kind) {
  jv out = jv_array();
  const char *task = usbx_jv_str(rec, "task");
  char *task_s = xstrdup(task ? task : kind);
  if (usbx_jv_has(rec, "prompt")) {
    jv id = field(rec, "id");
    char *ids = id_string(id);
    jv_free(id);
    if (!ids) { jv_free(rec); jv_free(out); free(task_s); return jv_invalid_with_msg(jv_string("record has no \"id\" (string or number)")); }
    if (!usbx_jv_str(rec, "prompt")) { jv_free(rec); jv_free(out); free(ids); free(task_s); return jv_invalid_with_msg(jv_string("\"prompt\" is not a string")); }
    rec = usbx_jv_set_str(rec, "id", ids);
    rec = usbx_jv_set_str(rec, "task", task_s);
    out = jv_array_append(out, rec);
    free(ids);
  } else if (usbx_jv_has(rec, "Question_A") || usbx_jv_has(rec, "Question_B")) {
    /* upstream mapping: ID + Question_A / Question_B; images are named <ID>_A / <ID>_B */
    jv idv = field(rec, "ID");
    char *gid = id_string(idv);
    jv_free(idv);
    if (!gid) { jv_free(rec); jv_free(out); free(task_s); return jv_invalid_with_msg(jv_string("mapping record has no \"ID\"")); }
    const char *keys[] = {"Question_A", "Question_B"}, *suffix[] = {"A", "B"};
    for (int i = 0; i < 2; i++) {
      const char *q = usbx_jv_str(rec, keys[i]);
      if (!q) continue;
      char *id = xasprintf("%s_%s", gid, suffix[i]);
      out = jv_array_append(out, upstream_task(rec, id, task_s, q, gid));
      free(id);
    }
    jv_free(rec);
    free(gid);
  } else if (usbx_jv_has(rec, "Question")) {
    /* upstream math ({Question, Answer, id}) and knowledge ({ID, Question, Answer}) */
    jv idv = usbx_jv_has(rec, "id") ? field(rec, "id") : field(rec, "ID");
    char *ids = id_string(idv);
    jv_free(idv);
    const char *q = usbx_jv_str(rec, "Question");
    if (!ids || !q) { free(ids); jv_free(rec); jv_free(out); free(task_s); return jv_invalid_with_msg(jv_string("record has no usable \"id\"/\"ID\" or \"Question\"")); }
    out = jv_array_append(out, upstream_task(rec, ids, task_s, q, NULL));
    jv_free(rec);
    free(ids);
  } else {
    jv_free(rec); jv_free(out); free(task_s);
    return jv_invalid_with_msg(jv_string("not a task record: no \"prompt\", \"Question\" or \"Question_A\"/\"Question_B\""));
  }
  free(task_s);
  return out;
}
