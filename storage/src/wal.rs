//! The public handle on a log.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{oneshot, watch, Semaphore};

use crate::config::WalConfig;
use crate::cursor::{self, Cursor, CursorState, CURSORS_DIR};
use crate::error::{AppendError, CursorError, OpenError};
use crate::format::{frame_len, MAX_KEY_LEN};
use crate::fsutil::{lock_dir, LockError};
use crate::meta::Meta;
use crate::queue::CommandQueue;
use crate::reader::Reader;
use crate::recovery::{ensure_layout, recover, Inputs};
use crate::shared::{Shared, Watermark};
use crate::types::{
    Appended, CursorStart, EventHook, LostRange, NewRecord, RecoveryReport, WalEvent, WalStats,
};
use crate::writer::{AppendRequest, Command, Writer};

/// A write-ahead log. Cheap to clone; all clones share one writer thread.
///
/// Dropping the last clone shuts the writer down cleanly (as [`Wal::close`] does,
/// but blocking the dropping thread briefly).
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

/// See [`Wal::headroom_handle`]; does nothing once the log is closed.
#[derive(Clone)]
pub struct Headroom(std::sync::Weak<Inner>);

impl Headroom {
    /// As [`Wal::set_headroom`].
    pub fn set(&self, bytes: u64) {
        if let Some(inner) = self.0.upgrade() {
            Wal { inner }.set_headroom(bytes);
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    commands: Arc<CommandQueue>,
    /// Bounds the bytes of appends waiting for the writer (`write_queue_bytes`).
    queue: Arc<Semaphore>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Ends once the writer (which holds its job sender) has ended.
    deleter: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.commands.push(Command::Shutdown(tx));
        if let Some(handle) = self.writer.lock().unwrap().take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.deleter.lock().unwrap().take() {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.shared.cfg.dir)
            .finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `cfg.dir`, recovering from whatever state
    /// a crash left. Blocking: it reads the active segment and syncs it.
    pub fn open(cfg: WalConfig) -> Result<(Self, RecoveryReport), OpenError> {
        Self::open_with_hook(cfg, None)
    }

    /// [`Wal::open`], with a function called synchronously for every loss event
    /// (including damage found by recovery during this open). See [`EventHook`].
    pub fn open_with_hook(
        cfg: WalConfig,
        hook: Option<EventHook>,
    ) -> Result<(Self, RecoveryReport), OpenError> {
        let started = Instant::now();
        cfg.validate().map_err(OpenError::Config)?;
        let (wal_dir, quarantine_dir) = ensure_layout(&cfg)?;
        let lock = lock_dir(&cfg.dir).map_err(|e| match e {
            LockError::Held => OpenError::Locked {
                dir: cfg.dir.clone(),
            },
            LockError::Io(source) => OpenError::Io {
                op: "lock",
                path: cfg.dir.join("LOCK"),
                source,
            },
        })?;
        let mut report = RecoveryReport::default();
        let meta = open_meta(&cfg.dir, &mut report)?;

        // Cursors: their own files; an earlier version kept positions in sled.
        let cursors_dir = cfg.dir.join(CURSORS_DIR);
        let mut restored: BTreeMap<String, Arc<CursorState>> = BTreeMap::new();
        let mut damaged_cursors = Vec::new();
        match cursor::load_all(&cfg.dir) {
            Ok(found) => {
                for f in found {
                    match f {
                        cursor::Found::Valid(file, p) => {
                            restored
                                .insert(p.name.clone(), Arc::new(CursorState::restored(p, file)));
                        }
                        cursor::Found::Damaged { name, path } => {
                            tracing::error!(cursor = %name, file = %path.display(), "cursor file damaged: the cursor restarts at the oldest record on disk");
                            damaged_cursors.push(name);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, dir = %cursors_dir.display(), "cannot read cursor files; cursors restart at the oldest record on disk");
                report
                    .repaired
                    .push(format!("cursor files unreadable: {e}"));
            }
        }
        if restored.is_empty() && damaged_cursors.is_empty() {
            for (name, pos) in meta.cursor_positions().unwrap_or_default() {
                let path = cursors_dir.join(cursor::file_name(&name));
                restored.insert(name.clone(), Arc::new(CursorState::new(name, pos, path)));
            }
        }
        let cursor_next = restored
            .values()
            .map(|c| c.position() + 1)
            .max()
            .unwrap_or(1);
        let rec = recover(
            Inputs {
                cfg: &cfg,
                wal_dir: &wal_dir,
                quarantine_dir: &quarantine_dir,
                meta: &meta,
                cursor_next,
                hook: hook.as_ref(),
            },
            &mut report,
        )?;
        let first_on_disk = rec
            .table
            .first()
            .map(|e| e.first_seq)
            .unwrap_or(rec.next_seq);
        for name in &damaged_cursors {
            let path = cursors_dir.join(cursor::file_name(name));
            let pos = first_on_disk.max(1) - 1;
            restored.insert(
                name.clone(),
                Arc::new(CursorState::new(name.clone(), pos, path)),
            );
        }
        report.damaged_cursors = damaged_cursors;
        let known_damage: HashSet<(u64, u64)> = meta
            .damage()
            .unwrap_or_default()
            .iter()
            .map(|l| (l.segment, l.offset))
            .collect();
        let watermark = Watermark {
            last_seq: rec.next_seq - 1,
            active_segment: rec.active.first_seq,
            active_len: rec.active.len,
        };
        report.segments = rec.table.len();
        report.first_seq = first_on_disk;
        report.next_seq = rec.next_seq;
        let total = rec.table.total_bytes();
        let (wm_tx, wm_rx) = watch::channel(watermark);
        let shared = Arc::new(Shared {
            wal_id: rec.wal_id,
            wal_dir,
            meta,
            table: RwLock::new(rec.table),
            in_use: Default::default(),
            backlog: Default::default(),
            watermark: wm_rx,
            cursors: RwLock::new(restored),
            evicted_below: AtomicU64::new(0),
            headroom: AtomicU64::new(0),
            known_damage: Mutex::new(known_damage),
            events: Mutex::new(None),
            hook,
            syncs: AtomicU64::new(0),
            synced_records: AtomicU64::new(0),
            sync_durations: Default::default(),
            failed: OnceLock::new(),
            _lock: lock,
            cfg,
        });
        if let Some(why) = &rec.refuse_appends {
            shared.fail(why.clone());
        }
        // Cursors restored from an earlier version or recreated: durable now.
        for c in shared.cursors.read().unwrap().values() {
            if let Err(e) = c.persist(&cursors_dir) {
                tracing::warn!(error = %e, "cannot write a cursor file yet; its position is kept in memory");
            }
        }
        for lost in &rec.lost {
            if shared.report_damage(lost) {
                report.lost.push(lost.clone());
            }
        }
        if total > shared.cfg.max_bytes {
            tracing::warn!(
                bytes = total,
                max_bytes = shared.cfg.max_bytes,
                "log is larger than its budget (was max_bytes lowered?)"
            );
        }

        let queue = Arc::new(CommandQueue::default());
        let (deleter_tx, deleter_rx) = std::sync::mpsc::channel();
        let deleter = {
            let for_thread = shared.clone();
            std::thread::Builder::new()
                .name("tracespool-wal-deleter".into())
                .spawn(move || crate::deleter::run(for_thread, deleter_rx))
                .map_err(|source| OpenError::Io {
                    op: "spawn deleter thread for",
                    path: shared.wal_dir.clone(),
                    source,
                })?
        };
        let writer = Writer::new(
            shared.clone(),
            wm_tx,
            queue.clone(),
            deleter_tx,
            rec.wal_id,
            rec.active,
            rec.next_seq,
            rec.state,
            rec.pending_rotation,
        );
        let handle = std::thread::Builder::new()
            .name("tracespool-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| OpenError::Io {
                op: "spawn writer thread for",
                path: shared.wal_dir.clone(),
                source,
            })?;
        let queue_bytes = usize::try_from(shared.cfg.write_queue_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        report.duration = started.elapsed();
        tracing::info!(
            dir = %shared.cfg.dir.display(),
            segments = report.segments,
            bytes = total,
            first_seq = report.first_seq,
            next_seq = report.next_seq,
            clean_stop = report.clean_stop,
            torn_tail_bytes = report.torn_tail.as_ref().map(|t| t.bytes).unwrap_or(0),
            lost_ranges = report.lost.len(),
            skipped = ?report.skipped.as_ref().map(|s| (s.first_seq, s.last_seq)),
            open_ms = report.duration.as_secs_f64() * 1000.0,
            "write-ahead log opened"
        );
        let wal = Self {
            inner: Arc::new(Inner {
                shared,
                commands: queue,
                queue: Arc::new(Semaphore::new(queue_bytes)),
                writer: Mutex::new(Some(handle)),
                deleter: Mutex::new(Some(deleter)),
            }),
        };
        Ok((wal, report))
    }

    /// Makes appends leave `bytes` more free on the filesystem (on top of
    /// `min_free_bytes`) until set back to 0: the caller's own files need room (its
    /// audit trail on a full disk). Appends that would not leave it are refused with
    /// `Full`, as with `min_free_bytes`.
    pub fn set_headroom(&self, bytes: u64) {
        let old = self.inner.shared.headroom.swap(bytes, Ordering::AcqRel);
        if old != bytes {
            tracing::info!(
                headroom_bytes = bytes,
                "filesystem headroom for appends changed"
            );
        }
    }

    /// A handle that sets the headroom without keeping the log open: for a
    /// callback the log's own event hook reaches (holding a `Wal` there would be a
    /// cycle, and the log would never close).
    pub fn headroom_handle(&self) -> Headroom {
        Headroom(Arc::downgrade(&self.inner))
    }

    /// The log's random identity.
    pub fn id(&self) -> [u8; 16] {
        self.inner.shared.wal_id
    }

    pub fn config(&self) -> &WalConfig {
        &self.inner.shared.cfg
    }

    /// Appends a record; resolves once it is durable under the configured fsync
    /// policy. Concurrent calls share one `fdatasync` (group commit).
    ///
    /// If the future is dropped after the request was queued, the record may still
    /// be written: the caller just does not learn its seq.
    pub async fn append(&self, record: NewRecord) -> Result<Appended, AppendError> {
        let shared = &self.inner.shared;
        if let Some(cause) = shared.failed.get() {
            return Err(AppendError::Failed {
                cause: cause.clone(),
            });
        }
        if record.idempotency_key.len() > MAX_KEY_LEN {
            return Err(AppendError::TooLarge {
                bytes: record.idempotency_key.len() as u64,
                limit: MAX_KEY_LEN as u64,
                what: "idempotency key",
            });
        }
        if record.payload.len() as u64 > shared.cfg.max_record_bytes {
            return Err(AppendError::TooLarge {
                bytes: record.payload.len() as u64,
                limit: shared.cfg.max_record_bytes,
                what: "payload over max_record_bytes",
            });
        }
        let cost = frame_len(record.idempotency_key.len(), record.payload.len())
            .min(shared.cfg.write_queue_bytes)
            .min(u32::MAX as u64) as u32;
        let permit = self
            .inner
            .queue
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| AppendError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .push(Command::Append(AppendRequest {
                record,
                reply,
                permit,
            }))
            .map_err(|_| self.closed_error())?;
        answer.await.map_err(|_| self.closed_error())?
    }

    fn closed_error(&self) -> AppendError {
        match self.inner.shared.failed.get() {
            Some(cause) => AppendError::Failed {
                cause: cause.clone(),
            },
            None => AppendError::Closed,
        }
    }

    /// A reader starting at `from_seq` (not tied to any cursor).
    pub fn reader(&self, from_seq: u64) -> Reader {
        Reader::new(self.inner.shared.clone(), from_seq)
    }

    /// The cursor called `name`, created at `start` if it does not exist yet. A
    /// cursor exists until [`Wal::remove_cursor`]; while it exists, segments it has
    /// not passed are kept (within the budget).
    pub fn cursor(&self, name: &str, start: CursorStart) -> Result<Cursor, CursorError> {
        let shared = &self.inner.shared;
        if let Some(state) = shared.cursors.read().unwrap().get(name) {
            return Ok(Cursor {
                shared: shared.clone(),
                state: state.clone(),
            });
        }
        let mut cursors = shared.cursors.write().unwrap();
        if let Some(state) = cursors.get(name) {
            return Ok(Cursor {
                shared: shared.clone(),
                state: state.clone(),
            });
        }
        let wm = *shared.watermark.borrow();
        let position = match start {
            CursorStart::Latest => wm.last_seq,
            CursorStart::Oldest => {
                let first = shared
                    .table
                    .read()
                    .unwrap()
                    .first()
                    .map(|e| e.first_seq)
                    .unwrap_or(wm.last_seq + 1);
                first.max(shared.evicted_below()).max(1) - 1
            }
        };
        let cursors_dir = shared.cfg.dir.join(CURSORS_DIR);
        let path = cursors_dir.join(cursor::file_name(name));
        let state = Arc::new(CursorState::new(name.to_string(), position, path));
        // Durable at once; on a full disk it lives in memory until it can be written.
        if let Err(e) = state.persist(&cursors_dir) {
            tracing::warn!(cursor = name, error = %e, "cannot create the cursor's file yet; its position is kept in memory until it can be written");
        }
        cursors.insert(name.to_string(), state.clone());
        tracing::info!(cursor = name, position, "cursor created");
        Ok(Cursor {
            shared: shared.clone(),
            state,
        })
    }

    /// The oldest seq still retained: where a cursor created at
    /// [`CursorStart::Oldest`] now would start.
    pub fn oldest_retained(&self) -> u64 {
        let shared = &self.inner.shared;
        let wm = *shared.watermark.borrow();
        let first = shared
            .table
            .read()
            .unwrap()
            .first()
            .map(|e| e.first_seq)
            .unwrap_or(wm.last_seq + 1);
        first.max(shared.evicted_below()).max(1)
    }

    /// Names and positions of all cursors.
    pub fn cursor_positions(&self) -> Vec<(String, u64)> {
        self.inner
            .shared
            .cursors
            .read()
            .unwrap()
            .values()
            .map(|c| (c.name.clone(), c.position()))
            .collect()
    }

    /// Deletes a cursor (a destination that was removed), so it no longer holds
    /// segments back. Returns whether it existed.
    pub fn remove_cursor(&self, name: &str) -> Result<bool, CursorError> {
        let shared = &self.inner.shared;
        let removed = shared.cursors.write().unwrap().remove(name);
        let path = shared
            .cfg
            .dir
            .join(CURSORS_DIR)
            .join(cursor::file_name(name));
        let state = removed
            .clone()
            .unwrap_or_else(|| Arc::new(CursorState::new(name.to_string(), 0, path.clone())));
        state.remove_file().map_err(|source| CursorError::Io {
            cursor: name.to_string(),
            path,
            source,
        })?;
        Ok(removed.is_some())
    }

    /// The stream of loss events (evictions, newly found damage). Can be taken once;
    /// events before the first call are not queued (damage found at open is in the
    /// [`RecoveryReport`]).
    pub fn take_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<WalEvent>> {
        let mut slot = self.inner.shared.events.lock().unwrap();
        if slot.is_some() {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *slot = Some(tx);
        Some(rx)
    }

    /// Every damaged range known to this log, including those found in earlier runs.
    pub fn damage(&self) -> Vec<LostRange> {
        self.inner.shared.meta.damage().unwrap_or_default()
    }

    pub fn stats(&self) -> WalStats {
        let shared = &self.inner.shared;
        let wm = *shared.watermark.borrow();
        let table = shared.table.read().unwrap();
        WalStats {
            segments: table.len(),
            bytes: table.total_bytes(),
            max_bytes: shared.cfg.max_bytes,
            first_seq: table
                .first()
                .map(|e| e.first_seq)
                .unwrap_or(wm.last_seq + 1)
                .max(shared.evicted_below())
                .min(wm.last_seq + 1),
            last_seq: wm.last_seq,
            cursors: self.cursor_positions(),
            syncs: shared.syncs.load(Ordering::Relaxed),
            synced_records: shared.synced_records.load(Ordering::Relaxed),
            sync_durations: shared.sync_durations.snapshot(),
            failed: shared.failed.get().map(|c| c.to_string()),
        }
    }

    /// What is stored after `seq` (readable now): records, spans, bytes, and when the
    /// oldest was received. For a cursor, see [`Wal::backlog_of`].
    pub fn backlog(&self, seq: u64) -> crate::Backlog {
        crate::backlog::backlog(&self.inner.shared, seq, &[])
    }

    /// What `cursor` has not acknowledged: after its position, less the ranges it
    /// acknowledged above it (a consumer reading lanes out of order).
    pub fn backlog_of(&self, cursor: &crate::Cursor) -> crate::Backlog {
        let above = cursor.acked_above();
        crate::backlog::backlog(&self.inner.shared, cursor.position(), &above)
    }

    /// Seals the active segment now (if it holds records) and starts a new one.
    pub async fn rotate(&self) -> Result<(), AppendError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .push(Command::Rotate(tx))
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Runs retention now instead of at the next tick (at most a second away).
    pub async fn maintain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.commands.push(Command::Maintain(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Makes every cursor's acks durable now (and the metadata store).
    pub fn flush(&self) -> Result<(), CursorError> {
        self.inner.shared.persist_cursors()?;
        if let Err(e) = self.inner.shared.meta.flush() {
            tracing::warn!(error = %e, "flushing the metadata store");
        }
        Ok(())
    }

    /// The metadata database, for callers that keep small metadata of their own
    /// (never payloads) beside the log's, in trees of their own.
    pub fn metadata_db(&self) -> sled::Db {
        self.inner.shared.meta.db().clone()
    }

    /// Commits what is queued, syncs (whatever the policy), persists cursors and
    /// stops the writer. Appends on other clones fail with `Closed` afterwards.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.commands.push(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let handle = self.inner.writer.lock().unwrap().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        let handle = self.inner.deleter.lock().unwrap().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Opens the metadata store. One that cannot be opened because it is damaged is
/// moved aside (`meta.damaged-<unix seconds>`) and started afresh; one that cannot
/// be opened for lack of space is replaced by a temporary store outside the data
/// directory for this run. Either way the log opens, and the report says so.
fn open_meta(dir: &std::path::Path, report: &mut RecoveryReport) -> Result<Meta, OpenError> {
    let path = dir.join("meta");
    let err = match Meta::open(&path) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    let no_space = matches!(&err, OpenError::Meta { source: sled::Error::Io(io), .. } if crate::fsutil::is_out_of_space(io));
    if no_space {
        tracing::error!(error = %err, "metadata store cannot open: the disk is full. Running with a temporary one (retention times and the damage registry are not kept across this restart)");
        report.repaired.push(format!(
            "metadata store not opened (disk full: {err}); a temporary one is used"
        ));
        return Meta::temporary();
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = dir.join(format!("meta.damaged-{secs}"));
    tracing::error!(error = %err, moved_to = %aside.display(), "metadata store damaged: moved aside and started afresh (dedup keys are re-indexed from the log, cursors have their own files)");
    report.repaired.push(format!(
        "metadata store damaged ({err}); moved to {} and rebuilt",
        aside.display()
    ));
    if std::fs::rename(&path, &aside).is_ok() {
        let _ = crate::fsutil::sync_dir(dir);
        if let Ok(m) = Meta::open(&path) {
            return Ok(m);
        }
    }
    Meta::temporary()
}
