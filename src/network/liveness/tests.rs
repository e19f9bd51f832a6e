//! The failure detector on a fake clock: no sockets, no sleeps.

use super::*;
use crate::mesh::FoundBy;
use libp2p::swarm::ConnectionId;
use libp2p::Multiaddr;

const MS: fn(u64) -> Duration = Duration::from_millis;
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(400);
const TICK: Duration = Duration::from_millis(500);

/// A cell and `n` connected, alive others, in peer-id order after it
/// (so the first of them is its ring successor).
struct Bed {
    me: PeerId,
    others: Vec<PeerId>,
    links: Links,
    mesh: MeshView,
    live: Liveness,
    t0: Instant,
}

impl Bed {
    fn new(n: usize, beats: bool) -> Self {
        let mut ids: Vec<PeerId> = (0..=n).map(|_| PeerId::random()).collect();
        ids.sort();
        let me = ids.remove(0);
        let t0 = Instant::now();
        let mut links = Links::new(me);
        let mut mesh = MeshView::new(me, "me");
        let addr: Multiaddr = "/ip4/10.0.0.2/tcp/8001".parse().expect("addr");
        for (i, p) in ids.iter().enumerate() {
            links.established(*p, ConnectionId::new_unchecked(i), true, false, &addr, t0);
            mesh.connected(*p, Some(&addr), FoundBy::Mdns);
        }
        let config = Config { probe_interval: INTERVAL, probe_timeout: TIMEOUT, beats };
        let live = Liveness::new(me, config, TICK, t0);
        Bed { me, others: ids, links, mesh, live, t0 }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + MS(ms)
    }

    fn round(&mut self, ms: u64) -> Vec<Action> {
        let now = self.at(ms);
        self.live.probe_round(now, Peers { links: &self.links, mesh: &self.mesh })
    }

    fn outcome(&mut self, peer: PeerId, purpose: Purpose, o: Outcome, ms: u64) -> Vec<Action> {
        let now = self.at(ms);
        self.live.on_probe(peer, purpose, &o, now, Peers { links: &self.links, mesh: &self.mesh })
    }

    fn overdue(&mut self, ms: u64) -> Vec<Action> {
        let now = self.at(ms);
        self.live.on_deadline(now, Peers { links: &self.links, mesh: &self.mesh })
    }

    /// `from` tells us it suspects `suspect` (at the incarnation we know).
    fn notice(&mut self, from: PeerId, suspect: PeerId, ms: u64) -> Vec<Action> {
        let now = self.at(ms);
        let inc = self.mesh.seq_of(&suspect).unwrap_or(0);
        let peers = Peers { links: &self.links, mesh: &self.mesh };
        self.live.on_notice(from, suspect, Some(inc), 1, now, peers)
    }

    /// Runs the deadlines up to `ms`, as the node's timer does.
    fn until(&mut self, ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(d) = self.live.deadline().filter(|d| *d <= self.at(ms)) {
            let a = self.live.on_deadline(d, Peers { links: &self.links, mesh: &self.mesh });
            self.apply(&a);
            out.extend(a);
        }
        out
    }

    /// Carries out `Fail` the way the node does.
    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            if let Action::Fail(p) = a {
                self.mesh.unreachable(*p);
            }
        }
    }
}

fn probes(actions: &[Action], purpose: Purpose) -> Vec<PeerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Probe { peer, purpose: p, .. } if *p == purpose => Some(*peer),
            _ => None,
        })
        .collect()
}

fn fails(actions: &[Action]) -> Vec<PeerId> {
    actions.iter().filter_map(|a| if let Action::Fail(p) = a { Some(*p) } else { None }).collect()
}

#[test]
fn the_ring_successor_is_watched_by_probes_without_beats() {
    let mut b = Bed::new(3, false);
    let next = b.others[0];
    let a = b.round(0);
    assert_eq!(a, vec![Action::Probe { peer: next, purpose: Purpose::Watch, timeout: TIMEOUT }]);
    assert_eq!(b.live.watch(), Watch::Probe { peer: next });
    assert_eq!(b.live.deadline(), None);
}

#[test]
fn an_overdue_beat_suspects_the_cell_to_every_other_cell_and_verifies() {
    let mut b = Bed::new(4, true);
    let next = b.others[0];
    let a = b.round(0);
    assert_eq!(a[0], Action::WatchBeats(next));
    assert!(matches!(b.live.watch(), Watch::Awaiting { .. }));
    // A beat at 200 ms: due at 200 + interval + probe wait = 1600 ms.
    assert!(b.live.on_beat(next, b.at(200)));
    assert_eq!(b.live.deadline(), Some(b.at(1600)));
    // A beat from a cell we do not watch changes nothing.
    assert!(!b.live.on_beat(b.others[1], b.at(300)));
    // Beating: the probe round sends no watch probe.
    assert!(probes(&b.round(1000), Purpose::Watch).is_empty());
    // Not yet overdue.
    assert!(b.overdue(1599).is_empty());
    let a = b.overdue(1600);
    assert_eq!(a[0], Action::Suspected { peer: next, wait: TIMEOUT });
    let notified: Vec<PeerId> = a
        .iter()
        .filter_map(|x| match x {
            Action::Notify { to, suspect, .. } if *suspect == next => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(notified, b.others, "every connected cell is told, the suspect too (it refutes)");
    assert!(
        a.contains(&Action::Announce { suspect: next, incarnation: 0, failed: false }),
        "and the whole mesh, by gossip"
    );
    // The suspect and every other live cell are checked.
    let mut verified = probes(&a, Purpose::Verify);
    verified.sort();
    assert_eq!(verified, b.others);
    assert!(fails(&a).is_empty(), "a suspicion alone fails nobody");
    assert!(a.contains(&Action::Mark { peer: next, on: true }));
    // Nobody confirms: it times out at 4 s unless refuted.
    assert_eq!(b.live.deadline(), Some(b.at(1600 + 4000).min(b.at(3000))));
}

#[test]
fn a_lone_unanswered_probe_never_fails_a_cell_on_its_own() {
    let mut b = Bed::new(8, false);
    let next = b.others[0];
    b.round(0);
    // The watch probe, then our own check, go unanswered: a suspicion,
    // told to every cell, and nobody failed.
    let a = b.outcome(next, Purpose::Watch, Outcome::Silent, 400);
    assert!(matches!(a[0], Action::Suspected { .. }));
    let a = b.outcome(next, Purpose::Verify, Outcome::Silent, 800);
    assert!(fails(&a).is_empty());
    // While it runs, the suspect is checked every round.
    assert_eq!(probes(&b.round(1000), Purpose::Verify), vec![next]);
    assert!(b.until(4399).is_empty(), "no other cell confirmed: it waits the whole 4 s");
    // Unrefuted and unconfirmed, it times out: failed.
    assert_eq!(fails(&b.until(4400)), vec![next]);
    // A failed cell is not probed for the watch: the ring moves on, and
    // the failed one is probed to see whether it is back.
    let a = b.round(5000);
    assert_eq!(probes(&a, Purpose::Watch), vec![b.others[1]]);
    assert_eq!(probes(&a, Purpose::Revive), vec![next]);
    // A silent revive probe is nothing new; an answer ends the silence.
    assert!(b.outcome(next, Purpose::Revive, Outcome::Silent, 5400).is_empty());
    b.outcome(next, Purpose::Revive, Outcome::Answered(MS(3)), 6400);
    assert!(probes(&b.round(7000), Purpose::Revive).is_empty());
}

#[test]
fn confirmations_from_other_cells_shorten_the_suspicion() {
    let mut b = Bed::new(8, false);
    let (x, others) = (b.others[0], b.others[1..].to_vec());
    // Another cell's notice: we check, and count it.
    let a = b.notice(others[0], x, 0);
    assert_eq!(probes(&a, Purpose::Verify), vec![x]);
    assert!(a.contains(&Action::Mark { peer: x, on: true }));
    assert_eq!(b.live.deadline(), Some(b.at(4000)));
    // Our own check is silent too: we confirm, and say so to every cell.
    let a = b.outcome(x, Purpose::Verify, Outcome::Silent, 400);
    let told =
        a.iter().filter(|a| matches!(a, Action::Notify { suspect, .. } if *suspect == x)).count();
    assert_eq!(told, 8);
    assert_eq!(b.live.deadline(), Some(b.at(2250)), "one confirmation: 2.25 s");
    // Two more cells confirm: down to the 0.5 s minimum.
    b.notice(others[1], x, 450);
    b.notice(others[2], x, 460);
    assert_eq!(b.live.deadline(), Some(b.at(500)));
    // The same cell twice counts once; we do not confirm twice.
    b.notice(others[2], x, 470);
    assert!(b.outcome(x, Purpose::Verify, Outcome::Silent, 480).is_empty());
    assert_eq!(fails(&b.until(500)), vec![x]);
}

#[test]
fn a_newer_record_of_the_suspect_refutes_the_suspicion() {
    let mut b = Bed::new(4, false);
    let x = b.others[0];
    let record = |seq| crate::network::protocol::CellRecord {
        cell_id: "x".into(),
        level: 0.5,
        branch: "main".into(),
        seq,
        at_ms: 1,
        addrs: Vec::new(),
        agent: "aios-cell/test".into(),
        leaving: false,
        tags: Default::default(),
        services: Vec::new(),
        envelope: None,
    };
    b.mesh.merge(x, &record(10), FoundBy::Gossip, true);
    b.notice(b.others[1], x, 0);
    assert!(b.live.is_suspected(&x));
    // A record it made before the suspicion refutes nothing.
    assert!(b.live.refuted(x, 10).is_empty());
    // One with a higher incarnation does.
    assert_eq!(b.live.refuted(x, 11), vec![Action::Mark { peer: x, on: false }]);
    assert!(!b.live.is_suspected(&x));
    assert!(b.until(10_000).is_empty(), "nothing times out");
    // A notice naming an incarnation older than what we hold is stale.
    b.mesh.merge(x, &record(12), FoundBy::Gossip, true);
    let peers = Peers { links: &b.links, mesh: &b.mesh };
    assert!(b.live.on_notice(b.others[1], x, Some(11), 1, b.t0, peers).is_empty());
}

#[test]
fn an_indirect_probe_answered_saves_the_cell() {
    let mut b = Bed::new(4, false);
    let x = b.others[0];
    b.round(0);
    b.outcome(x, Purpose::Watch, Outcome::Silent, 400);
    assert!(b.live.is_suspected(&x));
    // Another cell reached it (its answer to our notice says so), or it
    // answered the notice itself: the node calls `heard`.
    assert_eq!(b.live.heard(x), vec![Action::Mark { peer: x, on: false }]);
    assert!(b.until(10_000).is_empty());
    // So does our own probe answered while the suspicion runs.
    b.outcome(x, Purpose::Watch, Outcome::Silent, 11_000);
    let a = b.outcome(x, Purpose::Verify, Outcome::Answered(MS(2)), 11_300);
    assert!(a.contains(&Action::Mark { peer: x, on: false }));
    assert!(b.until(20_000).is_empty());
}

#[test]
fn a_suspicion_of_this_cell_raises_its_incarnation() {
    let mut b = Bed::new(3, false);
    let (me, from) = (b.me, b.others[0]);
    let peers = Peers { links: &b.links, mesh: &b.mesh };
    // A notice at our current incarnation (5): refute with a newer record.
    assert_eq!(b.live.on_notice(from, me, Some(5), 5, b.at(0), peers), vec![Action::Refute]);
    // One at an older incarnation than ours: our newer record is on its
    // way, or was lost on the way to the notice's author: refute again,
    // at most every half second.
    assert!(b.live.on_notice(from, me, Some(4), 6, b.at(10), peers).is_empty());
    assert_eq!(b.live.on_notice(from, me, Some(4), 6, b.at(510), peers), vec![Action::Refute]);
    // Suspected, this cell may be the slow one: its probes wait longer,
    // a step per 2 s of refuting, not per notice.
    assert_eq!(b.live.health_score(), 1);
    // An older cell names none: the same.
    assert!(b.live.on_notice(from, me, None, 7, b.at(700), peers).is_empty());
    assert_eq!(b.live.on_notice(from, me, None, 7, b.at(1100), peers), vec![Action::Refute]);
    // A notice at our incarnation is answered at once.
    assert_eq!(b.live.on_notice(from, me, Some(8), 8, b.at(1110), peers), vec![Action::Refute]);
    assert_eq!(b.live.health_score(), 1);
    assert_eq!(b.live.on_notice(from, me, Some(9), 9, b.at(3200), peers), vec![Action::Refute]);
    assert_eq!(b.live.health_score(), 2);
    assert!(!b.live.is_suspected(&me));
}

#[test]
fn many_cells_silent_at_once_stretch_the_wait_rather_than_fail() {
    let mut b = Bed::new(4, false);
    let others = b.others.clone();
    let mut failed = Vec::new();
    for (i, p) in others.iter().enumerate() {
        let a = b.outcome(*p, Purpose::Verify, Outcome::Silent, 100 + i as u64);
        failed.extend(fails(&a));
        if i >= 2 {
            // The third silent cell of four: this cell is suspect; it
            // checks again, with a longer wait.
            assert_eq!(fails(&a), vec![]);
            let wait = match &a[0] {
                Action::Probe { timeout, .. } => *timeout,
                other => panic!("expected a probe, got {other:?}"),
            };
            assert_eq!(wait, TIMEOUT * (1 + b.live.health_score()));
        }
    }
    assert!(failed.is_empty(), "a check alone fails nobody");
    assert_eq!(b.live.health_score(), 2);
    // The first two are suspected here (this cell's own checks); the last
    // two are checked again, more patiently.
    assert!(b.live.is_suspected(&others[0]) && b.live.is_suspected(&others[1]));
    assert!(!b.live.is_suspected(&others[2]) && !b.live.is_suspected(&others[3]));
}

#[test]
fn a_silent_cell_is_disconnected_after_ten_seconds() {
    let mut b = Bed::new(8, false);
    let p = b.others[3];
    b.outcome(p, Purpose::Verify, Outcome::Silent, 0);
    // Failed when its suspicion times out (4 s), closed 10 s after that.
    assert_eq!(fails(&b.until(4000)), vec![p]);
    let (_, a) = b.live.on_tick(b.at(14_000));
    assert!(a.is_empty(), "not before 10 s");
    let (_, a) = b.live.on_tick(b.at(14_001));
    assert_eq!(a, vec![Action::Disconnect(p)]);
    // Once.
    let (_, a) = b.live.on_tick(b.at(14_500));
    assert!(a.is_empty());
    // A cell that runs late itself (the test's ticks came seconds apart)
    // suspects nobody for an unanswered check: its own delay is the
    // likelier cause.
    assert!(b.live.health_score() > 0);
    let q = b.others[4];
    assert!(b.outcome(q, Purpose::Verify, Outcome::Silent, 15_000).is_empty());
    assert!(!b.live.is_suspected(&q));
}

#[test]
fn no_first_beat_within_three_seconds_means_tcp_probes() {
    let mut b = Bed::new(2, true);
    let next = b.others[0];
    let a = b.round(0);
    assert_eq!(a[0], Action::WatchBeats(next));
    // Awaiting its first beat: probed meanwhile.
    for ms in [1000, 2000, 3000] {
        let a = b.round(ms);
        assert_eq!(probes(&a, Purpose::Watch), vec![next], "at {ms} ms");
        assert!(!a.contains(&Action::UnwatchBeats), "at {ms} ms");
    }
    let a = b.round(3001);
    assert_eq!(probes(&a, Purpose::Watch), vec![next]);
    assert!(a.contains(&Action::UnwatchBeats));
    assert_eq!(b.live.watch(), Watch::Probe { peer: next });
    // A late beat does not bring it back.
    assert!(!b.live.on_beat(next, b.at(3100)));
    assert_eq!(b.live.watch(), Watch::Probe { peer: next });
    // Its beats are asked for again after BEATS_RETRY (probed meanwhile);
    // failing again doubles the wait; beats that come end the backoff.
    let retry = BEATS_RETRY.as_millis() as u64;
    let a = b.round(3001 + retry - 1);
    assert_eq!(probes(&a, Purpose::Watch), vec![next]);
    assert!(!a.contains(&Action::WatchBeats(next)));
    let t = 3001 + retry;
    let a = b.round(t);
    assert!(a.contains(&Action::WatchBeats(next)), "{a:?}");
    assert_eq!(probes(&a, Purpose::Watch), vec![next], "probed until the first beat");
    let a = b.round(t + 3001);
    assert!(a.contains(&Action::UnwatchBeats));
    let t2 = t + 3001;
    assert!(!b.round(t2 + retry).contains(&Action::WatchBeats(next)), "the wait doubled");
    let a = b.round(t2 + 2 * retry);
    assert!(a.contains(&Action::WatchBeats(next)));
    assert!(b.live.on_beat(next, b.at(t2 + 2 * retry + 100)));
    assert!(matches!(b.live.watch(), Watch::Beating { .. }));
}

#[test]
fn beats_that_stop_while_probes_are_answered_mean_tcp_probes() {
    let mut b = Bed::new(2, true);
    let next = b.others[0];
    b.round(0);
    b.live.on_beat(next, b.at(100));
    // An answered probe soon after a beat changes nothing.
    assert!(b.outcome(next, Purpose::Verify, Outcome::Answered(MS(1)), 600).is_empty());
    // Long after the last beat: UDP no longer gets through.
    let a = b.outcome(next, Purpose::Verify, Outcome::Answered(MS(1)), 1600);
    assert_eq!(a, vec![Action::UnwatchBeats]);
    assert_eq!(b.live.watch(), Watch::Probe { peer: next });
}

#[test]
fn a_refused_subscription_or_a_busy_task_means_tcp_probes() {
    let mut b = Bed::new(2, true);
    let next = b.others[0];
    b.round(0);
    assert_eq!(b.live.on_subscribed(next, false, b.at(0)), vec![Action::UnwatchBeats]);
    assert_eq!(b.live.watch(), Watch::Probe { peer: next });
    let mut c = Bed::new(2, true);
    c.round(0);
    c.live.beat_task_busy();
    assert_eq!(c.live.watch(), Watch::Probe { peer: c.others[0] });
}

#[test]
fn notices_are_checked_unless_the_suspect_does_not_probe() {
    let mut b = Bed::new(3, false);
    let (from, suspect) = (b.others[0], b.others[1]);
    let a = b.notice(from, suspect, 0);
    assert_eq!(probes(&a, Purpose::Verify), vec![suspect]);
    // A cell that does not speak the probe protocol is judged by ping.
    let c = b.others[2];
    let (now, peers) = (b.at(0), Peers { links: &b.links, mesh: &b.mesh });
    b.live.on_probe(c, Purpose::Watch, &Outcome::Unsupported, now, peers);
    assert!(b.notice(from, c, 10).is_empty());
    assert!(b.live.ping_failed(&c));
    b.live.disconnected(&c);
    assert!(!b.live.ping_failed(&c));
}

#[test]
fn an_overdue_beat_of_a_cell_no_longer_alive_suspects_nobody() {
    let mut b = Bed::new(2, true);
    let next = b.others[0];
    b.round(0);
    b.live.on_beat(next, b.at(100));
    b.mesh.unreachable(next);
    assert!(b.overdue(1500).is_empty());
    assert_eq!(b.live.deadline(), None);
}

#[test]
fn a_suspicion_heard_by_gossip_of_a_cell_not_linked_here_runs_without_a_probe_and_fails_it() {
    let mut b = Bed::new(3, false);
    // A cell alive in the view that this one holds no link to.
    let far = PeerId::random();
    let mut first = crate::network::protocol::CellRecord {
        cell_id: "far".into(),
        level: 0.5,
        branch: "main".into(),
        seq: 4,
        at_ms: 0,
        addrs: vec![],
        agent: String::new(),
        leaving: false,
        envelope: None,
        tags: Default::default(),
        services: Vec::new(),
    };
    b.mesh.merge(far, &first, FoundBy::Gossip, true);
    let (x, y, z) = (b.others[0], b.others[1], b.others[2]);
    let a = b.notice(x, far, 0);
    assert!(a.contains(&Action::Mark { peer: far, on: true }));
    assert!(probes(&a, Purpose::Verify).is_empty(), "no link to it: nothing to probe");
    assert!(b.live.is_suspected(&far));
    // Two more cells confirm: the suspicion ends sooner than its 4 s, and
    // fails it.
    b.notice(y, far, 100);
    b.notice(z, far, 200);
    assert!(b.live.deadline().is_some_and(|d| d < b.at(4000)));
    let failed = b.until(4000);
    assert_eq!(fails(&failed), vec![far]);
    // It says so: were the cell alive, it would hear it and refute.
    assert!(failed.contains(&Action::Announce { suspect: far, incarnation: 4, failed: false }));
    // A newer record of it (the cell refuting, late) would have saved it.
    let mut c = Bed::new(3, false);
    c.mesh.merge(far, &first, FoundBy::Gossip, true);
    c.notice(x, far, 0);
    first.seq = 5;
    c.mesh.merge(far, &first, FoundBy::Gossip, true);
    assert_eq!(c.live.refuted(far, 5), vec![Action::Mark { peer: far, on: false }]);
    assert!(fails(&c.until(10_000)).is_empty());
}

#[test]
fn a_closed_link_does_not_end_a_suspicion() {
    let mut b = Bed::new(3, false);
    let (from, suspect) = (b.others[0], b.others[1]);
    b.notice(from, suspect, 0);
    b.live.disconnected(&suspect);
    assert!(b.live.is_suspected(&suspect), "links close for many reasons; the suspicion runs on");
}

#[test]
fn a_cell_that_fails_a_cell_it_checked_says_so_and_a_live_one_refutes_it() {
    let mut b = Bed::new(4, false);
    let next = b.others[0];
    b.round(0);
    b.outcome(next, Purpose::Watch, Outcome::Silent, 400);
    let due = b.live.deadline().expect("a suspicion runs");
    let a = b.until(400 + 4000);
    assert_eq!(fails(&a), vec![next], "due {:?}", due.duration_since(b.t0));
    assert!(
        a.contains(&Action::Announce { suspect: next, incarnation: 0, failed: false }),
        "{a:?}"
    );
    // The cell so failed (alive after all) refutes, once per gap.
    let mut c = Bed::new(1, false);
    assert_eq!(c.live.failed_here(b.me, c.at(0)), vec![Action::Refute]);
    assert!(c.live.failed_here(b.me, c.at(100)).is_empty());
    assert_eq!(c.live.failed_here(b.me, c.at(600)), vec![Action::Refute]);
}

#[test]
fn suspicion_timeouts_grow_slowly_with_the_mesh() {
    assert_eq!(super::size_stretch(3), 1.0);
    assert_eq!(super::size_stretch(20), 1.0);
    let (at100, at200) = (super::size_stretch(100), super::size_stretch(200));
    assert!((1.5..1.6).contains(&at100), "{at100}");
    assert!((1.7..1.8).contains(&at200), "{at200}");
}

#[test]
fn a_cell_that_runs_late_waits_longer_before_failing_a_suspect() {
    let mut b = Bed::new(4, false);
    let x = b.others[0];
    b.notice(b.others[1], x, 0);
    assert_eq!(b.live.deadline(), Some(b.at(4000)));
    // This cell's own loop stalls: a tick a second late (strain 1).
    b.live.on_tick(b.at(1500));
    assert_eq!(b.live.health_score(), 1);
    // The suspicion's time comes: put off by (1 + strain) × 500 ms, four
    // times at most, then the cell is failed.
    assert!(fails(&b.until(4000)).is_empty());
    assert!(b.live.is_suspected(&x));
    assert_eq!(b.live.deadline(), Some(b.at(5000)));
    assert!(fails(&b.until(7999)).is_empty());
    assert_eq!(fails(&b.until(8000)), vec![x]);
    // The refutation that was queued behind the delay arrives in that
    // time: the cell is never failed.
    let mut c = Bed::new(4, false);
    let x = c.others[0];
    c.notice(c.others[1], x, 0);
    c.live.on_tick(c.at(1500));
    assert!(fails(&c.until(4500)).is_empty());
    assert_eq!(c.live.refuted(x, 1), vec![Action::Mark { peer: x, on: false }]);
    assert!(fails(&c.until(20_000)).is_empty());
}
