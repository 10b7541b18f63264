//! W1–W3: a group's frames written with one `pwritev`, made durable with one
//! `fdatasync`, published to readers, answered; and what a failed write or sync
//! leaves (the active segment cut back to what the last good sync covered).

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::{action_error, Writer, SLOW_SYNC};
use crate::config::FsyncPolicy;
use crate::error::{AppendError, FullReason};
use crate::failpoints::{os_error, Action};
use crate::fsutil::is_out_of_space;
use crate::shared::Watermark;
use crate::types::{Appended, LostRange, WalEvent};

impl Writer {
    /// W1: writes the encoded chunk at the end of the active segment.
    pub(super) fn flush_chunk(&mut self) {
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
    pub(super) fn fail_chunk(&mut self, first_seq: u64, err: AppendError) {
        self.heads.clear();
        self.chunk_bytes = 0;
        self.next_seq = first_seq;
        self.done
            .extend(self.chunk.drain(..).map(|p| (p, Err(err.clone()))));
    }

    /// W2: makes everything written to the active segment durable.
    pub(super) fn sync(&mut self) {
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
    pub(super) fn sync_failed(&mut self, e: io::Error) {
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
    pub(super) fn commit(&mut self) {
        self.flush_chunk();
        if self.shared.cfg.fsync == FsyncPolicy::Always {
            self.sync();
        }
        self.publish();
        self.send_replies();
    }

    /// W3: tells readers what they may read — only synced records, under every
    /// policy, so nothing a backend received can vanish from the log.
    pub(super) fn publish(&self) {
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

    pub(super) fn send_replies(&mut self) {
        for (p, result) in self.done.drain(..) {
            let answer = result.map(|()| Appended {
                seq: p.seq,
                evicted: p.evicted,
            });
            let _ = p.reply.send(answer);
        }
    }
}

/// `pwritev` until every byte is written (the kernel may write less than asked).
pub(super) fn write_all_vectored_at(
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

pub(super) fn inject_write(
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
