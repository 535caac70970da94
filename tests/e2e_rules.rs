//! Issue 3: every decision rule as a scenario against the simulators, through the real binary.
//! Sample world (see `demo::sample_world`): contacts 1001 Ivan (dialog 1, Anna), 1002 Maria
//! (dialog 2 by phone, Boris), 1003 Oleg (no dialog yet, Vera), 1004 Pavel (dialog 4, Anna); leads
//! 2001 (Ivan, checked), 2002 (Maria, checked), 2003 (Maria, unchecked). Kommo users 504141 Anna,
//! 504142 Boris, 504143 Vera, 504144 Gleb; employees 85501 Anna, 85502 Boris, 85503 Vera, 85509 Dmitry.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::sim::{Fault, FaultRule, SimChat};
use e2e::{Env, chat};
use std::time::Duration;

const WA: &str = "grWhatsApp";

async fn env_with(crm_to_chat: &str, chat_to_crm: &str) -> Env {
    let env = Env::new("").await;
    env.edit_config(|t| {
        t.replace(
            "crm_to_chat = [\"contact\"]",
            &format!("crm_to_chat = {crm_to_chat}"),
        )
        .replace(
            "chat_to_crm = [\"lead\"]",
            &format!("chat_to_crm = {chat_to_crm}"),
        )
    });
    env.once(&[]).await; // bootstrap (adopt)
    env
}

fn dialog(env: &Env, n: u64) -> Option<u64> {
    env.w.chatapp.responsible_of(1, WA, &chat(n))
}

fn card(env: &Env, kind: &str, id: u64) -> Option<u64> {
    env.w.kommo.responsible_of(kind, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn rule1_the_last_changed_card_wins() {
    let env = env_with(r#"["contact", "lead"]"#, "[]").await;
    // lead changed before contact -> the contact's responsible wins
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("leads", 2001, 504143, 504141);
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    env.once(&[]).await;
    assert_eq!(dialog(&env, 1), Some(85502));
    // then the lead changed -> the lead's wins
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("leads", 2001, 504141, 504142);
    env.once(&[]).await;
    assert_eq!(dialog(&env, 1), Some(85501));
}

#[tokio::test(flavor = "multi_thread")]
async fn rule2_a_new_dialog_auto_assigned_elsewhere_takes_the_contacts_responsible() {
    let env = env_with(r#"["contact"]"#, r#"["lead"]"#).await;
    env.w.clock.advance(10);
    // Oleg writes; ChatApp's distribution gives the new dialog to Dmitry
    env.w
        .chatapp
        .add_chat(SimChat::whatsapp(1, "79990000003", "Oleg", Some(85509)));
    let r = env.once(&[]).await;
    assert_eq!(
        dialog(&env, 3),
        Some(85503),
        "Oleg's contact is Vera's: {}",
        r.stdout
    );
    assert!(r.stdout.contains("rule 2"), "{}", r.stdout);
    // reopened after being closed: distribution again, and again the contact's manager
    env.w.clock.advance(10);
    env.w.chatapp.close_chat(1, WA, &chat(3));
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w.chatapp.reopen_chat(1, WA, &chat(3));
    env.w.chatapp.assign_as_human(1, WA, &chat(3), Some(85509));
    env.once(&[]).await;
    assert_eq!(dialog(&env, 3), Some(85503));
}

#[tokio::test(flavor = "multi_thread")]
async fn rule5_conflict_newest_and_crm() {
    for (policy, expect_dialog, expect_lead) in [("newest", 85503, 504143), ("crm", 85502, 504142)]
    {
        let env = env_with(r#"["contact"]"#, r#"["lead"]"#).await;
        env.edit_config(|t| {
            t.replace("conflict = \"newest\"", &format!("conflict = \"{policy}\""))
        });
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141); // Boris
        env.w.clock.advance(30);
        env.w.chatapp.assign_as_human(1, WA, &chat(1), Some(85503)); // Vera, 30 s later
        let r = env.once(&[]).await;
        assert_eq!(
            dialog(&env, 1),
            Some(expect_dialog),
            "{policy}: {}",
            r.stdout
        );
        assert_eq!(
            card(&env, "leads", 2001),
            Some(expect_lead),
            "{policy}: {}",
            r.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rule6_several_dialogs_one_card_the_latest_dialog_wins() {
    let env = env_with(r#"["contact"]"#, r#"["lead"]"#).await;
    env.w.kommo.link_contact("leads", 2002, 1001); // lead 2002 now reaches dialogs 1 and 2
    env.once(&["--full"]).await;
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503)); // Vera
    env.w.clock.advance(20);
    env.w.chatapp.assign_as_human(1, WA, &chat(1), Some(85502)); // Boris, later
    let r = env.once(&[]).await;
    assert_eq!(card(&env, "leads", 2002), Some(504142), "{}", r.stdout);
    assert_eq!(card(&env, "leads", 2001), Some(504142));
}

#[tokio::test(flavor = "multi_thread")]
async fn rule7_both_changed_to_the_same_person_writes_nothing_on_that_pair() {
    let env = env_with(r#"["contact"]"#, r#"["contact"]"#).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    env.w.chatapp.assign_as_human(1, WA, &chat(1), Some(85502));
    let r = env.once(&[]).await;
    assert!(r.stdout.contains("0 planned"), "{}", r.stdout);
    assert_eq!(env.writes(), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn rule8_unmapped_is_parked_until_a_user_pair_is_added() {
    let env = env_with(r#"["contact"]"#, r#"["lead"]"#).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1004, 504144, 504141); // Gleb: no employee
    let r = env.once(&[]).await;
    assert!(
        r.stdout.contains("parked") && r.stdout.contains("504144"),
        "{}",
        r.stdout
    );
    assert_eq!(dialog(&env, 4), Some(85501), "never written");
    let s = env.run(&["status"]).await;
    assert!(s.stdout.contains("unmapped_kommo_user: 1"), "{}", s.stdout);
    // nothing new: still parked, nothing written
    env.w.clock.advance(10);
    env.once(&[]).await;
    assert_eq!(dialog(&env, 4), Some(85501));
    // the integrator pairs Gleb with Dmitry: decided again and written
    env.edit_config(|t| {
        t.replace(
            "match_by_email = true\n",
            "match_by_email = true\nmap = [{ kommo = 504144, chatapp = 85509 }]\n",
        )
    });
    env.w.clock.advance(10);
    let r = env.once(&[]).await;
    assert_eq!(dialog(&env, 4), Some(85509), "{}", r.stdout);
    let s = env.run(&["status"]).await;
    assert!(s.stdout.contains("parked pairs: 0"), "{}", s.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn rule10_a_target_changed_between_read_and_write_is_not_overwritten() {
    let env = env_with(r#"["contact"]"#, r#"["lead"]"#).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    // the check-before-write read of dialog 1 is slow; meanwhile an operator assigns Vera
    env.w.chatapp.push_fault(
        FaultRule::new(Fault::Latency(Duration::from_secs(3)))
            .method("GET")
            .path(format!("/v1/licenses/1/messengers/{WA}/chats/")),
    );
    let chatapp = env.w.chatapp.clone();
    let clock = env.w.clock.clone();
    let racer = tokio::spawn(async move {
        // wait until the cycle has listed the chats, then change the dialog during the slow read
        for _ in 0..100 {
            if chatapp
                .requests()
                .iter()
                .filter(|r| r.path == "/v1/chats")
                .count()
                >= 2
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        clock.advance(5);
        chatapp.assign_as_human(1, WA, &chat(1), Some(85503));
    });
    let r = env.once(&[]).await;
    racer.await.unwrap();
    assert!(r.stdout.contains("dropped"), "{}", r.stdout);
    assert_eq!(dialog(&env, 1), Some(85503), "the person's change stands");
    // decided again next cycle: both changed, the dialog is newer -> the lead follows Vera
    env.w.clock.advance(10);
    let r = env.once(&[]).await;
    assert_eq!(dialog(&env, 1), Some(85503), "{}", r.stdout);
    assert_eq!(card(&env, "leads", 2001), Some(504143), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn rule12_bootstrap_crm_and_chat() {
    let env = Env::new("").await;
    env.edit_config(|t| t.replace("bootstrap = \"adopt\"", "bootstrap = \"crm\""));
    env.once(&[]).await;
    // Maria's dialog (Boris) already matches her contact; her checked lead (Anna) follows the dialog
    assert_eq!(card(&env, "leads", 2002), Some(504142));
    assert_eq!(
        card(&env, "leads", 2003),
        Some(504142),
        "unchecked: untouched"
    );

    let env = Env::new("").await;
    env.edit_config(|t| t.replace("bootstrap = \"adopt\"", "bootstrap = \"chat\""));
    env.w.chatapp.assign_as_human(1, WA, &chat(1), Some(85503));
    env.once(&[]).await;
    assert_eq!(
        card(&env, "leads", 2001),
        Some(504143),
        "the lead takes its dialog's Vera"
    );
    assert_eq!(
        card(&env, "contacts", 1001),
        Some(504141),
        "contacts are not in chat_to_crm"
    );
    assert_eq!(
        dialog(&env, 1),
        Some(85503),
        "dialogs are not written by bootstrap = chat"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rule13_the_safety_brake_and_force() {
    let env = env_with(r#"["contact"]"#, r#"["lead"]"#).await;
    env.edit_config(|t| t.replace("max_writes_per_cycle = 500", "max_writes_per_cycle = 1"));
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.run(&["once"]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("max_writes_per_cycle"), "{}", r.stderr);
    assert_eq!(env.writes(), (0, 0));
    let r = env.once(&["--force"]).await;
    assert_eq!(dialog(&env, 1), Some(85502), "{}", r.stdout);
    assert_eq!(card(&env, "leads", 2001), Some(504142));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchecked_flag_blocks_both_directions() {
    let env = env_with(r#"["lead"]"#, r#"["lead"]"#).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("leads", 2003, 504143, 504141); // unchecked lead changes
    env.once(&[]).await;
    assert_eq!(
        dialog(&env, 2),
        Some(85502),
        "an unchecked card gives nothing"
    );
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85501));
    env.once(&[]).await;
    assert_eq!(
        card(&env, "leads", 2003),
        Some(504143),
        "an unchecked card receives nothing"
    );
    assert_eq!(
        card(&env, "leads", 2002),
        Some(504141),
        "the checked one does"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_directions_converge_then_idle_cycles_write_nothing() {
    let env = env_with(r#"["contact", "lead"]"#, r#"["contact", "lead"]"#).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504143, 504141);
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85501));
    env.once(&[]).await;
    assert_eq!(dialog(&env, 1), Some(85503));
    assert_eq!(card(&env, "leads", 2001), Some(504143));
    assert_eq!(card(&env, "contacts", 1002), Some(504141));
    assert_eq!(card(&env, "leads", 2002), Some(504141));
    let writes = env.writes();
    for i in 0..3 {
        env.w.clock.advance(30);
        let r = env.once(if i == 1 { &["--full"] } else { &[] }).await;
        assert!(
            r.stdout.contains("0 planned"),
            "idle cycle {i}: {}",
            r.stdout
        );
    }
    assert_eq!(env.writes(), writes, "no write in three idle cycles");
}
