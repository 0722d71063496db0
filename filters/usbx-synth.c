/* usbx-synth — makes UniSandbox tasks (math, mapping, knowledge) deterministically with verified
 * answers, renders their ground-truth sandbox images, and checks any task file's answers. */
#include "cli.h"
#include "jsonl.h"
#include "render.h"
#include "synth.h"
#include "util.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *USAGE =
  "usbx-synth math|mapping --level 1|2|3 [--n N] [--seed S] [--exclude FILE] [--render DIR]\n"
  "       usbx-synth knowledge --characters N [--seed S] [--train FILE] [--profiles FILE] [--render DIR]\n"
  "       usbx-synth scenes --n N --render DIR [--seed S] [--max-count K]\n"
  "       usbx-synth render --render DIR < tasks.jsonl\n"
  "       usbx-synth check [--knowledge CONVERSATIONS[,...]] FILE...";
static const char *DESC =
  "Writes task records (id, task, level, group, prompt, answer) as JSONL on stdout.  Every answer is\n"
  "computed and re-verified by parsing the emitted prompt.  --render DIR draws the correct sandbox\n"
  "image of each task into DIR/<id>.png and adds its path as `image`.  `check` verifies the answers\n"
  "of task files (ours or upstream) and writes one record per wrong, undefined or unparseable item;\n"
  "it exits 1 when there is any.";

static long o_level = 1, o_n = 100, o_seed = 0, o_chars = 10, o_size = USBX_RENDER_DEFAULT, o_maxcount = 5;
static const char *o_exclude, *o_render, *o_prefix, *o_train, *o_profiles, *o_emit = "tasks", *o_knowledge;
static bool o_overwrite, o_quiet, o_keep_going;
static long n_unrendered;

static const usbx_opt opts[] = {
  {"level", USBX_OPT_INT, &o_level, "L", "difficulty: 1, 2 or 3 (math, mapping)", false},
  {"n", USBX_OPT_INT, &o_n, "N", "number of tasks (mapping: A/B groups; scenes: images) [100]", false},
  {"seed", USBX_OPT_INT, &o_seed, "S", "random seed [0]", false},
  {"prefix", USBX_OPT_STR, &o_prefix, "P", "id prefix [math<L>, mapping<L>, knowledge, scene]", false},
  {"exclude", USBX_OPT_STR, &o_exclude, "FILE[,FILE]", "never emit a prompt that appears in these task files", false},
  {"render", USBX_OPT_STR, &o_render, "DIR", "draw each task's correct image into DIR/<id>.png, add `image`", false},
  {"size", USBX_OPT_INT, &o_size, "PX", "rendered image side, >= 64 [128]", false},
  {"overwrite", USBX_OPT_FLAG, &o_overwrite, NULL, "re-render images that already exist", false},
  {"characters", USBX_OPT_INT, &o_chars, "N", "knowledge: number of characters [10]", false},
  {"train", USBX_OPT_STR, &o_train, "FILE", "knowledge: write the fine-tuning conversations to FILE", false},
  {"profiles", USBX_OPT_STR, &o_profiles, "FILE", "knowledge: write the character profiles to FILE", false},
  {"emit", USBX_OPT_STR, &o_emit, "WHAT", "knowledge: what goes to stdout: tasks, train or profiles [tasks]", false},
  {"max-count", USBX_OPT_INT, &o_maxcount, "K", "scenes: counts 1..K [5]", false},
  {"knowledge", USBX_OPT_STR, &o_knowledge, "FILE[,FILE]", "check: conversation or profile files defining the characters of knowledge tasks", false},
  {"quiet", USBX_OPT_FLAG, &o_quiet, NULL, "check: no summary on stderr", false},
  {"keep-going", USBX_OPT_FLAG, &o_keep_going, NULL, "render: pass a task whose answer cannot be drawn on without `image` (counted)", false},
  {NULL, 0, NULL, NULL, NULL, false},
};

static void add_prompts(jv *set, const char *path) {
  usbx_jsonl *r = usbx_jsonl_open(path);
  if (!r) usbx_die("%s: cannot open: %s", path, strerror(errno));
  for (;;) {
    jv rec;
    int rc = usbx_jsonl_next(r, &rec);
    if (rc == 0) break;
    if (rc < 0) usbx_die("%s", usbx_jsonl_error(r));
    static const char *const keys[] = {"prompt", "Question", "Question_A", "Question_B"};
    for (int i = 0; i < 4; i++) {
      const char *p = usbx_jv_str(rec, keys[i]);
      if (p) *set = jv_object_set(*set, jv_string(p), jv_true());
    }
    jv_free(rec);
  }
  usbx_jsonl_close(r);
}

static jv load_exclude(void) {
  if (!o_exclude) return jv_invalid();
  jv set = jv_object();
  char *list = xstrdup(o_exclude), *save = NULL;
  for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) add_prompts(&set, t);
  free(list);
  return set;
}

static char *image_path(const char *dir, const char *id) {
  char *safe = xstrdup(id);
  for (char *p = safe; *p; p++) if (*p == '/' || *p == ' ') *p = '_';
  char *f = xasprintf("%s.png", safe);
  char *path = usbx_path_join(dir, f);
  free(f); free(safe);
  return path;
}

/* renders rec (when --render) and writes it */
static jv with_image(jv rec) {
  if (!o_render) return rec;
  const char *id = usbx_jv_str(rec, "id");
  char *idbuf = NULL;
  if (!id) {
    jv v = jv_object_get(jv_copy(rec), jv_string("ID"));
    if (jv_get_kind(v) == JV_KIND_NUMBER) idbuf = xasprintf("%.17g", jv_number_value(v));
    else if (jv_get_kind(v) == JV_KIND_STRING) idbuf = xstrdup(jv_string_value(v));
    jv_free(v);
    if (!idbuf) usbx_die("record without id");
    if (usbx_jv_has(rec, "Question_A") || usbx_jv_has(rec, "Question_B")) {
      char *x = xasprintf("%s_%c", idbuf, usbx_jv_has(rec, "Question_A") ? 'A' : 'B');
      free(idbuf);
      idbuf = x;
    }
    id = idbuf;
  }
  char *path = image_path(o_render, id);
  if (o_overwrite || !usbx_file_exists(path)) {
    char err[256];
    uint64_t s = usbx_hash64(id, strlen(id), (uint64_t)o_seed * 0x9e3779b97f4a7c15ULL + 7);
    if (usbx_render_task(rec, path, (int)o_size, s, err, sizeof err)) {
      if (!o_keep_going) usbx_die("%s: %s", id, err);
      usbx_err("%s: %s (no image)", id, err);
      n_unrendered++;
      free(path);
      free(idbuf);
      return rec;
    }
  }
  rec = usbx_jv_set_str(rec, "image", path);
  free(path);
  free(idbuf);
  return rec;
}

static void emit_array(jv arr) {
  jv_array_foreach(arr, i, rec) {
    rec = with_image(rec);
    if (usbx_jsonl_write(stdout, rec)) usbx_die("<stdout>: write failed: %s", strerror(errno));
  }
  jv_free(arr);
}

static void write_array_file(const char *path, jv arr) {
  usbx_atomic a;
  if (usbx_atomic_open(&a, path)) usbx_die("%s: cannot create: %s", path, strerror(errno));
  jv_array_foreach(arr, i, rec) usbx_jsonl_write(a.f, rec);
  if (usbx_atomic_commit(&a)) usbx_die("%s: cannot write: %s", path, strerror(errno));
}

static int cmd_check(char **files, int nfiles) {
  if (nfiles == 0) usbx_usage_die("check: name at least one task file");
  int any = 0;
  usbx_profiles *prof = NULL;
  if (o_knowledge) {
    char *list = xstrdup(o_knowledge), *save = NULL;
    const char *paths[256];
    int np = 0;
    for (char *t = strtok_r(list, ",", &save); t && np < 256; t = strtok_r(NULL, ",", &save)) paths[np++] = t;
    char err[512];
    prof = usbx_profiles_load(paths, np, err, sizeof err);
    if (!prof) usbx_die("%s", err);
    free(list);
  }
  for (int i = 0; i < nfiles; i++) {
    long items = 0, probs = 0, skipped = 0;
    char err[512];
    int rc = usbx_check_file(files[i], prof, stdout, &items, &probs, &skipped, err, sizeof err);
    if (rc < 0) usbx_die("%s", err);
    if (rc > 0) any = 1;
    if (!o_quiet) {
      char extra[128] = "";
      if (skipped) snprintf(extra, sizeof extra, ", %ld not checked (knowledge without --knowledge, free)", skipped);
      usbx_err("%s: %ld items checked, %ld with problems%s", files[i], items, probs, extra);
    }
  }
  usbx_profiles_free(prof);
  return any;
}

int main(int argc, char **argv) {
  usbx_set_progname("usbx-synth");
  char **pos = NULL;
  int npos = 0;
  usbx_cli_parse(argc, argv, opts, USAGE, DESC, &pos, &npos);
  if (npos < 1) usbx_usage_die("name a command: math, mapping, knowledge, scenes, render or check");
  const char *cmd = pos[0];
  if (o_size < USBX_RENDER_MIN || o_size > 4096) usbx_usage_die("--size must be between %d and 4096", USBX_RENDER_MIN);
  if (o_render && usbx_mkdirs(o_render)) usbx_die("%s: cannot create: %s", o_render, strerror(errno));
  char err[512];
  int status = 0;
  if (!strcmp(cmd, "check")) {
    status = cmd_check(pos + 1, npos - 1);
  } else if (!strcmp(cmd, "math") || !strcmp(cmd, "mapping")) {
    if (o_level < 1 || o_level > 3) usbx_usage_die("--level must be 1, 2 or 3");
    if (o_n < 0 || o_n > 1000000) usbx_usage_die("--n out of range");
    jv ex = load_exclude();
    jv out = jv_array();
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s%ld", cmd, o_level);
    int rc = !strcmp(cmd, "math")
               ? usbx_synth_math((int)o_level, (int)o_n, (uint64_t)o_seed, o_prefix ? o_prefix : prefix, ex, &out, err, sizeof err)
               : usbx_synth_mapping((int)o_level, (int)o_n, (uint64_t)o_seed, o_prefix ? o_prefix : prefix, ex, &out, err, sizeof err);
    jv_free(ex);
    if (rc) { jv_free(out); usbx_die("%s", err); }
    emit_array(out);
  } else if (!strcmp(cmd, "knowledge")) {
    if (o_chars < 1 || o_chars > 10000) usbx_usage_die("--characters out of range");
    jv ex = load_exclude();
    jv tasks = jv_array(), train = jv_array(), profiles = jv_array();
    int rc = usbx_synth_knowledge((int)o_chars, (uint64_t)o_seed, o_prefix ? o_prefix : "knowledge", ex, &tasks, &train,
                                  &profiles, err, sizeof err);
    jv_free(ex);
    if (rc) usbx_die("%s", err);
    if (o_train) write_array_file(o_train, jv_copy(train));
    if (o_profiles) write_array_file(o_profiles, jv_copy(profiles));
    if (!strcmp(o_emit, "tasks")) { emit_array(tasks); jv_free(train); jv_free(profiles); }
    else if (!strcmp(o_emit, "train")) { o_render = NULL; emit_array(train); jv_free(tasks); jv_free(profiles); }
    else if (!strcmp(o_emit, "profiles")) { o_render = NULL; emit_array(profiles); jv_free(tasks); jv_free(train); }
    else usbx_usage_die("--emit must be tasks, train or profiles");
  } else if (!strcmp(cmd, "scenes")) {
    if (!o_render) usbx_usage_die("scenes: --render DIR is required");
    if (o_maxcount < 1 || o_maxcount > 9) usbx_usage_die("--max-count must be 1..9");
    usbx_rng r;
    usbx_rng_seed(&r, usbx_hash64("scenes", 6, (uint64_t)o_seed));
    for (long i = 0; i < o_n; i++) {
      int obj = (int)usbx_rng_below(&r, (uint64_t)usbx_nobjects);
      int cnt = 1 + (int)usbx_rng_below(&r, (uint64_t)o_maxcount);
      char *ph = usbx_count_phrase(cnt, obj);
      char *id = xasprintf("%s-%ld", o_prefix ? o_prefix : "scene", i + 1);
      jv rec = jv_object();
      rec = usbx_jv_set_str(rec, "id", id);
      rec = usbx_jv_set_str(rec, "task", "free");
      rec = usbx_jv_set_str(rec, "prompt", ph);
      rec = usbx_jv_set_str(rec, "answer", ph);
      rec = usbx_jv_set_num(rec, "count", cnt);
      rec = usbx_jv_set_str(rec, "object", usbx_objects[obj].sing);
      rec = with_image(rec);
      if (usbx_jsonl_write(stdout, rec)) usbx_die("<stdout>: write failed");
      free(ph); free(id);
    }
  } else if (!strcmp(cmd, "render")) {
    if (!o_render) usbx_usage_die("render: --render DIR is required");
    usbx_jsonl *r = usbx_jsonl_open(npos > 1 ? pos[1] : NULL);
    if (!r) usbx_die("%s: cannot open: %s", npos > 1 ? pos[1] : "<stdin>", strerror(errno));
    for (;;) {
      jv rec;
      int rc = usbx_jsonl_next(r, &rec);
      if (rc == 0) break;
      if (rc < 0) usbx_die("%s", usbx_jsonl_error(r));
      rec = with_image(rec);
      if (usbx_jsonl_write(stdout, rec)) usbx_die("<stdout>: write failed");
    }
    usbx_jsonl_close(r);
  } else {
    usbx_usage_die("unknown command '%s'", cmd);
  }
  if (n_unrendered) usbx_err("%ld task%s could not be drawn (no image)", n_unrendered, n_unrendered == 1 ? "" : "s");
  free(pos);
  return status;
}
