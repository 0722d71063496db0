#!/usr/bin/env python3
"""Sums Nsight Compute's per-launch gpu__time_duration (ncu --csv --metrics gpu__time_duration.sum
--print-units base) per kernel name.  Usage: ncu_summary.py NCU_CSV [TOP] [--per KERNEL]
--per KERNEL: the launches between consecutive launches of KERNEL (a name prefix; one decoder layer
when KERNEL runs once per layer), averaged over those windows, per kernel name, grid and stream.
Windows of more than 60 launches (a pass boundary) are skipped.  NCU_CSV may be gzipped."""
import collections, csv, gzip, sys

args = sys.argv[1:]
per = None
if "--per" in args:
    i = args.index("--per"); per = args[i + 1]; del args[i:i + 2]
opener = gzip.open if args[0].endswith(".gz") else open
rows = list(csv.reader(opener(args[0], "rt")))
top = int(args[1]) if len(args) > 1 else 25
i0 = next(i for i, r in enumerate(rows) if r and r[0] == "ID")   # the program's own output comes first
hdr = rows[i0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value")
gi = hdr.index("Grid Size"); si = hdr.index("Stream")
launches = []
for r in rows[i0 + 1:]:
    if len(r) != len(hdr): continue
    try: v = float(r[vi].replace(",", ""))
    except ValueError: continue
    launches.append((r[ki][:100], v, r[gi], r[si]))
tot = collections.defaultdict(float); cnt = collections.Counter()
if per is None:
    for name, v, _, _ in launches:
        tot[name] += v; cnt[name] += 1
    allns = sum(tot.values())
    print(f"total {allns / 1e6:.1f} ms over {sum(cnt.values())} launches")
    for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{v / 1e6:8.2f} ms {100 * v / allns:5.1f} % {cnt[k]:5d}  {k}")
    sys.exit(0)
marks = [i for i, x in enumerate(launches) if x[0].startswith(per)]
nwin = 0
for a, b in zip(marks, marks[1:]):
    if b - a > 60: continue
    nwin += 1
    for name, v, grid, stream in launches[a + 1:b + 1]:
        key = f"{name[:70]} grid {grid} stream {stream}"
        tot[key] += v; cnt[key] += 1
if not nwin: sys.exit(f"no windows between launches of {per}")
allus = sum(tot.values()) / nwin / 1e3
print(f"{nwin} windows between launches of {per}: {allus:.1f} us of kernels per window")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{v / nwin / 1e3:9.1f} us {100 * v / nwin / 1e3 / allus:5.1f} % {cnt[k] / nwin:5.2f}/window  {k}")
