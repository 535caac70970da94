//! Cron schedules (5 or 6 fields) in a named time zone, DST-correct (croner + chrono-tz). Pure:
//! the caller passes the current time; the daemon's runner sleeps until the next occurrence.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed cron expression bound to a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses `expr` (5 fields, or 6 with seconds first) in time zone `tz` (IANA name).
    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, String> {
        let tz: Tz = tz
            .parse()
            .map_err(|_| format!("unknown time zone {tz:?}"))?;
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
        Ok(Schedule { cron, tz })
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
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
        let s = Schedule::parse("*/30 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:10Z")),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        let s = Schedule::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:01:00Z")),
            Some(utc("2026-01-01T00:05:00Z"))
        );
        assert!(Schedule::parse("every minute", "UTC").is_err());
        assert!(Schedule::parse("* * * *", "UTC").is_err());
        assert!(Schedule::parse("* * * * *", "Mars/Base").is_err());
    }

    #[test]
    fn daily_run_keeps_local_time_across_dst() {
        // 03:00 Berlin every day: CET (+1) before 29 March 2026, CEST (+2) after.
        let s = Schedule::parse("0 0 3 * * *", "Europe/Berlin").unwrap();
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
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let first = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert!(
            first >= utc("2026-03-29T00:00:00Z") && first < utc("2026-03-30T00:00:00Z"),
            "{first}"
        );
        let second = s.next_after(first).unwrap();
        assert_eq!(second, utc("2026-03-30T00:30:00Z"));
    }
}
