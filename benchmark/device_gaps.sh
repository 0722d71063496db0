#!/usr/bin/env bash
# Where the 1.59 B training step leaves the GPU idle: CUPTI timelines (benchmark/cupti_trace.c,
# summarised by benchmark/gpu_idle.py) of 8k-token steps and 32k-token steps (--accum 4), for this
# tree's usbx-train and, when the bundle has one, the previous commit's (old/usbx-train); then the
# two alternating without tracing (AB=0 skips that).  TESTS=GROUP runs test_ops_cuda GROUP first.
# Bundle extracted in the repo root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dgaps
export PATH=$PATH:/usr/local/cuda/bin
if [ -n "${TESTS:-}" ]; then
  timeout 300 build/tests/test_ops_cuda $TESTS > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda $TESTS rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
fi
cupti_build || exit 1
b15_setup
vs=new; [ -x old/usbx-train ] && vs="old new"
for v in $vs; do
  exe=usbx-train; [ $v = old ] && exe=old/usbx-train
  for cfg in 8k 32k; do
    extra="--steps 8"; [ $cfg = 32k ] && extra="--accum 4 --steps 5"
    cupti_run "$R/trace_${cfg}_$v.txt" timeout 200 $exe $ARGS $extra > "$R/tr_${cfg}_$v.jsonl" 2> "$R/tr_${cfg}_$v.err"
    echo "traced $cfg $v rc=$?: $(train_summary "$R/tr_${cfg}_$v.jsonl")"
    python3 benchmark/gpu_idle.py "$R/trace_${cfg}_$v.txt" > "$R/idle_${cfg}_$v.txt" 2>&1; head -n 30 "$R/idle_${cfg}_$v.txt"
    gzip -9 "$R/trace_${cfg}_$v.txt"
  done
done
if [ "${AB:-1}" = 1 ] && [ -x old/usbx-train ]; then
  train_ab 8k_a $ARGS --steps 20
  train_ab 8k_b $ARGS --steps 20
  train_ab 32k $ARGS --accum 4 --steps 10
fi
date -u
