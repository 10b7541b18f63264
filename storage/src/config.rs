//! Settings of a log, validated once at open.

use std::path::PathBuf;
use std::time::Duration;

/// When an append counts as durable. See the README's *Guarantees* section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `append` resolves after an `fdatasync` that covers the record. Concurrent
    /// appends are written together and share one `fdatasync` (group commit).
    Always,
    /// `append` resolves once the record is written to the OS; the writer syncs at
    /// least every `interval`. A power loss or kernel crash can lose the appends of
    /// the last `interval` (a process crash loses nothing: the page cache survives).
    /// Readers only see records once they are synced.
    Interval(Duration),
    /// `append` resolves once the record is written to the OS; flushing to the device
    /// is left to the kernel (typically within 30 s). Segment creation, sealing and
    /// deletion are still synced.
    Never,
}

/// What an append does when it would take the log over its disk budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Fail the append at once with [`AppendError::Full`](crate::AppendError::Full);
    /// nothing is written and nothing already stored is touched.
    Backpressure,
    /// Delete the oldest segments (delivered ones first, then undelivered) until the
    /// record fits, and report exactly what was deleted.
    DropOldest,
}

/// Configuration of a [`Wal`](crate::Wal).
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory holding `wal/` (segments), `meta/` (sled) and `quarantine/`.
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once the next record would take it
    /// past this size. A single record larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// Upper bound on the bytes of all segment files together.
    pub max_bytes: u64,
    /// Appends fail (or evict, under `DropOldest`) rather than leave the filesystem
    /// with less than this many bytes available. 0 disables the check.
    pub min_free_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: WhenFull,
    /// How long a segment that every cursor has passed is kept before deletion.
    pub retain_delivered: Duration,
    /// Largest payload accepted by `append`.
    pub max_record_bytes: u64,
    /// Bytes of appends that may wait in memory for the writer before `append`
    /// callers wait for room. Bounds memory, not disk.
    pub write_queue_bytes: u64,
    /// Keys for encryption at rest: new records are sealed with the active key (if
    /// any); every key a segment on disk names must be here to read it.
    pub keys: crate::crypto::KeyRing,
    /// Fault injection, for tests only.
    #[cfg(feature = "failpoints")]
    pub failpoints: std::sync::Arc<crate::failpoints::Failpoints>,
}

pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;

impl WalConfig {
    /// The defaults: 64 MiB segments, a 4 GiB budget, `fsync = always`,
    /// `when_full = backpressure`, no retention of delivered segments.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 * MIB,
            max_bytes: 4 * GIB,
            min_free_bytes: 0,
            fsync: FsyncPolicy::Always,
            when_full: WhenFull::Backpressure,
            retain_delivered: Duration::ZERO,
            max_record_bytes: 64 * MIB,
            write_queue_bytes: 64 * MIB,
            keys: Default::default(),
            #[cfg(feature = "failpoints")]
            failpoints: Default::default(),
        }
    }

    /// Checks the relations between the settings; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        use crate::format::{MAX_KEY_LEN, MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
        if self.segment_bytes < 4096 {
            return Err(format!(
                "segment_bytes must be at least 4096, got {}",
                self.segment_bytes
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > MAX_PAYLOAD_LEN {
            return Err(format!(
                "max_record_bytes must be between 1 and {MAX_PAYLOAD_LEN}, got {}",
                self.max_record_bytes
            ));
        }
        let smallest_useful =
            2 * SEGMENT_HEADER_LEN as u64 + RECORD_HEADER_LEN as u64 + MAX_KEY_LEN as u64;
        if self.max_bytes < smallest_useful {
            return Err(format!(
                "max_bytes must be at least {smallest_useful} bytes, got {}",
                self.max_bytes
            ));
        }
        if let FsyncPolicy::Interval(d) = self.fsync {
            if d.is_zero() {
                return Err("fsync interval must be greater than zero".into());
            }
        }
        if self.write_queue_bytes == 0 {
            return Err("write_queue_bytes must be at least 1".into());
        }
        Ok(())
    }
}
