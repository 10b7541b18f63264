//! Segments in memory: the table of segment files, reading their bytes (with
//! `pread`, surviving bad sectors), and the frame scanner shared by recovery,
//! readers, the tools and eviction.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{decode_frame, resync, Frame, FrameError, SEGMENT_HEADER_LEN};
use crate::fsutil::segment_file_name;
use crate::types::LostRange;

/// One segment file as the log knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentEntry {
    pub first_seq: u64,
    /// From its header: seqs `skipped_from..first_seq` were never assigned (0: none).
    pub skipped_from: u64,
    /// Bytes of the file. Final once sealed; for the active segment, the bytes
    /// written so far (not all of them need be visible to readers yet).
    pub len: u64,
    pub sealed: bool,
}

/// All segment files, oldest first. The last one is the active segment.
#[derive(Debug, Default)]
pub(crate) struct SegmentTable {
    segments: BTreeMap<u64, SegmentEntry>,
    /// Delivered segments handed to the deleter thread: gone for readers, still on
    /// disk (and in `total_bytes`) until the deleter reports them unlinked.
    deleting: BTreeMap<u64, u64>,
    /// `skipped_from` of segments being deleted (to restore a cancelled deletion).
    skipped: BTreeMap<u64, u64>,
    total_bytes: u64,
}

impl SegmentTable {
    pub fn insert(&mut self, e: SegmentEntry) {
        self.total_bytes += e.len;
        if let Some(old) = self.segments.insert(e.first_seq, e) {
            self.total_bytes -= old.len;
        }
    }

    pub fn remove(&mut self, first_seq: u64) -> Option<SegmentEntry> {
        let e = self.segments.remove(&first_seq)?;
        self.total_bytes -= e.len;
        Some(e)
    }

    /// Moves a segment out of sight of readers while it is being deleted; its bytes
    /// stay counted until [`SegmentTable::finish_delete`].
    pub fn begin_delete(&mut self, first_seq: u64) -> bool {
        match self.segments.remove(&first_seq) {
            Some(e) => {
                self.deleting.insert(first_seq, e.len);
                if e.skipped_from > 0 {
                    self.skipped.insert(first_seq, e.skipped_from);
                }
                true
            }
            None => false,
        }
    }

    pub fn finish_delete(&mut self, first_seq: u64) {
        self.skipped.remove(&first_seq);
        if let Some(len) = self.deleting.remove(&first_seq) {
            self.total_bytes -= len;
        }
    }

    /// A deletion that could not be done: the segment is back.
    pub fn cancel_delete(&mut self, first_seq: u64) {
        if let Some(len) = self.deleting.remove(&first_seq) {
            self.segments.insert(
                first_seq,
                SegmentEntry {
                    first_seq,
                    skipped_from: self.skipped.get(&first_seq).copied().unwrap_or(0),
                    len,
                    sealed: true,
                },
            );
        }
    }

    pub fn deletes_pending(&self) -> bool {
        !self.deleting.is_empty()
    }

    pub fn set_len(&mut self, first_seq: u64, len: u64) {
        if let Some(e) = self.segments.get_mut(&first_seq) {
            self.total_bytes = self.total_bytes - e.len + len;
            e.len = len;
        }
    }

    pub fn seal(&mut self, first_seq: u64) {
        if let Some(e) = self.segments.get_mut(&first_seq) {
            e.sealed = true;
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Segment files on disk (including those being deleted).
    pub fn len(&self) -> usize {
        self.segments.len() + self.deleting.len()
    }

    pub fn first(&self) -> Option<&SegmentEntry> {
        self.segments.values().next()
    }

    pub fn oldest_sealed(&self) -> Option<&SegmentEntry> {
        self.first().filter(|e| e.sealed)
    }

    /// (first seq, last seq) of every sealed segment, oldest first.
    pub fn sealed_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut it = self.segments.values().peekable();
        std::iter::from_fn(move || {
            let e = it.next()?;
            let next = it.peek()?;
            e.sealed.then_some((e.first_seq, next.first_seq - 1))
        })
    }

    /// The segment that holds (or would hold) `seq`, and the first seq of the segment
    /// after it.
    pub fn locate(&self, seq: u64) -> Option<(SegmentEntry, Option<u64>)> {
        let (_, e) = self.segments.range(..=seq).next_back()?;
        let next = self
            .segments
            .range(e.first_seq + 1..)
            .next()
            .map(|(k, _)| *k);
        Some((e.clone(), next))
    }
}

pub(crate) fn segment_path(wal_dir: &Path, first_seq: u64) -> PathBuf {
    wal_dir.join(segment_file_name(first_seq))
}

/// Which segments readers in this process are reading right now, so the deleter
/// does not punch holes under them (see `deleter.rs`).
#[derive(Debug, Default)]
pub(crate) struct InUse {
    counts: std::sync::Mutex<std::collections::HashMap<u64, usize>>,
}

impl InUse {
    pub fn is_in_use(&self, segment: u64) -> bool {
        self.counts.lock().unwrap().contains_key(&segment)
    }

    /// Counts `segment` as in use for as long as the guard lives.
    pub fn hold(self: &Arc<Self>, segment: u64) -> InUseGuard {
        *self.counts.lock().unwrap().entry(segment).or_insert(0) += 1;
        InUseGuard {
            tracker: self.clone(),
            segment,
        }
    }
}

#[derive(Debug)]
pub(crate) struct InUseGuard {
    tracker: Arc<InUse>,
    segment: u64,
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let mut counts = self.tracker.counts.lock().unwrap();
        if let Some(n) = counts.get_mut(&self.segment) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.segment);
            }
        }
    }
}

/// Bytes read from a segment file, with the parts the device could not read.
#[derive(Debug, Default)]
pub(crate) struct Region {
    /// The bytes (shorter than asked at the end of the file); unreadable pages are
    /// zeros, which no frame checksum accepts.
    pub bytes: Vec<u8>,
    /// Unreadable byte ranges `[from, to)` (file offsets).
    pub unreadable: Vec<(u64, u64)>,
}

impl Region {
    /// The first unreadable range overlapping file bytes `[from, to)`.
    pub fn unreadable_in(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        self.unreadable
            .iter()
            .copied()
            .find(|&(a, b)| a < to && from < b)
    }
}

/// True for the errors a failing device gives for a read (a bad sector, a
/// checksum the filesystem rejects): the bytes are lost, nothing else is wrong.
pub(crate) fn is_media_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EIO)
            | Some(libc_errno::ENXIO)
            | Some(libc_errno::EBADMSG)
            | Some(libc_errno::EUCLEAN)
            | Some(libc_errno::ENODATA)
    )
}

/// Errno values (Linux) without a libc dependency.
mod libc_errno {
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const ENODATA: i32 = 61;
    pub const EBADMSG: i32 = 74;
    pub const EUCLEAN: i32 = 117;
}

const PAGE: u64 = 4096;

/// Reads `len` bytes of `file` at `start` with `pread`, never through a mapping: a
/// page the device cannot read reads as zeros and is listed (a mapped read of it
/// would kill the process with SIGBUS). Errors other than media errors are
/// returned.
pub(crate) fn read_region(file: &File, start: u64, len: usize) -> io::Result<Region> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; len];
    let mut unreadable = Vec::new();
    let mut done = 0usize;
    while done < len {
        match file.read_at(&mut bytes[done..], start + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_media_error(&e) => {
                // Page by page from here, to lose no more than the bad pages.
                let at = start + done as u64;
                let page_end = ((at / PAGE) + 1) * PAGE;
                let step = ((page_end - at) as usize).min(len - done);
                let mut page = vec![0u8; step];
                match read_exact_or_eof(file, &mut page, at) {
                    Ok(0) => break,
                    Ok(n) => {
                        bytes[done..done + n].copy_from_slice(&page[..n]);
                        done += n;
                        if n < step {
                            break;
                        }
                    }
                    Err(e2) if is_media_error(&e2) => {
                        tracing::warn!(offset = at, bytes = step, error = %e2, "unreadable bytes in a segment file (bad sector?)");
                        match unreadable.last_mut() {
                            Some((_, b)) if *b == at => *b = at + step as u64,
                            _ => unreadable.push((at, at + step as u64)),
                        }
                        done += step;
                    }
                    Err(e2) => return Err(e2),
                }
            }
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(done);
    // Bytes counted as unreadable at the very end may lie past the end of file.
    Ok(Region { bytes, unreadable })
}

fn read_exact_or_eof(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One step of scanning a segment's bytes.
#[derive(Debug)]
enum Scan<'a> {
    /// A valid frame at `offset`.
    Frame { offset: usize, frame: Frame<'a> },
    /// The bytes at `offset` are not a valid frame.
    Damage(Damage),
    /// `offset` is at the limit.
    End,
}

#[derive(Debug)]
struct Damage {
    pub offset: usize,
    pub error: FrameError,
    /// The next valid frame after the damage (with a seq above the last good one),
    /// as (offset, seq); `None` if nothing valid follows before the limit.
    pub resume: Option<(usize, u64)>,
    /// Span count of the damaged record when its header was intact and it alone is
    /// damaged.
    pub spans: Option<u64>,
}

/// Scans the frame at `offset` in `bytes[..limit]`. `last_good` is the seq of the
/// last valid frame before `offset` (or the segment's first seq minus one).
fn scan_at(bytes: &[u8], offset: usize, limit: usize, last_good: u64) -> Scan<'_> {
    if offset >= limit {
        return Scan::End;
    }
    let window = &bytes[..limit];
    let error = match decode_frame(&window[offset..]) {
        Ok(frame) => return Scan::Frame { offset, frame },
        Err(e) => e,
    };
    // An intact header makes the length trustworthy: if a valid frame starts right
    // after the damaged one, only that record is lost.
    if let Some(len) = error.trusted_frame_len(&window[offset..]) {
        let next = offset + len;
        if let Ok(f) = decode_frame(&window[next.min(limit)..]) {
            if f.header.seq > last_good {
                let spans = match error {
                    FrameError::BadRecordChecksum { span_count, .. } => Some(span_count as u64),
                    _ => None,
                };
                return Scan::Damage(Damage {
                    offset,
                    error,
                    resume: Some((next, f.header.seq)),
                    spans,
                });
            }
        }
    }
    let resume = resync(window, offset + 1, |s| s > last_good).map(|at| {
        let seq = decode_frame(&window[at..])
            .map(|f| f.header.seq)
            .unwrap_or(last_good + 1);
        (at, seq)
    });
    Scan::Damage(Damage {
        offset,
        error,
        resume,
        spans: None,
    })
}

/// Seqs lost between two points of a segment, before the caller says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lost {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Known when exactly one record is lost and its header was intact.
    pub spans: Option<u64>,
}

impl Lost {
    pub fn range(self, segment: u64, offset: usize, reason: String) -> LostRange {
        LostRange {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            segment,
            offset: offset as u64,
            spans: self.spans,
            reason,
        }
    }
}

/// One step of a [`SegmentScan`].
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// The next record in order (its seq above the last good one). `missing`: the
    /// seqs absent between the last good record and this one, both valid frames.
    Record {
        offset: usize,
        frame: Frame<'a>,
        missing: Option<Lost>,
    },
    /// A valid frame whose seq is not above the last good one: passed over.
    Stale { offset: usize, frame: Frame<'a> },
    /// Damaged bytes at `offset`; valid records resume at `resume`. `lost`: the
    /// seqs in between (`None`: the damaged bytes held no record).
    Damaged {
        offset: usize,
        resume: usize,
        lost: Option<Lost>,
        error: FrameError,
    },
    /// Damaged bytes at `offset` and nothing valid after them before the limit:
    /// what was lost (a torn tail, the rest of a sealed segment, records known to
    /// be durable) is the caller's to say. `spans`: of the damaged record, when its
    /// header was intact.
    Unresumable {
        offset: usize,
        error: FrameError,
        spans: Option<u64>,
    },
    /// At the limit.
    End,
}

/// The one walk over a segment's frames: from `offset`, in order, carrying the
/// last good seq, so that recovery, readers, the offline tools and the writer read
/// records, gaps and damage the same way. A valid frame's bytes are its own (the
/// next one starts right after it); after damage, the next valid frame with a seq
/// above the last good one, anywhere.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentScan {
    pub offset: usize,
    /// The seq of the last valid record before `offset` (or the segment's first seq
    /// minus one).
    pub last_good: u64,
}

impl SegmentScan {
    /// From the first record of the segment whose first seq is `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        Self::at(RECORDS_START, first_seq - 1)
    }

    pub fn at(offset: usize, last_good: u64) -> Self {
        Self { offset, last_good }
    }

    /// The step at the current position, without moving.
    pub fn peek<'a>(&self, bytes: &'a [u8], limit: usize) -> Step<'a> {
        let last_good = self.last_good;
        match scan_at(bytes, self.offset, limit, last_good) {
            Scan::End => Step::End,
            Scan::Frame { offset, frame } => {
                let seq = frame.header.seq;
                if seq <= last_good {
                    return Step::Stale { offset, frame };
                }
                let missing = (seq > last_good + 1).then_some(Lost {
                    first_seq: last_good + 1,
                    last_seq: seq - 1,
                    spans: None,
                });
                Step::Record {
                    offset,
                    frame,
                    missing,
                }
            }
            Scan::Damage(d) => match d.resume {
                Some((resume, seq)) => Step::Damaged {
                    offset: d.offset,
                    resume,
                    lost: (seq > last_good + 1).then_some(Lost {
                        first_seq: last_good + 1,
                        last_seq: seq - 1,
                        spans: if seq == last_good + 2 { d.spans } else { None },
                    }),
                    error: d.error,
                },
                None => Step::Unresumable {
                    offset: d.offset,
                    error: d.error,
                    spans: d.spans,
                },
            },
        }
    }

    /// The step at the current position, moving past it (not past `Unresumable`
    /// or `End`: there is nothing to move to).
    pub fn next<'a>(&mut self, bytes: &'a [u8], limit: usize) -> Step<'a> {
        let step = self.peek(bytes, limit);
        match &step {
            Step::Record { offset, frame, .. } => {
                self.offset = offset + frame.frame_len();
                self.last_good = frame.header.seq;
            }
            Step::Stale { offset, frame } => self.offset = offset + frame.frame_len(),
            Step::Damaged { resume, lost, .. } => {
                self.offset = *resume;
                if let Some(l) = lost {
                    self.last_good = l.last_seq;
                }
            }
            Step::Unresumable { .. } | Step::End => {}
        }
        step
    }
}

/// First offset of a segment's records.
pub(crate) const RECORDS_START: usize = SEGMENT_HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, Codec};

    /// What a scan of `bytes` from the start of a segment of first seq 1 sees:
    /// one line per step.
    fn walk(bytes: &[u8]) -> Vec<String> {
        let mut scan = SegmentScan::new(1);
        let mut out = Vec::new();
        loop {
            let line = match scan.next(bytes, bytes.len()) {
                Step::Record { frame, missing, .. } => format!(
                    "record {} missing {:?}",
                    frame.header.seq,
                    missing.map(|m| (m.first_seq, m.last_seq))
                ),
                Step::Stale { frame, .. } => format!("stale {}", frame.header.seq),
                Step::Damaged { lost, .. } => {
                    format!(
                        "damaged {:?}",
                        lost.map(|l| (l.first_seq, l.last_seq, l.spans))
                    )
                }
                Step::Unresumable { spans, .. } => {
                    out.push(format!("unresumable spans {spans:?}"));
                    break;
                }
                Step::End => {
                    out.push("end".into());
                    break;
                }
            };
            out.push(line);
        }
        out
    }

    fn segment(seqs: &[u64]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = vec![0u8; RECORDS_START];
        let mut offsets = Vec::new();
        for &seq in seqs {
            offsets.push(bytes.len());
            encode_record(
                &mut bytes,
                seq,
                1,
                seq as u32 * 10,
                Codec(1),
                0,
                b"k",
                b"payload",
            );
        }
        (bytes, offsets)
    }

    #[test]
    fn a_scan_reports_records_gaps_stale_frames_and_damage_the_same_way_for_every_caller() {
        // 1, 2, [3 with a flipped payload byte], 4, 6 (5 never written), 2 again.
        let (mut bytes, at) = segment(&[1, 2, 3, 4, 6, 2]);
        let payload_of_3 = at[2] + crate::format::RECORD_HEADER_LEN + 1;
        bytes[payload_of_3] ^= 0xff;
        assert_eq!(
            walk(&bytes),
            [
                "record 1 missing None",
                "record 2 missing None",
                // An intact header: exactly one record lost, its spans known.
                "damaged Some((3, 3, Some(30)))",
                "record 4 missing None",
                "record 6 missing Some((5, 5))",
                "stale 2",
                "end",
            ]
        );
        // Garbage after the last record, nothing valid after it.
        let (mut bytes, _) = segment(&[1, 2]);
        bytes.extend_from_slice(&[0xab; 100]);
        assert_eq!(
            walk(&bytes),
            [
                "record 1 missing None",
                "record 2 missing None",
                "unresumable spans None",
            ]
        );
        // A damaged header: where valid records resume decides what was lost.
        let (mut bytes, at) = segment(&[1, 2, 3, 4]);
        bytes[at[1]] ^= 0xff;
        bytes[at[2]] ^= 0xff;
        assert_eq!(
            walk(&bytes),
            [
                "record 1 missing None",
                "damaged Some((2, 3, None))",
                "record 4 missing None",
                "end",
            ]
        );
    }
}
