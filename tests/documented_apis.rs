//! Issue 18: the shapes the APIs' own documents and third-party clients show, tried through the
//! real binary against simulators that serve them. Each test names the bullet of the issue's
//! "Why" it covers and failed on the code before the fix.

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
