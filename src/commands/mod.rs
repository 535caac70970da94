//! Operator commands beside the daemon and the cycle: `status`, `check-config --online`,
//! `authorize` and `demo`.

pub mod authorize;
#[cfg(feature = "sim")]
pub mod demo;
pub mod online_check;
pub mod status;
pub mod status_shadow;
