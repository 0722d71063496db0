#!/usr/bin/env bash
# usbx-gen end to end on a small random checkpoint (usbx-ckpt init) with the real Qwen tokenizer:
# upstream math_1 (first lines) and mapping1 files unchanged, images at the upstream paths,
# valid records, think text in think mode, reruns skip, shards split the work.
set -euo pipefail
S=${USBX_SHARED:-../shared}
[ -f "$S/fixtures/tokenizer/tokenizer.json" ] || { echo "skipped: ../shared is missing (needs the tokenizer fixture)"; exit 77; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
usbx-ckpt init --config tests/data/tiny-qwen.json --seed 3 "$T/ck" >/dev/null
cp "$S/fixtures/tokenizer/tokenizer.json" "$T/ck/"
head -n 3 "$S/upstream/benchmark/test_reasoning/math_1.jsonl" > "$T/math_1.jsonl"
head -n 4 "$S/upstream/benchmark/test_reasoning/mapping1.jsonl" > "$T/mapping1.jsonl"
G="usbx-gen --model $T/ck --out $T/out --size 64x48 --steps 4 --max-think-tokens 12 --device cpu"
$G "$T/math_1.jsonl" "$T/mapping1.jsonl" > "$T/gen.jsonl"
fail() { echo "FAIL: $*"; exit 1; }
n=$(wc -l < "$T/gen.jsonl"); [ "$n" = 14 ] || fail "expected 14 records (7 tasks x 2 modes), got $n"
for m in normal think; do
  for id in 1 2 3; do [ -f "$T/out/test/$m/math_1/$id.png" ] || fail "missing $m/math_1/$id.png"; done
  for id in 1_A 1_B 2_A 2_B; do [ -f "$T/out/test/$m/mapping1/$id.png" ] || fail "missing $m/mapping1/$id.png"; done
done
# records: task kind from the file name, mapping groups, think text only in think mode, image size
jq -e -s 'map(select(.image | test("/math_1/"))) | all(.task == "math" and .answer != null)' "$T/gen.jsonl" >/dev/null || fail "math records"
jq -e -s 'map(select(.task == "mapping")) | length == 8 and all(.group == (.id | split("_")[0]))' "$T/gen.jsonl" >/dev/null || fail "mapping groups"
jq -e -s 'all(if .mode == "think" then (.think | type) == "string" and (.think | length) > 0 else has("think") | not end)' "$T/gen.jsonl" >/dev/null || fail "think text"
jq -e -s 'all(.width == 64 and .height == 48 and .steps == 4 and .Question != null or .Question_A != null or .Question_B != null)' "$T/gen.jsonl" >/dev/null || fail "fields"
python3 - "$T/out/test/normal/math_1/1.png" <<'PY' 2>/dev/null || file "$T/out/test/normal/math_1/1.png" | grep -q "64 x 48" || fail "png size"
import sys, struct
d = open(sys.argv[1], 'rb').read(24)
assert d[:8] == b'\x89PNG\r\n\x1a\n' and struct.unpack('>II', d[16:24]) == (64, 48)
PY
# deterministic: same seed and id -> same image; a rerun skips existing images but still emits records
cp "$T/out/test/normal/math_1/2.png" "$T/ref.png"
$G "$T/math_1.jsonl" > "$T/again.jsonl"
[ "$(jq -s 'map(select(.skipped == true)) | length' "$T/again.jsonl")" = 6 ] || fail "rerun did not skip"
$G --overwrite --modes normal "$T/math_1.jsonl" > /dev/null
cmp -s "$T/ref.png" "$T/out/test/normal/math_1/2.png" || fail "regenerated image differs (noise not derived from seed and id)"
# shards: 0/2 and 1/2 together cover the tasks once
$G --out "$T/sh" --modes normal --shard 0/2 "$T/math_1.jsonl" > "$T/s0.jsonl"
$G --out "$T/sh" --modes normal --shard 1/2 "$T/math_1.jsonl" > "$T/s1.jsonl"
[ "$(cat "$T/s0.jsonl" "$T/s1.jsonl" | jq -r .id | sort | tr '\n' ' ')" = "1 2 3 " ] || fail "shards"
# samples: ids get -s<k>
$G --out "$T/smp" --modes normal --samples 2 "$T/math_1.jsonl" | jq -r .id | tr '\n' ' ' | grep -q "^1-s0 1-s1 2-s0" || fail "samples ids"
# --batch: tasks of both modes sampled together give the images and records of one-by-one sampling
$G --out "$T/b1" "$T/math_1.jsonl" "$T/mapping1.jsonl" | jq -c 'del(.gen_ms, .image)' > "$T/b1.jsonl"
$G --out "$T/b4" --batch 4 "$T/math_1.jsonl" "$T/mapping1.jsonl" > "$T/b4raw.jsonl"
jq -e -s 'map(.batch) | . == [4,4,4,4,4,4,4,4,4,4,4,4,2,2]' "$T/b4raw.jsonl" >/dev/null || fail "batch sizes: $(jq -c -s 'map(.batch)' "$T/b4raw.jsonl")"
jq -c 'del(.gen_ms, .image, .batch)' "$T/b4raw.jsonl" | cmp -s - "$T/b1.jsonl" || fail "batched records differ"
python3 - "$T/b1/test" "$T/b4/test" <<'PY' || fail "batched images differ from one-by-one images"
import sys, os, zlib, struct
def pixels(p):
    d = open(p, 'rb').read(); i = 8; idat = b''; w = h = 0
    while i < len(d):
        n, t = struct.unpack('>I4s', d[i:i+8]); c = d[i+8:i+8+n]; i += 12 + n
        if t == b'IHDR': w, h = struct.unpack('>II', c[:8])
        if t == b'IDAT': idat += c
    raw = zlib.decompress(idat); s = w * 3; out = bytearray(); prev = bytearray(s)
    for y in range(h):
        f = raw[y*(s+1)]; line = bytearray(raw[y*(s+1)+1:(y+1)*(s+1)])
        for x in range(s):
            a = line[x-3] if x >= 3 else 0; b = prev[x]; c = prev[x-3] if x >= 3 else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line; prev = line
    return out
n = 0
for root, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        a = pixels(os.path.join(root, f)); b = pixels(os.path.join(sys.argv[2], os.path.relpath(root, sys.argv[1]), f))
        worst = max(abs(x - y) for x, y in zip(a, b))
        assert worst <= 1, (root, f, worst)
        n += 1
assert n == 14, n
PY
# bad input: one-line error naming file and line, non-zero exit, nothing half-written
printf '{"id":"x","prompt":"a"}\n{not json\n' > "$T/bad.jsonl"
if $G --out "$T/bad" "$T/bad.jsonl" > /dev/null 2> "$T/err"; then fail "bad input accepted"; fi
grep -q "bad.jsonl:2:" "$T/err" || fail "error does not name file:line: $(cat "$T/err")"
[ -z "$(find "$T/bad" -name '.*tmp*' 2>/dev/null)" ] || fail "temporary files left behind"
echo "t_gen: ok"
