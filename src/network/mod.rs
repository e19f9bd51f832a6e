//! The libp2p side of a cell. One task, the [`Node`], owns the swarm and
//! routes each event to the component whose concern it is; every component
//! is a plain struct that takes `now`, returns actions, and is unit-tested
//! on a fake clock.
//!
//! - `node`: the loop (swarm, channels, timers) and the glue;
//! - `links`: every connection, "connected?", pruning, TCP over QUIC;
//! - `overlay`: which cells to keep links to (ring neighbours at ±3^k),
//!   and which answer mDNS;
//! - `dialer`: whom to dial and when, configured peers, `/register` dials;
//! - `liveness/`: the failure detector (ring watch, suspicion, silent
//!   close) and `liveness/health` (local health, Lifeguard's awareness);
//! - `membership`: hello, sync, leave and suspect exchanges, view settling;
//! - `local` and `gossip`: this cell's record, clone detection, incoming
//!   records and their verdicts;
//! - `beyond_lan`: networks of ours, Kademlia, AutoNAT, relays;
//! - `publisher`: snapshots, status events, the state to save;
//! - `tasks`, [`probe`], [`beat`]: the IO tasks beside the node;
//! - `handshake`: why a connection failed, from typed errors;
//! - `addr`: multiaddr helpers; [`behaviour`]: the composed behaviour and
//!   the swarm builder; [`protocol`]: the wire types (docs/protocol.md);
//!   [`handle`]: the cloneable handle everything else uses.

pub(crate) mod addr;
pub mod beat;
pub mod behaviour;
mod beyond_lan;
mod dialer;
mod gossip;
pub mod handle;
mod handshake;
mod links;
mod liveness;
mod local;
mod membership;
mod node;
mod overlay;
pub mod probe;
pub mod protocol;
mod publisher;
mod tasks;
#[cfg(test)]
mod testing;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, Swarm};

pub use behaviour::{Behaviour, BehaviourEvent};
pub use handle::{Command, CommandError, Handle, RegisterOutcome, SyncOutcome};
pub use node::{Node, EVENT_BUFFER};

use crate::config::Config;
pub use crate::config::PeerAddr as RegisterTarget;

/// Errors building or starting the swarm.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot set up the transport: {0}")]
    Transport(String),
    #[error("cannot set up the behaviour: {0}")]
    Behaviour(String),
    /// The reason is the innermost error (libp2p's `TransportError` prints
    /// nothing of its own for an OS error), said once.
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: std::io::Error },
    #[error("cannot subscribe to the gossip topic: {0}")]
    Subscribe(#[from] libp2p::gossipsub::SubscriptionError),
}

/// Listens on the configured TCP port, and on the same UDP port for QUIC
/// when it is on. TCP is the cell's transport: failing to listen there is
/// fatal. QUIC is optional: where its listener cannot start (Wine, a UDP
/// port another program holds, a firewall product) the cell warns with the
/// reason and runs on TCP (`/health` lists the transports that listen).
fn listen(swarm: &mut Swarm<Behaviour>, config: &Config) -> Result<(), NetworkError> {
    let ip = addr::ip_protocol(config.p2p_ip);
    let tcp = Multiaddr::empty().with(ip.clone()).with(Protocol::Tcp(config.p2p_port));
    listen_on(swarm, tcp)?;
    if config.quic {
        let quic =
            Multiaddr::empty().with(ip).with(Protocol::Udp(config.p2p_port)).with(Protocol::QuicV1);
        if let Err(e) = listen_on(swarm, quic) {
            tracing::warn!("QUIC is off, running on TCP only: {e}");
        }
    }
    Ok(())
}

fn listen_on(swarm: &mut Swarm<Behaviour>, addr: Multiaddr) -> Result<(), NetworkError> {
    swarm.listen_on(addr.clone()).map(drop).map_err(|e| {
        let reason = match e {
            libp2p::TransportError::Other(io) => io,
            libp2p::TransportError::MultiaddrNotSupported(a) => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("no transport for {a}"),
            ),
        };
        // An OS error whose text the platform left empty still says what
        // it was (its kind and code).
        let reason = if reason.to_string().trim().is_empty() {
            std::io::Error::new(reason.kind(), format!("{reason:?}"))
        } else {
            reason
        };
        NetworkError::Listen { addr, reason }
    })
}
