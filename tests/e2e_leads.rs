//! Issue 9 end to end: the real binary's `once` and `check-config --online` against the
//! simulators, on the shape of a real Kommo account (won and lost leads, pipelines, incoming
//! leads whose contact cannot be read before acceptance, field definitions).

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::commands::demo::LEAD_FLAG_FIELD;
use chatapp_kommo_sync::sim::{
    MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT, STATUS_LOST, STATUS_WON, SimCard, SimChat, SimField,
    UnsortedChat,
};
use e2e::{Env, chat};

const WA: &str = "grWhatsApp";

fn flagged_lead(id: u64, user: u64, contact: u64) -> SimCard {
    SimCard::new(id, format!("lead {id}"), user)
        .with_field(SimField::checkbox(LEAD_FLAG_FIELD, true))
        .with_contacts(&[contact])
}

/// Maria (contact 1002, dialog 2) has the open lead 2002 and, here, a won lead 2004 and a lost
/// lead 2005, both Boris's (504142). Both directions are configured.
async fn maria_with_closed_leads(bootstrap: &str) -> Env {
    let env = Env::new("").await;
    env.edit_config(|t| {
        t.replace(
            "crm_to_chat = [\"contact\"]",
            "crm_to_chat = [\"contact\", \"lead\"]",
        )
        .replace(
            "chat_to_crm = [\"lead\"]",
            "chat_to_crm = [\"lead\", \"contact\"]",
        )
        .replace(
            "bootstrap = \"adopt\"",
            &format!("bootstrap = \"{bootstrap}\""),
        )
    });
    env.w.kommo.add_card(
        "leads",
        flagged_lead(2004, 504142, 1002).with_status(MAIN_PIPELINE_ID, STATUS_WON),
    );
    env.w.kommo.add_card(
        "leads",
        flagged_lead(2005, 504142, 1002).with_status(MAIN_PIPELINE_ID, STATUS_LOST),
    );
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn the_open_lead_follows_the_dialog_while_won_and_lost_leads_keep_their_manager() {
    let env = maria_with_closed_leads("adopt").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    // an operator gives Maria's dialog to Vera
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    let r = env.once(&[]).await;
    let k = &env.w.kommo;
    assert_eq!(
        k.responsible_of("leads", 2002),
        Some(504143),
        "{}",
        r.stdout
    );
    assert_eq!(k.responsible_of("contacts", 1002), Some(504143));
    assert_eq!(k.responsible_of("leads", 2004), Some(504142), "won: kept");
    assert_eq!(k.responsible_of("leads", 2005), Some(504142), "lost: kept");
    assert!(!k.written_ids("leads").contains(&2004) && !k.written_ids("leads").contains(&2005));
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_chat_never_writes_a_closed_lead() {
    let env = maria_with_closed_leads("chat").await;
    let r = env.once(&[]).await;
    let k = &env.w.kommo;
    // Maria's dialog is Boris's (85502): her open lead 2002 (Anna's) is aligned to Boris
    assert_eq!(
        k.responsible_of("leads", 2002),
        Some(504142),
        "{}",
        r.stdout
    );
    assert!(!k.written_ids("leads").contains(&2004) && !k.written_ids("leads").contains(&2005));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_changing_a_closed_lead_moves_no_dialog() {
    let env = maria_with_closed_leads("adopt").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("leads", 2004, 504141, 504142);
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(2)),
        Some(85502),
        "{}",
        r.stdout
    );
    assert!(env.w.chatapp.written_chats().is_empty());
    // the open lead does move it
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("leads", 2002, 504143, 504142);
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(2)),
        Some(85503),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lead_closed_between_cycles_is_not_written_and_reopened_joins_without_a_write() {
    let env = maria_with_closed_leads("adopt").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_status_as_human(2002, MAIN_PIPELINE_ID, STATUS_WON, 504141);
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2002),
        Some(504141),
        "closed before the dialog changed: {}",
        r.stdout
    );
    assert!(!env.w.kommo.written_ids("leads").contains(&2002));
    // reopened: it joins again, and the reopening writes nothing by itself
    env.w.clock.advance(10);
    let patches = env.w.kommo.patch_count();
    env.w
        .kommo
        .set_status_as_human(2002, MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT, 504141);
    let r = env.once(&[]).await;
    assert_eq!(env.w.kommo.patch_count(), patches, "{}", r.stdout);
    assert_eq!(env.w.kommo.responsible_of("leads", 2002), Some(504141));
    // the next change of the dialog reaches it
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85501));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2002),
        Some(504141),
        "Anna's again: {}",
        r.stdout
    );
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85502));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2002),
        Some(504142),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_leads_of_the_configured_pipelines_take_part() {
    let env = Env::new("").await;
    env.w.kommo.add_pipeline(
        5000,
        "Partners",
        &[(5001, "Incoming", 1), (5002, "Talks", 0)],
    );
    env.w.kommo.add_card(
        "leads",
        flagged_lead(2006, 504142, 1002).with_status(5000, 5002),
    );
    env.edit_config(|t| {
        t.replace(
            "[sync.flag_fields]",
            &format!("[sync.leads]\npipelines = [{MAIN_PIPELINE_ID}]\n\n[sync.flag_fields]"),
        )
    });
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2002),
        Some(504143),
        "{}",
        r.stdout
    );
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2006),
        Some(504142),
        "pipeline B: not written"
    );
    // moved into the main pipeline: joins without a write
    env.w.clock.advance(10);
    let patches = env.w.kommo.patch_count();
    env.w
        .kommo
        .set_status_as_human(2006, MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT, 504142);
    env.once(&[]).await;
    assert_eq!(env.w.kommo.patch_count(), patches);
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85501));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2006),
        Some(504141),
        "{}",
        r.stdout
    );
}

/// A returning client writes again: Kommo makes an unsorted chat record (lead 3001 in the
/// incoming stage) holding the client's existing contact, Pavel (1004, whose Messenger field names
/// dialog 4). `origin.chat_id` is amoCRM's own chat id (a UUID, AMO `unsorted-api.md` L1062): the
/// lead links through its contact (issue 18 moved these tests off the assumption that it was
/// ChatApp's chat id, a new client's dialog added for them).
async fn incoming_world(crm_to_chat: &str, chat_to_crm: &str) -> Env {
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
        .replace("lead = 184994", "lead = 184994\nincoming_lead = 184994")
    });
    env.w
        .kommo
        .add_unsorted_chat(UnsortedChat::new(3001, 1004, AMO_CHAT_UUID, 504141));
    env.w
        .kommo
        .set_field("leads", 3001, SimField::checkbox(LEAD_FLAG_FIELD, true));
    env
}

/// An amoCRM chats-service id, as `metadata.origin.chat_id` holds it (`contacts-api.md` L757).
const AMO_CHAT_UUID: &str = "6cbab3d5-c4c1-46ff-b710-ad59ad10805f";

/// A client writes for the first time: the unsorted record's new contact cannot be read before
/// acceptance and its `origin.chat_id` is amoCRM's, so nothing links the incoming lead to a
/// dialog yet: nothing is written, and the unsorted list is not read (the lead lists its contact).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_clients_incoming_lead_links_nothing_before_acceptance() {
    let env = Env::new("").await;
    env.edit_config(|t| {
        t.replace(
            "crm_to_chat = [\"contact\"]",
            "crm_to_chat = [\"incoming_lead\"]",
        )
        .replace("lead = 184994", "lead = 184994\nincoming_lead = 184994")
    });
    env.w
        .kommo
        .add_unsorted_chat(UnsortedChat::new(3001, 3002, AMO_CHAT_UUID, 504141));
    env.w
        .kommo
        .set_field("leads", 3001, SimField::checkbox(LEAD_FLAG_FIELD, true));
    env.w.chatapp.add_chat(SimChat::whatsapp(
        1,
        "79990000009",
        "New client",
        Some(85501),
    ));
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("leads", 3001, 504143, 504141);
    let r = env.once(&[]).await;
    assert_eq!(env.writes(), (0, 0), "{}", r.stdout);
    assert!(
        env.w
            .kommo
            .requests()
            .iter()
            .all(|q| q.path != "/api/v4/leads/unsorted"),
        "the unsorted list is not paged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returning_clients_incoming_lead_drives_the_dialog_through_its_contact_and_accepting_it_writes_nothing()
 {
    let env = incoming_world("[\"incoming_lead\"]", "[\"lead\"]").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("leads", 3001, 504143, 504141);
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(4)),
        Some(85503),
        "{}",
        r.stdout
    );
    // accepted into a normal stage: a lead now, same base: no write
    env.w.clock.advance(10);
    let writes = env.writes();
    env.w.kommo.accept_unsorted(3001, None, 504143);
    let r = env.once(&[]).await;
    assert_eq!(env.writes(), writes, "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incoming_lead_in_chat_to_crm_receives_the_dialog_and_a_lead_does_not() {
    let env = incoming_world("[\"contact\"]", "[\"incoming_lead\"]").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w.chatapp.assign_as_human(1, WA, &chat(4), Some(85502));
    env.w.chatapp.assign_as_human(1, WA, &chat(1), Some(85503));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("leads", 3001),
        Some(504142),
        "{}",
        r.stdout
    );
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2001),
        Some(504141),
        "`lead` is not configured: Ivan's open lead keeps Anna"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_online_names_every_problem_in_one_run() {
    let env = Env::new("").await;
    // a correct config passes
    let r = env.run(&["check-config", "--online"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("Messenger field MESSENGER found"),
        "{}",
        r.stdout
    );

    // five problems at once
    let k = &env.w.kommo;
    k.undefine_field(
        "contacts",
        chatapp_kommo_sync::commands::demo::MESSENGER_FIELD,
    );
    k.define_field("companies", 777, "VIP", None, "text");
    k.set_user_active(504141, false);
    env.edit_config(|t| {
        t.replace("lead = 184994", "lead = 999999\ncompany = 777")
            .replace(
                "[sync.flag_fields]",
                "[sync.leads]\npipelines = [424242]\n\n[sync.flag_fields]",
            )
            .replace(
                "match_by_email = true",
                "match_by_email = true\nmap = [{ kommo = 504141, chatapp = 85501 }]",
            )
    });
    let r = env.run(&["check-config", "--online"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    for (key, what) in [
        (
            "links.messenger_field",
            "no field with id or code MESSENGER",
        ),
        ("sync.flag_fields.lead", "no field 999999"),
        (
            "sync.flag_fields.company",
            "is a text field, not a checkbox",
        ),
        ("sync.leads.pipelines", "no pipeline 424242"),
        ("users.map[0].kommo", "504141"),
    ] {
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("{key} is not named: {}", r.stderr));
        assert!(line.contains(what), "{line}");
    }
    assert!(r.stderr.contains("5 problem(s) found"), "{}", r.stderr);
}
