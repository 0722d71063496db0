#!/usr/bin/env bash
# The 7B-MoT layer shape on one GPU: 4 of its 28 decoder layers (benchmark/shape-7b-mot-4layers.json,
# random weights, embeddings and lm_head in full), trained on 512x512 scene pairs through the FLUX
# encoder, 8k tokens per step, and 16k with --recompute (the full fp32 state of 2.95 B parameters
# takes ~65 GB of the card): tokens/s, MFU (model FLOPs of those layers), peak memory.
# What one GPU's share of the full 7B-MoT step would run at with this tree's kernels.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/d7l
usbx-synth scenes --n 48 --render "$W/img" --size 512 --seed 5 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/shape-7b-mot-4layers.json --seed 1 "$W/b7l" > /dev/null && cp .devdata/tokenizer.json "$W/b7l/"
for cfg in 8192: 16384:--recompute; do
  tok=${cfg%%:*}; extra=${cfg#*:}
  USBX_TRAIN_PROFILE=1 mem_sampled "$R/mem_$tok.csv" timeout 200 usbx-train --model "$W/b7l" --out "$W/run" --device cuda --no-visual-und $extra \
    --steps 8 --warmup 1 --expected-tokens $tok --max-tokens $((tok + tok / 8)) --no-save "$W/pairs.jsonl" > "$R/train_$tok.jsonl" 2> "$R/train_$tok.err"
  echo "tokens=$tok $extra rc=$?"
  python3 -c "
import json; r=[json.loads(l) for l in open('$R/train_$tok.jsonl')][2:]
print('steps 3-8: tokens/step %.0f, tokens/s %.0f, mfu %.4f, tflops %.1f, peak %s MiB' % (sum(x['tokens'] for x in r)/len(r), sum(x['tokens_per_s'] for x in r)/len(r), sum(x['mfu'] for x in r)/len(r), sum(x['tflops'] for x in r)/len(r), max(int(l.split(',')[1]) for l in open('$R/mem_$tok.csv') if l.startswith('0,'))))"
  grep -E "layers forward|bwd attention|bwd MLP|AdamW" "$R/train_$tok.err"
done
date -u
