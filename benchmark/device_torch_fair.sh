#!/usr/bin/env bash
# usbx-train's ~1.5B step against the PyTorch baseline, plain (causal attention, no EMA) and doing
# the same work as usbx-train (--bidirectional --ema), at 8k tokens per step and at 32k (usbx-train
# --accum 4; PyTorch one batch of 8 samples), one call.  Bundle extracted in the repo root.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dtf
b15_setup
timeout 150 usbx-train $ARGS --steps 10 > "$R/usbx_8k.jsonl" 2> "$R/usbx_8k.err"; echo "usbx 8k rc=$?"; train_summary "$R/usbx_8k.jsonl" | tee "$R/usbx_8k.txt"
timeout 200 usbx-train $ARGS --steps 8 --accum 4 > "$R/usbx_32k.jsonl" 2> "$R/usbx_32k.err"; echo "usbx 32k rc=$?"; train_summary "$R/usbx_32k.jsonl" | tee "$R/usbx_32k.txt"
for n in 2 8; do
  for flags in "" "--bidirectional --ema"; do
    timeout 200 python3 benchmark/torch_train_baseline.py --config benchmark/mfu-1p5b.json --samples $n --tokens 4096 $flags 2>&1 | tail -n 1 | tee -a "$R/torch.jsonl"
  done
done
date -u
