#!/usr/bin/env bash
# The one-kernel Hopper attention backward (k_fa_bwd_tma, option attn_bwd_fused) on one GPU:
# test_ops_cuda's attention_masked group (MEMCHECK=1: under compute-sanitizer memcheck too), the
# training-attention micro-benchmark and the 1.59 B step (8k tokens, and 32k with --accum 4) with
# the fused backward (default) and with the two-kernel one (USBX_CUDA_ATTN_BWD_FUSED=0),
# alternating, in one call (VARIANTS="1 2 0": the option's values to compare, 2 = dQ by atomics;
# QUICK=1: no profile, no 32k step).  FULL=1 adds the whole test_ops_cuda and the CUDA fixtures;
# TRACE=1 a CUPTI timeline of 6 steps at 8k (benchmark/gpu_idle.py).  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dbf
if [ "${FULL:-0}" = 1 ]; then
  timeout 240 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
  bin/usbx-ckpt check-fixtures --device cuda --verbose .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -v "^  " "$R/fixtures.txt"
else
  timeout 200 build/tests/test_ops_cuda attention_masked > "$R/test_attn.txt" 2>&1; echo "test_ops_cuda attention_masked rc=$?"; tail -n 1 "$R/test_attn.txt"
  grep -E "FAIL|n=4100|n=129 H=4/1 d=128" "$R/test_attn.txt" | head -n 40
fi
if [ "${MEMCHECK:-0}" = 1 ]; then
  export PATH=$PATH:/usr/local/cuda/bin
  timeout 300 compute-sanitizer --tool memcheck build/tests/test_ops_cuda attention_masked > "$R/memcheck.txt" 2>&1; echo "memcheck rc=$?"; tail -n 3 "$R/memcheck.txt"
fi
VARIANTS=${VARIANTS:-1 0}
for v in $VARIANTS; do
  USBX_CUDA_ATTN_BWD_FUSED=$v BENCH_ONLY=train BENCH_TRAIN_KIND=34 BENCH_REPS=10 timeout 200 build/bench/bench_ops_cuda "$R/bench_fused$v.md" > /dev/null 2>&1
  echo "bench fused=$v rc=$?"; cat "$R/bench_fused$v.md"
done
b15_setup
for rep in 1 2; do
  for v in $VARIANTS; do
    mem_sampled "$R/mem_${v}_$rep.csv" env USBX_CUDA_ATTN_BWD_FUSED=$v timeout 150 usbx-train $ARGS --steps 10 > "$R/b15_${v}_$rep.jsonl" 2> "$R/b15_${v}_$rep.err"
    echo "8k fused=$v $rep rc=$?: $(train_summary "$R/b15_${v}_$rep.jsonl"), peak $(sort -t, -k2 -n "$R/mem_${v}_$rep.csv" | tail -1) MiB"
  done
done
[ "${QUICK:-0}" = 1 ] && VARIANTS=
for v in $VARIANTS; do
  USBX_CUDA_ATTN_BWD_FUSED=$v USBX_TRAIN_PROFILE=1 timeout 150 usbx-train $ARGS --steps 8 > "$R/b15_prof$v.jsonl" 2> "$R/b15_prof$v.err"; echo "profile fused=$v"; grep profile "$R/b15_prof$v.err"
done
for v in $VARIANTS; do
  USBX_CUDA_ATTN_BWD_FUSED=$v timeout 200 usbx-train $ARGS --accum 4 --steps 8 > "$R/b15_32k_$v.jsonl" 2> "$R/b15_32k_$v.err"
  echo "32k fused=$v rc=$?: $(train_summary "$R/b15_32k_$v.jsonl")"
done
date -u
if [ "${TRACE:-0}" = 1 ] && cupti_build; then   # where the GPU waits in the 8k step (CUPTI timeline)
  cupti_run "$R/trace.txt" timeout 200 usbx-train $ARGS --steps 6 > "$R/trace_train.jsonl" 2> "$R/trace.err"
  echo "traced rc=$?"
  python3 benchmark/gpu_idle.py "$R/trace.txt" | tee "$R/gpu_idle.txt" | head -n 40; gzip -f "$R/trace.txt"
  date -u
fi
