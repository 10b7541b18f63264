//! `tracespool-storage`: a crash-safe segmented write-ahead log with group commit, a
//! byte-exact disk budget and durable cursors.
//!
//! The log stores opaque payloads with a small header; it knows nothing of OTLP.
//! `FORMAT.md` beside this crate describes the bytes on disk and the recovery rules.
//!
//! | module       | what it holds                                                      |
//! |--------------|--------------------------------------------------------------------|
//! | [`format`]   | segment header and record frame, CRC-32/IEEE, resynchronisation    |
//! | `segment`    | segment files, the table of them, and `SegmentScan`: the one walk over a segment's frames (records, gaps, damage) that recovery, readers, the offline tools and the writer share |
//! | `writer`     | the writer thread, by step: `commit` (W1–W3), `segments` (S1, C1–C5), `budget` (room, eviction) |
//! | `recovery`   | opening: header checks, tail scan, torn-tail cut, the next seq     |
//! | `reader`     | in-order reads with `pread`, gaps for damage, evictions, skips     |
//! | `reverse`    | a range newest first, in chunks read forwards                      |
//! | [`crypto`]   | encryption at rest: AES-256-GCM per record under a key per segment |
//! | `cursor`     | named durable positions with out-of-order acks, in their own files |
//! | `state`      | `wal.state`: the log's identity and the bound on assigned seqs     |
//! | `slots`      | small records in two alternating slots, preallocated               |
//! | `meta`       | sled trees: segment delivery times, damage registry                |
//! | `wal`        | the [`Wal`] handle tying them together                             |
//! | [`offline`]  | the same rules for the tools: read a stopped or running log without locks |
//!
//! Data path: `append` → writer thread (W1 write, W2 fdatasync, W3 publish) →
//! readers see the record → consumer acks on its [`Cursor`] → retention deletes
//! segments every cursor has passed.

mod backlog;
mod config;
pub mod crypto;
mod cursor;
mod deleter;
mod error;
pub mod failpoints;
pub mod format;
mod fsutil;
mod meta;
pub mod offline;
mod queue;
mod reader;
mod recovery;
mod reverse;
mod segment;
mod shared;
mod slots;
mod state;
mod types;
mod wal;
mod writer;

pub use backlog::Backlog;
pub use config::{FsyncPolicy, WalConfig, WhenFull, GIB, MIB};
pub use crypto::{KeyRing, SealError};
pub use cursor::{Ack, Cursor, MAX_PERSISTED_RANGES};
pub use error::{AppendError, CursorError, FullReason, OpenError, ReadError};
pub use format::{Codec, MAX_KEY_LEN};
/// Durable directory creation and sync, and free space: the appliance's own files
/// (ledger, state, dead letters) use the same helpers as the log.
pub use fsutil::{available_bytes, ensure_dir, sync_dir};
pub use reader::Reader;
pub use reverse::NewestFirst;
pub use types::{
    Appended, CursorLoss, CursorStart, EventHook, Eviction, Gap, GapCause, LostRange, NewRecord,
    Quarantine, ReadItem, Record, RecoveryReport, SkippedSeqs, TornTail, WalEvent, WalStats,
};
pub use wal::{Headroom, Wal};

#[doc(hidden)]
pub use state::forget_clean_close as __forget_clean_close;
