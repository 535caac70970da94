//! The HTTP server under `[daemon] listen` (`/metrics`, `/healthz`, `/readyz` and the webhook
//! routes): hyper's HTTP/1 connection driver with bounds on everything a client controls, so
//! that nobody can hold the endpoint open, exhaust the process's memory or file descriptors, or
//! keep `/healthz` from answering.
//!
//! Limits (constants here unless said otherwise):
//! - **Connections**: at most `[daemon] max_connections` (default 256) sockets are served at a
//!   time, enforced at accept time with a semaphore, never by refusing to accept: the listener is
//!   always drained, so the kernel's backlog never fills. When every slot is taken, the new
//!   connection evicts the *oldest idle* one (no request in a handler: still sending its headers,
//!   idle between keep-alive requests, or reading a response), or the oldest of all when none is
//!   idle, and is served once the evicted socket is closed. A connection is therefore never evicted
//!   before `max_connections` newer ones arrived: a `/healthz` probe, answered in milliseconds, is
//!   served even while a flood of slow or idle connections fills every slot. The socket count stays
//!   at `max_connections` + 1; the cap is also lowered to fit under the process's open-file limit
//!   (less [`FD_RESERVE`] for the state db, the API clients and the journal), with a warning.
//! - **Header read timeout** [`HEADER_READ_TIMEOUT`] (hyper's `header_read_timeout`): a request's
//!   head must arrive within it, counted from the connection's start or from the end of the
//!   previous response; an idle keep-alive connection is closed after it too.
//! - **Head size**: [`MAX_BUF`] bytes of read buffer per connection (hyper answers 431 past it),
//!   at most [`MAX_HEADERS`] header lines.
//! - **Body**: the webhook handlers check the token from the path before touching the body
//!   (a wrong one gets a 404 and `connection: close`; hyper then closes the socket instead of
//!   reading an unread body), take at most 64 KiB (413 past it, judged from `content-length` before
//!   reading when it is given) and give a body [`BODY_READ_TIMEOUT`] to arrive (408). The metrics
//!   routes read no body. See [`crate::service::webhooks`].
//! - **Connection age** [`MAX_CONNECTION_AGE`]: then the connection is shut down gracefully (the
//!   request in flight is answered, for at most [`BODY_READ_TIMEOUT`] more), which also bounds a
//!   client that never reads its responses.
//!
//! Worst case memory: `max_connections` × (64 KiB body + [`MAX_BUF`] head buffer + hyper's
//! per-connection state), about 25 MB at the default cap.
//!
//! A webhook flood that passes the token only grows a bounded set of named ids and wakes the
//! runner; the runner paces the cycles it triggers by the webhook budget (see
//! [`crate::service::triggers::HookBudget`]).

use crate::config::DEFAULT_MAX_CONNECTIONS;
use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long a client may take to send a request's head (and how long a keep-alive connection may
/// stay idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a webhook body may take to arrive once its head was accepted.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is shut down gracefully after this long, however busy.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// The read buffer of one connection (hyper's minimum is 8 KiB): bounds a request's head.
pub const MAX_BUF: usize = 16 * 1024;
/// Header lines per request.
pub const MAX_HEADERS: usize = 64;
/// File descriptors kept out of the connection cap for everything else the process opens.
pub const FD_RESERVE: usize = 64;

/// The bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at a time (see the module doc).
    pub max_connections: usize,
    /// hyper's header read timeout (also the keep-alive idle timeout).
    pub header_read_timeout: Duration,
    /// When a connection is shut down gracefully.
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connection_age: MAX_CONNECTION_AGE,
        }
    }
}

/// What the server did, for tests and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Connections evicted to make room for a new one.
    pub evicted: AtomicUsize,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// One open connection in the table.
struct Entry {
    /// Requests of it inside a handler now.
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// The open connections, oldest first (ids grow with each accept).
#[derive(Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Entry>,
}

impl Table {
    /// Evicts the oldest idle connection, or the oldest of all when none is idle.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .open
            .iter()
            .find(|(_, e)| e.busy.load(Ordering::SeqCst) == 0)
            .or_else(|| self.open.iter().next())
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.open.remove(&id)) {
            Some(e) => {
                e.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Removes its connection from the table when the connection's task ends.
struct Registered {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.table).open.remove(&self.id);
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a request as inside a handler while it lives.
struct BusyGuard(Arc<AtomicUsize>);

impl BusyGuard {
    fn enter(b: &Arc<AtomicUsize>) -> BusyGuard {
        b.fetch_add(1, Ordering::SeqCst);
        BusyGuard(b.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The soft limit on open files of this process (`/proc/self/limits`), if it can be read.
pub fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(usize::MAX);
    }
    soft.parse().ok()
}

/// The connection cap that fits under `fd_limit` (keeping [`FD_RESERVE`] for the rest).
pub fn effective_cap(wanted: usize, fd_limit: Option<usize>) -> usize {
    match fd_limit {
        Some(l) => wanted.min(l.saturating_sub(FD_RESERVE)).max(1),
        None => wanted.max(1),
    }
}

/// Serves `app` on `listener` within `limits` until the returned task is aborted.
pub fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
) -> (tokio::task::JoinHandle<()>, Arc<Stats>) {
    let cap = effective_cap(limits.max_connections, open_file_limit());
    if cap < limits.max_connections {
        tracing::warn!(
            key = "daemon.max_connections",
            wanted = limits.max_connections,
            serving = cap,
            "the open-file limit (LimitNOFILE=) is too low for daemon.max_connections: serving fewer connections"
        );
    }
    let stats = Arc::new(Stats::default());
    let task = tokio::spawn(accept_loop(listener, app, limits, cap, stats.clone()));
    (task, stats)
}

/// Accepts for ever; one task per connection. The only hand-written part of the server: hyper
/// has no connection cap or eviction of its own.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    cap: usize,
    stats: Arc<Stats>,
) {
    let slots = Arc::new(Semaphore::new(cap));
    let table = Arc::new(Mutex::new(Table::default()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut last_full_warning: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: the backlog keeps the connection until there is room
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(permit) = take_slot(&slots, &table, &stats, cap, &mut last_full_warning).await
        else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            stream,
            app: app.clone(),
            builder: builder.clone(),
            stats: stats.clone(),
            limits,
        };
        let (busy, evict, registered) = register(&table);
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            conn.serve(busy, evict).await;
            drop(registered);
            drop(permit);
        });
    }
}

/// A connection slot: at once when one is free, else after evicting the oldest idle connection
/// (warned about at most once a minute). `None`: the semaphore is closed (never, in practice).
async fn take_slot(
    slots: &Arc<Semaphore>,
    table: &Arc<Mutex<Table>>,
    stats: &Stats,
    cap: usize,
    last_full_warning: &mut Option<Instant>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(p) = slots.clone().try_acquire_owned() {
        return Some(p);
    }
    if lock(table).evict_one() {
        stats.evicted.fetch_add(1, Ordering::Relaxed);
    }
    if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
        *last_full_warning = Some(Instant::now());
        tracing::warn!(
            max_connections = cap,
            "HTTP endpoint: every connection slot is taken; evicting the oldest idle connections"
        );
    }
    // the evicted connection's task gives its slot back as it ends
    slots.clone().acquire_owned().await.ok()
}

/// Enters a new connection in the table: its busy counter (requests in flight, so that only an
/// idle connection is evicted), its eviction token, and the entry's guard.
fn register(table: &Arc<Mutex<Table>>) -> (Arc<AtomicUsize>, CancellationToken, Registered) {
    let busy = Arc::new(AtomicUsize::new(0));
    let evict = CancellationToken::new();
    let mut t = lock(table);
    let id = t.next;
    t.next += 1;
    t.open.insert(
        id,
        Entry {
            busy: busy.clone(),
            evict: evict.clone(),
        },
    );
    let registered = Registered {
        table: table.clone(),
        id,
    };
    (busy, evict, registered)
}

/// One accepted connection and what serving it needs.
struct Connection {
    stream: tokio::net::TcpStream,
    app: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    stats: Arc<Stats>,
    limits: Limits,
}

impl Connection {
    /// Serves it until it ends, is evicted, or reaches its maximum age (then it is shut down
    /// gracefully, given a body read's time to finish).
    async fn serve(self, busy: Arc<AtomicUsize>, evict: CancellationToken) {
        let app = self.app;
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = BusyGuard::enter(&busy);
            let call = app.clone().oneshot(req);
            async move {
                let r = call.await;
                drop(guard);
                r
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(self.stream), svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended");
            },
            _ = evict.cancelled() => tracing::debug!("HTTP connection evicted"),
            _ = tokio::time::sleep(self.limits.max_connection_age) => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = evict.cancelled() => {}
                    _ = tokio::time::sleep(BODY_READ_TIMEOUT) => {}
                }
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_open_file_limit() {
        assert_eq!(effective_cap(256, Some(1024)), 256);
        assert_eq!(effective_cap(256, Some(200)), 200 - FD_RESERVE);
        assert_eq!(effective_cap(256, Some(10)), 1);
        assert_eq!(effective_cap(256, None), 256);
        assert_eq!(effective_cap(256, Some(usize::MAX)), 256);
        assert!(open_file_limit().is_some_and(|l| l > 0));
    }

    #[test]
    fn eviction_takes_the_oldest_idle_connection_first() {
        let mut t = Table::default();
        let mut tokens = vec![];
        for id in 0..3u64 {
            let e = Entry {
                busy: Arc::new(AtomicUsize::new(usize::from(id == 0))),
                evict: CancellationToken::new(),
            };
            tokens.push(e.evict.clone());
            t.open.insert(id, e);
        }
        assert!(t.evict_one());
        assert!(!tokens[0].is_cancelled(), "busy: kept");
        assert!(tokens[1].is_cancelled(), "the oldest idle one goes");
        assert!(t.evict_one());
        assert!(tokens[2].is_cancelled());
        assert!(t.evict_one(), "none idle: the oldest busy one goes");
        assert!(tokens[0].is_cancelled());
        assert!(!t.evict_one());
    }
}
