//! One scenario per decision rule of SPEC section 3, on the pure engine.

#![allow(clippy::unwrap_used)]

#[path = "common/world.rs"]
mod world;

use chatapp_kommo_sync::core::engine::{Bootstrap, Brake, ConflictPolicy, ParkReason, Rule};
use chatapp_kommo_sync::core::model::{CardKind::*, EmployeeId, KommoUserId, RecordId, Value};
use chatapp_kommo_sync::core::usermap::UserMap;
use world::*;

fn d1() -> String {
    format!("dialog:{}", dkey(1).chat_id)
}

/// contact 10 and lead 20 linked to dialog 1; all agree on user 1 / employee 101.
fn linked_world(
    crm_to_chat: &[chatapp_kommo_sync::core::model::CardKind],
    chat_to_crm: &[chatapp_kommo_sync::core::model::CardKind],
) -> World {
    let mut w = World::new(policy(crm_to_chat, chat_to_crm));
    w.base_contact(10, 1, 100, Some(1))
        .base_lead(20, 1, 100, &[10])
        .base_dialog(1, Some(101), 100);
    w
}

#[test]
fn nothing_changed_plans_nothing() {
    let mut w = linked_world(&[Contact], &[Lead]);
    w.observe_card(contact(10), |_| {})
        .observe_dialog(1, |_| {});
    let p = w.plan();
    assert!(p.writes.is_empty(), "{:?}", p.writes);
    assert!(p.parked.is_empty());
}

#[test]
fn rule1_contact_change_moves_the_dialog() {
    let mut w = linked_world(&[Contact], &[]);
    w.card_changed(contact(10), 2, 500);
    let p = w.plan();
    assert_eq!(writes(&p), vec![(d1(), 102)]);
    assert_eq!(p.writes[0].reason.rule, Rule::CrmChanged);
    assert_eq!(p.writes[0].target.from_value().map(Value::raw), Some(101));
    assert_eq!(p.writes[0].reason.source, RecordId::Card(contact(10)));
}

#[test]
fn rule1_last_changed_card_wins() {
    // lead changed before contact -> the contact's responsible wins
    let mut w = linked_world(&[Contact, Lead], &[]);
    w.card_changed(lead(20), 3, 400)
        .card_changed(contact(10), 2, 500);
    assert_eq!(writes(&w.run_and_apply()), vec![(d1(), 102)]);
    // then the lead changed -> the lead's wins
    w.card_changed(lead(20), 4, 600);
    let p = w.run_and_apply();
    assert_eq!(writes(&p), vec![(d1(), 104)]);
    assert_eq!(p.writes[0].reason.source, RecordId::Card(lead(20)));
    // an older change of the contact does not beat the lead's newer one
    w.card_changed(contact(10), 5, 550);
    let p = w.plan();
    assert!(
        p.writes.is_empty(),
        "lead (600) is still the latest-changed card: {:?}",
        writes(&p)
    );
}

#[test]
fn rule2_new_dialog_takes_the_contacts_responsible() {
    let mut w = World::new(policy(&[Contact], &[]));
    w.base_contact(10, 3, 100, Some(1));
    // ChatApp's distribution assigned the new dialog to employee 105
    w.dialog_changed(1, Some(105), 900);
    let p = w.plan();
    assert_eq!(writes(&p), vec![(d1(), 103)]);
    assert_eq!(p.writes[0].reason.rule, Rule::DialogOpened);
}

#[test]
fn rule2_reopened_dialog_takes_the_card_again() {
    let mut w = linked_world(&[Contact], &[]);
    w.snap.dialogs.get_mut(&dkey(1)).unwrap().closed = true;
    // reopened with a new conversation, auto-assigned to 105 by distribution
    w.observe_dialog(1, |o| {
        o.closed = false;
        o.session = 2;
        o.responsible = Some(EmployeeId(105));
        o.last_time = 900;
    });
    let p = w.plan();
    assert_eq!(writes(&p), vec![(d1(), 101)]);
    assert_eq!(p.writes[0].reason.rule, Rule::DialogOpened);
}

#[test]
fn rule3_dialog_change_moves_linked_leads() {
    let mut w = linked_world(&[], &[Lead]);
    w.dialog_changed(1, Some(102), 500);
    let p = w.plan();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 2)]);
    assert_eq!(p.writes[0].reason.rule, Rule::DialogChanged);
}

#[test]
fn rule4_cascade_from_contact_to_lead() {
    let mut w = linked_world(&[Contact], &[Lead]);
    w.card_changed(contact(10), 2, 500);
    let p = w.plan();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 2), (d1(), 102)]);
    assert_eq!(p.writes[0].reason.rule, Rule::Cascade);
}

#[test]
fn rule5_conflict_newest_later_side_wins_and_tie_goes_to_crm() {
    // contact changed at 500, dialog at 600: the dialog is newer -> lead takes the dialog's
    let mut w = linked_world(&[Contact], &[Lead]);
    w.card_changed(contact(10), 2, 500)
        .dialog_changed(1, Some(103), 600);
    let p = w.plan();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 3)]);
    assert_eq!(p.conflicts.len(), 1);
    assert!(!p.conflicts[0].crm_won);

    // dialog only 3 s later: inside clock_skew -> tie -> CRM wins
    let mut w = linked_world(&[Contact], &[Lead]);
    w.card_changed(contact(10), 2, 500)
        .dialog_changed(1, Some(103), 503);
    let p = w.plan();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 2), (d1(), 102)]);
    assert!(p.conflicts[0].crm_won);
}

#[test]
fn rule5_conflict_fixed_policies() {
    for (policy, crm_won) in [(ConflictPolicy::Crm, true), (ConflictPolicy::Chat, false)] {
        let mut w = linked_world(&[Contact], &[Lead]);
        w.policy.conflict = policy;
        // the CRM change is the newer one, yet the policy decides
        w.card_changed(contact(10), 2, 900)
            .dialog_changed(1, Some(103), 500);
        let p = w.plan();
        assert_eq!(p.conflicts[0].crm_won, crm_won, "{policy:?}");
        if crm_won {
            assert_eq!(writes(&p), vec![("lead:20".to_string(), 2), (d1(), 102)]);
        } else {
            assert_eq!(writes(&p), vec![("lead:20".to_string(), 3)]);
        }
    }
}

#[test]
fn rule6_several_dialogs_one_card_latest_dialog_wins() {
    let mut w = World::new(policy(&[], &[Lead]));
    w.base_contact(10, 1, 100, Some(1))
        .base_contact(11, 1, 100, Some(2))
        .base_lead(20, 1, 100, &[10, 11])
        .base_dialog(1, Some(101), 100)
        .base_dialog(2, Some(101), 100);
    w.dialog_changed(1, Some(103), 700)
        .dialog_changed(2, Some(104), 600);
    let p = w.plan();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 3)]);
    assert!(
        p.writes[0].reason.detail.contains("rule 6"),
        "{}",
        p.writes[0].reason.detail
    );
}

#[test]
fn rule7_equal_is_not_a_conflict() {
    let mut w = linked_world(&[Contact], &[Contact]);
    w.card_changed(contact(10), 2, 500)
        .dialog_changed(1, Some(102), 600);
    let p = w.plan();
    assert!(p.writes.is_empty(), "{:?}", writes(&p));
    assert!(p.conflicts.is_empty());
    // and both become the base
    w.run_and_apply();
    assert_eq!(w.snap.cards[&contact(10)].responsible, KommoUserId(2));
    assert_eq!(w.snap.dialogs[&dkey(1)].responsible, Some(EmployeeId(102)));
}

#[test]
fn rule8_unmapped_is_parked_then_decided_again_on_a_new_pair() {
    let mut w = linked_world(&[Contact], &[]);
    w.card_changed(contact(10), 42, 500); // user 42 has no employee
    let p = w.run_and_apply();
    assert!(p.writes.is_empty());
    assert_eq!(p.parked.len(), 1);
    assert_eq!(
        p.parked[0].reason,
        ParkReason::UnmappedKommoUser(KommoUserId(42))
    );
    // still parked, nothing new: no write, the park stays
    let p = w.run_and_apply();
    assert!(p.writes.is_empty() && p.parked.is_empty());
    assert_eq!(w.snap.parked.len(), 1);
    // a config change adds the pair 42 <-> 142: decided again and written
    let mut pairs: Vec<(KommoUserId, EmployeeId)> = (1..=9)
        .map(|n| (KommoUserId(n), EmployeeId(100 + n)))
        .collect();
    pairs.push((KommoUserId(42), EmployeeId(142)));
    w.users = UserMap::build(&pairs, false, &[], &[]);
    let p = w.run_and_apply();
    assert_eq!(writes(&p), vec![(d1(), 142)]);
    assert!(w.snap.parked.is_empty(), "{:?}", w.snap.parked);
}

#[test]
fn rule8_zero_deleted_and_closed_are_never_written() {
    // zero responsible
    let mut w = linked_world(&[Contact], &[]);
    w.card_changed(contact(10), 0, 500);
    let p = w.plan();
    assert!(p.writes.is_empty());
    assert_eq!(p.parked[0].reason, ParkReason::NoResponsible);
    // unassigned dialog -> leads keep theirs
    let mut w = linked_world(&[], &[Lead]);
    w.dialog_changed(1, None, 500);
    let p = w.plan();
    assert!(p.writes.is_empty());
    assert_eq!(p.parked[0].reason, ParkReason::NoResponsible);
    // deleted lead
    let mut w = linked_world(&[], &[Lead]);
    w.observe_card(lead(20), |o| o.deleted = true)
        .dialog_changed(1, Some(102), 500);
    let p = w.plan();
    assert!(p.writes.is_empty());
    assert_eq!(p.parked[0].reason, ParkReason::CardDeleted);
    // closed dialog
    let mut w = linked_world(&[Contact], &[]);
    w.observe_dialog(1, |o| o.closed = true)
        .card_changed(contact(10), 2, 500);
    let p = w.plan();
    assert!(p.writes.is_empty());
    assert_eq!(p.parked[0].reason, ParkReason::DialogClosed);
}

#[test]
fn rule8_unknown_dialog_reference_is_parked() {
    let mut w = World::new(policy(&[Contact], &[]));
    w.base_contact(10, 1, 100, Some(7)); // dialog 7 does not exist
    w.card_changed(contact(10), 2, 500);
    let p = w.plan();
    assert!(p.writes.is_empty());
    assert!(matches!(p.parked[0].reason, ParkReason::DialogUnknown(_)));
}

#[test]
fn rule9_a_cycle_on_its_own_result_plans_nothing() {
    let mut w = linked_world(&[Contact], &[Lead]);
    w.card_changed(contact(10), 2, 500);
    assert_eq!(w.run_and_apply().writes.len(), 2);
    // the next cycle observes the targets holding the written values, events included
    w.observe_card(lead(20), |o| {
        o.responsible = KommoUserId(2);
        o.event_time = Some(10_005);
    })
    .observe_card(contact(10), |_| {})
    .dialog_changed(1, Some(102), 10_005);
    let p = w.plan();
    assert!(p.writes.is_empty(), "{:?}", writes(&p));
}

#[test]
fn rule12_bootstrap_modes() {
    let first = |mode: Bootstrap| {
        let mut w = World::new(policy(&[Contact], &[Lead]));
        w.snap.bootstrapped = false;
        w.policy.bootstrap = mode;
        // observed for the first time: contact says 1, dialog says 103, lead says 2
        w.snap.cards.clear();
        let mut seed = linked_world(&[Contact], &[Lead]);
        seed.snap.cards.get_mut(&lead(20)).unwrap().responsible = KommoUserId(2);
        seed.snap.dialogs.get_mut(&dkey(1)).unwrap().responsible = Some(EmployeeId(103));
        for (id, st) in &seed.snap.cards {
            w.obs.cards.insert(
                *id,
                chatapp_kommo_sync::core::model::CardObs {
                    responsible: st.responsible,
                    flag: true,
                    deleted: false,
                    contacts: st.contacts.clone(),
                    dialog_refs: st.dialog_refs.clone(),
                    phones: vec![],
                    lead: Default::default(),
                    event_time: None,
                },
            );
        }
        w.dialog_changed(1, Some(103), 100);
        w.plan()
    };
    let adopt = first(Bootstrap::Adopt);
    assert!(adopt.writes.is_empty());
    assert_eq!(adopt.disagreements.len(), 2, "{:?}", adopt.disagreements);
    let crm = first(Bootstrap::Crm);
    assert_eq!(writes(&crm), vec![("lead:20".to_string(), 1), (d1(), 101)]);
    assert!(crm.writes.iter().all(|w| w.reason.rule == Rule::Bootstrap));
    let chat = first(Bootstrap::Chat);
    assert_eq!(writes(&chat), vec![("lead:20".to_string(), 3)]);
}

#[test]
fn rule12_after_bootstrap_a_new_dialog_is_opened() {
    let mut w = World::new(policy(&[Contact], &[]));
    w.snap.bootstrapped = false;
    w.base_contact(10, 1, 100, Some(1));
    w.observe_card(contact(10), |_| {});
    let p = w.run_and_apply();
    assert!(p.writes.is_empty());
    // the dialog appears after the first cycle, assigned elsewhere
    w.dialog_changed(1, Some(105), 20_000);
    assert_eq!(writes(&w.plan()), vec![(d1(), 101)]);
}

#[test]
fn rule13_too_many_writes_brakes() {
    let mut w = World::new(policy(&[], &[Lead]));
    w.policy.max_writes_per_cycle = 2;
    w.base_contact(10, 1, 100, Some(1))
        .base_dialog(1, Some(101), 100);
    for id in 20..25 {
        w.base_lead(id, 1, 100, &[10]);
    }
    w.dialog_changed(1, Some(102), 500);
    let p = w.plan();
    assert_eq!(p.writes.len(), 5);
    assert_eq!(p.brake, Some(Brake::TooManyWrites { planned: 5, max: 2 }));
}

#[test]
fn unchecked_flag_blocks_both_directions() {
    // the contact's flag is unchecked: its change does not reach the dialog
    let mut w = linked_world(&[Contact], &[Contact]);
    w.snap.cards.get_mut(&contact(10)).unwrap().flag = false;
    w.card_changed(contact(10), 2, 500);
    assert!(w.plan().writes.is_empty());
    // and the dialog's change does not reach the contact
    let mut w = linked_world(&[Contact], &[Contact]);
    w.snap.cards.get_mut(&contact(10)).unwrap().flag = false;
    w.dialog_changed(1, Some(103), 500);
    assert!(w.plan().writes.is_empty());
}

#[test]
fn failed_write_holds_the_bases_so_the_change_is_decided_again() {
    let mut w = linked_world(&[Contact], &[]);
    w.card_changed(contact(10), 2, 500);
    let p = w.plan();
    let s = chatapp_kommo_sync::core::engine::settle(&w.snap, &p, &[false], 10_000);
    assert!(s.held.contains(&RecordId::Card(contact(10))));
    w.snap.apply(&s);
    assert_eq!(
        w.snap.cards[&contact(10)].responsible,
        KommoUserId(1),
        "base stays"
    );
    w.obs.cards.clear();
    w.card_changed(contact(10), 2, 500);
    assert_eq!(writes(&w.plan()), vec![(d1(), 102)]);
}

#[test]
fn a_target_changed_later_by_a_person_keeps_its_value() {
    // dialog changed at 500; the lead was changed by a person at 700: the later change wins
    let mut w = linked_world(&[], &[Lead]);
    w.dialog_changed(1, Some(103), 500)
        .card_changed(lead(20), 4, 700);
    assert!(w.plan().writes.is_empty());
    // lead changed before the dialog: the dialog's value goes to it
    let mut w = linked_world(&[], &[Lead]);
    w.dialog_changed(1, Some(103), 700)
        .card_changed(lead(20), 4, 500);
    assert_eq!(writes(&w.plan()), vec![("lead:20".to_string(), 3)]);
}

#[test]
fn a_closed_dialog_is_never_written_but_one_already_agreeing_still_cascades() {
    // both changed to Boris, the dialog is closed: nothing to write on it, the lead follows Boris
    let mut w = linked_world(&[Contact], &[Lead]);
    w.card_changed(contact(10), 2, 500)
        .observe_dialog(1, |o| o.closed = true)
        .dialog_changed(1, Some(102), 400);
    let p = w.plan();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 2)]);
    assert!(p.parked.is_empty(), "{:?}", p.parked);
    // the contact goes to Boris, the closed dialog still has Anna: parked, and no cascade
    let mut w = linked_world(&[Contact], &[Lead]);
    w.observe_dialog(1, |o| o.closed = true)
        .card_changed(contact(10), 2, 500);
    let p = w.plan();
    assert!(p.writes.is_empty(), "{:?}", writes(&p));
    assert_eq!(p.parked[0].reason, ParkReason::DialogClosed);
}

/// A card held only because the write to it failed is not a card a person changed: the next
/// cycle writes it again even when the dialog changed within `clock_skew` of the card's base
/// time (found by the scenario tests: the change was dropped and the hold released).
#[test]
fn a_held_target_is_written_again_even_close_to_its_base_time() {
    let mut w = World::new(policy(&[], &[Lead]));
    w.base_contact(10, 1, 1000, Some(1))
        .base_lead(20, 1, 1000, &[10])
        .base_dialog(1, Some(101), 900);
    w.dialog_changed(1, Some(102), 1003);
    let p = w.plan();
    assert_eq!(writes(&p), vec![("lead:20".to_string(), 2)]);
    let s = chatapp_kommo_sync::core::engine::settle(&w.snap, &p, &[false], w.obs.now);
    assert!(s.held.contains(&RecordId::Card(lead(20))));
    w.snap.apply(&s);
    w.obs.cards.clear();
    w.obs.dialogs.clear();
    w.obs.now += 30;
    // the held records are read again: the lead as it was, the dialog as the person left it
    w.observe_card(lead(20), |_| {})
        .dialog_changed(1, Some(102), 1003);
    assert_eq!(writes(&w.plan()), vec![("lead:20".to_string(), 2)]);
}
