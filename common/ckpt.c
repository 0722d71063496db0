/* ckpt.c — usbx-ckpt inspect / complete / convert.  See ckpt.h and man/man1/usbx-ckpt.1.
 *
 * Memory: source files are memory-mapped and validated; tensors are then streamed in CHUNK-sized
 * pieces (read by a prefetch thread, see below) through a conversion buffer into the safetensors
 * writer (one 16 MB buffer), so the resident set stays a few tens of MB for any checkpoint. */
#include "ckpt.h"
#include "cli.h"
#include "jsonl.h"
#include "util.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (4u << 20)   /* bytes of source (or output) handled per step */

static bool g_progress;    /* --progress: a progress line on stderr even when it is not a terminal */

static void emit(jv rec) {
  if (usbx_jsonl_write(stdout, rec) != 0) usbx_die("<stdout>: write error");
}

static jv shape_jv(const usbx_st_tensor *t) {
  jv a = jv_array();
  for (int k = 0; k < t->ndim; k++) a = jv_array_append(a, jv_number((double)t->shape[k]));
  return a;
}

static uint64_t numel_of(const usbx_st_tensor *t) {
  uint64_t n = 1;
  for (int k = 0; k < t->ndim; k++) n *= (uint64_t)t->shape[k];
  return n;
}

/* ------------------------------------------------------------------------------------------ */
/* Streaming write
 *
 * The source bytes are read by a prefetch thread into a ring of NBUF aligned buffers while the
 * calling thread converts (usbx_convert) and writes the chunks read before.  Reads use O_DIRECT
 * where the file system allows it (no page-cache copy, no cache pollution: 1.6 GB/s with almost
 * no CPU on the development VM, where buffered reads cost 3-10x the kernel time; see
 * benchmark/ckpt.md), else buffered pread; where a file cannot be reopened (or was opened from
 * memory), the bytes are copied out of the validated mapping.  Each source file is
 * reopened by path and checked (size and header bytes equal to the mapping) before use. */

#define NBUF 3
#define ALIGN 4096u

typedef struct {
  const usbx_st_file *file;
  int fd_direct, fd_buf;          /* -1 when unavailable */
} src_file;

typedef struct {                   /* one chunk: bytes [pos, pos+len) of a file, as dtype in */
  src_file *src;
  uint64_t pos;
  const unsigned char *mem;        /* the same bytes in memory (the mapping) */
  size_t len;
  usbx_dtype in, out;              /* converted by the consumer when they differ */
} rd_task;

typedef struct {
  rd_task *task;
  size_t ntask;
  unsigned char *buf[NBUF];
  const unsigned char *data[NBUF]; /* the task's bytes inside buf */
  size_t filled, used;             /* tasks read so far / released by the consumer */
  bool failed, stop;
  char err[600];
  pthread_mutex_t mu;
  pthread_cond_t cv;
} prefetch;

static int src_open(src_file *s, const usbx_st_file *f) {
  s->file = f;
  s->fd_direct = s->fd_buf = -1;
  if (!f->map || getenv("USBX_CKPT_MMAP")) return 0;
  int fd = open(f->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  /* The same file as the one validated?  Size and the header bytes must match the mapping. */
  struct stat st;
  size_t hl = (size_t)(f->data_area - (const uint8_t *)f->map);
  unsigned char *h = xmalloc(hl + 1);
  bool same = fstat(fd, &st) == 0 && (size_t)st.st_size == f->map_len && pread(fd, h, hl, 0) == (ssize_t)hl &&
              memcmp(h, f->map, hl) == 0;
  free(h);
  if (!same) { close(fd); return 0; }
  (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  s->fd_buf = fd;
  if (!getenv("USBX_CKPT_NO_DIRECT")) s->fd_direct = open(f->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
  return 0;
}

static void src_close(src_file *s) {
  if (s->fd_direct >= 0) close(s->fd_direct);
  if (s->fd_buf >= 0) close(s->fd_buf);
}

/* pread until len bytes or end of file.  With direct set, a short read is the end of the file
 * (an O_DIRECT read can only continue at an aligned offset). */
static ssize_t pread_full(int fd, unsigned char *buf, size_t len, uint64_t pos, bool direct) {
  size_t done = 0;
  while (done < len) {
    ssize_t k = pread(fd, buf + done, len - done, (off_t)(pos + done));
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return -1;
    if (k == 0) break;
    done += (size_t)k;
    if (direct && done < len) break;
  }
  return (ssize_t)done;
}

/* Reads one task into buf (CHUNK + 2*ALIGN bytes, aligned); returns the task's bytes. */
static const unsigned char *read_task(rd_task *t, unsigned char *buf, char *err, size_t errlen) {
  src_file *s = t->src;
  if (s->fd_direct >= 0) {
    uint64_t a = t->pos & ~(uint64_t)(ALIGN - 1);
    uint64_t b = (t->pos + t->len + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
    ssize_t k = pread_full(s->fd_direct, buf, (size_t)(b - a), a, true);
    if (k >= 0 && (uint64_t)k >= t->pos + t->len - a) return buf + (t->pos - a);
    if (k < 0 && errno != EINVAL) {
      snprintf(err, errlen, "%s: read: %s", s->file->path, strerror(errno));
      return NULL;
    }
    close(s->fd_direct);   /* O_DIRECT refused (EINVAL): buffered reads from now on */
    s->fd_direct = -1;
  }
  if (s->fd_buf >= 0) {
    ssize_t k = pread_full(s->fd_buf, buf, t->len, t->pos, false);
    if (k == (ssize_t)t->len) {
      (void)posix_fadvise(s->fd_buf, (off_t)t->pos, (off_t)t->len, POSIX_FADV_DONTNEED);
      return buf;
    }
    snprintf(err, errlen, "%s: read: %s", s->file->path, k < 0 ? strerror(errno) : "file shrank while reading");
    return NULL;
  }
  memcpy(buf, t->mem, t->len);
  usbx_st_dontneed_range(s->file, t->mem, t->len);
  return buf;
}

static void *prefetch_main(void *arg) {
  prefetch *p = arg;
  for (size_t i = 0; i < p->ntask; i++) {
    pthread_mutex_lock(&p->mu);
    while (!p->stop && i >= p->used + NBUF) pthread_cond_wait(&p->cv, &p->mu);
    bool stop = p->stop;
    pthread_mutex_unlock(&p->mu);
    if (stop) break;
    char err[600];
    rd_task *t = &p->task[i];
    const unsigned char *d = read_task(t, p->buf[i % NBUF], err, sizeof err);
    pthread_mutex_lock(&p->mu);
    if (!d) {
      p->failed = true;
      snprintf(p->err, sizeof p->err, "%s", err);
    } else {
      p->data[i % NBUF] = d;
      p->filled = i + 1;
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (!d) break;
  }
  return NULL;
}

/* The bytes of task i (in order), or NULL on a read error (message in p->err). */
static const unsigned char *prefetch_get(prefetch *p, size_t i) {
  pthread_mutex_lock(&p->mu);
  while (!p->failed && p->filled <= i) pthread_cond_wait(&p->cv, &p->mu);
  const unsigned char *d = p->filled > i ? p->data[i % NBUF] : NULL;
  pthread_mutex_unlock(&p->mu);
  return d;
}

static void prefetch_release(prefetch *p, size_t i) {
  pthread_mutex_lock(&p->mu);
  p->used = i + 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

int usbx_ckpt_write(const char *path, const usbx_ckpt_item *items, size_t n, jv metadata, char *err, size_t errlen) {
  /* Layout by decreasing element size, stable: every tensor starts at a multiple of its size. */
  size_t *ord = xmalloc((n + 1) * sizeof *ord);
  size_t k = 0;
  for (size_t sz = 8; sz >= 1; sz /= 2)
    for (size_t i = 0; i < n; i++)
      if (usbx_dtype_size(items[i].out) == sz) ord[k++] = i;
  for (size_t i = 0; i < n; i++) {   /* any size not a power of two up to 8 (none today) */
    size_t s = usbx_dtype_size(items[i].out);
    if (s != 8 && s != 4 && s != 2 && s != 1) ord[k++] = i;
  }
  usbx_st_decl *d = xcalloc(n + 1, sizeof *d);
  for (size_t j = 0; j < n; j++) {
    const usbx_st_tensor *t = items[ord[j]].t;
    d[j].name = t->name;
    d[j].dtype = items[ord[j]].out;
    d[j].ndim = t->ndim;
    memcpy(d[j].shape, t->shape, sizeof d[j].shape);
  }

  /* Source files, and the read tasks: each tensor in CHUNK-sized pieces that hold whole
   * elements of both the source and the output dtype. */
  src_file *src = xcalloc(n + 1, sizeof *src);
  size_t nsrc = 0, ntask = 0, cap = 64;
  rd_task *task = xmalloc(cap * sizeof *task);
  for (size_t j = 0; j < n; j++) {
    const usbx_ckpt_item *it = &items[ord[j]];
    size_t si = 0;
    while (si < nsrc && src[si].file != it->file) si++;
    if (si == nsrc) src_open(&src[nsrc++], it->file);
    size_t ie = usbx_dtype_size(it->t->dtype), oe = usbx_dtype_size(it->out);
    size_t step = it->out == it->t->dtype ? CHUNK : (CHUNK / (ie > oe ? ie : oe)) * ie;
    const unsigned char *mem = it->t->data;
    uint64_t base = it->file->map ? (uint64_t)(mem - (const unsigned char *)it->file->map) : 0;
    uint64_t bytes = it->t->end - it->t->begin;
    for (uint64_t off = 0; off < bytes; off += step) {
      if (ntask == cap) task = xrealloc(task, (cap *= 2) * sizeof *task);
      task[ntask++] = (rd_task){&src[si], base + off, mem + off, bytes - off < step ? (size_t)(bytes - off) : step,
                                it->t->dtype, it->out};
    }
  }

  int rc = -1;
  unsigned char *cbuf = NULL;
  prefetch p;
  memset(&p, 0, sizeof p);
  bool started = false;
  usbx_st_writer *w = usbx_st_writer_begin(path, d, n, metadata, err, errlen);
  if (!w) goto out;
  cbuf = xmalloc(CHUNK);
  p.task = task;
  p.ntask = ntask;
  for (int b = 0; b < NBUF; b++) {
    p.buf[b] = aligned_alloc(ALIGN, CHUNK + 2 * ALIGN);
    if (!p.buf[b]) usbx_die("out of memory");
  }
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.cv, NULL);
  pthread_t th;
  if (pthread_create(&th, NULL, prefetch_main, &p) != 0) {
    snprintf(err, errlen, "%s: cannot start the reader thread", path);
    usbx_st_writer_abort(w);
    goto out;
  }
  started = true;
  /* The reader thread only reads (it mostly waits on the disk); conversion and writing happen
   * here, so the two halves of the work overlap. */
  uint64_t total_in = 0, done_in = 0;
  for (size_t ti = 0; ti < ntask; ti++) total_in += task[ti].len;
  usbx_progress prog;
  usbx_progress_init(&prog, g_progress, (int64_t)(total_in >> 20), "MiB read");
  bool ok = true;
  for (size_t ti = 0; ti < ntask && ok; ti++) {
    rd_task *t = &task[ti];
    const unsigned char *data = prefetch_get(&p, ti);
    size_t len = t->len;
    if (!data) {
      snprintf(err, errlen, "%s", p.err);
      ok = false;
    } else if (t->in != t->out) {
      size_t ie = usbx_dtype_size(t->in), m = t->len / ie;
      if ((uintptr_t)data % ie) {   /* unaligned in the file: move to the aligned buffer start */
        memmove(p.buf[ti % NBUF], data, t->len);
        data = p.buf[ti % NBUF];
      }
      len = m * usbx_dtype_size(t->out);
      if (!usbx_convert(data, t->in, cbuf, t->out, m)) {
        snprintf(err, errlen, "%s: cannot convert %s to %s", t->src->file->path, usbx_dtype_name(t->in),
                 usbx_dtype_name(t->out));
        ok = false;
      }
      data = cbuf;
    }
    if (ok && usbx_st_writer_write(w, data, len) != 0) {
      snprintf(err, errlen, "%s", usbx_st_writer_error(w));
      ok = false;
    }
    prefetch_release(&p, ti);
    int64_t before = (int64_t)(done_in >> 20);
    done_in += t->len;
    usbx_progress_tick(&prog, (int64_t)(done_in >> 20) - before);
  }
  if (ok) usbx_progress_done(&prog);
  if (ok) rc = usbx_st_writer_finish(w, err, errlen);
  else usbx_st_writer_abort(w);
out:
  if (started) {
    pthread_mutex_lock(&p.mu);
    p.stop = true;
    pthread_cond_broadcast(&p.cv);
    pthread_mutex_unlock(&p.mu);
    pthread_join(th, NULL);
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
  }
  for (int b = 0; b < NBUF; b++) free(p.buf[b]);
  for (size_t si = 0; si < nsrc; si++) src_close(&src[si]);
  free(src);
  free(task);
  free(cbuf);
  free(d);
  free(ord);
  return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Copying without replacing */

int usbx_ckpt_copy_noreplace(const char *src, const char *dst, uint64_t *bytes, char *err, size_t errlen) {
  struct stat st;
  if (lstat(dst, &st) == 0) return 1;
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0) { snprintf(err, errlen, "%s: %s", src, strerror(errno)); return -1; }
  if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "%s: not a regular file", src);
    close(in);
    return -1;
  }
  char *tmp = usbx_st_temp_name(dst);
  int slot = usbx_st_track_temp(tmp);
  int out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  int rc = -1;
  char *buf = NULL;
  uint64_t done = 0;
  if (out < 0) { snprintf(err, errlen, "%s: cannot create %s: %s", dst, tmp, strerror(errno)); goto out; }
  (void)fchmod(out, st.st_mode & 0777);
  (void)posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
  bool fallback = false;
  for (;;) {
    ssize_t k = copy_file_range(in, NULL, out, NULL, 1u << 30, 0);
    if (k > 0) { done += (uint64_t)k; continue; }
    if (k == 0) break;
    if (errno == EINTR) continue;
    if (done == 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP || errno == EPERM)) {
      fallback = true;
      break;
    }
    snprintf(err, errlen, "%s: copy to %s: %s", src, tmp, strerror(errno));
    goto out;
  }
  if (fallback) {
    buf = xmalloc(CHUNK);
    for (;;) {
      ssize_t k = read(in, buf, CHUNK);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) { snprintf(err, errlen, "%s: read: %s", src, strerror(errno)); goto out; }
      if (k == 0) break;
      for (ssize_t o = 0; o < k;) {
        ssize_t m = write(out, buf + o, (size_t)(k - o));
        if (m < 0 && errno == EINTR) continue;
        if (m < 0) { snprintf(err, errlen, "%s: write: %s", tmp, strerror(errno)); goto out; }
        o += m;
      }
      done += (uint64_t)k;
    }
  }
  if (fsync(out) != 0) { snprintf(err, errlen, "%s: fsync: %s", tmp, strerror(errno)); goto out; }
  if (close(out) != 0) { out = -1; snprintf(err, errlen, "%s: close: %s", tmp, strerror(errno)); goto out; }
  out = -1;
  /* Move into place only where nothing exists yet. */
  if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dst, RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) { rc = 1; goto out; }
    if (errno != EINVAL && errno != ENOSYS) { snprintf(err, errlen, "%s: rename: %s", dst, strerror(errno)); goto out; }
    if (link(tmp, dst) != 0) {
      if (errno == EEXIST) { rc = 1; goto out; }
      snprintf(err, errlen, "%s: link: %s", dst, strerror(errno));
      goto out;
    }
    unlink(tmp);
  }
  free(tmp);
  tmp = NULL;
  char *dir = usbx_st_dirname(dst);
  (void)usbx_fsync_dir(dir);
  free(dir);
  if (bytes) *bytes = done;
  rc = 0;
out:
  if (out >= 0) close(out);
  close(in);
  if (tmp) unlink(tmp);
  usbx_st_untrack_temp(slot);
  free(tmp);
  free(buf);
  return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

static int cmp_strp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted names of the entries of dir (no "." or ".."); *n set.  NULL with errno on failure. */
static char **list_dir(const char *dir, size_t *n) {
  DIR *d = opendir(dir);
  if (!d) return NULL;
  size_t cap = 16, k = 0;
  char **v = xmalloc(cap * sizeof *v);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (k + 1 >= cap) v = xrealloc(v, (cap *= 2) * sizeof *v);
    v[k++] = xstrdup(e->d_name);
  }
  closedir(d);
  qsort(v, k, sizeof *v, cmp_strp);
  v[k] = NULL;
  *n = k;
  return v;
}

static void free_list(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static bool ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

/* A temporary name left by an interrupted usbx writer: ".<name>.tmp.<pid>.<n>". */
static bool is_our_temp(const char *name) { return name[0] == '.' && strstr(name, ".tmp.") != NULL; }

static bool parse_float_dtype(const char *s, usbx_dtype *out) {
  return usbx_dtype_parse(s, out) && usbx_dtype_is_float(*out);
}

/* The dtype a tensor is written as: a float tensor becomes `to` (unless keep), others stay. */
static usbx_dtype out_dtype(usbx_dtype in, bool keep, usbx_dtype to) {
  return (!keep && usbx_dtype_is_float(in)) ? to : in;
}

/* ------------------------------------------------------------------------------------------ */
/* inspect */

typedef struct {
  uint64_t tensors, params, bytes;
  uint64_t by_tensors[USBX_DTYPE_COUNT], by_params[USBX_DTYPE_COUNT], by_bytes[USBX_DTYPE_COUNT];
} totals;

static int inspect_file(const char *path, bool summary_only, totals *tot, jv *files) {
  usbx_st_file f;
  char err[1200];
  if (usbx_st_open(path, &f, err, sizeof err) != 0) {
    usbx_err("%s", err);
    return 1;
  }
  uint64_t fb = 0, fp = 0;
  for (size_t i = 0; i < f.n; i++) {
    const usbx_st_tensor *t = &f.t[i];
    uint64_t ne = numel_of(t), nb = t->end - t->begin;
    if (!summary_only) {
      jv r = jv_object();
      r = jv_object_set(r, jv_string("kind"), jv_string("tensor"));
      r = jv_object_set(r, jv_string("file"), jv_string(path));
      r = jv_object_set(r, jv_string("name"), jv_string(t->name));
      r = jv_object_set(r, jv_string("dtype"), jv_string(usbx_dtype_name(t->dtype)));
      r = jv_object_set(r, jv_string("shape"), shape_jv(t));
      r = jv_object_set(r, jv_string("params"), jv_number((double)ne));
      r = jv_object_set(r, jv_string("bytes"), jv_number((double)nb));
      r = jv_object_set(r, jv_string("offset"), jv_number((double)t->begin));
      emit(r);
    }
    tot->tensors++;
    tot->params += ne;
    tot->bytes += nb;
    tot->by_tensors[t->dtype]++;
    tot->by_params[t->dtype] += ne;
    tot->by_bytes[t->dtype] += nb;
    fb += nb;
    fp += ne;
  }
  jv fr = jv_object();
  fr = jv_object_set(fr, jv_string("file"), jv_string(path));
  fr = jv_object_set(fr, jv_string("tensors"), jv_number((double)f.n));
  fr = jv_object_set(fr, jv_string("parameters"), jv_number((double)fp));
  fr = jv_object_set(fr, jv_string("bytes"), jv_number((double)fb));
  fr = jv_object_set(fr, jv_string("file_bytes"), jv_number((double)f.map_len));
  fr = jv_object_set(fr, jv_string("metadata"), jv_copy(f.metadata));
  *files = jv_array_append(*files, fr);
  usbx_st_close(&f);
  return 0;
}

int usbx_ckpt_inspect_main(int argc, char **argv) {
  bool summary_only = false;
  const usbx_opt opts[] = {
    {"summary-only", USBX_OPT_FLAG, &summary_only, NULL, "print only the summary record of each PATH", false},
    {0},
  };
  char **pos;
  int npos;
  usbx_cli_parse(argc, argv, opts, "usbx-ckpt inspect [--summary-only] PATH...",
                 "One JSONL record per tensor (file, name, dtype, shape, params, bytes, offset) of each\n"
                 "safetensors FILE, or of every *.safetensors in a checkpoint FOLDER, then one summary\n"
                 "record per PATH (tensor count, parameters, bytes, per-dtype counts, per-file metadata).",
                 &pos, &npos);
  if (npos == 0) usbx_usage_die("inspect: give at least one safetensors file or checkpoint folder");
  int rc = 0;
  for (int p = 0; p < npos; p++) {
    const char *path = pos[p];
    struct stat st;
    if (stat(path, &st) != 0) {
      usbx_err("%s: %s", path, strerror(errno));
      rc = 1;
      continue;
    }
    totals tot;
    memset(&tot, 0, sizeof tot);
    jv files = jv_array();
    bool folder = S_ISDIR(st.st_mode);
    if (folder) {
      size_t n;
      char **names = list_dir(path, &n);
      if (!names) {
        usbx_err("%s: %s", path, strerror(errno));
        rc = 1;
        jv_free(files);
        continue;
      }
      for (size_t i = 0; i < n; i++) {
        if (!ends_with(names[i], ".safetensors") || is_our_temp(names[i])) continue;
        char *fp = usbx_path_join(path, names[i]);
        struct stat fs;
        if (stat(fp, &fs) == 0 && S_ISREG(fs.st_mode)) rc |= inspect_file(fp, summary_only, &tot, &files);
        free(fp);
      }
      free_list(names, n);
    } else {
      int r = inspect_file(path, summary_only, &tot, &files);
      rc |= r;
      if (r) { jv_free(files); continue; }
    }
    jv s = jv_object();
    s = jv_object_set(s, jv_string("kind"), jv_string("summary"));
    s = jv_object_set(s, jv_string("path"), jv_string(path));
    s = jv_object_set(s, jv_string("tensors"), jv_number((double)tot.tensors));
    s = jv_object_set(s, jv_string("parameters"), jv_number((double)tot.params));
    s = jv_object_set(s, jv_string("bytes"), jv_number((double)tot.bytes));
    jv bt = jv_object(), bp = jv_object(), bb = jv_object();
    for (int k = 0; k < USBX_DTYPE_COUNT; k++) {
      if (!tot.by_tensors[k]) continue;
      const char *dn = usbx_dtype_name((usbx_dtype)k);
      bt = jv_object_set(bt, jv_string(dn), jv_number((double)tot.by_tensors[k]));
      bp = jv_object_set(bp, jv_string(dn), jv_number((double)tot.by_params[k]));
      bb = jv_object_set(bb, jv_string(dn), jv_number((double)tot.by_bytes[k]));
    }
    s = jv_object_set(s, jv_string("tensors_by_dtype"), bt);
    s = jv_object_set(s, jv_string("parameters_by_dtype"), bp);
    s = jv_object_set(s, jv_string("bytes_by_dtype"), bb);
    s = jv_object_set(s, jv_string("files"), files);
    emit(s);
  }
  free(pos);
  return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* convert */

int usbx_ckpt_convert_main(int argc, char **argv) {
  const char *dts = NULL;
  bool quiet = false;
  const usbx_opt opts[] = {
    {"dtype", USBX_OPT_STR, &dts, "D", "target float dtype: bf16, f16, f32 or f64 (required)", false},
    {"quiet", USBX_OPT_FLAG, &quiet, NULL, "only the per-file record, not one per converted tensor", false},
    {"progress", USBX_OPT_FLAG, &g_progress, NULL, "progress line on stderr (default: only on a terminal)", false},
    {0},
  };
  char **pos;
  int npos;
  usbx_cli_parse(argc, argv, opts, "usbx-ckpt convert --dtype D FILE...",
                 "Converts every float tensor (F16, BF16, F32, F64) of each safetensors FILE to dtype D in\n"
                 "place: the new file is streamed to a temporary file beside it, fsynced and renamed over\n"
                 "the original, so a crash leaves the old file or the new one.  Other tensors are copied.\n"
                 "Records: one \"converted\" per tensor, then one \"done\" per file.",
                 &pos, &npos);
  usbx_dtype to;
  if (!dts) usbx_usage_die("convert: --dtype is required (bf16, f16, f32 or f64)");
  if (!parse_float_dtype(dts, &to)) usbx_usage_die("convert: --dtype: not a float dtype: '%s'", dts);
  if (npos == 0) usbx_usage_die("convert: give at least one safetensors file");
  int rc = 0;
  for (int p = 0; p < npos; p++) {
    const char *path = pos[p];
    usbx_st_file f;
    char err[1200];
    if (usbx_st_open(path, &f, err, sizeof err) != 0) {
      usbx_err("%s", err);
      rc = 1;
      continue;
    }
    usbx_st_sequential(&f);
    usbx_ckpt_item *items = xcalloc(f.n + 1, sizeof *items);
    size_t nconv = 0;
    for (size_t i = 0; i < f.n; i++) {
      items[i].file = &f;
      items[i].t = &f.t[i];
      items[i].out = out_dtype(f.t[i].dtype, false, to);
      if (items[i].out != f.t[i].dtype) nconv++;
    }
    uint64_t before = f.map_len;
    bool ok = true;
    if (nconv && usbx_ckpt_write(path, items, f.n, jv_copy(f.metadata), err, sizeof err) != 0) {
      usbx_err("%s", err);
      rc = 1;
      ok = false;
    }
    if (ok) {
      if (!quiet)
        for (size_t i = 0; i < f.n; i++) {
          if (items[i].out == f.t[i].dtype) continue;
          jv r = jv_object();
          r = jv_object_set(r, jv_string("kind"), jv_string("converted"));
          r = jv_object_set(r, jv_string("file"), jv_string(path));
          r = jv_object_set(r, jv_string("name"), jv_string(f.t[i].name));
          r = jv_object_set(r, jv_string("from"), jv_string(usbx_dtype_name(f.t[i].dtype)));
          r = jv_object_set(r, jv_string("to"), jv_string(usbx_dtype_name(items[i].out)));
          r = jv_object_set(r, jv_string("shape"), shape_jv(&f.t[i]));
          emit(r);
        }
      struct stat st;
      uint64_t after = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
      jv r = jv_object();
      r = jv_object_set(r, jv_string("kind"), jv_string("done"));
      r = jv_object_set(r, jv_string("file"), jv_string(path));
      r = jv_object_set(r, jv_string("dtype"), jv_string(usbx_dtype_name(to)));
      r = jv_object_set(r, jv_string("tensors"), jv_number((double)f.n));
      r = jv_object_set(r, jv_string("converted"), jv_number((double)nconv));
      r = jv_object_set(r, jv_string("changed"), jv_bool(nconv > 0));
      r = jv_object_set(r, jv_string("bytes_before"), jv_number((double)before));
      r = jv_object_set(r, jv_string("bytes_after"), jv_number((double)after));
      emit(r);
    }
    free(items);
    usbx_st_close(&f);
  }
  free(pos);
  return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* complete */

static jv rec_target(const char *kind, const char *target) {
  jv r = jv_object();
  r = jv_object_set(r, jv_string("kind"), jv_string(kind));
  return jv_object_set(r, jv_string("target"), jv_string(target));
}

static int complete_one(const char *base_dir, const usbx_st_file *ema, const char *target, bool keep, usbx_dtype to) {
  char err[1200];
  struct stat st, bst;
  if (stat(target, &st) != 0) { usbx_err("%s: %s", target, strerror(errno)); return 1; }
  if (!S_ISDIR(st.st_mode)) { usbx_err("%s: not a folder", target); return 1; }
  if (stat(base_dir, &bst) == 0 && bst.st_dev == st.st_dev && bst.st_ino == st.st_ino) {
    usbx_err("%s: is the base folder itself", target);
    return 1;
  }
  char *model_path = usbx_path_join(target, "model.safetensors");
  if (stat(model_path, &st) != 0) {
    usbx_err("%s: model.safetensors is missing (%s); nothing done for this target", target, strerror(errno));
    free(model_path);
    return 1;
  }
  usbx_st_file m;
  if (usbx_st_open(model_path, &m, err, sizeof err) != 0) {
    usbx_err("%s", err);
    free(model_path);
    return 1;
  }
  usbx_st_sequential(&m);
  int rc = 0;
  uint64_t ncopied = 0, nkept = 0;

  /* 1. Files of the base folder other than ema.safetensors, never replacing the target's. */
  size_t nn;
  char **names = list_dir(base_dir, &nn);
  if (!names) {
    usbx_err("%s: %s", base_dir, strerror(errno));
    rc = 1;
    nn = 0;
  }
  for (size_t i = 0; i < nn; i++) {
    const char *nm = names[i];
    if (!strcmp(nm, "ema.safetensors") || is_our_temp(nm)) continue;
    char *src = usbx_path_join(base_dir, nm), *dst = usbx_path_join(target, nm);
    struct stat fs;
    if (stat(src, &fs) != 0 || !S_ISREG(fs.st_mode)) {
      jv r = rec_target("skipped", target);
      r = jv_object_set(r, jv_string("file"), jv_string(nm));
      r = jv_object_set(r, jv_string("reason"), jv_string("not a regular file in the base folder"));
      emit(r);
    } else {
      uint64_t bytes = 0;
      int c = usbx_ckpt_copy_noreplace(src, dst, &bytes, err, sizeof err);
      if (c < 0) {
        usbx_err("%s", err);
        rc = 1;
      } else if (c == 1) {
        nkept++;
        jv r = rec_target("kept", target);
        r = jv_object_set(r, jv_string("file"), jv_string(nm));
        r = jv_object_set(r, jv_string("reason"), jv_string("exists in the target; not overwritten"));
        emit(r);
      } else {
        ncopied++;
        jv r = rec_target("copied", target);
        r = jv_object_set(r, jv_string("file"), jv_string(nm));
        r = jv_object_set(r, jv_string("bytes"), jv_number((double)bytes));
        emit(r);
      }
    }
    free(src);
    free(dst);
  }
  if (names) free_list(names, nn);

  /* 2. The target's tensors, then every base EMA tensor it lacks; floats converted. */
  usbx_ckpt_item *items = xcalloc(m.n + ema->n + 1, sizeof *items);
  size_t n = 0, nadd = 0, nconv = 0;
  for (size_t i = 0; i < m.n; i++) {
    items[n] = (usbx_ckpt_item){&m, &m.t[i], out_dtype(m.t[i].dtype, keep, to)};
    if (items[n].out != m.t[i].dtype) nconv++;
    n++;
  }
  for (size_t i = 0; i < ema->n; i++) {
    if (usbx_st_find(&m, ema->t[i].name)) continue;
    items[n++] = (usbx_ckpt_item){ema, &ema->t[i], out_dtype(ema->t[i].dtype, keep, to)};
    nadd++;
  }
  bool written = false;
  if (nadd || nconv) {
    if (usbx_ckpt_write(model_path, items, n, jv_copy(m.metadata), err, sizeof err) != 0) {
      usbx_err("%s", err);
      rc = 1;
    } else {
      written = true;
    }
  }
  if (written) {
    for (size_t i = 0; i < n; i++) {
      const usbx_st_tensor *t = items[i].t;
      bool added = items[i].file == ema;
      if (!added && items[i].out == t->dtype) continue;
      jv r = rec_target(added ? "added" : "converted", target);
      r = jv_object_set(r, jv_string("file"), jv_string("model.safetensors"));
      r = jv_object_set(r, jv_string("name"), jv_string(t->name));
      r = jv_object_set(r, jv_string("from"), jv_string(usbx_dtype_name(t->dtype)));
      r = jv_object_set(r, jv_string("to"), jv_string(usbx_dtype_name(items[i].out)));
      r = jv_object_set(r, jv_string("shape"), shape_jv(t));
      if (added) r = jv_object_set(r, jv_string("source"), jv_string(ema->path));
      emit(r);
    }
  }
  if (!(nadd || nconv) || written) {
    struct stat ms;
    jv r = rec_target("done", target);
    r = jv_object_set(r, jv_string("file"), jv_string("model.safetensors"));
    r = jv_object_set(r, jv_string("tensors"), jv_number((double)n));
    r = jv_object_set(r, jv_string("added"), jv_number((double)nadd));
    r = jv_object_set(r, jv_string("converted"), jv_number((double)nconv));
    r = jv_object_set(r, jv_string("copied"), jv_number((double)ncopied));
    r = jv_object_set(r, jv_string("kept"), jv_number((double)nkept));
    r = jv_object_set(r, jv_string("changed"), jv_bool(written));
    r = jv_object_set(r, jv_string("bytes"), jv_number(stat(model_path, &ms) == 0 ? (double)ms.st_size : 0));
    emit(r);
  }
  free(items);
  usbx_st_close(&m);
  free(model_path);
  return rc;
}

int usbx_ckpt_complete_main(int argc, char **argv) {
  const char *base = NULL, *dts = "bf16";
  const usbx_opt opts[] = {
    {"base", USBX_OPT_STR, &base, "DIR", "base model folder (its ema.safetensors and other files); required", false},
    {"dtype", USBX_OPT_STR, &dts, "D", "bf16 (default), f16, f32, f64, or keep: dtype of float tensors", false},
    {"progress", USBX_OPT_FLAG, &g_progress, NULL, "progress line on stderr (default: only on a terminal)", false},
    {0},
  };
  char **pos;
  int npos;
  usbx_cli_parse(argc, argv, opts, "usbx-ckpt complete --base BASE_DIR [--dtype bf16|f16|f32|keep] TARGET_DIR...",
                 "Completes fine-tuned checkpoints as upstream tool/CKPT_Transfer.py does, safely: copies\n"
                 "the base folder's files (except ema.safetensors) that the target lacks, never replacing\n"
                 "a target file; adds every tensor of BASE_DIR/ema.safetensors missing from\n"
                 "TARGET_DIR/model.safetensors; converts float tensors to the dtype; rewrites the file\n"
                 "atomically.  Records: copied, kept, skipped, added, converted, done.",
                 &pos, &npos);
  if (!base) usbx_usage_die("complete: --base BASE_DIR is required");
  bool keep = strcmp(dts, "keep") == 0;
  usbx_dtype to = USBX_BF16;
  if (!keep && !parse_float_dtype(dts, &to))
    usbx_usage_die("complete: --dtype: expected bf16, f16, f32, f64 or keep, got '%s'", dts);
  if (npos == 0) usbx_usage_die("complete: give at least one TARGET_DIR");
  struct stat st;
  if (stat(base, &st) != 0 || !S_ISDIR(st.st_mode)) usbx_die("%s: not a folder", base);
  char *ema_path = usbx_path_join(base, "ema.safetensors");
  usbx_st_file ema;
  char err[1200];
  if (usbx_st_open(ema_path, &ema, err, sizeof err) != 0) usbx_die("%s", err);
  usbx_st_sequential(&ema);
  int rc = 0;
  for (int p = 0; p < npos; p++) rc |= complete_one(base, &ema, pos[p], keep, to);
  usbx_st_close(&ema);
  free(ema_path);
  free(pos);
  return rc;
}
