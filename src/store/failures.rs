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

use super::{AuditEntry, Store, StoreError, db_err, decode, encode, record_key};
use crate::core::model::RecordId;
pub use crate::ports::{FIRST_BACKOFF_SECS, FailureKind, MAX_BACKOFF_SECS, WriteFailure};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use std::collections::BTreeMap;

pub(super) const WRITE_FAILURES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("write_failures");

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
