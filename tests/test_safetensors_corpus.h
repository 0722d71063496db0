/* test_safetensors_corpus.h — malformed safetensors files, each with the phrase its error message
 * must contain.  Shared by tests/test_safetensors.c, tests/helper_st.c (which writes them out for
 * the shell tests and as fuzzing seeds). */
#ifndef USBX_TEST_ST_CORPUS_H
#define USBX_TEST_ST_CORPUS_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;     /* file name */
  const char *expect;   /* substring of the error message */
  unsigned char *data;
  size_t len;
} st_bad;

/* A file: 8-byte length (hlen, or the header's length when hlen is UINT64_MAX-1), header bytes,
 * then ndata bytes of data. */
static inline st_bad st_bad_make(const char *name, const char *expect, uint64_t hlen, const char *hdr, size_t hdrlen,
                                 size_t ndata) {
  st_bad b = {name, expect, NULL, 0};
  if (hlen == UINT64_MAX - 1) hlen = hdrlen;
  b.len = 8 + hdrlen + ndata;
  b.data = calloc(1, b.len + 1);
  for (int k = 0; k < 8; k++) b.data[k] = (unsigned char)(hlen >> (8 * k));
  memcpy(b.data + 8, hdr, hdrlen);
  for (size_t i = 0; i < ndata; i++) b.data[8 + hdrlen + i] = (unsigned char)(i * 7);
  return b;
}
#define ST_H(s) (s), (sizeof(s) - 1)
#define ST_AUTO (UINT64_MAX - 1)

/* Fills out[] (at most max) and returns the count; free each .data. */
static inline int st_bad_corpus(st_bad *out, int max) {
  int n = 0;
#define ADD(x) do { if (n < max) out[n++] = (x); } while (0)
  st_bad tiny = {"too_short.safetensors", "too short", calloc(1, 5), 5};
  tiny.data[0] = 2;
  ADD(tiny);
  ADD(st_bad_make("header_past_eof.safetensors", "exceeds the file", 1000, ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"), 0));
  ADD(st_bad_make("header_2gb.safetensors", "100 MB limit", 2147483648ull, ST_H("{}"), 0));
  ADD(st_bad_make("header_len_max.safetensors", "100 MB limit", UINT64_MAX, ST_H("{}"), 0));
  ADD(st_bad_make("truncated_data.safetensors", "outside the data area", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[100],\"data_offsets\":[0,400]}}"), 100));
  ADD(st_bad_make("overlap.safetensors", "overlap", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}"), 24));
  ADD(st_bad_make("overlap_inside.safetensors", "overlap", ST_AUTO,
                  ST_H("{\"big\":{\"dtype\":\"U8\",\"shape\":[64],\"data_offsets\":[0,64]},"
                       "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[40,44]},"
                       "\"d\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[10,14]}}"), 64));
  ADD(st_bad_make("out_of_range.safetensors", "outside the data area", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}"), 8));
  ADD(st_bad_make("offset_huge.safetensors", "outside the data area", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[9007199254740000,9007199254740004]}}"), 8));
  ADD(st_bad_make("bad_dtype.safetensors", "unknown dtype", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}}"), 16));
  ADD(st_bad_make("lowercase_dtype.safetensors", "unknown dtype", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"f32\",\"shape\":[4],\"data_offsets\":[0,16]}}"), 16));
  ADD(st_bad_make("shape_mismatch.safetensors", "data_offsets span", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}"), 16));
  ADD(st_bad_make("shape_mismatch_bf16.safetensors", "data_offsets span", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,8]}}"), 16));
  ADD(st_bad_make("non_utf8.safetensors", "UTF-8", ST_AUTO,
                  ST_H("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"), 4));
  ADD(st_bad_make("overlong_utf8.safetensors", "UTF-8", ST_AUTO,
                  ST_H("{\"a\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"), 4));
  ADD(st_bad_make("surrogate_utf8.safetensors", "UTF-8", ST_AUTO,
                  ST_H("{\"a\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"), 4));
  ADD(st_bad_make("not_json.safetensors", "not valid JSON", ST_AUTO, ST_H("{abc: 1}"), 0));
  ADD(st_bad_make("truncated_json.safetensors", "not valid JSON", ST_AUTO, ST_H("{\"a\":{\"dtype\":\"F3"), 0));
  ADD(st_bad_make("trailing_garbage.safetensors", "not valid JSON", ST_AUTO, ST_H("{} {}"), 0));
  ADD(st_bad_make("not_object.safetensors", "not a JSON object", ST_AUTO, ST_H("[1, 2]"), 0));
  ADD(st_bad_make("empty_header.safetensors", "not a JSON object", 0, "", 0, 0));
  ADD(st_bad_make("entry_not_object.safetensors", "not an object", ST_AUTO, ST_H("{\"a\": 3}"), 0));
  ADD(st_bad_make("missing_dtype.safetensors", "dtype", ST_AUTO, ST_H("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}"), 4));
  ADD(st_bad_make("missing_shape.safetensors", "shape", ST_AUTO, ST_H("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}"), 4));
  ADD(st_bad_make("missing_offsets.safetensors", "data_offsets", ST_AUTO, ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}"), 4));
  ADD(st_bad_make("end_before_begin.safetensors", "end before begin", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}"), 8));
  ADD(st_bad_make("negative_offset.safetensors", "non-negative", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}"), 8));
  ADD(st_bad_make("three_offsets.safetensors", "data_offsets", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}"), 8));
  ADD(st_bad_make("fraction_shape.safetensors", "shape entry 0", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}"), 8));
  ADD(st_bad_make("string_shape.safetensors", "shape entry 1", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}"), 8));
  ADD(st_bad_make("too_many_dims.safetensors", "dimensions", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}"), 8));
  ADD(st_bad_make("numel_overflow.safetensors", "overflows", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496],\"data_offsets\":[0,0]}}"), 8));
  ADD(st_bad_make("bytes_overflow.safetensors", "overflows", ST_AUTO,
                  ST_H("{\"a\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,0]}}"), 8));
  ADD(st_bad_make("metadata_not_strings.safetensors", "__metadata__", ST_AUTO,
                  ST_H("{\"__metadata__\":{\"format\":1},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}"), 1));
  ADD(st_bad_make("metadata_array.safetensors", "__metadata__", ST_AUTO, ST_H("{\"__metadata__\":[\"pt\"]}"), 0));
  ADD(st_bad_make("nul_in_name.safetensors", "NUL", ST_AUTO,
                  ST_H("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}"), 1));
  ADD(st_bad_make("newline_in_name.safetensors", "unknown dtype", ST_AUTO,
                  ST_H("{\"a\\nb\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,1]}}"), 1));
  {
    static char deep[20002];
    for (int i = 0; i < 10000; i++) deep[i] = '[';
    for (int i = 0; i < 10000; i++) deep[10000 + i] = ']';
    ADD(st_bad_make("deep_nesting.safetensors", "not valid JSON", ST_AUTO, deep, 20000, 0));
  }
#undef ADD
  return n;
}
#endif
