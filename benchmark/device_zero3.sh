#!/usr/bin/env bash
# ZeRO-3 on a 2-GPU machine (NCCL from PyTorch's wheel, NVLink multicast off):
#   A. --zero 3 == --zero 2 (small pixel-space model, 10 steps: losses, grad norms, checkpoint files),
#      and a ZeRO-3 run saved at step 5 and resumed to 10 == the uninterrupted run
#   B. the ~1.5B model on 1 GPU and on 2 GPUs with --zero 2 and --zero 3: tokens/s, MFU, peak memory
#   C. the CUDA fixture check (per-group tolerances) and test_ops_cuda on GPU 0
# Bundle extracted in the repo root; one tarball of results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dz
echo "NCCL: ${USBX_NCCL_LIB:-not found}" | tee "$R/nccl.txt"

# C first (cheap)
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; cat "$R/fixtures.txt"
timeout 120 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 2 "$R/test_ops_cuda.txt"

# A. equality
usbx-synth scenes --n 400 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
TR="usbx-train --model $W/small --device cuda --no-visual-und --lr 5e-4 --warmup 5 --expected-tokens 4096 --max-tokens 4600 --gpus 2"
$TR --out "$W/z2" --steps 10 --save-every 10 "$W/pairs.jsonl" > "$R/eq_z2.jsonl" 2> "$R/eq_z2.err"; echo "z2 rc=$?"
$TR --out "$W/z3" --steps 10 --save-every 10 --zero 3 "$W/pairs.jsonl" > "$R/eq_z3.jsonl" 2> "$R/eq_z3.err"; echo "z3 rc=$?"
$TR --out "$W/z3r" --steps 5 --save-every 5 --zero 3 "$W/pairs.jsonl" > "$R/eq_z3r.jsonl" 2> "$R/eq_z3r.err"; echo "z3r rc=$?"
$TR --out "$W/z3r" --steps 10 --save-every 5 --zero 3 --resume "$W/pairs.jsonl" >> "$R/eq_z3r.jsonl" 2>> "$R/eq_z3r.err"; echo "z3r resume rc=$?"
tail -n 2 "$R/eq_z3.err"
for f in model ema optimizer; do cmp "$W/z2/0000010/$f.safetensors" "$W/z3/0000010/$f.safetensors" && echo "checkpoint $f: z3 == z2 (bytes)"; done
python3 - "$R/eq_z2.jsonl" "$R/eq_z3.jsonl" "$R/eq_z3r.jsonl" <<'PY' | tee "$R/eq_summary.txt"
import sys, json
a, b, c = ([json.loads(l) for l in open(p)] for p in sys.argv[1:4])
print("steps", len(a), len(b), len(c))
for name, y in (("zero3", b), ("zero3 resumed at 5", c)):
    same = all(x["loss"] == z["loss"] and x["grad_norm"] == z["grad_norm"] for x, z in zip(a, y)) and len(a) == len(y)
    d = max(abs(x["loss"] - z["loss"]) / abs(x["loss"]) for x, z in zip(a, y))
    print(f"{name} vs zero2: bitwise equal losses and grad norms: {same}; max rel loss diff {d:.3g}")
print("losses zero2", [round(r["loss"], 5) for r in a])
PY

# B. 1.5B: 1 GPU, 2 GPUs zero 2, 2 GPUs zero 3
usbx-synth scenes --n 96 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
for cfg in "1 2" "2 2" "2 3"; do
  set -- $cfg; n=$1; z=$2
  mem_sampled "$R/mem_${n}_z$z.csv" timeout 200 usbx-train --model "$W/b15" --out "$W/b15run" --device cuda --no-visual-und --warmup 1 \
    --steps 8 --expected-tokens 8192 --max-tokens 8400 --no-save --gpus $n --zero $z "$W/big.jsonl" > "$R/b15_${n}_z$z.jsonl" 2> "$R/b15_${n}_z$z.err"
  echo "gpus=$n zero=$z rc=$?"
  tail -n 2 "$R/b15_${n}_z$z.err"
done
python3 - "$R" <<'PY' | tee "$R/b15_summary.txt"
import sys, json, os, csv
R = sys.argv[1]; base = None
for n, z in ((1, 2), (2, 2), (2, 3)):
    p = f"{R}/b15_{n}_z{z}.jsonl"
    if not os.path.exists(p) or os.path.getsize(p) == 0: print(n, z, "no records"); continue
    recs = [json.loads(l) for l in open(p)][2:]
    tps = sum(r["tokens_per_s"] for r in recs) / len(recs); mfu = sum(r["mfu"] for r in recs) / len(recs)
    if n == 1: base = tps
    peak = {}
    for row in csv.reader(open(f"{R}/mem_{n}_z{z}.csv")):
        if len(row) == 2: i, m = int(row[0]), int(row[1]); peak[i] = max(peak.get(i, 0), m)
    print(f"gpus {n} zero {z}: {tps:.0f} tokens/s, mfu {mfu:.3f}, scaling {tps / (n * base):.3f}, peak MiB per GPU {peak}, losses {[round(r['loss'], 4) for r in recs[:3]]}")
PY
date -u
