//! Reading a log from outside the process that owns it: for the command-line tools,
//! on a stopped forwarder's data directory or beside a running one.
//!
//! Nothing here locks, writes, or maps files: segments are read with `pread` into
//! memory, one at a time, so a running forwarder deleting or growing a segment
//! cannot crash the reader (a segment deleted meanwhile is reported as gone; one
//! whose blocks were released reads as damaged), and a bad sector reads as damage
//! rather than failing the whole file. Frames are checked with the same rules as
//! recovery and the in-process reader (`FORMAT.md`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::crypto::{KeyCache, KeyRing, SealError};
use crate::format::{Frame, SegmentHeader, FLAG_SEALED, SEGMENT_HEADER_LEN};
use crate::fsutil::parse_segment_file_name;
use crate::segment::{read_region, Lost, SegmentScan, Step};
use crate::types::{time_from_nanos, LostRange, Record};

/// A segment file as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_seq: u64,
    pub path: PathBuf,
    pub len: u64,
    /// Why the header is not valid, if it is not.
    pub header_error: Option<String>,
    /// The log's identity, from this header or (when it is damaged) another's.
    pub wal_id: Option<[u8; 16]>,
    /// The key its records are sealed with (0: plaintext, or header unreadable).
    pub key_id: u32,
}

/// The segments of the log in `data_dir`, oldest first.
pub fn list_segments(data_dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let wal = data_dir.join("wal");
    let mut out = Vec::new();
    for entry in fs::read_dir(&wal)? {
        let entry = entry?;
        let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_file_name) else {
            continue;
        };
        // Never open something named like a segment that is not a file (a FIFO
        // would block the tool).
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let Ok(bytes) = read_prefix(&path, SEGMENT_HEADER_LEN) else {
            continue; // deleted meanwhile
        };
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let header = SegmentHeader::decode(&bytes);
        let header_error = match &header {
            _ if bytes.len() < SEGMENT_HEADER_LEN => Some("header unreadable or short".into()),
            Ok(h) if h.first_seq != first_seq => {
                Some(format!("header says first seq {}", h.first_seq))
            }
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        let header = header.ok();
        out.push(SegmentFile {
            first_seq,
            path,
            len,
            header_error,
            wal_id: header.as_ref().map(|h| h.wal_id),
            key_id: header.map(|h| h.key_id).unwrap_or(0),
        });
    }
    out.sort_by_key(|s| s.first_seq);
    // A damaged header's segment belongs to the log the others name.
    let known = out.iter().rev().find_map(|s| s.wal_id);
    for s in &mut out {
        s.wal_id = s.wal_id.or(known);
    }
    Ok(out)
}

fn read_prefix(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let r = read_region(&f, 0, n)?;
    if r.unreadable.is_empty() {
        Ok(r.bytes)
    } else {
        Ok(Vec::new())
    }
}

/// Whether a forwarder holds the data directory's lock right now (tools say so and
/// read what it publishes instead of its metadata store). The probe takes a shared
/// lock and drops it at once: it never makes a starting forwarder wait.
pub fn forwarder_running(data_dir: &Path) -> io::Result<bool> {
    let file = match fs::File::open(data_dir.join("LOCK")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// What a segment holds, record by record.
#[derive(Clone, Debug, Default)]
pub struct SegmentContents {
    pub records: Vec<Record>,
    /// Damaged ranges, exact (given the next segment's first seq for a sealed one).
    pub damage: Vec<LostRange>,
    /// Bytes after the last valid record that hold no complete record: an append in
    /// progress (the active segment of a running forwarder) or torn by a crash.
    pub incomplete_tail: Option<(u64, u64)>,
    /// Intact records that are sealed and could not be opened with the keys given
    /// (not in `records`): a key missing, or not the one that sealed them.
    pub unopened: Vec<Unopened>,
}

/// A sealed record the keys given could not open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unopened {
    pub seq: u64,
    pub segment: u64,
    pub spans: u32,
    pub error: SealError,
}

impl Unopened {
    /// The error a reader that needed the record reports: its seq, segment and why.
    pub fn to_io_error(&self) -> io::Error {
        io::Error::other(format!(
            "record seq {} (segment {:020}.seg) cannot be decrypted: {}",
            self.seq, self.segment, self.error
        ))
    }
}

/// How the offline readers open sealed records: the keys, and the log's identity
/// (the segment keys are derived from it).
#[derive(Clone, Copy, Debug)]
pub struct Keys<'a> {
    pub ring: &'a KeyRing,
    pub wal_id: [u8; 16],
}

/// Reads and checks every record of `segment`. `next_first_seq` is the first seq of
/// the following segment (`None` for the last one). Payloads are kept only if
/// `with_payloads`.
pub fn read_segment(
    segment: &SegmentFile,
    next_first_seq: Option<u64>,
    with_payloads: bool,
    ring: &KeyRing,
) -> io::Result<SegmentContents> {
    let f = fs::File::open(&segment.path)?;
    let len = f.metadata()?.len() as usize;
    let bytes = read_region(&f, 0, len)?.bytes;
    let keys = segment.wal_id.map(|wal_id| Keys { ring, wal_id });
    Ok(scan_segment(
        &bytes,
        segment.first_seq,
        next_first_seq,
        with_payloads,
        keys,
    ))
}

/// Checks every record of a segment's bytes (header included), as
/// [`read_segment`] does for a file, with the same rules as recovery. Total: any
/// byte pattern gives an answer, never a panic (the `wal_segment` fuzz target holds
/// it to that). `first_seq` is the seq the file name gives (1..=`MAX_SEQ`). Sealed
/// records are opened with `keys` (each is checked even without payloads); without
/// keys they are all [`Unopened`].
pub fn scan_segment(
    bytes: &[u8],
    first_seq: u64,
    next_first_seq: Option<u64>,
    with_payloads: bool,
    keys: Option<Keys<'_>>,
) -> SegmentContents {
    let mut key_cache = KeyCache::default();
    let mut out = SegmentContents::default();
    let first = first_seq;
    let limit = bytes.len();
    // A sealed segment whose records stop before the next segment's first seq
    // (damage with nothing valid after it, or a truncated file): the rest is lost.
    let rest_of_sealed = |last_good: u64, offset: usize, reason: String| {
        next_first_seq
            .filter(|&next| next > last_good + 1)
            .map(|next| {
                Lost {
                    first_seq: last_good + 1,
                    last_seq: next - 1,
                    spans: None,
                }
                .range(first, offset, reason)
            })
    };
    let mut scan = SegmentScan::new(first);
    scan.offset = scan.offset.min(limit);
    loop {
        match scan.next(bytes, limit) {
            Step::Record {
                offset: at,
                frame,
                missing,
            } => {
                if let Some(m) = missing {
                    out.damage.push(m.range(
                        first,
                        at,
                        format!(
                            "records {}..={} missing before offset {at}",
                            m.first_seq, m.last_seq
                        ),
                    ));
                }
                let key_start = at + frame.header.header_len();
                let key_end = key_start + frame.key.len();
                let payload = if frame.header.flags & FLAG_SEALED != 0 {
                    match open_offline(keys, &mut key_cache, first, &frame) {
                        Ok(plain) => plain,
                        Err(error) => {
                            out.unopened.push(Unopened {
                                seq: frame.header.seq,
                                segment: first,
                                spans: frame.header.span_count,
                                error,
                            });
                            continue;
                        }
                    }
                } else {
                    Bytes::copy_from_slice(frame.payload)
                };
                out.records.push(Record {
                    seq: frame.header.seq,
                    received_at: time_from_nanos(frame.header.received_at_nanos),
                    span_count: frame.header.span_count,
                    codec: frame.header.codec,
                    idempotency_key: Bytes::copy_from_slice(&bytes[key_start..key_end]),
                    payload: if with_payloads { payload } else { Bytes::new() },
                });
            }
            Step::Stale { .. } => {}
            Step::End => break,
            Step::Damaged {
                offset,
                lost,
                error,
                ..
            } => {
                if let Some(l) = lost {
                    out.damage.push(l.range(first, offset, error.to_string()));
                }
            }
            Step::Unresumable { offset, error, .. } => {
                if next_first_seq.is_none() {
                    out.incomplete_tail = Some((offset as u64, (limit - offset) as u64));
                }
                out.damage
                    .extend(rest_of_sealed(scan.last_good, offset, error.to_string()));
                return out;
            }
        }
    }
    let offset = scan.offset;
    out.damage.extend(rest_of_sealed(
        scan.last_good,
        offset,
        format!("segment ends at byte {offset} (truncated)"),
    ));
    out
}

fn open_offline(
    keys: Option<Keys<'_>>,
    cache: &mut KeyCache,
    segment: u64,
    frame: &Frame<'_>,
) -> Result<Bytes, SealError> {
    match keys {
        Some(k) => cache.open(k.ring, &k.wal_id, segment, frame),
        None => Err(SealError::MissingKey {
            key_id: crate::crypto::sealed_key_id(frame.payload)?,
        }),
    }
}

/// The record `seq`, with its payload, if it is on disk and intact (sealed records
/// opened with `ring`; one it cannot open is an error naming its key).
pub fn read_record(data_dir: &Path, seq: u64, ring: &KeyRing) -> io::Result<Option<Record>> {
    let segments = list_segments(data_dir)?;
    let Some(i) = segments.iter().rposition(|s| s.first_seq <= seq) else {
        return Ok(None);
    };
    let next = segments.get(i + 1).map(|s| s.first_seq);
    match read_segment(&segments[i], next, true, ring) {
        Ok(c) if c.unopened.iter().any(|u| u.seq == seq) => {
            let u = c
                .unopened
                .into_iter()
                .find(|u| u.seq == seq)
                .expect("found");
            Err(io::Error::other(format!(
                "record seq {seq} (segment {:020}.seg) cannot be decrypted: {}",
                u.segment, u.error
            )))
        }
        Ok(c) => Ok(c.records.into_iter().find(|r| r.seq == seq)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Visits every intact record with seq in `from..=to`, oldest first, segment by
/// segment (one segment in memory at a time). Returns the damaged ranges met; a
/// sealed record `ring` cannot open is an error naming it and its key.
pub fn for_each_record(
    data_dir: &Path,
    from: u64,
    to: u64,
    with_payloads: bool,
    ring: &KeyRing,
    mut visit: impl FnMut(Record) -> io::Result<()>,
) -> io::Result<Vec<LostRange>> {
    let segments = list_segments(data_dir)?;
    let mut damage = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let next = segments.get(i + 1).map(|s| s.first_seq);
        if next.is_some_and(|n| n <= from) || seg.first_seq > to {
            continue;
        }
        let contents = match read_segment(seg, next, with_payloads, ring) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(u) = contents
            .unopened
            .iter()
            .find(|u| (from..=to).contains(&u.seq))
        {
            return Err(u.to_io_error());
        }
        damage.extend(contents.damage);
        for r in contents.records {
            if (from..=to).contains(&r.seq) {
                visit(r)?;
            }
        }
    }
    Ok(damage)
}
