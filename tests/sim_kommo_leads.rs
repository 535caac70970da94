//! Tests of the Kommo simulator's pipelines, lead stages, incoming leads, custom field
//! definitions and malformed-record switches, over real HTTP.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chatapp_kommo_sync::sim::{
    Fault, FaultRule, KommoSim, KommoSimConfig, MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT,
    STATUS_INCOMING, STATUS_LOST, STATUS_NEGOTIATION, STATUS_WON, SimCard, SimClock, SimField,
    UnsortedChat, events_of,
};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "kommo-test-token";

async fn sim_at(clock: &SimClock) -> KommoSim {
    let s = KommoSim::start(KommoSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await
    .expect("start kommo sim");
    s.add_user(1, "API", "api@example.com", true);
    s.add_user(10, "Ann", "ann@example.com", true);
    s.add_user(20, "Bob", "bob@example.com", true);
    s
}

fn frozen() -> SimClock {
    let c = SimClock::new();
    c.freeze();
    c
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn call(
    s: &KommoSim,
    method: Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> (StatusCode, String) {
    let mut rb = client()
        .request(method, format!("{}{}", s.base_url(), path_and_query))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let r = rb.send().await.expect("send");
    let st = r.status();
    (st, r.text().await.expect("body"))
}

async fn get(s: &KommoSim, path_and_query: &str) -> (StatusCode, String) {
    call(s, Method::GET, path_and_query, None).await
}

async fn get_json(s: &KommoSim, path_and_query: &str) -> Value {
    let (st, body) = get(s, path_and_query).await;
    assert_eq!(st, StatusCode::OK, "{path_and_query}: {body}");
    serde_json::from_str(&body).expect("json")
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn ids(v: &Value, key: &str) -> Vec<u64> {
    v["_embedded"][key]
        .as_array()
        .expect("embedded array")
        .iter()
        .map(|x| x["id"].as_u64().expect("id"))
        .collect()
}

fn event_types(v: &Value) -> Vec<String> {
    v["_embedded"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn pipelines_listing_shape_and_lead_stages() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    s.add_pipeline(
        2000,
        "Partners",
        &[(2001, "Incoming", 1), (2002, "Talk", 0), (2003, "Offer", 0)],
    );
    s.add_pipeline(3000, "No unsorted", &[(3001, "Only", 0)]);

    let list = get_json(&s, "/api/v4/leads/pipelines").await;
    assert_eq!(list["_total_items"], 3);
    assert!(
        list["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/api/v4/leads/pipelines")
    );
    assert_eq!(ids(&list, "pipelines"), vec![MAIN_PIPELINE_ID, 2000, 3000]);
    let main = &list["_embedded"]["pipelines"][0];
    assert_eq!(main["name"], "Main pipeline");
    assert_eq!(main["is_main"], true);
    assert_eq!(main["is_unsorted_on"], true);
    assert_eq!(main["is_archive"], false);
    assert_eq!(main["account_id"], s.account_id());
    let statuses = main["_embedded"]["statuses"].as_array().unwrap();
    let sids: Vec<u64> = statuses.iter().map(|x| x["id"].as_u64().unwrap()).collect();
    assert_eq!(
        sids,
        vec![
            STATUS_INCOMING,
            STATUS_FIRST_CONTACT,
            STATUS_NEGOTIATION,
            STATUS_WON,
            STATUS_LOST
        ]
    );
    let types: Vec<u64> = statuses
        .iter()
        .map(|x| x["type"].as_u64().unwrap())
        .collect();
    assert_eq!(types, vec![1, 0, 0, 0, 0]);
    assert!(
        statuses
            .iter()
            .all(|x| x["pipeline_id"] == MAIN_PIPELINE_ID)
    );
    assert_eq!(statuses[0]["is_editable"], false);
    assert_eq!(statuses[1]["is_editable"], true);
    assert_eq!(statuses[3]["sort"], 10000);
    assert!(
        statuses[4]["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/api/v4/leads/pipelines/1000/statuses/143")
    );
    let third = &list["_embedded"]["pipelines"][2];
    assert_eq!(third["is_unsorted_on"], false);
    let third_ids: Vec<u64> = third["_embedded"]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_u64().unwrap())
        .collect();
    assert_eq!(third_ids, vec![3001, 142, 143], "142/143 in every pipeline");

    // One pipeline, its statuses, 404s, wrong method.
    let p = get_json(&s, "/api/v4/leads/pipelines/2000").await;
    assert_eq!(p["id"], 2000);
    assert_eq!(p["is_main"], false);
    assert_eq!(p["_embedded"]["statuses"][0]["type"], 1);
    assert_eq!(p["_embedded"]["statuses"][0]["id"], 2001);
    let st = get_json(&s, "/api/v4/leads/pipelines/2000/statuses/2003").await;
    assert_eq!(
        (st["name"].as_str(), st["sort"].as_u64()),
        (Some("Offer"), Some(30))
    );
    let sl = get_json(&s, "/api/v4/leads/pipelines/2000/statuses").await;
    assert_eq!(sl["_total_items"], 5);
    for path in [
        "/api/v4/leads/pipelines/999",
        "/api/v4/leads/pipelines/2000/statuses/1002",
    ] {
        let (code, body) = get(&s, path).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_of(&body)["status"], 404);
    }
    let (code, _) = call(
        &s,
        Method::POST,
        "/api/v4/leads/pipelines",
        Some(&json!([])),
    )
    .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    s.set_pipeline_archived(3000, true);
    let p = get_json(&s, "/api/v4/leads/pipelines/3000").await;
    assert_eq!(p["is_archive"], true);

    // Leads carry their stage everywhere; the default is the main pipeline's first open stage.
    s.add_card("leads", SimCard::new(1, "Default", 10));
    s.add_card(
        "leads",
        SimCard::new(2, "Won", 10).with_status(2000, STATUS_WON),
    );
    s.add_card("leads", SimCard::new(3, "Talk", 10).with_status(2000, 2002));
    let l = get_json(&s, "/api/v4/leads").await;
    let items = l["_embedded"]["leads"].as_array().unwrap();
    let stages: Vec<(u64, u64)> = items
        .iter()
        .map(|x| {
            (
                x["pipeline_id"].as_u64().unwrap(),
                x["status_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        vec![
            (MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT),
            (2000, STATUS_WON),
            (2000, 2002)
        ]
    );
    assert!(items[0]["closed_at"].is_null());
    assert_eq!(
        items[1]["closed_at"],
        clock.now(),
        "added closed: closed_at"
    );
    let one = get_json(&s, "/api/v4/leads/3").await;
    assert_eq!(
        (one["pipeline_id"].as_u64(), one["status_id"].as_u64()),
        (Some(2000), Some(2002))
    );
    assert_eq!(
        s.card("leads", 1).unwrap().status,
        Some((MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT))
    );
    assert_eq!(s.status_of(2), Some((2000, STATUS_WON)));
    assert_eq!(s.main_pipeline().id, MAIN_PIPELINE_ID);
    assert_eq!(s.pipelines().len(), 3);
    // Contacts do not get lead fields.
    s.add_card("contacts", SimCard::new(5, "C", 10));
    let c = get_json(&s, "/api/v4/contacts/5").await;
    assert!(c.get("status_id").is_none());
}

#[tokio::test]
async fn status_changes_events_and_filters() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    s.add_pipeline(
        2000,
        "Partners",
        &[(2001, "Incoming", 1), (2002, "Talk", 0)],
    );
    s.add_cards(
        "leads",
        (1..=4).map(|i| SimCard::new(i, format!("L{i}"), 10)),
    );
    s.set_status_silently(3, 2000, 2002);
    s.set_status_silently(4, 2000, STATUS_LOST);
    let t0 = clock.now();
    assert_eq!(s.card("leads", 3).unwrap().updated_at, t0);
    assert!(s.events().is_empty(), "silent moves leave no event");
    assert_eq!(s.card("leads", 4).unwrap().closed_at, Some(t0));

    clock.advance(60);
    s.set_status_as_human(1, MAIN_PIPELINE_ID, STATUS_NEGOTIATION, 20);
    s.set_status_as_human(1, MAIN_PIPELINE_ID, STATUS_NEGOTIATION, 20); // same: no event
    clock.advance(60);
    s.set_status_as_human(2, MAIN_PIPELINE_ID, STATUS_WON, 10);
    s.set_responsible_as_human("leads", 2, 20, 10);
    let evs = events_of(&s.events(), "leads", 1);
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e["type"], "lead_status_changed");
    assert_eq!(e["entity_type"], "lead");
    assert_eq!(e["created_by"], 20);
    assert_eq!(e["created_at"], t0 + 60);
    assert_eq!(
        e["value_before"],
        json!([{"lead_status": {"id": STATUS_FIRST_CONTACT, "pipeline_id": MAIN_PIPELINE_ID}}])
    );
    assert_eq!(
        e["value_after"],
        json!([{"lead_status": {"id": STATUS_NEGOTIATION, "pipeline_id": MAIN_PIPELINE_ID}}])
    );
    let l1 = get_json(&s, "/api/v4/leads/1").await;
    assert_eq!(l1["updated_at"], t0 + 60);
    assert_eq!(l1["updated_by"], 20);
    assert!(l1["closed_at"].is_null());
    let l2 = get_json(&s, "/api/v4/leads/2").await;
    assert_eq!(l2["status_id"], STATUS_WON);
    assert_eq!(l2["closed_at"], t0 + 120);
    // Reopening clears closed_at.
    s.set_status_as_human(4, 2000, 2002, 10);
    assert_eq!(s.card("leads", 4).unwrap().closed_at, None);

    // Events: several types in both forms; entity filter keeps status events.
    let comma = get_json(
        &s,
        "/api/v4/events?filter[type]=lead_status_changed,entity_responsible_changed",
    )
    .await;
    assert_eq!(
        event_types(&comma),
        vec![
            "lead_status_changed",
            "lead_status_changed",
            "entity_responsible_changed",
            "lead_status_changed"
        ]
    );
    let arr = get_json(
        &s,
        "/api/v4/events?filter[type][]=lead_status_changed&filter[type][]=entity_responsible_changed&filter[entity][]=lead",
    )
    .await;
    assert_eq!(event_types(&arr).len(), 4);
    let only = get_json(
        &s,
        "/api/v4/events?filter[type][]=lead_status_changed&filter[entity][]=lead",
    )
    .await;
    let ents: Vec<u64> = only["_embedded"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entity_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ents, vec![1, 2, 4]);
    let (code, _) = get(
        &s,
        "/api/v4/events?filter[type][]=lead_status_changed&filter[entity][]=contact",
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    // Lead filters: pipeline (single, repeated, array) and statuses groups.
    let single = get_json(&s, "/api/v4/leads?filter[pipeline_id]=2000").await;
    assert_eq!(ids(&single, "leads"), vec![3, 4]);
    let array = get_json(
        &s,
        "/api/v4/leads?filter[pipeline_id][]=2000&filter[pipeline_id][]=1000",
    )
    .await;
    assert_eq!(ids(&array, "leads"), vec![1, 2, 3, 4]);
    let repeated = get_json(
        &s,
        "/api/v4/leads?filter[pipeline_id]=1000&filter[pipeline_id]=7",
    )
    .await;
    assert_eq!(ids(&repeated, "leads"), vec![1, 2]);
    let stage = get_json(
        &s,
        "/api/v4/leads?filter[statuses][0][pipeline_id]=1000&filter[statuses][0][status_id]=142&filter[statuses][1][pipeline_id]=2000&filter[statuses][1][status_id]=2002",
    )
    .await;
    assert_eq!(ids(&stage, "leads"), vec![2, 3, 4]);
    let both = get_json(
        &s,
        "/api/v4/leads?filter[pipeline_id]=2000&filter[statuses][0][status_id]=2002&filter[id][]=4",
    )
    .await;
    assert_eq!(ids(&both, "leads"), vec![4]);
    let (code, _) = get(&s, "/api/v4/leads?filter[pipeline_id]=9999").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    // Other kinds ignore the lead-only filters.
    s.add_card("contacts", SimCard::new(9, "C", 10));
    let c = get_json(&s, "/api/v4/contacts?filter[pipeline_id]=9999").await;
    assert_eq!(ids(&c, "contacts"), vec![9]);
    // Filter add-on off: ignored.
    s.set_api_filter_enabled(false);
    let off = get_json(&s, "/api/v4/leads?filter[pipeline_id]=9999").await;
    assert_eq!(ids(&off, "leads"), vec![1, 2, 3, 4]);
}

#[tokio::test]
#[should_panic(expected = "incoming stage")]
async fn a_person_cannot_move_a_lead_into_incoming() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    s.add_card("leads", SimCard::new(1, "L", 10));
    s.set_status_as_human(1, MAIN_PIPELINE_ID, STATUS_INCOMING, 10);
}

#[tokio::test]
async fn unsorted_list_accept_and_hidden_contact() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    s.add_pipeline(
        2000,
        "Partners",
        &[(2001, "Incoming", 1), (2002, "Talk", 0)],
    );
    s.add_card("contacts", SimCard::new(50, "Known", 20));
    let t0 = clock.now();
    let uid1 = s.add_unsorted_chat(
        UnsortedChat::new(100, 500, "wa-79990000001", 10)
            .client_name("Ivan")
            .last_message("hello"),
    );
    clock.advance(10);
    let uid2 =
        s.add_unsorted_chat(UnsortedChat::new(101, 501, "wa-79990000002", 20).in_pipeline(2000));
    clock.advance(10);
    let uid3 = s.add_unsorted_chat(UnsortedChat::new(102, 50, "wa-known", 20).uid("my-uid-3"));
    assert_eq!(uid1.len(), 40);
    assert!(uid1.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(uid1, uid2);
    assert_eq!(uid3, "my-uid-3");
    assert!(s.events().is_empty());

    // The list and a record's shape.
    let list = get_json(&s, "/api/v4/leads/unsorted").await;
    assert_eq!(list["_page"], 1);
    let recs = list["_embedded"]["unsorted"].as_array().unwrap();
    let uids: Vec<&str> = recs.iter().map(|r| r["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, vec![uid1.as_str(), uid2.as_str(), "my-uid-3"]);
    let r = &recs[0];
    assert_eq!(r["category"], "chats");
    assert_eq!(r["pipeline_id"], MAIN_PIPELINE_ID);
    assert_eq!(r["created_at"], t0);
    assert_eq!(r["account_id"], s.account_id());
    assert_eq!(r["metadata"]["origin"]["chat_id"], "wa-79990000001");
    assert_eq!(r["metadata"]["client"]["name"], "Ivan");
    assert_eq!(r["metadata"]["from"], "Ivan");
    assert_eq!(r["metadata"]["last_message_text"], "hello");
    assert_eq!(r["metadata"]["received_at"], t0);
    assert_eq!(r["_embedded"]["contacts"][0]["id"], 500);
    assert_eq!(r["_embedded"]["leads"][0]["id"], 100);
    assert_eq!(r["_embedded"]["companies"], json!([]));
    assert!(
        r["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/v4/leads/unsorted/{uid1}"))
    );
    let one = get_json(&s, &format!("/api/v4/leads/unsorted/{uid2}")).await;
    assert_eq!(one["pipeline_id"], 2000);
    let (code, _) = get(&s, "/api/v4/leads/unsorted/nope").await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    // Filters, order and paging.
    let f = get_json(&s, "/api/v4/leads/unsorted?filter[pipeline_id]=2000").await;
    assert_eq!(f["_embedded"]["unsorted"].as_array().unwrap().len(), 1);
    let f = get_json(
        &s,
        &format!("/api/v4/leads/unsorted?filter[uid][]={uid1}&filter[uid][]=my-uid-3&filter[category][]=chats"),
    )
    .await;
    assert_eq!(f["_embedded"]["unsorted"].as_array().unwrap().len(), 2);
    let (code, body) = get(&s, "/api/v4/leads/unsorted?filter[category][]=sip").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    let desc = get_json(&s, "/api/v4/leads/unsorted?order[created_at]=desc").await;
    assert_eq!(desc["_embedded"]["unsorted"][0]["uid"], "my-uid-3");
    let p1 = get_json(&s, "/api/v4/leads/unsorted?limit=2").await;
    assert_eq!(p1["_embedded"]["unsorted"].as_array().unwrap().len(), 2);
    assert!(
        p1["_links"]["next"]["href"]
            .as_str()
            .unwrap()
            .contains("page=2")
    );
    let p2 = get_json(&s, "/api/v4/leads/unsorted?limit=2&page=2").await;
    assert_eq!(p2["_embedded"]["unsorted"].as_array().unwrap().len(), 1);
    assert!(p2["_links"]["next"].is_null());
    let (code, _) = get(&s, "/api/v4/leads/unsorted?limit=251").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    // The lead is a normal lead in the incoming stage; its new contact is hidden.
    let lead = get_json(&s, "/api/v4/leads/100?with=contacts").await;
    assert_eq!(lead["status_id"], STATUS_INCOMING);
    assert_eq!(lead["pipeline_id"], MAIN_PIPELINE_ID);
    assert_eq!(lead["responsible_user_id"], 10);
    assert_eq!(
        lead["_embedded"]["contacts"][0]["id"], 500,
        "named on the lead"
    );
    let l101 = get_json(&s, "/api/v4/leads/101").await;
    assert_eq!(l101["status_id"], 2001);
    let contacts = get_json(&s, "/api/v4/contacts").await;
    assert_eq!(
        ids(&contacts, "contacts"),
        vec![50],
        "hidden contacts not listed"
    );
    let (code, _) = get(&s, "/api/v4/contacts/500").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, body) = call(
        &s,
        Method::PATCH,
        "/api/v4/contacts",
        Some(&json!([{"id": 500, "responsible_user_id": 20}])),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        json_of(&body)["validation-errors"][0]["errors"][0]["code"],
        "NotFound"
    );
    // An existing contact given to a record stays visible.
    assert_eq!(get_json(&s, "/api/v4/contacts/50").await["id"], 50);
    let u = s.unsorted();
    assert_eq!(u.len(), 3);
    assert!(u[0].contact_hidden && !u[2].contact_hidden);

    // Accept over HTTP: bad status, unknown user, then the real thing.
    let accept = format!("/api/v4/leads/unsorted/{uid1}/accept");
    let (code, body) = call(
        &s,
        Method::POST,
        &accept,
        Some(&json!({"status_id": STATUS_INCOMING})),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&body)["validation-errors"][0]["errors"][0]["path"],
        "status_id"
    );
    let (code, body) = call(&s, Method::POST, &accept, Some(&json!({"status_id": 2002}))).await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "a status of another pipeline: {body}"
    );
    let (code, body) = call(&s, Method::POST, &accept, Some(&json!({"user_id": 777}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&body)["validation-errors"][0]["errors"][0]["path"],
        "user_id"
    );
    assert_eq!(s.unsorted().len(), 3, "failed accepts change nothing");
    clock.advance(100);
    let (code, body) = call(
        &s,
        Method::POST,
        &accept,
        Some(&json!({"status_id": STATUS_NEGOTIATION, "user_id": 20})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let v = json_of(&body);
    assert_eq!(v["uid"], uid1.as_str());
    assert_eq!(v["_embedded"]["leads"][0]["id"], 100);
    assert_eq!(v["_embedded"]["contacts"][0]["id"], 500);
    let lead = get_json(&s, "/api/v4/leads/100").await;
    assert_eq!(lead["status_id"], STATUS_NEGOTIATION);
    assert_eq!(lead["updated_by"], 20);
    assert_eq!(lead["updated_at"], t0 + 120);
    let contact = get_json(&s, "/api/v4/contacts/500").await;
    assert_eq!(contact["name"], "Ivan");
    assert_eq!(contact["responsible_user_id"], 10);
    assert_eq!(
        contact["updated_at"],
        t0 + 120,
        "visible, updated_at bumped"
    );
    let contacts = get_json(&s, "/api/v4/contacts").await;
    assert_eq!(ids(&contacts, "contacts"), vec![50, 500]);
    let evs = events_of(&s.events(), "leads", 100);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "lead_status_changed");
    assert_eq!(evs[0]["created_by"], 20);
    assert_eq!(
        evs[0]["value_before"][0]["lead_status"]["id"],
        STATUS_INCOMING
    );
    assert_eq!(
        evs[0]["value_after"][0]["lead_status"]["id"],
        STATUS_NEGOTIATION
    );
    let (code, _) = call(&s, Method::POST, &accept, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "record gone");
    let (code, _) = get(&s, &format!("/api/v4/leads/unsorted?filter[uid]={uid1}")).await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    // Accept without a body (control method here): first open stage, by the given user.
    s.accept_unsorted(101, None, 10);
    assert_eq!(s.status_of(101), Some((2000, 2002)));
    assert_eq!(get_json(&s, "/api/v4/contacts/501").await["id"], 501);

    // Decline over HTTP: lead deleted; the known contact stays.
    let (code, body) = call(
        &s,
        Method::DELETE,
        "/api/v4/leads/unsorted/my-uid-3/decline",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _) = get(&s, "/api/v4/leads/102").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(get_json(&s, "/api/v4/contacts/50").await["id"], 50);
    let (code, _) = get(&s, "/api/v4/leads/unsorted").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(s.unsorted().is_empty());

    // Declined with a hidden contact: both deleted.
    s.add_unsorted_chat(UnsortedChat::new(103, 503, "wa-3", 10));
    s.decline_unsorted(103, 10);
    assert!(s.card("leads", 103).unwrap().is_deleted);
    assert!(s.card("contacts", 503).unwrap().is_deleted);
    let (code, _) = call(&s, Method::PUT, "/api/v4/leads/unsorted", None).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn custom_field_definitions_page_at_50() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    let (code, _) = get(&s, "/api/v4/leads/custom_fields").await;
    assert_eq!(code, StatusCode::NO_CONTENT, "nothing defined");
    // with_field defines nothing.
    s.add_card(
        "leads",
        SimCard::new(1, "L", 10).with_field(SimField::checkbox(900_001, true)),
    );
    let (code, _) = get(&s, "/api/v4/leads/custom_fields").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(
        get_json(&s, "/api/v4/leads/1").await["custom_fields_values"][0]["field_name"],
        "Field 900001"
    );

    for i in 0..120u64 {
        s.define_field("leads", 5000 + i, &format!("F{i}"), None, "text");
    }
    s.define_field("leads", 900_001, "Synced", None, "checkbox");
    s.define_field("contacts", 3, "Phone", Some("PHONE"), "multitext");
    s.set_field_enums("contacts", 3, &[(1, "WORK"), (2, "MOB")]);

    let p1 = get_json(&s, "/api/v4/leads/custom_fields?limit=250").await;
    assert_eq!(p1["_total_items"], 121);
    assert_eq!(p1["_page"], 1);
    assert_eq!(p1["_page_count"], 3);
    let got = ids(&p1, "custom_fields");
    assert_eq!(got, (5000..5050).collect::<Vec<_>>(), "clamped to 50");
    let next = p1["_links"]["next"]["href"].as_str().unwrap();
    assert!(next.contains("page=2") && next.contains("limit=250"));
    let p3 = get_json(&s, "/api/v4/leads/custom_fields?limit=250&page=3").await;
    let got3 = ids(&p3, "custom_fields");
    assert_eq!(got3.len(), 21);
    assert_eq!(got3.last(), Some(&900_001));
    assert!(p3["_links"]["next"].is_null());
    assert!(p3["_links"]["prev"].is_object());
    let (code, _) = get(&s, "/api/v4/leads/custom_fields?page=4").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let small = get_json(&s, "/api/v4/leads/custom_fields?limit=7&page=2").await;
    assert_eq!(
        ids(&small, "custom_fields"),
        (5007..5014).collect::<Vec<_>>()
    );
    assert_eq!(small["_page_count"], 18);
    let (code, _) = get(&s, "/api/v4/leads/custom_fields?limit=0").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    let f = &p1["_embedded"]["custom_fields"][0];
    assert_eq!(f["name"], "F0");
    assert_eq!(f["type"], "text");
    assert_eq!(f["entity_type"], "leads");
    assert!(f["code"].is_null());
    assert!(f["enums"].is_null());
    assert!(
        f["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/api/v4/leads/custom_fields/5000")
    );
    let phone = get_json(&s, "/api/v4/contacts/custom_fields/3").await;
    assert_eq!(phone["code"], "PHONE");
    assert_eq!(phone["type"], "multitext");
    assert_eq!(phone["is_predefined"], true);
    assert_eq!(
        phone["enums"][1],
        json!({"id": 2, "value": "MOB", "sort": 501, "code": null})
    );
    let (code, body) = get(&s, "/api/v4/contacts/custom_fields/4").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["status"], 404);
    let (code, _) = get(&s, "/api/v4/companies/custom_fields").await;
    assert_eq!(code, StatusCode::NO_CONTENT, "kinds are separate");
    // A defined field names the card's value.
    assert_eq!(
        get_json(&s, "/api/v4/leads/1").await["custom_fields_values"][0]["field_name"],
        "Synced"
    );
    s.undefine_field("leads", 900_001);
    assert_eq!(s.field_definitions("leads").len(), 120);
    assert_eq!(s.field_definitions("contacts")[0].enums.len(), 2);
}

#[tokio::test]
async fn card_override_makes_one_record_malformed_until_cleared() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    s.add_cards(
        "leads",
        (1..=3).map(|i| SimCard::new(i, format!("L{i}"), 10)),
    );
    s.set_card_json_override("leads", 2, json!({"responsible_user_id": "504141"}));

    for _ in 0..2 {
        let l = get_json(&s, "/api/v4/leads").await;
        let items = l["_embedded"]["leads"].as_array().unwrap();
        assert_eq!(items[0]["responsible_user_id"], 10);
        assert_eq!(items[1]["responsible_user_id"], "504141");
        assert_eq!(items[1]["name"], "L2", "other keys untouched");
        assert_eq!(items[2]["responsible_user_id"], 10);
    }
    assert_eq!(
        get_json(&s, "/api/v4/leads/2").await["responsible_user_id"],
        "504141"
    );
    // Filtering uses the real value; a PATCH applies and the override stays.
    let f = get_json(&s, "/api/v4/leads?filter[responsible_user_id]=10").await;
    assert_eq!(ids(&f, "leads"), vec![1, 2, 3]);
    let (code, body) = call(
        &s,
        Method::PATCH,
        "/api/v4/leads/2",
        Some(&json!({"responsible_user_id": 20})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(s.responsible_of("leads", 2), Some(20));
    assert_eq!(
        get_json(&s, "/api/v4/leads/2").await["responsible_user_id"],
        "504141"
    );

    // Removed keys, a whole-record replacement, then clearing.
    s.remove_card_json_keys("leads", 3, &["responsible_user_id", "updated_at"]);
    let l3 = get_json(&s, "/api/v4/leads/3").await;
    assert!(l3.get("responsible_user_id").is_none() && l3.get("updated_at").is_none());
    assert_eq!(l3["id"], 3);
    s.set_card_json_override("leads", 1, json!("not an object"));
    let l = get_json(&s, "/api/v4/leads").await;
    assert_eq!(l["_embedded"]["leads"][0], "not an object");
    s.clear_card_json_override("leads", 2);
    assert_eq!(
        get_json(&s, "/api/v4/leads/2").await["responsible_user_id"],
        20
    );
    s.clear_card_json_overrides();
    let l = get_json(&s, "/api/v4/leads").await;
    let items = l["_embedded"]["leads"].as_array().unwrap();
    assert_eq!(items[0]["id"], 1);
    assert_eq!(items[2]["responsible_user_id"], 10);

    // Deleted cards in their short form can be overridden too.
    s.delete_card("leads", 3);
    s.set_card_json_override("leads", 3, json!({"is_deleted": "yes"}));
    let d = get_json(&s, "/api/v4/leads?with=only_deleted").await;
    assert_eq!(d["_embedded"]["leads"][0]["is_deleted"], "yes");
}

#[tokio::test]
async fn raw_event_is_served_as_given_and_filtered() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    s.add_card("leads", SimCard::new(1, "L", 10));
    let t0 = clock.now();
    s.set_responsible_as_human("leads", 1, 20, 10);
    clock.advance(10);
    let raw = json!({
        "id": "01jrawevent000000000000001",
        "type": "entity_responsible_changed",
        "entity_id": 1,
        "entity_type": "lead",
        "created_by": 10,
        "created_at": t0 + 5,
        "value_before": [{"responsible_user": {"id": 20}}],
        "value_after": [{"responsible_user": {"id": null}}],
    });
    s.push_raw_event(raw.clone());
    s.push_raw_event(json!({"type": "lead_added", "entity_type": "lead", "entity_id": "1"}));
    clock.advance(10);
    s.set_responsible_as_human("leads", 1, 10, 20);

    for _ in 0..2 {
        let v = get_json(
            &s,
            "/api/v4/events?filter[type]=entity_responsible_changed&filter[entity][]=lead",
        )
        .await;
        let evs = v["_embedded"]["events"].as_array().unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(
            evs[1], raw,
            "served exactly as given, ordered by its created_at"
        );
        assert!(evs[1].get("account_id").is_none());
    }
    let w = get_json(
        &s,
        &format!(
            "/api/v4/events?filter[created_at][from]={}&filter[created_at][to]={}",
            t0 + 1,
            t0 + 9
        ),
    )
    .await;
    assert_eq!(w["_embedded"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        w["_embedded"]["events"][0]["id"],
        "01jrawevent000000000000001"
    );
    let by_creator = get_json(&s, "/api/v4/events?filter[created_by][]=20").await;
    assert_eq!(
        by_creator["_embedded"]["events"].as_array().unwrap().len(),
        1
    );
    // A string entity_id does not match a numeric filter; the type filter still finds it.
    let added = get_json(&s, "/api/v4/events?filter[type]=lead_added").await;
    assert_eq!(added["_embedded"]["events"][0]["entity_id"], "1");
    let (code, _) = get(
        &s,
        "/api/v4/events?filter[type]=lead_added&filter[entity_id]=1",
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let by_id = get_json(&s, "/api/v4/events/01jrawevent000000000000001").await;
    assert_eq!(by_id, raw);

    s.clear_raw_events();
    let v = get_json(&s, "/api/v4/events").await;
    let evs = v["_embedded"]["events"].as_array().unwrap();
    assert_eq!(evs.len(), 2);
    assert!(
        evs.iter()
            .all(|e| e["value_after"][0]["responsible_user"]["id"].is_u64())
    );
}

#[tokio::test]
async fn faults_apply_to_the_new_routes() {
    let clock = frozen();
    let s = sim_at(&clock).await;
    let uid = s.add_unsorted_chat(UnsortedChat::new(100, 500, "wa-1", 10));
    s.define_field("leads", 1, "F", None, "text");

    // A faulted accept is not applied.
    s.push_fault(
        FaultRule::new(Fault::Status(503))
            .method("POST")
            .path("/api/v4/leads/unsorted"),
    );
    let accept = format!("/api/v4/leads/unsorted/{uid}/accept");
    let (code, body) = call(&s, Method::POST, &accept, None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(&body)["status"], 503);
    assert_eq!(s.unsorted().len(), 1);
    assert_eq!(s.status_of(100), Some((MAIN_PIPELINE_ID, STATUS_INCOMING)));

    // Truncated pipelines, 429 on custom fields, then normal service.
    s.push_fault(FaultRule::new(Fault::Truncated).path("/api/v4/leads/pipelines"));
    s.push_fault(
        FaultRule::new(Fault::TooMany { retry_after: 3 }).path("/api/v4/leads/custom_fields"),
    );
    let (code, body) = get(&s, "/api/v4/leads/pipelines").await;
    assert_eq!(code, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "truncated");
    let (code, body) = get(&s, "/api/v4/leads/custom_fields").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_of(&body)["retry_after"], 3);
    assert_eq!(s.pending_faults(), 0);
    assert_eq!(
        get_json(&s, "/api/v4/leads/pipelines").await["_total_items"],
        1
    );
    let (code, _) = call(&s, Method::POST, &accept, None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(s.unsorted().is_empty());
    let log = s.requests();
    assert!(log.iter().any(|r| r.method == "POST" && r.status == 503));
    assert!(
        log.iter()
            .any(|r| r.path == "/api/v4/leads/custom_fields" && r.status == 429)
    );
}
