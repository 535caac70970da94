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
    settlement.held.extend(seen.carried_held);
    let overlap = sy.config.kommo.events_overlap.as_secs() as i64;
    let pipelines_read =
        sy.config.syncs_leads() && seen.stored_pipelines.as_ref() != Some(&seen.pipelines);
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
        staged: seen.staged,
    };
    drop(seen.snap); // the bases are in the settlement now: do not hold two copies
    trace_memory("settled");
    sy.store.commit_cycle(&commit)?;
    trace_memory("committed");
    Ok(())
}
