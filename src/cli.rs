//! The command line (SPEC section 5): `run`, `once`, `check-config`, `status`, `demo`, `authorize`.
//! Exit codes: 0 ok, 2 config error, 3 safety brake (nothing written), 1 any other failure.

use crate::commands::status::{StatusQuery, render};
use crate::commands::{EXIT_CONFIG, config_error, load_with_logging, runtime};
use crate::config;
use crate::core::model::CardId;
use crate::store::Store;
use crate::sync::CycleOptions;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Keeps the responsible person of ChatApp Dialog chats and Kommo cards in agreement.
#[derive(Debug, Parser)]
#[command(name = "chatapp-kommo-sync", version, about)]
pub struct Cli {
    /// Config file (else $CHATAPP_KOMMO_SYNC_CONFIG, else /etc/chatapp-kommo-sync/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: schedules, signals (USR1 cycle now, HUP reload, TERM/INT stop), systemd notify.
    Run {
        /// Shadow mode whatever `[sync] mode` says: decide and record, write nothing to either API
        /// (kept across reloads).
        #[arg(long)]
        shadow: bool,
    },
    /// One cycle (incremental, or full), then exit.
    Once {
        /// Read everything instead of what changed since the last cycle.
        #[arg(long)]
        full: bool,
        /// Print the plan; write nothing to either API or to the state db's bases.
        #[arg(long)]
        dry_run: bool,
        /// Apply even if the safety brake trips.
        #[arg(long)]
        force: bool,
        /// Shadow mode whatever `[sync] mode` says: decide and record, write nothing to either API.
        #[arg(long, conflicts_with = "dry_run")]
        shadow: bool,
    },
    /// Validate the config and read its secrets.
    CheckConfig {
        /// Also check credentials and field ids against the APIs.
        #[arg(long, conflicts_with = "no_secrets")]
        online: bool,
        /// With --online: also write one dialog's and one card per `chat_to_crm` kind's current
        /// responsible again, read each back and print each call (exit 2 if any fails).
        #[arg(long, requires = "online")]
        probe_writes: bool,
        /// Validate the config without reading the secret files (for systemd's ExecReload=,
        /// which cannot read LoadCredential= secrets).
        #[arg(long)]
        no_secrets: bool,
    },
    /// What the state db says: last cycles, counts, parked pairs, recent corrections.
    Status {
        /// Explain one dialog (its chat id, or licenseId:messengerType:chatId).
        #[arg(long, value_name = "CHAT_ID")]
        dialog: Option<String>,
        /// Explain one card (`kind:id`, e.g. `lead:123`).
        #[arg(long, value_name = "KIND:ID")]
        card: Option<String>,
    },
    /// Run the whole sync against built-in simulators with sample data.
    Demo,
    /// Kommo OAuth: exchange an authorization code for a token pair and store it in the state db.
    ///
    /// Uses the config's [kommo.oauth] client_id, client_secret_file and redirect_uri
    /// (grant_type=authorization_code). The new pair replaces the stored one and nothing else:
    /// every base is kept, so a revoked pair is replaced without starting over and the next
    /// cycle is incremental. Get the code from the integration's window in Kommo (Settings ->
    /// Integrations -> your integration -> Keys and scopes -> Authorization code) or from the
    /// redirect to redirect_uri; it lives 20 minutes and works once. Stop the daemon first: it
    /// holds the state db. Prints neither the code nor the tokens. Exit 0 stored, 1 refused
    /// (Kommo's reason is printed) or not stored, 2 config error.
    Authorize {
        /// The authorization code; `-` reads it from the first line of stdin (keeps it out of
        /// the shell history and the process list).
        #[arg(long, value_name = "CODE")]
        code: String,
    },
}

/// Prints the config's warnings (things worth fixing that do not stop anything).
fn print_warnings(loaded: &config::Loaded) {
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    crate::panic_guard::install_hook();
    let cli = Cli::parse();
    let path = config::config_path(cli.config.as_deref());
    if !matches!(cli.command, Command::Run { .. }) {
        end_quietly_on_closed_pipe();
    }
    match cli.command {
        Command::Demo => demo(),
        Command::CheckConfig {
            online,
            no_secrets,
            probe_writes,
        } => check_config(&path, online, no_secrets, probe_writes),
        Command::Status { dialog, card } => status(&path, dialog, card),
        Command::Once {
            full,
            dry_run,
            force,
            shadow,
        } => crate::commands::once::main(
            &path,
            CycleOptions {
                kind: if full {
                    crate::store::CycleKind::Full
                } else {
                    crate::store::CycleKind::Incremental
                },
                dry_run,
                force,
                shadow,
            },
        ),
        Command::Run { shadow } => run(&path, shadow),
        Command::Authorize { code } => crate::commands::authorize::main(&path, &code),
    }
}

/// A command whose output goes to a pipe that closes (`demo | head -1`) ends quietly, as Unix
/// tools do, instead of failing on the next write. (`run` writes no output; it keeps ignoring
/// SIGPIPE so that a closed journal stream never kills the daemon.)
fn end_quietly_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default is async-signal-safe and done
    // before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `check-config [--online [--probe-writes]] [--no-secrets]`.
fn check_config(
    path: &std::path::Path,
    online: bool,
    no_secrets: bool,
    probe_writes: bool,
) -> ExitCode {
    if no_secrets {
        let text = match read_config_text(path) {
            Ok(t) => t,
            Err(code) => return code,
        };
        return match config::Config::parse(&text, &path.display().to_string()) {
            Ok(_) => {
                println!("{}: ok (secret files not read)", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        };
    }
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => return config_error(&e),
    };
    print_warnings(&loaded);
    if online {
        crate::logging::init(&loaded.config.daemon.log_level, false);
        if let Err(code) = check_online(path, &loaded, probe_writes) {
            return code;
        }
    }
    println!("{}: ok", path.display());
    ExitCode::SUCCESS
}

/// `check-config --online [--probe-writes]`: every problem and every probe call printed; exit 2
/// when there is a problem or a probe call failed, 1 when the check could not run.
fn check_online(
    path: &std::path::Path,
    loaded: &config::Loaded,
    probe_writes: bool,
) -> Result<(), ExitCode> {
    let report = runtime()
        .block_on(crate::commands::online_check::check(loaded, probe_writes))
        .map_err(|e| {
            eprintln!("check-config --online: the check could not run: {e}");
            ExitCode::FAILURE
        })?;
    for line in &report.ok {
        println!("{line}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for p in &report.problems {
        eprintln!("config error in {}: {}: {}", path.display(), p.key, p.found);
    }
    let probe_failed = report.probe.as_ref().is_some_and(print_probe);
    if report.problems.is_empty() && !probe_failed {
        return Ok(());
    }
    if !report.problems.is_empty() {
        eprintln!(
            "check-config --online: {} problem(s) found",
            report.problems.len()
        );
    }
    Err(ExitCode::from(EXIT_CONFIG))
}

/// Prints the write probe's notes and calls; true when a call failed (each failed one is named).
fn print_probe(probe: &crate::commands::probe_writes::Probe) -> bool {
    for n in &probe.notes {
        println!("{n}");
    }
    for c in &probe.calls {
        println!("{c}");
    }
    let failed: Vec<String> = probe
        .failures()
        .map(|c| format!("{} on {} ({})", c.call, c.target, c.status))
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "check-config --online --probe-writes: {} call(s) failed: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    !failed.is_empty()
}

/// `status [--dialog CHAT] [--card KIND:ID]`: reads the state db (read-only when a daemon holds
/// it); needs no secret.
fn status(path: &std::path::Path, dialog: Option<String>, card: Option<String>) -> ExitCode {
    let card = match card.map(|c| CardId::parse(&c).ok_or(c)).transpose() {
        Ok(c) => c,
        Err(bad) => {
            eprintln!("--card {bad:?}: expected kind:id, e.g. lead:123");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let text = match read_config_text(path) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let cfg = match config::Config::parse(&text, &path.display().to_string()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let query = StatusQuery { dialog, card };
    match Store::open_read_only(&cfg.daemon.state_path)
        .and_then(|s| s.guard(|| render(&s, &query, &cfg)))
    {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `run [--shadow]`: the daemon. Exit 0 after a stop signal, 2 for a config error, 1 for anything
/// else.
fn run(path: &std::path::Path, shadow: bool) -> ExitCode {
    let loaded = match load_with_logging(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    match runtime().block_on(crate::service::runner::run(path, loaded, shadow)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the daemon stops");
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `demo`: the whole sync on the built-in simulators.
#[cfg(feature = "sim")]
fn demo() -> ExitCode {
    crate::logging::init("error", false);
    let rt = runtime();
    match rt.block_on(crate::commands::demo::run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `demo` in a build without the simulators.
#[cfg(not(feature = "sim"))]
fn demo() -> ExitCode {
    eprintln!("demo: this build has no simulators (built without the default `sim` feature)");
    ExitCode::FAILURE
}

/// The config file's text; a read error is reported as a config error (exit 2).
fn read_config_text(path: &std::path::Path) -> Result<String, ExitCode> {
    std::fs::read_to_string(path).map_err(|e| {
        eprintln!(
            "config error in {}: (file): cannot read: {e}",
            path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}
