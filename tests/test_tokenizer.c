/* test_tokenizer.c — the Qwen byte-level BPE tokenizer against Hugging Face `tokenizers`.
 *
 * Reference data:
 *   ../shared/fixtures/tokenizer/encodings.jsonl   64 strings, ids and tokens from tokenizers 0.23.2
 *   tests/data/tok_ref.jsonl       374 more strings (every byte value, NFC-changing sequences, special
 *                                  tokens only, whitespace kinds, contractions, numbers, long words),
 *                                  decodes of invalid byte sequences, and a 1 MB mixed-script text
 *                                  (hash of the ids), all from tokenizers 0.23.2 (tests/data/tok_ref_gen.py)
 *   tests/data/tok_unicode_probe.json  which code points Oniguruma (inside tokenizers) puts in \p{L},
 *                                  \p{N}, \s and the (?i) contractions, and NFC of every code point
 * Tests needing the Qwen tokenizer file skip (exit 77) when ../shared is missing; the small
 * tokenizers in tests/data/tok_tiny*.json and the rejection tests run everywhere. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "jsonl.h"
#include "testlib.h"
#include "tokenizer.h"
#include "util.h"
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

static char tmpdir[256];

static bool ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
  return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static size_t jv_ids(jv arr, int32_t **out) {
  int n = jv_array_length(jv_copy(arr));
  int32_t *v = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *v);
  for (int i = 0; i < n; i++) {
    jv x = jv_array_get(jv_copy(arr), i);
    v[i] = (int32_t)jv_number_value(x);
    jv_free(x);
  }
  *out = v;
  return (size_t)n;
}

static char *nfc(const char *s, size_t n, size_t *outn) {
  utf8proc_uint8_t *r = NULL;
  if (n == 0) { *outn = 0; return xstrdup(""); }
  utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &r, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (k < 0) { *outn = 0; return xstrdup(""); }
  *outn = (size_t)k;
  return (char *)r;
}

static void write_file(const char *name, const char *text) {
  char *p = usbx_path_join(tmpdir, name);
  FILE *f = fopen(p, "w");
  if (!f) { perror(p); exit(1); }
  fputs(text, f);
  fclose(f);
  free(p);
}

/* encode + compare; returns true when equal */
static bool enc_is(const usbx_tokenizer *t, const char *s, size_t n, const int32_t *want, size_t nw) {
  int32_t *ids;
  size_t k;
  if (usbx_tok_encode(t, s, n, &ids, &k) != 0) return false;
  bool ok = ids_eq(ids, k, want, nw);
  if (!ok) {
    fprintf(stderr, "  encode(\"%.*s\") = [", (int)(n > 80 ? 80 : n), s);
    for (size_t i = 0; i < k && i < 40; i++) fprintf(stderr, "%s%d", i ? "," : "", ids[i]);
    fprintf(stderr, "] want [");
    for (size_t i = 0; i < nw && i < 40; i++) fprintf(stderr, "%s%d", i ? "," : "", want[i]);
    fprintf(stderr, "]\n");
  }
  free(ids);
  return ok;
}
#define ENC_IS(t, s, ...) do { const int32_t w_[] = {__VA_ARGS__}; \
  CHECKF(enc_is(t, s, strlen(s), w_, sizeof w_ / sizeof *w_), "%s", s); } while (0)

static bool dec_is(const usbx_tokenizer *t, const int32_t *ids, size_t n, bool skip, const char *want, size_t wn) {
  size_t len;
  char *d = usbx_tok_decode_n(t, ids, n, skip, &len);
  bool ok = len == wn && memcmp(d, want, wn) == 0;
  if (!ok) fprintf(stderr, "  decode = \"%s\" want \"%.*s\"\n", d, (int)wn, want);
  free(d);
  return ok;
}

/* ---------------------------------------------------------------------------------------- */
/* tiny tokenizers: every branch of the pipeline on a vocabulary small enough to reason about.
 * Ids: byte b -> b; merges in order give 256 "he", 257 "ll", 258 "hell", 259 "hello", 260 "Ġw",
 * 261 "or", 262 "Ġwor", 263 "Ġworl", 264 "Ġworld", 265 "aa", 266 "aaa", 267 "aaaa", 268 "ĠĠ",
 * 269 "ĠĠĠĠ", 270 "er", 271 "th", 272 "ther", 273 "Ġh", 274 "wor", 275 "word", 276 "Ã©" (é),
 * 277 "ca", 278 "caf"; 279 "xyz" (no merge makes it); added: 280 <sp>, 281 <sp><x>, 282 [L]
 * (lstrip, special), 283 [R] (rstrip), 284 word (single_word), 285 é (normalized), 286 A+U+030A
 * (normalized: matches Å), 287 "<a b>", 288 [LR] (lstrip+rstrip, special).
 * The expected ids follow tokenizers' rules (added_vocabulary.rs find_matches, bpe/word.rs
 * merge_all); they were derived by hand, not by running tokenizers. */
static void test_tiny(void) {
  char err[512];
  usbx_tokenizer *t = usbx_tok_load("tests/data/tok_tiny.json", err, sizeof err);
  CHECKF(t != NULL, "%s", err);
  if (!t) return;
  CHECK_EQ_INT(usbx_tok_vocab_size(t), 289);
  CHECK_EQ_INT(usbx_tok_token_id(t, "hello"), 259);
  CHECK_EQ_INT(usbx_tok_token_id(t, "Ġworld"), 264);
  CHECK_EQ_INT(usbx_tok_token_id(t, "[LR]"), 288);
  CHECK_EQ_INT(usbx_tok_token_id(t, "nope"), -1);
  CHECK_STR(usbx_tok_id_to_token(t, 264), "Ġworld");
  CHECK_STR(usbx_tok_id_to_token(t, 287), "<a b>");
  CHECK(usbx_tok_is_special(t, 282) && !usbx_tok_is_special(t, 283) && !usbx_tok_is_special(t, 264));
  ENC_IS(t, "hello world", 259, 264);
  ENC_IS(t, "hello<sp>world", 259, 280, 274, 'l', 'd');
  ENC_IS(t, "<sp><x><sp><x>", 281, 281);                  /* longest added token wins */
  ENC_IS(t, "<sp><x<sp>", 280, '<', 'x', 280);
  ENC_IS(t, "a [L] b", 'a', 282, 32, 'b');                /* lstrip swallows the space before */
  ENC_IS(t, "a  [L]b", 'a', 282, 'b');
  ENC_IS(t, "x[R]  y", 'x', 283, 'y');                    /* rstrip swallows the spaces after */
  ENC_IS(t, "[R] [R]", 283, 283);
  ENC_IS(t, "  [LR]  ", 288);
  ENC_IS(t, "\t[LR]\n", 288);
  ENC_IS(t, "\xe3\x80\x80[L]", 282);                       /* U+3000 is whitespace too */
  ENC_IS(t, "[L][L]", 282, 282);
  /* single_word: only where no word character touches it */
  ENC_IS(t, "word words sword word", 284, 262, 'd', 's', 32, 's', 275, 32, 284);
  ENC_IS(t, "a word.", 'a', 32, 284, '.');
  ENC_IS(t, "_word", '_', 275);
  ENC_IS(t, "1word", '1', 275);
  ENC_IS(t, "word\xcc\x81", 275, 0xcc, 0x81);              /* a combining mark is a word character */
  /* normalized added tokens match after NFC, the others before */
  ENC_IS(t, "caf\xc3\xa9", 278, 285);
  ENC_IS(t, "cafe\xcc\x81", 278, 285);
  ENC_IS(t, "A\xcc\x8a", 286);
  ENC_IS(t, "\xc3\x85", 286);
  ENC_IS(t, "x\xe2\x84\xab", 'x', 286);                    /* U+212B ANGSTROM SIGN -> Å */
  ENC_IS(t, "<a b>", 287);
  ENC_IS(t, "<a  b>", '<', 'a', 32, 32, 'b', '>');        /* "\s+(?!\S)" leaves one space to " b" */
  /* merge order: lowest rank first, leftmost on ties */
  ENC_IS(t, "aaaaa", 265, 266);
  ENC_IS(t, "aaaaaaa", 267, 266);
  ENC_IS(t, "aaaa aaa", 267, 32, 266);
  ENC_IS(t, "the other", 't', 256, 32, 'o', 't', 256, 'r'); /* "h e" (rank 0) beats "t h" and "e r" */
  ENC_IS(t, "xyz", 'x', 'y', 'z');
  ENC_IS(t, "  hello", 32, 32, 259);
  int32_t *ids;
  size_t n;
  CHECK(usbx_tok_encode(t, "", 0, &ids, &n) == 0 && n == 0 && ids != NULL);
  free(ids);
  /* decode: added tokens through the ByteLevel decoder; "<a b>" has a character outside the byte
   * alphabet (the space) so it decodes to its own bytes; é (U+00E9) is a byte-alphabet character
   * and decodes to the lone byte 0xE9, which is invalid UTF-8 -> U+FFFD. */
  {
    int32_t d[] = {259, 282, 264, 287, 285, 283};
    const char *want = "hello[L] world<a b>\xef\xbf\xbd[R]";
    CHECK(dec_is(t, d, 6, false, want, strlen(want)));
    const char *want2 = "hello world<a b>\xef\xbf\xbd[R]";
    CHECK(dec_is(t, d, 6, true, want2, strlen(want2)));
  }
  usbx_tok_free(t);

  /* ignore_merges: a whole piece found in the vocabulary is one token */
  t = usbx_tok_load("tests/data/tok_tiny_im.json", err, sizeof err);
  CHECKF(t != NULL, "%s", err);
  if (t) {
    ENC_IS(t, "xyz", 279);
    ENC_IS(t, "xyzxyz", 'x', 'y', 'z', 'x', 'y', 'z');
    ENC_IS(t, "hello world", 259, 264);
    usbx_tok_free(t);
  }
  /* merges written as "a b" strings load the same */
  t = usbx_tok_load("tests/data/tok_tiny_legacy.json", err, sizeof err);
  CHECKF(t != NULL, "%s", err);
  if (t) {
    ENC_IS(t, "hello world", 259, 264);
    ENC_IS(t, "aaaaaaa", 267, 266);
    usbx_tok_free(t);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* rejection of what we do not implement, with a message naming it */

static const char *TEMPLATE =
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
    "\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":null,\"decoder\":%s,"
    "\"model\":{\"type\":\"%s\",\"dropout\":null,\"unk_token\":null,\"byte_fallback\":%s,"
    "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"Ġ\":3},\"merges\":%s}}";
static const char *NFC_ = "{\"type\":\"NFC\"}";
static const char *PRE_ = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
                          "\"\\\\s+|\\\\S+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
                          "\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}]}";
static const char *DEC_ = "{\"type\":\"ByteLevel\"}";

static usbx_tokenizer *load_variant(const char *norm, const char *pre, const char *dec, const char *type,
                                    const char *bf, const char *merges, char *err, size_t errlen) {
  char *s = xasprintf(TEMPLATE, norm, pre, dec, type, bf, merges);
  write_file("variant.json", s);
  free(s);
  char *p = usbx_path_join(tmpdir, "variant.json");
  usbx_tokenizer *t = usbx_tok_load(p, err, errlen);
  free(p);
  return t;
}
#define REJECTS(want, ...) do { char e_[512] = ""; usbx_tokenizer *t_ = load_variant(__VA_ARGS__, e_, sizeof e_); \
  CHECKF(t_ == NULL && strstr(e_, want) != NULL, "error \"%s\" should mention \"%s\"", e_, want); usbx_tok_free(t_); } while (0)

static void test_reject(void) {
  char err[512];
  usbx_tokenizer *t = load_variant(NFC_, PRE_, DEC_, "BPE", "false", "[[\"a\",\"b\"]]", err, sizeof err);
  CHECKF(t != NULL, "control variant must load: %s", err);
  if (t) {
    ENC_IS(t, "ab ba", 2, 3, 1, 0);
    ENC_IS(t, "abc", 2);                  /* 'c' is not in the vocabulary and there is no unk: dropped */
    usbx_tok_free(t);
  }
  REJECTS("model type 'WordPiece'", NFC_, PRE_, DEC_, "WordPiece", "false", "[]");
  REJECTS("byte_fallback", NFC_, PRE_, DEC_, "BPE", "true", "[]");
  REJECTS("normalizer 'NFKC'", "{\"type\":\"NFKC\"}", PRE_, DEC_, "BPE", "false", "[]");
  REJECTS("pre_tokenizer 'Whitespace'", NFC_, "{\"type\":\"Whitespace\"}", DEC_, "BPE", "false", "[]");
  REJECTS("pre_tokenizer 'ByteLevel'", NFC_, "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}", DEC_, "BPE", "false", "[]");
  REJECTS("decoder 'WordPiece'", NFC_, PRE_, "{\"type\":\"WordPiece\"}", "BPE", "false", "[]");
  REJECTS("decoder 'null'", NFC_, PRE_, "null", "BPE", "false", "[]");
  REJECTS("token 'c' is not in the vocabulary", NFC_, PRE_, DEC_, "BPE", "false", "[[\"a\",\"c\"]]");
  REJECTS("'ba' is not in the vocabulary", NFC_, PRE_, DEC_, "BPE", "false", "[\"b a\"]");
  REJECTS("\\w is not supported", NFC_,
          "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\w+\"},"
          "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
          "\"use_regex\":false}]}", DEC_, "BPE", "false", "[]");
  REJECTS("behavior other than Isolated", NFC_,
          "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
          "\"behavior\":\"Removed\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
          "\"use_regex\":false}]}", DEC_, "BPE", "false", "[]");
  /* not JSON, missing files, empty folder */
  write_file("bad.json", "{\"model\": ");
  char *p = usbx_path_join(tmpdir, "bad.json");
  t = usbx_tok_load(p, err, sizeof err);
  CHECKF(!t && strstr(err, "not valid JSON"), "%s", err);
  free(p);
  t = usbx_tok_load("/nonexistent/tokenizer.json", err, sizeof err);
  CHECKF(!t && strstr(err, "cannot read"), "%s", err);
  char *d = usbx_path_join(tmpdir, "empty");
  mkdir(d, 0755);
  t = usbx_tok_load(d, err, sizeof err);
  CHECKF(!t && strstr(err, "no tokenizer.json"), "%s", err);
  free(d);
  /* a slow-tokenizer folder whose config names another tokenizer class */
  d = usbx_path_join(tmpdir, "gpt2");
  mkdir(d, 0755);
  char *f1 = usbx_path_join(d, "vocab.json"), *f2 = usbx_path_join(d, "merges.txt"), *f3 = usbx_path_join(d, "tokenizer_config.json");
  usbx_write_file_atomic(f1, "{\"a\":0}", 7);
  usbx_write_file_atomic(f2, "#version: 0.2\n", 14);
  usbx_write_file_atomic(f3, "{\"tokenizer_class\":\"GPT2Tokenizer\"}", 35);
  t = usbx_tok_load(d, err, sizeof err);
  CHECKF(!t && strstr(err, "GPT2Tokenizer"), "%s", err);
  free(f1); free(f2); free(f3); free(d);
}

/* ---------------------------------------------------------------------------------------- */
/* regex classes and NFC per code point against what tokenizers (Oniguruma) does */

static void test_unicode_probe(void) {
  size_t len;
  char *text = usbx_read_file("tests/data/tok_unicode_probe.json", &len);
  CHECK(text != NULL);
  if (!text) return;
  jv probe = jv_parse_sized(text, (int)len);
  free(text);
  CHECK(jv_get_kind(probe) == JV_KIND_OBJECT);
  const char *names[] = {"L", "N", "s", "fold_stmd"};
  /* the patterns as the tokenizer compiles them (\s -> \p{White_Space}) */
  const char *pats[] = {"^\\p{L}$", "^\\p{N}$", "^\\p{White_Space}$", "^(?i:'s|'t|'m|'d)$"};
  int ec;
  PCRE2_SIZE eo;
  pcre2_code *cn = pcre2_compile((PCRE2_SPTR) "^\\p{Cn}$", PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
  pcre2_match_data *md = pcre2_match_data_create(4, NULL);
  for (int k = 0; k < 4; k++) {
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pats[k], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    CHECK(re != NULL);
    uint8_t *ref = xcalloc(0x110000, 1);
    jv ranges = jv_object_get(jv_copy(probe), jv_string(names[k]));
    int nr = jv_array_length(jv_copy(ranges));
    for (int i = 0; i < nr; i++) {
      jv r = jv_array_get(jv_copy(ranges), i);
      jv a = jv_array_get(jv_copy(r), 0), b = jv_array_get(jv_copy(r), 1);
      for (long c = (long)jv_number_value(a); c <= (long)jv_number_value(b); c++) ref[c] = 1;
      jv_free(a); jv_free(b); jv_free(r);
    }
    jv_free(ranges);
    long agree = 0, newer = 0, differ = 0;
    for (long c = 0; c < 0x110000; c++) {
      if (c >= 0xD800 && c < 0xE000) continue;
      if (k == 3 && c == '\'') continue;
      unsigned char buf[8];
      int n = 0;
      if (k == 3) buf[n++] = '\'';
      n += (int)utf8proc_encode_char((utf8proc_int32_t)c, buf + n);
      bool m = pcre2_match(re, buf, (size_t)n, 0, 0, md, NULL) >= 0;
      if (m == (bool)ref[c]) { agree++; continue; }
      /* allowed: code points PCRE2's (older) Unicode tables do not know yet */
      unsigned char cb[8];
      int cl = (int)utf8proc_encode_char((utf8proc_int32_t)c, cb);
      if (pcre2_match(cn, cb, (size_t)cl, 0, 0, md, NULL) >= 0) { newer++; continue; }
      if (differ++ < 5) fprintf(stderr, "  class %s differs at U+%04lX (pcre2 %d, tokenizers %d)\n", names[k], c, m, ref[c]);
    }
    CHECKF(differ == 0, "class %s: %ld assigned code points differ", names[k], differ);
    CHECK(agree > 1000000);
    fprintf(stderr, "class %s: %ld agree, %ld differ only because PCRE2's Unicode is older\n", names[k], agree, newer);
    free(ref);
    pcre2_code_free(re);
  }
  pcre2_match_data_free(md);
  pcre2_code_free(cn);
  /* NFC of every single code point */
  jv map = jv_object_get(jv_copy(probe), jv_string("nfc"));
  long bad = 0, changed = 0;
  for (long c = 1; c < 0x110000; c++) {
    if (c >= 0xD800 && c < 0xE000) continue;
    unsigned char b[8];
    int n = (int)utf8proc_encode_char((utf8proc_int32_t)c, b);
    size_t on;
    char *o = nfc((char *)b, (size_t)n, &on);
    char key[16];
    snprintf(key, sizeof key, "%lx", c);
    jv want = jv_object_get(jv_copy(map), jv_string(key));
    unsigned char wb[64];
    size_t wn = 0;
    if (jv_get_kind(want) == JV_KIND_ARRAY) {
      changed++;
      int m = jv_array_length(jv_copy(want));
      for (int i = 0; i < m; i++) {
        jv x = jv_array_get(jv_copy(want), i);
        wn += (size_t)utf8proc_encode_char((utf8proc_int32_t)jv_number_value(x), wb + wn);
        jv_free(x);
      }
    } else { memcpy(wb, b, (size_t)n); wn = (size_t)n; }
    jv_free(want);
    if (on != wn || memcmp(o, wb, wn) != 0) { if (bad++ < 5) fprintf(stderr, "  NFC differs at U+%04lX\n", c); }
    free(o);
  }
  jv_free(map);
  CHECKF(bad == 0, "%ld code points normalise differently", bad);
  CHECK(changed > 1000);
  jv_free(probe);
}

/* ---------------------------------------------------------------------------------------- */
/* the Qwen tokenizer */

static int fixture_cases(const usbx_tokenizer *t, const char *path, bool check_tokens, const char *what) {
  usbx_jsonl *r = usbx_jsonl_open(path);
  CHECKF(r != NULL, "%s", path);
  if (!r) return 0;
  jv rec;
  int n = 0, bad = 0;
  while (usbx_jsonl_next(r, &rec) == 1) {
    jv text = jv_object_get(jv_copy(rec), jv_string("text"));
    jv idsv = jv_object_get(jv_copy(rec), jv_string("ids"));
    int32_t *want;
    size_t nw = jv_ids(idsv, &want);
    size_t tl = (size_t)jv_string_length_bytes(jv_copy(text));
    int32_t *ids;
    size_t k;
    int rc = usbx_tok_encode(t, jv_string_value(text), tl, &ids, &k);
    bool ok = rc == 0 && ids_eq(ids, k, want, nw);
    if (!ok && bad++ < 5) {
      fprintf(stderr, "  %s line %d: ids differ for \"%.60s\": got", what, n + 1, jv_string_value(text));
      for (size_t i = 0; i < k && i < 30; i++) fprintf(stderr, " %d", ids[i]);
      fprintf(stderr, "\n                want");
      for (size_t i = 0; i < nw && i < 30; i++) fprintf(stderr, " %d", want[i]);
      fprintf(stderr, "\n");
    }
    CHECK(ok);
    if (check_tokens) {
      jv toks = jv_object_get(jv_copy(rec), jv_string("tokens"));
      int nt = jv_array_length(jv_copy(toks));
      CHECK_EQ_INT(nt, nw);
      for (int i = 0; i < nt && (size_t)i < nw; i++) {
        jv s = jv_array_get(jv_copy(toks), i);
        const char *mine = usbx_tok_id_to_token(t, want[i]);
        CHECKF(mine && strcmp(mine, jv_string_value(s)) == 0, "token %d of line %d", i, n + 1);
        jv_free(s);
      }
      jv_free(toks);
    }
    /* decode(encode(x)) == NFC(x) */
    if (rc == 0) {
      size_t dn, nn;
      char *d = usbx_tok_decode_n(t, ids, k, false, &dn);
      char *x = nfc(jv_string_value(text), tl, &nn);
      CHECKF(dn == nn && memcmp(d, x, nn) == 0, "%s line %d: decode(encode(x)) != NFC(x)", what, n + 1);
      free(d);
      free(x);
    }
    free(ids);
    free(want);
    jv_free(text);
    jv_free(idsv);
    jv_free(rec);
    n++;
  }
  usbx_jsonl_close(r);
  return n;
}

static uint64_t fnv_ids(const int32_t *ids, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 4; k++) { h ^= ((uint32_t)ids[i] >> (8 * k)) & 0xFF; h *= 0x100000001b3ULL; }
  return h;
}

/* the 1 MB mixed-script text of tok_ref_gen.py: snippets chosen by an LCG */
static char *gen_mixed(jv snippets, size_t nbytes, size_t *len) {
  usbx_buf b = {0};
  uint64_t s = 0x1234567;
  int ns = jv_array_length(jv_copy(snippets));
  while (b.len < nbytes) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    jv x = jv_array_get(jv_copy(snippets), (int)((s >> 33) % (uint64_t)ns));
    usbx_buf_append(&b, jv_string_value(x), (size_t)jv_string_length_bytes(jv_copy(x)));
    jv_free(x);
  }
  usbx_buf_append(&b, "", 1);
  *len = b.len - 1;
  return b.data;
}

/* cases copied out of jv (libjq values are not thread-safe) for the concurrency test */
typedef struct { char *text; size_t len; int32_t *ids; size_t n; } plain_case;
typedef struct { const usbx_tokenizer *t; plain_case *cases; int ncases, cap; int ok; } thr_arg;

/* reference cases of tok_ref.jsonl for tokenizer `tname`; returns how many lines were checked */
static int ref_cases(const usbx_tokenizer *t, const char *tname, thr_arg *collect) {
  usbx_jsonl *r = usbx_jsonl_open("tests/data/tok_ref.jsonl");
  CHECK(r != NULL);
  if (!r) return 0;
  jv rec;
  int n = 0, bad = 0;
  while (usbx_jsonl_next(r, &rec) == 1) {
    const char *tk = usbx_jv_str(rec, "tok"), *name = usbx_jv_str(rec, "name");
    if (!tk || strcmp(tk, tname) != 0) { jv_free(rec); continue; }
    n++;
    if (strcmp(name, "snippets") == 0) { jv_free(rec); continue; }
    if (strcmp(name, "mixed1mb") == 0) {
      /* needs the snippets line, which comes before it */
      jv_free(rec);
      continue;
    }
    int32_t *want = NULL, *ids = NULL;
    size_t nw = 0, k = 0;
    jv idsv = jv_object_get(jv_copy(rec), jv_string("ids"));
    nw = jv_ids(idsv, &want);
    jv_free(idsv);
    if (usbx_jv_has(rec, "text")) {
      jv text = jv_object_get(jv_copy(rec), jv_string("text"));
      size_t tl = (size_t)jv_string_length_bytes(jv_copy(text));
      int rc = usbx_tok_encode(t, jv_string_value(text), tl, &ids, &k);
      bool ok = rc == 0 && ids_eq(ids, k, want, nw);
      if (!ok && bad++ < 8) {
        fprintf(stderr, "  %s: ids differ: got", name);
        for (size_t i = 0; i < k && i < 30; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n   want");
        for (size_t i = 0; i < nw && i < 30; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
      }
      CHECKF(ok, "%s", name);
      if (rc == 0) {
        size_t dn, nn;
        char *d = usbx_tok_decode_n(t, ids, k, false, &dn);
        char *x = nfc(jv_string_value(text), tl, &nn);
        CHECKF(dn == nn && memcmp(d, x, nn) == 0, "%s: decode(encode(x)) != NFC(x)", name);
        free(d);
        free(x);
      }
      if (collect) {
        if (collect->ncases == collect->cap) {
          collect->cap = collect->cap ? collect->cap * 2 : 64;
          collect->cases = xrealloc(collect->cases, (size_t)collect->cap * sizeof *collect->cases);
        }
        plain_case *pc = &collect->cases[collect->ncases++];
        pc->text = xmalloc(tl + 1);
        memcpy(pc->text, jv_string_value(text), tl + 1);
        pc->len = tl;
        pc->ids = xmalloc((nw ? nw : 1) * sizeof *pc->ids);
        memcpy(pc->ids, want, nw * sizeof *pc->ids);
        pc->n = nw;
      }
      jv_free(text);
    }
    /* decodes as HF gives them, keeping and skipping special tokens */
    for (int skip = 0; skip < 2; skip++) {
      jv dv = jv_object_get(jv_copy(rec), jv_string(skip ? "dec_skip" : "dec"));
      size_t dn;
      char *d = usbx_tok_decode_n(t, want, nw, skip, &dn);
      size_t wl = (size_t)jv_string_length_bytes(jv_copy(dv));
      bool ok = dn == wl && memcmp(d, jv_string_value(dv), wl) == 0;
      CHECKF(ok, "%s: decode(skip_special=%d) = \"%.80s\" want \"%.80s\"", name, skip, d, jv_string_value(dv));
      free(d);
      jv_free(dv);
    }
    free(ids);
    free(want);
    jv_free(rec);
  }
  usbx_jsonl_close(r);
  return n;
}

static void test_mixed1mb(const usbx_tokenizer *t) {
  usbx_jsonl *r = usbx_jsonl_open("tests/data/tok_ref.jsonl");
  jv rec, snippets = jv_invalid(), big = jv_invalid();
  while (usbx_jsonl_next(r, &rec) == 1) {
    const char *name = usbx_jv_str(rec, "name");
    if (name && strcmp(name, "snippets") == 0) snippets = jv_object_get(jv_copy(rec), jv_string("snippets"));
    if (name && strcmp(name, "mixed1mb") == 0) big = jv_copy(rec);
    jv_free(rec);
  }
  usbx_jsonl_close(r);
  CHECK(jv_get_kind(snippets) == JV_KIND_ARRAY && jv_get_kind(big) == JV_KIND_OBJECT);
  if (jv_get_kind(snippets) != JV_KIND_ARRAY || jv_get_kind(big) != JV_KIND_OBJECT) { jv_free(snippets); jv_free(big); return; }
  double nbytes = 0, nwant = 0;
  usbx_jv_num(big, "nbytes", &nbytes);
  usbx_jv_num(big, "n", &nwant);
  size_t len;
  char *text = gen_mixed(snippets, 1 << 20, &len);
  CHECK_EQ_INT(len, (long long)nbytes);
  int32_t *ids;
  size_t n;
  double t0 = usbx_now();
  CHECK(usbx_tok_encode(t, text, len, &ids, &n) == 0);
  double dt = usbx_now() - t0;
  fprintf(stderr, "mixed 1 MB: %zu ids in %.3f s\n", n, dt);
  CHECK_EQ_INT(n, (long long)nwant);
  char hex[32];
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv_ids(ids, n));
  CHECKF(strcmp(hex, usbx_jv_str(big, "hash")) == 0, "hash %s want %s", hex, usbx_jv_str(big, "hash"));
  jv head = jv_object_get(jv_copy(big), jv_string("head")), tail = jv_object_get(jv_copy(big), jv_string("tail"));
  int32_t *hw, *tw;
  size_t nh = jv_ids(head, &hw), nt = jv_ids(tail, &tw);
  CHECK(n >= nh && ids_eq(ids, nh, hw, nh));
  CHECK(n >= nt && ids_eq(ids + n - nt, nt, tw, nt));
  size_t dn, nn;
  char *d = usbx_tok_decode_n(t, ids, n, false, &dn);
  char *x = nfc(text, len, &nn);
  CHECK(dn == nn && memcmp(d, x, nn) == 0);
  free(d); free(x); free(hw); free(tw); free(ids); free(text);
  jv_free(head); jv_free(tail); jv_free(snippets); jv_free(big);
}

static void *thr_main(void *p) {
  thr_arg *a = p;
  int n = a->ncases;
  a->ok = 1;
  for (int rep = 0; rep < 3; rep++)
    for (int i = 0; i < n; i++) {
      const plain_case *c = &a->cases[(i * 7 + rep * 13) % n];   /* different orders per thread */
      int32_t *ids;
      size_t k;
      if (usbx_tok_encode(a->t, c->text, c->len, &ids, &k) != 0) { a->ok = 0; continue; }
      if (!ids_eq(ids, k, c->ids, c->n)) a->ok = 0;
      free(ids);
    }
  return NULL;
}

/* long pathological inputs: no quadratic behaviour, exact round trips */
static void test_long(const usbx_tokenizer *t) {
  size_t n = 1 << 20;
  char *s = xmalloc(n + 1);
  const char *fills[] = {" ", "!", "a", "\n", "7", "\xe4\xb8\x80" /* 一 */};
  for (int f = 0; f < 6; f++) {
    size_t fl = strlen(fills[f]), len = (n / fl) * fl;
    for (size_t i = 0; i < len; i += fl) memcpy(s + i, fills[f], fl);
    int32_t *ids;
    size_t k;
    double t0 = usbx_now();
    int rc = usbx_tok_encode(t, s, len, &ids, &k);
    double dt = usbx_now() - t0;
    CHECKF(rc == 0, "1 MB of '%s'", fills[f]);
    if (rc) continue;
    fprintf(stderr, "1 MB of '%s': %zu ids, %.3f s\n", fills[f], k, dt);
    CHECKF(dt < 20, "1 MB of '%s' took %.1f s", fills[f], dt);
    size_t dn;
    char *d = usbx_tok_decode_n(t, ids, k, false, &dn);
    CHECKF(dn == len && memcmp(d, s, len) == 0, "round trip of 1 MB of '%s'", fills[f]);
    free(d);
    free(ids);
  }
  free(s);
}

/* random strings (valid UTF-8 from many scripts, combining marks, specials, whitespace kinds):
 * decode(encode(x)) == NFC(x); random bytes: -1 exactly when they are not valid UTF-8 */
static void test_random(const usbx_tokenizer *t) {
  usbx_rng rng;
  usbx_rng_seed(&rng, 42);
  static const int32_t pool[][2] = {{0x20, 0x7E}, {0x00, 0x1F}, {0x80, 0x2FF}, {0x300, 0x36F}, {0x370, 0x52F},
                                    {0x590, 0x6FF}, {0x900, 0x97F}, {0x1100, 0x11FF}, {0x2000, 0x206F},
                                    {0x3000, 0x30FF}, {0x4E00, 0x4E80}, {0xAC00, 0xAC80}, {0xF900, 0xFAFF},
                                    {0x1F300, 0x1F6FF}, {0x10000, 0x10FFFF}};
  static const char *specials[] = {"<|im_start|>", "<|im_end|>", "<think>", "<|endoftext|>", "'s", "'S", "\r\n"};
  int bad = 0;
  for (int it = 0; it < 3000; it++) {
    usbx_buf b = {0};
    int len = (int)usbx_rng_below(&rng, 40);
    for (int i = 0; i < len; i++) {
      if (usbx_rng_below(&rng, 12) == 0) { const char *sp = specials[usbx_rng_below(&rng, 7)]; usbx_buf_append(&b, sp, strlen(sp)); continue; }
      const int32_t *r = pool[usbx_rng_below(&rng, sizeof pool / sizeof *pool)];
      int32_t c = r[0] + (int32_t)usbx_rng_below(&rng, (uint64_t)(r[1] - r[0] + 1));
      if (c >= 0xD800 && c < 0xE000) c = 'x';
      unsigned char u[4];
      usbx_buf_append(&b, u, (size_t)utf8proc_encode_char(c, u));
    }
    int32_t *ids;
    size_t n;
    if (usbx_tok_encode(t, b.data ? b.data : "", b.len, &ids, &n) != 0) { bad++; usbx_buf_free(&b); continue; }
    size_t dn, nn;
    char *d = usbx_tok_decode_n(t, ids, n, false, &dn);
    char *x = nfc(b.data ? b.data : "", b.len, &nn);
    if (!(dn == nn && memcmp(d, x, nn) == 0)) bad++;
    free(d); free(x); free(ids);
    usbx_buf_free(&b);
  }
  CHECKF(bad == 0, "%d random strings failed the round trip", bad);
  int mism = 0;
  for (int it = 0; it < 3000; it++) {
    unsigned char raw[16];
    size_t len = (size_t)usbx_rng_below(&rng, 16);
    for (size_t i = 0; i < len; i++) raw[i] = (unsigned char)(usbx_rng_below(&rng, 3) ? 0x80 + usbx_rng_below(&rng, 0x80) : usbx_rng_below(&rng, 0x80));
    utf8proc_int32_t c;
    bool valid = true;
    for (size_t i = 0; i < len && valid;) {
      utf8proc_ssize_t k = utf8proc_iterate(raw + i, (utf8proc_ssize_t)(len - i), &c);
      if (k <= 0) valid = false; else i += (size_t)k;
    }
    int32_t *ids;
    size_t n;
    int rc = usbx_tok_encode(t, (const char *)raw, len, &ids, &n);
    if ((rc == 0) != valid) mism++;
    if (rc == 0) free(ids);
  }
  CHECKF(mism == 0, "%d random byte strings: validity disagrees with utf8proc", mism);
}

static void test_qwen(const char *shared) {
  char path[4096], err[512];
  snprintf(path, sizeof path, "%s/fixtures/tokenizer/tokenizer.json", shared);
  double t0 = usbx_now();
  usbx_tokenizer *t = usbx_tok_load(path, err, sizeof err);
  fprintf(stderr, "load tokenizer.json: %.3f s\n", usbx_now() - t0);
  CHECKF(t != NULL, "%s", err);
  if (!t) return;
  CHECK_EQ_INT(usbx_tok_vocab_size(t), 151669);
  CHECK_EQ_INT(usbx_tok_token_id(t, "<|endoftext|>"), 151643);
  CHECK_EQ_INT(usbx_tok_token_id(t, "<|im_start|>"), 151644);
  CHECK_EQ_INT(usbx_tok_token_id(t, "<|im_end|>"), 151645);
  CHECK_EQ_INT(usbx_tok_token_id(t, "<|vision_start|>"), 151652);
  CHECK_EQ_INT(usbx_tok_token_id(t, "<|vision_end|>"), 151653);
  CHECK_EQ_INT(usbx_tok_token_id(t, "</think>"), 151668);
  CHECK_EQ_INT(usbx_tok_token_id(t, "Ġthe"), 279);
  CHECK(usbx_tok_is_special(t, 151644) && !usbx_tok_is_special(t, 279));
  usbx_bagel_ids b;
  CHECK(usbx_tok_bagel_ids(t, &b, err, sizeof err) == 0);
  CHECK(b.bos == 151644 && b.eos == 151645 && b.start_of_image == 151652 && b.end_of_image == 151653 && b.pad == 151643);
  /* BAGEL text segment */
  {
    int32_t *ids;
    size_t n;
    CHECK(usbx_tok_encode_segment(t, "Hello", 5, &ids, &n) == 0);
    CHECK(n == 3 && ids[0] == 151644 && ids[1] == 9707 && ids[2] == 151645);
    free(ids);
    CHECK(usbx_tok_encode_segment(t, "", 0, &ids, &n) == 0);
    CHECK(n == 2 && ids[0] == 151644 && ids[1] == 151645);
    free(ids);
    /* invalid UTF-8 is refused */
    CHECK(usbx_tok_encode(t, "a\xff", 2, &ids, &n) == -1 && ids == NULL && n == 0);
    CHECK(usbx_tok_encode(t, "\xed\xa0\x80", 3, &ids, &n) == -1);
    CHECK(usbx_tok_encode(t, "\xe4\xb8", 2, &ids, &n) == -1);
    /* NUL characters survive NFC and the regex (lengths, not C strings) */
    {
      const char in[] = "a\0e\xcc\x81<|im_end|>\0", want[] = "a\0\xc3\xa9<|im_end|>\0";
      CHECK(usbx_tok_encode(t, in, sizeof in - 1, &ids, &n) == 0);
      CHECK(n >= 4 && ids[n - 2] == 151645);
      CHECK(dec_is(t, ids, n, false, want, sizeof want - 1));
      free(ids);
    }
    /* decoding empty input and unknown ids */
    int32_t none[] = {-5, 999999};
    CHECK(dec_is(t, none, 2, false, "", 0));
    CHECK(dec_is(t, NULL, 0, true, "", 0));
  }
  snprintf(path, sizeof path, "%s/fixtures/tokenizer/encodings.jsonl", shared);
  int n = fixture_cases(t, path, true, "encodings.jsonl");
  CHECK_EQ_INT(n, 64);
  thr_arg ta = {t, NULL, 0, 0, 0};
  int nr = ref_cases(t, "qwen", &ta);
  CHECK(nr > 350);
  test_mixed1mb(t);
  test_long(t);
  test_random(t);
  /* 4 threads encoding the same cases concurrently give the same ids */
  {
    pthread_t th[4];
    thr_arg a[4];
    CHECK(ta.ncases > 350);
    for (int i = 0; i < 4; i++) { a[i] = ta; pthread_create(&th[i], NULL, thr_main, &a[i]); }
    for (int i = 0; i < 4; i++) { pthread_join(th[i], NULL); CHECK(a[i].ok); }
  }
  for (int i = 0; i < ta.ncases; i++) { free(ta.cases[i].text); free(ta.cases[i].ids); }
  free(ta.cases);
  usbx_tok_free(t);

  /* a folder holding tokenizer.json */
  snprintf(path, sizeof path, "%s/fixtures/tokenizer", shared);
  t = usbx_tok_load(path, err, sizeof err);
  CHECKF(t != NULL, "%s", err);
  usbx_tok_free(t);

  /* the slow-tokenizer files made from the same vocabulary: vocab.json + merges.txt + the fixture's
   * tokenizer_config.json (its added_tokens_decoder) give the same ids */
  {
    snprintf(path, sizeof path, "%s/fixtures/tokenizer/tokenizer.json", shared);
    size_t len;
    char *text = usbx_read_file(path, &len);
    jv root = jv_parse_sized(text, (int)len);
    free(text);
    jv model = jv_object_get(jv_copy(root), jv_string("model"));
    jv vocab = jv_object_get(jv_copy(model), jv_string("vocab"));
    char *vj = usbx_jv_dump(vocab);     /* does not consume */
    jv_free(vocab);
    char *slow = usbx_path_join(tmpdir, "slow");
    mkdir(slow, 0755);
    char *f = usbx_path_join(slow, "vocab.json");
    usbx_write_file_atomic(f, vj, strlen(vj));
    free(f);
    free(vj);
    usbx_buf mb = {0};
    usbx_buf_appendf(&mb, "#version: 0.2\n");
    jv merges = jv_object_get(jv_copy(model), jv_string("merges"));
    int nm = jv_array_length(jv_copy(merges));
    for (int i = 0; i < nm; i++) {
      jv m = jv_array_get(jv_copy(merges), i);
      jv a = jv_array_get(jv_copy(m), 0), bb = jv_array_get(jv_copy(m), 1);
      usbx_buf_appendf(&mb, "%s %s\n", jv_string_value(a), jv_string_value(bb));
      jv_free(a); jv_free(bb); jv_free(m);
    }
    f = usbx_path_join(slow, "merges.txt");
    usbx_write_file_atomic(f, mb.data, mb.len);
    free(f);
    usbx_buf_free(&mb);
    jv_free(merges);
    jv_free(model);
    jv_free(root);
    snprintf(path, sizeof path, "%s/fixtures/tokenizer/tokenizer_config.json", shared);
    text = usbx_read_file(path, &len);
    f = usbx_path_join(slow, "tokenizer_config.json");
    usbx_write_file_atomic(f, text, len);
    free(f);
    free(text);
    t = usbx_tok_load(slow, err, sizeof err);
    CHECKF(t != NULL, "slow files: %s", err);
    if (t) {
      CHECK_EQ_INT(usbx_tok_vocab_size(t), 151669);
      CHECK_EQ_INT(usbx_tok_token_id(t, "<|im_start|>"), 151644);
      snprintf(path, sizeof path, "%s/fixtures/tokenizer/encodings.jsonl", shared);
      CHECK_EQ_INT(fixture_cases(t, path, true, "slow files"), 64);
      CHECK(ref_cases(t, "qwen", NULL) > 350);
      usbx_tok_free(t);
    }
    free(slow);
  }
}

int main(void) {
  if (access("tests/data/tok_tiny.json", R_OK) != 0) {
    fprintf(stderr, "test_tokenizer: run it from the repository root (tests/data/ not found)\n");
    return 1;
  }
  snprintf(tmpdir, sizeof tmpdir, "/tmp/usbx-test-tok.XXXXXX");
  if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
  test_tiny();
  test_reject();
  test_unicode_probe();
  const char *shared = t_shared();
  if (shared) test_qwen(shared);
  char *cmd = xasprintf("rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  free(cmd);
  int rc = t_done("test_tokenizer");
  if (!shared && rc == 0) T_SKIP("../shared missing: the Qwen tokenizer checks did not run");
  return rc;
}
