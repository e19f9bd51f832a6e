use super::*;

fn rec(seq: u64, level: f64) -> CellRecord {
    CellRecord {
        cell_id: "c".into(),
        level,
        branch: "main".into(),
        seq,
        at_ms: 0,
        addrs: vec!["/ip4/10.0.0.2/tcp/8001".into()],
        agent: String::new(),
        leaving: false,
        tags: Default::default(),
        services: Vec::new(),
        envelope: None,
    }
}

#[test]
fn only_a_cell_gone_for_good_is_forgotten_and_its_name_freed() {
    let me = PeerId::random();
    let mut m = MeshView::new(me, "me");
    let (gone, live) = (PeerId::random(), PeerId::random());
    m.connected(gone, None, FoundBy::Mdns);
    m.merge(gone, &CellRecord { cell_id: "old".into(), ..rec(3, 0.5) }, FoundBy::Mdns, true);
    m.connected(live, None, FoundBy::Mdns);
    assert_eq!(m.forget(&live), Err(ForgetError::Alive));
    assert_eq!(m.forget(&gone), Err(ForgetError::Alive), "connected");
    m.disconnected(gone);
    assert_eq!(m.forget(&gone), Err(ForgetError::Alive), "a closed link is no failure");
    m.unreachable(gone);
    assert_eq!(m.forget(&gone), Ok(()));
    assert!(m.get(&gone).is_none());
    assert_eq!(m.forget(&gone), Err(ForgetError::Unknown));
    // Its name is free for another cell.
    let other = PeerId::random();
    let r = CellRecord { cell_id: "old".into(), ..rec(1, 0.5) };
    assert_eq!(m.merge(other, &r, FoundBy::Gossip, false).0, Merge::New);
    // Rows failed long ago are reaped; live ones never.
    m.disconnected(live);
    m.unreachable(live);
    assert!(m.reap(1).is_empty(), "heard of after that");
    assert_eq!(m.reap(u64::MAX), vec![live]);
}

#[test]
fn a_sync_answer_holds_only_records_newer_than_the_digest_or_missing_from_it() {
    let mut m = MeshView::default();
    let keys: Vec<libp2p::identity::Keypair> =
        (0..4).map(|_| libp2p::identity::Keypair::generate_ed25519()).collect();
    let ids: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
    let (same, newer, missing, failed) = (ids[0], ids[1], ids[2], ids[3]);
    for (i, (p, seq)) in [(same, 5), (newer, 9), (missing, 2), (failed, 4)].iter().enumerate() {
        m.connected(*p, None, FoundBy::Mdns);
        let r = CellRecord { cell_id: format!("c{i}"), ..rec(*seq, 0.5) };
        let r = r.signed(&keys[i]).expect("signed");
        assert_eq!(m.merge(*p, &r, FoundBy::Mdns, true).0, Merge::Updated);
    }
    m.disconnected(failed);
    m.unreachable(failed);
    let digest: Vec<_> = m.digest().collect();
    assert_eq!(digest.len(), 4, "every record held is in the digest");
    let held: HashMap<PeerId, u64> = [(same, 5), (newer, 7), (failed, 1)].into();
    let mut sent: Vec<(PeerId, u64)> = m.newer_than(&held).map(|(p, r)| (p, r.seq)).collect();
    sent.sort();
    let mut want = vec![(newer, 9), (missing, 2)];
    want.sort();
    // Not `same` (held as is), not `failed` (only alive cells' records travel).
    assert_eq!(sent, want);
}

#[test]
fn a_cell_heard_of_is_dialed_at_once_only_on_our_networks() {
    let mut m = MeshView::default();
    let p = PeerId::random();
    m.merge(p, &rec(1, 0.5), FoundBy::Gossip, false);
    let wait = Duration::from_secs(3);
    let lan = |a: &Multiaddr| a.to_string().starts_with("/ip4/10.0.0.");
    let far = |_: &Multiaddr| false;
    // Beyond our networks: the DHT gets the first try.
    assert_eq!(m.unconnected_alive(wait, far).count(), 0);
    assert!(m.has_hearsay(far));
    // On our LAN (mDNS missed it): dial now, no DHT round for it.
    let now: Vec<_> = m.unconnected_alive(wait, lan).collect();
    assert_eq!(now, vec![(p, vec!["/ip4/10.0.0.2/tcp/8001".parse().unwrap()])]);
    assert!(!m.has_hearsay(lan));
    // Once connected it is no longer hearsay.
    m.connected(p, None, FoundBy::Gossip);
    assert!(!m.has_hearsay(far));
}

#[test]
fn a_silent_connected_cell_is_alive_again_when_it_answers() {
    let mut m = MeshView::default();
    let p = PeerId::random();
    m.connected(p, None, FoundBy::Mdns);
    let failed = m.unreachable(p).unwrap();
    assert_eq!((failed.from, failed.to), (Some(PeerState::Alive), PeerState::Failed));
    let back = m.rtt(p, Duration::from_millis(3)).unwrap();
    assert_eq!((back.from, back.to), (Some(PeerState::Failed), PeerState::Alive));
    assert_eq!(m.rtt(p, Duration::from_millis(3)), None, "already alive");
    // Not once the connection is gone, and never a cell that left.
    m.unreachable(p);
    m.disconnected(p);
    assert_eq!(m.rtt(p, Duration::from_millis(3)), None);
    assert_eq!(m.get(&p).unwrap().state, PeerState::Failed);
    let q = PeerId::random();
    m.connected(q, None, FoundBy::Mdns);
    let mut bye = rec(2, 0.5);
    bye.leaving = true;
    m.merge(q, &bye, FoundBy::Gossip, true);
    assert_eq!(m.get(&q).unwrap().state, PeerState::Left);
    assert_eq!(m.rtt(q, Duration::from_millis(3)), None);
    assert_eq!(m.get(&q).unwrap().state, PeerState::Left);
}

#[test]
fn newer_seq_wins_and_replays_are_ignored() {
    let mut m = MeshView::default();
    let p = PeerId::random();
    assert_eq!(m.merge(p, &rec(5, 0.5), FoundBy::Gossip, true).0, Merge::New);
    assert_eq!(m.merge(p, &rec(6, 0.7), FoundBy::Gossip, true).0, Merge::Updated);
    assert_eq!(m.merge(p, &rec(6, 0.9), FoundBy::Gossip, true).0, Merge::Stale);
    assert_eq!(m.merge(p, &rec(3, 0.1), FoundBy::Gossip, true).0, Merge::Stale);
    assert_eq!(m.get(&p).unwrap().consciousness_level, Some(0.7));
    assert_eq!(m.entries(|_| false)[0].addresses, vec!["/ip4/10.0.0.2/tcp/8001".to_string()]);
    assert!(m.entries(|q| *q == p)[0].relayed);
}

#[test]
fn a_cell_id_belongs_to_the_first_live_peer_that_announced_it() {
    let me = PeerId::random();
    let mut m = MeshView::new(me, "mine");
    let (a, b) = (PeerId::random(), PeerId::random());
    assert_eq!(m.merge(a, &rec(1, 0.5), FoundBy::Gossip, true).0, Merge::New);
    // b claims a's name while a is alive: refused, a's level kept.
    let mut spoof = rec(2, 9.0);
    spoof.cell_id = "c".into();
    assert_eq!(m.merge(b, &spoof, FoundBy::Gossip, true).0, Merge::Conflict);
    assert!(m.get(&b).is_none());
    // Nobody may take this cell's own name.
    spoof.cell_id = "mine".into();
    assert_eq!(m.merge(b, &spoof, FoundBy::Gossip, true).0, Merge::Conflict);
    // Once a has failed, a new peer may use the name.
    m.unreachable(a);
    spoof.cell_id = "c".into();
    assert_eq!(m.merge(b, &spoof, FoundBy::Gossip, true).0, Merge::New);
    // a renaming itself frees nothing it does not hold.
    assert_eq!(m.claimed_by_other(a, "c"), Some(b));
}

#[test]
fn a_discovered_cell_joins_once_when_it_connects() {
    let mut m = MeshView::default();
    let p = PeerId::random();
    let addr: Multiaddr =
        "/ip4/10.0.0.2/tcp/8001/p2p/12D3KooWPTxbx3mYppet2XA9Fs2zUCW8hqCovwKsgTFAco2GVG7G"
            .parse()
            .unwrap();
    assert!(m.discovered(p, &[addr], FoundBy::Mdns));
    assert_eq!(m.entries(|_| false)[0].addresses, vec!["/ip4/10.0.0.2/tcp/8001".to_string()]);
    let t = m.connected(p, None, FoundBy::Mdns).unwrap();
    assert_eq!(t.from, None, "cell_joined when it connects");
    assert_eq!(m.merge(p, &rec(1, 0.5), FoundBy::Mdns, true).1, None, "no second join");
}

#[test]
fn third_parties_cannot_override_a_connected_cell_or_make_it_leave() {
    let mut m = MeshView::default();
    let (p, q) = (PeerId::random(), PeerId::random());
    m.connected(p, None, FoundBy::Mdns);
    m.merge(p, &rec(1, 0.5), FoundBy::Mdns, true);
    assert_eq!(m.merge(p, &rec(99, 7.0), FoundBy::Gossip, false).0, Merge::Stale);
    assert_eq!(m.get(&p).unwrap().consciousness_level, Some(0.5));
    let mut leave = rec(5, 0.5);
    leave.cell_id = "q".into();
    leave.leaving = true;
    let mut first = rec(1, 0.5);
    first.cell_id = "q".into();
    m.merge(q, &first, FoundBy::Gossip, false);
    m.merge(q, &leave, FoundBy::Gossip, false);
    assert_eq!(m.get(&q).unwrap().state, PeerState::Alive, "only q itself can say it left");
}

#[test]
fn a_dropped_connection_is_no_failure_and_a_leave_stays_left() {
    let mut m = MeshView::default();
    let (a, b) = (PeerId::random(), PeerId::random());
    m.connected(a, None, FoundBy::Mdns);
    m.connected(b, None, FoundBy::Mdns);
    m.merge(a, &rec(1, 0.5), FoundBy::Mdns, true);
    m.disconnected(b);
    let row = m.get(&b).unwrap();
    assert_eq!((row.state, row.connected), (PeerState::Alive, false));
    assert_eq!(m.members().len(), 2);
    let mut leave = rec(2, 0.5);
    leave.leaving = true;
    m.merge(a, &leave, FoundBy::Mdns, true);
    m.disconnected(a);
    assert_eq!(m.get(&a).unwrap().state, PeerState::Left);
    assert_eq!(m.members().into_iter().collect::<Vec<_>>(), vec![b]);
    // A late connection does not revive it; its newer record after a
    // restart does.
    m.connected(a, None, FoundBy::Mdns);
    assert_eq!(m.get(&a).unwrap().state, PeerState::Left);
    m.merge(a, &rec(3, 0.5), FoundBy::Mdns, true);
    assert_eq!(m.get(&a).unwrap().state, PeerState::Alive);
}

#[test]
fn only_signed_third_party_news_revives_a_failed_cell() {
    let mut m = MeshView::default();
    let key = libp2p::identity::Keypair::generate_ed25519();
    let p = key.public().to_peer_id();
    m.connected(p, None, FoundBy::Mdns);
    m.disconnected(p);
    m.unreachable(p);
    m.merge(p, &rec(9, 1.0), FoundBy::Gossip, false);
    assert_eq!(m.get(&p).unwrap().state, PeerState::Failed, "unsigned, from a third party");
    m.merge(p, &rec(10, 1.0), FoundBy::Gossip, true);
    assert_eq!(m.get(&p).unwrap().state, PeerState::Alive);
    // Failed again; its newer signed record, relayed by a sync, revives it.
    m.unreachable(p);
    let signed = rec(11, 1.0).signed(&key).expect("signed");
    m.merge(p, &signed, FoundBy::Gossip, false);
    assert_eq!(m.get(&p).unwrap().state, PeerState::Alive);
    // And its signed leave, relayed, says it left.
    let mut bye = rec(12, 1.0);
    bye.leaving = true;
    m.merge(p, &bye.signed(&key).expect("signed"), FoundBy::Gossip, false);
    assert_eq!(m.get(&p).unwrap().state, PeerState::Left);
}

#[test]
fn the_mesh_vouches_for_a_cell_known_by_its_record() {
    let mut m = MeshView::default();
    let (heard, recorded) = (PeerId::random(), PeerId::random());
    let addr: Multiaddr = "/ip4/10.0.0.2/tcp/8001".parse().expect("addr");
    m.discovered(heard, std::slice::from_ref(&addr), FoundBy::Mdns);
    assert!(!m.vouched(&heard), "an mDNS answer alone vouches for nothing");
    m.merge(recorded, &rec(4, 1.0), FoundBy::Gossip, false);
    assert!(m.vouched(&recorded), "its record, relayed");
    m.unreachable(recorded);
    assert!(!m.vouched(&recorded), "failed");
    assert!(!m.vouched(&PeerId::random()), "unknown");
}

#[test]
fn network_level_is_the_mean_over_live_cells() {
    let mut m = MeshView::default();
    let (a, b) = (PeerId::random(), PeerId::random());
    m.merge(a, &rec(1, 1.0), FoundBy::Gossip, true);
    m.merge(b, &rec(1, 4.0), FoundBy::Gossip, true);
    m.unreachable(b);
    let s = Snapshot {
        local: LocalState {
            cell_id: "me".into(),
            peer_id: String::new(),
            branch: "main".into(),
            consciousness_level: 0.0,
            seq: 1,
            listen_addrs: vec![],
            transports: vec![],
            reachability: "unknown",
            relays: vec![],
            tags: BTreeMap::new(),
            services: vec![],
        },
        peers: m.entries(|_| false),
        degraded: None,
    };
    assert_eq!(s.network_level(), 0.5);
}

#[test]
fn a_held_version_is_known_stale_before_any_check() {
    let mut m = MeshView::new(PeerId::random(), "me");
    let (a, b) = (PeerId::random(), PeerId::random());
    assert!(!m.holds(&a, 1, true), "unknown: news");
    m.merge(a, &rec(3, 1.0), FoundBy::Gossip, true);
    assert!(m.holds(&a, 3, true) && m.holds(&a, 2, true));
    assert!(!m.holds(&a, 4, true));
    assert_eq!(m.merge(a, &rec(3, 2.0), FoundBy::Gossip, true).0, Merge::Stale);
    // A cell that speaks to us itself: others' word of it is stale.
    let rec_b = |seq| CellRecord { cell_id: "b".into(), ..rec(seq, 1.0) };
    m.connected(b, None, FoundBy::Mdns);
    m.merge(b, &rec_b(1), FoundBy::Inbound, true);
    assert!(m.holds(&b, 2, false) && !m.holds(&b, 2, true));
    assert_eq!(m.merge(b, &rec_b(2), FoundBy::Gossip, false).0, Merge::Stale);
}
