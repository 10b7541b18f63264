//! Encryption at rest: AES-256-GCM per record, under a key derived per segment.
//!
//! **Changing anything in this file changes the format** (`FORMAT.md`, "Encrypted
//! records").
//!
//! - Keys are 32 bytes, named by a non-zero `u32` id. A [`KeyRing`] holds every key
//!   the log may still need and names the one new records are written with.
//! - A segment's records are sealed under `HKDF-SHA256(salt = wal_id, ikm = key,
//!   info = "tracespool segment key v1" ‖ first_seq)`: the segment key. Records of
//!   one segment cannot be decrypted as records of another, and no key ever seals
//!   more records than one segment holds, so random 96-bit nonces stay far below
//!   the 2^32 bound AES-GCM sets for them.
//! - The sealed payload is `key_id (u32 LE) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`;
//!   the associated data binds it to the frame: `seq ‖ received_at ‖ span_count ‖
//!   codec ‖ idempotency key`. A record moved to another seq, segment or log, or
//!   with its header edited (and its CRCs recomputed), fails to open.
//!
//! Key bytes never leave this module: `Debug` prints ids only.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};

use crate::format::Frame;

/// Bytes an encrypted payload has beyond its plaintext: key id, nonce, tag.
pub const SEAL_OVERHEAD: usize = 4 + NONCE_LEN + 16;
/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;
const SEGMENT_KEY_INFO: &[u8] = b"tracespool segment key v1";

/// The keys a log is opened with: every key still needed to read, and the one new
/// records are sealed with (`None`: new records are written in plaintext).
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<u32, Arc<[u8; KEY_LEN]>>,
    active: Option<u32>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl KeyRing {
    /// Adds a key. Id 0 means "not encrypted" in the format and is refused.
    pub fn insert(&mut self, id: u32, key: [u8; KEY_LEN]) -> Result<(), String> {
        if id == 0 {
            return Err("key id 0 is reserved (it marks plaintext segments)".into());
        }
        if self.keys.insert(id, Arc::new(key)).is_some() {
            return Err(format!("key id {id} is given twice"));
        }
        Ok(())
    }

    /// New records are sealed with key `id` (which must be in the ring); `None`
    /// writes them in plaintext.
    pub fn set_active(&mut self, id: Option<u32>) -> Result<(), String> {
        if let Some(id) = id {
            if !self.keys.contains_key(&id) {
                return Err(format!("the active key id {id} is not among the keys"));
            }
        }
        self.active = id;
        Ok(())
    }

    pub fn active(&self) -> Option<u32> {
        self.active
    }

    pub fn has(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that seals (and opens) the records of one segment.
    pub fn segment_key(
        &self,
        id: u32,
        wal_id: &[u8; 16],
        first_seq: u64,
    ) -> Result<SegmentKey, SealError> {
        let key = self
            .keys
            .get(&id)
            .ok_or(SealError::MissingKey { key_id: id })?;
        Ok(SegmentKey::derive(id, key, wal_id, first_seq))
    }
}

/// A segment's key, derived once and used for each of its records.
pub struct SegmentKey {
    id: u32,
    first_seq: u64,
    key: LessSafeKey,
}

impl fmt::Debug for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentKey")
            .field("key_id", &self.id)
            .field("segment", &self.first_seq)
            .finish()
    }
}

struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

impl SegmentKey {
    fn derive(id: u32, key: &[u8; KEY_LEN], wal_id: &[u8; 16], first_seq: u64) -> Self {
        let mut info = Vec::with_capacity(SEGMENT_KEY_INFO.len() + 8);
        info.extend_from_slice(SEGMENT_KEY_INFO);
        info.extend_from_slice(&first_seq.to_le_bytes());
        let prk = Salt::new(HKDF_SHA256, wal_id).extract(key);
        let info = [&info[..]];
        let okm = prk
            .expand(&info, Len32)
            .expect("32 bytes are within HKDF-SHA256's output limit");
        let mut bytes = [0u8; KEY_LEN];
        okm.fill(&mut bytes)
            .expect("the buffer has the length asked for");
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES-256 key");
        Self {
            id,
            first_seq,
            key: LessSafeKey::new(unbound),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn segment(&self) -> u64 {
        self.first_seq
    }

    /// Seals `plaintext` for the frame described by `aad`, with `nonce` (fresh
    /// random bytes: the caller draws them).
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &FrameAad, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.bytes()),
                &mut out[4 + NONCE_LEN..],
            )
            .expect("AES-GCM seals any payload under 2^36 bytes");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a sealed payload in place; returns the plaintext's range in `buf`.
    pub fn open(
        &self,
        aad: &FrameAad,
        buf: &mut [u8],
    ) -> Result<std::ops::Range<usize>, SealError> {
        let id = sealed_key_id(buf)?;
        if id != self.id {
            return Err(SealError::Malformed("the record names another key"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[4..4 + NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.bytes()),
                &mut buf[4 + NONCE_LEN..],
            )
            .map_err(|_| SealError::Unauthentic { key_id: id })?;
        let len = plain.len();
        Ok(4 + NONCE_LEN..4 + NONCE_LEN + len)
    }
}

/// The key of the segment whose records were opened last, kept for the next one
/// (readers go through a segment's records in order).
#[derive(Debug, Default)]
pub struct KeyCache(Option<SegmentKey>);

impl KeyCache {
    /// Opens the sealed payload of `frame`, a frame of `segment` in the log
    /// `wal_id`: the plaintext, or why not.
    pub fn open(
        &mut self,
        ring: &KeyRing,
        wal_id: &[u8; 16],
        segment: u64,
        frame: &Frame<'_>,
    ) -> Result<Bytes, SealError> {
        let key_id = sealed_key_id(frame.payload)?;
        if self
            .0
            .as_ref()
            .is_none_or(|k| k.segment() != segment || k.id() != key_id)
        {
            self.0 = Some(ring.segment_key(key_id, wal_id, segment)?);
        }
        let key = self.0.as_ref().expect("derived above");
        let mut buf = frame.payload.to_vec();
        let range = key.open(&FrameAad::of(frame), &mut buf)?;
        buf.truncate(range.end);
        Ok(Bytes::from(buf).slice(range.start..))
    }
}

/// The key id a sealed payload names.
pub fn sealed_key_id(sealed: &[u8]) -> Result<u32, SealError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(SealError::Malformed("shorter than key id, nonce and tag"));
    }
    let id = u32::from_le_bytes([sealed[0], sealed[1], sealed[2], sealed[3]]);
    if id == 0 {
        return Err(SealError::Malformed("key id 0"));
    }
    Ok(id)
}

/// What a record's ciphertext is bound to: `seq ‖ received_at ‖ span_count ‖ codec
/// ‖ key_len (u32) ‖ key`, integers little-endian.
pub struct FrameAad(Vec<u8>);

impl FrameAad {
    pub fn new(seq: u64, received_at_nanos: u64, span_count: u32, codec: u8, key: &[u8]) -> Self {
        let mut b = Vec::with_capacity(25 + key.len());
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&received_at_nanos.to_le_bytes());
        b.extend_from_slice(&span_count.to_le_bytes());
        b.push(codec);
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key);
        Self(b)
    }

    /// What a frame read back is bound to.
    pub fn of(frame: &Frame<'_>) -> Self {
        let h = &frame.header;
        Self::new(
            h.seq,
            h.received_at_nanos,
            h.span_count,
            h.codec.0,
            frame.key,
        )
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Why a sealed payload could not be opened (or sealed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The record names a key the ring does not hold.
    #[error("key id {key_id} is not configured")]
    MissingKey { key_id: u32 },
    /// The tag does not verify: the wrong key under that id, or bytes changed
    /// after sealing (and the frame's CRCs recomputed).
    #[error("authentication failed under key id {key_id} (a different key under that id, or the record was altered)")]
    Unauthentic { key_id: u32 },
    /// Too short to be a sealed payload, or key id 0.
    #[error("malformed sealed payload: {0}")]
    Malformed(&'static str),
}

/// Random nonces, drawn from the OS in blocks (one `getrandom` per 340 records).
pub struct NonceSource {
    pool: [u8; 4080],
    at: usize,
}

impl Default for NonceSource {
    fn default() -> Self {
        Self {
            pool: [0; 4080],
            at: 4080,
        }
    }
}

impl NonceSource {
    pub fn draw(&mut self) -> Result<[u8; NONCE_LEN], String> {
        if self.at + NONCE_LEN > self.pool.len() {
            getrandom::fill(&mut self.pool).map_err(|e| format!("getrandom: {e}"))?;
            self.at = 0;
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&self.pool[self.at..self.at + NONCE_LEN]);
        // Never hand out the same bytes twice.
        self.pool[self.at..self.at + NONCE_LEN].fill(0);
        self.at += NONCE_LEN;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(id: u32, byte: u8) -> KeyRing {
        let mut r = KeyRing::default();
        r.insert(id, [byte; KEY_LEN]).unwrap();
        r.set_active(Some(id)).unwrap();
        r
    }

    #[test]
    fn sealed_records_open_only_under_their_key_segment_log_and_header() {
        let ring = ring_with(7, 1);
        let wal = [9u8; 16];
        let k = ring.segment_key(7, &wal, 100).unwrap();
        let aad = FrameAad::new(105, 1, 3, 2, b"key");
        let mut nonces = NonceSource::default();
        let sealed = k.seal(nonces.draw().unwrap(), &aad, b"secret attribute value");
        assert_eq!(sealed.len(), 22 + SEAL_OVERHEAD);
        assert_eq!(sealed_key_id(&sealed), Ok(7));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let mut buf = sealed.clone();
        let r = k.open(&aad, &mut buf).unwrap();
        assert_eq!(&buf[r], b"secret attribute value");

        let unauthentic = Err(SealError::Unauthentic { key_id: 7 });
        // Another seq, header field or key.
        for other in [
            FrameAad::new(106, 1, 3, 2, b"key"),
            FrameAad::new(105, 2, 3, 2, b"key"),
            FrameAad::new(105, 1, 4, 2, b"key"),
            FrameAad::new(105, 1, 3, 1, b"key"),
            FrameAad::new(105, 1, 3, 2, b"kex"),
        ] {
            assert_eq!(k.open(&other, &mut sealed.clone()), unauthentic);
        }
        // Another segment or log.
        let other_segment = ring.segment_key(7, &wal, 101).unwrap();
        assert_eq!(other_segment.open(&aad, &mut sealed.clone()), unauthentic);
        let other_log = ring.segment_key(7, &[8; 16], 100).unwrap();
        assert_eq!(other_log.open(&aad, &mut sealed.clone()), unauthentic);
        // A different key under the same id.
        let wrong = ring_with(7, 2).segment_key(7, &wal, 100).unwrap();
        assert_eq!(wrong.open(&aad, &mut sealed.clone()), unauthentic);
        // Every flipped bit.
        for i in 4..sealed.len() {
            let mut c = sealed.clone();
            c[i] ^= 0x10;
            assert!(k.open(&aad, &mut c).is_err(), "flip at {i} undetected");
        }
        assert_eq!(
            KeyRing::default().segment_key(7, &wal, 100).unwrap_err(),
            SealError::MissingKey { key_id: 7 }
        );
    }

    #[test]
    fn the_ring_refuses_id_zero_repeats_and_an_absent_active_key_and_hides_keys() {
        let mut r = KeyRing::default();
        assert!(r.insert(0, [1; 32]).is_err());
        r.insert(1, [0xAB; 32]).unwrap();
        assert!(r.insert(1, [2; 32]).is_err());
        assert!(r.set_active(Some(2)).is_err());
        r.set_active(Some(1)).unwrap();
        let shown = format!("{r:?}");
        assert!(shown.contains("key_ids: [1]"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn nonces_are_not_repeated() {
        let mut n = NonceSource::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            assert!(seen.insert(n.draw().unwrap()));
        }
    }
}
