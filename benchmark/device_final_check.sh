#!/usr/bin/env bash
# The final tree on one GPU: test_ops_cuda, the CUDA fixture check, bench_gen at 1024x1024 (with the
# 100-token think overhead) and 512x512 on a random 7B-MoT checkpoint, and the 1.59 B training step.
# SLIM=1: no tests or fixtures, one timed 1024x1024 image.  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dfc
if [ "${SLIM:-0}" != 1 ]; then
  timeout 200 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
  bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; cat "$R/fixtures.txt"
fi
timeout 150 usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
timeout 120 build/bench/bench_gen --model /tmp/b7 --device cuda --size 1024x1024 --reps "$([ "${SLIM:-0}" = 1 ] && echo 1 || echo 2)" --think-tokens 100 2>&1 | tee -a "$R/bench_gen.jsonl" | tail -n 1
timeout 100 build/bench/bench_gen --model /tmp/b7 --device cuda --size 512x512 --reps 2 --think-tokens 0 2>&1 | tee -a "$R/bench_gen.jsonl" | tail -n 1
rm -rf /tmp/b7
b15_setup
timeout 120 usbx-train $ARGS --steps 10 > "$R/b15.jsonl" 2> "$R/b15.err"; echo "1.59B rc=$?: $(train_summary "$R/b15.jsonl")"
date -u
