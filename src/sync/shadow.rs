//! Shadow mode (`[sync] mode = "shadow"`, `run --shadow`, `once --shadow`): steps 5 and 6 of a
//! cycle without a single write to either API.
//!
//! The cycle reads, plans and parks as usual. Each planned write is logged (info level, the same
//! text `once --dry-run` prints), counted (`chatapp_kommo_sync_shadow_writes_total{side}`) and
//! kept for `status`: per day (in `[daemon] timezone`), the would-be writes per side and how many
//! linked pairs already agreed; the newest writes as examples.
//!
//! What the shadow cycle commits, and what that means for the switch to normal mode:
//! - the bases take the values the cycle *observed*, never a value it would have written. A change
//!   a person made is therefore counted once (the cycle that saw it), not again each cycle;
//! - no intent, no audit entry, no held record (nothing failed: nothing was tried);
//! - watermarks, seen events, parked pairs, quarantine, pipelines: as a normal cycle;
//! - the db's `bootstrapped` flag is set to false. Shadow cycles keep their own flag in the
//!   `shadow` table, so only the first shadow cycle is a first run (it shows what the configured
//!   `bootstrap` would do). The first normal cycle after any shadow cycle is a first run: a full
//!   read, then `bootstrap` (`adopt`: record what is there, write nothing, report the pairs that
//!   disagree; `crm`/`chat`: align every linked pair in that direction). Change times it compares
//!   are the ones the shadow cycles observed.

use super::observe::Observed;
use super::{CycleError, CycleReport, Syncer, WriteResult, commit, describe_write};
use crate::core::engine::{Plan, Policy, Snapshot, Target, sync_kind};
use crate::core::links::resolve_links_with;
use crate::core::usermap::UserMap;
use crate::ports::Outcome;
use crate::ports::{ChatAppApi, KommoApi, StateStore};
use crate::ports::{ShadowCommit, ShadowExample, Side};

/// The API a write goes to.
pub fn side(t: &Target) -> Side {
    match t {
        Target::Card { .. } => Side::Kommo,
        Target::Dialog { .. } => Side::Chat,
    }
}

/// Logs and counts the plan's writes instead of making them, then commits the cycle.
pub fn shadow<K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    now: i64,
    seen: Observed<S::Staged>,
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    report.record.outcome = Outcome::Shadow;
    let mut c = ShadowCommit {
        date: local_date(now, &sy.config.daemon.timezone),
        at: now,
        ..ShadowCommit::default()
    };
    let readable = sy.readable(&seen.people, now);
    for (i, w) in report.plan.writes.iter().enumerate() {
        report.results[i] = WriteResult::Shadowed;
        let side = side(&w.target);
        match side {
            Side::Chat => c.to_chat += 1,
            Side::Kommo => c.to_kommo += 1,
        }
        let text = describe_write(&readable, w);
        tracing::info!(
            side = side.as_str(),
            "shadow mode, not written: would write {text}"
        );
        c.examples.push(ShadowExample {
            at: now,
            cycle: report.record.id,
            side,
            text,
        });
    }
    (c.pairs, c.agreed) = agreement(&seen.snap, &report.plan, &sy.policy, &seen.usermap);
    tracing::info!(
        day = %c.date,
        pairs = c.pairs,
        agreed = c.agreed,
        to_chat = c.to_chat,
        to_kommo = c.to_kommo,
        "shadow mode: {} of {} linked pairs agree; this cycle would have written {} dialog(s) and {} card(s); nothing was written",
        c.agreed,
        c.pairs,
        c.to_chat,
        c.to_kommo
    );
    commit::commit(sy, now, seen, report, Some(c))
}

/// `YYYY-MM-DD` of a unix time in the configured timezone.
pub fn local_date(unix: i64, timezone: &chrono_tz::Tz) -> String {
    let t = chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default();
    t.with_timezone(timezone).format("%Y-%m-%d").to_string()
}

/// Linked dialog/card pairs that take part, and how many of them agree, over every record known
/// after the cycle's reads (the bases overlaid with what the cycle observed). A pair takes part
/// when its dialog is open and its card is of a synced kind (either direction), flagged and not
/// deleted; it agrees when the dialog has a responsible and the card's responsible maps to them.
pub fn agreement(snap: &Snapshot, plan: &Plan, policy: &Policy, users: &UserMap) -> (u64, u64) {
    let cards = || {
        snap.cards
            .iter()
            .filter(|(id, _)| !plan.settle_cards.contains_key(id))
            .chain(plan.settle_cards.iter())
    };
    let mut dialogs = snap.dialogs.clone();
    dialogs.extend(
        plan.settle_dialogs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let links = resolve_links_with(cards, &dialogs, policy.match_phone);
    let (mut pairs, mut agreed) = (0, 0);
    for (d, linked) in &links.cards_of {
        let Some(dialog) = dialogs.get(d).filter(|d| !d.closed) else {
            continue;
        };
        for c in linked {
            let Some(st) = plan.settle_cards.get(c).or_else(|| snap.cards.get(c)) else {
                continue;
            };
            let takes_part = st.flag
                && !st.deleted
                && sync_kind(c, st, &policy.leads).is_some_and(|k| {
                    policy.crm_to_chat.contains(&k) || policy.chat_to_crm.contains(&k)
                });
            if !takes_part {
                continue;
            }
            pairs += 1;
            if dialog.responsible.is_some() && users.to_chat(st.responsible) == dialog.responsible {
                agreed += 1;
            }
        }
    }
    (pairs, agreed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_cut_in_the_configured_timezone() {
        // 2025-03-01 22:30 UTC is already March 2nd in Moscow (UTC+3)
        let t = 1_740_868_200;
        assert_eq!(local_date(t, &chrono_tz::UTC), "2025-03-01");
        assert_eq!(local_date(t, &chrono_tz::Europe::Moscow), "2025-03-02");
    }
}
