/* fixtures.c — see fixtures.h.  One line per case group (text, vlm, vit, vae, gen, edit, train):
 * the group, ‖out−ref‖/‖ref‖ and max-abs of its worst tensor, the tolerance, then ok / FAIL /
 * skipped (a capability that does not exist yet is reported, never silently absent). */
#include "fixtures.h"
#include "bagel.h"
#include "cli.h"
#include "safetensors.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *dir;
  usbx_st_file cases;
  usbx_bagel *model;
  usbx_backend *be;
  double tol;
  int failed, skipped;
} checker;

typedef struct { double rel, maxabs; char worst[96]; bool bad; char why[256]; } group_result;

/* A case tensor converted to f32 / int64 host copies. */
static float *case_f32(checker *k, const char *name, int64_t *numel, int ndim_expect, int64_t *shape) {
  const usbx_st_tensor *t = usbx_st_find(&k->cases, name);
  if (!t) return NULL;
  size_t n = (size_t)usbx_shape_numel(t->ndim, t->shape);
  float *out = xmalloc(sizeof(float) * (n ? n : 1));
  if (!usbx_convert(t->data, t->dtype, out, USBX_F32, n)) { free(out); return NULL; }
  if (numel) *numel = (int64_t)n;
  if (shape) for (int i = 0; i < t->ndim && i < ndim_expect; i++) shape[i] = t->shape[i];
  return out;
}

static int32_t *case_ids(checker *k, const char *name, int *n) {
  const usbx_st_tensor *t = usbx_st_find(&k->cases, name);
  if (!t || t->dtype != USBX_I64 || t->ndim != 1) return NULL;
  *n = (int)t->shape[0];
  int32_t *out = xmalloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
  const int64_t *s = t->data;
  for (int i = 0; i < *n; i++) out[i] = (int32_t)s[i];
  return out;
}

static void compare(group_result *g, const char *name, const float *out, const float *ref, size_t n) {
  double num = 0, den = 0, mx = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)out[i] - (double)ref[i];
    if (!isfinite(out[i])) d = INFINITY;
    num += d * d; den += (double)ref[i] * ref[i];
    if (fabs(d) > mx || isnan(d)) mx = fabs(d);
  }
  double rel = den > 0 ? sqrt(num) / sqrt(den) : sqrt(num);
  if (isnan(rel)) rel = INFINITY;
  if (rel > g->rel || g->worst[0] == 0) { g->rel = rel; snprintf(g->worst, sizeof g->worst, "%s", name); }
  if (mx > g->maxabs) g->maxabs = mx;
}

static void report(checker *k, const char *group, group_result *g, bool skipped, const char *skip_why) {
  if (skipped) {
    printf("%-6s skipped (%s)\n", group, skip_why);
    k->skipped++;
    return;
  }
  bool fail = g->bad || !(g->rel <= k->tol);
  printf("%-6s rel %.3g max-abs %.3g (worst %s) tol %.0e %s%s%s\n", group, g->rel, g->maxabs, g->worst[0] ? g->worst : "-",
         k->tol, fail ? "FAIL" : "ok", g->why[0] ? ": " : "", g->why);
  if (fail) k->failed++;
  fflush(stdout);
}

static bool has_prefix_tensor(checker *k, const char *prefix) {
  size_t n = strlen(prefix);
  for (size_t i = 0; i < k->cases.n; i++)
    if (strncmp(k->cases.t[i].name, prefix, n) == 0) return true;
  return false;
}

/* text / vlm-style case: prefill the prompt, compare logits, greedy-decode, compare step logits
 * and ids.  prefix = "text" (the vlm group needs the ViT and is handled by its own runner). */
static void run_text(checker *k) {
  group_result g = {0};
  int np = 0, nt = 0;
  int32_t *ids = case_ids(k, "text_prefill_ids", &np);
  int32_t *ref_tok = case_ids(k, "text_decode_tokens", &nt);
  int64_t sh_pre[2] = {0}, sh_dec[2] = {0};
  float *ref_pre = case_f32(k, "text_prefill_logits", NULL, 2, sh_pre);
  float *ref_dec = case_f32(k, "text_decode_logits", NULL, 2, sh_dec);
  const usbx_bagel_config *cf = usbx_bagel_cfg(k->model);
  if (!ids || !ref_tok || !ref_pre || !ref_dec || sh_pre[0] != np || sh_pre[1] != cf->vocab || sh_dec[0] != nt || sh_dec[1] != cf->vocab) {
    g.bad = true;
    snprintf(g.why, sizeof g.why, "text_* tensors missing or with unexpected shapes");
  } else {
    usbx_ctx *c = usbx_ctx_new(k->model);
    float *pre = xmalloc(sizeof(float) * (size_t)np * cf->vocab);
    usbx_bagel_prefill_text(k->model, c, ids, np, pre);
    compare(&g, "text_prefill_logits", pre, ref_pre, (size_t)np * cf->vocab);
    float *dec = xcalloc((size_t)nt * cf->vocab, sizeof(float));
    int32_t *out = xcalloc((size_t)nt, sizeof(int32_t));
    int n = usbx_bagel_generate_text(k->model, c, nt, 0.0, 0, out, dec);
    /* the reference holds every step's logits, including steps after an early <|im_end|> */
    compare(&g, "text_decode_logits", dec, ref_dec, (size_t)(n + 1 < nt ? n + 1 : nt) * cf->vocab);
    if (ref_tok[0] != cf->bos) { g.bad = true; snprintf(g.why, sizeof g.why, "text_decode_tokens[0] %d is not <|im_start|> %d", ref_tok[0], cf->bos); }
    int mism = -1;
    for (int i = 0; i + 1 < nt; i++) if (i >= n || out[i] != ref_tok[i + 1]) { mism = i; break; }
    if (mism >= 0) { g.bad = true; snprintf(g.why, sizeof g.why, "greedy ids differ at step %d (%d vs %d)", mism + 1, mism < n ? out[mism] : -1, ref_tok[mism + 1]); }
    else if (!g.why[0]) snprintf(g.why, sizeof g.why, "greedy ids equal (%d)", n);
    free(pre); free(dec); free(out);
    usbx_ctx_free(k->model, c);
  }
  report(k, "text", &g, false, NULL);
  free(ids); free(ref_tok); free(ref_pre); free(ref_dec);
}

int usbx_check_fixtures_main(int argc, char **argv) {
  const char *device = "cpu";
  bool strict = false;
  double tol = 0;
  usbx_opt opts[] = {
    {"device", USBX_OPT_STR, &device, "cpu|cuda|auto", "backend to check (default cpu)", false},
    {"tol", USBX_OPT_DOUBLE, &tol, "X", "relative tolerance (default 1e-4 on cpu, 1e-2 on cuda)", false},
    {"strict", USBX_OPT_FLAG, &strict, NULL, "also fail when a group is skipped", false},
    {0},
  };
  char **pos; int npos;
  usbx_cli_parse(argc, argv, opts, "usbx-ckpt check-fixtures [--device D] [--strict] DIR",
                 "Runs every case of a fixture folder (cases.safetensors + cases.json + a checkpoint, in the format of\n"
                 "bagel-tiny-a) and prints one line per case group: the largest relative error, the max-abs error,\n"
                 "the tolerance, and ok, FAIL or skipped.", &pos, &npos);
  if (npos != 1) usbx_usage_die("expected one fixture folder");
  checker k = {0};
  k.dir = pos[0];
  free(pos);
  char err[1024];
  char *cp = usbx_path_join(k.dir, "cases.safetensors");
  if (usbx_st_open(cp, &k.cases, err, sizeof err)) { free(cp); usbx_die("%s", err); }
  free(cp);
  k.be = usbx_backend_open(device);
  k.tol = tol > 0 ? tol : (k.be->dev == USBX_DEV_CPU ? 1e-4 : 1e-2);
  printf("# fixtures %s, backend %s\n", k.dir, k.be->name);
  k.model = usbx_bagel_load(k.dir, k.be, USBX_PART_LLM, err, sizeof err);
  if (!k.model) usbx_die("%s", err);

  const char *groups[] = {"text", "vlm", "vit", "vae", "gen", "edit", "train"};
  for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%s_", groups[i]);
    bool present = has_prefix_tensor(&k, prefix) || (strcmp(groups[i], "train") == 0 && has_prefix_tensor(&k, "grad."));
    if (!present) { printf("%-6s skipped (no %s* tensors in cases.safetensors)\n", groups[i], prefix); k.skipped++; continue; }
    if (strcmp(groups[i], "text") == 0) run_text(&k);
    else report(&k, groups[i], NULL, true, "capability not implemented yet");
  }
  usbx_bagel_free(k.model);
  usbx_st_close(&k.cases);
  usbx_backend_close(k.be);
  printf("# %d failed, %d skipped\n", k.failed, k.skipped);
  return k.failed || (strict && k.skipped) ? 1 : 0;
}
