//! A request rate limit shared by every process on the machine, kept in one small lock-protected
//! file (for Kommo, whose limit is per IP: several daemon instances on one VM must stay under it
//! together).
//!
//! # Algorithm
//!
//! The same sliding-window log as the in-process limiter ([`crate::http::window`]), kept in the
//! file: at most `rps` (`requests_per_second`) slots in any window of `W = RATE_MARGIN` = 1.05 s,
//! and a burst up to `rps` goes at once. The file holds the slots (`CLOCK_MONOTONIC` nanoseconds:
//! one clock for the whole system on Linux, so comparable between processes) of the last `rps`
//! reservations of every process, oldest first (the record is described under
//! [`encode_log`]). To take a slot a process
//!
//! 1. takes an exclusive `flock` on the file (non-blocking tries, at most [`LOCK_TIMEOUT`]),
//! 2. checks that the path still names the file it locked (reopening it if it was deleted or
//!    replaced),
//! 3. reads the log `L` (fitted to `rps` entries: a longer one, written at a higher rate, loses
//!    its oldest; a shorter one is padded in front with copies of its oldest) and reserves
//!    `slot = max(now, L[0] + W, L[last], the last slot this process reserved)`: now when fewer
//!    than `rps` slots lie in the window before it, else the moment the oldest of the last `rps`
//!    leaves the window,
//! 4. writes the log less its oldest slot plus `slot` back (one write at offset 0 over the
//!    previous record, which is the same length when the rate is; a torn one reads as garbage,
//!    see below), unlocks, and
//! 5. sleeps until `slot`, outside the lock.
//!
//! Step 3 is the pure function [`decide`]. The lock is held for a few system calls, never across
//! an `.await` or a sleep. Threads of one process are serialised by a mutex in front of the
//! `flock` (a lock on one open file description is not exclusive between threads that share it).
//!
//! # Guarantee
//!
//! Slots never decrease from one reservation to the next (summed over every process using the
//! file), and each is at least `W` after the slot `rps` reservations before it: no window of `W`
//! = 1.05 s holds more than `rps` slots, and a reservation waits only when the last `rps` slots
//! all lie in the window before it (then exactly until the oldest leaves it). So a burst of up to
//! `rps` requests into an empty window goes at once. [`SharedLimiter::until_ready`] returns no
//! later than [`LATE_LIMIT`] (20 ms) after its slot: a caller that wakes up later than that (an
//! overloaded machine) gives its slot up (it stays in the log, unused) and takes a new one. Hence
//! no window of 1.05 s - 20 ms = 1.03 s holds more than `rps` admissions: no sliding one-second
//! window does, and 30 ms are left for the way from the admission to the wire. The exceptions: a
//! machine so overloaded that a request wakes up late 9 times in a row (it is then sent anyway,
//! with a warning), and a reset of lost state (below). Processes using one file should use the
//! same rate; with different rates the bound is the largest of them (each slot is at least `W`
//! after the slot its own `rps` reservations before, and slots never decrease).
//!
//! `CLOCK_MONOTONIC` is the same for every process unless one runs in its own time namespace
//! (not done by systemd; the units' `RestrictNamespaces=yes` forbids creating one). Under tokio's
//! paused test clock, `until_ready` does not wait for real time.
//!
//! # Failures
//!
//! * **An instance is killed** after reserving a slot: that slot goes unused (it still counts in
//!   the log for one window); nothing else changes. Killed while holding the lock: the kernel
//!   drops the lock with the process. A `SIGSTOP`ped holder makes the others' reservations fail
//!   with [`SharedLimitError::LockTimeout`] after [`LOCK_TIMEOUT`].
//! * **The file holds no valid log** (new, empty, short, garbage, a torn write whose checksum does
//!   not match, a number overflowing `u64`, slots out of order, a file of the earlier one-number
//!   format, or a slot more than [`MAX_AHEAD`] in the future): it is reset, with a warning unless
//!   empty, and nothing panics. A reset takes the log as `rps` slots at now, merged with the log
//!   this process last wrote (the `rps` latest of both), so the first slot is one window (1.05 s)
//!   after now, or later: no admission made before the loss shares a window with one after it.
//!   Reservations made before the loss whose slots are still ahead are covered only as far as
//!   this process saw them in its own last write; a burst after the reset may share a window with
//!   them. A new file costs the first requests of the boot that second.
//! * **The file is deleted** (or replaced): the next reservation in each process notices that
//!   the path no longer names its open file and reopens it (a new, empty file: reset as above,
//!   merged with the log the process last wrote). Each process also never reserves before the
//!   last slot it reserved.
//! * **Reboot**: `CLOCK_MONOTONIC` starts again near zero, and the file, on tmpfs (`/run`), is
//!   gone too. A file on persistent storage survives with stale slots: one far in the future
//!   (more than [`MAX_AHEAD`]) resets it, smaller ones are honoured once, delaying requests by at
//!   most [`MAX_AHEAD`] and one window.
//!
//! The file should live on tmpfs (e.g. `/run/chatapp-kommo-sync/kommo.limit`): its few system
//! calls then never block for long, which is why they run directly on the async task.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::core::hash::fnv1a64 as fnv1a;
use crate::http::RATE_MARGIN;

/// How long a reservation waits for another process's lock before giving up with
/// [`SharedLimitError::LockTimeout`]. The lock is normally held for microseconds.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// A stored slot further than this ahead of now is taken for garbage (e.g. left from before a
/// reboot) and the file reset. 60 s is 400 queued requests at 7 per second.
pub const MAX_AHEAD: Duration = Duration::from_secs(60);

/// [`SharedLimiter::until_ready`] admits a request at most this long after its slot; a caller
/// that wakes up later gives the slot up and reserves a new one.
pub const LATE_LIMIT: Duration = Duration::from_millis(20);

/// The highest `requests_per_second` a limit file supports (its record holds that many slots).
pub const MAX_RATE: u32 = 1000;

/// After this many late wake-ups in a row the request is admitted anyway (with a warning), so an
/// overloaded machine slows down rather than stops.
const MAX_LATE_RETRIES: u32 = 8;

/// Pause between two tries of a lock held by another process.
const LOCK_RETRY: Duration = Duration::from_millis(1);

/// The start of a record, naming its format and version.
const MAGIC: &[u8] = b"chatapp-kommo-sync shared limit v2 n=";
/// The header: [`MAGIC`], 4 digits (the slot count), ` fnv=`, 16 hex digits, a newline.
const HEADER_LEN: usize = MAGIC.len() + 4 + 5 + 16 + 1;
/// One slot: 20 digits (any u64) and a newline.
const ENTRY_LEN: usize = 21;
/// The longest valid record.
const MAX_RECORD_LEN: usize = HEADER_LEN + ENTRY_LEN * MAX_RATE as usize;

/// Mode of a file (and directory) this module creates: several instances run as one system
/// user, and its group may share the limit too. Set explicitly, whatever the umask.
const FILE_MODE: u32 = 0o660;
const DIR_MODE: u32 = 0o770;

/// Why the shared limit file could not be used. Every variant names the file; the caller decides
/// whether to fail or to go on with its in-process limiter alone.
#[derive(Debug, thiserror::Error)]
pub enum SharedLimitError {
    /// A system call on the file or its directory failed.
    #[error("shared rate limit file {}: cannot {op}: {source}", path.display())]
    Io {
        /// The limit file.
        path: PathBuf,
        /// What failed, e.g. `open` or `create its directory`.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Another process held the lock for longer than [`LOCK_TIMEOUT`].
    #[error(
        "shared rate limit file {}: still locked by another process after {} ms",
        path.display(),
        waited.as_millis()
    )]
    LockTimeout {
        /// The limit file.
        path: PathBuf,
        /// How long this reservation waited.
        waited: Duration,
    },
    /// `requests_per_second` was 0.
    #[error(
        "shared rate limit file {}: requests_per_second must be at least 1",
        path.display()
    )]
    ZeroRate {
        /// The limit file.
        path: PathBuf,
    },
    /// `requests_per_second` was above [`MAX_RATE`].
    #[error(
        "shared rate limit file {}: requests_per_second {rps} is above {MAX_RATE}",
        path.display()
    )]
    RateTooHigh {
        /// The limit file.
        path: PathBuf,
        /// The rate asked for.
        rps: u32,
    },
}

/// A rate limit shared through a file by every process that opens it (see the module docs).
/// Cloning is cheap and shares the open file; separate [`SharedLimiter::open`]s of one path
/// behave like separate processes.
#[derive(Debug, Clone)]
pub struct SharedLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    rps: u32,
    /// `W`: [`RATE_MARGIN`] seconds.
    window_ns: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// The log this handle last wrote: merged into a reset, and its last slot a lower bound for
    /// every later one.
    known: Vec<u64>,
}

/// Why [`decide`] did not use the stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The file was empty (new, or recreated).
    Empty,
    /// The record was not a valid log: garbage, torn, overflowing, out of order, or of another
    /// format (such as the earlier one-number record).
    Garbage,
    /// A slot lay more than [`MAX_AHEAD`] after now.
    TooFarAhead,
}

/// What one reservation decided ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// When the request may go (`CLOCK_MONOTONIC` ns).
    pub slot: u64,
    /// The log to write back: the last `rps` slots, this one last.
    pub log: Vec<u64>,
    /// Why the stored record was not used, if it was not.
    pub reset: Option<Reset>,
}

/// Step 3 of the algorithm, pure: the slot a reservation at `now` takes, given the stored
/// `record` (the file's bytes), `known` (the log this process last wrote, oldest first), the rate
/// `rps` (taken as 1 to [`MAX_RATE`]) and the window `window_ns`. Never panics, whatever the
/// bytes.
pub fn decide(record: &[u8], known: &[u64], now: u64, rps: u32, window_ns: u64) -> Decision {
    let rps = rps.clamp(1, MAX_RATE) as usize;
    let horizon = now.saturating_add(MAX_AHEAD.as_nanos() as u64);
    let (mut log, reset) = match decode_log(record) {
        Some(log) if log.last().is_some_and(|&t| t <= horizon) => (log, None),
        Some(_) => (Vec::new(), Some(Reset::TooFarAhead)),
        None if record.is_empty() => (Vec::new(), Some(Reset::Empty)),
        None => (Vec::new(), Some(Reset::Garbage)),
    };
    let known: Vec<u64> = known.iter().copied().filter(|&t| t <= horizon).collect();
    if reset.is_some() {
        // as if `rps` requests went out now, and every slot this process knows of
        log = vec![now; rps];
        log.extend_from_slice(&known);
        log.sort_unstable();
    }
    let oldest = log.first().copied().unwrap_or(now);
    if log.len() > rps {
        log.drain(..log.len() - rps);
    } else if log.len() < rps {
        log.splice(0..0, std::iter::repeat_n(oldest, rps - log.len()));
    }
    let latest = log.last().copied().unwrap_or(now);
    let slot = now
        .max(
            log.first()
                .copied()
                .unwrap_or(now)
                .saturating_add(window_ns),
        )
        .max(latest)
        .max(known.last().copied().unwrap_or(0));
    log.remove(0);
    log.push(slot);
    Decision { slot, log, reset }
}

/// The record of a log (slots in `CLOCK_MONOTONIC` ns, oldest first, 1 to [`MAX_RATE`] of
/// them), as the file holds it: the header `chatapp-kommo-sync shared limit v2 n=NNNN
/// fnv=HHHHHHHHHHHHHHHH` and a newline, where `NNNN` is the slot count (4 digits) and `H…` the
/// 64-bit FNV-1a hash of the body (16 lowercase hex digits); then the body, each slot as 20
/// decimal digits and a newline. The earlier format (one 20-digit number) does not start with the
/// header and so reads as no valid log.
pub fn encode_log(slots: &[u64]) -> Vec<u8> {
    let body: String = slots.iter().map(|t| format!("{t:020}\n")).collect();
    let mut record = MAGIC.to_vec();
    record.extend_from_slice(
        format!("{:04} fnv={:016x}\n", slots.len(), fnv1a(body.as_bytes())).as_bytes(),
    );
    record.extend_from_slice(body.as_bytes());
    record
}

/// The log in a well-formed record (see [`encode_log`]): 1 to [`MAX_RATE`] slots in
/// non-decreasing order, the hash matching and nothing after the last slot; else `None`.
pub fn decode_log(bytes: &[u8]) -> Option<Vec<u64>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (count, rest) = rest.split_at_checked(4)?;
    let count = parse_digits(count)?;
    let rest = rest.strip_prefix(b" fnv=")?;
    let (hash, rest) = rest.split_at_checked(16)?;
    if !hash.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let hash = u64::from_str_radix(std::str::from_utf8(hash).ok()?, 16).ok()?;
    let body = rest.strip_prefix(b"\n")?;
    let count = usize::try_from(count).ok()?;
    if count == 0 || count > MAX_RATE as usize || body.len() != count * ENTRY_LEN {
        return None;
    }
    if fnv1a(body) != hash {
        return None;
    }
    let mut log = Vec::with_capacity(count);
    for entry in body.chunks_exact(ENTRY_LEN) {
        let (digits, newline) = entry.split_at(ENTRY_LEN - 1);
        if newline != b"\n" {
            return None;
        }
        let t = parse_digits(digits)?;
        if log.last().is_some_and(|&prev| t < prev) {
            return None;
        }
        log.push(t);
    }
    Some(log)
}

/// ASCII decimal digits (and nothing else) as a u64; `None` if empty or overflowing.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl SharedLimiter {
    /// Opens the limit file at `path`, creating it (mode 0660) and its parent directories (mode
    /// 0770 less the umask) if missing, and checks that it can be locked. Admits at most
    /// `requests_per_second` (1 to [`MAX_RATE`]) requests in any window of 1.05 s, summed over
    /// every process using the file.
    pub fn open(path: &Path, requests_per_second: u32) -> Result<SharedLimiter, SharedLimitError> {
        if requests_per_second == 0 {
            return Err(SharedLimitError::ZeroRate {
                path: path.to_owned(),
            });
        }
        if requests_per_second > MAX_RATE {
            return Err(SharedLimitError::RateTooHigh {
                path: path.to_owned(),
                rps: requests_per_second,
            });
        }
        let file = open_file(path)?;
        match file.try_lock() {
            Ok(()) => file.unlock().map_err(io_error(path, "unlock"))?,
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(io_error(path, "lock")(e)),
        }
        Ok(SharedLimiter {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                rps: requests_per_second,
                window_ns: (RATE_MARGIN * 1e9).ceil() as u64,
                state: Mutex::new(State {
                    file,
                    known: Vec::new(),
                }),
            }),
        })
    }

    /// The limit file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The window `W` ([`RATE_MARGIN`] seconds) in which at most `requests_per_second` slots lie.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.inner.window_ns)
    }

    /// Waits until this process may send one request. Cancelling the future after the
    /// reservation wastes the slot, nothing more.
    pub async fn until_ready(&self) -> Result<(), SharedLimitError> {
        let mut late = 0;
        loop {
            let deadline = Instant::now() + LOCK_TIMEOUT;
            let slot = loop {
                if let Some(slot) = self.try_reserve()? {
                    break slot;
                }
                self.check_deadline(deadline)?;
                tokio::time::sleep(LOCK_RETRY).await;
            };
            let now = monotonic_ns();
            if slot > now {
                tokio::time::sleep(Duration::from_nanos(slot - now)).await;
            }
            let lateness = monotonic_ns().saturating_sub(slot);
            if lateness <= LATE_LIMIT.as_nanos() as u64 {
                return Ok(());
            }
            if late == MAX_LATE_RETRIES {
                tracing::warn!(
                    path = %self.inner.path.display(),
                    late_ms = lateness / 1_000_000,
                    "shared rate limit: woke up late {} times in a row; sending anyway",
                    late + 1
                );
                return Ok(());
            }
            late += 1;
            tracing::debug!(
                path = %self.inner.path.display(),
                late_ms = lateness / 1_000_000,
                "shared rate limit: woke up late; taking a new slot"
            );
        }
    }

    /// Reserves the next slot and returns how long to wait before sending (zero if the slot is
    /// now). Blocks for at most [`LOCK_TIMEOUT`] while another process holds the lock. Unlike
    /// [`SharedLimiter::until_ready`] it cannot check that the caller wakes up in time; prefer
    /// that in async code.
    pub fn reserve(&self) -> Result<Duration, SharedLimitError> {
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            if let Some(slot) = self.try_reserve()? {
                return Ok(Duration::from_nanos(slot.saturating_sub(monotonic_ns())));
            }
            self.check_deadline(deadline)?;
            std::thread::sleep(LOCK_RETRY);
        }
    }

    fn check_deadline(&self, deadline: Instant) -> Result<(), SharedLimitError> {
        if Instant::now() < deadline {
            return Ok(());
        }
        Err(SharedLimitError::LockTimeout {
            path: self.inner.path.clone(),
            waited: LOCK_TIMEOUT,
        })
    }

    /// One non-blocking attempt: the reserved slot (monotonic ns), or `None` when the lock is
    /// busy or the file had to be reopened.
    fn try_reserve(&self) -> Result<Option<u64>, SharedLimitError> {
        let inner = &*self.inner;
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&inner.path, "lock")(e)),
        }
        let result = self.reserve_locked(&mut state);
        // Closing the file would release the lock too; a failed unlock is not worth an error.
        let _ = state.file.unlock();
        result
    }

    /// Steps 2 to 4 of the algorithm, with the file locked.
    fn reserve_locked(&self, state: &mut State) -> Result<Option<u64>, SharedLimitError> {
        let inner = &*self.inner;
        let path = &inner.path;
        let held = state.file.metadata().map_err(io_error(path, "stat"))?;
        let named = match fs::metadata(path) {
            Ok(m) => Some((m.dev(), m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(path, "stat")(e)),
        };
        if named != Some((held.dev(), held.ino())) {
            tracing::warn!(path = %path.display(), "shared rate limit file was deleted or replaced; reopening it");
            state.file = open_file(path)?;
            return Ok(None);
        }

        // one byte more than the longest record, to see one too long
        let mut buf = vec![0u8; MAX_RECORD_LEN + 1];
        let len = read_at_most(&state.file, &mut buf).map_err(io_error(path, "read"))?;
        let record = &buf[..len];
        let decision = decide(
            record,
            &state.known,
            monotonic_ns(),
            inner.rps,
            inner.window_ns,
        );
        if let Some(reset @ (Reset::Garbage | Reset::TooFarAhead)) = decision.reset {
            tracing::warn!(
                path = %path.display(),
                content = %String::from_utf8_lossy(&record[..len.min(64)]).escape_debug(),
                ?reset,
                "shared rate limit file held no valid log (garbage, another format, or a time too far ahead); reset"
            );
        }
        let new = encode_log(&decision.log);
        state
            .file
            .write_all_at(&new, 0)
            .map_err(io_error(path, "write"))?;
        if len != new.len() {
            state
                .file
                .set_len(new.len() as u64)
                .map_err(io_error(path, "truncate"))?;
        }
        state.known = decision.log;
        Ok(Some(decision.slot))
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock std's `Instant` (and tokio's) reads on Linux, and
/// one for the whole system, so comparable between processes.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn read_at_most(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

fn io_error(path: &Path, op: &'static str) -> impl Fn(io::Error) -> SharedLimitError {
    move |source| SharedLimitError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// Opens the file read-write, creating it and its directory if missing.
fn open_file(path: &Path) -> Result<File, SharedLimitError> {
    let existing = || OpenOptions::new().read(true).write(true).open(path);
    match existing() {
        Ok(file) => return Ok(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, "open")(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io_error(path, "create its directory"))?;
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(file) => {
            // the umask (0077 under the systemd unit) may have cleared the group bits
            file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                .map_err(io_error(path, "set the mode of"))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            existing().map_err(io_error(path, "open"))
        }
        Err(e) => Err(io_error(path, "create")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    const MS: u64 = 1_000_000;
    const W: u64 = 1_050 * MS;

    #[test]
    fn records() {
        for log in [
            vec![42],
            vec![0, 0, 7, u64::MAX],
            vec![5; MAX_RATE as usize],
        ] {
            let record = encode_log(&log);
            assert_eq!(record.len(), HEADER_LEN + ENTRY_LEN * log.len());
            assert_eq!(decode_log(&record), Some(log));
        }
        assert!(encode_log(&[42]).starts_with(b"chatapp-kommo-sync shared limit v2 n=0001 fnv="));
        let good = encode_log(&[1, 2]);
        let mut bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\n".to_vec(),
            // the earlier format: one number
            b"00000000000000000042\n".to_vec(),
            encode_log(&[]),
            encode_log(&vec![0; MAX_RATE as usize + 1]),
            // out of order
            encode_log(&[2, 1]),
            good[..good.len() - 1].to_vec(),
            [&good[..], b"x"].concat(),
        ];
        // any one byte changed: the hash, the count, a digit, a newline
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x01;
            bad.push(b);
        }
        // a number overflowing u64, with a matching hash
        let body = b"99999999999999999999\n";
        let mut over = MAGIC.to_vec();
        over.extend_from_slice(format!("0001 fnv={:016x}\n", fnv1a(body)).as_bytes());
        over.extend_from_slice(body);
        bad.push(over);
        for b in bad {
            assert_eq!(decode_log(&b), None, "{:?}", String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn a_burst_up_to_rps_goes_at_once_and_the_next_waits_for_the_window() {
        let now = 100 * W;
        let mut record = encode_log(&[0; 7]);
        for _ in 0..7 {
            let d = decide(&record, &[], now, 7, W);
            assert_eq!((d.slot, d.reset), (now, None));
            record = encode_log(&d.log);
        }
        let d = decide(&record, &[], now + 10 * MS, 7, W);
        assert_eq!(d.slot, now + W);
        assert_eq!(d.log, [vec![now; 6], vec![now + W]].concat());
    }

    #[test]
    fn a_reset_puts_the_first_slot_one_window_ahead_and_keeps_what_this_process_knows() {
        let now = 100 * W;
        let old = format!("{now:020}\n");
        let far = encode_log(&[now + MAX_AHEAD.as_nanos() as u64 + 1]);
        for (record, reset) in [
            (&b""[..], Reset::Empty),
            (old.as_bytes(), Reset::Garbage),
            (&[0xff; 4096][..], Reset::Garbage),
            (&far[..], Reset::TooFarAhead),
        ] {
            let d = decide(record, &[], now, 7, W);
            assert_eq!((d.slot, d.reset), (now + W, Some(reset)));
            assert_eq!(d.log, [vec![now; 6], vec![now + W]].concat());
        }
        // slots this process reserved ahead of now still count
        let known = vec![now + 500 * MS; 7];
        let d = decide(b"", &known, now, 7, W);
        assert_eq!(d.slot, now + 500 * MS + W);
        // known slots too far ahead are dropped
        let d = decide(b"", &[u64::MAX], now, 7, W);
        assert_eq!(d.slot, now + W);
        // and its last slot bounds every later one, even when the file says less
        let d = decide(&encode_log(&[0]), &[now + 3 * W], now, 7, W);
        assert_eq!(d.slot, now + 3 * W);
    }

    #[test]
    fn a_log_of_another_length_is_fitted() {
        let now = 100 * W;
        // shorter (a lower rate wrote it): padded with its oldest, as the slots before it are
        // unknown and may have been as late, so it counts as a full window from its oldest
        let mut record = encode_log(&[now - 1, now, now]);
        let mut slots = vec![];
        for _ in 0..3 {
            let d = decide(&record, &[], now, 7, W);
            slots.push(d.slot);
            record = encode_log(&d.log);
        }
        assert_eq!(slots, [now - 1 + W; 3]);
        let d = decide(&encode_log(&[now - W, now - W]), &[], now, 7, W);
        assert_eq!(d.slot, now);
        // longer (a higher rate wrote it): its latest 2 count
        let d = decide(&encode_log(&[0, 0, 0, now - W, now - W]), &[], now, 2, W);
        assert_eq!(d.slot, now);
        let d = decide(&encode_log(&[0, 0, 0, now, now]), &[], now, 2, W);
        assert_eq!(d.slot, now + W);
        assert_eq!(d.log, vec![now, now + W]);
    }

    #[test]
    fn window_and_rates() {
        let dir = tempfile::tempdir().unwrap();
        let lim = SharedLimiter::open(&dir.path().join("l"), 7).unwrap();
        assert_eq!(lim.window(), Duration::from_millis(1050));
        assert!(matches!(
            SharedLimiter::open(&dir.path().join("l"), 0),
            Err(SharedLimitError::ZeroRate { .. })
        ));
        assert!(matches!(
            SharedLimiter::open(&dir.path().join("l"), MAX_RATE + 1),
            Err(SharedLimitError::RateTooHigh { .. })
        ));
    }

    /// The most times inside any window `[t, t + span)` (sorted times).
    fn most_in_any(times: &[u64], span: u64) -> usize {
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= span {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Event {
        /// Reserve a slot; wake up this much after it (0 when it is in the past: late by that
        /// much); a killed request never wakes up.
        Reserve { late: u64, killed: bool },
        /// Woken up for this slot: admitted, or late and reserving again.
        Wake { slot: u64, late: u64 },
    }

    proptest! {
        /// Processes sharing the record (each with its own memory of what it wrote), requests
        /// arriving at random, waking up late at random (up to 45 ms: beyond LATE_LIMIT they give
        /// the slot up and reserve again), some killed after reserving: no window of
        /// W - LATE_LIMIT holds more than `rps` admissions, a reservation waits only when the
        /// last `rps` slots all lie in the window before it (then exactly until the oldest
        /// leaves it), and a burst of up to `rps` into an empty window goes at once.
        #[test]
        fn processes_sharing_the_log_never_exceed_rps_in_any_window(
            rps in 1u32..9,
            procs in 1usize..5,
            burst in 1usize..9,
            arrivals in proptest::collection::vec((0usize..5, 0u64..400, 0u64..46, 0u8..12), 1..150),
        ) {
            let r = rps as usize;
            let burst = burst.min(r);
            let t0 = 10 * W;
            let late_limit = LATE_LIMIT.as_nanos() as u64;
            // a valid log of slots long gone: the window before t0 is empty
            let mut file = encode_log(&vec![0; r]);
            let mut known = vec![Vec::new(); procs];
            let mut queue = BinaryHeap::new();
            let mut seq = 0u64;
            let mut push = |queue: &mut BinaryHeap<_>, at: u64, proc: usize, ev: Event| {
                queue.push(Reverse((at, seq, proc, ev)));
                seq += 1;
            };
            for i in 0..burst {
                push(&mut queue, t0, i % procs, Event::Reserve { late: 0, killed: false });
            }
            let mut at = t0;
            for (proc, gap, late, kind) in arrivals {
                at += gap * MS;
                push(&mut queue, at, proc % procs, Event::Reserve { late: late * MS, killed: kind == 0 });
            }
            let mut admitted = vec![];
            while let Some(Reverse((now, _, proc, ev))) = queue.pop() {
                match ev {
                    Event::Reserve { late, killed } => {
                        let before = decode_log(&file).unwrap_or_default();
                        if before.last().is_some_and(|&t| t > now + MAX_AHEAD.as_nanos() as u64 / 2) {
                            // a caller with half a minute of requests queued gives up (with more
                            // than MAX_AHEAD queued the record would reset; tested apart)
                            continue;
                        }
                        let before = decode_log(&file).unwrap_or_default();
                        let d = decide(&file, &known[proc], now, rps, W);
                        prop_assert_eq!(d.reset, None);
                        prop_assert_eq!(before.len(), r);
                        prop_assert_eq!(d.slot, now.max(before[0] + W), "waits only behind a full window");
                        file = encode_log(&d.log);
                        known[proc] = d.log;
                        if !killed {
                            push(&mut queue, d.slot.max(now) + late, proc, Event::Wake { slot: d.slot, late });
                        }
                    }
                    Event::Wake { slot, late } => {
                        if now - slot > late_limit {
                            // gives the slot up; the next wake-up is less late, so it ends
                            push(&mut queue, now, proc, Event::Reserve { late: late / 2, killed: false });
                        } else {
                            admitted.push(now);
                        }
                    }
                }
            }
            admitted.sort_unstable();
            prop_assert!(admitted.iter().filter(|&&t| t == t0).count() >= burst, "the burst went at once");
            let most = most_in_any(&admitted, W - late_limit);
            prop_assert!(most <= r, "{} admissions in one window", most);
        }

        /// No record panics `decide`; a record it cannot use resets to a first slot at least a
        /// window ahead; a valid record round-trips.
        #[test]
        fn any_record_is_safe(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            log in proptest::collection::vec(any::<u64>(), 1..20),
            known in proptest::collection::vec(any::<u64>(), 0..10),
            now in any::<u64>(),
            rps in 1u32..20,
        ) {
            let d = decide(&bytes, &known, now, rps, W);
            prop_assert_eq!(d.log.len(), rps as usize);
            if d.reset.is_some() {
                prop_assert!(d.slot >= now.saturating_add(W));
            }
            let mut log = log;
            log.sort_unstable();
            prop_assert_eq!(decode_log(&encode_log(&log)), Some(log));
        }

        /// A torn write (the start of a new record over the rest of the previous one) reads as
        /// one of the two records or as garbage, never as a mix.
        #[test]
        fn a_torn_write_reads_as_garbage(
            a in proptest::collection::vec(any::<u64>(), 7),
            b in proptest::collection::vec(any::<u64>(), 7),
            cut in 0usize..200,
        ) {
            let (mut a, mut b) = (a, b);
            a.sort_unstable();
            b.sort_unstable();
            let (ra, rb) = (encode_log(&a), encode_log(&b));
            let cut = cut.min(ra.len());
            let torn = [&ra[..cut], &rb[cut..]].concat();
            let got = decode_log(&torn);
            prop_assert!(got.is_none() || got == Some(a.clone()) || got == Some(b.clone()));
        }
    }
}
