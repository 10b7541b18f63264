//! Small filesystem helpers: directory sync, the data-directory lock, free space,
//! segment file names, owner-only creation.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Suffix of a complete segment file.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of a segment being created; never read, removed at open.
pub const TEMP_SUFFIX: &str = ".seg.tmp";

pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// Sequence numbers start at 1 and stay far below this (2^62 appends is centuries at
/// a billion a second); a file name beyond it is not a segment this log wrote.
pub const MAX_SEQ: u64 = 1 << 62;

/// The first sequence number encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|s| (1..=MAX_SEQ).contains(s))
}

/// Creates `dir` (owner-only) if it does not exist, syncing its parent so the new
/// entry survives a crash.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Parent missing: create the chain, then retry this level.
            if let Some(parent) = dir.parent() {
                ensure_dir(parent)?;
            }
            ensure_dir(dir)
        }
        Err(e) => Err(e),
    }
}

/// Makes directory entry changes (create, rename, unlink) in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens a new file for writing, failing if it exists, with mode 0600.
pub fn create_new_owner_only(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// An exclusive advisory lock on `<dir>/LOCK`, held for the life of the value.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

pub enum LockError {
    Held,
    Io(io::Error),
}

/// Takes the lock, waiting up to two seconds while it is held: a tool's probe
/// (`offline::forwarder_running`) holds a shared lock for a moment and must not make
/// a starting forwarder fail.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match try_lock_dir(dir) {
            Err(LockError::Held) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn try_lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(LockError::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(LockError::Held),
        Err(fs::TryLockError::Error(e)) => Err(LockError::Io(e)),
    }
}

/// True for the errors that mean "the filesystem is out of space or quota".
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(MAX_SEQ)),
            Some(MAX_SEQ)
        );
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), None);
        assert_eq!(parse_segment_file_name(&segment_file_name(0)), None);
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg.tmp"),
            None
        );
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn second_lock_on_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).ok().expect("first lock");
        assert!(matches!(lock_dir(dir.path()), Err(LockError::Held)));
        drop(first);
        assert!(lock_dir(dir.path()).is_ok());
    }
}
