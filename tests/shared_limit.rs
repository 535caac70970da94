//! The Kommo limit shared by every instance on the machine (`src/http/shared_limit.rs`): separate
//! limiters on one file, in threads and in real child processes (this test binary re-executed
//! with `SHARED_LIMIT_CHILD` set), never admit more than `requests_per_second` requests in any
//! sliding second summed over all of them, and take bursts of up to that many at once; a killed process (holding slots or the lock) does not
//! stall the others; garbage is reset; an unusable path gives an error naming it. Every test is
//! bounded in time; child processes are killed on drop.

#![allow(clippy::unwrap_used)]

use chatapp_kommo_sync::http::shared_limit::{
    LATE_LIMIT, LOCK_TIMEOUT, SharedLimitError, SharedLimiter, decode_log, encode_log,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const RPS: u32 = 7;
/// At most `RPS` slots in any window of this (1.05 s), a burst of up to `RPS` at once.
const WINDOW: Duration = Duration::from_millis(1050);
const SECOND_NS: u64 = 1_000_000_000;
/// How far ahead a reset (new or garbage file) puts the first slot: one window.
const RESET: Duration = WINDOW;

/// `CLOCK_MONOTONIC` in ns, the clock of the limit file.
fn mono() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid, writable timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * SECOND_NS + ts.tv_nsec as u64
}

/// The most admissions in any window `[t, t + 1 s)`.
fn max_in_any_second(times: &[u64]) -> usize {
    let mut t = times.to_vec();
    t.sort_unstable();
    let mut max = 0;
    let mut end = 0;
    for start in 0..t.len() {
        while end < t.len() && t[end] < t[start] + SECOND_NS {
            end += 1;
        }
        max = max.max(end - start);
    }
    max
}

#[test]
fn window_counter() {
    let s = SECOND_NS;
    assert_eq!(max_in_any_second(&[]), 0);
    assert_eq!(max_in_any_second(&[0, s - 1, s]), 2);
    assert_eq!(
        max_in_any_second(&[5 * s, 0, s / 2, 5 * s + 1, 5 * s + 2]),
        3
    );
}

/// Takes `n` slots on a runtime of its own; the admission times.
fn take(lim: &SharedLimiter, n: usize) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            lim.until_ready().await.expect("until_ready");
            times.push(mono());
        }
        times
    })
}

/// `n` limiters, each its own `open` of `path(i)`, each taking `per` slots in a thread of its own.
fn run_threads(n: usize, per: usize, path: impl Fn(usize) -> PathBuf) -> Vec<u64> {
    let limiters: Vec<SharedLimiter> = (0..n)
        .map(|i| SharedLimiter::open(&path(i), RPS).unwrap())
        .collect();
    let handles: Vec<_> = limiters
        .into_iter()
        .map(|lim| thread::spawn(move || take(&lim, per)))
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn span(times: &[u64]) -> Duration {
    Duration::from_nanos(times.iter().max().unwrap() - times.iter().min().unwrap())
}

#[test]
fn limiters_in_threads_share_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    let (n, per) = (6, 5);
    let times = run_threads(n, per, |_| path.clone());
    assert_eq!(times.len(), n * per);
    let max = max_in_any_second(&times);
    eprintln!(
        "{n} limiters x {per} at {RPS} rps: max {max} in any 1 s window, {} admissions in {:?}",
        times.len(),
        span(&times)
    );
    assert!(max <= RPS as usize, "{max} admissions in one second");
    // and it did limit: 30 slots, at most 7 a window, so the 29th after the first is 4 windows
    // later, each admitted within LATE_LIMIT of its slot
    assert!(span(&times) >= WINDOW * 4 - LATE_LIMIT);
}

#[test]
fn control_separate_files_exceed_the_limit() {
    // the same load on one file per limiter: the window check sees the burst
    let dir = tempfile::tempdir().unwrap();
    let times = run_threads(6, 5, |i| dir.path().join(format!("own-{i}.limit")));
    let max = max_in_any_second(&times);
    eprintln!("control, 6 separate files x 5: max {max} in any 1 s window");
    assert!(max > RPS as usize, "{max}");
}

// ---- child processes ----

const CHILD: &str = "SHARED_LIMIT_CHILD";
const CHILD_PATH: &str = "SHARED_LIMIT_PATH";
const CHILD_OUT: &str = "SHARED_LIMIT_OUT";
const CHILD_COUNT: &str = "SHARED_LIMIT_COUNT";

/// Not a test on its own: the body of a child process when `SHARED_LIMIT_CHILD` is set.
/// `take`: takes `SHARED_LIMIT_COUNT` slots, appending each admission time to `SHARED_LIMIT_OUT`.
/// `hold`: locks the file, writes `SHARED_LIMIT_OUT`, and sleeps.
#[test]
fn child_process_body() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let path = PathBuf::from(std::env::var(CHILD_PATH).unwrap());
    let out = PathBuf::from(std::env::var(CHILD_OUT).unwrap());
    match mode.as_str() {
        "take" => {
            let count: usize = std::env::var(CHILD_COUNT).unwrap().parse().unwrap();
            let lim = SharedLimiter::open(&path, RPS).unwrap();
            let mut out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)
                .unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..count {
                    lim.until_ready().await.unwrap();
                    let t = mono();
                    out.write_all(format!("{t}\n").as_bytes()).unwrap();
                }
            });
        }
        "hold" => {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            file.lock().unwrap();
            fs::write(out, "locked\n").unwrap();
            thread::sleep(Duration::from_secs(120));
        }
        other => panic!("unknown {CHILD}={other}"),
    }
}

/// A child process, killed and reaped on drop.
struct ChildProc(Child);

impl ChildProc {
    fn spawn(mode: &str, path: &Path, out: &Path, count: usize) -> ChildProc {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_process_body",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, mode)
            .env(CHILD_PATH, path)
            .env(CHILD_OUT, out)
            .env(CHILD_COUNT, count.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the test binary");
        ChildProc(child)
    }

    /// Waits for a clean exit, at most `limit`.
    fn wait_ok(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "child failed: {status}");
                return;
            }
            assert!(
                start.elapsed() < limit,
                "child still running after {limit:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The admission times a `take` child wrote so far.
fn read_times(out: &Path) -> Vec<u64> {
    let text = fs::read_to_string(out).unwrap_or_default();
    // only whole lines: a line may be half written (or the child killed in the middle of it)
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    whole.lines().map(|l| l.parse().unwrap()).collect()
}

/// Polls `cond` every 10 ms for at most `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn processes_and_threads_share_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    let (procs, per_proc, threads, per_thread) = (3, 6, 2, 4);
    let outs: Vec<PathBuf> = (0..procs)
        .map(|i| dir.path().join(format!("child-{i}.times")))
        .collect();
    let mut children: Vec<ChildProc> = outs
        .iter()
        .map(|out| ChildProc::spawn("take", &path, out, per_proc))
        .collect();
    let mut times = run_threads(threads, per_thread, |_| path.clone());
    for child in &mut children {
        child.wait_ok(Duration::from_secs(60));
    }
    for out in &outs {
        let t = read_times(out);
        assert_eq!(t.len(), per_proc, "{}", out.display());
        times.extend(t);
    }
    let max = max_in_any_second(&times);
    eprintln!(
        "{procs} processes x {per_proc} + {threads} threads x {per_thread} at {RPS} rps: \
         max {max} in any 1 s window, {} admissions in {:?}",
        times.len(),
        span(&times)
    );
    assert!(max <= RPS as usize, "{max} admissions in one second");
}

#[test]
fn a_killed_process_does_not_stall_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    let out = dir.path().join("child.times");
    let mut child = ChildProc::spawn("take", &path, &out, 100_000);
    eventually(Duration::from_secs(30), "child admitted 3", || {
        read_times(&out).len() >= 3
    });
    // the parent competes with the child for a while, then the child dies mid-run
    let lim = SharedLimiter::open(&path, RPS).unwrap();
    let parent = thread::spawn(move || take(&lim, 12));
    eventually(Duration::from_secs(30), "child admitted 6", || {
        read_times(&out).len() >= 6
    });
    child.kill();
    let killed_at = mono();
    let parent_times = parent.join().unwrap();
    let child_times = read_times(&out);
    let after_kill = parent_times.iter().filter(|&&t| t > killed_at).count() as u32;
    let last = *parent_times.iter().max().unwrap();
    let tail = Duration::from_nanos(last.saturating_sub(killed_at));
    eprintln!(
        "killed child after {} admissions; parent took {after_kill} more in {tail:?}",
        child_times.len()
    );
    // at most one slot of the dead child goes unused, and the parent gets 7 slots a window:
    // the slots outstanding at the kill are at most one window ahead, and the parent's
    // `after_kill` then take at most `ceil(after_kill / 7)` windows more; 1 s of slack for a
    // loaded machine
    assert!(
        tail <= WINDOW * (after_kill.div_ceil(RPS) + 1) + Duration::from_secs(1),
        "{tail:?} for {after_kill} slots"
    );
    let mut all = parent_times;
    all.extend(child_times);
    assert!(max_in_any_second(&all) <= RPS as usize);
}

#[test]
fn a_killed_lock_holder_does_not_stall_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    let marker = dir.path().join("locked");
    // a valid record with an empty window, so the reservation below is not delayed by a reset
    fs::write(&path, encode_log(&[0; RPS as usize])).unwrap();
    let mut holder = ChildProc::spawn("hold", &path, &marker, 0);
    eventually(Duration::from_secs(30), "child holds the lock", || {
        marker.exists()
    });
    // open works while another process holds the lock; a reservation waits at most LOCK_TIMEOUT
    let lim = SharedLimiter::open(&path, RPS).unwrap();
    let start = Instant::now();
    let err = lim.reserve().unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(err, SharedLimitError::LockTimeout { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(
        waited >= LOCK_TIMEOUT && waited < LOCK_TIMEOUT + Duration::from_secs(2),
        "{waited:?}"
    );
    // the holder dies while a reservation waits: the reservation goes through
    let waiter = {
        let lim = lim.clone();
        thread::spawn(move || {
            let start = Instant::now();
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(lim.until_ready());
            (r, start.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(200));
    holder.kill();
    let (r, waited) = waiter.join().unwrap();
    r.expect("admitted once the holder died");
    assert!(waited < LOCK_TIMEOUT, "{waited:?}");
}

// ---- the file ----

/// The log in the file: `RPS` slots, oldest first.
fn record(path: &Path) -> Vec<u64> {
    let bytes = fs::read(path).unwrap();
    let log = decode_log(&bytes).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(log.len(), RPS as usize, "{log:?}");
    log
}

#[test]
fn garbage_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    let far = encode_log(&[0, mono() + 3600 * SECOND_NS]);
    let mut torn = encode_log(&[0; RPS as usize]);
    let last = torn.len() - 2;
    torn[last] ^= 1;
    let contents: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"garbage".to_vec(),
        b"12".to_vec(),
        b"\n".to_vec(),
        vec![0; 21],
        vec![0xff; 4096],
        vec![b'0'; 100_000],
        b"99999999999999999999\n".to_vec(),
        b"-0000000000000000001\n".to_vec(),
        far,
        torn,
        // out of order
        encode_log(&[1, 0]),
        // the earlier format (one number, the next free slot), even a valid one, is no log
        format!("{:020}\n", 0).into_bytes(),
        format!("{:020}\n", mono()).into_bytes(),
        format!("{:020}\n{:020}\n", 0, 0).into_bytes(),
    ];
    for content in contents {
        fs::write(&path, &content).unwrap();
        let what = String::from_utf8_lossy(&content);
        let lim = SharedLimiter::open(&path, RPS).unwrap();
        let before = mono();
        // a reset puts the first slot one window (7 periods) ahead
        let wait = lim.reserve().unwrap();
        let after = mono();
        assert!(
            wait <= RESET && wait >= RESET - Duration::from_nanos(after - before),
            "{what:?}: {wait:?}"
        );
        // as if 7 requests went out at the reset: 6 of them and the new slot, one window later
        let log = record(&path);
        let reset = RESET.as_nanos() as u64;
        let slot = log[RPS as usize - 1];
        assert!(slot >= before + reset && slot <= after + reset, "{what:?}");
        assert!(
            log[..RPS as usize - 1].iter().all(|&t| t == slot - reset),
            "{what:?}"
        );
    }
}

#[test]
fn a_valid_time_ahead_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    // a slot one second ahead (another process's) after six long gone: a slot is never before
    // the latest in the log
    let ahead = mono() + SECOND_NS;
    let mut log = vec![0; RPS as usize - 1];
    log.push(ahead);
    fs::write(&path, encode_log(&log)).unwrap();
    let lim = SharedLimiter::open(&path, RPS).unwrap();
    let wait = lim.reserve().unwrap();
    assert!(
        wait > Duration::from_millis(800) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    let mut expected = vec![0; RPS as usize - 2];
    expected.extend([ahead, ahead]);
    assert_eq!(record(&path), expected);
    let start = Instant::now();
    take(&lim, 1);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_new_file_and_its_directory_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/chatapp-kommo-sync/kommo.limit");
    let lim = SharedLimiter::open(&path, RPS).unwrap();
    assert_eq!(lim.path(), path);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "{mode:o}");
    assert_eq!(
        fs::read(&path).unwrap(),
        b"",
        "written at the first reservation"
    );
    lim.reserve().unwrap();
    record(&path);
}

#[test]
fn an_unusable_path_gives_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let mut paths = vec![
        // its "directory" is a file (fails even as root)
        file.join("kommo.limit"),
        // it is a directory
        dir.path().to_owned(),
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let ro = dir.path().join("read-only");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
        paths.push(ro.join("kommo.limit"));
        paths.push(ro.join("sub/kommo.limit"));
    }
    for path in paths {
        let err = SharedLimiter::open(&path, RPS).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SharedLimitError::Io { .. }), "{err:?}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
    let err = SharedLimiter::open(&dir.path().join("zero"), 0).unwrap_err();
    assert!(err.to_string().contains("zero"), "{err}");
}

#[test]
fn a_deleted_file_is_recreated_and_still_shared() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    let a = SharedLimiter::open(&path, RPS).unwrap();
    let b = SharedLimiter::open(&path, RPS).unwrap();
    let mut times = take(&a, 3);
    fs::remove_file(&path).unwrap();
    // a newcomer creates a new file; a and b must move to it, or the old inode and the new one
    // would admit 7 per second each
    let c = SharedLimiter::open(&path, RPS).unwrap();
    let handles = [a, b, c].map(|lim| thread::spawn(move || take(&lim, 5)));
    for h in handles {
        times.extend(h.join().unwrap());
    }
    let max = max_in_any_second(&times);
    eprintln!("deleted file: max {max} in any 1 s window");
    assert!(max <= RPS as usize, "{max}");
    record(&path);
}

#[test]
fn reservations_come_in_bursts_of_rps_one_window_apart() {
    // without sleeping: 4 limiters reserve 25 slots each as fast as they can on a new file; the
    // reset puts the first 7 one window ahead, the next 7 a window later, and so on
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kommo.limit");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let lim = SharedLimiter::open(&path, RPS).unwrap();
            thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        let wait = lim.reserve().unwrap();
                        mono() + wait.as_nanos() as u64
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut slots: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    slots.sort_unstable();
    // each slot is estimated from a clock read after the reservation (late by a preemption at
    // most): any 8 slots span a window, and each burst of 7 shares one slot
    let slack = Duration::from_millis(75);
    for eight in slots.windows(RPS as usize + 1) {
        let gap = Duration::from_nanos(eight[RPS as usize] - eight[0]);
        assert!(gap >= WINDOW - slack, "{gap:?}");
    }
    for burst in slots.chunks(RPS as usize) {
        let spread = Duration::from_nanos(burst[burst.len() - 1] - burst[0]);
        assert!(spread <= slack, "{spread:?}");
    }
    // 100 slots: 15 bursts, 14 windows from the first to the last
    assert!(span(&slots) >= WINDOW * 14 - slack);
}
