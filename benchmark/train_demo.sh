#!/usr/bin/env bash
# A real training run on one GPU: a small pixel-space BAGEL (benchmark/sandbox-small.json, random
# init) learns to draw rendered sandbox scenes ("3 cups") with the flow-matching loss; then
# usbx-gen draws held-out prompts with the untrained and the trained model and the offline
# sandbox judge scores both.  Then one timing run of a ~1.5B-parameter model for MFU.
# Run on the GPU machine from the repo root with the bundle extracted; outputs under $OUT.
#   bash benchmark/train_demo.sh [STEPS]
set -euo pipefail
. benchmark/device_env.sh
FINAL=${OUT:-/tmp/out}; W=/tmp/td; STEPS=${1:-2000}
OUT=$W/results   # everything lands here; one tarball goes to $FINAL at the end
mkdir -p "$OUT" "$W" "$FINAL"
trap 'tar -C "$W" -czf "$FINAL/results.tar.gz" results' EXIT
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${ONLY_MFU:-0}" != 1 ]; then
usbx-synth scenes --n 4000 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-synth scenes --n 48 --render "$W/heldout-img" --size 64 --seed 99 --max-count 4 | jq -c '{id, task: "math", prompt, answer}' > "$W/test.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/base" > /dev/null
cp .devdata/tokenizer.json "$W/base/"
date -u
usbx-train --model "$W/base" --out "$W/run" --device cuda --no-visual-und --lr 5e-4 --warmup 100 --schedule cosine \
  --steps "$STEPS" --expected-tokens 4096 --max-tokens 4600 --save-every $((STEPS / 4)) --log-every 10 "$W/pairs.jsonl" > "$OUT/train_log.jsonl"
date -u
tail -n 2 "$OUT/train_log.jsonl"
models="base"
for k in 1 2 4; do
  s=$((STEPS * k / 4)); ck=$W/run/$(printf %07d "$s")
  usbx-ckpt complete --base "$W/base" "$ck" > /dev/null
  models="$models step$s"
done
for m in $models; do
  model=$W/base; [ $m != base ] && model=$W/run/$(printf %07d "${m#step}")
  usbx-gen --model "$model" --out "$W/gen-$m" --modes normal --size 64x64 --device cuda --stem heldout "$W/test.jsonl" > "$W/gen-$m.jsonl"
  usbx-judge --backend sandbox < "$W/gen-$m.jsonl" > "$OUT/verdicts-$m.jsonl" 2> "$OUT/judge-$m.txt" || true
  echo "$m: $(jq -c -s '[length, (map(.score) | add), (map(.caption) | .[0:6])]' "$OUT/verdicts-$m.jsonl")"
done
python3 - "$W" "$OUT" <<'PY' || echo "no PIL: sample grid skipped"
import sys, json
from PIL import Image
W, OUT = sys.argv[1:3]
import glob, os
for path in sorted(glob.glob(f"{W}/gen-*.jsonl")):
    m = os.path.basename(path)[4:-6]
    recs = [json.loads(l) for l in open(path)][:24]
    grid = Image.new("RGB", (6 * 66, 4 * 66), "white")
    for i, r in enumerate(recs):
        grid.paste(Image.open(r["image"]).convert("RGB"), ((i % 6) * 66 + 1, (i // 6) * 66 + 1))
    grid.save(f"{OUT}/samples-{m}.png")
    if m == "base":   # the ground-truth renders of the same prompts, for comparison
        t = Image.new("RGB", (6 * 66, 4 * 66), "white")
        for i, r in enumerate(recs):
            t.paste(Image.open(f"{W}/heldout-img/{r['id']}.png").convert("RGB").resize((64, 64)), ((i % 6) * 66 + 1, (i // 6) * 66 + 1))
        t.save(f"{OUT}/samples-truth.png")
    with open(f"{OUT}/samples-{m}.txt", "w") as f:
        for i, r in enumerate(recs): f.write(f"{i}\t{r['prompt']}\n")
PY
fi
[ "${MFU:-1}" = 1 ] || exit 0
# MFU of one training step at ~1.5B parameters (256x256 pixel-space images, 4096 tokens each)
usbx-synth scenes --n 64 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null
cp .devdata/tokenizer.json "$W/b15/"
usbx-train --model "$W/b15" --out "$W/b15run" --device cuda --no-visual-und --warmup 1 --steps 6 --expected-tokens 8192 --max-tokens 8400 \
  --no-save "$W/big.jsonl" > "$OUT/mfu_log.jsonl" 2> "$OUT/mfu_err.txt" || cat "$OUT/mfu_err.txt"
cat "$OUT/mfu_log.jsonl"
nvidia-smi --query-gpu=memory.used --format=csv,noheader
# decode speed at the 7B-MoT shape after the q|k|v and gate|up fusion
if [ "${DECODE_BENCH:-1}" = 1 ]; then
  rm -rf "$W/b15" "$W/b15run" "$W/run"
  usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
  build/bench/bench_llm --model /tmp/b7 --device cuda --prefill 1000 --decode 200 --reps 3 | tee "$OUT/bench_llm_fused.json"
fi
