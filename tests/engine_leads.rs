//! Lead stages in the pure engine (issue 9): closed leads left alone, pipelines, incoming leads as
//! their own kind. Scenarios on small worlds, and a property over random ones.

#![allow(clippy::unwrap_used)]

#[path = "common/world.rs"]
mod world;

use chatapp_kommo_sync::core::engine::{
    Bootstrap, LeadsPolicy, Observations, Policy, Rule, Snapshot, plan, sync_kind,
};
use chatapp_kommo_sync::core::model::{
    CardId, CardKind, CardObs, CardState, DialogKey, DialogObs, DialogRef, DialogState, EmployeeId,
    KommoUserId, LeadStage, RecordId, StageKind, SyncKind,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use world::*;

fn d1() -> String {
    format!("dialog:{}", dkey(1).chat_id)
}

fn policy_of(crm_to_chat: &[SyncKind], chat_to_crm: &[SyncKind]) -> Policy {
    Policy {
        crm_to_chat: crm_to_chat.iter().copied().collect(),
        chat_to_crm: chat_to_crm.iter().copied().collect(),
        ..policy(&[], &[])
    }
}

/// Contact 10 on dialog 1 (employee 101), with an open lead 20, a won lead 21 and a lost lead 22,
/// all user 1, all in pipeline A.
fn contact_with_three_leads(p: Policy) -> World {
    let mut w = World::new(p);
    w.base_contact(10, 1, 100, Some(1))
        .base_lead(20, 1, 100, &[10])
        .base_lead(21, 1, 100, &[10])
        .base_lead(22, 1, 100, &[10])
        .base_dialog(1, Some(101), 100)
        .base_stage(20, open_in(PIPE_A))
        .base_stage(21, won_in(PIPE_A))
        .base_stage(22, lost_in(PIPE_A));
    w
}

const BOTH_WAYS: [SyncKind; 2] = [SyncKind::Contact, SyncKind::Lead];

#[test]
fn the_open_lead_follows_the_dialog_and_the_won_and_lost_ones_keep_their_manager() {
    let mut w = contact_with_three_leads(policy_of(&BOTH_WAYS, &BOTH_WAYS));
    w.dialog_changed(1, Some(102), 500);
    let p = w.plan();
    assert_eq!(
        writes(&p),
        vec![("lead:20".to_string(), 2), ("contact:10".to_string(), 2)]
    );
    assert!(
        p.writes
            .iter()
            .all(|x| x.reason.rule == Rule::DialogChanged)
    );
}

#[test]
fn bootstrap_chat_aligns_only_the_open_lead() {
    let mut w = contact_with_three_leads(policy_of(&BOTH_WAYS, &BOTH_WAYS));
    w.policy.bootstrap = Bootstrap::Chat;
    w.snap.bootstrapped = false;
    // the first cycle observes everything: the dialog already holds employee 102
    for id in [contact(10), lead(20), lead(21), lead(22)] {
        w.observe_card(id, |_| {});
    }
    w.dialog_changed(1, Some(102), 90);
    let p = w.plan();
    let targets: BTreeSet<String> = writes(&p).into_iter().map(|(t, _)| t).collect();
    assert!(targets.contains("lead:20"), "{:?}", writes(&p));
    assert!(!targets.contains("lead:21") && !targets.contains("lead:22"));
    assert!(p.writes.iter().all(|x| x.reason.rule == Rule::Bootstrap));
}

#[test]
fn bootstrap_crm_never_takes_the_dialog_from_a_closed_lead() {
    let mut w = contact_with_three_leads(policy_of(&[SyncKind::Lead], &[]));
    w.policy.bootstrap = Bootstrap::Crm;
    w.snap.bootstrapped = false;
    // the won lead is the latest-changed card of the dialog, the open one older
    w.observe_card(lead(20), |o| o.event_time = Some(50))
        .observe_card(lead(21), |o| {
            o.responsible = KommoUserId(4);
            o.event_time = Some(90);
        })
        .observe_card(lead(22), |_| {})
        .observe_dialog(1, |_| {});
    let p = w.plan();
    assert!(
        p.writes.is_empty(),
        "the open lead agrees (user 1 = employee 101): {:?}",
        writes(&p)
    );
}

#[test]
fn a_person_changing_a_closed_lead_does_not_move_the_dialog_an_open_one_does() {
    let mut w = contact_with_three_leads(policy_of(&[SyncKind::Lead], &[]));
    w.card_changed(lead(21), 3, 500);
    assert!(w.plan().writes.is_empty(), "won lead changed");
    let mut w = contact_with_three_leads(policy_of(&[SyncKind::Lead], &[]));
    w.card_changed(lead(22), 3, 500);
    assert!(w.plan().writes.is_empty(), "lost lead changed");
    let mut w = contact_with_three_leads(policy_of(&[SyncKind::Lead], &[]));
    w.card_changed(lead(20), 3, 500);
    assert_eq!(writes(&w.plan()), vec![(d1(), 103)]);
}

#[test]
fn a_closed_lead_edited_last_is_not_the_last_changed_card() {
    let mut w = contact_with_three_leads(policy_of(&[SyncKind::Contact, SyncKind::Lead], &[]));
    // the won lead's responsible changed most recently (years of history on a real account)
    w.base_stage(21, won_in(PIPE_A));
    w.snap.cards.get_mut(&lead(21)).unwrap().changed_at = 900;
    w.snap.cards.get_mut(&lead(21)).unwrap().responsible = KommoUserId(4);
    w.card_changed(contact(10), 2, 700);
    assert_eq!(writes(&w.plan()), vec![(d1(), 102)]);
}

#[test]
fn a_lead_that_closes_is_not_written_after() {
    let mut w = contact_with_three_leads(policy_of(&[], &[SyncKind::Lead]));
    w.stage_changed(20, won_in(PIPE_A));
    assert!(
        w.run_and_apply().writes.is_empty(),
        "closing writes nothing"
    );
    assert_eq!(w.snap.cards[&lead(20)].lead, won_in(PIPE_A));
    w.dialog_changed(1, Some(102), 800);
    let p = w.plan();
    assert!(p.writes.is_empty(), "{:?}", writes(&p));
}

#[test]
fn a_lead_that_closes_in_the_cycle_the_dialog_changes_is_not_written() {
    let mut w = contact_with_three_leads(policy_of(&[], &[SyncKind::Lead]));
    w.stage_changed(20, lost_in(PIPE_A))
        .dialog_changed(1, Some(102), 800);
    assert!(w.plan().writes.is_empty());
}

#[test]
fn a_reopened_lead_joins_again_without_a_write_of_its_own() {
    let mut w = contact_with_three_leads(policy_of(&[SyncKind::Lead], &[SyncKind::Lead]));
    // while it was won, a person gave it to user 3: seen, nothing written, the base follows
    w.card_changed(lead(21), 3, 400);
    assert!(w.run_and_apply().writes.is_empty());
    // it is reopened: no change of its own, nothing written
    w.stage_changed(21, open_in(PIPE_A));
    let p = w.run_and_apply();
    assert!(p.writes.is_empty(), "{:?}", writes(&p));
    // from now on it takes part: the dialog's next change reaches it
    w.dialog_changed(1, Some(105), 900);
    let p = w.plan();
    assert_eq!(
        writes(&p),
        vec![("lead:20".to_string(), 5), ("lead:21".to_string(), 5)]
    );
}

#[test]
fn include_closed_lets_closed_leads_take_part() {
    let mut p = policy_of(&[], &[SyncKind::Lead]);
    p.leads.include_closed = true;
    let mut w = contact_with_three_leads(p);
    w.dialog_changed(1, Some(102), 500);
    let targets: Vec<String> = writes(&w.plan()).into_iter().map(|(t, _)| t).collect();
    assert_eq!(targets, vec!["lead:20", "lead:21", "lead:22"]);
}

#[test]
fn only_leads_of_the_configured_pipelines_take_part_and_one_moved_in_joins() {
    let mut p = policy_of(&[SyncKind::Lead], &[SyncKind::Lead]);
    p.leads.pipelines = [PIPE_A].into();
    let mut w = World::new(p);
    w.base_contact(10, 1, 100, Some(1))
        .base_lead(20, 1, 100, &[10])
        .base_lead(30, 1, 100, &[10])
        .base_dialog(1, Some(101), 100)
        .base_stage(20, open_in(PIPE_A))
        .base_stage(30, open_in(PIPE_B));
    // a person changes the lead in B: it is no source
    w.card_changed(lead(30), 3, 300);
    assert!(w.run_and_apply().writes.is_empty());
    // the dialog changes: only the lead in A receives
    w.dialog_changed(1, Some(104), 400);
    assert_eq!(writes(&w.run_and_apply()), vec![("lead:20".to_string(), 4)]);
    // the lead in B moves into A: joining writes nothing
    w.stage_changed(30, open_in(PIPE_A));
    assert!(w.run_and_apply().writes.is_empty());
    // it now takes part: the next dialog change reaches it
    w.dialog_changed(1, Some(105), 600);
    assert_eq!(
        writes(&w.run_and_apply()),
        vec![("lead:20".to_string(), 5), ("lead:30".to_string(), 5)]
    );
    // and moved out again, it stops
    w.stage_changed(30, open_in(PIPE_B));
    w.run_and_apply();
    w.dialog_changed(1, Some(106), 800);
    assert_eq!(writes(&w.plan()), vec![("lead:20".to_string(), 6)]);
}

#[test]
fn an_incoming_lead_drives_the_dialog_and_accepting_it_writes_nothing() {
    let mut w = World::new(policy_of(&[SyncKind::IncomingLead], &[SyncKind::Lead]));
    w.base_contact(10, 1, 100, Some(1))
        .base_lead(20, 1, 100, &[10])
        .base_lead(30, 1, 100, &[10])
        .base_dialog(1, Some(101), 100)
        .base_stage(20, open_in(PIPE_A))
        .base_stage(30, incoming_in(PIPE_A));
    // a person gives the incoming lead to user 3: the dialog follows, the open lead by cascade
    w.card_changed(lead(30), 3, 300);
    let p = w.run_and_apply();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 3), (d1(), 103)]);
    assert_eq!(p.writes[1].reason.rule, Rule::CrmChanged);
    // the incoming lead is accepted: it becomes a lead, keeps its base, nothing is written
    w.stage_changed(30, open_in(PIPE_A));
    let p = w.run_and_apply();
    assert!(p.writes.is_empty(), "{:?}", writes(&p));
    assert_eq!(w.snap.cards[&lead(30)].responsible, KommoUserId(3));
    // as a lead it now receives the dialog's changes
    w.dialog_changed(1, Some(105), 900);
    assert_eq!(
        writes(&w.plan()),
        vec![("lead:20".to_string(), 5), ("lead:30".to_string(), 5)]
    );
}

#[test]
fn incoming_lead_in_chat_to_crm_receives_and_lead_means_the_other_open_leads() {
    let mut w = World::new(policy_of(&[], &[SyncKind::IncomingLead]));
    w.base_contact(10, 1, 100, Some(1))
        .base_lead(20, 1, 100, &[10])
        .base_lead(30, 1, 100, &[10])
        .base_dialog(1, Some(101), 100)
        .base_stage(20, open_in(PIPE_A))
        .base_stage(30, incoming_in(PIPE_A));
    w.dialog_changed(1, Some(102), 500);
    assert_eq!(writes(&w.plan()), vec![("lead:30".to_string(), 2)]);
}

#[test]
fn an_incoming_lead_without_a_readable_contact_links_through_its_unsorted_chat() {
    let mut w = World::new(policy_of(&[], &[SyncKind::IncomingLead]));
    w.base_dialog(1, Some(101), 100);
    // the lead's contact (77) is not readable before acceptance; its unsorted record names the chat
    w.obs.cards.insert(
        lead(30),
        CardObs {
            responsible: KommoUserId(1),
            flag: true,
            deleted: false,
            contacts: vec![77],
            dialog_refs: vec![DialogRef::ChatId(dkey(1).chat_id)],
            phones: vec![],
            lead: incoming_in(PIPE_A),
            event_time: Some(90),
        },
    );
    w.run_and_apply();
    w.dialog_changed(1, Some(104), 500);
    assert_eq!(writes(&w.plan()), vec![("lead:30".to_string(), 4)]);
}

// ------------------------------------------------------------------------------------------------
// Property: no plan ever writes a lead that takes no part, nor takes a value from one.

fn stage_strategy() -> impl Strategy<Value = LeadStage> {
    let pipeline = prop_oneof![Just(PIPE_A), Just(PIPE_B), Just(3000u64)];
    (pipeline, 0..4u8).prop_map(|(p, k)| match k {
        0 => open_in(p),
        1 => incoming_in(p),
        2 => won_in(p),
        _ => lost_in(p),
    })
}

fn kinds_strategy() -> impl Strategy<Value = BTreeSet<SyncKind>> {
    proptest::sample::subsequence(SyncKind::ALL.to_vec(), 0..=5)
        .prop_map(|v| v.into_iter().collect())
}

#[derive(Debug, Clone)]
struct LeadSpec {
    contact: usize,
    user: u64,
    base_stage: LeadStage,
    stage: LeadStage,
    changed: bool,
}

#[derive(Debug, Clone)]
struct Spec {
    crm_to_chat: BTreeSet<SyncKind>,
    chat_to_crm: BTreeSet<SyncKind>,
    include_closed: bool,
    pipelines: BTreeSet<u64>,
    first_run: bool,
    bootstrap: u8,
    contacts: Vec<(u64, bool)>,
    dialogs: Vec<(Option<u64>, Option<u64>)>,
    leads: Vec<LeadSpec>,
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    let lead = (
        0..3usize,
        1..6u64,
        stage_strategy(),
        stage_strategy(),
        any::<bool>(),
    )
        .prop_map(|(contact, user, base_stage, stage, changed)| LeadSpec {
            contact,
            user,
            base_stage,
            stage,
            changed,
        });
    (
        (kinds_strategy(), kinds_strategy(), any::<bool>()),
        proptest::sample::subsequence(vec![PIPE_A, PIPE_B, 3000], 0..=3),
        (any::<bool>(), 0..3u8),
        proptest::collection::vec((1..6u64, any::<bool>()), 3),
        proptest::collection::vec(
            (
                proptest::option::of(101..106u64),
                proptest::option::of(101..106u64),
            ),
            3,
        ),
        proptest::collection::vec(lead, 1..8),
    )
        .prop_map(
            |(
                (crm_to_chat, chat_to_crm, include_closed),
                pipes,
                (first_run, bootstrap),
                contacts,
                dialogs,
                leads,
            )| Spec {
                crm_to_chat,
                chat_to_crm,
                include_closed,
                pipelines: pipes.into_iter().collect(),
                first_run,
                bootstrap,
                contacts,
                dialogs,
                leads,
            },
        )
}

fn card_state(user: u64, contacts: Vec<u64>, refs: Vec<DialogRef>, stage: LeadStage) -> CardState {
    CardState {
        responsible: KommoUserId(user),
        changed_at: 100,
        flag: true,
        deleted: false,
        contacts,
        dialog_refs: refs,
        phones: vec![],
        lead: stage,
    }
}

fn world_of(s: &Spec) -> (Snapshot, Observations, Policy) {
    let mut snap = Snapshot {
        bootstrapped: !s.first_run,
        ..Snapshot::default()
    };
    let mut obs = Observations {
        now: 10_000,
        ..Observations::default()
    };
    for (i, (base, now)) in s.dialogs.iter().enumerate() {
        let key = DialogKey::new(1, "grWhatsApp", &format!("7999000000{i}@c.us"));
        let st = DialogState {
            responsible: base.map(EmployeeId),
            changed_at: 100,
            last_time: 100,
            session: 1,
            closed: false,
            phone: None,
        };
        snap.dialogs.insert(key.clone(), st);
        obs.dialogs.insert(
            key,
            DialogObs {
                responsible: now.map(EmployeeId),
                last_time: if now == base { 100 } else { 500 },
                session: 1,
                closed: false,
                phone: None,
            },
        );
    }
    for (i, (user, changed)) in s.contacts.iter().enumerate() {
        let id = CardId::new(CardKind::Contact, 10 + i as u64);
        let key = DialogKey::new(1, "grWhatsApp", &format!("7999000000{i}@c.us"));
        let st = card_state(
            *user,
            vec![],
            vec![DialogRef::Full(key)],
            LeadStage::default(),
        );
        let mut o = obs_of(&st);
        if *changed {
            o.responsible = KommoUserId(user % 5 + 1);
            o.event_time = Some(400);
        }
        snap.cards.insert(id, st);
        obs.cards.insert(id, o);
    }
    for (i, l) in s.leads.iter().enumerate() {
        let id = CardId::new(CardKind::Lead, 20 + i as u64);
        let st = card_state(l.user, vec![10 + l.contact as u64], vec![], l.base_stage);
        let mut o = obs_of(&st);
        o.lead = l.stage;
        if l.changed {
            o.responsible = KommoUserId(l.user % 5 + 1);
            o.event_time = Some(450);
        }
        snap.cards.insert(id, st);
        obs.cards.insert(id, o);
    }
    let mut policy = policy_of(&[], &[]);
    policy.crm_to_chat = s.crm_to_chat.clone();
    policy.chat_to_crm = s.chat_to_crm.clone();
    policy.leads = LeadsPolicy {
        include_closed: s.include_closed,
        pipelines: s.pipelines.clone(),
    };
    policy.bootstrap = [Bootstrap::Adopt, Bootstrap::Crm, Bootstrap::Chat][s.bootstrap as usize];
    (snap, obs, policy)
}

fn obs_of(st: &CardState) -> CardObs {
    CardObs {
        responsible: st.responsible,
        flag: st.flag,
        deleted: st.deleted,
        contacts: st.contacts.clone(),
        dialog_refs: st.dialog_refs.clone(),
        phones: st.phones.clone(),
        lead: st.lead,
        event_time: None,
    }
}

/// A lead takes part by the rules, written out independently of the engine.
fn takes_part(stage: &LeadStage, s: &Spec) -> bool {
    let closed = stage.status == 142 || stage.status == 143;
    (s.pipelines.is_empty() || s.pipelines.contains(&stage.pipeline))
        && (!closed || s.include_closed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_plan_writes_or_copies_a_lead_that_takes_no_part(s in spec_strategy()) {
        let (snap, obs, policy) = world_of(&s);
        let current: BTreeMap<CardId, LeadStage> =
            obs.cards.iter().map(|(id, o)| (*id, o.lead)).collect();
        let p = plan(&snap, &obs, &policy, &users());
        for w in &p.writes {
            if let RecordId::Card(c) = &w.target.record() && c.kind == CardKind::Lead {
                let st = current[c];
                prop_assert!(takes_part(&st, &s), "wrote a lead at {st:?}: {w:?}");
                let kind = if st.kind == StageKind::Incoming { SyncKind::IncomingLead } else { SyncKind::Lead };
                prop_assert!(s.chat_to_crm.contains(&kind), "wrote a {kind} not in chat_to_crm: {w:?}");
            }
            if let RecordId::Card(src) = &w.reason.source && src.kind == CardKind::Lead {
                let st = current[src];
                prop_assert!(takes_part(&st, &s), "a lead at {st:?} was a source: {w:?}");
            }
        }
        // the engine's own classification agrees with the independent one
        for (id, st) in current.iter().filter(|(id, _)| id.kind == CardKind::Lead) {
            let state = card_state(1, vec![], vec![], *st);
            prop_assert_eq!(sync_kind(id, &state, &policy.leads).is_some(), takes_part(st, &s));
        }
    }
}
