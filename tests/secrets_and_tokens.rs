//! Issue 13.4 and 13.7: a rotated Kommo token pair is never lost when it cannot be stored, and
//! secrets an API echoes back never reach an output, a log or the state db.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::commands::demo::sample_world_with;
use chatapp_kommo_sync::sim::{Fault, FaultRule, KommoSimConfig, OAuthSim};
use chatapp_kommo_sync::tokens::{MemoryTokens, TokenStore};
use e2e::Env;
use std::sync::Arc;

const KOMMO_TOKEN: &str = "kommo-test-token";

#[tokio::test(flavor = "multi_thread")]
async fn credentials_echoed_by_an_api_reach_no_output_log_or_db() {
    let env = Env::new("").await;
    env.once(&[]).await; // a ChatApp token pair is issued and stored
    let stored: chatapp_kommo_sync::tokens::TokenPair = {
        let s =
            chatapp_kommo_sync::store::Store::open_read_only(&env.dir.path().join("state.redb"))
                .unwrap();
        s.chatapp_pair().unwrap().unwrap()
    };
    env.w
        .kommo
        .push_fault(FaultRule::new(Fault::EchoCredentials(401)).times(5));
    env.w
        .chatapp
        .push_fault(FaultRule::new(Fault::EchoCredentials(400)).times(5));
    let mut r = env.run(&["once"]).await;
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("401"),
        "the failure is reported: {}",
        r.stderr
    );
    // and check-config --online, which prints API errors too
    let online = env.run(&["check-config", "--online"]).await;
    r.stdout.push_str(&online.stdout);
    r.stderr.push_str(&online.stderr);
    let status = env.run(&["status"]).await;
    let db = std::fs::read(env.dir.path().join("state.redb")).unwrap();
    let db_text = String::from_utf8_lossy(&db);
    for secret in [KOMMO_TOKEN, &stored.access_token, &stored.refresh_token] {
        assert!(
            !r.stdout.contains(secret),
            "stdout has {secret}: {}",
            r.stdout
        );
        assert!(
            !r.stderr.contains(secret),
            "stderr has {secret}: {}",
            r.stderr
        );
        assert!(
            !status.stdout.contains(secret),
            "status has {secret}: {}",
            status.stdout
        );
    }
    // the db keeps the ChatApp pair (it must); the Kommo token is in no readable record
    assert!(
        !db_text.contains(KOMMO_TOKEN),
        "the db holds the echoed token"
    );
    assert!(r.stderr.contains("[redacted]"), "{}", r.stderr);
}

fn oauth_config() -> KommoSimConfig {
    KommoSimConfig {
        long_lived_token: None,
        oauth: Some(OAuthSim {
            client_id: "client-1".into(),
            client_secret: "client-secret-XYZ".into(),
            redirect_uri: "https://example.com/oauth".into(),
            refresh_token: "seed-refresh-token".into(),
            access_ttl_secs: 3_600,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_pair_that_cannot_be_stored_is_kept_used_and_stored_later() {
    let w = sample_world_with(oauth_config()).await.unwrap();
    let env = Env::from_world(w, "");
    std::fs::write(
        env.dir.path().join("kommo-client-secret"),
        "client-secret-XYZ\n",
    )
    .unwrap();
    std::fs::write(
        env.dir.path().join("kommo-refresh-token"),
        "seed-refresh-token\n",
    )
    .unwrap();
    env.edit_config(|t| {
        t.replace("token_file = \"kommo-token\"\n", "").replace(
            "[chatapp]\n",
            "[kommo.oauth]\nclient_id = \"client-1\"\nclient_secret_file = \"kommo-client-secret\"\nredirect_uri = \"https://example.com/oauth\"\nrefresh_token_file = \"kommo-refresh-token\"\n\n[chatapp]\n",
        )
    });
    let loaded = chatapp_kommo_sync::config::load(&env.config).unwrap();
    let tokens = Arc::new(MemoryTokens::new());
    let (kommo, _chatapp) = chatapp_kommo_sync::service::wiring::clients(
        &loaded,
        tokens.clone() as Arc<dyn TokenStore>,
    )
    .unwrap();
    let k = &env.w.kommo;

    // the disk is full: the first refresh's pair cannot be stored
    tokens.set_fail_writes(true);
    kommo.account().await.unwrap();
    assert_eq!(k.refresh_count(), 1);
    assert!(kommo.auth().unsaved(), "the pair lives only in memory");
    assert_ne!(
        tokens.kommo_pair().unwrap().map(|p| p.refresh_token),
        k.current_refresh_token(),
        "not stored"
    );
    // it is used: calls go on, and a second rotation uses the in-memory refresh token (no 401)
    kommo.users().await.unwrap();
    k.expire_access_token();
    kommo.account().await.unwrap();
    assert_eq!(k.refresh_count(), 2, "refreshed again with the kept token");
    assert!(!kommo.auth().retry_unsaved().await, "still failing");
    assert!(kommo.auth().unsaved());

    // the disk has room again: the next retry stores the pair in use
    tokens.set_fail_writes(false);
    assert!(kommo.auth().retry_unsaved().await);
    assert!(!kommo.auth().unsaved());
    assert_eq!(
        tokens.kommo_pair().unwrap().map(|p| p.refresh_token),
        k.current_refresh_token(),
        "the stored pair is the one Kommo considers valid"
    );
    kommo.account().await.unwrap();
    assert_eq!(k.refresh_count(), 2, "no lock-out, no extra refresh");
}
