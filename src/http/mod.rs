//! HTTP plumbing shared by both API clients: one rate limiter per API that every attempt passes
//! (retries included; for Kommo also the limit shared by every instance on the machine), retries
//! of transport errors, 429 and 5xx with jittered exponential backoff (backon) that honour
//! `retry_after` / `Retry-After`, a per-cycle deadline, a breaker for Kommo's HTML 403 block,
//! request counters, and JSON decoding whose errors name the endpoint and field.
//!
//! One attempt is `ApiClient::attempt`; [`ApiClient::execute_passing`] strings attempts
//! together: breaker, wait for our turn, attempt, and on a failure worth retrying, wait.

pub mod account;
mod decode;
mod error;
mod limit;
pub mod policy;
pub mod shared_limit;
pub mod window;

pub use decode::{BadRecord, ListPage, SubjectOf, decode, text_or_empty};
pub use error::ApiError;
pub use limit::{Limits, RATE_MARGIN, REPEATED_403, limiter};
pub use policy::{ErrorPolicy, error_policy};

use backon::BackoffBuilder;
use reqwest::StatusCode;
use shared_limit::SharedLimiter;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest `retry_after` / `Retry-After` honoured; a longer one gives up at once (no cycle
/// waits that long, and a wait past the clock's range would overflow it).
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`, lowercased.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text for error messages: cut to `n` characters, one line, scrubbed of
    /// secrets and anything token-shaped ([`crate::redact`]).
    pub fn excerpt(&self, n: usize) -> String {
        crate::redact::excerpt(&String::from_utf8_lossy(&self.body), n)
    }

    /// True when the body looks like an HTML page.
    pub fn is_html(&self) -> bool {
        self.content_type.contains("html")
            || self
                .body
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'<')
    }
}

/// Request counts, by status, of one API (for cycle records and metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// All requests sent (attempts, retries included).
    pub requests: AtomicU64,
    /// 429 answers.
    pub too_many: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
}

impl Counters {
    /// Requests by HTTP status (0 = no response).
    pub fn by_status(&self) -> BTreeMap<u16, u64> {
        self.by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
    }
}

/// One API's client plumbing. Cheap to share behind an `Arc`.
pub struct ApiClient {
    /// `kommo` or `chatapp`.
    pub api: &'static str,
    base: String,
    http: reqwest::Client,
    limiter: window::SlidingLimiter,
    shared: Option<SharedLimiter>,
    limits: Limits,
    /// Counters.
    pub counters: Arc<Counters>,
    deadline: Mutex<Option<Instant>>,
    blocked_until: Mutex<Option<(Instant, i64)>>,
    server_time: AtomicI64,
    forbidden_in_a_row: AtomicU32,
    bad: Mutex<Vec<BadRecord>>,
}

/// Why an attempt did not give an answer to return, and whether the server asked for a wait.
struct Failure {
    /// [`ApiError::label`] class: `connect`, `timeout`, `http_429`, `http_5xx`, `limiter`.
    class: &'static str,
    /// What happened, for the error and the log.
    text: String,
    /// The server's `retry_after`, if it gave one.
    retry_after: Option<Duration>,
}

impl ApiClient {
    /// Builds a client for `base` (no trailing slash needed).
    pub fn new(api: &'static str, base: &str, limits: Limits) -> Result<ApiClient, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(limits.timeout))
            .timeout(limits.timeout)
            .read_timeout(limits.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("chatapp-kommo-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport {
                api,
                endpoint: "client".into(),
                attempts: 0,
                class: "connect",
                reason: e.to_string(),
            })?;
        Ok(ApiClient {
            api,
            base: base.trim_end_matches('/').to_string(),
            http,
            limiter: limiter(limits.requests_per_second),
            shared: None,
            limits,
            counters: Arc::new(Counters::default()),
            deadline: Mutex::new(None),
            blocked_until: Mutex::new(None),
            server_time: AtomicI64::new(0),
            forbidden_in_a_row: AtomicU32::new(0),
            bad: Mutex::new(Vec::new()),
        })
    }

    /// Also waits for the limit shared by every instance on this machine before each attempt.
    pub fn with_shared_limit(mut self, shared: Option<SharedLimiter>) -> ApiClient {
        self.shared = shared;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The reqwest client, to build requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// An endpoint as errors name it: `GET /api/v4/leads` becomes
    /// `GET https://x.kommo.com/api/v4/leads`, so a message says which account it is about.
    pub fn with_host(&self, endpoint: &str) -> String {
        match endpoint.split_once(' ') {
            Some((method, path)) if path.starts_with('/') => {
                format!("{method} {}{path}", self.base)
            }
            _ => endpoint.to_string(),
        }
    }

    /// Sets (or clears) the time after which retries give up (the cycle's budget).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }

    /// The server's time (unix seconds) from the `Date` header of the latest response, if any.
    /// Incremental reads use it as their signpost: the next read starts from it (minus an
    /// overlap), so an idle account costs the same few requests whatever happened before.
    pub fn server_time(&self) -> Option<i64> {
        Some(self.server_time.load(Ordering::SeqCst)).filter(|t| *t > 0)
    }

    /// The breaker's state: when calls resume (unix), if blocked now.
    pub fn blocked_until(&self) -> Option<i64> {
        let b = self.blocked_until.lock().unwrap_or_else(|e| e.into_inner());
        b.filter(|(until, _)| Instant::now() < *until)
            .map(|(_, unix)| unix)
    }

    /// Sends a request built by `make` (called once per attempt), waiting for the rate limiter
    /// before every attempt. Retries transport errors, 429 and 5xx; returns any other response
    /// for the caller to interpret.
    pub async fn execute(
        &self,
        endpoint: &str,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        self.execute_passing(endpoint, &[], make).await
    }

    /// [`ApiClient::execute`], but the 5xx statuses in `pass` are returned to the caller instead of
    /// retried (Kommo: a 504 on a batch means "send smaller batches").
    pub async fn execute_passing(
        &self,
        endpoint: &str,
        pass: &[u16],
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        let mut delays = backon::ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.limits.min_backoff)
            .with_max_delay(self.limits.max_backoff)
            .without_max_times()
            .build();
        let mut attempts = 0u32;
        loop {
            if let Some(until) = self.blocked_until() {
                return Err(ApiError::Blocked {
                    api: self.api,
                    until_unix: until,
                });
            }
            attempts += 1;
            let failure = match self.wait_turn().await {
                Err(f) => f,
                Ok(()) => match self.attempt(endpoint, pass, &make).await? {
                    Ok(answer) => return Ok(answer),
                    Err(f) => f,
                },
            };
            if !self
                .wait_before_retry(&mut delays, &failure, attempts, endpoint)
                .await?
            {
                return Err(ApiError::Transport {
                    api: self.api,
                    endpoint: self.with_host(endpoint),
                    attempts,
                    class: failure.class,
                    reason: failure.text,
                });
            }
        }
    }

    /// Waits until this client's limiter, then the machine's shared one, admit a request.
    async fn wait_turn(&self) -> Result<(), Failure> {
        self.limiter.until_ready().await;
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        shared.until_ready().await.map_err(|e| Failure {
            class: "limiter",
            text: e.to_string(),
            retry_after: None,
        })
    }

    /// One attempt: `Ok(Ok(answer))` to return to the caller, `Ok(Err(failure))` to retry,
    /// `Err` when the breaker opened.
    async fn attempt(
        &self,
        endpoint: &str,
        pass: &[u16],
        make: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Result<Response, Failure>, ApiError> {
        let resp = match make(&self.http).send().await {
            Ok(resp) => resp,
            Err(e) => {
                self.counters.count(0);
                let class = if e.is_timeout() { "timeout" } else { "connect" };
                return Ok(Err(Failure {
                    class,
                    text: strip_url(&e),
                    retry_after: None,
                }));
            }
        };
        let status = resp.status();
        self.counters.count(status.as_u16());
        let header_retry = header(&resp, reqwest::header::RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        self.note_server_time(&resp);
        let content_type = header(&resp, reqwest::header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                let class = if e.is_timeout() { "timeout" } else { "connect" };
                return Ok(Err(Failure {
                    class,
                    text: format!("reading the body: {}", strip_url(&e)),
                    retry_after: None,
                }));
            }
        };
        let r = Response {
            status,
            content_type,
            body,
        };
        self.check_block(endpoint, &r)?;
        Ok(self.judge(r, pass, header_retry))
    }

    /// Keeps the server's clock from the `Date` header.
    fn note_server_time(&self, resp: &reqwest::Response) {
        if let Some(t) = header(resp, reqwest::header::DATE)
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(&v).ok())
        {
            self.server_time.store(t.timestamp(), Ordering::SeqCst);
        }
    }

    /// When this API has a cool-off (Kommo): a 402 or a 403 whose cause is known (IP allow-list,
    /// rights; see [`account::account_refusal`]) is named and opens nothing; a 403 with an HTML
    /// page, or [`REPEATED_403`] 403s in a row of unknown cause, opens the breaker.
    fn check_block(&self, endpoint: &str, r: &Response) -> Result<(), ApiError> {
        let Some(cool) = self.limits.block_cooloff else {
            return Ok(());
        };
        let path = endpoint.rsplit(' ').next().unwrap_or(endpoint);
        if !r.is_html()
            && let Some(refusal) = account::account_refusal(r.status.as_u16(), path, &r.body)
        {
            self.forbidden_in_a_row.store(0, Ordering::SeqCst);
            tracing::error!(api = self.api, endpoint = %self.with_host(endpoint), cause = refusal.label(), "{}", refusal.explain());
            return Err(ApiError::Account {
                api: self.api,
                endpoint: self.with_host(endpoint),
                refusal,
            });
        }
        let forbidden = r.status == StatusCode::FORBIDDEN;
        let in_a_row = if forbidden {
            self.forbidden_in_a_row.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.forbidden_in_a_row.store(0, Ordering::SeqCst);
            0
        };
        if !forbidden || !(r.is_html() || in_a_row >= REPEATED_403) {
            return Ok(());
        }
        let until_unix = crate::clock::now_unix() + cool.as_secs() as i64;
        *self.blocked_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now() + cool, until_unix));
        tracing::error!(
            api = self.api,
            endpoint = %self.with_host(endpoint),
            until_unix,
            html = r.is_html(),
            in_a_row,
            "API answered 403 (an HTML page, or repeatedly): treating it as an IP/account block; no calls until the cool-off ends"
        );
        Err(ApiError::Blocked {
            api: self.api,
            until_unix,
        })
    }

    /// A 429, or a 5xx not in `pass`, is a failure to retry; anything else is the answer.
    fn judge(
        &self,
        r: Response,
        pass: &[u16],
        header_retry: Option<Duration>,
    ) -> Result<Response, Failure> {
        let status = r.status.as_u16();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            self.counters.too_many.fetch_add(1, Ordering::Relaxed);
            let body_retry = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v.get("retry_after").and_then(|x| x.as_u64()))
                .map(Duration::from_secs);
            return Err(Failure {
                class: "http_429",
                text: format!("HTTP 429: {}", r.excerpt(120)),
                retry_after: body_retry.or(header_retry).or(Some(Duration::ZERO)),
            });
        }
        if policy::status_policy(status) == ErrorPolicy::Retry && !pass.contains(&status) {
            return Err(Failure {
                class: "http_5xx",
                text: format!("HTTP {status}: {}", r.excerpt(120)),
                retry_after: None,
            });
        }
        Ok(r)
    }

    /// Sleeps before the next attempt; `Ok(false)` when attempts are exhausted (or the server
    /// asks for a wait longer than [`LONGEST_RETRY_AFTER`]), `Err` when the wait would run past
    /// the cycle's budget.
    async fn wait_before_retry(
        &self,
        delays: &mut impl Iterator<Item = Duration>,
        failure: &Failure,
        attempts: u32,
        endpoint: &str,
    ) -> Result<bool, ApiError> {
        if attempts >= self.limits.max_attempts
            || failure
                .retry_after
                .is_some_and(|ra| ra > LONGEST_RETRY_AFTER)
        {
            return Ok(false);
        }
        let backoff = delays.next().unwrap_or(self.limits.max_backoff);
        let wait = failure.retry_after.map_or(backoff, |ra| ra.max(backoff));
        let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if deadline.is_some_and(|d| Instant::now() + wait > d) {
            return Err(ApiError::Budget {
                api: self.api,
                endpoint: self.with_host(endpoint),
                attempts,
                last: failure.text.clone(),
            });
        }
        tracing::warn!(
            api = self.api,
            endpoint = %self.with_host(endpoint),
            attempt = attempts,
            wait_ms = wait.as_millis() as u64,
            class = failure.class,
            last = %failure.text,
            "retrying"
        );
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        Ok(true)
    }
}

/// A header's value as text, if present and readable.
fn header(resp: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A reqwest error's text without its URL's query (noise), scrubbed like a body.
fn strip_url(e: &reqwest::Error) -> String {
    crate::redact::scrub(&strip_url_raw(e))
}

fn strip_url_raw(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), u.path());
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A client built on an [`ApiClient`]: what the ports meter (server time, requests, deadline,
/// skipped records) is its client's.
pub trait OnApiClient {
    /// The client underneath.
    fn api_client(&self) -> &ApiClient;
}

/// What every API port has besides its calls (the ports re-export it: the meter is the HTTP
/// plumbing's, whichever API it serves).
pub trait ApiMeter: Send + Sync {
    /// The server's time (unix seconds) of its latest answer, if any.
    fn server_time(&self) -> Option<i64>;
    /// Requests sent so far (retries included).
    fn request_count(&self) -> u64;
    /// Sets (or clears) when retries give up (the cycle's budget).
    fn set_deadline(&self, deadline: Option<Instant>);
    /// The records skipped since the last call (they did not fit their page).
    fn take_bad(&self) -> Vec<BadRecord>;
}

impl<T: OnApiClient + Send + Sync> ApiMeter for T {
    fn server_time(&self) -> Option<i64> {
        self.api_client().server_time()
    }
    fn request_count(&self) -> u64 {
        self.api_client()
            .counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    fn set_deadline(&self, deadline: Option<Instant>) {
        self.api_client().set_deadline(deadline);
    }
    fn take_bad(&self) -> Vec<BadRecord> {
        self.api_client().take_bad()
    }
}
