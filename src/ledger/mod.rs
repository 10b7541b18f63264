//! The audit ledger ("replay log"): an append-only record of the life of every batch
//! — accepted, deduplicated, rejected, delivered, dead-lettered, dropped, damaged,
//! quarantined — from which `tracespool audit` reconciles, for any time window and
//! destination, `accepted = delivered + dropped + dead-lettered + pending`.
//!
//! **Format.** JSON lines in `<data>/ledger/<n:08>.jsonl`, one [`Entry`] per line,
//! rotated at `audit.file_bytes`, the oldest files deleted to stay within
//! `audit.max_bytes`.
//!
//! **Exact across kill -9.** Each entry is written with one `write(2)` to a file
//! opened `O_APPEND` (no buffering in the process), and always *before* the state
//! change it records becomes visible: a delivery before its cursor ack, a dead
//! letter before its ack, an eviction before the segment is unlinked, damage before
//! it is recorded as known. The one entry that follows its event is "accepted"
//! (written after the batch is durable, before the client is answered); a checkpoint
//! line says up to which seq every accepted batch is in the ledger, and at start the
//! log's records after it are compared with the ledger and any missing is written
//! as recovered from the log itself. A power loss can lose the last second of
//! entries (the ledger is synced once a second).

pub mod summary;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::process::Removed;

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
    /// Bytes cut from the log at start (a torn tail) or a foreign segment, kept in
    /// `quarantine/`.
    Quarantined {
        t: u64,
        segment: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_seq: Option<u64>,
        bytes: u64,
        file: String,
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
}

pub struct Ledger {
    dir: PathBuf,
    file_bytes: u64,
    max_bytes: u64,
    current: Mutex<Current>,
    /// Accepted seqs written, to find the contiguous prefix for checkpoints.
    tracker: Mutex<(u64, BTreeSet<u64>)>,
    checkpointed: AtomicU64,
}

fn file_name(index: u64) -> String {
    format!("{index:08}.jsonl")
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

/// Every entry of every ledger file in `dir`, oldest first (unparseable lines, such
/// as a line cut by a power loss, are skipped).
pub fn read_all(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (_, path) in files(dir)? {
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in io::BufReader::new(f).lines() {
            if let Ok(entry) = serde_json::from_str::<Entry>(&line?) {
                out.push(entry);
            }
        }
    }
    Ok(out)
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
    f.write_all(&line)?;
    f.sync_data()
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Ledger {
    pub fn open(dir: &Path, file_bytes: u64, max_bytes: u64, last_seq: u64) -> io::Result<Self> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let existing = files(dir)?;
        let index = existing.last().map(|(i, _)| *i).unwrap_or(1);
        let path = dir.join(file_name(index));
        let file = open_append(&path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            file_bytes,
            max_bytes,
            current: Mutex::new(Current { file, index, len }),
            tracker: Mutex::new((last_seq, BTreeSet::new())),
            checkpointed: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one entry with one write. Errors are logged, not returned: the
    /// ledger must never stop the data path.
    pub fn write(&self, entry: &Entry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode ledger entry");
                return;
            }
        };
        line.push(b'\n');
        let mut cur = self.current.lock().unwrap();
        if cur.len > 0 && cur.len + line.len() as u64 > self.file_bytes {
            if let Err(e) = self.rotate(&mut cur) {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot rotate the audit ledger");
            }
        }
        match cur.file.write_all(&line) {
            Ok(()) => cur.len += line.len() as u64,
            Err(e) => {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the audit ledger")
            }
        }
        drop(cur);
        if let Entry::Accepted { seq, .. } = entry {
            self.accepted_written(*seq);
        }
    }

    fn rotate(&self, cur: &mut Current) -> io::Result<()> {
        cur.file.sync_all()?;
        let index = cur.index + 1;
        let file = open_append(&self.dir.join(file_name(index)))?;
        fs::File::open(&self.dir)?.sync_all()?;
        *cur = Current {
            file,
            index,
            len: 0,
        };
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
        if through > self.checkpointed.load(Ordering::Relaxed) {
            self.write(&Entry::Checkpoint {
                t: now_ms(),
                accepted_through: through,
            });
            self.checkpointed.store(through, Ordering::Relaxed);
        }
        let cur = self.current.lock().unwrap();
        if let Err(e) = cur.file.sync_data() {
            tracing::error!(error = %e, "cannot sync the audit ledger");
        }
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
                    self.write(&Entry::Accepted {
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
            for line in io::BufReader::new(File::open(path)?).lines() {
                if let Ok(e) = serde_json::from_str::<Entry>(&line?) {
                    out.push(e);
                }
            }
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
            l.write(&Entry::Stopped { t: i });
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
        l.write(&acc(12));
        l.checkpoint();
        l.write(&acc(11));
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
}
