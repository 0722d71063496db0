/* usbx-tok — tokenises a JSONL field with the Qwen byte-level BPE tokenizer (or decodes ids back).
 * See usbx-tok(1). */
#include "cli.h"
#include "jsonl.h"
#include "tokenizer.h"
#include "util.h"
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *usage = "usbx-tok --tokenizer PATH [--decode] [--field NAME] [--ids-field NAME] [--segment] "
                           "[--skip-special] [FILE...]";
static const char *description =
    "Reads JSONL records (FILEs or stdin) and adds \"ids\", the token ids of the \"text\" field (no special\n"
    "tokens added; --segment wraps them as a BAGEL text segment <|im_start|> ... <|im_end|>), or with\n"
    "--decode adds \"text\" decoded from \"ids\".  Every other field passes through.  PATH is a\n"
    "tokenizer.json, a folder holding one, or a folder with vocab.json + merges.txt\n"
    "[+ tokenizer_config.json].  The ids are those of Hugging Face tokenizers.  See usbx-tok(1).";

static struct {
  const char *tokenizer, *field, *ids_field, *shard;
  bool decode, segment, skip_special, keep_going, progress;
  long shard_i, shard_n;
} G;

/* Returns the new record, or jv_invalid with a message in err. */
static jv handle(const usbx_tokenizer *tok, jv rec, char *err, size_t errlen) {
  if (!G.decode) {
    jv v = jv_object_get(jv_copy(rec), jv_string(G.field));
    if (jv_get_kind(v) != JV_KIND_STRING) {
      snprintf(err, errlen, "field \"%s\" is %s, expected a string", G.field,
               jv_get_kind(v) == JV_KIND_INVALID ? "missing" : jv_kind_name(jv_get_kind(v)));
      jv_free(v);
      jv_free(rec);
      return jv_invalid();
    }
    int32_t *ids;
    size_t n;
    size_t len = (size_t)jv_string_length_bytes(jv_copy(v));
    int rc = G.segment ? usbx_tok_encode_segment(tok, jv_string_value(v), len, &ids, &n)
                       : usbx_tok_encode(tok, jv_string_value(v), len, &ids, &n);
    jv_free(v);
    if (rc != 0) {
      snprintf(err, errlen, "field \"%s\" could not be encoded (invalid UTF-8)", G.field);
      jv_free(rec);
      return jv_invalid();
    }
    jv arr = jv_array_sized((int)(n > INT_MAX ? INT_MAX : n));
    for (size_t i = 0; i < n; i++) arr = jv_array_append(arr, jv_number(ids[i]));
    free(ids);
    return jv_object_set(rec, jv_string(G.ids_field), arr);
  }
  jv v = jv_object_get(jv_copy(rec), jv_string(G.ids_field));
  if (jv_get_kind(v) != JV_KIND_ARRAY) {
    snprintf(err, errlen, "field \"%s\" is %s, expected an array of token ids", G.ids_field,
             jv_get_kind(v) == JV_KIND_INVALID ? "missing" : jv_kind_name(jv_get_kind(v)));
    jv_free(v);
    jv_free(rec);
    return jv_invalid();
  }
  int n = jv_array_length(jv_copy(v));
  int32_t *ids = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
  size_t vs = usbx_tok_vocab_size(tok);
  for (int i = 0; i < n; i++) {
    jv x = jv_array_get(jv_copy(v), i);
    bool integer = jv_get_kind(x) == JV_KIND_NUMBER && jv_is_integer(x);
    double d = integer ? jv_number_value(x) : -1;
    jv_free(x);
    bool ok = integer && d >= 0 && d < (double)vs && usbx_tok_id_to_token(tok, (int32_t)d) != NULL;
    if (!ok) {
      if (integer)
        snprintf(err, errlen, "field \"%s\": id %.0f (element %d) is not in the vocabulary", G.ids_field, d, i);
      else snprintf(err, errlen, "field \"%s\": element %d is not a token id", G.ids_field, i);
      free(ids);
      jv_free(v);
      jv_free(rec);
      return jv_invalid();
    }
    ids[i] = (int32_t)d;
  }
  jv_free(v);
  size_t len;
  char *text = usbx_tok_decode_n(tok, ids, (size_t)n, G.skip_special, &len);
  free(ids);
  jv s = jv_string_sized(text, (int)len);
  free(text);
  return jv_object_set(rec, jv_string(G.field), s);
}

int main(int argc, char **argv) {
  usbx_set_progname("usbx-tok");
  G.field = "text";
  G.ids_field = "ids";
  usbx_opt opts[] = {
    {"tokenizer", USBX_OPT_STR, &G.tokenizer, "PATH", "tokenizer.json, or a folder with it or with vocab.json + merges.txt", false},
    {"decode", USBX_OPT_FLAG, &G.decode, NULL, "decode the ids field into the text field instead of encoding", false},
    {"field", USBX_OPT_STR, &G.field, "NAME", "text field (default text)", false},
    {"ids-field", USBX_OPT_STR, &G.ids_field, "NAME", "ids field (default ids)", false},
    {"segment", USBX_OPT_FLAG, &G.segment, NULL, "encode as a BAGEL text segment: <|im_start|> ids <|im_end|>", false},
    {"skip-special", USBX_OPT_FLAG, &G.skip_special, NULL, "when decoding, drop special tokens (<|im_start|>, ...)", false},
    {"keep-going", USBX_OPT_FLAG, &G.keep_going, NULL, "skip bad input lines (counted, exit 1 at the end) instead of stopping", false},
    {"shard", USBX_OPT_STR, &G.shard, "I/N", "handle only records I, I+N, I+2N, ... (0-based, in input order)", false},
    {"progress", USBX_OPT_FLAG, &G.progress, NULL, "progress line on stderr even when it is not a terminal", false},
    {0},
  };
  char **pos;
  int npos;
  usbx_cli_parse(argc, argv, opts, usage, description, &pos, &npos);
  if (!G.tokenizer) usbx_usage_die("--tokenizer PATH is required");
  if (!*G.field || !*G.ids_field) usbx_usage_die("--field / --ids-field: empty name");
  if (G.decode && G.segment) usbx_usage_die("--segment applies to encoding, not to --decode");
  if (!G.decode && G.skip_special) usbx_usage_die("--skip-special applies to --decode");
  G.shard_n = 1;
  if (G.shard) usbx_parse_shard(G.shard, &G.shard_i, &G.shard_n);

  char err[1024];
  usbx_tokenizer *tok = usbx_tok_load(G.tokenizer, err, sizeof err);
  if (!tok) usbx_die("%s", err);
  if (G.segment && (usbx_tok_token_id(tok, "<|im_start|>") < 0 || usbx_tok_token_id(tok, "<|im_end|>") < 0))
    usbx_die("%s: --segment needs <|im_start|> and <|im_end|>, which this tokenizer lacks", G.tokenizer);
  signal(SIGPIPE, SIG_IGN);

  usbx_progress prog;
  usbx_progress_init(&prog, G.progress, 0, "records");
  long bad = 0, index = 0;
  bool stop = false;
  int nin = npos ? npos : 1;
  for (int f = 0; f < nin && !stop; f++) {
    const char *path = npos ? pos[f] : NULL;
    usbx_jsonl *r = usbx_jsonl_open(path);
    if (!r) usbx_die("%s: %s", path, strerror(errno));
    jv rec;
    int rc;
    while ((rc = usbx_jsonl_next(r, &rec)) != 0) {
      if (rc < 0) {
        bad++;
        usbx_err("%s%s", usbx_jsonl_error(r), G.keep_going ? " (skipped)" : "");
        if (!G.keep_going) { stop = true; break; }
        continue;
      }
      long k = index++;
      if (G.shard_n > 1 && k % G.shard_n != G.shard_i) { jv_free(rec); continue; }
      char why[512];
      jv out = handle(tok, rec, why, sizeof why);
      if (!jv_is_valid(out)) {
        jv_free(out);
        bad++;
        usbx_err("%s:%ld: %s%s", usbx_jsonl_name(r), usbx_jsonl_line(r), why, G.keep_going ? " (skipped)" : "");
        if (!G.keep_going) { stop = true; break; }
        continue;
      }
      if (usbx_jsonl_write(stdout, out) != 0) {
        usbx_err("<stdout>: write error: %s", strerror(errno));
        usbx_jsonl_close(r);
        usbx_tok_free(tok);
        free(pos);
        return 1;
      }
      usbx_progress_tick(&prog, 1);
    }
    usbx_jsonl_close(r);
  }
  usbx_progress_done(&prog);
  if (bad && G.keep_going) usbx_err("%ld bad line%s skipped", bad, bad == 1 ? "" : "s");
  usbx_tok_free(tok);
  free(pos);
  return bad ? 1 : 0;
}
