//! The in-process limits of one API client: its rate limiter (a sliding window, with a margin) and
//! its retry settings. The limit shared by every instance on a machine is
//! [`super::shared_limit`].

use std::time::Duration;

/// Limits, timeouts and retry settings of one API client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most requests in any one-second window.
    pub requests_per_second: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// First retry delay (doubled each retry, with jitter).
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Most attempts of one request.
    pub max_attempts: u32,
    /// Kommo: a 403 with an HTML body, or [`REPEATED_403`] 403s in a row, open the breaker for
    /// this long.
    pub block_cooloff: Option<Duration>,
}

impl Limits {
    /// The daemon's settings for an API: 0.5 s first retry doubling to 30 s, 8 attempts.
    pub fn standard(
        requests_per_second: u32,
        timeout: Duration,
        block_cooloff: Option<Duration>,
    ) -> Limits {
        Limits {
            requests_per_second,
            timeout,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 8,
            block_cooloff,
        }
    }
}

/// This many 403 answers in a row (any body) are taken as a block too.
pub const REPEATED_403: u32 = 3;

/// How much slower than `requests_per_second` the limiter spaces requests, so that network jitter
/// cannot make the server see more than `requests_per_second` in any one-second window.
pub const RATE_MARGIN: f64 = 1.05;

/// Builds the limiter: at most `rps` requests in any window of `RATE_MARGIN` seconds (so network
/// jitter cannot make the server see more than `rps` in any one second), a burst up to `rps` at
/// once (see [`super::window`]).
pub fn limiter(rps: u32) -> super::window::SlidingLimiter {
    super::window::SlidingLimiter::new(rps.max(1), Duration::from_secs_f64(RATE_MARGIN))
}
