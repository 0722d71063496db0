/* judge.c — prompt sets, template filling, reply handling, analysis texts and the upstream
 * CSV/log of the UniSandbox judge.  See judge.h; the behaviour follows the "protocol" section of
 * ../shared/upstream/eval_prompts.json. */
#include "judge.h"
#include "util.h"
#include <errno.h>
#include <jv.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *task_names[USBX_TASK_N] = {"math", "mapping", "knowledge"};
static const char *stage1_keys[USBX_TASK_N] = {"caption", "identify", "caption"};
static const char *stage1_proto[USBX_TASK_N] = {"stage1_caption", "stage1_identify", "stage1_caption"};
static const int default_max1[USBX_TASK_N] = {10240, 10240, 2048};
static const int default_max2[USBX_TASK_N] = {10240, 10240, 1024};
/* The str.format fields each evaluation template is filled with: caption-ish, answer. */
static const char *field_caption[USBX_TASK_N] = {"caption", "identified_object", "caption"};
static const char *field_answer[USBX_TASK_N] = {"expected_answer", "expected_answer", "gt"};

int usbx_task_parse(const char *s) {
  if (!s) return -1;
  for (int i = 0; i < USBX_TASK_N; i++) if (strcmp(s, task_names[i]) == 0) return i;
  return -1;
}
const char *usbx_task_name(usbx_task t) { return (unsigned)t < USBX_TASK_N ? task_names[t] : "?"; }

static const char *verdict_names[] = {"YES", "NO", "ERROR", "IMAGE_NOT_FOUND"};
const char *usbx_verdict_name(usbx_verdict v) { return (unsigned)v < 4 ? verdict_names[v] : "?"; }
int usbx_verdict_parse(const char *s) {
  if (!s) return -1;
  for (int i = 0; i < 4; i++) if (strcmp(s, verdict_names[i]) == 0) return i;
  return -1;
}

/* ---- Python string semantics ----------------------------------------------------------- */

/* Decodes one UTF-8 code point at s (valid or not: invalid bytes decode as themselves). */
static uint32_t u8_next(const unsigned char *s, size_t *len) {
  unsigned c = s[0];
  if (c < 0x80) { *len = 1; return c; }
  int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (n == 1) { *len = 1; return c; }
  uint32_t cp = c & (0x3F >> (n - 1));
  for (int k = 1; k < n; k++) {
    if ((s[k] & 0xC0) != 0x80) { *len = 1; return c; }
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  *len = (size_t)n;
  return cp;
}

/* str.isspace() */
static bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}
/* str.splitlines() boundaries */
static bool py_linebreak(uint32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

/* Byte range [*b, *e) of s stripped of Python whitespace. */
static void strip_range(const char *s, size_t n, size_t *b, size_t *e) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, last = 0, len;
  bool seen = false;
  size_t first = n;
  while (i < n) {
    uint32_t c = u8_next(u + i, &len);
    if (i + len > n) len = n - i;
    if (!py_space(c)) { if (!seen) { first = i; seen = true; } last = i + len; }
    i += len;
  }
  if (!seen) { *b = *e = 0; return; }
  *b = first; *e = last;
}

static char *xstrndup_(const char *s, size_t n) {
  char *p = xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *usbx_py_strip(const char *s) {
  size_t b, e;
  strip_range(s, strlen(s), &b, &e);
  return xstrndup_(s + b, e - b);
}

char *usbx_py_first_line(const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, len;
  while (u[i]) {
    uint32_t c = u8_next(u + i, &len);
    if (py_linebreak(c)) break;
    i += len;
  }
  return xstrndup_(s, i);
}

static bool is_error_word(const char *s) {   /* s.strip().upper() == "ERROR" */
  size_t b, e;
  strip_range(s, strlen(s), &b, &e);
  return e - b == 5 && strncasecmp(s + b, "error", 5) == 0;
}

/* re.search(r"Object:\s*(.+)", s): returns the group's byte range (Python semantics:
 * \s* is greedy and gives back whitespace until ".+" (no '\n') can match one character). */
static bool object_search(const char *s, size_t *gb, size_t *ge) {
  const unsigned char *u = (const unsigned char *)s;
  const char *p = s;
  while ((p = strstr(p, "Object:"))) {
    size_t ws0 = (size_t)(p - s) + 7, i = ws0, len;
    size_t cand[512];  /* start positions the regex may try, longest \s* first */
    int nc = 0;
    cand[nc++] = i;
    while (u[i]) {
      uint32_t c = u8_next(u + i, &len);
      if (!py_space(c)) break;
      i += len;
      if (nc < 512) cand[nc++] = i;
    }
    for (int k = nc - 1; k >= 0; k--) {
      size_t q = cand[k];
      if (!u[q] || u[q] == '\n') continue;
      size_t r = q;
      while (u[r] && u[r] != '\n') r++;
      *gb = q; *ge = r;
      return true;
    }
    p += 7;
  }
  return false;
}

/* Matches one letter of an IGNORECASE pattern at u; returns the bytes used or 0.  Python's
 * IGNORECASE also folds U+017F (long s) to 's'. */
static size_t ci_letter(const unsigned char *u, char want) {
  if (u[0] && (u[0] | 0x20) == (unsigned char)want) return 1;
  if (want == 's' && u[0] == 0xC5 && u[1] == 0xBF) return 2;
  return 0;
}
static size_t ci_word(const unsigned char *u, const char *w) {
  size_t i = 0;
  for (; *w; w++) {
    if (*w == ':') { if (u[i] != ':') return 0; i++; continue; }
    size_t n = ci_letter(u + i, *w);
    if (!n) return 0;
    i += n;
  }
  return i;
}

/* re.search(r"Score:\s*(YES|NO)", s, re.IGNORECASE): 1 YES, 0 NO, -1 no match. */
static int score_search(const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t p = 0; u[p]; p++) {
    size_t n = ci_word(u + p, "score:");
    if (!n) continue;
    size_t i = p + n, len;
    while (u[i]) {
      uint32_t c = u8_next(u + i, &len);
      if (!py_space(c)) break;
      i += len;
    }
    if (ci_word(u + i, "yes")) return 1;
    if (ci_word(u + i, "no")) return 0;
  }
  return -1;
}

/* ---- templates -------------------------------------------------------------------------- */

char *usbx_pyformat(const char *tmpl, const char *const *names, const char *const *values, int n,
                    char *err, size_t errlen) {
  usbx_buf b = {0};
  usbx_buf_append(&b, "", 0);
  for (const char *p = tmpl; *p;) {
    if (*p == '{') {
      if (p[1] == '{') { usbx_buf_append(&b, "{", 1); p += 2; continue; }
      const char *q = strchr(p + 1, '}');
      if (!q) { snprintf(err, errlen, "unmatched '{' in format string"); goto fail; }
      size_t len = (size_t)(q - p - 1);
      int hit = -1;
      for (int k = 0; k < n; k++)
        if (strlen(names[k]) == len && strncmp(names[k], p + 1, len) == 0) { hit = k; break; }
      if (hit < 0) {
        snprintf(err, errlen, "unknown field {%.*s} (allowed: %s%s%s)", (int)(len > 60 ? 60 : len), p + 1,
                 n > 0 ? names[0] : "", n > 1 ? ", " : "", n > 1 ? names[1] : "");
        goto fail;
      }
      usbx_buf_append(&b, values[hit], strlen(values[hit]));
      p = q + 1;
    } else if (*p == '}') {
      if (p[1] == '}') { usbx_buf_append(&b, "}", 1); p += 2; continue; }
      snprintf(err, errlen, "single '}' encountered in format string");
      goto fail;
    } else {
      const char *q = p;
      while (*q && *q != '{' && *q != '}') q++;
      usbx_buf_append(&b, p, (size_t)(q - p));
      p = q;
    }
  }
  return b.data;
fail:
  usbx_buf_free(&b);
  return NULL;
}

char *usbx_judge_stage2_text(const usbx_judge_prompts *p, usbx_task t, const char *caption,
                             const char *answer, char *err, size_t errlen) {
  const char *names[2] = {field_caption[t], field_answer[t]};
  const char *vals[2] = {caption, answer};
  return usbx_pyformat(p->stage2[t], names, vals, 2, err, errlen);
}

/* ---- prompt sets ------------------------------------------------------------------------ */

void usbx_judge_prompts_free(usbx_judge_prompts *p) {
  for (int t = 0; t < USBX_TASK_N; t++) { free(p->stage1[t]); free(p->stage2[t]); }
  free(p->source);
  memset(p, 0, sizeof *p);
}

static jv jget(jv v, const char *k) {   /* v[k] without consuming v; null when absent */
  if (jv_get_kind(v) != JV_KIND_OBJECT) return jv_null();
  return jv_object_get(jv_copy(v), jv_string(k));
}

/* protocol.<task>.<stage>.request.max_tokens, when the file has it */
static int proto_max_tokens(jv root, const char *task, const char *stage, int dflt, int *out,
                            char *err, size_t errlen, const char *name) {
  jv a = jget(root, "protocol"), b = jget(a, task), c = jget(b, stage), d = jget(c, "request"),
     e = jget(d, "max_tokens");
  int rc = 0;
  *out = dflt;
  if (jv_get_kind(e) == JV_KIND_NUMBER) {
    double x = jv_number_value(e);
    if (x < 1 || x > 1e7 || x != (double)(int)x) {
      snprintf(err, errlen, "%s: protocol.%s.%s.request.max_tokens: not a positive integer", name, task, stage);
      rc = -1;
    } else *out = (int)x;
  } else if (jv_get_kind(e) != JV_KIND_NULL) {
    snprintf(err, errlen, "%s: protocol.%s.%s.request.max_tokens: not a number", name, task, stage);
    rc = -1;
  }
  jv_free(a); jv_free(b); jv_free(c); jv_free(d); jv_free(e);
  return rc;
}

int usbx_judge_prompts_parse(usbx_judge_prompts *p, const char *json, size_t len, const char *name,
                             char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  if (len > 0x7fffffff) { snprintf(err, errlen, "%s: file too large", name); return -1; }
  jv root = jv_parse_sized(json, (int)len);
  if (!jv_is_valid(root)) {
    jv msg = jv_invalid_get_msg(root);
    snprintf(err, errlen, "%s: %s", name, jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "malformed JSON");
    jv_free(msg);
    return -1;
  }
  if (jv_get_kind(root) != JV_KIND_OBJECT) {
    snprintf(err, errlen, "%s: expected a JSON object", name);
    jv_free(root);
    return -1;
  }
  int rc = 0;
  for (int t = 0; t < USBX_TASK_N && rc == 0; t++) {
    jv tv = jget(root, task_names[t]);
    const char *keys[2] = {stage1_keys[t], "evaluate"};
    for (int s = 0; s < 2 && rc == 0; s++) {
      jv sv = jget(tv, keys[s]);
      if (jv_get_kind(sv) != JV_KIND_STRING || jv_string_length_bytes(jv_copy(sv)) == 0) {
        snprintf(err, errlen, "%s: %s.%s: missing or not a non-empty string", name, task_names[t], keys[s]);
        rc = -1;
      } else if (s == 0) {
        p->stage1[t] = xstrdup(jv_string_value(sv));
      } else {
        p->stage2[t] = xstrdup(jv_string_value(sv));
        char e2[256];
        char *probe = usbx_judge_stage2_text(p, (usbx_task)t, "x", "y", e2, sizeof e2);
        if (!probe) { snprintf(err, errlen, "%s: %s.evaluate: %s", name, task_names[t], e2); rc = -1; }
        free(probe);
      }
      jv_free(sv);
    }
    jv_free(tv);
    if (rc == 0) rc = proto_max_tokens(root, task_names[t], stage1_proto[t], default_max1[t], &p->max_tokens1[t], err, errlen, name);
    if (rc == 0) rc = proto_max_tokens(root, task_names[t], "stage2_evaluate", default_max2[t], &p->max_tokens2[t], err, errlen, name);
  }
  jv_free(root);
  if (rc != 0) { usbx_judge_prompts_free(p); return -1; }
  p->source = xstrdup(name);
  return 0;
}

int usbx_judge_prompts_load(usbx_judge_prompts *p, const char *path, char *err, size_t errlen) {
  size_t len;
  char *s = usbx_read_file(path, &len);
  if (!s) { snprintf(err, errlen, "%s: %s", path, strerror(errno)); memset(p, 0, sizeof *p); return -1; }
  int rc = usbx_judge_prompts_parse(p, s, len, path, err, errlen);
  free(s);
  return rc;
}

int usbx_judge_prompts_builtin(usbx_judge_prompts *p, char *err, size_t errlen) {
  return usbx_judge_prompts_parse(p, usbx_judge_default_prompts, strlen(usbx_judge_default_prompts), "builtin", err, errlen);
}

/* ---- reply handling --------------------------------------------------------------------- */

int usbx_judge_stage1(usbx_task t, const char *content, char **caption, char **full) {
  if (t == USBX_TASK_KNOWLEDGE) {
    char *text = usbx_py_strip(content ? content : "");
    if (!*text) { free(text); return -1; }
    char *line = usbx_py_first_line(text);
    *caption = usbx_py_strip(line);
    free(line);
    *full = text;
    return strcmp(*caption, "Reject") == 0 ? 0 : 1;
  }
  if (!content || !*content) return -1;
  *full = xstrdup(content);
  if (is_error_word(content)) { *caption = xstrdup("Error"); return 0; }
  char *text = usbx_py_strip(content);
  if (t == USBX_TASK_MATH) { *caption = text; return 1; }
  size_t gb, ge;
  if (object_search(text, &gb, &ge)) {
    char *g = xstrndup_(text + gb, ge - gb);
    *caption = usbx_py_strip(g);
    free(g);
    free(text);
  } else {
    *caption = text;
  }
  return is_error_word(*caption) ? 0 : 1;
}

int usbx_judge_stage2(usbx_task t, const char *content, char **eval_text) {
  if (!content || !*content) return -1;
  char *text = t == USBX_TASK_KNOWLEDGE ? usbx_py_strip(content) : xstrdup(content);
  if (!*text) { free(text); return -1; }
  int r = score_search(text);
  if (r < 0) { free(text); return -1; }
  *eval_text = text;
  return r;
}

char *usbx_judge_analysis(usbx_task t, const char *full, const char *caption, const char *answer,
                          const char *eval_text) {
  switch (t) {
  case USBX_TASK_MATH:
    return xasprintf("Phase 1 - Image Captioning:\n%s\n\nPhase 2 - Caption Evaluation:\nGenerated Caption: %s\n"
                     "Expected Answer: %s\n%s", full, caption, answer, eval_text);
  case USBX_TASK_MAPPING:
    return xasprintf("Phase 1 - Object Identification:\n%s\n\nPhase 2 - Object Evaluation:\nIdentified Object: %s\n"
                     "Expected Answer: %s\n%s", full, caption, answer, eval_text);
  default:
    return xasprintf("Phase 1 - Caption:\n%s\n\nPhase 2 - Evaluation:\nGenerated: %s\nGT: %s\n%s", full, caption,
                     answer, eval_text);
  }
}

char *usbx_judge_analysis_short(usbx_task t, const char *full, const char *caption, const char *answer) {
  switch (t) {
  case USBX_TASK_MATH: return xstrdup("Phase 1 - Image Captioning:\nModel returned 'Error', skipping Phase 2.");
  case USBX_TASK_MAPPING: return xstrdup("Phase 1 - Object Identification:\nModel returned 'Error', skipping Phase 2.");
  default: return usbx_judge_analysis(t, full, caption, answer, "Caption=Reject => automatic NO");
  }
}

char *usbx_judge_analysis_failed(usbx_task t, int stage, const char *caption) {
  switch (t) {
  case USBX_TASK_MATH:
    return stage == 1 ? xstrdup("Error: Failed to generate image caption")
                      : xasprintf("Error: Failed to evaluate caption match\nGenerated Caption: %s", caption);
  case USBX_TASK_MAPPING:
    return stage == 1 ? xstrdup("Error: Failed to identify object")
                      : xasprintf("Error: Failed to evaluate match\nIdentified Object: %s", caption);
  default:
    return xstrdup(stage == 1 ? "Error: caption failed" : "Error: eval failed");
  }
}

void usbx_judge_item_clear(usbx_judge_item *it) {
  free(it->caption); free(it->analysis); free(it->error); free(it->full);
  it->caption = it->analysis = it->error = it->full = NULL;
}

/* ---- CSV and log ------------------------------------------------------------------------ */

void usbx_csv_field(usbx_buf *b, const char *s) {
  if (!s) s = "";
  if (!strpbrk(s, ",\"\r\n")) { usbx_buf_append(b, s, strlen(s)); return; }
  usbx_buf_append(b, "\"", 1);
  for (const char *p = s; *p; p++) {
    if (*p == '"') usbx_buf_append(b, "\"\"", 2);
    else usbx_buf_append(b, p, 1);
  }
  usbx_buf_append(b, "\"", 1);
}

static void csv_row(usbx_buf *b, const char *const *f, int n) {
  for (int i = 0; i < n; i++) {
    if (i) usbx_buf_append(b, ",", 1);
    usbx_csv_field(b, f[i]);
  }
  usbx_buf_append(b, "\r\n", 2);
}

void usbx_judge_pct(char *out, size_t n, long correct, long total) {
  double x = total > 0 ? (double)correct / (double)total : 0.0;
  snprintf(out, n, "%.2f%%", x * 100.0);
}

static char *py_join(const char *dir, const char *name) {
  if (!*dir) return xstrdup(name);
  size_t n = strlen(dir);
  return dir[n - 1] == '/' ? xasprintf("%s%s", dir, name) : xasprintf("%s/%s", dir, name);
}

int usbx_judge_write_report(const char *dir, usbx_task task, const usbx_judge_row *rows, size_t n,
                            double duration_s, char **log, char *err, size_t errlen) {
  usbx_buf csv = {0};
  usbx_buf_append(&csv, "", 0);
  long processed = 0, correct = 0;
  char sc[2][16];
  if (task == USBX_TASK_MAPPING) {
    static const char *hdr[] = {"ID", "Question_A", "Answer_A", "Image_A_Path", "A_Result", "A_Score", "A_Analysis",
                                "Question_B", "Answer_B", "Image_B_Path", "B_Result", "B_Score", "B_Analysis",
                                "Both_Correct", "Final_Score"};
    csv_row(&csv, hdr, 15);
    /* groups in first-appearance order; a later row for the same slot replaces the earlier */
    const usbx_judge_row **slots = xcalloc(2 * (n ? n : 1), sizeof *slots);
    const char **gid = xcalloc(n ? n : 1, sizeof *gid);
    size_t ng = 0;
    for (size_t i = 0; i < n; i++) {
      const char *g = rows[i].group ? rows[i].group : rows[i].id;
      size_t k = 0;
      while (k < ng && strcmp(gid[k], g) != 0) k++;   /* folders hold at most a few hundred groups */
      if (k == ng) gid[ng++] = g;
      slots[2 * k + (rows[i].slot ? 1 : 0)] = &rows[i];
    }
    for (size_t k = 0; k < ng; k++) {
      const char *f[15];
      f[0] = gid[k];
      bool both = true;
      for (int s = 0; s < 2; s++) {
        const usbx_judge_row *r = slots[2 * k + s];
        const char **o = f + 1 + 6 * s;
        if (r) {
          snprintf(sc[s], sizeof sc[s], "%d", r->score);
          o[0] = r->question; o[1] = r->answer; o[2] = r->image; o[3] = usbx_verdict_name(r->verdict);
          o[4] = sc[s]; o[5] = r->analysis;
          if (r->verdict != USBX_V_YES) both = false;
        } else {
          for (int j = 0; j < 6; j++) o[j] = "";
          both = false;
        }
      }
      f[13] = both ? "True" : "False";
      f[14] = both ? "1" : "0";
      csv_row(&csv, f, 15);
      processed++;
      correct += both;
    }
    free(slots); free(gid);
  } else {
    bool know = task == USBX_TASK_KNOWLEDGE;
    static const char *hm[] = {"ID", "Question", "Answer", "Image_Path", "Result", "Score", "Analysis"};
    static const char *hk[] = {"ID", "Question", "Answer", "Image_Path", "Caption", "Result", "Score", "Analysis"};
    if (know) csv_row(&csv, hk, 8); else csv_row(&csv, hm, 7);
    for (size_t i = 0; i < n; i++) {
      const usbx_judge_row *r = &rows[i];
      snprintf(sc[0], sizeof sc[0], "%d", r->score);
      const char *cap = r->verdict == USBX_V_ERROR || r->verdict == USBX_V_NOT_FOUND ? "" : r->caption;
      if (know) {
        const char *f[8] = {r->id, r->question, r->answer, r->image, cap, usbx_verdict_name(r->verdict), sc[0], r->analysis};
        csv_row(&csv, f, 8);
      } else {
        const char *f[7] = {r->id, r->question, r->answer, r->image, usbx_verdict_name(r->verdict), sc[0], r->analysis};
        csv_row(&csv, f, 7);
      }
      processed++;
      correct += r->score ? 1 : 0;
    }
  }
  char *csv_path = py_join(dir, "evaluation_results.csv");
  char *log_path = py_join(dir, "evaluation_results.log");
  char pct[32];
  usbx_judge_pct(pct, sizeof pct, correct, processed);
  usbx_buf lg = {0};
  usbx_buf_append(&lg, "", 0);
  const char *bar = "============================================================";
  usbx_buf_appendf(&lg, "%s\nEvaluation finished!\n", bar);
  if (task == USBX_TASK_MAPPING) usbx_buf_appendf(&lg, "Total IDs: %ld\nCorrect IDs: %ld\n", processed, correct);
  else usbx_buf_appendf(&lg, "Total: %ld\nCorrect: %ld\n", processed, correct);
  usbx_buf_appendf(&lg, "Accuracy: %s\n", pct);
  if (task == USBX_TASK_MATH) usbx_buf_appendf(&lg, "Duration: %.2fs\n", duration_s);
  usbx_buf_appendf(&lg, "CSV: %s\n%s\n", csv_path, bar);
  int rc = 0;
  if (usbx_write_file_atomic(csv_path, csv.data, csv.len) != 0) {
    snprintf(err, errlen, "%s: %s", csv_path, strerror(errno));
    rc = -1;
  } else if (usbx_write_file_atomic(log_path, lg.data, lg.len) != 0) {
    snprintf(err, errlen, "%s: %s", log_path, strerror(errno));
    rc = -1;
  }
  if (log) *log = xstrdup(lg.data);
  usbx_buf_free(&csv); usbx_buf_free(&lg);
  free(csv_path); free(log_path);
  return rc;
}
