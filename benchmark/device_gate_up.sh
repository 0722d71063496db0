#!/usr/bin/env bash
# The MLP's gate|up product with SiLU·up in its epilogue (ops.h gate_up_silu, cuda_gate_up.cu) on
# one GPU, one call: its test_ops_cuda group, plain and under compute-sanitizer memcheck;
# bench_ops_cuda's mlp section (f32 products + silu_mul, bf16 product + silu_mul_gu, fused, and the
# trainer's bf16 products kept + silu_mul_mm);
# generation at the 7B-MoT shape (256x256, 6 steps) with the kernel on and off, and with the bf16
# gate|up rounding, PNGs compared; bench_gen at 1024x1024 (100 think tokens) and 512x512 with the
# kernel on and off alternating; then the whole test_ops_cuda and the CUDA fixture check.  PNGS=0
# skips the PNG comparison, GEN_RUNS="SIZE:FUSED:THINK ..." the bench_gen runs.  Bundle extracted in the repo root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dgu
export PATH=$PATH:/usr/local/cuda/bin
timeout 90 build/tests/test_ops_cuda gate_up > "$R/test_gate_up.txt" 2>&1; echo "test gate_up rc=$?"
grep -E "^gate_up|^matmul_mm|FAIL|passed" "$R/test_gate_up.txt" | tail -n 8
BENCH_ONLY=mlp BENCH_REPS=20 timeout 120 build/bench/bench_ops_cuda "$R/mlp.md" > /dev/null 2>&1; echo "bench mlp rc=$?"; grep "^| [0-9]" "$R/mlp.md"
timeout 120 compute-sanitizer --tool memcheck build/tests/test_ops_cuda gate_up_silu > "$R/memcheck_gate_up.txt" 2>&1
echo "memcheck rc=$?"; tail -n 2 "$R/memcheck_gate_up.txt"

timeout 150 usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
if [ "${PNGS:-1}" = 1 ]; then
printf '{"id":"a","prompt":"three red cups on a table"}\n{"id":"b","prompt":"a clock next to two apples"}\n' > "$W/tasks.jsonl"
for v in fused:1:0 f32:0:0 bf16:0:1; do
  IFS=: read -r name fu bf <<< "$v"
  USBX_CUDA_GATEUP_FUSED=$fu USBX_CUDA_GATEUP_BF16=$bf timeout 200 usbx-gen --model /tmp/b7 --out "$W/g_$name" --device cuda \
    --size 256x256 --steps 6 --modes normal --stem t "$W/tasks.jsonl" > "$W/g_$name.jsonl" 2> "$R/g_$name.err"; echo "gen $name rc=$?"
done
python3 - "$W" <<'PY' | tee "$R/gen_compare.txt"
import sys, glob, os
import numpy as np
from PIL import Image
w = sys.argv[1]
for other in ("fused", "bf16"):
    for f in sorted(glob.glob(f"{w}/g_f32/**/*.png", recursive=True)):
        a = np.asarray(Image.open(f), dtype=np.int16); b = np.asarray(Image.open(f.replace("/g_f32/", f"/g_{other}/")), dtype=np.int16)
        d = np.abs(a - b)
        print(f"{other} vs f32 {os.path.basename(f)}: mean |diff| {d.mean():.3f} levels, max {d.max()}, equal pixels {np.mean(d == 0) * 100:.1f} %")
PY
fi
for run in ${GEN_RUNS:-1024x1024:1:100 1024x1024:0:0 1024x1024:1:0 1024x1024:0:0 512x512:1:0 512x512:0:0 512x512:1:0 512x512:0:0}; do
  IFS=: read -r s fu think <<< "$run"
  USBX_CUDA_GATEUP_FUSED=$fu timeout 200 build/bench/bench_gen --model /tmp/b7 --device cuda --size $s --reps 1 --think-tokens $think 2>&1 \
    | sed "s/^{/{\"gate_up_fused\":$fu,/" | tee -a "$R/bench_gen.jsonl" | tail -n 1
done
rm -rf /tmp/b7
timeout 240 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -v "^  " "$R/fixtures.txt"
date -u
