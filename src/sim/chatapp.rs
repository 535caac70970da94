//! A stateful fake of the ChatApp REST API (`api.chatapp.online`), following `api/chatapp.md`,
//! including the project's assumptions of its section 9.
//!
//! Served endpoints (every answer is `{"success": true, "data": ..}` or
//! `{"success": false, "error": {"code", "message"}}`; unknown paths are `404 ApiNotFoundError`,
//! a known path with a wrong method is `405 ApiMethodNotAllowedError`):
//!
//! | method | path | notes |
//! |---|---|---|
//! | POST | `/v1/tokens` | JSON `{email, password, appId}` |
//! | POST | `/v1/tokens/refresh` | header `Refresh: <refreshToken>`, no body |
//! | GET | `/v1/tokens/check`, `/v1/me`, `/v1/companies`, `/v1/licenses` | |
//! | GET | `/v1/callbackUrls` | `data[] {licenseId, messengerType, events, url}` (ADI `GetCallbackUrls.json`) |
//! | PUT | `/v1/licenses/{l}/messengers/{m}/callbackUrl` | JSON `{"events": [..], "url"}`: one callback per line, replaced |
//! | GET | `/v1/companies/{companyId}/employees[/{id}]` | |
//! | GET | `/v1/chats` | `companyId`, `limit`, `filter[licenseIds]`, `nextPage` |
//! | GET | `/v1/licenses/{l}/messengers/{m}/chats` | `limit`, `lastTime`, `nextPage` |
//! | GET | `/v1/licenses/{l}/messengers/{m}/chats/{chatId}` | |
//! | PUT | `/v1/licenses/{l}/messengers/{m}/chats/{chatId}/responsible` | JSON `{"responsibleId": N}` |
//! | GET | `/v1/licenses/{l}/messengers/{m}/chats/{chatId}/messages` | `limit`, `includeSystemMessages` |
//!
//! Decisions where `chatapp.md` is silent or marks things UNCONFIRMED:
//! - **Login**: wrong e-mail, password or appId is `401` with code `ApiAuthError`; a missing
//!   field is `422 ApiValidationError`. Each login issues a new pair; earlier pairs stay valid
//!   until they expire. [`ChatAppSim::set_login_limit`] makes logins beyond N (since start)
//!   answer `429 TooManyRequests`. [`ChatAppSim::login_count`] counts successful logins.
//! - **Refresh**: only the `Refresh` header is accepted (the JSON-body variant is not). A
//!   missing, unknown, used or expired refresh token is `403 ApiInvalidTokenError`. A refresh
//!   revokes the refresh token used; the access token of the old pair stays valid until it
//!   expires.
//! - **Auth**: `Authorization` must be the raw access token; `Bearer <token>` is rejected like
//!   any invalid token (`403 ApiInvalidTokenError`).
//! - **`/v1/chats`**: `companyId` is required (`422` if missing, `404 ApiNotFoundError` if it is
//!   not the configured company); `limit` defaults to 20, `1..=100` else `422`; without
//!   `filter[licenseIds]` the configured licenses are listed. Order is `lastTime` desc, then
//!   `(licenseId, messengerType, chatId)` asc. `nextPage` is an opaque keyset cursor (the sort
//!   key of the last item), so paging stays consistent while chats change: an unchanged chat is
//!   returned exactly once; a chat whose `lastTime` moves up after its page boundary was passed
//!   is simply not returned again (it will be first on the next pass). `nextPage` is `null` when
//!   no item follows. A malformed cursor is `422`.
//! - **Per-license list**: same ordering and cursor; `lastTime=T` returns chats with
//!   `lastTime < T`.
//! - **Employees**: all employees are returned; `limit` is accepted and ignored (unless
//!   [`ChatAppSim::set_employee_page_size`] pages them with a `nextPage` cursor).
//! - **Answer shapes of issue 18** (off by default, see `quirks`): a write refused in a 200
//!   envelope or answered without effect ([`ChatAppSim::set_write_behaviour`]), and a one-chat
//!   answer with only `id`, `name`, `responsible` ([`ChatAppSim::set_minimal_chat_answer`]).
//! - **PUT responsible**: `responsibleId` may be a number or a numeric string; unknown employee
//!   or a missing/invalid id is `422 ApiValidationError`; unknown chat `404 ApiNotFoundError`.
//!   Every accepted PUT (also one that sets the same value) appends a system message, sets
//!   `lastTime` to now and is recorded in [`ChatAppSim::written_chats`].
//! - **Messages**: newest first, `limit` default 20 (max 100), system messages only with
//!   `includeSystemMessages=1`; `nextPage` is always `null`.
//! - Chat `status` is `"open"` or `"closed"`.
//! - **Licenses and their callbacks** (issue 18, see `lines`): a license is `paid` and
//!   `active: true` unless a test says otherwise; a test can list one more license and set a
//!   line's callback as another integration would.
//! - **Malformed chats** (hardening tests): [`ChatAppSim::set_chat_json_override`] merges keys
//!   into (or replaces) one chat's JSON as served and [`ChatAppSim::remove_chat_json_keys`] drops
//!   keys, until cleared; they apply to both list endpoints, the single chat, the answer of
//!   `PUT .../responsible` and [`ChatAppSim::chat_json`], never to ordering, cursors or writes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

mod lines;
mod quirks;
pub use quirks::WriteBehaviour;

use super::SimClock;
use super::faults::{
    Faults, Flavor, Incoming, ServerTask, bind_local, chatapp_error, fault_methods, process,
};
use super::util::{
    JsonOverride, XorShift, b64url_decode, b64url_encode, json_response, multi, param, segments,
};

const TOKEN_ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Configuration of a [`ChatAppSim`].
#[derive(Clone, Debug)]
pub struct ChatAppSimConfig {
    /// Shared clock (a fresh one when `None`).
    pub clock: Option<SimClock>,
    /// Accepted login e-mail.
    pub email: String,
    /// Accepted login password.
    pub password: String,
    /// Accepted `appId`.
    pub app_id: String,
    /// The company id.
    pub company_id: u64,
    /// Licenses of the company (listed by `/v1/licenses`, default `/v1/chats` filter).
    pub license_ids: Vec<u64>,
    /// Access-token lifetime in seconds on the clock.
    pub access_ttl_secs: i64,
    /// Refresh-token lifetime in seconds on the clock.
    pub refresh_ttl_secs: i64,
}

impl Default for ChatAppSimConfig {
    fn default() -> Self {
        ChatAppSimConfig {
            clock: None,
            email: "ops@example.com".to_string(),
            password: "secret-password".to_string(),
            app_id: "app_1_1".to_string(),
            company_id: 1,
            license_ids: vec![1],
            access_ttl_secs: 86_400,
            refresh_ttl_secs: 14 * 86_400,
        }
    }
}

/// A chat to add with [`ChatAppSim::add_chat`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimChat {
    /// License ("line") id.
    pub license_id: u64,
    /// Messenger type (`grWhatsApp`, `caWhatsApp`, `telegram`, ...).
    pub messenger_type: String,
    /// Chat id (`79991234567@c.us`, `77763068686`, `@name`, ...).
    pub chat_id: String,
    /// The chat's phone, if any.
    pub phone: Option<String>,
    /// Display name.
    pub name: String,
    /// Responsible employee id.
    pub responsible: Option<u64>,
}

impl SimChat {
    /// A WhatsApp-web (`grWhatsApp`) chat for a phone: chat id `<digits>@c.us`, phone `<digits>`.
    pub fn whatsapp(license_id: u64, phone: &str, name: &str, responsible: Option<u64>) -> Self {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        SimChat {
            license_id,
            messenger_type: "grWhatsApp".to_string(),
            chat_id: format!("{digits}@c.us"),
            phone: Some(digits),
            name: name.to_string(),
            responsible,
        }
    }
}

/// The full state of one chat (returned by [`ChatAppSim::chat`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SimChatState {
    /// License id.
    pub license_id: u64,
    /// Messenger type.
    pub messenger_type: String,
    /// Chat id.
    pub chat_id: String,
    /// `internalId`.
    pub internal_id: u64,
    /// Phone.
    pub phone: Option<String>,
    /// Display name.
    pub name: String,
    /// Responsible employee id.
    pub responsible: Option<u64>,
    /// `lastTime`.
    pub last_time: i64,
    /// `"open"` or `"closed"`.
    pub status: String,
    /// `conversation.startTime`.
    pub conversation_start: i64,
    /// `conversation.endTime` (0 while open).
    pub conversation_end: i64,
    /// Messages, oldest first, as rendered by the API.
    pub messages: Vec<Value>,
}

/// A ChatApp employee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimEmployee {
    /// Employee id.
    pub id: u64,
    /// `fullName`.
    pub full_name: String,
    /// `email`.
    pub email: String,
    /// `role.name`.
    pub role: String,
}

type ChatKey = (u64, String, String);
type OrderKey = (Reverse<i64>, u64, String, String);

struct CState {
    employees: BTreeMap<u64, SimEmployee>,
    chats: HashMap<ChatKey, SimChatState>,
    access: HashMap<String, i64>,
    refresh: HashMap<String, i64>,
    login_count: u64,
    refresh_count: u64,
    login_limit: Option<u32>,
    written: Vec<(u64, String, String, u64)>,
    callbacks: BTreeMap<(u64, String), (Vec<String>, String)>,
    lines: lines::Lines,
    overrides: HashMap<ChatKey, JsonOverride>,
    seq: u64,
    rng: XorShift,
    quirks: quirks::Quirks,
}

struct Shared {
    state: Mutex<CState>,
    faults: Faults,
    clock: SimClock,
    base_url: String,
    server: ServerTask,
    cfg: ChatAppSimConfig,
}

/// Handle to a running fake ChatApp server. Cheap to clone; all clones share the state.
#[derive(Clone)]
pub struct ChatAppSim {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChatAppSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatAppSim")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl ChatAppSim {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(mut cfg: ChatAppSimConfig) -> std::io::Result<ChatAppSim> {
        let (listener, base_url, port) = bind_local().await?;
        let clock = cfg.clock.take().unwrap_or_default();
        let seed = 0x4348_4154_4150_5000 ^ u64::from(port) ^ ((clock.now() as u64) << 16);
        let sim = ChatAppSim {
            shared: Arc::new(Shared {
                state: Mutex::new(CState {
                    employees: BTreeMap::new(),
                    chats: HashMap::new(),
                    access: HashMap::new(),
                    refresh: HashMap::new(),
                    login_count: 0,
                    refresh_count: 0,
                    login_limit: None,
                    written: Vec::new(),
                    callbacks: BTreeMap::new(),
                    lines: lines::Lines::default(),
                    overrides: HashMap::new(),
                    seq: 0,
                    rng: XorShift::new(seed),
                    quirks: quirks::Quirks::default(),
                }),
                faults: Faults::default(),
                clock,
                base_url,
                server: ServerTask::new(),
                cfg,
            }),
        };
        let router = Router::new().fallback(entry).with_state(sim.clone());
        sim.shared.server.spawn(listener, router);
        Ok(sim)
    }

    fault_methods!();

    fn lock(&self) -> MutexGuard<'_, CState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- tokens -----

    /// Number of successful logins (`POST /v1/tokens`).
    pub fn login_count(&self) -> u64 {
        self.lock().login_count
    }

    /// Number of successful refreshes (`POST /v1/tokens/refresh`).
    pub fn refresh_count(&self) -> u64 {
        self.lock().refresh_count
    }

    /// Invalidates every access token issued so far (they answer `403 ApiInvalidTokenError`).
    pub fn expire_access_tokens(&self) {
        self.lock().access.clear();
    }

    /// Revokes every refresh token issued so far.
    pub fn revoke_refresh_tokens(&self) {
        self.lock().refresh.clear();
    }

    /// Limits the number of successful logins since start (`None`: unlimited); further logins
    /// answer `429 TooManyRequests`.
    pub fn set_login_limit(&self, limit: Option<u32>) {
        self.lock().login_limit = limit;
    }

    /// Issues a token pair directly (no HTTP, not counted as a login): `(access, refresh)`.
    pub fn issue_tokens(&self) -> (String, String) {
        let now = self.shared.clock.now();
        let data = self.lock().issue(&self.shared.cfg, now);
        (
            data["accessToken"].as_str().unwrap_or_default().to_string(),
            data["refreshToken"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    // ----- employees -----

    /// Adds (or replaces) an employee with role `Operator`.
    pub fn add_employee(&self, id: u64, full_name: &str, email: &str) {
        self.lock().employees.insert(
            id,
            SimEmployee {
                id,
                full_name: full_name.to_string(),
                email: email.to_string(),
                role: "Operator".to_string(),
            },
        );
    }

    /// Removes an employee (chats keep pointing at the id).
    pub fn remove_employee(&self, id: u64) {
        self.lock().employees.remove(&id);
    }

    /// All employees, by id.
    pub fn employees(&self) -> Vec<SimEmployee> {
        self.lock().employees.values().cloned().collect()
    }

    // ----- chats -----

    /// Adds (or replaces) a chat: `lastTime` = now, status open, `conversation.startTime` = now.
    pub fn add_chat(&self, chat: SimChat) {
        self.add_chats([chat]);
    }

    /// Adds many chats under one lock.
    pub fn add_chats(&self, chats: impl IntoIterator<Item = SimChat>) {
        let now = self.shared.clock.now();
        let mut st = self.lock();
        for c in chats {
            st.seq += 1;
            let internal_id = 77_900_000 + st.seq;
            let key = (c.license_id, c.messenger_type.clone(), c.chat_id.clone());
            st.chats.insert(
                key,
                SimChatState {
                    license_id: c.license_id,
                    messenger_type: c.messenger_type,
                    chat_id: c.chat_id,
                    internal_id,
                    phone: c.phone,
                    name: c.name,
                    responsible: c.responsible,
                    last_time: now,
                    status: "open".to_string(),
                    conversation_start: now,
                    conversation_end: 0,
                    messages: Vec::new(),
                },
            );
        }
    }

    /// The state of a chat.
    pub fn chat(
        &self,
        license_id: u64,
        messenger_type: &str,
        chat_id: &str,
    ) -> Option<SimChatState> {
        self.lock()
            .chats
            .get(&(license_id, messenger_type.to_string(), chat_id.to_string()))
            .cloned()
    }

    /// The chat as the API renders it (override included).
    pub fn chat_json(&self, license_id: u64, messenger_type: &str, chat_id: &str) -> Option<Value> {
        let st = self.lock();
        st.chats
            .get(&key(license_id, messenger_type, chat_id))
            .map(|c| st.render(c))
    }

    /// Makes one chat malformed as served (lists, `GET .../chats/{chatId}`, the answer of
    /// `PUT .../responsible`, [`ChatAppSim::chat_json`]) until cleared: an object's keys are
    /// merged into (replace) the chat's keys, e.g. `{"responsible": {"id": "85501"}}`; any other
    /// value replaces the whole chat. Applied after rendering: ordering, cursors and writes use
    /// the chat's real values. Replaces an earlier merge value of the same chat; the chat need
    /// not exist yet.
    pub fn set_chat_json_override(
        &self,
        license_id: u64,
        messenger_type: &str,
        chat_id: &str,
        value: Value,
    ) {
        self.lock()
            .overrides
            .entry(key(license_id, messenger_type, chat_id))
            .or_default()
            .merge = Some(value);
    }

    /// Makes one chat served without these keys (e.g. `responsible`) until cleared; adds to the
    /// chat's earlier removals.
    pub fn remove_chat_json_keys(
        &self,
        license_id: u64,
        messenger_type: &str,
        chat_id: &str,
        keys: &[&str],
    ) {
        let mut st = self.lock();
        let ov = st
            .overrides
            .entry(key(license_id, messenger_type, chat_id))
            .or_default();
        ov.remove.extend(keys.iter().map(|k| (*k).to_string()));
    }

    /// Serves the chat as it is again (drops its override and removals).
    pub fn clear_chat_json_override(&self, license_id: u64, messenger_type: &str, chat_id: &str) {
        self.lock()
            .overrides
            .remove(&key(license_id, messenger_type, chat_id));
    }

    /// Drops every chat override and removal.
    pub fn clear_chat_json_overrides(&self) {
        self.lock().overrides.clear();
    }

    /// The responsible employee of a chat (`None` if unassigned or unknown).
    pub fn responsible_of(
        &self,
        license_id: u64,
        messenger_type: &str,
        chat_id: &str,
    ) -> Option<u64> {
        self.chat(license_id, messenger_type, chat_id)
            .and_then(|c| c.responsible)
    }

    /// All chats, in API order (`lastTime` desc, then key).
    pub fn chats(&self) -> Vec<SimChatState> {
        let st = self.lock();
        let mut v: Vec<SimChatState> = st.chats.values().cloned().collect();
        v.sort_by_key(order_key);
        v
    }

    fn with_chat<R>(
        &self,
        license_id: u64,
        messenger_type: &str,
        chat_id: &str,
        f: impl FnOnce(&mut CState, &ChatKey, i64) -> R,
    ) -> R {
        let now = self.shared.clock.now();
        let key = (license_id, messenger_type.to_string(), chat_id.to_string());
        let mut st = self.lock();
        assert!(
            st.chats.contains_key(&key),
            "unknown ChatApp chat {license_id}/{messenger_type}/{chat_id}"
        );
        f(&mut st, &key, now)
    }

    /// A person (or ChatApp's distribution) sets the responsible: system message, `lastTime` =
    /// now.
    ///
    /// # Panics
    /// On an unknown chat.
    pub fn assign_as_human(
        &self,
        license_id: u64,
        messenger_type: &str,
        chat_id: &str,
        employee: Option<u64>,
    ) {
        self.with_chat(license_id, messenger_type, chat_id, |st, key, now| {
            st.assign(key, employee, now);
        });
    }

    /// An incoming message: only bumps `lastTime` (and `lastMessage`).
    ///
    /// # Panics
    /// On an unknown chat.
    pub fn new_message(&self, license_id: u64, messenger_type: &str, chat_id: &str) {
        self.with_chat(license_id, messenger_type, chat_id, |st, key, now| {
            let id = st.uuid();
            st.seq += 1;
            let internal = st.seq;
            if let Some(c) = st.chats.get_mut(key) {
                c.last_time = now;
                c.messages.push(json!({
                    "id": id, "internalId": internal.to_string(), "side": "in", "fromMe": false,
                    "fromApi": false, "time": now, "status": "delivered", "type": "text",
                    "message": {"text": "Incoming message", "file": null},
                    "fromUser": {"id": c.chat_id, "name": c.name, "phone": c.phone},
                }));
            }
        });
    }

    /// Closes the conversation: status closed, `conversation.endTime` = now, bumps `lastTime`.
    ///
    /// # Panics
    /// On an unknown chat.
    pub fn close_chat(&self, license_id: u64, messenger_type: &str, chat_id: &str) {
        self.with_chat(license_id, messenger_type, chat_id, |st, key, now| {
            if let Some(c) = st.chats.get_mut(key) {
                c.status = "closed".to_string();
                c.conversation_end = now;
                c.last_time = now;
            }
        });
    }

    /// Reopens: status open, new `conversation.startTime` = now, `endTime` 0, bumps `lastTime`.
    ///
    /// # Panics
    /// On an unknown chat.
    pub fn reopen_chat(&self, license_id: u64, messenger_type: &str, chat_id: &str) {
        self.with_chat(license_id, messenger_type, chat_id, |st, key, now| {
            if let Some(c) = st.chats.get_mut(key) {
                c.status = "open".to_string();
                c.conversation_start = now;
                c.conversation_end = 0;
                c.last_time = now;
            }
        });
    }

    /// Sets `lastTime` directly (world setup).
    ///
    /// # Panics
    /// On an unknown chat.
    pub fn set_last_time(&self, license_id: u64, messenger_type: &str, chat_id: &str, t: i64) {
        self.with_chat(license_id, messenger_type, chat_id, |st, key, _| {
            if let Some(c) = st.chats.get_mut(key) {
                c.last_time = t;
            }
        });
    }

    /// Sets the responsible without a message and without touching `lastTime` (world setup).
    ///
    /// # Panics
    /// On an unknown chat.
    pub fn set_responsible_silently(
        &self,
        license_id: u64,
        messenger_type: &str,
        chat_id: &str,
        employee: Option<u64>,
    ) {
        self.with_chat(license_id, messenger_type, chat_id, |st, key, _| {
            if let Some(c) = st.chats.get_mut(key) {
                c.responsible = employee;
            }
        });
    }

    /// Removes a chat.
    pub fn remove_chat(&self, license_id: u64, messenger_type: &str, chat_id: &str) {
        self.lock()
            .chats
            .remove(&(license_id, messenger_type.to_string(), chat_id.to_string()));
    }

    /// The callback URLs set (`PUT .../callbackUrl`): `(licenseId, messengerType, events, url)`.
    pub fn callback_urls(&self) -> Vec<(u64, String, Vec<String>, String)> {
        self.lock()
            .callbacks
            .iter()
            .map(|((l, mt), (ev, url))| (*l, mt.clone(), ev.clone(), url.clone()))
            .collect()
    }

    /// Every accepted `PUT .../responsible`, in order: `(licenseId, messengerType, chatId,
    /// employeeId)`.
    pub fn written_chats(&self) -> Vec<(u64, String, String, u64)> {
        self.lock().written.clone()
    }

    // ----- HTTP -----

    // Long on purpose: the routing table of the simulated ChatApp API, one arm per endpoint.
    fn route(&self, inc: Incoming) -> Response {
        let segs = segments(&inc.path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let now = self.shared.clock.now();
        let cfg = &self.shared.cfg;
        let mut st = self.lock();
        let (get, post, put) = (
            inc.method == Method::GET,
            inc.method == Method::POST,
            inc.method == Method::PUT,
        );
        match segs.as_slice() {
            ["v1", "tokens"] if post => return st.login(cfg, &inc, now),
            ["v1", "tokens", "refresh"] if post => return st.refresh_tokens(cfg, &inc, now),
            ["v1", "tokens"] | ["v1", "tokens", "refresh"] => return method_not_allowed(),
            _ => {}
        }
        if segs.first() != Some(&"v1") {
            return not_found("Not found");
        }
        if !st.authorized(&inc, now) {
            return chatapp_error(
                StatusCode::FORBIDDEN,
                "ApiInvalidTokenError",
                "Invalid Token",
            );
        }
        match &segs[1..] {
            ["tokens", "check"] if get => ok(json!({"valid": true})),
            ["me"] if get => ok(json!({
                "id": 1001, "fullName": "Simulated Owner", "email": cfg.email, "avatar": null,
            })),
            ["companies"] if get => ok(json!({"items": [
                {"companyId": cfg.company_id, "name": "Simulated company"}
            ]})),
            ["companies", cid, "employees"] if get => {
                if cid.parse::<u64>().ok() != Some(cfg.company_id) {
                    return not_found("Company not found");
                }
                st.quirks
                    .employees_page(st.employees.values(), param(&inc.params, "nextPage"))
            }
            ["companies", cid, "employees", eid] if get => {
                if cid.parse::<u64>().ok() != Some(cfg.company_id) {
                    return not_found("Company not found");
                }
                match eid.parse::<u64>().ok().and_then(|e| st.employees.get(&e)) {
                    Some(e) => ok(employee_json(e)),
                    None => not_found("Employee not found"),
                }
            }
            ["licenses"] if get => ok(Value::Array(
                st.lines
                    .listed(&cfg.license_ids)
                    .map(|l| license_json(&st, l, cfg.company_id, now))
                    .collect(),
            )),
            ["chats"] if get => self.list_all(&st, &inc),
            ["callbackUrls"] if get => ok(Value::Array(
                st.callbacks
                    .iter()
                    .map(|((l, mt), (events, url))| {
                        json!({"licenseId": l, "messengerType": mt, "events": events, "url": url})
                    })
                    .collect(),
            )),
            ["licenses", lic, "messengers", mt, "callbackUrl"] if put => {
                let Ok(lic) = lic.parse::<u64>() else {
                    return not_found("License not found");
                };
                let body: Value = serde_json::from_slice(&inc.body).unwrap_or(Value::Null);
                let url = body.get("url").and_then(Value::as_str).map(str::to_string);
                let events: Option<Vec<String>> = body.get("events").and_then(Value::as_array).map(|a| {
                    a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect()
                });
                match (url, events) {
                    (Some(url), Some(events)) if !events.is_empty() => {
                        st.callbacks.insert((lic, mt.to_string()), (events, url));
                        ok(json!(true))
                    }
                    _ => validation("url and events are required"),
                }
            }
            ["licenses", lic, "messengers", mt, "chats"] if get => {
                let Ok(lic) = lic.parse::<u64>() else {
                    return not_found("License not found");
                };
                self.list_license(&st, &inc, lic, mt)
            }
            ["licenses", lic, "messengers", mt, "chats", chat] if get => {
                match lic
                    .parse::<u64>()
                    .ok()
                    .and_then(|l| st.chats.get(&key(l, mt, chat)))
                {
                    Some(c) => ok(st.quirks.one_chat(st.render(c))),
                    None => not_found("Chat not found"),
                }
            }
            [
                "licenses",
                lic,
                "messengers",
                mt,
                "chats",
                chat,
                "responsible",
            ] if put => {
                let Some(k) = lic.parse::<u64>().ok().map(|l| key(l, mt, chat)) else {
                    return not_found("Chat not found");
                };
                if !st.chats.contains_key(&k) {
                    return not_found("Chat not found");
                }
                let body: Value = serde_json::from_slice(&inc.body).unwrap_or(Value::Null);
                let id = match body.get("responsibleId") {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => s.parse::<u64>().ok(),
                    _ => None,
                };
                let Some(id) = id else {
                    return validation(
                        "The responsibleId field is required and must be an integer",
                    );
                };
                if !st.employees.contains_key(&id) {
                    return validation("The selected responsibleId is invalid");
                }
                match st.quirks.write {
                    WriteBehaviour::Applies => {}
                    WriteBehaviour::RefusedInEnvelope => {
                        return quirks::refusal(StatusCode::OK, "Responsible can not be changed");
                    }
                    WriteBehaviour::NoEffect => {
                        return st.chats.get(&k).map_or_else(
                            || not_found("Chat not found"),
                            |c| ok(st.render(c)),
                        );
                    }
                }
                st.assign(&k, Some(id), now);
                st.written.push((k.0, k.1.clone(), k.2.clone(), id));
                match st.chats.get(&k) {
                    Some(c) => ok(st.render(c)),
                    None => not_found("Chat not found"),
                }
            }
            ["licenses", lic, "messengers", mt, "chats", chat, "messages"] if get => {
                match lic
                    .parse::<u64>()
                    .ok()
                    .and_then(|l| st.chats.get(&key(l, mt, chat)))
                {
                    Some(c) => messages(c, &inc),
                    None => not_found("Chat not found"),
                }
            }
            rest if known_path(rest) => method_not_allowed(),
            _ => not_found("Not found"),
        }
    }

    fn list_all(&self, st: &CState, inc: &Incoming) -> Response {
        let cfg = &self.shared.cfg;
        let q = &inc.params;
        match param(q, "companyId").map(str::parse::<u64>) {
            None | Some(Err(_)) => return validation("The companyId field is required"),
            Some(Ok(c)) if c != cfg.company_id => return not_found("Company not found"),
            Some(Ok(_)) => {}
        }
        let licenses: HashSet<u64> = match multi(q, "filter[licenseIds]") {
            None => cfg.license_ids.iter().copied().collect(),
            Some(v) => {
                let parsed: Result<HashSet<u64>, _> = v.iter().map(|s| s.parse::<u64>()).collect();
                match parsed {
                    Ok(s) => s,
                    Err(_) => return validation("filter.licenseIds must be integers"),
                }
            }
        };
        page_chats(st, q, |c| licenses.contains(&c.license_id))
    }

    fn list_license(&self, st: &CState, inc: &Incoming, lic: u64, mt: &str) -> Response {
        let q = &inc.params;
        let before = match param(q, "lastTime").map(str::parse::<i64>) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return validation("lastTime must be an integer"),
        };
        page_chats(st, q, |c| {
            c.license_id == lic && c.messenger_type == mt && before.is_none_or(|t| c.last_time < t)
        })
    }
}

async fn entry(State(sim): State<ChatAppSim>, req: Request) -> Response {
    let now = sim.shared.clock.now();
    let shared = sim.shared.clone();
    process(&shared.faults, Flavor::ChatApp, now, req, |inc| {
        sim.route(inc)
    })
    .await
}

impl CState {
    /// A chat as served: [`chat_json`] with the chat's override, if any.
    fn render(&self, c: &SimChatState) -> Value {
        let mut v = chat_json(c);
        if let Some(ov) = self
            .overrides
            .get(&key(c.license_id, &c.messenger_type, &c.chat_id))
        {
            ov.apply(&mut v);
        }
        v
    }

    fn authorized(&self, inc: &Incoming, now: i64) -> bool {
        inc.headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| self.access.get(t))
            .is_some_and(|exp| now < *exp)
    }

    fn issue(&mut self, cfg: &ChatAppSimConfig, now: i64) -> Value {
        let access = format!("$2y$10${}", self.rng.string(TOKEN_ALPHABET, 53));
        let refresh = format!("$2y$10${}", self.rng.string(TOKEN_ALPHABET, 53));
        let (a_end, r_end) = (now + cfg.access_ttl_secs, now + cfg.refresh_ttl_secs);
        self.access.insert(access.clone(), a_end);
        self.refresh.insert(refresh.clone(), r_end);
        json!({
            "cabinetUserId": 1001,
            "accessToken": access,
            "accessTokenEndTime": a_end,
            "refreshToken": refresh,
            "refreshTokenEndTime": r_end,
        })
    }

    fn login(&mut self, cfg: &ChatAppSimConfig, inc: &Incoming, now: i64) -> Response {
        let body: Value = serde_json::from_slice(&inc.body).unwrap_or(Value::Null);
        let field = |k: &str| body.get(k).and_then(Value::as_str);
        let (Some(email), Some(password), Some(app_id)) =
            (field("email"), field("password"), field("appId"))
        else {
            return validation("The email, password and appId fields are required");
        };
        if email != cfg.email || password != cfg.password || app_id != cfg.app_id {
            return chatapp_error(
                StatusCode::UNAUTHORIZED,
                "ApiAuthError",
                "Invalid email, password or appId",
            );
        }
        if self
            .login_limit
            .is_some_and(|l| self.login_count >= u64::from(l))
        {
            return chatapp_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Token issue limit reached",
            );
        }
        self.login_count += 1;
        ok(self.issue(cfg, now))
    }

    fn refresh_tokens(&mut self, cfg: &ChatAppSimConfig, inc: &Incoming, now: i64) -> Response {
        let tok = inc
            .headers
            .get("refresh")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let valid = tok
            .as_ref()
            .and_then(|t| self.refresh.get(t))
            .is_some_and(|exp| now < *exp);
        if !valid {
            return chatapp_error(
                StatusCode::FORBIDDEN,
                "ApiInvalidTokenError",
                "Invalid refresh token",
            );
        }
        if let Some(t) = tok {
            self.refresh.remove(&t);
        }
        self.refresh_count += 1;
        ok(self.issue(cfg, now))
    }

    fn uuid(&mut self) -> String {
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn assign(&mut self, key: &ChatKey, employee: Option<u64>, now: i64) {
        let id = self.uuid();
        self.seq += 1;
        let internal = self.seq;
        let text = match employee {
            Some(e) => {
                let name = self
                    .employees
                    .get(&e)
                    .map_or_else(|| format!("Employee {e}"), |x| x.full_name.clone());
                format!("Назначен ответственный \"{name} [{e}]\"")
            }
            None => "Ответственный снят".to_string(),
        };
        if let Some(c) = self.chats.get_mut(key) {
            c.responsible = employee;
            c.last_time = now;
            c.messages.push(json!({
                "id": id, "internalId": internal.to_string(), "side": "out", "fromMe": true,
                "fromApi": false, "time": now, "status": "sent", "type": "system",
                "message": {"text": text, "file": null},
                "fromApp": {"id": "webchat", "sender": "system"},
                "created": {"id": employee},
            }));
        }
    }
}

fn known_path(rest: &[&str]) -> bool {
    matches!(
        rest,
        ["tokens", "check"]
            | ["me"]
            | ["companies"]
            | ["companies", _, "employees"]
            | ["companies", _, "employees", _]
            | ["licenses"]
            | ["chats"]
            | ["licenses", _, "messengers", _, "chats"]
            | ["licenses", _, "messengers", _, "chats", _]
            | [
                "licenses",
                _,
                "messengers",
                _,
                "chats",
                _,
                "responsible" | "messages"
            ]
    )
}

fn key(license: u64, mt: &str, chat: &str) -> ChatKey {
    (license, mt.to_string(), chat.to_string())
}

fn order_key(c: &SimChatState) -> OrderKey {
    (
        Reverse(c.last_time),
        c.license_id,
        c.messenger_type.clone(),
        c.chat_id.clone(),
    )
}

fn encode_cursor(c: &SimChatState) -> String {
    let raw = json!([c.last_time, c.license_id, c.messenger_type, c.chat_id]).to_string();
    b64url_encode(raw.as_bytes())
}

fn decode_cursor(s: &str) -> Option<OrderKey> {
    let bytes = b64url_decode(s)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        Reverse(v.get(0)?.as_i64()?),
        v.get(1)?.as_u64()?,
        v.get(2)?.as_str()?.to_string(),
        v.get(3)?.as_str()?.to_string(),
    ))
}

fn page_chats(
    st: &CState,
    q: &[(String, String)],
    keep: impl Fn(&SimChatState) -> bool,
) -> Response {
    let limit = match param(q, "limit").map(str::parse::<usize>) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return validation("limit must be an integer between 1 and 100"),
    };
    let cursor = match param(q, "nextPage").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match decode_cursor(s) {
            Some(c) => Some(c),
            None => return validation("Invalid nextPage cursor"),
        },
    };
    let mut items: Vec<(OrderKey, &SimChatState)> = st
        .chats
        .values()
        .filter(|c| keep(c))
        .map(|c| (order_key(c), c))
        .filter(|(k, _)| cursor.as_ref().is_none_or(|cur| k > cur))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let has_more = items.len() > limit;
    items.truncate(limit);
    let next = if has_more {
        items.last().map(|(_, c)| Value::String(encode_cursor(c)))
    } else {
        None
    };
    let rendered: Vec<Value> = items.iter().map(|(_, c)| st.render(c)).collect();
    ok(json!({"items": rendered, "nextPage": next}))
}

fn messages(c: &SimChatState, inc: &Incoming) -> Response {
    let q = &inc.params;
    let limit = match param(q, "limit").map(str::parse::<usize>) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return validation("limit must be an integer between 1 and 100"),
    };
    let system = param(q, "includeSystemMessages").is_some_and(|v| v == "1" || v == "true");
    let items: Vec<Value> = c
        .messages
        .iter()
        .rev()
        .filter(|m| system || m["type"] != "system")
        .take(limit)
        .cloned()
        .collect();
    ok(json!({"items": items, "nextPage": null}))
}

fn chat_json(c: &SimChatState) -> Value {
    let last_message = c
        .messages
        .last()
        .map(|m| json!({"type": m["type"], "previewText": m["message"]["text"]}));
    let last_in = c
        .messages
        .iter()
        .rev()
        .find(|m| m["side"] == "in")
        .and_then(|m| m["time"].as_i64())
        .unwrap_or(0);
    json!({
        "id": c.chat_id,
        "internalId": c.internal_id.to_string(),
        "licenseId": c.license_id,
        "messengerType": c.messenger_type,
        "type": "private",
        "phone": c.phone,
        "username": c.chat_id.strip_prefix('@'),
        "email": null,
        "name": c.name,
        "image": null,
        "lastTime": c.last_time,
        "unreadMessages": 0,
        "lastRead": 0,
        "timeLastInMessage": last_in,
        "conversation": {"startTime": c.conversation_start, "endTime": c.conversation_end},
        "banTime": null,
        "link": null,
        "responsible": c.responsible.map(|id| json!({"id": id})),
        "responsiblePin": false,
        "status": c.status,
        "lastMessage": last_message,
    })
}

fn employee_json(e: &SimEmployee) -> Value {
    json!({"id": e.id, "fullName": e.full_name, "email": e.email, "role": {"name": e.role}})
}

fn license_json(st: &CState, license: u64, company: u64, now: i64) -> Value {
    let mut types: Vec<&str> = st
        .chats
        .values()
        .filter(|c| c.license_id == license)
        .map(|c| c.messenger_type.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if types.is_empty() {
        types.push("grWhatsApp");
    }
    let messengers: Vec<Value> = types
        .into_iter()
        .map(|t| json!({"type": t, "name": t, "info": {"phone": null}}))
        .collect();
    let mut v = json!({
        "licenseId": license,
        "licenseTo": now + 365 * 86_400,
        "licenseName": null,
        "meOwner": true,
        "active": true,
        "type": "dialog",
        "companies": [company],
        "status": {"id": 4, "code": "paid"},
        "messenger": messengers,
        "app": [{"type": "amo", "name": "AmoCRM"}],
        "access": [],
    });
    st.lines.shape(license, &mut v);
    v
}

fn ok(data: Value) -> Response {
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({"success": true, "data": data}),
    )
}

fn validation(message: &str) -> Response {
    chatapp_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "ApiValidationError",
        message,
    )
}

fn not_found(message: &str) -> Response {
    chatapp_error(StatusCode::NOT_FOUND, "ApiNotFoundError", message)
}

fn method_not_allowed() -> Response {
    chatapp_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "ApiMethodNotAllowedError",
        "Method not allowed",
    )
}
