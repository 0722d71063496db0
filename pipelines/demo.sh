#!/usr/bin/env bash
# demo.sh — what `make demo` runs.  Makes a small synthetic task set (math, mapping, knowledge at
# every level), renders each task's correct sandbox image and judges those renders offline with
# eval.sh --ground-truth.  THESE ARE GROUND-TRUTH RENDERS, NOT MODEL GENERATIONS: the run checks
# the task generators, the renderer, the offline judge and the pipeline, and must score 100 %.
#
# With DEMO_CKPT=DIR (or DEMO_RANDOM_CKPT=1: a random checkpoint from usbx-ckpt init) it also
# evaluates a model's generations (usbx-gen at a small size) with the same judge; an untrained
# model scores whatever it scores (expect about 0 %).
#
# Environment: OUT (default build/demo), N (tasks per file, default 8), JUDGE (judge command, default
# usbx-judge --backend sandbox, or the test helper while that backend is not wired in).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/bin:$PATH
OUT=${OUT:-build/demo}
N=${N:-8}
SHARED=${USBX_SHARED:-$(cd .. && pwd)/shared}
mkdir -p "$OUT/tasks"

for l in 1 2 3; do
  usbx-synth math --level $l --n "$N" --seed 2026 > "$OUT/tasks/math$l.jsonl"
  usbx-synth mapping --level $l --n "$N" --seed 2026 > "$OUT/tasks/mapping$l.jsonl"
done
usbx-synth knowledge --characters 4 --seed 2026 --train "$OUT/tasks/knowledge-train.jsonl" > "$OUT/tasks/knowledge.jsonl"
usbx-synth check "$OUT"/tasks/math*.jsonl "$OUT"/tasks/mapping*.jsonl

if [ -z "${JUDGE:-}" ]; then
  usbx-synth math --level 1 --n 1 --render "$OUT/probe" > "$OUT/probe.jsonl"
  if usbx-judge --backend sandbox < "$OUT/probe.jsonl" > /dev/null 2>&1; then JUDGE="usbx-judge --backend sandbox"
  else JUDGE="${USBX_BUILD:-build}/tests/helper_sandbox_judge"; fi
fi
export JUDGE

echo
echo "=== 1. GROUND TRUTH: the sandbox's own correct renders, judged offline ($JUDGE) ==="
echo "    (not a model's output; a correct setup scores 100 % on every file)"
bash pipelines/eval.sh --ground-truth -o "$OUT/ground-truth" --title "GROUND TRUTH renders (not a model), offline sandbox judge" \
  "$OUT"/tasks/math?.jsonl "$OUT"/tasks/mapping?.jsonl "$OUT/tasks/knowledge.jsonl"
bad=$(tail -n +2 "$OUT/ground-truth/summary.csv" | awk -F, '$7 != 1' | wc -l)
if [ "$bad" != 0 ]; then echo "demo: ground truth did not score 100 % on $bad rows" >&2; exit 1; fi
echo "demo: ground truth scored 100 % on every file (summary: $OUT/ground-truth/summary.{md,csv,png})"

# Part 2 (opt-in): a model's generations.  DEMO_CKPT=DIR evaluates that checkpoint;
# DEMO_RANDOM_CKPT=1 first writes a random one with `usbx-ckpt init --like $DEMO_LIKE` (default the
# tiny fixture).  Note: the tiny fixture's vocabulary (1024) does not match the Qwen tokenizer, so
# usbx-gen refuses it; use a --like/--config whose vocab_size covers the tokenizer.
ck=${DEMO_CKPT:-}
if [ -z "$ck" ] && [ "${DEMO_RANDOM_CKPT:-0}" = 1 ]; then
  ck=$OUT/random-ckpt
  [ -e "$ck/ema.safetensors" ] || usbx-ckpt init --like "${DEMO_LIKE:-$SHARED/fixtures/bagel-tiny-a}" --seed 1 "$ck" > /dev/null
fi
if [ -n "$ck" ]; then
  echo
  echo "=== 2. MODEL GENERATIONS from $ck (usbx-gen), same offline judge ==="
  echo "    (a random, untrained checkpoint scores whatever it scores: expect about 0 %)"
  head -n 2 "$OUT/tasks/math1.jsonl" > "$OUT/tasks/model-math1.jsonl"
  bash pipelines/eval.sh --model "$ck" -o "$OUT/model-eval" --title "MODEL generations: $ck" \
    --gen-args "${DEMO_GEN_ARGS:---size 64x64 --steps 4 --tokenizer $SHARED/fixtures/tokenizer}" "$OUT/tasks/model-math1.jsonl"
fi
