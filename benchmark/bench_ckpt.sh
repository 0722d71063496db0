#!/usr/bin/env bash
# usbx-ckpt streaming benchmark: wall time and peak RSS of `convert` and `complete` on a generated
# checkpoint of $BENCH_GB GiB (default 4) of F32 tensors, against `cp` (+ fsync, as usbx-ckpt
# fsyncs) of the same file on the same disk.  Page cache is dropped for the input before every
# run (posix_fadvise DONTNEED after sync), so every run reads from disk.
#   bash benchmark/bench_ckpt.sh            # uses $BENCH_DIR (default /tmp), deleted afterwards
# Prints a markdown table; results with machine and date are kept in benchmark/ckpt.md.
set -u
cd "$(dirname "$0")/.."
GB=${BENCH_GB:-4}
CKPT=${CKPT_BIN:-$PWD/bin/usbx-ckpt}
H=$PWD/${USBX_BUILD:-build}/tests/helper_st
[ -x "$CKPT" ] && [ -x "$H" ] || { echo "bench_ckpt: run make first" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench_ckpt: /usr/bin/time (GNU time) needed for peak RSS" >&2; exit 1; }
D=$(mktemp -d "${BENCH_DIR:-/tmp}/usbx_bench_ckpt.XXXXXX")
trap 'rm -rf "$D"' EXIT
# private copies: a concurrent `make` relinking bin/ must not break a run
cp "$CKPT" "$D/usbx-ckpt" && cp "$H" "$D/helper_st" && CKPT=$D/usbx-ckpt H=$D/helper_st

evict() {   # drop the page cache of the given files (clean pages only, hence the sync)
  sync
  python3 -c 'import os,sys
for p in sys.argv[1:]:
    fd=os.open(p,os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
# run LABEL INPUT_BYTES PREP CMD...: PREP (a shell snippet: fresh input, eviction) runs before
# each of $REPS repetitions; the row gives the median wall time and the largest peak RSS.
REPS=${BENCH_REPS:-3}
run() {
  local label=$1 bytes=$2 prep=$3; shift 3
  local times=() rss_max=0 secs rss
  for ((r = 0; r < REPS; r++)); do
    eval "$prep"
    sync; sleep 2   # let writeback and discards of earlier steps settle
    /usr/bin/time -f '%e %M' -o "$D/time.txt" "$@" >"$D/out.jsonl" 2>"$D/err.txt" || { echo "FAILED: $label"; cat "$D/err.txt"; exit 1; }
    read -r secs rss <"$D/time.txt"
    times+=("$secs")
    [ "$rss" -gt "$rss_max" ] && rss_max=$rss
  done
  local med
  med=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  printf '| %s | %.2f | %s | %.0f | %.1f |\n' "$label" "$med" "$(echo "${times[@]}" | tr ' ' '/')" \
    "$(echo "$bytes / 1048576 / $med" | bc -l)" "$(echo "$rss_max / 1024" | bc -l)"
}

# A fine-tune stand-in: $GB GiB of F32 in 64 MiB tensors (LLM-like), plus small norms.
n=$((GB * 16))
specs=()
for ((i = 0; i < n; i++)); do specs+=("language_model.model.layers.$i.mlp.up_proj.weight:F32:4096x4096"); done
for ((i = 0; i < n; i++)); do specs+=("language_model.model.layers.$i.input_layernorm.weight:F32:3584"); done
mkdir -p "$D/base" "$D/t"
echo "generating $GB GiB checkpoint in $D ..." >&2
$H gen --seed 1 --meta format=pt "$D/model.safetensors" "${specs[@]}" >/dev/null
# Base: BF16 EMA with the same LLM names plus 512 MiB of ViT tensors the fine-tune lacks; a VAE.
bspecs=()
for ((i = 0; i < n; i++)); do bspecs+=("language_model.model.layers.$i.mlp.up_proj.weight:BF16:4096x4096"); done
for ((i = 0; i < 16; i++)); do bspecs+=("vit_model.vision_model.encoder.layers.$i.mlp.fc1.weight:F32:4096x2048"); done
$H gen --seed 2 --meta format=pt "$D/base/ema.safetensors" "${bspecs[@]}" >/dev/null
$H gen --seed 3 "$D/base/ae.safetensors" decoder.w:F32:8192x4096 >/dev/null
echo '{}' >"$D/base/llm_config.json"
size=$(stat -c %s "$D/model.safetensors")
vae=$(stat -c %s "$D/base/ae.safetensors")

echo "| step | median wall s | runs s | MiB/s (of input) | peak RSS MiB |"
echo "|---|---|---|---|---|"
M=$D/model.safetensors B=$D/base
run "usbx-ckpt --version (start-up only: libraries)" 1 ":" "$CKPT" --version
run "cp (into page cache, no fsync)" "$size" "rm -f $D/c.safetensors; evict $M" cp "$M" "$D/c.safetensors"
run "cp + sync FILE (fsync, as usbx-ckpt does)" "$size" "rm -f $D/c.safetensors; evict $M" \
  sh -c "cp '$M' '$D/c.safetensors' && sync '$D/c.safetensors'"
run "usbx-ckpt convert --dtype bf16 (F32 -> BF16)" "$size" "cp $M $D/c.safetensors; evict $D/c.safetensors" \
  "$CKPT" convert --dtype bf16 --quiet "$D/c.safetensors"
run "usbx-ckpt convert --dtype f32 (BF16 -> F32)" "$((size / 2))" \
  "cp $M $D/c.safetensors; $CKPT convert --dtype bf16 --quiet $D/c.safetensors >/dev/null; evict $D/c.safetensors" \
  "$CKPT" convert --dtype f32 --quiet "$D/c.safetensors"
rm -f "$D/c.safetensors"
fresh="rm -rf $D/t; mkdir -p $D/t; cp $M $D/t/model.safetensors; evict $D/t/model.safetensors $B/ema.safetensors $B/ae.safetensors"
run "usbx-ckpt complete --dtype keep (no conversion)" "$((size + vae))" "$fresh" "$CKPT" complete --base "$B" --dtype keep "$D/t"
run "usbx-ckpt complete (bf16, default)" "$((size + vae))" "$fresh" "$CKPT" complete --base "$B" "$D/t"
echo
echo "input: $size bytes F32 ($n x 64 MiB + $n norms); base ema $(stat -c %s "$D/base/ema.safetensors") bytes; ae $vae bytes"
echo "complete (bf16) report: $(jq -c 'select(.kind=="done") | {tensors,added,converted,copied,bytes}' "$D/out.jsonl")"
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), disk $(findmnt -no SOURCE,FSTYPE -T "$D" | tr -s ' ')"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
