//! Operator commands beside the daemon and the cycle: `status`, `check-config --online` (with
//! `--probe-writes`), `authorize` and `demo`.

pub mod authorize;
#[cfg(feature = "sim")]
pub mod demo;
pub mod online_check;
pub mod probe_writes;
pub mod status;
pub mod status_shadow;
