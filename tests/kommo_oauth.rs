//! Issue 4: Kommo OAuth with single-use refresh tokens, across processes.

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
