//! Step 6 of a cycle: the bases settle (each observed record's becomes the value the cycle
//! settled on; the records of a write that did not land keep theirs) and everything the cycle
//! learnt is committed in one durable transaction: bases, parked pairs, held records, watermarks,
//! seen events, quarantine, the pipelines table and the cycle's record. A shadow cycle (nothing
//! written) settles every observed record on its observed value, holds nothing, and commits its
//! shadow records with the rest (see [`super::shadow`]).

use super::observe::Observed;
use super::{CycleError, CycleReport, Syncer, WriteResult};
use crate::core::engine;
use crate::logging::trace_memory;
use crate::ports::CycleCommit;
use crate::ports::ShadowCommit;
use crate::ports::{ChatAppApi, KommoApi, StateStore};

/// Settles and commits a cycle whose writes were applied (or, `shadow`, not made at all); fills
/// the record's write counts.
pub fn commit<K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    now: i64,
    seen: Observed<S::Staged>,
    report: &mut CycleReport,
    shadow: Option<ShadowCommit>,
) -> Result<(), CycleError> {
    let confirmed: Vec<bool> = report
        .results
        .iter()
        .map(|r| *r == WriteResult::Done)
        .collect();
    report.record.writes_done = confirmed.iter().filter(|c| **c).count() as u64;
    report.record.writes_failed = report
        .results
        .iter()
        .filter(|r| {
            matches!(
                r,
                WriteResult::Dropped(_) | WriteResult::Rejected(_) | WriteResult::NotApplied(_)
            )
        })
        .count() as u64;
    trace_memory("planned and applied");
    let settlement = if shadow.is_some() {
        // nothing was tried: settled as a plan without writes (observed values, none held)
        let writes = std::mem::take(&mut report.plan.writes);
        let s = engine::settle_owned(&seen.snap, &mut report.plan, &[], now);
        report.plan.writes = writes;
        s
    } else {
        engine::settle_owned(&seen.snap, &mut report.plan, &confirmed, now)
    };
    let mut settlement = settlement;
    let overlap = sy.config.kommo.events_overlap.as_secs() as i64;
    let pipelines_read =
        sy.config.syncs_leads() && seen.stored_pipelines.as_ref() != Some(&seen.pipelines);
    if found_nothing(&seen, &settlement, &report.plan, pipelines_read) {
        report.recorded = false;
        return Ok(());
    }
    settlement.held.extend(seen.carried_held);
    let commit = CycleCommit {
        settlement,
        pipelines: pipelines_read.then_some(seen.pipelines),
        prune_events_before: seen.watermarks.kommo_events - 2 * overlap,
        watermarks: seen.watermarks,
        events_seen: seen.fresh_events,
        bad: seen.bad,
        released: seen.released,
        retention: sy.retention(now),
        people: seen.people,
        cycle: report.record.clone(),
        shadow,
        staged: seen.staged.unwrap_or_default(),
    };
    drop(seen.snap); // the bases are in the settlement now: do not hold two copies
    trace_memory("settled");
    sy.store.commit_cycle(&commit)?;
    trace_memory("committed");
    Ok(())
}

/// A hint cycle that found nothing: every record it read equals its base, it planned nothing,
/// settled nothing, read no held record, found no bad record and released none, and kept the
/// stored pipelines. Committing it would change nothing but the cycle log, so it is neither
/// committed nor recorded (the metrics count it): a busy line's message callbacks cost no db
/// write and do not push the polled cycles out of the kept history.
fn found_nothing<St>(
    seen: &Observed<St>,
    s: &engine::Settlement,
    plan: &engine::Plan,
    pipelines_read: bool,
) -> bool {
    seen.kind == crate::ports::CycleKind::Hint
        && plan.writes.is_empty()
        && plan.parked.is_empty()
        && plan.conflicts.is_empty()
        && s.cards.is_empty()
        && s.dialogs.is_empty()
        && s.unpark.is_empty()
        && s.park.is_empty()
        && s.held.is_empty()
        && seen.snap.held.is_empty()
        && seen.bad.is_empty()
        && seen.released.is_empty()
        && !pipelines_read
}
