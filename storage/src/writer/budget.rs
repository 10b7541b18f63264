//! The disk budget: room checked before a group is written (`max_bytes`,
//! `min_free_bytes`, the ledger's headroom), and under `when_full = drop_oldest`
//! the oldest segments evicted (D1–D2 here), each eviction described per cursor
//! and reported before the unlink.

use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Writer;
use crate::config::WhenFull;
use crate::error::{AppendError, FullReason};
use crate::format::{decode_header, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::fsutil::{available_bytes, sync_dir};
use crate::segment::{read_region, SegmentEntry, SegmentScan, Step, RECORDS_START};
use crate::types::{CursorLoss, Eviction, WalEvent};

impl Writer {
    /// Checks that `need` more bytes fit the budget and the filesystem reserve.
    pub(super) fn check_space(&mut self, need: u64) -> Result<(), FullReason> {
        let cfg = &self.shared.cfg;
        let used = self.shared.table.read().unwrap().total_bytes() + self.chunk_bytes as u64;
        if used + need > cfg.max_bytes {
            return Err(FullReason::Budget {
                used,
                needed: need,
                max_bytes: cfg.max_bytes,
            });
        }
        let min_free = cfg.min_free_bytes + self.shared.headroom.load(Ordering::Acquire);
        if min_free > 0 {
            let available = match self.available {
                Some(a) => a,
                None => {
                    let a = available_bytes(&self.shared.wal_dir).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "statvfs failed; not enforcing min_free_bytes for this group");
                        u64::MAX
                    });
                    self.available = Some(a);
                    a
                }
            }
            .saturating_sub(self.chunk_bytes as u64);
            if available < need.saturating_add(min_free) {
                return Err(FullReason::MinFree {
                    available,
                    needed: need,
                    min_free_bytes: min_free,
                });
            }
        }
        Ok(())
    }

    /// Makes room for a frame of `frame` bytes, evicting under `drop_oldest`.
    pub(super) fn make_room(
        &mut self,
        frame: u64,
        evicted: &mut Vec<Eviction>,
    ) -> Result<(), AppendError> {
        loop {
            let need = frame
                + if self.needs_rotation(frame) {
                    SEGMENT_HEADER_LEN as u64
                } else {
                    0
                };
            let reason = match self.check_space(need) {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if self.shared.cfg.when_full == WhenFull::Backpressure {
                return Err(AppendError::Full(reason));
            }
            if self.wait_for_deletions() {
                // Delivered segments were on their way out; look again before
                // dropping anything undelivered.
                continue;
            }
            let victim = self
                .shared
                .table
                .read()
                .unwrap()
                .oldest_sealed()
                .map(|e| e.first_seq);
            let eviction = match victim {
                Some(first) => self.evict_sealed(first)?,
                None if self.active_has_content() => self.evict_active()?,
                None => return Err(AppendError::Full(reason)),
            };
            self.available = None;
            evicted.push(eviction);
        }
    }

    /// Waits (briefly) for the deleter to finish segments handed to it. Returns
    /// whether there were any.
    pub(super) fn wait_for_deletions(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut waited = false;
        while self.shared.table.read().unwrap().deletes_pending() && Instant::now() < deadline {
            waited = true;
            std::thread::sleep(Duration::from_millis(1));
        }
        waited
    }

    /// Deletes the oldest sealed segment to make room, reporting what it held.
    pub(super) fn evict_sealed(&mut self, first: u64) -> Result<Eviction, AppendError> {
        let (len, next) = {
            let table = self.shared.table.read().unwrap();
            let (e, next) = table.locate(first).expect("segment in table");
            (e.len, next)
        };
        let last = next.map(|n| n - 1).unwrap_or(self.next_seq - 1);
        self.evict(first, last, len)
    }

    /// Evicts the active segment itself: its records are made durable and answered
    /// first (they were accepted), then dropped as the oldest data.
    pub(super) fn evict_active(&mut self) -> Result<Eviction, AppendError> {
        self.flush_chunk();
        self.sync();
        if let Some(cause) = self.shared.failed.get() {
            return Err(AppendError::Failed {
                cause: cause.clone(),
            });
        }
        // (No seq is assigned again once the last segment file is gone: the bound in
        // wal.state already covers every seq given out.)
        let first = self.active.first_seq;
        let len = self.active.len;
        self.shared.table.write().unwrap().seal(first);
        let eviction = self.evict(first, self.next_seq - 1, len)?;
        let new = match self.create_segment(self.next_seq, 0) {
            Ok(a) => a,
            Err(e) => {
                // With no segment left there is nowhere to append: stop until restart.
                return Err(self.fail(format!(
                    "creating a segment after evicting the active one: {e}"
                )));
            }
        };
        self.active = new;
        self.shared.table.write().unwrap().insert(SegmentEntry {
            first_seq: self.active.first_seq,
            skipped_from: 0,
            len: self.active.len,
            sealed: false,
        });
        self.last_synced_seq = self.next_seq - 1;
        Ok(eviction)
    }

    pub(super) fn evict(
        &mut self,
        first: u64,
        last: u64,
        len: u64,
    ) -> Result<Eviction, AppendError> {
        let path = self.shared.segment_path(first);
        let eviction = self.describe(first, last, len, &path);
        tracing::warn!(
            segment = %path.display(),
            first_seq = eviction.first_seq,
            last_seq = eviction.last_seq,
            spans = eviction.spans,
            undelivered_records = eviction.undelivered_records,
            undelivered_spans = eviction.undelivered_spans,
            "disk budget full: oldest segment evicted (when_full = drop_oldest)"
        );
        // Reported before it happens, so an audit trail cannot miss it; if it cannot
        // be recorded, nothing is evicted (the append is refused instead).
        if let Err(detail) = self.shared.emit(WalEvent::Evicted(eviction.clone())) {
            tracing::error!(segment = %path.display(), error = %detail, "eviction not recorded; nothing evicted, the append is refused");
            return Err(AppendError::Full(FullReason::NotRecorded { detail }));
        }
        // D1: unlink.
        if let Err(e) = fs::remove_file(&path) {
            return Err(self.fail(format!("deleting {} to make room: {e}", path.display())));
        }
        // The file is gone whatever happens next: readers must not look for it.
        self.shared.table.write().unwrap().remove(first);
        self.shared
            .evicted_below
            .fetch_max(last + 1, Ordering::AcqRel);
        // D2: make the deletion durable.
        if let Err(e) = sync_dir(&self.shared.wal_dir) {
            return Err(self.fail(format!("fsync of {}: {e}", self.shared.wal_dir.display())));
        }
        if let Err(e) = self.shared.meta.forget_segment(first) {
            tracing::warn!(error = %e, segment = first, "could not drop metadata of evicted segment");
        }
        Ok(eviction)
    }

    /// Counts what a segment about to be deleted holds, and what each cursor has
    /// not acknowledged of it (those records are counted as lost for the cursor from
    /// now on; see `cursor.rs`).
    pub(super) fn describe(&self, first: u64, last: u64, len: u64, path: &Path) -> Eviction {
        // Span count of every readable record, in seq order.
        let spans_of = count_spans(path, first, len);
        let spans_in = |s: u64, e: u64| -> u64 {
            let lo = spans_of.partition_point(|&(q, _)| q < s);
            let hi = spans_of.partition_point(|&(q, _)| q <= e);
            spans_of[lo..hi].iter().map(|&(_, n)| n).sum()
        };
        let cursors: Vec<_> = self
            .shared
            .cursors
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect();
        let mut per_cursor = Vec::new();
        // Seqs lost to at least one cursor: the union of the per-cursor ranges.
        let mut union: Vec<(u64, u64)> = Vec::new();
        for c in &cursors {
            let lost = c.count_losses(first, last);
            let records: u64 = lost.iter().map(|&(s, e)| e - s + 1).sum();
            if records > 0 {
                per_cursor.push(CursorLoss {
                    cursor: c.name.clone(),
                    records,
                    spans: lost.iter().map(|&(s, e)| spans_in(s, e)).sum(),
                    ranges: lost.clone(),
                });
            }
            union.extend(lost);
        }
        if cursors.is_empty() && first <= last {
            union.push((first, last));
        }
        union.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in union {
            match merged.last_mut() {
                Some(m) if s <= m.1 + 1 => m.1 = m.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Eviction {
            segment: first,
            first_seq: first,
            last_seq: last,
            spans: spans_of.iter().map(|&(_, n)| n).sum(),
            bytes: len,
            undelivered_records: merged.iter().map(|&(s, e)| e - s + 1).sum(),
            undelivered_spans: merged.iter().map(|&(s, e)| spans_in(s, e)).sum(),
            per_cursor,
        }
    }
}

/// (seq, spans) of every record of a segment about to be deleted: record headers
/// read with `pread`; past damage, the rest of the file is read (bad pages as
/// zeros) and scanned.
pub(super) fn count_spans(path: &Path, first: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Ok(file) = File::open(path) else {
        tracing::warn!(segment = %path.display(), "could not read segment to count its spans");
        return out;
    };
    let mut offset = RECORDS_START as u64;
    let mut buf = [0u8; RECORD_HEADER_LEN];
    let mut last_good = first - 1;
    while offset + 40 <= len {
        let n = (len - offset).min(RECORD_HEADER_LEN as u64) as usize;
        let Ok(region) = read_region(&file, offset, n) else {
            break;
        };
        buf[..region.bytes.len()].copy_from_slice(&region.bytes);
        match decode_header(&buf[..region.bytes.len()]) {
            Ok(h) if h.seq > last_good && offset + h.frame_len() as u64 <= len => {
                out.push((h.seq, h.span_count as u64));
                last_good = h.seq;
                offset += h.frame_len() as u64;
            }
            _ => {
                // Damage: scan the rest properly.
                if let Ok(rest) = read_region(&file, offset, (len - offset) as usize) {
                    let mut scan = SegmentScan::at(0, last_good);
                    loop {
                        match scan.next(&rest.bytes, rest.bytes.len()) {
                            Step::Record { frame, .. } => {
                                out.push((frame.header.seq, frame.header.span_count as u64))
                            }
                            Step::Stale { .. } | Step::Damaged { .. } => {}
                            Step::Unresumable { .. } | Step::End => break,
                        }
                    }
                }
                break;
            }
        }
    }
    out
}
