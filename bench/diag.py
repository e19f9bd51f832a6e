"""What bench/startup.py and bench/idle_breakdown.py share: N cells started
at once in bench/run.py's lab (namespaces, as root) and converged, torn down
afterwards, and a command or a /metrics read in one host's namespace."""
import contextlib
import os
import subprocess
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402


def netns(lab, i, *cmd, inp=None):
    """Runs `cmd` in host `i`'s namespace."""
    return subprocess.run(["ip", "netns", "exec", lab.ns(i), *cmd],
                          capture_output=True, text=True, input=inp)


def scrape(lab, i):
    """Host `i`'s /metrics: sample name with labels -> value."""
    r = netns(lab, i, "curl", "-s", "-m", "10", f"http://{lab.ip(i)}:9091/metrics")
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


def cpu_ms(pid):
    """CPU a process has used, ms."""
    return R.proc_cpu(pid)[0] * 1000


@contextlib.contextmanager
def converged(n, binary, timeout):
    """Starts `n` cells of `binary` at once and waits (≤ `timeout` s) until
    every view lists every cell alive; yields the lab, the cells and the
    suite (its `ok` says whether they converged). The cells' logs stay in
    /tmp/aios-diag-*/cN.log."""
    prefix, a, b = R.pick_prefix(set())
    lab = R.Lab(n, prefix, a, b)
    feed = R.Feed()
    workdir = R.REAPER.tmpdir(f"aios-diag-{prefix}-", keep=True)
    opts = types.SimpleNamespace(settle=0, converge_timeout=timeout, window=1)
    poller = cells = None
    try:
        lab.create()
        poller = R.Poller(lab, feed, os.path.join(workdir, "poller.log"))
        cells = R.CellSide(lab, feed, binary, workdir, poller)
        suite = R.Suite(cells, lab, feed, opts, [])
        ok = suite.convergence()
        yield types.SimpleNamespace(lab=lab, cells=cells, suite=suite, ok=ok, workdir=workdir)
    finally:
        try:
            if cells is not None:
                cells.stop_all()
                cells.close()
            if poller is not None:
                poller.close()
        except Exception as e:
            print("stop:", e)
        lab.destroy()
