//! Cron schedules (5 or 6 fields) in a named time zone, DST-correct (croner + chrono-tz). Pure:
//! the caller passes the current time; the daemon's runner sleeps until the next occurrence.
//!
//! Several instances on one machine with the same schedule would all fire in the same second
//! and burst against the APIs together: [`spread_offset`] gives each instance a stable offset
//! derived from its name, and [`Schedule::with_offset`] shifts a schedule's occurrences by it.

use std::time::Duration;

use crate::core::hash::fnv1a64;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed cron expression bound to a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    offset: TimeDelta,
}

impl Schedule {
    /// Parses `expr` (5 fields, or 6 with seconds first) in time zone `tz`.
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "{expr:?} has {fields} fields; a cron expression has 5 or 6 (with seconds)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("{expr:?} is not a cron expression: {e}"))?;
        Ok(Schedule {
            cron,
            tz,
            offset: TimeDelta::zero(),
        })
    }

    /// The same schedule with every occurrence moved `offset` later (e.g. "*/30 * * * * *" with
    /// 7 s fires at :07 and :37). Replaces any earlier offset; zero (the default) changes nothing.
    /// Meant for a [`spread_offset`] shorter than the schedule's interval; one beyond chrono's range
    /// (about 292 years) leaves no occurrences.
    pub fn with_offset(mut self, offset: Duration) -> Schedule {
        self.offset = TimeDelta::from_std(offset).unwrap_or(TimeDelta::MAX);
        self
    }

    /// The offset set by [`Schedule::with_offset`] (zero by default).
    pub fn offset(&self) -> Duration {
        self.offset.to_std().unwrap_or_default()
    }

    /// The first occurrence strictly after `after`, offset included.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // occurrences shifted by the offset: the first cron time after `after - offset`, shifted
        let local = after
            .checked_sub_signed(self.offset)?
            .with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()?
            .with_timezone(&Utc)
            .checked_add_signed(self.offset)
    }

    /// The time between the first two occurrences after `after` (offset or not, the same): the
    /// interval to pass to [`spread_offset`] for this schedule. `None` if there are not two.
    pub fn interval_after(&self, after: DateTime<Utc>) -> Option<Duration> {
        let first = self.next_after(after)?;
        let second = self.next_after(first)?;
        (second - first).to_std().ok()
    }
}

/// A stable offset in `[0, interval)`, in whole milliseconds, for the instance named `instance`:
/// 64-bit FNV-1a of the name's UTF-8 bytes modulo the interval. The same name gives the same
/// offset in every run and build; different names spread over the interval. Zero for an interval
/// under 1 ms.
pub fn spread_offset(instance: &str, interval: Duration) -> Duration {
    let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(fnv1a64(instance.as_bytes()) % millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields() {
        let s = Schedule::parse("*/30 * * * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:10Z")),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        let s = Schedule::parse("*/5 * * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:01:00Z")),
            Some(utc("2026-01-01T00:05:00Z"))
        );
        assert!(Schedule::parse("every minute", Tz::UTC).is_err());
        assert!(Schedule::parse("* * * *", Tz::UTC).is_err());
    }

    #[test]
    fn daily_run_keeps_local_time_across_dst() {
        // 03:00 Berlin every day: CET (+1) before 29 March 2026, CEST (+2) after.
        let s = Schedule::parse("0 0 3 * * *", chrono_tz::Europe::Berlin).unwrap();
        let before = s.next_after(utc("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(before, utc("2026-03-28T02:00:00Z"));
        let after = s.next_after(before).unwrap();
        assert_eq!(
            after,
            utc("2026-03-29T01:00:00Z"),
            "03:00 CEST is 01:00 UTC"
        );
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            after.with_timezone(&tz),
            tz.with_ymd_and_hms(2026, 3, 29, 3, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_time_in_the_spring_gap_still_runs_once() {
        // 02:30 does not exist in Berlin on 29 March 2026; the day still gets one run
        let s = Schedule::parse("30 2 * * *", chrono_tz::Europe::Berlin).unwrap();
        let first = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert!(
            first >= utc("2026-03-29T00:00:00Z") && first < utc("2026-03-30T00:00:00Z"),
            "{first}"
        );
        let second = s.next_after(first).unwrap();
        assert_eq!(second, utc("2026-03-30T00:30:00Z"));
    }

    #[test]
    fn fnv1a_reference_values() {
        // published FNV-1a 64 test vectors
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn spread_offset_is_stable_and_in_range() {
        let thirty = Duration::from_secs(30);
        // fixed values: a change here moves every deployed instance's polls
        assert_eq!(spread_offset("acme", thirty), Duration::from_millis(5_087));
        assert_eq!(
            spread_offset("globex", thirty),
            Duration::from_millis(2_750)
        );
        assert_eq!(spread_offset("", thirty), Duration::from_millis(16_037));
        let hour = Duration::from_secs(3600);
        assert_eq!(spread_offset("acme", hour), Duration::from_millis(275_087));
        assert_eq!(spread_offset("acme", thirty), spread_offset("acme", thirty));
        assert_eq!(spread_offset("acme", Duration::ZERO), Duration::ZERO);
        assert_eq!(
            spread_offset("acme", Duration::from_micros(999)),
            Duration::ZERO
        );
        for interval in [1, 7, 1_000, 30_000, 3_600_000] {
            let interval = Duration::from_millis(interval);
            for n in 0..200 {
                let off = spread_offset(&format!("client-{n}"), interval);
                assert!(off < interval, "{off:?} >= {interval:?}");
                assert_eq!(off.subsec_nanos() % 1_000_000, 0, "whole milliseconds");
            }
        }
        assert!(spread_offset("x", Duration::MAX) < Duration::MAX);
    }

    #[test]
    fn different_names_spread_over_the_interval() {
        let thirty = Duration::from_secs(30);
        let names: Vec<String> = (1..=20).map(|n| format!("account{n}")).collect();
        let mut secs: Vec<u64> = names
            .iter()
            .map(|n| spread_offset(n, thirty).as_secs())
            .collect();
        secs.sort_unstable();
        secs.dedup();
        // 20 names in 30 one-second buckets: a uniform hash fills about 15 of them
        assert!(
            secs.len() >= 10,
            "only {} distinct seconds: {secs:?}",
            secs.len()
        );
        assert_ne!(
            spread_offset("acme", thirty),
            spread_offset("acme2", thirty)
        );
        assert_ne!(spread_offset("acme", thirty), spread_offset("Acme", thirty));
    }

    #[test]
    fn offset_shifts_every_occurrence() {
        let s = Schedule::parse("*/30 * * * * *", Tz::UTC)
            .unwrap()
            .with_offset(Duration::from_secs(7));
        assert_eq!(s.offset(), Duration::from_secs(7));
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:07Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:07Z")),
            Some(utc("2026-01-01T00:00:37Z")),
            "strictly after"
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:30Z")),
            Some(utc("2026-01-01T00:00:37Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:37.5Z")),
            Some(utc("2026-01-01T00:01:07Z"))
        );
        let s = s.with_offset(Duration::from_millis(1_250));
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:10Z")),
            Some(utc("2026-01-01T00:00:31.250Z"))
        );
        assert_eq!(
            s.interval_after(utc("2026-01-01T00:00:10Z")),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn zero_offset_keeps_the_plain_schedule() {
        let plain = Schedule::parse("*/5 * * * *", chrono_tz::Europe::Berlin).unwrap();
        let zero = plain.clone().with_offset(Duration::ZERO);
        assert_eq!(plain.offset(), Duration::ZERO);
        let mut t = utc("2026-03-29T00:58:00Z");
        for _ in 0..50 {
            let next = plain.next_after(t);
            assert_eq!(zero.next_after(t), next);
            t = next.unwrap();
        }
        assert_eq!(plain.interval_after(t), Some(Duration::from_secs(300)));
    }

    #[test]
    fn offset_daily_run_across_dst() {
        // 03:00 Berlin plus 90 s: 03:01:30 local on both sides of the switch
        let s = Schedule::parse("0 0 3 * * *", chrono_tz::Europe::Berlin)
            .unwrap()
            .with_offset(Duration::from_secs(90));
        let before = s.next_after(utc("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(before, utc("2026-03-28T02:01:30Z"));
        assert_eq!(s.next_after(before).unwrap(), utc("2026-03-29T01:01:30Z"));
    }
}
