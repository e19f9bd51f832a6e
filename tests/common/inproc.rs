//! Cells started in this process on loopback with mDNS off, and what the
//! tests read of them. Include with `#[path = "common/inproc.rs"] mod inproc;`.

// Each test that includes this module uses a different part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use aios_cell::config::PeerAddr;
use aios_cell::{Cell, Config};

pub(crate) struct Node {
    pub(crate) cell: Cell,
    /// `http://<addr>` of its API.
    pub(crate) api: String,
    _dir: tempfile::TempDir,
}

/// Logs to the test output when `RUST_LOG` is set.
pub(crate) fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

pub(crate) async fn start(name: &str, peers: Vec<PeerAddr>) -> Node {
    start_with(name, peers, |_| {}).await
}

/// A loopback cell whose config `tweak` changes first.
pub(crate) async fn start_with(
    name: &str,
    peers: Vec<PeerAddr>,
    tweak: impl FnOnce(&mut Config),
) -> Node {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback(name, dir.path().to_path_buf());
    config.peers = peers;
    tweak(&mut config);
    let cell = Cell::start(config).await.unwrap();
    let api = format!("http://{}", cell.http_addr());
    Node { cell, api, _dir: dir }
}

/// The node's libp2p TCP port, once it listens.
pub(crate) async fn p2p_port(n: &Node) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snap = n.cell.handle().snapshot();
        if let Some(port) =
            snap.local.listen_addrs.iter().find_map(|a| {
                a.strip_prefix("/ip4/127.0.0.1/tcp/").and_then(|p| p.parse::<u16>().ok())
            })
        {
            return port;
        }
        assert!(Instant::now() < deadline, "no TCP listen address");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node's `/metrics` text.
pub(crate) async fn scrape(n: &Node) -> String {
    let url = format!("http://{}/metrics", n.cell.metrics_addr());
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.text().await.unwrap()
}

/// One series' value in the node's `/metrics`; panics when it is missing.
pub(crate) async fn metric(n: &Node, series: &str) -> f64 {
    let text = scrape(n).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}
