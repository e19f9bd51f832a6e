"""Start-up breakdown of N cells (issue 14): starts N cells at once in
bench/run.py's lab (namespaces, as root), waits until every view lists every
cell alive, then prints the CPU each process used and the counter totals of
four hosts' /metrics: what a cell did from its start to convergence.

    sudo python3 bench/startup.py N BINARY [CONVERGE_TIMEOUT_S]

The cells' logs stay in /tmp/aios-diag-*/cN.log; run with
RUST_LOG="info,aios_cell::network::node=debug" and give that directory to
bench/timeline.py for when each cell learned of the others."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diag

if len(sys.argv) not in (3, 4):
    sys.exit(__doc__)
n = int(sys.argv[1]); binary = sys.argv[2]
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else max(150, n)
sample = [1, 2, n // 2, n]
with diag.converged(n, binary, timeout) as run:
    conv = run.suite.figs.get("conv")
    print("converged", run.ok, conv.text if conv else None, flush=True)
    cpus = sorted(diag.cpu_ms(run.cells.procs[i].pid) for i in run.suite.hosts)
    print(f"cpu ms per cell: median {cpus[len(cpus)//2]:.0f} max {cpus[-1]:.0f} sum {sum(cpus):.0f}")
    for i in sample:
        m = diag.scrape(run.lab, i)
        print(f"--- host {i}: cpu {diag.cpu_ms(run.cells.procs[i].pid):.0f} ms")
        d = [(v, k) for k, v in m.items() if ("total" in k or "_count" in k) and v > 0]
        d.sort(reverse=True)
        for v, k in d[:60]:
            print(f"{v:12.0f}  {k}")
