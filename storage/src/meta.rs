//! Small metadata in sled that the log can do without: delivery times of segments
//! (for `retain_delivered`) and the registry of damaged ranges (so each is reported
//! once). Never payloads. What the log cannot do without — its identity, the seq
//! bound, cursor positions — lives in files of its own (`state.rs`, `cursor.rs`),
//! because sled stops for good after one I/O error (a full disk, a bad sector).
//!
//! Trees (keys are big-endian so they sort numerically):
//!
//! | tree           | key              | value                                        |
//! |----------------|------------------|----------------------------------------------|
//! | `delivered_at` | segment first seq| u64: ns since epoch when every cursor passed |
//! | `damage`       | segment, offset  | encoded [`LostRange`]                        |
//!
//! Logs written by earlier versions kept the identity, the seq floor and cursor
//! positions in trees `wal` and `cursors`; they are read once, at the first open.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::OpenError;
use crate::LostRange;

#[derive(Clone, Debug)]
pub(crate) struct Meta {
    db: sled::Db,
    wal: sled::Tree,
    cursors: sled::Tree,
    delivered_at: sled::Tree,
    damage: sled::Tree,
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn read_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

impl Meta {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let err = |source| OpenError::Meta {
            path: path.to_path_buf(),
            source,
        };
        let config = sled::Config::new()
            .path(path)
            // Metadata is tiny; do not let sled take its 1 GiB default cache.
            .cache_capacity(4 * 1024 * 1024)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(Some(500));
        // The caller holds the data directory's lock, so a held sled lock can only be
        // a previous `Wal` of this process whose sled I/O threads are still winding
        // down after its close: wait for them, briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(err(e)),
            }
        };
        Ok(Self {
            wal: db.open_tree("wal").map_err(err)?,
            cursors: db.open_tree("cursors").map_err(err)?,
            delivered_at: db.open_tree("delivered_at").map_err(err)?,
            damage: db.open_tree("damage").map_err(err)?,
            db,
        })
    }

    /// The database, for callers that keep their own small metadata beside the log's.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush().map(|_| ())
    }

    /// Opens a throwaway store outside the data directory, for when the real one
    /// cannot be opened (a full disk): nothing in it survives a restart.
    pub fn temporary() -> Result<Self, OpenError> {
        let err = |source| OpenError::Meta {
            path: std::path::PathBuf::from("<temporary>"),
            source,
        };
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(4 * 1024 * 1024)
            .open()
            .map_err(err)?;
        Ok(Self {
            wal: db.open_tree("wal").map_err(err)?,
            cursors: db.open_tree("cursors").map_err(err)?,
            delivered_at: db.open_tree("delivered_at").map_err(err)?,
            damage: db.open_tree("damage").map_err(err)?,
            db,
        })
    }

    /// The identity an earlier version kept here.
    pub fn wal_id(&self) -> sled::Result<Option<[u8; 16]>> {
        Ok(self
            .wal
            .get("wal_id")?
            .and_then(|v| <[u8; 16]>::try_from(&v[..]).ok()))
    }

    /// The seq floor an earlier version kept here (1 if none).
    pub fn seq_floor(&self) -> sled::Result<u64> {
        Ok(self
            .wal
            .get("seq_floor")?
            .and_then(|v| read_u64(&v))
            .unwrap_or(1))
    }

    /// Cursor positions an earlier version kept here.
    pub fn cursor_positions(&self) -> sled::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for kv in self.cursors.iter() {
            let (k, v) = kv?;
            if let (Ok(name), Some(pos)) = (String::from_utf8(k.to_vec()), read_u64(&v)) {
                out.push((name, pos));
            }
        }
        Ok(out)
    }

    /// Forgets the identity, floor and cursors of an earlier version once they
    /// live in the log's own files.
    pub fn forget_legacy(&self) -> sled::Result<()> {
        self.wal.clear()?;
        self.cursors.clear()?;
        self.db.flush()?;
        Ok(())
    }

    pub fn delivered_at(&self, segment: u64) -> sled::Result<Option<u64>> {
        Ok(self
            .delivered_at
            .get(be(segment))?
            .and_then(|v| read_u64(&v)))
    }

    pub fn set_delivered_at(&self, segment: u64, nanos: u64) -> sled::Result<()> {
        self.delivered_at.insert(be(segment), &be(nanos))?;
        Ok(())
    }

    /// Forgets everything recorded about a deleted segment.
    pub fn forget_segment(&self, segment: u64) -> sled::Result<()> {
        self.delivered_at.remove(be(segment))?;
        let mut batch = sled::Batch::default();
        for kv in self.damage.scan_prefix(be(segment)) {
            batch.remove(kv?.0);
        }
        self.damage.apply_batch(batch)
    }

    fn damage_key(lost: &LostRange) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&be(lost.segment));
        key[8..].copy_from_slice(&be(lost.offset));
        key
    }

    pub fn has_damage(&self, lost: &LostRange) -> sled::Result<bool> {
        self.damage.contains_key(Self::damage_key(lost))
    }

    /// Records a damaged range; returns false if it was already known.
    pub fn record_damage(&self, lost: &LostRange) -> sled::Result<bool> {
        let key = Self::damage_key(lost);
        let prev = self
            .damage
            .compare_and_swap(key, None as Option<&[u8]>, Some(lost.encode()))?;
        Ok(prev.is_ok())
    }

    pub fn damage(&self) -> sled::Result<Vec<LostRange>> {
        let mut out = Vec::new();
        for kv in self.damage.iter() {
            let (_, v) = kv?;
            if let Some(l) = LostRange::decode(&v) {
                out.push(l);
            }
        }
        Ok(out)
    }
}
