#!/usr/bin/env bash
# Copies the shared libraries the built tools need (other than glibc and the CUDA driver) into
# .devlibs/, so binaries built here run on the GPU machine, which has CUDA but not libjq,
# OpenBLAS, PCRE2 or utf8proc.  Usage: bash benchmark/devlibs.sh  (then carry .devlibs and bin,
# build; on the device: export LD_LIBRARY_PATH=$PWD/.devlibs).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .devlibs
grep -qx '/.devlibs/' .git/info/exclude 2>/dev/null || echo '/.devlibs/' >> .git/info/exclude
for b in bin/usbx-* build/tests/test_* build/tests/helper_* build/bench/bench_*; do
  [ -x "$b" ] || continue
  ldd "$b" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  case $(basename "$lib") in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|ld-linux*|libcuda.so*|libstdc++.so*|libgcc_s.so*) continue;;
    libcublas*|libcudart*) continue;;   # the device has its own CUDA toolkit
  esac
  cp -L "$lib" .devlibs/
done
ls .devlibs | tr '\n' ' '; echo
du -sh .devlibs
