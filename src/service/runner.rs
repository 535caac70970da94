//! `run`: the daemon. One [`Runner`] feeds one cycle at a time from every trigger (see
//! [`crate::service::triggers`]): cycles never overlap; triggers that arrive during a cycle are
//! coalesced into one follow-up (a due full cycle wins over an incremental one; webhook calls
//! wait for their own spaced cycle); a schedule time missed while a cycle ran is that follow-up,
//! not skipped. SIGHUP reloads the config between cycles (a bad one is rejected with its reason
//! logged, the old one kept). SIGTERM/SIGINT stop taking triggers; a cycle in flight ends before
//! its next write: if a write is on its way (its intent is recorded) it may finish for up to
//! [`STOP_GRACE`], otherwise the cycle is abandoned at once (writes it confirmed are recorded,
//! each with its base; the rest is decided again by the next cycle); then the runner returns. A
//! second signal stops at once (pending intents are settled by the next cycle, rule 11).
//!
//! The HTTP endpoint (`/healthz`, `/metrics`, `/readyz`, webhooks) is served from the start, before
//! the state db is opened and the credentials are checked; `/readyz` is false until a cycle
//! succeeds. READY=1 follows the start-up check ([`crate::service::startup`]).
//!
//! A failed cycle is logged at error level with its class. A state db error makes the runner
//! reopen the db at once; if it cannot, the daemon exits non-zero (systemd restarts it), except
//! while a rotated Kommo token lives only in memory: then it keeps running and reporting (log,
//! STATUS, `/readyz`, a metric), because exiting would lose the only valid token.

use crate::config::{self, Config, Loaded};
use crate::http::ApiError;
use crate::ports::ApiMeter;
use crate::service::metrics::Metrics;
use crate::service::notify::{Heartbeat, notify, one_line, outcome_text, reloading};
use crate::service::triggers::{
    Due, HookBudget, HookSpacing, MAX_SLEEP, Signals, Timers, sleep_until_opt, stop_signal, want,
};
use crate::service::webhooks::Hooks;
use crate::service::wiring::LiveSyncer;
use crate::store::{CycleKind, Store, StoreError};
use crate::sync::failure::{AfterFailure, Failed, after_failed_cycle};
use crate::sync::{CycleError, CycleOptions, CycleReport, Hint};
use chrono::Utc;
use sd_notify::NotifyState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stop may wait for a write in flight before dropping the cycle (intents make that
/// safe: the next cycle settles them). With the rest of the shutdown it stays under 10 s.
pub const STOP_GRACE: Duration = Duration::from_secs(7);

/// Why `run` ended other than by a stop signal (every one exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The HTTP endpoint could not listen.
    #[error("daemon.listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state db could not be opened (or reopened after an error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The clients could not be built, or the start-up check found wrong credentials.
    #[error("start-up check failed: {0}")]
    Start(#[from] ApiError),
}

/// Runs the daemon until a stop signal (`Ok`) or an error it cannot go on after. `shadow`
/// (`run --shadow`) makes every cycle a shadow one whatever the config says, reloads included.
pub async fn run(path: &Path, loaded: Loaded, shadow: bool) -> Result<(), RunError> {
    // Signals first: until registered, a SIGHUP or SIGUSR1 would kill the process.
    let mut sig = Signals::install().map_err(RunError::Signals)?;
    let metrics = Metrics::new();
    metrics.configure(&loaded.config);
    let hooks = loaded.secrets.webhook_token.clone().map(Hooks::new);
    let _server = serve(&loaded.config, &metrics, &hooks).await?;
    notify(&[NotifyState::Status("starting: opening the state db")]);
    let store = Arc::new(Store::open(&loaded.config.daemon.state_path)?);
    let started = Runner::start(
        path,
        loaded,
        store.clone(),
        metrics,
        hooks,
        &mut sig,
        shadow,
    )
    .await;
    let result = match started {
        Ok(Some(mut runner)) => runner.run(&mut sig).await,
        Ok(None) => Ok(()), // stopped during the start-up check
        Err(e) => Err(e),
    };
    match Arc::try_unwrap(store) {
        Ok(s) => {
            if let Err(e) = s.close() {
                tracing::error!(error = %e, "closing the state db");
            }
        }
        Err(_) => tracing::warn!("the state db is still in use at exit; not closed cleanly"),
    }
    tracing::info!("stopped");
    result
}

/// Serves the HTTP endpoint when `[daemon] listen` is set.
async fn serve(
    cfg: &Config,
    metrics: &Metrics,
    hooks: &Option<Arc<Hooks>>,
) -> Result<Option<tokio::task::JoinHandle<()>>, RunError> {
    let Some(addr) = cfg.daemon.listen else {
        return Ok(None);
    };
    let routes = hooks.clone().map(crate::service::webhooks::routes);
    crate::service::metrics::serve(addr, metrics.clone(), cfg, routes)
        .await
        .map(Some)
        .map_err(|source| RunError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// What the runner uses and does not change between cycles (but for a reload).
struct Context {
    path: PathBuf,
    config: Config,
    syncer: LiveSyncer,
    metrics: Metrics,
    hooks: Option<Arc<Hooks>>,
    hb: Arc<Heartbeat>,
    /// The idle loop beats at least this often (half the watchdog period).
    tick: Duration,
    /// `run --shadow`: every cycle is a shadow one, whatever the (reloaded) config says.
    shadow: bool,
}

/// How many times in a row a failed hint cycle's records are put back (see
/// [`Runner::hint_failed`]).
const MAX_HINT_RETRIES: u32 = 3;

/// What the runner changes: schedules, what is due, webhook pacing, the last outcome.
struct State {
    timers: Timers,
    due: Due,
    hook_spacing: HookSpacing,
    /// The share of each API's rate webhook-triggered cycles may use (from the config).
    hook_budget: HookBudget,
    last: Option<String>,
    stopping: bool,
    reload_after: bool,
    pinger: Option<tokio::task::JoinHandle<()>>,
    /// The webhook registrations were checked since the start (see [`Runner::recheck_webhooks`]).
    hooks_checked: bool,
    /// Hint cycles failed with no good cycle since (their records put back, see
    /// [`Runner::hint_failed`]).
    hints_failed: u32,
}

/// The daemon's loop: a context it uses, a state it changes.
pub struct Runner {
    ctx: Context,
    state: State,
}

impl Runner {
    /// Builds the syncer, checks the credentials (within the start-up check's time), sends
    /// READY=1 and starts the watchdog pinger. `None`: a stop signal came during the check.
    async fn start(
        path: &Path,
        loaded: Loaded,
        store: Arc<Store>,
        metrics: Metrics,
        hooks: Option<Arc<Hooks>>,
        sig: &mut Signals,
        shadow: bool,
    ) -> Result<Option<Runner>, RunError> {
        let syncer = LiveSyncer::live(&loaded, store)?;
        notify(&[NotifyState::Status(
            "starting: checking the credentials with Kommo and ChatApp",
        )]);
        tokio::select! {
            r = crate::service::startup::check_credentials(&syncer) => r?,
            _ = sig.stop() => {
                notify(&[NotifyState::Stopping]);
                return Ok(None);
            }
        }
        let config = loaded.config;
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        let hb = Arc::new(Heartbeat::new(config.daemon.cycle_budget));
        let ctx = Context {
            path: path.to_path_buf(),
            tick: watchdog
                .map(|d| d / 2)
                .unwrap_or(MAX_SLEEP)
                .clamp(Duration::from_millis(50), MAX_SLEEP),
            syncer,
            metrics,
            hooks,
            hb: hb.clone(),
            config,
            shadow,
        };
        let state = State {
            timers: Timers::new(&ctx.config, ctx.config.instance_name().as_deref()),
            due: None,
            hook_spacing: HookSpacing::default(),
            hook_budget: HookBudget::new(&ctx.config),
            last: None,
            stopping: false,
            reload_after: false,
            pinger: watchdog.map(|period| pinger(hb, period)),
            hooks_checked: false,
            hints_failed: 0,
        };
        let runner = Runner { ctx, state };
        notify(&[
            NotifyState::Ready,
            NotifyState::Status(&runner.idle_status()),
        ]);
        tracing::info!(
            config = %runner.ctx.path.display(),
            state = %runner.ctx.config.daemon.state_path.display(),
            watchdog = ?watchdog,
            "daemon ready; {}",
            runner.state.timers.next_text()
        );
        if shadow || runner.ctx.config.sync.mode == crate::config::SyncMode::Shadow {
            tracing::info!(
                "shadow mode: every cycle reads, decides and records, and writes nothing to Kommo or ChatApp; `status` shows what it would have written"
            );
        }
        Ok(Some(runner))
    }

    /// Runs until a stop signal, or a state db that cannot be opened again.
    async fn run(&mut self, sig: &mut Signals) -> Result<(), RunError> {
        let mut result = Ok(());
        while !self.state.stopping && result.is_ok() {
            result = match self.state.due.take() {
                None => {
                    self.idle(sig).await;
                    Ok(())
                }
                Some(kind) => self.cycle(kind, sig).await,
            };
        }
        self.begin_stop();
        result
    }

    /// Waits for the next trigger (or the next tick of the idle loop's heartbeat).
    async fn idle(&mut self, sig: &mut Signals) {
        let d = &self.ctx.config.daemon;
        let hook_due = self.state.hook_spacing.due(d.webhook_debounce);
        tokio::select! {
            _ = tokio::time::sleep(self.state.timers.wait().min(self.ctx.tick)) => {}
            _ = wait_hook(&self.ctx.hooks) => self.state.hook_spacing.called(),
            _ = sleep_until_opt(hook_due) => {
                tracing::debug!("webhook: cycle now");
                self.state.hook_spacing.start();
                want(&mut self.state.due, CycleKind::Hint);
            }
            _ = sig.usr1.recv() => {
                tracing::info!("SIGUSR1: cycle now");
                want(&mut self.state.due, CycleKind::Incremental);
            }
            _ = sig.hup.recv() => self.reload().await,
            s = stop_signal(&mut sig.term, &mut sig.int) => {
                tracing::info!("{s}: stopping");
                self.state.stopping = true;
            }
        }
        self.ctx.hb.beat();
        if let Some(k) = self.state.timers.fire(Utc::now()) {
            want(&mut self.state.due, k);
        }
    }

    /// What the waiting webhook calls ask for (taken from the hooks).
    fn take_hook_work(&self) -> HookWork {
        let Some(hooks) = &self.ctx.hooks else {
            return HookWork::Nothing;
        };
        let pending = hooks.take_pending();
        if pending.unnamed {
            tracing::info!(
                "webhook: the calls named nothing readable by id, or too much: an incremental cycle"
            );
            return HookWork::Incremental;
        }
        if pending.hint.is_empty() {
            // a wake-up whose calls an earlier hint cycle already took
            return HookWork::Nothing;
        }
        HookWork::Hint(pending.hint)
    }

    /// After a failed hint cycle: its records are put back for the next webhook cycle, after the
    /// pacing (so they wait for the next call, or the next cycle's follow-up, and a hint that keeps
    /// failing is not tried again in a loop); after [`MAX_HINT_RETRIES`] failed cycles with no good
    /// one between them they are left to the polled cycles, so one record whose read always fails
    /// cannot keep every later call's hint failing.
    fn hint_failed(&mut self, taken: Hint) {
        let Some(hooks) = &self.ctx.hooks else {
            return;
        };
        self.state.hints_failed += 1;
        if self.state.hints_failed > MAX_HINT_RETRIES {
            self.state.hints_failed = 0;
            tracing::warn!(
                records = taken.cards.len() + taken.dialogs.len(),
                "hint cycles failed {} times in a row: their records are left to the polled cycles",
                MAX_HINT_RETRIES + 1
            );
            return;
        }
        tracing::info!("the failed hint cycle's records wait for the next webhook cycle");
        hooks.put_back(taken);
    }

    /// The requests made so far to Kommo and ChatApp.
    fn requests(&self) -> (u64, u64) {
        let s = &self.ctx.syncer;
        (s.kommo.request_count(), s.chatapp.request_count())
    }

    /// After a cycle: a webhook-triggered one is charged its requests (the budget), and calls
    /// still waiting (they came during it, or it was not their hint) get their cycle.
    fn pace_hooks(&mut self, (k0, c0): (u64, u64)) {
        let (k1, c1) = self.requests();
        let State {
            hook_spacing,
            hook_budget,
            ..
        } = &mut self.state;
        hook_spacing.cycle_ended(hook_budget, k1.saturating_sub(k0), c1.saturating_sub(c0));
        if self.ctx.hooks.as_ref().is_some_and(|h| h.has_pending()) {
            self.state.hook_spacing.called();
        }
    }

    /// One cycle, then what follows it: metrics, STATUS=, a reload asked for meanwhile, and a
    /// reopen of the state db after a db error.
    async fn cycle(&mut self, kind: CycleKind, sig: &mut Signals) -> Result<(), RunError> {
        let (kind, hint) = match kind {
            CycleKind::Hint => match self.take_hook_work() {
                HookWork::Hint(h) => (kind, Some(h)),
                HookWork::Incremental => (CycleKind::Incremental, None),
                HookWork::Nothing => {
                    self.state.hook_spacing.forget_start();
                    return Ok(());
                }
            },
            // a schedule or a signal: not the hooks' cycle (their calls get their own after it)
            _ => {
                self.state.hook_spacing.forget_start();
                (kind, None)
            }
        };
        self.ctx.hb.cycle_started();
        self.ctx.metrics.cycle_started();
        notify(&[NotifyState::Status(&one_line(&format!(
            "running a {kind} cycle ({})",
            self.state
                .last
                .as_deref()
                .unwrap_or("the first since the start")
        )))]);
        let t0 = Instant::now();
        let before = self.requests();
        let taken = hint.clone();
        let result = self.drive(kind, hint, sig).await;
        self.ctx
            .hb
            .cycle_ended(matches!(result, Some(Ok(_)) | None));
        self.pace_hooks(before);
        match (&result, taken) {
            (Some(Err(_)), Some(taken)) => self.hint_failed(taken),
            // any good cycle ends a run of failed hints
            (Some(Ok(_)), _) => self.state.hints_failed = 0,
            _ => {}
        }
        if kind != CycleKind::Hint {
            return_freed_memory();
        }
        let mut after = AfterFailure::Continue;
        let good = matches!(result, Some(Ok(_)));
        if let Some(r) = result {
            self.ctx
                .metrics
                .observe_cycle(kind, t0.elapsed(), &r, &self.ctx.syncer);
            log_cycle(&r);
            self.state.last = Some(outcome_text(kind, &r, &self.ctx.config.daemon.timezone));
            if let Err(e) = &r {
                after = after_failed_cycle(Failed::Cycle(e), self.token_unsaved());
            }
        }
        if after == AfterFailure::ReopenStore {
            self.reopen_store()?;
        }
        if good && !self.state.stopping && (kind == CycleKind::Full || !self.state.hooks_checked) {
            self.recheck_webhooks(sig).await;
        }
        if self.state.stopping {
            return Ok(());
        }
        if std::mem::take(&mut self.state.reload_after) {
            self.reload().await;
        } else {
            notify(&[NotifyState::Status(&self.idle_status())]);
        }
        Ok(())
    }

    /// Drives the cycle's future while taking triggers (coalesced into one follow-up); `None`
    /// when a stop signal abandoned it.
    async fn drive(
        &mut self,
        kind: CycleKind,
        hint: Option<Hint>,
        sig: &mut Signals,
    ) -> Option<Result<CycleReport, CycleError>> {
        let Runner { ctx, state } = self;
        let syncer = &ctx.syncer;
        let opts = CycleOptions {
            kind,
            shadow: ctx.shadow,
            ..Default::default()
        };
        let cycle = async move {
            match &hint {
                Some(h) => syncer.run_hint(h, opts.shadow).await,
                None => syncer.run_cycle(opts).await,
            }
        };
        tokio::pin!(cycle);
        let stop = loop {
            tokio::select! {
                r = &mut cycle => return Some(r),
                _ = tokio::time::sleep(state.timers.wait()) => {
                    if let Some(k) = state.timers.fire(Utc::now()) {
                        tracing::debug!(kind = %k, "a schedule came due during the cycle: one follow-up queued");
                        want(&mut state.due, k);
                    }
                }
                _ = sig.usr1.recv() => {
                    tracing::info!("SIGUSR1 during a cycle: one follow-up cycle queued");
                    want(&mut state.due, CycleKind::Incremental);
                }
                _ = wait_hook(&ctx.hooks) => {
                    tracing::debug!("webhook during a cycle: one webhook cycle after it, paced by the webhook budget");
                    state.hook_spacing.called();
                }
                _ = sig.hup.recv() => {
                    tracing::info!("SIGHUP during a cycle: reloading after it");
                    state.reload_after = true;
                }
                s = stop_signal(&mut sig.term, &mut sig.int) => break s,
            }
        };
        tracing::info!("{stop} during a cycle: stopping");
        state.stopping = true;
        ctx.hb.stop();
        if let Some(p) = state.pinger.take() {
            p.abort();
        }
        ctx.syncer.stop.cancel();
        // The cycle future only moves when polled: while it waits here, nothing of it runs. A
        // recorded intent means a write may be on its way.
        let writing = ctx
            .syncer
            .store
            .intents()
            .map(|i| !i.is_empty())
            .unwrap_or(true);
        if !writing {
            tracing::info!(
                "stopping: no write in flight; the cycle is abandoned (the next one decides the rest again)"
            );
            return None;
        }
        tracing::info!(grace = ?STOP_GRACE, "stopping: letting the write in flight finish");
        tokio::select! {
            r = tokio::time::timeout(STOP_GRACE, &mut cycle) => r.ok().or_else(|| {
                tracing::warn!("stopping: the write in flight did not finish in time; the next cycle settles it");
                None
            }),
            _ = sig.stop() => {
                tracing::warn!("second stop signal: not waiting; the next cycle settles the write in flight");
                None
            }
        }
    }

    /// With webhooks and `[daemon] public_url`, after a good full cycle and after the first good
    /// cycle since the start (Kommo disables a hook whose deliveries failed while the daemon was
    /// down): checks the webhook registrations again ([`crate::service::webhooks::recheck`]); a
    /// stop signal ends it.
    async fn recheck_webhooks(&mut self, sig: &mut Signals) {
        let Runner { ctx, state } = self;
        let (Some(hooks), Some(base)) = (&ctx.hooks, &ctx.config.daemon.public_url) else {
            return;
        };
        let shadow = ctx.shadow || ctx.config.sync.mode == crate::config::SyncMode::Shadow;
        // the watchdog counts the check as part of the cycle (it is bounded by its own budget)
        ctx.hb.cycle_started();
        tokio::select! {
            r = crate::service::webhooks::recheck(&ctx.syncer, hooks, base, shadow, &ctx.metrics) => {
                state.hooks_checked |= r.is_some();
            }
            s = stop_signal(&mut sig.term, &mut sig.int) => {
                tracing::info!("{s} while checking the webhooks: stopping");
                state.stopping = true;
            }
        }
        ctx.hb.cycle_ended(true);
    }

    /// After a state db error: reopen the db. When that fails the daemon exits non-zero, unless
    /// a rotated Kommo token lives only in memory (exiting would lose it): then it goes on and
    /// reports ([`after_failed_cycle`] decides).
    fn reopen_store(&mut self) -> Result<(), RunError> {
        tracing::error!(class = "store", "state db error: reopening the state db");
        match self.ctx.syncer.store.reopen() {
            Ok(()) => {
                tracing::warn!(
                    "the state db was reopened; the next cycle starts from its last committed state"
                );
                Ok(())
            }
            Err(e) => match after_failed_cycle(Failed::Reopen, self.token_unsaved()) {
                AfterFailure::Exit => {
                    tracing::error!(error = %e, "the state db cannot be reopened: exiting (systemd restarts the daemon)");
                    Err(RunError::Store(e))
                }
                AfterFailure::Continue | AfterFailure::ReopenStore => {
                    tracing::error!(error = %e, "the state db cannot be reopened, and the rotated Kommo token lives only in memory: the daemon keeps running (exiting would lose the token); it retries every cycle");
                    Ok(())
                }
            },
        }
    }

    /// A rotated Kommo token lives only in memory (its store failed).
    fn token_unsaved(&self) -> bool {
        self.ctx.syncer.kommo.auth().unsaved()
    }

    /// Reloads and validates the config; on success the syncer is rebuilt on it (a rotated
    /// Kommo token that lives only in memory is carried over). READY=1 and STATUS= follow.
    async fn reload(&mut self) {
        reloading();
        let head = match self.try_reload().await {
            Ok(()) => {
                let cfg = &self.ctx.config;
                self.state.timers = Timers::new(cfg, cfg.instance_name().as_deref());
                self.ctx.metrics.configure(cfg);
                self.state.hook_budget = HookBudget::new(cfg);
                self.ctx.metrics.syncer_replaced();
                self.ctx.hb.set_budget(cfg.daemon.cycle_budget);
                tracing::info!(config = %self.ctx.path.display(), "config reloaded");
                "config reloaded".to_string()
            }
            Err(why) => {
                tracing::error!(config = %self.ctx.path.display(), "reload rejected, keeping the old config: {why}");
                format!("reload rejected, old config kept: {why}")
            }
        };
        let status = one_line(&format!("{head}; {}", self.idle_status()));
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    async fn try_reload(&mut self) -> Result<(), String> {
        let new =
            config::load(&self.ctx.path).map_err(|e| format!("the new config is invalid: {e}"))?;
        let old = &self.ctx.config;
        if new.config.daemon.state_path != old.daemon.state_path {
            return Err(
                "daemon.state_path cannot change while the daemon runs (restart it instead)".into(),
            );
        }
        for (key, changed) in [
            (
                "daemon.listen",
                new.config.daemon.listen != old.daemon.listen,
            ),
            (
                "daemon.log_level",
                new.config.daemon.log_level != old.daemon.log_level,
            ),
            (
                "daemon.max_connections",
                new.config.daemon.max_connections != old.daemon.max_connections,
            ),
        ] {
            if changed {
                tracing::warn!(key, "this setting takes effect at the next restart");
            }
        }
        let syncer =
            LiveSyncer::live(&new, self.ctx.syncer.store.clone()).map_err(|e| e.to_string())?;
        syncer
            .kommo
            .auth()
            .adopt_unsaved(self.ctx.syncer.kommo.auth())
            .await;
        self.ctx.syncer = syncer;
        self.ctx.config = new.config;
        Ok(())
    }

    /// STATUS= between cycles: the last outcome, a stored-token warning, the next cycle.
    fn idle_status(&self) -> String {
        let mut s = self
            .state
            .last
            .clone()
            .unwrap_or_else(|| "ready; no cycle yet".into());
        let unsaved = self.ctx.syncer.kommo.auth().unsaved();
        self.ctx.metrics.set_token_unsaved(unsaved);
        if unsaved {
            s = format!("ATTENTION: the rotated Kommo token is not stored yet (state db); {s}");
        }
        one_line(&format!("{s}; {}", self.state.timers.next_text()))
    }

    /// STOPPING=1 once, and no watchdog ping after it.
    fn begin_stop(&mut self) {
        self.ctx.hb.stop();
        if let Some(p) = self.state.pinger.take() {
            p.abort();
        }
    }
}

/// Pings the watchdog every half period while the heartbeat says the runner is alive.
fn pinger(hb: Arc<Heartbeat>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval((period / 2).max(Duration::from_millis(1)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if hb.alive(period) {
                hb.ping();
            } else {
                tracing::error!(
                    "the runner is stuck, or its cycles have all failed for a long time: withholding the watchdog ping (systemd restarts the unit)"
                );
            }
        }
    })
}

/// Gives the heap a cycle freed back to the system. glibc keeps freed memory for reuse, so
/// without this a daemon's resident size stays at its largest cycle's peak (at W, a shadow first
/// run's 235 MB, against the 38 MB its idle cycles need) for as long as it runs. Called after
/// every polled or full cycle (not after hint cycles: they allocate little); it costs a walk of
/// the heap's free lists, a few milliseconds at most.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the waiting webhook calls ask for.
enum HookWork {
    /// A hint cycle on the records they named.
    Hint(Hint),
    /// An incremental cycle: a call named nothing readable by id, or the calls named too much.
    Incremental,
    /// Nothing: an earlier cycle took their records.
    Nothing,
}

/// Waits for a webhook trigger; never completes without webhooks.
async fn wait_hook(hooks: &Option<Arc<Hooks>>) {
    match hooks {
        Some(h) => h.notified().await,
        None => std::future::pending().await,
    }
}

/// The log line of a finished cycle (a failure was logged by the cycle itself).
fn log_cycle(r: &Result<CycleReport, CycleError>) {
    if let Ok(rep) = r {
        tracing::info!(
            cycle = rep.record.id,
            kind = %rep.record.kind,
            outcome = %rep.record.outcome,
            written = rep.record.writes_done,
            planned = rep.record.writes_planned,
            parked = rep.record.parked,
            quarantined = rep.record.quarantined,
            ms = rep.record.duration_ms,
            "cycle done"
        );
    }
}
