//! Reading a config text into [`ConfigFile`] so that one run reports every problem of its shape:
//! wrong types, unknown enum values, unknown keys and missing keys, each with its key path and
//! line (serde alone stops at the first).
//!
//! How: the text is parsed into a spanned TOML document, then deserialized again and again. Each
//! failure names one key (through `serde_path_to_error`) and is recorded; the document is then
//! mended so that the next attempt gets past it: a bad or unknown key is taken out (its default,
//! if it has one, stands in), a missing required key gets a placeholder of a type that fits. The
//! values that stand in are never checked or used: the caller skips the semantic checks of their
//! sections and refuses the config anyway.
//!
//! Messages never show a string the file holds (a secret pasted into the wrong key would be
//! printed otherwise): only its kind, its line and, for enum keys, the word that is not one of
//! theirs.

use super::ConfigFile;
use std::collections::HashMap;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

/// The most rounds of deserializing; each round records a problem or fills a placeholder, so a
/// config would need about a hundred problems to reach it.
const MAX_ROUNDS: usize = 200;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// A key of a table.
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// A key path written as in the docs: `sync.leads.pipelines[1]`.
pub(super) fn dotted(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// What kind of problem a key has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A key the config does not have (a typo, or a table in the wrong place).
    Unknown,
    /// A value of the wrong type, or a word that is not one of the key's values.
    Value,
    /// A required key (or table) left out.
    Missing,
}

/// One problem of the config's shape.
#[derive(Debug, Clone)]
pub(super) struct Found {
    /// The key, in the file's own array positions.
    pub key: Vec<Step>,
    /// What kind of problem.
    pub kind: Kind,
    /// Why, in plain words (no value of the file but enum words and numbers).
    pub reason: String,
    /// The byte where the problem is, when it has a place in the file.
    pub at: Option<usize>,
}

/// The result of [`read`].
pub(super) struct Read {
    /// The config, with defaults and placeholders standing in for the problems' keys; `None`
    /// when the problems could not all be got past.
    pub config: Option<ConfigFile>,
    /// The problems, in the order they were met.
    pub found: Vec<Found>,
}

/// Reads a TOML text into a [`ConfigFile`], recording every problem of its shape. A text that is not
/// TOML at all is the parser's error (it has no key structure to go on).
pub(super) fn read(text: &str) -> Result<Read, toml::de::Error> {
    let mut doc = DeTable::parse(text)?;
    let mut found: Vec<Found> = vec![];
    // array (by its original path) -> the original positions taken out of it
    let mut removed: HashMap<String, Vec<usize>> = HashMap::new();
    for _ in 0..MAX_ROUNDS {
        let err = match attempt(&doc) {
            Ok(config) => {
                return Ok(Read {
                    config: Some(config),
                    found,
                });
            }
            Err(e) => e,
        };
        let message = err.inner().message().to_string();
        let at = err.inner().span().map(|s| s.start);
        let Some(now) = steps(err.path()) else {
            give_up(&mut found, vec![], &message, at);
            return Ok(Read {
                config: None,
                found,
            });
        };
        let orig = original(&now, &removed);
        if let Some(field) = missing_field(&message) {
            let mut key = orig.clone();
            key.push(Step::Key(field.clone()));
            if !covered(&found, &key) {
                found.push(Found {
                    reason: missing_reason(&orig),
                    key,
                    kind: Kind::Missing,
                    // the table it is missing from; the document itself has no line
                    at: if now.is_empty() { None } else { at },
                });
            }
            if !fill(&mut doc, &now, &field) {
                break;
            }
        } else {
            if now.is_empty() {
                give_up(&mut found, orig, &message, at);
                return Ok(Read {
                    config: None,
                    found,
                });
            }
            if !covered(&found, &orig) {
                found.push(Found {
                    kind: if message.starts_with("unknown field") {
                        Kind::Unknown
                    } else {
                        Kind::Value
                    },
                    reason: describe(&message),
                    key: orig.clone(),
                    at,
                });
            }
            if !remove(&mut doc, &now, &orig, &mut removed) {
                break;
            }
        }
    }
    found.push(Found {
        key: vec![],
        kind: Kind::Value,
        reason: "more problems follow: fix these and check again".into(),
        at: None,
    });
    Ok(Read {
        config: None,
        found,
    })
}

/// Records the problem that could not be got past (unless it is one already recorded).
fn give_up(found: &mut Vec<Found>, key: Vec<Step>, message: &str, at: Option<usize>) {
    if !covered(found, &key) {
        found.push(Found {
            key,
            kind: Kind::Value,
            reason: describe(message),
            at,
        });
    }
}

/// One deserialization of the whole document.
fn attempt(
    doc: &Spanned<DeTable<'_>>,
) -> Result<ConfigFile, serde_path_to_error::Error<toml::de::Error>> {
    serde_path_to_error::deserialize(toml::de::Deserializer::from(doc.clone()))
}

/// The path of an error as steps (`None` for a step that is not a key or a position).
fn steps(path: &serde_path_to_error::Path) -> Option<Vec<Step>> {
    path.iter()
        .map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            _ => None,
        })
        .collect()
}

/// The path in the file's own array positions: `now` counts in arrays that lost elements.
fn original(now: &[Step], removed: &HashMap<String, Vec<usize>>) -> Vec<Step> {
    let mut out: Vec<Step> = vec![];
    for s in now {
        match s {
            Step::Key(_) => out.push(s.clone()),
            Step::Index(j) => {
                let gone = removed.get(&dotted(&out)).map(Vec::as_slice).unwrap_or(&[]);
                let mut i = 0;
                let mut left = *j;
                loop {
                    if !gone.contains(&i) {
                        if left == 0 {
                            break;
                        }
                        left -= 1;
                    }
                    i += 1;
                }
                out.push(Step::Index(i));
            }
        }
    }
    out
}

/// True when `key` is a recorded problem's key or lies under one.
fn covered(found: &[Found], key: &[Step]) -> bool {
    found.iter().any(|f| key.starts_with(&f.key))
}

/// `missing field `x`` -> `x`.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.strip_suffix('`').map(str::to_string)
}

fn missing_reason(table: &[Step]) -> String {
    if table.is_empty() {
        "required, but missing".into()
    } else {
        format!("required, but missing from [{}]", dotted(table))
    }
}

/// The table at `steps` (the document itself for none).
fn table_at<'a, 'i>(doc: &'a mut DeTable<'i>, steps: &[Step]) -> Option<&'a mut DeTable<'i>> {
    let Some((last, parent)) = steps.split_last() else {
        return Some(doc);
    };
    let value = match (last, container_at(doc, parent)?) {
        (Step::Key(k), Container::Table(t)) => t.get_mut(k.as_str())?,
        (Step::Index(i), Container::Array(a)) => a.get_mut(*i)?,
        _ => return None,
    };
    match value.get_mut() {
        DeValue::Table(t) => Some(t),
        _ => None,
    }
}

enum Container<'a, 'i> {
    Table(&'a mut DeTable<'i>),
    Array(&'a mut DeArray<'i>),
}

/// The table or array at `steps`.
fn container_at<'a, 'i>(doc: &'a mut DeTable<'i>, steps: &[Step]) -> Option<Container<'a, 'i>> {
    let mut here = Container::Table(doc);
    for s in steps {
        let value = match (s, here) {
            (Step::Key(k), Container::Table(t)) => t.get_mut(k.as_str())?,
            (Step::Index(i), Container::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
        here = match value.get_mut() {
            DeValue::Table(t) => Container::Table(t),
            DeValue::Array(a) => Container::Array(a),
            _ => return None,
        };
    }
    Some(here)
}

/// Takes the value at `now` out of the document; `orig` is the same path in the file's
/// positions (an array remembers which of its elements went).
fn remove(
    doc: &mut Spanned<DeTable<'_>>,
    now: &[Step],
    orig: &[Step],
    removed: &mut HashMap<String, Vec<usize>>,
) -> bool {
    let Some((last, parent)) = now.split_last() else {
        return false;
    };
    match (last, container_at(doc.get_mut(), parent)) {
        (Step::Key(k), Some(Container::Table(t))) => t.remove(k.as_str()).is_some(),
        (Step::Index(i), Some(Container::Array(a))) if *i < a.len() => {
            let kept: DeArray<'_> = std::mem::replace(a, DeArray::new())
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, v)| v)
                .collect();
            *a = kept;
            if let Some((Step::Index(o), orig_parent)) = orig.split_last() {
                let gone = removed.entry(dotted(orig_parent)).or_default();
                gone.push(*o);
                gone.sort_unstable();
            }
            true
        }
        _ => false,
    }
}

/// Puts a placeholder for the missing key `field` into the table at `now`: the first of a
/// string, an integer, a boolean, an array and a table that gets the next attempt past it.
fn fill(doc: &mut Spanned<DeTable<'_>>, now: &[Step], field: &str) -> bool {
    let span = if now.is_empty() {
        0..0
    } else {
        match value_span(doc.get_ref(), now) {
            Some(s) => s,
            None => return false,
        }
    };
    let mut key = now.to_vec();
    key.push(Step::Key(field.to_string()));
    for candidate in ["\"x\"", "1", "false", "[]", "{}"] {
        let Ok(value) = DeValue::parse(candidate) else {
            continue;
        };
        let value = Spanned::new(span.clone(), value.into_inner());
        let Some(table) = table_at(doc.get_mut(), now) else {
            return false;
        };
        table.insert(
            Spanned::new(span.clone(), std::borrow::Cow::Owned(field.to_string())),
            value,
        );
        let fits = match attempt(doc) {
            Ok(_) => true,
            Err(e) => match steps(e.path()) {
                Some(p) if p.starts_with(&key) => missing_field(e.inner().message()).is_some(),
                _ => true,
            },
        };
        if fits {
            return true;
        }
    }
    if let Some(table) = table_at(doc.get_mut(), now) {
        table.remove(field);
    }
    false
}

/// The span of the value at `steps`.
fn value_span(doc: &DeTable<'_>, steps: &[Step]) -> Option<std::ops::Range<usize>> {
    let (first, rest) = steps.split_first()?;
    let Step::Key(k) = first else { return None };
    let mut v = doc.get(k.as_str())?;
    for s in rest {
        v = match (s, v.get_ref()) {
            (Step::Key(k), DeValue::Table(t)) => t.get(k.as_str())?,
            (Step::Index(i), DeValue::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v.span())
}

/// A serde message in plain words, without the file's strings.
pub(super) fn describe(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((what, exp)) = rest.rsplit_once(", expected ")
    {
        return format!("expected {}, found {}", expected(exp), kind_of(what));
    }
    if let Some(rest) = message.strip_prefix("invalid value: ")
        && let Some((what, exp)) = rest.rsplit_once(", expected ")
    {
        return match number(what) {
            Some(n) => format!("expected {}, found {n}", expected(exp)),
            None => format!(
                "expected {}, found {} that is not one",
                expected(exp),
                kind_of(what)
            ),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((word, exp)) = rest.split_once("`, expected ")
    {
        return format!(
            "unknown value {:?}, expected {}",
            shorten(word),
            exp.replace('`', "")
        );
    }
    if message.starts_with("unknown field `") || message.starts_with("missing field `") {
        return message.to_string();
    }
    if message.starts_with("data did not match any variant of untagged enum FieldRef") {
        return "expected a field id (an integer) or a field code (a string, e.g. \"PHONE\")"
            .into();
    }
    without_strings(message)
}

/// serde's name of a type as a person reads it.
fn expected(exp: &str) -> String {
    match exp {
        "u8" | "u16" | "u64" | "usize" => "an integer (a whole number >= 0)".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array".into(),
        "path string" => "a path (a string)".into(),
        "a duration" => "a duration such as \"30s\", \"15m\" or \"1h 30m\"".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e if e.starts_with("enum ") => "one of its words, in quotes".into(),
        e => without_strings(e),
    }
}

/// The kind of a value serde names (`string "..."` -> `a string`), never the value itself.
fn kind_of(what: &str) -> &'static str {
    let what = what.trim();
    for (prefix, kind) in [
        ("string", "a string"),
        ("character", "a string"),
        ("integer", "an integer"),
        ("floating point", "a decimal number"),
        ("boolean", "true or false"),
        ("sequence", "an array"),
        ("map", "a table"),
    ] {
        if what.starts_with(prefix) {
            return kind;
        }
    }
    "another kind of value"
}

/// `integer `-1`` -> `-1` (numbers are shown: no secret is one).
fn number(what: &str) -> Option<&str> {
    let rest = what
        .strip_prefix("integer `")
        .or_else(|| what.strip_prefix("floating point `"))?;
    rest.strip_suffix('`')
}

/// At most 40 characters of an enum word.
fn shorten(word: &str) -> String {
    if word.chars().count() <= 40 {
        word.to_string()
    } else {
        word.chars().take(40).collect::<String>() + "…"
    }
}

/// A message with every quoted string in it replaced by `"…"`.
fn without_strings(message: &str) -> String {
    let mut out = String::new();
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        if i % 2 == 0 {
            out.push_str("\"…");
        } else {
            out.push('"');
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_kinds_not_strings() {
        assert_eq!(
            describe("invalid type: string \"hunter2\", expected u64"),
            "expected an integer (a whole number >= 0), found a string"
        );
        assert_eq!(
            describe("invalid value: string \"hunter2\", expected a duration"),
            "expected a duration such as \"30s\", \"15m\" or \"1h 30m\", found a string that is not one"
        );
        assert_eq!(
            describe("invalid value: integer `-1`, expected usize"),
            "expected an integer (a whole number >= 0), found -1"
        );
        assert_eq!(
            describe("unknown variant `shdow`, expected `normal` or `shadow`"),
            "unknown value \"shdow\", expected normal or shadow"
        );
        assert_eq!(
            describe("something \"hunter2\" else"),
            "something \"…\" else"
        );
        assert_eq!(without_strings("a \"b\" c \"d"), "a \"…\" c \"…");
    }

    #[test]
    fn paths_are_written_as_in_the_docs() {
        let p = [
            Step::Key("users".into()),
            Step::Key("map".into()),
            Step::Index(1),
            Step::Key("kommo".into()),
        ];
        assert_eq!(dotted(&p), "users.map[1].kommo");
        assert_eq!(dotted(&[Step::Key("a b".into())]), "\"a b\"");
    }
}
