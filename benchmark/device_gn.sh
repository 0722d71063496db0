#!/usr/bin/env bash
# GroupNorm without atomics: test_ops_cuda's group_norm and vae checks, the fixture check, and
# the autoencoder's speed (bench_vae 1024) on one GPU.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dg
timeout 150 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; grep -E "group_norm|checks" "$R/test_ops_cuda.txt" | tail -n 4
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -E "^vae|failed" "$R/fixtures.txt"
timeout 200 build/bench/bench_vae --size 1024 --reps 3 --check 128 > "$R/bench_vae_1024.txt" 2>&1; tail -n 1 "$R/bench_vae_1024.txt"
date -u
