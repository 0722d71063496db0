#!/usr/bin/env bash
# Run-to-run reproducibility of usbx-train on one GPU: the 1.59 B step (8k tokens, 4 steps) twice
# with --deterministic and twice without; prints whether each pair's records (loss, mse, grad
# norm, to the last digit) are equal.  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/ddt
b15_setup
for run in det:0 det:1 fast:0 fast:1; do
  mode=${run%:*} n=${run#*:} flag=
  [ $mode = det ] && flag=--deterministic
  timeout 120 usbx-train $ARGS --steps 4 $flag > "$R/run_${mode}_$n.jsonl" 2> "$R/run_${mode}_$n.err"; echo "$mode $n rc=$?"
done
python3 - "$R" <<'PY' | tee "$R/summary.txt"
import json, sys
R = sys.argv[1]
def recs(f): return [(r["loss"], r["mse"], r["grad_norm"]) for r in map(json.loads, open(f))]
for mode in ("det", "fast"):
    a, b = recs("%s/run_%s_0.jsonl" % (R, mode)), recs("%s/run_%s_1.jsonl" % (R, mode))
    d = max(abs(x - y) / abs(x) for p, q in zip(a, b) for x, y in zip(p, q))
    print("%-4s two runs: records %s (largest relative difference %.3g over %d steps)" % (mode, "EQUAL" if a == b else "differ", d, len(a)))
PY
date -u
