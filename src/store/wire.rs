//! The stored JSON form of the records that hold a responsible: [`AuditEntry`], [`Intent`] and
//! [`WriteFailure`]. In memory their values are typed ([`Value`]); a stored row carries the bare
//! id number, and the row's `target` says whose id it is. The rows read and write exactly as when
//! these records held raw numbers, so an existing state db keeps reading.

use super::failures::{FailureKind, WriteFailure};
use super::{AuditEntry, Base, Intent};
use crate::core::engine::Rule;
use crate::core::model::{RecordId, Value};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

/// An [`AuditEntry`] as stored.
#[derive(Serialize, Deserialize)]
struct AuditRow<'a> {
    at: i64,
    cycle: u64,
    target: Cow<'a, RecordId>,
    from: Option<u64>,
    to: u64,
    rule: Rule,
    source: Cow<'a, RecordId>,
    source_changed_at: i64,
    detail: Cow<'a, str>,
    how: Cow<'a, str>,
}

impl Serialize for AuditEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        AuditRow {
            at: self.at,
            cycle: self.cycle,
            target: Cow::Borrowed(&self.target),
            from: self.from.map(Value::raw),
            to: self.to.raw(),
            rule: self.rule,
            source: Cow::Borrowed(&self.source),
            source_changed_at: self.source_changed_at,
            detail: Cow::Borrowed(&self.detail),
            how: Cow::Borrowed(&self.how),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AuditEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = AuditRow::deserialize(d)?;
        let target = r.target.into_owned();
        Ok(AuditEntry {
            at: r.at,
            cycle: r.cycle,
            from: r.from.map(|v| Value::of(&target, v)),
            to: Value::of(&target, r.to),
            target,
            rule: r.rule,
            source: r.source.into_owned(),
            source_changed_at: r.source_changed_at,
            detail: r.detail.into_owned(),
            how: r.how.into_owned(),
        })
    }
}

/// An [`Intent`] as stored.
#[derive(Serialize, Deserialize)]
struct IntentRow<'a> {
    cycle: u64,
    target: Cow<'a, RecordId>,
    from: Option<u64>,
    to: u64,
    audit: Cow<'a, AuditEntry>,
    base: Cow<'a, Base>,
}

impl Serialize for Intent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        IntentRow {
            cycle: self.cycle,
            target: Cow::Borrowed(&self.target),
            from: self.from.map(Value::raw),
            to: self.to.raw(),
            audit: Cow::Borrowed(&self.audit),
            base: Cow::Borrowed(&self.base),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Intent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = IntentRow::deserialize(d)?;
        let target = r.target.into_owned();
        Ok(Intent {
            cycle: r.cycle,
            from: r.from.map(|v| Value::of(&target, v)),
            to: Value::of(&target, r.to),
            target,
            audit: r.audit.into_owned(),
            base: r.base.into_owned(),
        })
    }
}

/// A [`WriteFailure`] as stored.
#[derive(Serialize, Deserialize)]
struct FailureRow<'a> {
    target: Cow<'a, RecordId>,
    from: Option<u64>,
    to: u64,
    kind: FailureKind,
    detail: Cow<'a, str>,
    attempts: u32,
    last_at: i64,
    retry_at: i64,
}

impl Serialize for WriteFailure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FailureRow {
            target: Cow::Borrowed(&self.target),
            from: self.from.map(Value::raw),
            to: self.to.raw(),
            kind: self.kind,
            detail: Cow::Borrowed(&self.detail),
            attempts: self.attempts,
            last_at: self.last_at,
            retry_at: self.retry_at,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for WriteFailure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = FailureRow::deserialize(d)?;
        let target = r.target.into_owned();
        Ok(WriteFailure {
            from: r.from.map(|v| Value::of(&target, v)),
            to: Value::of(&target, r.to),
            target,
            kind: r.kind,
            detail: r.detail.into_owned(),
            attempts: r.attempts,
            last_at: r.last_at,
            retry_at: r.retry_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FORMAT, decode, encode};
    use super::*;
    use crate::core::model::{CardId, CardKind, DialogKey, EmployeeId, KommoUserId};

    /// Rows as the release before typed values wrote them (captured from its `encode`).
    const OLD_CARD_INTENT: &str = r#"{"cycle":2,"target":{"type":"card","kind":"lead","id":7},"from":1,"to":3,"audit":{"at":5,"cycle":2,"target":{"type":"card","kind":"lead","id":7},"from":1,"to":3,"rule":"dialog_changed","source":{"type":"dialog","license_id":1,"messenger_type":"telegram","chat_id":"@a"},"source_changed_at":4,"detail":"a dialog changed","how":"write"},"base":{"type":"card","responsible":3,"changed_at":5,"flag":true,"deleted":false,"contacts":[2],"dialog_refs":[{"type":"chat_id","ref":"@bob"}],"phones":["7999"]}}"#;
    const OLD_DIALOG_INTENT: &str = r#"{"cycle":3,"target":{"type":"dialog","license_id":1,"messenger_type":"telegram","chat_id":"@a"},"from":null,"to":85502,"audit":{"at":6,"cycle":3,"target":{"type":"dialog","license_id":1,"messenger_type":"telegram","chat_id":"@a"},"from":null,"to":85502,"rule":"crm_changed","source":{"type":"card","kind":"lead","id":7},"source_changed_at":5,"detail":"a card changed","how":"write"},"base":{"type":"dialog","responsible":85502,"changed_at":6,"last_time":6,"session":0,"closed":false}}"#;
    const OLD_DIALOG_FAILURE: &str = r#"{"target":{"type":"dialog","license_id":1,"messenger_type":"telegram","chat_id":"@a"},"from":null,"to":85502,"kind":"rejected","detail":"HTTP 400: bad","attempts":1,"last_at":100,"retry_at":1000}"#;
    const OLD_CARD_FAILURE: &str = r#"{"target":{"type":"card","kind":"contact","id":9},"from":504141,"to":504142,"kind":"not_applied","detail":"x","attempts":3,"last_at":100,"retry_at":3700}"#;

    fn stored(json: &str) -> Vec<u8> {
        let mut b = vec![FORMAT];
        b.extend_from_slice(json.as_bytes());
        b
    }

    #[test]
    fn old_rows_decode_typed_by_their_target_and_encode_byte_for_byte() {
        let card = RecordId::Card(CardId::new(CardKind::Lead, 7));
        let dialog = RecordId::Dialog(DialogKey::new(1, "telegram", "@a"));

        let b = stored(OLD_CARD_INTENT);
        let i: Intent = decode(|| "intent".into(), &b).unwrap();
        assert_eq!(i.target, card);
        assert_eq!(i.from, Some(Value::Card(KommoUserId(1))));
        assert_eq!(i.to, Value::Card(KommoUserId(3)));
        assert_eq!(i.audit.from, Some(Value::Card(KommoUserId(1))));
        assert_eq!(i.audit.to, Value::Card(KommoUserId(3)));
        assert_eq!(i.audit.source, dialog);
        assert_eq!(encode(&i), b);

        let b = stored(OLD_DIALOG_INTENT);
        let i: Intent = decode(|| "intent".into(), &b).unwrap();
        assert_eq!(i.target, dialog);
        assert_eq!(i.from, None);
        assert_eq!(i.to, Value::Dialog(EmployeeId(85502)));
        assert_eq!(i.audit.to, Value::Dialog(EmployeeId(85502)));
        assert_eq!(encode(&i), b);

        let a: AuditEntry = decode(|| "audit".into(), &encode(&i.audit)).unwrap();
        assert_eq!(a, i.audit);

        let b = stored(OLD_DIALOG_FAILURE);
        let f: WriteFailure = decode(|| "failure".into(), &b).unwrap();
        assert_eq!((f.from, f.to), (None, Value::Dialog(EmployeeId(85502))));
        assert_eq!(f.kind, FailureKind::Rejected);
        assert_eq!(encode(&f), b);

        let b = stored(OLD_CARD_FAILURE);
        let f: WriteFailure = decode(|| "failure".into(), &b).unwrap();
        assert_eq!(f.from, Some(Value::Card(KommoUserId(504141))));
        assert_eq!(f.to, Value::Card(KommoUserId(504142)));
        assert_eq!(f.kind, FailureKind::NotApplied);
        assert_eq!(encode(&f), b);
    }
}
