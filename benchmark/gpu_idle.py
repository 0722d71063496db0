"""Where the GPU waits, from a timeline of benchmark/cupti_trace.c (kernels, copies, memsets and the
host's CUDA API calls on one clock).

Usage: python3 benchmark/gpu_idle.py TRACE [--skip N] [--marker NAME] [--top K]

The window runs from the end of the N-th (default 2) group of `--marker` kernels (default k_adamw:
the optimizer closes each training step) to the end of the last group, so warm-up steps are left
out; with no marker the second half of the trace is used.  Prints per step the wall time, the time
some kernel or copy ran (all streams together) and the idle rest; the idle time by cause; the
(previous -> next) kernel pairs with the most idle time between them; the longest gaps; and the
busiest kernels by their real (concurrent, unserialised) durations.

A gap is "host late" when the call that launched the next operation began after the GPU had gone
idle: the GPU ran out of work.  Its host time splits into the API calls the launching thread made
inside the gap (synchronisations show up by name) and the time between them (host code)."""
import argparse, bisect, collections, shutil, subprocess

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--skip", type=int, default=2)
ap.add_argument("--marker", default="k_adamw")
ap.add_argument("--top", type=int, default=15)
a = ap.parse_args()

gpu, api = [], []
with open(a.trace) as f:
    for line in f:
        p = line.rstrip("\n").split(" ", 5)
        if len(p) < 5:
            continue
        t, s, e, x, corr = p[0], int(p[1]), int(p[2]), int(p[3]), int(p[4])
        name = p[5] if len(p) > 5 else ""
        if t in "KCZ":
            gpu.append((s, e, x, corr, name if t == "K" else ("[copy %s B]" % name if t == "C" else "[memset %s B]" % name)))
        elif t in "RD":
            api.append((s, e, x, corr, name))
if not gpu:
    raise SystemExit("no GPU activity in " + a.trace)
gpu.sort()
api.sort()

# readable kernel names: demangled, arguments and templates cut
mangled = sorted({g[4] for g in gpu if g[4].startswith("_Z")})
plain = {}
if mangled and shutil.which("c++filt"):
    out = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True).stdout.split("\n")
    plain = dict(zip(mangled, out))


def short(n):
    n = plain.get(n, n)
    if n.startswith("["):
        return n
    n = n.replace("(anonymous namespace)::", "").split("(")[0]
    depth, s = 0, ""
    for ch in n:
        depth += ch == "<"
        if depth == 0:
            s += ch
        depth -= ch == ">"
    return s.replace("void ", "")[-60:]


# step ends: the last operation of each group of marker kernels
ends, last = [], None
for i, g in enumerate(gpu):
    if a.marker and a.marker in short(g[4]):
        last = g[1] if last is None else max(last, g[1])
    elif last is not None:
        ends.append(last)
        last = None
if last is not None:
    ends.append(last)
if len(ends) > a.skip + 1:
    t0, t1, bounds = ends[a.skip - 1] if a.skip > 0 else gpu[0][0], ends[-1], ends[a.skip - 1:] if a.skip > 0 else [gpu[0][0]] + ends
else:
    t0, t1 = (gpu[0][0] + gpu[-1][1]) // 2, max(g[1] for g in gpu)
    bounds = [t0, t1]
    print("(no %d groups of %s: the second half of the trace)" % (a.skip + 2, a.marker))

launch = {c: (s, e, th, n) for s, e, th, c, n in api if c}   # correlation -> the call that launched it
by_thread = collections.defaultdict(list)
for s, e, th, c, n in api:
    by_thread[th].append((s, e, n))

busy_by = collections.Counter()
count_by = collections.Counter()
gaps = []   # (length, start, prev, next op)
end, prev = t0, None
busy = 0
for g in gpu:
    s, e = g[0], g[1]
    if e <= t0 or s >= t1:
        if s < t0:
            prev = g
        continue
    busy_by[short(g[4])] += (min(e, t1) - max(s, t0))
    count_by[short(g[4])] += 1
    s = max(s, t0)
    if s > end:
        gaps.append((s - end, end, prev, g))
    if e > end:
        busy += min(e, t1) - max(s, end)
        end = min(e, t1)
    if prev is None or g[1] >= prev[1]:
        prev = g
span = t1 - t0
nsteps = len(bounds) - 1
print("window: %d steps, %.2f ms; GPU busy %.2f ms (%.1f %%), idle %.2f ms in %d gaps (%.2f ms per step)" % (
    nsteps, span / 1e6, busy / 1e6, 100.0 * busy / span, (span - busy) / 1e6, len(gaps), (span - busy) / 1e6 / max(nsteps, 1)))
for k in range(nsteps):
    a0, a1 = bounds[k], bounds[k + 1]
    idle = sum(min(st + ln, a1) - max(st, a0) for ln, st, _, _ in gaps if st < a1 and st + ln > a0)
    print("  step %d: %.2f ms, idle %.2f ms" % (a.skip + k + 1, (a1 - a0) / 1e6, idle / 1e6))

# causes
cause = collections.Counter()
host_calls = collections.Counter()
detail = []
for ln, st, p, g in gaps:
    l = launch.get(g[3])
    if l and l[0] > st:   # launched after the GPU went idle
        calls = [c for c in by_thread[l[2]] if c[1] > st and c[0] < l[0]]
        in_calls = 0
        for c in calls:
            d = min(c[1], l[0]) - max(c[0], st)
            in_calls += d
            host_calls[c[2]] += d
        cause["host late: in API calls"] += min(in_calls, ln)
        cause["host late: host code"] += max(ln - in_calls, 0)
        why = ", ".join("%s %.0fus" % (n, (min(e, l[0]) - max(s, st)) / 1e3) for s, e, n in calls if min(e, l[0]) - max(s, st) > 20e3)
    else:
        cause["launched in time (launch latency, stream waits)"] += ln
        why = "launched %.0f us before" % ((st - l[0]) / 1e3) if l else "no launch record"
    detail.append((ln, st, p, g, why))
idle_total = sum(g[0] for g in gaps)
print("\nidle by cause (ms per step):")
for k, v in cause.most_common():
    print("  %7.3f  %s" % (v / 1e6 / max(nsteps, 1), k))
if host_calls:
    print("  API calls inside those gaps (ms per step): " + ", ".join("%s %.3f" % (k, v / 1e6 / max(nsteps, 1)) for k, v in host_calls.most_common(6)))

pairs = collections.Counter()
npairs = collections.Counter()
for ln, st, p, g, _ in detail:
    key = "%s -> %s" % (short(p[4]) if p else "-", short(g[4]))
    pairs[key] += ln
    npairs[key] += 1
print("\nidle between kernel pairs (ms per step, gaps per step):")
for k, v in pairs.most_common(a.top):
    print("  %7.3f %6.1f  %s" % (v / 1e6 / max(nsteps, 1), npairs[k] / max(nsteps, 1), k))
print("\nlongest gaps:")
for ln, st, p, g, why in sorted(detail, key=lambda d: -d[0])[:a.top]:
    print("  %8.1f us at +%.2f ms: %s -> %s (%s)" % (ln / 1e3, (st - t0) / 1e6, short(p[4]) if p else "-", short(g[4]), why))
print("\nkernels by time in the window (ms per step, launches per step; concurrent streams overlap):")
for k, v in busy_by.most_common(a.top + 10):
    print("  %7.3f %6.1f  %s" % (v / 1e6 / max(nsteps, 1), count_by[k] / max(nsteps, 1), k))
