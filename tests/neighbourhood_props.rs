//! The engine decides the same from the neighbourhood of what a cycle observed (what the store
//! loads) as from every base, after dropping the observations that equal their bases (what a
//! full cycle keeps): checked on every cycle of random runs, with config changes, failing writes
//! and people racing the writes. `src/core/neighbourhood.rs` says why this should hold.

#![allow(clippy::unwrap_used)]

#[path = "common/gen.rs"]
mod worldgen;

use chatapp_kommo_sync::core::engine::{Observations, Plan, Snapshot, plan};
use chatapp_kommo_sync::core::first_run::{BATCH, plan_first_run};
use chatapp_kommo_sync::core::model::RecordId;
use chatapp_kommo_sync::core::neighbourhood::{
    Frame, card_unchanged, dialog_unchanged, neighbourhood, staged_state,
};
use proptest::prelude::*;
use worldgen::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

/// `obs` without the records that equal their bases.
fn changed_only(snap: &Snapshot, obs: &Observations) -> Observations {
    let mut out = obs.clone();
    out.cards.retain(|id, o| {
        !snap
            .cards
            .get(id)
            .is_some_and(|b| card_unchanged(b, o, obs.now))
    });
    out.dialogs.retain(|k, o| {
        !snap
            .dialogs
            .get(k)
            .is_some_and(|b| dialog_unchanged(b, o, obs.now))
    });
    out
}

/// Everything a plan decides, without the bases it settles (those of dropped records differ).
fn decisions(p: &Plan) -> Plan {
    Plan {
        settle_cards: Default::default(),
        settle_dialogs: Default::default(),
        ..p.clone()
    }
}

/// A first run plans group by group from every dialog and the cards that may link to one (the
/// others are staged and stored as read): the same decisions, in the same order, and the same
/// bases, as a plan from everything; with one group a batch, and with every group in one batch.
/// `snap` may hold bases (a first run after shadow mode).
fn check_first_run(
    sim: &Sim,
    snap: &Snapshot,
    all_obs: &Observations,
    full: &Plan,
) -> Result<(), TestCaseError> {
    let now = all_obs.now;
    let mut read = Snapshot::default();
    let mut obs = all_obs.clone();
    // some cards with a base stay observed beside the staging (a first run after shadow mode
    // observes the cards a `lead_status_changed` event moved), the others are staged
    obs.cards
        .retain(|id, _| snap.cards.contains_key(id) && id.id % 2 == 0);
    for (id, o) in &all_obs.cards {
        if !obs.cards.contains_key(id) {
            let st = staged_state(snap.cards.get(id), o.clone(), now);
            read.cards.insert(*id, st);
        }
    }
    for batch in [1, BATCH] {
        let mut frame = Snapshot {
            dialogs: snap.dialogs.clone(),
            parked: snap.parked.clone(),
            held: snap.held.clone(),
            ..Snapshot::default()
        };
        let (p, taken) = plan_first_run(
            &read,
            snap,
            &mut frame,
            obs.clone(),
            &sim.policy,
            &sim.users,
            batch,
        )
        .expect("in memory");
        prop_assert_eq!(decisions(&p), decisions(full), "batch {}", batch);
        // a card a write names is settled by the plan: a failed write keeps its old base
        for w in &p.writes {
            for r in std::iter::once(w.target.record()).chain(w.holds.iter().cloned()) {
                if let RecordId::Card(c) = r {
                    prop_assert!(
                        p.settle_cards.contains_key(&c) || !full.settle_cards.contains_key(&c),
                        "card {} named by a write",
                        c
                    );
                    prop_assert!(
                        !p.settle_cards.contains_key(&c)
                            || taken.contains(&c)
                            || !read.cards.contains_key(&c),
                        "card {} settled but not taken",
                        c
                    );
                }
            }
        }
        let mut settled = p.settle_cards.clone();
        for (id, st) in &read.cards {
            if taken.contains(id) {
                prop_assert!(settled.contains_key(id), "taken card {} not settled", id);
            } else {
                prop_assert!(
                    settled.insert(*id, st.clone()).is_none(),
                    "card {} settled and stored as read",
                    id
                );
            }
        }
        prop_assert_eq!(&settled, &full.settle_cards, "batch {}", batch);
        prop_assert_eq!(&p.settle_dialogs, &full.settle_dialogs, "batch {}", batch);
    }
    Ok(())
}

fn check(sim: &Sim, log: &CycleLog) -> Result<(), TestCaseError> {
    if !log.snap.bootstrapped {
        return check_first_run(sim, &log.snap, &log.obs, &log.plan);
    }
    // the same bases and observations as a first run (after shadow mode, bases exist)
    let mut unbooted = log.snap.clone();
    unbooted.bootstrapped = false;
    let full = plan(&unbooted, &log.obs, &sim.policy, &sim.users);
    check_first_run(sim, &unbooted, &log.obs, &full)?;
    let obs = changed_only(&log.snap, &log.obs);
    let frame = Frame {
        parked: log.snap.parked.clone(),
        held: log.snap.held.clone(),
        bootstrapped: true,
        match_phone: sim.policy.match_phone,
    };
    let near = neighbourhood(&log.snap, frame, &obs).expect("in memory");
    prop_assert!(near.cards.len() <= log.snap.cards.len());
    let p = plan(&near, &obs, &sim.policy, &sim.users);
    prop_assert_eq!(decisions(&p), decisions(&log.plan));
    // every base the full plan settles differently from before is settled the same
    for (id, st) in &log.plan.settle_cards {
        if log.snap.cards.get(id) != Some(st) {
            prop_assert_eq!(p.settle_cards.get(id), Some(st), "card {}", id);
        }
    }
    for (k, st) in &log.plan.settle_dialogs {
        if log.snap.dialogs.get(k) != Some(st) {
            prop_assert_eq!(p.settle_dialogs.get(k), Some(st), "dialog {}", k);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Plans agree on every cycle of random runs (config changes included).
    #[test]
    fn the_neighbourhood_decides_like_every_base(
        spec in world_spec(),
        rounds in rounds(any_step(), 1..=6),
        faults in prop::collection::vec(faults(people_step()), 0..=6),
    ) {
        let mut sim = Sim::new(&spec);
        let first = sim.cycle();
        check(&sim, &first)?;
        for (i, r) in rounds.iter().enumerate() {
            sim.act_all(r);
            let f = faults.get(i).cloned().unwrap_or_default();
            let log = sim.cycle_with(&f);
            check(&sim, &log)?;
        }
    }
}

/// The store's indexes answer like a scan of the same bases, after every cycle of random runs
/// (bases rewritten, links added and dropped: the old index entries must go).
fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn check_store_indexes(
    store: &chatapp_kommo_sync::store::Store,
    snap: &Snapshot,
) -> Result<(), TestCaseError> {
    use chatapp_kommo_sync::core::neighbourhood::{
        BaseLookup, card_terms, dialog_index_terms, dialog_terms,
    };
    let mut commit = chatapp_kommo_sync::store::CycleCommit::default();
    commit.settlement.cards = snap.cards.iter().map(|(k, v)| (*k, v.clone())).collect();
    commit.settlement.dialogs = snap
        .dialogs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    store.commit_cycle(&commit).expect("commit");
    let r = store.bases().expect("bases");
    let mut terms: Vec<u64> = snap.cards.values().flat_map(card_terms).collect();
    for (k, d) in &snap.dialogs {
        terms.extend(dialog_terms(k, d.phone.as_deref()));
        terms.extend(dialog_index_terms(k, d.phone.as_deref()));
    }
    for t in terms {
        prop_assert_eq!(
            sorted(r.cards_with(t).unwrap()),
            sorted(snap.cards_with(t).unwrap())
        );
        prop_assert_eq!(
            sorted(r.dialogs_with(t).unwrap()),
            sorted(snap.dialogs_with(t).unwrap())
        );
    }
    for c in snap.cards.keys() {
        let got = r.card(c).unwrap();
        prop_assert_eq!(got.as_ref(), snap.cards.get(c));
        prop_assert_eq!(
            sorted(r.cards_of_contact(c.id).unwrap()),
            sorted(snap.cards_of_contact(c.id).unwrap())
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..config() })]

    /// The redb store's link indexes stay equal to a scan of the bases.
    #[test]
    fn the_store_indexes_follow_every_change(
        spec in world_spec(),
        rounds in rounds(any_step(), 1..=5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = chatapp_kommo_sync::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let mut sim = Sim::new(&spec);
        sim.cycle();
        check_store_indexes(&store, &sim.snap)?;
        for r in &rounds {
            sim.act_all(r);
            sim.cycle();
            check_store_indexes(&store, &sim.snap)?;
        }
    }
}
