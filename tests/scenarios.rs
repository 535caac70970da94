//! Scenario tests: whole cycles ([`Syncer::run_cycle`]) against in-memory fakes of the ports
//! (`tests/common/fakes.rs`), asserting the exact, ordered calls each cycle makes: what it read,
//! what it recorded, what it wrote, in which order. No sockets, no files, no sleeps.
//!
//! The world: two dialogs, each linked to a contact through its `MESSENGER` field; the contact
//! of dialog 2 is linked to lead 2001. Contacts push their responsible to their dialog
//! (`crm_to_chat = ["contact"]`), dialogs push theirs to leads (`chat_to_crm = ["lead"]`).
//! Kommo users Ann (504142), Bob (504143) and Carol (504144) are ChatApp employees 7001, 7002
//! and 7003. Everyone
//! starts with Ann; the first (full, `adopt`) cycle has recorded that as the bases.

#![allow(clippy::unwrap_used)]

#[path = "common/fakes.rs"]
mod fakes;
#[path = "common/world.rs"]
mod world;

use chatapp_kommo_sync::config::Config;
use chatapp_kommo_sync::core::model::{Employee, EmployeeId, KommoUser, KommoUserId};
use chatapp_kommo_sync::http::{ErrorPolicy, error_policy};
use chatapp_kommo_sync::kommo::{Pipelines, StatusInfo};
use chatapp_kommo_sync::ports::ApiMeter;
use chatapp_kommo_sync::store::{CycleKind, Outcome};
use chatapp_kommo_sync::sync::{CycleError, CycleOptions, CycleReport, Hint, Syncer, WriteResult};
use fakes::{
    CallLog, ChatAppState, FakeChatApp, FakeKommo, FakeStore, KommoState, StoreFault, StoreState,
    card, chat, http_status, lead_card,
};
use std::sync::Arc;
use world::{contact, dkey, lead};

const ANN: u64 = 504142;
const BOB: u64 = 504143;
const CAROL: u64 = 504144;
const ANN_E: u64 = 7001;
const BOB_E: u64 = 7002;
const CAROL_E: u64 = 7003;
/// The pipeline of lead 2001 and its open status.
const PIPELINE: (u64, u64) = (10, 11);
/// The overlap of incremental reads (the default `events_overlap` and `chats_overlap`).
const OVERLAP: i64 = 120;

const CONFIG: &str = r#"
[daemon]
state_path = "/nonexistent/scenarios.redb"

[kommo]
base_url = "https://fake.kommo.invalid"
token_file = "kommo-token"

[chatapp]
base_url = "https://fake.chatapp.invalid"
email = "ops@example.com"
password_file = "chatapp-password"
app_id = "app_1_1"
company_id = 1
license_ids = [1]

[sync]
crm_to_chat = ["contact"]
chat_to_crm = ["lead"]
conflict = "newest"
bootstrap = "adopt"

[links]
messenger_field = "MESSENGER"

[users]
match_by_email = false
map = [
    { kommo = 504142, chatapp = 7001 },
    { kommo = 504143, chatapp = 7002 },
    { kommo = 504144, chatapp = 7003 },
]
"#;

/// The fakes, the syncer over them, and their shared call log.
struct Scenario {
    log: CallLog,
    kommo: FakeKommo,
    chatapp: FakeChatApp,
    store: FakeStore,
    syncer: Syncer<FakeKommo, FakeChatApp, FakeStore>,
    /// The servers' clocks at the first cycle: the daemon's own clock then (the cycle dates a
    /// card's change by its own clock when no event names it, and compares that with ChatApp's
    /// times), so the scenarios' changes, made after it, are later on both clocks.
    t0: i64,
}

fn kommo_world(t0: i64) -> KommoState {
    let mut pipelines = Pipelines::default();
    pipelines.names.insert(PIPELINE.0, "Sales".into());
    pipelines.statuses.insert(
        PIPELINE.1,
        StatusInfo {
            pipeline: PIPELINE.0,
            name: "In work".into(),
            kind: 0,
        },
    );
    let mut k = KommoState {
        users: [ANN, BOB, CAROL]
            .map(|id| KommoUser {
                id: KommoUserId(id),
                name: format!("user {id}"),
                email: format!("{id}@example.com"),
                active: true,
            })
            .to_vec(),
        pipelines,
        filters_enabled: true,
        now: t0,
        ..KommoState::default()
    };
    k.cards
        .insert(contact(3001), card(3001, ANN, t0 - 500, &[&dkey(1)]));
    k.cards
        .insert(contact(3002), card(3002, ANN, t0 - 500, &[&dkey(2)]));
    k.cards.insert(
        lead(2001),
        lead_card(2001, ANN, t0 - 500, PIPELINE, &[3002]),
    );
    k
}

fn chatapp_world(t0: i64) -> ChatAppState {
    let mut c = ChatAppState {
        employees: [ANN_E, BOB_E, CAROL_E]
            .map(|id| Employee {
                id: EmployeeId(id),
                name: format!("employee {id}"),
                email: format!("{id}@example.com"),
            })
            .to_vec(),
        now: t0,
        ..ChatAppState::default()
    };
    for n in [1, 2] {
        c.chats
            .insert(dkey(n), chat(&dkey(n), Some(ANN_E), t0 - 500, t0 - 900));
    }
    c
}

impl Scenario {
    /// The world after its first cycle (full, bootstrap `adopt`: bases recorded, nothing
    /// written), with an empty call log and both clocks moved on by a minute.
    async fn bootstrapped() -> Scenario {
        Scenario::bootstrapped_from(CONFIG, |_| {}).await
    }

    /// [`Scenario::bootstrapped`] with another config, and Kommo's world changed by `tweak`.
    async fn bootstrapped_from(config: &str, tweak: impl FnOnce(&mut KommoState)) -> Scenario {
        let t0 = chatapp_kommo_sync::clock::now_unix();
        let log = CallLog::default();
        let mut world = kommo_world(t0);
        tweak(&mut world);
        let kommo = FakeKommo::new(world, &log);
        let chatapp = FakeChatApp::new(chatapp_world(t0), &log);
        let store = FakeStore::new(StoreState::default(), &log);
        let config = Config::parse(config, "scenarios.toml").expect("the config parses");
        let syncer = Syncer::new(
            config,
            kommo.clone(),
            chatapp.clone(),
            Arc::new(store.clone()),
        );
        let s = Scenario {
            log,
            kommo,
            chatapp,
            store,
            syncer,
            t0,
        };
        let first = s.cycle().await.expect("the bootstrap cycle");
        assert!(first.plan.writes.is_empty(), "adopt writes nothing");
        assert_eq!(first.record.outcome, Outcome::Ok);
        s.log.take();
        s.tick(60);
        s
    }

    /// One hint cycle (not in shadow mode) naming `cards` and the dialogs numbered `dialogs`.
    async fn hint(
        &self,
        cards: &[chatapp_kommo_sync::core::model::CardId],
        dialogs: &[u64],
    ) -> CycleReport {
        self.syncer
            .run_hint(&hint(cards, dialogs), false)
            .await
            .expect("the hint")
    }

    /// One incremental cycle.
    async fn cycle(&self) -> Result<CycleReport, CycleError> {
        self.syncer.run_cycle(CycleOptions::default()).await
    }

    /// Both servers' clocks move on by `secs`.
    fn tick(&self, secs: i64) {
        self.kommo.state().now += secs;
        self.chatapp.state().now += secs;
    }

    /// The calls since the last `calls()`.
    fn calls(&self) -> Vec<String> {
        self.log.take()
    }
}

/// The first calls of every cycle: the token retry, the cycle id, recovery's look at the intents.
const START: [&str; 3] = [
    "kommo.retry_unsaved_token",
    "store.next_cycle_id",
    "store.intents",
];

/// The reads of an incremental cycle whose last committed cycle read both servers at `read_at`
/// (it starts there, minus the overlap), with `by_id` the lines of the cards read by id (named
/// by fresh events, or held).
fn reads(read_at: i64, by_id: &[&str]) -> Vec<String> {
    let from = read_at - OVERLAP;
    let mut v = strings(&[
        "store.frame",
        "store.pipelines",
        "store.watermarks",
        "store.bases",
        "store.quarantined",
        "kommo.users",
        "chatapp.employees",
        &format!("kommo.events lead,contact stages=true from={from}"),
        "store.events_seen",
        "kommo.filters_enabled",
        &format!("kommo.each_card lead since={from}"),
        &format!("kommo.each_card contact since={from}"),
    ]);
    v.extend(strings(by_id));
    v.extend(strings(&[&format!("chatapp.chats since={from}")]));
    v
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

/// A cycle's calls: `START`, then the `rest` in order.
fn cycle_calls(parts: &[Vec<String>]) -> Vec<String> {
    let mut v = strings(&START);
    for p in parts {
        v.extend(p.iter().cloned());
    }
    v
}

const D1: &str = "1:grWhatsApp:79990000001@c.us";

#[tokio::test]
async fn idle_cycle_reads_exactly_this_and_writes_nothing() {
    let s = Scenario::bootstrapped().await;
    let r = s.cycle().await.expect("an idle cycle");
    let from = s.t0 - OVERLAP;
    assert!(r.plan.writes.is_empty());
    assert_eq!(r.record.outcome, Outcome::Ok);
    assert_eq!(
        s.calls(),
        strings(&[
            "kommo.retry_unsaved_token",
            "store.next_cycle_id",
            "store.intents",
            "store.frame",
            "store.pipelines",
            "store.watermarks",
            "store.bases",
            "store.quarantined",
            "kommo.users",
            "chatapp.employees",
            &format!("kommo.events lead,contact stages=true from={from}"),
            "store.events_seen",
            "kommo.filters_enabled",
            &format!("kommo.each_card lead since={from}"),
            &format!("kommo.each_card contact since={from}"),
            &format!("chatapp.chats since={from}"),
            "store.commit_cycle 2",
            "store.record_cycle 2 ok",
        ])
    );
    assert_eq!(s.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn crm_to_chat_change_reaches_the_dialog_intent_first() {
    let s = Scenario::bootstrapped().await;
    s.kommo.state().set_responsible(contact(3001), BOB, ANN);
    let r = s.cycle().await.expect("the cycle");
    assert_eq!(r.results, vec![WriteResult::Done]);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                &format!("chatapp.chat {D1}"),
                &format!("store.record_intents [dialog:{D1}]"),
                &format!("chatapp.set_responsible {D1} -> {BOB_E}"),
                &format!("chatapp.chat {D1}"),
                &format!("store.confirm_write dialog:{D1} (write)"),
                "store.commit_cycle 2",
                "store.record_cycle 2 ok",
            ]),
        ])
    );
    assert_eq!(s.chatapp.state().responsible(&dkey(1)), Some(BOB_E));
    assert!(s.store.state().intents.is_empty());
    assert_eq!(s.store.state().audit.len(), 1);

    // rule 9: the daemon's own write does not come back as a change
    s.tick(60);
    let r = s.cycle().await.expect("the next cycle");
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0 + 60, &[]),
            strings(&["store.commit_cycle 3", "store.record_cycle 3 ok"])
        ])
    );
}

#[tokio::test]
async fn chat_to_crm_change_reaches_the_lead_intent_first() {
    let s = Scenario::bootstrapped().await;
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    let r = s.cycle().await.expect("the cycle");
    assert_eq!(r.results, vec![WriteResult::Done]);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                "kommo.cards_by_id lead [2001]",
                "store.record_intents [lead:2001]",
                &format!("kommo.patch lead [2001->{BOB}]"),
                "store.confirm_write lead:2001 (write)",
                "store.commit_cycle 2",
                "store.record_cycle 2 ok",
            ]),
        ])
    );
    assert_eq!(s.kommo.state().responsible(lead(2001)), BOB);

    s.tick(60);
    let r = s.cycle().await.expect("the next cycle");
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0 + 60, &[]),
            strings(&["store.commit_cycle 3", "store.record_cycle 3 ok"])
        ])
    );
}

#[tokio::test]
async fn check_before_write_drops_a_write_whose_target_changed_meanwhile() {
    let s = Scenario::bootstrapped().await;
    s.kommo.state().set_responsible(contact(3001), BOB, ANN);
    // a person assigns the dialog to Carol after the read, before the write
    s.chatapp
        .before("chatapp.chat", |c| c.assign(&dkey(1), Some(CAROL_E)));
    let r = s.cycle().await.expect("the cycle");
    assert!(
        matches!(&r.results[..], [WriteResult::Dropped(why)] if why.contains("changed meanwhile")),
        "{:?}",
        r.results
    );
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                &format!("chatapp.chat {D1}"),
                "store.commit_cycle 2",
                "store.record_cycle 2 ok",
            ]),
        ])
    );
    assert_eq!(s.chatapp.state().responsible(&dkey(1)), Some(CAROL_E));
    assert!(s.store.state().intents.is_empty());
    assert_eq!(r.record.writes_failed, 1);
}

/// The lead's sync checkbox (`[sync.flag_fields] lead`), checked or not.
fn set_lead_flag(k: &mut KommoState, checked: bool) {
    use chatapp_kommo_sync::kommo::{CustomField, FieldValue};
    let c = k.cards.get_mut(&lead(2001)).expect("lead 2001");
    let fields = c.custom_fields_values.get_or_insert_with(Vec::new);
    fields.retain(|f| f.field_id != 950);
    fields.push(CustomField {
        field_id: 950,
        field_code: None,
        values: Some(vec![FieldValue {
            value: serde_json::Value::Bool(checked),
        }]),
    });
}

/// Rule 10 covers the sync flag too: a lead whose checkbox a person unchecks between the
/// decision and the write no longer takes part, and is not written (a hint that decides a
/// dialog without reading its cards relies on this).
#[tokio::test]
async fn check_before_write_drops_a_write_to_a_lead_unchecked_meanwhile() {
    let config = CONFIG.replace(
        "bootstrap = \"adopt\"\n",
        "bootstrap = \"adopt\"\n\n[sync.flag_fields]\nlead = 950\n",
    );
    let s = Scenario::bootstrapped_from(&config, |k| {
        k.flag_fields
            .insert(chatapp_kommo_sync::core::model::SyncKind::Lead, 950);
        set_lead_flag(k, true);
    })
    .await;
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    s.kommo
        .before("kommo.cards_by_id", |k| set_lead_flag(k, false));
    let r = s.cycle().await.expect("the cycle");
    assert!(
        matches!(&r.results[..], [WriteResult::Dropped(why)] if why.contains("no longer takes part")),
        "{:?}",
        r.results
    );
    assert_eq!(s.kommo.state().responsible(lead(2001)), ANN);
    assert_eq!(r.record.writes_failed, 1);
}

/// A 4xx parks the write (issue 18 moved this test: before, the next cycle sent it again; now
/// the same write waits for its back-off, 15 min, and is sent when it ends).
#[tokio::test]
async fn a_4xx_parks_the_write_until_its_back_off_ends() {
    let s = Scenario::bootstrapped().await;
    let bad_request = http_status("kommo", "PATCH /api/v4/leads", 400);
    assert_eq!(error_policy(&bad_request), ErrorPolicy::Reject);
    s.kommo.faults().fail("kommo.patch", 1, bad_request);
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    let r = s
        .cycle()
        .await
        .expect("a rejected write does not fail the cycle");
    assert!(
        matches!(&r.results[..], [WriteResult::Rejected(why)] if why.starts_with("HTTP 400: fake 400; tried again after")),
        "{:?}",
        r.results
    );
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                "kommo.cards_by_id lead [2001]",
                "store.record_intents [lead:2001]",
                &format!("kommo.patch lead [2001->{BOB}] => HTTP 400"),
                "store.park_write lead:2001 (rejected)",
                "store.commit_cycle 2",
                "store.record_cycle 2 ok",
            ]),
        ])
    );
    assert_eq!(s.kommo.state().responsible(lead(2001)), ANN);
    assert!(s.store.state().intents.is_empty());
    assert_eq!(s.store.state().failures.len(), 1);

    // a minute later: decided again, held back (no read of the target, no PATCH)
    s.tick(60);
    let r = s.cycle().await.expect("the next cycle");
    assert!(
        matches!(&r.results[..], [WriteResult::Waiting(why)] if why.contains("rejected 1 time(s)")),
        "{:?}",
        r.results
    );
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0 + 60, &["kommo.cards_by_id lead [2001]"]),
            strings(&[
                "store.write_failures",
                "store.commit_cycle 3",
                "store.record_cycle 3 ok",
            ]),
        ])
    );

    // the back-off over (the cycle's clock is the machine's: its end is moved to the past):
    // sent, confirmed, the failure gone
    for f in s.store.state().failures.values_mut() {
        assert!(
            f.retry_at > f.last_at + 14 * 60,
            "a back-off of 15 min: {f:?}"
        );
        f.retry_at = f.last_at;
    }
    s.tick(60);
    let r = s.cycle().await.expect("the cycle after the back-off");
    assert_eq!(r.results, vec![WriteResult::Done]);
    assert_eq!(s.kommo.state().responsible(lead(2001)), BOB);
    assert!(
        s.store.state().failures.is_empty(),
        "a confirmed write clears its failure"
    );
}

#[tokio::test]
async fn a_5xx_fails_the_cycle_and_the_next_one_settles_the_intent_and_writes_once() {
    let s = Scenario::bootstrapped().await;
    let unavailable = http_status("chatapp", "POST /v1/chats/responsible", 503);
    assert_eq!(error_policy(&unavailable), ErrorPolicy::Retry);
    s.chatapp
        .faults()
        .fail("chatapp.set_responsible", 1, unavailable);
    s.kommo.state().set_responsible(contact(3001), BOB, ANN);
    let e = s.cycle().await.expect_err("a 5xx fails the cycle");
    assert!(matches!(e, CycleError::Api(_)), "{e}");
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                &format!("chatapp.chat {D1}"),
                &format!("store.record_intents [dialog:{D1}]"),
                &format!("chatapp.set_responsible {D1} -> {BOB_E} => HTTP 503"),
                "store.record_cycle 2 failed",
            ]),
        ])
    );
    assert_eq!(s.store.state().intents.len(), 1, "the intent stays pending");

    s.tick(60);
    let r = s.cycle().await.expect("the next cycle");
    assert_eq!(r.recovered, 1);
    assert_eq!(r.results, vec![WriteResult::Done]);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            strings(&[
                &format!("chatapp.chat {D1}"),
                &format!("store.drop_intent dialog:{D1}"),
            ]),
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                &format!("chatapp.chat {D1}"),
                &format!("store.record_intents [dialog:{D1}]"),
                &format!("chatapp.set_responsible {D1} -> {BOB_E}"),
                &format!("chatapp.chat {D1}"),
                &format!("store.confirm_write dialog:{D1} (write)"),
                "store.commit_cycle 3",
                "store.record_cycle 3 ok",
            ]),
        ])
    );
    assert_eq!(s.chatapp.state().responsible(&dkey(1)), Some(BOB_E));
}

#[tokio::test]
async fn a_crash_right_after_the_intent_is_recovered_and_written_once() {
    let s = Scenario::bootstrapped().await;
    s.store
        .faults()
        .fail("store.record_intents", 1, StoreFault::Crash);
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    let e = s.cycle().await.expect_err("the crash fails the cycle");
    assert!(matches!(e, CycleError::Store(_)), "{e}");
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                "kommo.cards_by_id lead [2001]",
                "store.record_intents [lead:2001] => crash",
                "store.record_cycle 2 failed",
            ]),
        ])
    );
    assert_eq!(s.store.state().intents.len(), 1);
    assert_eq!(s.kommo.state().responsible(lead(2001)), ANN);

    s.tick(60);
    let r = s.cycle().await.expect("the next cycle");
    assert_eq!(r.recovered, 1);
    assert_eq!(r.results, vec![WriteResult::Done]);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            strings(&[
                "kommo.cards_by_id lead [2001]",
                "store.drop_intent lead:2001",
            ]),
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                "kommo.cards_by_id lead [2001]",
                "store.record_intents [lead:2001]",
                &format!("kommo.patch lead [2001->{BOB}]"),
                "store.confirm_write lead:2001 (write)",
                "store.commit_cycle 3",
                "store.record_cycle 3 ok",
            ]),
        ])
    );
    assert_eq!(s.kommo.state().responsible(lead(2001)), BOB);
}

#[tokio::test]
async fn a_crash_between_write_and_confirm_is_recovered_without_a_second_write() {
    let s = Scenario::bootstrapped().await;
    s.store
        .faults()
        .fail("store.confirm_write", 1, StoreFault::Error);
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    let e = s.cycle().await.expect_err("the crash fails the cycle");
    assert!(matches!(e, CycleError::Store(_)), "{e}");
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&[
                "store.write_failures",
                "kommo.cards_by_id lead [2001]",
                "store.record_intents [lead:2001]",
                &format!("kommo.patch lead [2001->{BOB}]"),
                "store.confirm_write lead:2001 (write) => store error",
                "store.record_cycle 2 failed",
            ]),
        ])
    );
    assert_eq!(s.store.state().intents.len(), 1);
    assert_eq!(
        s.kommo.state().responsible(lead(2001)),
        BOB,
        "the write landed"
    );

    s.tick(60);
    let r = s.cycle().await.expect("the next cycle");
    assert_eq!(r.recovered, 1);
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            strings(&[
                "kommo.cards_by_id lead [2001]",
                "store.confirm_write lead:2001 (recovered)",
            ]),
            reads(s.t0, &[]),
            strings(&["store.commit_cycle 3", "store.record_cycle 3 ok"]),
        ])
    );
    let st = s.store.state();
    assert!(st.intents.is_empty());
    let hows: Vec<&str> = st.audit.iter().map(|a| a.how.as_str()).collect();
    assert_eq!(hows, ["recovered"]);
}

// ---------------------------------------------------------------------------------------------
// Hint cycles (SPEC 6.2): only the records webhook calls named

fn hint(cards: &[chatapp_kommo_sync::core::model::CardId], dialogs: &[u64]) -> Hint {
    Hint {
        cards: cards.iter().copied().collect(),
        dialogs: dialogs.iter().map(|n| dkey(*n)).collect(),
    }
}

/// The reads every hint cycle starts with: its frame and the stored state, no API call.
const HINT_START: [&str; 5] = [
    "store.frame",
    "store.pipelines",
    "store.watermarks",
    "store.bases",
    "store.quarantined",
];

#[tokio::test]
async fn a_message_callback_on_an_assigned_linked_dialog_costs_no_kommo_request() {
    let s = Scenario::bootstrapped().await;
    let k0 = s.kommo.request_count();
    let r = s.hint(&[], &[1, 2]).await;
    assert_eq!(r.record.kind, CycleKind::Hint);
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            strings(&HINT_START),
            // nothing found: no commit, no cycle record (no db write at all)
            strings(&[
                &format!("chatapp.chat {D1}"),
                "chatapp.chat 1:grWhatsApp:79990000002@c.us",
            ]),
        ])
    );
    assert!(!r.recorded);
    assert_eq!(s.kommo.request_count(), k0, "no Kommo request");
    assert_eq!(r.record.kommo_requests, 0);
    assert_eq!(r.record.chatapp_requests, 2);
}

#[tokio::test]
async fn a_dialog_hint_reads_the_events_and_writes_the_lead_as_an_incremental_cycle_would() {
    let s = Scenario::bootstrapped().await;
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    let r = s.hint(&[], &[2]).await;
    assert_eq!(r.results, vec![WriteResult::Done]);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            strings(&HINT_START),
            strings(&[
                "chatapp.chat 1:grWhatsApp:79990000002@c.us",
                // it changed hands: its cards are read (links and flags as they are now); none
                // changed hands since the last poll, so no events page is needed to date them,
                // and the lead read a moment ago is not read again before its write
                "kommo.cards_by_id lead [2001]",
                "kommo.cards_by_id contact [3002]",
                "store.write_failures",
                "store.record_intents [lead:2001]",
                &format!("kommo.patch lead [2001->{BOB}]"),
                "store.confirm_write lead:2001 (write)",
                "store.commit_cycle 2",
                "store.record_cycle 2 ok",
            ]),
        ])
    );
    assert_eq!(s.kommo.state().responsible(lead(2001)), BOB);
    // the next polled cycle reads its window as before (the hint moved no watermark) and finds
    // nothing to do: the hint's records equal their new bases
    s.tick(60);
    let r = s.cycle().await.expect("the next cycle");
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(
        s.calls(),
        cycle_calls(&[
            reads(s.t0, &[]),
            strings(&["store.commit_cycle 3", "store.record_cycle 3 ok"])
        ])
    );
}

#[tokio::test]
async fn a_card_hint_reads_the_card_and_the_events_and_decides_as_an_incremental_cycle() {
    let (a, b) = (
        Scenario::bootstrapped().await,
        Scenario::bootstrapped().await,
    );
    for s in [&a, &b] {
        s.kommo.state().set_responsible(contact(3001), BOB, ANN);
    }
    let by_hint = a.hint(&[contact(3001)], &[]).await;
    let by_poll = b.cycle().await.expect("the incremental cycle");
    let targets = |r: &CycleReport| -> Vec<String> {
        r.plan
            .writes
            .iter()
            .map(|w| format!("{:?}", w.target))
            .collect()
    };
    assert_eq!(targets(&by_hint), targets(&by_poll));
    assert_eq!(by_hint.results, vec![WriteResult::Done]);
    let from = a.t0 - OVERLAP;
    assert_eq!(
        a.calls(),
        cycle_calls(&[
            strings(&HINT_START),
            strings(&[
                &format!("kommo.events lead,contact stages=true from={from}"),
                "store.events_seen",
                "kommo.cards_by_id contact [3001]",
                "store.write_failures",
                &format!("chatapp.chat {D1}"),
                &format!("store.record_intents [dialog:{D1}]"),
                &format!("chatapp.set_responsible {D1} -> {BOB_E}"),
                &format!("chatapp.chat {D1}"),
                &format!("store.confirm_write dialog:{D1} (write)"),
                "store.commit_cycle 2",
                "store.record_cycle 2 ok",
            ]),
        ])
    );
    assert_eq!(by_hint.record.kommo_requests, 2, "events and the card");
    // the polled cycle reads the same window as if the hint had not run (its card comes with
    // the `updated_at` page) and finds the card equal to its new base
    a.tick(60);
    let r = a.cycle().await.expect("the next cycle");
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(
        a.calls(),
        cycle_calls(&[
            reads(a.t0, &[]),
            strings(&["store.commit_cycle 3", "store.record_cycle 3 ok"])
        ])
    );
}

#[tokio::test]
async fn a_hint_before_any_polled_cycle_of_this_syncer_runs_an_incremental_cycle() {
    let s = Scenario::bootstrapped().await;
    let config = Config::parse(CONFIG, "scenarios.toml").expect("the config parses");
    // a syncer just built (a start, a reload) remembers no user map: the hint cannot decide
    let fresh = Syncer::new(
        config,
        s.kommo.clone(),
        s.chatapp.clone(),
        Arc::new(s.store.clone()),
    );
    let r = fresh
        .run_hint(&hint(&[], &[1]), false)
        .await
        .expect("the cycle");
    assert_eq!(r.record.kind, CycleKind::Incremental);
    assert!(s.calls().contains(&"kommo.users".to_string()));
    // now it remembers one: the next hint is a hint
    let r = fresh
        .run_hint(&hint(&[], &[1]), false)
        .await
        .expect("the hint");
    assert_eq!(r.record.kind, CycleKind::Hint);
}

#[tokio::test]
async fn a_hint_naming_a_chat_of_another_line_or_a_card_of_an_unsynced_kind_reads_nothing() {
    use chatapp_kommo_sync::core::model::{CardId, CardKind, DialogKey};
    let s = Scenario::bootstrapped().await;
    // a call may name anything: line 2 is not in `license_ids`, customers are not synced
    let h = Hint {
        cards: [CardId::new(CardKind::Customer, 5)].into_iter().collect(),
        dialogs: [DialogKey::new(2, "grWhatsApp", "79990000001@c.us")]
            .into_iter()
            .collect(),
    };
    let r = s.syncer.run_hint(&h, false).await.expect("the hint");
    assert!(r.plan.writes.is_empty());
    assert_eq!(s.calls(), cycle_calls(&[strings(&HINT_START)]));
    assert!(!r.recorded, "nothing read, nothing recorded");
}

#[tokio::test]
async fn a_hint_in_shadow_mode_writes_nothing() {
    let s = Scenario::bootstrapped().await;
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    // `run --shadow` passes its flag to every cycle, hint cycles included
    let r = s
        .syncer
        .run_hint(&hint(&[], &[2]), true)
        .await
        .expect("the cycle");
    assert_ne!(
        r.record.kind,
        CycleKind::Hint,
        "shadow mode reads as a polled cycle"
    );
    assert!(
        r.results.iter().all(|w| *w == WriteResult::Shadowed),
        "{:?}",
        r.results
    );
    let calls = s.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("kommo.patch") || c.starts_with("chatapp.set_responsible")),
        "{calls:?}"
    );
    assert_eq!(s.kommo.state().responsible(lead(2001)), ANN);
}

/// Rule 5 through hints: a contact changed in Kommo, then (later) its dialog changed in ChatApp;
/// the dialog's callback is answered first. Deciding the dialog from the contact's base would push
/// the dialog's value to the lead and later let the contact's older change overwrite the dialog;
/// the hint reads the dialog's cards with their events, so the newer change wins, as one
/// incremental cycle decides.
#[tokio::test]
async fn hints_answered_out_of_order_decide_as_one_incremental_cycle() {
    let (a, b) = (
        Scenario::bootstrapped().await,
        Scenario::bootstrapped().await,
    );
    for s in [&a, &b] {
        s.kommo.state().set_responsible(contact(3002), BOB, ANN);
        s.tick(300);
        s.chatapp.state().assign(&dkey(2), Some(CAROL_E));
    }
    a.hint(&[], &[2]).await; // the dialog's hint
    a.hint(&[contact(3002)], &[]).await; // the contact's
    b.cycle().await.expect("the incremental cycle");
    let state = |s: &Scenario| {
        let dialog = s.chatapp.state().responsible(&dkey(2));
        let k = s.kommo.state();
        (
            dialog,
            k.responsible(lead(2001)),
            k.responsible(contact(3002)),
        )
    };
    assert_eq!(state(&b), (Some(CAROL_E), CAROL, BOB), "the reference");
    assert_eq!(state(&a), state(&b));
}

/// A hint writes a card it read by id moments before without reading it again: that read is
/// rule 10's check (`apply::FRESH_READ`), so each such write costs one request, not two.
#[tokio::test]
async fn a_hint_writes_a_card_it_just_read_without_reading_it_again() {
    let s = Scenario::bootstrapped().await;
    // a person moves lead 2001 to Carol in Kommo (an event names it), later the dialog to Bob
    s.kommo.state().set_responsible(lead(2001), CAROL, ANN);
    s.tick(300);
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    let r = s.hint(&[], &[2]).await;
    assert_eq!(r.results, vec![WriteResult::Done]);
    let kommo: Vec<String> = s
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("kommo."))
        .collect();
    assert_eq!(
        kommo,
        [
            "kommo.retry_unsaved_token".to_string(),
            // the dialog's cards, then (the lead changed hands too) the events that date it
            "kommo.cards_by_id lead [2001]".into(),
            "kommo.cards_by_id contact [3002]".into(),
            format!(
                "kommo.events lead,contact stages=true from={}",
                s.t0 - OVERLAP
            ),
            format!("kommo.patch lead [2001->{BOB}]"),
        ]
    );
    assert_eq!(s.kommo.state().responsible(lead(2001)), BOB);
    assert_eq!(r.record.kommo_requests, 4);
}

/// The shortcut has an age: a card read longer than `FRESH_READ` before its write is read again
/// (here the hint's read of the pipelines, for a status it did not know, takes that long).
#[tokio::test]
async fn a_hint_reads_a_card_again_when_its_read_is_older_than_fresh_read() {
    use chatapp_kommo_sync::sync::apply::FRESH_READ;
    let s = Scenario::bootstrapped().await;
    {
        let mut k = s.kommo.state();
        k.set_responsible(lead(2001), CAROL, ANN);
        k.cards.get_mut(&lead(2001)).expect("lead 2001").status_id = Some(12);
    }
    s.kommo.before("kommo.pipelines", |k| {
        k.pipelines.statuses.insert(
            12,
            StatusInfo {
                pipeline: PIPELINE.0,
                name: "Next".into(),
                kind: 0,
            },
        );
        std::thread::sleep(FRESH_READ + std::time::Duration::from_millis(100));
    });
    s.tick(300);
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    let r = s.hint(&[], &[2]).await;
    assert_eq!(r.results, vec![WriteResult::Done]);
    let calls = s.calls();
    let reads = calls
        .iter()
        .filter(|c| *c == "kommo.cards_by_id lead [2001]")
        .count();
    assert_eq!(reads, 2, "{calls:?}");
    assert!(calls.contains(&"kommo.pipelines".to_string()), "{calls:?}");
    assert_eq!(s.kommo.state().responsible(lead(2001)), BOB);
}

/// The dialog changed hands first, its contact later (before the next poll): the dialog's hint
/// reads the contact, sees it changed hands too and dates it by the events, so the newer Kommo
/// change wins (rule 5), as on a polled cycle. Without the events the contact would be dated by
/// the daemon's clock (earlier than the servers' here) and the dialog would win.
#[tokio::test]
async fn a_dialog_hint_dates_a_card_that_changed_hands_too_by_the_events() {
    let (a, b) = (
        Scenario::bootstrapped().await,
        Scenario::bootstrapped().await,
    );
    for s in [&a, &b] {
        s.chatapp.state().assign(&dkey(2), Some(CAROL_E));
        s.tick(300);
        s.kommo.state().set_responsible(contact(3002), BOB, ANN);
    }
    a.hint(&[], &[2]).await;
    b.cycle().await.expect("the incremental cycle");
    let state = |s: &Scenario| {
        let dialog = s.chatapp.state().responsible(&dkey(2));
        (dialog, s.kommo.state().responsible(lead(2001)))
    };
    assert_eq!(state(&b), (Some(BOB_E), BOB), "the reference");
    assert_eq!(state(&a), state(&b));
}

/// A hint naming a contact and a dialog that changed hands reads each kind once: the named
/// contact and the contact around the dialog come in one request.
#[tokio::test]
async fn a_hint_reads_each_kind_of_card_once() {
    let s = Scenario::bootstrapped().await;
    s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    s.hint(&[contact(3001)], &[2]).await;
    let reads: Vec<String> = s
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("kommo.cards_by_id"))
        .collect();
    assert_eq!(
        reads,
        [
            "kommo.cards_by_id lead [2001]",
            "kommo.cards_by_id contact [3001,3002]"
        ]
    );
}

/// A chat read on its own may hold only `id`, `name` and `responsible` (SPEC 6.1): for a dialog
/// with a base, the rest stays the base's. A closed dialog whose answer lacks `status` is not
/// taken as reopened (rule 2 would push the contact's responsible onto it).
#[tokio::test]
async fn a_minimal_one_chat_answer_does_not_reopen_a_closed_dialog() {
    let s = Scenario::bootstrapped().await;
    // dialog 1 closes with Bob (a polled cycle reads it closed), then the contact moves to Carol
    s.chatapp.state().assign(&dkey(1), Some(BOB_E));
    s.chatapp.state().close(&dkey(1));
    s.cycle().await.expect("the polled cycle");
    s.calls();
    s.chatapp.state().minimal_chat_answers = true;
    let r = s.hint(&[], &[1]).await;
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(s.chatapp.state().responsible(&dkey(1)), Some(BOB_E));
}

/// A new message moves the chat's `lastTime`: the dialog differs from its base only in activity,
/// so its hint reads no card (the scale check found such hints reading the dialog's cards).
#[tokio::test]
async fn a_new_message_on_an_assigned_dialog_reads_no_card() {
    let s = Scenario::bootstrapped().await;
    let now = s.chatapp.state().now;
    s.chatapp.state().chats.get_mut(&dkey(1)).unwrap().last_time = now;
    let k0 = s.kommo.request_count();
    let r = s.hint(&[], &[1]).await;
    assert!(r.plan.writes.is_empty(), "{:?}", r.plan.writes);
    assert_eq!(s.kommo.request_count(), k0, "{:?}", s.calls());
}

/// Two bootstrapped worlds where a person edits a card in Kommo (`edit`, with its `updated_at`
/// moved: no responsible change, so no event), then moves dialog 2 to Bob in ChatApp: one decided
/// by the dialog's hint, the other by an incremental cycle. Returns lead 2001's responsible in
/// each (hint, poll).
async fn lead_after_hint_and_poll(edit: impl Fn(&mut KommoState)) -> (u64, u64) {
    let a = Scenario::bootstrapped().await;
    let b = Scenario::bootstrapped().await;
    for s in [&a, &b] {
        s.tick(60);
        edit(&mut s.kommo.state());
        s.tick(60);
        s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    }
    a.hint(&[], &[2]).await;
    b.cycle().await.expect("the incremental cycle");
    let by_hint = a.kommo.state().responsible(lead(2001));
    let by_poll = b.kommo.state().responsible(lead(2001));
    (by_hint, by_poll)
}

/// (From a review.) A lead unlinked from the dialog's contact since the last poll must not
/// receive the dialog's new responsible, on a hint as on a poll.
#[tokio::test]
async fn a_hint_does_not_write_a_lead_unlinked_since_the_last_poll() {
    let got = lead_after_hint_and_poll(|k| {
        let now = k.now;
        let l = k.cards.get_mut(&lead(2001)).expect("lead 2001");
        l.embedded = Some(chatapp_kommo_sync::kommo::CardEmbedded {
            contacts: Some(vec![]),
        });
        l.updated_at = now;
    })
    .await;
    assert_eq!(got, (ANN, ANN), "(the hint, the poll)");
}

/// (From a review.) A contact whose Messenger value was cleared since the last poll: its lead no
/// longer links to the dialog.
#[tokio::test]
async fn a_hint_does_not_write_a_lead_whose_contact_unlinked_since_the_last_poll() {
    let got = lead_after_hint_and_poll(|k| {
        let now = k.now;
        let c = k.cards.get_mut(&contact(3002)).expect("contact 3002");
        c.custom_fields_values = None;
        c.updated_at = now;
    })
    .await;
    assert_eq!(got, (ANN, ANN), "(the hint, the poll)");
}

/// (From a review.) A lead whose sync box was checked since the last poll (no responsible event) takes
/// part: the poll writes the dialog's new responsible to it; the hint should too, and a poll
/// after the hint must not leave it behind.
#[tokio::test]
async fn a_hint_writes_a_lead_checked_since_the_last_poll() {
    let config = CONFIG.replace(
        "bootstrap = \"adopt\"\n",
        "bootstrap = \"adopt\"\n\n[sync.flag_fields]\nlead = 950\n",
    );
    let mk = || {
        Scenario::bootstrapped_from(&config, |k| {
            k.flag_fields
                .insert(chatapp_kommo_sync::core::model::SyncKind::Lead, 950);
            set_lead_flag(k, false);
        })
    };
    let a = mk().await;
    let b = mk().await;
    for s in [&a, &b] {
        s.tick(60);
        {
            let mut k = s.kommo.state();
            set_lead_flag(&mut k, true);
            let now = k.now;
            k.cards.get_mut(&lead(2001)).unwrap().updated_at = now;
        }
        s.tick(60);
        s.chatapp.state().assign(&dkey(2), Some(BOB_E));
    }
    a.hint(&[], &[2]).await;
    a.tick(60);
    a.cycle().await.expect("the poll after the hint");
    b.cycle().await.expect("the incremental cycle");
    assert_eq!(b.kommo.state().responsible(lead(2001)), BOB, "the poll");
    assert_eq!(
        a.kommo.state().responsible(lead(2001)),
        BOB,
        "hint then poll"
    );
}
