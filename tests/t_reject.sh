#!/usr/bin/env bash
# usbx-reject: which verdicts become training records, what they contain, --modes,
# --per-prompt, --rejected, the stats record, missing images, bad input.
set -u
BIN=${USBX_BIN:-bin}
R=$BIN/usbx-reject
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }
expect() { if [ "$1" = "$2" ]; then ok "$3"; else bad "$3 (got '$1', want '$2')"; fi; }

mkdir -p "$T/img"
for i in 1 2 3 4 5 6 7; do printf 'png' > "$T/img/$i.png"; done
v() {  # id task level mode verdict image [prompt]
  jq -cn --arg id "$1" --arg task "$2" --argjson level "$3" --arg mode "$4" --arg v "$5" --arg img "$6" --arg p "${7:-Draw as many cups as 1 + 1.}" \
    '{id: $id, task: $task, level: $level, prompt: $p, answer: "2 cups.", mode: $mode, image: $img,
      think: "Let me compute 1 + 1 = 2 first.", seed: 42, model: "ckpt/x", verdict: $v, score: (if $v == "YES" then 1 else 0 end),
      caption: "2 cups", judge: "sandbox", analysis: "..."}'
}
{
  v a math 1 think YES "$T/img/1.png"
  v a math 1 think YES "$T/img/2.png"
  v a math 1 think YES "$T/img/3.png"
  v a math 1 normal YES "$T/img/4.png"
  v b math 2 think NO "$T/img/5.png" "Draw as many forks as 3 - 1."
  v c mapping 1 think YES "$T/img/missing.png" "Rule 1: ..."
  v d mapping 1 think ERROR "$T/img/6.png" "Rule 1: ..."
  v e math 2 think IMAGE_NOT_FOUND "$T/img/nope.png" "Draw as many forks as 2 - 1."
  v f math 2 think YES "$T/img/7.png" "Draw as many forks as 2 - 1."
} > "$T/v.jsonl"

$R < "$T/v.jsonl" > "$T/out.jsonl" 2> "$T/stats"; expect $? 0 "default run"
expect "$(jq -r .image "$T/out.jsonl" | xargs -n1 basename | tr '\n' ' ')" "1.png 2.png 3.png 7.png " "think-mode YES with existing images only"
expect "$(jq -r 'has("think")' "$T/out.jsonl" | sort -u)" false "no think text in training records"
expect "$(jq -r .prompt "$T/out.jsonl" | head -1)" "Draw as many cups as 1 + 1." "prompt is the original task prompt"
expect "$(jq -r '[.id, .model, .seed, .verdict, .mode] | join(",")' "$T/out.jsonl" | head -1)" "a,ckpt/x,42,YES,think" "provenance kept"
expect "$(jq -r .accepted "$T/stats")" 4 "stats: accepted"
expect "$(jq -r .verdicts "$T/stats")" 9 "stats: verdicts"
expect "$(jq -r .image_not_found "$T/stats")" 1 "stats: a YES with a missing image"
expect "$(jq -r '.by_task.math | "\(.accepted)/\(.n)"' "$T/stats")" 4/6 "stats: accept rate per task (think-mode math)"
expect "$(jq -r '.by_level["2"].accepted' "$T/stats")" 1 "stats: per level"
expect "$(jq -r '.by_mode.think.n' "$T/stats")" 8 "stats: per mode"
expect "$(jq -r '.by_task_level_mode["mapping/1/think"].rate' "$T/stats")" 0 "stats: per task/level/mode"

$R --modes normal,think < "$T/v.jsonl" > "$T/out.jsonl" 2>/dev/null
expect "$(wc -l < "$T/out.jsonl")" 5 "--modes normal,think"
$R --modes normal < "$T/v.jsonl" 2>/dev/null | jq -r .image | xargs -n1 basename > "$T/n"
expect "$(cat "$T/n")" 4.png "--modes normal"

$R --per-prompt 2 --rejected "$T/rej.jsonl" < "$T/v.jsonl" > "$T/out.jsonl" 2>/dev/null; expect $? 0 "--per-prompt"
expect "$(jq -r .id "$T/out.jsonl" | tr '\n' ' ')" "a a f " "at most 2 accepted images per task"
expect "$(( $(wc -l < "$T/out.jsonl") + $(wc -l < "$T/rej.jsonl") ))" 9 "accepted + rejected = all"
expect "$(jq -r .reject_reason "$T/rej.jsonl" | sort | uniq -c | awk '{$1=$1; print}' | tr '\n' ';')" \
  "1 image not found;1 mode not accepted;1 per-prompt limit reached;3 verdict is not YES;" "rejected records carry their reason"

# never an image path that does not exist
$R --modes all < "$T/v.jsonl" 2>/dev/null | jq -r .image | while read -r f; do [ -e "$f" ] || echo "missing $f"; done > "$T/miss"
expect "$(cat "$T/miss")" "" "no emitted image is missing"

# bad input: file:line error, non-zero exit, nothing corrupt; --keep-going skips
{ head -2 "$T/v.jsonl"; echo '{not json'; echo '{"id":"z"}'; tail -1 "$T/v.jsonl"; } > "$T/bad.jsonl"
$R "$T/bad.jsonl" > "$T/out.jsonl" 2> "$T/err"; expect $? 1 "bad line: exit 1"
grep -q "^usbx-reject: $T/bad.jsonl:3: " "$T/err"; expect $? 0 "error names file and line"
$R --keep-going "$T/bad.jsonl" > "$T/out.jsonl" 2> "$T/err"; expect $? 0 "--keep-going"
expect "$(wc -l < "$T/out.jsonl")" 3 "--keep-going keeps the good lines"
expect "$(tail -1 "$T/err" | jq -r .bad_lines)" 2 "bad lines counted"
$R --per-prompt -1 < /dev/null >/dev/null 2>&1; expect $? 2 "bad option value"
$R --help | grep -q per-prompt; expect $? 0 "--help"

[ $fails = 0 ] || { echo "$fails failed"; exit 1; }
echo "all passed"
