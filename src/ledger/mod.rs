//! The audit ledger ("replay log"): an append-only record of the life of every batch
//! — accepted, deduplicated, rejected, delivered, dead-lettered, dropped, damaged,
//! quarantined — from which `tracespool audit` reconciles, for any time window and
//! destination, `accepted = delivered + dropped + dead-lettered + pending`.
//!
//! **Format.** JSON lines in `<data>/ledger/<n:08>.jsonl`, one [`Entry`] per line,
//! rotated at `audit.file_bytes`, the oldest files deleted to stay within
//! `audit.max_bytes`.
//!
//! **Exact across kill -9 and power loss.** Each entry is written with one
//! `write(2)` to a file opened `O_APPEND` (no buffering in the process), and always
//! *before* the state change it records becomes visible: a delivery before its
//! cursor ack, a dead letter before its ack, an eviction before the segment is
//! unlinked, damage before it is recorded as known, a quarantine before the move.
//! Where the state change is durable, so is its entry first: [`Ledger::sync`] (one
//! `fdatasync` shared by every caller that arrives meanwhile) runs before a cursor
//! acknowledges and before a segment is deleted. The one entry that follows its
//! event is "accepted" (written after the batch is durable, before the client is
//! answered); a checkpoint line says up to which seq every accepted batch is in the
//! ledger, and at start the log's records after it are compared with the ledger and
//! any missing is written as recovered from the log itself — exact under `fsync =
//! always`, where every acknowledged batch is in the log.
//!
//! **Torn and full.** Files are preallocated (`fallocate`, keeping their size), so
//! appending needs no free blocks until the file is full. A write that fails part
//! way (a full disk) is cut back to the last whole line, so no two entries are ever
//! glued into one; a torn last line found at start (a power loss mid-write) is cut
//! off, kept beside the file as `<n>.jsonl.torn`, and reported — never a reason not
//! to start. Entries the disk refuses are returned as errors: callers whose state
//! change depends on one wait and try again rather than outrun it.

pub mod reserve;
pub mod summary;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Spans the processors took out of a request, by why (in `accepted` and
/// `discarded` entries; the pipeline in `process/` fills it in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sampled: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub filtered: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Removed {
    pub fn total(&self) -> u64 {
        self.sampled + self.filtered
    }
}

/// Where an engine with its own log (a JetStream stream) stored a delivered
/// record, so `audit show` can point into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub stream: String,
    pub stream_seq: u64,
    /// The stream held this message id already (a repeat within its window).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// One line of the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    /// A batch durable in the log as `seq`. `recovered`: written at start from the
    /// log, the original entry having been lost to a crash (client unknown).
    Accepted {
        t: u64,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        spans: u32,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        protocol: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recovered: bool,
        /// The tenant of the client's token, when receivers authenticate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// Spans the processors took out before the batch was stored (`spans`
        /// counts what was stored).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        removed: Option<Removed>,
    },
    /// A request the processors emptied (every span sampled out or filtered):
    /// answered with success, nothing stored.
    Discarded {
        t: u64,
        /// Spans received.
        spans: u32,
        removed: Removed,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        protocol: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
    },
    /// A request whose idempotency key was accepted before (as `seq`): answered
    /// with success, not stored again.
    Deduplicated {
        t: u64,
        seq: u64,
        key: String,
        spans: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        protocol: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
    },
    /// A request refused (not stored): spool full, invalid, too large, ...
    Rejected {
        t: u64,
        reason: String,
        spans: u32,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        protocol: String,
        detail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
    },
    /// `first_seq..=last_seq` accepted by `destination`.
    Delivered {
        t: u64,
        destination: String,
        first_seq: u64,
        last_seq: u64,
        spans: u64,
        attempts: u32,
        /// By `tracespool dead-letter retry` or `replay` rather than the forwarder.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// A JetStream destination: where the stream stored the record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<Receipt>,
    },
    /// Refused permanently by `destination`; kept as a dead letter.
    DeadLettered {
        t: u64,
        destination: String,
        seq: u64,
        spans: u32,
        attempts: u32,
        status: String,
    },
    /// Given up for `destination` (or for every destination when absent) without
    /// delivery.
    Dropped {
        t: u64,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
        first_seq: u64,
        last_seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spans: Option<u64>,
    },
    /// Damaged records found in the log: lost for every destination that had not
    /// received them.
    Damaged {
        t: u64,
        first_seq: u64,
        last_seq: u64,
        segment: u64,
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spans: Option<u64>,
        detail: String,
    },
    /// Bytes cut from the log at start (a torn tail), or a file that is not a
    /// segment of this log, kept in `quarantine/`. `first_seq..=last_seq`: the seqs
    /// the bytes may hold (a torn tail); accepted batches among them are lost.
    Quarantined {
        t: u64,
        segment: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
        bytes: u64,
        file: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// A destination that exists from `from_seq` on (records before it were never
    /// meant for it).
    DestinationAdded {
        t: u64,
        destination: String,
        from_seq: u64,
    },
    DestinationRemoved {
        t: u64,
        destination: String,
        /// The last seq in the log when it was removed: records up to it that it
        /// had not received are dropped for it (`destination_removed`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_seq: Option<u64>,
    },
    /// Seqs the log skipped at start so none a reader may have seen is reused
    /// (`tracespool_storage::SkippedSeqs`): whatever accepted batches had them are
    /// not in the log.
    SeqsSkipped {
        t: u64,
        first_seq: u64,
        last_seq: u64,
        may_hold_acknowledged: bool,
        reason: String,
    },
    /// The previous run did not stop cleanly (a crash, `kill -9`, a power loss).
    /// Under `fsync = always` nothing acknowledged is lost by it; under `interval`
    /// and `never`, batches acknowledged in the window before it may be gone, and
    /// with them their accepted entries: the audit cannot vouch for that window.
    UncleanStop {
        t: u64,
        fsync: String,
        /// The last entry of the previous run (the window starts about there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_entry_ms: Option<u64>,
        /// How far back acknowledged batches may be lost (None: nothing can be).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_ms: Option<u64>,
    },
    /// The ledger's own repairs at start (a torn last line cut off).
    LedgerRepaired {
        t: u64,
        file: String,
        bytes: u64,
        detail: String,
    },
    /// Every accepted seq up to `accepted_through` has its entry before this line.
    Checkpoint {
        t: u64,
        accepted_through: u64,
    },
    /// `tracespool replay` re-sent the retained records in `first_seq..=last_seq`
    /// to `endpoint` (it changes no batch's fate: an audit trail of what went out).
    Replayed {
        t: u64,
        endpoint: String,
        first_seq: u64,
        last_seq: u64,
        records: u64,
        spans: u64,
        failed: u64,
    },
    /// Refused and deduplicated requests from `since` to `t` that were counted,
    /// not written one by one, because the disk was full (their lines would have
    /// taken the room that deliveries need to be recorded; nothing stored depends on
    /// them). `rejected` by reason, as in `rejected` entries.
    Tallied {
        t: u64,
        since: u64,
        rejected: BTreeMap<String, Tally>,
        #[serde(default, skip_serializing_if = "Tally::is_empty")]
        deduplicated: Tally,
    },
    Started {
        t: u64,
        instance_id: String,
        version: String,
        next_seq: u64,
    },
    Stopped {
        t: u64,
    },
}

/// Requests and their spans, counted (see [`Entry::Tallied`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: u64,
    pub spans: u64,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    fn add(&mut self, spans: u64) {
        self.requests += 1;
        self.spans += spans;
    }
}

/// What [`Ledger::write_or_tally`] has counted and not yet written.
#[derive(Default)]
struct Tallies {
    since: u64,
    rejected: BTreeMap<String, Tally>,
    deduplicated: Tally,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Current {
    file: File,
    index: u64,
    len: u64,
    /// A write failed and its partial line could not be cut off: the next entry
    /// starts on a new line.
    needs_newline: bool,
    /// Bumped by every entry written.
    written: u64,
}

impl Current {
    /// Goes on in `file` (empty), the ledger's file number `index`.
    fn switch_to(&mut self, file: File, index: u64) {
        *self = Current {
            file,
            index,
            len: 0,
            needs_newline: false,
            written: self.written,
        };
    }
}

pub struct Ledger {
    dir: PathBuf,
    file_bytes: u64,
    max_bytes: u64,
    current: Mutex<Current>,
    /// Serialises syncs; holds the `written` count the last completed sync covered.
    synced: Mutex<u64>,
    /// Accepted seqs written, to find the contiguous prefix for checkpoints.
    tracker: Mutex<(u64, BTreeSet<u64>)>,
    checkpointed: AtomicU64,
    /// Repairs made at open (a torn last line), for the caller to record.
    repairs: Mutex<Vec<Entry>>,
    /// Disk space held back for the ledger (see `reserve.rs`).
    reserve: reserve::Reserve,
    /// Refusals and duplicates counted while the disk was full.
    tallies: Mutex<Option<Tallies>>,
}

fn file_name(index: u64) -> String {
    format!("{index:08}.jsonl")
}

/// Reserves `bytes` for `f` without changing its size, so appends need no free
/// blocks; best effort (not every filesystem can).
fn preallocate(f: &File, bytes: u64) {
    let _ = rustix::fs::fallocate(f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, bytes);
}

/// Ledger files in `dir`, oldest first, as (index, path).
pub fn files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if let Ok(i) = stem.parse::<u64>() {
            out.push((i, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every entry of every ledger file in `dir`, oldest first. Lines that do not
/// parse (a line cut by a power loss, bytes that are not UTF-8, damage) are skipped;
/// an unreadable file is skipped with a warning.
pub fn read_all(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (_, path) in files(dir)? {
        out.extend(read_file(&path));
    }
    Ok(out)
}

/// The entries of one ledger file (see [`read_all`]).
fn read_file(path: &Path) -> Vec<Entry> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "cannot read an audit ledger file; skipping it");
            }
            return Vec::new();
        }
    };
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Entry>(line).ok())
        .collect()
}

/// Where the last complete, valid line of `bytes` ends (0 if none), and whether
/// bytes after it form a torn line.
fn valid_end(bytes: &[u8]) -> (usize, bool) {
    let Some(nl) = bytes.iter().rposition(|&b| b == b'\n') else {
        return (0, !bytes.is_empty());
    };
    let tail_torn = nl + 1 < bytes.len();
    // The last complete line must itself parse; a line glued from two halves (an
    // older version's failed write) is cut with the tail.
    let start = bytes[..nl]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if start == nl || serde_json::from_slice::<Entry>(&bytes[start..nl]).is_ok() {
        (nl + 1, tail_torn)
    } else {
        let (end, _) = valid_end(&bytes[..start]);
        (end, true)
    }
}

/// Appends one entry from another process (a tool) to the newest ledger file, with
/// one `O_APPEND` write, beside a running forwarder or a stopped one.
pub fn append_external(dir: &Path, entry: &Entry) -> io::Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    let path = match files(dir)?.pop() {
        Some((_, p)) => p,
        None => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            dir.join(file_name(1))
        }
    };
    let mut f = open_append(&path)?;
    let before = f.metadata()?.len();
    if let Err(e) = f.write_all(&line) {
        // No half line may stay to glue onto the next entry.
        let _ = f.set_len(before);
        return Err(e);
    }
    f.sync_data()
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl Ledger {
    pub fn open(dir: &Path, file_bytes: u64, max_bytes: u64, last_seq: u64) -> io::Result<Self> {
        Self::open_with_reserve(dir, file_bytes, max_bytes, last_seq, 0)
    }

    /// [`Ledger::open`] holding `reserve_bytes` of disk back for a full disk.
    pub fn open_with_reserve(
        dir: &Path,
        file_bytes: u64,
        max_bytes: u64,
        last_seq: u64,
        reserve_bytes: u64,
    ) -> io::Result<Self> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {
                if let Some(parent) = dir.parent() {
                    let _ = File::open(parent).and_then(|d| d.sync_all());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let existing = files(dir)?;
        let index = existing.last().map(|(i, _)| *i).unwrap_or(1);
        let path = dir.join(file_name(index));
        let mut repairs = Vec::new();
        // A torn last line (power loss mid-write): cut off and kept beside the file.
        if let Ok(bytes) = fs::read(&path) {
            let (end, torn) = valid_end(&bytes);
            if torn {
                let cut = &bytes[end..];
                let keep = dir.join(format!("{}.torn", file_name(index)));
                let _ = fs::write(&keep, cut);
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(end as u64)?;
                f.sync_data()?;
                tracing::warn!(file = %path.display(), offset = end, bytes = cut.len(), kept = %keep.display(), "audit ledger: cut a torn last line");
                repairs.push(Entry::LedgerRepaired {
                    t: now_ms(),
                    file: path.display().to_string(),
                    bytes: cut.len() as u64,
                    detail: format!(
                        "torn last line cut at byte {end}, kept in {}",
                        keep.display()
                    ),
                });
            }
        }
        let created = !path.exists();
        let file = open_append(&path)?;
        if created {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        preallocate(&file, file_bytes);
        let len = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            file_bytes,
            max_bytes,
            current: Mutex::new(Current {
                file,
                index,
                len,
                needs_newline: false,
                written: 0,
            }),
            synced: Mutex::new(0),
            tracker: Mutex::new((last_seq, BTreeSet::new())),
            checkpointed: AtomicU64::new(0),
            repairs: Mutex::new(repairs),
            reserve: reserve::Reserve::new(dir, reserve_bytes),
            tallies: Mutex::new(None),
        })
    }

    /// The disk space held back for the ledger.
    pub fn reserve(&self) -> &reserve::Reserve {
        &self.reserve
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Time of the newest entry written before this open (the previous run's last
    /// word), if any.
    pub fn last_entry_ms(&self) -> Option<u64> {
        self.tail_entries()
            .ok()?
            .iter()
            .map(summary::entry_time)
            .max()
    }

    /// Repairs made at open, to write as entries once the ledger is in use.
    pub fn take_repairs(&self) -> Vec<Entry> {
        std::mem::take(&mut self.repairs.lock().unwrap())
    }

    /// Appends one entry with one write. An error (a full or failing disk) means
    /// the entry is not in the ledger; a caller whose state change it records must
    /// not go on as if it were.
    pub fn write(&self, entry: &Entry) -> io::Result<()> {
        match self.write_once(entry) {
            // A full disk: the reserve is for exactly this.
            Err(e) if out_of_space(&e) && self.go_on_in_reserve() => self.write_once(entry),
            r => r,
        }
    }

    /// Makes the reserve the current ledger file (the disk is full). Returns
    /// whether it did.
    fn go_on_in_reserve(&self) -> bool {
        if !self.reserve.is_held() {
            return false;
        }
        let mut cur = self.current.lock().unwrap();
        // Entries before the switch are durable first, as at a rotation.
        if let Err(e) = cur.file.sync_all() {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot sync the audit ledger");
            return false;
        }
        let mut index = cur.index + 1;
        while self.dir.join(file_name(index)).exists() {
            index += 1;
        }
        let to = self.dir.join(file_name(index));
        let file = match self.reserve.take_as(&to).and_then(|taken| {
            if taken {
                open_append(&to).map(Some)
            } else {
                Ok(None)
            }
        }) {
            Ok(Some(f)) => f,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, file = %to.display(), "cannot go on in the audit ledger's reserve");
                return false;
            }
        };
        cur.switch_to(file, index);
        true
    }

    /// Writes a `rejected` or `deduplicated` entry — one that no state change
    /// depends on — unless the disk is full: then (the reserve released, or a write
    /// finding no space) the request is only counted, and the counts are written
    /// as one `tallied` entry once there is room again. A client retrying against
    /// a full spool must not fill the ledger's reserve with refusals, or the
    /// deliveries that would free space could not be recorded.
    pub fn write_or_tally(&self, entry: &Entry) {
        if !self.reserve.is_spent() {
            match self.write_once(entry) {
                Err(e) if out_of_space(&e) => {}
                _ => return,
            }
        }
        let mut tallies = self.tallies.lock().unwrap();
        let t = tallies.get_or_insert_with(|| Tallies {
            since: now_ms(),
            ..Tallies::default()
        });
        match entry {
            Entry::Rejected { reason, spans, .. } => t
                .rejected
                .entry(reason.clone())
                .or_default()
                .add(*spans as u64),
            Entry::Deduplicated { spans, .. } => t.deduplicated.add(*spans as u64),
            other => {
                drop(tallies);
                tracing::error!(entry = ?other, "only refusals and duplicates are tallied; writing it");
                let _ = self.write(other);
            }
        }
    }

    /// Writes what [`Ledger::write_or_tally`] counted, if the disk has room again.
    pub fn flush_tally(&self) {
        if self.reserve.is_spent() {
            return;
        }
        let mut tallies = self.tallies.lock().unwrap();
        let Some(t) = tallies.as_ref() else {
            return;
        };
        let entry = Entry::Tallied {
            t: now_ms(),
            since: t.since,
            rejected: t.rejected.clone(),
            deduplicated: t.deduplicated,
        };
        if self.write_once(&entry).is_ok() {
            *tallies = None;
        }
    }

    fn write_once(&self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut cur = self.current.lock().unwrap();
        if cur.len > 0 && cur.len + line.len() as u64 > self.file_bytes {
            if let Err(e) = self.rotate(&mut cur) {
                // Keep writing to the old file (preallocation permitting).
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot rotate the audit ledger");
            }
        }
        if cur.needs_newline {
            line.insert(0, b'\n');
        }
        match cur.file.write_all(&line) {
            Ok(()) => {
                cur.len += line.len() as u64;
                cur.needs_newline = false;
                cur.written += 1;
            }
            Err(e) => {
                // Cut the partial line back off, or at least end it.
                let len = cur.len;
                if cur.file.set_len(len).is_err() {
                    cur.needs_newline = true;
                    cur.len = cur.file.metadata().map(|m| m.len()).unwrap_or(len);
                }
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the audit ledger");
                return Err(e);
            }
        }
        drop(cur);
        if let Entry::Accepted { seq, .. } = entry {
            self.accepted_written(*seq);
        }
        Ok(())
    }

    /// Makes every entry written so far durable (one `fdatasync`, shared with the
    /// callers that arrive while it runs).
    pub fn sync(&self) -> io::Result<()> {
        let (want, file) = {
            let cur = self.current.lock().unwrap();
            (cur.written, cur.file.try_clone()?)
        };
        let mut synced = self.synced.lock().unwrap();
        if *synced >= want {
            return Ok(());
        }
        // Entries up to `want` are in this file or in older ones, which rotation
        // synced before switching.
        file.sync_data()?;
        *synced = (*synced).max(want);
        Ok(())
    }

    fn rotate(&self, cur: &mut Current) -> io::Result<()> {
        cur.file.sync_all()?;
        let index = cur.index + 1;
        let file = open_append(&self.dir.join(file_name(index)))?;
        crate::fsio::sync_dir(&self.dir)?;
        preallocate(&file, self.file_bytes);
        cur.switch_to(file, index);
        // Within the share of the disk budget: drop the oldest files.
        let mut all = files(&self.dir)?;
        let mut total: u64 = all
            .iter()
            .filter_map(|(_, p)| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        while total > self.max_bytes && all.len() > 1 {
            let (_, oldest) = all.remove(0);
            let len = fs::metadata(&oldest).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&oldest)?;
            total -= len;
            tracing::info!(file = %oldest.display(), "oldest audit ledger file deleted (audit.max_bytes)");
        }
        Ok(())
    }

    fn accepted_written(&self, seq: u64) {
        let mut t = self.tracker.lock().unwrap();
        if seq <= t.0 {
            return;
        }
        t.1.insert(seq);
        loop {
            let next = t.0 + 1;
            if !t.1.remove(&next) {
                break;
            }
            t.0 = next;
        }
        if t.1.len() > 100_000 {
            // A seq the log skipped must not stall the checkpoint forever.
            let first = *t.1.iter().next().unwrap();
            t.0 = first - 1;
        }
    }

    /// Restarts the checkpoint tracker after recovery: every seq up to `last_seq` is
    /// in the ledger.
    pub fn reset_tracker(&self, last_seq: u64) {
        let mut t = self.tracker.lock().unwrap();
        t.0 = t.0.max(last_seq);
        t.1.retain(|&s| s > last_seq);
    }

    /// Marks `seq` as needing no accepted entry (e.g. an append whose entry is
    /// written elsewhere); keeps the checkpoint moving.
    pub fn skip_seq(&self, seq: u64) {
        self.accepted_written(seq);
    }

    /// Writes a checkpoint if the contiguous accepted prefix moved, and syncs.
    pub fn checkpoint(&self) {
        let through = self.tracker.lock().unwrap().0;
        if through > self.checkpointed.load(Ordering::Relaxed)
            && self
                .write(&Entry::Checkpoint {
                    t: now_ms(),
                    accepted_through: through,
                })
                .is_ok()
        {
            self.checkpointed.store(through, Ordering::Relaxed);
        }
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "cannot sync the audit ledger");
        }
        // Take the reserve back once deliveries have made room.
        self.reserve.ensure();
        self.flush_tally();
    }

    /// At start: writes an accepted entry, recovered from the log, for every record
    /// after the last checkpoint that the ledger lacks (its entry was lost to a
    /// crash). Returns how many.
    pub fn recover(&self, wal: &tracespool_storage::Wal) -> io::Result<u64> {
        let entries = self.tail_entries()?;
        let through = entries
            .iter()
            .rev()
            .find_map(|e| match e {
                Entry::Checkpoint {
                    accepted_through, ..
                } => Some(*accepted_through),
                _ => None,
            })
            .unwrap_or(0);
        let known: BTreeSet<u64> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Accepted { seq, .. } if *seq > through => Some(*seq),
                _ => None,
            })
            .collect();
        let mut reader = wal.reader(through + 1);
        let mut recovered = 0;
        while let Ok(Some(item)) = reader.try_next() {
            if let tracespool_storage::ReadItem::Record(r) = item {
                if !known.contains(&r.seq) {
                    let _ = self.write(&Entry::Accepted {
                        t: ms(r.received_at),
                        seq: r.seq,
                        key: (!r.idempotency_key.is_empty())
                            .then(|| String::from_utf8_lossy(&r.idempotency_key).into_owned()),
                        spans: r.span_count,
                        bytes: r.payload.len() as u64,
                        client: None,
                        protocol: "unknown".into(),
                        recovered: true,
                        tenant: None,
                        removed: None,
                    });
                    recovered += 1;
                }
            }
        }
        Ok(recovered)
    }

    /// Entries of the newest two files (where the last checkpoint and everything
    /// after it are).
    fn tail_entries(&self) -> io::Result<Vec<Entry>> {
        let all = files(&self.dir)?;
        let mut out = Vec::new();
        for (_, path) in all.iter().rev().take(2).rev() {
            out.extend(read_file(path));
        }
        Ok(out)
    }
}

/// Checkpoints and syncs the ledger every second until `stop`.
pub async fn maintain(ledger: std::sync::Arc<Ledger>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let l = ledger.clone();
        let _ = tokio::task::spawn_blocking(move || l.checkpoint()).await;
    }
    let _ = tokio::task::spawn_blocking(move || ledger.checkpoint()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_as_json_lines() {
        let e = Entry::Accepted {
            t: 1,
            seq: 2,
            key: Some("k".into()),
            spans: 3,
            bytes: 4,
            client: Some("127.0.0.1:9".into()),
            protocol: "grpc".into(),
            recovered: false,
            tenant: None,
            removed: None,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"event":"accepted","t":1,"seq":2,"key":"k","spans":3,"bytes":4,"client":"127.0.0.1:9","protocol":"grpc"}"#
        );
        assert_eq!(serde_json::from_str::<Entry>(&line).unwrap(), e);
    }

    #[test]
    fn files_rotate_and_stay_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path(), 1000, 3000, 0).unwrap();
        for i in 1..=200 {
            l.write(&Entry::Stopped { t: i }).unwrap();
        }
        let fs = files(dir.path()).unwrap();
        assert!(fs.len() >= 2 && fs.len() <= 4, "{fs:?}");
        let total: u64 = fs
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 3000 + 1000, "{total}");
        // The newest entries are kept.
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.last(), Some(&Entry::Stopped { t: 200 }));
    }

    #[test]
    fn checkpoint_follows_the_contiguous_accepted_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path(), 1 << 20, 1 << 30, 10).unwrap();
        let acc = |seq| Entry::Accepted {
            t: 0,
            seq,
            key: None,
            spans: 1,
            bytes: 1,
            client: None,
            protocol: "grpc".into(),
            recovered: false,
            tenant: None,
            removed: None,
        };
        l.write(&acc(12)).unwrap();
        l.checkpoint();
        l.write(&acc(11)).unwrap();
        l.checkpoint();
        let cps: Vec<u64> = read_all(dir.path())
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Checkpoint {
                    accepted_through, ..
                } => Some(accepted_through),
                _ => None,
            })
            .collect();
        // 10: everything before this run (recovered at start); then 12 once 11 came.
        assert_eq!(cps, vec![10, 12]);
    }

    #[test]
    fn a_torn_last_line_is_cut_kept_and_reported_not_a_reason_to_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path(), 1 << 20, 1 << 30, 0).unwrap();
        l.write(&Entry::Stopped { t: 1 }).unwrap();
        l.write(&Entry::Stopped { t: 2 }).unwrap();
        drop(l);
        // A power loss cut the next line in the middle of a UTF-8 character.
        let path = dir.path().join(file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice("{\"event\":\"rejected\",\"detail\":\"caf\u{e9}".as_bytes());
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        let l = Ledger::open(dir.path(), 1 << 20, 1 << 30, 0).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, good);
        let repairs = l.take_repairs();
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        assert!(dir.path().join(format!("{}.torn", file_name(1))).exists());
        // Writing goes on from a whole line; nothing glued.
        l.write(&Entry::Stopped { t: 3 }).unwrap();
        let all = read_all(dir.path()).unwrap();
        assert_eq!(
            all,
            vec![
                Entry::Stopped { t: 1 },
                Entry::Stopped { t: 2 },
                Entry::Stopped { t: 3 }
            ]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_stop_the_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let mut b = b"{\"event\":\"stopped\",\"t\":1}\n\xff\xfe garbage\n".to_vec();
        b.extend_from_slice(b"{\"event\":\"stopped\",\"t\":2}\n");
        std::fs::write(&path, b).unwrap();
        assert_eq!(read_all(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn refusals_on_a_full_disk_are_tallied_and_written_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_with_reserve(dir.path(), 1 << 20, 1 << 30, 0, 4096).unwrap();
        assert!(l.reserve().ensure());
        let rejected = |spans| Entry::Rejected {
            t: now_ms(),
            reason: "full".into(),
            spans,
            bytes: 100,
            client: None,
            protocol: "grpc".into(),
            detail: "spool full".into(),
            tenant: None,
        };
        let dup = Entry::Deduplicated {
            t: now_ms(),
            seq: 1,
            key: "k".into(),
            spans: 7,
            client: None,
            protocol: "http".into(),
            tenant: None,
        };
        // Room: written as they come.
        l.write_or_tally(&rejected(1));
        assert_eq!(read_all(dir.path()).unwrap().len(), 1);
        // The disk is full (the reserve was spent): counted only.
        assert!(l.reserve().take_as(&dir.path().join("spent")).unwrap());
        l.write_or_tally(&rejected(2));
        l.write_or_tally(&rejected(3));
        l.write_or_tally(&dup);
        l.flush_tally();
        assert_eq!(read_all(dir.path()).unwrap().len(), 1, "nothing while full");
        // Room again: the checkpoint takes the reserve back and writes the tally.
        l.checkpoint();
        assert!(l.reserve().is_held());
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        let Entry::Tallied {
            rejected: r,
            deduplicated: d,
            since,
            t,
        } = &all[1]
        else {
            panic!("{:?}", all[1]);
        };
        assert!(since <= t);
        assert_eq!(
            r["full"],
            Tally {
                requests: 2,
                spans: 5
            }
        );
        assert_eq!(
            *d,
            Tally {
                requests: 1,
                spans: 7
            }
        );
        // Once.
        l.checkpoint();
        assert_eq!(read_all(dir.path()).unwrap().len(), 2);
        // The summary counts them as if itemized.
        let s = summary::summarize(&all, None, None, None, None);
        assert_eq!(
            (s.rejected["full"].records, s.rejected["full"].spans),
            (3, 6)
        );
        assert_eq!((s.deduplicated.records, s.deduplicated.spans), (1, 7));
    }
}
