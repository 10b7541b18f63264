//! The instance id: created once per data directory and kept in it, so the
//! idempotency keys `<instance-id>-<seq>` of exported batches stay the same across
//! retries and restarts, and differ between tracespools.

use std::fs;
use std::io;
use std::path::Path;

const FILE: &str = "instance-id";

/// Reads `<dir>/instance-id`, creating it (durably) the first time. A file that
/// holds no valid id (damage) or cannot be read is replaced by an id derived from
/// the log's identity `wal_id` — the same at every start — with an error logged:
/// records exported before under the old id may reach a dedup tier again under the
/// new one (at-least-once), nothing is lost.
pub fn load_or_create(dir: &Path, wal_id: &[u8; 16]) -> io::Result<String> {
    let path = dir.join(FILE);
    let derived = || {
        format!(
            "tsp-{}",
            wal_id[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    };
    match fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned()) {
        Ok(s) => {
            let id = s.trim().to_string();
            if valid(&id) {
                return Ok(id);
            }
            let new = derived();
            tracing::error!(file = %path.display(), found = ?id, instance_id = %new, "instance id damaged; replaced by one derived from the log's identity (exports get new idempotency keys)");
            crate::fsio::write_atomically(dir, FILE, format!("{new}\n").as_bytes())?;
            Ok(new)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut raw = [0u8; 8];
            getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
            let id = format!(
                "tsp-{}",
                raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            crate::fsio::write_atomically(dir, FILE, format!("{id}\n").as_bytes())?;
            tracing::info!(instance_id = %id, file = %path.display(), "created instance id");
            Ok(id)
        }
        Err(e) => {
            let new = derived();
            tracing::error!(file = %path.display(), error = %e, instance_id = %new, "instance id unreadable; using one derived from the log's identity");
            Ok(new)
        }
    }
}

/// Reads `<dir>/instance-id` without creating it (for the tools).
pub fn read(dir: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(dir.join(FILE)) {
        Ok(s) if valid(s.trim()) => Ok(Some(s.trim().to_string())),
        Ok(s) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}/{FILE} holds {:?}, not an instance id",
                dir.display(),
                s.trim()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), &[7; 16]).unwrap();
        assert!(a.starts_with("tsp-") && a.len() == 20, "{a}");
        assert_eq!(load_or_create(dir.path(), &[7; 16]).unwrap(), a);
        fs::write(dir.path().join(FILE), "not valid!\n").unwrap();
        let b = load_or_create(dir.path(), &[7; 16]).unwrap();
        assert_eq!(b, "tsp-0707070707070707");
        assert_eq!(
            load_or_create(dir.path(), &[9; 16]).unwrap(),
            b,
            "kept once rebuilt"
        );
        fs::write(dir.path().join(FILE), [0xFFu8, 0xFE, b'\n']).unwrap();
        assert_eq!(load_or_create(dir.path(), &[7; 16]).unwrap(), b);
    }
}
