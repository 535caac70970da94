//! The bases of cards and dialogs, and the three indexes that let a cycle load only what it
//! needs ([`crate::core::neighbourhood`]): term -> cards, term -> dialogs, contact -> the other
//! cards that link it. A base is written only when its bytes change, together with its index
//! entries (the old ones removed), in the caller's transaction.

use super::codec;
use super::{StoreError, db_err};
use crate::core::model::{CardId, CardKind, CardState, DialogKey, DialogState};
use crate::core::neighbourhood::{BaseLookup, Term, card_terms, dialog_index_terms};
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata as _, TableDefinition,
    WriteTransaction,
};
use std::collections::BTreeMap;

/// Card bases by `kind code + id` (9 bytes).
pub const CARDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cards");
/// Dialog bases by their key ([`dialog_key`]).
pub const DIALOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("dialogs");
// The indexes are plain tables of composite keys (8 big-endian bytes of the term or contact id,
// then the record's key) with empty values, read by key range: about half the size of redb
// multimap tables, whose per-value bookkeeping outweighs these small entries.
/// Term + card key.
pub const TERM_CARDS: TableDefinition<&[u8], ()> = TableDefinition::new("term_cards");
/// Term + dialog key.
pub const TERM_DIALOGS: TableDefinition<&[u8], ()> = TableDefinition::new("term_dialogs");
/// Contact id + key of another card that links it.
pub const CONTACT_CARDS: TableDefinition<&[u8], ()> = TableDefinition::new("contact_cards");

/// An index entry's key: `prefix` (big-endian), then the record's key.
fn entry(prefix: u64, record: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + record.len());
    k.extend_from_slice(&prefix.to_be_bytes());
    k.extend_from_slice(record);
    k
}

/// Adds and removes the entries of one record under `old` and `new` prefixes (unchanged ones
/// are left alone).
fn reindex(
    tx: &WriteTransaction,
    def: TableDefinition<&[u8], ()>,
    record: &[u8],
    old: &[u64],
    new: &[u64],
) -> Result<(), StoreError> {
    if old == new {
        return Ok(());
    }
    let mut t = tx.open_table(def).map_err(db_err("open index"))?;
    for p in old.iter().filter(|p| !new.contains(p)) {
        t.remove(entry(*p, record).as_slice())
            .map_err(db_err("write index"))?;
    }
    for p in new.iter().filter(|p| !old.contains(p)) {
        t.insert(entry(*p, record).as_slice(), ())
            .map_err(db_err("write index"))?;
    }
    Ok(())
}

/// A card's key.
pub fn card_key(id: &CardId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = id.kind.code();
    k[1..].copy_from_slice(&id.id.to_be_bytes());
    k
}

/// The card a key names.
pub fn card_from_key(k: &[u8]) -> Option<CardId> {
    let kind = CardKind::from_code(*k.first()?)?;
    let id = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    Some(CardId::new(kind, id))
}

/// A dialog's key: `license:length of the messenger type:messenger type` then the chat id, e.g.
/// `1:10:grWhatsApp79990000001@c.us`: unambiguous whatever the two strings hold, and less than
/// half the size of schema 1's JSON key (it is repeated in every index entry of the dialog).
pub fn dialog_key(d: &DialogKey) -> String {
    format!(
        "{}:{}:{}{}",
        d.license_id,
        d.messenger_type.len(),
        d.messenger_type,
        d.chat_id
    )
}

/// A dialog key read back (schema 1's JSON keys too, for the migration).
pub fn dialog_from_key(k: &str) -> Result<DialogKey, StoreError> {
    let bad = |reason: String| StoreError::Decode {
        what: format!("dialog key {k}"),
        reason,
    };
    if let Ok(key) = serde_json::from_str::<DialogKey>(k) {
        return Ok(key); // schema 1 (a compact key never parses as JSON: digits, then a colon)
    }
    let mut parts = k.splitn(3, ':');
    let (Some(license), Some(len), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not license:length:type+chat".into()));
    };
    let license: u64 = license.parse().map_err(|_| bad("bad license".into()))?;
    let len: usize = len.parse().map_err(|_| bad("bad length".into()))?;
    let (Some(messenger), Some(chat)) = (rest.get(..len), rest.get(len..)) else {
        return Err(bad("the length runs past the key".into()));
    };
    Ok(DialogKey {
        license_id: license,
        messenger_type: messenger.to_string(),
        chat_id: chat.to_string(),
    })
}

/// Creates the base tables and indexes (a new db, or a migration).
pub fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(CARDS).map_err(db_err("open cards"))?;
    tx.open_table(DIALOGS).map_err(db_err("open dialogs"))?;
    tx.open_table(TERM_CARDS)
        .map_err(db_err("open term_cards"))?;
    tx.open_table(TERM_DIALOGS)
        .map_err(db_err("open term_dialogs"))?;
    tx.open_table(CONTACT_CARDS)
        .map_err(db_err("open contact_cards"))?;
    Ok(())
}

/// The index entries of a card base: its terms, and the contacts it links (other kinds).
pub(super) fn card_index(id: &CardId, st: &CardState) -> (Vec<Term>, Vec<u64>) {
    let contacts = if id.kind == CardKind::Contact {
        vec![]
    } else {
        st.contacts.clone()
    };
    (card_terms(st), contacts)
}

/// Writes a card base (when it changed) and its index entries. Returns whether it wrote.
pub fn put_card(tx: &WriteTransaction, id: &CardId, st: &CardState) -> Result<bool, StoreError> {
    let key = card_key(id);
    let bytes = codec::card_bytes(st);
    let mut cards = tx.open_table(CARDS).map_err(db_err("open cards"))?;
    let old = match cards.get(key.as_slice()).map_err(db_err("read card"))? {
        Some(v) if v.value() == bytes.as_slice() => return Ok(false),
        Some(v) => codec::card_from(v.value()).ok(),
        None => None,
    };
    cards
        .insert(key.as_slice(), bytes.as_slice())
        .map_err(db_err("write card"))?;
    let (new_terms, new_contacts) = card_index(id, st);
    let (old_terms, old_contacts) = old.map(|o| card_index(id, &o)).unwrap_or_default();
    reindex(tx, TERM_CARDS, &key, &old_terms, &new_terms)?;
    reindex(tx, CONTACT_CARDS, &key, &old_contacts, &new_contacts)?;
    Ok(true)
}

/// Writes a dialog base (when it changed) and its index entries. Returns whether it wrote.
pub fn put_dialog(
    tx: &WriteTransaction,
    k: &DialogKey,
    st: &DialogState,
) -> Result<bool, StoreError> {
    let key = dialog_key(k);
    let bytes = codec::dialog_bytes(st);
    let mut dialogs = tx.open_table(DIALOGS).map_err(db_err("open dialogs"))?;
    let old_phone = match dialogs.get(key.as_str()).map_err(db_err("read dialog"))? {
        Some(v) if v.value() == bytes.as_slice() => return Ok(false),
        Some(v) => Some(codec::dialog_from(v.value()).ok().and_then(|d| d.phone)),
        None => None,
    };
    dialogs
        .insert(key.as_str(), bytes.as_slice())
        .map_err(db_err("write dialog"))?;
    let old_terms = old_phone
        .map(|p| dialog_index_terms(k, p.as_deref()))
        .unwrap_or_default();
    let new_terms = dialog_index_terms(k, st.phone.as_deref());
    reindex(tx, TERM_DIALOGS, key.as_bytes(), &old_terms, &new_terms)?;
    Ok(true)
}

/// Rewrites every base of a schema 1 db in the compact format and builds the indexes, in the
/// caller's transaction (a migration either completes or leaves the db as it was).
pub fn migrate_from_json(tx: &WriteTransaction) -> Result<(usize, usize), StoreError> {
    create_tables(tx)?;
    let cards: Vec<(Vec<u8>, Vec<u8>)> = {
        let t = tx.open_table(CARDS).map_err(db_err("open cards"))?;
        let rows = t.iter().map_err(db_err("scan cards"))?;
        rows.map(|r| r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(db_err("scan cards"))?
    };
    for (k, v) in &cards {
        let id = card_from_key(k).ok_or_else(|| StoreError::Decode {
            what: "cards key".into(),
            reason: format!("{k:?}"),
        })?;
        let st = codec::card_from(v).map_err(|reason| StoreError::Decode {
            what: format!("card {id}"),
            reason,
        })?;
        tx.open_table(CARDS)
            .map_err(db_err("open cards"))?
            .remove(k.as_slice())
            .map_err(db_err("migrate card"))?;
        put_card(tx, &id, &st)?;
    }
    let dialogs: Vec<(String, Vec<u8>)> = {
        let t = tx.open_table(DIALOGS).map_err(db_err("open dialogs"))?;
        let rows = t.iter().map_err(db_err("scan dialogs"))?;
        rows.map(|r| r.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(db_err("scan dialogs"))?
    };
    for (k, v) in &dialogs {
        let key = dialog_from_key(k)?;
        let st = codec::dialog_from(v).map_err(|reason| StoreError::Decode {
            what: format!("dialog {key}"),
            reason,
        })?;
        tx.open_table(DIALOGS)
            .map_err(db_err("open dialogs"))?
            .remove(k.as_str())
            .map_err(db_err("migrate dialog"))?;
        put_dialog(tx, &key, &st)?;
    }
    Ok((cards.len(), dialogs.len()))
}

/// A consistent read view of the bases for one cycle's lookups (one read transaction). The
/// indexes are absent only in a schema 1 db opened read-only (`status` before the daemon
/// migrated it): lookups by term then find nothing; a cycle always runs on a migrated db.
pub struct BaseReader {
    cards: ReadOnlyTable<&'static [u8], &'static [u8]>,
    dialogs: ReadOnlyTable<&'static str, &'static [u8]>,
    term_cards: Option<Index>,
    term_dialogs: Option<Index>,
    contact_cards: Option<Index>,
}

type Index = ReadOnlyTable<&'static [u8], ()>;

/// An index table, `None` when the db has none yet.
fn optional(
    tx: &ReadTransaction,
    def: TableDefinition<&[u8], ()>,
) -> Result<Option<Index>, StoreError> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err("open index")(e)),
    }
}

impl BaseReader {
    /// Opens the tables in `tx`.
    pub fn new(tx: &ReadTransaction) -> Result<BaseReader, StoreError> {
        Ok(BaseReader {
            cards: tx.open_table(CARDS).map_err(db_err("open cards"))?,
            dialogs: tx.open_table(DIALOGS).map_err(db_err("open dialogs"))?,
            term_cards: optional(tx, TERM_CARDS)?,
            term_dialogs: optional(tx, TERM_DIALOGS)?,
            contact_cards: optional(tx, CONTACT_CARDS)?,
        })
    }

    /// How many card bases of each kind, and dialog bases, the db holds (a scan of the card keys).
    pub fn counts(&self) -> Result<(BTreeMap<CardKind, usize>, usize), StoreError> {
        let mut per_kind = BTreeMap::new();
        for kind in CardKind::ALL {
            let lo = card_key(&CardId::new(kind, 0));
            let hi = card_key(&CardId::new(kind, u64::MAX));
            let n = self
                .cards
                .range(lo.as_slice()..=hi.as_slice())
                .map_err(db_err("count cards"))?
                .count();
            per_kind.insert(kind, n);
        }
        let dialogs = self.dialogs.len().map_err(db_err("count dialogs"))? as usize;
        Ok((per_kind, dialogs))
    }

    /// The dialogs whose chat id, or `license:messenger:chat` form, is `name` (a scan).
    pub fn dialogs_named(&self, name: &str) -> Result<Vec<(DialogKey, DialogState)>, StoreError> {
        let mut out = vec![];
        for row in self.dialogs.iter().map_err(db_err("scan dialogs"))? {
            let (k, v) = row.map_err(db_err("scan dialogs"))?;
            let key = dialog_from_key(k.value())?;
            if key.chat_id == name || key.full_ref() == name {
                let st = codec::dialog_from(v.value()).map_err(|reason| StoreError::Decode {
                    what: format!("dialog {key}"),
                    reason,
                })?;
                out.push((key, st));
            }
        }
        Ok(out)
    }
}

/// The record keys filed under `prefix` in an index (empty without the index).
fn under(index: &Option<Index>, prefix: u64) -> Result<Vec<Vec<u8>>, StoreError> {
    let Some(t) = index else {
        return Ok(vec![]);
    };
    let lo = prefix.to_be_bytes();
    let mut out = vec![];
    for row in t.range(lo.as_slice()..).map_err(db_err("read index"))? {
        let (k, _) = row.map_err(db_err("read index"))?;
        match k.value().split_first_chunk::<8>() {
            Some((p, rest)) if *p == lo => out.push(rest.to_vec()),
            _ => break,
        }
    }
    Ok(out)
}

fn card_ids(keys: Vec<Vec<u8>>) -> Vec<CardId> {
    keys.iter().filter_map(|k| card_from_key(k)).collect()
}

impl BaseLookup for BaseReader {
    type Error = StoreError;

    fn card(&self, id: &CardId) -> Result<Option<CardState>, StoreError> {
        let Some(v) = self
            .cards
            .get(card_key(id).as_slice())
            .map_err(db_err("read card"))?
        else {
            return Ok(None);
        };
        codec::card_from(v.value())
            .map(Some)
            .map_err(|reason| StoreError::Decode {
                what: format!("card {id}"),
                reason,
            })
    }

    fn dialog(&self, key: &DialogKey) -> Result<Option<DialogState>, StoreError> {
        let Some(v) = self
            .dialogs
            .get(dialog_key(key).as_str())
            .map_err(db_err("read dialog"))?
        else {
            return Ok(None);
        };
        codec::dialog_from(v.value())
            .map(Some)
            .map_err(|reason| StoreError::Decode {
                what: format!("dialog {key}"),
                reason,
            })
    }

    fn dialogs_with(&self, term: Term) -> Result<Vec<DialogKey>, StoreError> {
        under(&self.term_dialogs, term)?
            .iter()
            .map(|k| dialog_from_key(&String::from_utf8_lossy(k)))
            .collect()
    }

    fn cards_with(&self, term: Term) -> Result<Vec<CardId>, StoreError> {
        Ok(card_ids(under(&self.term_cards, term)?))
    }

    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, StoreError> {
        Ok(card_ids(under(&self.contact_cards, contact)?))
    }
}

/// A snapshot in memory as the store's lookups (the ports' fakes use it).
pub struct InMemory<'a>(pub &'a crate::core::engine::Snapshot);

impl BaseLookup for InMemory<'_> {
    type Error = StoreError;
    fn card(&self, id: &CardId) -> Result<Option<CardState>, StoreError> {
        Ok(self.0.cards.get(id).cloned())
    }
    fn dialog(&self, key: &DialogKey) -> Result<Option<DialogState>, StoreError> {
        Ok(self.0.dialogs.get(key).cloned())
    }
    fn dialogs_with(&self, term: Term) -> Result<Vec<DialogKey>, StoreError> {
        Ok(self.0.dialogs_with(term).unwrap_or_default())
    }
    fn cards_with(&self, term: Term) -> Result<Vec<CardId>, StoreError> {
        Ok(self.0.cards_with(term).unwrap_or_default())
    }
    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, StoreError> {
        Ok(self.0.cards_of_contact(contact).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialog_keys_round_trip_whatever_they_hold_and_read_schema_1() {
        for (l, m, c) in [
            (1, "grWhatsApp", "79990000001@c.us"),
            (u64::MAX, "a:b", ":c:"),
            (0, "", ""),
            (7, "tg", "12345"),
        ] {
            let k = DialogKey::new(l, m, c);
            assert_eq!(dialog_from_key(&dialog_key(&k)).unwrap(), k, "{k:?}");
        }
        let k = DialogKey::new(1, "telegram", "@a");
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(dialog_from_key(&json).unwrap(), k);
        assert!(dialog_key(&k).len() * 2 < json.len());
        for bad in ["", "x", "1:99:ab", "1:z:ab", "q:1:ab"] {
            assert!(dialog_from_key(bad).is_err(), "{bad}");
        }
    }
}
