//! Property tests of the pure engine (SPEC section 3) on random worlds and random sequences of
//! human changes. The world model lives in `common/gen.rs`.

#![allow(clippy::unwrap_used)]

#[path = "common/gen.rs"]
mod worldgen;

use chatapp_kommo_sync::core::engine::{
    Bootstrap, ConflictPolicy, ParkReason, Parked, Plan, Policy, Rule, dialog_reopened,
    fingerprint, plan,
};
use chatapp_kommo_sync::core::links::{
    looks_like_phone, parse_messenger_value, phone_digits, phone_of_chat_id,
};
use chatapp_kommo_sync::core::model::{CardId, CardKind, DialogKey, DialogRef, RecordId, Value};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};
use worldgen::*;

/// `cases` per property; `PROPTEST_CASES` overrides it (e.g. a long soak run).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Failures are turned into explicit regression tests below instead of files in tests/.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

fn show(p: &Plan) -> Vec<String> {
    p.writes
        .iter()
        .map(|w| {
            format!(
                "{} {:?} -> {} ({} from {})",
                w.target.record(),
                w.target.from_value().map(Value::raw),
                w.target.to_value().raw(),
                w.reason.rule,
                w.reason.source
            )
        })
        .collect()
}

/// Rule 8, direction discipline, rule 10's `from`, rule 6/9's one write per record, and that
/// every write copies its source's value across a real link. `log.before` is the world as the
/// cycle read it (in these worlds the engine's view of every record equals it).
fn check_plan(sim: &Sim, log: &CycleLog) -> Result<(), TestCaseError> {
    let m = &log.before;
    let p = &log.plan;
    let pol = &sim.policy;
    let users = &sim.users;
    let mut targets = BTreeSet::new();
    for w in &p.writes {
        let ctx = || format!("write {w:?}\nplan {:#?}\nworld {m:#?}", show(p));
        // rule 6 / no ping-pong: one write per record per cycle
        prop_assert!(
            targets.insert(w.target.record()),
            "written twice: {}",
            ctx()
        );
        // never 0, never a no-op, `from` is what the target holds (rule 10 checks against it)
        prop_assert!(w.target.to_value().raw() != 0, "to == 0: {}", ctx());
        prop_assert_eq!(
            m.current(&w.target.record()),
            Some(w.target.from_value().map(Value::raw)),
            "from: {}",
            ctx()
        );
        prop_assert!(
            w.target.from_value().map(Value::raw) != Some(w.target.to_value().raw()),
            "no-op write: {}",
            ctx()
        );
        if w.reason.rule == Rule::Bootstrap {
            prop_assert!(
                p.bootstrap,
                "bootstrap rule outside the first cycle: {}",
                ctx()
            );
        }
        match &w.target.record() {
            RecordId::Card(c) => {
                let card = &m.cards[c];
                prop_assert!(!card.deleted, "deleted card written: {}", ctx());
                prop_assert!(card.flag, "unchecked card written: {}", ctx());
                prop_assert!(
                    pol.chat_to_crm.contains(&c.kind.into()),
                    "kind not in chat_to_crm written: {}",
                    ctx()
                );
                prop_assert!(
                    users.chat_of(w.target.to_value().raw()).is_some(),
                    "unmapped Kommo user written: {}",
                    ctx()
                );
            }
            RecordId::Dialog(d) => {
                let dialog = &m.dialogs[d];
                prop_assert!(dialog.born, "unknown dialog written: {}", ctx());
                prop_assert!(!dialog.closed, "closed dialog written: {}", ctx());
                prop_assert!(
                    users.crm_of(w.target.to_value().raw()).is_some(),
                    "unmapped employee written: {}",
                    ctx()
                );
                prop_assert!(!pol.crm_to_chat.is_empty(), "dialog written: {}", ctx());
            }
        }
        match (&w.reason.source, &w.target.record()) {
            (RecordId::Card(s), target) => {
                prop_assert!(
                    matches!(
                        w.reason.rule,
                        Rule::CrmChanged | Rule::DialogOpened | Rule::Cascade | Rule::Bootstrap
                    ),
                    "card source under {}: {}",
                    w.reason.rule,
                    ctx()
                );
                let src = &m.cards[s];
                prop_assert!(src.flag, "unchecked card is a source: {}", ctx());
                prop_assert!(!src.deleted, "deleted card is a source: {}", ctx());
                prop_assert!(
                    pol.crm_to_chat.contains(&s.kind.into()),
                    "source kind not in crm_to_chat: {}",
                    ctx()
                );
                match target {
                    RecordId::Dialog(d) => {
                        prop_assert_eq!(
                            users.chat_of(src.responsible),
                            Some(w.target.to_value().raw()),
                            "dialog value is not the source's: {}",
                            ctx()
                        );
                        prop_assert!(
                            m.linked_cards(d, pol.match_phone).contains(s),
                            "source not linked: {}",
                            ctx()
                        );
                    }
                    RecordId::Card(c) => {
                        prop_assert_eq!(
                            src.responsible,
                            w.target.to_value().raw(),
                            "cascade value: {}",
                            ctx()
                        );
                        let via = m.dialogs.keys().any(|d| {
                            let l = m.linked_cards(d, pol.match_phone);
                            l.contains(s) && l.contains(c)
                        });
                        prop_assert!(via, "cascade through no dialog: {}", ctx());
                    }
                }
            }
            (RecordId::Dialog(d), RecordId::Card(c)) => {
                prop_assert!(
                    matches!(w.reason.rule, Rule::DialogChanged | Rule::Bootstrap),
                    "dialog source under {}: {}",
                    w.reason.rule,
                    ctx()
                );
                let dialog = &m.dialogs[d];
                prop_assert!(dialog.born, "{}", ctx());
                prop_assert_eq!(
                    dialog.responsible.and_then(|e| users.crm_of(e)),
                    Some(w.target.to_value().raw()),
                    "card value is not the dialog's: {}",
                    ctx()
                );
                prop_assert!(
                    m.linked_cards(d, pol.match_phone).contains(c),
                    "target not linked: {}",
                    ctx()
                );
            }
            (RecordId::Dialog(_), RecordId::Dialog(_)) => {
                prop_assert!(false, "dialog to dialog: {}", ctx());
            }
        }
    }
    Ok(())
}

/// Rules 1-3 fire only on what they name: a rule 1 write to dialog `d` needs a card of `d`'s
/// `E_in` whose value differs from its base; a rule 2 write needs `d` new or reopened; a rule 3
/// write needs its source dialog's value to differ from its base. A pair parked under another
/// fingerprint (config change) is "decided again" (rule 8), and so is a record held by a failed
/// write, so a parked entry for `d` or a held record justifies any of them.
fn check_justified(sim: &Sim, log: &CycleLog) -> Result<(), TestCaseError> {
    if log.plan.bootstrap {
        return Ok(());
    }
    let m = &log.before;
    let pol = &sim.policy;
    let fp = fingerprint(pol, &sim.users);
    let held = |r: RecordId| log.held_before.contains(&r);
    let reparked = |d: &DialogKey| {
        held(RecordId::Dialog(d.clone()))
            || log
                .snap
                .parked
                .values()
                .any(|p| p.fingerprint != fp && p.subject == RecordId::Dialog(d.clone()))
    };
    for w in &log.plan.writes {
        let ctx = || {
            format!(
                "write {w:?}\nplan {:?}\nparked before {:#?}\nworld {m:#?}\nbases {:#?}",
                show(&log.plan),
                log.snap.parked,
                log.snap
            )
        };
        match (w.reason.rule, &w.target.record(), &w.reason.source) {
            (Rule::CrmChanged, RecordId::Dialog(d), _) => {
                let changed = m.linked_cards(d, pol.match_phone).into_iter().any(|c| {
                    let card = &m.cards[&c];
                    pol.crm_to_chat.contains(&c.kind.into())
                        && card.flag
                        && !card.deleted
                        && (held(RecordId::Card(c))
                            || log
                                .snap
                                .cards
                                .get(&c)
                                .is_none_or(|b| b.responsible.0 != card.responsible))
                });
                prop_assert!(
                    changed || reparked(d),
                    "rule 1 with no changed card in E_in: {}",
                    ctx()
                );
            }
            (Rule::DialogOpened, RecordId::Dialog(d), _) => {
                let opened = match (log.snap.dialogs.get(d), log.obs.dialogs.get(d)) {
                    (None, _) => true,
                    (Some(b), Some(o)) => dialog_reopened(b, o),
                    (Some(_), None) => false,
                };
                prop_assert!(
                    opened || reparked(d),
                    "rule 2 on a dialog not opened: {}",
                    ctx()
                );
            }
            (Rule::DialogChanged, _, RecordId::Dialog(d)) => {
                let now = m.dialogs[d].responsible;
                let changed = log
                    .snap
                    .dialogs
                    .get(d)
                    .map_or(now.is_some(), |b| b.responsible.map(|e| e.0) != now);
                prop_assert!(
                    changed || reparked(d),
                    "rule 3 from a dialog that did not change: {}",
                    ctx()
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Bootstrap cycle, then each round: people act, a cycle runs (with the round's faults, if any).
fn run(sim: &mut Sim, rounds: &[Vec<Step>], faults: &[Faults]) -> Vec<CycleLog> {
    let mut logs = vec![sim.cycle()];
    for (i, r) in rounds.iter().enumerate() {
        sim.act_all(r);
        let f = faults.get(i).cloned().unwrap_or_default();
        logs.push(sim.cycle_with(&f));
    }
    logs
}

/// The aligned-world invariant: every open dialog with linked cards of the synced kinds holds
/// the mapped responsible of those cards, and those cards all agree.
fn check_aligned(sim: &Sim, when: &str) -> Result<(), TestCaseError> {
    let m = &sim.model;
    let kinds = &sim.policy.crm_to_chat;
    for (key, d) in &m.dialogs {
        if !d.born || d.closed {
            continue;
        }
        let linked: Vec<_> = m
            .linked_cards(key, sim.policy.match_phone)
            .into_iter()
            .filter(|c| kinds.contains(&c.kind.into()))
            .collect();
        if linked.is_empty() {
            continue;
        }
        let values: BTreeMap<_, _> = linked
            .iter()
            .map(|c| (*c, m.cards[c].responsible))
            .collect();
        let distinct: BTreeSet<u64> = values.values().copied().collect();
        prop_assert_eq!(
            distinct.len(),
            1,
            "{}: cards of {} disagree: {:?}\nworld {:#?}",
            when,
            key,
            values,
            m
        );
        let u = *distinct.iter().next().unwrap();
        prop_assert_eq!(
            d.responsible,
            Some(employee_of(u)),
            "{}: dialog {} is not its cards' ({:?})\nworld {:#?}",
            when,
            key,
            values,
            m
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Rule 9: a cycle run on the state the previous cycle just produced (every write confirmed,
    /// the targets holding the written values, with the Kommo event / `lastTime` the write made)
    /// plans no writes, parks nothing, sees no conflict. Checked after the bootstrap cycle
    /// (any mode) and after every round.
    #[test]
    fn idempotence(spec in world_spec(), rounds in rounds(any_step(), 0..=5)) {
        let mut sim = Sim::new(&spec);
        let mut last = sim.cycle();
        for r in std::iter::once(None).chain(rounds.iter().map(Some)) {
            if let Some(r) = r {
                sim.act_all(r);
                last = sim.cycle();
            }
            let (_, again) = sim.peek();
            prop_assert!(
                again.writes.is_empty() && again.parked.is_empty() && again.conflicts.is_empty(),
                "after {:?}\nplanned again: {:?}\nparked {:?}\nconflicts {:?}\nworld {:#?}",
                show(&last.plan), show(&again), again.parked, again.conflicts, sim.model
            );
        }
    }

    /// Rule 8 (never write what cannot be mapped, zero, a deleted card or a closed/unknown
    /// dialog), plus direction discipline, `from` and one write per record (`check_plan`), and
    /// rules 1-3 firing only on a real change (`check_justified`), on every cycle of random runs
    /// with config changes, failing writes and people racing the writes (rule 10).
    #[test]
    fn never_writes_what_cannot_be_mapped(
        spec in world_spec(),
        rounds in rounds(any_step(), 1..=6),
        faults in prop::collection::vec(faults(any_step()), 0..=6),
    ) {
        let mut sim = Sim::new(&spec);
        let first = sim.cycle();
        check_plan(&sim, &first)?;
        for (i, r) in rounds.iter().enumerate() {
            sim.act_all(r);
            let f = faults.get(i).cloned().unwrap_or_default();
            let log = sim.cycle_with(&f);
            check_plan(&sim, &log)?;
            check_justified(&sim, &log)?;
        }
    }

    /// The engine is a function: the same inputs give the same plan, and the same world built
    /// twice from the same spec goes through the same plans and ends in the same state.
    #[test]
    fn determinism(
        spec in world_spec(),
        rounds in rounds(any_step(), 0..=5),
        faults in prop::collection::vec(faults(any_step()), 0..=5),
    ) {
        let mut a = Sim::new(&spec);
        let mut b = Sim::new(&spec);
        let (oa, pa) = a.peek();
        let again = plan(&a.snap, &oa, &a.policy, &a.users);
        prop_assert_eq!(&pa, &again);
        let la = run(&mut a, &rounds, &faults);
        let lb = run(&mut b, &rounds, &faults);
        prop_assert_eq!(la.len(), lb.len());
        for (x, y) in la.iter().zip(&lb) {
            prop_assert_eq!(&x.obs, &y.obs);
            prop_assert_eq!(&x.plan, &y.plan);
            prop_assert_eq!(&x.confirmed, &y.confirmed);
        }
        prop_assert_eq!(&a.snap, &b.snap);
        prop_assert_eq!(&a.model, &b.model);
    }

    /// Direction discipline: with chat_to_crm empty no card is ever written; with crm_to_chat
    /// empty no dialog is ever written; in every run, a card kind outside chat_to_crm is never
    /// written and a card whose flag is unchecked is never written nor a source (`check_plan`).
    #[test]
    fn direction_discipline(
        spec in world_spec(),
        which in 0u8..3,
        rounds in rounds(any_step(), 1..=5),
        faults in prop::collection::vec(faults(any_step()), 0..=5),
    ) {
        let mut spec = spec;
        match which {
            0 => spec.policy.chat_to_crm.clear(),
            1 => spec.policy.crm_to_chat.clear(),
            _ => {}
        }
        let mut sim = Sim::new(&spec);
        let logs = run(&mut sim, &rounds, &faults);
        for log in &logs {
            check_plan(&sim, log)?;
            for w in &log.plan.writes {
                match (&w.target.record(), which) {
                    (RecordId::Card(_), 0) => prop_assert!(false, "card written with chat_to_crm empty: {:?}", w),
                    (RecordId::Dialog(_), 1) => prop_assert!(false, "dialog written with crm_to_chat empty: {:?}", w),
                    _ => {}
                }
            }
        }
    }

    /// Convergence: after 3-8 rounds of human changes, each followed by a cycle, three idle
    /// cycles plan nothing.
    #[test]
    fn convergence(spec in world_spec(), rounds in rounds(any_step(), 3..=8)) {
        let mut sim = Sim::new(&spec);
        let logs = run(&mut sim, &rounds, &[]);
        for i in 0..3 {
            let idle = sim.cycle();
            prop_assert!(
                idle.plan.writes.is_empty(),
                "idle cycle {} writes {:?}\nlast round {:?}\nworld {:#?}",
                i, show(&idle.plan), show(&logs.last().unwrap().plan), sim.model
            );
        }
    }

    /// Convergence under faults: writes fail and people race them during the rounds; once the
    /// faults stop, the first idle cycle re-decides what was held, and from the second on nothing
    /// is written.
    #[test]
    fn convergence_after_faults(
        spec in world_spec(),
        rounds in rounds(any_step(), 3..=8),
        faults in prop::collection::vec(faults(any_step()), 3..=8),
    ) {
        let mut sim = Sim::new(&spec);
        run(&mut sim, &rounds, &faults);
        let first = sim.cycle();
        check_plan(&sim, &first)?;
        for i in 1..4 {
            let idle = sim.cycle();
            prop_assert!(
                idle.plan.writes.is_empty(),
                "idle cycle {} writes {:?}\nfirst idle cycle wrote {:?}\nworld {:#?}",
                i, show(&idle.plan), show(&first.plan), sim.model
            );
        }
    }

    /// In a world where the rules can align every pair (every user mapped, every flag checked,
    /// crm_to_chat == chat_to_crm, each card linked to at most one dialog, people pick mapped
    /// users only, bootstrap crm or chat), every cycle leaves each open dialog holding the mapped
    /// responsible of its linked cards, which all agree.
    #[test]
    fn aligned_worlds_stay_aligned(spec in aligned_world_spec(), rounds in rounds(aligned_step(), 1..=8)) {
        let mut sim = Sim::new(&spec);
        let first = sim.cycle();
        check_plan(&sim, &first)?;
        check_aligned(&sim, "after bootstrap")?;
        for (i, r) in rounds.iter().enumerate() {
            sim.act_all(r);
            let log = sim.cycle();
            check_plan(&sim, &log)?;
            check_aligned(&sim, &format!("after round {i}: {r:?}; plan {:?}", show(&log.plan)))?;
        }
    }

    /// Same, with failing and raced writes during the rounds: two fault-free idle cycles bring
    /// the world back to aligned, and a third writes nothing.
    #[test]
    fn aligned_worlds_realign_after_faults(
        spec in aligned_world_spec(),
        rounds in rounds(aligned_step(), 1..=6),
        faults in prop::collection::vec(faults(aligned_step()), 1..=6),
    ) {
        let mut sim = Sim::new(&spec);
        run(&mut sim, &rounds, &faults);
        sim.cycle();
        sim.cycle();
        check_aligned(&sim, "after two idle cycles")?;
        let last = sim.cycle();
        prop_assert!(last.plan.writes.is_empty(), "{:?}", show(&last.plan));
    }

    /// No ping-pong: in every cycle of a run, each record is written at most once, and a record
    /// the daemon wrote is not written back in the next cycle unless a person acted in between.
    #[test]
    fn no_ping_pong(spec in world_spec(), rounds in rounds(any_step(), 1..=8)) {
        let mut sim = Sim::new(&spec);
        let mut prev = sim.cycle();
        for r in &rounds {
            sim.act_all(r);
            let log = sim.cycle();
            let mut seen = BTreeSet::new();
            for w in &log.plan.writes {
                prop_assert!(seen.insert(w.target.record()), "{} written twice: {:?}", w.target.record(), show(&log.plan));
            }
            if r.is_empty() {
                prop_assert!(
                    log.plan.writes.is_empty(),
                    "no one acted, yet {:?} after {:?}", show(&log.plan), show(&prev.plan)
                );
            }
            prev = log;
        }
    }

    /// Liveness of rules 1 and 4: after random rounds (people only), a person sets one card of
    /// `crm_to_chat` (flag checked, not deleted) to a mapped user. After the next cycle every open
    /// dialog linked to it holds that user's employee, and every card of those dialogs' `E_out`
    /// (flag checked, not deleted) holds the user: the change is the latest, so it wins everywhere.
    #[test]
    fn a_card_change_reaches_its_dialogs(
        spec in world_spec(),
        rounds in rounds(people_step(), 0..=5),
        pick in any::<prop::sample::Index>(),
        user in 1u64..=6,
    ) {
        let mut sim = Sim::new(&spec);
        run(&mut sim, &rounds, &[]);
        let pol = sim.policy.clone();
        let m = &sim.model;
        let candidates: Vec<CardId> = m.cards.iter()
            .filter(|(id, c)| pol.crm_to_chat.contains(&id.kind.into()) && c.flag && !c.deleted && c.responsible != user)
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() || !sim.mapped.contains(&user) {
            return Ok(());
        }
        let c = candidates[pick.index(candidates.len())];
        sim.model.tick(7);
        sim.model.set_card(c, user);
        let log = sim.cycle();
        let m = &sim.model;
        for (key, d) in &m.dialogs {
            let linked = m.linked_cards(key, pol.match_phone);
            if !d.born || d.closed || !linked.contains(&c) {
                continue;
            }
            prop_assert_eq!(
                d.responsible, Some(employee_of(user)),
                "{} set to {}: dialog {} not moved; plan {:?}\nbefore {:#?}", c, user, key, show(&log.plan), log.before
            );
            for x in linked.iter().filter(|x| pol.chat_to_crm.contains(&x.kind.into())) {
                let card = &m.cards[x];
                if card.flag && !card.deleted {
                    prop_assert_eq!(
                        card.responsible, user,
                        "{} set to {}: {} (E_out of {}) not moved; plan {:?}\nbefore {:#?}", c, user, x, key, show(&log.plan), log.before
                    );
                }
            }
        }
    }

    /// Liveness of rule 3: after random rounds (people only), a person sets one dialog to a mapped
    /// employee, nothing else changes. After the next cycle every card of its `E_out` (flag
    /// checked, not deleted) holds the matching Kommo user.
    #[test]
    fn a_dialog_change_reaches_its_cards(
        spec in world_spec(),
        rounds in rounds(people_step(), 0..=5),
        pick in any::<prop::sample::Index>(),
        n in 1u64..=6,
    ) {
        let mut sim = Sim::new(&spec);
        run(&mut sim, &rounds, &[]);
        let pol = sim.policy.clone();
        let e = employee_of(n);
        let candidates: Vec<DialogKey> = sim.model.dialogs.iter()
            .filter(|(_, d)| d.born && d.responsible != Some(e))
            .map(|(k, _)| k.clone())
            .collect();
        if candidates.is_empty() || !sim.mapped.contains(&n) {
            return Ok(());
        }
        let key = candidates[pick.index(candidates.len())].clone();
        sim.model.tick(7);
        sim.model.set_dialog(&key, Some(e));
        let log = sim.cycle();
        let m = &sim.model;
        for x in m.linked_cards(&key, pol.match_phone).iter().filter(|x| pol.chat_to_crm.contains(&x.kind.into())) {
            let card = &m.cards[x];
            if card.flag && !card.deleted {
                prop_assert_eq!(
                    card.responsible, n,
                    "dialog {} set to {}: {} not moved; plan {:?}\nbefore {:#?}", key, e, x, show(&log.plan), log.before
                );
            }
        }
    }

    /// Rule 12: `bootstrap = adopt` writes nothing on the first cycle, whatever the world.
    #[test]
    fn bootstrap_adopt_writes_nothing(spec in world_spec()) {
        let mut spec = spec;
        spec.policy.bootstrap = Bootstrap::Adopt;
        let mut sim = Sim::new(&spec);
        let log = sim.cycle();
        prop_assert!(log.plan.bootstrap);
        prop_assert!(log.plan.writes.is_empty(), "{:?}", show(&log.plan));
        prop_assert!(log.plan.conflicts.is_empty());
        prop_assert!(sim.snap.bootstrapped);
    }
}

// ------------------------------------------------------------------------------------------------
// links: Messenger values and phones

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "-", "(", ")", ".", "  ", " - "])
}

proptest! {
    #![proptest_config(config(256))]

    /// A phone written with any separators parses back to its digits, as a phone reference.
    #[test]
    fn formatted_phone_parses_to_its_digits(
        digits in "[0-9]{5,15}",
        plus in any::<bool>(),
        seps in prop::collection::vec(separator(), 16),
        pad in "[ ]{0,2}",
    ) {
        let mut s = String::new();
        if plus {
            s.push('+');
        }
        for (i, ch) in digits.chars().enumerate() {
            s.push_str(seps[i]);
            s.push(ch);
        }
        let raw = format!("{pad}{s}{pad}");
        prop_assert_eq!(phone_digits(&raw), digits.clone());
        prop_assert!(looks_like_phone(&raw), "{:?}", raw);
        prop_assert_eq!(parse_messenger_value(&raw), Some(DialogRef::Phone(digits.clone())));
        prop_assert_eq!(phone_of_chat_id(&format!("{digits}@c.us")), Some(digits.clone()));
        prop_assert_eq!(phone_digits(&phone_digits(&raw)), digits);
    }

    /// A `licenseId:messengerType:chatId` triple round-trips (the chat id may itself hold
    /// colons), and so does a DialogKey's machine form (`full_ref`).
    #[test]
    fn full_reference_round_trips(
        license in any::<u64>(),
        messenger in "[A-Za-z][A-Za-z0-9_]{0,11}",
        chat in "[A-Za-z0-9@._+:-]{0,20}[A-Za-z0-9@._+-]",
        pad in "[ \t]{0,2}",
    ) {
        let key = DialogKey::new(license, &messenger, &chat);
        let raw = format!("{pad}{license}:{messenger}:{chat}{pad}");
        prop_assert_eq!(parse_messenger_value(&raw), Some(DialogRef::Full(key.clone())));
        prop_assert_eq!(parse_messenger_value(&key.full_ref()), Some(DialogRef::Full(key)));
    }

    /// Anything else that is not blank parses to something; blank parses to nothing.
    #[test]
    fn any_value_parses(raw in "\\PC{0,30}") {
        let got = parse_messenger_value(&raw);
        prop_assert_eq!(got.is_none(), raw.trim().is_empty());
        if let Some(DialogRef::Phone(p)) = &got {
            prop_assert!(p.len() >= 5 && p.chars().all(|c| c.is_ascii_digit()));
        }
        if let Some(DialogRef::ChatId(c)) = &got {
            prop_assert_eq!(c.as_str(), raw.trim());
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Regressions: minimal, deterministic reproductions of what the properties found.

fn spec_card(id: CardId, user: u64, dialogs: &[usize], contacts: &[u64]) -> CardSpec {
    CardSpec {
        id,
        responsible: user,
        event_time: Some(100),
        flag: true,
        deleted: false,
        contacts: contacts.to_vec(),
        dialogs: dialogs.to_vec(),
        phones: vec![],
    }
}

fn spec_dialog(born: bool, employee: Option<u64>) -> DialogSpec {
    DialogSpec {
        born,
        responsible: employee,
        closed: false,
        last_time: 100,
    }
}

fn spec(
    dialogs: Vec<DialogSpec>,
    cards: Vec<CardSpec>,
    mapped: &[u64],
    crm_to_chat: &[CardKind],
    chat_to_crm: &[CardKind],
) -> WorldSpec {
    WorldSpec {
        dialogs,
        cards,
        mapped: mapped.to_vec(),
        policy: Policy {
            crm_to_chat: crm_to_chat.iter().copied().map(Into::into).collect(),
            chat_to_crm: chat_to_crm.iter().copied().map(Into::into).collect(),
            leads: Default::default(),
            conflict: ConflictPolicy::Newest,
            clock_skew_secs: 5,
            bootstrap: Bootstrap::Adopt,
            max_writes_per_cycle: 100,
            match_phone: false,
        },
        partial: false,
    }
}

const CONTACT_10: CardId = CardId {
    kind: CardKind::Contact,
    id: 10,
};
const LEAD_20: CardId = CardId {
    kind: CardKind::Lead,
    id: 20,
};

/// A write failed, so the source's base was held; the person then put the source back to its
/// base value. The confirmed half of the decision stays applied and nothing ever re-aligns it.
#[test]
fn regression_held_change_reverted_by_a_person_leaves_a_half_applied_decision() {
    let d0 = dialog_key(0);
    let mut sim = Sim::new(&spec(
        vec![spec_dialog(true, Some(105))],
        vec![
            spec_card(CONTACT_10, 5, &[0], &[]),
            spec_card(LEAD_20, 5, &[], &[10]),
        ],
        &[1, 2, 3, 4, 5, 6],
        &[],
        &[CardKind::Lead, CardKind::Contact],
    ));
    assert!(sim.cycle().plan.writes.is_empty(), "adopt");
    // a person moves the dialog to 101; of the two rule 3 writes, lead:20's fails
    sim.model.tick(10);
    sim.model.set_dialog(&d0, Some(101));
    let log = sim.cycle_with(&Faults {
        fail: vec![true, false],
        races: vec![],
    });
    assert_eq!(
        show(&log.plan),
        vec![
            "lead 20 Some(5) -> 1 (rule 3 (dialog_changed) from dialog 79990000001@c.us (grWhatsApp, license 1))",
            "contact 10 Some(5) -> 1 (rule 3 (dialog_changed) from dialog 79990000001@c.us (grWhatsApp, license 1))",
        ]
    );
    assert_eq!(log.confirmed, vec![false, true]);
    // the person moves the dialog back to 105 before the next cycle
    sim.model.tick(10);
    sim.model.set_dialog(&d0, Some(105));
    let log = sim.cycle();
    // The dialog's latest change (to 105) must reach contact:10, which holds the 1 of the change
    // that was undone: with no failure the second cycle would write 5 to both cards.
    assert_eq!(
        sim.model.cards[&CONTACT_10].responsible,
        5,
        "contact:10 keeps 1 while dialog and lead:20 hold 105/5; plan: {:?}",
        show(&log.plan)
    );
}

/// A contact's "unknown dialog" park is never cleared once the dialog appears; after any config
/// change it re-triggers as a change of the contact in every cycle, so rule 1 fires with no card
/// changed and undoes a person's dialog change while nobody acts.
#[test]
fn regression_stale_unknown_dialog_park_replays_a_card_change_forever() {
    let d0 = dialog_key(0);
    let mut sim = Sim::new(&spec(
        vec![spec_dialog(false, None)],
        vec![spec_card(CONTACT_10, 1, &[0], &[])],
        &[1, 2, 4],
        &[CardKind::Contact],
        &[],
    ));
    sim.cycle();
    sim.model.tick(10);
    sim.model.set_card(CONTACT_10, 2);
    let log = sim.cycle(); // dialog 1 does not exist yet: parked as unknown
    assert!(matches!(
        log.plan.parked[..],
        [Parked {
            reason: ParkReason::DialogUnknown(_),
            ..
        }]
    ));
    sim.model.tick(10);
    sim.model.open(&d0, Some(104));
    let log = sim.cycle(); // the dialog appears: rule 2 gives it the contact's responsible
    assert_eq!(log.plan.writes.len(), 1);
    assert_eq!(log.plan.writes[0].target.to_value().raw(), 102);
    sim.map_user(3); // an unrelated config change: the fingerprint changes
    sim.cycle();
    sim.model.tick(10);
    sim.model.set_dialog(&d0, Some(104)); // a person moves the dialog; nothing else changes
    sim.cycle();
    let log = sim.cycle(); // nobody acted
    assert!(
        log.plan.writes.is_empty(),
        "nobody acted, yet {:?}; parked: {:?}",
        show(&log.plan),
        sim.snap.parked.keys().collect::<Vec<_>>()
    );
}

/// Deciding a parked pair again after a config change marks its trigger card as changed for every
/// dialog it is linked to, not only the parked one: rule 1 fires on another dialog whose card did
/// not change and undoes a person's change there.
#[test]
fn regression_reparked_pair_replays_its_card_change_on_other_dialogs() {
    let (d0, d1) = (dialog_key(0), dialog_key(1));
    let mut sim = Sim::new(&spec(
        vec![spec_dialog(true, Some(101)), spec_dialog(true, Some(101))],
        vec![spec_card(CONTACT_10, 1, &[0, 1], &[])],
        &[1, 2, 4],
        &[CardKind::Contact],
        &[],
    ));
    sim.cycle();
    sim.model.tick(10);
    sim.model.close(&d0);
    sim.model.tick(10);
    sim.model.set_card(CONTACT_10, 2);
    let log = sim.cycle(); // dialog 0 is closed: parked; dialog 1 takes 102
    assert_eq!(log.plan.writes.len(), 1);
    assert_eq!(log.plan.parked[0].reason, ParkReason::DialogClosed);
    sim.model.tick(10);
    sim.model.set_dialog(&d1, Some(104)); // a person moves dialog 1 (chat_to_crm is empty)
    assert!(sim.cycle().plan.writes.is_empty());
    sim.map_user(3); // config change: the parked pair (dialog 0) is decided again
    let log = sim.cycle();
    assert!(
        log.plan.writes.is_empty(),
        "contact:10 did not change, dialog 0 is still closed, yet {:?}",
        show(&log.plan)
    );
}
