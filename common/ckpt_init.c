/* ckpt_init.c — `usbx-ckpt init`: a checkpoint folder with seeded random weights, written from
 * configs, for tests and for benchmarks at the real 7B shape.  Values: linear/conv/embedding
 * weights N(0, 0.02²), biases 0, norm weights 1, the sin-cos position tables as upstream.
 * Each tensor is generated in chunks whose RNG seed depends only on (seed, tensor name, chunk),
 * so the result does not depend on the thread count; threads = cores. */
#include "bagel.h"
#include "bagel_internal.h"
#include "ckpt.h"
#include "cli.h"
#include "jsonl.h"
#include "safetensors.h"
#include "util.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK ((size_t)1 << 20)      /* elements per RNG stream */
#define BATCH ((size_t)1 << 24)      /* elements generated per write (64 MB of f32) */

typedef struct {
  const usbx_wdesc *w;
  uint64_t seed;
  float *buf;
  size_t first, n;        /* element range of this batch */
  usbx_dtype out;
  void *outbuf;
  int tid, nthreads;
} gen_job;

static void fill_normal(float *dst, size_t n, uint64_t seed) {
  usbx_rng r;
  usbx_rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++) dst[i] = (float)(0.02 * usbx_rng_normal(&r));
}

static void *gen_worker(void *p) {
  gen_job *j = p;
  uint64_t name_h = usbx_hash64(j->w->name, strlen(j->w->name), j->seed);
  size_t c0 = j->first / CHUNK, c1 = (j->first + j->n + CHUNK - 1) / CHUNK;
  for (size_t c = c0 + (size_t)j->tid; c < c1; c += (size_t)j->nthreads) {
    size_t lo = c * CHUNK, hi = lo + CHUNK;
    if (lo < j->first) lo = j->first;
    if (hi > j->first + j->n) hi = j->first + j->n;
    float *dst = j->buf + (lo - j->first);
    switch (j->w->init) {
    case USBX_INIT_NORMAL: {
      /* a chunk's stream always starts at the chunk start, so batches split chunks safely */
      if (lo == c * CHUNK && hi - lo == CHUNK) fill_normal(dst, CHUNK, name_h ^ (c * 0x9e3779b97f4a7c15ULL));
      else {
        /* generate the stream's prefix up to hi, keep the part this batch owns */
        float *tmp = xmalloc(sizeof(float) * (hi - c * CHUNK));
        fill_normal(tmp, hi - c * CHUNK, name_h ^ (c * 0x9e3779b97f4a7c15ULL));
        memcpy(dst, tmp + (lo - c * CHUNK), sizeof(float) * (hi - lo));
        free(tmp);
      }
      break;
    }
    case USBX_INIT_ZERO: memset(dst, 0, sizeof(float) * (hi - lo)); break;
    case USBX_INIT_ONE: for (size_t i = 0; i < hi - lo; i++) dst[i] = 1.0f; break;
    default: break;   /* tables are computed whole by the caller */
    }
    usbx_convert(dst, USBX_F32, (char *)j->outbuf + (lo - j->first) * usbx_dtype_size(j->out), j->out, hi - lo);
  }
  return NULL;
}

static int write_random(const char *path, const usbx_wlist *L, uint64_t seed, usbx_dtype dt, char *err, size_t errlen) {
  usbx_st_decl *decls = xcalloc((size_t)L->n, sizeof *decls);
  for (int i = 0; i < L->n; i++) {
    decls[i].name = L->v[i].name;
    decls[i].dtype = dt;
    decls[i].ndim = L->v[i].ndim;
    for (int k = 0; k < L->v[i].ndim; k++) decls[i].shape[k] = L->v[i].shape[k];
  }
  jv meta = jv_object_set(jv_object(), jv_string("format"), jv_string("pt"));
  meta = jv_object_set(meta, jv_string("usbx"), jv_string("usbx-ckpt init " USBX_VERSION));
  usbx_st_writer *w = usbx_st_writer_begin(path, decls, (size_t)L->n, meta, err, errlen);
  free(decls);
  if (!w) return -1;
  long nt = sysconf(_SC_NPROCESSORS_ONLN);
  if (nt < 1) nt = 1;
  if (nt > 64) nt = 64;
  float *buf = xmalloc(sizeof(float) * BATCH);
  void *outbuf = xmalloc(usbx_dtype_size(dt) * BATCH);
  int rc = 0;
  for (int i = 0; i < L->n && rc == 0; i++) {
    const usbx_wdesc *wd = &L->v[i];
    size_t n = (size_t)usbx_shape_numel(wd->ndim, wd->shape);
    if (wd->init == USBX_INIT_SINCOS_LATENT || wd->init == USBX_INIT_SINCOS_VIT) {
      int G = 1;
      while ((int64_t)G * G < wd->shape[0]) G++;
      float *tab = xmalloc(sizeof(float) * n);
      usbx_sincos_2d(tab, G, (int)wd->shape[1]);
      void *o = xmalloc(usbx_dtype_size(dt) * n);
      usbx_convert(tab, USBX_F32, o, dt, n);
      rc = usbx_st_writer_write(w, o, usbx_dtype_size(dt) * n);
      free(tab); free(o);
      continue;
    }
    for (size_t first = 0; first < n && rc == 0; first += BATCH) {
      size_t cnt = n - first < BATCH ? n - first : BATCH;
      gen_job jobs[64];
      pthread_t th[64];
      int started = (int)nt;
      if (cnt < CHUNK) started = 1;
      for (int t = 0; t < started; t++) {
        jobs[t] = (gen_job){wd, seed, buf, first, cnt, dt, outbuf, t, started};
        if (t && pthread_create(&th[t], NULL, gen_worker, &jobs[t]) != 0) usbx_die("pthread_create failed");
      }
      gen_worker(&jobs[0]);
      for (int t = 1; t < started; t++) pthread_join(th[t], NULL);
      rc = usbx_st_writer_write(w, outbuf, usbx_dtype_size(dt) * cnt);
    }
  }
  free(buf); free(outbuf);
  if (rc) { snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno)); usbx_st_writer_abort(w); return -1; }
  return usbx_st_writer_finish(w, err, errlen);
}

static int write_json(const char *dir, const char *name, jv v, char *err, size_t errlen) {
  char *p = usbx_path_join(dir, name);
  jv s = jv_dump_string(v, JV_PRINT_PRETTY | JV_PRINT_SPACE1);
  int rc = usbx_write_file_atomic(p, jv_string_value(s), (size_t)jv_string_length_bytes(jv_copy(s)));
  if (rc) snprintf(err, errlen, "%s: %s", p, strerror(errno));
  jv_free(s);
  free(p);
  return rc;
}

static void emit(const char *action, const char *path, const char *detail) {
  jv r = jv_object();
  r = usbx_jv_set_str(r, "action", action);
  r = usbx_jv_set_str(r, "path", path);
  if (detail) r = usbx_jv_set_str(r, "detail", detail);
  usbx_jsonl_write(stdout, r);
}

int usbx_ckpt_init_main(int argc, char **argv) {
  const char *like = NULL, *config = NULL, *dtype_s = "bf16";
  long seed = 0;
  usbx_opt opts[] = {
    {"like", USBX_OPT_STR, &like, "DIR", "take llm/vit/bagel/ae configs and tokenizer files from DIR (its weights are not read)", false},
    {"config", USBX_OPT_STR, &config, "FILE", "one JSON object {\"llm\":{..}, \"vit\":{..}|null, \"bagel\":{..}, \"ae\":{..}|null}", false},
    {"seed", USBX_OPT_INT, &seed, "N", "RNG seed (default 0)", false},
    {"dtype", USBX_OPT_STR, &dtype_s, "bf16|f32", "weight dtype (default bf16)", false},
    {0},
  };
  char **pos; int npos;
  usbx_cli_parse(argc, argv, opts, "usbx-ckpt init (--like DIR | --config FILE) [--seed N] [--dtype bf16|f32] OUT_DIR",
                 "Writes a BAGEL checkpoint folder with seeded random weights: ema.safetensors (and ae.safetensors when the\n"
                 "config has an autoencoder) plus the config files.  Refuses to overwrite existing weights.", &pos, &npos);
  if (npos != 1) usbx_usage_die("expected one OUT_DIR");
  if (!like == !config) usbx_usage_die("give exactly one of --like DIR and --config FILE");
  usbx_dtype dt;
  if (!usbx_dtype_parse(dtype_s, &dt) || (dt != USBX_BF16 && dt != USBX_F32)) usbx_usage_die("--dtype: expected bf16 or f32");
  const char *out = pos[0];
  free(pos);
  char err[1024];
  char *ema = usbx_path_join(out, "ema.safetensors");
  if (usbx_file_exists(ema)) usbx_die("%s: exists; init never overwrites weights", ema);
  if (usbx_mkdirs(out)) usbx_die("%s: %s", out, strerror(errno));

  if (like) {
    const char *files[] = {"llm_config.json", "vit_config.json", "bagel_config.json", "ae_config.json", "tokenizer.json",
                           "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
      char *src = usbx_path_join(like, files[i]), *dst = usbx_path_join(out, files[i]);
      if (usbx_file_exists(src)) {
        uint64_t bytes;
        int rc = usbx_ckpt_copy_noreplace(src, dst, &bytes, err, sizeof err);
        if (rc < 0) usbx_die("%s", err);
        emit(rc == 0 ? "copied" : "kept", dst, rc == 0 ? NULL : "exists; not overwritten");
      }
      free(src); free(dst);
    }
  } else {
    size_t n;
    char *s = usbx_read_file(config, &n);
    if (!s) usbx_die("%s: %s", config, strerror(errno));
    jv o = jv_parse_sized(s, (int)n);
    free(s);
    if (!jv_is_valid(o) || jv_get_kind(o) != JV_KIND_OBJECT) usbx_die("%s: not a JSON object", config);
    const char *keys[] = {"llm", "vit", "bagel", "ae"};
    const char *names[] = {"llm_config.json", "vit_config.json", "bagel_config.json", "ae_config.json"};
    for (int i = 0; i < 4; i++) {
      jv v = jv_object_get(jv_copy(o), jv_string(keys[i]));
      if (jv_get_kind(v) == JV_KIND_OBJECT) {
        if (write_json(out, names[i], v, err, sizeof err)) usbx_die("%s", err);
        char *p = usbx_path_join(out, names[i]);
        emit("wrote", p, NULL);
        free(p);
      } else {
        if (i == 0) usbx_die("%s: missing the \"llm\" object", config);
        jv_free(v);
      }
    }
    jv_free(o);
  }

  usbx_bagel_config cfg;
  if (usbx_bagel_read_config(out, &cfg, err, sizeof err)) usbx_die("%s", err);
  usbx_wlist L = {0};
  usbx_bagel_enumerate(&cfg, USBX_PART_LLM | USBX_PART_GEN | USBX_PART_VIT, NULL, &L);
  double t0 = usbx_now();
  if (write_random(ema, &L, (uint64_t)seed, dt, err, sizeof err)) usbx_die("%s", err);
  int64_t params = 0;
  for (int i = 0; i < L.n; i++) params += usbx_shape_numel(L.v[i].ndim, L.v[i].shape);
  char detail[160];
  snprintf(detail, sizeof detail, "%d tensors, %lld parameters, %s, %.1f s", L.n, (long long)params, usbx_dtype_name(dt), usbx_now() - t0);
  emit("wrote", ema, detail);
  free(L.v);
  free(ema);

  char *aecfg = usbx_path_join(out, "ae_config.json");
  if (cfg.has_vae && usbx_file_exists(aecfg)) {
    usbx_ae_config ae;
    if (usbx_ae_read_config(out, &ae, err, sizeof err)) usbx_die("%s", err);
    usbx_wlist A = {0};
    usbx_ae_enumerate(&ae, &A);
    char *aep = usbx_path_join(out, "ae.safetensors");
    if (usbx_file_exists(aep)) usbx_die("%s: exists; init never overwrites weights", aep);
    /* the autoencoder stays fp32, as upstream keeps its file dtype */
    if (write_random(aep, &A, (uint64_t)seed + 1, USBX_F32, err, sizeof err)) usbx_die("%s", err);
    snprintf(detail, sizeof detail, "%d tensors, F32", A.n);
    emit("wrote", aep, detail);
    free(A.v); free(aep);
  }
  free(aecfg);
  return 0;
}
