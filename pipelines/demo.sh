#!/usr/bin/env bash
# demo.sh — what `make demo` runs.  Makes a small synthetic task set (math, mapping, knowledge at
# every level), renders each task's correct sandbox image and judges those renders offline with
# eval.sh --ground-truth.  THESE ARE GROUND-TRUTH RENDERS, NOT MODEL GENERATIONS: the run checks
# the task generators, the renderer, the offline judge and the pipeline, and must score 100 %.
#
# Then it evaluates a model's generations (usbx-gen at a small size) with the same judge: DEMO_CKPT=DIR,
# or by default a small random checkpoint from usbx-ckpt init (DEMO_RANDOM_CKPT=0 skips it); an
# untrained model scores whatever it scores (expect about 0 %).
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
tok=${USBX_TOKENIZER:-}
[ -n "$tok" ] && [ -f "$tok" ] || tok=$SHARED/fixtures/tokenizer/tokenizer.json
if [ -z "$ck" ] && [ "${DEMO_RANDOM_CKPT:-1}" = 1 ] && [ -f "$tok" ]; then
  # a small random BAGEL-architecture checkpoint with the Qwen vocabulary (tests/data/tiny-qwen.json)
  ck=$OUT/random-ckpt
  [ -e "$ck/ema.safetensors" ] || usbx-ckpt init --config tests/data/tiny-qwen.json --seed 1 "$ck" > /dev/null
  [ -e "$ck/tokenizer.json" ] || cp "$tok" "$ck/tokenizer.json"
fi
if [ -n "$ck" ]; then
  echo
  echo "=== 2. MODEL GENERATIONS from $ck (usbx-gen), same offline judge ==="
  echo "    (a random, UNTRAINED checkpoint: it scores whatever it scores, expect about 0 %;"
  echo "     no trained model ships with usbx yet — train one with usbx-train, see benchmark/train-demo)"
  head -n 2 "$OUT/tasks/math1.jsonl" > "$OUT/tasks/model-math1.jsonl"
  bash pipelines/eval.sh --model "$ck" -o "$OUT/model-eval" --title "MODEL generations (random untrained checkpoint): $ck" \
    --gen-args "${DEMO_GEN_ARGS:---size 64x64 --steps 8}" "$OUT/tasks/model-math1.jsonl"
else
  echo
  echo "demo: no tokenizer (run 'make tokenizer'); the model part was skipped"
fi
