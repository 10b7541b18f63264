//! State shared by the writer thread, readers, cursors and `Wal` handles.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::{mpsc, watch};

use crate::config::WalConfig;
use crate::cursor::CursorState;
use crate::fsutil::DirLock;
use crate::meta::Meta;
use crate::segment::{segment_path, InUse, SegmentTable};
use crate::types::{EventHook, LostRange, WalEvent};

/// What readers may see. Published by the writer after each commit, as one
/// consistent snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Watermark {
    /// Last seq readers may return (0: none yet).
    pub last_seq: u64,
    /// First seq of the active segment.
    pub active_segment: u64,
    /// Bytes of the active segment readers may read.
    pub active_len: u64,
}

pub(crate) struct Shared {
    pub cfg: WalConfig,
    /// The log's random identity (in every segment header and in `wal.state`).
    pub wal_id: [u8; 16],
    pub wal_dir: PathBuf,
    pub meta: Meta,
    /// Segment files; written by the writer thread only, read by everyone.
    pub table: RwLock<SegmentTable>,
    /// Segments readers in this process are reading.
    pub in_use: Arc<InUse>,
    /// Totals of sealed segments, for backlog queries.
    pub backlog: crate::backlog::BacklogCache,
    /// Published by the writer after each commit; readers clone it and wait on it.
    /// The writer owns the sending side, so readers learn when it has stopped.
    pub watermark: watch::Receiver<Watermark>,
    /// Every cursor known to the log (loaded from sled at open). Positions decide
    /// which segments may be deleted, so a cursor is never forgotten implicitly.
    pub cursors: RwLock<BTreeMap<String, Arc<CursorState>>>,
    /// Free space appends must leave on the filesystem on top of `min_free_bytes`,
    /// set by the application while it needs room of its own (see
    /// [`Wal::set_headroom`](crate::Wal::set_headroom)).
    pub headroom: AtomicU64,
    /// All seqs below this were evicted by `drop_oldest`. Readers that still map an
    /// evicted segment check it so they do not deliver what was reported dropped.
    pub evicted_below: AtomicU64,
    /// Damage already reported, by (segment, offset), so each range is reported once.
    pub known_damage: Mutex<HashSet<(u64, u64)>>,
    /// Loss events, once somebody took the receiving end.
    pub events: Mutex<Option<mpsc::UnboundedSender<WalEvent>>>,
    /// Called synchronously with every loss event, before the loss takes effect on
    /// disk (see [`Wal::open_with_hook`](crate::Wal::open_with_hook)).
    pub hook: Option<EventHook>,
    /// `fdatasync` calls of the active segment, and the records they covered: the
    /// group commit's effectiveness (records per sync).
    pub syncs: AtomicU64,
    pub synced_records: AtomicU64,
    /// Durations of those `fdatasync`s.
    pub sync_durations: crate::types::DurationHistogram,
    /// Set once, by the first I/O error the log cannot recover from; from then on
    /// every append fails with it (a failed fsync is final).
    pub failed: OnceLock<Arc<str>>,
    /// Held for the life of the log: one process per data directory.
    pub _lock: DirLock,
}

impl Shared {
    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        segment_path(&self.wal_dir, first_seq)
    }

    /// `skipped_from` of the segment starting at `first_seq` (0: none).
    pub fn skipped_from(&self, first_seq: u64) -> u64 {
        self.table
            .read()
            .unwrap()
            .locate(first_seq)
            .filter(|(e, _)| e.first_seq == first_seq)
            .map(|(e, _)| e.skipped_from)
            .unwrap_or(0)
    }

    /// Reports a loss event: to the hook (synchronously; its error is returned and
    /// the event not sent on), then on the event stream.
    pub fn emit(&self, event: WalEvent) -> Result<(), String> {
        if let Some(hook) = &self.hook {
            hook(&event)?;
        }
        if let Some(tx) = self.events.lock().unwrap().as_ref() {
            let _ = tx.send(event);
        }
        Ok(())
    }

    /// Records damage found by recovery or a reader. Logs and emits it the first time.
    pub fn report_damage(&self, lost: &LostRange) -> bool {
        let fresh_here = self
            .known_damage
            .lock()
            .unwrap()
            .insert((lost.segment, lost.offset));
        if !fresh_here {
            return false;
        }
        // Reported (hook, events) before it is recorded as known: a crash in between
        // reports it again rather than never.
        let fresh = match self.meta.has_damage(lost) {
            Ok(known) => !known,
            Err(e) => {
                tracing::error!(error = %e, "could not read the damage registry; reporting anyway");
                true
            }
        };
        if fresh {
            tracing::error!(
                segment = %self.segment_path(lost.segment).display(),
                offset = lost.offset,
                first_seq = lost.first_seq,
                last_seq = lost.last_seq,
                records = lost.records(),
                spans = ?lost.spans,
                reason = %lost.reason,
                "damaged records skipped"
            );
            if let Err(e) = self.emit(WalEvent::Damaged(lost.clone())) {
                // Not recorded as known: reported again by the next reader or start.
                tracing::error!(error = %e, "damage not recorded in the audit trail; it will be reported again");
                self.known_damage
                    .lock()
                    .unwrap()
                    .remove(&(lost.segment, lost.offset));
                return fresh;
            }
            if let Err(e) = self.meta.record_damage(lost) {
                tracing::error!(error = %e, "could not persist damage record");
            }
        }
        fresh
    }

    pub fn fail(&self, cause: String) -> Arc<str> {
        let cause: Arc<str> = cause.into();
        if self.failed.set(cause.clone()).is_ok() {
            tracing::error!(cause = %cause, "write-ahead log failed; appends are refused until restart");
        }
        self.failed.get().cloned().unwrap_or(cause)
    }

    /// True when every cursor has acknowledged `seq` (false when there is no cursor:
    /// with nobody to deliver to, nothing counts as delivered).
    pub fn delivered_to_all(&self, seq: u64) -> bool {
        let cursors = self.cursors.read().unwrap();
        !cursors.is_empty() && cursors.values().all(|c| c.position() >= seq)
    }

    pub fn evicted_below(&self) -> u64 {
        self.evicted_below.load(Ordering::Acquire)
    }

    /// Persists every cursor (D0 of a deletion, and at close).
    pub fn persist_cursors(&self) -> Result<(), crate::error::CursorError> {
        let dir = self.cfg.dir.join(crate::cursor::CURSORS_DIR);
        let cursors: Vec<_> = self.cursors.read().unwrap().values().cloned().collect();
        for c in cursors {
            c.persist(&dir)?;
        }
        Ok(())
    }
}
