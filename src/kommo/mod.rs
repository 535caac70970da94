//! The Kommo API v4 client: cards (leads, contacts, companies, customers) with their links and
//! custom fields, `entity_responsible_changed` events, users, and batch `PATCH` of
//! `responsible_user_id`. Facts and sources: `../shared/api/kommo.md`.

pub mod auth;
use crate::config::{FieldRef, KommoConfig, LinksConfig};
use crate::core::links::{parse_messenger_value, phone_digits};
use crate::core::model::{
    CardId, CardKind, CardObs, DialogRef, KommoUser, KommoUserId, LeadStage, STATUS_LOST,
    STATUS_WON, SyncKind,
};
use crate::http::{ApiClient, ApiError, Limits, ListPage, Response};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

const API: &str = "kommo";
/// Cards per list page (Kommo's maximum).
pub const PAGE_LIMIT: usize = 250;
/// Events per page (Kommo's events endpoint returns at most 100 whatever `limit` asks).
pub const EVENTS_LIMIT: usize = 100;
/// Ids per by-id read (`filter[id][]`).
pub const IDS_PER_READ: usize = 100;
/// Custom field definitions per page (Kommo returns at most 50 whatever `limit` asks).
pub const FIELDS_LIMIT: usize = 50;

/// A card as Kommo lists it (only the fields the daemon uses; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct KommoCard {
    /// Entity id.
    pub id: u64,
    /// Responsible user (0 = none; `null` is read as none).
    #[serde(deserialize_with = "null_as_zero")]
    pub responsible_user_id: u64,
    /// Last update (unix seconds).
    #[serde(default)]
    pub updated_at: i64,
    /// Deleted flag (leads, customers).
    #[serde(default)]
    pub is_deleted: bool,
    /// Leads: the status (stage).
    #[serde(default)]
    pub status_id: Option<u64>,
    /// Leads: the pipeline.
    #[serde(default)]
    pub pipeline_id: Option<u64>,
    /// Custom fields; `null` when none is set.
    #[serde(default)]
    pub custom_fields_values: Option<Vec<CustomField>>,
    /// Linked entities (`with=contacts`).
    #[serde(default, rename = "_embedded")]
    pub embedded: Option<CardEmbedded>,
}

/// `custom_fields_values[]`.
#[derive(Debug, Clone, Deserialize)]
pub struct CustomField {
    /// Field id.
    pub field_id: u64,
    /// Field code (`PHONE`, ...), if any.
    #[serde(default)]
    pub field_code: Option<String>,
    /// Values.
    #[serde(default)]
    pub values: Option<Vec<FieldValue>>,
}

/// One custom-field value.
#[derive(Debug, Clone, Deserialize)]
pub struct FieldValue {
    /// The value: text, number or boolean.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// `_embedded` of a card.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CardEmbedded {
    /// Linked contacts (`with=contacts`).
    #[serde(default)]
    pub contacts: Option<Vec<Linked>>,
}

/// A linked entity reference.
#[derive(Debug, Clone, Deserialize)]
pub struct Linked {
    /// Its id.
    pub id: u64,
}

/// A user id where Kommo may send `null`: nobody (0).
fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

/// A page of cards (`T`: [`KommoCard`], or raw JSON when decoding record by record).
#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct CardsPage<T> {
    #[serde(rename = "_embedded")]
    embedded: CardsEmbedded<T>,
    #[serde(default, rename = "_links")]
    links: Option<PageLinks>,
}

impl<T: serde::de::DeserializeOwned> ListPage<T> for CardsPage<T> {
    type Meta = bool;
    fn split(self) -> (Vec<T>, bool) {
        let has_next = self.links.is_some_and(|l| l.next.is_some());
        (self.embedded.items, has_next)
    }
}

/// Names a raw card: `kind:id` needs the kind, so only its id.
pub(crate) fn card_subject(v: &serde_json::Value) -> Option<String> {
    v.get("id").map(|id| format!("id {id}"))
}

/// Names a raw card of `kind` as `kind:id` (a [`crate::http::BadRecord`]'s subject).
fn card_subject_of(kind: CardKind) -> crate::http::SubjectOf {
    match kind {
        CardKind::Lead => |v| v.get("id").map(|id| format!("lead:{id}")),
        CardKind::Contact => |v| v.get("id").map(|id| format!("contact:{id}")),
        CardKind::Company => |v| v.get("id").map(|id| format!("company:{id}")),
        CardKind::Customer => |v| v.get("id").map(|id| format!("customer:{id}")),
    }
}

/// Names a raw event by its entity (`lead:123`), else its id.
pub(crate) fn event_subject(v: &serde_json::Value) -> Option<String> {
    match (
        v.get("entity_type").and_then(|t| t.as_str()),
        v.get("entity_id").and_then(|i| i.as_u64()),
    ) {
        (Some(t), Some(id)) => Some(format!("{t}:{id}")),
        _ => v.get("id").map(|id| format!("event {id}")),
    }
}

/// `_links` of a page: only whether `next` is there matters.
#[derive(Deserialize, Default)]
struct PageLinks {
    #[serde(default)]
    next: Option<serde_json::Value>,
}

/// Whether a page ends a listing. Kommo shows `next` even when the next page is empty, and has
/// changed page sizes under its clients (amocrm-api-php #209, #528), so: an empty page ends it; a
/// page shorter than one the server already served ends it; a page shorter than asked ends it
/// unless it has a `next` link (the server's page size is smaller than asked).
pub fn page_ends_listing(n: usize, asked: usize, has_next: bool, largest_seen: usize) -> bool {
    n == 0 || n < largest_seen || (n < asked && !has_next)
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct CardsEmbedded<T> {
    #[serde(
        alias = "leads",
        alias = "contacts",
        alias = "companies",
        alias = "customers"
    )]
    items: Vec<T>,
}

/// An `entity_responsible_changed` event.
#[derive(Debug, Clone, Deserialize)]
pub struct KommoEvent {
    /// Event id (a string).
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The entity.
    pub entity_id: u64,
    /// `lead`, `contact`, `company`, `customer`.
    pub entity_type: String,
    /// Who made the change (0 = robot).
    #[serde(default)]
    pub created_by: u64,
    /// When (unix seconds).
    pub created_at: i64,
    /// The new value.
    #[serde(default)]
    pub value_after: Vec<EventValue>,
}

/// One entry of `value_after` / `value_before`.
#[derive(Debug, Clone, Deserialize)]
pub struct EventValue {
    /// `entity_responsible_changed`: `{"responsible_user": {"id": N}}`; a `null` id is nobody.
    #[serde(default)]
    pub responsible_user: Option<UserRef>,
    /// `lead_status_changed`: `{"lead_status": {"id": S, "pipeline_id": P}}`.
    #[serde(default)]
    pub lead_status: Option<StatusRef>,
}

/// A user reference whose id may be `null` (read as 0: nobody).
#[derive(Debug, Clone, Deserialize)]
pub struct UserRef {
    /// The user id (0 = nobody).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub id: u64,
}

/// `lead_status` of a `lead_status_changed` event.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusRef {
    /// The status id.
    pub id: u64,
    /// The pipeline id.
    #[serde(default)]
    pub pipeline_id: u64,
}

/// Event type of a responsible change.
pub const EVENT_RESPONSIBLE: &str = "entity_responsible_changed";
/// Event type of a lead's stage change.
pub const EVENT_LEAD_STATUS: &str = "lead_status_changed";

impl KommoEvent {
    /// The new responsible, if the event carries one.
    pub fn new_responsible(&self) -> Option<KommoUserId> {
        self.value_after
            .iter()
            .find_map(|v| v.responsible_user.as_ref().map(|u| KommoUserId(u.id)))
    }

    /// The new `(pipeline, status)` of a `lead_status_changed` event.
    pub fn new_status(&self) -> Option<(u64, u64)> {
        self.value_after
            .iter()
            .find_map(|v| v.lead_status.as_ref().map(|s| (s.pipeline_id, s.id)))
    }

    /// The card, if the entity is a kind the daemon knows.
    pub fn card(&self) -> Option<CardId> {
        CardKind::parse(&self.entity_type).map(|k| CardId::new(k, self.entity_id))
    }

    /// The event as the Kommo port hands it to the cycle.
    pub fn read(&self) -> CardEvent {
        CardEvent {
            id: self.id.clone(),
            card: self.card(),
            at: self.created_at,
            responsible: self.new_responsible(),
            status: self.new_status(),
        }
    }
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
pub(crate) struct EventsPage<T> {
    #[serde(rename = "_embedded")]
    embedded: EventsEmbedded<T>,
    #[serde(default, rename = "_links")]
    links: Option<PageLinks>,
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct EventsEmbedded<T> {
    events: Vec<T>,
}

impl<T: serde::de::DeserializeOwned> ListPage<T> for EventsPage<T> {
    type Meta = bool;
    fn split(self) -> (Vec<T>, bool) {
        let has_next = self.links.is_some_and(|l| l.next.is_some());
        (self.embedded.events, has_next)
    }
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
pub(crate) struct UsersPage<T> {
    #[serde(rename = "_embedded")]
    embedded: UsersEmbedded<T>,
    #[serde(default, rename = "_page_count")]
    page_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct UsersEmbedded<T> {
    users: Vec<T>,
}

impl<T: serde::de::DeserializeOwned> ListPage<T> for UsersPage<T> {
    type Meta = Option<u64>;
    fn split(self) -> (Vec<T>, Option<u64>) {
        (self.embedded.users, self.page_count)
    }
}

#[derive(Deserialize)]
pub(crate) struct UserItem {
    id: u64,
    /// Shown beside the id; a name of an unexpected type is ignored (the user still maps).
    #[serde(default)]
    name: Option<serde_json::Value>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    rights: Option<UserRights>,
}

#[derive(Deserialize)]
struct UserRights {
    #[serde(default = "yes")]
    is_active: bool,
}

fn yes() -> bool {
    true
}

/// `GET /api/v4/account`.
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    /// Account id.
    pub id: u64,
    /// The user the token acts as.
    #[serde(default)]
    pub current_user_id: u64,
    /// `with=is_api_filter_enabled`: list filters work on this account.
    #[serde(default)]
    pub is_api_filter_enabled: Option<bool>,
}

/// The items of `batch` a 400 answer names in `validation-errors`, by card id, with the
/// errors' `code: detail (path)` joined; `None` when the answer names none of them (the whole
/// request was refused).
///
/// Source: AMO `crm_platform/error-codes.md` (the validation example: `validation-errors[]` of
/// `{request_id, errors[]{code, path, detail}}`, HTTP 400); amoCRM's PHP library sets
/// `request_id` to the item's index and matches answers by it (`Models/LeadModel.php:1021`,
/// `Collections/BaseApiCollection.php:236`, `EntitiesServices/Leads.php:108-113`). The daemon
/// sends the index in the batch as `request_id`.
pub fn refused_items(body: &[u8], batch: &[(u64, KommoUserId)]) -> Option<BTreeMap<u64, String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = BTreeMap::new();
    for item in v.get("validation-errors")?.as_array()? {
        let rid = match item.get("request_id") {
            Some(serde_json::Value::String(s)) => s.parse::<usize>().ok(),
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        let Some((id, _)) = rid.and_then(|i| batch.get(i)) else {
            continue;
        };
        let errors: Vec<String> = item
            .get("errors")
            .and_then(|e| e.as_array())
            .map(|es| es.iter().map(describe_item_error).collect())
            .unwrap_or_default();
        out.insert(*id, crate::redact::excerpt(&errors.join("; "), 300));
    }
    (!out.is_empty()).then_some(out)
}

/// `code: detail (path)` of one item error.
fn describe_item_error(e: &serde_json::Value) -> String {
    let field = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or_default();
    format!("{}: {} ({})", field("code"), field("detail"), field("path"))
}

#[derive(Deserialize)]
pub(crate) struct PatchResult {
    #[serde(rename = "_embedded")]
    embedded: PatchEmbedded,
}

#[derive(Deserialize)]
struct PatchEmbedded {
    #[serde(
        alias = "leads",
        alias = "contacts",
        alias = "companies",
        alias = "customers"
    )]
    items: Vec<PatchedItem>,
}

#[derive(Deserialize)]
struct PatchedItem {
    id: u64,
}

/// How the daemon reads custom fields of cards.
#[derive(Debug, Clone)]
pub struct FieldMap {
    /// Sync-flag checkbox field per kind.
    pub flags: BTreeMap<SyncKind, u64>,
    /// The contact's Messenger field.
    pub messenger: FieldRef,
    /// The contact's phone field.
    pub phone: FieldRef,
}

impl Default for FieldMap {
    /// The default config's: no flag fields, the Messenger and phone fields by their codes.
    fn default() -> FieldMap {
        FieldMap::new(
            &crate::config::FlagFields::default(),
            &LinksConfig::default(),
        )
    }
}

impl FieldMap {
    /// From the config.
    pub fn new(flags: &crate::config::FlagFields, links: &LinksConfig) -> FieldMap {
        FieldMap {
            flags: SyncKind::ALL
                .into_iter()
                .filter_map(|k| flags.get(k).map(|f| (k, f)))
                .collect(),
            messenger: links.messenger_field.clone(),
            phone: links.phone_field.clone(),
        }
    }
}

fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A checkbox value is checked: JSON `true` (API v4), or `"1"`/`"true"`/`1` as webhooks send it.
pub fn checkbox_checked(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_u64() == Some(1),
        serde_json::Value::String(s) => matches!(s.trim(), "1" | "true" | "TRUE" | "True"),
        _ => false,
    }
}

pub use crate::core::model::{Pipelines, StatusInfo, classify_status};
pub use crate::ports::{CardEvent, CardRead, PatchOutcome};

#[derive(Deserialize)]
pub(crate) struct PipelinesPage {
    #[serde(rename = "_embedded")]
    embedded: PipelinesEmbedded,
}

#[derive(Deserialize)]
struct PipelinesEmbedded {
    pipelines: Vec<PipelineItem>,
}

#[derive(Deserialize)]
struct PipelineItem {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "_embedded")]
    embedded: Option<StatusesEmbedded>,
}

#[derive(Deserialize)]
struct StatusesEmbedded {
    #[serde(default)]
    statuses: Vec<StatusItem>,
}

#[derive(Deserialize)]
struct StatusItem {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: u8,
}

/// A custom field's definition (`GET /api/v4/{kind}/custom_fields`).
#[derive(Debug, Clone, Deserialize)]
pub struct FieldDef {
    /// Field id.
    pub id: u64,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Code (`PHONE`, ...), if any.
    #[serde(default)]
    pub code: Option<String>,
    /// Type: `checkbox`, `text`, `multitext`, ...
    #[serde(default, rename = "type")]
    pub field_type: String,
}

#[derive(Deserialize)]
pub(crate) struct FieldDefsPage {
    #[serde(rename = "_embedded")]
    embedded: FieldDefsEmbedded,
    #[serde(default, rename = "_links")]
    links: Option<PageLinks>,
}

#[derive(Deserialize)]
struct FieldDefsEmbedded {
    custom_fields: Vec<FieldDef>,
}

/// An unsorted ("Incoming leads") record of category `chats` (`GET /api/v4/leads/unsorted`).
#[derive(Debug, Clone, Deserialize)]
pub struct Unsorted {
    /// Its uid.
    #[serde(default)]
    pub uid: String,
    /// Its metadata (for chats: `from`, `client`, `origin.chat_id`, ...).
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// The lead (always one) and its contact.
    #[serde(default, rename = "_embedded")]
    pub embedded: Option<UnsortedEmbedded>,
}

/// `_embedded` of an unsorted record.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UnsortedEmbedded {
    /// The lead.
    #[serde(default)]
    pub leads: Vec<Linked>,
    /// The contact (not readable in the contacts list before the record is accepted).
    #[serde(default)]
    pub contacts: Vec<Linked>,
}

#[derive(Deserialize)]
pub(crate) struct UnsortedPage {
    #[serde(rename = "_embedded")]
    pub(crate) embedded: UnsortedList,
    #[serde(default, rename = "_links")]
    links: Option<PageLinks>,
}

#[derive(Deserialize)]
pub(crate) struct UnsortedList {
    pub(crate) unsorted: Vec<Unsorted>,
}

/// The contact an unsorted record holds: `_embedded.contacts[0].id`.
///
/// Source: AMO `crm_platform/unsorted-api.md` L99-101 ("`_embedded[contacts]` ... В данный момент
/// в массиве всегда 1 объект", with its `id`). The record's `metadata.origin.chat_id` is *not* a
/// ChatApp chat id: it is the id in amoCRM's chats service (L1062; `chats/chat-api-reference.md`
/// L381 shows UUIDs), so it links nothing here. A contact the record creates is not readable until
/// the record is accepted (L28), so only a returning client's existing contact links an incoming
/// lead before then; a new client's lead links once accepted, like any lead.
pub fn unsorted_contact(record: &Unsorted) -> Option<u64> {
    record.embedded.as_ref()?.contacts.first().map(|c| c.id)
}

impl KommoCard {
    /// The card as the Kommo port hands it to the cycle: its custom fields read through `fields`
    /// (the sync flag of its kind, and for a lead also of an incoming lead; a contact's Messenger
    /// references and phones), its linked contacts, and a lead's raw status.
    pub fn read(&self, kind: CardKind, fields: &FieldMap) -> CardRead {
        let cfs = self.custom_fields_values.as_deref().unwrap_or(&[]);
        let flag = |sync_kind: SyncKind| match fields.flags.get(&sync_kind) {
            None => true,
            Some(fid) => cfs
                .iter()
                .filter(|f| f.field_id == *fid)
                .flat_map(field_values)
                .any(|v| checkbox_checked(&v)),
        };
        let (dialog_refs, phones) = if kind == CardKind::Contact {
            contact_links(cfs, fields)
        } else {
            (vec![], vec![])
        };
        let mut contacts: Vec<u64> = self
            .embedded
            .as_ref()
            .and_then(|e| e.contacts.as_ref())
            .map(|cs| cs.iter().map(|c| c.id).collect())
            .unwrap_or_default();
        contacts.sort_unstable();
        contacts.dedup();
        let view = CardObs {
            responsible: KommoUserId(self.responsible_user_id),
            flag: flag(SyncKind::from(kind)),
            deleted: self.is_deleted,
            contacts: if kind == CardKind::Contact {
                vec![]
            } else {
                contacts
            },
            dialog_refs,
            phones,
            lead: LeadStage::default(),
            event_time: None,
        };
        CardRead {
            kind,
            id: self.id,
            updated_at: self.updated_at,
            status: self.status_id.unwrap_or(0),
            pipeline: self.pipeline_id.unwrap_or(0),
            incoming_flag: if kind == CardKind::Lead {
                flag(SyncKind::IncomingLead)
            } else {
                view.flag
            },
            view,
        }
    }

    /// A lead's stage by `pipelines` (see [`CardRead::lead_stage`]).
    pub fn lead_stage(&self, kind: CardKind, pipelines: &Pipelines) -> Option<LeadStage> {
        if kind != CardKind::Lead {
            return Some(LeadStage::default());
        }
        let status = self.status_id.unwrap_or(0);
        Some(LeadStage {
            pipeline: self.pipeline_id.unwrap_or(0),
            status,
            kind: classify_status(status, pipelines)?,
        })
    }

    /// The daemon's view of the card at `stage` (see [`KommoCard::read`]).
    pub fn to_obs(&self, kind: CardKind, fields: &FieldMap, stage: LeadStage) -> CardObs {
        self.read(kind, fields).into_obs(stage)
    }
}

/// The values of one custom field.
fn field_values(f: &CustomField) -> Vec<serde_json::Value> {
    f.values
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|v| v.value.clone())
        .collect()
}

/// A contact's Messenger references and phones (digits), each sorted and deduplicated.
fn contact_links(cfs: &[CustomField], fields: &FieldMap) -> (Vec<DialogRef>, Vec<String>) {
    let mut dialog_refs = vec![];
    let mut phones = vec![];
    for f in cfs {
        let code = f.field_code.as_deref();
        if fields.messenger.matches(f.field_id, code) {
            dialog_refs.extend(
                field_values(f)
                    .iter()
                    .filter_map(|v| value_text(v).and_then(|t| parse_messenger_value(&t))),
            );
        } else if fields.phone.matches(f.field_id, code) {
            phones.extend(
                field_values(f)
                    .iter()
                    .filter_map(|v| value_text(v).map(|t| phone_digits(&t)))
                    .filter(|p| !p.is_empty()),
            );
        }
    }
    dialog_refs.sort();
    dialog_refs.dedup();
    phones.sort();
    phones.dedup();
    (dialog_refs, phones)
}

/// An account webhook as `GET`/`POST /api/v4/webhooks` show it (amoCRM `webhooks-api.md` L60-73;
/// fields the daemon does not use are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Webhook {
    /// The URL Kommo calls.
    #[serde(default)]
    pub destination: String,
    /// The events it is subscribed to.
    #[serde(default)]
    pub settings: Vec<String>,
    /// "Отключен ли вебхук" (L73): Kommo stopped calling it (after more than 100 invalid answers
    /// in 2 hours, `webhooks-format.md` L505-509). A value that is not a boolean is read as
    /// enabled (`true`/`1` disabled, anything else not).
    #[serde(default, deserialize_with = "truthy")]
    pub disabled: bool,
}

fn truthy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::Number(n) => n.as_u64() == Some(1),
        _ => false,
    })
}

/// Whether two lists of webhook settings name the same events (order does not matter).
fn same_settings(have: &[String], want: &[String]) -> bool {
    let have: BTreeSet<&String> = have.iter().collect();
    let want: BTreeSet<&String> = want.iter().collect();
    have == want
}

/// What [`KommoClient::register_webhook`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// No hook was at the destination: one was created.
    Created,
    /// An enabled hook with the same settings was there: nothing was sent.
    Present,
    /// A hook at the destination had other settings: the POST updated it.
    Updated,
    /// The hook was disabled by Kommo: it was registered again and Kommo's answer shows it enabled.
    Reenabled,
    /// The hook was disabled by Kommo, registered again, and Kommo's answer still shows it
    /// disabled (an account admin has to switch it on, `webhooks-format.md` L509).
    StillDisabled,
}

/// The Kommo client.
pub struct KommoClient {
    /// Shared HTTP plumbing (limiter, retries, counters).
    pub api: ApiClient,
    auth: crate::kommo::auth::KommoAuth,
    filters: std::sync::Mutex<Option<bool>>,
    /// How the port reads custom fields into [`CardRead`]s.
    fields: FieldMap,
}

fn endpoint_of(path: &str) -> String {
    format!("{} {}", "GET", path)
}

impl KommoClient {
    /// Builds the client; with `shared`, every attempt also waits for the limit shared by the
    /// instances on this machine.
    pub fn new(
        cfg: &KommoConfig,
        fields: FieldMap,
        auth: crate::kommo::auth::KommoAuth,
        shared: Option<crate::http::shared_limit::SharedLimiter>,
    ) -> Result<KommoClient, ApiError> {
        let limits = Limits::standard(
            cfg.requests_per_second,
            cfg.timeout,
            Some(cfg.block_cooloff),
        );
        Ok(KommoClient {
            api: ApiClient::new(API, &cfg.base_url, limits)?.with_shared_limit(shared),
            auth,
            filters: std::sync::Mutex::new(None),
            fields,
        })
    }

    /// The credentials (to store a rotated pair that lives only in memory, or ask about it).
    pub fn auth(&self) -> &crate::kommo::auth::KommoAuth {
        &self.auth
    }

    /// Sends an authorized request; after a 401, refreshes OAuth credentials once and retries.
    async fn send(
        &self,
        endpoint: &str,
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        let r = self.send_raw(endpoint, &[], make).await?;
        self.check(endpoint, r)
    }

    /// Sends an authorized request (refreshing OAuth credentials once after a 401) and returns the
    /// answer unchecked; the 5xx statuses in `pass` come back instead of being retried.
    async fn send_raw(
        &self,
        endpoint: &str,
        pass: &[u16],
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        let token = self.auth.token(&self.api).await?;
        let bearer = format!("Bearer {token}");
        let r = self
            .api
            .execute_passing(endpoint, pass, |c| make(c, &bearer))
            .await?;
        if r.status.as_u16() == 401
            && let Some(fresh) = self.auth.after_unauthorized(&self.api, &token).await?
        {
            let bearer = format!("Bearer {fresh}");
            return self
                .api
                .execute_passing(endpoint, pass, |c| make(c, &bearer))
                .await;
        }
        Ok(r)
    }

    async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Response, ApiError> {
        let endpoint = endpoint_of(path);
        let url = self.api.url(path);
        self.send(&endpoint, |c, auth| {
            c.get(&url).header("Authorization", auth).query(query)
        })
        .await
    }

    fn check(&self, endpoint: &str, r: Response) -> Result<Response, ApiError> {
        match r.status.as_u16() {
            200..=299 => Ok(r),
            401 => Err(ApiError::Auth {
                api: API,
                reason: format!(
                    "{}: HTTP 401 (token expired or revoked): {}",
                    self.api.with_host(endpoint),
                    r.excerpt(200)
                ),
            }),
            s => Err(ApiError::Status {
                api: API,
                endpoint: self.api.with_host(endpoint),
                status: s,
                body: r.excerpt(300),
            }),
        }
    }

    /// `GET /api/v4/account?with=is_api_filter_enabled`.
    pub async fn account(&self) -> Result<Account, ApiError> {
        let path = "/api/v4/account";
        let r = self
            .get(path, &[("with".into(), "is_api_filter_enabled".into())])
            .await?;
        self.api.decode(&endpoint_of(path), &r.body)
    }

    /// Whether list filters and ordering work on this account (asked once per process).
    pub async fn filters_enabled(&self) -> Result<bool, ApiError> {
        if let Some(f) = *self.filters.lock().expect("filters") {
            return Ok(f);
        }
        let f = self.account().await?.is_api_filter_enabled.unwrap_or(false);
        *self.filters.lock().expect("filters") = Some(f);
        Ok(f)
    }

    /// All users (`GET /api/v4/users`, paged).
    pub async fn users(&self) -> Result<Vec<KommoUser>, ApiError> {
        let path = "/api/v4/users";
        let mut out = vec![];
        for page in 1.. {
            let r = self
                .get(
                    path,
                    &[
                        ("page".into(), page.to_string()),
                        ("limit".into(), PAGE_LIMIT.to_string()),
                    ],
                )
                .await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let (users, page_count, n): (Vec<UserItem>, _, _) = self
                .api
                .decode_list::<_, UsersPage<UserItem>, UsersPage<serde_json::Value>>(
                    &endpoint_of(path),
                    &r.body,
                    "_embedded.users",
                    card_subject,
                )?;
            out.extend(users.into_iter().map(|u| KommoUser {
                id: KommoUserId(u.id),
                name: crate::http::text_or_empty(u.name),
                email: u.email.unwrap_or_default(),
                active: u.rights.map(|r| r.is_active).unwrap_or(true),
            }));
            let last_page = page_count.is_some_and(|c| page >= c);
            if n < PAGE_LIMIT || last_page {
                break;
            }
        }
        Ok(out)
    }

    /// Lists cards of a kind. With `updated_since`, only cards updated since (see
    /// `changed_since_query`): newest-updated first, stopping at the first older card, or for
    /// customers through the documented `updated_at` range filter; otherwise lists all. A 204 or a short page ends the listing (a `next`
    /// link is not trusted).
    pub async fn list_cards(
        &self,
        kind: CardKind,
        updated_since: Option<i64>,
    ) -> Result<Vec<KommoCard>, ApiError> {
        let mut out = vec![];
        self.each_card(kind, updated_since, |c| out.push(c)).await?;
        Ok(out)
    }

    /// [`KommoClient::list_cards`] handing each card to `sink` as its page arrives (a listing of a
    /// large account is never held whole). Returns the number of cards listed.
    pub async fn each_card(
        &self,
        kind: CardKind,
        updated_since: Option<i64>,
        mut sink: impl FnMut(KommoCard),
    ) -> Result<usize, ApiError> {
        let path = format!("/api/v4/{}", kind.plural());
        let mut count = 0;
        let mut largest = 0;
        for page in 1.. {
            let mut q = vec![
                ("page".to_string(), page.to_string()),
                ("limit".to_string(), PAGE_LIMIT.to_string()),
            ];
            if kind != CardKind::Contact {
                q.push(("with".into(), "contacts".into()));
            }
            if let Some(since) = updated_since {
                q.extend(changed_since_query(kind, since));
            }
            let r = self.get(&path, &q).await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let (items, has_next, n) = self.decode_cards(kind, &path, &r.body)?;
            let mut done = page_ends_listing(n, PAGE_LIMIT, has_next, largest);
            largest = largest.max(n);
            for c in items {
                if let Some(since) = updated_since
                    && c.updated_at < since
                {
                    // newest first: the rest is older too (where the order is documented)
                    done |= ordered_by_update(kind);
                    continue;
                }
                count += 1;
                sink(c);
            }
            if done {
                break;
            }
        }
        Ok(count)
    }

    /// A page of cards, record by record when one does not fit (see [`ApiClient::decode_list`]);
    /// a bad record is named `kind:id`.
    pub(crate) fn decode_cards(
        &self,
        kind: CardKind,
        path: &str,
        body: &[u8],
    ) -> Result<(Vec<KommoCard>, bool, usize), ApiError> {
        let subject = card_subject_of(kind);
        self.api
            .decode_list::<_, CardsPage<KommoCard>, CardsPage<serde_json::Value>>(
                &endpoint_of(path),
                body,
                &format!("_embedded.{}", kind.plural()),
                subject,
            )
    }

    /// Reads cards by id: `filter[id][]` in chunks when list filters work, else one
    /// `GET /api/v4/{kind}/{id}` per card. Ids that do not come back are missing (deleted).
    pub async fn cards_by_id(
        &self,
        kind: CardKind,
        ids: &[u64],
    ) -> Result<Vec<KommoCard>, ApiError> {
        let mut out = vec![];
        if ids.is_empty() {
            return Ok(out);
        }
        if self.filters_enabled().await? {
            let path = format!("/api/v4/{}", kind.plural());
            for chunk in ids.chunks(IDS_PER_READ) {
                let mut q: Vec<(String, String)> = chunk
                    .iter()
                    .map(|id| ("filter[id][]".to_string(), id.to_string()))
                    .collect();
                q.push(("limit".into(), PAGE_LIMIT.to_string()));
                if kind != CardKind::Contact {
                    q.push(("with".into(), "contacts".into()));
                }
                let r = self.get(&path, &q).await?;
                if r.status.as_u16() == 204 || r.body.is_empty() {
                    continue;
                }
                let (items, _, _) = self.decode_cards(kind, &path, &r.body)?;
                let wanted: BTreeSet<u64> = chunk.iter().copied().collect();
                out.extend(items.into_iter().filter(|c| wanted.contains(&c.id)));
            }
        } else {
            for id in ids {
                let path = format!("/api/v4/{}/{id}", kind.plural());
                let q: Vec<(String, String)> = if kind != CardKind::Contact {
                    vec![("with".into(), "contacts".into())]
                } else {
                    vec![]
                };
                let r = match self.get(&path, &q).await {
                    Err(ApiError::Status { status: 404, .. }) => continue,
                    r => r?,
                };
                if r.status.as_u16() == 204 || r.body.is_empty() {
                    continue;
                }
                let endpoint = endpoint_of(&format!("/api/v4/{}/{{id}}", kind.plural()));
                let raw: serde_json::Value = self.api.decode(&endpoint, &r.body)?;
                let subject = card_subject_of(kind);
                if let Some(c) = self.api.decode_record(&endpoint, &raw, "(card)", subject) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// The events the sync reads, of the given kinds, created at or after `from`, oldest first,
    /// every page read (a 204 or a short page ends it): `entity_responsible_changed`, and with
    /// `stages` also `lead_status_changed` (in the same requests: `filter[type]` takes a list).
    pub async fn events(
        &self,
        kinds: &[CardKind],
        stages: bool,
        from: i64,
    ) -> Result<Vec<KommoEvent>, ApiError> {
        let path = "/api/v4/events";
        let types = if stages {
            format!("{EVENT_RESPONSIBLE},{EVENT_LEAD_STATUS}")
        } else {
            EVENT_RESPONSIBLE.to_string()
        };
        let mut out: Vec<KommoEvent> = vec![];
        let mut largest = 0;
        for page in 1.. {
            let mut q = vec![
                ("filter[type]".to_string(), types.clone()),
                ("filter[created_at]".to_string(), events_since(from)),
                ("limit".to_string(), EVENTS_LIMIT.to_string()),
                ("page".to_string(), page.to_string()),
            ];
            for k in kinds {
                q.push(("filter[entity][]".into(), k.singular().into()));
            }
            let r = self.get(path, &q).await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let (events, has_next, n): (Vec<KommoEvent>, _, _) = self
                .api
                .decode_list::<_, EventsPage<KommoEvent>, EventsPage<serde_json::Value>>(
                    &endpoint_of(path),
                    &r.body,
                    "_embedded.events",
                    event_subject,
                )?;
            out.extend(events.into_iter().filter(|e| {
                e.kind == EVENT_RESPONSIBLE || (stages && e.kind == EVENT_LEAD_STATUS)
            }));
            if page_ends_listing(n, EVENTS_LIMIT, has_next, largest) {
                break;
            }
            largest = largest.max(n);
        }
        // stable order whatever the server's: by time, then id; duplicates (page shifts) dropped
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// `entity_responsible_changed` events of the given kinds created at or after `from`.
    pub async fn responsible_events(
        &self,
        kinds: &[CardKind],
        from: i64,
    ) -> Result<Vec<KommoEvent>, ApiError> {
        self.events(kinds, false, from).await
    }

    /// Every pipeline with its statuses (`GET /api/v4/leads/pipelines`; at most 50 pipelines, one
    /// answer).
    pub async fn pipelines(&self) -> Result<Pipelines, ApiError> {
        let path = "/api/v4/leads/pipelines";
        let r = self.get(path, &[]).await?;
        let mut out = Pipelines::default();
        if r.status.as_u16() == 204 || r.body.is_empty() {
            return Ok(out);
        }
        let p: PipelinesPage = self.api.decode(&endpoint_of(path), &r.body)?;
        for pl in p.embedded.pipelines {
            out.names.insert(pl.id, pl.name);
            for st in pl.embedded.map(|e| e.statuses).unwrap_or_default() {
                if st.id != STATUS_WON && st.id != STATUS_LOST {
                    out.statuses.insert(
                        st.id,
                        StatusInfo {
                            pipeline: pl.id,
                            name: st.name,
                            kind: st.kind,
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    /// The custom field definitions of an entity (`GET /api/v4/{kind}/custom_fields`, paged).
    pub async fn custom_fields(&self, kind: CardKind) -> Result<Vec<FieldDef>, ApiError> {
        let path = format!("/api/v4/{}/custom_fields", kind.plural());
        let mut out = vec![];
        let mut largest = 0;
        for page in 1.. {
            let q = vec![
                ("page".to_string(), page.to_string()),
                ("limit".to_string(), FIELDS_LIMIT.to_string()),
            ];
            let r = self.get(&path, &q).await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let p: FieldDefsPage = self.api.decode(&endpoint_of(&path), &r.body)?;
            let n = p.embedded.custom_fields.len();
            let has_next = p.links.as_ref().is_some_and(|l| l.next.is_some());
            out.extend(p.embedded.custom_fields);
            if page_ends_listing(n, FIELDS_LIMIT, has_next, largest) {
                break;
            }
            largest = largest.max(n);
        }
        Ok(out)
    }

    /// The contacts of the unsorted chat records (`GET /api/v4/leads/unsorted`, category `chats`)
    /// of the leads in `wanted`, by lead id (see [`unsorted_contact`]). Pages until every wanted
    /// lead's record is found or the list ends (every record holds its contact, so the paging
    /// stops as soon as the wanted leads are seen).
    pub async fn unsorted_contacts(
        &self,
        wanted: &BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, u64>, ApiError> {
        let path = "/api/v4/leads/unsorted";
        let mut out = BTreeMap::new();
        let mut found = BTreeSet::new();
        let mut largest = 0;
        for page in 1.. {
            if wanted.iter().all(|id| found.contains(id)) {
                break;
            }
            let q = vec![
                ("page".to_string(), page.to_string()),
                ("limit".to_string(), PAGE_LIMIT.to_string()),
                ("filter[category][]".to_string(), "chats".to_string()),
            ];
            let r = self.get(path, &q).await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let p: UnsortedPage = self.api.decode(&endpoint_of(path), &r.body)?;
            let n = p.embedded.unsorted.len();
            let has_next = p.links.as_ref().is_some_and(|l| l.next.is_some());
            for rec in &p.embedded.unsorted {
                let lead = rec.embedded.as_ref().and_then(|e| e.leads.first());
                let Some(lead) = lead.map(|l| l.id).filter(|l| wanted.contains(l)) else {
                    continue;
                };
                found.insert(lead);
                if let Some(contact) = unsorted_contact(rec) {
                    out.insert(lead, contact);
                }
            }
            if page_ends_listing(n, PAGE_LIMIT, has_next, largest) {
                break;
            }
            largest = largest.max(n);
        }
        Ok(out)
    }

    /// The account webhook at exactly `destination`, if there is one
    /// (`GET /api/v4/webhooks?filter[destination]=URL`; amoCRM `webhooks-api.md` L45, admin rights
    /// needed). A 204 or an empty body is none.
    pub async fn webhook(&self, destination: &str) -> Result<Option<Webhook>, ApiError> {
        let path = "/api/v4/webhooks";
        let r = self
            .get(
                path,
                &[("filter[destination]".into(), destination.to_string())],
            )
            .await?;
        if r.status.as_u16() == 204 || r.body.is_empty() {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Hooks {
            #[serde(rename = "_embedded")]
            embedded: HooksEmbedded,
        }
        #[derive(Deserialize)]
        struct HooksEmbedded {
            webhooks: Vec<Webhook>,
        }
        let h: Hooks = self.api.decode(&endpoint_of(path), &r.body)?;
        Ok(h.embedded
            .webhooks
            .into_iter()
            .find(|x| x.destination == destination))
    }

    /// `POST /api/v4/webhooks` with `{destination, settings}`: creates the hook, or updates the one
    /// already at `destination` ("Если в аккаунте уже есть вебхук с переданным адресом, то он будет
    /// обновлен с переданными настройками": `webhooks-api.md` L135). Returns the hook as Kommo's
    /// answer shows it (201 with the hook object, L177); an answer that does not show one is taken
    /// as the hook asked for, enabled.
    pub async fn post_webhook(
        &self,
        destination: &str,
        settings: &[String],
    ) -> Result<Webhook, ApiError> {
        let path = "/api/v4/webhooks";
        let endpoint = format!("POST {path}");
        let url = self.api.url(path);
        let body = serde_json::json!({"destination": destination, "settings": settings});
        let r = self
            .send(&endpoint, |c, auth| {
                c.post(&url).header("Authorization", auth).json(&body)
            })
            .await?;
        Ok(serde_json::from_slice::<Webhook>(&r.body)
            .ok()
            .filter(|h| h.destination == destination)
            .unwrap_or_else(|| Webhook {
                destination: destination.to_string(),
                settings: settings.to_vec(),
                disabled: false,
            }))
    }

    /// Makes sure an enabled account webhook for `settings` (e.g. `responsible_lead`) is at
    /// `destination`: one GET, and a POST only when the hook is missing, has other settings, or
    /// was disabled by Kommo (`disabled`, `webhooks-api.md` L73; Kommo switches a hook off after
    /// more than 100 invalid answers in 2 hours, `webhooks-format.md` L505-509).
    pub async fn register_webhook(
        &self,
        destination: &str,
        settings: &[String],
    ) -> Result<WebhookOutcome, ApiError> {
        let found = self.webhook(destination).await?;
        let outcome = match &found {
            None => WebhookOutcome::Created,
            Some(h) if h.disabled => WebhookOutcome::Reenabled,
            Some(h) if same_settings(&h.settings, settings) => return Ok(WebhookOutcome::Present),
            Some(_) => WebhookOutcome::Updated,
        };
        let posted = self.post_webhook(destination, settings).await?;
        Ok(if posted.disabled {
            WebhookOutcome::StillDisabled
        } else {
            outcome
        })
    }

    /// The first page of cards of a kind (`GET /api/v4/{kind}?page=1&limit=250`, Kommo's default
    /// order): one request, for `check-config --probe-writes` to pick a card from. A 204 is none.
    pub async fn first_cards(&self, kind: CardKind) -> Result<Vec<KommoCard>, ApiError> {
        let path = format!("/api/v4/{}", kind.plural());
        let q = vec![
            ("page".to_string(), "1".to_string()),
            ("limit".to_string(), PAGE_LIMIT.to_string()),
        ];
        let r = self.get(&path, &q).await?;
        if r.status.as_u16() == 204 || r.body.is_empty() {
            return Ok(vec![]);
        }
        Ok(self.decode_cards(kind, &path, &r.body)?.0)
    }

    /// `PATCH /api/v4/{kind}` with `[{id, responsible_user_id, request_id}]` (one batch); returns
    /// the ids the response confirms and those Kommo refused (see [`refused_items`]): the batch
    /// is sent again without them, so one refused card does not hold back the others.
    ///
    /// The answer is taken as proof of the write (no read-back): AMO `leads-api.md` (the PATCH
    /// section) documents the answer as the list of the entities that were changed, with their
    /// `id` and new `updated_at`; a card missing from it counts as not written.
    pub async fn patch_responsible(
        &self,
        kind: CardKind,
        items: &[(u64, KommoUserId)],
    ) -> Result<PatchOutcome, ApiError> {
        let path = format!("/api/v4/{}", kind.plural());
        let endpoint = format!("PATCH {path}");
        let url = self.api.url(&path);
        let mut out = PatchOutcome::default();
        // A 504 on a batch means "too big": the batch is halved and both halves sent (the writes
        // are idempotent and their targets were checked before); a single card's 504 is retried.
        let mut queue = vec![items.to_vec()];
        while let Some(batch) = queue.pop() {
            let body: Vec<serde_json::Value> = batch
                .iter()
                .enumerate()
                .map(|(i, (id, user))| serde_json::json!({"id": id, "responsible_user_id": user, "request_id": i.to_string()}))
                .collect();
            let pass: &[u16] = if batch.len() > 1 { &[504] } else { &[] };
            let r = self
                .send_raw(&endpoint, pass, |c, auth| {
                    c.patch(&url).header("Authorization", auth).json(&body)
                })
                .await?;
            if r.status.as_u16() == 504 && batch.len() > 1 {
                tracing::warn!(kind = %kind, size = batch.len(), "Kommo answered 504 to a PATCH batch: halving it");
                let mid = batch.len() / 2;
                queue.push(batch[mid..].to_vec());
                queue.push(batch[..mid].to_vec());
                continue;
            }
            if r.status.as_u16() == 400
                && let Some(refused) = refused_items(&r.body, &batch)
            {
                tracing::warn!(kind = %kind, refused = refused.len(), size = batch.len(), "Kommo refused cards of a PATCH batch: the others are sent again without them");
                let rest: Vec<(u64, KommoUserId)> = batch
                    .iter()
                    .filter(|(id, _)| !refused.contains_key(id))
                    .copied()
                    .collect();
                out.refused.extend(refused);
                if !rest.is_empty() {
                    queue.push(rest);
                }
                continue;
            }
            let r = self.check(&endpoint, r)?;
            let p: PatchResult = self.api.decode(&endpoint, &r.body)?;
            out.confirmed
                .extend(p.embedded.items.into_iter().map(|i| i.id));
        }
        Ok(out)
    }
}

impl crate::http::OnApiClient for KommoClient {
    fn api_client(&self) -> &ApiClient {
        &self.api
    }
}

impl crate::ports::KommoApi for KommoClient {
    async fn users(&self) -> Result<Vec<KommoUser>, ApiError> {
        KommoClient::users(self).await
    }
    async fn events(
        &self,
        kinds: &[CardKind],
        stages: bool,
        from: i64,
    ) -> Result<Vec<CardEvent>, ApiError> {
        let events = KommoClient::events(self, kinds, stages, from).await?;
        Ok(events.iter().map(KommoEvent::read).collect())
    }
    async fn pipelines(&self) -> Result<Pipelines, ApiError> {
        KommoClient::pipelines(self).await
    }
    async fn filters_enabled(&self) -> Result<bool, ApiError> {
        KommoClient::filters_enabled(self).await
    }
    async fn each_card(
        &self,
        kind: CardKind,
        since: Option<i64>,
        sink: &mut (dyn FnMut(CardRead) + Send),
    ) -> Result<usize, ApiError> {
        let fields = &self.fields;
        KommoClient::each_card(self, kind, since, &mut |c: KommoCard| {
            sink(c.read(kind, fields))
        })
        .await
    }
    async fn cards_by_id(&self, kind: CardKind, ids: &[u64]) -> Result<Vec<CardRead>, ApiError> {
        let cards = KommoClient::cards_by_id(self, kind, ids).await?;
        Ok(cards.iter().map(|c| c.read(kind, &self.fields)).collect())
    }
    async fn unsorted_contacts(
        &self,
        wanted: &BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, u64>, ApiError> {
        KommoClient::unsorted_contacts(self, wanted).await
    }
    async fn patch_responsible(
        &self,
        kind: CardKind,
        items: &[(u64, KommoUserId)],
    ) -> Result<PatchOutcome, ApiError> {
        KommoClient::patch_responsible(self, kind, items).await
    }
    async fn retry_unsaved_token(&self) -> bool {
        self.auth.retry_unsaved().await
    }
}

/// The `filter[created_at]` value that asks for events created at or after `from`.
///
/// Source: AMO `crm_platform/events-and-notes.md` L52-53 documents two forms, a bare timestamp
/// ("events created after the passed value") or a `[from]`+`[to]` pair; amoCRM's PHP library
/// (`Filters/EventsFilter.php`) sends the bare form. A lone `[from]`, which the daemon sent
/// before, is shown nowhere. "After" is read as strictly after, so the value is `from - 1`: an
/// event in the cursor's own second is read again (events are deduplicated by id), never lost.
fn events_since(from: i64) -> String {
    (from.max(1) - 1).to_string()
}

/// Far enough ahead to be "no upper bound" for an `updated_at` range (2100-01-01).
const NO_UPPER_BOUND: i64 = 4_102_444_800;

/// Whether listings of `kind` can be asked newest-updated first (`order[updated_at]=desc`).
///
/// Source: AMO `crm_platform/leads-api.md` L40-42 (and the contacts and companies pages) list
/// `order` by `created_at, updated_at, id`; `customers-api.md` L110-119 lists `with, page,
/// limit, query, filter` and no `order` (amoCRM's PHP library sends it anyway; the daemon does not
/// rely on what the docs do not show).
fn ordered_by_update(kind: CardKind) -> bool {
    kind != CardKind::Customer
}

/// The query that lists the cards of `kind` updated at or after `since`: `order[updated_at]=desc`
/// (the listing stops at the first older card) where [`ordered_by_update`], else the range filter
/// `filter[updated_at][from]`+`[to]` that `crm_platform/filters-api.md` documents for customers
/// (L146, with the from+to example of L202), every page read.
fn changed_since_query(kind: CardKind, since: i64) -> Vec<(String, String)> {
    if ordered_by_update(kind) {
        return vec![("order[updated_at]".into(), "desc".into())];
    }
    vec![
        ("filter[updated_at][from]".into(), since.max(0).to_string()),
        ("filter[updated_at][to]".into(), NO_UPPER_BOUND.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::DialogRef;

    fn fields() -> FieldMap {
        FieldMap {
            flags: [(SyncKind::Lead, 184994)].into(),
            messenger: FieldRef::Code("MESSENGER".into()),
            phone: FieldRef::Code("PHONE".into()),
        }
    }

    #[test]
    fn contact_fields_become_links() {
        let c: KommoCard = serde_json::from_str(
            r#"{"id":7,"responsible_user_id":5,"custom_fields_values":[
              {"field_id":3,"field_code":"PHONE","values":[{"value":"+7 (999) 123-45-67","enum_code":"WORK"}]},
              {"field_id":9,"field_code":"MESSENGER","values":[{"value":"1:telegram:@bob"},{"value":"79990001122@c.us"}]}
            ]}"#,
        )
        .unwrap();
        let o = c.to_obs(CardKind::Contact, &fields(), LeadStage::default());
        assert!(o.flag, "contacts have no flag field configured");
        assert_eq!(o.phones, vec!["79991234567".to_string()]);
        assert_eq!(o.dialog_refs.len(), 2);
        assert!(
            o.dialog_refs
                .contains(&DialogRef::ChatId("79990001122@c.us".into()))
        );
    }

    #[test]
    fn paging_survives_a_smaller_server_page_size() {
        // asked 250, the server serves 50 with a next link: go on
        assert!(!page_ends_listing(50, 250, true, 0));
        // then a shorter page than the server's size: the end, next link or not
        assert!(page_ends_listing(20, 250, true, 50));
        // a short page without next ends it; a full one with a next link to an empty page goes on
        assert!(page_ends_listing(20, 250, false, 0));
        assert!(!page_ends_listing(250, 250, true, 250));
        assert!(page_ends_listing(0, 250, true, 250));
    }

    #[test]
    fn lead_flag_and_contacts() {
        let c: KommoCard = serde_json::from_str(
            r#"{"id":1,"responsible_user_id":5,"custom_fields_values":[{"field_id":184994,"values":[{"value":true}]}],
               "_embedded":{"contacts":[{"id":3,"is_main":true},{"id":2}]}}"#,
        )
        .unwrap();
        let o = c.to_obs(CardKind::Lead, &fields(), LeadStage::default());
        assert!(o.flag);
        assert_eq!(o.contacts, vec![2, 3]);
        let c: KommoCard =
            serde_json::from_str(r#"{"id":1,"responsible_user_id":5,"custom_fields_values":null}"#)
                .unwrap();
        assert!(
            !c.to_obs(CardKind::Lead, &fields(), LeadStage::default())
                .flag,
            "no checkbox value = unchecked"
        );
        assert!(checkbox_checked(&serde_json::json!("1")));
        assert!(!checkbox_checked(&serde_json::json!(false)));
    }
}
