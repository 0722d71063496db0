#!/usr/bin/env bash
# Nsight Compute on the flash training attention: per-kernel times of the micro-benchmark (flash
# only) and of one ~1.5B training step, then the detailed sections of one backward launch of each
# kernel at the trainer's shape.
set -uo pipefail
. benchmark/device_env.sh
device_results /tmp/dfn
BENCH_ONLY=train BENCH_TRAIN_KIND=3 BENCH_REPS=2 timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  -k regex:'k_fa|k_status|k_meta|k_attn_masked_D|convert' build/bench/bench_ops_cuda > "$R/ncu_bench.csv" 2> "$R/ncu_bench.err"; echo "ncu bench rc=$?"
python3 - "$R/ncu_bench.csv" <<'PY' | tee "$R/ncu_bench_summary.txt"
import csv, sys, collections
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))]
seq = [(r['Kernel Name'].split('(')[0].split('<')[0].split('::')[-1], r['Grid Size'], float(r['Metric Value'])) for r in rows if r['Metric Name'] == 'gpu__time_duration.sum']
agg = collections.OrderedDict()
for k, g, t in seq: agg.setdefault((k, g), []).append(t)
for (k, g), ts in agg.items(): print("%-28s grid %-16s n=%3d median %.3f ms" % (k, g, len(ts), sorted(ts)[len(ts)//2] / 1e6))
PY
b15_setup
timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base usbx-train $ARGS --steps 1 > "$R/ncu.csv" 2> "$R/ncu.err"
echo "ncu step rc=$?"
python3 benchmark/ncu_summary.py "$R/ncu.csv" 16 | tee "$R/ncu_summary.txt"
for k in k_fa_bwd_kv k_fa_bwd_q k_fa_fwd; do
  timeout 200 ncu --clock-control none -k regex:$k --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section LaunchStats \
    usbx-train $ARGS --steps 1 > "$R/ncu_$k.txt" 2>&1; echo "ncu $k rc=$?"
  grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Stall|Executed Ipc|Issue Slots Busy|Grid Size|Waves" "$R/ncu_$k.txt" | head -30
done
date -u
