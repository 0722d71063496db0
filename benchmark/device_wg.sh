#!/usr/bin/env bash
# The Hopper (wgmma) inference attention against the mma.sync kernels: test_ops_cuda's attention
# group, the attention micro-benchmark of every variant, and the 50-step generation time of the
# 4-layer 7B-MoT shape (benchmark/shape-7b-mot-4layers.json) with each kernel.
# Bundle extracted in the repo root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dwg
timeout 300 build/tests/test_ops_cuda attention > "$R/test_attention.txt" 2>&1; echo "test_ops_cuda attention rc=$?"
grep -E "FAIL|wgmma" "$R/test_attention.txt" | head -30; tail -n 2 "$R/test_attention.txt"
BENCH_ONLY=attn BENCH_ATTN_CASES=4 timeout 200 build/bench/bench_ops_cuda > "$R/bench_attn.md" 2>&1; echo "bench rc=$?"
cat "$R/bench_attn.md"
[ "${GEN:-1}" = 1 ] || exit 0
usbx-ckpt init --config benchmark/shape-7b-mot-4layers.json --seed 1 "$W/b7l" > /dev/null && cp .devdata/tokenizer.json "$W/b7l/"
for v in ${VARIANTS:-5 6 7 8}; do
  for sz in 1024x1024 512x512; do
    USBX_CUDA_ATTN_VARIANT=$v timeout 150 build/bench/bench_gen --model "$W/b7l" --device cuda --size $sz --reps 3 --think-tokens 0 > "$R/gen4_${sz}_v$v.json"
    echo "variant $v $sz: $(jq -c '{s_per_image, peak_alloc_gib}' "$R/gen4_${sz}_v$v.json")"
  done
done
date -u
