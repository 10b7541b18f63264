//! `max_egress_bytes_per_s`: a token bucket on the bytes a destination is sent
//! (after compression), taken by every attempt, retries included.
//!
//! The bucket holds up to `burst` bytes and fills at `rate` bytes per second. A
//! request waits until the bucket holds its size (or, for a request larger than the
//! burst, until it is full) and then takes its size, possibly leaving the bucket in
//! debt: over any long window the bytes sent stay at the rate, whatever the sizes.
//!
//! With `live_first`, requests come from two lanes. The live lane takes first: a
//! backlog request does not take while a live one waits. The backlog lane also earns
//! a credit at `backlog_share` of the rate, and a request it has the credit for goes
//! even while live requests wait (taking from the bucket all the same, so the total
//! stays at the rate): the backlog always progresses at that share at least, and
//! gets whatever the live lane leaves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which lane a request comes from (`live_first`; otherwise every request is live).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Live,
    Backlog,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Backlog => "backlog",
        }
    }
}

#[derive(Debug)]
struct Level {
    /// Bytes available (negative: owed).
    tokens: f64,
    /// The backlog lane's credit (negative: owed).
    credit: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// The backlog lane's floor, as a share of the rate.
    share: f64,
    state: Mutex<Level>,
    /// Live requests waiting for the bucket.
    live_waiting: AtomicUsize,
}

/// How long a backlog request that could go but for a waiting live one looks again.
const YIELD: Duration = Duration::from_millis(5);

impl TokenBucket {
    /// `rate` bytes per second, at most `burst` bytes at once (both > 0). Starts
    /// full.
    pub fn new(rate: u64, burst: u64) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            share: 0.0,
            state: Mutex::new(Level {
                tokens: burst as f64,
                credit: 0.0,
                at: Instant::now(),
            }),
            live_waiting: AtomicUsize::new(0),
        }
    }

    /// The backlog lane's floor: `share` of the rate (0 < share < 1).
    pub fn with_backlog_share(mut self, share: f64) -> Self {
        self.share = share;
        self
    }

    /// How long the caller must wait before sending `bytes`, taking them if it
    /// need not (zero).
    fn try_take(&self, bytes: u64, lane: Lane, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap();
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.credit = (s.credit + elapsed * self.rate * self.share).min(self.burst);
        s.at = now;
        let n = bytes as f64;
        let need = n.min(self.burst);
        // Never zero: zero means taken.
        let refill = |have: f64, rate: f64| {
            Duration::from_secs_f64((need - have) / rate).max(Duration::from_micros(1))
        };
        match lane {
            Lane::Live if s.tokens >= need => {
                s.tokens -= n;
                Duration::ZERO
            }
            Lane::Live => refill(s.tokens, self.rate),
            Lane::Backlog => {
                let live_waits = self.live_waiting.load(Ordering::Acquire) > 0;
                if s.tokens >= need && !live_waits {
                    s.tokens -= n;
                    s.credit = (s.credit - n).max(0.0);
                    Duration::ZERO
                } else if self.share > 0.0 && s.credit >= need {
                    s.tokens -= n;
                    s.credit -= n;
                    Duration::ZERO
                } else {
                    let by_credit = if self.share > 0.0 {
                        refill(s.credit, self.rate * self.share)
                    } else {
                        Duration::MAX
                    };
                    let by_tokens = if s.tokens >= need {
                        YIELD
                    } else {
                        refill(s.tokens, self.rate)
                    };
                    by_credit.min(by_tokens)
                }
            }
        }
    }

    /// Waits until `bytes` may be sent from `lane`, and takes them. Cancel-safe:
    /// nothing is taken before the wait is over.
    pub async fn take(&self, bytes: u64, lane: Lane) -> Duration {
        let started = Instant::now();
        let _waiting = (lane == Lane::Live).then(|| Waiting::new(&self.live_waiting));
        loop {
            let wait = self.try_take(bytes, lane, Instant::now());
            if wait.is_zero() {
                return started.elapsed();
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Counts a live request as waiting for as long as it is held.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        assert_eq!(b.try_take(500, Lane::Live, t0), Duration::ZERO);
        assert_eq!(b.try_take(100, Lane::Live, t0), Duration::from_millis(100));
        assert_eq!(
            b.try_take(100, Lane::Live, t0 + Duration::from_millis(100)),
            Duration::ZERO
        );
        // Larger than the burst: waits for a full bucket, then owes the rest.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.try_take(2000, Lane::Live, t1), Duration::from_millis(500));
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(b.try_take(2000, Lane::Live, t2), Duration::ZERO);
        // 1500 owed + 100 more needs 1.6 s.
        assert_eq!(b.try_take(100, Lane::Live, t2), Duration::from_millis(1600));
        // Simulated: 10 s of 300-byte sends, each sent as soon as allowed.
        let b = TokenBucket::new(1000, 1000);
        let mut now = Instant::now();
        let end = now + Duration::from_secs(10);
        let mut sent = 0u64;
        while now < end {
            let w = b.try_take(300, Lane::Live, now);
            if w.is_zero() {
                sent += 300;
            } else {
                now += w;
            }
        }
        // The burst plus the rate, within one request.
        assert!((10_700..=11_300).contains(&sent), "{sent}");
    }

    /// Simulates 20 s of the backlog lane (and the live lane, if `live_wants`)
    /// sending as soon as allowed: (live bytes, backlog bytes) sent.
    fn contend(share: f64, live_wants: bool) -> (u64, u64) {
        let b = TokenBucket::new(10_000, 2_000).with_backlog_share(share);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(20);
        let (mut live_at, mut backlog_at) = (t0, t0);
        let (mut live, mut backlog) = (0u64, 0u64);
        // Events in time order; a live request between its first look and the end
        // of its wait counts as waiting.
        loop {
            let live_next = live_wants && live_at <= backlog_at;
            if (if live_next { live_at } else { backlog_at }) >= end {
                break;
            }
            if live_next {
                let w = b.try_take(1_000, Lane::Live, live_at);
                if w.is_zero() {
                    live += 1_000;
                } else {
                    live_at += w;
                }
            } else {
                let waiting = live_wants && live_at > backlog_at;
                b.live_waiting.store(waiting as usize, Ordering::Release);
                let w = b.try_take(1_500, Lane::Backlog, backlog_at);
                if w.is_zero() {
                    backlog += 1_500;
                } else {
                    backlog_at += w;
                }
            }
        }
        (live, backlog)
    }

    #[test]
    fn the_backlog_gets_its_share_while_live_wants_everything_and_all_when_live_is_quiet() {
        // Alone, the backlog gets the whole rate.
        let (_, backlog) = contend(0.2, false);
        assert!((195_000..=206_000).contains(&backlog), "{backlog}");
        // Both lanes wanting everything: the total stays at the rate, the backlog
        // gets about its share.
        let (live, backlog) = contend(0.2, true);
        let total = live + backlog;
        assert!((195_000..=206_000).contains(&total), "{live} + {backlog}");
        let share = backlog as f64 / total as f64;
        assert!((0.15..=0.3).contains(&share), "backlog share {share}");
    }
}
