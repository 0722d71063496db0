#!/usr/bin/env bash
# compute-sanitizer memcheck on the kernels of the bf16 MLP activations (silu_mul_mm, the
# vectorised silu_mul_bwd_mm) and matmul_bwd's overwrite, then on 3 steps of a tiny model's
# training (pixel-space, 2 layers) through usbx-train.  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
export PATH=$PATH:/usr/local/cuda/bin
device_results /tmp/dmc
for g in act gate_up matmul_bwd; do
  timeout 150 compute-sanitizer --tool memcheck build/tests/test_ops_cuda $g > "$R/memcheck_$g.txt" 2>&1
  echo "memcheck $g rc=$?: $(grep -E 'ERROR SUMMARY|checks' "$R/memcheck_$g.txt" | tr '\n' ' ')"
done
cat > "$W/pix.json" <<'JSON'
{"llm": {"vocab_size": 151680, "hidden_size": 64, "intermediate_size": 130, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000.0},
 "bagel": {"visual_gen": true, "visual_und": false, "latent_patch_size": 4, "max_latent_size": 16, "vae": null, "latent_channels": 3}}
JSON
usbx-ckpt init --config "$W/pix.json" --seed 5 "$W/base" > /dev/null && cp .devdata/tokenizer.json "$W/base/"
usbx-synth scenes --n 8 --render "$W/img" --size 64 --seed 2 > "$W/pairs.jsonl"
timeout 200 compute-sanitizer --tool memcheck usbx-train --model "$W/base" --device cuda --no-visual-und --steps 3 --warmup 1 \
  --expected-tokens 700 --max-tokens 1100 --out "$W/run" "$W/pairs.jsonl" > "$R/memcheck_train.jsonl" 2> "$R/memcheck_train.err"
echo "memcheck usbx-train rc=$?: $(grep -h 'ERROR SUMMARY' "$R/memcheck_train.jsonl" "$R/memcheck_train.err") records $(grep -c '^{' "$R/memcheck_train.jsonl")"
date -u
