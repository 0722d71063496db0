#!/usr/bin/env bash
# AdamW over all ranges in one launch (adamw_multi) against the previous commit (old/ in the bundle):
# test_ops_cuda optim (adamw_multi bit for bit against adamw), the 1.59 B step at 32k tokens in one
# batch and at 8k, old and new alternating, and the CUDA fixtures.  Bundle extracted in the repo root;
# results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dam
timeout 120 build/tests/test_ops_cuda optim > "$R/test_optim.txt" 2>&1; echo "test_ops_cuda optim rc=$?: $(tail -n 1 "$R/test_optim.txt")"; grep -E "adamw_multi|FAIL" "$R/test_optim.txt" | head -6
b15_setup
train_ab 32k1 $ARGS --expected-tokens 32768 --max-tokens 36864 --steps 10
train_ab 8k $ARGS --steps 12
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -E "^train|failed" "$R/fixtures.txt"
date -u
