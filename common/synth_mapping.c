/* synth_mapping.c — mapping task generator (symbol/letter/digit -> object rule chains) and the
 * chain resolver the checker uses on any mapping prompt, ours or upstream (see synth.h). */
#include "synth.h"
#include "util.h"
#include "jsonl.h"
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------------------------------- */
/* resolver */

typedef struct { char key[16]; char target[96]; int link; } rule;

static const char *const type_words[] = {"symbol", "letter", "number", "digit", "character", "sign", "hashtag", "icon", "mark", NULL};

static const char *skip_ws(const char *s) { while (*s == ' ' || *s == '\t') s++; return s; }
static int starts_word(const char *s, const char *w) {
  size_t n = strlen(w);
  return !strncasecmp(s, w, n) && !isalpha((unsigned char)s[n]);
}
static const char *skip_type_words(const char *s, int *typed) {
  s = skip_ws(s);
  if (starts_word(s, "the")) s = skip_ws(s + 3);
  for (int i = 0; type_words[i]; i++)
    if (starts_word(s, type_words[i])) { s = skip_ws(s + strlen(type_words[i])); if (typed) *typed = 1; break; }
  return s;
}
/* reads a token: 'x' / "x" / bare run up to space; strips a final '.' or ',' from a bare run
 * unless the token is that character alone. *quoted set when quotes were used. */
static const char *read_token(const char *s, char *out, size_t outlen, int *quoted) {
  s = skip_ws(s);
  *quoted = 0;
  size_t k = 0;
  if ((*s == '\'' || *s == '"') && s[1] && s[1] != ' ') {
    char q = *s;
    const char *e = strchr(s + 1, q);
    if (e && e - s - 1 < 15 && e > s + 1) {
      for (const char *p = s + 1; p < e && k + 1 < outlen; p++) out[k++] = *p;
      out[k] = 0;
      *quoted = 1;
      return e + 1;
    }
  }
  const char *p = s;
  while (*p && *p != ' ' && k + 1 < outlen) out[k++] = *p++;
  out[k] = 0;
  while (k > 1 && (out[k - 1] == '.' || out[k - 1] == ',' || out[k - 1] == ':' || out[k - 1] == ';')) out[--k] = 0;
  return p;
}

static const char *const verbs[] = {
  "is associated with", "is linked to", "is mapped to", "is designated for", "is connected to", "is tied to",
  "is equal to", "is the same as", "is for", "is",
  "represents", "represent", "signifies", "refers to", "stands for", "means", "denotes", "maps to", "map to",
  "corresponds to", "symbolizes", "symbolises", "indicates", "points to", "links to", "equals", "equates to",
  "relates to", "translates to", "references", "pertains to", "signs onto", "bonds with", "connects to",
  "leads to", "goes to", "becomes", "codes for", "encodes", "identifies", "matches", NULL};

static int is_key_like(const char *tok) {
  size_t n = strlen(tok);
  if (n == 0) return 0;
  if (n == 1) return 1;
  int digits = 1;
  for (size_t i = 0; i < n; i++) if (!isdigit((unsigned char)tok[i])) digits = 0;
  if (digits) return 1;
  return 0;
}

/* parses "Subject verb target" into r; 0 ok, -1 unparseable */
static int parse_rule(const char *text, rule *r) {
  int typed = 0, quoted = 0;
  const char *s = skip_type_words(text, &typed);
  s = read_token(s, r->key, sizeof r->key, &quoted);
  if (!r->key[0]) return -1;
  s = skip_ws(s);
  int matched = 0;
  for (int i = 0; verbs[i]; i++)
    if (starts_word(s, verbs[i])) { s += strlen(verbs[i]); matched = 1; break; }
  if (!matched) {   /* unknown verb: skip one word and any prepositions */
    while (*s && *s != ' ') s++;
  }
  s = skip_ws(s);
  static const char *const preps[] = {"to", "with", "for", "onto", "as", "by", "into", "of", NULL};
  for (int again = 1; again;) {
    again = 0;
    for (int i = 0; preps[i]; i++)
      if (starts_word(s, preps[i])) { s = skip_ws(s + strlen(preps[i])); again = 1; }
  }
  /* "is a symbol for a phone" */
  static const char *const forms[] = {"a symbol for", "the symbol for", "a sign for", "the sign for", "a code for", "a symbol of", NULL};
  for (int i = 0; forms[i]; i++)
    if (starts_word(s, forms[i])) { s = skip_ws(s + strlen(forms[i])); break; }
  /* target */
  char buf[160];
  snprintf(buf, sizeof buf, "%s", s);
  size_t n = strlen(buf);
  while (n && (buf[n - 1] == '.' || buf[n - 1] == ' ')) buf[--n] = 0;
  if (!n) return -1;
  int ttyped = 0, tquoted = 0;
  const char *t = skip_type_words(buf, &ttyped);
  char tok[32];
  const char *after = read_token(t, tok, sizeof tok, &tquoted);
  after = skip_ws(after);
  for (int i = 0; type_words[i]; i++)
    if (starts_word(after, type_words[i]) && !*skip_ws(after + strlen(type_words[i]))) { after += strlen(after); ttyped = 1; break; }
  if (!*after && (tquoted || ttyped || is_key_like(tok))) {
    snprintf(r->target, sizeof r->target, "%s", tok);
    r->link = 1;
    return 0;
  }
  /* an object phrase: strip article */
  const char *o = skip_ws(buf);
  if (starts_word(o, "a")) o = skip_ws(o + 1);
  else if (starts_word(o, "an")) o = skip_ws(o + 2);
  else if (starts_word(o, "the")) o = skip_ws(o + 3);
  snprintf(r->target, sizeof r->target, "%s", o);
  size_t m = strlen(r->target);
  while (m && (r->target[m - 1] == '\'' || r->target[m - 1] == '"')) r->target[--m] = 0;
  if (r->target[0] == '\'' || r->target[0] == '"') memmove(r->target, r->target + 1, m);
  r->link = 0;
  return r->target[0] ? 0 : -1;
}

int usbx_mapping_resolve(const char *prompt, char **obj, char *why, size_t whylen) {
  char dummy[8];
  if (!why || !whylen) { why = dummy; whylen = sizeof dummy; }
  why[0] = 0;
  *obj = NULL;
  rule rules[32];
  int nr = 0;
  /* split at "Rule N:" */
  const char *p = prompt;
  const char *rstart[33], *tstart[33];
  int ns = 0;
  while ((p = strstr(p, "Rule ")) && ns < 33) {
    const char *q = p + 5;
    if (isdigit((unsigned char)*q)) {
      while (isdigit((unsigned char)*q)) q++;
      if (*q == ':') { rstart[ns] = p; tstart[ns++] = q + 1; }
    }
    p = q;
  }
  if (ns == 0) { snprintf(why, whylen, "no rules found"); return -1; }
  /* the question: the sentence starting with Please/Generate/Draw... after the last rule */
  const char *last = tstart[ns - 1];
  const char *ask = NULL;
  static const char *const askw[] = {"Please ", "Generate ", "Draw ", "Create ", "Show ", "Produce ", "Render ", "Make ", NULL};
  for (int i = 0; askw[i]; i++) {
    const char *a = strstr(last, askw[i]);
    if (a && (!ask || a < ask)) ask = a;
  }
  for (int i = 0; i < ns && nr < 32; i++) {
    const char *b = tstart[i];
    const char *e = i + 1 < ns ? rstart[i + 1] : (ask ? ask : b + strlen(b));
    char text[256];
    size_t len = (size_t)(e - b);
    if (len >= sizeof text) len = sizeof text - 1;
    memcpy(text, b, len);
    text[len] = 0;
    char *t = text;
    while (*t == ' ') t++;
    size_t tl = strlen(t);
    while (tl && (t[tl - 1] == ' ' || t[tl - 1] == '.')) t[--tl] = 0;
    char *which = strstr(t, ", which ");
    char extra[256] = "";
    if (which) {
      *which = 0;
      snprintf(extra, sizeof extra, "%s", which + 8);
    }
    if (parse_rule(t, &rules[nr])) { snprintf(why, whylen, "cannot read rule %d: \"%s\"", i + 1, t); return -1; }
    nr++;
    if (which && nr < 32 && rules[nr - 1].link) {
      /* "'Q' stands for the number 8, which means skateboard": 8 -> skateboard */
      char t2[300];
      snprintf(t2, sizeof t2, "'%s' %s", rules[nr - 1].target, extra);
      if (parse_rule(t2, &rules[nr])) { snprintf(why, whylen, "cannot read rule %d: \"%s\"", i + 1, extra); return -1; }
      nr++;
    }
  }
  if (!ask) { snprintf(why, whylen, "no question (no 'Please generate ...' sentence)"); return -1; }
  /* ask token: the last token of the sentence */
  char askbuf[256];
  snprintf(askbuf, sizeof askbuf, "%s", ask);
  size_t al = strlen(askbuf);
  while (al && (askbuf[al - 1] == ' ' || askbuf[al - 1] == '\n')) askbuf[--al] = 0;
  if (al > 1 && askbuf[al - 1] == '.' && askbuf[al - 2] != ' ') askbuf[--al] = 0;   /* the sentence's full stop */
  else if (al > 2 && askbuf[al - 1] == '.' && askbuf[al - 2] == ' ') askbuf[--al] = 0;
  while (al && askbuf[al - 1] == ' ') askbuf[--al] = 0;
  char key[32];
  {
    char *sp = strrchr(askbuf, ' ');
    const char *tk = sp ? sp + 1 : askbuf;
    int quoted;
    read_token(tk, key, sizeof key, &quoted);
    if (!key[0]) { snprintf(why, whylen, "cannot find the asked symbol"); return -1; }
    if (!strstr(askbuf, "represented") && !strstr(askbuf, "associated") && !strstr(askbuf, "denoted") &&
        !strstr(askbuf, "mapped") && !strstr(askbuf, "by") && !strstr(askbuf, "with") && !strstr(askbuf, "for")) {
      snprintf(why, whylen, "cannot read the question \"%s\"", askbuf);
      return -1;
    }
    if (strstr(askbuf, "generate the represented")) { snprintf(why, whylen, "question names no object kind"); /* still resolvable */ }
  }
  /* conflicts */
  for (int i = 0; i < nr; i++)
    for (int j = i + 1; j < nr; j++)
      if (!strcmp(rules[i].key, rules[j].key) && (rules[i].link != rules[j].link || strcmp(rules[i].target, rules[j].target))) {
        snprintf(why, whylen, "conflicting rules for '%s'", rules[i].key);
        return 1;
      }
  /* follow */
  usbx_buf chain = {0};
  usbx_buf_appendf(&chain, "%s", key);
  char cur[96];
  snprintf(cur, sizeof cur, "%s", key);
  for (int step = 0; step <= nr; step++) {
    int found = -1;
    for (int i = 0; i < nr; i++) if (!strcmp(rules[i].key, cur)) { found = i; break; }
    if (found < 0) {
      snprintf(why, whylen, "'%s' is not defined by any rule (chain %s)", cur, chain.data);
      usbx_buf_free(&chain);
      return 1;
    }
    usbx_buf_appendf(&chain, " -> %s", rules[found].target);
    if (!rules[found].link) {
      *obj = xstrdup(rules[found].target);
      snprintf(why, whylen, "%s", chain.data);
      usbx_buf_free(&chain);
      return 0;
    }
    snprintf(cur, sizeof cur, "%s", rules[found].target);
  }
  snprintf(why, whylen, "cycle in the rules (chain %s)", chain.data);
  usbx_buf_free(&chain);
  return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* generator */

enum { K_LETTER, K_DIGIT, K_SYMBOL };
static const char letters[] = "ABCDEFGHJKLMNPQRSTUVWXYZ";
static const char digits[] = "123456789";
static const char symbols[] = "#$%@&*!?+=~";

static int rint_(usbx_rng *r, int n) { return (int)usbx_rng_below(r, (uint64_t)n); }

static char pick_token(usbx_rng *r, int kind, const char *used) {
  const char *pool = kind == K_LETTER ? letters : kind == K_DIGIT ? digits : symbols;
  int n = (int)strlen(pool);
  for (int tries = 0; tries < 100; tries++) {
    char c = pool[rint_(r, n)];
    if (!strchr(used, c)) return c;
  }
  return 0;
}
static const char *kind_word(int k) { return k == K_LETTER ? "letter" : k == K_DIGIT ? "number" : "symbol"; }

static void subject(usbx_buf *b, usbx_rng *r, int kind, char tok) {
  int style = rint_(r, 4);
  if (style == 0) usbx_buf_appendf(b, "The %s %c", kind_word(kind), tok);
  else if (style == 1) usbx_buf_appendf(b, "%c%s %c", toupper((unsigned char)kind_word(kind)[0]), kind_word(kind) + 1, tok);
  else if (style == 2) usbx_buf_appendf(b, "'%c'", tok);
  else usbx_buf_appendf(b, "The %s '%c'", kind_word(kind), tok);
}
static const char *const obj_verbs[] = {"represents", "stands for", "means", "denotes", "signifies", "symbolizes",
                                        "refers to", "corresponds to", "is associated with"};
static const char *const link_verbs[] = {"maps to", "refers to", "points to", "stands for", "represents",
                                         "links to", "corresponds to", "is linked to"};

static void rule_obj(usbx_buf *b, usbx_rng *r, int kind, char tok, int obj) {
  subject(b, r, kind, tok);
  const char *name = usbx_objects[obj].sing;
  const char *art = strchr("aeiou", name[0]) ? "an " : "a ";
  usbx_buf_appendf(b, " %s %s%s.", obj_verbs[rint_(r, 9)], rint_(r, 2) ? art : "", name);
}
static void rule_link(usbx_buf *b, usbx_rng *r, int kind, char tok, int tkind, char ttok) {
  subject(b, r, kind, tok);
  int st = rint_(r, 3);
  usbx_buf_appendf(b, " %s ", link_verbs[rint_(r, 8)]);
  if (st == 0) usbx_buf_appendf(b, "the %s %c.", kind_word(tkind), ttok);
  else if (st == 1) usbx_buf_appendf(b, "'%c'.", ttok);
  else usbx_buf_appendf(b, "%s %c.", kind_word(tkind), ttok);
}

int usbx_synth_mapping(int level, int n, uint64_t seed, const char *prefix, jv exclude, jv *out,
                       char *err, size_t errlen) {
  if (level < 1 || level > 3) { snprintf(err, errlen, "mapping level must be 1, 2 or 3"); return -1; }
  usbx_rng r;
  usbx_rng_seed(&r, usbx_hash64("mapping", 7, seed ^ ((uint64_t)level << 56) ^ (uint64_t)USBX_SYNTH_VERSION << 48));
  jv seen = jv_object();
  int made = 0;
  long attempts = 0;
  while (made < n && attempts < 200L * (n + 10)) {
    attempts++;
    /* two chains of `level` hops: kinds[0] is where the question starts */
    int kinds[3];
    if (level == 1) kinds[0] = rint_(&r, 3);
    else {
      kinds[0] = K_LETTER;
      for (int h = 1; h < level; h++) {
        do kinds[h] = rint_(&r, 3); while (kinds[h] == kinds[h - 1] || (h == level - 1 && level == 3 && kinds[h] == kinds[h - 2] && rint_(&r, 2)));
      }
    }
    char used[16] = {0};
    char toks[2][3];
    int bad = 0;
    for (int c = 0; c < 2; c++)
      for (int h = 0; h < level; h++) {
        char t = pick_token(&r, kinds[h], used);
        if (!t) bad = 1;
        toks[c][h] = t;
        used[strlen(used)] = t;
      }
    if (bad) continue;
    int o1 = rint_(&r, usbx_nobjects), o2 = -1;
    for (int tries = 0; tries < 200 && o2 < 0; tries++) {
      int c = rint_(&r, usbx_nobjects);
      if (c != o1 && !strcmp(usbx_objects[c].category, usbx_objects[o1].category)) o2 = c;
    }
    if (o2 < 0) continue;
    int objs[2] = {o1, o2};
    /* rules: for each chain, hop h: toks[h] -> toks[h+1] (or the object at the end) */
    usbx_buf rb[6];
    int nrules = 0;
    for (int c = 0; c < 2; c++)
      for (int h = 0; h < level; h++) {
        usbx_buf b = {0};
        if (h == level - 1) rule_obj(&b, &r, kinds[h], toks[c][h], objs[c]);
        else rule_link(&b, &r, kinds[h], toks[c][h], kinds[h + 1], toks[c][h + 1]);
        rb[nrules++] = b;
      }
    for (int i = nrules - 1; i > 0; i--) { int j = rint_(&r, i + 1); usbx_buf t = rb[i]; rb[i] = rb[j]; rb[j] = t; }
    usbx_buf rules = {0};
    for (int i = 0; i < nrules; i++) {
      usbx_buf_appendf(&rules, "%sRule %d: %s", i ? " " : "", i + 1, rb[i].data);
      usbx_buf_free(&rb[i]);
    }
    const char *cat = usbx_objects[o1].category;
    char *prompts[2];
    for (int c = 0; c < 2; c++) {
      int q = rint_(&r, 2);
      prompts[c] = xasprintf("%s Please generate the %s represented by the %s %s%c%s.", rules.data, cat,
                             kind_word(kinds[0]), q ? "'" : "", toks[c][0], q ? "'" : "");
    }
    usbx_buf_free(&rules);
    int dup = 0;
    for (int c = 0; c < 2; c++) {
      jv v = jv_object_get(jv_copy(seen), jv_string(prompts[c]));
      if (jv_is_valid(v)) dup = 1;
      jv_free(v);
      if (jv_get_kind(exclude) == JV_KIND_OBJECT) {
        jv w = jv_object_get(jv_copy(exclude), jv_string(prompts[c]));
        if (jv_is_valid(w)) dup = 1;
        jv_free(w);
      }
    }
    /* verify with the resolver */
    for (int c = 0; c < 2 && !dup; c++) {
      char *o = NULL;
      char why[256];
      if (usbx_mapping_resolve(prompts[c], &o, why, sizeof why) != 0 || !usbx_same_object(o, usbx_objects[objs[c]].sing)) dup = 1;
      free(o);
    }
    if (dup) { free(prompts[0]); free(prompts[1]); continue; }
    made++;
    for (int c = 0; c < 2; c++) {
      seen = jv_object_set(seen, jv_string(prompts[c]), jv_true());
      char *gid = xasprintf("%s-%d", prefix, made);
      char *id = xasprintf("%s_%c", gid, c ? 'B' : 'A');
      jv rec = jv_object();
      rec = usbx_jv_set_str(rec, "id", id);
      rec = usbx_jv_set_str(rec, "task", "mapping");
      rec = usbx_jv_set_num(rec, "level", level);
      rec = usbx_jv_set_str(rec, "group", gid);
      rec = usbx_jv_set_str(rec, "prompt", prompts[c]);
      rec = usbx_jv_set_str(rec, "answer", usbx_objects[objs[c]].sing);
      rec = usbx_jv_set_str(rec, "object", usbx_objects[objs[c]].sing);
      rec = usbx_jv_set_num(rec, "count", 1);
      *out = jv_array_append(*out, rec);
      free(gid); free(id); free(prompts[c]);
    }
  }
  jv_free(seen);
  if (made < n) { snprintf(err, errlen, "could only make %d distinct level-%d mapping groups of %d", made, level, n); return -1; }
  return 0;
}
