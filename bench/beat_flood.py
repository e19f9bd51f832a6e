#!/usr/bin/env python3
"""Floods one cell's UDP beat port and measures what it costs (issue 17 item 4).

Root only; standard library only. Builds its own lab like bench/run.py: a hub
namespace with a bridge, three cell hosts (mDNS on, inside the namespaces
only) and one attacker host, on 10.231.7.0/24. Nothing is sent outside these
namespaces. Every loop is bounded in count and time; the namespaces and
processes are removed on exit (also on Ctrl-C / SIGTERM).

The flood, from the attacker host to cell 1's beat port (8002), at RATE
datagrams a second for SECONDS, in four equal parts:
  - garbage of the wrong length (1-64 bytes)       -> reason "length"
  - 17-byte datagrams, version 1, random sub id     -> "unknown_subscription"
  - real beats to cell 1, captured on the bridge (AF_PACKET in the hub) and
    replayed as they were                           -> "replayed"
  - the same with the MAC changed                   -> "bad_mac"
(without a captured beat the last two are random 17-byte datagrams.)

Reports cell 1's CPU during the flood (from /proc/PID/stat), whether every
cell kept every other alive (each /peers, polled every second from the
attacker host), and cell 1's aios_beats_dropped_total.

  sudo python3 bench/beat_flood.py --bin target/debug/aios-cell [--rate 20000] [--seconds 20]
"""

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

PREFIX = "bfl"
NET = "10.231.7"
CELLS = 3
ATTACKER = 4
BEAT_PORT = 8002

procs = []
namespaces = []
tmp = tempfile.mkdtemp(prefix="beat-flood-")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(argv, timeout=20, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


def ns(i):
    return f"{PREFIX}{i}"


def ip(i):
    return f"{NET}.{i}"


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    for n in reversed(namespaces):
        subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=15)
    namespaces.clear()
    subprocess.run(["rm", "-rf", tmp], timeout=30)


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


def lab():
    hub = f"{PREFIX}h"
    for n in [hub] + [ns(i) for i in range(1, ATTACKER + 1)]:
        if os.path.exists(f"/run/netns/{n}"):
            raise RuntimeError(f"namespace {n} exists: another run, or a leftover (ip netns del {n})")
    namespaces.append(hub)
    run(["ip", "netns", "add", hub])
    run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
    run(["ip", "-n", hub, "link", "set", "br0", "up"])
    for i in range(1, ATTACKER + 1):
        namespaces.append(ns(i))
        run(["ip", "netns", "add", ns(i)])
        run(["ip", "netns", "exec", ns(i), "sysctl", "-q", "-w",
             "net.ipv6.conf.all.router_solicitations=0", "net.ipv6.conf.default.router_solicitations=0"])
        run(["ip", "link", "add", f"{PREFIX}v{i}", "netns", hub, "type", "veth",
             "peer", "name", "eth0", "netns", ns(i)])
        run(["ip", "-n", hub, "link", "set", f"{PREFIX}v{i}", "master", "br0", "multicast", "on", "up"])
        run(["ip", "-n", ns(i), "link", "set", "lo", "up"])
        run(["ip", "-n", ns(i), "link", "set", "eth0", "multicast", "on", "up"])
        run(["ip", "-n", ns(i), "addr", "add", f"{ip(i)}/24", "dev", "eth0"])
        run(["ip", "-n", ns(i), "route", "add", "224.0.0.0/4", "dev", "eth0"])
    log(f"lab: {CELLS} cells and an attacker on {NET}.0/24")


def start_cells(binary):
    pids = []
    for i in range(1, CELLS + 1):
        d = os.path.join(tmp, f"c{i}")
        os.makedirs(d)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_")}
        env.update({
            "AIOS_CELL_ID": f"c{i}", "AIOS_DATA_DIR": os.path.join(d, "data"),
            "XDG_CONFIG_HOME": os.path.join(d, "config"), "XDG_DATA_HOME": os.path.join(d, "xdg"),
            "AIOS_MDNS": "true",
            "AIOS_HTTP_ADDR": "0.0.0.0:8000", "AIOS_METRICS_ADDR": "0.0.0.0:9091",
            "AIOS_P2P_PORT": "8001", "RUST_LOG": "aios_cell=info",
        })
        out = open(os.path.join(d, "log"), "w")
        p = subprocess.Popen(["ip", "netns", "exec", ns(i), binary, "run"], env=env,
                             stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        pids.append(p.pid)
    return pids


# Run inside the attacker host: GET a URL, bounded.
GET = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
except Exception as e:
    print(f"ERROR {e}")
"""

# Run inside the attacker host: poll every cell's /peers once a second for
# argv[1] seconds; one JSON line per poll.
POLL = """
import json, sys, time, urllib.request
end = time.monotonic() + float(sys.argv[1])
cells = sys.argv[2:]
for _ in range(int(float(sys.argv[1])) + 5):
    if time.monotonic() > end:
        break
    row = {"t": round(time.time(), 1)}
    for c in cells:
        try:
            v = json.load(urllib.request.urlopen(f"http://{c}:8000/peers", timeout=2))
            row[c] = {p.get("cell_id") or p["peer_id"][-6:]: p["state"] for p in v["peers"]}
        except Exception as e:
            row[c] = f"ERROR {e}"
    print(json.dumps(row), flush=True)
    time.sleep(1.0)
"""

# Run in cell 1's host: capture UDP datagrams that arrive for port 8002
# (IPv4 or IPv6) on eth0 for at most argv[1] seconds, up to 16; print their
# payloads as hex lines.
CAPTURE = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0)); s.settimeout(0.5)
got = 0
for _ in range(100000):
    if time.monotonic() > end or got >= 16:
        break
    try:
        f, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    if addr[2] != socket.PACKET_HOST:
        continue
    kind = f[12:14]
    if kind == b"\\x08\\x00" and len(f) > 34 and f[23] == 17:
        udp = f[14 + (f[14] & 15) * 4:]
    elif kind == b"\\x86\\xdd" and len(f) > 62 and f[20] == 17:
        udp = f[54:]
    else:
        continue
    if int.from_bytes(udp[2:4], "big") == 8002:
        print(udp[8:].hex(), flush=True); got += 1
"""

# Run inside the attacker host: the flood. argv: target, rate, seconds, beats (hex,...).
FLOOD = """
import os, random, socket, sys, time
target = (sys.argv[1], 8002); rate = int(sys.argv[2]); secs = float(sys.argv[3])
beats = [bytes.fromhex(h) for h in sys.argv[4].split(",") if h]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def garbage(): return os.urandom(random.choice([1, 8, 16, 18, 32, 64]))
def unknown(): return b"\\x01" + os.urandom(16)
def replay(): return random.choice(beats) if beats else unknown()
def bad_mac():
    if not beats: return unknown()
    b = bytearray(random.choice(beats)); b[16] ^= 0xff; return bytes(b)
kinds = [garbage, unknown, replay, bad_mac]
pool = [k() for k in kinds for _ in range(64)]
random.shuffle(pool)
sent = errors = 0; start = time.monotonic(); batch = max(1, rate // 100)
for tick in range(int(secs * 100) + 1):
    due = start + tick / 100
    now = time.monotonic()
    if now - start > secs + 2:
        break
    if due > now:
        time.sleep(due - now)
    for _ in range(batch):
        try:
            s.sendto(pool[sent % len(pool)], target); sent += 1
        except OSError:
            errors += 1
el = time.monotonic() - start
print(f"{sent} {errors} {el:.2f}")
"""


def in_ns(i, code, *args, timeout=30):
    return run(["ip", "netns", "exec", ns(i), "python3", "-c", code, *map(str, args)],
               timeout=timeout, check=False).stdout


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drops():
    text = in_ns(ATTACKER, GET, f"http://{ip(1)}:9091/metrics")
    out = {}
    for line in text.splitlines():
        if line.startswith("aios_beats_dropped_total{") or line.startswith("aios_beats_received_total"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def all_alive(view):
    """True when each cell lists the other two, alive."""
    ok = True
    for i in range(1, CELLS + 1):
        v = view.get(ip(i))
        others = {f"c{j}" for j in range(1, CELLS + 1) if j != i}
        if not isinstance(v, dict) or any(v.get(o) != "alive" for o in others):
            ok = False
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    a.rate = max(100, min(a.rate, 100000))
    a.seconds = max(1.0, min(a.seconds, 120.0))
    binary = os.path.abspath(a.bin)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lab()
    pids = start_cells(binary)
    cells = [ip(i) for i in range(1, CELLS + 1)]
    # Wait (bounded) for the mesh: every cell sees the others alive.
    t0 = time.monotonic()
    for _ in range(60):
        view = json.loads(in_ns(ATTACKER, POLL, 0.5, *cells).splitlines()[0])
        if all_alive(view):
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"the mesh did not form in 60 s: {view}")
    log(f"mesh of {CELLS} formed in {time.monotonic() - t0:.1f}s; letting beats start")
    time.sleep(5)
    beats = in_ns(1, CAPTURE, 5, timeout=15).split()
    beats = [b for b in beats if len(b) == 34]
    log(f"captured {len(beats)} real beat(s) to {ip(1)}")
    before = drops()
    idle0, w0 = cpu_seconds(pids[0]), time.monotonic()
    time.sleep(5)
    idle_cpu = (cpu_seconds(pids[0]) - idle0) / (time.monotonic() - w0)
    poll = subprocess.Popen(["ip", "netns", "exec", ns(ATTACKER), "python3", "-c", POLL,
                             str(a.seconds), *cells], stdout=subprocess.PIPE, text=True)
    procs.append(poll)
    c0, w0 = cpu_seconds(pids[0]), time.monotonic()
    log(f"flooding {ip(1)}:{BEAT_PORT} at {a.rate}/s for {a.seconds:.0f}s")
    flood = in_ns(ATTACKER, FLOOD, ip(1), a.rate, a.seconds, ",".join(beats),
                  timeout=a.seconds + 30).split()
    flood_cpu = (cpu_seconds(pids[0]) - c0) / (time.monotonic() - w0)
    rows = [json.loads(l) for l in poll.communicate(timeout=a.seconds + 30)[0].splitlines() if l.startswith("{")]
    time.sleep(2)
    after = drops()
    bad = [r for r in rows if not all_alive(r)]
    sent, errors, elapsed = (int(flood[0]), int(flood[1]), float(flood[2])) if len(flood) == 3 else (0, 0, 0.0)
    result = {
        "rate_asked": a.rate, "seconds": a.seconds, "sent": sent, "send_errors": errors,
        "elapsed_s": elapsed, "rate_sent": round(sent / elapsed) if elapsed else 0,
        "real_beats_captured": len(beats),
        "cell1_cpu_idle_pct": round(idle_cpu * 100, 1), "cell1_cpu_flood_pct": round(flood_cpu * 100, 1),
        "polls": len(rows), "polls_not_all_alive": len(bad), "first_bad": bad[:2],
        "drops": {k: after.get(k, 0) - before.get(k, 0) for k in after},
    }
    print(json.dumps(result, indent=2))
    return 0 if rows and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
