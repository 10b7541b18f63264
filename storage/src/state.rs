//! `<dir>/wal.state`: the log's identity and the bound on the seqs it has given
//! out, in a two-slot file (`slots.rs`).
//!
//! **No seq is assigned twice.** Before the writer assigns a seq above `reserved`,
//! it durably raises `reserved` by a block. After an unclean stop, recovery starts
//! the next seq past `reserved` whenever records a reader may have seen can be
//! missing from disk (a torn or damaged tail, an empty active segment, `fsync =
//! never`/`interval`): their seqs — and so their idempotency keys — are never
//! reused. A clean close records the exact next seq, so a restart after one skips
//! nothing.

use std::io;
use std::path::{Path, PathBuf};

use crate::slots::{Opened, SlotFile};

pub(crate) const STATE_FILE: &str = "wal.state";
const SLOT: usize = 512;
/// Seqs reserved at a time (one small synced write per block).
pub(crate) const RESERVE_BLOCK: u64 = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogState {
    pub wal_id: [u8; 16],
    /// No seq above this has ever been assigned.
    pub reserved: u64,
    /// After a clean close: the seq the next append gets (0: the last stop was not
    /// clean, or the log is open).
    pub clean_next: u64,
}

impl LogState {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.wal_id);
        v.extend_from_slice(&self.reserved.to_le_bytes());
        v.extend_from_slice(&self.clean_next.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 32 {
            return None;
        }
        let mut wal_id = [0u8; 16];
        wal_id.copy_from_slice(&b[..16]);
        Some(Self {
            wal_id,
            reserved: u64::from_le_bytes(b[16..24].try_into().ok()?),
            clean_next: u64::from_le_bytes(b[24..32].try_into().ok()?),
        })
    }
}

pub(crate) struct StateFile {
    slots: SlotFile,
    pub state: LogState,
}

pub(crate) enum Loaded {
    Missing,
    /// The file exists but holds no valid record (its slots are damaged).
    Damaged,
    Valid(StateFile),
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

impl StateFile {
    pub fn load(dir: &Path) -> io::Result<Loaded> {
        Ok(match SlotFile::open(&path(dir), SLOT)? {
            Opened::Missing => Loaded::Missing,
            Opened::Damaged => Loaded::Damaged,
            Opened::Valid(slots, payload) => match LogState::decode(&payload) {
                Some(state) => Loaded::Valid(Self { slots, state }),
                None => Loaded::Damaged,
            },
        })
    }

    pub fn create(dir: &Path, state: LogState) -> io::Result<Self> {
        let slots = SlotFile::create(&path(dir), SLOT, &state.encode())?;
        Ok(Self { slots, state })
    }

    pub fn write(&mut self, state: LogState) -> io::Result<()> {
        self.slots.write(&state.encode())?;
        self.state = state;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.slots.path
    }
}

/// For tests of crash recovery in one process: makes the next open of the log in
/// `dir` treat the last stop as unclean (a crash), as if `close` had never run.
#[doc(hidden)]
pub fn forget_clean_close(dir: &Path) -> io::Result<()> {
    if let Loaded::Valid(mut f) = StateFile::load(dir)? {
        let mut s = f.state.clone();
        s.clean_next = 0;
        f.write(s)?;
    }
    Ok(())
}
