#!/usr/bin/env bash
# Text-to-image at the 7B-MoT shape (random weights) with the default attention kernels (wgmma on
# sm_90) against the mma.sync kernels (USBX_CUDA_ATTN_VARIANT=3), same call: test_ops_cuda, its
# attention group under compute-sanitizer memcheck (SANITIZE=0 skips), the CUDA fixture check, bench_gen at 1024x1024 (with the 100-token think overhead) and 512x512,
# and the PyTorch composition of the LLM passes (benchmark/torch_gen_baseline.py).
# Bundle extracted in the repo root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dga
timeout 200 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
[ "${SANITIZE:-1}" = 1 ] && { timeout 300 compute-sanitizer --tool memcheck build/tests/test_ops_cuda attention > "$R/memcheck_attention.txt" 2>&1; echo "memcheck rc=$?"; tail -n 3 "$R/memcheck_attention.txt"; }
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; cat "$R/fixtures.txt"
timeout 150 bin/usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
for v in 5 3; do
  think=0; [ $v = 5 ] && think=100
  for s in 1024x1024 512x512; do
    USBX_CUDA_ATTN_VARIANT=$v timeout 200 build/bench/bench_gen --model /tmp/b7 --device cuda --size $s --reps 2 --think-tokens $think 2>&1 \
      | sed "s/^{/{\"attn_variant\":$v,/" | tee -a "$R/bench_gen.jsonl" | tail -n 1
    think=0
  done
done
[ "${TORCH:-1}" = 1 ] && for s in 1024 512; do timeout 120 python3 benchmark/torch_gen_baseline.py --size $s 2>&1 | tail -n 1 | tee -a "$R/torch_gen.jsonl"; done
date -u
