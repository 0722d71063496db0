/* test_ops_cuda.c — every op of the CUDA backend (kernels/cuda_*.cu) against a float64 reference
 * computed here on the host from the same (bf16-representable) inputs.  Random inputs, never
 * zeros; outputs are poisoned (all bits set: NaN in f32 and bf16) before each run, so an unwritten
 * element fails.  Error measure: ‖out − ref‖ / ‖ref‖ over the checked elements.
 * Tolerances: 1e-5 for f32 outputs of fp32 math, 1e-4 for f32 matrix products (bf16 inputs are
 * exact, sums in fp32), 1e-2 for bf16 (mm) outputs; exact for copies, conversions, argmax.
 * Exits 77 ("skipped") when no CUDA backend can be made (no GPU, or a build without CUDA). */
#include "testlib.h"
#include "ops.h"
#include "tensor.h"
#include "util.h"
#include <stdint.h>
#ifdef USBX_HAVE_CUDA
#include "cuda_extra.h"
#endif

static usbx_backend *be;
static usbx_rng rng;
static size_t MMS;                       /* bytes per mm element */

/* ---------------------------------------------------------------- helpers */
static float *randn(size_t n, double scale) {
  float *x = xmalloc(n * sizeof *x);
  for (size_t i = 0; i < n; i++) {
    double v = usbx_rng_normal(&rng) * scale;
    if (v == 0) v = scale * 0.5;        /* never zeros */
    x[i] = (float)v;
  }
  return x;
}
static void round_mm(float *x, size_t n) {   /* make values exactly representable in mm */
  if (be->mm_dtype != USBX_BF16) return;
  for (size_t i = 0; i < n; i++) x[i] = usbx_bf16_to_f32(usbx_f32_to_bf16(x[i]));
}
static void *dev_mm(const float *h, size_t n) {
  void *d = be->alloc(be, n * MMS);
  be->upload_convert(be, d, true, h, USBX_F32, n);
  return d;
}
static float *dev_f32(const float *h, size_t n) {
  float *d = be->alloc(be, n * sizeof(float));
  be->upload(be, d, h, n * sizeof(float));
  return d;
}
static int32_t *dev_i32(const int32_t *h, size_t n) {
  int32_t *d = be->alloc(be, n * sizeof(int32_t));
  be->upload(be, d, h, n * sizeof(int32_t));
  return d;
}
static void poison(void *d, size_t bytes) {
  void *h = xmalloc(bytes);
  memset(h, 0xff, bytes);
  be->upload(be, d, h, bytes);
  be->sync(be);
  free(h);
}
static float *get_f32(const void *d, size_t n) {
  float *h = xmalloc(n * sizeof *h);
  be->download(be, h, d, n * sizeof *h);
  return h;
}
static float *get_mm(const void *d, size_t n) {
  if (be->mm_dtype == USBX_F32) return get_f32(d, n);
  uint16_t *t = xmalloc(n * 2);
  be->download(be, t, d, n * 2);
  float *h = xmalloc(n * sizeof *h);
  for (size_t i = 0; i < n; i++) h[i] = usbx_bf16_to_f32(t[i]);
  free(t);
  return h;
}
static float *copyf(const float *x, size_t n) { float *y = xmalloc(n * sizeof *y); memcpy(y, x, n * sizeof *y); return y; }
/* how many values of the device mm copy dm differ bit for bit from to_mm's rounding of the host f32 x */
static size_t mm_copy_mismatches(const void *dm, const float *x, size_t n) {
  float *m = get_mm(dm, n);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    float want = be->mm_dtype == USBX_BF16 ? usbx_bf16_to_f32(usbx_f32_to_bf16(x[i])) : x[i];
    bad += memcmp(&m[i], &want, sizeof want) != 0;
  }
  free(m);
  return bad;
}
/* relative L2 error; NaN or Inf anywhere counts as infinite error */
static double relerr(const float *out, const double *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(out[i])) return INFINITY;
    double e = out[i] - ref[i];
    num += e * e; den += ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* relative L2 error against the CPU backend's (float) output */
static double relerr_f(const float *out, const float *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(out[i]) || !isfinite(ref[i])) return INFINITY;
    double e = (double)out[i] - ref[i];
    num += e * e; den += (double)ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}
static usbx_backend *cpu;                /* the CPU backend (fp32 reference of the project) */

/* per-op worst error, printed as a table at the end */
#define MAXOPS 96
static struct { const char *op; double worst, tol; int cases, failed; } summ[MAXOPS];
static int nsumm;
static void report(const char *op, const char *cas, double err, double tol) {
  int k;
  for (k = 0; k < nsumm && strcmp(summ[k].op, op); k++) {}
  if (k == nsumm && nsumm < MAXOPS) { summ[k].op = op; summ[k].worst = 0; summ[k].tol = tol; nsumm++; }
  if (k < MAXOPS) {
    summ[k].cases++;
    if (!(err <= summ[k].worst)) summ[k].worst = err;
    if (tol > summ[k].tol) summ[k].tol = tol;
    if (!(err <= tol)) summ[k].failed++;
  }
  printf("%-30s %-44s err %.3e  tol %.0e  %s\n", op, cas, err, tol, err <= tol ? "ok" : "FAIL");
  fflush(stdout);
  CHECKF(err <= tol, "%s %s: error %.3e > %.0e", op, cas, err, tol);
}

/* ---------------------------------------------------------------- memory and conversion */
static void test_memory(void) {
  size_t n = 1000003;
  float *h = randn(n, 1.0);
  float *d = dev_f32(h, n), *d2 = be->alloc(be, n * sizeof(float));
  poison(d2, n * sizeof(float));
  be->copy(be, d2, d, n * sizeof(float));
  float *back = get_f32(d2, n);
  CHECK(memcmp(back, h, n * sizeof(float)) == 0);
  be->memset0(be, d2, 4096 * sizeof(float));
  free(back);
  back = get_f32(d2, n);
  int zero_ok = 1;
  for (size_t i = 0; i < 4096; i++) zero_ok &= back[i] == 0.f;
  CHECK(zero_ok);
  CHECK(memcmp(back + 4096, h + 4096, (n - 4096) * sizeof(float)) == 0);
  report("memory", "upload/copy/memset0/download n=1000003", 0.0, 0.0);
  free(back); free(h); be->free(be, d); be->free(be, d2);
}

static void test_upload_convert(void) {
  /* 20M elements: several 32 MB staging chunks for every source dtype */
  size_t sizes[] = {1, 7, 300, 20000003};
  usbx_dtype dts[] = {USBX_F32, USBX_BF16, USBX_F16, USBX_F64};
  for (size_t si = 0; si < 4; si++) {
    size_t n = sizes[si];
    float *h = randn(n, 3.0);
    for (int di = 0; di < 4; di++) {
      usbx_dtype st = dts[di];
      void *src = xmalloc(n * usbx_dtype_size(st));
      usbx_convert(h, USBX_F32, src, st, n);
      for (int to_mm = 0; to_mm < 2; to_mm++) {
        usbx_dtype dt = to_mm ? be->mm_dtype : USBX_F32;
        size_t os = usbx_dtype_size(dt);
        void *d = be->alloc(be, n * os);
        poison(d, n * os);
        be->upload_convert(be, d, to_mm, src, st, n);
        void *got = xmalloc(n * os), *want = xmalloc(n * os);
        be->download(be, got, d, n * os);
        usbx_convert(src, st, want, dt, n);
        size_t bad = 0;
        for (size_t i = 0; i < n * os; i += os) bad += memcmp((char *)got + i, (char *)want + i, os) != 0;
        char cas[96];
        snprintf(cas, sizeof cas, "%s -> %s n=%zu (%zu differ)", usbx_dtype_name(st), usbx_dtype_name(dt), n, bad);
        report("upload_convert", cas, bad ? 1.0 : 0.0, 0.0);
        free(got); free(want); be->free(be, d);
      }
      free(src);
    }
    free(h);
  }
}

/* ---------------------------------------------------------------- matmul */
static void test_matmul_case(int M, int N, int K, bool bias, bool acc) {
  float *x = randn((size_t)M * K, 1.0), *w = randn((size_t)N * K, 1.0 / sqrt(K));
  round_mm(x, (size_t)M * K); round_mm(w, (size_t)N * K);
  float *b = bias ? randn(N, 1.0) : NULL;
  float *y0 = randn((size_t)M * N, 1.0);
  void *dx = dev_mm(x, (size_t)M * K), *dw = dev_mm(w, (size_t)N * K);
  float *db = bias ? dev_f32(b, N) : NULL;
  float *dy = be->alloc(be, (size_t)M * N * sizeof(float));
  if (acc) be->upload(be, dy, y0, (size_t)M * N * sizeof(float));
  else poison(dy, (size_t)M * N * sizeof(float));
  be->matmul(be, dy, dx, dw, db, M, N, K, acc);
  float *y = get_f32(dy, (size_t)M * N);
  double *ref = xmalloc((size_t)M * N * sizeof *ref);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = 0;
      const float *xr = x + (size_t)m * K, *wr = w + (size_t)n * K;
      for (int k = 0; k < K; k++) s += (double)xr[k] * wr[k];
      if (bias) s += b[n];
      if (acc) s += y0[(size_t)m * N + n];
      ref[(size_t)m * N + n] = s;
    }
  char cas[96];
  snprintf(cas, sizeof cas, "M=%d N=%d K=%d%s%s", M, N, K, bias ? " bias" : "", acc ? " accumulate" : "");
  report("matmul", cas, relerr(y, ref, (size_t)M * N), 1e-4);
  float *yc = xmalloc((size_t)M * N * sizeof *yc);
  memcpy(yc, y0, (size_t)M * N * sizeof *yc);
  cpu->matmul(cpu, yc, x, w, b, M, N, K, acc);
  report("matmul vs cpu", cas, relerr_f(y, yc, (size_t)M * N), 1e-4);
  free(yc);
  free(x); free(w); free(b); free(y0); free(y); free(ref);
  be->free(be, dx); be->free(be, dw); be->free(be, db); be->free(be, dy);
}
static void test_matmul(void) {
  test_matmul_case(1, 7, 16, false, false);
  test_matmul_case(7, 13, 33, true, false);        /* odd K: cuBLAS path */
  test_matmul_case(7, 13, 40, true, true);
  test_matmul_case(300, 100, 200, true, false);
  test_matmul_case(300, 100, 200, false, true);
  test_matmul_case(300, 101, 203, true, true);
  test_matmul_case(1, 3584, 3584, true, false);    /* 7B decode shapes (GEMV) */
  test_matmul_case(1, 512, 3584, true, true);
  test_matmul_case(1, 3584, 18944, false, true);
  test_matmul_case(3, 3584, 3584, false, false);
  test_matmul_case(4, 18944, 3584, false, false);
  test_matmul_case(5, 512, 3584, true, false);
  test_matmul_case(2, 100, 1024, true, true);      /* GEMV with 4 warps per row */
  test_matmul_case(4, 64, 8192, true, false);      /* GEMV with 8 warps per row */
  test_matmul_case(300, 3584, 3584, true, false);  /* prefill shapes */
  test_matmul_case(130, 18944, 3584, false, false);
  test_matmul_case(64, 3584, 18944, false, true);
}

/* matmul_res: y = res + x·Wᵀ beside res (res left as it was) and in place (res == y), against the
 * CPU; M <= 4 and K = 0 take the paths that copy res first */
static void test_matmul_res(void) {
  struct { int M, N, K; } cs[] = {{300, 1536, 1536}, {7, 13, 40}, {3, 512, 3584}, {5, 64, 0}, {8204, 1536, 8960}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int M = cs[ci].M, N = cs[ci].N, K = cs[ci].K;
    const size_t ny = (size_t)M * N;
    float *x = randn((size_t)M * K + 1, 1.0), *w = randn((size_t)N * K + 1, 0.1), *r = randn(ny, 1.0);
    round_mm(x, (size_t)M * K); round_mm(w, (size_t)N * K);
    void *dxm = dev_mm(x, (size_t)M * K + 1), *dwm = dev_mm(w, (size_t)N * K + 1);
    float *dr = dev_f32(r, ny), *dy = be->alloc(be, ny * sizeof(float));
    poison(dy, ny * sizeof(float));
    float *want = copyf(r, ny);
    cpu->matmul(cpu, want, x, w, NULL, M, N, K, true);
    char cas[64];
    snprintf(cas, sizeof cas, "M=%d N=%d K=%d", M, N, K);
    be->matmul_res(be, dy, dr, dxm, dwm, M, N, K);
    float *got = get_f32(dy, ny), *res = get_f32(dr, ny);
    report("matmul_res vs cpu", cas, relerr_f(got, want, ny), 1e-4);
    report("matmul_res leaves res", cas, memcmp(res, r, ny * sizeof(float)) ? 1.0 : 0.0, 0);
    free(got); free(res);
    be->matmul_res(be, dr, dr, dxm, dwm, M, N, K);   /* in place */
    got = get_f32(dr, ny);
    report("matmul_res in place vs cpu", cas, relerr_f(got, want, ny), 1e-4);
    free(got); free(x); free(w); free(r); free(want);
    be->free(be, dxm); be->free(be, dwm); be->free(be, dr); be->free(be, dy);
  }
}

/* ---------------------------------------------------------------- lanes */
/* lane 1 runs a chain of products (y = reps · x·Wᵀ) while lane 0 runs a product of its own (each
 * lane has its own cuBLAS workspace); after lane_wait(0, 1) lane 0 copies y, which must be
 * complete.  The same copy without the wait shows whether the lanes really overlap (printed only:
 * a race may or may not be seen). */
static void lanes_chain(void *dx, void *dw, float *dy, int M, int N, int K, int reps) {
  usbx_lane(be, 1);
  for (int r = 0; r < reps; r++) be->matmul(be, dy, dx, dw, NULL, M, N, K, r > 0);
}
static void test_lanes(void) {
  if (!be->set_lane) { report("lanes", "backend without lanes", 0.0, 0.0); return; }
  int M = 1024, N = 4096, K = 4096, reps = 8, M2 = 300, N2 = 1000, K2 = 520;
  float *x = randn((size_t)M * K, 1.0), *w = randn((size_t)N * K, 1.0 / sqrt(K));
  float *x2 = randn((size_t)M2 * K2, 1.0), *w2 = randn((size_t)N2 * K2, 1.0 / sqrt(K2));
  round_mm(x, (size_t)M * K); round_mm(w, (size_t)N * K); round_mm(x2, (size_t)M2 * K2); round_mm(w2, (size_t)N2 * K2);
  void *dx = dev_mm(x, (size_t)M * K), *dw = dev_mm(w, (size_t)N * K), *dx2 = dev_mm(x2, (size_t)M2 * K2), *dw2 = dev_mm(w2, (size_t)N2 * K2);
  size_t ny = (size_t)M * N;
  float *dy = be->alloc(be, ny * sizeof(float)), *dz = be->alloc(be, ny * sizeof(float));
  float *dy2 = be->alloc(be, (size_t)M2 * N2 * sizeof(float));
  poison(dy, ny * sizeof(float)); poison(dz, ny * sizeof(float)); poison(dy2, (size_t)M2 * N2 * sizeof(float));
  lanes_chain(dx, dw, dy, M, N, K, reps);
  usbx_lane(be, 0);
  be->matmul(be, dy2, dx2, dw2, NULL, M2, N2, K2, false);
  usbx_lane_wait(be, 0, 1);
  be->copy(be, dz, dy, ny * sizeof(float));
  float *z = get_f32(dz, ny), *y2 = get_f32(dy2, (size_t)M2 * N2);
  /* rows 0-7 and the last row of z against reps · x·Wᵀ */
  int rows[9] = {0, 1, 2, 3, 4, 5, 6, 7, M - 1};
  double *ref = xmalloc(9 * (size_t)N * sizeof *ref);
  float *zr = xmalloc(9 * (size_t)N * sizeof *zr);
  for (int i = 0; i < 9; i++)
    for (int n = 0; n < N; n++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += (double)x[(size_t)rows[i] * K + k] * w[(size_t)n * K + k];
      ref[(size_t)i * N + n] = reps * s;
      zr[(size_t)i * N + n] = z[(size_t)rows[i] * N + n];
    }
  report("lanes", "lane 1 chain of 8 products, read on lane 0 after lane_wait", relerr(zr, ref, 9 * (size_t)N), 1e-4);
  double *ref2 = xmalloc((size_t)M2 * N2 * sizeof *ref2);
  for (int m = 0; m < M2; m++)
    for (int n = 0; n < N2; n++) {
      double s = 0;
      for (int k = 0; k < K2; k++) s += (double)x2[(size_t)m * K2 + k] * w2[(size_t)n * K2 + k];
      ref2[(size_t)m * N2 + n] = s;
    }
  report("lanes", "lane 0 product beside the chain", relerr(y2, ref2, (size_t)M2 * N2), 1e-4);
  /* the same without the wait: how much of y lane 0 saw unfinished */
  be->sync(be);
  poison(dy, ny * sizeof(float)); poison(dz, ny * sizeof(float));
  lanes_chain(dx, dw, dy, M, N, K, reps);
  usbx_lane(be, 0);
  be->copy(be, dz, dy, ny * sizeof(float));
  be->sync(be);
  float *z0 = get_f32(dz, ny);
  size_t unfinished = 0;
  for (size_t i = 0; i < ny; i++) unfinished += !(z0[i] == z[i]);
  printf("%-30s without lane_wait the copy saw %zu of %zu values unfinished (shows the lanes overlap)\n", "lanes", unfinished, ny);
  free(z0);
  free(x); free(w); free(x2); free(w2); free(z); free(y2); free(ref); free(zr); free(ref2);
  be->free(be, dx); be->free(be, dw); be->free(be, dx2); be->free(be, dw2);
  be->free(be, dy); be->free(be, dz); be->free(be, dy2);
}

/* ---------------------------------------------------------------- embed */
static void test_embed(void) {
  int Vs[] = {1000, 50}, Ds[] = {3584, 7}, Ts[] = {1, 7, 300};
  for (int vi = 0; vi < 2; vi++)
    for (int ti = 0; ti < 3; ti++) {
      int V = Vs[vi], D = Ds[vi], T = Ts[ti];
      float *tab = randn((size_t)V * D, 1.0);
      round_mm(tab, (size_t)V * D);
      int32_t *ids = xmalloc(T * sizeof *ids);
      for (int t = 0; t < T; t++) ids[t] = (int32_t)usbx_rng_below(&rng, V);
      ids[T - 1] = V - 1;
      void *dt = dev_mm(tab, (size_t)V * D);
      int32_t *di = dev_i32(ids, T);
      float *dout = be->alloc(be, (size_t)T * D * sizeof(float));
      poison(dout, (size_t)T * D * sizeof(float));
      be->embed(be, dout, dt, di, T, D);
      float *out = get_f32(dout, (size_t)T * D);
      double *ref = xmalloc((size_t)T * D * sizeof *ref);
      for (int t = 0; t < T; t++)
        for (int c = 0; c < D; c++) ref[(size_t)t * D + c] = tab[(size_t)ids[t] * D + c];
      char cas[64];
      snprintf(cas, sizeof cas, "V=%d D=%d T=%d", V, D, T);
      report("embed", cas, relerr(out, ref, (size_t)T * D), 0.0);
      float *oc = xmalloc((size_t)T * D * sizeof *oc);
      cpu->embed(cpu, oc, tab, ids, T, D);
      report("embed vs cpu", cas, relerr_f(out, oc, (size_t)T * D), 0.0);
      free(oc);
      free(tab); free(ids); free(out); free(ref);
      be->free(be, dt); be->free(be, di); be->free(be, dout);
    }
}

/* ---------------------------------------------------------------- norms */
static void test_norm(bool layer) {
  int Rs[] = {1, 7, 300}, Ds[] = {3584, 1152, 7, 13};
  for (int ri = 0; ri < 3; ri++)
    for (int di = 0; di < 4; di++)
      for (int om = 0; om < 2; om++) {
        int R = Rs[ri], D = Ds[di];
        size_t n = (size_t)R * D;
        float *x = randn(n, 2.0), *w = randn(D, 1.0), *b = randn(D, 0.5);
        for (size_t i = 0; i < n; i++) x[i] += 0.3f;   /* non-zero mean */
        float *dx = dev_f32(x, n), *dw = dev_f32(w, D), *db = dev_f32(b, D);
        size_t os = om ? MMS : sizeof(float);
        void *dout = be->alloc(be, n * os);
        poison(dout, n * os);
        if (layer) be->layernorm(be, dout, om, dx, dw, db, R, D, 1e-6f);
        else be->rmsnorm(be, dout, om, dx, dw, R, D, 1e-6f);
        float *out = om ? get_mm(dout, n) : get_f32(dout, n);
        double *ref = xmalloc(n * sizeof *ref);
        for (int r = 0; r < R; r++) {
          const float *xr = x + (size_t)r * D;
          double mean = 0, ss = 0;
          if (layer) { for (int c = 0; c < D; c++) mean += xr[c]; mean /= D; }
          for (int c = 0; c < D; c++) ss += (xr[c] - mean) * (xr[c] - mean);
          double rs = 1.0 / sqrt(ss / D + 1e-6);
          for (int c = 0; c < D; c++)
            ref[(size_t)r * D + c] = layer ? (xr[c] - mean) * rs * w[c] + b[c] : xr[c] * rs * w[c];
        }
        char cas[64];
        snprintf(cas, sizeof cas, "rows=%d dim=%d out=%s", R, D, om ? "mm" : "f32");
        report(layer ? "layernorm" : "rmsnorm", cas, relerr(out, ref, n), om ? 1e-2 : 1e-5);
        float *oc = xmalloc(n * sizeof *oc);
        if (layer) cpu->layernorm(cpu, oc, om, x, w, b, R, D, 1e-6f);
        else cpu->rmsnorm(cpu, oc, om, x, w, R, D, 1e-6f);
        report(layer ? "layernorm vs cpu" : "rmsnorm vs cpu", cas, relerr_f(out, oc, n), om ? 1e-2 : 1e-5);
        free(oc);
        free(x); free(w); free(b); free(out); free(ref);
        be->free(be, dx); be->free(be, dw); be->free(be, db); be->free(be, dout);
      }
}

/* ---------------------------------------------------------------- qk_norm_rope */
static void test_qk_norm_rope(void) {
  struct { int T, heads, d, pad; } cs[] = {{1, 28, 128, 0}, {7, 4, 128, 64}, {300, 28, 128, 0}, {300, 4, 128, 3584},
                                           {5, 3, 72, 8}, {9, 2, 6, 1}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int T = cs[ci].T, Hh = cs[ci].heads, d = cs[ci].d, stride = Hh * d + cs[ci].pad;
    size_t n = (size_t)T * Hh * d, on = (size_t)T * stride;
    float *x = randn(n, 3.0), *w = randn(d, 1.0);
    int32_t *pos = xmalloc(T * sizeof *pos);
    for (int t = 0; t < T; t++) pos[t] = (int32_t)usbx_rng_below(&rng, 5000);
    pos[0] = 4099;
    float *dx = dev_f32(x, n), *dw = dev_f32(w, d);
    int32_t *dp = dev_i32(pos, T);
    void *dout = be->alloc(be, on * MMS);
    poison(dout, on * MMS);
    be->qk_norm_rope(be, dout, stride, dx, dw, dp, T, Hh, d, 1e-6f, 1e6f);
    float *out = get_mm(dout, on);
    double *ref = xmalloc(n * sizeof *ref);
    float *got = xmalloc(n * sizeof *got);
    int pad_ok = 1;
    for (int t = 0; t < T; t++) {
      for (int c = Hh * d; c < stride; c++) pad_ok &= isnan(out[(size_t)t * stride + c]);   /* untouched */
      for (int h = 0; h < Hh; h++) {
        const float *xr = x + ((size_t)t * Hh + h) * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)xr[j] * xr[j];
        double rs = 1.0 / sqrt(ss / d + 1e-6);
        for (int j = 0; j < d / 2; j++) {
          double y1 = xr[j] * rs * w[j], y2 = xr[j + d / 2] * rs * w[j + d / 2];
          double inv = pow(1e6, -2.0 * j / d), ang = pos[t] * inv;
          size_t o = ((size_t)t * Hh + h) * d;
          ref[o + j] = y1 * cos(ang) - y2 * sin(ang);
          ref[o + j + d / 2] = y2 * cos(ang) + y1 * sin(ang);
        }
        memcpy(got + ((size_t)t * Hh + h) * d, out + (size_t)t * stride + (size_t)h * d, d * sizeof(float));
      }
    }
    char cas[80];
    snprintf(cas, sizeof cas, "T=%d heads=%d d=%d stride=%d", T, Hh, d, stride);
    CHECKF(pad_ok, "qk_norm_rope %s wrote outside its rows", cas);
    report("qk_norm_rope", cas, pad_ok ? relerr(got, ref, n) : INFINITY, 1e-2);
    float *oc = xmalloc(on * sizeof *oc);
    for (size_t i = 0; i < on; i++) oc[i] = 0.f;
    cpu->qk_norm_rope(cpu, oc, stride, x, w, pos, T, Hh, d, 1e-6f, 1e6f);
    float *gc = xmalloc(n * sizeof *gc);
    for (int t = 0; t < T; t++) memcpy(gc + (size_t)t * Hh * d, oc + (size_t)t * stride, (size_t)Hh * d * sizeof(float));
    report("qk_norm_rope vs cpu", cas, pad_ok ? relerr_f(got, gc, n) : INFINITY, 1e-2);
    free(oc); free(gc);
    free(x); free(w); free(pos); free(out); free(ref); free(got);
    be->free(be, dx); be->free(be, dw); be->free(be, dp); be->free(be, dout);
  }
}

/* ---------------------------------------------------------------- to_mm, silu_mul, gelu, add */
static void test_to_mm(void) {
  struct { int T, cols, stride; } cs[] = {{1, 3584, 3584}, {7, 13, 20}, {300, 512, 4608}, {3, 128, 131}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int T = cs[ci].T, C = cs[ci].cols, st = cs[ci].stride;
    float *x = randn((size_t)T * C, 2.0);
    float *dx = dev_f32(x, (size_t)T * C);
    void *dout = be->alloc(be, (size_t)T * st * MMS);
    poison(dout, (size_t)T * st * MMS);
    be->to_mm(be, dout, st, dx, T, C);
    float *out = get_mm(dout, (size_t)T * st);
    size_t bad = 0;
    for (int t = 0; t < T; t++)
      for (int c = 0; c < st; c++) {
        float o = out[(size_t)t * st + c];
        if (c >= C) { bad += !isnan(o); continue; }
        float want = x[(size_t)t * C + c];
        if (be->mm_dtype == USBX_BF16) want = usbx_bf16_to_f32(usbx_f32_to_bf16(want));
        bad += o != want;
      }
    char cas[80];
    snprintf(cas, sizeof cas, "T=%d cols=%d stride=%d (%zu differ)", T, C, st, bad);
    report("to_mm", cas, bad ? 1.0 : 0.0, 0.0);
    free(x); free(out); be->free(be, dx); be->free(be, dout);
  }
}
static void test_act(int which) {   /* 0 silu_mul, 1 gelu_tanh, 2 add */
  struct { int T, F; } cs[] = {{1, 18944}, {7, 13}, {300, 18944}, {1, 1}, {3, 4305}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int T = cs[ci].T, F = cs[ci].F;
    size_t n = (size_t)T * F;
    float *a = randn(n, 3.0), *b = randn(n, 1.0);
    float *da = dev_f32(a, n), *db = dev_f32(b, n);
    void *dout = NULL;
    float *out;
    if (which < 2) {
      dout = be->alloc(be, n * MMS);
      poison(dout, n * MMS);
      if (which == 0) be->silu_mul(be, dout, da, db, T, F);
      else be->gelu_tanh(be, dout, da, n);
      out = get_mm(dout, n);
    } else {
      be->add(be, da, db, n);
      out = get_f32(da, n);
    }
    double *ref = xmalloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++) {
      double x = a[i];
      if (which == 0) ref[i] = x / (1 + exp(-x)) * b[i];
      else if (which == 1) ref[i] = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
      else ref[i] = (double)a[i] + b[i];
    }
    char cas[64];
    snprintf(cas, sizeof cas, "T=%d F=%d", T, F);
    report(which == 0 ? "silu_mul" : which == 1 ? "gelu_tanh" : "add", cas, relerr(out, ref, n), which == 2 ? 1e-6 : 1e-2);
    float *oc = xmalloc(n * sizeof *oc);
    if (which == 0) cpu->silu_mul(cpu, oc, a, b, T, F);
    else if (which == 1) cpu->gelu_tanh(cpu, oc, a, n);
    else { memcpy(oc, a, n * sizeof *oc); cpu->add(cpu, oc, b, n); }
    report(which == 0 ? "silu_mul vs cpu" : which == 1 ? "gelu_tanh vs cpu" : "add vs cpu", cas, relerr_f(out, oc, n),
           which == 2 ? 1e-6 : 1e-2);
    if (which == 0) {   /* silu_mul_mm: gate/up in mm; against the CPU on the same rounded inputs */
      round_mm(a, n); round_mm(b, n);
      void *am = dev_mm(a, n), *bm = dev_mm(b, n);
      poison(dout, n * MMS);
      be->silu_mul_mm(be, dout, am, bm, T, F);
      free(out);
      out = get_mm(dout, n);
      cpu->silu_mul(cpu, oc, a, b, T, F);
      report("silu_mul_mm vs cpu", cas, relerr_f(out, oc, n), 4e-3);
      be->free(be, am); be->free(be, bm);
    }
    free(oc);
    free(a); free(b); free(out); free(ref);
    be->free(be, da); be->free(be, db); be->free(be, dout);
  }
}

/* the MLP gate|up tests' inputs: x [M,K] and w [2F,K] (gate rows, then up rows), random and exact
 * in bf16; and their references: ref = float64 silu(x·gᵀ)·(x·uᵀ), oc = the CPU's matmul + silu_mul */
static void gate_up_case(int M, int F, int K, float **x, float **w) {
  *x = randn((size_t)M * K, 1.0);
  *w = randn((size_t)2 * F * K, 1.0 / sqrt((double)K));
  for (size_t i = 0; i < (size_t)M * K; i++) (*x)[i] = usbx_bf16_to_f32(usbx_f32_to_bf16((*x)[i]));
  for (size_t i = 0; i < (size_t)2 * F * K; i++) (*w)[i] = usbx_bf16_to_f32(usbx_f32_to_bf16((*w)[i]));
}
static void gate_up_refs(const float *x, const float *w, int M, int F, int K, double **ref, float **oc) {
  size_t n = (size_t)M * F;
  *ref = xmalloc(n * sizeof **ref);
  *oc = xmalloc(n * sizeof **oc);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < F; j++) {
      double a = 0, b = 0;
      for (int k = 0; k < K; k++) { a += (double)x[(size_t)i * K + k] * w[(size_t)j * K + k]; b += (double)x[(size_t)i * K + k] * w[(size_t)(F + j) * K + k]; }
      (*ref)[(size_t)i * F + j] = a / (1 + exp(-a)) * b;
    }
  float *g = xmalloc(n * sizeof *g), *u = xmalloc(n * sizeof *u);
  cpu->matmul(cpu, g, x, w, NULL, M, F, K, false);
  cpu->matmul(cpu, u, x, w + (size_t)F * K, NULL, M, F, K, false);
  cpu->silu_mul(cpu, *oc, g, u, M, F);
  free(g); free(u);
}

/* matmul_mm + silu_mul_gu (the MLP's gate|up product in mm) against float64 and the CPU's
 * matmul + silu_mul */
static void test_gate_up(void) {
  if (!be->silu_mul_gu) return;
  struct { int M, F, K; } cs[] = {{2, 64, 32}, {300, 512, 256}, {1000, 1000, 3584}, {1026, 2048, 128}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int M = cs[ci].M, F = cs[ci].F, K = cs[ci].K;
    float *x, *w;
    gate_up_case(M, F, K, &x, &w);
    void *dx = dev_mm(x, (size_t)M * K), *dw = dev_mm(w, (size_t)2 * F * K);
    void *gu = be->alloc(be, (size_t)M * 2 * F * MMS), *dout = be->alloc(be, (size_t)M * F * MMS);
    poison(dout, (size_t)M * F * MMS);
    be->matmul_mm(be, gu, dx, dw, M, 2 * F, K);
    be->silu_mul_gu(be, dout, gu, M, F);
    float *out = get_mm(dout, (size_t)M * F), *oc;
    double *ref;
    gate_up_refs(x, w, M, F, K, &ref, &oc);
    char cas[64];
    snprintf(cas, sizeof cas, "M=%d F=%d K=%d", M, F, K);
    report("matmul_mm+silu_mul_gu", cas, relerr(out, ref, (size_t)M * F), 1e-2);
    report("matmul_mm+silu_mul_gu vs cpu", cas, relerr_f(out, oc, (size_t)M * F), 1e-2);
    free(x); free(w); free(out); free(ref); free(oc);
    be->free(be, dx); be->free(be, dw); be->free(be, gu); be->free(be, dout);
  }
}

/* gate_up_silu (the MLP's gate|up product with SiLU·up in its epilogue) against float64 and the
 * CPU's matmul + silu_mul on the same bf16 inputs: they differ by the output's one rounding and the
 * order of the sums.  Rows past T must stay untouched; a shape the op does not take must leave out
 * as it was and return false.  Cases: row tiles cut short (to 44 rows: the second warpgroup's TMA
 * store lies wholly past the end; to 84 rows: partly), K not a multiple of the 64-column stage,
 * more tiles than multiprocessors (blocks run several, the stage ring wraps, more than one group
 * of 16 row tiles), K = 3584. */
static void test_gate_up_silu(void) {
  if (!be->gate_up_silu) return;
  struct { int M, F, K; bool taken; } cs[] = {{128, 128, 64, true}, {300, 512, 200, true}, {2132, 1280, 256, true},
                                              {256, 1024, 3584, true}, {100, 512, 256, false}, {256, 200, 256, false}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int M = cs[ci].M, F = cs[ci].F, K = cs[ci].K, pad = 8;
    float *x, *w;
    gate_up_case(M, F, K, &x, &w);
    void *dx = dev_mm(x, (size_t)M * K), *dwg = dev_mm(w, (size_t)F * K), *dwu = dev_mm(w + (size_t)F * K, (size_t)F * K);
    size_t n = (size_t)M * F, all = (size_t)(M + pad) * F;
    void *dout = be->alloc(be, all * MMS);
    poison(dout, all * MMS);
    bool taken = be->gate_up_silu(be, dout, dx, dwg, dwu, M, F, K);
    char cas[64];
    snprintf(cas, sizeof cas, "M=%d F=%d K=%d", M, F, K);
    CHECKF(taken == cs[ci].taken, "%s: gate_up_silu returned %d", cas, (int)taken);
    uint16_t *raw = xmalloc(all * MMS);
    be->download(be, raw, dout, all * MMS);
    size_t first = taken ? n : 0, stray = 0;   /* values past `first` must still hold the poison */
    for (size_t i = first; i < all; i++) stray += raw[i] != 0xffff;
    report("gate_up_silu untouched", cas, (double)stray, 0.0);
    if (taken) {
      float *out = get_mm(dout, n), *oc;
      double *ref;
      gate_up_refs(x, w, M, F, K, &ref, &oc);
      report("gate_up_silu", cas, relerr(out, ref, n), 4e-3);
      report("gate_up_silu vs cpu", cas, relerr_f(out, oc, n), 4e-3);
      free(out); free(ref); free(oc);
    }
    free(raw); free(x); free(w);
    be->free(be, dx); be->free(be, dwg); be->free(be, dwu); be->free(be, dout);
  }
}

/* ---------------------------------------------------------------- scatter / gather */
static void test_rows(void) {
  int ns[] = {1, 7, 300}, cols_[] = {3584, 13};
  for (int ni = 0; ni < 3; ni++)
    for (int ci = 0; ci < 2; ci++) {
      int n = ns[ni], C = cols_[ci], big = n * 2 + 5;
      /* distinct destination rows: a shuffled prefix of 0..big-1 */
      int32_t *perm = xmalloc(big * sizeof *perm);
      for (int i = 0; i < big; i++) perm[i] = i;
      for (int i = big - 1; i > 0; i--) { int j = (int)usbx_rng_below(&rng, i + 1); int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
      float *src = randn((size_t)n * C, 1.0), *dst0 = randn((size_t)big * C, 1.0);
      float *dsrc = dev_f32(src, (size_t)n * C), *ddst = dev_f32(dst0, (size_t)big * C);
      int32_t *didx = dev_i32(perm, n);
      be->scatter_rows(be, ddst, dsrc, didx, n, C);
      float *out = get_f32(ddst, (size_t)big * C);
      double *ref = xmalloc((size_t)big * C * sizeof *ref);
      for (size_t i = 0; i < (size_t)big * C; i++) ref[i] = dst0[i];
      for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) ref[(size_t)perm[i] * C + c] = src[(size_t)i * C + c];
      char cas[64];
      snprintf(cas, sizeof cas, "n=%d cols=%d into %d rows", n, C, big);
      report("scatter_rows", cas, relerr(out, ref, (size_t)big * C), 0.0);
      /* gather back: dst[i] = table[perm[i]] */
      float *dg = be->alloc(be, (size_t)n * C * sizeof(float));
      poison(dg, (size_t)n * C * sizeof(float));
      be->gather_rows(be, dg, ddst, didx, n, C);
      float *g = get_f32(dg, (size_t)n * C);
      double *gref = xmalloc((size_t)n * C * sizeof *gref);
      for (size_t i = 0; i < (size_t)n * C; i++) gref[i] = src[i];
      report("gather_rows", cas, relerr(g, gref, (size_t)n * C), 0.0);
      free(perm); free(src); free(dst0); free(out); free(ref); free(g); free(gref);
      be->free(be, dsrc); be->free(be, ddst); be->free(be, didx); be->free(be, dg);
    }
}

/* ---------------------------------------------------------------- argmax */
static void test_argmax(void) {
  struct { int rows, n; } cs[] = {{1, 152064}, {7, 1000}, {3, 33}, {2, 1}, {300, 517}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int R = cs[ci].rows, n = cs[ci].n;
    float *x = randn((size_t)R * n, 1.0);
    int32_t *want = xmalloc(R * sizeof *want);
    for (int r = 0; r < R; r++) {
      float *xr = x + (size_t)r * n;
      if (n > 3 && r % 2 == 0) {    /* plant a tie: the max value at two places */
        int a = (int)usbx_rng_below(&rng, n), b = (int)usbx_rng_below(&rng, n);
        xr[a] = xr[b] = 10.f;
      }
      int bi = 0;
      for (int i = 1; i < n; i++) if (xr[i] > xr[bi]) bi = i;
      want[r] = bi;
    }
    float *dx = dev_f32(x, (size_t)R * n);
    int32_t *di = be->alloc(be, R * sizeof(int32_t));
    poison(di, R * sizeof(int32_t));
    be->argmax(be, di, dx, R, n);
    int32_t *got = xmalloc(R * sizeof *got);
    be->download(be, got, di, R * sizeof *got);
    int bad = 0;
    for (int r = 0; r < R; r++) bad += got[r] != want[r];
    char cas[64];
    snprintf(cas, sizeof cas, "rows=%d n=%d (%d wrong)", R, n, bad);
    report("argmax", cas, bad ? 1.0 : 0.0, 0.0);
    int32_t *gc = xmalloc(R * sizeof *gc);
    cpu->argmax(cpu, gc, x, R, n);
    int badc = 0;
    for (int r = 0; r < R; r++) badc += got[r] != gc[r];
    report("argmax vs cpu", cas, badc ? 1.0 : 0.0, 0.0);
    free(gc);
    free(x); free(want); free(got); be->free(be, dx); be->free(be, di);
  }
}

/* ---------------------------------------------------------------- attention */
static const char *attn_tag = "";   /* the kernel variant under test, in the case names */
static int set_opt(const char *name, int v);
static void test_attention_case(int n_q, int q_start, int kv_len, int H, int Hkv, int d, bool causal, int max_check) {
  size_t nq = (size_t)n_q * H * d, nk = (size_t)kv_len * Hkv * d;
  float *q = randn(nq, 1.0), *k = randn(nk, 1.0), *v = randn(nk, 1.0);
  round_mm(q, nq); round_mm(k, nk); round_mm(v, nk);
  void *dq = dev_mm(q, nq), *dk = dev_mm(k, nk), *dv = dev_mm(v, nk);
  void *dout = be->alloc(be, nq * MMS);
  poison(dout, nq * MMS);
  usbx_attn_args a = {n_q, q_start, kv_len, H, Hkv, d, causal};
  be->attention(be, dout, dq, dk, dv, &a);
  float *out = get_mm(dout, nq);
  /* reference on a sample of query rows (all of them when n_q <= max_check) */
  int step = n_q <= max_check ? 1 : n_q / max_check + 1;
  size_t cap = (size_t)((n_q + step - 1) / step + 2) * H * d, m = 0;
  double *ref = xmalloc(cap * sizeof *ref);
  float *got = xmalloc(cap * sizeof *got);
  double *sc = xmalloc(kv_len * sizeof *sc);
  double scale = 1.0 / sqrt((double)d);
  for (int i = 0; i < n_q; i++) {
    if (i % step && i != n_q - 1) continue;
    int lim = causal ? q_start + i + 1 : q_start + n_q;
    if (lim > kv_len) lim = kv_len;
    for (int h = 0; h < H; h++) {
      int g = h / (H / Hkv);
      const float *qr = q + ((size_t)i * H + h) * d;
      double mx = -INFINITY, l = 0;
      for (int j = 0; j < lim; j++) {
        const float *kr = k + ((size_t)j * Hkv + g) * d;
        double s = 0;
        for (int c = 0; c < d; c++) s += (double)qr[c] * kr[c];
        sc[j] = s * scale;
        if (sc[j] > mx) mx = sc[j];
      }
      for (int j = 0; j < lim; j++) { sc[j] = exp(sc[j] - mx); l += sc[j]; }
      for (int c = 0; c < d; c++) {
        double o = 0;
        for (int j = 0; j < lim; j++) o += sc[j] * v[((size_t)j * Hkv + g) * d + c];
        ref[m] = o / l;
        got[m] = out[((size_t)i * H + h) * d + c];
        m++;
      }
    }
  }
  /* every element written (poison is NaN) */
  size_t unwritten = 0;
  for (size_t i = 0; i < nq; i++) unwritten += !isfinite(out[i]);
  char cas[112];
  snprintf(cas, sizeof cas, "n_q=%d q_start=%d kv=%d H=%d/%d d=%d %s%s%s", n_q, q_start, kv_len, H, Hkv, d,
           causal ? "causal" : "block", step > 1 ? " (rows sampled)" : "", attn_tag);
  CHECKF(unwritten == 0, "attention %s: %zu elements not written", cas, unwritten);
  report("attention", cas, unwritten ? INFINITY : relerr(got, ref, m), 1e-2);
  float *oc = xmalloc(nq * sizeof *oc);
  cpu->attention(cpu, oc, q, k, v, &a);
  report("attention vs cpu", cas, unwritten ? INFINITY : relerr_f(out, oc, nq), 1e-2);
  free(oc);
  free(q); free(k); free(v); free(out); free(ref); free(got); free(sc);
  be->free(be, dq); be->free(be, dk); be->free(be, dv); be->free(be, dout);
}
static void test_attention(void) {
  test_attention_case(1, 1000, 1001, 28, 4, 128, true, 64);      /* decode (split keys) */
  test_attention_case(1, 0, 1, 28, 4, 128, true, 64);            /* first token */
  test_attention_case(1, 37, 200, 28, 4, 128, true, 64);         /* cache longer than visible */
  test_attention_case(7, 5, 12, 4, 2, 64, true, 64);
  test_attention_case(7, 0, 7, 28, 4, 128, false, 64);
  test_attention_case(300, 0, 300, 28, 4, 128, true, 300);
  test_attention_case(300, 30, 330, 28, 4, 128, false, 300);
  test_attention_case(300, 30, 330, 28, 4, 128, true, 300);
  test_attention_case(1000, 29, 1029, 28, 4, 128, false, 40);
  test_attention_case(1026, 1100, 2126, 28, 4, 128, false, 40);  /* generated image after context */
  test_attention_case(300, 0, 300, 16, 16, 72, false, 300);      /* ViT: SigLIP head dim 72 */
  test_attention_case(65, 3, 68, 6, 3, 40, true, 65);
  test_attention_case(130, 70, 260, 8, 2, 96, false, 130);       /* d = 96; cache longer than visible */
  test_attention_case(2, 4000, 4002, 28, 4, 128, true, 2);       /* decode of 2 tokens, many splits */
  test_attention_case(33, 2, 35, 4, 1, 20, true, 33);            /* d not a multiple of 8: fallback */
  test_attention_case(5, 1, 6, 2, 2, 136, false, 5);             /* d > 128: fallback */
  test_attention_case(300, 0, 300, 1, 1, 512, false, 60);        /* VAE mid-block: 1 head of 512 channels */
  test_attention_case(20, 3, 23, 2, 1, 264, true, 20);
  /* the Hopper (wgmma) kernels, forced: 2 and 3 warpgroups per block, and TMA with a producer
   * warp (on other GPUs the launcher falls back to the mma.sync kernels, which these cases then
   * test again) */
  static const char *tags[] = {" [wgmma, 2 warpgroups]", " [wgmma, 3 warpgroups]", " [wgmma, TMA producer]"};
  for (int w = 0; w < 3; w++) {
    int old = set_opt("attn_variant", 6 + w);
    if (old < 0) break;
    attn_tag = tags[w];
    test_attention_case(7, 0, 7, 28, 4, 128, false, 64);
    test_attention_case(300, 0, 300, 28, 4, 128, true, 300);
    test_attention_case(300, 30, 330, 28, 4, 128, false, 300);
    test_attention_case(300, 30, 330, 28, 4, 128, true, 300);
    test_attention_case(1000, 29, 1029, 28, 4, 128, false, 40);
    test_attention_case(1026, 1100, 2126, 28, 4, 128, false, 40);
    test_attention_case(4098, 30, 4128, 28, 4, 128, false, 12);   /* 1024x1024 image block */
    test_attention_case(200, 57, 300, 4, 4, 128, true, 200);      /* one query head per KV head */
    test_attention_case(129, 0, 129, 2, 1, 128, false, 129);
    test_attention_case(2, 4000, 4002, 28, 4, 128, true, 2);
    set_opt("attn_variant", old);
    attn_tag = "";
  }
}

/* ---------------------------------------------------------------- add_row, silu */
static void test_add_row_silu(void) {
  struct { int T, D; } cs[] = {{1, 3584}, {7, 13}, {300, 1152}, {5, 4}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int T = cs[ci].T, D = cs[ci].D;
    size_t n = (size_t)T * D;
    float *x = randn(n, 1.0), *row = randn(D, 1.0);
    float *dx = dev_f32(x, n), *drow = dev_f32(row, D);
    be->add_row(be, dx, drow, T, D);
    float *out = get_f32(dx, n);
    double *ref = xmalloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++) ref[i] = (double)x[i] + row[i % D];
    char cas[64];
    snprintf(cas, sizeof cas, "T=%d D=%d", T, D);
    report("add_row", cas, relerr(out, ref, n), 1e-6);
    /* silu, f32 out */
    float *dsl = be->alloc(be, n * sizeof(float));
    poison(dsl, n * sizeof(float));
    be->silu(be, dsl, dx, n);
    float *sl = get_f32(dsl, n);
    for (size_t i = 0; i < n; i++) ref[i] = out[i] / (1 + exp(-(double)out[i]));
    snprintf(cas, sizeof cas, "n=%zu", n);
    report("silu", cas, relerr(sl, ref, n), 1e-6);
    float *oc = xmalloc(n * sizeof *oc);
    cpu->silu(cpu, oc, out, n);
    report("silu vs cpu", cas, relerr_f(sl, oc, n), 1e-6);
    free(x); free(row); free(out); free(ref); free(sl); free(oc);
    be->free(be, dx); be->free(be, drow); be->free(be, dsl);
  }
}

/* ---------------------------------------------------------------- cfg_euler (vs the CPU backend) */
static void test_cfg_euler(void) {
  struct { int N, P; float ct, ci; usbx_renorm rn; bool has_vu, has_vi; } cs[] = {
      {4096, 64, 4.f, 1.f, USBX_RENORM_GLOBAL, true, false},     /* UniSandBox T2I default */
      {4096, 64, 4.f, 2.f, USBX_RENORM_GLOBAL, true, true},
      {4096, 64, 4.f, 2.f, USBX_RENORM_TEXT_CHANNEL, true, true},
      {4096, 64, 4.f, 2.f, USBX_RENORM_CHANNEL, true, true},
      {7, 13, 3.f, 1.5f, USBX_RENORM_CHANNEL, true, true},
      {7, 13, 3.f, 1.f, USBX_RENORM_TEXT_CHANNEL, true, false},
      {300, 64, 1.f, 1.f, USBX_RENORM_GLOBAL, true, true},          /* no CFG (scale <= 1) */
      {300, 64, 4.f, 1.f, USBX_RENORM_GLOBAL, false, false},        /* no unconditional branch */
  };
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int N = cs[ci].N, P = cs[ci].P;
    size_t n = (size_t)N * P;
    usbx_cfg_args a = {N, P, cs[ci].ct, cs[ci].ci, 0.3f, 0.02f, cs[ci].rn};
    float *x = randn(n, 1.0), *vc = randn(n, 1.0), *vu = randn(n, 1.0), *vi = randn(n, 1.0);
    float *dx = dev_f32(x, n), *dvc = dev_f32(vc, n);
    float *dvu = cs[ci].has_vu ? dev_f32(vu, n) : NULL, *dvi = cs[ci].has_vi ? dev_f32(vi, n) : NULL;
    float *dv = be->alloc(be, n * sizeof(float));
    poison(dv, n * sizeof(float));
    be->cfg_euler(be, dx, dv, dvc, dvu, dvi, &a);
    float *gx = get_f32(dx, n), *gv = get_f32(dv, n);
    float *cx = xmalloc(n * sizeof *cx), *cv = xmalloc(n * sizeof *cv);
    memcpy(cx, x, n * sizeof *cx);
    cpu->cfg_euler(cpu, cx, cv, vc, cs[ci].has_vu ? vu : NULL, cs[ci].has_vi ? vi : NULL, &a);
    char cas[96];
    snprintf(cas, sizeof cas, "N=%d P=%d text=%g img=%g renorm=%d%s%s", N, P, cs[ci].ct, cs[ci].ci, (int)cs[ci].rn,
             cs[ci].has_vu ? "" : " no-vu", cs[ci].has_vi ? "" : " no-vi");
    report("cfg_euler v vs cpu", cas, relerr_f(gv, cv, n), 1e-5);
    report("cfg_euler x vs cpu", cas, relerr_f(gx, cx, n), 1e-6);
    free(x); free(vc); free(vu); free(vi); free(gx); free(gv); free(cx); free(cv);
    be->free(be, dx); be->free(be, dvc); be->free(be, dvu); be->free(be, dvi); be->free(be, dv);
  }
}

/* ---------------------------------------------------------------- VAE image ops (vs the CPU backend) */
static void test_im2col(void) {
  usbx_im2col_args cs[] = {{9, 9, 5, 3, 1, 1, 1, 1, 1}, {8, 6, 16, 3, 2, 0, 0, 1, 1}, {7, 5, 7, 1, 1, 0, 0, 0, 0},
                           {32, 32, 128, 3, 1, 1, 1, 1, 1}, {13, 11, 3, 3, 1, 1, 1, 1, 1}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    usbx_im2col_args a = cs[ci];
    int Ho = (a.H + a.pad_t + a.pad_b - a.k) / a.stride + 1, Wo = (a.W + a.pad_l + a.pad_r - a.k) / a.stride + 1;
    size_t nin = (size_t)a.H * a.W * a.C, nout = (size_t)Ho * Wo * a.C * a.k * a.k;
    float *x = randn(nin, 1.0);
    float *dx = dev_f32(x, nin);
    void *dout = be->alloc(be, nout * MMS);
    poison(dout, nout * MMS);
    be->im2col(be, dout, dx, &a);
    float *out = get_mm(dout, nout), *oc = xmalloc(nout * sizeof *oc);
    cpu->im2col(cpu, oc, x, &a);
    size_t bad = 0;
    for (size_t i = 0; i < nout; i++) {
      float want = be->mm_dtype == USBX_BF16 ? usbx_bf16_to_f32(usbx_f32_to_bf16(oc[i])) : oc[i];
      bad += !(out[i] == want);
    }
    char cas[96];
    snprintf(cas, sizeof cas, "%dx%dx%d k=%d s=%d pad=%d,%d,%d,%d (%zu differ)", a.H, a.W, a.C, a.k, a.stride, a.pad_t, a.pad_l,
             a.pad_b, a.pad_r, bad);
    report("im2col vs cpu", cas, bad ? 1.0 : 0.0, 0.0);
    free(x); free(out); free(oc); be->free(be, dx); be->free(be, dout);
  }
}
static void test_group_norm(void) {
  struct { int HW, C, groups; bool silu, alias; } cs[] = {{1000, 128, 32, true, false}, {1000, 128, 32, false, true},
                                                          {7, 6, 3, true, true}, {4096, 512, 32, true, false},
                                                          {300, 96, 32, false, false}, {17, 3, 1, false, false}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int HW = cs[ci].HW, C = cs[ci].C, G = cs[ci].groups;
    size_t n = (size_t)HW * C;
    float *x = randn(n, 2.0), *w = randn(C, 1.0), *b = randn(C, 0.5);
    for (size_t i = 0; i < n; i++) x[i] += 0.7f;
    float *dx = dev_f32(x, n), *dw = dev_f32(w, C), *db = dev_f32(b, C);
    float *dout = cs[ci].alias ? dx : be->alloc(be, n * sizeof(float));
    if (!cs[ci].alias) poison(dout, n * sizeof(float));
    be->group_norm(be, dout, dx, dw, db, HW, C, G, 1e-6f, cs[ci].silu);
    float *out = get_f32(dout, n), *oc = xmalloc(n * sizeof *oc);
    cpu->group_norm(cpu, oc, x, w, b, HW, C, G, 1e-6f, cs[ci].silu);
    char cas[96];
    snprintf(cas, sizeof cas, "HW=%d C=%d groups=%d%s%s", HW, C, G, cs[ci].silu ? " +silu" : "", cs[ci].alias ? " in place" : "");
    report("group_norm vs cpu", cas, relerr_f(out, oc, n), 1e-5);
    free(x); free(w); free(b); free(out); free(oc);
    be->free(be, dx); be->free(be, dw); be->free(be, db);
    if (!cs[ci].alias) be->free(be, dout);
  }
}
static void test_upsample2x(void) {
  struct { int H, W, C; } cs[] = {{5, 7, 3}, {16, 16, 128}, {1, 1, 1}, {9, 4, 6}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int H = cs[ci].H, W = cs[ci].W, C = cs[ci].C;
    size_t nin = (size_t)H * W * C, nout = 4 * nin;
    float *x = randn(nin, 1.0);
    float *dx = dev_f32(x, nin), *dout = be->alloc(be, nout * sizeof(float));
    poison(dout, nout * sizeof(float));
    be->upsample2x(be, dout, dx, H, W, C);
    float *out = get_f32(dout, nout), *oc = xmalloc(nout * sizeof *oc);
    cpu->upsample2x(cpu, oc, x, H, W, C);
    char cas[64];
    snprintf(cas, sizeof cas, "%dx%dx%d", H, W, C);
    report("upsample2x vs cpu", cas, relerr_f(out, oc, nout), 0.0);
    free(x); free(out); free(oc); be->free(be, dx); be->free(be, dout);
  }
}

/* ---------------------------------------------------------------- fp32 ops of the autoencoder */
static int set_opt(const char *name, int v) {   /* CUDA option; -1 when not applicable */
#if defined(USBX_HAVE_CUDA) && !defined(USBX_TEST_OPS_ON_CPU)
  return usbx_cuda_set_option(be, name, v);
#else
  (void)name; (void)v;
  return -1;
#endif
}
/* mode: the CUDA option "f32_mode" (0 fp32, 1 TF32, 2 bf16x3, 3 auto); set for the call, where
 * the option exists */
static void test_matmul_f32_case(int M, int N, int K, bool bias, bool acc, int mode) {
  int old = set_opt("f32_mode", mode);
  if (old < 0) return;
  float *x = randn((size_t)M * K, 1.0), *w = randn((size_t)N * K, 1.0 / sqrt(K));   /* full fp32 values */
  float *b = bias ? randn(N, 1.0) : NULL, *y0 = randn((size_t)M * N, 1.0);
  float *dx = dev_f32(x, (size_t)M * K), *dw = dev_f32(w, (size_t)N * K), *db = bias ? dev_f32(b, N) : NULL;
  float *dy = be->alloc(be, (size_t)M * N * sizeof(float));
  if (acc) be->upload(be, dy, y0, (size_t)M * N * sizeof(float));
  else poison(dy, (size_t)M * N * sizeof(float));
  be->matmul_f32(be, dy, dx, dw, db, M, N, K, acc);
  set_opt("f32_mode", old);
  float *y = get_f32(dy, (size_t)M * N);
  double *ref = xmalloc((size_t)M * N * sizeof *ref);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = 0;
      const float *xr = x + (size_t)m * K, *wr = w + (size_t)n * K;
      for (int k = 0; k < K; k++) s += (double)xr[k] * wr[k];
      if (bias) s += b[n];
      if (acc) s += y0[(size_t)m * N + n];
      ref[(size_t)m * N + n] = s;
    }
  char cas[96];
  snprintf(cas, sizeof cas, "M=%d N=%d K=%d%s%s", M, N, K, bias ? " bias" : "", acc ? " accumulate" : "");
  /* fp32: ~1e-6; TF32 (10-bit mantissa operands): ~3e-4, loose bound; bf16x3: ~1e-5; auto
   * (the default): bf16x3 at N >= 256 */
  static const char *names[] = {"matmul_f32 (fp32)", "matmul_f32 (tf32 option)", "matmul_f32 (bf16x3 option)", "matmul_f32 (auto, default)"};
  static const double tols[] = {1e-5, 2e-3, 1e-4, 1e-4};
  report(names[mode], cas, relerr(y, ref, (size_t)M * N), tols[mode]);
  free(x); free(w); free(b); free(y0); free(y); free(ref);
  be->free(be, dx); be->free(be, dw); be->free(be, db); be->free(be, dy);
}
static void test_matmul_f32(void) {
  test_matmul_f32_case(7, 13, 33, true, false, 0);
  test_matmul_f32_case(300, 101, 203, true, true, 0);
  test_matmul_f32_case(1, 64, 100, false, false, 0);
  test_matmul_f32_case(4096, 128, 1152, true, false, 0);    /* VAE conv 3x3, 128 channels */
  test_matmul_f32_case(1024, 512, 4608, true, false, 0);    /* VAE conv 3x3, 512 channels */
  test_matmul_f32_case(1024, 512, 512, true, true, 0);      /* proj_out + residual */
  test_matmul_f32_case(4096, 128, 1152, true, false, 1);
  test_matmul_f32_case(7, 13, 33, true, false, 2);
  test_matmul_f32_case(3, 64, 96, false, true, 2);
  test_matmul_f32_case(300, 101, 203, true, true, 2);
  test_matmul_f32_case(4096, 128, 1152, true, false, 2);
  test_matmul_f32_case(1024, 512, 4608, true, false, 2);
  test_matmul_f32_case(1024, 512, 512, true, true, 2);
  test_matmul_f32_case(4096, 128, 1152, true, false, 3);
  test_matmul_f32_case(1024, 512, 4608, true, false, 3);
  test_matmul_f32_case(1024, 512, 512, true, true, 3);
}
static void test_im2col_f32(void) {
  usbx_im2col_args cs[] = {{9, 9, 5, 3, 1, 1, 1, 1, 1}, {8, 6, 16, 3, 2, 0, 0, 1, 1}, {32, 32, 128, 3, 1, 1, 1, 1, 1},
                           {13, 11, 3, 3, 1, 0, 1, 2, 1}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    usbx_im2col_args a = cs[ci];
    int Ho = (a.H + a.pad_t + a.pad_b - a.k) / a.stride + 1, Wo = (a.W + a.pad_l + a.pad_r - a.k) / a.stride + 1;
    size_t nin = (size_t)a.H * a.W * a.C, nout = (size_t)Ho * Wo * a.C * a.k * a.k;
    float *x = randn(nin, 1.0);
    float *dx = dev_f32(x, nin), *dout = be->alloc(be, nout * sizeof(float));
    poison(dout, nout * sizeof(float));
    be->im2col_f32(be, dout, dx, &a);
    float *out = get_f32(dout, nout), *oc = xmalloc(nout * sizeof *oc);
    cpu->im2col_f32(cpu, oc, x, &a);
    size_t bad = 0;
    for (size_t i = 0; i < nout; i++) bad += !(out[i] == oc[i]);
    char cas[96];
    snprintf(cas, sizeof cas, "%dx%dx%d k=%d s=%d pad=%d,%d,%d,%d (%zu differ)", a.H, a.W, a.C, a.k, a.stride, a.pad_t, a.pad_l,
             a.pad_b, a.pad_r, bad);
    report("im2col_f32 vs cpu", cas, bad ? 1.0 : 0.0, 0.0);
    free(x); free(out); free(oc); be->free(be, dx); be->free(be, dout);
  }
}
static void test_attention_f32_case(int n_q, int q_start, int kv_len, int H, int Hkv, int d, bool causal, double scale) {
  size_t nq = (size_t)n_q * H * d, nk = (size_t)kv_len * Hkv * d;
  float *q = randn(nq, scale), *k = randn(nk, scale), *v = randn(nk, 1.0);
  float *dq = dev_f32(q, nq), *dk = dev_f32(k, nk), *dv = dev_f32(v, nk), *dout = be->alloc(be, nq * sizeof(float));
  poison(dout, nq * sizeof(float));
  usbx_attn_args a = {n_q, q_start, kv_len, H, Hkv, d, causal};
  be->attention_f32(be, dout, dq, dk, dv, &a);
  float *out = get_f32(dout, nq), *oc = xmalloc(nq * sizeof *oc);
  cpu->attention_f32(cpu, oc, q, k, v, &a);
  /* float64 reference on a few rows */
  double *ref = xmalloc((size_t)8 * H * d * sizeof *ref), *sc = xmalloc(kv_len * sizeof *sc);
  float *got = xmalloc((size_t)8 * H * d * sizeof *got);
  size_t m = 0;
  for (int s = 0; s < 8; s++) {
    int i = (int)((long)s * (n_q - 1) / 7);
    if (s && i == (int)((long)(s - 1) * (n_q - 1) / 7)) continue;
    int lim = causal ? q_start + i + 1 : q_start + n_q;
    if (lim > kv_len) lim = kv_len;
    for (int h = 0; h < H; h++) {
      int g = h / (H / Hkv);
      double mx = -INFINITY, l = 0;
      for (int j = 0; j < lim; j++) {
        double t = 0;
        for (int c = 0; c < d; c++) t += (double)q[((size_t)i * H + h) * d + c] * k[((size_t)j * Hkv + g) * d + c];
        sc[j] = t / sqrt((double)d);
        if (sc[j] > mx) mx = sc[j];
      }
      for (int j = 0; j < lim; j++) { sc[j] = exp(sc[j] - mx); l += sc[j]; }
      for (int c = 0; c < d; c++) {
        double o = 0;
        for (int j = 0; j < lim; j++) o += sc[j] * v[((size_t)j * Hkv + g) * d + c];
        ref[m] = o / l;
        got[m++] = out[((size_t)i * H + h) * d + c];
      }
    }
  }
  char cas[112];
  snprintf(cas, sizeof cas, "n_q=%d q_start=%d kv=%d H=%d/%d d=%d %s", n_q, q_start, kv_len, H, Hkv, d, causal ? "causal" : "block");
  report("attention_f32", cas, relerr(got, ref, m), 1e-5);
  report("attention_f32 vs cpu", cas, relerr_f(out, oc, nq), 1e-5);
  free(q); free(k); free(v); free(out); free(oc); free(ref); free(sc); free(got);
  be->free(be, dq); be->free(be, dk); be->free(be, dv); be->free(be, dout);
}
static void test_attention_f32(void) {
  test_attention_f32_case(4096, 0, 4096, 1, 1, 512, false, 0.3);   /* VAE mid block at 512x512 */
  test_attention_f32_case(300, 0, 300, 1, 1, 512, false, 1.0);
  test_attention_f32_case(65, 3, 68, 6, 3, 40, true, 1.0);
  test_attention_f32_case(130, 70, 260, 8, 2, 96, false, 1.0);
  test_attention_f32_case(7, 5, 12, 4, 2, 64, true, 1.0);
}

/* ================================================================ training ops (vs the CPU backend) */

static void test_matmul_bwd(void) {
  struct { int M, N, K; int dyform; bool dx_add; } cs[] = {   /* dyform: 0 both, 1 dy_mm only, 2 dy only */
      {7, 13, 33, 0, true}, {300, 100, 200, 1, true}, {300, 100, 200, 2, false}, {64, 512, 3584, 0, true}, {1, 3584, 3584, 2, true},
      {130, 1000, 72, 0, true}, {130, 1000, 72, 0, false}, {512, 1536, 8960, 1, false}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int M = cs[ci].M, N = cs[ci].N, K = cs[ci].K, form = cs[ci].dyform;
    bool add = cs[ci].dx_add;
    float *x = randn((size_t)M * K, 1.0), *w = randn((size_t)N * K, 0.1), *dy = randn((size_t)M * N, 1.0);
    round_mm(x, (size_t)M * K); round_mm(w, (size_t)N * K); round_mm(dy, (size_t)M * N);
    float *dx0 = randn((size_t)M * K, 1.0), *dw0 = randn((size_t)N * K, 1.0), *db0 = randn(N, 1.0);
    if (!add) {   /* dx and dw overwritten, never read */
      for (size_t i = 0; i < (size_t)M * K; i++) dx0[i] = NAN;
      for (size_t i = 0; i < (size_t)N * K; i++) dw0[i] = NAN;
    }
    void *dxm = dev_mm(x, (size_t)M * K), *dwm = dev_mm(w, (size_t)N * K);
    void *ddym = form != 2 ? dev_mm(dy, (size_t)M * N) : NULL;
    float *ddy = form != 1 ? dev_f32(dy, (size_t)M * N) : NULL;
    float *ddx = dev_f32(dx0, (size_t)M * K), *ddw = dev_f32(dw0, (size_t)N * K), *ddb = dev_f32(db0, N);
    be->matmul_bwd(be, ddx, ddw, ddb, ddym, ddy, dxm, dwm, M, N, K, add, add);
    float *gx = get_f32(ddx, (size_t)M * K), *gw = get_f32(ddw, (size_t)N * K), *gb = get_f32(ddb, N);
    float *cx = copyf(dx0, (size_t)M * K), *cw = copyf(dw0, (size_t)N * K), *cb = copyf(db0, N);
    cpu->matmul_bwd(cpu, cx, cw, cb, form != 2 ? dy : NULL, form != 1 ? dy : NULL, x, w, M, N, K, add, add);
    char cas[96];
    snprintf(cas, sizeof cas, "M=%d N=%d K=%d %s%s", M, N, K, form == 0 ? "dy+dy_mm" : form == 1 ? "dy_mm only" : "dy only",
             add ? "" : ", dx and dw set");
    report("matmul_bwd dx vs cpu", cas, relerr_f(gx, cx, (size_t)M * K), 1e-4);
    report("matmul_bwd dw vs cpu", cas, relerr_f(gw, cw, (size_t)N * K), 1e-4);
    report("matmul_bwd db vs cpu", cas, relerr_f(gb, cb, N), 1e-5);
    if (ddym) {   /* dx in mm: the CPU's f32 product, rounded once (bf16: 2^-9 at most per value) */
      void *dxo = be->alloc(be, (size_t)M * K * MMS);
      poison(dxo, (size_t)M * K * MMS);
      be->matmul_dx_mm(be, dxo, ddym, dwm, M, N, K);
      float *go = get_mm(dxo, (size_t)M * K), *co = xmalloc(sizeof(float) * (size_t)M * K);
      cpu->matmul_dx_mm(cpu, co, dy, w, M, N, K);
      round_mm(co, (size_t)M * K);
      report("matmul_dx_mm vs cpu rounded", cas, relerr_f(go, co, (size_t)M * K), 3e-3);
      free(go); free(co);
      be->free(be, dxo);
    }
    free(x); free(w); free(dy); free(dx0); free(dw0); free(db0); free(gx); free(gw); free(gb); free(cx); free(cw); free(cb);
    be->free(be, dxm); be->free(be, dwm); be->free(be, ddym); be->free(be, ddy);
    be->free(be, ddx); be->free(be, ddw); be->free(be, ddb);
  }
}

static void test_norm_bwd(bool ln) {
  /* RMSNorm runs one pass where dim = 512·k <= 4096 (3584, 512, 4096, 1536), else two passes (1152,
   * 13), and with the option "rms_bwd_fused" off two passes everywhere; dx's
   * mm copy must equal to_mm of the updated dx bit for bit.  The last case is the 1.59 B trainer's
   * (8k rows of 1536), and 40 x 1536 its text rows. */
  struct { int R, D; } cs[] = {{1, 3584}, {7, 1152}, {300, 13}, {7, 3584}, {300, 1152}, {1, 13}, {300, 3584}, {7, 512},
                               {300, 4096}, {40, 1536}, {8192, 1536}};
  for (int fused = 1; fused >= (ln ? 1 : 0); fused--) {
    int old = set_opt("rms_bwd_fused", fused);
    if (old < 0 && !fused) break;   /* no such option (the ops on the CPU) */
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
      int R = cs[ci].R, D = cs[ci].D;
      size_t n = (size_t)R * D;
      float *x = randn(n, 2.0), *w = randn(D, 1.0), *dy = randn(n, 1.0);
      for (size_t i = 0; i < n; i++) x[i] += 0.3f;
      float *dx0 = randn(n, 1.0), *dw0 = randn(D, 1.0), *db0 = randn(D, 1.0);
      float *dxx = dev_f32(x, n), *dww = dev_f32(w, D), *ddy = dev_f32(dy, n);
      float *ddx = dev_f32(dx0, n), *ddw = dev_f32(dw0, D), *ddb = dev_f32(db0, D);
      void *dxm = ln ? NULL : be->alloc(be, n * MMS);
      if (ln) be->layernorm_bwd(be, ddx, ddw, ddb, ddy, dxx, dww, R, D, 1e-6f);
      else be->rmsnorm_bwd(be, ddx, dxm, ddw, ddy, dxx, dww, R, D, 1e-6f);
      float *gx = get_f32(ddx, n), *gw = get_f32(ddw, D), *gb = get_f32(ddb, D);
      float *cx = copyf(dx0, n), *cw = copyf(dw0, D), *cb = copyf(db0, D);
      if (ln) cpu->layernorm_bwd(cpu, cx, cw, cb, dy, x, w, R, D, 1e-6f);
      else cpu->rmsnorm_bwd(cpu, cx, NULL, cw, dy, x, w, R, D, 1e-6f);
      char cas[64];
      snprintf(cas, sizeof cas, "rows=%d dim=%d%s", R, D, fused ? "" : ", two passes");
      report(ln ? "layernorm_bwd dx vs cpu" : "rmsnorm_bwd dx vs cpu", cas, relerr_f(gx, cx, n), 1e-4);
      report(ln ? "layernorm_bwd dw vs cpu" : "rmsnorm_bwd dw vs cpu", cas, relerr_f(gw, cw, D), 1e-4);
      if (ln) report("layernorm_bwd db vs cpu", cas, relerr_f(gb, cb, D), 1e-5);
      if (dxm) {   /* the copy against the rounding of the dx it wrote */
        report("rmsnorm_bwd dx mm = to_mm(dx)", cas, (double)mm_copy_mismatches(dxm, gx, n), 0);
        be->free(be, dxm);
      }
      free(x); free(w); free(dy); free(dx0); free(dw0); free(db0); free(gx); free(gw); free(gb); free(cx); free(cw); free(cb);
      be->free(be, dxx); be->free(be, dww); be->free(be, ddy); be->free(be, ddx); be->free(be, ddw); be->free(be, ddb);
    }
    if (old >= 0) set_opt("rms_bwd_fused", old);
  }
}

static void test_qk_bwd(void) {
  /* the last case is the 1.59 B trainer's q (8k tokens, 12 heads): 1024 partial rows for dw */
  struct { int T, heads, d, pad; bool alias; } cs[] = {{7, 4, 128, 64, false}, {300, 28, 128, 0, false}, {5, 3, 72, 8, false},
                                                       {9, 2, 6, 0, true}, {33, 4, 128, 0, true}, {6, 3, 256, 16, false}, {8192, 12, 128, 0, false}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int T = cs[ci].T, Hh = cs[ci].heads, d = cs[ci].d, stride = Hh * d + cs[ci].pad;
    size_t n = (size_t)T * Hh * d, ny = (size_t)T * stride;
    float *x = randn(n, 3.0), *w = randn(d, 1.0), *dy = randn(ny, 1.0), *dw0 = randn(d, 1.0);
    int32_t *pos = xmalloc(T * sizeof *pos);
    for (int t = 0; t < T; t++) pos[t] = (int32_t)usbx_rng_below(&rng, 5000);
    float *dxx = dev_f32(x, n), *dww = dev_f32(w, d), *ddy = dev_f32(dy, ny), *ddw = dev_f32(dw0, d);
    int32_t *dp = dev_i32(pos, T);
    float *ddx = cs[ci].alias ? dxx : be->alloc(be, n * sizeof(float));
    if (!cs[ci].alias) poison(ddx, n * sizeof(float));
    void *dxm = be->alloc(be, n * MMS);   /* dx's mm copy: equal to the rounding of the dx written */
    be->qk_norm_rope_bwd(be, ddx, dxm, ddw, ddy, stride, dxx, dww, dp, T, Hh, d, 1e-6f, 1e6f);
    float *gx = get_f32(ddx, n), *gw = get_f32(ddw, d);
    const size_t bad = mm_copy_mismatches(dxm, gx, n);
    be->free(be, dxm);
    float *cxin = copyf(x, n), *cw = copyf(dw0, d);
    float *cx = cs[ci].alias ? cxin : xmalloc(n * sizeof(float));
    cpu->qk_norm_rope_bwd(cpu, cx, NULL, cw, dy, stride, cxin, w, pos, T, Hh, d, 1e-6f, 1e6f);
    char cas[80];
    snprintf(cas, sizeof cas, "T=%d heads=%d d=%d stride=%d%s", T, Hh, d, stride, cs[ci].alias ? " dx=x" : "");
    report("qk_norm_rope_bwd dx vs cpu", cas, relerr_f(gx, cx, n), 1e-4);
    report("qk_norm_rope_bwd dw vs cpu", cas, relerr_f(gw, cw, d), 1e-4);
    report("qk_norm_rope_bwd dx mm = to_mm(dx)", cas, (double)bad, 0);
    free(x); free(w); free(dy); free(dw0); free(pos); free(gx); free(gw); free(cw);
    if (!cs[ci].alias) { free(cx); be->free(be, ddx); }
    free(cxin);
    be->free(be, dxx); be->free(be, dww); be->free(be, ddy); be->free(be, ddw); be->free(be, dp);
  }
}

static void test_act_bwd(void) {
  size_t ns[] = {1, 13, 300 * 18944 + 3};
  for (int ni = 0; ni < 3; ni++) {
    size_t n = ns[ni];
    float *a = randn(n, 3.0), *b = randn(n, 1.0), *g = randn(n, 1.0);
    float *da = dev_f32(a, n), *db = dev_f32(b, n), *dg = dev_f32(g, n);
    float *o1 = be->alloc(be, n * sizeof(float)), *o2 = be->alloc(be, n * sizeof(float));
    char cas[64];
    snprintf(cas, sizeof cas, "n=%zu", n);
    float *c1 = xmalloc(n * sizeof *c1), *c2 = xmalloc(n * sizeof *c2);
    /* silu_mul_bwd (T=1, F=n) */
    poison(o1, n * sizeof(float)); poison(o2, n * sizeof(float));
    be->silu_mul_bwd(be, o1, o2, dg, da, db, 1, (int)n);
    float *r1 = get_f32(o1, n), *r2 = get_f32(o2, n);
    cpu->silu_mul_bwd(cpu, c1, c2, g, a, b, 1, (int)n);
    report("silu_mul_bwd dgate vs cpu", cas, relerr_f(r1, c1, n), 1e-5);
    report("silu_mul_bwd dup vs cpu", cas, relerr_f(r2, c2, n), 1e-5);
    free(r1); free(r2);
    /* silu_mul_bwd_mm (gate, up in mm): the CPU's values on the same rounded inputs, rounded as
     * to_mm rounds them (expf may differ by an ulp, which can move a value across a rounding
     * boundary: a count of differing values, not 0) */
    float *ar = copyf(a, n), *br = copyf(b, n), *gr = copyf(g, n);
    round_mm(ar, n); round_mm(br, n); round_mm(gr, n);
    void *am = dev_mm(ar, n), *bm = dev_mm(br, n), *gm = dev_mm(gr, n);
    poison(o1, n * sizeof(float)); poison(o2, n * sizeof(float));
    be->silu_mul_bwd_mm(be, o1, o2, gm, am, bm, 1, (int)n);
    r1 = get_mm(o1, n); r2 = get_mm(o2, n);
    cpu->silu_mul_bwd(cpu, c1, c2, gr, ar, br, 1, (int)n);
    round_mm(c1, n); round_mm(c2, n);
    be->free(be, am); be->free(be, bm); be->free(be, gm); free(ar); free(br); free(gr);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) off += (r1[i] != c1[i]) + (r2[i] != c2[i]);
    report("silu_mul_bwd_mm vs cpu rounded (share differing)", cas, (double)off / (2.0 * n), 1e-3);
    report("silu_mul_bwd_mm dgate vs cpu", cas, relerr_f(r1, c1, n), 4e-3);
    free(r1); free(r2);
    poison(o1, n * sizeof(float));
    be->gelu_tanh_bwd(be, o1, dg, da, n);
    r1 = get_f32(o1, n);
    cpu->gelu_tanh_bwd(cpu, c1, g, a, n);
    report("gelu_tanh_bwd vs cpu", cas, relerr_f(r1, c1, n), 1e-5);
    free(r1);
    poison(o1, n * sizeof(float));
    be->silu_bwd(be, o1, dg, da, n);
    r1 = get_f32(o1, n);
    cpu->silu_bwd(cpu, c1, g, a, n);
    report("silu_bwd vs cpu", cas, relerr_f(r1, c1, n), 1e-5);
    free(r1);
    free(a); free(b); free(g); free(c1); free(c2);
    be->free(be, da); be->free(be, db); be->free(be, dg); be->free(be, o1); be->free(be, o2);
  }
}

/* repeated ids add up in token order, as on the CPU: bit-identical (V = 3: over 256 repeats of
 * an id, more than one chunk of the kernel's list) */
static void test_embed_bwd(void) {
  struct { int V, D, T; } cs[] = {{50, 3584, 300}, {3, 128, 1000}, {1000, 64, 17}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int V = cs[ci].V, D = cs[ci].D, T = cs[ci].T;
    float *tab = randn((size_t)V * D, 1.0), *g = randn((size_t)T * D, 1.0);
    int32_t *ids = xmalloc(T * sizeof *ids);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)usbx_rng_below(&rng, V);
    float *dt = dev_f32(tab, (size_t)V * D), *dg = dev_f32(g, (size_t)T * D);
    int32_t *di = dev_i32(ids, T);
    be->embed_bwd(be, dt, dg, di, T, D);
    float *out = get_f32(dt, (size_t)V * D), *ct = copyf(tab, (size_t)V * D);
    cpu->embed_bwd(cpu, ct, g, ids, T, D);
    size_t differ = 0;
    for (size_t i = 0; i < (size_t)V * D; i++) differ += memcmp(&out[i], &ct[i], sizeof(float)) != 0;
    char cas[80];
    snprintf(cas, sizeof cas, "V=%d D=%d T=%d (%zu values differ)", V, D, T, differ);
    report("embed_bwd vs cpu", cas, (double)differ, 0);
    free(tab); free(g); free(ids); free(out); free(ct);
    be->free(be, dt); be->free(be, dg); be->free(be, di);
  }
}

/* A packed batch: sample 0 = text (causal) + noisy image (noise); sample 1 = text + clean image
 * (full) + text.  Tokens stored in a shuffled order, as the model groups them by expert. */
static bool mask_shuffle = true;   /* false: tokens stored in packed order (whole tiles of one sample) */
static void make_mask_meta(int n, int32_t *order, int32_t *sample, int32_t *split, int32_t *mode) {
  int len[5] = {n / 5, n / 4, n / 6, n / 4, 0};
  len[4] = n - len[0] - len[1] - len[2] - len[3];
  int smp[5] = {0, 0, 1, 1, 1}, md[5] = {0, 2, 0, 1, 0};
  int32_t *perm = xmalloc(n * sizeof *perm);
  for (int i = 0; i < n; i++) perm[i] = i;
  for (int i = n - 1; mask_shuffle && i > 0; i--) { int j = (int)usbx_rng_below(&rng, i + 1); int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
  int p = 0;
  for (int sp = 0; sp < 5; sp++)
    for (int i = 0; i < len[sp]; i++, p++) {
      int t = perm[p];            /* storage slot of packed position p */
      order[t] = p; sample[t] = smp[sp]; split[t] = sp; mode[t] = md[sp];
    }
  free(perm);
}
static void test_attention_masked(void) {
  /* tc: -1 default path (tiled tensor cores on CUDA), 0 the scalar CUDA kernels */
  /* seg: the rows of each sample are passed along, so the backward goes sample by sample
   * through cuBLAS (cuda_attn_gemm.cu) */
  /* row: -1 default, 0 the warp-per-row element-wise kernels of the cuBLAS path */
  /* flash: 1 the flash kernels (default; bf16 P, dS and dO as FlashAttention-2, so the backward
   * is held to 1e-2 instead of 1e-3; on sm_90 at head dim 128 the forward runs as warpgroup MMAs
   * and the backward as one kernel adding dQ up by TMA reductions), 2 the same with the mma.sync kernels, 3 the
   * warpgroup forward with the two-kernel backward (attn_bwd_fused 0), 0 the paths behind them */
  struct { int n, H, Hkv, d, tc; bool sorted, seg; int row, flash; } cs[] = {
      {100, 4, 2, 64, -1, false, false, -1, 1}, {150, 28, 4, 128, -1, false, false, -1, 1}, {80, 16, 16, 72, -1, false, false, -1, 1},
      {700, 28, 4, 128, -1, false, false, -1, 1}, {333, 8, 8, 64, -1, false, false, -1, 1}, {129, 4, 1, 128, -1, false, false, -1, 1},
      {900, 28, 4, 128, -1, true, false, -1, 1}, {200, 4, 2, 16, -1, false, false, -1, 1}, {64, 2, 1, 32, -1, true, true, -1, 1},
      {4100, 12, 2, 128, -1, true, true, -1, 1},  /* the 1.59 B trainer's shape: whole tiles skipped and unmasked */
      {2100, 4, 2, 128, -1, false, false, -1, 1}, /* 1,089 masked tile pairs: more than the first table of their bits holds */
      {37, 2, 1, 20, -1, false, false, -1, 1},    /* head dim 20: flash does not apply, the tiled kernels run */
      {150, 28, 4, 128, -1, false, false, -1, 2}, {700, 28, 4, 128, -1, false, false, -1, 2}, {129, 4, 1, 128, -1, false, false, -1, 2},
      {900, 28, 4, 128, -1, true, false, -1, 2}, {4100, 12, 2, 128, -1, true, true, -1, 2},
      {150, 28, 4, 128, -1, false, false, -1, 3}, {129, 4, 1, 128, -1, false, false, -1, 3}, {4100, 12, 2, 128, -1, true, true, -1, 3},
      {100, 4, 2, 64, -1, false, false, -1, 0}, {150, 28, 4, 128, -1, false, false, -1, 0}, {80, 16, 16, 72, -1, false, false, -1, 0},
      {37, 2, 1, 20, -1, false, false, -1, 0}, {700, 28, 4, 128, -1, false, false, -1, 0}, {333, 8, 8, 64, -1, false, false, -1, 0},
      {129, 4, 1, 128, -1, false, false, -1, 0},
      {900, 28, 4, 128, -1, true, false, -1, 0},      /* packed order: whole tiles of other samples are skipped */
      {150, 28, 4, 128, 0, false, false, -1, 0},
      {150, 28, 4, 128, -1, false, true, -1, 0}, {700, 28, 4, 128, -1, false, true, -1, 0}, {900, 28, 4, 128, -1, true, true, -1, 0},
      {333, 8, 8, 64, -1, false, true, -1, 0}, {129, 4, 1, 128, -1, false, true, -1, 0}, {37, 2, 1, 20, -1, false, true, -1, 0},
      {80, 16, 16, 72, -1, false, true, -1, 0},
      {700, 28, 4, 128, -1, false, true, 0, 0}, {900, 28, 4, 128, -1, true, true, 0, 0}, {37, 2, 1, 20, -1, false, true, 0, 0}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int n = cs[ci].n, H = cs[ci].H, Hkv = cs[ci].Hkv, d = cs[ci].d;
    int old_tc = cs[ci].tc >= 0 ? set_opt("attn_masked_tc", cs[ci].tc) : -1;
    if (cs[ci].tc >= 0 && old_tc < 0) continue;
    int old_row = cs[ci].row >= 0 ? set_opt("attn_masked_row", cs[ci].row) : -1;
    int old_flash = set_opt("attn_masked_flash", cs[ci].flash != 0), old_wg = set_opt("attn_masked_wg", cs[ci].flash != 2);
    int old_fused = set_opt("attn_bwd_fused", cs[ci].flash != 3);
    const bool flash = cs[ci].flash && d % 8 == 0;
    const double btol = flash ? 1e-2 : 1e-3;
    size_t nq = (size_t)n * H * d, nk = (size_t)n * Hkv * d;
    int32_t *meta = xmalloc(4 * n * sizeof *meta);
    mask_shuffle = !cs[ci].sorted;
    make_mask_meta(n, meta, meta + n, meta + 2 * n, meta + 3 * n);
    mask_shuffle = true;
    int32_t *dmeta = dev_i32(meta, 4 * (size_t)n);
    float *q = randn(nq, 1.0), *k = randn(nk, 1.0), *v = randn(nk, 1.0), *go = randn(nq, 1.0);
    round_mm(q, nq); round_mm(k, nk); round_mm(v, nk);
    void *dq_ = dev_mm(q, nq), *dk_ = dev_mm(k, nk), *dv_ = dev_mm(v, nk);
    void *dout = be->alloc(be, nq * MMS);
    float *dlse = be->alloc(be, (size_t)H * n * sizeof(float));
    poison(dout, nq * MMS); poison(dlse, (size_t)H * n * sizeof(float));
    /* a fresh meta_id per case: forward, backward and the repeat reuse one tile classification,
     * and a stale one from the previous case would fail the comparisons */
    usbx_attn_masked_args ga = {.n = n, .n_heads = H, .n_kv_heads = Hkv, .head_dim = d, .order = dmeta, .sample = dmeta + n, .split = dmeta + 2 * n, .mode = dmeta + 3 * n,
                                .meta_id = usbx_attn_meta_id()};
    int32_t seg_off[3] = {0, 0, n}, *seg_rows = xmalloc(n * sizeof *seg_rows), *dseg = NULL;
    if (cs[ci].seg) {   /* the test batch has samples 0 and 1 */
      for (int i = 0; i < n; i++) seg_off[1] += meta[n + i] == 0;
      for (int i = 0, a0 = 0, a1 = seg_off[1]; i < n; i++) seg_rows[meta[n + i] == 0 ? a0++ : a1++] = i;
      dseg = dev_i32(seg_rows, n);
      ga.n_seg = 2; ga.seg_off = seg_off; ga.seg_rows = dseg;
    }
    usbx_attn_masked_args ca = {.n = n, .n_heads = H, .n_kv_heads = Hkv, .head_dim = d, .order = meta, .sample = meta + n, .split = meta + 2 * n, .mode = meta + 3 * n};
    be->attention_masked(be, dout, dlse, dq_, dk_, dv_, &ga);
    float *out = get_mm(dout, nq), *lse = get_f32(dlse, (size_t)H * n);
    float *cout = xmalloc(nq * sizeof *cout), *clse = xmalloc((size_t)H * n * sizeof *clse);
    cpu->attention_masked(cpu, cout, clse, q, k, v, &ca);
    char cas[112];
    snprintf(cas, sizeof cas, "n=%d H=%d/%d d=%d%s%s%s%s", n, H, Hkv, d,
             flash ? (cs[ci].flash == 2 ? " flash mma.sync" : cs[ci].flash == 3 ? " flash two-kernel bwd" : " flash") : "",
             cs[ci].sorted ? " packed order" : "",
             cs[ci].tc == 0 ? " scalar kernels" : "", cs[ci].seg ? (cs[ci].row == 0 ? " by sample (cuBLAS, warp rows)" : " by sample (cuBLAS)") : "");
    report("attention_masked out vs cpu", cas, relerr_f(out, cout, nq), 1e-2);
    report("attention_masked lse vs cpu", cas, relerr_f(lse, clse, (size_t)H * n), 1e-5);
    /* backward from the same forward values on both sides: the GPU's (bf16) out, the CPU's lse */
    float *dgo = dev_f32(go, nq), *dl2 = dev_f32(clse, (size_t)H * n);
    float *gq = be->alloc(be, nq * sizeof(float)), *gk = be->alloc(be, nk * sizeof(float)), *gv = be->alloc(be, nk * sizeof(float));
    poison(gq, nq * sizeof(float)); poison(gk, nk * sizeof(float)); poison(gv, nk * sizeof(float));
    be->attention_masked_bwd(be, gq, gk, gv, dgo, dq_, dk_, dv_, dout, dl2, &ga);
    float *rq = get_f32(gq, nq), *rk = get_f32(gk, nk), *rv = get_f32(gv, nk);
    float *cq = xmalloc(nq * sizeof *cq), *ck = xmalloc(nk * sizeof *ck), *cv = xmalloc(nk * sizeof *cv);
    cpu->attention_masked_bwd(cpu, cq, ck, cv, go, q, k, v, out, clse, &ca);
    report("attention_masked_bwd dq vs cpu", cas, relerr_f(rq, cq, nq), btol);
    report("attention_masked_bwd dk vs cpu", cas, relerr_f(rk, ck, nk), btol);
    report("attention_masked_bwd dv vs cpu", cas, relerr_f(rv, cv, nk), btol);
    if (flash) {   /* a second backward: bit-identical, except where the one-kernel Hopper backward
                    * adds dQ, dK and dV up in no fixed order (order-dependent rounding only) */
      be->attention_masked_bwd(be, gq, gk, gv, dgo, dq_, dk_, dv_, dout, dl2, &ga);
      float *r2q = get_f32(gq, nq), *r2k = get_f32(gk, nk), *r2v = get_f32(gv, nk);
      const bool unordered = d == 128 && cs[ci].flash == 1;
      if (unordered) {
        report("attention_masked_bwd repeat dq (reduction order)", cas, relerr_f(r2q, rq, nq), 1e-6);
        report("attention_masked_bwd repeat dk dv (reduction order)", cas, fmax(relerr_f(r2k, rk, nk), relerr_f(r2v, rv, nk)), 1e-6);
      } else {
        report("attention_masked_bwd repeat dq bit-identical", cas, memcmp(r2q, rq, nq * sizeof(float)) != 0, 0);
        double differ = memcmp(r2k, rk, nk * sizeof(float)) != 0 || memcmp(r2v, rv, nk * sizeof(float)) != 0;
        report("attention_masked_bwd repeat dk dv bit-identical", cas, differ, 0);
      }
      free(r2q); free(r2k); free(r2v);
    }
    set_opt("attn_masked_flash", old_flash);
    set_opt("attn_masked_wg", old_wg);
    set_opt("attn_bwd_fused", old_fused);
    if (old_tc >= 0) set_opt("attn_masked_tc", old_tc);
    if (old_row >= 0) set_opt("attn_masked_row", old_row);
    free(seg_rows);
    if (dseg) be->free(be, dseg);
    free(meta); free(q); free(k); free(v); free(go); free(out); free(lse); free(cout); free(clse);
    free(rq); free(rk); free(rv); free(cq); free(ck); free(cv);
    be->free(be, dmeta); be->free(be, dq_); be->free(be, dk_); be->free(be, dv_); be->free(be, dout); be->free(be, dlse);
    be->free(be, dgo); be->free(be, dl2); be->free(be, gq); be->free(be, gk); be->free(be, gv);
  }
}

static void test_cross_entropy(void) {
  struct { int n, V; bool alias; } cs[] = {{7, 1000, false}, {3, 152064, true}, {1, 5, false}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int n = cs[ci].n, V = cs[ci].V;
    size_t nv = (size_t)n * V;
    float *x = randn(nv, 3.0);
    int32_t *lab = xmalloc(n * sizeof *lab);
    for (int i = 0; i < n; i++) lab[i] = (int32_t)usbx_rng_below(&rng, V);
    float *dx = dev_f32(x, nv), *dl = be->alloc(be, n * sizeof(float));
    int32_t *dlab = dev_i32(lab, n);
    float *dg = cs[ci].alias ? dx : be->alloc(be, nv * sizeof(float));
    poison(dl, n * sizeof(float));
    if (!cs[ci].alias) poison(dg, nv * sizeof(float));
    be->cross_entropy(be, dl, dg, dx, dlab, n, V, 0.25f);
    float *loss = get_f32(dl, n), *grad = get_f32(dg, nv);
    float *closs = xmalloc(n * sizeof *closs), *cg = xmalloc(nv * sizeof *cg);
    cpu->cross_entropy(cpu, closs, cg, x, lab, n, V, 0.25f);
    char cas[64];
    snprintf(cas, sizeof cas, "n=%d V=%d%s", n, V, cs[ci].alias ? " dlogits=logits" : "");
    report("cross_entropy loss vs cpu", cas, relerr_f(loss, closs, n), 1e-5);
    report("cross_entropy dlogits vs cpu", cas, relerr_f(grad, cg, nv), 1e-5);
    free(x); free(lab); free(loss); free(grad); free(closs); free(cg);
    be->free(be, dx); be->free(be, dl); be->free(be, dlab);
    if (!cs[ci].alias) be->free(be, dg);
  }
}

static void test_optim(void) {
  size_t n = 1000003;
  for (int step = 1; step <= 10; step += 9) {
    float *w = randn(n, 1.0), *g = randn(n, 0.1), *m = randn(n, 0.01), *v = randn(n, 0.01), *e = randn(n, 1.0);
    for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i];    /* second moments are non-negative */
    float *dw = dev_f32(w, n), *dg = dev_f32(g, n), *dm = dev_f32(m, n), *dv = dev_f32(v, n), *de = dev_f32(e, n);
    usbx_adamw_args aw = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.01f, .grad_scale = 0.5f,
                          .ema_decay = 0.999f, .step = step};
    void *dwm = be->alloc(be, n * MMS);
    poison(dwm, n * MMS);
    be->adamw(be, dw, dwm, dg, dm, dv, de, n, &aw);
    float *rw = get_f32(dw, n), *rm = get_f32(dm, n), *rv = get_f32(dv, n), *rwm = get_mm(dwm, n), *re = get_f32(de, n);
    float *cw = copyf(w, n), *cm = copyf(m, n), *cv = copyf(v, n), *cwm = xmalloc(n * sizeof *cwm), *ce = copyf(e, n);
    cpu->adamw(cpu, cw, cwm, g, cm, cv, ce, n, &aw);
    char cas[64];
    snprintf(cas, sizeof cas, "n=%zu step=%d", n, step);
    report("adamw w vs cpu", cas, relerr_f(rw, cw, n), 1e-6);
    report("adamw m vs cpu", cas, relerr_f(rm, cm, n), 1e-6);
    report("adamw v vs cpu", cas, relerr_f(rv, cv, n), 1e-6);
    report("adamw w_mm vs cpu", cas, relerr_f(rwm, cwm, n), 1e-2);
    report("adamw ema vs cpu", cas, relerr_f(re, ce, n), 1e-6);
    free(w); free(g); free(m); free(v); free(e); free(rw); free(rm); free(rv); free(rwm); free(re); free(cw); free(cm); free(cv);
    free(cwm); free(ce);
    be->free(be, dw); be->free(be, dg); be->free(be, dm); be->free(be, dv); be->free(be, dwm); be->free(be, de);
  }
  /* sumsq_acc */
  float *x = randn(n, 1.0), acc0 = 1.5f;
  float *dx = dev_f32(x, n), *dacc = dev_f32(&acc0, 1);
  be->sumsq_acc(be, dacc, dx, n);
  be->sumsq_acc(be, dacc, dx, 7);
  be->sumsq_acc(be, dacc, dx + 1, n - 2);   /* not 16-byte aligned: the scalar path */
  float *racc = get_f32(dacc, 1), cacc = acc0;
  cpu->sumsq_acc(cpu, &cacc, x, n);
  cpu->sumsq_acc(cpu, &cacc, x, 7);
  cpu->sumsq_acc(cpu, &cacc, x + 1, n - 2);
  report("sumsq_acc vs cpu", "n=1000003, n=7, then unaligned n=1000001", relerr_f(racc, &cacc, 1), 1e-6);
  /* sumsq_multi: ranges longer than a chunk (2^18), short, empty and unaligned, in one call */
  {
    const float *xs[5] = {dx, dx + 1, dx + 3, dx + 600000, dx + 17};
    const float *cx[5] = {x, x + 1, x + 3, x + 600000, x + 17};
    size_t ns[5] = {600000, 5, 0, 400003, 262147};
    float acc1 = 0.5f, *dacc1 = dev_f32(&acc1, 1), cacc1 = acc1;
    be->sumsq_multi(be, dacc1, xs, ns, 5);
    be->sumsq_multi(be, dacc1, xs, ns, 2);   /* the counter of finished blocks is back at 0 */
    cpu->sumsq_multi(cpu, &cacc1, cx, ns, 5);
    cpu->sumsq_multi(cpu, &cacc1, cx, ns, 2);
    float *racc1 = get_f32(dacc1, 1);
    report("sumsq_multi vs cpu", "5 ranges (0 to 600000 values, unaligned), then 2", relerr_f(racc1, &cacc1, 1), 1e-6);
    free(racc1);
    be->free(be, dacc1);
  }
  /* sum_acc and mse_grad: device f64 sums (each on top of a start value), the gradient written
   * over pred, the squared errors */
  {
    const size_t nm = 8164 * 48;   /* the 1.59 B trainer's MSE rows x patch values */
    float *pred = randn(nm, 1.0), *tgt = randn(nm, 1.0), *cg = xmalloc(nm * sizeof *cg), *csq = xmalloc(nm * sizeof *csq);
    double start[2] = {0.25, -3.0}, csum[2] = {0.25, -3.0};
    float *dpred = dev_f32(pred, nm), *dtgt = dev_f32(tgt, nm), *dsq = be->alloc(be, nm * sizeof(float));
    double *dsum = be->alloc(be, sizeof start);
    be->upload(be, dsum, start, sizeof start);
    poison(dsq, nm * sizeof(float));
    be->sum_acc(be, dsum, dx, 4099, 1.0 / 7);
    be->mse_grad(be, dsum + 1, dpred, dsq, dpred, dtgt, nm, 0.5f, 48.0f * 8164, 1.0 / (48.0 * 8164));
    cpu->sum_acc(cpu, csum, x, 4099, 1.0 / 7);
    cpu->mse_grad(cpu, csum + 1, cg, csq, pred, tgt, nm, 0.5f, 48.0f * 8164, 1.0 / (48.0 * 8164));
    double rsum[2];
    be->download(be, rsum, dsum, sizeof rsum);
    float *rg = get_f32(dpred, nm), *rsq = get_f32(dsq, nm);
    report("sum_acc vs cpu", "n=4099, scale 1/7, on 0.25", fabs(rsum[0] - csum[0]) / fabs(csum[0]), 1e-9);
    report("mse_grad loss vs cpu", "n=391872, on -3", fabs(rsum[1] - csum[1]) / fabs(csum[1]), 1e-9);
    report("mse_grad grad vs cpu", "n=391872, in place", relerr_f(rg, cg, nm), 1e-7);
    report("mse_grad sq vs cpu", "n=391872", relerr_f(rsq, csq, nm), 1e-7);
    free(pred); free(tgt); free(cg); free(csq); free(rg); free(rsq);
    be->free(be, dpred); be->free(be, dtgt); be->free(be, dsq); be->free(be, dsum);
  }
  free(x); free(racc);
  be->free(be, dx); be->free(be, dacc);
}

static const char *only;   /* argv[1]: run only the groups whose call contains it */
#define RUN(call) do { if (!only || strstr(#call, only)) call; } while (0)

/* the products again with option gemm_tune at 1 MFLOP, so that each shape's algorithm is chosen by
 * timing cublasLt's candidates on the call's own operands: the accumulating ones into a temporary
 * (their output must come out as without tuning), then a second shape in the same bucket (301 rows)
 * takes the timed algorithm without timing */
static void test_gemm_tune(void) {
  const int old = set_opt("gemm_tune", 1);
  if (old < 0) return;
  test_matmul_case(300, 100, 200, true, true);
  test_matmul_case(301, 100, 200, true, true);
  test_matmul_case(300, 3584, 3584, true, false);
  test_gate_up();
  test_matmul_res();
  test_matmul_bwd();
  set_opt("gemm_tune", old);
}

int main(int argc, char **argv) {
  only = argc > 1 ? argv[1] : NULL;
  usbx_set_progname("test_ops_cuda");
  char err[256];
#ifdef USBX_TEST_OPS_ON_CPU      /* checks the harness itself: the CPU backend against the references */
  be = usbx_backend_cpu();
  (void)err;
#else
  be = usbx_backend_cuda(err, sizeof err);
#endif
  if (!be) {
    char why[300];
    if (!strncmp(err, "no CUDA device", 14)) snprintf(why, sizeof why, "%s", err);
    else snprintf(why, sizeof why, "no CUDA device (%s)", err);
    T_SKIP(why);
  }
  printf("backend: %s\n", be->name);
  MMS = usbx_dtype_size(be->mm_dtype);
  cpu = usbx_backend_cpu();
  printf("reference: float64 on the host, and %s\n", cpu->name);
  usbx_rng_seed(&rng, 20261126);
#ifndef USBX_TEST_OPS_ON_CPU
  set_opt("gateup_bf16", 1);   /* optional ops, off by default: tested here */
  {   /* every op of the table is set: all members from alloc to destroy are function pointers */
    typedef void (*fn_t)(void);
    const char *p0 = (const char *)&be->alloc, *p1 = (const char *)&be->destroy;
    int unset = 0;
    for (const char *p = p0; p <= p1; p += sizeof(fn_t)) { fn_t f; memcpy(&f, p, sizeof f); unset += f == NULL; }
    CHECKF(unset == 0, "%d operations of the table are NULL", unset);
    report("table", "every function pointer set", unset ? 1.0 : 0.0, 0.0);
  }
#endif
  RUN(test_memory());
  RUN(test_upload_convert());
  RUN(test_matmul());
  RUN(test_matmul_res());
  RUN(test_lanes());
  RUN(test_gate_up());
  RUN(test_gate_up_silu());
  RUN(test_embed());
  RUN(test_norm(false));
  RUN(test_norm(true));
  RUN(test_qk_norm_rope());
  RUN(test_to_mm());
  RUN(test_act(0));
  RUN(test_act(1));
  RUN(test_act(2));
  RUN(test_rows());
  RUN(test_argmax());
  RUN(test_attention());
  RUN(test_add_row_silu());
  RUN(test_cfg_euler());
  RUN(test_im2col());
  RUN(test_group_norm());
  RUN(test_upsample2x());
  RUN(test_matmul_f32());
  RUN(test_im2col_f32());
  RUN(test_attention_f32());
  RUN(test_matmul_bwd());
  RUN(test_gemm_tune());
  RUN(test_norm_bwd(false));
  RUN(test_norm_bwd(true));
  RUN(test_qk_bwd());
  RUN(test_act_bwd());
  RUN(test_embed_bwd());
  RUN(test_attention_masked());
  RUN(test_cross_entropy());
  RUN(test_optim());
  printf("\n%-30s %6s %12s %8s %s\n", "op", "cases", "worst err", "tol", "result");
  for (int k = 0; k < nsumm; k++)
    printf("%-30s %6d %12.3e %8.0e %s\n", summ[k].op, summ[k].cases, summ[k].worst, summ[k].tol,
           summ[k].failed ? "FAIL" : "ok");
  if (be->destroy) be->destroy(be);
  return t_done("test_ops_cuda");
}
