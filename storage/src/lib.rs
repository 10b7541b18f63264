//! `tracespool-storage`: a crash-safe segmented write-ahead log with group commit, a
//! byte-exact disk budget and durable cursors.
//!
//! The log stores opaque payloads with a small header; it knows nothing of OTLP.
//! `FORMAT.md` beside this crate describes the bytes on disk and the recovery rules.
//!
//! | module       | what it holds                                                      |
//! |--------------|--------------------------------------------------------------------|
//! | [`format`]   | segment header and record frame, CRC-32/IEEE, resynchronisation    |
//! | `writer`     | the writer thread: group commit, rotation, budget, eviction, retention |
//! | `recovery`   | opening: header checks, tail scan, torn-tail cut                   |
//! | `reader`     | in-order reads through memory maps, gaps for damage and evictions  |
//! | `cursor`     | named durable positions with out-of-order acks                     |
//! | `meta`       | sled trees: log identity, seq floor, cursors, damage registry      |
//! | `wal`        | the [`Wal`] handle tying them together                             |
//!
//! Data path: `append` → writer thread (W1 write, W2 fdatasync, W3 publish) →
//! readers see the record → consumer acks on its [`Cursor`] → retention deletes
//! segments every cursor has passed.

mod backlog;
mod config;
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
mod segment;
mod shared;
mod types;
mod wal;
mod writer;

pub use backlog::Backlog;
pub use config::{FsyncPolicy, WalConfig, WhenFull, GIB, MIB};
pub use cursor::Cursor;
pub use error::{AppendError, CursorError, FullReason, OpenError, ReadError};
pub use format::{Codec, MAX_KEY_LEN};
pub use reader::Reader;
pub use types::{
    Appended, CursorLoss, CursorStart, EventHook, Eviction, Gap, GapCause, LostRange, NewRecord,
    ReadItem, Record, RecoveryReport, TornTail, WalEvent, WalStats,
};
pub use wal::Wal;
