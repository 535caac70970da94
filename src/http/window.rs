//! The per-API rate limit as a sliding window (issue 21): at most `max` requests in any window of
//! `span`, and a burst up to `max` goes out at once. A small cycle (an idle poll, a hint's few
//! reads) is not spaced out by the limiter when the last `span` saw few requests.
//!
//! Why by hand: a GCRA limiter (governor) with burst `b` at rate `r` admits up to `r + b - 1`
//! requests in some one-second window, so it can either burst or hold the sliding-second bound
//! (SPEC 6), not both. A log of the last `max` send times does both, in a few lines.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The decision core: the send times inside the window. Pure (the caller passes `now`).
#[derive(Debug, Clone)]
pub struct Window {
    max: usize,
    span: Duration,
    sent: VecDeque<Instant>,
}

impl Window {
    /// At most `max` (at least 1) sends in any window of `span`.
    pub fn new(max: u32, span: Duration) -> Window {
        Window {
            max: max.max(1) as usize,
            span,
            sent: VecDeque::new(),
        }
    }

    /// Takes a turn at `now` (recorded as a send), or says how long to wait before asking again.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.span)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.max {
            self.sent.push_back(now);
            return Ok(());
        }
        let oldest = self.sent.front().copied().unwrap_or(now);
        Err((oldest + self.span)
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)))
    }
}

/// [`Window`] shared by the tasks of one client: waits for a turn.
#[derive(Debug)]
pub struct SlidingLimiter {
    window: Mutex<Window>,
}

impl SlidingLimiter {
    /// At most `max` requests in any window of `span`.
    pub fn new(max: u32, span: Duration) -> SlidingLimiter {
        SlidingLimiter {
            window: Mutex::new(Window::new(max, span)),
        }
    }

    /// Waits until a request may go, and takes that turn.
    pub async fn until_ready(&self) {
        loop {
            let wait = {
                let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
                match w.admit(Instant::now()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The most admissions inside any window of `span` (sorted times).
    fn most_in_any(times: &[Instant], span: Duration) -> usize {
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= span {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    #[test]
    fn a_burst_up_to_max_goes_at_once_and_the_next_waits_for_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(7, Duration::from_secs(1));
        for _ in 0..7 {
            assert_eq!(w.admit(t0), Ok(()));
        }
        assert_eq!(w.admit(t0), Err(Duration::from_secs(1)));
        assert_eq!(w.admit(t0 + Duration::from_secs(1)), Ok(()));
    }

    proptest! {
        /// Whatever the arrival pattern (requests that retry until admitted, as the client does),
        /// no sliding window of `span` holds more than `max` admissions, and a request waits only
        /// while a full window is in front of it.
        #[test]
        fn never_more_than_max_in_any_sliding_window(
            max in 1u32..12,
            gaps in proptest::collection::vec(0u64..400, 1..200),
        ) {
            let span = Duration::from_millis(1000);
            let t0 = Instant::now();
            let mut w = Window::new(max, span);
            let mut at = t0;
            let mut admitted = vec![];
            for gap in gaps {
                at += Duration::from_millis(gap);
                loop {
                    match w.admit(at) {
                        Ok(()) => { admitted.push(at); break; }
                        Err(wait) => {
                            let in_window = admitted.iter().filter(|t| at.duration_since(**t) < span).count();
                            prop_assert_eq!(in_window, max as usize, "waits only behind a full window");
                            at += wait;
                        }
                    }
                }
            }
            prop_assert!(most_in_any(&admitted, span) <= max as usize);
        }
    }
}
