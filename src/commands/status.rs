//! `status`: what the state db says: last cycles, counts, parked pairs, recent corrections, and
//! the explanation of one dialog's or card's current value from the audit log. Opens the db
//! read-only (redb `SingleWriter` mode), so it works while the daemon runs. Never prints secrets:
//! nothing it reads holds any (tokens live in a meta key it does not print).

use crate::core::engine::ParkReason;
use crate::core::model::{CardId, RecordId};
use crate::core::neighbourhood::{BaseLookup, Frame};
use crate::core::text::Readable;
use crate::store::{Store, StoreError};
use crate::sync::describe::{describe_audit, describe_parked};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What `status` is asked about.
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    /// A dialog, by chat id.
    pub dialog: Option<String>,
    /// A card, `kind:id`.
    pub card: Option<CardId>,
}

/// Renders the status report.
pub fn render(
    store: &Store,
    q: &StatusQuery,
    cfg: &crate::config::Config,
) -> Result<String, StoreError> {
    render_at(store, q, cfg, crate::clock::now_unix())
}

/// [`render`] with ages relative to `now` (unix seconds).
pub fn render_at(
    store: &Store,
    q: &StatusQuery,
    cfg: &crate::config::Config,
    now: i64,
) -> Result<String, StoreError> {
    let people = store.people()?;
    let r = Readable::new(&people, &cfg.daemon.timezone, now);
    let mut out = String::new();
    let frame = store.frame()?;
    if let Some(chat) = &q.dialog {
        render_dialog(store, &r, &frame, chat, &mut out)?;
    } else if let Some(card) = q.card {
        render_card(store, &r, &frame, card, &mut out)?;
    } else {
        render_overview(store, &frame, &mut out)?;
        render_parked(&r, &frame, &mut out);
        render_write_failures(store, &r, &mut out)?;
        render_quarantine(store, &r, &mut out)?;
        render_cycles(store, &r, &mut out)?;
        crate::commands::status_shadow::render(store, cfg, &mut out)?;
    }
    Ok(out)
}

/// One dialog (by chat id, or `license:messenger:chat`): its base and why it holds its value.
fn render_dialog(
    store: &Store,
    r: &Readable,
    frame: &Frame,
    chat: &str,
    out: &mut String,
) -> Result<(), StoreError> {
    let keys = store.bases()?.dialogs_named(chat)?;
    if keys.is_empty() {
        let _ = writeln!(out, "dialog {chat}: not in the state db");
    }
    for (k, st) in keys {
        let _ = writeln!(
            out,
            "{k}: responsible {} (since {}){}",
            r.employee(st.responsible),
            r.time_ago(st.changed_at),
            if st.closed { ", closed" } else { "" }
        );
        explain(store, r, out, &RecordId::Dialog(k.clone()), frame)?;
    }
    Ok(())
}

/// One card: its base and why it holds its value.
fn render_card(
    store: &Store,
    r: &Readable,
    frame: &Frame,
    card: CardId,
    out: &mut String,
) -> Result<(), StoreError> {
    match store.bases()?.card(&card)? {
        None => {
            let _ = writeln!(out, "{card}: not in the state db");
        }
        Some(st) => {
            let _ = writeln!(
                out,
                "{card}: responsible {} (since {}), sync flag {}{}",
                r.user(st.responsible),
                r.time_ago(st.changed_at),
                if st.flag { "checked" } else { "unchecked" },
                if st.deleted { ", deleted" } else { "" }
            );
            explain(store, r, out, &RecordId::Card(card), frame)?;
        }
    }
    Ok(())
}

/// The db, whether the first cycle ran, how many records and corrections it holds.
fn render_overview(store: &Store, frame: &Frame, out: &mut String) -> Result<(), StoreError> {
    let _ = writeln!(out, "state db: {}", store.path().display());
    let _ = writeln!(
        out,
        "bootstrapped: {}",
        if frame.bootstrapped {
            "yes"
        } else {
            "no (no cycle has completed)"
        }
    );
    let (per_kind, dialogs) = store.bases()?.counts()?;
    let by_name: BTreeMap<&str, usize> = per_kind
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.plural(), *n))
        .collect();
    let kinds: Vec<String> = by_name.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let _ = writeln!(out, "records: {dialogs} dialogs; {}", kinds.join(", "));
    let _ = writeln!(out, "corrections recorded: {}", store.audit_len()?);
    let intents = store.intents()?;
    if !intents.is_empty() {
        let _ = writeln!(
            out,
            "pending intents (settled at the next cycle): {}",
            intents.len()
        );
    }
    Ok(())
}

/// Parked pairs: how many for each reason, and the first 20.
fn render_parked(r: &Readable, frame: &Frame, out: &mut String) {
    let mut by_reason: BTreeMap<&'static str, usize> = BTreeMap::new();
    for p in frame.parked.values() {
        *by_reason.entry(p.reason.label()).or_default() += 1;
    }
    let _ = writeln!(out, "\nparked pairs: {}", frame.parked.len());
    for (reason, n) in &by_reason {
        let _ = writeln!(out, "  {reason}: {n}");
    }
    for p in frame.parked.values().take(20) {
        let _ = writeln!(out, "  {}", describe_parked(r, p));
    }
}

/// Writes their API refused or did not apply (the first 20), with when they are tried again.
fn render_write_failures(store: &Store, r: &Readable, out: &mut String) -> Result<(), StoreError> {
    let failures = store.write_failures()?;
    if failures.is_empty() {
        return Ok(());
    }
    let _ = writeln!(
        out,
        "\nwrites refused or not applied (parked; the same write is tried again when its back-off ends): {}",
        failures.len()
    );
    for f in failures.values().take(20) {
        let _ = writeln!(
            out,
            "  {}: {} -> {}: {} ({}; {} attempt(s), last {}, next after {})",
            f.target,
            r.value(f.from),
            r.value(Some(f.to)),
            f.kind.as_str(),
            r.text(&f.detail),
            f.attempts,
            r.time_ago(f.last_at),
            r.time_ago(f.retry_at)
        );
    }
    Ok(())
}

/// Records that did not fit their page (the first 20).
fn render_quarantine(store: &Store, r: &Readable, out: &mut String) -> Result<(), StoreError> {
    let quarantined = store.quarantined()?;
    if quarantined.is_empty() {
        return Ok(());
    }
    let _ = writeln!(
        out,
        "\nquarantined records (they did not fit their page; skipped, the rest of the sync goes on, read again each cycle): {}",
        quarantined.len()
    );
    for q in quarantined.iter().take(20) {
        let _ = writeln!(
            out,
            "  {} {} {}: `{}`: {} (first seen {}, last seen {}, {} cycle(s))",
            q.record.api,
            q.record.endpoint,
            crate::sync::observe::subject_record(&q.record)
                .map(|r| r.to_string())
                .or_else(|| q.record.subject.clone())
                .unwrap_or_else(|| "(unnamed record)".into()),
            q.record.path,
            q.record.reason,
            r.time_ago(q.first_seen),
            r.time_ago(q.last_seen),
            q.cycles
        );
    }
    Ok(())
}

/// The last 10 cycles and the last 15 corrections.
fn render_cycles(store: &Store, r: &Readable, out: &mut String) -> Result<(), StoreError> {
    let _ = writeln!(out, "\nlast cycles:");
    for c in store.recent_cycles(10)? {
        let _ = writeln!(
            out,
            "  #{:<5} {}  {:<11} {:<8} reads kommo {} req / chatapp {} req ({} cards, {} dialogs)  writes {}/{}  parked {}  {} ms{}",
            c.id,
            r.time(c.started_at),
            c.kind,
            c.outcome,
            c.kommo_requests,
            c.chatapp_requests,
            c.cards_read,
            c.dialogs_read,
            c.writes_done,
            c.writes_planned,
            c.parked,
            c.duration_ms,
            c.error.map(|e| format!("  error: {e}")).unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\nrecent corrections:");
    for e in store.audit(15, |_| true)? {
        let _ = writeln!(out, "  {}", describe_audit(r, &e));
    }
    Ok(())
}

fn explain(
    store: &Store,
    at: &Readable,
    out: &mut String,
    r: &RecordId,
    frame: &Frame,
) -> Result<(), StoreError> {
    let entries = store.audit(10, |e| &e.target == r)?;
    match entries.first() {
        Some(e) => {
            let _ = writeln!(out, "why: the daemon wrote it: {}", describe_audit(at, e));
        }
        None => {
            let _ = writeln!(
                out,
                "why: the daemon never wrote it; its value is the one observed in ChatApp/Kommo"
            );
        }
    }
    for e in entries.iter().skip(1) {
        let _ = writeln!(out, "  earlier: {}", describe_audit(at, e));
    }
    for p in frame
        .parked
        .values()
        .filter(|p| &p.subject == r || p.target.as_ref() == Some(r))
    {
        let _ = writeln!(out, "parked: {}", describe_parked(at, p));
        if let ParkReason::UnmappedKommoUser(u) = p.reason {
            let _ = writeln!(
                out,
                "  hint: add {{ kommo = {u}, chatapp = <employee id> }} to [users] map, or give both the same e-mail"
            );
        }
    }
    let as_source = store.audit(5, |e| &e.source == r)?;
    if !as_source.is_empty() {
        let _ = writeln!(out, "its value was copied to:");
        for e in as_source {
            let _ = writeln!(out, "  {}", describe_audit(at, &e));
        }
    }
    Ok(())
}
