//! Messenger-field values, phones and chat ids, one a line, resolved against the dialogs they name.
//! Replay a crash input in `tests/fuzz_regressions.rs` through the same function.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatapp_kommo_sync::fuzzing::links_bytes(data);
});
