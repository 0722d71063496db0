#!/usr/bin/env bash
# One GPU: op tests, the CUDA fixture check, the training-attention benchmark (tiled kernels against
# the sample-by-sample cuBLAS backward), and one ~1.5B training run with each backward.
# Bundle extracted in the repo root; one tarball under $OUT.
set -uo pipefail
. benchmark/device_env.sh
FINAL=${OUT:-/tmp/out}; W=/tmp/ta; R=$W/results
mkdir -p "$R" "$FINAL"
trap 'tar -C "$W" -czf "$FINAL/results.tar.gz" results' EXIT
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$R/gpu.txt"; date -u | tee "$R/date.txt"
timeout 300 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"
grep -E "FAIL|checks|attention_masked_bwd" "$R/test_ops_cuda.txt" | tail -8
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a 2>&1 | tee "$R/fixtures.txt"
BENCH_ONLY=train BENCH_REPS=5 timeout 240 build/bench/bench_ops_cuda "$R/bench_train_attn.md" > /dev/null 2>&1; cat "$R/bench_train_attn.md"
usbx-synth scenes --n 64 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
for g in 1 0; do
  USBX_TRAIN_PROFILE=1 USBX_CUDA_ATTN_MASKED_GEMM=$g timeout 150 usbx-train --model "$W/b15" --out "$W/o" --device cuda --no-visual-und --warmup 1 --steps 8 \
    --expected-tokens 8192 --max-tokens 8400 --no-save "$W/big.jsonl" > "$R/train15_gemm$g.jsonl" 2> "$R/train15_gemm$g.err"
  echo "gemm=$g: $(tail -n 1 "$R/train15_gemm$g.jsonl")"; grep profile "$R/train15_gemm$g.err"
done
python3 - "$R" <<'PY'
import json, sys
R = sys.argv[1]
a = [json.loads(l) for l in open(f"{R}/train15_gemm1.jsonl")]; b = [json.loads(l) for l in open(f"{R}/train15_gemm0.jsonl")]
for k in ("loss", "grad_norm"):
    print(k, "max rel diff gemm vs tiled %.3g" % max(abs(x[k] - y[k]) / abs(y[k]) for x, y in zip(a, b)))
for name, r in (("gemm", a), ("tiled", b)):
    t = r[2:]
    print(name, "tokens/s %.0f mfu %.4f" % (sum(x["tokens_per_s"] for x in t) / len(t), sum(x["mfu"] for x in t) / len(t)))
PY
date -u
