//! Webhooks as hints, never as data (SPEC 6.2): Kommo's `responsible_*` account webhooks
//! (form-encoded) name cards, ChatApp's callback (`chatResponsible`, `message`) names chats. Each
//! call only keeps the ids it names ([`crate::service::hint_parse`]) and wakes the runner, which
//! reads those records in a hint cycle (`crate::sync::Syncer::run_hint`) sized to them. A call that
//! names nothing readable by id (or calls that together name more than [`MAX_PENDING`] records)
//! make the next webhook cycle an incremental one instead. Each endpoint sits behind a secret
//! token in the URL path (neither API signs these calls); a wrong token is a plain 404.
//!
//! Routes (on the `[daemon] listen` address): `POST /hooks/kommo/{token}` and
//! `POST /hooks/chatapp/{token}`. ChatApp checks a callback URL with an empty POST: it gets a 200.
//!
//! Hostile callers (the server's own bounds are in [`crate::service::http_server`]):
//! - The token is checked first, from the path alone: a wrong one gets a 404 with
//!   `connection: close` and the body is never read (hyper closes the socket rather than drain it).
//! - A body is at most [`MAX_BODY`] (64 KiB; Kommo's and ChatApp's calls are a few KiB): a larger
//!   `content-length` gets a 413 before anything is read, a longer body without one a 413 once
//!   64 KiB were read. The body must arrive within [`BODY_READ_TIMEOUT`] (else 408). These answers
//!   close the connection too.
//! - Any byte string is a valid input to the parsers below; nothing a request carries can panic.
//! - A flood of valid calls only grows one bounded set of ids: the runner paces the cycles they
//!   trigger by a budget, a share of each API's rate (`[daemon] webhook_budget_percent`; see
//!   [`crate::service::triggers::HookBudget`]), and calls meanwhile are coalesced, never lost.

use crate::service::hint_parse::{Named, chatapp_named, kommo_named};
pub use crate::service::http_server::BODY_READ_TIMEOUT;
use crate::sync::Hint;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The largest webhook body read.
pub const MAX_BODY: usize = 64 * 1024;

/// The most records waiting calls may name together; past it the next webhook cycle is an
/// incremental one (it reads whatever changed, named or not).
pub const MAX_PENDING: usize = 500;

/// What the calls since the last webhook cycle named.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The records named (at most [`MAX_PENDING`]).
    pub hint: Hint,
    /// A call named nothing readable by id, or the calls named too much: the next webhook cycle
    /// is an incremental one.
    pub unnamed: bool,
}

impl Pending {
    /// Adds what one call named: past [`MAX_PENDING`] records in all, or a call that named
    /// nothing readable, the next webhook cycle is an incremental one.
    fn add(&mut self, named: Named) {
        if named.is_empty() {
            self.unnamed = true;
            return;
        }
        let mut all = Named {
            cards: std::mem::take(&mut self.hint.cards),
            dialogs: std::mem::take(&mut self.hint.dialogs),
            overflow: false,
        };
        all.merge(named, MAX_PENDING);
        self.unnamed |= all.overflow;
        self.hint = Hint {
            cards: all.cards,
            dialogs: all.dialogs,
        };
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        !self.unnamed && self.hint.is_empty()
    }
}

/// What the webhook endpoints share with the runner.
pub struct Hooks {
    token: SecretString,
    notify: Notify,
    pending: Mutex<Pending>,
    /// Calls that triggered a cycle.
    pub triggered: AtomicU64,
    /// Calls refused (wrong token, body too large or too slow).
    pub refused: AtomicU64,
    /// Calls accepted that carried nothing to act on.
    pub ignored: AtomicU64,
}

impl Hooks {
    /// Hooks guarded by `token`.
    pub fn new(token: SecretString) -> Arc<Hooks> {
        Arc::new(Hooks {
            token,
            notify: Notify::new(),
            pending: Mutex::new(Pending::default()),
            triggered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
        })
    }

    /// Waits for the next trigger (cancel-safe: a trigger is kept until a waiter takes it).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Takes what the calls since the last take named.
    pub fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.lock_pending())
    }

    /// Puts back what a failed hint cycle took: its records wait for the next webhook cycle,
    /// with what calls named meanwhile (a `chatResponsible` change that does not move the chat's
    /// `lastTime` is not in a polled cycle's window, so a dropped hint could wait for the full
    /// cycle).
    pub fn put_back(&self, hint: Hint) {
        if hint.is_empty() {
            return;
        }
        self.lock_pending().add(Named {
            cards: hint.cards,
            dialogs: hint.dialogs,
            overflow: false,
        });
    }

    /// Whether calls named something not yet taken.
    pub fn has_pending(&self) -> bool {
        !self.lock_pending().is_empty()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token of the webhook URLs (to register them again; never to print).
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    fn fire(&self, named: Named) {
        self.lock_pending().add(named);
        self.triggered.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn token_ok(&self, given: &str) -> bool {
        let want = self.token.expose_secret().as_bytes();
        let given = given.as_bytes();
        // constant-time comparison: a timing probe learns nothing about the token
        want.len() == given.len()
            && want
                .iter()
                .zip(given)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// True when a Kommo webhook body (form-encoded) reports a responsible change: a key under
/// `[responsible]`, or one naming `responsible_user_id` / `old_responsible_user_id` (contacts and
/// companies arrive under `contacts[...]`; the action key for them is UNCONFIRMED, so any is read).
/// Any byte string is accepted: keys are decoded by `form_urlencoded` (invalid percent escapes are
/// kept as they are, invalid UTF-8 becomes U+FFFD), never sliced by hand.
pub fn kommo_body_is_responsible_change(body: &[u8]) -> bool {
    form_urlencoded::parse(body).any(|(key, _)| {
        key.contains("[responsible]")
            || key.ends_with("[responsible_user_id]")
            || key.ends_with("[old_responsible_user_id]")
    })
}

/// True when a ChatApp callback body is a `chatResponsible` or `message` event
/// (`{"data": [...], "meta": {"type": ...}}`).
pub fn chatapp_body_is_relevant(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("meta")?.get("type")?.as_str().map(str::to_string))
        .is_some_and(|t| t == "chatResponsible" || t == "message")
}

/// An answer that ends the connection (the caller misbehaved or the body was not read whole).
fn closing(status: StatusCode) -> Response {
    (status, [(header::CONNECTION, "close")]).into_response()
}

/// Reads a body of at most [`MAX_BODY`] within [`BODY_READ_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, StatusCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        Ok(Ok(b)) => Ok(b),
        // over the limit, or the client broke off: either way nothing to act on
        Ok(Err(_)) => Err(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

/// How one API's calls are read: whether a body is worth a cycle, and what it names.
struct Reading {
    api: &'static str,
    relevant: fn(&[u8]) -> bool,
    named: fn(&[u8]) -> Named,
}

/// Answers a webhook call: 404 for a wrong token (the body unread); 413/408 for a body too large
/// or too slow; otherwise 200, and a trigger with what the body names when it is relevant.
async fn answer(h: &Hooks, token: &str, headers: &HeaderMap, body: Body, how: Reading) -> Response {
    let api = how.api;
    if !h.token_ok(token) {
        h.refused.fetch_add(1, Ordering::Relaxed);
        return closing(StatusCode::NOT_FOUND);
    }
    let body = match read_body(headers, body).await {
        Ok(b) => b,
        Err(status) => {
            h.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(api, %status, "webhook: body refused");
            return closing(status);
        }
    };
    if (how.relevant)(&body) {
        let named = (how.named)(&body);
        tracing::debug!(api, records = named.len(), "webhook: cycle soon");
        h.fire(named);
    } else {
        h.ignored.fetch_add(1, Ordering::Relaxed);
    }
    StatusCode::OK.into_response()
}

async fn kommo(
    State(h): State<Arc<Hooks>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        &h,
        &token,
        &headers,
        body,
        Reading {
            api: "kommo",
            relevant: kommo_body_is_responsible_change,
            named: kommo_named,
        },
    )
    .await
}

async fn chatapp(
    State(h): State<Arc<Hooks>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        &h,
        &token,
        &headers,
        body,
        Reading {
            api: "chatapp",
            relevant: chatapp_body_is_relevant,
            named: chatapp_named,
        },
    )
    .await
}

/// The webhook routes, to merge into the daemon's HTTP endpoint.
pub fn routes(hooks: Arc<Hooks>) -> Router {
    Router::new()
        .route("/hooks/kommo/{token}", post(kommo))
        .route("/hooks/chatapp/{token}", post(chatapp))
        .with_state(hooks)
}

/// The events the daemon's ChatApp callback asks for.
pub const CHATAPP_EVENTS: [&str; 2] = ["chatResponsible", "message"];

/// One thing a registration pass found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `kommo` or `chatapp`.
    pub api: &'static str,
    /// What, for the operator (the token shown as `<token>`).
    pub text: String,
    /// Worth a warning: a hook registered again, a line left to another integration, an
    /// inactive license skipped, a registration shadow mode did not make.
    pub warn: bool,
    /// A registration was sent (POST or PUT).
    pub wrote: bool,
}

/// What a registration pass ([`register`]) found and did.
#[derive(Debug, Default)]
pub struct Registration {
    /// Every line, in order.
    pub notes: Vec<Note>,
    /// What is wrong: the config key and what was found.
    pub problems: Vec<(String, String)>,
}

impl Registration {
    fn note(&mut self, api: &'static str, text: String, warn: bool, wrote: bool) {
        self.notes.push(Note {
            api,
            text,
            warn,
            wrote,
        });
    }

    /// Registrations sent to `api`.
    pub fn written(&self, api: &str) -> u64 {
        self.notes
            .iter()
            .filter(|n| n.api == api && n.wrote)
            .count() as u64
    }
}

/// Registers the webhook URLs with both APIs, or with `write` false (shadow mode) only says what
/// it would do. Kommo: one GET, and a POST only when the hook is missing, has other settings or
/// was disabled by Kommo ([`crate::kommo::KommoClient::register_webhook`]). ChatApp: the licenses
/// and the lines' callbacks are read first (two GETs); an active license's free lines and our
/// own are set, a line whose callback calls another integration is left as it is and named
/// (its host only), an inactive license is skipped with a warning. Without a Kommo client (the
/// check has none) only ChatApp is done. `Err` only when an API cannot be reached; a refusal
/// (a plan without the webhooks API, missing rights) is a problem under `daemon.public_url`.
pub async fn register(
    kommo: Option<&crate::kommo::KommoClient>,
    chatapp: &crate::chatapp::ChatAppClient,
    cfg: &crate::config::Config,
    base: &str,
    token: &SecretString,
    write: bool,
) -> Result<Registration, crate::http::ApiError> {
    let mut reg = Registration::default();
    let base = base.trim_end_matches('/');
    if let Some(kommo) = kommo {
        kommo_hook(kommo, cfg, base, token, write, &mut reg).await?;
    }
    chatapp_callbacks(chatapp, cfg, base, token, write, &mut reg).await?;
    Ok(reg)
}

/// A refusal becomes a problem under `key` (with `what` said first); other errors pass up.
fn refused(
    reg: &mut Registration,
    key: &str,
    what: String,
    e: crate::http::ApiError,
) -> Result<(), crate::http::ApiError> {
    if crate::http::policy::is_wrong_setting(&e) {
        reg.problems.push((key.to_string(), format!("{what}: {e}")));
        Ok(())
    } else {
        Err(e)
    }
}

/// Kommo's account webhook for `responsible_<kind>` of the configured kinds.
async fn kommo_hook(
    kommo: &crate::kommo::KommoClient,
    cfg: &crate::config::Config,
    base: &str,
    token: &SecretString,
    write: bool,
    reg: &mut Registration,
) -> Result<(), crate::http::ApiError> {
    use crate::kommo::WebhookOutcome as W;
    let dest = format!("{base}/hooks/kommo/{}", token.expose_secret());
    let shown = format!("{base}/hooks/kommo/<token>");
    let settings: Vec<String> = cfg
        .kinds()
        .iter()
        .map(|k| format!("responsible_{}", k.singular()))
        .collect();
    let events = settings.join(", ");
    let outcome = if write {
        kommo.register_webhook(&dest, &settings).await
    } else {
        kommo.webhook(&dest).await.map(|h| match h {
            None => W::Created,
            Some(h) if h.disabled => W::Reenabled,
            Some(_) => W::Present,
        })
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let what = format!(
                "Kommo refused its webhooks API for {shown} (it needs an account on the Extended or Professional plan and an admin's token, amoCRM webhooks-format.md L7 and webhooks-api.md{}; the sync goes on by polling)",
                cyrillic_hint(base)
            );
            return refused(reg, "daemon.public_url", what, e);
        }
    };
    let (text, warn) = match (outcome, write) {
        (W::Present, _) => (
            format!("webhook {shown} for {events} already registered"),
            false,
        ),
        (W::Created, true) => (format!("webhook {shown} for {events} registered"), false),
        (W::Updated, true) => (
            format!("webhook {shown} registered again for {events} (it had other events)"),
            false,
        ),
        (W::Reenabled, true) => (
            format!(
                "webhook {shown} was disabled by Kommo (after more than 100 failed deliveries in 2 hours), registered again for {events}"
            ),
            true,
        ),
        (W::StillDisabled, _) => {
            reg.problems.push(("daemon.public_url".into(), format!(
                "Kommo disabled the webhook {shown} (after more than 100 failed deliveries in 2 hours, amoCRM webhooks-format.md L505-509) and it stays disabled after registering it again: an account admin has to switch it on in Kommo; until then the sync goes on by polling")));
            return Ok(());
        }
        (W::Reenabled, false) => (
            format!("webhook {shown} was disabled by Kommo; shadow mode: not registered again"),
            true,
        ),
        (_, false) => (
            format!("webhook {shown} is not registered; shadow mode: not registered"),
            true,
        ),
    };
    let wrote = write && outcome != W::Present;
    reg.note("kommo", format!("kommo: {text}"), warn, wrote);
    Ok(())
}

/// A note for a `public_url` whose host Kommo may refuse: "Кириллические домены не
/// поддерживаются" (webhooks-format.md L7). Whether a punycode (`xn--`) host counts is not said:
/// ASSUMPTION that it does.
fn cyrillic_hint(base: &str) -> &'static str {
    let host = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    if !base.is_ascii() || host.split('.').any(|l| l.starts_with("xn--")) {
        "; Kommo refuses Cyrillic domains, and this one is"
    } else {
        ""
    }
}

/// Whose a line's callback is.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// No callback.
    Free,
    /// Ours; `complete` when it is our current URL with every event we need.
    Ours { complete: bool },
    /// Another integration's, at this host (scrubbed).
    Other(String),
}

/// Classifies a line's callback: ours is `ours` exactly, or an older URL of ours (another token
/// under `{base}/hooks/chatapp/`); anything else is another integration's.
fn owner(current: Option<&crate::chatapp::CallbackUrl>, ours: &str, base: &str) -> Owner {
    let Some(c) = current else {
        return Owner::Free;
    };
    let url = c.url.as_deref().unwrap_or("").trim();
    if url.is_empty() {
        return Owner::Free;
    }
    if url.trim_end_matches('/') == ours {
        let complete = CHATAPP_EVENTS
            .iter()
            .all(|e| c.events.iter().any(|x| x == e));
        return Owner::Ours { complete };
    }
    if url.starts_with(&format!("{base}/hooks/chatapp/")) {
        return Owner::Ours { complete: false };
    }
    Owner::Other(host_only(url))
}

/// The host of a URL, scrubbed and shortened (never its path or query, which may hold a token).
fn host_only(url: &str) -> String {
    match reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    {
        Some(h) => crate::redact::excerpt(&h, 80),
        None => "an unreadable URL".into(),
    }
}

/// ChatApp's callback on every messenger line of the configured, active licenses.
async fn chatapp_callbacks(
    chatapp: &crate::chatapp::ChatAppClient,
    cfg: &crate::config::Config,
    base: &str,
    token: &SecretString,
    write: bool,
    reg: &mut Registration,
) -> Result<(), crate::http::ApiError> {
    let ours = format!("{base}/hooks/chatapp/{}", token.expose_secret());
    let shown = format!("{base}/hooks/chatapp/<token>");
    let licenses = match chatapp.licenses().await {
        Ok(l) => l,
        Err(e) => {
            let what = "ChatApp's licenses cannot be read (GET /v1/licenses)".to_string();
            return refused(reg, "chatapp.license_ids", what, e);
        }
    };
    let callbacks = match chatapp.callback_urls().await {
        Ok(c) => c,
        Err(e) => {
            let what = format!(
                "no ChatApp callback was set to {shown}: the lines' callbacks cannot be read (GET /v1/callbackUrls), and a line may carry another integration's"
            );
            return refused(reg, "daemon.public_url", what, e);
        }
    };
    for lic in licenses
        .iter()
        .filter(|l| cfg.chatapp.license_ids.contains(&l.license_id))
    {
        let id = lic.license_id;
        if let Some(why) = lic.inactive_reason() {
            reg.note("chatapp", format!("chatapp: license {id} skipped: it is not active ({why}); its callbacks are not set"), true, false);
            continue;
        }
        for mt in lic.messenger_types() {
            let current = callbacks
                .iter()
                .find(|c| c.license_id == id && c.messenger_type == mt);
            let line = format!("license {id} {mt}");
            let again = match owner(current, &ours, base) {
                Owner::Ours { complete: true } => {
                    reg.note(
                        "chatapp",
                        format!("chatapp: callback {shown} already set for {line}"),
                        false,
                        false,
                    );
                    continue;
                }
                Owner::Other(host) => {
                    reg.note("chatapp", format!("chatapp: callback of {line} left as it is: it calls another integration (host {host}); ChatApp keeps one callback per line, so this line's dialogs are seen by polling only"), true, false);
                    continue;
                }
                Owner::Ours { complete: false } => true,
                Owner::Free => false,
            };
            if !write {
                reg.note(
                    "chatapp",
                    format!(
                        "chatapp: callback {shown} is not set for {line}; shadow mode: not set"
                    ),
                    true,
                    false,
                );
                continue;
            }
            if let Err(e) = chatapp.set_callback(id, &mt, &ours, &CHATAPP_EVENTS).await {
                let what = format!("ChatApp refused the callback {shown} for {line}");
                refused(reg, "daemon.public_url", what, e)?;
                continue;
            }
            let verb = if again { "set again" } else { "set" };
            reg.note(
                "chatapp",
                format!(
                    "chatapp: callback {shown} {verb} for {line} ({})",
                    CHATAPP_EVENTS.join(", ")
                ),
                false,
                true,
            );
        }
    }
    Ok(())
}

/// How long the daemon's check of its registrations may take, retries included (or the cycle
/// budget when that is shorter: the watchdog counts the check as part of the cycle).
pub const RECHECK_BUDGET: Duration = Duration::from_secs(120);

/// The daemon's check of its webhook registrations, after a good full cycle and after the first
/// good cycle since the start (so once per `full_schedule` and per start: one GET to Kommo, two
/// to ChatApp, a write only for what is missing or disabled): the same pass as
/// `check-config --online` ([`register`]; in shadow mode it only says what it would do). Each
/// registration sent again is logged at warn level and counted
/// (`chatapp_kommo_sync_webhooks_reregistered_total{api}`); warnings and problems are logged at
/// warn level; an API that cannot be reached is logged, `None` is returned and the next good
/// cycle tries again.
pub async fn recheck(
    syncer: &crate::service::wiring::LiveSyncer,
    hooks: &Hooks,
    base: &str,
    shadow: bool,
    metrics: &crate::service::metrics::Metrics,
) -> Option<Registration> {
    let deadline = Some(Instant::now() + RECHECK_BUDGET.min(syncer.config.daemon.cycle_budget));
    syncer.kommo.api.set_deadline(deadline);
    syncer.chatapp.api.set_deadline(deadline);
    let reg = register(
        Some(&syncer.kommo),
        &syncer.chatapp,
        &syncer.config,
        base,
        hooks.token(),
        !shadow,
    )
    .await;
    syncer.kommo.api.set_deadline(None);
    syncer.chatapp.api.set_deadline(None);
    let reg = match reg {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "webhooks: the registrations could not be checked; the next full cycle tries again");
            return None;
        }
    };
    for n in &reg.notes {
        if n.wrote {
            tracing::warn!(api = n.api, "webhooks: registered again: {}", n.text);
        } else if n.warn {
            tracing::warn!(api = n.api, "webhooks: {}", n.text);
        } else {
            tracing::debug!(api = n.api, "webhooks: {}", n.text);
        }
    }
    for (key, found) in &reg.problems {
        tracing::warn!(key = %key, "webhooks: {found}");
    }
    for api in ["kommo", "chatapp"] {
        let n = reg.written(api);
        if n > 0 {
            metrics.webhooks_reregistered(api, n);
        }
    }
    Some(reg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chatapp::{CallbackUrl, License};
    use crate::kommo::Webhook;

    fn cb(url: Option<&str>, events: &[&str]) -> CallbackUrl {
        CallbackUrl {
            license_id: 1,
            messenger_type: "grWhatsApp".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            url: url.map(str::to_string),
        }
    }

    #[test]
    fn a_lines_callback_is_free_ours_or_another_integrations() {
        let base = "https://sync.example.com";
        let ours = "https://sync.example.com/hooks/chatapp/tok";
        assert_eq!(owner(None, ours, base), Owner::Free);
        assert_eq!(owner(Some(&cb(None, &[])), ours, base), Owner::Free);
        assert_eq!(owner(Some(&cb(Some(" "), &[])), ours, base), Owner::Free);
        let all = ["message", "chatResponsible", "messageStatus"];
        assert_eq!(
            owner(Some(&cb(Some(ours), &all)), ours, base),
            Owner::Ours { complete: true }
        );
        assert_eq!(
            owner(Some(&cb(Some(ours), &["message"])), ours, base),
            Owner::Ours { complete: false },
            "ours without an event we need is set again"
        );
        assert_eq!(
            owner(
                Some(&cb(
                    Some("https://sync.example.com/hooks/chatapp/old"),
                    &all
                )),
                ours,
                base
            ),
            Owner::Ours { complete: false },
            "an older token of ours"
        );
        // ADI's GetCallbackUrls.json: another integration, named by its host only
        assert_eq!(
            owner(
                Some(&cb(
                    Some("https://webhook.site/f411787a-1def-4ec7-85b0-bba061893d37?k=secret"),
                    &["message", "messageStatus"]
                )),
                ours,
                base
            ),
            Owner::Other("webhook.site".into())
        );
        assert_eq!(
            owner(Some(&cb(Some("not a url"), &[])), ours, base),
            Owner::Other("an unreadable URL".into())
        );
    }

    #[test]
    fn a_cyrillic_public_url_is_pointed_out() {
        assert_eq!(cyrillic_hint("https://sync.example.com"), "");
        assert!(!cyrillic_hint("https://синк.рф").is_empty());
        assert!(!cyrillic_hint("https://xn--h1alffa9f.xn--p1ai").is_empty());
    }

    #[test]
    fn the_documented_answers_decode() {
        // amoCRM webhooks-api.md L79 (api/payloads/kommo_webhooks_list.json, shortened)
        let list: Vec<Webhook> = serde_json::from_str(
            r#"[{"id": 839656, "destination": "https://webhook-uri.com", "created_at": 1575539157,
                 "sort": 1, "disabled": false, "settings": ["add_task"]},
                {"id": 849193, "destination": "https://api.test.ru/amoWebHook", "sort": 2,
                 "disabled": true, "settings": ["update_lead"]},
                {"destination": "https://x.example", "disabled": "yes"}]"#,
        )
        .unwrap();
        assert!(!list[0].disabled && list[1].disabled);
        assert_eq!(list[1].settings, vec!["update_lead".to_string()]);
        assert!(!list[2].disabled, "a flag of another type reads as enabled");
        // L177: the POST answer is the hook
        let posted: Webhook = serde_json::from_str(
            r#"{"id": 1056949, "destination": "https://example.test", "created_at": 1589012268,
                "account_id": 321321, "created_by": 3944275, "sort": 1, "disabled": false,
                "settings": ["add_lead"]}"#,
        )
        .unwrap();
        assert_eq!(posted.destination, "https://example.test");
        // ADI License.json (api/payloads/chatapp_licenses_list.json, shortened); TEZ's `active`
        let licenses: Vec<License> = serde_json::from_str(
            r#"[{"licenseId": 37233, "licenseTo": 1692122395, "licenseName": null, "meOwner": true,
                 "status": {"id": 4, "code": "paid"},
                 "messenger": [{"type": "grWhatsApp", "name": "[WEB] WhatsApp"}], "access": []},
                {"licenseId": 2, "active": false, "status": {"id": 4, "code": "paid"}},
                {"licenseId": 3, "status": {"id": 2, "code": "expired"}},
                {"licenseId": 4, "active": true, "status": {"code": "expired"}},
                {"licenseId": 5, "active": "no", "status": "odd"}]"#,
        )
        .unwrap();
        assert_eq!(
            licenses[0].messenger_types(),
            vec!["grWhatsApp".to_string()]
        );
        assert_eq!(licenses[0].inactive_reason(), None);
        assert_eq!(
            licenses[1].inactive_reason().as_deref(),
            Some("`active` is false")
        );
        assert!(
            licenses[2]
                .inactive_reason()
                .unwrap()
                .contains("\"expired\"")
        );
        assert_eq!(licenses[3].inactive_reason(), None, "`active: true` wins");
        assert_eq!(
            licenses[4].inactive_reason(),
            None,
            "odd types read as absent"
        );
        // ADI GetCallbackUrls.json
        let callbacks: Vec<CallbackUrl> = serde_json::from_str(
            r#"[{"licenseId": 37233, "messengerType": "grWhatsApp",
                 "events": ["message", "messageStatus"],
                 "url": "https://webhook.site/f411787a-1def-4ec7-85b0-bba061893d37"}]"#,
        )
        .unwrap();
        assert_eq!(callbacks[0].license_id, 37233);
        assert_eq!(callbacks[0].events.len(), 2);
    }

    #[test]
    fn recognises_kommo_responsible_hooks() {
        assert!(kommo_body_is_responsible_change(
            b"leads%5Bresponsible%5D%5B0%5D%5Bid%5D=31926520&leads%5Bresponsible%5D%5B0%5D%5Bresponsible_user_id%5D=938348&account%5Bsubdomain%5D=x"
        ));
        assert!(kommo_body_is_responsible_change(
            b"contacts[update][0][id]=1&contacts[update][0][type]=company&contacts[update][0][old_responsible_user_id]=5"
        ));
        assert!(!kommo_body_is_responsible_change(
            b"leads[status][0][id]=1&leads[status][0][status_id]=2"
        ));
        assert!(!kommo_body_is_responsible_change(b""));
    }

    #[test]
    fn hostile_form_bodies_never_panic() {
        // regressions: a percent escape cut inside a multi-byte character used to abort the daemon
        for body in [
            &b"%\xff"[..],
            "%€=1".as_bytes(),
            b"%",
            b"%%",
            b"%e2%82",
            b"\xff\xfe=\x00&&=&",
            b"a%5Bresponsible%5D%",
        ] {
            let _ = kommo_body_is_responsible_change(body);
        }
        assert!(kommo_body_is_responsible_change(
            b"leads%5Bresponsible%5D%5B0%5D%5Bid%5D=1&%\xff"
        ));
    }

    #[test]
    fn recognises_chatapp_callbacks() {
        assert!(chatapp_body_is_relevant(
            br#"{"data":[{}],"meta":{"type":"chatResponsible","licenseId":1}}"#
        ));
        assert!(chatapp_body_is_relevant(
            br#"{"data":[],"meta":{"type":"message"}}"#
        ));
        assert!(!chatapp_body_is_relevant(
            br#"{"data":[],"meta":{"type":"messageStatus"}}"#
        ));
        assert!(!chatapp_body_is_relevant(b""));
    }

    /// Calls add up to `MAX_PENDING` records (a record named again does not count twice); past
    /// it the next webhook cycle is an incremental one. A failed hint's records put back join
    /// what came meanwhile.
    #[test]
    fn pending_records_add_up_to_the_cap_and_a_failed_hint_puts_its_own_back() {
        use crate::core::model::{CardId, CardKind};
        let hooks = Hooks::new(SecretString::from("t".to_string()));
        let leads = |r: std::ops::Range<u64>| Named {
            cards: r.map(|i| CardId::new(CardKind::Lead, i)).collect(),
            ..Named::default()
        };
        hooks.fire(leads(1..401));
        hooks.fire(leads(1..101)); // the same records again: still 400
        let p = hooks.take_pending();
        assert!(!p.unnamed);
        assert_eq!(p.hint.cards.len(), 400);
        // the hint cycle failed: its 400 come back beside 100 named meanwhile
        hooks.fire(leads(1000..1100));
        hooks.put_back(p.hint);
        let p = hooks.take_pending();
        assert!(!p.unnamed);
        assert_eq!(p.hint.cards.len(), MAX_PENDING);
        hooks.fire(leads(1..401));
        hooks.fire(leads(2000..2101));
        assert!(
            hooks.take_pending().unnamed,
            "501 records: an incremental cycle"
        );
        hooks.put_back(Hint::default());
        assert!(!hooks.has_pending(), "an empty hint puts nothing back");
    }

    #[tokio::test]
    async fn wrong_token_is_404_and_valid_calls_name_their_records_once() {
        let hooks = Hooks::new(SecretString::from("s3cret-token".to_string()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = routes(hooks.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let c = reqwest::Client::new();
        let url = |kind: &str, tok: &str| format!("http://{addr}/hooks/{kind}/{tok}");
        let body = "leads[responsible][0][id]=1&leads[responsible][0][responsible_user_id]=2";
        let r = c
            .post(url("kommo", "wrong"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = c.post(url("chatapp", "s3cret-token")).send().await.unwrap();
        assert_eq!(r.status(), 200, "an empty POST (URL check) answers 200");
        assert_eq!(hooks.triggered.load(Ordering::Relaxed), 0);
        let waiter = {
            let h = hooks.clone();
            tokio::spawn(async move { h.notified().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..3 {
            let r = c
                .post(url("kommo", "s3cret-token"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        // three calls naming one lead: one record waits, named (a hint cycle reads it)
        let p = hooks.take_pending();
        assert!(!p.unnamed, "{p:?}");
        let lead = crate::core::model::CardId::new(crate::core::model::CardKind::Lead, 1);
        assert_eq!(p.hint.cards.iter().collect::<Vec<_>>(), vec![&lead]);
        assert!(!hooks.has_pending(), "taken");
        assert_eq!(hooks.triggered.load(Ordering::Relaxed), 3);
        assert_eq!(hooks.refused.load(Ordering::Relaxed), 1);
    }
}
