#!/usr/bin/env bash
# bench_judge.sh — usbx-judge throughput against the project's test judge server answering
# instantly (tests/helper_judge_server): images judged per second, two requests per image.
#   benchmark/bench_judge.sh [N] [SIZE] [JOBS...]      defaults: 4000 images, 64x64 PNG, jobs 1 8 32 64
# Prints one JSON record per run; judge_cpu_ms_per_image is usbx-judge's own CPU time (user+sys),
# the server's is not counted (with large images the single-threaded test server is the limit).  Build first: make bin/usbx-judge build/tests/helper_judge_server
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-4000}
SIZE=${2:-64}
shift $(( $# > 2 ? 2 : $# ))
JOBS=${*:-1 8 32 64}
JUDGE=${USBX_BIN:-$ROOT/bin}/usbx-judge
SRV=${USBX_JUDGE_SERVER:-$ROOT/build/tests/helper_judge_server}
[ -x "$JUDGE" ] && [ -x "$SRV" ] || { echo "bench_judge: build bin/usbx-judge and build/tests/helper_judge_server first" >&2; exit 1; }
T=$(mktemp -d /tmp/usbx-bench-judge.XXXXXX)
SPID=
trap '[ -n "$SPID" ] && kill $SPID 2>/dev/null; rm -rf "$T"' EXIT
cd "$T"
awk -v n="$N" 'BEGIN{for(i=1;i<=n;i++){img="out/test/normal/bench/" i ".png";
  printf "{\"id\":\"%d\",\"task\":\"math\",\"prompt\":\"p\",\"answer\":\"%d cups\",\"mode\":\"normal\",\"image\":\"%s\"}\n", i, i, img > "gen.jsonl";
  print img > "pngs.txt";
  printf "{\"image\":\"%s\",\"task\":\"math\",\"answer\":\"%d cups\",\"reply1\":\"Caption: %d cups\",\"caption\":\"Caption: %d cups\",\"reply2\":\"Score: YES\"}\n", img, i, i, i > "script.jsonl"}}'
"$SRV" --write-pngs pngs.txt "$SIZE" "$SIZE"
png_bytes=$(du -cb out/test/normal/bench/*.png | tail -1 | cut -f1)
"$JUDGE" --print-prompts > prompts.json
for j in $JOBS; do
  rm -f port stats.json
  "$SRV" --script script.jsonl --prompts prompts.json --model M --stats stats.json --port-file port --idle-exit 30 --max-time 600 >/dev/null &
  SPID=$!
  for _ in $(seq 200); do [ -s port ] && break; sleep 0.05; done
  s=$(date +%s.%N)
  /usr/bin/time -o cpu.txt -f "%U %S" "$JUDGE" --model M --url "http://127.0.0.1:$(cat port)/v1" --jobs "$j" < gen.jsonl > out.jsonl 2> err.txt
  rc=$?
  cpu=$(awk '{print $1+$2}' cpu.txt)
  e=$(date +%s.%N)
  kill -TERM $SPID; wait $SPID 2>/dev/null; SPID=
  yes=$(grep -c '"verdict":"YES"' out.jsonl)
  awk -v n="$N" -v j="$j" -v a="$s" -v b="$e" -v rc="$rc" -v yes="$yes" -v sz="$SIZE" -v pb="$png_bytes" -v cores="$(nproc)" -v cpu="$cpu" \
    'BEGIN{t=b-a; printf "{\"bench\":\"judge\",\"images\":%d,\"png\":\"%dx%d\",\"png_kb_avg\":%.1f,\"jobs\":%d,\"seconds\":%.3f,\"images_per_s\":%.0f,\"requests_per_s\":%.0f,\"yes\":%d,\"rc\":%d,\"cores\":%d,\"judge_cpu_ms_per_image\":%.3f}\n", n, sz, sz, pb/n/1024, j, t, n/t, 2*n/t, yes, rc, cores, 1000*cpu/n}'
done
