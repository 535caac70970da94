//! The service, not only `once`: a `run` daemon on the state the earlier phases left, driven by
//! SIGUSR1 through idle cycles (normal mode, then `run --shadow`: its warm-up cycle is the shadow
//! first run, the idle ones are shadow cycles). Figures: the daemon's CPU per idle cycle (from `/proc/PID/stat`,
//! its own utime + stime), its resident size between cycles (`VmRSS`), and the requests each
//! idle cycle made.

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

/// `GET path` on loopback (HTTP/1.0, the whole answer), `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Cycles finished so far, summed over outcomes (`None`: no answer yet).
fn cycles_done(port: u16) -> Option<u64> {
    let body = get(port, "/metrics")?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("chatapp_kommo_sync_cycles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
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

/// Runs `run` (with `args` after it, e.g. `--shadow`) on `config` (rewritten to listen on
/// loopback and to poll only on demand), one warm-up cycle, then `idle` idle cycles.
/// `requests()` gives the simulators' counts.
pub fn measure(
    bin: &Path,
    config: &Path,
    args: &[&str],
    idle: usize,
    requests: impl Fn() -> (usize, usize),
) -> DaemonFigures {
    let port = free_port();
    let text = std::fs::read_to_string(config).expect("config").replace(
        "poll_schedule = \"*/30 * * * * *\"",
        &format!("poll_schedule = \"0 0 0 1 1 *\"\nlisten = \"127.0.0.1:{port}\""),
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
            "the daemon never served /metrics"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // past the start-up check, and no cycle running
    let idle_now =
        || get(port, "/metrics").is_some_and(|b| b.contains("chatapp_kommo_sync_cycle_running 0"));
    while !idle_now() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the daemon never went idle"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut figures = DaemonFigures {
        cpu_per_cycle: vec![],
        rss_mb: vec![],
        requests: vec![],
    };
    for i in 0..=idle {
        let done = cycles_done(port).unwrap_or(0);
        let (k0, c0) = requests();
        let cpu0 = cpu_s(pid);
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
        assert!(
            wait_cycles(port, done, Duration::from_secs(300)),
            "no cycle after SIGUSR1 (see daemon.log)"
        );
        let cpu = cpu_s(pid) - cpu0;
        let (k1, c1) = requests();
        std::thread::sleep(Duration::from_millis(300));
        if i > 0 {
            // the first one is a warm-up (the daemon's first cycle after its start-up check)
            figures.cpu_per_cycle.push(cpu);
            figures.requests.push((k1 - k0, c1 - c0));
            figures.rss_mb.push(rss_mb(pid));
        }
    }
    figures
}
