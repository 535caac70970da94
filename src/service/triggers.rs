//! What makes a cycle due: the poll and full cron schedules (croner, DST-correct in the configured
//! time zone, spread per instance), SIGUSR1, and webhook calls (debounced and spaced). Triggers
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

/// Adds a trigger to what is due: a full cycle wins over an incremental one.
pub fn want(due: &mut Due, kind: CycleKind) {
    *due = Some(match (*due, kind) {
        (Some(CycleKind::Full), _) | (_, CycleKind::Full) => CycleKind::Full,
        _ => CycleKind::Incremental,
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

/// Webhook calls become cycles debounced and spaced: a cycle `debounce` after the first waiting
/// call (calls meanwhile fold in), and no sooner than `min_interval` after the end of the previous
/// webhook-triggered cycle, so a flood of valid calls gives at most one cycle per `min_interval`
/// plus the cycle's own time. A call during a cycle is not lost: it waits for its own cycle.
#[derive(Debug, Default, Clone, Copy)]
pub struct HookSpacing {
    /// The first call not yet answered by a webhook-triggered cycle.
    since: Option<Instant>,
    /// The end of the last webhook-triggered cycle.
    last_end: Option<Instant>,
    /// The cycle about to run (or running) is a webhook-triggered one.
    in_cycle: bool,
}

impl HookSpacing {
    /// A call arrived.
    pub fn called(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// When the waiting calls get their cycle; `None`: no call is waiting.
    pub fn due(&self, debounce: Duration, min_interval: Duration) -> Option<Instant> {
        hook_due(self.since, self.last_end, debounce, min_interval)
    }

    /// Their cycle starts now.
    pub fn start(&mut self) {
        self.since = None;
        self.in_cycle = true;
    }

    /// A cycle ended (a webhook-triggered one sets the spacing's clock).
    pub fn cycle_ended(&mut self) {
        if std::mem::take(&mut self.in_cycle) {
            self.last_end = Some(Instant::now());
        }
    }
}

/// See [`HookSpacing`].
fn hook_due(
    since: Option<Instant>,
    last_end: Option<Instant>,
    debounce: Duration,
    min_interval: Duration,
) -> Option<Instant> {
    let due = since? + debounce;
    Some(match last_end {
        Some(end) => due.max(end + min_interval),
        None => due,
    })
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
}
