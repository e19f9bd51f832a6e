//! What the rest of the process sees of the network: the [`Snapshot`] that
//! `/health`, `/peers` and the metrics read (coalesced per burst of swarm
//! events, at once for mesh events), the status events, and the state the
//! saver task writes. Never waits: `watch` and `broadcast` only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::mesh::{MeshEvent, PeerState, Snapshot};
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
        for event in services_changed(&self.snapshot.borrow(), &snap) {
            let _ = self.events.send(event);
        }
        self.metrics.observe(&snap);
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

/// `services_changed` events for the cells (this one included) whose tags
/// or services differ between two snapshots. A cell new in `new` has none:
/// its `cell_joined` and the snapshot tell of it.
fn services_changed(old: &Snapshot, new: &Snapshot) -> Vec<MeshEvent> {
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
    let before: std::collections::HashMap<&str, _> =
        old.peers.iter().map(|p| (p.peer_id.as_str(), (&p.tags, &p.services))).collect();
    for p in &new.peers {
        if let Some((tags, services)) = before.get(p.peer_id.as_str()) {
            if **tags != p.tags || **services != p.services {
                events.push(MeshEvent::ServicesChanged {
                    peer_id: p.peer_id.clone(),
                    cell_id: p.cell_id.clone(),
                    tags: p.tags.clone(),
                    services: p.services.clone(),
                    is_self: false,
                });
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

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
