"""What an idle cell's traffic is made of at N cells (issue 14): starts N
cells in bench/run.py's lab (namespaces, as root), waits for convergence and
then WAIT seconds, and counts for WINDOW seconds, in hosts 1, N/2 and N, the
packets in and out by kind (mDNS, other UDP: the beats, TCP) with nftables
counters in each host, and the /metrics counters that moved.

    sudo python3 bench/idle_breakdown.py N BINARY WAIT WINDOW

Host 1 also carries the harness's event streams (its poller runs there), and
the two /metrics scrapes of each host fall inside its window (~40 KB each at
200 cells): read hosts N/2 and N, less those scrapes."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diag

if len(sys.argv) != 5:
    sys.exit(__doc__)
n = int(sys.argv[1]); binary = sys.argv[2]; wait = float(sys.argv[3]); window = float(sys.argv[4])
RULES = """table inet cnt {
  chain in { type filter hook input priority -10; policy accept;
    udp dport 5353 counter comment "in mdns"
    udp sport 5353 counter comment "in mdns-src"
    meta l4proto udp udp dport != 5353 counter comment "in udp-other"
    meta l4proto tcp counter comment "in tcp"
  }
  chain out { type filter hook output priority -10; policy accept;
    udp dport 5353 counter comment "out mdns"
    meta l4proto udp udp dport != 5353 counter comment "out udp-other"
    meta l4proto tcp counter comment "out tcp"
  }
}"""
with diag.converged(n, binary, 200) as run:
    lab = run.lab
    print("converged", run.ok, flush=True)
    time.sleep(wait)
    hosts = [1, n // 2, n]
    for i in hosts:
        print(diag.netns(lab, i, "nft", "-f", "-", inp=RULES).stderr.strip())
    m0 = {i: diag.scrape(lab, i) for i in hosts}
    time.sleep(window)
    m1 = {i: diag.scrape(lab, i) for i in hosts}
    for i in hosts:
        print(f"--- host {i}, {window:.0f} s")
        out = diag.netns(lab, i, "nft", "list", "table", "inet", "cnt").stdout
        for line in out.splitlines():
            if "counter" in line:
                print("  ", line.strip())
        d = [(m1[i].get(k, 0) - v, k) for k, v in m0[i].items() if ("total" in k or "_count" in k)]
        for v, k in sorted(d, reverse=True)[:25]:
            if v > 0:
                print(f"   {v/window:10.2f}/s  {k}")
