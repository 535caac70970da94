//! What the daemon tells systemd (`Type=notify`): READY, STATUS (one line: the last cycle's
//! outcome and the next one), WATCHDOG pings tied to real progress, RELOADING and STOPPING.
//!
//! The watchdog is pinged while the runner moves: the idle loop beats at least every half
//! watchdog period, and a cycle counts as progress until its `cycle_budget` (plus a minute) is
//! spent. A daemon whose cycles all fail is not pinged as healthy forever: after
//! [`FAILING_CYCLES`] failed cycles in a row spanning at least [`FAILING_FOR`], the pings stop and
//! systemd restarts the unit (the journal has every cycle's error and class; STATUS shows the
//! last one). A state db error is handled before that: the runner reopens the db at once.

use crate::store::{CycleKind, Outcome};
use crate::sync::{CycleError, CycleReport};
use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long past its `cycle_budget` a cycle still counts as progress for the watchdog.
pub const CYCLE_SLACK: Duration = Duration::from_secs(60);
/// The longest STATUS= text (one line; systemd shows it in `systemctl status`).
pub const STATUS_MAX: usize = 240;
/// Failed cycles in a row after which the watchdog is no longer pinged...
pub const FAILING_CYCLES: u64 = 5;
/// ...once they span at least this long.
pub const FAILING_FOR: Duration = Duration::from_secs(30 * 60);

/// Sends states to systemd (nothing outside systemd).
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// RELOADING=1 with the monotonic time systemd wants beside it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(m) => notify(&[NotifyState::Reloading, m]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The runner's heartbeat: the watchdog pings only while it moves (see the module docs).
pub struct Heartbeat {
    started: Instant,
    /// Milliseconds since `started` of the runner's last sign of life.
    beat_ms: AtomicU64,
    /// Milliseconds since `started` at which the cycle in flight began; 0 when idle.
    cycle_ms: AtomicU64,
    /// The cycle budget (it can change with a reload), milliseconds.
    budget_ms: AtomicU64,
    /// Failed cycles in a row, and since when (ms since `started`; 0: none).
    failing: AtomicU64,
    failing_since_ms: AtomicU64,
    /// Set (under the lock that also covers each ping) when STOPPING=1 is sent: no ping after.
    stopped: Mutex<bool>,
}

impl Heartbeat {
    /// A heartbeat for cycles of `budget`.
    pub fn new(budget: Duration) -> Heartbeat {
        let hb = Heartbeat {
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            cycle_ms: AtomicU64::new(0),
            budget_ms: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            stopped: Mutex::new(false),
        };
        hb.set_budget(budget);
        hb.beat();
        hb
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// The cycle budget (after a reload).
    pub fn set_budget(&self, budget: Duration) {
        self.budget_ms
            .store(budget.as_millis() as u64, Ordering::SeqCst);
    }

    /// A sign of life of the idle loop.
    pub fn beat(&self) {
        self.beat_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// Sends WATCHDOG=1 unless the stop has begun.
    pub fn ping(&self) {
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if !*stopped {
            notify(&[NotifyState::Watchdog]);
        }
    }

    /// Sends STOPPING=1 the first time; no ping follows it.
    pub fn stop(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if !*stopped {
            *stopped = true;
            notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
    }

    /// A cycle begins.
    pub fn cycle_started(&self) {
        self.cycle_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// A cycle ended (a beat), successfully or not.
    pub fn cycle_ended(&self, ok: bool) {
        self.cycle_ms.store(0, Ordering::SeqCst);
        self.beat();
        if ok {
            self.failing.store(0, Ordering::SeqCst);
            self.failing_since_ms.store(0, Ordering::SeqCst);
        } else if self.failing.fetch_add(1, Ordering::SeqCst) == 0 {
            self.failing_since_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// Alive: not failing for good (see the module docs), and the idle loop beat within `period`
    /// (it beats every `period / 2`) or a cycle is running within its budget.
    pub fn alive(&self, period: Duration) -> bool {
        let now = self.now_ms();
        let since = self.failing_since_ms.load(Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) >= FAILING_CYCLES
            && now.saturating_sub(since) >= FAILING_FOR.as_millis() as u64
        {
            return false;
        }
        let cycle = self.cycle_ms.load(Ordering::SeqCst);
        if cycle != 0 {
            let limit = self.budget_ms.load(Ordering::SeqCst) + CYCLE_SLACK.as_millis() as u64;
            return now.saturating_sub(cycle) < limit;
        }
        now.saturating_sub(self.beat_ms.load(Ordering::SeqCst)) < period.as_millis() as u64
    }

    /// Failed cycles in a row.
    pub fn failing(&self) -> u64 {
        self.failing.load(Ordering::SeqCst)
    }
}

/// A time for STATUS= and logs: local ISO-8601 in the configured time zone.
pub fn fmt_time(t: DateTime<Utc>, timezone: &chrono_tz::Tz) -> String {
    t.with_timezone(timezone)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// One line, at most [`STATUS_MAX`] characters.
pub fn one_line(s: &str) -> String {
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

/// The outcome of a finished cycle, for STATUS= (starts with "last cycle").
pub fn outcome_text(
    kind: CycleKind,
    r: &Result<CycleReport, CycleError>,
    timezone: &chrono_tz::Tz,
) -> String {
    let at = fmt_time(Utc::now(), timezone);
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
            if rec.quarantined > 0 {
                t.push_str(&format!(", {} records quarantined", rec.quarantined));
            }
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
            "last cycle {kind} {} at {at} ({}): {e}",
            Outcome::Failed.as_str(),
            e.label()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let hb2 = Heartbeat::new(Duration::ZERO);
        hb2.cycle_ms.store(1, Ordering::SeqCst);
        let hb2 = Heartbeat {
            started: Instant::now() - CYCLE_SLACK - Duration::from_secs(1),
            ..hb2
        };
        assert!(!hb2.alive(period), "a cycle past its budget is stuck");
        hb2.cycle_ended(true);
        assert!(hb2.alive(period), "the end of a cycle is a beat");
    }

    #[test]
    fn cycles_that_all_fail_stop_the_pings_after_a_while() {
        let period = Duration::from_secs(60);
        let hb = Heartbeat::new(Duration::from_secs(600));
        for _ in 0..FAILING_CYCLES {
            hb.cycle_started();
            hb.cycle_ended(false);
        }
        assert!(hb.alive(period), "not yet: the failures are recent");
        let hb = Heartbeat {
            started: Instant::now() - FAILING_FOR - Duration::from_secs(1),
            ..hb
        };
        hb.failing_since_ms.store(1, Ordering::SeqCst);
        hb.beat();
        assert!(!hb.alive(period), "failing for good: no ping");
        hb.cycle_ended(true);
        assert!(hb.alive(period), "one good cycle and it is healthy again");
        assert_eq!(hb.failing(), 0);
    }

    #[test]
    fn status_text_is_one_bounded_line() {
        let s = one_line(&format!("a\nb\r{}", "x".repeat(1000)));
        assert!(!s.contains('\n') && !s.contains('\r'));
        assert_eq!(s.chars().count(), STATUS_MAX);
        assert!(s.ends_with("..."));
        assert_eq!(one_line("short"), "short");
    }
}
