//! Issue 18: the shapes the APIs' own documents and third-party clients show, tried through the
//! real binary against simulators that serve them. Each test names the bullet of the issue's
//! "Why" it covers and failed on the code before the fix.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::sim::chatapp::WriteBehaviour;
use e2e::{Env, chat};
use serde_json::json;

const WA: &str = "grWhatsApp";

/// "A refused dialog write is recorded as done, then reverted into Kommo": ChatApp answers 200
/// with `success: false`. The lead keeps what the person set, over several cycles, and the dialog
/// is not taken as changed by a person.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_in_a_200_envelope_is_not_recorded_and_never_reverts_the_card() {
    let env = Env::new("").await;
    env.once(&[]).await;
    env.w
        .chatapp
        .set_write_behaviour(WriteBehaviour::RefusedInEnvelope);
    env.w.clock.advance(10);
    // a manager moves contact Ivan from Anna to Boris
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    // incremental cycles, then full ones (a full cycle reads every dialog again)
    let rounds: [&[&str]; 4] = [
        &["once"],
        &["once"],
        &["once", "--full"],
        &["once", "--full"],
    ];
    for (round, args) in rounds.iter().enumerate() {
        env.w.clock.advance(60);
        let r = env.run(args).await;
        assert_eq!(
            env.w.kommo.responsible_of("contacts", 1001),
            Some(504142),
            "round {round}: the contact keeps what the person set: {r:?}"
        );
        assert_eq!(
            env.w.kommo.responsible_of("leads", 2001),
            Some(504142),
            "round {round}: the lead keeps its cascade, not reverted by the unchanged dialog: {r:?}"
        );
        assert_eq!(
            env.w.chatapp.responsible_of(1, WA, &chat(1)),
            Some(85501),
            "round {round}: the refused write changed nothing"
        );
    }
}

/// "Every CRM->dialog write is dropped if the one-chat answer lacks licenseId/messengerType".
#[tokio::test(flavor = "multi_thread")]
async fn a_minimal_one_chat_answer_still_lets_the_dialog_be_written() {
    let env = Env::new("").await;
    env.once(&[]).await;
    env.w.chatapp.set_minimal_chat_answer(true);
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85502),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// "A chat with `lastTime: null` is quarantined and never corrected."
#[tokio::test(flavor = "multi_thread")]
async fn a_chat_with_null_last_time_is_read_and_corrected() {
    let env = Env::new("").await;
    env.w
        .chatapp
        .set_chat_json_override(1, WA, &chat(1), json!({"lastTime": null}));
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.once(&[]).await;
    assert!(!r.stdout.contains("quarantined"), "{}", r.stdout);
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85502),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// "Employees after the first page are unknown, so their dialogs are never written."
#[tokio::test(flavor = "multi_thread")]
async fn employees_on_later_pages_are_mapped() {
    let env = Env::new("").await;
    env.w.chatapp.set_employee_page_size(Some(1));
    env.once(&[]).await;
    env.w.clock.advance(10);
    // Boris (85502) is on the second page of one-employee pages, Vera (85503) on the third
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504143, 504141);
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85503),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// "The events query sends a lone `filter[created_at][from]`": a server that ignores that form
/// (the simulator now does) made every cycle page the whole event history. In the documented bare
/// form an incremental cycle reads only the new events.
#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_cycle_reads_only_new_events_in_the_documented_filter_form() {
    let env = Env::new("").await;
    // a long history before the first run: 450 reassignments of contact Pavel, ending as it was
    for i in 0..450 {
        let (to, by) = if i % 2 == 0 {
            (504142, 504141)
        } else {
            (504141, 504142)
        };
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1004, to, by);
    }
    env.w.clock.advance(3600);
    env.once(&[]).await;
    let events_reads = |env: &Env| {
        env.w
            .kommo
            .requests()
            .iter()
            .filter(|r| r.path == "/api/v4/events")
            .count()
    };
    let before = events_reads(&env);
    env.w.clock.advance(60);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.once(&[]).await;
    let pages = events_reads(&env) - before;
    assert_eq!(pages, 1, "one events page for one new event: {}", r.stdout);
    assert_eq!(env.w.chatapp.responsible_of(1, WA, &chat(1)), Some(85502));
    let q = env.w.kommo.requests();
    let last = q.iter().rev().find(|r| r.path == "/api/v4/events").unwrap();
    assert!(
        last.query.contains("filter%5Bcreated_at%5D=")
            || last.query.contains("filter[created_at]="),
        "the bare documented form: {}",
        last.query
    );
}

/// "`/customers` has no documented `order`; incremental customer reads rely on it": the
/// simulator now ignores `order` there, as a real account may. A customer linked (no responsible
/// event) beyond the first page is still found by an incremental cycle and follows its dialog.
#[tokio::test(flavor = "multi_thread")]
async fn customer_changes_are_found_without_an_undocumented_order() {
    use chatapp_kommo_sync::sim::SimCard;
    let env = Env::new("").await;
    env.edit_config(|t| {
        t.replace(
            r#"chat_to_crm = ["lead"]"#,
            r#"chat_to_crm = ["lead", "customer"]"#,
        )
    });
    env.w.kommo.add_cards(
        "customers",
        (3000..3300).map(|id| SimCard::new(id, format!("customer {id}"), 504141)),
    );
    env.once(&[]).await;
    env.w.clock.advance(60);
    // the last customer (second page by id) gets Maria as its contact: no responsible event
    env.w.kommo.link_contact("customers", 3299, 1002);
    // and Maria's dialog goes to Vera
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("customers", 3299),
        Some(504143),
        "the newly linked customer follows the dialog: {}",
        r.stdout
    );
    let q = env.w.kommo.requests();
    assert!(
        q.iter()
            .filter(|r| r.path == "/api/v4/customers")
            .all(|r| !r.query.contains("order")),
        "no order sent to /customers"
    );
}

/// "Non-rate 403s (IP allow-list, a non-admin token) open the 30-minute block breaker and tell
/// the operator to contact Kommo support": three 403s with code 113 in one process name the
/// allow-list and open no breaker; the cycle after them runs.
#[tokio::test(flavor = "multi_thread")]
async fn an_ip_allow_list_403_is_named_and_opens_no_breaker() {
    use chatapp_kommo_sync::service::wiring::LiveSyncer;
    use chatapp_kommo_sync::sim::{Fault, FaultRule};
    use chatapp_kommo_sync::sync::CycleOptions;
    let env = Env::new("").await;
    let loaded = chatapp_kommo_sync::config::load(&env.config).unwrap();
    let store = std::sync::Arc::new(
        chatapp_kommo_sync::store::Store::open(&loaded.config.daemon.state_path).unwrap(),
    );
    let syncer = LiveSyncer::live(&loaded, store.clone()).unwrap();
    syncer.run_cycle(CycleOptions::default()).await.unwrap();
    env.w
        .kommo
        .push_fault(FaultRule::new(Fault::IpNotAllowed).times(3));
    for i in 0..3 {
        let e = syncer
            .run_cycle(CycleOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("IP allow-list") && !e.contains("blocked"),
            "{i}: {e}"
        );
    }
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    syncer.run_cycle(CycleOptions::default()).await.unwrap();
    assert_eq!(env.w.chatapp.responsible_of(1, WA, &chat(1)), Some(85502));
}

/// Kommo 402 (the account is not paid) is named as such, through the binary.
#[tokio::test(flavor = "multi_thread")]
async fn a_402_says_the_account_is_not_paid() {
    use chatapp_kommo_sync::sim::{Fault, FaultRule};
    let env = Env::new("").await;
    env.once(&[]).await;
    env.w
        .kommo
        .push_fault(FaultRule::new(Fault::Status(402)).times(1));
    let r = env.run(&["once"]).await;
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("not paid"), "{}", r.stderr);
    assert!(!r.stderr.contains("blocked"), "{}", r.stderr);
}

/// "One refused card blocks its whole batch, every cycle": Kommo refuses one lead's new user
/// (`validation-errors` naming its `request_id`). The five other leads of the batch are written in
/// the same cycle; the refused one is parked and not sent again in the next three cycles;
/// `status` names it with Kommo's code.
#[tokio::test(flavor = "multi_thread")]
async fn one_refused_card_does_not_hold_back_its_batch() {
    use chatapp_kommo_sync::sim::{SimCard, SimField};
    let env = Env::new("").await;
    let flag = SimField::checkbox(184994, true);
    for id in 2012..2017 {
        env.w.kommo.add_card(
            "leads",
            SimCard::new(id, format!("Maria: order {id}"), 504142)
                .with_field(flag.clone())
                .with_contacts(&[1002]),
        );
    }
    env.once(&[]).await;
    env.w.kommo.refuse_assignments_to(504143, true);
    env.w.clock.advance(10);
    // Ivan's dialog goes to Vera (refused for lead 2001), Maria's to Anna (leads 2012..2016)
    env.w.chatapp.assign_as_human(1, WA, &chat(1), Some(85503));
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85501));
    let r = env.once(&[]).await;
    for id in 2012..2017 {
        assert_eq!(
            env.w.kommo.responsible_of("leads", id),
            Some(504141),
            "lead {id} written in the same cycle: {}",
            r.stdout
        );
    }
    assert_eq!(env.w.kommo.responsible_of("leads", 2001), Some(504141));
    assert!(r.stdout.contains("rejected"), "{}", r.stdout);
    let patches = env.w.kommo.patch_count();
    for round in 0..3 {
        env.w.clock.advance(60);
        let r = env.once(&[]).await;
        assert_eq!(
            env.w.kommo.patch_count(),
            patches,
            "round {round}: the refused write is not sent again: {}",
            r.stdout
        );
    }
    let status = env.run(&["status"]).await;
    assert!(
        status.stdout.contains("writes refused or not applied")
            && status.stdout.contains("lead 2001")
            && status.stdout.contains("NotSupportedChoice"),
        "{}",
        status.stdout
    );
}

/// "An endpoint that answers success without effect makes the lead flip-flop": with a dialog
/// write that answers 200 and changes nothing, every Kommo card keeps what the person set over
/// five cycles, the write is parked as not applied (not sent again every cycle), and `status`
/// says so.
#[tokio::test(flavor = "multi_thread")]
async fn an_ineffective_dialog_endpoint_leaves_every_card_as_the_person_set_it() {
    let env = Env::new("").await;
    env.once(&[]).await;
    env.w.chatapp.set_write_behaviour(WriteBehaviour::NoEffect);
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    let puts = |env: &Env| {
        env.w
            .chatapp
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.ends_with("/responsible"))
            .count()
    };
    let full: &[&str] = &["--full"];
    for round in 0..5 {
        env.w.clock.advance(60);
        let r = env.once(if round % 2 == 1 { full } else { &[] }).await;
        assert_eq!(
            env.w.kommo.responsible_of("contacts", 1001),
            Some(504142),
            "round {round}: {}",
            r.stdout
        );
        assert_eq!(
            env.w.kommo.responsible_of("leads", 2001),
            Some(504142),
            "round {round}: the cascade stays, never reverted: {}",
            r.stdout
        );
        if round == 0 {
            assert!(r.stdout.contains("write not applied"), "{}", r.stdout);
        }
    }
    assert_eq!(puts(&env), 1, "tried once, then held back by its back-off");
    let status = env.run(&["status"]).await;
    assert!(
        status.stdout.contains("write not applied") && status.stdout.contains("79990000001@c.us"),
        "{}",
        status.stdout
    );
}
