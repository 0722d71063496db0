/* synth_math.c — math task generator: random expression trees with exact evaluation, printed in
 * symbolic or worded form, re-checked by parsing the printed text (see synth.h). */
#include "synth.h"
#include "util.h"
#include "jsonl.h"
#include <stdlib.h>
#include <string.h>

enum { N_NUM, N_ADD, N_SUB, N_MUL, N_DIV, N_MOD, N_POW, N_SQRT, N_FLOOR };
typedef struct node { int kind; int64_t v; struct node *a, *b; } node;

typedef struct { node pool[32]; int used; } arena;
static node *mk(arena *ar, int kind, int64_t v, node *a, node *b) {
  if (ar->used >= 32) return NULL;
  node *n = &ar->pool[ar->used++];
  n->kind = kind; n->v = v; n->a = a; n->b = b;
  return n;
}

static int rng_int(usbx_rng *r, int lo, int hi) { return lo + (int)usbx_rng_below(r, (uint64_t)(hi - lo + 1)); }

/* Exact evaluation: every intermediate must be a non-negative integer (FLOOR's argument may be
 * a fraction: num/den kept as a pair).  Returns 0 ok, -1 invalid. */
static int eval_node(const node *n, int64_t *out_n, int64_t *out_d) {
  int64_t an = 0, ad = 1, bn = 0, bd = 1;
  if (n->kind == N_NUM) { *out_n = n->v; *out_d = 1; return 0; }
  if (eval_node(n->a, &an, &ad)) return -1;
  if (n->kind == N_FLOOR) { *out_n = an / ad; *out_d = 1; return 0; }
  if (ad != 1) return -1;
  if (n->kind == N_SQRT) {
    int64_t r = 0;
    while ((r + 1) * (r + 1) <= an) r++;
    if (r * r != an) return -1;
    *out_n = r; *out_d = 1;
    return 0;
  }
  if (eval_node(n->b, &bn, &bd) || bd != 1) return -1;
  int64_t v;
  switch (n->kind) {
  case N_ADD: v = an + bn; break;
  case N_SUB: v = an - bn; break;
  case N_MUL: v = an * bn; break;
  case N_DIV:
    if (bn == 0) return -1;
    if (an % bn) { *out_n = an; *out_d = bn; return 0; }   /* a fraction: only FLOOR may take it */
    v = an / bn;
    break;
  case N_MOD: if (bn <= 0) return -1; v = an % bn; break;
  case N_POW: { v = 1; if (bn < 0 || bn > 6) return -1; for (int i = 0; i < bn; i++) v *= an; break; }
  default: return -1;
  }
  if (v < 0 || v > 100000) return -1;
  *out_n = v; *out_d = 1;
  return 0;
}
static int eval_int(const node *n, int64_t *v) {
  int64_t num, den;
  if (eval_node(n, &num, &den) || den != 1) return -1;
  *v = num;
  return 0;
}

static const int squares[] = {1, 4, 9, 16, 25, 36, 49, 64, 81, 100};

/* A leaf-level operand: a number, √(perfect square) or a small power, as the level allows. */
static node *gen_operand(arena *ar, usbx_rng *r, int fancy) {
  if (fancy) {
    int k = rng_int(r, 0, 9);
    if (k < 3) return mk(ar, N_SQRT, 0, mk(ar, N_NUM, squares[rng_int(r, 0, 9)], NULL, NULL), NULL);
    if (k < 5) {
      int base = rng_int(r, 1, 5);
      int e = base <= 2 ? rng_int(r, 2, 4) : (base == 3 ? rng_int(r, 2, 3) : 2);
      if (rng_int(r, 0, 9) == 0) e = rng_int(r, 0, 1);
      return mk(ar, N_POW, 0, mk(ar, N_NUM, base, NULL, NULL), mk(ar, N_NUM, e, NULL, NULL));
    }
  }
  return mk(ar, N_NUM, rng_int(r, 0, 10) == 0 ? 0 : rng_int(r, 1, 12), NULL, NULL);
}
static int ops_in(const node *n) {
  if (!n || n->kind == N_NUM) return 0;
  return 1 + ops_in(n->a) + ops_in(n->b);
}
static int has_fancy(const node *n) {
  if (!n || n->kind == N_NUM) return 0;
  if (n->kind == N_SQRT || n->kind == N_POW || n->kind == N_MOD || n->kind == N_FLOOR) return 1;
  return has_fancy(n->a) || has_fancy(n->b);
}
static const int binops[] = {N_ADD, N_SUB, N_MUL, N_DIV, N_MOD};

/* Builds an expression with exactly `ops` operations. */
static node *gen_tree(arena *ar, usbx_rng *r, int ops, int level) {
  if (ops <= 0) return mk(ar, N_NUM, rng_int(r, 1, 12), NULL, NULL);
  int fancy = level >= 2;
  if (ops == 1) {
    if (fancy && rng_int(r, 0, 5) == 0) return gen_operand(ar, r, 1);  /* √a or a^b */
    int op = binops[rng_int(r, 0, level >= 2 ? 4 : 3)];
    if (op == N_MOD) return mk(ar, N_MOD, 0, mk(ar, N_NUM, rng_int(r, 2, 20), NULL, NULL), mk(ar, N_NUM, rng_int(r, 2, 9), NULL, NULL));
    return mk(ar, op, 0, mk(ar, N_NUM, rng_int(r, 1, 10), NULL, NULL), mk(ar, N_NUM, rng_int(r, 1, 10), NULL, NULL));
  }
  if (level == 3 && ops == 3 && rng_int(r, 0, 9) == 0) {  /* a / b, then rounded down, ± c */
    node *d = mk(ar, N_DIV, 0, mk(ar, N_NUM, rng_int(r, 5, 20), NULL, NULL), mk(ar, N_NUM, rng_int(r, 2, 6), NULL, NULL));
    node *f = mk(ar, N_FLOOR, 0, d, NULL);
    return mk(ar, rng_int(r, 0, 1) ? N_ADD : N_SUB, 0, f, mk(ar, N_NUM, rng_int(r, 1, 5), NULL, NULL));
  }
  /* split: one side gets a fancy operand (counts as one op when √/^), the rest recursively */
  int op = binops[rng_int(r, 0, 4)];
  if (op == N_MOD) {
    /* (x % m) with x simple, then the remaining ops around it */
    node *m = mk(ar, N_MOD, 0, mk(ar, N_NUM, rng_int(r, 2, 20), NULL, NULL), mk(ar, N_NUM, rng_int(r, 2, 9), NULL, NULL));
    node *rest = gen_tree(ar, r, ops - 2, level);
    int o2 = binops[rng_int(r, 0, 3)];
    return rng_int(r, 0, 3) ? mk(ar, o2, 0, m, rest) : mk(ar, o2, 0, rest, m);
  }
  int left_ops = rng_int(r, 0, ops - 1);
  node *a, *b;
  if (left_ops == 0) a = gen_operand(ar, r, fancy); else a = gen_tree(ar, r, left_ops, level);
  int right_ops = ops - 1 - ops_in(a);
  if (right_ops < 0) return NULL;
  if (right_ops == 0) b = mk(ar, N_NUM, rng_int(r, 1, 10), NULL, NULL);
  else if (right_ops == 1 && fancy && rng_int(r, 0, 1)) b = gen_operand(ar, r, 1);
  else b = gen_tree(ar, r, right_ops, level);
  if (!a || !b) return NULL;
  return mk(ar, op, 0, a, b);
}

/* ---- printing ---- */
static int prec(const node *n) {
  switch (n->kind) {
  case N_ADD: case N_SUB: return 1;
  case N_MUL: case N_DIV: case N_MOD: return 2;
  case N_POW: return 3;
  case N_SQRT: return 4;
  default: return 5;
  }
}
static const char *opsym(int k) {
  switch (k) { case N_ADD: return "+"; case N_SUB: return "-"; case N_MUL: return "*";
  case N_DIV: return "/"; case N_MOD: return "%"; default: return "^"; }
}
static int print_sym(usbx_buf *b, const node *n, usbx_rng *r, int extra_parens) {
  switch (n->kind) {
  case N_NUM: usbx_buf_appendf(b, "%lld", (long long)n->v); return 0;
  case N_SQRT:
    usbx_buf_append(b, "\xe2\x88\x9a", 3);
    if (n->a->kind == N_NUM) return print_sym(b, n->a, r, 0);
    usbx_buf_append(b, "(", 1); print_sym(b, n->a, r, 0); usbx_buf_append(b, ")", 1);
    return 0;
  case N_FLOOR: return -1;
  case N_POW: print_sym(b, n->a, r, 0); usbx_buf_append(b, "^", 1); return print_sym(b, n->b, r, 0);
  default: {
    int p = prec(n);
    int lp = prec(n->a) < p || (extra_parens && n->a->kind >= N_ADD && n->a->kind <= N_MOD && rng_int(r, 0, 2) == 0);
    int rp = prec(n->b) < p || (prec(n->b) == p && n->b->kind >= N_ADD && n->b->kind <= N_MOD);
    if (lp) usbx_buf_append(b, "(", 1);
    if (print_sym(b, n->a, r, extra_parens)) return -1;
    if (lp) usbx_buf_append(b, ")", 1);
    usbx_buf_appendf(b, " %s ", opsym(n->kind));
    if (rp) usbx_buf_append(b, "(", 1);
    if (print_sym(b, n->b, r, extra_parens)) return -1;
    if (rp) usbx_buf_append(b, ")", 1);
    return 0;
  }
  }
}
/* worded operand: number, √n, n squared */
static int print_word_operand(usbx_buf *b, const node *n) {
  if (n->kind == N_NUM) { usbx_buf_appendf(b, "%lld", (long long)n->v); return 0; }
  if (n->kind == N_SQRT && n->a->kind == N_NUM) { usbx_buf_appendf(b, "the square root of %lld", (long long)n->a->v); return 0; }
  if (n->kind == N_POW && n->a->kind == N_NUM && n->b->kind == N_NUM) {
    if (n->b->v == 2) usbx_buf_appendf(b, "%lld squared", (long long)n->a->v);
    else if (n->b->v == 3) usbx_buf_appendf(b, "%lld cubed", (long long)n->a->v);
    else usbx_buf_appendf(b, "%lld to the power of %lld", (long long)n->a->v, (long long)n->b->v);
    return 0;
  }
  return -1;
}
static const char *opword(int k, usbx_rng *r) {
  switch (k) {
  case N_ADD: return "plus";
  case N_SUB: return "minus";
  case N_MUL: return rng_int(r, 0, 1) ? "times" : "multiplied by";
  case N_DIV: return "divided by";
  default: return "modulo";
  }
}
static const char *thenword(int k) {
  switch (k) {
  case N_ADD: return "then add";
  case N_SUB: return "then subtract";
  case N_MUL: return "then multiply by";
  case N_DIV: return "then divide by";
  default: return NULL;
  }
}
/* Worded form of a left-deep tree; "then" where the left side binds less tightly. */
static int print_word(usbx_buf *b, const node *n, usbx_rng *r) {
  if (print_word_operand(b, n) == 0) return 0;
  if (n->kind == N_FLOOR) {
    if (print_word(b, n->a, r)) return -1;
    usbx_buf_appendf(b, ", then rounded down");
    return 0;
  }
  if (n->kind < N_ADD || n->kind > N_MOD) return -1;
  if (n->b->kind != N_NUM && n->b->kind != N_SQRT && n->b->kind != N_POW) return -1;
  if (print_word(b, n->a, r)) return -1;
  int need_then = n->a->kind == N_FLOOR || (n->a->kind != N_NUM && prec(n->a) < prec(n));
  if (n->a->kind == N_FLOOR) {
    if (n->kind != N_ADD && n->kind != N_SUB) return -1;
    usbx_buf_appendf(b, ", %s ", opword(n->kind, r));
  } else if (need_then) {
    const char *t = thenword(n->kind);
    if (!t) return -1;
    usbx_buf_appendf(b, ", %s ", t);
  } else {
    usbx_buf_appendf(b, " %s ", opword(n->kind, r));
  }
  return print_word_operand(b, n->b);
}

/* prompt templates: {P} plural object, {E} expression */
static const char *const templates[] = {
  "Generate as many %P as the result of %E.",
  "Produce a number of %P equal to the result of %E.",
  "Show the number of %P that matches the outcome of %E.",
  "Create the same quantity of %P as %E equals.",
  "Provide the same number of %P as calculated by %E.",
  "Generate as many %P as %E.",
  "Create as many %P as %E.",
  "Give the same quantity of %P as %E.",
  "Show the number of %P that equals %E.",
  "Draw as many %P as the value of %E.",
  "Make a picture with as many %P as %E.",
  "Paint the number of %P given by %E.",
  "Render a quantity of %P equal to %E.",
  "Illustrate as many %P as the answer to %E.",
  "Create an image showing the number of %P equal to %E.",
  "Display as many %P as the result of %E.",
};
static const int ntemplates = (int)(sizeof templates / sizeof templates[0]);

static char *fill(const char *tpl, const char *obj, const char *expr) {
  usbx_buf b = {0};
  for (const char *p = tpl; *p; p++) {
    if (p[0] == '%' && p[1] == 'P') { usbx_buf_appendf(&b, "%s", obj); p++; }
    else if (p[0] == '%' && p[1] == 'E') { usbx_buf_appendf(&b, "%s", expr); p++; }
    else usbx_buf_append(&b, p, 1);
  }
  return b.data;
}

static bool excluded(jv exclude, jv seen, const char *prompt) {
  if (jv_is_valid(exclude) && jv_get_kind(exclude) == JV_KIND_OBJECT) {
    jv v = jv_object_get(jv_copy(exclude), jv_string(prompt));
    bool hit = jv_is_valid(v);
    jv_free(v);
    if (hit) return true;
  }
  jv v = jv_object_get(jv_copy(seen), jv_string(prompt));
  bool hit = jv_is_valid(v);
  jv_free(v);
  return hit;
}

int usbx_synth_math(int level, int n, uint64_t seed, const char *prefix, jv exclude, jv *out,
                    char *err, size_t errlen) {
  if (level < 1 || level > 3) { snprintf(err, errlen, "math level must be 1, 2 or 3"); return -1; }
  usbx_rng r;
  uint64_t s = usbx_hash64("math", 4, seed ^ ((uint64_t)level << 56) ^ (uint64_t)USBX_SYNTH_VERSION << 48);
  usbx_rng_seed(&r, s);
  int maxv = level == 3 ? 5 : 4;
  int want_ops = level;
  jv seen = jv_object();
  int made = 0;
  long attempts = 0, max_attempts = 2000L * (n + 10);
  int target = 1 + (int)usbx_rng_below(&r, (uint64_t)maxv);  /* uniform answers */
  while (made < n && attempts < max_attempts) {
    attempts++;
    arena ar = {.used = 0};
    node *t = gen_tree(&ar, &r, want_ops, level);
    if (!t || ops_in(t) != want_ops) continue;
    if (level >= 2 && !has_fancy(t) && rng_int(&r, 0, 4)) continue;   /* mostly √, ^, % */
    int64_t v;
    if (eval_int(t, &v) || v != target) continue;
    int obj = (int)usbx_rng_below(&r, (uint64_t)usbx_nobjects);
    usbx_buf e = {0};
    int worded = level == 3 && (t->kind == N_ADD || t->kind == N_SUB || t->kind == N_MUL || t->kind == N_DIV) &&
                 rng_int(&r, 0, 2) == 0;
    int has_floor = 0;
    for (int i = 0; i < ar.used; i++) if (ar.pool[i].kind == N_FLOOR) has_floor = 1;
    if (has_floor) worded = 1;
    int rc = worded ? print_word(&e, t, &r) : print_sym(&e, t, &r, level == 3);
    if (rc) {
      usbx_buf_free(&e);
      if (has_floor) continue;
      rc = print_sym(&e, t, &r, level == 3);
      if (rc) { usbx_buf_free(&e); continue; }
    }
    /* the printed text must evaluate to the same value with the checker's evaluator */
    int64_t num, den;
    char why[128];
    if (usbx_expr_eval(e.data, &num, &den, why, sizeof why) != 0 || den != 1 || num != v) {
      usbx_buf_free(&e);
      continue;
    }
    const char *tpl = templates[usbx_rng_below(&r, (uint64_t)ntemplates)];
    char *prompt = fill(tpl, usbx_objects[obj].plural, e.data);
    if (excluded(exclude, seen, prompt)) { free(prompt); usbx_buf_free(&e); continue; }
    seen = jv_object_set(seen, jv_string(prompt), jv_true());
    made++;
    target = 1 + (int)usbx_rng_below(&r, (uint64_t)maxv);
    char *id = xasprintf("%s-%d", prefix, made);
    char *phrase = usbx_count_phrase((int)v, obj);
    char *ans = xasprintf("%s.", phrase);
    jv rec = jv_object();
    rec = usbx_jv_set_str(rec, "id", id);
    rec = usbx_jv_set_str(rec, "task", "math");
    rec = usbx_jv_set_num(rec, "level", level);
    rec = usbx_jv_set_str(rec, "prompt", prompt);
    rec = usbx_jv_set_str(rec, "answer", ans);
    rec = usbx_jv_set_num(rec, "count", (double)v);
    rec = usbx_jv_set_str(rec, "object", usbx_objects[obj].sing);
    rec = usbx_jv_set_str(rec, "expression", e.data);
    *out = jv_array_append(*out, rec);
    free(id); free(phrase); free(ans); free(prompt);
    usbx_buf_free(&e);
  }
  jv_free(seen);
  if (made < n) {
    snprintf(err, errlen, "could only make %d distinct level-%d math tasks of %d (after exclusions)", made, level, n);
    return -1;
  }
  return 0;
}
