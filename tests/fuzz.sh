#!/usr/bin/env bash
# Builds every libFuzzer target tests/fuzz_*.c with clang -fsanitize=fuzzer,address,undefined
# into $USBX_BUILD/fuzz/ (default build/fuzz) and runs each for $USBX_FUZZ_SECONDS (default 60).
# The corpus grows in build/fuzz/corpus_<target>/ across runs; crashes are saved as
# build/fuzz/crash-<target>-* and fail the script.  `make fuzz` calls this.
set -u
cd "$(dirname "$0")/.."
SECS=${USBX_FUZZ_SECONDS:-60}
BUILD=${USBX_BUILD:-build}
OUT=$BUILD/fuzz
CC=${FUZZ_CC:-clang}
command -v "$CC" >/dev/null || { echo "fuzz: $CC not found (make deps)" >&2; exit 77; }
mkdir -p "$OUT"
FLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Icommon -Ikernels -Itests"
LIBSRC="common/safetensors.c common/tensor.c common/util.c common/jsonl.c"
LIBS="-ljq -lm -lpthread"
status=0
# libjq 1.6 leaks the offending token on some parse errors (e.g. two strings without a ':' —
# value() returns "Expected separator between values" without freeing it; fixed in jq 1.7).
# Those allocations are made inside jv_parser_next; suppress only them.  Leaks in our own code
# are caught by the unit tests under `make asan`, which run without suppressions.
printf 'leak:jv_parser_next\n' >"$OUT/lsan.supp"
export LSAN_OPTIONS="suppressions=$(cd "$OUT" && pwd)/lsan.supp:print_suppressions=0:fast_unwind_on_malloc=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

seed_safetensors() {   # valid small files, the malformed corpus, and a dictionary
  local d=$1
  mkdir -p "$d"
  local h=$BUILD/tests/helper_st
  if [ -x "$h" ]; then
    $h gen --meta format=pt "$d/valid1.safetensors" a:F32:2x3 b:BF16:3 c:I64: >/dev/null
    $h gen "$d/valid2.safetensors" x.y:F16:0x4 z:U8:5 w:F64:1x1x1x2 >/dev/null
    $h corpus "$d/bad" >/dev/null && mv "$d"/bad/*.safetensors "$d/" && rm -rf "$d/bad"
    find "$d" -size +16k -delete
  fi
  cat >"$OUT/safetensors.dict" <<'DICT'
"\"dtype\""
"\"shape\""
"\"data_offsets\""
"\"__metadata__\""
"\"F32\""
"\"BF16\""
"\"F16\""
"\"I64\""
"\"U8\""
"\"BOOL\""
"\"F8_E4M3\""
"9007199254740992"
"18446744073709551615"
"\\u0000"
DICT
}

seed_jsonl() {
  local d=$1
  mkdir -p "$d"
  printf '{"id":"a","prompt":"x","n":1}\n\n{"b":[1,2,{"c":null}]}\n' >"$d/ok.jsonl"
  printf '{"id":"\\u00e9\\ud83d\\ude00"}\r\n{"x":1e400}\n{"trunc":' >"$d/edge.jsonl"
  printf '[1]\n"s"\n{bad}\n\xff\xfe\n{"a":1}' >"$d/bad.jsonl"
  cat >"$OUT/jsonl.dict" <<'DICT'
"{"
"}"
"\"id\""
"\\u"
"\\ud800"
"null"
"true"
"1e999"
"\x0a"
"\x0d\x0a"
DICT
}

for src in tests/fuzz_*.c; do
  name=$(basename "$src" .c)
  target=${name#fuzz_}
  bin=$OUT/$name
  # Rebuild when the target or the library sources it uses changed.
  if [ ! -x "$bin" ] || [ -n "$(find "$src" $LIBSRC common/*.h -newer "$bin" 2>/dev/null | head -1)" ]; then
    echo "fuzz: building $bin"
    $CC $FLAGS "$src" $LIBSRC $LIBS -o "$bin" || { echo "fuzz: build of $name failed" >&2; status=1; continue; }
  fi
  seeds=$OUT/seeds_$target
  rm -rf "$seeds"
  case $target in
    safetensors) seed_safetensors "$seeds";;
    jsonl) seed_jsonl "$seeds";;
    *) mkdir -p "$seeds";;
  esac
  dict=$OUT/$target.dict
  corpus=$OUT/corpus_$target
  mkdir -p "$corpus"
  echo "fuzz: running $name for ${SECS}s"
  log=$OUT/$name.log
  dictarg=()
  [ -f "$dict" ] && dictarg=(-dict="$dict")
  "$bin" -max_total_time="$SECS" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${dictarg[@]}" -artifact_prefix="$OUT/crash-$target-" \
    "$corpus" "$seeds" >"$log" 2>&1
  rc=$?
  stats=$(awk '/^stat::number_of_executed_units/{r=$2} /^stat::average_exec_per_sec/{s=$2} /^stat::new_units_added/{n=$2}
               END{printf "%s runs (%s/s), %s new units,", r, s, n}' "$log")
  if [ $rc -ne 0 ]; then
    echo "fuzz: $name FAILED (exit $rc); see $log" >&2
    grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -5 >&2
    status=1
  else
    echo "fuzz: $name ok: $stats corpus $(ls "$corpus" | wc -l) files"
  fi
done
exit $status
