//! Issue 4: Kommo OAuth with single-use refresh tokens, across processes. Issue 18: `authorize
//! --code` (item 9) and the account's subdomain change (item 7).

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::commands::demo::sample_world_with;
use chatapp_kommo_sync::sim::{KommoSimConfig, OAuthSim};
use e2e::{Env, chat};

async fn oauth_env() -> Env {
    let w = sample_world_with(KommoSimConfig {
        long_lived_token: None,
        oauth: Some(OAuthSim {
            client_id: "client-1".into(),
            client_secret: "client-secret-XYZ".into(),
            redirect_uri: "https://example.com/oauth".into(),
            refresh_token: "seed-refresh-token".into(),
            access_ttl_secs: 86_400,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
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
        t.replace(
            "token_file = \"kommo-token\"\n",
            "",
        )
        .replace(
            "[chatapp]\n",
            "[kommo.oauth]\nclient_id = \"client-1\"\nclient_secret_file = \"kommo-client-secret\"\nredirect_uri = \"https://example.com/oauth\"\nrefresh_token_file = \"kommo-refresh-token\"\n\n[chatapp]\n",
        )
    });
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_refreshes_once_and_new_processes_use_the_rotated_token() {
    let env = oauth_env().await;
    let k = &env.w.kommo;
    // first run: the seed refresh token gives the first pair (one refresh)
    env.once(&[]).await;
    assert_eq!(k.refresh_count(), 1);
    // the seed is now revoked by the simulator; the seed file is never read again
    std::fs::write(env.dir.path().join("kommo-refresh-token"), "garbage\n").unwrap();
    env.once(&[]).await;
    assert_eq!(
        k.refresh_count(),
        1,
        "a valid stored access token is reused across processes"
    );
    // the access token expires server-side: a new process gets a 401, refreshes once with the
    // rotated (stored) refresh token, and goes on
    k.expire_access_token();
    env.w.clock.advance(10);
    k.set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.once(&[]).await;
    assert_eq!(k.refresh_count(), 2, "exactly one refresh: {r:?}");
    assert_eq!(
        env.w.chatapp.responsible_of(1, "grWhatsApp", &chat(1)),
        Some(85502)
    );
    // and again in yet another process: the rotated token keeps working
    k.expire_access_token();
    env.once(&["--full"]).await;
    assert_eq!(k.refresh_count(), 3);
    let all = format!("{r:?}");
    assert!(
        !all.contains("client-secret-XYZ")
            && !all.contains(&k.current_refresh_token().unwrap_or_default())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_refresh_token_fails_the_cycle_with_a_clear_message() {
    let env = oauth_env().await;
    std::fs::write(
        env.dir.path().join("kommo-refresh-token"),
        "not-the-valid-one\n",
    )
    .unwrap();
    let r = env.run(&["once"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("authorize the integration again"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("not-the-valid-one"),
        "the token is not echoed"
    );
}

// ----- issue 18 item 9: `authorize --code` -----

/// Everything a run printed.
fn printed(r: &e2e::Run) -> String {
    format!("{}\n{}", r.stdout, r.stderr)
}

/// The refresh token of the pair in the state db (read while no process holds it).
fn stored_refresh(env: &Env) -> Option<String> {
    use chatapp_kommo_sync::tokens::TokenStore;
    let store = chatapp_kommo_sync::store::Store::open(&env.dir.path().join("state.redb")).unwrap();
    let pair = store.kommo_pair().unwrap().map(|p| p.refresh_token);
    store.close().unwrap();
    pair
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_after_a_revoked_pair_keeps_every_base_and_the_next_cycle_is_incremental() {
    let env = oauth_env().await;
    let k = &env.w.kommo;
    env.once(&[]).await; // the first run: bases adopted
    // an admin switches the integration off and on: the stored pair is revoked
    k.revoke_oauth_pair();
    env.w.clock.advance(10);
    let r = env.run(&["once"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("authorize --code"), "{}", r.stderr);
    // the operator gets a new code and authorizes
    let code = k.issue_auth_code();
    let r = env.run(&["authorize", "--code", &code]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(k.code_exchange_count(), 1);
    assert!(r.stdout.contains("the next cycle is incremental"), "{r:?}");
    let all = printed(&r);
    for secret in [
        code.clone(),
        k.current_refresh_token().unwrap(),
        k.current_access_token().unwrap(),
        "client-secret-XYZ".into(),
    ] {
        assert!(!all.contains(&secret), "printed a secret: {all}");
    }
    // a person's change: synced by the next cycle, an incremental one on the kept bases (a
    // bootstrap would adopt the disagreement and write nothing)
    env.w.clock.advance(10);
    k.set_responsible_as_human("contacts", 1001, 504142, 504141);
    let refreshes = k.refresh_count();
    let r = env.once(&[]).await;
    assert!(r.stdout.contains("(incremental)"), "{}", r.stdout);
    assert_eq!(
        env.w.chatapp.responsible_of(1, "grWhatsApp", &chat(1)),
        Some(85502),
        "{}",
        r.stdout
    );
    assert_eq!(
        k.refresh_count(),
        refreshes,
        "the authorized pair is used as is"
    );
    let status = env.run(&["status"]).await;
    assert!(!printed(&status).contains(&code));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_code_exits_1_with_kommos_reason_and_keeps_the_stored_pair() {
    let env = oauth_env().await;
    let k = &env.w.kommo;
    env.once(&[]).await;
    let stored = stored_refresh(&env);
    assert_eq!(
        stored,
        k.current_refresh_token(),
        "the first run stored its pair"
    );
    // unknown
    let r = env
        .run(&["authorize", "--code", "def50200-not-a-code"])
        .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("Cannot decrypt the authorization code"),
        "{}",
        r.stderr
    );
    assert!(!printed(&r).contains("def50200-not-a-code"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(stored_refresh(&env), stored, "nothing stored");
    // expired (a code lives 20 minutes)
    let code = k.issue_auth_code();
    env.w.clock.advance(21 * 60);
    let r = env.run(&["authorize", "--code", &code]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("has expired"), "{}", r.stderr);
    assert!(!printed(&r).contains(&code));
    assert_eq!(stored_refresh(&env), stored, "nothing stored");
    // used twice: the second use is refused and the first one's pair stays
    let code = k.issue_auth_code();
    assert_eq!(env.run(&["authorize", "--code", &code]).await.code, 0);
    let first = stored_refresh(&env);
    assert_ne!(first, stored);
    assert_eq!(first, k.current_refresh_token());
    let r = env.run(&["authorize", "--code", &code]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("has been revoked"), "{}", r.stderr);
    assert!(r.stderr.contains("get a new code"), "{}", r.stderr);
    assert!(!printed(&r).contains(&code));
    assert_eq!(stored_refresh(&env), first, "nothing stored");
    assert_eq!(k.code_exchange_count(), 1);
    // the pair of the one good exchange works, as it is
    let refreshes = k.refresh_count();
    env.once(&[]).await;
    assert_eq!(k.refresh_count(), refreshes);
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_without_kommo_oauth_is_a_config_error_naming_it() {
    let env = e2e::Env::new("").await; // a long-lived token_file
    let r = env
        .run(&["authorize", "--code", "def50200-some-code"])
        .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("kommo.oauth"), "{}", r.stderr);
    assert!(!printed(&r).contains("def50200-some-code"));
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_while_the_db_is_held_leaves_the_code_unspent() {
    let env = oauth_env().await;
    let k = &env.w.kommo;
    env.once(&[]).await;
    let code = k.issue_auth_code();
    {
        // a daemon holds redb's lock
        let _held =
            chatapp_kommo_sync::store::Store::open(&env.dir.path().join("state.redb")).unwrap();
        let r = env.run(&["authorize", "--code", &code]).await;
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("stop it first"), "{}", r.stderr);
        assert_eq!(k.code_exchange_count(), 0, "the code was not sent");
    }
    let r = env.run(&["authorize", "--code", &code]).await;
    assert_eq!(r.code, 0, "the same code works once the db is free: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_install_needs_no_refresh_token_file() {
    let env = oauth_env().await;
    env.edit_config(|t| t.replace("refresh_token_file = \"kommo-refresh-token\"\n", ""));
    let r = env.run(&["once"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("authorize --code"), "{}", r.stderr);
    let code = env.w.kommo.issue_auth_code();
    let r = env.run(&["authorize", "--code", "-"]).await; // no stdin: an empty code
    assert_eq!(r.code, 2, "{r:?}");
    let r = env.run(&["authorize", "--code", &code]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("first run"), "{}", r.stdout);
    let r = env.once(&[]).await;
    assert!(r.stdout.contains("(full)"), "{}", r.stdout);
    assert_eq!(env.w.kommo.refresh_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_into_a_missing_state_directory_sends_no_code() {
    let env = oauth_env().await;
    let dir = env.dir.path().join("not-yet");
    let old = env.dir.path().join("state.redb").display().to_string();
    let new = dir.join("state.redb").display().to_string();
    env.edit_config(|t| t.replace(&old, &new));
    let code = env.w.kommo.issue_auth_code();
    let r = env.run(&["authorize", "--code", &code]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("install -d"), "{}", r.stderr);
    assert_eq!(
        env.w.kommo.code_exchange_count(),
        0,
        "the code was not sent"
    );
    assert!(!dir.exists());
    assert!(!printed(&r).contains(&code));
}

// ----- issue 18 item 7: the account's subdomain changed -----

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_account_is_reported_with_its_new_domain_and_the_pair_is_kept() {
    let env = oauth_env().await;
    let k = &env.w.kommo;
    env.once(&[]).await;
    let pair = k.current_refresh_token();
    k.move_account(Some("renamed.kommo.com"));
    env.w.clock.advance(10);
    let r = env.run(&["once"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("kommo.base_url = \"https://renamed.kommo.com\""),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("no new authorization"), "{}", r.stderr);
    assert_eq!(
        k.current_refresh_token(),
        pair,
        "the refresh token is not spent"
    );
    // the operator points base_url at the new domain (here: the simulator answers again)
    k.move_account(None);
    k.set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.once(&[]).await;
    assert!(r.stdout.contains("(incremental)"), "{}", r.stdout);
    assert_eq!(
        env.w.chatapp.responsible_of(1, "grWhatsApp", &chat(1)),
        Some(85502)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_pair_is_told_apart_from_a_move() {
    let env = oauth_env().await;
    let k = &env.w.kommo;
    env.once(&[]).await;
    k.revoke_oauth_pair();
    let r = env.run(&["once"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("no longer accepts the refresh token"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("has moved"), "{}", r.stderr);
}
