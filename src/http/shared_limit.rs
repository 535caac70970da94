//! A request rate limit shared by every process on the machine, kept in one small lock-protected
//! file (for Kommo, whose limit is per IP: several daemon instances on one VM must stay under it
//! together).
//!
//! # Algorithm
//!
//! The same GCRA as the in-process limiter ([`crate::http::limiter`]): burst 1, one request per
//! `period = RATE_MARGIN / requests_per_second` (1.05/rps s). The file holds one number, the
//! theoretical arrival time (TAT) of the next free slot, as `CLOCK_MONOTONIC` nanoseconds (one
//! clock for the whole system on Linux, so comparable between processes), written as 20 decimal
//! digits and a newline. To take a slot a process
//!
//! 1. takes an exclusive `flock` on the file (non-blocking tries, at most [`LOCK_TIMEOUT`]),
//! 2. checks that the path still names the file it locked (reopening it if it was deleted or
//!    replaced),
//! 3. reads the TAT and reserves `slot = max(TAT, now)`,
//! 4. writes `slot + period` back (one 21-byte write at offset 0 over the previous record; a torn
//!    one would read as garbage, see below), unlocks, and
//! 5. sleeps until `slot`, outside the lock.
//!
//! The lock is held for a few system calls, never across an `.await` or a sleep. Threads of one
//! process are serialised by a mutex in front of the `flock` (a lock on one open file description
//! is not exclusive between threads that share it).
//!
//! # Guarantee
//!
//! Reserved slots are at least one `period` apart, summed over every process using the file, so
//! any `requests_per_second + 1` consecutive slots span at least `rps * 1.05 / rps = 1.05 s`.
//! [`SharedLimiter::until_ready`] returns no later than [`LATE_LIMIT`] (20 ms) after its slot: a
//! caller that wakes up later than that (an overloaded machine) gives its slot up and takes a new
//! one. Hence any `rps + 1` consecutive admissions span at least 1.05 s - 20 ms = 1.03 s: no
//! sliding one-second window ever holds more than `requests_per_second` admissions, and 30 ms are
//! left for the way from the admission to the wire. The exceptions: a machine so overloaded that a
//! request wakes up late 9 times in a row (it is then sent anyway, with a warning), and a reset of
//! lost state (below). Processes using one file should use the same rate: each spaces the next
//! slot by its own period, so the bound is the largest rate among them.
//!
//! `CLOCK_MONOTONIC` is the same for every process unless one runs in its own time namespace
//! (not done by systemd; the units' `RestrictNamespaces=yes` forbids creating one). Under tokio's
//! paused test clock, `until_ready` does not wait for real time.
//!
//! # Failures
//!
//! * **An instance is killed** after reserving a slot: that slot goes unused (at most one period
//!   per killed request); nothing else changes. Killed while holding the lock: the kernel drops
//!   the lock with the process. A `SIGSTOP`ped holder makes the others' reservations fail with
//!   [`SharedLimitError::LockTimeout`] after [`LOCK_TIMEOUT`].
//! * **The file holds no valid TAT** (new, empty, short, garbage, overflowing, or more than
//!   [`MAX_AHEAD`] in the future): it is reset, with a warning unless empty, and nothing panics.
//!   The lost TAT may have had slots handed out up to a second or more ahead, so a reset puts the
//!   first slot one window (`requests_per_second` periods, 1.05 s) after now: that covers up to
//!   `requests_per_second` reservations outstanding when the state was lost. A new file costs
//!   the first request of the boot that second.
//! * **The file is deleted** (or replaced): the next reservation in each process notices that
//!   the path no longer names its open file and reopens it (a new, empty file: reset as above).
//!   Each process also keeps the largest TAT it wrote and never reserves before it.
//! * **Reboot**: `CLOCK_MONOTONIC` starts again near zero, and the file, on tmpfs (`/run`), is
//!   gone too. A file on persistent storage survives with a stale TAT: one far in the future
//!   (more than [`MAX_AHEAD`]) is reset, a smaller one is honoured once, delaying requests by at
//!   most [`MAX_AHEAD`].
//!
//! The file should live on tmpfs (e.g. `/run/chatapp-kommo-sync/kommo.limit`): its few system
//! calls then never block for long, which is why they run directly on the async task.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::http::RATE_MARGIN;

/// How long a reservation waits for another process's lock before giving up with
/// [`SharedLimitError::LockTimeout`]. The lock is normally held for microseconds.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// A stored TAT further than this ahead of now is taken for garbage (e.g. left from before a
/// reboot) and reset. 60 s is 400 queued requests at 7 per second.
pub const MAX_AHEAD: Duration = Duration::from_secs(60);

/// [`SharedLimiter::until_ready`] admits a request at most this long after its slot; a caller
/// that wakes up later gives the slot up and reserves a new one.
pub const LATE_LIMIT: Duration = Duration::from_millis(20);

/// After this many late wake-ups in a row the request is admitted anyway (with a warning), so an
/// overloaded machine slows down rather than stops.
const MAX_LATE_RETRIES: u32 = 8;

/// Pause between two tries of a lock held by another process.
const LOCK_RETRY: Duration = Duration::from_millis(1);

/// 20 digits (any u64) and a newline.
const RECORD_LEN: usize = 21;

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
    period_ns: u64,
    /// `requests_per_second` periods (1.05 s): how far ahead a reset puts the first slot.
    reset_ns: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// The largest TAT this handle wrote: a lower bound for the file's, which only grows unless
    /// the file is deleted or reset.
    last_tat: u64,
}

impl SharedLimiter {
    /// Opens the limit file at `path`, creating it (mode 0660) and its parent directories (mode
    /// 0770 less the umask) if missing, and checks that it can be locked. Admits at most `requests_per_second`
    /// requests in any one-second window, summed over every process using the file.
    pub fn open(path: &Path, requests_per_second: u32) -> Result<SharedLimiter, SharedLimitError> {
        if requests_per_second == 0 {
            return Err(SharedLimitError::ZeroRate {
                path: path.to_owned(),
            });
        }
        let file = open_file(path)?;
        match file.try_lock() {
            Ok(()) => file.unlock().map_err(io_error(path, "unlock"))?,
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(io_error(path, "lock")(e)),
        }
        let period_ns = (RATE_MARGIN * 1e9 / f64::from(requests_per_second)).ceil() as u64;
        Ok(SharedLimiter {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                period_ns,
                reset_ns: period_ns * u64::from(requests_per_second),
                state: Mutex::new(State { file, last_tat: 0 }),
            }),
        })
    }

    /// The limit file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The spacing between two slots: `RATE_MARGIN / requests_per_second`.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.inner.period_ns)
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

        let mut buf = [0u8; 64];
        let len = read_at_most(&state.file, &mut buf).map_err(io_error(path, "read"))?;
        let now = monotonic_ns();
        let horizon = now.saturating_add(MAX_AHEAD.as_nanos() as u64);
        let stored = parse_record(&buf[..len]);
        let tat = match stored {
            Some(tat) if tat <= horizon => tat,
            _ => {
                if len > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        content = %String::from_utf8_lossy(&buf[..len.min(32)]).escape_debug(),
                        "shared rate limit file held garbage or a time too far ahead; reset"
                    );
                }
                now.saturating_add(inner.reset_ns)
            }
        };
        let known = if state.last_tat <= horizon {
            state.last_tat
        } else {
            0
        };
        let slot = tat.max(known).max(now);
        let next = slot.saturating_add(inner.period_ns);
        let record = format!("{next:020}\n");
        state
            .file
            .write_all_at(record.as_bytes(), 0)
            .map_err(io_error(path, "write"))?;
        if len != RECORD_LEN {
            state
                .file
                .set_len(RECORD_LEN as u64)
                .map_err(io_error(path, "truncate"))?;
        }
        state.last_tat = next;
        Ok(Some(slot))
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

/// The TAT in a well-formed record, or `None`.
fn parse_record(bytes: &[u8]) -> Option<u64> {
    let (digits, newline) = bytes.split_at_checked(RECORD_LEN - 1)?;
    if newline != b"\n" || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
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

    #[test]
    fn records() {
        assert_eq!(parse_record(b"00000000000000000042\n"), Some(42));
        assert_eq!(
            parse_record(format!("{:020}\n", u64::MAX).as_bytes()),
            Some(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"\n",
            b"42\n",
            b"0000000000000000042\n",
            b"000000000000000000042\n",
            b"00000000000000000042",
            b"00000000000000000042\nx",
            b"0000000000000000004x\n",
            b"-0000000000000000042\n",
            b"99999999999999999999\n",
        ] {
            assert_eq!(
                parse_record(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn period_has_the_in_process_margin() {
        let dir = tempfile::tempdir().unwrap();
        let lim = SharedLimiter::open(&dir.path().join("l"), 7).unwrap();
        assert_eq!(lim.period(), Duration::from_millis(150));
        assert!(matches!(
            SharedLimiter::open(&dir.path().join("l"), 0),
            Err(SharedLimitError::ZeroRate { .. })
        ));
    }
}
