//! Accounting: the one place where what the audit balances is recorded. Every
//! event — a request stored, refused, deduplicated, discarded or abandoned; a batch
//! delivered or dead-lettered; spans dropped by eviction, lost to damage or to a
//! failed `fdatasync` — has one method here that writes its ledger entry, moves its
//! metrics and logs its line, in that order. [`crate::ledger::summary`] checks the
//! balance these entries keep.
//!
//! | event | ledger entry | metrics | written by |
//! |---|---|---|---|
//! | [`Accounts::stored`] | `accepted` | `spans_persisted`, `append_duration_seconds` | ingest, before the client hears |
//! | [`Accounts::request`] | `rejected`, `deduplicated`, `discarded` | `receiver_requests{outcome}`, `spans_received` | the ingest's outcome guard, once per request |
//! | [`Accounts::delivered`] | `delivered` | `spans_delivered` | a replay worker, before its cursor moves |
//! | [`Accounts::dead_lettered`] | `dead_lettered` | `dead_letters`, `spans_dropped{dead_letter}` | a replay worker, once the dead letter is on disk |
//! | [`Accounts::skipped_damage`] | (written by the log's hook) | `spans_dropped{corruption}` | a replay worker passing a damaged range |
//! | [`Accounts::started`], `stopped`, `unclean_stop`, `destination_added`, `destination_removed` | the forwarder's life | | start and shutdown (`app.rs`) |
//! | [`Accounts::hook`] | `dropped`, `damaged`, `quarantined`, `seqs_skipped` | `spans_dropped{drop_oldest}` | the log, before the change reaches the disk |

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tracespool_storage::{EventHook, Gap, LostRange, Record, WalEvent};

use crate::ledger::{ms, now_ms, Entry, Ledger, Receipt, Removed};
use crate::metrics::{Metrics, ProtocolLabel};
use crate::status::Rejection;

/// Why spans were given up for a destination (the `reason` label of
/// `tracespool_spans_dropped_total` and of `dropped` ledger entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Evicted by `when_full = drop_oldest` before this destination had them.
    DropOldest,
    /// On a damaged part of a segment.
    Corruption,
    /// Refused permanently by the destination; kept as a dead letter.
    DeadLetter,
    /// Older than the destination's `max_age` when its turn came.
    Expired,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        Self::DropOldest,
        Self::Corruption,
        Self::DeadLetter,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DropOldest => "drop_oldest",
            Self::Corruption => "corruption",
            Self::DeadLetter => "dead_letter",
            Self::Expired => "expired",
        }
    }
}

/// What became of one export request (the `outcome` label of
/// `tracespool_receiver_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intake<'a> {
    /// Durable in the log as `seq` (its `accepted` entry is written by
    /// [`Accounts::stored`]).
    Stored {
        seq: u64,
    },
    /// Its idempotency key was stored before, as `seq`.
    Duplicate {
        seq: u64,
    },
    /// The processors took out every span.
    Discarded {
        removed: Removed,
    },
    /// It held no span: answered success, nothing stored (counted, not itemized
    /// in the ledger: there is nothing to account for).
    Empty,
    Refused(&'a Rejection),
    /// The client went away before it was answered. If it got as far as the
    /// append, the record was stored (with its `accepted` entry) all the same.
    Abandoned,
}

impl Intake<'_> {
    /// Every outcome label that is not a refusal.
    pub const SUCCESSES: [&'static str; 4] = ["accepted", "duplicate", "empty", "abandoned"];

    pub fn label(&self) -> &'static str {
        match self {
            Self::Stored { .. } | Self::Discarded { .. } => "accepted",
            Self::Duplicate { .. } => "duplicate",
            Self::Empty => "empty",
            Self::Refused(r) => r.kind(),
            Self::Abandoned => "abandoned",
        }
    }
}

/// One request, as far as it got.
#[derive(Clone, Copy, Debug)]
pub struct RequestOutcome<'a> {
    pub protocol: &'static str,
    pub peer: Option<SocketAddr>,
    /// Spans, once the request was valid enough to count them.
    pub spans: u32,
    /// Body bytes as received, once read.
    pub bytes: u64,
    pub key: Option<&'a Bytes>,
    pub tenant: Option<&'a str>,
    pub intake: Intake<'a>,
}

/// A record the log made durable, for its `accepted` entry.
pub struct Stored<'a> {
    pub seq: u64,
    pub received_at: SystemTime,
    /// When the request started arriving.
    pub started: Instant,
    pub key: Option<&'a Bytes>,
    pub spans: u32,
    pub bytes: u64,
    pub peer: Option<SocketAddr>,
    pub protocol: &'static str,
    pub tenant: Option<&'a str>,
    pub removed: Option<Removed>,
}

pub struct Accounts {
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// Refusals are logged at `warn`, at most one line per kind every
    /// [`REFUSALS_EVERY`], with how many went unlogged since.
    refusals: Vec<(crate::throttle::Throttle, std::sync::atomic::AtomicU64)>,
}

/// How often each kind of refusal is logged at most.
const REFUSALS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

fn key_str(key: Option<&Bytes>) -> Option<String> {
    key.map(|k| String::from_utf8_lossy(k).into_owned())
}

impl Accounts {
    pub fn new(ledger: Arc<Ledger>, metrics: Arc<Metrics>) -> Self {
        let refusals = Rejection::KINDS
            .iter()
            .map(|_| {
                (
                    crate::throttle::Throttle::new(REFUSALS_EVERY),
                    std::sync::atomic::AtomicU64::new(0),
                )
            })
            .collect();
        Self {
            ledger,
            metrics,
            refusals,
        }
    }

    /// A refused request, logged (at most once per kind per interval).
    fn log_refusal(&self, r: &RequestOutcome<'_>, rejection: &Rejection) {
        use std::sync::atomic::Ordering;
        let kind = rejection.kind();
        let Some((throttle, unlogged)) = Rejection::KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.refusals.get(i))
        else {
            return;
        };
        if throttle.allow() {
            let client = r.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            tracing::warn!(
                reason = kind,
                protocol = r.protocol,
                client = %client,
                tenant = r.tenant.unwrap_or("-"),
                detail = %rejection.message(),
                also_refused = unlogged.swap(0, Ordering::Relaxed),
                "request refused"
            );
        } else {
            unlogged.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason = kind, detail = %rejection.message(), protocol = r.protocol, peer = ?r.peer, "request refused");
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    // ---- the forwarder's life ----------------------------------------------

    pub fn started(&self, instance_id: &str, next_seq: u64) {
        let _ = self.ledger.write(&Entry::Started {
            t: now_ms(),
            instance_id: instance_id.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            next_seq,
        });
    }

    /// The last stop was not clean; under `fsync` other than `always`, batches
    /// acknowledged in the `window_ms` before `last_entry_ms` may be lost.
    pub fn unclean_stop(&self, fsync: &str, last_entry_ms: Option<u64>, window_ms: Option<u64>) {
        let _ = self.ledger.write(&Entry::UncleanStop {
            t: now_ms(),
            fsync: fsync.into(),
            last_entry_ms,
            window_ms,
        });
    }

    pub fn stopped(&self) {
        let _ = self.ledger.write(&Entry::Stopped { t: now_ms() });
    }

    /// A destination is configured for the first time: its cursor starts at
    /// `from_seq`. Durable before the cursor is made.
    pub fn destination_added(&self, destination: &str, from_seq: u64) -> io::Result<()> {
        self.ledger.write(&Entry::DestinationAdded {
            t: now_ms(),
            destination: destination.to_string(),
            from_seq,
        })?;
        self.ledger.sync()
    }

    /// A destination is no longer configured: what it had not been sent up to
    /// `at_seq` is settled as dropped for it. Durable before the cursor goes.
    pub fn destination_removed(&self, destination: &str, at_seq: u64) -> io::Result<()> {
        self.ledger.write(&Entry::DestinationRemoved {
            t: now_ms(),
            destination: destination.to_string(),
            at_seq: Some(at_seq),
        })?;
        self.ledger.sync()
    }

    // ---- intake ----------------------------------------------------------

    /// A record is durable. Its entry may fail to be written (a failing disk): the
    /// ledger's checkpoint then does not pass this seq, and the next start
    /// recovers the entry from the log.
    pub fn stored(&self, s: Stored<'_>) -> io::Result<()> {
        let written = self.ledger.write(&Entry::Accepted {
            t: ms(s.received_at),
            seq: s.seq,
            key: key_str(s.key),
            spans: s.spans,
            bytes: s.bytes,
            client: s.peer.map(|p| p.to_string()),
            protocol: s.protocol.into(),
            recovered: false,
            tenant: s.tenant.map(str::to_string),
            removed: s.removed,
        });
        self.metrics
            .append_duration
            .observe(s.started.elapsed().as_secs_f64());
        self.metrics.spans_persisted.inc_by(s.spans as u64);
        tracing::trace!(seq = s.seq, spans = s.spans, protocol = s.protocol, peer = ?s.peer, "stored");
        written
    }

    /// A request was answered (or abandoned): counted once, and written to the
    /// ledger unless it was stored (see [`Accounts::stored`]) or abandoned.
    pub fn request(&self, r: &RequestOutcome<'_>) {
        let client = || r.peer.map(|p| p.to_string());
        let tenant = r.tenant.map(str::to_string);
        match r.intake {
            Intake::Stored { .. } | Intake::Abandoned | Intake::Empty => {}
            Intake::Duplicate { seq } => {
                self.ledger.write_or_tally(&Entry::Deduplicated {
                    t: now_ms(),
                    seq,
                    key: key_str(r.key).unwrap_or_default(),
                    spans: r.spans,
                    client: client(),
                    protocol: r.protocol.into(),
                    tenant,
                });
                tracing::debug!(
                    seq,
                    protocol = r.protocol,
                    "duplicate idempotency key; not stored again"
                );
            }
            Intake::Discarded { removed } => {
                let _ = self.ledger.write(&Entry::Discarded {
                    t: now_ms(),
                    spans: r.spans,
                    removed,
                    client: client(),
                    protocol: r.protocol.into(),
                    tenant,
                });
            }
            Intake::Refused(rejection) => {
                self.ledger.write_or_tally(&Entry::Rejected {
                    t: now_ms(),
                    reason: rejection.kind().into(),
                    spans: r.spans,
                    bytes: r.bytes,
                    client: client(),
                    protocol: r.protocol.into(),
                    detail: rejection.message(),
                    tenant,
                });
                self.log_refusal(r, rejection);
            }
        }
        self.metrics.received(r.protocol, r.intake.label());
        if r.spans > 0 {
            self.metrics
                .spans_received
                .get_or_create(&ProtocolLabel {
                    protocol: r.protocol,
                })
                .inc_by(r.spans as u64);
        }
    }

    // ---- delivery --------------------------------------------------------

    /// `destination` accepted `record` after `attempts` tries. The entry comes
    /// first: the cursor may move past the record only once this returned `Ok`.
    pub fn delivered(
        &self,
        destination: &str,
        record: &Record,
        attempts: u32,
        receipt: Option<&Receipt>,
    ) -> io::Result<()> {
        self.ledger.write(&Entry::Delivered {
            t: now_ms(),
            destination: destination.to_string(),
            first_seq: record.seq,
            last_seq: record.seq,
            spans: record.span_count as u64,
            attempts,
            by: None,
            receipt: receipt.cloned(),
        })?;
        self.metrics
            .spans_delivered
            .get_or_create(&self.metrics.dest(destination))
            .inc_by(record.span_count as u64);
        if receipt.is_some_and(|r| r.duplicate) {
            self.metrics
                .export_duplicates
                .get_or_create(&self.metrics.dest(destination))
                .inc();
        }
        tracing::debug!(
            destination,
            seq = record.seq,
            spans = record.span_count,
            attempts,
            "exported"
        );
        Ok(())
    }

    /// `destination` refused `record` for good; its dead letter is on disk.
    pub fn dead_lettered(
        &self,
        destination: &str,
        record: &Record,
        attempts: u32,
        reason: &str,
    ) -> io::Result<()> {
        self.ledger.write(&Entry::DeadLettered {
            t: now_ms(),
            destination: destination.to_string(),
            seq: record.seq,
            spans: record.span_count,
            attempts,
            status: reason.to_string(),
        })?;
        self.metrics
            .dead_letters
            .get_or_create(&self.metrics.dest(destination))
            .inc();
        self.dropped(
            DropReason::DeadLetter,
            destination,
            1,
            record.span_count as u64,
        );
        tracing::error!(
            destination,
            seq = record.seq,
            spans = record.span_count,
            attempts,
            reason = %reason,
            "destination refused the batch permanently; kept as a dead letter"
        );
        Ok(())
    }

    /// `record` was older than `destination`'s `max_age` when its turn came: given
    /// up for it, written to the ledger (a `dropped` entry, reason `expired`) and
    /// counted. The worker logs it (throttled: a backlog can expire by the
    /// thousand).
    pub fn expired(&self, destination: &str, record: &Record) -> io::Result<()> {
        self.ledger.write(&Entry::Dropped {
            t: now_ms(),
            reason: DropReason::Expired.as_str().into(),
            destination: Some(destination.to_string()),
            first_seq: record.seq,
            last_seq: record.seq,
            spans: Some(record.span_count as u64),
        })?;
        self.dropped(
            DropReason::Expired,
            destination,
            1,
            record.span_count as u64,
        );
        Ok(())
    }

    /// A record evicted while it was in flight was delivered or dead-lettered
    /// after all: it was counted as dropped for `destination`, say it was not.
    pub fn completed_after_eviction(&self, destination: &str, record: &Record, how: &str) {
        self.metrics
            .spans_delivered_after_eviction
            .get_or_create(&self.metrics.dest(destination))
            .inc_by(record.span_count as u64);
        tracing::info!(
            destination,
            seq = record.seq,
            spans = record.span_count,
            outcome = how,
            "evicted record was not dropped after all: it was in flight and completed"
        );
    }

    /// A replay worker passes over a damaged range (its `damaged` entry was
    /// written when the log found it).
    pub fn skipped_damage(&self, destination: &str, gap: &Gap, lost: &LostRange) {
        let records = gap.last_seq - gap.first_seq + 1;
        // Span counts are known when the damaged records' headers were intact and
        // this reader skips the whole range.
        let spans = lost
            .spans
            .filter(|_| records == lost.records())
            .unwrap_or(0);
        self.dropped(DropReason::Corruption, destination, records, spans);
        tracing::error!(
            destination,
            first_seq = gap.first_seq,
            last_seq = gap.last_seq,
            segment = lost.segment,
            offset = lost.offset,
            reason = %lost.reason,
            "skipping damaged records"
        );
    }

    fn dropped(&self, reason: DropReason, destination: &str, records: u64, spans: u64) {
        self.metrics
            .dropped(reason.as_str(), destination, records, spans);
    }

    // ---- the log's losses ------------------------------------------------

    /// The log's hook: every eviction, damaged range, quarantine and seq skip goes
    /// into the ledger (and evictions into the metrics) before it takes effect on
    /// disk, and durably where the change itself is durable (an unlinked segment,
    /// a moved file). An error tells the log the change must wait (an eviction is
    /// then refused). The log lines follow from [`Accounts::log`].
    pub fn hook(self: &Arc<Self>) -> EventHook {
        let this = self.clone();
        Arc::new(move |event: &WalEvent| this.record_wal_event(event))
    }

    fn record_wal_event(&self, event: &WalEvent) -> Result<(), String> {
        let write = |e: &Entry| {
            self.ledger
                .write(e)
                .map_err(|e| format!("audit ledger: {e}"))
        };
        let sync = || {
            self.ledger
                .sync()
                .map_err(|e| format!("syncing the audit ledger: {e}"))
        };
        match event {
            WalEvent::Evicted(e) => {
                let t = now_ms();
                let reason = DropReason::DropOldest.as_str();
                if e.per_cursor.is_empty() && e.undelivered_records > 0 {
                    // No destination at all: lost for everyone.
                    write(&Entry::Dropped {
                        t,
                        reason: reason.into(),
                        destination: None,
                        first_seq: e.first_seq,
                        last_seq: e.last_seq,
                        spans: Some(e.undelivered_spans),
                    })?;
                }
                for loss in &e.per_cursor {
                    for &(first, last) in &loss.ranges {
                        write(&Entry::Dropped {
                            t,
                            reason: reason.into(),
                            destination: Some(loss.cursor.clone()),
                            first_seq: first,
                            last_seq: last,
                            spans: None,
                        })?;
                    }
                }
                sync()?;
                for loss in &e.per_cursor {
                    self.dropped(
                        DropReason::DropOldest,
                        &loss.cursor,
                        loss.records,
                        loss.spans,
                    );
                }
                Ok(())
            }
            WalEvent::Damaged(l) => write(&Entry::Damaged {
                t: now_ms(),
                first_seq: l.first_seq,
                last_seq: l.last_seq,
                segment: l.segment,
                offset: l.offset,
                spans: l.spans,
                detail: l.reason.clone(),
            }),
            WalEvent::Quarantined(q) => {
                write(&Entry::Quarantined {
                    t: now_ms(),
                    segment: q.segment.unwrap_or(0),
                    first_seq: q.first_seq,
                    last_seq: q.last_seq,
                    bytes: q.bytes,
                    file: q.file.display().to_string(),
                    reason: q.reason.clone(),
                })?;
                sync()
            }
            WalEvent::Skipped(k) => {
                write(&Entry::SeqsSkipped {
                    t: now_ms(),
                    first_seq: k.first_seq,
                    last_seq: k.last_seq,
                    may_hold_acknowledged: k.may_hold_acknowledged,
                    reason: k.reason.clone(),
                })?;
                sync()
            }
            WalEvent::NotDurable(l) => {
                write(&Entry::Dropped {
                    t: now_ms(),
                    reason: "not_durable".into(),
                    destination: None,
                    first_seq: l.first_seq,
                    last_seq: l.last_seq,
                    spans: l.spans,
                })?;
                sync()
            }
            WalEvent::Deleting(_) => sync(),
        }
    }

    /// The log line of a loss the log reported (after [`Accounts::hook`] recorded
    /// it): evictions under `drop_oldest`, damage, failed `fdatasync`s, skipped
    /// seqs, quarantined files — with seq ranges and span counts.
    pub fn log(event: &WalEvent) {
        match event {
            WalEvent::Evicted(e) => {
                if e.undelivered_records == 0 {
                    tracing::info!(
                        first_seq = e.first_seq,
                        last_seq = e.last_seq,
                        "retained delivered segment deleted to make room"
                    );
                    return;
                }
                tracing::warn!(
                    reason = DropReason::DropOldest.as_str(),
                    first_seq = e.first_seq,
                    last_seq = e.last_seq,
                    dropped_records = e.undelivered_records,
                    dropped_spans = e.undelivered_spans,
                    "spool full: spans dropped (when_full = drop_oldest)"
                );
                for c in &e.per_cursor {
                    tracing::warn!(
                        reason = DropReason::DropOldest.as_str(),
                        destination = %c.cursor,
                        first_seq = e.first_seq,
                        last_seq = e.last_seq,
                        dropped_records = c.records,
                        dropped_spans = c.spans,
                        "spans dropped before delivery to this destination"
                    );
                }
            }
            WalEvent::Damaged(l) => tracing::error!(
                reason = DropReason::Corruption.as_str(),
                first_seq = l.first_seq,
                last_seq = l.last_seq,
                records = l.records(),
                spans = ?l.spans,
                segment = l.segment,
                offset = l.offset,
                detail = %l.reason,
                "spans lost to a damaged spool segment"
            ),
            WalEvent::NotDurable(l) => tracing::error!(
                reason = "not_durable",
                first_seq = l.first_seq,
                last_seq = l.last_seq,
                detail = %l.reason,
                "acknowledged spans lost: a failed fdatasync (fsync is not always)"
            ),
            WalEvent::Skipped(k) => tracing::warn!(
                first_seq = k.first_seq,
                last_seq = k.last_seq,
                may_hold_acknowledged = k.may_hold_acknowledged,
                reason = %k.reason,
                "seqs skipped at start"
            ),
            WalEvent::Quarantined(q) => tracing::warn!(
                file = %q.file.display(),
                bytes = q.bytes,
                reason = %q.reason,
                "moved to quarantine"
            ),
            WalEvent::Deleting(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger;
    use tracespool_storage::{Codec, CursorLoss, Eviction, GapCause};

    fn accounts(dir: &std::path::Path) -> Arc<Accounts> {
        let ledger = Arc::new(Ledger::open(dir, 1 << 20, 8 << 20, 0).unwrap());
        Arc::new(Accounts::new(ledger, Metrics::new(&["east".into()])))
    }

    fn record(seq: u64, spans: u32) -> Record {
        Record {
            seq,
            received_at: SystemTime::now(),
            span_count: spans,
            codec: Codec(1),
            idempotency_key: Bytes::new(),
            payload: Bytes::from_static(b"x"),
        }
    }

    /// The value of the series of `name` whose labels include `labels`.
    fn metric(a: &Accounts, name: &str, labels: &str) -> u64 {
        let text = a.metrics().render();
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .unwrap_or_else(|| panic!("no {name} with {labels}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn each_delivery_side_event_writes_one_entry_and_moves_its_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(dir.path());
        let dest = "destination=\"east\"";
        a.delivered("east", &record(1, 4), 2, None).unwrap();
        a.dead_lettered("east", &record(2, 3), 5, "InvalidArgument: no")
            .unwrap();
        let gap = Gap {
            first_seq: 3,
            last_seq: 4,
            cause: GapCause::Damaged(LostRange {
                first_seq: 3,
                last_seq: 4,
                segment: 1,
                offset: 4096,
                spans: Some(9),
                reason: "crc".into(),
            }),
        };
        let GapCause::Damaged(lost) = &gap.cause else {
            unreachable!()
        };
        a.skipped_damage("east", &gap, lost);

        assert_eq!(metric(&a, "tracespool_spans_delivered_total", dest), 4);
        assert_eq!(metric(&a, "tracespool_dead_letters_total", dest), 1);
        let dropped = |reason: &str| {
            metric(
                &a,
                "tracespool_spans_dropped_total",
                &format!("reason=\"{reason}\",{dest}"),
            )
        };
        assert_eq!(dropped("dead_letter"), 3);
        assert_eq!(dropped("corruption"), 9);
        assert_eq!(dropped("drop_oldest"), 0);

        a.ledger().sync().unwrap();
        let entries = ledger::read_all(dir.path()).unwrap();
        let mut seen = Vec::new();
        for e in &entries {
            match e {
                Entry::Delivered {
                    first_seq,
                    spans,
                    attempts,
                    ..
                } => seen.push(("delivered", *first_seq, *spans, *attempts)),
                Entry::DeadLettered {
                    seq,
                    spans,
                    attempts,
                    ..
                } => seen.push(("dead_lettered", *seq, *spans as u64, *attempts)),
                _ => {}
            }
        }
        // The damaged range's entry is the log's hook's, not the reader's.
        assert_eq!(seen, [("delivered", 1, 4, 2), ("dead_lettered", 2, 3, 5)]);
    }

    #[test]
    fn an_eviction_is_written_per_destination_range_before_it_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(dir.path());
        let hook = a.hook();
        hook(&WalEvent::Evicted(Eviction {
            segment: 1,
            first_seq: 1,
            last_seq: 10,
            spans: 100,
            bytes: 4096,
            undelivered_records: 6,
            undelivered_spans: 60,
            per_cursor: vec![CursorLoss {
                cursor: "east".into(),
                records: 6,
                spans: 60,
                ranges: vec![(3, 5), (8, 10)],
            }],
        }))
        .unwrap();
        let records = metric(
            &a,
            "tracespool_records_dropped_total",
            "reason=\"drop_oldest\",destination=\"east\"",
        );
        assert_eq!(records, 6);
        // The hook synced the ledger itself: an eviction is durable before the unlink.
        let dropped: Vec<_> = ledger::read_all(dir.path())
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Dropped {
                    reason,
                    destination,
                    first_seq,
                    last_seq,
                    ..
                } => Some((reason, destination, first_seq, last_seq)),
                _ => None,
            })
            .collect();
        let east = Some("east".to_string());
        assert_eq!(
            dropped,
            [
                ("drop_oldest".to_string(), east.clone(), 3, 5),
                ("drop_oldest".to_string(), east, 8, 10),
            ]
        );
    }
}
