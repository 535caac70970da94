//! Issue 2's end-to-end scenarios: the real binary's `once` against the simulators.
//! Each test prints the requests it made to each API (`cargo test -- --nocapture` shows them).

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use e2e::{Env, chat};

const WA: &str = "grWhatsApp";

#[tokio::test(flavor = "multi_thread")]
async fn first_run_with_adopt_writes_nothing() {
    let env = Env::new("").await;
    let r = env.once(&[]).await;
    assert_eq!(
        env.writes(),
        (0, 0),
        "bootstrap = adopt must write nothing: {r:?}"
    );
    assert!(r.stdout.contains("0 planned, 0 written"), "{}", r.stdout);
    assert!(
        r.stdout.contains("1 disagreements"),
        "the Maria pair disagrees: {}",
        r.stdout
    );
    let (k, c) = env.requests();
    eprintln!("first run (full, adopt): kommo {k} requests, chatapp {c} requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn contact_change_moves_the_dialog_and_cascades_to_leads() {
    let env = Env::new("").await;
    env.once(&[]).await;
    let before = env.requests();
    env.w.clock.advance(10);
    // a manager moves contact Ivan from Anna to Boris
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85502),
        "{}",
        r.stdout
    );
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2001),
        Some(504142),
        "rule 4 cascade: {}",
        r.stdout
    );
    let after = env.requests();
    eprintln!(
        "contact changed (incremental): kommo {} requests, chatapp {} requests",
        after.0 - before.0,
        after.1 - before.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dialog_change_moves_the_linked_leads() {
    let env = Env::new("").await;
    env.once(&[]).await;
    let before = env.requests();
    env.w.clock.advance(10);
    // an operator gives Maria's dialog to Vera
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2002),
        Some(504143),
        "{}",
        r.stdout
    );
    assert_eq!(
        env.w.kommo.responsible_of("leads", 2003),
        Some(504142),
        "lead 2003's sync flag is unchecked: untouched"
    );
    assert_eq!(
        env.w.kommo.responsible_of("contacts", 1002),
        Some(504142),
        "contacts are not in chat_to_crm"
    );
    assert_eq!(
        env.w.chatapp.written_chats().len(),
        0,
        "nothing written back to ChatApp"
    );
    let after = env.requests();
    eprintln!(
        "dialog changed (incremental): kommo {} requests, chatapp {} requests",
        after.0 - before.0,
        after.1 - before.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cycle_after_a_converged_one_writes_nothing() {
    let env = Env::new("").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    env.once(&[]).await;
    let writes = env.writes();
    assert!(
        writes.0 >= 1 && writes.1 >= 1,
        "both directions wrote: {writes:?}"
    );
    for args in [&[][..], &["--full"][..], &[][..]] {
        env.w.clock.advance(10);
        let before = env.requests();
        let r = env.once(args).await;
        assert_eq!(
            env.writes(),
            writes,
            "no write after convergence ({args:?}): {}",
            r.stdout
        );
        let after = env.requests();
        eprintln!(
            "idle cycle {args:?}: kommo {} requests, chatapp {} requests",
            after.0 - before.0,
            after.1 - before.1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_names_the_targets_and_writes_nothing() {
    let env = Env::new("").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    let r = env.once(&["--dry-run"]).await;
    assert!(
        r.stdout.contains(&format!(
            "would write: dialog {} ({WA}, license 1)",
            chat(1)
        )),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("would write: lead 2001"), "{}", r.stdout);
    assert!(
        r.stdout.contains("rule 1"),
        "the reason is printed: {}",
        r.stdout
    );
    assert_eq!(env.writes(), (0, 0), "dry run wrote to an API");
    // nothing was recorded either: the next real cycle still sees and applies the change
    let r = env.once(&[]).await;
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85502),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_exit_2_and_name_the_key() {
    let env = Env::new("").await;
    let ok = env.run(&["check-config"]).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    env.edit_config(|t| t.replace("batch_size = 50", "batch_size = 900"));
    let r = env.run(&["check-config"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("kommo.batch_size"), "{}", r.stderr);
    let r = env.run(&["once"]).await;
    assert_eq!(r.code, 2, "once also refuses a bad config: {r:?}");
    env.edit_config(|t| t.replace("batch_size = 900", "batch_size = 50\nbatch_sise = 5"));
    let r = env.run(&["check-config"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("kommo.batch_sise") && r.stderr.contains("unknown field"),
        "{}",
        r.stderr
    );
    // a missing secret file names the key, not the secret
    env.edit_config(|t| {
        t.replace("batch_sise = 5\n", "")
            .replace("\"chatapp-password\"", "\"nope\"")
    });
    let r = env.run(&["check-config"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("chatapp.password_file"), "{}", r.stderr);
    // --no-secrets (systemd's ExecReload=) validates the config without reading secret files
    let r = env.run(&["check-config", "--no-secrets"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    env.edit_config(|t| t.replace("conflict = \"newest\"", "conflict = \"sometimes\""));
    let r = env.run(&["check-config", "--no-secrets"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("sync.conflict"), "{}", r.stderr);
    assert_eq!(
        env.requests(),
        (0, 0),
        "config errors are found before any request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_explains_a_dialog_from_the_audit_log() {
    let env = Env::new("").await;
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    env.once(&[]).await;
    let r = env.run(&["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("last cycles:") && r.stdout.contains("recent corrections:"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("rule 1"), "{}", r.stdout);
    let r = env.run(&["status", "--dialog", &chat(1)]).await;
    assert!(
        r.stdout.contains("why: the daemon wrote it"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("source contact 1001"), "{}", r.stdout);
    let r = env.run(&["status", "--card", "lead:2001"]).await;
    assert!(r.stdout.contains("rule 4"), "{}", r.stdout);
    let r = env.run(&["status", "--card", "contact:1003"]).await;
    assert!(r.stdout.contains("never wrote it"), "{}", r.stdout);
}

/// Issue 12.2, through the binary: `log_level = "verbose"` is a config error naming
/// `daemon.log_level` (exit 2), and a config with three problems reports all three in one run.
#[tokio::test]
async fn check_config_names_every_problem_at_once() {
    let env = Env::new("").await;
    env.edit_config(|t| t.replace("log_level = \"warn\"", "log_level = \"verbose\""));
    let r = env.run(&["check-config"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("daemon.log_level"), "{}", r.stderr);
    env.edit_config(|t| {
        t.replace("license_ids = [1]", "license_ids = []")
            .replace("base_url = \"http://", "base_url = \"")
    });
    let r = env.run(&["check-config"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    for key in ["daemon.log_level", "chatapp.license_ids", "kommo.base_url"] {
        assert!(r.stderr.contains(key), "{key} in {}", r.stderr);
    }
}
