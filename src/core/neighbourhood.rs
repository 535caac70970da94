//! The part of the bases a cycle needs: what it observed and everything a decision about it can
//! depend on. Pure: the bases are reached through [`BaseLookup`] (the store's indexes, or an
//! in-memory [`Snapshot`]).
//!
//! Why this is enough (each point is checked by `tests/neighbourhood_props.rs`, which compares the
//! plan made from the whole snapshot with the plan made from the neighbourhood):
//! - a dialog is decided only when it was observed (changed, opened), is held or parked, or one of
//!   its linked cards changed (was observed) or is held or parked: those dialogs are the *focus*;
//! - deciding a focus dialog needs every card linked to it (its `E_in` and `E_out`), and a card
//!   receives proposals only from decided dialogs: so the cards linked to the focus dialogs;
//! - a changed contact whose Messenger value matches no dialog is parked (rule 8): its dialogs are
//!   focus dialogs, so "unknown" is told from "not loaded"; a parked one is a seed, likewise;
//! - a first run decides every dialog, so every dialog is its focus: it needs the cards linked to
//!   any dialog, not the others (nothing parks or cascades from an unlinked card on a first run);
//!   [`crate::core::first_run`] plans it group by group.
//!
//! Links are found by *terms*: a dialog has its key, its chat id and its phone; a card has the
//! terms its Messenger values and phones would match. Two records can be linked only if they
//! share a term; the engine then resolves the exact links over what was loaded, so an index may
//! return too much (a hash collision), never too little.

use crate::core::engine::{Observations, Parked, Snapshot, card_change_time};
use crate::core::hash::Fnv1a;
use crate::core::links::phone_of_chat_id;
use crate::core::model::{
    CardId, CardKind, CardObs, CardState, DialogKey, DialogObs, DialogRef, DialogState, RecordId,
};
use std::collections::{BTreeMap, BTreeSet};

/// A term: the 64-bit FNV-1a hash of a tagged string (a collision only loads a record too many).
pub type Term = u64;

fn term(tag: u8, parts: &[&str]) -> Term {
    let mut h = Fnv1a::default();
    h.byte(tag);
    for p in parts {
        h.bytes(p.as_bytes());
        h.byte(0x1f);
    }
    h.finish()
}

fn key_term(k: &DialogKey) -> Term {
    term(
        b'k',
        &[&k.license_id.to_string(), &k.messenger_type, &k.chat_id],
    )
}

fn phone_term(p: &str) -> Term {
    term(b'p', &[p])
}

/// The phone a dialog is matched by: its own, else the one its chat id carries.
fn dialog_phone(key: &DialogKey, phone: Option<&str>) -> Option<String> {
    phone
        .map(str::to_string)
        .or_else(|| phone_of_chat_id(&key.chat_id))
        .filter(|p| !p.is_empty())
}

/// The terms a dialog is stored under (its key, chat id and phone).
pub fn dialog_terms(key: &DialogKey, phone: Option<&str>) -> Vec<Term> {
    let mut t = vec![key_term(key), term(b'c', &[&key.chat_id])];
    t.extend(dialog_phone(key, phone).map(|p| phone_term(&p)));
    t
}

/// The terms a dialog is found by in the store: its chat id and phone. (A full reference names
/// the dialog's key, which is looked up directly.)
pub fn dialog_index_terms(key: &DialogKey, phone: Option<&str>) -> Vec<Term> {
    let mut t = vec![term(b'c', &[&key.chat_id])];
    t.extend(dialog_phone(key, phone).map(|p| phone_term(&p)));
    t
}

/// The terms that find the dialogs one Messenger value may point at.
fn ref_terms(r: &DialogRef) -> Vec<Term> {
    match r {
        DialogRef::Full(k) => vec![key_term(k)],
        DialogRef::ChatId(c) => {
            let mut t = vec![term(b'c', &[c])];
            t.extend(
                phone_of_chat_id(c)
                    .filter(|p| !p.is_empty())
                    .map(|p| phone_term(&p)),
            );
            t
        }
        DialogRef::Phone(p) if !p.is_empty() => vec![phone_term(p)],
        DialogRef::Phone(_) => vec![],
    }
}

/// The terms a card is stored under: those of its Messenger values and of its phones.
pub fn card_terms(st: &CardState) -> Vec<Term> {
    own_terms(&st.dialog_refs, &st.phones, true)
}

fn own_terms(refs: &[DialogRef], phones: &[String], with_phones: bool) -> Vec<Term> {
    let mut t: Vec<Term> = refs.iter().flat_map(ref_terms).collect();
    if with_phones {
        t.extend(
            phones
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| phone_term(p)),
        );
    }
    t.sort_unstable();
    t.dedup();
    t
}

/// Reads bases by key and by term: the store's indexes, or an in-memory snapshot.
pub trait BaseLookup {
    /// The lookup's error.
    type Error;
    /// One card's base.
    fn card(&self, id: &CardId) -> Result<Option<CardState>, Self::Error>;
    /// One dialog's base.
    fn dialog(&self, key: &DialogKey) -> Result<Option<DialogState>, Self::Error>;
    /// The dialogs stored under `term` ([`dialog_index_terms`]; possibly more).
    fn dialogs_with(&self, term: Term) -> Result<Vec<DialogKey>, Self::Error>;
    /// The cards stored under `term` (possibly more).
    fn cards_with(&self, term: Term) -> Result<Vec<CardId>, Self::Error>;
    /// The non-contact cards whose base links `contact`.
    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, Self::Error>;
}

/// The records of a snapshot that no base lookup needs: parked pairs, held records, the flag.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// Parked pairs, by key.
    pub parked: BTreeMap<String, Parked>,
    /// Held records.
    pub held: BTreeSet<RecordId>,
    /// The first cycle ran.
    pub bootstrapped: bool,
    /// `[links] match_phone`.
    pub match_phone: bool,
}

/// True when an observed card says nothing its base does not: same values, same change time. The
/// engine decides the same without it, and its base needs no rewrite, so a full cycle keeps
/// only the cards that differ.
pub fn card_unchanged(base: &CardState, o: &CardObs, now: i64) -> bool {
    base.responsible == o.responsible
        && base.flag == o.flag
        && base.deleted == o.deleted
        && base.contacts == o.contacts
        && base.dialog_refs == o.dialog_refs
        && base.phones == o.phones
        && base.lead == o.lead
        && card_change_time(Some(base.into()), o, now) == base.changed_at
}

/// The same for a dialog.
pub fn dialog_unchanged(base: &DialogState, o: &DialogObs, now: i64) -> bool {
    base.responsible == o.responsible
        && base.last_time == o.last_time
        && base.session == o.session
        && base.closed == o.closed
        && base.phone == o.phone
        && crate::core::engine::dialog_change_time(Some(base), o, now) == base.changed_at
}

/// What the engine needs of the bases for `obs` (see the module docs). Not for a first run:
/// see [`crate::core::first_run`].
pub fn neighbourhood<L: BaseLookup>(
    store: &L,
    frame: Frame,
    obs: &Observations,
) -> Result<Snapshot, L::Error> {
    let (cards, dialogs, mut loaded) = reach(store, &frame, obs)?;
    let mut snap = empty(frame);
    for c in cards {
        let base = match loaded.remove(&c) {
            Some(known) => known,
            None => store.card(&c)?,
        };
        if let Some(st) = base {
            snap.cards.insert(c, st);
        }
    }
    for d in dialogs {
        if let Some(st) = store.dialog(&d)? {
            snap.dialogs.insert(d, st);
        }
    }
    Ok(snap)
}

/// For shadow mode's count of linked pairs (`crate::sync::shadow`): the dialogs the observed
/// cards' bases link to (through their contacts' bases for the other kinds) that `snap` (the
/// cycle's neighbourhood) does not hold, with their bases and the bases of every card that may
/// link to them after `obs`. The neighbourhood holds the dialogs a card links to *now*; a dialog
/// a change took a pair from (a lead unlinked from its contact, a contact whose phone changed)
/// is not decided, so it is not there, but its count changed. Each dialog returned holds, with
/// `snap`, every card linked to it, like a focus dialog. Empty when no observed card lost a link.
pub fn unlinked_around<L: BaseLookup>(
    store: &L,
    match_phone: bool,
    obs: &Observations,
    snap: &Snapshot,
) -> Result<Snapshot, L::Error> {
    let mut n = Walk::new(store, obs, match_phone);
    let mut lost = BTreeSet::new();
    for id in obs.cards.keys() {
        lost.extend(n.dialogs_of_base(id)?);
    }
    lost.retain(|d| !snap.dialogs.contains_key(d) && !obs.dialogs.contains_key(d));
    let mut linked = BTreeSet::new();
    for d in &lost {
        linked.extend(n.cards_of_dialog(d)?);
    }
    let mut out = Snapshot::default();
    for c in linked.into_iter().filter(|c| !snap.cards.contains_key(c)) {
        let base = match n.cards.remove(&c) {
            Some(known) => known,
            None => store.card(&c)?,
        };
        if let Some(st) = base {
            out.cards.insert(c, st);
        }
    }
    for d in lost {
        if let Some(st) = store.dialog(&d)? {
            out.dialogs.insert(d, st);
        }
    }
    Ok(out)
}

/// A snapshot of no base, with the frame's parked pairs, held records and flag.
fn empty(frame: Frame) -> Snapshot {
    Snapshot {
        parked: frame.parked,
        held: frame.held,
        bootstrapped: frame.bootstrapped,
        ..Snapshot::default()
    }
}

/// A card a first run read, as it is staged (and stored, unless it takes part in a decision):
/// its observation dated as the engine dates it ([`card_change_time`], against its base).
pub fn staged_state(base: Option<&CardState>, o: CardObs, now: i64) -> CardState {
    let changed_at = card_change_time(base.map(Into::into), &o, now);
    o.dated(changed_at)
}

/// The observation of a staged card: the engine dates it by its staged change time.
pub fn staged_obs(st: CardState) -> CardObs {
    CardObs {
        responsible: st.responsible,
        flag: st.flag,
        deleted: st.deleted,
        contacts: st.contacts,
        dialog_refs: st.dialog_refs,
        phones: st.phones,
        lead: st.lead,
        event_time: Some(st.changed_at),
    }
}

/// The cards a first run read, over the bases: a read card hides its base.
pub(crate) struct Layered<'a, R, B> {
    /// The cards the run read (staged).
    pub(crate) read: &'a R,
    /// The bases.
    pub(crate) bases: &'a B,
}

impl<E, R, B> BaseLookup for Layered<'_, R, B>
where
    R: BaseLookup<Error = E>,
    B: BaseLookup<Error = E>,
{
    type Error = E;

    fn card(&self, id: &CardId) -> Result<Option<CardState>, E> {
        match self.read.card(id)? {
            Some(st) => Ok(Some(st)),
            None => self.bases.card(id),
        }
    }

    fn dialog(&self, key: &DialogKey) -> Result<Option<DialogState>, E> {
        self.bases.dialog(key)
    }

    fn dialogs_with(&self, term: Term) -> Result<Vec<DialogKey>, E> {
        self.bases.dialogs_with(term)
    }

    fn cards_with(&self, term: Term) -> Result<Vec<CardId>, E> {
        let mut v = self.read.cards_with(term)?;
        v.extend(self.bases.cards_with(term)?);
        Ok(v)
    }

    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, E> {
        let mut v = self.read.cards_of_contact(contact)?;
        v.extend(self.bases.cards_of_contact(contact)?);
        Ok(v)
    }
}

/// The cards and dialogs a walk reached, and the card bases it loaded on the way (for their
/// links; `None`: no base).
type Reached = (
    BTreeSet<CardId>,
    BTreeSet<DialogKey>,
    BTreeMap<CardId, Option<CardState>>,
);

/// The walk from the seeds to their neighbourhood: the cards and dialogs whose bases the engine
/// needs.
fn reach<L: BaseLookup>(store: &L, frame: &Frame, obs: &Observations) -> Result<Reached, L::Error> {
    let mut n = Walk::new(store, obs, frame.match_phone);
    let (seed_cards, mut focus) = seeds(frame, obs);
    for c in &seed_cards {
        focus.extend(n.dialogs_of_card(c)?);
    }
    let mut linked: BTreeSet<CardId> = seed_cards;
    for d in &focus {
        linked.extend(n.cards_of_dialog(d)?);
    }
    Ok((linked, focus, n.cards))
}

/// The records a cycle starts from: observed, held and parked cards; observed, held and parked
/// dialogs.
fn seeds(frame: &Frame, obs: &Observations) -> (BTreeSet<CardId>, BTreeSet<DialogKey>) {
    let (mut cards, mut dialogs) = frame_seeds(frame);
    cards.extend(obs.cards.keys().copied());
    dialogs.extend(obs.dialogs.keys().cloned());
    (cards, dialogs)
}

/// The seeds a cycle takes from its frame: held records, and the records of parked pairs (their
/// subject, target and triggering card).
pub(crate) fn frame_seeds(frame: &Frame) -> (BTreeSet<CardId>, BTreeSet<DialogKey>) {
    let (mut cards, mut dialogs) = (BTreeSet::new(), BTreeSet::new());
    let parked = frame.parked.values().flat_map(Parked::records);
    for r in frame.held.iter().cloned().chain(parked) {
        match r {
            RecordId::Card(c) => cards.insert(c),
            RecordId::Dialog(d) => dialogs.insert(d),
        };
    }
    (cards, dialogs)
}

/// Term indexes over what this cycle observed (the store's indexes hold the bases): sorted
/// `(term, record)` lists, a few bytes an entry where a map of lists took about 80 (a first
/// run observes every chat: 100 000 chats, 300 000 terms).
struct ObsIndex<'o> {
    dialogs: Vec<(Term, &'o DialogKey)>,
    cards: Vec<(Term, CardId)>,
    of_contact: Vec<(u64, CardId)>,
}

impl<'o> ObsIndex<'o> {
    fn new(obs: &'o Observations, match_phone: bool) -> ObsIndex<'o> {
        let mut ix = ObsIndex {
            dialogs: vec![],
            cards: vec![],
            of_contact: vec![],
        };
        for (k, o) in &obs.dialogs {
            ix.dialogs.extend(
                dialog_terms(k, o.phone.as_deref())
                    .into_iter()
                    .map(|t| (t, k)),
            );
        }
        for (id, o) in &obs.cards {
            let with_phones = match_phone && id.kind == CardKind::Contact;
            let terms = own_terms(&o.dialog_refs, &o.phones, with_phones);
            ix.cards.extend(terms.into_iter().map(|t| (t, *id)));
            ix.of_contact.extend(o.contacts.iter().map(|c| (*c, *id)));
        }
        ix.dialogs.sort_unstable();
        ix.cards.sort_unstable();
        ix.of_contact.sort_unstable();
        ix
    }
}

/// The records stored under `key` in an index sorted by key (the cycle's observations here, the
/// first run's staged cards in `crate::store::staged`).
pub fn under<K: Ord + Copy, V>(ix: &[(K, V)], key: K) -> impl Iterator<Item = &V> {
    let from = ix.partition_point(|(k, _)| *k < key);
    ix[from..]
        .iter()
        .take_while(move |(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// What links a card: its Messenger values, its phones, its contacts.
type CardLinks = (Vec<DialogRef>, Vec<String>, Vec<u64>);

/// The walk from the seeds to their neighbourhood, loading bases once each.
pub(crate) struct Walk<'a, L> {
    store: &'a L,
    obs: &'a Observations,
    obs_ix: ObsIndex<'a>,
    match_phone: bool,
    /// Card bases loaded for their links (`None`: no base).
    cards: BTreeMap<CardId, Option<CardState>>,
}

impl<'a, L: BaseLookup> Walk<'a, L> {
    /// A walk over `store` and what the cycle observed.
    pub(crate) fn new(store: &'a L, obs: &'a Observations, match_phone: bool) -> Walk<'a, L> {
        Walk {
            store,
            obs,
            obs_ix: ObsIndex::new(obs, match_phone),
            match_phone,
            cards: BTreeMap::new(),
        }
    }

    fn load_card(&mut self, id: &CardId) -> Result<Option<&CardState>, L::Error> {
        if !self.cards.contains_key(id) {
            let st = self.store.card(id)?;
            self.cards.insert(*id, st);
        }
        Ok(self.cards[id].as_ref())
    }

    /// A card's current links: its observation, else its base.
    fn card_now(&mut self, id: &CardId) -> Result<CardLinks, L::Error> {
        if let Some(o) = self.obs.cards.get(id) {
            return Ok((o.dialog_refs.clone(), o.phones.clone(), o.contacts.clone()));
        }
        Ok(self
            .load_card(id)?
            .map(|b| (b.dialog_refs.clone(), b.phones.clone(), b.contacts.clone()))
            .unwrap_or_default())
    }

    /// The dialogs a card may be linked to now (through its contacts for the other kinds).
    pub(crate) fn dialogs_of_card(&mut self, id: &CardId) -> Result<BTreeSet<DialogKey>, L::Error> {
        let (refs, phones, contacts) = self.card_now(id)?;
        let with_phones = self.match_phone && id.kind == CardKind::Contact;
        let mut out = self.dialogs_of_refs(&refs, &phones, with_phones)?;
        if id.kind != CardKind::Contact {
            for c in contacts {
                let contact = CardId::new(CardKind::Contact, c);
                let (refs, phones, _) = self.card_now(&contact)?;
                out.extend(self.dialogs_of_refs(&refs, &phones, self.match_phone)?);
            }
        }
        Ok(out)
    }

    /// The dialogs a card's base links to (through its contacts' bases for the other kinds).
    fn dialogs_of_base(&mut self, id: &CardId) -> Result<BTreeSet<DialogKey>, L::Error> {
        let Some((refs, phones, contacts)) = self
            .load_card(id)?
            .map(|b| (b.dialog_refs.clone(), b.phones.clone(), b.contacts.clone()))
        else {
            return Ok(BTreeSet::new());
        };
        let with_phones = self.match_phone && id.kind == CardKind::Contact;
        let mut out = self.dialogs_of_refs(&refs, &phones, with_phones)?;
        if id.kind != CardKind::Contact {
            for c in contacts {
                let contact = CardId::new(CardKind::Contact, c);
                if let Some((refs, phones)) = self
                    .load_card(&contact)?
                    .map(|b| (b.dialog_refs.clone(), b.phones.clone()))
                {
                    out.extend(self.dialogs_of_refs(&refs, &phones, self.match_phone)?);
                }
            }
        }
        Ok(out)
    }

    /// The dialogs Messenger values (and phones) may point at: a full reference by its key, the
    /// others by their terms.
    fn dialogs_of_refs(
        &self,
        refs: &[DialogRef],
        phones: &[String],
        with_phones: bool,
    ) -> Result<BTreeSet<DialogKey>, L::Error> {
        let mut out = BTreeSet::new();
        for r in refs {
            if let DialogRef::Full(k) = r
                && (self.obs.dialogs.contains_key(k) || self.store.dialog(k)?.is_some())
            {
                out.insert(k.clone());
            }
        }
        let others: Vec<DialogRef> = refs
            .iter()
            .filter(|r| !matches!(r, DialogRef::Full(_)))
            .cloned()
            .collect();
        for t in own_terms(&others, phones, with_phones) {
            out.extend(self.store.dialogs_with(t)?);
            out.extend(under(&self.obs_ix.dialogs, t).map(|k| (*k).clone()));
        }
        Ok(out)
    }

    /// The cards that may be linked to a dialog now: contacts (and cards with their own
    /// Messenger values) sharing a term with it, and the cards linking those contacts.
    pub(crate) fn cards_of_dialog(
        &mut self,
        key: &DialogKey,
    ) -> Result<BTreeSet<CardId>, L::Error> {
        let phone = match self.obs.dialogs.get(key) {
            Some(o) => o.phone.clone(),
            None => self.store.dialog(key)?.and_then(|d| d.phone),
        };
        let mut out = BTreeSet::new();
        for t in dialog_terms(key, phone.as_deref()) {
            out.extend(self.store.cards_with(t)?);
            out.extend(under(&self.obs_ix.cards, t).copied());
        }
        let contacts: Vec<u64> = out
            .iter()
            .filter(|c| c.kind == CardKind::Contact)
            .map(|c| c.id)
            .collect();
        for c in contacts {
            out.extend(self.store.cards_of_contact(c)?);
            out.extend(under(&self.obs_ix.of_contact, c).copied());
        }
        Ok(out)
    }
}

/// An in-memory snapshot answers lookups by scanning (the tests' reference and the fakes').
impl BaseLookup for Snapshot {
    type Error = std::convert::Infallible;

    fn card(&self, id: &CardId) -> Result<Option<CardState>, Self::Error> {
        Ok(self.cards.get(id).cloned())
    }

    fn dialog(&self, key: &DialogKey) -> Result<Option<DialogState>, Self::Error> {
        Ok(self.dialogs.get(key).cloned())
    }

    fn dialogs_with(&self, t: Term) -> Result<Vec<DialogKey>, Self::Error> {
        Ok(self
            .dialogs
            .iter()
            .filter(|(k, st)| dialog_index_terms(k, st.phone.as_deref()).contains(&t))
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn cards_with(&self, t: Term) -> Result<Vec<CardId>, Self::Error> {
        Ok(self
            .cards
            .iter()
            .filter(|(_, st)| card_terms(st).contains(&t))
            .map(|(id, _)| *id)
            .collect())
    }

    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, Self::Error> {
        Ok(self
            .cards
            .iter()
            .filter(|(id, st)| id.kind != CardKind::Contact && st.contacts.contains(&contact))
            .map(|(id, _)| *id)
            .collect())
    }
}
