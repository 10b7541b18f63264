//! What the recent past says about the next hours: how fast records arrive and
//! each destination drains, sampled every second over the last 15 s, and
//! the two estimates operators plan by —
//!
//! - **catch-up ETA** (per destination): backlog bytes ÷ (its drain rate − the
//!   arrival rate): 0 with no backlog, infinite while the backlog does not shrink
//!   (an outage, a backend slower than the intake);
//! - **budget-full ETA**: the budget left ÷ (the arrival rate − the slowest
//!   destination's drain rate, which is what releases segments): 0 when full,
//!   infinite while the log does not grow.
//!
//! Rates are taken from counters (bytes stored, bytes drained), not from the log's
//! size, which moves in whole segments. When the catch-up ETA exceeds the
//! budget-full one, the backlog will not drain before the budget fills
//! (`TracespoolBacklogOutrunsBudget`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracespool_storage::{Cursor, Wal};

use crate::export::DestinationStatus;

/// The span of samples a rate is taken over.
const WINDOW: Duration = Duration::from_secs(15);
/// Rates need samples this far apart first.
const MIN_SPAN: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    /// Budget left (bytes).
    free: u64,
    /// Bytes stored since start (records as written).
    stored: u64,
    /// Per destination: bytes drained since start, and the backlog now.
    drained: Vec<u64>,
    backlogs: Vec<u64>,
}

/// The estimates as of the last sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Estimates {
    /// Per destination (in configuration order): seconds until its backlog is
    /// drained at the recent rates.
    pub catchup_seconds: Vec<(String, f64)>,
    /// Seconds until the log's budget is full at the recent rates.
    pub budget_full_seconds: f64,
}

#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<VecDeque<Sample>>,
    names: Vec<String>,
}

/// Time left for `amount` at `rate` per second: 0 with nothing left, infinite
/// when it does not move towards 0.
fn time_left(amount: f64, rate: f64) -> f64 {
    if amount <= 0.0 {
        0.0
    } else if rate <= 0.0 {
        f64::INFINITY
    } else {
        amount / rate
    }
}

impl Rates {
    pub fn new(names: Vec<String>) -> Self {
        Self {
            samples: Mutex::new(VecDeque::new()),
            names,
        }
    }

    fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap();
        while q
            .front()
            .is_some_and(|f| s.at.saturating_duration_since(f.at) > WINDOW)
        {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Samples the log, the bytes stored so far and every destination now.
    pub fn sample(
        &self,
        wal: &Wal,
        stored: u64,
        destinations: &[(Cursor, Arc<DestinationStatus>)],
    ) {
        let stats = wal.stats();
        self.push(Sample {
            at: Instant::now(),
            free: stats.max_bytes.saturating_sub(stats.bytes),
            stored,
            drained: destinations
                .iter()
                .map(|(_, s)| s.drained_bytes.load(std::sync::atomic::Ordering::Relaxed))
                .collect(),
            backlogs: destinations
                .iter()
                .map(|(c, _)| wal.backlog_of(c).bytes)
                .collect(),
        });
    }

    /// `None` until there is a window to take rates over.
    pub fn estimates(&self) -> Option<Estimates> {
        let q = self.samples.lock().unwrap();
        let (first, last) = (q.front()?, q.back()?);
        let span = last.at.saturating_duration_since(first.at);
        if span < MIN_SPAN {
            return None;
        }
        let secs = span.as_secs_f64();
        let per_s = |from: u64, to: u64| to.saturating_sub(from) as f64 / secs;
        let arriving = per_s(first.stored, last.stored);
        let draining: Vec<f64> = first
            .drained
            .iter()
            .zip(&last.drained)
            .map(|(&a, &b)| per_s(a, b))
            .collect();
        let catchup_seconds = self
            .names
            .iter()
            .zip(&last.backlogs)
            .zip(&draining)
            .map(|((name, &backlog), &d)| (name.clone(), time_left(backlog as f64, d - arriving)))
            .collect();
        let releasing = draining.iter().copied().reduce(f64::min).unwrap_or(0.0);
        Some(Estimates {
            catchup_seconds,
            budget_full_seconds: time_left(last.free as f64, arriving - releasing),
        })
    }
}

/// Samples every second until `stop`.
pub async fn run(
    rates: Arc<Rates>,
    wal: Wal,
    metrics: Arc<crate::metrics::Metrics>,
    destinations: Vec<(Cursor, Arc<DestinationStatus>)>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let stored = metrics.stored_bytes();
        let (r, w, d) = (rates.clone(), wal.clone(), destinations.clone());
        let _ = tokio::task::spawn_blocking(move || r.sample(&w, stored, &d)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(
        t0: Instant,
        s: u64,
        free: u64,
        stored: u64,
        drained: Vec<u64>,
        backlogs: Vec<u64>,
    ) -> Sample {
        Sample {
            at: t0 + Duration::from_secs(s),
            free,
            stored,
            drained,
            backlogs,
        }
    }

    #[test]
    fn estimates_follow_the_window_and_say_never_when_nothing_moves() {
        let r = Rates::new(vec!["a".into(), "b".into()]);
        let t0 = Instant::now();
        r.push(at(t0, 0, 1000, 0, vec![0, 0], vec![300, 0]));
        assert_eq!(r.estimates(), None, "one sample is no rate");
        // 10 s: 5 B/s arrive; "a" drains 15 B/s (net 10 B/s, 200 left: 20 s);
        // "b" drains nothing, so nothing is released: 5 B/s growth, 500 free.
        r.push(at(t0, 10, 500, 50, vec![150, 0], vec![200, 50]));
        let e = r.estimates().unwrap();
        assert_eq!(e.catchup_seconds[0], ("a".into(), 20.0));
        assert_eq!(e.catchup_seconds[1].1, f64::INFINITY);
        assert_eq!(e.budget_full_seconds, 100.0);
        // Samples older than the window drop out: from 10 s to 25 s nothing
        // arrives, "a" has no backlog (0), "b" drains 2 B/s: the log shrinks.
        r.push(at(t0, 25, 500, 50, vec![150, 30], vec![0, 20]));
        let e = r.estimates().unwrap();
        assert_eq!(e.catchup_seconds[0].1, 0.0);
        assert_eq!(e.catchup_seconds[1].1, 10.0);
        assert_eq!(e.budget_full_seconds, f64::INFINITY);
        // A full budget is full now, whatever the rate.
        r.push(at(t0, 25, 0, 50, vec![150, 30], vec![0, 20]));
        assert_eq!(r.estimates().unwrap().budget_full_seconds, 0.0);
    }
}
