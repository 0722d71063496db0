#!/usr/bin/env bash
# Per-kernel GPU time of one training step at the 7B-MoT layer shape (4 layers, 8k tokens of 512x512
# scene pairs) on one GPU: Nsight Compute, summed per kernel (benchmark/ncu_summary.py).
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dn7
usbx-synth scenes --n 16 --render "$W/img" --size 512 --seed 5 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/shape-7b-mot-4layers.json --seed 1 "$W/b7l" > /dev/null && cp .devdata/tokenizer.json "$W/b7l/"
timeout 400 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train --model "$W/b7l" --out "$W/run" \
  --device cuda --no-visual-und --steps 1 --warmup 1 --expected-tokens 8192 --max-tokens 9216 --no-save "$W/pairs.jsonl" > "$R/ncu.csv" 2> "$R/ncu.err"
echo "ncu rc=$?"
python3 benchmark/ncu_summary.py "$R/ncu.csv" 40 | tee "$R/ncu_summary.txt"
rm -f "$R/ncu.csv"
date -u
