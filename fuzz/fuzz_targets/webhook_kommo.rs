//! Kommo webhook bodies: the form parser, then the whole route in process (token, limits).
//! Replay a crash input in `tests/fuzz_regressions.rs` through the same function.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatapp_kommo_sync::fuzzing::webhook_kommo_bytes(data);
});
