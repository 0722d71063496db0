#!/usr/bin/env bash
# The autoencoder's default arithmetic (f32_mode 3: bf16x3 split products from 256 columns) on one
# GPU: test_ops_cuda, the fixture check, bench_vae (decode in every mode, encode), and whole images
# at the 7B-MoT shape with the default against fp32 throughout (USBX_CUDA_F32_MODE=0), same call.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dvg
timeout 150 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; grep -E "matmul_f32|checks" "$R/test_ops_cuda.txt" | tail -n 5
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; cat "$R/fixtures.txt"
timeout 200 build/bench/bench_vae --size 1024 --reps 3 --check 128 > "$R/bench_vae_1024.txt" 2>&1; tail -n 1 "$R/bench_vae_1024.txt"
timeout 150 bin/usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
for s in 1024x1024 512x512; do
  for m in 3 0; do
    USBX_CUDA_F32_MODE=$m timeout 200 build/bench/bench_gen --model /tmp/b7 --device cuda --size $s --reps 1 --think-tokens 0 2>&1 \
      | sed "s/^{/{\"f32_mode\":$m,/" | tee -a "$R/bench_gen.jsonl" | tail -n 1
  done
done
date -u
