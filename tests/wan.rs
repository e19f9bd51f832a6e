//! Across networks: two LANs (network namespaces on two bridges) joined by a
//! router namespace that forwards unicast but not multicast, so mDNS works
//! on each LAN and not across. Cells A1, A2 on LAN A and B1, B2 on LAN B;
//! one configured peer is the only bridge between the two. They check that
//! Kademlia connects everyone, that levels cross the router, that cells
//! behind a NAT router join through a relay on LAN A (and report whether
//! hole punching made their links direct), and that a lost configured peer
//! is redialed once it is back. Timings are printed.
//!
//! Needs root, iproute2 and nftables; skipped otherwise, or failed when
//! `AIOS_REQUIRE_NETNS=1` (as in CI). `cargo test --test wan -- --nocapture`
//! shows the figures; `AIOS_TEST_LOGS=1` the cells' logs.

#![cfg(target_os = "linux")]

#[path = "common/cells.rs"]
mod cells;
#[path = "common/netns.rs"]
mod netns;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use cells::*;
use serde_json::Value;

/// This file's own 10.<octet>.0.0/16.
const OCTET: u8 = 233;
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
const PROPAGATE_WITHIN: Duration = Duration::from_secs(10);
/// A private cell needs AutoNAT's verdict (first probe 2 s after start,
/// answered within its 10 s timeout, retried every 20 s) and then a
/// reservation.
const RELAY_WITHIN: Duration = Duration::from_secs(60);
const NAMES: [&str; 4] = ["a1", "a2", "b1", "b2"];

/// Starts the four cells (hosts 0, 1 on LAN A; 2, 3 on LAN B), mDNS on,
/// with `peers[i]` as cell i's AIOS_NETWORK_PEERS.
fn start_four(lan: &mut netns::Lan, peers: [Option<String>; 4]) -> (Vec<Cell>, Instant) {
    let mut prepared = Vec::new();
    for (host, name) in NAMES.iter().enumerate() {
        let home = cell_home(lan, name);
        let peer_id = peer_id_for(&home.join("data"));
        prepared.push((name.to_string(), host, home, peer_id));
    }
    let started = Instant::now();
    let mut cells = Vec::new();
    for ((name, host, home, peer_id), peer) in prepared.into_iter().zip(peers) {
        let extra: Vec<(&str, &OsStr)> = peer
            .as_deref()
            .map(|p| vec![("AIOS_NETWORK_PEERS", OsStr::new(p))])
            .unwrap_or_default();
        let proc = spawn_cell(lan, host, &name, &home, &extra);
        cells.push(Cell { name, host, proc, peer_id });
    }
    (cells, started)
}

/// `from -> to: found_by [relayed]` for every pair, and how many pairs
/// across the router are relayed.
fn links(lan: &netns::Lan, cells: &[Cell]) -> (Vec<String>, usize) {
    let hosts: Vec<usize> = cells.iter().map(|c| c.host).collect();
    let answers = query(lan, &hosts, &["peers"]);
    let mut out = Vec::new();
    let mut relayed = 0;
    for (c, a) in cells.iter().zip(answers) {
        let v = a.expect("/peers");
        for o in cells.iter().filter(|o| o.host != c.host) {
            let e = entry(&v, &o.peer_id).expect("listed");
            let r = e["relayed"] == true;
            if r && (c.host < 2) != (o.host < 2) {
                relayed += 1;
            }
            out.push(format!(
                "{}->{}: {}{}",
                c.name,
                o.name,
                e["found_by"].as_str().unwrap_or("?"),
                if r { " (relayed)" } else { "" }
            ));
        }
    }
    (out, relayed)
}

/// Sets `level` on `from` and waits until every other cell shows it;
/// returns how long that took.
fn propagate(lan: &mut netns::Lan, cells: &[Cell], from: usize, level: f64) -> Duration {
    let sent = Instant::now();
    let synced =
        parse(client(lan, cells[from].host, &["sync", "--level", &level.to_string()]).output())
            .unwrap_or_else(|e| panic!("aios-cell sync on {}: {e}", cells[from].name));
    assert_eq!(synced["new_level"], level, "{synced:#}");
    let others: Vec<&Cell> = cells.iter().filter(|c| c.host != cells[from].host).collect();
    let id = cells[from].peer_id.clone();
    let seen = wait_for(lan, &others, "the level to cross the router", PROPAGATE_WITHIN, |_, v| {
        entry(v, &id).is_some_and(|e| e["consciousness_level"] == level)
    });
    seen - sent
}

#[test]
fn cells_on_two_lans_find_each_other_through_one_configured_peer() {
    let test = "wan";
    let Some(mut lan) = netns::routed_or_skip(test, "wr", OCTET, (2, 2), false) else {
        return;
    };
    // Only A1 knows anything beyond its LAN: B1's address.
    let b1 = format!("{}:8001", lan.addr(2));
    let (cells, started) = start_four(&mut lan, [Some(b1), None, None, None]);
    let all: Vec<&Cell> = cells.iter().collect();
    let converged =
        wait_for(&mut lan, &all, "all four cells to connect", CONVERGE_WITHIN, |c, v| {
            sees_all_alive(&cells, c, v)
        });
    let (found, _) = links(&lan, &cells);
    eprintln!(
        "{test}: four cells on two LANs converged {} ms after start; found by: {}",
        ms(converged - started),
        found.join(", ")
    );
    // A2 and B2 share no LAN with the configured pair's other end and were
    // configured with nothing: the DHT must have connected someone.
    assert!(found.iter().any(|f| f.contains(": kad")), "no link found through Kademlia: {found:?}");
    // mDNS never crosses the router.
    for f in &found {
        let cross =
            (f.starts_with('a') && f.contains("->b")) || (f.starts_with('b') && f.contains("->a"));
        assert!(!(cross && f.ends_with(": mdns")), "mDNS crossed the router: {f}");
    }
    // Levels cross the router both ways.
    let b2_to_all = propagate(&mut lan, &cells, 3, 6.5);
    let a2_to_all = propagate(&mut lan, &cells, 1, 2.75);
    eprintln!(
        "{test}: level from B2 seen by all in {} ms, from A2 in {} ms (client start included)",
        ms(b2_to_all),
        ms(a2_to_all)
    );
}

#[test]
fn cells_behind_a_nat_router_join_through_a_relay_on_lan_a() {
    let test = "wan-nat";
    let Some(mut lan) = netns::routed_or_skip(test, "wn", OCTET, (2, 2), true) else {
        return;
    };
    // LAN B is behind NAT: nothing on LAN A can open a connection to it, so
    // the only way in is B1 knowing A1.
    let a1 = format!("{}:8001", lan.addr(0));
    let (cells, started) = start_four(&mut lan, [None, None, Some(a1), None]);
    let all: Vec<&Cell> = cells.iter().collect();
    let converged =
        wait_for(&mut lan, &all, "all four cells to connect", CONVERGE_WITHIN, |c, v| {
            sees_all_alive(&cells, c, v)
        });
    eprintln!("{test}: converged through the NAT in {} ms", ms(converged - started));

    // The B cells learn they are private and take a relay reservation on
    // LAN A; the A cells see themselves as public.
    let deadline = Instant::now() + RELAY_WITHIN;
    let healths = loop {
        let h: Vec<Value> = query(&lan, &[0, 1, 2, 3], &["health"])
            .into_iter()
            .map(|a| a.expect("/health"))
            .collect();
        // Both A cells serve B2 as relays (the test then uses A1's).
        let b_ready = h[2..].iter().all(|h| {
            h["reachability"] == "private" && h["relays"].as_array().is_some_and(|r| r.len() == 2)
        });
        if b_ready || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let relay_ready = started.elapsed();
    let a_ids = [cells[0].peer_id.as_str(), cells[1].peer_id.as_str()];
    for (c, h) in cells.iter().zip(&healths) {
        eprintln!("{test}: {} reachability {} relays {}", c.name, h["reachability"], h["relays"]);
    }
    for (c, h) in cells[2..].iter().zip(&healths[2..]) {
        assert_eq!(h["reachability"], "private", "{} behind NAT: {h:#}", c.name);
        let relays = h["relays"].as_array().expect("relays");
        assert!(
            !relays.is_empty() && relays.iter().all(|r| a_ids.contains(&r.as_str().unwrap_or(""))),
            "{} should hold a reservation on an A cell: {h:#}",
            c.name
        );
    }
    eprintln!("{test}: B cells private with relays {} ms after start", ms(relay_ready));

    // B2 is reachable from LAN A through its relay: A2 registers it by its
    // relayed address (a connection LAN A could not open directly).
    let b2_health = &healths[3];
    let circuit = b2_health["listen_addrs"]
        .as_array()
        .and_then(|l| {
            // Through A1 (A2 cannot use itself as the relay).
            let via_a1 = format!("/p2p/{}/p2p-circuit", cells[0].peer_id);
            l.iter().filter_map(Value::as_str).find(|a| a.contains(&via_a1))
        })
        .unwrap_or_else(|| panic!("B2 lists no address relayed by A1: {b2_health:#}"))
        .to_owned();
    let b2_suffix = format!("/p2p/{}", cells[3].peer_id);
    let circuit =
        if circuit.ends_with(&b2_suffix) { circuit } else { format!("{circuit}{b2_suffix}") };
    let body = serde_json::json!({"cell_id": "b2", "ip": lan.addr(3).to_string(), "port": 8000, "multiaddr": circuit});
    // From inside A2's host (the namespaces are not reachable from here),
    // with Python's standard library, which the CI machine has.
    let post = "import sys, urllib.request as u\n\
        r = u.Request(sys.argv[1], data=sys.argv[2].encode(), headers={'content-type': 'application/json'})\n\
        try:\n    print(u.urlopen(r, timeout=15).read().decode())\n\
        except Exception as e:\n    print(getattr(e, 'read', lambda: str(e).encode())().decode())\n";
    let out = lan
        .command(1, "python3")
        .args(["-c", post, &format!("http://{}:8000/register", lan.addr(1)), &body.to_string()])
        .output();
    let registered: Value = out
        .as_ref()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_else(|| Value::String(format!("{out:?}")));
    assert_eq!(
        registered["status"], "registered",
        "A2 registering B2 via {circuit}: {registered:#}"
    );
    assert_eq!(registered["peer"]["peer_id"], cells[3].peer_id.as_str(), "{registered:#}");

    // Levels cross the NAT both ways.
    let from_b = propagate(&mut lan, &cells, 3, 1.5);
    let from_a = propagate(&mut lan, &cells, 0, 8.25);

    // Report how the links across the router ended up, and what hole
    // punching did (the cells log each attempt).
    std::thread::sleep(Duration::from_secs(3));
    let (found, relayed) = links(&lan, &cells);
    let punched: usize =
        (0..4).map(|i| lan.log(i).matches("hole punching: direct link made").count()).sum();
    let punch_failed: usize =
        (0..4).map(|i| lan.log(i).matches("hole punching failed").count()).sum();
    eprintln!(
        "{test}: level from B2 seen by all in {} ms, from A1 in {} ms; links: {}; \
         cross-router links still relayed: {relayed}; hole punching: {punched} direct, {punch_failed} failed",
        ms(from_b),
        ms(from_a),
        found.join(", ")
    );
}

#[test]
fn a_lost_configured_peer_is_redialed_when_it_is_back() {
    let test = "wan-redial";
    let Some(mut lan) = netns::routed_or_skip(test, "wd", OCTET, (1, 1), false) else {
        return;
    };
    let b = format!("{}:8001", lan.addr(1));
    let home_a = cell_home(&lan, "a1");
    let home_b = cell_home(&lan, "b1");
    let a = Cell {
        name: "a1".into(),
        host: 0,
        peer_id: peer_id_for(&home_a.join("data")),
        proc: spawn_cell(&mut lan, 0, "a1", &home_a, &[("AIOS_NETWORK_PEERS", OsStr::new(&b))]),
    };
    let bc = Cell {
        name: "b1".into(),
        host: 1,
        peer_id: peer_id_for(&home_b.join("data")),
        proc: spawn_cell(&mut lan, 1, "b1", &home_b, &[]),
    };
    let cells = [a, bc];
    let both: Vec<&Cell> = cells.iter().collect();
    wait_for(&mut lan, &both, "the pair to connect", CONVERGE_WITHIN, |c, v| {
        sees_all_alive(&cells, c, v)
    });
    // B1 goes away (its process stops; the configured address is dead).
    lan.signal(cells[1].proc, "KILL").expect("kill b1");
    let b_id = cells[1].peer_id.clone();
    wait_for(&mut lan, &both[..1], "A1 to mark B1 failed", Duration::from_secs(10), |_, v| {
        state_of(v, &b_id).as_deref() == Some("failed")
    });
    // Long enough for the configured peer's backoff to grow (0.5, 1, 2, 4 s).
    std::thread::sleep(Duration::from_secs(6));
    let lost = query(&lan, &[0], &["peers"]).remove(0).expect("/peers");
    assert_eq!(state_of(&lost, &b_id).as_deref(), Some("failed"), "{lost:#}");
    // B1 comes back, forgetting A1 (no state file): only A1's redial can
    // reconnect them.
    let _ = std::fs::remove_file(home_b.join("data").join("state.json"));
    let back = Instant::now();
    let proc = spawn_cell(&mut lan, 1, "b1-again", &home_b, &[]);
    let again = [
        Cell { name: "a1".into(), host: 0, proc: cells[0].proc, peer_id: cells[0].peer_id.clone() },
        Cell { name: "b1".into(), host: 1, proc, peer_id: b_id.clone() },
    ];
    let a_only: Vec<&Cell> = again.iter().take(1).collect();
    // A failed cell is redialed every <= 2 s, a configured one every <= 30 s;
    // after a 6 s outage the next attempt is due within the 2 s bound.
    let rejoined =
        wait_for(&mut lan, &a_only, "A1 to redial B1", Duration::from_secs(10), |_, v| {
            entry(v, &b_id).is_some_and(|e| e["state"] == "alive" && e["connected"] == true)
        });
    let took = rejoined - back;
    eprintln!("{test}: configured peer back; reconnected {} ms after it restarted", ms(took));
    assert!(took <= Duration::from_secs(5), "redial took {} ms", ms(took));
}
