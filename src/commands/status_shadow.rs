//! `status`'s "Shadow mode" section: per day (in `[daemon] timezone`), how many linked pairs
//! already agreed and what the daemon would have changed, with the newest would-be writes, and
//! what the next normal cycle will do. Shown when a shadow cycle ever ran or the config asks for
//! shadow mode.

use crate::config::{Config, SyncMode};
use crate::core::engine::Bootstrap;
use crate::store::shadow::Side;
use crate::store::{Store, StoreError};
use std::fmt::Write as _;

/// Days shown.
pub const DAYS: usize = 14;
/// Would-be writes shown.
pub const EXAMPLES: usize = 10;

/// A unix time as local time in the configured timezone.
fn local_time(unix: i64, timezone: &chrono_tz::Tz) -> String {
    let t = chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default();
    t.with_timezone(timezone)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// What the first normal cycle does after shadow cycles.
fn first_normal_run(b: Bootstrap) -> &'static str {
    match b {
        Bootstrap::Adopt => {
            "bootstrap = \"adopt\": it records what both systems hold, writes nothing, and reports the pairs that disagree; changes after it are synced"
        }
        Bootstrap::Crm => {
            "bootstrap = \"crm\": every linked dialog takes its card's responsible (and the cards that receive follow)"
        }
        Bootstrap::Chat => {
            "bootstrap = \"chat\": every linked card that receives takes its dialog's responsible"
        }
    }
}

/// Appends the section to `out` (nothing when shadow mode never ran and is not configured).
pub fn render(store: &Store, cfg: &Config, out: &mut String) -> Result<(), StoreError> {
    let days = store.shadow_days(DAYS)?;
    let configured = cfg.sync.mode == SyncMode::Shadow;
    if days.is_empty() && !configured {
        return Ok(());
    }
    let tz = &cfg.daemon.timezone;
    let _ = writeln!(
        out,
        "\nShadow mode (decided and recorded, nothing written to Kommo or ChatApp): {}",
        if configured {
            "on ([sync] mode = \"shadow\")"
        } else {
            "off in the config ([sync] mode = \"normal\"; `run --shadow` / `once --shadow` still turn it on)"
        }
    );
    if days.is_empty() {
        let _ = writeln!(out, "  no shadow cycle has run yet");
    } else {
        let _ = writeln!(
            out,
            "  per day ({tz}), the last {DAYS} days with shadow cycles:"
        );
        let _ = writeln!(
            out,
            "  {:<10}  {:>6}  {:>17}  {:>12}  {:>7}  {:>8}",
            "date", "cycles", "pairs agreed", "would change", "to chat", "to Kommo"
        );
        for d in &days {
            let _ = writeln!(
                out,
                "  {:<10}  {:>6}  {:>17}  {:>12}  {:>7}  {:>8}",
                d.date,
                d.cycles,
                format!("{} of {}", d.agreed, d.pairs),
                d.to_chat + d.to_kommo,
                d.to_chat,
                d.to_kommo
            );
        }
        let _ = writeln!(
            out,
            "  (pairs agreed: linked dialog/card pairs holding the same person at the day's last shadow cycle; would change: writes the daemon would have made that day)"
        );
    }
    let examples = store.shadow_examples()?;
    if !examples.is_empty() {
        let _ = writeln!(out, "  recent would-be writes:");
        for e in examples.iter().take(EXAMPLES) {
            let _ = writeln!(
                out,
                "    {}  cycle {}  to {}: {}",
                local_time(e.at, tz),
                e.cycle,
                match e.side {
                    Side::Chat => "ChatApp",
                    Side::Kommo => "Kommo",
                },
                e.text
            );
        }
    }
    let bootstrapped: bool = store
        .meta(crate::store::META_BOOTSTRAPPED)?
        .unwrap_or(false);
    if !days.is_empty() && !bootstrapped {
        let _ = writeln!(
            out,
            "  the next normal cycle is a first run with {}",
            first_normal_run(cfg.sync.bootstrap)
        );
    }
    Ok(())
}
