"""When the views of a bench/startup.py run were complete, from the cells'
own logs rather than the bench's event streams: each cell's "cell joined",
"cell is back", "cell failed" and "cell left" lines give its view of the
others over time. Prints when all views were complete at once (the mesh
converged) and, per cell, when its view last became complete.

At 200 cells on a 2-core box the bench's one poller opens its 200 event
streams late (it shares the saturated cores), and its convergence figure is
an upper bound set by that; this one is not.

    python3 bench/views.py /tmp/aios-diag-XXXX"""
import datetime as dt
import glob
import re
import sys


def ts(s):
    return dt.datetime.strptime(s[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def main(d):
    starts, events = {}, []
    for f in glob.glob(f"{d}/c*.log"):
        c = f.rsplit("/", 1)[1][:-4]
        for line in open(f, errors="replace"):
            if "cell started" in line:
                starts[c] = ts(line)
            m = re.search(r"(cell joined|cell is back|cell failed|cell left) peer=(\S+)", line)
            if m:
                events.append((ts(line), c, m.group(1), m.group(2)))
    if not starts:
        sys.exit(f"no cell logs in {d}")
    events.sort()
    t0, n = min(starts.values()), len(starts)
    alive = {c: set() for c in starts}
    complete, last, first_all = set(), {}, None
    for t, c, kind, peer in events:
        if c not in alive:
            continue
        if kind in ("cell joined", "cell is back"):
            alive[c].add(peer)
        else:
            alive[c].discard(peer)
        if len(alive[c]) == n - 1:
            if c not in complete:
                last[c] = t - t0
            complete.add(c)
        else:
            complete.discard(c)
        if len(complete) == n and first_all is None:
            first_all = t - t0
    done = sorted(last.get(c, float("inf")) for c in starts)
    print(f"{n} cells; every view complete at once first at "
          f"{'never' if first_all is None else f'{first_all:.2f} s'} after the first start")
    print(f"each view last became complete: median {done[n // 2]:.2f} s, "
          f"p90 {done[9 * n // 10]:.2f} s, max {done[-1]:.2f} s "
          "(a run's teardown fails cells: read these with the run's end in mind)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
