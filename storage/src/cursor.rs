//! Named durable cursors: one per consumer (destination), each with its own position.
//!
//! A consumer acknowledges records (and gaps) as it finishes them, possibly out of
//! order. The cursor's position is the highest seq up to which *every* seq has been
//! acknowledged; that position is what is persisted in sled and where a reader
//! resumes after a restart. Acks above the position are kept in memory only, so
//! after a crash the records between the persisted position and the newest ack are
//! delivered again (at-least-once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::CursorError;
use crate::reader::Reader;
use crate::shared::Shared;

pub(crate) struct CursorState {
    pub name: String,
    /// Highest contiguously acknowledged seq. Read without the lock by the writer
    /// (retention, eviction accounting); written only under `above`'s lock.
    position: AtomicU64,
    /// Acked ranges above `position`, as start → end (inclusive), non-overlapping
    /// and not adjacent to `position` (those are folded in at once).
    above: Mutex<BTreeMap<u64, u64>>,
}

impl CursorState {
    pub fn new(name: String, position: u64) -> Self {
        Self {
            name,
            position: AtomicU64::new(position),
            above: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Whether `seq` has been acknowledged (contiguously or out of order).
    pub fn is_acked(&self, seq: u64) -> bool {
        if seq <= self.position() {
            return true;
        }
        let above = self.above.lock().unwrap();
        above
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// Records an ack of `first..=last`; returns the new position and whether it moved.
    fn ack(&self, first: u64, last: u64, window: u64) -> Result<(u64, bool), CursorError> {
        let mut above = self.above.lock().unwrap();
        let pos = self.position();
        if last <= pos {
            return Ok((pos, false));
        }
        if last - pos > window {
            return Err(CursorError::OutOfWindow {
                cursor: self.name.clone(),
                seq: last,
                position: pos,
                window,
            });
        }
        let mut start = first.max(pos + 1);
        let mut end = last;
        // Merge with overlapping or adjacent ranges.
        let overlapping: Vec<(u64, u64)> = above
            .range(..=end.saturating_add(1))
            .filter(|(_, &e)| e.saturating_add(1) >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            above.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        if start == pos + 1 {
            self.position.store(end, Ordering::Release);
            Ok((end, true))
        } else {
            above.insert(start, end);
            Ok((pos, false))
        }
    }
}

/// A handle on a named cursor. Cheap to clone; all handles of a name share state.
#[derive(Clone)]
pub struct Cursor {
    pub(crate) shared: Arc<Shared>,
    pub(crate) state: Arc<CursorState>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("name", &self.state.name)
            .field("position", &self.state.position())
            .finish()
    }
}

impl Cursor {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Highest seq up to which every record has been acknowledged.
    pub fn position(&self) -> u64 {
        self.state.position()
    }

    /// A reader starting right after the cursor's position.
    pub fn reader(&self) -> Reader {
        Reader::new(self.shared.clone(), self.position() + 1)
    }

    /// Acknowledges one seq. See [`Cursor::ack_range`].
    pub fn ack(&self, seq: u64) -> Result<u64, CursorError> {
        self.ack_range(seq, seq)
    }

    /// Acknowledges `first..=last` (a record, a merged batch, or a gap). Acks may
    /// arrive out of order as long as they are within `ack_window` of the position;
    /// acks at or below the position are no-ops. Returns the new position.
    ///
    /// The position is written to sled at once and becomes durable with sled's next
    /// flush (at most ~200 ms later, or at [`Wal::flush`](crate::Wal::flush)).
    pub fn ack_range(&self, first: u64, last: u64) -> Result<u64, CursorError> {
        let last_seq = self.shared.watermark.borrow().last_seq;
        if last > last_seq {
            return Err(CursorError::BeyondEnd {
                cursor: self.state.name.clone(),
                seq: last,
                last_seq,
            });
        }
        let (pos, moved) = self.state.ack(first, last, self.shared.cfg.ack_window)?;
        if moved {
            self.shared
                .meta
                .set_cursor(&self.state.name, pos)
                .map_err(|source| CursorError::Meta {
                    cursor: self.state.name.clone(),
                    source,
                })?;
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_advance_position_only_when_contiguous() {
        let c = CursorState::new("d".into(), 0);
        assert_eq!(c.ack(3, 3, 100).unwrap(), (0, false));
        assert_eq!(c.ack(5, 7, 100).unwrap(), (0, false));
        assert!(c.is_acked(6) && !c.is_acked(4) && !c.is_acked(1));
        assert_eq!(c.ack(1, 1, 100).unwrap(), (1, true));
        assert_eq!(c.ack(2, 2, 100).unwrap(), (3, true));
        assert_eq!(c.ack(4, 4, 100).unwrap(), (7, true));
        assert!(c.above.lock().unwrap().is_empty());
        // At or below the position: no-op.
        assert_eq!(c.ack(1, 7, 100).unwrap(), (7, false));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let c = CursorState::new("d".into(), 10);
        c.ack(20, 25, 100).unwrap();
        c.ack(15, 19, 100).unwrap();
        c.ack(26, 30, 100).unwrap();
        c.ack(22, 40, 100).unwrap();
        assert_eq!(
            c.above.lock().unwrap().iter().collect::<Vec<_>>(),
            vec![(&15, &40)]
        );
        assert_eq!(c.ack(11, 14, 100).unwrap(), (40, true));
    }

    #[test]
    fn ack_beyond_window_is_refused() {
        let c = CursorState::new("d".into(), 100);
        assert!(matches!(
            c.ack(151, 151, 50),
            Err(CursorError::OutOfWindow {
                seq: 151,
                position: 100,
                window: 50,
                ..
            })
        ));
        assert_eq!(c.ack(150, 150, 50).unwrap(), (100, false));
    }
}
