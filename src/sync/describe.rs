//! How a cycle's decisions and the audit log read: one line per planned write (for `--dry-run`,
//! `demo` and the logs), per parked pair, disagreement, conflict and audit entry. Every output
//! path renders through these functions, so a record, a person and a time read the same way in
//! each: `lead 2001`, `dialog 7999@c.us (grWhatsApp, license 1)`, `Anna (Kommo user 504141)`,
//! `2026-11-30T10:15:00+03:00, 3 min ago` (see [`crate::core::text`]).

use crate::core::engine::{Conflict, Disagreement, Parked, Plan, Target, Write};
use crate::core::text::Readable;
use crate::ports::AuditEntry;

/// One line describing a planned write.
pub fn describe_write(r: &Readable, w: &Write) -> String {
    let what = match &w.target {
        Target::Card { id, from, to } => format!(
            "{id}: {} -> {}",
            r.user(from.unwrap_or_default()),
            r.user(*to)
        ),
        Target::Dialog { key, from, to } => {
            format!("{key}: {} -> {}", r.employee(*from), r.employee(Some(*to)))
        }
    };
    format!(
        "{what}  [{}; source {}] {}",
        w.reason.rule,
        w.reason.source,
        r.text(&w.reason.detail)
    )
}

/// One line describing a parked pair: what would have been written and why it was not.
pub fn describe_parked(r: &Readable, p: &Parked) -> String {
    let what = match &p.target {
        Some(t) if *t != p.subject => format!("{} -> {t}", p.subject),
        _ => p.subject.to_string(),
    };
    format!("{what}: {}", r.text(&p.reason.to_string()))
}

/// One line describing a pair that disagrees on the first run (`bootstrap = adopt`).
pub fn describe_disagreement(r: &Readable, d: &Disagreement) -> String {
    format!(
        "{} has {}, {} has {}",
        d.dialog,
        r.employee(d.dialog_responsible),
        d.card,
        r.user(d.card_responsible)
    )
}

/// One line describing a conflict (rule 5).
pub fn describe_conflict(r: &Readable, c: &Conflict) -> String {
    format!(
        "{} changed {} and {} changed {}: {} won",
        c.card,
        r.time_ago(c.card_changed_at),
        c.dialog,
        r.time_ago(c.dialog_changed_at),
        if c.crm_won { "Kommo" } else { "ChatApp" }
    )
}

/// One line describing an audit entry (a confirmed write). The entry keeps ids and times as
/// data; names and local times are rendered here, when it is shown.
pub fn describe_audit(r: &Readable, e: &AuditEntry) -> String {
    format!(
        "{}  cycle {}  {}: {} -> {}  [{}; source {}] {}{}",
        r.time_ago(e.at),
        e.cycle,
        e.target,
        r.value(e.from),
        r.value(Some(e.to)),
        e.rule,
        e.source,
        r.text(&e.detail),
        if e.how == "write" {
            String::new()
        } else {
            format!(" ({})", e.how)
        }
    )
}

/// Logs what a plan parks and (bootstrap `adopt`) the pairs that disagree.
pub fn log_plan(r: &Readable, plan: &Plan) {
    for p in &plan.parked {
        tracing::warn!("parked, not written: {}", describe_parked(r, p));
    }
    for d in &plan.disagreements {
        tracing::info!(
            "bootstrap adopt: the pair disagrees (nothing written): {}",
            describe_disagreement(r, d)
        );
    }
}
