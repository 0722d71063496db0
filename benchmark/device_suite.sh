#!/usr/bin/env bash
# One device call: CUDA op tests, the fixture checker on CUDA, the 7B-shape LLM and image
# benchmarks with their PyTorch baselines.  Run from the repo root on the GPU machine with the
# build carried (build/, bin/, .devlibs/, .devdata/tokenizer.json).  Logs go to $OUT.
#   bash benchmark/device_suite.sh [quick]
set -uo pipefail
. benchmark/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/suite.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/suite.log"
log "test_ops_cuda"
timeout 300 build/tests/test_ops_cuda > "$OUT/test_ops_cuda.log" 2>&1; echo "rc=$?" | tee -a "$OUT/suite.log"; tail -5 "$OUT/test_ops_cuda.log"
log "check-fixtures cuda"
timeout 120 bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a 2>&1 | tee -a "$OUT/suite.log"
[ "${1:-}" = quick ] && exit 0
log "init 7B-MoT checkpoint"
B7=/tmp/b7
if [ ! -f $B7/ema.safetensors ]; then
  ( time bin/usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 $B7 ) 2>&1 | tail -4 | tee -a "$OUT/suite.log"
  cp .devdata/tokenizer.json $B7/
fi
df -h /tmp | tail -1 | tee -a "$OUT/suite.log"
log "bench_llm (usbx, cuda)"
timeout 300 build/bench/bench_llm --model $B7 --device cuda --prefill 1000 --decode 200 --reps 3 2>&1 | tee -a "$OUT/suite.log" | tee "$OUT/bench_llm.json"
log "bench_llm (pytorch baseline)"
timeout 300 python3 benchmark/torch_llm_baseline.py --config $B7/llm_config.json --prefill 1000 --decode 200 --reps 3 2>&1 | tail -1 | tee -a "$OUT/suite.log"
log "bench_gen 512 and 1024 (usbx, cuda)"
timeout 400 build/bench/bench_gen --model $B7 --device cuda --size 512x512 --reps 2 --think-tokens 100 2>&1 | tee -a "$OUT/suite.log"
timeout 400 build/bench/bench_gen --model $B7 --device cuda --size 1024x1024 --reps 1 --think-tokens 100 2>&1 | tee -a "$OUT/suite.log"
log "torch gen composition"
timeout 300 python3 benchmark/torch_gen_baseline.py --size 1024 2>&1 | tail -1 | tee -a "$OUT/suite.log"
[ "${TORCH512:-0}" = 1 ] && timeout 300 python3 benchmark/torch_gen_baseline.py --size 512 2>&1 | tail -1 | tee -a "$OUT/suite.log"
log "done"; date -u | tee -a "$OUT/suite.log"
