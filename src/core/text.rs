//! How people and times read in every output: `demo`, `once --dry-run`, `status`, log lines and
//! audit entries.
//!
//! The engine is pure and knows neither names nor the timezone, so the texts it writes (a write's
//! `detail`, a parked pair's reason, an audit entry) hold *marks*: `{kommo_user 504141}`,
//! `{chatapp_employee 85502}`, `{time 1796004800}`. The ids and times stay data; a [`Readable`]
//! (the names known, the configured timezone and "now") turns the marks into
//! `Anna Petrova (Kommo user 504141)`, `Boris (ChatApp employee 85502)` and
//! `2026-11-30T10:15:00+03:00, 3 min ago` when the text is shown. Pure: `now` is an argument.

use crate::core::engine::ConflictPolicy;
use crate::core::model::{Employee, EmployeeId, KommoUser, KommoUserId, Value};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

const KOMMO_USER: &str = "kommo_user";
const EMPLOYEE: &str = "chatapp_employee";
const TIME: &str = "time";

/// The mark of a Kommo user (`nobody` for 0).
pub fn user(u: KommoUserId) -> String {
    if u.is_nobody() {
        "nobody".into()
    } else {
        format!("{{{KOMMO_USER} {}}}", u.0)
    }
}

/// The mark of a ChatApp employee (`nobody` for none or 0).
pub fn employee(e: Option<EmployeeId>) -> String {
    match e {
        Some(e) if e.0 != 0 => format!("{{{EMPLOYEE} {}}}", e.0),
        _ => "nobody".into(),
    }
}

/// The mark of a responsible, by its side ([`user`] or [`employee`]); `nobody` for none or 0.
pub fn value(v: Option<Value>) -> String {
    match v {
        Some(Value::Card(u)) => user(u),
        Some(Value::Dialog(e)) => employee(Some(e)),
        None => "nobody".into(),
    }
}

/// The mark of a time (unix seconds); `an unknown time` for 0.
pub fn time(t: i64) -> String {
    if t == 0 {
        "an unknown time".into()
    } else {
        format!("{{{TIME} {t}}}")
    }
}

impl fmt::Display for ConflictPolicy {
    /// The config's spelling: `newest`, `crm`, `chat`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictPolicy::Newest => "newest",
            ConflictPolicy::Crm => "crm",
            ConflictPolicy::Chat => "chat",
        })
    }
}

/// The names of the people on both sides, as last read (kept in the state db for `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct People {
    /// Kommo user id -> name.
    #[serde(default)]
    pub kommo_users: BTreeMap<u64, String>,
    /// ChatApp employee id -> full name.
    #[serde(default)]
    pub employees: BTreeMap<u64, String>,
}

impl People {
    /// The names of the users and employees of one read (people without a name are left out).
    pub fn from_read(users: &[KommoUser], employees: &[Employee]) -> People {
        let named = |id: u64, name: &str| {
            let name = name.trim();
            (!name.is_empty()).then(|| (id, name.to_string()))
        };
        People {
            kommo_users: users
                .iter()
                .filter_map(|u| named(u.id.0, &u.name))
                .collect(),
            employees: employees
                .iter()
                .filter_map(|e| named(e.id.0, &e.name))
                .collect(),
        }
    }

    /// True when no name is known.
    pub fn is_empty(&self) -> bool {
        self.kommo_users.is_empty() && self.employees.is_empty()
    }
}

/// Renders people, times and marked texts for a reader: with the names known, in the configured
/// timezone, with ages relative to `now`.
#[derive(Debug, Clone)]
pub struct Readable<'a> {
    people: std::borrow::Cow<'a, People>,
    tz: chrono_tz::Tz,
    now: i64,
}

impl<'a> Readable<'a> {
    /// A renderer; `timezone` is the config's `[daemon] timezone`.
    pub fn new(people: &'a People, timezone: &Tz, now: i64) -> Readable<'a> {
        Readable {
            people: std::borrow::Cow::Borrowed(people),
            tz: *timezone,
            now,
        }
    }

    /// A renderer that knows no names (ids only).
    pub fn without_names(timezone: &Tz, now: i64) -> Readable<'static> {
        Readable {
            people: std::borrow::Cow::Owned(People::default()),
            tz: *timezone,
            now,
        }
    }

    /// `Anna Petrova (Kommo user 504141)`, or `Kommo user 504141` when the name is not known;
    /// `nobody` for 0.
    pub fn user(&self, u: KommoUserId) -> String {
        if u.is_nobody() {
            return "nobody".into();
        }
        match self.people.kommo_users.get(&u.0) {
            Some(name) => format!("{name} (Kommo user {u})"),
            None => format!("Kommo user {u}"),
        }
    }

    /// `Boris (ChatApp employee 85502)`, or `ChatApp employee 85502`; `nobody` for none or 0.
    pub fn employee(&self, e: Option<EmployeeId>) -> String {
        match e {
            Some(e) if e.0 != 0 => match self.people.employees.get(&e.0) {
                Some(name) => format!("{name} (ChatApp employee {e})"),
                None => format!("ChatApp employee {e}"),
            },
            _ => "nobody".into(),
        }
    }

    /// A responsible, by its side ([`Readable::user`] or [`Readable::employee`]); `nobody` for
    /// none or 0.
    pub fn value(&self, v: Option<Value>) -> String {
        match v {
            Some(Value::Card(u)) => self.user(u),
            Some(Value::Dialog(e)) => self.employee(Some(e)),
            None => "nobody".into(),
        }
    }

    /// Local ISO-8601 in the configured timezone: `2026-11-30T10:15:00+03:00`.
    pub fn time(&self, t: i64) -> String {
        if t == 0 {
            return "an unknown time".into();
        }
        match chrono::DateTime::from_timestamp(t, 0) {
            Some(utc) => utc
                .with_timezone(&self.tz)
                .format("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            None => "an unknown time".into(),
        }
    }

    /// [`Readable::time`] with its age: `2026-11-30T10:15:00+03:00, 3 min ago`.
    pub fn time_ago(&self, t: i64) -> String {
        if t == 0 {
            return self.time(t);
        }
        format!("{}, {}", self.time(t), age(self.now.saturating_sub(t)))
    }

    /// A marked text with its marks rendered (see the module docs). Text without marks is
    /// returned as it is.
    pub fn text(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 32);
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            match self.mark(tail) {
                Some((rendered, len)) => {
                    out.push_str(&rendered);
                    rest = &tail[len..];
                }
                None => {
                    out.push('{');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The rendering of the mark at the start of `s` and its length, if `s` starts with one.
    fn mark(&self, s: &str) -> Option<(String, usize)> {
        let end = s.find('}')?;
        let (kind, value) = s[1..end].split_once(' ')?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let rendered = match kind {
            KOMMO_USER => self.user(KommoUserId(value.parse().ok()?)),
            EMPLOYEE => self.employee(Some(EmployeeId(value.parse().ok()?))),
            TIME => self.time_ago(value.parse().ok()?),
            _ => return None,
        };
        Some((rendered, end + 1))
    }
}

/// How long ago `secs` seconds is: `just now`, `40 s ago`, `3 min ago`, `2 h ago`,
/// `5 days ago`; `in 3 min` for a time ahead (another clock).
pub fn age(secs: i64) -> String {
    let ahead = secs < 0;
    let s = secs.unsigned_abs();
    let span = match s {
        0 => return "just now".into(),
        1..=59 => format!("{s} s"),
        60..=3_599 => format!("{} min", s / 60),
        3_600..=86_399 => format!("{} h", s / 3_600),
        86_400..=172_799 => "1 day".into(),
        _ => format!("{} days", s / 86_400),
    };
    if ahead {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn people() -> People {
        People {
            kommo_users: [(504141, "Anna Petrova".to_string())].into(),
            employees: [(85502, "Boris".to_string())].into(),
        }
    }

    #[test]
    fn marks_render_with_names_and_local_times() {
        let p = people();
        let r = Readable::new(&p, &chrono_tz::Europe::Moscow, 1_796_023_080);
        let text = format!(
            "{} then {} at {}; {} and {}",
            user(KommoUserId(504141)),
            employee(Some(EmployeeId(85502))),
            time(1_796_022_900),
            user(KommoUserId(7)),
            employee(None)
        );
        assert_eq!(
            r.text(&text),
            "Anna Petrova (Kommo user 504141) then Boris (ChatApp employee 85502) at \
             2026-11-30T10:15:00+03:00, 3 min ago; Kommo user 7 and nobody"
        );
    }

    #[test]
    fn text_without_marks_is_kept() {
        let p = People::default();
        let r = Readable::new(&p, &Tz::UTC, 0);
        for s in [
            "",
            "{",
            "a {b} c",
            "{time x}",
            "{time }",
            "{unknown 12}",
            "}{",
        ] {
            assert_eq!(r.text(s), s);
        }
    }

    #[test]
    fn ages() {
        assert_eq!(age(0), "just now");
        assert_eq!(age(40), "40 s ago");
        assert_eq!(age(200), "3 min ago");
        assert_eq!(age(7_300), "2 h ago");
        assert_eq!(age(90_000), "1 day ago");
        assert_eq!(age(-200), "in 3 min");
    }
}
