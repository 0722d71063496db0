#!/usr/bin/env bash
# The autoencoder's im2col on one GPU: test_ops_cuda's im2col and vae checks, the fixture check,
# then bench_vae at 1024 and 512 with this tree and with the previous im2col kernel
# (build/bench/bench_vae_old, built from the commit before) in the same call (BENCHES picks).
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dv
timeout 150 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; grep -E "im2col|checks" "$R/test_ops_cuda.txt" | tail -n 6
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -E "^vae|^gen|^edit|failed" "$R/fixtures.txt"
for b in ${BENCHES:-bench_vae_old bench_vae}; do
  for s in 1024 512; do
    timeout 200 build/bench/$b --size $s --reps 3 --check 128 > "$R/${b}_$s.txt" 2>&1; echo "$b $s rc=$?"; tail -n 1 "$R/${b}_$s.txt"
  done
done
date -u
