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
//!
//! What a shadow cycle costs: the same as a normal one. It plans from the neighbourhood of its
//! observations ([`crate::core::neighbourhood`]), as a normal cycle does, so its would-be writes
//! are the ones a plan from every base would give: a write comes only from a decided dialog, and
//! the engine decides only the focus dialogs (observed, held, parked, or linked to an observed,
//! held or parked card) with every card linked to them, which is what the neighbourhood loads
//! (the fact every normal cycle relies on, checked by `tests/neighbourhood_props.rs`).
//!
//! Its count of linked pairs is kept up to date the same way, per dialog. A dialog's pairs (which
//! cards link to it, whether each takes part, whether it agrees) depend on its own base, the
//! bases of the cards linked to it, the user map and the policy, nothing else. A cycle changes
//! the bases of the records it observed only, so the dialogs whose pairs can move are the observed
//! dialogs and the dialogs an observed card links to now or linked to before (through its
//! contacts too). The first two kinds are focus dialogs, in the neighbourhood with every card
//! linked to them; the dialogs a card no longer links to are not decided, so the cycle loads them
//! beside it for the count only ([`crate::core::neighbourhood::unlinked_around`], empty unless
//! a link was lost). The cycle recounts those dialogs ([`agreement_by_dialog`]); the state db
//! keeps each dialog's count and the totals, and the commit takes the recounted dialogs' old
//! counts out of the totals and puts the new ones in ([`PairCounts::Update`]). The totals are
//! counted from every base instead
//! ([`PairCounts::Recount`], the cycle then plans from every base, as every shadow cycle did
//! before) on a shadow first run, when the db keeps no count (a db from before it was kept, or
//! one whose bases changed outside shadow mode since: the store drops the count then), and when
//! the user map or the policy changed ([`counted_under`]).

use super::observe::Observed;
use super::{CycleError, CycleReport, Syncer, WriteResult, commit, describe_write};
use crate::core::engine::{Plan, Policy, Snapshot, Target, sync_kind};
use crate::core::hash::Fnv1a;
use crate::core::links::resolve_links_with;
use crate::core::model::DialogKey;
use crate::core::usermap::UserMap;
use crate::ports::{ChatAppApi, KommoApi, StateStore};
use crate::ports::{Outcome, PairCount, PairCounts};
use crate::ports::{ShadowCommit, ShadowExample, Side};
use std::collections::BTreeMap;

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
    count_pairs(sy, &seen, &report.plan, &mut c)?;
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

/// The cycle's count of linked pairs: recounted over its snapshot's dialogs, and (a snapshot of
/// the neighbourhood) the kept totals updated with the difference (see the module docs).
fn count_pairs<K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    seen: &Observed<S::Staged>,
    plan: &Plan,
    c: &mut ShadowCommit,
) -> Result<(), CycleError> {
    let counts = if seen.shadow_unlinked.dialogs.is_empty() {
        agreement_by_dialog(&seen.snap, plan, &sy.policy, &seen.usermap)
    } else {
        // the neighbourhood and the dialogs a change took a pair from: each with its cards
        let mut both = seen.snap.clone();
        both.cards.extend(seen.shadow_unlinked.cards.clone());
        both.dialogs.extend(seen.shadow_unlinked.dialogs.clone());
        agreement_by_dialog(&both, plan, &sy.policy, &seen.usermap)
    };
    let new = total(counts.values());
    c.under = counted_under(&sy.policy, &seen.usermap);
    let Some(kept) = seen.shadow_tally else {
        (c.pairs, c.agreed) = (new.pairs, new.agreed);
        c.counts = PairCounts::Recount(counts);
        return Ok(());
    };
    let old = total(sy.store.shadow_pair_counts(counts.keys())?.values());
    // the kept totals hold the old counts of these dialogs: never less than them
    c.pairs = (kept.pairs + new.pairs).saturating_sub(old.pairs);
    c.agreed = (kept.agreed + new.agreed).saturating_sub(old.agreed);
    c.counts = PairCounts::Update(counts);
    Ok(())
}

/// The sum of dialogs' counts.
fn total<'a>(counts: impl Iterator<Item = &'a PairCount>) -> PairCount {
    counts.fold(PairCount::default(), |t, n| PairCount {
        pairs: t.pairs + n.pairs,
        agreed: t.agreed + n.agreed,
    })
}

/// What a dialog's pairs depend on besides the bases: the user map, and the policy's kinds,
/// leads and phone matching, hashed. A kept count made under another value is made again from
/// every base. (Their `Debug` text is hashed: a release that prints them otherwise counts once
/// more from every base, nothing worse.)
pub fn counted_under(policy: &Policy, users: &UserMap) -> u64 {
    let mut h = Fnv1a::default();
    let parts = format!(
        "{:?}|{:?}|{:?}|{}|{:?}",
        policy.crm_to_chat, policy.chat_to_crm, policy.leads, policy.match_phone, users
    );
    h.bytes(parts.as_bytes());
    h.finish()
}

/// `YYYY-MM-DD` of a unix time in the configured timezone.
pub fn local_date(unix: i64, timezone: &chrono_tz::Tz) -> String {
    let t = chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default();
    t.with_timezone(timezone).format("%Y-%m-%d").to_string()
}

/// Linked dialog/card pairs that take part, and how many of them agree, over every record known
/// after the cycle's reads (the bases overlaid with what the cycle observed): the sum of
/// [`agreement_by_dialog`].
pub fn agreement(snap: &Snapshot, plan: &Plan, policy: &Policy, users: &UserMap) -> (u64, u64) {
    let t = total(agreement_by_dialog(snap, plan, policy, users).values());
    (t.pairs, t.agreed)
}

/// Each dialog's linked pairs that take part, and how many of them agree, for every dialog of the
/// snapshot overlaid with what the cycle observed (a dialog with none counts zero). A pair takes
/// part when its dialog is open and its card is of a synced kind (either direction), flagged and
/// not deleted; it agrees when the dialog has a responsible and the card's responsible maps to
/// them. A dialog's count is exact when the snapshot holds every card linked to it: every base,
/// or a neighbourhood and one of its dialogs.
pub fn agreement_by_dialog(
    snap: &Snapshot,
    plan: &Plan,
    policy: &Policy,
    users: &UserMap,
) -> BTreeMap<DialogKey, PairCount> {
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
    let mut out = BTreeMap::new();
    for (d, dialog) in &dialogs {
        let mut n = PairCount::default();
        let linked = links.cards_of.get(d).map(Vec::as_slice).unwrap_or(&[]);
        for c in linked.iter().filter(|_| !dialog.closed) {
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
            n.pairs += 1;
            if dialog.responsible.is_some() && users.to_chat(st.responsible) == dialog.responsible {
                n.agreed += 1;
            }
        }
        out.insert(d.clone(), n);
    }
    out
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
