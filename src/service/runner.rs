//! `run`: the daemon. One runner loop feeds one cycle at a time from every trigger: the poll and
//! full cron schedules (croner, DST-correct in the configured time zone), SIGUSR1, and webhooks
//! (debounced, spaced by `webhook_min_interval`: `hook_due`). Cycles never overlap; triggers
//! that arrive during a cycle are coalesced into one follow-up (a due full cycle wins over an
//! incremental one; webhook calls wait for their own spaced cycle). A schedule time missed while a
//! cycle ran is that follow-up, not skipped. SIGHUP reloads the config between cycles (a bad one
//! is rejected with its reason logged, the old one kept). SIGTERM/SIGINT stop taking triggers;
//! a cycle in flight ends before its next write: if a write is on its way (its intent is
//! recorded) it may finish for up to [`STOP_GRACE`], otherwise the cycle is abandoned at once
//! (writes it confirmed are recorded, each with its base; the rest is decided again by the next
//! cycle, as after a failed one); then exit 0. A second signal stops at once (pending intents are
//! settled by the next cycle, rule 11).
//!
//! systemd (`Type=notify`): READY=1 once the config, the state db (and its lock) and the
//! credentials are checked with one call to each API (a rejected credential, an unknown company
//! or a wrong base URL fail the start with exit 1; an API that cannot be reached within
//! [`STARTUP_CHECK`] does not: it is logged and the cycles retry);
//! STATUS= with the last cycle's outcome and the next scheduled one; WATCHDOG=1 every
//! WATCHDOG_USEC/2 while the runner is alive: the idle loop beats at least that often, and a
//! cycle counts as progress until its `cycle_budget` (plus a minute) is spent; RELOADING=1
//! (with MONOTONIC_USEC) / READY=1 around a reload; STOPPING=1 once, when the stop begins.

use crate::config::{self, Loaded};
use crate::core::schedule::Schedule;
use crate::http::ApiError;
use crate::service::metrics::Metrics;
use crate::store::Store;
use crate::sync::{CycleError, CycleOptions, CycleReport, LiveSyncer};
use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long a stop may wait for a write in flight before dropping the cycle (intents make that
/// safe: the next cycle settles them). With the rest of the shutdown it stays under 10 s.
pub const STOP_GRACE: Duration = Duration::from_secs(7);
/// How long the start-up check of the credentials may take before the daemon starts anyway.
pub const STARTUP_CHECK: Duration = Duration::from_secs(20);
/// The longest idle sleep: the runner re-reads the wall clock at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long past its `cycle_budget` a cycle still counts as progress for the watchdog.
const CYCLE_SLACK: Duration = Duration::from_secs(60);
/// The longest STATUS= text (one line; systemd shows it in `systemctl status`).
const STATUS_MAX: usize = 240;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Registers the webhook URLs with both APIs (idempotent); returns one line per registration,
/// the token redacted.
pub async fn register_webhooks(
    kommo: &crate::kommo::KommoClient,
    chatapp: &crate::chatapp::ChatAppClient,
    cfg: &config::Config,
    base: &str,
    token: &secrecy::SecretString,
) -> Result<Vec<String>, ApiError> {
    use secrecy::ExposeSecret;
    let mut lines = vec![];
    let base = base.trim_end_matches('/');
    let kommo_url = format!("{base}/hooks/kommo/{}", token.expose_secret());
    let settings: Vec<String> = cfg
        .kinds()
        .iter()
        .map(|k| format!("responsible_{}", k.singular()))
        .collect();
    let created = kommo.register_webhook(&kommo_url, &settings).await?;
    lines.push(format!(
        "kommo: webhook {base}/hooks/kommo/<token> for {} {}",
        settings.join(", "),
        if created {
            "registered"
        } else {
            "already registered"
        }
    ));
    let chat_url = format!("{base}/hooks/chatapp/{}", token.expose_secret());
    let licenses = chatapp.licenses().await?;
    for (license, types) in licenses
        .into_iter()
        .filter(|(l, _)| cfg.chatapp.license_ids.contains(l))
    {
        for t in types {
            chatapp
                .set_callback(license, &t, &chat_url, &["chatResponsible", "message"])
                .await?;
            lines.push(format!(
                "chatapp: callback {base}/hooks/chatapp/<token> set for license {license} {t} (chatResponsible, message)"
            ));
        }
    }
    Ok(lines)
}

/// Entry point of `run`.
pub fn main(path: &Path) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(crate::cli::EXIT_CONFIG);
        }
    };
    crate::logging::init(&loaded.config.daemon.log_level, true);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let rt = crate::cli::runtime();
    rt.block_on(run(path, loaded))
}

/// The runner's heartbeat: the watchdog pings only while it moves.
struct Heartbeat {
    started: Instant,
    /// Milliseconds since `started` of the runner's last sign of life.
    beat_ms: AtomicU64,
    /// Milliseconds since `started` at which the cycle in flight began; 0 when idle.
    cycle_ms: AtomicU64,
    /// The cycle budget (it can change with a reload), milliseconds.
    budget_ms: AtomicU64,
    /// Set (under the lock that also covers each ping) when STOPPING=1 is sent: no ping after.
    stopped: std::sync::Mutex<bool>,
}

impl Heartbeat {
    fn new(budget: Duration) -> Heartbeat {
        let hb = Heartbeat {
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            cycle_ms: AtomicU64::new(0),
            budget_ms: AtomicU64::new(0),
            stopped: std::sync::Mutex::new(false),
        };
        hb.set_budget(budget);
        hb.beat();
        hb
    }
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
    fn set_budget(&self, budget: Duration) {
        self.budget_ms
            .store(budget.as_millis() as u64, Ordering::SeqCst);
    }
    fn beat(&self) {
        self.beat_ms.store(self.now_ms(), Ordering::SeqCst);
    }
    /// Sends WATCHDOG=1 unless the stop has begun.
    fn ping(&self) {
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if !*stopped {
            notify(&[NotifyState::Watchdog]);
        }
    }
    /// Sends STOPPING=1 the first time; no ping follows it.
    fn stop(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if !*stopped {
            *stopped = true;
            notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
    }
    fn cycle_started(&self) {
        self.cycle_ms.store(self.now_ms(), Ordering::SeqCst);
    }
    fn cycle_ended(&self) {
        self.cycle_ms.store(0, Ordering::SeqCst);
        self.beat();
    }
    /// Alive: the idle loop beat within `period` (it beats every `period / 2`), or a cycle is
    /// running and has not outlived its budget (its API calls give up at the budget).
    fn alive(&self, period: Duration) -> bool {
        let now = self.now_ms();
        let cycle = self.cycle_ms.load(Ordering::SeqCst);
        if cycle != 0 {
            let limit = self.budget_ms.load(Ordering::SeqCst) + CYCLE_SLACK.as_millis() as u64;
            return now.saturating_sub(cycle) < limit;
        }
        now.saturating_sub(self.beat_ms.load(Ordering::SeqCst)) < period.as_millis() as u64
    }
}

/// The schedules and their next due times.
struct Timers {
    poll: Schedule,
    full: Schedule,
    next_poll: Option<DateTime<Utc>>,
    next_full: Option<DateTime<Utc>>,
}

impl Timers {
    fn new(cfg: &config::Config) -> Timers {
        let poll = Schedule::parse(&cfg.daemon.poll_schedule, &cfg.daemon.timezone)
            .expect("validated by config::load");
        let full = Schedule::parse(&cfg.daemon.full_schedule, &cfg.daemon.timezone)
            .expect("validated by config::load");
        let now = Utc::now();
        Timers {
            next_poll: poll.next_after(now),
            next_full: full.next_after(now),
            poll,
            full,
        }
    }

    /// How long until the next due time: zero when one has passed (e.g. during a cycle), at
    /// most [`MAX_SLEEP`] (so a wall-clock jump is noticed).
    fn wait(&self) -> Duration {
        let now = Utc::now();
        [self.next_poll, self.next_full]
            .into_iter()
            .flatten()
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .min()
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP)
    }

    /// Takes the schedules due at `now`: `Some(true)` when a full cycle is due (it wins over an
    /// incremental one), `Some(false)` for an incremental one. Each fires once, however many of
    /// its times passed.
    fn fire(&mut self, now: DateTime<Utc>) -> Option<bool> {
        let mut due = None;
        if self.next_full.is_some_and(|t| t <= now) {
            due = Some(true);
            self.next_full = self.full.next_after(now);
        }
        if self.next_poll.is_some_and(|t| t <= now) {
            due = Some(due.unwrap_or(false));
            self.next_poll = self.poll.next_after(now);
        }
        due
    }

    /// "next incremental cycle at ..." for STATUS=.
    fn next_text(&self) -> String {
        let (kind, at) = match (self.next_poll, self.next_full) {
            (Some(p), Some(f)) if f <= p => ("full", f),
            (Some(p), _) => ("incremental", p),
            (None, Some(f)) => ("full", f),
            (None, None) => return "no scheduled cycle".into(),
        };
        format!("next {kind} cycle at {}", fmt_time(at))
    }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// One line, at most [`STATUS_MAX`] characters.
fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > STATUS_MAX {
        let cut: String = s.chars().take(STATUS_MAX - 3).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// A due cycle: `full` wins over incremental.
fn want(pending: &mut Option<bool>, full: bool) {
    *pending = Some(pending.unwrap_or(false) || full);
}

/// The outcome of a finished cycle, for STATUS= (starts with "last cycle").
fn outcome_text(full: bool, r: &Result<CycleReport, CycleError>) -> String {
    let at = fmt_time(Utc::now());
    match r {
        Ok(rep) => {
            let rec = &rep.record;
            let mut t = format!(
                "last cycle #{} {} {} at {at}: {} written",
                rec.id, rec.kind, rec.outcome, rec.writes_done
            );
            if rec.writes_failed > 0 {
                t.push_str(&format!(", {} not written", rec.writes_failed));
            }
            t.push_str(&format!(", {} parked", rec.parked));
            if let Some(why) = rep
                .brake
                .as_ref()
                .map(|b| b.to_string())
                .or(rec.error.clone())
            {
                t.push_str(&format!(" ({why})"));
            }
            t
        }
        Err(e) => format!(
            "last cycle {} failed at {at}: {e}",
            if full { "full" } else { "incremental" }
        ),
    }
}

/// The daemon's signals.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Whether an error of the start-up check means the credentials or the account settings are
/// wrong (the start fails) rather than that the API cannot be reached now (it is retried).
fn fatal_at_start(e: &ApiError) -> bool {
    match e {
        ApiError::Auth { .. } | ApiError::Decode { .. } => true,
        ApiError::Status { status, .. } => {
            (400..500).contains(status) && ![408, 429].contains(status)
        }
        ApiError::Transport { .. } | ApiError::Budget { .. } | ApiError::Blocked { .. } => false,
    }
}

/// Checks the credentials (Kommo's token with `GET /api/v4/account`, ChatApp's login or stored
/// token with the employee list) within [`STARTUP_CHECK`].
async fn check_credentials(syncer: &LiveSyncer) -> Result<(), ApiError> {
    let deadline = Some(Instant::now() + STARTUP_CHECK);
    syncer.kommo.api.set_deadline(deadline);
    syncer.chatapp.api.set_deadline(deadline);
    let r = async {
        syncer.kommo.filters_enabled().await?;
        syncer.chatapp.employees().await?;
        Ok(())
    }
    .await;
    syncer.kommo.api.set_deadline(None);
    syncer.chatapp.api.set_deadline(None);
    match r {
        Err(e) if !fatal_at_start(&e) => {
            tracing::warn!(error = %e, "could not check the credentials now; starting anyway (the cycles retry)");
            Ok(())
        }
        r => r,
    }
}

async fn run(path: &Path, loaded: Loaded) -> ExitCode {
    // Signals first: until registered, a SIGHUP or SIGUSR1 would kill the process.
    let mut sig = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    notify(&[NotifyState::Status("starting: opening the state db")]);
    let store = match Store::open(&loaded.config.daemon.state_path) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the state db");
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let code = run_with_store(path, loaded, &store, &mut sig).await;
    match Arc::try_unwrap(store) {
        Ok(s) => {
            if let Err(e) = s.close() {
                tracing::error!(error = %e, "closing the state db");
            }
        }
        Err(_) => tracing::warn!("the state db is still in use at exit; not closed cleanly"),
    }
    tracing::info!("stopped");
    code
}

/// Everything between opening and closing the state db.
/// Waits for a webhook trigger; never completes without webhooks.
async fn wait_hook(hooks: &Option<Arc<crate::service::webhooks::Hooks>>) {
    match hooks {
        Some(h) => h.notified().await,
        None => std::future::pending().await,
    }
}

/// When the webhook calls received since `since` (the first not yet answered) get their cycle:
/// `debounce` after that first call (calls meanwhile fold in), and no sooner than `min_interval`
/// after the end of the previous webhook-triggered cycle, so a flood of valid calls gives at most
/// one cycle per `min_interval` plus the cycle's own time. `None`: no call is waiting.
fn hook_due(
    since: Option<Instant>,
    last_hook_end: Option<Instant>,
    debounce: Duration,
    min_interval: Duration,
) -> Option<Instant> {
    let due = since? + debounce;
    Some(match last_hook_end {
        Some(end) => due.max(end + min_interval),
        None => due,
    })
}

/// Sleeps until `t`; never completes for `None`.
async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

async fn run_with_store(
    path: &Path,
    loaded: Loaded,
    store: &Arc<Store>,
    sig: &mut Signals,
) -> ExitCode {
    let mut syncer = match LiveSyncer::live(&loaded, store.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = loaded.config.clone();
    let metrics = Metrics::new();
    metrics.configure(&config);
    // Webhooks only wake the runner; the token guards their URLs (changing it needs a restart).
    let hooks = loaded
        .secrets
        .webhook_token
        .clone()
        .map(crate::service::webhooks::Hooks::new);
    // webhook spacing: the first call not yet answered by a webhook-triggered cycle, the end of
    // the last such cycle, and whether the cycle about to run (or running) is one
    let mut hook_since: Option<Instant> = None;
    let mut last_hook_end: Option<Instant> = None;
    let mut hook_cycle = false;
    let _server = match &config.daemon.listen {
        Some(addr) => match crate::service::metrics::serve(
            addr,
            metrics.clone(),
            &config,
            hooks.clone().map(crate::service::webhooks::routes),
        )
        .await
        {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(addr = %addr, error = %e, "cannot listen");
                eprintln!("daemon.listen {addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    notify(&[NotifyState::Status(
        "starting: checking the credentials with Kommo and ChatApp",
    )]);
    tokio::select! {
        r = check_credentials(&syncer) => if let Err(e) = r {
            tracing::error!(error = %e, "the start-up check failed");
            eprintln!("start-up check failed: {e}");
            return ExitCode::FAILURE;
        },
        _ = sig.term.recv() => {
            notify(&[NotifyState::Stopping]);
            return ExitCode::SUCCESS;
        }
        _ = sig.int.recv() => {
            notify(&[NotifyState::Stopping]);
            return ExitCode::SUCCESS;
        }
    }

    let hb = Arc::new(Heartbeat::new(config.daemon.cycle_budget));
    let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
    let mut timers = Timers::new(&config);
    let mut last: Option<String> = None;
    let idle_status = |last: &Option<String>, timers: &Timers| {
        one_line(&format!(
            "{}; {}",
            last.as_deref().unwrap_or("ready; no cycle yet"),
            timers.next_text()
        ))
    };
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&idle_status(&last, &timers)),
    ]);
    let mut pinger = watchdog.map(|period| {
        let hb = hb.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval((period / 2).max(Duration::from_millis(1)));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if hb.alive(period) {
                    hb.ping();
                } else {
                    tracing::error!("the runner made no progress: withholding the watchdog ping");
                }
            }
        })
    });
    // the idle loop beats at least every half watchdog period
    let tick = watchdog
        .map(|d| d / 2)
        .unwrap_or(MAX_SLEEP)
        .clamp(Duration::from_millis(50), MAX_SLEEP);
    tracing::info!(
        config = %path.display(),
        state = %config.daemon.state_path.display(),
        watchdog = ?watchdog,
        "daemon ready; {}",
        timers.next_text()
    );
    // STOPPING=1 once, and no watchdog ping after it
    let begin_stop = |pinger: &mut Option<tokio::task::JoinHandle<()>>| {
        hb.stop();
        if let Some(p) = pinger.take() {
            p.abort();
        }
    };

    let mut pending: Option<bool> = None; // Some(full?) = a cycle is due
    let mut stopping = false;
    while !stopping {
        let Some(full) = pending.take() else {
            tokio::select! {
                _ = tokio::time::sleep(timers.wait().min(tick)) => {}
                _ = wait_hook(&hooks) => {
                    hook_since.get_or_insert_with(Instant::now);
                }
                _ = sleep_until_opt(hook_due(
                    hook_since,
                    last_hook_end,
                    config.daemon.webhook_debounce,
                    config.daemon.webhook_min_interval,
                )) => {
                    tracing::info!("webhook: cycle now");
                    hook_since = None;
                    hook_cycle = true;
                    want(&mut pending, false);
                }
                _ = sig.usr1.recv() => {
                    tracing::info!("SIGUSR1: cycle now");
                    want(&mut pending, false);
                }
                _ = sig.hup.recv() => {
                    let r = reload(path, &mut config, &mut syncer, store);
                    after_reload(r, &config, &mut timers, &metrics, &hb, &last, idle_status);
                }
                _ = sig.term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    stopping = true;
                }
                _ = sig.int.recv() => {
                    tracing::info!("SIGINT: stopping");
                    stopping = true;
                }
            }
            hb.beat();
            if let Some(full) = timers.fire(Utc::now()) {
                want(&mut pending, full);
            }
            continue;
        };

        // one cycle; triggers meanwhile are coalesced into one follow-up
        hb.cycle_started();
        metrics.cycle_started();
        // an incremental request on an empty state db runs the full bootstrap cycle
        notify(&[NotifyState::Status(&one_line(&format!(
            "running a {}cycle ({})",
            if full { "full " } else { "" },
            last.as_deref().unwrap_or("the first since the start")
        )))]);
        let t0 = Instant::now();
        let mut reload_after = false;
        let result = {
            let cycle = syncer.run_cycle(CycleOptions {
                full,
                ..Default::default()
            });
            tokio::pin!(cycle);
            let done = loop {
                tokio::select! {
                    r = &mut cycle => break Some(r),
                    _ = tokio::time::sleep(timers.wait()) => {
                        if let Some(f) = timers.fire(Utc::now()) {
                            tracing::debug!(full = f, "a schedule came due during the cycle: one follow-up queued");
                            want(&mut pending, f);
                        }
                    }
                    _ = sig.usr1.recv() => {
                        tracing::info!("SIGUSR1 during a cycle: one follow-up cycle queued");
                        want(&mut pending, false);
                    }
                    _ = wait_hook(&hooks) => {
                        tracing::debug!("webhook during a cycle: one webhook cycle after it, spaced by webhook_min_interval");
                        hook_since.get_or_insert_with(Instant::now);
                    }
                    _ = sig.hup.recv() => {
                        tracing::info!("SIGHUP during a cycle: reloading after it");
                        reload_after = true;
                    }
                    _ = sig.term.recv() => {
                        tracing::info!("SIGTERM during a cycle: stopping");
                        stopping = true;
                        break None;
                    }
                    _ = sig.int.recv() => {
                        tracing::info!("SIGINT during a cycle: stopping");
                        stopping = true;
                        break None;
                    }
                }
            };
            match done {
                Some(r) => Some(r),
                None => {
                    begin_stop(&mut pinger);
                    syncer.stop.cancel();
                    // The cycle future only moves when polled: while it waits here, nothing of
                    // it runs. A recorded intent means a write may be on its way.
                    let writing = store.intents().map(|i| !i.is_empty()).unwrap_or(true);
                    if writing {
                        tracing::info!(grace = ?STOP_GRACE, "stopping: letting the write in flight finish");
                        tokio::select! {
                            r = tokio::time::timeout(STOP_GRACE, &mut cycle) => match r {
                                Ok(r) => Some(r),
                                Err(_) => {
                                    tracing::warn!("stopping: the write in flight did not finish in time; the next cycle settles it");
                                    None
                                }
                            },
                            _ = sig.term.recv() => {
                                tracing::warn!("second stop signal: not waiting; the next cycle settles the write in flight");
                                None
                            }
                            _ = sig.int.recv() => {
                                tracing::warn!("second stop signal: not waiting; the next cycle settles the write in flight");
                                None
                            }
                        }
                    } else {
                        tracing::info!(
                            "stopping: no write in flight; the cycle is abandoned (the next one decides the rest again)"
                        );
                        None
                    }
                }
            }
        };
        hb.cycle_ended();
        if std::mem::take(&mut hook_cycle) {
            last_hook_end = Some(Instant::now());
        }
        if let Some(r) = result {
            metrics.observe_cycle(full, t0.elapsed(), &r, &syncer);
            if let Ok(rep) = &r {
                tracing::info!(
                    cycle = rep.record.id,
                    kind = %rep.record.kind,
                    outcome = %rep.record.outcome,
                    written = rep.record.writes_done,
                    parked = rep.record.parked,
                    ms = rep.record.duration_ms,
                    "cycle done"
                );
            }
            last = Some(outcome_text(full, &r));
        }
        if stopping {
            break;
        }
        if reload_after {
            let r = reload(path, &mut config, &mut syncer, store);
            after_reload(r, &config, &mut timers, &metrics, &hb, &last, idle_status);
        } else {
            notify(&[NotifyState::Status(&idle_status(&last, &timers))]);
        }
    }
    begin_stop(&mut pinger);
    ExitCode::SUCCESS
}

/// After a reload attempt: new timers and metrics settings if it took, READY=1 and STATUS=.
fn after_reload(
    r: Result<(), String>,
    config: &config::Config,
    timers: &mut Timers,
    metrics: &Metrics,
    hb: &Heartbeat,
    last: &Option<String>,
    idle_status: impl Fn(&Option<String>, &Timers) -> String,
) {
    let head = match r {
        Ok(()) => {
            *timers = Timers::new(config);
            metrics.configure(config);
            metrics.syncer_replaced();
            hb.set_budget(config.daemon.cycle_budget);
            "config reloaded".to_string()
        }
        Err(why) => format!("reload rejected, old config kept: {why}"),
    };
    let status = one_line(&format!("{head}; {}", idle_status(last, timers)));
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Reloads and validates the config; on success the syncer is rebuilt on it. On failure the
/// old config stays and the reason is returned (and logged).
fn reload(
    path: &Path,
    config: &mut config::Config,
    syncer: &mut LiveSyncer,
    store: &Arc<Store>,
) -> Result<(), String> {
    match NotifyState::monotonic_usec_now() {
        Ok(m) => notify(&[NotifyState::Reloading, m]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
    let r = match config::load(path) {
        Err(e) => Err(format!("the new config is invalid: {e}")),
        Ok(new) if new.config.daemon.state_path != config.daemon.state_path => {
            Err("daemon.state_path cannot change while the daemon runs (restart it instead)".into())
        }
        Ok(new) => match LiveSyncer::live(&new, store.clone()) {
            Err(e) => Err(e.to_string()),
            Ok(s) => {
                if new.config.daemon.listen != config.daemon.listen {
                    tracing::warn!(
                        key = "daemon.listen",
                        "a new listen address takes effect at the next restart"
                    );
                }
                if new.config.daemon.log_level != config.daemon.log_level {
                    tracing::warn!(
                        key = "daemon.log_level",
                        "a new log level takes effect at the next restart"
                    );
                }
                *syncer = s;
                *config = new.config;
                Ok(())
            }
        },
    };
    match &r {
        Ok(()) => tracing::info!(config = %path.display(), "config reloaded"),
        Err(why) => {
            tracing::error!(config = %path.display(), "reload rejected, keeping the old config: {why}")
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn timers(poll: &str, full: &str, tz: &str, now: DateTime<Utc>) -> Timers {
        let poll = Schedule::parse(poll, tz).unwrap();
        let full = Schedule::parse(full, tz).unwrap();
        Timers {
            next_poll: poll.next_after(now),
            next_full: full.next_after(now),
            poll,
            full,
        }
    }

    #[test]
    fn a_due_full_cycle_wins_and_missed_times_fire_once() {
        let t0 = utc("2026-03-29T00:59:50Z");
        let mut t = timers("*/30 * * * * *", "0 0 3 * * *", "UTC", t0);
        assert_eq!(t.fire(t0), None);
        assert_eq!(t.fire(utc("2026-03-29T00:59:59Z")), None);
        // a long cycle: many poll times passed; one incremental follow-up, next time after now
        let late = utc("2026-03-29T01:05:07Z");
        assert_eq!(t.fire(late), Some(false));
        assert_eq!(t.next_poll, Some(utc("2026-03-29T01:05:30Z")));
        assert_eq!(t.fire(late), None, "fired once");
        // 03:00 Berlin on the DST day is 01:00 UTC (CEST, +2): passed together with a poll time
        let mut t = timers("*/30 * * * * *", "0 0 3 * * *", "Europe/Berlin", t0);
        assert_eq!(t.next_full, Some(utc("2026-03-29T01:00:00Z")));
        assert_eq!(t.fire(utc("2026-03-29T01:00:00Z")), Some(true), "full wins");
        let mut p = None;
        want(&mut p, true);
        want(&mut p, false);
        assert_eq!(
            p,
            Some(true),
            "an incremental trigger does not downgrade a due full cycle"
        );
        let mut p = None;
        want(&mut p, false);
        want(&mut p, false);
        assert_eq!(p, Some(false));
    }

    #[test]
    fn webhook_cycles_are_debounced_and_spaced() {
        let t0 = Instant::now();
        let s = |n: u64| Duration::from_secs(n);
        let ms = Duration::from_millis(500);
        assert_eq!(hook_due(None, Some(t0), ms, s(30)), None, "no call waiting");
        assert_eq!(
            hook_due(Some(t0), None, ms, s(30)),
            Some(t0 + ms),
            "first: debounce only"
        );
        // the last webhook cycle ended 10 s before the call: due 30 s after that end
        let end = t0;
        let call = t0 + s(10);
        assert_eq!(
            hook_due(Some(call), Some(end), ms, s(30)),
            Some(end + s(30))
        );
        // long after it: the debounce again
        let call = t0 + s(100);
        assert_eq!(hook_due(Some(call), Some(end), ms, s(30)), Some(call + ms));
        assert_eq!(
            hook_due(Some(t0 + s(1)), Some(end), ms, Duration::ZERO),
            Some(t0 + s(1) + ms),
            "0s: no spacing"
        );
    }

    #[test]
    fn wait_is_zero_for_a_passed_time_and_bounded() {
        let now = Utc::now();
        let mut t = timers("0 0 0 1 1 *", "0 0 0 1 1 *", "UTC", now);
        assert_eq!(
            t.wait(),
            MAX_SLEEP,
            "a far time is re-checked within MAX_SLEEP"
        );
        t.next_poll = Some(now - chrono::Duration::seconds(5));
        assert_eq!(
            t.wait(),
            Duration::ZERO,
            "a passed time is due now, not in an hour"
        );
        t.next_poll = None;
        t.next_full = None;
        assert_eq!(t.wait(), MAX_SLEEP);
        assert_eq!(t.next_text(), "no scheduled cycle");
    }

    #[test]
    fn heartbeat_idle_and_cycle() {
        let period = Duration::from_secs(2);
        let hb = Heartbeat::new(Duration::from_secs(600));
        assert!(hb.alive(period));
        // idle: the last beat is older than the period
        hb.beat_ms.store(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        assert!(hb.alive(Duration::from_secs(60)));
        assert!(
            !hb.alive(Duration::from_millis(2)),
            "a silent idle loop is not alive"
        );
        // a cycle within its budget is progress, however long since the last beat
        hb.cycle_started();
        assert!(hb.alive(Duration::from_millis(2)));
        // past budget + slack it is not
        let hb2 = Heartbeat {
            started: Instant::now() - CYCLE_SLACK - Duration::from_secs(1),
            beat_ms: AtomicU64::new(0),
            cycle_ms: AtomicU64::new(1),
            budget_ms: AtomicU64::new(0),
            stopped: std::sync::Mutex::new(false),
        };
        assert!(!hb2.alive(period), "a cycle past its budget is stuck");
        hb2.cycle_ended();
        assert!(hb2.alive(period), "the end of a cycle is a beat");
    }

    #[test]
    fn status_text_is_one_bounded_line() {
        let s = one_line(&format!("a\nb\r{}", "x".repeat(1000)));
        assert!(!s.contains('\n') && !s.contains('\r'));
        assert_eq!(s.chars().count(), STATUS_MAX);
        assert!(s.ends_with("..."));
        assert_eq!(one_line("short"), "short");
    }

    #[test]
    fn only_rejections_fail_the_start() {
        let status = |status| ApiError::Status {
            api: "kommo",
            endpoint: "GET /api/v4/account".into(),
            status,
            body: String::new(),
        };
        assert!(fatal_at_start(&ApiError::Auth {
            api: "kommo",
            reason: "401".into()
        }));
        assert!(fatal_at_start(&status(404)));
        assert!(!fatal_at_start(&status(429)));
        assert!(!fatal_at_start(&status(503)));
        assert!(!fatal_at_start(&ApiError::Transport {
            api: "chatapp",
            endpoint: "POST /v1/tokens".into(),
            attempts: 3,
            reason: "connection refused".into()
        }));
    }
}
