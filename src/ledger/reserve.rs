//! A reserve of disk space for the audit ledger: `<ledger dir>/reserve`, an empty
//! file with `audit.reserve_bytes` allocated to it (`fallocate` keeping its size 0),
//! taken while space is plentiful and turned into the next ledger file the moment a
//! ledger write finds the disk full.
//!
//! Why: deliveries free space (their segments are deleted), but only once their
//! ledger entries are written — no state change outruns its entry. On a full disk
//! that is a deadlock: the spool cannot drain because the ledger cannot record the
//! deliveries that would free space. The reserve's blocks become the ledger's own,
//! so nothing else on the filesystem can take them first (freeing a file's worth of
//! space for the ledger to use did not work: the metadata store took it at once,
//! found by the soak). At the same moment the log is told to leave that much free,
//! so appends cannot take what deliveries free before the reserve is taken again,
//! once twice its size is free.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Called with `true` when the reserve is spent (appends must leave its size
/// free), `false` when it is held again.
pub type OnPressure = Box<dyn Fn(bool) + Send + Sync>;

pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: AtomicBool,
    on_pressure: OnceLock<OnPressure>,
}

fn available(dir: &Path) -> u64 {
    crate::fsio::available_bytes(dir).unwrap_or(0)
}

/// Bytes allocated to the file at `path` (0 if there is none).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl Reserve {
    /// The reserve in `dir`; `bytes` 0 disables it.
    pub fn new(dir: &Path, bytes: u64) -> Self {
        let path = dir.join("reserve");
        let held = bytes > 0 && allocated(&path) >= bytes;
        Self {
            path,
            bytes,
            held: AtomicBool::new(held),
            on_pressure: OnceLock::new(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Whether the reserve is enabled and spent: the disk was full not long ago.
    pub fn is_spent(&self) -> bool {
        self.bytes > 0 && !self.is_held()
    }

    /// Who to tell (the log's headroom); told at once of the current state.
    pub fn on_pressure(&self, f: OnPressure) {
        f(self.is_spent());
        let _ = self.on_pressure.set(f);
    }

    fn tell(&self, pressure: bool) {
        if let Some(f) = self.on_pressure.get() {
            f(pressure);
        }
    }

    /// Allocates the reserve if it is not held and the filesystem has room for it
    /// twice over. Returns whether it is held afterwards.
    pub fn ensure(&self) -> bool {
        if self.bytes == 0 || self.is_held() {
            return self.bytes > 0;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if available(dir) < 2 * self.bytes {
            return false;
        }
        match self.allocate() {
            Ok(()) => {
                self.held.store(true, Ordering::Release);
                self.tell(false);
                tracing::info!(file = %self.path.display(), bytes = self.bytes, "audit ledger reserve held");
                true
            }
            Err(e) => {
                let _ = fs::remove_file(&self.path);
                tracing::debug!(error = %e, "audit ledger reserve not allocated yet");
                false
            }
        }
    }

    fn allocate(&self) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.path)?;
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, self.bytes)?;
        f.sync_all()?;
        crate::fsio::sync_parent(&self.path)?;
        if allocated(&self.path) < self.bytes {
            return Err(io::Error::other(
                "the filesystem did not allocate the reserve",
            ));
        }
        Ok(())
    }

    /// Renames the reserve to `to` (the ledger's next file), its blocks with it:
    /// the ledger found the disk full. Returns whether there was a reserve to take;
    /// from then on appends leave its size free until it is held again.
    pub fn take_as(&self, to: &Path) -> io::Result<bool> {
        if !self.is_held() {
            return Ok(false);
        }
        fs::rename(&self.path, to)?;
        self.held.store(false, Ordering::Release);
        self.tell(true);
        crate::fsio::sync_parent(to)?;
        tracing::warn!(file = %to.display(), bytes = self.bytes, "disk full: the audit ledger goes on in its reserve so deliveries can be recorded; appends keep that much free until it is taken again");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn watch(r: &Reserve) -> Arc<Mutex<Vec<bool>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        r.on_pressure(Box::new(move |p| s.lock().unwrap().push(p)));
        seen
    }

    #[test]
    fn is_held_released_once_and_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path(), 64 << 10);
        let seen = watch(&r);
        assert!(r.ensure());
        let path = dir.path().join("reserve");
        // Allocated, and empty: it can become a ledger file as it is.
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        assert!(allocated(&path) >= 64 << 10);
        let to = dir.path().join("00000002.jsonl");
        assert!(r.take_as(&to).unwrap(), "held, so something to take");
        assert!(!path.exists());
        assert!(allocated(&to) >= 64 << 10, "its blocks went with it");
        assert!(r.is_spent());
        assert!(!r.take_as(&to).unwrap(), "nothing left to take");
        assert!(r.ensure());
        assert!(path.exists());
        // Told: pressure at first (not held), off, on (spent), off (taken again).
        assert_eq!(*seen.lock().unwrap(), vec![true, false, true, false]);
    }

    #[test]
    fn a_reserve_left_by_the_last_run_counts_as_held() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Reserve::new(dir.path(), 4096).ensure());
        let again = Reserve::new(dir.path(), 4096);
        assert!(again.is_held());
        assert_eq!(*watch(&again).lock().unwrap(), vec![false]);
        // A larger reserve than the file left behind is not held yet.
        assert!(!Reserve::new(dir.path(), 8192).is_held());
    }

    #[test]
    fn zero_bytes_disables_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path(), 0);
        assert_eq!(*watch(&r).lock().unwrap(), vec![false]);
        assert!(!r.ensure());
        assert!(!r.is_spent());
        assert!(!r.take_as(&dir.path().join("x")).unwrap());
        assert!(!dir.path().join("reserve").exists());
    }

    #[test]
    fn is_not_taken_while_the_disk_has_less_than_twice_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path(), available(dir.path()) / 2 + (1 << 20));
        assert!(!r.ensure());
        assert!(!dir.path().join("reserve").exists());
    }
}
