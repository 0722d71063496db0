/* tokenizer.c — Qwen2 byte-level BPE, identical to Hugging Face `tokenizers`.  See tokenizer.h.
 *
 * Pipeline of usbx_tok_encode (the same steps and order as tokenizers' Tokenizer::encode):
 *   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest);
 *   2. every other span is NFC-normalised, then added tokens with normalized=true are cut out;
 *   3. every remaining span is split by the pre-tokenizer regex (Split, behaviour Isolated);
 *   4. every piece is BPE-merged on its bytes (ByteLevel: one symbol per byte).
 * The slow-tokenizer files (vocab.json + merges.txt) get the slow Qwen2Tokenizer's order instead:
 * NFC of the whole text first, then the added tokens, then 3 and 4. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"
#include "util.h"
#include <errno.h>
#include <jv.h>
#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

/* The pre-tokenizer regex of the slow Qwen2Tokenizer (tokenization_qwen2.py, PRETOKENIZE_REGEX);
 * tokenizer.json files carry their own pattern. */
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                               */

static inline uint64_t hash_bytes(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ULL; }
  return h ^ (h >> 29);
}
static inline uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return x;
}

typedef struct { int32_t *v; size_t n, cap; } ivec;
static inline void ivec_push(ivec *a, int32_t x) {
  if (a->n == a->cap) { a->cap = a->cap ? a->cap * 2 : 64; a->v = xrealloc(a->v, a->cap * sizeof *a->v); }
  a->v[a->n++] = x;
}

/* Length of the valid UTF-8 sequence at s[i..n) (1..4), or 0 if invalid there.  On 0, *bad is the
 * length of the maximal invalid subpart (what one U+FFFD replaces, as Rust/Python do). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t i, size_t *bad) {
  unsigned b = s[i];
  if (b < 0x80) return 1;
  size_t need;
  unsigned lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) need = 2;
  else if (b >= 0xE0 && b <= 0xEF) { need = 3; if (b == 0xE0) lo = 0xA0; else if (b == 0xED) hi = 0x9F; }
  else if (b >= 0xF0 && b <= 0xF4) { need = 4; if (b == 0xF0) lo = 0x90; else if (b == 0xF4) hi = 0x8F; }
  else { *bad = 1; return 0; }
  if (i + 1 >= n || s[i + 1] < lo || s[i + 1] > hi) { *bad = 1; return 0; }
  for (size_t k = 2; k < need; k++)
    if (i + k >= n || (s[i + k] & 0xC0) != 0x80) { *bad = k; return 0; }
  return need;
}

static bool utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0, bad;
  while (i < n) {
    if (s[i] < 0x80) {
      while (i + 8 <= n) { uint64_t w; memcpy(&w, s + i, 8); if (w & 0x8080808080808080ULL) break; i += 8; }
      while (i < n && s[i] < 0x80) i++;
      continue;
    }
    size_t k = utf8_seq(s, n, i, &bad);
    if (!k) return false;
    i += k;
  }
  return true;
}

static int32_t utf8_cp(const unsigned char *s, size_t len, size_t *adv) {
  utf8proc_int32_t c;
  utf8proc_ssize_t k = utf8proc_iterate(s, (utf8proc_ssize_t)len, &c);
  *adv = k > 0 ? (size_t)k : 1;
  return k > 0 ? c : -1;
}

/* Unicode White_Space (Rust char::is_whitespace, regex \s) from the general category. */
static bool cp_is_space(int32_t c) {
  if ((c >= 9 && c <= 13) || c == 0x85) return true;
  if (c < 0) return false;
  utf8proc_category_t k = utf8proc_category(c);
  return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}
/* Rust regex \w: Alphabetic, marks, decimal numbers, connector punctuation, joiners (approximated
 * by general categories; only used for added tokens with single_word). */
static bool cp_is_word(int32_t c) {
  if (c < 0) return false;
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(c)) {
  case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
  case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
  case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
  case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC: return true;
  default: return false;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* data structures                                                                             */

typedef struct {
  char *content;      /* what is matched (NFC'd when normalized) */
  size_t len;
  char *orig;         /* content as written in the file (decoding, lookups) */
  int32_t id;
  bool special, lstrip, rstrip, single_word, normalized;
} added_tok;

/* Leftmost-longest matcher over a few literal strings: candidates bucketed by first byte, longest
 * first, so the first hit at the leftmost position is the longest one. */
typedef struct {
  int *idx;           /* indices into tok->added */
  int n;
  int start[257];
  bool any;
} matcher;

#define CACHE_SHARDS 64
#define CACHE_SLOTS 2048          /* per shard */
#define CACHE_KEY 22
#define CACHE_IDS 8
typedef struct {
  uint64_t h;
  uint8_t klen, nids;
  char key[CACHE_KEY];
  int32_t ids[CACHE_IDS];
} cache_ent;                      /* 64 bytes */
typedef struct {
  pthread_mutex_t mu;
  cache_ent *ents;
  char pad[64 - (sizeof(pthread_mutex_t) + sizeof(cache_ent *)) % 64];
} cache_shard;

struct usbx_tokenizer {
  size_t nid;               /* 1 + largest id */
  char **mtok;              /* model (BPE vocab) token strings by id, owned; NULL where none */
  uint32_t *mtok_len;
  int32_t *vmap;            /* open addressing: model id or -1, keyed by mtok */
  size_t vmask;
  const char **tok;         /* display string by id: added content wins (not owned) */
  uint8_t *special;         /* by id */
  char *dec;                /* decoded bytes of every id, concatenated */
  uint32_t *dec_off, *dec_len;
  /* merges */
  uint64_t *mkey;           /* (a << 32 | b), UINT64_MAX = empty */
  int32_t *mrank, *mnew;
  size_t mmask;
  size_t nmerges;
  /* byte level */
  int32_t byte_id[256];     /* model id of each byte's character, -1 if absent */
  uint32_t b2u[256];        /* byte -> code point */
  int16_t u2b[0x180];       /* code point -> byte, -1 */
  int32_t unk_id;
  bool fuse_unk, ignore_merges;
  /* added tokens */
  added_tok *added;
  int nadded;
  matcher m_raw, m_norm;
  bool nfc, nfc_first;      /* nfc_first: slow-tokenizer order (NFC before added tokens) */
  /* regex */
  pcre2_code *re;
  bool jit;
  cache_shard *cache;
  char *source;             /* file it came from */
};

/* ------------------------------------------------------------------------------------------ */
/* errors during load                                                                          */

typedef struct { char *buf; size_t len; const char *file; bool set; } errctx;
static void seterr(errctx *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(errctx *e, const char *fmt, ...) {
  if (e->set) return;
  e->set = true;
  if (!e->buf || !e->len) return;
  int k = snprintf(e->buf, e->len, "%s: ", e->file ? e->file : "tokenizer");
  if (k < 0 || (size_t)k >= e->len) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->buf + k, e->len - (size_t)k, fmt, ap);
  va_end(ap);
}

/* ------------------------------------------------------------------------------------------ */
/* vocabulary and merges                                                                       */

static void bytes_to_unicode(usbx_tokenizer *t) {
  int n = 0;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    t->b2u[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
  }
  for (int i = 0; i < 0x180; i++) t->u2b[i] = -1;
  for (int b = 0; b < 256; b++) t->u2b[t->b2u[b]] = (int16_t)b;
}

static void vocab_alloc(usbx_tokenizer *t, size_t nid) {
  t->nid = nid;
  t->mtok = xcalloc(nid, sizeof *t->mtok);
  t->mtok_len = xcalloc(nid, sizeof *t->mtok_len);
}

static int32_t vmap_find(const usbx_tokenizer *t, const char *s, size_t n) {
  if (!t->vmap) return -1;
  size_t i = hash_bytes(s, n) & t->vmask;
  for (;;) {
    int32_t id = t->vmap[i];
    if (id < 0) return -1;
    if (t->mtok_len[id] == n && memcmp(t->mtok[id], s, n) == 0) return id;
    i = (i + 1) & t->vmask;
  }
}

static void vmap_build(usbx_tokenizer *t) {
  size_t cnt = 0;
  for (size_t i = 0; i < t->nid; i++) cnt += t->mtok[i] != NULL;
  size_t cap = 16;
  while (cap < cnt * 2) cap <<= 1;
  t->vmask = cap - 1;
  t->vmap = xmalloc(cap * sizeof *t->vmap);
  for (size_t i = 0; i < cap; i++) t->vmap[i] = -1;
  for (size_t id = 0; id < t->nid; id++) {
    if (!t->mtok[id]) continue;
    size_t i = hash_bytes(t->mtok[id], t->mtok_len[id]) & t->vmask;
    while (t->vmap[i] >= 0) {
      int32_t o = t->vmap[i];
      if (t->mtok_len[o] == t->mtok_len[id] && memcmp(t->mtok[o], t->mtok[id], t->mtok_len[id]) == 0) break;
      i = (i + 1) & t->vmask;
    }
    t->vmap[i] = (int32_t)id;   /* a duplicate string keeps the larger id (last one) */
  }
}

static inline bool merge_find(const usbx_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *nw) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t i = hash_u64(key) & t->mmask;
  for (;;) {
    uint64_t k = t->mkey[i];
    if (k == key) { *rank = t->mrank[i]; *nw = t->mnew[i]; return true; }
    if (k == UINT64_MAX) return false;
    i = (i + 1) & t->mmask;
  }
}

static void merges_alloc(usbx_tokenizer *t, size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  t->mmask = cap - 1;
  t->mkey = xmalloc(cap * sizeof *t->mkey);
  t->mrank = xmalloc(cap * sizeof *t->mrank);
  t->mnew = xmalloc(cap * sizeof *t->mnew);
  for (size_t i = 0; i < cap; i++) t->mkey[i] = UINT64_MAX;
}

/* Adds merge number `rank` of the strings a and b; later duplicates override (as HF's map does). */
static bool merge_add(usbx_tokenizer *t, errctx *e, size_t rank, const char *a, size_t na, const char *b,
                      size_t nb) {
  int32_t ia = vmap_find(t, a, na), ib = vmap_find(t, b, nb);
  if (ia < 0 || ib < 0) {
    seterr(e, "merge %zu: token '%.*s' is not in the vocabulary", rank + 1, (int)(ia < 0 ? na : nb),
           ia < 0 ? a : b);
    return false;
  }
  char stackbuf[256];
  char *cat = na + nb <= sizeof stackbuf ? stackbuf : xmalloc(na + nb);
  memcpy(cat, a, na);
  memcpy(cat + na, b, nb);
  int32_t inew = vmap_find(t, cat, na + nb);
  if (cat != stackbuf) free(cat);
  if (inew < 0) {
    seterr(e, "merge %zu: '%.*s%.*s' is not in the vocabulary", rank + 1, (int)na, a, (int)nb, b);
    return false;
  }
  uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
  size_t i = hash_u64(key) & t->mmask;
  while (t->mkey[i] != UINT64_MAX && t->mkey[i] != key) i = (i + 1) & t->mmask;
  if (t->mkey[i] == UINT64_MAX) t->nmerges++;
  t->mkey[i] = key;
  t->mrank[i] = (int32_t)rank;
  t->mnew[i] = inew;
  return true;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON helpers (libjq)                                                                        */

static jv jget(jv obj, const char *key) {
  if (jv_get_kind(obj) != JV_KIND_OBJECT) return jv_invalid();
  return jv_object_get(jv_copy(obj), jv_string(key));
}
/* kind of obj[key]: JV_KIND_INVALID when absent. */
static jv_kind jkind(jv obj, const char *key) {
  jv v = jget(obj, key);
  jv_kind k = jv_get_kind(v);
  jv_free(v);
  return k;
}
/* obj[key] as bool: absent/null -> dflt; -1 when another type. */
static int jbool(jv obj, const char *key, bool dflt) {
  jv v = jget(obj, key);
  jv_kind k = jv_get_kind(v);
  jv_free(v);
  if (k == JV_KIND_INVALID || k == JV_KIND_NULL) return dflt;
  if (k == JV_KIND_TRUE) return 1;
  if (k == JV_KIND_FALSE) return 0;
  return -1;
}
/* obj[key] is a string equal to want. */
static bool jstreq(jv obj, const char *key, const char *want) {
  jv v = jget(obj, key);
  bool r = jv_get_kind(v) == JV_KIND_STRING && strcmp(jv_string_value(v), want) == 0;
  jv_free(v);
  return r;
}
/* obj[key] is absent, null or "". */
static bool jempty(jv obj, const char *key) {
  jv v = jget(obj, key);
  jv_kind k = jv_get_kind(v);
  bool r = k == JV_KIND_INVALID || k == JV_KIND_NULL || (k == JV_KIND_STRING && jv_string_value(v)[0] == 0);
  jv_free(v);
  return r;
}
static const char *kind_name(jv v) {
  return jv_get_kind(v) == JV_KIND_INVALID ? "missing" : jv_kind_name(jv_get_kind(v));
}
static char *jtype(jv obj) {   /* obj["type"] for messages */
  jv v = jget(obj, "type");
  char *s = jv_get_kind(v) == JV_KIND_STRING ? xstrdup(jv_string_value(v)) : xstrdup(kind_name(obj));
  jv_free(v);
  return s;
}

static bool parse_json_file(const char *path, jv *out, errctx *e) {
  size_t len;
  char *text = usbx_read_file(path, &len);
  if (!text) { seterr(e, "cannot read: %s", strerror(errno)); return false; }
  if (len > INT_MAX) { free(text); seterr(e, "file too large"); return false; }
  jv v = jv_parse_sized(text, (int)len);
  free(text);
  if (!jv_is_valid(v)) {
    jv msg = jv_invalid_get_msg(v);
    seterr(e, "not valid JSON: %s", jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "?");
    jv_free(msg);
    return false;
  }
  if (jv_get_kind(v) != JV_KIND_OBJECT) { jv_free(v); seterr(e, "not a JSON object"); return false; }
  *out = v;
  return true;
}

/* vocab object {token: id} -> model vocabulary. extra_max: largest id of the added tokens. */
static bool load_vocab_obj(usbx_tokenizer *t, jv vocab, long extra_max, errctx *e) {
  if (jv_get_kind(vocab) != JV_KIND_OBJECT) { seterr(e, "vocab: expected an object, got %s", kind_name(vocab)); return false; }
  long maxid = extra_max;
  bool ok = true;
  jv_object_foreach(vocab, k, v) {
    if (ok && (jv_get_kind(v) != JV_KIND_NUMBER || !jv_is_integer(v) || jv_number_value(v) < 0 ||
               jv_number_value(v) > INT32_MAX - 1)) {
      seterr(e, "vocab: id of '%s' is not a non-negative integer", jv_string_value(k));
      ok = false;
    } else if (ok && jv_number_value(v) > maxid) maxid = (long)jv_number_value(v);
    jv_free(k);
    jv_free(v);
  }
  if (!ok) return false;
  vocab_alloc(t, (size_t)(maxid + 1));
  jv_object_foreach(vocab, k, v) {
    size_t id = (size_t)jv_number_value(v);
    int n = jv_string_length_bytes(jv_copy(k));
    free(t->mtok[id]);            /* two strings with one id: the last wins */
    t->mtok[id] = xmalloc((size_t)n + 1);
    memcpy(t->mtok[id], jv_string_value(k), (size_t)n + 1);
    t->mtok_len[id] = (uint32_t)n;
    jv_free(k);
    jv_free(v);
  }
  vmap_build(t);
  return true;
}

/* added tokens, from tokenizer.json's list or tokenizer_config.json's added_tokens_decoder. */
static bool add_added(usbx_tokenizer *t, jv at, long id, errctx *e) {
  jv c = jget(at, "content");
  if (jv_get_kind(c) != JV_KIND_STRING) { jv_free(c); seterr(e, "added token %ld: no content", id); return false; }
  int special = jbool(at, "special", false);
  int lstrip = jbool(at, "lstrip", false), rstrip = jbool(at, "rstrip", false);
  int single = jbool(at, "single_word", false), norm = jbool(at, "normalized", !special);
  if (special < 0 || lstrip < 0 || rstrip < 0 || single < 0 || norm < 0) {
    jv_free(c);
    seterr(e, "added token %ld: flags must be true or false", id);
    return false;
  }
  t->added = xrealloc(t->added, (size_t)(t->nadded + 1) * sizeof *t->added);
  added_tok *a = &t->added[t->nadded++];
  int n = jv_string_length_bytes(jv_copy(c));
  a->orig = xmalloc((size_t)n + 1);
  memcpy(a->orig, jv_string_value(c), (size_t)n + 1);
  a->content = NULL;
  a->len = (size_t)n;
  a->id = (int32_t)id;
  a->special = special;
  a->lstrip = lstrip;
  a->rstrip = rstrip;
  a->single_word = single;
  a->normalized = norm;
  jv_free(c);
  return true;
}

/* ------------------------------------------------------------------------------------------ */
/* pattern                                                                                     */

/* Oniguruma pattern -> PCRE2: \s and \S are Oniguruma's White_Space (PCRE2's \s also takes
 * U+180E), so they become \p{White_Space} / \P{White_Space}; escapes whose meaning differs between
 * the two engines are refused. */
static char *translate_pattern(const char *p, size_t n, errctx *e) {
  usbx_buf b = {0};
  for (size_t i = 0; i < n; i++) {
    if (p[i] != '\\' || i + 1 >= n) { usbx_buf_append(&b, p + i, 1); continue; }
    char c = p[++i];
    if (c == 's') usbx_buf_append(&b, "\\p{White_Space}", 15);
    else if (c == 'S') usbx_buf_append(&b, "\\P{White_Space}", 15);
    else if (strchr("wWhHbBXRKzZAG", c)) {
      seterr(e, "pre_tokenizer: regex escape \\%c is not supported (its meaning differs between Oniguruma and PCRE2)", c);
      usbx_buf_free(&b);
      return NULL;
    } else {
      char two[2] = {'\\', c};
      usbx_buf_append(&b, two, 2);
    }
  }
  usbx_buf_append(&b, "", 1);
  return b.data;
}

static bool compile_pattern(usbx_tokenizer *t, const char *pat, size_t n, bool literal, errctx *e) {
  char *p = NULL;
  size_t plen = n;
  if (!literal) {
    p = translate_pattern(pat, n, e);
    if (!p) return false;
    plen = strlen(p);
  }
  int ec;
  PCRE2_SIZE eo;
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : 0);
  t->re = pcre2_compile((PCRE2_SPTR)(literal ? pat : p), plen, opts, &ec, &eo, NULL);
  free(p);
  if (!t->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(ec, msg, sizeof msg);
    seterr(e, "pre_tokenizer: regex does not compile at offset %zu: %s", (size_t)eo, (char *)msg);
    return false;
  }
  t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
  return true;
}

/* ------------------------------------------------------------------------------------------ */
/* tokenizer.json                                                                              */

static bool check_normalizer(usbx_tokenizer *t, jv n, errctx *e) {
  jv_kind k = jv_get_kind(n);
  if (k == JV_KIND_NULL || k == JV_KIND_INVALID) { t->nfc = false; return true; }
  if (jstreq(n, "type", "NFC")) { t->nfc = true; return true; }
  if (jstreq(n, "type", "Sequence")) {
    jv list = jget(n, "normalizers");
    bool ok = jv_get_kind(list) == JV_KIND_ARRAY;
    int cnt = ok ? jv_array_length(jv_copy(list)) : 0;
    for (int i = 0; ok && i < cnt; i++) {
      jv x = jv_array_get(jv_copy(list), i);
      ok = jstreq(x, "type", "NFC");
      jv_free(x);
    }
    jv_free(list);
    if (ok) { t->nfc = cnt > 0; return true; }
  }
  char *ty = jtype(n);
  seterr(e, "normalizer '%s' is not supported (only NFC or none)", ty);
  free(ty);
  return false;
}

static bool check_bytelevel_pre(jv bl, errctx *e) {
  if (!jstreq(bl, "type", "ByteLevel")) {
    char *ty = jtype(bl);
    seterr(e, "pre_tokenizer: '%s' is not supported (expected Sequence[Split, ByteLevel])", ty);
    free(ty);
    return false;
  }
  if (jbool(bl, "add_prefix_space", false) != 0) { seterr(e, "pre_tokenizer: ByteLevel add_prefix_space=true is not supported"); return false; }
  if (jbool(bl, "use_regex", true) != 0) { seterr(e, "pre_tokenizer: ByteLevel use_regex=true is not supported"); return false; }
  return true;
}

static bool check_pretok(usbx_tokenizer *t, jv pt, errctx *e) {
  if (!jstreq(pt, "type", "Sequence")) {
    char *ty = jtype(pt);
    seterr(e, "pre_tokenizer '%s' is not supported (expected Sequence[Split, ByteLevel])", ty);
    free(ty);
    return false;
  }
  jv list = jget(pt, "pretokenizers");
  if (jv_get_kind(list) != JV_KIND_ARRAY || jv_array_length(jv_copy(list)) != 2) {
    jv_free(list);
    seterr(e, "pre_tokenizer: expected Sequence of [Split, ByteLevel]");
    return false;
  }
  jv sp = jv_array_get(jv_copy(list), 0), bl = jv_array_get(jv_copy(list), 1);
  jv_free(list);
  bool ok = false;
  if (!jstreq(sp, "type", "Split")) {
    char *ty = jtype(sp);
    seterr(e, "pre_tokenizer: '%s' is not supported (expected Sequence[Split, ByteLevel])", ty);
    free(ty);
  } else if (!jstreq(sp, "behavior", "Isolated")) {
    seterr(e, "pre_tokenizer: Split behavior other than Isolated is not supported");
  } else if (jbool(sp, "invert", false) != 0) {
    seterr(e, "pre_tokenizer: Split invert=true is not supported");
  } else if (check_bytelevel_pre(bl, e)) {
    jv pat = jget(sp, "pattern");
    jv re = jget(pat, "Regex"), str = jget(pat, "String");
    if (jv_get_kind(re) == JV_KIND_STRING)
      ok = compile_pattern(t, jv_string_value(re), (size_t)jv_string_length_bytes(jv_copy(re)), false, e);
    else if (jv_get_kind(str) == JV_KIND_STRING)
      ok = compile_pattern(t, jv_string_value(str), (size_t)jv_string_length_bytes(jv_copy(str)), true, e);
    else
      seterr(e, "pre_tokenizer: Split pattern must be {\"Regex\": ...} or {\"String\": ...}");
    jv_free(pat);
    jv_free(re);
    jv_free(str);
  }
  jv_free(sp);
  jv_free(bl);
  return ok;
}

static bool load_tokenizer_json(usbx_tokenizer *t, const char *path, errctx *e) {
  jv root;
  if (!parse_json_file(path, &root, e)) return false;
  bool ok = false;
  jv model = jget(root, "model"), added = jget(root, "added_tokens");
  jv_kind tk;
  if (jv_get_kind(model) != JV_KIND_OBJECT) { seterr(e, "no \"model\" object"); goto done; }
  if ((tk = jkind(model, "type")) != JV_KIND_INVALID && !jstreq(model, "type", "BPE")) {
    char *ty = jtype(model);
    seterr(e, "model type '%s' is not supported (only BPE)", ty);
    free(ty);
    goto done;
  }
  if (tk == JV_KIND_INVALID && jkind(model, "merges") != JV_KIND_ARRAY) { seterr(e, "model: not a BPE model (no merges)"); goto done; }
  if (!(jkind(model, "dropout") == JV_KIND_INVALID || jkind(model, "dropout") == JV_KIND_NULL)) { seterr(e, "model: BPE dropout is not supported"); goto done; }
  if (jbool(model, "byte_fallback", false) != 0) { seterr(e, "model: byte_fallback=true is not supported"); goto done; }
  if (!jempty(model, "continuing_subword_prefix") || !jempty(model, "end_of_word_suffix")) {
    seterr(e, "model: continuing_subword_prefix / end_of_word_suffix are not supported");
    goto done;
  }
  int fu = jbool(model, "fuse_unk", false), im = jbool(model, "ignore_merges", false);
  if (fu < 0 || im < 0) { seterr(e, "model: fuse_unk / ignore_merges must be booleans"); goto done; }
  t->fuse_unk = fu;
  t->ignore_merges = im;
  for (const char *f = "truncation"; f; f = strcmp(f, "truncation") == 0 ? "padding" : NULL) {
    jv_kind k = jkind(root, f);
    if (k != JV_KIND_NULL && k != JV_KIND_INVALID) { seterr(e, "%s is set; not supported", f); goto done; }
  }
  { jv n = jget(root, "normalizer"); bool r = check_normalizer(t, n, e); jv_free(n); if (!r) goto done; }
  { jv p = jget(root, "pre_tokenizer"); bool r = check_pretok(t, p, e); jv_free(p); if (!r) goto done; }
  {
    jv d = jget(root, "decoder");
    bool r = jstreq(d, "type", "ByteLevel");
    if (!r) { char *ty = jtype(d); seterr(e, "decoder '%s' is not supported (only ByteLevel)", ty); free(ty); }
    jv_free(d);
    if (!r) goto done;
  }
  {
    jv p = jget(root, "post_processor");
    jv_kind k = jv_get_kind(p);
    bool r = k == JV_KIND_NULL || k == JV_KIND_INVALID || jstreq(p, "type", "ByteLevel");
    if (!r) { char *ty = jtype(p); seterr(e, "post_processor '%s' is not supported (only ByteLevel or none)", ty); free(ty); }
    jv_free(p);
    if (!r) goto done;
  }
  /* added tokens */
  long amax = -1;
  if (jv_get_kind(added) == JV_KIND_ARRAY) {
    int na = jv_array_length(jv_copy(added));
    for (int i = 0; i < na; i++) {
      jv a = jv_array_get(jv_copy(added), i);
      jv idv = jget(a, "id");
      bool good = jv_get_kind(idv) == JV_KIND_NUMBER && jv_is_integer(idv) && jv_number_value(idv) >= 0 &&
                  jv_number_value(idv) < INT32_MAX;
      long id = good ? (long)jv_number_value(idv) : -1;
      jv_free(idv);
      if (!good) { jv_free(a); seterr(e, "added_tokens[%d]: id is not a non-negative integer", i); goto done; }
      bool r = add_added(t, a, id, e);
      jv_free(a);
      if (!r) goto done;
      if (id > amax) amax = id;
    }
  } else if (jv_get_kind(added) != JV_KIND_INVALID && jv_get_kind(added) != JV_KIND_NULL) {
    seterr(e, "added_tokens: expected an array");
    goto done;
  }
  {
    jv vocab = jget(model, "vocab");
    bool r = load_vocab_obj(t, vocab, amax, e);
    jv_free(vocab);
    if (!r) goto done;
  }
  {
    jv unk = jget(model, "unk_token");
    t->unk_id = -1;
    if (jv_get_kind(unk) == JV_KIND_STRING) {
      t->unk_id = vmap_find(t, jv_string_value(unk), (size_t)jv_string_length_bytes(jv_copy(unk)));
      if (t->unk_id < 0) { seterr(e, "model: unk_token '%s' is not in the vocabulary", jv_string_value(unk)); jv_free(unk); goto done; }
    }
    jv_free(unk);
  }
  {
    jv merges = jget(model, "merges");
    if (jv_get_kind(merges) != JV_KIND_ARRAY) { jv_free(merges); seterr(e, "model: merges must be an array"); goto done; }
    int nm = jv_array_length(jv_copy(merges));
    merges_alloc(t, (size_t)nm);
    bool r = true;
    for (int i = 0; r && i < nm; i++) {
      jv m = jv_array_get(jv_copy(merges), i);
      if (jv_get_kind(m) == JV_KIND_STRING) {
        const char *s = jv_string_value(m);
        size_t len = (size_t)jv_string_length_bytes(jv_copy(m));
        const char *sp = memchr(s, ' ', len);
        if (!sp) { seterr(e, "merge %d: '%s' is not \"a b\"", i + 1, s); r = false; }
        else r = merge_add(t, e, (size_t)i, s, (size_t)(sp - s), sp + 1, len - (size_t)(sp - s) - 1);
      } else if (jv_get_kind(m) == JV_KIND_ARRAY && jv_array_length(jv_copy(m)) == 2) {
        jv a = jv_array_get(jv_copy(m), 0), b = jv_array_get(jv_copy(m), 1);
        if (jv_get_kind(a) != JV_KIND_STRING || jv_get_kind(b) != JV_KIND_STRING) { seterr(e, "merge %d: not two strings", i + 1); r = false; }
        else r = merge_add(t, e, (size_t)i, jv_string_value(a), (size_t)jv_string_length_bytes(jv_copy(a)),
                           jv_string_value(b), (size_t)jv_string_length_bytes(jv_copy(b)));
        jv_free(a);
        jv_free(b);
      } else {
        seterr(e, "merge %d: expected \"a b\" or [a, b]", i + 1);
        r = false;
      }
      jv_free(m);
    }
    jv_free(merges);
    if (!r) goto done;
  }
  ok = true;
done:
  jv_free(model);
  jv_free(added);
  jv_free(root);
  return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* vocab.json + merges.txt + tokenizer_config.json                                             */

static bool load_slow(usbx_tokenizer *t, const char *dir, errctx *e) {
  char *vpath = usbx_path_join(dir, "vocab.json"), *mpath = usbx_path_join(dir, "merges.txt");
  char *cpath = usbx_path_join(dir, "tokenizer_config.json");
  bool ok = false;
  jv vocab = jv_invalid(), cfg = jv_invalid();
  char *mt = NULL;
  long amax = -1;
  t->nfc = true;
  t->nfc_first = true;
  t->unk_id = -1;
  if (usbx_file_exists(cpath)) {
    e->file = cpath;
    if (!parse_json_file(cpath, &cfg, e)) goto done;
    jv cls = jget(cfg, "tokenizer_class");
    if (jv_get_kind(cls) == JV_KIND_STRING && strcmp(jv_string_value(cls), "Qwen2Tokenizer") != 0 &&
        strcmp(jv_string_value(cls), "Qwen2TokenizerFast") != 0) {
      seterr(e, "tokenizer_class '%s' is not supported (only Qwen2Tokenizer)", jv_string_value(cls));
      jv_free(cls);
      goto done;
    }
    jv_free(cls);
    jv atd = jget(cfg, "added_tokens_decoder");
    if (jv_get_kind(atd) == JV_KIND_OBJECT) {
      bool r = true;
      jv_object_foreach(atd, k, v) {
        char *end;
        errno = 0;
        long id = strtol(jv_string_value(k), &end, 10);
        if (r && (errno || *end || end == jv_string_value(k) || id < 0 || id >= INT32_MAX)) {
          seterr(e, "added_tokens_decoder: key '%s' is not an id", jv_string_value(k));
          r = false;
        }
        if (r) r = add_added(t, v, id, e);
        if (r && id > amax) amax = id;
        jv_free(k);
        jv_free(v);
      }
      if (!r) { jv_free(atd); goto done; }
    }
    jv_free(atd);
  }
  e->file = vpath;
  if (!parse_json_file(vpath, &vocab, e)) goto done;
  if (!load_vocab_obj(t, vocab, amax, e)) goto done;
  e->file = mpath;
  size_t mlen;
  mt = usbx_read_file(mpath, &mlen);
  if (!mt) { seterr(e, "cannot read: %s", strerror(errno)); goto done; }
  size_t nlines = 1;
  for (size_t i = 0; i < mlen; i++) nlines += mt[i] == '\n';
  merges_alloc(t, nlines);
  size_t rank = 0, lineno = 0;
  for (char *p = mt, *end = mt + mlen; p < end;) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    char *le = nl ? nl : end;
    lineno++;
    char *a = p, *b;
    p = nl ? nl + 1 : end;
    while (a < le && (*a == ' ' || *a == '\t' || *a == '\r')) a++;            /* line.strip() */
    char *z = le;
    while (z > a && (z[-1] == ' ' || z[-1] == '\t' || z[-1] == '\r')) z--;
    if (z == a) continue;
    if (lineno == 1 && (size_t)(z - a) >= 9 && memcmp(a, "#version:", 9) == 0) continue;
    b = memchr(a, ' ', (size_t)(z - a));
    if (!b) { seterr(e, "line %zu: expected two tokens", lineno); goto done; }
    char *a_end = b;
    while (b < z && *b == ' ') b++;
    if (memchr(b, ' ', (size_t)(z - b))) { seterr(e, "line %zu: expected two tokens", lineno); goto done; }
    if (!merge_add(t, e, rank, a, (size_t)(a_end - a), b, (size_t)(z - b))) goto done;
    rank++;
  }
  e->file = vpath;
  if (!compile_pattern(t, QWEN2_PATTERN, sizeof QWEN2_PATTERN - 1, false, e)) goto done;
  ok = true;
done:
  free(mt);
  jv_free(vocab);
  jv_free(cfg);
  free(vpath);
  free(mpath);
  free(cpath);
  return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* finishing the load                                                                          */

static void nfc_dup(const char *s, size_t n, char **out, size_t *outn) {
  utf8proc_uint8_t *r = NULL;
  utf8proc_ssize_t k = n ? utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &r,
                                        UTF8PROC_STABLE | UTF8PROC_COMPOSE) : 0;
  if (k < 0 || !r) {
    free(r);
    *out = xmalloc(n + 1);
    memcpy(*out, s, n);
    (*out)[n] = 0;
    *outn = n;
    return;
  }
  *out = (char *)r;
  *outn = (size_t)k;
}

static int cmp_added_idx_ctx_len(const void *a, const void *b, void *ctx) {
  const added_tok *at = ctx;
  const added_tok *x = &at[*(const int *)a], *y = &at[*(const int *)b];
  unsigned char fx = (unsigned char)x->content[0], fy = (unsigned char)y->content[0];
  if (fx != fy) return fx < fy ? -1 : 1;
  if (x->len != y->len) return x->len > y->len ? -1 : 1;
  return *(const int *)a - *(const int *)b;
}

static void matcher_build(usbx_tokenizer *t, matcher *m, bool normalized) {
  m->idx = xmalloc((size_t)(t->nadded + 1) * sizeof *m->idx);
  m->n = 0;
  for (int i = 0; i < t->nadded; i++)
    if (t->added[i].normalized == normalized && t->added[i].len > 0) m->idx[m->n++] = i;
  qsort_r(m->idx, (size_t)m->n, sizeof *m->idx, cmp_added_idx_ctx_len, t->added);
  int j = 0;
  for (int b = 0; b <= 256; b++) {
    while (j < m->n && (unsigned char)t->added[m->idx[j]].content[0] < b) j++;
    m->start[b] = j;
  }
  m->any = m->n > 0;
}

static bool finish(usbx_tokenizer *t, errctx *e) {
  bytes_to_unicode(t);
  for (int b = 0; b < 256; b++) {
    char s[4];
    int n = (int)utf8proc_encode_char((utf8proc_int32_t)t->b2u[b], (utf8proc_uint8_t *)s);
    t->byte_id[b] = vmap_find(t, s, (size_t)n);
  }
  /* added token contents as matched */
  for (int i = 0; i < t->nadded; i++) {
    added_tok *a = &t->added[i];
    if (a->normalized && t->nfc) nfc_dup(a->orig, strlen(a->orig), &a->content, &a->len);
    else { a->content = xstrdup(a->orig); a->len = strlen(a->orig); }
  }
  matcher_build(t, &t->m_raw, false);
  matcher_build(t, &t->m_norm, true);
  /* per-id tables */
  t->tok = xcalloc(t->nid, sizeof *t->tok);
  t->special = xcalloc(t->nid, 1);
  for (size_t i = 0; i < t->nid; i++) t->tok[i] = t->mtok[i];
  for (int i = 0; i < t->nadded; i++) {
    t->tok[t->added[i].id] = t->added[i].orig;
    t->special[t->added[i].id] = t->added[i].special;
  }
  size_t total = 0;
  for (size_t i = 0; i < t->nid; i++) if (t->tok[i]) total += strlen(t->tok[i]);
  t->dec = xmalloc(total + 1);
  t->dec_off = xcalloc(t->nid, sizeof *t->dec_off);
  t->dec_len = xcalloc(t->nid, sizeof *t->dec_len);
  size_t off = 0;
  for (size_t i = 0; i < t->nid; i++) {
    const char *s = t->tok[i];
    if (!s) continue;
    size_t n = strlen(s), j = 0, o = off;
    bool all = true;
    while (j < n) {
      size_t adv;
      int32_t c = utf8_cp((const unsigned char *)s + j, n - j, &adv);
      if (c < 0 || c >= 0x180 || t->u2b[c] < 0) { all = false; break; }
      t->dec[o++] = (char)t->u2b[c];
      j += adv;
    }
    if (!all) { memcpy(t->dec + off, s, n); o = off + n; }   /* HF: the token's own bytes */
    t->dec_off[i] = (uint32_t)off;
    t->dec_len[i] = (uint32_t)(o - off);
    off = o;
  }
  if (off > UINT32_MAX) { seterr(e, "vocabulary too large"); return false; }
  t->cache = xcalloc(CACHE_SHARDS, sizeof *t->cache);
  for (int s = 0; s < CACHE_SHARDS; s++) {
    pthread_mutex_init(&t->cache[s].mu, NULL);
    t->cache[s].ents = xcalloc(CACHE_SLOTS, sizeof(cache_ent));
  }
  return true;
}

static bool is_dir(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISDIR(st.st_mode); }

usbx_tokenizer *usbx_tok_load(const char *path, char *err, size_t errlen) {
  errctx e = {err, errlen, path, false};
  if (err && errlen) err[0] = 0;
  usbx_tokenizer *t = xcalloc(1, sizeof *t);
  t->unk_id = -1;
  bool ok;
  if (is_dir(path)) {
    char *tj = usbx_path_join(path, "tokenizer.json");
    char *vj = usbx_path_join(path, "vocab.json"), *mt = usbx_path_join(path, "merges.txt");
    if (usbx_file_exists(tj)) { e.file = tj; ok = load_tokenizer_json(t, tj, &e); t->source = xstrdup(tj); }
    else if (usbx_file_exists(vj) && usbx_file_exists(mt)) { ok = load_slow(t, path, &e); t->source = xstrdup(path); }
    else { seterr(&e, "no tokenizer.json, nor vocab.json + merges.txt, in this folder"); ok = false; }
    if (ok) e.file = t->source;
    ok = ok && finish(t, &e);
    free(tj);
    free(vj);
    free(mt);
  } else {
    ok = load_tokenizer_json(t, path, &e);
    t->source = xstrdup(path);
    ok = ok && finish(t, &e);
  }
  if (!ok) { usbx_tok_free(t); return NULL; }
  return t;
}

void usbx_tok_free(usbx_tokenizer *t) {
  if (!t) return;
  if (t->mtok) for (size_t i = 0; i < t->nid; i++) free(t->mtok[i]);
  free(t->mtok);
  free(t->mtok_len);
  free(t->vmap);
  free(t->tok);
  free(t->special);
  free(t->dec);
  free(t->dec_off);
  free(t->dec_len);
  free(t->mkey);
  free(t->mrank);
  free(t->mnew);
  for (int i = 0; i < t->nadded; i++) { free(t->added[i].content); free(t->added[i].orig); }
  free(t->added);
  free(t->m_raw.idx);
  free(t->m_norm.idx);
  if (t->re) pcre2_code_free(t->re);
  if (t->cache) {
    for (int s = 0; s < CACHE_SHARDS; s++) { pthread_mutex_destroy(&t->cache[s].mu); free(t->cache[s].ents); }
    free(t->cache);
  }
  free(t->source);
  free(t);
}

/* ------------------------------------------------------------------------------------------ */
/* BPE                                                                                         */

typedef struct { int32_t rank, pos, nw; } heap_ent;
typedef struct { int32_t id, prev, next; } sym;

typedef struct {
  const usbx_tokenizer *t;
  ivec *out;
  pcre2_match_data *md;
  sym *syms; size_t sym_cap;
  heap_ent *heap; size_t heap_cap;
  int err;
} enc_ctx;

static inline bool heap_less(heap_ent a, heap_ent b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }
static void heap_push(enc_ctx *c, size_t *n, heap_ent x) {
  if (*n == c->heap_cap) { c->heap_cap = c->heap_cap ? c->heap_cap * 2 : 256; c->heap = xrealloc(c->heap, c->heap_cap * sizeof *c->heap); }
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(x, c->heap[p])) break;
    c->heap[i] = c->heap[p];
    i = p;
  }
  c->heap[i] = x;
}
static heap_ent heap_pop(enc_ctx *c, size_t *n) {
  heap_ent top = c->heap[0], x = c->heap[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    heap_ent best = x;
    if (l < *n && heap_less(c->heap[l], best)) { m = l; best = c->heap[l]; }
    if (r < *n && heap_less(c->heap[r], best)) { m = r; }
    if (m == i) break;
    c->heap[i] = c->heap[m];
    i = m;
  }
  if (*n) c->heap[i] = x;
  return top;
}

#define SMALL_WORD 48

/* Merges the symbols ids[0..m) in place by rank (lowest rank first, leftmost on ties, the order of
 * HF's heap); returns the new count. */
static size_t bpe_merge(enc_ctx *c, int32_t *ids, size_t m) {
  const usbx_tokenizer *t = c->t;
  if (m < 2) return m;
  if (m <= SMALL_WORD) {
    /* short words: pair ranks kept in an array, two lookups per merge */
    int32_t pr[SMALL_WORD], pn[SMALL_WORD];
    for (size_t i = 0; i + 1 < m; i++) if (!merge_find(t, ids[i], ids[i + 1], &pr[i], &pn[i])) pr[i] = INT32_MAX;
    for (;;) {
      size_t best = 0;
      int32_t br = INT32_MAX;
      for (size_t i = 0; i + 1 < m; i++) if (pr[i] < br) { br = pr[i]; best = i; }
      if (br == INT32_MAX) break;
      ids[best] = pn[best];
      memmove(ids + best + 1, ids + best + 2, (m - best - 2) * sizeof *ids);
      if (m >= best + 3) {       /* pairs after the merged one shift left by one */
        memmove(pr + best + 1, pr + best + 2, (m - best - 3) * sizeof *pr);
        memmove(pn + best + 1, pn + best + 2, (m - best - 3) * sizeof *pn);
      }
      m--;
      if (best > 0 && !merge_find(t, ids[best - 1], ids[best], &pr[best - 1], &pn[best - 1])) pr[best - 1] = INT32_MAX;
      if (best + 1 < m && !merge_find(t, ids[best], ids[best + 1], &pr[best], &pn[best])) pr[best] = INT32_MAX;
    }
    return m;
  }
  /* long words: HF's algorithm, a heap of candidate merges over a linked list of symbols */
  if (m > c->sym_cap) { c->sym_cap = m; c->syms = xrealloc(c->syms, m * sizeof *c->syms); }
  sym *s = c->syms;
  for (size_t i = 0; i < m; i++) { s[i].id = ids[i]; s[i].prev = (int32_t)i - 1; s[i].next = i + 1 < m ? (int32_t)i + 1 : -1; }
  size_t hn = 0;
  for (size_t i = 0; i + 1 < m; i++) {
    heap_ent h;
    if (merge_find(t, ids[i], ids[i + 1], &h.rank, &h.nw)) { h.pos = (int32_t)i; heap_push(c, &hn, h); }
  }
  while (hn) {
    heap_ent top = heap_pop(c, &hn);
    sym *a = &s[top.pos];
    if (a->id < 0 || a->next < 0) continue;
    sym *b = &s[a->next];
    int32_t r, nw;
    if (!merge_find(t, a->id, b->id, &r, &nw) || nw != top.nw) continue;
    a->id = top.nw;
    b->id = -1;
    a->next = b->next;
    if (b->next >= 0) s[b->next].prev = top.pos;
    heap_ent h;
    if (a->prev >= 0 && merge_find(t, s[a->prev].id, a->id, &h.rank, &h.nw)) { h.pos = a->prev; heap_push(c, &hn, h); }
    if (a->next >= 0 && merge_find(t, a->id, s[a->next].id, &h.rank, &h.nw)) { h.pos = top.pos; heap_push(c, &hn, h); }
  }
  size_t k = 0;
  for (int32_t i = 0; i >= 0; i = s[i].next) ids[k++] = s[i].id;
  return k;
}

static void bpe_piece(enc_ctx *c, const unsigned char *p, size_t n) {
  const usbx_tokenizer *t = c->t;
  if (n == 0) return;
  if (n == 1 && t->byte_id[p[0]] >= 0 && !t->ignore_merges) { ivec_push(c->out, t->byte_id[p[0]]); return; }
  uint64_t h = 0;
  cache_shard *sh = NULL;
  cache_ent *ce = NULL;
  if (n <= CACHE_KEY) {
    h = hash_bytes(p, n);
    sh = &t->cache[h % CACHE_SHARDS];
    ce = &sh->ents[(h / CACHE_SHARDS) % CACHE_SLOTS];
    pthread_mutex_lock(&sh->mu);
    if (ce->h == h && ce->klen == n && memcmp(ce->key, p, n) == 0) {
      for (int i = 0; i < ce->nids; i++) ivec_push(c->out, ce->ids[i]);
      pthread_mutex_unlock(&sh->mu);
      return;
    }
    pthread_mutex_unlock(&sh->mu);
  }
  /* symbols: one per byte (its byte-level character) */
  int32_t small[SMALL_WORD * 2];
  int32_t *ids = n <= SMALL_WORD * 2 ? small : xmalloc(n * sizeof *ids);
  size_t m = 0;
  if (t->ignore_merges) {
    char sb[256];
    char *bl = n * 2 <= sizeof sb ? sb : xmalloc(n * 2);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)utf8proc_encode_char((utf8proc_int32_t)t->b2u[p[i]], (utf8proc_uint8_t *)bl + k);
    int32_t whole = vmap_find(t, bl, k);
    if (bl != sb) free(bl);
    if (whole >= 0) { ids[m++] = whole; goto emit; }
  }
  bool prev_unk = false;
  for (size_t i = 0; i < n; i++) {
    int32_t id = t->byte_id[p[i]];
    if (id >= 0) { ids[m++] = id; prev_unk = false; }
    else if (t->unk_id >= 0) {
      if (!(t->fuse_unk && prev_unk)) ids[m++] = t->unk_id;
      prev_unk = true;
    }
  }
  m = bpe_merge(c, ids, m);
emit:
  for (size_t i = 0; i < m; i++) ivec_push(c->out, ids[i]);
  if (ce && m <= CACHE_IDS) {
    pthread_mutex_lock(&sh->mu);
    ce->h = h;
    ce->klen = (uint8_t)n;
    memcpy(ce->key, p, n);
    ce->nids = (uint8_t)m;
    memcpy(ce->ids, ids, m * sizeof *ids);
    pthread_mutex_unlock(&sh->mu);
  }
  if (ids != small) free(ids);
}

/* ------------------------------------------------------------------------------------------ */
/* pre-tokenisation                                                                            */

static int re_match(enc_ctx *c, const char *s, size_t n, size_t from) {
  const usbx_tokenizer *t = c->t;
  int rc = t->jit ? pcre2_jit_match(t->re, (PCRE2_SPTR)s, n, from, 0, c->md, NULL)
                  : pcre2_match(t->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, c->md, NULL);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT)   /* fall back to the interpreter (heap frames) */
    rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, c->md, NULL);
  return rc;
}

/* Split (behaviour Isolated): every match is a piece, and so is every gap between matches.  An
 * empty match yields no piece; the search resumes one character later, so that character joins the
 * next gap (Oniguruma's find_iter, as tokenizers uses it). */
static void split_and_bpe(enc_ctx *c, const char *s, size_t n) {
  size_t prev = 0, from = 0;
  while (from < n && !c->err) {
    int rc = re_match(c, s, n, from);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) { c->err = -1; return; }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
    size_t ms = ov[0], me = ov[1];
    if (ms > prev) bpe_piece(c, (const unsigned char *)s + prev, ms - prev);
    if (me > ms) { bpe_piece(c, (const unsigned char *)s + ms, me - ms); from = me; }
    else {
      size_t adv = 1;
      if (me < n) utf8_cp((const unsigned char *)s + me, n - me, &adv);
      from = me + adv;
    }
    prev = me;
  }
  if (prev < n && !c->err) bpe_piece(c, (const unsigned char *)s + prev, n - prev);
}

/* ------------------------------------------------------------------------------------------ */
/* added tokens                                                                                */

typedef void (*span_fn)(enc_ctx *c, const char *s, size_t n);

/* Cuts the added tokens of m out of s (tokenizers' AddedVocabulary::find_matches): their ids go to
 * the output, the spans between them to fn. */
static void split_added(enc_ctx *c, const matcher *m, const char *s, size_t n, span_fn fn) {
  const usbx_tokenizer *t = c->t;
  if (!m->any) { fn(c, s, n); return; }
  size_t start_off = 0, i = 0;
  while (i < n) {
    unsigned char b = (unsigned char)s[i];
    int lo = m->start[b], hi = m->start[b + 1];
    if (lo == hi) { i++; continue; }
    const added_tok *hit = NULL;
    for (int k = lo; k < hi; k++) {
      const added_tok *a = &t->added[m->idx[k]];
      if (a->len <= n - i && memcmp(s + i, a->content, a->len) == 0) { hit = a; break; }
    }
    if (!hit) { i++; continue; }
    size_t start = i, stop = i + hit->len;
    if (hit->single_word) {
      bool start_space = true, stop_space = true;
      if (start > 0) {                     /* last character before start is not \w */
        size_t j = start - 1;
        while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
        size_t adv;
        start_space = !cp_is_word(utf8_cp((const unsigned char *)s + j, start - j, &adv));
      }
      if (stop < n) {
        size_t adv;
        stop_space = !cp_is_word(utf8_cp((const unsigned char *)s + stop, n - stop, &adv));
      }
      if (!start_space || !stop_space) { i = stop; continue; }
    }
    if (hit->lstrip) {                     /* swallow the whitespace before it */
      size_t j = start;
      while (j > start_off) {
        size_t k = j - 1;
        while (k > start_off && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        size_t adv;
        if (!cp_is_space(utf8_cp((const unsigned char *)s + k, j - k, &adv))) break;
        j = k;
      }
      start = j;
    }
    if (hit->rstrip) {                     /* and after it */
      while (stop < n) {
        size_t adv;
        if (!cp_is_space(utf8_cp((const unsigned char *)s + stop, n - stop, &adv))) break;
        stop += adv;
      }
    }
    if (start_off < start) fn(c, s + start_off, start - start_off);
    ivec_push(c->out, hit->id);
    start_off = stop;
    i = stop;
  }
  if (start_off < n) fn(c, s + start_off, n - start_off);
}

/* NFC of s unless it is already NFC for sure (no code point >= U+0300, i.e. no byte >= 0xCC). */
static bool needs_nfc(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) if ((unsigned char)s[i] >= 0xCC) return true;
  return false;
}

static void span_normalized(enc_ctx *c, const char *s, size_t n) {
  split_added(c, &c->t->m_norm, s, n, split_and_bpe);
}

static void span_raw(enc_ctx *c, const char *s, size_t n) {
  if (c->t->nfc && needs_nfc(s, n)) {
    utf8proc_uint8_t *r = NULL;
    utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &r,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (k < 0) { free(r); c->err = -1; return; }
    span_normalized(c, (const char *)r, (size_t)k);
    free(r);
    return;
  }
  span_normalized(c, s, n);
}

static void span_slow(enc_ctx *c, const char *s, size_t n) {
  /* slow tokenizer: the text is NFC already; all added tokens on it, then the regex */
  split_added(c, &c->t->m_norm, s, n, split_and_bpe);
}

int usbx_tok_encode(const usbx_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  if (!text && len) return -1;
  if (!utf8_valid((const unsigned char *)text, len)) return -1;
  ivec out = {0};
  out.cap = len / 3 + 16;
  out.v = xmalloc(out.cap * sizeof *out.v);
  enc_ctx c = {.t = t, .out = &out};
  c.md = pcre2_match_data_create_from_pattern(t->re, NULL);
  if (!c.md) usbx_die("out of memory (pcre2 match data)");
  if (t->nfc_first) {
    char *norm = NULL;
    size_t nn = len;
    const char *src = text;
    if (t->nfc && needs_nfc(text, len)) { nfc_dup(text, len, &norm, &nn); src = norm; }
    split_added(&c, &t->m_raw, src, nn, span_slow);
    free(norm);
  } else {
    split_added(&c, &t->m_raw, text, len, span_raw);
  }
  pcre2_match_data_free(c.md);
  free(c.syms);
  free(c.heap);
  if (c.err) { free(out.v); return -1; }
  *ids = out.v;
  *n = out.n;
  return 0;
}

int usbx_tok_encode_segment(const usbx_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  int32_t bos = usbx_tok_token_id(t, "<|im_start|>"), eos = usbx_tok_token_id(t, "<|im_end|>");
  if (bos < 0 || eos < 0) return -1;
  int32_t *body;
  size_t nb;
  if (usbx_tok_encode(t, text, len, &body, &nb) != 0) return -1;
  int32_t *r = xmalloc((nb + 2) * sizeof *r);
  r[0] = bos;
  memcpy(r + 1, body, nb * sizeof *r);
  r[nb + 1] = eos;
  free(body);
  *ids = r;
  *n = nb + 2;
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* decoding and lookups                                                                        */

char *usbx_tok_decode_n(const usbx_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, size_t *len) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id < 0 || (size_t)id >= t->nid || !t->tok[id]) continue;
    total += t->dec_len[id];
  }
  unsigned char *raw = xmalloc(total + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id < 0 || (size_t)id >= t->nid || !t->tok[id]) continue;
    if (skip_special && t->special[id]) continue;
    memcpy(raw + k, t->dec + t->dec_off[id], t->dec_len[id]);
    k += t->dec_len[id];
  }
  /* String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD (3 bytes, from <= 3) */
  char *out = xmalloc(k * 3 + 1);
  size_t o = 0, i = 0, bad;
  while (i < k) {
    size_t q = utf8_seq(raw, k, i, &bad);
    if (q) { memcpy(out + o, raw + i, q); o += q; i += q; }
    else { memcpy(out + o, "\xEF\xBF\xBD", 3); o += 3; i += bad; }
  }
  out[o] = 0;
  free(raw);
  if (len) *len = o;
  return out;
}

char *usbx_tok_decode(const usbx_tokenizer *t, const int32_t *ids, size_t n, bool skip_special) {
  return usbx_tok_decode_n(t, ids, n, skip_special, NULL);
}

int32_t usbx_tok_token_id(const usbx_tokenizer *t, const char *token) {
  for (int i = 0; i < t->nadded; i++) if (strcmp(t->added[i].orig, token) == 0) return t->added[i].id;
  return vmap_find(t, token, strlen(token));
}

const char *usbx_tok_id_to_token(const usbx_tokenizer *t, int32_t id) {
  if (id < 0 || (size_t)id >= t->nid) return NULL;
  return t->tok[id];
}

bool usbx_tok_is_special(const usbx_tokenizer *t, int32_t id) {
  return id >= 0 && (size_t)id < t->nid && t->special[id];
}

size_t usbx_tok_vocab_size(const usbx_tokenizer *t) { return t->nid; }

int usbx_tok_bagel_ids(const usbx_tokenizer *t, usbx_bagel_ids *o, char *err, size_t errlen) {
  o->bos = usbx_tok_token_id(t, "<|im_start|>");
  o->eos = usbx_tok_token_id(t, "<|im_end|>");
  o->start_of_image = usbx_tok_token_id(t, "<|vision_start|>");
  o->end_of_image = usbx_tok_token_id(t, "<|vision_end|>");
  o->pad = usbx_tok_token_id(t, "<|endoftext|>");
  const char *miss = o->bos < 0 ? "<|im_start|>" : o->eos < 0 ? "<|im_end|>"
                   : o->start_of_image < 0 ? "<|vision_start|>" : o->end_of_image < 0 ? "<|vision_end|>" : NULL;
  if (miss) {
    if (err && errlen) snprintf(err, errlen, "%s: token %s is missing (BAGEL needs it)", t->source ? t->source : "tokenizer", miss);
    return -1;
  }
  return 0;
}
