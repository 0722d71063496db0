#!/usr/bin/env python3
"""Summarise a per-block trace of device_attn_trace.sh: kernel span, block durations by active
tile count, the busiest SMs' timelines and the blocks still running in the last 10 %.
Usage: attn_trace.py TRACE_FILE [H]"""
import signal
import sys
from collections import defaultdict
signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # quiet under head
rows = [list(map(int, l.split())) for l in open(sys.argv[1])]
H = int(sys.argv[2]) if len(sys.argv) > 2 else 12
end = max(max(r[2], r[3]) for r in rows)
dur = [(max(r[2], r[3]) - r[1]) / 1e3 for r in rows]
print(f"{sys.argv[1]}: {len(rows)} blocks, span {end / 1e3:.1f} us, mean block {sum(dur) / len(dur):.1f} us, "
      f"sum of blocks / 132 SMs {sum(dur) / 132:.1f} us")
by_n = defaultdict(list)
for r, d in zip(rows, dur):
    by_n[r[5]].append(d)
print("active tiles: count, mean us, max us, us per tile")
for n in sorted(by_n):
    v = by_n[n]
    print(f"  {n:4d}: {len(v):4d} {sum(v) / len(v):8.1f} {max(v):8.1f} {sum(v) / len(v) / max(n, 1):6.2f}")
sm = defaultdict(float)
for r, d in zip(rows, dur):
    sm[r[4]] += d
busy = sorted(sm.values())
print(f"SM busy us: min {busy[0]:.1f}, median {busy[len(busy) // 2]:.1f}, max {busy[-1]:.1f}; SMs used {len(busy)}")
late = [(r[0], r[5], r[1] / 1e3, max(r[2], r[3]) / 1e3) for r in rows if max(r[2], r[3]) > 0.9 * end]
print(f"blocks ending in the last 10 % ({len(late)}): block(kb/h) tiles start-end us")
for b, n, s, e in sorted(late, key=lambda x: -x[3])[:16]:
    print(f"  {b} ({b // H}/{b % H}) {n} {s:.1f}-{e:.1f}")
starts = sorted(r[1] for r in rows)
print(f"last block start {starts[-1] / 1e3:.1f} us; idle after the last start: "
      f"{sum(max(0, end - max(r[2], r[3])) for r in rows if r[1] >= starts[-133]) / 1e3 / 132:.1f} us per SM (last wave)")
