#!/usr/bin/env bash
# pipelines/eval.sh end to end on a few tasks: ground-truth renders judged offline score 100 %;
# with a stand-in generator (correct think images, one wrong normal image per file) the summary
# shows per-file, per-mode accuracy; stages are skipped on rerun; Markdown, CSV and PNG exist.
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

# the judge: usbx-judge's sandbox backend once it is wired in, else the test helper that calls
# the same library function (usbx_sandbox_judge)
usbx-synth math --level 1 --n 1 --seed 1 --render "$T/probe" > "$T/probe.jsonl"
if usbx-judge --backend sandbox < "$T/probe.jsonl" > /dev/null 2>&1; then
  export JUDGE="usbx-judge --backend sandbox"
else
  export JUDGE="$BUILD/tests/helper_sandbox_judge"
fi
echo "judge: $JUDGE"

usbx-synth math --level 2 --n 4 --seed 3 > "$T/math2.jsonl"
usbx-synth mapping --level 3 --n 2 --seed 3 > "$T/mapping3.jsonl"
usbx-synth knowledge --characters 2 --seed 3 > "$T/knowledge.jsonl"
files=("$T/math2.jsonl" "$T/mapping3.jsonl" "$T/knowledge.jsonl")

bash pipelines/eval.sh --ground-truth -o "$T/gt" "${files[@]}" > "$T/gt.out" 2> "$T/gt.err"; expect $? 0 "eval.sh --ground-truth"
expect "$(tail -n +2 "$T/gt/summary.csv" | cut -d, -f7 | sort -u)" 1 "ground truth scores 100 % everywhere"
expect "$(tail -n +2 "$T/gt/summary.csv" | cut -d, -f1,5 | tr '\n' ' ')" '"knowledge",10 "mapping3",2 "math2",4 ' "items per file (mapping counts groups)"
grep -q 'Ground truth' "$T/gt/summary.md"; expect $? 0 "summary says plainly that these are ground-truth renders"
expect "$(grep -c '| 100 % |' "$T/gt/summary.md")" 3 "Markdown table"
if command -v gnuplot >/dev/null; then
  expect "$(head -c 4 "$T/gt/summary.png" | od -An -c | tr -d ' ')" '211PNG' "bar chart PNG"
fi
bash pipelines/eval.sh --ground-truth -o "$T/gt" "${files[@]}" > /dev/null 2> "$T/gt.err2"
expect "$(grep -c 'exists, skipped' "$T/gt.err2")" 6 "rerun skips finished stages"

# a stand-in for usbx-gen: think images are correct renders; in normal mode the first math task
# of a file gets one object too many
cat > "$T/fakegen" <<'EOS'
#!/usr/bin/env bash
set -eo pipefail
while [ $# -gt 0 ]; do case $1 in --out) out=$2; shift 2;; --modes) modes=$2; shift 2;; --stem) stem=$2; shift 2;; *) shift;; esac; done
in=$(mktemp); cat > "$in"
for m in ${modes//,/ }; do
  d=$out/test/$m/$stem
  if [ "$m" = think ]; then cp "$in" "$in.$m"
  else jq -c 'if .task == "math" and (.id | endswith("-1")) then .true_answer = .answer | .answer = "\(.count + 1) \(.object)." else . end' "$in" > "$in.$m"; fi
  usbx-synth render --render "$d" < "$in.$m" | jq -c --arg m "$m" '(if has("true_answer") then .answer = .true_answer | del(.true_answer) else . end) + {mode: $m}'
done
rm -f "$in" "$in".*
EOS
chmod +x "$T/fakegen"
GEN="$T/fakegen" bash pipelines/eval.sh --model "$T/none" -o "$T/run" --title "stand-in generator" "${files[@]}" > "$T/run.out" 2> "$T/run.err"
expect $? 0 "eval.sh with a generator"
acc() { awk -F, -v f="\"$1\"" -v m="\"$2\"" '$1 == f && $2 == m {print $7}' "$T/run/summary.csv"; }
expect "$(acc math2 think)" 1 "math think: 100 %"
expect "$(acc math2 normal)" 0.75 "math normal: 3 of 4"
expect "$(acc mapping3 normal)" 1 "mapping normal"
expect "$(acc knowledge think)" 1 "knowledge think"
expect "$(jq -r 'select(.eval_file == "math2" and .mode == "normal" and .verdict == "NO") | .caption' "$T/run/all-verdicts.jsonl" | grep -c .)" 1 "the wrong image is judged NO"
grep -q 'stand-in generator' "$T/run/summary.md"; expect $? 0 "title"
grep -q 'Ground truth' "$T/run/summary.md"; expect $? 1 "a model run does not claim to be ground truth"

bash pipelines/eval.sh -o "$T/x" "${files[@]}" > /dev/null 2>&1; expect $? 1 "--model or --ground-truth is required"

[ $fails = 0 ] || { echo "$fails failed"; cat "$T/run.err" "$T/gt.err"; exit 1; }
echo "all passed"
