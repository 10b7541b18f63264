//! Exponential backoff with full jitter, capped, honouring the server's hint.
//!
//! Attempt n waits a uniformly random time in `[0, min(max, initial · 2ⁿ)]`
//! ("full jitter": retries of many exporters spread out instead of arriving in
//! waves). A `RetryInfo` / `Retry-After` from the server replaces the random wait,
//! bounded by [`MAX_HINT`] so a bogus header cannot park a worker for days.

use std::time::Duration;

/// The longest server-suggested wait honoured.
pub const MAX_HINT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// How long to wait before the next attempt.
    pub fn next(&mut self, hint: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        match hint {
            Some(h) => h.min(MAX_HINT),
            None => {
                let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
                Duration::from_nanos(fastrand::u64(0..=nanos))
            }
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_waits_stay_under_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let c = b.ceiling();
            ceilings.push(c.as_millis());
            let d = b.next(None);
            assert!(d <= c, "{d:?} > {c:?}");
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        assert_eq!(b.attempts(), 8);
    }

    #[test]
    fn server_hint_replaces_the_jitter_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next(Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(b.next(Some(Duration::from_secs(10_000))), MAX_HINT);
    }

    #[test]
    fn waits_are_spread_out() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(b.next(None).as_millis() / 100);
        }
        assert!(seen.len() >= 5, "jitter too narrow: {seen:?}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            b.next(None);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }
}
