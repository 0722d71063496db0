#!/usr/bin/env bash
# The Hopper attention kernels with the warpgroups taking turns (wg_flash_tiles) and the masked
# tiles' metadata in shared memory, against the previous commit's (old/ in the bundle), one call:
# test_ops_cuda, its attention groups under compute-sanitizer memcheck, the CUDA fixtures, then
# bench_ops_cuda's inference attention section and the trainer-layout rows (LAYOUTS), old and new
# alternating, and a per-block trace of the trainer layout (build-trace/, device_attn_trace.sh).
# TESTS=group: only that test_ops_cuda group; MEMCHECK=0 skips the sanitizer.  STAGE=e2e instead: bench_gen (1024x1024 with 100 think tokens, 512x512) and the 1.59 B step (8k
# twice, 32k once), old and new alternating.  Results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dtu
export PATH=$PATH:/usr/local/cuda/bin
LAYOUTS=${LAYOUTS:-8204:4,8204:20,8320:20,8192:0}
if [ "${STAGE:-kernels}" = kernels ]; then
  timeout 200 build/tests/test_ops_cuda ${TESTS:-} > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda ${TESTS:-} rc=$?"; tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
  [ "${MEMCHECK:-1}" = 1 ] && timeout 150 compute-sanitizer --tool memcheck build/tests/test_ops_cuda attention > "$R/memcheck_attention.txt" 2>&1; echo "memcheck rc=$?"; tail -n 2 "$R/memcheck_attention.txt"
  bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -v "^  " "$R/fixtures.txt"
  for rep in 1 2; do
    for v in old new; do
      b=build/bench/bench_ops_cuda; [ $v = old ] && b=old/bench_ops_cuda
      [ $rep = 1 ] && { BENCH_ONLY=attn BENCH_REPS=20 timeout 120 $b "$R/attn_${v}_$rep.md" > /dev/null 2>&1; echo "attn $v $rep rc=$?"; }
      BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=$LAYOUTS BENCH_REPS=10 timeout 120 $b "$R/train_${v}_$rep.md" > /dev/null 2>&1
      echo "train $v $rep rc=$?"; grep "^| [0-9]" "$R/train_${v}_$rep.md"
    done
  done
  for v in old new; do echo "$v:"; grep -h "v8:" "$R/attn_${v}_1.md"; done
  USBX_ATTN_TRACE=$R/trace_8204_4 BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=8204:4 BENCH_REPS=3 timeout 120 \
    build-trace/bench/bench_ops_cuda /dev/null > /dev/null 2>&1; echo "trace rc=$?"
  for k in fwd bwd; do python3 benchmark/attn_trace.py "$R/trace_8204_4.$k" | head -6; done
else
  timeout 150 bin/usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 /tmp/b7 > /dev/null && cp .devdata/tokenizer.json /tmp/b7/
  for v in old new; do
    b=build/bench/bench_gen; [ $v = old ] && b=old/bench_gen
    for s in 1024x1024 512x512; do
      think=0; [ $s = 1024x1024 ] && think=100
      timeout 200 $b --model /tmp/b7 --device cuda --size $s --reps 2 --think-tokens $think 2>&1 | sed "s/^{/{\"v\":\"$v\",/" | tee -a "$R/bench_gen.jsonl" | tail -n 1
    done
  done
  rm -rf /tmp/b7
  b15_setup
  for rep in 1 2; do train_ab 8k_$rep $ARGS --steps 10; done
  train_ab 32k $ARGS --accum 4 --steps 8
fi
date -u
