/* usbx-train — fine-tune a BAGEL checkpoint on training records (prompt+image pairs with the
 * flow-matching loss, conversations with cross-entropy).  Progress records on stdout, one per
 * step; checkpoints under --out.  See usbx-train(1). */
#include "cli.h"
#include "dist.h"
#include "train_loop.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  usbx_set_progname("usbx-train");
  usbx_train_opts o;
  usbx_train_defaults(&o);
  const char *preset = NULL, *schedule = "constant";
  long seed = (long)o.data.seed, expected = o.data.expected_tokens, max_tokens = o.data.max_tokens, max_per = o.data.max_tokens_per_sample;
  long prefer = o.data.prefer_buffer_before;
  double dropout = o.data.text_cond_dropout, tshift = o.data.timestep_shift;
  bool visual_gen = true, visual_und = true, freeze_vae = true, set_gen = false, set_und = false;
  /* presets are applied first; explicit flags given after override them (parsed twice) */
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc) preset = argv[i + 1];
    else if (strncmp(argv[i], "--preset=", 9) == 0) preset = argv[i] + 9;
  }
  if (preset) {
    if (strcmp(preset, "stars") == 0) {
      /* upstream train_reasoning.sh */
      visual_gen = true; visual_und = false; o.lr = 2e-5; o.epochs = 6; expected = 32768; max_tokens = 36864; max_per = 16384;
      o.freeze_vit = true;
    } else if (strcmp(preset, "knowledge") == 0) {
      /* upstream train_knowledge.sh */
      visual_gen = false; visual_und = true; o.lr = 4e-5;
    } else usbx_usage_die("--preset: expected stars or knowledge, got '%s'", preset);
  }
  bool gen_flag = visual_gen, und_flag = visual_und, deterministic = false;
  long gpus = 1, zero = 2;
  usbx_opt opts[] = {
    {"model", USBX_OPT_STR, &o.model, "DIR", "base checkpoint folder (required)", false},
    {"out", USBX_OPT_STR, &o.out, "DIR", "output folder for checkpoints OUT/<step:07d>/ (required)", false},
    {"preset", USBX_OPT_STR, &preset, "NAME", "stars (train_reasoning.sh) or knowledge (train_knowledge.sh)", false},
    {"tokenizer", USBX_OPT_STR, &o.tokenizer, "PATH", "tokenizer (default: the model folder)", false},
    {"lr", USBX_OPT_DOUBLE, &o.lr, "X", "peak learning rate (default 1e-4)", false},
    {"min-lr", USBX_OPT_DOUBLE, &o.min_lr, "X", "final learning rate of the cosine schedule (default 1e-7)", false},
    {"warmup", USBX_OPT_INT, &o.warmup, "N", "linear warmup steps; the first update has lr 0 (default 2000)", false},
    {"schedule", USBX_OPT_STR, &schedule, "NAME", "constant (default) or cosine", false},
    {"beta1", USBX_OPT_DOUBLE, &o.beta1, "X", "AdamW beta1 (default 0.9)", false},
    {"beta2", USBX_OPT_DOUBLE, &o.beta2, "X", "AdamW beta2 (default 0.95)", false},
    {"adam-eps", USBX_OPT_DOUBLE, &o.eps, "X", "AdamW epsilon (default 1e-15)", false},
    {"weight-decay", USBX_OPT_DOUBLE, &o.weight_decay, "X", "AdamW weight decay (default 0)", false},
    {"clip", USBX_OPT_DOUBLE, &o.clip, "X", "global gradient-norm clip (default 1.0; 0 = off)", false},
    {"ema", USBX_OPT_DOUBLE, &o.ema, "X", "EMA decay (default 0.9999)", false},
    {"ce-weight", USBX_OPT_DOUBLE, &o.ce_weight, "X", "weight of the text cross-entropy (default 1.0)", false},
    {"mse-weight", USBX_OPT_DOUBLE, &o.mse_weight, "X", "weight of the flow-matching MSE (default 1.0)", false},
    {"text-cond-dropout", USBX_OPT_DOUBLE, &dropout, "P", "probability of dropping a caption (default 0.1)", false},
    {"timestep-shift", USBX_OPT_DOUBLE, &tshift, "S", "training timestep shift (default 1.0)", false},
    {"expected-tokens", USBX_OPT_INT, &expected, "N", "pack samples until a batch has this many tokens (default 32768)", false},
    {"max-tokens", USBX_OPT_INT, &max_tokens, "N", "never pack a batch beyond this (default 36864)", false},
    {"max-tokens-per-sample", USBX_OPT_INT, &max_per, "N", "skip longer samples (default 16384)", false},
    {"prefer-buffer-before", USBX_OPT_INT, &prefer, "N", "packing: below N tokens a batch takes waiting (overflowed) samples first (default 16384)", false},
    {"steps", USBX_OPT_INT, &o.steps, "N", "optimizer steps (or --epochs)", false},
    {"epochs", USBX_OPT_INT, &o.epochs, "N", "passes over the data", false},
    {"save-every", USBX_OPT_INT, &o.save_every, "N", "checkpoint every N steps (and at the end)", false},
    {"log-every", USBX_OPT_INT, &o.log_every, "N", "a progress record every N steps (default 1)", false},
    {"seed", USBX_OPT_INT, &seed, "N", "data order and noise seed (default 4396)", false},
    {"device", USBX_OPT_STR, &o.device, "cpu|cpu-bf16|cuda|auto", "backend (default auto)", false},
    {"accum", USBX_OPT_INT, &o.accum, "N", "packed batches per process and step, gradients summed (default 1)", false},
    {"recompute", USBX_OPT_FLAG, &o.recompute, NULL, "recompute each decoder layer in the backward instead of keeping its activations", false},
    {"deterministic", USBX_OPT_FLAG, &deterministic, NULL, "on the GPU, the attention backward as two deterministic kernels and untimed product algorithms (slower)", false},
    {"zero", USBX_OPT_INT, &zero, "1|2|3", "data parallel sharding: 1 optimizer state, 2 also gradients (default), 3 also the decoder layers' weights", false},
    {"gpus", USBX_OPT_INT, &gpus, "N", "data parallel over N processes on this host, one per GPU (default 1)", false},
    {"freeze-llm", USBX_OPT_FLAG, &o.freeze_llm, NULL, "keep the language model fixed", true},
    {"freeze-vit", USBX_OPT_FLAG, &o.freeze_vit, NULL, "keep the ViT fixed", true},
    {"freeze-vae", USBX_OPT_FLAG, &freeze_vae, NULL, "keep the autoencoder fixed (always; it is not trained)", true},
    {"visual-gen", USBX_OPT_FLAG, &gen_flag, NULL, "train on prompt+image pairs (generation weights)", true},
    {"visual-und", USBX_OPT_FLAG, &und_flag, NULL, "load the understanding weights (ViT, connector)", true},
    {"resume", USBX_OPT_FLAG, &o.resume, NULL, "continue from the newest checkpoint in --out", false},
    {"no-save", USBX_OPT_FLAG, &o.no_save, NULL, "write no checkpoint at all (benchmarks)", false},
    {"progress", USBX_OPT_FLAG, &o.progress, NULL, "(progress records are always written to stdout)", false},
    {0},
  };
  char **files; int nfiles;
  usbx_cli_parse(argc, argv, opts, "usbx-train --model DIR --out DIR [options] [RECORDS.jsonl ...]",
                 "Fine-tunes BAGEL on training records (stdin or files): {prompt, image} pairs train the flow-matching\n"
                 "loss, {conversations} the text cross-entropy.  One progress record per step on stdout; checkpoints in\n"
                 "OUT/<step:07d>/ (model.safetensors fp32, ema.safetensors, optimizer state, train_state.json).", &files, &nfiles);
  (void)set_gen; (void)set_und;
  /* before any backend exists, and inherited by the --gpus processes */
  /* the attention backward's deterministic kernels, and products whose algorithm does not depend on timing */
  if (deterministic && (setenv("USBX_CUDA_ATTN_BWD_FUSED", "0", 1) != 0 || setenv("USBX_CUDA_GEMM_TUNE", "0", 1) != 0))
    usbx_die("--deterministic: setenv failed");
  if (!o.model || !o.out) usbx_usage_die("--model and --out are required");
  if (!freeze_vae) usbx_usage_die("--no-freeze-vae: training the autoencoder is not supported");
  if (strcmp(schedule, "constant") == 0) o.cosine = false;
  else if (strcmp(schedule, "cosine") == 0) o.cosine = true;
  else usbx_usage_die("--schedule: expected constant or cosine");
  if (!o.steps && !o.epochs) usbx_usage_die("give --steps N or --epochs N");
  if (expected < 1 || max_tokens < expected || max_per < 1) usbx_usage_die("token budgets: need 1 <= --expected-tokens <= --max-tokens");
  o.data.seed = (uint64_t)seed; o.data.expected_tokens = (int)expected; o.data.max_tokens = (int)max_tokens;
  if (prefer < 0) usbx_usage_die("--prefer-buffer-before must not be negative");
  o.data.max_tokens_per_sample = (int)max_per; o.data.prefer_buffer_before = (int)prefer; o.data.text_cond_dropout = (float)dropout; o.data.timestep_shift = (float)tshift;
  o.data.visual_gen = gen_flag; o.data.visual_und = und_flag;
  o.files = files; o.nfiles = nfiles;
  if (o.accum < 1) usbx_usage_die("--accum must be at least 1");
  if (zero < 1 || zero > 3) usbx_usage_die("--zero: expected 1, 2 or 3");
  o.zero = (int)zero;
  if (gpus < 1 || gpus > 1024) usbx_usage_die("--gpus must be between 1 and 1024");
  if (gpus > 1) {
    const char *ws = getenv("WORLD_SIZE");
    if (ws && *ws) {
      if (atol(ws) != gpus) usbx_usage_die("--gpus %ld but WORLD_SIZE=%s: give one or the other", gpus, ws);
    } else {
      if (nfiles == 0) usbx_usage_die("--gpus: give the training records as files (every process reads them)");
      free(files);
      return usbx_dist_launch((int)gpus, argv);
    }
  }
  int rc = usbx_train_run(&o);
  free(files);
  return rc;
}
