//! Tests of the Kommo simulator over real HTTP.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chatapp_kommo_sync::sim::{
    Fault, FaultRule, KommoSim, KommoSimConfig, OAuthSim, SimCard, SimClock, SimField, events_of,
    jwt_exp,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "kommo-test-token";

async fn sim() -> KommoSim {
    sim_with(KommoSimConfig::default()).await
}

async fn sim_with(cfg: KommoSimConfig) -> KommoSim {
    let s = KommoSim::start(cfg).await.expect("start kommo sim");
    s.add_user(1, "API", "api@example.com", true);
    s.add_user(10, "Ann", "ann@example.com", true);
    s.add_user(20, "Bob", "bob@example.com", true);
    s.add_user(30, "Cid", "cid@example.com", false);
    s
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn get(s: &KommoSim, path_and_query: &str) -> (StatusCode, String) {
    let r = client()
        .get(format!("{}{}", s.base_url(), path_and_query))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    let st = r.status();
    (st, r.text().await.expect("body"))
}

async fn get_json(s: &KommoSim, path_and_query: &str) -> Value {
    let (st, body) = get(s, path_and_query).await;
    assert_eq!(st, StatusCode::OK, "{path_and_query}: {body}");
    serde_json::from_str(&body).expect("json")
}

async fn patch(s: &KommoSim, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = client()
        .patch(format!("{}{}", s.base_url(), path))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .expect("send");
    let st = r.status();
    let text = r.text().await.expect("body");
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn ids(v: &Value, key: &str) -> Vec<u64> {
    v["_embedded"][key]
        .as_array()
        .expect("embedded array")
        .iter()
        .map(|x| x["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn pagination_full_page_has_next_and_past_end_is_204() {
    let s = sim().await;
    s.add_cards(
        "leads",
        (1..=120).map(|i| SimCard::new(i, format!("L{i}"), 10)),
    );

    let p1 = get_json(&s, "/api/v4/leads?limit=50&page=1").await;
    assert_eq!(ids(&p1, "leads"), (1..=50).collect::<Vec<_>>());
    assert_eq!(p1["_page"], 1);
    let next = p1["_links"]["next"]["href"].as_str().expect("next");
    assert!(next.starts_with(&s.base_url()) && next.contains("page=2"));
    // Following the next link works as-is.
    let p2: Value = client()
        .get(next)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&p2, "leads"), (51..=100).collect::<Vec<_>>());
    assert!(p2["_links"]["next"].is_object(), "full page shows next");

    let p3 = get_json(&s, "/api/v4/leads?limit=50&page=3").await;
    assert_eq!(ids(&p3, "leads").len(), 20);
    assert!(p3["_links"]["next"].is_null(), "short page has no next");

    let (st, body) = get(&s, "/api/v4/leads?limit=50&page=4").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(body.is_empty());

    // Exactly two full pages: the second still has next, the third is 204.
    let (st, _) = get(&s, "/api/v4/leads?limit=60&page=3").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let p = get_json(&s, "/api/v4/leads?limit=60&page=2").await;
    assert!(p["_links"]["next"].is_object());

    // Default limit 50, limit above 250 is a 400.
    let d = get_json(&s, "/api/v4/leads").await;
    assert_eq!(ids(&d, "leads").len(), 50);
    let (st, body) = get(&s, "/api/v4/leads?limit=251").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("validation-errors"));

    // Empty collection: 204.
    let (st, _) = get(&s, "/api/v4/customers").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn order_filters_and_with() {
    let clock = SimClock::new();
    clock.freeze();
    let s = sim_with(KommoSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let t0 = clock.now();
    for i in 1..=5u64 {
        let mut c = SimCard::new(i, format!("C{i}"), 10);
        c.updated_at = t0 + 10 * (6 - i as i64); // id 1 newest
        s.add_card("contacts", c);
    }
    s.add_card(
        "leads",
        SimCard::new(100, "Deal", 20)
            .with_contacts(&[3, 4])
            .with_field(SimField::checkbox(184994, true)),
    );
    s.add_card("leads", SimCard::new(101, "Other", 20).with_contacts(&[3]));
    s.add_card("companies", SimCard::new(200, "Co", 20).with_contacts(&[4]));

    let desc = get_json(&s, "/api/v4/contacts?order[updated_at]=desc").await;
    assert_eq!(ids(&desc, "contacts"), vec![1, 2, 3, 4, 5]);
    let asc = get_json(&s, "/api/v4/contacts?order%5Bupdated_at%5D=asc").await;
    assert_eq!(ids(&asc, "contacts"), vec![5, 4, 3, 2, 1]);
    let by_id_desc = get_json(&s, "/api/v4/contacts?order[id]=desc").await;
    assert_eq!(ids(&by_id_desc, "contacts"), vec![5, 4, 3, 2, 1]);

    let f = get_json(
        &s,
        "/api/v4/contacts?filter[id][]=2&filter[id][]=4&filter[id][0]=5",
    )
    .await;
    assert_eq!(ids(&f, "contacts"), vec![2, 4, 5]);
    let win = format!(
        "/api/v4/contacts?filter[updated_at][from]={}&filter[updated_at][to]={}",
        t0 + 20,
        t0 + 40
    );
    assert_eq!(ids(&get_json(&s, &win).await, "contacts"), vec![2, 3, 4]);
    let (st, _) = get(&s, "/api/v4/contacts?filter[id][]=999").await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    // with=contacts on leads, is_main on the first; companies always present.
    let l = get_json(&s, "/api/v4/leads/100?with=contacts").await;
    assert_eq!(l["_embedded"]["contacts"][0]["id"], 3);
    assert_eq!(l["_embedded"]["contacts"][0]["is_main"], true);
    assert_eq!(l["_embedded"]["contacts"][1]["is_main"], false);
    assert_eq!(l["_embedded"]["companies"], json!([]));
    assert_eq!(l["custom_fields_values"][0]["field_id"], 184994);
    assert_eq!(l["custom_fields_values"][0]["values"][0]["value"], true);
    let l2 = get_json(&s, "/api/v4/leads/101").await;
    assert!(
        l2["_embedded"]["contacts"].is_null(),
        "no with: no contacts"
    );
    assert!(l2["custom_fields_values"].is_null());

    // with=leads on contacts: reverse links; companies always.
    let c = get_json(
        &s,
        "/api/v4/contacts?filter[id][]=3&filter[id][]=4&with=leads",
    )
    .await;
    let items = c["_embedded"]["contacts"].as_array().unwrap();
    let leads_of = |i: usize| ids(&items[i], "leads");
    assert_eq!(leads_of(0), vec![100, 101]);
    assert_eq!(leads_of(1), vec![100]);
    assert_eq!(items[1]["_embedded"]["companies"][0]["id"], 200);

    // Deleted cards: hidden, 204 by id, listed with only_deleted.
    s.delete_card("contacts", 5);
    let all = get_json(&s, "/api/v4/contacts").await;
    assert_eq!(ids(&all, "contacts"), vec![1, 2, 3, 4]);
    let (st, _) = get(&s, "/api/v4/contacts/5").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let del = get_json(&s, "/api/v4/contacts?with=only_deleted").await;
    assert_eq!(ids(&del, "contacts"), vec![5]);
    assert_eq!(del["_embedded"]["contacts"][0]["is_deleted"], true);

    // Filter add-on off: filter/order ignored; the account says so when asked.
    s.set_api_filter_enabled(false);
    let ign = get_json(&s, "/api/v4/contacts?order[updated_at]=desc&filter[id][]=2").await;
    assert_eq!(ids(&ign, "contacts"), vec![1, 2, 3, 4]);
    let acc = get_json(&s, "/api/v4/account?with=is_api_filter_enabled").await;
    assert_eq!(acc["is_api_filter_enabled"], false);
    assert_eq!(acc["current_user_id"], 1);
    let acc = get_json(&s, "/api/v4/account").await;
    assert!(acc.get("is_api_filter_enabled").is_none());
}

#[tokio::test]
async fn users_list() {
    let s = sim().await;
    let u = get_json(&s, "/api/v4/users?limit=3&page=1").await;
    assert_eq!(u["_total_items"], 4);
    assert_eq!(u["_page_count"], 2);
    assert_eq!(ids(&u, "users"), vec![1, 10, 20]);
    assert!(u["_links"]["next"].is_object());
    let u2 = get_json(&s, "/api/v4/users?limit=3&page=2").await;
    assert_eq!(u2["_embedded"]["users"][0]["rights"]["is_active"], false);
    assert_eq!(u2["_embedded"]["users"][0]["email"], "cid@example.com");
    let (st, _) = get(&s, "/api/v4/users?limit=3&page=3").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn patch_validation_events_and_written_ids() {
    let s = sim().await;
    s.add_cards(
        "leads",
        (1..=3).map(|i| SimCard::new(i, format!("L{i}"), 10)),
    );

    // Unknown card id: 400 for that request_id, nothing applied.
    let (st, body) = patch(
        &s,
        "/api/v4/leads",
        &json!([
            {"id": 1, "responsible_user_id": 20, "request_id": "a"},
            {"id": 99, "responsible_user_id": 20, "request_id": "b"}
        ]),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(body["validation-errors"][0]["request_id"], "b");
    assert_eq!(s.card("leads", 1).unwrap().responsible_user_id, 10);
    // Unknown user.
    let (st, body) = patch(
        &s,
        "/api/v4/leads",
        &json!([{"id": 1, "responsible_user_id": 777}]),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["validation-errors"][0]["errors"][0]["path"],
        "responsible_user_id"
    );
    assert!(s.events().is_empty());
    assert!(s.written_ids("leads").is_empty());

    // More than 250 items.
    let many: Vec<Value> = (0..251)
        .map(|_| json!({"id": 1, "responsible_user_id": 20}))
        .collect();
    let (st, body) = patch(&s, "/api/v4/leads", &Value::Array(many)).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"], "Limit 250 per page");

    // Success: lead 1 changes, lead 2 keeps its value (no event), both written.
    let before = s.card("leads", 1).unwrap().updated_at;
    let (st, body) = patch(
        &s,
        "/api/v4/leads",
        &json!([
            {"id": 1, "responsible_user_id": 20, "request_id": "x1"},
            {"id": 2, "responsible_user_id": 10}
        ]),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let items = body["_embedded"]["leads"].as_array().unwrap();
    assert_eq!(items[0]["id"], 1);
    assert_eq!(items[0]["request_id"], "x1");
    assert_eq!(items[1]["request_id"], "1");
    assert!(items[0]["updated_at"].as_i64().unwrap() >= before);
    assert_eq!(s.card("leads", 1).unwrap().responsible_user_id, 20);
    let evs = s.events();
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e["type"], "entity_responsible_changed");
    assert_eq!(e["entity_type"], "lead");
    assert_eq!(e["entity_id"], 1);
    assert_eq!(e["created_by"], 1, "created_by = current_user_id");
    assert_eq!(e["value_before"], json!([{"responsible_user": {"id": 10}}]));
    assert_eq!(e["value_after"], json!([{"responsible_user": {"id": 20}}]));
    assert!(e["id"].as_str().unwrap().starts_with("01j"));
    assert_eq!(s.written_ids("leads"), vec![1, 2]);

    // Single-object form.
    let (st, body) = patch(&s, "/api/v4/leads/3", &json!({"responsible_user_id": 30})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 3);
    assert_eq!(s.written_ids("leads"), vec![1, 2, 3]);
    assert_eq!(s.patch_count(), 5);
    let (st, _) = patch(&s, "/api/v4/leads/42", &json!({"responsible_user_id": 30})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // A human change records its author.
    s.set_responsible_as_human("lead", 3, 10, 20);
    s.set_responsible_as_human("lead", 3, 10, 20); // same value: no event
    let mine = events_of(&s.events(), "leads", 3);
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[1]["created_by"], 20);
    assert_eq!(mine[1]["value_after"][0]["responsible_user"]["id"], 10);
}

#[tokio::test]
async fn events_window_entities_paging_and_204() {
    let clock = SimClock::new();
    clock.freeze();
    let s = sim_with(KommoSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    s.add_card("leads", SimCard::new(1, "L", 10));
    s.add_card("contacts", SimCard::new(2, "C", 10));
    s.add_card("companies", SimCard::new(3, "Co", 10));
    let t0 = clock.now();
    s.set_responsible_as_human("leads", 1, 20, 10); // t0
    clock.advance(100);
    s.set_responsible_as_human("contacts", 2, 20, 10); // t0+100
    s.add_custom_event("lead_added", "lead", 1, 10); // t0+100, other type
    clock.advance(100);
    s.set_responsible_as_human("companies", 3, 20, 10); // t0+200

    let base = "/api/v4/events?filter[type]=entity_responsible_changed";
    let all = get_json(&s, base).await;
    let ents: Vec<u64> = all["_embedded"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entity_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ents, vec![1, 2, 3], "ascending by created_at");

    let win = format!(
        "{base}&filter[created_at][from]={}&filter[created_at][to]={}",
        t0 + 50,
        t0 + 200
    );
    let w = get_json(&s, &win).await;
    assert_eq!(w["_embedded"]["events"].as_array().unwrap().len(), 2);

    let arr = get_json(
        &s,
        &format!("{base}&filter[entity][]=lead&filter[entity][]=company"),
    )
    .await;
    assert_eq!(arr["_embedded"]["events"].as_array().unwrap().len(), 2);
    let comma = get_json(
        &s,
        "/api/v4/events?filter[type]=entity_responsible_changed,lead_added&filter[entity]=lead,contact",
    )
    .await;
    assert_eq!(comma["_embedded"]["events"].as_array().unwrap().len(), 3);

    // the documented bare form means "created after" (AMO events-and-notes.md L52-53)
    let (st, body) = get(&s, &format!("{base}&filter[created_at]={}", t0 + 999)).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    // a lone [from] is a form the docs do not show: ignored, the whole history comes back
    let lone = get_json(
        &s,
        &format!("{base}&filter[created_at][from]={}", t0 + 1000),
    )
    .await;
    assert_eq!(lone["_embedded"]["events"].as_array().unwrap().len(), 3);

    // Paging: full page has next, past the end is 204; limit capped at 100.
    let p1 = get_json(&s, &format!("{base}&limit=2&page=1")).await;
    assert!(p1["_links"]["next"].is_object());
    let p2 = get_json(&s, &format!("{base}&limit=2&page=2")).await;
    assert_eq!(p2["_embedded"]["events"].as_array().unwrap().len(), 1);
    assert!(p2["_links"]["next"].is_null());
    let (st, _) = get(&s, &format!("{base}&limit=2&page=3")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    s.add_cards("leads", (10..260).map(|i| SimCard::new(i, "x", 10)));
    for i in 10..260 {
        s.set_responsible_as_human("leads", i, 20, 10);
    }
    let big = get_json(&s, &format!("{base}&limit=250")).await;
    assert_eq!(big["_embedded"]["events"].as_array().unwrap().len(), 100);
    assert!(big["_links"]["next"].is_object());
}

#[tokio::test]
async fn auth_401_and_oauth_rotation() {
    let clock = SimClock::new();
    clock.freeze();
    let oauth = OAuthSim {
        access_ttl_secs: 3600,
        ..OAuthSim::default()
    };
    let s = sim_with(KommoSimConfig {
        clock: Some(clock.clone()),
        long_lived_token: None,
        oauth: Some(oauth.clone()),
        ..Default::default()
    })
    .await;
    let c = client();
    let url = format!("{}/api/v4/account", s.base_url());
    let r = c.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 401);

    let refresh = |rt: String| {
        let c = c.clone();
        let url = format!("{}/oauth2/access_token", s.base_url());
        let o = oauth.clone();
        async move {
            c.post(url)
                .json(&json!({
                    "client_id": o.client_id, "client_secret": o.client_secret,
                    "grant_type": "refresh_token", "refresh_token": rt,
                    "redirect_uri": o.redirect_uri,
                }))
                .send()
                .await
                .unwrap()
        }
    };
    let r = refresh(oauth.refresh_token.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let pair1: Value = r.json().await.unwrap();
    assert_eq!(pair1["token_type"], "Bearer");
    assert_eq!(pair1["expires_in"], 3600);
    let access1 = pair1["access_token"].as_str().unwrap().to_string();
    let refresh1 = pair1["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(access1.split('.').count(), 3, "JWT-shaped");
    let exp = jwt_exp(&access1).expect("exp claim");
    assert!((exp - (clock.now() + 3600)).abs() <= 2);
    let ok = c.get(&url).bearer_auth(&access1).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // The used refresh token is revoked.
    let r = refresh(oauth.refresh_token.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["hint"], "Token has been revoked");

    // Rotate again: the old access token stops working.
    let pair2: Value = refresh(refresh1.clone()).await.json().await.unwrap();
    let access2 = pair2["access_token"].as_str().unwrap().to_string();
    assert_ne!(access1, access2);
    let old = c.get(&url).bearer_auth(&access1).send().await.unwrap();
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.get(&url)
            .bearer_auth(&access2)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(s.refresh_count(), 2);
    assert_eq!(
        s.current_refresh_token().as_deref(),
        pair2["refresh_token"].as_str()
    );

    // Expiry on the clock, and forced expiry.
    clock.advance(3600);
    assert_eq!(
        c.get(&url)
            .bearer_auth(&access2)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let pair3: Value = refresh(pair2["refresh_token"].as_str().unwrap().into())
        .await
        .json()
        .await
        .unwrap();
    let access3 = pair3["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        c.get(&url)
            .bearer_auth(&access3)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    s.expire_access_token();
    assert_eq!(
        c.get(&url)
            .bearer_auth(&access3)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Wrong client secret.
    let r = c
        .post(format!("{}/oauth2/access_token", s.base_url()))
        .json(&json!({"client_id": oauth.client_id, "client_secret": "bad",
            "grant_type": "refresh_token", "refresh_token": "x", "redirect_uri": oauth.redirect_uri}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn faults_each_kind() {
    let s = sim().await;
    s.add_cards("leads", (1..=10).map(|i| SimCard::new(i, "L", 10)));

    // TooMany: problem+json with retry_after, only for the matching method/path.
    s.push_fault(
        FaultRule::new(Fault::TooMany { retry_after: 7 })
            .method("GET")
            .path("/api/v4/leads"),
    );
    let (st, _) = get(&s, "/api/v4/users").await;
    assert_eq!(st, StatusCode::OK, "non-matching path is served");
    let (st, body) = get(&s, "/api/v4/leads").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["retry_after"], 7);
    let (st, _) = get(&s, "/api/v4/leads").await;
    assert_eq!(st, StatusCode::OK, "rule used up");

    // Status, twice, FIFO before a Truncated rule; a faulted PATCH is not applied.
    s.push_fault(FaultRule::new(Fault::Status(503)).times(2));
    s.push_fault(FaultRule::new(Fault::Truncated));
    assert_eq!(s.pending_faults(), 3);
    let (st, body) = patch(
        &s,
        "/api/v4/leads",
        &json!([{"id": 1, "responsible_user_id": 20}]),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], 503);
    assert_eq!(s.card("leads", 1).unwrap().responsible_user_id, 10);
    let (st, _) = get(&s, "/api/v4/leads").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    let r = client()
        .get(format!("{}/api/v4/leads", s.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("json")
    );
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "truncated");
    let full = get(&s, "/api/v4/leads").await.1;
    assert_eq!(text.len(), full.len() / 2);

    // HtmlForbidden.
    s.push_fault(FaultRule::new(Fault::HtmlForbidden));
    let r = client()
        .get(format!("{}/api/v4/leads", s.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("nginx"));

    // Latency.
    s.push_fault(FaultRule::new(Fault::Latency(Duration::from_millis(300))));
    let t = Instant::now();
    let (st, _) = get(&s, "/api/v4/leads").await;
    assert_eq!(st, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Persistent block.
    s.set_blocked(true);
    for _ in 0..3 {
        let (st, body) = get(&s, "/api/v4/account").await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert!(body.contains("<html>"));
    }
    s.set_blocked(false);
    assert_eq!(get(&s, "/api/v4/account").await.0, StatusCode::OK);

    // Everything was logged, faulted requests included.
    let log = s.requests();
    assert_eq!(log.len(), s.request_count());
    assert!(log.iter().any(|r| r.status == 429));
    assert!(log.iter().any(|r| r.method == "PATCH" && r.status == 503));
    s.clear_log();
    assert_eq!(s.request_count(), 0);
}

#[tokio::test]
async fn rps_meter_and_limit() {
    let s = sim().await;
    s.add_card("leads", SimCard::new(1, "L", 10));
    let c = client();
    let url = format!("{}/api/v4/leads", s.base_url());

    // 30 requests at once: the meter sees all of them in one second.
    let fire = |n: usize| {
        let futs: Vec<_> = (0..n)
            .map(|_| {
                let c = c.clone();
                let url = url.clone();
                tokio::spawn(
                    async move { c.get(url).bearer_auth(TOKEN).send().await.unwrap().status() },
                )
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for f in futs {
                out.push(f.await.unwrap());
            }
            out
        }
    };
    let statuses = fire(30).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(s.max_requests_in_any_second(), 30);

    // With a limit of 7, a burst of 30 gets exactly 7 through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.clear_log();
    s.set_rps_limit(Some(7));
    let statuses = fire(30).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (7, 23));
    let r = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["retry_after"], 1);

    // After a quiet second, paced requests pass and the meter agrees.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.clear_log();
    for _ in 0..10 {
        let r = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let m = s.max_requests_in_any_second();
    assert!((5..=7).contains(&m), "meter {m}");
    s.set_rps_limit(None);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let s = sim().await;
    let url = format!("{}/api/v4/account", s.base_url());
    assert_eq!(
        client()
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    s.shutdown().await;
    let c = Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(c.get(&url).bearer_auth(TOKEN).send().await.is_err());
}

#[tokio::test]
async fn bulk_world_is_fast() {
    let s = sim().await;
    let t = Instant::now();
    s.add_cards(
        "contacts",
        (1..=5000).map(|i| {
            SimCard::new(i, format!("C{i}"), 10).with_field(SimField::phones(&["+1 555 0100"]))
        }),
    );
    s.add_cards(
        "leads",
        (1..=5000).map(|i| SimCard::new(i, format!("L{i}"), 10).with_contacts(&[i])),
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let p = get_json(&s, "/api/v4/contacts?limit=250&page=20&with=leads").await;
    let items = p["_embedded"]["contacts"].as_array().unwrap();
    assert_eq!(items.len(), 250);
    assert_eq!(items[0]["custom_fields_values"][0]["field_code"], "PHONE");
    assert_eq!(items[0]["_embedded"]["leads"][0]["id"], items[0]["id"]);
}
