//! Reading a range of the log newest first: for a backlog a consumer wants to send
//! from its freshest end (`backlog_order = "newest_first"`).
//!
//! Frames can only be walked forwards (each one's length is in its own header), so
//! the range is read in chunks from its top down: one forward walk of a segment
//! notes where a record starts every [`CHECKPOINT_BYTES`] (payloads not opened),
//! then each chunk — from one such checkpoint to the end of the previous chunk — is
//! read forwards with an ordinary [`Reader`] started right at it and handed out in
//! reverse. A segment is thus read about twice, and at most one chunk (a few MiB)
//! is held at once. Gaps (damage, evictions, seqs never assigned) come out as the
//! forward reader reports them, cut at the chunk's bounds, so every seq of the
//! range is returned once: as a record or inside a gap.

use std::sync::Arc;

use crate::cursor::CursorState;
use crate::error::ReadError;
use crate::reader::Reader;
use crate::shared::Shared;
use crate::types::{Gap, GapCause, ReadItem};

/// A chunk starts at a record this many payload bytes after the previous one (or
/// at the first record of the segment's part of the range): under the reader's
/// 4 MiB window, so a chunk is one read.
const CHECKPOINT_BYTES: usize = 3 << 20;

/// Streams `first..=last` in descending seq order, skipping what the cursor has
/// acknowledged. Created by [`Cursor::newest_first`](crate::Cursor::newest_first).
pub struct NewestFirst {
    shared: Arc<Shared>,
    acked: Arc<CursorState>,
    first: u64,
    /// The highest seq not handed out or chunked yet.
    top: u64,
    /// `(seq, segment, offset)` of where the chunks of the current segment start,
    /// lowest first; the next chunk starts at the last.
    checkpoints: Vec<(u64, Option<(u64, usize)>)>,
    /// The current chunk, in seq order: handed out from its end.
    chunk: Vec<ReadItem>,
    done: bool,
}

impl std::fmt::Debug for NewestFirst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewestFirst")
            .field("first", &self.first)
            .field("top", &self.top)
            .finish()
    }
}

impl NewestFirst {
    pub(crate) fn new(shared: Arc<Shared>, acked: Arc<CursorState>, first: u64, last: u64) -> Self {
        let last = last.min(shared.watermark.borrow().last_seq);
        Self {
            shared,
            acked,
            first: first.max(1),
            top: last,
            checkpoints: Vec::new(),
            chunk: Vec::new(),
            done: first.max(1) > last,
        }
    }

    /// The next item, highest seq first; `None` once the range is through. Reads
    /// the log (blocking I/O, a chunk at a time).
    pub fn next_item(&mut self) -> Result<Option<ReadItem>, ReadError> {
        loop {
            if let Some(item) = self.chunk.pop() {
                return Ok(Some(item));
            }
            if self.done {
                return Ok(None);
            }
            if self.checkpoints.is_empty() {
                if let Some(gap) = self.plan_segment()? {
                    return Ok(Some(gap));
                }
                continue;
            }
            let (from, at) = self.checkpoints.pop().expect("not empty");
            let mut reader = Reader::new(self.shared.clone(), from)
                .until(self.top)
                .skipping_acked(self.acked.clone());
            if let Some((segment, offset)) = at {
                reader = reader.at(segment, offset);
            }
            while let Some(item) = reader.try_next()? {
                self.chunk.push(item);
            }
            if from <= self.first {
                self.done = true;
            } else {
                self.top = from - 1;
            }
        }
    }

    /// Notes the chunks of the segment part holding `top` (or, below what is on
    /// disk, returns the gap down to `first`).
    fn plan_segment(&mut self) -> Result<Option<ReadItem>, ReadError> {
        let located = {
            let table = self.shared.table.read().unwrap();
            let first_on_disk = table.first().map(|e| e.first_seq);
            match (table.locate(self.top), first_on_disk) {
                (Some((e, _)), Some(_)) => Some(e.first_seq),
                _ => None,
            }
        };
        let Some(segment_first) = located else {
            // Nothing on disk holds `top`: all of `first..=top` is gone.
            self.done = true;
            return Ok(Some(ReadItem::Gap(Gap {
                first_seq: self.first,
                last_seq: self.top,
                cause: GapCause::NotRetained,
            })));
        };
        let from = segment_first.max(self.first);
        self.checkpoints.push((from, None));
        let mut walk = Reader::new(self.shared.clone(), from)
            .until(self.top)
            .locate_only();
        let mut bytes = 0usize;
        while let Some(item) = walk.try_next()? {
            if let ReadItem::Record(r) = item {
                if bytes >= CHECKPOINT_BYTES && r.seq > from {
                    self.checkpoints.push((r.seq, walk.location()));
                    bytes = 0;
                }
                bytes += r.payload.len() + r.idempotency_key.len();
            }
        }
        Ok(None)
    }
}
