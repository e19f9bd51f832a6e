"""Start-up breakdown of N cells (issue 14): starts N cells at once in
bench/run.py's lab (namespaces, as root), waits until every view lists every
cell alive, then prints the CPU each process used and the counter totals of
four hosts' /metrics: what a cell did from its start to convergence.

    sudo python3 bench/startup.py N BINARY [CONVERGE_TIMEOUT_S]

The cells' logs stay in /tmp/aios-diag-*/cN.log; run with
RUST_LOG="info,aios_cell::network::node=debug" and give that directory to
bench/timeline.py for when each cell learned of the others."""
import os, subprocess, sys, time, types
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R

n = int(sys.argv[1]); binary = sys.argv[2]
sample = [1, 2, n // 2, n]
prefix, a, b = R.pick_prefix(set())
lab = R.Lab(n, prefix, a, b)
feed = R.Feed()
workdir = R.REAPER.tmpdir(f"aios-diag-{prefix}-", keep=True)
opts = types.SimpleNamespace(settle=0, converge_timeout=float(sys.argv[3]) if len(sys.argv) > 3 else max(150, n), window=1)

def scrape(i):
    r = subprocess.run(["ip", "netns", "exec", lab.ns(i), "curl", "-s", "-m", "10",
                        f"http://{lab.ip(i)}:9091/metrics"], capture_output=True, text=True)
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.rpartition(" ")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1000 / os.sysconf("SC_CLK_TCK")

try:
    lab.create()
    poller = R.Poller(lab, feed, os.path.join(workdir, "poller.log"))
    cells = R.CellSide(lab, feed, binary, workdir, poller)
    suite = R.Suite(cells, lab, feed, opts, [])
    ok = suite.convergence()
    print("converged", ok, suite.figs.get("conv").text if suite.figs.get("conv") else None, flush=True)
    cpus = sorted(cpu(cells.procs[i].pid) for i in suite.hosts)
    print(f"cpu ms per cell: median {cpus[len(cpus)//2]:.0f} max {cpus[-1]:.0f} sum {sum(cpus):.0f}")
    for i in sample:
        m = scrape(i)
        print(f"--- host {i}: cpu {cpu(cells.procs[i].pid):.0f} ms")
        d = [(v, k) for k, v in m.items() if ("total" in k or "_count" in k) and v > 0]
        d.sort(reverse=True)
        for v, k in d[:60]:
            print(f"{v:12.0f}  {k}")
finally:
    try:
        cells.stop_all(); cells.close(); poller.close()
    except Exception as e:
        print("stop:", e)
