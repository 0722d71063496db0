#!/usr/bin/env bash
# The training attention's element-wise passes, one block per L x L row (default) against one warp
# per row (USBX_CUDA_ATTN_MASKED_ROW=0), on one GPU: test_ops_cuda, then the ~1.5B model (8k
# tokens, two 4k samples) with USBX_TRAIN_PROFILE=1 both ways, then ncu's per-kernel times of one
# step.  (At 17:19 it also compared two identical small runs' checkpoints and --zero 2 against
# --zero 3; that check is benchmark/device_repeat.sh now, byte for byte.)
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dr
NG=$(nvidia-smi -L | wc -l)
timeout 150 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; grep -E "attention_masked.*(FAIL|warp rows)|failed" "$R/test_ops_cuda.txt" | tail -n 12
b15_setup
for row in 0 1; do
  USBX_CUDA_DEVICE=0 USBX_CUDA_ATTN_MASKED_ROW=$row USBX_TRAIN_PROFILE=1 timeout 120 usbx-train $ARGS --steps 8 > "$R/b15_row$row.jsonl" 2> "$R/b15_row$row.err"
  echo "row=$row: $(python3 -c "
import json,sys; r=[json.loads(l) for l in open('$R/b15_row$row.jsonl')][2:]
print('tokens/s %.0f mfu %.4f losses' % (sum(x['tokens_per_s'] for x in r)/len(r), sum(x['mfu'] for x in r)/len(r)), [round(x['loss'],4) for x in r[:3]])")"
  grep -E "layers forward|bwd attention|norm\+AdamW" "$R/b15_row$row.err"
done
USBX_CUDA_DEVICE=0 timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train $ARGS --steps 1 > "$R/ncu.csv" 2> "$R/ncu.err"
echo "ncu rc=$?"
python3 benchmark/ncu_summary.py "$R/ncu.csv" 25 | tee "$R/ncu_summary.txt"
date -u
