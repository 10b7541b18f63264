//! Dead letters: records a destination refused permanently (INVALID_ARGUMENT, HTTP
//! 400/413, ...). They are not retried forever and not silently dropped: each is kept
//! on disk with why it was refused, counted and logged, and can be sent again.
//!
//! Layout, per destination:
//!
//! ```text
//! <data>/dead-letter/<destination>/<seq:020>.pb    the record's payload (OTLP protobuf)
//! <data>/dead-letter/<destination>/<seq:020>.json  what, when and why (written last)
//! ```
//!
//! A dead letter is complete when its `.json` exists; both files are synced and
//! renamed into place before the destination's cursor moves past the record.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracespool_storage::Record;

use crate::fsio::write_atomically;

/// What is kept about a dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub destination: String,
    pub seq: u64,
    /// The idempotency key it was exported with.
    pub export_key: String,
    /// The key the client sent with it, if any.
    pub client_key: String,
    pub spans: u32,
    pub bytes: u64,
    pub received_at_unix_ms: u64,
    pub dead_lettered_at_unix_ms: u64,
    pub attempts: u32,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct DeadLetters {
    root: PathBuf,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DeadLetters {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("dead-letter"),
        }
    }

    fn dir(&self, destination: &str) -> PathBuf {
        self.root.join(destination)
    }

    /// Keeps `record` as refused by `destination`; durable when this returns.
    pub fn store(
        &self,
        destination: &str,
        record: &Record,
        export_key: &str,
        attempts: u32,
        reason: &str,
    ) -> io::Result<DeadLetter> {
        let dir = self.dir(destination);
        crate::fsio::ensure_dir(&dir)?;
        let letter = DeadLetter {
            destination: destination.into(),
            seq: record.seq,
            export_key: export_key.into(),
            client_key: String::from_utf8_lossy(&record.idempotency_key).into_owned(),
            spans: record.span_count,
            bytes: record.payload.len() as u64,
            received_at_unix_ms: unix_ms(record.received_at),
            dead_lettered_at_unix_ms: unix_ms(SystemTime::now()),
            attempts,
            reason: reason.into(),
        };
        let stem = format!("{:020}", record.seq);
        // The payload first: a dead letter is complete once its .json exists.
        write_atomically(&dir, &format!("{stem}.pb"), &record.payload)?;
        let meta = serde_json::to_vec_pretty(&letter).map_err(io::Error::other)?;
        write_atomically(&dir, &format!("{stem}.json"), &meta)?;
        Ok(letter)
    }

    /// All complete dead letters of `destination` (all destinations if `None`).
    pub fn list(&self, destination: Option<&str>) -> io::Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        let dirs: Vec<PathBuf> = match destination {
            Some(d) => vec![self.dir(d)],
            None => match fs::read_dir(&self.root) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
                Err(e) => return Err(e),
            },
        };
        for dir in dirs {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for e in entries {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "json") {
                    if let Ok(l) = serde_json::from_slice::<DeadLetter>(&fs::read(&p)?) {
                        out.push(l);
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.destination, a.seq).cmp(&(&b.destination, b.seq)));
        Ok(out)
    }

    /// Removes a dead letter (after it was delivered): its `.json` first, so it is
    /// never listed without its payload.
    pub fn remove(&self, letter: &DeadLetter) -> io::Result<()> {
        let dir = self.dir(&letter.destination);
        let stem = format!("{:020}", letter.seq);
        for ext in ["json", "pb"] {
            match fs::remove_file(dir.join(format!("{stem}.{ext}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        crate::fsio::sync_dir(&dir)
    }

    /// The payload of a dead letter.
    pub fn payload(&self, letter: &DeadLetter) -> io::Result<Vec<u8>> {
        fs::read(
            self.dir(&letter.destination)
                .join(format!("{:020}.pb", letter.seq)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tracespool_storage::Codec;

    #[test]
    fn stored_letters_are_listed_with_their_payload() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path());
        assert!(dl.list(None).unwrap().is_empty());
        let record = Record {
            seq: 42,
            received_at: SystemTime::now(),
            span_count: 3,
            codec: Codec(1),
            idempotency_key: Bytes::from_static(b"client-1"),
            payload: Bytes::from_static(b"\x0a\x00"),
        };
        let l = dl
            .store("backend", &record, "tsp-1-42", 1, "InvalidArgument: bad")
            .unwrap();
        assert_eq!(l.spans, 3);
        let listed = dl.list(Some("backend")).unwrap();
        assert_eq!(listed, vec![l.clone()]);
        assert_eq!(dl.list(None).unwrap(), vec![l.clone()]);
        assert_eq!(dl.payload(&l).unwrap(), b"\x0a\x00");
        dl.remove(&l).unwrap();
        assert!(dl.list(None).unwrap().is_empty());
        assert!(std::fs::read_dir(dir.path().join("dead-letter/backend"))
            .unwrap()
            .next()
            .is_none());
    }
}
