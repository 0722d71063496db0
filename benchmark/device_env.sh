# Sourced by the device scripts (benchmark/device_*.sh) from the repo root with the bundle extracted:
# the carried libraries and tools, NCCL from PyTorch's wheel, NVLink multicast off.
export LD_LIBRARY_PATH=$PWD/.devlibs:${LD_LIBRARY_PATH:-}
export PATH=$PWD/bin:$PATH NCCL_NVLS_ENABLE=0
if [ -z "${USBX_NCCL_LIB:-}" ]; then
  nccl_dir=$(python3 -c 'import nvidia.nccl as n, os; print(os.path.join(list(n.__path__)[0], "lib"))' 2>/dev/null)
  [ -f "$nccl_dir/libnccl.so.2" ] || nccl_dir=$(dirname "$(find /opt /usr -name 'libnccl.so.2' 2>/dev/null | head -1)" 2>/dev/null)
  [ -f "$nccl_dir/libnccl.so.2" ] && export USBX_NCCL_LIB=$nccl_dir/libnccl.so.2
fi
jq() { LD_LIBRARY_PATH= command jq "$@"; }   # the system jq must not pick up the carried libjq

# b15_setup: the ~1.5B timing model (benchmark/mfu-1p5b.json, random weights) in $W/b15, 32
# rendered 256x256 scenes in $W/big.jsonl, and in ARGS the usbx-train arguments of an 8k-token step
b15_setup() {
  usbx-synth scenes --n 32 --render "$W/big" --size 256 --seed 3 > "$W/big.jsonl"
  usbx-ckpt init --config benchmark/mfu-1p5b.json --seed 1 "$W/b15" > /dev/null && cp .devdata/tokenizer.json "$W/b15/"
  ARGS="--model $W/b15 --out $W/run --device cuda --no-visual-und --warmup 1 --expected-tokens 8192 --max-tokens 8400 --no-save $W/big.jsonl"
}

# mem_sampled CSV CMD...: runs CMD while nvidia-smi writes every GPU's memory use (index, MiB)
# to CSV twice a second; returns CMD's status
mem_sampled() {
  local csv=$1 smi rc; shift
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$csv" 2> /dev/null &
  smi=$!
  "$@"; rc=$?
  kill $smi 2> /dev/null; wait $smi 2> /dev/null
  return $rc
}

# train_summary FILE.jsonl: mean tokens/s, MFU and TFLOP/s of usbx-train's records after the first
# two (warm-up), and the first three losses
train_summary() {
  python3 -c "
import json, sys; r = [json.loads(l) for l in open(sys.argv[1])][2:]
print('steps 3-%d: tokens/s %.0f, mfu %.4f, tflops %.1f; losses' % (len(r) + 2, sum(x['tokens_per_s'] for x in r) / len(r), sum(x['mfu'] for x in r) / len(r),
      sum(x['tflops'] for x in r) / len(r)), [round(x['loss'], 4) for x in r[:3]])" "$1"
}

# train_ab LABEL ARGS...: usbx-train ARGS with the previous commit's binary (old/usbx-train in the
# bundle), then this tree's, into $R/b15_LABEL_{old,new}.jsonl; prints each summary
train_ab() {
  local label=$1 v exe; shift
  for v in old new; do
    exe=usbx-train; [ $v = old ] && exe=old/usbx-train
    timeout 200 $exe "$@" > "$R/b15_${label}_$v.jsonl" 2> "$R/b15_${label}_$v.err"
    echo "$label $v rc=$?: $(train_summary "$R/b15_${label}_$v.jsonl")"
  done
}

# device_results W: results go to W/results ($R), packed into $OUT/NAME.tar.gz (NAME = W's last
# component; $OUT or /tmp/out) when the script exits; records the date and the cards.
device_results() {
  W=$1; R=$W/results; FINAL=${OUT:-/tmp/out}
  mkdir -p "$R" "$FINAL"
  trap 'tar -C "$W" -czf "$FINAL/$(basename "$W").tar.gz" results' EXIT
  date -u | tee "$R/date.txt"
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$R/gpus.txt"
}

# cupti_build: compiles benchmark/cupti_trace.c against this machine's CUPTI (the CUDA toolkit's or
# PyTorch's nvidia-cuda-cupti wheel) into $W/libcupti_trace.so; cupti_run FILE CMD...: runs CMD with
# it injected, its timeline written to FILE (benchmark/gpu_idle.py reads it)
cupti_build() {
  local inc lib so hdrs k mc ms py
  py=$(python3 -c 'import nvidia, os; print(" ".join(nvidia.__path__))' 2>/dev/null)
  inc=$(dirname "$(find /usr/local/cuda/extras/CUPTI/include /usr/local/cuda/include $py -name cupti.h 2>/dev/null | head -1)")
  so=$(find /usr/local/cuda/extras/CUPTI/lib64 /usr/local/cuda/lib64 $py -name 'libcupti.so*' 2>/dev/null | head -1)   # maybe only libcupti.so.N
  lib=$(dirname "$so")
  [ -f "$inc/cupti.h" ] && [ -f "$so" ] || { echo "cupti_build: no CUPTI found"; return 1; }
  hdrs="$inc/cupti_activity.h"
  k=$(grep -ho '} CUpti_ActivityKernel[0-9]*;' $hdrs | tr -d '}; ' | sort -V | tail -1)
  mc=$(grep -ho '} CUpti_ActivityMemcpy[0-9]*;' $hdrs | tr -d '}; ' | sort -V | tail -1)
  ms=$(grep -ho '} CUpti_ActivityMemset[0-9]*;' $hdrs | tr -d '}; ' | sort -V | tail -1)
  echo "cupti_build: $inc, $lib; records $k $mc $ms"
  CUPTI_LIB_DIR=$lib
  gcc -O2 -shared -fPIC -Wall -Wextra -Werror -Wno-unused-parameter -DKREC=$k -DMCREC=$mc -DMSREC=$ms -I"$inc" -I/usr/local/cuda/include \
    benchmark/cupti_trace.c -o "$W/libcupti_trace.so" "$so" -Wl,-rpath,"$lib"
}
cupti_run() {
  local f=$1; shift
  USBX_CUPTI_TRACE=$f CUDA_INJECTION64_PATH=$W/libcupti_trace.so LD_LIBRARY_PATH=$CUPTI_LIB_DIR:$LD_LIBRARY_PATH "$@"
}
