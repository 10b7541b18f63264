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

use std::fs::{self, File};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};

use crate::config::{FsyncPolicy, WhenFull};
use crate::error::{AppendError, FullReason};
use crate::failpoints::{os_error, Action};
use crate::format::{
    decode_header, encode_head, frame_len, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::fsutil::{self, available_bytes, create_new_owner_only, is_out_of_space, sync_dir};
use crate::queue::CommandQueue;
use crate::segment::{read_region, scan_at, segment_path, Scan, SegmentEntry, RECORDS_START};
use crate::shared::{Shared, Watermark};
use crate::state::{LogState, StateFile, RESERVE_BLOCK};
use crate::types::{
    nanos_since_epoch, Appended, CursorLoss, Eviction, LostRange, NewRecord, WalEvent,
};

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
        let frame = frame_len(record.idempotency_key.len(), record.payload.len());
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
        if self.needs_rotation(frame) {
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
        self.next_seq += 1;
        let start = self.heads.len();
        encode_head(
            &mut self.heads,
            seq,
            nanos_since_epoch(record.received_at),
            record.span_count,
            record.codec,
            self.last_synced_seq,
            &record.idempotency_key,
            &record.payload,
        );
        self.chunk.push(Pending {
            seq,
            head: (start, self.heads.len()),
            payload: record.payload,
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

    fn active_has_content(&self) -> bool {
        self.active.len + self.chunk_bytes as u64 > SEGMENT_HEADER_LEN as u64
    }

    fn needs_rotation(&self, frame: u64) -> bool {
        self.active_has_content()
            && self.active.len + self.chunk_bytes as u64 + frame > self.shared.cfg.segment_bytes
    }

    /// Checks that `need` more bytes fit the budget and the filesystem reserve.
    fn check_space(&mut self, need: u64) -> Result<(), FullReason> {
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
    fn make_room(&mut self, frame: u64, evicted: &mut Vec<Eviction>) -> Result<(), AppendError> {
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
    fn wait_for_deletions(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut waited = false;
        while self.shared.table.read().unwrap().deletes_pending() && Instant::now() < deadline {
            waited = true;
            std::thread::sleep(Duration::from_millis(1));
        }
        waited
    }

    /// Raises the durable bound on assigned seqs past `seq` (`state.rs`).
    fn reserve(&mut self, seq: u64) -> Result<(), AppendError> {
        let new = seq + RESERVE_BLOCK - 1;
        let Some(state) = self.state.as_mut() else {
            return Err(
                self.fail("wal.state cannot be written: no seq can be assigned safely".into())
            );
        };
        let next = LogState {
            wal_id: self.wal_id,
            reserved: new,
            clean_next: 0,
        };
        if let Err(e) = state.write(next) {
            let path = state.path().display().to_string();
            return Err(self.fail(format!("recording the seq bound in {path}: {e}")));
        }
        self.reserved = new;
        Ok(())
    }

    /// Seals the active segment and starts a new one at `next_seq`.
    fn rotate(&mut self) -> Result<(), AppendError> {
        self.rotate_with(0)
    }

    /// [`Writer::rotate`], the new segment's header saying that `skipped_from..`
    /// its first seq were never assigned (0: nothing skipped).
    fn rotate_with(&mut self, skipped_from: u64) -> Result<(), AppendError> {
        self.flush_chunk();
        // S1: a sealed segment is complete on disk before the next one exists.
        self.sync();
        if let Some(cause) = self.shared.failed.get() {
            return Err(AppendError::Failed {
                cause: cause.clone(),
            });
        }
        let new = self.create_segment(self.next_seq, skipped_from)?;
        let old = std::mem::replace(&mut self.active, new);
        {
            let mut table = self.shared.table.write().unwrap();
            table.seal(old.first_seq);
            table.insert(SegmentEntry {
                first_seq: self.active.first_seq,
                skipped_from,
                len: self.active.len,
                sealed: false,
            });
        }
        tracing::debug!(
            sealed = old.first_seq,
            len = old.len,
            next = self.active.first_seq,
            "segment rotated"
        );
        Ok(())
    }

    /// C1–C5: creates the segment file for `first_seq`, header durable, name durable.
    fn create_segment(&mut self, first_seq: u64, skipped_from: u64) -> Result<Active, AppendError> {
        let header = SegmentHeader {
            first_seq,
            created_at_nanos: nanos_since_epoch(SystemTime::now()),
            wal_id: self.wal_id,
            skipped_from,
        };
        let wal_dir = self.shared.wal_dir.clone();
        let r = create_segment_file(&wal_dir, &header, self.fire("segment.create"));
        match r {
            Ok(active) => {
                self.available = self
                    .available
                    .map(|a| a.saturating_sub(SEGMENT_HEADER_LEN as u64));
                Ok(active)
            }
            Err(e) if is_out_of_space(&e) => Err(AppendError::Full(FullReason::NoSpace {
                path: segment_path(&wal_dir, first_seq),
                detail: e.to_string(),
            })),
            Err(e) => Err(self.fail(format!(
                "creating segment {}: {e}",
                segment_path(&wal_dir, first_seq).display()
            ))),
        }
    }

    #[cfg(feature = "failpoints")]
    fn fire(&self, point: &'static str) -> Option<Action> {
        self.shared.cfg.failpoints.fire(point)
    }

    #[cfg(not(feature = "failpoints"))]
    fn fire(&self, _point: &'static str) -> Option<Action> {
        None
    }

    /// W1: writes the encoded chunk at the end of the active segment.
    fn flush_chunk(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let first_seq = self.chunk[0].seq;
        let last_seq = self.chunk[self.chunk.len() - 1].seq;
        if let Some(cause) = self.shared.failed.get().cloned() {
            self.fail_chunk(first_seq, AppendError::Failed { cause });
            return;
        }
        let offset = self.active.len;
        let mut slices = Vec::with_capacity(self.chunk.len() * 2);
        for p in &self.chunk {
            slices.push(IoSlice::new(&self.heads[p.head.0..p.head.1]));
            if !p.payload.is_empty() {
                slices.push(IoSlice::new(&p.payload));
            }
        }
        let result = match self.fire("segment.write") {
            Some(action) => inject_write(&self.active.file, &slices, offset, action),
            None => write_all_vectored_at(&self.active.file, &mut slices, offset),
        };
        drop(slices);
        match result {
            Ok(()) => {
                let n = self.chunk_bytes as u64;
                self.active.len += n;
                self.shared
                    .table
                    .write()
                    .unwrap()
                    .set_len(self.active.first_seq, self.active.len);
                self.available = self.available.map(|a| a.saturating_sub(n));
                self.last_written_seq = last_seq;
                self.heads.clear();
                self.chunk_bytes = 0;
                for p in &mut self.chunk {
                    p.payload = Bytes::new();
                }
                if self.shared.cfg.fsync == FsyncPolicy::Always {
                    self.unsynced.append(&mut self.chunk);
                } else {
                    self.done.extend(self.chunk.drain(..).map(|p| (p, Ok(()))));
                }
            }
            Err(e) if is_out_of_space(&e) => {
                // Nothing of a failed chunk may stay: cut the file back to where it was.
                if let Err(e2) = self.active.file.set_len(offset) {
                    let err = self.fail(format!(
                        "truncating {} to {offset} after out-of-space write: {e2}",
                        self.active.path.display()
                    ));
                    self.fail_chunk(first_seq, err);
                    return;
                }
                tracing::warn!(
                    segment = %self.active.path.display(),
                    offset,
                    records = self.chunk.len(),
                    error = %e,
                    "filesystem full; appends rejected"
                );
                let err = AppendError::Full(FullReason::NoSpace {
                    path: self.active.path.clone(),
                    detail: e.to_string(),
                });
                self.fail_chunk(first_seq, err);
            }
            Err(e) => {
                let err = self.fail(format!(
                    "writing {} bytes at offset {offset} of {}: {e}",
                    self.chunk_bytes,
                    self.active.path.display()
                ));
                // Nothing of the chunk may be found at the next start.
                if let Err(e2) = self.active.file.set_len(offset) {
                    tracing::error!(segment = %self.active.path.display(), offset, error = %e2, "could not cut back a failed write; a restart may find part of it (as a torn tail)");
                }
                self.fail_chunk(first_seq, err);
            }
        }
    }

    /// Answers every record of the unwritten chunk with `err` and gives their seqs back.
    fn fail_chunk(&mut self, first_seq: u64, err: AppendError) {
        self.heads.clear();
        self.chunk_bytes = 0;
        self.next_seq = first_seq;
        self.done
            .extend(self.chunk.drain(..).map(|p| (p, Err(err.clone()))));
    }

    fn fail(&self, cause: String) -> AppendError {
        AppendError::Failed {
            cause: self.shared.fail(cause),
        }
    }

    /// W2: makes everything written to the active segment durable.
    fn sync(&mut self) {
        if self.active.synced_len == self.active.len {
            self.done
                .extend(self.unsynced.drain(..).map(|p| (p, Ok(()))));
            return;
        }
        if self.shared.failed.get().is_some() {
            let cause = self.shared.failed.get().cloned().unwrap();
            self.done.extend(self.unsynced.drain(..).map(|p| {
                (
                    p,
                    Err(AppendError::Failed {
                        cause: cause.clone(),
                    }),
                )
            }));
            return;
        }
        let started = Instant::now();
        let result = match self.fire("segment.sync") {
            Some(action) => Err(action_error(action)),
            None => self.active.file.sync_data(),
        };
        let took = started.elapsed();
        self.shared.sync_durations.observe(took);
        self.sync_time = (self.sync_time * 7 + took) / 8;
        if took > SLOW_SYNC {
            tracing::warn!(segment = %self.active.path.display(), took_ms = took.as_millis() as u64, "slow fdatasync: the disk is struggling");
        }
        match result {
            Ok(()) => {
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                self.shared.synced_records.fetch_add(
                    self.last_written_seq - self.last_synced_seq,
                    Ordering::Relaxed,
                );
                self.active.synced_len = self.active.len;
                self.last_synced_seq = self.last_written_seq;
                self.last_sync = Instant::now();
                self.done
                    .extend(self.unsynced.drain(..).map(|p| (p, Ok(()))));
            }
            Err(e) => self.sync_failed(e),
        }
    }

    /// A failed `fdatasync`: the bytes it should have covered are cut off (a restart
    /// must not read pages the kernel kept after failing to write them), what they
    /// held is answered or reported, and — unless the disk was merely full — the
    /// log stops accepting appends.
    fn sync_failed(&mut self, e: io::Error) {
        let path = self.active.path.clone();
        let synced = self.active.synced_len;
        let full = is_out_of_space(&e);
        let err = if full {
            tracing::warn!(segment = %path.display(), error = %e, "fdatasync found the filesystem full; the unsynced records are cut off and refused");
            AppendError::Full(FullReason::NoSpace {
                path: path.clone(),
                detail: format!("fdatasync: {e}"),
            })
        } else {
            // A failed fsync is final: the kernel may have dropped the pages.
            self.fail(format!("fdatasync {}: {e}", path.display()))
        };
        // Records already answered (never/interval) that the cut removes.
        let answered = (self.last_synced_seq + 1..=self.last_written_seq)
            .filter(|s| !self.unsynced.iter().any(|p| p.seq == *s))
            .collect::<Vec<u64>>();
        if let (Some(&a), Some(&b)) = (answered.first(), answered.last()) {
            let lost = LostRange {
                first_seq: a,
                last_seq: b,
                segment: self.active.first_seq,
                offset: synced,
                spans: None,
                reason: format!("acknowledged under fsync = never/interval, not durable: fdatasync failed ({e})"),
            };
            tracing::error!(first_seq = a, last_seq = b, error = %e, "records already answered are not durable: a failed fdatasync lost them");
            let _ = self.shared.emit(WalEvent::NotDurable(lost));
        }
        let cut = self
            .active
            .file
            .set_len(synced)
            .and_then(|()| self.active.file.sync_data());
        match cut {
            Ok(()) => {
                self.active.len = synced;
                self.shared
                    .table
                    .write()
                    .unwrap()
                    .set_len(self.active.first_seq, synced);
            }
            Err(e2) => {
                self.fail(format!(
                    "cutting {} back to its synced {synced} bytes after a failed fdatasync: {e2}",
                    path.display()
                ));
                tracing::error!(segment = %path.display(), offset = synced, error = %e2, "could not cut back unsynced records; a restart may find some of them");
            }
        }
        let err_all = match self.shared.failed.get() {
            Some(cause) => AppendError::Failed {
                cause: cause.clone(),
            },
            None => err,
        };
        self.done
            .extend(self.unsynced.drain(..).map(|p| (p, Err(err_all.clone()))));
        if answered.is_empty() {
            // Nobody saw or was told of these seqs: they are free again.
            self.next_seq = self.last_synced_seq + 1;
            self.last_written_seq = self.last_synced_seq;
        } else if self.shared.failed.get().is_none() {
            // Their seqs are not reused (the ledger has them): the next append
            // starts a segment whose header says they were skipped.
            self.last_written_seq = self.last_synced_seq;
            self.pending_rotation = Some(self.last_synced_seq + 1);
        }
    }

    /// Ends a group: write, sync under `always`, publish (W3), answer.
    fn commit(&mut self) {
        self.flush_chunk();
        if self.shared.cfg.fsync == FsyncPolicy::Always {
            self.sync();
        }
        self.publish();
        self.send_replies();
    }

    /// W3: tells readers what they may read — only synced records, under every
    /// policy, so nothing a backend received can vanish from the log.
    fn publish(&self) {
        let (last_seq, active_len) = (self.last_synced_seq, self.active.synced_len);
        let wm = Watermark {
            last_seq,
            active_segment: self.active.first_seq,
            active_len,
        };
        self.watermark.send_if_modified(|cur| {
            if *cur == wm {
                false
            } else {
                *cur = wm;
                true
            }
        });
    }

    fn send_replies(&mut self) {
        for (p, result) in self.done.drain(..) {
            let answer = result.map(|()| Appended {
                seq: p.seq,
                evicted: p.evicted,
            });
            let _ = p.reply.send(answer);
        }
    }

    /// Deletes the oldest sealed segment to make room, reporting what it held.
    fn evict_sealed(&mut self, first: u64) -> Result<Eviction, AppendError> {
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
    fn evict_active(&mut self) -> Result<Eviction, AppendError> {
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

    fn evict(&mut self, first: u64, last: u64, len: u64) -> Result<Eviction, AppendError> {
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
    fn describe(&self, first: u64, last: u64, len: u64, path: &Path) -> Eviction {
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

/// `pwritev` until every byte is written (the kernel may write less than asked).
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    // IOV_MAX on Linux.
    const MAX_IOV: usize = 1024;
    while !slices.is_empty() {
        let n = match rustix::io::pwritev(file, &slices[..slices.len().min(MAX_IOV)], offset) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

fn inject_write(
    file: &File,
    slices: &[IoSlice<'_>],
    offset: u64,
    action: Action,
) -> io::Result<()> {
    match action {
        Action::Error(code) => Err(os_error(code)),
        Action::PartialWrite(n, code) => {
            let all: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
            file.write_all_at(&all[..n.min(all.len())], offset)?;
            Err(os_error(code))
        }
    }
}

fn action_error(action: Action) -> io::Error {
    match action {
        Action::Error(code) | Action::PartialWrite(_, code) => os_error(code),
    }
}

/// C1–C5 for a segment starting at `header.first_seq`. `inject` is a test fault.
pub(crate) fn create_segment_file(
    wal_dir: &Path,
    header: &SegmentHeader,
    inject: Option<Action>,
) -> io::Result<Active> {
    let path = segment_path(wal_dir, header.first_seq);
    let tmp = wal_dir.join(format!("{:020}{}", header.first_seq, fsutil::TEMP_SUFFIX));
    let _ = fs::remove_file(&tmp);
    // C1: create under a temporary name, owner-only.
    let file = create_new_owner_only(&tmp)?;
    let result = (|| {
        if let Some(action) = inject {
            return Err(action_error(action));
        }
        // C2: the header.
        file.write_all_at(&header.encode(), 0)?;
        // C3: header durable before the file gets its real name.
        file.sync_data()?;
        // C4: the real name.
        fs::rename(&tmp, &path)?;
        // C5: the name durable.
        sync_dir(wal_dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Active {
        first_seq: header.first_seq,
        file,
        path,
        len: SEGMENT_HEADER_LEN as u64,
        synced_len: SEGMENT_HEADER_LEN as u64,
    })
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

/// (seq, spans) of every record of a segment about to be deleted: record headers
/// read with `pread`; past damage, the rest of the file is read (bad pages as
/// zeros) and scanned.
fn count_spans(path: &Path, first: u64, len: u64) -> Vec<(u64, u64)> {
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
                    let mut at = 0;
                    loop {
                        match scan_at(&rest.bytes, at, rest.bytes.len(), last_good) {
                            Scan::Frame { offset: o, frame } => {
                                if frame.header.seq > last_good {
                                    out.push((frame.header.seq, frame.header.span_count as u64));
                                    last_good = frame.header.seq;
                                }
                                at = o + frame.frame_len();
                            }
                            Scan::Damage(d) => match d.resume {
                                Some((o, seq)) => {
                                    at = o;
                                    last_good = seq - 1;
                                }
                                None => break,
                            },
                            Scan::End => break,
                        }
                    }
                }
                break;
            }
        }
    }
    out
}
