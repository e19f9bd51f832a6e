//! Helpers for the components' unit tests.

use libp2p::PeerId;

/// Two random peer ids, the smaller first (who dials, who prunes).
pub(crate) fn ordered_pair() -> (PeerId, PeerId) {
    let (a, b) = (PeerId::random(), PeerId::random());
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}
