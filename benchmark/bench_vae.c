/* bench_vae.c — the FLUX autoencoder (common/vae.c, fp32 on every backend) at the 7B model's
 * configuration, with random weights: decode and encode time at a given image size, and (--check N) the
 * CUDA decode of an N/8 x N/8 latent against the CPU backend, for each "f32_mode" (fp32, TF32, bf16x3,
 * auto = bf16x3 for products of 256 or more columns).
 *   bench_vae [--size 1024] [--reps 3] [--check 128] [--dir DIR]
 * Writes DIR/ae.safetensors (FLUX shapes, f32, seeded) once if absent; DIR defaults to
 * /tmp/usbx-bench-vae.  Prints one line per measurement and a JSON summary last. */
#include "vae.h"
#include "bagel.h"
#include "bagel_internal.h"
#include "safetensors.h"
#include "ops.h"
#include "tensor.h"
#include "util.h"
#ifdef USBX_HAVE_CUDA
#include "cuda_extra.h"
#endif
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static uint64_t rs = 0x243F6A8885A308D3ull;
static float urand(void) {   /* uniform in [-1, 1) */
  rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
  return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f;
}
static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* conv weights uniform with variance 1/fan_in (He-like, keeps activations O(1)); norm weights
 * 1 + small noise; biases small */
static void write_ae(const char *dir) {
  usbx_ae_config cfg;
  char err[512];
  if (usbx_ae_read_config(dir, &cfg, err, sizeof err)) usbx_die("%s", err);
  usbx_wlist L = {0};
  usbx_ae_enumerate(&cfg, &L);
  usbx_st_decl *d = xcalloc((size_t)L.n, sizeof *d);
  for (int i = 0; i < L.n; i++) {
    d[i].name = L.v[i].name;
    d[i].dtype = USBX_F32;
    d[i].ndim = L.v[i].ndim;
    for (int k = 0; k < L.v[i].ndim; k++) d[i].shape[k] = L.v[i].shape[k];
  }
  char *path = usbx_path_join(dir, "ae.safetensors");
  usbx_st_writer *w = usbx_st_writer_begin(path, d, (size_t)L.n, jv_null(), err, sizeof err);
  if (!w) usbx_die("%s", err);
  size_t total = 0;
  for (int i = 0; i < L.n; i++) {
    size_t n = (size_t)usbx_shape_numel(L.v[i].ndim, L.v[i].shape);
    float *x = xmalloc(n * sizeof *x);
    bool isw = strlen(L.v[i].name) > 7 && !strcmp(L.v[i].name + strlen(L.v[i].name) - 7, ".weight");
    if (L.v[i].ndim == 4) {
      double fan = (double)L.v[i].shape[1] * L.v[i].shape[2] * L.v[i].shape[3];
      float a = (float)sqrt(3.0 / fan);
      for (size_t j = 0; j < n; j++) x[j] = a * urand();
    } else {
      for (size_t j = 0; j < n; j++) x[j] = isw ? 1.f + 0.1f * urand() : 0.05f * urand();
    }
    if (usbx_st_writer_write(w, x, n * sizeof *x)) usbx_die("%s: %s", path, usbx_st_writer_error(w));
    total += n;
    free(x);
  }
  if (usbx_st_writer_finish(w, err, sizeof err)) usbx_die("%s", err);
  fprintf(stderr, "wrote %s: %d tensors, %.1f M parameters\n", path, L.n, total / 1e6);
  free(path); free(d); free(L.v);
}

static float *rand_latent(int h, int w, int C) {
  float *z = xmalloc(sizeof(float) * (size_t)h * w * C);
  for (size_t i = 0; i < (size_t)h * w * C; i++) z[i] = urand() * 1.7f;
  return z;
}
static double rel(const float *a, const float *b, size_t n, size_t *bad) {
  double num = 0, den = 0;
  *bad = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(a[i]) || !isfinite(b[i])) { (*bad)++; continue; }
    double e = (double)a[i] - b[i];
    num += e * e; den += (double)b[i] * b[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

int main(int argc, char **argv) {
  usbx_set_progname("bench_vae");
  int size = 1024, reps = 3, check = 128;
  const char *dir = "/tmp/usbx-bench-vae";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--check") && i + 1 < argc) check = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
    else usbx_usage_die("usage: bench_vae [--size 1024] [--reps 3] [--check 128] [--dir DIR]");
  }
  (void)reps;   /* only the CUDA build times anything */
  mkdir(dir, 0755);
  char *aep = usbx_path_join(dir, "ae.safetensors");
  if (!usbx_file_exists(aep)) write_ae(dir);
  free(aep);
  char err[512];
  usbx_backend *be = usbx_backend_cuda(err, sizeof err);
  if (!be) { printf("skipped: %s\n", err); return 0; }
  double t0 = now_s();
  usbx_vae *v = usbx_vae_load(dir, be, err, sizeof err);
  if (!v) usbx_die("%s", err);
  printf("backend %s; load %.2f s\n", be->name, now_s() - t0);
  const usbx_ae_config *c = usbx_vae_cfg(v);
  int h = size / 8, Z = c->z_channels;
  float *z = rand_latent(h, h, Z), *img = xmalloc(sizeof(float) * (size_t)size * size * 3);
  static const char *mname[] = {"fp32", "TF32", "bf16x3", "auto"};
  double best[4] = {1e30, 1e30, 1e30, 1e30}, med[4] = {0, 0, 0, 0};
#ifdef USBX_HAVE_CUDA
  for (int md = 0; md < 4; md++) {
    int old = usbx_cuda_set_option(be, "f32_mode", md);
    double *ts = xmalloc(sizeof(double) * (size_t)(reps + 1));
    for (int r = 0; r <= reps; r++) {     /* r = 0: warm-up (plans, scratch) */
      double s = now_s();
      usbx_vae_decode(v, z, h, h, img);
      ts[r] = now_s() - s;
      printf("decode %dx%d %s%s: %.3f s\n", size, size, mname[md], r ? "" : " warm-up", ts[r]);
    }
    size_t nonfinite = 0;
    for (size_t i = 0; i < (size_t)size * size * 3; i++) nonfinite += !isfinite(img[i]);
    if (nonfinite) printf("WARNING: %zu non-finite pixels\n", nonfinite);
    for (int r = 1; r <= reps; r++) if (ts[r] < best[md]) best[md] = ts[r];
    for (int i = 1; i <= reps; i++)
      for (int j = i + 1; j <= reps; j++) if (ts[j] < ts[i]) { double t = ts[i]; ts[i] = ts[j]; ts[j] = t; }
    med[md] = reps ? ts[1 + reps / 2] : ts[0];
    free(ts);
    usbx_cuda_set_option(be, "f32_mode", old);
  }
#endif
  /* encode of a random image of the same size (fp32 and auto modes): the training loader's cost per image */
  double enc[2] = {0, 0};
  for (int em = 0; em < 2; em++) {
#ifdef USBX_HAVE_CUDA
    int old = usbx_cuda_set_option(be, "f32_mode", em ? 3 : 0);
#endif
    float *im = xmalloc(sizeof(float) * (size_t)size * size * 3), *zz = xmalloc(sizeof(float) * (size_t)h * h * Z);
    float *mom = xmalloc(sizeof(float) * (size_t)h * h * Z * 2);
    for (size_t i = 0; i < (size_t)size * size * 3; i++) im[i] = urand();
    double *ts = xmalloc(sizeof(double) * (size_t)(reps + 1));
    for (int r = 0; r <= reps; r++) {
      double s = now_s();
      usbx_vae_encode(v, im, size, size, NULL, zz, mom);
      ts[r] = now_s() - s;
      printf("encode %dx%d %s%s: %.3f s\n", size, size, em ? "auto" : "fp32", r ? "" : " warm-up", ts[r]);
    }
    for (int i = 1; i <= reps; i++)
      for (int j = i + 1; j <= reps; j++) if (ts[j] < ts[i]) { double t = ts[i]; ts[i] = ts[j]; ts[j] = t; }
    enc[em] = reps ? ts[1 + reps / 2] : ts[0];
    free(ts); free(im); free(zz); free(mom);
#ifdef USBX_HAVE_CUDA
    usbx_cuda_set_option(be, "f32_mode", old);
#endif
  }
  double errs[4] = {-1, -1, -1, -1};
  if (check > 0) {   /* CUDA vs CPU at check x check */
    int hc = check / 8;
    float *zc = rand_latent(hc, hc, Z);
    size_t np = (size_t)check * check * 3;
    float *ic = xmalloc(np * sizeof *ic), *ig = xmalloc(np * sizeof *ig);
    usbx_backend *cpu = usbx_backend_cpu();
    usbx_vae *vc = usbx_vae_load(dir, cpu, err, sizeof err);
    if (!vc) usbx_die("%s", err);
    double s = now_s();
    usbx_vae_decode(vc, zc, hc, hc, ic);
    printf("cpu decode %dx%d: %.2f s\n", check, check, now_s() - s);
    usbx_vae_free(vc);
    for (int md = 0; md < 4; md++) {
#ifdef USBX_HAVE_CUDA
      int old = usbx_cuda_set_option(be, "f32_mode", md);
#endif
      usbx_vae_decode(v, zc, hc, hc, ig);
#ifdef USBX_HAVE_CUDA
      usbx_cuda_set_option(be, "f32_mode", old);
#endif
      size_t bad;
      double e = rel(ig, ic, np, &bad);
      printf("cuda (%s) vs cpu decode %dx%d: rel %.3e, %zu non-finite\n", mname[md], check, check, e, bad);
      errs[md] = bad ? INFINITY : e;
    }
    free(zc); free(ic); free(ig);
  }
  printf("{\"size\": %d, \"encode_s\": {\"fp32\": %.4f, \"auto\": %.4f}, \"decode_s\": {\"fp32\": %.4f, \"tf32\": %.4f, \"bf16x3\": %.4f, \"auto\": %.4f}, "
         "\"best_s\": {\"fp32\": %.4f, \"tf32\": %.4f, \"bf16x3\": %.4f, \"auto\": %.4f}, \"check\": %d, "
         "\"rel_vs_cpu\": {\"fp32\": %.3e, \"tf32\": %.3e, \"bf16x3\": %.3e, \"auto\": %.3e}}\n",
         size, enc[0], enc[1], med[0], med[1], med[2], med[3], best[0], best[1], best[2], best[3], check, errs[0], errs[1], errs[2], errs[3]);
  free(z); free(img);
  usbx_vae_free(v);
  usbx_backend_close(be);
  return 0;
}
