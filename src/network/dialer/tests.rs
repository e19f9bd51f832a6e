use super::*;
use crate::network::addr::addrs;
use crate::network::protocol::CellRecord;
use crate::network::testing::ordered_pair;

const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn the_smaller_peer_dials_at_once_the_larger_after_three_seconds() {
    let (small, large) = ordered_pair();
    let t0 = Instant::now();
    // Both already hold a link to some third cell.
    let linked = |me: PeerId| {
        let mut l = Links::new(me);
        let a = addrs(&["/ip4/10.0.0.3/tcp/8001"]);
        l.established(PeerId::random(), ConnectionId::new_unchecked(9), true, false, &a[0], t0);
        l
    };
    let mut s = Dialer::new(small, &[], t0);
    assert!(s.may_dial(large, t0, &linked(small)));
    let mut l = Dialer::new(large, &[], t0);
    let links = linked(large);
    assert!(!l.may_dial(small, t0, &links));
    assert!(!l.may_dial(small, t0 + MS(2999), &links));
    assert!(l.may_dial(small, t0 + DIAL_YIELD, &links));
    // A connection clears the wait: next time it starts over.
    l.established(ConnectionId::new_unchecked(1), small, false);
    assert!(!l.may_dial(small, t0 + MS(5000), &links));
    // A cell with no link at all is joining: it dials at once.
    assert!(Dialer::new(large, &[], t0).may_dial(small, t0, &Links::new(large)));
}

/// The times a failed cell is redialed in the first `until`.
fn redials(until: Duration, step: Duration) -> Vec<Duration> {
    let (me, other) = ordered_pair();
    let t0 = Instant::now();
    let mut d = Dialer::new(me, &[], t0);
    let mut mesh = MeshView::new(me, "me");
    let addr: Multiaddr = "/ip4/10.0.0.2/tcp/8001".parse().expect("addr");
    mesh.connected(other, Some(&addr), FoundBy::Mdns);
    mesh.disconnected(other);
    mesh.unreachable(other);
    let links = Links::new(me);
    let mut at = Vec::new();
    let mut t = Duration::ZERO;
    while t <= until {
        for s in d.on_tick(t0 + t, &mesh, &links) {
            match s {
                Step::Dial(dial) => {
                    assert_eq!(dial.peer, Some(other));
                    at.push(t);
                }
                Step::Resolve { .. } => panic!("nothing configured"),
            }
        }
        t += step;
    }
    at
}

#[test]
fn failed_cells_are_redialed_with_backoff_from_half_a_second_to_two() {
    let got = redials(Duration::from_secs(8), MS(100));
    let want: Vec<Duration> = [0, 500, 1500, 3500, 5500, 7500].into_iter().map(MS).collect();
    assert_eq!(got, want);
}

#[test]
fn failed_cells_are_given_up_after_ten_minutes() {
    let got = redials(Duration::from_secs(700), MS(500));
    let last = *got.last().expect("redials");
    assert!(last <= RETRY_GIVE_UP && last > RETRY_GIVE_UP - RETRY_MAX, "last at {last:?}");
    // ...until it is found again or comes back.
    let rate = got.windows(2).filter(|w| w[1] - w[0] == RETRY_MAX).count();
    assert!(rate > 290, "every 2 s in between ({rate})");
}

#[test]
fn a_configured_name_is_resolved_and_retried_when_it_does_not_resolve() {
    let (me, _) = ordered_pair();
    let t0 = Instant::now();
    let cfg: Vec<PeerAddr> = vec!["aios-desktop.local:8001".parse().expect("peer")];
    let mut d = Dialer::new(me, &cfg, t0);
    let links = Links::new(me);
    let mesh = MeshView::new(me, "me");
    let steps = d.on_tick(t0, &mesh, &links);
    assert!(matches!(steps.as_slice(), [Step::Resolve { index: 0, port: 8001, .. }]));
    // One resolution at a time.
    assert!(d.on_tick(t0 + MS(600), &mesh, &links).is_empty());
    // It failed: tried again after the backoff (0.5 s, then 1 s, ...).
    assert!(d.resolved(0, Err("no such host".into())).is_none());
    assert!(matches!(d.on_tick(t0 + MS(700), &mesh, &links).as_slice(), [Step::Resolve { .. }]));
    // It resolved: a dial, tracked until the swarm answers.
    let dial = d.resolved(0, Ok(addrs(&["/ip4/10.0.0.9/tcp/8001"]))).expect("a dial");
    assert_eq!(dial.addrs, addrs(&["/ip4/10.0.0.9/tcp/8001"]));
    let id = ConnectionId::new_unchecked(7);
    d.started(id, dial.pending.expect("tracked"));
    assert!(d.on_tick(t0 + MS(5000), &mesh, &links).is_empty(), "dialing");
    // The dial failed: retried after its backoff.
    let failed = d.failed(id, "refused");
    assert_eq!(failed.addr, Some(addrs(&["/ip4/10.0.0.9/tcp/8001"])[0].clone()));
    assert!(!failed.verify);
    assert_eq!(d.on_tick(t0 + MS(5000), &mesh, &links).len(), 1);
}

#[test]
fn a_configured_dial_the_swarm_refuses_is_tried_again() {
    let (me, _) = ordered_pair();
    let t0 = Instant::now();
    let cfg: Vec<PeerAddr> = vec!["/ip4/10.0.0.9/tcp/8001".parse().expect("peer")];
    let mut d = Dialer::new(me, &cfg, t0);
    let (links, mesh) = (Links::new(me), MeshView::new(me, "me"));
    let Some(Step::Dial(dial)) = d.on_tick(t0, &mesh, &links).pop() else {
        panic!("a dial");
    };
    d.not_started(dial.pending.expect("tracked"), "busy");
    assert!(d.on_tick(t0 + MS(100), &mesh, &links).is_empty(), "backoff");
    assert_eq!(d.on_tick(t0 + MS(600), &mesh, &links).len(), 1);
}

#[test]
fn a_register_dial_that_fails_answers_its_caller_with_a_hint() {
    let (me, _) = ordered_pair();
    let mut d = Dialer::new(me, &[], Instant::now());
    let (tx, mut rx) = oneshot::channel();
    let dial = d.register(addrs(&["/ip4/10.0.0.9/tcp/8000"])[0].clone(), tx, Instant::now());
    assert_eq!(dial.peer, None);
    let id = ConnectionId::new_unchecked(3);
    d.started(id, dial.pending.expect("tracked"));
    d.failed(id, "Connection refused");
    let err = rx.try_recv().expect("answered").expect_err("an error");
    assert!(err.to_string().contains("HTTP API"), "{err}");
}

#[test]
fn a_register_dial_that_hangs_is_given_up_at_its_deadline_naming_the_address() {
    let (me, _) = ordered_pair();
    let t0 = Instant::now();
    let mut d = Dialer::new(me, &[], t0);
    let (tx, mut rx) = oneshot::channel();
    let target = addrs(&["/ip4/10.0.0.9/tcp/8001"])[0].clone();
    let dial = d.register(target, tx, t0 + MS(4000));
    let id = ConnectionId::new_unchecked(5);
    d.started(id, dial.pending.expect("tracked"));
    assert!(d.expired(t0 + MS(3999)).is_empty());
    assert_eq!(d.expired(t0 + MS(4000)), vec![id], "the node aborts the dial");
    let err = rx.try_recv().expect("answered").expect_err("an error");
    assert!(matches!(err, CommandError::DialTimeout(_)));
    assert!(err.to_string().contains("/ip4/10.0.0.9/tcp/8001 is unreachable (timed out)"), "{err}");
    // The dial's own error, when it comes, finds nothing to answer.
    assert_eq!(d.failed(id, "timed out").addr, None);
    assert!(d.expired(t0 + MS(9000)).is_empty());
}

#[test]
fn a_failed_cell_is_redialed_only_by_the_cells_that_would_be_its_neighbours() {
    let now = Instant::now();
    let mut ids: Vec<PeerId> = (0..40).map(|_| PeerId::random()).collect();
    ids.sort();
    let addr: Multiaddr = "/ip4/10.0.0.2/tcp/8001".parse().expect("addr");
    let gone = ids[20];
    let mut redialers = 0;
    for me in &ids {
        if *me == gone {
            continue;
        }
        let mut mesh = MeshView::new(*me, "me");
        for p in ids.iter().filter(|p| *p != me) {
            mesh.connected(*p, Some(&addr), FoundBy::Mdns);
            mesh.disconnected(*p);
        }
        mesh.unreachable(gone);
        let mut d = Dialer::new(*me, &[], now);
        let steps = d.on_tick(now, &mesh, &Links::new(*me));
        let all: BTreeSet<PeerId> = ids.iter().copied().collect();
        let neighbour = overlay::neighbours(*me, &all).contains(&gone);
        assert_eq!(steps.len(), usize::from(neighbour));
        redialers += steps.len();
    }
    assert_eq!(redialers, overlay::max_neighbours(40));
}

#[test]
fn a_verification_dial_says_so_when_it_fails() {
    let (me, other) = ordered_pair();
    let now = Instant::now();
    let mut d = Dialer::new(me, &[], now);
    let a = addrs(&["/ip4/10.0.0.2/tcp/8001"]);
    let dial = d.verify(other, a, &Links::new(me)).expect("a dial");
    let id = ConnectionId::new_unchecked(3);
    d.started(id, dial.pending.expect("tracked"));
    assert!(d.failed(id, "Connection refused").verify);
}

#[test]
fn nobody_dials_itself_or_a_connected_cell() {
    let (me, other) = ordered_pair();
    let now = Instant::now();
    let d = Dialer::new(me, &[], now);
    let mut links = Links::new(me);
    let a = addrs(&["/ip4/10.0.0.2/tcp/8001"]);
    assert!(d.dial(me, a.clone(), FoundBy::Mdns, &links).is_none());
    assert!(d.dial(other, Vec::new(), FoundBy::Mdns, &links).is_none());
    assert!(d.dial(other, a.clone(), FoundBy::Mdns, &links).is_some());
    links.established(other, ConnectionId::new_unchecked(1), true, false, &a[0], now);
    assert!(d.dial(other, a, FoundBy::Mdns, &links).is_none());
}

#[test]
fn a_cell_found_that_no_record_names_is_dialed_once_the_view_holds_still() {
    let me = PeerId::random();
    let t0 = Instant::now();
    let mut mesh = MeshView::new(me, "me");
    let a = addrs(&["/ip4/10.0.0.2/tcp/8001"]);
    let (linked, stranger, named) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut links = Links::new(me);
    let mut d = Dialer::new(me, &[], t0);
    for p in [stranger, named] {
        mesh.discovered(p, &a, FoundBy::Mdns);
    }
    // Alone, the cell's joining dial goes first: no stranger dials.
    assert!(d.dial_strangers(t0 + MS(2500), &mesh, &links).is_empty());
    mesh.connected(linked, Some(&a[0]), FoundBy::Mdns);
    links.established(linked, ConnectionId::new_unchecked(1), true, false, &a[0], t0);
    // The link's record exchange named one of the two (its record).
    let record = CellRecord {
        cell_id: "named".into(),
        level: 0.0,
        branch: "main".into(),
        seq: 1,
        at_ms: 0,
        addrs: Vec::new(),
        agent: String::new(),
        leaving: false,
        tags: Default::default(),
        services: Vec::new(),
        envelope: None,
    };
    mesh.merge(named, &record, FoundBy::Gossip, false);
    // Soon after it was found, records may still name it.
    assert!(d.dial_strangers(t0 + MS(500), &mesh, &links).is_empty());
    // The view changed (its neighbours did): still growing. The wait
    // then is 1.5 s plus the cell's own share of the jitter.
    let j = overlay::Settle::jitter_of(&me);
    let view = BTreeSet::from([linked, stranger, named]);
    d.neighbours_due(t0 + MS(1000), &links, &view, false, false);
    assert!(d.dial_strangers(t0 + MS(2000) + j, &mesh, &links).is_empty());
    let view = BTreeSet::from([linked, stranger]);
    d.neighbours_due(t0 + MS(2000), &links, &view, false, false);
    assert!(d.dial_strangers(t0 + MS(3400) + j, &mesh, &links).is_empty());
    let dials = d.dial_strangers(t0 + MS(3500) + j, &mesh, &links);
    let dialed: Vec<_> = dials.iter().map(|x| x.peer).collect();
    assert_eq!(dialed, vec![Some(stranger)], "the stranger, whatever the peer ids");
    assert!(d.dial_strangers(t0 + MS(4000) + j, &mesh, &links).is_empty(), "once");
    assert_eq!(d.dial_strangers(t0 + MS(3500) + j + STRANGER_RETRY, &mesh, &links).len(), 1);
}
