//! The service, not only `once`: a `run` daemon on the state the earlier phases left, driven by
//! SIGUSR1 through idle cycles (normal mode, then `run --shadow`: its warm-up cycle is the shadow
//! first run, the idle ones are shadow cycles). Figures: the daemon's CPU per idle cycle (from `/proc/PID/stat`,
//! its own utime + stime), its resident size between cycles (`VmRSS`), and the requests each
//! idle cycle made. Then the webhook path ([`hints`]): a `run` daemon with webhooks on, fed
//! ChatApp `message` callbacks and Kommo webhooks, through the hint cycles they trigger (SPEC 6.2).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the daemon phase measured.
pub struct DaemonFigures {
    /// CPU seconds of each idle cycle, in order.
    pub cpu_per_cycle: Vec<f64>,
    /// `VmRSS` (MB) sampled between cycles.
    pub rss_mb: Vec<f64>,
    /// Kommo and ChatApp requests of each idle cycle.
    pub requests: Vec<(usize, usize)>,
}

/// The child, killed when dropped (an assertion failing mid-phase must not leave it running).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.0 request on loopback (`body`, when given, with its content type), the whole
/// answer; `None` when nothing answers.
fn request(port: u16, method: &str, path: &str, body: Option<(&str, &str)>) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    if let Some((ctype, b)) = body {
        head += &format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", b.len());
    }
    write!(s, "{head}\r\n{}", body.map_or("", |(_, b)| b)).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `GET path` on loopback, the whole answer.
fn get(port: u16, path: &str) -> Option<String> {
    request(port, "GET", path, None)
}

/// `POST path` with `body`: the answer's status (panics when nothing answers).
fn post(port: u16, path: &str, ctype: &str, body: &str) -> u16 {
    let answer = request(port, "POST", path, Some((ctype, body)))
        .unwrap_or_else(|| panic!("no answer to POST {path} (see daemon.log)"));
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The sum of the `/metrics` samples whose line starts with `prefix` (`None`: no answer yet).
fn metric_sum(port: u16, prefix: &str) -> Option<u64> {
    let body = get(port, "/metrics")?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// Cycles finished so far, summed over outcomes (`None`: no answer yet).
fn cycles_done(port: u16) -> Option<u64> {
    metric_sum(port, "chatapp_kommo_sync_cycles_total")
}

/// Hint cycles finished so far, summed over outcomes.
fn hint_cycles(port: u16) -> u64 {
    metric_sum(port, "chatapp_kommo_sync_cycles_total{kind=\"hint\"")
        .expect("the daemon stopped serving /metrics (see daemon.log)")
}

/// No cycle runs now.
fn is_idle(port: u16) -> bool {
    get(port, "/metrics").is_some_and(|b| b.contains("chatapp_kommo_sync_cycle_running 0"))
}

/// The process's own CPU seconds (utime + stime).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which is in parentheses and may hold spaces)
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// `VmRSS` in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Waits until `cycles_done` passes `n` (at most `limit`).
fn wait_cycles(port: u16, n: u64, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cycles_done(port).is_some_and(|c| c > n) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A `run` daemon on loopback: the child (killed when dropped), its port and pid.
struct Running {
    _child: Daemon,
    port: u16,
    pid: u32,
}

/// Starts `run` (with `args` after it, e.g. `--shadow`) on `config`, rewritten to
/// `daemon.toml` beside it: listening on a free loopback port, polling only on demand, with
/// `extra` added to `[daemon]`. Returns once it serves `/metrics`, past its start-up check, with
/// no cycle running. Its log goes to `daemon.log` beside the config.
fn start(bin: &Path, config: &Path, args: &[&str], extra: &str) -> Running {
    let port = free_port();
    let text = std::fs::read_to_string(config).expect("config").replace(
        "poll_schedule = \"*/30 * * * * *\"",
        &format!("poll_schedule = \"0 0 0 1 1 *\"\nlisten = \"127.0.0.1:{port}\"\n{extra}"),
    );
    let daemon_config = config.with_file_name("daemon.toml");
    std::fs::write(&daemon_config, text).expect("write the daemon's config");
    let log = std::fs::File::create(config.with_file_name("daemon.log")).expect("log file");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&daemon_config)
        .arg("run")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start run");
    let d = Daemon(child);
    let pid = d.0.id();
    let t0 = Instant::now();
    while cycles_done(port).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the daemon never served /metrics (see daemon.log)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // past the start-up check, and no cycle running
    while !is_idle(port) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the daemon never went idle (see daemon.log)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Running {
        _child: d,
        port,
        pid,
    }
}

/// SIGUSR1, and waits for the cycle it asks for to finish.
fn cycle_now(r: &Running) {
    let done = cycles_done(r.port).unwrap_or(0);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(r.pid as libc::pid_t, libc::SIGUSR1) };
    assert!(
        wait_cycles(r.port, done, Duration::from_secs(300)),
        "no cycle after SIGUSR1 (see daemon.log)"
    );
}

/// Runs `run` (with `args` after it, e.g. `--shadow`) on `config` (see [`start`]), one warm-up
/// cycle, then `idle` idle cycles. `requests()` gives the simulators' counts.
pub fn measure(
    bin: &Path,
    config: &Path,
    args: &[&str],
    idle: usize,
    requests: impl Fn() -> (usize, usize),
) -> DaemonFigures {
    let r = start(bin, config, args, "");
    let mut figures = DaemonFigures {
        cpu_per_cycle: vec![],
        rss_mb: vec![],
        requests: vec![],
    };
    for i in 0..=idle {
        let (k0, c0) = requests();
        let cpu0 = cpu_s(r.pid);
        cycle_now(&r);
        let cpu = cpu_s(r.pid) - cpu0;
        let (k1, c1) = requests();
        std::thread::sleep(Duration::from_millis(300));
        if i > 0 {
            // the first one is a warm-up (the daemon's first cycle after its start-up check)
            figures.cpu_per_cycle.push(cpu);
            figures.requests.push((k1 - k0, c1 - c0));
            figures.rss_mb.push(rss_mb(r.pid));
        }
    }
    figures
}

/// A ChatApp chat: license, messenger type, chat id.
pub struct ChatRef {
    /// `licenseId`.
    pub license: u64,
    /// `messengerType`.
    pub messenger: String,
    /// `chat.id`.
    pub chat_id: String,
}

/// What one step of the hint phase cost.
#[derive(Debug, Default)]
pub struct HintStep {
    /// Webhook calls posted.
    pub calls: usize,
    /// Hint cycles they gave.
    pub hints: u64,
    /// Other cycles meanwhile (an incremental one stands in for a hint that named too much or
    /// nothing readable by id).
    pub other_cycles: u64,
    /// Kommo and ChatApp requests, from the first call until the daemon was idle again.
    pub requests: (usize, usize),
    /// The daemon's CPU seconds from the first call until the last cycle was seen to finish
    /// (serving the calls included).
    pub cpu_s: f64,
}

/// What the hint phase measured.
pub struct HintFigures {
    /// ChatApp `message` callbacks on existing dialogs (nothing to change).
    pub messages: HintStep,
    /// Kommo webhooks on existing, unchanged contacts.
    pub kommo: HintStep,
    /// `VmRSS` (MB) after the callbacks' hint cycles.
    pub rss_mb: f64,
}

/// The webhook token of the hint phase (at least 16 characters).
const TOKEN: &str = "scale-hook-token-0123456789";

/// How long the daemon must stay without a new cycle to count as done with the calls: more than
/// the debounce (100 ms) plus the budget's pause after a burst of cheap hint cycles.
const QUIET: Duration = Duration::from_secs(3);

/// Waits until no cycle runs and none finished for [`QUIET`] (at most `limit`); returns the
/// daemon's CPU seconds as read right after the last cycle was seen to finish (the waiting's own
/// `/metrics` reads after it are not counted).
fn wait_quiet(r: &Running, limit: Duration) -> f64 {
    let t0 = Instant::now();
    let (mut last, mut since, mut cpu) = (cycles_done(r.port), Instant::now(), cpu_s(r.pid));
    loop {
        assert!(
            t0.elapsed() < limit,
            "the daemon was not idle {QUIET:?} in a row within {limit:?} after the webhook calls (see daemon.log)"
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = cycles_done(r.port);
        if now != last {
            (last, since, cpu) = (now, Instant::now(), cpu_s(r.pid));
        } else if since.elapsed() >= QUIET && is_idle(r.port) {
            return cpu;
        }
    }
}

/// Posts `calls` (path, content type, body) `gap` apart, then waits for their cycles.
fn step(
    r: &Running,
    calls: &[(String, &str, String)],
    gap: Duration,
    before_each: impl Fn(usize),
    requests: &impl Fn() -> (usize, usize),
) -> HintStep {
    let (cycles0, hints0) = (cycles_done(r.port).unwrap_or(0), hint_cycles(r.port));
    let (k0, c0) = requests();
    let cpu0 = cpu_s(r.pid);
    for (i, (path, ctype, body)) in calls.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        before_each(i);
        let status = post(r.port, path, ctype, body);
        assert_eq!(
            status, 200,
            "POST {path} answered {status} (see daemon.log)"
        );
    }
    let cpu1 = wait_quiet(r, Duration::from_secs(120));
    let (k1, c1) = requests();
    let hints = hint_cycles(r.port) - hints0;
    HintStep {
        calls: calls.len(),
        hints,
        other_cycles: cycles_done(r.port).unwrap_or(0) - cycles0 - hints,
        requests: (k1 - k0, c1 - c0),
        cpu_s: cpu1 - cpu0,
    }
}

/// The hint phase: `run` on `config` with webhooks on (a token file, the default debounce and
/// budget), one warm-up cycle (a polled one: a hint cycle decides with the user map the last
/// polled cycle read), then
/// 1. `messages` ChatApp `message` callbacks, 50 ms apart, over `chats` in turn (`on_message`
///    runs before each: the message arriving in ChatApp);
/// 2. one Kommo webhook for each of `contacts` (id, responsible user), 1 s apart (so the budget
///    does not fold them into one cycle).
///
/// Each step waits until the daemon is idle again with its hint cycles done.
pub fn hints(
    bin: &Path,
    config: &Path,
    chats: &[ChatRef],
    messages: usize,
    on_message: impl Fn(&ChatRef),
    contacts: &[(u64, u64)],
    requests: impl Fn() -> (usize, usize),
) -> HintFigures {
    let token_file = config.with_file_name("webhook-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the webhook token");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod the webhook token");
    let r = start(bin, config, &[], "webhook_token_file = \"webhook-token\"");
    cycle_now(&r);
    let callbacks: Vec<_> = (0..messages)
        .map(|i| {
            let c = &chats[i % chats.len()];
            let body = serde_json::json!({
                "data": [{"chat": {"id": c.chat_id}}],
                "meta": {"type": "message", "licenseId": c.license, "messengerType": c.messenger},
            });
            (
                format!("/hooks/chatapp/{TOKEN}"),
                "application/json",
                body.to_string(),
            )
        })
        .collect();
    let messages = step(
        &r,
        &callbacks,
        Duration::from_millis(50),
        |i| on_message(&chats[i % chats.len()]),
        &requests,
    );
    let rss_mb = rss_mb(r.pid);
    let webhooks: Vec<_> = contacts
        .iter()
        .map(|(id, user)| {
            let key = |field: &str| format!("contacts%5Bupdate%5D%5B0%5D%5B{field}%5D");
            let body = format!(
                "{}={id}&{}=contact&{}={user}&{}={user}",
                key("id"),
                key("type"),
                key("responsible_user_id"),
                key("old_responsible_user_id")
            );
            (
                format!("/hooks/kommo/{TOKEN}"),
                "application/x-www-form-urlencoded",
                body,
            )
        })
        .collect();
    let kommo = step(&r, &webhooks, Duration::from_secs(1), |_| {}, &requests);
    HintFigures {
        messages,
        kommo,
        rss_mb,
    }
}
