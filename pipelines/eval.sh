#!/usr/bin/env bash
# eval.sh — tasks -> usbx-gen (normal and think) -> usbx-judge -> accuracy summary
# (Markdown table, CSV and a bar chart PNG).  Every stage writes JSONL under OUT and is skipped on
# a rerun when its output exists (use --overwrite to redo), so any stage can be rerun on its saved
# input.
#
#   pipelines/eval.sh --model CKPT [-o OUT] TASKS.jsonl...        generate, judge, summarise
#   pipelines/eval.sh --ground-truth [-o OUT] TASKS.jsonl...      judge each task's correct
#                                                                  sandbox render (no generation)
#
# Options:
#   -o, --out DIR        output folder (default: eval-out)
#   --model DIR          checkpoint for usbx-gen
#   --modes LIST         generation modes (default: normal,think)
#   --ground-truth       skip generation: each task's `image` (rendered by `usbx-synth render` when
#                        the record has none) is judged as if it were a generation (mode
#                        "ground-truth")
#   --gen-args "ARGS"    extra arguments for usbx-gen (e.g. "--size 256x256 --steps 20")
#   --judge-args "ARGS"  extra arguments for the judge command
#   --title TEXT         title of the summary
#   --overwrite          redo every stage
# Environment:
#   GEN    generation command (default: usbx-gen)
#   JUDGE  judge command reading generation records on stdin, writing verdicts on stdout
#          (default: "usbx-judge --backend sandbox"; e.g. JUDGE="usbx-judge --backend openai --url ...")
#   SYNTH  usbx-synth command (default: usbx-synth), used to render ground truth
#
# Outputs: OUT/<stem>/gen.jsonl, OUT/<stem>/verdicts.jsonl, OUT/summary.{md,csv,png}.
# Accuracy: per task file and mode, the share of YES verdicts; mapping files count A/B groups,
# correct only when both images are (as upstream scores them).
set -euo pipefail

die() { echo "eval.sh: $*" >&2; exit 1; }

out=eval-out model="" modes=normal,think gt=0 gen_args="" judge_args="" title="" overwrite=0
files=()
while [ $# -gt 0 ]; do
  case $1 in
    -o|--out) out=$2; shift 2;;
    --model) model=$2; shift 2;;
    --modes) modes=$2; shift 2;;
    --ground-truth) gt=1; shift;;
    --gen-args) gen_args=$2; shift 2;;
    --judge-args) judge_args=$2; shift 2;;
    --title) title=$2; shift 2;;
    --overwrite) overwrite=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0;;
    --) shift; files+=("$@"); break;;
    -*) die "unknown option '$1' (try --help)";;
    *) files+=("$1"); shift;;
  esac
done
[ ${#files[@]} -gt 0 ] || die "name at least one task file (try --help)"
[ $gt = 1 ] || [ -n "$model" ] || die "--model DIR is required (or --ground-truth)"
command -v jq >/dev/null || die "jq is required (make deps)"
GEN=${GEN:-usbx-gen}
JUDGE=${JUDGE:-usbx-judge --backend sandbox}
SYNTH=${SYNTH:-usbx-synth}
mkdir -p "$out"

# run "$@" writing to $target atomically, unless $target exists (and no --overwrite)
stage() {
  local target=$1; shift
  if [ $overwrite = 0 ] && [ -s "$target" ]; then echo "eval.sh: $target exists, skipped" >&2; return 0; fi
  local tmp="$target.tmp.$$"
  if "$@" > "$tmp"; then mv -f "$tmp" "$target"; else rm -f "$tmp"; die "stage failed: $target"; fi
}

# upstream records (Question/Answer, ID + Question_A/B) normalised as usbx-gen does
normalise() {   # stem
  jq -c --arg stem "$1" '
    (if ($stem | test("mapping")) then "mapping" elif ($stem | test("math")) then "math" else "knowledge" end) as $k |
    if has("prompt") then . else
      . + {prompt: (.Question // .Question_A // .Question_B), answer: .Answer}
      + (if has("Question_A") or has("Question_B") then
           {id: "\(.ID)_\(if has("Question_A") then "A" else "B" end)", group: "\(.ID)"}
         else {id: "\(.id // .ID)"} end)
    end | if has("task") then . else . + {task: $k} end'
}

gen_stage() {   # file stem dir
  local f=$1 stem=$2 dir=$3
  if [ $gt = 1 ]; then
    # tasks that carry an image keep it; otherwise every task gets its correct render
    if jq -s -e 'all(has("image"))' "$f" >/dev/null; then
      normalise "$stem" < "$f" | jq -c '. + {mode: "ground-truth"}'
    else
      normalise "$stem" < "$f" | $SYNTH render --keep-going --render "$dir/gt" | jq -c '. + {mode: "ground-truth"}'
    fi
  else
    # shellcheck disable=SC2086
    $GEN --model "$model" --out "$dir/gen" --modes "$modes" --stem "$stem" $gen_args < "$f"
  fi
}

all=$out/all-verdicts.jsonl
: > "$all.tmp.$$"
for f in "${files[@]}"; do
  [ -r "$f" ] || die "$f: cannot read"
  stem=$(basename "$f" .jsonl)
  dir=$out/$stem
  mkdir -p "$dir"
  stage "$dir/gen.jsonl" gen_stage "$f" "$stem" "$dir"
  # shellcheck disable=SC2086
  stage "$dir/verdicts.jsonl" bash -c "$JUDGE $judge_args < \"\$1\"" _ "$dir/gen.jsonl"
  jq -c --arg stem "$stem" '. + {eval_file: $stem}' "$dir/verdicts.jsonl" >> "$all.tmp.$$"
done
mv -f "$all.tmp.$$" "$all"

# ---- summary: accuracy per task file and mode ----
rows=$out/summary.rows.jsonl
jq -s -c '
  def kind: (.task // (if has("Question_A") or has("Question_B") then "mapping" else "math" end));
  group_by([.eval_file, (.mode // "-")])[] |
  . as $g | ($g[0] | kind) as $task |
  (if $task == "mapping" then
     ([group_by(.group // .ID // .id)[] | (length == 2 and all(.score == 1))]) as $p
     | {n: ($p | length), correct: ($p | map(select(.)) | length), unit: "groups"}
   else
     {n: length, correct: (map(select(.score == 1)) | length), unit: "images"}
   end) as $s |
  {file: $g[0].eval_file, mode: ($g[0].mode // "-"), task: $task} + $s +
  {accuracy: (if $s.n > 0 then $s.correct / $s.n else 0 end)}
' "$all" > "$rows"

{
  echo "file,mode,task,unit,n,correct,accuracy"
  jq -r '[.file, .mode, .task, .unit, .n, .correct, (.accuracy * 10000 | round / 10000)] | @csv' "$rows"
} > "$out/summary.csv"

{
  echo "# ${title:-usbx evaluation}"
  echo
  if [ $gt = 1 ]; then
    echo "**Ground truth:** these are the sandbox's own correct renders judged offline, not a model's"
    echo "generations; they check the judge and the pipeline (a correct setup scores 100 %)."
    nf=$(jq -s '[.[] | select(.verdict == "IMAGE_NOT_FOUND")] | length' "$all")
    if [ "$nf" != 0 ]; then
      echo "$nf task(s) name an object the sandbox cannot draw (verdict IMAGE_NOT_FOUND, scored 0)."
    fi
  else
    echo "Model: \`$model\`; judge: \`$JUDGE\`."
  fi
  echo
  echo "| file | mode | task | n | correct | accuracy |"
  echo "| --- | --- | --- | ---: | ---: | ---: |"
  jq -r '"| \(.file) | \(.mode) | \(.task) | \(.n) \(.unit) | \(.correct) | \(.accuracy * 1000 | round / 10) % |"' "$rows"
} > "$out/summary.md"

# bar chart: one cluster per file, one bar per mode
if command -v gnuplot >/dev/null; then
  dat=$out/summary.dat
  mapfile -t modes_seen < <(jq -r .mode "$rows" | sort -u)
  {
    printf 'file'; for m in "${modes_seen[@]}"; do printf '\t%s' "$m"; done; printf '\n'
    for fstem in $(jq -r .file "$rows" | awk '!s[$0]++'); do
      printf '%s' "$fstem"
      for m in "${modes_seen[@]}"; do
        v=$(jq -r --arg f "$fstem" --arg m "$m" 'select(.file == $f and .mode == $m) | .accuracy * 100' "$rows")
        printf '\t%s' "${v:-0}"
      done
      printf '\n'
    done
  } > "$dat"
  ncol=$(( ${#modes_seen[@]} + 1 ))
  gnuplot <<EOF || echo "eval.sh: gnuplot failed; no chart" >&2
set terminal png size 900,500
set output '$out/summary.png'
set title "${title:-usbx evaluation}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "accuracy (%)"
set yrange [0:105]
set xtics rotate by -30
set key outside right top
set datafile separator "\t"
plot for [c=2:$ncol] '$dat' using c:xtic(1) title columnheader(c)
EOF
else
  echo "eval.sh: gnuplot not found (make deps); no chart" >&2
fi
cat "$out/summary.md"
