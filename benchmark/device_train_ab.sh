#!/usr/bin/env bash
# usbx-train of this tree against the previous commit's (old/usbx-train in the bundle) on the
# 1.59 B step, alternating in one call: 8k tokens twice each, then 32k (--accum 4).  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dab
b15_setup
for rep in 1 2; do
  for v in old new; do
    exe=usbx-train; [ $v = old ] && exe=old/usbx-train
    timeout 150 $exe $ARGS --steps 10 > "$R/b15_${v}_$rep.jsonl" 2> "$R/b15_${v}_$rep.err"
    echo "8k $v $rep rc=$?: $(train_summary "$R/b15_${v}_$rep.jsonl")"
  done
done
for v in new old; do
  exe=usbx-train; [ $v = old ] && exe=old/usbx-train
  timeout 200 $exe $ARGS --accum 4 --steps 8 > "$R/b15_32k_$v.jsonl" 2> "$R/b15_32k_$v.err"
  echo "32k $v rc=$?: $(train_summary "$R/b15_32k_$v.jsonl")"
done
date -u
