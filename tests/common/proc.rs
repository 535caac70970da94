//! Helpers of the daemon process tests: the simulators' sample world with a config in a temp
//! dir, the real binary's `run` as a child process (stderr captured, sd_notify datagrams received
//! on a socket of the test's own), signals sent with kill(1), and bounded waits. Loopback only.
#![allow(dead_code)]

use chatapp_kommo_sync::commands::demo::{DemoWorld, sample_world, write_config};
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_chatapp-kommo-sync");

/// Schedules that never fire during a test: cycles come from SIGUSR1 only.
pub const NEVER: &str = "0 0 0 1 1 *";

/// A sample world, its config, and a temp dir that lives as long as it.
pub struct Env {
    pub w: DemoWorld,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    /// The demo's sample world; schedules that never fire (only signals trigger cycles) and
    /// log level `info`; then `edit` applied to the config text.
    pub async fn new(edit: impl FnOnce(String) -> String) -> Env {
        let w = sample_world().await.expect("simulators start");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), &w.kommo, &w.chatapp, "").expect("config");
        let env = Env { w, dir, config };
        env.edit_config(|t| {
            let t = t
                .replace(
                    "poll_schedule = \"*/30 * * * * *\"",
                    &format!("poll_schedule = \"{NEVER}\""),
                )
                .replace(
                    "full_schedule = \"0 0 3 * * *\"",
                    &format!("full_schedule = \"{NEVER}\""),
                )
                .replace("log_level = \"warn\"", "log_level = \"info\"");
            assert_eq!(
                t.matches(NEVER).count(),
                2,
                "demo::write_config's schedules changed; update tests/common/proc.rs: {t}"
            );
            assert!(t.contains("log_level = \"info\""), "{t}");
            edit(t)
        });
        env
    }

    /// [`Env::new`] with the HTTP endpoint (`/healthz`, `/metrics`, ...) on a free loopback port,
    /// which it returns.
    pub async fn listening() -> (Env, u16) {
        let port = free_port();
        let env = Env::new(|t| {
            t.replace(
                "log_level = \"info\"",
                &format!("log_level = \"info\"\nlisten = \"127.0.0.1:{port}\""),
            )
        })
        .await;
        (env, port)
    }

    /// Edits the config text.
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, f(text)).unwrap();
    }

    /// Starts `run` with `env` added to its environment.
    pub fn spawn(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(&self.config, self.dir.path(), env)
    }

    /// Starts `run` with its open-file limit (soft and hard) set to `nofile`, as systemd's
    /// `LimitNOFILE=` would.
    pub fn spawn_with_nofile(&self, nofile: u64) -> Daemon {
        Daemon::spawn_limited(&self.config, self.dir.path(), &[], Some(nofile))
    }

    /// Runs the binary with `args` after `--config <path>`, bounded to `within` (on a blocking
    /// thread: the simulators share the test's runtime).
    pub async fn cli(&self, args: &[&str], within: Duration) -> Output {
        let mut all: Vec<String> = vec!["--config".into(), self.config.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run_bounded(&all, within)
        })
        .await
        .unwrap()
    }

    /// `status` (asserts exit 0) and the cycle lines it lists, newest first.
    pub async fn status(&self) -> (String, Vec<CycleLine>) {
        let out = self.cli(&["status"], Duration::from_secs(20)).await;
        assert_eq!(out.code, Some(0), "status failed: {out:?}");
        let cycles = cycle_lines(&out.stdout);
        (out.stdout, cycles)
    }

    /// `GET /api/v4/users` requests the Kommo simulator answered: one per cycle (its first read).
    pub fn users_requests(&self) -> usize {
        self.w
            .kommo
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api/v4/users")
            .count()
    }
}

/// One cycle line of `status`: `#id started kind outcome ...`.
#[derive(Debug, Clone)]
pub struct CycleLine {
    pub id: u64,
    pub kind: String,
    pub outcome: String,
    pub line: String,
}

/// Parses the `last cycles:` section of `status`.
pub fn cycle_lines(status: &str) -> Vec<CycleLine> {
    let mut out = vec![];
    let mut inside = false;
    for line in status.lines() {
        if line.starts_with("last cycles:") {
            inside = true;
            continue;
        }
        if inside {
            let t = line.trim_start();
            let Some(rest) = t.strip_prefix('#') else {
                break;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            // #id  YYYY-MM-DDTHH:MM:SS+HH:MM  kind outcome ...
            out.push(CycleLine {
                id: f[0].parse().expect("cycle id"),
                kind: f[2].to_string(),
                outcome: f[3].to_string(),
                line: line.to_string(),
            });
        }
    }
    out
}

/// What a bounded run of the binary printed.
#[derive(Debug)]
pub struct Output {
    /// `None`: killed (timeout or signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args`; kills it after `within`.
pub fn run_bounded(args: &[&str], within: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    Output {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = vec![];
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A datagram received on the notify socket.
#[derive(Debug, Clone)]
pub struct Notice {
    pub at: Instant,
    pub text: String,
}

impl Notice {
    /// The `KEY=value` assignments of the datagram.
    pub fn fields(&self) -> Vec<(&str, &str)> {
        self.text
            .lines()
            .filter_map(|l| l.split_once('='))
            .collect()
    }
    /// True when the datagram holds `KEY=value` exactly.
    pub fn has(&self, kv: &str) -> bool {
        self.text.lines().any(|l| l == kv)
    }
    /// The value of `key`, if assigned.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// The daemon as a child process. Killed (SIGKILL) on drop if still running.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    stderr: Arc<Mutex<String>>,
    notices: Arc<Mutex<Vec<Notice>>>,
    stop: Arc<AtomicBool>,
    pub started: Instant,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `run` with a notify socket in `dir`; `env` is added (e.g. `WATCHDOG_USEC`).
    pub fn spawn(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_limited(config, dir, env, None)
    }

    /// [`Daemon::spawn`], with RLIMIT_NOFILE set to `nofile` in the child when given.
    pub fn spawn_limited(
        config: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Daemon {
        Daemon::spawn_run(config, dir, env, nofile, &[])
    }

    /// [`Daemon::spawn_limited`], with `args` after `run` (e.g. `--shadow`).
    pub fn spawn_run(
        config: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        nofile: Option<u64>,
        args: &[&str],
    ) -> Daemon {
        let sock_path = dir.join(format!(
            "notify-{}.sock",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let notices: Arc<Mutex<Vec<Notice>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let notices = notices.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        notices.lock().unwrap().push(Notice {
                            at: Instant::now(),
                            text,
                        });
                    }
                }
            });
        }
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(config)
            .arg("run")
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("run starts");
        let stderr: Arc<Mutex<String>> = Arc::default();
        {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => stderr
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                }
            });
        }
        Daemon {
            pid: child.id(),
            child,
            stderr,
            notices,
            stop,
            started: Instant::now(),
            exit: None,
        }
    }

    /// Sends a signal by name (`USR1`, `HUP`, `TERM`, `INT`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill(1) runs");
        assert!(st.success(), "kill -{sig} {} failed", self.pid);
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every datagram received so far.
    pub fn notices(&self) -> Vec<Notice> {
        self.notices.lock().unwrap().clone()
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits up to `within` for the process to end.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `within` for a datagram matching `pred`; returns it.
    pub async fn wait_notice(
        &mut self,
        within: Duration,
        pred: impl Fn(&Notice) -> bool,
    ) -> Option<Notice> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(n) = self.notices().into_iter().find(|n| pred(n)) {
                return Some(n);
            }
            if Instant::now() > deadline || self.try_exit().is_some() {
                // one last look: the datagram may have arrived with the exit
                tokio::time::sleep(Duration::from_millis(100)).await;
                return self.notices().into_iter().find(|n| pred(n));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for READY=1 (signal handlers are installed once it is sent); panics with the
    /// daemon's stderr after `within`.
    pub async fn ready(&mut self, within: Duration) {
        if self
            .wait_notice(within, |n| n.has("READY=1"))
            .await
            .is_none()
        {
            panic!(
                "no READY=1 within {within:?} (exit {:?}); stderr:\n{}",
                self.try_exit(),
                self.stderr()
            );
        }
    }

    /// Waits up to `within` for the STATUS= of a finished cycle newer than the `n`-th; returns
    /// its text. Counts `STATUS=last cycle #...` datagrams.
    pub async fn cycle_done(&mut self, n: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let done: Vec<String> = self
                .notices()
                .iter()
                .filter_map(|x| x.get("STATUS").map(str::to_string))
                .filter(|s| s.starts_with("last cycle"))
                .collect();
            if done.len() >= n {
                return done[n - 1].clone();
            }
            if Instant::now() > deadline || self.try_exit().is_some() {
                panic!(
                    "cycle {n} did not finish within {within:?} (exit {:?}); statuses {done:?}; stderr:\n{}",
                    self.try_exit(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM; asserts exit 0 within `within` and returns how long it took.
    pub async fn term(&mut self, within: Duration) -> Duration {
        let t = Instant::now();
        self.signal("TERM");
        let st = self.wait_exit(within).await;
        let took = t.elapsed();
        match st {
            Some(s) if s.code() == Some(0) => {
                let err = self.stderr();
                if std::env::var_os("DAEMON_TEST_LOG").is_some() {
                    eprintln!("--- daemon {} stderr:\n{err}---", self.pid);
                }
                assert!(
                    !err.contains("not closed cleanly"),
                    "the state db was closed cleanly: {err}"
                );
                took
            }
            other => panic!(
                "SIGTERM: expected exit 0 within {within:?}, got {other:?} after {took:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Polls `f` every 50 ms until it is true or `within` passes; returns the last result.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The resident memory of process `pid` (VmRSS in /proc/<pid>/status), in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The number of open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Bounds a whole test.
pub async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    if tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .is_err()
    {
        panic!("test did not finish within {secs} s");
    }
}
