//! How much is waiting after a position: records, spans, bytes and the age of the
//! oldest — for backlog metrics and `status`. Walks record headers only (no payload
//! reads, no body checksums), and remembers the totals of sealed segments, which
//! never change, so a large backlog costs one walk of the segment the position is
//! in plus the active segment.
//!
//! Headers are read with `pread`, not through a mapping: faulting one header page
//! per record maps the pages around it too (fault-around), which made the walk of a
//! 64 MiB segment of 116 KB records count ~40 MiB against the process's RSS.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::format::{decode_header, RECORD_HEADER_LEN, RECORD_HEADER_LEN_V1};
use crate::segment::RECORDS_START;
use crate::shared::Shared;
use crate::types::time_from_nanos;

/// What is stored after a position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub records: u64,
    pub spans: u64,
    /// Bytes of the records (frames) on disk.
    pub bytes: u64,
    /// When the oldest of them was received.
    pub oldest_received_at: Option<SystemTime>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    records: u64,
    spans: u64,
    bytes: u64,
    first_received: Option<u64>,
}

/// Totals of sealed segments, by first seq.
#[derive(Debug, Default)]
pub(crate) struct BacklogCache {
    sealed: Mutex<HashMap<u64, Totals>>,
}

/// Walks the headers of `file[..limit]`, counting records with seq > `after` that
/// are not in `acked`.
fn walk(file: &File, limit: u64, after: u64, acked: &[(u64, u64)]) -> Totals {
    use std::os::unix::fs::FileExt;
    let mut t = Totals::default();
    let mut offset = RECORDS_START as u64;
    let mut buf = [0u8; RECORD_HEADER_LEN];
    while offset + RECORD_HEADER_LEN_V1 as u64 <= limit {
        let n = ((limit - offset) as usize).min(RECORD_HEADER_LEN);
        if file.read_exact_at(&mut buf[..n], offset).is_err() {
            break;
        }
        let Ok(h) = decode_header(&buf[..n]) else {
            break;
        };
        let len = h.frame_len() as u64;
        if offset + len > limit {
            break;
        }
        if h.seq > after && !acked.iter().any(|&(a, b)| a <= h.seq && h.seq <= b) {
            t.records += 1;
            t.spans += h.span_count as u64;
            t.bytes += len;
            t.first_received.get_or_insert(h.received_at_nanos);
        }
        offset += len;
    }
    t
}

/// What is stored after `after` outside the acknowledged ranges `acked` (sorted,
/// disjoint, above `after`): a segment inside one is skipped, one that overlaps
/// one is walked.
pub(crate) fn backlog(shared: &Shared, after: u64, acked: &[(u64, u64)]) -> Backlog {
    let wm = *shared.watermark.borrow();
    let segments: Vec<(u64, u64, bool, Option<u64>)> = {
        let table = shared.table.read().unwrap();
        let mut v = Vec::new();
        let mut first = table.first().map(|e| e.first_seq);
        while let Some(f) = first {
            let Some((e, next)) = table.locate(f) else {
                break;
            };
            v.push((e.first_seq, e.len, e.sealed, next));
            first = next;
        }
        v
    };
    let mut cache = shared.backlog.sealed.lock().unwrap();
    cache.retain(|k, _| segments.iter().any(|s| s.0 == *k));
    let mut out = Backlog::default();
    let mut oldest: Option<u64> = None;
    for (first, len, sealed, next) in segments {
        // Entirely delivered?
        if next.is_some_and(|n| n - 1 <= after) {
            continue;
        }
        let last = next.map(|n| n - 1).unwrap_or(wm.last_seq);
        if acked.iter().any(|&(a, b)| a <= first && last <= b) {
            continue;
        }
        let overlapping: Vec<(u64, u64)> = acked
            .iter()
            .copied()
            .filter(|&(a, b)| a <= last && b >= first)
            .collect();
        let partial = first <= after || !overlapping.is_empty();
        let limit = if first == wm.active_segment {
            wm.active_len
        } else {
            len
        };
        let totals = if sealed && !partial {
            if let Some(t) = cache.get(&first) {
                *t
            } else {
                let t = walk_file(shared, first, limit, 0, &[]);
                cache.insert(first, t);
                t
            }
        } else {
            walk_file(shared, first, limit, after, &overlapping)
        };
        out.records += totals.records;
        out.spans += totals.spans;
        out.bytes += totals.bytes;
        if oldest.is_none() {
            oldest = totals.first_received;
        }
    }
    out.oldest_received_at = oldest.map(time_from_nanos);
    out
}

fn walk_file(shared: &Shared, first: u64, limit: u64, after: u64, acked: &[(u64, u64)]) -> Totals {
    match File::open(shared.segment_path(first)) {
        Ok(f) => walk(&f, limit, after, acked),
        Err(_) => Totals::default(),
    }
}
