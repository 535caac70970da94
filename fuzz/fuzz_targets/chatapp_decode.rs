//! ChatApp answers as the client decodes them; the first byte picks which (`fuzzing::ChatAppBody`).
//! Replay a crash input in `tests/fuzz_regressions.rs` through the same function.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatapp_kommo_sync::fuzzing::chatapp_decode_bytes(data);
});
