//! Records on gossipsub: what an incoming message is, and the verdict
//! gossipsub is told (accept and forward, ignore, or reject and score the
//! sender down).

use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;

use super::protocol::{CellRecord, RecordError};
use crate::mesh::Merge;

/// An incoming gossip message, classified.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A valid record from another cell, signed by its author.
    Record(PeerId, CellRecord),
    /// Signed with our key but not published by this process.
    OwnKey(CellRecord),
    /// No author: every cell signs its messages.
    Unsigned,
    /// Not a valid record.
    Invalid(PeerId, RecordError),
}

pub(crate) fn classify(local: PeerId, source: Option<PeerId>, data: &[u8]) -> Incoming {
    match (source, CellRecord::from_cbor(data)) {
        (Some(s), Ok(record)) if s != local => Incoming::Record(s, record),
        (Some(_), Ok(record)) => Incoming::OwnKey(record),
        (None, _) => Incoming::Unsigned,
        (Some(s), Err(e)) => Incoming::Invalid(s, e),
    }
}

/// What gossipsub is told of a record once merged: a record whose name
/// another live cell holds is rejected (not forwarded, the sender scored).
pub(crate) fn verdict(merge: Merge) -> MessageAcceptance {
    match merge {
        Merge::Conflict => MessageAcceptance::Reject,
        _ => MessageAcceptance::Accept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CellRecord {
        CellRecord {
            cell_id: "c".into(),
            level: 0.5,
            branch: "main".into(),
            seq: 1,
            at_ms: 1,
            addrs: Vec::new(),
            agent: "aios-cell/test".into(),
            leaving: false,
            tags: Default::default(),
            services: Vec::new(),
            envelope: None,
        }
    }

    #[test]
    fn messages_are_classified_by_author_and_content() {
        let (me, other) = (PeerId::random(), PeerId::random());
        let data = record().to_cbor();
        assert!(matches!(classify(me, Some(other), &data), Incoming::Record(p, _) if p == other));
        assert!(matches!(classify(me, Some(me), &data), Incoming::OwnKey(_)));
        assert!(matches!(classify(me, None, &data), Incoming::Unsigned));
        assert!(matches!(classify(me, Some(other), b"not cbor"), Incoming::Invalid(..)));
        assert_eq!(verdict(Merge::Conflict), MessageAcceptance::Reject);
        assert_eq!(verdict(Merge::Stale), MessageAcceptance::Accept);
    }
}
