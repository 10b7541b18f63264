//! `max_egress_bytes_per_s`: a token bucket on the bytes a destination is sent
//! (after compression), taken by every attempt, retries included.
//!
//! The bucket holds up to `burst` bytes and fills at `rate` bytes per second. A
//! request waits until the bucket holds its size (or, for a request larger than the
//! burst, until it is full) and then takes its size, possibly leaving the bucket in
//! debt: over any long window the bytes sent stay at the rate, whatever the sizes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Bytes available (negative: owed) as of the instant beside them.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` bytes per second, at most `burst` bytes at once (both > 0). Starts
    /// full.
    pub fn new(rate: u64, burst: u64) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        }
    }

    /// How long the caller must wait before sending `bytes`, taking them if it
    /// need not (zero).
    fn try_take(&self, bytes: u64, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        let need = (bytes as f64).min(self.burst);
        if s.0 >= need {
            s.0 -= bytes as f64;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - s.0) / self.rate)
        }
    }

    /// Waits until `bytes` may be sent, and takes them. Cancel-safe: nothing is
    /// taken before the wait is over.
    pub async fn take(&self, bytes: u64) -> Duration {
        let started = Instant::now();
        loop {
            let wait = self.try_take(bytes, Instant::now());
            if wait.is_zero() {
                return started.elapsed();
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_the_rate_over_a_window_whatever_the_sizes() {
        let b = TokenBucket::new(1000, 500);
        let t0 = Instant::now();
        // Starts full: the burst goes at once, then the rate.
        assert_eq!(b.try_take(500, t0), Duration::ZERO);
        assert_eq!(b.try_take(100, t0), Duration::from_millis(100));
        assert_eq!(
            b.try_take(100, t0 + Duration::from_millis(100)),
            Duration::ZERO
        );
        // Larger than the burst: waits for a full bucket, then owes the rest.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.try_take(2000, t1), Duration::from_millis(500));
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(b.try_take(2000, t2), Duration::ZERO);
        // 1500 owed + 100 more needs 1.6 s.
        assert_eq!(b.try_take(100, t2), Duration::from_millis(1600));
        // Simulated: 10 s of 300-byte sends, each sent as soon as allowed.
        let b = TokenBucket::new(1000, 1000);
        let mut now = Instant::now();
        let end = now + Duration::from_secs(10);
        let mut sent = 0u64;
        while now < end {
            let w = b.try_take(300, now);
            if w.is_zero() {
                sent += 300;
            } else {
                now += w;
            }
        }
        // The burst plus the rate, within one request.
        assert!((10_700..=11_300).contains(&sent), "{sent}");
    }
}
