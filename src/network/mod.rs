//! The libp2p side of a cell. One task, the [`Node`], owns the swarm and
//! routes each event to the component whose concern it is; every component
//! is a plain struct that takes `now`, returns actions, and is unit-tested
//! on a fake clock.
//!
//! - `node`: the loop (swarm, channels, timers) and the glue;
//! - `links`: every connection, "connected?", pruning, TCP over QUIC;
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

/// Listens on the configured TCP (and QUIC) port.
fn listen(swarm: &mut Swarm<Behaviour>, config: &Config) -> Result<(), NetworkError> {
    let ip = addr::ip_protocol(config.p2p_ip);
    let tcp = Multiaddr::empty().with(ip.clone()).with(Protocol::Tcp(config.p2p_port));
    let mut addrs = vec![tcp];
    if config.quic {
        addrs.push(
            Multiaddr::empty().with(ip).with(Protocol::Udp(config.p2p_port)).with(Protocol::QuicV1),
        );
    }
    for addr in addrs {
        if let Err(e) = swarm.listen_on(addr.clone()) {
            let reason = match e {
                libp2p::TransportError::Other(io) => io,
                libp2p::TransportError::MultiaddrNotSupported(a) => std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no transport for {a}"),
                ),
            };
            return Err(NetworkError::Listen { addr, reason });
        }
    }
    Ok(())
}
