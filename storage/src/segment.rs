//! Segments in memory: the table of segment files, read-only mappings, and the
//! frame scanner shared by recovery, readers and eviction.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use crate::format::{decode_frame, resync, Frame, FrameError, SEGMENT_HEADER_LEN};
use crate::fsutil::segment_file_name;

/// One segment file as the log knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentEntry {
    pub first_seq: u64,
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
                true
            }
            None => false,
        }
    }

    pub fn finish_delete(&mut self, first_seq: u64) {
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

/// Which segments are mapped in this process right now, so the deleter does not
/// punch holes under a live mapping (see `deleter.rs`).
#[derive(Debug, Default)]
pub(crate) struct MapTracker {
    counts: std::sync::Mutex<std::collections::HashMap<u64, usize>>,
}

impl MapTracker {
    pub fn is_mapped(&self, segment: u64) -> bool {
        self.counts.lock().unwrap().contains_key(&segment)
    }
}

/// Counts one mapping of a segment in its tracker for as long as it lives.
#[derive(Debug)]
struct MapGuard {
    tracker: Arc<MapTracker>,
    segment: u64,
}

impl Drop for MapGuard {
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

/// A read-only mapping of (a prefix of) a segment file, shared by the payloads handed
/// out from it.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: Option<Mmap>,
    _guard: Option<MapGuard>,
}

impl SegmentMap {
    /// Maps `len` bytes of `file`. `len` may exceed the file's current length (the
    /// active segment grows into the mapping); callers never touch bytes beyond the
    /// visible end, which is always within the file.
    ///
    /// Safety argument for the `unsafe` map: segment bytes below the visible end are
    /// never rewritten or truncated while the log is open (appends only extend, an
    /// out-of-space rollback only truncates bytes that were never visible, and
    /// deletion unlinks without truncating), so the mapping never changes under a
    /// reader. Modifying segment files from outside while tracespool runs is
    /// unsupported.
    pub fn map(file: &File, len: u64) -> io::Result<Arc<Self>> {
        if len == 0 {
            return Ok(Arc::new(Self {
                map: None,
                _guard: None,
            }));
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large to map"))?;
        // SAFETY: see above.
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Arc::new(Self {
            map: Some(map),
            _guard: None,
        }))
    }

    /// [`SegmentMap::map`], counted in `tracker` as a mapping of `segment`.
    pub fn map_tracked(
        file: &File,
        len: u64,
        tracker: &Arc<MapTracker>,
        segment: u64,
    ) -> io::Result<Arc<Self>> {
        *tracker.counts.lock().unwrap().entry(segment).or_insert(0) += 1;
        let guard = MapGuard {
            tracker: tracker.clone(),
            segment,
        };
        let mut map = Self::map(file, len)?;
        Arc::get_mut(&mut map).expect("fresh").replace_guard(guard);
        Ok(map)
    }

    fn replace_guard(&mut self, guard: MapGuard) {
        self._guard = Some(guard);
    }
}

impl SegmentMap {
    /// Drops the resident pages of `[from, to)` from this mapping, so a reader
    /// streaming a large segment does not hold all of it in its resident set.
    ///
    /// The data stays in the page cache; a later access (a payload still held by a
    /// consumer) faults the same bytes back in. Safe for a read-only shared file
    /// mapping whose bytes never change (see [`SegmentMap::map`]).
    pub fn release(&self, from: usize, to: usize) {
        if let Some(map) = &self.map {
            if from < to && to <= map.len() {
                // SAFETY: MADV_DONTNEED on a MAP_SHARED, read-only file mapping only
                // drops page-table entries; contents are re-read from the file.
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
                };
            }
        }
    }
}

impl Deref for SegmentMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// A slice of a mapping that keeps the mapping alive: the owner of zero-copy payloads.
pub(crate) struct MapSlice {
    pub map: Arc<SegmentMap>,
    pub start: usize,
    pub end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

/// One step of scanning a segment's bytes.
#[derive(Debug)]
pub(crate) enum Scan<'a> {
    /// A valid frame at `offset`.
    Frame { offset: usize, frame: Frame<'a> },
    /// The bytes at `offset` are not a valid frame.
    Damage(Damage),
    /// `offset` is at the limit.
    End,
}

#[derive(Debug)]
pub(crate) struct Damage {
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
pub(crate) fn scan_at(bytes: &[u8], offset: usize, limit: usize, last_good: u64) -> Scan<'_> {
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

/// First offset of a segment's records.
pub(crate) const RECORDS_START: usize = SEGMENT_HEADER_LEN;
