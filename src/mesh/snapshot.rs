//! What readers of the mesh see: the immutable [`Snapshot`] the network
//! node publishes after changes (`/health`, `/peers`, the metrics), and the
//! [`MeshEvent`]s `GET /events` streams.

use std::sync::Arc;

use serde::Serialize;

use super::{PeerEntry, PeerState, Transition};

/// What changed in the mesh, as `GET /events` streams it: each is one SSE
/// event named by `type`, with this JSON as its data.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MeshEvent {
    /// A cell we did not know appeared.
    CellJoined {
        peer_id: String,
        cell_id: Option<String>,
    },
    /// A failed or departed cell is back.
    CellAlive {
        peer_id: String,
        cell_id: Option<String>,
    },
    CellFailed {
        peer_id: String,
        cell_id: Option<String>,
    },
    CellLeft {
        peer_id: String,
        cell_id: Option<String>,
    },
    /// A cell's level changed (`self` is true for this cell's own).
    LevelChanged {
        peer_id: String,
        cell_id: Option<String>,
        level: f64,
        old_level: Option<f64>,
        #[serde(rename = "self")]
        is_self: bool,
    },
    /// A cell's tags or services changed (a service went up or down, or
    /// its first record brought them); `self` is true for this cell's own.
    ServicesChanged {
        peer_id: String,
        cell_id: Option<String>,
        tags: std::collections::BTreeMap<String, String>,
        services: Vec<crate::network::protocol::Service>,
        #[serde(rename = "self")]
        is_self: bool,
    },
    /// This cell's own status: health and how many cells it sees.
    Status {
        status: &'static str,
        reason: Option<String>,
        peers: usize,
        peers_alive: usize,
    },
}

impl MeshEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            MeshEvent::CellJoined { .. } => "cell_joined",
            MeshEvent::CellAlive { .. } => "cell_alive",
            MeshEvent::CellFailed { .. } => "cell_failed",
            MeshEvent::CellLeft { .. } => "cell_left",
            MeshEvent::LevelChanged { .. } => "level_changed",
            MeshEvent::ServicesChanged { .. } => "services_changed",
            MeshEvent::Status { .. } => "status",
        }
    }

    /// The event for a state transition.
    pub fn from_transition(t: &Transition, cell_id: Option<String>) -> MeshEvent {
        let peer_id = t.peer.to_base58();
        match (t.from, t.to) {
            (None, _) => MeshEvent::CellJoined { peer_id, cell_id },
            (_, PeerState::Alive) => MeshEvent::CellAlive { peer_id, cell_id },
            (_, PeerState::Failed) => MeshEvent::CellFailed { peer_id, cell_id },
            (_, PeerState::Left) => MeshEvent::CellLeft { peer_id, cell_id },
        }
    }
}

/// This cell's own state, as it publishes it.
#[derive(Debug, Clone, Serialize)]
pub struct LocalState {
    pub cell_id: String,
    pub peer_id: String,
    pub branch: String,
    pub consciousness_level: f64,
    pub seq: u64,
    pub listen_addrs: Vec<String>,
    /// The transports that listen (`tcp`, `quic`): QUIC is missing when
    /// its listener could not start.
    pub transports: Vec<&'static str>,
    /// What AutoNAT found: `unknown`, `public` or `private`.
    pub reachability: &'static str,
    /// Relays holding a reservation for this cell (peer ids), when private.
    pub relays: Vec<String>,
    /// This cell's tags (`AIOS_TAGS`).
    pub tags: std::collections::BTreeMap<String, String>,
    /// This cell's services and their status as last checked.
    pub services: Vec<crate::network::protocol::Service>,
}

/// What readers see: an immutable copy made by the network node after changes.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub local: LocalState,
    /// Shared with the view's rows and the other snapshots while unchanged.
    pub peers: Vec<Arc<PeerEntry>>,
    /// Set when the cell is degraded (why, and how to fix it).
    pub degraded: Option<String>,
}

impl Snapshot {
    pub fn count(&self, state: PeerState) -> usize {
        self.peers.iter().filter(|p| p.state == state).count()
    }

    pub fn connected(&self) -> usize {
        self.peers.iter().filter(|p| p.connected).count()
    }

    /// Mean level over this cell and every alive cell whose level we know.
    pub fn network_level(&self) -> f64 {
        let levels: Vec<f64> = std::iter::once(self.local.consciousness_level)
            .chain(
                self.peers
                    .iter()
                    .filter(|p| p.state == PeerState::Alive)
                    .filter_map(|p| p.consciousness_level),
            )
            .collect();
        levels.iter().sum::<f64>() / levels.len() as f64
    }
}
