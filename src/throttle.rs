//! Keeps a repeated log line from flooding the log: at most one per interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    started: Instant,
    /// Milliseconds since `started` of the last allowed event, plus one (0: never).
    last: AtomicU64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// True at most once per interval, across threads.
    pub fn allow(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + self.every.as_millis() as u64)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_once_per_interval() {
        let t = Throttle::new(Duration::from_millis(50));
        assert!(t.allow());
        assert!(!t.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.allow());
        assert!(!t.allow());
    }
}
