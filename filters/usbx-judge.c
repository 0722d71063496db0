/* usbx-judge — judge generated images with a vision-language model behind an OpenAI-compatible
 * API (UniSandbox's two-stage protocol), writing verdict records in input order.
 *
 * Threads: one reader thread parses input records into a bounded queue; the main thread keeps
 * up to --jobs images in flight through the backend, finishes them in any order, and writes
 * them in input order.  Mapping A/B images of one group are written once both are judged, so
 * every mapping record can carry its group's score. */
#include "cli.h"
#include "judge.h"
#include "jsonl.h"
#include "openai.h"
#include "util.h"
#include "sandbox.h"
#include <errno.h>
#include <jv.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- a small string -> int hash map ---------------------------------------------------- */

typedef struct { char **keys; int *vals; size_t cap, n; } strmap;

static size_t sm_find(const strmap *m, const char *k, uint64_t h) {
  size_t i = (size_t)h & (m->cap - 1);
  while (m->keys[i] && strcmp(m->keys[i], k) != 0) i = (i + 1) & (m->cap - 1);
  return i;
}
static int sm_get(const strmap *m, const char *k) {
  if (!m->cap) return -1;
  size_t i = sm_find(m, k, usbx_hash64(k, strlen(k), 0));
  return m->keys[i] ? m->vals[i] : -1;
}
static void sm_put(strmap *m, const char *k, int v) {
  if ((m->n + 1) * 2 > m->cap) {
    strmap g = {0};
    g.cap = m->cap ? m->cap * 2 : 64;
    g.keys = xcalloc(g.cap, sizeof *g.keys);
    g.vals = xcalloc(g.cap, sizeof *g.vals);
    for (size_t i = 0; i < m->cap; i++)
      if (m->keys[i]) {
        size_t j = sm_find(&g, m->keys[i], usbx_hash64(m->keys[i], strlen(m->keys[i]), 0));
        g.keys[j] = m->keys[i]; g.vals[j] = m->vals[i];
      }
    g.n = m->n;
    free(m->keys); free(m->vals);
    *m = g;
  }
  size_t i = sm_find(m, k, usbx_hash64(k, strlen(k), 0));
  if (!m->keys[i]) { m->keys[i] = xstrdup(k); m->n++; }
  m->vals[i] = v;
}
static void sm_free(strmap *m) {
  for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
  free(m->keys); free(m->vals);
  memset(m, 0, sizeof *m);
}

/* ---- input queue filled by the reader thread ------------------------------------------- */

typedef struct { int kind; jv rec; long line; char *msg; } qent;   /* kind: 1 record, -1 bad line, 0 end */

static struct {
  pthread_mutex_t mu;
  pthread_cond_t not_full, not_empty;
  qent *buf;
  size_t cap, head, n;
  usbx_jsonl *in;
  bool keep_going, finished;
  usbx_judge_backend *backend;
} Q = {.mu = PTHREAD_MUTEX_INITIALIZER, .not_full = PTHREAD_COND_INITIALIZER, .not_empty = PTHREAD_COND_INITIALIZER};

static void *reader_main(void *arg) {
  for (;;) {
    qent e = {0};
    e.rec = jv_null();
    int r = usbx_jsonl_next(Q.in, &e.rec);
    e.kind = r;
    e.line = usbx_jsonl_line(Q.in);
    if (r < 0) e.msg = xstrdup(usbx_jsonl_error(Q.in));
    pthread_mutex_lock(&Q.mu);
    while (Q.n == Q.cap) pthread_cond_wait(&Q.not_full, &Q.mu);
    Q.buf[(Q.head + Q.n) % Q.cap] = e;
    Q.n++;
    bool end = r == 0 || (r < 0 && !Q.keep_going);
    if (end) Q.finished = true;
    pthread_cond_signal(&Q.not_empty);
    pthread_mutex_unlock(&Q.mu);
    Q.backend->wakeup(Q.backend);
    if (end) break;
  }
  return NULL;
}

static bool q_pop(qent *e, int wait_ms) {
  pthread_mutex_lock(&Q.mu);
  if (Q.n == 0 && wait_ms > 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)wait_ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&Q.not_empty, &Q.mu, &ts);
  }
  bool got = Q.n > 0;
  if (got) {
    *e = Q.buf[Q.head];
    Q.head = (Q.head + 1) % Q.cap;
    Q.n--;
    pthread_cond_signal(&Q.not_full);
  }
  pthread_mutex_unlock(&Q.mu);
  return got;
}
static bool q_nonempty(void) {
  pthread_mutex_lock(&Q.mu);
  bool r = Q.n > 0;
  pthread_mutex_unlock(&Q.mu);
  return r;
}

/* ---- records in flight ----------------------------------------------------------------- */

enum { S_JUDGING, S_DONE };

typedef struct {
  jv rec;                 /* generation record, or the previous verdict record when resumed */
  long line;
  int state;
  bool resumed;
  usbx_task task;
  char *image, *answer;
  int group, slot;        /* mapping group index (-1 none) and slot (0 A, 1 B) */
  char *group_id;         /* mapping group name */
  usbx_verdict verdict;   /* of a resumed record */
  usbx_judge_item item;
} rslot;

typedef struct {
  int present[2];
  int yes[2];             /* -1 not judged yet, else 0/1 */
  char *mode;
} group_t;

typedef struct {
  usbx_task task;
  char *mode;
  long total, correct, errors, not_found, groups, groups_correct;
} bucket_t;

typedef struct {
  char *dir;
  usbx_task task;
  bool mixed;
  usbx_judge_row *rows;
  size_t n, cap;
} folder_t;

static volatile sig_atomic_t g_interrupted;
static void on_signal(int sig) {
  if (g_interrupted) { signal(sig, SIG_DFL); raise(sig); }
  g_interrupted = sig;
}

static struct {
  /* options */
  const char *url, *model, *prompts_path, *resume_path, *backend_name, *key_file, *shard;
  long jobs, retries;
  double timeout_s, retry_time_s;
  bool csv, keep_going, progress, print_prompts;
  long shard_i, shard_n;
  /* state */
  usbx_judge_backend *backend;
  rslot **ring;           /* slots in input order: ring[(head + k) % cap] */
  size_t rcap, rhead, rn;
  long inflight;
  strmap groups_map;
  group_t *groups;
  size_t ngroups, gcap;
  bucket_t *buckets;
  size_t nbuckets;
  folder_t *folders;
  size_t nfolders;
  strmap folder_map;
  strmap resume_map;
  jv *resume_recs;
  size_t nresume;
  long n_out, n_correct, n_error, n_notfound, n_bad, n_resumed, n_requests;
  bool eof;
  usbx_progress prog;
  double t0;
} G;

static void ring_push(rslot *s) {
  if (G.rn == G.rcap) {
    size_t ncap = G.rcap ? G.rcap * 2 : 256;
    rslot **nr = xcalloc(ncap, sizeof *nr);
    for (size_t k = 0; k < G.rn; k++) nr[k] = G.ring[(G.rhead + k) % G.rcap];
    free(G.ring);
    G.ring = nr; G.rcap = ncap; G.rhead = 0;
  }
  G.ring[(G.rhead + G.rn) % G.rcap] = s;
  G.rn++;
}

static char *dir_of(const char *path) {
  const char *s = strrchr(path, '/');
  if (!s) return xstrdup("");
  return s == path ? xstrdup("/") : strndup(path, (size_t)(s - path));
}

static bucket_t *bucket(usbx_task t, const char *mode) {
  for (size_t i = 0; i < G.nbuckets; i++)
    if (G.buckets[i].task == t && strcmp(G.buckets[i].mode, mode) == 0) return &G.buckets[i];
  G.buckets = xrealloc(G.buckets, (G.nbuckets + 1) * sizeof *G.buckets);
  bucket_t *b = &G.buckets[G.nbuckets++];
  memset(b, 0, sizeof *b);
  b->task = t;
  b->mode = xstrdup(mode);
  return b;
}

static const char *rec_mode(jv rec) {
  const char *m = usbx_jv_str(rec, "mode");
  return m ? m : "-";
}

/* Slot of a mapping record: the id's (or the image name's) _A/_B suffix, else the first free. */
static int mapping_slot(jv rec, const char *image, const group_t *g) {
  const char *id = usbx_jv_str(rec, "id");
  const char *cands[2] = {id, NULL};
  char *stem = NULL;
  const char *base = strrchr(image, '/');
  base = base ? base + 1 : image;
  const char *dot = strrchr(base, '.');
  stem = dot ? strndup(base, (size_t)(dot - base)) : xstrdup(base);
  cands[1] = stem;
  int slot = -1;
  for (int k = 0; k < 2 && slot < 0; k++) {
    const char *s = cands[k];
    if (!s) continue;
    size_t n = strlen(s);
    if (n >= 2 && s[n - 2] == '_' && (s[n - 1] == 'A' || s[n - 1] == 'B')) slot = s[n - 1] == 'B';
  }
  free(stem);
  if (slot < 0) slot = g->present[0] ? 1 : 0;
  return slot;
}

/* The group of a mapping record: its "group" field, else its id without an _A/_B suffix
 * (upstream's ID).  malloc'd, or NULL when it has none. */
static char *mapping_group(jv rec) {
  const char *grp = usbx_jv_str(rec, "group");
  if (grp) return xstrdup(grp);
  const char *id = usbx_jv_str(rec, "id");
  size_t n = id ? strlen(id) : 0;
  if (n > 2 && id[n - 2] == '_' && (id[n - 1] == 'A' || id[n - 1] == 'B')) return strndup(id, n - 2);
  return NULL;
}

/* Registers a mapping record in its group (folder + group id). */
static void add_to_group(rslot *s) {
  s->group = -1;
  if (s->task != USBX_TASK_MAPPING) return;
  char *grp = mapping_group(s->rec);
  if (!grp) return;
  s->group_id = grp;
  char *dir = dir_of(s->image);
  char *key = xasprintf("%s\x1f%s", dir, grp);
  free(dir);
  int gi = sm_get(&G.groups_map, key);
  if (gi < 0) {
    if (G.ngroups == G.gcap) {
      G.gcap = G.gcap ? G.gcap * 2 : 64;
      G.groups = xrealloc(G.groups, G.gcap * sizeof *G.groups);
    }
    gi = (int)G.ngroups++;
    group_t *g = &G.groups[gi];
    memset(g, 0, sizeof *g);
    g->yes[0] = g->yes[1] = -1;
    g->mode = xstrdup(rec_mode(s->rec));
    sm_put(&G.groups_map, key, gi);
  }
  free(key);
  group_t *g = &G.groups[gi];
  s->group = gi;
  s->slot = mapping_slot(s->rec, s->image, g);
  g->present[s->slot] = 1;
  g->yes[s->slot] = -1;
}

static void slot_done(rslot *s, usbx_verdict v) {
  s->state = S_DONE;
  if (s->group >= 0) G.groups[s->group].yes[s->slot] = v == USBX_V_YES;
}

/* A grouped mapping record may be written once every member of its group is judged. */
static bool group_ready(const rslot *s, int *score) {
  if (s->group < 0) return true;
  const group_t *g = &G.groups[s->group];
  bool all = true;
  for (int k = 0; k < 2; k++) {
    if (g->present[k] && g->yes[k] < 0) return false;
    if (!g->present[k] && !G.eof) return false;
    if (!g->present[k] || g->yes[k] != 1) all = false;
  }
  *score = all;
  return true;
}

static folder_t *folder(const char *dir) {
  int i = sm_get(&G.folder_map, dir);
  if (i >= 0) return &G.folders[i];
  G.folders = xrealloc(G.folders, (G.nfolders + 1) * sizeof *G.folders);
  folder_t *f = &G.folders[G.nfolders];
  memset(f, 0, sizeof *f);
  f->dir = xstrdup(dir);
  f->task = (usbx_task)-1;
  sm_put(&G.folder_map, dir, (int)G.nfolders);
  return &G.folders[G.nfolders++];
}

static char *dupstr(const char *s) { return xstrdup(s ? s : ""); }

static void add_row(const rslot *s, jv out, usbx_verdict v, int score) {
  char *dir = dir_of(s->image);
  folder_t *f = folder(dir);
  free(dir);
  if ((int)f->task == -1) f->task = s->task;
  if (f->task != s->task) {
    if (!f->mixed) usbx_err("%s: records of tasks %s and %s in one image folder; the CSV holds only the %s ones",
                            *f->dir ? f->dir : ".", usbx_task_name(f->task), usbx_task_name(s->task), usbx_task_name(f->task));
    f->mixed = true;
    return;
  }
  if (f->n == f->cap) { f->cap = f->cap ? f->cap * 2 : 64; f->rows = xrealloc(f->rows, f->cap * sizeof *f->rows); }
  usbx_judge_row *r = &f->rows[f->n++];
  memset(r, 0, sizeof *r);
  r->task = s->task;
  r->id = dupstr(usbx_jv_str(out, "id"));
  r->question = dupstr(usbx_jv_str(out, "prompt"));
  r->answer = dupstr(s->answer);
  r->image = dupstr(s->image);
  r->caption = dupstr(usbx_jv_str(out, "caption"));
  r->analysis = dupstr(usbx_jv_str(out, "analysis"));
  r->group = s->group_id ? xstrdup(s->group_id) : NULL;
  r->verdict = v;
  r->score = score;
  r->slot = s->slot;
}

static jv set_or_delete(jv o, const char *k, const char *v) {
  if (v) return usbx_jv_set_str(o, k, v);
  if (usbx_jv_has(o, k)) return jv_object_delete(o, jv_string(k));
  return o;
}

/* Writes the finished records at the head of the ring, in input order. */
static void emit_ready(void) {
  while (G.rn) {
    rslot *s = G.ring[G.rhead];
    if (s->state != S_DONE) return;
    int gscore = 0;
    if (!group_ready(s, &gscore)) return;
    G.ring[G.rhead] = NULL;
    G.rhead = (G.rhead + 1) % G.rcap;
    G.rn--;
    jv out;
    usbx_verdict v;
    if (s->resumed) {
      out = s->rec;
      v = s->verdict;
    } else {
      usbx_judge_item *it = &s->item;
      v = it->verdict;
      out = usbx_jv_set_str(s->rec, "verdict", usbx_verdict_name(v));
      out = usbx_jv_set_num(out, "score", v == USBX_V_YES ? 1 : 0);
      out = usbx_jv_set_str(out, "caption", it->caption ? it->caption : "");
      out = usbx_jv_set_str(out, "judge", G.backend->label);
      out = usbx_jv_set_str(out, "analysis", it->analysis ? it->analysis : "");
      out = set_or_delete(out, "error", v == USBX_V_ERROR ? (it->error ? it->error : "judge failed") : NULL);
    }
    s->rec = jv_invalid();
    if (s->group >= 0) out = usbx_jv_set_num(out, "group_score", gscore);
    else if (usbx_jv_has(out, "group_score")) out = jv_object_delete(out, jv_string("group_score"));
    int score = v == USBX_V_YES;
    bucket_t *b = bucket(s->task, rec_mode(out));
    b->total++;
    b->correct += score;
    b->errors += v == USBX_V_ERROR;
    b->not_found += v == USBX_V_NOT_FOUND;
    G.n_out++;
    G.n_correct += score;
    G.n_error += v == USBX_V_ERROR;
    G.n_notfound += v == USBX_V_NOT_FOUND;
    if (G.csv) add_row(s, out, v, score);
    if (usbx_jsonl_write(stdout, out) != 0) {
      /* _exit: the reader thread may hold stdin's lock, which exit() could wait for */
      usbx_err("<stdout>: write error: %s", strerror(errno));
      _exit(1);
    }
    usbx_progress_tick(&G.prog, 1);
    usbx_judge_item_clear(&s->item);
    free(s->image); free(s->answer); free(s->group_id);
    free(s);
  }
}

/* ---- intake ------------------------------------------------------------------------------ */

static void load_resume(const char *path) {
  usbx_jsonl *r = usbx_jsonl_open(path);
  if (!r) usbx_die("--resume: %s: %s", path, strerror(errno));
  jv rec;
  int rc;
  while ((rc = usbx_jsonl_next(r, &rec)) != 0) {
    if (rc < 0) {
      usbx_err("--resume: %s (ignored; that record is judged again)", usbx_jsonl_error(r));
      continue;
    }
    const char *img = usbx_jv_str(rec, "image");
    int v = usbx_verdict_parse(usbx_jv_str(rec, "verdict"));
    if (!img || (v != USBX_V_YES && v != USBX_V_NO)) { jv_free(rec); continue; }
    int i = sm_get(&G.resume_map, img);
    if (i >= 0) { jv_free(G.resume_recs[i]); G.resume_recs[i] = rec; continue; }
    G.resume_recs = xrealloc(G.resume_recs, (G.nresume + 1) * sizeof *G.resume_recs);
    G.resume_recs[G.nresume] = rec;
    sm_put(&G.resume_map, img, (int)G.nresume);
    G.nresume++;
  }
  usbx_jsonl_close(r);
}

static bool in_shard(jv rec, const char *image, int task) {
  if (G.shard_n <= 1) return true;
  char *grp = task == USBX_TASK_MAPPING ? mapping_group(rec) : NULL;
  char *dir = dir_of(image);
  char *key = grp ? xasprintf("%s\x1f%s", dir, grp) : xstrdup(image);
  uint64_t h = usbx_hash64(key, strlen(key), 0x9e3779b97f4a7c15ULL);
  free(dir); free(key); free(grp);
  return (long)(h % (uint64_t)G.shard_n) == G.shard_i;
}

/* Handles one input entry.  Returns false when intake must stop (bad line, default mode). */
static bool take(qent *e) {
  if (e->kind == 0) { G.eof = true; return true; }
  const char *name = usbx_jsonl_name(Q.in);
  char why[600];
  if (e->kind < 0) {
    snprintf(why, sizeof why, "%s", e->msg);
    free(e->msg);
    goto bad;
  }
  jv rec = e->rec;
  const char *task_s = usbx_jv_str(rec, "task"), *image = usbx_jv_str(rec, "image"), *answer = usbx_jv_str(rec, "answer");
  int task = usbx_task_parse(task_s);
  if (!image || !*image) { snprintf(why, sizeof why, "%s:%ld: no \"image\" path", name, e->line); jv_free(rec); goto bad; }
  if (!task_s) { snprintf(why, sizeof why, "%s:%ld: no \"task\" field", name, e->line); jv_free(rec); goto bad; }
  if (task < 0) {
    snprintf(why, sizeof why, "%s:%ld: task \"%.40s\" cannot be judged (math, mapping or knowledge)", name, e->line, task_s);
    jv_free(rec);
    goto bad;
  }
  if (!answer) { snprintf(why, sizeof why, "%s:%ld: no \"answer\" string", name, e->line); jv_free(rec); goto bad; }
  if (!in_shard(rec, image, task)) { jv_free(rec); return true; }
  rslot *s = xcalloc(1, sizeof *s);
  s->line = e->line;
  s->task = (usbx_task)task;
  s->image = xstrdup(image);
  s->answer = xstrdup(answer);
  s->rec = rec;
  add_to_group(s);
  ring_push(s);
  int ri = sm_get(&G.resume_map, s->image);
  if (ri >= 0) {
    jv old = G.resume_recs[ri];
    G.resume_recs[ri] = jv_null();
    if (jv_get_kind(old) == JV_KIND_OBJECT) {
      jv_free(s->rec);
      s->rec = old;
      s->resumed = true;
      s->verdict = (usbx_verdict)usbx_verdict_parse(usbx_jv_str(old, "verdict"));
      G.n_resumed++;
      slot_done(s, s->verdict);
      return true;
    }
    jv_free(old);
  }
  struct stat st;
  s->item.task = s->task;
  s->item.image = s->image;
  s->item.answer = s->answer;
  s->item.user = s;
  if (stat(s->image, &st) != 0 && errno == ENOENT) {
    s->item.verdict = USBX_V_NOT_FOUND;
    s->item.caption = xstrdup("");
    s->item.analysis = xstrdup(USBX_JUDGE_NOT_FOUND_ANALYSIS);
    slot_done(s, USBX_V_NOT_FOUND);
    return true;
  }
  s->state = S_JUDGING;
  G.inflight++;
  G.backend->submit(G.backend, &s->item);
  return true;
bad:
  G.n_bad++;
  usbx_err("%s%s", why, G.keep_going ? " (skipped)" : "");
  return G.keep_going;
}

static void collect(int wait_ms) {
  usbx_judge_item *done[64];
  int n = G.backend->poll(G.backend, done, 64, wait_ms);
  for (int i = 0; i < n; i++) {
    rslot *s = done[i]->user;
    G.inflight--;
    G.n_requests += done[i]->requests;
    slot_done(s, done[i]->verdict);
  }
}

static void print_summary(const char *status) {
  double secs = usbx_now() - G.t0;
  jv sum = jv_object();
  sum = usbx_jv_set_str(sum, "summary", "usbx-judge");
  sum = usbx_jv_set_str(sum, "status", status);
  sum = usbx_jv_set_num(sum, "total", (double)G.n_out);
  sum = usbx_jv_set_num(sum, "correct", (double)G.n_correct);
  sum = usbx_jv_set_num(sum, "accuracy", G.n_out ? (double)G.n_correct / (double)G.n_out : 0);
  sum = usbx_jv_set_num(sum, "errors", (double)G.n_error);
  sum = usbx_jv_set_num(sum, "image_not_found", (double)G.n_notfound);
  sum = usbx_jv_set_num(sum, "bad_lines", (double)G.n_bad);
  sum = usbx_jv_set_num(sum, "resumed", (double)G.n_resumed);
  sum = usbx_jv_set_num(sum, "requests", (double)G.n_requests);
  sum = usbx_jv_set_num(sum, "seconds", secs);
  sum = usbx_jv_set_num(sum, "images_per_s", secs > 0 ? (double)G.n_out / secs : 0);
  sum = usbx_jv_set_str(sum, "judge", G.backend->label);
  /* mapping groups per bucket */
  for (size_t gi = 0; gi < G.ngroups; gi++) {
    group_t *g = &G.groups[gi];
    bucket_t *b = bucket(USBX_TASK_MAPPING, g->mode);
    b->groups++;
    b->groups_correct += g->present[0] && g->present[1] && g->yes[0] == 1 && g->yes[1] == 1;
  }
  jv by = jv_array();
  for (size_t i = 0; i < G.nbuckets; i++) {
    bucket_t *b = &G.buckets[i];
    jv o = jv_object();
    o = usbx_jv_set_str(o, "task", usbx_task_name(b->task));
    o = usbx_jv_set_str(o, "mode", b->mode);
    bool grouped = b->task == USBX_TASK_MAPPING && b->groups > 0;
    long tot = grouped ? b->groups : b->total, cor = grouped ? b->groups_correct : b->correct;
    o = usbx_jv_set_num(o, "total", (double)tot);
    o = usbx_jv_set_num(o, "correct", (double)cor);
    o = usbx_jv_set_num(o, "accuracy", tot ? (double)cor / (double)tot : 0);
    if (grouped) {
      o = usbx_jv_set_str(o, "unit", "group");
      o = usbx_jv_set_num(o, "images", (double)b->total);
      o = usbx_jv_set_num(o, "images_correct", (double)b->correct);
    }
    o = usbx_jv_set_num(o, "errors", (double)b->errors);
    o = usbx_jv_set_num(o, "image_not_found", (double)b->not_found);
    by = jv_array_append(by, o);
  }
  sum = jv_object_set(sum, jv_string("by"), by);
  fflush(stdout);
  usbx_jsonl_write(stderr, sum);
}

static void write_reports(int *rc) {
  double dur = usbx_now() - G.t0;
  for (size_t i = 0; i < G.nfolders; i++) {
    folder_t *f = &G.folders[i];
    char err[600];
    if (usbx_judge_write_report(f->dir, f->task, f->rows, f->n, dur, NULL, err, sizeof err) != 0) {
      usbx_err("--csv: %s", err);
      *rc = 1;
    }
    for (size_t k = 0; k < f->n; k++) {
      usbx_judge_row *r = &f->rows[k];
      free(r->id); free(r->question); free(r->answer); free(r->image); free(r->caption); free(r->analysis); free(r->group);
    }
    free(f->rows); free(f->dir);
  }
}

static const char *usage = "usbx-judge [options] [FILE] < generation.jsonl > verdicts.jsonl";
static const char *description =
  "Judges generated images with a vision-language model behind an OpenAI-compatible API (vLLM serving\n"
  "Qwen2.5-VL-7B-Instruct), in UniSandbox's two stages: a strict caption, then a YES/NO comparison with\n"
  "the expected answer.  Writes verdict records in input order; the API key comes from OPENAI_API_KEY or\n"
  "--api-key-file.  See usbx-judge(1).";

int main(int argc, char **argv) {
  usbx_set_progname("usbx-judge");
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (strcmp(argv[i], "--api-key") == 0 || strncmp(argv[i], "--api-key=", 10) == 0)
      usbx_usage_die("--api-key: keys are never taken on the command line (other users can read it); "
                     "set OPENAI_API_KEY or use --api-key-file FILE");
  }
  G.url = "http://localhost:8000/v1";
  G.model = "Qwen/Qwen2.5-VL-7B-Instruct";
  G.backend_name = "openai";
  G.jobs = 32;
  G.retries = 5;
  G.timeout_s = 60;
  G.retry_time_s = 30;
  usbx_opt opts[] = {
    {"url", USBX_OPT_STR, &G.url, "URL", "OpenAI-compatible base URL (default http://localhost:8000/v1)", false},
    {"model", USBX_OPT_STR, &G.model, "NAME", "served model name (default Qwen/Qwen2.5-VL-7B-Instruct)", false},
    {"jobs", USBX_OPT_INT, &G.jobs, "N", "requests in flight (default 32)", false},
    {"prompts", USBX_OPT_STR, &G.prompts_path, "FILE", "prompt set in the eval_prompts.json format (default: built in)", false},
    {"print-prompts", USBX_OPT_FLAG, &G.print_prompts, NULL, "write the built-in prompt set (JSON) to stdout and exit", false},
    {"csv", USBX_OPT_FLAG, &G.csv, NULL, "also write evaluation_results.csv/.log in each image folder", false},
    {"keep-going", USBX_OPT_FLAG, &G.keep_going, NULL, "skip bad input lines instead of stopping", false},
    {"resume", USBX_OPT_STR, &G.resume_path, "FILE", "reuse YES/NO verdicts of a previous (possibly cut) verdict file", false},
    {"backend", USBX_OPT_STR, &G.backend_name, "NAME", "openai (default) or sandbox", false},
    {"api-key-file", USBX_OPT_STR, &G.key_file, "FILE", "read the API key from FILE (else OPENAI_API_KEY)", false},
    {"timeout", USBX_OPT_DOUBLE, &G.timeout_s, "SECONDS", "per-request timeout (default 60)", false},
    {"retries", USBX_OPT_INT, &G.retries, "N", "retries per request on connection errors, timeouts, 429, 5xx (default 5)", false},
    {"retry-time", USBX_OPT_DOUBLE, &G.retry_time_s, "SECONDS", "no retry starts later than this after a request's first try (default 30)", false},
    {"shard", USBX_OPT_STR, &G.shard, "I/N", "judge only shard I of N (mapping groups stay together)", false},
    {"progress", USBX_OPT_FLAG, &G.progress, NULL, "progress line on stderr even when it is not a terminal", false},
    {0},
  };
  char **pos;
  int npos;
  usbx_cli_parse(argc, argv, opts, usage, description, &pos, &npos);
  if (G.print_prompts) {
    fputs(usbx_judge_default_prompts, stdout);
    free(pos);
    return fflush(stdout) == 0 ? 0 : 1;
  }
  if (npos > 1) usbx_usage_die("at most one input FILE");
  if (G.jobs < 1 || G.jobs > 4096) usbx_usage_die("--jobs: expected 1..4096, got %ld", G.jobs);
  if (G.retries < 0 || G.retries > 100) usbx_usage_die("--retries: expected 0..100, got %ld", G.retries);
  if (!(G.timeout_s > 0)) usbx_usage_die("--timeout: expected seconds > 0");
  if (!(G.retry_time_s >= 0)) usbx_usage_die("--retry-time: expected seconds >= 0");
  G.shard_n = 1;
  if (G.shard) usbx_parse_shard(G.shard, &G.shard_i, &G.shard_n);
  bool sandbox = strcmp(G.backend_name, "sandbox") == 0;
  if (!sandbox && strcmp(G.backend_name, "openai") != 0) usbx_usage_die("--backend: expected openai or sandbox, got '%s'", G.backend_name);

  usbx_judge_prompts prompts;
  char err[1024];
  if (G.prompts_path ? usbx_judge_prompts_load(&prompts, G.prompts_path, err, sizeof err)
                     : usbx_judge_prompts_builtin(&prompts, err, sizeof err))
    usbx_die("--prompts: %s", err);

  char *key = NULL;
  if (sandbox) {
    /* the offline judge of the sandbox world: reads the rendered scenes back exactly */
    G.backend = usbx_judge_backend_sync("sandbox", "sandbox", usbx_sandbox_judge);
  } else if (G.key_file) {
    if (usbx_oai_read_key_file(G.key_file, &key, err, sizeof err) != 0) usbx_die("%s", err);
  } else if (getenv("OPENAI_API_KEY") && *getenv("OPENAI_API_KEY")) {
    key = xstrdup(getenv("OPENAI_API_KEY"));
  }
  usbx_judge_openai_opts oo = {.url = G.url, .model = G.model, .api_key = key, .jobs = (int)G.jobs,
                               .timeout_s = G.timeout_s, .retry_time_s = G.retry_time_s, .retries = (int)G.retries,
                               .prompts = &prompts};
  if (!sandbox) G.backend = usbx_judge_backend_openai(&oo, err, sizeof err);
  if (key) { memset(key, 0, strlen(key)); free(key); }
  if (!G.backend) usbx_die("%s", err);

  if (G.resume_path) load_resume(G.resume_path);

  Q.in = usbx_jsonl_open(npos ? pos[0] : NULL);
  if (!Q.in) usbx_die("%s: %s", pos[0], strerror(errno));
  Q.keep_going = G.keep_going;
  Q.backend = G.backend;
  Q.cap = (size_t)G.jobs * 4 + 64;
  Q.buf = xcalloc(Q.cap, sizeof *Q.buf);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  G.t0 = usbx_now();
  usbx_progress_init(&G.prog, G.progress, 0, "images");
  pthread_t reader;
  if (pthread_create(&reader, NULL, reader_main, NULL) != 0) usbx_die("pthread_create failed");

  const long window = G.jobs * 16 + 1024;   /* records read ahead of the oldest unwritten one */
  bool stopped = false;                     /* a bad line ended intake (default mode) */
  while (!g_interrupted) {
    /* read while there is room in flight and the read-ahead window is not full (a group
     * waiting for its partner may need more input, so then the window does not apply) */
    while (!G.eof && !stopped && G.inflight < G.backend->capacity) {
      bool head_waits_group = G.rn && G.ring[G.rhead]->state == S_DONE;
      if ((long)G.rn >= window && !head_waits_group) break;
      qent e;
      if (!q_pop(&e, 0)) break;
      if (!take(&e)) stopped = true;
    }
    emit_ready();
    if ((G.eof || stopped) && G.inflight == 0) {
      G.eof = true;     /* nothing more comes: groups with a missing member are complete */
      emit_ready();
      if (G.rn == 0) break;
      continue;
    }
    if (G.inflight > 0) {
      bool more = !G.eof && !stopped && G.inflight < G.backend->capacity && q_nonempty();
      collect(more ? 0 : 200);
    } else {
      qent e;
      if (q_pop(&e, 200)) { if (!take(&e)) stopped = true; }
    }
  }
  usbx_progress_done(&G.prog);
  if (g_interrupted) {
    emit_ready();
    print_summary("interrupted");
    usbx_err("interrupted: %ld records written; rerun with --resume to finish", G.n_out);
    fflush(stdout);
    fflush(stderr);
    _exit(130);
  }
  pthread_join(reader, NULL);   /* it has ended: end of input, or the bad line that stopped intake */
  int rc = 0;
  if (G.csv && !stopped) write_reports(&rc);
  if (G.n_error || G.n_bad || stopped) rc = 1;
  if (G.n_error) usbx_err("%ld of %ld records have verdict ERROR (judge failures); rerun with --resume to retry them", G.n_error, G.n_out);
  print_summary(stopped ? "stopped" : "done");   /* the last line on stderr */
  G.backend->destroy(G.backend);
  usbx_judge_prompts_free(&prompts);
  usbx_jsonl_close(Q.in);
  for (size_t i = 0; i < G.nresume; i++) jv_free(G.resume_recs[i]);
  free(G.resume_recs);
  for (size_t i = 0; i < G.ngroups; i++) free(G.groups[i].mode);
  for (size_t i = 0; i < G.nbuckets; i++) free(G.buckets[i].mode);
  free(G.groups); free(G.buckets); free(G.folders); free(G.ring); free(Q.buf); free(pos);
  sm_free(&G.groups_map); sm_free(&G.folder_map); sm_free(&G.resume_map);
  return rc;
}
