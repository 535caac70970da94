//! HTTP plumbing shared by both API clients: one rate limiter per API that every attempt passes
//! (retries included), retries of transport errors, 429 and 5xx with jittered exponential backoff
//! (backon) that honour `retry_after` / `Retry-After`, a per-cycle deadline, a breaker for Kommo's
//! HTML 403 block, request counters, and JSON decoding whose errors name the endpoint and field.

pub mod policy;
pub mod shared_limit;

use backon::BackoffBuilder;
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
pub use policy::{ErrorPolicy, error_policy};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An API call that failed. Messages name the API and endpoint; they never hold secrets (tokens
/// travel in headers, which are never printed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No response (connect, timeout, reset), after retries.
    #[error("{api} {endpoint}: transport error after {attempts} attempt(s): {reason}")]
    Transport {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and path.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// An unexpected status.
    #[error("{api} {endpoint}: HTTP {status}: {body}")]
    Status {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and path.
        endpoint: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// Retries ran past the cycle's time budget.
    #[error(
        "{api} {endpoint}: gave up after {attempts} attempt(s): the cycle's time budget is spent (last: {last})"
    )]
    Budget {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and path.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A body that does not decode as expected.
    #[error("{api} {endpoint}: unexpected response at `{path}`: {reason}")]
    Decode {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and path.
        endpoint: String,
        /// The JSON path of the field (`.` for the whole body).
        path: String,
        /// Why.
        reason: String,
    },
    /// The API blocked us (Kommo: 403 with an HTML body); no calls until the cool-off ends.
    #[error(
        "{api}: blocked (HTTP 403 with an HTML page, or repeated 403s: an IP/account block after too many requests); no calls until {until_unix} (unix); contact Kommo support if it persists"
    )]
    Blocked {
        /// `kommo`.
        api: &'static str,
        /// When calls resume (unix seconds).
        until_unix: i64,
    },
    /// Credentials rejected.
    #[error("{api}: authentication failed: {reason}")]
    Auth {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Why.
        reason: String,
    },
}

impl ApiError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Transport { .. } => "transport",
            ApiError::Status { .. } => "status",
            ApiError::Budget { .. } => "budget",
            ApiError::Decode { .. } => "decode",
            ApiError::Blocked { .. } => "blocked",
            ApiError::Auth { .. } => "auth",
        }
    }
}

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
        self.by_status.lock().expect("counters").clone()
    }

    fn count(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .by_status
            .lock()
            .expect("counters")
            .entry(status)
            .or_default() += 1;
    }
}

/// Limits, timeouts and retry settings of one API client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most requests in any one-second window.
    pub requests_per_second: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// First retry delay (doubled each retry, with jitter).
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Most attempts of one request.
    pub max_attempts: u32,
    /// Kommo: a 403 with an HTML body, or [`REPEATED_403`] 403s in a row, open the breaker for
    /// this long.
    pub block_cooloff: Option<Duration>,
}

impl Limits {
    /// The daemon's settings for an API: 0.5 s first retry doubling to 30 s, 8 attempts.
    pub fn standard(
        requests_per_second: u32,
        timeout: Duration,
        block_cooloff: Option<Duration>,
    ) -> Limits {
        Limits {
            requests_per_second,
            timeout,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 8,
            block_cooloff,
        }
    }
}

/// This many 403 answers in a row (any body) are taken as a block too.
pub const REPEATED_403: u32 = 3;

/// How much slower than `requests_per_second` the limiter spaces requests, so that network jitter
/// cannot make the server see more than `requests_per_second` in any one-second window.
pub const RATE_MARGIN: f64 = 1.05;

/// Builds the limiter: burst 1 at `rps / RATE_MARGIN`. GCRA with burst `b` at rate `r` admits up
/// to `r + b - 1` requests in a one-second window, so any burst would have to be paid for with a
/// lower sustained rate to stay inside the bound; a poller gains nothing from bursts.
pub fn limiter(rps: u32) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(RATE_MARGIN / f64::from(rps.max(1)));
    let quota = Quota::with_period(period)
        .expect("period > 0")
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

/// One API's client plumbing. Cheap to share behind an `Arc`.
pub struct ApiClient {
    /// `kommo` or `chatapp`.
    pub api: &'static str,
    base: String,
    http: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    limits: Limits,
    /// Counters.
    pub counters: Arc<Counters>,
    deadline: Mutex<Option<Instant>>,
    blocked_until: Mutex<Option<(Instant, i64)>>,
    server_time: std::sync::atomic::AtomicI64,
    forbidden_in_a_row: std::sync::atomic::AtomicU32,
    bad: Mutex<Vec<BadRecord>>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
                reason: e.to_string(),
            })?;
        Ok(ApiClient {
            api,
            base: base.trim_end_matches('/').to_string(),
            http,
            limiter: limiter(limits.requests_per_second),
            limits,
            counters: Arc::new(Counters::default()),
            deadline: Mutex::new(None),
            blocked_until: Mutex::new(None),
            server_time: std::sync::atomic::AtomicI64::new(0),
            forbidden_in_a_row: std::sync::atomic::AtomicU32::new(0),
            bad: Mutex::new(Vec::new()),
        })
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

    /// Decodes a list page. The whole page at once when it fits (the fast path); otherwise, if the
    /// page itself is well formed (`R`, its records as raw JSON, decodes), record by record: a
    /// record that does not fit is skipped and kept for [`ApiClient::take_bad`]. A page that
    /// cannot be parsed at all is an error, as before. `items_path` names the records' array in
    /// error paths (e.g. `_embedded.leads`). Returns the good records, the paging data, and how
    /// many records the page held (bad ones included: paging counts them).
    pub fn decode_list<T, P, R>(
        &self,
        endpoint: &str,
        body: &[u8],
        items_path: &str,
        subject: SubjectOf,
    ) -> Result<(Vec<T>, P::Meta, usize), ApiError>
    where
        T: DeserializeOwned,
        P: ListPage<T>,
        R: ListPage<serde_json::Value, Meta = P::Meta>,
    {
        let page_error = match decode::<P>(self.api, endpoint, body) {
            Ok(p) => {
                let (items, meta) = p.split();
                let n = items.len();
                return Ok((items, meta, n));
            }
            Err(e) => e,
        };
        let Ok(raw) = decode::<R>(self.api, endpoint, body) else {
            return Err(page_error);
        };
        let (values, meta) = raw.split();
        let total = values.len();
        let mut good = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            match self.decode_record(endpoint, &v, &format!("{items_path}[{i}]"), subject) {
                Some(t) => good.push(t),
                None => continue,
            }
        }
        Ok((good, meta, total))
    }

    /// Decodes one record; `None` (and a [`BadRecord`] kept) when it does not fit.
    pub fn decode_record<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        v: &serde_json::Value,
        at: &str,
        subject: SubjectOf,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let bad = BadRecord {
                    api: self.api.to_string(),
                    endpoint: endpoint.to_string(),
                    subject: subject(v).map(|s| crate::redact::excerpt(&s, 120)),
                    path: crate::redact::excerpt(&format!("{at}.{}", e.path()), 200),
                    reason: crate::redact::excerpt(&e.into_inner().to_string(), 200),
                };
                tracing::warn!(
                    api = self.api,
                    endpoint,
                    subject = bad.subject.as_deref().unwrap_or("?"),
                    path = %bad.path,
                    reason = %bad.reason,
                    "a record does not fit: skipped and quarantined (the rest of the page is used)"
                );
                self.bad.lock().unwrap_or_else(|e| e.into_inner()).push(bad);
                None
            }
        }
    }

    /// The records skipped since the last call.
    pub fn take_bad(&self) -> Vec<BadRecord> {
        std::mem::take(&mut *self.bad.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets (or clears) the time after which retries give up (the cycle's budget).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().expect("deadline") = deadline;
    }

    /// The server's time (unix seconds) from the `Date` header of the latest response, if any.
    /// Incremental reads use it as their signpost: the next read starts from it (minus an
    /// overlap), so an idle account costs the same few requests whatever happened before.
    pub fn server_time(&self) -> Option<i64> {
        Some(self.server_time.load(Ordering::SeqCst)).filter(|t| *t > 0)
    }

    /// The breaker's state: when calls resume (unix), if blocked now.
    pub fn blocked_until(&self) -> Option<i64> {
        let b = self.blocked_until.lock().expect("breaker");
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
            self.limiter
                .until_ready_with_jitter(Jitter::up_to(Duration::from_millis(20)))
                .await;
            let result = make(&self.http).send().await;
            let (retry_after, last) = 'failed: {
                match result {
                    Err(e) => {
                        self.counters.count(0);
                        (None, strip_url(&e))
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        self.counters.count(status.as_u16());
                        let header_retry = resp
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok());
                        if let Some(t) = resp
                            .headers()
                            .get(reqwest::header::DATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
                        {
                            self.server_time.store(t.timestamp(), Ordering::SeqCst);
                        }
                        let content_type = resp
                            .headers()
                            .get(reqwest::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_ascii_lowercase();
                        let body = match resp.bytes().await {
                            Ok(b) => b.to_vec(),
                            Err(e) => {
                                break 'failed (
                                    None,
                                    format!("reading the body: {}", strip_url(&e)),
                                );
                            }
                        };
                        let r = Response {
                            status,
                            content_type,
                            body,
                        };
                        let in_a_row = if status == StatusCode::FORBIDDEN {
                            self.forbidden_in_a_row.fetch_add(1, Ordering::SeqCst) + 1
                        } else {
                            self.forbidden_in_a_row.store(0, Ordering::SeqCst);
                            0
                        };
                        if status == StatusCode::FORBIDDEN
                            && (r.is_html() || in_a_row >= REPEATED_403)
                            && let Some(cool) = self.limits.block_cooloff
                        {
                            let until_unix = unix_now() + cool.as_secs() as i64;
                            *self.blocked_until.lock().expect("breaker") =
                                Some((Instant::now() + cool, until_unix));
                            tracing::error!(
                                api = self.api,
                                endpoint,
                                until_unix,
                                html = r.is_html(),
                                in_a_row,
                                "API answered 403 (an HTML page, or repeatedly): treating it as an IP/account block; no calls until the cool-off ends"
                            );
                            return Err(ApiError::Blocked {
                                api: self.api,
                                until_unix,
                            });
                        }
                        if status == StatusCode::TOO_MANY_REQUESTS {
                            self.counters.too_many.fetch_add(1, Ordering::Relaxed);
                            let body_retry = serde_json::from_slice::<serde_json::Value>(&r.body)
                                .ok()
                                .and_then(|v| v.get("retry_after").and_then(|x| x.as_u64()));
                            (
                                Some(Duration::from_secs(
                                    body_retry.or(header_retry).unwrap_or(0),
                                )),
                                format!("HTTP 429: {}", r.excerpt(120)),
                            )
                        } else if policy::status_policy(status.as_u16()) == ErrorPolicy::Retry
                            && !pass.contains(&status.as_u16())
                        {
                            (
                                None,
                                format!("HTTP {}: {}", status.as_u16(), r.excerpt(120)),
                            )
                        } else {
                            return Ok(r);
                        }
                    }
                }
            };
            if !self
                .wait_before_retry(&mut delays, retry_after, attempts, endpoint, &last)
                .await?
            {
                return Err(ApiError::Transport {
                    api: self.api,
                    endpoint: endpoint.into(),
                    attempts,
                    reason: last,
                });
            }
        }
    }

    /// Sleeps before the next attempt; `Ok(false)` when attempts are exhausted, `Err` when the
    /// budget would be exceeded.
    async fn wait_before_retry(
        &self,
        delays: &mut impl Iterator<Item = Duration>,
        retry_after: Option<Duration>,
        attempts: u32,
        endpoint: &str,
        last: &str,
    ) -> Result<bool, ApiError> {
        if attempts >= self.limits.max_attempts {
            return Ok(false);
        }
        let backoff = delays.next().unwrap_or(self.limits.max_backoff);
        let wait = retry_after.map_or(backoff, |ra| ra.max(backoff));
        let deadline = *self.deadline.lock().expect("deadline");
        // a wait past the clock's range (`retry_after` near u64::MAX) is past any deadline
        if deadline.is_some_and(|d| Instant::now().checked_add(wait).is_none_or(|t| t > d)) {
            return Err(ApiError::Budget {
                api: self.api,
                endpoint: endpoint.into(),
                attempts,
                last: last.to_string(),
            });
        }
        tracing::warn!(
            api = self.api,
            endpoint,
            attempt = attempts,
            wait_ms = wait.as_millis() as u64,
            last,
            "retrying"
        );
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        Ok(true)
    }
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

/// One record of an otherwise well-formed page that does not fit the expected types: skipped,
/// reported (log, metric, `status`) and quarantined, so it never stalls the rest of the sync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadRecord {
    /// `kommo` or `chatapp`.
    pub api: String,
    /// Method and path.
    pub endpoint: String,
    /// The record when it can be named (`lead:123`, `1:grWhatsApp:7999@c.us`, an event id).
    pub subject: Option<String>,
    /// The JSON path of the field that does not fit.
    pub path: String,
    /// Why (shortened and scrubbed).
    pub reason: String,
}

/// A list page: its records and what paging needs from it (`Meta`).
pub trait ListPage<T>: DeserializeOwned {
    /// What paging needs (a `next` link, a cursor, a page count).
    type Meta;
    /// The records and the paging data.
    fn split(self) -> (Vec<T>, Self::Meta);
}

/// Names a record from its raw JSON, for a [`BadRecord`].
pub type SubjectOf = fn(&serde_json::Value) -> Option<String>;

/// Decodes a JSON body; a failure names the API, endpoint and field path.
pub fn decode<T: DeserializeOwned>(
    api: &'static str,
    endpoint: &str,
    body: &[u8],
) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = if inner.is_eof() {
            format!("the body is truncated ({inner})")
        } else {
            inner.to_string()
        };
        ApiError::Decode {
            api,
            endpoint: endpoint.into(),
            path: crate::redact::excerpt(&path, 200),
            reason: crate::redact::excerpt(&reason, 300),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Lead {
        #[allow(dead_code)]
        responsible_user_id: u64,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Page {
        #[allow(dead_code)]
        leads: Vec<Lead>,
    }

    #[test]
    fn decode_errors_name_the_field_path() {
        let e = decode::<Page>(
            "kommo",
            "GET /api/v4/leads",
            br#"{"leads":[{"responsible_user_id":1},{"responsible_user_id":"x"}]}"#,
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("kommo GET /api/v4/leads"), "{s}");
        assert!(s.contains("leads[1].responsible_user_id"), "{s}");
        let e = decode::<Page>("kommo", "GET /api/v4/leads", br#"{"leads":[{"respon"#).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = decode::<Page>("kommo", "GET /api/v4/leads", br#"{"leads":[{}]}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing field `responsible_user_id`"),
            "{e}"
        );
    }

    #[test]
    fn limiter_never_admits_more_than_rps_in_a_second() {
        // with burst 1 and period 1.05/rps, the (rps+1)-th admission is more than 1 s after the first
        let lim = limiter(7);
        let start = Instant::now();
        let mut n = 0;
        while lim.check().is_ok() {
            n += 1;
        }
        assert_eq!(n, 1, "burst is 1");
        let _ = start;
    }
}
