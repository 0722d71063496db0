#!/usr/bin/env bash
# One GPU: op tests, the CUDA fixture check, and image generation at the 7B-MoT shape with the MLP's
# gate|up product in bf16 (default) against f32 (USBX_CUDA_GATEUP_BF16=0), in the same call.
# Bundle extracted in the repo root; logs under $OUT.
set -uo pipefail
. benchmark/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"; date -u
timeout 300 build/tests/test_ops_cuda > "$OUT/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; grep -E "FAIL|passed|failed|gate_up" "$OUT/test_ops_cuda.txt" | tail -6
for gu in 1 0; do
  echo "== fixtures, USBX_CUDA_GATEUP_BF16=$gu"
  USBX_CUDA_GATEUP_BF16=$gu bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a 2>&1 | tee "$OUT/fixtures_gu$gu.txt"
done
[ -f /tmp/b7/ema.safetensors ] || { bin/usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null; cp .devdata/tokenizer.json /tmp/b7/; }
for s in 1024x1024 512x512; do
  for gu in 1 0; do
    USBX_CUDA_GATEUP_BF16=$gu timeout 200 build/bench/bench_gen --model /tmp/b7 --device cuda --size $s --reps 1 --think-tokens 0 2>&1 \
      | sed "s/^{/{\"gateup_bf16\":$gu,/" | tee -a "$OUT/bench_gen_ab.jsonl"
  done
done
for gu in 1 0; do
  USBX_CUDA_GATEUP_BF16=$gu timeout 200 build/bench/bench_llm --model /tmp/b7 --device cuda --prefill 1000 --decode 100 --reps 2 2>&1 \
    | sed "s/^{/{\"gateup_bf16\":$gu,/" | tee -a "$OUT/bench_llm_ab.jsonl"
done
date -u
