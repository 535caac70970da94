//! In-memory fakes of the cycle's ports ([`chatapp_kommo_sync::ports`]): [`FakeKommo`],
//! [`FakeChatApp`] and [`FakeStore`], for scenario tests that run whole cycles without sockets,
//! files or sleeps (in the style of kube-rs controller-rs: assert the exact, ordered calls).
//!
//! - Every port call is appended to one shared, ordered [`CallLog`] as a short line: the method
//!   (`kommo.events`, `chatapp.set_responsible`, `store.confirm_write`), then its arguments
//!   (`kommo.patch lead [2001->504142]`). A call that was told to fail ends in ` => ` and what
//!   it returned (`=> HTTP 400`, `=> store error`, `=> crash`). The [`ApiMeter`] calls
//!   (server time, request count, deadline, bad records) are bookkeeping, not I/O, and are not
//!   logged.
//! - Scripted failures: [`Faults::fail`] makes the next `n` calls of a method (named as in the
//!   log, without arguments) fail with a given [`ApiError`] or [`StoreFault`].
//!   [`StoreFault::Crash`] does the store call's work and then returns an error: the process
//!   "died" right after the write was durable (e.g. after `store.record_intents`).
//! - Each fake's state is a plain struct with public fields behind an `Arc<Mutex<_>>`
//!   (`fake.state()`), so a test sets up and inspects the world directly; the fakes are cheap
//!   clones sharing that state, so a test keeps a handle after giving one to a `Syncer`.
//! - [`FakeKommo::before`] / [`FakeChatApp::before`] run a one-shot change of the world right
//!   before a call is answered (a person acting "meanwhile").
//!
//! Adding a port method is one line in its impl: `self.call("store.x", detail, |s| ...)` (see
//! [`FakeStore::call`]); new state goes into the state struct.
#![allow(dead_code)]

use chatapp_kommo_sync::chatapp::{Chat, Conversation, ResponsibleRef};
use chatapp_kommo_sync::core::engine::Snapshot;
use chatapp_kommo_sync::core::model::{
    CardId, CardKind, CardState, DialogKey, DialogState, Employee, EmployeeId, KommoUser,
    KommoUserId, RecordId,
};
use chatapp_kommo_sync::core::neighbourhood::{BaseLookup, Frame, Term};
use chatapp_kommo_sync::http::{ApiError, BadRecord};
use chatapp_kommo_sync::kommo::{
    CardEmbedded, CustomField, EVENT_RESPONSIBLE, EventValue, FieldMap, FieldValue, KommoCard,
    KommoEvent, Linked, PatchOutcome, Pipelines, UserRef,
};
use chatapp_kommo_sync::ports::{
    ApiMeter, BaseReads, CardEvent, CardRead, ChatAppApi, ChatRead, CycleLog, KommoApi, WriteLog,
};
use chatapp_kommo_sync::store::bases::InMemory;
use chatapp_kommo_sync::store::failures::WriteFailure;
use chatapp_kommo_sync::store::staged::StagedCards;
use chatapp_kommo_sync::store::{
    AuditEntry, CycleCommit, CycleRecord, Intent, Quarantined, Retention, StoreError, Watermarks,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calls of every fake, in the order they were made.
#[derive(Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    /// Appends a call.
    pub fn push(&self, line: String) {
        lock(&self.0).push(line);
    }
    /// The calls so far, emptying the log.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.0))
    }
    /// The calls so far.
    pub fn all(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

/// Scripted failures of one fake: method name -> the failures still to return, in order.
pub struct Faults<E>(Arc<Mutex<BTreeMap<String, Vec<E>>>>);

impl<E> Clone for Faults<E> {
    fn clone(&self) -> Self {
        Faults(self.0.clone())
    }
}

impl<E> Default for Faults<E> {
    fn default() -> Self {
        Faults(Arc::default())
    }
}

impl<E: Clone> Faults<E> {
    /// The next `times` calls of `method` (as logged, without arguments) fail with `err`
    /// (after any failures already scripted for it).
    pub fn fail(&self, method: &str, times: usize, err: E) {
        lock(&self.0)
            .entry(method.to_string())
            .or_default()
            .extend(std::iter::repeat_n(err, times));
    }

    /// The failure the next call of `method` returns, if one is scripted.
    fn next(&self, method: &str) -> Option<E> {
        let mut m = lock(&self.0);
        let q = m.get_mut(method)?;
        if q.is_empty() {
            return None;
        }
        Some(q.remove(0))
    }
}

/// The method name of a log line: its first word.
fn method_of(line: &str) -> &str {
    line.split(' ').next().unwrap_or(line)
}

/// How a failed API call shows in the log.
fn api_failure(e: &ApiError) -> String {
    match e {
        ApiError::Status { status, .. } => format!("HTTP {status}"),
        e => e.label().to_string(),
    }
}

/// One-shot changes of a world, run right before a named call is answered.
type Hooks<S> = Arc<Mutex<Vec<(String, Box<dyn FnOnce(&mut S) + Send>)>>>;

/// What an API fake shares between its clones: state, log, faults, hooks, meter.
struct ApiFake<S> {
    state: Arc<Mutex<S>>,
    log: CallLog,
    faults: Faults<ApiError>,
    hooks: Hooks<S>,
    requests: Arc<AtomicU64>,
}

impl<S> Clone for ApiFake<S> {
    fn clone(&self) -> Self {
        ApiFake {
            state: self.state.clone(),
            log: self.log.clone(),
            faults: self.faults.clone(),
            hooks: self.hooks.clone(),
            requests: self.requests.clone(),
        }
    }
}

impl<S> ApiFake<S> {
    fn new(state: S, log: &CallLog) -> Self {
        ApiFake {
            state: Arc::new(Mutex::new(state)),
            log: log.clone(),
            faults: Faults::default(),
            hooks: Arc::default(),
            requests: Arc::default(),
        }
    }

    fn before(&self, method: &str, f: impl FnOnce(&mut S) + Send + 'static) {
        lock(&self.hooks).push((method.to_string(), Box::new(f)));
    }

    /// One call: counted, its hooks run, logged, then failed as scripted or answered by `f`.
    fn call<T>(&self, line: String, f: impl FnOnce(&mut S) -> T) -> Result<T, ApiError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let method = method_of(&line).to_string();
        let due: Vec<_> = {
            let mut hooks = lock(&self.hooks);
            let (due, rest) = std::mem::take(&mut *hooks)
                .into_iter()
                .partition(|(m, _)| *m == method);
            *hooks = rest;
            due
        };
        let mut st = lock(&self.state);
        for (_, h) in due {
            h(&mut st);
        }
        if let Some(e) = self.faults.next(&method) {
            self.log.push(format!("{line} => {}", api_failure(&e)));
            return Err(e);
        }
        self.log.push(line);
        Ok(f(&mut st))
    }
}

/// An `ApiError::Status` as an API would return it.
pub fn http_status(api: &'static str, endpoint: &str, status: u16) -> ApiError {
    ApiError::Status {
        api,
        endpoint: endpoint.into(),
        status,
        body: format!("fake {status}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Kommo

/// What the fake Kommo holds.
#[derive(Default)]
pub struct KommoState {
    /// `GET /api/v4/users`.
    pub users: Vec<KommoUser>,
    /// Every card of every kind.
    pub cards: BTreeMap<CardId, KommoCard>,
    /// The events, oldest first.
    pub events: Vec<KommoEvent>,
    /// `GET /api/v4/leads/pipelines`.
    pub pipelines: Pipelines,
    /// Whether list filters work on the account.
    pub filters_enabled: bool,
    /// The server's clock (unix seconds): its answers' `Date`, and the time of its changes.
    pub now: i64,
    /// The contact of each incoming lead's unsorted chat record.
    pub unsorted: BTreeMap<u64, u64>,
    /// Records the next reads skipped (handed out by `take_bad`).
    pub bad: Vec<BadRecord>,
    /// The sync-flag checkbox field per kind the cards are read with (the config's
    /// `[sync.flag_fields]`; none by default).
    pub flag_fields: BTreeMap<chatapp_kommo_sync::core::model::SyncKind, u64>,
}

impl KommoState {
    /// A person (user `by`) sets a card's responsible now: the card changes and an
    /// `entity_responsible_changed` event is recorded, as in Kommo.
    pub fn set_responsible(&mut self, id: CardId, to: u64, by: u64) {
        let now = self.now;
        let c = self.cards.get_mut(&id).expect("a card of the world");
        c.responsible_user_id = to;
        c.updated_at = now;
        self.events.push(KommoEvent {
            id: format!("ev-{}", self.events.len() + 1),
            kind: EVENT_RESPONSIBLE.into(),
            entity_id: id.id,
            entity_type: id.kind.singular().into(),
            created_by: by,
            created_at: now,
            value_after: vec![EventValue {
                responsible_user: Some(UserRef { id: to }),
                lead_status: None,
            }],
        });
    }

    /// The responsible of a card now.
    pub fn responsible(&self, id: CardId) -> u64 {
        self.cards[&id].responsible_user_id
    }
}

/// A card as Kommo lists it: `contacts` linked, the `MESSENGER` field holding `dialogs`.
pub fn card(id: u64, responsible: u64, updated_at: i64, dialogs: &[&DialogKey]) -> KommoCard {
    KommoCard {
        id,
        responsible_user_id: responsible,
        updated_at,
        is_deleted: false,
        status_id: None,
        pipeline_id: None,
        custom_fields_values: (!dialogs.is_empty()).then(|| {
            vec![CustomField {
                field_id: 900,
                field_code: Some("MESSENGER".into()),
                values: Some(
                    dialogs
                        .iter()
                        .map(|d| FieldValue {
                            value: serde_json::Value::String(d.full_ref()),
                        })
                        .collect(),
                ),
            }]
        }),
        embedded: None,
    }
}

/// A lead at `status` of `pipeline`, linked to `contacts`.
pub fn lead_card(
    id: u64,
    responsible: u64,
    updated_at: i64,
    (pipeline, status): (u64, u64),
    contacts: &[u64],
) -> KommoCard {
    KommoCard {
        status_id: Some(status),
        pipeline_id: Some(pipeline),
        embedded: Some(CardEmbedded {
            contacts: Some(contacts.iter().map(|&id| Linked { id }).collect()),
        }),
        ..card(id, responsible, updated_at, &[])
    }
}

/// Kommo, in memory.
#[derive(Clone)]
pub struct FakeKommo(ApiFake<KommoState>);

impl FakeKommo {
    /// A Kommo holding `state`, logging into `log`.
    pub fn new(state: KommoState, log: &CallLog) -> FakeKommo {
        FakeKommo(ApiFake::new(state, log))
    }
    /// Its state.
    pub fn state(&self) -> MutexGuard<'_, KommoState> {
        lock(&self.0.state)
    }
    /// Its scripted failures (methods named as logged: `kommo.patch`, `kommo.cards_by_id`).
    pub fn faults(&self) -> &Faults<ApiError> {
        &self.0.faults
    }
    /// Changes the world right before the next call of `method` is answered.
    pub fn before(&self, method: &str, f: impl FnOnce(&mut KommoState) + Send + 'static) {
        self.0.before(method, f)
    }

    /// The fields cards are read with: the default's, with the state's flag fields.
    fn field_map(&self) -> FieldMap {
        FieldMap {
            flags: self.state().flag_fields.clone(),
            ..FieldMap::default()
        }
    }
}

fn ids(ids: impl IntoIterator<Item = u64>) -> String {
    let v: Vec<String> = ids.into_iter().map(|i| i.to_string()).collect();
    format!("[{}]", v.join(","))
}

impl ApiMeter for FakeKommo {
    fn server_time(&self) -> Option<i64> {
        Some(self.state().now)
    }
    fn request_count(&self) -> u64 {
        self.0.requests.load(Ordering::SeqCst)
    }
    fn set_deadline(&self, _deadline: Option<Instant>) {}
    fn take_bad(&self) -> Vec<BadRecord> {
        std::mem::take(&mut self.state().bad)
    }
}

impl KommoApi for FakeKommo {
    async fn users(&self) -> Result<Vec<KommoUser>, ApiError> {
        self.0.call("kommo.users".into(), |s| s.users.clone())
    }

    async fn events(
        &self,
        kinds: &[CardKind],
        stages: bool,
        from: i64,
    ) -> Result<Vec<CardEvent>, ApiError> {
        let names: Vec<&str> = kinds.iter().map(|k| k.singular()).collect();
        let line = format!(
            "kommo.events {} stages={stages} from={from}",
            names.join(",")
        );
        self.0.call(line, |s| {
            s.events
                .iter()
                .filter(|e| e.created_at >= from)
                .filter(|e| e.card().is_some_and(|c| kinds.contains(&c.kind)))
                .filter(|e| e.kind == EVENT_RESPONSIBLE || stages)
                .map(KommoEvent::read)
                .collect()
        })
    }

    async fn pipelines(&self) -> Result<Pipelines, ApiError> {
        self.0
            .call("kommo.pipelines".into(), |s| s.pipelines.clone())
    }

    async fn filters_enabled(&self) -> Result<bool, ApiError> {
        self.0
            .call("kommo.filters_enabled".into(), |s| s.filters_enabled)
    }

    async fn each_card(
        &self,
        kind: CardKind,
        since: Option<i64>,
        sink: &mut (dyn FnMut(CardRead) + Send),
    ) -> Result<usize, ApiError> {
        let line = match since {
            Some(t) => format!("kommo.each_card {kind} since={t}"),
            None => format!("kommo.each_card {kind} all"),
        };
        let mut cards: Vec<KommoCard> = self.0.call(line, |s| {
            s.cards
                .iter()
                .filter(|(id, c)| id.kind == kind && since.is_none_or(|t| c.updated_at >= t))
                .map(|(_, c)| c.clone())
                .collect()
        })?;
        if since.is_some() {
            cards.sort_by_key(|c| std::cmp::Reverse(c.updated_at));
        }
        let n = cards.len();
        let fields = self.field_map();
        cards.iter().for_each(|c| sink(c.read(kind, &fields)));
        Ok(n)
    }

    async fn cards_by_id(&self, kind: CardKind, wanted: &[u64]) -> Result<Vec<CardRead>, ApiError> {
        let line = format!("kommo.cards_by_id {kind} {}", ids(wanted.iter().copied()));
        let fields = self.field_map();
        self.0.call(line, |s| {
            wanted
                .iter()
                .filter_map(|id| s.cards.get(&CardId::new(kind, *id)))
                .map(|c| c.read(kind, &fields))
                .collect()
        })
    }

    async fn unsorted_contacts(
        &self,
        wanted: &BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, u64>, ApiError> {
        let line = format!("kommo.unsorted_contacts {}", ids(wanted.iter().copied()));
        self.0.call(line, |s| {
            s.unsorted
                .iter()
                .filter(|(l, _)| wanted.contains(l))
                .map(|(l, c)| (*l, *c))
                .collect()
        })
    }

    async fn patch_responsible(
        &self,
        kind: CardKind,
        items: &[(u64, KommoUserId)],
    ) -> Result<PatchOutcome, ApiError> {
        let body: Vec<String> = items.iter().map(|(id, to)| format!("{id}->{to}")).collect();
        let line = format!("kommo.patch {kind} [{}]", body.join(","));
        self.0.call(line, |s| {
            let mut done = PatchOutcome::default();
            for (id, to) in items {
                let cid = CardId::new(kind, *id);
                if s.cards.contains_key(&cid) {
                    s.set_responsible(cid, to.0, 0);
                    done.confirmed.insert(*id);
                }
            }
            done
        })
    }

    async fn retry_unsaved_token(&self) -> bool {
        self.0.log.push("kommo.retry_unsaved_token".into());
        true
    }
}

// ---------------------------------------------------------------------------------------------
// ChatApp

/// What the fake ChatApp holds.
#[derive(Default)]
pub struct ChatAppState {
    /// The company's employees.
    pub employees: Vec<Employee>,
    /// Every chat.
    pub chats: BTreeMap<DialogKey, Chat>,
    /// The server's clock (unix seconds).
    pub now: i64,
    /// Records the next reads skipped (handed out by `take_bad`).
    pub bad: Vec<BadRecord>,
    /// `chat` answers with `id` and `responsible` only (the fields SPEC 6.1's sources show).
    pub minimal_chat_answers: bool,
}

impl ChatAppState {
    /// The chat is closed now.
    pub fn close(&mut self, key: &DialogKey) {
        let now = self.now;
        let c = self.chats.get_mut(key).expect("a chat of the world");
        c.status = Some("closed".into());
        c.last_time = now;
    }

    /// A person (or ChatApp's distribution) assigns a chat now.
    pub fn assign(&mut self, key: &DialogKey, to: Option<u64>) {
        let now = self.now;
        let c = self.chats.get_mut(key).expect("a chat of the world");
        c.responsible = Some(ResponsibleRef { id: to });
        c.last_time = now;
    }

    /// The responsible of a chat now.
    pub fn responsible(&self, key: &DialogKey) -> Option<u64> {
        self.chats[key].responsible.as_ref().and_then(|r| r.id)
    }
}

/// An open chat of `key`, assigned to `responsible`, last active at `last_time`, in the
/// conversation started at `session`.
pub fn chat(key: &DialogKey, responsible: Option<u64>, last_time: i64, session: i64) -> Chat {
    Chat {
        id: key.chat_id.clone(),
        license_id: key.license_id,
        messenger_type: key.messenger_type.clone(),
        phone: None,
        last_time,
        responsible: Some(ResponsibleRef { id: responsible }),
        status: None,
        conversation: Some(Conversation {
            start_time: Some(session),
        }),
    }
}

/// ChatApp, in memory.
#[derive(Clone)]
pub struct FakeChatApp(ApiFake<ChatAppState>);

impl FakeChatApp {
    /// A ChatApp holding `state`, logging into `log`.
    pub fn new(state: ChatAppState, log: &CallLog) -> FakeChatApp {
        FakeChatApp(ApiFake::new(state, log))
    }
    /// Its state.
    pub fn state(&self) -> MutexGuard<'_, ChatAppState> {
        lock(&self.0.state)
    }
    /// Its scripted failures (`chatapp.set_responsible`, `chatapp.chat`, ...).
    pub fn faults(&self) -> &Faults<ApiError> {
        &self.0.faults
    }
    /// Changes the world right before the next call of `method` is answered.
    pub fn before(&self, method: &str, f: impl FnOnce(&mut ChatAppState) + Send + 'static) {
        self.0.before(method, f)
    }
}

impl ApiMeter for FakeChatApp {
    fn server_time(&self) -> Option<i64> {
        Some(self.state().now)
    }
    fn request_count(&self) -> u64 {
        self.0.requests.load(Ordering::SeqCst)
    }
    fn set_deadline(&self, _deadline: Option<Instant>) {}
    fn take_bad(&self) -> Vec<BadRecord> {
        std::mem::take(&mut self.state().bad)
    }
}

impl ChatAppApi for FakeChatApp {
    async fn employees(&self) -> Result<Vec<Employee>, ApiError> {
        self.0
            .call("chatapp.employees".into(), |s| s.employees.clone())
    }

    async fn chats(&self, since: Option<i64>) -> Result<Vec<ChatRead>, ApiError> {
        let line = match since {
            Some(t) => format!("chatapp.chats since={t}"),
            None => "chatapp.chats all".into(),
        };
        self.0.call(line, |s| {
            let mut v: Vec<Chat> = s
                .chats
                .values()
                .filter(|c| since.is_none_or(|t| c.last_time >= t))
                .cloned()
                .collect();
            v.sort_by_key(|c| std::cmp::Reverse(c.last_time));
            v.into_iter().map(Chat::into_read).collect()
        })
    }

    async fn chat(&self, key: &DialogKey) -> Result<Option<ChatRead>, ApiError> {
        self.0
            .call(format!("chatapp.chat {}", key.full_ref()), |s| {
                let minimal = s.minimal_chat_answers;
                s.chats.get(key).cloned().map(|mut c| {
                    if minimal {
                        (c.phone, c.last_time, c.status, c.conversation) = (None, 0, None, None);
                    }
                    c.into_read()
                })
            })
    }

    async fn set_responsible(&self, key: &DialogKey, employee: EmployeeId) -> Result<(), ApiError> {
        let line = format!("chatapp.set_responsible {} -> {employee}", key.full_ref());
        self.0.call(line, |s| {
            if let Some(c) = s.chats.get_mut(key) {
                c.responsible = Some(ResponsibleRef {
                    id: Some(employee.0),
                });
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// State store

/// A scripted store failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFault {
    /// The call fails and changes nothing (a full disk, a lost db).
    Error,
    /// The call's change is made durable, then it fails: the process died right after it.
    Crash,
}

/// What the fake state db holds: the same things the redb store keeps, as plain values.
#[derive(Debug, Default)]
pub struct StoreState {
    /// Bases, parked pairs, held records (`recheck`) and the bootstrap flag.
    pub snap: Snapshot,
    /// Where incremental reads start.
    pub watermarks: Watermarks,
    /// Kommo's pipelines as last read.
    pub pipelines: Option<Pipelines>,
    /// Quarantined records by [`Quarantined::key_of`].
    pub quarantine: BTreeMap<String, Quarantined>,
    /// Kommo event ids seen, with their time.
    pub events_seen: BTreeMap<String, i64>,
    /// Pending intents by target.
    pub intents: BTreeMap<RecordId, Intent>,
    /// Confirmed writes, in order.
    pub audit: Vec<AuditEntry>,
    /// Parked failed writes by target.
    pub failures: BTreeMap<RecordId, WriteFailure>,
    /// Cycle records by id.
    pub cycles: BTreeMap<u64, CycleRecord>,
}

/// The state db, in memory.
#[derive(Clone)]
pub struct FakeStore {
    state: Arc<Mutex<StoreState>>,
    log: CallLog,
    faults: Faults<StoreFault>,
}

impl FakeStore {
    /// A store holding `state`, logging into `log`.
    pub fn new(state: StoreState, log: &CallLog) -> FakeStore {
        FakeStore {
            state: Arc::new(Mutex::new(state)),
            log: log.clone(),
            faults: Faults::default(),
        }
    }
    /// Its state.
    pub fn state(&self) -> MutexGuard<'_, StoreState> {
        lock(&self.state)
    }
    /// Its scripted failures (`store.record_intents`, `store.confirm_write`, ...).
    pub fn faults(&self) -> &Faults<StoreFault> {
        &self.faults
    }

    /// One call: logged, then failed as scripted ([`StoreFault::Crash`]: after `f` ran) or
    /// answered by `f`.
    pub fn call<T>(
        &self,
        line: String,
        f: impl FnOnce(&mut StoreState) -> T,
    ) -> Result<T, StoreError> {
        let fault = self.faults.next(method_of(&line));
        let mut st = lock(&self.state);
        let err = |what: &str| StoreError::Decode {
            what: format!("fake store: {line}"),
            reason: what.into(),
        };
        match fault {
            None => {
                let out = f(&mut st);
                self.log.push(line);
                Ok(out)
            }
            Some(StoreFault::Error) => {
                let e = err("fails on purpose");
                self.log.push(format!("{line} => store error"));
                Err(e)
            }
            Some(StoreFault::Crash) => {
                f(&mut st);
                let e = err("crashed on purpose after the change was durable");
                self.log.push(format!("{line} => crash"));
                Err(e)
            }
        }
    }
}

fn records<'a>(it: impl IntoIterator<Item = &'a RecordId>) -> String {
    let v: Vec<String> = it.into_iter().map(short_record).collect();
    format!("[{}]", v.join(","))
}

/// `lead:2001` or `dialog:1:grWhatsApp:7999...`.
pub fn short_record(r: &RecordId) -> String {
    match r {
        RecordId::Card(c) => c.code_text(),
        RecordId::Dialog(d) => format!("dialog:{}", d.full_ref()),
    }
}

/// The bases as one cycle's read view saw them (a copy taken by `store.bases`).
pub struct FakeBases(Snapshot);

impl BaseLookup for FakeBases {
    type Error = StoreError;
    fn card(&self, id: &CardId) -> Result<Option<CardState>, StoreError> {
        InMemory(&self.0).card(id)
    }
    fn dialog(&self, key: &DialogKey) -> Result<Option<DialogState>, StoreError> {
        InMemory(&self.0).dialog(key)
    }
    fn dialogs_with(&self, term: Term) -> Result<Vec<DialogKey>, StoreError> {
        InMemory(&self.0).dialogs_with(term)
    }
    fn cards_with(&self, term: Term) -> Result<Vec<CardId>, StoreError> {
        InMemory(&self.0).cards_with(term)
    }
    fn cards_of_contact(&self, contact: u64) -> Result<Vec<CardId>, StoreError> {
        InMemory(&self.0).cards_of_contact(contact)
    }
}

impl BaseReads for FakeStore {
    type Bases<'a> = FakeBases;
    fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        self.call("store.load_snapshot".into(), |s| s.snap.clone())
    }
    fn dialog_bases(&self) -> Result<BTreeMap<DialogKey, DialogState>, StoreError> {
        self.call("store.dialog_bases".into(), |s| s.snap.dialogs.clone())
    }
    fn frame(&self) -> Result<Frame, StoreError> {
        self.call("store.frame".into(), |s| Frame {
            parked: s.snap.parked.clone(),
            held: s.snap.held.clone(),
            bootstrapped: s.snap.bootstrapped,
            match_phone: false,
        })
    }
    fn bases(&self) -> Result<FakeBases, StoreError> {
        self.call("store.bases".into(), |s| FakeBases(s.snap.clone()))
    }
    fn base_counts(&self) -> Result<(BTreeMap<CardKind, usize>, usize), StoreError> {
        self.call("store.base_counts".into(), |s| {
            let mut per_kind = BTreeMap::new();
            for c in s.snap.cards.keys() {
                *per_kind.entry(c.kind).or_insert(0) += 1;
            }
            (per_kind, s.snap.dialogs.len())
        })
    }
    fn shadow_bootstrapped(&self) -> Result<bool, StoreError> {
        self.call("store.shadow_bootstrapped".into(), |_| false)
    }
    // no shadow cycle is ever bootstrapped here, so none keeps a count of linked pairs
    fn shadow_tally(&self) -> Result<Option<chatapp_kommo_sync::ports::ShadowTally>, StoreError> {
        self.call("store.shadow_tally".into(), |_| None)
    }
    fn shadow_pair_counts<'k>(
        &self,
        _dialogs: impl Iterator<Item = &'k DialogKey>,
    ) -> Result<BTreeMap<DialogKey, chatapp_kommo_sync::ports::PairCount>, StoreError> {
        self.call("store.shadow_pair_counts".into(), |_| BTreeMap::new())
    }
    fn watermarks(&self) -> Result<Watermarks, StoreError> {
        self.call("store.watermarks".into(), |s| s.watermarks.clone())
    }
    fn pipelines(&self) -> Result<Option<Pipelines>, StoreError> {
        self.call("store.pipelines".into(), |s| s.pipelines.clone())
    }
    fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.call("store.quarantined".into(), |s| {
            let mut v: Vec<Quarantined> = s.quarantine.values().cloned().collect();
            v.sort_by_key(|q| std::cmp::Reverse(q.last_seen));
            v
        })
    }
    fn events_seen(&self) -> Result<BTreeSet<String>, StoreError> {
        self.call("store.events_seen".into(), |s| {
            s.events_seen.keys().cloned().collect()
        })
    }
}

impl WriteLog for FakeStore {
    fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        self.call("store.intents".into(), |s| {
            s.intents.values().cloned().collect()
        })
    }
    fn record_intents(&self, intents: &[Intent]) -> Result<(), StoreError> {
        let line = format!(
            "store.record_intents {}",
            records(intents.iter().map(|i| &i.target))
        );
        self.call(line, |s| {
            for i in intents {
                s.intents.insert(i.target.clone(), i.clone());
            }
        })
    }
    fn confirm_write(&self, intent: &Intent, audit: &AuditEntry) -> Result<(), StoreError> {
        let line = format!(
            "store.confirm_write {} ({})",
            short_record(&intent.target),
            audit.how
        );
        self.call(line, |s| {
            match (&intent.target, &intent.base) {
                (RecordId::Card(id), chatapp_kommo_sync::store::Base::Card(st)) => {
                    s.snap.cards.insert(*id, st.clone());
                }
                (RecordId::Dialog(k), chatapp_kommo_sync::store::Base::Dialog(st)) => {
                    s.snap.dialogs.insert(k.clone(), st.clone());
                }
                _ => panic!("an intent whose base is of the other kind: {intent:?}"),
            }
            s.audit.push(audit.clone());
            s.intents.remove(&intent.target);
            s.failures.remove(&intent.target);
        })
    }
    fn drop_intent(&self, target: &RecordId) -> Result<(), StoreError> {
        self.call(format!("store.drop_intent {}", short_record(target)), |s| {
            s.intents.remove(target);
        })
    }
    fn write_failures(&self) -> Result<BTreeMap<RecordId, WriteFailure>, StoreError> {
        self.call("store.write_failures".into(), |s| s.failures.clone())
    }
    fn park_write(&self, f: &WriteFailure, audit: &AuditEntry) -> Result<(), StoreError> {
        let line = format!(
            "store.park_write {} ({})",
            short_record(&f.target),
            audit.how
        );
        self.call(line, |s| {
            s.failures.insert(f.target.clone(), f.clone());
            s.audit.push(audit.clone());
            s.intents.remove(&f.target);
        })
    }
}

/// The fake's first runs stage their cards as the store does (the staging is plain memory).
impl CycleLog for FakeStore {
    type Staged = StagedCards;
    fn commit_cycle(&self, c: &CycleCommit<StagedCards>) -> Result<(), StoreError> {
        self.call(format!("store.commit_cycle {}", c.cycle.id), |s| {
            for (id, st) in c.staged.untaken().map(Result::unwrap) {
                s.snap.cards.insert(id, st);
            }
            s.snap.apply(&c.settlement);
            for (id, at) in &c.events_seen {
                s.events_seen.insert(id.clone(), *at);
            }
            s.events_seen.retain(|_, at| *at >= c.prune_events_before);
            for b in &c.bad {
                let q = s
                    .quarantine
                    .entry(Quarantined::key_of(b))
                    .or_insert_with(|| Quarantined {
                        record: b.clone(),
                        first_seen: c.cycle.started_at,
                        last_seen: c.cycle.started_at,
                        cycles: 0,
                    });
                q.last_seen = c.cycle.started_at;
                q.cycles += 1;
            }
            for k in &c.released {
                s.quarantine.remove(k);
            }
            s.watermarks = c.watermarks.clone();
            if let Some(p) = &c.pipelines {
                s.pipelines = Some(p.clone());
            }
            s.cycles.insert(c.cycle.id, c.cycle.clone());
        })
    }
    fn record_cycle(&self, record: &CycleRecord, _retention: &Retention) -> Result<(), StoreError> {
        let line = format!("store.record_cycle {} {}", record.id, record.outcome);
        self.call(line, |s| {
            s.cycles.insert(record.id, record.clone());
        })
    }
    fn next_cycle_id(&self) -> Result<u64, StoreError> {
        self.call("store.next_cycle_id".into(), |s| {
            s.cycles.keys().next_back().map_or(1, |k| k + 1)
        })
    }
}
