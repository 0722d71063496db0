"""GPU idle time of a run from `nsys stats --report cuda_gpu_trace --format csv` output: over the
second half of the trace (past the warm-up steps), the share of wall time in which no kernel or
copy ran, and the longest gaps.  Usage: python3 benchmark/gpu_idle.py trace.csv"""
import csv, sys

rows = []
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.count(",") > 3]
for r in csv.DictReader(lines):
    try:
        s, d = int(r["Start (ns)"]), int(r["Duration (ns)"])
    except (KeyError, ValueError):
        continue
    rows.append((s, s + d, r.get("Name", "")))
rows.sort()
if not rows:
    sys.exit("no GPU activity in " + sys.argv[1])
t0 = rows[0][0] + (rows[-1][1] - rows[0][0]) // 2
busy, gaps, end, prev = 0, [], t0, None
for s, e, name in rows:
    if e <= t0:
        continue
    s = max(s, t0)
    if s > end:
        gaps.append((s - end, prev, name))
    if e > end:
        busy += e - max(s, end)
        end = e
    prev = name
span = end - t0
print("second half: %.1f ms, GPU busy %.1f ms (%.1f %%), idle %.1f ms in %d gaps" % (span / 1e6, busy / 1e6, 100 * busy / span, (span - busy) / 1e6, len(gaps)))
for g, a, b in sorted(gaps, reverse=True)[:12]:
    print("  gap %.3f ms after %s, before %s" % (g / 1e6, a[:60], b[:60]))
