//! The names of Kommo users and ChatApp employees, for `status` (which reads no API): table
//! `names`, one row per person (`kommo_user 504141` -> `"Anna Petrova"`), written in the
//! transaction that commits a cycle. Names are merged, never pruned: a person who left still has
//! a name in the audit entries that mention them. A db written before this table existed reads as
//! "no names known" (ids only) until its next cycle.

use super::{StoreError, db_err, decode, encode};
use crate::core::text::People;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");

const KOMMO_USER: &str = "kommo_user";
const EMPLOYEE: &str = "chatapp_employee";

/// Stores the names of one read (inside the cycle's commit transaction); unchanged rows are not
/// rewritten.
pub(super) fn write(tx: &WriteTransaction, people: &People) -> Result<(), StoreError> {
    if people.is_empty() {
        return Ok(());
    }
    let mut t = tx.open_table(NAMES).map_err(db_err("open names"))?;
    let rows = people
        .kommo_users
        .iter()
        .map(|(id, n)| (KOMMO_USER, id, n))
        .chain(people.employees.iter().map(|(id, n)| (EMPLOYEE, id, n)));
    for (side, id, name) in rows {
        let key = format!("{side} {id}");
        let value = encode(name);
        let same = t
            .get(key.as_str())
            .map_err(db_err("read names"))?
            .is_some_and(|v| v.value() == value.as_slice());
        if !same {
            t.insert(key.as_str(), value.as_slice())
                .map_err(db_err("write names"))?;
        }
    }
    Ok(())
}

/// Every name stored (empty for a db without the table). A row that does not decode is skipped:
/// a name is only ever shown beside its id.
pub(super) fn read(tx: &ReadTransaction) -> Result<People, StoreError> {
    let t = match tx.open_table(NAMES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(People::default()),
        Err(e) => return Err(db_err("open names")(e)),
    };
    let mut people = People::default();
    for row in t.iter().map_err(db_err("scan names"))? {
        let (k, v) = row.map_err(db_err("scan names"))?;
        let Some((side, id)) = k.value().split_once(' ') else {
            continue;
        };
        let (Ok(id), Ok(name)) = (
            id.parse::<u64>(),
            decode::<String>(|| format!("name {}", k.value()), v.value()),
        ) else {
            continue;
        };
        match side {
            KOMMO_USER => people.kommo_users.insert(id, name),
            EMPLOYEE => people.employees.insert(id, name),
            _ => continue,
        };
    }
    Ok(people)
}
