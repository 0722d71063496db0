#!/usr/bin/env bash
# usbx-synth CLI: determinism, split disjointness, check exit codes and records, rendering,
# scenes, knowledge files; `check` on the upstream benchmark files (reported, counts asserted).
set -u
BIN=${USBX_BIN:-bin}
BUILD=${USBX_BUILD:-build}
S=$BIN/usbx-synth
J=$BUILD/tests/helper_sandbox_judge
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }
expect() { if [ "$1" = "$2" ]; then ok "$3"; else bad "$3 (got '$1', want '$2')"; fi; }

$S --help >/dev/null; expect $? 0 "--help exits 0"
$S --version | grep -q '^usbx-synth '; expect $? 0 "--version"
$S math --level 4 >/dev/null 2>"$T/err"; expect $? 2 "bad --level is a usage error"
grep -q '^usbx-synth: ' "$T/err"; expect $? 0 "error message has the tool prefix"
$S frobnicate >/dev/null 2>&1; expect $? 2 "unknown command"
$S math --bogus 1 >/dev/null 2>&1; expect $? 2 "unknown option"

for kind in math mapping; do
  for l in 1 2 3; do
    $S $kind --level $l --n 40 --seed 5 > "$T/a.jsonl" || bad "$kind $l"
    $S $kind --level $l --n 40 --seed 5 > "$T/b.jsonl"
    $S $kind --level $l --n 40 --seed 6 > "$T/c.jsonl"
    cmp -s "$T/a.jsonl" "$T/b.jsonl"; expect $? 0 "$kind level $l: same seed, same bytes"
    cmp -s "$T/a.jsonl" "$T/c.jsonl"; expect $? 1 "$kind level $l: another seed, other tasks"
    want=40; [ $kind = mapping ] && want=80
    expect "$(wc -l < "$T/a.jsonl")" $want "$kind level $l: $want records"
    expect "$(jq -r .id "$T/a.jsonl" | sort -u | wc -l)" $want "$kind level $l: unique ids"
    $S check "$T/a.jsonl" > "$T/chk" 2>/dev/null; expect $? 0 "$kind level $l: check passes"
    expect "$(wc -l < "$T/chk")" 0 "$kind level $l: no problem records"
    # split: test excludes train
    $S $kind --level $l --n 40 --seed 7 --exclude "$T/a.jsonl" > "$T/test.jsonl"
    shared=$(jq -r .prompt "$T/a.jsonl" "$T/test.jsonl" | sort | uniq -d | wc -l)
    expect "$shared" 0 "$kind level $l: train and test share no prompt"
  done
done

# check finds an injected error, names the id and the right answer, exits 1
$S math --level 2 --n 10 --seed 1 > "$T/m.jsonl"
jq -c 'if .id == "math2-4" then .answer = "9 \(.object)s." else . end' "$T/m.jsonl" > "$T/m_bad.jsonl"
$S check "$T/m_bad.jsonl" > "$T/chk" 2>/dev/null; expect $? 1 "check exits 1 on a wrong answer"
expect "$(jq -r .id "$T/chk")" "math2-4" "check names the wrong item"
expect "$(jq -r .problem "$T/chk")" "wrong" "problem kind"
want=$(jq -r 'select(.id == "math2-4") | .answer | rtrimstr(".")' "$T/m.jsonl")
expect "$(jq -r .expected "$T/chk")" "$want" "expected answer"
$S mapping --level 2 --n 5 --seed 1 | jq -c 'if .id == "mapping2-2_B" then .answer = "zebra" else . end' > "$T/p_bad.jsonl"
$S check "$T/p_bad.jsonl" > "$T/chk" 2>/dev/null; expect $? 1 "check exits 1 on a wrong mapping answer"
expect "$(jq -r .id "$T/chk")" "mapping2-2_B" "check names the wrong mapping item"
printf '{"id":"x","task":"math","prompt":"Draw as many cups as 7 / 2.","answer":"3 cups."}\nnot json\n' > "$T/u.jsonl"
$S check "$T/u.jsonl" > "$T/chk" 2>/dev/null; expect $? 1 "undefined and unparseable lines"
expect "$(jq -r .problem "$T/chk" | tr '\n' ' ')" "undefined unparseable " "problem kinds"
$S check /nonexistent.jsonl >/dev/null 2>&1; expect $? 1 "missing file"

# rendering: every task gets its correct image, which the offline judge accepts
$S math --level 3 --n 6 --seed 2 --render "$T/img" --size 96 > "$T/r.jsonl"; expect $? 0 "render math"
$S mapping --level 1 --n 3 --seed 2 --render "$T/img" >> "$T/r.jsonl"
$S knowledge --characters 2 --seed 2 --render "$T/img" --train "$T/train.jsonl" --profiles "$T/prof.jsonl" >> "$T/r.jsonl"
n=$(wc -l < "$T/r.jsonl")
expect "$(jq -r .image "$T/r.jsonl" | while read -r f; do [ -s "$f" ] && head -c 8 "$f" | od -An -c | grep -q P && echo y; done | wc -l)" "$n" "every record has an existing PNG"
if [ -x "$J" ]; then
  expect "$($J < "$T/r.jsonl" | jq -r .verdict | sort | uniq -c | awk '{print $2":"$1}')" "YES:$n" "ground truth judged YES"
fi
expect "$(wc -l < "$T/train.jsonl")" 80 "knowledge: 40 conversations per character"
expect "$(jq -r '.conversations | length' "$T/train.jsonl" | sort -u)" 2 "conversations are human/gpt pairs"
expect "$(wc -l < "$T/prof.jsonl")" 2 "profiles"
# knowledge answers checked against the characters' conversations (or profiles)
$S knowledge --characters 6 --seed 9 --train "$T/k6train.jsonl" --profiles "$T/k6prof.jsonl" > "$T/k6.jsonl"
$S check --knowledge "$T/k6train.jsonl" "$T/k6.jsonl" > "$T/chk" 2>/dev/null; expect $? 0 "knowledge tasks agree with their conversations"
$S check --knowledge "$T/k6prof.jsonl" "$T/k6.jsonl" > "$T/chk" 2>/dev/null; expect $? 0 "knowledge tasks agree with their profiles"
$S check "$T/k6.jsonl" > "$T/chk" 2>"$T/err"; expect $? 0 "knowledge without --knowledge is not checked"
grep -q "not checked" "$T/err"; expect $? 0 "... and says so"
jq -c 'if .kind == "fruit" and (.id | contains("-fruit")) then .answer = "kiwis" else . end' "$T/k6.jsonl" | head -2 > "$T/k6bad.jsonl"
jq -c 'select(.kind == "inverse")' "$T/k6.jsonl" | head -1 | jq -c '.answer = "An elderly Caucasian man with white hair."' >> "$T/k6bad.jsonl"
$S check --knowledge "$T/k6train.jsonl" "$T/k6bad.jsonl" > "$T/chk" 2>/dev/null; expect $? 1 "a wrong knowledge answer is found"
fruit_ok=$(jq -r 'select(.kind == "fruit") | .answer' "$T/k6.jsonl" | head -1)
expect "$(jq -r .problem "$T/chk" | grep -c wrong)" \
  "$([ "$fruit_ok" = kiwis ] && echo 1 || echo 2)" "wrong fruit and wrong inverse portrait reported"

# rerun keeps existing images unless --overwrite
touch -d '2000-01-01' "$T/img/math3-1.png"
$S math --level 3 --n 6 --seed 2 --render "$T/img" --size 96 > /dev/null
expect "$(date -r "$T/img/math3-1.png" +%Y)" 2000 "existing images are kept"
$S math --level 3 --n 6 --seed 2 --render "$T/img" --size 96 --overwrite > /dev/null
[ "$(date -r "$T/img/math3-1.png" +%Y)" != 2000 ]; expect $? 0 "--overwrite re-renders"
# caption-only scenes for text-to-image training
$S scenes --n 12 --seed 1 --render "$T/sc" --size 64 > "$T/sc.jsonl"; expect $? 0 "scenes"
expect "$(jq -r '.prompt | test("^[1-5] [a-z ]+$")' "$T/sc.jsonl" | sort -u)" true "scene prompts are captions"
if [ -x "$J" ]; then
  expect "$(jq -c '. + {task: "math"}' "$T/sc.jsonl" | $J | jq -r .verdict | sort -u)" YES "scenes are readable"
fi
# render subcommand: upstream-format records
printf '{"Question":"Generate as many cups as the result of 8 / 4.","Answer":"2 cups.","id":"1"}\n{"ID":"7","Question_A":"Rule 1: ...","Answer":"Chairs"}\n' \
  | $S render --render "$T/up" > "$T/up.jsonl"; expect $? 0 "render upstream-format records"
expect "$(jq -r .image "$T/up.jsonl" | xargs -n1 basename | tr '\n' ' ')" "1.png 7_A.png " "upstream image names"

# the upstream benchmark files
if [ -n "${USBX_SHARED:-}" ] && [ -d "$USBX_SHARED/upstream/benchmark/test_reasoning" ]; then
  U=$USBX_SHARED/upstream/benchmark/test_reasoning
  for spec in math_1:0 math_2:13 math_3:25 mapping1:0 mapping2:7 mapping3:16; do
    f=${spec%%:*} want=${spec##*:}
    $S check "$U/$f.jsonl" > "$T/chk" 2>"$T/err"; rc=$?
    expect "$(wc -l < "$T/chk")" "$want" "upstream $f: $want problem records"
    expect $rc $([ "$want" = 0 ] && echo 0 || echo 1) "upstream $f: exit status"
    echo "  $(cat "$T/err")"
    jq -r '"    \(.id): \(.problem): \(.reason)"' "$T/chk" | head -4
  done
  K=$(ls "$USBX_SHARED"/upstream/data/knowledge/*.jsonl | paste -sd,)
  $S check --knowledge "$K" "$USBX_SHARED"/upstream/benchmark/test_knowledge/*.jsonl > "$T/chk" 2>/dev/null
  expect $? 0 "upstream knowledge tests agree with the upstream conversations"
  $S check "$U/math_2.jsonl" 2>/dev/null | jq -r .id | tr '\n' ' ' > "$T/ids"
  expect "$(cat "$T/ids")" "3 9 10 44 51 55 64 65 69 70 75 80 91 " "math_2: the wrong items"
else
  echo "note: ../shared missing; upstream checks skipped"
fi

[ $fails = 0 ] || { echo "$fails failed"; exit 1; }
echo "all passed"
