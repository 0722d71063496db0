#!/usr/bin/env bash
# Data-parallel training on a multi-GPU machine (NCCL from PyTorch's wheel, NVLink multicast off):
#   A. 2 GPUs == 1 GPU accumulating the same two batches, 20 steps (small pixel-space model)
#   B. scaling of a ~1.5B-parameter model at 1, 2 and 4 GPUs (same batch per GPU), peak memory
#   C. the CUDA fixture check and test_ops_cuda on GPU 0 (nothing regressed)
#   D. usbx-gen --batch timing at 512x512 on a random 7B-MoT checkpoint (bench_gen --batch)
# ONLY_AB=1 stops after B; ONLY_B=1 runs B alone.  Bundle extracted in the repo root; one tarball of results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dd
nvidia-smi topo -m > "$R/topo.txt" 2>&1
NG=$(nvidia-smi -L | wc -l)
echo "NCCL: ${USBX_NCCL_LIB:-not found}" | tee "$R/nccl.txt"

# A. equality
if [ "${ONLY_B:-0}" != 1 ]; then
usbx-synth scenes --n 400 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
TR="usbx-train --model $W/small --device cuda --no-visual-und --lr 5e-4 --warmup 5 --steps 20 --expected-tokens 4096 --max-tokens 4600 --no-save"
$TR --out "$W/a1" --accum 2 "$W/pairs.jsonl" > "$R/eq_1gpu_accum2.jsonl" 2> "$R/eq_1gpu.err"
$TR --out "$W/a2" --gpus 2 "$W/pairs.jsonl" > "$R/eq_2gpu.jsonl" 2> "$R/eq_2gpu.err"
tail -n 3 "$R/eq_2gpu.err"
python3 - "$R/eq_1gpu_accum2.jsonl" "$R/eq_2gpu.jsonl" <<'PY' | tee "$R/eq_summary.txt"
import sys, json
a = [json.loads(l) for l in open(sys.argv[1])]; b = [json.loads(l) for l in open(sys.argv[2])]
print("steps", len(a), len(b))
for k in ("loss", "grad_norm"):
    d = [abs(x[k] - y[k]) / abs(x[k]) for x, y in zip(a, b)]
    print(k, "max rel diff %.3g" % max(d), "at step", d.index(max(d)) + 1)
print("first/last loss 1gpu", a[0]["loss"], a[-1]["loss"], "2gpu", b[0]["loss"], b[-1]["loss"])
print("tokens equal:", all(x["tokens"] == y["tokens"] for x, y in zip(a, b)))
PY
fi

# B. scaling (weak: 2 images of 4096 tokens per GPU and step)
usbx-synth scenes --n 96 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
for n in 1 2 4; do
  [ "$n" -le "$NG" ] || continue
  mem_sampled "$R/mem_$n.csv" timeout 240 usbx-train --model "$W/b15" --out "$W/b15run" --device cuda --no-visual-und --warmup 1 --steps 8 \
    --expected-tokens 8192 --max-tokens 8400 --no-save --gpus $n "$W/big.jsonl" > "$R/scale_$n.jsonl" 2> "$R/scale_$n.err"
  echo "gpus=$n rc=$?"
  tail -n 2 "$R/scale_$n.err"
done
python3 - "$R" <<'PY' | tee "$R/scale_summary.txt"
import sys, json, os, csv
R = sys.argv[1]; base = None
for n in (1, 2, 4):
    p = f"{R}/scale_{n}.jsonl"
    if not os.path.exists(p) or os.path.getsize(p) == 0: continue
    recs = [json.loads(l) for l in open(p)][2:]   # steps 3.. (after warm-up)
    tps = sum(r["tokens_per_s"] for r in recs) / len(recs); mfu = sum(r["mfu"] for r in recs) / len(recs)
    if n == 1: base = tps
    peak = {}
    for row in csv.reader(open(f"{R}/mem_{n}.csv")):
        if len(row) == 2: i, m = int(row[0]), int(row[1]); peak[i] = max(peak.get(i, 0), m)
    eff = tps / (n * base) if base else float("nan")
    print(f"gpus {n}: {tps:.0f} tokens/s, mfu {mfu:.3f}, scaling efficiency {eff:.3f}, peak MiB per GPU {peak}")
PY

[ "${ONLY_AB:-0}" = 1 ] || [ "${ONLY_B:-0}" = 1 ] && exit 0

# C. regressions on GPU 0
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; cat "$R/fixtures.txt"
timeout 120 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 2 "$R/test_ops_cuda.txt"

# D. batched generation, 512x512, random 7B-MoT weights
date -u
timeout 150 usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
for b in 1 4; do
  timeout 120 build/bench/bench_gen --model /tmp/b7 --device cuda --size 512x512 --reps 1 --think-tokens 0 --batch $b 2>&1 | tee -a "$R/bench_gen_batch.jsonl"
done
date -u
