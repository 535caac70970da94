//! The ports: one trait per external system a cycle talks to. The real adapters are the API
//! clients ([`crate::kommo::KommoClient`], [`crate::chatapp::ChatAppClient`]) and the redb store
//! ([`crate::store::Store`]); the scenario tests use in-memory fakes. The clients' own token
//! persistence is the fourth port, [`crate::tokens::TokenStore`].
//!
//! The methods are exactly what a cycle needs, no more: reads, writes, the server clock (the
//! incremental read signpost), the request count (the cycle record), the time budget, and the
//! records a page held that did not fit (quarantine).

use crate::core::engine::Snapshot;
use crate::core::model::{
    CardKind, DialogKey, DialogState, Employee, EmployeeId, KommoUser, KommoUserId, Pipelines,
    RecordId,
};
use crate::core::neighbourhood::{BaseLookup, Frame};
mod records;
mod state;

use crate::http::ApiError;
pub use crate::http::ApiMeter;
pub use records::{CardEvent, CardRead, ChatRead, PatchOutcome};
pub use state::{
    AuditEntry, Base, CycleCommit, CycleKind, CycleRecord, FIRST_BACKOFF_SECS, FailureKind, Intent,
    KEEP_CYCLES, MAX_BACKOFF_SECS, Outcome, PairCount, PairCounts, Quarantined, Retention,
    ShadowCommit, ShadowExample, ShadowTally, Side, Staging, StoreError, Watermarks, WriteFailure,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

/// Kommo, as a cycle sees it.
pub trait KommoApi: ApiMeter {
    /// Every user.
    fn users(&self) -> impl Future<Output = Result<Vec<KommoUser>, ApiError>> + Send;
    /// Responsible-change events (and with `stages` lead-stage events) of `kinds` since `from`.
    fn events(
        &self,
        kinds: &[CardKind],
        stages: bool,
        from: i64,
    ) -> impl Future<Output = Result<Vec<CardEvent>, ApiError>> + Send;
    /// Every pipeline with its statuses.
    fn pipelines(&self) -> impl Future<Output = Result<Pipelines, ApiError>> + Send;
    /// Whether list filters and ordering work on the account.
    fn filters_enabled(&self) -> impl Future<Output = Result<bool, ApiError>> + Send;
    /// Lists cards of `kind` (updated since `since`, newest first; else all), each handed to
    /// `sink` as its page arrives. Returns how many were listed.
    fn each_card(
        &self,
        kind: CardKind,
        since: Option<i64>,
        sink: &mut (dyn FnMut(CardRead) + Send),
    ) -> impl Future<Output = Result<usize, ApiError>> + Send;
    /// Cards by id; missing ones are not returned.
    fn cards_by_id(
        &self,
        kind: CardKind,
        ids: &[u64],
    ) -> impl Future<Output = Result<Vec<CardRead>, ApiError>> + Send;
    /// The contact of the unsorted chat record of each lead in `wanted` that has one.
    fn unsorted_contacts(
        &self,
        wanted: &BTreeSet<u64>,
    ) -> impl Future<Output = Result<BTreeMap<u64, u64>, ApiError>> + Send;
    /// Sets the responsible of cards of `kind` (one batch); returns the ids confirmed and the
    /// ids Kommo refused, each with its reason (the others are still written).
    fn patch_responsible(
        &self,
        kind: CardKind,
        items: &[(u64, KommoUserId)],
    ) -> impl Future<Output = Result<PatchOutcome, ApiError>> + Send;
    /// Stores a rotated token pair that lives only in memory; true when none is left unstored.
    fn retry_unsaved_token(&self) -> impl Future<Output = bool> + Send;
}

/// ChatApp, as a cycle sees it.
pub trait ChatAppApi: ApiMeter {
    /// The employees of the configured company.
    fn employees(&self) -> impl Future<Output = Result<Vec<Employee>, ApiError>> + Send;
    /// Chats of the configured licenses, newest first (down to `since`, else all).
    fn chats(
        &self,
        since: Option<i64>,
    ) -> impl Future<Output = Result<Vec<ChatRead>, ApiError>> + Send;
    /// One chat; `None` when ChatApp does not know it.
    fn chat(
        &self,
        key: &DialogKey,
    ) -> impl Future<Output = Result<Option<ChatRead>, ApiError>> + Send;
    /// Sets a dialog's responsible.
    fn set_responsible(
        &self,
        key: &DialogKey,
        employee: EmployeeId,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// The state db's reads: the bases and what the last cycles left. Writes are durable when they
/// return `Ok` (here and in the other state traits).
pub trait BaseReads: Send + Sync {
    /// A read view of the bases by key and by link term (one cycle's lookups).
    type Bases<'a>: BaseLookup<Error = StoreError> + Send
    where
        Self: 'a;
    /// Every base, parked pair and held record, and whether the first cycle ran (a shadow cycle
    /// that counts its pairs afresh plans from all of them; other cycles load only what they
    /// need).
    fn load_snapshot(&self) -> Result<Snapshot, StoreError>;
    /// Parked pairs, held records and whether the first cycle ran.
    fn frame(&self) -> Result<Frame, StoreError>;
    /// Every dialog base (a first run decides every dialog; it loads no card base but those
    /// that may link to a dialog).
    fn dialog_bases(&self) -> Result<BTreeMap<DialogKey, DialogState>, StoreError>;
    /// The bases' read view.
    fn bases(&self) -> Result<Self::Bases<'_>, StoreError>;
    /// How many card bases of each kind and dialog bases there are (the listing brake).
    fn base_counts(&self) -> Result<(BTreeMap<CardKind, usize>, usize), StoreError>;
    /// Where incremental reads start.
    fn watermarks(&self) -> Result<Watermarks, StoreError>;
    /// Kommo's pipelines as last read (`None`: never read).
    fn pipelines(&self) -> Result<Option<Pipelines>, StoreError>;
    /// Records quarantined by earlier cycles.
    fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError>;
    /// Kommo event ids already seen.
    fn events_seen(&self) -> Result<BTreeSet<String>, StoreError>;
    /// Whether a shadow cycle has committed (shadow cycles keep their own bootstrap flag).
    fn shadow_bootstrapped(&self) -> Result<bool, StoreError>;
    /// Shadow mode's count of linked pairs as the last shadow cycle committed it (`None`: not
    /// kept: no shadow cycle since the bases last changed otherwise, or a db from before the
    /// count was kept).
    fn shadow_tally(&self) -> Result<Option<ShadowTally>, StoreError>;
    /// The kept count of each of `dialogs` (absent: none).
    fn shadow_pair_counts<'k>(
        &self,
        dialogs: impl Iterator<Item = &'k DialogKey>,
    ) -> Result<BTreeMap<DialogKey, PairCount>, StoreError>;
}

/// The state db's write log (SPEC rule 11): every write is recorded before it is made and
/// settled after, with its audit entry.
pub trait WriteLog: Send + Sync {
    /// Pending write intents (writes whose outcome is not recorded).
    fn intents(&self) -> Result<Vec<Intent>, StoreError>;
    /// Records intents before their writes.
    fn record_intents(&self, intents: &[Intent]) -> Result<(), StoreError>;
    /// A confirmed write: its new base, its audit entry and the intent's removal, together.
    fn confirm_write(&self, intent: &Intent, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Removes an intent whose write certainly did not happen.
    fn drop_intent(&self, target: &RecordId) -> Result<(), StoreError>;
    /// Writes that failed (refused, or not applied), parked by target until their back-off ends.
    fn write_failures(&self) -> Result<BTreeMap<RecordId, WriteFailure>, StoreError>;
    /// Parks a failed write: the failure, its audit entry and the intent's removal, together.
    fn park_write(&self, failure: &WriteFailure, audit: &AuditEntry) -> Result<(), StoreError>;
}

/// The state db's cycle log: cycle ids, records and the end-of-cycle commit.
pub trait CycleLog: Send + Sync {
    /// Where a first run keeps the cards it read until its commit.
    type Staged: Staging;
    /// Commits the end of a cycle in one transaction.
    fn commit_cycle(&self, commit: &CycleCommit<Self::Staged>) -> Result<(), StoreError>;
    /// Records a cycle that did not commit.
    fn record_cycle(&self, record: &CycleRecord, retention: &Retention) -> Result<(), StoreError>;
    /// The next cycle's id.
    fn next_cycle_id(&self) -> Result<u64, StoreError>;
}

/// The state db, as a cycle sees it: its reads, its write log and its cycle log.
pub trait StateStore: BaseReads + WriteLog + CycleLog {}

impl<T: BaseReads + WriteLog + CycleLog> StateStore for T {}
