//! Small files written so that a crash leaves either the old content or the new,
//! never a torn file: write a temporary file (owner-only), sync it, rename it into
//! place, sync the directory.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Creates `dir` and any missing parents (owner-only), syncing each parent after
/// the entry it gained — the log's own helper.
pub use tracespool_storage::{available_bytes, ensure_dir, sync_dir};

/// Syncs the directory holding `path` (a create, rename or unlink in it is then
/// durable).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(dir)
}
