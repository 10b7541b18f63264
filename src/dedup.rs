//! Dedup on receive: a request carrying an `idempotency-key` already accepted within
//! `[dedup] window` is answered with success and not stored again. With tracespools
//! chained edge → gateway, the gateway sees the edge's retries (after a timeout, or
//! after the edge restarted) under the same key and stores each batch once.
//!
//! The index lives in sled beside the log's metadata (keys only, never payloads):
//!
//! | tree            | key                  | value                      |
//! |-----------------|----------------------|----------------------------|
//! | `dedup_keys`    | idempotency key      | received-at ns (BE), seq (BE) |
//! | `dedup_by_time` | received-at ns (BE) ‖ key | empty (for expiry)    |
//! | `dedup_meta`    | `indexed_through`    | seq (BE)                   |
//!
//! **Crash consistency.** A key is written to sled after its record is durable in the
//! log, but sled flushes later; a kill in between would forget a key whose record is
//! stored. So every record also carries its key in the log, and a checkpoint records
//! the seq up to which every record's key is durable in sled (`indexed_through`).
//! At start the records after it are read back from the log and their keys indexed
//! again. The index therefore never misses a key of a stored record.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracespool_storage::{ReadItem, Wal};

pub struct Dedup {
    db: sled::Db,
    keys: sled::Tree,
    by_time: sled::Tree,
    meta: sled::Tree,
    window: Duration,
    max_keys: u64,
    /// Keys in `keys` (maintained; sled's `len` walks the whole tree).
    count: AtomicU64,
    /// Keys whose request is being stored right now.
    in_flight: Mutex<HashSet<Bytes>>,
    /// Seqs whose keys (if any) are in the index, to find the contiguous prefix.
    tracker: Mutex<SeqTracker>,
    checkpointed: AtomicU64,
}

/// The first step for a keyed request.
pub enum Begin {
    /// Accepted before, within the window, as this seq.
    Duplicate(u64),
    /// Another request with the same key is being stored right now.
    InFlight,
    /// Not seen: store it, holding the guard until the key is recorded.
    New(InFlightGuard),
}

/// Holds a key in the in-flight set; released on drop.
pub struct InFlightGuard {
    dedup: Arc<Dedup>,
    key: Bytes,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.dedup.in_flight.lock().unwrap().remove(&self.key);
    }
}

struct SeqTracker {
    /// Every seq up to this one is done.
    contiguous: u64,
    /// Done seqs above `contiguous`.
    above: BTreeSet<u64>,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn read_be(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Dedup {
    /// Opens the index and re-indexes the keys of records stored after the last
    /// checkpoint. `last_seq` is the last seq in the log.
    pub fn open(wal: &Wal, window: Duration, max_keys: u64) -> Result<Arc<Self>, sled::Error> {
        let db = wal.metadata_db();
        let keys = db.open_tree("dedup_keys")?;
        let by_time = db.open_tree("dedup_by_time")?;
        let meta = db.open_tree("dedup_meta")?;
        let indexed_through = meta
            .get("indexed_through")?
            .map(|v| read_be(&v))
            .unwrap_or(0);
        let last_seq = wal.stats().last_seq;
        let dedup = Arc::new(Self {
            count: AtomicU64::new(keys.len() as u64),
            db,
            keys,
            by_time,
            meta,
            window,
            max_keys,
            in_flight: Mutex::new(HashSet::new()),
            tracker: Mutex::new(SeqTracker {
                contiguous: last_seq,
                above: BTreeSet::new(),
            }),
            checkpointed: AtomicU64::new(indexed_through),
        });
        let mut reindexed = 0u64;
        if indexed_through < last_seq {
            let horizon = now_nanos().saturating_sub(window.as_nanos() as u64);
            let mut reader = wal.reader(indexed_through + 1);
            while let Ok(Some(item)) = reader.try_next() {
                if let ReadItem::Record(r) = item {
                    let at = r
                        .received_at
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    if !r.idempotency_key.is_empty() && at >= horizon {
                        dedup.insert(&r.idempotency_key, at, r.seq)?;
                        reindexed += 1;
                    }
                }
            }
        }
        dedup.checkpoint();
        tracing::info!(
            keys = dedup.count.load(Ordering::Relaxed),
            reindexed,
            from_seq = indexed_through + 1,
            "dedup index ready"
        );
        Ok(dedup)
    }

    pub fn begin(self: &Arc<Self>, key: &Bytes) -> Begin {
        // The lookup and the claim happen under one lock: of two requests with one
        // key, the second sees the first either in flight or recorded (a stored
        // request's key is recorded before its claim is released).
        let mut in_flight = self.in_flight.lock().unwrap();
        if in_flight.contains(key) {
            return Begin::InFlight;
        }
        match self.keys.get(key) {
            Ok(Some(v)) if v.len() == 16 => {
                let at = read_be(&v[..8]);
                if now_nanos().saturating_sub(at) <= self.window.as_nanos() as u64 {
                    return Begin::Duplicate(read_be(&v[8..]));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "dedup index lookup failed; treating the request as new")
            }
        }
        in_flight.insert(key.clone());
        drop(in_flight);
        Begin::New(InFlightGuard {
            dedup: self.clone(),
            key: key.clone(),
        })
    }

    fn insert(&self, key: &[u8], at: u64, seq: u64) -> Result<(), sled::Error> {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&be(at));
        v[8..].copy_from_slice(&be(seq));
        let prev = self.keys.insert(key, &v[..])?;
        if let Some(prev) = prev.filter(|p| p.len() == 16) {
            let mut old = be(read_be(&prev[..8])).to_vec();
            old.extend_from_slice(key);
            self.by_time.remove(old)?;
        } else {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        let mut t = be(at).to_vec();
        t.extend_from_slice(key);
        self.by_time.insert(t, &[][..])?;
        Ok(())
    }

    /// Records a stored request's key (call before releasing its guard).
    pub fn record(&self, key: &[u8], seq: u64, received_at: SystemTime) {
        let at = received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        if let Err(e) = self.insert(key, at, seq) {
            tracing::error!(error = %e, seq, "could not record idempotency key");
        }
    }

    /// Marks `seq` stored and its key (if any) recorded.
    pub fn done(&self, seq: u64) {
        let mut t = self.tracker.lock().unwrap();
        if seq <= t.contiguous {
            return;
        }
        t.above.insert(seq);
        loop {
            let next = t.contiguous + 1;
            if !t.above.remove(&next) {
                break;
            }
            t.contiguous = next;
        }
        // A seq the log skipped (it never reuses seqs lost in an OS crash) must not
        // stall the prefix forever: jump over a gap once later seqs pile up.
        if t.above.len() > 100_000 {
            let first = *t.above.iter().next().unwrap();
            t.contiguous = first - 1;
        }
    }

    /// Makes the keys of every record up to the contiguous done seq durable, then
    /// notes that seq, so a restart re-indexes only what came after.
    pub fn checkpoint(&self) {
        let through = self.tracker.lock().unwrap().contiguous;
        if through <= self.checkpointed.load(Ordering::Relaxed) {
            return;
        }
        let result = self
            .db
            .flush()
            .and_then(|_| self.meta.insert("indexed_through", &be(through)[..]));
        match result {
            Ok(_) => self.checkpointed.store(through, Ordering::Relaxed),
            Err(e) => tracing::error!(error = %e, "dedup checkpoint failed"),
        }
    }

    /// Forgets keys older than the window, then the oldest beyond `max_keys`.
    pub fn expire(&self) -> u64 {
        let horizon = now_nanos().saturating_sub(self.window.as_nanos() as u64);
        let mut removed = 0;
        for kv in self.by_time.iter() {
            let Ok((tk, _)) = kv else { break };
            let at = read_be(&tk[..8]);
            if at >= horizon && self.count.load(Ordering::Relaxed) <= self.max_keys {
                break;
            }
            let key = &tk[8..];
            let same = matches!(self.keys.get(key), Ok(Some(v)) if v.len() == 16 && read_be(&v[..8]) == at);
            if same {
                let _ = self.keys.remove(key);
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            let _ = self.by_time.remove(&tk);
            removed += 1;
        }
        removed
    }

    /// Keys remembered now.
    pub fn keys(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Runs checkpoints every second and expiry every ten until `stop`.
pub async fn maintain(dedup: Arc<Dedup>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let d = dedup.clone();
        n += 1;
        let expire = n.is_multiple_of(10);
        let _ = tokio::task::spawn_blocking(move || {
            d.checkpoint();
            if expire {
                let removed = d.expire();
                if removed > 0 {
                    tracing::debug!(removed, "expired idempotency keys");
                }
            }
        })
        .await;
    }
    let _ = tokio::task::spawn_blocking(move || dedup.checkpoint()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn one_key_is_stored_once_however_its_requests_race() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(tracespool_storage::WalConfig::new(dir.path())).unwrap();
        let d = Dedup::open(&wal, Duration::from_secs(600), 1 << 20).unwrap();
        for round in 0..300u64 {
            let key = Bytes::from(format!("batch-{round}"));
            let stored = AtomicUsize::new(0);
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        barrier.wait();
                        if let Begin::New(guard) = d.begin(&key) {
                            stored.fetch_add(1, Ordering::SeqCst);
                            d.record(&key, round + 1, SystemTime::now());
                            drop(guard);
                        }
                    });
                }
            });
            assert_eq!(
                stored.load(Ordering::SeqCst),
                1,
                "round {round}: stored twice"
            );
            assert!(matches!(d.begin(&key), Begin::Duplicate(s) if s == round + 1));
        }
    }
}
