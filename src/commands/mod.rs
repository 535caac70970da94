//! Operator commands beside the daemon and the cycle: `status`, `check-config --online` (with
//! `--probe-writes`), `authorize` and `demo`; and what they share with `src/cli.rs`: the exit
//! codes and the tokio runtime.

pub mod authorize;
#[cfg(feature = "sim")]
pub mod demo;
pub mod online_check;
pub mod probe_writes;
pub mod status;
pub mod status_shadow;

/// Exit code of a config error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of a cycle stopped by the safety brake.
pub const EXIT_BRAKE: u8 = 3;

/// The multi-threaded tokio runtime every command uses.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
