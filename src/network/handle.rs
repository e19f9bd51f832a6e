//! The cloneable handle to the network node: cheap reads from the published
//! snapshot, actions as commands with a oneshot reply under a timeout.

use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::mesh::{MeshEvent, Snapshot};

/// Commands the node takes.
#[derive(Debug)]
pub enum Command {
    /// Set the level (when given) and publish this cell's record now.
    SetLevel { level: Option<f64>, reply: oneshot::Sender<SyncOutcome> },
    /// Dial `addr` and exchange records with whoever answers.
    Register { addr: Multiaddr, reply: oneshot::Sender<Result<RegisterOutcome, CommandError>> },
    /// The statuses of this cell's services, by name, as the checker found
    /// them (sent only when one changed): republish the record if so.
    ServiceStatus { statuses: Vec<(String, super::protocol::ServiceStatus)> },
    /// Forget a cell that is gone for good (its row and its name).
    Forget { peer: libp2p::PeerId, reply: oneshot::Sender<Result<(), crate::mesh::ForgetError>> },
}

/// What `POST /sync-consciousness` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SyncOutcome {
    pub old_level: f64,
    pub new_level: f64,
    pub network_level: f64,
    /// Cells the record was sent to directly.
    pub reached: usize,
    pub seq: u64,
}

/// What `POST /register` reports: the cell that answered.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterOutcome {
    pub peer_id: String,
    pub cell_id: String,
    pub branch: String,
    pub consciousness_level: f64,
    pub addresses: Vec<String>,
    pub agent: String,
    /// How many other cells it told us about.
    pub known_cells: usize,
}

/// Why an action failed. The API maps each to a status.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("the cell is shutting down")]
    Stopped,
    #[error("the cell is busy; try again")]
    Busy,
    #[error("the swarm did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Unreachable(String),
    /// A dial that nothing answered in time.
    #[error("{0}")]
    DialTimeout(String),
    #[error("{0}")]
    BadTarget(String),
}

/// Cloneable access to a running cell's network.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    events: broadcast::Sender<MeshEvent>,
    timeout: Duration,
    /// Counts commands refused because the queue was full.
    rejected: prometheus_client::metrics::counter::Counter,
}

/// Resolves `host:port` (names through the OS resolver, so `.local` names
/// work where the OS resolves them) into TCP multiaddrs, IPv4 first.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<Multiaddr>, String> {
    let mut addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host} has no addresses"));
    }
    Ok(addrs.into_iter().map(|a| super::addr::tcp_multiaddr(a.ip(), a.port())).collect())
}

impl Handle {
    pub(crate) fn new(
        tx: mpsc::Sender<Command>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        events: broadcast::Sender<MeshEvent>,
        timeout: Duration,
        rejected: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self { tx, snapshot, events, timeout, rejected }
    }

    /// Subscribes to mesh events. A subscriber that falls more than the
    /// buffer behind gets `Lagged` and should give up.
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.events.subscribe()
    }

    /// The latest published view of the mesh; no round trip.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.rejected.inc();
                CommandError::Busy
            }
            mpsc::error::TrySendError::Closed(_) => CommandError::Stopped,
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(CommandError::Stopped),
            Err(_) => Err(CommandError::Timeout(self.timeout)),
        }
    }

    /// Sets the level when given and publishes this cell's record at once.
    pub async fn sync(&self, level: Option<f64>) -> Result<SyncOutcome, CommandError> {
        self.ask(|reply| Command::SetLevel { level, reply }).await
    }

    /// Tells the node the statuses of this cell's services (no reply: the
    /// checker sends again next round when this fails).
    pub fn service_status(
        &self,
        statuses: Vec<(String, super::protocol::ServiceStatus)>,
    ) -> Result<(), CommandError> {
        self.tx.try_send(Command::ServiceStatus { statuses }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandError::Busy,
            mpsc::error::TrySendError::Closed(_) => CommandError::Stopped,
        })
    }

    /// Forgets a failed or left cell (Serf's `force-leave`).
    pub async fn forget(
        &self,
        peer: libp2p::PeerId,
    ) -> Result<Result<(), crate::mesh::ForgetError>, CommandError> {
        self.ask(|reply| Command::Forget { peer, reply }).await
    }

    /// Dials a cell and exchanges records with it.
    pub async fn register(
        &self,
        target: super::RegisterTarget,
    ) -> Result<RegisterOutcome, CommandError> {
        let addr = match target {
            super::RegisterTarget::Multiaddr(m) => m,
            super::RegisterTarget::Host { host, port } => {
                let resolved = tokio::time::timeout(self.timeout, resolve(&host, port))
                    .await
                    .map_err(|_| CommandError::Timeout(self.timeout))?
                    .map_err(CommandError::Unreachable)?;
                resolved
                    .into_iter()
                    .next()
                    .ok_or_else(|| CommandError::Unreachable(format!("{host} has no addresses")))?
            }
        };
        self.ask(|reply| Command::Register { addr, reply }).await?
    }
}
