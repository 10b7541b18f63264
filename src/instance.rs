//! The instance id: created once per data directory and kept in it, so the
//! idempotency keys `<instance-id>-<seq>` of exported batches stay the same across
//! retries and restarts, and differ between tracespools.

use std::fs;
use std::io;
use std::path::Path;

const FILE: &str = "instance-id";

/// Reads `<dir>/instance-id`, creating it (durably) the first time.
pub fn load_or_create(dir: &Path) -> io::Result<String> {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim().to_string();
            if valid(&id) {
                return Ok(id);
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {id:?}, not an instance id (letters, digits and '-', 1 to 64 characters); fix or delete it",
                    path.display()
                ),
            ))
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
        Err(e) => Err(e),
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
        let a = load_or_create(dir.path()).unwrap();
        assert!(a.starts_with("tsp-") && a.len() == 20, "{a}");
        assert_eq!(load_or_create(dir.path()).unwrap(), a);
        fs::write(dir.path().join(FILE), "not valid!\n").unwrap();
        assert!(load_or_create(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not an instance id"));
    }
}
