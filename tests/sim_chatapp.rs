//! Tests of the ChatApp simulator over real HTTP.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chatapp_kommo_sync::sim::{ChatAppSim, ChatAppSimConfig, Fault, FaultRule, SimChat, SimClock};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn sim_with(cfg: ChatAppSimConfig) -> ChatAppSim {
    let s = ChatAppSim::start(cfg).await.expect("start chatapp sim");
    s.add_employee(85501, "Ann Operator", "ann@example.com");
    s.add_employee(85502, "Bob Operator", "bob@example.com");
    s
}

async fn sim() -> ChatAppSim {
    sim_with(ChatAppSimConfig::default()).await
}

async fn login(s: &ChatAppSim) -> (String, String) {
    let r = client()
        .post(format!("{}/v1/tokens", s.base_url()))
        .json(
            &json!({"email": "ops@example.com", "password": "secret-password", "appId": "app_1_1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], true);
    (
        v["data"]["accessToken"].as_str().unwrap().to_string(),
        v["data"]["refreshToken"].as_str().unwrap().to_string(),
    )
}

async fn get(s: &ChatAppSim, token: &str, path_and_query: &str) -> (StatusCode, Value) {
    let r = client()
        .get(format!("{}{}", s.base_url(), path_and_query))
        .header("Authorization", token)
        .send()
        .await
        .unwrap();
    let st = r.status();
    let text = r.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn put_responsible(
    s: &ChatAppSim,
    token: &str,
    license: u64,
    mt: &str,
    chat: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let r = client()
        .put(format!(
            "{}/v1/licenses/{license}/messengers/{mt}/chats/{chat}/responsible",
            s.base_url()
        ))
        .header("Authorization", token)
        .json(body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn login_refresh_and_invalid_tokens() {
    let clock = SimClock::new();
    clock.freeze();
    let s = sim_with(ChatAppSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let c = client();

    // Wrong credentials.
    let r = c
        .post(format!("{}/v1/tokens", s.base_url()))
        .json(&json!({"email": "ops@example.com", "password": "nope", "appId": "app_1_1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["code"], "ApiAuthError");
    assert_eq!(s.login_count(), 0);

    let (access, refresh) = login(&s).await;
    assert_eq!(s.login_count(), 1);
    let (st, v) = get(&s, &access, "/v1/companies/1/employees?limit=200").await;
    assert_eq!(st, StatusCode::OK);
    let items = v["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["fullName"], "Ann Operator");
    assert_eq!(items[0]["role"]["name"], "Operator");

    // Invalid, Bearer-prefixed and missing tokens: 403 ApiInvalidTokenError.
    for tok in ["garbage", &format!("Bearer {access}")] {
        let (st, v) = get(&s, tok, "/v1/companies/1/employees").await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert_eq!(v["error"]["code"], "ApiInvalidTokenError");
    }
    let r = c
        .get(format!("{}/v1/companies/1/employees", s.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Refresh with the Refresh header: a new pair; the old refresh token is revoked.
    let do_refresh = |rt: Option<String>| {
        let c = c.clone();
        let url = format!("{}/v1/tokens/refresh", s.base_url());
        async move {
            let mut b = c.post(url);
            if let Some(rt) = rt {
                b = b.header("Refresh", rt);
            }
            b.send().await.unwrap()
        }
    };
    let r = do_refresh(Some(refresh.clone())).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let access2 = v["data"]["accessToken"].as_str().unwrap().to_string();
    let refresh2 = v["data"]["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(access2, access);
    assert!(v["data"]["accessTokenEndTime"].as_i64().unwrap() >= clock.now() + 86_399);
    assert_eq!(s.refresh_count(), 1);
    let r = do_refresh(Some(refresh.clone())).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "ApiInvalidTokenError");
    assert_eq!(do_refresh(None).await.status(), StatusCode::FORBIDDEN);

    // Expiry by the clock, and forced expiry.
    assert_eq!(get(&s, &access2, "/v1/me").await.0, StatusCode::OK);
    clock.advance(86_400);
    assert_eq!(get(&s, &access2, "/v1/me").await.0, StatusCode::FORBIDDEN);
    let r = do_refresh(Some(refresh2.clone())).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let access3 = v["data"]["accessToken"].as_str().unwrap().to_string();
    let refresh3 = v["data"]["refreshToken"].as_str().unwrap().to_string();
    assert_eq!(get(&s, &access3, "/v1/me").await.0, StatusCode::OK);
    s.expire_access_tokens();
    assert_eq!(get(&s, &access3, "/v1/me").await.0, StatusCode::FORBIDDEN);
    s.revoke_refresh_tokens();
    assert_eq!(
        do_refresh(Some(refresh3)).await.status(),
        StatusCode::FORBIDDEN
    );

    // Login limit.
    s.set_login_limit(Some(1));
    let r = c
        .post(format!("{}/v1/tokens", s.base_url()))
        .json(
            &json!({"email": "ops@example.com", "password": "secret-password", "appId": "app_1_1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn chat_paging_is_stable_under_concurrent_change() {
    let clock = SimClock::new();
    clock.freeze();
    let s = sim_with(ChatAppSimConfig {
        clock: Some(clock.clone()),
        license_ids: vec![1, 2],
        ..Default::default()
    })
    .await;
    for i in 0..25u64 {
        s.add_chat(SimChat::whatsapp(
            1,
            &format!("7999000{i:04}"),
            &format!("C{i}"),
            None,
        ));
        clock.advance(10);
    }
    // Three chats share one lastTime (ties broken by key).
    for i in 0..3u64 {
        s.add_chat(SimChat {
            license_id: 2,
            messenger_type: "telegram".into(),
            chat_id: format!("@user{i}"),
            phone: None,
            name: format!("T{i}"),
            responsible: Some(85501),
        });
    }
    s.add_chat(SimChat::whatsapp(3, "70000000000", "other license", None));
    let (tok, _) = login(&s).await;

    // Plain paging: 28 chats of licenses 1 and 2, newest first, no duplicates.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = "/v1/chats?companyId=1&limit=10&filter[licenseIds]=1,2".to_string();
        if let Some(n) = &next {
            q.push_str(&format!("&nextPage={n}"));
        }
        let (st, v) = get(&s, &tok, &q).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        pages += 1;
        for it in v["data"]["items"].as_array().unwrap() {
            seen.push((
                it["lastTime"].as_i64().unwrap(),
                it["id"].as_str().unwrap().to_string(),
            ));
        }
        match v["data"]["nextPage"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 28);
    assert!(seen.windows(2).all(|w| w[0].0 >= w[1].0), "lastTime desc");
    assert_eq!(seen.iter().map(|x| &x.1).collect::<HashSet<_>>().len(), 28);
    assert!(seen.iter().all(|x| x.1 != "70000000000@c.us"));

    // Changes between pages: every chat that did not move is seen exactly once.
    let (_, v1) = get(&s, &tok, "/v1/chats?companyId=1&limit=10").await;
    let page1: Vec<String> = v1["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    let cursor = v1["data"]["nextPage"].as_str().unwrap().to_string();
    clock.advance(10);
    // A chat from page 1 and one from a later page get new activity.
    s.new_message(1, "grWhatsApp", &page1[3]);
    let moved = "79990000002@c.us";
    assert!(!page1.contains(&moved.to_string()));
    s.new_message(1, "grWhatsApp", moved);
    let mut rest = Vec::new();
    let mut next = Some(cursor);
    while let Some(n) = next {
        let (_, v) = get(
            &s,
            &tok,
            &format!("/v1/chats?companyId=1&limit=10&nextPage={n}"),
        )
        .await;
        for it in v["data"]["items"].as_array().unwrap() {
            rest.push(it["id"].as_str().unwrap().to_string());
        }
        next = v["data"]["nextPage"].as_str().map(str::to_string);
    }
    let all: Vec<&String> = page1.iter().chain(rest.iter()).collect();
    let uniq: HashSet<&&String> = all.iter().collect();
    assert_eq!(uniq.len(), all.len(), "no duplicates");
    assert_eq!(
        all.len(),
        27,
        "only the chat that moved above the cursor is missed"
    );
    assert!(!rest.contains(&moved.to_string()));
    // ...and the next pass sees it first.
    let (_, v) = get(&s, &tok, "/v1/chats?companyId=1&limit=1").await;
    assert_eq!(v["data"]["items"][0]["id"], moved);

    // Validation.
    assert_eq!(
        get(&s, &tok, "/v1/chats?companyId=1&limit=101").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        get(&s, &tok, "/v1/chats?companyId=1&nextPage=%21%21")
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        get(&s, &tok, "/v1/chats?companyId=2").await.0,
        StatusCode::NOT_FOUND
    );

    // Per-license list.
    let (st, v) = get(&s, &tok, "/v1/licenses/2/messengers/telegram/chats?limit=2").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"]["items"][0]["username"], "user0");
    assert!(v["data"]["nextPage"].is_string());
}

#[tokio::test]
async fn single_chat_put_responsible_and_lifecycle() {
    let clock = SimClock::new();
    clock.freeze();
    let s = sim_with(ChatAppSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    s.add_chat(SimChat::whatsapp(1, "+7 (999) 123-45-67", "Client", None));
    let chat = "79991234567@c.us";
    let (tok, _) = login(&s).await;

    let (st, v) = get(
        &s,
        &tok,
        &format!("/v1/licenses/1/messengers/grWhatsApp/chats/{chat}"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let d = &v["data"];
    assert_eq!(d["id"], chat);
    assert_eq!(d["phone"], "79991234567");
    assert_eq!(d["licenseId"], 1);
    assert_eq!(d["messengerType"], "grWhatsApp");
    assert_eq!(d["type"], "private");
    assert!(d["responsible"].is_null());
    assert_eq!(d["status"], "open");
    let t0 = d["lastTime"].as_i64().unwrap();
    assert_eq!(d["conversation"]["startTime"], t0);

    let (st, v) = get(&s, &tok, "/v1/licenses/1/messengers/grWhatsApp/chats/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "ApiNotFoundError");

    clock.advance(60);
    let (st, v) = put_responsible(
        &s,
        &tok,
        1,
        "grWhatsApp",
        chat,
        &json!({"responsibleId": 85502}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["data"]["responsible"], json!({"id": 85502}));
    assert_eq!(v["data"]["lastTime"], t0 + 60);
    assert_eq!(s.responsible_of(1, "grWhatsApp", chat), Some(85502));
    assert_eq!(
        s.written_chats(),
        vec![(1, "grWhatsApp".to_string(), chat.to_string(), 85502)]
    );
    let (_, m) = get(
        &s,
        &tok,
        &format!(
            "/v1/licenses/1/messengers/grWhatsApp/chats/{chat}/messages?includeSystemMessages=1"
        ),
    )
    .await;
    assert_eq!(m["data"]["items"][0]["type"], "system");
    assert!(
        m["data"]["items"][0]["message"]["text"]
            .as_str()
            .unwrap()
            .contains("[85502]")
    );

    let (st, v) = put_responsible(
        &s,
        &tok,
        1,
        "grWhatsApp",
        chat,
        &json!({"responsibleId": 1}),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["code"], "ApiValidationError");
    let (st, _) = put_responsible(&s, &tok, 1, "grWhatsApp", chat, &json!({})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    let (st, v) = put_responsible(
        &s,
        &tok,
        1,
        "grWhatsApp",
        "x@c.us",
        &json!({"responsibleId": 85501}),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "ApiNotFoundError");
    assert_eq!(s.written_chats().len(), 1);

    // Human actions.
    clock.advance(10);
    s.assign_as_human(1, "grWhatsApp", chat, Some(85501));
    let st1 = s.chat(1, "grWhatsApp", chat).unwrap();
    assert_eq!((st1.responsible, st1.last_time), (Some(85501), t0 + 70));
    clock.advance(10);
    s.new_message(1, "grWhatsApp", chat);
    assert_eq!(s.chat(1, "grWhatsApp", chat).unwrap().last_time, t0 + 80);
    clock.advance(10);
    s.close_chat(1, "grWhatsApp", chat);
    let c = s.chat_json(1, "grWhatsApp", chat).unwrap();
    assert_eq!(c["status"], "closed");
    assert_eq!(c["conversation"]["endTime"], t0 + 90);
    clock.advance(10);
    s.reopen_chat(1, "grWhatsApp", chat);
    let c = s.chat_json(1, "grWhatsApp", chat).unwrap();
    assert_eq!(c["status"], "open");
    assert_eq!(c["conversation"]["startTime"], t0 + 100);
    assert_eq!(c["conversation"]["endTime"], 0);
    assert_eq!(c["lastTime"], t0 + 100);
}

#[tokio::test]
async fn faults_each_kind() {
    let s = sim().await;
    s.add_chat(SimChat::whatsapp(1, "79990000001", "C", None));
    let (tok, _) = login(&s).await;
    let list = "/v1/chats?companyId=1";

    s.push_fault(FaultRule::new(Fault::TooMany { retry_after: 3 }).path("/v1/chats"));
    let r = client()
        .get(format!("{}{list}", s.base_url()))
        .header("Authorization", &tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "3");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["code"], "TooManyRequests");

    s.push_fault(FaultRule::new(Fault::Status(502)).method("PUT").times(1));
    let (st, v) = put_responsible(
        &s,
        &tok,
        1,
        "grWhatsApp",
        "79990000001@c.us",
        &json!({"responsibleId": 85501}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    assert_eq!(v["success"], false);
    assert!(s.written_chats().is_empty(), "faulted PUT not applied");

    s.push_fault(FaultRule::new(Fault::Truncated));
    let r = client()
        .get(format!("{}{list}", s.base_url()))
        .header("Authorization", &tok)
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
    assert!(serde_json::from_str::<Value>(&r.text().await.unwrap()).is_err());

    s.push_fault(FaultRule::new(Fault::HtmlForbidden));
    let (st, v) = get(&s, &tok, list).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(v.is_null(), "HTML body");

    s.push_fault(FaultRule::new(Fault::Latency(Duration::from_millis(250))));
    let t = Instant::now();
    assert_eq!(get(&s, &tok, list).await.0, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert_eq!(s.pending_faults(), 0);

    // rps limit: ChatApp shape with Retry-After 1.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    s.clear_log();
    s.set_rps_limit(Some(5));
    let futs: Vec<_> = (0..12)
        .map(|_| {
            let url = format!("{}{list}", s.base_url());
            let tok = tok.clone();
            tokio::spawn(async move {
                let r = client()
                    .get(url)
                    .header("Authorization", tok)
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.headers().get("retry-after").cloned())
            })
        })
        .collect();
    let mut ok = 0;
    for f in futs {
        let (st, ra) = f.await.unwrap();
        if st == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(ra.unwrap(), "1");
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(s.request_count(), 12);
    assert_eq!(s.max_requests_in_any_second(), 12);
    assert_eq!(s.requests().iter().filter(|r| r.status == 429).count(), 7);
}

#[tokio::test]
async fn chat_override_makes_one_chat_malformed_until_cleared() {
    let clock = SimClock::new();
    clock.freeze();
    let s = sim_with(ChatAppSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    s.add_chat(SimChat::whatsapp(1, "+7 999 000-00-01", "A", Some(85501)));
    clock.advance(1);
    s.add_chat(SimChat::whatsapp(1, "+7 999 000-00-02", "B", Some(85501)));
    let (a, b) = ("79990000001@c.us", "79990000002@c.us");
    let (tok, _) = login(&s).await;
    s.set_chat_json_override(1, "grWhatsApp", a, json!({"responsible": {"id": "85501"}}));
    s.remove_chat_json_keys(1, "grWhatsApp", b, &["lastTime"]);

    let by_id = |chat: &'static str| {
        let s = s.clone();
        let tok = tok.clone();
        async move {
            let (st, v) = get(
                &s,
                &tok,
                &format!("/v1/licenses/1/messengers/grWhatsApp/chats/{chat}"),
            )
            .await;
            assert_eq!(st, StatusCode::OK);
            v["data"].clone()
        }
    };
    for _ in 0..2 {
        let (st, v) = get(&s, &tok, "/v1/chats?companyId=1").await;
        assert_eq!(st, StatusCode::OK);
        let items = v["data"]["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        // Order still follows the real lastTime: B (newer) first.
        assert_eq!(items[0]["id"], b);
        assert!(items[0].get("lastTime").is_none());
        assert_eq!(items[0]["responsible"], json!({"id": 85501}));
        assert_eq!(items[1]["responsible"], json!({"id": "85501"}));
        assert_eq!(items[1]["name"], "A", "other keys untouched");
    }
    assert_eq!(by_id(a).await["responsible"]["id"], "85501");
    let (st, v) = get(&s, &tok, "/v1/licenses/1/messengers/grWhatsApp/chats").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["items"][1]["responsible"]["id"], "85501");
    // A write applies; its answer and the inspector keep the override.
    let (st, v) = put_responsible(
        &s,
        &tok,
        1,
        "grWhatsApp",
        a,
        &json!({"responsibleId": 85502}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["responsible"]["id"], "85501");
    assert_eq!(s.responsible_of(1, "grWhatsApp", a), Some(85502));
    assert_eq!(
        s.chat_json(1, "grWhatsApp", a).unwrap()["responsible"]["id"],
        "85501"
    );
    // A non-object replaces the whole chat.
    s.set_chat_json_override(1, "grWhatsApp", b, json!(null));
    let (_, v) = get(&s, &tok, "/v1/chats?companyId=1").await;
    let items = v["data"]["items"].as_array().unwrap();
    assert!(items.iter().any(Value::is_null));

    s.clear_chat_json_override(1, "grWhatsApp", a);
    assert_eq!(by_id(a).await["responsible"], json!({"id": 85502}));
    s.clear_chat_json_overrides();
    let chat_b = by_id(b).await;
    assert_eq!(chat_b["id"], b);
    assert!(chat_b["lastTime"].is_i64());
}
