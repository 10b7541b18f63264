//! Errors of the storage layer, one enum per operation. Each variant says when it
//! happens; [`AppendError::is_retryable`] sorts appends into "try again later"
//! versus "this will not succeed".

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Opening a log failed. Damage to segments is never an `OpenError`: it is repaired
/// or skipped and listed in the [`RecoveryReport`](crate::RecoveryReport).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is inconsistent (the message names the setting).
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// Another process (or another `Wal` in this process) has the directory open.
    #[error(
        "data directory {dir} is in use by another tracespool process (lock {dir}/LOCK is held)"
    )]
    Locked { dir: PathBuf },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A segment with an intact header was written by a newer, incompatible format.
    #[error("segment {path} has format version {found}; this build reads version {supported}. Run the tracespool version that wrote it, or move the data directory aside")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Segments are sealed with a key that is not configured.
    #[error("{segments} segment(s), the oldest {first_segment}, are encrypted with key id {key_id}, which is not configured: add that key (old keys stay configured until the segments they sealed are gone); nothing was changed on disk")]
    MissingKey {
        key_id: u32,
        first_segment: PathBuf,
        segments: usize,
    },
    /// The key configured under an id does not open the records sealed under it.
    #[error("key id {key_id} does not open the records of {path}: the key under that id is not the one that encrypted them; nothing was changed on disk")]
    WrongKey { key_id: u32, path: PathBuf },
    /// The sled metadata store could not be opened or read.
    #[error("metadata store {path}: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
}

impl OpenError {
    /// True when the open was refused for a reason a restart will not fix by
    /// itself (another process holds the directory, a newer format, bad settings):
    /// the caller should exit with a distinct code naming the file.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Locked { .. }
                | Self::UnsupportedVersion { .. }
                | Self::MissingKey { .. }
                | Self::WrongKey { .. }
        )
    }
}

/// Why there was no room for a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// The segment files would exceed `max_bytes`.
    Budget {
        used: u64,
        needed: u64,
        max_bytes: u64,
    },
    /// The filesystem would be left with less than `min_free_bytes` available.
    MinFree {
        available: u64,
        needed: u64,
        min_free_bytes: u64,
    },
    /// The operating system reported that the filesystem is full (`ENOSPC`/`EDQUOT`).
    /// Nothing was kept of the failed write.
    NoSpace { path: PathBuf, detail: String },
    /// Room could be made by evicting (`drop_oldest`), but the eviction could not be
    /// recorded in the audit trail, so nothing was evicted.
    NotRecorded { detail: String },
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Budget { used, needed, max_bytes } => write!(
                f,
                "disk budget full: {used} of {max_bytes} bytes used, record needs {needed}"
            ),
            Self::MinFree { available, needed, min_free_bytes } => write!(
                f,
                "filesystem has {available} bytes available, record needs {needed} and {min_free_bytes} must stay free"
            ),
            Self::NoSpace { path, detail } => {
                write!(f, "no space left on the filesystem writing {}: {detail}", path.display())
            }
            Self::NotRecorded { detail } => {
                write!(f, "disk budget full, and evicting the oldest data could not be recorded: {detail}")
            }
        }
    }
}

/// An append did not make its record durable. Nothing of the record is in the log.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AppendError {
    /// No room under `when_full = backpressure`, or the filesystem is full. Retry later;
    /// appends succeed again once segments are delivered or space returns.
    #[error("{0}")]
    Full(FullReason),
    /// The record can never fit (payload over `max_record_bytes`, or frame over the
    /// whole budget).
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes ({what})")]
    TooLarge {
        bytes: u64,
        limit: u64,
        what: &'static str,
    },
    /// The log stopped accepting writes after an I/O error it cannot safely recover
    /// from (a failed fsync, a failed write other than out-of-space). Every later
    /// append fails the same way until the process restarts and recovery runs.
    #[error("write-ahead log failed and accepts no more appends until restart: {cause}")]
    Failed { cause: Arc<str> },
    /// The log was closed.
    #[error("write-ahead log is closed")]
    Closed,
}

impl AppendError {
    /// True when the same append may succeed later (backpressure), false when it
    /// cannot (too large, or the log has failed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Full(_))
    }
}

/// A read failed for a reason other than damage (damage is reported as a
/// [`Gap`](crate::Gap) and reading continues).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write-ahead log is closed")]
    Closed,
}

/// A cursor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// An ack for a sequence number that was never appended.
    #[error("ack of seq {seq} on cursor {cursor:?}, but the log ends at seq {last_seq}")]
    BeyondEnd {
        cursor: String,
        seq: u64,
        last_seq: u64,
    },
    /// The cursor's file could not be written or removed.
    #[error("cursor {cursor:?}: {path}: {source}")]
    Io {
        cursor: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
