#!/usr/bin/env bash
# Why the trainer's attention kernels take longer per call than bench_ops_cuda's in the same layout
# (2026-11-27: forward 0.465 against 0.387 ms, backward 1.41 against 1.23 ms): the bench's trainer
# layouts in packed and in expert order (BENCH_TRAIN_LAYOUT), in bursts and after 2 s of sustained
# load (BENCH_WARM_S), with nvidia-smi sampling SM clock and power every 100 ms; the 1.59 B trainer
# at 32k tokens under the same sampling; Nsight Compute on one forward and one backward launch of
# the trainer and of the bench, caches left as the previous kernels left them (--cache-control none,
# --clock-control none).  Bundle extracted in the repo root; results under $OUT.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dag
export PATH=$PATH:/usr/local/cuda/bin
b15_setup
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader,nounits -lms 100 > "$R/smi.csv" 2> /dev/null &
smi=$!
phase() { echo "$1 $(date +%s.%N)" >> "$R/phases.txt"; }
for w in 0 2; do
  phase "bench_warm$w"
  BENCH_WARM_S=$w BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=8204:20,8204:20:e,8192:0 timeout 120 build/bench/bench_ops_cuda "$R/attn_warm$w.md" > /dev/null 2>&1
  echo "bench warm $w s:"; grep "^| 8" "$R/attn_warm$w.md"
done
phase train32
timeout 200 usbx-train $ARGS --accum 4 --steps 10 > "$R/b15_32k.jsonl" 2> "$R/b15_32k.err"; echo "32k rc=$?: $(train_summary "$R/b15_32k.jsonl")"
phase end
kill $smi; wait $smi 2> /dev/null
python3 - "$R/smi.csv" "$R/phases.txt" <<'PY'
import sys, datetime
ph = [l.split() for l in open(sys.argv[2])]
ph = [(n, float(t)) for n, t in ph]
rows = []
for l in open(sys.argv[1]):
    f = [x.strip() for x in l.split(',')]
    try:
        t = datetime.datetime.strptime(f[0], '%Y/%m/%d %H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc).timestamp()
        rows.append((t, float(f[1]), float(f[2])))
    except Exception:
        pass
for i, (n, t0) in enumerate(ph[:-1]):
    t1 = ph[i + 1][1]
    r = [x for x in rows if t0 <= x[0] < t1 and x[2] > 150]
    if r:
        print('%-12s SM clock mean %.0f MHz (min %.0f), power mean %.0f W (max %.0f), %d busy samples' % (
            n, sum(x[1] for x in r) / len(r), min(x[1] for x in r), sum(x[2] for x in r) / len(r), max(x[2] for x in r), len(r)))
PY
# Nsight Compute: one launch of each in the trainer (the 30th: a later batch) and in the bench
for k in k_fa_fwd_tma k_fa_bwd_tma; do
  timeout 240 ncu --kernel-name regex:$k --launch-skip 30 --launch-count 1 --cache-control none --clock-control none \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --csv --page raw usbx-train $ARGS --accum 4 --steps 2 > "$R/ncu_train_$k.csv" 2> "$R/ncu_train_$k.err"
  BENCH_ONLY=train BENCH_TRAIN_LAYOUT_ONLY=1 BENCH_TRAIN_LAYOUT=8204:20:e timeout 240 ncu --kernel-name regex:$k --launch-skip 5 --launch-count 1 \
    --cache-control none --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --csv --page raw \
    build/bench/bench_ops_cuda > "$R/ncu_bench_$k.csv" 2> "$R/ncu_bench_$k.err"
  for v in train bench; do
    python3 - "$R/ncu_${v}_$k.csv" "$v $k" <<'PY'
import csv, sys
rows = list(csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')))
if len(rows) < 3: print(sys.argv[2], 'no ncu rows'); sys.exit()
h, u, r = rows[0], rows[1], rows[2]
want = ['gpu__time_duration.sum', 'sm__cycles_elapsed.avg.per_second', 'dram__bytes_read.sum', 'dram__bytes_write.sum', 'lts__t_sector_hit_rate.pct',
        'sm__throughput.avg.pct_of_peak_sustained_elapsed', 'gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed', 'launch__grid_size']
print(sys.argv[2] + ': ' + ', '.join('%s %s %s' % (w, r[h.index(w)], u[h.index(w)]) for w in want if w in h))
PY
  done
done
date -u
