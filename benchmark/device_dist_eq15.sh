#!/usr/bin/env bash
# Data parallel with the ~1.5B timing model (head dim 128: the Hopper attention kernels): 2 GPUs
# against 1 GPU accumulating the same two 8k-token batches (--accum 2), STEPS (default 6) steps;
# prints both runs' losses and grad norms, their largest relative differences and tokens/s.
# Bundle extracted in the repo root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/de15
b15_setup
STEPS=${STEPS:-6}
timeout 200 usbx-train $ARGS --steps "$STEPS" --accum 2 > "$R/eq15_1gpu_accum2.jsonl" 2> "$R/eq15_1gpu.err"; echo "1 GPU --accum 2 rc=$?"
timeout 200 usbx-train $ARGS --steps "$STEPS" --gpus 2 > "$R/eq15_2gpu.jsonl" 2> "$R/eq15_2gpu.err"; echo "2 GPUs rc=$?"
python3 - "$R/eq15_1gpu_accum2.jsonl" "$R/eq15_2gpu.jsonl" <<'PY' | tee "$R/eq15_summary.txt"
import sys, json
a = [json.loads(l) for l in open(sys.argv[1])]; b = [json.loads(l) for l in open(sys.argv[2])]
for x, y in zip(a, b):
    print("step %d: loss %.6f %.6f grad_norm %.5f %.5f" % (x["step"], x["loss"], y["loss"], x["grad_norm"], y["grad_norm"]))
for k in ("loss", "grad_norm"):
    d = [abs(x[k] - y[k]) / abs(x[k]) for x, y in zip(a, b)]
    print(k, "max rel diff %.3g at step %d" % (max(d), d.index(max(d)) + 1))
print("tokens/s (steps 3..): 1 GPU %.0f, 2 GPUs %.0f" % tuple(sum(r["tokens_per_s"] for r in z[2:]) / max(1, len(z) - 2) for z in (a, b)))
PY
date -u
