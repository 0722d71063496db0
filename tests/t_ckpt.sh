#!/usr/bin/env bash
# usbx-ckpt end to end on generated checkpoints: complete (upstream CKPT_Transfer semantics, made
# safe), convert, inspect, usage errors, interrupted writes.  Values are checked bit-exactly with
# build/tests/helper_st compare (source tensors converted with usbx_convert).
set -u
cd "$(dirname "$0")/.."
BUILD=${USBX_BUILD:-build}
CKPT=${USBX_BIN:-$PWD/bin}/usbx-ckpt
H=$BUILD/tests/helper_st
[ -x "$CKPT" ] && [ -x "$H" ] || { echo "missing $CKPT or $H (run make)"; exit 1; }
command -v jq >/dev/null || { echo "skipped: jq not installed"; exit 77; }
W=$(mktemp -d /tmp/usbx_t_ckpt.XXXXXX)
trap 'rm -rf "$W"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }
check() { local what=$1; shift; if "$@" >/dev/null; then ok "$what"; else bad "$what"; fi; }
eqn() { [ "$1" = "$2" ] || { echo "  got '$1', want '$2'" >&2; return 1; }; }
no_temps() { [ -z "$(find "$W" -name '*.tmp.*' -print -quit)" ]; }

# --- a base model folder: EMA with LLM, generation and understanding tensors in mixed dtypes
mkdir -p "$W/base/sub" "$W/t1" "$W/t2" "$W/t3"
$H gen --seed 7 --meta format=pt "$W/base/ema.safetensors" \
  language_model.model.embed_tokens.weight:F32:64x16 \
  language_model.model.layers.0.mlp.gate_proj.weight:F32:32x16 \
  language_model.model.norm.weight:F16:16 \
  latent_pos_embed.pos_embed:BF16:9x16 \
  time_embedder.mlp.0.bias:F64:16 \
  step:I64: \
  vit_model.vision_model.embeddings.patch_embedding.weight:F32:8x12 \
  vit_model.vision_model.post_layernorm.bias:F16:8 \
  connector.fc1.weight:F32:16x8 \
  vit_pos_embed.pos_embed:F32:4x16 \
  vit_model.mask:U8:5 >/dev/null || { echo "helper_st gen failed"; exit 1; }
$H gen --seed 3 "$W/base/ae.safetensors" decoder.conv_in.weight:F32:4x4x3x3 >/dev/null
echo '{"hidden_size": 16}' >"$W/base/llm_config.json"
echo '{"hidden_size": 8}' >"$W/base/vit_config.json"
printf 'merges\n' >"$W/base/merges.txt"

# --- a visual_und=False fine-tune: fp32 model.safetensors without ViT/connector, other values
$H gen --seed 11 --meta format=pt "$W/t1/model.safetensors" \
  language_model.model.embed_tokens.weight:F32:64x16 \
  language_model.model.layers.0.mlp.gate_proj.weight:F32:32x16 \
  language_model.model.norm.weight:F32:16 \
  latent_pos_embed.pos_embed:F32:9x16 \
  time_embedder.mlp.0.bias:F32:16 \
  step:I64: \
  only_in_target:F32:3 >/dev/null
echo '{"hidden_size": 16, "mine": true}' >"$W/t1/llm_config.json"
cp "$W/t1/model.safetensors" "$W/t1_orig.safetensors"
cp "$W/t1/model.safetensors" "$W/t3/model.safetensors"
# t2 has no model.safetensors

"$CKPT" complete --base "$W/base" "$W/t1" "$W/t2" >"$W/out.jsonl" 2>"$W/err.txt"
rc=$?
check "complete exits 1 when a target lacks model.safetensors" eqn "$rc" 1
check "one error line for the missing model" eqn "$(wc -l <"$W/err.txt")" 1
check "error names the target and the file" grep -q "^usbx-ckpt: $W/t2: model.safetensors is missing" "$W/err.txt"
check "nothing copied into the target without a model" eqn "$(ls "$W/t2" | wc -l)" 0
check "added records: every EMA tensor the target lacks" eqn \
  "$(jq -r 'select(.kind=="added") | .name' "$W/out.jsonl" | sort | tr '\n' ' ')" \
  "connector.fc1.weight vit_model.mask vit_model.vision_model.embeddings.patch_embedding.weight vit_model.vision_model.post_layernorm.bias vit_pos_embed.pos_embed "
check "added ViT F16 tensor converted to BF16" eqn \
  "$(jq -r 'select(.kind=="added" and .name=="vit_model.vision_model.post_layernorm.bias") | .from+">"+.to' "$W/out.jsonl")" "F16>BF16"
check "added U8 tensor keeps its dtype" eqn \
  "$(jq -r 'select(.kind=="added" and .name=="vit_model.mask") | .from+">"+.to' "$W/out.jsonl")" "U8>U8"
check "converted records: the 6 float tensors of the target" eqn \
  "$(jq -s '[.[] | select(.kind=="converted")] | length' "$W/out.jsonl")" 6
check "copied: every base file but ema.safetensors and the existing llm_config.json" eqn \
  "$(jq -r 'select(.kind=="copied") | .file' "$W/out.jsonl" | tr '\n' ' ')" "ae.safetensors merges.txt vit_config.json "
check "kept record for the target's own llm_config.json" eqn \
  "$(jq -r 'select(.kind=="kept") | .file' "$W/out.jsonl")" "llm_config.json"
check "skipped record for the base subfolder" eqn "$(jq -r 'select(.kind=="skipped") | .file' "$W/out.jsonl")" "sub"
check "done record" eqn "$(jq -c 'select(.kind=="done") | [.tensors,.added,.converted,.copied,.kept,.changed]' "$W/out.jsonl")" \
  "[12,5,6,3,1,true]"
check "target's own llm_config.json not overwritten" grep -q '"mine": true' "$W/t1/llm_config.json"
check "copied files are byte-identical" cmp -s "$W/base/ae.safetensors" "$W/t1/ae.safetensors"
check "ema.safetensors not copied" test ! -e "$W/t1/ema.safetensors"
check "target tensors: values = original converted to BF16 (bit-exact)" \
  $H compare --dtype bf16 "$W/t1_orig.safetensors" "$W/t1/model.safetensors"
check "added tensors: values = base EMA converted to BF16 (bit-exact)" \
  $H compare --dtype bf16 --skip-names-in "$W/t1_orig.safetensors" "$W/base/ema.safetensors" "$W/t1/model.safetensors"
check "completed file has every tensor once" eqn \
  "$("$CKPT" inspect --summary-only "$W/t1/model.safetensors" | jq -cS '[.tensors, .tensors_by_dtype]')" '[12,{"BF16":10,"I64":1,"U8":1}]'
check "metadata of the target kept" eqn "$("$CKPT" inspect --summary-only "$W/t1/model.safetensors" | jq -r '.files[0].metadata.format')" pt
check "no temporary files left" no_temps

# rerun: nothing to add or convert, nothing rewritten, nothing overwritten
before=$(stat -c %Y.%i "$W/t1/model.safetensors")
"$CKPT" complete --base "$W/base" "$W/t1" >"$W/out2.jsonl" 2>"$W/err2.txt"
check "rerun exits 0" eqn "$?" 0
check "rerun: changed false, all base files kept" eqn \
  "$(jq -c 'select(.kind=="done") | [.added,.converted,.copied,.kept,.changed]' "$W/out2.jsonl")" "[0,0,0,4,false]"
check "rerun leaves model.safetensors alone" eqn "$(stat -c %Y.%i "$W/t1/model.safetensors")" "$before"

# --dtype keep: only add, no conversion; --dtype f32: everything float to F32
"$CKPT" complete --base "$W/base" --dtype keep "$W/t3" >"$W/out3.jsonl" 2>&1
check "complete --dtype keep exits 0" eqn "$?" 0
check "keep: no converted records" eqn "$(jq -s '[.[]|select(.kind=="converted")]|length' "$W/out3.jsonl")" 0
check "keep: values and dtypes unchanged" $H compare "$W/t1_orig.safetensors" "$W/t3/model.safetensors"
check "keep: added tensors in their base dtype" eqn \
  "$("$CKPT" inspect "$W/t3/model.safetensors" | jq -r 'select(.name=="vit_model.vision_model.post_layernorm.bias") | .dtype')" F16
check "keep: added values bit-equal" \
  $H compare --skip-names-in "$W/t1_orig.safetensors" "$W/base/ema.safetensors" "$W/t3/model.safetensors"
mkdir -p "$W/t4" && cp "$W/t1_orig.safetensors" "$W/t4/model.safetensors"
"$CKPT" complete --base "$W/base" --dtype f32 "$W/t4" >"$W/out4.jsonl" 2>&1
check "complete --dtype f32: base F16/BF16/F64 become F32" $H compare --dtype f32 \
  --skip-names-in "$W/t1_orig.safetensors" "$W/base/ema.safetensors" "$W/t4/model.safetensors"

# --- convert, in place
cp "$W/base/ema.safetensors" "$W/c.safetensors"
chmod 640 "$W/c.safetensors"
"$CKPT" convert --dtype f16 "$W/c.safetensors" >"$W/c.jsonl" 2>&1
check "convert exits 0" eqn "$?" 0
check "convert: one record per converted tensor + done" eqn \
  "$(jq -r .kind "$W/c.jsonl" | sort | uniq -c | tr -s ' ' | tr '\n' ';')" " 7 converted; 1 done;"
check "convert f16: values bit-exact" $H compare --dtype f16 "$W/base/ema.safetensors" "$W/c.safetensors"
check "convert keeps the file mode" eqn "$(stat -c %a "$W/c.safetensors")" 640
"$CKPT" convert --dtype F16 --quiet "$W/c.safetensors" >"$W/c2.jsonl" 2>&1
check "convert again: unchanged, quiet" eqn "$(jq -c '[.kind,.converted,.changed]' "$W/c2.jsonl")" '["done",0,false]'
"$CKPT" convert --dtype bf16 "$W/c.safetensors" "$W/nonexistent.safetensors" >"$W/c3.jsonl" 2>"$W/c3.err"
check "convert: a missing file gives exit 1 and one line, others still converted" \
  eqn "$?:$(wc -l <"$W/c3.err"):$(jq -s 'map(select(.kind=="done"))|length' "$W/c3.jsonl")" "1:1:1"

# the three read paths give the same bytes: O_DIRECT (default where supported), buffered pread,
# and copying out of the mapping
for mode in USBX_CKPT_NO_DIRECT USBX_CKPT_MMAP; do
  cp "$W/base/ema.safetensors" "$W/m_$mode.safetensors"
  env $mode=1 "$CKPT" convert --dtype bf16 --quiet "$W/m_$mode.safetensors" >/dev/null 2>&1
  check "convert with $mode=1: values bit-exact" $H compare --dtype bf16 "$W/base/ema.safetensors" "$W/m_$mode.safetensors"
done
cp "$W/base/ema.safetensors" "$W/m_direct.safetensors"
"$CKPT" convert --dtype bf16 --quiet "$W/m_direct.safetensors" >/dev/null
check "the read paths give identical files" cmp -s "$W/m_direct.safetensors" "$W/m_USBX_CKPT_MMAP.safetensors"

cp "$W/base/ema.safetensors" "$W/prog.safetensors"
"$CKPT" convert --dtype bf16 --quiet --progress "$W/prog.safetensors" >/dev/null 2>"$W/prog.err"
check "--progress: a final progress line on stderr" grep -q '^usbx-ckpt: 0/0 (.*MiB read\|^usbx-ckpt: [0-9]* MiB read' "$W/prog.err"

# --- inspect
"$CKPT" inspect "$W/t1" >"$W/i.jsonl"
check "inspect folder: tensor records of both safetensors files" eqn "$(jq -s 'map(select(.kind=="tensor"))|length' "$W/i.jsonl")" 13
check "inspect folder summary" eqn "$(jq -c 'select(.kind=="summary") | [.tensors, (.files|length), .bytes_by_dtype.F32]' "$W/i.jsonl")" "[13,2,576]"
check "inspect tensor record" eqn \
  "$("$CKPT" inspect "$W/base/ema.safetensors" | jq -c 'select(.name=="connector.fc1.weight") | [.dtype,.shape,.params,.bytes]')" '["F32",[16,8],128,512]'
check "inspect summary parameters" eqn "$("$CKPT" inspect --summary-only "$W/base/ema.safetensors" | jq -c '[.tensors,.parameters,.bytes]')" \
  "[11,2014,7773]"

# --- usage errors exit 2, runtime errors exit 1, always one message line (+ hint)
"$CKPT" >/dev/null 2>&1; check "no command: exit 2" eqn "$?" 2
"$CKPT" frobnicate >/dev/null 2>&1; check "unknown command: exit 2" eqn "$?" 2
"$CKPT" convert "$W/c.safetensors" >/dev/null 2>&1; check "convert without --dtype: exit 2" eqn "$?" 2
"$CKPT" convert --dtype i8 "$W/c.safetensors" >/dev/null 2>&1; check "convert --dtype i8: exit 2" eqn "$?" 2
"$CKPT" complete "$W/t1" >/dev/null 2>&1; check "complete without --base: exit 2" eqn "$?" 2
"$CKPT" complete --base "$W/base" --dtype u8 "$W/t1" >/dev/null 2>&1; check "complete --dtype u8: exit 2" eqn "$?" 2
"$CKPT" inspect >/dev/null 2>&1; check "inspect without paths: exit 2" eqn "$?" 2
"$CKPT" complete --base "$W/t2" "$W/t1" >/dev/null 2>"$W/e.txt"
check "base without ema.safetensors: exit 1, one line" eqn "$?:$(wc -l <"$W/e.txt")" "1:1"
"$CKPT" complete --base "$W/base" "$W/base" >/dev/null 2>"$W/e.txt"
check "target = base refused" eqn "$?:$(grep -c 'is the base folder' "$W/e.txt")" "1:1"
"$CKPT" --help | grep -q complete; check "--help lists the commands" eqn "$?" 0
"$CKPT" convert --help | grep -q -- '--dtype'; check "convert --help" eqn "$?" 0
"$CKPT" --version | grep -q '^usbx-ckpt '; check "--version" eqn "$?" 0

# --- an interrupted convert leaves the old file or the new one, and no temporary file
$H gen --seed 5 "$W/big.safetensors" a:F32:4096x4096 b:F32:4096x4096 c:F32:4096x4096 >/dev/null
"$CKPT" convert --dtype bf16 "$W/big.safetensors" >/dev/null 2>&1 &
pid=$!
sleep 0.05
kill -TERM $pid 2>/dev/null
wait $pid 2>/dev/null
dts=$("$CKPT" inspect --summary-only "$W/big.safetensors" | jq -c '.tensors_by_dtype')
check "interrupted convert: file whole, all F32 or all BF16 ($dts)" \
  bash -c "[ '$dts' = '{\"F32\":3}' ] || [ '$dts' = '{\"BF16\":3}' ]"
check "interrupted convert: no temporary file" no_temps

echo "t_ckpt: $fails failed"
[ $fails -eq 0 ]
