//! The writer thread: the only code that creates, writes, syncs, seals and deletes
//! segment files.
//!
//! Group commit: `append` callers queue requests on a channel; the writer takes the
//! first one, then everything else already queued (bounded by `write_queue_bytes`),
//! encodes the headers of the whole group, writes headers and payloads with one
//! `pwritev` (payloads are not copied), makes it
//! durable with one `fdatasync`, publishes the new watermark to readers, and only
//! then answers every caller of the group. While it syncs, the next group queues up.
//!
//! Steps in fsync order (the code carries these labels):
//!
//! - W1 write the group's frames at the end of the active segment
//! - W2 `fdatasync` the active segment (under `always`: before answering)
//! - W3 publish the watermark, answer the callers
//! - S1 seal: `fdatasync` the full segment before starting a new one
//! - C1 create `<seq>.seg.tmp` (0600) · C2 write the header · C3 `fdatasync` it
//! - C4 rename to `<seq>.seg` · C5 `fsync` the directory
//! - D1 unlink a deleted segment · D2 `fsync` the directory (for delivered segments
//!   this runs on the deleter thread, see `deleter.rs`; evictions do it here)
//!
//! A failed `fdatasync` or a failed write other than out-of-space is final: the log
//! records the cause and refuses every later append (the kernel may already have
//! dropped the dirty pages, so retrying could report data durable that is not).
//! Either way the active segment is first cut back to the bytes the last successful
//! sync covered: after a failed writeback Linux keeps the lost pages in its cache,
//! marked clean, and a restart would otherwise read (and export) records that are
//! not on disk. Out of space — from a write or from `fdatasync` — is not final: the
//! unsynced bytes are cut off, the group fails with [`AppendError::Full`], and later
//! appends succeed once space returns. Records already answered under `fsync =
//! never`/`interval` that such a cut removes are reported as not durable.
//!
//! Every frame carries `durable_through`, the last seq synced before it was
//! written: the evidence recovery uses to tell a torn unsynced group from damage to
//! durable records. Seqs are reserved in blocks in `wal.state` before they are
//! assigned (`state.rs`).
//!
//! By step: `commit.rs` (W1–W3, and what a failed write or sync leaves),
//! `segments.rs` (S1, C1–C5), `budget.rs` (room for a group, eviction under
//! `drop_oldest`: D1–D2); here, the thread's loop, grouping requests, retention of
//! delivered segments and shutdown.

mod budget;
mod commit;
mod segments;

pub(crate) use segments::create_segment_file;

use std::fs::File;
use std::io::{self};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};

use crate::config::FsyncPolicy;
use crate::crypto::{FrameAad, NonceSource, SegmentKey, SEAL_OVERHEAD};
use crate::error::AppendError;
use crate::failpoints::{os_error, Action};
use crate::format::{encode_head, frame_len, FLAG_SEALED, SEGMENT_HEADER_LEN};
use crate::queue::CommandQueue;
use crate::shared::{Shared, Watermark};
use crate::state::{LogState, StateFile};
use crate::types::{nanos_since_epoch, Appended, Eviction, NewRecord};

/// A chunk of records is written out when it reaches this size or record count
/// (one `pwritev` takes at most 1024 slices, two per record).
const CHUNK_BYTES: usize = 4 << 20;
const MAX_CHUNK_RECORDS: usize = 4096;
/// While a group gathers, what has arrived is written in steps of this many records.
const GATHER_STEP: usize = 16;
/// Longest a group waits for more members before it is written. Callers answered
/// by the previous commit come back within ~0.1 ms on two cores; an open-loop
/// arrival stream gains nothing from waiting longer.
const MAX_GROUP_WAIT: Duration = Duration::from_micros(250);
/// An `fdatasync` slower than this is logged.
const SLOW_SYNC: Duration = Duration::from_millis(500);
/// How often retention runs when the writer is otherwise idle.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// Under `fsync = never`, how long written records wait for the sync that makes
/// them visible to readers (answers never wait for it).
const NEVER_READER_SYNC: Duration = Duration::from_secs(1);

pub(crate) type AppendReply = oneshot::Sender<Result<Appended, AppendError>>;

pub(crate) enum Command {
    Append(AppendRequest),
    /// Seal the active segment now (if it holds records) and start a new one.
    Rotate(oneshot::Sender<Result<(), AppendError>>),
    /// Run retention now.
    Maintain(oneshot::Sender<()>),
    /// Commit, sync whatever policy is configured, flush metadata, exit.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct AppendRequest {
    pub record: NewRecord,
    pub reply: AppendReply,
    /// Holds the request's share of `write_queue_bytes` until it is answered.
    pub permit: OwnedSemaphorePermit,
}

struct Pending {
    seq: u64,
    /// Where the record's header and key are in `heads`, and its payload (until
    /// written).
    head: (usize, usize),
    payload: Bytes,
    reply: AppendReply,
    evicted: Vec<Eviction>,
    _permit: OwnedSemaphorePermit,
}

/// The segment appends go to.
pub(crate) struct Active {
    pub first_seq: u64,
    pub file: File,
    pub path: PathBuf,
    /// Bytes written to the file, header included.
    pub len: u64,
    /// Bytes covered by the last successful `fdatasync`.
    pub synced_len: u64,
    /// The key its records are sealed with (its header's `key_id`); 0: plaintext.
    pub key_id: u32,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// Dropped when the writer stops, which tells waiting readers.
    watermark: watch::Sender<Watermark>,
    queue: Arc<CommandQueue>,
    wal_id: [u8; 16],
    active: Active,
    next_seq: u64,
    /// Headers and keys of the records in `chunk`; each record's frame on disk is
    /// its head followed by its payload. Written at offset `active.len`.
    heads: Vec<u8>,
    /// Records encoded but not yet written, in seq order.
    chunk: Vec<Pending>,
    /// Bytes the chunk will occupy on disk.
    chunk_bytes: usize,
    /// Written records that wait for an `fdatasync` before their answer (`always`).
    unsynced: Vec<Pending>,
    /// Answers to send at the end of the commit.
    done: Vec<(Pending, Result<(), AppendError>)>,
    batch_bytes: usize,
    batch_records: usize,
    /// Records in the previous group: how many to wait for in the next one.
    last_group: usize,
    /// Recent duration of an `fdatasync` (moving average): bounds the group wait.
    sync_time: Duration,
    last_written_seq: u64,
    last_synced_seq: u64,
    last_sync: Instant,
    last_maintenance: Instant,
    /// Delivered segments go to the deleter thread (see `deleter.rs`).
    deleter: std::sync::mpsc::Sender<crate::deleter::Job>,
    /// Filesystem space available, read once per group when `min_free_bytes` is set,
    /// then reduced by what the group writes.
    available: Option<u64>,
    /// `wal.state` (`None` if it could not be written at open: appends refused).
    state: Option<StateFile>,
    /// No seq above this has been assigned; raised durably before one is.
    reserved: u64,
    /// A new active segment still to be created (its `skipped_from`) before the next
    /// append: seqs were skipped and there was no space for it then.
    pending_rotation: Option<u64>,
    /// The active segment's key, derived when its first sealed record is staged.
    segment_key: Option<SegmentKey>,
    nonces: NonceSource,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        watermark: watch::Sender<Watermark>,
        queue: Arc<CommandQueue>,
        deleter: std::sync::mpsc::Sender<crate::deleter::Job>,
        wal_id: [u8; 16],
        active: Active,
        next_seq: u64,
        state: Option<StateFile>,
        pending_rotation: Option<u64>,
    ) -> Self {
        let reserved = state
            .as_ref()
            .map(|s| s.state.reserved)
            .unwrap_or(next_seq - 1);
        Self {
            state,
            reserved,
            pending_rotation,
            shared,
            watermark,
            queue,
            deleter,
            wal_id,
            active,
            next_seq,
            heads: Vec::with_capacity(64 * 1024),
            chunk: Vec::new(),
            chunk_bytes: 0,
            unsynced: Vec::new(),
            done: Vec::new(),
            batch_bytes: 0,
            batch_records: 0,
            last_group: 0,
            sync_time: Duration::ZERO,
            last_written_seq: next_seq - 1,
            last_synced_seq: next_seq - 1,
            last_sync: Instant::now(),
            last_maintenance: Instant::now(),
            available: None,
            segment_key: None,
            nonces: NonceSource::default(),
        }
    }

    pub fn run(mut self) {
        let _guard = PanicGuard(self.shared.clone(), self.queue.clone());
        self.publish();
        let mut cmds = Vec::new();
        loop {
            self.queue.take(1, self.idle_timeout(), &mut cmds);
            let mut control = Vec::new();
            if !cmds.is_empty() {
                self.available = None;
                self.batch_bytes = 0;
                self.batch_records = 0;
                let started = Instant::now();
                for cmd in cmds.drain(..) {
                    self.dispatch(cmd, &mut control);
                }
                // Group commit: under concurrent load, callers answered by the last
                // commit come back one by one. Wait a fraction of an fsync for the
                // rest of them rather than syncing a sliver of the group on its own.
                // At low concurrency (a last group of one) nothing waits.
                if self.shared.cfg.fsync == FsyncPolicy::Always
                    && self.last_group > self.batch_records
                    && control.is_empty()
                {
                    let max_wait = (self.sync_time / 4).min(MAX_GROUP_WAIT);
                    while self.batch_records < self.last_group && control.is_empty() {
                        let Some(left) = max_wait.checked_sub(started.elapsed()) else {
                            break;
                        };
                        // Write what has arrived while the rest of the group comes in.
                        self.flush_chunk();
                        let want = (self.last_group - self.batch_records).min(GATHER_STEP);
                        self.queue.take(want, left, &mut cmds);
                        if cmds.is_empty() {
                            break;
                        }
                        for cmd in cmds.drain(..) {
                            self.dispatch(cmd, &mut control);
                        }
                    }
                }
                self.last_group = self.batch_records;
            }
            self.commit();
            self.periodic();
            for cmd in control {
                match cmd {
                    Command::Rotate(tx) => {
                        let r = if !self.active_has_content() {
                            Ok(())
                        } else {
                            // The new segment's header counts against the budget too.
                            match self.check_space(SEGMENT_HEADER_LEN as u64) {
                                Ok(()) => self.rotate(),
                                Err(reason) => Err(AppendError::Full(reason)),
                            }
                        };
                        self.commit();
                        let _ = tx.send(r);
                    }
                    Command::Maintain(tx) => self.maintain(Some(tx)),
                    Command::Shutdown(tx) => {
                        // Appends queued behind the shutdown are refused, not lost.
                        for late in self.queue.close() {
                            self.dispatch_closed(late);
                        }
                        self.shutdown();
                        let _ = tx.send(());
                        return;
                    }
                    Command::Append(_) => unreachable!("appends are staged, not deferred"),
                }
            }
        }
    }

    fn dispatch_closed(&mut self, cmd: Command) {
        match cmd {
            Command::Append(req) => {
                let _ = req.reply.send(Err(AppendError::Closed));
            }
            Command::Rotate(tx) => {
                let _ = tx.send(Err(AppendError::Closed));
            }
            Command::Maintain(tx) | Command::Shutdown(tx) => {
                let _ = tx.send(());
            }
        }
    }

    fn dispatch(&mut self, cmd: Command, control: &mut Vec<Command>) {
        match cmd {
            Command::Append(req) => self.stage(req),
            other => control.push(other),
        }
    }

    /// How often unsynced records are synced in the background: `interval`, or for
    /// readers' sake under `never`.
    fn background_sync(&self) -> Option<Duration> {
        match self.shared.cfg.fsync {
            FsyncPolicy::Interval(every) => Some(every),
            FsyncPolicy::Never => Some(NEVER_READER_SYNC),
            FsyncPolicy::Always => None,
        }
    }

    fn idle_timeout(&self) -> Duration {
        let mut t = MAINTENANCE_EVERY.saturating_sub(self.last_maintenance.elapsed());
        if let Some(every) = self.background_sync() {
            if self.active.synced_len < self.active.len {
                t = t.min(every.saturating_sub(self.last_sync.elapsed()));
            }
        }
        t.max(Duration::from_millis(1))
    }

    fn periodic(&mut self) {
        if let Some(every) = self.background_sync() {
            if self.active.synced_len < self.active.len && self.last_sync.elapsed() >= every {
                self.sync();
                self.publish();
                self.send_replies();
            }
        }
        if self.last_maintenance.elapsed() >= MAINTENANCE_EVERY {
            self.maintain(None);
        }
    }

    /// Places one record into the current group.
    fn stage(&mut self, req: AppendRequest) {
        let AppendRequest {
            record,
            reply,
            permit,
        } = req;
        if let Some(cause) = self.shared.failed.get() {
            let _ = reply.send(Err(AppendError::Failed {
                cause: cause.clone(),
            }));
            return;
        }
        let key_id = self.shared.cfg.keys.active().unwrap_or(0);
        let overhead = if key_id != 0 { SEAL_OVERHEAD } else { 0 };
        let frame = frame_len(
            record.idempotency_key.len(),
            record.payload.len() + overhead,
        );
        let max_bytes = self.shared.cfg.max_bytes;
        if frame + SEGMENT_HEADER_LEN as u64 > max_bytes {
            let _ = reply.send(Err(AppendError::TooLarge {
                bytes: frame,
                limit: max_bytes - SEGMENT_HEADER_LEN as u64,
                what: "record frame over the disk budget (max_bytes)",
            }));
            return;
        }
        if let Some(skipped_from) = self.pending_rotation {
            if let Err(e) = self.rotate_with(skipped_from) {
                let _ = reply.send(Err(e));
                return;
            }
            self.pending_rotation = None;
        }
        let mut evicted = Vec::new();
        if let Err(e) = self.make_room(frame, &mut evicted) {
            let _ = reply.send(Err(e));
            return;
        }
        // A segment's records are all sealed with its header's key (or none are).
        if self.needs_rotation(frame) || self.active.key_id != key_id {
            if let Err(e) = self.rotate() {
                let _ = reply.send(Err(e));
                return;
            }
        }
        let seq = self.next_seq;
        if seq > self.reserved {
            if let Err(e) = self.reserve(seq) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        let received_at = nanos_since_epoch(record.received_at);
        let (payload, flags) = if key_id == 0 {
            (record.payload, 0)
        } else {
            match self.seal(seq, received_at, &record) {
                Ok(sealed) => (sealed, FLAG_SEALED),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        };
        self.next_seq += 1;
        let start = self.heads.len();
        encode_head(
            &mut self.heads,
            seq,
            received_at,
            record.span_count,
            record.codec,
            flags,
            self.last_synced_seq,
            &record.idempotency_key,
            &payload,
        );
        self.chunk.push(Pending {
            seq,
            head: (start, self.heads.len()),
            payload,
            reply,
            evicted,
            _permit: permit,
        });
        self.chunk_bytes += frame as usize;
        self.batch_bytes += frame as usize;
        self.batch_records += 1;
        if self.chunk_bytes >= CHUNK_BYTES || self.chunk.len() >= MAX_CHUNK_RECORDS {
            self.flush_chunk();
        }
    }

    /// Seals a record's payload under the active segment's key, bound to its seq
    /// and header (`crypto.rs`).
    fn seal(
        &mut self,
        seq: u64,
        received_at: u64,
        record: &NewRecord,
    ) -> Result<Bytes, AppendError> {
        let first_seq = self.active.first_seq;
        if self
            .segment_key
            .as_ref()
            .is_none_or(|k| k.segment() != first_seq || k.id() != self.active.key_id)
        {
            let key = self
                .shared
                .cfg
                .keys
                .segment_key(self.active.key_id, &self.wal_id, first_seq)
                .map_err(|e| AppendError::Failed {
                    cause: format!("sealing records of segment {first_seq:020}.seg: {e}").into(),
                })?;
            self.segment_key = Some(key);
        }
        let nonce = self.nonces.draw().map_err(|e| AppendError::Failed {
            cause: format!("drawing a nonce for seq {seq}: {e}").into(),
        })?;
        let aad = FrameAad::new(
            seq,
            received_at,
            record.span_count,
            record.codec.0,
            &record.idempotency_key,
        );
        let key = self.segment_key.as_ref().expect("derived above");
        Ok(Bytes::from(key.seal(nonce, &aad, &record.payload)))
    }

    fn active_has_content(&self) -> bool {
        self.active.len + self.chunk_bytes as u64 > SEGMENT_HEADER_LEN as u64
    }

    fn fail(&self, cause: String) -> AppendError {
        AppendError::Failed {
            cause: self.shared.fail(cause),
        }
    }

    /// Retention: deletes sealed segments every cursor has passed once they have been
    /// delivered for `retain_delivered`.
    /// `done` is answered once the deletions this pass decided are complete.
    fn maintain(&mut self, done: Option<oneshot::Sender<()>>) {
        self.last_maintenance = Instant::now();
        let retain = self.shared.cfg.retain_delivered;
        let now = nanos_since_epoch(SystemTime::now());
        let sealed: Vec<(u64, u64)> = {
            let table = self.shared.table.read().unwrap();
            table.sealed_ranges().collect()
        };
        let mut handed_over = Vec::new();
        let mut deleting = true;
        for (first, last) in sealed {
            if !self.shared.delivered_to_all(last) {
                break;
            }
            // Delivery time is recorded for every delivered segment, so retention
            // counts from delivery even for segments behind an unexpired one.
            let since = match self.shared.meta.delivered_at(first) {
                Ok(Some(t)) => t,
                _ => {
                    let _ = self.shared.meta.set_delivered_at(first, now);
                    now
                }
            };
            if !deleting || Duration::from_nanos(now.saturating_sub(since)) < retain {
                deleting = false;
                continue;
            }
            if self.shared.table.write().unwrap().begin_delete(first) {
                handed_over.push((first, last));
            }
        }
        if handed_over.is_empty() && done.is_none() {
            return;
        }
        let job = crate::deleter::Job {
            segments: handed_over,
            done,
        };
        if let Err(returned) = self.deleter.send(job) {
            let mut table = self.shared.table.write().unwrap();
            for (first, _) in returned.0.segments {
                table.cancel_delete(first);
            }
        }
    }

    fn shutdown(&mut self) {
        self.commit();
        // A clean shutdown loses nothing, whatever the policy.
        if self.active.synced_len < self.active.len {
            self.sync();
            self.publish();
            self.send_replies();
        }
        if let Err(e) = self.shared.persist_cursors() {
            tracing::error!(error = %e, "persisting cursors at shutdown");
        }
        if let Err(e) = self.shared.meta.flush() {
            tracing::error!(error = %e, "flushing metadata at shutdown");
        }
        // The clean-close marker: the next open knows the exact next seq and skips
        // nothing. Not after a failure (the state of the tail is then in doubt).
        if self.shared.failed.get().is_none() && self.pending_rotation.is_none() {
            if let Some(state) = self.state.as_mut() {
                let s = LogState {
                    wal_id: self.wal_id,
                    reserved: self.reserved.max(self.next_seq - 1),
                    clean_next: self.next_seq,
                };
                if let Err(e) = state.write(s) {
                    tracing::error!(error = %e, "recording the clean close");
                }
            }
        }
    }
}

fn action_error(action: Action) -> io::Error {
    match action {
        Action::Error(code) | Action::PartialWrite(_, code) => os_error(code),
    }
}

/// If the writer thread unwinds: marks the log failed so appends report why, and
/// closes the queue so nobody waits for an answer that will not come.
struct PanicGuard(Arc<Shared>, Arc<CommandQueue>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail("the write-ahead log writer thread panicked".into());
            drop(self.1.close());
        }
    }
}
