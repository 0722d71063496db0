/* usbx-reject — STARS rejection sampling: verdict records in, text-to-image training records
 * (prompt + accepted image) out. */
#include "cli.h"
#include "jsonl.h"
#include "util.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *USAGE = "usbx-reject [--modes think] [--per-prompt K] [--rejected FILE] [FILE...] < verdicts.jsonl > train.jsonl";
static const char *DESC =
  "Keeps the images the judge accepted (verdict YES) and writes one training record per image:\n"
  "`prompt` is the task's original prompt (no system prompt, no think text) and `image` the accepted\n"
  "image; the other fields are kept as provenance (the think text is dropped).  By default only\n"
  "think-mode verdicts are used.  A record whose image file does not exist is never emitted.\n"
  "A stats record (accept rates per task, level and mode) goes to stderr at the end.";

static const char *o_modes = "think", *o_rejected;
static long o_per_prompt = 0;
static bool o_keep_going, o_quiet, o_progress;

static const usbx_opt opts[] = {
  {"modes", USBX_OPT_STR, &o_modes, "LIST", "generation modes to accept from: normal,think or all [think]", false},
  {"per-prompt", USBX_OPT_INT, &o_per_prompt, "K", "at most K accepted images per task (0 = no limit) [0]", false},
  {"rejected", USBX_OPT_STR, &o_rejected, "FILE", "write the records not kept (with reject_reason) to FILE", false},
  {"keep-going", USBX_OPT_FLAG, &o_keep_going, NULL, "skip and count malformed input lines instead of stopping", false},
  {"quiet", USBX_OPT_FLAG, &o_quiet, NULL, "no stats record on stderr", false},
  {"progress", USBX_OPT_FLAG, &o_progress, NULL, "show a progress line on stderr", false},
  {NULL, 0, NULL, NULL, NULL, false},
};

static bool mode_ok(const char *mode) {
  if (!strcmp(o_modes, "all")) return true;
  if (!mode) return false;
  size_t n = strlen(mode);
  for (const char *p = o_modes; *p;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && !strncmp(p, mode, n)) return true;
    if (!e) break;
    p = e + 1;
  }
  return false;
}

/* stats: key -> [seen, accepted] */
static void bump(jv *stats, const char *dim, const char *key, int accepted) {
  jv d = jv_object_get(jv_copy(*stats), jv_string(dim));
  if (!jv_is_valid(d)) { jv_free(d); d = jv_object(); }
  jv e = jv_object_get(jv_copy(d), jv_string(key));
  double seen = 0, acc = 0;
  if (jv_is_valid(e) && jv_get_kind(e) == JV_KIND_OBJECT) {
    usbx_jv_num(e, "n", &seen);
    usbx_jv_num(e, "accepted", &acc);
  }
  jv_free(e);
  seen += 1;
  acc += accepted;
  jv o = jv_object();
  o = usbx_jv_set_num(o, "n", seen);
  o = usbx_jv_set_num(o, "accepted", acc);
  o = usbx_jv_set_num(o, "rate", acc / seen);
  d = jv_object_set(d, jv_string(key), o);
  *stats = jv_object_set(*stats, jv_string(dim), d);
}

static const char *prompt_of(jv rec) {
  const char *p = usbx_jv_str(rec, "prompt");
  if (!p) p = usbx_jv_str(rec, "Question");
  if (!p) p = usbx_jv_str(rec, "Question_A");
  if (!p) p = usbx_jv_str(rec, "Question_B");
  return p;
}

int main(int argc, char **argv) {
  usbx_set_progname("usbx-reject");
  char **pos = NULL;
  int npos = 0;
  usbx_cli_parse(argc, argv, opts, USAGE, DESC, &pos, &npos);
  if (o_per_prompt < 0) usbx_usage_die("--per-prompt must be >= 0");
  usbx_atomic rej = {0};
  if (o_rejected && usbx_atomic_open(&rej, o_rejected)) usbx_die("%s: cannot create: %s", o_rejected, strerror(errno));
  jv counts = jv_object();   /* task key -> accepted so far */
  jv stats = jv_object();
  long total = 0, accepted = 0, bad = 0, missing = 0, limited = 0;
  int status = 0;
  usbx_progress prog;
  usbx_progress_init(&prog, o_progress, 0, "verdicts");
  int nin = npos ? npos : 1;
  for (int fi = 0; fi < nin && !status; fi++) {
    const char *path = npos ? pos[fi] : NULL;
    usbx_jsonl *r = usbx_jsonl_open(path);
    if (!r) { usbx_err("%s: cannot open: %s", path ? path : "<stdin>", strerror(errno)); status = 1; break; }
    for (;;) {
      jv rec;
      int rc = usbx_jsonl_next(r, &rec);
      if (rc == 0) break;
      if (rc < 0) {
        usbx_err("%s", usbx_jsonl_error(r));
        bad++;
        if (o_keep_going) continue;
        status = 1;
        break;
      }
      const char *verdict = usbx_jv_str(rec, "verdict");
      const char *prompt = prompt_of(rec);
      const char *image = usbx_jv_str(rec, "image");
      if (!verdict || !prompt) {
        usbx_err("%s:%ld: not a verdict record (needs verdict and prompt)", usbx_jsonl_name(r), usbx_jsonl_line(r));
        jv_free(rec);
        bad++;
        if (o_keep_going) continue;
        status = 1;
        break;
      }
      total++;
      const char *task = usbx_jv_str(rec, "task");
      const char *mode = usbx_jv_str(rec, "mode");
      double lv;
      char level[32] = "-";
      if (usbx_jv_num(rec, "level", &lv)) snprintf(level, sizeof level, "%g", lv);
      else if (usbx_jv_str(rec, "level")) snprintf(level, sizeof level, "%s", usbx_jv_str(rec, "level"));
      /* the task: usbx-gen names the k-th sample of task ID "ID-s<k>" (and sets `sample`) */
      const char *id = usbx_jv_str(rec, "id");
      char keybuf[512];
      snprintf(keybuf, sizeof keybuf, "%s", id ? id : prompt);
      double sample;
      if (id && usbx_jv_num(rec, "sample", &sample)) {
        char suffix[48];
        snprintf(suffix, sizeof suffix, "-s%.0f", sample);
        size_t kl = strlen(keybuf), sl = strlen(suffix);
        if (kl > sl && !strcmp(keybuf + kl - sl, suffix)) keybuf[kl - sl] = 0;
      }
      const char *key = keybuf;
      const char *reason = NULL;
      if (!mode_ok(mode)) reason = "mode not accepted";
      else if (strcmp(verdict, "YES")) reason = "verdict is not YES";
      else if (!image || !usbx_file_exists(image)) { reason = "image not found"; missing++; }
      else if (o_per_prompt > 0) {
        double c = 0;
        jv v = jv_object_get(jv_copy(counts), jv_string(key));
        if (jv_get_kind(v) == JV_KIND_NUMBER) c = jv_number_value(v);
        jv_free(v);
        if (c >= (double)o_per_prompt) { reason = "per-prompt limit reached"; limited++; }
        else counts = jv_object_set(counts, jv_string(key), jv_number(c + 1));
      }
      int ok = reason == NULL;
      if (mode_ok(mode)) {   /* rates over the modes considered */
        char combo[160];
        snprintf(combo, sizeof combo, "%s/%s/%s", task ? task : "-", level, mode ? mode : "-");
        bump(&stats, "task", task ? task : "-", ok);
        bump(&stats, "level", level, ok);
        bump(&stats, "mode", mode ? mode : "-", ok);
        bump(&stats, "task/level/mode", combo, ok);
      }
      if (ok) {
        accepted++;
        jv out = jv_copy(rec);
        out = jv_object_delete(out, jv_string("think"));
        out = jv_object_delete(out, jv_string("system_prompt"));
        out = jv_object_delete(out, jv_string("system"));
        out = usbx_jv_set_str(out, "prompt", prompt);
        out = usbx_jv_set_str(out, "image", image);
        if (usbx_jsonl_write(stdout, out)) { usbx_err("<stdout>: write failed: %s", strerror(errno)); status = 1; jv_free(rec); break; }
      } else if (o_rejected) {
        jv out = usbx_jv_set_str(jv_copy(rec), "reject_reason", reason);
        usbx_jsonl_write(rej.f, out);
      }
      jv_free(rec);
      usbx_progress_tick(&prog, 1);
    }
    usbx_jsonl_close(r);
  }
  usbx_progress_done(&prog);
  if (o_rejected) {
    if (status) usbx_atomic_abort(&rej);
    else if (usbx_atomic_commit(&rej)) { usbx_err("%s: cannot write: %s", o_rejected, strerror(errno)); status = 1; }
  }
  if (!o_quiet) {
    jv s = jv_object();
    s = usbx_jv_set_str(s, "stats", "usbx-reject");
    s = usbx_jv_set_num(s, "verdicts", (double)total);
    s = usbx_jv_set_num(s, "accepted", (double)accepted);
    s = usbx_jv_set_num(s, "accept_rate", total ? (double)accepted / (double)total : 0);
    s = usbx_jv_set_num(s, "image_not_found", (double)missing);
    s = usbx_jv_set_num(s, "over_per_prompt", (double)limited);
    s = usbx_jv_set_num(s, "bad_lines", (double)bad);
    s = usbx_jv_set_str(s, "modes", o_modes);
    jv_object_foreach(stats, k, v) {
      const char *name = jv_string_value(k);
      char *field = xasprintf("by_%s", !strcmp(name, "task/level/mode") ? "task_level_mode" : name);
      s = jv_object_set(s, jv_string(field), v);
      free(field);
      jv_free(k);
    }
    char *txt = usbx_jv_dump(s);
    fflush(stdout);
    fprintf(stderr, "%s\n", txt);
    free(txt);
    jv_free(s);
  }
  jv_free(stats);
  jv_free(counts);
  free(pos);
  return status ? 1 : (bad && !o_keep_going ? 1 : 0);
}
