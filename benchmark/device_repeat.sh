#!/usr/bin/env bash
# Is GPU training repeatable bit for bit?  test_ops_cuda's embed_bwd checks, then the small pixel-
# space model trained twice on one GPU, and with --zero 2 and --zero 3 on two GPUs when there are
# two: losses, grad norms and checkpoint files compared byte for byte.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/drp
NG=$(nvidia-smi -L | wc -l)
timeout 120 build/tests/test_ops_cuda embed > "$R/test_ops_cuda_embed.txt" 2>&1; echo "test_ops_cuda embed rc=$?"; cat "$R/test_ops_cuda_embed.txt" | tail -n 5
usbx-synth scenes --n 400 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
TR="usbx-train --model $W/small --device cuda --no-visual-und --lr 5e-4 --warmup 5 --expected-tokens 4096 --max-tokens 4600 --steps 10 --save-every 10"
runs="a b"; [ "$NG" -ge 2 ] && runs="a b z2 z3"
for r in $runs; do
  case $r in a|b) extra="";; z2) extra="--gpus 2";; z3) extra="--gpus 2 --zero 3";; esac
  $TR --out "$W/rep_$r" $extra "$W/pairs.jsonl" > "$R/rep_$r.jsonl" 2> "$R/rep_$r.err" || echo "run $r failed"
done
cmpr() {
  for f in model ema optimizer; do
    if cmp -s "$W/rep_$1/0000010/$f.safetensors" "$W/rep_$2/0000010/$f.safetensors"; then echo "$1 vs $2 $f: identical bytes"; else echo "$1 vs $2 $f: DIFFER"; fi
  done
  if diff <(jq -c '[.loss, .grad_norm]' "$R/rep_$1.jsonl") <(jq -c '[.loss, .grad_norm]' "$R/rep_$2.jsonl") > /dev/null; then echo "$1 vs $2: losses and grad norms equal"; else echo "$1 vs $2: losses DIFFER"; fi
}
cmpr a b | tee "$R/repeat_summary.txt"
[ "$NG" -ge 2 ] && cmpr z2 z3 | tee -a "$R/repeat_summary.txt"
date -u
