//! The record exchanges over `/aios/register/1.0.0`: `hello` with every
//! newly connected cell, `sync` (anti-entropy by digest, and when a watched
//! cell's view hash differs for [`VIEW_SETTLE`]), `leave` and `suspect`
//! notices. Which requests are in flight and what each was, who has been
//! exchanged with, whom to sync next, and what to answer a `sync`.
//! Clock-free; the node sends and receives.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::dialer::RegisterReply;
use super::protocol::{DigestEntry, KnownCell, MAX_KNOWN_RECORDS};
use crate::mesh::MeshView;

/// A view that differs from the watched cell's for this long (gossip in
/// flight settles sooner) is repaired by a `sync`…
pub(crate) const VIEW_SETTLE: Duration = Duration::from_secs(2);
/// …at most this often per cell.
pub(crate) const VIEW_SYNC_GAP: Duration = Duration::from_secs(10);

/// A request of ours in flight.
#[derive(Debug)]
pub(crate) enum Request {
    /// A `hello`; `POST /register` may wait for its answer.
    Hello { peer: PeerId, reply: Option<RegisterReply> },
    /// A `sync` (anti-entropy).
    Sync { peer: PeerId },
    /// A `leave` notice at shutdown.
    Leave { peer: PeerId },
    /// A `suspect` notice about `suspect` sent `to` a cell: its answer
    /// says whether that cell reached the suspect (an indirect probe), or
    /// comes from the suspect itself.
    Suspect { to: PeerId, suspect: PeerId },
}

impl Request {
    /// The record exchanges (hello, sync) and their peer.
    fn exchange_peer(&self) -> Option<PeerId> {
        match self {
            Request::Hello { peer, .. } | Request::Sync { peer } => Some(*peer),
            _ => None,
        }
    }
}

/// `K` is the request id (libp2p's `OutboundRequestId`; tests use numbers).
#[derive(Debug)]
pub(crate) struct Membership<K> {
    in_flight: HashMap<K, Request>,
    /// Connected peers we have exchanged records with since they connected.
    exchanged: HashSet<PeerId>,
    /// The peer of the last anti-entropy exchange (round-robin cursor).
    last_exchange: Option<PeerId>,
    /// Since when the watched cell's view differs from ours, when it last
    /// agreed, and when a difference last made us sync each cell.
    differs_since: Option<Instant>,
    agreed_at: Option<Instant>,
    synced_at: HashMap<PeerId, Instant>,
}

impl<K: Hash + Eq + Copy> Membership<K> {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: HashMap::new(),
            exchanged: HashSet::new(),
            last_exchange: None,
            differs_since: None,
            agreed_at: None,
            synced_at: HashMap::new(),
        }
    }

    pub(crate) fn sent(&mut self, id: K, request: Request) {
        self.in_flight.insert(id, request);
    }

    /// The request `id` was answered or failed: what it was.
    pub(crate) fn settled(&mut self, id: K) -> Option<Request> {
        self.in_flight.remove(&id)
    }

    /// The cells whose leave notices are not yet acknowledged.
    pub(crate) fn leaves_pending(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .in_flight
            .values()
            .filter_map(|r| if let Request::Leave { peer } = r { Some(*peer) } else { None })
            .collect();
        out.sort();
        out
    }

    /// Every `POST /register` still waiting (at shutdown).
    pub(crate) fn drain_replies(&mut self) -> Vec<RegisterReply> {
        let mut out = Vec::new();
        for (_, r) in self.in_flight.drain() {
            if let Request::Hello { reply: Some(reply), .. } = r {
                out.push(reply);
            }
        }
        out
    }

    /// Records were exchanged with `peer` (or it does not speak the
    /// protocol: nothing to retry).
    pub(crate) fn exchanged(&mut self, peer: PeerId) {
        self.exchanged.insert(peer);
    }

    pub(crate) fn has_exchanged(&self, peer: &PeerId) -> bool {
        self.exchanged.contains(peer)
    }

    /// Connected cells we have not exchanged records with, and with no
    /// exchange in flight (the hello went out on a connection that was
    /// then closed): send them a hello.
    pub(crate) fn needs_hello(&self, connected: impl Iterator<Item = PeerId>) -> Vec<PeerId> {
        let busy: HashSet<PeerId> =
            self.in_flight.values().filter_map(Request::exchange_peer).collect();
        let mut out: Vec<PeerId> =
            connected.filter(|p| !self.exchanged.contains(p) && !busy.contains(p)).collect();
        out.sort();
        out
    }

    /// The next connected cell for the anti-entropy round, in turn.
    pub(crate) fn next_exchange(
        &mut self,
        connected: impl Iterator<Item = PeerId>,
    ) -> Option<PeerId> {
        let mut peers: Vec<PeerId> = connected.collect();
        peers.sort();
        let next = peers.iter().find(|p| Some(**p) > self.last_exchange).or(peers.first()).copied();
        if next.is_some() {
            self.last_exchange = next;
        }
        next
    }

    /// The watched cell changed: what we knew of the old one's view is moot.
    pub(crate) fn watch_changed(&mut self) {
        self.differs_since = None;
        self.agreed_at = None;
    }

    /// The watched cell's beat at `at` carried `theirs`; ours is `ours`.
    /// Returns whether to `sync` it now: the views differed for
    /// [`VIEW_SETTLE`] and no sync went to it within [`VIEW_SYNC_GAP`].
    pub(crate) fn on_view(&mut self, peer: PeerId, theirs: u32, ours: u32, at: Instant) -> bool {
        if theirs == ours {
            self.differs_since = None;
            self.agreed_at = Some(at);
            return false;
        }
        let since = *self.differs_since.get_or_insert(at);
        at.duration_since(since) >= VIEW_SETTLE && self.sync_due(peer, at)
    }

    /// Whether a `sync` to `peer` may go now (at most one per
    /// [`VIEW_SYNC_GAP`]); if so, notes it as sent.
    pub(crate) fn sync_due(&mut self, peer: PeerId, now: Instant) -> bool {
        let due = self.synced_at.get(&peer).is_none_or(|t| now.duration_since(*t) >= VIEW_SYNC_GAP);
        if due {
            self.synced_at.insert(peer, now);
        }
        due
    }

    /// The watched cell's view agreed with ours within `window`: the
    /// periodic exchange can be skipped.
    pub(crate) fn agreed_within(&self, now: Instant, window: Duration) -> bool {
        self.agreed_at.is_some_and(|t| now.duration_since(t) < window)
    }

    /// The last connection to `peer` closed.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.exchanged.remove(peer);
        self.synced_at.remove(peer);
    }
}

/// Every live record we hold, for a `hello` to `peer`. The peer's own
/// record is included on purpose, whatever we believe of it: if it is not
/// one the peer made, someone else holds its key (clone detection), and if
/// it says the peer left (a clone's leave), the peer answers with a newer one.
pub(crate) fn known_records(mesh: &MeshView, peer: PeerId) -> Vec<KnownCell> {
    let mut known: Vec<KnownCell> = mesh
        .alive_records()
        .take(MAX_KNOWN_RECORDS)
        .map(|(p, record)| KnownCell { peer_id: p.to_base58(), record })
        .collect();
    with_own_row(mesh, peer, &mut known);
    known
}

/// Adds `peer`'s own row when `known` lacks it (it is not alive here).
fn with_own_row(mesh: &MeshView, peer: PeerId, known: &mut Vec<KnownCell>) {
    let id = peer.to_base58();
    if known.len() < MAX_KNOWN_RECORDS && !known.iter().any(|k| k.peer_id == id) {
        if let Some(record) = mesh.record_of(&peer).filter(|r| r.leaving) {
            known.push(KnownCell { peer_id: id, record });
        }
    }
}

/// The digest of every record we hold, for a `sync`. Our own record is not
/// in it: the answer always brings back the peer's record of us, as a
/// `hello` does (clone detection).
pub(crate) fn digest(mesh: &MeshView) -> Vec<DigestEntry> {
    mesh.digest()
        .take(MAX_KNOWN_RECORDS)
        .map(|(p, seq)| DigestEntry { peer_id: p.to_base58(), seq })
        .collect()
}

/// The answer to `requester`'s `sync` with `digest`: the records we hold
/// (before merging its request) that are newer than its digest or missing
/// from it, and whether it holds something we lack (a newer record, or one
/// under our own key at a later `seq`: a clone), so that we ask it back.
pub(crate) fn answer_sync(
    mesh: &MeshView,
    local: (PeerId, u64),
    requester: PeerId,
    digest: &[DigestEntry],
) -> (Vec<KnownCell>, bool) {
    let held: HashMap<PeerId, u64> = digest
        .iter()
        .take(MAX_KNOWN_RECORDS)
        .filter_map(|d| Some((d.peer_id.parse::<PeerId>().ok()?, d.seq)))
        .filter(|(p, _)| *p != requester)
        .collect();
    let mut known: Vec<KnownCell> = mesh
        .newer_than(&held)
        .take(MAX_KNOWN_RECORDS)
        .map(|(p, record)| KnownCell { peer_id: p.to_base58(), record })
        .collect();
    with_own_row(mesh, requester, &mut known);
    let lacking = held.iter().any(|(p, seq)| {
        let ours = if *p == local.0 { Some(local.1) } else { mesh.seq_of(p) };
        ours.is_none_or(|s| *seq > s)
    });
    (known, lacking)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::FoundBy;
    use crate::network::protocol::CellRecord;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn record(name: &str, seq: u64) -> CellRecord {
        CellRecord {
            cell_id: name.into(),
            level: 0.5,
            branch: "main".into(),
            seq,
            at_ms: 1,
            addrs: vec!["/ip4/10.0.0.2/tcp/8001".into()],
            agent: "aios-cell/test".into(),
            leaving: false,
            tags: Default::default(),
            services: Vec::new(),
            envelope: None,
        }
    }

    #[test]
    fn a_view_that_differs_for_two_seconds_is_synced_at_most_every_ten() {
        let t0 = Instant::now();
        let peer = PeerId::random();
        let mut m: Membership<u64> = Membership::new();
        // (ms, their hash, sync?)
        let table = [
            (0, 1, false),
            (1000, 1, false),
            (2000, 1, true),
            (3000, 1, false),
            (11_000, 1, false),
            (12_000, 1, true),
        ];
        for (ms, theirs, want) in table {
            assert_eq!(m.on_view(peer, theirs, 9, t0 + MS(ms)), want, "at {ms} ms");
        }
        // Agreement resets the clock and lets the exchange be skipped.
        assert!(!m.on_view(peer, 9, 9, t0 + MS(13_000)));
        assert!(m.agreed_within(t0 + MS(20_000), Duration::from_secs(30)));
        assert!(!m.agreed_within(t0 + MS(44_000), Duration::from_secs(30)));
        assert!(!m.on_view(peer, 2, 9, t0 + MS(23_000)), "differs anew: settle first");
        m.watch_changed();
        assert!(!m.agreed_within(t0 + MS(23_000), Duration::from_secs(30)));
    }

    #[test]
    fn hellos_go_to_connected_cells_not_yet_exchanged_with_and_not_in_flight() {
        let mut m: Membership<u64> = Membership::new();
        let mut peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        peers.sort();
        assert_eq!(m.needs_hello(peers.iter().copied()), peers);
        m.sent(1, Request::Hello { peer: peers[0], reply: None });
        m.sent(2, Request::Sync { peer: peers[1] });
        m.sent(3, Request::Suspect { to: peers[2], suspect: peers[1] });
        assert_eq!(m.needs_hello(peers.iter().copied()), vec![peers[2]]);
        assert!(matches!(m.settled(1), Some(Request::Hello { .. })));
        m.exchanged(peers[0]);
        assert_eq!(m.needs_hello(peers.iter().copied()), vec![peers[2]]);
        m.disconnected(&peers[0]);
        assert_eq!(m.needs_hello(peers.iter().copied()), vec![peers[0], peers[2]]);
    }

    #[test]
    fn anti_entropy_takes_the_connected_cells_in_turn() {
        let mut m: Membership<u64> = Membership::new();
        let mut peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        peers.sort();
        let turns: Vec<_> =
            (0..4).filter_map(|_| m.next_exchange(peers.iter().rev().copied())).collect();
        assert_eq!(turns, vec![peers[0], peers[1], peers[2], peers[0]]);
        assert_eq!(m.next_exchange(std::iter::empty()), None);
    }

    #[test]
    fn a_sync_brings_what_is_newer_or_missing_and_asks_back_for_what_we_lack() {
        let me = PeerId::random();
        let key = |_| libp2p::identity::Keypair::generate_ed25519();
        let keys: Vec<_> = (0..3).map(key).collect();
        let [a, b, asker] = [0, 1, 2].map(|i| keys[i].public().to_peer_id());
        let c = PeerId::random();
        // Records as their authors signed them (only those are relayed).
        let signed = |i: usize, r: CellRecord| r.signed(&keys[i]).expect("signed");
        let mut mesh = MeshView::new(me, "me");
        mesh.merge(a, &signed(0, record("a", 5)), FoundBy::Gossip, true);
        mesh.merge(b, &signed(1, record("b", 5)), FoundBy::Gossip, true);
        let d = |p: PeerId, seq| DigestEntry { peer_id: p.to_base58(), seq };
        // The asker has a at 5 (same), b at 3 (older), and c we lack.
        let (known, lacking) = answer_sync(&mesh, (me, 10), asker, &[d(a, 5), d(b, 3), d(c, 1)]);
        let ids: Vec<String> = known.iter().map(|k| k.peer_id.clone()).collect();
        assert_eq!(ids, vec![b.to_base58()]);
        assert!(lacking);
        // Nothing newer on either side.
        let (known, lacking) = answer_sync(&mesh, (me, 10), asker, &[d(a, 5), d(b, 5)]);
        assert!(known.is_empty() && !lacking);
        // A record of ours newer than ours: a clone; ask back.
        let (_, lacking) = answer_sync(&mesh, (me, 10), asker, &[d(a, 5), d(b, 5), d(me, 11)]);
        assert!(lacking);
        // An asker we hold as left (its clone's leave) is shown that record.
        let mut left = record("asker", 9);
        left.leaving = true;
        mesh.merge(asker, &signed(2, left), FoundBy::Gossip, true);
        let (known, _) = answer_sync(&mesh, (me, 10), asker, &[d(a, 5), d(b, 5)]);
        assert!(known.iter().any(|k| k.peer_id == asker.to_base58() && k.record.leaving));
        assert!(known_records(&mesh, asker).iter().any(|k| k.peer_id == asker.to_base58()));
    }
}
