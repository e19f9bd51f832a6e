//! Why a connection failed, from libp2p's typed errors (not their text),
//! and the one warning per remote that explains a failed handshake.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::io;

use libp2p::swarm::{DialError, ListenError};
use libp2p::PeerId;

/// What went wrong with a connection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Failure {
    #[error("connection refused (nothing listens there)")]
    Refused,
    #[error("timed out")]
    TimedOut,
    #[error("the cell there has peer id {obtained}, not the one asked for")]
    WrongPeer { obtained: PeerId },
    /// Noise, the swarm key (pnet) or protocol negotiation failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("{0}")]
    Other(String),
}

impl Failure {
    pub(crate) fn of_dial(e: &DialError) -> Failure {
        match e {
            DialError::WrongPeerId { obtained, .. } => Failure::WrongPeer { obtained: *obtained },
            DialError::Transport(errors) => {
                // The first address's reason stands for all (TCP first).
                let classified: Vec<Failure> = errors.iter().map(|(_, e)| of_chain(e)).collect();
                classified
                    .iter()
                    .find(|f| matches!(f, Failure::Handshake(_)))
                    .or(classified.first())
                    .cloned()
                    .unwrap_or_else(|| Failure::Other(e.to_string()))
            }
            other => Failure::Other(other.to_string()),
        }
    }

    pub(crate) fn of_listen(e: &ListenError) -> Failure {
        match e {
            ListenError::WrongPeerId { obtained, .. } => Failure::WrongPeer { obtained: *obtained },
            ListenError::Transport(t) => of_chain(t),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// Walks an error and its sources for a type that says what happened.
fn of_chain(e: &(dyn StdError + 'static)) -> Failure {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<libp2p::noise::Error>()
            || err.is::<libp2p::pnet::PnetError>()
            || err.is::<libp2p::core::upgrade::NegotiationError>()
        {
            return Failure::Handshake(err.to_string());
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return Failure::Refused,
                io::ErrorKind::TimedOut => return Failure::TimedOut,
                _ => {}
            }
            // An io::Error's `source` skips the error it wraps: descend
            // into that one instead.
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn StdError + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    Failure::Other(e.to_string())
}

/// Explains failed handshakes once per remote: in a private mesh most
/// likely a different swarm key, or none.
#[derive(Debug)]
pub(crate) struct Explainer {
    /// A pre-shared key is set.
    private: bool,
    warned: HashSet<String>,
}

impl Explainer {
    pub(crate) fn new(private: bool) -> Self {
        Self { private, warned: HashSet::new() }
    }

    /// Whether `failure` is worth a warning: a handshake failure, or in a
    /// private mesh anything but a refusal, a timeout or a wrong peer id
    /// (a pnet mismatch often shows as a broken stream).
    fn worth(&self, failure: &Failure) -> bool {
        match failure {
            Failure::Handshake(_) => true,
            Failure::Other(_) => self.private,
            _ => false,
        }
    }

    /// Says once per remote why a connection failed, when that is useful.
    /// Returns whether it warned.
    pub(crate) fn explain(&mut self, remote: &str, failure: &Failure) -> bool {
        if remote.is_empty() || !self.worth(failure) {
            return false;
        }
        if self.warned.len() > 1024 {
            self.warned.clear();
        }
        if !self.warned.insert(remote.to_owned()) {
            return false;
        }
        if self.private {
            tracing::warn!(
                remote,
                error = %failure,
                "a connection failed in the handshake: this is a private mesh, and the other cell \
                 probably has a different swarm key or none (compare the key fingerprints in the start logs)"
            );
        } else {
            tracing::warn!(
                remote,
                error = %failure,
                "a connection failed in the handshake: the other side may be a cell in a private mesh \
                 (it has a swarm key and this cell has none), or not a cell at all"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(inner: io::Error) -> io::Error {
        io::Error::other(inner)
    }

    #[test]
    fn failures_are_told_apart_by_type() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(of_chain(&wrapped(refused)), Failure::Refused);
        assert_eq!(of_chain(&io::Error::from(io::ErrorKind::TimedOut)), Failure::TimedOut);
        let noise = io::Error::other(libp2p::noise::Error::BadSignature);
        assert!(matches!(of_chain(&noise), Failure::Handshake(_)));
        let nego = io::Error::other(libp2p::core::upgrade::NegotiationError::Failed);
        assert!(matches!(of_chain(&nego), Failure::Handshake(_)));
        assert!(matches!(of_chain(&io::Error::other("strange")), Failure::Other(_)));
    }

    #[test]
    fn each_remote_is_told_once_and_only_what_is_worth_telling() {
        let mut open = Explainer::new(false);
        let hs = Failure::Handshake("bad".into());
        assert!(open.explain("10.0.0.2", &hs));
        assert!(!open.explain("10.0.0.2", &hs), "once per remote");
        assert!(!open.explain("", &hs));
        assert!(!open.explain("10.0.0.3", &Failure::Other("reset".into())));
        assert!(!open.explain("10.0.0.3", &Failure::Refused));
        let mut private = Explainer::new(true);
        assert!(private.explain("10.0.0.3", &Failure::Other("reset".into())));
        assert!(!private.explain("10.0.0.4", &Failure::TimedOut));
        assert!(!private.explain("10.0.0.5", &Failure::WrongPeer { obtained: PeerId::random() }));
    }
}
