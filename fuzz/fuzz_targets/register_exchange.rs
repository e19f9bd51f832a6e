//! `/aios/register/1.0.0` messages as libp2p's CBOR codec decodes them
//! (cbor4ii serde), then validated as the event loop does.
#![no_main]

use aios_cell::network::protocol::{RegisterRequest, RegisterResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = cbor4ii::serde::from_slice::<RegisterRequest>(data) {
        let _ = req.record.validate();
        for k in &req.known {
            let _ = k.record.validate();
            let _ = k.peer_id.parse::<aios_cell::PeerId>();
        }
    }
    if let Ok(resp) = cbor4ii::serde::from_slice::<RegisterResponse>(data) {
        let _ = resp.record.validate();
    }
});
