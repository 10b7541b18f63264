//! Named durable cursors: one per consumer (destination), each with its own position.
//!
//! A consumer acknowledges records (and gaps) as it finishes them, possibly out of
//! order. The cursor's position is the highest seq up to which *every* seq has been
//! acknowledged; that position is what is persisted in sled and where a reader
//! resumes after a restart. Acks above the position are kept in memory only, so
//! after a crash the records between the persisted position and the newest ack are
//! delivered again (at-least-once).
//!
//! **Exact loss accounting.** When `drop_oldest` deletes a segment, the records this
//! cursor had not acknowledged are counted as lost for it — under the same lock its
//! acks take. A record already handed to the consumer may still be delivered after
//! that (its bytes stay mapped); its [`Cursor::ack`] then says
//! [`Ack::after_eviction`], so the consumer can correct the count. Each record is
//! therefore either delivered or lost for a cursor, never both and never neither.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::CursorError;
use crate::reader::Reader;
use crate::shared::Shared;

#[derive(Default)]
struct AckState {
    /// Acked ranges above the position, start → end (inclusive), non-overlapping and
    /// not adjacent to the position (those are folded into it at once).
    above: BTreeMap<u64, u64>,
    /// Ranges an eviction counted as lost for this cursor, start → end, above the
    /// position.
    lost: BTreeMap<u64, u64>,
}

pub(crate) struct CursorState {
    pub name: String,
    /// Highest contiguously acknowledged seq. Read without the lock (retention);
    /// written only under `acks`.
    position: AtomicU64,
    acks: Mutex<AckState>,
}

/// The result of acknowledging a delivered record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The cursor's position afterwards.
    pub position: u64,
    /// The record's segment was evicted (and the record counted as lost for this
    /// cursor) before this ack: it was delivered after all.
    pub after_eviction: bool,
}

/// Removes `[first, last]` from a set of disjoint ranges; returns how many seqs of
/// it were in the set.
fn take_range(set: &mut BTreeMap<u64, u64>, first: u64, last: u64) -> u64 {
    let hits: Vec<(u64, u64)> = set
        .range(..=last)
        .filter(|(_, &e)| e >= first)
        .map(|(&s, &e)| (s, e))
        .collect();
    let mut n = 0;
    for (s, e) in hits {
        set.remove(&s);
        n += e.min(last) - s.max(first) + 1;
        if s < first {
            set.insert(s, first - 1);
        }
        if e > last {
            set.insert(last + 1, e);
        }
    }
    n
}

impl CursorState {
    pub fn new(name: String, position: u64) -> Self {
        Self {
            name,
            position: AtomicU64::new(position),
            acks: Mutex::new(AckState::default()),
        }
    }

    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// For an eviction of `[first, last]`: the seqs this cursor has not acknowledged,
    /// as ranges, which are from now on counted as lost for it.
    pub fn count_losses(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut st = self.acks.lock().unwrap();
        let mut next = first.max(self.position() + 1);
        let mut lost = Vec::new();
        for (&s, &e) in st.above.range(..=last) {
            if e < next {
                continue;
            }
            if s > next {
                lost.push((next, s - 1));
            }
            next = e + 1;
        }
        if next <= last {
            lost.push((next, last));
        }
        for &(s, e) in &lost {
            st.lost.insert(s, e);
        }
        lost
    }

    /// Records an ack of `first..=last`; returns the new position, whether it moved,
    /// and how many of the seqs had been counted as lost.
    fn ack(&self, first: u64, last: u64, window: u64) -> Result<(u64, bool, u64), CursorError> {
        let mut st = self.acks.lock().unwrap();
        let pos = self.position();
        if last <= pos {
            return Ok((pos, false, 0));
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
        let were_lost = take_range(&mut st.lost, start, end);
        // Merge with overlapping or adjacent ranges.
        let overlapping: Vec<(u64, u64)> = st
            .above
            .range(..=end.saturating_add(1))
            .filter(|(_, &e)| e.saturating_add(1) >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            st.above.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        if start == pos + 1 {
            self.position.store(end, Ordering::Release);
            take_range(&mut st.lost, 0, end);
            Ok((end, true, were_lost))
        } else {
            st.above.insert(start, end);
            Ok((pos, false, were_lost))
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

    /// Whether `seq` was evicted by `drop_oldest` (it is no longer on disk; a
    /// consumer still holding it may deliver it, or give up on it).
    pub fn is_evicted(&self, seq: u64) -> bool {
        seq < self.shared.evicted_below()
    }

    /// Acknowledges one delivered record. See [`Ack`] for evictions that raced the
    /// delivery.
    pub fn ack(&self, seq: u64) -> Result<Ack, CursorError> {
        let (position, were_lost) = self.ack_inner(seq, seq)?;
        Ok(Ack {
            position,
            after_eviction: were_lost > 0,
        })
    }

    /// Acknowledges `first..=last` without delivery: a gap the reader reported, or
    /// records given up on. Acks may arrive out of order as long as they are within
    /// `ack_window` of the position; acks at or below the position are no-ops.
    /// Returns the new position.
    ///
    /// Positions are written to sled at once and become durable with sled's next
    /// flush (at most ~200 ms later, or at [`Wal::flush`](crate::Wal::flush)).
    pub fn ack_range(&self, first: u64, last: u64) -> Result<u64, CursorError> {
        self.ack_inner(first, last).map(|(p, _)| p)
    }

    fn ack_inner(&self, first: u64, last: u64) -> Result<(u64, u64), CursorError> {
        let last_seq = self.shared.watermark.borrow().last_seq;
        if last > last_seq {
            return Err(CursorError::BeyondEnd {
                cursor: self.state.name.clone(),
                seq: last,
                last_seq,
            });
        }
        let (pos, moved, were_lost) = self.state.ack(first, last, self.shared.cfg.ack_window)?;
        if moved {
            self.shared
                .meta
                .set_cursor(&self.state.name, pos)
                .map_err(|source| CursorError::Meta {
                    cursor: self.state.name.clone(),
                    source,
                })?;
        }
        Ok((pos, were_lost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn above(c: &CursorState) -> Vec<(u64, u64)> {
        c.acks
            .lock()
            .unwrap()
            .above
            .iter()
            .map(|(&s, &e)| (s, e))
            .collect()
    }

    #[test]
    fn out_of_order_acks_advance_position_only_when_contiguous() {
        let c = CursorState::new("d".into(), 0);
        assert_eq!(c.ack(3, 3, 100).unwrap(), (0, false, 0));
        assert_eq!(c.ack(5, 7, 100).unwrap(), (0, false, 0));
        assert_eq!(c.ack(1, 1, 100).unwrap(), (1, true, 0));
        assert_eq!(c.ack(2, 2, 100).unwrap(), (3, true, 0));
        assert_eq!(c.ack(4, 4, 100).unwrap(), (7, true, 0));
        assert!(above(&c).is_empty());
        // At or below the position: no-op.
        assert_eq!(c.ack(1, 7, 100).unwrap(), (7, false, 0));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let c = CursorState::new("d".into(), 10);
        c.ack(20, 25, 100).unwrap();
        c.ack(15, 19, 100).unwrap();
        c.ack(26, 30, 100).unwrap();
        c.ack(22, 40, 100).unwrap();
        assert_eq!(above(&c), vec![(15, 40)]);
        assert_eq!(c.ack(11, 14, 100).unwrap(), (40, true, 0));
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
        assert_eq!(c.ack(150, 150, 50).unwrap(), (100, false, 0));
    }

    #[test]
    fn losses_are_the_unacked_seqs_and_a_later_ack_reports_them() {
        let c = CursorState::new("d".into(), 10);
        c.ack(13, 14, 100).unwrap();
        c.ack(18, 18, 100).unwrap();
        // Evict 5..=20: 11, 12, 15..=17, 19, 20 were not acknowledged.
        assert_eq!(c.count_losses(5, 20), vec![(11, 12), (15, 17), (19, 20)]);
        // 16 was delivered after all.
        assert_eq!(c.ack(16, 16, 100).unwrap(), (10, false, 1));
        assert_eq!(c.ack(16, 16, 100).unwrap(), (10, false, 0), "reported once");
        // The gap covering the rest resolves the remaining losses.
        assert_eq!(c.ack(11, 20, 100).unwrap(), (20, true, 6));
        assert!(c.acks.lock().unwrap().lost.is_empty());
    }

    #[test]
    fn take_range_splits_ranges() {
        let mut set = BTreeMap::from([(1, 10), (20, 30)]);
        assert_eq!(take_range(&mut set, 5, 22), 9);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![(1, 4), (23, 30)]);
    }
}
