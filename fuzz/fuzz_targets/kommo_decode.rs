//! Kommo answers as the client decodes them; the first byte picks which (`fuzzing::KommoBody::ALL`).
//! Replay a crash input in `tests/fuzz_regressions.rs` through the same function.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatapp_kommo_sync::fuzzing::kommo_decode_bytes(data);
});
