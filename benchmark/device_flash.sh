#!/usr/bin/env bash
# The flash training attention (kernels/cuda_attn_flash.cu) on one GPU: test_ops_cuda, the CUDA
# fixture check, the training-attention micro-benchmark (flash against the cuBLAS, tiled and
# scalar paths), then the ~1.5B training step with flash (default) and without
# (USBX_CUDA_ATTN_MASKED_FLASH=0), each with and without USBX_TRAIN_PROFILE.  NCU=1 adds Nsight
# Compute's per-kernel times of one flash step; TORCH=1 the PyTorch baseline of the same step;
# QUICK=1 skips the micro-benchmark and the runs without flash, and runs the flash step twice to
# compare the records (losses, grad norms) for equality.  AB=VAR TAG=name compare another 0/1
# option instead (benchmark/device_final_train.sh: USBX_CUDA_ATTN_MASKED_ROW).
set -uo pipefail
AB=${AB:-USBX_CUDA_ATTN_MASKED_FLASH} TAG=${TAG:-flash}
. benchmark/device_env.sh
device_results /tmp/dfl
timeout 240 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"
grep -E "attention_masked.*flash|FAIL" "$R/test_ops_cuda.txt" | head -n 60
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; cat "$R/fixtures.txt"
[ "${QUICK:-0}" = 1 ] || BENCH_ONLY=train BENCH_REPS=10 timeout 200 build/bench/bench_ops_cuda "$R/bench_train_attn.md" > /dev/null 2>&1; echo "bench rc=$?"; cat "$R/bench_train_attn.md"
b15_setup
runs="1 0,1 1,0 0,0 1"; [ "${QUICK:-0}" = 1 ] && runs="1 0,1 1"
IFS=, read -ra cfgs <<< "$runs"
for v in "${cfgs[@]}"; do
  set -- $v; on=$1; prof=$2; f=$R/b15_$TAG${on}_prof$prof
  env "$AB=$on" USBX_TRAIN_PROFILE=$prof timeout 120 usbx-train $ARGS --steps 10 > "$f.jsonl" 2> "$f.err"
  echo "$TAG=$on profile=$prof rc=$?: $(train_summary "$f.jsonl")"
  [ "$prof" = 1 ] && grep profile "$f.err"
done
if [ "${QUICK:-0}" = 1 ]; then   # profile=1 only adds synchronisations: same arithmetic
  python3 - "$R/b15_${TAG}1_prof0.jsonl" "$R/b15_${TAG}1_prof1.jsonl" <<'PY'
import json, sys
a, b = ([{k: r[k] for k in ("step", "loss", "mse", "grad_norm", "tokens")} for r in map(json.loads, open(f))] for f in sys.argv[1:3])
print("two runs of the same steps: records equal" if a == b else "two runs of the same steps DIFFER", len(a), "steps")
PY
fi
if [ "${TORCH:-0}" = 1 ]; then
  python3 benchmark/torch_train_baseline.py --config benchmark/mfu-1p5b.json --samples 2 --tokens 4096 > "$R/torch_baseline.txt" 2>&1
  echo "torch rc=$?"; tail -n 3 "$R/torch_baseline.txt"
fi
if [ "${NCU:-0}" = 1 ]; then
  timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train $ARGS --steps 1 > "$R/ncu.csv" 2> "$R/ncu.err"
  echo "ncu rc=$?"
  python3 benchmark/ncu_summary.py "$R/ncu.csv" 16 | tee "$R/ncu_summary.txt"
fi
date -u
