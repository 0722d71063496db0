#!/usr/bin/env bash
# Where a text-to-image sampling pass spends its time, per kernel (Nsight Compute), at the 7B-MoT
# layer shape: 4 of the 28 decoder layers (benchmark/shape-7b-mot-4layers.json, random weights, the
# FLUX decoder), bench_gen with 3 sampling steps at 1024x1024 and 512x512; then the untraced
# 50-step time of the same model (for before/after comparisons of the pass).  With TRAIN32=1 also
# the ~1.5B training step at 32k tokens per optimizer step (--accum 4 of 8k batches) and the
# PyTorch baseline with 8 samples.  CONFIG=benchmark/shape-7b-mot.json profiles all 28 layers
# instead (STEPS, default 3, sampling steps under ncu; SIZES the image sizes).  Bundle extracted in
# the repo root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dgp
timeout 200 usbx-ckpt init --config "${CONFIG:-benchmark/shape-7b-mot-4layers.json}" --seed 1 "$W/b7l" > /dev/null && cp .devdata/tokenizer.json "$W/b7l/"
for sz in ${SIZES:-1024x1024 512x512}; do
  timeout 150 build/bench/bench_gen --model "$W/b7l" --device cuda --size $sz --reps "${REPS:-3}" --think-tokens 0 | tee "$R/gen4_$sz.json"
  [ "${NCU:-1}" = 1 ] || continue
  timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base build/bench/bench_gen --model "$W/b7l" --device cuda \
    --size $sz --steps "${STEPS:-3}" --reps 1 --think-tokens 0 > "$R/ncu_gen_$sz.csv" 2> "$R/ncu_gen_$sz.err"
  echo "ncu $sz rc=$?"
  python3 benchmark/ncu_summary.py "$R/ncu_gen_$sz.csv" 30 | tee "$R/ncu_gen_$sz.txt"
done
if [ "${TRAIN32:-0}" = 1 ]; then
  b15_setup
  timeout 200 usbx-train $ARGS --steps 8 --accum 4 > "$R/train_accum4.jsonl" 2> "$R/train_accum4.err"; echo "usbx-train accum 4 rc=$?"
  train_summary "$R/train_accum4.jsonl" | tee "$R/train_accum4.txt"
  timeout 200 python3 benchmark/torch_train_baseline.py --config benchmark/mfu-1p5b.json --samples 8 --tokens 4096 > "$R/torch_32k.txt" 2>&1
  echo "torch 32k rc=$?"; tail -n 3 "$R/torch_32k.txt"
fi
date -u
