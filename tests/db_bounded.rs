//! Issue 13.9: a bounded db. Tens of thousands of accelerated cycles (each with a confirmed write
//! and its audit entry) through the real store: past the retention, the file size stays flat.

#![allow(clippy::unwrap_used)]

use chatapp_kommo_sync::core::engine::Rule;
use chatapp_kommo_sync::core::model::{
    CardId, CardKind, CardState, DialogKey, KommoUserId, RecordId, Value,
};
use chatapp_kommo_sync::store::{
    AuditEntry, Base, CycleCommit, CycleRecord, Intent, Retention, Store,
};

const CYCLES: u64 = 20_000;
/// Kept history in this test: 2 000 cycle records, a day of audit entries (2 880 cycles).
const KEEP: u64 = 2_000;
const DAY: i64 = 86_400;
/// The stated bound: the file at the end is at most this much larger than when the retention
/// first applied (the steady state).
const MAX_GROWTH: f64 = 1.10;

fn card(user: u64) -> CardState {
    CardState {
        responsible: chatapp_kommo_sync::core::model::KommoUserId(user),
        changed_at: 1,
        flag: true,
        deleted: false,
        contacts: vec![2],
        dialog_refs: vec![],
        phones: vec![],
        lead: Default::default(),
    }
}

#[test]
fn twenty_thousand_cycles_keep_the_file_flat() {
    // tmpfs when there is one: this is about the file's size, not the disk's fsync latency
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let path = dir.path().join("state.redb");
    let store = Store::open(&path).unwrap();
    let id = CardId::new(CardKind::Lead, 7);
    let t0 = std::time::Instant::now();
    let mut size_at_steady = 0;
    for n in 1..=CYCLES {
        let now = 1_800_000_000 + n as i64 * 30;
        let audit = AuditEntry {
            at: now,
            cycle: n,
            target: RecordId::Card(id),
            from: Some(Value::Card(KommoUserId(n % 5))),
            to: Value::Card(KommoUserId(n % 5 + 1)),
            rule: Rule::DialogChanged,
            source: RecordId::Dialog(DialogKey::new(1, "telegram", "@a")),
            source_changed_at: now,
            detail: "a dialog changed; the lead follows it".into(),
            how: "write".into(),
        };
        let intent = Intent {
            cycle: n,
            target: RecordId::Card(id),
            from: Some(Value::Card(KommoUserId(n % 5))),
            to: Value::Card(KommoUserId(n % 5 + 1)),
            audit: audit.clone(),
            base: Base::Card(card(n % 5 + 1)),
        };
        store.record_intents(std::slice::from_ref(&intent)).unwrap();
        store.confirm_write(&intent, &audit).unwrap();
        let mut c = CycleCommit {
            cycle: CycleRecord {
                id: n,
                kind: chatapp_kommo_sync::store::CycleKind::Incremental,
                started_at: now,
                outcome: chatapp_kommo_sync::store::Outcome::Ok,
                ..CycleRecord::default()
            },
            retention: Retention {
                audit_before: now - DAY,
                keep_cycles: KEEP,
            },
            ..CycleCommit::default()
        };
        c.settlement.cards.insert(id, card(n % 5 + 1));
        store.commit_cycle(&c).unwrap();
        // steady state: both retentions apply from cycle 2 880 on
        if n == 4_000 {
            size_at_steady = std::fs::metadata(&path).unwrap().len();
        }
    }
    let size_end = std::fs::metadata(&path).unwrap().len();
    let cycles = store.recent_cycles(usize::MAX).unwrap().len() as u64;
    let audit = store.audit_len().unwrap();
    eprintln!(
        "{CYCLES} cycles in {:.1} s: file {} KiB at cycle 4000, {} KiB at the end; {cycles} cycle records, {audit} audit entries kept",
        t0.elapsed().as_secs_f64(),
        size_at_steady / 1024,
        size_end / 1024
    );
    assert_eq!(cycles, KEEP, "cycle records are capped");
    assert!(
        audit <= (DAY / 30) as u64 + 1,
        "audit entries past the retention are dropped: {audit}"
    );
    assert!(
        (size_end as f64) <= size_at_steady as f64 * MAX_GROWTH,
        "the file grew from {size_at_steady} to {size_end} bytes"
    );
}
