//! Throughput of the pure planner (no I/O): linked pairs decided per second, on a full cycle with
//! nothing changed and with 1% of the cards changed. `cargo bench --bench planner`.
//!
//! A plain timing loop (median of several runs), not criterion: one figure does not need its
//! dependency tree, and on shared machines the ratio between the two cases in one run is what to
//! compare.

use chatapp_kommo_sync::core::engine::{
    Bootstrap, ConflictPolicy, Observations, Policy, Snapshot, plan,
};
use chatapp_kommo_sync::core::model::{
    CardId, CardKind, CardObs, CardState, DialogKey, DialogObs, DialogRef, DialogState, EmployeeId,
    KommoUserId, SyncKind,
};
use chatapp_kommo_sync::core::usermap::UserMap;
use std::time::Instant;

fn world(dialogs: u64, leads_per: u64) -> (Snapshot, Observations) {
    let mut snap = Snapshot {
        bootstrapped: true,
        ..Default::default()
    };
    let mut obs = Observations {
        now: 1_000_000,
        ..Default::default()
    };
    for d in 0..dialogs {
        let key = DialogKey::new(1, "grWhatsApp", &format!("7{:010}@c.us", d));
        let user = 1 + d % 20;
        snap.dialogs.insert(
            key.clone(),
            DialogState {
                responsible: Some(EmployeeId(100 + user)),
                changed_at: 10,
                last_time: 10,
                session: 1,
                closed: false,
                phone: None,
            },
        );
        obs.dialogs.insert(
            key.clone(),
            DialogObs {
                responsible: Some(EmployeeId(100 + user)),
                last_time: 10,
                session: 1,
                closed: false,
                phone: None,
            },
        );
        let contact = CardId::new(CardKind::Contact, d);
        let st = CardState {
            responsible: KommoUserId(user),
            changed_at: 10,
            flag: true,
            deleted: false,
            contacts: vec![],
            dialog_refs: vec![DialogRef::Full(key)],
            phones: vec![],
            lead: Default::default(),
        };
        obs.cards.insert(contact, obs_of(&st));
        snap.cards.insert(contact, st);
        for l in 0..leads_per {
            let lead = CardId::new(CardKind::Lead, d * leads_per + l);
            let st = CardState {
                responsible: KommoUserId(user),
                changed_at: 10,
                flag: true,
                deleted: false,
                contacts: vec![d],
                dialog_refs: vec![],
                phones: vec![],
                lead: Default::default(),
            };
            obs.cards.insert(lead, obs_of(&st));
            snap.cards.insert(lead, st);
        }
    }
    (snap, obs)
}

fn obs_of(st: &CardState) -> CardObs {
    CardObs {
        responsible: st.responsible,
        flag: st.flag,
        deleted: st.deleted,
        contacts: st.contacts.clone(),
        dialog_refs: st.dialog_refs.clone(),
        phones: st.phones.clone(),
        lead: Default::default(),
        event_time: None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let policy = Policy {
        crm_to_chat: [SyncKind::Contact].into(),
        chat_to_crm: [SyncKind::Lead].into(),
        leads: Default::default(),
        conflict: ConflictPolicy::Newest,
        clock_skew_secs: 5,
        bootstrap: Bootstrap::Adopt,
        max_writes_per_cycle: usize::MAX,
        match_phone: true,
    };
    let pairs: Vec<(KommoUserId, EmployeeId)> = (1..=20)
        .map(|n| (KommoUserId(n), EmployeeId(100 + n)))
        .collect();
    let users = UserMap::build(&pairs, false, &[], &[]);
    let dialogs: u64 = std::env::var("PLANNER_DIALOGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let (snap, idle) = world(dialogs, 4);
    let mut changed = idle.clone();
    for (i, (id, o)) in changed.cards.iter_mut().enumerate() {
        if i % 100 == 0 && id.kind == CardKind::Contact {
            o.responsible = KommoUserId(1 + (o.responsible.0 % 20));
            o.event_time = Some(999_000);
        }
    }
    let n_pairs = snap.cards.len();
    println!(
        "planner: {dialogs} dialogs, {} cards ({} linked card-dialog pairs)",
        snap.cards.len(),
        n_pairs
    );
    for (name, obs) in [
        ("full cycle, nothing changed", &idle),
        ("full cycle, 1% of contacts changed", &changed),
    ] {
        let mut rates = vec![];
        let mut writes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let p = plan(&snap, obs, &policy, &users);
            let s = t.elapsed().as_secs_f64();
            writes = p.writes.len();
            rates.push(n_pairs as f64 / s);
        }
        println!(
            "  {name:<36} {:>10.0} pairs/s (median of 5), {writes} writes planned",
            median(rates)
        );
    }
}
