//! Issue 12, item 1: what people read is readable. `demo`, `once --dry-run` and `status` (run as
//! the real binary) name the people beside their ids, print times as local ISO-8601, and show no
//! Rust Debug text (`Some(`, `None`) and no unix seconds; `demo | head -1` ends quietly.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use e2e::{Env, chat};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_chatapp-kommo-sync");
const WA: &str = "grWhatsApp";

/// Runs of exactly ten digits: what a unix time in seconds looks like in text.
fn ten_digit_runs(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut run = String::new();
    for ch in text.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() {
            run.push(ch);
        } else {
            if run.len() == 10 {
                out.push(run.clone());
            }
            run.clear();
        }
    }
    out
}

/// No Debug text, no unix seconds.
fn assert_readable(what: &str, text: &str) {
    for bad in ["Some(", "None", "EmployeeId(", "KommoUserId(", "Newest"] {
        assert!(!text.contains(bad), "{what} shows `{bad}`:\n{text}");
    }
    let runs = ten_digit_runs(text);
    assert!(runs.is_empty(), "{what} shows unix times {runs:?}:\n{text}");
}

#[test]
fn ten_digit_runs_finds_unix_times_only() {
    assert_eq!(
        ten_digit_runs("at 1796004800, chat 79990000001@c.us, 2026-11-30T10:15:00+03:00"),
        vec!["1796004800"]
    );
    assert!(ten_digit_runs("lead 2001, 655 ms, port 40373").is_empty());
}

#[test]
fn demo_names_the_people_and_shows_no_internals() {
    let out = Command::new(BIN)
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_readable("demo", &stdout);
    for who in [
        "Anna (Kommo user 504141)",
        "Boris (Kommo user 504142)",
        "Boris (ChatApp employee 85502)",
        "Vera (ChatApp employee 85503)",
        "Gleb (Kommo user 504144) has no ChatApp employee",
    ] {
        assert!(stdout.contains(who), "demo does not name {who}:\n{stdout}");
    }
    // one spelling per record kind
    assert!(stdout.contains("lead 2001: Anna (Kommo user 504141) -> Boris (Kommo user 504142)"));
    assert!(stdout.contains(&format!("dialog {} ({WA}, license 1)", chat(1))));
    for old in [
        "card lead:",
        "contact:1001",
        "leads 2001",
        "dialog 1:grWhatsApp:",
    ] {
        assert!(!stdout.contains(old), "demo spells `{old}`:\n{stdout}");
    }
    // change times as local ISO-8601 (the demo's timezone is UTC) with their age
    assert!(
        stdout.contains("+00:00, ") && stdout.contains(" s ago"),
        "{stdout}"
    );
}

#[test]
fn demo_into_a_pipe_closed_after_one_line_ends_quietly() {
    let mut child = Command::new(BIN)
        .arg("demo")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("one line");
    // the reader is dropped: the pipe is closed, as `demo | head -1` closes it
    assert_eq!(first.trim(), "chatapp-kommo-sync demo");
    let out = child.wait_with_output().expect("demo ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "demo | head -1 must end as a Unix tool does (0 or SIGPIPE), not {:?}: {stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_and_status_name_the_people_in_local_time() {
    let env = Env::new("").await;
    env.edit_config(|t| t.replace("timezone = \"UTC\"", "timezone = \"Europe/Moscow\""));
    env.once(&[]).await; // first run: adopt
    let w = &env.w;
    w.clock.advance(20);
    // a manager moves Ivan to Boris; an operator gives Maria's dialog to Vera
    w.kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    w.clock.advance(5);
    w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    w.clock.advance(5);

    let dry = env.once(&["--dry-run"]).await;
    assert_readable("once --dry-run", &dry.stdout);
    assert!(
        dry.stdout.contains(&format!(
            "would write: dialog {} ({WA}, license 1): Anna (ChatApp employee 85501) -> Boris (ChatApp employee 85502)",
            chat(1)
        )),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains(
            "would write: lead 2002: Anna (Kommo user 504141) -> Vera (Kommo user 504143)"
        ),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("+03:00, "),
        "Moscow time: {}",
        dry.stdout
    );

    let r = env.once(&[]).await;
    assert_readable("once", &r.stdout);
    assert!(r.stdout.contains("wrote: lead 2001"), "{}", r.stdout);

    let s = env.run(&["status"]).await;
    assert_eq!(s.code, 0, "{s:?}");
    eprintln!("{}", s.stdout); // `--nocapture` shows it
    assert_readable("status", &s.stdout);
    for who in [
        "Anna (ChatApp employee 85501) -> Boris (ChatApp employee 85502)",
        "Anna (Kommo user 504141) -> Boris (Kommo user 504142)",
        "Anna (Kommo user 504141) -> Vera (Kommo user 504143)",
    ] {
        assert!(
            s.stdout.contains(who),
            "status does not show {who}:\n{}",
            s.stdout
        );
    }
    // an age: "N s ago", or "just now" when status runs within the cycle's second (the burst
    // limiter of issue 21 made the cycles fast enough for that)
    assert!(
        s.stdout.contains("+03:00, ")
            && (s.stdout.contains(" ago") || s.stdout.contains("+03:00, just now")),
        "local times with their age: {}",
        s.stdout
    );

    let d = env.run(&["status", "--dialog", &chat(1)]).await;
    assert_readable("status --dialog", &d.stdout);
    assert!(
        d.stdout.contains(&format!(
            "dialog {} ({WA}, license 1): responsible Boris (ChatApp employee 85502) (since 20",
            chat(1)
        )),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("source contact 1001"), "{}", d.stdout);

    let c = env.run(&["status", "--card", "lead 2002"]).await;
    assert_readable("status --card", &c.stdout);
    assert!(
        c.stdout
            .contains("lead 2002: responsible Vera (Kommo user 504143) (since 20"),
        "{}",
        c.stdout
    );
}
