/* test_safetensors — reader/writer round trips, the malformed-file corpus, streaming conversion,
 * no-replace copying, and the PyTorch-written fixture (skipped without ../shared). */
#include "ckpt.h"
#include "safetensors.h"
#include "tensor.h"
#include "testlib.h"
#include "util.h"
#include "jsonl.h"
#include "test_safetensors_corpus.h"
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

static const char *metastr(jv obj, const char *key) {
  if (jv_get_kind(obj) != JV_KIND_OBJECT) return "(no metadata)";
  const char *s = usbx_jv_str(obj, key);
  return s ? s : "(absent)";
}

static char *tpath(const char *name) { return xasprintf("%s/%s", g_dir, name); }

/* Files in g_dir whose names contain ".tmp." (left-over temporaries). */
static int count_temps(void) {
  DIR *d = opendir(g_dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, ".tmp.")) n++;
  if (d) closedir(d);
  return n;
}

static void test_round_trip(void) {
  char *p = tpath("rt.safetensors");
  /* Every dtype, a scalar, an empty tensor; odd sizes so that offsets are unaligned. */
  usbx_st_decl d[USBX_DTYPE_COUNT + 2];
  char names[USBX_DTYPE_COUNT][32];
  size_t n = 0;
  for (int k = 0; k < USBX_DTYPE_COUNT; k++) {
    snprintf(names[k], sizeof names[k], "t.%s", usbx_dtype_name((usbx_dtype)k));
    d[n] = (usbx_st_decl){names[k], (usbx_dtype)k, 2, {3, k + 1}};
    n++;
  }
  d[n++] = (usbx_st_decl){"scalar", USBX_F32, 0, {0}};
  d[n++] = (usbx_st_decl){"empty \"quoted\" \xc3\xa9", USBX_BF16, 3, {2, 0, 5}};
  jv meta = jv_object_set(jv_object(), jv_string("format"), jv_string("pt"));
  meta = jv_object_set(meta, jv_string("note"), jv_string("line\nbreak"));
  char err[1024];
  usbx_st_writer *w = usbx_st_writer_begin(p, d, n, meta, err, sizeof err);
  CHECKF(w != NULL, "%s", err);
  if (!w) return;
  /* Bytes: byte i of tensor k is (k*31 + i) & 255; written in uneven pieces. */
  size_t total_expected = 0;
  for (size_t k = 0; k < n; k++) {
    size_t nb = (size_t)usbx_shape_numel(d[k].ndim, d[k].shape) * usbx_dtype_size(d[k].dtype);
    unsigned char *b = xmalloc(nb + 1);
    for (size_t i = 0; i < nb; i++) b[i] = (unsigned char)(k * 31 + i);
    size_t off = 0, step = 1;
    while (off < nb) {
      size_t m = nb - off < step ? nb - off : step;
      CHECK_EQ_INT(usbx_st_writer_write(w, b + off, m), 0);
      off += m;
      step = step * 2 + 1;
    }
    total_expected += nb;
    free(b);
  }
  CHECK_EQ_INT(usbx_st_writer_remaining(w), 0);
  CHECK_EQ_INT(count_temps(), 1);
  CHECKF(usbx_st_writer_finish(w, err, sizeof err) == 0, "%s", err);
  CHECK_EQ_INT(count_temps(), 0);

  usbx_st_file f;
  CHECKF(usbx_st_open(p, &f, err, sizeof err) == 0, "%s", err);
  CHECK_EQ_INT(f.n, n);
  CHECK_EQ_INT(f.data_len, total_expected);
  CHECK_EQ_INT((uintptr_t)(f.data_area - (const uint8_t *)f.map) % 8, 0);
  CHECK_STR(metastr(f.metadata, "format"), "pt");
  CHECK_STR(metastr(f.metadata, "note"), "line\nbreak");
  uint64_t expect_off = 0;
  for (size_t k = 0; k < n && k < f.n; k++) {
    const usbx_st_tensor *t = &f.t[k];
    CHECK_STR(t->name, d[k].name);                         /* header order = declaration order */
    CHECK_EQ_INT(t->dtype, d[k].dtype);
    CHECK_EQ_INT(t->ndim, d[k].ndim);
    for (int j = 0; j < t->ndim; j++) CHECK_EQ_INT(t->shape[j], d[k].shape[j]);
    CHECK_EQ_INT(t->begin, expect_off);
    expect_off = t->end;
    const unsigned char *b = t->data;
    int bad = 0;
    for (size_t i = 0; i < t->end - t->begin; i++) bad += b[i] != (unsigned char)(k * 31 + i);
    CHECK_EQ_INT(bad, 0);
    CHECK(usbx_st_find(&f, d[k].name) == t);
  }
  CHECK(usbx_st_find(&f, "nope") == NULL);
  CHECK(usbx_st_find(&f, "") == NULL);
  usbx_st_willneed(&f, &f.t[0]);
  usbx_st_dontneed(&f, &f.t[0]);
  CHECK_EQ_INT(((const unsigned char *)f.t[0].data)[1], 1);   /* still readable after DONTNEED */
  usbx_st_close(&f);

  /* The same bytes parse identically from memory. */
  size_t len;
  char *img = usbx_read_file(p, &len);
  CHECK(img != NULL);
  CHECKF(usbx_st_open_mem(img, len, "mem", &f, err, sizeof err) == 0, "%s", err);
  CHECK_EQ_INT(f.n, n);
  usbx_st_close(&f);
  free(img);
  free(p);
}

static void test_writer_errors(void) {
  char err[1024];
  char *p = tpath("werr.safetensors");
  unlink(p);
  usbx_st_decl d[2] = {{"a", USBX_F32, 1, {2}}, {"b", USBX_U8, 1, {3}}};
  float v[2] = {1, 2};
  usbx_st_writer *w = usbx_st_writer_begin(p, d, 2, jv_null(), err, sizeof err);
  CHECK(w != NULL);
  CHECK_EQ_INT(usbx_st_writer_write(w, v, 8), 0);
  CHECK_EQ_INT(usbx_st_writer_write(w, "xyzw", 4), -1);               /* one byte too many */
  CHECKF(strstr(usbx_st_writer_error(w), "more data than declared") != NULL, "%s", usbx_st_writer_error(w));
  CHECK_EQ_INT(usbx_st_writer_finish(w, err, sizeof err), -1);
  CHECK(!usbx_file_exists(p));
  CHECK_EQ_INT(count_temps(), 0);

  w = usbx_st_writer_begin(p, d, 2, jv_null(), err, sizeof err);
  CHECK_EQ_INT(usbx_st_writer_write(w, v, 8), 0);
  CHECK_EQ_INT(usbx_st_writer_finish(w, err, sizeof err), -1);       /* "b" never arrived */
  CHECKF(strstr(err, "only 8 of 11") != NULL, "%s", err);
  CHECK(!usbx_file_exists(p));
  CHECK_EQ_INT(count_temps(), 0);

  /* An existing file survives an aborted or failed rewrite untouched; a finished one keeps its mode. */
  CHECK_EQ_INT(usbx_write_file_atomic(p, "old", 3), 0);
  chmod(p, 0600);
  w = usbx_st_writer_begin(p, d, 2, jv_null(), err, sizeof err);
  CHECK_EQ_INT(usbx_st_writer_write(w, v, 8), 0);
  usbx_st_writer_abort(w);
  size_t len;
  char *s = usbx_read_file(p, &len);
  CHECK(s && len == 3 && memcmp(s, "old", 3) == 0);
  free(s);
  CHECK_EQ_INT(count_temps(), 0);
  w = usbx_st_writer_begin(p, d, 2, jv_null(), err, sizeof err);
  CHECK_EQ_INT(usbx_st_writer_write(w, v, 8), 0);
  CHECK_EQ_INT(usbx_st_writer_write(w, "xyz", 3), 0);
  CHECKF(usbx_st_writer_finish(w, err, sizeof err) == 0, "%s", err);
  struct stat st;
  CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600);
  usbx_st_file f;
  CHECKF(usbx_st_open(p, &f, err, sizeof err) == 0, "%s", err);
  CHECK_EQ_INT(f.n, 2);
  CHECK(f.n == 2 && ((const float *)f.t[0].data)[1] == 2.0f && memcmp(f.t[1].data, "xyz", 3) == 0);
  CHECK(jv_get_kind(f.metadata) == JV_KIND_NULL);
  usbx_st_close(&f);

  /* Bad declarations are refused before anything is created. */
  usbx_st_decl dup[2] = {{"a", USBX_F32, 1, {2}}, {"a", USBX_U8, 1, {3}}};
  CHECK(usbx_st_writer_begin(p, dup, 2, jv_null(), err, sizeof err) == NULL);
  CHECKF(strstr(err, "declared twice") != NULL, "%s", err);
  usbx_st_decl meta_name[1] = {{"__metadata__", USBX_F32, 1, {2}}};
  CHECK(usbx_st_writer_begin(p, meta_name, 1, jv_null(), err, sizeof err) == NULL);
  usbx_st_decl badutf[1] = {{"a\xff", USBX_F32, 1, {2}}};
  CHECK(usbx_st_writer_begin(p, badutf, 1, jv_null(), err, sizeof err) == NULL);
  CHECKF(strstr(err, "UTF-8") != NULL, "%s", err);
  usbx_st_decl neg[1] = {{"a", USBX_F32, 1, {-2}}};
  CHECK(usbx_st_writer_begin(p, neg, 1, jv_null(), err, sizeof err) == NULL);
  jv badmeta = jv_object_set(jv_object(), jv_string("k"), jv_number(1));
  CHECK(usbx_st_writer_begin(p, d, 2, badmeta, err, sizeof err) == NULL);
  CHECKF(strstr(err, "metadata") != NULL, "%s", err);
  char *nodir = tpath("no/such/dir/x.safetensors");
  CHECK(usbx_st_writer_begin(nodir, d, 2, jv_null(), err, sizeof err) == NULL);
  CHECKF(strstr(err, "No such file") != NULL, "%s", err);
  free(nodir);
  CHECK_EQ_INT(count_temps(), 0);
  unlink(p);
  free(p);
}

static void test_corpus(void) {
  st_bad bad[64];
  int n = st_bad_corpus(bad, 64);
  CHECK(n >= 30);
  char err[1024];
  for (int i = 0; i < n; i++) {
    usbx_st_file f;
    /* From memory (the fuzzer's path) and from a real file (the mmap path). */
    int rc = usbx_st_open_mem(bad[i].data, bad[i].len, bad[i].name, &f, err, sizeof err);
    CHECKF(rc == -1, "%s was accepted", bad[i].name);
    CHECKF(strstr(err, bad[i].expect) != NULL, "%s: error '%s' lacks '%s'", bad[i].name, err, bad[i].expect);
    CHECKF(strchr(err, '\n') == NULL, "%s: multi-line error", bad[i].name);
    CHECKF(strncmp(err, bad[i].name, strlen(bad[i].name)) == 0, "%s: error does not start with the name: %s", bad[i].name, err);
    char *p = tpath(bad[i].name);
    FILE *fp = fopen(p, "wb");
    fwrite(bad[i].data, 1, bad[i].len, fp);
    fclose(fp);
    char err2[1024];
    rc = usbx_st_open(p, &f, err2, sizeof err2);
    CHECKF(rc == -1, "%s was accepted from a file", bad[i].name);
    CHECKF(strstr(err2, bad[i].expect) != NULL, "%s: file error '%s' lacks '%s'", bad[i].name, err2, bad[i].expect);
    CHECK_STR(usbx_st_find(&f, "a") == NULL ? "closed" : "open", "closed");   /* f is left empty */
    unlink(p);
    free(p);
    free(bad[i].data);
  }
  usbx_st_file f;
  CHECK_EQ_INT(usbx_st_open("/nonexistent/x.safetensors", &f, err, sizeof err), -1);
  CHECKF(strstr(err, "No such file") != NULL, "%s", err);
  CHECK_EQ_INT(usbx_st_open(g_dir, &f, err, sizeof err), -1);
  CHECKF(strstr(err, "directory") != NULL, "%s", err);
}

/* Files that are unusual but valid must be accepted. */
static void test_valid_edge_cases(void) {
  static const struct { const char *hdr; size_t ndata; size_t ntensors; } ok[] = {
    {"{}", 0, 0},
    {"{\"__metadata__\":{}}", 0, 0},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}        ", 2, 1},     /* space padding */
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},\"b\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 8, 2}, /* gaps, any order */
    {"{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},\"f\":{\"dtype\":\"F32\",\"shape\":[1,0],\"data_offsets\":[0,0]},"
     "\"g\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 3},                 /* empty tensors share offsets */
    {"{\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":[1,2]}}", 1, 1},   /* unknown fields ignored */
    {"{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, 1},               /* scalar */
  };
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    st_bad b = st_bad_make("ok", "", ST_AUTO, ok[i].hdr, strlen(ok[i].hdr), ok[i].ndata);
    usbx_st_file f;
    char err[1024];
    int rc = usbx_st_open_mem(b.data, b.len, "ok", &f, err, sizeof err);
    CHECKF(rc == 0, "case %zu: %s", i, err);
    if (rc == 0) {
      CHECK_EQ_INT(f.n, ok[i].ntensors);
      usbx_st_close(&f);
    }
    free(b.data);
  }
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* usbx_ckpt_write: float conversion (bit-exact, round to nearest even, NaN/Inf), non-float
 * tensors copied, unaligned sources, tensors laid out by decreasing element size. */
static void test_stream_convert(void) {
  char err[1024];
  char *src = tpath("conv_src.safetensors"), *dst = tpath("conv_dst.safetensors");
  const float vals[] = {1.0f, u2f(0x3F808000), u2f(0x3F818000), -2.5f, INFINITY, -INFINITY, NAN, 1e-40f,
                        3.4e38f, 65504.0f, 65520.0f, 1e-8f, 0.1f};
  const size_t nv = sizeof vals / sizeof *vals;
  /* "odd" (3 BF16) first makes the F32 tensor start at byte 6: an unaligned source. */
  usbx_st_decl d[4] = {{"odd", USBX_BF16, 1, {3}}, {"x", USBX_F32, 1, {(int64_t)nv}}, {"ids", USBX_I64, 1, {2}},
                       {"big", USBX_F32, 2, {1024, 1500}}};
  usbx_st_writer *w = usbx_st_writer_begin(src, d, 4, jv_object_set(jv_object(), jv_string("format"), jv_string("pt")),
                                           err, sizeof err);
  CHECKF(w != NULL, "%s", err);
  uint16_t odd[3] = {0x3F80, 0x4000, 0xC000};
  int64_t ids[2] = {-1, 1234567890123LL};
  usbx_st_writer_write(w, odd, sizeof odd);
  usbx_st_writer_write(w, vals, sizeof vals);
  usbx_st_writer_write(w, ids, sizeof ids);
  float *big = xmalloc(1024 * 1500 * sizeof *big);   /* > one 4 MB chunk: crosses chunk borders */
  for (size_t i = 0; i < 1024 * 1500; i++) big[i] = (float)i * 0.37f - 1000.0f;
  usbx_st_writer_write(w, big, 1024 * 1500 * sizeof *big);
  CHECKF(usbx_st_writer_finish(w, err, sizeof err) == 0, "%s", err);

  for (int to_i = 0; to_i < 2; to_i++) {
    usbx_dtype to = to_i ? USBX_F16 : USBX_BF16;
    usbx_st_file f;
    CHECKF(usbx_st_open(src, &f, err, sizeof err) == 0, "%s", err);
    usbx_ckpt_item it[4];
    for (int k = 0; k < 4; k++)
      it[k] = (usbx_ckpt_item){&f, &f.t[k], usbx_dtype_is_float(f.t[k].dtype) ? to : f.t[k].dtype};
    CHECKF(usbx_ckpt_write(dst, it, 4, jv_copy(f.metadata), err, sizeof err) == 0, "%s", err);
    usbx_st_close(&f);
    usbx_st_file g;
    CHECKF(usbx_st_open(dst, &g, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(g.n, 4);
    CHECK_STR(g.t[0].name, "ids");                /* 8-byte elements first */
    for (size_t k = 0; k < g.n; k++) CHECK_EQ_INT(g.t[k].begin % usbx_dtype_size(g.t[k].dtype), 0);
    CHECK_STR(metastr(g.metadata, "format"), "pt");
    const usbx_st_tensor *x = usbx_st_find(&g, "x"), *o = usbx_st_find(&g, "odd"), *id = usbx_st_find(&g, "ids");
    const usbx_st_tensor *bg = usbx_st_find(&g, "big");
    CHECK(x && o && id && bg);
    if (!(x && o && id && bg)) { usbx_st_close(&g); continue; }
    CHECK_EQ_INT(x->dtype, to);
    const uint16_t *xv = x->data;
    for (size_t i = 0; i < nv; i++) {
      uint16_t want = to == USBX_BF16 ? usbx_f32_to_bf16(vals[i]) : usbx_f32_to_f16(vals[i]);
      CHECKF(xv[i] == want, "value %zu (%08x): %04x != %04x", i, f2u(vals[i]), xv[i], want);
    }
    if (to == USBX_BF16) {
      CHECK_EQ_INT(xv[0], 0x3F80);
      CHECK_EQ_INT(xv[1], 0x3F80);                 /* tie to even (down) */
      CHECK_EQ_INT(xv[2], 0x3F82);                 /* tie to even (up) */
      CHECK_EQ_INT(xv[4], 0x7F80);
      CHECK_EQ_INT(xv[5], 0xFF80);
      CHECK_EQ_INT(xv[6] & 0x7FFF, 0x7FC0);
      const uint16_t *ov = o->data;
      CHECK(memcmp(ov, odd, sizeof odd) == 0);     /* already BF16: bytes unchanged */
    } else {
      CHECK_EQ_INT(xv[9], 0x7BFF);                 /* 65504 = largest half */
      CHECK_EQ_INT(xv[10], 0x7C00);                /* 65520 rounds to Inf */
      const uint16_t *ov = o->data;
      CHECK_EQ_INT(ov[0], 0x3C00);                 /* bf16 1.0 -> f16 1.0 */
      CHECK_EQ_INT(ov[2], 0xC000);                 /* -2 */
    }
    CHECK(memcmp(id->data, ids, sizeof ids) == 0);
    const uint16_t *bv = bg->data;
    int bad = 0;
    for (size_t i = 0; i < 1024 * 1500; i++)
      bad += bv[i] != (to == USBX_BF16 ? usbx_f32_to_bf16(big[i]) : usbx_f32_to_f16(big[i]));
    CHECK_EQ_INT(bad, 0);
    usbx_st_close(&g);
  }
  CHECK_EQ_INT(count_temps(), 0);
  free(big);
  free(src);
  free(dst);
}

static void test_copy_noreplace(void) {
  char err[1024];
  char *a = tpath("copy_src.bin"), *b = tpath("copy_dst.bin");
  unlink(b);
  size_t n = 3 << 20;
  char *data = xmalloc(n);
  for (size_t i = 0; i < n; i++) data[i] = (char)(i * 7);
  CHECK_EQ_INT(usbx_write_file_atomic(a, data, n), 0);
  chmod(a, 0640);
  uint64_t bytes = 0;
  CHECK_EQ_INT(usbx_ckpt_copy_noreplace(a, b, &bytes, err, sizeof err), 0);
  CHECK_EQ_INT(bytes, n);
  size_t len;
  char *got = usbx_read_file(b, &len);
  CHECK(got && len == n && memcmp(got, data, n) == 0);
  free(got);
  struct stat st;
  CHECK(stat(b, &st) == 0 && (st.st_mode & 0777) == 0640);
  CHECK_EQ_INT(usbx_write_file_atomic(b, "mine", 4), 0);
  CHECK_EQ_INT(usbx_ckpt_copy_noreplace(a, b, &bytes, err, sizeof err), 1);   /* exists: untouched */
  got = usbx_read_file(b, &len);
  CHECK(got && len == 4 && memcmp(got, "mine", 4) == 0);
  free(got);
  char *missing = tpath("nope.bin");
  char *missing2 = tpath("nope2.bin");
  CHECK_EQ_INT(usbx_ckpt_copy_noreplace(missing, missing2, &bytes, err, sizeof err), -1);
  free(missing2);
  CHECK_EQ_INT(count_temps(), 0);
  free(missing);
  free(data);
  free(a);
  free(b);
}

/* ema.safetensors of the tiny fixture, written by PyTorch. */
static void test_fixture(void) {
  const char *sh = t_shared();
  if (!sh) {
    fprintf(stderr, "note: ../shared missing; fixture part skipped\n");
    return;
  }
  char *p = xasprintf("%s/fixtures/bagel-tiny-a/ema.safetensors", sh);
  usbx_st_file f;
  char err[1024];
  CHECKF(usbx_st_open(p, &f, err, sizeof err) == 0, "%s", err);
  CHECK_EQ_INT(f.n, 111);
  uint64_t params = 0;
  for (size_t i = 0; i < f.n; i++) {
    params += (uint64_t)usbx_shape_numel(f.t[i].ndim, f.t[i].shape);
    CHECK_EQ_INT(f.t[i].dtype, USBX_F32);
  }
  CHECK_EQ_INT(params, 368384);                              /* the fixture README's count */
  CHECK_STR(metastr(f.metadata, "format"), "pt");
  CHECK_STR(f.t[0].name, "connector.fc1.bias");            /* header order kept */
  const usbx_st_tensor *pe = usbx_st_find(&f, "latent_pos_embed.pos_embed");
  CHECK(pe != NULL);
  if (pe) {
    CHECK_EQ_INT(pe->ndim, 2);
    CHECK_EQ_INT(pe->shape[0], 64);
    CHECK_EQ_INT(pe->shape[1], 64);
    const float *v = pe->data;
    /* 2-D sin-cos table (8x8 grid, 64 dims): row 0 is [0]*16 [1]*16 [0]*16 [1]*16; row 9 is
     * position (1,1): sin(w_k), cos(w_k) with w_k = 10000^(-k/16). */
    for (int k = 0; k < 16; k++) {
      CHECK_NEAR(v[k], 0.0, 0);
      CHECK_NEAR(v[16 + k], 1.0, 0);
      double wk = pow(10000.0, -k / 16.0);
      CHECK_NEAR(v[9 * 64 + k], sin(wk), 1e-6);
      CHECK_NEAR(v[9 * 64 + 16 + k], cos(wk), 1e-6);
    }
  }
  const usbx_st_tensor *emb = usbx_st_find(&f, "language_model.model.embed_tokens.weight");
  CHECK(emb && emb->shape[0] == 1024 && emb->shape[1] == 64);
  usbx_st_close(&f);
  free(p);
}

int main(void) {
  usbx_set_progname("test_safetensors");
  snprintf(g_dir, sizeof g_dir, "/tmp/usbx_test_st.%ld", (long)getpid());
  usbx_mkdirs(g_dir);
  test_round_trip();
  test_writer_errors();
  test_corpus();
  test_valid_edge_cases();
  test_stream_convert();
  test_copy_noreplace();
  test_fixture();
  char *cmd = xasprintf("rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
  free(cmd);
  return t_done("test_safetensors");
}
