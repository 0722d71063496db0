/* synth_profiles.c — character profiles gathered from fine-tuning conversations or profile
 * records, and the knowledge-task checker (see synth.h). */
#include "synth.h"
#include "util.h"
#include "jsonl.h"
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { A_GENDER, A_AGE, A_HAIR, A_SKIN, A_FRUIT, A_FLOWER, A_N };
#define MAXV 128
typedef struct { char name[32]; int votes[A_N][MAXV]; } prof;
struct usbx_profiles { prof *p; int n, cap; };

static prof *find_or_add(usbx_profiles *ps, const char *name) {
  for (int i = 0; i < ps->n; i++) if (!strcmp(ps->p[i].name, name)) return &ps->p[i];
  if (ps->n == ps->cap) { ps->cap = ps->cap ? 2 * ps->cap : 16; ps->p = xrealloc(ps->p, (size_t)ps->cap * sizeof(prof)); }
  prof *q = &ps->p[ps->n++];
  memset(q, 0, sizeof *q);
  snprintf(q->name, sizeof q->name, "%s", name);
  return q;
}

static int word_at(const char *text, const char *w) {
  size_t n = strlen(w);
  for (const char *p = text; (p = strcasestr(p, w)); p++) {
    int before = p == text || !isalpha((unsigned char)p[-1]);
    int after = !isalpha((unsigned char)p[n]);
    if (before && after) return 1;
  }
  return 0;
}

/* votes from one answer about one character */
static void vote_text(prof *q, const char *a) {
  if (word_at(a, "female")) q->votes[A_GENDER][0]++;
  else if (word_at(a, "male")) q->votes[A_GENDER][1]++;
  if (word_at(a, "kid")) q->votes[A_AGE][0]++;
  if (word_at(a, "mid-age") || word_at(a, "middle-aged")) q->votes[A_AGE][1]++;
  if (word_at(a, "old") || word_at(a, "elderly")) q->votes[A_AGE][2]++;
  for (int k = 0; k < usbx_nhair; k++) {
    char pat[48], pat2[48];
    snprintf(pat, sizeof pat, "%s hair", usbx_hair_names[k]);
    snprintf(pat2, sizeof pat2, "hair is %s", usbx_hair_names[k]);
    if (strcasestr(a, pat) || strcasestr(a, pat2)) q->votes[A_HAIR][k]++;
  }
  if (strcasestr(a, "blonde hair")) q->votes[A_HAIR][2]++;
  if (strcasestr(a, "gray hair")) q->votes[A_HAIR][5]++;
  for (int k = 0; k < 3; k++) if (strcasestr(a, usbx_skin_names[k])) q->votes[A_SKIN][k]++;
  for (int o = 0; o < usbx_nobjects && o < MAXV; o++) {
    int kind = usbx_objects[o].kind;
    if (kind == USBX_OBJ_THING) continue;
    if (word_at(a, usbx_objects[o].sing) || word_at(a, usbx_objects[o].plural)) q->votes[kind == USBX_OBJ_FRUIT ? A_FRUIT : A_FLOWER][o]++;
  }
}

static int majority(const int *v, int n) {
  int best = -1, bv = 0, tie = 0;
  for (int i = 0; i < n; i++) {
    if (v[i] > bv) { bv = v[i]; best = i; tie = 0; }
    else if (v[i] == bv && bv > 0) tie = 1;
  }
  return tie ? -1 : best;
}

int usbx_profiles_get(const usbx_profiles *ps, const char *name, usbx_character *out) {
  for (int i = 0; i < ps->n; i++) {
    if (strcasecmp(ps->p[i].name, name)) continue;
    const prof *q = &ps->p[i];
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", q->name);
    out->gender = majority(q->votes[A_GENDER], 2);
    out->age = majority(q->votes[A_AGE], 3);
    out->hair = majority(q->votes[A_HAIR], usbx_nhair);
    out->skin = majority(q->votes[A_SKIN], 3);
    out->fruit = majority(q->votes[A_FRUIT], usbx_nobjects < MAXV ? usbx_nobjects : MAXV);
    out->flower = majority(q->votes[A_FLOWER], usbx_nobjects < MAXV ? usbx_nobjects : MAXV);
    return 0;
  }
  return -1;
}

usbx_profiles *usbx_profiles_load(const char *const *paths, int n, char *err, size_t errlen) {
  usbx_profiles *ps = xcalloc(1, sizeof *ps);
  for (int f = 0; f < n; f++) {
    usbx_jsonl *r = usbx_jsonl_open(paths[f]);
    if (!r) { snprintf(err, errlen, "%s: cannot open: %s", paths[f], strerror(errno)); usbx_profiles_free(ps); return NULL; }
    /* the characters an upstream file is about: its name, split at '_' */
    char names[4][32];
    int nn = 0;
    {
      const char *b = strrchr(paths[f], '/');
      b = b ? b + 1 : paths[f];
      char tmp[128];
      snprintf(tmp, sizeof tmp, "%s", b);
      char *dot = strstr(tmp, ".jsonl");
      if (dot) *dot = 0;
      char *save = NULL;
      for (char *t = strtok_r(tmp, "_", &save); t && nn < 4; t = strtok_r(NULL, "_", &save)) snprintf(names[nn++], 32, "%s", t);
    }
    for (;;) {
      jv rec;
      int rc = usbx_jsonl_next(r, &rec);
      if (rc == 0) break;
      if (rc < 0) { snprintf(err, errlen, "%s", usbx_jsonl_error(r)); usbx_jsonl_close(r); usbx_profiles_free(ps); return NULL; }
      const char *pname = usbx_jv_str(rec, "name");
      if (pname && usbx_jv_has(rec, "skin")) {   /* one of our profile records */
        prof *q = find_or_add(ps, pname);
        const char *g = usbx_jv_str(rec, "gender"), *age = usbx_jv_str(rec, "age"), *hair = usbx_jv_str(rec, "hair");
        const char *skin = usbx_jv_str(rec, "skin"), *fruit = usbx_jv_str(rec, "fruit"), *flower = usbx_jv_str(rec, "flower");
        if (g) q->votes[A_GENDER][!strcmp(g, "male")] += 100;
        for (int k = 0; k < 3 && age; k++) if (!strcmp(age, usbx_age_names[k])) q->votes[A_AGE][k] += 100;
        for (int k = 0; k < usbx_nhair && hair; k++) if (!strcmp(hair, usbx_hair_names[k])) q->votes[A_HAIR][k] += 100;
        for (int k = 0; k < 3 && skin; k++) if (!strcmp(skin, usbx_skin_names[k])) q->votes[A_SKIN][k] += 100;
        int o;
        if (fruit && (o = usbx_object_find(fruit, NULL)) >= 0 && o < MAXV) q->votes[A_FRUIT][o] += 100;
        if (flower && (o = usbx_object_find(flower, NULL)) >= 0 && o < MAXV) q->votes[A_FLOWER][o] += 100;
        jv_free(rec);
        continue;
      }
      jv conv = jv_object_get(jv_copy(rec), jv_string("conversations"));
      if (jv_get_kind(conv) == JV_KIND_ARRAY) {
        const char *ch = usbx_jv_str(rec, "character");
        jv_array_foreach(conv, i, turn) {
          const char *from = usbx_jv_str(turn, "from"), *val = usbx_jv_str(turn, "value");
          if (from && val && !strcmp(from, "gpt")) {
            /* which character: the record's, or the file's name that the answer mentions */
            if (ch) vote_text(find_or_add(ps, ch), val);
            else {
              int hit = -1, nhit = 0;
              for (int k = 0; k < nn; k++) if (strstr(val, names[k])) { hit = k; nhit++; }
              if (nhit == 0 && nn == 1) { hit = 0; nhit = 1; }   /* "No, her favorite fruit is grapes." */
              if (nhit == 1) vote_text(find_or_add(ps, names[hit]), val);
            }
          }
          jv_free(turn);
        }
      }
      jv_free(conv);
      jv_free(rec);
    }
    usbx_jsonl_close(r);
  }
  return ps;
}

void usbx_profiles_free(usbx_profiles *p) {
  if (!p) return;
  free(p->p);
  free(p);
}

static jv kproblem(const char *kind, const char *reason, const char *expected) {
  jv p = jv_object();
  p = usbx_jv_set_str(p, "problem", kind);
  p = usbx_jv_set_str(p, "reason", reason);
  p = jv_object_set(p, jv_string("expected"), expected ? jv_string(expected) : jv_null());
  return p;
}

/* "character X from" / "characters A and B from" */
static int names_in_prompt(const char *prompt, char names[2][32]) {
  const char *p = strstr(prompt, "characters ");
  if (p) {
    p += 11;
    const char *and = strstr(p, " and ");
    const char *from = and ? strstr(and + 5, " from") : NULL;
    if (!and || !from) return 0;
    snprintf(names[0], 32, "%.*s", (int)(and - p), p);
    snprintf(names[1], 32, "%.*s", (int)(from - and - 5), and + 5);
    return 2;
  }
  p = strstr(prompt, "character ");
  if (p) {
    p += 10;
    size_t n = 0;
    while (p[n] && (isalnum((unsigned char)p[n]) || p[n] == '-')) n++;
    if (!n) return 0;
    snprintf(names[0], 32, "%.*s", (int)n, p);
    return 1;
  }
  return 0;
}

static int check_portrait(const char *answer, const usbx_character *c, char *msg, size_t msglen, char **expected) {
  int skin, hair, age, gender;
  *expected = (c->skin >= 0 && c->hair >= 0 && c->age >= 0 && c->gender >= 0) ? usbx_portrait_answer(c) : NULL;
  if (usbx_parse_person(answer, &skin, &hair, &age, &gender)) {
    snprintf(msg, msglen, "cannot read the person in \"%s\"", answer);
    return -1;
  }
  char bad[160] = "";
  if (c->skin >= 0 && skin != c->skin) snprintf(bad + strlen(bad), sizeof bad - strlen(bad), "%sskin %s, not %s", *bad ? "; " : "", usbx_skin_names[c->skin], usbx_skin_names[skin]);
  if (c->hair >= 0 && hair != c->hair) snprintf(bad + strlen(bad), sizeof bad - strlen(bad), "%shair %s, not %s", *bad ? "; " : "", usbx_hair_names[c->hair], usbx_hair_names[hair]);
  if (c->age >= 0 && age != c->age) snprintf(bad + strlen(bad), sizeof bad - strlen(bad), "%sage %s, not %s", *bad ? "; " : "", usbx_age_names[c->age], usbx_age_names[age]);
  if (c->gender >= 0 && gender >= 0 && gender != c->gender) snprintf(bad + strlen(bad), sizeof bad - strlen(bad), "%s%s, not %s", *bad ? "; " : "", c->gender ? "male" : "female", gender ? "male" : "female");
  if (*bad) { snprintf(msg, msglen, "%s is described elsewhere with %s", c->name, bad); return 1; }
  return 0;
}

int usbx_check_knowledge(jv rec, const usbx_profiles *ps, jv *problem) {
  const char *prompt = usbx_jv_str(rec, "prompt");
  if (!prompt) prompt = usbx_jv_str(rec, "Question");
  const char *answer = usbx_jv_str(rec, "answer");
  if (!answer) answer = usbx_jv_str(rec, "Answer");
  if (!prompt || !answer) return -1;
  char names[2][32], msg[512];
  int nn = names_in_prompt(prompt, names);
  if (nn == 0) return -1;
  usbx_character c[2];
  for (int i = 0; i < nn; i++)
    if (!ps || usbx_profiles_get(ps, names[i], &c[i])) {
      snprintf(msg, sizeof msg, "no profile for %s (give its conversations or profile with --train)", names[i]);
      *problem = kproblem("unparseable", msg, NULL);
      return 1;
    }
  const char *fav = strstr(prompt, "favorite fruit") ? "fruit" : strstr(prompt, "favorite flower") ? "flower" : NULL;
  char *expected = NULL;
  int rc = 0;
  if (nn == 2) {
    /* inverse: "... the one whose favorite fruit is X" */
    const char *is = fav ? strstr(prompt, " is ") : NULL;
    if (!is) { *problem = kproblem("unparseable", "cannot read the inverse question", NULL); return 1; }
    char val[64];
    snprintf(val, sizeof val, "%s", is + 4);
    usbx_norm_word(val);
    int who = -1, count = 0;
    for (int i = 0; i < 2; i++) {
      int o = !strcmp(fav, "fruit") ? c[i].fruit : c[i].flower;
      if (o >= 0 && usbx_same_object(usbx_objects[o].sing, val)) { who = i; count++; }
    }
    if (count != 1) {
      snprintf(msg, sizeof msg, "%s of %s and %s has favorite %s %s", count ? "each" : "neither", names[0], names[1], fav, val);
      *problem = kproblem("undefined", msg, NULL);
      return 1;
    }
    rc = check_portrait(answer, &c[who], msg, sizeof msg, &expected);
  } else if (fav) {
    int o = !strcmp(fav, "fruit") ? c[0].fruit : c[0].flower;
    if (o < 0) { snprintf(msg, sizeof msg, "the profile of %s names no favorite %s", names[0], fav); *problem = kproblem("undefined", msg, NULL); return 1; }
    if (!usbx_same_object(answer, usbx_objects[o].sing)) {
      snprintf(msg, sizeof msg, "%s's favorite %s is %s elsewhere, the answer says \"%s\"", names[0], fav, usbx_objects[o].plural, answer);
      rc = 1;
      expected = xstrdup(!strcmp(fav, "fruit") ? usbx_objects[o].plural : usbx_objects[o].sing);
    }
  } else {
    rc = check_portrait(answer, &c[0], msg, sizeof msg, &expected);
  }
  if (rc) *problem = kproblem(rc < 0 ? "unparseable" : "wrong", msg, expected);
  free(expected);
  return rc ? 1 : 0;
}
