//! Which cells this one keeps connections to, whatever the mesh's size:
//! its ring neighbours. The cells alive in the view, this one included,
//! sorted by peer id, form a ring; a cell links to the cells at ring
//! distances ±1, ±3, ±9, ±27, … (powers of [`BASE`] below the ring's
//! size). Any distance is a sum of at most one ± power of three per power
//! (balanced ternary), so every cell reaches every other in at most
//! `log₃ N` hops, and each holds at most `2·⌈log₃ N⌉` links: 10 up to 243
//! cells, 12 up to 729. The relation is symmetric (b is at +d from a
//! exactly when a is at −d from b), so two cells with the same view agree
//! on whether their link should exist without asking each other. Up to
//! [`FULL_MESH_UP_TO`] cells, every cell links to every other.
//!
//! Also: which cells answer mDNS for the mesh ([`RESPONDERS`]). Clock-free.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Ring distances are powers of this.
pub(crate) const BASE: usize = 3;
/// Up to this many cells, every cell links to every other (as many links
/// as the ring would give a few hundred cells, and the fastest way to
/// notice a crash).
pub(crate) const FULL_MESH_UP_TO: usize = 11;
/// A link to a cell that is no neighbour (a join, a `/register`, a check,
/// a neighbour no longer: the view changed) is closed once it is this old
/// and idle: long enough for the record exchange it was made for, and for
/// a view that changed for a moment to settle.
pub(crate) const PRUNE_AFTER: Duration = Duration::from_secs(15);
/// A cell keeps at most this many links whatever the mesh's size: its
/// ring neighbours (10 up to 243 cells, 12 up to 729) and a few others.
pub(crate) const LINKS_BOUND: usize = 16;
/// Above [`LINKS_BOUND`], links to cells that are no neighbours are closed
/// once this old (their record exchange done), not [`PRUNE_AFTER`].
pub(crate) const PRUNE_OVER_BOUND_AFTER: Duration = Duration::from_secs(2);

/// Which links to close, of `links`: each link's cell, its age, and for a
/// cell that is no neighbour (nor configured, busy, a relay, another
/// implementation) the age at which its link is closed
/// ([`PruneBackoff::after`]). Above [`LINKS_BOUND`] (a cell many others
/// found first: joining dials, strangers), the oldest of those close once
/// [`PRUNE_OVER_BOUND_AFTER`] old, down to the bound.
pub(crate) fn links_to_close(links: &[(PeerId, Duration, Option<Duration>)]) -> Vec<PeerId> {
    let mut close: Vec<PeerId> = links
        .iter()
        .filter(|(_, age, after)| after.is_some_and(|after| *age >= after))
        .map(|(p, _, _)| *p)
        .collect();
    let over = (links.len() - close.len()).saturating_sub(LINKS_BOUND);
    let mut extra: Vec<(Duration, PeerId)> = links
        .iter()
        .filter(|(p, age, after)| {
            after.is_some() && *age >= PRUNE_OVER_BOUND_AFTER && !close.contains(p)
        })
        .map(|(p, age, _)| (*age, *p))
        .collect();
    extra.sort_by_key(|(age, _)| std::cmp::Reverse(*age));
    close.extend(extra.into_iter().take(over).map(|(_, p)| p));
    close
}

/// A link to a cell that is no neighbour, made again after we closed it
/// (the other cell counts us its neighbour: our views differ, and it
/// dialed back at once to check that we live), is closed only after
/// twice as long as the last time, up to this. Views that differ for a
/// while (false failures under load, at 200 cells on two cores) made
/// links open and close every 15 s, each time a handshake, an exchange and
/// a ring change more.
pub(crate) const PRUNE_AFTER_MAX: Duration = Duration::from_secs(240);
/// A cell we closed a link to is forgotten (back to [`PRUNE_AFTER`]) this
/// long after that.
pub(crate) const PRUNE_MEMORY: Duration = Duration::from_secs(600);

/// How old a link to a cell that is no neighbour must be before it is
/// closed (see [`PRUNE_AFTER_MAX`]). Clock-free.
#[derive(Debug, Default)]
pub(crate) struct PruneBackoff {
    /// Cell → how often we closed its link, and when last.
    closed: std::collections::HashMap<PeerId, (u32, Instant)>,
}

impl PruneBackoff {
    /// The age at which a link to `peer` (no neighbour) is closed.
    pub(crate) fn after(&self, peer: &PeerId, now: Instant) -> Duration {
        match self.closed.get(peer) {
            Some((times, at)) if now.duration_since(*at) < PRUNE_MEMORY => {
                PRUNE_AFTER.saturating_mul(1 << (*times).min(8)).min(PRUNE_AFTER_MAX)
            }
            _ => PRUNE_AFTER,
        }
    }

    /// We closed the link to `peer`.
    pub(crate) fn closed(&mut self, peer: PeerId, now: Instant) {
        self.closed.retain(|_, (_, at)| now.duration_since(*at) < PRUNE_MEMORY);
        let e = self.closed.entry(peer).or_insert((0, now));
        *e = (e.0 + 1, now);
    }

    /// `peer` is a neighbour now: its next link starts afresh.
    pub(crate) fn neighbour(&mut self, peer: &PeerId) {
        self.closed.remove(peer);
    }
}

/// A failed cell keeps its place in the ring for this long after it was
/// last heard of: a cell failed for a moment (and revived by its refutation)
/// moves nobody's links.
pub(crate) const RING_KEEPS_FAILED: Duration = Duration::from_secs(30);
/// How many cells (the ones with the smallest peer ids) keep answering
/// mDNS queries once they have joined; the others stop, so that a query
/// costs a few answers, not one per cell. A newcomer that hears one answer
/// learns the whole mesh from that cell's records.
pub(crate) const RESPONDERS: usize = 3;

/// A cell starts mDNS at a random moment within this long after it
/// starts, unless it has joined by then (through the cells it remembers).
/// When a whole LAN of cells starts at once (a power cut ends), every
/// cell that runs mDNS answers every query, and each answer reaches every
/// such cell: N³ datagrams handled on the LAN at start. Spread out, the
/// first cells find each other and stop, and each later one hears a few
/// answers.
pub(crate) const MDNS_SPREAD: Duration = Duration::from_secs(1);

/// Whether mDNS should run now: while the cell knows no other cell, from
/// `from` on; once it knows some (an mDNS answer is enough: every cell
/// hears every answer), only on a `responder`.
pub(crate) fn mdns_wanted(
    now: Instant,
    from: Instant,
    knows_others: bool,
    responder: bool,
) -> bool {
    if knows_others {
        responder
    } else {
        now >= from
    }
}

/// The ring neighbours of `local` among `members` (this cell may or may
/// not be among them; it never is in the result).
pub(crate) fn neighbours(local: PeerId, members: &BTreeSet<PeerId>) -> BTreeSet<PeerId> {
    let mut ring: Vec<PeerId> = members.iter().copied().collect();
    let i = match ring.binary_search(&local) {
        Ok(i) => i,
        Err(i) => {
            ring.insert(i, local);
            i
        }
    };
    let n = ring.len();
    if n <= FULL_MESH_UP_TO {
        return ring.into_iter().filter(|p| *p != local).collect();
    }
    let mut out = BTreeSet::new();
    let mut d = 1;
    while d < n {
        out.insert(ring[(i + d) % n]);
        out.insert(ring[(i + n - d) % n]);
        d *= BASE;
    }
    out.remove(&local);
    out
}

/// The most links [`neighbours`] gives a cell in a mesh of `n` cells.
/// New ring neighbours are dialed once the set of neighbours has held
/// still this long. While a view grows (a LAN of cells starting
/// together), every cell learned of moves some neighbours; dialing each at
/// once and pruning it 15 s later cost a cell ~50 connections (a Noise
/// handshake, identify, gossip subscriptions and a record exchange each)
/// for the ~10 it keeps, at 100 cells.
pub(crate) const NEIGHBOURS_SETTLE: Duration = Duration::from_secs(2);
/// ... or once dials have been held back this long (a view that keeps
/// changing still gets its neighbours linked).
pub(crate) const NEIGHBOURS_HOLD_MAX: Duration = Duration::from_secs(5);
/// Each cell adds its own share of this to both waits (see
/// [`Settle::jitter_of`]): cells that start together see their views
/// settle together, and their dials at one moment were a burst of
/// handshakes (~500 in a second at 100 cells) that starved the probes
/// of the cells being watched, and raised false suspicions.
pub(crate) const NEIGHBOURS_JITTER: Duration = Duration::from_secs(5);
/// A cell with fewer links than this (dials under way included) dials at
/// once: it is joining. (Three, tried: every joining cell then dialed the
/// first cells it found as well, ~100 connections each at 100 cells.)
pub(crate) const MIN_LINKS: usize = 1;
/// A cell with this many links or fewer (dials under way included) waits
/// a quarter of its jitter ([`ONE_LINK_JITTER_DIV`]): its one link is all
/// it hears of the mesh by (if that cell pruned it from its gossip mesh,
/// [`DEAF_AFTER`] applies). In 100-cell starts such cells held one link
/// for up to 8.5 s while they knew 84 cells, and were the last views to
/// complete; with a quarter of the jitter the median start converged in
/// 7.3 s instead of 9.6 s (bench/RESULTS.md, sixth round).
pub(crate) const ONE_LINK: usize = 1;
pub(crate) const ONE_LINK_JITTER_DIV: u32 = 4;
/// A cell linked this long whose gossip mesh for the mesh topic is still
/// empty (see `Node::deaf`) dials its neighbours at once, as a joining one.
pub(crate) const DEAF_AFTER: Duration = Duration::from_secs(1);
/// At most this many new neighbours are dialed per call (the node's tick
/// is 0.5 s), for the same reason.
pub(crate) const NEIGHBOUR_DIALS_AT_ONCE: usize = 2;

/// When dials of new ring neighbours go out (see [`NEIGHBOURS_SETTLE`]).
/// Clock-free: the node tells it the neighbours and the time.
#[derive(Debug)]
pub(crate) struct Settle {
    set: BTreeSet<PeerId>,
    since: Instant,
    /// Since when dials have been held back.
    held: Option<Instant>,
    /// This cell's share of [`NEIGHBOURS_JITTER`].
    jitter: Duration,
}

impl Settle {
    pub(crate) fn new(now: Instant, jitter: Duration) -> Self {
        Self { set: BTreeSet::new(), since: now, held: None, jitter }
    }

    /// A cell's share of [`NEIGHBOURS_JITTER`], from its peer id: spread
    /// evenly over the cells, the same for a cell every time.
    pub(crate) fn jitter_of(local: &PeerId) -> Duration {
        let bytes = local.to_bytes();
        let tail: [u8; 8] = std::array::from_fn(|i| bytes[bytes.len().saturating_sub(8) + i]);
        let span = NEIGHBOURS_JITTER.as_millis() as u64;
        Duration::from_millis(u64::from_le_bytes(tail) % span.max(1))
    }

    /// This cell's share of [`NEIGHBOURS_JITTER`].
    pub(crate) fn jitter(&self) -> Duration {
        self.jitter
    }

    /// How long the set of neighbours has held still (as of the last
    /// [`Settle::due`]): while it changes, the view is still growing.
    pub(crate) fn still_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// Whether the dials of `neighbours` not linked yet may go out now:
    /// at once for a cell with fewer than [`MIN_LINKS`] `links` (it is
    /// joining), otherwise once the set has held still
    /// [`NEIGHBOURS_SETTLE`], or dials have waited [`NEIGHBOURS_HOLD_MAX`]
    /// (each plus the cell's jitter, a quarter of it with [`ONE_LINK`]
    /// link). At once too for a `deaf` cell (linked, but in no gossip mesh
    /// for [`DEAF_AFTER`]). `wanted`: some neighbour is not linked.
    pub(crate) fn due(
        &mut self,
        neighbours: &BTreeSet<PeerId>,
        links: usize,
        deaf: bool,
        wanted: bool,
        now: Instant,
    ) -> bool {
        if *neighbours != self.set {
            self.set.clone_from(neighbours);
            self.since = now;
        }
        if !wanted {
            self.held = None;
            return false;
        }
        let held = *self.held.get_or_insert(now);
        let jitter =
            if links <= ONE_LINK { self.jitter / ONE_LINK_JITTER_DIV } else { self.jitter };
        let due = links < MIN_LINKS
            || deaf
            || now.duration_since(self.since) >= NEIGHBOURS_SETTLE + jitter
            || now.duration_since(held) >= NEIGHBOURS_HOLD_MAX + jitter;
        if due {
            self.held = None;
        }
        due
    }
}

#[cfg(test)]
pub(crate) fn max_neighbours(n: usize) -> usize {
    if n <= FULL_MESH_UP_TO {
        return n.saturating_sub(1);
    }
    let mut d = 1;
    let mut k = 0;
    while d < n {
        k += 2;
        d *= BASE;
    }
    k
}

/// Whether `local` is one of the [`RESPONDERS`] smallest of `members` and
/// itself.
pub(crate) fn is_responder(local: PeerId, members: &BTreeSet<PeerId>) -> bool {
    members.range(..local).filter(|p| **p != local).take(RESPONDERS).count() < RESPONDERS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};

    fn ids(n: usize) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        v.sort();
        v
    }

    #[test]
    fn links_above_the_bound_close_as_soon_as_their_exchange_is_done_oldest_first() {
        let s = Duration::from_secs;
        // Ten neighbours, a link closed at its usual age, and eight young
        // links to cells that are no neighbours (joining dials).
        let mut links: Vec<(PeerId, Duration, Option<Duration>)> =
            (0..10).map(|_| (PeerId::random(), s(60), None)).collect();
        let due = PeerId::random();
        links.push((due, s(20), Some(PRUNE_AFTER)));
        let young: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        for (i, p) in young.iter().enumerate() {
            links.push((*p, Duration::from_millis(1000 + 200 * i as u64), Some(PRUNE_AFTER)));
        }
        let close = links_to_close(&links);
        // 18 kept would be 2 over: the two oldest of those past 2 s go.
        assert_eq!(close, vec![due, young[7], young[6]]);
        // Within the bound, young links wait for their usual age.
        links.truncate(14);
        assert_eq!(links_to_close(&links), vec![due]);
        // Neighbours are never closed, however many.
        let many: Vec<_> = (0..30).map(|_| (PeerId::random(), s(60), None)).collect();
        assert!(links_to_close(&many).is_empty());
    }

    /// Largest hop count from `from` to any cell over neighbour links.
    fn eccentricity(from: PeerId, all: &BTreeSet<PeerId>) -> usize {
        let mut dist = HashMap::from([(from, 0usize)]);
        let mut queue = VecDeque::from([from]);
        while let Some(p) = queue.pop_front() {
            let d = dist[&p];
            for q in neighbours(p, all) {
                dist.entry(q).or_insert_with(|| {
                    queue.push_back(q);
                    d + 1
                });
            }
        }
        assert_eq!(dist.len(), all.len(), "the overlay must reach every cell");
        dist.values().copied().max().unwrap_or(0)
    }

    #[test]
    fn small_meshes_are_full_meshes() {
        for n in 2..=FULL_MESH_UP_TO {
            let all: BTreeSet<PeerId> = ids(n).into_iter().collect();
            for p in &all {
                assert_eq!(neighbours(*p, &all).len(), n - 1, "n = {n}");
            }
        }
    }

    #[test]
    fn links_are_bounded_symmetric_and_few_hops_long() {
        for n in [12, 13, 30, 100, 200, 243, 250] {
            let all: BTreeSet<PeerId> = ids(n).into_iter().collect();
            let bound = max_neighbours(n);
            assert!(bound <= 12, "n = {n}: {bound}");
            let mut hops = 0;
            for p in &all {
                let mine = neighbours(*p, &all);
                assert!(mine.len() <= bound, "n = {n}: {} links", mine.len());
                assert!(!mine.contains(p));
                for q in &mine {
                    assert!(neighbours(*q, &all).contains(p), "n = {n}: not symmetric");
                }
                hops = hops.max(eccentricity(*p, &all));
            }
            // Balanced ternary: one ± power of three per digit.
            let digits = (1..).find(|k| BASE.pow(*k) >= n).unwrap_or(1) as usize;
            assert!(hops <= digits, "n = {n}: {hops} hops");
        }
    }

    #[test]
    fn a_cell_not_in_the_view_yet_gets_the_neighbours_it_would_have() {
        let all = ids(40);
        let (me, rest) = (all[17], all.iter().copied().filter(|p| *p != all[17]).collect());
        let with: BTreeSet<PeerId> = all.iter().copied().collect();
        assert_eq!(neighbours(me, &rest), neighbours(me, &with));
    }

    #[test]
    fn mdns_waits_its_turn_runs_until_the_cell_knows_others_then_only_on_responders() {
        let t0 = Instant::now();
        let from = t0 + Duration::from_millis(300);
        assert!(!mdns_wanted(t0, from, false, true), "not before its turn");
        assert!(mdns_wanted(from, from, false, false), "on while it knows nobody");
        assert!(!mdns_wanted(from, from, true, false), "off once it knows the mesh");
        assert!(mdns_wanted(t0, from, true, true), "a responder answers for the mesh");
    }

    #[test]
    fn new_neighbours_are_dialed_once_the_view_holds_still_or_has_waited_long_enough() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let all = ids(30);
        let view = |n: usize| -> BTreeSet<PeerId> { all[..n].iter().copied().collect() };
        let mut settle = Settle::new(t0, Duration::ZERO);
        // Joining (no link, no dial under way): at once.
        assert!(settle.due(&view(12), 0, false, true, t0));
        // Linked, the view changing: held back until it holds still 2 s.
        assert!(!settle.due(&view(13), MIN_LINKS, false, true, s(500)));
        assert!(!settle.due(&view(14), MIN_LINKS, false, true, s(1000)));
        assert!(!settle.due(&view(14), MIN_LINKS, false, true, s(2999)));
        assert!(settle.due(&view(14), MIN_LINKS, false, true, s(3000)));
        // Nothing wanted: nothing held.
        assert!(!settle.due(&view(14), MIN_LINKS, false, false, s(3500)));
        // A view that keeps changing: dialed after 5 s of waiting anyway.
        let mut at = None;
        for k in 0..40u64 {
            let now = s(4000 + k * 500);
            if settle.due(&view(15 + k as usize % 15), MIN_LINKS, false, true, now) {
                at = Some(now.duration_since(s(4000)));
                break;
            }
        }
        assert_eq!(at, Some(NEIGHBOURS_HOLD_MAX));
        // A cell's jitter stretches both waits; with one link, a quarter of it.
        let mut late = Settle::new(t0, Duration::from_millis(800));
        assert!(!late.due(&view(14), 2, false, true, t0));
        assert!(!late.due(&view(14), 2, false, true, s(2799)));
        assert!(late.due(&view(14), 2, false, true, s(2800)));
        let mut alone = Settle::new(t0, Duration::from_millis(800));
        assert!(!alone.due(&view(14), ONE_LINK, false, true, t0));
        assert!(!alone.due(&view(14), ONE_LINK, false, true, s(2199)));
        assert!(alone.due(&view(14), ONE_LINK, false, true, s(2200)));
        // Linked but in no gossip mesh (deaf): at once, as a joining cell.
        let mut deaf = Settle::new(t0, Duration::from_millis(800));
        assert!(!deaf.due(&view(14), ONE_LINK, false, true, t0));
        assert!(deaf.due(&view(15), ONE_LINK, true, true, s(100)));
        assert!(!deaf.due(&view(15), ONE_LINK, true, false, s(200)), "nothing wanted");
    }

    #[test]
    fn the_jitter_is_a_cells_own_and_spread_over_the_cells() {
        let all = ids(300);
        let j: Vec<Duration> = all.iter().map(Settle::jitter_of).collect();
        assert!(j.iter().all(|d| *d < NEIGHBOURS_JITTER));
        assert_eq!(Settle::jitter_of(&all[0]), j[0]);
        let early = j.iter().filter(|d| **d < NEIGHBOURS_JITTER / 2).count();
        assert!((100..200).contains(&early), "{early} of 300 in the first half");
    }

    #[test]
    fn a_link_closed_and_made_again_is_closed_later_each_time() {
        let t0 = Instant::now();
        let p = PeerId::random();
        let mut b = PruneBackoff::default();
        assert_eq!(b.after(&p, t0), PRUNE_AFTER);
        let mut waits = Vec::new();
        for _ in 0..6 {
            b.closed(p, t0);
            waits.push(b.after(&p, t0).as_secs());
        }
        assert_eq!(waits, [30, 60, 120, 240, 240, 240]);
        // Forgotten after ten minutes, or once the cell is a neighbour.
        assert_eq!(b.after(&p, t0 + PRUNE_MEMORY), PRUNE_AFTER);
        b.neighbour(&p);
        assert_eq!(b.after(&p, t0), PRUNE_AFTER);
    }

    #[test]
    fn the_three_smallest_cells_answer_mdns() {
        let all = ids(10);
        let set: BTreeSet<PeerId> = all.iter().copied().collect();
        let answering: Vec<bool> = all.iter().map(|p| is_responder(*p, &set)).collect();
        assert_eq!(answering, [true, true, true, false, false, false, false, false, false, false]);
        // A cell that knows only larger cells answers.
        let larger: BTreeSet<PeerId> = all[1..].iter().copied().collect();
        assert!(is_responder(all[0], &larger));
    }
}
