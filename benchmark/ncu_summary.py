#!/usr/bin/env python3
"""Sums Nsight Compute's per-launch gpu__time_duration (ncu --csv --metrics gpu__time_duration.sum
--print-units base) per kernel name.  Usage: ncu_summary.py NCU_CSV [TOP]"""
import collections, csv, sys

rows = list(csv.reader(open(sys.argv[1])))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
i0 = next(i for i, r in enumerate(rows) if r and r[0] == "ID")   # the program's own output comes first
hdr = rows[i0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[i0 + 1:]:
    if len(r) != len(hdr): continue
    try: v = float(r[vi].replace(",", ""))
    except ValueError: continue
    tot[r[ki][:100]] += v; cnt[r[ki][:100]] += 1
allns = sum(tot.values())
print(f"total {allns / 1e6:.1f} ms over {sum(cnt.values())} launches")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{v / 1e6:8.2f} ms {100 * v / allns:5.1f} % {cnt[k]:5d}  {k}")
