/* usbx-gen — task records in, generation records out, one PNG per record and mode at
 * OUT/test/{normal,think}/{stem}/{id}.png (the upstream layout). */
#include "cli.h"
#include "jsonl.h"
#include "png.h"
#include "tasks.h"
#include "t2i.h"
#include "util.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *USAGE = "usbx-gen --model DIR --out DIR [options] [TASKS.jsonl ...]";
static const char *DESC =
  "Generates an image for every task record (stdin, or the files given) in each mode, writes it as a PNG\n"
  "at OUT/test/{normal,think}/{stem}/{id}.png and a generation record on stdout.  Reads the project's task\n"
  "records and the upstream UniSandBox benchmark files unchanged.  Existing images are kept (their record\n"
  "is still written) unless --overwrite.";

/* One output record in input order; the images of the records with gen set are sampled
 * together when the queue is flushed. */
typedef struct {
  jv rec;
  bool gen, think;
  char *prompt, *png, *where;   /* where: "FILE:LINE: ID" for error messages */
  uint64_t seed;
  uint8_t *rgb;
} job;

typedef struct {
  job *v;
  int n, n_gen, cap;
} queue;

/* Generates the queued images, writes PNGs and then every record in order.  Returns the number of failed images. */
static long flush(queue *q, usbx_t2i *t, const usbx_t2i_opts *o, usbx_progress *prog) {
  long failed = 0;
  if (q->n_gen) {
    const char **prompts = xmalloc(sizeof(char *) * (size_t)q->n_gen);
    bool *modes = xmalloc(sizeof(bool) * (size_t)q->n_gen);
    uint64_t *seeds = xmalloc(sizeof(uint64_t) * (size_t)q->n_gen);
    uint8_t **rgb = xmalloc(sizeof(uint8_t *) * (size_t)q->n_gen);
    char **think = xmalloc(sizeof(char *) * (size_t)q->n_gen), **errs = xmalloc(sizeof(char *) * (size_t)q->n_gen);
    job **js = xmalloc(sizeof(job *) * (size_t)q->n_gen);
    int k = 0;
    for (int i = 0; i < q->n; i++)
      if (q->v[i].gen) {
        job *j = &q->v[i];
        js[k] = j; prompts[k] = j->prompt; modes[k] = j->think; seeds[k] = j->seed;
        rgb[k] = j->rgb = xmalloc((size_t)o->width * o->height * 3);
        k++;
      }
    double t0 = usbx_now();
    usbx_t2i_generate_batch(t, k, prompts, modes, o, seeds, rgb, think, errs);
    double ms = 1e3 * (usbx_now() - t0) / k;
    for (int i = 0; i < k; i++) {
      job *j = js[i];
      if (errs[i]) {
        usbx_err("%s: %s", j->where, errs[i]);
        failed++;
        jv_free(j->rec);
        j->rec = jv_invalid();
      } else {
        if (usbx_png_write(j->png, j->rgb, o->width, o->height, 3)) usbx_die("%s: %s", j->png, strerror(errno));
        j->rec = usbx_jv_set_num(j->rec, "gen_ms", ms);
        if (k > 1) j->rec = usbx_jv_set_num(j->rec, "batch", k);
        if (think[i]) j->rec = usbx_jv_set_str(j->rec, "think", think[i]);
      }
      free(think[i]); free(errs[i]);
    }
    free(prompts); free(modes); free(seeds); free(rgb); free(think); free(errs); free(js);
  }
  for (int i = 0; i < q->n; i++) {
    job *j = &q->v[i];
    if (jv_is_valid(j->rec)) {
      if (usbx_jsonl_write(stdout, j->rec)) usbx_die("<stdout>: write failed: %s", strerror(errno));
      usbx_progress_tick(prog, 1);
    } else jv_free(j->rec);
    free(j->prompt); free(j->png); free(j->where); free(j->rgb);
  }
  fflush(stdout);
  q->n = q->n_gen = 0;
  return failed;
}

int main(int argc, char **argv) {
  usbx_set_progname("usbx-gen");
  const char *model = NULL, *out = NULL, *modes_s = "normal,think", *interval_s = "0.4,1.0", *renorm_s = "global", *size_s = "1024x1024";
  const char *shard_s = NULL, *device = "auto", *stem_opt = NULL, *task_opt = NULL, *tokenizer = NULL;
  long steps = 50, seed = 42, samples = 1, max_think = 1000, batch = 1;
  double shift = 3.0, cfg_text = 4.0, cfg_img = 1.0, renorm_min = 0.0;
  bool overwrite = false, progress = false, keep_going = false;
  usbx_opt opts[] = {
    {"model", USBX_OPT_STR, &model, "DIR", "checkpoint folder (required)", false},
    {"out", USBX_OPT_STR, &out, "DIR", "output folder (required); images go to OUT/test/MODE/STEM/ID.png", false},
    {"modes", USBX_OPT_STR, &modes_s, "LIST", "normal, think or both (default normal,think)", false},
    {"steps", USBX_OPT_INT, &steps, "N", "num_timesteps (default 50: 49 model evaluations)", false},
    {"shift", USBX_OPT_DOUBLE, &shift, "X", "timestep shift (default 3.0)", false},
    {"cfg-text", USBX_OPT_DOUBLE, &cfg_text, "X", "text CFG scale (default 4.0)", false},
    {"cfg-img", USBX_OPT_DOUBLE, &cfg_img, "X", "image CFG scale (default 1.0)", false},
    {"cfg-interval", USBX_OPT_STR, &interval_s, "LO,HI", "CFG applies when LO < sigma <= HI (default 0.4,1.0)", false},
    {"cfg-renorm", USBX_OPT_STR, &renorm_s, "TYPE", "global, channel or text_channel (default global)", false},
    {"cfg-renorm-min", USBX_OPT_DOUBLE, &renorm_min, "X", "lower clamp of the renorm factor (default 0.0)", false},
    {"size", USBX_OPT_STR, &size_s, "WxH", "image size (default 1024x1024)", false},
    {"seed", USBX_OPT_INT, &seed, "N", "base seed; each image's noise comes from (seed, id, sample) (default 42)", false},
    {"samples", USBX_OPT_INT, &samples, "K", "images per task, ids get -s<k> (default 1)", false},
    {"max-think-tokens", USBX_OPT_INT, &max_think, "N", "think decoding max_length as upstream: at most N-1 tokens (default 1000)", false},
    {"batch", USBX_OPT_INT, &batch, "N", "images sampled together, one forward per step for all (default 1; lowered to what fits the GPU's free memory)", false},
    {"shard", USBX_OPT_STR, &shard_s, "I/N", "handle only the tasks with index % N == I", false},
    {"stem", USBX_OPT_STR, &stem_opt, "NAME", "image folder name for stdin input (default: the file name, or 'stdin')", false},
    {"task", USBX_OPT_STR, &task_opt, "KIND", "task kind for records without one (default: from the file name)", false},
    {"tokenizer", USBX_OPT_STR, &tokenizer, "PATH", "tokenizer.json or folder (default: the model folder)", false},
    {"device", USBX_OPT_STR, &device, "cpu|cpu-bf16|cuda|auto", "backend (default auto: the GPU when present)", false},
    {"overwrite", USBX_OPT_FLAG, &overwrite, NULL, "regenerate images that exist", false},
    {"keep-going", USBX_OPT_FLAG, &keep_going, NULL, "skip malformed input lines (counted) instead of stopping", false},
    {"progress", USBX_OPT_FLAG, &progress, NULL, "progress line on stderr even when it is not a terminal", false},
    {0},
  };
  char **files; int nfiles;
  usbx_cli_parse(argc, argv, opts, USAGE, DESC, &files, &nfiles);
  if (!model || !out) usbx_usage_die("--model and --out are required");
  bool mode_normal = false, mode_think = false;
  {
    char *m = xstrdup(modes_s), *save = NULL;
    for (char *tok = strtok_r(m, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
      if (strcmp(tok, "normal") == 0) mode_normal = true;
      else if (strcmp(tok, "think") == 0) mode_think = true;
      else usbx_usage_die("--modes: unknown mode '%s' (normal, think)", tok);
    }
    free(m);
    if (!mode_normal && !mode_think) usbx_usage_die("--modes: no mode given");
  }
  usbx_t2i_opts o = {0};
  usbx_gen_defaults(&o.gen);
  o.gen.steps = (int)steps; o.gen.shift = (float)shift; o.gen.cfg_text = (float)cfg_text; o.gen.cfg_img = (float)cfg_img;
  o.gen.renorm_min = (float)renorm_min;
  double iv[2];
  if (usbx_parse_doubles(interval_s, iv, 2) != 2) usbx_usage_die("--cfg-interval: expected LO,HI");
  o.gen.interval[0] = (float)iv[0]; o.gen.interval[1] = (float)iv[1];
  if (strcmp(renorm_s, "global") == 0) o.gen.renorm = USBX_RENORM_GLOBAL;
  else if (strcmp(renorm_s, "channel") == 0) o.gen.renorm = USBX_RENORM_CHANNEL;
  else if (strcmp(renorm_s, "text_channel") == 0) o.gen.renorm = USBX_RENORM_TEXT_CHANNEL;
  else usbx_usage_die("--cfg-renorm: expected global, channel or text_channel");
  usbx_parse_size(size_s, &o.width, &o.height);
  if (steps < 2) usbx_usage_die("--steps must be at least 2");
  if (samples < 1) usbx_usage_die("--samples must be at least 1");
  if (batch < 1 || batch > 256) usbx_usage_die("--batch must be between 1 and 256");
  if (max_think < 2) usbx_usage_die("--max-think-tokens must be at least 2");
  o.max_think_tokens = (int)max_think;
  long shard_i = 0, shard_n = 1;
  if (shard_s) usbx_parse_shard(shard_s, &shard_i, &shard_n);

  char err[1024];
  usbx_backend *be = usbx_backend_open(device);
  usbx_t2i *t = usbx_t2i_open(model, be, tokenizer, err, sizeof err);
  if (!t) usbx_die("%s", err);
  int want = (int)batch;
  if (want > 1) {
    int fit = usbx_t2i_max_batch(t, &o, want);
    if (fit < want) usbx_err("--batch %d: %d images at %dx%d fit the free GPU memory; sampling %d at a time", want, fit, o.width, o.height, fit);
    want = fit;
  }
  queue q = {0};
  usbx_progress prog;
  usbx_progress_init(&prog, progress, 0, "images");
  long bad = 0, failed = 0, index = 0;
  int nin = nfiles ? nfiles : 1;
  for (int f = 0; f < nin; f++) {
    const char *path = nfiles ? files[f] : NULL;
    usbx_jsonl *r = usbx_jsonl_open(path);
    if (!r) usbx_die("%s: %s", path, strerror(errno));
    char *stem = stem_opt ? xstrdup(stem_opt) : path ? usbx_path_stem(path) : xstrdup("stdin");
    const char *kind = task_opt ? task_opt : path ? usbx_task_kind_from_name(stem) : "free";
    jv rec;
    int st;
    while ((st = usbx_jsonl_next(r, &rec)) != 0) {
      if (st < 0) {
        if (!keep_going) { flush(&q, t, &o, &prog); usbx_die("%s", usbx_jsonl_error(r)); }
        usbx_err("%s (skipped)", usbx_jsonl_error(r));
        bad++;
        continue;
      }
      jv tasks = usbx_task_normalize(rec, kind);
      if (!jv_is_valid(tasks)) {
        jv msg = jv_invalid_get_msg(tasks);
        if (!keep_going) { flush(&q, t, &o, &prog); usbx_die("%s:%ld: %s", usbx_jsonl_name(r), usbx_jsonl_line(r), jv_string_value(msg)); }
        usbx_err("%s:%ld: %s (skipped)", usbx_jsonl_name(r), usbx_jsonl_line(r), jv_string_value(msg));
        jv_free(msg);
        bad++;
        continue;
      }
      jv_array_foreach(tasks, ti, task) {
        if (index++ % shard_n != shard_i) { jv_free(task); continue; }
        const char *id = usbx_jv_str(task, "id"), *prompt = usbx_jv_str(task, "prompt");
        for (int mi = 0; mi < 2; mi++) {
          bool think = mi == 1;
          if ((think && !mode_think) || (!think && !mode_normal)) continue;
          for (long k = 0; k < samples; k++) {
            char *rid = samples > 1 ? xasprintf("%s-s%ld", id, k) : xstrdup(id);
            char *dir = xasprintf("%s/test/%s/%s", out, think ? "think" : "normal", stem);
            char *png = xasprintf("%s/%s.png", dir, rid);
            char *key = xasprintf("%s#%ld", id, k);
            jv g = jv_copy(task);
            g = usbx_jv_set_str(g, "id", rid);
            g = usbx_jv_set_str(g, "mode", think ? "think" : "normal");
            g = usbx_jv_set_str(g, "image", png);
            g = usbx_jv_set_num(g, "seed", (double)seed);
            if (samples > 1) g = usbx_jv_set_num(g, "sample", (double)k);
            g = usbx_jv_set_str(g, "model", model);
            g = usbx_jv_set_num(g, "steps", (double)steps);
            g = usbx_jv_set_num(g, "cfg_text", cfg_text);
            g = usbx_jv_set_num(g, "cfg_img", cfg_img);
            g = usbx_jv_set_num(g, "width", o.width);
            g = usbx_jv_set_num(g, "height", o.height);
            bool gen = overwrite || !usbx_file_exists(png);
            if (!gen) g = jv_object_set(g, jv_string("skipped"), jv_true());   /* kept from an earlier run */
            else if (usbx_mkdirs(dir)) usbx_die("%s: %s", dir, strerror(errno));
            if (q.n == q.cap) { q.cap = q.cap ? 2 * q.cap : 16; q.v = xrealloc(q.v, sizeof(job) * (size_t)q.cap); }
            q.v[q.n++] = (job){.rec = g, .gen = gen, .think = think, .prompt = xstrdup(prompt), .png = png,
                               .where = xasprintf("%s:%ld: %s", usbx_jsonl_name(r), usbx_jsonl_line(r), rid),
                               .seed = usbx_hash64(key, strlen(key), (uint64_t)seed)};
            q.n_gen += gen;
            if (q.n_gen == want) failed += flush(&q, t, &o, &prog);
            free(rid); free(dir); free(key);
          }
        }
        jv_free(task);
      }
      jv_free(tasks);
    }
    usbx_jsonl_close(r);
    free(stem);
  }
  failed += flush(&q, t, &o, &prog);
  usbx_progress_done(&prog);
  free(q.v); free(files);
  usbx_t2i_close(t);
  usbx_backend_close(be);
  if (bad) usbx_err("%ld malformed input records skipped", bad);
  if (failed) usbx_err("%ld images failed", failed);
  return bad || failed ? 1 : 0;
}
