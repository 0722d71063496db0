#!/usr/bin/env bash
# A short final-tree check on one GPU: bench_gen at 1024x1024 (with the 100-token think overhead)
# and 512x512 on a random 7B-MoT checkpoint, then the 1.59 B training step at 8k tokens.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dfs
timeout 150 usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
timeout 100 build/bench/bench_gen --model /tmp/b7 --device cuda --size 1024x1024 --reps 1 --think-tokens 100 2>&1 | tee -a "$R/bench_gen.jsonl" | tail -n 1
timeout 60 build/bench/bench_gen --model /tmp/b7 --device cuda --size 512x512 --reps 2 --think-tokens 0 2>&1 | tee -a "$R/bench_gen.jsonl" | tail -n 1
rm -rf /tmp/b7
b15_setup
timeout 120 usbx-train $ARGS --steps 10 > "$R/b15.jsonl" 2> "$R/b15.err"; echo "1.59B rc=$?: $(train_summary "$R/b15.jsonl")"
date -u
