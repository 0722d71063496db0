/* synth.c — object catalogue, name helpers and the exact arithmetic evaluator (see synth.h). */
#include "synth.h"
#include "util.h"
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Every everyday object the generators use.  The renderer gives index i a unique icon, so
 * appending is safe; reordering changes the icons (bump USBX_SYNTH_VERSION). */
const usbx_object usbx_objects[] = {
  {"cup", "cups", 0, "kitchen item"},        {"spoon", "spoons", 0, "utensil"},
  {"fork", "forks", 0, "utensil"},           {"plate", "plates", 0, "kitchen item"},
  {"bowl", "bowls", 0, "kitchen item"},      {"mug", "mugs", 0, "kitchen item"},
  {"bottle", "bottles", 0, "kitchen item"},  {"kettle", "kettles", 0, "kitchen item"},
  {"chair", "chairs", 0, "furniture item"},  {"table", "tables", 0, "furniture item"},
  {"lamp", "lamps", 0, "household item"},    {"clock", "clocks", 0, "household item"},
  {"pillow", "pillows", 0, "household item"},{"blanket", "blankets", 0, "household item"},
  {"towel", "towels", 0, "household item"},  {"vase", "vases", 0, "household item"},
  {"candle", "candles", 0, "household item"},{"key", "keys", 0, "household item"},
  {"book", "books", 0, "stationery item"},   {"pen", "pens", 0, "stationery item"},
  {"pencil", "pencils", 0, "stationery item"},{"eraser", "erasers", 0, "stationery item"},
  {"notebook", "notebooks", 0, "stationery item"},{"crayon", "crayons", 0, "stationery item"},
  {"marker", "markers", 0, "stationery item"},{"envelope", "envelopes", 0, "stationery item"},
  {"hat", "hats", 0, "clothing item"},       {"shirt", "shirts", 0, "clothing item"},
  {"sock", "socks", 0, "clothing item"},     {"shoe", "shoes", 0, "clothing item"},
  {"scarf", "scarves", 0, "clothing item"},  {"glove", "gloves", 0, "clothing item"},
  {"ball", "balls", 0, "toy"},               {"kite", "kites", 0, "toy"},
  {"marble", "marbles", 0, "toy"},           {"doll", "dolls", 0, "toy"},
  {"teddy bear", "teddy bears", 0, "toy"},   {"balloon", "balloons", 0, "toy"},
  {"puzzle", "puzzles", 0, "toy"},           {"block", "blocks", 0, "toy"},
  {"phone", "phones", 0, "electronic device"},{"laptop", "laptops", 0, "electronic device"},
  {"tablet", "tablets", 0, "electronic device"},{"camera", "cameras", 0, "electronic device"},
  {"radio", "radios", 0, "electronic device"},{"watch", "watches", 0, "electronic device"},
  {"guitar", "guitars", 0, "musical instrument"},{"drum", "drums", 0, "musical instrument"},
  {"violin", "violins", 0, "musical instrument"},{"trumpet", "trumpets", 0, "musical instrument"},
  {"cookie", "cookies", 0, "food item"},     {"cupcake", "cupcakes", 0, "food item"},
  {"sandwich", "sandwiches", 0, "food item"},{"lollipop", "lollipops", 0, "food item"},
  {"candy", "candies", 0, "food item"},      {"egg", "eggs", 0, "food item"},
  {"dog", "dogs", 0, "animal"},              {"cat", "cats", 0, "animal"},
  {"kitten", "kittens", 0, "animal"},        {"duck", "ducks", 0, "animal"},
  {"frog", "frogs", 0, "animal"},            {"fish", "fish", 0, "animal"},
  {"mouse", "mice", 0, "animal"},            {"horse", "horses", 0, "animal"},
  {"car", "cars", 0, "vehicle"},             {"bus", "buses", 0, "vehicle"},
  {"bicycle", "bicycles", 0, "vehicle"},     {"boat", "boats", 0, "vehicle"},
  {"umbrella", "umbrellas", 0, "accessory"}, {"bag", "bags", 0, "accessory"},
  {"basket", "baskets", 0, "accessory"},     {"box", "boxes", 0, "accessory"},
  {"knife", "knives", 0, "utensil"},         {"leaf", "leaves", 0, "nature object"},
  {"star", "stars", 0, "celestial body"},    {"moon", "moons", 0, "celestial body"},
  /* fruits */
  {"apple", "apples", 1, "fruit"},           {"banana", "bananas", 1, "fruit"},
  {"orange", "oranges", 1, "fruit"},         {"grape", "grapes", 1, "fruit"},
  {"peach", "peaches", 1, "fruit"},          {"strawberry", "strawberries", 1, "fruit"},
  {"watermelon", "watermelons", 1, "fruit"}, {"lemon", "lemons", 1, "fruit"},
  {"pear", "pears", 1, "fruit"},             {"cherry", "cherries", 1, "fruit"},
  {"kiwi", "kiwis", 1, "fruit"},             {"mango", "mangoes", 1, "fruit"},
  {"plum", "plums", 1, "fruit"},             {"pineapple", "pineapples", 1, "fruit"},
  {"lime", "limes", 1, "fruit"},             {"blueberry", "blueberries", 1, "fruit"},
  /* flowers */
  {"rose", "roses", 2, "flower"},            {"tulip", "tulips", 2, "flower"},
  {"daisy", "daisies", 2, "flower"},         {"lily", "lilies", 2, "flower"},
  {"sunflower", "sunflowers", 2, "flower"},  {"orchid", "orchids", 2, "flower"},
  {"carnation", "carnations", 2, "flower"},  {"lavender", "lavenders", 2, "flower"},
  {"peony", "peonies", 2, "flower"},         {"iris", "irises", 2, "flower"},
  {"daffodil", "daffodils", 2, "flower"},    {"poppy", "poppies", 2, "flower"},
  /* more everyday objects (appended: earlier icons stay as they are) */
  {"rug", "rugs", 0, "household item"},     {"tray", "trays", 0, "kitchen item"},
  {"ribbon", "ribbons", 0, "accessory"},     {"lantern", "lanterns", 0, "household item"},
  {"map", "maps", 0, "stationery item"},     {"muffin", "muffins", 0, "food item"},
  {"napkin", "napkins", 0, "kitchen item"},  {"pan", "pans", 0, "kitchen item"},
  {"pot", "pots", 0, "kitchen item"},        {"puppy", "puppies", 0, "animal"},
  {"rabbit", "rabbits", 0, "animal"},        {"ring", "rings", 0, "accessory"},
  {"tie", "ties", 0, "clothing item"},       {"belt", "belts", 0, "clothing item"},
  {"card", "cards", 0, "toy"},               {"cube", "cubes", 0, "toy"},
  {"curtain", "curtains", 0, "household item"},{"elephant", "elephants", 0, "animal"},
  {"jacket", "jackets", 0, "clothing item"}, {"stamp", "stamps", 0, "stationery item"},
  {"sticker", "stickers", 0, "stationery item"},{"scroll", "scrolls", 0, "stationery item"},
  {"brush", "brushes", 0, "household item"}, {"tiger", "tigers", 0, "animal"},
  {"lamb", "lambs", 0, "animal"},            {"cone", "cones", 0, "toy"},
  {"shovel", "shovels", 0, "household item"},{"toy", "toys", 0, "toy"},
  {"bike", "bikes", 0, "vehicle"},           {"desk", "desks", 0, "furniture item"},
  {"sofa", "sofas", 0, "furniture item"},    {"mirror", "mirrors", 0, "household item"},
  {"piano", "pianos", 0, "musical instrument"},{"backpack", "backpacks", 0, "accessory"},
  {"tree", "trees", 0, "nature object"},     {"bird", "birds", 0, "animal"},
  {"turtle", "turtles", 0, "animal"},        {"hammer", "hammers", 0, "household item"},
  {"suitcase", "suitcases", 0, "accessory"}, {"pizza", "pizzas", 0, "food item"},
};
const int usbx_nobjects = (int)(sizeof usbx_objects / sizeof usbx_objects[0]);

char *usbx_norm_word(char *s) {
  char *p = s;
  while (*p == ' ' || *p == '\t' || *p == '\'' || *p == '"') p++;
  if (p != s) memmove(s, p, strlen(p) + 1);
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '.' || s[n - 1] == '\t' || s[n - 1] == '\n' ||
               s[n - 1] == '\r' || s[n - 1] == '\'' || s[n - 1] == '"' || s[n - 1] == '!'))
    s[--n] = 0;
  for (char *q = s; *q; q++) *q = (char)tolower((unsigned char)*q);
  return s;
}

static const char *skip_article(const char *s) {
  if (!strncasecmp(s, "a ", 2)) return s + 2;
  if (!strncasecmp(s, "an ", 3)) return s + 3;
  if (!strncasecmp(s, "the ", 4)) return s + 4;
  return s;
}

int usbx_object_find(const char *name, bool *is_plural) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s", name);
  usbx_norm_word(buf);
  const char *s = skip_article(buf);
  for (int i = 0; i < usbx_nobjects; i++) {
    if (!strcmp(s, usbx_objects[i].sing)) { if (is_plural) *is_plural = false; return i; }
    if (!strcmp(s, usbx_objects[i].plural)) { if (is_plural) *is_plural = true; return i; }
  }
  return -1;
}

char *usbx_count_phrase(int n, int obj) {
  return xasprintf("%d %s", n, n == 1 ? usbx_objects[obj].sing : usbx_objects[obj].plural);
}

int usbx_parse_count_answer(const char *ans, int *count, int *obj, char **noun) {
  const char *p = ans;
  while (*p == ' ') p++;
  if (!isdigit((unsigned char)*p)) return -1;
  char *end;
  long n = strtol(p, &end, 10);
  if (n < 0 || n > 1000000) return -1;
  *count = (int)n;
  char *w = xstrdup(end);
  usbx_norm_word(w);
  *obj = usbx_object_find(w, NULL);
  if (noun) *noun = w; else free(w);
  return 0;
}

/* crude singular of an unknown noun */
static void singularise(char *s) {
  size_t n = strlen(s);
  if (n > 4 && !strcmp(s + n - 3, "ies")) { strcpy(s + n - 3, "y"); return; }
  if (n > 3 && (!strcmp(s + n - 4, "ches") || !strcmp(s + n - 4, "shes") || !strcmp(s + n - 3, "xes") ||
                !strcmp(s + n - 3, "ses"))) { s[n - 2] = 0; return; }
  if (n > 2 && s[n - 1] == 's' && s[n - 2] != 's') s[n - 1] = 0;
}

bool usbx_same_object(const char *a, const char *b) {
  char x[160], y[160];
  snprintf(x, sizeof x, "%s", a);
  snprintf(y, sizeof y, "%s", b);
  usbx_norm_word(x);
  usbx_norm_word(y);
  const char *xs = skip_article(x), *ys = skip_article(y);
  if (!*xs || !*ys) return false;
  if (!strcmp(xs, ys)) return true;
  int i = usbx_object_find(xs, NULL), j = usbx_object_find(ys, NULL);
  if (i >= 0 || j >= 0) return i == j;
  char u[160], v[160];
  snprintf(u, sizeof u, "%s", xs);
  snprintf(v, sizeof v, "%s", ys);
  singularise(u);
  singularise(v);
  return !strcmp(u, v);
}

/* ------------------------------------------------------------------------------------------ */
/* exact rationals */
typedef struct { int64_t n, d; } rat;

static int64_t gcd64(int64_t a, int64_t b) {
  if (a < 0) a = -a;
  if (b < 0) b = -b;
  while (b) { int64_t t = a % b; a = b; b = t; }
  return a ? a : 1;
}
static int rat_make(int64_t n, int64_t d, rat *r) {
  if (d == 0) return -1;
  if (d < 0) { if (n == INT64_MIN || d == INT64_MIN) return -1; n = -n; d = -d; }
  int64_t g = gcd64(n, d);
  r->n = n / g;
  r->d = d / g;
  return 0;
}
static int rat_add(rat a, rat b, int sign, rat *r) {
  int64_t x, y, z, d;
  if (__builtin_mul_overflow(a.n, b.d, &x) || __builtin_mul_overflow(b.n, a.d, &y) ||
      __builtin_mul_overflow(a.d, b.d, &d)) return -1;
  if (sign < 0 ? __builtin_sub_overflow(x, y, &z) : __builtin_add_overflow(x, y, &z)) return -1;
  return rat_make(z, d, r);
}
static int rat_mul(rat a, rat b, rat *r) {
  int64_t n, d;
  if (__builtin_mul_overflow(a.n, b.n, &n) || __builtin_mul_overflow(a.d, b.d, &d)) return -1;
  return rat_make(n, d, r);
}
static int64_t isqrt64(int64_t v) {
  if (v < 0) return -1;
  int64_t r = (int64_t)__builtin_sqrt((double)v);
  while (r > 0 && r * r > v) r--;
  while ((r + 1) * (r + 1) <= v) r++;
  return r;
}

/* ------------------------------------------------------------------------------------------ */
/* tokens */
enum { T_END, T_NUM, T_OP, T_SQRT, T_LP, T_RP, T_SQ, T_CUBE, T_THEN, T_FLOOR, T_VAR };
typedef struct { int kind; int64_t v; char op; char var[16]; } tok;

typedef struct {
  tok *t;
  int n, cap, pos;
  char *why;
  size_t whylen;
  int status;   /* 0 ok, 1 undefined, -1 parse error */
  struct { char name[16]; int64_t v; } vars[8];
  int nvars;
} parser;

static void push(parser *p, tok t) {
  if (p->n == p->cap) { p->cap = p->cap ? p->cap * 2 : 32; p->t = xrealloc(p->t, (size_t)p->cap * sizeof(tok)); }
  p->t[p->n++] = t;
}
static void fail(parser *p, int status, const char *msg) {
  if (p->status == 0) {
    p->status = status;
    snprintf(p->why, p->whylen, "%s", msg);
  }
}

/* multiword phrases, matched case-insensitively at a word boundary (longest first) */
static const struct { const char *w; int kind; char op; } phrases[] = {
  {"the square root of", T_SQRT, 0}, {"square root of", T_SQRT, 0}, {"the root of", T_SQRT, 0},
  {"root of", T_SQRT, 0}, {"take the square root of", T_SQRT, 0},
  {"multiplied by", T_OP, '*'}, {"multiply by", T_OP, '*'}, {"times", T_OP, '*'},
  {"divided by", T_OP, '/'}, {"divide by", T_OP, '/'}, {"over", T_OP, '/'},
  {"to the power of", T_OP, '^'}, {"raised to the power of", T_OP, '^'}, {"raised to", T_OP, '^'},
  {"modulo", T_OP, '%'}, {"mod", T_OP, '%'},
  {"plus", T_OP, '+'}, {"add", T_OP, '+'}, {"minus", T_OP, '-'}, {"subtract", T_OP, '-'},
  {"squared", T_SQ, 0}, {"cubed", T_CUBE, 0},
  {"rounded down", T_FLOOR, 0}, {"round down", T_FLOOR, 0}, {"round it down", T_FLOOR, 0},
  {"then", T_THEN, 0}, {"and then", T_THEN, 0},
};

static int word_match(const char *s, const char *w) {
  size_t n = strlen(w);
  if (strncasecmp(s, w, n)) return 0;
  if (isalpha((unsigned char)s[n])) return 0;
  return (int)n;
}

static void tokenize(parser *p, const char *s) {
  /* where-clause first: "... where M = 1 (and N = 2)" */
  const char *wh = NULL;
  for (const char *q = s; *q; q++)
    if ((q == s || !isalpha((unsigned char)q[-1])) && word_match(q, "where")) { wh = q; break; }
  if (wh) {
    const char *q = wh + 5;
    while (*q) {
      while (*q == ' ' || *q == ',') q++;
      if (word_match(q, "and")) { q += 3; continue; }
      if (!isalpha((unsigned char)*q)) break;
      char name[16]; int k = 0;
      while (isalnum((unsigned char)*q) && k < 15) name[k++] = *q++;
      name[k] = 0;
      while (*q == ' ') q++;
      if (*q != '=') { fail(p, -1, "malformed where-clause"); return; }
      q++;
      while (*q == ' ') q++;
      char *e;
      long long v = strtoll(q, &e, 10);
      if (e == q) { fail(p, -1, "malformed where-clause"); return; }
      q = e;
      if (p->nvars < 8) { snprintf(p->vars[p->nvars].name, 16, "%s", name); p->vars[p->nvars++].v = v; }
      while (*q == ' ') q++;
      if (*q == '.') q++;
    }
    while (*q == ' ' || *q == '.') q++;
    if (*q) { fail(p, -1, "text after the where-clause"); return; }
  }
  const char *end = wh ? wh : s + strlen(s);
  const char *q = s;
  while (q < end) {
    unsigned char c = (unsigned char)*q;
    if (c == ' ' || c == '\t' || c == '\n') { q++; continue; }
    if (c == ',') {  /* ", then" / ", rounded down" are handled by their words; a bare comma is a pause */
      q++;
      continue;
    }
    if (isdigit(c)) {
      char *e;
      errno = 0;
      long long v = strtoll(q, &e, 10);
      if (errno) { fail(p, 1, "number too large"); return; }
      if (*e == '.' && isdigit((unsigned char)e[1])) { fail(p, -1, "decimal numbers are not supported"); return; }
      tok t = {T_NUM, v, 0, ""};
      push(p, t);
      q = e;
      continue;
    }
    if (!strncmp(q, "\xe2\x88\x9a", 3)) { tok t = {T_SQRT, 0, 0, ""}; push(p, t); q += 3; continue; }   /* √ */
    if (!strncmp(q, "\xc2\xb2", 2)) { tok t = {T_SQ, 0, 0, ""}; push(p, t); q += 2; continue; }        /* ² */
    if (!strncmp(q, "\xc2\xb3", 2)) { tok t = {T_CUBE, 0, 0, ""}; push(p, t); q += 2; continue; }      /* ³ */
    if (!strncmp(q, "\xc3\x97", 2)) { tok t = {T_OP, 0, '*', ""}; push(p, t); q += 2; continue; }      /* × */
    if (!strncmp(q, "\xc3\xb7", 2)) { tok t = {T_OP, 0, '/', ""}; push(p, t); q += 2; continue; }      /* ÷ */
    if (!strncmp(q, "\xe2\x88\x92", 3)) { tok t = {T_OP, 0, '-', ""}; push(p, t); q += 3; continue; }  /* − */
    if (!strncmp(q, "**", 2)) { tok t = {T_OP, 0, '^', ""}; push(p, t); q += 2; continue; }
    if (strchr("+-*/%^", c)) { tok t = {T_OP, 0, (char)c, ""}; push(p, t); q++; continue; }
    if (c == ':') { tok t = {T_OP, 0, '/', ""}; push(p, t); q++; continue; }
    if (c == '(' || c == '[') { tok t = {T_LP, 0, 0, ""}; push(p, t); q++; continue; }
    if (c == ')' || c == ']') { tok t = {T_RP, 0, 0, ""}; push(p, t); q++; continue; }
    if (c == '.' ) { q++; continue; }
    if (isalpha(c)) {
      int best = 0, bi = -1;
      for (size_t i = 0; i < sizeof phrases / sizeof phrases[0]; i++) {
        int m = word_match(q, phrases[i].w);
        if (m > best) { best = m; bi = (int)i; }
      }
      if (bi >= 0) {
        tok t = {phrases[bi].kind, 0, phrases[bi].op, ""};
        push(p, t);
        q += best;
        continue;
      }
      /* filler words allowed inside worded expressions */
      static const char *const filler[] = {"and", "it", "the", "result", "then", "of", "by", "equals", NULL};
      int skipped = 0;
      for (int i = 0; filler[i]; i++) {
        int m = word_match(q, filler[i]);
        if (m) { q += m; skipped = 1; break; }
      }
      if (skipped) continue;
      /* variable (from a where-clause) or 'x' as times */
      char name[16]; int k = 0;
      const char *r = q;
      while (isalnum((unsigned char)*r) && k < 15) name[k++] = *r++;
      name[k] = 0;
      if (!isalnum((unsigned char)*r)) {
        for (int i = 0; i < p->nvars; i++)
          if (!strcmp(p->vars[i].name, name)) {
            tok t = {T_VAR, p->vars[i].v, 0, ""};
            snprintf(t.var, sizeof t.var, "%s", name);
            push(p, t);
            q = r;
            goto next;
          }
        if (!strcmp(name, "x")) { tok t = {T_OP, 0, '*', ""}; push(p, t); q = r; goto next; }
      }
      {
        char msg[96];
        snprintf(msg, sizeof msg, "unknown word '%.*s'", (int)strcspn(q, " ,.()"), q);
        fail(p, -1, msg);
        return;
      }
    next:
      continue;
    }
    char msg[64];
    snprintf(msg, sizeof msg, "unexpected character '%c'", c);
    fail(p, -1, msg);
    return;
  }
  tok t = {T_END, 0, 0, ""};
  push(p, t);
}

static tok *peek(parser *p) { return &p->t[p->pos]; }
static rat parse_sum(parser *p);

static rat zero(void) { rat r = {0, 1}; return r; }

static rat do_pow(parser *p, rat b, rat e) {
  if (e.d != 1) { fail(p, 1, "non-integer exponent"); return zero(); }
  if (e.n > 62 || e.n < -62) { fail(p, 1, "exponent too large"); return zero(); }
  rat r = {1, 1};
  int64_t k = e.n < 0 ? -e.n : e.n;
  for (int64_t i = 0; i < k; i++)
    if (rat_mul(r, b, &r)) { fail(p, 1, "overflow in power"); return zero(); }
  if (e.n < 0) {
    if (r.n == 0) { fail(p, 1, "zero to a negative power"); return zero(); }
    rat_make(r.d, r.n, &r);
  }
  return r;
}

static rat do_sqrt(parser *p, rat v) {
  if (v.n < 0) { fail(p, 1, "square root of a negative number"); return zero(); }
  int64_t a = isqrt64(v.n), b = isqrt64(v.d);
  if (a * a != v.n || b * b != v.d) {
    char msg[96];
    snprintf(msg, sizeof msg, "square root of %lld%s%s is irrational", (long long)v.n, v.d != 1 ? "/" : "",
             v.d != 1 ? "..." : "");
    fail(p, 1, msg);
    return zero();
  }
  rat r = {a, b};
  return r;
}

/* primary := NUM | VAR | ( sum ) | √ primary-with-postfix ; postfix: ² ³ squared cubed */
static rat parse_unary(parser *p);
static rat parse_primary(parser *p) {
  tok *t = peek(p);
  rat r = zero();
  if (t->kind == T_NUM || t->kind == T_VAR) { p->pos++; r.n = t->v; r.d = 1; }
  else if (t->kind == T_LP) {
    p->pos++;
    r = parse_sum(p);
    if (peek(p)->kind != T_RP) { fail(p, -1, "missing ')'"); return r; }
    p->pos++;
  } else if (t->kind == T_SQRT) {
    p->pos++;
    rat v = parse_unary(p);   /* √16 / 4 = 4 / 4; √(M² + 9); the square root of 4 squared = √16 */
    if (p->status) return v;
    return do_sqrt(p, v);
  } else {
    fail(p, -1, t->kind == T_END ? "expression ends too early" : "expected a number");
    return r;
  }
  for (;;) {
    t = peek(p);
    if (t->kind == T_SQ) { p->pos++; rat e = {2, 1}; r = do_pow(p, r, e); }
    else if (t->kind == T_CUBE) { p->pos++; rat e = {3, 1}; r = do_pow(p, r, e); }
    else break;
  }
  return r;
}
/* power := primary [^ unary] (right associative) */
static rat parse_power(parser *p) {
  rat b = parse_primary(p);
  if (p->status) return b;
  if (peek(p)->kind == T_OP && peek(p)->op == '^') {
    p->pos++;
    rat e = parse_unary(p);
    if (p->status) return b;
    return do_pow(p, b, e);
  }
  return b;
}
static rat parse_unary(parser *p) {
  if (peek(p)->kind == T_OP && peek(p)->op == '-') {
    p->pos++;
    rat v = parse_unary(p);
    v.n = -v.n;
    return v;
  }
  if (peek(p)->kind == T_OP && peek(p)->op == '+') { p->pos++; return parse_unary(p); }
  return parse_power(p);
}
static rat binop(parser *p, rat a, char op, rat b) {
  rat r = zero();
  switch (op) {
  case '+': if (rat_add(a, b, 1, &r)) fail(p, 1, "overflow"); break;
  case '-': if (rat_add(a, b, -1, &r)) fail(p, 1, "overflow"); break;
  case '*': if (rat_mul(a, b, &r)) fail(p, 1, "overflow"); break;
  case '/':
    if (b.n == 0) { fail(p, 1, "division by zero"); break; }
    { rat inv; rat_make(b.d, b.n, &inv); if (rat_mul(a, inv, &r)) fail(p, 1, "overflow"); }
    break;
  case '%':
    if (a.d != 1 || b.d != 1) { fail(p, 1, "remainder of a non-integer"); break; }
    if (b.n == 0) { fail(p, 1, "remainder by zero"); break; }
    { int64_t m = a.n % b.n; if (m != 0 && ((m < 0) != (b.n < 0))) m += b.n; r.n = m; r.d = 1; }
    break;
  case '^': r = do_pow(p, a, b); break;
  default: fail(p, -1, "unknown operator");
  }
  return r;
}
/* one left-associative precedence level: operand { op operand } with op in ops */
static rat parse_level(parser *p, const char *ops, rat (*operand)(parser *)) {
  rat a = operand(p);
  while (!p->status && peek(p)->kind == T_OP && strchr(ops, peek(p)->op)) {
    char op = peek(p)->op;
    p->pos++;
    rat b = operand(p);
    if (p->status) return a;
    a = binop(p, a, op, b);
  }
  return a;
}
static rat parse_product(parser *p) { return parse_level(p, "*/%", parse_unary); }
static rat parse_sum(parser *p) { return parse_level(p, "+-", parse_product); }
/* top := sum { (THEN | FLOOR) [FLOOR] [op sum] } */
static rat parse_top(parser *p) {
  rat a = parse_sum(p);
  while (!p->status) {
    tok *t = peek(p);
    if (t->kind == T_END) break;
    if (t->kind == T_FLOOR) {
      p->pos++;
      int64_t q = a.n / a.d;
      if (a.n % a.d != 0 && a.n < 0) q--;
      a.n = q; a.d = 1;
      continue;
    }
    if (t->kind == T_THEN) {
      p->pos++;
      t = peek(p);
      if (t->kind == T_FLOOR) continue;
      if (t->kind == T_SQRT) {  /* "then take the square root" */
        p->pos++;
        a = do_sqrt(p, a);
        continue;
      }
      if (t->kind == T_SQ) { p->pos++; rat e = {2, 1}; a = do_pow(p, a, e); continue; }
      if (t->kind == T_OP) {
        char op = t->op;
        p->pos++;
        rat b = parse_sum(p);
        if (p->status) break;
        a = binop(p, a, op, b);
        continue;
      }
      fail(p, -1, "cannot read what follows 'then'");
      break;
    }
    if (t->kind == T_OP && strchr("+-*/%", t->op)) {  /* "..., rounded down, plus 1" */
      char op = t->op;
      p->pos++;
      rat b = parse_sum(p);
      if (p->status) break;
      a = binop(p, a, op, b);
      continue;
    }
    fail(p, -1, t->kind == T_RP ? "unbalanced ')'" : "unexpected token after the expression");
    break;
  }
  return a;
}

int usbx_expr_eval(const char *text, int64_t *num, int64_t *den, char *why, size_t whylen) {
  char dummy[8];
  if (!why || !whylen) { why = dummy; whylen = sizeof dummy; }
  why[0] = 0;
  parser p = {0};
  p.why = why;
  p.whylen = whylen;
  tokenize(&p, text);
  rat r = zero();
  if (!p.status) {
    if (p.n <= 1) fail(&p, -1, "no expression");
    else r = parse_top(&p);
  }
  free(p.t);
  if (p.status) return p.status;
  *num = r.n;
  *den = r.d;
  return 0;
}
