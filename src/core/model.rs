//! Domain types shared by the decision engine, the API clients and the store.
//!
//! Everything here is plain data: no I/O, no clocks. Times are unix seconds as the APIs give them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A Kommo user id (`responsible_user_id`); `0` means "nobody". Its own type: a Kommo user id and
/// a ChatApp employee id are both numbers, and mixing them hands a customer to the wrong manager.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct KommoUserId(pub u64);

/// A ChatApp employee id (`responsible.id` of a chat). See [`KommoUserId`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EmployeeId(pub u64);

impl KommoUserId {
    /// Nobody (`responsible_user_id` 0).
    pub const NOBODY: KommoUserId = KommoUserId(0);

    /// True for nobody.
    pub fn is_nobody(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for KommoUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for EmployeeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A responsible, typed by the side that holds it: a card holds a Kommo user, a dialog a
/// ChatApp employee. Nobody is the absence of a value (`Option<Value>`). Intents, audit entries
/// and parked writes keep it typed; only their stored rows carry the bare number
/// ([`Value::raw`], [`Value::of`]), the record beside it naming the side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A card's responsible.
    Card(KommoUserId),
    /// A dialog's responsible.
    Dialog(EmployeeId),
}

impl Value {
    /// The id's number, as the APIs and the stored rows carry it (its side is not in it).
    pub fn raw(self) -> u64 {
        match self {
            Value::Card(u) => u.0,
            Value::Dialog(e) => e.0,
        }
    }

    /// The value `raw` as `record` holds it: a Kommo user for a card, an employee for a dialog.
    pub fn of(record: &RecordId, raw: u64) -> Value {
        match record {
            RecordId::Card(_) => Value::Card(KommoUserId(raw)),
            RecordId::Dialog(_) => Value::Dialog(EmployeeId(raw)),
        }
    }
}

/// The four kinds of Kommo card the daemon can sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardKind {
    /// A lead (deal).
    Lead,
    /// A contact: the only kind that links to dialogs directly.
    Contact,
    /// A company.
    Company,
    /// A customer (periodic purchases).
    Customer,
}

impl CardKind {
    /// Every kind, in a fixed order.
    pub const ALL: [CardKind; 4] = [
        CardKind::Lead,
        CardKind::Contact,
        CardKind::Company,
        CardKind::Customer,
    ];

    /// The config and event name: `lead`, `contact`, `company`, `customer`.
    pub fn singular(self) -> &'static str {
        match self {
            CardKind::Lead => "lead",
            CardKind::Contact => "contact",
            CardKind::Company => "company",
            CardKind::Customer => "customer",
        }
    }

    /// The API path segment and collection key: `leads`, `contacts`, ...
    pub fn plural(self) -> &'static str {
        match self {
            CardKind::Lead => "leads",
            CardKind::Contact => "contacts",
            CardKind::Company => "companies",
            CardKind::Customer => "customers",
        }
    }

    /// Parses a singular or plural name.
    pub fn parse(s: &str) -> Option<CardKind> {
        CardKind::ALL
            .into_iter()
            .find(|k| k.singular() == s || k.plural() == s)
    }

    /// A one-byte code used in store keys.
    pub fn code(self) -> u8 {
        match self {
            CardKind::Lead => 1,
            CardKind::Contact => 2,
            CardKind::Company => 3,
            CardKind::Customer => 4,
        }
    }

    /// The inverse of [`CardKind::code`].
    pub fn from_code(c: u8) -> Option<CardKind> {
        CardKind::ALL.into_iter().find(|k| k.code() == c)
    }
}

impl fmt::Display for CardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.singular())
    }
}

/// The kinds a config names (SPEC section 1): the Kommo entities, with leads split by stage.
/// `incoming_lead` is a lead in a pipeline's "Incoming leads" stage (a status of `type` 1);
/// `lead` is any other lead. A card's kind comes from [`crate::core::engine::sync_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    /// A lead in an "Incoming leads" (unsorted) stage.
    IncomingLead,
    /// Any other lead (deal).
    Lead,
    /// A contact.
    Contact,
    /// A company.
    Company,
    /// A customer.
    Customer,
}

impl SyncKind {
    /// Every kind, in a fixed order.
    pub const ALL: [SyncKind; 5] = [
        SyncKind::IncomingLead,
        SyncKind::Lead,
        SyncKind::Contact,
        SyncKind::Company,
        SyncKind::Customer,
    ];

    /// The config name: `incoming_lead`, `lead`, `contact`, `company`, `customer`.
    pub fn name(self) -> &'static str {
        match self {
            SyncKind::IncomingLead => "incoming_lead",
            SyncKind::Lead => "lead",
            SyncKind::Contact => "contact",
            SyncKind::Company => "company",
            SyncKind::Customer => "customer",
        }
    }

    /// The Kommo entity cards of this kind are (incoming leads are leads).
    pub fn entity(self) -> CardKind {
        match self {
            SyncKind::IncomingLead | SyncKind::Lead => CardKind::Lead,
            SyncKind::Contact => CardKind::Contact,
            SyncKind::Company => CardKind::Company,
            SyncKind::Customer => CardKind::Customer,
        }
    }
}

impl From<CardKind> for SyncKind {
    /// The kind of a card of this entity outside any incoming stage.
    fn from(k: CardKind) -> SyncKind {
        match k {
            CardKind::Lead => SyncKind::Lead,
            CardKind::Contact => SyncKind::Contact,
            CardKind::Company => SyncKind::Company,
            CardKind::Customer => SyncKind::Customer,
        }
    }
}

impl fmt::Display for SyncKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kommo's status ids that close a lead in every pipeline: 142 won, 143 lost.
pub const STATUS_WON: u64 = 142;
/// See [`STATUS_WON`].
pub const STATUS_LOST: u64 = 143;

/// What a lead's status means to the sync (see [`classify_status`], the one place that
/// classifies statuses).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// An ordinary open stage (also a base stored before stages were read: the first cycle
    /// after the upgrade is full and reads them).
    #[default]
    Open,
    /// The pipeline's "Incoming leads" (unsorted) stage: status `type` 1.
    Incoming,
    /// Won (142) or lost (143).
    Closed,
}

/// The statuses of every pipeline of the account (`GET /api/v4/leads/pipelines`), as the daemon
/// needs them to classify a lead's stage. Kept in the state db; read again on full cycles and
/// whenever a lead shows a status not in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipelines {
    /// Pipeline id -> name.
    pub names: BTreeMap<u64, String>,
    /// Status id -> its pipeline, name and `type` (1 = "Incoming leads"). 142 and 143 are not
    /// listed: they close a lead in every pipeline.
    pub statuses: BTreeMap<u64, StatusInfo>,
}

/// One status of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Its pipeline.
    pub pipeline: u64,
    /// Its name.
    pub name: String,
    /// Kommo's `type`: 1 for the "Incoming leads" (unsorted) stage, 0 otherwise.
    pub kind: u8,
}

/// What a lead's status means (the one place that interprets Kommo statuses; sources in
/// `leads_pipelines.md` of the amoCRM docs): 142 (won) and 143 (lost) close a lead in every
/// pipeline; a status of `type` 1 is the pipeline's "Incoming leads" stage; any other known
/// status is open. `None` for a status the table does not know (read the pipelines again).
pub fn classify_status(status: u64, pipelines: &Pipelines) -> Option<StageKind> {
    if status == STATUS_WON || status == STATUS_LOST {
        return Some(StageKind::Closed);
    }
    pipelines.statuses.get(&status).map(|s| {
        if s.kind == 1 {
            StageKind::Incoming
        } else {
            StageKind::Open
        }
    })
}

/// A lead's stage at `(pipeline, status)` by `pipelines`, or (a status the table does not know,
/// after it was read again) an open stage: the one fallback for unknown statuses.
pub fn stage_or_open(pipeline: u64, status: u64, pipelines: &Pipelines) -> LeadStage {
    LeadStage {
        pipeline,
        status,
        kind: classify_status(status, pipelines).unwrap_or(StageKind::Open),
    }
}

/// Where a lead stands: its pipeline, status and what the status means. Zero for other kinds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LeadStage {
    /// `pipeline_id` (0 when unknown or not a lead).
    #[serde(default)]
    pub pipeline: u64,
    /// `status_id` (0 when unknown or not a lead).
    #[serde(default)]
    pub status: u64,
    /// What the status means.
    #[serde(default)]
    pub kind: StageKind,
}

impl LeadStage {
    /// True for the default (not a lead, or not known).
    pub fn is_unset(&self) -> bool {
        *self == LeadStage::default()
    }
}

/// A card: its kind and Kommo id. Displays as `lead 123` (every output spells a card so);
/// `kind:id` (`lead:123`) is the form `status --card` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CardId {
    /// The kind.
    pub kind: CardKind,
    /// The Kommo entity id.
    pub id: u64,
}

impl CardId {
    /// Builds a card id.
    pub fn new(kind: CardKind, id: u64) -> Self {
        CardId { kind, id }
    }

    /// Parses `kind:id` (`lead:123`) or the displayed `kind id` (`lead 123`).
    pub fn parse(s: &str) -> Option<CardId> {
        let (k, id) = s.trim().split_once([':', ' '])?;
        Some(CardId::new(CardKind::parse(k)?, id.trim().parse().ok()?))
    }

    /// The machine form `kind:id` (`lead:123`): stable keys, never shown as a card's name.
    pub fn code_text(&self) -> String {
        format!("{}:{}", self.kind, self.id)
    }
}

impl fmt::Display for CardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

/// A ChatApp dialog: `(licenseId, messengerType, chatId)`. Displays as
/// `dialog 7999@c.us (grWhatsApp, license 1)` (every output spells a dialog so);
/// [`DialogKey::full_ref`] is the Messenger field's `1:grWhatsApp:7999@c.us`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DialogKey {
    /// The ChatApp license ("line").
    pub license_id: u64,
    /// The messenger type, e.g. `grWhatsApp`, `telegram`.
    pub messenger_type: String,
    /// The chat id within the messenger.
    pub chat_id: String,
}

impl DialogKey {
    /// Builds a dialog key.
    pub fn new(license_id: u64, messenger_type: &str, chat_id: &str) -> Self {
        DialogKey {
            license_id,
            messenger_type: messenger_type.to_string(),
            chat_id: chat_id.to_string(),
        }
    }

    /// The full reference `<licenseId>:<messengerType>:<chatId>` (a Messenger field value; stable
    /// keys).
    pub fn full_ref(&self) -> String {
        format!(
            "{}:{}:{}",
            self.license_id, self.messenger_type, self.chat_id
        )
    }
}

impl fmt::Display for DialogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dialog {} ({}, license {})",
            self.chat_id, self.messenger_type, self.license_id
        )
    }
}

/// Either side of a pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordId {
    /// A Kommo card.
    Card(CardId),
    /// A ChatApp dialog.
    Dialog(DialogKey),
}

impl RecordId {
    /// The machine form (`card lead:2001`, `dialog 1:grWhatsApp:7999@c.us`): the parked pairs'
    /// keys in the state db, which must not change with the displayed spelling.
    pub fn key_text(&self) -> String {
        match self {
            RecordId::Card(c) => format!("card {}", c.code_text()),
            RecordId::Dialog(d) => format!("dialog {}", d.full_ref()),
        }
    }
}

impl fmt::Display for RecordId {
    /// The card's or the dialog's own spelling: `lead 2001`, `dialog 7999@c.us (grWhatsApp,
    /// license 1)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordId::Card(c) => c.fmt(f),
            RecordId::Dialog(d) => d.fmt(f),
        }
    }
}

/// How a contact's Messenger field value refers to a dialog (SPEC section 4).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "ref", rename_all = "snake_case")]
pub enum DialogRef {
    /// `<licenseId>:<messengerType>:<chatId>`: exactly one dialog.
    Full(DialogKey),
    /// A bare chat id, matched on any configured license.
    ChatId(String),
    /// A phone (digits only), matched on any configured license.
    Phone(String),
}

impl fmt::Display for DialogRef {
    /// As a Messenger field value reads: `1:grWhatsApp:7999@c.us`, `7999@c.us`, `phone 7999`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialogRef::Full(k) => f.write_str(&k.full_ref()),
            DialogRef::ChatId(c) => f.write_str(c),
            DialogRef::Phone(p) => write!(f, "phone {p}"),
        }
    }
}

/// What the daemon knows of one card: its base in the snapshot, or its current value in a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardState {
    /// `responsible_user_id`; 0 when none.
    pub responsible: KommoUserId,
    /// Change time of `responsible` (unix seconds): the latest `entity_responsible_changed` event, or
    /// the time the daemon first observed the value.
    pub changed_at: i64,
    /// The sync flag is checked (always true for a kind without a flag field).
    pub flag: bool,
    /// The card is deleted (never written, never a source).
    pub deleted: bool,
    /// Leads, companies, customers: ids of linked contacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<u64>,
    /// Contacts: dialogs referenced by the Messenger field (other kinds link through their
    /// contacts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dialog_refs: Vec<DialogRef>,
    /// Contacts: phone numbers, digits only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<String>,
    /// Leads: pipeline and stage.
    #[serde(default, skip_serializing_if = "LeadStage::is_unset")]
    pub lead: LeadStage,
}

/// A card as read in this cycle, before the engine derives its change time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardObs {
    /// Current `responsible_user_id` (0 = none).
    pub responsible: KommoUserId,
    /// Sync flag checked (true when the kind has no flag field).
    pub flag: bool,
    /// Deleted (or gone: a by-id read returned nothing).
    pub deleted: bool,
    /// Linked contact ids (non-contacts).
    pub contacts: Vec<u64>,
    /// Messenger-field references (contacts; incoming leads: the unsorted record's chat).
    pub dialog_refs: Vec<DialogRef>,
    /// Phones, digits only (contacts).
    pub phones: Vec<String>,
    /// Leads: pipeline and stage.
    pub lead: LeadStage,
    /// `created_at` of the latest known `entity_responsible_changed` event whose new value equals
    /// `responsible`, if any.
    pub event_time: Option<i64>,
}

impl CardObs {
    /// The observation as a state (change time 0: the engine derives it).
    pub fn into_state(self) -> CardState {
        self.dated(0)
    }

    /// The observation as a state whose value changed at `changed_at`.
    pub fn dated(self, changed_at: i64) -> CardState {
        CardState {
            responsible: self.responsible,
            changed_at,
            flag: self.flag,
            deleted: self.deleted,
            contacts: self.contacts,
            dialog_refs: self.dialog_refs,
            phones: self.phones,
            lead: self.lead,
        }
    }
}

/// What the daemon knows of one dialog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogState {
    /// `responsible.id`; `None` when unassigned.
    pub responsible: Option<EmployeeId>,
    /// Change time of `responsible` (unix seconds).
    pub changed_at: i64,
    /// ChatApp's `lastTime` when last read.
    pub last_time: i64,
    /// The current conversation started at (reopen marker); 0 when unknown.
    pub session: i64,
    /// The dialog is closed (never written).
    pub closed: bool,
    /// The dialog's phone, digits only, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// A dialog as read in this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogObs {
    /// Current responsible.
    pub responsible: Option<EmployeeId>,
    /// ChatApp's `lastTime`.
    pub last_time: i64,
    /// Conversation start time (reopen marker), 0 if unknown.
    pub session: i64,
    /// Closed.
    pub closed: bool,
    /// Phone, digits only.
    pub phone: Option<String>,
}

/// A Kommo user as the user map needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KommoUser {
    /// User id.
    pub id: KommoUserId,
    /// Name (may be empty; shown beside the id).
    pub name: String,
    /// E-mail (may be empty).
    pub email: String,
    /// `rights.is_active`.
    pub active: bool,
}

/// A ChatApp employee as the user map needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Employee {
    /// Employee id.
    pub id: EmployeeId,
    /// Full name (may be empty; shown beside the id).
    pub name: String,
    /// E-mail (may be empty).
    pub email: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant name of `T`, in declaration order, as the serde derive knows them (its
    /// "unknown variant" error lists them all); independent of the `ALL` lists.
    fn variants<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let Err(e) = serde_json::from_str::<T>("\"-\"") else {
            panic!("`-` is no variant");
        };
        let text = e.to_string();
        let (_, expected) = text
            .split_once("expected")
            .expect("serde lists the variants");
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// The serde names of `all`.
    fn names<T: Serialize>(all: &[T]) -> Vec<String> {
        all.iter()
            .map(|k| match serde_json::to_value(k) {
                Ok(serde_json::Value::String(name)) => name,
                other => panic!("a unit variant serializes as its name, not {other:?}"),
            })
            .collect()
    }

    #[test]
    fn card_kind_all_lists_every_variant_once_in_order() {
        // A new variant does not compile here: give it the next position and add it to `ALL`.
        let position = |k: CardKind| match k {
            CardKind::Lead => 0,
            CardKind::Contact => 1,
            CardKind::Company => 2,
            CardKind::Customer => 3,
        };
        for (i, k) in CardKind::ALL.into_iter().enumerate() {
            assert_eq!(position(k), i, "{k:?}");
        }
        assert_eq!(names(&CardKind::ALL), variants::<CardKind>());
    }

    #[test]
    fn sync_kind_all_lists_every_variant_once_in_order() {
        // A new variant does not compile here: give it the next position and add it to `ALL`.
        let position = |k: SyncKind| match k {
            SyncKind::IncomingLead => 0,
            SyncKind::Lead => 1,
            SyncKind::Contact => 2,
            SyncKind::Company => 3,
            SyncKind::Customer => 4,
        };
        for (i, k) in SyncKind::ALL.into_iter().enumerate() {
            assert_eq!(position(k), i, "{k:?}");
        }
        assert_eq!(names(&SyncKind::ALL), variants::<SyncKind>());
    }
}
