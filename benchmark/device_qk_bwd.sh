#!/usr/bin/env bash
# The q/k-norm + RoPE backward as a block per 8 tokens (the rotation once per token) against the
# previous commit's (old/usbx-train in the bundle): test_ops_cuda's qk group, the CUDA fixtures, then
# the 1.59 B step (8k tokens twice, 32k once), old and new alternating.  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dqk
timeout 100 build/tests/test_ops_cuda qk > "$R/test_qk.txt" 2>&1; echo "test_ops_cuda qk rc=$?"; cat "$R/test_qk.txt" | grep -v "^$" | tail -n 12
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -v "^  " "$R/fixtures.txt"
b15_setup
for rep in 1 2; do train_ab 8k_$rep $ARGS --steps 10; done
train_ab 32k $ARGS --accum 4 --steps 8
date -u
