/* test_bagel_llm.c — the language model on the CPU backend: tensor list and sin-cos tables
 * against the upstream fixture, KV-cache decoding equal to full recomputation, context copies,
 * the attention visibility rule on hand-built packed blocks, and loading errors. */
#include "bagel.h"
#include "bagel_internal.h"
#include "safetensors.h"
#include "util.h"
#include "testlib.h"
#include <math.h>
#include <unistd.h>

static double rel_err(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
  return sqrt(num) / (sqrt(den) + 1e-30);
}

static void fill(float *x, size_t n, uint64_t seed) {
  usbx_rng r; usbx_rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++) x[i] = (float)usbx_rng_normal(&r);
}

/* Naive attention with an explicit mask matrix: the oracle for the op's visibility rule. */
static void naive_attention(float *out, const float *q, const float *k, const float *v, int n_q, int kv_len,
                            int H, int Hkv, int d, const unsigned char *mask /* [n_q, kv_len] */) {
  for (int h = 0; h < H; h++)
    for (int i = 0; i < n_q; i++) {
      int g = h / (H / Hkv);
      double mx = -INFINITY, s[512], sum = 0;
      for (int t = 0; t < kv_len; t++) {
        if (!mask[i * kv_len + t]) { s[t] = -INFINITY; continue; }
        double dot = 0;
        for (int c = 0; c < d; c++) dot += (double)q[(i * H + h) * d + c] * k[(t * Hkv + g) * d + c];
        s[t] = dot / sqrt((double)d);
        if (s[t] > mx) mx = s[t];
      }
      for (int t = 0; t < kv_len; t++) { s[t] = mask[i * kv_len + t] ? exp(s[t] - mx) : 0; sum += s[t]; }
      for (int c = 0; c < d; c++) {
        double acc = 0;
        for (int t = 0; t < kv_len; t++) acc += s[t] / sum * v[(t * Hkv + g) * d + c];
        out[(i * H + h) * d + c] = (float)acc;
      }
    }
}

static void test_attention_rule(void) {
  usbx_backend *be = usbx_backend_cpu();
  int H = 4, Hkv = 2, d = 8;
  for (int causal = 0; causal < 2; causal++)
    for (int ctx = 0; ctx <= 5; ctx += 5) {
      int n_q = 7, kv_len = ctx + n_q;
      float *q = xmalloc(sizeof(float) * n_q * H * d), *k = xmalloc(sizeof(float) * kv_len * Hkv * d);
      float *v = xmalloc(sizeof(float) * kv_len * Hkv * d), *o = xmalloc(sizeof(float) * n_q * H * d), *r = xmalloc(sizeof(float) * n_q * H * d);
      fill(q, (size_t)n_q * H * d, 1); fill(k, (size_t)kv_len * Hkv * d, 2); fill(v, (size_t)kv_len * Hkv * d, 3);
      unsigned char mask[7 * 12];
      /* hand-written rule: the context is visible; inside the block causal or full */
      for (int i = 0; i < n_q; i++)
        for (int t = 0; t < kv_len; t++) mask[i * kv_len + t] = t < ctx || (causal ? t - ctx <= i : 1);
      usbx_attn_args a = {.n_q = n_q, .q_start = ctx, .kv_len = kv_len, .n_heads = H, .n_kv_heads = Hkv, .head_dim = d, .causal = causal};
      for (size_t i = 0; i < (size_t)n_q * H * d; i++) o[i] = NAN;
      be->attention(be, o, q, k, v, &a);
      naive_attention(r, q, k, v, n_q, kv_len, H, Hkv, d, mask);
      CHECKF(rel_err(o, r, (size_t)n_q * H * d) < 1e-5, "attention causal=%d ctx=%d rel %g", causal, ctx, rel_err(o, r, (size_t)n_q * H * d));
      free(q); free(k); free(v); free(o); free(r);
    }
}

static void test_ops_naive(void) {
  usbx_backend *be = usbx_backend_cpu();
  /* matmul with bias and accumulate against a direct triple loop */
  int M = 5, N = 7, K = 11;
  float x[55], w[77], b[7], y[35], ref[35];
  fill(x, 55, 4); fill(w, 77, 5); fill(b, 7, 6); fill(y, 35, 7);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double acc = y[i * N + j] + b[j];
      for (int k = 0; k < K; k++) acc += (double)x[i * K + k] * w[j * K + k];
      ref[i * N + j] = (float)acc;
    }
  be->matmul(be, y, x, w, b, M, N, K, true);
  CHECK(rel_err(y, ref, 35) < 1e-6);
  /* M = 1 takes the gemv path */
  float y1[7], r1[7];
  for (int j = 0; j < N; j++) { double acc = b[j]; for (int k = 0; k < K; k++) acc += (double)x[k] * w[j * K + k]; r1[j] = (float)acc; }
  be->matmul(be, y1, x, w, b, 1, N, K, false);
  CHECK(rel_err(y1, r1, 7) < 1e-6);
  /* rmsnorm */
  float xn[24], wn[8], on[24];
  fill(xn, 24, 8); fill(wn, 8, 9);
  be->rmsnorm(be, on, false, xn, wn, 3, 8, 1e-6f);
  for (int r = 0; r < 3; r++) {
    double ss = 0;
    for (int i = 0; i < 8; i++) ss += (double)xn[r * 8 + i] * xn[r * 8 + i];
    for (int i = 0; i < 8; i++) CHECK_NEAR(on[r * 8 + i], xn[r * 8 + i] / sqrt(ss / 8 + 1e-6) * wn[i], 1e-5);
  }
  /* qk norm + rope: rotate-half with theta^(-2j/d) */
  int T = 2, heads = 2, d = 8;
  float qx[32], qw[8], qo[32];
  int32_t pos[2] = {3, 17};
  fill(qx, 32, 10); fill(qw, 8, 11);
  be->qk_norm_rope(be, qo, heads * d, qx, qw, pos, T, heads, d, 1e-6f, 10000.0f);
  for (int t = 0; t < T; t++)
    for (int h = 0; h < heads; h++) {
      const float *xh = qx + (t * heads + h) * d;
      double ss = 0, nrm[8];
      for (int i = 0; i < d; i++) ss += (double)xh[i] * xh[i];
      for (int i = 0; i < d; i++) nrm[i] = xh[i] / sqrt(ss / d + 1e-6) * qw[i];
      for (int j = 0; j < d / 2; j++) {
        double ang = pos[t] * pow(10000.0, -2.0 * j / d);
        CHECK_NEAR(qo[(t * heads + h) * d + j], nrm[j] * cos(ang) - nrm[j + d / 2] * sin(ang), 1e-4);
        CHECK_NEAR(qo[(t * heads + h) * d + j + d / 2], nrm[j + d / 2] * cos(ang) + nrm[j] * sin(ang), 1e-4);
      }
    }
  /* silu * up, gelu_tanh */
  float g[6] = {-3, -0.5f, 0, 0.5f, 2, 9}, u[6] = {1, 2, 3, 4, 5, 6}, so[6], go[6];
  be->silu_mul(be, so, g, u, 1, 6);
  be->gelu_tanh(be, go, g, 6);
  for (int i = 0; i < 6; i++) {
    CHECK_NEAR(so[i], g[i] / (1 + exp(-g[i])) * u[i], 1e-5);
    CHECK_NEAR(go[i], 0.5 * g[i] * (1 + tanh(sqrt(2 / M_PI) * (g[i] + 0.044715 * g[i] * g[i] * g[i]))), 1e-5);
  }
  /* argmax ties go to the lowest index */
  float am[8] = {1, 5, 5, 2, -1, -1, -1, -1};
  int32_t idx[2];
  be->argmax(be, idx, am, 2, 4);
  CHECK_EQ_INT(idx[0], 1);
  CHECK_EQ_INT(idx[1], 0);
}

static void test_fixture_tables(const char *dir) {
  char err[512];
  usbx_bagel_config cfg;
  CHECK(usbx_bagel_read_config(dir, &cfg, err, sizeof err) == 0);
  CHECK_EQ_INT(cfg.vit_layers, 2);        /* JSON says 3; upstream builds one fewer */
  CHECK_EQ_INT(cfg.latent_channels, 4);
  CHECK_EQ_INT(cfg.bos, 1000);
  char *p = usbx_path_join(dir, "ema.safetensors");
  usbx_st_file f;
  CHECK(usbx_st_open(p, &f, err, sizeof err) == 0);
  free(p);
  usbx_wlist L = {0};
  usbx_bagel_enumerate(&cfg, USBX_PART_LLM | USBX_PART_GEN | USBX_PART_VIT, NULL, &L);
  CHECK_EQ_INT(L.n, (long long)f.n);
  for (int i = 0; i < L.n; i++) {
    const usbx_st_tensor *t = usbx_st_find(&f, L.v[i].name);
    CHECKF(t != NULL, "fixture lacks %s", L.v[i].name);
    if (!t) continue;
    CHECK_EQ_INT(t->ndim, L.v[i].ndim);
    for (int k = 0; k < t->ndim; k++) CHECK_EQ_INT(t->shape[k], L.v[i].shape[k]);
  }
  free(L.v);
  const char *tabs[] = {"latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed"};
  for (int i = 0; i < 2; i++) {
    const usbx_st_tensor *t = usbx_st_find(&f, tabs[i]);
    CHECK(t && t->dtype == USBX_F32);
    if (!t) continue;
    int G = (int)lround(sqrt((double)t->shape[0]));
    float *mine = xmalloc(sizeof(float) * (size_t)(t->shape[0] * t->shape[1]));
    usbx_sincos_2d(mine, G, (int)t->shape[1]);
    double mx = 0;
    for (int64_t k = 0; k < t->shape[0] * t->shape[1]; k++) { double dd = fabs(mine[k] - ((const float *)t->data)[k]); if (dd > mx) mx = dd; }
    CHECKF(mx < 1e-6, "%s max diff %g", tabs[i], mx);
    free(mine);
  }
  usbx_st_close(&f);
  /* the autoencoder tensor list */
  usbx_ae_config ae;
  CHECK(usbx_ae_read_config(dir, &ae, err, sizeof err) == 0);
  p = usbx_path_join(dir, "ae.safetensors");
  CHECK(usbx_st_open(p, &f, err, sizeof err) == 0);
  free(p);
  usbx_wlist A = {0};
  usbx_ae_enumerate(&ae, &A);
  CHECK_EQ_INT(A.n, (long long)f.n);
  for (int i = 0; i < A.n; i++) {
    const usbx_st_tensor *t = usbx_st_find(&f, A.v[i].name);
    CHECKF(t != NULL, "fixture lacks %s", A.v[i].name);
    if (t) for (int k = 0; k < t->ndim; k++) CHECK_EQ_INT(t->shape[k], A.v[i].shape[k]);
  }
  free(A.v);
  usbx_st_close(&f);
}

/* KV-cache decoding equals recomputing the whole sequence; a copied context behaves the same. */
static void test_kv_cache(const char *dir) {
  char err[512];
  usbx_bagel *m = usbx_bagel_load(dir, usbx_backend_cpu(), USBX_PART_LLM, err, sizeof err);
  CHECKF(m != NULL, "%s", err);
  if (!m) return;
  const usbx_bagel_config *c = usbx_bagel_cfg(m);
  int32_t prompt[10] = {1000, 5, 17, 300, 2, 999, 41, 7, 88, 1001};
  usbx_ctx *ctx = usbx_ctx_new(m);
  usbx_bagel_prefill_text(m, ctx, prompt, 10, NULL);
  usbx_ctx *copy = usbx_ctx_copy(m, ctx);
  CHECK_EQ_INT(usbx_ctx_len(copy), 10);
  CHECK_EQ_INT(usbx_ctx_pos(copy), 10);
  int32_t out[6];
  float *step = xmalloc(sizeof(float) * 7 * c->vocab);
  int n = usbx_bagel_generate_text(m, ctx, 7, 0, 0, out, step);
  CHECK_EQ_INT(usbx_ctx_len(ctx), 10 + 7);
  /* recompute: one causal prefill of prompt + <|im_start|> + generated tokens */
  int32_t all[17];
  memcpy(all, prompt, sizeof prompt);
  all[10] = c->bos;
  for (int i = 0; i < n; i++) all[11 + i] = out[i];
  usbx_ctx *fresh = usbx_ctx_new(m);
  float *full = xmalloc(sizeof(float) * 17 * c->vocab);
  usbx_bagel_prefill_text(m, fresh, all, 11 + n, full);
  for (int s = 0; s <= n && s < 7; s++) {
    double e = rel_err(step + (size_t)s * c->vocab, full + (size_t)(10 + s) * c->vocab, (size_t)c->vocab);
    CHECKF(e < 1e-5, "decode step %d vs recompute: rel %g", s, e);
  }
  /* the copy continues exactly like the original did */
  int32_t out2[6];
  float *step2 = xmalloc(sizeof(float) * 7 * c->vocab);
  int n2 = usbx_bagel_generate_text(m, copy, 7, 0, 0, out2, step2);
  CHECK_EQ_INT(n2, n);
  CHECK(memcmp(out, out2, sizeof(int32_t) * (size_t)n) == 0);
  CHECK(rel_err(step2, step, (size_t)7 * c->vocab) == 0);
  /* sampling is deterministic per seed */
  usbx_ctx *s1 = usbx_ctx_new(m), *s2 = usbx_ctx_new(m);
  usbx_bagel_prefill_text(m, s1, prompt, 10, NULL);
  usbx_bagel_prefill_text(m, s2, prompt, 10, NULL);
  int32_t a1[6], a2[6];
  int k1 = usbx_bagel_generate_text(m, s1, 7, 1.0, 42, a1, NULL), k2 = usbx_bagel_generate_text(m, s2, 7, 1.0, 42, a2, NULL);
  CHECK(k1 == k2 && memcmp(a1, a2, sizeof(int32_t) * (size_t)k1) == 0);
  usbx_ctx_free(m, s1); usbx_ctx_free(m, s2);
  free(step); free(step2); free(full);
  usbx_ctx_free(m, ctx); usbx_ctx_free(m, copy); usbx_ctx_free(m, fresh);
  usbx_bagel_free(m);
}

/* A checkpoint that lacks a tensor, or has one mis-shaped, is refused by name before compute. */
static void test_load_errors(const char *dir) {
  char err[1024];
  char tmpl[] = "/tmp/usbx-test-XXXXXX";
  char *tmp = mkdtemp(tmpl);
  CHECK(tmp != NULL);
  if (!tmp) return;
  const char *cfgs[] = {"llm_config.json", "vit_config.json", "bagel_config.json", "ae_config.json"};
  for (int i = 0; i < 4; i++) {
    char *s = usbx_path_join(dir, cfgs[i]), *d = usbx_path_join(tmp, cfgs[i]);
    size_t n; char *data = usbx_read_file(s, &n);
    CHECK(data && usbx_write_file_atomic(d, data, n) == 0);
    free(data); free(s); free(d);
  }
  char *src = usbx_path_join(dir, "ema.safetensors"), *dst = usbx_path_join(tmp, "model.safetensors");
  usbx_st_file f;
  CHECK(usbx_st_open(src, &f, err, sizeof err) == 0);
  const char *victim = "language_model.model.layers.1.self_attn.k_norm_moe_gen.weight";
  for (int mode = 0; mode < 2; mode++) {
    usbx_st_decl *decls = xcalloc(f.n, sizeof *decls);
    size_t nd = 0;
    for (size_t i = 0; i < f.n; i++) {
      if (mode == 0 && strcmp(f.t[i].name, victim) == 0) continue;
      decls[nd].name = f.t[i].name; decls[nd].dtype = f.t[i].dtype; decls[nd].ndim = f.t[i].ndim;
      for (int k = 0; k < f.t[i].ndim; k++) decls[nd].shape[k] = f.t[i].shape[k];
      if (mode == 1 && strcmp(f.t[i].name, victim) == 0) decls[nd].shape[0] = f.t[i].shape[0] / 2;
      nd++;
    }
    usbx_st_writer *w = usbx_st_writer_begin(dst, decls, nd, jv_null(), err, sizeof err);
    CHECK(w != NULL);
    for (size_t i = 0; i < f.n && w; i++) {
      if (mode == 0 && strcmp(f.t[i].name, victim) == 0) continue;
      size_t bytes = f.t[i].end - f.t[i].begin;
      if (mode == 1 && strcmp(f.t[i].name, victim) == 0) bytes /= 2;
      CHECK(usbx_st_writer_write(w, f.t[i].data, bytes) == 0);
    }
    CHECK(w && usbx_st_writer_finish(w, err, sizeof err) == 0);
    free(decls);
    err[0] = 0;
    usbx_bagel *m = usbx_bagel_load(tmp, usbx_backend_cpu(), USBX_PART_LLM, err, sizeof err);
    CHECK(m == NULL);
    CHECKF(strstr(err, victim) != NULL, "error does not name the tensor: %s", err);
    if (mode == 0) CHECKF(strstr(err, "usbx-ckpt complete") != NULL, "no hint: %s", err);
    else CHECKF(strstr(err, "[8]") != NULL && strstr(err, "[16]") != NULL, "shapes not named: %s", err);
    usbx_bagel_free(m);
  }
  usbx_st_close(&f);
  /* model.safetensors is preferred over ema.safetensors: with the broken one present, loading fails */
  unlink(dst);
  usbx_bagel *ok = usbx_bagel_load(tmp, usbx_backend_cpu(), USBX_PART_LLM, err, sizeof err);
  CHECKF(ok == NULL && strstr(err, "neither model.safetensors nor ema.safetensors"), "%s", err);
  free(src); free(dst);
  for (int i = 0; i < 4; i++) { char *d = usbx_path_join(tmp, cfgs[i]); unlink(d); free(d); }
  rmdir(tmp);
}

int main(void) {
  usbx_set_progname("test_bagel_llm");
  test_ops_naive();
  test_attention_rule();
  const char *shared = t_shared();
  if (!shared) { fprintf(stderr, "skipped: ../shared is missing (fixture parts not run)\n"); return t_fails ? 1 : 77; }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/fixtures/bagel-tiny-a", shared);
  test_fixture_tables(dir);
  test_kv_cache(dir);
  test_load_errors(dir);
  return t_done("test_bagel_llm");
}
