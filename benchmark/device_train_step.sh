#!/usr/bin/env bash
# One round of checks and timings of a trainer change on one GPU, against the previous commit's
# binaries (old/ in the bundle): test_ops_cuda ($TESTS: a group, or empty for all) and, for each group
# in $MEMCHECK, the same under compute-sanitizer memcheck; bench_ops_cuda's element-wise section
# (BENCH_ONLY=ew) old and new; the 1.59 B trainer at 8k tokens (20 steps, twice) and 32k (--accum 4,
# 10 steps), old and new alternating, and new again with $AB_ENV set (an option's other value, e.g.
# AB_ENV=USBX_CUDA_RMS_BWD_FUSED=0); RECOMPUTE=1: --recompute against the plain step (4 steps,
# --deterministic); the CUDA fixtures; a CUPTI timeline of new at 32k
# (benchmark/gpu_idle.py); BENCH_ATTN=1: bench_ops_cuda's training attention in the trainer layout, old
# and new; BENCH_GEMM=1: bench_gemm (the trainer's cuBLAS products against every cublasLt algorithm);
# ONE32=1: the 32k step as one packed batch (upstream's --expected-tokens 32768 --max-tokens 36864,
# no --accum), old and new, with the GPU's memory sampled, and traced instead of --accum 4.  Bundle extracted in the repo root; results
# under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dts
export PATH=$PATH:/usr/local/cuda/bin
timeout 300 build/tests/test_ops_cuda ${TESTS:-} > "$R/test_ops_cuda.txt" 2>&1; echo "test_ops_cuda ${TESTS:-(all)} rc=$?"
tail -n 1 "$R/test_ops_cuda.txt"; grep FAIL "$R/test_ops_cuda.txt" | head
for g in ${MEMCHECK:-}; do
  timeout 300 compute-sanitizer --tool memcheck build/tests/test_ops_cuda $g > "$R/memcheck_$g.txt" 2>&1; echo "memcheck $g rc=$?: $(tail -n 1 "$R/memcheck_$g.txt")"
done
for v in old new; do
  exe=build/bench/bench_ops_cuda; [ $v = old ] && exe=old/bench_ops_cuda
  [ -x $exe ] && BENCH_ONLY=ew timeout 120 $exe "$R/ew_$v.md" > /dev/null 2>&1 && echo "ew $v:" && grep -E "rmsnorm_bwd|silu|to_mm" "$R/ew_$v.md"
done
if [ "${BENCH_ATTN:-0}" = 1 ]; then
  for v in old new; do
    exe=build/bench/bench_ops_cuda; [ $v = old ] && exe=old/bench_ops_cuda
    BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=8204:20,8204:20:e,8192:0 timeout 120 $exe "$R/attn_$v.md" > /dev/null 2>&1; echo "attention $v:"; grep "^| 8" "$R/attn_$v.md"
  done
fi
if [ "${BENCH_GEMM:-0}" = 1 ]; then
  timeout 240 build/bench/bench_gemm > "$R/gemm.md" 2>&1; echo "bench_gemm rc=$?"; grep -E "^\| (gate|down|q) |^All" "$R/gemm.md"
fi
b15_setup
if [ "${ONE32:-0}" = 1 ]; then
  mem_sampled "$R/mem_32k1.csv" train_ab 32k1 $ARGS --expected-tokens 32768 --max-tokens 36864 --steps 10
  echo "32k one batch: peak $(sort -t, -k2 -n "$R/mem_32k1.csv" | tail -1 | cut -d, -f2) MiB"
fi
train_ab 8k_a $ARGS --steps 20
train_ab 8k_b $ARGS --steps 20
train_ab 32k $ARGS --accum 4 --steps 10
if [ -n "${AB_ENV:-}" ]; then
  env $AB_ENV timeout 200 usbx-train $ARGS --steps 20 > "$R/b15_8k_env.jsonl" 2> "$R/b15_8k_env.err"; echo "8k $AB_ENV rc=$?: $(train_summary "$R/b15_8k_env.jsonl")"
  env $AB_ENV timeout 200 usbx-train $ARGS --accum 4 --steps 10 > "$R/b15_32k_env.jsonl" 2> "$R/b15_32k_env.err"; echo "32k $AB_ENV rc=$?: $(train_summary "$R/b15_32k_env.jsonl")"
  if [ "${ONE32:-0}" = 1 ]; then
    env $AB_ENV timeout 200 usbx-train $ARGS --expected-tokens 32768 --max-tokens 36864 --steps 10 > "$R/b15_32k1_env.jsonl" 2> "$R/b15_32k1_env.err"
    echo "32k one batch $AB_ENV rc=$?: $(train_summary "$R/b15_32k1_env.jsonl")"
  fi
fi
if [ "${RECOMPUTE:-0}" = 1 ]; then   # --recompute against the plain step, new binary, 4 steps (--deterministic: equal to the last digit)
  for rc in "" --recompute; do timeout 200 usbx-train $ARGS --deterministic --steps 4 $rc > "$R/b15_det$rc.jsonl" 2> /dev/null; done
  echo "recompute: $(jq -c '[.loss, .grad_norm]' "$R/b15_det.jsonl" | tr '\n' ' ') vs $(jq -c '[.loss, .grad_norm]' "$R/b15_det--recompute.jsonl" | tr '\n' ' ')"
fi
bin/usbx-ckpt check-fixtures --device cuda .devdata/bagel-tiny-a > "$R/fixtures.txt" 2>&1; echo "fixtures rc=$?"; grep -v "^  " "$R/fixtures.txt"
if cupti_build; then
  T32="--accum 4"; [ "${ONE32:-0}" = 1 ] && T32="--expected-tokens 32768 --max-tokens 36864"   # the traced 32k step
  cupti_run "$R/trace_32k.txt" timeout 200 usbx-train $ARGS $T32 --steps 5 > "$R/tr_32k.jsonl" 2> "$R/tr_32k.err"
  echo "traced 32k rc=$?: $(train_summary "$R/tr_32k.jsonl")"
  python3 benchmark/gpu_idle.py "$R/trace_32k.txt" --top 30 > "$R/idle_32k.txt" 2>&1; head -n 12 "$R/idle_32k.txt"; sed -n '/kernels by/,$p' "$R/idle_32k.txt" | head -n 32
  gzip -9 "$R/trace_32k.txt"
fi
date -u
