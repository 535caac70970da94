//! The optional HTTP endpoint (`[daemon] listen`): `/metrics` in Prometheus text format,
//! `/healthz` (the process is alive) and `/readyz` (a good cycle within 3 poll intervals).
//! Written by hand: a dozen counters do not need a metrics framework. The server, its limits and
//! how these routes stay reachable under a flood are in [`crate::service::http_server`].

use crate::config::Config;
use crate::sync::{CycleError, CycleReport, LiveSyncer};
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
}

#[derive(Default)]
struct Seen {
    requests: BTreeMap<(&'static str, u16), u64>,
    too_many: BTreeMap<&'static str, u64>,
    retries: BTreeMap<&'static str, u64>,
    refreshes: u64,
    logins: u64,
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
    /// Empty metrics.
    pub fn new() -> Metrics {
        Metrics::default()
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
    pub fn configure(&self, cfg: &Config) {
        *self.ready_within.lock().unwrap_or_else(|e| e.into_inner()) =
            poll_interval(cfg) * 3 + cfg.daemon.cycle_budget.min(Duration::from_secs(60));
    }

    /// Records a finished cycle (`full` or incremental, its wall time and its result) and the
    /// clients' request counters.
    pub fn observe_cycle(
        &self,
        kind: crate::store::CycleKind,
        took: Duration,
        r: &Result<CycleReport, CycleError>,
        syncer: &LiveSyncer,
    ) {
        let mut m = self.lock();
        m.cycle_running = false;
        let kind = kind.as_str();
        match r {
            Ok(rep) => {
                *m.cycles
                    .entry((
                        rep.record.kind.as_str().to_string(),
                        rep.record.outcome.as_str().to_string(),
                    ))
                    .or_default() += 1;
                for (w, res) in rep.plan.writes.iter().zip(&rep.results) {
                    if *res == crate::sync::WriteResult::Done {
                        let kind = match &w.target {
                            crate::core::engine::Target::Card { id, .. } => {
                                id.kind.singular().to_string()
                            }
                            crate::core::engine::Target::Dialog { .. } => "dialog".to_string(),
                        };
                        *m.writes.entry(kind).or_default() += 1;
                    }
                    if *res == crate::sync::WriteResult::Shadowed {
                        let side = crate::sync::shadow::side(&w.target).as_str();
                        *m.shadow_writes.entry(side).or_default() += 1;
                    }
                }
                m.parked.clear();
                for p in &rep.plan.parked {
                    *m.parked.entry(p.reason.label().to_string()).or_default() += 1;
                }
                m.conflicts += rep.plan.conflicts.len() as u64;
                if matches!(
                    rep.record.outcome,
                    crate::store::Outcome::Ok | crate::store::Outcome::Shadow
                ) {
                    m.last_success_unix = Some(rep.record.finished_at);
                    m.last_success = Some(Instant::now());
                }
            }
            Err(e) => {
                *m.cycles.entry((kind.into(), "failed".into())).or_default() += 1;
                *m.errors.entry(e.label()).or_default() += 1;
            }
        }
        let secs = took.as_secs_f64();
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *b {
                m.duration_buckets[i] += 1;
            }
        }
        m.duration_sum += secs;
        m.duration_count += 1;
        let m = &mut *m;
        for (api, c) in [
            ("kommo", &syncer.kommo.api.counters),
            ("chatapp", &syncer.chatapp.api.counters),
        ] {
            for (status, n) in c.by_status() {
                grow(
                    m.requests.entry((api, status)).or_default(),
                    m.seen.requests.entry((api, status)).or_default(),
                    n,
                );
            }
            grow(
                m.too_many.entry(api).or_default(),
                m.seen.too_many.entry(api).or_default(),
                c.too_many.load(Ordering::Relaxed),
            );
            grow(
                m.retries.entry(api).or_default(),
                m.seen.retries.entry(api).or_default(),
                c.retries.load(Ordering::Relaxed),
            );
        }
        grow(
            &mut m.refreshes,
            &mut m.seen.refreshes,
            syncer.chatapp.refreshes.load(Ordering::Relaxed),
        );
        grow(
            &mut m.logins,
            &mut m.seen.logins,
            syncer.chatapp.logins.load(Ordering::Relaxed),
        );
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut o = String::new();
        fn family(o: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        family(
            &mut o,
            "chatapp_kommo_sync_cycles_total",
            "counter",
            "Cycles by kind (full, incremental) and outcome (ok, braked, failed).",
        );
        for ((k, out), n) in &m.cycles {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_cycles_total{{kind=\"{}\",outcome=\"{}\"}} {n}",
                esc(k),
                esc(out)
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_cycle_errors_total",
            "counter",
            "Failed cycles by error class.",
        );
        for (e, n) in &m.errors {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_cycle_errors_total{{error=\"{}\"}} {n}",
                esc(e)
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_cycle_running",
            "gauge",
            "1 while a cycle runs.",
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_cycle_running {}",
            u8::from(m.cycle_running)
        );
        family(
            &mut o,
            "chatapp_kommo_sync_last_success_timestamp_seconds",
            "gauge",
            "End of the last good cycle (unix seconds; 0 before the first).",
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_last_success_timestamp_seconds {}",
            m.last_success_unix.unwrap_or(0)
        );
        family(
            &mut o,
            "chatapp_kommo_sync_writes_total",
            "counter",
            "Confirmed writes by target kind.",
        );
        for (k, n) in &m.writes {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_writes_total{{target=\"{}\"}} {n}",
                esc(k)
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_shadow_writes_total",
            "counter",
            "Writes shadow mode would have made and did not, by the API they were for (side chat or kommo).",
        );
        for side in ["chat", "kommo"] {
            let n = m.shadow_writes.get(side).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_shadow_writes_total{{side=\"{side}\"}} {n}"
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_parked_pairs",
            "gauge",
            "Pairs parked in the last good cycle, by reason.",
        );
        for (k, n) in &m.parked {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_parked_pairs{{reason=\"{}\"}} {n}",
                esc(k)
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_conflicts_total",
            "counter",
            "Conflicts resolved.",
        );
        let _ = writeln!(o, "chatapp_kommo_sync_conflicts_total {}", m.conflicts);
        family(
            &mut o,
            "chatapp_kommo_sync_kommo_token_unsaved",
            "gauge",
            "1 while a rotated Kommo OAuth pair lives only in memory (its store failed).",
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_kommo_token_unsaved {}",
            u8::from(m.token_unsaved)
        );
        family(
            &mut o,
            "chatapp_kommo_sync_api_requests_total",
            "counter",
            "API requests by api and HTTP status (0 = no response), retries included.",
        );
        for ((api, st), n) in &m.requests {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_api_requests_total{{api=\"{api}\",status=\"{st}\"}} {n}"
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_api_retries_total",
            "counter",
            "API request retries by api.",
        );
        for (api, n) in &m.retries {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_api_retries_total{{api=\"{api}\"}} {n}"
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_rate_limited_total",
            "counter",
            "HTTP 429 answers by api.",
        );
        for (api, n) in &m.too_many {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_rate_limited_total{{api=\"{api}\"}} {n}"
            );
        }
        family(
            &mut o,
            "chatapp_kommo_sync_token_refreshes_total",
            "counter",
            "ChatApp token refreshes.",
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_token_refreshes_total {}",
            m.refreshes
        );
        family(
            &mut o,
            "chatapp_kommo_sync_logins_total",
            "counter",
            "ChatApp logins.",
        );
        let _ = writeln!(o, "chatapp_kommo_sync_logins_total {}", m.logins);
        family(
            &mut o,
            "chatapp_kommo_sync_cycle_duration_seconds",
            "histogram",
            "Cycle wall time (failed cycles included).",
        );
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_cycle_duration_seconds_bucket{{le=\"{b}\"}} {}",
                m.duration_buckets[i]
            );
        }
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_cycle_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            m.duration_count
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_cycle_duration_seconds_sum {}",
            m.duration_sum
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_cycle_duration_seconds_count {}",
            m.duration_count
        );
        o
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

/// The interval between two poll cycles now (for `/readyz`).
fn poll_interval(cfg: &Config) -> Duration {
    let s = crate::core::schedule::Schedule::parse(&cfg.daemon.poll_schedule, &cfg.daemon.timezone)
        .expect("validated");
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
    addr: &str,
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
        for side in ["chat", "kommo"] {
            let line = format!("chatapp_kommo_sync_shadow_writes_total{{side=\"{side}\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
