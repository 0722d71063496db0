/* test_synth — task generators: determinism, answers re-computed by an evaluator written
 * independently here, split disjointness, mapping chains followed here, knowledge consistency;
 * the library evaluator on hand-made cases; and `check` on the upstream files. */
#include "testlib.h"
#include "synth.h"
#include "jsonl.h"
#include "util.h"
#include <ctype.h>
#include <math.h>
#include <unistd.h>

/* ---------------- an independent evaluator (doubles, recursive descent) ---------------- */
static const char *ip;
static double ie_sum(void);
static void ie_ws(void) { while (*ip == ' ') ip++; }
static double ie_atom(void) {
  ie_ws();
  if (!strncmp(ip, "\xe2\x88\x9a", 3)) { ip += 3; return sqrt(ie_atom()); }
  if (*ip == '(') { ip++; double v = ie_sum(); ie_ws(); if (*ip == ')') ip++; return v; }
  char *e;
  double v = strtod(ip, &e);
  ip = e;
  ie_ws();
  if (*ip == '^') { ip++; return pow(v, ie_atom()); }
  return v;
}
static double ie_prod(void) {
  double v = ie_atom();
  for (;;) {
    ie_ws();
    char c = *ip;
    if (c != '*' && c != '/' && c != '%') return v;
    ip++;
    double w = ie_atom();
    v = c == '*' ? v * w : c == '/' ? v / w : fmod(v, w);
  }
}
static double ie_sum(void) {
  double v = ie_prod();
  for (;;) {
    ie_ws();
    char c = *ip;
    if (c != '+' && c != '-') return v;
    ip++;
    double w = ie_prod();
    v = c == '+' ? v + w : v - w;
  }
}
/* worded -> symbolic by plain substitution */
static void subst(char *s, const char *from, const char *to) {
  char buf[1024];
  char *p;
  while ((p = strstr(s, from))) {
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
    strcpy(s, buf);
  }
}
static double ie_eval_words(const char *text) {
  char s[1024];
  snprintf(s, sizeof s, "%s", text);
  subst(s, "the square root of ", "\xe2\x88\x9a");
  subst(s, " plus ", " + ");
  subst(s, " minus ", " - ");
  subst(s, " multiplied by ", " * ");
  subst(s, " times ", " * ");
  subst(s, " divided by ", " / ");
  subst(s, " modulo ", " % ");
  subst(s, " squared", "^2");
  subst(s, " cubed", "^3");
  subst(s, " to the power of ", "^");
  /* ", then ..." segments apply to everything before */
  double v = 0;
  char *save = NULL;
  int first = 1;
  for (char *seg = strtok_r(s, ",", &save); seg; seg = strtok_r(NULL, ",", &save)) {
    while (*seg == ' ') seg++;
    if (first) { ip = seg; v = ie_sum(); first = 0; continue; }
    if (!strncmp(seg, "then ", 5)) seg += 5;
    if (!strcmp(seg, "rounded down")) { v = floor(v); continue; }
    char op = 0;
    if (!strncmp(seg, "add ", 4)) { op = '+'; seg += 4; }
    else if (!strncmp(seg, "subtract ", 9)) { op = '-'; seg += 9; }
    else if (!strncmp(seg, "multiply by ", 12)) { op = '*'; seg += 12; }
    else if (!strncmp(seg, "divide by ", 10)) { op = '/'; seg += 10; }
    else if (*seg == '+' || *seg == '-' || *seg == '*' || *seg == '/') { op = *seg; seg++; }
    ip = seg;
    double w = ie_sum();
    v = op == '+' ? v + w : op == '-' ? v - w : op == '*' ? v * w : v / w;
  }
  return v;
}
static int count_ops(const char *e) {
  int n = 0;
  for (const char *p = e; *p; p++) {
    if (strchr("+-*/%^", *p) && p[1] == ' ' && p > e && p[-1] == ' ') n++;
    else if (*p == '^') n++;
    else if (!strncmp(p, "\xe2\x88\x9a", 3)) n++;
  }
  static const char *const words[] = {" plus ", " minus ", " times ", " multiplied by ", " divided by ", " modulo ", "square root",
                                      " squared", " cubed", " to the power of ", "rounded down", "then add", "then subtract",
                                      "then multiply", "then divide", NULL};
  for (int i = 0; words[i]; i++)
    for (const char *p = e; (p = strstr(p, words[i])); p++) n++;
  return n;
}

static jv gen_math(int level, int n, uint64_t seed, jv exclude) {
  jv out = jv_array();
  char err[256];
  int rc = usbx_synth_math(level, n, seed, "m", exclude, &out, err, sizeof err);
  CHECKF(rc == 0, "%s", err);
  return out;
}

/* ---------------- mapping chains, followed here ---------------- */
/* the key of a rule: first token after optional "The"/type word; quotes stripped */
static void rule_key(const char *r, char *key) {
  while (*r == ' ') r++;
  if (!strncmp(r, "The ", 4)) r += 4;
  static const char *const types[] = {"letter ", "Letter ", "symbol ", "Symbol ", "number ", "Number ", NULL};
  for (int i = 0; types[i]; i++) if (!strncmp(r, types[i], strlen(types[i]))) { r += strlen(types[i]); break; }
  if (*r == '\'') { key[0] = r[1]; key[1] = 0; return; }
  key[0] = r[0];
  key[1] = 0;
}
static int follow_chain(const char *prompt, const char *start, char *obj) {
  char rules[8][256];
  int nr = 0;
  const char *p = prompt;
  while ((p = strstr(p, "Rule ")) && nr < 8) {
    const char *c = strchr(p, ':');
    const char *e = strstr(c, ". ");
    snprintf(rules[nr++], sizeof rules[0], "%.*s", (int)(e - c - 1), c + 1);
    p = e;
  }
  char cur[8];
  snprintf(cur, sizeof cur, "%s", start);
  for (int hop = 0; hop < 8; hop++) {
    int found = 0;
    for (int i = 0; i < nr; i++) {
      char k[8];
      rule_key(rules[i], k);
      if (strcmp(k, cur)) continue;
      found = 1;
      /* object: a catalogue name at the end of the rule */
      size_t rl = strlen(rules[i]);
      for (int o = 0; o < usbx_nobjects; o++) {
        size_t ol = strlen(usbx_objects[o].sing);
        if (rl > ol && !strcmp(rules[i] + rl - ol, usbx_objects[o].sing) && rules[i][rl - ol - 1] == ' ') {
          strcpy(obj, usbx_objects[o].sing);
          return hop + 1;
        }
      }
      /* link: last character (quotes stripped) */
      char last = rules[i][rl - 1] == '\'' ? rules[i][rl - 2] : rules[i][rl - 1];
      cur[0] = last;
      cur[1] = 0;
      break;
    }
    if (!found) return -1;
  }
  return -1;
}

static void test_expr(void) {
  struct { const char *e; long long n, d; int rc; } cases[] = {
    {"8 / 4", 2, 1, 0}, {"\xe2\x88\x9a" "16 - 2", 2, 1, 0}, {"3^2 - 8", 1, 1, 0}, {"10 / \xe2\x88\x9a" "25", 2, 1, 0},
    {"9 % 4 + 1", 2, 1, 0}, {"\xe2\x88\x9a" "49 / 3", 7, 3, 0}, {"(5^0) * 3 + 1", 4, 1, 0},
    {"the square root of 9 plus 1 minus 2", 2, 1, 0}, {"\xe2\x88\x9a(M\xc2\xb2 + 9) where M = 4", 5, 1, 0},
    {"11 / 4 equals then rounded down", 2, 1, 0}, {"7 divided by 2, then rounded down, plus 1", 4, 1, 0},
    {"the square root of 16 minus 3, then add 2", 3, 1, 0}, {"2 plus 2, then multiply by 3", 12, 1, 0},
    {"4 squared minus 3 cubed", -11, 1, 0}, {"2^3^2", 512, 1, 0}, {"-3 + 5", 2, 1, 0}, {"2 * (3 + 4)", 14, 1, 0},
    {"5 / 0", 0, 0, 1}, {"\xe2\x88\x9a" "10", 0, 0, 1}, {"\xe2\x88\x9a(-4)", 0, 0, 1}, {"7.5 % 2", 0, 0, -1},
    {"3 + banana", 0, 0, -1}, {"(3 + 4", 0, 0, -1}, {"", 0, 0, -1}, {"3 +", 0, 0, -1},
    {"2^100", 0, 0, 1}, {"(7 + 4 - 9) where all terms are squared, then take square root twice", 0, 0, -1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int64_t n = 0, d = 0;
    char why[128];
    int rc = usbx_expr_eval(cases[i].e, &n, &d, why, sizeof why);
    CHECKF(rc == cases[i].rc, "\"%s\": rc %d (%s), want %d", cases[i].e, rc, why, cases[i].rc);
    if (rc == 0 && cases[i].rc == 0) CHECKF(n == cases[i].n && d == cases[i].d, "\"%s\" = %lld/%lld", cases[i].e, (long long)n, (long long)d);
    if (rc != 0) CHECK(why[0] != 0);
  }
}

static void test_math(void) {
  for (int level = 1; level <= 3; level++) {
    jv a = gen_math(level, 150, 7, jv_invalid());
    jv b = gen_math(level, 150, 7, jv_invalid());
    jv c = gen_math(level, 150, 8, jv_invalid());
    char *da = usbx_jv_dump(a), *db = usbx_jv_dump(b), *dc = usbx_jv_dump(c);
    CHECK(strcmp(da, db) == 0);     /* deterministic */
    CHECK(strcmp(da, dc) != 0);     /* the seed matters */
    free(da); free(db); free(dc);
    CHECK_EQ_INT(jv_array_length(jv_copy(a)), 150);
    int maxv = level == 3 ? 5 : 4;
    int seen[6] = {0}, worded = 0;
    jv prompts = jv_object();
    jv_array_foreach(a, i, rec) {
      const char *prompt = usbx_jv_str(rec, "prompt"), *answer = usbx_jv_str(rec, "answer"), *expr = usbx_jv_str(rec, "expression");
      CHECK(prompt && answer && expr);
      CHECK(strstr(prompt, expr) != NULL);
      /* answer re-computed independently */
      double v = ie_eval_words(expr);
      int count = atoi(answer);
      CHECKF(fabs(v - count) < 1e-9, "level %d \"%s\" = %g, answer \"%s\"", level, expr, v, answer);
      CHECK(count >= 1 && count <= maxv);
      if (count >= 1 && count <= 5) seen[count]++;
      CHECKF(count_ops(expr) == level, "level %d: \"%s\" has %d operations", level, expr, count_ops(expr));
      if (strstr(expr, " plus ") || strstr(expr, " minus ") || strstr(expr, "root of") || strstr(expr, " divided by ")) worded++;
      /* grammar: "1 eraser.", "3 kittens." and the prompt names the plural */
      const char *noun = strchr(answer, ' ') + 1;
      int obj = -1;
      for (int o = 0; o < usbx_nobjects; o++) {
        char want[96];
        snprintf(want, sizeof want, "%s.", count == 1 ? usbx_objects[o].sing : usbx_objects[o].plural);
        if (!strcmp(noun, want)) obj = o;
      }
      CHECKF(obj >= 0, "answer \"%s\" is not a grammatical count phrase", answer);
      if (obj >= 0) CHECK(strstr(prompt, usbx_objects[obj].plural) != NULL);
      CHECK_STR(usbx_jv_str(rec, "task"), "math");
      jv hit = jv_object_get(jv_copy(prompts), jv_string(prompt));
      CHECK(!jv_is_valid(hit));     /* prompts are unique */
      jv_free(hit);
      prompts = jv_object_set(prompts, jv_string(prompt), jv_true());
      /* the library checker agrees */
      jv prob = jv_invalid();
      CHECK_EQ_INT(usbx_check_record(rec, "math", &prob), 0);
      jv_free(prob);
      jv_free(rec);
    }
    for (int k = 1; k <= maxv; k++) CHECKF(seen[k] >= 10, "level %d: answer %d appears %d times", level, k, seen[k]);
    if (level == 3) CHECK(worded >= 10);
    /* disjoint split: a test set generated with the train set excluded */
    jv t = gen_math(level, 150, 99, prompts);
    jv_array_foreach(t, i, rec) {
      jv hit = jv_object_get(jv_copy(prompts), jv_string(usbx_jv_str(rec, "prompt")));
      CHECK(!jv_is_valid(hit));
      jv_free(hit);
      jv_free(rec);
    }
    jv_free(t);
    jv_free(prompts);
    jv_free(a); jv_free(b); jv_free(c);
  }
  /* the checker catches a wrong, an ungrammatical and an undefined item */
  jv rec = JV_OBJECT(jv_string("prompt"), jv_string("Generate as many cups as the result of 8 / 4."), jv_string("answer"), jv_string("3 cups."));
  jv prob = jv_invalid();
  CHECK_EQ_INT(usbx_check_record(rec, "math", &prob), 1);
  CHECK_STR(usbx_jv_str(prob, "problem"), "wrong");
  CHECK_STR(usbx_jv_str(prob, "expected"), "2 cups");
  jv_free(prob); jv_free(rec);
  rec = JV_OBJECT(jv_string("prompt"), jv_string("Generate as many cups as the result of 8 / 4."), jv_string("answer"), jv_string("2 cup."));
  CHECK_EQ_INT(usbx_check_record(rec, "math", &prob), 1);
  CHECK_STR(usbx_jv_str(prob, "problem"), "grammar");
  jv_free(prob); jv_free(rec);
  rec = JV_OBJECT(jv_string("prompt"), jv_string("Show the number of mice that equals 3 / 2."), jv_string("answer"), jv_string("1 mouse"));
  CHECK_EQ_INT(usbx_check_record(rec, "math", &prob), 1);
  CHECK_STR(usbx_jv_str(prob, "problem"), "undefined");
  jv_free(prob); jv_free(rec);
  rec = JV_OBJECT(jv_string("prompt"), jv_string("Show the number of mice that equals 3 - 2."), jv_string("answer"), jv_string("1 mouse"));
  CHECK_EQ_INT(usbx_check_record(rec, "math", &prob), 0);
  jv_free(rec);
}

static void test_mapping(void) {
  for (int level = 1; level <= 3; level++) {
    jv a = jv_array(), b = jv_array();
    char err[256];
    CHECK_EQ_INT(usbx_synth_mapping(level, 80, 5, "p", jv_invalid(), &a, err, sizeof err), 0);
    CHECK_EQ_INT(usbx_synth_mapping(level, 80, 5, "p", jv_invalid(), &b, err, sizeof err), 0);
    char *da = usbx_jv_dump(a), *db = usbx_jv_dump(b);
    CHECK(strcmp(da, db) == 0);
    free(da); free(db);
    CHECK_EQ_INT(jv_array_length(jv_copy(a)), 160);
    jv prompts = jv_object();
    jv_array_foreach(a, i, rec) {
      const char *prompt = usbx_jv_str(rec, "prompt"), *answer = usbx_jv_str(rec, "answer");
      const char *id = usbx_jv_str(rec, "id"), *group = usbx_jv_str(rec, "group");
      /* 2, 4 or 6 rules */
      int nrules = 0;
      for (const char *p = prompt; (p = strstr(p, "Rule ")); p++) nrules++;
      CHECK_EQ_INT(nrules, 2 * level);
      /* A/B ids and groups */
      char want[64];
      snprintf(want, sizeof want, "%s_%c", group, i % 2 ? 'B' : 'A');
      CHECK_STR(id, want);
      /* the asked token: last token of the prompt */
      const char *q = strrchr(prompt, ' ') + 1;
      char tok[4] = {q[0] == '\'' ? q[1] : q[0], 0};
      char obj[64] = "";
      int hops = follow_chain(prompt, tok, obj);
      CHECKF(hops == level && !strcmp(obj, answer), "%s: chain of %d hops to \"%s\", answer \"%s\"", id, hops, obj, answer);
      char *ro = NULL;
      char why[256];
      CHECK_EQ_INT(usbx_mapping_resolve(prompt, &ro, why, sizeof why), 0);
      if (ro) CHECK(usbx_same_object(ro, answer));
      free(ro);
      prompts = jv_object_set(prompts, jv_string(prompt), jv_true());
      jv_free(rec);
    }
    /* A and B of a group differ in their answers */
    for (int i = 0; i + 1 < 160; i += 2) {
      jv x = jv_array_get(jv_copy(a), i), y = jv_array_get(jv_copy(a), i + 1);
      CHECK(strcmp(usbx_jv_str(x, "answer"), usbx_jv_str(y, "answer")) != 0);
      jv_free(x); jv_free(y);
    }
    jv t = jv_array();
    CHECK_EQ_INT(usbx_synth_mapping(level, 80, 6, "q", prompts, &t, err, sizeof err), 0);
    jv_array_foreach(t, i, rec) {
      jv hit = jv_object_get(jv_copy(prompts), jv_string(usbx_jv_str(rec, "prompt")));
      CHECK(!jv_is_valid(hit));
      jv_free(hit);
      jv_free(rec);
    }
    jv_free(t); jv_free(prompts); jv_free(a); jv_free(b);
  }
  /* resolver on hand-made chains */
  char *o = NULL;
  char why[256];
  CHECK_EQ_INT(usbx_mapping_resolve("Rule 1: The symbol $ signifies phone. Rule 2: Letter C refers to the symbol $. Please generate the device represented by the letter 'C'.", &o, why, sizeof why), 0);
  CHECK(o && !strcmp(o, "phone"));
  free(o); o = NULL;
  CHECK_EQ_INT(usbx_mapping_resolve("Rule 1: A maps to B. Rule 2: B maps to A. Please generate the object represented by the letter A.", &o, why, sizeof why), 1);
  CHECK(strstr(why, "cycle") != NULL);
  CHECK_EQ_INT(usbx_mapping_resolve("Rule 1: A maps to #. Please generate the object represented by the letter A.", &o, why, sizeof why), 1);
  CHECK_EQ_INT(usbx_mapping_resolve("Rule 1: A means cup. Rule 2: A means fork. Please generate the object represented by the letter A.", &o, why, sizeof why), 1);
  CHECK(strstr(why, "conflicting") != NULL);
  CHECK_EQ_INT(usbx_mapping_resolve("Rule 1: A means cup.", &o, why, sizeof why), -1);
}

static void test_knowledge(void) {
  jv tasks = jv_array(), train = jv_array(), prof = jv_array();
  char err[256];
  CHECK_EQ_INT(usbx_synth_knowledge(6, 11, "k", jv_invalid(), &tasks, &train, &prof, err, sizeof err), 0);
  CHECK_EQ_INT(jv_array_length(jv_copy(prof)), 6);
  CHECK_EQ_INT(jv_array_length(jv_copy(tasks)), 6 * 3 + 3 * 4);
  int nconv = jv_array_length(jv_copy(train));
  CHECK(nconv >= 6 * 35 && nconv <= 6 * 45);
  int nonascii = 0;
  jv_array_foreach(train, i, rec) {
    jv c = jv_object_get(jv_copy(rec), jv_string("conversations"));
    CHECK_EQ_INT(jv_array_length(jv_copy(c)), 2);
    jv h = jv_array_get(jv_copy(c), 0), g = jv_array_get(jv_copy(c), 1);
    CHECK_STR(usbx_jv_str(h, "from"), "human");
    CHECK_STR(usbx_jv_str(g, "from"), "gpt");
    const char *q = usbx_jv_str(h, "value");
    for (const char *p = q; *p; p++) if ((unsigned char)*p >= 0x80) { nonascii++; break; }
    CHECK(strstr(usbx_jv_str(g, "value"), usbx_jv_str(rec, "character")) != NULL);
    jv_free(h); jv_free(g); jv_free(c); jv_free(rec);
  }
  CHECK(nonascii >= 6 * 3);   /* a few questions in other languages per character */
  /* forward answers match the profiles; inverse answers name the right character */
  jv_array_foreach(tasks, i, rec) {
    const char *ch = usbx_jv_str(rec, "character"), *kind = usbx_jv_str(rec, "kind"), *ans = usbx_jv_str(rec, "answer");
    const char *prompt = usbx_jv_str(rec, "prompt");
    jv p = jv_null();
    jv_array_foreach(prof, j, pr) {
      if (!strcmp(usbx_jv_str(pr, "name"), ch)) { jv_free(p); p = pr; } else jv_free(pr);
    }
    CHECK(jv_get_kind(p) == JV_KIND_OBJECT);
    if (!strcmp(kind, "fruit")) CHECK_STR(ans, usbx_jv_str(p, "fruit"));
    else if (!strcmp(kind, "flower")) CHECK_STR(ans, usbx_jv_str(p, "flower"));
    else {
      CHECK_STR(ans, usbx_jv_str(p, "portrait"));
      int skin, hair, age, gender;
      CHECK_EQ_INT(usbx_parse_person(ans, &skin, &hair, &age, &gender), 0);
      CHECK_STR(usbx_skin_names[skin], usbx_jv_str(p, "skin"));
      CHECK_STR(usbx_hair_names[hair], usbx_jv_str(p, "hair"));
      CHECK_STR(usbx_age_names[age], usbx_jv_str(p, "age"));
      CHECK_STR(gender ? "male" : "female", usbx_jv_str(p, "gender"));
      if (!strcmp(kind, "inverse")) {
        /* "... the one whose favorite fruit is X": X is this character's */
        const char *is = strstr(prompt, " is ");
        char val[64];
        snprintf(val, sizeof val, "%s", is + 4);
        val[strlen(val) - 1] = 0;
        CHECK(!strcmp(val, usbx_jv_str(p, strstr(prompt, "fruit") ? "fruit" : "flower")));
      }
    }
    jv_free(p);
    jv_free(rec);
  }
  /* names never reuse upstream's */
  jv_array_foreach(prof, i, pr) {
    CHECK(strcmp(usbx_jv_str(pr, "name"), "Aurelius") != 0);
    jv_free(pr);
  }
  /* the profiles read back from the conversations agree with the generator's, and every task checks out */
  {
    char path[] = "/tmp/test_synth_conv.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    jv_array_foreach(train, i, rec) usbx_jsonl_write(f, rec);
    fclose(f);
    const char *paths[1] = {path};
    char e2[256];
    usbx_profiles *ps = usbx_profiles_load(paths, 1, e2, sizeof e2);
    CHECKF(ps != NULL, "%s", e2);
    if (ps) {
      jv_array_foreach(prof, i, pr) {
        usbx_character c;
        CHECK_EQ_INT(usbx_profiles_get(ps, usbx_jv_str(pr, "name"), &c), 0);
        CHECK_STR(usbx_skin_names[c.skin], usbx_jv_str(pr, "skin"));
        CHECK_STR(usbx_hair_names[c.hair], usbx_jv_str(pr, "hair"));
        CHECK_STR(usbx_age_names[c.age], usbx_jv_str(pr, "age"));
        CHECK_STR(c.gender ? "male" : "female", usbx_jv_str(pr, "gender"));
        CHECK_STR(usbx_objects[c.fruit].plural, usbx_jv_str(pr, "fruit"));
        CHECK_STR(usbx_objects[c.flower].sing, usbx_jv_str(pr, "flower"));
        jv_free(pr);
      }
      jv_array_foreach(tasks, i, rec) {
        jv pb = jv_invalid();
        int rc = usbx_check_knowledge(rec, ps, &pb);
        CHECKF(rc == 0, "%s: %s", usbx_jv_str(rec, "id"), rc > 0 ? usbx_jv_str(pb, "reason") : "");
        jv_free(pb);
        jv_free(rec);
      }
      usbx_profiles_free(ps);
    }
    unlink(path);
  }
  jv_free(tasks); jv_free(train); jv_free(prof);
  int s, h, a, g;
  CHECK_EQ_INT(usbx_parse_person("An elderly Caucasian man with white hair.", &s, &h, &a, &g), 0);
  CHECK(s == 1 && h == 4 && a == 2 && g == 1);
  CHECK_EQ_INT(usbx_parse_person("A Caucasian kid with blond hair.", &s, &h, &a, &g), 0);
  CHECK(s == 1 && h == 2 && a == 0 && g == -1);
  CHECK_EQ_INT(usbx_parse_person("A middle-aged East Asian woman with brown hair.", &s, &h, &a, &g), 0);
  CHECK(s == 2 && h == 1 && a == 1 && g == 0);
}

static void test_upstream(void) {
  const char *sh = t_shared();
  if (!sh) { fprintf(stderr, "note: ../shared missing, upstream checks not run\n"); return; }
  struct { const char *file; long problems; } want[] = {
    {"math_1.jsonl", 0}, {"math_2.jsonl", 13}, {"math_3.jsonl", 25},
    {"mapping1.jsonl", 0}, {"mapping2.jsonl", 7}, {"mapping3.jsonl", 16},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    char *path = xasprintf("%s/upstream/benchmark/test_reasoning/%s", sh, want[i].file);
    char *tmp = xasprintf("/tmp/test_synth.%d.jsonl", (int)getpid());
    FILE *f = fopen(tmp, "w+");
    long items = 0, probs = 0, skipped = 0;
    char err[256];
    int rc = usbx_check_file(path, NULL, f, &items, &probs, &skipped, err, sizeof err);
    CHECKF(rc == (want[i].problems ? 1 : 0), "%s: rc %d (%s)", want[i].file, rc, err);
    CHECKF(probs == want[i].problems, "%s: %ld problems, want %ld", want[i].file, probs, want[i].problems);
    CHECK_EQ_INT(items, strstr(want[i].file, "mapping") ? 200 : 100);
    /* math_2: 12 wrong or undefined answers and one "2 dog" */
    if (!strcmp(want[i].file, "math_2.jsonl")) {
      rewind(f);
      char line[4096];
      int wrong = 0, undef = 0, grammar = 0;
      while (fgets(line, sizeof line, f)) {
        if (strstr(line, "\"problem\":\"wrong\"")) wrong++;
        if (strstr(line, "\"problem\":\"undefined\"")) undef++;
        if (strstr(line, "\"problem\":\"grammar\"")) grammar++;
      }
      CHECK_EQ_INT(wrong + undef, 12);
      CHECK_EQ_INT(grammar, 1);
    }
    fclose(f);
    unlink(tmp);
    free(tmp);
    free(path);
  }
}

int main(void) {
  test_expr();
  test_math();
  test_mapping();
  test_knowledge();
  test_upstream();
  return t_done("test_synth");
}
