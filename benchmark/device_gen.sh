#!/usr/bin/env bash
# Image-generation timing on the GPU machine: the CUDA fixture check, then bench_gen at 512 and 1024
# on a random 7B-MoT checkpoint.  Bundle extracted in the repo root; logs under $OUT.
set -uo pipefail
. benchmark/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a 2>&1 | tee "$OUT/fixtures.txt"
[ -f /tmp/b7/ema.safetensors ] || { bin/usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null; cp .devdata/tokenizer.json /tmp/b7/; }
for s in 512x512 1024x1024; do
  timeout 300 build/bench/bench_gen --model /tmp/b7 --device cuda --size $s --reps 2 --think-tokens 0 2>&1 | tee -a "$OUT/bench_gen.jsonl"
done
date -u
