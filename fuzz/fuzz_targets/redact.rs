//! Redaction of texts that leave the process: `redact::scrub` and `redact::excerpt`.
//! Replay a crash input in `tests/fuzz_regressions.rs` through the same function.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatapp_kommo_sync::fuzzing::redact_bytes(data);
});
