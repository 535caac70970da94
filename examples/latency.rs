//! Latency on a busy account (issue 21): `run` as a child process against the simulators' sample
//! world (the demo's), webhooks on with their default settings, polling off, while
//!
//! - ChatApp calls back for a message every 500 ms (2 a second) on a dialog nobody changes
//!   (Pavel's), as it does on a busy line;
//! - every 2.5 s (or, when a correction takes longer, as soon as it is made) a person changes
//!   something and the API announces it, alternating the directions:
//!   a manager reassigns Ivan's contact in Kommo (Kommo's webhook names the contact), or an
//!   operator reassigns Maria's dialog in ChatApp (its `chatResponsible` callback names the chat).
//!
//! Each change is timed from the moment the API holds it to the moment the other side holds the
//! correction (polled every 20 ms; a change not corrected within `--give-up` counts at that time
//! and is reported as missed). Printed: p50 / p99 / max per direction, Kommo requests per second
//! during the flow and the worst sliding second (from the Kommo simulator's request log), then
//! the same for a quiet flow of callbacks only (no change: the Kommo requests it costs).
//!
//! ```text
//! cargo build --release --bins --examples
//! target/release/examples/latency [--seconds 60] [--give-up 40] [--bin PATH] [--keep-log PATH]
//! ```
//!
//! Loopback only; the daemon is killed when the example ends.

use chatapp_kommo_sync::commands::demo::{DemoWorld, sample_world, write_config};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "latency-hook-token-0123456789";
const WA: &str = "grWhatsApp";
const NEVER: &str = "0 0 0 1 1 *";

/// The child, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Args {
    seconds: u64,
    give_up: u64,
    bin: PathBuf,
    keep_log: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60,
        give_up: 40,
        bin: PathBuf::new(),
        keep_log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--seconds" => a.seconds = v().parse().expect("--seconds N"),
            "--give-up" => a.give_up = v().parse().expect("--give-up N"),
            "--bin" => a.bin = PathBuf::from(v()),
            "--keep-log" => a.keep_log = Some(PathBuf::from(v())),
            other => panic!("unknown argument {other}"),
        }
    }
    if a.bin.as_os_str().is_empty() {
        // the binary built alongside this example (same profile)
        let exe = std::env::current_exe().expect("own path");
        a.bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/examples")
            .join("chatapp-kommo-sync");
    }
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The demo's config with polling off and the webhook endpoint on `port` (default webhook
/// settings: `webhook_debounce`, `webhook_min_interval` left out).
fn config(dir: &Path, w: &DemoWorld, port: u16) -> PathBuf {
    let path = write_config(dir, &w.kommo, &w.chatapp, "").expect("config");
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text
        .replace(
            "poll_schedule = \"*/30 * * * * *\"",
            &format!("poll_schedule = \"{NEVER}\""),
        )
        .replace(
            "full_schedule = \"0 0 3 * * *\"",
            &format!("full_schedule = \"{NEVER}\""),
        )
        .replace(
            "[kommo]",
            &format!(
                "listen = \"127.0.0.1:{port}\"\nwebhook_token_file = \"webhook-token\"\n\n[kommo]"
            ),
        );
    assert_eq!(
        text.matches(NEVER).count(),
        2,
        "demo::write_config's schedules changed"
    );
    std::fs::write(&path, text).expect("write config");
    std::fs::write(dir.join("webhook-token"), format!("{TOKEN}\n")).expect("token file");
    path
}

/// Waits until the daemon's first cycle (started by hand: polling is off) has finished.
async fn first_cycle(port: u16, pid: u32) {
    let c = reqwest::Client::new();
    let t0 = Instant::now();
    let metrics = || async {
        c.get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    while metrics().await.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the daemon never served /metrics"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    loop {
        let done = metrics().await.unwrap_or_default().lines().any(|l| {
            l.starts_with("chatapp_kommo_sync_cycles_total")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
        });
        if done {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no first cycle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts ChatApp `message` callbacks on Pavel's dialog every 500 ms until `stop`.
async fn message_callbacks(port: u16, stop: Instant) -> usize {
    let c = reqwest::Client::new();
    let body = r#"{"data":[{"chat":{"id":"79990000004@c.us"}}],"meta":{"type":"message","licenseId":1,"messengerType":"grWhatsApp"}}"#;
    let mut n = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < stop {
        tick.tick().await;
        let _ = c
            .post(format!("http://127.0.0.1:{port}/hooks/chatapp/{TOKEN}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        n += 1;
    }
    n
}

/// Polls `done` every 20 ms; the time it took, or `None` after `give_up`.
async fn until(give_up: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < give_up {
        if done() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// One direction's timings.
#[derive(Default)]
struct Timings {
    took: Vec<Duration>,
    missed: usize,
}

impl Timings {
    fn add(&mut self, t: Option<Duration>, give_up: Duration) {
        self.took.push(t.unwrap_or(give_up));
        self.missed += usize::from(t.is_none());
    }

    fn line(&mut self, name: &str) -> String {
        self.took.sort();
        let at = |p: f64| {
            let i = ((self.took.len().max(1) - 1) as f64 * p).round() as usize;
            self.took.get(i).map_or(f64::NAN, Duration::as_secs_f64)
        };
        format!(
            "{name}: {} changes, p50 {:.3} s, p99 {:.3} s, max {:.3} s, not corrected {}",
            self.took.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            self.missed
        )
    }
}

/// Changes every 2.5 s until `stop`, alternating Kommo -> dialog and dialog -> Kommo.
async fn changes(w: &DemoWorld, port: u16, stop: Instant, give_up: Duration) -> [Timings; 2] {
    let c = reqwest::Client::new();
    let hook = |kind: &str| format!("http://127.0.0.1:{port}/hooks/{kind}/{TOKEN}");
    let mut out = [Timings::default(), Timings::default()];
    let mut i = 0u64;
    while Instant::now() < stop {
        let next = Instant::now() + Duration::from_millis(2500);
        w.clock.advance(10);
        if i.is_multiple_of(2) {
            // a manager reassigns Ivan's contact in Kommo; Kommo calls its webhook
            let (user, employee) = if i.is_multiple_of(4) {
                (504142, 85502)
            } else {
                (504141, 85501)
            };
            let before = w.kommo.responsible_of("contacts", 1001).unwrap_or(0);
            w.kommo
                .set_responsible_as_human("contacts", 1001, user, 504144);
            let body = format!(
                "contacts%5Bupdate%5D%5B0%5D%5Bid%5D=1001&contacts%5Bupdate%5D%5B0%5D%5Btype%5D=contact&contacts%5Bupdate%5D%5B0%5D%5Bresponsible_user_id%5D={user}&contacts%5Bupdate%5D%5B0%5D%5Bold_responsible_user_id%5D={before}"
            );
            let _ = c.post(hook("kommo")).body(body).send().await;
            let t = until(give_up, || {
                w.chatapp.responsible_of(1, WA, "79990000001@c.us") == Some(employee)
            })
            .await;
            out[0].add(t, give_up);
        } else {
            // an operator reassigns Maria's dialog in ChatApp; ChatApp calls back
            let (employee, user) = if i % 4 == 1 {
                (85503, 504143)
            } else {
                (85502, 504142)
            };
            w.chatapp
                .assign_as_human(1, WA, "79990000002@c.us", Some(employee));
            let body = r#"{"data":[{"chat":{"id":"79990000002@c.us"}}],"meta":{"type":"chatResponsible","licenseId":1,"messengerType":"grWhatsApp"}}"#;
            let _ = c
                .post(hook("chatapp"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let t = until(give_up, || {
                w.kommo.responsible_of("leads", 2002) == Some(user)
            })
            .await;
            out[1].add(t, give_up);
        }
        i += 1;
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
    out
}

/// Kommo requests per second over `[from, to)` and the most in any sliding second.
fn kommo_rate(w: &DemoWorld, from: Instant, to: Instant) -> (f64, usize) {
    let mut at: Vec<Instant> = w
        .kommo
        .requests()
        .into_iter()
        .map(|r| r.at)
        .filter(|t| *t >= from && *t < to)
        .collect();
    at.sort();
    let worst = (0..at.len())
        .map(|i| at[i..].partition_point(|t| *t < at[i] + Duration::from_secs(1)))
        .max()
        .unwrap_or(0);
    let secs = to.duration_since(from).as_secs_f64().max(1e-9);
    (at.len() as f64 / secs, worst)
}

/// Kommo requests over `[from, to)` counted by method and path (query left out), most first.
fn kommo_calls(w: &DemoWorld, from: Instant, to: Instant) -> String {
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for r in w.kommo.requests() {
        if r.at >= from && r.at < to {
            *by.entry(format!("{} {}", r.method, r.path)).or_default() += 1;
        }
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    let v: Vec<String> = v.iter().map(|(k, n)| format!("{n} {k}")).collect();
    v.join(", ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let w = sample_world().await.expect("simulators start");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = config(dir.path(), &w, port);
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
    let d = Daemon(
        Command::new(&a.bin)
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", a.bin.display())),
    );
    first_cycle(port, d.0.id()).await;
    println!(
        "daemon: {} (default webhook settings, polling off)",
        a.bin.display()
    );

    let give_up = Duration::from_secs(a.give_up);
    let quiet = Duration::from_secs(a.seconds.min(20));
    let q0 = Instant::now();
    let calls = message_callbacks(port, q0 + quiet).await;
    let (rate, worst) = kommo_rate(&w, q0, Instant::now());
    println!(
        "quiet flow ({} s, {calls} message callbacks, no change): Kommo {rate:.2} requests/s, worst second {worst}",
        quiet.as_secs()
    );

    let f0 = Instant::now();
    let stop = f0 + Duration::from_secs(a.seconds);
    let (calls, mut timings) = tokio::join!(
        message_callbacks(port, stop),
        changes(&w, port, stop, give_up)
    );
    let f1 = Instant::now();
    let (rate, worst) = kommo_rate(&w, f0, f1);
    println!(
        "busy flow ({:.0} s, {calls} message callbacks, a change every 2.5 s):",
        f1.duration_since(f0).as_secs_f64()
    );
    println!("  {}", timings[0].line("Kommo -> dialog"));
    println!("  {}", timings[1].line("dialog -> Kommo"));
    println!("  Kommo {rate:.2} requests/s during the flow, worst sliding second {worst}");
    println!("  Kommo requests by call: {}", kommo_calls(&w, f0, f1));
    drop(d);
    if let Some(to) = a.keep_log {
        std::fs::copy(dir.path().join("daemon.log"), &to).expect("copy the daemon's log");
    }
}
