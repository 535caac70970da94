//! Entry points for the fuzz targets (`fuzz/`) and their regression tests
//! (`tests/fuzz_regressions.rs`). Not part of the daemon's interface.
//!
//! Each entry point feeds untrusted bytes through the code the daemon runs on them (the webhook
//! parsers and routes, the API clients' decoding, including the record-by-record fallback of
//! [`ApiClient::decode_list`], the config parser and the schedules it names, the Messenger-value
//! and phone parsers, the redaction of texts that leave the process) and then checks what came out:
//! a panic here is either a panic of the daemon's own code or a broken invariant, and both are
//! bugs. The `*_bytes` functions are how a fuzz target cuts its input into arguments; a crash
//! input is replayed by passing the same bytes to the same function.

use crate::chatapp::{self, Chat};
use crate::config::{Config, FieldRef, FlagFields, KommoConfig, LinksConfig};
use crate::core::links::{DialogIndex, looks_like_phone, parse_messenger_value, phone_digits};
use crate::core::links::{phone_of_chat_id, resolve_links};
use crate::core::model::{
    CardId, CardKind, CardState, DialogKey, DialogRef, DialogState, StageKind,
};
use crate::http::{ApiClient, ApiError, BadRecord, Limits, Response, decode};
use crate::kommo::{self, FieldMap, KommoCard, KommoClient, KommoEvent, Pipelines, StatusInfo};
use crate::service::hint_parse::{self, MAX_NAMED, Named};
use crate::service::webhooks::{self, Hooks, MAX_BODY};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a decoding entry point made of a body: the records it kept and those it skipped (a page
/// decoded record by record; they are quarantined as [`BadRecord`]s by the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Records decoded (1 for a single object).
    pub records: usize,
    /// Records of a well-formed page skipped because they do not fit.
    pub skipped: usize,
}

/// A base URL that is never called (decoding needs a client, never the network).
const NOWHERE: &str = "http://127.0.0.1:9";

fn limits() -> Limits {
    Limits::standard(5, Duration::from_secs(5), Some(Duration::from_secs(60)))
}

fn kommo_client() -> &'static KommoClient {
    static C: OnceLock<KommoClient> = OnceLock::new();
    C.get_or_init(|| {
        let cfg = KommoConfig {
            base_url: NOWHERE.into(),
            token_file: None,
            oauth: None,
            requests_per_second: 5,
            batch_size: 50,
            timeout: Duration::from_secs(5),
            events_overlap: Duration::from_secs(120),
            block_cooloff: Duration::from_secs(60),
            shared_limit: None,
        };
        let auth =
            crate::kommo::auth::KommoAuth::long_lived(secrecy::SecretString::from("fuzz-token"));
        KommoClient::new(&cfg, FieldMap::default(), auth, None).expect("a client without network")
    })
}

/// One decode at a time through the shared clients: each decode takes the records its client
/// skipped, so two at once (the regression tests run in parallel) would take each other's. A
/// decode that panicked (a failing test) leaves the turn usable.
fn decode_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn chatapp_api() -> &'static ApiClient {
    static C: OnceLock<ApiClient> = OnceLock::new();
    C.get_or_init(|| ApiClient::new("chatapp", NOWHERE, limits()).expect("a client"))
}

/// Checks an error that leaves the process: short, one line, names its API.
fn check_error(api: &str, e: &ApiError) {
    let text = e.to_string();
    assert!(text.starts_with(api), "{text}");
    if let ApiError::Decode { path, reason, .. } = e {
        assert!(path.chars().count() <= 203, "path too long: {path}");
        assert!(reason.chars().count() <= 303, "reason too long: {reason}");
        assert!(!reason.contains('\n') && !path.contains('\n'), "{text}");
    }
}

/// Checks the skipped records of one decode and counts them.
fn check_bad(api: &str, bad: Vec<BadRecord>) -> usize {
    for b in &bad {
        assert_eq!(b.api, api);
        assert!(b.path.chars().count() <= 203, "{b:?}");
        assert!(b.reason.chars().count() <= 203, "{b:?}");
        assert!(b.subject.as_ref().is_none_or(|s| s.chars().count() <= 123));
    }
    bad.len()
}

/// A list page's result, checked: every record of the page is either kept or skipped.
fn list_outcome<T, M>(
    api: &ApiClient,
    r: Result<(Vec<T>, M, usize), ApiError>,
) -> Result<(Vec<T>, M, Outcome), ApiError> {
    let skipped = check_bad(api.api, api.take_bad());
    let (items, meta, total) = r.inspect_err(|e| check_error(api.api, e))?;
    assert_eq!(
        items.len() + skipped,
        total,
        "a record lost or counted twice"
    );
    let o = Outcome {
        records: items.len(),
        skipped,
    };
    Ok((items, meta, o))
}

fn single<T>(api: &str, r: Result<T, ApiError>) -> Result<(T, Outcome), ApiError> {
    let t = r.inspect_err(|e| check_error(api, e))?;
    Ok((
        t,
        Outcome {
            records: 1,
            skipped: 0,
        },
    ))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------
// webhooks

/// The webhook token the in-process routes are built with.
pub const HOOK_TOKEN: &str = "fuzz-hook-token";

/// One call to a webhook route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    /// `/hooks/chatapp/...` (else `/hooks/kommo/...`).
    pub chatapp: bool,
    /// POST (else GET).
    pub post: bool,
    /// The path's token segment as raw bytes (percent-encoded into the URI).
    pub token: Vec<u8>,
    /// A `content-length` header value, if any.
    pub content_length: Option<Vec<u8>>,
    /// The body.
    pub body: Vec<u8>,
}

/// What a route answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookAnswer {
    /// The status.
    pub status: u16,
    /// The call triggered a cycle.
    pub triggered: bool,
}

/// `webhooks::kommo_body_is_responsible_change`.
pub fn webhook_kommo(body: &[u8]) -> bool {
    webhooks::kommo_body_is_responsible_change(body)
}

/// `webhooks::chatapp_body_is_relevant`.
pub fn webhook_chatapp(body: &[u8]) -> bool {
    webhooks::chatapp_body_is_relevant(body)
}

/// Cuts fuzz bytes into a call to the `chatapp` (else Kommo) route: byte 0 holds flags (bit 1
/// GET, bits 2-3 the token: the right one unless both are set, then the bytes up to the first
/// `\n`; bits 4-5 the `content-length`: none, the body's, or the bytes up to the next `\n`), the
/// rest is the body.
pub fn hook_call_of(chatapp: bool, data: &[u8]) -> HookCall {
    let (flags, mut rest) = match data.split_first() {
        Some((f, r)) => (*f, r),
        None => (0, data),
    };
    let field = |rest: &mut &[u8]| -> Vec<u8> {
        let (f, r) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (*rest, &[][..]),
        };
        *rest = r;
        f.to_vec()
    };
    let token = if flags & 0b1100 == 0b1100 {
        field(&mut rest)
    } else {
        HOOK_TOKEN.as_bytes().to_vec()
    };
    let cl_mode = (flags >> 4) & 0b11;
    let cl_given = (cl_mode == 2 || cl_mode == 3).then(|| field(&mut rest));
    let body = rest.to_vec();
    let content_length = match cl_mode {
        1 => Some(body.len().to_string().into_bytes()),
        2 | 3 => cl_given,
        _ => None,
    };
    HookCall {
        chatapp,
        post: flags & 2 == 0,
        token,
        content_length,
        body,
    }
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut s = String::new();
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            s.push(char::from(*b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Sends `call` through the daemon's webhook routes in process and checks the answer: 405 for a
/// GET; for the right token 413 for a body declared or found larger than [`MAX_BODY`], else 200
/// with a trigger exactly when the body is relevant; for any other token 404 (400 when the segment
/// is not UTF-8), never a trigger.
pub fn webhook_route(call: &HookCall) -> HookAnswer {
    use tower::ServiceExt;
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
    }
    let hooks = Hooks::new(secrecy::SecretString::from(HOOK_TOKEN));
    let app = webhooks::routes(hooks.clone());
    let route = if call.chatapp { "chatapp" } else { "kommo" };
    let uri = format!("/hooks/{route}/{}", percent_encode(&call.token));
    let mut req = axum::http::Request::builder()
        .method(if call.post { "POST" } else { "GET" })
        .uri(uri);
    let declared = call
        .content_length
        .as_deref()
        .and_then(|v| axum::http::HeaderValue::from_bytes(v).ok());
    if let Some(v) = &declared {
        req = req.header(axum::http::header::CONTENT_LENGTH, v.clone());
    }
    let req = req
        .body(axum::body::Body::from(call.body.clone()))
        .expect("a valid request");
    let status = RT.with(|rt| rt.block_on(app.oneshot(req)));
    let status = match status {
        Ok(r) => r.status().as_u16(),
        Err(e) => match e {},
    };
    let triggered = hooks.triggered.load(Ordering::Relaxed) > 0;
    let answer = HookAnswer { status, triggered };
    let right = call.token == HOOK_TOKEN.as_bytes();
    if !call.post {
        let expected = if call.token.is_empty() { 404 } else { 405 };
        assert_eq!(status, expected, "{call:?}");
    } else if right {
        let too_long = declared
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > MAX_BODY as u64)
            || call.body.len() > MAX_BODY;
        if too_long {
            assert_eq!(status, 413, "{call:?}");
        } else {
            assert_eq!(status, 200, "{call:?}");
            let relevant = if call.chatapp {
                webhook_chatapp(&call.body)
            } else {
                webhook_kommo(&call.body)
            };
            assert_eq!(triggered, relevant, "{call:?}");
        }
    } else {
        // a segment that does not decode to UTF-8 is refused by the path extractor (400)
        let expected: &[u16] = if std::str::from_utf8(&call.token).is_ok() {
            &[404]
        } else {
            &[400, 404]
        };
        assert!(expected.contains(&status), "{status} for {call:?}");
    }
    if !call.post || !right {
        assert!(!triggered, "{call:?}");
    }
    answer
}

/// Checks what a body names ([`hint_parse`]): at most [`MAX_NAMED`] records, every card id above
/// 0, every dialog's chat id and messenger type non-empty; a Kommo body names no dialog and a
/// ChatApp body no card.
fn check_named(named: &Named, chatapp: bool, body: &[u8]) {
    assert!(named.len() <= MAX_NAMED, "{named:?} from {body:?}");
    assert!(
        named.cards.iter().all(|c| c.id > 0),
        "{named:?} from {body:?}"
    );
    assert!(
        named
            .dialogs
            .iter()
            .all(|d| !d.chat_id.is_empty() && !d.messenger_type.is_empty()),
        "{named:?} from {body:?}"
    );
    if chatapp {
        assert!(named.cards.is_empty(), "{named:?} from {body:?}");
    } else {
        assert!(named.dialogs.is_empty(), "{named:?} from {body:?}");
    }
}

/// The Kommo webhook target: the whole input as a body to [`webhook_kommo`] and to
/// [`hint_parse::kommo_named`] (`check_named`), then as a call to the Kommo route
/// ([`hook_call_of`]).
pub fn webhook_kommo_bytes(data: &[u8]) -> HookAnswer {
    let _ = webhook_kommo(data);
    check_named(&hint_parse::kommo_named(data), false, data);
    webhook_route(&hook_call_of(false, data))
}

/// The ChatApp webhook target: the whole input as a body to [`webhook_chatapp`] and to
/// [`hint_parse::chatapp_named`] (`check_named`), then as a call to the ChatApp route
/// ([`hook_call_of`]).
pub fn webhook_chatapp_bytes(data: &[u8]) -> HookAnswer {
    let _ = webhook_chatapp(data);
    check_named(&hint_parse::chatapp_named(data), true, data);
    webhook_route(&hook_call_of(true, data))
}

// ---------------------------------------------------------------------------------------------
// Kommo answers

/// Which Kommo answer a body is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KommoBody {
    /// A page of cards of a kind (`GET /api/v4/{kind}`), then each card's stage and observation.
    Cards(CardKind),
    /// A page of events (`GET /api/v4/events`).
    Events,
    /// A page of users (`GET /api/v4/users`).
    Users,
    /// The pipelines (`GET /api/v4/leads/pipelines`).
    Pipelines,
    /// A page of custom field definitions (`GET /api/v4/{kind}/custom_fields`).
    CustomFields,
    /// A page of unsorted records (`GET /api/v4/leads/unsorted`), then each one's dialog.
    Unsorted,
    /// `GET /api/v4/account`.
    Account,
    /// The answer to a `PATCH` of cards.
    Patch,
    /// A token's JWT `exp` (the long-lived token file, an OAuth answer's access token).
    Jwt,
}

impl KommoBody {
    /// Every kind, in the order the first fuzz byte picks them.
    pub const ALL: [KommoBody; 12] = [
        KommoBody::Cards(CardKind::Lead),
        KommoBody::Cards(CardKind::Contact),
        KommoBody::Cards(CardKind::Company),
        KommoBody::Cards(CardKind::Customer),
        KommoBody::Events,
        KommoBody::Users,
        KommoBody::Pipelines,
        KommoBody::CustomFields,
        KommoBody::Unsorted,
        KommoBody::Account,
        KommoBody::Patch,
        KommoBody::Jwt,
    ];
}

/// The flag field id the card checks use for every kind.
pub const FLAG_FIELD: u64 = 184_994;

fn field_maps() -> [FieldMap; 2] {
    let flags = FlagFields {
        incoming_lead: Some(FLAG_FIELD),
        lead: Some(FLAG_FIELD),
        contact: Some(FLAG_FIELD),
        company: None,
        customer: Some(FLAG_FIELD),
    };
    let by_id = LinksConfig {
        messenger_field: FieldRef::Id(1),
        match_phone: true,
        phone_field: FieldRef::Code("2".into()),
    };
    [
        FieldMap::new(&flags, &LinksConfig::default()),
        FieldMap::new(&FlagFields::default(), &by_id),
    ]
}

/// Pipeline 1 with an "Incoming leads" status 10 and an open status 11.
pub fn sample_pipelines() -> Pipelines {
    let mut p = Pipelines::default();
    p.names.insert(1, "Sales".into());
    for (id, kind) in [(10, 1), (11, 0)] {
        p.statuses.insert(
            id,
            StatusInfo {
                pipeline: 1,
                name: format!("status {id}"),
                kind,
            },
        );
    }
    p
}

fn check_ref(r: &DialogRef) {
    match r {
        DialogRef::Full(k) => {
            for part in [&k.messenger_type, &k.chat_id] {
                assert!(!part.is_empty() && part.trim() == part.as_str(), "{k:?}");
            }
        }
        DialogRef::ChatId(c) => assert!(!c.is_empty() && c.trim() == c.as_str(), "{c:?}"),
        DialogRef::Phone(p) => assert!(is_digits(p), "{p:?}"),
    }
}

fn check_card(c: &KommoCard, kind: CardKind) {
    let pipelines = sample_pipelines();
    let stage = c.lead_stage(kind, &pipelines);
    if kind != CardKind::Lead {
        assert_eq!(stage, Some(Default::default()));
    }
    let stage = stage.unwrap_or_default();
    for fields in field_maps() {
        let o = c.to_obs(kind, &fields, stage);
        assert_eq!(o.responsible.0, c.responsible_user_id);
        assert!(o.phones.iter().all(|p| is_digits(p)), "{:?}", o.phones);
        assert!(o.phones.is_sorted() && o.dialog_refs.is_sorted());
        assert!(o.contacts.windows(2).all(|w| w[0] < w[1]));
        if kind == CardKind::Contact {
            assert!(o.contacts.is_empty());
        } else {
            assert!(o.dialog_refs.is_empty() && o.phones.is_empty());
        }
        o.dialog_refs.iter().for_each(check_ref);
        let _ = o.into_state();
    }
}

fn check_events(mut events: Vec<KommoEvent>) {
    for e in &events {
        let _ = (e.card(), e.new_responsible(), e.new_status());
        if let Some(c) = e.card() {
            assert_eq!(c.id, e.entity_id);
        }
    }
    // as `KommoClient::events` leaves them
    events.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    events.dedup_by(|a, b| a.id == b.id);
}

/// Reads `body` as the Kommo answer `which`, the way the client does, and checks the result.
// Long on purpose: one fuzz entry point feeding the same bytes to every Kommo decoder in turn.
pub fn kommo_decode(which: KommoBody, body: &[u8]) -> Result<Outcome, ApiError> {
    let _one_at_a_time = decode_turn();
    let k = kommo_client();
    let api = &k.api;
    let get = |path: &str| format!("GET {path}");
    match which {
        KommoBody::Cards(kind) => {
            let path = format!("/api/v4/{}", kind.plural());
            let r = k.decode_cards(kind, &path, body);
            let (cards, _has_next, o) = list_outcome(api, r)?;
            for c in &cards {
                check_card(c, kind);
            }
            let _ = kommo::page_ends_listing(o.records + o.skipped, kommo::PAGE_LIMIT, true, 50);
            Ok(o)
        }
        KommoBody::Events => {
            let endpoint = get("/api/v4/events");
            let r = api.decode_list::<KommoEvent, kommo::EventsPage<KommoEvent>, kommo::EventsPage<serde_json::Value>>(
                &endpoint,
                body,
                "_embedded.events",
                kommo::event_subject,
            );
            let (events, _has_next, o) = list_outcome(api, r)?;
            check_events(events);
            Ok(o)
        }
        KommoBody::Users => {
            let endpoint = get("/api/v4/users");
            let r = api.decode_list::<kommo::UserItem, kommo::UsersPage<kommo::UserItem>, kommo::UsersPage<serde_json::Value>>(
                &endpoint,
                body,
                "_embedded.users",
                kommo::card_subject,
            );
            let (_, _page_count, o) = list_outcome(api, r)?;
            Ok(o)
        }
        KommoBody::Pipelines => {
            let r = decode::<kommo::PipelinesPage>("kommo", &get("/api/v4/leads/pipelines"), body);
            Ok(single("kommo", r)?.1)
        }
        KommoBody::CustomFields => {
            let r =
                decode::<kommo::FieldDefsPage>("kommo", &get("/api/v4/leads/custom_fields"), body);
            Ok(single("kommo", r)?.1)
        }
        KommoBody::Unsorted => {
            let r = decode::<kommo::UnsortedPage>("kommo", &get("/api/v4/leads/unsorted"), body);
            let (p, _) = single("kommo", r)?;
            for rec in &p.embedded.unsorted {
                let _lead = rec
                    .embedded
                    .as_ref()
                    .and_then(|e| e.leads.first())
                    .map(|l| l.id);
                let _contact = kommo::unsorted_contact(rec);
            }
            Ok(Outcome {
                records: p.embedded.unsorted.len(),
                skipped: 0,
            })
        }
        KommoBody::Account => {
            let r = decode::<kommo::Account>("kommo", &get("/api/v4/account"), body);
            Ok(single("kommo", r)?.1)
        }
        KommoBody::Patch => {
            let r = decode::<kommo::PatchResult>("kommo", "PATCH /api/v4/leads", body);
            Ok(single("kommo", r)?.1)
        }
        KommoBody::Jwt => {
            let text = String::from_utf8_lossy(body);
            let exp = crate::kommo::auth::jwt_exp(&text);
            Ok(Outcome {
                records: usize::from(exp.is_some()),
                skipped: 0,
            })
        }
    }
}

/// [`kommo_decode`] with the kind picked by the first byte, the rest as the body.
pub fn kommo_decode_bytes(data: &[u8]) -> Result<Outcome, ApiError> {
    let Some((first, body)) = data.split_first() else {
        return Ok(Outcome::default());
    };
    let which = KommoBody::ALL[usize::from(*first) % KommoBody::ALL.len()];
    kommo_decode(which, body)
}

// ---------------------------------------------------------------------------------------------
// ChatApp answers

/// Which ChatApp answer a body is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatAppBody {
    /// A page of chats (`GET /v1/chats`), then each chat's key, observation and write path.
    Chats,
    /// One chat (`GET /v1/licenses/.../chats/{chatId}`).
    Chat,
    /// The employees (`GET /v1/companies/{companyId}/employees`).
    Employees,
    /// The licenses (`GET /v1/licenses`).
    Licenses,
    /// A login or refresh answer (`POST /v1/tokens`, `POST /v1/tokens/refresh`).
    Token,
    /// An error answer with this status (its text for an error, and whether it rejects the token).
    Error(u16),
}

impl ChatAppBody {
    /// The kinds the first fuzz byte picks (an error answer's status comes from the second).
    pub const KINDS: usize = 6;
}

fn check_chat(c: &Chat) {
    let key = c.key();
    assert_eq!(key.chat_id, c.id);
    let o = c.to_obs();
    assert!(o.phone.as_deref().is_none_or(is_digits), "{:?}", o.phone);
    assert!(o.responsible.is_none_or(|e| e.0 != 0));
    let template = crate::config::SetResponsibleConfig::default().path;
    let path = chatapp::set_responsible_path(&template, &key);
    assert!(path.is_ascii(), "{path}");
    let url = chatapp_api().url(&path);
    let parsed = reqwest::Url::parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    // the chat id stays one path segment (ids of "", "." and ".." are refused when decoding)
    assert_eq!(parsed.path_segments().map(|s| s.count()), Some(8), "{url}");
}

/// Reads `body` as the ChatApp answer `which`, the way the client does, and checks the result.
pub fn chatapp_decode(which: ChatAppBody, body: &[u8]) -> Result<Outcome, ApiError> {
    use chatapp::{Envelope, Items};
    let _one_at_a_time = decode_turn();
    let api = chatapp_api();
    match which {
        ChatAppBody::Chats => {
            let endpoint = "GET /v1/chats";
            let r = api
                .decode_list::<Chat, Envelope<Items<Chat>>, Envelope<Items<serde_json::Value>>>(
                    endpoint,
                    body,
                    "data.items",
                    chatapp::chat_subject,
                );
            let (chats, next_page, o) = list_outcome(api, r)?;
            chats.iter().for_each(check_chat);
            // as `ChatAppClient::chats` reads the cursor
            let _cursor = match next_page {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            Ok(o)
        }
        ChatAppBody::Chat => {
            let endpoint = "GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}";
            let e: Envelope<serde_json::Value> =
                decode("chatapp", endpoint, body).inspect_err(|e| check_error("chatapp", e))?;
            let chat: Option<Chat> =
                api.decode_record(endpoint, &e.data, "data", chatapp::chat_subject);
            let skipped = check_bad("chatapp", api.take_bad());
            assert_eq!(usize::from(chat.is_some()) + skipped, 1);
            chat.iter().for_each(check_chat);
            Ok(Outcome {
                records: usize::from(chat.is_some()),
                skipped,
            })
        }
        ChatAppBody::Employees => {
            let endpoint = "GET /v1/companies/{companyId}/employees";
            let r = api.decode_list::<chatapp::EmployeeItem, Envelope<Items<chatapp::EmployeeItem>>, Envelope<Items<serde_json::Value>>>(
                endpoint,
                body,
                "data.items",
                chatapp::employee_subject,
            );
            Ok(list_outcome(api, r)?.2)
        }
        ChatAppBody::Licenses => {
            let r = decode::<Envelope<Vec<chatapp::License>>>("chatapp", "GET /v1/licenses", body);
            let (l, _) = single("chatapp", r)?;
            Ok(Outcome {
                records: l.data.len(),
                skipped: 0,
            })
        }
        ChatAppBody::Token => {
            let r =
                decode::<Envelope<crate::tokens::TokenPair>>("chatapp", "POST /v1/tokens", body);
            Ok(single("chatapp", r)?.1)
        }
        ChatAppBody::Error(status) => {
            let Ok(status) = reqwest::StatusCode::from_u16(status) else {
                return Ok(Outcome::default());
            };
            let r = Response {
                status,
                content_type: "application/json".into(),
                body: body.to_vec(),
            };
            let invalid = chatapp::is_invalid_token(&r);
            // a 401, or the code `ApiInvalidTokenError` in the body whatever the status (CA-HELP
            // documents the code, not the status; the documented envelope at HTTP 200 is one).
            // Read with typed structs, as the client reads it: serde skips the fields it does
            // not keep without checking their UTF-8, so a body whose other strings are not UTF-8
            // still names its code (a `Value` would refuse the whole body).
            #[derive(serde::Deserialize)]
            struct Named {
                error: Code,
            }
            #[derive(serde::Deserialize)]
            struct Code {
                code: String,
            }
            let names_code = serde_json::from_slice::<Named>(body)
                .is_ok_and(|n| n.error.code == "ApiInvalidTokenError");
            assert!(!invalid || status.as_u16() == 401 || names_code, "{status}");
            let text = chatapp::error_text(&r);
            assert!(text.chars().count() <= 203, "{text}");
            assert!(!text.contains('\n'), "{text}");
            let _ = (r.is_html(), r.excerpt(120));
            Ok(Outcome::default())
        }
    }
}

/// [`chatapp_decode`] with the kind picked by the first byte (an error's status by the second and
/// third), the rest as the body.
pub fn chatapp_decode_bytes(data: &[u8]) -> Result<Outcome, ApiError> {
    let Some((first, body)) = data.split_first() else {
        return Ok(Outcome::default());
    };
    let which = match usize::from(*first) % ChatAppBody::KINDS {
        0 => ChatAppBody::Chats,
        1 => ChatAppBody::Chat,
        2 => ChatAppBody::Employees,
        3 => ChatAppBody::Licenses,
        4 => ChatAppBody::Token,
        _ => {
            let (status, body) = match body {
                [a, b, rest @ ..] => (100 + u16::from_le_bytes([*a, *b]) % 500, rest),
                _ => (401, body),
            };
            return chatapp_decode(ChatAppBody::Error(status), body);
        }
    };
    chatapp_decode(which, body)
}

// ---------------------------------------------------------------------------------------------
// config

/// Parses a config text as `check-config` and the daemon's start do (`Config::parse`), then what
/// the daemon derives from a valid one: the engine's policy, the kinds, the schedules and their
/// next occurrences.
pub fn config_text(text: &str) -> Result<Config, crate::config::ConfigErrors> {
    let cfg = Config::parse(text, "fuzz.toml")?;
    let _ = (
        cfg.policy(),
        cfg.kinds(),
        cfg.user_pairs(),
        cfg.syncs_leads(),
    );
    // The daemon adds these to the clock (a cycle's deadline, the breaker's cool-off, retries
    // within the budget) and counts them in seconds and milliseconds: a valid config keeps every
    // one of them in range (`Instant + Duration` panics on overflow, in release builds too).
    let (d, k, c) = (&cfg.daemon, &cfg.kommo, &cfg.chatapp);
    let clock = std::time::Instant::now();
    for (key, dur) in [
        ("daemon.cycle_budget", d.cycle_budget),
        ("daemon.webhook_debounce", d.webhook_debounce),
        ("daemon.webhook_min_interval", d.webhook_min_interval),
        ("kommo.timeout", k.timeout),
        ("kommo.events_overlap", k.events_overlap),
        ("kommo.block_cooloff", k.block_cooloff),
        ("chatapp.timeout", c.timeout),
        ("chatapp.chats_overlap", c.chats_overlap),
        ("sync.clock_skew", cfg.sync.clock_skew),
    ] {
        let fits = dur
            .checked_mul(2)
            .is_some_and(|twice| clock.checked_add(twice).is_some())
            && i64::try_from(dur.as_millis()).is_ok();
        assert!(fits, "{key} = {dur:?} is accepted but overflows the clock");
    }
    let now = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("a time");
    for s in [&cfg.daemon.poll_schedule, &cfg.daemon.full_schedule] {
        if let Some(next) = s.next_after(now) {
            assert!(next > now);
        }
        if let Some(i) = s.interval_after(now) {
            let off = crate::core::schedule::spread_offset("fuzz", i);
            let _ = s.clone().with_offset(off).next_after(now);
        }
    }
    Ok(cfg)
}

/// [`config_text`] of UTF-8 input (other bytes are not a config text: `load` fails on them first).
pub fn config_bytes(data: &[u8]) -> Option<Result<Config, crate::config::ConfigErrors>> {
    std::str::from_utf8(data).ok().map(config_text)
}

// ---------------------------------------------------------------------------------------------
// links

/// Parses each line of `text` as a Messenger-field value and as a phone or chat id, then builds
/// dialogs from the full references among them and resolves every reference against them (and a
/// contact holding them all). Returns the references parsed.
// Long on purpose: one fuzz entry point checking several invariants of the same input in turn.
pub fn links(text: &str) -> Vec<DialogRef> {
    let mut refs = vec![];
    for line in text.lines() {
        let digits = phone_digits(line);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert!(digits.len() <= line.len());
        if looks_like_phone(line) {
            assert!(digits.len() >= 5);
        }
        if let Some(p) = phone_of_chat_id(line) {
            assert!(is_digits(&p) && p.len() >= 5, "{p:?}");
        }
        match parse_messenger_value(line) {
            None => assert!(line.trim().is_empty()),
            Some(r) => {
                check_ref(&r);
                refs.push(r);
            }
        }
    }
    let mut dialogs: BTreeMap<DialogKey, DialogState> = BTreeMap::new();
    for (i, r) in refs.iter().enumerate() {
        let key = match r {
            DialogRef::Full(k) => k.clone(),
            DialogRef::ChatId(c) => DialogKey::new(1, "grWhatsApp", c),
            DialogRef::Phone(_) => continue,
        };
        let phone = (i % 2 == 1).then(|| phone_digits(&key.chat_id));
        dialogs.insert(
            key,
            DialogState {
                responsible: None,
                changed_at: 0,
                last_time: 0,
                session: 0,
                closed: false,
                phone,
            },
        );
    }
    let ix = DialogIndex::new(dialogs.iter());
    for r in &refs {
        let found = ix.resolve(r);
        assert!(found.iter().all(|k| dialogs.contains_key(k)), "{r:?}");
        if let DialogRef::Full(k) = r {
            assert_eq!(found, vec![k]);
        }
        if let DialogRef::ChatId(c) = r {
            assert!(found.windows(2).all(|w| w[0] < w[1]));
            assert!(found.iter().any(|k| &k.chat_id == c), "{r:?}");
        }
    }
    let contact = CardState {
        responsible: crate::core::model::KommoUserId(1),
        changed_at: 0,
        flag: true,
        deleted: false,
        contacts: vec![],
        dialog_refs: refs.clone(),
        phones: refs
            .iter()
            .filter_map(|r| match r {
                DialogRef::Phone(p) => Some(p.clone()),
                _ => None,
            })
            .collect(),
        lead: Default::default(),
    };
    let mut lead = contact.clone();
    lead.contacts = vec![7];
    lead.dialog_refs.clear();
    lead.lead.kind = StageKind::Open;
    let cards: BTreeMap<CardId, CardState> = [
        (CardId::new(CardKind::Contact, 7), contact),
        (CardId::new(CardKind::Lead, 8), lead),
    ]
    .into();
    for match_phone in [false, true] {
        let l = resolve_links(&cards, &dialogs, match_phone);
        for (d, cs) in &l.cards_of {
            assert!(dialogs.contains_key(d));
            assert!(cs.windows(2).all(|w| w[0] < w[1]));
        }
    }
    refs
}

/// [`links`] of the input as text (invalid UTF-8 replaced, as values arrive through JSON anyway).
pub fn links_bytes(data: &[u8]) -> Vec<DialogRef> {
    links(&String::from_utf8_lossy(data))
}

// ---------------------------------------------------------------------------------------------
// redaction

/// Secrets the redaction entry point registers (at least as long as the mask, none overlapping
/// it); registered once per process.
pub const SECRETS: [&str; 2] = ["hunter2-password", "s3cr3t pass phrase"];

/// Scrubs `text` and cuts excerpts of it at a few lengths; checks that no output is longer than
/// its input (excerpts: than the cut plus `...`), holds a registered secret, or spans two lines.
/// Returns the scrubbed text.
pub fn redact(text: &str) -> String {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| SECRETS.iter().for_each(|s| crate::redact::register(s)));
    let n = text.chars().count();
    let s = crate::redact::scrub(text);
    assert!(s.chars().count() <= n, "{text:?} -> {s:?}");
    for secret in SECRETS {
        assert!(!s.contains(secret), "{text:?} -> {s:?}");
    }
    for max in [0, 1, 10, 120, 200, n] {
        let e = crate::redact::excerpt(text, max);
        assert!(e.chars().count() <= max + 3, "{max}: {text:?} -> {e:?}");
        assert!(!e.chars().any(char::is_control), "{e:?}");
        for secret in SECRETS {
            assert!(!e.contains(secret), "{text:?} -> {e:?}");
        }
    }
    s
}

/// [`redact`] of UTF-8 input.
pub fn redact_bytes(data: &[u8]) -> Option<String> {
    std::str::from_utf8(data).ok().map(redact)
}
