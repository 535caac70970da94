//! The in-process limits of one API client: its rate limiter (GCRA, burst 1, with a margin) and
//! its retry settings. The limit shared by every instance on a machine is
//! [`super::shared_limit`].

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
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

/// Builds the limiter: burst 1 at `rps / RATE_MARGIN`. GCRA with burst `b` at rate `r` admits up
/// to `r + b - 1` requests in a one-second window, so any burst would have to be paid for with a
/// lower sustained rate to stay inside the bound; a poller gains nothing from bursts.
pub fn limiter(rps: u32) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(RATE_MARGIN / f64::from(rps.max(1)));
    let quota = Quota::with_period(period)
        .expect("period > 0")
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_never_admits_more_than_rps_in_a_second() {
        // with burst 1 and period 1.05/rps, the (rps+1)-th admission is more than 1 s after the first
        let lim = limiter(7);
        let mut n = 0;
        while lim.check().is_ok() {
            n += 1;
        }
        assert_eq!(n, 1, "burst is 1");
    }
}
