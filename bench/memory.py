"""Where an idle cell's memory is (issue 14): starts N cells in bench/run.py's
lab (namespaces, as root), waits for convergence and then WAIT seconds, and
prints for two cells what their resident memory is made of, from
/proc/PID/smaps: the executable's code, its read-only data (the part
relocated at start is private: "dirty"), the shared libraries, the main
thread's heap, and every other anonymous mapping (thread arenas, thread
stacks, large buffers) with its size and what of it is resident. With
--malloc-stats (needs gdb) glibc's own count per arena follows (in the
cell's log, copied here): bytes the arena holds against bytes in use.

    sudo python3 bench/memory.py N BINARY WAIT [--malloc-stats]

VmRSS counts file pages the cells share (one copy of the executable in
the page cache serves them all); RssAnon is what each cell costs alone."""
import collections
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diag  # noqa: E402


def regions(pid):
    """[(name, perms, size kB, Rss kB, Anonymous kB)] from /proc/PID/smaps."""
    out, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            p = line.split()
            if not p[0].endswith(":"):
                a, b = (int(x, 16) for x in p[0].split("-"))
                cur = [p[5] if len(p) > 5 else "[anon]", p[1], (b - a) // 1024, 0, 0]
                out.append(cur)
            elif p[0] == "Rss:":
                cur[3] = int(p[1])
            elif p[0] == "Anonymous:":
                cur[4] = int(p[1])
    return out


def report(pid, exe):
    st = diag.R.proc_status(pid)
    print(f"  VmRSS {st['VmRSS']}, RssAnon {st['RssAnon']}, RssFile {st['RssFile']}, "
          f"threads {st['Threads']}")
    kinds = collections.Counter()
    anon = []
    for name, perms, size, rss, an in regions(pid):
        if name == exe:
            kinds[f"executable {perms}"] += rss
            if an:
                kinds[f"executable {perms}, relocated (private)"] += an
        elif name.startswith("/"):
            kinds["shared libraries"] += rss
        elif name == "[heap]":
            kinds["[heap] (main arena)"] += rss
        elif name in ("[anon]", "[stack]"):
            kinds[f"{name} mappings"] += rss
            if rss >= 32:
                anon.append((size, rss, name))
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {v:7d} kB  {k}")
    for size, rss, name in sorted(anon, key=lambda t: -t[1]):
        print(f"           {name} of {size} kB: {rss} kB resident")


def malloc_stats(pid, log):
    before = os.path.getsize(log)
    r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (void)malloc_stats()"],
                       capture_output=True, text=True)
    time.sleep(0.3)
    with open(log) as f:
        f.seek(before)
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    for line in lines:
        print("   ", line)
    if not lines:
        print("  gdb could not call malloc_stats:", r.stderr.strip()[-200:])


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 3:
        sys.exit(__doc__)
    n, binary, wait = int(args[0]), os.path.realpath(args[1]), float(args[2])
    with diag.converged(n, binary, 300) as run:
        print(f"N={n}: converged {run.ok}; waiting {wait:.0f} s", flush=True)
        time.sleep(wait)
        hosts = sorted(run.cells.procs)
        for i in (hosts[0], hosts[len(hosts) // 2]):
            pid = run.cells.procs[i].pid
            print(f"cell {i} (pid {pid})")
            report(pid, binary)
            if "--malloc-stats" in sys.argv:
                malloc_stats(pid, os.path.join(run.workdir, f"c{i}.log"))


if __name__ == "__main__":
    main()
