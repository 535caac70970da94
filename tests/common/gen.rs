//! Random worlds for property tests of the pure engine, and a small model of both systems.
//!
//! - [`WorldSpec`]: a generated starting world (dialogs, cards, links, user map, policy).
//! - [`Model`]: the "true" state of Kommo and ChatApp: what each card and dialog holds now, with the
//!   times the APIs would show (the latest `entity_responsible_changed` event of a card, a chat's
//!   `lastTime`). People act on it through [`Action`]s; the daemon's writes land on it through
//!   [`Model::apply_write`] (with rule 10's check-before-write).
//! - [`Sim`]: the model plus the daemon's snapshot; [`Sim::cycle`] observes, plans, writes,
//!   settles, the way `cycle.rs` does against the real APIs.
//!
//! Time is one counter (unix seconds) shared by both systems: every human action advances it by
//! its `dt`, a cycle reads at `clock + 1`, and its writes are dated after the read, one second
//! apart. Pure: no I/O, deterministic for a given spec and action list.
#![allow(dead_code)]

use chatapp_kommo_sync::core::engine::{
    Bootstrap, ConflictPolicy, Observations, Plan, Policy, Snapshot, Write, plan, settle,
};
use chatapp_kommo_sync::core::model::{
    CardId, CardKind, CardObs, DialogKey, DialogObs, DialogRef, EmployeeId, KommoUserId, RecordId,
    Value,
};
use chatapp_kommo_sync::core::usermap::UserMap;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};

// ------------------------------------------------------------------------------------------------
// Users

/// Kommo users the generator draws from: 1..=6 (mapped when the spec says so), 42 (never
/// mapped), 0 (nobody).
pub const KOMMO_USERS: [u64; 8] = [0, 1, 2, 3, 4, 5, 6, 42];
/// Employee of Kommo user `n` when the pair is mapped.
pub fn employee_of(n: u64) -> u64 {
    100 + n
}
/// An employee that is never mapped.
pub const UNMAPPED_EMPLOYEE: u64 = 199;

/// The user map: Kommo user n <-> employee 100 + n for each n in `mapped`.
pub fn user_map(mapped: &[u64]) -> UserMap {
    let pairs: Vec<(KommoUserId, EmployeeId)> = mapped
        .iter()
        .map(|&n| (KommoUserId(n), EmployeeId(employee_of(n))))
        .collect();
    UserMap::build(&pairs, false, &[], &[])
}

/// The user map as the model's raw ids see it (the model keeps plain numbers).
pub trait RawUsers {
    /// The employee of Kommo user `user`.
    fn chat_of(&self, user: u64) -> Option<u64>;
    /// The Kommo user of employee `employee`.
    fn crm_of(&self, employee: u64) -> Option<u64>;
}

impl RawUsers for UserMap {
    fn chat_of(&self, user: u64) -> Option<u64> {
        self.to_chat(KommoUserId(user)).map(|e| e.0)
    }
    fn crm_of(&self, employee: u64) -> Option<u64> {
        self.to_crm(EmployeeId(employee)).map(|u| u.0)
    }
}

// ------------------------------------------------------------------------------------------------
// Dialog keys

/// Dialog number `i` (0-based): even ones are WhatsApp chats whose chat id carries a phone
/// (`7999000000{i+1}@c.us`), odd ones Telegram chats on license 2 (`@user{i+1}`, no phone).
pub fn dialog_key(i: usize) -> DialogKey {
    let n = i + 1;
    if i.is_multiple_of(2) {
        DialogKey::new(1, "grWhatsApp", &format!("7999000000{n}@c.us"))
    } else {
        DialogKey::new(2, "telegram", &format!("@user{n}"))
    }
}

/// The phone digits a contact holds to match dialog `i` by phone (only WhatsApp dialogs have one;
/// for a Telegram dialog the phone matches nothing).
pub fn phone_for(i: usize) -> String {
    format!("7999000000{}", i + 1)
}

// ------------------------------------------------------------------------------------------------
// The spec of a starting world

#[derive(Debug, Clone)]
pub struct DialogSpec {
    /// Exists at the start (else it appears later, when a person opens it).
    pub born: bool,
    pub responsible: Option<u64>,
    pub closed: bool,
    pub last_time: i64,
}

#[derive(Debug, Clone)]
pub struct CardSpec {
    pub id: CardId,
    pub responsible: u64,
    /// Time of the latest responsible-change event, if Kommo knows one.
    pub event_time: Option<i64>,
    pub flag: bool,
    pub deleted: bool,
    /// Non-contacts: linked contact ids.
    pub contacts: Vec<u64>,
    /// Contacts: indices of the dialogs the Messenger field references (`DialogRef::Full`).
    pub dialogs: Vec<usize>,
    /// Contacts: indices of dialogs whose phone the contact holds.
    pub phones: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct WorldSpec {
    pub dialogs: Vec<DialogSpec>,
    pub cards: Vec<CardSpec>,
    /// Kommo users n (1..=6) mapped to employee 100 + n.
    pub mapped: Vec<u64>,
    pub policy: Policy,
    /// Incremental cycles read only what changed (plus held records); else every cycle is full.
    pub partial: bool,
}

/// The time the world starts at; every generated past time is below it.
pub const START: i64 = 1_000;

fn kommo_user() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..=6, 1 => Just(0u64), 1 => Just(42u64)]
}

fn mapped_kommo_user() -> impl Strategy<Value = u64> {
    1u64..=6
}

fn employee() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        8 => (1u64..=6).prop_map(|n| Some(employee_of(n))),
        1 => Just(None),
        1 => Just(Some(UNMAPPED_EMPLOYEE)),
    ]
}

fn mapped_employee() -> impl Strategy<Value = u64> {
    (1u64..=6).prop_map(employee_of)
}

fn kinds() -> impl Strategy<Value = BTreeSet<CardKind>> {
    proptest::sample::subsequence(CardKind::ALL.to_vec(), 0..=4)
        .prop_map(|v| v.into_iter().collect())
}

fn conflict() -> impl Strategy<Value = ConflictPolicy> {
    prop_oneof![
        Just(ConflictPolicy::Newest),
        Just(ConflictPolicy::Crm),
        Just(ConflictPolicy::Chat)
    ]
}

fn bootstrap() -> impl Strategy<Value = Bootstrap> {
    prop_oneof![
        Just(Bootstrap::Adopt),
        Just(Bootstrap::Crm),
        Just(Bootstrap::Chat)
    ]
}

fn policy_with(
    crm_to_chat: BTreeSet<CardKind>,
    chat_to_crm: BTreeSet<CardKind>,
    conflict: ConflictPolicy,
    bootstrap: Bootstrap,
    match_phone: bool,
) -> Policy {
    Policy {
        crm_to_chat: crm_to_chat.into_iter().map(Into::into).collect(),
        chat_to_crm: chat_to_crm.into_iter().map(Into::into).collect(),
        leads: Default::default(),
        conflict,
        clock_skew_secs: 5,
        bootstrap,
        max_writes_per_cycle: 10_000,
        match_phone,
    }
}

/// Any policy: random directions (possibly empty, possibly overlapping), conflict, bootstrap.
pub fn any_policy() -> impl Strategy<Value = Policy> {
    (kinds(), kinds(), conflict(), bootstrap(), any::<bool>())
        .prop_map(|(a, b, c, bs, mp)| policy_with(a, b, c, bs, mp))
}

fn dialog_spec() -> impl Strategy<Value = DialogSpec> {
    (
        prop::bool::weighted(0.8),
        employee(),
        prop::bool::weighted(0.15),
        100i64..900,
    )
        .prop_map(|(born, responsible, closed, last_time)| DialogSpec {
            born,
            responsible,
            closed,
            last_time,
        })
}

/// A general world: 1-6 dialogs, 1-5 contacts (0-2 Messenger references each, sometimes a phone),
/// 0-5 leads/companies/customers linked to 0-2 contacts; responsibles from a small set of users
/// (some unmapped, sometimes 0 / none), unchecked flags, deleted cards, closed dialogs, dialogs
/// that appear later; any policy.
pub fn world_spec() -> impl Strategy<Value = WorldSpec> {
    (1usize..=6, 1usize..=5).prop_flat_map(|(nd, nc)| {
        let dialogs = prop::collection::vec(dialog_spec(), nd);
        let contact = (
            kommo_user(),
            prop::option::weighted(0.7, 100i64..900),
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.1),
            prop::collection::vec(0..nd, 0..=2),
            prop::collection::vec(0..nd, 0..=1),
        );
        let contacts = prop::collection::vec(contact, nc);
        let other = (
            prop_oneof![
                Just(CardKind::Lead),
                Just(CardKind::Company),
                Just(CardKind::Customer)
            ],
            kommo_user(),
            prop::option::weighted(0.7, 100i64..900),
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.1),
            prop::collection::vec(0..nc, 0..=2),
        );
        let others = prop::collection::vec(other, 0..=5);
        let mapped = proptest::sample::subsequence((1u64..=6).collect::<Vec<_>>(), 0..=6);
        (
            dialogs,
            contacts,
            others,
            mapped,
            any_policy(),
            prop::bool::weighted(0.5),
        )
            .prop_map(|(dialogs, contacts, others, mapped, policy, partial)| {
                let mut cards = Vec::new();
                for (i, (resp, ev, flag, deleted, refs, phones)) in contacts.into_iter().enumerate()
                {
                    cards.push(CardSpec {
                        id: CardId::new(CardKind::Contact, 10 + i as u64),
                        responsible: resp,
                        event_time: ev,
                        flag,
                        deleted,
                        contacts: vec![],
                        dialogs: dedup(refs),
                        phones: dedup(phones),
                    });
                }
                for (i, (kind, resp, ev, flag, deleted, cs)) in others.into_iter().enumerate() {
                    cards.push(CardSpec {
                        id: CardId::new(kind, 20 + i as u64),
                        responsible: resp,
                        event_time: ev,
                        flag,
                        deleted,
                        contacts: dedup(cs).into_iter().map(|c| 10 + c as u64).collect(),
                        dialogs: vec![],
                        phones: vec![],
                    });
                }
                WorldSpec {
                    dialogs,
                    cards,
                    mapped,
                    policy,
                    partial,
                }
            })
    })
}

/// A world where every pair the rules see can be aligned, so a cycle must leave every open dialog
/// agreeing with its linked cards: every Kommo user is mapped, nobody is 0/unassigned at the
/// start, every flag is checked, nothing is deleted, `crm_to_chat == chat_to_crm` (non-empty),
/// bootstrap is `crm` or `chat`, and each card is linked to at most one dialog (each contact
/// references one dialog; a lead, company or customer links only contacts of one dialog; no
/// phones).
pub fn aligned_world_spec() -> impl Strategy<Value = WorldSpec> {
    (1usize..=4, 1usize..=5).prop_flat_map(|(nd, nc)| {
        let dialog = (
            prop::bool::weighted(0.8),
            mapped_employee(),
            prop::bool::weighted(0.15),
            100i64..900,
        )
            .prop_map(|(born, e, closed, last_time)| DialogSpec {
                born,
                responsible: Some(e),
                closed,
                last_time,
            });
        let dialogs = prop::collection::vec(dialog, nd);
        let contact = (
            mapped_kommo_user(),
            prop::option::weighted(0.7, 100i64..900),
            prop::option::weighted(0.85, 0..nd),
        );
        let contacts = prop::collection::vec(contact, nc);
        let other = (
            prop_oneof![
                Just(CardKind::Lead),
                Just(CardKind::Company),
                Just(CardKind::Customer)
            ],
            mapped_kommo_user(),
            prop::option::weighted(0.7, 100i64..900),
            0..nd,
            any::<u8>(),
        );
        let others = prop::collection::vec(other, 0..=5);
        let kinds = proptest::sample::subsequence(CardKind::ALL.to_vec(), 1..=4)
            .prop_map(|v| v.into_iter().collect::<BTreeSet<_>>());
        let bs = prop_oneof![Just(Bootstrap::Crm), Just(Bootstrap::Chat)];
        (
            dialogs,
            contacts,
            others,
            kinds,
            conflict(),
            bs,
            prop::bool::weighted(0.5),
        )
            .prop_map(
                |(dialogs, contacts, others, kinds, conflict, bs, partial)| {
                    let mut cards = Vec::new();
                    for (i, (resp, ev, d)) in contacts.iter().enumerate() {
                        cards.push(CardSpec {
                            id: CardId::new(CardKind::Contact, 10 + i as u64),
                            responsible: *resp,
                            event_time: *ev,
                            flag: true,
                            deleted: false,
                            contacts: vec![],
                            dialogs: d.iter().copied().collect(),
                            phones: vec![],
                        });
                    }
                    for (i, (kind, resp, ev, group, mask)) in others.into_iter().enumerate() {
                        let linked: Vec<u64> = contacts
                            .iter()
                            .enumerate()
                            .filter(|(j, c)| c.2 == Some(group) && mask & (1 << (j % 8)) != 0)
                            .map(|(j, _)| 10 + j as u64)
                            .collect();
                        cards.push(CardSpec {
                            id: CardId::new(kind, 20 + i as u64),
                            responsible: resp,
                            event_time: ev,
                            flag: true,
                            deleted: false,
                            contacts: linked,
                            dialogs: vec![],
                            phones: vec![],
                        });
                    }
                    WorldSpec {
                        dialogs,
                        cards,
                        mapped: (1..=6).collect(),
                        policy: policy_with(kinds.clone(), kinds, conflict, bs, false),
                        partial,
                    }
                },
            )
    })
}

fn toggle<T: PartialEq>(v: &mut Vec<T>, x: T) {
    match v.iter().position(|y| *y == x) {
        Some(i) => {
            v.remove(i);
        }
        None => v.push(x),
    }
}

fn dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

// ------------------------------------------------------------------------------------------------
// Human actions

/// Something a person (or ChatApp's distribution) does. Records are picked by [`Index`], so an
/// action fits any world size.
#[derive(Debug, Clone)]
pub enum Action {
    /// A person sets a card's responsible (Kommo records an event).
    SetCard { card: Index, user: u64 },
    /// A person (or distribution) sets a dialog's responsible (`lastTime` moves).
    SetDialog {
        dialog: Index,
        employee: Option<u64>,
    },
    /// The conversation is closed.
    Close { dialog: Index },
    /// A new conversation starts (reopens a closed dialog; makes a dialog that did not exist yet
    /// appear); distribution may assign someone.
    Open {
        dialog: Index,
        employee: Option<u64>,
    },
    /// A message: `lastTime` moves, nothing else.
    Message { dialog: Index },
    /// A person toggles a card's sync flag.
    ToggleFlag { card: Index },
    /// A person deletes a card.
    Delete { card: Index },
    /// A person edits links: a contact's Messenger field gains or loses a reference to a dialog;
    /// a lead/company/customer gains or loses a linked contact.
    ToggleLink { card: Index, other: Index },
    /// The operator adds the pair Kommo user `user` <-> employee `100 + user` to the config (the
    /// daemon's user map changes; nothing in either system does).
    MapUser { user: u64 },
}

/// An action and the seconds that pass before it.
#[derive(Debug, Clone)]
pub struct Step {
    pub dt: i64,
    pub action: Action,
}

fn step_with(action: BoxedStrategy<Action>) -> impl Strategy<Value = Step> {
    (1i64..=10, action).prop_map(|(dt, action)| Step { dt, action })
}

/// Any action, on the general world (config changes included).
pub fn any_step() -> BoxedStrategy<Step> {
    step_of(true)
}

/// Any action but a config change.
pub fn people_step() -> BoxedStrategy<Step> {
    step_of(false)
}

fn step_of(config_changes: bool) -> BoxedStrategy<Step> {
    let a = prop_oneof![
        6 => (any::<Index>(), kommo_user()).prop_map(|(card, user)| Action::SetCard { card, user }),
        5 => (any::<Index>(), employee())
            .prop_map(|(dialog, employee)| Action::SetDialog { dialog, employee }),
        1 => any::<Index>().prop_map(|dialog| Action::Close { dialog }),
        2 => (any::<Index>(), employee()).prop_map(|(dialog, employee)| Action::Open { dialog, employee }),
        1 => any::<Index>().prop_map(|dialog| Action::Message { dialog }),
        1 => any::<Index>().prop_map(|card| Action::ToggleFlag { card }),
        1 => any::<Index>().prop_map(|card| Action::Delete { card }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(card, other)| Action::ToggleLink { card, other }),
    ]
    .boxed();
    if !config_changes {
        return step_with(a).boxed();
    }
    let map = prop::sample::select(vec![1u64, 2, 3, 4, 5, 6, 42])
        .prop_map(|user| Action::MapUser { user });
    step_with(prop_oneof![19 => a, 1 => map].boxed()).boxed()
}

/// Actions that keep a world aligned-able: people only pick mapped users and employees, never
/// uncheck a flag or delete a card (a new conversation may still start unassigned).
pub fn aligned_step() -> BoxedStrategy<Step> {
    let a = prop_oneof![
        6 => (any::<Index>(), mapped_kommo_user()).prop_map(|(card, user)| Action::SetCard { card, user }),
        5 => (any::<Index>(), mapped_employee())
            .prop_map(|(dialog, e)| Action::SetDialog { dialog, employee: Some(e) }),
        1 => any::<Index>().prop_map(|dialog| Action::Close { dialog }),
        2 => (any::<Index>(), prop::option::weighted(0.7, mapped_employee()))
            .prop_map(|(dialog, employee)| Action::Open { dialog, employee }),
        1 => any::<Index>().prop_map(|dialog| Action::Message { dialog }),
    ]
    .boxed();
    step_with(a).boxed()
}

/// `rounds` rounds of 0..=4 human actions each.
pub fn rounds(
    step: impl Strategy<Value = Step>,
    rounds: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<Vec<Step>>> {
    prop::collection::vec(prop::collection::vec(step, 0..=4), rounds)
}

/// Faults of one cycle: which writes fail (by position, cycling), and what people do between the
/// read and the writes (rule 10 drops a write whose target changed meanwhile).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub fail: Vec<bool>,
    pub races: Vec<Step>,
}

pub fn faults(step: impl Strategy<Value = Step>) -> impl Strategy<Value = Faults> {
    (
        prop::collection::vec(prop::bool::weighted(0.25), 0..=6),
        prop::collection::vec(step, 0..=2),
    )
        .prop_map(|(fail, races)| Faults { fail, races })
}

// ------------------------------------------------------------------------------------------------
// The model of both systems

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardTruth {
    pub responsible: u64,
    pub event_time: Option<i64>,
    pub flag: bool,
    pub deleted: bool,
    pub contacts: Vec<u64>,
    pub dialog_refs: Vec<DialogRef>,
    pub phones: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogTruth {
    /// The chat exists (a dialog not born yet is invisible to the daemon).
    pub born: bool,
    pub responsible: Option<u64>,
    pub last_time: i64,
    pub session: i64,
    pub closed: bool,
}

/// The true state of Kommo and ChatApp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub cards: BTreeMap<CardId, CardTruth>,
    pub dialogs: BTreeMap<DialogKey, DialogTruth>,
    /// Now (unix seconds).
    pub clock: i64,
    /// Records changed since the last read (what an incremental cycle reads).
    pub touched: BTreeSet<RecordId>,
}

impl Model {
    pub fn new(spec: &WorldSpec) -> Model {
        let mut cards = BTreeMap::new();
        for c in &spec.cards {
            cards.insert(
                c.id,
                CardTruth {
                    responsible: c.responsible,
                    event_time: c.event_time,
                    flag: c.flag,
                    deleted: c.deleted,
                    contacts: c.contacts.clone(),
                    dialog_refs: c
                        .dialogs
                        .iter()
                        .map(|&i| DialogRef::Full(dialog_key(i)))
                        .collect(),
                    phones: c.phones.iter().map(|&i| phone_for(i)).collect(),
                },
            );
        }
        let mut dialogs = BTreeMap::new();
        for (i, d) in spec.dialogs.iter().enumerate() {
            dialogs.insert(
                dialog_key(i),
                DialogTruth {
                    born: d.born,
                    responsible: d.responsible,
                    last_time: d.last_time,
                    session: d.last_time - 50,
                    closed: d.closed,
                },
            );
        }
        Model {
            cards,
            dialogs,
            clock: START,
            touched: BTreeSet::new(),
        }
    }

    fn card_at(&self, i: &Index) -> CardId {
        let ids: Vec<CardId> = self.cards.keys().copied().collect();
        ids[i.index(ids.len())]
    }

    fn dialog_at(&self, i: &Index) -> DialogKey {
        let keys: Vec<DialogKey> = self.dialogs.keys().cloned().collect();
        keys[i.index(keys.len())].clone()
    }

    /// A person acts at `clock + dt`.
    pub fn act(&mut self, step: &Step) {
        self.clock += step.dt;
        match &step.action {
            Action::SetCard { card, user } => self.set_card(self.card_at(card), *user),
            Action::ToggleFlag { card } => self.toggle_flag(self.card_at(card)),
            Action::Delete { card } => self.delete(self.card_at(card)),
            Action::SetDialog { dialog, employee } => {
                self.set_dialog(&self.dialog_at(dialog), *employee)
            }
            Action::Close { dialog } => self.close(&self.dialog_at(dialog)),
            Action::Open { dialog, employee } => self.open(&self.dialog_at(dialog), *employee),
            Action::Message { dialog } => self.message(&self.dialog_at(dialog)),
            Action::ToggleLink { card, other } => {
                let id = self.card_at(card);
                if id.kind == CardKind::Contact {
                    let key = self.dialog_at(other);
                    self.toggle_dialog_ref(id, key);
                } else {
                    let contacts: Vec<u64> = self
                        .cards
                        .keys()
                        .filter(|c| c.kind == CardKind::Contact)
                        .map(|c| c.id)
                        .collect();
                    self.toggle_contact(id, contacts[other.index(contacts.len())]);
                }
            }
            Action::MapUser { .. } => {} // the daemon's config: see Sim::act_all
        }
    }

    /// Advances the clock.
    pub fn tick(&mut self, dt: i64) {
        self.clock += dt;
    }

    /// A person sets a card's responsible now (Kommo records an event); no-op on a deleted card
    /// or the same value.
    pub fn set_card(&mut self, id: CardId, user: u64) {
        let t = self.clock;
        let c = self.cards.get_mut(&id).unwrap();
        if c.deleted || c.responsible == user {
            return;
        }
        c.responsible = user;
        c.event_time = Some(t);
        self.touched.insert(RecordId::Card(id));
    }

    pub fn toggle_flag(&mut self, id: CardId) {
        let c = self.cards.get_mut(&id).unwrap();
        if c.deleted {
            return;
        }
        c.flag = !c.flag;
        self.touched.insert(RecordId::Card(id));
    }

    pub fn delete(&mut self, id: CardId) {
        self.cards.get_mut(&id).unwrap().deleted = true;
        self.touched.insert(RecordId::Card(id));
    }

    /// A contact's Messenger field gains or loses a reference to `key`.
    pub fn toggle_dialog_ref(&mut self, id: CardId, key: DialogKey) {
        let c = self.cards.get_mut(&id).unwrap();
        if c.deleted {
            return;
        }
        toggle(&mut c.dialog_refs, DialogRef::Full(key));
        self.touched.insert(RecordId::Card(id));
    }

    /// A lead/company/customer gains or loses the linked contact `contact`.
    pub fn toggle_contact(&mut self, id: CardId, contact: u64) {
        let c = self.cards.get_mut(&id).unwrap();
        if c.deleted {
            return;
        }
        toggle(&mut c.contacts, contact);
        self.touched.insert(RecordId::Card(id));
    }

    /// A person (or distribution) sets a dialog's responsible now (`lastTime` moves).
    pub fn set_dialog(&mut self, key: &DialogKey, employee: Option<u64>) {
        let t = self.clock;
        let d = self.dialogs.get_mut(key).unwrap();
        if !d.born || d.responsible == employee {
            return;
        }
        d.responsible = employee;
        d.last_time = t;
        self.touched.insert(RecordId::Dialog(key.clone()));
    }

    pub fn close(&mut self, key: &DialogKey) {
        let t = self.clock;
        let d = self.dialogs.get_mut(key).unwrap();
        if !d.born || d.closed {
            return;
        }
        d.closed = true;
        d.last_time = t;
        self.touched.insert(RecordId::Dialog(key.clone()));
    }

    /// A new conversation starts now: reopens a closed dialog, makes a dialog that did not exist
    /// yet appear; distribution assigns `employee` if given.
    pub fn open(&mut self, key: &DialogKey, employee: Option<u64>) {
        let t = self.clock;
        let d = self.dialogs.get_mut(key).unwrap();
        d.born = true;
        d.closed = false;
        d.session = t;
        d.last_time = t;
        if employee.is_some() {
            d.responsible = employee;
        }
        self.touched.insert(RecordId::Dialog(key.clone()));
    }

    /// A message: `lastTime` moves, nothing else.
    pub fn message(&mut self, key: &DialogKey) {
        let t = self.clock;
        let d = self.dialogs.get_mut(key).unwrap();
        if !d.born {
            return;
        }
        d.last_time = t;
        self.touched.insert(RecordId::Dialog(key.clone()));
    }

    /// What a cycle reading at `now` sees: every card and every existing dialog on a full read,
    /// else only the `touched` records (and the `also` ones: records held by a failed write).
    pub fn observe(&self, now: i64, full: bool, also: &BTreeSet<RecordId>) -> Observations {
        let wanted = |r: RecordId| full || self.touched.contains(&r) || also.contains(&r);
        let mut obs = Observations {
            now,
            ..Observations::default()
        };
        for (id, c) in &self.cards {
            if wanted(RecordId::Card(*id)) {
                obs.cards.insert(
                    *id,
                    CardObs {
                        responsible: KommoUserId(c.responsible),
                        flag: c.flag,
                        deleted: c.deleted,
                        contacts: c.contacts.clone(),
                        dialog_refs: c.dialog_refs.clone(),
                        phones: c.phones.clone(),
                        lead: Default::default(),
                        event_time: c.event_time,
                    },
                );
            }
        }
        for (key, d) in &self.dialogs {
            if d.born && wanted(RecordId::Dialog(key.clone())) {
                obs.dialogs.insert(
                    key.clone(),
                    DialogObs {
                        responsible: d.responsible.map(EmployeeId),
                        last_time: d.last_time,
                        session: d.session,
                        closed: d.closed,
                        phone: None,
                    },
                );
            }
        }
        obs
    }

    /// The value a write's target holds now, as `Write::from` states it.
    pub fn current(&self, target: &RecordId) -> Option<Option<u64>> {
        match target {
            RecordId::Card(c) => self
                .cards
                .get(c)
                .map(|c| Some(c.responsible).filter(|u| *u != 0)),
            RecordId::Dialog(d) => self
                .dialogs
                .get(d)
                .filter(|d| d.born)
                .map(|d| d.responsible),
        }
    }

    /// Performs a write at time `t` after checking the target still holds `w.target.from_value()` (rule 10).
    /// Returns whether it was confirmed. A written card gets a Kommo event dated `t`; a written
    /// dialog's `lastTime` moves to `t` (the system message of the assignment).
    pub fn apply_write(&mut self, w: &Write, t: i64) -> bool {
        if self.current(&w.target.record()) != Some(w.target.from_value().map(Value::raw)) {
            return false;
        }
        match &w.target.record() {
            RecordId::Card(c) => {
                let c = self.cards.get_mut(c).unwrap();
                if c.deleted {
                    return false;
                }
                c.responsible = w.target.to_value().raw();
                c.event_time = Some(t);
            }
            RecordId::Dialog(d) => {
                let d = self.dialogs.get_mut(d).unwrap();
                d.responsible = Some(w.target.to_value().raw());
                d.last_time = t;
            }
        }
        self.touched.insert(w.target.record());
        true
    }

    /// Cards linked to the dialog `key` as the model's links say (contacts by Messenger reference,
    /// and by phone when `match_phone`; other kinds through their contacts).
    pub fn linked_cards(&self, key: &DialogKey, match_phone: bool) -> Vec<CardId> {
        let phone = chatapp_kommo_sync::core::links::phone_of_chat_id(&key.chat_id);
        let contacts: BTreeSet<u64> = self
            .cards
            .iter()
            .filter(|(id, c)| {
                id.kind == CardKind::Contact
                    && (c.dialog_refs.contains(&DialogRef::Full(key.clone()))
                        || (match_phone && phone.as_ref().is_some_and(|p| c.phones.contains(p))))
            })
            .map(|(id, _)| id.id)
            .collect();
        self.cards
            .iter()
            .filter(|(id, c)| {
                if id.kind == CardKind::Contact {
                    contacts.contains(&id.id)
                } else {
                    c.contacts.iter().any(|x| contacts.contains(x))
                }
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

// ------------------------------------------------------------------------------------------------
// The daemon against the model

/// What one cycle did.
#[derive(Debug, Clone)]
pub struct CycleLog {
    /// The model as the cycle read it (before its writes and any race).
    pub before: Model,
    /// The snapshot the cycle planned from.
    pub snap: Snapshot,
    /// Records held by a failed write of the cycle before (re-read by this one).
    pub held_before: BTreeSet<RecordId>,
    pub obs: Observations,
    pub plan: Plan,
    pub confirmed: Vec<bool>,
}

/// The model plus the daemon's snapshot and config.
#[derive(Debug, Clone)]
pub struct Sim {
    pub model: Model,
    pub snap: Snapshot,
    pub policy: Policy,
    pub users: UserMap,
    /// The Kommo users mapped in the config (`users` is built from it).
    pub mapped: Vec<u64>,
    pub partial: bool,
    /// Records held by a failed write: re-read next cycle (as `cycle.rs` does).
    pub recheck: BTreeSet<RecordId>,
}

impl Sim {
    /// A fresh daemon (empty state db: the first cycle bootstraps) on the spec's world.
    pub fn new(spec: &WorldSpec) -> Sim {
        Sim {
            model: Model::new(spec),
            snap: Snapshot::default(),
            policy: spec.policy.clone(),
            users: user_map(&spec.mapped),
            mapped: spec.mapped.clone(),
            partial: spec.partial,
            recheck: BTreeSet::new(),
        }
    }

    fn full_read(&self) -> bool {
        !self.partial || !self.snap.bootstrapped
    }

    /// The plan the next cycle would make, without writing anything.
    pub fn peek(&self) -> (Observations, Plan) {
        let obs = self
            .model
            .observe(self.model.clock + 1, self.full_read(), &self.recheck);
        let p = plan(&self.snap, &obs, &self.policy, &self.users);
        (obs, p)
    }

    /// People act (and the operator changes the config: [`Action::MapUser`]).
    pub fn act_all(&mut self, steps: &[Step]) {
        for s in steps {
            self.model.act(s);
            if let Action::MapUser { user } = s.action {
                self.map_user(user);
            }
        }
    }

    /// The operator adds the pair `user` <-> `100 + user` to the config.
    pub fn map_user(&mut self, user: u64) {
        if !self.mapped.contains(&user) {
            self.mapped.push(user);
            self.mapped.sort();
            self.users = user_map(&self.mapped);
        }
    }

    /// One cycle with every write confirmed.
    pub fn cycle(&mut self) -> CycleLog {
        self.cycle_with(&Faults::default())
    }

    /// One cycle: read at `clock + 1`, plan, let the racing people act, write (each write checked
    /// and dated after the read), settle. A braked plan writes nothing and settles nothing.
    pub fn cycle_with(&mut self, faults: &Faults) -> CycleLog {
        let now = self.model.clock + 1;
        let obs = self.model.observe(now, self.full_read(), &self.recheck);
        let before = self.model.clone();
        let snap = self.snap.clone();
        let held_before = self.recheck.clone();
        self.model.touched.clear();
        self.model.clock = now;
        let p = plan(&self.snap, &obs, &self.policy, &self.users);
        if p.brake.is_some() {
            self.model.touched = before.touched.clone();
            return CycleLog {
                before,
                snap,
                held_before,
                obs,
                plan: p,
                confirmed: vec![],
            };
        }
        for s in &faults.races {
            self.model.act(s);
        }
        let mut confirmed = Vec::with_capacity(p.writes.len());
        for (i, w) in p.writes.iter().enumerate() {
            self.model.clock += 1;
            let fails = !faults.fail.is_empty() && faults.fail[i % faults.fail.len()];
            let ok = !fails && self.model.apply_write(w, self.model.clock);
            confirmed.push(ok);
        }
        let s = settle(&self.snap, &p, &confirmed, now);
        self.snap.apply(&s);
        self.recheck = s.held.clone();
        CycleLog {
            before,
            snap,
            held_before,
            obs,
            plan: p,
            confirmed,
        }
    }
}
