//! Inputs found by the fuzz targets (`fuzz/`), kept as tests: each one goes through the same
//! `chatapp_kommo_sync::fuzzing` function as its target (which checks the invariants the target
//! checks: a panic there fails the test), and the test asserts what a sensible result is.
//! The seed corpus (`fuzz/seeds/`) is replayed the same way, so the entry points themselves are
//! tested with every `cargo test`.

#![allow(clippy::unwrap_used)]

use chatapp_kommo_sync::core::model::CardKind;
use chatapp_kommo_sync::fuzzing::{self, ChatAppBody, HookCall, KommoBody, Outcome};
use chatapp_kommo_sync::http::ApiError;
use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn decode_error(r: Result<Outcome, ApiError>) -> String {
    match r {
        Err(e @ ApiError::Decode { .. }) => e.to_string(),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn seeds_replay_through_every_entry_point() {
    for (name, data) in seeds("webhook_kommo") {
        let a = fuzzing::webhook_kommo_bytes(&data);
        assert!([200, 404, 405, 413].contains(&a.status), "{name}: {a:?}");
    }
    for (name, data) in seeds("webhook_chatapp") {
        let a = fuzzing::webhook_chatapp_bytes(&data);
        assert!([200, 404, 405, 413].contains(&a.status), "{name}: {a:?}");
    }
    for (name, data) in seeds("kommo_decode") {
        let r = fuzzing::kommo_decode_bytes(&data);
        if name.ends_with("html") {
            decode_error(r);
        } else {
            assert!(r.is_ok(), "{name}: {r:?}");
        }
    }
    for (name, data) in seeds("chatapp_decode") {
        let r = fuzzing::chatapp_decode_bytes(&data);
        assert!(r.is_ok(), "{name}: {r:?}");
    }
    for (name, data) in seeds("config_text") {
        let r = fuzzing::config_bytes(&data).expect("UTF-8");
        assert!(r.is_ok(), "{name}: {r:?}");
    }
    for (_, data) in seeds("links") {
        assert!(!fuzzing::links_bytes(&data).is_empty());
    }
    for (_, data) in seeds("redact") {
        let s = fuzzing::redact_bytes(&data).expect("UTF-8");
        assert!(s.contains("[redacted]"), "{s}");
    }
}

#[test]
fn a_page_with_one_bad_record_keeps_the_others() {
    let body = br#"{"_embedded":{"leads":[{"id":1,"responsible_user_id":5},{"id":2,"responsible_user_id":"x"}]}}"#;
    let o = fuzzing::kommo_decode(KommoBody::Cards(CardKind::Lead), body).unwrap();
    assert_eq!(
        o,
        Outcome {
            records: 1,
            skipped: 1
        }
    );
    let body = br#"{"data":{"items":[{"id":"a","licenseId":1,"messengerType":"telegram"},{"id":5}],"nextPage":null}}"#;
    let o = fuzzing::chatapp_decode(ChatAppBody::Chats, body).unwrap();
    assert_eq!(
        o,
        Outcome {
            records: 1,
            skipped: 1
        }
    );
}

#[test]
fn webhook_routes_answer_hostile_calls_without_a_trigger() {
    let call = |token: &[u8], post: bool, body: Vec<u8>, content_length: Option<&str>| HookCall {
        chatapp: false,
        post,
        token: token.to_vec(),
        content_length: content_length.map(|s| s.as_bytes().to_vec()),
        body,
    };
    let hook = b"leads[responsible][0][id]=1".to_vec();
    let right = fuzzing::HOOK_TOKEN.as_bytes();
    let a = fuzzing::webhook_route(&call(right, true, hook.clone(), None));
    assert_eq!((a.status, a.triggered), (200, true));
    for (token, post, body, cl, status) in [
        (&b"wrong"[..], true, hook.clone(), None, 404),
        (b"\xff\xfe", true, hook.clone(), None, 400),
        (b"", true, hook.clone(), None, 404),
        (right, false, hook.clone(), None, 405),
        (
            right,
            true,
            hook.clone(),
            Some("99999999999999999999999"),
            200,
        ),
        (right, true, hook.clone(), Some("65537"), 413),
        (right, true, vec![b'a'; 64 * 1024 + 1], None, 413),
    ] {
        let a = fuzzing::webhook_route(&call(token, post, body, cl));
        assert_eq!(a.status, status, "{token:?} {post} {cl:?}");
        assert!(!a.triggered || status == 200);
    }
}

/// Found while writing the decode targets (the retry path is not reachable from a fuzz target: it
/// needs a server): a 429 whose `retry_after` (Kommo, in the body) or `Retry-After` (ChatApp, a
/// header) is near `u64::MAX` seconds made `Instant::now() + wait` overflow, a panic in release
/// builds too. A wait longer than `LONGEST_RETRY_AFTER` (15 min) is not waited for: the request
/// gives up at once, with or without a cycle deadline, as a 429 failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_asking_for_an_endless_wait_gives_up_at_once() {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    use chatapp_kommo_sync::http::{ApiClient, Limits};
    use std::time::{Duration, Instant};

    let app = axum::Router::new()
        .route(
            "/kommo",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    r#"{"retry_after":18446744073709551615}"#,
                )
            }),
        )
        .route(
            "/chatapp",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "18446744073709551615")],
                    "{}",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for path in ["/kommo", "/chatapp"] {
        let limits = Limits::standard(50, Duration::from_secs(5), None);
        let api = ApiClient::new("kommo", &base, limits).unwrap();
        if path == "/kommo" {
            api.set_deadline(Some(Instant::now() + Duration::from_secs(60)));
        }
        let url = api.url(path);
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            api.execute("GET /x", |c| c.get(&url)),
        )
        .await
        .expect("gives up at once");
        assert!(
            matches!(
                r,
                Err(ApiError::Transport {
                    class: "http_429",
                    attempts: 1,
                    ..
                })
            ),
            "{path}: {r:?}"
        );
    }
}

/// Found through `config_text`'s check that every duration of a valid config fits the clock (the
/// fuzzer itself did not reach these values in its runs here): durations had a floor but no
/// ceiling, so `cycle_budget = "300000000000y"` was accepted and the daemon's first cycle computed
/// `Instant::now() + cycle_budget`, which panics on overflow (in release builds too); the same for
/// the breaker's `block_cooloff`. Now every such duration is at most a year.
#[test]
fn config_durations_past_the_clock_are_refused() {
    let full = String::from_utf8(
        seeds("config_text")
            .into_iter()
            .find(|(n, _)| n.ends_with("full.toml"))
            .unwrap()
            .1,
    )
    .unwrap();
    for (from, to, key) in [
        (
            "cycle_budget = \"15m\"",
            "cycle_budget = \"300000000000y\"",
            "daemon.cycle_budget",
        ),
        (
            "block_cooloff = \"30m\"",
            "block_cooloff = \"18446744073709551615s\"",
            "kommo.block_cooloff",
        ),
        (
            "events_overlap = \"2m\"",
            "events_overlap = \"366d\"",
            "kommo.events_overlap",
        ),
        (
            "clock_skew = \"5s\"",
            "clock_skew = \"300000000y\"",
            "sync.clock_skew",
        ),
    ] {
        assert!(full.contains(from), "{from}");
        let text = full.replace(from, to);
        let e = fuzzing::config_bytes(text.as_bytes()).unwrap().unwrap_err();
        assert!(
            e.0.iter()
                .any(|p| p.key == key && p.reason.contains("at most 365 days")),
            "{e}"
        );
    }
    let text = full.replace("cycle_budget = \"15m\"", "cycle_budget = \"365d\"");
    assert!(fuzzing::config_bytes(text.as_bytes()).unwrap().is_ok());
}

/// Found by the `chatapp_decode` target: a chat id or messenger type of `.` or `..` cannot be one
/// URL path segment (URL parsers drop or climb it, percent-encoded too), so the chat's write
/// would reach another path. Such a chat is now refused when decoded and quarantined; the other
/// chats of the page are kept.
#[test]
fn chats_whose_ids_cannot_be_a_path_segment_are_quarantined() {
    let body = br#"{"data":{"items":[
        {"id":"..","licenseId":1,"messengerType":"grWhatsApp","lastTime":5},
        {"id":"7999@c.us","licenseId":1,"messengerType":".","lastTime":4},
        {"id":"7998@c.us","licenseId":1,"messengerType":"grWhatsApp","lastTime":3}
    ]}}"#;
    let o = fuzzing::chatapp_decode(fuzzing::ChatAppBody::Chats, body).expect("the page decodes");
    assert_eq!(o.records, 1, "{o:?}");
    assert_eq!(o.skipped, 2, "{o:?}");
}

/// Found by the `chatapp_decode` target: an error body at HTTP 449 that names
/// `ApiInvalidTokenError` while another of its strings is not UTF-8. The client reads only the
/// fields it keeps, so it sees the code (and refreshes the token); the target's own check read the
/// whole body as a `serde_json::Value`, which refuses it, and called the client wrong. The check
/// now reads the code as the client does; the input must pass it.
#[test]
fn an_invalid_token_code_beside_a_non_utf8_string_is_still_the_code() {
    let mut data = vec![5u8, 0x2d, 0x09];
    data.extend_from_slice(
        br#"{"success": false, "error": {"code": "ApiInvalidTokenError", "messawe": "I"#,
    );
    data.extend_from_slice(&[0x92, 0x89, 0x9e, 0x93, 0x96, 0x9b, 0xdf, 0x87]);
    data.extend_from_slice(br#"oken"}}"#);
    let o = fuzzing::chatapp_decode_bytes(&data).expect("an error answer decodes to nothing");
    assert_eq!(o, Outcome::default());
}
