//! The state db's port: the records that cross it, its error, and the traits a cycle uses, split
//! by capability (lldap's handler traits are the model): the reads of the bases and of what the
//! last cycles left ([`BaseReads`]), the write log that makes every write recorded before and
//! settled after ([`WriteLog`]), and the cycle log and commit ([`CycleLog`]). The redb store
//! (`crate::store::Store`) implements all three; the scenario tests fake them in memory.
//!
//! Its error is the redb store's: the `Open` and `Db` variants carry redb's own error as their
//! source (the one adapter there is; a second would widen them).

use crate::core::engine::{Rule, Settlement};
use crate::core::model::{
    CardId, CardKind, CardState, DialogKey, DialogState, Pipelines, RecordId, Value,
};
use crate::core::neighbourhood::BaseLookup;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A state db problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the db open for writing (redb's file lock).
    #[error(
        "state db {0} is locked by another chatapp-kommo-sync process (redb file lock): one daemon per state db; stop the other one or use another state_path"
    )]
    Locked(PathBuf),
    /// The db could not be opened (permissions, I/O).
    #[error("state db {path}: cannot open it: {source}")]
    Open {
        /// The db.
        path: PathBuf,
        /// The error.
        #[source]
        source: redb::Error,
    },
    /// The db was closed after an error and could not be opened again.
    #[error("state db {0} is closed after an error; it could not be opened again")]
    Closed(PathBuf),
    /// A write through a handle opened read-only (a daemon holds the db).
    #[error("state db {0} is open read-only here (another process writes it)")]
    ReadOnly(PathBuf),
    /// The db does not exist (read-only open).
    #[error("state db {0} does not exist yet: run a cycle first")]
    Missing(PathBuf),
    /// The db was written by a newer schema.
    #[error("state db {path} has schema version {found}; this build understands {understood}")]
    Schema {
        /// The db.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version this build writes and reads.
        understood: u32,
    },
    /// A redb error, with what was being done.
    #[error("state db: {context}: {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: redb::Error,
    },
    /// The file is damaged, empty, or not a state db of this program; it is left as it is.
    #[error(
        "state db {path} cannot be used: {detail}. It is left as it is: restore it from a backup, or move it aside to start over (the next cycle then bootstraps a new db; a Kommo OAuth pair kept in it is lost: store a new one with `authorize --code`)"
    )]
    Corrupt {
        /// The db.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A stored value that does not decode.
    #[error("state db: cannot decode {what}: {reason}")]
    Decode {
        /// Table and key.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Which cycle: one that reads what changed, one that reads everything, or one that reads only
/// what webhooks named.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CycleKind {
    /// Reads what changed since the watermarks.
    #[default]
    Incremental,
    /// Reads everything (the first cycle, the full schedule, `--full`).
    Full,
    /// Reads only the records webhook calls named (SPEC 6.2; see `crate::sync::Hint`).
    Hint,
}

impl CycleKind {
    /// `incremental` or `full` (stable: metric labels and stored records).
    pub fn as_str(self) -> &'static str {
        match self {
            CycleKind::Incremental => "incremental",
            CycleKind::Full => "full",
            CycleKind::Hint => "hint",
        }
    }

    /// True for a cycle that reads everything.
    pub fn is_full(self) -> bool {
        self == CycleKind::Full
    }

    /// How much a cycle reads: a hint reads least, a full cycle most. Of two triggers due at
    /// once, the one that reads more runs (it covers the other; see `service::triggers::want`).
    pub fn reach(self) -> u8 {
        match self {
            CycleKind::Hint => 0,
            CycleKind::Incremental => 1,
            CycleKind::Full => 2,
        }
    }
}

impl std::fmt::Display for CycleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a cycle ended.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It ran and committed.
    #[default]
    Ok,
    /// `--dry-run`: planned, nothing written.
    DryRun,
    /// The safety brake stopped its writes.
    Braked,
    /// It failed; nothing but confirmed writes was recorded.
    Failed,
    /// The daemon stopped it between two writes.
    Stopped,
    /// Shadow mode: decided and committed, nothing written.
    Shadow,
}

impl Outcome {
    /// `ok`, `dry_run`, `braked`, `failed`, `stopped`, `shadow` (stable: metric labels and stored records).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::DryRun => "dry_run",
            Outcome::Braked => "braked",
            Outcome::Failed => "failed",
            Outcome::Stopped => "stopped",
            Outcome::Shadow => "shadow",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one cycle did, for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleRecord {
    /// Cycle id.
    pub id: u64,
    /// Full or incremental.
    pub kind: CycleKind,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    pub finished_at: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error of a failed cycle, or the brake's reason.
    pub error: Option<String>,
    /// Requests made to Kommo.
    pub kommo_requests: u64,
    /// Requests made to ChatApp.
    pub chatapp_requests: u64,
    /// Cards read.
    pub cards_read: u64,
    /// Dialogs read.
    pub dialogs_read: u64,
    /// Writes planned.
    pub writes_planned: u64,
    /// Writes confirmed.
    pub writes_done: u64,
    /// Writes failed or dropped by check-before-write.
    pub writes_failed: u64,
    /// Pairs parked in this cycle.
    pub parked: u64,
    /// Conflicts resolved.
    pub conflicts: u64,
    /// Records skipped because they did not fit their page (quarantined).
    #[serde(default)]
    pub quarantined: u64,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
}

/// Watermarks of incremental reads (server times, unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    /// Latest `created_at` of a Kommo event fully read.
    pub kommo_events: i64,
    /// Latest `updated_at` per card kind fully read.
    pub kommo_updated: BTreeMap<CardKind, i64>,
    /// Latest `lastTime` of a ChatApp chat fully read.
    pub chats: i64,
    /// Kommo's time (its `Date` header) when the last complete read began; 0 if unknown.
    #[serde(default)]
    pub kommo_read_at: i64,
    /// ChatApp's time when the last complete read began; 0 if unknown.
    #[serde(default)]
    pub chats_read_at: i64,
}

impl Watermarks {
    /// Where an incremental Kommo read starts: the last read's signpost (or, without one, the
    /// latest `updated_at`/`created_at` seen), minus the overlap.
    pub fn kommo_since(&self, latest_seen: i64, overlap: i64) -> i64 {
        (if self.kommo_read_at > 0 {
            self.kommo_read_at
        } else {
            latest_seen
        }) - overlap
    }

    /// Where an incremental ChatApp read starts (see [`Watermarks::kommo_since`]).
    pub fn chats_since(&self, overlap: i64) -> i64 {
        (if self.chats_read_at > 0 {
            self.chats_read_at
        } else {
            self.chats
        }) - overlap
    }
}

/// A record that did not fit its page, as kept until it reads fine again (or ages out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// What was wrong with it.
    pub record: crate::http::BadRecord,
    /// First seen (unix seconds).
    pub first_seen: i64,
    /// Last seen (unix seconds).
    pub last_seen: i64,
    /// Cycles that saw it.
    pub cycles: u64,
}

impl Quarantined {
    /// Its key: the API and the record, or (unnamed) the endpoint and field path.
    pub fn key_of(r: &crate::http::BadRecord) -> String {
        match &r.subject {
            Some(s) => format!("{} {s}", r.api),
            None => format!("{} {} {}", r.api, r.endpoint, r.path),
        }
    }
}

/// How much history the db keeps: audit entries newer than `audit_before`, and the last
/// `keep_cycles` cycle records. The store prunes inside its normal commits, a bounded number of
/// rows a commit, so the file size stays flat on a long run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Audit entries confirmed before this (unix seconds) are dropped.
    pub audit_before: i64,
    /// Cycle records kept (the newest).
    pub keep_cycles: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            audit_before: i64::MIN,
            keep_cycles: u64::MAX,
        }
    }
}

/// Cycle records kept by default: a week at the default 30-second poll.
pub const KEEP_CYCLES: u64 = 20_160;
/// Which API a would-be write was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A ChatApp dialog's responsible.
    Chat,
    /// A Kommo card's responsible.
    Kommo,
}

impl Side {
    /// `chat` or `kommo` (stable: metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Chat => "chat",
            Side::Kommo => "kommo",
        }
    }
}

/// One would-be write, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowExample {
    /// Unix seconds of the cycle.
    pub at: i64,
    /// The cycle.
    pub cycle: u64,
    /// The API it would have gone to.
    pub side: Side,
    /// The write, described as `once --dry-run` describes it.
    pub text: String,
}

/// What a shadow cycle adds to the table (committed with the rest of the cycle).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowCommit {
    /// The cycle's day, `YYYY-MM-DD` in the configured timezone.
    pub date: String,
    /// Unix seconds of the cycle.
    pub at: i64,
    /// Linked pairs taking part after the cycle's reads.
    pub pairs: u64,
    /// Of those, the pairs that agreed.
    pub agreed: u64,
    /// Would-be dialog writes.
    pub to_chat: u64,
    /// Would-be card writes.
    pub to_kommo: u64,
    /// The would-be writes (the store keeps the newest few).
    pub examples: Vec<ShadowExample>,
    /// How the kept count of linked pairs changes (see [`PairCounts`]).
    pub counts: PairCounts,
    /// What `pairs` and `agreed` were counted under ([`ShadowTally::under`]).
    pub under: u64,
}

/// One dialog's linked pairs that take part in shadow mode's count, and how many of them agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairCount {
    /// Linked pairs of the dialog that take part.
    pub pairs: u64,
    /// Of those, the pairs that agree.
    pub agreed: u64,
}

/// How a shadow cycle's commit changes the kept count of linked pairs, per dialog. A dialog's
/// pairs depend only on its own base and the bases of the cards linked to it, so a cycle that
/// planned from the neighbourhood of its observations recounts the dialogs of that neighbourhood
/// (every other dialog's pairs did not change); one that loaded every base recounts them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairCounts {
    /// Every dialog's count (the ones not listed have none): the kept counts are replaced.
    Recount(BTreeMap<DialogKey, PairCount>),
    /// The recounted dialogs' counts (a zero count removes the dialog's); the others are kept.
    Update(BTreeMap<DialogKey, PairCount>),
}

impl Default for PairCounts {
    fn default() -> Self {
        PairCounts::Update(BTreeMap::new())
    }
}

/// Shadow mode's count of linked pairs as the last shadow cycle committed it: the totals over
/// every dialog, and what they were counted under. The store drops it whenever the bases change
/// otherwise (a normal cycle's commit, a confirmed write), so a kept tally always describes the
/// bases as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowTally {
    /// Linked pairs that take part.
    pub pairs: u64,
    /// Of those, the pairs that agree.
    pub agreed: u64,
    /// A hash of what decides a pair's part and agreement besides the bases: the user map and
    /// the policy's kinds, leads and phone matching (`crate::sync::shadow::counted_under`). A
    /// tally counted under another one is counted again from every base.
    pub under: u64,
}

/// A first run's staging area: every card it read, kept compactly until the commit stores them
/// (see `crate::store::staged`). Lookups work once sealed.
pub trait Staging: BaseLookup<Error = StoreError> + Default + Send {
    /// Stages a card (again: the new value replaces the old one at the next seal).
    fn push(&mut self, id: CardId, st: &CardState);
    /// Sorts by id and builds the lookups.
    fn seal(&mut self) -> Result<(), StoreError>;
    /// Whether a card is staged.
    fn contains(&self, id: &CardId) -> bool;
    /// How many cards are staged.
    fn len(&self) -> usize;
    /// Whether none is.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every staged card, decoded, in id order once sealed.
    fn each(&self) -> impl Iterator<Item = Result<(CardId, CardState), StoreError>> + '_;
    /// Marks a card the plan settled otherwise than staged: the commit stores its settled value
    /// instead.
    fn take(&mut self, id: &CardId);
}

/// Everything a cycle commits at its end, in one transaction.
#[derive(Debug, Default)]
pub struct CycleCommit<St> {
    /// New bases and parked pairs.
    pub settlement: Settlement,
    /// Kommo's pipelines, when read anew.
    pub pipelines: Option<Pipelines>,
    /// New watermarks.
    pub watermarks: Watermarks,
    /// Kommo event ids seen (with their `created_at`) for dedupe; older ones are pruned.
    pub events_seen: Vec<(String, i64)>,
    /// Event ids older than this are pruned.
    pub prune_events_before: i64,
    /// Records of this cycle that did not fit their page (quarantined, or seen again).
    pub bad: Vec<crate::http::BadRecord>,
    /// Quarantine keys whose records read fine this cycle (released).
    pub released: Vec<String>,
    /// History to keep.
    pub retention: Retention,
    /// The cycle's record.
    pub cycle: CycleRecord,
    /// The names of the users and employees read (kept for `status`).
    pub people: crate::core::text::People,
    /// A shadow cycle's records; such a commit leaves the db unbootstrapped.
    pub shadow: Option<ShadowCommit>,
    /// A first run's cards that took part in no decision: their bases, as read (the
    /// settlement has the others).
    pub staged: St,
}

/// One audit-log line: a confirmed write. The store keeps it as JSON with bare id numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds of the confirmation.
    pub at: i64,
    /// Cycle id.
    pub cycle: u64,
    /// What was written.
    pub target: RecordId,
    /// Its value before (`None`: nobody), of `target`'s side.
    pub from: Option<Value>,
    /// Its value after, of `target`'s side.
    pub to: Value,
    /// The rule.
    pub rule: Rule,
    /// Where the value came from.
    pub source: RecordId,
    /// The source's change time.
    pub source_changed_at: i64,
    /// The explanation.
    pub detail: String,
    /// `write` for a write of this daemon, `recovered` for an intent settled after a crash,
    /// `rejected` or `write not applied` for a write that failed (parked; `to` was not written).
    pub how: String,
}

/// A write about to be made, recorded before the call (SPEC rule 11). The store keeps it as JSON with
/// bare id numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// Cycle id.
    pub cycle: u64,
    /// The target.
    pub target: RecordId,
    /// The value the decision was based on (`None`: nobody), of `target`'s side.
    pub from: Option<Value>,
    /// The value being written, of `target`'s side.
    pub to: Value,
    /// The audit entry to record when confirmed.
    pub audit: AuditEntry,
    /// The base to record when confirmed.
    pub base: Base,
}

/// A base of either kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Base {
    /// A card's.
    Card(CardState),
    /// A dialog's.
    Dialog(DialogState),
}

/// Back-off of a failed write (issue 18; a decision, no source asks for one): 15 min after the
/// first failure, doubling after each further one, at most 24 h. A write whose inputs changed is
/// a new decision and is not held back.
/// The first back-off after a failed write.
pub const FIRST_BACKOFF_SECS: i64 = 15 * 60;
/// The longest back-off.
pub const MAX_BACKOFF_SECS: i64 = 24 * 3600;

/// How a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The API refused it (Kommo `validation-errors`, a 4xx, ChatApp `success: false`).
    Rejected,
    /// The API answered success, and reading the target back showed the old value.
    NotApplied,
}

impl FailureKind {
    /// `rejected` or `write not applied` (as `status` and the audit log say it).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Rejected => "rejected",
            FailureKind::NotApplied => "write not applied",
        }
    }

    /// `rejected` or `not_applied` (metric labels).
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Rejected => "rejected",
            FailureKind::NotApplied => "not_applied",
        }
    }
}

/// A parked write: what was tried, how it failed, and when it may be tried again. The store keeps it
/// as JSON with bare id numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// The target.
    pub target: RecordId,
    /// The value found before the write (`None`: nobody), of `target`'s side.
    pub from: Option<Value>,
    /// The value written, of `target`'s side.
    pub to: Value,
    /// How it failed.
    pub kind: FailureKind,
    /// The API's code and detail, or the endpoint and its answer (scrubbed, shortened).
    pub detail: String,
    /// Failed attempts of this same write in a row.
    pub attempts: u32,
    /// Unix seconds of the last attempt.
    pub last_at: i64,
    /// Unix seconds before which the same write is not sent again.
    pub retry_at: i64,
}

impl WriteFailure {
    /// The failure of `intent` at `now`, following `earlier` (the same write's previous failure,
    /// if any): the back-off doubles with each attempt.
    pub fn next(
        intent: &Intent,
        kind: FailureKind,
        detail: &str,
        now: i64,
        earlier: Option<&WriteFailure>,
    ) -> WriteFailure {
        let attempts = earlier
            .filter(|e| e.same_write(&intent.target, intent.from, intent.to))
            .map_or(1, |e| e.attempts.saturating_add(1));
        let backoff = FIRST_BACKOFF_SECS
            .saturating_mul(1i64 << (attempts - 1).min(20))
            .min(MAX_BACKOFF_SECS);
        WriteFailure {
            target: intent.target.clone(),
            from: intent.from,
            to: intent.to,
            kind,
            detail: crate::redact::excerpt(detail, 300),
            attempts,
            last_at: now,
            retry_at: now.saturating_add(backoff),
        }
    }

    /// Whether a write of `target` from `from` to `to` is the write that failed.
    pub fn same_write(&self, target: &RecordId, from: Option<Value>, to: Value) -> bool {
        &self.target == target && self.from == from && self.to == to
    }

    /// Whether that same write is still held back at `now`.
    pub fn holds_back(&self, target: &RecordId, from: Option<Value>, to: Value, now: i64) -> bool {
        self.same_write(target, from, to) && now < self.retry_at
    }
}
