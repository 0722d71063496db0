#!/usr/bin/env bash
# Final-tree checks on one GPU: test_ops_cuda, the CUDA fixture check, the ~1.5B training step
# (default kernels, then the warp-per-row element-wise kernels, USBX_CUDA_ATTN_MASKED_ROW=0),
# Nsight Compute's per-kernel times of one step, and the PyTorch baseline in the same call.
# QUICK=1: only test_ops_cuda, the fixtures and the default step (with and without the profile).
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/df
timeout 150 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; cat "$R/fixtures.txt"
b15_setup
configs="1 0,0 0,1 1"; [ "${QUICK:-0}" = 1 ] && configs="1 0,1 1"
IFS=, read -ra cfgs <<< "$configs"
for v in "${cfgs[@]}"; do
  set -- $v; row=$1; prof=$2
  USBX_CUDA_ATTN_MASKED_ROW=$row USBX_TRAIN_PROFILE=$prof timeout 120 usbx-train $ARGS --steps 10 > "$R/b15_row${row}_prof$prof.jsonl" 2> "$R/b15_row${row}_prof$prof.err"
  echo "row=$row profile=$prof: $(train_summary "$R/b15_row${row}_prof$prof.jsonl")"
  [ "$prof" = 1 ] && grep profile "$R/b15_row${row}_prof$prof.err"
done
[ "${QUICK:-0}" = 1 ] && { date -u; exit 0; }
python3 benchmark/torch_train_baseline.py --config benchmark/mfu-1p5b.json --samples 2 --tokens 4096 > "$R/torch_baseline.txt" 2>&1; echo "torch rc=$?"; tail -n 3 "$R/torch_baseline.txt"
timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train $ARGS --steps 1 > "$R/ncu.csv" 2> "$R/ncu.err"
echo "ncu rc=$?"
python3 benchmark/ncu_summary.py "$R/ncu.csv" 12 | tee "$R/ncu_summary.txt"
date -u
