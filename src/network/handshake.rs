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
    /// The other side does not speak libp2p's protocol negotiation
    /// (multistream-select): not a libp2p port, or a private mesh's.
    #[error("the other side does not speak libp2p: {0}")]
    NotLibp2p(String),
    /// Noise or the swarm key (pnet) failed.
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
                    .find(|f| matches!(f, Failure::Handshake(_) | Failure::NotLibp2p(_)))
                    .or(classified.first())
                    .cloned()
                    .unwrap_or_else(|| other(e))
            }
            e => other(e),
        }
    }

    pub(crate) fn of_listen(e: &ListenError) -> Failure {
        match e {
            ListenError::WrongPeerId { obtained, .. } => Failure::WrongPeer { obtained: *obtained },
            ListenError::Transport(t) => of_chain(t),
            e => other(e),
        }
    }
}

/// Walks an error and its sources for a type that says what happened.
fn of_chain(e: &(dyn StdError + 'static)) -> Failure {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<libp2p::core::upgrade::NegotiationError>() {
            return Failure::NotLibp2p(err.to_string());
        }
        if err.is::<libp2p::noise::Error>() || err.is::<libp2p::pnet::PnetError>() {
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
                // libp2p's transport timeout, which says nothing in Display.
                if format!("{inner:?}") == "Timeout" {
                    return Failure::TimedOut;
                }
                cur = Some(inner as &(dyn StdError + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    // The transport's `Either` layers (DNS, TCP or QUIC) hand on their
    // inner error's `source`, not the inner error itself, so the io::Error
    // under them is out of reach of the walk above; its Debug form still
    // names its kind.
    // (`Os { kind: … }` from the system, `Kind(…)` when built from a kind.)
    let debug = format!("{e:?}");
    let names = |kind: &str| {
        debug.contains(&format!("kind: {kind}")) || debug.contains(&format!("Kind({kind})"))
    };
    if names("ConnectionRefused") {
        return Failure::Refused;
    }
    if names("TimedOut") {
        return Failure::TimedOut;
    }
    other(e)
}

/// An unclassified failure, in words (some errors say nothing in Display:
/// their Debug form then).
fn other(e: &(dyn StdError + 'static)) -> Failure {
    let text = e.to_string();
    Failure::Other(if text.trim().is_empty() { format!("{e:?}") } else { text })
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
            Failure::Handshake(_) | Failure::NotLibp2p(_) => true,
            Failure::Other(_) => self.private,
            _ => false,
        }
    }

    /// What a failure means, in this mesh: what happened first, then the
    /// likely causes.
    fn meaning(&self, failure: &Failure) -> &'static str {
        match (failure, self.private) {
            (Failure::NotLibp2p(_), false) => {
                "a connection failed before encryption: the other side does not speak libp2p. It is \
                 not a cell's libp2p port (an HTTP or other service? cells listen on 8001 by \
                 default), or a cell of a private mesh (with a swarm key; this cell has none)"
            }
            (Failure::NotLibp2p(_), true) => {
                "a connection failed before encryption: this is a private mesh, and the other side \
                 does not use the same swarm key (a different key, none, or not a cell at all; \
                 compare the key fingerprints in the start logs)"
            }
            (_, true) => {
                "a connection failed in the handshake: this is a private mesh, and the other cell \
                 probably has a different swarm key or none (compare the key fingerprints in the \
                 start logs)"
            }
            (_, false) => {
                "the encryption handshake (Noise) failed: the other side speaks libp2p but is not \
                 a cell that can talk to this one, or the connection broke during the handshake"
            }
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
        tracing::warn!(remote, error = %failure, "{}", self.meaning(failure));
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
        assert!(matches!(of_chain(&nego), Failure::NotLibp2p(_)));
        assert!(matches!(of_chain(&io::Error::other("strange")), Failure::Other(_)));
        // Errors that say nothing in Display (as an upgrade's timeout, when a
        // dial under load reports it): told apart by their Debug form.
        struct Mute(&'static str);
        impl std::fmt::Debug for Mute {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::fmt::Display for Mute {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                Ok(())
            }
        }
        impl StdError for Mute {}
        assert_eq!(of_chain(&io::Error::other(Mute("Timeout"))), Failure::TimedOut);
        // A refused TCP dial as the transport stack reports it: io::Errors
        // under `Either` layers, whose `source` skips the error they hold.
        type Layered = either::Either<either::Either<io::Error, Mute>, Mute>;
        let layered: Layered = either::Either::Left(either::Either::Left(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(of_chain(&io::Error::other(layered)), Failure::Refused);
        assert_eq!(
            of_chain(&Mute("Mute")),
            Failure::Other("Mute".into()),
            "Debug when Display is empty"
        );
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
        assert!(open.explain("10.0.0.6", &Failure::NotLibp2p("x".into())));
    }

    #[test]
    fn the_warning_says_what_happened_before_what_it_may_mean() {
        let open = Explainer::new(false);
        let not_libp2p = open.meaning(&Failure::NotLibp2p("x".into()));
        assert!(not_libp2p.contains("does not speak libp2p"), "{not_libp2p}");
        let noise = open.meaning(&Failure::Handshake("x".into()));
        assert!(
            !noise.contains("swarm key"),
            "no private mesh in an open one's Noise failure: {noise}"
        );
        assert!(noise.contains("Noise"), "{noise}");
        let private = Explainer::new(true);
        assert!(private.meaning(&Failure::NotLibp2p("x".into())).contains("swarm key"));
    }
}
