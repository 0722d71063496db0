#!/usr/bin/env bash
# Per-block timelines of the Hopper training attention kernels (k_fa_fwd_tma, k_fa_bwd_tma) at the
# 1.59 B trainer layout and variants: a bench_ops_cuda built with -DUSBX_ATTN_TRACE (here: make
# BUILD=build-trace NVDEFS=-DUSBX_ATTN_TRACE build-trace/bench/bench_ops_cuda; in the bundle at that
# path) writes each block's start, its warpgroups' ends, its SM and active tile count; the plain
# bench times the same layouts.  LAYOUTS: BENCH_TRAIN_LAYOUT entries; NCU=0 skips Nsight Compute's
# per-kernel durations.  Results under $OUT (benchmark/attn_trace.py summarises them).
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dat
LAYOUTS=${LAYOUTS:-8192:20 8204:20 8320:20 8192:0}
for l in $LAYOUTS; do
  tag=${l//:/_}
  BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=$l BENCH_REPS=10 timeout 120 build/bench/bench_ops_cuda "$R/bench_$tag.md" > /dev/null 2>&1
  echo "bench $l rc=$?: $(grep "^| $(echo $l | cut -d: -f1) " "$R/bench_$tag.md")"
  USBX_ATTN_TRACE=$R/trace_$tag BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=$l BENCH_REPS=3 timeout 120 \
    build-trace/bench/bench_ops_cuda "$R/tbench_$tag.md" > /dev/null 2>&1
  echo "traced $l rc=$?: $(grep "^| $(echo $l | cut -d: -f1) " "$R/tbench_$tag.md")"
done
if [ "${NCU:-1}" = 1 ]; then
  export PATH=$PATH:/usr/local/cuda/bin
  for l in ${NCU_LAYOUTS:-8192:20 8204:20}; do
    tag=${l//:/_}
    BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=$l BENCH_REPS=1 timeout 200 ncu --metrics gpu__time_duration.sum \
      build/bench/bench_ops_cuda /dev/null > "$R/ncu_$tag.txt" 2>&1
    echo "ncu $l rc=$?"
    grep -E "^  [a-z_A-Z].*\(|gpu__time_duration" "$R/ncu_$tag.txt" | paste - - | awk '{print $1, $(NF)}' | tail -40
  done
fi
date -u
