//! Writes the target's API refused or did not apply (issue 18), in their own table
//! `write_failures`, one row per target. A failed write is parked there, with its audit entry and
//! the removal of its intent, in one transaction; the same write (same target, same value before
//! and after) is not sent again until its back-off ends. A write of the target that is confirmed
//! later removes the row.
//!
//! Back-off (a decision, no source asks for one): [`FIRST_BACKOFF_SECS`] (15 min) after the first
//! failure, doubling after each further one, at most [`MAX_BACKOFF_SECS`] (24 h). A write whose
//! inputs changed (another value to write, or another value found before it) is not held back:
//! it is a new decision.

use super::{AuditEntry, Intent, Store, StoreError, db_err, decode, encode, record_key};
use crate::core::model::{RecordId, Value};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(super) const WRITE_FAILURES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("write_failures");

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

/// A parked write: what was tried, how it failed, and when it may be tried again. Stored as
/// JSON with bare id numbers (`wire.rs`).
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

/// Removes a target's failure (its write was confirmed).
pub(super) fn clear(tx: &WriteTransaction, target: &RecordId) -> Result<(), StoreError> {
    let mut t = tx
        .open_table(WRITE_FAILURES)
        .map_err(db_err("open write_failures"))?;
    t.remove(record_key(target).as_str())
        .map_err(db_err("remove write failure"))?;
    Ok(())
}

impl Store {
    /// Every parked write, by target.
    pub fn write_failures(&self) -> Result<BTreeMap<RecordId, WriteFailure>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(WRITE_FAILURES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(db_err("open write_failures")(e)),
        };
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(db_err("scan write_failures"))? {
            let (k, v) = row.map_err(db_err("scan write_failures"))?;
            let f: WriteFailure = decode(|| format!("write failure {}", k.value()), v.value())?;
            out.insert(f.target.clone(), f);
        }
        Ok(out)
    }

    /// Parks a failed write: the failure, its audit entry and the intent's removal, together.
    pub fn park_write(&self, failure: &WriteFailure, audit: &AuditEntry) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut t = tx
                .open_table(WRITE_FAILURES)
                .map_err(db_err("open write_failures"))?;
            t.insert(
                record_key(&failure.target).as_str(),
                encode(failure).as_slice(),
            )
            .map_err(db_err("write write failure"))?;
            super::append_audit(&tx, audit)?;
            let mut i = tx
                .open_table(super::INTENTS)
                .map_err(db_err("open intents"))?;
            i.remove(record_key(&failure.target).as_str())
                .map_err(db_err("remove intent"))?;
        }
        tx.commit().map_err(db_err("commit parked write"))
    }
}
