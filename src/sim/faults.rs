//! Machinery shared by both simulators: the [`SimClock`], fault injection ([`Fault`],
//! [`FaultRule`]), the request log ([`LoggedRequest`]), the sliding-window rate meter and the
//! axum server task.
//!
//! Every request that reaches a simulator goes through the same pipeline:
//!
//! 1. the arrival `Instant` and the [`SimClock`] time are taken, the body is read;
//! 2. a persistent block (`set_blocked(true)`, Kommo only) answers `403` with an nginx HTML page;
//! 3. the rps limit (`set_rps_limit`) answers `429` when this request would make more than N
//!    requests in the last second (every received request counts, rejected ones too);
//! 4. the first queued [`FaultRule`] that matches (FIFO) is consumed and applied;
//! 5. otherwise the request is served normally;
//! 6. the request is appended to the log with its final status.
//!
//! Faults that short-circuit (`TooMany`, `Status`, `HtmlForbidden`) never reach the handler, so
//! they have no side effects (a faulted PATCH/PUT is not applied). `Truncated` runs the real
//! handler (side effects included: a write is applied but its answer is unreadable) and then cuts
//! the body in half. `Latency` sleeps, then serves normally.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::util::{json_response, parse_query};

/// A shared clock: real unix seconds plus an adjustable offset, or a frozen time after
/// [`SimClock::freeze`]. Cloning shares the state, so two simulators given clones of one clock
/// agree on the time.
#[derive(Clone, Debug)]
pub struct SimClock {
    offset: Arc<AtomicI64>,
    /// The frozen time, or `i64::MIN` while the clock follows real time.
    frozen: Arc<AtomicI64>,
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock {
            offset: Arc::new(AtomicI64::new(0)),
            frozen: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }
}

impl SimClock {
    /// A clock that starts at the real time (offset 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Current simulated unix time in seconds.
    pub fn now(&self) -> i64 {
        match self.frozen.load(Ordering::SeqCst) {
            i64::MIN => real_unix() + self.offset.load(Ordering::SeqCst),
            t => t,
        }
    }

    /// Stops the clock at its current time: it then moves only by [`SimClock::advance`] and
    /// [`SimClock::set_now`], so tests that compare exact times cannot straddle a second.
    pub fn freeze(&self) {
        let now = self.now();
        self.frozen.store(now, Ordering::SeqCst);
    }

    /// Moves the clock forward by `secs` (a negative value moves it back).
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
        let _ = self
            .frozen
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t != i64::MIN).then_some(t + secs)
            });
    }

    /// Sets the clock so that [`SimClock::now`] returns `unix` at this moment.
    pub fn set_now(&self, unix: i64) {
        self.offset.store(unix - real_unix(), Ordering::SeqCst);
        let _ = self
            .frozen
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t != i64::MIN).then_some(unix)
            });
    }

    /// The current offset from real time, in seconds.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }
}

fn real_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fault a simulator can inject into a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429. Kommo: `application/problem+json` body with `retry_after`; ChatApp:
    /// `{"success":false,"error":{"code":"TooManyRequests",..}}` plus a `Retry-After` header.
    TooMany {
        /// Seconds to wait, as reported to the client.
        retry_after: u64,
    },
    /// The given HTTP status with the API's own error shape (e.g. 500, 502, 503, 504).
    Status(u16),
    /// HTTP 200 with a JSON content type and the real body cut in half (the handler runs).
    Truncated,
    /// HTTP 403 with an nginx `text/html` page.
    HtmlForbidden,
    /// Kommo: HTTP 403 with a problem body carrying error code 113 (this IP is not in the
    /// account's allow-list; AMO `error-codes.md` L45). The body's shape is an assumption: no
    /// source shows it.
    IpNotAllowed,
    /// Waits this long, then serves the request normally.
    Latency(Duration),
    /// Serves the request (a write is applied), then waits this long before answering: the crash
    /// point "the write landed but the client never saw the answer".
    LatencyAfter(Duration),
    /// The given status with a JSON body that echoes the request's `Authorization` and `Refresh`
    /// headers (a careless server repeating the credentials it was sent).
    EchoCredentials(u16),
}

/// A queued fault: the next `times` requests matching `method` and `path_prefix` get `fault`.
/// Rules are matched in FIFO order; a rule is dropped once used up.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// Only requests with this method match (`None`: any method).
    pub method: Option<Method>,
    /// Only requests whose path starts with this prefix match (`None`: any path).
    pub path_prefix: Option<String>,
    /// The fault to inject.
    pub fault: Fault,
    /// How many matching requests get the fault.
    pub times: u32,
}

impl FaultRule {
    /// A rule matching any request, once.
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            method: None,
            path_prefix: None,
            fault,
            times: 1,
        }
    }

    /// Restricts the rule to one method (`"GET"`, `"patch"`, ...).
    ///
    /// # Panics
    /// If `method` is not a valid HTTP method token.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(
            Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("valid HTTP method"),
        );
        self
    }

    /// Restricts the rule to paths starting with `prefix`.
    pub fn path(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Sets how many matching requests get the fault.
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.times > 0
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

/// One request as seen by a simulator (faulted and rejected requests included).
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// HTTP method, upper case.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw (still percent-encoded) query string, empty when absent.
    pub query: String,
    /// Final HTTP status sent.
    pub status: u16,
    /// Arrival time.
    pub at: Instant,
    /// Arrival time on the [`SimClock`].
    pub unix: i64,
}

/// The largest number of instants that lie within any half-open window `[t, t + window)`.
/// The input need not be sorted.
pub fn max_requests_in_window(ats: &[Instant], window: Duration) -> usize {
    let mut sorted = ats.to_vec();
    sorted.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..sorted.len() {
        if j < i {
            j = i;
        }
        while j < sorted.len() && sorted[j].duration_since(sorted[i]) < window {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

/// Which API's error shapes to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    Kommo,
    ChatApp,
}

#[derive(Default)]
struct FaultsInner {
    rules: VecDeque<FaultRule>,
    rps_limit: Option<u32>,
    recent: VecDeque<Instant>,
    log: Vec<LoggedRequest>,
    blocked: bool,
}

/// Fault queue, rps limiter and request log of one simulator.
#[derive(Default)]
pub(crate) struct Faults {
    inner: Mutex<FaultsInner>,
}

enum Admission {
    Blocked,
    RateLimited,
    Fault(Fault),
    Normal,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, rule: FaultRule) {
        if rule.times > 0 {
            self.lock().rules.push_back(rule);
        }
    }

    pub(crate) fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    pub(crate) fn pending(&self) -> usize {
        self.lock().rules.iter().map(|r| r.times as usize).sum()
    }

    pub(crate) fn set_rps_limit(&self, limit: Option<u32>) {
        self.lock().rps_limit = limit;
    }

    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.lock().blocked = blocked;
    }

    pub(crate) fn requests(&self) -> Vec<LoggedRequest> {
        let mut log = self.lock().log.clone();
        log.sort_by_key(|r| r.at);
        log
    }

    pub(crate) fn request_count(&self) -> usize {
        self.lock().log.len()
    }

    pub(crate) fn clear_log(&self) {
        self.lock().log.clear();
    }

    pub(crate) fn max_in_any_second(&self) -> usize {
        let ats: Vec<Instant> = self.lock().log.iter().map(|r| r.at).collect();
        max_requests_in_window(&ats, Duration::from_secs(1))
    }

    fn admit(&self, method: &Method, path: &str, at: Instant) -> Admission {
        let mut g = self.lock();
        if g.blocked {
            return Admission::Blocked;
        }
        while g
            .recent
            .front()
            .is_some_and(|t| at.saturating_duration_since(*t) >= Duration::from_secs(1))
        {
            g.recent.pop_front();
        }
        g.recent.push_back(at);
        if let Some(limit) = g.rps_limit
            && g.recent.len() > limit as usize
        {
            return Admission::RateLimited;
        }
        if let Some(pos) = g.rules.iter().position(|r| r.matches(method, path)) {
            let rule = &mut g.rules[pos];
            rule.times -= 1;
            let fault = rule.fault.clone();
            if rule.times == 0 {
                g.rules.remove(pos);
            }
            return Admission::Fault(fault);
        }
        Admission::Normal
    }

    fn record(&self, entry: LoggedRequest) {
        self.lock().log.push(entry);
    }
}

/// A request as handed to a simulator's (synchronous) router.
pub(crate) struct Incoming {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub params: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Runs a synchronous handler. On a multi-threaded runtime it runs in place of the worker
/// ([`tokio::task::block_in_place`]), so that a slow handler (a page of 250 cards takes tens of
/// ms in a debug build) does not keep the runtime from taking in and timestamping the requests
/// that arrive meanwhile: a request's logged arrival stays its arrival, not the end of the
/// simulator's own queue. A current-thread runtime (the tests') runs it directly.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs one request through block / rps limit / fault queue, the handler, and the log.
pub(crate) async fn process<F>(
    faults: &Faults,
    flavor: Flavor,
    unix: i64,
    req: Request,
    handler: F,
) -> Response
where
    F: FnOnce(Incoming) -> Response,
{
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let incoming = Incoming {
        method: parts.method.clone(),
        params: parse_query(&query),
        path: path.clone(),
        query: query.clone(),
        headers: parts.headers,
        body,
    };
    let resp = match faults.admit(&parts.method, &path, at) {
        Admission::Blocked => html_forbidden(),
        Admission::RateLimited => too_many(flavor, 1),
        Admission::Fault(Fault::TooMany { retry_after }) => too_many(flavor, retry_after),
        Admission::Fault(Fault::Status(code)) => status_error(flavor, code),
        Admission::Fault(Fault::HtmlForbidden) => html_forbidden(),
        Admission::Fault(Fault::IpNotAllowed) => ip_not_allowed(),
        Admission::Fault(Fault::LatencyAfter(d)) => {
            let r = off_worker(|| handler(incoming));
            tokio::time::sleep(d).await;
            r
        }
        Admission::Fault(Fault::Latency(d)) => {
            tokio::time::sleep(d).await;
            off_worker(|| handler(incoming))
        }
        Admission::Fault(Fault::Truncated) => {
            truncate(flavor, off_worker(|| handler(incoming))).await
        }
        Admission::Fault(Fault::EchoCredentials(code)) => echo_credentials(code, &incoming),
        Admission::Normal => off_worker(|| handler(incoming)),
    };
    let mut resp = resp;
    // the server's own time, from the simulator's clock (clients use it as the read signpost)
    if let Some(date) = chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .and_then(|d| HeaderValue::from_str(&d).ok())
    {
        resp.headers_mut().insert(header::DATE, date);
    }
    faults.record(LoggedRequest {
        method: parts.method.as_str().to_string(),
        path,
        query,
        status: resp.status().as_u16(),
        at,
        unix,
    });
    resp
}

const NGINX_403: &str = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// `403` nginx HTML page.
pub(crate) fn echo_credentials(code: u16, inc: &Incoming) -> Response {
    let header = |name: &str| {
        inc.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = serde_json::json!({
        "title": "Unauthorized",
        "status": code,
        "detail": format!("the token {} is not valid (refresh: {})", header("authorization"), header("refresh")),
    });
    let mut resp = Response::new(axum::body::Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::UNAUTHORIZED);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

fn html_forbidden() -> Response {
    let mut resp = Response::new(Body::from(NGINX_403));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// `429` in the flavor's shape.
pub(crate) fn too_many(flavor: Flavor, retry_after: u64) -> Response {
    match flavor {
        Flavor::Kommo => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            "application/problem+json",
            &json!({
                "title": "Too Many Requests",
                "type": "https://httpstatus.es/429",
                "status": 429,
                "detail": "You have sent too many requests in a given amount of time. Please try again later.",
                "retry_after": retry_after,
            }),
        ),
        Flavor::ChatApp => {
            let mut resp = chatapp_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            resp
        }
    }
}

/// A Kommo `application/problem+json` error.
pub(crate) fn kommo_problem(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut body = json!({
        "title": title,
        "type": format!("https://httpstatus.es/{}", status.as_u16()),
        "status": status.as_u16(),
        "detail": detail,
    });
    if status.is_server_error() {
        body["title"] = json!("ErrInternalServer");
        body["trace_id"] = json!("sim-trace-0001");
    }
    json_response(status, "application/problem+json", &body)
}

/// Kommo's 403 for an IP outside the account's allow-list (code 113).
fn ip_not_allowed() -> Response {
    let body = json!({
        "title": "Forbidden",
        "type": "https://httpstatus.es/403",
        "status": 403,
        "detail": "Access to this account is denied from your IP address",
        "code": 113,
    });
    json_response(StatusCode::FORBIDDEN, "application/problem+json", &body)
}

/// A ChatApp `{"success": false, "error": {...}}` error.
pub(crate) fn chatapp_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        "application/json",
        &json!({"success": false, "error": {"code": code, "message": message}}),
    )
}

/// An arbitrary status in the flavor's error shape.
pub(crate) fn status_error(flavor: Flavor, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match flavor {
        Flavor::Kommo => kommo_problem(status, "Simulated failure"),
        Flavor::ChatApp => {
            let code = match status.as_u16() {
                401 => "ApiAuthError",
                403 => "ApiInvalidTokenError",
                404 => "ApiNotFoundError",
                422 => "ApiValidationError",
                429 => "TooManyRequests",
                502 => "BadGateway",
                503 => "ServiceUnavailable",
                504 => "GatewayTimeout",
                _ => "ApiServerError",
            };
            chatapp_error(status, code, "Simulated failure")
        }
    }
}

async fn truncate(flavor: Flavor, resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let cut = bytes.slice(..bytes.len() / 2);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static(match flavor {
                Flavor::Kommo => "application/hal+json",
                Flavor::ChatApp => "application/json",
            })
        });
    let mut out = Response::new(Body::from(cut));
    *out.status_mut() = StatusCode::OK;
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    out
}

/// The running axum server of one simulator.
pub(crate) struct ServerTask {
    stop: watch::Sender<bool>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl ServerTask {
    /// Creates the stop channel; call [`ServerTask::spawn`] once the router exists.
    pub(crate) fn new() -> Self {
        ServerTask {
            stop: watch::channel(false).0,
            join: Mutex::new(None),
        }
    }

    /// Serves `router` on `listener` until [`ServerTask::shutdown`].
    pub(crate) fn spawn(&self, listener: TcpListener, router: Router) {
        let mut rx = self.stop.subscribe();
        let handle = tokio::spawn(async move {
            let signal = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %e, "simulator server stopped with an error");
            }
        });
        *self.join.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    /// Stops accepting connections and waits (at most 2 s) for the server task to end.
    pub(crate) async fn shutdown(&self) {
        self.stop.send_replace(true);
        let handle = self.join.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle
            && tokio::time::timeout(Duration::from_secs(2), handle)
                .await
                .is_err()
        {
            tracing::warn!("simulator server did not stop within 2 s");
        }
    }
}

/// Binds `127.0.0.1:0` and returns the listener and its base URL.
pub(crate) async fn bind_local() -> std::io::Result<(TcpListener, String, u16)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, format!("http://127.0.0.1:{port}"), port))
}

/// Generates the fault / log / rps inherent methods on a simulator handle whose shared part has
/// a `faults: Faults` field reachable as `self.shared.faults`.
macro_rules! fault_methods {
    () => {
        /// Queues a fault rule (FIFO; see [`FaultRule`](crate::sim::FaultRule)).
        pub fn push_fault(&self, rule: $crate::sim::FaultRule) {
            self.shared.faults.push(rule);
        }

        /// Shorthand for `push_fault(FaultRule::new(fault).times(times))` matching any request.
        pub fn fail_next(&self, fault: $crate::sim::Fault, times: u32) {
            self.shared
                .faults
                .push($crate::sim::FaultRule::new(fault).times(times));
        }

        /// Drops every queued fault rule.
        pub fn clear_faults(&self) {
            self.shared.faults.clear_rules();
        }

        /// How many faulted responses are still queued (sum of remaining `times`).
        pub fn pending_faults(&self) -> usize {
            self.shared.faults.pending()
        }

        /// Sets (or clears) the limit of requests in any sliding one-second window; requests over
        /// it get a 429 with `retry_after` 1. Every received request counts, rejected ones too.
        pub fn set_rps_limit(&self, limit: Option<u32>) {
            self.shared.faults.set_rps_limit(limit);
        }

        /// Every request received so far, in arrival order.
        pub fn requests(&self) -> Vec<$crate::sim::LoggedRequest> {
            self.shared.faults.requests()
        }

        /// Number of requests received so far.
        pub fn request_count(&self) -> usize {
            self.shared.faults.request_count()
        }

        /// Empties the request log.
        pub fn clear_log(&self) {
            self.shared.faults.clear_log();
        }

        /// The largest number of logged requests whose arrival lies within any half-open
        /// one-second interval.
        pub fn max_requests_in_any_second(&self) -> usize {
            self.shared.faults.max_in_any_second()
        }

        /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
        pub fn base_url(&self) -> String {
            self.shared.base_url.clone()
        }

        /// The clock this simulator uses for every timestamp.
        pub fn clock(&self) -> $crate::sim::SimClock {
            self.shared.clock.clone()
        }

        /// Stops the HTTP server (waits at most 2 s). The handle stays usable for inspection.
        pub async fn shutdown(&self) {
            self.shared.server.shutdown().await;
        }
    };
}
pub(crate) use fault_methods;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_meter() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let ats = vec![ms(0), ms(100), ms(999), ms(1000), ms(1500), ms(1999)];
        // [0,1000) holds 3; [999,1999) holds 3 (999,1000,1500); [1000,2000) holds 3
        assert_eq!(max_requests_in_window(&ats, Duration::from_secs(1)), 3);
        assert_eq!(max_requests_in_window(&[], Duration::from_secs(1)), 0);
        let burst: Vec<Instant> = (0..10).map(|i| ms(i * 10)).collect();
        assert_eq!(max_requests_in_window(&burst, Duration::from_secs(1)), 10);
    }

    #[test]
    fn clock_advances() {
        let c = SimClock::new();
        let c2 = c.clone();
        let before = c.now();
        c2.advance(100);
        assert!(c.now() >= before + 100);
        c.set_now(1_000);
        assert!((1_000..=1_001).contains(&c2.now()));
    }
}
