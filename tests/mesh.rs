//! In-process mesh tests: real cells on loopback with mDNS off, joined
//! through `POST /register` and configured peers, observed through their
//! HTTP API as a user would.

use std::time::{Duration, Instant};

use aios_cell::config::PeerAddr;
use aios_cell::{Cell, Config};

#[path = "common/inproc.rs"]
mod inproc;
use inproc::{init_logs, metric, p2p_port, start, start_with, Node};
use serde_json::{json, Value};

/// A plain libp2p node (TCP, Noise, Yamux, libp2p-stream only), not a cell.
fn plain_node() -> libp2p::Swarm<libp2p_stream::Behaviour> {
    use libp2p::{noise, tcp, yamux};
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Dials `cell` from `swarm` and drives the swarm in a task (abort it to
/// stop). Returns the task and the cell's peer id.
async fn connect_plain_node(
    mut swarm: libp2p::Swarm<libp2p_stream::Behaviour>,
    cell: &Node,
) -> (tokio::task::JoinHandle<()>, libp2p::PeerId) {
    use futures::StreamExt;
    let port = p2p_port(cell).await;
    let id: libp2p::PeerId = cell.cell.handle().snapshot().local.peer_id.parse().unwrap();
    let addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{id}").parse().unwrap();
    swarm.dial(addr).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (driver, id)
}

async fn get(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn peer<'a>(peers: &'a Value, peer_id: &str) -> Option<&'a Value> {
    peers["peers"].as_array()?.iter().find(|p| p["peer_id"] == peer_id)
}

/// Polls `node`'s `/peers` until `pred` holds; panics with the last answer.
async fn wait_for(node: &Node, what: &str, within: Duration, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let peers = get(&format!("{}/peers", node.api)).await;
        if pred(&peers) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; /peers: {peers:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_of(peers: &Value, id: &str) -> Option<String> {
    peer(peers, id).and_then(|p| p["state"].as_str()).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cells_register_share_levels_and_notice_failure_and_leave() {
    let a = start("a", vec![]).await;
    let b = start("b", vec![]).await;
    let c = start("c", vec![]).await;
    let ids: Vec<String> = [&a, &b, &c].iter().map(|n| n.cell.peer_id().to_base58()).collect();

    // The seed's discovery script: tell a about b and c with their IP and
    // HTTP port, plus where their libp2p listens.
    for (n, name) in [(&b, "b"), (&c, "c")] {
        let body = json!({"cell_id": name, "ip": "127.0.0.1", "port": 8000, "p2p_port": p2p_port(n).await});
        let (status, v) = post(&format!("{}/register", a.api), body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["peer"]["cell_id"], name);
        assert_eq!(v["peer"]["peer_id"], n.cell.peer_id().to_base58());
    }

    // Everyone ends up knowing everyone, alive and connected: b and c learn
    // of each other through a's records.
    for n in [&a, &b, &c] {
        let me = n.cell.peer_id().to_base58();
        let others: Vec<_> = ids.iter().filter(|i| **i != me).cloned().collect();
        wait_for(n, "a full mesh", Duration::from_secs(10), |p| {
            others.iter().all(|o| {
                peer(p, o).is_some_and(|e| e["state"] == "alive" && e["connected"] == true)
            })
        })
        .await;
    }
    let h = get(&format!("{}/health", a.api)).await;
    assert_eq!(h["peers"], 2);

    // A level set on b through HTTP shows in a's and c's /peers.
    let (status, v) = post(&format!("{}/sync-consciousness", b.api), json!({"level": 3.25})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reached"], 2);
    for n in [&a, &c] {
        wait_for(n, "b's level", Duration::from_secs(5), |p| {
            peer(p, &ids[1]).is_some_and(|e| e["consciousness_level"] == 3.25)
        })
        .await;
    }

    // A newcomer configured with only a's address learns every level from
    // the exchange, without waiting for anyone to publish again.
    let d = start("d", vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap()])
        .await;
    wait_for(&d, "b's level at the newcomer", Duration::from_secs(5), |p| {
        peer(p, &ids[1]).is_some_and(|e| e["consciousness_level"] == 3.25)
    })
    .await;
    let dp = get(&format!("{}/peers", d.api)).await;
    assert_eq!(peer(&dp, &ids[0]).unwrap()["found_by"], "config");

    // A crash (no leave notice): the others mark c failed.
    c.cell.kill();
    for n in [&a, &b, &d] {
        wait_for(n, "c failed", Duration::from_secs(5), |p| {
            state_of(p, &ids[2]).as_deref() == Some("failed")
        })
        .await;
    }

    // A clean shutdown: a marks b left, never failed.
    let started = Instant::now();
    let watcher = {
        let api = a.api.clone();
        let b_id = ids[1].clone();
        tokio::spawn(async move {
            let mut seen_failed = false;
            while started.elapsed() < Duration::from_secs(5) {
                let p = get(&format!("{api}/peers")).await;
                match state_of(&p, &b_id).as_deref() {
                    Some("failed") => seen_failed = true,
                    Some("left") => return (true, seen_failed),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (false, seen_failed)
        })
    };
    b.cell.shutdown().await;
    let (left, seen_failed) = watcher.await.unwrap();
    assert!(left, "a never marked b left");
    assert!(!seen_failed, "a marked b failed before left");
    let h = get(&format!("{}/health", a.api)).await;
    assert_eq!(h["peers_left"], 1);
    assert_eq!(h["peers_failed"], 1);

    a.cell.shutdown().await;
    d.cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_a_level_change_made_on_another_cell() {
    let a = start("ev-a", vec![]).await;
    let b =
        start("ev-b", vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap()])
            .await;
    let b_id = b.cell.peer_id().to_base58();
    wait_for(&a, "b connected", Duration::from_secs(5), |p| {
        peer(p, &b_id).is_some_and(|e| e["connected"] == true && e["cell_id"] == "ev-b")
    })
    .await;

    let mut resp = reqwest::get(format!("{}/events", a.api)).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = resp.chunk().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.starts_with("event: snapshot\n"), "{first}");

    let (status, _) = post(&format!("{}/sync-consciousness", b.api), json!({"level": 5.5})).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = String::new();
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), resp.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => break,
            Err(_) => {}
        }
        if seen.contains("event: level_changed") {
            break;
        }
    }
    let line = seen
        .lines()
        .skip_while(|l| *l != "event: level_changed")
        .nth(1)
        .unwrap_or_else(|| panic!("no level_changed event in {seen:?}"));
    let data: Value = serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["type"], "level_changed");
    assert_eq!(data["peer_id"], b_id);
    assert_eq!(data["level"], 5.5);
    assert_eq!(data["self"], false);
    drop(resp);
    b.cell.shutdown().await;
    a.cell.shutdown().await;
}

#[tokio::test]
async fn identity_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Cell::start(Config::loopback("id", dir.path().to_path_buf())).await.unwrap();
    let id = first.peer_id();
    first.shutdown().await;
    let second = Cell::start(Config::loopback("id", dir.path().to_path_buf())).await.unwrap();
    assert_eq!(second.peer_id(), id);
    let h = get(&format!("http://{}/health", second.http_addr())).await;
    assert_eq!(h["peer_id"], id.to_base58());
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_identity_is_reported_as_degraded() {
    async fn start_in(name: &str, dir: &std::path::Path, peers: Vec<PeerAddr>) -> (Cell, String) {
        let mut config = Config::loopback(name, dir.to_path_buf());
        config.peers = peers;
        config.tuning.heartbeat_secs = 1;
        let cell = Cell::start(config).await.unwrap();
        let api = format!("http://{}", cell.http_addr());
        (cell, api)
    }
    let c = start("hub", vec![]).await;
    let to_c: Vec<PeerAddr> =
        vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&c).await).parse().unwrap()];
    let (dir_a, dir_clone) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_api) = start_in("original", dir_a.path(), to_c.clone()).await;
    // The "cloned disk image": the same identity key on another machine.
    std::fs::copy(
        dir_a.path().join(aios_cell::identity::KEY_FILE),
        dir_clone.path().join(aios_cell::identity::KEY_FILE),
    )
    .unwrap();
    let (clone, clone_api) = start_in("copy", dir_clone.path(), to_c).await;
    assert_eq!(a.peer_id(), clone.peer_id());

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reported = Vec::new();
    while Instant::now() < deadline && reported.is_empty() {
        for (name, api) in [("original", &a_api), ("copy", &clone_api)] {
            let h = get(&format!("{api}/health")).await;
            if h["status"] == "degraded" {
                let reason = h["reason"].as_str().unwrap_or_default().to_owned();
                assert!(reason.contains("identity.key"), "reason says how to fix it: {reason}");
                reported.push(name);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!reported.is_empty(), "neither clone reported the shared identity");
    println!("cloned identity reported by {reported:?}");
    let h = get(&format!("{}/health", c.api)).await;
    assert_eq!(h["status"], "healthy", "the hub itself is fine");
    // The copy goes away for good (a clean shutdown: the hub gets its leave,
    // under the shared identity). The original is healthy again, and the
    // hub lists it alive, not left.
    clone.shutdown().await;
    let id = a.peer_id().to_base58();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = get(&format!("{a_api}/health")).await;
        let peers = get(&format!("{}/peers", c.api)).await;
        if h["status"] == "healthy" && state_of(&peers, &id).as_deref() == Some("alive") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the copy left: original {h}, the hub's row {:?}",
            peer(&peers, &id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.shutdown().await;
    c.cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cell_keeps_its_level_and_rejoins_without_config() {
    let hub = start("hub2", vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback("phoenix", dir.path().to_path_buf());
    config.peers = vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&hub).await).parse().unwrap()];
    let cell = Cell::start(config.clone()).await.unwrap();
    let id = cell.peer_id().to_base58();
    let (status, _) =
        post(&format!("http://{}/sync-consciousness", cell.http_addr()), json!({"level": 2.75}))
            .await;
    assert_eq!(status, 200);
    wait_for(&hub, "phoenix connected", Duration::from_secs(5), |p| {
        peer(p, &id).is_some_and(|e| e["consciousness_level"] == 2.75)
    })
    .await;
    // Give the saver a moment, then crash: no clean shutdown.
    tokio::time::sleep(aios_cell::state::SAVE_EVERY * 3).await;
    cell.kill();
    wait_for(&hub, "phoenix failed", Duration::from_secs(5), |p| {
        state_of(p, &id).as_deref() == Some("failed")
    })
    .await;

    // Restart with the same data dir and no configured peers.
    config.peers.clear();
    let again = Cell::start(config).await.unwrap();
    assert_eq!(again.peer_id().to_base58(), id);
    let h = get(&format!("http://{}/health", again.http_addr())).await;
    assert_eq!(h["consciousness_level"], 2.75, "level restored");
    wait_for(&hub, "phoenix back", Duration::from_secs(5), |p| {
        state_of(p, &id).as_deref() == Some("alive")
    })
    .await;
    again.shutdown().await;
    hub.cell.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_state_file_is_set_aside_and_the_cell_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(aios_cell::state::STATE_FILE), b"{\"level\": 3, trunc").unwrap();
    let cell = Cell::start(Config::loopback("mend", dir.path().to_path_buf())).await.unwrap();
    let h = get(&format!("http://{}/health", cell.http_addr())).await;
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["consciousness_level"], 0.5);
    assert!(dir.path().join("state.json.corrupt").exists());
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cells_with_the_same_swarm_key_connect() {
    init_logs();
    let keys = tempfile::tempdir().unwrap();
    let (k1, k2) = (keys.path().join("k1"), keys.path().join("k2"));
    aios_cell::identity::generate_swarm_key(&k1).unwrap();
    aios_cell::identity::generate_swarm_key(&k2).unwrap();
    async fn start_keyed(name: &str, key: Option<&std::path::Path>, peers: Vec<PeerAddr>) -> Node {
        start_with(name, peers, |c| c.swarm_key = key.map(|k| k.to_path_buf())).await
    }
    let a = start_keyed("key-a", Some(&k1), vec![]).await;
    let h = get(&format!("{}/health", a.api)).await;
    assert!(
        h["listen_addrs"].as_array().unwrap().iter().all(|a| !a.as_str().unwrap().contains("quic")),
        "QUIC is off in a private mesh: {h}"
    );
    let to_a: Vec<PeerAddr> =
        vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap()];
    let b = start_keyed("key-b", Some(&k1), to_a.clone()).await;
    let other_key = start_keyed("other-key", Some(&k2), to_a.clone()).await;
    let no_key = start_keyed("no-key", None, to_a.clone()).await;
    let b_id = b.cell.peer_id().to_base58();
    wait_for(&a, "b (same key) connected", Duration::from_secs(5), |p| {
        peer(p, &b_id).is_some_and(|e| e["connected"] == true && e["state"] == "alive")
    })
    .await;
    // Give the others time to try (and retry) too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = get(&format!("{}/peers", a.api)).await;
    for n in [&other_key, &no_key] {
        let id = n.cell.peer_id().to_base58();
        assert!(peer(&p, &id).is_none_or(|e| e["connected"] == false), "{p:#}");
        let theirs = get(&format!("{}/peers", n.api)).await;
        assert!(
            theirs["peers"].as_array().unwrap().iter().all(|e| e["connected"] == false),
            "{theirs:#}"
        );
    }
    for n in [a, b, other_key, no_key] {
        n.cell.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_cell_is_not_reported_as_a_clone() {
    let hub = start("hub3", vec![]).await;
    let to_hub: Vec<PeerAddr> =
        vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&hub).await).parse().unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback("old-name", dir.path().to_path_buf());
    config.peers = to_hub;
    config.tuning.heartbeat_secs = 1;
    let cell = Cell::start(config.clone()).await.unwrap();
    let id = cell.peer_id().to_base58();
    wait_for(&hub, "old-name known", Duration::from_secs(5), |p| {
        peer(p, &id).is_some_and(|e| e["cell_id"] == "old-name")
    })
    .await;
    cell.shutdown().await;

    config.cell_id = "new-name".into();
    let renamed = Cell::start(config).await.unwrap();
    wait_for(&hub, "new-name known", Duration::from_secs(5), |p| {
        peer(p, &id).is_some_and(|e| e["cell_id"] == "new-name" && e["state"] == "alive")
    })
    .await;
    // Several anti-entropy rounds (1 s heartbeat) with the hub, which held
    // the old-name record: the cell stays healthy.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let h = get(&format!("http://{}/health", renamed.http_addr())).await;
        assert_eq!(h["status"], "healthy", "{h}");
    }
    renamed.shutdown().await;
    hub.cell.shutdown().await;
}

/// Routed discovery: a cell that knows one cell finds the rest through
/// Kademlia (providers of the mesh topic), and says so in `/peers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_knows_one_cell_finds_the_rest_through_kademlia() {
    let a = start("ka", vec![]).await;
    let a_addr: PeerAddr = format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap();
    let b = start("kb", vec![a_addr.clone()]).await;
    let c = start("kc", vec![a_addr]).await;
    let ids: Vec<String> = [&a, &b, &c].iter().map(|n| n.cell.peer_id().to_base58()).collect();
    // b and c know only a; they meet through the DHT (well before the
    // 3 s after which a cell heard of in a record exchange is dialed).
    for (n, other) in [(&b, &ids[2]), (&c, &ids[1])] {
        wait_for(n, "the other cell through the DHT", Duration::from_secs(10), |p| {
            peer(p, other).is_some_and(|e| e["connected"] == true && e["state"] == "alive")
        })
        .await;
    }
    // One of them dialed the other because Kademlia named it; the other
    // saw it arrive (or dialed it too).
    let bp = get(&format!("{}/peers", b.api)).await;
    let cp = get(&format!("{}/peers", c.api)).await;
    let how = [
        peer(&bp, &ids[2]).unwrap()["found_by"].clone(),
        peer(&cp, &ids[1]).unwrap()["found_by"].clone(),
    ];
    assert!(how.iter().any(|h| h == "kad"), "found_by: {how:?}");
    assert!(how.iter().all(|h| h == "kad" || h == "inbound"), "found_by: {how:?}");
    // The DHT answers even without any record exchange naming the cell:
    // /health shows reachability as AutoNAT judged it (loopback cells may
    // not have a verdict yet) and no relays for a cell that needs none.
    let h = get(&format!("{}/health", c.api)).await;
    assert!(["unknown", "public", "private"].contains(&h["reachability"].as_str().unwrap()), "{h}");
    assert!(h["relays"].is_array(), "{h}");
}

/// The liveness probe protocol as another implementation sees it: a plain
/// libp2p node (TCP, Noise, Yamux, no cell protocols) opens
/// `/aios/probe/1.0.0` on a cell and gets each 8-byte nonce echoed back on
/// the same stream; and the cell, whose own probes that node cannot answer,
/// does not call it failed for that.
#[tokio::test]
async fn a_plain_libp2p_node_can_probe_a_cell_and_is_not_failed_for_not_probing_back() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::StreamProtocol;

    let a = start("probe-target", vec![]).await;
    let swarm = plain_node();
    let me = swarm.local_peer_id().to_base58();
    let mut control = swarm.behaviour().new_control();
    let (driver, cell) = connect_plain_node(swarm, &a).await;

    let mut stream =
        control.open_stream(cell, StreamProtocol::new("/aios/probe/1.0.0")).await.unwrap();
    for _ in 0..3 {
        let nonce: [u8; 8] = rand::random();
        stream.write_all(&nonce).await.unwrap();
        stream.flush().await.unwrap();
        let mut echo = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut echo))
            .await
            .expect("the cell echoes a probe within 2 s")
            .unwrap();
        assert_eq!(echo, nonce, "the echo is the nonce that was sent");
    }

    // The node is the cell's only peer, so the cell's ring probes go to it
    // and find no probe protocol: it stays alive while connected.
    wait_for(&a, "the plain node listed as connected", Duration::from_secs(5), |v| {
        peer(v, &me).is_some_and(|p| p["connected"] == true)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let peers = get(&format!("{}/peers", a.api)).await;
    assert_eq!(state_of(&peers, &me).as_deref(), Some("alive"), "/peers: {peers:#}");
    // Operators see why in the metrics: the cell's watch probe found no
    // probe protocol there, and it sent no suspect notice.
    assert!(metric(&a, r#"aios_probes_total{purpose="watch",outcome="unsupported"}"#).await >= 1.0);
    assert_eq!(metric(&a, "aios_suspects_sent_total").await, 0.0);
    driver.abort();
    a.cell.shutdown().await;
}

/// Liveness by UDP beats: of three cells in a ring, two beat and one has
/// beats off (an older cell, or UDP blocked). The cell watching a beating
/// cell gets its beats; the one watching the cell without beats falls back
/// to TCP probes; nobody is failed, and a level set on one cell reaches
/// the others with no view left different for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_watch_by_udp_beats_and_probe_a_cell_without_them() {
    let a = start("beat-a", vec![]).await;
    let to_a: Vec<PeerAddr> =
        vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap()];
    let b = start("beat-b", to_a.clone()).await;
    let c = start_with("no-beats", to_a, |c| c.tuning.beats = false).await;
    let ids: Vec<String> = [&a, &b, &c].iter().map(|n| n.cell.peer_id().to_base58()).collect();
    for n in [&a, &b, &c] {
        wait_for(n, "all three alive", Duration::from_secs(10), |v| {
            ids.iter()
                .filter(|id| **id != n.cell.peer_id().to_base58())
                .all(|id| state_of(v, id).as_deref() == Some("alive"))
        })
        .await;
    }
    // Any two cells of a ring of three are neighbours: one of a, b watches
    // the other by its beats, one beat per second.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let beats = metric(&a, "aios_beats_received_total").await
        + metric(&b, "aios_beats_received_total").await;
    assert!(beats >= 2.0, "beats received by a and b: {beats}");
    assert_eq!(metric(&c, "aios_beats_received_total").await, 0.0);
    // The cell without beats is watched by probes, and answers them.
    let answered = r#"aios_probes_total{purpose="watch",outcome="answered"}"#;
    let probes = metric(&a, answered).await + metric(&b, answered).await;
    assert!(probes >= 2.0, "watch probes answered for a and b: {probes}");
    // Nobody was failed (on a loaded host a late beat may be suspected;
    // the checks that follow clear it).
    for n in [&a, &b, &c] {
        let peers = get(&format!("{}/peers", n.api)).await;
        for id in ids.iter().filter(|id| **id != n.cell.peer_id().to_base58()) {
            assert_eq!(state_of(&peers, id).as_deref(), Some("alive"), "{peers:#}");
        }
    }
    // A level set on the cell without beats reaches both.
    let (status, _) =
        post(&format!("{}/sync-consciousness", c.api), serde_json::json!({"level": 3.25})).await;
    assert_eq!(status, 200);
    for n in [&a, &b] {
        wait_for(n, "the level from the cell without beats", Duration::from_secs(5), |v| {
            peer(v, &ids[2]).is_some_and(|p| p["consciousness_level"] == 3.25)
        })
        .await;
    }
    for n in [c, b, a] {
        n.cell.shutdown().await;
    }
}

/// A peer that closes a probe stream after answering once (as a cell does
/// with a stream idle for 30 s): the next probe must not go unanswered on
/// the dead stream. The cell opens another and gets its echo, so the peer
/// is never suspected for it.
#[tokio::test]
async fn a_probe_stream_the_peer_closed_is_replaced_not_counted_as_silence() {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use libp2p::StreamProtocol;

    let a = start("reprobe", vec![]).await;
    let swarm = plain_node();
    let mut incoming =
        swarm.behaviour().new_control().accept(StreamProtocol::new("/aios/probe/1.0.0")).unwrap();
    let echoes = tokio::spawn(async move {
        let mut answered = 0u32;
        while let Some((_, mut s)) = incoming.next().await {
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).await.is_ok() && s.write_all(&buf).await.is_ok() {
                let _ = s.flush().await;
                answered += 1;
            }
            // One echo per stream, then the stream is closed.
            let _ = s.close().await;
            if answered >= 5 {
                return answered;
            }
        }
        answered
    });
    let (driver, _) = connect_plain_node(swarm, &a).await;
    // The node is the cell's only peer and has no beats: the cell probes it
    // once a second, each probe on a new stream after the first.
    let answered = tokio::time::timeout(Duration::from_secs(15), echoes)
        .await
        .expect("five probes within 15 s")
        .unwrap();
    assert_eq!(answered, 5);
    // Before the fix every probe on a closed stream counted as silence
    // (and sent a suspect notice): two of five here. One is allowed for a
    // loaded test host; a probe waits 400 ms.
    let silent = metric(&a, r#"aios_probes_total{purpose="watch",outcome="silent"}"#).await;
    assert!(silent <= 1.0, "watch probes counted silent: {silent}");
    assert!(metric(&a, r#"aios_probes_total{purpose="watch",outcome="answered"}"#).await >= 4.0);
    driver.abort();
    a.cell.shutdown().await;
}

/// Waits until `/health`'s `transports` is `want`: each listener reports
/// its address on its own, so TCP may be listed a moment before QUIC.
async fn transports_become(n: &Node, want: Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = get(&format!("{}/health", n.api)).await;
        if h["transports"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "transports not {want} in 5 s: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_whose_quic_port_is_taken_runs_on_tcp_and_says_so() {
    let a = start("quic-free", vec![]).await;
    transports_become(&a, json!(["tcp", "quic"])).await;
    // Another program holds the UDP port: a port whose TCP side is free
    // and whose UDP side this socket keeps.
    let (held, port) = (0..20)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let port = udp.local_addr().ok()?.port();
            std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
            Some((udp, port))
        })
        .expect("a port free on TCP and held on UDP");
    let to_a = vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap()];
    let b = start_with("quic-taken", to_a, |c| c.p2p_port = port).await;
    transports_become(&b, json!(["tcp"])).await;
    let h = get(&format!("{}/health", b.api)).await;
    assert_eq!(h["listen_addrs"], json!([format!("/ip4/127.0.0.1/tcp/{port}")]), "{h}");
    let b_id = b.cell.peer_id().to_base58();
    wait_for(&a, "the TCP-only cell alive", Duration::from_secs(10), |p| {
        peer(p, &b_id).is_some_and(|e| e["state"] == "alive" && e["connected"] == true)
    })
    .await;
    // Seconds later, still TCP only: no QUIC listener came late.
    let h = get(&format!("{}/health", b.api)).await;
    assert_eq!(h["transports"], json!(["tcp"]), "{h}");
    drop(held);
    b.cell.shutdown().await;
    a.cell.shutdown().await;
}

/// A member of the mesh (here a plain libp2p node speaking the register
/// protocol) relays forged records of another cell in a `hello`: its level
/// changed, its leave made up, unsigned or signed by the forger. The cell
/// refuses every one, counts them, and its view of the forged cell stays
/// as that cell made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_relayed_with_forged_fields_or_signatures_are_refused() {
    use aios_cell::network::protocol::{
        CellRecord, KnownCell, RegisterRequest, RegisterResponse, RequestKind, REGISTER_PROTOCOL,
    };
    use futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::{noise, tcp, yamux, StreamProtocol};

    let a = start("honest-a", vec![]).await;
    let to_a: Vec<PeerAddr> =
        vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap()];
    let b = start("honest-b", to_a).await;
    let b_id = b.cell.peer_id().to_base58();
    wait_for(&a, "b alive", Duration::from_secs(10), |v| {
        peer(v, &b_id).is_some_and(|p| p["state"] == "alive" && p["consciousness_level"] == 0.5)
    })
    .await;
    // b goes away: only others' word about it can reach a now, and a
    // newer record of it (from anyone) would otherwise be taken.
    b.cell.shutdown().await;
    wait_for(&a, "b left", Duration::from_secs(10), |v| {
        peer(v, &b_id).is_some_and(|p| p["state"] == "left" && p["connected"] == false)
    })
    .await;

    let forger_key = libp2p::identity::Keypair::generate_ed25519();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(forger_key.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::cbor::Behaviour::<RegisterRequest, RegisterResponse>::new(
                [(StreamProtocol::new(REGISTER_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let a_id = a.cell.peer_id();
    let addr: libp2p::Multiaddr =
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{a_id}", p2p_port(&a).await).parse().unwrap();
    swarm.dial(addr).unwrap();

    let b_record = |level: f64, leaving: bool| CellRecord {
        cell_id: "honest-b".into(),
        level,
        branch: "main".into(),
        seq: u64::MAX / 2,
        at_ms: 1,
        addrs: Vec::new(),
        agent: "aios-cell/forged".into(),
        leaving,
        tags: Default::default(),
        services: Vec::new(),
        envelope: None,
    };
    let known = vec![
        // Unsigned: the relay's word only.
        KnownCell { peer_id: b_id.clone(), record: b_record(6.0, false) },
        // Signed, but by the forger, not by b.
        KnownCell {
            peer_id: b_id.clone(),
            record: b_record(0.0, true).signed(&forger_key).unwrap(),
        },
    ];
    let own = CellRecord {
        cell_id: "forger".into(),
        seq: 1,
        agent: "test".into(),
        ..b_record(0.5, false)
    }
    .signed(&forger_key)
    .unwrap();
    // And one whose own record names it with terminal control characters.
    let evil = CellRecord { cell_id: "evil\u{1b}[2J\r\nid".into(), seq: 2, ..own.clone() }
        .signed(&forger_key)
        .unwrap();
    let mut requests = vec![
        RegisterRequest::new(RequestKind::Hello, evil),
        RegisterRequest { known, ..RegisterRequest::new(RequestKind::Hello, own) },
    ];
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("the cell answered the hello");
        match event {
            libp2p::swarm::SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == a_id => {
                if let Some(r) = requests.pop() {
                    swarm.behaviour_mut().send_request(&a_id, r);
                }
            }
            libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            }) => {
                answered += 1;
                match requests.pop() {
                    Some(r) => {
                        swarm.behaviour_mut().send_request(&a_id, r);
                    }
                    None if answered == 2 => break,
                    None => {}
                }
            }
            libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                error,
                ..
            }) => panic!("the hello failed: {error}"),
            _ => {}
        }
    }

    assert_eq!(metric(&a, r#"aios_records_refused_total{reason="unsigned"}"#).await, 1.0);
    assert_eq!(metric(&a, r#"aios_records_refused_total{reason="forged"}"#).await, 1.0);
    let peers = get(&format!("{}/peers", a.api)).await;
    let row = peer(&peers, &b_id).expect("b is still known");
    assert_eq!(row["state"], "left", "{row}");
    assert_eq!(row["consciousness_level"], 0.5, "the forged level was not taken: {row}");
    assert_ne!(row["seq"], u64::MAX / 2, "{row}");
    // The forger itself is known by its own (signed, direct) record, never
    // by the name with control characters.
    let names: Vec<&str> =
        peers["peers"].as_array().unwrap().iter().filter_map(|p| p["cell_id"].as_str()).collect();
    assert!(names.contains(&"forger"), "{peers}");
    assert!(!names.iter().any(|n| n.contains('\u{1b}')), "{peers}");
    assert!(
        metric(&a, r#"aios_registrations_total{kind="hello",direction="inbound",outcome="error"}"#)
            .await
            >= 1.0
    );
    a.cell.shutdown().await;
}

/// A service that goes down on one cell is shown down on the others within
/// the check period plus propagation: a TcpListener is the service, then
/// it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_goes_down_on_one_cell_is_shown_down_on_the_others() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = tokio::spawn(async move {
        loop {
            // Accept and close: a TCP check only needs the connect.
            let _ = listener.accept().await;
        }
    });
    let period = Duration::from_millis(200);
    let a = start_with("svc-a", vec![], |c| {
        c.services = aios_cell::services::parse_services(&format!("web={port}")).unwrap();
        c.tags.insert("role".into(), "desktop".into());
        c.tuning.service_check_interval_ms = period.as_millis() as u64;
    })
    .await;
    let seed: PeerAddr = format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap();
    let b = start("svc-b", vec![seed.clone()]).await;
    let c = start("svc-c", vec![seed]).await;
    let a_id = a.cell.peer_id().to_base58();
    let web = |peers: &Value| -> Option<String> {
        let s = peer(peers, &a_id)?["services"].as_array()?.iter().find(|s| s["name"] == "web")?;
        s["status"].as_str().map(str::to_owned)
    };
    for n in [&b, &c] {
        wait_for(n, "a's web service up", Duration::from_secs(15), |p| {
            web(p).as_deref() == Some("up")
        })
        .await;
        let peers = get(&format!("{}/peers", n.api)).await;
        assert_eq!(peer(&peers, &a_id).unwrap()["tags"], json!({"role": "desktop"}));
    }

    let mut events = c.cell.handle().subscribe();
    service.abort();
    let _ = service.await;
    let down = Instant::now();
    // /events tells of it too (the handle's stream is what /events sends).
    let event = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let e = serde_json::to_value(events.recv().await.unwrap()).unwrap();
            if e["type"] == "services_changed" && e["peer_id"] == a_id.as_str() {
                return e;
            }
        }
    })
    .await
    .expect("a services_changed event for a");
    assert_eq!(event["cell_id"], "svc-a");
    assert_eq!(event["self"], false);
    assert_eq!(event["tags"], json!({"role": "desktop"}));
    let status = |name: &str| {
        event["services"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["status"]
            .clone()
    };
    assert_eq!((status("web"), status("metrics")), (json!("down"), json!("up")), "{event}");
    for n in [&b, &c] {
        wait_for(n, "a's web service down", Duration::from_secs(15), |p| {
            web(p).as_deref() == Some("down")
        })
        .await;
    }
    println!(
        "down everywhere {:?} after the service stopped (check period {period:?})",
        down.elapsed()
    );
    // b's /services says the same, with a's address and port.
    let v = get(&format!("{}/services", b.api)).await;
    let endpoint = v["services"]["web"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cell_id"] == "svc-a")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(
        (&endpoint["status"], &endpoint["port"], &endpoint["address"]),
        (&json!("down"), &json!(port), &json!("127.0.0.1"))
    );
    // Every alive cell's metrics port is a service (b may learn of c later).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = get(&format!("{}/services", b.api)).await;
        if v["services"]["metrics"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "b lists not 3 metrics services: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in [c, b, a] {
        n.cell.shutdown().await;
    }
}

/// Registers `other` on `on` (the seed's discovery script's call).
async fn register(on: &Node, other: &Node, name: &str) {
    let body = json!({"cell_id": name, "ip": "127.0.0.1", "port": 8000, "p2p_port": p2p_port(other).await});
    let (status, v) = post(&format!("{}/register", on.api), body).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parts_of_a_mesh_that_meet_learn_each_others_cells_by_relayed_gossip() {
    // Two pairs that know nothing of each other (cells that started
    // together and found only each other).
    let (a, b, c, d) = (
        start("a", vec![]).await,
        start("b", vec![]).await,
        start("c", vec![]).await,
        start("d", vec![]).await,
    );
    let id = |n: &Node| n.cell.peer_id().to_base58();
    register(&a, &b, "b").await;
    register(&c, &d, "d").await;
    for (n, other) in [(&a, &b), (&b, &a), (&c, &d), (&d, &c)] {
        let o = id(other);
        wait_for(n, "its pair", Duration::from_secs(10), |p| {
            state_of(p, &o).as_deref() == Some("alive")
        })
        .await;
    }
    let relayed = "aios_records_relayed_total";
    assert_eq!(metric(&b, relayed).await + metric(&c, relayed).await, 0.0, "nothing to relay yet");
    // One link between the two parts: b and c pass on what it brought, so
    // a hears of c and d, and d of a and b, from their own links' gossip.
    register(&b, &c, "c").await;
    for (n, others) in [(&a, [&c, &d]), (&d, [&a, &b])] {
        let want: Vec<String> = others.iter().map(|o| id(o)).collect();
        wait_for(n, "the other part's cells", Duration::from_secs(10), |p| {
            want.iter().all(|o| state_of(p, o).as_deref() == Some("alive"))
        })
        .await;
    }
    // Both ends of the bridging link relayed what it brought of the other
    // part (the cell behind its other end, and that end's own record unless
    // its own gossip came first).
    for n in [&b, &c] {
        let r = metric(n, relayed).await;
        assert!((1.0..=2.0).contains(&r), "{r} relays");
    }
    // The cells that only heard relays passed on none.
    assert_eq!(metric(&a, relayed).await + metric(&d, relayed).await, 0.0);
    for n in [a, b, c, d] {
        n.cell.shutdown().await;
    }
}
