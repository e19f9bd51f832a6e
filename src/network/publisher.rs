//! What the rest of the process sees of the network: the [`Snapshot`] that
//! `/health`, `/peers` and the metrics read (coalesced per burst of swarm
//! events, at once for mesh events), the status events, and the state the
//! saver task writes. Never waits: `watch` and `broadcast` only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::mesh::{MeshEvent, PeerEntry, PeerState, Snapshot};
use crate::metrics::CellMetrics;
use crate::state::{RememberedPeer, State, MAX_REMEMBERED};

/// Swarm events are folded into one snapshot at most this long after the
/// first: building one costs O(cells), and when 50 cells start together
/// each sees thousands of events. Changes that make a mesh event (`GET
/// /events`: joined, failed, left, a level) are published at once.
pub(crate) const SNAPSHOT_COALESCE: Duration = Duration::from_millis(20);

/// When the next snapshot is due.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    due: Option<Instant>,
    /// A mesh event went out: publish now, not coalesced.
    urgent: bool,
    /// Something a snapshot shows changed.
    dirty: bool,
    /// Something changed that is worth a snapshot at the next tick only
    /// (round trips, identify details).
    soft: bool,
}

impl Coalescer {
    pub(crate) fn dirty(&mut self) {
        self.dirty = true;
    }

    pub(crate) fn soft(&mut self) {
        self.soft = true;
    }

    pub(crate) fn urgent(&mut self) {
        self.urgent = true;
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The tick: soft changes become due.
    pub(crate) fn tick(&mut self) {
        if self.soft {
            self.dirty = true;
        }
    }

    /// After an event: whether to publish now (a mesh event); otherwise the
    /// snapshot is scheduled [`SNAPSHOT_COALESCE`] after the first change.
    pub(crate) fn after_event(&mut self, now: Instant) -> bool {
        if self.dirty && self.urgent {
            return true;
        }
        if self.dirty && self.due.is_none() {
            self.due = Some(now + SNAPSHOT_COALESCE);
        }
        false
    }

    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    fn published(&mut self) {
        *self = Coalescer::default();
    }
}

#[derive(Debug)]
pub(crate) struct Publisher {
    pub(crate) coalescer: Coalescer,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Latest state for the saver task (never waits).
    state: watch::Sender<Option<State>>,
    events: broadcast::Sender<MeshEvent>,
    metrics: CellMetrics,
    /// (connected, alive, degraded) at the last snapshot, to notice status changes.
    last_counts: (usize, usize, bool),
}

impl Publisher {
    pub(crate) fn new(
        snapshot: watch::Sender<Arc<Snapshot>>,
        state: watch::Sender<Option<State>>,
        events: broadcast::Sender<MeshEvent>,
        metrics: CellMetrics,
    ) -> Self {
        Self {
            coalescer: Coalescer { dirty: true, ..Coalescer::default() },
            snapshot,
            state,
            events,
            metrics,
            last_counts: (0, 0, false),
        }
    }

    /// Sends a mesh event to `/events` subscribers; never waits. What
    /// `/events` says, `/peers` says too, at once.
    pub(crate) fn emit(&mut self, event: MeshEvent) {
        // An error only means nobody is subscribed.
        let _ = self.events.send(event);
        self.coalescer.urgent();
    }

    /// The latest snapshot published.
    pub(crate) fn latest(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Publishes `snap`: metrics, a status event when the counts changed,
    /// the state to save, and the snapshot itself.
    pub(crate) fn publish(&mut self, snap: Snapshot) {
        self.coalescer.published();
        let (events, levels) = compare(&self.snapshot.borrow(), &snap);
        for event in events {
            let _ = self.events.send(event);
        }
        if levels {
            self.metrics.observe_levels(&snap);
        }
        self.metrics.observe_counts(&snap);
        let counts = (snap.connected(), snap.count(PeerState::Alive), snap.degraded.is_some());
        if counts != self.last_counts {
            self.last_counts = counts;
            // Into this snapshot already: no need to publish again.
            let _ = self.events.send(MeshEvent::Status {
                status: if snap.degraded.is_some() { "degraded" } else { "healthy" },
                reason: snap.degraded.clone(),
                peers: counts.0,
                peers_alive: counts.1,
            });
        }
        let peers = snap
            .peers
            .iter()
            .filter(|e| e.connected && !e.addresses.is_empty())
            .take(MAX_REMEMBERED)
            .map(|e| RememberedPeer { peer_id: e.peer_id.clone(), addrs: e.addresses.clone() })
            .collect();
        self.state.send_replace(Some(State {
            level: snap.local.consciousness_level,
            branch: snap.local.branch.clone(),
            seq: snap.local.seq,
            peers,
        }));
        self.snapshot.send_replace(Arc::new(snap));
    }
}

/// The cells of two snapshots, pair by pair, when both list the same cells
/// (the usual case: they are in peer-id order, and an entry that did not
/// change is the same shared entry in both).
fn paired<'a>(old: &'a Snapshot, new: &'a Snapshot) -> Option<Vec<(&'a PeerEntry, &'a PeerEntry)>> {
    let same = old.peers.len() == new.peers.len()
        && old
            .peers
            .iter()
            .zip(&new.peers)
            .all(|(a, b)| Arc::ptr_eq(a, b) || a.peer_id == b.peer_id);
    same.then(|| {
        old.peers
            .iter()
            .zip(&new.peers)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .map(|(a, b)| (&**a, &**b))
            .collect()
    })
}

/// What changed between two snapshots that is told apart from the
/// snapshot itself: `services_changed` events for the cells (this one
/// included) whose tags or services differ (a cell new in `new` has none:
/// its `cell_joined` and the snapshot tell of it), and whether the levels
/// the metrics show (`aios_consciousness_level` per live cell) differ.
fn compare(old: &Snapshot, new: &Snapshot) -> (Vec<MeshEvent>, bool) {
    let mut events = Vec::new();
    if old.local.tags != new.local.tags || old.local.services != new.local.services {
        events.push(MeshEvent::ServicesChanged {
            peer_id: new.local.peer_id.clone(),
            cell_id: Some(new.local.cell_id.clone()),
            tags: new.local.tags.clone(),
            services: new.local.services.clone(),
            is_self: true,
        });
    }
    let paired = paired(old, new);
    let levels = old.local.cell_id != new.local.cell_id
        || old.local.consciousness_level != new.local.consciousness_level
        || paired.as_ref().is_none_or(|changed| {
            changed.iter().any(|(a, b)| {
                a.state != b.state
                    || a.cell_id != b.cell_id
                    || a.consciousness_level != b.consciousness_level
            })
        });
    let pairs = paired.unwrap_or_else(|| {
        let before: std::collections::HashMap<&str, &PeerEntry> =
            old.peers.iter().map(|p| (p.peer_id.as_str(), &**p)).collect();
        new.peers
            .iter()
            .filter_map(|p| before.get(p.peer_id.as_str()).map(|a| (*a, &**p)))
            .collect()
    });
    for (a, p) in pairs {
        if a.tags != p.tags || a.services != p.services {
            events.push(MeshEvent::ServicesChanged {
                peer_id: p.peer_id.clone(),
                cell_id: p.cell_id.clone(),
                tags: p.tags.clone(),
                services: p.services.clone(),
                is_self: false,
            });
        }
    }
    (events, levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(m: &crate::mesh::MeshView) -> Snapshot {
        Snapshot {
            local: crate::mesh::LocalState {
                cell_id: "me".into(),
                peer_id: String::new(),
                branch: "main".into(),
                consciousness_level: 0.5,
                seq: 1,
                listen_addrs: vec![],
                transports: vec![],
                reachability: "unknown",
                relays: vec![],
                tags: Default::default(),
                services: vec![],
            },
            peers: m.entries(|_| false),
            degraded: None,
        }
    }

    fn record(id: &str, seq: u64, level: f64, tag: &str) -> crate::network::protocol::CellRecord {
        crate::network::protocol::CellRecord {
            cell_id: id.into(),
            level,
            branch: "main".into(),
            seq,
            at_ms: 0,
            addrs: vec![],
            agent: String::new(),
            leaving: false,
            tags: [("room".to_owned(), tag.to_owned())].into(),
            services: Vec::new(),
            envelope: None,
        }
    }

    #[test]
    fn snapshots_share_unchanged_entries_and_tell_only_what_changed() {
        use crate::mesh::FoundBy;
        let mut m = crate::mesh::MeshView::new(libp2p::PeerId::random(), "me");
        let cells: Vec<libp2p::PeerId> = (0..3).map(|_| libp2p::PeerId::random()).collect();
        for (i, p) in cells.iter().enumerate() {
            m.merge(*p, &record(&format!("c{i}"), 1, 0.5, "a"), FoundBy::Gossip, true);
        }
        let first = snap(&m);
        // Nothing changed: the same entries, no event, the levels as shown.
        let same = snap(&m);
        assert!(first.peers.iter().zip(&same.peers).all(|(a, b)| Arc::ptr_eq(a, b)));
        assert!(compare(&first, &same).0.is_empty());
        assert!(!compare(&first, &same).1);
        // A round trip changes an entry but neither services nor levels.
        m.rtt(cells[0], Duration::from_millis(3));
        let rtt = snap(&m);
        assert_eq!(
            rtt.peers.iter().zip(&same.peers).filter(|(a, b)| !Arc::ptr_eq(a, b)).count(),
            1
        );
        assert!(compare(&same, &rtt).0.is_empty());
        assert!(!compare(&same, &rtt).1);
        // One cell's new record: its tags and level; the others still shared.
        m.merge(cells[1], &record("c1", 2, 0.9, "b"), FoundBy::Gossip, true);
        let next = snap(&m);
        let events = compare(&rtt, &next).0;
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], MeshEvent::ServicesChanged { peer_id, .. } if *peer_id == cells[1].to_base58())
        );
        assert!(compare(&rtt, &next).1);
        // A new cell: the lists no longer pair up; still told right.
        m.merge(libp2p::PeerId::random(), &record("c3", 1, 0.5, "a"), FoundBy::Gossip, true);
        m.merge(cells[2], &record("c2", 2, 0.5, "c"), FoundBy::Gossip, true);
        let grown = snap(&m);
        let events = compare(&next, &grown).0;
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], MeshEvent::ServicesChanged { peer_id, .. } if *peer_id == cells[2].to_base58())
        );
        assert!(compare(&next, &grown).1);
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_burst_of_changes_is_one_snapshot_and_a_mesh_event_goes_at_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert!(!c.after_event(t0));
        assert_eq!(c.due(), None, "nothing changed");
        c.dirty();
        assert!(!c.after_event(t0));
        c.dirty();
        assert!(!c.after_event(t0 + MS(5)));
        assert_eq!(c.due(), Some(t0 + SNAPSHOT_COALESCE), "the first change sets the time");
        c.urgent();
        assert!(c.after_event(t0 + MS(6)));
        c.published();
        // Soft changes wait for the tick.
        c.soft();
        assert!(!c.after_event(t0 + MS(7)));
        assert_eq!(c.due(), None);
        c.tick();
        assert!(!c.after_event(t0 + MS(500)));
        assert_eq!(c.due(), Some(t0 + MS(500) + SNAPSHOT_COALESCE));
    }
}
