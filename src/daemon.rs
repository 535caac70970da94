//! `run`: the daemon. One runner loop feeds one cycle at a time from every trigger: the poll and
//! full cron schedules (croner, DST-correct in the configured time zone), SIGUSR1, and later
//! webhooks. Cycles never overlap; triggers that arrive during a cycle are coalesced into one
//! follow-up (a due full cycle wins over an incremental one). SIGHUP reloads the config between
//! cycles (a bad one is rejected, the old one kept); SIGTERM/SIGINT stop taking triggers, let the
//! write in flight finish, and exit 0. systemd: READY=1 once config, db and credentials are
//! checked, STATUS= with the last cycle's outcome, WATCHDOG=1 only while the runner makes progress,
//! RELOADING=1/READY=1 around a reload, STOPPING=1.

use crate::config::{self, Loaded};
use crate::cycle::{CycleOptions, Syncer};
use crate::schedule::Schedule;
use crate::store::Store;
use chrono::Utc;
use sd_notify::NotifyState;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

/// How long a stop may wait for the cycle in flight before dropping it (intents make that safe).
pub const STOP_GRACE: Duration = Duration::from_secs(7);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Checks credentials against the APIs (`check-config --online`).
pub async fn check_online(loaded: &Loaded) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("chatapp-kommo-sync-check-{}", std::process::id()));
    let state = if loaded.config.daemon.state_path.exists() {
        Store::open_read_only(&loaded.config.daemon.state_path).ok()
    } else {
        None
    };
    drop(state);
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(Store::open(&dir.join("check.redb"))?);
    let result = async {
        let syncer = Syncer::new(loaded, store.clone())?;
        let account = syncer.kommo.account().await?;
        let users = syncer.kommo.users().await?;
        println!(
            "kommo: account {} ok, token acts as user {}, {} users, list filters {}",
            account.id,
            account.current_user_id,
            users.len(),
            if account.is_api_filter_enabled.unwrap_or(false) {
                "enabled"
            } else {
                "not enabled (incremental reads use events and by-id reads)"
            }
        );
        let employees = syncer.chatapp.employees().await?;
        println!(
            "chatapp: login ok, {} employees in company {}",
            employees.len(),
            loaded.config.chatapp.company_id
        );
        anyhow::Ok(())
    }
    .await;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    result
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
    let rt = crate::cli::runtime();
    rt.block_on(run(path, loaded))
}

/// The runner's heartbeat: the watchdog pings only while it moves.
#[derive(Default)]
struct Heartbeat {
    started: Option<Instant>,
    /// Milliseconds since `started` of the runner's last sign of life.
    beat_ms: AtomicU64,
    /// Milliseconds since `started` at which the cycle in flight began; 0 when idle.
    cycle_ms: AtomicU64,
}

impl Heartbeat {
    fn now_ms(&self) -> u64 {
        self.started
            .map(|s| s.elapsed().as_millis() as u64)
            .unwrap_or(0)
            + 1
    }
    fn beat(&self) {
        self.beat_ms.store(self.now_ms(), Ordering::SeqCst);
    }
    /// Alive: the idle loop beat recently, or a cycle is running within its budget.
    fn alive(&self, period: Duration, budget: Duration) -> bool {
        let now = self.now_ms();
        let cycle = self.cycle_ms.load(Ordering::SeqCst);
        if cycle != 0 {
            return now.saturating_sub(cycle)
                < (budget + Duration::from_secs(60)).as_millis() as u64;
        }
        now.saturating_sub(self.beat_ms.load(Ordering::SeqCst)) < period.as_millis() as u64 * 2
    }
}

struct Schedules {
    poll: Schedule,
    full: Schedule,
}

fn schedules(cfg: &config::Config) -> Schedules {
    Schedules {
        poll: Schedule::parse(&cfg.daemon.poll_schedule, &cfg.daemon.timezone).expect("validated"),
        full: Schedule::parse(&cfg.daemon.full_schedule, &cfg.daemon.timezone).expect("validated"),
    }
}

fn until(t: Option<chrono::DateTime<Utc>>) -> Duration {
    t.and_then(|t| (t - Utc::now()).to_std().ok())
        .unwrap_or(Duration::from_secs(3600))
}

async fn run(path: &Path, loaded: Loaded) -> ExitCode {
    // Signals first: until registered, a SIGHUP would kill the process.
    let (mut term, mut int, mut hup, mut usr1) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            eprintln!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let store = match Store::open(&loaded.config.daemon.state_path) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the state db");
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut syncer = match Syncer::new(&loaded, store.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sched = schedules(&loaded.config);
    let mut config = loaded.config.clone();
    let metrics = crate::metrics::Metrics::new();
    let _server = match &config.daemon.listen {
        Some(addr) => match crate::metrics::serve(addr, metrics.clone(), &config).await {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("daemon.listen {addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    let hb = Arc::new(Heartbeat {
        started: Some(Instant::now()),
        ..Default::default()
    });
    hb.beat();
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_millis(100));
    if let Some(period) = watchdog {
        let hb = hb.clone();
        let budget = config.daemon.cycle_budget;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period / 2).await;
                if hb.alive(period, budget) {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!("the runner made no progress: withholding the watchdog ping");
                }
            }
        });
    }
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("ready; waiting for the first cycle"),
    ]);
    tracing::info!(config = %path.display(), state = %config.daemon.state_path.display(), "daemon ready");

    let mut next_poll = sched.poll.next_after(Utc::now());
    let mut next_full = sched.full.next_after(Utc::now());
    let mut pending: Option<bool> = None; // Some(full?) = a cycle is due
    let mut stopping = false;
    while !stopping {
        if pending.is_none() {
            let wait = until(next_poll).min(until(next_full));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let now = Utc::now();
                    if next_full.is_some_and(|t| t <= now) {
                        pending = Some(true);
                        next_full = sched.full.next_after(now);
                    }
                    if next_poll.is_some_and(|t| t <= now) {
                        pending = Some(pending.unwrap_or(false));
                        next_poll = sched.poll.next_after(now);
                    }
                }
                _ = tokio::time::sleep(tick) => hb.beat(),
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: cycle now");
                    pending = Some(false);
                }
                _ = hup.recv() => {
                    reload(path, &mut config, &mut syncer, &mut sched, &store);
                    next_poll = sched.poll.next_after(Utc::now());
                    next_full = sched.full.next_after(Utc::now());
                }
                _ = term.recv() => stopping = true,
                _ = int.recv() => stopping = true,
            }
            hb.beat();
            continue;
        }
        // run the due cycle; triggers meanwhile are coalesced into one follow-up
        let full = pending.take().unwrap_or(false);
        hb.cycle_ms.store(hb.now_ms(), Ordering::SeqCst);
        notify(&[NotifyState::Status(if full {
            "running a full cycle"
        } else {
            "running an incremental cycle"
        })]);
        let (result, reload_after) = {
            let cycle = syncer.run_cycle(CycleOptions {
                full,
                ..Default::default()
            });
            tokio::pin!(cycle);
            let mut reload_after = false;
            let result = loop {
                tokio::select! {
                    r = &mut cycle => break Some(r),
                    _ = usr1.recv() => {
                        tracing::info!("SIGUSR1 during a cycle: one follow-up cycle queued");
                        pending = Some(pending.unwrap_or(false));
                    }
                    _ = hup.recv() => reload_after = true,
                    _ = term.recv() => { stopping = true; syncer.stop.cancel(); break None; }
                    _ = int.recv() => { stopping = true; syncer.stop.cancel(); break None; }
                    _ = tokio::time::sleep(tick) => {
                        let now = Utc::now();
                        if next_full.is_some_and(|t| t <= now) {
                            pending = Some(true);
                            next_full = sched.full.next_after(now);
                        }
                        if next_poll.is_some_and(|t| t <= now) {
                            pending = Some(pending.unwrap_or(false));
                            next_poll = sched.poll.next_after(now);
                        }
                    }
                }
            };
            let result = match result {
                Some(r) => Some(r),
                None => {
                    tracing::info!("stopping: letting the write in flight finish");
                    notify(&[NotifyState::Stopping]);
                    tokio::time::timeout(STOP_GRACE, &mut cycle).await.ok()
                }
            };
            (result, reload_after)
        };
        hb.cycle_ms.store(0, Ordering::SeqCst);
        hb.beat();
        if let Some(r) = result {
            metrics.observe_cycle(&r, &syncer);
            let status = match &r {
                Ok(rep) => format!(
                    "last cycle #{} {} {} at {}: {} written, {} parked",
                    rep.record.id,
                    rep.record.kind,
                    rep.record.outcome,
                    Utc::now().format("%H:%M:%S UTC"),
                    rep.record.writes_done,
                    rep.record.parked
                ),
                Err(e) => format!(
                    "last cycle failed at {}: {}",
                    Utc::now().format("%H:%M:%S UTC"),
                    e.label()
                ),
            };
            notify(&[NotifyState::Status(&status)]);
        }
        if reload_after && !stopping {
            reload(path, &mut config, &mut syncer, &mut sched, &store);
        }
    }
    notify(&[NotifyState::Stopping]);
    tracing::info!("stopped");
    drop(syncer);
    if let Ok(s) = Arc::try_unwrap(store)
        && let Err(e) = s.close()
    {
        tracing::error!(error = %e, "closing the state db");
    }
    ExitCode::SUCCESS
}

fn reload(
    path: &Path,
    config: &mut config::Config,
    syncer: &mut Syncer,
    sched: &mut Schedules,
    store: &Arc<Store>,
) {
    let mono = NotifyState::monotonic_usec_now();
    match mono {
        Ok(m) => notify(&[NotifyState::Reloading, m]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
    match config::load(path) {
        Ok(new) if new.config.daemon.state_path != config.daemon.state_path => {
            tracing::error!(
                key = "daemon.state_path",
                "reload rejected: state_path cannot change while running; keeping the old config"
            );
        }
        Ok(new) => match Syncer::new(&new, store.clone()) {
            Ok(s) => {
                *syncer = s;
                *sched = schedules(&new.config);
                *config = new.config;
                tracing::info!("config reloaded");
            }
            Err(e) => tracing::error!(error = %e, "reload rejected; keeping the old config"),
        },
        Err(e) => {
            tracing::error!(error = %e, "reload rejected: the new config is invalid; keeping the old one")
        }
    }
    notify(&[NotifyState::Ready]);
}
