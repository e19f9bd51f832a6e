//! Gossip records as a cell decodes them from `aios/consciousness/1`:
//! any bytes either decode to a record that passes validation, or are
//! refused; never a panic. A valid record re-encodes to an equal record.
#![no_main]

use aios_cell::network::protocol::CellRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = CellRecord::from_cbor(data) {
        assert!(record.level.is_finite() && record.level >= 0.0);
        assert!(record.validate().is_ok());
        let again = CellRecord::from_cbor(&record.to_cbor()).expect("a valid record re-decodes");
        assert_eq!(again, record);
    }
});
