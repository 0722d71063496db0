#!/usr/bin/env bash
# stars-data.sh — STARS training data: tasks -> think-mode generation with K samples per task ->
# judge -> usbx-reject (accepted images become prompt+image training records).  Every stage
# writes JSONL under OUT and is skipped on rerun when its output exists (--overwrite redoes it).
#
#   pipelines/stars-data.sh --model CKPT [-o OUT] [-k K] [--per-prompt N] TASKS.jsonl...
#
# Options:
#   -o, --out DIR        output folder (default: stars-out)
#   --model DIR          checkpoint for usbx-gen
#   -k, --samples K      images per task (default 4)
#   --per-prompt N       at most N accepted images per task (default: no limit)
#   --modes LIST         generation modes (default: think; STARS accepts think-mode images)
#   --gen-args "ARGS"    extra arguments for usbx-gen
#   --judge-args "ARGS"  extra arguments for the judge command
#   --overwrite          redo every stage
# Environment: GEN (default usbx-gen), JUDGE (default "usbx-judge --backend sandbox"),
#   REJECT (default usbx-reject).
# Outputs: OUT/<stem>/{gen,verdicts,train,rejected}.jsonl, OUT/<stem>/reject-stats.json,
#   OUT/train.jsonl (all files' training records).
set -euo pipefail
die() { echo "stars-data.sh: $*" >&2; exit 1; }
out=stars-out model="" k=4 per="" modes=think gen_args="" judge_args="" overwrite=0
files=()
while [ $# -gt 0 ]; do
  case $1 in
    -o|--out) out=$2; shift 2;;
    --model) model=$2; shift 2;;
    -k|--samples) k=$2; shift 2;;
    --per-prompt) per=$2; shift 2;;
    --modes) modes=$2; shift 2;;
    --gen-args) gen_args=$2; shift 2;;
    --judge-args) judge_args=$2; shift 2;;
    --overwrite) overwrite=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0;;
    -*) die "unknown option '$1' (try --help)";;
    *) files+=("$1"); shift;;
  esac
done
[ ${#files[@]} -gt 0 ] || die "name at least one task file (try --help)"
[ -n "$model" ] || die "--model DIR is required"
GEN=${GEN:-usbx-gen}
JUDGE=${JUDGE:-usbx-judge --backend sandbox}
REJECT=${REJECT:-usbx-reject}
mkdir -p "$out"

stage() {
  local target=$1; shift
  if [ $overwrite = 0 ] && [ -s "$target" ]; then echo "stars-data.sh: $target exists, skipped" >&2; return 0; fi
  local tmp="$target.tmp.$$"
  if "$@" > "$tmp"; then mv -f "$tmp" "$target"; else rm -f "$tmp"; die "stage failed: $target"; fi
}

: > "$out/train.jsonl.tmp.$$"
for f in "${files[@]}"; do
  [ -r "$f" ] || die "$f: cannot read"
  stem=$(basename "$f" .jsonl)
  d=$out/$stem
  mkdir -p "$d"
  # shellcheck disable=SC2086
  stage "$d/gen.jsonl" bash -c "$GEN --model \"\$1\" --out \"\$2\" --modes \"\$3\" --samples \"\$4\" --stem \"\$5\" $gen_args < \"\$6\"" _ \
    "$model" "$d/gen" "$modes" "$k" "$stem" "$f"
  stage "$d/verdicts.jsonl" bash -c "$JUDGE $judge_args < \"\$1\"" _ "$d/gen.jsonl"
  reject_stage() {
    $REJECT --modes "$modes" ${per:+--per-prompt "$per"} --rejected "$d/rejected.jsonl" < "$d/verdicts.jsonl" 2> "$d/reject-stats.json"
  }
  stage "$d/train.jsonl" reject_stage
  cat "$d/train.jsonl" >> "$out/train.jsonl.tmp.$$"
  [ -s "$d/reject-stats.json" ] && jq -r --arg f "$stem" '"stars-data.sh: \($f): \(.accepted) of \(.verdicts) images accepted"' "$d/reject-stats.json" >&2 || true
done
mv -f "$out/train.jsonl.tmp.$$" "$out/train.jsonl"
echo "stars-data.sh: $(wc -l < "$out/train.jsonl") training records in $out/train.jsonl" >&2
