/* helper_st — test and benchmark helper for safetensors files (built to build/tests/helper_st).
 *
 *   helper_st gen [--seed N] [--meta K=V] OUT NAME:DTYPE:D0xD1x... ...
 *       writes a file with the tensors in the given order; values are a deterministic function of
 *       (seed, name, index) — float dtypes get the f32 pattern converted to the dtype.
 *   helper_st compare [--skip-names-in C] [--dtype D] A B
 *       every tensor of A (except names also in C) must be in B with the same shape and with the
 *       bytes of A converted to B's dtype (bit-exact; non-float tensors byte-equal); with --dtype,
 *       every float tensor of B must be of dtype D.  Exit 1 with a message on the first mismatch.
 *   helper_st drop IN OUT PREFIX...     copy IN without the tensors whose names start with PREFIX
 *   helper_st corpus DIR                write the malformed-file corpus (one file per case) and
 *                                       DIR/expect.tsv ("file<TAB>phrase" per line)
 *   helper_st expect FILE               JSON {name: {dtype, shape, first: [8 values as f32],
 *                                       sum: f64 sum of all values as f32}} for cross-checks */
#include "ckpt.h"
#include "safetensors.h"
#include "tensor.h"
#include "util.h"
#include "test_safetensors_corpus.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static float pattern(uint64_t h, uint64_t i) {
  uint64_t x = h + i * 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return (float)((int64_t)(x % 200001) - 100000) / 12345.678f;
}

static int gen(int argc, char **argv) {
  uint64_t seed = 1;
  jv meta = jv_null();
  int i = 0;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--meta") && i + 1 < argc) {
      char *kv = argv[++i], *eq = strchr(kv, '=');
      if (!eq) usbx_die("--meta K=V");
      if (jv_get_kind(meta) == JV_KIND_NULL) meta = jv_object();
      meta = jv_object_set(meta, jv_string_sized(kv, (int)(eq - kv)), jv_string(eq + 1));
    } else usbx_die("gen: unknown option %s", argv[i]);
  }
  if (i >= argc) usbx_die("gen: OUT missing");
  const char *out = argv[i++];
  size_t n = (size_t)(argc - i);
  usbx_st_decl *d = xcalloc(n + 1, sizeof *d);
  for (size_t k = 0; k < n; k++) {
    char *spec = xstrdup(argv[i + (int)k]);
    char *c1 = strchr(spec, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2) usbx_die("gen: bad spec %s (NAME:DTYPE:D0xD1)", spec);
    *c1 = *c2 = 0;
    d[k].name = spec;
    if (!usbx_dtype_parse(c1 + 1, &d[k].dtype)) usbx_die("gen: bad dtype %s", c1 + 1);
    for (char *p = c2 + 1; *p;) {
      d[k].shape[d[k].ndim++] = strtoll(p, &p, 10);
      if (*p == 'x') p++;
    }
  }
  char err[1024];
  usbx_st_writer *w = usbx_st_writer_begin(out, d, n, meta, err, sizeof err);
  if (!w) usbx_die("%s", err);
  const size_t CH = 1u << 20;
  float *f = xmalloc(CH * sizeof *f);
  unsigned char *b = xmalloc(CH * 8);
  for (size_t k = 0; k < n; k++) {
    uint64_t h = usbx_hash64(d[k].name, strlen(d[k].name), seed);
    uint64_t ne = (uint64_t)usbx_shape_numel(d[k].ndim, d[k].shape);
    size_t es = usbx_dtype_size(d[k].dtype);
    for (uint64_t o = 0; o < ne; o += CH) {
      size_t m = ne - o < CH ? (size_t)(ne - o) : CH;
      if (usbx_dtype_is_float(d[k].dtype)) {
        for (size_t j = 0; j < m; j++) f[j] = pattern(h, o + j);
        usbx_convert(f, USBX_F32, b, d[k].dtype, m);
      } else {
        for (size_t j = 0; j < m * es; j++) b[j] = (unsigned char)((h >> 8) + (o * es + j) * 13);
        if (d[k].dtype == USBX_BOOL)
          for (size_t j = 0; j < m; j++) b[j] &= 1;
      }
      if (usbx_st_writer_write(w, b, m * es) != 0) usbx_die("%s", usbx_st_writer_error(w));
    }
  }
  if (usbx_st_writer_finish(w, err, sizeof err) != 0) usbx_die("%s", err);
  for (size_t k = 0; k < n; k++) free((char *)d[k].name);
  free(d);
  free(f);
  free(b);
  return 0;
}

static void openf(const char *p, usbx_st_file *f) {
  char err[1200];
  if (usbx_st_open(p, f, err, sizeof err) != 0) usbx_die("%s", err);
}

static int compare(int argc, char **argv) {
  const char *skip = NULL, *dts = NULL;
  int i = 0;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (!strcmp(argv[i], "--skip-names-in") && i + 1 < argc) skip = argv[++i];
    else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dts = argv[++i];
    else usbx_die("compare: unknown option %s", argv[i]);
  }
  if (argc - i != 2) usbx_die("compare: A B");
  usbx_st_file a, b, c;
  openf(argv[i], &a);
  openf(argv[i + 1], &b);
  if (skip) openf(skip, &c);
  usbx_dtype want = USBX_BF16;
  if (dts && !usbx_dtype_parse(dts, &want)) usbx_die("bad dtype %s", dts);
  if (dts)
    for (size_t k = 0; k < b.n; k++)
      if (usbx_dtype_is_float(b.t[k].dtype) && b.t[k].dtype != want)
        usbx_die("%s: tensor %s is %s, expected %s", b.path, b.t[k].name, usbx_dtype_name(b.t[k].dtype), dts);
  size_t checked = 0;
  for (size_t k = 0; k < a.n; k++) {
    const usbx_st_tensor *x = &a.t[k];
    if (skip && usbx_st_find(&c, x->name)) continue;
    const usbx_st_tensor *y = usbx_st_find(&b, x->name);
    if (!y) usbx_die("%s: tensor %s missing", b.path, x->name);
    if (x->ndim != y->ndim || memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim))
      usbx_die("%s: tensor %s: shape differs", b.path, x->name);
    size_t n = (size_t)usbx_shape_numel(x->ndim, x->shape);
    if (usbx_dtype_is_float(x->dtype) && usbx_dtype_is_float(y->dtype)) {
      void *src = xmalloc(n * usbx_dtype_size(x->dtype) + 1), *tmp = xmalloc(n * usbx_dtype_size(y->dtype) + 1);
      memcpy(src, x->data, n * usbx_dtype_size(x->dtype));
      usbx_convert(src, x->dtype, tmp, y->dtype, n);
      if (memcmp(tmp, y->data, n * usbx_dtype_size(y->dtype)))
        usbx_die("%s: tensor %s: values differ from %s converted %s->%s", b.path, x->name, a.path,
                 usbx_dtype_name(x->dtype), usbx_dtype_name(y->dtype));
      free(src);
      free(tmp);
    } else if (x->dtype != y->dtype || memcmp(x->data, y->data, x->end - x->begin)) {
      usbx_die("%s: tensor %s: differs (%s vs %s)", b.path, x->name, usbx_dtype_name(x->dtype), usbx_dtype_name(y->dtype));
    }
    checked++;
  }
  printf("compare: %zu tensors match\n", checked);
  usbx_st_close(&a);
  usbx_st_close(&b);
  if (skip) usbx_st_close(&c);
  return 0;
}

static int drop(int argc, char **argv) {
  if (argc < 2) usbx_die("drop: IN OUT PREFIX...");
  usbx_st_file f;
  openf(argv[0], &f);
  usbx_ckpt_item *it = xcalloc(f.n + 1, sizeof *it);
  size_t n = 0;
  for (size_t k = 0; k < f.n; k++) {
    bool dropit = false;
    for (int p = 2; p < argc; p++)
      if (!strncmp(f.t[k].name, argv[p], strlen(argv[p]))) dropit = true;
    if (!dropit) it[n++] = (usbx_ckpt_item){&f, &f.t[k], f.t[k].dtype};
  }
  char err[1200];
  if (usbx_ckpt_write(argv[1], it, n, jv_copy(f.metadata), err, sizeof err) != 0) usbx_die("%s", err);
  printf("drop: kept %zu of %zu tensors\n", n, f.n);
  free(it);
  usbx_st_close(&f);
  return 0;
}

static int corpus(const char *dir) {
  st_bad bad[64];
  int n = st_bad_corpus(bad, 64);
  usbx_mkdirs(dir);
  usbx_buf tsv = {0};
  for (int i = 0; i < n; i++) {
    char *p = usbx_path_join(dir, bad[i].name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(bad[i].data, 1, bad[i].len, f) != bad[i].len || fclose(f) != 0) usbx_die("%s: write failed", p);
    usbx_buf_appendf(&tsv, "%s\t%s\n", bad[i].name, bad[i].expect);
    free(p);
    free(bad[i].data);
  }
  char *p = usbx_path_join(dir, "expect.tsv");
  if (usbx_write_file_atomic(p, tsv.data, tsv.len) != 0) usbx_die("%s: write failed", p);
  free(p);
  usbx_buf_free(&tsv);
  return 0;
}

static int expect(const char *path) {
  usbx_st_file f;
  openf(path, &f);
  jv o = jv_object();
  for (size_t k = 0; k < f.n; k++) {
    const usbx_st_tensor *t = &f.t[k];
    size_t n = (size_t)usbx_shape_numel(t->ndim, t->shape);
    jv e = jv_object();
    e = jv_object_set(e, jv_string("dtype"), jv_string(usbx_dtype_name(t->dtype)));
    jv sh = jv_array();
    for (int d = 0; d < t->ndim; d++) sh = jv_array_append(sh, jv_number((double)t->shape[d]));
    e = jv_object_set(e, jv_string("shape"), sh);
    if (usbx_dtype_is_float(t->dtype)) {
      float *v = xmalloc((n + 1) * sizeof *v);
      void *src = xmalloc(n * usbx_dtype_size(t->dtype) + 1);
      memcpy(src, t->data, n * usbx_dtype_size(t->dtype));
      usbx_convert(src, t->dtype, v, USBX_F32, n);
      double s = 0;
      jv first = jv_array();
      for (size_t i = 0; i < n; i++) {
        s += v[i];
        if (i < 8) first = jv_array_append(first, jv_number(v[i]));
      }
      e = jv_object_set(e, jv_string("first"), first);
      e = jv_object_set(e, jv_string("sum"), jv_number(s));
      free(v);
      free(src);
    } else {
      double s = 0;
      for (size_t i = 0; i < t->end - t->begin; i++) s += ((const unsigned char *)t->data)[i];
      e = jv_object_set(e, jv_string("byte_sum"), jv_number(s));
    }
    o = jv_object_set(o, jv_string(t->name), e);
  }
  jv m = jv_copy(f.metadata);
  o = jv_object_set(o, jv_string("__metadata__"), m);
  jv s = jv_dump_string(o, JV_PRINT_SORTED);
  printf("%s\n", jv_string_value(s));
  jv_free(s);
  usbx_st_close(&f);
  return 0;
}

int main(int argc, char **argv) {
  usbx_set_progname("helper_st");
  if (argc < 2) usbx_die("usage: helper_st gen|compare|drop|corpus|expect ...");
  if (!strcmp(argv[1], "gen")) return gen(argc - 2, argv + 2);
  if (!strcmp(argv[1], "compare")) return compare(argc - 2, argv + 2);
  if (!strcmp(argv[1], "drop")) return drop(argc - 2, argv + 2);
  if (!strcmp(argv[1], "corpus") && argc == 3) return corpus(argv[2]);
  if (!strcmp(argv[1], "expect") && argc == 3) return expect(argv[2]);
  usbx_die("unknown command %s", argv[1]);
}
