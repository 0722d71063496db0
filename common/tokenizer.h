/* tokenizer.h — the Qwen2 byte-level BPE tokenizer, identical to Hugging Face `tokenizers`.
 *
 * Loads a Hugging Face tokenizer.json (BPE model; merges as "a b" strings or [a, b] pairs;
 * added_tokens; NFC normalizer; Sequence[Split(Regex, Isolated), ByteLevel] pre-tokenizer; ByteLevel
 * decoder) or the slow-tokenizer files (vocab.json + merges.txt [+ tokenizer_config.json with its
 * added_tokens_decoder]).  Anything else (other model types, normalizers, pre-tokenizers, decoders,
 * post-processors that add tokens, BPE dropout, byte fallback, subword prefixes) is rejected at load
 * time with a message naming the field, instead of tokenising differently.
 *
 * Encoding, exactly as HF does it: added tokens are matched first, leftmost-longest, on the raw
 * text (normalized=false ones) and then on the NFC-normalised rest (normalized=true ones), honouring
 * lstrip/rstrip/single_word; each remaining piece is NFC-normalised (utf8proc), split by the file's
 * regex (PCRE2, UTF + Unicode properties, JIT; Oniguruma's \s/\S are mapped to PCRE2's
 * \p{White_Space}/\P{White_Space}, which is what Oniguruma means by them), mapped to bytes and merged
 * by merge rank (a heap over a linked list of symbols, so long words cost O(n log n); a word cache).
 * No special-token wrapping is added by usbx_tok_encode (Qwen has no BOS/EOS post-processing).
 * Loaded from vocab.json + merges.txt, the order is the slow Qwen2Tokenizer's instead: NFC of the
 * whole text first, then the added tokens (the two orders differ only when NFC composes a character
 * across an added token's boundary).
 *
 * Known limit: PCRE2 10.42 knows Unicode 14/15 while tokenizers 0.23 (Oniguruma) knows Unicode 16;
 * code points first assigned after PCRE2's Unicode version are not letters/numbers to PCRE2 and may
 * split differently.  Every assigned code point agrees (tests/test_tokenizer.c checks it).
 *
 * Thread safety: a loaded tokenizer is immutable except for its word cache, which is split into
 * shards each guarded by its own mutex.  Any number of threads may call usbx_tok_encode*,
 * usbx_tok_decode* and the lookups concurrently on one tokenizer; usbx_tok_free must not race them.
 */
#ifndef USBX_TOKENIZER_H
#define USBX_TOKENIZER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct usbx_tokenizer usbx_tokenizer;

/* path: a tokenizer.json file, a folder containing tokenizer.json, or a folder with vocab.json +
 * merges.txt [+ tokenizer_config.json].  On failure returns NULL and writes "<file>: <what>" to err
 * (when err is non-NULL). */
usbx_tokenizer *usbx_tok_load(const char *path, char *err, size_t errlen);
void usbx_tok_free(usbx_tokenizer *tok);

/* Encodes len bytes of UTF-8 text (NUL bytes allowed).  *ids is malloc'd (free() it; non-NULL even
 * when *n is 0).  Returns 0, or -1 when text is not valid UTF-8 or PCRE2 fails on it (then
 * *ids = NULL, *n = 0).  Out of memory dies (xmalloc). */
int usbx_tok_encode(const usbx_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n);

/* BAGEL text segment: <|im_start|> + encode(text) + <|im_end|> (ids looked up by name).
 * -1 on invalid UTF-8 or when the tokenizer lacks either token. */
int usbx_tok_encode_segment(const usbx_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                            size_t *n);

/* Decodes ids to a malloc'd NUL-terminated UTF-8 string as HF's ByteLevel decoder does: token
 * strings mapped back to bytes, invalid UTF-8 replaced by U+FFFD per maximal invalid subpart.  Ids
 * that are not in the vocabulary are skipped (as HF does); skip_special drops added tokens marked
 * special.  usbx_tok_decode_n also returns the length (the text may contain NUL characters). */
char *usbx_tok_decode(const usbx_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special);
char *usbx_tok_decode_n(const usbx_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                        size_t *len);

/* Id of a token string (added tokens first, then the BPE vocabulary in its byte-level spelling,
 * e.g. "Ġthe"); -1 if absent. */
int32_t usbx_tok_token_id(const usbx_tokenizer *tok, const char *token);
/* Token string of an id (byte-level spelling or added-token content), NULL if absent. */
const char *usbx_tok_id_to_token(const usbx_tokenizer *tok, int32_t id);
/* True when id is an added token marked special. */
bool usbx_tok_is_special(const usbx_tokenizer *tok, int32_t id);
/* 1 + the largest id of the vocabulary and the added tokens (151669 for the Qwen3 file, 151665 for
 * Qwen2.5); HF's get_vocab_size(with_added_tokens=True) when ids have no gaps. */
size_t usbx_tok_vocab_size(const usbx_tokenizer *tok);

/* The special ids BAGEL uses, looked up by name: bos <|im_start|>, eos <|im_end|>, start_of_image
 * <|vision_start|>, end_of_image <|vision_end|>, pad <|endoftext|> (-1 where absent).  Returns 0
 * when the first four exist, else -1 with the missing name in err. */
typedef struct { int32_t bos, eos, start_of_image, end_of_image, pad; } usbx_bagel_ids;
int usbx_tok_bagel_ids(const usbx_tokenizer *tok, usbx_bagel_ids *out, char *err, size_t errlen);

#endif
