"""When each cell learned of the others, from the logs of a bench/startup.py
run ("cell joined" lines): per time step from the first start, quantiles of
the cells each one knows; when a cell's record reached half and all of the
others; with a second argument T, the cells that knew least at T s.

    python3 bench/timeline.py /tmp/aios-diag-XXXX [T]"""
import glob, re, sys, datetime as dt
d = sys.argv[1]
def ts(s):
    return dt.datetime.strptime(s[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()
pid = {}; joins = {}; starts = {}
for f in glob.glob(f"{d}/c*.log"):
    c = f.rsplit("/", 1)[1][:-4]
    for line in open(f, errors="replace"):
        if "cell started" in line:
            starts[c] = ts(line); pid[re.search(r"peer_id=(\S+)", line).group(1)] = c
        m = re.search(r'cell joined peer=(\S+)', line)
        if m:
            joins.setdefault(c, {}).setdefault(m.group(1), ts(line))
t0 = min(starts.values()); n = len(starts)
joins = {c: {pid.get(p, p): t for p, t in j.items()} for c, j in joins.items()}
print(f"{n} cells, starts spread {max(starts.values())-t0:.2f}s")
for t in [0.5,1,1.5,2,3,4,5,6,7,8,10,12,14,16,18,20,25,30]:
    ks = sorted(sum(1 for v in joins.get(c, {}).values() if v - t0 <= t) for c in starts)
    print(f"t={t:5.1f}s known: min {ks[0]:3d} p10 {ks[n//10]:3d} med {ks[n//2]:3d} p90 {ks[9*n//10]:3d} max {ks[-1]:3d}")
reach = []
for x in starts:
    ts_ = sorted(j[x] - t0 for c, j in joins.items() if x in j)
    if len(ts_) < n - 1:
        reach.append((999, 999, x)); continue
    reach.append((ts_[len(ts_)//2], ts_[-1], x))
reach.sort()
for q in [0, 10, 50, 90, 99]:
    r = reach[min(len(reach)-1, q*len(reach)//100)]
    print(f"record spread p{q}: half at {r[0]:.2f}s all at {r[1]:.2f}s ({r[2]})")
if len(sys.argv) > 2:
    t = float(sys.argv[2])
    ks = sorted((sum(1 for v in joins.get(c, {}).values() if v - t0 <= t), c) for c in starts)
    print("lowest at", t, ks[:8])
