#!/usr/bin/env bash
# The backward's element-wise sums (column sums of weight and bias gradients, the q/k-norm+RoPE
# backward) on one GPU, against the previous commit's binaries (old/ in the bundle):
# test_ops_cuda's backward groups (GROUP= for the whole test_ops_cuda), plain and under
# compute-sanitizer memcheck; bench_ops_cuda's element-wise section (rmsnorm_bwd rows) old/new
# alternating; the 1.59 B trainer at 8k tokens (30 steps) old/new twice and at 32k (--accum 4,
# 12 steps) once; the CUDA fixtures; Nsight Compute of one 8k step.  Bundle extracted in the repo
# root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dnb
export PATH=$PATH:/usr/local/cuda/bin
timeout 300 build/tests/test_ops_cuda ${GROUP-_bwd} > "$R/test_bwd.txt" 2>&1; echo "test_ops_cuda ${GROUP-_bwd} rc=$?"
grep -E "_bwd|FAIL|passed|failed" "$R/test_bwd.txt" | grep -v "^  " | tail -n 14
for g in norm_bwd qk_bwd matmul_bwd; do
  timeout 200 compute-sanitizer --tool memcheck build/tests/test_ops_cuda $g > "$R/memcheck_$g.txt" 2>&1; echo "memcheck $g rc=$?: $(tail -n 1 "$R/memcheck_$g.txt")"
done
for v in old new new old; do
  exe=build/bench/bench_ops_cuda; [ $v = old ] && exe=old/bench_ops_cuda
  BENCH_ONLY=ew timeout 60 $exe "$R/ew_$v.md" > /dev/null 2>&1
  echo "ew $v: $(grep rmsnorm_bwd "$R/ew_$v.md" | tr '\n' ' ')"
done
b15_setup
train_ab 8k_a $ARGS --steps 30
train_ab 8k_b $ARGS --steps 30
train_ab 32k $ARGS --accum 4 --steps 12
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -v "^  " "$R/fixtures.txt"
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train $ARGS --steps 1 > "$R/ncu.csv" 2> "$R/ncu.err"
echo "ncu step rc=$?"; python3 benchmark/ncu_summary.py "$R/ncu.csv" 30 | tee "$R/ncu_summary.txt" | head -n 24; gzip -9 "$R/ncu.csv"
date -u
