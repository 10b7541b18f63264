//! Named durable cursors: one per consumer (destination), each with its own position.
//!
//! A consumer acknowledges records (and gaps) as it finishes them, possibly out of
//! order and arbitrarily far ahead of the oldest one still in flight (a record
//! retried for hours holds the position, not the acks after it). The cursor's
//! *position* is the highest seq up to which every seq has been acknowledged; the
//! acknowledged ranges above it are kept too.
//!
//! **Durability.** [`Cursor::persist`] writes the position and the lowest
//! [`MAX_PERSISTED_RANGES`] ranges above it to the cursor's own file
//! (`<dir>/cursors/<hex name>.cursor`, two alternating slots, see `slots.rs`) and
//! syncs it. Concurrent calls coalesce: a call returns as soon as a write that
//! covers every ack made before it has completed. After a crash a reader resumes
//! after the persisted position and skips the persisted ranges, so what is
//! delivered again is what was acknowledged after the last persist. The log
//! persists every cursor before it deletes a segment and at close.
//!
//! **Exact loss accounting.** When `drop_oldest` deletes a segment, the records this
//! cursor had not acknowledged are counted as lost for it — under the same lock its
//! acks take. A record already handed to the consumer may still be delivered after
//! that; its [`Cursor::ack`] then says [`Ack::after_eviction`], so the consumer can
//! correct the count. Each record is therefore either delivered or lost for a
//! cursor, never both and never neither.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::CursorError;
use crate::reader::Reader;
use crate::shared::Shared;
use crate::slots::{Opened, SlotFile};

/// Directory of the cursor files, under the log's directory.
pub(crate) const CURSORS_DIR: &str = "cursors";
const SLOT: usize = 8192;
/// Acknowledged ranges above the position that a persist keeps (the lowest ones);
/// records in ranges beyond are delivered again after a crash.
pub const MAX_PERSISTED_RANGES: usize = 400;

#[derive(Default)]
struct AckState {
    /// Acked ranges above the position, start → end (inclusive), non-overlapping and
    /// not adjacent to the position (those are folded into it at once).
    above: BTreeMap<u64, u64>,
    /// Ranges an eviction counted as lost for this cursor, start → end, above the
    /// position.
    lost: BTreeMap<u64, u64>,
    /// Bumped by every ack that changed something.
    version: u64,
}

pub(crate) struct CursorState {
    pub name: String,
    /// Highest contiguously acknowledged seq. Read without the lock (retention);
    /// written only under `acks`.
    position: AtomicU64,
    acks: Mutex<AckState>,
    /// The cursor's file (`None` until it could be created: a full disk).
    file: Mutex<Option<SlotFile>>,
    /// `AckState::version` covered by the last completed persist.
    persisted: AtomicU64,
    path: PathBuf,
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

/// What a cursor file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Persisted {
    pub name: String,
    pub position: u64,
    pub above: Vec<(u64, u64)>,
}

impl Persisted {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + 16 * self.above.len() + self.name.len());
        v.extend_from_slice(&self.position.to_le_bytes());
        v.extend_from_slice(&(self.above.len() as u32).to_le_bytes());
        for &(a, b) in &self.above {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&b.to_le_bytes());
        }
        v.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        let position = u64_at(0)?;
        let n = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?) as usize;
        if n > MAX_PERSISTED_RANGES {
            return None;
        }
        let mut above = Vec::with_capacity(n);
        for i in 0..n {
            let (a, e) = (u64_at(12 + 16 * i)?, u64_at(20 + 16 * i)?);
            if a > e || a <= position {
                return None;
            }
            above.push((a, e));
        }
        let at = 12 + 16 * n;
        let len = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        let name = String::from_utf8(b.get(at + 2..at + 2 + len)?.to_vec()).ok()?;
        Some(Self {
            name,
            position,
            above,
        })
    }
}

pub(crate) fn file_name(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.cursor")
}

/// A cursor file found at open.
pub(crate) enum Found {
    Valid(SlotFile, Persisted),
    /// A cursor file whose slots are both damaged: the name is known (from the file
    /// name), the position is not.
    Damaged {
        name: String,
        path: PathBuf,
    },
}

/// Every cursor file under `dir/cursors`. Files that are not cursor files are
/// ignored; temporary ones removed.
pub(crate) fn load_all(dir: &Path) -> io::Result<Vec<Found>> {
    let cdir = dir.join(CURSORS_DIR);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&cdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let fname = entry.file_name();
        let Some(fname) = fname.to_str() else {
            continue;
        };
        let path = entry.path();
        if fname.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(hex) = fname.strip_suffix(".cursor") else {
            continue;
        };
        let Some(name) = unhex(hex) else { continue };
        if !entry.file_type()?.is_file() {
            tracing::warn!(file = %path.display(), "not a regular file; ignored");
            continue;
        }
        match SlotFile::open(&path, SLOT)? {
            Opened::Valid(f, payload) => match Persisted::decode(&payload) {
                Some(p) if p.name == name => out.push(Found::Valid(f, p)),
                _ => out.push(Found::Damaged { name, path }),
            },
            Opened::Damaged => out.push(Found::Damaged { name, path }),
            Opened::Missing => {}
        }
    }
    Ok(out)
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl CursorState {
    pub fn new(name: String, position: u64, path: PathBuf) -> Self {
        Self {
            name,
            position: AtomicU64::new(position),
            acks: Mutex::new(AckState::default()),
            file: Mutex::new(None),
            persisted: AtomicU64::new(0),
            path,
        }
    }

    /// A cursor as persisted: position and acknowledged ranges above it.
    pub fn restored(p: Persisted, file: SlotFile) -> Self {
        let path = file.path.clone();
        let c = Self::new(p.name, p.position, path);
        {
            let mut st = c.acks.lock().unwrap();
            for (a, b) in p.above {
                st.above.insert(a, b);
            }
        }
        *c.file.lock().unwrap() = Some(file);
        c
    }

    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// The acknowledged ranges above the position.
    pub fn above(&self) -> Vec<(u64, u64)> {
        self.acks
            .lock()
            .unwrap()
            .above
            .iter()
            .map(|(&a, &b)| (a, b))
            .collect()
    }

    /// Whether `seq` has been acknowledged (at or below the position, or in a range
    /// above it).
    pub fn is_acked(&self, seq: u64) -> bool {
        if seq <= self.position() {
            return true;
        }
        let st = self.acks.lock().unwrap();
        st.above
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &e)| e >= seq)
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
    fn ack(&self, first: u64, last: u64) -> (u64, bool, u64) {
        let mut st = self.acks.lock().unwrap();
        let pos = self.position();
        if last <= pos {
            return (pos, false, 0);
        }
        st.version += 1;
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
            (end, true, were_lost)
        } else {
            st.above.insert(start, end);
            (pos, false, were_lost)
        }
    }

    /// Writes the cursor's state to its file and syncs it, unless a write covering
    /// every ack so far has already completed.
    pub fn persist(&self, cursors_dir: &Path) -> Result<u64, CursorError> {
        let want = self.acks.lock().unwrap().version;
        let mut file = self.file.lock().unwrap();
        if self.persisted.load(Ordering::Acquire) >= want && file.is_some() {
            return Ok(self.position());
        }
        let (snapshot, version) = {
            let st = self.acks.lock().unwrap();
            (
                Persisted {
                    name: self.name.clone(),
                    position: self.position(),
                    above: st
                        .above
                        .iter()
                        .take(MAX_PERSISTED_RANGES)
                        .map(|(&a, &b)| (a, b))
                        .collect(),
                },
                st.version,
            )
        };
        let io = |source| CursorError::Io {
            cursor: self.name.clone(),
            path: self.path.clone(),
            source,
        };
        let payload = snapshot.encode();
        match file.as_mut() {
            Some(f) => f.write(&payload).map_err(io)?,
            None => {
                crate::fsutil::ensure_dir(cursors_dir).map_err(io)?;
                *file = Some(SlotFile::create(&self.path, SLOT, &payload).map_err(io)?);
            }
        }
        self.persisted.fetch_max(version, Ordering::AcqRel);
        Ok(snapshot.position)
    }

    /// Deletes the cursor's file (durably).
    pub fn remove_file(&self) -> io::Result<()> {
        *self.file.lock().unwrap() = None;
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        crate::fsutil::sync_dir(self.path.parent().unwrap_or(Path::new(".")))
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

    /// Acknowledged ranges above the position.
    pub fn acked_above(&self) -> Vec<(u64, u64)> {
        self.state.above()
    }

    /// Whether `seq` has been acknowledged.
    pub fn is_acked(&self, seq: u64) -> bool {
        self.state.is_acked(seq)
    }

    /// A reader starting right after the cursor's position, which skips the records
    /// acknowledged above it (after a crash: delivered before the last persist).
    pub fn reader(&self) -> Reader {
        Reader::new(self.shared.clone(), self.position() + 1).skipping_acked(self.state.clone())
    }

    /// A reader of `first..=last` only (stopping there, [`Reader::is_done`]), which
    /// skips the records acknowledged: one lane of a consumer that reads its
    /// backlog apart from its live records.
    pub fn reader_between(&self, first: u64, last: u64) -> Reader {
        Reader::new(self.shared.clone(), first)
            .until(last)
            .skipping_acked(self.state.clone())
    }

    /// `first..=last` newest first, skipping the records acknowledged.
    pub fn newest_first(&self, first: u64, last: u64) -> crate::NewestFirst {
        crate::NewestFirst::new(self.shared.clone(), self.state.clone(), first, last)
    }

    /// The seq of the newest record the log made visible.
    pub fn last_seq(&self) -> u64 {
        self.shared.watermark.borrow().last_seq
    }

    /// Whether `seq` was evicted by `drop_oldest` (it is no longer on disk; a
    /// consumer still holding it may deliver it, or give up on it).
    pub fn is_evicted(&self, seq: u64) -> bool {
        seq < self.shared.evicted_below()
    }

    /// Acknowledges one delivered record. See [`Ack`] for evictions that raced the
    /// delivery. The ack is in memory until [`Cursor::persist`].
    pub fn ack(&self, seq: u64) -> Result<Ack, CursorError> {
        let (position, were_lost) = self.ack_inner(seq, seq)?;
        Ok(Ack {
            position,
            after_eviction: were_lost > 0,
        })
    }

    /// Acknowledges `first..=last` without delivery: a gap the reader reported, or
    /// records given up on. Acks may arrive in any order; acks at or below the
    /// position are no-ops. Returns the new position.
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
        let (pos, _moved, were_lost) = self.state.ack(first, last);
        Ok((pos, were_lost))
    }

    /// Makes every ack made so far durable (blocking: one small synced write, shared
    /// with concurrent callers). Returns the persisted position.
    pub fn persist(&self) -> Result<u64, CursorError> {
        self.state.persist(&self.shared.cfg.dir.join(CURSORS_DIR))
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
        let c = CursorState::new("d".into(), 0, PathBuf::new());
        assert_eq!(c.ack(3, 3), (0, false, 0));
        assert_eq!(c.ack(5, 7), (0, false, 0));
        assert_eq!(c.ack(1, 1), (1, true, 0));
        assert_eq!(c.ack(2, 2), (3, true, 0));
        assert_eq!(c.ack(4, 4), (7, true, 0));
        assert!(above(&c).is_empty());
        // At or below the position: no-op.
        assert_eq!(c.ack(1, 7), (7, false, 0));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let c = CursorState::new("d".into(), 10, PathBuf::new());
        c.ack(20, 25);
        c.ack(15, 19);
        c.ack(26, 30);
        c.ack(22, 40);
        assert_eq!(above(&c), vec![(15, 40)]);
        assert_eq!(c.ack(11, 14), (40, true, 0));
    }

    #[test]
    fn acks_far_ahead_of_a_stuck_record_are_kept() {
        let c = CursorState::new("d".into(), 100, PathBuf::new());
        // Seq 101 is retried for a long time; millions of later acks pile up.
        c.ack(102, 5_000_000);
        assert_eq!(above(&c), vec![(102, 5_000_000)]);
        assert!(c.is_acked(4_000_000) && !c.is_acked(101));
        assert_eq!(c.ack(101, 101), (5_000_000, true, 0));
    }

    #[test]
    fn persisted_state_round_trips_and_rejects_nonsense() {
        let p = Persisted {
            name: "central".into(),
            position: 41,
            above: vec![(43, 50), (60, 60)],
        };
        assert_eq!(Persisted::decode(&p.encode()), Some(p.clone()));
        let bad = Persisted {
            above: vec![(30, 35)],
            ..p
        };
        assert_eq!(
            Persisted::decode(&bad.encode()),
            None,
            "range below the position"
        );
        assert_eq!(
            unhex(&file_name("a-b").replace(".cursor", "")),
            Some("a-b".into())
        );
    }

    #[test]
    fn losses_are_the_unacked_seqs_and_a_later_ack_reports_them() {
        let c = CursorState::new("d".into(), 10, PathBuf::new());
        c.ack(13, 14);
        c.ack(18, 18);
        // Evict 5..=20: 11, 12, 15..=17, 19, 20 were not acknowledged.
        assert_eq!(c.count_losses(5, 20), vec![(11, 12), (15, 17), (19, 20)]);
        // 16 was delivered after all.
        assert_eq!(c.ack(16, 16), (10, false, 1));
        assert_eq!(c.ack(16, 16), (10, false, 0), "reported once");
        // The gap covering the rest resolves the remaining losses.
        assert_eq!(c.ack(11, 20), (20, true, 6));
        assert!(c.acks.lock().unwrap().lost.is_empty());
    }

    #[test]
    fn take_range_splits_ranges() {
        let mut set = BTreeMap::from([(1, 10), (20, 30)]);
        assert_eq!(take_range(&mut set, 5, 22), 9);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![(1, 4), (23, 30)]);
    }
}
