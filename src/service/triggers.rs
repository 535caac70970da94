//! What makes a cycle due: the poll and full cron schedules (croner, DST-correct in the configured
//! time zone, spread per instance), SIGUSR1, and webhook calls (debounced, paced by a budget). Triggers
//! are coalesced: at most one cycle is due at a time, and a due full cycle wins over an
//! incremental one.

use crate::config::Config;
use crate::core::schedule::{Schedule, spread_offset};
use crate::service::notify::fmt_time;
use crate::store::CycleKind;
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The longest idle sleep: the runner re-reads the wall clock at least this often.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);
/// The most a full cycle's schedule is spread (a daily 03:00 run is not spread over a day).
pub const MAX_FULL_SPREAD: Duration = Duration::from_secs(600);

/// The cycle that is due, if any.
pub type Due = Option<CycleKind>;

/// Adds a trigger to what is due: the cycle that reads more wins (a full cycle over an
/// incremental one, an incremental one over a hint; the hint's records are then read by their own
/// hint cycle after it: see `Runner::cycle`).
pub fn want(due: &mut Due, kind: CycleKind) {
    *due = Some(match *due {
        Some(d) if d.reach() >= kind.reach() => d,
        _ => kind,
    });
}

/// The schedules and their next due times.
pub struct Timers {
    poll: Schedule,
    full: Schedule,
    next_poll: Option<DateTime<Utc>>,
    next_full: Option<DateTime<Utc>>,
    /// The schedules' time zone (times in STATUS= are shown in it).
    timezone: chrono_tz::Tz,
}

impl Timers {
    /// The config's schedules, spread by `instance` (see [`spread_offset`]) when it is given: many
    /// instances on one machine then do not poll in the same second.
    pub fn new(cfg: &Config, instance: Option<&str>) -> Timers {
        let (mut poll, mut full) = (
            cfg.daemon.poll_schedule.clone(),
            cfg.daemon.full_schedule.clone(),
        );
        let now = Utc::now();
        if let Some(name) = instance {
            let every = |s: &Schedule| s.interval_after(now).unwrap_or(Duration::ZERO);
            let poll_spread = spread_offset(name, every(&poll));
            let full_spread = spread_offset(name, every(&full).min(MAX_FULL_SPREAD));
            poll = poll.with_offset(poll_spread);
            full = full.with_offset(full_spread);
            tracing::info!(
                instance = name,
                poll_offset_s = poll_spread.as_secs(),
                full_offset_s = full_spread.as_secs(),
                "schedules spread for this instance"
            );
        }
        Timers {
            next_poll: poll.next_after(now),
            next_full: full.next_after(now),
            poll,
            full,
            timezone: cfg.daemon.timezone,
        }
    }

    /// How long until the next due time: zero when one has passed (e.g. during a cycle), at most
    /// [`MAX_SLEEP`] (so a wall-clock jump is noticed).
    pub fn wait(&self) -> Duration {
        let now = Utc::now();
        [self.next_poll, self.next_full]
            .into_iter()
            .flatten()
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .min()
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP)
    }

    /// Takes the schedules due at `now` (a full one wins). Each fires once, however many of its
    /// times passed.
    pub fn fire(&mut self, now: DateTime<Utc>) -> Due {
        let mut due = None;
        if self.next_full.is_some_and(|t| t <= now) {
            want(&mut due, CycleKind::Full);
            self.next_full = self.full.next_after(now);
        }
        if self.next_poll.is_some_and(|t| t <= now) {
            want(&mut due, CycleKind::Incremental);
            self.next_poll = self.poll.next_after(now);
        }
        due
    }

    /// "next incremental cycle at ..." for STATUS=.
    pub fn next_text(&self) -> String {
        let (kind, at) = match (self.next_poll, self.next_full) {
            (Some(p), Some(f)) if f <= p => ("full", f),
            (Some(p), _) => ("incremental", p),
            (None, Some(f)) => ("full", f),
            (None, None) => return "no scheduled cycle".into(),
        };
        format!("next {kind} cycle at {}", fmt_time(at, &self.timezone))
    }
}

/// Webhook calls become cycles debounced and paced by a budget (SPEC 6.2): a cycle `debounce`
/// after the first waiting call (calls meanwhile fold in), and no sooner than the budget allows.
/// The budget is a virtual clock (GCRA, the algorithm of `governor`): each webhook-triggered
/// cycle moves it on by the time its requests take at the budget's rate
/// ([`HookBudget::cost`]), counted from the cycle's start; the next may start once the clock is
/// at most [`HookBudget::burst`] ahead of now. So a change after a quiet spell is answered at
/// once, and a flood of valid calls costs at most the budget's share of each API's rate (over any
/// span T: rate x (T + burst), plus one cycle's own requests). A call during a cycle is not lost:
/// it waits for its own cycle.
#[derive(Debug, Default, Clone, Copy)]
pub struct HookSpacing {
    /// The first call not yet answered by a webhook-triggered cycle.
    since: Option<Instant>,
    /// The budget's virtual clock: when the requests of the webhook cycles so far are paid for.
    paid_until: Option<Instant>,
    /// The earliest start of the next webhook-triggered cycle.
    not_before: Option<Instant>,
    /// When the webhook-triggered cycle about to run (or running) started.
    started: Option<Instant>,
}

impl HookSpacing {
    /// A call arrived.
    pub fn called(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// When the waiting calls get their cycle; `None`: no call is waiting.
    pub fn due(&self, debounce: Duration) -> Option<Instant> {
        hook_due(self.since, self.not_before, debounce)
    }

    /// Their cycle starts now.
    pub fn start(&mut self) {
        self.since = None;
        self.started = Some(Instant::now());
    }

    /// The cycle about to run is not the hooks' after all (a schedule or a signal made it; or
    /// there was nothing to do): it is not charged to the budget.
    pub fn forget_start(&mut self) {
        self.started = None;
    }

    /// A cycle ended; a webhook-triggered one is charged what its requests cost (see
    /// [`HookBudget`]) and sets the earliest start of the next.
    pub fn cycle_ended(&mut self, budget: &HookBudget, kommo: u64, chatapp: u64) {
        if let Some(started) = self.started.take() {
            let (paid, next) = budget.charge(self.paid_until, started, kommo, chatapp);
            self.paid_until = Some(paid);
            self.not_before = Some(next.max(Instant::now() + budget.min_pause));
        }
    }
}

/// See [`HookSpacing`].
fn hook_due(
    since: Option<Instant>,
    not_before: Option<Instant>,
    debounce: Duration,
) -> Option<Instant> {
    let due = since? + debounce;
    Some(not_before.map_or(due, |t| due.max(t)))
}

/// The share of each API's rate that webhook-triggered cycles may use (`[daemon]
/// webhook_budget_percent` of `requests_per_second`), the burst it allows after a quiet spell,
/// and the least pause between them (`webhook_min_interval`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HookBudget {
    /// Kommo requests a second the budget allows.
    pub kommo_rps: f64,
    /// ChatApp requests a second the budget allows.
    pub chatapp_rps: f64,
    /// How far ahead of now the virtual clock may run before the next cycle waits.
    pub burst: Duration,
    /// The least pause after a webhook-triggered cycle, whatever its cost.
    pub min_pause: Duration,
}

/// The burst the budget allows: two seconds of it (at Kommo's default rate and share, 3 Kommo
/// requests: a card hint and its write go at once after a quiet spell).
pub const HOOK_BURST: Duration = Duration::from_secs(2);

impl HookBudget {
    /// The config's budget.
    pub fn new(cfg: &Config) -> HookBudget {
        let share = f64::from(cfg.daemon.webhook_budget_percent.clamp(1, 100)) / 100.0;
        HookBudget {
            kommo_rps: share * f64::from(cfg.kommo.requests_per_second.max(1)),
            chatapp_rps: share * f64::from(cfg.chatapp.requests_per_second.max(1)),
            burst: HOOK_BURST,
            min_pause: cfg.daemon.webhook_min_interval,
        }
    }

    /// The time `kommo` and `chatapp` requests take at the budget's rates (the slower API's).
    pub fn cost(&self, kommo: u64, chatapp: u64) -> Duration {
        let secs = |n: u64, rps: f64| n as f64 / rps.max(f64::MIN_POSITIVE);
        let span = secs(kommo, self.kommo_rps).max(secs(chatapp, self.chatapp_rps));
        Duration::try_from_secs_f64(span).unwrap_or(Duration::MAX)
    }

    /// Charges a cycle that started at `started` and made these requests: the virtual clock
    /// (`paid_until`, `None` at first) moves on by their cost from no earlier than the start;
    /// returns the new clock and the earliest start of the next cycle (the clock minus the
    /// burst).
    pub fn charge(
        &self,
        paid_until: Option<Instant>,
        started: Instant,
        kommo: u64,
        chatapp: u64,
    ) -> (Instant, Instant) {
        let from = paid_until.map_or(started, |p| p.max(started));
        let paid = from
            .checked_add(self.cost(kommo, chatapp))
            .unwrap_or(from + Duration::from_secs(86_400));
        let next = paid.checked_sub(self.burst).unwrap_or(started);
        (paid, next)
    }
}

/// Sleeps until `t`; never completes for `None`.
pub async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The daemon's signals: TERM and INT stop, HUP reloads, USR1 runs a cycle now.
pub struct Signals {
    /// SIGTERM.
    pub term: Signal,
    /// SIGINT.
    pub int: Signal,
    /// SIGHUP.
    pub hup: Signal,
    /// SIGUSR1.
    pub usr1: Signal,
}

impl Signals {
    /// Installs the handlers (first thing at start: until then, HUP or USR1 would kill).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// The next TERM or INT.
    pub async fn stop(&mut self) -> &'static str {
        stop_signal(&mut self.term, &mut self.int).await
    }
}

/// The next of two stop signals (fields of [`Signals`], borrowed apart so that other signals can
/// be awaited beside it).
pub async fn stop_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn timers(poll: &str, full: &str, tz: &str, now: DateTime<Utc>) -> Timers {
        let tz: chrono_tz::Tz = tz.parse().unwrap();
        let poll = Schedule::parse(poll, tz).unwrap();
        let full = Schedule::parse(full, tz).unwrap();
        Timers {
            next_poll: poll.next_after(now),
            next_full: full.next_after(now),
            poll,
            full,
            timezone: tz,
        }
    }

    #[test]
    fn a_due_full_cycle_wins_and_missed_times_fire_once() {
        use CycleKind::{Full, Incremental};
        let t0 = utc("2026-03-29T00:59:50Z");
        let mut t = timers("*/30 * * * * *", "0 0 3 * * *", "UTC", t0);
        assert_eq!(t.fire(t0), None);
        assert_eq!(t.fire(utc("2026-03-29T00:59:59Z")), None);
        // a long cycle: many poll times passed; one incremental follow-up, next time after now
        let late = utc("2026-03-29T01:05:07Z");
        assert_eq!(t.fire(late), Some(Incremental));
        assert_eq!(t.next_poll, Some(utc("2026-03-29T01:05:30Z")));
        assert_eq!(t.fire(late), None, "fired once");
        // 03:00 Berlin on the DST day is 01:00 UTC (CEST, +2): passed together with a poll time
        let mut t = timers("*/30 * * * * *", "0 0 3 * * *", "Europe/Berlin", t0);
        assert_eq!(t.next_full, Some(utc("2026-03-29T01:00:00Z")));
        assert_eq!(t.fire(utc("2026-03-29T01:00:00Z")), Some(Full), "full wins");
        let mut p = None;
        want(&mut p, Full);
        want(&mut p, Incremental);
        assert_eq!(
            p,
            Some(Full),
            "an incremental trigger does not downgrade a due full cycle"
        );
        let mut p = None;
        want(&mut p, Incremental);
        want(&mut p, Incremental);
        assert_eq!(p, Some(Incremental));
    }

    #[test]
    fn webhook_cycles_are_debounced_and_paced() {
        let t0 = Instant::now();
        let s = |n: u64| Duration::from_secs(n);
        let ms = Duration::from_millis(100);
        assert_eq!(hook_due(None, Some(t0), ms), None, "no call waiting");
        assert_eq!(
            hook_due(Some(t0), None, ms),
            Some(t0 + ms),
            "first: debounce only"
        );
        // the last webhook cycle earned a pause until t0 + 3 s: a call at t0 + 1 s waits for it
        assert_eq!(
            hook_due(Some(t0 + s(1)), Some(t0 + s(3)), ms),
            Some(t0 + s(3))
        );
        // a call long after it: the debounce again
        assert_eq!(
            hook_due(Some(t0 + s(100)), Some(t0 + s(3)), ms),
            Some(t0 + s(100) + ms)
        );
    }

    #[test]
    fn the_budget_lets_a_burst_go_at_once_and_bounds_a_flood() {
        let b = HookBudget {
            kommo_rps: 1.5,
            chatapp_rps: 5.0,
            burst: Duration::from_secs(2),
            min_pause: Duration::ZERO,
        };
        let ms = |n: u64| Duration::from_millis(n);
        // a message callback: one ChatApp read costs 0.2 s; a Kommo hint's 3 requests 2 s
        assert_eq!(b.cost(0, 1), ms(200));
        assert_eq!(b.cost(3, 1), ms(2000), "the slower API sets the cost");
        // after a quiet spell a cycle of 2 s of cost leaves the next one free to start at once
        let t0 = Instant::now();
        let (paid, next) = b.charge(None, t0, 3, 0);
        assert_eq!((paid, next), (t0 + ms(2000), t0));
        // a second one right after: it must wait until the clock is within the burst again
        let (paid, next) = b.charge(Some(paid), t0 + ms(100), 3, 0);
        assert_eq!((paid, next), (t0 + ms(4000), t0 + ms(2000)));
        // an old clock does not bank credit: it counts from the cycle's start
        let (paid, _) = b.charge(Some(t0), t0 + ms(60_000), 3, 0);
        assert_eq!(paid, t0 + ms(62_000));
        // a flood: cycles start as soon as allowed; over the whole span the requests stay
        // within rate x (span + burst) plus one cycle's own
        let (mut clock, mut at, mut sent) = (None, t0, 0u64);
        for i in 0..500u64 {
            let n = 1 + i % 4; // 1..=4 Kommo requests a cycle
            let (paid, next) = b.charge(clock, at, n, 0);
            sent += n;
            clock = Some(paid);
            let span = (at - t0).as_secs_f64();
            assert!(
                sent as f64 <= 1.5 * (span + 2.0) + 4.0 + 1e-6,
                "{sent} requests by {span:.2} s"
            );
            at = next.max(at + ms(10)); // each cycle takes at least 10 ms
        }
        assert!((at - t0).as_secs_f64() > 600.0, "paced: {:?}", at - t0);
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
}
