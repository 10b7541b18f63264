//! S1, C1–C5: sealing the active segment and creating the next one (seqs reserved
//! in `wal.state` first), and the test faults the writer can be told to inject.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::SystemTime;

use super::{action_error, Active, Writer};
use crate::error::{AppendError, FullReason};
use crate::failpoints::Action;
use crate::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use crate::fsutil::{self, create_new_owner_only, is_out_of_space, sync_dir};
use crate::segment::{segment_path, SegmentEntry};
use crate::state::{LogState, RESERVE_BLOCK};
use crate::types::nanos_since_epoch;

impl Writer {
    pub(super) fn needs_rotation(&self, frame: u64) -> bool {
        self.active_has_content()
            && self.active.len + self.chunk_bytes as u64 + frame > self.shared.cfg.segment_bytes
    }

    /// Raises the durable bound on assigned seqs past `seq` (`state.rs`).
    pub(super) fn reserve(&mut self, seq: u64) -> Result<(), AppendError> {
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
    pub(super) fn rotate(&mut self) -> Result<(), AppendError> {
        self.rotate_with(0)
    }

    /// [`Writer::rotate`], the new segment's header saying that `skipped_from..`
    /// its first seq were never assigned (0: nothing skipped).
    pub(super) fn rotate_with(&mut self, skipped_from: u64) -> Result<(), AppendError> {
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
    pub(super) fn create_segment(
        &mut self,
        first_seq: u64,
        skipped_from: u64,
    ) -> Result<Active, AppendError> {
        let header = SegmentHeader {
            first_seq,
            created_at_nanos: nanos_since_epoch(SystemTime::now()),
            wal_id: self.wal_id,
            skipped_from,
            key_id: self.shared.cfg.keys.active().unwrap_or(0),
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
    pub(super) fn fire(&self, point: &'static str) -> Option<Action> {
        self.shared.cfg.failpoints.fire(point)
    }

    #[cfg(not(feature = "failpoints"))]
    pub(super) fn fire(&self, _point: &'static str) -> Option<Action> {
        None
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
        key_id: header.key_id,
    })
}
