#!/usr/bin/env bash
# pipelines/stars-data.sh end to end with a stand-in generator (K think-mode samples per task,
# every other one wrong) and the offline sandbox judge: only correct images become training
# records, --per-prompt caps them per task, stages are skipped on rerun.
set -u
BIN=${USBX_BIN:-bin}
BUILD=${USBX_BUILD:-build}
export PATH=$BIN:$PATH
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }
expect() { if [ "$1" = "$2" ]; then ok "$3"; else bad "$3 (got '$1', want '$2')"; fi; }

usbx-synth math --level 1 --n 1 --seed 1 --render "$T/probe" > "$T/probe.jsonl"
if usbx-judge --backend sandbox < "$T/probe.jsonl" > /dev/null 2>&1; then export JUDGE="usbx-judge --backend sandbox"
else export JUDGE="$BUILD/tests/helper_sandbox_judge"; fi

# stand-in for usbx-gen --samples K: sample k of task ID is "ID-s<k>"; odd samples show one
# object too many
cat > "$T/fakegen" <<'EOS'
#!/usr/bin/env bash
set -eo pipefail
k=1
while [ $# -gt 0 ]; do case $1 in --out) out=$2; shift 2;; --modes) modes=$2; shift 2;; --stem) stem=$2; shift 2;; --samples) k=$2; shift 2;; *) shift;; esac; done
in=$(mktemp); cat > "$in"
for s in $(seq 0 $((k - 1))); do
  jq -c --argjson s "$s" '.true_answer = .answer | .id = "\(.id)-s\($s)" | .sample = $s | .mode = "think" | .think = "reasoning..." |
        if $s % 2 == 1 then .answer = "\(.count + 1) \(.object)." else . end' "$in" \
    | usbx-synth render --render "$out/test/think/$stem" | jq -c '.answer = .true_answer | del(.true_answer)'
done
rm -f "$in"
EOS
chmod +x "$T/fakegen"
usbx-synth math --level 2 --n 3 --seed 4 > "$T/math2.jsonl"
usbx-synth math --level 3 --n 2 --seed 4 > "$T/math3.jsonl"

GEN="$T/fakegen" bash pipelines/stars-data.sh --model "$T/none" -o "$T/s" -k 4 "$T/math2.jsonl" "$T/math3.jsonl" 2> "$T/err"
expect $? 0 "stars-data.sh runs"
expect "$(wc -l < "$T/s/train.jsonl")" 10 "2 of 4 samples accepted for each of 5 tasks"
expect "$(jq -r .sample "$T/s/train.jsonl" | sort -u | tr '\n' ' ')" "0 2 " "only the correct samples"
expect "$(jq -r '.prompt' "$T/s/train.jsonl" | sort -u | wc -l)" 5 "prompts are the task prompts"
expect "$(jq -r 'has("think")' "$T/s/train.jsonl" | sort -u)" false "no think text"
expect "$(jq -r .image "$T/s/train.jsonl" | while read -r f; do [ -s "$f" ] || echo missing; done | wc -l)" 0 "images exist"
expect "$(wc -l < "$T/s/math2/rejected.jsonl")" 6 "rejected records kept"
expect "$(jq -r .accept_rate "$T/s/math2/reject-stats.json")" 0.5 "stats record"
GEN="$T/fakegen" bash pipelines/stars-data.sh --model "$T/none" -o "$T/s" -k 4 "$T/math2.jsonl" "$T/math3.jsonl" 2> "$T/err2"
expect "$(grep -c 'exists, skipped' "$T/err2")" 6 "rerun skips finished stages"
GEN="$T/fakegen" bash pipelines/stars-data.sh --model "$T/none" -o "$T/p" -k 4 --per-prompt 1 "$T/math2.jsonl" 2> /dev/null
expect "$(jq -r '.id | sub("-s[0-9]+$"; "")' "$T/p/train.jsonl" | sort | uniq -c | awk '{print $1}' | sort -u)" 1 "--per-prompt 1: one image per task"

[ $fails = 0 ] || { echo "$fails failed"; cat "$T/err"; exit 1; }
echo "all passed"
