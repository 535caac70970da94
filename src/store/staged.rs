//! The cards a first run read, kept in memory in the bases' own encoding ([`super::codec`]) until
//! the commit writes them: about 40 bytes a card where an observation in a map takes several
//! hundred. A first run's bootstrap decides every dialog, from the cards that may link to one:
//! the plan is made group by group, each group's cards decoded from here
//! ([`crate::core::first_run`]); a card the plan settles otherwise than staged is taken, and the
//! commit writes the rest as they were read.
//!
//! Lookups by key and by link term ([`BaseLookup`]) work once the cards are [sealed](StagedCards::seal).

use super::{StoreError, bases, codec};
use crate::core::model::{CardId, CardState, DialogKey, DialogState};
use crate::core::neighbourhood::{self, BaseLookup, Term};

/// One staged card: its id and where its bytes are.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: CardId,
    start: u32,
    len: u32,
}

/// The cards a first run read, each with its change time (see the module docs).
#[derive(Debug, Default)]
pub struct StagedCards {
    /// Every card's bytes, one after another (a card staged again appends new bytes).
    bytes: Vec<u8>,
    /// By id once sealed (the last staging of an id wins); in staging order before.
    entries: Vec<Entry>,
    sealed: bool,
    /// Entries the plan settled otherwise than staged: the commit writes its settled value instead.
    taken: Vec<bool>,
    /// Link term -> entry, sorted (built by [`StagedCards::seal`]).
    by_term: Vec<(Term, u32)>,
    /// Linked contact id -> entry of a card that links it, sorted.
    by_contact: Vec<(u64, u32)>,
}

impl StagedCards {
    /// Stages a card (again: the new value replaces the old one at the next seal).
    pub fn push(&mut self, id: CardId, st: &CardState) {
        let b = codec::card_bytes(st);
        // u32 offsets keep the entries small: past 4 GiB of card bytes (~100 million cards) an
        // entry points nowhere, and decoding it fails with an error (never a wrong card)
        let (start, len) = match (u32::try_from(self.bytes.len()), u32::try_from(b.len())) {
            (Ok(start), Ok(len)) => (start, len),
            _ => (u32::MAX, u32::MAX),
        };
        self.bytes.extend_from_slice(&b);
        self.entries.push(Entry { id, start, len });
        self.sealed = false;
    }

    /// Sorts the cards by id (the last staging of each wins) and builds the term indexes.
    pub fn seal(&mut self) -> Result<(), StoreError> {
        if self.sealed {
            return Ok(());
        }
        // stable: for equal ids the staging order is kept, and the last one is kept below
        self.entries.sort_by_key(|e| e.id);
        let mut kept: Vec<Entry> = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            match kept.last_mut() {
                Some(last) if last.id == e.id => *last = e,
                _ => kept.push(e),
            }
        }
        kept.shrink_to_fit();
        self.entries = kept;
        self.taken = vec![false; self.entries.len()];
        self.by_term.clear();
        self.by_contact.clear();
        for i in 0..self.entries.len() {
            let (id, st) = self.decode(i)?;
            let (terms, contacts) = bases::card_index(&id, &st);
            self.by_term
                .extend(terms.into_iter().map(|t| (t, i as u32)));
            self.by_contact
                .extend(contacts.into_iter().map(|c| (c, i as u32)));
        }
        self.by_term.sort_unstable();
        self.by_contact.sort_unstable();
        self.by_term.shrink_to_fit();
        self.by_contact.shrink_to_fit();
        self.sealed = true;
        Ok(())
    }

    /// How many cards are staged (after [`StagedCards::seal`]: how many distinct ones).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn decode(&self, i: usize) -> Result<(CardId, CardState), StoreError> {
        let e = self.entries[i];
        let (start, len) = (e.start as usize, e.len as usize);
        let what = || format!("staged {}", e.id);
        let bytes = start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(|| StoreError::Decode {
                what: what(),
                reason: "beyond the 4 GiB a first run can stage".into(),
            })?;
        let st = codec::card_from(bytes).map_err(|reason| StoreError::Decode {
            what: what(),
            reason,
        })?;
        Ok((e.id, st))
    }

    fn position(&self, id: &CardId) -> Option<usize> {
        if self.sealed {
            self.entries.binary_search_by_key(id, |e| e.id).ok()
        } else {
            self.entries.iter().rposition(|e| e.id == *id)
        }
    }

    /// Whether a card is staged.
    pub fn contains(&self, id: &CardId) -> bool {
        self.position(id).is_some()
    }

    /// Every staged card, decoded, in id order once sealed.
    pub fn iter(&self) -> impl Iterator<Item = Result<(CardId, CardState), StoreError>> + '_ {
        (0..self.entries.len()).map(|i| self.decode(i))
    }

    /// Marks a card the plan settled otherwise than staged: [`StagedCards::untaken`] skips it.
    pub fn take(&mut self, id: &CardId) {
        if let (true, Some(i)) = (self.sealed, self.position(id)) {
            self.taken[i] = true;
        }
    }

    /// The cards not taken, decoded: the commit writes them as they were read.
    pub fn untaken(&self) -> impl Iterator<Item = Result<(CardId, CardState), StoreError>> + '_ {
        (0..self.entries.len())
            .filter(|i| !self.taken.get(*i).copied().unwrap_or(false))
            .map(|i| self.decode(i))
    }

    /// The staged cards under `prefix` in a sorted `(prefix, entry)` index.
    fn under(&self, ix: &[(u64, u32)], prefix: u64) -> Vec<CardId> {
        neighbourhood::under(ix, prefix)
            .map(|i| self.entries[*i as usize].id)
            .collect()
    }
}

/// Staged cards as bases: cards only (a first run stages no dialog).
impl BaseLookup for StagedCards {
    type Error = StoreError;

    fn card(&self, id: &CardId) -> Result<Option<CardState>, StoreError> {
        self.position(id)
            .map(|i| self.decode(i).map(|(_, st)| st))
            .transpose()
    }

    fn dialog(&self, _key: &DialogKey) -> Result<Option<DialogState>, StoreError> {
        Ok(None)
    }

    fn dialogs_with(&self, _term: Term) -> Result<Vec<DialogKey>, StoreError> {
        Ok(vec![])
    }

    fn cards_with(&self, term: Term) -> Result<Vec<CardId>, StoreError> {
        Ok(self.under(&self.by_term, term))
    }

    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, StoreError> {
        Ok(self.under(&self.by_contact, contact))
    }
}

/// The store's staging area behind the state port ([`crate::ports::Staging`]).
impl crate::ports::Staging for StagedCards {
    fn push(&mut self, id: CardId, st: &CardState) {
        StagedCards::push(self, id, st);
    }
    fn seal(&mut self) -> Result<(), StoreError> {
        StagedCards::seal(self)
    }
    fn contains(&self, id: &CardId) -> bool {
        StagedCards::contains(self, id)
    }
    fn len(&self) -> usize {
        StagedCards::len(self)
    }
    fn each(&self) -> impl Iterator<Item = Result<(CardId, CardState), StoreError>> + '_ {
        StagedCards::iter(self)
    }
    fn take(&mut self, id: &CardId) {
        StagedCards::take(self, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{CardKind, DialogRef, KommoUserId};
    use crate::core::neighbourhood::card_terms;

    fn contact(who: u64, phone: &str) -> CardState {
        CardState {
            responsible: KommoUserId(who),
            changed_at: 7,
            flag: true,
            deleted: false,
            contacts: vec![],
            dialog_refs: vec![DialogRef::Phone(phone.into())],
            phones: vec![phone.into()],
            lead: Default::default(),
        }
    }

    #[test]
    fn the_last_staging_wins_and_lookups_follow_it() {
        let mut s = StagedCards::default();
        let c = CardId::new(CardKind::Contact, 1);
        let lead = CardId::new(CardKind::Lead, 9);
        let mut l = contact(3, "");
        l.dialog_refs.clear();
        l.phones.clear();
        l.contacts = vec![1];
        s.push(c, &contact(1, "79990000001"));
        s.push(lead, &l);
        s.push(c, &contact(2, "79990000002"));
        s.seal().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.card(&c).unwrap(), Some(contact(2, "79990000002")));
        let new_term = card_terms(&contact(2, "79990000002"))[0];
        let old_term = card_terms(&contact(1, "79990000001"))[0];
        assert_eq!(s.cards_with(new_term).unwrap(), vec![c]);
        assert!(s.cards_with(old_term).unwrap().is_empty());
        assert_eq!(s.cards_of_contact(1).unwrap(), vec![lead]);
        s.take(&lead);
        let rest: Vec<CardId> = s.untaken().map(|r| r.unwrap().0).collect();
        assert_eq!(rest, vec![c]);
    }
}
