//! Step 5 of a cycle, and its recovery: writes through the ports.
//!
//! [`apply`] reads every target right before writing it (rule 10: cards in batches; a target
//! that changed, closed, went away or no longer takes part is dropped; a card a hint cycle read
//! by id less than [`FRESH_READ`] ago is not read again), records an intent before
//! each write (rule 11), writes (Kommo in batches of `batch_size`, ChatApp one call per dialog)
//! and confirms each write with its new base and audit entry in one transaction, so the daemon's
//! own writes never come back as changes. A dialog write is read back before it is confirmed. A
//! rejected write (see [`crate::http::error_policy`], and each card Kommo's `validation-errors`
//! name) or one read back unchanged is parked ([`crate::store::failures`]): its bases stay held,
//! and the same write waits for its back-off; any other failure fails the cycle. [`recover`] settles
//! the intents a crash left by reading their targets.

use super::describe::describe_audit;
use super::{CycleError, CycleReport, Syncer, WriteResult};
use crate::core::engine::{self, Plan, Target, Write};
use crate::core::model::{CardId, CardKind, EmployeeId, KommoUserId, Pipelines, RecordId, Value};
use crate::core::text::{self, Readable};
use crate::http::{ApiError, ErrorPolicy, error_policy};
use crate::ports::CardRead;
use crate::ports::{AuditEntry, Base, FailureKind, Intent, WriteFailure};
use crate::ports::{ChatAppApi, KommoApi, StateStore};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How old a card read of this cycle may be to stand as rule 10's check (a decision of ours,
/// no API documents it). A hint cycle reads the cards it decides by id, milliseconds before it
/// writes them: reading them again costs one more request per kind written, on a budget counted
/// in requests, and Kommo has no conditional write, so either read leaves a gap before the
/// PATCH. The age is taken after the dialogs' own reads, just before the intents are recorded and
/// the PATCH waits for the rate limit (the same gap a re-read leaves). A read older than this,
/// and every read of a polled cycle (its listings can be minutes old), is made again.
pub const FRESH_READ: Duration = Duration::from_secs(1);

/// A hint cycle's cards read by id, with when each answer came (empty on other cycles).
pub type ReadJustNow = BTreeMap<CardId, (Instant, CardRead)>;

/// Rule 11: pending intents are settled by reading their targets (written: recorded as the new
/// base; not written: dropped, decided again). Returns how many there were.
pub async fn recover<K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    now: i64,
) -> Result<usize, CycleError> {
    let intents = sy.store.intents()?;
    // before this cycle's read: no names yet
    let at = Readable::without_names(&sy.config.daemon.timezone, now);
    for i in &intents {
        let current: Option<Value> = match &i.target {
            RecordId::Card(c) => sy
                .kommo
                .cards_by_id(c.kind, &[c.id])
                .await?
                .first()
                .map(|k| Value::Card(k.view.responsible)),
            RecordId::Dialog(d) => sy
                .chatapp
                .chat(d)
                .await?
                .and_then(|c| c.view.responsible.map(Value::Dialog)),
        };
        if current == Some(i.to) {
            let mut audit = i.audit.clone();
            audit.at = now;
            audit.how = "recovered".into();
            tracing::warn!(
                "a write of an interrupted cycle had landed: recorded as the new base: {}",
                describe_audit(&at, &audit)
            );
            sy.store.confirm_write(i, &audit)?;
        } else {
            tracing::warn!(
                "a write of an interrupted cycle had not landed (it is decided again): {} -> {}",
                i.target,
                at.value(Some(i.to))
            );
            sy.store.drop_intent(&i.target)?;
        }
    }
    Ok(intents.len())
}

/// What a target holds right before its write. A target the read did not return is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    /// Gone, closed, or no longer takes part.
    Gone,
    /// There, with this responsible (`None`: nobody).
    Holds(Option<Value>),
}

/// Check-before-write, intents, writes, confirmations (see the module docs).
pub async fn apply<K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    cycle: u64,
    now: i64,
    report: &mut CycleReport,
    pipelines: &Pipelines,
    just_read: &ReadJustNow,
) -> Result<(), CycleError> {
    if report.plan.writes.is_empty() {
        return Ok(());
    }
    let failures = sy.store.write_failures()?;
    let held: Vec<Option<String>> = report
        .plan
        .writes
        .iter()
        .map(|w| held_back(w, &failures, now))
        .collect();
    let to_send = report
        .plan
        .writes
        .iter()
        .zip(&held)
        .filter(|(_, h)| h.is_none());
    let current = read_targets(sy, to_send.map(|(w, _)| w), pipelines, just_read).await?;
    let people = report.people.clone();
    let at = sy.readable(&people, now);
    let mut cards: BTreeMap<CardKind, Vec<(usize, Intent)>> = BTreeMap::new();
    let mut dialogs: Vec<(usize, Intent, EmployeeId)> = vec![];
    for (i, (w, held)) in report.plan.writes.iter().zip(held).enumerate() {
        if let Some(why) = held {
            report.results[i] = WriteResult::Waiting(why);
            continue;
        }
        if let Err(why) = check(w, &current, &at) {
            report.results[i] = WriteResult::Dropped(why);
            continue;
        }
        let intent = intent(cycle, now, w, &report.plan);
        match &w.target {
            Target::Card { id, .. } => cards.entry(id.kind).or_default().push((i, intent)),
            Target::Dialog { to, .. } => dialogs.push((i, intent, *to)),
        }
    }
    let mut w = Writer {
        sy,
        now,
        report,
        at: &at,
        failures: &failures,
    };
    for (kind, items) in cards {
        for chunk in items.chunks(sy.config.kommo.batch_size) {
            w.write_cards(kind, chunk).await?;
        }
    }
    for (i, it, to) in dialogs {
        w.write_dialog(i, &it, to).await?;
    }
    Ok(())
}

/// Why a write is not sent now: the same write (same target, same value before and after)
/// failed before and its back-off has not ended (see [`crate::store::failures`]).
fn held_back(w: &Write, failures: &BTreeMap<RecordId, WriteFailure>, now: i64) -> Option<String> {
    let target = w.target.record();
    let f = failures
        .get(&target)
        .filter(|f| f.holds_back(&target, w.target.from_value(), w.target.to_value(), now))?;
    Some(format!(
        "{} {} time(s) ({}); the same write is tried again after {}",
        f.kind.as_str(),
        f.attempts,
        f.detail,
        text::time(f.retry_at)
    ))
}

/// Rule 10: each target read right before its write (cards in batches per kind), unless this
/// cycle read it less than [`FRESH_READ`] ago.
async fn read_targets<'w, K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    writes: impl Iterator<Item = &'w Write>,
    pipelines: &Pipelines,
    just_read: &ReadJustNow,
) -> Result<BTreeMap<RecordId, Current>, CycleError> {
    let mut current = BTreeMap::new();
    let mut by_kind: BTreeMap<CardKind, Vec<u64>> = BTreeMap::new();
    let held_by = |c: &CardRead| {
        if !c.view.deleted && still_receives(sy, c, pipelines) {
            Current::Holds(
                Some(c.view.responsible)
                    .filter(|u| u.0 != 0)
                    .map(Value::Card),
            )
        } else {
            Current::Gone
        }
    };
    let (cards, dialogs): (Vec<&Write>, Vec<&Write>) = writes
        .into_iter()
        .partition(|w| matches!(w.target, Target::Card { .. }));
    // the dialogs first (each its own ChatApp request): a card's age is taken after them
    for w in dialogs {
        if let Target::Dialog { key, .. } = &w.target {
            let held = match sy.chatapp.chat(key).await? {
                Some(c) if !c.view.closed => Current::Holds(c.view.responsible.map(Value::Dialog)),
                _ => Current::Gone,
            };
            current.insert(w.target.record(), held);
        }
    }
    for w in cards {
        if let Target::Card { id, .. } = &w.target {
            match just_read.get(id) {
                Some((at, c)) if at.elapsed() < FRESH_READ => {
                    current.insert(RecordId::Card(*id), held_by(c));
                }
                _ => by_kind.entry(id.kind).or_default().push(id.id),
            }
        }
    }
    for (kind, ids) in &by_kind {
        for c in sy.kommo.cards_by_id(*kind, ids).await? {
            current.insert(RecordId::Card(c.card_id()), held_by(&c));
        }
    }
    Ok(current)
}

/// Whether a write may go: its target is there and still holds what the decision was based on.
/// The reason it may not is a marked text (see [`crate::core::text`]).
fn check(w: &Write, current: &BTreeMap<RecordId, Current>, at: &Readable) -> Result<(), String> {
    let Some(Current::Holds(now_value)) = current.get(&w.target.record()) else {
        return Err("the target is gone, closed, or no longer takes part".into());
    };
    let expected = w.target.from_value();
    if *now_value != expected {
        let record = w.target.record();
        let why = format!(
            "the target changed meanwhile ({} instead of {}); decided again next cycle",
            text::value(*now_value),
            text::value(expected)
        );
        tracing::warn!(
            "check before write: {record}: write dropped: {}",
            at.text(&why)
        );
        return Err(why);
    }
    Ok(())
}

/// Whether a card read right before its write still takes part as a kind that receives: its
/// sync flag may have been unchecked, and a lead may have closed, left the synced pipelines or
/// changed kind meanwhile.
fn still_receives<K, C, S>(sy: &Syncer<K, C, S>, c: &CardRead, pipelines: &Pipelines) -> bool {
    let st = c.to_obs(c.lead_stage_or_open(pipelines)).into_state();
    if !st.flag {
        return false;
    }
    c.kind != CardKind::Lead
        || engine::sync_kind(&c.card_id(), &st, &sy.policy.leads)
            .is_some_and(|k| sy.policy.chat_to_crm.contains(&k))
}

/// The writes of one cycle, and what they need to confirm or park each one.
struct Writer<'a, K, C, S> {
    sy: &'a Syncer<K, C, S>,
    now: i64,
    report: &'a mut CycleReport,
    at: &'a Readable<'a>,
    failures: &'a BTreeMap<RecordId, WriteFailure>,
}

impl<K: KommoApi, C: ChatAppApi, S: StateStore> Writer<'_, K, C, S> {
    /// One batch of card writes: intents first, then the PATCH, then each confirmation; a card
    /// Kommo refused is parked, the others are written.
    async fn write_cards(
        &mut self,
        kind: CardKind,
        chunk: &[(usize, Intent)],
    ) -> Result<(), CycleError> {
        if self.sy.stop.is_cancelled() {
            return Err(CycleError::Stopped);
        }
        let intents: Vec<Intent> = chunk.iter().map(|(_, i)| i.clone()).collect();
        self.sy.store.record_intents(&intents)?;
        let body: Vec<(u64, KommoUserId)> = chunk
            .iter()
            .filter_map(|(_, it)| match (&it.target, it.to) {
                (RecordId::Card(c), Value::Card(to)) => Some((c.id, to)),
                _ => None,
            })
            .collect();
        match self.sy.kommo.patch_responsible(kind, &body).await {
            Ok(outcome) => {
                for (i, it) in chunk {
                    let RecordId::Card(c) = &it.target else {
                        continue;
                    };
                    if outcome.confirmed.contains(&c.id) {
                        confirm(self.sy, it, self.now, self.at)?;
                        self.report.results[*i] = WriteResult::Done;
                    } else {
                        let why = outcome
                            .refused
                            .get(&c.id)
                            .map_or("not in the PATCH response", String::as_str);
                        self.park(*i, it, FailureKind::Rejected, why)?;
                    }
                }
                Ok(())
            }
            Err(e) if error_policy(&e) == ErrorPolicy::Reject => {
                tracing::error!(kind = %kind, error = %e, "Kommo rejected a PATCH batch; its cards are parked");
                for (i, it) in chunk {
                    self.park(*i, it, FailureKind::Rejected, &rejection(&e))?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One dialog write: its intent, the call, the dialog read back, its confirmation. ChatApp's
    /// answer is not proof: the call that sets a responsible is documented nowhere, and an
    /// endpoint that answers success without effect must not become a base.
    async fn write_dialog(
        &mut self,
        i: usize,
        it: &Intent,
        to: EmployeeId,
    ) -> Result<(), CycleError> {
        let RecordId::Dialog(d) = &it.target else {
            return Ok(());
        };
        if self.sy.stop.is_cancelled() {
            return Err(CycleError::Stopped);
        }
        self.sy.store.record_intents(std::slice::from_ref(it))?;
        match self.sy.chatapp.set_responsible(d, to).await {
            Ok(()) => {
                let back = self.sy.chatapp.chat(d).await?;
                let now_holds = back.as_ref().and_then(|c| c.view.responsible);
                if now_holds == Some(to) {
                    confirm(self.sy, it, self.now, self.at)?;
                    self.report.results[i] = WriteResult::Done;
                } else {
                    let endpoint = &self.sy.config.chatapp.set_responsible;
                    let why = format!(
                        "{} {} answered success; read back, the dialog holds {}",
                        endpoint.method,
                        endpoint.path,
                        text::employee(now_holds)
                    );
                    self.park(i, it, FailureKind::NotApplied, &why)?;
                }
                Ok(())
            }
            Err(e) if error_policy(&e) == ErrorPolicy::Reject => {
                self.park(i, it, FailureKind::Rejected, &rejection(&e))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A failed write: parked with its back-off and an audit entry, its intent dropped, the
    /// result reported. Its bases stay held, so the change is decided again each cycle, and the
    /// same write is sent again only when its back-off ends.
    fn park(
        &mut self,
        i: usize,
        it: &Intent,
        kind: FailureKind,
        why: &str,
    ) -> Result<(), CycleError> {
        let f = WriteFailure::next(it, kind, why, self.now, self.failures.get(&it.target));
        let mut audit = it.audit.clone();
        audit.at = self.now;
        audit.how = kind.as_str().into();
        audit.detail = format!("{} [{}: {}]", audit.detail, kind.as_str(), f.detail);
        self.sy.store.park_write(&f, &audit)?;
        tracing::error!(
            target = %it.target,
            attempts = f.attempts,
            "{} (parked; the same write is tried again after {}): {}",
            kind.as_str(),
            self.at.text(&text::time(f.retry_at)),
            self.at.text(&f.detail)
        );
        let text = format!("{}; tried again after {}", f.detail, text::time(f.retry_at));
        self.report.results[i] = match kind {
            FailureKind::Rejected => WriteResult::Rejected(text),
            FailureKind::NotApplied => WriteResult::NotApplied(text),
        };
        Ok(())
    }
}

/// The text of a rejected write.
fn rejection(e: &ApiError) -> String {
    match e {
        ApiError::Status { status, body, .. } => format!("HTTP {status}: {body}"),
        e => e.to_string(),
    }
}

/// The intent of a write: the new base and the audit entry recorded when it is confirmed.
fn intent(cycle: u64, now: i64, w: &Write, plan: &Plan) -> Intent {
    let base = match &w.target {
        Target::Card { id, to, .. } => {
            let mut st = plan.settle_cards[id].clone();
            st.responsible = *to;
            st.changed_at = now;
            Base::Card(st)
        }
        Target::Dialog { key, to, .. } => {
            let mut st = plan.settle_dialogs[key].clone();
            st.responsible = Some(*to);
            st.changed_at = now;
            Base::Dialog(st)
        }
    };
    let (target, from, to) = (
        w.target.record(),
        w.target.from_value(),
        w.target.to_value(),
    );
    Intent {
        cycle,
        target: target.clone(),
        from,
        to,
        audit: AuditEntry {
            at: now,
            cycle,
            target,
            from,
            to,
            rule: w.reason.rule,
            source: w.reason.source.clone(),
            source_changed_at: w.reason.source_changed_at,
            detail: w.reason.detail.clone(),
            how: "write".into(),
        },
        base,
    }
}

/// A confirmed write: its base and audit entry, durably, in one transaction.
fn confirm<K, C, S: StateStore>(
    sy: &Syncer<K, C, S>,
    it: &Intent,
    now: i64,
    at: &Readable<'_>,
) -> Result<(), CycleError> {
    let mut audit = it.audit.clone();
    audit.at = now;
    sy.store.confirm_write(it, &audit)?;
    tracing::info!(
        rule = audit.rule.label(),
        "corrected: {}",
        describe_audit(at, &audit)
    );
    Ok(())
}
