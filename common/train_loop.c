/* train_loop.c — see train_loop.h.
 *
 * Checkpoints go to OUT/<step:07d>/ (upstream's naming), written into a temporary folder that is
 * renamed into place once every file is fsynced, so a kill never leaves a partial checkpoint:
 *   model.safetensors      every loaded tensor in fp32 (the trained master weights)
 *   ema.safetensors        the EMA weights in fp32 (untrained tensors as they are)
 *   optimizer.safetensors  AdamW moments m.<name>, v.<name>
 *   train_state.json       step, data position, seed and the options that shape the run
 * All randomness is derived from (seed, epoch, sample), so resuming from a checkpoint replays
 * exactly the batches an uninterrupted run would have seen. */
#include "train_loop.h"
#include "bagel_internal.h"
#include "jsonl.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "util.h"
#include "vae.h"
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void usbx_train_defaults(usbx_train_opts *o) {
  memset(o, 0, sizeof *o);
  o->device = "auto";
  o->lr = 1e-4; o->min_lr = 1e-7; o->beta1 = 0.9; o->beta2 = 0.95; o->eps = 1e-15; o->weight_decay = 0.0;
  o->clip = 1.0; o->ema = 0.9999; o->ce_weight = 1.0; o->mse_weight = 1.0;
  o->warmup = 2000; o->steps = 0; o->epochs = 0; o->save_every = 0; o->log_every = 1;
  o->data = (usbx_data_opts){.expected_tokens = 32768, .max_tokens = 36864, .max_tokens_per_sample = 16384,
                             .text_cond_dropout = 0.1f, .timestep_shift = 1.0f, .seed = 4396, .visual_gen = true, .visual_und = true};
}

typedef struct {
  usbx_wdesc *d;
  void *w;            /* the model's buffer (mm or f32) */
  float *master;      /* fp32 master (== w when w is f32) */
  float *g, *m, *v, *ema;
  size_t n;
  bool trained;
} param;

typedef struct {
  usbx_backend *be;
  usbx_bagel *m;
  usbx_trainer *tr;
  usbx_wlist wl;
  param *p;
  int np;
} state;

/* host f32 copy of a device buffer that holds mm or f32 values */
static void download_f32(usbx_backend *be, const void *src, bool mm, size_t n, float *dst) {
  if (!mm || be->mm_dtype == USBX_F32) { be->download(be, dst, src, sizeof(float) * n); return; }
  uint16_t *tmp = xmalloc(2 * n);
  be->download(be, tmp, src, 2 * n);
  usbx_convert(tmp, be->mm_dtype, dst, USBX_F32, n);
  free(tmp);
}

/* Writes one safetensors file from device buffers: which = 0 weights (masters), 1 EMA, 2 optimizer. */
static int save_file(state *S, const char *path, int which, char *err, size_t errlen) {
  usbx_backend *be = S->be;
  int nd = 0;
  usbx_st_decl *decls = xcalloc((size_t)S->np * 2, sizeof *decls);
  char **names = xcalloc((size_t)S->np * 2, sizeof *names);
  for (int i = 0; i < S->np; i++) {
    param *p = &S->p[i];
    if (which == 2 && !p->trained) continue;
    for (int k = 0; k < (which == 2 ? 2 : 1); k++) {
      names[nd] = which == 2 ? xasprintf("%s.%s", k ? "v" : "m", p->d->name) : xstrdup(p->d->name);
      decls[nd].name = names[nd]; decls[nd].dtype = USBX_F32; decls[nd].ndim = p->d->ndim;
      for (int j = 0; j < p->d->ndim; j++) decls[nd].shape[j] = p->d->shape[j];
      nd++;
    }
  }
  jv meta = jv_object_set(jv_object(), jv_string("format"), jv_string("pt"));
  usbx_st_writer *w = usbx_st_writer_begin(path, decls, (size_t)nd, meta, err, errlen);
  int rc = w ? 0 : -1;
  float *host = NULL;
  size_t cap = 0;
  for (int i = 0; rc == 0 && i < S->np; i++) {
    param *p = &S->p[i];
    if (which == 2 && !p->trained) continue;
    if (p->n > cap) { cap = p->n; host = xrealloc(host, sizeof(float) * cap); }
    for (int k = 0; rc == 0 && k < (which == 2 ? 2 : 1); k++) {
      if (which == 0) download_f32(be, p->trained ? (void *)p->master : p->w, p->trained ? false : p->d->mm, p->n, host);
      else if (which == 1) download_f32(be, p->trained ? (void *)p->ema : p->w, p->trained ? false : p->d->mm, p->n, host);
      else be->download(be, host, k ? p->v : p->m, sizeof(float) * p->n);
      rc = usbx_st_writer_write(w, host, sizeof(float) * p->n);
    }
  }
  free(host);
  if (rc == 0) rc = usbx_st_writer_finish(w, err, errlen);
  else if (w) { snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno)); usbx_st_writer_abort(w); }
  for (int i = 0; i < nd; i++) free(names[i]);
  free(names); free(decls);
  return rc;
}

static int save_checkpoint(state *S, const usbx_train_opts *o, long step, const usbx_data_pos *pos, char *err, size_t errlen) {
  char *final = xasprintf("%s/%07ld", o->out, step), *tmp = xasprintf("%s/.%07ld.tmp.%ld", o->out, step, (long)getpid());
  if (usbx_mkdirs(tmp)) { snprintf(err, errlen, "%s: %s", tmp, strerror(errno)); free(final); free(tmp); return -1; }
  const char *files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors"};
  int rc = 0;
  for (int i = 0; i < 3 && rc == 0; i++) {
    char *p = usbx_path_join(tmp, files[i]);
    rc = save_file(S, p, i, err, errlen);
    free(p);
  }
  if (rc == 0) {
    jv st = jv_object();
    st = usbx_jv_set_num(st, "step", (double)step);
    st = usbx_jv_set_num(st, "epoch", pos->epoch);
    st = usbx_jv_set_num(st, "index", pos->index);
    st = usbx_jv_set_num(st, "seed", (double)o->data.seed);
    st = usbx_jv_set_str(st, "base_model", o->model);
    char *s = usbx_jv_dump(st);
    jv_free(st);
    char *p = usbx_path_join(tmp, "train_state.json");
    rc = usbx_write_file_atomic(p, s, strlen(s));
    if (rc) snprintf(err, errlen, "%s: %s", p, strerror(errno));
    free(p); free(s);
  }
  if (rc == 0) {
    /* a checkpoint of the same step left by an earlier run is replaced as a whole */
    char *old = xasprintf("%s.old.%ld", final, (long)getpid());
    bool had = rename(final, old) == 0;
    if (rename(tmp, final) != 0) { snprintf(err, errlen, "%s: %s", final, strerror(errno)); rc = -1; if (had) rename(old, final); }
    else if (had) { char *cmd = xasprintf("rm -rf '%s'", old); if (system(cmd) != 0) usbx_err("%s: could not remove", old); free(cmd); }
    usbx_fsync_dir(o->out);
    free(old);
  }
  if (rc) { char *cmd = xasprintf("rm -rf '%s'", tmp); if (system(cmd) != 0) usbx_err("%s: could not remove", tmp); free(cmd); }
  free(final); free(tmp);
  return rc;
}

/* the newest OUT/NNNNNNN with a train_state.json; -1 if none */
static long latest_checkpoint(const char *out) {
  DIR *d = opendir(out);
  if (!d) return -1;
  long best = -1;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strlen(e->d_name) != 7 || strspn(e->d_name, "0123456789") != 7) continue;
    char *p = xasprintf("%s/%s/train_state.json", out, e->d_name);
    if (usbx_file_exists(p)) { long s = atol(e->d_name); if (s > best) best = s; }
    free(p);
  }
  closedir(d);
  return best;
}

static int load_into(state *S, const char *path, int which, char *err, size_t errlen) {
  usbx_st_file f;
  if (usbx_st_open(path, &f, err, errlen)) return -1;
  int rc = 0;
  for (int i = 0; rc == 0 && i < S->np; i++) {
    param *p = &S->p[i];
    if (!p->trained) continue;
    for (int k = 0; rc == 0 && k < (which == 2 ? 2 : 1); k++) {
      char *name = which == 2 ? xasprintf("%s.%s", k ? "v" : "m", p->d->name) : xstrdup(p->d->name);
      const usbx_st_tensor *t = usbx_st_find(&f, name);
      if (!t || t->dtype != USBX_F32 || (size_t)usbx_shape_numel(t->ndim, t->shape) != p->n) {
        snprintf(err, errlen, "%s: missing or mis-shaped %s", path, name);
        rc = -1;
      } else {
        float *dst = which == 0 ? p->master : which == 1 ? p->ema : k ? p->v : p->m;
        S->be->upload(S->be, dst, t->data, sizeof(float) * p->n);
        if (which == 0 && (void *)p->master != p->w) S->be->upload_convert(S->be, p->w, true, t->data, USBX_F32, p->n);
      }
      free(name);
    }
  }
  S->be->sync(S->be);
  usbx_st_close(&f);
  return rc;
}

static double lr_at(const usbx_train_opts *o, long k, long total) {
  /* upstream: lr * min(1, k / warmup) with k counted from 0 at the first update */
  double warm = o->warmup > 0 ? fmin(1.0, (double)k / (double)o->warmup) : 1.0;
  if (!o->cosine || k < o->warmup || total <= o->warmup) return o->lr * warm;
  double prog = (double)(k - o->warmup) / (double)(total - o->warmup);
  if (prog > 1) prog = 1;
  return o->min_lr + 0.5 * (o->lr - o->min_lr) * (1.0 + cos(M_PI * prog));
}

int usbx_train_run(const usbx_train_opts *o) {
  char err[1024];
  usbx_backend *be = usbx_backend_open(o->device);
  unsigned parts = USBX_PART_LLM | (o->data.visual_gen ? USBX_PART_GEN : 0) | (o->data.visual_und ? USBX_PART_VIT : 0);
  usbx_bagel *m = usbx_bagel_load(o->model, be, parts, err, sizeof err);
  if (!m) usbx_die("%s", err);
  usbx_tokenizer *tok = usbx_tok_load(o->tokenizer ? o->tokenizer : o->model, err, sizeof err);
  if (!tok) usbx_die("%s", err);
  usbx_bagel_ids ids;
  if (usbx_tok_bagel_ids(tok, &ids, err, sizeof err) == 0) usbx_bagel_set_special_ids(m, ids.bos, ids.eos, ids.start_of_image, ids.end_of_image);
  const usbx_bagel_config *cf = usbx_bagel_cfg(m);
  if (cf->bos < 0 || cf->vis_start < 0) usbx_die("%s: no special token ids (tokenizer or bagel_config.json)", o->model);
  usbx_vae *vae = NULL;
  if (o->data.visual_gen && cf->has_vae) { vae = usbx_vae_load(o->model, be, err, sizeof err); if (!vae) usbx_die("%s", err); }
  usbx_train_data *data = usbx_train_data_load(o->files, o->nfiles, cf, tok, vae, &o->data, err, sizeof err);
  if (!data) usbx_die("%s", err);
  if (usbx_train_data_skipped(data)) usbx_err("%d samples longer than --max-tokens-per-sample skipped", usbx_train_data_skipped(data));
  usbx_vae_free(vae);

  const char *frozen[4] = {0};
  int nf = 0;
  if (o->freeze_llm) frozen[nf++] = "language_model.";
  if (o->freeze_vit) frozen[nf++] = "vit_model.";
  state S = {.be = be, .m = m};
  S.tr = usbx_trainer_new(m, frozen);
  usbx_bagel_enumerate(cf, parts, m, &S.wl);
  S.p = xcalloc((size_t)S.wl.n, sizeof *S.p);
  S.np = S.wl.n;
  int64_t n_trained = 0;   /* parameters that receive updates */
  /* fp32 masters: the weights file read again in fp32 (a bf16 device copy would lose bits) */
  char *wpath = usbx_path_join(o->model, "model.safetensors");
  if (!usbx_file_exists(wpath)) { free(wpath); wpath = usbx_path_join(o->model, "ema.safetensors"); }
  usbx_st_file wf;
  bool need_masters = be->mm_dtype != USBX_F32;
  if (need_masters && usbx_st_open(wpath, &wf, err, sizeof err)) usbx_die("%s", err);
  for (int i = 0; i < S.np; i++) {
    param *p = &S.p[i];
    p->d = &S.wl.v[i];
    p->w = *p->d->dst;
    p->n = (size_t)usbx_shape_numel(p->d->ndim, p->d->shape);
    p->g = usbx_trainer_grad(S.tr, p->d->name, NULL);
    p->trained = p->g != NULL;
    if (!p->trained) continue;
    n_trained += (int64_t)p->n;
    if (p->d->mm && need_masters) {
      p->master = be->alloc(be, sizeof(float) * p->n);
      const usbx_st_tensor *t = usbx_st_find(&wf, p->d->name);
      be->upload_convert(be, p->master, false, t->data, t->dtype, p->n);
    } else p->master = p->w;
    p->m = be->alloc(be, sizeof(float) * p->n); be->memset0(be, p->m, sizeof(float) * p->n);
    p->v = be->alloc(be, sizeof(float) * p->n); be->memset0(be, p->v, sizeof(float) * p->n);
    p->ema = be->alloc(be, sizeof(float) * p->n); be->copy(be, p->ema, p->master, sizeof(float) * p->n);
  }
  if (need_masters) usbx_st_close(&wf);
  free(wpath);
  usbx_err("training %lld parameters on %s", (long long)n_trained, be->name);

  long step = 0;
  usbx_data_pos pos = {0, 0};
  if (usbx_mkdirs(o->out)) usbx_die("%s: %s", o->out, strerror(errno));
  if (o->resume) {
    long last = latest_checkpoint(o->out);
    if (last >= 0) {
      char *dir = xasprintf("%s/%07ld", o->out, last);
      const char *files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors"};
      for (int i = 0; i < 3; i++) {
        char *p = usbx_path_join(dir, files[i]);
        if (load_into(&S, p, i, err, sizeof err)) usbx_die("%s", err);
        free(p);
      }
      char *sp = usbx_path_join(dir, "train_state.json");
      size_t len;
      char *js = usbx_read_file(sp, &len);
      jv st = js ? jv_parse_sized(js, (int)len) : jv_invalid();
      double v;
      if (!jv_is_valid(st) || !usbx_jv_num(st, "step", &v)) usbx_die("%s: unreadable", sp);
      step = (long)v;
      if (usbx_jv_num(st, "epoch", &v)) pos.epoch = (int)v;
      if (usbx_jv_num(st, "index", &v)) pos.index = (int)v;
      if (usbx_jv_num(st, "seed", &v) && (uint64_t)v != o->data.seed) usbx_err("warning: resuming a run made with seed %.0f under seed %llu", v, (unsigned long long)o->data.seed);
      jv_free(st); free(js); free(sp);
      usbx_err("resumed from %s (step %ld, epoch %d, sample %d)", dir, step, pos.epoch, pos.index);
      free(dir);
    }
  }
  long total = o->steps;
  if (!total && !o->epochs) usbx_usage_die("give --steps or --epochs");
  float *acc = be->alloc(be, sizeof(float));
  /* model FLOPs of a training step: every token passes through one expert's layers
   * (6 x those weights: forward + backward), plus attention, 12 x L x (H*d) x S^2 per sample of
   * S tokens (QK^T and PV forward, twice that backward), counted as if fully visible */
  double layer_w = (double)cf->hidden * ((double)cf->heads * cf->head_dim * 2 + 2.0 * cf->kv_heads * cf->head_dim) + 3.0 * cf->hidden * cf->inter;
  double flops_per_token = 6.0 * cf->layers * layer_w;
  int rc = 0;
  while ((total && step < total) || (!total && pos.epoch < o->epochs)) {
    double t0 = usbx_now();
    usbx_train_batch b;
    int ns = usbx_train_data_next(data, &pos, &b);
    usbx_train_out out = {0};
    usbx_trainer_step_grads(S.tr, &b, (float)o->ce_weight, (float)o->mse_weight, &out);
    be->memset0(be, acc, sizeof(float));
    for (int i = 0; i < S.np; i++) if (S.p[i].trained) be->sumsq_acc(be, acc, S.p[i].g, S.p[i].n);
    float sq;
    be->download(be, &sq, acc, sizeof sq);
    double gnorm = sqrt((double)sq);
    float scale = o->clip > 0 && gnorm > o->clip ? (float)(o->clip / (gnorm + 1e-6)) : 1.0f;
    double lr = lr_at(o, step, total);
    for (int i = 0; i < S.np; i++) {
      param *p = &S.p[i];
      if (!p->trained) continue;
      be->adamw(be, p->master, p->master == p->w ? NULL : p->w, p->g, p->m, p->v, p->n, (float)lr, (float)o->beta1, (float)o->beta2,
                (float)o->eps, (float)o->weight_decay, scale, (int)step + 1);
      be->ema(be, p->ema, p->master, (float)o->ema, p->n);
    }
    be->sync(be);
    step++;
    double dt = usbx_now() - t0;
    jv rec = jv_object();
    rec = usbx_jv_set_num(rec, "step", (double)step);
    rec = usbx_jv_set_num(rec, "epoch", pos.epoch);
    rec = usbx_jv_set_num(rec, "lr", lr);
    rec = usbx_jv_set_num(rec, "loss", out.loss);
    rec = usbx_jv_set_num(rec, "mse", out.mse);
    rec = usbx_jv_set_num(rec, "ce", out.ce);
    rec = usbx_jv_set_num(rec, "grad_norm", gnorm);
    rec = usbx_jv_set_num(rec, "samples", ns);
    rec = usbx_jv_set_num(rec, "tokens", b.n);
    rec = usbx_jv_set_num(rec, "tokens_per_s", (double)b.n / dt);
    if (be->dev == USBX_DEV_CUDA) {
      double sq_len = 0;
      for (int i = 0, start = 0; i <= b.n; i++)
        if (i == b.n || (i > 0 && b.sample[i] != b.sample[i - 1])) { sq_len += (double)(i - start) * (i - start); start = i; }
      double flops = flops_per_token * b.n + 12.0 * cf->layers * cf->heads * cf->head_dim * sq_len;
      rec = usbx_jv_set_num(rec, "tflops", flops / dt / 1e12);
      rec = usbx_jv_set_num(rec, "mfu", flops / dt / 989e12);   /* H100/H200 dense bf16 peak */
    }
    if (o->log_every <= 1 || step % o->log_every == 0 || step == total)
      if (usbx_jsonl_write(stdout, rec)) usbx_die("<stdout>: write failed");
    if (o->log_every > 1 && step % o->log_every && step != total) jv_free(rec);
    usbx_train_batch_free(&b);
    bool last = (total && step == total) || (!total && pos.epoch >= o->epochs);
    if (!o->no_save && ((o->save_every > 0 && step % o->save_every == 0) || last)) {
      if (save_checkpoint(&S, o, step, &pos, err, sizeof err)) { usbx_err("%s", err); rc = 1; break; }
    }
  }
  be->free(be, acc);
  for (int i = 0; i < S.np; i++) {
    param *p = &S.p[i];
    if (!p->trained) continue;
    if (p->master != p->w) be->free(be, p->master);
    be->free(be, p->m); be->free(be, p->v); be->free(be, p->ema);
  }
  free(S.p); free(S.wl.v);
  usbx_trainer_free(S.tr);
  usbx_train_data_free(data);
  usbx_tok_free(tok);
  usbx_bagel_free(m);
  usbx_backend_close(be);
  return rc;
}
