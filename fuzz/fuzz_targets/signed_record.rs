//! Signed records as a cell checks them when another cell relays them in an
//! exchange: any bytes, as a record's envelope or as a whole record, are
//! either a record its author signed as sent or refused with a reason;
//! never a panic. A record that holds re-encodes and holds again.
#![no_main]

use aios_cell::network::protocol::CellRecord;
use libfuzzer_sys::fuzz_target;
use aios_cell::PeerId;

fuzz_target!(|data: &[u8]| {
    // The bytes as the envelope of an ordinary record, for a random author
    // and for the author the envelope names, if any.
    let record = CellRecord {
        cell_id: "fuzz".into(),
        level: 0.5,
        branch: "main".into(),
        seq: 1,
        at_ms: 1,
        addrs: Vec::new(),
        agent: String::new(),
        leaving: false,
        tags: Default::default(),
        services: Vec::new(),
        envelope: Some(data.to_vec()),
    };
    let _ = record.verified(&PeerId::random());
    // The bytes as a whole record (with or without an envelope).
    if let Ok(r) = CellRecord::from_cbor(data) {
        let author = PeerId::random();
        if let Ok(signed) = r.verified(&author) {
            let again = CellRecord::from_cbor(&signed.to_cbor()).expect("re-decodes");
            assert_eq!(again.verified(&author), Ok(signed));
        }
    }
});
