//! Dead letters: records a destination refused permanently (INVALID_ARGUMENT, HTTP
//! 400/413, ...). They are not retried forever and not silently dropped: each is kept
//! on disk with why it was refused, counted and logged, and can be sent again.
//!
//! Layout, per destination:
//!
//! ```text
//! <data>/dead-letter/<destination>/<seq:020>.pb         the record's payload (OTLP protobuf;
//!                                                       as stored if the JSON's codec is not 1)
//! <data>/dead-letter/<destination>/<seq:020>.pb.sealed  the same, encrypted (below)
//! <data>/dead-letter/<destination>/<seq:020>.json       what, when and why (written last)
//! ```
//!
//! A dead letter is complete when its `.json` exists; both files are synced and
//! renamed into place before the destination's cursor moves past the record.
//!
//! With encryption at rest on, the payload is sealed as the log seals records
//! (`storage/FORMAT.md`, "Sealed dead letters"): `TSDL` ‖ version 1 ‖ codec ‖ a
//! random 16-byte salt ‖ the sealed payload, under a key derived from the active
//! key, the salt and the seq, bound to the seq, span count and destination.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracespool_storage::crypto::FrameAad;
use tracespool_storage::{KeyRing, Record};

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
    /// How the payload file holds it: 1, OTLP protobuf (every record this build
    /// can read); another value, the record's bytes as stored under that codec
    /// (one this build could not decode — kept rather than lost).
    #[serde(default = "protobuf_codec")]
    pub codec: u8,
}

fn protobuf_codec() -> u8 {
    crate::payload::PROTOBUF.0
}

#[derive(Clone, Debug)]
pub struct DeadLetters {
    root: PathBuf,
    /// Seals new letters with its active key; opens sealed ones.
    keys: KeyRing,
}

const SEALED_MAGIC: &[u8; 4] = b"TSDL";
const SEALED_HEADER: usize = 4 + 1 + 1 + 16;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DeadLetters {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("dead-letter"),
            keys: KeyRing::default(),
        }
    }

    /// Letters are sealed with the ring's active key, and sealed ones opened.
    pub fn with_keys(mut self, keys: KeyRing) -> Self {
        self.keys = keys;
        self
    }

    fn aad(destination: &str, seq: u64, spans: u32, codec: u8) -> FrameAad {
        FrameAad::new(seq, 0, spans, codec, destination.as_bytes())
    }

    fn seal(&self, key_id: u32, l: &DeadLetter, payload: &[u8]) -> io::Result<Vec<u8>> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| io::Error::other(e.to_string()))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
        let key = self
            .keys
            .segment_key(key_id, &salt, l.seq)
            .map_err(io::Error::other)?;
        let codec = l.codec;
        let sealed = key.seal(
            nonce,
            &Self::aad(&l.destination, l.seq, l.spans, codec),
            payload,
        );
        let mut out = Vec::with_capacity(SEALED_HEADER + sealed.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.push(1);
        out.push(codec);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, l: &DeadLetter, file: &Path, mut bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let bad = |what: String| io::Error::other(format!("{}: {what}", file.display()));
        if bytes.len() < SEALED_HEADER || &bytes[..4] != SEALED_MAGIC || bytes[4] != 1 {
            return Err(bad(
                "not a sealed dead letter of a version this build reads".into(),
            ));
        }
        let codec = bytes[5];
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&bytes[6..22]);
        let sealed = &mut bytes[SEALED_HEADER..];
        let key_id =
            tracespool_storage::crypto::sealed_key_id(sealed).map_err(|e| bad(e.to_string()))?;
        let key = self
            .keys
            .segment_key(key_id, &salt, l.seq)
            .map_err(|e| bad(e.to_string()))?;
        let range = key
            .open(&Self::aad(&l.destination, l.seq, l.spans, codec), sealed)
            .map_err(|e| bad(e.to_string()))?;
        Ok(sealed[range].to_vec())
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
            codec: protobuf_codec(),
        };
        let stem = format!("{:020}", record.seq);
        // Kept as OTLP protobuf, whatever the log stored it as; a record this
        // build cannot decode is kept as stored, with its codec.
        let (protobuf, letter) = match crate::payload::protobuf(record.codec, &record.payload) {
            Ok(p) => {
                let bytes = p.len() as u64;
                (p, DeadLetter { bytes, ..letter })
            }
            Err(_) => (
                record.payload.clone(),
                DeadLetter {
                    codec: record.codec.0,
                    ..letter
                },
            ),
        };
        // The payload first: a dead letter is complete once its .json exists.
        match self.keys.active() {
            Some(key_id) => {
                let sealed = self.seal(key_id, &letter, &protobuf)?;
                write_atomically(&dir, &format!("{stem}.pb.sealed"), &sealed)?;
            }
            None => write_atomically(&dir, &format!("{stem}.pb"), &protobuf)?,
        }
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
        for ext in ["json", "pb", "pb.sealed"] {
            match fs::remove_file(dir.join(format!("{stem}.{ext}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        crate::fsio::sync_dir(&dir)
    }

    /// The payload of a dead letter (OTLP protobuf, unless its `codec` says
    /// otherwise), opened if it is sealed; a sealed one whose key is not configured
    /// is an error naming the key id.
    pub fn payload(&self, letter: &DeadLetter) -> io::Result<Vec<u8>> {
        let dir = self.dir(&letter.destination);
        let plain = dir.join(format!("{:020}.pb", letter.seq));
        match fs::read(&plain) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let sealed = dir.join(format!("{:020}.pb.sealed", letter.seq));
                let bytes = fs::read(&sealed)?;
                self.open(letter, &sealed, bytes)
            }
            r => r,
        }
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

    #[test]
    fn sealed_letters_hold_no_plaintext_and_open_only_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::default();
        ring.insert(4, [7; 32]).unwrap();
        ring.set_active(Some(4)).unwrap();
        let dl = DeadLetters::new(dir.path()).with_keys(ring.clone());
        let secret = b"\x0a\x0fcard-number-4242";
        let (stored, codec) = crate::payload::store(
            Bytes::from_static(secret),
            crate::payload::Compression::Zstd { level: 1 },
        );
        let record = Record {
            seq: 7,
            received_at: SystemTime::now(),
            span_count: 1,
            codec,
            idempotency_key: Bytes::new(),
            payload: stored,
        };
        let l = dl.store("backend", &record, "k", 1, "refused").unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("dead-letter/backend"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        for f in &files {
            let b = std::fs::read(f).unwrap();
            assert!(
                !b.windows(11).any(|w| w == b"card-number"),
                "{}",
                f.display()
            );
        }
        assert_eq!(dl.payload(&l).unwrap(), secret);
        // Without the key: an error naming it.
        let e = DeadLetters::new(dir.path()).payload(&l).unwrap_err();
        assert!(e.to_string().contains("key id 4"), "{e}");
        // Another key under the same id: refused.
        let mut wrong = KeyRing::default();
        wrong.insert(4, [8; 32]).unwrap();
        let e = DeadLetters::new(dir.path())
            .with_keys(wrong)
            .payload(&l)
            .unwrap_err();
        assert!(e.to_string().contains("authentication failed"), "{e}");
        dl.remove(&l).unwrap();
        assert!(dl.list(None).unwrap().is_empty());
        // A record of a codec this build cannot decode is kept as stored, sealed.
        let odd = Record {
            codec: tracespool_storage::Codec(9),
            payload: Bytes::from_static(b"card-number-in-codec-9"),
            ..record
        };
        let l = dl.store("backend", &odd, "k", 1, "unknown codec").unwrap();
        assert_eq!(l.codec, 9);
        assert_eq!(dl.payload(&l).unwrap(), b"card-number-in-codec-9");
        for f in std::fs::read_dir(dir.path().join("dead-letter/backend")).unwrap() {
            let b = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!b.windows(11).any(|w| w == b"card-number"));
        }
    }
}
