#!/usr/bin/env bash
# Full fine-tune of the 7B-MoT shape (random weights) on every GPU of the machine: data parallel,
# ZeRO-2 (optimizer state and gradients sharded) or ZeRO-3 (also the decoder layers' weights),
# activation recomputation, 10 steps of 512x512 scene pairs (1,024 latent tokens each); peak memory
# per GPU from nvidia-smi.  Then (unless SKIP_15=1), on GPU 0, the ~1.5B model with and without
# --recompute (memory and speed).
# Bundle extracted in the repo root; one tarball of results under $OUT.
# Args: TOKENS_PER_GPU[:ZERO[:OVERLAP]]... (ZERO 2 when not given; OVERLAP 0 sets
# USBX_TRAIN_OVERLAP=0); a run after an out-of-memory run is skipped unless it asks for fewer tokens
# or a higher ZeRO stage.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/d7
NG=$(nvidia-smi -L | wc -l)
usbx-synth scenes --n 96 --render "$W/img" --size 512 --seed 5 > "$W/pairs.jsonl"
( time usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 "$W/b7" > /dev/null ) 2>&1 | grep real | tee "$R/init_time.txt"
cp .devdata/tokenizer.json "$W/b7/"
oom_tok=0 oom_zero=0
for arg in "${@:-8192}"; do
  tok=${arg%%:*} zero=2 ov=1; [ "$arg" != "$tok" ] && zero=${arg#*:}
  [ "$zero" != "${zero%%:*}" ] && { ov=${zero#*:}; zero=${zero%%:*}; }
  if [ "$oom_tok" -gt 0 ] && [ "$tok" -ge "$oom_tok" ] && [ "$zero" -le "$oom_zero" ]; then
    echo "tokens/gpu=$tok zero=$zero: skipped (out of memory at $oom_tok tokens, zero $oom_zero)"; continue
  fi
  tag=${tok}_z$zero; [ "$ov" = 0 ] && tag=${tag}_inline
  date -u
  USBX_TRAIN_OVERLAP=$ov mem_sampled "$R/mem_7b_$tag.csv" timeout 240 usbx-train --model "$W/b7" --out "$W/run" --device cuda --no-visual-und --gpus "$NG" --recompute \
    --zero "$zero" --steps 10 --warmup 1 --expected-tokens "$tok" --max-tokens $((tok + tok / 8)) --no-save "$W/pairs.jsonl" > "$R/train_7b_$tag.jsonl" 2> "$R/train_7b_$tag.err"
  rc=$?; echo "tokens/gpu=$tok zero=$zero overlap=$ov rc=$rc"; [ $rc = 0 ] || { oom_tok=$tok oom_zero=$zero; }
  tail -n 4 "$R/train_7b_$tag.err"
  python3 - "$R/train_7b_$tag.jsonl" "$R/mem_7b_$tag.csv" <<'PY'
import sys, json, csv
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak = {}
for row in csv.reader(open(sys.argv[2])):
    if len(row) == 2: i, m = int(row[0]), int(row[1]); peak[i] = max(peak.get(i, 0), m)
print("steps", len(recs), "peak MiB per GPU", peak)
if recs:
    tail = recs[2:] or recs
    print("tokens/step %.0f, tokens/s %.0f, mfu %.3f, s/step %.2f" % (sum(r["tokens"] for r in tail) / len(tail), sum(r["tokens_per_s"] for r in tail) / len(tail),
          sum(r["mfu"] for r in tail) / len(tail), sum(r["tokens"] / r["tokens_per_s"] for r in tail) / len(tail)))
    print("losses", [round(r["loss"], 4) for r in recs])
PY
done
rm -rf "$W/b7"
[ "${SKIP_15:-0}" = 1 ] && { date -u; exit 0; }
# ~1.5B on GPU 0: recompute on/off
usbx-synth scenes --n 64 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
for rc in "" --recompute; do
  USBX_CUDA_DEVICE=0 mem_sampled "$R/mem_15$rc.csv" timeout 120 usbx-train --model "$W/b15" --out "$W/b15run" --device cuda --no-visual-und \
    --warmup 1 --steps 6 $rc --expected-tokens 8192 --max-tokens 8400 --no-save "$W/big.jsonl" > "$R/train_15$rc.jsonl" 2> "$R/train_15$rc.err"
  echo "1.5B $rc: peak $(awk -F', ' '$1 == 0 {print $2}' "$R/mem_15$rc.csv" | sort -n | tail -1) MiB; $(tail -n 1 "$R/train_15$rc.jsonl")"
done
date -u
