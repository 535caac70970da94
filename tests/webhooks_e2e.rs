//! Issue 6: webhooks as triggers, through the daemon (`run` as a child process): a wrong token is
//! a 404 and no cycle; a valid call gives one cycle within the debounce. Also measures the
//! change-to-correction latency with webhooks on and off (`-- --nocapture` prints the figures).

#![allow(clippy::unwrap_used)]

#[path = "common/proc.rs"]
mod proc;

use proc::{Env, free_port};
use std::time::{Duration, Instant};

const TOKEN: &str = "hook-token-0123456789abcdef";
const WA: &str = "grWhatsApp";

async fn daemon_env(port: u16, poll: Option<&str>) -> Env {
    let env = Env::new(|t| {
        let mut t = t.replace(
            "[kommo]",
            &format!(
                "listen = \"127.0.0.1:{port}\"\nwebhook_token_file = \"webhook-token\"\nwebhook_debounce = \"300ms\"\n# the latency is measured without the budget's pacing (tests/http_hardening.rs covers it)\nwebhook_min_interval = \"0s\"\nwebhook_budget_percent = 100\n\n[kommo]"
            ),
        );
        if let Some(p) = poll {
            let i = t.find("poll_schedule = ").unwrap();
            let j = i + t[i..].find('\n').unwrap();
            t.replace_range(i..j, &format!("poll_schedule = \"{p}\""));
        }
        t
    })
    .await;
    std::fs::write(env.dir.path().join("webhook-token"), format!("{TOKEN}\n")).unwrap();
    env
}

/// A daemon with webhooks on `port` (polling as `poll` says), after its first cycle (asked for
/// by SIGUSR1).
async fn started(port: u16, poll: Option<&str>) -> (Env, proc::Daemon) {
    let env = daemon_env(port, poll).await;
    let mut d = env.spawn(&[]);
    d.ready(Duration::from_secs(15)).await;
    d.signal("USR1");
    d.cycle_done(1, Duration::from_secs(20)).await;
    (env, d)
}

fn finished_cycles(d: &proc::Daemon) -> usize {
    d.notices()
        .iter()
        .filter_map(|n| n.get("STATUS").map(str::to_string))
        .filter(|s| s.starts_with("last cycle"))
        .count()
}

const KOMMO_BODY: &str = "contacts%5Bupdate%5D%5B0%5D%5Bid%5D=1001&contacts%5Bupdate%5D%5B0%5D%5Btype%5D=contact&contacts%5Bupdate%5D%5B0%5D%5Bresponsible_user_id%5D=504142&contacts%5Bupdate%5D%5B0%5D%5Bold_responsible_user_id%5D=504141";

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_404_and_a_valid_call_gives_one_cycle() {
    proc::bounded(60, async {
        let port = free_port();
        let (env, mut d) = started(port, None).await;
        let c = reqwest::Client::new();
        let url = |kind: &str, tok: &str| format!("http://127.0.0.1:{port}/hooks/{kind}/{tok}");
        let r = c.post(url("kommo", "not-the-token")).body(KOMMO_BODY).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let r = c.post(url("chatapp", "not-the-token")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(finished_cycles(&d), 1, "no cycle from a wrong token");

        // a person changes Ivan's contact; Kommo calls the webhook
        env.w.clock.advance(10);
        env.w.kommo.set_responsible_as_human("contacts", 1001, 504142, 504141);
        let t0 = Instant::now();
        for _ in 0..3 {
            let r = c.post(url("kommo", TOKEN)).body(KOMMO_BODY).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        d.cycle_done(2, Duration::from_secs(10)).await;
        let took = t0.elapsed();
        assert_eq!(env.w.chatapp.responsible_of(1, WA, "79990000001@c.us"), Some(85502));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(finished_cycles(&d), 2, "three calls within the debounce give one cycle");
        assert!(took >= Duration::from_millis(300), "the debounce is honoured: {took:?}");
        // ChatApp: an empty POST (URL check) is 200 and triggers nothing; a chatResponsible event does
        let r = c.post(url("chatapp", TOKEN)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        env.w.clock.advance(10);
        env.w.chatapp.assign_as_human(1, WA, "79990000002@c.us", Some(85503));
        let r = c
            .post(url("chatapp", TOKEN))
            .header("content-type", "application/json")
            .body(r#"{"data":[{"chat":{"id":"79990000002@c.us"}}],"meta":{"type":"chatResponsible","licenseId":1,"messengerType":"grWhatsApp"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        d.cycle_done(3, Duration::from_secs(10)).await;
        assert_eq!(env.w.kommo.responsible_of("leads", 2002), Some(504143));
        d.term(Duration::from_secs(10)).await;
    })
    .await;
}

/// A hint cycle that fails (here ChatApp refuses the chat's read) puts its records back: the
/// next webhook cycle, woken by an unrelated message callback, decides them. (A polled cycle might
/// never see this change: a reassignment need not move the chat's `lastTime`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_hint_cycles_records_are_decided_by_the_next_webhook_cycle() {
    use chatapp_kommo_sync::sim::{Fault, FaultRule};
    proc::bounded(60, async {
        let port = free_port();
        let (env, mut d) = started(port, None).await;
        let c = reqwest::Client::new();
        let post = |chat: &'static str, kind: &'static str| {
            c.post(format!("http://127.0.0.1:{port}/hooks/chatapp/{TOKEN}"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"data":[{{"chat":{{"id":"{chat}"}}}}],"meta":{{"type":"{kind}","licenseId":1,"messengerType":"grWhatsApp"}}}}"#))
                .send()
        };
        // an operator gives Maria's dialog to Vera; reading it fails once
        env.w.chatapp.push_fault(
            FaultRule::new(Fault::HtmlForbidden)
                .path("/v1/licenses/1/messengers/grWhatsApp/chats/79990000002")
                .times(1),
        );
        env.w.clock.advance(10);
        env.w.chatapp.assign_as_human(1, WA, "79990000002@c.us", Some(85503));
        assert_eq!(post("79990000002@c.us", "chatResponsible").await.unwrap().status(), 200);
        let status = d.cycle_done(2, Duration::from_secs(10)).await;
        assert!(status.contains("failed"), "{status}");
        assert_eq!(env.w.kommo.responsible_of("leads", 2002), Some(504141));
        // a message on Pavel's dialog wakes the next webhook cycle: Maria's comes with it
        assert_eq!(post("79990000004@c.us", "message").await.unwrap().status(), 200);
        d.cycle_done(3, Duration::from_secs(10)).await;
        assert_eq!(env.w.kommo.responsible_of("leads", 2002), Some(504143));
        d.term(Duration::from_secs(10)).await;
    })
    .await;
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Time from a person's change in Kommo to the corrected dialog in ChatApp, `n` times.
async fn latencies(env: &Env, n: usize, hook: Option<u16>) -> Vec<Duration> {
    let c = reqwest::Client::new();
    let mut out = vec![];
    for i in 0..n {
        let (to_user, to_emp) = if i % 2 == 0 {
            (504142, 85502)
        } else {
            (504141, 85501)
        };
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, to_user, 504141);
        let t0 = Instant::now();
        if let Some(port) = hook {
            c.post(format!("http://127.0.0.1:{port}/hooks/kommo/{TOKEN}"))
                .body(KOMMO_BODY)
                .send()
                .await
                .unwrap();
        }
        assert!(
            proc::eventually(Duration::from_secs(15), || env.w.chatapp.responsible_of(
                1,
                WA,
                "79990000001@c.us"
            ) == Some(to_emp))
            .await,
            "change {i} was not corrected"
        );
        out.push(t0.elapsed());
        // let the daemon go idle again before the next change
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn change_to_correction_latency_with_and_without_webhooks() {
    proc::bounded(110, async {
        // webhooks on (polling every 10 minutes as the safety net)
        let port = free_port();
        let (env, mut d) = started(port, Some("0 */10 * * * *")).await;
        let mut on = latencies(&env, 8, Some(port)).await;
        d.term(Duration::from_secs(10)).await;

        // webhooks off: polling every 5 s
        let port = free_port();
        let env = daemon_env(port, Some("*/5 * * * * *")).await;
        let mut d = env.spawn(&[]);
        d.ready(Duration::from_secs(15)).await;
        d.cycle_done(1, Duration::from_secs(20)).await;
        let mut off = latencies(&env, 5, None).await;
        d.term(Duration::from_secs(10)).await;

        let (on50, on_max) = (percentile(&mut on, 0.5), percentile(&mut on, 1.0));
        let (off50, off_max) = (percentile(&mut off, 0.5), percentile(&mut off, 1.0));
        eprintln!(
            "change-to-correction latency: webhooks on (debounce 300 ms): p50 {:.2} s, max {:.2} s over {} changes; \
             webhooks off (poll every 5 s): p50 {:.2} s, max {:.2} s over {} changes",
            on50.as_secs_f64(),
            on_max.as_secs_f64(),
            on.len(),
            off50.as_secs_f64(),
            off_max.as_secs_f64(),
            off.len()
        );
        assert!(on50 < Duration::from_secs(2), "webhooks on: p50 {on50:?}");
        assert!(off_max < Duration::from_secs(5 + 4), "webhooks off: bounded by the poll interval: {off_max:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_online_registers_the_webhooks_without_printing_the_token() {
    proc::bounded(60, async {
        let port = free_port();
        let env = daemon_env(port, None).await;
        env.edit_config(|t| {
            t.replace(
                "[kommo]",
                "public_url = \"https://sync.example.com\"\n\n[kommo]",
            )
        });
        let out = env
            .cli(&["check-config", "--online"], Duration::from_secs(30))
            .await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stdout
                .contains("kommo: webhook https://sync.example.com/hooks/kommo/<token>"),
            "{}",
            out.stdout
        );
        assert!(
            !out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN),
            "the token is never printed"
        );
        let hooks = env.w.kommo.webhooks();
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        assert_eq!(
            hooks[0].0,
            format!("https://sync.example.com/hooks/kommo/{TOKEN}")
        );
        assert!(
            hooks[0].1.contains(&"responsible_contact".to_string())
                && hooks[0].1.contains(&"responsible_lead".to_string())
        );
        let callbacks = env.w.chatapp.callback_urls();
        assert_eq!(callbacks.len(), 1, "{callbacks:?}");
        assert_eq!(
            callbacks[0].3,
            format!("https://sync.example.com/hooks/chatapp/{TOKEN}")
        );
        assert_eq!(
            callbacks[0].2,
            vec!["chatResponsible".to_string(), "message".to_string()]
        );
        // idempotent
        let out = env
            .cli(&["check-config", "--online"], Duration::from_secs(30))
            .await;
        assert!(out.stdout.contains("already registered"), "{}", out.stdout);
        assert_eq!(env.w.kommo.webhooks().len(), 1);
    })
    .await;
}
