/* bagel_gen.c — the generation side of BAGEL: timestep embedding, latent tokens, the denoising
 * query against a context's cache, CFG and Euler steps (spec 5 and 7.1-7.3). */
#include "bagel.h"
#include "bagel_internal.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

void usbx_gen_defaults(usbx_gen_opts *o) {
  *o = (usbx_gen_opts){.steps = 50, .shift = 3.0f, .cfg_text = 4.0f, .cfg_img = 1.0f, .interval = {0.4f, 1.0f},
                       .renorm = USBX_RENORM_GLOBAL, .renorm_min = 0.0f};
}

void usbx_gen_timesteps(int steps, float shift, float *sigma) {
  /* torch.linspace on the CPU: the first half from the start, the second half from the end */
  float step = steps > 1 ? (0.0f - 1.0f) / (float)(steps - 1) : 0.0f;
  int half = steps / 2;
  for (int i = 0; i < steps; i++) {
    float t = i < half ? 1.0f + step * (float)i : 0.0f - step * (float)(steps - 1 - i);
    sigma[i] = shift * t / (1.0f + (shift - 1.0f) * t);
  }
}

int usbx_bagel_latent_tokens(const usbx_bagel *m, int H, int W, int *h, int *w, int *P) {
  const usbx_bagel_config *c = &m->cfg;
  int ds = c->vae_downsample * c->latent_patch;
  if (H <= 0 || W <= 0 || H % ds || W % ds) return -1;
  *h = H / ds; *w = W / ds;
  if (*h > c->max_latent || *w > c->max_latent) return -1;
  *P = c->latent_patch * c->latent_patch * c->latent_channels;
  return 0;
}

/* [cos(sigma f_j), sin(sigma f_j)], f_j = exp(-ln(10000) j / 128) in fp32 (mutils.py). */
void usbx_timestep_features(float sigma, float *feat) {
  for (int j = 0; j < 128; j++) {
    float f = expf(-logf(10000.0f) * (float)j / 128.0f);
    float a = sigma * f;
    feat[j] = cosf(a);
    feat[128 + j] = sinf(a);
  }
}

/* The time embedding rows of every sigma: out (device f32 [n, D]). */
void usbx_bagel_time_embed(usbx_bagel *m, const float *sigmas, int n, float *out) {
  usbx_backend *be = m->be;
  int D = m->cfg.hidden;
  size_t mm = usbx_dtype_size(be->mm_dtype);
  float *feat = xmalloc(sizeof(float) * 256 * (size_t)n);
  for (int i = 0; i < n; i++) usbx_timestep_features(sigmas[i], feat + 256 * (size_t)i);
  float *d_feat = be->alloc(be, sizeof(float) * 256 * (size_t)n), *hid = be->alloc(be, sizeof(float) * (size_t)n * D);
  void *in_mm = be->alloc(be, mm * (size_t)n * (D > 256 ? D : 256));
  be->upload(be, d_feat, feat, sizeof(float) * 256 * (size_t)n);
  usbx_bagel_head(m, hid, d_feat, m->te_w1, m->te_w1_32, m->te_b1, n, D, 256, in_mm);
  be->silu(be, hid, hid, (size_t)n * D);
  usbx_bagel_head(m, out, hid, m->te_w2, m->te_w2_32, m->te_b2, n, D, D, in_mm);
  be->sync(be);
  be->free(be, d_feat); be->free(be, hid); be->free(be, in_mm);
  free(feat);
}

typedef struct {
  int N, P, D;
  float *pos_rows;     /* [N, D] latent_pos_embed rows of this grid */
  float *te;           /* [n_steps, D] */
  void *x_mm;          /* [N, P] */
  float *mark;         /* [2, D] embeddings of <|vision_start|>, <|vision_end|> */
} gen_state;

/* The velocities of one sampling step for B tasks and k active CFG branch kinds in one batched
 * forward of nb = k*B branches, kind-major (cond of every task, then text-uncond, then
 * img-uncond): each branch queries [<|vision_start|>, <|vision_end|> | N latents] at its context's
 * next position, non-causal, not cached (the two markers sit together: inside the block every
 * token sees every other, so their order is immaterial).  x_t: device [B, N, P].  v (device
 * [nb, N, P]) = llm2vae of each branch's latents.  The positions (d_pos) were laid out by the
 * caller. */
static void step_velocities(usbx_bagel *m, usbx_ctx **cs, int B, int k, gen_state *g, const float *x_t, int step, float *v) {
  usbx_backend *be = m->be;
  int N = g->N, P = g->P, D = g->D, nb = k * B, U = 2 * nb;
  size_t BND = (size_t)B * N * D;
  for (int b = 0; b < nb; b++) be->copy(be, m->x + (size_t)2 * b * D, g->mark, sizeof(float) * 2 * (size_t)D);
  float *lat = m->x + (size_t)U * D;
  usbx_bagel_head(m, lat, x_t, m->vae2llm_w, m->vae2llm_w32, m->vae2llm_b, B * N, D, P, g->x_mm);
  for (int b = 0; b < B; b++) be->add(be, lat + (size_t)b * N * D, g->pos_rows, (size_t)N * D);
  be->add_row(be, lat, g->te + (size_t)step * D, B * N, D);
  for (int j = 1; j < k; j++) be->copy(be, lat + (size_t)j * BND, lat, sizeof(float) * BND);   /* same x_t for every branch of a task */
  usbx_bagel_forward_branches(m, cs, nb, 2, N);
  usbx_bagel_head(m, v, lat, m->llm2vae_w, m->llm2vae_w32, m->llm2vae_b, nb * N, P, D, m->h_mm);
}

/* positions of a batched step: markers of branch b, then latents of branch b, each at its context's position */
static void step_positions(usbx_bagel *m, usbx_ctx **cs, int nb, int N) {
  int U = 2 * nb, T = U + nb * N;
  int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)T);
  for (int b = 0; b < nb; b++) {
    pos[2 * b] = pos[2 * b + 1] = usbx_ctx_pos(cs[b]);
    for (int i = 0; i < N; i++) pos[U + b * N + i] = usbx_ctx_pos(cs[b]);
  }
  m->be->upload(m->be, m->d_pos, pos, sizeof(int32_t) * (size_t)T);
  free(pos);
}

static int gen_branch_kinds(const usbx_gen_opts *o) { return 1 + (o->cfg_text > 1.0f) + (o->cfg_text > 1.0f && o->cfg_img > 1.0f); }

size_t usbx_bagel_gen_batch_bytes(const usbx_bagel *m, int B, int H, int W, const usbx_gen_opts *o) {
  int h, w, P;
  if (usbx_bagel_latent_tokens(m, H, W, &h, &w, &P)) return 0;
  const usbx_bagel_config *c = &m->cfg;
  size_t k = (size_t)gen_branch_kinds(o), N = (size_t)h * w;
  size_t kv = (N + 2) * (size_t)c->kv_heads * c->head_dim * 2 * usbx_dtype_size(m->be->mm_dtype) * (size_t)c->layers;
  return usbx_bagel_scratch_bytes(m, (int)(k * B * (N + 2))) + (size_t)B * (sizeof(float) * N * P * (2 + k) + k * kv);
}

void usbx_bagel_generate_latent(usbx_bagel *m, usbx_ctx *cond, usbx_ctx *text_uncond, usbx_ctx *img_uncond,
                                int H, int W, const usbx_gen_opts *o, const float *noise, float *latent, usbx_gen_trace *trace) {
  usbx_bagel_generate_latents(m, 1, &cond, &text_uncond, &img_uncond, H, W, o, noise, latent, trace);
}

void usbx_bagel_generate_latents(usbx_bagel *m, int B, usbx_ctx *const *cond, usbx_ctx *const *text_uncond, usbx_ctx *const *img_uncond,
                                 int H, int W, const usbx_gen_opts *o, const float *noise, float *latent, usbx_gen_trace *trace) {
  usbx_backend *be = m->be;
  const usbx_bagel_config *cf = &m->cfg;
  if (!m->vae2llm_w) usbx_die("the model was loaded without its generation weights");
  if (B < 1 || (trace && B != 1)) usbx_die("usbx_bagel_generate_latents: %d tasks (a trace needs exactly one)", B);
  int h, w, P;
  if (usbx_bagel_latent_tokens(m, H, W, &h, &w, &P))
    usbx_die("image size %dx%d: sides must be multiples of %d and at most %d", W, H, cf->vae_downsample * cf->latent_patch,
             cf->max_latent * cf->vae_downsample * cf->latent_patch);
  int N = h * w, D = cf->hidden, S = o->steps;
  if (S < 2) usbx_die("--steps must be at least 2");
  int max_k = gen_branch_kinds(o);
  usbx_bagel_scratch(m, max_k * B * (N + 2));
  gen_state g = {.N = N, .P = P, .D = D};
  size_t mm = usbx_dtype_size(be->mm_dtype);
  /* constant parts, computed once before the loop */
  float *sigma = xmalloc(sizeof(float) * (size_t)S);
  usbx_gen_timesteps(S, o->shift, sigma);
  g.te = be->alloc(be, sizeof(float) * (size_t)(S - 1) * D);
  usbx_bagel_time_embed(m, sigma, S - 1, g.te);
  int32_t *pid = xmalloc(sizeof(int32_t) * (size_t)N);
  for (int r = 0; r < h; r++) for (int c = 0; c < w; c++) pid[r * w + c] = r * cf->max_latent + c;
  int32_t *d_pid = be->alloc(be, sizeof(int32_t) * (size_t)N);
  be->upload(be, d_pid, pid, sizeof(int32_t) * (size_t)N);
  g.pos_rows = be->alloc(be, sizeof(float) * (size_t)N * D);
  be->gather_rows(be, g.pos_rows, m->latent_pos, d_pid, N, D);
  g.mark = be->alloc(be, sizeof(float) * 2 * (size_t)D);
  int32_t marks[2] = {cf->vis_start, cf->vis_end};
  if (marks[0] < 0 || marks[1] < 0) usbx_die("the model has no <|vision_start|>/<|vision_end|> ids");
  int32_t *d_marks = be->alloc(be, sizeof marks);
  be->upload(be, d_marks, marks, sizeof marks);
  be->embed(be, g.mark, m->embed, d_marks, 2, D);
  size_t NP = (size_t)N * P, BNP = (size_t)B * NP;
  g.x_mm = be->alloc(be, mm * BNP);
  float *x = be->alloc(be, sizeof(float) * BNP), *vall = be->alloc(be, sizeof(float) * BNP * (size_t)max_k),
        *v = be->alloc(be, sizeof(float) * NP);
  be->upload(be, x, noise, sizeof(float) * BNP);
  usbx_ctx **cs = xmalloc(sizeof(usbx_ctx *) * (size_t)(3 * B));
  int last_k = -1;
  for (int i = 0; i < S - 1; i++) {
    bool in = o->interval[0] < sigma[i] && sigma[i] <= o->interval[1];
    float st = in ? o->cfg_text : 1.0f, si = in ? o->cfg_img : 1.0f;
    if (trace && trace->x_t) be->download(be, trace->x_t + (size_t)i * NP, x, sizeof(float) * NP);
    bool use_u = st > 1.0f, use_i = use_u && si > 1.0f;   /* the image branch only matters with text CFG */
    int k = 1 + use_u + use_i;
    for (int b = 0; b < B; b++) {
      if (use_u && !text_uncond[b]) usbx_die("cfg_text > 1 needs a text-unconditional context");
      if (use_i && !img_uncond[b]) usbx_die("cfg_img > 1 needs an image-unconditional context");
      cs[b] = cond[b];
      if (use_u) cs[B + b] = text_uncond[b];
      if (use_i) cs[2 * B + b] = img_uncond[b];
    }
    if (k != last_k) { step_positions(m, cs, k * B, N); last_k = k; }
    step_velocities(m, cs, B, k, &g, x, i, vall);
    usbx_cfg_args a = {.N = N, .P = P, .cfg_text = st, .cfg_img = si, .renorm_min = o->renorm_min,
                       .dt = sigma[i] - sigma[i + 1], .renorm = o->renorm};
    if (trace) {
      if (trace->v_cond) be->download(be, trace->v_cond + (size_t)i * NP, vall, sizeof(float) * NP);
      if (trace->v_text_uncond && use_u) be->download(be, trace->v_text_uncond + (size_t)i * NP, vall + NP, sizeof(float) * NP);
      if (trace->v_img_uncond && use_i) be->download(be, trace->v_img_uncond + (size_t)i * NP, vall + 2 * NP, sizeof(float) * NP);
    }
    for (int b = 0; b < B; b++)
      be->cfg_euler(be, x + b * NP, v, vall + b * NP, use_u ? vall + (B + b) * NP : NULL, use_i ? vall + (2 * B + b) * NP : NULL, &a);
    if (trace && trace->v) be->download(be, trace->v + (size_t)i * NP, v, sizeof(float) * NP);
  }
  be->download(be, latent, x, sizeof(float) * BNP);
  be->sync(be);
  void *bufs[] = {g.te, d_pid, g.pos_rows, g.mark, d_marks, g.x_mm, x, vall, v};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
  free(sigma); free(pid); free(cs);
}
