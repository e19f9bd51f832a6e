//! Records on gossipsub: what an incoming message is, and the verdict
//! gossipsub is told (accept and forward, ignore, or reject and score the
//! sender down).

use std::hash::Hasher;

use libp2p::gossipsub::{Message, MessageAcceptance, MessageId};
use libp2p::PeerId;

use super::protocol::{CellRecord, RecordError, RELAY_TOPIC};
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

/// How long gossipsub remembers a message id and drops it as a duplicate:
/// as long as its peer scoring keeps a message's delivery record (120 s;
/// gossipsub's default of 60 s let a relay of a cell seen a minute before
/// pass as new, a flood for nothing, and logged "Unexpected delivery
/// trace" ~500 times per cell in a 200-cell start).
pub(crate) const SEEN_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Gossipsub message ids. On [`RELAY_TOPIC`]: `relay:` and the relayed
/// record's author (a cell introduced by many cells, in whatever version
/// of its record, is one message, passed on once while gossipsub
/// remembers it, [`SEEN_FOR`]); every other topic keeps rust-libp2p's default
/// (author in base58, then the seqno in decimal), which other
/// implementations match (docs/protocol.md).
pub(crate) fn message_id(m: &Message) -> MessageId {
    if m.topic.as_str() == RELAY_TOPIC {
        /// Only the author of a relayed record (the rest is skipped).
        #[derive(serde::Deserialize)]
        struct Author {
            peer_id: String,
        }
        if let Ok(a) = ciborium::from_reader::<Author, _>(m.data.as_slice()) {
            return MessageId::from(format!("relay:{}", a.peer_id));
        }
        // Not a relayed record (refused when validated): any unique id.
        let mut h = siphasher::sip128::SipHasher13::new();
        h.write(&m.data);
        let v = siphasher::sip128::Hasher128::finish128(&h).as_u128();
        return MessageId::from(format!("relay:bad:{v:032x}"));
    }
    let mut id = match m.source.as_ref() {
        Some(peer) => peer.to_base58(),
        None => PeerId::from_bytes(&[0, 1, 0]).map(|p| p.to_base58()).unwrap_or_default(),
    };
    id.push_str(&m.sequence_number.unwrap_or_default().to_string());
    MessageId::from(id)
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

    #[test]
    fn relayed_records_are_one_message_whoever_relays_them() {
        use libp2p::gossipsub::IdentTopic;
        let msg = |source: PeerId, seqno: u64, topic: &str, data: &[u8]| Message {
            source: Some(source),
            data: data.to_vec(),
            sequence_number: Some(seqno),
            topic: IdentTopic::new(topic).hash(),
        };
        let (a, b) = (PeerId::random(), PeerId::random());
        let relay = crate::network::protocol::RELAY_TOPIC;
        let of = |author: PeerId, level: f64| {
            let record = CellRecord { level, ..record() };
            crate::network::protocol::KnownCell { peer_id: author.to_base58(), record }.to_cbor()
        };
        // Two cells relay two versions of one cell's record: one message.
        let x = PeerId::random();
        assert_eq!(
            message_id(&msg(a, 1, relay, &of(x, 0.5))),
            message_id(&msg(b, 9, relay, &of(x, 0.7)))
        );
        assert_ne!(
            message_id(&msg(a, 1, relay, &of(x, 0.5))),
            message_id(&msg(a, 1, relay, &of(b, 0.5)))
        );
        assert_ne!(message_id(&msg(a, 1, relay, b"r")), message_id(&msg(a, 1, relay, b"s")));
        // Records and notices keep rust-libp2p's default id.
        let topic = crate::network::protocol::TOPIC;
        assert_eq!(message_id(&msg(a, 17, topic, b"r")), MessageId::from(format!("{a}17")));
    }
}
