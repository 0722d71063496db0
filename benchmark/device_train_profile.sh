#!/usr/bin/env bash
# One GPU: the ~1.5B training step with USBX_TRAIN_PROFILE=1 (phases of the backward per layer) and the
# element-wise op timings of bench_ops_cuda.  Bundle extracted in the repo root.
set -uo pipefail
. benchmark/device_env.sh
W=/tmp/pf; mkdir -p $W
nvidia-smi -L
usbx-synth scenes --n 64 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
USBX_TRAIN_PROFILE=1 usbx-train --model "$W/b15" --out "$W/o" --device cuda --no-visual-und --warmup 1 --steps 8 \
    --expected-tokens 8192 --max-tokens 8400 --no-save "$W/big.jsonl" 2>&1 >/dev/null | grep profile
BENCH_ONLY=ew BENCH_REPS=10 build/bench/bench_ops_cuda 2>/dev/null | tail -25
timeout 120 build/tests/test_ops_cuda > /tmp/pf/ops.txt 2>&1; echo "test_ops_cuda rc=$?"; grep -E "FAIL|checks" /tmp/pf/ops.txt | tail -3
BENCH_ONLY=train BENCH_REPS=5 timeout 200 build/bench/bench_ops_cuda 2>/dev/null | tail -16
