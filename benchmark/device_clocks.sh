#!/usr/bin/env bash
# Clocks, power and throttle reasons of the GPU under our workloads: nvidia-smi samples every 100 ms
# (SM clock, power draw and limit, temperature, utilisation, the active clock-event reasons) through
# an idle phase, then the phases named in PHASES (default "mlp gen"):
#   mlp      BENCH_ONLY=mlp bench_ops_cuda, short bursts (boost clocks)
#   mlp_sus  the same with BENCH_WARM_S=2: each case first runs 2 s (the clocks of sustained load)
#   gen      bench_gen at the 7B-MoT shape, 1024x1024 and 512x512, 50 steps, no think
#   attn     the inference attention of a 4098-token image block (default kernel), bursts, then
#            after 2 s of sustained load (attn_sus)
#   gemm_sus BENCH_ONLY=gemm with BENCH_WARM_S=2
#   torch_gen the PyTorch composition of the generation pass (torch_gen_baseline.py), 1024 and 512:
#            5 forwards after 2 (as in earlier calls), then 10 after 6 s of forwards (sustained)
#   torch_mm PyTorch's bf16 matmul of the down product's shape, 6 s in a loop: TFLOP/s of the first
#            0.2 s and of the last 2 s
#   train    usbx-train, the ~1.5B timing model, TRAIN_STEPS (default 12) steps of 8k tokens
#            (benchmark/mfu-1p5b.json); train32 the same with 32k tokens per step (--accum 4),
#            TRAIN32_STEPS (default 20) steps
# Prints the mean of each phase (benchmark/RESULTS.md reads them).  Bundle extracted in the repo
# root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dck
PHASES=${PHASES:-mlp gen}
case " $PHASES " in *" gen "*)
  timeout 200 usbx-ckpt init --config benchmark/shape-7b-mot.json --seed 1 "$W/b7" > /dev/null && cp .devdata/tokenizer.json "$W/b7/";;
esac
case " $PHASES " in *" train"*) b15_setup;; esac
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv,noheader,nounits -lms 100 > "$R/smi.csv" 2> "$R/smi.err" &
smi=$!
phase() { echo "$1 $(date +%s.%N)" >> "$R/phases.txt"; }
phase idle; sleep 3
for p in $PHASES; do
  case $p in
    mlp) phase mlp; BENCH_ONLY=mlp timeout 120 build/bench/bench_ops_cuda "$R/mlp.md" > /dev/null 2>&1;;
    mlp_sus) phase mlp_sus; BENCH_ONLY=mlp BENCH_WARM_S=2 timeout 200 build/bench/bench_ops_cuda "$R/mlp_sus.md" > /dev/null 2>&1;;
    gen) for sz in 1024x1024 512x512; do
           phase "gen_$sz"; timeout 150 build/bench/bench_gen --model "$W/b7" --device cuda --size $sz --reps 1 --think-tokens 0 | tee -a "$R/bench_gen.jsonl"
         done;;
    attn) phase attn; BENCH_ONLY=attn BENCH_ATTN_CASES=1 BENCH_VARIANT=5 timeout 60 build/bench/bench_ops_cuda "$R/attn.md" > /dev/null 2>&1
          phase attn_sus; BENCH_ONLY=attn BENCH_ATTN_CASES=1 BENCH_VARIANT=5 BENCH_WARM_S=3 timeout 60 build/bench/bench_ops_cuda "$R/attn_sus.md" > /dev/null 2>&1;;
    gemm_sus) phase gemm_sus; BENCH_ONLY=gemm BENCH_WARM_S=2 timeout 120 build/bench/bench_ops_cuda "$R/gemm_sus.md" > /dev/null 2>&1;;
    torch_gen) for s in 1024 512; do
           phase "torch_gen_$s"; timeout 120 python3 benchmark/torch_gen_baseline.py --size $s 2>&1 | tail -n 1 | tee -a "$R/torch_gen.jsonl"
           phase "torch_gen_sus_$s"; timeout 120 python3 benchmark/torch_gen_baseline.py --size $s --warm-s 6 --reps 10 2>&1 | tail -n 1 | tee -a "$R/torch_gen.jsonl"
         done;;
    torch_mm) phase torch_mm; timeout 60 python3 - <<'PY' 2>&1 | tee "$R/torch_mm.txt"
import time, torch
a = torch.randn(8192, 18944, device="cuda", dtype=torch.bfloat16); b = torch.randn(18944, 3584, device="cuda", dtype=torch.bfloat16)
fl = 2 * 8192 * 18944 * 3584; t0 = time.time(); marks = []
while time.time() - t0 < 6:
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record(); [a @ b for _ in range(10)]; e1.record(); torch.cuda.synchronize()
    marks.append((time.time() - t0, e0.elapsed_time(e1) / 10))
first = [ms for t, ms in marks if t < 0.2] or [marks[0][1]]; last = [ms for t, ms in marks if t > 4]
print("torch bf16 matmul 8192x18944 @ 18944x3584: first 0.2 s %.3f ms (%.0f TFLOP/s), last 2 s %.3f ms (%.0f TFLOP/s)" % (
    min(first), fl / min(first) / 1e9, sorted(last)[len(last) // 2], fl / sorted(last)[len(last) // 2] / 1e9))
PY
          ;;
    train32) phase train32; timeout 200 usbx-train $ARGS --accum 4 --steps "${TRAIN32_STEPS:-20}" > "$R/train32.jsonl" 2> "$R/train32.err"
           echo "usbx-train --accum 4 rc=$?"; train_summary "$R/train32.jsonl";;
    train) phase train; timeout 200 usbx-train $ARGS --steps "${TRAIN_STEPS:-12}" > "$R/train.jsonl" 2> "$R/train.err"; echo "usbx-train rc=$?"
           train_summary "$R/train.jsonl"
           python3 -c "
import json, sys; r = [json.loads(l) for l in open(sys.argv[1])]
for a, b in ((2, 12), (len(r) - 10, len(r))):
    s = r[a:b]; print('steps %d-%d: tokens/s %.0f, mfu %.4f' % (a + 1, b, sum(x['tokens_per_s'] for x in s) / len(s), sum(x['mfu'] for x in s) / len(s)))" "$R/train.jsonl";;
  esac
done
phase end; sleep 0.3
kill $smi 2> /dev/null; wait $smi 2> /dev/null
for f in "$R"/mlp*.md "$R"/attn*.md "$R"/gemm*.md; do [ -f "$f" ] && { echo "$f"; grep -E "^\| [0-9a-z]|^For scale" "$f" | grep -v "^| op"; }; done
python3 - "$R" <<'PY' | tee "$R/clocks.txt"
import sys, datetime
r = sys.argv[1]
ph = [(l.split()[0], float(l.split()[1])) for l in open(f"{r}/phases.txt")]
rows = []
for l in open(f"{r}/smi.csv"):
    f = [x.strip() for x in l.split(",")]
    try:
        t = datetime.datetime.strptime(f[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
        rows.append((t, float(f[1]), float(f[2]), float(f[3]), float(f[4]), float(f[5]), float(f[6]), f[7]))
    except (ValueError, IndexError): pass
print("phase (samples with utilisation > 0; busy = utilisation 100)   samples  sm_MHz mean/min  busy sm_MHz  mem_MHz  power_W mean/max, limit  busy power_W  temp_C  reasons (most common)")
for (name, a), (_, b) in zip(ph, ph[1:]):
    s = [x for x in rows if a <= x[0] < b and (x[6] > 0 or name == "idle")]
    if not s: print(name, "no samples"); continue
    busy = [x for x in s if x[6] >= 100] or s
    n = len(s); m = lambda v, i: sum(x[i] for x in v) / len(v)
    reasons = max(set(x[7] for x in s), key=lambda v: sum(1 for x in s if x[7] == v))
    print(f"{name:16s} {n:7d}  {m(s,1):6.0f}/{min(x[1] for x in s):5.0f}  {m(busy,1):6.0f} ({len(busy)})  {m(s,2):6.0f}  {m(s,3):6.0f}/{max(x[3] for x in s):4.0f}, {m(s,4):4.0f}  {m(busy,3):6.0f}  {m(s,5):5.1f}  {reasons}")
PY
