//! How a cycle's decisions read: one line per planned write (for `--dry-run`, `demo` and the
//! logs), and the log lines of parked pairs and disagreements.

use crate::core::engine::{Plan, Target, Write};

/// One line describing a planned write.
pub fn describe_write(w: &Write) -> String {
    let what = match &w.target {
        Target::Card { id, from, to } => format!(
            "card {id}: Kommo user {} -> {to}",
            from.map_or_else(|| "none".into(), |u| u.to_string())
        ),
        Target::Dialog { key, from, to } => format!(
            "dialog {key}: employee {} -> {to}",
            from.map_or_else(|| "none".into(), |e| e.to_string())
        ),
    };
    format!(
        "{what}  [{}; source {}] {}",
        w.reason.rule, w.reason.source, w.reason.detail
    )
}

/// Logs what a plan parks and (bootstrap `adopt`) the pairs that disagree.
pub fn log_plan(plan: &Plan) {
    for p in &plan.parked {
        tracing::warn!(subject = %p.subject, reason = %p.reason, "parked: not written");
    }
    for d in &plan.disagreements {
        tracing::info!(dialog = %d.dialog, card = %d.card, card_responsible = %d.card_responsible, dialog_responsible = ?d.dialog_responsible, "bootstrap adopt: the pair disagrees (nothing written)");
    }
}
