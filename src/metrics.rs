//! The optional HTTP endpoint (`[daemon] listen`): `/metrics` in Prometheus text format,
//! `/healthz` (the process is alive) and `/readyz` (a good cycle within 3 poll intervals).
//! Written by hand: a dozen counters do not need a metrics framework.

use crate::config::Config;
use crate::cycle::{CycleError, CycleReport, Syncer};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the cycle-duration histogram.
pub const DURATION_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

#[derive(Default)]
struct Inner {
    cycles: BTreeMap<(String, String), u64>,
    writes: BTreeMap<String, u64>,
    parked: BTreeMap<String, u64>,
    conflicts: u64,
    requests: BTreeMap<(&'static str, u16), u64>,
    too_many: BTreeMap<&'static str, u64>,
    refreshes: u64,
    logins: u64,
    last_success_unix: Option<i64>,
    last_success: Option<Instant>,
    duration_buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
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

    /// Records a finished cycle and the clients' request counters.
    pub fn observe_cycle(&self, r: &Result<CycleReport, CycleError>, syncer: &Syncer) {
        let mut m = self.inner.lock().expect("metrics");
        match r {
            Ok(rep) => {
                *m.cycles
                    .entry((rep.record.kind.clone(), rep.record.outcome.clone()))
                    .or_default() += 1;
                for (w, res) in rep.plan.writes.iter().zip(&rep.results) {
                    if *res == crate::cycle::WriteResult::Done {
                        let kind = match &w.target {
                            crate::model::RecordId::Card(c) => c.kind.singular().to_string(),
                            crate::model::RecordId::Dialog(_) => "dialog".to_string(),
                        };
                        *m.writes.entry(kind).or_default() += 1;
                    }
                }
                m.parked.clear();
                for p in &rep.plan.parked {
                    *m.parked.entry(p.reason.label().to_string()).or_default() += 1;
                }
                m.conflicts += rep.plan.conflicts.len() as u64;
                if rep.record.outcome == "ok" {
                    m.last_success_unix = Some(rep.record.finished_at);
                    m.last_success = Some(Instant::now());
                }
                let secs = rep.record.duration_ms as f64 / 1000.0;
                for (i, b) in DURATION_BUCKETS.iter().enumerate() {
                    if secs <= *b {
                        m.duration_buckets[i] += 1;
                    }
                }
                m.duration_sum += secs;
                m.duration_count += 1;
            }
            Err(e) => {
                *m.cycles
                    .entry(("any".into(), format!("failed_{}", e.label())))
                    .or_default() += 1;
            }
        }
        for (api, c) in [
            ("kommo", &syncer.kommo.api.counters),
            ("chatapp", &syncer.chatapp.api.counters),
        ] {
            for (status, n) in c.by_status() {
                m.requests.insert((api, status), n);
            }
            m.too_many
                .insert(api, c.too_many.load(std::sync::atomic::Ordering::Relaxed));
        }
        m.refreshes = syncer
            .chatapp
            .refreshes
            .load(std::sync::atomic::Ordering::Relaxed);
        m.logins = syncer
            .chatapp
            .logins
            .load(std::sync::atomic::Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.inner.lock().expect("metrics");
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_cycles_total Cycles by kind and outcome.\n# TYPE chatapp_kommo_sync_cycles_total counter"
        );
        for ((k, out), n) in &m.cycles {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_cycles_total{{kind=\"{k}\",outcome=\"{out}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_last_success_timestamp_seconds End of the last good cycle.\n# TYPE chatapp_kommo_sync_last_success_timestamp_seconds gauge"
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_last_success_timestamp_seconds {}",
            m.last_success_unix.unwrap_or(0)
        );
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_writes_total Confirmed writes by target kind.\n# TYPE chatapp_kommo_sync_writes_total counter"
        );
        for (k, n) in &m.writes {
            let _ = writeln!(o, "chatapp_kommo_sync_writes_total{{target=\"{k}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_parked_pairs Pairs parked in the last cycle, by reason.\n# TYPE chatapp_kommo_sync_parked_pairs gauge"
        );
        for (k, n) in &m.parked {
            let _ = writeln!(o, "chatapp_kommo_sync_parked_pairs{{reason=\"{k}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_conflicts_total Conflicts resolved.\n# TYPE chatapp_kommo_sync_conflicts_total counter"
        );
        let _ = writeln!(o, "chatapp_kommo_sync_conflicts_total {}", m.conflicts);
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_api_requests_total API requests by api and HTTP status (0 = no response).\n# TYPE chatapp_kommo_sync_api_requests_total counter"
        );
        for ((api, st), n) in &m.requests {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_api_requests_total{{api=\"{api}\",status=\"{st}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_rate_limited_total HTTP 429 answers by api.\n# TYPE chatapp_kommo_sync_rate_limited_total counter"
        );
        for (api, n) in &m.too_many {
            let _ = writeln!(
                o,
                "chatapp_kommo_sync_rate_limited_total{{api=\"{api}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_token_refreshes_total ChatApp token refreshes.\n# TYPE chatapp_kommo_sync_token_refreshes_total counter"
        );
        let _ = writeln!(
            o,
            "chatapp_kommo_sync_token_refreshes_total {}",
            m.refreshes
        );
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_logins_total ChatApp logins.\n# TYPE chatapp_kommo_sync_logins_total counter"
        );
        let _ = writeln!(o, "chatapp_kommo_sync_logins_total {}", m.logins);
        let _ = writeln!(
            o,
            "# HELP chatapp_kommo_sync_cycle_duration_seconds Cycle wall time.\n# TYPE chatapp_kommo_sync_cycle_duration_seconds histogram"
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

    fn ready(&self) -> bool {
        let within = *self.ready_within.lock().expect("metrics");
        self.inner
            .lock()
            .expect("metrics")
            .last_success
            .is_some_and(|t| t.elapsed() <= within)
    }
}

/// The interval between two poll cycles now (for `/readyz`).
fn poll_interval(cfg: &Config) -> Duration {
    let s = crate::schedule::Schedule::parse(&cfg.daemon.poll_schedule, &cfg.daemon.timezone)
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

/// Serves the endpoint on `addr`.
pub async fn serve(
    addr: &str,
    metrics: Metrics,
    cfg: &Config,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    *metrics.ready_within.lock().expect("metrics") =
        poll_interval(cfg) * 3 + cfg.daemon.cycle_budget.min(Duration::from_secs(60));
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move {
                ([("content-type", "text/plain; version=0.0.4")], m.render())
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}
