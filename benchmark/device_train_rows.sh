#!/usr/bin/env bash
# The training attention's element-wise passes, one block per L x L row (default) against one warp
# per row (USBX_CUDA_ATTN_MASKED_ROW=0), on one GPU: test_ops_cuda, then the ~1.5B model (8k
# tokens, two 4k samples) with USBX_TRAIN_PROFILE=1 both ways, then ncu's per-kernel times of one
# step.  Also: is a GPU run repeatable bit for bit (two identical small runs, checkpoints compared),
# and how far apart --zero 2 and --zero 3 checkpoints are on 2 GPUs when there are 2.
set -uo pipefail
. benchmark/device_env.sh
FINAL=${OUT:-/tmp/out}; W=/tmp/dr; R=$W/results
mkdir -p "$R" "$FINAL"
trap 'tar -C "$W" -czf "$FINAL/results.tar.gz" results' EXIT
date -u | tee "$R/date.txt"
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$R/gpus.txt"
NG=$(nvidia-smi -L | wc -l)
timeout 150 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; grep -E "attention_masked.*(FAIL|warp rows)|failed" "$R/test_ops_cuda.txt" | tail -n 12
usbx-synth scenes --n 32 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
ARGS="--model $W/b15 --out $W/run --device cuda --no-visual-und --warmup 1 --expected-tokens 8192 --max-tokens 8400 --no-save $W/big.jsonl"
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
# repeatability and ZeRO-3 checkpoints
usbx-synth scenes --n 400 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
TR="usbx-train --model $W/small --device cuda --no-visual-und --lr 5e-4 --warmup 5 --expected-tokens 4096 --max-tokens 4600 --steps 10 --save-every 10"
runs="a b"; [ "$NG" -ge 2 ] && runs="a b z2 z3"
for r in $runs; do
  case $r in a|b) extra="";; z2) extra="--gpus 2";; z3) extra="--gpus 2 --zero 3";; esac
  $TR --out "$W/rep_$r" $extra "$W/pairs.jsonl" > "$R/rep_$r.jsonl" 2> "$R/rep_$r.err" || echo "run $r failed"
done
python3 - "$W" $runs <<'PY' | tee "$R/repeat_summary.txt"
import sys, json, struct
W = sys.argv[1]; runs = sys.argv[2:]
def load(p):
    d = open(p, "rb").read(); n = struct.unpack("<Q", d[:8])[0]; h = json.loads(d[8:8+n]); out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]; out[k] = struct.unpack("<%df" % ((e - s) // 4), d[8+n+s:8+n+e])
    return out
def cmp(x, y):
    for f in ("model", "optimizer"):
        a, b = load(f"{W}/rep_{x}/0000010/{f}.safetensors"), load(f"{W}/rep_{y}/0000010/{f}.safetensors")
        diff = max(max(abs(p - q) for p, q in zip(a[k], b[k])) for k in a)
        same = sum(a[k] != b[k] for k in a)
        print(f"{x} vs {y} {f}: max abs diff {diff:.3g}, tensors differing {same} of {len(a)}")
    lx = [json.loads(l) for l in open(f"{W}/results/rep_{x}.jsonl")]; ly = [json.loads(l) for l in open(f"{W}/results/rep_{y}.jsonl")]
    print(f"{x} vs {y}: losses bitwise equal {all(p['loss'] == q['loss'] for p, q in zip(lx, ly))}, grad norms {all(p['grad_norm'] == q['grad_norm'] for p, q in zip(lx, ly))}")
cmp("a", "b")
if "z3" in runs: cmp("z2", "z3")
PY
date -u
