/* train_loop.c — see train_loop.h.
 *
 * Checkpoints go to OUT/<step:07d>/ (upstream's naming), written into a temporary folder that is
 * renamed into place once every file is fsynced, so a kill never leaves a partial checkpoint:
 *   model.safetensors      every loaded tensor in fp32 (the trained master weights)
 *   ema.safetensors        the EMA weights in fp32 (untrained tensors as they are)
 *   optimizer.safetensors  AdamW moments m.<name>, v.<name>
 *   train_state.json       step, data position, seed and the options that shape the run
 * All randomness is derived from (seed, epoch, sample), so resuming from a checkpoint replays
 * exactly the batches an uninterrupted run would have seen.
 *
 * A step is made of world x accum packed batches taken in data order; batch j goes to rank
 * j % world.  Every rank builds all of them (cheap, host side) so it knows the step's token
 * counts, which normalise the losses as upstream does over its ranks; a 1-process run with
 * --accum world x A therefore computes the same step as world processes with --accum A.
 * Data parallel: the trained parameters, laid end to end, are split into world equal ranges;
 * rank r keeps the fp32 master, AdamW moments and EMA of its range only (ZeRO-1), receives the
 * summed gradient of that range (reduce to its owner), updates it, and broadcasts the updated
 * weights.  ZeRO-2 also shards the decoder layers' gradients (reduced to their owners right after
 * each layer's backward); ZeRO-3 shards the decoder layers' weights too: each rank keeps its range
 * of them, and two layer-sized slots receive layer l (slot l % 2) from its owners when the
 * trainer is about to use it, the next layer meanwhile (layer l's model pointers point into its
 * slot).  Checkpoints are
 * gathered to rank 0, which writes them. */
#include "train_loop.h"
#include "bagel_internal.h"
#include "dist.h"
#include "jsonl.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "util.h"
#include "vae.h"
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
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
  o->warmup = 2000; o->steps = 0; o->epochs = 0; o->save_every = 0; o->log_every = 1; o->accum = 1; o->zero = 2;
  o->data = (usbx_data_opts){.expected_tokens = 32768, .max_tokens = 36864, .max_tokens_per_sample = 16384, .prefer_buffer_before = 16384,
                             .text_cond_dropout = 0.1f, .timestep_shift = 1.0f, .seed = 4396, .visual_gen = true, .visual_und = true};
}

#define MAX_RUNS 64   /* the most launches per tensor for the embedding's rows */

typedef struct {
  usbx_wdesc *d;
  void *w;            /* the model's buffer (mm or f32), full on every rank */
  float *g;           /* full gradient (the trainer's) */
  size_t n;
  bool trained;
  size_t base;        /* offset of this tensor in the trained parameters laid end to end */
  size_t off, len;    /* this rank's range of the tensor (len 0: none) */
  int layer;          /* decoder layer, or -1 */
  float *gs;          /* ZeRO-2, decoder layers: the summed gradient of the range (g is the shared layer buffer) */
  void *wr;           /* this rank's range of the weights in the model's type: a view into w, or
                         (ZeRO-3, decoder layers) its own buffer, the only copy this rank keeps */
  bool sharded;       /* ZeRO-3: w is not resident; slot_off is its place in a layer slot */
  size_t slot_off;
  float *master;      /* fp32 master of the range (a view of wr when the weights are f32) */
  float *m, *v, *ema; /* AdamW moments and EMA of the range */
  bool live;          /* some step's gradient reached it (on any rank); until then, without
                         weight decay, its moments are zero and AdamW would leave it as it is */
  /* runs: the element ranges [a, b) of this rank's range (offsets from off) that the optimizer
   * and the norm visit: all of it, or for the embedding without weight decay the rows some batch
   * has reached (seen[r]: a batch had token r; the others keep zero moments, as an untouched
   * tensor does). */
  size_t runs[MAX_RUNS][2];
  int nruns;
  uint8_t *seen;
  int row;            /* elements per row of the embedding */
} param;

typedef struct {
  usbx_backend *be;
  usbx_bagel *m;
  usbx_trainer *tr;
  usbx_dist *dist;
  usbx_wlist wl;
  param *p;
  int np;
  size_t total;       /* trained parameters */
  float *full;        /* device scratch of the largest tensor (gathering ranges for a checkpoint) */
  char *slot[2];      /* ZeRO-3: two decoder layers' weights, gathered (layer l in slot l % 2) */
  int resident[2];    /* the layer in each slot, -1 for none */
  int last;           /* ZeRO-3: the layer asked for last (the direction of the next prefetch) */
  bool unwaited;      /* ZeRO-3 with overlap: lane 1 fetched a layer that lane 0 has not waited for */
  bool overlap;       /* on a GPU (ZeRO-2 and 3): layer gradients reduced, and ZeRO-3's next layer
                         gathered, on lane 1 beside the compute */
} state;

/* rank r's range of the trained parameters: [r*T/W, (r+1)*T/W) rounded to 256 elements */
static size_t range_start(size_t total, int r, int world) {
  if (r >= world) return total;
  size_t x = (size_t)((double)total * r / world) & ~(size_t)255;
  return x < total ? x : total;
}

/* the part of tensor p that rank r owns: [*off, *off + return) */
static size_t owned_by(const state *S, const param *p, int r, size_t *off) {
  int W = usbx_dist_world(S->dist);
  size_t lo = range_start(S->total, r, W), hi = range_start(S->total, r + 1, W);
  size_t a = p->base > lo ? p->base : lo, b = p->base + p->n < hi ? p->base + p->n : hi;
  *off = a - p->base;
  return b > a ? b - a : 0;
}

static size_t w_elem(const state *S, const param *p) { return p->d->mm ? usbx_dtype_size(S->be->mm_dtype) : sizeof(float); }

/* the master is that range itself when the weights are stored in f32 */
static bool master_is_view(const state *S, const param *p) { (void)S; return (void *)p->master == p->wr; }

/* every rank's range of p's gradient summed into its owner (inside a group) */
static void reduce_ranges(state *S, param *p) {
  for (int r = 0; r < usbx_dist_world(S->dist); r++) {
    size_t off, len = owned_by(S, p, r, &off);
    if (len) usbx_dist_reduce(S->dist, p->g + off, len, r);
  }
}
/* every rank's range of a full-size buffer of p (elements of es bytes) from its owner (inside a group) */
static void broadcast_ranges(state *S, param *p, void *buf, size_t es) {
  for (int r = 0; r < usbx_dist_world(S->dist); r++) {
    size_t off, len = owned_by(S, p, r, &off);
    if (len) usbx_dist_broadcast(S->dist, (char *)buf + off * es, len * es, r);
  }
}
/* the whole of p in buf (full-size, elements of es bytes) on every rank: this rank's range from
 * mine, the others from their owners (inside a group) */
static void gather_ranges(state *S, param *p, void *buf, const void *mine, size_t es) {
  if (p->len) S->be->copy(S->be, (char *)buf + p->off * es, mine, p->len * es);
  broadcast_ranges(S, p, buf, es);
}

/* host f32 copy of a device buffer that holds mm or f32 values */
static void download_f32(usbx_backend *be, const void *src, bool mm, size_t n, float *dst) {
  if (!mm || be->mm_dtype == USBX_F32) { be->download(be, dst, src, sizeof(float) * n); return; }
  uint16_t *tmp = xmalloc(2 * n);
  be->download(be, tmp, src, 2 * n);
  usbx_convert(tmp, be->mm_dtype, dst, USBX_F32, n);
  free(tmp);
}

/* The full tensor of one state kind (0 master, 1 EMA, 2 m, 3 v) in S->full on every rank:
 * each owner puts its range there and broadcasts it. */
static const float *gather_full(state *S, param *p, int kind) {
  int W = usbx_dist_world(S->dist);
  float *mine = kind == 0 ? p->master : kind == 1 ? p->ema : kind == 2 ? p->m : p->v;
  if (W == 1 && p->len == p->n) return mine;
  usbx_dist_group_begin(S->dist);
  gather_ranges(S, p, S->full, mine, sizeof(float));
  usbx_dist_group_end(S->dist);
  return S->full;
}

/* Writes one safetensors file (rank 0; the other ranks take part in the gathers): which = 0
 * weights (masters), 1 EMA, 2 optimizer. */
static int save_file(state *S, const char *path, int which, char *err, size_t errlen) {
  usbx_backend *be = S->be;
  bool writer = usbx_dist_rank(S->dist) == 0;
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
  usbx_st_writer *w = NULL;
  int rc = 0;
  if (writer) {
    jv meta = jv_object_set(jv_object(), jv_string("format"), jv_string("pt"));
    w = usbx_st_writer_begin(path, decls, (size_t)nd, meta, err, errlen);
    rc = w ? 0 : -1;
  }
  float *host = NULL;
  size_t cap = 0;
  /* a failed write on rank 0 does not stop the loop: the other ranks wait in the gathers */
  for (int i = 0; i < S->np; i++) {
    param *p = &S->p[i];
    if (which == 2 && !p->trained) continue;
    if (p->n > cap) { cap = p->n; host = xrealloc(host, sizeof(float) * cap); }
    for (int k = 0; k < (which == 2 ? 2 : 1); k++) {
      if (p->trained) {
        const float *src = gather_full(S, p, which == 2 ? 2 + k : which);
        if (writer && rc == 0) be->download(be, host, src, sizeof(float) * p->n);
      } else if (writer && rc == 0) download_f32(be, p->w, p->d->mm, p->n, host);
      if (writer && rc == 0) rc = usbx_st_writer_write(w, host, sizeof(float) * p->n);
    }
  }
  free(host);
  if (writer) {
    if (rc == 0) rc = usbx_st_writer_finish(w, err, errlen);
    else if (w) { snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno)); usbx_st_writer_abort(w); }
  }
  for (int i = 0; i < nd; i++) free(names[i]);
  free(names); free(decls);
  return rc;
}

static int save_checkpoint(state *S, const usbx_train_opts *o, long step, const usbx_data_pos *pos, char *err, size_t errlen) {
  bool writer = usbx_dist_rank(S->dist) == 0;
  char *final = xasprintf("%s/%07ld", o->out, step), *tmp = xasprintf("%s/.%07ld.tmp.%ld", o->out, step, (long)getpid());
  int rc = 0;
  if (writer && usbx_mkdirs(tmp)) { snprintf(err, errlen, "%s: %s", tmp, strerror(errno)); rc = -1; }
  const char *files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors"};
  for (int i = 0; i < 3; i++) {
    char *p = usbx_path_join(tmp, files[i]);
    int r = save_file(S, p, i, err, errlen);
    if (rc == 0) rc = r;
    free(p);
  }
  if (!writer) {
    /* every rank learns whether rank 0 wrote the checkpoint */
    double ok = 0;
    usbx_dist_allreduce_host(S->dist, &ok, 1);
    free(final); free(tmp);
    if (ok != 0) snprintf(err, errlen, "rank 0 could not write the checkpoint of step %ld", step);
    return ok != 0 ? -1 : 0;
  }
  if (rc == 0) {
    jv st = jv_object();
    st = usbx_jv_set_num(st, "step", (double)step);
    st = usbx_jv_set_num(st, "epoch", pos->epoch);
    st = usbx_jv_set_num(st, "index", pos->index);
    jv buf = jv_array();   /* the packing's overflow buffer: [epoch, sample] pairs */
    for (int i = 0; i < pos->nbuf; i++)
      buf = jv_array_append(buf, jv_array_append(jv_array_append(jv_array(), jv_number(pos->buf_epoch[i])), jv_number(pos->buf_sample[i])));
    st = jv_object_set(st, jv_string("buffer"), buf);
    st = usbx_jv_set_num(st, "seed", (double)o->data.seed);
    st = usbx_jv_set_num(st, "batches_per_step", (double)(usbx_dist_world(S->dist) * o->accum));
    st = usbx_jv_set_str(st, "base_model", o->model);
    jv dead = jv_array();   /* tensors no gradient has reached yet: skipped by the optimizer */
    for (int i = 0; i < S->np; i++)
      if (S->p[i].trained && !S->p[i].live) dead = jv_array_append(dead, jv_string(S->p[i].d->name));
    st = jv_object_set(st, jv_string("untouched"), dead);
    for (int i = 0; i < S->np; i++) {   /* the embedding rows reached so far, as [first, end) spans */
      const param *p = &S->p[i];
      if (!p->seen) continue;
      jv spans = jv_array();
      size_t V = p->n / (size_t)p->row;
      for (size_t r = 0; r < V; r++) {
        if (!p->seen[r] || (r && p->seen[r - 1])) continue;
        size_t e = r;
        while (e < V && p->seen[e]) e++;
        spans = jv_array_append(spans, jv_array_append(jv_array_append(jv_array(), jv_number((double)r)), jv_number((double)e)));
      }
      st = jv_object_set(st, jv_string("embed_rows"), spans);
    }
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
  double failed = rc ? 1 : 0;
  usbx_dist_allreduce_host(S->dist, &failed, 1);
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
        const float *src = (const float *)t->data;
        if (which == 0 && p->sharded) {
          /* ZeRO-3: only this rank's range exists */
          if (p->len) S->be->upload_convert(S->be, p->wr, p->d->mm, src + p->off, USBX_F32, p->len);
          if (p->len && !master_is_view(S, p))
            S->be->upload(S->be, p->master, src + p->off, sizeof(float) * p->len);
          S->resident[0] = S->resident[1] = -1;
        } else if (which == 0) {
          /* the whole tensor into the model's buffer on every rank (the master may be a view of it) */
          S->be->upload_convert(S->be, p->w, p->d->mm, src, USBX_F32, p->n);
          if (p->len && !master_is_view(S, p))
            S->be->upload(S->be, p->master, src + p->off, sizeof(float) * p->len);
        } else if (p->len) {
          float *dst = which == 1 ? p->ema : k ? p->v : p->m;
          S->be->upload(S->be, dst, src + p->off, sizeof(float) * p->len);
        }
      }
      free(name);
    }
  }
  S->be->sync(S->be);
  usbx_st_close(&f);
  return rc;
}

/* ZeRO-2: the backward of decoder layer l is done; each range of its gradients goes to its owner,
 * which adds it to the step's sum, and the shared layer buffer is cleared for the next layer. */
static void layer_grads_done(void *ctx, int l) {
  state *S = ctx;
  usbx_backend *be = S->be;
  if (S->overlap) {
    /* layer l-1's backward writes the buffer of layer l+1, whose reductions went to lane 1 one
     * layer ago: it waits for them; this layer's go to lane 1 after its backward.  Every
     * collective stays on lane 1 until the step joins it, so all ranks run them in one order. */
    usbx_lane_wait(be, 0, 1);
    S->unwaited = false;   /* (ZeRO-3: the next layer's fetch, issued before this layer's backward) */
    usbx_lane_wait(be, 1, 0);
    usbx_lane(be, 1);
  }
  usbx_dist_group_begin(S->dist);
  for (int i = 0; i < S->np; i++)
    if (S->p[i].trained && S->p[i].layer == l) reduce_ranges(S, &S->p[i]);
  usbx_dist_group_end(S->dist);
  for (int i = 0; i < S->np; i++) {
    param *p = &S->p[i];
    if (!p->trained || p->layer != l) continue;
    if (p->len) be->add(be, p->gs, p->g + p->off, p->len);
    be->memset0(be, p->g, sizeof(float) * p->n);
  }
  usbx_lane(be, 0);
}

/* the summed gradient of this rank's range of p (after the step's reductions) */
static float *grad_range(const param *p) { return p->gs ? p->gs : p->g + p->off; }

/* p->runs from p->seen: the seen rows' spans, neighbours merged across gaps of up to g rows, g
 * doubled until at most MAX_RUNS remain (fewer, longer launches; the unseen rows inside them
 * are left as they are by AdamW), clipped to this rank's range */
static void seen_runs(param *p) {
  size_t V = p->n / (size_t)p->row, r = 0, rows[MAX_RUNS][2];
  int nr;
  for (size_t g = 0;; g = g ? 2 * g : 1) {
    nr = 0;
    for (r = 0; r < V; r++) {
      if (!p->seen[r]) continue;
      if (nr && r - rows[nr - 1][1] <= g) { rows[nr - 1][1] = r + 1; continue; }
      if (nr == MAX_RUNS) break;
      rows[nr][0] = r; rows[nr][1] = r + 1; nr++;
    }
    if (r >= V) break;
  }
  p->nruns = 0;
  for (int k = 0; k < nr; k++) {
    size_t a = rows[k][0] * (size_t)p->row, b = rows[k][1] * (size_t)p->row;
    if (a < p->off) a = p->off;
    if (b > p->off + p->len) b = p->off + p->len;
    if (a < b) { p->runs[p->nruns][0] = a - p->off; p->runs[p->nruns][1] = b - p->off; p->nruns++; }
  }
}

static double lr_at(const usbx_train_opts *o, long k, long total) {
  /* upstream: lr * min(1, k / warmup) with k counted from 0 at the first update */
  double warm = o->warmup > 0 ? fmin(1.0, (double)k / (double)o->warmup) : 1.0;
  if (!o->cosine || k < o->warmup || total <= o->warmup) return o->lr * warm;
  double prog = (double)(k - o->warmup) / (double)(total - o->warmup);
  if (prog > 1) prog = 1;
  return o->min_lr + 0.5 * (o->lr - o->min_lr) * (1.0 + cos(M_PI * prog));
}

/* ZeRO-3: decoder layer l's weights into slot l % 2, each range from its owner.  With overlap on
 * lane 1, after lane 0's work so far (its last use of that slot). */
static void fetch_layer(state *S, int l) {
  char *slot = S->slot[l % 2];
  if (S->overlap) { usbx_lane_wait(S->be, 1, 0); usbx_lane(S->be, 1); }
  usbx_dist_group_begin(S->dist);
  for (int i = 0; i < S->np; i++)
    if (S->p[i].sharded && S->p[i].layer == l) gather_ranges(S, &S->p[i], slot + S->p[i].slot_off, S->p[i].wr, w_elem(S, &S->p[i]));
  usbx_dist_group_end(S->dist);
  if (S->overlap) { usbx_lane(S->be, 0); S->unwaited = true; }
  S->resident[l % 2] = l;
}

/* ZeRO-3, the trainer's gather hook: layer l resident before its use, and the next layer in the
 * direction of travel (forward up, backward down) fetched into the other slot meanwhile.  With
 * overlap the fetches run on lane 1 with the layer reductions (every collective in one order on
 * every rank), and lane 0 computes on a layer only after waiting for lane 1 once its fetch was
 * issued: here, or in layer_grads_done, whose wait also covers the reductions of one layer ago. */
static void gather_layer(void *ctx, int l) {
  state *S = ctx;
  int L = usbx_bagel_cfg(S->m)->layers, next = l > S->last ? l + 1 : l < S->last ? l - 1 : -1;
  S->last = l;
  if (S->resident[l % 2] != l) fetch_layer(S, l);
  if (S->unwaited) { usbx_lane_wait(S->be, 0, 1); S->unwaited = false; }
  if (next >= 0 && next < L && S->resident[next % 2] != next) fetch_layer(S, next);
}

/* ZeRO-3 setup: every decoder tensor keeps only this rank's range (copied out of the loaded
 * model, whose layer buffers are then freed); layer l's pointers point into slot l % 2 of two
 * layer-sized slots, laid out in enumeration order.  False when the layers are not all trained
 * (frozen layers stay whole). */
static bool shard_layers(state *S) {
  usbx_backend *be = S->be;
  int L = usbx_bagel_cfg(S->m)->layers;
  for (int i = 0; i < S->np; i++)
    if (usbx_bagel_layer_of(S->p[i].d->name) >= 0 && !S->p[i].trained) return false;
  size_t *used = xcalloc((size_t)L, sizeof *used), bytes = 0;
  for (int i = 0; i < S->np; i++) {
    param *p = &S->p[i];
    if (p->layer < 0) continue;
    p->sharded = true;
    p->slot_off = used[p->layer];
    used[p->layer] += (p->n * w_elem(S, p) + 255) & ~(size_t)255;
    if (used[p->layer] > bytes) bytes = used[p->layer];
    p->wr = NULL;
    if (p->len) {
      p->wr = be->alloc(be, p->len * w_elem(S, p));
      be->copy(be, p->wr, (char *)p->w + p->off * w_elem(S, p), p->len * w_elem(S, p));
    }
  }
  free(used);
  be->sync(be);
  usbx_bagel_drop_layer_weights(S->m);
  for (int k = 0; k < 2; k++) S->slot[k] = be->alloc(be, bytes);
  for (int i = 0; i < S->np; i++) {
    param *p = &S->p[i];
    if (p->sharded) { p->w = S->slot[p->layer % 2] + p->slot_off; *p->d->dst = p->w; }
  }
  S->resident[0] = S->resident[1] = -1;
  usbx_trainer_weights_moved(S->tr);
  usbx_trainer_gather_layers(S->tr, gather_layer, S);
  return true;
}

/* One step's batches, built on a second thread while the GPU runs the step before (host-side
 * work: packing, noise, patchifying), from a position of its own: the batches are the same as
 * built in line, so results do not change. */
typedef struct {
  usbx_train_data *data;
  usbx_data_pos pos;        /* in: where the step starts; out: where the next one starts */
  usbx_train_batch *bs;
  int nbatch, ce_den, mse_den, ns;
  long tokens;
  double flops, flops_per_token, attn_flops;   /* attn_flops x Σ sample length² */
  pthread_t th;
  bool running;
} step_data;

static void *build_step(void *arg) {
  step_data *sd = arg;
  sd->ce_den = sd->mse_den = sd->ns = 0;
  sd->tokens = 0;
  sd->flops = 0;
  for (int j = 0; j < sd->nbatch; j++) {
    usbx_train_batch *b = &sd->bs[j];
    sd->ns += usbx_train_data_next(sd->data, &sd->pos, b);
    sd->ce_den += b->n_ce; sd->mse_den += b->n_mse; sd->tokens += b->n;
    double sq_len = 0;
    for (int i = 0, start = 0; i <= b->n; i++)
      if (i == b->n || (i > 0 && b->sample[i] != b->sample[i - 1])) { sq_len += (double)(i - start) * (i - start); start = i; }
    sd->flops += sd->flops_per_token * b->n + sd->attn_flops * sq_len;
  }
  return NULL;
}
static void step_data_start(step_data *sd, usbx_data_pos pos) {
  sd->pos = pos;
  if (pthread_create(&sd->th, NULL, build_step, sd) != 0) usbx_die("pthread_create failed");
  sd->running = true;
}
static void step_data_join(step_data *sd) {
  if (!sd->running) return;
  pthread_join(sd->th, NULL);
  sd->running = false;
}

int usbx_train_run(const usbx_train_opts *o) {
  char err[1024];
  usbx_dist_env env;
  if (usbx_dist_env_read(&env, err, sizeof err)) usbx_die("%s", err);
  if (env.world > 1) {
    char *name = xasprintf("usbx-train[rank %d]", env.rank);
    usbx_set_progname(name);   /* kept for the life of the process */
    usbx_dist_select_device(&env);
  }
  if (o->accum < 1) usbx_usage_die("--accum must be at least 1");
  usbx_backend *be = usbx_backend_open(o->device);
  usbx_dist *dist = NULL;
  if (env.world > 1 && !(dist = usbx_dist_open(be, &env, err, sizeof err))) usbx_die("%s", err);
  bool rank0 = env.rank == 0;
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
  state S = {.be = be, .m = m, .dist = dist};
  S.tr = usbx_trainer_new(m, frozen);
  usbx_trainer_set_recompute(S.tr, o->recompute);
  bool zero2 = env.world > 1 && o->zero >= 2;
  /* On a GPU, two layer gradient buffers, so a layer's reductions (and with ZeRO-3 the next
   * layer's gathering) run beside the compute (USBX_TRAIN_OVERLAP=0: in line).  ZeRO-3 keeps two
   * weight slots and keys gradients by them, so it always has two buffers: layer l uses slot and
   * buffer l % 2. */
  const char *ov = getenv("USBX_TRAIN_OVERLAP");
  S.overlap = zero2 && be->set_lane && !(ov && strcmp(ov, "0") == 0);
  S.last = -1;
  if (zero2) usbx_trainer_share_layer_grads(S.tr, S.overlap || o->zero >= 3 ? 2 : 1, layer_grads_done, &S);
  usbx_bagel_enumerate(cf, parts, m, &S.wl);
  S.p = xcalloc((size_t)S.wl.n, sizeof *S.p);
  S.np = S.wl.n;
  size_t largest = 0;
  for (int i = 0; i < S.np; i++) {
    param *p = &S.p[i];
    p->d = &S.wl.v[i];
    p->w = *p->d->dst;
    p->n = (size_t)usbx_shape_numel(p->d->ndim, p->d->shape);
    p->g = usbx_trainer_grad(S.tr, p->d->name, NULL);
    p->trained = p->g != NULL;
    p->live = o->weight_decay != 0;   /* with weight decay every tensor changes each step */
    if (!p->live && p->g && p->d->dst == (void **)&m->embed) { p->seen = xcalloc((size_t)p->d->shape[0], 1); p->row = (int)p->d->shape[1]; }
    p->layer = -1;
    if (!p->trained) continue;
    if (zero2) p->layer = usbx_bagel_layer_of(p->d->name);
    p->base = S.total;
    S.total += p->n;
    if (p->n > largest) largest = p->n;
  }
  if (env.world > 1) S.full = be->alloc(be, sizeof(float) * (largest ? largest : 1));
  /* fp32 masters: the weights file read again in fp32 (a bf16 device copy would lose bits) */
  char *wpath = usbx_path_join(o->model, "model.safetensors");
  if (!usbx_file_exists(wpath)) { free(wpath); wpath = usbx_path_join(o->model, "ema.safetensors"); }
  usbx_st_file wf;
  bool need_masters = usbx_mm_lossy(be);
  if (need_masters && usbx_st_open(wpath, &wf, err, sizeof err)) usbx_die("%s", err);
  size_t owned = 0;
  for (int i = 0; i < S.np; i++) {
    param *p = &S.p[i];
    if (!p->trained) continue;
    p->len = owned_by(&S, p, env.rank, &p->off);
    p->runs[0][0] = 0; p->runs[0][1] = p->len; p->nruns = p->len ? 1 : 0;
    p->wr = (char *)p->w + p->off * w_elem(&S, p);
  }
  bool zero3 = zero2 && o->zero >= 3;
  if (zero3 && !shard_layers(&S)) {
    zero3 = false;
    if (rank0) usbx_err("note: --zero 3 with frozen decoder layers: their weights stay whole on every rank (ZeRO-2)");
  }
  for (int i = 0; i < S.np; i++) {
    param *p = &S.p[i];
    if (!p->trained || !p->len) continue;
    owned += p->len;
    if (p->d->mm && need_masters) {
      p->master = be->alloc(be, sizeof(float) * p->len);
      const usbx_st_tensor *t = usbx_st_find(&wf, p->d->name);
      be->upload_convert(be, p->master, false, (const char *)t->data + p->off * usbx_dtype_size(t->dtype), t->dtype, p->len);
    } else p->master = p->wr;
    p->m = be->alloc(be, sizeof(float) * p->len); be->memset0(be, p->m, sizeof(float) * p->len);
    p->v = be->alloc(be, sizeof(float) * p->len); be->memset0(be, p->v, sizeof(float) * p->len);
    p->ema = be->alloc(be, sizeof(float) * p->len); be->copy(be, p->ema, p->master, sizeof(float) * p->len);
    if (p->layer >= 0) p->gs = be->alloc(be, sizeof(float) * p->len);
  }
  if (need_masters) usbx_st_close(&wf);
  free(wpath);
  if (env.world > 1)
    usbx_err("training %zu parameters on %s; this rank keeps the optimizer state of %zu%s", S.total, be->name, owned,
             zero3 ? " and only that range of the decoder layers' weights (ZeRO-3)" : "");
  else usbx_err("training %zu parameters on %s", S.total, be->name);

  long step = 0;
  usbx_data_pos pos = {0};
  if (rank0 && usbx_mkdirs(o->out)) usbx_die("%s: %s", o->out, strerror(errno));
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
      jv buf = jv_object_get(jv_copy(st), jv_string("buffer"));
      if (jv_get_kind(buf) == JV_KIND_ARRAY) {
        int nb = jv_array_length(jv_copy(buf));
        if (nb > USBX_PACK_BUFFER) usbx_die("%s: buffer: %d entries, at most %d", sp, nb, USBX_PACK_BUFFER);
        for (int i = 0; i < nb; i++) {
          jv e = jv_array_get(jv_copy(buf), i);
          jv e0 = jv_array_get(jv_copy(e), 0), e1 = jv_array_get(jv_copy(e), 1);
          bool ok = jv_get_kind(e0) == JV_KIND_NUMBER && jv_get_kind(e1) == JV_KIND_NUMBER && jv_number_value(e1) >= 0 &&
                    jv_number_value(e1) < usbx_train_data_count(data);
          if (ok) { pos.buf_epoch[i] = (int)jv_number_value(e0); pos.buf_sample[i] = (int)jv_number_value(e1); }
          jv_free(e0); jv_free(e1); jv_free(e);
          if (!ok) usbx_die("%s: buffer entry %d is not [epoch, sample] of this data (%d samples)", sp, i + 1, usbx_train_data_count(data));
        }
        pos.nbuf = nb;
      } else if (jv_get_kind(buf) != JV_KIND_INVALID && jv_get_kind(buf) != JV_KIND_NULL) {
        usbx_die("%s: buffer is not an array", sp);
      }
      /* the tensors still untouched at that step (a checkpoint without the list: all touched) */
      jv dead = jv_object_get(jv_copy(st), jv_string("untouched"));
      bool have = jv_get_kind(dead) == JV_KIND_ARRAY;
      if (!have && jv_get_kind(dead) != JV_KIND_INVALID && jv_get_kind(dead) != JV_KIND_NULL) usbx_die("%s: untouched is not an array", sp);
      for (int i = 0; i < S.np; i++) {
        param *p = &S.p[i];
        if (!p->trained || p->live) continue;
        bool listed = false;
        for (int k = 0; have && !listed && k < jv_array_length(jv_copy(dead)); k++) {
          jv e = jv_array_get(jv_copy(dead), k);
          listed = jv_get_kind(e) == JV_KIND_STRING && strcmp(jv_string_value(e), p->d->name) == 0;
          jv_free(e);
        }
        p->live = !listed;
      }
      jv_free(dead);
      /* the embedding rows reached at that step (a checkpoint without them: every row) */
      jv spans = jv_object_get(jv_copy(st), jv_string("embed_rows"));
      for (int i = 0; i < S.np; i++) {
        param *p = &S.p[i];
        if (!p->seen) continue;
        size_t V = p->n / (size_t)p->row;
        if (jv_get_kind(spans) != JV_KIND_ARRAY) { memset(p->seen, 1, V); seen_runs(p); continue; }
        for (int k = 0; k < jv_array_length(jv_copy(spans)); k++) {
          jv e = jv_array_get(jv_copy(spans), k);
          jv e0 = jv_array_get(jv_copy(e), 0), e1 = jv_array_get(jv_copy(e), 1);
          bool ok = jv_get_kind(e0) == JV_KIND_NUMBER && jv_get_kind(e1) == JV_KIND_NUMBER && jv_number_value(e0) >= 0 &&
                    jv_number_value(e0) <= jv_number_value(e1) && jv_number_value(e1) <= (double)V;
          if (ok) memset(p->seen + (size_t)jv_number_value(e0), 1, (size_t)(jv_number_value(e1) - jv_number_value(e0)));
          jv_free(e0); jv_free(e1); jv_free(e);
          if (!ok) usbx_die("%s: embed_rows entry %d is not [first, end) rows of %zu", sp, k + 1, V);
        }
        seen_runs(p);
      }
      jv_free(spans);
      jv_free(buf);
      if (usbx_jv_num(st, "seed", &v) && (uint64_t)v != o->data.seed && rank0) usbx_err("warning: resuming a run made with seed %.0f under seed %llu", v, (unsigned long long)o->data.seed);
      if (usbx_jv_num(st, "batches_per_step", &v) && (long)v != env.world * o->accum && rank0)
        usbx_err("warning: the run used %.0f batches per step; this one uses %ld (ranks x --accum)", v, (long)env.world * o->accum);
      jv_free(st); free(js); free(sp);
      if (rank0) usbx_err("resumed from %s (step %ld, epoch %d, sample %d)", dir, step, pos.epoch, pos.index);
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
  int W = env.world, nbatch = W * (int)o->accum, rc = 0;
  step_data sds[2];
  for (int k = 0; k < 2; k++)
    sds[k] = (step_data){.data = data, .bs = xcalloc((size_t)nbatch, sizeof(usbx_train_batch)), .nbatch = nbatch,
                         .flops_per_token = flops_per_token, .attn_flops = 12.0 * cf->layers * cf->heads * cf->head_dim};
  int cur = 0;
  double *red = xcalloc((size_t)S.np + 1, sizeof(double));
  /* the gradient norm's ranges: at most MAX_RUNS per tensor */
  const float **sq_x = xcalloc((size_t)S.np * MAX_RUNS + 1, sizeof *sq_x);
  size_t *sq_n = xcalloc((size_t)S.np * MAX_RUNS + 1, sizeof *sq_n);
  bool running = (total && step < total) || (!total && pos.epoch < o->epochs);
  if (running) step_data_start(&sds[0], pos);
  /* USBX_TRAIN_PROFILE=1: seconds per part of a step (after the first two), on stderr at the end */
  bool profile = getenv("USBX_TRAIN_PROFILE") && strcmp(getenv("USBX_TRAIN_PROFILE"), "0") != 0;
  double prof[4] = {0};
  long prof_n = 0;
  while ((total && step < total) || (!total && pos.epoch < o->epochs)) {
    double t0 = usbx_now();
    /* the step's batches in data order (built while the last step ran); this rank trains on
     * those with j % W == rank; the next step's are built meanwhile */
    step_data *sd = &sds[cur];
    step_data_join(sd);
    pos = sd->pos;
    usbx_train_batch *bs = sd->bs;
    int ce_den = sd->ce_den, mse_den = sd->mse_den, ns = sd->ns;
    long tokens = sd->tokens;
    double flops = sd->flops;
    if ((total && step + 1 < total) || (!total && pos.epoch < o->epochs)) step_data_start(&sds[cur ^ 1], pos);
    cur ^= 1;
    double tp0 = usbx_now(), tp1 = tp0, tp2 = tp0, tp3 = tp0;
    usbx_trainer_zero_grads(S.tr);
    for (int i = 0; i < S.np; i++) if (S.p[i].gs) be->memset0(be, S.p[i].gs, sizeof(float) * S.p[i].len);
    for (int j = env.rank; j < nbatch; j += W) {   /* the losses stay on the device until the norm is read */
      bs[j].ce_den = ce_den; bs[j].mse_den = mse_den;
      S.last = -1;   /* ZeRO-3: each batch starts with a forward */
      usbx_trainer_add_grads(S.tr, &bs[j], (float)o->ce_weight, (float)o->mse_weight, NULL);
      usbx_lane_wait(be, 0, 1);   /* the last layers' reductions (overlap) */
    }
    usbx_trainer_settle_grads(S.tr);   /* the gradients no batch reached: cleared now */
    for (int i = 0; i < S.np; i++) {   /* the embedding rows this step's batches reach (every rank builds them all) */
      param *p = &S.p[i];
      if (!p->seen) continue;
      for (int j = 0; j < nbatch; j++)
        for (int k = 0; k < bs[j].n; k++)
          if (bs[j].kind[k] == USBX_TOK_TEXT && bs[j].text_id[k] >= 0 && (size_t)bs[j].text_id[k] * p->row < p->n) p->seen[bs[j].text_id[k]] = 1;
      seen_runs(p);
    }
    for (int j = 0; j < nbatch; j++) usbx_train_batch_free(&bs[j]);
    if (profile) { be->sync(be); tp1 = usbx_now(); }
    /* which tensors any rank's gradients reached, summed over the ranks */
    for (int i = 0; i < S.np; i++) red[i] = S.p[i].trained && !S.p[i].live && usbx_trainer_grad_written(S.tr, S.p[i].w);
    usbx_dist_allreduce_host(dist, red, S.np);
    for (int i = 0; i < S.np; i++) if (red[i] > 0) S.p[i].live = true;
    /* the summed gradient of each range goes to its owner */
    if (W > 1) {
      usbx_dist_group_begin(dist);
      for (int i = 0; i < S.np; i++)   /* decoder layers were reduced during the backward */
        if (S.p[i].trained && S.p[i].live && S.p[i].layer < 0) reduce_ranges(&S, &S.p[i]);
      usbx_dist_group_end(dist);
    }
    be->memset0(be, acc, sizeof(float));
    int nsq = 0;
    for (int i = 0; i < S.np; i++) {
      const param *p = &S.p[i];
      if (!p->live) continue;
      for (int k = 0; k < p->nruns; k++, nsq++) {
        sq_x[nsq] = grad_range(p) + p->runs[k][0];
        sq_n[nsq] = p->runs[k][1] - p->runs[k][0];
      }
    }
    be->sumsq_multi(be, acc, sq_x, sq_n, nsq);
    if (profile) { be->sync(be); tp2 = usbx_now(); }
    float sq;
    be->download(be, &sq, acc, sizeof sq);
    double sums[3] = {sq, 0, 0};   /* the squared norm, then this rank's shares of CE and MSE */
    usbx_trainer_losses(S.tr, &sums[1], &sums[2]);
    usbx_dist_allreduce_host(dist, sums, 3);
    double gnorm = sqrt(sums[0]);
    float scale = o->clip > 0 && gnorm > o->clip ? (float)(o->clip / (gnorm + 1e-6)) : 1.0f;
    double lr = lr_at(o, step, total);
    usbx_adamw_args aw = {.lr = (float)lr, .beta1 = (float)o->beta1, .beta2 = (float)o->beta2, .eps = (float)o->eps,
                          .weight_decay = (float)o->weight_decay, .grad_scale = scale, .ema_decay = (float)o->ema, .step = (int)step + 1};
    for (int i = 0; i < S.np; i++) {
      param *p = &S.p[i];
      if (!p->len || !p->live) continue;
      for (int k = 0; k < p->nruns; k++) {
        size_t a = p->runs[k][0], len = p->runs[k][1] - a;
        be->adamw(be, p->master + a, master_is_view(&S, p) ? NULL : (char *)p->wr + a * w_elem(&S, p), grad_range(p) + a, p->m + a, p->v + a,
                  p->ema + a, len, &aw);
      }
    }
    /* every rank's updated weights to every rank */
    if (W > 1) {
      usbx_dist_group_begin(dist);
      for (int i = 0; i < S.np; i++)
        if (S.p[i].trained && S.p[i].live && !S.p[i].sharded) broadcast_ranges(&S, &S.p[i], S.p[i].w, w_elem(&S, &S.p[i]));
      usbx_dist_group_end(dist);
    }
    S.resident[0] = S.resident[1] = -1;   /* ZeRO-3: the layers changed; gathered again when next used */
    /* one process: no wait for the update, so the next step's host work (its batch's uploads and
     * x_t) is queued while AdamW runs; the next step's norm download waits for it anyway */
    if (W > 1 || profile) be->sync(be);
    tp3 = usbx_now();
    if (profile && step >= 2) {
      prof[0] += tp0 - t0; prof[1] += tp1 - tp0; prof[2] += tp2 - tp1; prof[3] += tp3 - tp2;
      prof_n++;
    }
    step++;
    double dt = usbx_now() - t0;
    double ce = sums[1], mse = sums[2];
    jv rec = jv_object();
    rec = usbx_jv_set_num(rec, "step", (double)step);
    rec = usbx_jv_set_num(rec, "epoch", pos.epoch);
    rec = usbx_jv_set_num(rec, "lr", lr);
    rec = usbx_jv_set_num(rec, "loss", o->ce_weight * ce + o->mse_weight * mse);
    rec = usbx_jv_set_num(rec, "mse", mse);
    rec = usbx_jv_set_num(rec, "ce", ce);
    rec = usbx_jv_set_num(rec, "grad_norm", gnorm);
    rec = usbx_jv_set_num(rec, "samples", ns);
    rec = usbx_jv_set_num(rec, "tokens", (double)tokens);
    rec = usbx_jv_set_num(rec, "tokens_per_s", (double)tokens / dt);
    if (W > 1) rec = usbx_jv_set_num(rec, "ranks", W);
    if (be->dev == USBX_DEV_CUDA) {
      rec = usbx_jv_set_num(rec, "tflops", flops / dt / 1e12);
      rec = usbx_jv_set_num(rec, "mfu", flops / dt / (989e12 * W));   /* H100/H200 dense bf16 peak per GPU */
    }
    bool show = rank0 && (o->log_every <= 1 || step % o->log_every == 0 || step == total);
    if (show && usbx_jsonl_write(stdout, rec)) usbx_die("<stdout>: write failed");
    if (!show) jv_free(rec);
    bool last = (total && step == total) || (!total && pos.epoch >= o->epochs);
    if (!o->no_save && ((o->save_every > 0 && step % o->save_every == 0) || last)) {
      if (save_checkpoint(&S, o, step, &pos, err, sizeof err)) { usbx_err("%s", err); rc = 1; break; }
    }
  }
  for (int k = 0; k < 2; k++) {
    step_data_join(&sds[k]);
    for (int j = 0; j < nbatch; j++) usbx_train_batch_free(&sds[k].bs[j]);
    free(sds[k].bs);
  }
  if (profile && prof_n) {
    const char *names[4] = {"data", "forward+backward", "gradient reduce", "norm+AdamW+EMA"};
    for (int i = 0; i < 4; i++) usbx_err("profile: %-16s %8.2f ms per step", names[i], 1e3 * prof[i] / prof_n);
  }
  be->free(be, acc);
  free(red); free(sq_x); free(sq_n);
  for (int i = 0; i < S.np; i++) {
    param *p = &S.p[i];
    free(p->seen);
    if (!p->len) continue;
    if (!master_is_view(&S, p)) be->free(be, p->master);
    be->free(be, p->m); be->free(be, p->v); be->free(be, p->ema);
    if (p->gs) be->free(be, p->gs);
  }
  for (int i = 0; i < S.np; i++) {
    param *p = &S.p[i];
    if (!p->sharded) continue;
    if (p->wr) be->free(be, p->wr);
    *p->d->dst = NULL;   /* pointed into the slot */
  }
  for (int k = 0; k < 2; k++) if (S.slot[k]) be->free(be, S.slot[k]);
  if (S.full) be->free(be, S.full);
  usbx_dist_close(dist);
  free(S.p); free(S.wl.v);
  usbx_trainer_free(S.tr);
  usbx_train_data_free(data);
  usbx_tok_free(tok);
  usbx_bagel_free(m);
  usbx_backend_close(be);
  return rc;
}
