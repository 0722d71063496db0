#!/usr/bin/env bash
# The trainer's MLP activations in bf16 (gate, up and their gradients), products that overwrite
# instead of clearing then accumulating, and the optimizer skipping tensors no gradient reached:
# test_ops_cuda, the CUDA fixtures, then the 1.59 B step (8k tokens, and 32k with --accum 4)
# with this tree's usbx-train against the previous commit's (old/usbx-train in the bundle),
# alternating, in one call, and a profile of each.  ONLY_AB=1: the alternating runs only.
# Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dmm
if [ "${ONLY_AB:-0}" != 1 ]; then
  timeout 200 build/tests/test_ops_cuda > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
  bin/usbx-ckpt check-fixtures --device cuda --verbose .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -v "^  " "$R/fixtures.txt"
fi
b15_setup
for rep in 1 2; do
  for v in old new; do
    exe=usbx-train; [ $v = old ] && exe=old/usbx-train
    mem_sampled "$R/mem_${v}_$rep.csv" timeout 150 $exe $ARGS --steps 10 > "$R/b15_${v}_$rep.jsonl" 2> "$R/b15_${v}_$rep.err"
    echo "8k $v $rep rc=$?: $(train_summary "$R/b15_${v}_$rep.jsonl"), peak $(sort -t, -k2 -n "$R/mem_${v}_$rep.csv" | tail -1) MiB"
  done
done
if [ "${ONLY_AB:-0}" != 1 ]; then
  USBX_TRAIN_PROFILE=1 timeout 150 usbx-train $ARGS --steps 8 > "$R/b15_new_prof.jsonl" 2> "$R/b15_new_prof.err"; grep profile "$R/b15_new_prof.err"
  USBX_TRAIN_PROFILE=1 timeout 150 old/usbx-train $ARGS --steps 8 > "$R/b15_old_prof.jsonl" 2> "$R/b15_old_prof.err"; grep profile "$R/b15_old_prof.err"
fi
train_ab 32k $ARGS --accum 4 --steps 8
date -u
