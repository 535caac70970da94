//! Operator commands beside the daemon and the cycle: `status`, `check-config --online` (with
//! `--probe-writes`), `authorize`, `demo` and `once`; and what they share with `src/cli.rs`: the
//! exit codes, the tokio runtime, the report of a config error and the daemon's start (config,
//! logging, warnings).

pub mod authorize;
#[cfg(feature = "sim")]
pub mod demo;
pub mod once;
pub mod online_check;
pub mod probe_writes;
pub mod status;
pub mod status_shadow;

use crate::config::{self, ConfigErrors, Loaded};
use std::path::Path;
use std::process::ExitCode;

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

/// Prints every problem of the config (and their count when more than one); exit code 2.
pub(crate) fn config_error(e: &ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    if e.0.len() > 1 {
        eprintln!("{} problems in the config", e.0.len());
    }
    ExitCode::from(EXIT_CONFIG)
}

/// The start of `run` and `once`: loads the config (a config error is printed, exit code 2),
/// starts logging at the config's level, and logs the config's warnings.
pub(crate) fn load_with_logging(path: &Path) -> Result<Loaded, ExitCode> {
    let loaded = config::load(path).map_err(|e| config_error(&e))?;
    crate::logging::init(&loaded.config.daemon.log_level, true);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded)
}
