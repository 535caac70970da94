//! Issue 13.2: one bad record never stalls the rest. Malformed records stay in the simulators'
//! answers for several cycles; every other change is applied, the bad record is quarantined and
//! shown by `status`, and no cycle fails because of it.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use e2e::{Env, chat};
use serde_json::json;

const WA: &str = "grWhatsApp";

#[tokio::test(flavor = "multi_thread")]
async fn malformed_records_are_quarantined_and_never_stall_the_sync() {
    let env = Env::new("").await;
    env.once(&[]).await;
    let (k, c) = (&env.w.kommo, &env.w.chatapp);

    // an event whose new responsible is null (nobody), a contact whose responsible is a string,
    // a chat whose responsible id is an object: all stay in every answer from now on
    env.w.clock.advance(5);
    k.push_raw_event(json!({
        "id": "01bad0000000000000000000001",
        "type": "entity_responsible_changed",
        "entity_id": 2002,
        "entity_type": "lead",
        "created_by": 504141,
        "created_at": env.w.clock.now(),
        "value_before": [{"responsible_user": {"id": 504141}}],
        "value_after": [{"responsible_user": {"id": null}}],
        "account_id": 1
    }));
    k.set_card_json_override("contacts", 1003, json!({"responsible_user_id": "504143"}));
    c.set_chat_json_override(1, WA, &chat(4), json!({"responsible": {"id": {"x": 1}}}));

    // cycle after cycle, other changes go through
    let changes: [(u64, u64, u64); 3] = [
        (1001, 504142, 85502),
        (1001, 504143, 85503),
        (1002, 504141, 85501),
    ];
    for (i, (contact, user, employee)) in changes.into_iter().enumerate() {
        env.w.clock.advance(30);
        k.set_responsible_as_human("contacts", contact, user, 504141);
        let args: &[&str] = if i == 1 { &["--full"] } else { &[] };
        let r = env.once(args).await;
        assert_eq!(
            c.responsible_of(1, WA, &chat(contact - 1000)),
            Some(employee),
            "cycle {i}: {}",
            r.stdout
        );
    }
    let s = env.run(&["status"]).await;
    assert_eq!(s.code, 0, "{s:?}");
    assert!(s.stdout.contains("quarantined records"), "{}", s.stdout);
    let contact_line = s
        .stdout
        .lines()
        .find(|l| l.contains("contact 1003"))
        .unwrap_or_else(|| panic!("contact 1003 not reported: {}", s.stdout));
    assert!(
        contact_line.contains("responsible_user_id"),
        "{contact_line}"
    );
    assert!(
        contact_line.contains("GET http://127.0.0.1:") && contact_line.contains("/api/v4/contacts"),
        "{contact_line}"
    );
    assert!(
        s.stdout
            .lines()
            .any(|l| l.contains(&chat(4)) && l.contains("responsible")),
        "the chat is reported: {}",
        s.stdout
    );
    assert!(
        !s.stdout.contains(" failed "),
        "no cycle failed: {}",
        s.stdout
    );

    // fixed at the source: the next cycle reads it again and releases it
    k.clear_card_json_override("contacts", 1003);
    c.clear_chat_json_override(1, WA, &chat(4));
    env.w.clock.advance(30);
    env.once(&[]).await;
    let s = env.run(&["status"]).await;
    assert!(!s.stdout.contains("contact 1003"), "{}", s.stdout);
    assert!(!s.stdout.contains("quarantined records"), "{}", s.stdout);
}
