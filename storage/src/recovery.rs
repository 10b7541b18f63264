//! Opening a log: find the segments, check their headers, and repair the tail.
//!
//! Recovery policy **"cut the torn tail, skip the damage, never refuse"**:
//!
//! 1. Leftover `*.seg.tmp` files (a segment creation interrupted before C4) are
//!    deleted: they never held a record.
//! 2. Sealed segments are not scanned (open time must not grow with the log): only
//!    their 64-byte headers are read. Damage inside them is found by readers, which
//!    skip it and report the exact seq range.
//! 3. The active (last) segment is scanned frame by frame. A damaged frame followed
//!    by a valid one is skipped and its seq range reported as lost. A damaged frame
//!    with nothing valid after it is a torn tail (an append that never completed):
//!    the bytes are copied to `quarantine/` and cut off.
//! 4. The active segment is `fdatasync`ed before its records become visible, so
//!    nothing a reader delivers can vanish in a later power loss.
//! 5. The next seq is one past the last record on disk, but never below the durable
//!    seq floor or any cursor position, so no seq is ever assigned twice.
//!
//! A header of an unknown format version is the one thing that stops the open: it
//! means a newer tracespool wrote the log, and guessing would be wrong.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::WalConfig;
use crate::error::OpenError;
use crate::format::{SegmentHeader, SegmentHeaderError, FORMAT_VERSION, SEGMENT_HEADER_LEN};
use crate::fsutil::{
    create_new_owner_only, ensure_dir, parse_segment_file_name, sync_dir, TEMP_SUFFIX,
};
use crate::meta::Meta;
use crate::segment::{
    scan_at, segment_path, Scan, SegmentEntry, SegmentMap, SegmentTable, RECORDS_START,
};
use crate::types::{nanos_since_epoch, LostRange, RecoveryReport, TornTail};
use crate::writer::{create_segment_file, Active};

pub(crate) struct Recovered {
    pub wal_id: [u8; 16],
    pub table: SegmentTable,
    pub active: Active,
    pub next_seq: u64,
    pub lost: Vec<LostRange>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |source| OpenError::Io { op, path, source }
}

pub(crate) fn recover(
    cfg: &WalConfig,
    wal_dir: &Path,
    quarantine_dir: &Path,
    meta: &Meta,
    report: &mut RecoveryReport,
) -> Result<Recovered, OpenError> {
    let meta_err = |source| OpenError::Meta {
        path: cfg.dir.join("meta"),
        source,
    };

    // 1. List segments; remove interrupted creations.
    let mut firsts = Vec::new();
    for entry in fs::read_dir(wal_dir).map_err(io_err("list", wal_dir))? {
        let entry = entry.map_err(io_err("list", wal_dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TEMP_SUFFIX) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            tracing::info!(file = %path.display(), "removed unfinished segment creation");
            report.removed_temp_files.push(path);
        } else if let Some(first) = parse_segment_file_name(name) {
            firsts.push(first);
        } else {
            tracing::warn!(file = %entry.path().display(), "ignoring unexpected file in the wal directory");
        }
    }
    if !report.removed_temp_files.is_empty() {
        sync_dir(wal_dir).map_err(io_err("fsync", wal_dir))?;
    }
    firsts.sort_unstable();

    // The log's identity: from sled, else from the first intact segment header
    // (metadata lost, segments kept), else new.
    let mut headers = Vec::with_capacity(firsts.len());
    for &first in &firsts {
        let path = segment_path(wal_dir, first);
        headers.push(read_header(&path)?);
    }
    let wal_id = match meta.wal_id().map_err(meta_err)? {
        Some(id) => id,
        None => {
            let id = headers
                .iter()
                .find_map(|(_, h)| h.as_ref().ok().map(|h| h.wal_id))
                .unwrap_or_else(random_id);
            meta.set_wal_id(id).map_err(meta_err)?;
            id
        }
    };

    // 2. Check headers.
    let mut table = SegmentTable::default();
    let mut header_ok = Vec::new();
    for (&first, (len, header)) in firsts.iter().zip(headers) {
        let path = segment_path(wal_dir, first);
        let ok = match header {
            Ok(h) if h.wal_id != wal_id => {
                let to = quarantine_dir.join(format!("{first:020}.seg.foreign"));
                fs::rename(&path, &to).map_err(io_err("quarantine", &path))?;
                sync_dir(wal_dir).map_err(io_err("fsync", wal_dir))?;
                sync_dir(quarantine_dir).map_err(io_err("fsync", quarantine_dir))?;
                tracing::error!(segment = %path.display(), moved_to = %to.display(), "segment belongs to another log; quarantined");
                report.quarantined.push(to);
                continue;
            }
            Ok(h) if h.first_seq != first => {
                tracing::error!(segment = %path.display(), header_first_seq = h.first_seq, "segment header disagrees with its file name; using the name");
                false
            }
            Ok(_) => true,
            Err(SegmentHeaderError::UnsupportedVersion { found }) => {
                return Err(OpenError::UnsupportedVersion {
                    path,
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            Err(e) => {
                tracing::error!(segment = %path.display(), error = %e, "damaged segment header; reading its records anyway");
                false
            }
        };
        if !ok {
            report.damaged_headers.push(path);
        }
        header_ok.push((first, ok));
        table.insert(SegmentEntry {
            first_seq: first,
            len,
            sealed: true,
        });
    }

    // 5 (inputs). Seqs that must never be assigned again.
    let floor = meta.seq_floor().map_err(meta_err)?;
    let past_cursors = meta
        .cursor_positions()
        .map_err(meta_err)?
        .iter()
        .map(|(_, p)| p + 1)
        .max()
        .unwrap_or(1);

    // 3–4. The active segment.
    let mut lost = Vec::new();
    let (active, last_on_disk) = match header_ok.last().copied() {
        Some((first, ok)) => {
            let entry_len = table.locate(first).map(|(e, _)| e.len).unwrap_or(0);
            let (active, last) = recover_active(
                wal_dir,
                quarantine_dir,
                first,
                entry_len,
                ok,
                wal_id,
                report,
                &mut lost,
            )?;
            table.set_len(first, active.len);
            table.insert(SegmentEntry {
                first_seq: first,
                len: active.len,
                sealed: false,
            });
            (active, last)
        }
        None => {
            let first = floor.max(past_cursors).max(1);
            let header = SegmentHeader {
                first_seq: first,
                created_at_nanos: nanos_since_epoch(std::time::SystemTime::now()),
                wal_id,
            };
            let path = segment_path(wal_dir, first);
            let active = create_segment_file(wal_dir, &header, None)
                .map_err(io_err("create segment", &path))?;
            table.insert(SegmentEntry {
                first_seq: first,
                len: active.len,
                sealed: false,
            });
            (active, first - 1)
        }
    };
    let next_seq = (last_on_disk + 1).max(floor).max(past_cursors);
    if next_seq > last_on_disk + 1 {
        tracing::warn!(
            last_on_disk,
            next_seq,
            "records a cursor or the seq floor has seen are missing from disk (lost in an OS crash under fsync = never/interval?); their seqs are not reused"
        );
    }
    Ok(Recovered {
        wal_id,
        table,
        active,
        next_seq,
        lost,
    })
}

/// Reads a segment's length and header.
fn read_header(path: &Path) -> Result<(u64, Result<SegmentHeader, SegmentHeaderError>), OpenError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    let n = (len as usize).min(SEGMENT_HEADER_LEN);
    file.read_exact_at(&mut buf[..n], 0)
        .map_err(io_err("read header", path))?;
    Ok((len, SegmentHeader::decode(&buf[..n])))
}

#[allow(clippy::too_many_arguments)]
fn recover_active(
    wal_dir: &Path,
    quarantine_dir: &Path,
    first: u64,
    mut len: u64,
    header_ok: bool,
    wal_id: [u8; 16],
    report: &mut RecoveryReport,
    lost: &mut Vec<LostRange>,
) -> Result<(Active, u64), OpenError> {
    let path = segment_path(wal_dir, first);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    if !header_ok || len < SEGMENT_HEADER_LEN as u64 {
        // The header holds no record; rewriting it loses nothing.
        let header = SegmentHeader {
            first_seq: first,
            created_at_nanos: nanos_since_epoch(std::time::SystemTime::now()),
            wal_id,
        };
        file.write_all_at(&header.encode(), 0)
            .map_err(io_err("rewrite header", &path))?;
        len = len.max(SEGMENT_HEADER_LEN as u64);
        tracing::warn!(segment = %path.display(), "rewrote damaged header of the active segment");
    }
    let map = SegmentMap::map(&file, len).map_err(io_err("map", &path))?;
    let limit = len as usize;
    let mut offset = RECORDS_START;
    let mut last_good = first - 1;
    let mut torn_at = None;
    loop {
        match scan_at(&map, offset, limit, last_good) {
            Scan::Frame { offset: at, frame } => {
                let seq = frame.header.seq;
                if seq <= last_good {
                    // A valid frame out of sequence is not something this log wrote
                    // here; skipping it keeps seqs from ever going backwards.
                    tracing::error!(segment = %path.display(), offset = at, seq, last_good, "record out of sequence in the active segment; skipped");
                } else {
                    if seq > last_good + 1 {
                        let range = LostRange {
                            first_seq: last_good + 1,
                            last_seq: seq - 1,
                            segment: first,
                            offset: at as u64,
                            spans: None,
                            reason: format!(
                                "records {}..={} missing before offset {at}",
                                last_good + 1,
                                seq - 1
                            ),
                        };
                        tracing::error!(segment = %path.display(), offset = at, first_seq = range.first_seq, last_seq = range.last_seq, "records missing from the active segment");
                        lost.push(range);
                    }
                    last_good = seq;
                }
                offset = at + frame.frame_len();
            }
            Scan::End => break,
            Scan::Damage(d) => match d.resume {
                Some((at, seq)) => {
                    if seq > last_good + 1 {
                        let range = LostRange {
                            first_seq: last_good + 1,
                            last_seq: seq - 1,
                            segment: first,
                            offset: d.offset as u64,
                            spans: if seq == last_good + 2 { d.spans } else { None },
                            reason: d.error.to_string(),
                        };
                        tracing::error!(
                            segment = %path.display(),
                            offset = d.offset,
                            first_seq = range.first_seq,
                            last_seq = range.last_seq,
                            error = %d.error,
                            "damaged records in the active segment; skipping to the next valid record"
                        );
                        lost.push(range);
                    }
                    offset = at;
                    last_good = seq - 1;
                }
                None => {
                    torn_at = Some((d.offset, d.error));
                    break;
                }
            },
        }
    }
    report.scanned_bytes += len;
    if let Some((cut, error)) = torn_at {
        let bytes = len - cut as u64;
        let qpath = quarantine_dir.join(format!("{first:020}.{cut}.torn"));
        let kept = keep_copy(&qpath, &map[cut..limit], quarantine_dir);
        let quarantined_to = match kept {
            Ok(()) => Some(qpath),
            Err(e) => {
                tracing::warn!(error = %e, file = %qpath.display(), "could not keep a copy of the torn tail");
                None
            }
        };
        drop(map);
        file.set_len(cut as u64)
            .map_err(io_err("truncate torn tail", &path))?;
        tracing::warn!(
            segment = %path.display(),
            offset = cut,
            bytes,
            next_seq = last_good + 1,
            error = %error,
            "cut off torn tail (an append that never completed)"
        );
        report.torn_tail = Some(TornTail {
            segment: first,
            offset: cut as u64,
            bytes,
            first_seq: last_good + 1,
            quarantined_to,
        });
        len = cut as u64;
    }
    // 4. What readers will see must be on disk first.
    file.sync_data().map_err(io_err("fdatasync", &path))?;
    Ok((
        Active {
            first_seq: first,
            file,
            path: path.clone(),
            len,
            synced_len: len,
        },
        last_good,
    ))
}

fn keep_copy(path: &PathBuf, bytes: &[u8], dir: &Path) -> io::Result<()> {
    let _ = fs::remove_file(path);
    let f = create_new_owner_only(path)?;
    f.write_all_at(bytes, 0)?;
    f.sync_data()?;
    sync_dir(dir)
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if getrandom::fill(&mut id).is_err() {
        // No entropy source: time and pid still distinguish logs in practice.
        let t = nanos_since_epoch(std::time::SystemTime::now());
        id[..8].copy_from_slice(&t.to_le_bytes());
        id[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    id
}

pub(crate) fn ensure_layout(cfg: &WalConfig) -> Result<(PathBuf, PathBuf), OpenError> {
    ensure_dir(&cfg.dir).map_err(io_err("create", &cfg.dir))?;
    let wal_dir = cfg.dir.join("wal");
    let quarantine_dir = cfg.dir.join("quarantine");
    ensure_dir(&wal_dir).map_err(io_err("create", &wal_dir))?;
    ensure_dir(&quarantine_dir).map_err(io_err("create", &quarantine_dir))?;
    Ok((wal_dir, quarantine_dir))
}
