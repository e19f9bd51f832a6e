//! A LAN on one machine for integration tests: a hub network namespace with
//! a bridge, and host namespaces joined to it by veth pairs (the recipe in
//! /work/shared/netns.md). Processes started in the hosts see a real
//! multicast-capable Ethernet segment, so mDNS works between them, while
//! nothing touches the machine's own interfaces.
//!
//! Everything a [`Lan`] creates (namespaces, processes) is released by its
//! `Drop`, which also runs when a test panics; Ctrl-C / SIGTERM / SIGHUP of
//! the test binary are caught too, so no namespace is left behind.
//!
//! Linux only; needs root and iproute2. Include it with
//! `#[path = "common/netns.rs"] mod netns;`.

// Each test that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

/// Set to `1` (CI does) to make a missing prerequisite a failure, not a skip.
pub(crate) const REQUIRE_VAR: &str = "AIOS_REQUIRE_NETNS";
/// Set to `1` to print the processes' logs even when the test passes.
pub(crate) const LOGS_VAR: &str = "AIOS_TEST_LOGS";

/// What a signal handler must release if the test binary is interrupted
/// before the guards' `Drop` runs: one entry per live [`Lan`].
#[derive(Default)]
struct Resources {
    pids: Vec<u32>,
    namespaces: Vec<String>,
}

static LIVE: Mutex<BTreeMap<u32, Resources>> = Mutex::new(BTreeMap::new());
static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

fn live() -> MutexGuard<'static, BTreeMap<u32, Resources>> {
    // A panic elsewhere must not stop the cleanup.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `ip` binary: on PATH, or in the usual sbin dirs (CI's PATH may lack them).
pub(crate) fn ip_path() -> Option<&'static Path> {
    static IP: OnceLock<Option<PathBuf>> = OnceLock::new();
    IP.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
        dirs.into_iter().map(|d| d.join("ip")).find(|p| p.is_file())
    })
    .as_deref()
}

/// Whether the effective uid is 0 (no libc here: read it from /proc).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").ok().is_some_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// Why namespaces cannot be used here, if they cannot.
pub(crate) fn missing_prerequisites() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    if ip_path().is_none() {
        return Some("iproute2's `ip` was not found".into());
    }
    None
}

/// Builds a LAN of `hosts` hosts for `test`, or says why it cannot: `None`
/// means "skip" (after printing why), unless `AIOS_REQUIRE_NETNS=1`, in
/// which case it panics. See [`Lan::new`] for `tag` and `octet`.
pub(crate) fn lan_or_skip(test: &str, tag: &str, octet: u8, hosts: usize) -> Option<Lan> {
    or_skip(test, None, || Lan::new(tag, octet, hosts))
}

/// [`Lan::routed`], or why it cannot be built (as [`lan_or_skip`]).
pub(crate) fn routed_or_skip(
    test: &str,
    tag: &str,
    octet: u8,
    (hosts_a, hosts_b): (usize, usize),
    nat: bool,
) -> Option<Lan> {
    let extra = (nat && nft_path().is_none()).then(|| "nftables' `nft` was not found".to_owned());
    or_skip(test, extra, || Lan::routed(tag, octet, hosts_a, hosts_b, nat))
}

fn or_skip(
    test: &str,
    missing: Option<String>,
    build: impl FnOnce() -> Result<Lan, String>,
) -> Option<Lan> {
    let required = std::env::var(REQUIRE_VAR).is_ok_and(|v| v.trim() == "1");
    let why = match missing_prerequisites().or(missing) {
        Some(why) => why,
        None => match build() {
            Ok(lan) => return Some(lan),
            // Root without CAP_SYS_ADMIN (an unprivileged container) ends here.
            Err(e) => format!("cannot create network namespaces: {e}"),
        },
    };
    assert!(
        !required,
        "{test}: {REQUIRE_VAR}=1 but this test cannot run: {why} (it needs root, iproute2 and nftables)"
    );
    eprintln!(
        "{test}: skipped: needs root, iproute2 and nftables ({why}); set {REQUIRE_VAR}=1 to fail instead"
    );
    None
}

/// Runs `ip` with `args`; an error carries the command and its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let ip = ip_path().ok_or("iproute2's `ip` was not found")?;
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {} ({})",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// `nft` on PATH or in the usual sbin dirs.
pub(crate) fn nft_path() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("nft")).find(|p| p.is_file())
}

/// Runs `program args` inside namespace `ns` and waits for it.
fn run_in(ns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<(), String> {
    let ip = ip_path().ok_or("iproute2's `ip` was not found")?;
    let program = program.as_ref();
    let out = Command::new(ip)
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} {}: {e}", program.to_string_lossy(), args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "in {ns}: {} {}: {}",
            program.to_string_lossy(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sends `signal` (a name such as `TERM` or `KILL`) to `pid` through the
/// shell's `kill` builtin: std can only send SIGKILL, and `sh` is
/// everywhere while /bin/kill is not.
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let out = Command::new("/bin/sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("kill -s {signal} {pid}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("kill -s {signal} {pid}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Kills every process and deletes every namespace in `res`, reporting
/// (not stopping at) failures.
fn release(res: Resources) {
    for pid in res.pids {
        let _ = send_signal(pid, "KILL");
    }
    for ns in res.namespaces.iter().rev() {
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("netns cleanup: {e}");
        }
    }
}

/// Catches SIGINT/SIGTERM/SIGHUP once per test binary: cleans up every live
/// LAN, then exits, since a signal would otherwise kill the binary without
/// running any `Drop`.
fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let spawned = std::thread::Builder::new().name("netns-cleanup".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let got: Result<&str, String> = rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
                let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
                let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => Ok("SIGINT"),
                    _ = term.recv() => Ok("SIGTERM"),
                    _ = hup.recv() => Ok("SIGHUP"),
                }
            });
            match got {
                Ok(sig) => {
                    eprintln!("netns: {sig}: removing the test namespaces before exiting");
                    let all = std::mem::take(&mut *live());
                    for res in all.into_values() {
                        release(res);
                    }
                    std::process::exit(130);
                }
                Err(e) => {
                    eprintln!("netns: cannot catch signals ({e}); Ctrl-C may leave namespaces")
                }
            }
        });
        match spawned {
            Ok(_) => match ready_rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("netns: cannot catch signals ({e})"),
                Err(e) => eprintln!("netns: signal handler not ready ({e})"),
            },
            Err(e) => eprintln!("netns: cannot start the signal thread ({e})"),
        }
    });
}

/// The kernel's IPv4 neighbour (ARP) table is one table for all network
/// namespaces, limited by the root namespace's gc_thresh3 (1024 by
/// default). When other namespaces on the machine fill it, no namespace
/// can add an entry: even multicast (mDNS) is dropped silently, and cells
/// never find each other. Returns (entries, gc_thresh3, table_fulls).
pub(crate) fn neighbour_table() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/net/stat/arp_cache").ok()?;
    let mut lines = stat.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (entries_col, fulls_col) = (col("entries")?, col("table_fulls")?);
    let rows: Vec<Vec<u64>> = lines
        .map(|l| l.split_whitespace().filter_map(|v| u64::from_str_radix(v, 16).ok()).collect())
        .collect();
    // `entries` is the table's total on every per-CPU row; the rest count per CPU.
    let entries = rows.first()?.get(entries_col).copied()?;
    let fulls = rows.iter().filter_map(|r| r.get(fulls_col)).sum();
    let thresh = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((entries, thresh, fulls))
}

/// A line about the neighbour table, loud when it is (nearly) full.
pub(crate) fn neighbour_table_report() -> Option<String> {
    let (entries, thresh, fulls) = neighbour_table()?;
    let mut r = format!(
        "kernel ARP table (shared by every namespace): {entries} entries, gc_thresh3 {thresh}, \
         {fulls} table-full events since boot"
    );
    if entries + 16 >= thresh {
        r += "\nWARNING: the ARP table is (nearly) full. When the kernel cannot free entries, \
              packets between namespaces (mDNS too) are dropped and cells never find each \
              other. Other namespaces on this machine fill it (see `ip netns list`; dmesg says \
              \"neighbor table overflow\"): stop them or raise \
              net.ipv4.neigh.default.gc_thresh3.";
    }
    Some(r)
}

struct Host {
    ns: String,
    veth: String,
    addr: Ipv4Addr,
    /// The hub namespace whose bridge the host's cable plugs into.
    hub: String,
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

/// A hub namespace with a bridge and hosts on `10.<octet>.<x>.0/24`, host
/// `i` (0-based) at `10.<octet>.<x>.<i+1>`. Owns the processes started in
/// it and a temp dir for their logs and data; all released on drop.
pub(crate) struct Lan {
    id: u32,
    prefix: String,
    hub: Option<String>,
    /// Every hub namespace (two for a routed layout).
    hubs: Vec<String>,
    /// The router namespace of a routed layout.
    router: Option<String>,
    hosts: Vec<Host>,
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Lan {
    /// Creates the namespaces. `tag` (1-3 letters) starts every name, then
    /// the pid and a per-process counter, so parallel runs and tests never
    /// share a name; `octet` is the test's own second octet of 10.0.0.0/8,
    /// and the third comes from the pid too.
    pub(crate) fn new(tag: &str, octet: u8, hosts: usize) -> Result<Lan, String> {
        if !(1..=250).contains(&hosts) {
            return Err(format!("{hosts} hosts: want 1..=250"));
        }
        install_signal_cleanup();
        if let Some(report) = neighbour_table_report().filter(|r| r.contains("WARNING")) {
            eprintln!("netns: {report}");
        }
        let (mut lan, x) = Lan::empty(tag, hosts, 254)?;
        // On an error the half-built LAN is dropped, which removes what exists.
        lan.build(octet, x, hosts)?;
        Ok(lan)
    }

    /// Two LANs joined by a router namespace that forwards unicast but not
    /// multicast (so mDNS stays on each LAN): LAN A's `hosts_a` hosts on
    /// `10.<octet>.<x>.0/24`, then LAN B's `hosts_b` on `10.<octet>.<x+1>.0/24`,
    /// host indexes running on from A to B; the router is `.254` on both and
    /// every host's default gateway. With `nat`, the router masquerades LAN
    /// B behind its LAN A address and drops connections opened from A to B
    /// (a home router); needs nftables (`nft`).
    pub(crate) fn routed(
        tag: &str,
        octet: u8,
        hosts_a: usize,
        hosts_b: usize,
        nat: bool,
    ) -> Result<Lan, String> {
        if hosts_a + hosts_b > 250 || hosts_a == 0 || hosts_b == 0 {
            return Err(format!("{hosts_a} + {hosts_b} hosts: want 1..=250 in all, both > 0"));
        }
        install_signal_cleanup();
        let (mut lan, x) = Lan::empty(tag, hosts_a + hosts_b, 253)?;
        lan.build_routed(octet, x, hosts_a, hosts_b, nat)?;
        Ok(lan)
    }

    /// A LAN with no namespaces yet, registered for cleanup, and the third
    /// octet of its subnets (from the pid and the counter, below `spread`).
    fn empty(tag: &str, hosts: usize, spread: u64) -> Result<(Lan, u8), String> {
        let id = NEXT_LAN.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("{tag}{pid}-{id}");
        let longest_link = format!("{prefix}v{hosts}");
        if longest_link.len() > 15 {
            return Err(format!("link name {longest_link} is over 15 characters; shorten the tag"));
        }
        let x = ((pid as u64 + u64::from(id) * 97) % spread + 1) as u8;
        let dir = tempfile::Builder::new()
            .prefix(&format!("aios-{prefix}-"))
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        live().insert(id, Resources::default());
        let lan = Lan {
            id,
            prefix,
            hub: None,
            hubs: Vec::new(),
            router: None,
            hosts: Vec::new(),
            procs: Vec::new(),
            dir,
        };
        Ok((lan, x))
    }

    fn build_routed(
        &mut self,
        octet: u8,
        x: u8,
        hosts_a: usize,
        hosts_b: usize,
        nat: bool,
    ) -> Result<(), String> {
        let p = self.prefix.clone();
        let router = format!("{p}rt");
        self.add_ns(&router)?;
        self.router = Some(router.clone());
        ip(&["-n", &router, "link", "set", "lo", "up"])?;
        let mut first = 1;
        for (side, count, third) in [("a", hosts_a, x), ("b", hosts_b, x + 1)] {
            let hub = format!("{p}hub{side}");
            self.add_ns(&hub)?;
            self.hubs.push(hub.clone());
            ip(&["-n", &hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
            ip(&["-n", &hub, "link", "set", "br0", "up"])?;
            // The router's leg on this LAN.
            let leg = format!("eth{side}");
            let port = format!("{p}r{side}");
            ip(&[
                "link", "add", &port, "netns", &hub, "type", "veth", "peer", "name", &leg, "netns",
                &router,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &router, "link", "set", &leg, "up"])?;
            let gw = Ipv4Addr::new(10, octet, third, 254);
            ip(&["-n", &router, "addr", "add", &format!("{gw}/24"), "dev", &leg])?;
            for i in first..first + count {
                let ns = format!("{p}h{i}");
                let veth = format!("{p}v{i}");
                let addr = Ipv4Addr::new(10, octet, third, (i - first + 1) as u8);
                self.add_ns(&ns)?;
                self.hosts.push(Host {
                    ns: ns.clone(),
                    veth: veth.clone(),
                    addr,
                    hub: hub.clone(),
                });
                ip(&[
                    "link", "add", &veth, "netns", &hub, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                ip(&["-n", &hub, "link", "set", &veth, "master", "br0", "multicast", "on", "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                ip(&["-n", &ns, "link", "set", "eth0", "multicast", "on", "up"])?;
                ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
                ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
                ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
            }
            first += count;
        }
        // Forward unicast between the legs (a new namespace does not).
        run_in(&router, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        if nat {
            let lan_b = format!("10.{octet}.{}.0/24", x + 1);
            let rules = format!(
                "table ip aiosnat {{\n\
                   chain post {{ type nat hook postrouting priority srcnat; policy accept;\n\
                     ip saddr {lan_b} oifname \"etha\" masquerade\n\
                   }}\n\
                   chain forwarding {{ type filter hook forward priority filter; policy accept;\n\
                     ct state established,related accept\n\
                     iifname \"etha\" oifname \"ethb\" drop\n\
                   }}\n\
                 }}\n"
            );
            let file = self.dir().join("nat.nft");
            std::fs::write(&file, rules).map_err(|e| format!("{}: {e}", file.display()))?;
            let nft = nft_path().ok_or("nftables' `nft` was not found (apt install nftables)")?;
            run_in(&router, nft, &["-f", &file.to_string_lossy()])?;
        }
        Ok(())
    }

    /// The router's address on the LAN of `host` (its default gateway), for
    /// a routed layout.
    pub(crate) fn gateway(&self, host: usize) -> Ipv4Addr {
        let [a, b, c, _] = self.hosts[host].addr.octets();
        Ipv4Addr::new(a, b, c, 254)
    }

    /// Takes the router's leg on LAN `side` (`a` or `b`) down or up: the
    /// LANs lose each other, each LAN keeps working.
    pub(crate) fn set_router_leg(&self, side: &str, up: bool) -> Result<(), String> {
        let router = self.router.as_deref().ok_or("not a routed layout")?;
        ip(&["-n", router, "link", "set", &format!("eth{side}"), if up { "up" } else { "down" }])
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        // Tracked only once created: never delete a namespace we did not make.
        live().entry(self.id).or_default().namespaces.push(name.to_owned());
        Ok(())
    }

    fn build(&mut self, octet: u8, x: u8, hosts: usize) -> Result<(), String> {
        let p = self.prefix.clone();
        let hub = format!("{p}hub");
        self.add_ns(&hub)?;
        self.hub = Some(hub.clone());
        // mcast_snooping 0: the bridge floods multicast (mDNS) to every port
        // instead of waiting for IGMP reports that nobody sends.
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let ns = format!("{p}h{i}");
            let veth = format!("{p}v{i}");
            let addr = Ipv4Addr::new(10, octet, x, i as u8);
            self.add_ns(&ns)?;
            self.hosts.push(Host { ns: ns.clone(), veth: veth.clone(), addr, hub: hub.clone() });
            ip(&[
                "link", "add", &veth, "netns", &hub, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &veth, "master", "br0", "multicast", "on", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "multicast", "on", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            // Multicast needs a route: a host namespace has no default route.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// The namespace name of host `i`.
    pub(crate) fn ns(&self, host: usize) -> &str {
        &self.hosts[host].ns
    }

    /// Host `i`'s address on the LAN.
    pub(crate) fn addr(&self, host: usize) -> Ipv4Addr {
        self.hosts[host].addr
    }

    /// A temp dir for this LAN's files, removed on drop.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ip netns exec <host's ns> <program>`: add args and env, then run it.
    pub(crate) fn command(&self, host: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ip = ip_path().expect("ip exists once a Lan does");
        let mut cmd = Command::new(ip);
        cmd.args(["netns", "exec", self.ns(host)]).arg(program).stdin(Stdio::null());
        cmd
    }

    /// Starts `cmd` (from [`Lan::command`]) as a long-running process named
    /// `name`, its stdout and stderr going to `<dir>/<name>.log`. Returns
    /// its handle for the other `proc` methods.
    pub(crate) fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<usize, String> {
        let log = self.dir().join(format!("{name}.log"));
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let child =
            cmd.stdout(file).stderr(file2).spawn().map_err(|e| format!("starting {name}: {e}"))?;
        // `ip netns exec` execs the program, so this pid is the program's.
        live().entry(self.id).or_default().pids.push(child.id());
        self.procs.push(Proc { name: name.to_owned(), child, log, status: None });
        Ok(self.procs.len() - 1)
    }

    /// The process's pid.
    pub(crate) fn pid(&self, proc: usize) -> u32 {
        self.procs[proc].child.id()
    }

    fn reap(&mut self, proc: usize) -> Option<ExitStatus> {
        let p = &mut self.procs[proc];
        if p.status.is_none() {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.status = Some(status);
                let pid = p.child.id();
                if let Some(res) = live().get_mut(&self.id) {
                    res.pids.retain(|&x| x != pid);
                }
            }
        }
        p.status
    }

    /// `Err` with the exit status if the process has exited.
    pub(crate) fn running(&mut self, proc: usize) -> Result<(), String> {
        match self.reap(proc) {
            None => Ok(()),
            Some(status) => Err(format!("{} exited: {status}", self.procs[proc].name)),
        }
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`, `STOP`) to a running process.
    pub(crate) fn signal(&mut self, proc: usize, signal: &str) -> Result<(), String> {
        self.running(proc)?;
        // Not reaped yet, so the pid cannot have been reused.
        send_signal(self.pid(proc), signal)
    }

    /// Waits up to `within` for the process to exit; its status if it did.
    pub(crate) fn wait(&mut self, proc: usize, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.reap(proc) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's output so far.
    pub(crate) fn log(&self, proc: usize) -> String {
        let p = &self.procs[proc];
        std::fs::read(&p.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", p.log.display()))
    }

    /// Prints every process's output to stderr.
    pub(crate) fn print_logs(&self) {
        for (i, p) in self.procs.iter().enumerate() {
            eprintln!("----- {} (pid {}) log -----\n{}", p.name, p.child.id(), self.log(i));
        }
        if !self.procs.is_empty() {
            eprintln!("----- end of logs -----");
        }
    }

    /// The LAN's state for a failure message: bridge ports (with their STP
    /// state), and each host's links, addresses, routes and neighbours.
    pub(crate) fn diagnostics(&self) -> String {
        let Some(ip) = ip_path() else { return String::new() };
        let run = |args: &[&str]| -> String {
            match Command::new(ip).args(args).stdin(Stdio::null()).output() {
                Ok(o) => format!(
                    "$ ip {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("$ ip {}: {e}\n", args.join(" ")),
            }
        };
        let mut out = neighbour_table_report().map(|r| r + "\n").unwrap_or_default();
        if let Some(hub) = &self.hub {
            out += &run(&["-n", hub, "-d", "link", "show"]);
        }
        for hub in &self.hubs {
            out += &run(&["-n", hub, "-d", "link", "show"]);
        }
        if let Some(router) = &self.router {
            out += &run(&["-n", router, "addr", "show"]);
            out += &run(&["-n", router, "route", "show"]);
        }
        for h in &self.hosts {
            out += &run(&["-n", &h.ns, "-s", "link", "show", "eth0"]);
            out += &run(&["-n", &h.ns, "addr", "show", "eth0"]);
            out += &run(&["-n", &h.ns, "route", "show"]);
            out += &run(&["-n", &h.ns, "neigh", "show"]);
        }
        out
    }

    /// Makes host `i`'s link lossy: `permille` of the packets dropped at
    /// random as they enter and as they leave its `eth0` (nftables; this
    /// kernel has no netem), so with every host at K the loss between two
    /// hosts is about 2K per mille each way. 0 removes it. Loopback stays
    /// clean (the tests' own queries run inside each host).
    pub(crate) fn set_loss(&self, host: usize, permille: u32) -> Result<(), String> {
        let nft = nft_path().ok_or("nftables' `nft` was not found (Debian package nftables)")?;
        let ns = &self.hosts[host].ns;
        let _ = run_in(ns, &nft, &["delete", "table", "inet", "lossy"]);
        if permille == 0 {
            return Ok(());
        }
        let rules = format!(
            "table inet lossy {{\n\
             chain input {{ type filter hook input priority -300; iifname \"eth0\" numgen random mod 1000 < {permille} drop; }}\n\
             chain output {{ type filter hook output priority -300; oifname \"eth0\" numgen random mod 1000 < {permille} drop; }}\n}}\n"
        );
        let file = self.dir.path().join(format!("loss-{host}.nft"));
        std::fs::write(&file, rules).map_err(|e| format!("{}: {e}", file.display()))?;
        run_in(ns, &nft, &["-f", &file.to_string_lossy()])
    }

    /// Gives every host permanent ARP entries for every other host. The
    /// kernel's ARP table is one table for all namespaces, capped at
    /// gc_thresh3 (1024 by default) dynamic entries (see [`neighbour_table`]);
    /// a LAN of 30 hosts may need 30 × 29 of them, next to the other tests'
    /// LANs, and past the cap hosts stop finding each other. Permanent
    /// entries do not count against the cap. One `ip -batch` per host.
    pub(crate) fn static_arp(&self) -> Result<(), String> {
        let ipb = ip_path().ok_or("iproute2's `ip` was not found")?;
        let mut macs = Vec::new();
        for h in &self.hosts {
            let out = Command::new(ipb)
                .args(["-n", &h.ns, "-o", "link", "show", "eth0"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("ip -n {} link show eth0: {e}", h.ns))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mac = text
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .ok_or_else(|| format!("no MAC for eth0 in {}: {text}", h.ns))?;
            macs.push(mac.to_owned());
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let batch: String = self
                .hosts
                .iter()
                .zip(&macs)
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (o, mac))| {
                    format!("neigh replace {} lladdr {mac} dev eth0 nud permanent\n", o.addr)
                })
                .collect();
            let file = self.dir.path().join(format!("arp-{i}.batch"));
            std::fs::write(&file, batch).map_err(|e| format!("{}: {e}", file.display()))?;
            ip(&["-n", &h.ns, "-batch", &file.to_string_lossy()])?;
        }
        Ok(())
    }

    /// Takes host `i`'s cable out (or puts it back): its bridge port goes down.
    pub(crate) fn set_link(&self, host: usize, up: bool) -> Result<(), String> {
        let h = &self.hosts[host];
        ip(&["-n", &h.hub, "link", "set", &h.veth, if up { "up" } else { "down" }])
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Processes first: a namespace is only gone once nothing runs in it.
        for i in 0..self.procs.len() {
            if self.reap(i).is_none() {
                let _ = self.procs[i].child.kill();
                if self.wait(i, Duration::from_secs(5)).is_none() {
                    eprintln!("netns cleanup: {} did not die", self.procs[i].name);
                }
            }
        }
        // The logs explain a failure; AIOS_TEST_LOGS=1 shows them anyway.
        if std::thread::panicking() || std::env::var_os(LOGS_VAR).is_some_and(|v| v == "1") {
            self.print_logs();
        }
        let res = live().remove(&self.id).unwrap_or_default();
        let namespaces = res.namespaces.clone();
        release(res);
        // Say so loudly if anything survived, so a leak is never silent.
        if let Some(ip) = ip_path() {
            if let Ok(out) = Command::new(ip).args(["netns", "list"]).output() {
                let list = String::from_utf8_lossy(&out.stdout);
                for ns in namespaces {
                    if list.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())) {
                        eprintln!("netns cleanup: namespace {ns} is still there");
                    }
                }
            }
        }
    }
}
