//! Issue 18 item 10: `check-config --online --probe-writes` (SPEC 5), through the binary against
//! the simulators. One write that changes nothing on a dialog and on a card per `chat_to_crm`
//! kind, each read back, every call printed; exit 2 naming the call when one fails: a dialog
//! write refused inside a 200 answer (`"success": false`) or answered with success but without
//! effect. No value changes in any case.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::sim::chatapp::WriteBehaviour;
use e2e::{Env, Run};

const DIALOG_WRITE: &str = "probe: PUT /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/responsible on dialog 1:grWhatsApp:";
const LEAD_WRITE: &str = "probe: PATCH /api/v4/leads on lead ";

/// Every dialog's and every card's responsible, to show the probe changed none.
fn values(env: &Env) -> Vec<String> {
    let mut out: Vec<String> = env
        .w
        .chatapp
        .chats()
        .into_iter()
        .map(|c| {
            format!(
                "dialog {}:{}:{} {:?}",
                c.license_id, c.messenger_type, c.chat_id, c.responsible
            )
        })
        .collect();
    for kind in ["leads", "contacts", "companies", "customers"] {
        out.extend(
            env.w
                .kommo
                .cards(kind)
                .into_iter()
                .map(|c| format!("{kind} {} {}", c.id, c.responsible_user_id)),
        );
    }
    out
}

/// The line of the call that starts with `prefix`.
fn line<'a>(r: &'a Run, prefix: &str) -> &'a str {
    r.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?}: {r:?}"))
}

async fn probe(env: &Env) -> Run {
    let before = values(env);
    let r = env
        .run(&["check-config", "--online", "--probe-writes"])
        .await;
    assert_eq!(values(env), before, "the probe changes no value: {r:?}");
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_reports_each_write_working_on_the_default_simulators() {
    let env = Env::new("").await;
    let written = env.w.chatapp.written_chats().len();
    let patches = env.w.kommo.patch_count();
    let r = probe(&env).await;
    assert_eq!(r.code, 0, "{r:?}");
    let dialog = line(&r, DIALOG_WRITE);
    assert!(
        dialog.contains(": 2xx, ok: worked: responsible ")
            && dialog.contains("recorded the assignment"),
        "{dialog}"
    );
    let lead = line(&r, LEAD_WRITE);
    assert!(
        lead.contains("(lead): 2xx, ok: worked: responsible ")
            && lead.contains("the answer names the card"),
        "{lead}"
    );
    // every call of the probe is printed, reads included, in the order made
    let calls: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("probe: "))
        .collect();
    let order = [
        "probe: GET /v1/chats on dialog ",
        "probe: GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/messages on dialog",
        DIALOG_WRITE,
        "probe: GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId} on dialog",
        "probe: GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/messages on dialog",
        "probe: GET /api/v4/leads on lead ",
        LEAD_WRITE,
        "probe: GET /api/v4/leads (by id) on lead ",
    ];
    assert_eq!(calls.len(), order.len(), "{calls:#?}");
    for (c, want) in calls.iter().zip(order) {
        assert!(c.starts_with(want), "{c} is not {want}");
    }
    assert!(
        calls.iter().all(|c| c.contains(": 2xx, ok: ")),
        "{calls:#?}"
    );
    // exactly one write to each API
    assert_eq!(env.w.chatapp.written_chats().len(), written + 1);
    assert_eq!(env.w.kommo.patch_count(), patches + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dialog_write_without_effect_fails_the_probe_and_is_named() {
    let env = Env::new("").await;
    env.w.chatapp.set_write_behaviour(WriteBehaviour::NoEffect);
    let r = probe(&env).await;
    assert_eq!(r.code, 2, "{r:?}");
    let dialog = line(&r, DIALOG_WRITE);
    assert!(
        dialog.contains(": 2xx, ANSWERED SUCCESS WITHOUT EFFECT: ")
            && dialog.contains("[chatapp.set_responsible]"),
        "{dialog}"
    );
    assert!(
        r.stderr.contains("--probe-writes: 1 call(s) failed: PUT /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/responsible on dialog 1:grWhatsApp:"),
        "the failed call is named: {}",
        r.stderr
    );
    // the card's write still works and says so
    assert!(line(&r, LEAD_WRITE).contains("ok: worked"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dialog_write_refused_inside_a_200_answer_fails_the_probe_with_its_code() {
    let env = Env::new("").await;
    env.w
        .chatapp
        .set_write_behaviour(WriteBehaviour::RefusedInEnvelope);
    let r = probe(&env).await;
    assert_eq!(r.code, 2, "{r:?}");
    let dialog = line(&r, DIALOG_WRITE);
    assert!(
        dialog.contains(": HTTP 200, REFUSED: ApiValidationError: Responsible can not be changed"),
        "{dialog}"
    );
    assert!(
        r.stderr.contains("1 call(s) failed: PUT ") && r.stderr.contains("(HTTP 200)"),
        "{}",
        r.stderr
    );
    // a refused write is not read back
    assert!(
        !r.stdout.contains(
            "probe: GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId} on"
        ),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_writes_needs_online() {
    let env = Env::new("").await;
    let r = env.run(&["check-config", "--probe-writes"]).await;
    assert_eq!(r.code, 2, "a usage error: {r:?}");
    assert!(r.stderr.contains("--online"), "{}", r.stderr);
    assert_eq!(env.w.chatapp.written_chats().len(), 0);
    assert_eq!(env.w.kommo.patch_count(), 0);
}
