//! The optional HTTP endpoint (`[daemon] listen`): `/metrics` in Prometheus text format,
//! `/healthz` (the process is alive) and `/readyz` (a good cycle within 3 poll intervals).
//! Written by hand: a dozen counters do not need a metrics framework. The server, its limits and
//! how these routes stay reachable under a flood are in [`crate::service::http_server`].

use crate::config::Config;
use crate::service::wiring::LiveSyncer;
use crate::sync::{CycleError, CycleReport};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the cycle-duration histogram.
pub const DURATION_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

#[derive(Default)]
struct Inner {
    cycles: BTreeMap<(String, String), u64>,
    errors: BTreeMap<&'static str, u64>,
    writes: BTreeMap<String, u64>,
    shadow_writes: BTreeMap<&'static str, u64>,
    /// Writes refused by the API, by target kind.
    rejected: BTreeMap<String, u64>,
    /// Writes answered as done that the read-back showed not applied, by target kind.
    not_applied: BTreeMap<String, u64>,
    parked: BTreeMap<String, u64>,
    conflicts: u64,
    token_unsaved: bool,
    requests: BTreeMap<(&'static str, u16), u64>,
    too_many: BTreeMap<&'static str, u64>,
    retries: BTreeMap<&'static str, u64>,
    refreshes: u64,
    logins: u64,
    /// The current syncer's own counters at the last observation: the process-wide totals
    /// above grow by the difference, so a reload (a new syncer, counting from zero) never makes a
    /// counter go back.
    seen: Seen,
    cycle_running: bool,
    last_success_unix: Option<i64>,
    last_success: Option<Instant>,
    duration_buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    /// Records in quarantine at the end of the last cycle.
    quarantined: u64,
    /// When the process started (unix seconds).
    started_unix: i64,
    /// The interval between two poll cycles (from the config).
    poll_interval: Duration,
    /// When each API's breaker lets calls through again (unix), as seen at the last cycle's end.
    blocked_until: BTreeMap<&'static str, i64>,
    /// Webhook registrations the daemon sent again after a full cycle, per API.
    webhooks_reregistered: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
struct Seen {
    requests: BTreeMap<(&'static str, u16), u64>,
    too_many: BTreeMap<&'static str, u64>,
    retries: BTreeMap<&'static str, u64>,
    refreshes: u64,
    logins: u64,
}

/// The APIs, as they are labelled (`api="..."`).
const APIS: [&str; 2] = ["kommo", "chatapp"];

impl Inner {
    /// A cycle that ended (ok or braked): its outcome, its confirmed writes per target kind, its
    /// parked pairs (replacing the last cycle's), its conflicts and, when ok, the time of success.
    fn observe_report(&mut self, rep: &CycleReport) {
        *self
            .cycles
            .entry((
                rep.record.kind.as_str().to_string(),
                rep.record.outcome.as_str().to_string(),
            ))
            .or_default() += 1;
        for (w, res) in rep.plan.writes.iter().zip(&rep.results) {
            if *res == crate::sync::WriteResult::Done {
                *self.writes.entry(target_label(&w.target)).or_default() += 1;
            }
            match res {
                crate::sync::WriteResult::Rejected(_) => {
                    *self.rejected.entry(target_label(&w.target)).or_default() += 1;
                }
                crate::sync::WriteResult::NotApplied(_) => {
                    *self.not_applied.entry(target_label(&w.target)).or_default() += 1;
                }
                _ => {}
            }
            if *res == crate::sync::WriteResult::Shadowed {
                let side = crate::sync::shadow::side(&w.target).as_str();
                *self.shadow_writes.entry(side).or_default() += 1;
            }
        }
        self.parked.clear();
        for p in &rep.plan.parked {
            *self.parked.entry(p.reason.label().to_string()).or_default() += 1;
        }
        self.conflicts += rep.plan.conflicts.len() as u64;
        if matches!(
            rep.record.outcome,
            crate::store::Outcome::Ok | crate::store::Outcome::Shadow
        ) {
            self.last_success_unix = Some(rep.record.finished_at);
            self.last_success = Some(Instant::now());
        }
    }

    /// A failed cycle of `kind`: counted as failed, and under its error class.
    fn observe_error(&mut self, kind: &str, e: &CycleError) {
        *self
            .cycles
            .entry((kind.into(), "failed".into()))
            .or_default() += 1;
        *self.errors.entry(e.label()).or_default() += 1;
    }

    /// A cycle's wall time, into the histogram.
    fn observe_duration(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.duration_buckets[i] += 1;
            }
        }
        self.duration_sum += secs;
        self.duration_count += 1;
    }

    /// The clients' own counters (grown into the process-wide totals) and their breakers.
    fn observe_clients(&mut self, syncer: &LiveSyncer) {
        for (api, client) in [
            ("kommo", &syncer.kommo.api),
            ("chatapp", &syncer.chatapp.api),
        ] {
            self.observe_api(api, &client.counters);
            match client.blocked_until() {
                Some(until) => self.blocked_until.insert(api, until),
                None => self.blocked_until.remove(api),
            };
        }
        let seen = &mut self.seen;
        let chatapp = &syncer.chatapp;
        grow(
            &mut self.refreshes,
            &mut seen.refreshes,
            chatapp.refreshes.load(Ordering::Relaxed),
        );
        grow(
            &mut self.logins,
            &mut seen.logins,
            chatapp.logins.load(Ordering::Relaxed),
        );
    }

    /// One API's requests by status, 429 answers and retries.
    fn observe_api(&mut self, api: &'static str, c: &crate::http::Counters) {
        for (status, n) in c.by_status() {
            grow(
                self.requests.entry((api, status)).or_default(),
                self.seen.requests.entry((api, status)).or_default(),
                n,
            );
        }
        grow(
            self.too_many.entry(api).or_default(),
            self.seen.too_many.entry(api).or_default(),
            c.too_many.load(Ordering::Relaxed),
        );
        grow(
            self.retries.entry(api).or_default(),
            self.seen.retries.entry(api).or_default(),
            c.retries.load(Ordering::Relaxed),
        );
    }
}

/// The `target` label of a write: the card's kind (`lead`, `contact`, ...) or `dialog`.
fn target_label(t: &crate::core::engine::Target) -> String {
    match t {
        crate::core::engine::Target::Card { id, .. } => id.kind.singular().to_string(),
        crate::core::engine::Target::Dialog { .. } => "dialog".to_string(),
    }
}

/// Adds what `now` grew by since `seen` (a counter of the current syncer) to `total`.
fn grow(total: &mut u64, seen: &mut u64, now: u64) {
    *total += now.saturating_sub(*seen);
    *seen = now;
}

/// A label value, escaped for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The daemon's metrics; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
    ready_within: Arc<Mutex<Duration>>,
}

impl Metrics {
    /// Empty metrics, started now (`chatapp_kommo_sync_start_time_seconds`).
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.lock().started_unix = crate::clock::now_unix();
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon replaced its syncer (a reload): the new one's counters start from zero.
    pub fn syncer_replaced(&self) {
        self.lock().seen = Seen::default();
    }

    /// A cycle started (`chatapp_kommo_sync_cycle_running` is 1 until it is observed).
    pub fn cycle_started(&self) {
        self.lock().cycle_running = true;
    }

    /// Takes `/readyz`'s window from the config (at start and after a reload).
    /// Also the poll interval shown by `chatapp_kommo_sync_poll_interval_seconds`.
    pub fn configure(&self, cfg: &Config) {
        let poll = poll_interval(cfg);
        *self.ready_within.lock().unwrap_or_else(|e| e.into_inner()) =
            poll * 3 + cfg.daemon.cycle_budget.min(Duration::from_secs(60));
        self.lock().poll_interval = poll;
    }

    /// Records a finished cycle (`full` or incremental, its wall time and its result), the
    /// clients' request counters and breakers, and the records in quarantine.
    pub fn observe_cycle(
        &self,
        kind: crate::store::CycleKind,
        took: Duration,
        r: &Result<CycleReport, CycleError>,
        syncer: &LiveSyncer,
    ) {
        // read before taking the lock: a slow db never holds up `/metrics`
        let quarantined = syncer.store.quarantined().ok().map(|q| q.len() as u64);
        let mut m = self.lock();
        m.cycle_running = false;
        match r {
            Ok(rep) => m.observe_report(rep),
            Err(e) => m.observe_error(kind.as_str(), e),
        }
        m.observe_duration(took);
        m.observe_clients(syncer);
        if let Some(q) = quarantined {
            m.quarantined = q;
        }
    }

    /// The Prometheus text exposition (format 0.0.4): every family, declared even when empty.
    pub fn render(&self) -> String {
        let ready = self.ready();
        let now = crate::clock::now_unix();
        let m = self.lock();
        let mut o = String::new();
        render_build_info(&mut o);
        render_cycles(&mut o, &m);
        render_health(&mut o, &m, ready);
        render_outcomes(&mut o, &m);
        render_api(&mut o, &m, now);
        render_tokens(&mut o, &m);
        render_webhooks(&mut o, &m);
        render_duration(&mut o, &m);
        o
    }

    /// Counts `n` webhook registrations the daemon had to send again to `api` (`kommo` or
    /// `chatapp`): `chatapp_kommo_sync_webhooks_reregistered_total{api}`.
    pub fn webhooks_reregistered(&self, api: &'static str, n: u64) {
        *self.lock().webhooks_reregistered.entry(api).or_default() += n;
    }

    /// Whether a rotated Kommo token lives only in memory (not ready while it does).
    pub fn set_token_unsaved(&self, unsaved: bool) {
        self.lock().token_unsaved = unsaved;
    }

    /// A good cycle ended within 3 poll intervals (plus a minute's slack for a long cycle), and
    /// no rotated token waits to be stored.
    pub fn ready(&self) -> bool {
        if self.lock().token_unsaved {
            return false;
        }
        let within = *self.ready_within.lock().unwrap_or_else(|e| e.into_inner());
        self.lock()
            .last_success
            .is_some_and(|t| t.elapsed() <= within)
    }
}

/// Declares a family: its `# HELP` and `# TYPE` lines.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample: `name{k="v",...} value` (label values escaped; no braces without labels).
fn sample(o: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    o.push_str(name);
    if !labels.is_empty() {
        let pairs: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        let _ = write!(o, "{{{}}}", pairs.join(","));
    }
    let _ = writeln!(o, " {value}");
}

/// `build_info`: always 1, labelled with the package version.
fn render_build_info(o: &mut String) {
    let name = "chatapp_kommo_sync_build_info";
    family(
        o,
        name,
        "gauge",
        "Always 1; the version of the running daemon.",
    );
    sample(o, name, &[("version", env!("CARGO_PKG_VERSION"))], 1);
}

/// Cycles by kind and outcome, and failed cycles by error class.
fn render_cycles(o: &mut String, m: &Inner) {
    let name = "chatapp_kommo_sync_cycles_total";
    family(
        o,
        name,
        "counter",
        "Cycles by kind (full, incremental, hint) and outcome (ok, braked, failed).",
    );
    for ((k, out), n) in &m.cycles {
        sample(o, name, &[("kind", k), ("outcome", out)], n);
    }
    let name = "chatapp_kommo_sync_cycle_errors_total";
    family(
        o,
        name,
        "counter",
        "Failed cycles by error class (connect, timeout, http_429, http_4xx, http_5xx, decode, budget, blocked, auth, limiter, store, stopped).",
    );
    for (e, n) in &m.errors {
        sample(o, name, &[("error", e)], n);
    }
}

/// Whether a cycle runs, the last good one, the start, the poll interval, and readiness (as `/readyz` answers).
fn render_health(o: &mut String, m: &Inner, ready: bool) {
    let name = "chatapp_kommo_sync_cycle_running";
    family(o, name, "gauge", "1 while a cycle runs.");
    sample(o, name, &[], u8::from(m.cycle_running));
    let name = "chatapp_kommo_sync_last_success_timestamp_seconds";
    family(
        o,
        name,
        "gauge",
        "End of the last good cycle (unix seconds; 0 before the first).",
    );
    sample(o, name, &[], m.last_success_unix.unwrap_or(0));
    let name = "chatapp_kommo_sync_start_time_seconds";
    family(o, name, "gauge", "When the daemon started (unix seconds).");
    sample(o, name, &[], m.started_unix);
    let name = "chatapp_kommo_sync_poll_interval_seconds";
    family(
        o,
        name,
        "gauge",
        "The interval between two poll cycles now (from daemon.poll_schedule).",
    );
    sample(o, name, &[], m.poll_interval.as_secs_f64());
    let name = "chatapp_kommo_sync_ready";
    family(
        o,
        name,
        "gauge",
        "1 when /readyz answers 200 (a good cycle within 3 poll intervals, no unsaved token).",
    );
    sample(o, name, &[], u8::from(ready));
}

/// What the cycles did: writes per target kind, parked pairs, conflicts, quarantined records.
fn render_outcomes(o: &mut String, m: &Inner) {
    let name = "chatapp_kommo_sync_writes_total";
    family(o, name, "counter", "Confirmed writes by target kind.");
    for (k, n) in &m.writes {
        sample(o, name, &[("target", k)], n);
    }
    let name = "chatapp_kommo_sync_writes_rejected_total";
    family(
        o,
        name,
        "counter",
        "Writes the API refused (parked until their back-off ends), by target kind.",
    );
    for target in ["dialog", "lead", "contact", "company", "customer"] {
        sample(
            o,
            name,
            &[("target", target)],
            m.rejected.get(target).copied().unwrap_or(0),
        );
    }
    let name = "chatapp_kommo_sync_writes_not_applied_total";
    family(
        o,
        name,
        "counter",
        "Writes the API answered as done that reading the target back showed not applied, by target kind.",
    );
    for target in ["dialog", "lead", "contact", "company", "customer"] {
        sample(
            o,
            name,
            &[("target", target)],
            m.not_applied.get(target).copied().unwrap_or(0),
        );
    }
    let name = "chatapp_kommo_sync_shadow_writes_total";
    family(
        o,
        name,
        "counter",
        "Writes shadow mode would have made and did not, by the API they were for (side chat or kommo).",
    );
    for side in ["chat", "kommo"] {
        sample(
            o,
            name,
            &[("side", side)],
            m.shadow_writes.get(side).copied().unwrap_or(0),
        );
    }
    let name = "chatapp_kommo_sync_parked_pairs";
    family(
        o,
        name,
        "gauge",
        "Pairs parked in the last good cycle, by reason.",
    );
    for (k, n) in &m.parked {
        sample(o, name, &[("reason", k)], n);
    }
    let name = "chatapp_kommo_sync_conflicts_total";
    family(o, name, "counter", "Conflicts resolved.");
    sample(o, name, &[], m.conflicts);
    let name = "chatapp_kommo_sync_quarantined_records";
    family(
        o,
        name,
        "gauge",
        "Records in quarantine (they did not fit their page) at the end of the last cycle.",
    );
    sample(o, name, &[], m.quarantined);
}

/// Per API: requests by status, retries, 429 answers, and whether the breaker is open.
fn render_api(o: &mut String, m: &Inner, now: i64) {
    let name = "chatapp_kommo_sync_api_requests_total";
    family(
        o,
        name,
        "counter",
        "API requests by api and HTTP status (0 = no response), retries included.",
    );
    for ((api, st), n) in &m.requests {
        sample(o, name, &[("api", api), ("status", &st.to_string())], n);
    }
    let name = "chatapp_kommo_sync_api_retries_total";
    family(o, name, "counter", "API request retries by api.");
    for (api, n) in &m.retries {
        sample(o, name, &[("api", api)], n);
    }
    let name = "chatapp_kommo_sync_rate_limited_total";
    family(o, name, "counter", "HTTP 429 answers by api.");
    for (api, n) in &m.too_many {
        sample(o, name, &[("api", api)], n);
    }
    let name = "chatapp_kommo_sync_api_breaker_open";
    family(
        o,
        name,
        "gauge",
        "1 while the API's breaker blocks calls (Kommo: an HTML 403 or repeated 403s, an IP/account block).",
    );
    for api in APIS {
        let open = m.blocked_until.get(api).is_some_and(|u| *u > now);
        sample(o, name, &[("api", api)], u8::from(open));
    }
}

/// The tokens: a Kommo pair only in memory, ChatApp refreshes and logins.
fn render_tokens(o: &mut String, m: &Inner) {
    let name = "chatapp_kommo_sync_kommo_token_unsaved";
    family(
        o,
        name,
        "gauge",
        "1 while a rotated Kommo OAuth pair lives only in memory (its store failed).",
    );
    sample(o, name, &[], u8::from(m.token_unsaved));
    let name = "chatapp_kommo_sync_token_refreshes_total";
    family(o, name, "counter", "ChatApp token refreshes.");
    sample(o, name, &[], m.refreshes);
    let name = "chatapp_kommo_sync_logins_total";
    family(o, name, "counter", "ChatApp logins.");
    sample(o, name, &[], m.logins);
}

/// Webhook registrations sent again by the daemon's check after a full cycle.
fn render_webhooks(o: &mut String, m: &Inner) {
    let name = "chatapp_kommo_sync_webhooks_reregistered_total";
    family(
        o,
        name,
        "counter",
        "Webhook registrations the daemon sent again after a full cycle (a hook Kommo disabled, a callback missing), by API.",
    );
    for api in APIS {
        let n = m.webhooks_reregistered.get(api).copied().unwrap_or(0);
        sample(o, name, &[("api", api)], n);
    }
}

/// The cycle-duration histogram: cumulative buckets, `+Inf`, sum and count.
fn render_duration(o: &mut String, m: &Inner) {
    let name = "chatapp_kommo_sync_cycle_duration_seconds";
    family(
        o,
        name,
        "histogram",
        "Cycle wall time (failed cycles included).",
    );
    let bucket = format!("{name}_bucket");
    for (b, n) in DURATION_BUCKETS.iter().zip(m.duration_buckets) {
        sample(o, &bucket, &[("le", &b.to_string())], n);
    }
    sample(o, &bucket, &[("le", "+Inf")], m.duration_count);
    sample(o, &format!("{name}_sum"), &[], m.duration_sum);
    sample(o, &format!("{name}_count"), &[], m.duration_count);
}

/// The interval between two poll cycles now (for `/readyz`).
fn poll_interval(cfg: &Config) -> Duration {
    let s = &cfg.daemon.poll_schedule;
    let now = chrono::Utc::now();
    match s
        .next_after(now)
        .and_then(|a| s.next_after(a).map(|b| (a, b)))
    {
        Some((a, b)) => (b - a).to_std().unwrap_or(Duration::from_secs(60)),
        None => Duration::from_secs(3600),
    }
}

/// Serves the endpoint on `addr` (`/readyz`'s window and the connection cap are taken from
/// `cfg`) within the bounds of [`crate::service::http_server`]; the metrics routes read no body.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Metrics,
    cfg: &Config,
    extra: Option<Router>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    metrics.configure(cfg);
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    m.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(m): State<Metrics>| async move {
                if m.ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no good cycle within 3 poll intervals\n",
                    )
                }
            }),
        )
        .with_state(metrics);
    let app = match extra {
        Some(routes) => app.merge(routes),
        None => app,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let limits = crate::service::http_server::Limits {
        max_connections: cfg.daemon.max_connections,
        ..Default::default()
    };
    Ok(crate::service::http_server::serve(listener, app, limits).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_by_the_difference_and_survive_a_new_syncer() {
        let (mut total, mut seen) = (0, 0);
        grow(&mut total, &mut seen, 5);
        grow(&mut total, &mut seen, 7);
        assert_eq!(total, 7);
        // a reload: the new syncer counts from zero
        seen = 0;
        grow(&mut total, &mut seen, 2);
        assert_eq!(total, 9);
        // a counter that went back without a reload never makes the total go back
        grow(&mut total, &mut seen, 1);
        assert_eq!(total, 9);
    }

    #[test]
    fn empty_exposition_declares_every_family() {
        let text = Metrics::new().render();
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP chatapp_kommo_sync_")
                    || line.starts_with("# TYPE chatapp_kommo_sync_")
                    || line.starts_with("chatapp_kommo_sync_"),
                "{line}"
            );
        }
        assert_eq!(
            text.matches("# HELP ").count(),
            text.matches("# TYPE ").count()
        );
        assert!(text.contains("chatapp_kommo_sync_cycle_duration_seconds_bucket{le=\"+Inf\"} 0"));
        assert!(text.contains("chatapp_kommo_sync_cycle_duration_seconds_bucket{le=\"0.1\"} 0"));
        assert!(text.contains(&format!(
            "chatapp_kommo_sync_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        for line in [
            "chatapp_kommo_sync_ready 0",
            "chatapp_kommo_sync_quarantined_records 0",
            "chatapp_kommo_sync_api_breaker_open{api=\"kommo\"} 0",
            "chatapp_kommo_sync_api_breaker_open{api=\"chatapp\"} 0",
            "chatapp_kommo_sync_kommo_token_unsaved 0",
            "chatapp_kommo_sync_shadow_writes_total{side=\"chat\"} 0",
            "chatapp_kommo_sync_shadow_writes_total{side=\"kommo\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn samples_escape_their_labels_and_errors_count_by_class() {
        let mut o = String::new();
        sample(&mut o, "x_total", &[("a", "q\""), ("b", "2")], 3);
        sample(&mut o, "y", &[], 1.5);
        assert_eq!(o, "x_total{a=\"q\\\"\",b=\"2\"} 3\ny 1.5\n");
        let m = Metrics::new();
        m.lock().observe_error(
            "incremental",
            &CycleError::Store(crate::store::StoreError::Closed("state.redb".into())),
        );
        let text = m.render();
        assert!(
            text.contains("chatapp_kommo_sync_cycle_errors_total{error=\"store\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "chatapp_kommo_sync_cycles_total{kind=\"incremental\",outcome=\"failed\"} 1\n"
        ));
    }
}
