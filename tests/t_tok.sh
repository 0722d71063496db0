#!/usr/bin/env bash
# usbx-tok end to end: encode/decode records, pass-through, options, errors, the three PATH forms.
# The small tokenizer in tests/data runs everywhere; the Qwen checks need ../shared (skipped without).
set -u
cd "$(dirname "$0")/.."
BIN=${USBX_BIN:-$PWD/bin}
TOK=$BIN/usbx-tok
SHARED=${USBX_SHARED:-../shared}
command -v jq >/dev/null || { echo "skipped: jq not installed"; exit 77; }
[ -x "$TOK" ] || { echo "FAIL: $TOK not built"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fails=$((fails + 1)); }
check() { if [ "$2" == "$3" ]; then ok "$1"; else bad "$1: got [$2] want [$3]"; fi; }

TINY=tests/data/tok_tiny.json
# encode: ids added, other fields kept, key order kept
out=$(echo '{"id":"a","text":"hello world","n":3}' | "$TOK" --tokenizer $TINY)
check "encode tiny" "$out" '{"id":"a","text":"hello world","n":3,"ids":[259,264]}'
# decode back, with and without special tokens
out=$(echo '{"ids":[259,282,264]}' | "$TOK" --tokenizer $TINY --decode | jq -r .text)
check "decode keeps special" "$out" "hello[L] world"
out=$(echo '{"ids":[259,282,264]}' | "$TOK" --tokenizer $TINY --decode --skip-special | jq -r .text)
check "decode --skip-special" "$out" "hello world"
# --field / --ids-field
out=$(echo '{"prompt":"aaaaa"}' | "$TOK" --tokenizer $TINY --field prompt --ids-field tok -- | jq -c .tok)
check "--field/--ids-field" "$out" "[265,266]"
# round trip of several records, in order
printf '%s\n' '{"text":"the other"}' '{"text":""}' '{"text":"c\u0327a <sp><x>"}' > "$tmp/in.jsonl"
"$TOK" --tokenizer $TINY < "$tmp/in.jsonl" | jq -c 'del(.text)' | "$TOK" --tokenizer $TINY --decode > "$tmp/rt.jsonl"
check "round trip" "$(jq -r .text "$tmp/rt.jsonl" | tr '\n' '|')" "the other||ça <sp><x>|"
check "empty text -> []" "$("$TOK" --tokenizer $TINY < "$tmp/in.jsonl" | sed -n 2p | jq -c .ids)" "[]"
# --shard
check "--shard 1/2" "$("$TOK" --tokenizer $TINY --shard 1/2 < "$tmp/in.jsonl" | jq -r .text)" ""
check "--shard 0/2" "$("$TOK" --tokenizer $TINY --shard 0/2 < "$tmp/in.jsonl" | wc -l | tr -d ' ')" "2"
# input files as arguments
check "FILE arguments" "$("$TOK" --tokenizer $TINY "$tmp/in.jsonl" "$tmp/in.jsonl" | wc -l | tr -d ' ')" "6"
# errors: bad line stops with file:line, records before it are out; --keep-going skips and exits 1
printf '%s\n' '{"text":"a"}' '{"text":5}' '{"text":"b"}' > "$tmp/bad.jsonl"
"$TOK" --tokenizer $TINY "$tmp/bad.jsonl" > "$tmp/o" 2> "$tmp/e"; rc=$?
check "bad line exit" "$rc" "1"
check "bad line message" "$(cat "$tmp/e")" "usbx-tok: $tmp/bad.jsonl:2: field \"text\" is number, expected a string"
check "records before the bad line" "$(wc -l < "$tmp/o" | tr -d ' ')" "1"
"$TOK" --tokenizer $TINY --keep-going "$tmp/bad.jsonl" > "$tmp/o" 2> "$tmp/e"; rc=$?
check "--keep-going exit" "$rc" "1"
check "--keep-going output" "$(jq -c .ids "$tmp/o" | tr '\n' ' ')" "[97] [98] "
grep -q "1 bad line skipped" "$tmp/e" && ok "--keep-going count" || bad "--keep-going count: $(cat "$tmp/e")"
printf '{"ids":[1,"x"]}\n' | "$TOK" --tokenizer $TINY --decode > /dev/null 2> "$tmp/e"; rc=$?
check "decode non-id exit" "$rc" "1"
grep -q 'element 1 is not a token id' "$tmp/e" && ok "decode non-id message" || bad "decode non-id message: $(cat "$tmp/e")"
printf '{"ids":[100000]}\n' | "$TOK" --tokenizer $TINY --decode > /dev/null 2> "$tmp/e"
grep -q 'id 100000 (element 0) is not in the vocabulary' "$tmp/e" && ok "decode unknown id" || bad "decode unknown id: $(cat "$tmp/e")"
echo '{"text":"x"}' | "$TOK" --tokenizer $TINY --segment > /dev/null 2> "$tmp/e"; rc=$?
check "--segment without <|im_start|>" "$rc" "1"
"$TOK" < /dev/null > /dev/null 2>&1; check "no --tokenizer: usage error" "$?" "2"
"$TOK" --tokenizer "$tmp" < /dev/null 2> "$tmp/e"; rc=$?
check "folder without tokenizer exit" "$rc" "1"
grep -q "no tokenizer.json, nor vocab.json" "$tmp/e" && ok "folder without tokenizer message" || bad "message: $(cat "$tmp/e")"
"$TOK" --help | grep -q -- "--tokenizer PATH" && ok "--help" || bad "--help"
"$TOK" --version | grep -q '^usbx-tok ' && ok "--version" || bad "--version"

if [ -f "$SHARED/fixtures/tokenizer/tokenizer.json" ]; then
  FX=$SHARED/fixtures/tokenizer
  # every fixture line: our ids == the reference ids, and decoding gives the text back
  jq -c '{text, want: .ids}' "$FX/encodings.jsonl" | "$TOK" --tokenizer "$FX/tokenizer.json" > "$tmp/q.jsonl"
  check "fixture ids (tokenizer.json)" "$(jq -s '[.[] | select(.ids != .want)] | length' "$tmp/q.jsonl")" "0"
  check "fixture lines" "$(wc -l < "$tmp/q.jsonl" | tr -d ' ')" "64"
  jq -c '{orig: .text, ids}' "$tmp/q.jsonl" | "$TOK" --tokenizer "$FX" --decode > "$tmp/d.jsonl"
  check "fixture decode == text" "$(jq -s '[.[] | select(.text != .orig)] | length' "$tmp/d.jsonl")" "0"
  # slow-tokenizer folder built from the same vocabulary
  mkdir "$tmp/slow"
  jq '.model.vocab' "$FX/tokenizer.json" > "$tmp/slow/vocab.json"
  { echo "#version: 0.2"; jq -r '.model.merges[] | join(" ")' "$FX/tokenizer.json"; } > "$tmp/slow/merges.txt"
  cp "$FX/tokenizer_config.json" "$tmp/slow/"
  jq -c '{text, want: .ids}' "$FX/encodings.jsonl" | "$TOK" --tokenizer "$tmp/slow" > "$tmp/s.jsonl"
  check "fixture ids (vocab.json + merges.txt)" "$(jq -s '[.[] | select(.ids != .want)] | length' "$tmp/s.jsonl")" "0"
  # BAGEL segment
  out=$(echo '{"text":"Hello"}' | "$TOK" --tokenizer "$FX" --segment | jq -c .ids)
  check "--segment" "$out" "[151644,9707,151645]"
  out=$(echo '{"ids":[151644,9707,151645]}' | "$TOK" --tokenizer "$FX" --decode --skip-special | jq -r .text)
  check "decode segment --skip-special" "$out" "Hello"
else
  echo "skipped: ../shared missing (Qwen checks)"
  [ $fails -eq 0 ] && exit 77
fi
[ $fails -eq 0 ] || { echo "$fails failed"; exit 1; }
echo "all passed"
