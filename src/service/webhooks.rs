//! Webhooks as triggers, never as data: Kommo's `responsible_*` account webhooks (form-encoded) and
//! ChatApp's callback (`chatResponsible`, `message`) each only wake the runner for a debounced
//! incremental cycle, which then reads both APIs as usual. Each endpoint sits behind a secret token
//! in the URL path (neither API signs these calls); a wrong token is a plain 404.
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
//! - A flood of valid calls only sets one flag: the runner spaces the cycles it triggers by
//!   `[daemon] webhook_min_interval` (calls meanwhile are coalesced into one cycle, never lost).

pub use crate::service::http_server::BODY_READ_TIMEOUT;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The largest webhook body read.
pub const MAX_BODY: usize = 64 * 1024;

/// What the webhook endpoints share with the runner.
pub struct Hooks {
    token: SecretString,
    notify: Notify,
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
            triggered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
        })
    }

    /// Waits for the next trigger (cancel-safe: a trigger is kept until a waiter takes it).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Waits for a trigger, then for `debounce` more (triggers in that time are folded in).
    pub async fn next(&self, debounce: Duration) {
        self.notify.notified().await;
        let until = Instant::now() + debounce;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => return,
                _ = self.notify.notified() => {}
            }
        }
    }

    fn fire(&self) {
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

/// Answers a webhook call: 404 for a wrong token (the body unread); 413/408 for a body too large
/// or too slow; otherwise 200, and a trigger when `relevant` says the body is worth a cycle.
async fn answer(
    h: &Hooks,
    token: &str,
    headers: &HeaderMap,
    body: Body,
    relevant: fn(&[u8]) -> bool,
    api: &str,
) -> Response {
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
    if relevant(&body) {
        tracing::debug!(api, "webhook: cycle soon");
        h.fire();
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
        kommo_body_is_responsible_change,
        "kommo",
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
        chatapp_body_is_relevant,
        "chatapp",
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn wrong_token_is_404_and_a_valid_call_triggers_once_after_the_debounce() {
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
            tokio::spawn(async move {
                let t0 = Instant::now();
                h.next(Duration::from_millis(300)).await;
                t0.elapsed()
            })
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
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(
            waited >= Duration::from_millis(300),
            "debounced: {waited:?}"
        );
        assert_eq!(hooks.triggered.load(Ordering::Relaxed), 3);
        assert_eq!(hooks.refused.load(Ordering::Relaxed), 1);
    }
}
