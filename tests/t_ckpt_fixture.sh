#!/usr/bin/env bash
# usbx-ckpt on ../shared/fixtures/bagel-tiny-a (written by PyTorch): inspect counts, and the
# upstream use case — a visual_und=False fine-tune (no vit_model/connector/vit_pos_embed tensors)
# completed from the base folder, every value checked bit-exactly against the fixture in BF16.
set -u
cd "$(dirname "$0")/.."
BUILD=${USBX_BUILD:-build}
CKPT=${USBX_BIN:-$PWD/bin}/usbx-ckpt
H=$BUILD/tests/helper_st
FIX=${USBX_SHARED:-../shared}/fixtures/bagel-tiny-a
[ -f "$FIX/ema.safetensors" ] || { echo "skipped: $FIX/ema.safetensors missing (../shared not present)"; exit 77; }
command -v jq >/dev/null || { echo "skipped: jq not installed"; exit 77; }
[ -x "$CKPT" ] && [ -x "$H" ] || { echo "missing $CKPT or $H (run make)"; exit 1; }
W=$(mktemp -d /tmp/usbx_t_ckpt_fix.XXXXXX)
trap 'rm -rf "$W"' EXIT
fails=0
check() { local what=$1; shift; if "$@" >/dev/null; then echo "ok: $what"; else echo "FAIL: $what"; fails=$((fails+1)); fi; }
eqn() { [ "$1" = "$2" ] || { echo "  got '$1', want '$2'" >&2; return 1; }; }

check "inspect fixture ema: 111 F32 tensors, 368384 parameters (README)" eqn \
  "$("$CKPT" inspect --summary-only "$FIX/ema.safetensors" | jq -c '[.tensors,.parameters,.bytes_by_dtype,.files[0].metadata]')" \
  '[111,368384,{"F32":1473536},{"format":"pt"}]'
check "inspect fixture ema: first tensor record" eqn \
  "$("$CKPT" inspect "$FIX/ema.safetensors" | head -1 | jq -c '[.name,.dtype,.shape,.bytes,.offset]')" \
  '["connector.fc1.bias","F32",[64],256,0]'

mkdir -p "$W/base" "$W/ft"
cp "$FIX"/*.json "$FIX/ema.safetensors" "$FIX/ae.safetensors" "$W/base/"
chmod u+w "$W/base"/*
$H drop "$FIX/ema.safetensors" "$W/ft/model.safetensors" vit_model. connector. vit_pos_embed. >/dev/null
check "fine-tune stand-in lacks 42 tensors" eqn \
  "$("$CKPT" inspect --summary-only "$W/ft/model.safetensors" | jq .tensors)" 69
"$CKPT" complete --base "$W/base" "$W/ft" >"$W/out.jsonl" 2>"$W/err.txt"
check "complete exits 0" eqn "$?" 0
check "no diagnostics" eqn "$(wc -c <"$W/err.txt")" 0
check "42 added (vit_model, connector, vit_pos_embed), 69 converted" eqn \
  "$(jq -c 'select(.kind=="done") | [.tensors,.added,.converted]' "$W/out.jsonl")" "[111,42,69]"
check "added names are exactly the understanding side" eqn \
  "$(jq -r 'select(.kind=="added") | .name | split(".")[0]' "$W/out.jsonl" | sort -u | tr '\n' ' ')" "connector vit_model vit_pos_embed "
check "all 111 tensors = fixture converted to BF16, bit-exact" \
  $H compare --dtype bf16 "$FIX/ema.safetensors" "$W/ft/model.safetensors"
check "ae.safetensors and configs copied" bash -c "cmp -s '$FIX/ae.safetensors' '$W/ft/ae.safetensors' && cmp -s '$FIX/llm_config.json' '$W/ft/llm_config.json'"
check "BF16 file is half the data" eqn \
  "$("$CKPT" inspect --summary-only "$W/ft/model.safetensors" | jq -c '.bytes_by_dtype')" '{"BF16":736768}'

cp "$FIX/ema.safetensors" "$W/e.safetensors"
"$CKPT" convert --dtype f16 --quiet "$W/e.safetensors" >/dev/null
check "convert fixture to F16: bit-exact" $H compare --dtype f16 "$FIX/ema.safetensors" "$W/e.safetensors"
"$CKPT" convert --dtype f32 --quiet "$W/e.safetensors" >/dev/null
check "F16 back to F32: exact widening" $H compare --dtype f32 "$W/e.safetensors" "$W/e.safetensors"

echo "t_ckpt_fixture: $fails failed"
[ $fails -eq 0 ]
