//! The ChatApp API client: tokens (login, refresh with the `Refresh` header, persisted in the state
//! db and reused across runs), employees, chats newest-first, one chat, and the call that sets a
//! dialog's responsible (UNCONFIRMED in ChatApp's public material: method, path and body field come
//! from `[chatapp.set_responsible]`). Facts and sources: `../shared/api/chatapp.md`.

use crate::config::{ChatAppConfig, SetResponsibleConfig};
use crate::core::links::phone_digits;
use crate::core::model::{DialogKey, DialogObs, Employee, EmployeeId};
use crate::http::{ApiClient, ApiError, Limits, ListPage, Response};
use crate::ports::ChatRead;
pub use crate::tokens::TokenPair;
use crate::tokens::TokenStore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::Mutex;

const API: &str = "chatapp";
/// Chats per page (ChatApp's ceiling).
pub const CHATS_LIMIT: usize = 100;
#[derive(Deserialize)]
pub(crate) struct Envelope<T> {
    pub(crate) data: T,
}

impl<T: serde::de::DeserializeOwned> ListPage<T> for Envelope<Items<T>> {
    type Meta = Option<serde_json::Value>;
    fn split(self) -> (Vec<T>, Self::Meta) {
        (self.data.items, self.data.next_page)
    }
}

/// Names a raw chat `licenseId:messengerType:id` (a [`crate::http::BadRecord`]'s subject).
pub(crate) fn chat_subject(v: &serde_json::Value) -> Option<String> {
    let id = v.get("id")?;
    let id = id
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| id.to_string());
    Some(format!(
        "{}:{}:{id}",
        v.get("licenseId")
            .map(|l| l.to_string())
            .unwrap_or_default(),
        v.get("messengerType")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
    ))
}

/// Names a raw employee by its id.
pub(crate) fn employee_subject(v: &serde_json::Value) -> Option<String> {
    v.get("id").map(|id| format!("employee {id}"))
}

/// The envelope every ChatApp answer carries: `{"success": true, "data": ..}` or
/// `{"success": false, "error": {"code", "message"}}` (CA-HELP's error example; TEZ's
/// `chatapp_client.py` and FARA read `success` on every answer, whatever the HTTP status).
#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
pub(crate) struct Items<T> {
    items: Vec<T>,
    #[serde(default, rename = "nextPage")]
    next_page: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct EmployeeItem {
    id: u64,
    /// Shown beside the id; a name of an unexpected type is ignored (the employee still maps).
    #[serde(default, rename = "fullName")]
    full_name: Option<serde_json::Value>,
    #[serde(default)]
    email: Option<String>,
}

/// A chat as ChatApp lists it (fields the daemon uses).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    /// Chat id in the messenger.
    #[serde(deserialize_with = "path_segment")]
    pub id: String,
    /// License.
    pub license_id: u64,
    /// Messenger type.
    #[serde(deserialize_with = "path_segment")]
    pub messenger_type: String,
    /// Phone, if any.
    #[serde(default)]
    pub phone: Option<String>,
    /// Time of the last activity (unix seconds); `null` or absent (an old chat: SWIFT's
    /// `AllItemsModel.swift` decodes it as `Int?`) is 0, older than any watermark.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub last_time: i64,
    /// The responsible employee, `null` when unassigned.
    #[serde(default)]
    pub responsible: Option<ResponsibleRef>,
    /// Chat status (values UNCONFIRMED; `closed` is taken as closed).
    #[serde(default)]
    pub status: Option<String>,
    /// The current conversation.
    #[serde(default)]
    pub conversation: Option<Conversation>,
}

/// `responsible` of a chat.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsibleRef {
    /// Employee id; `null` (or absent) is read as unassigned.
    #[serde(default)]
    pub id: Option<u64>,
}

/// `conversation` of a chat.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    /// Start (unix seconds), 0 if unknown.
    #[serde(default)]
    pub start_time: Option<i64>,
}

/// A number ChatApp may send as `null`: 0.
fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.unwrap_or(0))
}

/// True when a chat id or messenger type can be one URL path segment, as the daemon puts it into
/// URL paths: empty, `.` and `..` cannot (URL parsers drop or climb such a segment, even
/// percent-encoded, so a write would go to another path). The one test: [`path_segment`] decodes
/// with it, and the webhook hints (`crate::service::hint_parse`) name a chat only when it holds.
pub(crate) fn is_path_segment(s: &str) -> bool {
    !(s.is_empty() || s == "." || s == "..")
}

/// A chat id or messenger type, which the daemon puts into URL paths as one segment: what
/// [`is_path_segment`] refuses is refused; such a chat is quarantined like any record that does
/// not fit.
fn path_segment<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !is_path_segment(&s) {
        return Err(serde::de::Error::custom(format!(
            "{s:?} cannot be a URL path segment"
        )));
    }
    Ok(s)
}

/// True when a chat status means closed. ChatApp's status values are UNCONFIRMED; this is the one
/// place that interprets them.
pub fn status_is_closed(status: Option<&str>) -> bool {
    status.is_some_and(|s| s.eq_ignore_ascii_case("closed"))
}

impl Chat {
    /// The chat as the ChatApp port hands it to the cycle.
    pub fn into_read(self) -> ChatRead {
        ChatRead {
            view: self.to_obs(),
            key: self.key(),
        }
    }

    /// The dialog's key.
    pub fn key(&self) -> DialogKey {
        DialogKey::new(self.license_id, &self.messenger_type, &self.id)
    }

    /// The daemon's view of the chat.
    pub fn to_obs(&self) -> DialogObs {
        DialogObs {
            responsible: self
                .responsible
                .as_ref()
                .and_then(|r| r.id)
                .filter(|id| *id != 0)
                .map(EmployeeId),
            last_time: self.last_time,
            session: self
                .conversation
                .as_ref()
                .and_then(|c| c.start_time)
                .unwrap_or(0),
            closed: status_is_closed(self.status.as_deref()),
            phone: self
                .phone
                .as_deref()
                .map(phone_digits)
                .filter(|p| !p.is_empty()),
        }
    }
}

/// A license ("line") of `GET /v1/licenses` (ADI `License.json`, TEZ; fields the daemon does not
/// use are ignored, and `active`/`status` of an unexpected type are read as absent).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct License {
    /// The license id.
    pub license_id: u64,
    #[serde(default)]
    messenger: Vec<Messenger>,
    #[serde(default)]
    active: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<serde_json::Value>,
}

/// A messenger of a [`License`].
#[derive(Debug, Clone, Deserialize)]
struct Messenger {
    #[serde(rename = "type")]
    kind: String,
}

/// The only `status.code` any source shows on a working license (ADI `License.json`:
/// `{"id": 4, "code": "paid"}`).
pub const LICENSE_PAID: &str = "paid";

impl License {
    /// Its messenger types (`messenger[].type`).
    pub fn messenger_types(&self) -> Vec<String> {
        self.messenger.iter().map(|m| m.kind.clone()).collect()
    }

    /// Why the license is not active, or `None` when it is. The one place that decides:
    /// - `active: false` is inactive: TEZ (checked live) keeps only licenses with `active` true;
    /// - `active: true` is active whatever `status` says;
    /// - without `active`, a `status.code` other than `paid` is inactive. ASSUMPTION: `paid` is the
    ///   only code any source shows (ADI); other codes (an expired or trial line?) are not
    ///   documented, so the reason names the code and the operator can judge;
    /// - with neither, the license is taken as active (ADI's fixture has no `active`).
    pub fn inactive_reason(&self) -> Option<String> {
        match self.active.as_ref().and_then(serde_json::Value::as_bool) {
            Some(true) => return None,
            Some(false) => return Some("`active` is false".into()),
            None => {}
        }
        let code = self
            .status
            .as_ref()
            .and_then(|s| s.get("code"))
            .and_then(serde_json::Value::as_str)?;
        (code != LICENSE_PAID).then(|| {
            format!(
                "`status.code` is {:?}, not {LICENSE_PAID:?}",
                crate::redact::excerpt(code, 40)
            )
        })
    }
}

/// One line's callback as `GET /v1/callbackUrls` lists it (ADI `GetCallbackUrls.json`:
/// `data[] {licenseId, messengerType, events, url}`, one per license and messenger).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CallbackUrl {
    /// The license.
    pub license_id: u64,
    /// The messenger type.
    pub messenger_type: String,
    /// The events sent to it.
    #[serde(default)]
    pub events: Vec<String>,
    /// The URL called; `None` (or empty) when the line has none.
    #[serde(default)]
    pub url: Option<String>,
}

/// One message of a dialog (api/chatapp.md 4.2; TEZ's fixture of a real answer): only what the
/// write probe reads, each field of any type (one of an unexpected type reads as absent).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Message {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<serde_json::Value>,
}

impl Message {
    /// Its id as text (a string in every source; a number is shown as one).
    pub fn id(&self) -> Option<String> {
        match self.id.as_ref()? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            v => Some(v.to_string()),
        }
    }

    /// Whether it is a system message (`"type": "system"`).
    pub fn is_system(&self) -> bool {
        self.kind.as_ref().and_then(serde_json::Value::as_str) == Some("system")
    }

    /// Its text (`message.text`), empty when it has none.
    pub fn text(&self) -> &str {
        self.message
            .as_ref()
            .and_then(|m| m.get("text"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    }
}

/// The ChatApp client.
pub struct ChatAppClient {
    /// Shared HTTP plumbing.
    pub api: ApiClient,
    cfg: ChatAppConfig,
    password: SecretString,
    store: Arc<dyn TokenStore>,
    token: Mutex<Option<TokenPair>>,
    max_logins_per_day: usize,
    /// Logins made by this process.
    pub logins: std::sync::atomic::AtomicU64,
    /// Token refreshes made by this process.
    pub refreshes: std::sync::atomic::AtomicU64,
}

/// The error code a refusing answer carries: `success: false` (whatever the HTTP status), or a
/// non-2xx status with an `error` object. `None` for a success.
fn refusal_code(r: &Response) -> Option<String> {
    let e = serde_json::from_slice::<ErrorEnvelope>(&r.body).ok();
    let refused = e.as_ref().is_some_and(|e| e.success == Some(false));
    if !refused && r.status.is_success() {
        return None;
    }
    Some(e.and_then(|e| e.error).map(|e| e.code).unwrap_or_default())
}

/// Whether an answer says the access token is not (or no longer) valid: 401, or the code
/// `ApiInvalidTokenError` whatever the status (CA-HELP documents the code, not the status; TEZ
/// keys on the body alone).
pub(crate) fn is_invalid_token(r: &Response) -> bool {
    r.status.as_u16() == 401 || refusal_code(r).is_some_and(|c| c == "ApiInvalidTokenError")
}

pub(crate) fn error_text(r: &Response) -> String {
    match serde_json::from_slice::<ErrorEnvelope>(&r.body)
        .ok()
        .and_then(|e| e.error)
    {
        Some(e) => crate::redact::excerpt(&format!("{} {}", e.code, e.message), 200),
        None => r.excerpt(200),
    }
}

impl ChatAppClient {
    /// Builds the client; the stored token pair (if any) is reused.
    pub fn new(
        cfg: &ChatAppConfig,
        password: SecretString,
        store: Arc<dyn TokenStore>,
        max_logins_per_day: usize,
    ) -> Result<ChatAppClient, ApiError> {
        let limits = Limits::standard(cfg.requests_per_second, cfg.timeout, None);
        let token = store.chatapp_pair().ok().flatten();
        if let Some(t) = &token {
            crate::redact::register(&t.access_token);
            crate::redact::register(&t.refresh_token);
        }
        Ok(ChatAppClient {
            api: ApiClient::new(API, &cfg.base_url, limits)?,
            cfg: cfg.clone(),
            password,
            store,
            token: Mutex::new(token),
            max_logins_per_day,
            logins: Default::default(),
            refreshes: Default::default(),
        })
    }

    fn persist(&self, pair: &TokenPair) -> Result<(), ApiError> {
        self.store
            .save_chatapp_pair(pair)
            .map_err(|e| ApiError::Store {
                api: API,
                reason: format!("cannot store the new token pair: {e}"),
            })
    }

    async fn login(&self) -> Result<TokenPair, ApiError> {
        let now = crate::clock::now_unix();
        let mut log: Vec<i64> = self.store.chatapp_logins().unwrap_or_default();
        log.retain(|t| *t > now - 86_400);
        if log.len() >= self.max_logins_per_day {
            return Err(ApiError::Auth {
                api: API,
                reason: format!(
                    "{} logins in the last 24 h: refusing another (ChatApp allows about 100 a day); check chatapp.email/password_file and the token in the state db",
                    log.len()
                ),
            });
        }
        log.push(now);
        if let Err(e) = self.store.save_chatapp_logins(&log) {
            tracing::warn!(error = %e, "cannot store the ChatApp login log");
        }
        let endpoint = "POST /v1/tokens";
        let url = self.api.url("/v1/tokens");
        let body = serde_json::json!({
            "email": self.cfg.email,
            "password": self.password.expose_secret(),
            "appId": self.cfg.app_id,
        });
        let r = self
            .api
            .execute(endpoint, |c| c.post(&url).json(&body))
            .await?;
        let pair = self.store_token_answer(endpoint, r)?;
        self.logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(api = API, "logged in to ChatApp; token pair stored");
        Ok(pair)
    }

    async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ApiError> {
        let endpoint = "POST /v1/tokens/refresh";
        let url = self.api.url("/v1/tokens/refresh");
        let r = self
            .api
            .execute(endpoint, |c| c.post(&url).header("Refresh", refresh_token))
            .await?;
        let pair = self.store_token_answer(endpoint, r)?;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(api = API, "refreshed the ChatApp token pair");
        Ok(pair)
    }

    /// Checks a login/refresh answer, decodes the pair and stores it durably before it is used.
    fn store_token_answer(&self, endpoint: &str, r: Response) -> Result<TokenPair, ApiError> {
        if refusal_code(&r).is_some() {
            return Err(ApiError::Auth {
                api: API,
                reason: format!(
                    "{}: HTTP {}: {}",
                    self.api.with_host(endpoint),
                    r.status.as_u16(),
                    error_text(&r)
                ),
            });
        }
        let pair: Envelope<TokenPair> = self.api.decode(endpoint, &r.body)?;
        crate::redact::register(&pair.data.access_token);
        crate::redact::register(&pair.data.refresh_token);
        self.persist(&pair.data)?;
        Ok(pair.data)
    }

    /// A usable access token: the stored one, else a refresh, else a login.
    async fn access_token(&self, invalid: Option<&str>) -> Result<String, ApiError> {
        let mut guard = self.token.lock().await;
        if let Some(pair) = guard.as_ref() {
            match invalid {
                Some(bad) if bad == pair.access_token => {}
                _ => return Ok(pair.access_token.clone()),
            }
        }
        // the current token is missing or was rejected: refresh, then log in
        let refreshed = match guard.as_ref() {
            Some(pair) => match self.refresh(&pair.refresh_token.clone()).await {
                Ok(p) => Some(p),
                Err(e @ ApiError::Budget { .. }) | Err(e @ ApiError::Transport { .. }) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(api = API, error = %e, "token refresh failed; logging in again");
                    None
                }
            },
            None => None,
        };
        let pair = match refreshed {
            Some(p) => p,
            None => self.login().await?,
        };
        let t = pair.access_token.clone();
        *guard = Some(pair);
        Ok(t)
    }

    /// Sends an authorized request; on `ApiInvalidTokenError` refreshes (or logs in) and retries once.
    async fn call(
        &self,
        endpoint: &str,
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        let token = self.access_token(None).await?;
        let r = self.api.execute(endpoint, |c| make(c, &token)).await?;
        let r = if is_invalid_token(&r) {
            let token = self.access_token(Some(&token)).await?;
            let r = self.api.execute(endpoint, |c| make(c, &token)).await?;
            if is_invalid_token(&r) {
                return Err(ApiError::Auth {
                    api: API,
                    reason: format!(
                        "{}: a fresh token was rejected: {}",
                        self.api.with_host(endpoint),
                        error_text(&r)
                    ),
                });
            }
            r
        } else {
            r
        };
        if !r.status.is_success() {
            return Err(ApiError::Status {
                api: API,
                endpoint: self.api.with_host(endpoint),
                status: r.status.as_u16(),
                body: error_text(&r),
            });
        }
        if let Some(code) = refusal_code(&r) {
            // a 2xx whose envelope says `success: false`: a refusal, never a success
            return Err(ApiError::Refused {
                api: API,
                endpoint: self.api.with_host(endpoint),
                status: r.status.as_u16(),
                code: crate::redact::excerpt(&code, 80),
                message: error_text(&r),
            });
        }
        Ok(r)
    }

    /// Employees of the configured company, every page (`nextPage`, as the chat lists page:
    /// TEZ's `chatapp_client.py` gives ChatApp's ceiling as 100 per page for lists; no source
    /// says whether employees are paged, so the daemon follows `nextPage` when it is there).
    pub async fn employees(&self) -> Result<Vec<Employee>, ApiError> {
        let path = format!("/v1/companies/{}/employees", self.cfg.company_id);
        let endpoint = "GET /v1/companies/{companyId}/employees";
        let url = self.api.url(&path);
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("limit".to_string(), CHATS_LIMIT.to_string())];
            if let Some(c) = &cursor {
                q.push(("nextPage".into(), c.clone()));
            }
            let r = self
                .call(endpoint, |c, t| {
                    c.get(&url).header("Authorization", t).query(&q)
                })
                .await?;
            let (items, next_page, _): (Vec<EmployeeItem>, _, _) = self
                .api
                .decode_list::<_, Envelope<Items<EmployeeItem>>, Envelope<Items<serde_json::Value>>>(
                    endpoint,
                    &r.body,
                    "data.items",
                    employee_subject,
                )?;
            out.extend(items.into_iter().map(|i| Employee {
                id: EmployeeId(i.id),
                name: crate::http::text_or_empty(i.full_name),
                email: i.email.unwrap_or_default(),
            }));
            match next_cursor(next_page) {
                Some(c) if Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Chats of the configured licenses, newest (`lastTime`) first. With `since`, stops after the
    /// first chat older than it; otherwise reads all.
    pub async fn chats(&self, since: Option<i64>) -> Result<Vec<Chat>, ApiError> {
        let endpoint = "GET /v1/chats";
        let url = self.api.url("/v1/chats");
        let licenses = self
            .cfg
            .license_ids
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![
                ("companyId".to_string(), self.cfg.company_id.to_string()),
                ("limit".to_string(), CHATS_LIMIT.to_string()),
                ("filter[licenseIds]".to_string(), licenses.clone()),
            ];
            if let Some(c) = &cursor {
                q.push(("nextPage".into(), c.clone()));
            }
            let r = self
                .call(endpoint, |c, t| {
                    c.get(&url).header("Authorization", t).query(&q)
                })
                .await?;
            let (items, next_page, _): (Vec<Chat>, _, _) = self
                .api
                .decode_list::<_, Envelope<Items<Chat>>, Envelope<Items<serde_json::Value>>>(
                    endpoint,
                    &r.body,
                    "data.items",
                    chat_subject,
                )?;
            let mut done = false;
            for chat in items {
                if since.is_some_and(|s| chat.last_time < s) {
                    done = true;
                    break;
                }
                if self.cfg.license_ids.contains(&chat.license_id) {
                    out.push(chat);
                }
            }
            let next = next_cursor(next_page);
            if done || next.is_none() || next == cursor {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    /// One chat; `None` when ChatApp does not know it.
    pub async fn chat(&self, key: &DialogKey) -> Result<Option<Chat>, ApiError> {
        let endpoint = "GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}";
        let url = self.api.url(&format!(
            "/v1/licenses/{}/messengers/{}/chats/{}",
            key.license_id,
            key.messenger_type,
            urlencode(&key.chat_id)
        ));
        match self
            .call(endpoint, |c, t| c.get(&url).header("Authorization", t))
            .await
        {
            Ok(r) => {
                let mut e: Envelope<serde_json::Value> = self.api.decode(endpoint, &r.body)?;
                with_path_key(&mut e.data, key);
                Ok(self
                    .api
                    .decode_record(endpoint, &e.data, "data", chat_subject))
            }
            Err(ApiError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every license of the account (`GET /v1/licenses`).
    pub async fn licenses(&self) -> Result<Vec<License>, ApiError> {
        let endpoint = "GET /v1/licenses";
        let url = self.api.url("/v1/licenses");
        let r = self
            .call(endpoint, |c, t| c.get(&url).header("Authorization", t))
            .await?;
        let e: Envelope<Vec<License>> = self.api.decode(endpoint, &r.body)?;
        Ok(e.data)
    }

    /// The callback URL of every line of the account that has one (`GET /v1/callbackUrls`, ADI
    /// `GetCallbackUrls.json`). `data` is a plain array there; no source shows it paged.
    pub async fn callback_urls(&self) -> Result<Vec<CallbackUrl>, ApiError> {
        let endpoint = "GET /v1/callbackUrls";
        let url = self.api.url("/v1/callbackUrls");
        let r = self
            .call(endpoint, |c, t| c.get(&url).header("Authorization", t))
            .await?;
        let e: Envelope<Vec<CallbackUrl>> = self.api.decode(endpoint, &r.body)?;
        Ok(e.data)
    }

    /// Points a license's messenger callback at `url` for `events`
    /// (`PUT /v1/licenses/{licenseId}/messengers/{messengerType}/callbackUrl`).
    pub async fn set_callback(
        &self,
        license: u64,
        messenger_type: &str,
        url: &str,
        events: &[&str],
    ) -> Result<(), ApiError> {
        let endpoint = "PUT /v1/licenses/{licenseId}/messengers/{messengerType}/callbackUrl";
        let target = self.api.url(&format!(
            "/v1/licenses/{license}/messengers/{}/callbackUrl",
            urlencode(messenger_type)
        ));
        let body = serde_json::json!({"events": events, "url": url});
        self.call(endpoint, |c, t| {
            c.put(&target).header("Authorization", t).json(&body)
        })
        .await?;
        Ok(())
    }

    /// The newest `limit` (1..=100) messages of a dialog, system messages included, newest first
    /// (`GET .../chats/{chatId}/messages?limit=N&includeSystemMessages=1`, api/chatapp.md 4.2):
    /// one page, for `check-config --probe-writes` to look for the assignment the write leaves.
    pub async fn recent_messages(
        &self,
        key: &DialogKey,
        limit: usize,
    ) -> Result<Vec<Message>, ApiError> {
        let endpoint =
            "GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/messages";
        let url = self.api.url(&format!(
            "/v1/licenses/{}/messengers/{}/chats/{}/messages",
            key.license_id,
            urlencode(&key.messenger_type),
            urlencode(&key.chat_id)
        ));
        let q = [
            ("limit".to_string(), limit.clamp(1, 100).to_string()),
            ("includeSystemMessages".to_string(), "1".to_string()),
        ];
        let r = self
            .call(endpoint, |c, t| {
                c.get(&url).header("Authorization", t).query(&q)
            })
            .await?;
        let e: Envelope<Items<Message>> = self.api.decode(endpoint, &r.body)?;
        Ok(e.data.items)
    }

    /// Sets a dialog's responsible through the configured call.
    pub async fn set_responsible(
        &self,
        key: &DialogKey,
        employee: EmployeeId,
    ) -> Result<(), ApiError> {
        let SetResponsibleConfig {
            method,
            path,
            body_field,
        } = &self.cfg.set_responsible;
        let endpoint = format!("{method} {path}");
        let url = self.api.url(&set_responsible_path(path, key));
        let method = method.http();
        let body = serde_json::json!({ body_field.as_str(): employee });
        self.call(&endpoint, |c, t| {
            c.request(method.clone(), &url)
                .header("Authorization", t)
                .json(&body)
        })
        .await?;
        Ok(())
    }
}

/// A list's `nextPage`: a string or a number; `null`, absent or empty ends the list.
fn next_cursor(next_page: Option<serde_json::Value>) -> Option<String> {
    match next_page {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The one-chat answer needs only what the daemon uses: `licenseId`, `messengerType` and `id`
/// come from the request's path when the answer leaves them out. No source shows the whole body
/// of `GET .../chats/{chatId}`; the only client that reads it (SLI `chatapp-evaluation.js`) uses
/// `id`, `name` and `responsible.id`, so nothing else may be required of it.
fn with_path_key(data: &mut serde_json::Value, key: &DialogKey) {
    let Some(obj) = data.as_object_mut() else {
        return;
    };
    obj.entry("licenseId")
        .or_insert_with(|| serde_json::json!(key.license_id));
    obj.entry("messengerType")
        .or_insert_with(|| serde_json::json!(key.messenger_type));
    obj.entry("id")
        .or_insert_with(|| serde_json::json!(key.chat_id));
}

/// Fills `{licenseId}`, `{messengerType}` and `{chatId}` of the set-responsible path template.
pub fn set_responsible_path(template: &str, key: &DialogKey) -> String {
    template
        .replace("{licenseId}", &key.license_id.to_string())
        .replace("{messengerType}", &urlencode(&key.messenger_type))
        .replace("{chatId}", &urlencode(&key.chat_id))
}

/// Percent-encodes a path segment (keeps `@`, which chat ids use).
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl crate::http::OnApiClient for ChatAppClient {
    fn api_client(&self) -> &ApiClient {
        &self.api
    }
}

impl crate::ports::ChatAppApi for ChatAppClient {
    async fn employees(&self) -> Result<Vec<Employee>, ApiError> {
        ChatAppClient::employees(self).await
    }
    async fn chats(&self, since: Option<i64>) -> Result<Vec<ChatRead>, ApiError> {
        let chats = ChatAppClient::chats(self, since).await?;
        Ok(chats.into_iter().map(Chat::into_read).collect())
    }
    async fn chat(&self, key: &DialogKey) -> Result<Option<ChatRead>, ApiError> {
        Ok(ChatAppClient::chat(self, key).await?.map(Chat::into_read))
    }
    async fn set_responsible(&self, key: &DialogKey, employee: EmployeeId) -> Result<(), ApiError> {
        ChatAppClient::set_responsible(self, key, employee).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_template_is_filled_and_encoded() {
        let k = DialogKey::new(7, "grWhatsApp", "7999 1@c.us");
        assert_eq!(
            set_responsible_path(
                "/v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/responsible",
                &k
            ),
            "/v1/licenses/7/messengers/grWhatsApp/chats/7999%201@c.us/responsible"
        );
    }

    #[test]
    fn chat_to_obs() {
        let c: Chat = serde_json::from_str(
            r#"{"id":"79991234567@c.us","licenseId":1,"messengerType":"grWhatsApp","phone":"+7 999 123-45-67",
               "lastTime":100,"responsible":{"id":85501},"status":"closed","conversation":{"startTime":90}}"#,
        )
        .unwrap();
        let o = c.to_obs();
        assert_eq!(o.responsible, Some(EmployeeId(85501)));
        assert!(o.closed);
        assert_eq!(o.session, 90);
        assert_eq!(o.phone.as_deref(), Some("79991234567"));
        let c: Chat = serde_json::from_str(
            r#"{"id":"x","licenseId":1,"messengerType":"telegram","responsible":null}"#,
        )
        .unwrap();
        assert_eq!(c.to_obs().responsible, None);
        assert!(!c.to_obs().closed);
    }

    #[test]
    fn token_pair_debug_is_redacted() {
        let p = TokenPair {
            access_token: "secret-a".into(),
            access_token_end_time: 1,
            refresh_token: "secret-r".into(),
            refresh_token_end_time: 2,
        };
        assert!(!format!("{p:?}").contains("secret"));
    }
}
