//! Driving `aios-cell` processes in network namespaces (see netns.rs) the
//! way an operator would: start cells, and query them with the binary's
//! own client verbs (`aios-cell peers --json`) run inside their hosts.
//! Include with `#[path = "common/cells.rs"] mod cells;` next to `netns`.

// Each test that includes this module uses a different part of it.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_aios-cell");
/// How often [`wait_for`] polls.
pub(crate) const POLL: Duration = Duration::from_millis(100);

pub(crate) struct Cell {
    pub(crate) name: String,
    pub(crate) host: usize,
    pub(crate) proc: usize,
    pub(crate) peer_id: String,
}

/// Removes what the test's own environment could slip into a cell or client:
/// other `AIOS_*` settings, and proxies (reqwest would send the client's
/// requests for a namespace address to a proxy).
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("AIOS_") || k.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(&*k);
        }
    }
}

pub(crate) fn api(lan: &netns::Lan, host: usize) -> String {
    format!("http://{}:8000", lan.addr(host))
}

/// `aios-cell <verb...> --api <host's API> --json`, run inside the host.
pub(crate) fn client(lan: &netns::Lan, host: usize, verb: &[&str]) -> Command {
    let mut cmd = lan.command(host, BIN);
    cmd.args(verb).args(["--api", &api(lan, host), "--json"]);
    scrub_env(&mut cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

pub(crate) fn parse(out: std::io::Result<Output>) -> Result<Value, String> {
    let out = out.map_err(|e| format!("cannot run the client: {e}"))?;
    // `health` prints the cell's JSON and exits 1 when it is degraded.
    if !out.status.success() && out.stdout.is_empty() {
        return Err(format!(
            "client {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!("client printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Runs `verb` against every host in `hosts` at once (one poll costs one
/// client start, not three in a row) and returns their answers in order.
pub(crate) fn query(
    lan: &netns::Lan,
    hosts: &[usize],
    verb: &[&str],
) -> Vec<Result<Value, String>> {
    let children: Vec<_> = hosts.iter().map(|&h| client(lan, h, verb).spawn()).collect();
    children
        .into_iter()
        .map(|c| match c {
            Ok(child) => parse(child.wait_with_output()),
            Err(e) => Err(format!("cannot run the client: {e}")),
        })
        .collect()
}

pub(crate) fn entry<'a>(peers: &'a Value, peer_id: &str) -> Option<&'a Value> {
    peers["peers"].as_array()?.iter().find(|p| p["peer_id"] == peer_id)
}

pub(crate) fn state_of(peers: &Value, peer_id: &str) -> Option<String> {
    entry(peers, peer_id).and_then(|p| p["state"].as_str()).map(str::to_owned)
}

/// Polls `/peers` of `cells` every [`POLL`] until `done(cell, answer)` holds
/// for all of them in one round; returns when that round's answers were in.
/// Panics after `within` with the last answers, or at once if a cell died.
/// `done` sees every answer of every round (it may assert on them).
pub(crate) fn wait_for(
    lan: &mut netns::Lan,
    cells: &[&Cell],
    what: &str,
    within: Duration,
    mut done: impl FnMut(&Cell, &Value) -> bool,
) -> Instant {
    let deadline = Instant::now() + within;
    let hosts: Vec<usize> = cells.iter().map(|c| c.host).collect();
    loop {
        let round = Instant::now();
        for c in cells {
            if let Err(e) = lan.running(c.proc) {
                panic!("while waiting for {what}: {e}");
            }
        }
        let answers = query(lan, &hosts, &["peers"]);
        let seen = Instant::now();
        let mut all = true;
        for (c, a) in cells.iter().zip(&answers) {
            // No short cut: `done` must see every answer.
            all &= a.as_ref().is_ok_and(|v| done(c, v));
        }
        if all {
            return seen;
        }
        if seen >= deadline {
            let mut report = String::new();
            for (c, a) in cells.iter().zip(&answers) {
                let a = match a {
                    Ok(v) => format!("{v:#}"),
                    Err(e) => e.clone(),
                };
                report.push_str(&format!("\n{} /peers: {a}", c.name));
            }
            panic!(
                "timed out after {within:?} waiting for {what}{report}\n\nnetwork:\n{}",
                lan.diagnostics()
            );
        }
        std::thread::sleep(POLL.saturating_sub(round.elapsed()));
    }
}

/// The peer id the cell will have: `aios-cell id` creates the identity in
/// the data dir the cell then uses (no network involved).
pub(crate) fn peer_id_for(data_dir: &std::path::Path) -> String {
    let mut cmd = Command::new(BIN);
    scrub_env(&mut cmd);
    let out = cmd.arg("id").env("AIOS_DATA_DIR", data_dir).output().expect("run aios-cell id");
    assert!(out.status.success(), "aios-cell id: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8 peer id");
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// Starts a cell named `name` on `host` with mDNS on and no peers, its data
/// in `home/data`, plus `extra` environment; returns its process index.
pub(crate) fn spawn_cell(
    lan: &mut netns::Lan,
    host: usize,
    name: &str,
    home: &std::path::Path,
    extra: &[(&str, &std::ffi::OsStr)],
) -> usize {
    let mut cmd = lan.command(host, BIN);
    scrub_env(&mut cmd);
    cmd.arg("run")
        .env("AIOS_MDNS", "true")
        .env("AIOS_CELL_ID", name)
        .env("AIOS_DATA_DIR", home.join("data"))
        .env("AIOS_HTTP_ADDR", "0.0.0.0:8000")
        .env("AIOS_METRICS_ADDR", "0.0.0.0:9091")
        .env("AIOS_P2P_PORT", "8001")
        // Point the default config file lookup at an empty dir, so a
        // config file of the machine's user cannot configure peers.
        .env("XDG_CONFIG_HOME", home);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,aios_cell=debug");
    }
    lan.spawn(name, cmd).expect("start a cell")
}

/// A cell's home dir (its data dir is `home/data`), created.
pub(crate) fn cell_home(lan: &netns::Lan, name: &str) -> std::path::PathBuf {
    let home = lan.dir().join(name);
    std::fs::create_dir_all(home.join("data")).expect("cell dir");
    home
}

/// Starts one cell per host, mDNS on and no peers (zero configuration):
/// the cells, when the first was started, and how long starting all took.
pub(crate) fn start_cells(lan: &mut netns::Lan, n: usize) -> (Vec<Cell>, Instant, Duration) {
    let mut prepared = Vec::new();
    for host in 0..n {
        let name = format!("cell{}", host + 1);
        let home = cell_home(lan, &name);
        let peer_id = peer_id_for(&home.join("data"));
        prepared.push((name, host, home, peer_id));
    }
    let started = Instant::now();
    let mut cells = Vec::new();
    for (name, host, home, peer_id) in prepared {
        let proc = spawn_cell(lan, host, &name, &home, &[]);
        cells.push(Cell { name, host, proc, peer_id });
    }
    (cells, started, started.elapsed())
}

/// Waits until every cell in `cells` sees all the others alive and
/// connected (see [`sees_all_alive`]); returns when it did.
pub(crate) fn wait_converged(lan: &mut netns::Lan, cells: &[Cell], within: Duration) -> Instant {
    let everyone: Vec<&Cell> = cells.iter().collect();
    let what = format!("the {} cells to converge", cells.len());
    wait_for(lan, &everyone, &what, within, |c, v| sees_all_alive(cells, c, v))
}

/// Whether `v` (a /peers answer of cell `me`) lists every other cell in
/// `cells` as alive and connected under its own cell id.
pub(crate) fn sees_all_alive(cells: &[Cell], me: &Cell, v: &Value) -> bool {
    assert!(
        v["peer_id"] == me.peer_id.as_str(),
        "{} runs as {} but `aios-cell id` said {}",
        me.name,
        v["peer_id"],
        me.peer_id
    );
    cells.iter().filter(|o| o.host != me.host).all(|o| {
        entry(v, &o.peer_id).is_some_and(|e| {
            e["state"] == "alive" && e["connected"] == true && e["cell_id"] == o.name.as_str()
        })
    })
}

pub(crate) fn ms(d: Duration) -> u128 {
    d.as_millis()
}
