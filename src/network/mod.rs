//! The libp2p side of a cell: the swarm's behaviour, the event loop that
//! owns it, the cloneable [`Handle`] everything else uses, and the wire types.

pub mod beat;
pub mod behaviour;
mod event_loop;
pub mod handle;
pub mod probe;
pub mod protocol;

pub use event_loop::{EventLoop, EVENT_BUFFER};
pub use handle::{Command, CommandError, Handle, RegisterOutcome, RegisterTarget, SyncOutcome};

/// Errors building or starting the swarm.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot set up the transport: {0}")]
    Transport(String),
    #[error("cannot set up the behaviour: {0}")]
    Behaviour(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot subscribe to the gossip topic: {0}")]
    Subscribe(String),
}
