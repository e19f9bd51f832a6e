#!/usr/bin/env python3
"""Benchmark aios-cell against HashiCorp Serf on the same emulated LAN (issue 3).

For each N it builds N hosts as network namespaces on one bridge (the bridge
lives in its own hub namespace; /work/shared/netns.md), then runs the same
suite twice, first with one aios-cell per host, then with one `serf agent`
per host:

  a. zero-config convergence   b. propagation of an update   f. idle footprint
  g. GET /health under wrk     c. crash (kill -9)            d. silent loss (link down)
  e. graceful leave (SIGTERM for the cell, SIGINT for Serf)
  h. false failures (with --loss, or --only false): every node left up for
     --false-window seconds after convergence; each time an observer marks a
     live peer failed, and until it is alive again (issue 13)
  and connections per cell (GET /peers rows with "connected": true, max and
     median over the cells) after convergence and after the idle window.

Convergence is membership (issue 14): every host lists every other `alive`.
A cell holds a bounded set of connections (<= 16) and learns of the rest by
gossip, so "alive" with "connected": false is normal and is not waited for.
Timeouts not given on the command line scale with N above N=50 (opts_for).

`--loss K` makes the LAN lossy for both systems: after the lab is built,
every host drops K/1000 at random in the input and output hooks of its eth0
(nftables, `table inet lossy`; this kernel has no netem), so 25 is ~5 %
one-way loss and 50 ~10 %. Loopback stays clean, and so does the harness's
own HTTP to the cells (ports 8000 and 9091 are accepted before the drop),
as Serf's observation channel (stdout, RPC on loopback) is. `--only` picks
phases (convergence always runs).

Every time comes from one clock: time.monotonic() (CLOCK_MONOTONIC is
system-wide, so stamps taken in the namespaces by poller.py and in the root
namespace by this script compare directly). The cells are observed through
their own HTTP API: GET /events (SSE) gives each state change the moment the
cell makes it, and GET /peers confirms the end state of each phase. Serf is
observed through its agents' own logs (every membership change prints
`serf: EventMember...`, every user event `agent: Received event: user-event:`)
read line by line from their stdout, and `serf members -format=json` confirms
the end state. Both sides are push-observed, so neither pays a polling delay.

Processes start behind a FIFO gate: each host's process is spawned and blocks
opening a FIFO, and opening its write end releases them all at once. So the
convergence clock starts when every process starts, not after N sequential
`ip netns exec` spawns (~5 ms each).

Everything it creates is removed on exit, also on failure and Ctrl-C
(try/finally, atexit, SIGTERM/SIGHUP handlers): the processes it started (by
their process group, one per started process) and its namespaces.

Standard library only. Needs root, iproute2, the aios-cell binary; serf and
wrk are optional (their rows read n/a without them).
"""

import argparse
import atexit
import copy
import datetime
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
POLLER = os.path.join(HERE, "poller.py")
T_START = time.monotonic()

CELL_HTTP_PORT = 8000
CELL_METRICS_PORT = 9091
STATIC_PORT = 8080  # the baseline server; the cell holds 8000, 8001 and 9091
SERF_RPC = "127.0.0.1:7373"  # each namespace has its own loopback


def log(msg):
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def loss_pct(permille):
    """One-way loss of a drop of `permille` in each of two hooks (the sender's
    output and the receiver's input)."""
    k = permille / 1000.0
    return (1 - (1 - k) ** 2) * 100


def read_int(path, default):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


# ---------------------------------------------------------------------------
# Cleanup: everything started or created is registered here first.


class Reaper:
    """Kills what we started (each in its own process group, killed by its
    id) and deletes our namespaces and temp dirs. Idempotent."""

    def __init__(self):
        self.lock = threading.RLock()
        self.procs = []
        self.netns = []
        self.dirs = []

    def proc(self, p):
        with self.lock:
            self.procs.append(p)
        return p

    def forget(self, p):
        with self.lock:
            if p in self.procs:
                self.procs.remove(p)

    def ns(self, name):
        with self.lock:
            self.netns.append(name)

    def tmpdir(self, prefix, keep=False):
        d = tempfile.mkdtemp(prefix=prefix)
        if not keep:
            with self.lock:
                self.dirs.append(d)
        return d

    def kill_all(self):
        with self.lock:
            procs, self.procs = self.procs, []
        for p in procs:
            kill_group(p, signal.SIGKILL)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log(f"warning: pid {p.pid} did not exit after SIGKILL")

    def delete_ns(self, names):
        for n in names:
            r = subprocess.run(["ip", "netns", "del", n], capture_output=True, text=True, timeout=15)
            if r.returncode != 0 and "No such file" not in r.stderr:
                log(f"warning: ip netns del {n}: {r.stderr.strip()}")
            with self.lock:
                if n in self.netns:
                    self.netns.remove(n)

    def cleanup(self):
        with self.lock:
            self.kill_all()
            self.delete_ns(list(reversed(self.netns)))
            dirs, self.dirs = self.dirs, []
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


REAPER = Reaper()
atexit.register(REAPER.cleanup)


def _on_signal(signum, _frame):
    # Unwinds the main thread through its finally blocks (which clean up).
    raise SystemExit(128 + signum)


def kill_group(p, sig):
    """Signals the process group of a process we started (pgid == its pid,
    thanks to start_new_session); falls back to the pid alone."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass


def spawn(argv, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    return REAPER.proc(p)


def run_input(argv, text, what, timeout=30):
    """Runs `argv` with `text` on its stdin; raises BenchError with `what`
    and its stderr if it fails."""
    r = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise BenchError(f"{what}: {r.stderr.strip()}")


def run(argv, timeout=15, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


# ---------------------------------------------------------------------------
# The lab: N hosts on one bridge.


class Lab:
    """N host namespaces, each with eth0 on a bridge in a hub namespace.
    IPv6 stays on (link-local): Serf's mDNS needs it; router solicitations
    are off (see `create`)."""

    def __init__(self, n, prefix, a, b):
        self.n = n
        self.p = prefix
        self.net = (a, b)
        self.hub = f"{prefix}h"
        # The kernel's ARP table is one table for all namespaces, capped at
        # gc_thresh3 (1024 by default) dynamic entries; 50 hosts need 50*49.
        # Past half the cap, give every host permanent entries for the others
        # (they do not count against the cap) instead of changing a sysctl.
        self.static_arp = n * (n - 1) > read_int("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 1024) // 2

    def ns(self, i):
        return f"{self.p}{i}"

    def ip(self, i):
        return f"10.{self.net[0]}.{self.net[1]}.{i}"

    def veth(self, i):
        return f"{self.p}v{i}"

    def mac(self, i):
        # Locally administered, unique per lab (the subnet) and host.
        return f"02:a1:{self.net[0]:02x}:{self.net[1]:02x}:00:{i:02x}"

    def create(self):
        t = time.monotonic()
        REAPER.ns(self.hub)
        run(["ip", "netns", "add", self.hub])
        run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        for i in range(1, self.n + 1):
            ns = self.ns(i)
            REAPER.ns(ns)
            run(["ip", "netns", "add", ns])
            # No IPv6 router solicitations: with no router on the bridge a
            # fresh interface sends them for minutes, and every host hears
            # every one (~50-90 B/s per host at 20 hosts), which is neither
            # system's traffic. Link-local IPv6 stays (Serf's mDNS needs it).
            run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                 "net.ipv6.conf.all.router_solicitations=0",
                 "net.ipv6.conf.default.router_solicitations=0"])
            run(["ip", "link", "add", self.veth(i), "netns", self.hub, "type", "veth",
                 "peer", "name", "eth0", "netns", ns, "address", self.mac(i)])
            run(["ip", "-n", self.hub, "link", "set", self.veth(i), "master", "br0",
                 "multicast", "on", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", "eth0", "multicast", "on", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
        if self.static_arp:
            for i in range(1, self.n + 1):
                lines = "".join(f"neigh replace {self.ip(j)} lladdr {self.mac(j)} dev eth0 nud permanent\n"
                                for j in range(1, self.n + 1) if j != i)
                run_input(["ip", "-n", self.ns(i), "-batch", "-"], lines, f"static ARP in {self.ns(i)}")
        log(f"lab {self.p}: {self.n} hosts on 10.{self.net[0]}.{self.net[1]}.0/24 "
            f"{'(static ARP) ' if self.static_arp else ''}in {time.monotonic() - t:.1f}s")

    def destroy(self):
        # The hosts' nftables (the lossy table) live in their namespaces and
        # go with them.
        REAPER.delete_ns([self.ns(i) for i in range(self.n, 0, -1)] + [self.hub])

    # The harness's own HTTP traffic to the cells (the poller in host 1 and
    # the cells' API and metrics ports) is accepted before the drop, so the
    # observation channel stays clean, as Serf's (its agents' stdout and the
    # RPC on loopback) does. Nothing else uses these ports.
    HARNESS_PORTS = f"{{ {CELL_HTTP_PORT}, {CELL_METRICS_PORT} }}"

    def set_loss(self, permille):
        """A random drop of `permille`/1000 in both hooks of every host's eth0
        (/work/shared/netns.md "A lossy link": this kernel has no netem);
        loopback stays clean."""
        k = int(permille)
        hp = self.HARNESS_PORTS
        rules = (
            "table inet lossy {\n"
            "  chain input  { type filter hook input priority -300;\n"
            f"    iifname \"eth0\" tcp dport {hp} accept\n"
            f"    iifname \"eth0\" tcp sport {hp} accept\n"
            f"    iifname \"eth0\" numgen random mod 1000 < {k} counter drop\n  }}\n"
            "  chain output { type filter hook output priority -300;\n"
            f"    oifname \"eth0\" tcp dport {hp} accept\n"
            f"    oifname \"eth0\" tcp sport {hp} accept\n"
            f"    oifname \"eth0\" numgen random mod 1000 < {k} counter drop\n  }}\n"
            "}\n")
        for i in range(1, self.n + 1):
            run_input(["ip", "netns", "exec", self.ns(i), "nft", "-f", "-"], rules, f"nft in {self.ns(i)}")
        log(f"lab {self.p}: dropping {k}/1000 in each hook of every host's eth0 "
            f"(~{loss_pct(k):.1f} % one way)")

    def dropped(self):
        """Packets the lossy tables have dropped so far, summed over the hosts
        (input, output), or None without the tables."""
        tot = [0, 0]
        for i in range(1, self.n + 1):
            r = run(["ip", "netns", "exec", self.ns(i), "nft", "list", "table", "inet", "lossy"],
                    check=False)
            if r.returncode != 0:
                return None
            chain = None
            for line in r.stdout.splitlines():
                m = re.match(r"\s*chain (\w+)", line)
                if m:
                    chain = m.group(1)
                m = re.search(r"counter packets (\d+) bytes \d+ drop", line)
                if m and chain in ("input", "output"):
                    tot[chain == "output"] += int(m.group(1))
        return tuple(tot)

    def link(self, i, up):
        run(["ip", "-n", self.hub, "link", "set", self.veth(i), "up" if up else "down"])

    def udp_errors(self):
        """Datagrams dropped at full socket buffers, summed over the hosts
        (receive, send). On this box that is where an mDNS burst gets lost."""
        rcv = snd = 0
        for i in range(1, self.n + 1):
            r = run(["ip", "netns", "exec", self.ns(i), "cat", "/proc/net/snmp"], check=False)
            rows = [line.split() for line in r.stdout.splitlines() if line.startswith("Udp:")]
            if len(rows) >= 2:
                v = dict(zip(rows[0][1:], rows[1][1:]))
                rcv += int(v.get("RcvbufErrors", 0))
                snd += int(v.get("SndbufErrors", 0))
        return rcv, snd

    def tcp_to(self, i, ip):
        """Whether host i holds an established TCP connection with `ip`."""
        r = run(["ip", "netns", "exec", self.ns(i), "ss", "-Htn", "state", "established",
                 "dst", ip], check=False)
        return bool(r.stdout.strip())

    def counters(self):
        """host -> (bytes the host sent, bytes it received), read on the hub
        side of each veth (its rx is the host's tx), in one `ip` call."""
        r = run(["ip", "-n", self.hub, "-s", "-j", "link", "show"])
        out = {}
        for link in json.loads(r.stdout):
            name = link.get("ifname", "")
            if not name.startswith(self.p + "v"):
                continue
            i = int(name[len(self.p) + 1:])
            s = link["stats64"]
            out[i] = (s["rx"]["bytes"], s["tx"]["bytes"])
        return out


# ---------------------------------------------------------------------------
# Starting many processes at once.


class Gate:
    """Each gated process is `ip netns exec NS sh -c 'open the FIFO; exec CMD'`;
    the FIFO open blocks until release() opens the write end. `ip netns exec`
    and `exec` keep the pid, so the pid we hold is the program's."""

    SCRIPT = 'exec 3<"$0" && exec 3<&- && exec "$@"'

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "gate.fifo")
        if os.path.exists(self.path):
            os.unlink(self.path)
        os.mkfifo(self.path)

    def wrap(self, ns, argv):
        return ["ip", "netns", "exec", ns, "sh", "-c", self.SCRIPT, self.path, *argv]

    @staticmethod
    def _read(pid, what):
        try:
            with open(f"/proc/{pid}/{what}") as f:
                return f.read().strip()
        except OSError:
            return None

    def release(self, procs, timeout=10.0):
        """Waits until every process blocks on the FIFO, opens it (all start),
        and returns the monotonic time of that moment."""
        deadline = time.monotonic() + timeout
        # Each check reads a /proc file per process: at N=200 every 5 ms
        # would take CPU from the processes just released.
        step = 0.005 if len(procs) <= 50 else 0.05
        while True:
            dead = [p.pid for p in procs if p.poll() is not None]
            if dead:
                raise BenchError(f"gated processes exited before release: {dead}")
            waiting = sum(1 for p in procs if self._read(p.pid, "wchan") == "wait_for_partner")
            if waiting == len(procs):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"only {waiting}/{len(procs)} processes reached the start gate")
            time.sleep(2 * step)
        # Non-blocking: with readers waiting this succeeds; it cannot hang.
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        t0 = time.monotonic()
        try:
            # Keep the write end open until all have passed the gate.
            while time.monotonic() < t0 + timeout:
                if all(self._read(p.pid, "comm") not in ("sh", None) or p.poll() is not None
                       for p in procs):
                    break
                time.sleep(step)
        finally:
            os.close(fd)
        return t0


# ---------------------------------------------------------------------------
# Observations: every timestamped thing seen, dispatched to watchers.


class Feed:
    def __init__(self):
        self.cv = threading.Condition()
        self.watchers = []

    def publish(self, rec):
        with self.cv:
            for w in list(self.watchers):
                w(rec)
            self.cv.notify_all()

    def add(self, fn):
        with self.cv:
            self.watchers.append(fn)

    def remove(self, fn):
        with self.cv:
            if fn in self.watchers:
                self.watchers.remove(fn)

    def wait(self, pred, timeout):
        with self.cv:
            return self.cv.wait_for(pred, timeout=max(0.0, timeout))


class Collector:
    """First time each observer reports a matching record. `match(rec)`
    returns the observer (host index) or None. Install (enter) before acting."""

    def __init__(self, feed, observers, match):
        self.feed = feed
        self.observers = set(observers)
        self.match = match
        self.first = {}

    def _on(self, rec):
        h = self.match(rec)
        if h is not None and h in self.observers and h not in self.first:
            self.first[h] = rec["t"]

    def __enter__(self):
        self.feed.add(self._on)
        return self

    def __exit__(self, *exc):
        self.feed.remove(self._on)

    def wait(self, timeout):
        self.feed.wait(lambda: len(self.first) >= len(self.observers), timeout)
        with self.feed.cv:
            return dict(self.first)


class FalseWatch:
    """Every time an observer marks a peer failed (or left), and until it is
    alive again, from the side's `liveness(rec)`. Install before the window."""

    def __init__(self, side):
        self.side = side
        self.open = {}  # (observer, peer) -> (since, state, from_snapshot)
        self.episodes = []  # (observer, peer, state, start, end or None, from_snapshot)

    def on(self, rec):
        for obs, peer, st, snap in self.side.liveness(rec):
            if obs == peer:
                continue
            key = (obs, peer)
            if st == "alive":
                if key in self.open:
                    since, was, snap0 = self.open.pop(key)
                    self.episodes.append((obs, peer, was, since, rec["t"], snap0))
            elif key not in self.open:
                self.open[key] = (rec["t"], st, snap)

    def finish(self):
        """All episodes; those still open end with None."""
        return self.episodes + [(o, p, st, t, None, snap)
                                for (o, p), (t, st, snap) in self.open.items()]


# ---------------------------------------------------------------------------
# Figures


class Fig:
    """One measured figure: a number (None when not measured) and the text to
    show (which may carry a qualifier such as '>' or a note)."""

    def __init__(self, value, text=None, note=None):
        self.value = value
        self.text = text
        self.note = note

    def show(self):
        return self.text if self.text is not None else "n/a"


NA = Fig(None, "n/a")


def pct(xs, p):
    """Nearest-rank percentile (p99 of 20 samples is the largest)."""
    xs = sorted(xs)
    if not xs:
        return None
    k = max(1, math.ceil(p / 100.0 * len(xs)))
    return xs[k - 1]


def fmt_dur(s):
    if s is None:
        return "n/a"
    if s < 1.0:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def time_fig(first, observers, t0, timeout):
    """How long until every observer reported; a '>' bound when some did not."""
    if not observers:
        return Fig(None, "n/a (no observers)")
    if len(first) == len(observers):
        v = max(first.values()) - t0
        return Fig(v, fmt_dur(v))
    return Fig(None, f"> {fmt_dur(timeout)} ({len(first)}/{len(observers)} saw it)")


# ---------------------------------------------------------------------------
# The poller (runs inside host namespace 1)


class Poller:
    def __init__(self, lab, feed, logpath):
        self.feed = feed
        self.lock = threading.Lock()
        self.pending = {}
        self.next_id = 0
        self.ready = threading.Event()
        self.errlog = open(logpath, "w")
        self.p = spawn(["ip", "netns", "exec", lab.ns(1), sys.executable, "-u", POLLER],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errlog)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(10):
            raise BenchError("poller did not start (see poller.log)")

    def _read(self):
        for raw in self.p.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            ev = msg.get("ev")
            if ev == "ready":
                self.ready.set()
            elif ev == "http":
                with self.lock:
                    slot = self.pending.pop(msg.get("id"), None)
                if slot is not None:
                    slot[1].update(msg)
                    slot[0].set()
            elif ev in ("sse", "sse_open", "sse_closed"):
                rec = {"sys": "cell", "host": int(msg["tag"]), "t": msg["t"],
                       "kind": msg.get("type", ev), "data": msg.get("data"),
                       "why": msg.get("why")}
                self.feed.publish(rec)
            elif ev == "error":
                log(f"poller: {msg.get('error')}")

    def send(self, cmd):
        data = (json.dumps(cmd) + "\n").encode()
        with self.lock:
            self.p.stdin.write(data)
            self.p.stdin.flush()

    def http_start(self, method, url, body=None, timeout=5.0):
        with self.lock:
            self.next_id += 1
            rid = self.next_id
            slot = (threading.Event(), {})
            self.pending[rid] = slot
        cmd = {"op": "http", "id": rid, "method": method, "url": url, "timeout": timeout}
        if body is not None:
            cmd["body"] = body
        self.send(cmd)
        return slot, timeout

    @staticmethod
    def http_finish(handle):
        (done, result), timeout = handle
        if not done.wait(timeout + 3):
            return {"status": None, "error": "poller did not answer", "body": None}
        return result

    def http(self, method, url, body=None, timeout=5.0):
        return self.http_finish(self.http_start(method, url, body, timeout))

    def http_all(self, reqs):
        hs = [self.http_start(*r) for r in reqs]
        return [self.http_finish(h) for h in hs]

    def sse(self, host, url, retry_for):
        self.send({"op": "sse", "tag": str(host), "url": url, "retry_for": retry_for})

    def sse_stop(self, host):
        self.send({"op": "sse_stop", "tag": str(host)})

    def close(self):
        try:
            self.send({"op": "quit"})
            self.p.stdin.close()
            self.p.wait(timeout=3)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        kill_group(self.p, signal.SIGKILL)
        if self.p.poll() is not None:
            REAPER.forget(self.p)
        self.errlog.close()


# ---------------------------------------------------------------------------
# Per-process footprint from /proc


def proc_cpu(pid):
    """CPU time of a process: (seconds from utime + stime, which include
    exited threads but tick at 10 ms; per-thread ns runtimes from
    /proc/PID/task/*/sched, or None where the kernel does not show them)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    per_task = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        per_task[tid] = float(line.split(":")[1]) / 1000.0
                        break
    except OSError:
        per_task = None
    return ticks, per_task or None


def cpu_delta(a, b):
    """Seconds of CPU between two proc_cpu samples: the precise per-thread
    sum when no thread exited in between (an exited thread's time is gone
    from the per-thread view), else the 10 ms-tick total."""
    (ta, pa), (tb, pb) = a, b
    if pa is not None and pb is not None and set(pa) <= set(pb):
        return sum(v - pa.get(t, 0.0) for t, v in pb.items())
    return tb - ta


def proc_status(pid):
    """/proc/PID/status as a dict of its fields ("VmRSS": "15420 kB", ...)."""
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def proc_rss_kb(pid):
    """(VmRSS, RssAnon) in kB: all resident pages, and those private to the
    process (heap, stacks; not the executable's pages, which the page cache
    shares)."""
    st = proc_status(pid)
    kb = lambda k: int(st[k].split()[0]) if k in st else None  # noqa: E731
    return kb("VmRSS"), kb("RssAnon")


# ---------------------------------------------------------------------------
# The systems under test. Both offer the same small interface to Suite.


class CellSide:
    name = "aios-cell"

    def __init__(self, lab, feed, binary, workdir, poller):
        self.lab = lab
        self.feed = feed
        self.binary = binary
        self.workdir = workdir
        self.poller = poller
        self.procs = {}
        self.logs = {}
        self.peer_id = {}
        # Per host: (connected, alive) it last reported, and since when the
        # host has seen all others alive (None if not now). Connected is not
        # required: a cell holds a bounded set of connections (its ring
        # neighbours and a few short-lived ones) and learns of the rest by
        # gossip, so `alive` with `connected: false` is the normal case.
        self.counts = {}
        self.ok_since = {}
        # The hosts whose ok_since is set (so converged() is cheap: it is
        # evaluated on every event, and N=200 makes tens of thousands).
        self.ok_hosts = set()
        self.bound = {}
        # Per host: rows with "connected": true in its last GET /peers.
        self.conns = {}
        self._host_of = ({}, 0)
        # Event streams that ended without our asking: (host, why).
        self.closed = []
        self.expected = lab.n
        feed.add(self._track)

    def close(self):
        self.feed.remove(self._track)

    def url(self, i, path=""):
        return f"http://{self.lab.ip(i)}:{CELL_HTTP_PORT}{path}"

    def _track(self, rec):
        if rec["sys"] != "cell":
            return
        h, kind, data = rec["host"], rec["kind"], rec["data"]
        if kind == "snapshot":
            self.peer_id[h] = data["local"]["peer_id"]
            peers = data.get("peers", [])
            c = (sum(1 for p in peers if p.get("connected")),
                 sum(1 for p in peers if p.get("state") == "alive"))
        elif kind == "status":
            c = (data.get("peers", 0), data.get("peers_alive", 0))
        elif kind == "sse_closed":
            self.counts.pop(h, None)
            self._not_ok(h)
            self.closed.append((h, rec.get("why")))
            return
        else:
            return
        self.counts[h] = c
        if c[1] >= self.expected - 1:
            if self.ok_since.get(h) is None:
                self.ok_since[h] = rec["t"]
                self.ok_hosts.add(h)
                # The stream opened after the fact: the time is an upper bound.
                self.bound[h] = kind == "snapshot"
        else:
            self._not_ok(h)

    def _not_ok(self, h):
        self.ok_since[h] = None
        self.ok_hosts.discard(h)

    def _cmd(self, i):
        d = os.path.join(self.workdir, f"c{i}")
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_")}
        env.update({
            "AIOS_CELL_ID": f"c{i}",
            "AIOS_DATA_DIR": os.path.join(d, "data"),
            # No config file from the machine: defaults only.
            "XDG_CONFIG_HOME": os.path.join(d, "config"),
            "XDG_DATA_HOME": os.path.join(d, "xdg-data"),
        })
        return [self.binary, "run"], env

    def _spawn(self, i, gate=None):
        argv, env = self._cmd(i)
        ns = self.lab.ns(i)
        full = gate.wrap(ns, argv) if gate else ["ip", "netns", "exec", ns, *argv]
        logf = open(os.path.join(self.workdir, f"c{i}.log"), "a")
        p = spawn(full, env=env, stdout=logf, stderr=logf)
        logf.close()
        self.procs[i] = p
        with self.feed.cv:
            self._not_ok(i)
        return p

    def follow(self, i, retry_for=60.0):
        self.poller.sse(i, self.url(i, "/events"), retry_for)

    # Up to this N the event streams are opened with the processes and retry
    # (every 4 ms, then 20 ms) until each cell listens, so a mesh that
    # converges in milliseconds is still seen converging. Above it, N
    # followers retrying that fast would take a core from N starting cells,
    # so each stream is opened once its cell listens (read from the cell's
    # own /proc/PID/net/tcp*, no traffic), checked every LISTEN_POLL s.
    EAGER_FOLLOW_MAX = 50
    LISTEN_POLL = 0.1

    def _listening(self, i):
        """Whether host i's cell has its HTTP port in LISTEN (from /proc:
        the table of the process's own namespace)."""
        port = f":{CELL_HTTP_PORT:04X} "
        pid = self.procs[i].pid
        for f in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{pid}/net/{f}") as fh:
                    next(fh, None)
                    for line in fh:
                        parts = line.split()
                        # local_address is parts[1]; st (0A = LISTEN) parts[3].
                        if len(parts) > 3 and parts[3] == "0A" and (parts[1] + " ").endswith(port):
                            return True
            except OSError:
                pass
        return False

    def _follow_when_listening(self, hosts, timeout):
        """Opens each host's event stream once its cell listens; bounded."""
        left = list(hosts)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            still = []
            for i in left:
                if self.procs[i].poll() is not None:
                    continue
                if self._listening(i):
                    self.follow(i)
                else:
                    still.append(i)
            left = still
            if left:
                time.sleep(self.LISTEN_POLL)
        for i in left:  # not seen listening: fall back to the retrying follower
            self.follow(i)

    def start_all(self):
        gate = Gate(self.workdir)
        hosts = list(range(1, self.lab.n + 1))
        for i in hosts:
            self._spawn(i, gate)
        if self.lab.n <= self.EAGER_FOLLOW_MAX:
            # The SSE followers retry until each cell listens; a cell answers
            # /events with a snapshot first, so nothing is missed either way.
            for i in hosts:
                self.follow(i)
            return gate.release([self.procs[i] for i in hosts])
        t0 = gate.release([self.procs[i] for i in hosts], timeout=max(10.0, self.lab.n / 10))
        threading.Thread(target=self._follow_when_listening, args=(hosts, 60.0),
                         daemon=True).start()
        return t0

    def converged(self, hosts):
        return self.ok_hosts.issuperset(hosts)

    def seen_count(self, h):
        """Peers host h has alive (by its last counts), connected or not."""
        with self.feed.cv:
            c = self.counts.get(h)
        return c[1] if c else 0

    def convergence_times(self, hosts):
        return {h: self.ok_since[h] for h in hosts}, [h for h in hosts if self.bound.get(h)]

    def http_timeout(self):
        # A /peers answer of N rows, N of them at once through one poller.
        return 5.0 + self.lab.n / 20.0

    def verify(self, hosts, victim=None, state="alive"):
        """End state from GET /peers: each host lists every other of `hosts`
        alive (connected or not: connections are bounded, membership is
        gossiped), or (with a victim host) lists the victim in `state`.
        Records each host's count of connected rows in self.conns.
        Returns a list of problems."""
        urls = [("GET", self.url(h, "/peers"), None, self.http_timeout()) for h in hosts]
        problems = []
        for h, r in zip(hosts, self.poller.http_all(urls)):
            if r.get("status") != 200 or not isinstance(r.get("body"), dict):
                problems.append(f"c{h}: GET /peers failed: {r.get('error') or r.get('status')}")
                self.conns.pop(h, None)
                continue
            peers = r["body"].get("peers", [])
            self.conns[h] = sum(1 for p in peers if p.get("connected") is True)
            rows = {p["peer_id"]: p for p in peers}
            targets = [victim] if victim else [o for o in hosts if o != h]
            for o in targets:
                row = rows.get(self.peer_id.get(o))
                if row is None:
                    problems.append(f"c{h} does not list c{o}")
                elif row["state"] != state:
                    problems.append(f"c{h} lists c{o} as {row['state']}, not {state}")
        return problems

    def connections(self, hosts):
        """host -> rows with "connected": true in its GET /peers now (hosts
        whose request failed are left out)."""
        self.conns = {}
        self.verify(hosts)
        return {h: self.conns[h] for h in hosts if h in self.conns}

    def observe_stop(self, i):
        self.poller.sse_stop(i)
        # No sse_closed follows a stop we asked for: forget the host's view
        # here, so a later wait sees it only once its stream reopens.
        with self.feed.cv:
            self.counts.pop(i, None)
            self._not_ok(i)

    def victim_id(self, i):
        return self.peer_id[i]

    def state_match(self, state, victim_id):
        kind = {"failed": "cell_failed", "left": "cell_left"}[state]

        def m(rec):
            if rec["sys"] == "cell" and rec["kind"] == kind and rec["data"].get("peer_id") == victim_id:
                return rec["host"]
            return None
        return m

    def leave_signal(self):
        return signal.SIGTERM

    def liveness(self, rec):
        """What a record says about peers' states: [(observer, peer host,
        'failed'|'left'|'alive', from_snapshot)]."""
        if rec["sys"] != "cell":
            return []
        # Built once per change of the table, not per record (O(N) each).
        host_of, size = self._host_of
        if size != len(self.peer_id):
            host_of = {pid: h for h, pid in self.peer_id.items()}
            self._host_of = (host_of, len(self.peer_id))
        kind, data = rec["kind"], rec["data"]
        st = {"cell_failed": "failed", "cell_left": "left", "cell_alive": "alive",
              "cell_joined": "alive"}.get(kind)
        if st is not None:
            peer = host_of.get(data.get("peer_id"))
            return [] if peer is None else [(rec["host"], peer, st, False)]
        if kind == "snapshot":
            # A reopened stream: its rows are the observer's current view.
            out = []
            for row in data.get("peers", []):
                peer = host_of.get(row.get("peer_id"))
                if peer is not None and row.get("state") in ("failed", "left", "alive"):
                    out.append((rec["host"], peer, row["state"], True))
            return out
        return []

    SUSPECTS = re.compile(r"^aios_suspects_sent_total (\d+)", re.M)

    def suspicions(self):
        """Suspicions raised so far, summed over the cells (their
        aios_suspects_sent_total), or None if a cell does not export it."""
        urls = [("GET", f"http://{self.lab.ip(h)}:{CELL_METRICS_PORT}/metrics", None, 5.0)
                for h in self.procs]
        tot = 0
        for r in self.poller.http_all(urls):
            m = self.SUSPECTS.search(r.get("body") or "") if isinstance(r.get("body"), str) else None
            if r.get("status") != 200 or not m:
                return None
            tot += int(m.group(1))
        return tot

    def respawn(self, i):
        self._spawn(i)
        self.follow(i)

    def propagate(self, k, origin, others, timeout):
        """One update: POST a new level on `origin`; returns (from origin's own
        change, from the request, complete)."""
        level = 2.0 + 0.25 * k  # exact in binary; never the default 0.5
        pid = self.peer_id[origin]

        def seen(rec):
            if (rec["sys"] == "cell" and rec["kind"] == "level_changed"
                    and rec["data"].get("peer_id") == pid
                    and abs(float(rec["data"].get("level", -1)) - level) < 1e-9):
                return rec["host"]
            return None
        with Collector(self.feed, others, seen) as c, Collector(self.feed, [origin], seen) as own:
            r = self.poller.http("POST", self.url(origin, "/sync-consciousness"), {"level": level})
            if r.get("status") != 200:
                raise BenchError(f"POST /sync-consciousness on c{origin}: "
                                 f"{r.get('error') or r.get('status')} {r.get('body')}")
            first = c.wait(timeout)
            t_own = own.wait(2.0).get(origin)
        return first, t_own, r["t0"]

    def verify_level(self, hosts, origin, k):
        level = 2.0 + 0.25 * k
        problems = []
        urls = [("GET", self.url(h, "/peers"), None, self.http_timeout()) for h in hosts]
        for h, r in zip(hosts, self.poller.http_all(urls)):
            rows = {p["peer_id"]: p for p in (r.get("body") or {}).get("peers", [])}
            row = rows.get(self.peer_id[origin])
            if row is None or row.get("consciousness_level") != level:
                problems.append(f"c{h} shows c{origin} at {row and row.get('consciousness_level')}, not {level}")
        return problems

    def stop_all(self):
        for i in list(self.procs):
            self.observe_stop(i)
        for p in self.procs.values():
            kill_group(p, signal.SIGKILL)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is not None:
                REAPER.forget(p)


SERF_MEMBER = re.compile(r"serf: EventMember(\w+): (\S+)")
SERF_USER = re.compile(r"agent: Received event: user-event: (\S+)")
SERF_SUSPECT = re.compile(r"memberlist: Suspect (\S+) has failed")


class SerfSide:
    name = "Serf"

    def __init__(self, lab, feed, serf, workdir, cluster):
        self.lab = lab
        self.feed = feed
        self.serf = serf
        self.workdir = workdir
        self.cluster = cluster
        self.procs = {}
        self.suspects = 0
        # Per observer: node -> status it last logged, and how many of the
        # other expected nodes are alive in it.
        self.members = {}
        self.alive_n = {}
        self.ok_since = {}
        self.expected = {self.node(i) for i in range(1, lab.n + 1)}
        feed.add(self._track)

    def close(self):
        self.feed.remove(self._track)

    @staticmethod
    def node(i):
        return f"s{i}"

    def _track(self, rec):
        if rec["sys"] != "serf" or rec["kind"] != "member":
            return
        h = rec["host"]
        m = self.members.setdefault(h, {})
        node = rec["node"]
        # Counted incrementally (not a scan of N nodes per log line: N=200
        # makes tens of thousands of lines).
        was = m.get(node) == "alive"
        st = {"Join": "alive", "Failed": "failed", "Leave": "left"}.get(rec["what"])
        if st is not None:
            m[node] = st
        elif rec["what"] == "Reap":
            m.pop(node, None)
        now = m.get(node) == "alive"
        if was != now and node in self.expected and node != self.node(h):
            self.alive_n[h] = self.alive_n.get(h, 0) + (1 if now else -1)
        ok = self.alive_n.get(h, 0) >= len(self.expected) - 1
        if ok:
            if self.ok_since.get(h) is None:
                self.ok_since[h] = rec["t"]
        else:
            self.ok_since[h] = None

    def _reader(self, i, p, logpath):
        # Stamps each log line the moment the agent writes it.
        with open(logpath, "ab") as out:
            for raw in iter(p.stdout.readline, b""):
                t = time.monotonic()
                out.write(raw)
                line = raw.decode("utf-8", "replace")
                m = SERF_MEMBER.search(line)
                if m:
                    self.feed.publish({"sys": "serf", "host": i, "t": t, "kind": "member",
                                       "what": m.group(1), "node": m.group(2)})
                    continue
                m = SERF_USER.search(line)
                if m:
                    self.feed.publish({"sys": "serf", "host": i, "t": t, "kind": "user",
                                       "name": m.group(1)})
                    continue
                if SERF_SUSPECT.search(line):
                    with self.feed.cv:
                        self.suspects += 1
        self.feed.publish({"sys": "serf", "host": i, "t": time.monotonic(), "kind": "exit"})

    def _spawn(self, i, gate=None):
        argv = [self.serf, "agent", f"-node={self.node(i)}", f"-bind={self.lab.ip(i)}",
                f"-discover={self.cluster}", f"-rpc-addr={SERF_RPC}", "-log-level=info"]
        ns = self.lab.ns(i)
        full = gate.wrap(ns, argv) if gate else ["ip", "netns", "exec", ns, *argv]
        p = spawn(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs[i] = p
        with self.feed.cv:
            self.members[i] = {}
            self.alive_n[i] = 0
            self.ok_since[i] = None
        threading.Thread(target=self._reader, args=(i, p, os.path.join(self.workdir, f"s{i}.log")),
                         daemon=True).start()
        return p

    def start_all(self):
        gate = Gate(self.workdir)
        hosts = range(1, self.lab.n + 1)
        for i in hosts:
            self._spawn(i, gate)
        return gate.release([self.procs[i] for i in hosts], timeout=max(10.0, self.lab.n / 10))

    def converged(self, hosts):
        return all(self.ok_since.get(h) is not None for h in hosts)

    def seen_count(self, h):
        with self.feed.cv:
            m = dict(self.members.get(h, {}))
        return sum(1 for n, st in m.items() if st == "alive" and n != self.node(h))

    def convergence_times(self, hosts):
        return {h: self.ok_since[h] for h in hosts}, []

    def connections(self, hosts):
        return None  # memberlist gossips over UDP: no connection is held

    def _members(self, h):
        r = run(["ip", "netns", "exec", self.lab.ns(h), self.serf, "members", "-format=json",
                 f"-rpc-addr={SERF_RPC}"], timeout=10, check=False)
        if r.returncode != 0:
            return None, r.stderr.strip()
        return {m["name"]: m["status"] for m in json.loads(r.stdout)["members"]}, None

    def verify(self, hosts, victim=None, state="alive"):
        problems = []
        for h in hosts:
            ms, err = self._members(h)
            if ms is None:
                problems.append(f"s{h}: serf members failed: {err}")
                continue
            targets = [self.node(victim)] if victim else [self.node(o) for o in hosts if o != h]
            for n in targets:
                if ms.get(n) != state:
                    problems.append(f"s{h} lists {n} as {ms.get(n)}, not {state}")
        return problems

    def observe_stop(self, i):
        pass  # the victim's own log lines are never counted: it is no observer

    def victim_id(self, i):
        return self.node(i)

    def state_match(self, state, victim_id):
        what = {"failed": "Failed", "left": "Leave"}[state]

        def m(rec):
            if (rec["sys"] == "serf" and rec["kind"] == "member" and rec["what"] == what
                    and rec["node"] == victim_id):
                return rec["host"]
            return None
        return m

    def leave_signal(self):
        return signal.SIGINT

    def liveness(self, rec):
        if rec["sys"] != "serf" or rec["kind"] != "member":
            return []
        st = {"Failed": "failed", "Leave": "left", "Join": "alive"}.get(rec["what"])
        m = re.fullmatch(r"s(\d+)", rec["node"])
        if st is None or not m:
            return []
        return [(rec["host"], int(m.group(1)), st, False)]

    def suspicions(self):
        """memberlist's 'Suspect <node> has failed, no acks received' lines
        logged so far (one per suspicion a prober raises)."""
        return self.suspects

    def respawn(self, i):
        # Same node name: a restarted agent, as Serf is meant to be run.
        self._spawn(i)

    def propagate(self, k, origin, others, timeout):
        name = f"lvl{k}"

        def seen(rec):
            if rec["sys"] == "serf" and rec["kind"] == "user" and rec["name"] == name:
                return rec["host"]
            return None
        with Collector(self.feed, others, seen) as c, Collector(self.feed, [origin], seen) as own:
            t_req = time.monotonic()
            run(["ip", "netns", "exec", self.lab.ns(origin), self.serf, "event", "-coalesce=false",
                 f"-rpc-addr={SERF_RPC}", name, str(2.0 + 0.25 * k)], timeout=10)
            first = c.wait(timeout)
            t_own = own.wait(2.0).get(origin)
        return first, t_own, t_req

    def verify_level(self, hosts, origin, k):
        return []  # user events leave no state to read back

    def stop_all(self):
        for p in self.procs.values():
            kill_group(p, signal.SIGKILL)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is not None:
                REAPER.forget(p)


# ---------------------------------------------------------------------------
# The suite, the same for both systems.


class Suite:
    def __init__(self, side, lab, feed, opts, notes):
        self.s = side
        self.lab = lab
        self.feed = feed
        self.o = opts
        self.notes = notes
        self.figs = {}
        self.hosts = list(range(1, lab.n + 1))
        self.converged_ok = False

    def note(self, msg):
        msg = f"{self.s.name}, N={self.lab.n}: {msg}"
        log(msg)
        self.notes.append(msg)

    def wait_converged(self, timeout):
        return self.feed.wait(lambda: self.s.converged(self.hosts), timeout)

    # a.
    def convergence(self):
        udp0 = self.lab.udp_errors()
        t0 = self.s.start_all()
        ok = self.wait_converged(self.o.converge_timeout)
        times, bounded = self.s.convergence_times(self.hosts)
        self.startup_cpu(t0)
        udp1 = self.lab.udp_errors()
        drops = (udp1[0] - udp0[0], udp1[1] - udp0[1])
        if drops != (0, 0):
            self.note(f"UDP datagrams dropped at full socket buffers during startup: "
                      f"{drops[0]} received, {drops[1]} sent (mDNS bursts)")
        if not ok:
            done = sum(1 for v in times.values() if v is not None)
            seen = sorted(self.s.seen_count(h) for h in self.hosts)
            self.figs["conv"] = Fig(None, f"> {self.o.converge_timeout:.0f} s ({done}/{len(times)} hosts)")
            self.note(f"did not converge in {self.o.converge_timeout:g} s: {done}/{len(times)} "
                      f"hosts saw everyone; peers seen per host min {seen[0]}, "
                      f"median {seen[len(seen) // 2]}, max {seen[-1]} of {len(seen) - 1}")
            return False
        v = max(times.values()) - t0
        each = sorted(t - t0 for t in times.values())
        log(f"{self.s.name} N={self.lab.n}: hosts converged from {fmt_dur(each[0])} "
            f"(median {fmt_dur(each[len(each) // 2])}) to {fmt_dur(each[-1])}")
        self.figs["conv"] = Fig(v, fmt_dur(v))
        if bounded:
            self.note(f"convergence of hosts {bounded} is an upper bound "
                      "(their event stream opened after they had converged)")
        problems = self.s.verify(self.hosts)
        if problems:
            self.note("after convergence the end state disagrees: " + "; ".join(problems[:5]))
        log(f"{self.s.name} N={self.lab.n}: converged in {fmt_dur(v)}")
        self.connections("conns")
        self.converged_ok = True
        return True

    def startup_cpu(self, t0):
        """CPU the processes used from the start gate to now (convergence or
        the timeout), per process and as a share of the whole box: near
        100 % the box's cores, not the protocol, set the pace."""
        now = time.monotonic()
        total = 0.0
        for p in self.s.procs.values():
            try:
                total += proc_cpu(p.pid)[0]
            except (OSError, ValueError, IndexError):
                pass
        n, cores = max(1, len(self.s.procs)), os.cpu_count() or 1
        busy = total / (cores * max(now - t0, 1e-3))
        self.figs["conv_cpu"] = Fig(total / n, f"{total / n * 1000:.0f} ms")
        self.figs["conv_busy"] = Fig(busy, f"{busy * 100:.0f} % of {cores} cores "
                                           f"({total:.1f} CPU-s in {now - t0:.1f} s)")

    def connections(self, key):
        """Connections per process: rows with "connected": true in each
        host's GET /peers, max and median over the hosts."""
        got = self.s.connections(self.hosts)
        if got is None:
            self.figs[key] = Fig(None, "none (UDP gossip)")
            return
        if not got:
            self.figs[key] = Fig(None, "n/a (no /peers answered)")
            return
        xs = sorted(got.values())
        med = statistics.median(xs)
        miss = len(self.hosts) - len(xs)
        self.figs[key] = Fig(xs[-1], f"max {xs[-1]}, median {med:g}, min {xs[0]}"
                             + (f" ({miss} hosts did not answer)" if miss else ""))
        log(f"{self.s.name} N={self.lab.n}: connections per cell ({key}): {self.figs[key].text}")

    # b.
    def propagation(self):
        origin, others = 1, self.hosts[1:]
        if not others:
            return
        lat_own, lat_req, missing = [], [], 0
        # A settled mesh, as for every other figure after convergence: the
        # first seconds after start still carry start-up work (identify,
        # gossipsub grafts, twin-connection pruning) on a host shared by N
        # processes, which is convergence's cost, not propagation's.
        time.sleep(self.o.settle)
        for k in range(self.o.updates):
            first, t_own, t_req = self.s.propagate(k, origin, others, self.o.event_timeout)
            if len(first) < len(others):
                missing += 1
                continue
            last = max(first.values())
            lat_req.append(last - t_req)
            if t_own is not None:
                lat_own.append(last - t_own)
            time.sleep(0.1)
        if missing:
            self.note(f"{missing}/{self.o.updates} updates did not reach everyone within "
                      f"{self.o.event_timeout} s")
        problems = self.s.verify_level(others, origin, self.o.updates - 1)
        if problems:
            self.note("after propagation: " + "; ".join(problems[:5]))
        for key, xs in (("prop", lat_own), ("prop_req", lat_req)):
            if xs:
                p50, p99 = pct(xs, 50), pct(xs, 99)
                self.figs[key + "_p50"] = Fig(p50, fmt_dur(p50))
                self.figs[key + "_p99"] = Fig(p99, fmt_dur(p99))
        self.figs["prop_n"] = Fig(len(lat_own), str(len(lat_own)))
        if "prop_req_p99" in self.figs:
            log(f"{self.s.name} N={self.lab.n}: propagation from the request p50 "
                f"{self.figs['prop_req_p50'].text}, p99 {self.figs['prop_req_p99'].text}")

    # h. false failures: everyone up for the window; every time an observer
    # marks a live peer failed, and for how long.
    def false_failures(self):
        w = self.o.false_window
        watch = FalseWatch(self.s)
        sus0 = self.s.suspicions()
        drop0 = self.lab.dropped() if self.o.loss else None
        dead = {}
        self.feed.add(watch.on)
        t0 = time.monotonic()
        end, next_log = t0 + w, t0 + 60
        log(f"{self.s.name} N={self.lab.n}: false-failure window, {w:g} s with every node up")
        try:
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                time.sleep(min(1.0, end - now))
                for i in self.hosts:
                    if i not in dead and self.s.procs[i].poll() is not None:
                        dead[i] = time.monotonic()
                        self.note(f"host {i}'s process exited during the false-failure window "
                                  f"(+{dead[i] - t0:.1f} s, exit {self.s.procs[i].returncode}); "
                                  "its failures from then on are not counted")
                if now >= next_log:
                    with self.feed.cv:
                        n_ep = len(watch.finish())
                    log(f"{self.s.name} N={self.lab.n}: {now - t0:.0f}/{w:g} s, "
                        f"{n_ep} false failures so far")
                    next_log += 60
        finally:
            self.feed.remove(watch.on)
        t1 = time.monotonic()
        with self.feed.cv:
            eps = [e for e in watch.finish() if not (e[1] in dead and e[3] >= dead[e[1]] - 1.0)]
        sus1 = self.s.suspicions()
        failed = [e for e in eps if e[2] == "failed"]
        left = [e for e in eps if e[2] == "left"]
        pairs = {(o, p) for o, p, *_ in failed}
        peers = {p for _, p, *_ in failed}
        self.figs["false_events"] = Fig(len(failed), (
            f"{len(failed)} ({len(pairs)} observer-peer pairs, {len(peers)} peers)" if failed else "0"))
        if failed:
            durs = [((e[4] if e[4] is not None else t1) - e[3], e[4] is None) for e in failed]
            longest, still = max(durs)
            self.figs["false_max"] = Fig(longest, fmt_dur(longest) + (" (still failed at the end)"
                                                                      if still else ""))
            self.figs["false_total"] = Fig(sum(d for d, _ in durs), fmt_dur(sum(d for d, _ in durs)))
        else:
            self.figs["false_max"] = Fig(None, "-")
        if sus0 is not None and sus1 is not None:
            self.figs["false_suspects"] = Fig(sus1 - sus0, str(sus1 - sus0))
        else:
            self.figs["false_suspects"] = Fig(None, "n/a (no aios_suspects_sent metric)")
        name = self.s.node if isinstance(self.s, SerfSide) else (lambda i: f"c{i}")
        for o, p, st, a, b, snap in sorted(eps, key=lambda e: e[3])[:40]:
            dur = (b if b is not None else t1) - a
            self.note(f"false {st}: {name(o)} marked {name(p)} {st} at +{a - t0:.1f} s of the window "
                      f"for {fmt_dur(dur)}{' (still at the end)' if b is None else ''}"
                      f"{' (seen in a reopened stream: a lower bound)' if snap else ''}")
        if len(eps) > 40:
            self.note(f"... and {len(eps) - 40} more false failures")
        if left:
            self.note(f"{len(left)} times an observer reported a live peer left")
        if drop0 is not None:
            drop1 = self.lab.dropped()
            if drop1 is not None:
                self.note(f"false-failure window: the lossy tables dropped {drop1[0] - drop0[0]} "
                          f"incoming and {drop1[1] - drop0[1]} outgoing packets over all hosts")
        log(f"{self.s.name} N={self.lab.n}: false failures in {t1 - t0:.0f} s: "
            f"{self.figs['false_events'].text}; longest {self.figs['false_max'].text}; "
            f"suspicions {self.figs['false_suspects'].text}")
        # The window is over: every node must still be up and seen by all.
        problems = self.s.verify(self.hosts)
        if problems:
            self.note("after the false-failure window the end state disagrees: "
                      + "; ".join(problems[:5]))

    # f.
    def footprint(self):
        time.sleep(self.o.settle)
        pids = {i: self.s.procs[i].pid for i in self.hosts}
        c0 = {i: proc_cpu(p) for i, p in pids.items()}
        n0 = self.lab.counters()
        t0 = time.monotonic()
        rss = {i: [] for i in pids}
        # Sample RSS a few times over the window; bounded by the window.
        steps = max(1, int(self.o.window // 5))
        for _ in range(steps):
            time.sleep(self.o.window / steps)
            for i, p in pids.items():
                try:
                    rss[i].append(proc_rss_kb(p))
                except OSError:
                    raise BenchError(f"{self.s.name} on host {i} exited during the idle window")
        c1 = {i: proc_cpu(p) for i, p in pids.items()}
        n1 = self.lab.counters()
        dt = time.monotonic() - t0
        cpu = [cpu_delta(c0[i], c1[i]) / dt * 100 for i in pids]
        out = [(n1[i][0] - n0[i][0]) / dt for i in pids]
        inn = [(n1[i][1] - n0[i][1]) / dt for i in pids]
        last_rss = [rss[i][-1][0] / 1024 for i in pids]
        self.figs["rss"] = Fig(statistics.mean(last_rss),
                               f"{statistics.mean(last_rss):.1f} MiB (max {max(last_rss):.1f})")
        last_anon = [rss[i][-1][1] / 1024 for i in pids if rss[i][-1][1] is not None]
        if last_anon:
            self.figs["rss_anon"] = Fig(statistics.mean(last_anon),
                                        f"{statistics.mean(last_anon):.1f} MiB (max {max(last_anon):.1f})")
        v = statistics.mean(cpu)
        self.figs["cpu"] = Fig(v, f"{v:.3f} % (max {max(cpu):.3f})")
        tot = [o + i for o, i in zip(out, inn)]
        self.figs["net"] = Fig(statistics.mean(tot), f"{statistics.mean(tot):.0f} B/s")
        self.figs["net_out"] = Fig(statistics.mean(out), f"{statistics.mean(out):.0f} B/s")
        self.figs["net_in"] = Fig(statistics.mean(inn), f"{statistics.mean(inn):.0f} B/s")
        log(f"{self.s.name} N={self.lab.n}: idle RSS {self.figs['rss'].text}, "
            f"CPU {self.figs['cpu'].text}, net {self.figs['net'].text}")
        # Read after the window's counters: this traffic is not counted.
        self.connections("conns_idle")

    # c., d., e.: one host at a time (the last), repaired after each.
    def fault(self, key, victim, state, act, timeout, grace=0.0, other_state=None):
        observers = [h for h in self.hosts if h != victim]
        vid = self.s.victim_id(victim)
        self.s.observe_stop(victim)
        other = None
        with Collector(self.feed, observers, self.s.state_match(state, vid)) as c:
            if other_state:
                other = Collector(self.feed, observers, self.s.state_match(other_state, vid))
                other.__enter__()
            try:
                t0 = time.monotonic()
                act()
                first = c.wait(timeout)
                if grace:
                    time.sleep(grace)  # catch a late misreport
            finally:
                if other:
                    other.__exit__()
        self.figs[key] = time_fig(first, observers, t0, timeout)
        log(f"{self.s.name} N={self.lab.n}: {key}: {self.figs[key].text}")
        if len(first) == len(observers):
            problems = self.s.verify(observers, victim=victim, state=state)
            if problems:
                self.note(f"after {key}: " + "; ".join(problems[:5]))
        return first, (other.first if other else {})

    def repair(self, victim):
        self.s.respawn(victim)
        if not self.wait_converged(self.o.converge_timeout):
            self.note(f"did not reconverge within {self.o.converge_timeout} s after restarting host {victim}")
            return False
        # Act on a settled mesh: a process signalled within ms of (re)joining
        # is still exchanging state (measured: a cell that leaves ~5 ms after
        # reconnecting, and a Serf agent still inside its own join, are both
        # reported failed rather than left by some peers).
        time.sleep(self.o.settle)
        return True

    def faults(self):
        v = self.lab.n
        if v < 2:
            return
        p = self.s.procs
        want = self.o.phases

        # c. crash
        if "crash" in want:
            if not self._crash(v, p):
                return
        # d. silent loss
        if "silent" in want:
            self.fault("silent", v, "failed", lambda: self.lab.link(v, False), self.o.silent_timeout)
            kill_group(p[v], signal.SIGKILL)
            p[v].wait(timeout=5)
            self.lab.link(v, True)
            if not self.repair(v):
                return
        # e. graceful leave
        if "leave" in want:
            self._leave(v, p)

    def _crash(self, v, p):
        if isinstance(self.s, CellSide):
            # kill -9 closes TCP sockets at once; a QUIC peer just goes quiet.
            obs = [h for h in self.hosts if h != v]
            tcp = {h for h in obs if self.lab.tcp_to(h, self.lab.ip(v))}
        first, _ = self.fault("crash", v, "failed", lambda: os.kill(p[v].pid, signal.SIGKILL),
                              self.o.crash_timeout)
        if isinstance(self.s, CellSide) and first:
            t1 = min(first.values())

            def spread(ts):
                return f"{fmt_dur(min(ts) - t1)} to {fmt_dur(max(ts) - t1)}" if ts else "-"
            t_tcp = [first[h] for h in tcp if h in first]
            t_other = [first[h] for h in first if h not in tcp]
            msg = (f"crash: {len(tcp)}/{len(obs)} observers held a TCP connection to the "
                   f"victim; they noticed {spread(t_tcp)} after the first observer")
            if len(obs) > len(tcp):
                msg += (f"; the other {len(obs) - len(tcp)} (QUIC or no connection) "
                        f"{spread(t_other)}")
            self.note(msg)
        p[v].wait(timeout=5)
        return self.repair(v)

    def _leave(self, v, p):
        sig = self.s.leave_signal()
        _, failed = self.fault("leave", v, "left", lambda: os.kill(p[v].pid, sig),
                               self.o.leave_timeout, grace=1.0, other_state="failed")
        self.figs["leave_failed"] = Fig(len(failed), f"{len(failed)} of {v - 1}")
        try:
            p[v].wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.note(f"host {v} had not exited 10 s after {sig.name}")
            kill_group(p[v], signal.SIGKILL)


# g. GET /health under wrk


WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_PCT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def run_wrk(wrk, ns, url, duration, threads, conns):
    r = run(["ip", "netns", "exec", ns, wrk, f"-t{threads}", f"-c{conns}", f"-d{duration}s",
             "--latency", url], timeout=duration + 30)
    m = WRK_RPS.search(r.stdout)
    if not m:
        raise BenchError(f"cannot read wrk output: {r.stdout[-500:]}")
    lat = {}
    for p, v, unit in WRK_PCT.findall(r.stdout):
        lat[p] = float(v) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", r.stdout)
    errors = re.search(r"Socket errors:.*", r.stdout)
    return float(m.group(1)), lat.get("50"), lat.get("99"), (
        (f"{non2xx.group(1)} non-2xx " if non2xx else "") + (errors.group(0) if errors else ""))


def http_bench(opts, lab, poller, figs, notes, static_bin):
    if not opts.wrk:
        figs["health_rps"] = Fig(None, "n/a (no wrk)")
        return
    ns, dur = lab.ns(1), opts.wrk_duration
    url = f"http://{lab.ip(1)}:{CELL_HTTP_PORT}/health"
    rps, p50, p99, err = run_wrk(opts.wrk, ns, url, dur, opts.wrk_threads, opts.wrk_conns)
    figs["health_rps"] = Fig(rps, f"{rps:,.0f} req/s")
    figs["health_p99"] = Fig(p99, fmt_dur(p99))
    if err:
        notes.append(f"aios-cell, N={lab.n}: wrk on /health: {err}")
    if not static_bin:
        figs["static_rps"] = Fig(None, "baseline: n/a")
        return
    sp = spawn(["ip", "netns", "exec", ns, static_bin, f"{lab.ip(1)}:{STATIC_PORT}"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        surl = f"http://{lab.ip(1)}:{STATIC_PORT}/health"
        deadline = time.monotonic() + 10
        while poller.http("GET", surl, timeout=1.0).get("status") != 200:
            if time.monotonic() > deadline or sp.poll() is not None:
                raise BenchError("the static_http baseline did not answer")
            time.sleep(0.05)
        srps, _, sp99, serr = run_wrk(opts.wrk, ns, surl, dur, opts.wrk_threads, opts.wrk_conns)
        figs["static_rps"] = Fig(srps, f"{srps:,.0f} req/s")
        figs["static_p99"] = Fig(sp99, fmt_dur(sp99))
        if serr:
            notes.append(f"static baseline, N={lab.n}: wrk: {serr}")
    finally:
        kill_group(sp, signal.SIGKILL)
        sp.wait(timeout=5)
        REAPER.forget(sp)


# ---------------------------------------------------------------------------
# Tables


# key, label, target text, check(value, n) -> bool or None (no target at this N)
ROWS = [
    ("conv", "zero-config convergence", "≤ 0.25 s (N=20), ≤ 1 s (N=50)",
     lambda v, n: v <= 0.25 if n == 20 else (v <= 1.0 if n == 50 else None)),
    ("conv_cpu", "  CPU per process from start to convergence", "", None),
    ("conv_busy", "  the box's cores busy from start to convergence (all processes)", "", None),
    ("conns", "connections per cell after convergence (GET /peers rows connected)", "≤ 16 (any N)",
     lambda v, n: v <= 16),
    ("conns_idle", "  connections per cell at the end of the idle window", "≤ 16 (any N)",
     lambda v, n: v <= 16),
    ("false_events", "false failures, every node up (times an observer marked a live peer failed)",
     "0", lambda v, n: v == 0),
    ("false_max", "  longest false failure (until alive again or the window's end)", "", None),
    ("false_total", "  false failures' total time", "", None),
    ("false_suspects", "  suspicions raised in the window", "", None),
    ("prop_req_p50", "propagation p50 (from the request)", "", None),
    ("prop_req_p99", "propagation p99 (from the request)", "≤ 25 ms",
     lambda v, n: v <= 0.025 if n == 20 else None),
    ("prop_p50", "propagation p50 (from the origin's own event)", "", None),
    ("prop_p99", "propagation p99 (from the origin's own event)", "", None),
    ("crash", "crash (kill -9) noticed by all", "≤ 50 ms",
     lambda v, n: v <= 0.05 if n == 20 else None),
    ("silent", "silent loss (link down) noticed by all", "≤ 2 s",
     lambda v, n: v <= 2.0 if n == 20 else None),
    ("leave", "graceful leave seen by all", "≤ 50 ms",
     lambda v, n: v <= 0.05 if n == 20 else None),
    ("leave_failed", "observers that called the leaver failed", "0",
     lambda v, n: v == 0 if n == 20 else None),
    ("rss", "RSS per process, idle (VmRSS)", "≤ 12 MB",
     lambda v, n: v <= 12.0 if n == 20 else None),
    ("rss_anon", "  of which private to the process (RssAnon)", "", None),
    ("cpu", "CPU per process, idle (% of one core)", "≤ 0.1 %",
     lambda v, n: v <= 0.1 if n == 20 else None),
    ("net", "traffic per host, idle (sent + received)", "≤ 200 B/s",
     lambda v, n: v <= 200 if n == 20 else None),
    ("net_out", "  of which sent", "", None),
    ("net_in", "  of which received", "", None),
    ("health_rps", "GET /health throughput (wrk, in host 1)", "≥ 0.8 × static",
     None),
    ("health_p99", "GET /health p99 latency under wrk", "", None),
    ("static_rps", "static axum handler, same wrk (denominator)", "", None),
]


def ratio_text(key, cell, serf, figs_cell):
    if key == "health_rps":
        st = figs_cell.get("static_rps")
        if cell and cell.value and st and st.value:
            return f"{cell.value / st.value:.2f} of static"
        return "baseline: n/a"
    if cell is None or serf is None or cell.value is None or serf.value is None:
        return ""
    if serf.value == 0:
        return "" if cell.value == 0 else "∞"
    r = cell.value / serf.value
    return f"{r:.2g}" if r < 0.1 else f"{r:.2f}"


def target_mark(key, check, cell, n, figs_cell):
    if key == "health_rps":
        st = figs_cell.get("static_rps")
        if n == 20 and cell and cell.value and st and st.value:
            return "met" if cell.value / st.value >= 0.8 else "MISSED"
        return ""
    if check is None or cell is None:
        return ""
    if cell.value is None:
        return "MISSED" if n in (20, 50) and cell.text and cell.text.startswith(">") else ""
    r = check(cell.value, n)
    return "" if r is None else ("met" if r else "MISSED")


# Under --loss the clean-LAN targets do not apply; issue 13's do.
# key -> (target text, check(cell value, Serf value or None, n) -> bool or None)
LOSS_TARGETS = {
    "conv": ("≤ Serf's at N=8", lambda c, s, n: None if s is None or n != 8 else c <= s),
    "silent": ("≤ 3 s at N=20, ~10 %", lambda c, s, n: c <= 3.0 if n == 20 else None),
    "false_events": ("0", lambda c, s, n: c == 0),
}


def heading(n, opts):
    h = f"N = {n}"
    if opts.loss:
        h += f", {opts.loss}/1000 dropped per hook (~{loss_pct(opts.loss):.1f} % one-way loss)"
    if "false" in opts.phases:
        h += f", false-failure window {opts.false_window:g} s"
    return h


def table(n, figs_cell, figs_serf, loss=0):
    head = ["figure", "aios-cell", "Serf", "ratio (cell/Serf)",
            "target (issue 13)" if loss else "target (N=20)", "cell vs target"]
    rows = []
    for key, label, target, check in ROWS:
        c, s = figs_cell.get(key), figs_serf.get(key)
        if c is None and s is None:
            continue
        if key.startswith("static") and (c is None or c.value is None):
            continue
        if loss:
            target, lcheck = LOSS_TARGETS.get(key, ("", None))
            mark = ""
            if lcheck and c is not None:
                if c.value is None:
                    mark = "MISSED" if c.text and c.text.startswith(">") else ""
                else:
                    r = lcheck(c.value, s.value if s is not None else None, n)
                    mark = "" if r is None else ("met" if r else "MISSED")
        else:
            mark = target_mark(key, check, c, n, figs_cell)
        rows.append([label, c.show() if c else "n/a", s.show() if s else "n/a",
                     ratio_text(key, c, s, figs_cell), target, mark])
    out = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    out += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(out)


# The phases, in the order they run (--only picks some; convergence always
# runs, as every other phase starts from a converged mesh).
PHASES = ["convergence", "false", "propagation", "footprint", "wrk", "crash", "silent", "leave"]
FAULTS = {"crash", "silent", "leave"}


# ---------------------------------------------------------------------------
# Setup helpers


def find_binary(arg):
    if arg:
        if not os.access(arg, os.X_OK):
            raise BenchError(f"--binary {arg} is not an executable")
        return arg
    cands = [os.path.join(REPO, "target", "release", "aios-cell")]
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "aios-cell"))
    cands.append(os.path.join(REPO, "target", "debug", "aios-cell"))
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", "aios-cell"))
    for c in cands:
        if os.access(c, os.X_OK):
            if os.sep + "debug" + os.sep in c:
                log(f"warning: using a DEBUG build ({c}); build with `cargo build --release` "
                    "for real numbers")
            return c
    raise BenchError("no aios-cell binary: run `cargo build --release` or pass --binary")


def find_static(binary, build):
    """The baseline example next to the cell binary, built with the same
    target dir and profile when missing (and allowed)."""
    bindir = os.path.dirname(os.path.abspath(binary))
    exe = os.path.join(bindir, "examples", "static_http")
    if os.access(exe, os.X_OK):
        return exe
    src = os.path.join(REPO, "examples", "static_http.rs")
    if not os.path.exists(src):
        log("baseline: no examples/static_http.rs; the /health ratio will read n/a")
        return None
    if not build:
        log(f"baseline: {exe} not built (and building is off); the ratio will read n/a")
        return None
    profile = os.path.basename(bindir)
    cmd = ["cargo", "build", "--example", "static_http"] + (["--release"] if profile == "release" else [])
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.dirname(bindir))
    log(f"baseline: building with `{' '.join(cmd)}` (CARGO_TARGET_DIR={env['CARGO_TARGET_DIR']})")
    r = subprocess.run(cmd, cwd=REPO, env=env, timeout=1800)
    if r.returncode != 0 or not os.access(exe, os.X_OK):
        log("baseline: build failed; the ratio will read n/a")
        return None
    return exe


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ""
    try:
        with open("/proc/loadavg") as f:
            load = f"; load average at start {f.read().split()[0]}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}){mem}, Linux {os.uname().release}{load}"


def versions(binary, serf, wrk):
    out = {}
    r = run([binary, "--version"], check=False)
    out["aios-cell"] = (r.stdout.strip() or r.stderr.strip()) + f" ({binary})"
    if serf:
        r = run([serf, "version"], check=False)
        first = (r.stdout.strip().splitlines() or ["?"])[0]
        d = run(["dpkg-query", "-W", "-f=${Version}", "serf"], check=False)
        out["serf"] = f"Debian package {d.stdout.strip() or '?'} (binary says `{first}`)"
    else:
        out["serf"] = "not installed"
    if wrk:
        d = run(["dpkg-query", "-W", "-f=${Version}", "wrk"], check=False)
        out["wrk"] = d.stdout.strip() or "installed"
    else:
        out["wrk"] = "not installed"
    out["python"] = sys.version.split()[0]
    # Read-only: which source the binary most likely came from.
    rev = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml",
                 "Cargo.lock"], check=False).stdout.strip()
    mtime = datetime.datetime.fromtimestamp(os.path.getmtime(binary), datetime.timezone.utc)
    then = run(["git", "-C", REPO, "log", "-1", "--format=%h", f"--until={mtime.isoformat()}"],
               check=False).stdout.strip()
    newest_src = max((os.path.getmtime(os.path.join(d, f))
                      for d, _, fs in os.walk(os.path.join(REPO, "src")) for f in fs), default=0)
    stale = " (src/ has changed since: rebuild for current numbers)" if newest_src > os.path.getmtime(binary) else ""
    out["source"] = (f"binary built {mtime.strftime('%Y-%m-%d %H:%M UTC')}, after commit "
                     f"{then or '?'}{stale}; HEAD at run time {rev or '?'}"
                     f"{' with uncommitted changes in src/' if dirty else ''}")
    return out


def competing_load():
    """Names of CPU-heavy processes that are not ours (builds, mostly): they
    make every figure noisier, so the results say when they ran."""
    heavy = {"rustc", "cargo", "cc1", "cc1plus", "ld", "lld", "clang", "node", "wrk"}
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in heavy:
            found.add(comm)
    return sorted(found)


def pick_prefix(taken_nets):
    existing = run(["ip", "netns", "list"]).stdout
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(100):
        p = "b" + "".join(rng.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(4))
        a, b = rng.randint(100, 250), rng.randint(0, 255)
        if p not in existing and (a, b) not in taken_nets:
            taken_nets.add((a, b))
            return p, a, b
    raise BenchError("cannot find a free namespace prefix")


# ---------------------------------------------------------------------------


# The waits' defaults, per N: (option, at N <= 50, per host above that).
# Membership spreads by gossip over bounded connections, so its rounds grow
# with log N, but every host shares the same 2 cores: the larger N, the
# slower each round. A value given on the command line is used as is.
TIMEOUTS = {
    "converge_timeout": (90.0, 1.0),   # N=100: 150 s (the floor), N=200: 200 s
    "event_timeout": (10.0, 0.1),      # N=200: 20 s
    "crash_timeout": (30.0, 0.25),     # N=200: 50 s
    "silent_timeout": (60.0, 0.4),     # N=200: 80 s
    "leave_timeout": (15.0, 0.1),      # N=200: 20 s
}
LARGE_N = 50
CONVERGE_FLOOR_LARGE = 150.0


def opts_for(opts, n):
    """A copy of the options with every unset timeout resolved for this N."""
    o = copy.copy(opts)
    for key, (base, per_host) in TIMEOUTS.items():
        if getattr(o, key) is None:
            v = base if n <= LARGE_N else max(base, per_host * n)
            if key == "converge_timeout" and n > LARGE_N:
                v = max(v, CONVERGE_FLOOR_LARGE)
            setattr(o, key, v)
    # Reopening N event streams (N snapshots of N rows) after the idle window.
    o.reopen_timeout = max(10.0, n / 5.0)
    return o


def bench_size(n, opts, binary, static_bin, taken, notes):
    opts = opts_for(opts, n)
    if n > LARGE_N:
        log(f"N={n}: timeouts converge {opts.converge_timeout:g} s, event {opts.event_timeout:g} s, "
            f"crash {opts.crash_timeout:g} s, silent {opts.silent_timeout:g} s, "
            f"leave {opts.leave_timeout:g} s")
    prefix, a, b = pick_prefix(taken)
    lab = Lab(n, prefix, a, b)
    feed = Feed()
    figs_cell, figs_serf = {}, {}
    workdir = REAPER.tmpdir(f"aios-bench-{prefix}-", keep=opts.keep_logs)
    cell_ok = False
    try:
        lab.create()
        if opts.loss:
            lab.set_loss(opts.loss)
        want = opts.phases
        # --- aios-cell
        poller = Poller(lab, feed, os.path.join(workdir, "poller.log"))
        cells = CellSide(lab, feed, binary, workdir, poller)
        suite = Suite(cells, lab, feed, opts, notes)
        try:
            if suite.convergence():
                cell_ok = True
                if "false" in want:
                    suite.false_failures()
                if "propagation" in want:
                    suite.propagation()
                reopened = True
                if "footprint" in want or "wrk" in want:
                    # Idle means nobody watching: close the event streams (their
                    # keep-alives would cross the bridge) for the window.
                    for i in suite.hosts:
                        cells.observe_stop(i)
                    if "footprint" in want:
                        suite.footprint()
                    if "wrk" in want:
                        http_bench(opts, lab, poller, suite.figs, notes, static_bin)
                    for i in suite.hosts:
                        cells.follow(i, retry_for=5.0)
                    reopened = suite.wait_converged(opts.reopen_timeout)
                if not reopened:
                    suite.note("event streams did not reopen with everyone converged")
                elif want & FAULTS:
                    suite.faults()
        except (BenchError, subprocess.TimeoutExpired, OSError) as e:
            suite.note(f"suite aborted: {e}")
        finally:
            figs_cell = suite.figs
            if cells.closed:
                whys = sorted({w or "?" for _, w in cells.closed})
                suite.note(f"{len(cells.closed)} event streams ended unasked and were reopened "
                           f"({'; '.join(whys)[:300]})")
            cells.stop_all()
            cells.close()
            poller.close()
        # --- Serf
        if opts.serf:
            time.sleep(1.0)  # let the last cell traffic drain
            serf = SerfSide(lab, feed, opts.serf, workdir, f"{prefix}n{n}")
            ssuite = Suite(serf, lab, feed, opts, notes)
            try:
                if ssuite.convergence():
                    if "false" in want:
                        ssuite.false_failures()
                    if "propagation" in want:
                        ssuite.propagation()
                    if "footprint" in want:
                        ssuite.footprint()
                    if want & FAULTS:
                        ssuite.faults()
            except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                ssuite.note(f"suite aborted: {e}")
            finally:
                figs_serf = ssuite.figs
                serf.stop_all()
                serf.close()
        else:
            figs_serf = {}
    finally:
        REAPER.kill_all()
        lab.destroy()
        if opts.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return figs_cell, figs_serf, cell_ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2,5,20,50", help="comma list of N (default 2,5,20,50)")
    ap.add_argument("--updates", type=int, default=20, help="propagation samples (default 20)")
    ap.add_argument("--window", type=float, default=30.0, help="idle footprint window, s (default 30)")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="quiet time before the footprint window, s (default 5)")
    ap.add_argument("--binary", help="aios-cell binary (default target/release, else target/debug)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="results file")
    ap.add_argument("--smoke", action="store_true",
                    help="N=3, 5 updates, 5 s window, short timeouts; for CI")
    ap.add_argument("--no-serf", action="store_true", help="skip the Serf side")
    ap.add_argument("--no-build", action="store_true",
                    help="never build the static_http baseline (its ratio reads n/a if missing)")
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--wrk-conns", type=int, default=64)
    ap.add_argument("--converge-timeout", type=float, default=None,
                    help="also the wait after each repair (default 90 s up to N=50: long enough "
                         "to see whether a stuck mesh heals at the next mDNS round; above, "
                         "max(150, N) s)")
    ap.add_argument("--event-timeout", type=float, default=None,
                    help="per propagation update (default 10 s; above N=50, max(10, N/10) s)")
    ap.add_argument("--crash-timeout", type=float, default=None,
                    help="default 30 s; above N=50, max(30, N/4) s")
    ap.add_argument("--silent-timeout", type=float, default=None,
                    help="default 60 s; above N=50, max(60, 0.4 N) s")
    ap.add_argument("--leave-timeout", type=float, default=None,
                    help="default 15 s; above N=50, max(15, N/10) s")
    ap.add_argument("--keep-logs", action="store_true", help="keep the per-run log dirs")
    ap.add_argument("--loss", type=int, default=0, metavar="PERMILLE",
                    help="drop PERMILLE/1000 at random in both hooks of every host's eth0 "
                         "(nftables), for both systems: 25 is ~5 %% one-way loss, 50 ~10 %%; "
                         "adds the false-failure window (default 0: a clean LAN)")
    ap.add_argument("--false-window", type=float, default=600.0, metavar="SECONDS",
                    help="false failures: how long each system runs with every node up "
                         "after convergence (default 600 s; runs with --loss or --only false)")
    ap.add_argument("--only", metavar="PHASES",
                    help="comma list of the phases to run, of " + ",".join(PHASES)
                         + " (convergence always runs; default: all, with false only under --loss)")
    opts = ap.parse_args()

    if opts.smoke:
        opts.sizes = "3"
        opts.updates = 5
        opts.window = 5.0
        opts.settle = 1.0
        opts.wrk_duration = 2
        opts.converge_timeout = 20.0
        opts.event_timeout = 5.0
        opts.crash_timeout = 10.0
        opts.silent_timeout = 20.0
        opts.leave_timeout = 10.0
    try:
        sizes = [int(x) for x in opts.sizes.split(",") if x.strip()]
    except ValueError:
        ap.error("--sizes takes a comma list of integers")
    if not sizes or min(sizes) < 2 or max(sizes) > 250:
        ap.error("each N must be within 2..250")
    if opts.updates < 1 or opts.window <= 0:
        ap.error("--updates must be >= 1 and --window > 0")
    if not 0 <= opts.loss <= 1000:
        ap.error("--loss takes a per mille value within 0..1000")
    if opts.false_window <= 0:
        ap.error("--false-window must be > 0")
    if opts.only:
        want = {x.strip() for x in opts.only.split(",") if x.strip()}
        bad = want - set(PHASES)
        if bad:
            ap.error(f"--only: unknown phase(s) {', '.join(sorted(bad))}; "
                     f"choose from {','.join(PHASES)}")
        opts.phases = want | {"convergence"}
    else:
        opts.phases = set(PHASES) - (set() if opts.loss else {"false"})
    if opts.loss and not shutil.which("nft"):
        sys.exit("--loss needs nftables (`nft`; apt-get install nftables)")
    if os.geteuid() != 0:
        sys.exit("run as root: the harness creates network namespaces")
    if not shutil.which("ip"):
        sys.exit("iproute2 (`ip`) is required")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)

    started = time.monotonic()
    wall = datetime.datetime.now(datetime.timezone.utc)
    notes, results, failed_sizes = [], [], []
    try:
        binary = find_binary(opts.binary)
        opts.serf = None if opts.no_serf else shutil.which("serf")
        if not opts.serf and not opts.no_serf:
            log("serf is not installed (apt-get install serf): its column reads n/a")
        opts.wrk = shutil.which("wrk")
        if not opts.wrk:
            log("wrk is not installed (apt-get install wrk): the /health rows read n/a")
        static_bin = (find_static(binary, build=not (opts.no_build or opts.smoke))
                      if opts.wrk and "wrk" in opts.phases else None)
        vers = versions(binary, opts.serf, opts.wrk)
        vers["machine"] = machine_info()
        taken = set()
        for n in sizes:
            log(f"=== N={n} ===")
            busy = competing_load()
            if busy:
                notes.append(f"N={n}: other CPU-heavy processes were running at the start: "
                             f"{', '.join(busy)} (figures are noisier)")
            fc, fs, ok = bench_size(n, opts, binary, static_bin, taken, notes)
            busy = competing_load()
            if busy:
                notes.append(f"N={n}: other CPU-heavy processes were running at the end: "
                             f"{', '.join(busy)}")
            if not ok:
                failed_sizes.append(n)
            results.append((n, fc, fs))
            print(f"\n## {heading(n, opts)}\n\n{table(n, fc, fs, opts.loss)}\n", flush=True)
    finally:
        REAPER.cleanup()
    took = time.monotonic() - started
    write_results(opts, wall, took, vers, sizes, results, notes, binary, static_bin)
    log(f"done in {took:.0f} s; wrote {opts.out}")
    if failed_sizes:
        log(f"aios-cell did not converge at N={failed_sizes}")
        sys.exit(1)


def write_results(opts, wall, took, vers, sizes, results, notes, binary, static_bin):
    lines = [
        "# aios-cell vs HashiCorp Serf: benchmark results",
        "",
        "Written by `bench/run.py` (see [README.md](README.md) for what each figure means).",
        "",
        f"- date: {wall.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {vers['machine']}",
        f"- aios-cell: {vers['aios-cell']}; {vers['source']}",
        f"- Serf: {vers['serf']}",
        f"- wrk: {vers['wrk']}; static baseline: {static_bin or 'n/a'}",
        f"- python: {vers['python']}",
        f"- command: `python3 bench/run.py {' '.join(sys.argv[1:])}`",
        f"- N: {', '.join(map(str, sizes))}; propagation samples: {opts.updates}; "
        f"idle window: {opts.window:g} s after {opts.settle:g} s settling; "
        f"wrk: {opts.wrk_threads} threads, {opts.wrk_conns} connections, {opts.wrk_duration} s",
        f"- whole run took {took:.0f} s",
        "",
        "Ratio is aios-cell / Serf (below 1: the cell is faster or smaller), except for",
        "`/health`, where it is aios-cell / the static axum handler. `met` / `MISSED`",
        "compare with issue 3's targets, which are set for N=20 (and N=50 convergence).",
        "",
    ]
    if opts.loss or opts.only:
        lines[-1:-1] = [
            f"Phases run: {', '.join(x for x in PHASES if x in opts.phases)}."
            + (f" Lossy LAN: every host drops {opts.loss}/1000 at random in both hooks of its "
               f"`eth0` (nftables), ~{loss_pct(opts.loss):.1f} % one-way loss, for both systems; "
               f"`met` / `MISSED` then compare with issue 13's targets." if opts.loss else "")
            + (f" False failures: each system ran {opts.false_window:g} s after convergence "
               "with every node up." if "false" in opts.phases else ""),
            ""]
    for n, fc, fs in results:
        lines += [f"## {heading(n, opts)}", "", table(n, fc, fs, opts.loss), ""]
    if notes:
        lines += ["## Notes from the run", ""] + [f"- {x}" for x in notes] + [""]
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
