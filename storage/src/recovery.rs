//! Opening a log: find the segments, check their headers, repair the tail, and
//! choose the next seq so that none is ever assigned twice.
//!
//! Recovery policy **"cut the torn tail, skip the damage, never refuse"**:
//!
//! 1. Leftover `*.seg.tmp` files (a segment creation interrupted before C4) are
//!    deleted: they never held a record. Anything named like a segment that is not
//!    a regular file (a directory, a symlink, a FIFO) is moved to `quarantine/`
//!    without being opened.
//! 2. Sealed segments are not scanned (open time must not grow with the log): only
//!    their 64-byte headers are read, with `pread` (an unreadable header is damage,
//!    not a refusal). A segment of another log, or named beyond every seq this log
//!    ever assigned, or with neither a valid header nor a single valid record, is
//!    quarantined. Damage inside sealed segments is found by readers.
//! 3. The active (last) segment is read and scanned frame by frame. Version-2
//!    frames carry `durable_through`, the seq every record up to which was synced
//!    before the frame was written. Damage to records at or below the highest
//!    `durable_through` is damage to durable records: reported as lost, skipped.
//!    Damage above it lies in the last group written, which may never have been
//!    synced: the bytes from there on are a torn tail — copied to `quarantine/`,
//!    reported, cut off — even if a valid frame follows (pages of an unsynced group
//!    reach the disk in any order; that frame was never acknowledged under
//!    `fsync = always`, nor exported).
//! 4. The active segment is `fdatasync`ed before anything in it becomes visible, so
//!    nothing a reader delivers can vanish in a later power loss.
//! 5. The next seq is one past the last record on disk, but never at or below a
//!    cursor's position, and — unless the last stop was clean — past every seq a
//!    reader may have seen and that is no longer on disk: past the seq bound in
//!    `wal.state` under `fsync = never`/`interval` or when the active segment was
//!    lost, past what the cut tail could have held. Skipped seqs are recorded in the
//!    header of a new active segment (`skipped_from`) and reported; idempotency
//!    keys, which are made of seqs, are therefore never reused.
//!
//! A header of an unknown format version is the one thing in the log that stops the
//! open: it means a newer tracespool wrote the log, and guessing would be wrong.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use crate::config::{FsyncPolicy, WalConfig};
use crate::crypto::{KeyCache, KeyRing, SealError};
use crate::error::OpenError;
use crate::format::{
    decode_frame, decode_header, resync, SegmentHeader, SegmentHeaderError, FLAG_SEALED,
    FORMAT_VERSION, MIN_FRAME_LEN, READABLE_VERSIONS, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::fsutil::{
    create_new_owner_only, ensure_dir, is_out_of_space, parse_segment_file_name, sync_dir,
    TEMP_SUFFIX,
};
use crate::meta::Meta;
use crate::segment::{
    read_region, segment_path, SegmentEntry, SegmentScan, SegmentTable, Step, RECORDS_START,
};
use crate::state::{Loaded, LogState, StateFile, RESERVE_BLOCK};
use crate::types::{
    nanos_since_epoch, EventHook, LostRange, Quarantine, RecoveryReport, SkippedSeqs, TornTail,
    WalEvent,
};
use crate::writer::{create_segment_file, Active};

/// When the log's state file is lost, seqs skipped past the highest one known.
const SAFETY_SKIP: u64 = 1 << 20;

pub(crate) struct Recovered {
    pub wal_id: [u8; 16],
    pub table: SegmentTable,
    pub active: Active,
    pub next_seq: u64,
    pub lost: Vec<LostRange>,
    /// `None` when the state file could not be written: appends are refused.
    pub state: Option<StateFile>,
    /// Why appends must be refused although the log can be read.
    pub refuse_appends: Option<String>,
    /// A new active segment that could not be created at open (full disk), with
    /// its `skipped_from`: the writer creates it before the first append.
    pub pending_rotation: Option<u64>,
}

pub(crate) struct Inputs<'a> {
    pub cfg: &'a WalConfig,
    pub wal_dir: &'a Path,
    pub quarantine_dir: &'a Path,
    pub meta: &'a Meta,
    /// One past the highest cursor position.
    pub cursor_next: u64,
    pub hook: Option<&'a EventHook>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |source| OpenError::Io { op, path, source }
}

fn emit(hook: Option<&EventHook>, event: WalEvent) {
    if let Some(h) = hook {
        if let Err(e) = h(&event) {
            tracing::error!(error = %e, ?event, "could not record a recovery event in the audit trail; going on");
        }
    }
}

/// One segment file found at open.
struct Candidate {
    first: u64,
    len: u64,
    header: Result<(SegmentHeader, u32), String>,
}

pub(crate) fn recover(
    inp: Inputs<'_>,
    report: &mut RecoveryReport,
) -> Result<Recovered, OpenError> {
    let Inputs {
        cfg,
        wal_dir,
        quarantine_dir,
        meta,
        cursor_next,
        hook,
    } = inp;

    // The log's own state: identity and seq bound.
    let (state_file, state_note) = match StateFile::load(&cfg.dir) {
        Ok(Loaded::Valid(sf)) => (Some(sf), None),
        Ok(Loaded::Missing) => (None, None),
        Ok(Loaded::Damaged) => (None, Some("state file wal.state is damaged")),
        Err(e) => {
            tracing::error!(error = %e, "cannot read wal.state; rebuilding it");
            (None, Some("state file wal.state is unreadable"))
        }
    };
    if let Some(n) = state_note {
        tracing::error!(file = %crate::state::path(&cfg.dir).display(), "{n}: rebuilding it from the segments; seqs are skipped so none is reused");
        report.repaired.push(format!("{n}; rebuilt"));
    }
    let state = state_file.as_ref().map(|s| s.state.clone());

    // 1. List segments; remove interrupted creations; move aside what is not one.
    let mut firsts = Vec::new();
    let mut temps_removed = false;
    for entry in fs::read_dir(wal_dir).map_err(io_err("list", wal_dir))? {
        let entry = entry.map_err(io_err("list", wal_dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err("stat", &path))?;
        if name.ends_with(TEMP_SUFFIX) && kind.is_file() {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            tracing::info!(file = %path.display(), "removed unfinished segment creation");
            report.removed_temp_files.push(path);
            temps_removed = true;
        } else if let Some(first) = parse_segment_file_name(name) {
            if kind.is_file() {
                firsts.push(first);
            } else {
                let what = if kind.is_dir() {
                    "a directory"
                } else if kind.is_symlink() {
                    "a symbolic link"
                } else {
                    "not a regular file (a FIFO, socket or device)"
                };
                quarantine(
                    &path,
                    quarantine_dir,
                    wal_dir,
                    &format!("{name}.not-a-file"),
                    Some(first),
                    format!("named like a segment but {what}"),
                    hook,
                    report,
                );
            }
        } else {
            tracing::warn!(file = %path.display(), "ignoring unexpected file in the wal directory");
        }
    }
    if temps_removed {
        sync_dir(wal_dir).map_err(io_err("fsync", wal_dir))?;
    }
    firsts.sort_unstable();

    let mut candidates = Vec::with_capacity(firsts.len());
    for &first in &firsts {
        let path = segment_path(wal_dir, first);
        candidates.push(read_header(&path, first));
    }

    // The log's identity: the state file, else an earlier version's metadata, else
    // the first intact segment header (state lost, segments kept), else new.
    let legacy_id = meta.wal_id().ok().flatten();
    let wal_id = state
        .as_ref()
        .map(|s| s.wal_id)
        .or(legacy_id)
        .or_else(|| {
            candidates
                .iter()
                .find_map(|c| c.header.as_ref().ok().map(|(h, _)| h.wal_id))
        })
        .unwrap_or_else(random_id);
    let reserved = state.as_ref().map(|s| s.reserved);

    // Before anything moves: every key a segment names is configured and is the
    // key that sealed it (a wrong or missing key stops the open; nothing is cut,
    // quarantined or deleted because of it).
    check_keys(&cfg.keys, wal_dir, &candidates, &wal_id)?;

    // 2. Check headers.
    let mut kept: Vec<Candidate> = Vec::new();
    let mut active_lost: Option<u64> = None;
    let n_candidates = candidates.len();
    for (i, c) in candidates.into_iter().enumerate() {
        let path = segment_path(wal_dir, c.first);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if reserved.is_some_and(|r| c.first > r.saturating_add(1)) {
            quarantine(
                &path,
                quarantine_dir,
                wal_dir,
                &format!("{name}.not-ours"),
                Some(c.first),
                format!(
                    "named beyond every seq this log assigned (the bound is {})",
                    reserved.unwrap_or(0)
                ),
                hook,
                report,
            );
            continue;
        }
        match &c.header {
            Ok((h, _)) if h.wal_id != wal_id => {
                quarantine(
                    &path,
                    quarantine_dir,
                    wal_dir,
                    &format!("{:020}.seg.foreign", c.first),
                    Some(c.first),
                    "segment of another log".into(),
                    hook,
                    report,
                );
                continue;
            }
            Ok((h, _)) if h.first_seq != c.first => {
                tracing::error!(segment = %path.display(), header_first_seq = h.first_seq, "segment header disagrees with its file name; using the name");
                report.damaged_headers.push(path.clone());
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(found) = e.strip_prefix("unsupported:").and_then(|v| v.parse().ok()) {
                    return Err(OpenError::UnsupportedVersion {
                        path,
                        found,
                        supported: *READABLE_VERSIONS.last().unwrap(),
                    });
                }
                // No valid header: keep it only if it holds a record of its own.
                if !holds_a_record(&path, c.first) {
                    let last = i + 1 == n_candidates;
                    if last {
                        active_lost = Some(c.first);
                    }
                    quarantine(
                        &path,
                        quarantine_dir,
                        wal_dir,
                        &format!("{name}.invalid"),
                        Some(c.first),
                        format!(
                            "named like a segment but holds no valid header ({e}) and no record"
                        ),
                        hook,
                        report,
                    );
                    continue;
                }
                tracing::error!(segment = %path.display(), error = %e, "damaged segment header; reading its records anyway");
                report.damaged_headers.push(path.clone());
            }
        }
        kept.push(c);
    }

    let mut table = SegmentTable::default();
    for c in &kept {
        table.insert(SegmentEntry {
            first_seq: c.first,
            skipped_from: c.header.as_ref().map(|(h, _)| h.skipped_from).unwrap_or(0),
            len: c.len,
            sealed: true,
        });
    }

    let unclean = state.as_ref().is_none_or(|s| s.clean_next == 0);
    let mut lost = Vec::new();
    // 3–4. The active segment.
    let (mut active, base, torn, needs_new_segment) = match kept.last() {
        Some(c) => {
            let header_ok = c.header.as_ref().is_ok_and(|(h, _)| h.first_seq == c.first);
            let version = c.header.as_ref().map(|(_, v)| *v).unwrap_or(0);
            // After a clean close every record below the recorded next seq was
            // synced: damage to any of them is damage, never a torn tail.
            let durable_hint = state
                .as_ref()
                .map(|s| s.clean_next.saturating_sub(1))
                .unwrap_or(0);
            let (active, last_good, torn) = recover_active(
                wal_dir,
                quarantine_dir,
                c.first,
                c.len,
                durable_hint,
                hook,
                report,
                &mut lost,
            )?;
            table.set_len(c.first, active.len);
            table.insert(SegmentEntry {
                first_seq: c.first,
                skipped_from: c.header.as_ref().map(|(h, _)| h.skipped_from).unwrap_or(0),
                len: active.len,
                sealed: false,
            });
            // Appends go to a segment of the current version with an intact header;
            // after a cut, to a new one (readers then see where the old one ends).
            let cut = torn.is_some();
            // A segment's records share one key: another key (or none) now means a
            // new segment.
            let key_changed = active.key_id != cfg.keys.active().unwrap_or(0);
            (
                Some(active),
                last_good + 1,
                torn,
                !header_ok || version < FORMAT_VERSION || cut || key_changed,
            )
        }
        None => (None, 0, None, true),
    };

    // 5. The next seq.
    let fresh = kept.is_empty() && state.is_none() && legacy_id.is_none();
    let mut next_seq = base.max(cursor_next).max(1);
    let mut reasons: Vec<String> = Vec::new();
    let mut may_hold_acknowledged = false;
    if let Some(s) = &state {
        if s.clean_next != 0 {
            next_seq = next_seq.max(s.clean_next);
        }
    }
    if let Ok(floor) = meta.seq_floor() {
        next_seq = next_seq.max(floor);
    }
    if unclean && !fresh {
        match reserved {
            Some(r) => {
                if cfg.fsync != FsyncPolicy::Always && !kept.is_empty() {
                    next_seq = next_seq.max(r + 1);
                    may_hold_acknowledged = true;
                    reasons.push(format!(
                        "unclean stop under fsync = {}: records acknowledged but not yet synced may be gone",
                        if matches!(cfg.fsync, FsyncPolicy::Never) { "never" } else { "interval" }
                    ));
                }
                if let Some(first) = active_lost {
                    next_seq = next_seq.max(r + 1).max(first);
                    may_hold_acknowledged = true;
                    reasons.push(format!(
                        "the active segment {first:020}.seg held no readable header or record"
                    ));
                }
            }
            None if legacy_id.is_some() => {
                // Upgraded from a version without the bound: its own floor holds.
            }
            None => {
                let known = next_seq.max(kept.last().map(|c| c.first).unwrap_or(0));
                next_seq = known + SAFETY_SKIP;
                may_hold_acknowledged = true;
                reasons.push("the log's state file was lost: seqs are skipped past every one it could have assigned".into());
            }
        }
    }
    if let Some(t) = torn.as_ref().filter(|_| unclean) {
        // (After a clean close nothing past the recorded next seq was ever assigned.)
        // An interrupted append holds nothing acknowledged under `always`; the skip
        // is for the case where the cut bytes were damage to the last synced group.
        if t.last_seq_bound >= next_seq {
            next_seq = t.last_seq_bound + 1;
        }
        if cfg.fsync != FsyncPolicy::Always {
            may_hold_acknowledged = true;
        }
        reasons.push(format!(
            "a torn tail was cut from segment {:020}.seg at byte {} (an append that never completed, or damage to the last records written)",
            t.segment, t.offset
        ));
    }
    let skipped = (base > 0 && next_seq > base).then(|| SkippedSeqs {
        first_seq: base,
        last_seq: next_seq - 1,
        may_hold_acknowledged,
        reason: if reasons.is_empty() {
            "seqs seen by a cursor or recorded as assigned are not on disk".into()
        } else {
            reasons.join("; ")
        },
    });
    if let Some(s) = &skipped {
        tracing::warn!(
            first_seq = s.first_seq,
            last_seq = s.last_seq,
            may_hold_acknowledged = s.may_hold_acknowledged,
            reason = %s.reason,
            "seqs skipped at open: none of them is ever assigned again"
        );
        emit(hook, WalEvent::Skipped(s.clone()));
        report.skipped = Some(s.clone());
    }
    // (A new log has nothing to lose.)
    report.clean_stop = !unclean || fresh;

    // A new active segment when seqs were skipped, or the current one is of an
    // older version or has a damaged header, or there is none.
    let mut pending_rotation = None;
    if active.is_none() || skipped.is_some() || needs_new_segment {
        let skipped_from = skipped.as_ref().map(|s| s.first_seq).unwrap_or(0);
        let header = SegmentHeader {
            first_seq: next_seq,
            created_at_nanos: nanos_since_epoch(std::time::SystemTime::now()),
            wal_id,
            skipped_from,
            key_id: cfg.keys.active().unwrap_or(0),
        };
        let path = segment_path(wal_dir, next_seq);
        if let Some(old) = &active {
            // The old active segment is sealed from now on: all of it durable.
            old.file
                .sync_data()
                .map_err(io_err("fdatasync", &old.path))?;
        }
        match create_segment_file(wal_dir, &header, None) {
            Ok(new) => {
                if let Some(old) = &active {
                    table.seal(old.first_seq);
                }
                table.insert(SegmentEntry {
                    first_seq: next_seq,
                    skipped_from,
                    len: new.len,
                    sealed: false,
                });
                active = Some(new);
            }
            Err(e) if is_out_of_space(&e) && active.is_some() => {
                tracing::warn!(segment = %path.display(), error = %e, "no space to start a new segment at open; it is created before the first append");
                pending_rotation = Some(skipped_from);
            }
            Err(e) => return Err(io_err("create segment", &path)(e)),
        }
    }
    let active = active.expect("an active segment");
    // 4. What readers will see must be on disk first.
    active
        .file
        .sync_data()
        .map_err(io_err("fdatasync", &active.path))?;

    // The bound on assigned seqs, durable before any new seq is assigned.
    let new_state = LogState {
        wal_id,
        reserved: next_seq + RESERVE_BLOCK - 1,
        clean_next: 0,
    };
    let (state, refuse_appends) = match write_state(&cfg.dir, state_file, new_state) {
        Ok(s) => (Some(s), None),
        Err(e) => {
            let why = format!(
                "cannot record the seq bound in {}: {e}",
                crate::state::path(&cfg.dir).display()
            );
            tracing::error!("{why}; appends are refused, what is stored is still forwarded");
            (None, Some(why))
        }
    };
    if legacy_id.is_some() {
        let _ = meta.forget_legacy();
    }
    Ok(Recovered {
        wal_id,
        table,
        active,
        next_seq,
        lost,
        state,
        refuse_appends,
        pending_rotation,
    })
}

fn write_state(dir: &Path, existing: Option<StateFile>, s: LogState) -> io::Result<StateFile> {
    match existing {
        Some(mut f) => {
            f.write(s)?;
            Ok(f)
        }
        None => StateFile::create(dir, s),
    }
}

/// Moves `path` to `quarantine/<to_name>`, reporting it first. Failure to move is
/// logged and the file left where it is (recovery then ignores it).
#[allow(clippy::too_many_arguments)]
fn quarantine(
    path: &Path,
    quarantine_dir: &Path,
    from_dir: &Path,
    to_name: &str,
    segment: Option<u64>,
    reason: String,
    hook: Option<&EventHook>,
    report: &mut RecoveryReport,
) {
    let to = quarantine_dir.join(to_name);
    let bytes = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
    let q = Quarantine {
        file: to.clone(),
        segment,
        bytes,
        first_seq: None,
        last_seq: None,
        reason: reason.clone(),
    };
    emit(hook, WalEvent::Quarantined(q.clone()));
    let moved = fs::rename(path, &to)
        .and_then(|()| sync_dir(from_dir))
        .and_then(|()| sync_dir(quarantine_dir));
    match moved {
        Ok(()) => {
            tracing::error!(file = %path.display(), moved_to = %to.display(), reason = %reason, "quarantined");
            report.quarantined.push(q);
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, reason = %reason, "could not move to quarantine; ignoring it");
        }
    }
}

/// Reads a segment's length and header, with `pread` (a bad sector in the header is
/// a damaged header, not an error).
/// The keys the segments name are configured, and each opens a record it sealed:
/// for each key id, the first record of the newest segment naming it that has a
/// readable one (up to three segments are tried; a key no intact record can check
/// is left to the readers, which report what it cannot open).
fn check_keys(
    keys: &KeyRing,
    wal_dir: &Path,
    candidates: &[Candidate],
    wal_id: &[u8; 16],
) -> Result<(), OpenError> {
    let mut by_key: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for c in candidates {
        if let Ok((h, _)) = &c.header {
            if h.key_id != 0 && &h.wal_id == wal_id {
                by_key.entry(h.key_id).or_default().push(c.first);
            }
        }
    }
    for (key_id, segments) in by_key {
        if !keys.has(key_id) {
            return Err(OpenError::MissingKey {
                key_id,
                first_segment: segment_path(wal_dir, segments[0]),
                segments: segments.len(),
            });
        }
        for &first in segments.iter().rev().take(3) {
            let path = segment_path(wal_dir, first);
            match first_record_opens(keys, &path, first, key_id, wal_id) {
                Ok(true) => break,
                Ok(false) => continue,
                Err(SealError::Unauthentic { .. }) => {
                    return Err(OpenError::WrongKey { key_id, path });
                }
                Err(e) => {
                    tracing::warn!(segment = %path.display(), key_id, error = %e, "cannot check the key against this segment");
                }
            }
        }
    }
    Ok(())
}

/// Whether the first record of a segment opens under its key: `Ok(false)` when the
/// segment has no intact first record to try.
fn first_record_opens(
    keys: &KeyRing,
    path: &Path,
    first: u64,
    key_id: u32,
    wal_id: &[u8; 16],
) -> Result<bool, SealError> {
    let Ok(file) = File::open(path) else {
        return Ok(false);
    };
    let head = match read_region(&file, RECORDS_START as u64, RECORD_HEADER_LEN) {
        Ok(r) if r.unreadable.is_empty() => r.bytes,
        _ => return Ok(false),
    };
    let Ok(h) = decode_header(&head) else {
        return Ok(false);
    };
    let frame = match read_region(&file, RECORDS_START as u64, h.frame_len()) {
        Ok(r) if r.unreadable.is_empty() => r.bytes,
        _ => return Ok(false),
    };
    let Ok(f) = decode_frame(&frame) else {
        return Ok(false);
    };
    if f.header.flags & FLAG_SEALED == 0 {
        return Ok(false);
    }
    if crate::crypto::sealed_key_id(f.payload)? != key_id {
        return Ok(false);
    }
    KeyCache::default()
        .open(keys, wal_id, first, &f)
        .map(|_| true)
}

fn read_header(path: &Path, first: u64) -> Candidate {
    let res = File::open(path).and_then(|f| {
        let len = f.metadata()?.len();
        let region = read_region(&f, 0, SEGMENT_HEADER_LEN.min(len as usize))?;
        Ok((len, region))
    });
    match res {
        Ok((len, region)) => {
            let header = if !region.unreadable.is_empty() {
                Err("header unreadable (I/O error)".to_string())
            } else {
                match SegmentHeader::decode_versioned(&region.bytes) {
                    Ok(hv) => Ok(hv),
                    Err(SegmentHeaderError::UnsupportedVersion { found }) => {
                        Err(format!("unsupported:{found}"))
                    }
                    Err(e) => Err(e.to_string()),
                }
            };
            Candidate { first, len, header }
        }
        Err(e) => {
            tracing::error!(segment = %path.display(), error = %e, "cannot read segment header");
            Candidate {
                first,
                len: fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                header: Err(format!("cannot read: {e}")),
            }
        }
    }
}

/// Whether a segment file without a valid header holds any valid record of its own
/// (seq at or above its name).
fn holds_a_record(path: &Path, first: u64) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    let Ok(region) = read_region(&f, 0, len) else {
        return false;
    };
    resync(&region.bytes, 0, |s| s >= first).is_some()
}

/// Scans and repairs the active segment; returns it, the seq of its last good
/// record, and the torn tail cut, if any.
#[allow(clippy::too_many_arguments)]
fn recover_active(
    wal_dir: &Path,
    quarantine_dir: &Path,
    first: u64,
    len: u64,
    durable_hint: u64,
    hook: Option<&EventHook>,
    report: &mut RecoveryReport,
    lost: &mut Vec<LostRange>,
) -> Result<(Active, u64, Option<TornTail>), OpenError> {
    let path = segment_path(wal_dir, first);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let region = read_region(&file, 0, len as usize).map_err(io_err("read", &path))?;
    let bytes = &region.bytes;
    let limit = bytes.len();
    // (A damaged header gets the active segment replaced, whatever it says.)
    let key_id = SegmentHeader::decode(bytes).map(|h| h.key_id).unwrap_or(0);
    // The highest `durable_through` any valid frame states, and whether the segment
    // holds frames of the first version (which state nothing).
    let mut durable = (first - 1).max(durable_hint);
    let mut legacy = false;
    {
        let mut off = RECORDS_START.min(limit);
        // A valid frame's bytes are its own: the next one starts right after it (a
        // frame-like pattern inside a payload is not a frame); after damage, the
        // next valid frame anywhere.
        while off < limit {
            match decode_frame(&bytes[off..]) {
                Ok(f) => {
                    if f.header.version == 1 {
                        legacy = true;
                    }
                    durable = durable.max(f.header.durable_through);
                    off += f.frame_len();
                }
                Err(_) => match resync(bytes, off + 1, |_| true) {
                    Some(at) => off = at,
                    None => break,
                },
            }
        }
    }
    let reason_at = |from: usize, to: usize, e: &dyn std::fmt::Display| match region
        .unreadable_in(from as u64, to.max(from + 1) as u64)
    {
        Some((a, b)) => format!("read error (I/O) at bytes {a}..{b}: {e}"),
        None => e.to_string(),
    };
    let mut damaged = |range: LostRange, what: &str| {
        tracing::error!(
            segment = %path.display(),
            offset = range.offset,
            first_seq = range.first_seq,
            last_seq = range.last_seq,
            error = %range.reason,
            "{what}"
        );
        lost.push(range);
    };
    let mut scan = SegmentScan::new(first);
    let mut torn_at = None;
    loop {
        let last_good = scan.last_good;
        match scan.peek(bytes, limit) {
            Step::Stale { offset: at, frame } => {
                let seq = frame.header.seq;
                tracing::error!(segment = %path.display(), offset = at, seq, last_good, "record out of sequence in the active segment; skipped");
                scan.next(bytes, limit);
            }
            Step::Record {
                offset: at,
                missing,
                ..
            } => {
                if let Some(m) = missing {
                    let range = m.range(
                        first,
                        at,
                        format!(
                            "records {}..={} missing before offset {at}",
                            m.first_seq, m.last_seq
                        ),
                    );
                    damaged(range, "records missing from the active segment");
                }
                scan.next(bytes, limit);
            }
            Step::End => break,
            // Damage before records that were synced: skipped, reported. Damage
            // after the last synced record: a torn tail (an append that never
            // completed), cut below.
            Step::Damaged {
                offset,
                resume,
                lost: l,
                error,
            } if legacy || last_good < durable => {
                if let Some(l) = l {
                    let range = l.range(first, offset, reason_at(offset, resume, &error));
                    damaged(
                        range,
                        "damaged records in the active segment; skipping to the next valid record",
                    );
                }
                scan.next(bytes, limit);
            }
            Step::Unresumable { offset, error, .. } if legacy || last_good < durable => {
                // Durable records up to `durable` should follow and do not: they are
                // lost; the bytes after the last good one are cut.
                let spans = match error {
                    crate::format::FrameError::BadRecordChecksum {
                        span_count, seq, ..
                    } if durable == last_good + 1 && seq == durable => Some(span_count as u64),
                    _ => None,
                };
                let range = LostRange {
                    first_seq: last_good + 1,
                    last_seq: durable,
                    segment: first,
                    offset: offset as u64,
                    spans,
                    reason: reason_at(offset, limit, &error),
                };
                damaged(
                    range,
                    "damaged records at the end of the active segment, all of them synced: lost",
                );
                torn_at = Some((offset, reason_at(offset, limit, &error)));
                scan.last_good = durable;
                break;
            }
            Step::Damaged { offset, error, .. } | Step::Unresumable { offset, error, .. } => {
                torn_at = Some((offset, reason_at(offset, limit, &error)));
                break;
            }
        }
    }
    let last_good = scan.last_good;
    report.scanned_bytes += len;
    let mut torn = None;
    let mut len = limit as u64;
    if let Some((cut, error)) = torn_at {
        let bytes_cut = limit - cut;
        // Seqs the cut bytes may hold: their intact frames, or as many records as
        // fit in them.
        let mut cut_records = Vec::new();
        let mut off = cut;
        while let Some(at) = resync(bytes, off, |s| s > last_good) {
            if let Ok(f) = decode_frame(&bytes[at..]) {
                cut_records.push(f.header.seq);
            }
            off = at + 1;
        }
        let by_size = last_good + bytes_cut.div_ceil(MIN_FRAME_LEN) as u64;
        let last_seq_bound = cut_records.iter().copied().max().unwrap_or(0).max(by_size);
        let qpath = quarantine_dir.join(format!("{first:020}.{cut}.torn"));
        emit(
            hook,
            WalEvent::Quarantined(Quarantine {
                file: qpath.clone(),
                segment: Some(first),
                bytes: bytes_cut as u64,
                first_seq: Some(last_good + 1),
                last_seq: Some(last_seq_bound),
                reason: format!("torn tail cut at byte {cut}: {error}"),
            }),
        );
        let quarantined_to = match keep_copy(&qpath, &bytes[cut..limit], quarantine_dir) {
            Ok(()) => Some(qpath),
            Err(e) => {
                tracing::warn!(error = %e, file = %qpath.display(), "could not keep a copy of the torn tail");
                None
            }
        };
        file.set_len(cut as u64)
            .map_err(io_err("truncate torn tail", &path))?;
        tracing::warn!(
            segment = %path.display(),
            offset = cut,
            bytes = bytes_cut,
            next_seq = last_good + 1,
            cut_records = ?cut_records,
            error = %error,
            "cut off torn tail (an append that never completed, or damage to the last records written)"
        );
        torn = Some(TornTail {
            segment: first,
            offset: cut as u64,
            bytes: bytes_cut as u64,
            first_seq: last_good + 1,
            last_seq_bound,
            cut_records,
            quarantined_to,
        });
        report.torn_tail = torn.clone();
        len = cut as u64;
    }
    Ok((
        Active {
            first_seq: first,
            file,
            path: path.clone(),
            len,
            synced_len: len,
            key_id,
        },
        last_good,
        torn,
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
