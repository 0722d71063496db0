#!/usr/bin/env bash
# The second CUDA lane (ops.h set_lane/lane_wait), on a 2-GPU machine:
#   1. test_ops_cuda (its lanes group included) and the CUDA fixture check on GPU 0
#   2. generation: the marker rows on lane 1 (USBX_GEN_LANES=1, the default) against one lane:
#      identical PNGs (tiny model, and the 7B-MoT shape at 256x256), then bench_gen at 1024x1024
#      (with the 100-token think overhead) and 512x512 in the same call, and --batch 4 at 512
#   3. training: ZeRO-2 gradient reductions on lane 1 (USBX_TRAIN_OVERLAP=1, the default) against
#      in line: identical records on 2 GPUs (206 M model, 10 steps), and the 1.59 B model's
#      tokens/s on 1 and 2 GPUs with both
# ONLY_TRAIN=1 runs 3 alone (a 4-GPU machine: 1, 2 and 4 GPUs); GEN_SAME=1 with it also checks
# the generation PNGs (tiny and 7B-MoT shape) with and without lane 1.  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dlanes
NG=$(nvidia-smi -L | wc -l)
gen_same() {
printf '{"id":"a","prompt":"three red cups on a table"}\n{"id":"b","prompt":"a clock next to two apples"}\n' > "$W/tasks.jsonl"
usbx-ckpt init --config tests/data/tiny-qwen.json --seed 3 "$W/tiny" > /dev/null && cp .devdata/tokenizer.json "$W/tiny/"
timeout 150 usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
for lanes in 1 0; do
  USBX_GEN_LANES=$lanes usbx-gen --model "$W/tiny" --out "$W/g_tiny_$lanes" --device cuda --size 64x64 --steps 8 --modes normal,think \
    --max-think-tokens 8 --stem t "$W/tasks.jsonl" > "$W/g_tiny_$lanes.jsonl" 2> "$R/g_tiny_$lanes.err"
  USBX_GEN_LANES=$lanes timeout 200 usbx-gen --model /tmp/b7 --out "$W/g_b7_$lanes" --device cuda --size 256x256 --steps 6 --modes normal \
    --stem t "$W/tasks.jsonl" > "$W/g_b7_$lanes.jsonl" 2> "$R/g_b7_$lanes.err"
done
for m in tiny b7; do
  n=$(find "$W/g_${m}_1" -name '*.png' | wc -l)
  if diff -r "$W/g_${m}_1" "$W/g_${m}_0" > /dev/null && [ "$n" -gt 0 ]; then echo "gen $m: $n PNGs identical with and without lane 1"; else echo "gen $m: PNGs DIFFER or missing ($n)"; fi
done | tee "$R/gen_identical.txt"
}
if [ "${ONLY_TRAIN:-0}" != 1 ]; then
timeout 240 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"
grep FAIL "$R/test_ops_cuda.txt" | head; grep "^lanes" "$R/test_ops_cuda.txt"
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; cat "$R/fixtures.txt"

gen_same
for s in 1024x1024 512x512; do
  for lanes in 1 0; do
    think=0; [ $s = 1024x1024 ] && [ $lanes = 1 ] && think=100
    USBX_GEN_LANES=$lanes timeout 200 build/bench/bench_gen --model /tmp/b7 --device cuda --size $s --reps 2 --think-tokens $think 2>&1 \
      | sed "s/^{/{\"gen_lanes\":$lanes,/" | tee -a "$R/bench_gen.jsonl" | tail -n 1
  done
done
timeout 200 build/bench/bench_gen --model /tmp/b7 --device cuda --size 512x512 --reps 1 --think-tokens 0 --batch 4 2>&1 | tee -a "$R/bench_gen.jsonl" | tail -n 1
rm -rf /tmp/b7
date -u
fi

[ "${ONLY_TRAIN:-0}" = 1 ] && [ "${GEN_SAME:-0}" = 1 ] && { gen_same; rm -rf /tmp/b7; }
# 3. training
usbx-synth scenes --n 200 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
for ov in 1 0; do
  USBX_TRAIN_OVERLAP=$ov timeout 200 usbx-train --model "$W/small" --out "$W/s$ov" --device cuda --no-visual-und --lr 5e-4 --warmup 5 --steps 10 \
    --expected-tokens 4096 --max-tokens 4600 --no-save --gpus 2 "$W/pairs.jsonl" > "$R/small_2gpu_overlap$ov.jsonl" 2> "$R/small_2gpu_overlap$ov.err"
done
python3 - "$R/small_2gpu_overlap1.jsonl" "$R/small_2gpu_overlap0.jsonl" <<'PY' | tee "$R/overlap_identical.txt"
import sys, json
a = [json.loads(l) for l in open(sys.argv[1])]; b = [json.loads(l) for l in open(sys.argv[2])]
same = len(a) == len(b) > 0 and all(x[k] == y[k] for x, y in zip(a, b) for k in ("loss", "mse", "grad_norm"))
print("2 GPUs, 206 M model, %d/%d steps: losses and grad norms %s with and without the overlap" % (len(a), len(b), "IDENTICAL" if same else "DIFFER"))
print("losses", [round(x["loss"], 5) for x in a][:5])
PY
b15_setup
for n in 1 2 4; do
  [ "$n" -le "$NG" ] || continue
  for ov in 1 0; do
    [ $n = 1 ] && [ $ov = 0 ] && continue
    USBX_TRAIN_OVERLAP=$ov mem_sampled "$R/mem_${n}_$ov.csv" timeout 240 usbx-train $ARGS --steps 10 --gpus $n > "$R/b15_${n}gpu_overlap$ov.jsonl" 2> "$R/b15_${n}gpu_overlap$ov.err"
    echo "gpus=$n overlap=$ov rc=$? $(train_summary "$R/b15_${n}gpu_overlap$ov.jsonl")"
  done
done | tee "$R/b15_summary.txt"
date -u
