#!/usr/bin/env bash
# Short fuzzing inside `make test`: each libFuzzer target (tests/fuzz_*.c) for
# $USBX_FUZZ_SHORT_SECONDS (default 10) seconds.  Skipped (exit 77) where clang's libFuzzer is
# unavailable.  `make fuzz` runs the same targets longer.
set -u
cd "$(dirname "$0")/.."
CC=${FUZZ_CC:-clang}
command -v "$CC" >/dev/null || { echo "skipped: $CC not installed (make deps)"; exit 77; }
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe/p.c"
if ! "$CC" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
  echo "skipped: $CC cannot build libFuzzer targets (install libclang-rt-dev)"
  exit 77
fi
USBX_FUZZ_SECONDS=${USBX_FUZZ_SHORT_SECONDS:-10} bash tests/fuzz.sh
