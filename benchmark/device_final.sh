#!/usr/bin/env bash
# Two GPUs, the final tree: 2 GPUs == 1 GPU with --accum 2 over 20 steps (small model), then the
# ~1.5B model on one GPU and on two (tokens/s, MFU).  Bundle extracted in the repo root; logs in $OUT.
set -uo pipefail
. benchmark/device_env.sh
OUT=${OUT:-/tmp/out}; W=/tmp/fi; mkdir -p "$OUT" "$W"
nvidia-smi -L; date -u
usbx-synth scenes --n 400 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
TR="usbx-train --model $W/small --device cuda --no-visual-und --lr 5e-4 --warmup 5 --steps 20 --expected-tokens 4096 --max-tokens 4600 --no-save"
USBX_CUDA_DEVICE=0 $TR --out "$W/a1" --accum 2 "$W/pairs.jsonl" > "$OUT/eq_1gpu_accum2.jsonl" 2> /dev/null
$TR --out "$W/a2" --gpus 2 "$W/pairs.jsonl" > "$OUT/eq_2gpu.jsonl" 2> /dev/null
usbx-synth scenes --n 96 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
for n in 1 2; do
  usbx-train --model "$W/b15" --out "$W/o" --device cuda --no-visual-und --warmup 1 --steps 8 --expected-tokens 8192 --max-tokens 8400 \
    --no-save --gpus $n "$W/big.jsonl" > "$OUT/scale_$n.jsonl" 2> /dev/null
done
python3 - "$OUT" <<'PY'
import json, sys
O = sys.argv[1]
a = [json.loads(l) for l in open(f"{O}/eq_1gpu_accum2.jsonl")]; b = [json.loads(l) for l in open(f"{O}/eq_2gpu.jsonl")]
print("steps", len(a), len(b))
for k in ("loss", "grad_norm"):
    print(k, "2 GPUs vs 1 GPU --accum 2: max rel diff %.3g" % max(abs(x[k] - y[k]) / abs(x[k]) for x, y in zip(a, b)))
base = None
for n in (1, 2):
    r = [json.loads(l) for l in open(f"{O}/scale_{n}.jsonl")][2:]
    tps = sum(x["tokens_per_s"] for x in r) / len(r); mfu = sum(x["mfu"] for x in r) / len(r)
    base = base or tps
    print(f"1.59B, {n} GPU(s): {tps:.0f} tokens/s, MFU {mfu:.4f}, scaling {tps / (n * base):.3f}")
PY
date -u
