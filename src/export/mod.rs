//! Forwarding: one replay worker per destination drains the log in seq order through
//! its own durable cursor, with up to `max_in_flight` exports at once.
//!
//! Each record is exported as-is (the stored protobuf bytes, zero-copy from the
//! segment mapping) with `idempotency-key: <instance-id>-<seq>`, the same on every
//! retry and after restarts. Records are never merged, so keys are stable by
//! construction. Outcomes:
//!
//! - accepted → the cursor acknowledges the seq (it advances once every earlier seq
//!   is acknowledged too); rejected spans of a partial success are logged;
//! - transient (unavailable, overloaded, timeout, refused/reset connection) → retried
//!   with exponential backoff and full jitter, honouring `RetryInfo`/`Retry-After`,
//!   for as long as the record is in the log: there is no give-up timer;
//! - auth failure → retried the same way, logged as an error on every attempt;
//! - permanent → kept as a dead letter (retried until the dead letter is on disk),
//!   then acknowledged.
//!
//! **Durable in order.** A delivery's ledger entry is written, the ledger synced,
//! then the cursor acknowledges and persists — and only then is the export's slot
//! free for the next record. So the records sent but not durably acknowledged never
//! exceed `max_in_flight`: after a crash or a power cut at most that many batches
//! per destination are delivered again, and no cursor is ever ahead of the ledger.
//!
//! **Lanes** (`live_first`). The live lane reads from the head of the log; when the
//! record it reaches is older than `live_lag` (an outage, a restart on a backlog),
//! it hands everything from that record to the newest one to the backlog lane and
//! goes on from the head. The backlog lane drains the ranges handed to it, oldest
//! or newest first (`backlog_order`), with its own `max_in_flight` exports and,
//! under an egress limit, what the live lane leaves (at least `backlog_share`).
//! Both ack on the same cursor, which keeps the acknowledged ranges above its
//! position (persisted, bounded), so a crash redelivers at most the exports in
//! flight of both lanes, and the reader after a restart skips what was acked.
//!
//! Gaps the reader reports (records evicted by `drop_oldest`, damaged, or seqs
//! skipped after an unclean stop) are acknowledged so the cursor moves on, once the
//! ledger entry that explains them is durable; the losses themselves are counted
//! and logged where the log reports them ([`crate::accounting`]). Every outcome's
//! ledger entry, metrics and log line are written by [`Accounts`].

pub mod client;
pub mod jetstream;
pub mod ratelimit;
pub mod retry;
pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracespool_storage::{Cursor, Gap, GapCause, ReadItem, Record};

use crate::accounting::Accounts;
use crate::config::DestinationConfig;
use crate::deadletter::DeadLetters;
use crate::ledger::now_ms;
use crate::metrics::DestinationOutcome;
use crate::throttle::Throttle;
use client::{Client, Export, Sent};
pub use ratelimit::Lane;
use retry::Backoff;

/// The idempotency key a record is exported with, the same on every attempt and
/// after restarts: `<instance-id>-<seq>`; for a record relayed from a JetStream
/// stream, the key its edge gave it (the message id), so the key is the same end
/// to end whichever gateway stored it.
pub fn export_key(record: &Record, instance_id: &str) -> String {
    match record
        .idempotency_key
        .strip_prefix(crate::receiver::RELAY_KEY_PREFIX)
        .and_then(|k| std::str::from_utf8(k).ok())
    {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => format!("{instance_id}-{}", record.seq),
    }
}

/// The last success and the last failure of a destination (for `status`).
#[derive(Debug, Default)]
pub struct DestinationStatus {
    pub last_success_ms: AtomicU64,
    pub last_error: Mutex<Option<(u64, String)>>,
    /// Records expired (`max_age`) since the last log line about it: the seq range
    /// and counts, logged at most once a second.
    expired: Mutex<ExpiredRun>,
    /// Payload bytes (as stored) of the records that reached their end: the drain
    /// rate.
    pub drained_bytes: AtomicU64,
    pub lanes: LaneState,
}

/// What each lane holds (`live_first`): the ranges handed to the backlog lane,
/// the one it reads, and where the live lane's stretch began.
#[derive(Debug, Default)]
pub struct LaneState {
    handed: Mutex<BTreeMap<u64, u64>>,
    reading: Mutex<Option<(u64, u64)>>,
    live_from: AtomicU64,
    wake: Notify,
}

/// Ranges waiting for the backlog lane at most: beyond, the live lane stops
/// leaving ranges behind and goes on in order (each range is an acknowledged
/// range of the cursor's, and those are persisted up to a bound).
const MAX_HANDED: usize = 64;

impl LaneState {
    /// Hands `first..=last` to the backlog lane; false when it holds too many.
    fn hand_over(&self, first: u64, last: u64) -> bool {
        let mut h = self.handed.lock().unwrap();
        if h.len() >= MAX_HANDED {
            return false;
        }
        // Adjacent to the range before it: one range.
        let merged = h
            .range(..first)
            .next_back()
            .filter(|(_, &e)| e + 1 == first)
            .map(|(&s, _)| s);
        match merged {
            Some(s) => {
                h.insert(s, last);
            }
            None => {
                h.insert(first, last);
            }
        }
        drop(h);
        self.wake.notify_one();
        true
    }

    /// The next range for the backlog lane, in its order.
    fn take(&self, order: crate::config::BacklogOrder) -> Option<(u64, u64)> {
        let mut h = self.handed.lock().unwrap();
        let r = match order {
            crate::config::BacklogOrder::OldestFirst => h.pop_first(),
            crate::config::BacklogOrder::NewestFirst => h.pop_last(),
        }?;
        *self.reading.lock().unwrap() = Some(r);
        Some(r)
    }

    /// The seqs each lane still holds that `cursor` has not acknowledged:
    /// (live, backlog). Without lanes everything is live.
    pub fn waiting(&self, cursor: &Cursor) -> (u64, u64) {
        let (pos, above) = (cursor.position(), cursor.acked_above());
        let unacked = |a: u64, b: u64| -> u64 {
            let a = a.max(pos + 1);
            if a > b {
                return 0;
            }
            let acked: u64 = above
                .iter()
                .map(|&(s, e)| e.min(b).saturating_sub(s.max(a)) + u64::from(e.min(b) >= s.max(a)))
                .sum();
            (b - a + 1).saturating_sub(acked)
        };
        let last = cursor.last_seq();
        let mut backlog: u64 = self
            .handed
            .lock()
            .unwrap()
            .iter()
            .map(|(&a, &b)| unacked(a, b))
            .sum();
        if let Some((a, b)) = *self.reading.lock().unwrap() {
            backlog += unacked(a, b);
        }
        let live_from = self.live_from.load(Ordering::Relaxed).max(1);
        (unacked(live_from, last), backlog)
    }
}

#[derive(Debug, Default)]
struct ExpiredRun {
    first_seq: u64,
    last_seq: u64,
    records: u64,
    spans: u64,
    logged: Option<Instant>,
}

pub struct Worker {
    pub name: String,
    pub cfg: DestinationConfig,
    pub client: Client,
    pub cursor: Cursor,
    pub instance_id: String,
    pub dead_letters: DeadLetters,
    pub status: Arc<DestinationStatus>,
    pub accounts: Arc<Accounts>,
}

/// Transient failures are logged at most this often per destination (each auth
/// failure is logged).
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Worker {
    /// Runs until `stop` is cancelled. Exports in flight at that moment are
    /// abandoned; their records are exported again after the restart.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let throttle = Arc::new(Throttle::new(WARN_EVERY));
        let (commits, queue) = mpsc::unbounded_channel();
        let committer = tokio::spawn(commit_in_groups(
            this.accounts.ledger().clone(),
            this.cursor.clone(),
            queue,
        ));
        let run = Run {
            stop,
            throttle,
            commits: Commits(commits),
        };
        tracing::info!(
            destination = %this.name,
            endpoint = %this.cfg.target(),
            protocol = ?this.cfg.protocol,
            from_seq = this.cursor.position() + 1,
            live_first = this.cfg.live_first,
            "replay worker started"
        );
        let backlog = this
            .cfg
            .live_first
            .then(|| tokio::spawn(this.clone().backlog_lane(run.clone())));
        this.clone().live_lane(&run).await;
        if let Some(b) = backlog {
            let _ = b.await;
        }
        // The committer ends once the last commit queued is done.
        drop(run);
        let _ = committer.await;
        tracing::info!(destination = %this.name, position = this.cursor.position(), "replay worker stopped");
    }

    /// The live lane (the only one without `live_first`): the log in seq order from
    /// the cursor's position, with up to `max_in_flight` exports at once.
    async fn live_lane(self: Arc<Self>, run: &Run) {
        let stop = &run.stop;
        let mut reader = self.cursor.reader();
        self.status
            .lanes
            .live_from
            .store(reader.next_seq(), Ordering::Relaxed);
        let slots = Arc::new(Semaphore::new(self.cfg.max_in_flight));
        let mut tasks = JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = stop.cancelled() => break,
            };
            let item = tokio::select! {
                item = reader.next() => item,
                _ = stop.cancelled() => break,
            };
            self.reap(&mut tasks);
            match item {
                Err(e) => {
                    tracing::info!(destination = %self.name, error = %e, "log closed; replay worker stops");
                    break;
                }
                Ok(ReadItem::Gap(gap)) => {
                    self.skip_gap(&gap).await;
                    drop(permit);
                }
                Ok(ReadItem::Record(record)) => {
                    if self.behind(&record) {
                        // Everything from here to the newest record is backlog now;
                        // the live lane goes on from the head.
                        let head = self.cursor.last_seq().max(record.seq);
                        if self.status.lanes.hand_over(record.seq, head) {
                            tracing::info!(
                                destination = %self.name,
                                first_seq = record.seq,
                                last_seq = head,
                                "live lane behind; these records go to the backlog lane"
                            );
                            reader = self.cursor.reader_between(head + 1, u64::MAX);
                            self.status
                                .lanes
                                .live_from
                                .store(head + 1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    self.spawn_delivery(&mut tasks, record, Lane::Live, permit, run);
                }
            }
        }
        tasks.shutdown().await;
    }

    /// With `live_first`: the live lane reached `record` later than `live_lag`
    /// after it arrived.
    fn behind(&self, record: &Record) -> bool {
        self.cfg.live_first
            && record
                .received_at
                .elapsed()
                .is_ok_and(|age| age > self.cfg.live_lag.0)
    }

    /// The backlog lane (`live_first`): the ranges the live lane left behind, each
    /// in `backlog_order`, with up to `max_in_flight` exports at once of its own.
    async fn backlog_lane(self: Arc<Self>, run: Run) {
        use crate::config::BacklogOrder;
        let stop = &run.stop;
        let slots = Arc::new(Semaphore::new(self.cfg.max_in_flight));
        let mut tasks = JoinSet::new();
        let lanes = &self.status.lanes;
        'ranges: loop {
            let (first, last) = loop {
                if let Some(r) = lanes.take(self.cfg.backlog_order) {
                    break r;
                }
                tokio::select! {
                    _ = lanes.wake.notified() => {}
                    _ = stop.cancelled() => break 'ranges,
                }
            };
            tracing::info!(destination = %self.name, first_seq = first, last_seq = last, order = ?self.cfg.backlog_order, "backlog lane draining");
            let mut range = match self.cfg.backlog_order {
                BacklogOrder::OldestFirst => {
                    Range::Up(Box::new(self.cursor.reader_between(first, last)))
                }
                BacklogOrder::NewestFirst => Range::Down(self.cursor.newest_first(first, last)),
            };
            loop {
                let permit = tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
                    _ = stop.cancelled() => break 'ranges,
                };
                self.reap(&mut tasks);
                // Every seq of the range is visible: a read that finds nothing
                // means the range is through.
                let item = match &mut range {
                    Range::Up(r) => r.try_next(),
                    Range::Down(d) => d.next_item(),
                };
                match item {
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(destination = %self.name, error = %e, "log closed; backlog lane stops");
                        break 'ranges;
                    }
                    Ok(Some(ReadItem::Gap(gap))) => {
                        self.skip_gap(&gap).await;
                        drop(permit);
                    }
                    Ok(Some(ReadItem::Record(record))) => {
                        self.spawn_delivery(&mut tasks, record, Lane::Backlog, permit, &run);
                    }
                }
            }
            *lanes.reading.lock().unwrap() = None;
            tracing::info!(destination = %self.name, first_seq = first, last_seq = last, "backlog range read");
        }
        tasks.shutdown().await;
    }

    fn spawn_delivery(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        record: Record,
        lane: Lane,
        permit: tokio::sync::OwnedSemaphorePermit,
        run: &Run,
    ) {
        let w = self.clone();
        let run = run.clone();
        tasks.spawn(async move {
            w.deliver(record, lane, &run.stop, &run.throttle, &run.commits)
                .await;
            drop(permit);
        });
    }

    fn reap(&self, tasks: &mut JoinSet<()>) {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(destination = %self.name, error = %e, "export task failed");
            }
        }
    }

    /// A gap the reader reported: logged, and acknowledged once the ledger entry
    /// that explains it is durable.
    async fn skip_gap(&self, gap: &Gap) {
        match &gap.cause {
            // Evictions are counted and written to the ledger when they happen
            // (`Accounts::hook`).
            GapCause::NotRetained => tracing::debug!(
                destination = %self.name,
                first_seq = gap.first_seq,
                last_seq = gap.last_seq,
                "skipping records no longer on disk"
            ),
            GapCause::Skipped => tracing::debug!(
                destination = %self.name,
                first_seq = gap.first_seq,
                last_seq = gap.last_seq,
                "skipping seqs the log never assigned"
            ),
            GapCause::Damaged(lost) => self.accounts.skipped_damage(&self.name, gap, lost),
        }
        // The entry explaining the gap (written when the log reported it) is
        // durable before the cursor moves past it.
        let ledger = self.accounts.ledger().clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || ledger.sync()).await {
            tracing::error!(destination = %self.name, error = %e, "cannot sync the audit ledger; the gap is acknowledged later");
        } else {
            self.ack(gap.first_seq, gap.last_seq);
        }
    }

    /// Acknowledges seqs that were skipped, not delivered.
    fn ack(&self, first: u64, last: u64) {
        if let Err(e) = self.cursor.ack_range(first, last) {
            tracing::error!(destination = %self.name, first, last, error = %e, "cursor ack failed");
        }
    }

    /// Records an outcome through `write` (an [`Accounts`] method writing its
    /// ledger entry), trying again (logged) until the disk takes it: the state
    /// change it records waits for it. False if stopped meanwhile.
    async fn record(
        &self,
        write: impl Fn() -> std::io::Result<()>,
        stop: &CancellationToken,
    ) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match write() {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(destination = %self.name, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write the audit ledger; the record stays in flight until it can");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return false,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// A record reached its end (delivered or dead-lettered) and its ledger entry is
    /// written: the ledger is synced, then the cursor acknowledges and persists
    /// (by the committer, for every record that reached its end meanwhile at once).
    /// Returns once that is durable (or on stop). If `drop_oldest` evicted the record
    /// meanwhile, it was counted as dropped for this destination: say it was not.
    async fn commit(
        &self,
        record: &Record,
        how: &str,
        stop: &CancellationToken,
        commits: &Commits,
    ) {
        let seq = record.seq;
        let mut wait = Duration::from_millis(100);
        loop {
            let (reply, done) = oneshot::channel();
            let r = match commits.0.send(Commit { seq, reply }) {
                Ok(()) => done
                    .await
                    .unwrap_or_else(|_| Err("the committer stopped".into())),
                Err(_) => Err("the committer stopped".into()),
            };
            match r {
                Ok(ack) => {
                    self.status
                        .drained_bytes
                        .fetch_add(record.payload.len() as u64, Ordering::Relaxed);
                    if ack.after_eviction {
                        self.accounts
                            .completed_after_eviction(&self.name, record, how);
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(destination = %self.name, seq, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot make the delivery durable; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    fn count_attempt(&self, outcome: &'static str, took: Duration, wire: u64) {
        let dest = self.accounts.metrics().dest(&self.name);
        self.accounts
            .metrics()
            .export_requests
            .get_or_create(&DestinationOutcome {
                destination: self.name.clone(),
                outcome,
            })
            .inc();
        self.accounts
            .metrics()
            .export_duration
            .get_or_create(&dest)
            .observe(took.as_secs_f64());
        self.accounts
            .metrics()
            .egress_bytes
            .get_or_create(&dest)
            .inc_by(wire);
    }

    /// A failure worth retrying in `wait`: kept for `status`, logged (a warning at
    /// most every `WARN_EVERY`, debug otherwise).
    fn will_retry(
        &self,
        reason: &str,
        what: &str,
        seq: u64,
        attempt: u32,
        wait: Duration,
        throttle: &Throttle,
    ) {
        self.failed(reason);
        if throttle.allow() {
            tracing::warn!(
                destination = %self.name,
                seq,
                attempt,
                retry_in_ms = wait.as_millis() as u64,
                reason = %reason,
                "{what}"
            );
        } else {
            tracing::debug!(destination = %self.name, seq, attempt, reason = %reason, "{what}");
        }
    }

    /// Older than `max_age` now (checked before every attempt: a record retried
    /// past its age is given up too).
    fn too_old(&self, record: &Record) -> bool {
        self.cfg
            .max_age
            .is_some_and(|max| record.received_at.elapsed().is_ok_and(|age| age > max.0))
    }

    /// Expired records are logged as runs: at most one line a second with the seq
    /// range and counts since the last, and what is left of a run when the next
    /// record that is not expired comes (`None`).
    fn log_expired(&self, record: Option<&Record>) {
        let mut run = self.status.expired.lock().unwrap();
        match record {
            Some(r) => {
                if run.records == 0 {
                    run.first_seq = r.seq;
                }
                run.first_seq = run.first_seq.min(r.seq);
                run.last_seq = run.last_seq.max(r.seq);
                run.records += 1;
                run.spans += r.span_count as u64;
            }
            None if run.records == 0 => return,
            None => {}
        }
        if record.is_none()
            || run
                .logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                destination = %self.name,
                first_seq = run.first_seq,
                last_seq = run.last_seq,
                records = run.records,
                spans = run.spans,
                max_age = %humantime::format_duration(self.cfg.max_age.map(|d| d.0).unwrap_or_default()),
                "records older than max_age given up for this destination (expired; in the audit ledger)"
            );
            *run = ExpiredRun {
                logged: Some(Instant::now()),
                ..Default::default()
            };
        }
    }

    fn failed(&self, reason: &str) {
        *self.status.last_error.lock().unwrap() = Some((now_ms(), reason.to_string()));
    }

    async fn deliver(
        &self,
        record: Record,
        lane: Lane,
        stop: &CancellationToken,
        throttle: &Throttle,
        commits: &Commits,
    ) {
        let seq = record.seq;
        let key = export_key(&record, &self.instance_id);
        if !crate::payload::known(record.codec) {
            self.dead_letter(
                &record,
                &key,
                0,
                &format!("unknown record codec {}", record.codec.0),
                stop,
                commits,
            )
            .await;
            return;
        }
        let mut backoff = Backoff::new(
            self.cfg.retry.initial_backoff.0,
            self.cfg.retry.max_backoff.0,
        );
        self.log_expired(None);
        loop {
            if self.too_old(&record) {
                let expired = || self.accounts.expired(&self.name, &record);
                if self.record(expired, stop).await {
                    self.log_expired(Some(&record));
                    self.commit(&record, "expired", stop, commits).await;
                }
                return;
            }
            let attempt = backoff.attempts() + 1;
            let started = Instant::now();
            let export = Export {
                payload: record.payload.clone(),
                codec: record.codec,
                key: &key,
                seq,
                spans: record.span_count,
                lane,
            };
            let (sent, wire) = self.client.send(export).await;
            let took = started.elapsed();
            let wait = match sent {
                Sent::Ok {
                    rejected,
                    message,
                    receipt,
                } => {
                    self.count_attempt("success", took, wire);
                    self.status
                        .last_success_ms
                        .store(now_ms(), Ordering::Relaxed);
                    if rejected > 0 || !message.is_empty() {
                        let metrics = self.accounts.metrics();
                        metrics
                            .spans_rejected_by_backend
                            .get_or_create(&metrics.dest(&self.name))
                            .inc_by(rejected.max(0) as u64);
                        tracing::warn!(
                            destination = %self.name,
                            seq,
                            rejected_spans = rejected,
                            detail = %message,
                            "backend accepted the batch partially"
                        );
                    }
                    // The ledger hears of it before the cursor moves past it.
                    let delivered = || {
                        self.accounts
                            .delivered(&self.name, &record, attempt, receipt.as_ref())
                    };
                    if self.record(delivered, stop).await {
                        self.commit(&record, "delivered", stop, commits).await;
                    }
                    return;
                }
                Sent::Permanent { reason } => {
                    self.count_attempt("permanent", took, wire);
                    self.failed(&reason);
                    self.dead_letter(&record, &key, attempt, &reason, stop, commits)
                        .await;
                    return;
                }
                Sent::Auth { reason } => {
                    self.count_attempt("auth", took, wire);
                    self.failed(&reason);
                    let wait = backoff.next(None);
                    tracing::error!(
                        destination = %self.name,
                        seq,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        reason = %reason,
                        "destination refused our credentials; retrying until they are fixed"
                    );
                    wait
                }
                Sent::Full { reason } => {
                    self.count_attempt("full", took, wire);
                    let wait = backoff.next(None);
                    let what = "destination is full; the record stays in our log and is retried";
                    self.will_retry(&reason, what, seq, attempt, wait, throttle);
                    wait
                }
                Sent::Transient {
                    reason,
                    retry_after,
                } => {
                    self.count_attempt("retryable", took, wire);
                    let wait = backoff.next(retry_after);
                    self.will_retry(
                        &reason,
                        "export failed; retrying",
                        seq,
                        attempt,
                        wait,
                        throttle,
                    );
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            if self.cursor.is_evicted(seq) {
                // drop_oldest deleted it while we retried; it is counted as dropped.
                // Stop holding its (deleted) segment's pages.
                tracing::debug!(destination = %self.name, seq, "record evicted while being retried; giving up on it");
                self.ack(seq, seq);
                return;
            }
            self.accounts
                .metrics()
                .export_retries
                .get_or_create(&self.accounts.metrics().dest(&self.name))
                .inc();
        }
    }

    /// Keeps a permanently refused record as a dead letter, trying again until the
    /// dead letter is on disk (a full disk, a failing one): until then the record
    /// stays in flight and in the log, never lost and never stuck for good.
    async fn dead_letter(
        &self,
        record: &Record,
        key: &str,
        attempts: u32,
        reason: &str,
        stop: &CancellationToken,
        commits: &Commits,
    ) {
        let mut wait = Duration::from_millis(200);
        loop {
            match self
                .dead_letters
                .store(&self.name, record, key, attempts, reason)
            {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(
                        destination = %self.name,
                        seq = record.seq,
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "could not write a dead letter; the record stays in the log and in flight until it can be written"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
        let recorded = || {
            self.accounts
                .dead_lettered(&self.name, record, attempts, reason)
        };
        if self.record(recorded, stop).await {
            self.commit(record, "dead_letter", stop, commits).await;
        }
    }
}

/// What every export of a worker shares: the stop signal, the warning throttle
/// and the committer's queue.
#[derive(Clone)]
struct Run {
    stop: CancellationToken,
    throttle: Arc<Throttle>,
    commits: Commits,
}

/// What the backlog lane reads a range with, in its order.
enum Range {
    Up(Box<tracespool_storage::Reader>),
    Down(tracespool_storage::NewestFirst),
}

/// A record whose end (delivery, dead letter) is in the ledger, waiting for its
/// cursor acknowledgement to be durable.
struct Commit {
    seq: u64,
    reply: oneshot::Sender<Result<tracespool_storage::Ack, String>>,
}

#[derive(Clone)]
struct Commits(mpsc::UnboundedSender<Commit>);

/// Makes ends durable in groups: takes every commit queued, syncs the ledger once,
/// acknowledges each seq and persists the cursor once, then answers them all — so
/// a delivery waits for two syncs, not for its turn behind everyone else's, and
/// the slot of each export is still freed only once its acknowledgement is on
/// disk. A failure is answered to the whole group, which tries again.
async fn commit_in_groups(
    ledger: Arc<crate::ledger::Ledger>,
    cursor: Cursor,
    mut queue: mpsc::UnboundedReceiver<Commit>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while let Ok(more) = queue.try_recv() {
            group.push(more);
        }
        let seqs: Vec<u64> = group.iter().map(|c| c.seq).collect();
        let (ledger, c) = (ledger.clone(), cursor.clone());
        let done = tokio::task::spawn_blocking(
            move || -> Result<Vec<Result<tracespool_storage::Ack, String>>, String> {
                ledger
                    .sync()
                    .map_err(|e| format!("syncing the audit ledger: {e}"))?;
                let acks: Vec<_> = seqs
                    .iter()
                    .map(|&seq| c.ack(seq).map_err(|e| e.to_string()))
                    .collect();
                c.persist().map_err(|e| e.to_string())?;
                Ok(acks)
            },
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match done {
            Ok(acks) => {
                for (commit, ack) in group.into_iter().zip(acks) {
                    let _ = commit.reply.send(ack);
                }
            }
            Err(e) => {
                for commit in group {
                    let _ = commit.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
