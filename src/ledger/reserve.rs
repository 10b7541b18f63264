//! A reserve of disk space for the audit ledger: `<ledger dir>/reserve`, a file of
//! `audit.reserve_bytes` allocated while space is plentiful and released the moment
//! a ledger write finds the disk full.
//!
//! Why: deliveries free space (their segments are deleted), but only once their
//! ledger entries are written — no state change outruns its entry. On a full disk
//! that is a deadlock: the spool cannot drain because the ledger cannot record the
//! deliveries that would free space. Releasing the reserve gives the ledger room to
//! record them; at the same moment the log is told to keep that much headroom, so
//! appends (refused with backpressure meanwhile) cannot take the space back. Once
//! deliveries have freed twice the reserve, it is allocated again and appends take
//! everything above `min_free_bytes` again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Called with `true` when the reserve is released (appends must leave its size
/// free), `false` when it is held again.
pub type OnPressure = Box<dyn Fn(bool) + Send + Sync>;

pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: AtomicBool,
    on_pressure: OnceLock<OnPressure>,
}

fn available(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
        .unwrap_or(0)
}

impl Reserve {
    /// The reserve in `dir`; `bytes` 0 disables it.
    pub fn new(dir: &Path, bytes: u64) -> Self {
        let path = dir.join("reserve");
        let held = bytes > 0 && fs::metadata(&path).is_ok_and(|m| m.len() >= bytes);
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

    /// Who to tell (the log's headroom); told at once of the current state.
    pub fn on_pressure(&self, f: OnPressure) {
        f(self.bytes > 0 && !self.is_held());
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
            .truncate(false)
            .mode(0o600)
            .open(&self.path)?;
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, self.bytes)?;
        f.sync_all()?;
        crate::fsio::sync_parent(&self.path)
    }

    /// Gives the reserve's space back to the filesystem (the ledger found the disk
    /// full). Returns whether there was anything to give.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::AcqRel) {
            return false;
        }
        // Appends first, so they cannot take what is about to be freed.
        self.tell(true);
        match fs::remove_file(&self.path) {
            Ok(()) => {
                let _ = crate::fsio::sync_parent(&self.path);
                tracing::warn!(file = %self.path.display(), bytes = self.bytes, "disk full: released the audit ledger's reserve so deliveries can be recorded; appends keep that much free until it is back");
                true
            }
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "cannot release the audit ledger's reserve");
                false
            }
        }
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
        assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 10);
        assert!(r.release(), "held, so something to give back");
        assert!(!path.exists());
        assert!(!r.release(), "nothing left to give");
        assert!(r.ensure());
        assert!(path.exists());
        // Told: pressure at first (not held), off, on (released), off (taken back).
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
        assert!(!r.release());
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
