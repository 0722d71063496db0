/* synth_check.c — verifies the answers of task files, ours or upstream (see synth.h). */
#include "synth.h"
#include "util.h"
#include "jsonl.h"
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static jv problem(const char *kind, const char *reason, const char *expected) {
  jv p = jv_object();
  p = usbx_jv_set_str(p, "problem", kind);
  p = usbx_jv_set_str(p, "reason", reason);
  p = jv_object_set(p, jv_string("expected"), expected ? jv_string(expected) : jv_null());
  return p;
}

static const char *field_prompt(jv rec) {
  const char *s = usbx_jv_str(rec, "prompt");
  if (!s) s = usbx_jv_str(rec, "Question");
  if (!s) s = usbx_jv_str(rec, "Question_A");
  if (!s) s = usbx_jv_str(rec, "Question_B");
  return s;
}
static const char *field_answer(jv rec) {
  const char *s = usbx_jv_str(rec, "answer");
  if (!s) s = usbx_jv_str(rec, "Answer");
  return s;
}

/* finds the object noun of a math prompt: "as many X as", "number of X equal", ... */
static char *math_object(const char *prompt, const char **after) {
  static const char *const keys[] = {"as many ", "a number of ", "the number of ", "number of ", "a quantity of ",
                                     "quantity of ", "amount of ", "count of ", NULL};
  static const char *const stops[] = {" as ", " equal", " that ", " matching", " equivalent", " given", " whose",
                                      " calculated", " which", " corresponding", " from ", NULL};
  const char *best = NULL;
  size_t bestlen = 0;
  for (int i = 0; keys[i]; i++) {
    const char *k = strcasestr(prompt, keys[i]);
    if (k && (!best || k < best)) { best = k; bestlen = strlen(keys[i]); }
  }
  if (!best) return NULL;
  const char *s = best + bestlen;
  const char *e = NULL;
  for (int i = 0; stops[i]; i++) {
    const char *t = strcasestr(s, stops[i]);
    if (t && (!e || t < e)) e = t;
  }
  if (!e) return NULL;
  /* an expression (digit, √, parenthesis) inside the noun means there is no noun */
  for (const char *p = s; p < e; p++)
    if (isdigit((unsigned char)*p) || *p == '(' || (unsigned char)*p == 0xe2) return NULL;
  char *o = xmalloc((size_t)(e - s) + 1);
  memcpy(o, s, (size_t)(e - s));
  o[e - s] = 0;
  usbx_norm_word(o);
  *after = e;
  if (!*o) { free(o); return NULL; }
  return o;
}

/* the expression: from the first digit / √ / ( / "square root" to the end, minus filler */
static char *math_expression(const char *from) {
  const char *s = NULL;
  for (const char *p = from; *p; p++) {
    if (isdigit((unsigned char)*p) || *p == '(' || !strncmp(p, "\xe2\x88\x9a", 3)) { s = p; break; }
    if (!strncasecmp(p, "the square root", 15) || !strncasecmp(p, "square root", 11)) { s = p; break; }
  }
  if (!s) return NULL;
  char *e = xstrdup(s);
  for (;;) {
    size_t n = strlen(e);
    while (n && (e[n - 1] == '.' || e[n - 1] == ' ' || e[n - 1] == '!' || e[n - 1] == '?')) e[--n] = 0;
    static const char *const tails[] = {" equals", " gives", " is", " makes", NULL};
    int cut = 0;
    for (int i = 0; tails[i]; i++) {
      size_t t = strlen(tails[i]);
      if (n > t && !strcasecmp(e + n - t, tails[i])) { e[n - t] = 0; cut = 1; }
    }
    if (!cut) break;
  }
  return e;
}

static void singular_of(const char *plural, char *out, size_t n) {
  if (!strncmp(plural, "pairs of ", 9)) { snprintf(out, n, "pair of %s", plural + 9); return; }
  snprintf(out, n, "%s", plural);
  size_t l = strlen(out);
  if (l > 4 && !strcmp(out + l - 3, "ies")) strcpy(out + l - 3, "y");
  else if (l > 3 && (!strcmp(out + l - 4, "ches") || !strcmp(out + l - 4, "shes") || !strcmp(out + l - 3, "xes"))) out[l - 2] = 0;
  else if (l > 2 && out[l - 1] == 's' && out[l - 2] != 's') out[l - 1] = 0;
}

static int check_math(jv rec, jv *prob) {
  const char *prompt = field_prompt(rec), *answer = field_answer(rec);
  if (!prompt) { *prob = problem("unparseable", "no prompt", NULL); return 1; }
  const char *after = prompt;
  char *noun = math_object(prompt, &after);
  char *expr = math_expression(noun ? after : prompt);
  char why[256], msg[512];
  if (!expr) {
    *prob = problem("unparseable", "no arithmetic expression found in the prompt", NULL);
    free(noun);
    return 1;
  }
  int64_t num, den;
  int rc = usbx_expr_eval(expr, &num, &den, why, sizeof why);
  if (rc < 0) {
    snprintf(msg, sizeof msg, "cannot parse \"%s\": %s", expr, why);
    *prob = problem("unparseable", msg, NULL);
    free(noun); free(expr);
    return 1;
  }
  if (rc > 0) {
    snprintf(msg, sizeof msg, "\"%s\" is undefined: %s", expr, why);
    *prob = problem("undefined", msg, NULL);
    free(noun); free(expr);
    return 1;
  }
  if (den != 1) {
    snprintf(msg, sizeof msg, "\"%s\" = %lld/%lld (%.4g), not a whole number of objects", expr, (long long)num,
             (long long)den, (double)num / (double)den);
    *prob = problem("undefined", msg, NULL);
    free(noun); free(expr);
    return 1;
  }
  if (num < 1) {
    snprintf(msg, sizeof msg, "\"%s\" = %lld: nothing to draw", expr, (long long)num);
    *prob = problem("undefined", msg, NULL);
    free(noun); free(expr);
    return 1;
  }
  /* expected phrase */
  char expected[200];
  int oi = noun ? usbx_object_find(noun, NULL) : -1;
  if (oi >= 0) {
    char *ph = usbx_count_phrase((int)num, oi);
    snprintf(expected, sizeof expected, "%s", ph);
    free(ph);
  } else if (noun) {
    char sing[128];
    singular_of(noun, sing, sizeof sing);
    snprintf(expected, sizeof expected, "%lld %s", (long long)num, num == 1 ? sing : noun);
  } else {
    snprintf(expected, sizeof expected, "%lld", (long long)num);
  }
  int count = 0, aobj = -1;
  char *anoun = NULL;
  if (!answer || usbx_parse_count_answer(answer, &count, &aobj, &anoun)) {
    snprintf(msg, sizeof msg, "answer \"%s\" does not start with a count", answer ? answer : "");
    *prob = problem("unparseable", msg, expected);
    free(noun); free(expr);
    return 1;
  }
  int res = 0;
  if (count != num) {
    snprintf(msg, sizeof msg, "\"%s\" = %lld, answer says %d", expr, (long long)num, count);
    *prob = problem("wrong", msg, expected);
    res = 1;
  } else if (!noun) {
    snprintf(msg, sizeof msg, "the prompt names no object (answer \"%s\")", answer);
    *prob = problem("no_object", msg, NULL);
    res = 1;
  } else if (!usbx_same_object(noun, anoun)) {
    snprintf(msg, sizeof msg, "prompt asks for %s, answer names %s", noun, anoun);
    *prob = problem("wrong", msg, expected);
    res = 1;
  } else {
    /* grammar: the number of the noun must agree with the count */
    char sing[128];
    const char *want;
    if (oi >= 0) want = count == 1 ? usbx_objects[oi].sing : usbx_objects[oi].plural;
    else { singular_of(noun, sing, sizeof sing); want = count == 1 ? sing : noun; }
    if (strcmp(anoun, want)) {
      snprintf(msg, sizeof msg, "count %d needs \"%s\", answer has \"%s\"", count, want, anoun);
      *prob = problem("grammar", msg, expected);
      res = 1;
    }
  }
  free(anoun); free(noun); free(expr);
  return res;
}

static int check_mapping(jv rec, jv *prob) {
  const char *prompt = field_prompt(rec), *answer = field_answer(rec);
  if (!prompt) { *prob = problem("unparseable", "no prompt", NULL); return 1; }
  char *obj = NULL;
  char why[512], msg[768];
  int rc = usbx_mapping_resolve(prompt, &obj, why, sizeof why);
  if (rc < 0) {
    snprintf(msg, sizeof msg, "cannot read the mapping: %s", why);
    *prob = problem("unparseable", msg, NULL);
    return 1;
  }
  if (rc > 0) {
    snprintf(msg, sizeof msg, "broken chain: %s (answer \"%s\")", why, answer ? answer : "");
    *prob = problem("broken_chain", msg, NULL);
    return 1;
  }
  int res = 0;
  if (!answer || !usbx_same_object(obj, answer)) {
    snprintf(msg, sizeof msg, "chain %s, answer says \"%s\"", why, answer ? answer : "");
    *prob = problem("wrong", msg, obj);
    res = 1;
  }
  free(obj);
  return res;
}

static const char *guess_kind(jv rec, const char *path) {
  const char *t = usbx_jv_str(rec, "task");
  if (t) return t;
  const char *base = path ? strrchr(path, '/') : NULL;
  base = base ? base + 1 : path;
  if (base && strstr(base, "mapping")) return "mapping";
  if (base && strstr(base, "math")) return "math";
  const char *p = field_prompt(rec);
  if (p && strstr(p, "Rule 1:")) return "mapping";
  return "knowledge";
}

int usbx_check_record(jv rec, const char *kind, jv *prob) {
  if (!kind) kind = guess_kind(rec, NULL);
  if (!strcmp(kind, "math")) return check_math(rec, prob);
  if (!strcmp(kind, "mapping")) return check_mapping(rec, prob);
  return -1;
}

/* the rules part of a mapping prompt (text before the question) */
static char *rules_part(const char *prompt) {
  const char *e = strstr(prompt, "Please ");
  size_t n = e ? (size_t)(e - prompt) : strlen(prompt);
  char *r = xmalloc(n + 1);
  memcpy(r, prompt, n);
  r[n] = 0;
  while (n && r[n - 1] == ' ') r[--n] = 0;
  return r;
}

static char *record_id(jv rec) {
  jv v = jv_object_get(jv_copy(rec), jv_string("id"));
  if (!jv_is_valid(v) || jv_get_kind(v) == JV_KIND_NULL) { jv_free(v); v = jv_object_get(jv_copy(rec), jv_string("ID")); }
  char *id;
  if (jv_get_kind(v) == JV_KIND_STRING) id = xstrdup(jv_string_value(v));
  else if (jv_get_kind(v) == JV_KIND_NUMBER) id = xasprintf("%.17g", jv_number_value(v));
  else id = xstrdup("");
  jv_free(v);
  if (!usbx_jv_has(rec, "id") || !usbx_jv_str(rec, "id")) {
    /* upstream mapping: <ID>_A / <ID>_B */
    if (usbx_jv_has(rec, "Question_A") || usbx_jv_has(rec, "Question_B")) {
      char *x = xasprintf("%s_%c", id, usbx_jv_has(rec, "Question_A") ? 'A' : 'B');
      free(id);
      id = x;
    }
  }
  return id;
}

int usbx_check_file(const char *path, const usbx_profiles *prof, FILE *out, long *nitems, long *nproblems, long *nskipped,
                    char *err, size_t errlen) {
  usbx_jsonl *r = usbx_jsonl_open(path);
  if (!r) { snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno)); return -1; }
  int any = 0;
  jv groups = jv_object();   /* group -> {rules, line, id} */
  for (;;) {
    jv rec;
    int rc = usbx_jsonl_next(r, &rec);
    if (rc == 0) break;
    long line = usbx_jsonl_line(r);
    if (rc < 0) {
      jv p = problem("unparseable", usbx_jsonl_error(r), NULL);
      p = usbx_jv_set_str(p, "file", path);
      p = usbx_jv_set_num(p, "line", (double)line);
      p = jv_object_set(p, jv_string("id"), jv_null());
      usbx_jsonl_write(out, p);
      (*nitems)++; (*nproblems)++; any = 1;
      continue;
    }
    const char *kind = guess_kind(rec, path);
    jv prob = jv_invalid();
    int c = usbx_check_record(rec, kind, &prob);
    if (c < 0 && prof && !strcmp(kind, "knowledge")) c = usbx_check_knowledge(rec, prof, &prob);
    char *id = record_id(rec);
    if (c < 0) { (*nskipped)++; free(id); jv_free(rec); continue; }
    (*nitems)++;
    if (!strcmp(kind, "mapping")) {
      /* A/B pairs must share their rules */
      const char *g = usbx_jv_str(rec, "group");
      char *gid = g ? xstrdup(g) : NULL;
      if (!gid) {
        jv v = jv_object_get(jv_copy(rec), jv_string("ID"));
        if (jv_get_kind(v) == JV_KIND_STRING) gid = xstrdup(jv_string_value(v));
        else if (jv_get_kind(v) == JV_KIND_NUMBER) gid = xasprintf("%.17g", jv_number_value(v));
        jv_free(v);
      }
      const char *pr = field_prompt(rec);
      if (gid && pr) {
        char *rules = rules_part(pr);
        jv prev = jv_object_get(jv_copy(groups), jv_string(gid));
        if (jv_is_valid(prev) && jv_get_kind(prev) == JV_KIND_STRING) {
          if (strcmp(jv_string_value(prev), rules) && c == 0) {
            char *msg = xasprintf("the rules differ from the other question of group %s", gid);
            prob = problem("pair_mismatch", msg, NULL);
            free(msg);
            c = 1;
          }
        } else {
          groups = jv_object_set(groups, jv_string(gid), jv_string(rules));
        }
        jv_free(prev);
        free(rules);
      }
      free(gid);
    }
    if (c > 0) {
      jv p = jv_object();
      p = usbx_jv_set_str(p, "file", path);
      p = usbx_jv_set_num(p, "line", (double)line);
      p = usbx_jv_set_str(p, "id", id);
      p = usbx_jv_set_str(p, "task", kind);
      const char *pr = field_prompt(rec), *an = field_answer(rec);
      p = jv_object_set(p, jv_string("prompt"), pr ? jv_string(pr) : jv_null());
      p = jv_object_set(p, jv_string("answer"), an ? jv_string(an) : jv_null());
      jv_object_foreach(prob, k, v) p = jv_object_set(p, k, v);
      jv_free(prob);
      usbx_jsonl_write(out, p);
      (*nproblems)++;
      any = 1;
    }
    free(id);
    jv_free(rec);
  }
  jv_free(groups);
  usbx_jsonl_close(r);
  return any;
}
