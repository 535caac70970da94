//! One sync cycle, in steps (each in its own module):
//!
//! 1. [`apply::recover`]: settle the intents a crash left (rule 11);
//! 2. [`observe`]: read what the cycle needs (everything on a full cycle; what changed since the
//!    watermarks on an incremental one) and return it;
//! 3. plan: the pure engine, [`crate::core::engine::plan_owned`];
//! 4. [`gate`]: whether the plan may write (dry run, safety brake, shadow mode); pure;
//! 5. [`apply`]: check each target right before writing it, record intents, write through the
//!    ports (Kommo in batches, ChatApp one call per dialog), confirm each write with its new base
//!    and audit entry;
//! 6. [`commit`]: settle the bases and commit the rest of the cycle in one transaction.
//!
//! In shadow mode [`shadow`] replaces step 5: each write is logged and counted, never made.
//!
//! The cycle talks to Kommo, ChatApp and the state db only through the [`crate::ports`] traits.

pub mod apply;
pub mod commit;
pub mod describe;
pub mod failure;
pub mod gate;
pub mod observe;
pub mod shadow;

use crate::config::Config;
use crate::core::engine::{self, Brake, Plan, Policy};
use crate::core::first_run;
use crate::core::model::{CardId, DialogKey};
use crate::core::text::People;
use crate::core::usermap::UserMap;
use crate::http::{ApiError, BadRecord};
use crate::logging::trace_memory;
use crate::ports::{ChatAppApi, KommoApi, StateStore};
use crate::ports::{CycleKind, CycleRecord, Outcome, Retention, StoreError};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument;

pub use describe::describe_write;

/// A cycle that failed; nothing but confirmed writes was recorded.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The state db failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The daemon is stopping: the cycle ended between two writes.
    #[error("stopped between writes; the rest is decided again next cycle")]
    Stopped,
}

impl CycleError {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CycleError::Api(e) => e.label(),
            CycleError::Store(_) => "store",
            CycleError::Stopped => "stopped",
        }
    }
}

/// What webhook calls named (SPEC 6.2): the cards and dialogs a hint cycle reads. A hint is a
/// trigger, never data: only ids are kept, and what is decided comes from the APIs' answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint {
    /// Kommo cards named by Kommo webhooks.
    pub cards: BTreeSet<CardId>,
    /// Dialogs named by ChatApp callbacks.
    pub dialogs: BTreeSet<DialogKey>,
}

impl Hint {
    /// Names nothing.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty() && self.dialogs.is_empty()
    }
}

/// How to run a cycle.
#[derive(Debug, Clone, Copy, Default)]
pub struct CycleOptions {
    /// `Full` reads everything; `Incremental` (the default) only what changed since the
    /// watermarks. A cycle may still read everything when asked for an incremental one (see
    /// [`observe::observe`]).
    pub kind: CycleKind,
    /// Plan only: write nothing to either API or to the base.
    pub dry_run: bool,
    /// Apply even if the safety brake trips (rule 13).
    pub force: bool,
    /// Shadow mode for this cycle whatever `[sync] mode` says (`--shadow`).
    pub shadow: bool,
}

/// What happened to one planned write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// Written and confirmed.
    Done,
    /// Not written: the target no longer held the value the decision was based on (rule 10).
    Dropped(String),
    /// The API rejected it (parked: the same write waits for its back-off).
    Rejected(String),
    /// The API answered success, and the target read back still held the old value (parked).
    NotApplied(String),
    /// Not sent: the same write failed before and its back-off has not ended.
    Waiting(String),
    /// Not attempted (dry run, brake).
    Skipped,
    /// Not written: shadow mode (logged, counted and recorded for `status`).
    Shadowed,
}

/// What a cycle did.
#[derive(Debug, Clone)]
pub struct CycleReport {
    /// The cycle's record (as stored).
    pub record: CycleRecord,
    /// The plan.
    pub plan: Plan,
    /// One result per `plan.writes` entry.
    pub results: Vec<WriteResult>,
    /// Set when the safety brake stopped the writes.
    pub brake: Option<Brake>,
    /// Intents settled at the start (recovered after a crash).
    pub recovered: usize,
    /// Records that did not fit their page (skipped and quarantined).
    pub bad: Vec<BadRecord>,
    /// The names of the users and employees read this cycle (for the cycle's output).
    pub people: crate::core::text::People,
    /// The cycle was committed and recorded in the state db: false for a dry run's and for a
    /// hint cycle that found nothing (see `commit::found_nothing`).
    pub recorded: bool,
}

/// The sync: what a cycle uses (config, the engine's policy) and the ports it talks through.
pub struct Syncer<K, C, S> {
    /// The config.
    pub config: Config,
    /// Kommo.
    pub kommo: K,
    /// ChatApp.
    pub chatapp: C,
    /// The state db.
    pub store: Arc<S>,
    /// Cancelled when the daemon stops: the cycle ends before its next write.
    pub stop: tokio_util::sync::CancellationToken,
    /// The engine's view of the config.
    pub policy: Policy,
    /// The user map and names the last polled cycle read (hint cycles decide with them).
    people: Mutex<Option<(UserMap, People)>>,
}

impl<K: KommoApi, C: ChatAppApi, S: StateStore> Syncer<K, C, S> {
    /// A syncer over any ports (the scenario tests give it fakes).
    pub fn new(config: Config, kommo: K, chatapp: C, store: Arc<S>) -> Syncer<K, C, S> {
        Syncer {
            policy: config.policy(),
            config,
            kommo,
            chatapp,
            store,
            stop: tokio_util::sync::CancellationToken::new(),
            people: Mutex::new(None),
        }
    }

    /// Keeps the user map and names a polled cycle read, for the hint cycles after it.
    pub fn remember_people(&self, usermap: &UserMap, people: &People) {
        let mut kept = self.people.lock().unwrap_or_else(|p| p.into_inner());
        *kept = Some((usermap.clone(), people.clone()));
    }

    /// The user map and names the last polled cycle read, if one ran since the syncer was built.
    pub fn remembered_people(&self) -> Option<(UserMap, People)> {
        self.people
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Renders people, times and marked texts with `people`, in the configured timezone, with
    /// ages relative to `now`.
    pub fn readable<'a>(
        &self,
        people: &'a crate::core::text::People,
        now: i64,
    ) -> crate::core::text::Readable<'a> {
        crate::core::text::Readable::new(people, &self.config.daemon.timezone, now)
    }

    /// Whether a cycle run with `opts` is a shadow one (`--shadow`, or `[sync] mode = "shadow"`).
    pub fn is_shadow(&self, opts: CycleOptions) -> bool {
        opts.shadow || self.config.sync.mode == crate::config::SyncMode::Shadow
    }

    fn requests(&self) -> (u64, u64) {
        (self.kommo.request_count(), self.chatapp.request_count())
    }

    /// The history the db keeps (`[daemon] audit_retention`, [`crate::ports::KEEP_CYCLES`]).
    pub fn retention(&self, now: i64) -> Retention {
        Retention {
            audit_before: now.saturating_sub(
                i64::try_from(self.config.daemon.audit_retention.as_secs()).unwrap_or(i64::MAX),
            ),
            keep_cycles: crate::ports::KEEP_CYCLES,
        }
    }

    /// Runs one cycle. A failed cycle is recorded (except in a dry run) and returned as `Err`.
    pub async fn run_cycle(&self, opts: CycleOptions) -> Result<CycleReport, CycleError> {
        self.run(opts, None).await
    }

    /// Runs a hint cycle: reads what `hint` names, decides, writes (see [`observe::observe_hint`]).
    /// When a hint cannot run (no polled cycle yet since the start, shadow mode, a first run)
    /// an incremental cycle runs instead; the record says which ran. `shadow`: `run --shadow`
    /// (the config's `[sync] mode` counts too, as for every cycle).
    pub async fn run_hint(&self, hint: &Hint, shadow: bool) -> Result<CycleReport, CycleError> {
        let opts = CycleOptions {
            kind: CycleKind::Hint,
            shadow,
            ..CycleOptions::default()
        };
        self.run(opts, Some(hint)).await
    }

    async fn run(
        &self,
        opts: CycleOptions,
        hint: Option<&Hint>,
    ) -> Result<CycleReport, CycleError> {
        let t0 = Instant::now();
        let started_at = crate::clock::now_unix();
        self.kommo.retry_unsaved_token().await;
        let (k0, c0) = self.requests();
        let deadline = Some(t0 + self.config.daemon.cycle_budget);
        self.kommo.set_deadline(deadline);
        self.chatapp.set_deadline(deadline);
        let id = self.store.next_cycle_id()?;
        let span = tracing::info_span!("cycle", cycle = id);
        let result = self
            .cycle(id, started_at, opts, hint)
            .instrument(span)
            .await;
        let (k1, c1) = self.requests();
        let took_ms = t0.elapsed().as_millis() as u64;
        match result {
            Ok(mut report) => {
                report.record.kommo_requests = k1 - k0;
                report.record.chatapp_requests = c1 - c0;
                report.record.duration_ms = took_ms;
                report.record.finished_at = crate::clock::now_unix();
                if report.recorded {
                    // with its request counts and wall time (a commit recorded it without them)
                    self.store
                        .record_cycle(&report.record, &self.retention(crate::clock::now_unix()))?;
                }
                Ok(report)
            }
            Err(e) => {
                self.record_failure(id, started_at, opts, &e, (k1 - k0, c1 - c0), took_ms);
                Err(e)
            }
        }
    }

    /// Logs a failed cycle at error level with its class, and records it (not in a dry run).
    fn record_failure(
        &self,
        id: u64,
        started_at: i64,
        opts: CycleOptions,
        e: &CycleError,
        (kommo_requests, chatapp_requests): (u64, u64),
        duration_ms: u64,
    ) {
        let stopped = matches!(e, CycleError::Stopped);
        if stopped {
            tracing::info!("cycle stopped between writes; the rest is decided again next cycle");
        } else {
            tracing::error!(error = %e, class = e.label(), "cycle failed; the next cycle starts from the last committed state");
        }
        if opts.dry_run {
            return;
        }
        let rec = CycleRecord {
            id,
            kind: opts.kind,
            started_at,
            finished_at: crate::clock::now_unix(),
            outcome: if stopped {
                Outcome::Stopped
            } else {
                Outcome::Failed
            },
            error: Some(e.to_string()),
            kommo_requests,
            chatapp_requests,
            duration_ms,
            ..CycleRecord::default()
        };
        if let Err(se) = self
            .store
            .record_cycle(&rec, &self.retention(crate::clock::now_unix()))
        {
            tracing::error!(error = %se, class = "store", "cannot record the failed cycle in the state db");
        }
    }

    /// Step 3: the plan. A first run plans group by group from its staged cards (see
    /// [`crate::core::first_run`]); the cards whose settled value differs from the staged one
    /// are taken from the staging, the commit stores the others as read.
    fn plan(&self, seen: &mut observe::Observed<S::Staged>) -> Result<Plan, CycleError> {
        let obs = std::mem::take(&mut seen.obs);
        let Some(staged) = &mut seen.staged else {
            return Ok(engine::plan_owned(
                &seen.snap,
                obs,
                &self.policy,
                &seen.usermap,
            ));
        };
        trace_memory("first run: grouping");
        let bases = self.store.bases()?;
        let (plan, taken) = first_run::plan_first_run(
            &*staged,
            &bases,
            &mut seen.snap,
            obs,
            &self.policy,
            &seen.usermap,
            first_run::BATCH,
        )?;
        for id in &taken {
            crate::ports::Staging::take(staged, id);
        }
        trace_memory("first run: planned");
        Ok(plan)
    }

    /// The steps of one cycle (see the module docs).
    async fn cycle(
        &self,
        id: u64,
        now: i64,
        opts: CycleOptions,
        hint: Option<&Hint>,
    ) -> Result<CycleReport, CycleError> {
        let recovered = if opts.dry_run {
            0
        } else {
            apply::recover(self, now).await?
        };
        trace_memory("start");
        let shadow = self.is_shadow(opts);
        let hinted = match hint {
            Some(h) if !shadow => observe::observe_hint(self, now, h).await?,
            _ => None,
        };
        let mut seen = match hinted {
            Some(seen) => seen,
            None => observe::observe(self, now, opts.kind, shadow).await?,
        };
        trace_memory("read");
        let (cards_read, dialogs_read) = seen.read;
        let plan = self.plan(&mut seen)?;
        describe::log_plan(&self.readable(&seen.people, now), &plan);
        let mut report = CycleReport {
            record: CycleRecord {
                id,
                kind: seen.kind,
                started_at: now,
                outcome: Outcome::Ok,
                cards_read,
                dialogs_read,
                writes_planned: plan.writes.len() as u64,
                parked: plan.parked.len() as u64,
                conflicts: plan.conflicts.len() as u64,
                quarantined: seen.bad.len() as u64,
                ..CycleRecord::default()
            },
            results: vec![WriteResult::Skipped; plan.writes.len()],
            plan,
            brake: None,
            recovered,
            bad: seen.bad.clone(),
            people: seen.people.clone(),
            recorded: !opts.dry_run,
        };
        match gate::gate(&report.plan, seen.listing_brake.take(), opts, shadow) {
            gate::Gate::DryRun(brake) => {
                report.record.outcome = Outcome::DryRun;
                report.brake = brake;
                Ok(report)
            }
            gate::Gate::Braked(b) => {
                tracing::error!(reason = %b, "safety brake: the cycle writes nothing");
                report.record.outcome = Outcome::Braked;
                report.record.error = Some(b.to_string());
                report.brake = Some(b);
                Ok(report)
            }
            gate::Gate::Write => {
                let just_read = std::mem::take(&mut seen.read_just_now);
                apply::apply(self, id, now, &mut report, &seen.pipelines, &just_read).await?;
                commit::commit(self, now, seen, &mut report, None)?;
                Ok(report)
            }
            gate::Gate::Shadow => {
                shadow::shadow(self, now, seen, &mut report)?;
                Ok(report)
            }
        }
    }
}
