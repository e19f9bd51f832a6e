//! The JSON bodies of `POST /register` and `POST /sync-consciousness`,
//! parsed and validated exactly as the routes do: every input is either
//! accepted with valid values or refused with a 4xx error; never a panic.
#![no_main]

use aios_cell::api::handlers::{parse_register, parse_sync};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_sync(data) {
        Ok(Some(level)) => assert!(level.is_finite() && level >= 0.0),
        Ok(None) => {}
        Err(e) => assert!(e.status().is_client_error(), "{e}"),
    }
    if let Err(e) = parse_register(data) {
        assert!(e.status().is_client_error(), "{e}");
    }
});
