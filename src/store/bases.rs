//! The bases of cards and dialogs, and the three indexes that let a cycle load only what it
//! needs ([`crate::core::neighbourhood`]): term -> cards, term -> dialogs, contact -> the other
//! cards that link it. A base is written only when its bytes change, together with its index
//! entries (the old ones removed), in the caller's transaction.

use super::codec;
use super::{StoreError, db_err};
use crate::core::model::{CardId, CardKind, CardState, DialogKey, DialogState};
use crate::core::neighbourhood::{BaseLookup, Term, card_terms, dialog_terms};
use redb::{
    MultimapTableDefinition, ReadOnlyMultimapTable, ReadOnlyTable, ReadTransaction, ReadableTable,
    ReadableTableMetadata as _, TableDefinition, WriteTransaction,
};
use std::collections::BTreeMap;

/// Card bases by `kind code + id` (9 bytes).
pub const CARDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cards");
/// Dialog bases by their JSON key.
pub const DIALOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("dialogs");
/// Term -> card keys.
pub const TERM_CARDS: MultimapTableDefinition<u64, &[u8]> =
    MultimapTableDefinition::new("term_cards");
/// Term -> dialog keys.
pub const TERM_DIALOGS: MultimapTableDefinition<u64, &str> =
    MultimapTableDefinition::new("term_dialogs");
/// Contact id -> keys of the other cards that link it.
pub const CONTACT_CARDS: MultimapTableDefinition<u64, &[u8]> =
    MultimapTableDefinition::new("contact_cards");

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

/// A dialog's key.
pub fn dialog_key(d: &DialogKey) -> String {
    serde_json::to_string(d).unwrap_or_default()
}

/// A dialog key read back.
pub fn dialog_from_key(k: &str) -> Result<DialogKey, StoreError> {
    serde_json::from_str(k).map_err(|e| StoreError::Decode {
        what: format!("dialog key {k}"),
        reason: e.to_string(),
    })
}

/// Creates the base tables and indexes (a new db, or a migration).
pub fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(CARDS).map_err(db_err("open cards"))?;
    tx.open_table(DIALOGS).map_err(db_err("open dialogs"))?;
    tx.open_multimap_table(TERM_CARDS)
        .map_err(db_err("open term_cards"))?;
    tx.open_multimap_table(TERM_DIALOGS)
        .map_err(db_err("open term_dialogs"))?;
    tx.open_multimap_table(CONTACT_CARDS)
        .map_err(db_err("open contact_cards"))?;
    Ok(())
}

/// The index entries of a card base: its terms, and the contacts it links (other kinds).
fn card_index(id: &CardId, st: &CardState) -> (Vec<Term>, Vec<u64>) {
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
    if new_terms != old_terms {
        let mut t = tx
            .open_multimap_table(TERM_CARDS)
            .map_err(db_err("open term_cards"))?;
        for term in &old_terms {
            t.remove(term, key.as_slice())
                .map_err(db_err("index card"))?;
        }
        for term in &new_terms {
            t.insert(term, key.as_slice())
                .map_err(db_err("index card"))?;
        }
    }
    if new_contacts != old_contacts {
        let mut t = tx
            .open_multimap_table(CONTACT_CARDS)
            .map_err(db_err("open contact_cards"))?;
        for c in &old_contacts {
            t.remove(c, key.as_slice()).map_err(db_err("index card"))?;
        }
        for c in &new_contacts {
            t.insert(c, key.as_slice()).map_err(db_err("index card"))?;
        }
    }
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
    if old_phone.as_ref() == Some(&st.phone) {
        return Ok(true);
    }
    let mut t = tx
        .open_multimap_table(TERM_DIALOGS)
        .map_err(db_err("open term_dialogs"))?;
    if let Some(p) = old_phone {
        for term in dialog_terms(k, p.as_deref()) {
            t.remove(term, key.as_str())
                .map_err(db_err("index dialog"))?;
        }
    }
    for term in dialog_terms(k, st.phone.as_deref()) {
        t.insert(term, key.as_str())
            .map_err(db_err("index dialog"))?;
    }
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
    term_cards: Option<ReadOnlyMultimapTable<u64, &'static [u8]>>,
    term_dialogs: Option<ReadOnlyMultimapTable<u64, &'static str>>,
    contact_cards: Option<ReadOnlyMultimapTable<u64, &'static [u8]>>,
}

/// A multimap table, `None` when the db has none yet.
fn optional<K: redb::Key + 'static, V: redb::Key + 'static>(
    tx: &ReadTransaction,
    def: MultimapTableDefinition<K, V>,
) -> Result<Option<ReadOnlyMultimapTable<K, V>>, StoreError> {
    match tx.open_multimap_table(def) {
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

fn card_keys(rows: redb::MultimapValue<'static, &'static [u8]>) -> Result<Vec<CardId>, StoreError> {
    let mut out = vec![];
    for v in rows {
        let v = v.map_err(db_err("read index"))?;
        out.extend(card_from_key(v.value()));
    }
    Ok(out)
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
        let mut out = vec![];
        let Some(t) = &self.term_dialogs else {
            return Ok(out);
        };
        for v in t.get(term).map_err(db_err("read index"))? {
            out.push(dialog_from_key(v.map_err(db_err("read index"))?.value())?);
        }
        Ok(out)
    }

    fn cards_with(&self, term: Term) -> Result<Vec<CardId>, StoreError> {
        match &self.term_cards {
            Some(t) => card_keys(t.get(term).map_err(db_err("read index"))?),
            None => Ok(vec![]),
        }
    }

    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, StoreError> {
        match &self.contact_cards {
            Some(t) => card_keys(t.get(contact).map_err(db_err("read index"))?),
            None => Ok(vec![]),
        }
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
