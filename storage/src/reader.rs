//! Readers stream records in seq order from any position, through read-only
//! mappings of the segment files (sealed and active), without copying payloads.
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

use crate::error::ReadError;
use crate::segment::{scan_at, MapSlice, Scan, SegmentMap, RECORDS_START};
use crate::shared::{Shared, Watermark};
use crate::types::{time_from_nanos, Gap, GapCause, LostRange, ReadItem, Record};

/// Position inside one mapped segment.
struct Pos {
    segment: u64,
    map: Arc<SegmentMap>,
    /// Offset of the next frame to look at.
    offset: usize,
    /// Seq of the last valid frame before `offset` (segment first seq − 1 at start).
    /// Damage ranges are computed from it, so every reader reports the same range.
    last_good: u64,
    /// Final length once the segment is known to be sealed.
    sealed_len: Option<u64>,
    /// First seq of the following segment, once known.
    next_segment: Option<u64>,
    /// Bytes before this offset have been released from the resident set.
    released: usize,
}

/// A reader gives back the resident pages behind it every this many bytes.
const RELEASE_STEP: usize = 4 << 20;

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
        }
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
            if self.next_seq > wm.last_seq {
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
                return Ok(Some(self.skip_to(to, GapCause::NotRetained)));
            }
            if self.pos.is_none() {
                if let Some(gap) = self.position(&wm)? {
                    return Ok(Some(gap));
                }
                if self.pos.is_none() {
                    return Ok(None);
                }
            }
            match self.step(&wm)? {
                Step::Item(item) => return Ok(Some(item)),
                Step::Again => {}
                Step::Idle => return Ok(None),
            }
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

    /// Maps the segment holding `next_seq`. Returns a gap if `next_seq` is older
    /// than anything on disk.
    fn position(&mut self, wm: &Watermark) -> Result<Option<ReadItem>, ReadError> {
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
                // Deleted between the lookup and the open: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ReadError::Io {
                        op: "open segment",
                        path,
                        source,
                    })
                }
            };
            let (map_len, sealed_len) = if entry.sealed {
                (entry.len, Some(entry.len))
            } else {
                let want = self.shared.cfg.segment_bytes.max(wm.active_len);
                (want, None)
            };
            let map = SegmentMap::map_tracked(&file, map_len, &self.shared.maps, entry.first_seq)
                .map_err(|source| ReadError::Io {
                op: "map segment",
                path,
                source,
            })?;
            self.pos = Some(Pos {
                segment: entry.first_seq,
                map,
                offset: RECORDS_START,
                last_good: entry.first_seq - 1,
                sealed_len,
                next_segment,
                released: 0,
            });
            return Ok(None);
        }
    }

    /// Looks at the frame at the current position.
    fn step(&mut self, wm: &Watermark) -> Result<Step, ReadError> {
        let pos = self.pos.as_mut().expect("positioned");
        // How far this segment may be read.
        if pos.sealed_len.is_none() && pos.segment != wm.active_segment {
            // Sealed since we mapped it: learn its final length and successor.
            let table = self.shared.table.read().unwrap();
            if let Some((e, next)) = table.locate(pos.segment) {
                if e.first_seq == pos.segment && e.sealed {
                    pos.sealed_len = Some(e.len);
                    pos.next_segment = next;
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
        if limit > pos.map.len() {
            // The segment outgrew the mapping (a record larger than segment_bytes).
            self.pos = None;
            return Ok(Step::Again);
        }
        let last_good = pos.last_good;
        match scan_at(&pos.map, pos.offset, limit, last_good) {
            Scan::Frame { offset, frame } => {
                let seq = frame.header.seq;
                let len = frame.frame_len();
                if seq < self.next_seq {
                    pos.offset = offset + len;
                    pos.last_good = pos.last_good.max(seq);
                    return Ok(Step::Again);
                }
                if seq > self.next_seq {
                    // Valid frames, but seqs missing between them.
                    let lost = LostRange {
                        first_seq: last_good + 1,
                        last_seq: seq - 1,
                        segment: pos.segment,
                        offset: offset as u64,
                        spans: None,
                        reason: format!(
                            "records {}..={} missing before offset {offset}",
                            last_good + 1,
                            seq - 1
                        ),
                    };
                    return Ok(self.damaged(lost));
                }
                let key_start = offset + crate::format::RECORD_HEADER_LEN;
                let key_end = key_start + frame.key.len();
                let record = Record {
                    seq,
                    received_at: time_from_nanos(frame.header.received_at_nanos),
                    span_count: frame.header.span_count,
                    codec: frame.header.codec,
                    idempotency_key: slice(&pos.map, key_start, key_end),
                    payload: slice(&pos.map, key_end, offset + len),
                };
                pos.offset = offset + len;
                pos.last_good = seq;
                self.next_seq = seq + 1;
                if pos.offset - pos.released >= RELEASE_STEP {
                    // Keep the page holding the current offset.
                    let upto = pos.offset & !0xFFF;
                    pos.map.release(pos.released, upto);
                    pos.released = upto;
                }
                Ok(Step::Item(ReadItem::Record(record)))
            }
            Scan::End => {
                if pos.sealed_len.is_none() {
                    // Caught up with the visible end of the active segment.
                    return Ok(Step::Idle);
                }
                let segment = pos.segment;
                let next = pos.next_segment;
                let offset = pos.offset;
                self.pos = None;
                match next {
                    Some(next) if self.next_seq < next => {
                        // The segment ends before the seqs it should hold: truncated.
                        let lost = LostRange {
                            first_seq: last_good + 1,
                            last_seq: next - 1,
                            segment,
                            offset: offset as u64,
                            spans: None,
                            reason: format!("segment ends at byte {offset}; records {}..={} missing (truncated)", last_good + 1, next - 1),
                        };
                        Ok(self.damaged(lost))
                    }
                    _ => Ok(Step::Again),
                }
            }
            Scan::Damage(d) => {
                let (resume_at, last_lost) = match d.resume {
                    Some((at, seq)) => (at, seq - 1),
                    None => {
                        let end = match pos.sealed_len {
                            Some(_) => pos.next_segment.map(|n| n - 1).unwrap_or(wm.last_seq),
                            None => wm.last_seq,
                        };
                        (limit, end)
                    }
                };
                let first_lost = last_good + 1;
                pos.offset = resume_at;
                pos.last_good = last_lost.max(last_good);
                if last_lost < first_lost {
                    // Damaged bytes that held no record (e.g. garbage after the
                    // last frame of a sealed segment): nothing lost.
                    tracing::warn!(
                        segment = %self.shared.segment_path(pos.segment).display(),
                        offset = d.offset,
                        error = %d.error,
                        "damaged bytes without records skipped"
                    );
                    return Ok(Step::Again);
                }
                let lost = LostRange {
                    first_seq: first_lost,
                    last_seq: last_lost,
                    segment: pos.segment,
                    offset: d.offset as u64,
                    spans: if first_lost == last_lost {
                        d.spans
                    } else {
                        None
                    },
                    reason: d.error.to_string(),
                };
                Ok(self.damaged(lost))
            }
        }
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

fn slice(map: &Arc<SegmentMap>, start: usize, end: usize) -> Bytes {
    if start == end {
        return Bytes::new();
    }
    Bytes::from_owner(MapSlice {
        map: map.clone(),
        start,
        end,
    })
}
