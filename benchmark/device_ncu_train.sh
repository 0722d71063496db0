#!/usr/bin/env bash
# Where one training step of the ~1.5B model (8k tokens, one GPU) spends its GPU time, by kernel:
# Nsight Compute's gpu__time_duration per launch (clocks left alone), summed per kernel name.
# Then the same step timed normally with USBX_TRAIN_PROFILE=1.  One tarball of results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dn
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
b15_setup
USBX_TRAIN_PROFILE=1 timeout 120 usbx-train $ARGS --steps 6 > "$R/plain.jsonl" 2> "$R/plain.err"; tail -n 14 "$R/plain.err"
timeout 400 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train $ARGS --steps 1 > "$R/ncu.csv" 2> "$R/ncu.err"
echo "ncu rc=$?"; tail -n 3 "$R/ncu.err"
python3 benchmark/ncu_summary.py "$R/ncu.csv" 40 | tee "$R/ncu_summary.txt"
date -u
