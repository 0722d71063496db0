#!/usr/bin/env bash
# Every file of the malformed corpus (truncated, header past the end, 2 GB header, overlapping and
# out-of-range offsets, bad dtype, shape/size mismatch, non-UTF-8, bad JSON, ...) makes each
# usbx-ckpt command print exactly one line "usbx-ckpt: FILE: <problem>" and exit 1 — never crash,
# never touch the file.
set -u
cd "$(dirname "$0")/.."
BUILD=${USBX_BUILD:-build}
CKPT=${USBX_BIN:-$PWD/bin}/usbx-ckpt
H=$BUILD/tests/helper_st
[ -x "$CKPT" ] && [ -x "$H" ] || { echo "missing $CKPT or $H (run make)"; exit 1; }
W=$(mktemp -d /tmp/usbx_t_ckpt_bad.XXXXXX)
trap 'rm -rf "$W"' EXIT
$H corpus "$W/bad" || exit 1
$H gen "$W/good.safetensors" w:F32:4x4 >/dev/null || exit 1
fails=0 n=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
one_error() {   # FILE PHRASE ERRFILE RC LABEL
  local f=$1 phrase=$2 err=$3 rc=$4 label=$5
  [ "$rc" = 1 ] || { fail "$label $f: exit $rc"; return; }
  [ "$(wc -l <"$err")" = 1 ] || { fail "$label $f: $(wc -l <"$err") lines:"; cat "$err"; return; }
  grep -q "^usbx-ckpt: .*$(basename "$f"): " "$err" || { fail "$label $f: bad prefix: $(cat "$err")"; return; }
  grep -qF -- "$phrase" "$err" || { fail "$label $f: '$(cat "$err")' lacks '$phrase'"; return; }
}
while IFS=$'\t' read -r name phrase; do
  f=$W/bad/$name
  n=$((n+1))
  cp "$f" "$W/orig"
  "$CKPT" inspect "$f" >"$W/out" 2>"$W/err"; one_error "$f" "$phrase" "$W/err" $? inspect
  [ -s "$W/out" ] && fail "inspect $f: wrote records"
  "$CKPT" convert --dtype bf16 "$f" >"$W/out" 2>"$W/err"; one_error "$f" "$phrase" "$W/err" $? convert
  cmp -s "$f" "$W/orig" || fail "convert $f: file changed"
  # as a target's model.safetensors (good base), and as the base ema.safetensors (good target)
  rm -rf "$W/t" "$W/b" && mkdir -p "$W/t" "$W/b"
  cp "$f" "$W/t/model.safetensors"
  cp "$W/good.safetensors" "$W/b/ema.safetensors"
  "$CKPT" complete --base "$W/b" "$W/t" >"$W/out" 2>"$W/err"; one_error "$W/t/model.safetensors" "$phrase" "$W/err" $? complete
  cmp -s "$W/t/model.safetensors" "$W/orig" || fail "complete $f: model changed"
  [ -s "$W/out" ] && fail "complete $f: wrote records"
  cp "$f" "$W/b/ema.safetensors"
  cp "$W/good.safetensors" "$W/t/model.safetensors"
  "$CKPT" complete --base "$W/b" "$W/t" >"$W/out" 2>"$W/err"; one_error "$W/b/ema.safetensors" "$phrase" "$W/err" $? complete-base
  cmp -s "$W/t/model.safetensors" "$W/good.safetensors" || fail "complete (bad base) $f: model changed"
done <"$W/bad/expect.tsv"
[ -z "$(find "$W" -name '*.tmp.*' -print -quit)" ] || fail "temporary files left"
echo "t_ckpt_malformed: $n files x 4 runs, $fails failed"
[ $n -ge 30 ] && [ $fails -eq 0 ]
