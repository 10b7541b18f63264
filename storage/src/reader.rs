//! Readers stream records in seq order from any position, reading segment files
//! (sealed and active) with `pread` into a window of a few MiB; the payloads they
//! hand out are slices of that window, not copies.
//!
//! Nothing is mapped: a bad sector under a mapping would kill the process with
//! SIGBUS, while a `pread` of it fails with EIO, and the reader treats the
//! unreadable bytes as damage (skipped, reported with their range, counted).
//!
//! A reader only returns records at or below the published watermark: records that
//! are durable under the configured fsync policy. Damage and evictions surface as
//! [`Gap`]s so the consumer can acknowledge past them; every record not inside a gap
//! is returned exactly as appended.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::crypto::KeyCache;
use crate::error::ReadError;
use crate::format::{decode_header, FLAG_SEALED};
use crate::segment::{read_region, InUseGuard, SegmentScan, Step as ScanStep, RECORDS_START};
use crate::shared::{Shared, Watermark};
use crate::types::{time_from_nanos, Gap, GapCause, LostRange, ReadItem, Record};

/// How much of a segment a reader reads at once.
const WINDOW: usize = 4 << 20;

/// Position inside one segment.
struct Pos {
    segment: u64,
    file: File,
    /// File bytes `[window_start, window_start + window.len())`.
    window: Bytes,
    window_start: usize,
    /// Unreadable ranges met in this segment (file offsets), for damage reasons.
    unreadable: Vec<(u64, u64)>,
    /// Offset of the next frame to look at.
    offset: usize,
    /// Seq of the last valid frame before `offset` (segment first seq − 1 at start).
    /// Damage ranges are computed from it, so every reader reports the same range.
    last_good: u64,
    /// Final length once the segment is known to be sealed.
    sealed_len: Option<u64>,
    /// First seq of the following segment, once known.
    next_segment: Option<u64>,
    /// Seqs `skipped_from..next_segment` were never assigned (the next segment's
    /// header says so): no damage.
    next_skipped_from: u64,
    _in_use: InUseGuard,
}

impl Pos {
    fn window_end(&self) -> usize {
        self.window_start + self.window.len()
    }

    /// Reads file bytes `[from, to)` into the window.
    fn fill(&mut self, from: usize, to: usize) -> io::Result<()> {
        let region = read_region(&self.file, from as u64, to.saturating_sub(from))?;
        for r in &region.unreadable {
            if !self.unreadable.contains(r) {
                self.unreadable.push(*r);
            }
        }
        self.window = Bytes::from(region.bytes);
        self.window_start = from;
        Ok(())
    }

    fn io_reason(&self, from: usize, to: usize, error: &dyn std::fmt::Display) -> String {
        match self
            .unreadable
            .iter()
            .find(|&&(a, b)| (a as usize) < to.max(from + 1) && from < b as usize)
        {
            Some(&(a, b)) => format!("read error (I/O) at bytes {a}..{b}: {error}"),
            None => error.to_string(),
        }
    }
}

enum Step {
    Item(ReadItem),
    /// Look again (a frame was skipped, or the reader moved to another segment).
    Again,
    /// Nothing more is visible now.
    Idle,
}

/// Streams records in seq order. Created by [`Wal::reader`](crate::Wal::reader) or
/// [`Cursor::reader`](crate::Cursor::reader).
pub struct Reader {
    shared: Arc<Shared>,
    wm: watch::Receiver<Watermark>,
    next_seq: u64,
    pos: Option<Pos>,
    /// A cursor's reader skips the records acknowledged above its position.
    acked: Option<Arc<crate::cursor::CursorState>>,
    /// The key of the segment whose sealed records were read last.
    key: KeyCache,
    /// The last seq this reader returns (a bounded reader, [`Reader::until`]).
    until: u64,
    /// Where to start in the segment holding `next_seq`, when known: (segment,
    /// file offset of the frame of `next_seq`) — from [`Reader::location`].
    hint: Option<(u64, usize)>,
    /// (segment, file offset) of the frame of the last record returned.
    location: Option<(u64, usize)>,
    /// Sealed payloads are returned sealed (a walk that only wants locations).
    locate_only: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, from_seq: u64) -> Self {
        let wm = shared.watermark.clone();
        Self {
            shared,
            wm,
            next_seq: from_seq.max(1),
            pos: None,
            acked: None,
            key: KeyCache::default(),
            until: u64::MAX,
            hint: None,
            location: None,
            locate_only: false,
        }
    }

    /// A reader that stops after `last_seq`: gaps are cut at it, and
    /// [`Reader::is_done`] says when it got there.
    pub fn until(mut self, last_seq: u64) -> Self {
        self.until = last_seq;
        self
    }

    /// Starts at the frame at `offset` of `segment`, which holds the reader's first
    /// seq (a [`Reader::location`] of an earlier read), instead of walking the
    /// segment from its start. A hint that turns out wrong is found by the frame
    /// checks like any damage, so only use one from a read of this log.
    pub(crate) fn at(mut self, segment: u64, offset: usize) -> Self {
        self.hint = Some((segment, offset));
        self
    }

    /// Sealed records are returned with their payload as stored (not decrypted):
    /// for walks that only want [`Reader::location`]s.
    pub(crate) fn locate_only(mut self) -> Self {
        self.locate_only = true;
        self
    }

    /// (segment, file offset) of the last record returned.
    pub(crate) fn location(&self) -> Option<(u64, usize)> {
        self.location
    }

    /// A bounded reader has returned everything up to its last seq.
    pub fn is_done(&self) -> bool {
        self.next_seq > self.until
    }

    /// A reader that does not return records `cursor` has already acknowledged.
    pub(crate) fn skipping_acked(mut self, cursor: Arc<crate::cursor::CursorState>) -> Self {
        self.acked = Some(cursor);
        self
    }

    /// The seq the next returned item starts at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Waits for and returns the next item. Cancel-safe.
    pub async fn next(&mut self) -> Result<ReadItem, ReadError> {
        loop {
            if let Some(item) = self.try_next()? {
                return Ok(item);
            }
            if self.wm.changed().await.is_err() {
                // The writer is gone: return what is left, then report closure.
                return self.try_next()?.ok_or(ReadError::Closed);
            }
        }
    }

    /// Returns the next item if one is visible now, `None` when caught up.
    pub fn try_next(&mut self) -> Result<Option<ReadItem>, ReadError> {
        loop {
            let wm = *self.wm.borrow_and_update();
            if self.next_seq > wm.last_seq.min(self.until) {
                return Ok(None);
            }
            let evicted_below = self.shared.evicted_below();
            if self.next_seq < evicted_below {
                self.pos = None;
                // One gap up to the oldest record still on disk, however it went
                // (evicted, or deleted after delivery).
                let first_on_disk = self
                    .shared
                    .table
                    .read()
                    .unwrap()
                    .first()
                    .map(|e| e.first_seq);
                let to = evicted_below
                    .max(first_on_disk.unwrap_or(0))
                    .min(wm.last_seq + 1);
                let gap = self.skip_to(to, GapCause::NotRetained);
                return Ok(Some(self.cut(gap)));
            }
            if self.pos.is_none() {
                if let Some(gap) = self.position()? {
                    return Ok(Some(self.cut(gap)));
                }
                if self.pos.is_none() {
                    return Ok(None);
                }
            }
            match self.step(&wm)? {
                Step::Item(ReadItem::Record(r)) if r.seq > self.until => {
                    self.next_seq = self.until.saturating_add(1);
                    return Ok(None);
                }
                Step::Item(ReadItem::Record(r))
                    if self.acked.as_ref().is_some_and(|c| c.is_acked(r.seq)) => {}
                Step::Item(item) => return Ok(Some(self.cut(item))),
                Step::Again => {}
                Step::Idle => return Ok(None),
            }
        }
    }

    /// A gap running past a bounded reader's last seq ends at it.
    fn cut(&self, item: ReadItem) -> ReadItem {
        match item {
            ReadItem::Gap(mut gap) if gap.last_seq > self.until => {
                gap.last_seq = self.until;
                ReadItem::Gap(gap)
            }
            item => item,
        }
    }

    /// Moves `next_seq` to `to`, returning the gap covering what was skipped.
    fn skip_to(&mut self, to: u64, cause: GapCause) -> ReadItem {
        let gap = Gap {
            first_seq: self.next_seq,
            last_seq: to - 1,
            cause,
        };
        self.next_seq = to;
        ReadItem::Gap(gap)
    }

    /// Opens the segment holding `next_seq`. Returns a gap if `next_seq` is older
    /// than anything on disk.
    fn position(&mut self) -> Result<Option<ReadItem>, ReadError> {
        loop {
            let (entry, next_segment, first) = {
                let table = self.shared.table.read().unwrap();
                let Some(first) = table.first().map(|e| e.first_seq) else {
                    return Ok(None);
                };
                match table.locate(self.next_seq) {
                    Some((e, next)) => (e, next, first),
                    None => (table.first().cloned().unwrap(), None, first),
                }
            };
            if self.next_seq < first {
                return Ok(Some(self.skip_to(first, GapCause::NotRetained)));
            }
            let path = self.shared.segment_path(entry.first_seq);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let listed = self
                        .shared
                        .table
                        .read()
                        .unwrap()
                        .locate(entry.first_seq)
                        .is_some_and(|(e, _)| e.first_seq == entry.first_seq);
                    if !listed {
                        // Deleted between the lookup and the open: look again.
                        continue;
                    }
                    // Gone from disk though the table lists it (its deletion was
                    // reported, then the directory sync failed): skip it.
                    tracing::warn!(segment = %path.display(), "segment listed but not on disk; skipping it");
                    let to = next_segment
                        .unwrap_or(self.next_seq + 1)
                        .max(self.next_seq + 1);
                    return Ok(Some(self.skip_to(to, GapCause::NotRetained)));
                }
                Err(source) => {
                    return Err(ReadError::Io {
                        op: "open segment",
                        path,
                        source,
                    })
                }
            };
            let sealed_len = entry.sealed.then_some(entry.len);
            let next_skipped_from = next_segment
                .map(|n| self.shared.skipped_from(n))
                .unwrap_or(0);
            // A hint for this segment: its frame holds `next_seq`, so every frame
            // before it held an earlier one.
            let (offset, last_good) = match self.hint.take() {
                Some((segment, offset))
                    if segment == entry.first_seq && offset >= RECORDS_START =>
                {
                    (offset, self.next_seq - 1)
                }
                _ => (RECORDS_START, entry.first_seq - 1),
            };
            self.pos = Some(Pos {
                segment: entry.first_seq,
                file,
                window: Bytes::new(),
                window_start: offset,
                unreadable: Vec::new(),
                offset,
                last_good,
                sealed_len,
                next_segment,
                next_skipped_from,
                _in_use: self.shared.in_use.hold(entry.first_seq),
            });
            return Ok(None);
        }
    }

    /// Looks at the frame at the current position.
    fn step(&mut self, wm: &Watermark) -> Result<Step, ReadError> {
        let shared = self.shared.clone();
        let pos = self.pos.as_mut().expect("positioned");
        // How far this segment may be read.
        if pos.sealed_len.is_none() && pos.segment != wm.active_segment {
            // Sealed since we opened it: learn its final length and successor.
            let table = shared.table.read().unwrap();
            if let Some((e, next)) = table.locate(pos.segment) {
                if e.first_seq == pos.segment && e.sealed {
                    pos.sealed_len = Some(e.len);
                    pos.next_segment = next;
                    pos.next_skipped_from = next
                        .and_then(|n| table.locate(n))
                        .map(|(e, _)| e.skipped_from)
                        .unwrap_or(0);
                }
            }
            if pos.sealed_len.is_none() {
                // The segment is gone (evicted); position afresh.
                self.pos = None;
                return Ok(Step::Again);
            }
        }
        let limit = match pos.sealed_len {
            Some(len) => len,
            None => wm.active_len,
        } as usize;
        let last_good = pos.last_good;
        if pos.offset >= limit {
            return Ok(self.segment_end());
        }
        let path = shared.segment_path(pos.segment);
        let io = |source| ReadError::Io {
            op: "read segment",
            path: path.clone(),
            source,
        };
        if pos.offset < pos.window_start || pos.offset >= pos.window_end() {
            let to = limit.min(pos.offset + WINDOW);
            pos.fill(pos.offset, to).map_err(io)?;
        }
        // A frame, or damage that the window may only seem to show (a frame cut by
        // the window's end, a valid frame beyond it): then read the rest.
        let conclusive = |pos: &Pos| {
            let rel_limit = limit.min(pos.window_end()) - pos.window_start;
            matches!(
                SegmentScan::at(pos.offset - pos.window_start, last_good)
                    .peek(&pos.window, rel_limit),
                ScanStep::Record { .. } | ScanStep::Stale { .. }
            ) || pos.window_end() >= limit
        };
        if !conclusive(pos) {
            // Most often a frame cut by the window's end: a window starting at it,
            // as long as its intact header says it is (and room for the next
            // header), settles that without reading the rest of the segment.
            let rel = pos.offset - pos.window_start;
            let frame = decode_header(&pos.window[rel..])
                .map(|h| h.frame_len())
                .unwrap_or(0);
            let to = limit.min(pos.offset + frame.max(WINDOW));
            if pos.window_start != pos.offset || to > pos.window_end() {
                pos.fill(pos.offset, to).map_err(io)?;
            }
        }
        if !conclusive(pos) {
            // Damage: looking for where valid records resume may need the rest.
            pos.fill(pos.offset, limit).map_err(io)?;
        }
        let ws = pos.window_start;
        let rel_limit = limit.min(pos.window_end()) - ws;
        let window = pos.window.clone();
        // Damaged bytes that held no record (e.g. garbage after the last frame of
        // a sealed segment): nothing lost.
        let no_records_lost = |offset: usize, reason: &str| {
            tracing::warn!(
                segment = %path.display(),
                offset,
                error = %reason,
                "damaged bytes without records skipped"
            );
            Step::Again
        };
        match SegmentScan::at(pos.offset - ws, last_good).peek(&window, rel_limit) {
            ScanStep::Stale { offset, frame } => {
                pos.offset = offset + ws + frame.frame_len();
                Ok(Step::Again)
            }
            ScanStep::Record {
                offset,
                frame,
                missing,
            } => {
                let abs = offset + ws;
                let seq = frame.header.seq;
                let len = frame.frame_len();
                if seq < self.next_seq {
                    pos.offset = abs + len;
                    pos.last_good = pos.last_good.max(seq);
                    return Ok(Step::Again);
                }
                if let Some(m) = missing.filter(|_| seq > self.next_seq) {
                    // Valid frames, but seqs missing between them.
                    let reason = format!(
                        "records {}..={} missing before offset {abs}",
                        m.first_seq, m.last_seq
                    );
                    let lost = m.range(pos.segment, abs, reason);
                    return Ok(self.damaged(lost));
                }
                let key_start = offset + frame.header.header_len();
                let key_end = key_start + frame.key.len();
                let payload = if frame.header.flags & FLAG_SEALED != 0 && !self.locate_only {
                    let (ring, wal_id) = (&self.shared.cfg.keys, &self.shared.wal_id);
                    match self.key.open(ring, wal_id, pos.segment, &frame) {
                        Ok(plain) => plain,
                        Err(e) => {
                            // A record whose CRCs pass but whose tag does not (or
                            // whose key is gone): damage, reported with its seq.
                            pos.offset = abs + len;
                            let lost = LostRange {
                                first_seq: seq,
                                last_seq: seq,
                                segment: pos.segment,
                                offset: abs as u64,
                                spans: Some(frame.header.span_count as u64),
                                reason: format!("record seq {seq} cannot be decrypted: {e}"),
                            };
                            return Ok(self.damaged(lost));
                        }
                    }
                } else {
                    window.slice(key_end..offset + len)
                };
                let record = Record {
                    seq,
                    received_at: time_from_nanos(frame.header.received_at_nanos),
                    span_count: frame.header.span_count,
                    codec: frame.header.codec,
                    idempotency_key: window.slice(key_start..key_end),
                    payload,
                };
                pos.offset = abs + len;
                pos.last_good = seq;
                self.next_seq = seq + 1;
                self.location = Some((pos.segment, abs));
                Ok(Step::Item(ReadItem::Record(record)))
            }
            ScanStep::End => Ok(self.segment_end()),
            ScanStep::Damaged {
                offset,
                resume,
                lost,
                error,
            } => {
                let damage_at = offset + ws;
                let resume_at = resume + ws;
                let reason = pos.io_reason(damage_at, resume_at, &error);
                pos.offset = resume_at;
                match lost {
                    Some(l) => {
                        pos.last_good = l.last_seq;
                        let lost = l.range(pos.segment, damage_at, reason);
                        Ok(self.damaged(lost))
                    }
                    None => Ok(no_records_lost(damage_at, &reason)),
                }
            }
            ScanStep::Unresumable {
                offset,
                error,
                spans,
            } => {
                let damage_at = offset + ws;
                // Lost: up to the next segment (or where its header says seqs were
                // skipped from), or for the active segment up to the last seq.
                let last_lost = match pos.sealed_len {
                    Some(_) => match pos.next_segment {
                        Some(n) if pos.next_skipped_from > 0 && pos.next_skipped_from < n => {
                            pos.next_skipped_from - 1
                        }
                        Some(n) => n - 1,
                        None => wm.last_seq,
                    },
                    None => wm.last_seq,
                };
                let first_lost = last_good + 1;
                let reason = pos.io_reason(damage_at, limit, &error);
                pos.offset = limit;
                pos.last_good = last_lost.max(last_good);
                if last_lost < first_lost {
                    return Ok(no_records_lost(damage_at, &reason));
                }
                let lost = LostRange {
                    first_seq: first_lost,
                    last_seq: last_lost,
                    segment: pos.segment,
                    offset: damage_at as u64,
                    spans: if first_lost == last_lost { spans } else { None },
                    reason,
                };
                Ok(self.damaged(lost))
            }
        }
    }

    /// The end of the current segment: on to the next one, reporting the seqs the
    /// segment should have held and does not (unless the next segment's header says
    /// they were never assigned).
    fn segment_end(&mut self) -> Step {
        let pos = self.pos.as_mut().expect("positioned");
        if pos.sealed_len.is_none() {
            // Caught up with the visible end of the active segment.
            return Step::Idle;
        }
        let (segment, offset, last_good) = (pos.segment, pos.offset, pos.last_good);
        let Some(next) = pos.next_segment else {
            self.pos = None;
            return Step::Again;
        };
        let skipped_from = match pos.next_skipped_from {
            s if s > 0 && s < next => s,
            _ => next,
        };
        if last_good + 1 < skipped_from && self.next_seq < skipped_from {
            // The segment ends before the seqs it should hold: truncated.
            let lost = LostRange {
                first_seq: last_good + 1,
                last_seq: skipped_from - 1,
                segment,
                offset: offset as u64,
                spans: None,
                reason: format!(
                    "segment ends at byte {offset}; records {}..={} missing (truncated)",
                    last_good + 1,
                    skipped_from - 1
                ),
            };
            return self.damaged(lost);
        }
        self.pos = None;
        if self.next_seq < next {
            // Seqs skipped when the log reopened after an unclean stop: never
            // records, nothing lost.
            let gap = Gap {
                first_seq: self.next_seq,
                last_seq: next - 1,
                cause: GapCause::Skipped,
            };
            self.next_seq = next;
            return Step::Item(ReadItem::Gap(gap));
        }
        Step::Again
    }

    /// Reports `lost` (once, log-wide) and returns the part of it this reader skips,
    /// if any (damage entirely before this reader's start is only reported).
    fn damaged(&mut self, lost: LostRange) -> Step {
        self.shared.report_damage(&lost);
        if let Some(pos) = self.pos.as_mut() {
            pos.last_good = pos.last_good.max(lost.last_seq);
        }
        if lost.last_seq < self.next_seq {
            return Step::Again;
        }
        let gap = Gap {
            first_seq: self.next_seq.max(lost.first_seq),
            last_seq: lost.last_seq,
            cause: GapCause::Damaged(lost.clone()),
        };
        self.next_seq = lost.last_seq + 1;
        Step::Item(ReadItem::Gap(gap))
    }
}
