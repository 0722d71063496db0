#!/usr/bin/env bash
# ZeRO-3 with the next layer gathered on the second CUDA stream (two weight slots) on 2 GPUs:
# identical results against ZeRO-2 and against ZeRO-3 in line (USBX_TRAIN_OVERLAP=0), then the
# 1.59 B step with each (two 4,096-token images per GPU; --recompute too; EQ_ONLY=1 skips those).
# Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dz3o
usbx-synth scenes --n 200 --render "$W/img" --size 64 --seed 7 --max-count 4 > "$W/pairs.jsonl"
usbx-ckpt init --config benchmark/sandbox-small.json --seed 1 "$W/small" > /dev/null && cp .devdata/tokenizer.json "$W/small/"
TR="usbx-train --model $W/small --device cuda --no-visual-und --lr 5e-4 --warmup 2 --steps 10 --expected-tokens 4096 --max-tokens 4600 --no-save --gpus 2"
timeout 150 $TR --out "$W/z2" --zero 2 "$W/pairs.jsonl" > "$R/eq_z2.jsonl" 2> "$R/eq_z2.err"; echo "z2 rc=$?"
timeout 150 $TR --out "$W/z3" --zero 3 "$W/pairs.jsonl" > "$R/eq_z3.jsonl" 2> "$R/eq_z3.err"; echo "z3 rc=$?"
USBX_TRAIN_OVERLAP=0 timeout 150 $TR --out "$W/z3i" --zero 3 "$W/pairs.jsonl" > "$R/eq_z3_inline.jsonl" 2> "$R/eq_z3_inline.err"; echo "z3 inline rc=$?"
timeout 150 $TR --out "$W/z3r" --zero 3 --recompute "$W/pairs.jsonl" > "$R/eq_z3_rec.jsonl" 2> "$R/eq_z3_rec.err"; echo "z3 recompute rc=$?"
for f in eq_z3 eq_z3_inline eq_z3_rec; do
  if cmp -s <(jq -c '[.step, .loss, .mse, .grad_norm]' "$R/eq_z2.jsonl") <(jq -c '[.step, .loss, .mse, .grad_norm]' "$R/$f.jsonl"); then echo "$f: identical to ZeRO-2"; else echo "$f: DIFFERS from ZeRO-2"; fi
done
[ "${EQ_ONLY:-0}" = 1 ] && exit 0
usbx-synth scenes --n 64 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
B="usbx-train --model $W/b15 --out $W/b15run --device cuda --no-visual-und --warmup 1 --steps 8 --expected-tokens 8192 --max-tokens 8400 --no-save --gpus 2"
for cfg in "z3:--zero 3" "z3inline:--zero 3:0" "z2:--zero 2" "z3rec:--zero 3 --recompute" "z3recinline:--zero 3 --recompute:0"; do
  tag=${cfg%%:*}; rest=${cfg#*:}; args=${rest%%:*}; ov=1; [ "$rest" != "$args" ] && ov=${rest#*:}
  USBX_TRAIN_OVERLAP=$ov mem_sampled "$R/mem_$tag.csv" timeout 200 $B $args "$W/big.jsonl" > "$R/b15_$tag.jsonl" 2> "$R/b15_$tag.err"
  echo "1.59B $tag ($args, overlap $ov) rc=$?: $(train_summary "$R/b15_$tag.jsonl"), peak $(sort -t, -k2 -n "$R/mem_$tag.csv" | tail -1) MiB"
done
date -u
