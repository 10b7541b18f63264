//! Values that cross the crate's API: records in and out, and the reports of what
//! was lost, evicted or repaired.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::format::Codec;

/// A record to append.
#[derive(Clone, Debug)]
pub struct NewRecord {
    /// Opaque payload bytes (for tracespool: an OTLP `ExportTraceServiceRequest`).
    pub payload: Bytes,
    /// Number of spans in the payload; used for accounting only.
    pub span_count: u32,
    pub codec: Codec,
    /// The batch's idempotency key as the client sent it (may be empty), at most
    /// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes.
    pub idempotency_key: Bytes,
    pub received_at: SystemTime,
}

/// A record read back from the log. `payload` and `idempotency_key` point into the
/// memory-mapped segment; no copy is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub received_at: SystemTime,
    pub span_count: u32,
    pub codec: Codec,
    pub idempotency_key: Bytes,
    pub payload: Bytes,
}

/// A successful append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: u64,
    /// Segments deleted by `when_full = drop_oldest` to make room for this record.
    /// Every eviction is also sent as a [`WalEvent::Evicted`].
    pub evicted: Vec<Eviction>,
}

/// A segment deleted under `when_full = drop_oldest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// First sequence number of the deleted segment (its file name).
    pub segment: u64,
    /// The seq range the segment held. Empty (`first_seq > last_seq`) only for a
    /// segment that held no record.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Spans in the segment's readable records.
    pub spans: u64,
    /// Size of the deleted file.
    pub bytes: u64,
    /// Records and spans that had not been acknowledged by every cursor (all of them
    /// when no cursor exists): the data this eviction lost.
    pub undelivered_records: u64,
    pub undelivered_spans: u64,
    /// The same, per cursor; a cursor that had acknowledged everything is absent.
    pub per_cursor: Vec<CursorLoss>,
}

impl Eviction {
    pub fn records(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }
}

/// What one cursor lost in an eviction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorLoss {
    pub cursor: String,
    pub records: u64,
    pub spans: u64,
    /// The seq ranges it lost (inclusive).
    pub ranges: Vec<(u64, u64)>,
}

/// A contiguous range of records that is unreadable because its bytes are damaged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostRange {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The segment (first seq) and the byte offset where the damage starts.
    pub segment: u64,
    pub offset: u64,
    /// Spans in the lost records, when every lost record's header was intact.
    pub spans: Option<u64>,
    pub reason: String,
}

impl LostRange {
    pub fn records(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41 + self.reason.len());
        v.extend_from_slice(&self.first_seq.to_le_bytes());
        v.extend_from_slice(&self.last_seq.to_le_bytes());
        v.extend_from_slice(&self.segment.to_le_bytes());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.push(self.spans.is_some() as u8);
        v.extend_from_slice(&self.spans.unwrap_or(0).to_le_bytes());
        v.extend_from_slice(self.reason.as_bytes());
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 41 {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Some(Self {
            first_seq: u(0),
            last_seq: u(8),
            segment: u(16),
            offset: u(24),
            spans: (b[32] == 1).then(|| u(33)),
            reason: String::from_utf8_lossy(&b[41..]).into_owned(),
        })
    }
}

/// The tail of the active segment cut off at open: bytes after the last frame that
/// can be shown durable, that end in damage — an append that never completed (a
/// crash or power cut mid-write; under `fsync = always` never an acknowledged
/// one), or, if not a crash, damage to the last records written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    /// Where the valid log ends; the file was truncated to this length.
    pub offset: u64,
    pub bytes: u64,
    /// The seq the first cut record would have had.
    pub first_seq: u64,
    /// The highest seq the cut bytes can have held (from the intact headers among
    /// them, or from their size). Seqs up to it are never assigned again.
    pub last_seq_bound: u64,
    /// Seqs of intact frames that were cut with the tail (they followed damage in
    /// a group that may not have been synced, so they were never exported).
    pub cut_records: Vec<u64>,
    /// Where the cut bytes were kept for inspection.
    pub quarantined_to: Option<PathBuf>,
}

/// Seqs the log skipped when it reopened, so that none a reader may have seen is
/// assigned again (see `state.rs`). Whatever records they named are not on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedSeqs {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Whether acknowledged records can be among them (an unclean stop under
    /// `fsync = never`/`interval`, a cut tail, a damaged or empty active segment),
    /// as opposed to seqs that were certainly never acknowledged.
    pub may_hold_acknowledged: bool,
    pub reason: String,
}

/// A file moved to `quarantine/` (or a copy of bytes cut from the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// Where it is now.
    pub file: PathBuf,
    /// The segment it was or came from (from its name), if any.
    pub segment: Option<u64>,
    pub bytes: u64,
    /// Seqs the quarantined bytes may hold, when known.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub reason: String,
}

/// What opening the log found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Oldest retained seq and the seq the next append gets.
    pub first_seq: u64,
    pub next_seq: u64,
    /// Bytes checked record by record (the active segment only).
    pub scanned_bytes: u64,
    pub torn_tail: Option<TornTail>,
    /// Damaged ranges newly found in the active segment.
    pub lost: Vec<LostRange>,
    /// Seqs skipped at this open (see [`SkippedSeqs`]).
    pub skipped: Option<SkippedSeqs>,
    /// Whether the last stop was clean (a [`Wal::close`](crate::Wal::close)).
    pub clean_stop: bool,
    /// Cursors whose file was damaged: recreated at the oldest record on disk
    /// (everything retained is delivered again unless the caller acknowledges what
    /// it knows was delivered).
    pub damaged_cursors: Vec<String>,
    /// Problems with the log's own metadata that recovery worked around (a damaged
    /// state file or metadata store, moved aside and rebuilt), for the operator.
    pub repaired: Vec<String>,
    /// Segments whose header was damaged (their records are still read).
    pub damaged_headers: Vec<PathBuf>,
    /// Files moved to `quarantine/`: segments of another log, files named like
    /// segments that are not (a directory, a FIFO, garbage), torn tails.
    pub quarantined: Vec<Quarantine>,
    /// Leftover `.seg.tmp` files of an interrupted segment creation, removed.
    pub removed_temp_files: Vec<PathBuf>,
    pub duration: Duration,
}

/// Why a reader skipped a range of sequence numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GapCause {
    /// The records are no longer on disk (evicted by `drop_oldest`, or deleted
    /// before this reader's start). Evictions are reported when they happen.
    NotRetained,
    /// The records are damaged. The full range is reported once as a
    /// [`WalEvent::Damaged`]; the gap is the part this reader skipped.
    Damaged(LostRange),
    /// The seqs were never given to a record that survived: skipped when the log
    /// reopened after an unclean stop (see [`RecoveryReport::skipped`]).
    Skipped,
}

/// A range the reader skipped. A consumer acknowledges it like a record so its
/// cursor moves past it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub first_seq: u64,
    pub last_seq: u64,
    pub cause: GapCause,
}

/// One step of a reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadItem {
    Record(Record),
    Gap(Gap),
}

impl ReadItem {
    /// The last sequence number this item covers.
    pub fn last_seq(&self) -> u64 {
        match self {
            Self::Record(r) => r.seq,
            Self::Gap(g) => g.last_seq,
        }
    }
}

/// Loss events, each delivered exactly once per process on the stream returned by
/// [`Wal::take_events`](crate::Wal::take_events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalEvent {
    Evicted(Eviction),
    /// A damaged range found for the first time (at open, or by a reader).
    Damaged(LostRange),
    /// Bytes or a file moved to `quarantine/` (reported before the move).
    Quarantined(Quarantine),
    /// Seqs skipped at open (reported before any new record is assigned).
    Skipped(SkippedSeqs),
    /// Records already answered (`fsync = never`/`interval`) that a failed
    /// `fdatasync` left not durable: cut from the log, reported before the cut.
    NotDurable(LostRange),
    /// Delivered segments about to be deleted (`first_seq..=last_seq` each): what
    /// records them must be durable first. An error postpones the deletion.
    Deleting(Vec<(u64, u64)>),
}

/// A function called with every loss event, synchronously, before the loss takes
/// effect on disk: an eviction before the segment is unlinked, damage before it is
/// recorded as known, a quarantine before the move. An audit trail written from it
/// cannot miss a loss, even across `kill -9`. An error from it stops an eviction
/// (the append is refused as if the budget were full); damage it could not record
/// is reported again later.
pub type EventHook = std::sync::Arc<dyn Fn(&WalEvent) -> Result<(), String> + Send + Sync>;

/// Where a new cursor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorStart {
    /// At the oldest record still on disk.
    Oldest,
    /// After the last record appended so far.
    Latest,
}

/// A snapshot of the log's state.
#[derive(Clone, Debug, PartialEq)]
pub struct WalStats {
    pub segments: usize,
    /// Bytes of all segment files.
    pub bytes: u64,
    pub max_bytes: u64,
    /// Oldest retained seq (equal to `next_seq` when the log is empty).
    pub first_seq: u64,
    /// Last seq visible to readers (0 if none).
    pub last_seq: u64,
    pub cursors: Vec<(String, u64)>,
    /// `fdatasync` calls on the active segment since open, and the records they
    /// made durable: records per sync is the group commit's batching factor.
    pub syncs: u64,
    pub synced_records: u64,
    /// How long those syncs took.
    pub sync_durations: HistogramSnapshot,
    /// The error that stopped the log accepting appends, if any.
    pub failed: Option<String>,
}

pub(crate) fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

pub(crate) fn time_from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// Upper bounds (seconds) of the buckets of [`DurationHistogram`].
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A lock-free histogram of durations with fixed buckets.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations per bucket (not cumulative); the last counts those above every
    /// bound.
    buckets: [std::sync::atomic::AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: std::sync::atomic::AtomicU64,
}

/// A snapshot of a [`DurationHistogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations in this bucket — not cumulative), for
    /// each bound and a last bucket bounded by `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl DurationHistogram {
    pub fn observe(&self, d: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}
