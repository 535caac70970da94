//! A stateful fake of the Kommo (amoCRM) REST API v4, as described in `api/kommo.md`.
//!
//! Served endpoints (everything else is `404` problem+json, a known path with a wrong method is
//! `405`):
//!
//! | method | path | notes |
//! |---|---|---|
//! | GET | `/api/v4/account` | `with=is_api_filter_enabled,amojo_id,datetime_settings` |
//! | GET | `/api/v4/users`, `/api/v4/users/{id}` | `page`, `limit` (≤ 250) |
//! | GET | `/api/v4/{leads,contacts,companies,customers}` | `page`, `limit`, `with`, `order[..]`, `filter[..]` |
//! | GET | `/api/v4/{kind}/{id}` | `204` when missing or deleted |
//! | PATCH | `/api/v4/{kind}` (array), `/api/v4/{kind}/{id}` (object) | `responsible_user_id` only |
//! | GET | `/api/v4/events`, `/api/v4/events/{id}` | `filter[type,entity,entity_id,created_by,created_at,id]` |
//! | GET | `/api/v4/leads/pipelines`, `/api/v4/leads/pipelines/{id}` | statuses embedded; `404` when unknown |
//! | GET | `/api/v4/leads/pipelines/{id}/statuses[/{status_id}]` | `404` when unknown |
//! | GET | `/api/v4/leads/unsorted`, `/api/v4/leads/unsorted/{uid}` | `page`, `limit`, `filter[uid,category,pipeline_id]`, `order[created_at\|updated_at]` |
//! | POST | `/api/v4/leads/unsorted/{uid}/accept` | optional `{"status_id", "user_id"}` |
//! | DELETE | `/api/v4/leads/unsorted/{uid}/decline` | optional `{"user_id"}` |
//! | GET | `/api/v4/{kind}/custom_fields`, `/api/v4/{kind}/custom_fields/{id}` | `page`, `limit` (≤ 50 served) |
//! | GET, POST | `/api/v4/webhooks` | `filter[destination]`; [`KommoSim::disable_webhook`] serves a hook `disabled: true`, [`KommoSim::refuse_webhooks`] refuses the API |
//! | POST | `/oauth2/access_token` | `grant_type=refresh_token` or `authorization_code` |
//! | GET | `/oauth2/account/current/subdomain` | header `X-Refresh-Token` |
//!
//! Decisions where `kommo.md` is silent or marks things UNCONFIRMED:
//! - **List `limit`**: default 50; a value above 250 (or below 1, or not a number) is a `400`
//!   validation error (so a client bug is visible rather than silently clamped). `page` < 1 is a
//!   `400` too.
//! - **Events `limit`**: default 50, silently **capped at 100** (this mirrors the reported real
//!   behaviour where a larger limit quietly returns fewer rows; `_links.next` is present whenever
//!   the returned page is full).
//! - **Events order**: ascending by `(created_at, insertion order)`. Bounds of every `[from]`/`[to]`
//!   range filter (events `created_at`, cards `updated_at`/`created_at`) are **inclusive**. The
//!   legacy `filter[created_at]=from,to` is accepted; a bare `filter[created_at]=ts` means "created
//!   after ts" (AMO `events-and-notes.md` L52-53), and a lone `[from]` on events is ignored.
//! - **Cards**: default order `id` asc; `order[id|updated_at|created_at]=asc|desc` (ties broken by
//!   `id` asc; ignored on customers, whose docs do not list `order`). `filter[id]`,
//!   `filter[responsible_user_id]` (array, `[N]` or comma forms), `filter[updated_at][from|to]`,
//!   `filter[created_at][from|to]`. With `api_filter_enabled: false` every `filter[..]` and `order[..]` parameter is **silently ignored** (default order, no
//!   filtering).
//! - **Deleted cards** are hidden from lists and `GET /{kind}/{id}` (`204`); `with=only_deleted`
//!   lists only them, as `{id, updated_at, is_deleted: true, _links}`.
//! - **PATCH** is **atomic**: if any item names an unknown/deleted card, an unknown user or has a
//!   wrong type, the answer is `400` with `validation-errors` per `request_id` and nothing is
//!   applied. Other fields than `responsible_user_id` are ignored. Every applied item bumps
//!   `updated_at` and sets `updated_by = current_user_id`; an item whose responsible actually
//!   changes appends an `entity_responsible_changed` event with `created_by = current_user_id`.
//!   Items without `request_id` are echoed with their index as `request_id`. More than 250 items
//!   is `422 Limit 250 per page`; an empty array is `400 Request data can not be empty`.
//!   [`KommoSim::patch_count`] counts PATCH requests that passed auth and reached the handler
//!   (validation failures included, faulted/blocked/rate-limited ones not).
//! - **Auth**: `Authorization: Bearer <token>` where the token is the configured long-lived token
//!   (rejected once its JWT `exp`, if it has one, is past) or the current OAuth access token (until
//!   it expires on the clock). Anything else is `401`. The OAuth endpoint checks `client_id`,
//!   `client_secret` (`401` if wrong), `grant_type` and `redirect_uri` (`400` if wrong or missing);
//!   refresh tokens live 90 days on the clock. JSON or form-encoded bodies are accepted.
//! - **Authorization codes** ([`KommoSim::issue_auth_code`]) live 20 minutes on the clock (AMO
//!   `oauth/oauth.md` L54, per the conformance review) and are single-use. Exchanging one
//!   issues a new pair, which replaces the current one (the old refresh token stops working).
//!   An unknown, used or expired code is a `400` in the problem+json shape of the other OAuth
//!   errors, its `hint` saying which (the docs list only 200 and 400 and put "the details in the
//!   body").
//! - **Account domain**: access tokens carry the claim `api_domain` = the simulator's own
//!   `host:port`, where `/oauth2/account/current/subdomain` answers `{id, subdomain, domain,
//!   top_level_domain}` for the current refresh token (401 otherwise). `domain` is the simulator's
//!   `host:port` until [`KommoSim::move_account`] names another one; from then on (the account
//!   renamed) every `/api/v4` call answers `401` and the token endpoint `404`: real Kommo's answers
//!   at an old subdomain are not documented; amoCRM's PHP library checks the domain after a
//!   refresh answered 401 or 404.
//! - No user is created implicitly, not even `current_user_id`.
//!
//! Pipelines and stages ([`SimPipeline`], [`KommoSim::add_pipeline`]):
//! - A new simulator has one main pipeline, [`MAIN_PIPELINE_ID`] (1000), with the statuses
//!   [`STATUS_INCOMING`] (1001, `type: 1`), [`STATUS_FIRST_CONTACT`] (1002),
//!   [`STATUS_NEGOTIATION`] (1003), [`STATUS_WON`] (142) and [`STATUS_LOST`] (143). Added
//!   pipelines get 142/143 appended (sort 10000/11000); other statuses get sort 10, 20, ... in the
//!   given order. A pipeline without a `type: 1` status is served with `is_unsorted_on: false`
//!   and cannot take incoming leads. Status ids other than 142/143 are unique per account. The
//!   pipeline list is not paged (an account has at most 50). Pipelines cannot be deleted, only
//!   archived ([`KommoSim::set_pipeline_archived`]); an unknown pipeline or status by id is `404`
//!   problem+json.
//! - Every lead JSON carries `status_id`, `pipeline_id` and `closed_at` (`with=only_deleted`
//!   items keep their short form without them). A lead added without a stage is in the main
//!   pipeline's first normal status; a stage given to [`SimCard::with_status`] is not checked
//!   (a lead may sit in a stage the account no longer has). `closed_at` is set when a lead
//!   enters 142/143 and cleared (`null`) when it leaves them.
//! - [`KommoSim::set_status_as_human`] refuses (panics on) a move into a `type: 1` stage;
//!   [`KommoSim::set_status_silently`] allows any status of the pipeline. PATCH changes only
//!   `responsible_user_id` still: `status_id`/`pipeline_id` in a PATCH body are ignored.
//! - `lead_status_changed` events carry `value_before`/`value_after` =
//!   `[{"lead_status": {"id", "pipeline_id"}}]`, `entity_type: lead`; none when the stage does
//!   not change.
//! - Leads only, with the API filter on (ignored otherwise, like every filter):
//!   `filter[pipeline_id]` (single, repeated, `[]`, `[N]` or comma forms; OR) and
//!   `filter[statuses][N][pipeline_id]` + `filter[statuses][N][status_id]` (groups are ORed; a
//!   group with only one of the two matches on that one). Both together are ANDed.
//!
//! Incoming leads ([`KommoSim::add_unsorted_chat`], category `chats` only):
//! - The record's lead is a normal lead in the incoming stage (listed, readable, PATCHable,
//!   filterable). Its contact, when the record created it, is **hidden** until acceptance: not in
//!   contact lists (nor `with=only_deleted`), `204` by id, `NotFound` for PATCH; but it **is**
//!   named in the lead's `_embedded.contacts` (`with=contacts`) and in the record's
//!   `_embedded.contacts`, so a client that follows that link gets a `204`. An existing contact
//!   given to a record stays visible. No company is created (`companies: []`).
//! - Creating a record appends no event. Accepting (control method or `POST .../accept`) moves
//!   the lead to the given or first normal status (a `type: 1` or foreign status is a `400`
//!   `validation-errors` on `status_id`), sets `updated_by` to `user_id` (default
//!   `current_user_id`; an unknown user is a `400` on `user_id`), appends `lead_status_changed`
//!   by that user, bumps the hidden contact's `updated_at` (so an `updated_at` scan finds it) and
//!   removes the record. Declining deletes the lead and the hidden contact (no event). An unknown
//!   uid is `404` for accept/decline and `204` for `GET .../unsorted/{uid}`.
//! - The list filters (`filter[uid]`, `filter[category]`, `filter[pipeline_id]`, array or
//!   single forms) work whether or not the API filter add-on is on. Default order `created_at`
//!   asc (then creation order); `order[created_at|updated_at]=desc` reverses it (a record's
//!   `updated_at` is its `created_at`). `limit` as for cards (default 50, ≤ 250, else `400`);
//!   `next` when the page is full; `204` when empty. Record uids are 40 hex digits derived from
//!   the lead id unless given.
//!
//! Custom field definitions ([`KommoSim::define_field`]):
//! - Definitions and values are independent: a card's value of an undefined field is served as
//!   is (that is how a wrong field id looks on a real account); a defined field's `name` becomes
//!   the value's `field_name`. `sort` is 500, 501, ... in definition order, and lists are in
//!   `(sort, id)` order.
//! - Lists serve at most [`MAX_FIELDS_PAGE`] (50) per page: a larger `limit` is clamped
//!   silently, `limit` < 1 or `page` < 1 is a `400`. `_total_items` is the number of
//!   definitions, `_page_count` follows the served page size, `next` is present while
//!   `page < _page_count`, `last` always. No definitions (or a page past the end): `204`. An
//!   unknown id is `404` problem+json.
//!
//! Malformed records, for hardening tests (they stay until cleared):
//! - [`KommoSim::set_card_json_override`] merges keys into (or replaces) one card's JSON as
//!   served, [`KommoSim::remove_card_json_keys`] drops keys; they apply to lists, by-id reads and
//!   `with=only_deleted`, never to filtering, ordering or PATCH.
//! - [`KommoSim::push_raw_event`] serves one event exactly as given; it is filtered and ordered
//!   by the values it carries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::SimClock;
use super::faults::{
    Faults, Flavor, Incoming, ServerTask, bind_local, fault_methods, kommo_problem, process,
};
use super::util::{
    JsonOverride, XorShift, b64url_decode, b64url_encode, href, href_with_page, json_response,
    multi, no_content, param, parse_query, segments,
};

mod fields;
mod pipelines;
mod unsorted;

pub use fields::{MAX_FIELDS_PAGE, SimFieldDef};
pub use pipelines::{
    MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT, STATUS_INCOMING, STATUS_LOST, STATUS_NEGOTIATION,
    STATUS_WON, SimPipeline, SimStatus,
};
pub use unsorted::{SimUnsorted, UnsortedChat};

const HAL: &str = "application/hal+json";
const MAX_PAGE: u64 = 250;
const MAX_EVENTS_PAGE: u64 = 100;
const REFRESH_TTL_SECS: i64 = 90 * 86_400;

/// Configuration of a [`KommoSim`].
#[derive(Clone, Debug)]
pub struct KommoSimConfig {
    /// Shared clock (a fresh one when `None`).
    pub clock: Option<SimClock>,
    /// The accepted long-lived token, if any.
    pub long_lived_token: Option<String>,
    /// OAuth settings, if the OAuth refresh flow is enabled.
    pub oauth: Option<OAuthSim>,
    /// Account id reported by `/api/v4/account` and in events.
    pub account_id: u64,
    /// The user the API acts as (`current_user_id`, `created_by` of PATCH events).
    pub current_user_id: u64,
    /// Whether `filter[..]`/`order[..]` work on lists (`is_api_filter_enabled`).
    pub api_filter_enabled: bool,
}

impl Default for KommoSimConfig {
    fn default() -> Self {
        KommoSimConfig {
            clock: None,
            long_lived_token: Some("kommo-test-token".to_string()),
            oauth: None,
            account_id: 31_000_001,
            current_user_id: 1,
            api_filter_enabled: true,
        }
    }
}

/// OAuth settings of a [`KommoSim`]: the initial refresh token is the only credential; the first
/// access token is obtained by refreshing.
#[derive(Clone, Debug)]
pub struct OAuthSim {
    /// Expected `client_id`.
    pub client_id: String,
    /// Expected `client_secret`.
    pub client_secret: String,
    /// Expected `redirect_uri`.
    pub redirect_uri: String,
    /// The currently valid refresh token.
    pub refresh_token: String,
    /// Lifetime of issued access tokens, in seconds on the clock.
    pub access_ttl_secs: i64,
}

impl Default for OAuthSim {
    fn default() -> Self {
        OAuthSim {
            client_id: "sim-client-id".to_string(),
            client_secret: "sim-client-secret".to_string(),
            redirect_uri: "https://example.com/oauth/callback".to_string(),
            refresh_token: "def50200-initial-refresh-token".to_string(),
            access_ttl_secs: 86_400,
        }
    }
}

/// The four Kommo card kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CardKind {
    /// `leads` / `lead`
    Lead,
    /// `contacts` / `contact`
    Contact,
    /// `companies` / `company`
    Company,
    /// `customers` / `customer`
    Customer,
}

impl CardKind {
    /// All kinds.
    pub const ALL: [CardKind; 4] = [
        CardKind::Lead,
        CardKind::Contact,
        CardKind::Company,
        CardKind::Customer,
    ];

    /// Plural path / collection name (`leads`).
    pub fn path(self) -> &'static str {
        match self {
            CardKind::Lead => "leads",
            CardKind::Contact => "contacts",
            CardKind::Company => "companies",
            CardKind::Customer => "customers",
        }
    }

    /// Singular event `entity_type` (`lead`).
    pub fn singular(self) -> &'static str {
        match self {
            CardKind::Lead => "lead",
            CardKind::Contact => "contact",
            CardKind::Company => "company",
            CardKind::Customer => "customer",
        }
    }

    /// Parses a plural or singular name.
    pub fn parse(s: &str) -> Option<CardKind> {
        CardKind::ALL
            .into_iter()
            .find(|k| k.path() == s || k.singular() == s)
    }

    fn from_path(s: &str) -> Option<CardKind> {
        CardKind::ALL.into_iter().find(|k| k.path() == s)
    }

    fn idx(self) -> usize {
        self as usize
    }

    fn must(s: &str) -> CardKind {
        CardKind::parse(s).unwrap_or_else(|| panic!("unknown Kommo card kind {s:?}"))
    }
}

/// A custom field value set, rendered like `kommo.md` 3.5.
#[derive(Clone, Debug, PartialEq)]
pub struct SimField {
    /// Field id.
    pub field_id: u64,
    /// Field code (`PHONE`, ...), if any.
    pub field_code: Option<String>,
    /// Field type (`checkbox`, `text`, `multitext`, ...).
    pub field_type: String,
    /// The `values` array items.
    pub values: Vec<Value>,
}

impl SimField {
    /// A checkbox field: `values: [{"value": checked}]`.
    pub fn checkbox(field_id: u64, checked: bool) -> Self {
        SimField {
            field_id,
            field_code: None,
            field_type: "checkbox".to_string(),
            values: vec![json!({ "value": checked })],
        }
    }

    /// A text field with one `{"value": ..}` per string.
    pub fn text(field_id: u64, code: Option<&str>, values: &[&str]) -> Self {
        SimField {
            field_id,
            field_code: code.map(str::to_string),
            field_type: "text".to_string(),
            values: values.iter().map(|v| json!({ "value": v })).collect(),
        }
    }

    /// The standard phone field: id 3, code `PHONE`, type `multitext`, `enum_code` `WORK`.
    pub fn phones(phones: &[&str]) -> Self {
        SimField {
            field_id: 3,
            field_code: Some("PHONE".to_string()),
            field_type: "multitext".to_string(),
            values: phones
                .iter()
                .map(|p| json!({ "value": p, "enum_id": 1, "enum_code": "WORK" }))
                .collect(),
        }
    }

    fn to_json(&self) -> Value {
        let name = match self.field_code.as_deref() {
            Some("PHONE") => "Phone".to_string(),
            Some("EMAIL") => "Email".to_string(),
            Some(code) => code.to_string(),
            None => format!("Field {}", self.field_id),
        };
        json!({
            "field_id": self.field_id,
            "field_name": name,
            "field_code": self.field_code,
            "field_type": self.field_type,
            "values": self.values,
        })
    }
}

/// A card (lead, contact, company or customer).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimCard {
    /// Card id.
    pub id: u64,
    /// Card name.
    pub name: String,
    /// Responsible Kommo user id.
    pub responsible_user_id: u64,
    /// Creation time (0: set to now by `add_card`).
    pub created_at: i64,
    /// Last update time (0: set to now by `add_card`).
    pub updated_at: i64,
    /// Deleted (hidden from normal reads).
    pub is_deleted: bool,
    /// Custom fields (`null` in JSON when empty).
    pub custom_fields_values: Vec<SimField>,
    /// Linked contact ids (leads, companies, customers); the first one is the main contact.
    pub contacts: Vec<u64>,
    /// Leads only: the stage, `(pipeline_id, status_id)`. `None` when adding: the main
    /// pipeline's first normal status (filled in by `add_card`).
    pub status: Option<(u64, u64)>,
    /// Leads only: `closed_at` (set by `add_card` for a lead added in 142/143 without one).
    pub closed_at: Option<i64>,
}

impl SimCard {
    /// A card with the given id, name and responsible; timestamps are set when added.
    pub fn new(id: u64, name: impl Into<String>, responsible_user_id: u64) -> Self {
        SimCard {
            id,
            name: name.into(),
            responsible_user_id,
            ..SimCard::default()
        }
    }

    /// Adds (or replaces, by `field_id`) a custom field.
    pub fn with_field(mut self, field: SimField) -> Self {
        replace_field(&mut self.custom_fields_values, field);
        self
    }

    /// Sets the linked contacts.
    pub fn with_contacts(mut self, contacts: &[u64]) -> Self {
        self.contacts = contacts.to_vec();
        self
    }

    /// Leads: puts the lead into a stage (not checked against the pipelines, so a lead can sit
    /// in a stage the account no longer has).
    pub fn with_status(mut self, pipeline_id: u64, status_id: u64) -> Self {
        self.status = Some((pipeline_id, status_id));
        self
    }
}

fn replace_field(fields: &mut Vec<SimField>, field: SimField) {
    match fields.iter_mut().find(|f| f.field_id == field.field_id) {
        Some(f) => *f = field,
        None => fields.push(field),
    }
}

/// A Kommo user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimUser {
    /// User id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// E-mail.
    pub email: String,
    /// `rights.is_active`.
    pub active: bool,
}

#[derive(Clone, Debug)]
struct CardEntry {
    card: SimCard,
    created_by: u64,
    updated_by: u64,
}

/// An event. The filter keys are kept apart from the body so that a raw event (served exactly
/// as given, see [`KommoSim::push_raw_event`]) filters like the others.
#[derive(Clone, Debug)]
struct EventRec {
    id: String,
    seq: u64,
    event_type: String,
    /// Singular `entity_type` (`lead`); whatever string a raw event carries.
    entity_type: String,
    entity_id: Option<u64>,
    created_by: Option<u64>,
    created_at: i64,
    body: EventBody,
}

#[derive(Clone, Debug)]
enum EventBody {
    Values {
        value_before: Value,
        value_after: Value,
    },
    Raw(Value),
}

#[derive(Debug)]
struct OAuthState {
    cfg: OAuthSim,
    refresh: String,
    refresh_exp: i64,
    access: Option<(String, i64)>,
    refresh_count: u64,
    /// Authorization codes not used yet, with their expiry.
    codes: HashMap<String, i64>,
    /// Codes already exchanged.
    used_codes: HashSet<String>,
    /// Successful code exchanges.
    code_exchanges: u64,
    /// The account's new domain after a rename ([`KommoSim::move_account`]).
    moved_to: Option<String>,
}

/// How long an authorization code lives (AMO `oauth/oauth.md` L54: 20 minutes).
const AUTH_CODE_TTL_SECS: i64 = 20 * 60;

struct KState {
    users: BTreeMap<u64, SimUser>,
    cards: [BTreeMap<u64, CardEntry>; 4],
    pipelines: BTreeMap<u64, SimPipeline>,
    unsorted: Vec<SimUnsorted>,
    field_defs: [BTreeMap<u64, SimFieldDef>; 4],
    field_def_seq: u64,
    overrides: HashMap<(CardKind, u64), JsonOverride>,
    events: Vec<EventRec>,
    event_seq: u64,
    long_lived: Option<String>,
    oauth: Option<OAuthState>,
    api_filter_enabled: bool,
    /// Users a PATCH may not assign (refused with `NotSupportedChoice`, as for an unknown user).
    refused_assignees: HashSet<u64>,
    page_cap: Option<u64>,
    webhooks: Vec<(String, Vec<String>)>,
    /// Destinations of the hooks Kommo has switched off (served as `disabled: true`).
    disabled_hooks: BTreeSet<String>,
    /// When set, `GET`/`POST /api/v4/webhooks` answer this status (a plan or rights refusal).
    webhooks_refused: Option<u16>,
    /// A POST to a disabled hook leaves it disabled (else it switches it on again).
    post_keeps_disabled: bool,
    patch_count: u64,
    written: [Vec<u64>; 4],
    rng: XorShift,
    token_seq: u64,
}

struct Shared {
    state: Mutex<KState>,
    faults: Faults,
    clock: SimClock,
    base_url: String,
    server: ServerTask,
    account_id: u64,
    current_user_id: u64,
}

/// Handle to a running fake Kommo server. Cheap to clone; all clones share the state.
#[derive(Clone)]
pub struct KommoSim {
    shared: Arc<Shared>,
}

impl KommoSim {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(cfg: KommoSimConfig) -> std::io::Result<KommoSim> {
        let (listener, base_url, port) = bind_local().await?;
        let clock = cfg.clock.unwrap_or_default();
        let now = clock.now();
        let oauth = cfg.oauth.map(|o| OAuthState {
            refresh: o.refresh_token.clone(),
            refresh_exp: now + REFRESH_TTL_SECS,
            cfg: o,
            access: None,
            refresh_count: 0,
            codes: HashMap::new(),
            used_codes: HashSet::new(),
            code_exchanges: 0,
            moved_to: None,
        });
        let state = KState {
            users: BTreeMap::new(),
            cards: Default::default(),
            pipelines: pipelines::default_pipelines(),
            unsorted: Vec::new(),
            field_defs: Default::default(),
            field_def_seq: 0,
            overrides: HashMap::new(),
            events: Vec::new(),
            event_seq: 0,
            long_lived: cfg.long_lived_token,
            oauth,
            api_filter_enabled: cfg.api_filter_enabled,
            refused_assignees: HashSet::new(),
            page_cap: None,
            webhooks: Vec::new(),
            disabled_hooks: BTreeSet::new(),
            webhooks_refused: None,
            post_keeps_disabled: false,
            patch_count: 0,
            written: Default::default(),
            rng: XorShift::new(0x4B4F_4D4D_4F00_0000 ^ u64::from(port) ^ (now as u64) << 16),
            token_seq: 0,
        };
        let sim = KommoSim {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                faults: Faults::default(),
                clock,
                base_url,
                server: ServerTask::new(),
                account_id: cfg.account_id,
                current_user_id: cfg.current_user_id,
            }),
        };
        let router = Router::new().fallback(entry).with_state(sim.clone());
        sim.shared.server.spawn(listener, router);
        Ok(sim)
    }

    fault_methods!();

    /// Makes every request answer `403` with an nginx HTML page (a persistent IP block) until
    /// called with `false`.
    pub fn set_blocked(&self, blocked: bool) {
        self.shared.faults.set_blocked(blocked);
    }

    fn lock(&self) -> MutexGuard<'_, KState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account's `current_user_id`.
    pub fn current_user_id(&self) -> u64 {
        self.shared.current_user_id
    }

    /// The account id.
    pub fn account_id(&self) -> u64 {
        self.shared.account_id
    }

    /// Makes a PATCH that assigns `user` refused for that item (`validation-errors`,
    /// `NotSupportedChoice`), though the user is listed (e.g. a user without rights to the
    /// pipeline); `false` accepts it again.
    pub fn refuse_assignments_to(&self, user: u64, refuse: bool) {
        let mut st = self.lock();
        if refuse {
            st.refused_assignees.insert(user);
        } else {
            st.refused_assignees.remove(&user);
        }
    }

    /// Turns the API filter add-on on or off (see the module docs).
    pub fn set_api_filter_enabled(&self, enabled: bool) {
        self.lock().api_filter_enabled = enabled;
    }

    /// The webhooks registered (`POST /api/v4/webhooks`): `(destination, settings)`.
    pub fn webhooks(&self) -> Vec<(String, Vec<String>)> {
        self.lock().webhooks.clone()
    }

    /// Switches the hook at `destination` off, as Kommo does after more than 100 invalid answers
    /// in 2 hours (`webhooks-format.md` L505-509): it is listed with `disabled: true`.
    pub fn disable_webhook(&self, destination: &str) {
        self.lock().disabled_hooks.insert(destination.to_string());
    }

    /// Whether the hook at `destination` is switched off.
    pub fn webhook_disabled(&self, destination: &str) -> bool {
        self.lock().disabled_hooks.contains(destination)
    }

    /// Makes `GET`/`POST /api/v4/webhooks` answer `status` (problem+json) until called with
    /// `None`: an account whose plan lacks the webhooks API (`webhooks-format.md` L7), or a token
    /// without admin rights. Which status real Kommo sends for the plan is not documented.
    pub fn refuse_webhooks(&self, status: Option<u16>) {
        self.lock().webhooks_refused = status;
    }

    /// With `true`, a POST to a disabled hook leaves it disabled (the docs do not say whether a
    /// POST switches it on again; by default the simulator does).
    pub fn keep_webhooks_disabled_on_post(&self, keep: bool) {
        self.lock().post_keeps_disabled = keep;
    }

    /// Silently serves card-list pages of at most `cap` items whatever `limit` asks (Kommo once
    /// changed a page size under its clients: amocrm-api-php #528); `next` links follow the cap.
    pub fn set_page_cap(&self, cap: Option<u64>) {
        self.lock().page_cap = cap;
    }

    // ----- users -----

    /// Adds (or replaces) a user.
    pub fn add_user(&self, id: u64, name: &str, email: &str, active: bool) {
        self.lock().users.insert(
            id,
            SimUser {
                id,
                name: name.to_string(),
                email: email.to_string(),
                active,
            },
        );
    }

    /// Sets `rights.is_active` of a user.
    ///
    /// # Panics
    /// If the user does not exist.
    pub fn set_user_active(&self, id: u64, active: bool) {
        self.lock()
            .users
            .get_mut(&id)
            .unwrap_or_else(|| panic!("unknown Kommo user {id}"))
            .active = active;
    }

    /// Removes a user (cards keep pointing at the id).
    pub fn remove_user(&self, id: u64) {
        self.lock().users.remove(&id);
    }

    /// All users, by id.
    pub fn users(&self) -> Vec<SimUser> {
        self.lock().users.values().cloned().collect()
    }

    // ----- cards -----

    /// Adds (or replaces) a card; `created_at`/`updated_at` of 0 become now. A lead without a
    /// status gets the main pipeline's first normal status; a lead in 142/143 without
    /// `closed_at` gets `closed_at = updated_at`.
    ///
    /// # Panics
    /// On an unknown kind (every card method accepts `leads`/`lead` etc.).
    pub fn add_card(&self, kind: &str, card: SimCard) {
        self.add_cards(kind, [card]);
    }

    /// Adds many cards under one lock (fast bulk world building).
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn add_cards(&self, kind: &str, cards: impl IntoIterator<Item = SimCard>) {
        let kind = CardKind::must(kind);
        let now = self.shared.clock.now();
        let mut st = self.lock();
        let default_status = st.default_status();
        for mut card in cards {
            if card.created_at == 0 {
                card.created_at = now;
            }
            if card.updated_at == 0 {
                card.updated_at = now;
            }
            if kind == CardKind::Lead {
                let status = *card.status.get_or_insert(default_status);
                if pipelines::is_closed(status.1) && card.closed_at.is_none() {
                    card.closed_at = Some(card.updated_at);
                }
            }
            st.cards[kind.idx()].insert(
                card.id,
                CardEntry {
                    card,
                    created_by: 0,
                    updated_by: 0,
                },
            );
        }
    }

    /// A card (deleted ones included).
    pub fn card(&self, kind: &str, id: u64) -> Option<SimCard> {
        let kind = CardKind::must(kind);
        self.lock().cards[kind.idx()]
            .get(&id)
            .map(|e| e.card.clone())
    }

    /// The responsible of a card, if it exists.
    pub fn responsible_of(&self, kind: &str, id: u64) -> Option<u64> {
        self.card(kind, id).map(|c| c.responsible_user_id)
    }

    /// All cards of a kind (deleted ones included), by id.
    pub fn cards(&self, kind: &str) -> Vec<SimCard> {
        let kind = CardKind::must(kind);
        self.lock().cards[kind.idx()]
            .values()
            .map(|e| e.card.clone())
            .collect()
    }

    fn with_card<R>(
        &self,
        kind: &str,
        id: u64,
        f: impl FnOnce(&mut KState, CardKind, i64) -> R,
    ) -> R {
        let kind = CardKind::must(kind);
        let now = self.shared.clock.now();
        let mut st = self.lock();
        assert!(
            st.cards[kind.idx()].contains_key(&id),
            "unknown Kommo {} {id}",
            kind.singular()
        );
        f(&mut st, kind, now)
    }

    /// A person changes the responsible in the UI: updates, bumps `updated_at`, sets `updated_by`
    /// and, only if the value changed, appends an `entity_responsible_changed` event with
    /// `created_by = by_user`.
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn set_responsible_as_human(&self, kind: &str, id: u64, user_id: u64, by_user: u64) {
        self.with_card(kind, id, |st, kind, now| {
            st.set_responsible(kind, id, user_id, by_user, now);
        });
    }

    /// Sets the responsible without an event and without touching `updated_at` (world setup).
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn set_responsible_silently(&self, kind: &str, id: u64, user_id: u64) {
        self.with_card(kind, id, |st, kind, _| {
            if let Some(e) = st.cards[kind.idx()].get_mut(&id) {
                e.card.responsible_user_id = user_id;
            }
        });
    }

    /// Replaces (by `field_id`) or adds a custom field and bumps `updated_at`.
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn set_field(&self, kind: &str, id: u64, field: SimField) {
        self.with_card(kind, id, |st, kind, now| {
            if let Some(e) = st.cards[kind.idx()].get_mut(&id) {
                replace_field(&mut e.card.custom_fields_values, field);
                e.card.updated_at = now;
            }
        });
    }

    /// Removes a custom field and bumps `updated_at`.
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn remove_field(&self, kind: &str, id: u64, field_id: u64) {
        self.with_card(kind, id, |st, kind, now| {
            if let Some(e) = st.cards[kind.idx()].get_mut(&id) {
                e.card
                    .custom_fields_values
                    .retain(|f| f.field_id != field_id);
                e.card.updated_at = now;
            }
        });
    }

    /// Links a contact to a lead/company/customer (no-op if already linked); bumps `updated_at`.
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn link_contact(&self, kind: &str, id: u64, contact_id: u64) {
        self.with_card(kind, id, |st, kind, now| {
            if let Some(e) = st.cards[kind.idx()].get_mut(&id)
                && !e.card.contacts.contains(&contact_id)
            {
                e.card.contacts.push(contact_id);
                e.card.updated_at = now;
            }
        });
    }

    /// Unlinks a contact; bumps `updated_at` if it was linked.
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn unlink_contact(&self, kind: &str, id: u64, contact_id: u64) {
        self.with_card(kind, id, |st, kind, now| {
            if let Some(e) = st.cards[kind.idx()].get_mut(&id)
                && e.card.contacts.contains(&contact_id)
            {
                e.card.contacts.retain(|c| *c != contact_id);
                e.card.updated_at = now;
            }
        });
    }

    /// Marks a card deleted and bumps `updated_at`.
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn delete_card(&self, kind: &str, id: u64) {
        self.with_card(kind, id, |st, kind, now| {
            if let Some(e) = st.cards[kind.idx()].get_mut(&id) {
                e.card.is_deleted = true;
                e.card.updated_at = now;
            }
        });
    }

    /// Restores a deleted card and bumps `updated_at`.
    ///
    /// # Panics
    /// On an unknown kind or card.
    pub fn restore_card(&self, kind: &str, id: u64) {
        self.with_card(kind, id, |st, kind, now| {
            if let Some(e) = st.cards[kind.idx()].get_mut(&id) {
                e.card.is_deleted = false;
                e.card.updated_at = now;
            }
        });
    }

    // ----- events and writes -----

    /// Appends an event of an arbitrary type (e.g. `lead_added`, for filter tests) with empty
    /// values.
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn add_custom_event(&self, event_type: &str, kind: &str, entity_id: u64, created_by: u64) {
        let kind = CardKind::must(kind);
        let now = self.shared.clock.now();
        self.lock().push_event(
            event_type,
            kind,
            entity_id,
            created_by,
            now,
            json!([]),
            json!([]),
        );
    }

    /// Appends an event served exactly as given (e.g. one whose values do not fit the documented
    /// types), until [`KommoSim::clear_raw_events`]. It is filtered like the others by the
    /// values it carries: `type`, `entity_type`, `entity_id`, `created_by` (numbers only),
    /// `created_at` (a number; when missing or not a number: now, for filtering and order only)
    /// and `id` (a string or number; when missing, a generated id reaches it through
    /// `GET /api/v4/events/{id}` but is not added to the body).
    pub fn push_raw_event(&self, event: Value) {
        let now = self.shared.clock.now();
        let mut st = self.lock();
        let (generated, seq) = st.next_event_id();
        let id = match event.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => generated,
        };
        let text = |k: &str| {
            event
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        st.events.push(EventRec {
            id,
            seq,
            event_type: text("type"),
            entity_type: text("entity_type"),
            entity_id: event.get("entity_id").and_then(Value::as_u64),
            created_by: event.get("created_by").and_then(Value::as_u64),
            created_at: event
                .get("created_at")
                .and_then(Value::as_i64)
                .unwrap_or(now),
            body: EventBody::Raw(event),
        });
    }

    /// Removes every event added by [`KommoSim::push_raw_event`].
    pub fn clear_raw_events(&self) {
        self.lock()
            .events
            .retain(|e| !matches!(e.body, EventBody::Raw(_)));
    }

    /// Makes one card malformed as served (lists, `GET /{kind}/{id}`, `with=only_deleted`) until
    /// cleared: an object's keys are merged into (replace) the card's keys, e.g.
    /// `{"responsible_user_id": "504141"}`; any other value replaces the whole card. Applied
    /// after rendering, so filtering, ordering and PATCH still use the card's real values, and
    /// later changes to the card (PATCH, human edits) do not remove it. Replaces an earlier
    /// merge value of the same card.
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn set_card_json_override(&self, kind: &str, id: u64, value: Value) {
        let kind = CardKind::must(kind);
        self.lock().overrides.entry((kind, id)).or_default().merge = Some(value);
    }

    /// Makes one card served without these keys (e.g. `responsible_user_id`) until cleared;
    /// adds to the card's earlier removals.
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn remove_card_json_keys(&self, kind: &str, id: u64, keys: &[&str]) {
        let kind = CardKind::must(kind);
        let mut st = self.lock();
        let ov = st.overrides.entry((kind, id)).or_default();
        ov.remove.extend(keys.iter().map(|k| (*k).to_string()));
    }

    /// Serves the card as it is again (drops its override and removals).
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn clear_card_json_override(&self, kind: &str, id: u64) {
        let kind = CardKind::must(kind);
        self.lock().overrides.remove(&(kind, id));
    }

    /// Drops every card override and removal.
    pub fn clear_card_json_overrides(&self) {
        self.lock().overrides.clear();
    }

    /// All events, as rendered by the API, in (created_at, insertion) order.
    pub fn events(&self) -> Vec<Value> {
        let st = self.lock();
        let mut evs: Vec<&EventRec> = st.events.iter().collect();
        evs.sort_by_key(|e| (e.created_at, e.seq));
        evs.into_iter()
            .map(|e| event_json(e, &self.shared.base_url, self.shared.account_id))
            .collect()
    }

    /// Number of PATCH requests that reached the handler (see the module docs).
    pub fn patch_count(&self) -> u64 {
        self.lock().patch_count
    }

    /// Every card id whose responsible was set through PATCH, in order, duplicates kept.
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn written_ids(&self, kind: &str) -> Vec<u64> {
        let kind = CardKind::must(kind);
        self.lock().written[kind.idx()].clone()
    }

    // ----- tokens -----

    /// Number of successful OAuth refreshes.
    pub fn refresh_count(&self) -> u64 {
        self.lock().oauth.as_ref().map_or(0, |o| o.refresh_count)
    }

    /// The currently valid OAuth refresh token.
    pub fn current_refresh_token(&self) -> Option<String> {
        self.lock().oauth.as_ref().map(|o| o.refresh.clone())
    }

    /// The current OAuth access token (possibly expired).
    pub fn current_access_token(&self) -> Option<String> {
        self.lock()
            .oauth
            .as_ref()
            .and_then(|o| o.access.as_ref().map(|a| a.0.clone()))
    }

    /// Forces the current OAuth access token to be expired.
    pub fn expire_access_token(&self) {
        let now = self.shared.clock.now();
        if let Some(o) = self.lock().oauth.as_mut()
            && let Some(a) = o.access.as_mut()
        {
            a.1 = now - 1;
        }
    }

    /// A new authorization code (as Kommo shows it in the integration's window), valid for 20
    /// minutes on the clock and once. With OAuth off the code is refused like any unknown one.
    pub fn issue_auth_code(&self) -> String {
        let now = self.shared.clock.now();
        let mut st = self.lock();
        let code = format!("def50200{}", st.rng.string(b"0123456789abcdef", 64));
        if let Some(o) = st.oauth.as_mut() {
            o.codes.insert(code.clone(), now + AUTH_CODE_TTL_SECS);
        }
        code
    }

    /// Number of authorization codes exchanged for a pair.
    pub fn code_exchange_count(&self) -> u64 {
        self.lock().oauth.as_ref().map_or(0, |o| o.code_exchanges)
    }

    /// Revokes the OAuth pair (as when an admin switches the integration off): the refresh token
    /// and the access token stop working; only a new authorization code gives a pair again.
    pub fn revoke_oauth_pair(&self) {
        let now = self.shared.clock.now();
        if let Some(o) = self.lock().oauth.as_mut() {
            o.refresh_exp = now;
            o.access = None;
        }
    }

    /// Renames the account's subdomain to `domain` (`None`: back where it was); see the module
    /// docs for what the old domain answers.
    pub fn move_account(&self, domain: Option<&str>) {
        if let Some(o) = self.lock().oauth.as_mut() {
            o.moved_to = domain.map(str::to_string);
        }
    }

    /// Replaces (or revokes, with `None`) the accepted long-lived token.
    pub fn set_long_lived_token(&self, token: Option<String>) {
        self.lock().long_lived = token;
    }

    // ----- HTTP -----

    // Long on purpose: the routing table of the simulated Kommo API, one arm per endpoint.
    fn route(&self, inc: Incoming) -> Response {
        let segs = segments(&inc.path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let now = self.shared.clock.now();
        let mut st = self.lock();
        if segs == ["oauth2", "access_token"] {
            if inc.method != Method::POST {
                return method_not_allowed();
            }
            return self.oauth_token(&mut st, &inc, now);
        }
        if segs == ["oauth2", "account", "current", "subdomain"] {
            if inc.method != Method::GET {
                return method_not_allowed();
            }
            return self.account_subdomain(&st, &inc, now);
        }
        if segs.len() < 3 || segs[0] != "api" || segs[1] != "v4" {
            return not_found(&self.shared.base_url, &inc);
        }
        if !st.authorized(&inc, now) {
            return kommo_problem(StatusCode::UNAUTHORIZED, "Invalid user name or password");
        }
        let get = inc.method == Method::GET;
        let patch = inc.method == Method::PATCH;
        let kind_of = |s: &str| CardKind::from_path(s);
        match &segs[2..] {
            ["leads", "pipelines"] if get => self.pipelines_list(&st),
            ["leads", "pipelines", id] if get => self.pipeline_get(&st, id),
            ["leads", "pipelines", id, "statuses"] if get => self.statuses_list(&st, id),
            ["leads", "pipelines", id, "statuses", sid] if get => self.status_get(&st, id, sid),
            ["leads", "unsorted"] if get => self.unsorted_list(&st, &inc),
            ["leads", "unsorted", uid] if get => self.unsorted_get(&st, uid),
            ["leads", "unsorted", uid, "accept"] if inc.method == Method::POST => {
                self.unsorted_action(&mut st, uid, &inc, true, now)
            }
            ["leads", "unsorted", uid, "decline"] if inc.method == Method::DELETE => {
                self.unsorted_action(&mut st, uid, &inc, false, now)
            }
            ["leads", "pipelines" | "unsorted"]
            | ["leads", "pipelines" | "unsorted", _]
            | ["leads", "pipelines", _, "statuses"]
            | ["leads", "pipelines", _, "statuses", _]
            | ["leads", "unsorted", _, "accept" | "decline"] => method_not_allowed(),
            [kind, "custom_fields"] if get && kind_of(kind).is_some() => {
                self.fields_list(&st, kind_of(kind).unwrap_or(CardKind::Lead), &inc)
            }
            [kind, "custom_fields", id] if get && kind_of(kind).is_some() => {
                self.field_get(&st, kind_of(kind).unwrap_or(CardKind::Lead), id)
            }
            [kind, "custom_fields"] | [kind, "custom_fields", _] if kind_of(kind).is_some() => {
                method_not_allowed()
            }
            ["account"] if get => self.account(&st, &inc, now),
            ["users"] if get => self.users_list(&st, &inc),
            ["users", id] if get => match id.parse::<u64>().ok().and_then(|i| st.users.get(&i)) {
                Some(u) => json_response(StatusCode::OK, HAL, &user_json(u, &self.shared.base_url)),
                None => no_content(),
            },
            ["events"] if get => self.events_list(&st, &inc),
            ["webhooks"] if get || inc.method == Method::POST => {
                if let Some(code) = st.webhooks_refused {
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN);
                    return kommo_problem(status, "Webhooks are not available for this account");
                }
                if get {
                    webhooks_list(&st, &inc)
                } else {
                    webhooks_post(&mut st, &inc)
                }
            }
            ["events", id] if get => match st.events.iter().find(|e| e.id == *id) {
                Some(e) => json_response(
                    StatusCode::OK,
                    HAL,
                    &event_json(e, &self.shared.base_url, self.shared.account_id),
                ),
                None => no_content(),
            },
            [kind] if CardKind::from_path(kind).is_some() => {
                let kind = CardKind::from_path(kind).unwrap_or(CardKind::Lead);
                if get {
                    self.cards_list(&st, kind, &inc)
                } else if patch {
                    self.patch(&mut st, kind, &inc, None, now)
                } else {
                    method_not_allowed()
                }
            }
            [kind, id] if CardKind::from_path(kind).is_some() => {
                let kind = CardKind::from_path(kind).unwrap_or(CardKind::Lead);
                let Ok(id) = id.parse::<u64>() else {
                    return not_found(&self.shared.base_url, &inc);
                };
                if get {
                    self.card_get(&st, kind, id, &inc)
                } else if patch {
                    self.patch(&mut st, kind, &inc, Some(id), now)
                } else {
                    method_not_allowed()
                }
            }
            ["account" | "users" | "events", ..] => method_not_allowed(),
            _ => not_found(&self.shared.base_url, &inc),
        }
    }

    fn account(&self, st: &KState, inc: &Incoming, now: i64) -> Response {
        let with = with_set(&inc.params);
        let base = &self.shared.base_url;
        let mut body = json!({
            "id": self.shared.account_id,
            "name": "Simulated account",
            "subdomain": "sim",
            "created_at": now - 86_400 * 365,
            "created_by": 0,
            "updated_at": now,
            "updated_by": 0,
            "current_user_id": self.shared.current_user_id,
            "country": "US",
            "currency": "USD",
            "currency_symbol": "$",
            "customers_mode": "segments",
            "is_unsorted_on": false,
            "is_loss_reason_enabled": false,
            "is_helpbot_enabled": false,
            "is_technical_account": false,
            "contact_name_display_order": 1,
            "_links": {"self": {"href": format!("{base}/api/v4/account")}},
        });
        if with.contains("is_api_filter_enabled") {
            body["is_api_filter_enabled"] = json!(st.api_filter_enabled);
        }
        if with.contains("amojo_id") {
            body["amojo_id"] = json!(format!("sim-amojo-{}", self.shared.account_id));
        }
        if with.contains("datetime_settings") {
            body["_embedded"] = json!({"datetime_settings": {
                "date_pattern": "d.m.Y H:i", "short_date_pattern": "d.m.Y",
                "short_time_pattern": "H:i", "date_format": "d.m.Y", "time_format": "H:i:s",
                "timezone": "UTC", "timezone_offset": "+00:00"}});
        }
        json_response(StatusCode::OK, HAL, &body)
    }

    fn users_list(&self, st: &KState, inc: &Incoming) -> Response {
        let (page, limit) = match page_limit(&inc.params, MAX_PAGE) {
            Ok(v) => v,
            Err(name) => return bad_param(name),
        };
        let total = st.users.len() as u64;
        let page_count = total.div_ceil(limit);
        let start = (page - 1) * limit;
        if start >= total {
            return no_content();
        }
        let base = &self.shared.base_url;
        let users: Vec<Value> = st
            .users
            .values()
            .skip(start as usize)
            .take(limit as usize)
            .map(|u| user_json(u, base))
            .collect();
        let mut links = json!({"self": {"href": href(base, &inc.path, &inc.query)}});
        if page < page_count {
            links["next"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page + 1)});
        }
        if page > 1 {
            links["prev"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page - 1)});
        }
        json_response(
            StatusCode::OK,
            HAL,
            &json!({
                "_total_items": total,
                "_page": page,
                "_page_count": page_count,
                "_links": links,
                "_embedded": {"users": users},
            }),
        )
    }

    // Long on purpose: Kommo's list semantics (filters, order, pages, 204) in the order the API applies them.
    fn cards_list(&self, st: &KState, kind: CardKind, inc: &Incoming) -> Response {
        let (page, limit) = match page_limit(&inc.params, MAX_PAGE) {
            Ok(v) => v,
            Err(name) => return bad_param(name),
        };
        let limit = st.page_cap.map_or(limit, |cap| limit.min(cap.max(1)));
        let q = &inc.params;
        let with = with_set(q);
        let only_deleted = with.contains("only_deleted");
        let hidden = if kind == CardKind::Contact {
            st.hidden_contacts()
        } else {
            HashSet::new()
        };
        let mut items: Vec<&CardEntry> = st.cards[kind.idx()]
            .values()
            .filter(|e| e.card.is_deleted == only_deleted && !hidden.contains(&e.card.id))
            .collect();
        if st.api_filter_enabled && kind == CardKind::Lead {
            let pipes: Option<HashSet<u64>> = multi(q, "filter[pipeline_id]")
                .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect());
            let stages = pipelines::statuses_filter(q);
            let default = st.default_status();
            items.retain(|e| {
                let (p, s) = e.card.status.unwrap_or(default);
                pipes.as_ref().is_none_or(|set| set.contains(&p))
                    && (stages.is_empty()
                        || stages
                            .iter()
                            .any(|(fp, fs)| fp.is_none_or(|x| x == p) && fs.is_none_or(|x| x == s)))
            });
        }
        if st.api_filter_enabled {
            let ids: Option<HashSet<u64>> =
                multi(q, "filter[id]").map(|v| v.iter().filter_map(|s| s.parse().ok()).collect());
            let resp: Option<HashSet<u64>> = multi(q, "filter[responsible_user_id]")
                .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect());
            let upd = range(q, "filter[updated_at]");
            let crt = range(q, "filter[created_at]");
            items.retain(|e| {
                ids.as_ref().is_none_or(|s| s.contains(&e.card.id))
                    && resp
                        .as_ref()
                        .is_none_or(|s| s.contains(&e.card.responsible_user_id))
                    && in_range(upd, e.card.updated_at)
                    && in_range(crt, e.card.created_at)
            });
            // customers: `order` is not documented (AMO `customers-api.md` L110-119): ignored
            if let Some((field, desc)) = order_param(q).filter(|_| kind != CardKind::Customer) {
                items.sort_by(|a, b| {
                    let (ka, kb) = match field {
                        "updated_at" => (a.card.updated_at, b.card.updated_at),
                        "created_at" => (a.card.created_at, b.card.created_at),
                        _ => (a.card.id as i64, b.card.id as i64),
                    };
                    let ord = if desc { kb.cmp(&ka) } else { ka.cmp(&kb) };
                    ord.then(a.card.id.cmp(&b.card.id))
                });
            }
        }
        let start = ((page - 1) * limit) as usize;
        if start >= items.len() {
            return no_content();
        }
        let slice = &items[start..(start + limit as usize).min(items.len())];
        let ctx = RenderCtx::new(st, kind, &with, slice);
        let rendered: Vec<Value> = slice
            .iter()
            .map(|e| self.card_json(st, kind, e, &with, &ctx))
            .collect();
        let base = &self.shared.base_url;
        let mut links = json!({
            "self": {"href": href(base, &inc.path, &inc.query)},
            "first": {"href": href_with_page(base, &inc.path, &inc.query, 1)},
        });
        if slice.len() as u64 == limit {
            links["next"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page + 1)});
        }
        if page > 1 {
            links["prev"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page - 1)});
        }
        let mut embedded = Map::new();
        embedded.insert(kind.path().to_string(), Value::Array(rendered));
        json_response(
            StatusCode::OK,
            HAL,
            &json!({"_page": page, "_links": links, "_embedded": embedded}),
        )
    }

    fn card_get(&self, st: &KState, kind: CardKind, id: u64, inc: &Incoming) -> Response {
        let with = with_set(&inc.params);
        let hidden = kind == CardKind::Contact && st.is_hidden_contact(id);
        match st.cards[kind.idx()].get(&id) {
            Some(e) if !e.card.is_deleted && !hidden => {
                let ctx = RenderCtx::new(st, kind, &with, &[e]);
                json_response(
                    StatusCode::OK,
                    HAL,
                    &self.card_json(st, kind, e, &with, &ctx),
                )
            }
            _ => no_content(),
        }
    }

    fn card_json(
        &self,
        st: &KState,
        kind: CardKind,
        e: &CardEntry,
        with: &HashSet<String>,
        ctx: &RenderCtx,
    ) -> Value {
        let mut v = self.card_json_plain(st, kind, e, with, ctx);
        if let Some(ov) = st.overrides.get(&(kind, e.card.id)) {
            ov.apply(&mut v);
        }
        v
    }

    /// The card as rendered before any override.
    // Long on purpose: the JSON shape of one Kommo card, field by field, as the API documents it.
    fn card_json_plain(
        &self,
        st: &KState,
        kind: CardKind,
        e: &CardEntry,
        with: &HashSet<String>,
        ctx: &RenderCtx,
    ) -> Value {
        let base = &self.shared.base_url;
        let c = &e.card;
        let self_link =
            json!({"self": {"href": format!("{base}/api/v4/{}/{}", kind.path(), c.id)}});
        if c.is_deleted {
            return json!({
                "id": c.id, "updated_at": c.updated_at, "is_deleted": true, "_links": self_link,
            });
        }
        let cfv = if c.custom_fields_values.is_empty() {
            Value::Null
        } else {
            Value::Array(
                c.custom_fields_values
                    .iter()
                    .map(|f| {
                        let mut j = f.to_json();
                        if let Some(name) = st.field_name(kind, f.field_id) {
                            j["field_name"] = json!(name);
                        }
                        j
                    })
                    .collect(),
            )
        };
        let mut v = json!({
            "id": c.id,
            "name": c.name,
            "responsible_user_id": c.responsible_user_id,
            "group_id": 0,
            "created_by": e.created_by,
            "updated_by": e.updated_by,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
            "closest_task_at": null,
            "is_deleted": false,
            "custom_fields_values": cfv,
            "account_id": self.shared.account_id,
            "_links": self_link,
        });
        match kind {
            CardKind::Lead => {
                let (pipeline_id, status_id) = c.status.unwrap_or_else(|| st.default_status());
                v["price"] = json!(0);
                v["status_id"] = json!(status_id);
                v["pipeline_id"] = json!(pipeline_id);
                v["loss_reason_id"] = Value::Null;
                v["source_id"] = Value::Null;
                v["closed_at"] = json!(c.closed_at);
                v["score"] = Value::Null;
            }
            CardKind::Contact => {
                v["first_name"] = json!("");
                v["last_name"] = json!("");
            }
            CardKind::Company => {}
            CardKind::Customer => {
                v["next_price"] = json!(0);
                v["next_date"] = Value::Null;
                v["status_id"] = json!(1);
                v["periodicity"] = json!(0);
            }
        }
        let mut emb = Map::new();
        emb.insert("tags".into(), json!([]));
        let link = |p: &str, id: u64| json!({"id": id, "_links": {"self": {"href": format!("{base}/api/v4/{p}/{id}")}}});
        match kind {
            CardKind::Contact => {
                let companies = ctx.companies_of.get(&c.id).cloned().unwrap_or_default();
                emb.insert(
                    "companies".into(),
                    companies.iter().map(|id| link("companies", *id)).collect(),
                );
                if with.contains("leads") {
                    let leads = ctx.leads_of.get(&c.id).cloned().unwrap_or_default();
                    emb.insert(
                        "leads".into(),
                        leads.iter().map(|id| link("leads", *id)).collect(),
                    );
                }
                if with.contains("customers") {
                    let cust = ctx.customers_of.get(&c.id).cloned().unwrap_or_default();
                    emb.insert(
                        "customers".into(),
                        cust.iter().map(|id| link("customers", *id)).collect(),
                    );
                }
            }
            _ => {
                if kind != CardKind::Company {
                    emb.insert("companies".into(), json!([]));
                }
                if with.contains("contacts") {
                    let live: Vec<u64> = c
                        .contacts
                        .iter()
                        .copied()
                        .filter(|id| {
                            st.cards[CardKind::Contact.idx()]
                                .get(id)
                                .is_some_and(|e| !e.card.is_deleted)
                        })
                        .collect();
                    let contacts: Vec<Value> = live
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            let mut l = link("contacts", *id);
                            l["is_main"] = json!(i == 0);
                            l
                        })
                        .collect();
                    emb.insert("contacts".into(), Value::Array(contacts));
                }
                if kind == CardKind::Company && with.contains("leads") {
                    emb.insert("leads".into(), json!([]));
                }
            }
        }
        v["_embedded"] = Value::Object(emb);
        v
    }

    // Long on purpose: one simulated PATCH endpoint, validated field by field as Kommo does; each check is a few lines and reads in order.
    fn patch(
        &self,
        st: &mut KState,
        kind: CardKind,
        inc: &Incoming,
        single: Option<u64>,
        now: i64,
    ) -> Response {
        st.patch_count += 1;
        let body: Value = match serde_json::from_slice(&inc.body) {
            Ok(v) => v,
            Err(_) if inc.body.is_empty() => {
                return kommo_problem(StatusCode::BAD_REQUEST, "Request data can not be empty");
            }
            Err(e) => {
                return kommo_problem(
                    StatusCode::BAD_REQUEST,
                    &format!("Request body is not valid JSON: {e}"),
                );
            }
        };
        let items: Vec<Value> = match (single, body) {
            (Some(id), Value::Object(mut o)) => {
                if o.get("id").is_some_and(|v| v.as_u64() != Some(id)) {
                    return validation_error(vec![(
                        "0".into(),
                        vec![("InvalidValue", "id", "The id does not match the URL")],
                    )]);
                }
                o.insert("id".into(), json!(id));
                vec![Value::Object(o)]
            }
            (None, Value::Array(a)) => a,
            _ => {
                return validation_error(vec![(
                    "0".into(),
                    vec![("InvalidType", "", "This value should be of type array.")],
                )]);
            }
        };
        if items.is_empty() {
            return kommo_problem(StatusCode::BAD_REQUEST, "Request data can not be empty");
        }
        if items.len() > MAX_PAGE as usize {
            return kommo_problem(StatusCode::UNPROCESSABLE_ENTITY, "Limit 250 per page");
        }
        let mut errors: Vec<ItemErrors> = Vec::new();
        let mut plan: Vec<(u64, Option<u64>, Value)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let rid = match item.get("request_id") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Number(n)) => Value::String(n.to_string()),
                _ => Value::String(i.to_string()),
            };
            let rid_s = rid.as_str().unwrap_or_default().to_string();
            let mut errs = Vec::new();
            let Some(obj) = item.as_object() else {
                errors.push((
                    rid_s,
                    vec![("InvalidType", "", "This value should be of type object.")],
                ));
                continue;
            };
            let id = obj.get("id").and_then(Value::as_u64);
            match id {
                None => errs.push(("InvalidType", "id", "This value should be of type int.")),
                Some(id) => {
                    if st.cards[kind.idx()]
                        .get(&id)
                        .is_none_or(|e| e.card.is_deleted)
                        || (kind == CardKind::Contact && st.is_hidden_contact(id))
                    {
                        errs.push(("NotFound", "id", "Entity not found."));
                    }
                }
            }
            let resp = match obj.get("responsible_user_id") {
                None => None,
                Some(v) => match v.as_u64() {
                    None => {
                        errs.push((
                            "InvalidType",
                            "responsible_user_id",
                            "This value should be of type int.",
                        ));
                        None
                    }
                    Some(u) => {
                        if !st.users.contains_key(&u) || st.refused_assignees.contains(&u) {
                            errs.push((
                                "NotSupportedChoice",
                                "responsible_user_id",
                                "The value you selected is not a valid choice.",
                            ));
                        }
                        Some(u)
                    }
                },
            };
            if errs.is_empty() {
                plan.push((id.unwrap_or_default(), resp, rid));
            } else {
                errors.push((rid_s, errs));
            }
        }
        if !errors.is_empty() {
            return validation_error(errors);
        }
        let me = self.shared.current_user_id;
        let base = &self.shared.base_url;
        let mut out = Vec::with_capacity(plan.len());
        for (id, resp, rid) in plan {
            match resp {
                Some(u) => {
                    st.written[kind.idx()].push(id);
                    st.set_responsible(kind, id, u, me, now);
                }
                None => {
                    if let Some(e) = st.cards[kind.idx()].get_mut(&id) {
                        e.card.updated_at = now;
                        e.updated_by = me;
                    }
                }
            }
            let updated_at = st.cards[kind.idx()]
                .get(&id)
                .map_or(now, |e| e.card.updated_at);
            out.push(json!({
                "id": id,
                "updated_at": updated_at,
                "request_id": rid,
                "_links": {"self": {"href": format!("{base}/api/v4/{}/{id}", kind.path())}},
            }));
        }
        if single.is_some() {
            let item = out.pop().unwrap_or(Value::Null);
            return json_response(StatusCode::OK, HAL, &item);
        }
        let mut embedded = Map::new();
        embedded.insert(kind.path().to_string(), Value::Array(out));
        json_response(
            StatusCode::OK,
            HAL,
            &json!({
                "_links": {"self": {"href": format!("{base}/api/v4/{}", kind.path())}},
                "_embedded": embedded,
            }),
        )
    }

    fn events_list(&self, st: &KState, inc: &Incoming) -> Response {
        let q = &inc.params;
        let page = match param(q, "page") {
            None => 1,
            Some(p) => match p.parse::<u64>() {
                Ok(p) if p >= 1 => p,
                _ => return bad_param("page"),
            },
        };
        let limit = match param(q, "limit") {
            None => 50,
            Some(l) => match l.parse::<u64>() {
                Ok(l) if l >= 1 => l.min(MAX_EVENTS_PAGE),
                _ => return bad_param("limit"),
            },
        };
        let types: Option<HashSet<String>> =
            multi(q, "filter[type]").map(|v| v.into_iter().collect());
        let entities: Option<HashSet<String>> =
            multi(q, "filter[entity]").map(|v| v.into_iter().collect());
        let entity_ids: Option<HashSet<u64>> = multi(q, "filter[entity_id]")
            .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect());
        let created_by: Option<HashSet<u64>> = multi(q, "filter[created_by]")
            .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect());
        let ids: Option<HashSet<String>> = multi(q, "filter[id]").map(|v| v.into_iter().collect());
        let created = events_created_filter(q);
        let mut evs: Vec<&EventRec> = st
            .events
            .iter()
            .filter(|e| {
                types.as_ref().is_none_or(|t| t.contains(&e.event_type))
                    && entities.as_ref().is_none_or(|t| t.contains(&e.entity_type))
                    && entity_ids
                        .as_ref()
                        .is_none_or(|t| e.entity_id.is_some_and(|i| t.contains(&i)))
                    && created_by
                        .as_ref()
                        .is_none_or(|t| e.created_by.is_some_and(|i| t.contains(&i)))
                    && ids.as_ref().is_none_or(|t| t.contains(&e.id))
                    && in_range(created, e.created_at)
            })
            .collect();
        evs.sort_by_key(|e| (e.created_at, e.seq));
        let start = ((page - 1) * limit) as usize;
        if start >= evs.len() {
            return no_content();
        }
        let slice = &evs[start..(start + limit as usize).min(evs.len())];
        let base = &self.shared.base_url;
        let items: Vec<Value> = slice
            .iter()
            .map(|e| event_json(e, base, self.shared.account_id))
            .collect();
        let mut links = json!({"self": {"href": href(base, &inc.path, &inc.query)}});
        if slice.len() as u64 == limit {
            links["next"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page + 1)});
        }
        if page > 1 {
            links["prev"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page - 1)});
        }
        json_response(
            StatusCode::OK,
            HAL,
            &json!({"_page": page, "_links": links, "_embedded": {"events": items}}),
        )
    }

    /// `POST /oauth2/access_token`: the refresh and the authorization-code grants.
    fn oauth_token(&self, st: &mut KState, inc: &Incoming, now: i64) -> Response {
        let fields = oauth_fields(&inc.body);
        let get = |k: &str| fields.get(k).map(String::as_str);
        let Some(o) = st.oauth.as_mut() else {
            return oauth_problem(
                StatusCode::BAD_REQUEST,
                "OAuth is not enabled on this account",
            );
        };
        if o.moved_to.is_some() {
            return kommo_problem(StatusCode::NOT_FOUND, "Account not found");
        }
        if get("client_id") != Some(o.cfg.client_id.as_str())
            || get("client_secret") != Some(o.cfg.client_secret.as_str())
        {
            return oauth_problem(StatusCode::UNAUTHORIZED, "Client authentication failed");
        }
        if !matches!(
            get("grant_type"),
            Some("refresh_token" | "authorization_code")
        ) {
            return oauth_problem(
                StatusCode::BAD_REQUEST,
                "The authorization grant type is not supported by the authorization server.",
            );
        }
        if get("redirect_uri") != Some(o.cfg.redirect_uri.as_str()) {
            return oauth_problem(StatusCode::BAD_REQUEST, "Invalid redirect_uri");
        }
        if get("grant_type") == Some("authorization_code") {
            if let Err(hint) = o.take_code(get("code"), now) {
                return oauth_problem(StatusCode::BAD_REQUEST, hint);
            }
            o.code_exchanges += 1;
        } else if get("refresh_token") != Some(o.refresh.as_str()) || now >= o.refresh_exp {
            return oauth_problem(StatusCode::UNAUTHORIZED, "Token has been revoked");
        } else {
            o.refresh_count += 1;
        }
        self.issue_pair(st, now)
    }

    /// Issues a new pair (it replaces the current one) and answers it as Kommo does.
    fn issue_pair(&self, st: &mut KState, now: i64) -> Response {
        let tok_seq = st.token_seq + 1;
        let sig_seed = st.rng.next_u64();
        let refresh_suffix = st.rng.string(b"0123456789abcdef", 48);
        let api_domain = self.own_authority();
        let Some(o) = st.oauth.as_mut() else {
            return oauth_problem(
                StatusCode::BAD_REQUEST,
                "OAuth is not enabled on this account",
            );
        };
        let exp = now + o.cfg.access_ttl_secs;
        let access = fake_jwt_seeded(
            &json!({
                "aud": o.cfg.client_id,
                "jti": format!("sim-jti-{tok_seq}-{sig_seed:x}"),
                "iat": now,
                "nbf": now,
                "exp": exp,
                "sub": self.shared.current_user_id.to_string(),
                "account_id": self.shared.account_id,
                "api_domain": api_domain,
                "scopes": ["crm", "notifications"],
            }),
            sig_seed,
        );
        let refresh = format!("def50200{refresh_suffix}{tok_seq:x}");
        o.refresh = refresh.clone();
        o.refresh_exp = now + REFRESH_TTL_SECS;
        o.access = Some((access.clone(), exp));
        let ttl = o.cfg.access_ttl_secs;
        st.token_seq = tok_seq;
        json_response(
            StatusCode::OK,
            "application/json",
            &json!({
                "token_type": "Bearer",
                "expires_in": ttl,
                "server_time": now,
                "access_token": access,
                "refresh_token": refresh,
            }),
        )
    }

    /// `GET /oauth2/account/current/subdomain` (AMO `oauth/account-subdomain-info.md`): the
    /// account's domain for an active refresh token in `X-Refresh-Token`, else 401.
    fn account_subdomain(&self, st: &KState, inc: &Incoming, now: i64) -> Response {
        let given = inc
            .headers
            .get("x-refresh-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let Some(o) = st
            .oauth
            .as_ref()
            .filter(|o| given == Some(o.refresh.as_str()) && now < o.refresh_exp)
        else {
            return oauth_problem(StatusCode::UNAUTHORIZED, "Refresh token is invalid");
        };
        let domain = o.moved_to.clone().unwrap_or_else(|| self.own_authority());
        let subdomain = domain.split('.').next().unwrap_or_default().to_string();
        let tld = domain.rsplit('.').next().unwrap_or_default().to_string();
        json_response(
            StatusCode::OK,
            "application/json",
            &json!({
                "id": self.shared.account_id,
                "subdomain": subdomain,
                "domain": domain,
                "top_level_domain": tld,
            }),
        )
    }

    /// The simulator's `host:port` (its `api_domain` and, until a move, its account domain).
    fn own_authority(&self) -> String {
        let base = &self.shared.base_url;
        base.split_once("://")
            .map_or(base.as_str(), |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string()
    }
}

impl OAuthState {
    /// Uses up an authorization code; a missing, unknown, used or expired one is refused (the
    /// hint of Kommo's 400).
    fn take_code(&mut self, code: Option<&str>, now: i64) -> Result<(), &'static str> {
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err("Check the `code` parameter");
        };
        if self.used_codes.contains(code) {
            return Err("Authorization code has been revoked");
        }
        let Some(exp) = self.codes.remove(code) else {
            return Err("Cannot decrypt the authorization code");
        };
        self.used_codes.insert(code.to_string());
        if now >= exp {
            return Err("Authorization code has expired");
        }
        Ok(())
    }
}

/// The fields of an OAuth request body: JSON, or form-encoded.
fn oauth_fields(body: &[u8]) -> HashMap<String, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => o
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, s)
            })
            .collect(),
        _ => parse_query(std::str::from_utf8(body).unwrap_or(""))
            .into_iter()
            .collect(),
    }
}

async fn entry(State(sim): State<KommoSim>, req: Request) -> Response {
    let now = sim.shared.clock.now();
    let shared = sim.shared.clone();
    process(&shared.faults, Flavor::Kommo, now, req, |inc| {
        sim.route(inc)
    })
    .await
}

impl KState {
    fn authorized(&self, inc: &Incoming, now: i64) -> bool {
        let Some(tok) = inc
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return false;
        };
        if let Some(ll) = &self.long_lived
            && ll == tok
        {
            return jwt_exp(tok).is_none_or(|exp| now < exp);
        }
        if let Some(o) = &self.oauth
            && let Some((access, exp)) = &o.access
            && access == tok
        {
            return now < *exp && o.moved_to.is_none();
        }
        false
    }

    fn set_responsible(&mut self, kind: CardKind, id: u64, user: u64, by: u64, now: i64) {
        let Some(e) = self.cards[kind.idx()].get_mut(&id) else {
            return;
        };
        let before = e.card.responsible_user_id;
        e.card.responsible_user_id = user;
        e.card.updated_at = now;
        e.updated_by = by;
        if before != user {
            self.push_event(
                "entity_responsible_changed",
                kind,
                id,
                by,
                now,
                json!([{"responsible_user": {"id": before}}]),
                json!([{"responsible_user": {"id": user}}]),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_event(
        &mut self,
        event_type: &str,
        entity: CardKind,
        entity_id: u64,
        created_by: u64,
        created_at: i64,
        value_before: Value,
        value_after: Value,
    ) {
        let (id, seq) = self.next_event_id();
        self.events.push(EventRec {
            id,
            seq,
            event_type: event_type.to_string(),
            entity_type: entity.singular().to_string(),
            entity_id: Some(entity_id),
            created_by: Some(created_by),
            created_at,
            body: EventBody::Values {
                value_before,
                value_after,
            },
        });
    }

    /// The next event's id (`01j` + 23 base-36 digits of a sequence number) and sequence.
    fn next_event_id(&mut self) -> (String, u64) {
        self.event_seq += 1;
        let seq = self.event_seq;
        let mut b36 = String::new();
        let mut n = seq;
        while n > 0 {
            b36.insert(0, char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
            n /= 36;
        }
        (format!("01j{b36:0>23}"), seq)
    }
}

/// `(code, path, detail)` of one validation error.
type FieldError = (&'static str, &'static str, &'static str);
/// Validation errors of one `request_id`.
type ItemErrors = (String, Vec<FieldError>);

/// Reverse-link indexes needed to render one page.
#[derive(Default)]
struct RenderCtx {
    leads_of: HashMap<u64, Vec<u64>>,
    customers_of: HashMap<u64, Vec<u64>>,
    companies_of: HashMap<u64, Vec<u64>>,
}

impl RenderCtx {
    fn new(st: &KState, kind: CardKind, with: &HashSet<String>, page: &[&CardEntry]) -> Self {
        let mut ctx = RenderCtx::default();
        if kind != CardKind::Contact {
            return ctx;
        }
        let wanted: HashSet<u64> = page.iter().map(|e| e.card.id).collect();
        let index = |k: CardKind, out: &mut HashMap<u64, Vec<u64>>| {
            for e in st.cards[k.idx()].values().filter(|e| !e.card.is_deleted) {
                for c in &e.card.contacts {
                    if wanted.contains(c) {
                        out.entry(*c).or_default().push(e.card.id);
                    }
                }
            }
        };
        index(CardKind::Company, &mut ctx.companies_of);
        if with.contains("leads") {
            index(CardKind::Lead, &mut ctx.leads_of);
        }
        if with.contains("customers") {
            index(CardKind::Customer, &mut ctx.customers_of);
        }
        ctx
    }
}

fn event_json(e: &EventRec, base: &str, account_id: u64) -> Value {
    let (value_before, value_after) = match &e.body {
        EventBody::Raw(v) => return v.clone(),
        EventBody::Values {
            value_before,
            value_after,
        } => (value_before, value_after),
    };
    let path: &str = match CardKind::parse(&e.entity_type) {
        Some(k) => k.path(),
        None => &e.entity_type,
    };
    let entity_id = e.entity_id.unwrap_or_default();
    json!({
        "id": e.id,
        "type": e.event_type,
        "entity_id": entity_id,
        "entity_type": e.entity_type,
        "created_by": e.created_by.unwrap_or_default(),
        "created_at": e.created_at,
        "value_after": value_after,
        "value_before": value_before,
        "account_id": account_id,
        "_links": {"self": {"href": format!("{base}/api/v4/events/{}", e.id)}},
        "_embedded": {"entity": {"id": entity_id, "_links": {"self": {"href":
            format!("{base}/api/v4/{path}/{entity_id}")}}}},
    })
}

/// `GET /api/v4/webhooks[?filter[destination]=URL]` (`webhooks-api.md` L79): 204 when none.
fn webhooks_list(st: &KState, inc: &Incoming) -> Response {
    let dest = param(&inc.params, "filter[destination]");
    let items: Vec<Value> = st
        .webhooks
        .iter()
        .enumerate()
        .filter(|(_, (d, _))| dest.is_none_or(|x| x == d))
        .map(|(i, (d, set))| webhook_json(st, i, d, set))
        .collect();
    if items.is_empty() {
        return no_content();
    }
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_total_items": items.len(), "_embedded": {"webhooks": items}}),
    )
}

/// `POST /api/v4/webhooks`: creates the hook, or updates the one at the same destination
/// (`webhooks-api.md` L135); 201 with the hook. A disabled hook is switched on again unless
/// [`KommoSim::keep_webhooks_disabled_on_post`] says otherwise.
fn webhooks_post(st: &mut KState, inc: &Incoming) -> Response {
    let body: Value = serde_json::from_slice(&inc.body).unwrap_or(Value::Null);
    let dest = body
        .get("destination")
        .and_then(Value::as_str)
        .map(str::to_string);
    let settings: Option<Vec<String>> = body.get("settings").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect()
    });
    match (dest, settings) {
        (Some(d), Some(set)) if d.starts_with("http") && !set.is_empty() => {
            st.webhooks.retain(|(x, _)| *x != d);
            st.webhooks.push((d.clone(), set.clone()));
            if !st.post_keeps_disabled {
                st.disabled_hooks.remove(&d);
            }
            let i = st.webhooks.len() - 1;
            json_response(StatusCode::CREATED, HAL, &webhook_json(st, i, &d, &set))
        }
        _ => kommo_problem(
            StatusCode::BAD_REQUEST,
            "destination and settings are required",
        ),
    }
}

/// One hook as the webhooks API shows it.
fn webhook_json(st: &KState, i: usize, dest: &str, settings: &[String]) -> Value {
    json!({
        "id": i + 1, "destination": dest, "settings": settings,
        "disabled": st.disabled_hooks.contains(dest), "sort": i + 1,
    })
}

fn user_json(u: &SimUser, base: &str) -> Value {
    let all = json!({"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"});
    json!({
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "lang": "en",
        "rights": {
            "leads": all, "contacts": all, "companies": all,
            "mail_access": false, "catalog_access": false, "status_rights": null,
            "is_admin": false, "is_free": false, "is_active": u.active,
            "group_id": null, "role_id": null,
        },
        "_links": {"self": {"href": format!("{base}/api/v4/users/{}", u.id)}},
    })
}

fn with_set(params: &[(String, String)]) -> HashSet<String> {
    params
        .iter()
        .filter(|(k, _)| k == "with")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect()
}

fn page_limit(params: &[(String, String)], max: u64) -> Result<(u64, u64), &'static str> {
    let page = match param(params, "page") {
        None => 1,
        Some(p) => match p.parse::<u64>() {
            Ok(p) if p >= 1 => p,
            _ => return Err("page"),
        },
    };
    let limit = match param(params, "limit") {
        None => 50,
        Some(l) => match l.parse::<u64>() {
            Ok(l) if (1..=max).contains(&l) => l,
            _ => return Err("limit"),
        },
    };
    Ok((page, limit))
}

fn bad_param(name: &'static str) -> Response {
    validation_error(vec![(
        "0".into(),
        vec![(
            "InvalidValue",
            name,
            "This value is not valid (limit: 1..=250, page: >= 1).",
        )],
    )])
}

fn range(params: &[(String, String)], base: &str) -> (Option<i64>, Option<i64>) {
    let get = |suffix: &str| {
        param(params, &format!("{base}[{suffix}]")).and_then(|v| v.trim().parse::<i64>().ok())
    };
    (get("from"), get("to"))
}

/// The events' `filter[created_at]` as the docs show it (AMO `events-and-notes.md` L52-53): a
/// bare timestamp means created strictly after it; `[from]`+`[to]` an inclusive range. A lone
/// `[from]` (or a lone `[to]`) is a form the docs do not show: it is ignored, as the worst case
/// of a real account, so a client sending it pages the whole history. The legacy
/// `from,to` comma form is accepted.
fn events_created_filter(q: &[(String, String)]) -> (Option<i64>, Option<i64>) {
    match range(q, "filter[created_at]") {
        (Some(from), Some(to)) => return (Some(from), Some(to)),
        (None, None) => {}
        _ => return (None, None),
    }
    let Some(bare) = param(q, "filter[created_at]") else {
        return (None, None);
    };
    let mut parts = bare.split(',').map(|s| s.trim().parse::<i64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(after), None) => (after.checked_add(1), None),
        other => other,
    }
}

fn in_range(r: (Option<i64>, Option<i64>), v: i64) -> bool {
    r.0.is_none_or(|from| v >= from) && r.1.is_none_or(|to| v <= to)
}

fn order_param(params: &[(String, String)]) -> Option<(&'static str, bool)> {
    params.iter().find_map(|(k, v)| {
        let field = k.strip_prefix("order[")?.strip_suffix(']')?;
        let field = match field {
            "updated_at" => "updated_at",
            "created_at" => "created_at",
            "id" => "id",
            _ => return None,
        };
        Some((field, v.eq_ignore_ascii_case("desc")))
    })
}

fn validation_error(errors: Vec<ItemErrors>) -> Response {
    let list: Vec<Value> = errors
        .into_iter()
        .map(|(rid, errs)| {
            json!({
                "request_id": rid,
                "errors": errs.into_iter().map(|(code, path, detail)| json!({
                    "code": code, "path": path, "detail": detail,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(
        StatusCode::BAD_REQUEST,
        "application/problem+json",
        &json!({
            "validation-errors": list,
            "title": "Bad Request",
            "type": "https://httpstatus.es/400",
            "status": 400,
            "detail": "Request validation failed",
        }),
    )
}

fn oauth_problem(status: StatusCode, hint: &str) -> Response {
    json_response(
        status,
        "application/problem+json",
        &json!({
            "hint": hint,
            "title": "Некорректный запрос",
            "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
            "status": status.as_u16(),
            "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
        }),
    )
}

fn not_found(base: &str, inc: &Incoming) -> Response {
    kommo_problem(
        StatusCode::NOT_FOUND,
        &format!(
            "Cannot {} {}",
            inc.method,
            href(base, &inc.path, &inc.query)
        ),
    )
}

fn method_not_allowed() -> Response {
    kommo_problem(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// Builds a JWT-shaped token (`header.payload.signature`, base64url) carrying `claims`. The
/// signature is fake; clients can read the claims (e.g. `exp`) without verifying it.
pub fn fake_jwt(claims: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in claims.to_string().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    fake_jwt_seeded(claims, h)
}

fn fake_jwt_seeded(claims: &Value, seed: u64) -> String {
    let header = b64url_encode(br#"{"typ":"JWT","alg":"RS256","jti":"sim"}"#);
    let payload = b64url_encode(claims.to_string().as_bytes());
    let mut rng = XorShift::new(seed);
    let sig: Vec<u8> = (0..64).map(|_| rng.next_u64() as u8).collect();
    format!("{header}.{payload}.{}", b64url_encode(&sig))
}

/// Reads the `exp` claim of a JWT-shaped token without verifying it.
pub fn jwt_exp(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = b64url_decode(payload)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_i64()
}

/// Convenience: the events of one card, oldest first (for assertions).
pub fn events_of(events: &[Value], kind: &str, id: u64) -> Vec<Value> {
    let singular: &str = match CardKind::parse(kind) {
        Some(k) => k.singular(),
        None => kind,
    };
    events
        .iter()
        .filter(|e| e["entity_type"] == singular && e["entity_id"] == id)
        .cloned()
        .collect()
}

impl std::fmt::Debug for KommoSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KommoSim")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}
