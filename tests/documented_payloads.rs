//! Issue 18 item 12: the example bodies of the APIs' own documents (and of third-party ChatApp
//! clients checked against live accounts), copied into `tests/fixtures/` (sources in its
//! README.md), each read by the daemon's real decoder. Wherever the decoder sits behind a client
//! call, the fixture is served by a loopback HTTP server and read through that public call (the
//! client's own query, paging, envelope checks and record-by-record quarantine included); every
//! test also checks that no record was quarantined ([`ApiClient::take_bad`]).
//!
//! Where a test puts a documented record into an envelope or joins a documented fragment to a
//! documented record (the ChatApp list and one-chat envelopes, the event value fragments), it says
//! so where it does it; such bodies are built from the fixtures at run time, never stored.

#![allow(clippy::unwrap_used)]

use chatapp_kommo_sync::chatapp::{CallbackUrl, ChatAppClient, TokenPair};
use chatapp_kommo_sync::config::{Config, FieldRef};
use chatapp_kommo_sync::core::model::{
    CardId, CardKind, DialogKey, EmployeeId, KommoUserId, LeadStage, StageKind, SyncKind,
};
use chatapp_kommo_sync::fuzzing::{self, ChatAppBody, HookCall, KommoBody, Outcome};
use chatapp_kommo_sync::http::{ApiClient, Limits};
use chatapp_kommo_sync::kommo::auth::domain::{self, DomainCheck};
use chatapp_kommo_sync::kommo::auth::{KommoAuth, OAuthSettings, exchange_code};
use chatapp_kommo_sync::kommo::{
    self, CustomField, FieldMap, KommoCard, KommoClient, KommoEvent, Pipelines, Unsorted, Webhook,
    WebhookOutcome,
};
use chatapp_kommo_sync::service::webhooks;
use chatapp_kommo_sync::tokens::{MemoryTokens, OAuthPair, TokenStore};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// fixtures

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A fixture's bytes.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A JSON fixture, parsed.
fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// a loopback server that serves fixtures and records what it was asked

/// One request the server received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Req {
    /// Every value of a query key, in order.
    fn query_all(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn q(&self, key: &str) -> Option<&str> {
        self.query_all(key).first().copied()
    }

    fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} {}: body is not JSON: {e}", self.method, self.path))
    }

    /// Kommo's list pages: page 1 (or no page) is the fixture, later pages are Kommo's empty
    /// answer (204, AMO `error-codes.md` L137).
    fn first_page(&self) -> bool {
        self.q("page").is_none_or(|p| p == "1")
    }
}

/// An answer: status and body (JSON unless empty).
struct Reply(u16, Vec<u8>);

fn ok(body: Vec<u8>) -> Reply {
    Reply(200, body)
}

fn ok_json(v: &Value) -> Reply {
    Reply(200, serde_json::to_vec(v).expect("JSON"))
}

fn no_content() -> Reply {
    Reply(204, vec![])
}

fn unexpected(r: &Req) -> Reply {
    Reply(
        418,
        serde_json::to_vec(&json!({"unexpected": format!("{} {}", r.method, r.path)})).unwrap(),
    )
}

type Handler = dyn Fn(&Req, usize) -> Reply + Send + Sync;

/// A loopback HTTP server; the handler gets each request and how many requests with the same
/// method and path came before it.
struct Loopback {
    base: String,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Loopback {
    async fn start(handler: impl Fn(&Req, usize) -> Reply + Send + Sync + 'static) -> Loopback {
        let handler: Arc<Handler> = Arc::new(handler);
        let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let handler = handler.clone();
                let log = log.clone();
                async move {
                    let req = Req {
                        method: method.to_string(),
                        path: uri.path().to_string(),
                        query: form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                            .into_owned()
                            .collect(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect(),
                        body: body.to_vec(),
                    };
                    let before = {
                        let mut log = log.lock().unwrap();
                        let n = log
                            .iter()
                            .filter(|r| r.method == req.method && r.path == req.path)
                            .count();
                        log.push(req.clone());
                        n
                    };
                    let Reply(status, body) = handler(&req, before);
                    let status = axum::http::StatusCode::from_u16(status).unwrap();
                    (
                        status,
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Loopback { base, seen }
    }

    /// The requests with this method and path, in order.
    fn calls(&self, method: &str, path: &str) -> Vec<Req> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// the clients, built from a config as the daemon builds them

const KOMMO_TOKEN: &str = "documented-payloads-kommo-token";
const FLAG_FIELD: u64 = 269_471;

fn config(base: &str) -> Config {
    let text = format!(
        r#"
[daemon]
state_path = "/nonexistent/documented-payloads.redb"

[kommo]
base_url = "{base}"
token_file = "kommo-token"

[chatapp]
base_url = "{base}"
email = "ops@example.com"
password_file = "chatapp-password"
app_id = "app_1_1"
company_id = 1
license_ids = [72861, 37233, 37236]

[sync]
crm_to_chat = ["contact"]
chat_to_crm = ["lead"]
conflict = "newest"
bootstrap = "adopt"

[links]
messenger_field = "MESSENGER"
"#
    );
    Config::parse(&text, "documented-payloads.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn kommo_client(srv: &Loopback) -> KommoClient {
    let auth = KommoAuth::long_lived(SecretString::from(KOMMO_TOKEN));
    KommoClient::new(&config(&srv.base).kommo, fields(), auth, None).unwrap()
}

fn chatapp_client(srv: &Loopback, tokens: Arc<MemoryTokens>) -> ChatAppClient {
    let cfg = config(&srv.base);
    ChatAppClient::new(
        &cfg.chatapp,
        SecretString::from("chatapp-password"),
        tokens,
        20,
    )
    .unwrap()
}

fn plain_api(srv: &Loopback) -> ApiClient {
    let limits = Limits::standard(5, Duration::from_secs(5), None);
    ApiClient::new("kommo", &srv.base, limits).unwrap()
}

/// The documented ChatApp token answer as the pair the client keeps.
fn documented_chatapp_pair() -> TokenPair {
    let d = &fixture_json("chatapp_tokens_refresh_response.json")["data"];
    TokenPair {
        access_token: d["accessToken"].as_str().unwrap().into(),
        access_token_end_time: d["accessTokenEndTime"].as_i64().unwrap(),
        refresh_token: d["refreshToken"].as_str().unwrap().into(),
        refresh_token_end_time: d["refreshTokenEndTime"].as_i64().unwrap(),
    }
}

/// No record of any answer was quarantined.
fn no_bad(api: &ApiClient) {
    let bad = api.take_bad();
    assert!(bad.is_empty(), "records quarantined: {bad:?}");
}

fn fields() -> FieldMap {
    FieldMap {
        flags: [
            (SyncKind::Lead, FLAG_FIELD),
            (SyncKind::Customer, FLAG_FIELD),
        ]
        .into(),
        messenger: FieldRef::Code("MESSENGER".into()),
        phone: FieldRef::Code("PHONE".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Kommo: OAuth

/// `kommo_oauth_access_token_authorization_code_response.json` through `exchange_code`
/// (`authorize --code`); the request sent is the documented request, key for key.
#[tokio::test]
async fn kommo_authorization_code_answer_becomes_the_pair() {
    let srv = Loopback::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/oauth2/access_token") => ok(fixture(
            "kommo_oauth_access_token_authorization_code_response.json",
        )),
        _ => unexpected(r),
    })
    .await;
    let api = plain_api(&srv);
    // the documented request's values
    let settings = OAuthSettings {
        client_id: "xxxx".into(),
        client_secret: SecretString::from("xxxx"),
        redirect_uri: "https://test.test".into(),
    };
    let pair = exchange_code(&api, &settings, &SecretString::from("xxxxxxx"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.access_token, "xxxxxx");
    assert_eq!(pair.refresh_token, "xxxxx");
    // the access token is no JWT: the expiry is server_time + expires_in
    assert_eq!(pair.expires_at, 1_751_621_727 + 86_400);
    let sent = srv.calls("POST", "/oauth2/access_token");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json(),
        fixture_json("kommo_oauth_access_token_authorization_code_request.json")
    );
}

/// `kommo_oauth_access_token_refresh_response.json` through a refresh: the seed refresh token is
/// exchanged with the documented request, the answer's pair is stored, then used.
#[tokio::test]
async fn kommo_refresh_answer_is_stored_and_used() {
    let srv = Loopback::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/oauth2/access_token") => {
            ok(fixture("kommo_oauth_access_token_refresh_response.json"))
        }
        ("GET", "/api/v4/account") => ok(fixture("kommo_account.json")),
        _ => unexpected(r),
    })
    .await;
    let tokens = Arc::new(MemoryTokens::new());
    let settings = OAuthSettings {
        client_id: "xxxx".into(),
        client_secret: SecretString::from("xxxx"),
        redirect_uri: "https://test.test".into(),
    };
    let auth = KommoAuth::oauth(
        settings,
        tokens.clone() as Arc<dyn TokenStore>,
        Some(&SecretString::from("xxxxx")),
    )
    .unwrap();
    let kommo = KommoClient::new(&config(&srv.base).kommo, fields(), auth, None).unwrap();
    let account = kommo.account().await.unwrap();
    assert_eq!(account.id, 1_231_414);
    let sent = srv.calls("POST", "/oauth2/access_token");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json(),
        fixture_json("kommo_oauth_access_token_refresh_request.json")
    );
    assert_eq!(
        tokens.kommo_pair().unwrap(),
        Some(OAuthPair {
            access_token: "xxxxxx".into(),
            refresh_token: "xxxxx".into(),
            expires_at: 1_751_621_727 + 86_400,
        })
    );
    let used = srv.calls("GET", "/api/v4/account");
    assert_eq!(used[0].header("authorization"), Some("Bearer xxxxxx"));
}

/// An unsigned JWT with these claims (the daemon reads claims without verifying them).
fn unsigned_jwt(claims: &Value) -> String {
    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
    format!(
        "{}.{}.sig",
        b64url(br#"{"alg":"none"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// `kommo_oauth_account_current_subdomain.json` through `domain::check` (asked after a refused
/// refresh). FINDING: the documented answer decodes (`id`, `domain`), but its `domain`
/// `account_subdomain.amocrm.ru` holds an underscore, which the daemon's host-name check refuses:
/// the verdict is "not trusted", not "moved", and the reason says the name "is not under
/// kommo.com, amocrm.ru, amocrm.com" although it is under amocrm.ru (the example's subdomain is a
/// placeholder; real subdomains are host names).
#[tokio::test]
async fn kommo_account_subdomain_answer_is_read() {
    let srv = Loopback::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/oauth2/account/current/subdomain") => {
            ok(fixture("kommo_oauth_account_current_subdomain.json"))
        }
        _ => unexpected(r),
    })
    .await;
    let api = plain_api(&srv);
    let host = domain::authority(&srv.base).unwrap();
    // the access token of the documented account (its id is the answer's `id`)
    let access = unsigned_jwt(&json!({"api_domain": host, "account_id": 123_456}));
    let check = domain::check(&api, &access, "documented-refresh-token").await;
    let sent = srv.calls("GET", "/oauth2/account/current/subdomain");
    assert_eq!(
        sent[0].header("x-refresh-token"),
        Some("documented-refresh-token")
    );
    let DomainCheck::Unknown(why) = check else {
        panic!("expected the documented domain to be refused as a host name: {check:?}");
    };
    assert!(why.contains("\"account_subdomain.amocrm.ru\""), "{why}");
    assert!(why.contains("not trusted"), "{why}");
    // `id` is read: a token of another account does not trust the answer
    let other = unsigned_jwt(&json!({"api_domain": host, "account_id": 999}));
    let DomainCheck::Unknown(why) = domain::check(&api, &other, "documented-refresh-token").await
    else {
        panic!("another account's answer is not trusted");
    };
    assert!(why.contains("named account 123456"), "{why}");
}

// ---------------------------------------------------------------------------------------------
// Kommo: account, users, pipelines, custom fields

/// `kommo_account.json` through `KommoClient::account` and `filters_enabled`.
#[tokio::test]
async fn kommo_account_answer_turns_list_filters_on() {
    let srv = Loopback::start(|r, _| match r.path.as_str() {
        "/api/v4/account" => ok(fixture("kommo_account.json")),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let a = kommo.account().await.unwrap();
    assert_eq!(a.id, 1_231_414);
    assert_eq!(a.current_user_id, 581_651);
    assert_eq!(a.is_api_filter_enabled, Some(true));
    assert!(kommo.filters_enabled().await.unwrap());
    let sent = srv.calls("GET", "/api/v4/account");
    assert_eq!(sent[0].q("with"), Some("is_api_filter_enabled"));
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {KOMMO_TOKEN}").as_str())
    );
}

/// `kommo_users_list.json` through `KommoClient::users`.
#[tokio::test]
async fn kommo_users_answer_maps_every_user() {
    let srv = Loopback::start(|r, _| match r.path.as_str() {
        "/api/v4/users" => ok(fixture("kommo_users_list.json")),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let users = kommo.users().await.unwrap();
    no_bad(&kommo.api);
    let got: Vec<(u64, &str, &str, bool)> = users
        .iter()
        .map(|u| (u.id.0, u.name.as_str(), u.email.as_str(), u.active))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                123_123,
                "Пользователь для примера 2",
                "example2@mail.com",
                true
            ),
            (
                321_321,
                "Пользователь для примера 2",
                "example2@mail.com",
                true
            ),
        ]
    );
    // `_page_count: 1`: one request
    let sent = srv.calls("GET", "/api/v4/users");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].q("limit"), Some("250"));
}

/// `kommo_leads_pipelines_list.json` through `KommoClient::pipelines` and `classify_status`.
#[tokio::test]
async fn kommo_pipelines_answer_classifies_the_statuses() {
    let srv = Loopback::start(|r, _| match r.path.as_str() {
        "/api/v4/leads/pipelines" => ok(fixture("kommo_leads_pipelines_list.json")),
        _ => unexpected(r),
    })
    .await;
    let p = kommo_client(&srv).pipelines().await.unwrap();
    assert_eq!(
        p.names,
        BTreeMap::from([(3_177_727, "Воронка".to_string())])
    );
    // 142 and 143 close a lead in every pipeline: not listed
    assert_eq!(
        p.statuses.keys().copied().collect::<Vec<_>>(),
        vec![32_392_156, 32_392_159, 32_392_165]
    );
    let incoming = &p.statuses[&32_392_156];
    assert_eq!(
        (incoming.pipeline, incoming.name.as_str(), incoming.kind),
        (3_177_727, "Неразобранное", 1)
    );
    let class = |s| kommo::classify_status(s, &p);
    assert_eq!(class(32_392_156), Some(StageKind::Incoming));
    assert_eq!(class(32_392_159), Some(StageKind::Open));
    assert_eq!(class(32_392_165), Some(StageKind::Open));
    assert_eq!(class(142), Some(StageKind::Closed));
    assert_eq!(class(143), Some(StageKind::Closed));
}

/// `kommo_leads_custom_fields_list.json` through `KommoClient::custom_fields`: the short page
/// with a `next` link is followed; Kommo's 204 ends the listing.
#[tokio::test]
async fn kommo_custom_field_definitions_answer_is_read() {
    let srv = Loopback::start(|r, _| match r.path.as_str() {
        "/api/v4/leads/custom_fields" if r.first_page() => {
            ok(fixture("kommo_leads_custom_fields_list.json"))
        }
        "/api/v4/leads/custom_fields" => no_content(),
        _ => unexpected(r),
    })
    .await;
    let defs = kommo_client(&srv)
        .custom_fields(CardKind::Lead)
        .await
        .unwrap();
    let got: Vec<(u64, &str, Option<&str>, &str)> = defs
        .iter()
        .map(|d| {
            (
                d.id,
                d.name.as_str(),
                d.code.as_deref(),
                d.field_type.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (4_439_091, "Пример текстового поля", None, "text"),
            (4_440_043, "Пример поля с типом 'data'", None, "date"),
        ]
    );
    let pages: Vec<String> = srv
        .calls("GET", "/api/v4/leads/custom_fields")
        .iter()
        .map(|r| r.q("page").unwrap_or_default().to_string())
        .collect();
    assert_eq!(pages, ["1", "2"]);
}

/// `kommo_customers_segments_list.json`: the only read example with a checkbox value
/// (`{"value": true}`), decoded as the `custom_fields_values` of a card (`kommo::CustomField`),
/// and, put on a card, read as the checked sync flag.
#[test]
fn kommo_documented_checkbox_value_is_a_checked_flag() {
    let segments = fixture_json("kommo_customers_segments_list.json");
    let values = &segments["_embedded"]["segments"][0]["custom_fields_values"];
    let cfs: Vec<CustomField> = serde_json::from_value(values.clone()).unwrap();
    assert_eq!(cfs.len(), 3);
    assert_eq!(cfs[0].field_id, FLAG_FIELD);
    assert_eq!(cfs[0].field_code.as_deref(), Some("MYSUPERCHECKBOX"));
    let v = &cfs[0].values.as_ref().unwrap()[0].value;
    assert_eq!(v, &json!(true));
    assert!(kommo::checkbox_checked(v));
    assert_eq!(cfs[1].field_code, None, "`field_code: null` is none");
    assert!(!kommo::checkbox_checked(
        &cfs[2].values.as_ref().unwrap()[0].value
    ));
    // the same values on a customer: the sync flag is checked
    let card: KommoCard = serde_json::from_value(
        json!({"id": 1, "responsible_user_id": 504_141, "custom_fields_values": values}),
    )
    .unwrap();
    assert!(
        card.to_obs(CardKind::Customer, &fields(), LeadStage::default())
            .flag
    );
    // the second segment's empty list: unchecked
    let empty = &segments["_embedded"]["segments"][1]["custom_fields_values"];
    let card: KommoCard = serde_json::from_value(
        json!({"id": 2, "responsible_user_id": 504_141, "custom_fields_values": empty}),
    )
    .unwrap();
    assert!(
        !card
            .to_obs(CardKind::Customer, &fields(), LeadStage::default())
            .flag
    );
}

// ---------------------------------------------------------------------------------------------
// Kommo: cards

/// The list fixture of a card kind.
fn list_fixture(kind: CardKind) -> &'static str {
    match kind {
        CardKind::Lead => "kommo_leads_list.json",
        CardKind::Contact => "kommo_contacts_list.json",
        CardKind::Company => "kommo_companies_list.json",
        CardKind::Customer => "kommo_customers_list.json",
    }
}

/// A server with every card list fixture on page 1 and 204 after.
async fn card_lists() -> Loopback {
    Loopback::start(|r, _| {
        let kind = CardKind::ALL
            .into_iter()
            .find(|k| r.path == format!("/api/v4/{}", k.plural()));
        match kind {
            Some(k) if r.first_page() => ok(fixture(list_fixture(k))),
            Some(_) => no_content(),
            None => unexpected(r),
        }
    })
    .await
}

/// What the daemon keeps of a card: id, responsible, updated_at, deleted, (pipeline, status),
/// linked contacts.
type CardView = (u64, u64, i64, bool, (Option<u64>, Option<u64>), Vec<u64>);

fn view(c: &KommoCard, kind: CardKind) -> CardView {
    let o = c.to_obs(kind, &fields(), LeadStage::default());
    (
        c.id,
        c.responsible_user_id,
        c.updated_at,
        c.is_deleted,
        (c.pipeline_id, c.status_id),
        o.contacts,
    )
}

/// `kommo_{leads,contacts,companies,customers}_list.json` through `KommoClient::list_cards`
/// (full reads): every card kept, `_links.next` followed to Kommo's 204.
#[tokio::test]
async fn kommo_card_list_answers_of_every_kind() {
    let srv = card_lists().await;
    let kommo = kommo_client(&srv);
    let expected: [(CardKind, Vec<CardView>); 4] = [
        (
            CardKind::Lead,
            vec![
                (
                    19_619,
                    123_321,
                    1_502_193_501,
                    false,
                    (Some(1300), Some(142)),
                    vec![],
                ),
                (
                    14_460,
                    123_321,
                    1_502_193_501,
                    false,
                    (Some(1300), Some(142)),
                    vec![],
                ),
            ],
        ),
        (
            CardKind::Contact,
            vec![
                (
                    7_143_599,
                    504_141,
                    1_585_758_065,
                    false,
                    (None, None),
                    vec![],
                ),
                (
                    7_767_065,
                    504_141,
                    1_586_359_590,
                    false,
                    (None, None),
                    vec![],
                ),
            ],
        ),
        (
            CardKind::Company,
            vec![
                (
                    7_767_077,
                    504_141,
                    1_586_359_618,
                    false,
                    (None, None),
                    vec![],
                ),
                (
                    7_767_457,
                    504_141,
                    1_586_360_394,
                    false,
                    (None, None),
                    vec![],
                ),
            ],
        ),
        (
            CardKind::Customer,
            vec![
                (
                    1,
                    504_141,
                    1_589_651_187,
                    false,
                    (None, Some(4_740_028)),
                    vec![7_143_559, 9_820_781],
                ),
                (
                    134_923,
                    504_141,
                    1_590_943_901,
                    false,
                    (None, Some(4_740_028)),
                    vec![3],
                ),
            ],
        ),
    ];
    for (kind, want) in expected {
        let cards = kommo.list_cards(kind, None).await.unwrap();
        no_bad(&kommo.api);
        let got: Vec<CardView> = cards.iter().map(|c| view(c, kind)).collect();
        assert_eq!(got, want, "{kind:?}");
        let sent = srv.calls("GET", &format!("/api/v4/{}", kind.plural()));
        let pages: Vec<&str> = sent.iter().map(|r| r.q("page").unwrap()).collect();
        assert_eq!(pages, ["1", "2"], "{kind:?}: next link followed to the 204");
        let with = if kind == CardKind::Contact {
            None
        } else {
            Some("contacts")
        };
        assert_eq!(sent[0].q("with"), with, "{kind:?}");
    }
    // the documented leads are won (142): closed whatever the pipelines table holds
    let lead = &kommo.list_cards(CardKind::Lead, None).await.unwrap()[0];
    let stage = lead
        .lead_stage(CardKind::Lead, &Pipelines::default())
        .unwrap();
    assert_eq!(stage.kind, StageKind::Closed);
    // no checkbox value (`custom_fields_values: null`): the sync flag is unchecked
    assert!(!lead.to_obs(CardKind::Lead, &fields(), stage).flag);
}

/// Incremental reads of the documented lists: leads newest-updated first (`order`), customers
/// through the documented `updated_at` range (no `order`, every card checked).
#[tokio::test]
async fn kommo_card_list_answers_read_incrementally() {
    let srv = card_lists().await;
    let kommo = kommo_client(&srv);
    let leads = kommo
        .list_cards(CardKind::Lead, Some(1_502_193_501))
        .await
        .unwrap();
    assert_eq!(
        leads.iter().map(|c| c.id).collect::<Vec<_>>(),
        [19_619, 14_460]
    );
    let sent = srv.calls("GET", "/api/v4/leads");
    assert_eq!(sent[0].q("order[updated_at]"), Some("desc"));
    let customers = kommo
        .list_cards(CardKind::Customer, Some(1_590_000_000))
        .await
        .unwrap();
    no_bad(&kommo.api);
    assert_eq!(
        customers.iter().map(|c| c.id).collect::<Vec<_>>(),
        [134_923],
        "customer 1 (updated 1589651187) is older; 134923 after it is still read"
    );
    let sent = srv.calls("GET", "/api/v4/customers");
    assert_eq!(sent[0].q("order[updated_at]"), None);
    assert_eq!(sent[0].q("filter[updated_at][from]"), Some("1590000000"));
    assert!(sent[0].q("filter[updated_at][to]").is_some());
}

/// `kommo_leads_list.json` as the answer to a by-id read through `filter[id][]` (the documented
/// account has `is_api_filter_enabled: true`): only the wanted ids are kept.
#[tokio::test]
async fn kommo_list_answer_serves_a_filtered_by_id_read() {
    let srv = Loopback::start(|r, _| match r.path.as_str() {
        "/api/v4/account" => ok(fixture("kommo_account.json")),
        "/api/v4/leads" => ok(fixture("kommo_leads_list.json")),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let cards = kommo
        .cards_by_id(CardKind::Lead, &[19_619, 5])
        .await
        .unwrap();
    no_bad(&kommo.api);
    assert_eq!(cards.iter().map(|c| c.id).collect::<Vec<_>>(), [19_619]);
    let sent = srv.calls("GET", "/api/v4/leads");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].query_all("filter[id][]"), ["19619", "5"]);
}

/// `kommo_{lead,contact,company,customer}_by_id.json` through `KommoClient::cards_by_id` one card
/// at a time (list filters off: the documented account answer with `is_api_filter_enabled` set
/// to false); a 204 is a card that does not exist (AMO `leads-api.md` L248).
#[tokio::test]
async fn kommo_one_card_answers_of_every_kind() {
    let mut account = fixture_json("kommo_account.json");
    account["is_api_filter_enabled"] = json!(false);
    let srv = Loopback::start(move |r, _| match r.path.as_str() {
        "/api/v4/account" => ok_json(&account),
        "/api/v4/leads/3912171" => ok(fixture("kommo_lead_by_id.json")),
        "/api/v4/contacts/3" => ok(fixture("kommo_contact_by_id.json")),
        "/api/v4/companies/1" => ok(fixture("kommo_company_by_id.json")),
        "/api/v4/customers/1" => ok(fixture("kommo_customer_by_id.json")),
        "/api/v4/leads/404404" => no_content(),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    assert!(!kommo.filters_enabled().await.unwrap());

    let leads = kommo
        .cards_by_id(CardKind::Lead, &[3_912_171, 404_404])
        .await
        .unwrap();
    no_bad(&kommo.api);
    assert_eq!(leads.len(), 1, "the 204 is a missing card");
    let lead = &leads[0];
    assert_eq!(
        view(lead, CardKind::Lead),
        (
            3_912_171,
            504_141,
            1_590_683_337,
            false,
            (Some(3_104_455), Some(143)),
            vec![10_971_465]
        )
    );
    let stage = lead
        .lead_stage(CardKind::Lead, &Pipelines::default())
        .unwrap();
    assert_eq!(stage.kind, StageKind::Closed, "143: lost");

    let contacts = kommo.cards_by_id(CardKind::Contact, &[3]).await.unwrap();
    no_bad(&kommo.api);
    let contact = &contacts[0];
    assert_eq!(
        (contact.id, contact.responsible_user_id, contact.updated_at),
        (3, 504_141, 1_590_943_929)
    );
    // the PHONE value (`"enum": "WORK"`, not `enum_code`) is the contact's phone
    let o = contact.to_obs(CardKind::Contact, &fields(), LeadStage::default());
    assert_eq!(o.phones, ["79123"]);
    assert!(o.dialog_refs.is_empty());
    assert!(
        o.contacts.is_empty(),
        "a contact's own leads/companies are no links"
    );

    let companies = kommo.cards_by_id(CardKind::Company, &[1]).await.unwrap();
    assert_eq!(
        view(&companies[0], CardKind::Company),
        (1, 504_141, 1_586_361_223, false, (None, None), vec![])
    );
    let customers = kommo.cards_by_id(CardKind::Customer, &[1]).await.unwrap();
    no_bad(&kommo.api);
    assert_eq!(
        view(&customers[0], CardKind::Customer),
        (
            1,
            504_141,
            1_589_651_187,
            false,
            (None, Some(4_740_028)),
            vec![]
        )
    );
    assert_eq!(srv.calls("GET", "/api/v4/contacts/3")[0].q("with"), None);
    assert_eq!(
        srv.calls("GET", "/api/v4/customers/1")[0].q("with"),
        Some("contacts")
    );
}

// ---------------------------------------------------------------------------------------------
// Kommo: PATCH answers and validation-errors

/// `kommo_{leads,contacts,companies,customers}_patch_response.json` through
/// `KommoClient::patch_responsible`: the ids each answer lists are the confirmed writes (the
/// customers example lists them under `_embedded.leads`, as documented).
#[tokio::test]
async fn kommo_patch_answers_confirm_the_written_ids() {
    let srv = Loopback::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("PATCH", "/api/v4/leads") => ok(fixture("kommo_leads_patch_response.json")),
        ("PATCH", "/api/v4/contacts") => ok(fixture("kommo_contacts_patch_response.json")),
        ("PATCH", "/api/v4/companies") => ok(fixture("kommo_companies_patch_response.json")),
        ("PATCH", "/api/v4/customers") => ok(fixture("kommo_customers_patch_response.json")),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let u = KommoUserId(504_141);
    for (kind, ids) in [
        (CardKind::Lead, vec![54_886, 54_884]),
        (CardKind::Contact, vec![3]),
        (CardKind::Company, vec![11_090_825]),
        (CardKind::Customer, vec![1_299_433]),
    ] {
        let items: Vec<(u64, KommoUserId)> = ids.iter().map(|id| (*id, u)).collect();
        let out = kommo.patch_responsible(kind, &items).await.unwrap();
        assert_eq!(
            out.confirmed,
            ids.iter().copied().collect::<BTreeSet<u64>>(),
            "{kind:?}"
        );
        assert!(out.refused.is_empty(), "{kind:?}");
        let sent = srv.calls("PATCH", &format!("/api/v4/{}", kind.plural()));
        let want: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| json!({"id": id, "responsible_user_id": 504_141, "request_id": i.to_string()}))
            .collect();
        assert_eq!(sent[0].json(), Value::Array(want), "{kind:?}");
    }
}

const DOCUMENTED_REFUSAL: &str = "NotSupportedChoice: The value you selected is not a valid choice. (custom_fields_values.0.field_id)";

/// `kommo_error_validation_400.json` through `kommo::refused_items`: `request_id` "0" names the
/// batch's first item.
#[test]
fn kommo_validation_errors_name_the_refused_request_id() {
    let body = fixture("kommo_error_validation_400.json");
    let u = KommoUserId(504_141);
    let refused = kommo::refused_items(&body, &[(777, u), (54_886, u)]).unwrap();
    assert_eq!(
        refused,
        BTreeMap::from([(777, DOCUMENTED_REFUSAL.to_string())])
    );
    assert_eq!(
        kommo::refused_items(&body, &[]),
        None,
        "a request_id naming no item of the batch: the whole request was refused"
    );
}

/// `kommo_error_validation_400.json` then `kommo_leads_patch_response.json` through
/// `KommoClient::patch_responsible`: the refused item is parked, the others sent again at once
/// and confirmed.
#[tokio::test]
async fn kommo_validation_errors_refuse_only_their_item() {
    let srv = Loopback::start(|r, n| match (r.method.as_str(), r.path.as_str()) {
        ("PATCH", "/api/v4/leads") if n == 0 => {
            Reply(400, fixture("kommo_error_validation_400.json"))
        }
        ("PATCH", "/api/v4/leads") => ok(fixture("kommo_leads_patch_response.json")),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let u = KommoUserId(504_141);
    let out = kommo
        .patch_responsible(CardKind::Lead, &[(777, u), (54_886, u), (54_884, u)])
        .await
        .unwrap();
    assert_eq!(
        out.refused,
        BTreeMap::from([(777, DOCUMENTED_REFUSAL.to_string())])
    );
    assert_eq!(out.confirmed, BTreeSet::from([54_886, 54_884]));
    let sent = srv.calls("PATCH", "/api/v4/leads");
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1].json(),
        json!([
            {"id": 54_886, "responsible_user_id": 504_141, "request_id": "0"},
            {"id": 54_884, "responsible_user_id": 504_141, "request_id": "1"},
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Kommo: events

const ALL_KINDS: [CardKind; 4] = [
    CardKind::Lead,
    CardKind::Contact,
    CardKind::Company,
    CardKind::Customer,
];

/// `kommo_events_list.json` through `KommoClient::events`, and its record and
/// `kommo_event_by_id.json` as `KommoEvent`: the documented event (`lead_added`) decodes, and is
/// then left out by its type (the daemon reads only responsible and status changes).
#[tokio::test]
async fn kommo_events_answer_decodes_and_other_types_are_left_out() {
    let srv = Loopback::start(|r, _| match r.path.as_str() {
        "/api/v4/events" if r.first_page() => ok(fixture("kommo_events_list.json")),
        "/api/v4/events" => no_content(),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let events = kommo.events(&ALL_KINDS, true, 1_888_888_000).await.unwrap();
    no_bad(&kommo.api);
    assert!(events.is_empty(), "{events:?}");
    let sent = srv.calls("GET", "/api/v4/events");
    assert_eq!(sent.len(), 2, "the next link followed to the 204");
    // the documented bare form of `filter[created_at]` ("created after"), AMO L52-53
    assert_eq!(sent[0].q("filter[created_at]"), Some("1888887999"));
    assert_eq!(
        sent[0].q("filter[type]"),
        Some("entity_responsible_changed,lead_status_changed")
    );
    assert_eq!(
        sent[0].query_all("filter[entity][]"),
        ["lead", "contact", "company", "customer"]
    );
    // the same page through the decoder alone: one record, none skipped
    assert_eq!(
        fuzzing::kommo_decode(KommoBody::Events, &fixture("kommo_events_list.json")).unwrap(),
        Outcome {
            records: 1,
            skipped: 0
        }
    );
    let listed = &fixture_json("kommo_events_list.json")["_embedded"]["events"][0];
    for v in [listed.clone(), fixture_json("kommo_event_by_id.json")] {
        let e: KommoEvent = serde_json::from_value(v).unwrap();
        assert_eq!(e.id, "01pz58t6p04ymgsgfbmfyfy1mf");
        assert_eq!(e.kind, "lead_added");
        assert_eq!(e.card(), Some(CardId::new(CardKind::Lead, 26_060_763)));
        assert_eq!((e.created_by, e.created_at), (939_801, 1_888_888_888));
        assert_eq!(e.new_responsible(), None);
        assert_eq!(e.new_status(), None);
    }
}

/// The documented event record (`kommo_event_by_id.json`) with `type` and `value_after` /
/// `value_before` from a documented fragment: the event the daemon reads.
fn documented_event(kind: &str, fragment: &str) -> Value {
    let mut e = fixture_json("kommo_event_by_id.json");
    let f = fixture_json(fragment);
    e["type"] = json!(kind);
    e["value_after"] = f["value_after"].clone();
    e["value_before"] = f["value_before"].clone();
    e
}

/// `kommo_events_value_entity_responsible_changed.json` and
/// `kommo_events_value_lead_status_changed.json` (fragments), each in the documented event
/// record, served as an events page through `KommoClient::events`.
#[tokio::test]
async fn kommo_documented_event_values_are_read() {
    let responsible = documented_event(
        "entity_responsible_changed",
        "kommo_events_value_entity_responsible_changed.json",
    );
    let status = documented_event(
        "lead_status_changed",
        "kommo_events_value_lead_status_changed.json",
    );
    for (event, stages) in [
        (responsible, false),
        (status.clone(), true),
        (status, false),
    ] {
        let kind = event["type"].as_str().unwrap().to_string();
        let page = json!({"_embedded": {"events": [event]}});
        let srv = Loopback::start(move |r, _| match r.path.as_str() {
            "/api/v4/events" => ok_json(&page),
            _ => unexpected(r),
        })
        .await;
        let kommo = kommo_client(&srv);
        let events = kommo.events(&ALL_KINDS, stages, 1).await.unwrap();
        no_bad(&kommo.api);
        let sent = srv.calls("GET", "/api/v4/events");
        assert_eq!(sent.len(), 1, "a short page without next ends the listing");
        if kind == "lead_status_changed" && !stages {
            assert!(events.is_empty(), "stage changes are read only when asked");
            continue;
        }
        assert_eq!(events.len(), 1, "{kind}");
        let e = &events[0];
        assert_eq!(e.card(), Some(CardId::new(CardKind::Lead, 26_060_763)));
        assert_eq!((e.created_by, e.created_at), (939_801, 1_888_888_888));
        if kind == "entity_responsible_changed" {
            assert_eq!(e.new_responsible(), Some(KommoUserId(504_329)));
            assert_eq!(e.new_status(), None);
        } else {
            assert_eq!(e.new_status(), Some((437_642, 5_233_224)));
            assert_eq!(e.new_responsible(), None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kommo: unsorted

/// `kommo_leads_unsorted_list.json` through `KommoClient::unsorted_contacts` and as
/// `kommo::Unsorted`: the documented record (category `sip`) decodes with its lead and its one
/// contact, which is what links an incoming lead (`unsorted-api.md` L99-101).
#[tokio::test]
async fn kommo_unsorted_answer_decodes_with_its_lead_and_contact() {
    let srv = Loopback::start(|r, _| match r.path.as_str() {
        "/api/v4/leads/unsorted" => ok(fixture("kommo_leads_unsorted_list.json")),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let contacts = kommo
        .unsorted_contacts(&BTreeSet::from([7_002_787]))
        .await
        .unwrap();
    assert_eq!(contacts, BTreeMap::from([(7_002_787, 13_176_707)]));
    let sent = srv.calls("GET", "/api/v4/leads/unsorted");
    assert_eq!(sent.len(), 1, "a short page without next ends the listing");
    assert_eq!(sent[0].query_all("filter[category][]"), ["chats"]);
    let body = fixture("kommo_leads_unsorted_list.json");
    assert_eq!(
        fuzzing::kommo_decode(KommoBody::Unsorted, &body).unwrap(),
        Outcome {
            records: 1,
            skipped: 0
        }
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    let rec: Unsorted = serde_json::from_value(v["_embedded"]["unsorted"][0].clone()).unwrap();
    assert_eq!(rec.uid, "98fb033cefde74f5de1a5d3980a2a2d108037");
    let embedded = rec.embedded.as_ref().unwrap();
    assert_eq!(
        embedded.leads.iter().map(|l| l.id).collect::<Vec<_>>(),
        [7_002_787]
    );
    assert_eq!(
        embedded.contacts.iter().map(|c| c.id).collect::<Vec<_>>(),
        [13_176_707]
    );
    assert_eq!(kommo::unsorted_contact(&rec), Some(13_176_707));
}

// ---------------------------------------------------------------------------------------------
// Kommo: webhooks API and webhook bodies

/// `kommo_webhooks_list.json` and `kommo_webhooks_subscribe_response.json` through
/// `KommoClient::webhook`, `register_webhook` and `post_webhook`: the hook with `disabled: true`
/// is registered again; the POST body is the documented request (without its optional `sort`).
#[tokio::test]
async fn kommo_webhooks_answers_keep_hooks_alive() {
    let srv = Loopback::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/api/v4/webhooks") => ok(fixture("kommo_webhooks_list.json")),
        ("POST", "/api/v4/webhooks") => ok(fixture("kommo_webhooks_subscribe_response.json")),
        _ => unexpected(r),
    })
    .await;
    let kommo = kommo_client(&srv);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let disabled = kommo
        .webhook("https://api.test.ru/amoWebHook")
        .await
        .unwrap();
    assert_eq!(
        disabled,
        Some(Webhook {
            destination: "https://api.test.ru/amoWebHook".into(),
            settings: s(&["update_lead"]),
            disabled: true,
        })
    );
    assert_eq!(
        srv.calls("GET", "/api/v4/webhooks")[0].q("filter[destination]"),
        Some("https://api.test.ru/amoWebHook")
    );
    let enabled = kommo.webhook("https://webhook-uri.com").await.unwrap();
    assert_eq!(
        enabled.map(|h| (h.settings, h.disabled)),
        Some((s(&["add_task"]), false))
    );
    assert_eq!(kommo.webhook("https://example.test").await.unwrap(), None);

    assert_eq!(
        kommo
            .register_webhook("https://webhook-uri.com", &s(&["add_task"]))
            .await
            .unwrap(),
        WebhookOutcome::Present
    );
    assert!(srv.calls("POST", "/api/v4/webhooks").is_empty());
    assert_eq!(
        kommo
            .register_webhook("https://api.test.ru/amoWebHook", &s(&["update_lead"]))
            .await
            .unwrap(),
        WebhookOutcome::Reenabled
    );
    assert_eq!(
        kommo
            .register_webhook("https://example.test", &s(&["add_lead"]))
            .await
            .unwrap(),
        WebhookOutcome::Created
    );
    let posts = srv.calls("POST", "/api/v4/webhooks");
    assert_eq!(posts.len(), 2);
    let mut documented = fixture_json("kommo_webhooks_subscribe_request.json");
    documented.as_object_mut().unwrap().remove("sort");
    assert_eq!(posts[1].json(), documented);
    // the answer is read, not assumed: its settings come back even when others were asked
    let h = kommo
        .post_webhook("https://example.test", &s(&["responsible_lead"]))
        .await
        .unwrap();
    assert_eq!(
        h,
        Webhook {
            destination: "https://example.test".into(),
            settings: s(&["add_lead"]),
            disabled: false,
        }
    );
}

/// A documented webhook body (webhooks-format.md shows the decoded form as JSON) flattened to the
/// `x-www-form-urlencoded` PHP-array keys Kommo sends (`leads[status][0][id]=...`).
fn php_form_pairs(v: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}[{k}]")
            }
        };
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(&key(k), v, out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(&key(&i.to_string()), v, out)),
            Value::String(s) => out.push((prefix.to_string(), s.clone())),
            Value::Null => out.push((prefix.to_string(), String::new())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = vec![];
    walk("", v, &mut out);
    out
}

fn form_body(pairs: &[(String, String)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

/// A `.derived.form` fixture as sent (the file ends with a newline, the body does not).
fn derived_form(name: &str) -> Vec<u8> {
    let mut b = fixture(name);
    while b.last().is_some_and(u8::is_ascii_whitespace) {
        b.pop();
    }
    b
}

/// The daemon's Kommo webhook route answers a body: 200, and whether it triggered a cycle.
fn kommo_route(body: Vec<u8>) -> (u16, bool) {
    let a = fuzzing::webhook_route(&HookCall {
        chatapp: false,
        post: true,
        token: fuzzing::HOOK_TOKEN.as_bytes().to_vec(),
        content_length: None,
        body,
    });
    (a.status, a.triggered)
}

/// The Kommo webhook bodies of `webhooks-format.md` through the daemon's webhook route
/// (`webhooks::kommo_body_is_responsible_change`): the two `.derived.form` fixtures as they are,
/// the JSON ones flattened the same way (checked against the derived files first). Every entity
/// hook carries `responsible_user_id` and triggers a cycle; so does the task hook (the filter
/// cannot tell it from a responsible change; the daemon registers only `responsible_*`); the
/// message and unsorted hooks do not.
#[test]
fn kommo_webhook_bodies_trigger_a_cycle_when_they_carry_a_responsible() {
    for (json_name, form_name) in [
        (
            "kommo_webhook_leads_status.json",
            "kommo_webhook_leads_status.derived.form",
        ),
        (
            "kommo_webhook_contacts_add_company.json",
            "kommo_webhook_contacts_add_company.derived.form",
        ),
    ] {
        let form = derived_form(form_name);
        let decoded: BTreeSet<(String, String)> =
            form_urlencoded::parse(&form).into_owned().collect();
        let flattened: BTreeSet<(String, String)> = php_form_pairs(&fixture_json(json_name))
            .into_iter()
            .collect();
        assert_eq!(decoded, flattened, "{form_name} is {json_name} as a form");
        assert!(
            webhooks::kommo_body_is_responsible_change(&form),
            "{form_name}"
        );
        assert_eq!(kommo_route(form), (200, true), "{form_name}");
    }
    for (name, triggers) in [
        ("kommo_webhook_leads_status.json", true),
        ("kommo_webhook_contacts_add_contact.json", true),
        ("kommo_webhook_contacts_add_company.json", true),
        ("kommo_webhook_task_update.json", true),
        ("kommo_webhook_message_add.json", false),
        ("kommo_webhook_unsorted_add.json", false),
        ("kommo_webhook_unsorted_update.json", false),
        ("kommo_webhook_unsorted_delete_decline.json", false),
        ("kommo_webhook_unsorted_delete_accept.json", false),
    ] {
        let body = form_body(&php_form_pairs(&fixture_json(name)));
        assert_eq!(
            webhooks::kommo_body_is_responsible_change(&body),
            triggers,
            "{name}"
        );
        assert_eq!(kommo_route(body), (200, triggers), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// ChatApp: tokens, the error envelope, licenses, callbacks

/// `chatapp_error_invalid_token.json` (with HTTP 200 and with 401: CA-HELP does not give the
/// status) then `chatapp_tokens_refresh_response.json` and `chatapp_licenses_list.json`, through
/// `ChatAppClient::licenses`: the refusal makes the client refresh with the `Refresh` header, the
/// documented pair is stored and used, and the licenses are read.
#[tokio::test]
async fn chatapp_invalid_token_envelope_refreshes_and_the_token_answer_is_used() {
    let fresh = documented_chatapp_pair();
    for status in [200, 401] {
        let access = fresh.access_token.clone();
        let srv = Loopback::start(move |r, _| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/v1/licenses") if r.header("authorization") == Some(access.as_str()) => {
                ok(fixture("chatapp_licenses_list.json"))
            }
            ("GET", "/v1/licenses") => Reply(status, fixture("chatapp_error_invalid_token.json")),
            ("POST", "/v1/tokens/refresh") => ok(fixture("chatapp_tokens_refresh_response.json")),
            _ => unexpected(r),
        })
        .await;
        let stale = TokenPair {
            access_token: "stale-access-token".into(),
            access_token_end_time: 1,
            refresh_token: "stale-refresh-token".into(),
            refresh_token_end_time: 2,
        };
        let tokens = Arc::new(MemoryTokens::with(None, Some(stale)));
        let chatapp = chatapp_client(&srv, tokens.clone());
        let licenses = chatapp
            .licenses()
            .await
            .unwrap_or_else(|e| panic!("HTTP {status}: {e}"));
        assert_eq!(
            chatapp.refreshes.load(Ordering::Relaxed),
            1,
            "HTTP {status}"
        );
        assert_eq!(chatapp.logins.load(Ordering::Relaxed), 0, "HTTP {status}");
        let refresh = srv.calls("POST", "/v1/tokens/refresh");
        assert_eq!(refresh[0].header("refresh"), Some("stale-refresh-token"));
        assert!(refresh[0].body.is_empty());
        assert_eq!(
            tokens.chatapp_pair().unwrap(),
            Some(fresh.clone()),
            "HTTP {status}"
        );
        let got: Vec<(u64, Vec<String>, Option<String>)> = licenses
            .iter()
            .map(|l| (l.license_id, l.messenger_types(), l.inactive_reason()))
            .collect();
        let wa = vec!["grWhatsApp".to_string()];
        assert_eq!(
            got,
            vec![(37_233, wa.clone(), None), (37_236, wa, None)],
            "HTTP {status}: `status.code: paid` is active"
        );
    }
}

/// `chatapp_error_invalid_token.json` answered to the fresh token too: the call fails as an
/// authentication error that quotes ChatApp's code and message.
#[tokio::test]
async fn chatapp_invalid_token_envelope_after_a_refresh_is_an_auth_error() {
    let srv = Loopback::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/v1/licenses") => ok(fixture("chatapp_error_invalid_token.json")),
        ("POST", "/v1/tokens/refresh") => ok(fixture("chatapp_tokens_refresh_response.json")),
        _ => unexpected(r),
    })
    .await;
    let tokens = Arc::new(MemoryTokens::with(None, Some(documented_chatapp_pair())));
    let chatapp = chatapp_client(&srv, tokens);
    let e = chatapp.licenses().await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, chatapp_kommo_sync::http::ApiError::Auth { .. }),
        "{text}"
    );
    assert!(
        text.contains("ApiInvalidTokenError Invalid Token"),
        "{text}"
    );
    // the same body through the fuzz entry point's error decoder, at both statuses (its check
    // took an invalid-token answer for a 401 or 403 only, and panicked on this body at 200)
    for status in [200, 401] {
        fuzzing::chatapp_decode(
            ChatAppBody::Error(status),
            &fixture("chatapp_error_invalid_token.json"),
        )
        .unwrap();
    }
}

/// `chatapp_tokens_refresh_response.json` as the login answer (`POST /v1/tokens`, the same shape
/// per ADI) and `chatapp_callback_urls_list.json` through `ChatAppClient::callback_urls`.
#[tokio::test]
async fn chatapp_login_answer_is_stored_and_callbacks_are_read() {
    let fresh = documented_chatapp_pair();
    let access = fresh.access_token.clone();
    let srv = Loopback::start(move |r, _| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/v1/tokens") => ok(fixture("chatapp_tokens_refresh_response.json")),
        ("GET", "/v1/callbackUrls") if r.header("authorization") == Some(access.as_str()) => {
            ok(fixture("chatapp_callback_urls_list.json"))
        }
        _ => unexpected(r),
    })
    .await;
    let tokens = Arc::new(MemoryTokens::new());
    let chatapp = chatapp_client(&srv, tokens.clone());
    let callbacks = chatapp.callback_urls().await.unwrap();
    assert_eq!(chatapp.logins.load(Ordering::Relaxed), 1);
    assert_eq!(tokens.chatapp_pair().unwrap(), Some(fresh));
    assert_eq!(
        srv.calls("POST", "/v1/tokens")[0].json(),
        json!({"email": "ops@example.com", "password": "chatapp-password", "appId": "app_1_1"})
    );
    assert_eq!(
        callbacks,
        vec![CallbackUrl {
            license_id: 37_233,
            messenger_type: "grWhatsApp".into(),
            events: vec!["message".into(), "messageStatus".into()],
            url: Some("https://webhook.site/f411787a-1def-4ec7-85b0-bba061893d37".into()),
        }]
    );
}

/// `chatapp_licenses_list.json`, `chatapp_callback_urls_list.json`, `kommo_webhooks_list.json`
/// and `kommo_webhooks_subscribe_response.json` through the registration pass
/// (`webhooks::register`, as `check-config --online` and the daemon run it): the line whose
/// callback calls another integration (37233, webhook.site) is left and named; the free line
/// (37236) is set; the Kommo hook, absent from the list, is created. The callback PUT's answer
/// is not documented: a bare `{"success": true}` envelope stands for it.
#[tokio::test]
async fn documented_lists_drive_the_webhook_registration_pass() {
    let srv = Loopback::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/api/v4/webhooks") => ok(fixture("kommo_webhooks_list.json")),
        ("POST", "/api/v4/webhooks") => ok(fixture("kommo_webhooks_subscribe_response.json")),
        ("GET", "/v1/licenses") => ok(fixture("chatapp_licenses_list.json")),
        ("GET", "/v1/callbackUrls") => ok(fixture("chatapp_callback_urls_list.json")),
        ("PUT", "/v1/licenses/37236/messengers/grWhatsApp/callbackUrl") => {
            ok_json(&json!({"success": true}))
        }
        _ => unexpected(r),
    })
    .await;
    let cfg = config(&srv.base);
    let kommo = kommo_client(&srv);
    let tokens = Arc::new(MemoryTokens::with(None, Some(documented_chatapp_pair())));
    let chatapp = chatapp_client(&srv, tokens);
    let token = SecretString::from("hook-token-of-the-daemon");
    let base = "https://sync.example.com";
    let reg = webhooks::register(Some(&kommo), &chatapp, &cfg, base, &token, true)
        .await
        .unwrap();
    assert!(reg.problems.is_empty(), "{:?}", reg.problems);
    let notes: Vec<(&str, &str, bool, bool)> = reg
        .notes
        .iter()
        .map(|n| (n.api, n.text.as_str(), n.warn, n.wrote))
        .collect();
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert!(
        notes[0].0 == "kommo" && notes[0].1.contains("registered") && notes[0].3,
        "{notes:#?}"
    );
    assert!(
        notes[1].1.contains("license 37233 grWhatsApp")
            && notes[1].1.contains("host webhook.site")
            && notes[1].2
            && !notes[1].3,
        "{notes:#?}"
    );
    assert!(
        notes[2].1.contains("license 37236 grWhatsApp") && notes[2].3,
        "{notes:#?}"
    );
    let puts: Vec<Req> = srv
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "PUT")
        .cloned()
        .collect();
    assert_eq!(puts.len(), 1, "only the free line is set");
    assert_eq!(
        puts[0].json(),
        json!({"events": ["chatResponsible", "message"], "url": "https://sync.example.com/hooks/chatapp/hook-token-of-the-daemon"})
    );
    assert_eq!(
        srv.calls("POST", "/api/v4/webhooks")[0].json(),
        json!({"destination": "https://sync.example.com/hooks/kommo/hook-token-of-the-daemon", "settings": ["responsible_lead", "responsible_contact"]})
    );
}

// ---------------------------------------------------------------------------------------------
// ChatApp: chats and messages

fn documented_key() -> DialogKey {
    DialogKey::new(72_861, "caWhatsApp", "77000000112")
}

/// `chatapp_chats_list_item.json` (one item of `GET /v1/chats`) in the list envelope TEZ's client
/// reads (`{"success": true, "data": {"items": [...]}}`, no `nextPage`: the last page), through
/// `ChatAppClient::chats`.
#[tokio::test]
async fn chatapp_chats_list_item_is_read() {
    let page =
        json!({"success": true, "data": {"items": [fixture_json("chatapp_chats_list_item.json")]}});
    let srv = Loopback::start(move |r, _| match r.path.as_str() {
        "/v1/chats" => ok_json(&page),
        _ => unexpected(r),
    })
    .await;
    let tokens = Arc::new(MemoryTokens::with(None, Some(documented_chatapp_pair())));
    let chatapp = chatapp_client(&srv, tokens);
    let chats = chatapp.chats(None).await.unwrap();
    no_bad(&chatapp.api);
    assert_eq!(chats.len(), 1);
    let c = &chats[0];
    assert_eq!(c.key(), documented_key());
    assert_eq!(c.phone.as_deref(), Some("77000000112"));
    assert_eq!(c.last_time, 1_784_627_855);
    assert_eq!(c.status, None);
    let o = c.to_obs();
    assert_eq!(o.responsible, Some(EmployeeId(96_346)));
    assert_eq!(o.last_time, 1_784_627_855);
    assert!(!o.closed, "`status: null` is open");
    assert_eq!(o.phone.as_deref(), Some("77000000112"));
    assert_eq!(o.session, 0, "no `conversation`");
    let sent = srv.calls("GET", "/v1/chats");
    assert_eq!(sent.len(), 1, "no nextPage: the last page");
    assert_eq!(sent[0].q("companyId"), Some("1"));
    assert_eq!(sent[0].q("limit"), Some("100"));
    assert_eq!(sent[0].q("filter[licenseIds]"), Some("72861,37233,37236"));
    // an incremental read stops at the first chat older than the watermark
    assert!(chatapp.chats(Some(1_784_627_856)).await.unwrap().is_empty());
    // the same page through the decoder alone
    let body = serde_json::to_vec(
        &json!({"success": true, "data": {"items": [fixture_json("chatapp_chats_list_item.json")]}}),
    )
    .unwrap();
    assert_eq!(
        fuzzing::chatapp_decode(ChatAppBody::Chats, &body).unwrap(),
        Outcome {
            records: 1,
            skipped: 0
        }
    );
}

/// The one-chat answer (`GET .../chats/{chatId}`): no source shows one, so the documented chat
/// item is served as its `data`, and then only the `id`, `name` and `responsible` that the one
/// client reading it uses (SLI); both through `ChatAppClient::chat`.
#[tokio::test]
async fn chatapp_one_chat_answer_full_and_minimal() {
    let item = fixture_json("chatapp_chats_list_item.json");
    let minimal =
        json!({"id": item["id"], "name": item["name"], "responsible": item["responsible"]});
    let answers = [item, minimal];
    let srv = Loopback::start(move |r, n| match r.path.as_str() {
        "/v1/licenses/72861/messengers/caWhatsApp/chats/77000000112" => {
            ok_json(&json!({"success": true, "data": answers[n.min(1)]}))
        }
        _ => unexpected(r),
    })
    .await;
    let tokens = Arc::new(MemoryTokens::with(None, Some(documented_chatapp_pair())));
    let chatapp = chatapp_client(&srv, tokens);
    for (which, last_time) in [("full", 1_784_627_855), ("minimal", 0)] {
        let c = chatapp
            .chat(&documented_key())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{which}: the chat is read"));
        no_bad(&chatapp.api);
        assert_eq!(c.key(), documented_key(), "{which}");
        assert_eq!(c.to_obs().responsible, Some(EmployeeId(96_346)), "{which}");
        assert_eq!(c.last_time, last_time, "{which}");
    }
}

/// `chatapp_chat_messages_items.json` (items of `GET .../chats/{chatId}/messages`) in the list
/// envelope, through `ChatAppClient::recent_messages` (the write probe looks there for the
/// assignment its write leaves).
#[tokio::test]
async fn chatapp_dialog_messages_are_read() {
    let page = json!({"success": true, "data": {"items": fixture_json("chatapp_chat_messages_items.json")}});
    let srv = Loopback::start(move |r, _| match r.path.as_str() {
        "/v1/licenses/72861/messengers/caWhatsApp/chats/77000000112/messages" => ok_json(&page),
        _ => unexpected(r),
    })
    .await;
    let tokens = Arc::new(MemoryTokens::with(None, Some(documented_chatapp_pair())));
    let chatapp = chatapp_client(&srv, tokens);
    let msgs = chatapp.recent_messages(&documented_key(), 4).await.unwrap();
    let got: Vec<(Option<String>, bool)> = msgs.iter().map(|m| (m.id(), m.is_system())).collect();
    assert_eq!(
        got,
        vec![
            (Some("wamid.IN1".into()), false),
            (Some("wamid.OUT1".into()), false),
            (Some("uuid-1".into()), true),
            (Some("wamid.OUT2".into()), false),
        ]
    );
    assert_eq!(
        msgs[2].text(),
        "Назначен ответственный \"Тестова Аяжан [85501]\""
    );
    assert_eq!(msgs[0].text(), "Ассалаумалейкум");
    let sent = srv.calls(
        "GET",
        "/v1/licenses/72861/messengers/caWhatsApp/chats/77000000112/messages",
    );
    assert_eq!(sent[0].q("limit"), Some("4"));
    assert_eq!(sent[0].q("includeSystemMessages"), Some("1"));
}

/// `chatapp_webhook_message_status.json` through the daemon's ChatApp callback route: a
/// `messageStatus` callback is answered 200 and triggers no cycle.
#[test]
fn chatapp_message_status_callback_is_no_trigger() {
    let body = fixture("chatapp_webhook_message_status.json");
    assert!(!webhooks::chatapp_body_is_relevant(&body));
    let a = fuzzing::webhook_route(&HookCall {
        chatapp: true,
        post: true,
        token: fuzzing::HOOK_TOKEN.as_bytes().to_vec(),
        content_length: None,
        body,
    });
    assert_eq!((a.status, a.triggered), (200, false));
}

// ---------------------------------------------------------------------------------------------
// the fixtures and their README

/// Every file of `tests/fixtures/` has a row in its README.md, every row names a file that is
/// there, and every fixture is read by a test of this file.
#[test]
fn every_fixture_is_listed_and_used() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "README.md")
        .collect();
    let readme = std::fs::read_to_string(format!("{FIXTURES}/README.md")).unwrap();
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    assert_eq!(on_disk, listed, "tests/fixtures/ and its README table");
    let this = include_str!("documented_payloads.rs");
    for name in &on_disk {
        assert!(
            this.contains(&format!("\"{name}\"")),
            "{name} is read by no test"
        );
    }
}
