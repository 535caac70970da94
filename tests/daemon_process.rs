//! Issue 5: the real binary's `run` as a child process against the simulators (loopback only):
//! signals (USR1 cycle now, HUP reload, TERM stop), sd_notify spoken on a real socket, the runner's
//! coalescing of triggers, schedules, the state db's lock and `status` beside a running daemon,
//! and the `/metrics` endpoint. Every test is bounded in time; the child is killed on drop.

#![allow(clippy::unwrap_used)]

#[path = "common/proc.rs"]
mod proc;

use chatapp_kommo_sync::sim::{Fault, FaultRule, LoggedRequest};
use proc::{Env, Notice, bounded, eventually};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WA: &str = "grWhatsApp";
const READY: Duration = Duration::from_secs(30);
const CYCLE: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(10);

fn chat(n: u64) -> String {
    format!("7999000000{n}@c.us")
}

fn statuses(notices: &[Notice]) -> Vec<String> {
    notices
        .iter()
        .filter_map(|n| n.get("STATUS").map(str::to_string))
        .collect()
}

/// Issue 5.1 and issue 3 ("status while a daemon process holds the db").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr1_runs_a_cycle_that_applies_a_change_and_status_reads_the_held_db() {
    bounded(120, async {
        let t0 = Instant::now();
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        // the schedules never fire: nothing happens until SIGUSR1
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(env.users_requests(), 0, "no cycle before a trigger");
        d.signal("USR1");
        let s1 = d.cycle_done(1, CYCLE).await;
        assert!(
            s1.contains("#1 full ok"),
            "STATUS of the bootstrap cycle: {s1}"
        );

        // status opens the db read-only while `run` holds it
        let (text, cycles) = env.status().await;
        assert!(text.contains("bootstrapped: yes"), "{text}");
        assert_eq!(cycles.len(), 1, "{text}");
        assert_eq!(
            (
                cycles[0].id,
                cycles[0].kind.as_str(),
                cycles[0].outcome.as_str()
            ),
            (1, "full", "ok")
        );

        // a manager moves contact Ivan from Anna to Boris; SIGUSR1 applies it to the dialog
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141);
        d.signal("USR1");
        assert!(
            eventually(Duration::from_secs(15), || {
                env.w.chatapp.responsible_of(1, WA, &chat(1)) == Some(85502)
            })
            .await,
            "the dialog did not follow the contact; stderr:\n{}",
            d.stderr()
        );
        let s2 = d.cycle_done(2, CYCLE).await;
        assert!(s2.contains("#2 incremental ok"), "{s2}");
        assert_eq!(
            env.w.kommo.responsible_of("leads", 2001),
            Some(504142),
            "rule 4 cascade"
        );

        let (text, cycles) = env.status().await;
        assert_eq!(cycles.len(), 2, "{text}");
        assert_eq!(
            (
                cycles[0].id,
                cycles[0].kind.as_str(),
                cycles[0].outcome.as_str()
            ),
            (2, "incremental", "ok")
        );
        assert!(text.contains(&chat(1)), "the correction is listed: {text}");
        let took = d.term(STOP).await;
        eprintln!(
            "usr1 test: SIGTERM -> exit in {took:?}; whole test {:?}",
            t0.elapsed()
        );
    })
    .await;
}

/// Issue 5.2: a bad config on SIGHUP is rejected, the old one kept; a good one is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one() {
    bounded(120, async {
        let t0 = Instant::now();
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        d.signal("USR1");
        d.cycle_done(1, CYCLE).await;

        let good = std::fs::read_to_string(&env.config).unwrap();
        env.edit_config(|t| t.replace("conflict = \"newest\"", "conflict = \"sometimes\""));
        d.signal("HUP");
        assert!(
            eventually(Duration::from_secs(10), || d
                .stderr()
                .contains("reload rejected"))
            .await,
            "no rejection logged; stderr:\n{}",
            d.stderr()
        );
        let err = d.stderr();
        let line = err.lines().find(|l| l.contains("reload rejected")).unwrap();
        eprintln!("rejection logged as: {line}");
        assert!(
            line.contains("conflict") && line.contains("sometimes"),
            "the log names the key and value: {line}"
        );
        assert!(d.try_exit().is_none(), "the daemon keeps running");
        // RELOADING=1 then READY=1 around the attempt
        let n = d.notices();
        let reloading = n
            .iter()
            .position(|x| x.has("RELOADING=1"))
            .expect("RELOADING=1 sent");
        assert!(
            n[reloading].get("MONOTONIC_USEC").is_some(),
            "RELOADING=1 carries MONOTONIC_USEC"
        );
        assert!(
            d.wait_notice(Duration::from_secs(5), |x| x.has("READY=1")
                && x.at >= n[reloading].at)
                .await
                .is_some(),
            "READY=1 after the rejected reload"
        );

        // the old config still works
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141);
        d.signal("USR1");
        assert!(
            eventually(Duration::from_secs(15), || {
                env.w.chatapp.responsible_of(1, WA, &chat(1)) == Some(85502)
            })
            .await,
            "a cycle after the rejected reload; stderr:\n{}",
            d.stderr()
        );
        let s2 = d.cycle_done(2, CYCLE).await;
        assert!(s2.contains("ok"), "{s2}");

        // a good config is taken: every-second polling then runs cycles without a signal
        std::fs::write(
            &env.config,
            good.replace(
                &format!("poll_schedule = \"{}\"", proc::NEVER),
                "poll_schedule = \"* * * * * *\"",
            ),
        )
        .unwrap();
        d.signal("HUP");
        assert!(
            eventually(Duration::from_secs(10), || d
                .stderr()
                .contains("config reloaded"))
            .await,
            "stderr:\n{}",
            d.stderr()
        );
        d.cycle_done(4, CYCLE).await;
        let took = d.term(STOP).await;
        eprintln!(
            "sighup test: SIGTERM -> exit in {took:?}; whole test {:?}",
            t0.elapsed()
        );
    })
    .await;
}

/// Issue 5.3: SIGTERM while idle exits 0 promptly and says STOPPING=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_0() {
    bounded(60, async {
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        let took = d.term(STOP).await;
        assert!(
            d.notices().iter().any(|n| n.has("STOPPING=1")),
            "STOPPING=1 sent"
        );
        eprintln!("idle SIGTERM -> exit 0 in {took:?}");
        // SIGINT too
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        let t = Instant::now();
        d.signal("INT");
        let st = d.wait_exit(STOP).await;
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(0),
            "SIGINT: {st:?}; {}",
            d.stderr()
        );
        eprintln!("idle SIGINT -> exit 0 in {:?}", t.elapsed());
    })
    .await;
}

/// Issue 5.3: SIGTERM while a cycle is stuck in a slow read exits 0 well within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_read_exits_0_within_10_s() {
    bounded(90, async {
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        d.signal("USR1");
        d.cycle_done(1, CYCLE).await;
        env.w.kommo.push_fault(
            FaultRule::new(Fault::Latency(Duration::from_secs(20)))
                .method("GET")
                .path("/api/v4/users"),
        );
        d.signal("USR1");
        assert!(
            eventually(Duration::from_secs(10), || env.w.kommo.pending_faults()
                == 0)
            .await,
            "the slow request is in flight"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = d.term(STOP).await;
        eprintln!("SIGTERM during a slow read -> exit 0 in {took:?}");
        assert!(
            took < Duration::from_secs(5),
            "nothing to finish: should not wait the grace ({took:?})"
        );
        let (text, _) = env.status().await;
        assert!(!text.contains("pending intents"), "{text}");
    })
    .await;
}

/// Issue 5.3: SIGTERM during a slow write lets that write finish and be recorded, then exits 0
/// within 10 s; the rest of the cycle is decided again by the next daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_write_finishes_it_and_exits_0() {
    bounded(120, async {
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        d.signal("USR1");
        d.cycle_done(1, CYCLE).await;
        // contact Ivan moves to Boris: the cycle writes lead 2001 (Kommo PATCH, slow) and then
        // the dialog (ChatApp)
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141);
        env.w
            .kommo
            .push_fault(FaultRule::new(Fault::Latency(Duration::from_secs(3))).method("PATCH"));
        d.signal("USR1");
        // wait for the intent: the PATCH is then on its way
        let mut seen = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = env.cli(&["status"], Duration::from_secs(10)).await;
            if out.stdout.contains("pending intents") {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen, "no pending intent seen; stderr:\n{}", d.stderr());
        let took = d.term(STOP).await;
        eprintln!("SIGTERM during a slow write -> exit 0 in {took:?}");
        assert_eq!(
            env.w.kommo.responsible_of("leads", 2001),
            Some(504142),
            "the write in flight landed"
        );
        let (text, _) = env.status().await;
        assert!(
            !text.contains("pending intents"),
            "the write was confirmed before the exit: {text}"
        );
        assert!(
            text.contains("lead:2001") || text.contains("lead 2001"),
            "its correction is recorded: {text}"
        );

        // the next daemon finishes the job
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        d.signal("USR1");
        assert!(
            eventually(Duration::from_secs(15), || {
                env.w.chatapp.responsible_of(1, WA, &chat(1)) == Some(85502)
            })
            .await,
            "the dialog follows after the restart; stderr:\n{}",
            d.stderr()
        );
        d.term(STOP).await;
    })
    .await;
}

/// READY=1 only after the credentials are checked: a rejected Kommo token fails the start
/// (exit 1, the reason on stderr, no READY=1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_fails_the_start_without_ready() {
    bounded(60, async {
        let env = Env::new(|t| t).await;
        env.w
            .kommo
            .set_long_lived_token(Some("another-token".into()));
        let mut d = env.spawn(&[]);
        let st = d.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(st.and_then(|s| s.code()), Some(1), "{st:?}; {}", d.stderr());
        assert!(
            !d.notices().iter().any(|n| n.has("READY=1")),
            "{:?}",
            d.notices()
        );
        let err = d.stderr();
        assert!(
            err.contains("start-up check failed") && err.contains("401"),
            "{err}"
        );
        assert!(
            !err.contains("kommo-test-token"),
            "no secret in the log: {err}"
        );
    })
    .await;
}

/// Issue 5.4: sd_notify on a real socket: READY=1 (with a STATUS=), WATCHDOG=1 every
/// WATCHDOG_USEC/2 (also during a slow cycle), STATUS= with the last cycle's outcome, STOPPING=1.
/// No WATCHDOG_PID: sd_notify::watchdog_enabled then takes WATCHDOG_USEC as meant for this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_status_watchdog_stopping() {
    bounded(120, async {
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[("WATCHDOG_USEC", "1000000")]);
        d.ready(READY).await;
        let ready_at = d.notices().iter().find(|n| n.has("READY=1")).unwrap().at;
        let first = d.notices();
        assert!(
            first
                .iter()
                .take_while(|n| !n.has("READY=1"))
                .all(|n| !n.has("WATCHDOG=1")),
            "no WATCHDOG=1 before READY=1: {first:?}"
        );
        let ready = first.iter().find(|n| n.has("READY=1")).unwrap();
        assert!(
            ready.get("STATUS").is_some_and(|s| !s.is_empty()),
            "READY=1 comes with a STATUS=: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let pings = d
            .notices()
            .iter()
            .filter(|n| n.has("WATCHDOG=1") && n.at >= ready_at)
            .count();
        assert!(
            (3..=8).contains(&pings),
            "about 5 pings in 2.6 s at 1 s WATCHDOG_USEC, got {pings}"
        );

        d.signal("USR1");
        let s1 = d.cycle_done(1, CYCLE).await;
        assert!(s1.starts_with("last cycle #1 full ok"), "{s1}");

        // a slow cycle is progress: the pings go on
        env.w.kommo.push_fault(
            FaultRule::new(Fault::Latency(Duration::from_secs(3)))
                .method("GET")
                .path("/api/v4/users"),
        );
        let before = Instant::now();
        d.signal("USR1");
        let s2 = d.cycle_done(2, CYCLE).await;
        let window = before.elapsed();
        assert!(
            window >= Duration::from_millis(2900),
            "the cycle was slow: {window:?}"
        );
        assert!(s2.starts_with("last cycle #2 incremental ok"), "{s2}");
        let during = d
            .notices()
            .iter()
            .filter(|n| n.has("WATCHDOG=1") && n.at >= before && n.at <= before + window)
            .count();
        assert!(during >= 4, "pings during a 3 s cycle: {during}");
        let running: Vec<String> = statuses(&d.notices())
            .into_iter()
            .filter(|s| s.starts_with("running"))
            .collect();
        assert_eq!(running.len(), 2, "STATUS=running... per cycle: {running:?}");
        assert!(
            running[1].contains("last cycle #1"),
            "a running STATUS keeps the last outcome: {running:?}"
        );

        d.term(STOP).await;
        let all = d.notices();
        let last = all.last().unwrap();
        assert!(
            last.has("STOPPING=1"),
            "STOPPING=1 is the last word: {all:?}"
        );
        assert_eq!(
            all.iter().filter(|n| n.has("STOPPING=1")).count(),
            1,
            "STOPPING=1 once"
        );
        eprintln!(
            "notify: {:?}",
            all.iter()
                .map(|n| n.text.trim().replace('\n', "|"))
                .collect::<Vec<_>>()
        );
    })
    .await;
}

/// WATCHDOG_USEC meant for another process (WATCHDOG_PID names it) is not ours: no pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_usec_of_another_pid_is_ignored() {
    bounded(60, async {
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")]);
        d.ready(READY).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            !d.notices().iter().any(|n| n.has("WATCHDOG=1")),
            "{:?}",
            d.notices()
        );
        d.term(STOP).await;
    })
    .await;
}

/// A failed cycle is reported (STATUS=, metrics, `status`) and the daemon runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cycle_is_reported_and_the_next_one_runs() {
    bounded(90, async {
        let (env, port) = Env::listening().await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        d.signal("USR1");
        d.cycle_done(1, CYCLE).await;
        env.w.kommo.push_fault(
            FaultRule::new(Fault::Status(400))
                .method("GET")
                .path("/api/v4/users"),
        );
        d.signal("USR1");
        let s2 = d.cycle_done(2, CYCLE).await;
        assert!(
            s2.starts_with("last cycle incremental failed") && s2.contains("HTTP 400"),
            "{s2}"
        );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let body = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let m = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        let failed = m
            .iter()
            .find(|s| {
                s.name == "chatapp_kommo_sync_cycles_total"
                    && s.labels.get("outcome").map(String::as_str) == Some("failed")
            })
            .map(|s| s.value);
        assert_eq!(failed, Some(1.0), "{body}");
        assert_eq!(
            total(&m, "chatapp_kommo_sync_cycle_errors_total"),
            1.0,
            "{body}"
        );
        assert_eq!(
            total(&m, "chatapp_kommo_sync_cycle_duration_seconds_count"),
            2.0
        );
        let (text, cycles) = env.status().await;
        assert_eq!(cycles[0].outcome, "failed", "{text}");
        d.signal("USR1");
        let s3 = d.cycle_done(3, CYCLE).await;
        assert!(s3.starts_with("last cycle #3 incremental ok"), "{s3}");
        d.term(STOP).await;
    })
    .await;
}

/// Merges both simulators' logs in arrival order.
fn merged(env: &Env) -> Vec<(&'static str, LoggedRequest)> {
    let mut all: Vec<(&'static str, LoggedRequest)> = env
        .w
        .kommo
        .requests()
        .into_iter()
        .map(|r| ("kommo", r))
        .chain(env.w.chatapp.requests().into_iter().map(|r| ("chatapp", r)))
        .collect();
    all.sort_by_key(|(_, r)| r.at);
    all
}

/// Each cycle starts with `GET /api/v4/users` and reads `GET /v1/chats` once: cycles that never
/// overlap show exactly one chats listing between two users requests.
fn assert_cycles_do_not_interleave(env: &Env) -> usize {
    let all = merged(env);
    let mut spans: Vec<Vec<String>> = vec![];
    for (api, r) in &all {
        let tag = format!("{api} {} {}", r.method, r.path);
        if *api == "kommo" && r.method == "GET" && r.path == "/api/v4/users" {
            spans.push(vec![]);
        }
        if let Some(s) = spans.last_mut() {
            s.push(tag);
        }
    }
    for (i, s) in spans.iter().enumerate() {
        let chats = s.iter().filter(|t| *t == "chatapp GET /v1/chats").count();
        let employees = s.iter().filter(|t| t.ends_with("/employees")).count();
        assert_eq!(
            (chats, employees),
            (1, 1),
            "cycle {} interleaves with another: {s:?}",
            i + 1
        );
    }
    spans.len()
}

/// Issue 5.5: two triggers during a slow cycle give exactly one follow-up; cycles never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_triggers_during_a_slow_cycle_give_one_follow_up() {
    bounded(120, async {
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        d.signal("USR1");
        d.cycle_done(1, CYCLE).await;
        env.w.kommo.push_fault(
            FaultRule::new(Fault::Latency(Duration::from_secs(3)))
                .method("GET")
                .path("/api/v4/users"),
        );
        d.signal("USR1");
        assert!(
            eventually(Duration::from_secs(10), || env.w.kommo.pending_faults()
                == 0)
            .await,
            "cycle 2 reached its slow request"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.signal("USR1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.signal("USR1");
        d.cycle_done(3, CYCLE).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let done = statuses(&d.notices())
            .into_iter()
            .filter(|s| s.starts_with("last cycle"))
            .count();
        assert_eq!(done, 3, "exactly one follow-up cycle");
        assert_eq!(env.users_requests(), 3, "three cycles reached the API");
        assert_eq!(assert_cycles_do_not_interleave(&env), 3);
        let (text, cycles) = env.status().await;
        assert_eq!(cycles.len(), 3, "{text}");
        assert!(cycles.iter().all(|c| c.outcome == "ok"), "{text}");
        d.term(STOP).await;
    })
    .await;
}

/// Issue 5.6: an every-second schedule fires again and again, also after a cycle that outlived
/// the next due time (the missed time is not waited for an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_schedule_keeps_firing_after_a_slow_cycle() {
    bounded(90, async {
        let env = Env::new(|t| {
            t.replace(
                &format!("poll_schedule = \"{}\"", proc::NEVER),
                "poll_schedule = \"* * * * * *\"",
            )
        })
        .await;
        // the first cycle is slow: the next due second passes while it runs
        env.w.kommo.push_fault(
            FaultRule::new(Fault::Latency(Duration::from_millis(2500)))
                .method("GET")
                .path("/api/v4/users"),
        );
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        d.cycle_done(1, CYCLE).await;
        let t = Instant::now();
        d.cycle_done(3, Duration::from_secs(10)).await;
        eprintln!(
            "two more scheduled cycles {:?} after the slow one",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
        d.term(STOP).await;
        assert_cycles_do_not_interleave(&env);
    })
    .await;
}

/// Issue 5.7: a second `run` or `once` on the same state db exits non-zero naming the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instance_on_the_same_state_db_is_refused() {
    bounded(90, async {
        let env = Env::new(|t| t).await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        for args in [&["once"][..], &["run"][..]] {
            let out = env.cli(args, Duration::from_secs(20)).await;
            assert!(
                out.code.is_some_and(|c| c != 0),
                "{args:?} must fail: {out:?}"
            );
            assert!(
                out.stderr
                    .contains("locked by another chatapp-kommo-sync process (redb file lock)"),
                "{args:?}: {}",
                out.stderr
            );
        }
        assert!(d.try_exit().is_none(), "the first daemon runs on");
        d.signal("USR1");
        d.cycle_done(1, CYCLE).await;
        d.term(STOP).await;
    })
    .await;
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// A strict parser of the Prometheus text exposition format 0.0.4: every line is a well-formed
/// `# HELP`, `# TYPE`, comment or sample; every sample belongs to a family declared by `# TYPE`
/// before it; no series twice; histograms cumulative with `+Inf` = `_count`.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: Vec<Sample> = vec![];
    let mut series = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            if let Some(h) = rest.strip_prefix("HELP ") {
                let (name, doc) = h.split_once(' ').ok_or_else(|| at("HELP without text"))?;
                if !is_metric_name(name) || doc.trim().is_empty() {
                    return Err(at("bad HELP"));
                }
                if helps.insert(name.into(), doc.into()).is_some() {
                    return Err(at("second HELP"));
                }
            } else if let Some(t) = rest.strip_prefix("TYPE ") {
                let f: Vec<&str> = t.split(' ').collect();
                if f.len() != 2 || !is_metric_name(f[0]) {
                    return Err(at("bad TYPE"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&f[1]) {
                    return Err(at("unknown type"));
                }
                if samples
                    .iter()
                    .any(|s| s.name == f[0] || s.name.starts_with(&format!("{}_", f[0])))
                {
                    return Err(at("TYPE after its samples"));
                }
                if types.insert(f[0].into(), f[1].into()).is_some() {
                    return Err(at("second TYPE"));
                }
            }
            continue;
        }
        // name{labels} value [timestamp]
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value"))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut end = None;
            loop {
                // label name
                let start = match chars.peek() {
                    Some((_, '}')) => {
                        end = Some(chars.next().unwrap().0);
                        break;
                    }
                    Some((i, _)) => *i,
                    None => break,
                };
                let eq = r[start..].find('=').ok_or_else(|| at("label without ="))? + start;
                let lname = &r[start..eq];
                if !is_label_name(lname) {
                    return Err(at("bad label name"));
                }
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(at("label value not quoted"));
                }
                let mut val = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => val.push('\\'),
                            Some((_, '"')) => val.push('"'),
                            Some((_, 'n')) => val.push('\n'),
                            _ => return Err(at("bad escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, '\n')) | None => return Err(at("unterminated label value")),
                        Some((_, c)) => val.push(c),
                    }
                }
                if labels.insert(lname.to_string(), val).is_some() {
                    return Err(at("label twice"));
                }
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        end = Some(i);
                        break;
                    }
                    _ => return Err(at("expected , or }")),
                }
            }
            let end = end.ok_or_else(|| at("unterminated labels"))?;
            rest = &r[end + 1..];
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value"))?;
        let f: Vec<&str> = rest.split(' ').collect();
        if f.is_empty() || f.len() > 2 {
            return Err(at("expected value [timestamp]"));
        }
        let value = parse_value(f[0]).ok_or_else(|| at("bad value"))?;
        if f.len() == 2 && f[1].parse::<i64>().is_err() {
            return Err(at("bad timestamp"));
        }
        let family = types
            .keys()
            .find(|fam| {
                name == fam.as_str()
                    || (types[*fam] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name == format!("{fam}{s}")))
            })
            .ok_or_else(|| at("sample of an undeclared family"))?;
        if types[family] == "counter" && (value < 0.0 || !name.ends_with("_total")) {
            return Err(at("a counter is >= 0 and named *_total"));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("bucket without le"));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("series twice"));
        }
        samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    for (fam, t) in &types {
        if t == "histogram" {
            let buckets: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.name == format!("{fam}_bucket"))
                .collect();
            let count = samples
                .iter()
                .find(|s| s.name == format!("{fam}_count"))
                .ok_or(format!("{fam}: no _count"))?;
            samples
                .iter()
                .find(|s| s.name == format!("{fam}_sum"))
                .ok_or(format!("{fam}: no _sum"))?;
            let mut last = 0.0;
            let mut last_le = f64::NEG_INFINITY;
            for b in &buckets {
                let le = parse_value(&b.labels["le"]).ok_or(format!("{fam}: bad le"))?;
                if le <= last_le || b.value < last {
                    return Err(format!("{fam}: buckets not cumulative/ordered"));
                }
                last_le = le;
                last = b.value;
            }
            if last_le != f64::INFINITY || last != count.value {
                return Err(format!("{fam}: +Inf bucket missing or != _count"));
            }
        }
    }
    Ok(samples)
}

fn total(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[test]
fn the_strict_parser_rejects_bad_expositions() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n";
    assert_eq!(parse_prometheus(ok).unwrap().len(), 1);
    for bad in [
        "a_total 1\n",                                    // undeclared
        "# TYPE a_total counter\na_total{x=1} 1\n",       // unquoted
        "# TYPE a_total counter\na_total 1 2 3\n",        // extra field
        "# TYPE a_total counter\na_total x\n",            // value
        "# TYPE a_total counter\na_total 1\na_total 2\n", // twice
        "# TYPE a_total counter\na_total 1",              // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

/// Issue 5.8: `/metrics` parses strictly and its counters move with a cycle; `/healthz` is 200;
/// `/readyz` turns 200 after a good cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_a_cycle() {
    bounded(120, async {
        let (env, port) = Env::listening().await;
        let mut d = env.spawn(&[]);
        d.ready(READY).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let get = |path: &str| {
            let http = http.clone();
            let url = format!("{base}{path}");
            async move {
                let r = http.get(&url).send().await.expect("endpoint answers");
                let status = r.status().as_u16();
                let ctype = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                (status, ctype, r.text().await.unwrap())
            }
        };
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/readyz").await.0, 503, "not ready before a good cycle");
        let (st, ctype, body) = get("/metrics").await;
        assert_eq!(st, 200);
        assert!(
            ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"),
            "{ctype}"
        );
        let before = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert_eq!(
            total(&before, "chatapp_kommo_sync_cycles_total"),
            0.0,
            "{body}"
        );

        d.signal("USR1");
        d.cycle_done(1, CYCLE).await;
        let (_, _, body) = get("/metrics").await;
        let after = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert_eq!(
            total(&after, "chatapp_kommo_sync_cycles_total"),
            1.0,
            "{body}"
        );
        assert!(
            after
                .iter()
                .any(|s| s.name == "chatapp_kommo_sync_cycles_total"
                    && s.labels.get("kind").map(String::as_str) == Some("full")
                    && s.labels.get("outcome").map(String::as_str) == Some("ok")
                    && s.value == 1.0),
            "{body}"
        );
        assert!(
            total(&after, "chatapp_kommo_sync_api_requests_total") > 0.0,
            "{body}"
        );
        assert_eq!(
            total(&after, "chatapp_kommo_sync_cycle_duration_seconds_count"),
            1.0
        );
        assert!(total(&after, "chatapp_kommo_sync_last_success_timestamp_seconds") > 1.0e9);
        assert_eq!(get("/readyz").await.0, 200, "ready after a good cycle");

        // a second cycle with a correction; a reload keeps the counters monotonic
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141);
        d.signal("USR1");
        d.cycle_done(2, CYCLE).await;
        let (_, _, body) = get("/metrics").await;
        let second = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert_eq!(
            total(&second, "chatapp_kommo_sync_cycles_total"),
            2.0,
            "{body}"
        );
        assert_eq!(
            total(&second, "chatapp_kommo_sync_writes_total"),
            2.0,
            "lead + dialog: {body}"
        );
        d.signal("HUP");
        assert!(
            eventually(Duration::from_secs(10), || d
                .stderr()
                .contains("config reloaded"))
            .await
        );
        d.signal("USR1");
        d.cycle_done(3, CYCLE).await;
        let (_, _, body) = get("/metrics").await;
        let third = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        for s in second.iter().filter(|s| s.name.ends_with("_total")) {
            let now = third
                .iter()
                .find(|x| x.name == s.name && x.labels == s.labels)
                .map(|x| x.value)
                .unwrap_or(0.0);
            assert!(
                now >= s.value,
                "counter {} {:?} went back from {} to {now} after a reload",
                s.name,
                s.labels,
                s.value
            );
        }
        assert!(
            total(&third, "chatapp_kommo_sync_api_requests_total")
                > total(&second, "chatapp_kommo_sync_api_requests_total"),
            "{body}"
        );
        d.term(STOP).await;
    })
    .await;
}

/// Issue 12.3: `/healthz` and `/metrics` answer while the start-up check still waits on a slow
/// Kommo (every Kommo answer takes 4 s), `/readyz` is 503 until a good cycle, and READY=1 comes
/// only after the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_during_a_slow_start_up_check() {
    bounded(90, async {
        let (env, port) = Env::listening().await;
        env.w
            .kommo
            .push_fault(FaultRule::new(Fault::Latency(Duration::from_secs(4))).times(20));
        let mut d = env.spawn(&[]);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
        let t0 = Instant::now();
        let mut healthz = None;
        while healthz.is_none() && t0.elapsed() < Duration::from_secs(3) {
            healthz = http
                .get(url("/healthz"))
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(healthz, Some(200), "/healthz answers at once");
        assert!(
            !d.notices().iter().any(|n| n.has("READY=1")),
            "still in the start-up check after {:?}",
            t0.elapsed()
        );
        let r = http.get(url("/readyz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503, "not ready during the check");
        let r = http.get(url("/metrics")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("chatapp_kommo_sync_build_info")
        );
        d.ready(Duration::from_secs(60)).await;
        assert!(
            t0.elapsed() >= Duration::from_secs(4),
            "the check waited on the slow simulator"
        );
    })
    .await;
}
