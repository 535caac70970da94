//! `once [--full] [--dry-run] [--force] [--shadow]` (SPEC 5): one cycle, then exit. Prints each
//! write with its result, each parked pair and a summary line. Exit codes: 0 ok, 2 config error,
//! 3 the safety brake stopped the writes (not in a dry run), 1 anything else.

use super::{EXIT_BRAKE, load_with_logging, runtime};
use crate::core::text::Readable;
use crate::service::wiring::LiveSyncer;
use crate::store::{Outcome, Store};
use crate::sync::describe::{describe_parked, describe_write};
use crate::sync::{CycleOptions, CycleReport, WriteResult};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// `once [--full] [--dry-run] [--force] [--shadow]`: one cycle, then exit (0 ok, 2 config, 3 brake, 1 else).
pub fn main(path: &Path, opts: CycleOptions) -> ExitCode {
    let loaded = match load_with_logging(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let store = match Store::open(&loaded.config.daemon.state_path) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = runtime();
    let code = rt.block_on(async {
        let syncer = match LiveSyncer::live(&loaded, store.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        match syncer.run_cycle(opts).await {
            Ok(r) => print_once(
                &r,
                &syncer.readable(&r.people, crate::clock::now_unix()),
                opts.dry_run,
            ),
            Err(e) => {
                eprintln!("cycle failed: {e}");
                ExitCode::FAILURE
            }
        }
    });
    crate::logging::trace_memory("cycle reported");
    drop(rt);
    crate::logging::trace_memory("runtime dropped");
    if let Ok(s) = Arc::try_unwrap(store)
        && let Err(e) = s.close()
    {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    crate::logging::trace_memory("state db closed");
    code
}

/// What `once` prints: each write with its result, each parked pair, a summary line; the exit
/// code (3 when the brake stopped the writes, not in a dry run).
fn print_once(r: &CycleReport, at: &Readable, dry_run: bool) -> ExitCode {
    let verb = if dry_run { "would write" } else { "wrote" };
    for (w, res) in r.plan.writes.iter().zip(&r.results) {
        let tag = match res {
            WriteResult::Done => "wrote".to_string(),
            WriteResult::Skipped => verb.to_string(),
            WriteResult::Shadowed => "would write (shadow mode)".to_string(),
            WriteResult::Dropped(why) => format!("dropped ({})", at.text(why)),
            WriteResult::Rejected(why) => format!("rejected ({})", at.text(why)),
            WriteResult::NotApplied(why) => format!("write not applied ({})", at.text(why)),
            WriteResult::Waiting(why) => format!("held back ({})", at.text(why)),
        };
        println!("{tag}: {}", describe_write(at, w));
    }
    for p in &r.plan.parked {
        println!("parked: {}", describe_parked(at, p));
    }
    println!(
        "cycle {} ({}): {} planned, {} written, {} parked, {} disagreements; {} Kommo and {} ChatApp requests",
        r.record.id,
        r.record.kind,
        r.plan.writes.len(),
        r.record.writes_done,
        r.plan.parked.len(),
        r.plan.disagreements.len(),
        r.record.kommo_requests,
        r.record.chatapp_requests
    );
    if r.record.outcome == Outcome::Shadow {
        println!(
            "shadow mode: nothing was written to Kommo or ChatApp; `status` shows what would have been, per day"
        );
    }
    match &r.brake {
        Some(b) if !dry_run => {
            eprintln!("{b}");
            ExitCode::from(EXIT_BRAKE)
        }
        Some(b) => {
            println!("note: {b}");
            ExitCode::SUCCESS
        }
        None => ExitCode::SUCCESS,
    }
}
