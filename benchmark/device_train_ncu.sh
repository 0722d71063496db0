#!/usr/bin/env bash
# test_ops_cuda, then where one 1.59 B training step's GPU time goes (Nsight Compute, per-kernel
# durations of one step; the first step also runs the weight uploads' conversions).  TESTS=0 skips
# test_ops_cuda.  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dtn
if [ "${TESTS:-1}" = 1 ]; then
  timeout 200 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
fi
b15_setup
timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train $ARGS --steps 1 > "$R/ncu.csv" 2> "$R/ncu.err"
echo "ncu step rc=$?"
python3 benchmark/ncu_summary.py "$R/ncu.csv" 60 | tee "$R/ncu_summary.txt"
date -u
