//! Shadow mode's records (`[sync] mode = "shadow"`, `run --shadow`, `once --shadow`), in their own
//! table `shadow`, written in the same transaction as the rest of a shadow cycle's commit:
//!
//! - one row per day (in the configured timezone): the cycles of that day, how many linked
//!   dialog/card pairs agreed at the day's last cycle, and how many writes the daemon would have
//!   made, per side;
//! - the most recent would-be writes, as examples for `status`;
//! - whether a shadow cycle has run its first-run bootstrap (shadow cycles keep their own flag:
//!   the db's `bootstrapped` flag is left false by every shadow cycle, so the first normal cycle
//!   after them is a first run with the configured `bootstrap`).
//!
//! Beside it, the table `shadow_pairs` keeps the count of linked pairs the day rows show, so that
//! a shadow cycle need not load every base to count them (see `crate::sync::shadow`): per dialog
//! (by its base's key, [`super::bases::dialog_key`]) the pairs that take part and agree, and under
//! the empty key the totals with what they were counted under ([`ShadowTally`]). It describes the
//! bases only as shadow cycles left them: every other change of a base (a normal cycle's commit,
//! a confirmed write) deletes the table (`forget_counts`), and the next shadow cycle counts
//! again from every base, as it does when the table is missing (a db from before it existed).

use super::bases::dialog_key;
use super::{Store, StoreError, db_err, decode, encode};
use crate::core::model::DialogKey;
pub use crate::ports::{PairCount, PairCounts, ShadowCommit, ShadowExample, ShadowTally, Side};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const SHADOW: TableDefinition<&str, &[u8]> = TableDefinition::new("shadow");
const KEY_BOOTSTRAPPED: &str = "bootstrapped";
const KEY_EXAMPLES: &str = "examples";
const DAY_PREFIX: &str = "day:";
/// The kept count of linked pairs: per dialog, and the totals under [`KEY_TALLY`].
const PAIRS: TableDefinition<&str, &[u8]> = TableDefinition::new("shadow_pairs");
/// The totals' key (no dialog key is empty).
const KEY_TALLY: &str = "";

/// A dialog's count as stored: (pairs, agreed).
type StoredCount = (u64, u64);
/// The totals as stored: (pairs, agreed, under).
type StoredTally = (u64, u64, u64);

/// Days kept (the newest).
pub const KEEP_DAYS: usize = 90;
/// Would-be writes kept as examples (the newest).
pub const KEEP_EXAMPLES: usize = 20;

/// One day of shadow cycles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowDay {
    /// `YYYY-MM-DD` in the configured timezone.
    pub date: String,
    /// Shadow cycles that committed that day.
    pub cycles: u64,
    /// Linked dialog/card pairs taking part, at the day's last shadow cycle.
    pub pairs: u64,
    /// Of those, the pairs whose two sides agreed (the same person, through the user map).
    pub agreed: u64,
    /// Dialog writes the daemon would have made that day (to ChatApp).
    pub to_chat: u64,
    /// Card writes the daemon would have made that day (to Kommo).
    pub to_kommo: u64,
    /// Unix seconds of the day's last shadow cycle.
    pub last_cycle_at: i64,
}

fn day_key(date: &str) -> String {
    format!("{DAY_PREFIX}{date}")
}

/// Adds a shadow cycle to the table inside the cycle's commit transaction: the day's row, the
/// examples, the shadow bootstrap flag; days past [`KEEP_DAYS`] are dropped.
pub(super) fn write(tx: &redb::WriteTransaction, c: &ShadowCommit) -> Result<(), StoreError> {
    let mut t = tx.open_table(SHADOW).map_err(db_err("open shadow"))?;
    let key = day_key(&c.date);
    let old: Option<ShadowDay> = match t.get(key.as_str()).map_err(db_err("read shadow"))? {
        Some(v) => Some(decode(|| format!("shadow {key}"), v.value())?),
        None => None,
    };
    let mut day = old.unwrap_or_else(|| ShadowDay {
        date: c.date.clone(),
        ..ShadowDay::default()
    });
    day.cycles += 1;
    day.pairs = c.pairs;
    day.agreed = c.agreed;
    day.to_chat += c.to_chat;
    day.to_kommo += c.to_kommo;
    day.last_cycle_at = c.at;
    t.insert(key.as_str(), encode(&day).as_slice())
        .map_err(db_err("write shadow day"))?;
    if !c.examples.is_empty() {
        let mut ex: Vec<ShadowExample> = match t.get(KEY_EXAMPLES).map_err(db_err("read shadow"))? {
            Some(v) => decode(|| "shadow examples".into(), v.value()).unwrap_or_default(),
            None => vec![],
        };
        ex.extend(c.examples.iter().cloned());
        let drop = ex.len().saturating_sub(KEEP_EXAMPLES);
        ex.drain(..drop);
        t.insert(KEY_EXAMPLES, encode(&ex).as_slice())
            .map_err(db_err("write shadow examples"))?;
    }
    t.insert(KEY_BOOTSTRAPPED, encode(&true).as_slice())
        .map_err(db_err("write shadow bootstrapped"))?;
    write_counts(tx, c)?;
    let days: Vec<String> = t
        .range(DAY_PREFIX..)
        .map_err(db_err("scan shadow"))?
        .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
        .filter(|k| k.starts_with(DAY_PREFIX))
        .collect();
    for k in days.iter().take(days.len().saturating_sub(KEEP_DAYS)) {
        t.remove(k.as_str()).map_err(db_err("prune shadow"))?;
    }
    Ok(())
}

/// The kept count of linked pairs after a shadow cycle: its dialogs' counts, then the totals.
fn write_counts(tx: &redb::WriteTransaction, c: &ShadowCommit) -> Result<(), StoreError> {
    let counts = match &c.counts {
        PairCounts::Recount(all) => {
            forget_counts(tx)?;
            all
        }
        PairCounts::Update(some) => some,
    };
    let mut t = tx.open_table(PAIRS).map_err(db_err("open shadow_pairs"))?;
    for (d, n) in counts {
        let key = dialog_key(d);
        if n.pairs == 0 {
            t.remove(key.as_str())
                .map_err(db_err("remove shadow pairs"))?;
        } else {
            let v: StoredCount = (n.pairs, n.agreed);
            t.insert(key.as_str(), encode(&v).as_slice())
                .map_err(db_err("write shadow pairs"))?;
        }
    }
    let tally: StoredTally = (c.pairs, c.agreed, c.under);
    t.insert(KEY_TALLY, encode(&tally).as_slice())
        .map_err(db_err("write shadow tally"))?;
    Ok(())
}

/// Drops the kept count of linked pairs: a base changed other than by a shadow cycle's commit.
pub(super) fn forget_counts(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.delete_table(PAIRS)
        .map_err(db_err("delete shadow_pairs"))?;
    Ok(())
}

impl Store {
    /// Shadow mode's kept count of linked pairs (`None`: not kept, see the module docs).
    pub fn shadow_tally(&self) -> Result<Option<ShadowTally>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(PAIRS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err("open shadow_pairs")(e)),
        };
        let Some(v) = t.get(KEY_TALLY).map_err(db_err("read shadow tally"))? else {
            return Ok(None);
        };
        let (pairs, agreed, under): StoredTally = decode(|| "shadow tally".into(), v.value())?;
        Ok(Some(ShadowTally {
            pairs,
            agreed,
            under,
        }))
    }

    /// The kept count of each of `dialogs` (absent: none).
    pub fn shadow_pair_counts<'k>(
        &self,
        dialogs: impl Iterator<Item = &'k DialogKey>,
    ) -> Result<BTreeMap<DialogKey, PairCount>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(PAIRS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(db_err("open shadow_pairs")(e)),
        };
        let mut out = BTreeMap::new();
        for d in dialogs {
            let key = dialog_key(d);
            if let Some(v) = t.get(key.as_str()).map_err(db_err("read shadow pairs"))? {
                let (pairs, agreed): StoredCount =
                    decode(|| format!("shadow pairs {key}"), v.value())?;
                out.insert(d.clone(), PairCount { pairs, agreed });
            }
        }
        Ok(out)
    }

    /// Reads one value of the shadow table (`None`: absent, or no shadow cycle ever ran).
    fn shadow_value<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(SHADOW) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err("open shadow")(e)),
        };
        let v = t.get(key).map_err(db_err("read shadow"))?;
        v.map(|v| decode(|| format!("shadow {key}"), v.value()))
            .transpose()
    }

    /// Whether a shadow cycle has committed (so the next shadow cycle is not a first run).
    pub fn shadow_bootstrapped(&self) -> Result<bool, StoreError> {
        Ok(self.shadow_value(KEY_BOOTSTRAPPED)?.unwrap_or(false))
    }

    /// The last `n` days with shadow cycles, newest first.
    pub fn shadow_days(&self, n: usize) -> Result<Vec<ShadowDay>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(SHADOW) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(db_err("open shadow")(e)),
        };
        let mut out = vec![];
        for row in t.range(DAY_PREFIX..).map_err(db_err("scan shadow"))?.rev() {
            let (k, v) = row.map_err(db_err("scan shadow"))?;
            if !k.value().starts_with(DAY_PREFIX) {
                continue;
            }
            out.push(decode(|| format!("shadow {}", k.value()), v.value())?);
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
    }

    /// The most recent would-be writes, newest first.
    pub fn shadow_examples(&self) -> Result<Vec<ShadowExample>, StoreError> {
        let mut ex: Vec<ShadowExample> = self.shadow_value(KEY_EXAMPLES)?.unwrap_or_default();
        ex.reverse();
        Ok(ex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CycleCommit;

    fn shadow(
        date: &str,
        at: i64,
        to_chat: u64,
        to_kommo: u64,
    ) -> CycleCommit<crate::store::staged::StagedCards> {
        CycleCommit {
            cycle: crate::store::CycleRecord {
                id: at as u64,
                ..Default::default()
            },
            shadow: Some(ShadowCommit {
                date: date.into(),
                at,
                pairs: 4,
                agreed: 3,
                to_chat,
                to_kommo,
                examples: (0..to_chat)
                    .map(|i| ShadowExample {
                        at,
                        cycle: at as u64,
                        side: Side::Chat,
                        text: format!("dialog {i}"),
                    })
                    .collect(),
                ..ShadowCommit::default()
            }),
            ..CycleCommit::default()
        }
    }

    #[test]
    fn shadow_cycles_add_up_per_day_and_leave_the_db_unbootstrapped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        assert!(!s.shadow_bootstrapped().unwrap());
        assert!(s.shadow_days(14).unwrap().is_empty());
        s.commit_cycle(&shadow("2025-03-01", 10, 1, 2)).unwrap();
        s.commit_cycle(&shadow("2025-03-01", 20, 2, 0)).unwrap();
        s.commit_cycle(&shadow("2025-03-02", 30, 0, 1)).unwrap();
        assert!(s.shadow_bootstrapped().unwrap());
        assert!(!s.load_snapshot().unwrap().bootstrapped);
        let days = s.shadow_days(14).unwrap();
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].date, "2025-03-02");
        assert_eq!(
            (days[1].cycles, days[1].to_chat, days[1].to_kommo),
            (2, 3, 2)
        );
        assert_eq!(
            (days[1].pairs, days[1].agreed, days[1].last_cycle_at),
            (4, 3, 20)
        );
        let ex = s.shadow_examples().unwrap();
        assert_eq!(ex.len(), 3);
        assert_eq!(ex[0].at, 20);
        // a normal cycle marks the db bootstrapped and leaves the shadow records alone
        s.commit_cycle(&CycleCommit::default()).unwrap();
        assert!(s.load_snapshot().unwrap().bootstrapped);
        assert_eq!(s.shadow_days(1).unwrap()[0].date, "2025-03-02");
    }

    #[test]
    fn old_days_and_examples_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        for d in 0..(KEEP_DAYS as i64 + 5) {
            let date = chrono::DateTime::from_timestamp(d * 86_400, 0)
                .unwrap()
                .format("%Y-%m-%d")
                .to_string();
            s.commit_cycle(&shadow(&date, d + 1, 1, 0)).unwrap();
        }
        let days = s.shadow_days(usize::MAX).unwrap();
        assert_eq!(days.len(), KEEP_DAYS);
        assert_eq!(days.last().unwrap().last_cycle_at, 6);
        assert_eq!(s.shadow_examples().unwrap().len(), KEEP_EXAMPLES);
    }
}
