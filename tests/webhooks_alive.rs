//! Issue 18 item 8: webhook registrations kept alive, through the binary against the simulators.
//! A Kommo hook that Kommo disabled (listed with `disabled: true`) is registered again and
//! reported, by `check-config --online` and by the daemon's full cycle (not by an incremental
//! one); a plan without the webhooks API is a reported problem, not an abort; a ChatApp line
//! whose callback calls another integration is left as it is and named by its host; an inactive
//! license is skipped with a warning.

#![allow(clippy::unwrap_used)]

#[path = "common/proc.rs"]
mod proc;

use proc::{Env, Output, bounded, free_port};
use std::time::Duration;

const TOKEN: &str = "hook-token-0123456789abcdef";
const PUBLIC: &str = "https://sync.example.com";
const WA: &str = "grWhatsApp";

/// The sample world with webhooks on (`listen`, the token, `public_url`), then `edit`.
async fn hooked(edit: impl FnOnce(String) -> String) -> (Env, u16) {
    let port = free_port();
    let env = Env::new(|t| {
        edit(t.replace(
            "[kommo]",
            &format!(
                "listen = \"127.0.0.1:{port}\"\nwebhook_token_file = \"webhook-token\"\npublic_url = \"{PUBLIC}\"\n\n[kommo]"
            ),
        ))
    })
    .await;
    let token = env.dir.path().join("webhook-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (env, port)
}

fn kommo_dest() -> String {
    format!("{PUBLIC}/hooks/kommo/{TOKEN}")
}

fn chatapp_dest() -> String {
    format!("{PUBLIC}/hooks/chatapp/{TOKEN}")
}

async fn check_online(env: &Env) -> Output {
    let out = env
        .cli(&["check-config", "--online"], Duration::from_secs(30))
        .await;
    assert!(
        !out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN),
        "the token is never printed: {out:?}"
    );
    out
}

fn webhook_requests(env: &Env) -> usize {
    env.w
        .kommo
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v4/webhooks")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_online_registers_a_disabled_kommo_hook_again_and_says_so() {
    bounded(90, async {
        let (env, _) = hooked(|t| t).await;
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(env.w.kommo.webhooks().len(), 1);

        // Kommo switched the hook off (more than 100 failed deliveries in 2 hours)
        env.w.kommo.disable_webhook(&kommo_dest());
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stderr.contains("warning: kommo: webhook https://sync.example.com/hooks/kommo/<token> was disabled by Kommo")
                && out.stderr.contains("registered again"),
            "reported: {}",
            out.stderr
        );
        assert!(
            !out.stdout.contains("already registered"),
            "a disabled hook is not \"already registered\": {}",
            out.stdout
        );
        assert!(!env.w.kommo.webhook_disabled(&kommo_dest()), "switched on again");
        assert_eq!(env.w.kommo.webhooks().len(), 1, "one hook, not two");

        // enabled again: nothing to do
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stdout.contains("kommo: webhook https://sync.example.com/hooks/kommo/<token> for responsible_"),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("already registered"), "{}", out.stdout);

        // a hook Kommo keeps disabled after the POST: an admin has to switch it on (a problem)
        env.w.kommo.keep_webhooks_disabled_on_post(true);
        env.w.kommo.disable_webhook(&kommo_dest());
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(
            out.stderr.contains("daemon.public_url")
                && out.stderr.contains("stays disabled")
                && out.stderr.contains("admin"),
            "{}",
            out.stderr
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_without_webhooks_is_a_reported_problem_not_an_abort() {
    bounded(60, async {
        let (env, _) = hooked(|t| t).await;
        env.w.kommo.refuse_webhooks(Some(403));
        let out = check_online(&env).await;
        assert_eq!(
            out.code,
            Some(2),
            "a problem (2), not a check that could not run (1): {out:?}"
        );
        assert!(
            out.stderr.contains("config error")
                && out.stderr.contains("daemon.public_url")
                && out.stderr.contains("Extended or Professional plan")
                && out.stderr.contains("polling"),
            "{}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("could not run"),
            "not an abort: {}",
            out.stderr
        );
        // ChatApp's callbacks were still set
        let callbacks = env.w.chatapp.callback_urls();
        assert_eq!(callbacks.len(), 1, "{callbacks:?}");
        assert_eq!(callbacks[0].3, chatapp_dest());
        assert!(
            out.stdout.contains("chatapp: callback https://sync.example.com/hooks/chatapp/<token> set for license 1 grWhatsApp"),
            "{}",
            out.stdout
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chatapp_line_with_another_integrations_callback_is_left_and_named() {
    bounded(60, async {
        let (env, _) = hooked(|t| t).await;
        let foreign = "https://hooks.other-crm.example/chatapp/in?secret=abc123";
        env.w
            .chatapp
            .preset_callback_url(1, WA, foreign, &["message"]);
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "a warning, not a problem: {out:?}");
        assert!(
            out.stderr
                .contains("warning: chatapp: callback of license 1 grWhatsApp left as it is")
                && out.stderr.contains("hooks.other-crm.example"),
            "named by its host: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("secret=abc123") && !out.stdout.contains("secret=abc123"),
            "never its path or query"
        );
        let callbacks = env.w.chatapp.callback_urls();
        assert_eq!(callbacks.len(), 1, "{callbacks:?}");
        assert_eq!(callbacks[0].3, foreign, "not replaced");
        assert_eq!(callbacks[0].2, vec!["message".to_string()]);
        assert!(
            !env.w
                .chatapp
                .requests()
                .iter()
                .any(|r| r.method == "PUT" && r.path.ends_with("/callbackUrl")),
            "no PUT at all"
        );

        // a callback of ours under an older token is ours: set again
        env.w.chatapp.preset_callback_url(
            1,
            WA,
            &format!("{PUBLIC}/hooks/chatapp/an-old-token"),
            &["message"],
        );
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stdout.contains("set again for license 1 grWhatsApp"),
            "{}",
            out.stdout
        );
        assert_eq!(env.w.chatapp.callback_urls()[0].3, chatapp_dest());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inactive_license_is_skipped_with_a_warning() {
    bounded(60, async {
        let (env, _) = hooked(|t| t.replace("license_ids = [1]", "license_ids = [1, 2]")).await;
        env.w.chatapp.add_license(2);
        env.w.chatapp.set_license_status(2, "blocked", Some(false));
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stderr.contains(
                "warning: chatapp: license 2 skipped: it is not active (`active` is false)"
            ),
            "{}",
            out.stderr
        );
        let callbacks = env.w.chatapp.callback_urls();
        assert_eq!(callbacks.len(), 1, "only the active license: {callbacks:?}");
        assert_eq!(callbacks[0].0, 1);

        // without `active`, a status code other than `paid` is not active either
        env.w.chatapp.set_license_status(2, "expired", None);
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stderr.contains("license 2 skipped") && out.stderr.contains("\"expired\""),
            "{}",
            out.stderr
        );
        assert_eq!(env.w.chatapp.callback_urls().len(), 1);
    })
    .await;
}

/// A full schedule that fires once, `secs` from now (UTC).
fn once_in(secs: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::seconds(secs);
    format!(
        "{} {} {} * * *",
        t.format("%S"),
        t.format("%M"),
        t.format("%H")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_registers_a_disabled_hook_again_after_its_first_cycle_and_on_its_full_cycle() {
    bounded(90, async {
        let full = once_in(15);
        let (env, port) = hooked(|t| {
            t.replace(
                &format!("full_schedule = \"{}\"", proc::NEVER),
                &format!("full_schedule = \"{full}\""),
            )
        })
        .await;
        let out = check_online(&env).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        // the daemon was down: Kommo's deliveries failed and it switched the hook off
        env.w.kommo.disable_webhook(&kommo_dest());
        let mut d = env.spawn(&[]);
        d.ready(Duration::from_secs(15)).await;
        d.signal("USR1");
        d.cycle_done(1, Duration::from_secs(20)).await;
        assert!(
            !env.w.kommo.webhook_disabled(&kommo_dest()),
            "registered again after the first cycle since the start; stderr:\n{}",
            d.stderr()
        );

        // disabled again while the daemon runs: an incremental cycle does not look
        env.w.kommo.disable_webhook(&kommo_dest());
        let before = webhook_requests(&env);
        d.signal("USR1");
        let status = d.cycle_done(2, Duration::from_secs(20)).await;
        assert!(status.contains("incremental"), "{status}");
        assert_eq!(
            webhook_requests(&env),
            before,
            "an incremental cycle does not look at the webhooks"
        );
        assert!(env.w.kommo.webhook_disabled(&kommo_dest()));

        // the full schedule's cycle does
        let status = d.cycle_done(3, Duration::from_secs(30)).await;
        assert!(status.contains("full"), "{status}");
        assert!(
            !env.w.kommo.webhook_disabled(&kommo_dest()),
            "registered again after the full cycle; stderr:\n{}",
            d.stderr()
        );
        assert_eq!(env.w.kommo.webhooks().len(), 1, "one hook, not two");
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("chatapp_kommo_sync_webhooks_reregistered_total{api=\"kommo\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("chatapp_kommo_sync_webhooks_reregistered_total{api=\"chatapp\"} 0"),
            "our callback was in place: {metrics}"
        );
        d.term(Duration::from_secs(10)).await;
        let err = d.stderr();
        assert!(
            err.matches("was disabled by Kommo").count() >= 2 && err.contains("registered again"),
            "{err}"
        );
        assert!(!err.contains(TOKEN), "the token is never logged");
    })
    .await;
}
