#!/usr/bin/env bash
# The training attention kernels at the 1.59 B trainer's layout: test_ops_cuda attention_masked,
# the micro-benchmark (BENCH_ONLY=train, every flash row and the trainer layout), then Nsight
# Compute's details (throughput, warp stalls, shared-memory use) of one launch each of the Hopper
# forward (k_fa_fwd_tma) and the one-kernel backward (k_fa_bwd_tma).  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dan
export PATH=$PATH:/usr/local/cuda/bin
timeout 200 build/tests/test_ops_cuda attention_masked > "$R/test_attn.txt" 2>&1; echo "test_ops_cuda attention_masked rc=$?"; tail -n 1 "$R/test_attn.txt"; grep FAIL "$R/test_attn.txt" | head
BENCH_ONLY=train BENCH_TRAIN_KIND=4 BENCH_REPS=10 timeout 200 build/bench/bench_ops_cuda "$R/bench_train.md" > /dev/null 2>&1; echo "bench rc=$?"; grep "^|\|layout" "$R/bench_train.md"
[ "${NCU:-1}" = 1 ] && for k in k_fa_fwd_tma k_fa_bwd_tma; do
  BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_REPS=1 timeout 300 ncu --kernel-name regex:$k --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section Occupancy --section LaunchStats build/bench/bench_ops_cuda /dev/null > "$R/ncu_$k.txt" 2>&1
  echo "ncu $k rc=$?"; grep -E "Duration|Throughput|Stall|Warp Cycles|Issued|Eligible|Registers|Shared Memory|Bank" "$R/ncu_$k.txt" | head -40
done
date -u
