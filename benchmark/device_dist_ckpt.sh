#!/usr/bin/env bash
# Checkpoints under data parallel training on 2 GPUs (NCCL): a run saved at step 3 and resumed to
# step 6 against an uninterrupted 6-step run; the 2-GPU checkpoint resumed on one GPU with --accum 2;
# the files read back with safetensors (PyTorch).  Bundle extracted in the repo root; logs in $OUT.
set -uo pipefail
. benchmark/device_env.sh
OUT=${OUT:-/tmp/out}; W=/tmp/dc; mkdir -p "$OUT" "$W"
nvidia-smi -L; date -u
usbx-synth scenes --n 200 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
TR="usbx-train --model $W/small --device cuda --no-visual-und --lr 5e-4 --warmup 2 --expected-tokens 4096 --max-tokens 4600"
$TR --out "$W/full" --steps 6 --gpus 2 --save-every 3 "$W/pairs.jsonl" > "$OUT/full.jsonl" 2> "$OUT/full.err"; echo "full rc=$?"
$TR --out "$W/part" --steps 3 --gpus 2 "$W/pairs.jsonl" > "$OUT/part.jsonl" 2> "$OUT/part.err"; echo "part rc=$?"
$TR --out "$W/part" --steps 6 --gpus 2 --resume "$W/pairs.jsonl" > "$OUT/resumed.jsonl" 2> "$OUT/resumed.err"; echo "resumed rc=$?"
grep -h "resumed from" "$OUT/resumed.err"
USBX_CUDA_DEVICE=0 $TR --out "$W/part" --steps 8 --accum 2 --resume "$W/pairs.jsonl" > "$OUT/one_gpu.jsonl" 2> "$OUT/one_gpu.err"; echo "1-gpu resume rc=$?"
python3 - "$OUT" "$W" <<'PY'
import json, sys
from safetensors.torch import load_file
O, W = sys.argv[1:3]
full = [json.loads(l) for l in open(f"{O}/full.jsonl")]; res = [json.loads(l) for l in open(f"{O}/resumed.jsonl")]
one = [json.loads(l) for l in open(f"{O}/one_gpu.jsonl")]
print("resumed steps", [r["step"] for r in res], "1-GPU steps", [r["step"] for r in one])
for k in ("loss", "grad_norm"):
    print(k, "resumed vs uninterrupted, steps 4-6: max rel diff %.3g" % max(abs(a[k] - b[k]) / abs(b[k]) for a, b in zip(res, full[3:])))
a = load_file(f"{W}/full/0000006/model.safetensors"); b = load_file(f"{W}/part/0000006/model.safetensors")
e = load_file(f"{W}/full/0000006/ema.safetensors"); o = load_file(f"{W}/full/0000006/optimizer.safetensors")
print("tensors", len(a), "ema", len(e), "optimizer", len(o), "all finite", all(t.isfinite().all().item() for t in list(a.values()) + list(o.values())))
worst = max(((a[n] - b[n]).abs().max() / (a[n].abs().max() + 1e-12)).item() for n in a)
print("model.safetensors resumed vs uninterrupted: max rel diff %.3g" % worst)
PY
date -u
