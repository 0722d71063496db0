#!/usr/bin/env bash
# Runs every unit test binary (build/tests/test_*) and every shell test (tests/t_*.sh).
# Exit code 0 = pass, 77 = skipped (reason on stderr), anything else = fail.
set -u
cd "$(dirname "$0")/.."
BUILD=${USBX_BUILD:-build}
export USBX_SHARED=${USBX_SHARED:-$(cd .. && pwd)/shared}
export USBX_BIN=${USBX_BIN:-$PWD/bin} USBX_BUILD=$BUILD
export PATH=$USBX_BIN:$PATH
pass=0 fail=0 skip=0 failed=()
only=${TESTS:-}
for t in "$BUILD"/tests/test_* tests/t_*.sh; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .sh)
  if [ -n "$only" ] && ! [[ $name == *$only* ]]; then continue; fi
  log=$(mktemp)
  start=$EPOCHREALTIME
  if [[ $t == *.sh ]]; then timeout 900 bash "$t" >"$log" 2>&1; rc=$?; else timeout 900 "$t" >"$log" 2>&1; rc=$?; fi
  secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
  case $rc in
    0) pass=$((pass+1)); echo "ok      $name (${secs}s)";;
    77) skip=$((skip+1)); echo "skipped $name: $(grep -m1 '^skipped' "$log" | sed 's/^skipped: //')";;
    *) fail=$((fail+1)); failed+=("$name"); echo "FAIL    $name (exit $rc, ${secs}s)"; sed 's/^/    /' "$log" | tail -40;;
  esac
  rm -f "$log"
done
echo
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
