//! The on-disk format: segment headers and record frames.
//!
//! **Changing anything in this file changes the format.** `storage/FORMAT.md` is the
//! normative description; the constants and layouts here must agree with it, and the
//! known-answer tests at the bottom pin both.
//!
//! All integers are little-endian. Checksums are CRC-32/IEEE (reflected polynomial
//! 0xEDB88320, init 0xFFFFFFFF, final xor 0xFFFFFFFF; "123456789" → 0xCBF43926), as
//! computed by `crc32fast`.

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TSPOOLWL";
/// The segment format version this build writes.
pub const FORMAT_VERSION: u32 = 3;
/// Segment format versions this build reads.
pub const READABLE_VERSIONS: [u32; 3] = [1, 2, 3];
/// Frame flag: the payload is sealed (AES-256-GCM, `crypto.rs`). Only version-3
/// segments hold such frames; every other flag bit is reserved and zero.
pub const FLAG_SEALED: u8 = 1;
/// Size of the segment header; the first record frame starts at this offset.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// First four bytes of every record frame this build writes (`"TSR2"` as ASCII).
/// Recovery resynchronises on it (and on [`RECORD_MAGIC_V1`]) after damage.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TSR2");
/// The magic of version-1 frames (`"TSR1"`), still read.
pub const RECORD_MAGIC_V1: u32 = u32::from_le_bytes(*b"TSR1");
/// Size of the fixed record header (version 2) that precedes the key and payload.
pub const RECORD_HEADER_LEN: usize = 48;
/// Size of a version-1 record header.
pub const RECORD_HEADER_LEN_V1: usize = 40;
/// The smallest frame of any version: bounds how many records a run of bytes can
/// have held.
pub const MIN_FRAME_LEN: usize = RECORD_HEADER_LEN_V1;
/// Largest idempotency key a record can carry.
pub const MAX_KEY_LEN: usize = 1024;
/// Hard upper bound on a payload, independent of configuration. A header claiming
/// more is treated as damage rather than trusted to size a buffer.
pub const MAX_PAYLOAD_LEN: u64 = 1 << 30;

/// How a record's payload is encoded. The storage layer treats the value as opaque;
/// the registry of values lives in `FORMAT.md` and is assigned by the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Codec(pub u8);

/// The header at offset 0 of every segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the first record this segment holds (or will hold).
    pub first_seq: u64,
    /// When the segment was created, nanoseconds since the Unix epoch.
    pub created_at_nanos: u64,
    /// Random identity of the log this segment belongs to.
    pub wal_id: [u8; 16],
    /// Version 2: when non-zero, the seqs `skipped_from..first_seq` were never
    /// given to a record that survived — skipped when the log reopened after an
    /// unclean stop, so that no seq a reader may have seen is ever assigned again.
    pub skipped_from: u64,
    /// Version 3: the id of the key every record of this segment is sealed with;
    /// 0 for a segment of plaintext records (and for versions 1 and 2).
    pub key_id: u32,
}

/// Why a segment header was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentHeaderError {
    /// The file is shorter than a header.
    Short { len: usize },
    /// The first eight bytes are not [`SEGMENT_MAGIC`].
    BadMagic,
    /// The header checksum does not match its contents.
    BadChecksum { expected: u32, actual: u32 },
    /// A well-formed header of a version this build does not understand.
    UnsupportedVersion { found: u32 },
}

impl std::fmt::Display for SegmentHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short { len } => {
                write!(f, "file is {len} bytes, shorter than the 64-byte header")
            }
            Self::BadMagic => write!(f, "bad magic (not a tracespool segment)"),
            Self::BadChecksum { expected, actual } => {
                write!(
                    f,
                    "header checksum expected {expected:#010x}, got {actual:#010x}"
                )
            }
            Self::UnsupportedVersion { found } => {
                write!(
                    f,
                    "format version {found}, this build reads versions {READABLE_VERSIONS:?}"
                )
            }
        }
    }
}

impl SegmentHeader {
    /// Encodes a version-3 header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_at_nanos.to_le_bytes());
        b[32..48].copy_from_slice(&self.wal_id);
        b[48..56].copy_from_slice(&self.skipped_from.to_le_bytes());
        b[56..60].copy_from_slice(&self.key_id.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Encodes a version-1 header (for tests of logs written by earlier builds).
    #[doc(hidden)]
    pub fn encode_v1(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = self.encode();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[48..60].fill(0);
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Encodes a version-2 header (what the previous build wrote), for tests.
    #[doc(hidden)]
    pub fn encode_v2(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = self.encode();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[56..60].fill(0);
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, SegmentHeaderError> {
        Self::decode_versioned(b).map(|(h, _)| h)
    }

    /// The header and its format version.
    pub fn decode_versioned(b: &[u8]) -> Result<(Self, u32), SegmentHeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(SegmentHeaderError::Short { len: b.len() });
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        let expected = le_u32(&b[60..64]);
        let actual = crc32fast::hash(&b[0..60]);
        if expected != actual {
            return Err(SegmentHeaderError::BadChecksum { expected, actual });
        }
        let version = le_u32(&b[8..12]);
        if !READABLE_VERSIONS.contains(&version) {
            return Err(SegmentHeaderError::UnsupportedVersion { found: version });
        }
        let mut wal_id = [0u8; 16];
        wal_id.copy_from_slice(&b[32..48]);
        Ok((
            Self {
                first_seq: le_u64(&b[16..24]),
                created_at_nanos: le_u64(&b[24..32]),
                wal_id,
                skipped_from: if version >= 2 { le_u64(&b[48..56]) } else { 0 },
                key_id: if version >= 3 { le_u32(&b[56..60]) } else { 0 },
            },
            version,
        ))
    }
}

/// The fixed part of a record frame, as decoded from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Frame version: 1 (`TSR1`, 40-byte header) or 2 (`TSR2`, 48 bytes).
    pub version: u8,
    pub payload_len: u32,
    pub seq: u64,
    pub received_at_nanos: u64,
    pub span_count: u32,
    pub key_len: u16,
    pub codec: Codec,
    /// [`FLAG_SEALED`] or 0.
    pub flags: u8,
    /// Version 2: every seq up to this one was durable (covered by a completed
    /// `fdatasync`) before this frame was written. 0 for version 1 (unknown).
    pub durable_through: u64,
    pub record_crc: u32,
}

impl RecordHeader {
    /// Bytes of the fixed header.
    pub fn header_len(&self) -> usize {
        if self.version == 1 {
            RECORD_HEADER_LEN_V1
        } else {
            RECORD_HEADER_LEN
        }
    }

    /// Total bytes of the frame this header starts: header, key and payload.
    pub fn frame_len(&self) -> usize {
        self.header_len() + self.key_len as usize + self.payload_len as usize
    }
}

/// Bytes a record with this key and payload occupies on disk (version 2).
pub fn frame_len(key_len: usize, payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + key_len + payload_len) as u64
}

/// Appends one complete version-2 frame to `out`.
///
/// The caller guarantees `key.len() <= MAX_KEY_LEN` and
/// `payload.len() as u64 <= MAX_PAYLOAD_LEN`.
#[allow(clippy::too_many_arguments)]
pub fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    received_at_nanos: u64,
    span_count: u32,
    codec: Codec,
    durable_through: u64,
    key: &[u8],
    payload: &[u8],
) {
    encode_head(
        out,
        seq,
        received_at_nanos,
        span_count,
        codec,
        0,
        durable_through,
        key,
        payload,
    );
    out.extend_from_slice(payload);
}

/// Appends the header and key of a version-2 frame to `out`; the payload, which
/// the checksum covers, is written right after them by the caller (the writer
/// hands it to `pwritev` without copying it).
#[allow(clippy::too_many_arguments)]
pub fn encode_head(
    out: &mut Vec<u8>,
    seq: u64,
    received_at_nanos: u64,
    span_count: u32,
    codec: Codec,
    flags: u8,
    durable_through: u64,
    key: &[u8],
    payload: &[u8],
) {
    debug_assert!(key.len() <= MAX_KEY_LEN);
    debug_assert!(payload.len() as u64 <= MAX_PAYLOAD_LEN);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&received_at_nanos.to_le_bytes());
    h[24..28].copy_from_slice(&span_count.to_le_bytes());
    h[28..30].copy_from_slice(&(key.len() as u16).to_le_bytes());
    h[30] = codec.0;
    debug_assert_eq!(flags & !FLAG_SEALED, 0);
    h[31] = flags;
    h[32..40].copy_from_slice(&durable_through.to_le_bytes());
    let header_crc = crc32fast::hash(&h[0..40]);
    h[40..44].copy_from_slice(&header_crc.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[0..40]);
    hasher.update(key);
    hasher.update(payload);
    h[44..48].copy_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(key);
}

/// Appends one complete version-1 frame (what earlier builds wrote), for tests of
/// old logs.
#[doc(hidden)]
pub fn encode_record_v1(
    out: &mut Vec<u8>,
    seq: u64,
    received_at_nanos: u64,
    span_count: u32,
    codec: Codec,
    key: &[u8],
    payload: &[u8],
) {
    let mut h = [0u8; RECORD_HEADER_LEN_V1];
    h[0..4].copy_from_slice(&RECORD_MAGIC_V1.to_le_bytes());
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&received_at_nanos.to_le_bytes());
    h[24..28].copy_from_slice(&span_count.to_le_bytes());
    h[28..30].copy_from_slice(&(key.len() as u16).to_le_bytes());
    h[30] = codec.0;
    let header_crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&header_crc.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[0..32]);
    hasher.update(key);
    hasher.update(payload);
    h[36..40].copy_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(key);
    out.extend_from_slice(payload);
}

/// Why the bytes at an offset are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes remain than a header needs.
    TruncatedHeader { available: usize },
    /// The first four bytes are not [`RECORD_MAGIC`].
    BadMagic { found: u32 },
    /// The header checksum fails: the lengths cannot be trusted.
    BadHeaderChecksum { expected: u32, actual: u32 },
    /// A checksummed header with impossible values (reserved bits set, key or payload
    /// beyond the hard limits).
    InvalidHeader,
    /// The header is intact but the frame extends past the readable end.
    TruncatedBody {
        seq: u64,
        needed: usize,
        available: usize,
    },
    /// The header is intact but the checksum over header, key and payload fails.
    BadRecordChecksum {
        seq: u64,
        span_count: u32,
        expected: u32,
        actual: u32,
    },
}

impl FrameError {
    /// Sequence number named by an intact header, if the header was intact.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::TruncatedBody { seq, .. } | Self::BadRecordChecksum { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// Bytes the frame occupies when its header is intact (its length can be trusted).
    pub fn trusted_frame_len(&self, bytes: &[u8]) -> Option<usize> {
        match self {
            Self::BadRecordChecksum { .. } => decode_header(bytes).ok().map(|h| h.frame_len()),
            _ => None,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TruncatedHeader { available } => {
                write!(
                    f,
                    "truncated header: {available} of {RECORD_HEADER_LEN} bytes present"
                )
            }
            Self::BadMagic { found } => write!(f, "bad record magic {found:#010x}"),
            Self::BadHeaderChecksum { expected, actual } => {
                write!(
                    f,
                    "header checksum expected {expected:#010x}, got {actual:#010x}"
                )
            }
            Self::InvalidHeader => write!(f, "header fields out of range"),
            Self::TruncatedBody {
                seq,
                needed,
                available,
            } => {
                write!(
                    f,
                    "record seq {seq} truncated: needs {needed} bytes, {available} present"
                )
            }
            Self::BadRecordChecksum {
                seq,
                expected,
                actual,
                ..
            } => write!(
                f,
                "record seq {seq} checksum expected {expected:#010x}, got {actual:#010x}"
            ),
        }
    }
}

/// Decodes and checks the fixed header at the start of `b` (only the header CRC),
/// of either frame version (the magic says which).
pub fn decode_header(b: &[u8]) -> Result<RecordHeader, FrameError> {
    if b.len() < 4 {
        return Err(FrameError::TruncatedHeader { available: b.len() });
    }
    let magic = le_u32(&b[0..4]);
    let (version, len, crc_at) = match magic {
        RECORD_MAGIC => (2u8, RECORD_HEADER_LEN, 40),
        RECORD_MAGIC_V1 => (1u8, RECORD_HEADER_LEN_V1, 32),
        found => return Err(FrameError::BadMagic { found }),
    };
    if b.len() < len {
        return Err(FrameError::TruncatedHeader { available: b.len() });
    }
    let expected = le_u32(&b[crc_at..crc_at + 4]);
    let actual = crc32fast::hash(&b[0..crc_at]);
    if expected != actual {
        return Err(FrameError::BadHeaderChecksum { expected, actual });
    }
    let header = RecordHeader {
        version,
        payload_len: le_u32(&b[4..8]),
        seq: le_u64(&b[8..16]),
        received_at_nanos: le_u64(&b[16..24]),
        span_count: le_u32(&b[24..28]),
        key_len: u16::from_le_bytes([b[28], b[29]]),
        codec: Codec(b[30]),
        flags: b[31],
        durable_through: if version == 2 { le_u64(&b[32..40]) } else { 0 },
        record_crc: le_u32(&b[crc_at + 4..crc_at + 8]),
    };
    if b[31] & !FLAG_SEALED != 0
        || (version == 1 && b[31] != 0)
        || header.key_len as usize > MAX_KEY_LEN
        || header.payload_len as u64 > MAX_PAYLOAD_LEN
        || (version == 2 && header.durable_through >= header.seq)
    {
        return Err(FrameError::InvalidHeader);
    }
    Ok(header)
}

/// A frame that passed every check, borrowing from the bytes it was decoded from.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub header: RecordHeader,
    pub key: &'a [u8],
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the whole frame occupies.
    pub fn frame_len(&self) -> usize {
        self.header.frame_len()
    }
}

/// Decodes the frame at the start of `b`, checking both checksums.
pub fn decode_frame(b: &[u8]) -> Result<Frame<'_>, FrameError> {
    let header = decode_header(b)?;
    let needed = header.frame_len();
    if b.len() < needed {
        return Err(FrameError::TruncatedBody {
            seq: header.seq,
            needed,
            available: b.len(),
        });
    }
    let hl = header.header_len();
    let actual = {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&b[0..hl - 8]);
        hasher.update(&b[hl..needed]);
        hasher.finalize()
    };
    if actual != header.record_crc {
        return Err(FrameError::BadRecordChecksum {
            seq: header.seq,
            span_count: header.span_count,
            expected: header.record_crc,
            actual,
        });
    }
    let key_end = hl + header.key_len as usize;
    Ok(Frame {
        header,
        key: &b[hl..key_end],
        payload: &b[key_end..needed],
    })
}

/// Searches `b` from `from` for the next offset holding a fully valid frame (of
/// either version) whose sequence number satisfies `accept`. Used to resynchronise
/// after damage.
pub fn resync(b: &[u8], from: usize, accept: impl Fn(u64) -> bool) -> Option<usize> {
    let mut pos = from;
    while pos + RECORD_HEADER_LEN_V1 <= b.len() {
        let at = pos + memfind(&b[pos..])?;
        if let Ok(frame) = decode_frame(&b[at..]) {
            if accept(frame.header.seq) {
                return Some(at);
            }
        }
        pos = at + 1;
    }
    None
}

/// The next offset where `TSR1` or `TSR2` starts.
fn memfind(haystack: &[u8]) -> Option<usize> {
    // 'T' is rare in payloads; scanning for it and checking the rest is as fast as
    // a general substring search for a 4-byte needle.
    let mut start = 0;
    while start + 4 <= haystack.len() {
        let i = haystack[start..haystack.len() - 3]
            .iter()
            .position(|&c| c == b'T')?;
        let at = start + i;
        if &haystack[at + 1..at + 3] == b"SR" && matches!(haystack[at + 3], b'1' | b'2') {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_crc32_ieee_known_answer() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn segment_header_known_answer() {
        let h = SegmentHeader {
            first_seq: 1,
            created_at_nanos: 0,
            wal_id: [0xAB; 16],
            skipped_from: 0x0102,
            key_id: 0x0A0B,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"TSPOOLWL");
        assert_eq!(&b[8..12], &[3, 0, 0, 0]);
        assert_eq!(&b[12..16], &[64, 0, 0, 0]);
        assert_eq!(&b[16..24], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[32..48], &[0xAB; 16]);
        assert_eq!(&b[48..56], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[56..60], &[0x0B, 0x0A, 0, 0]);
        assert_eq!(&b[60..64], &crc32fast::hash(&b[0..60]).to_le_bytes());
        assert_eq!(SegmentHeader::decode_versioned(&b), Ok((h.clone(), 3)));
        // Version 2 (the previous build): no key id, skipped_from kept.
        let b = h.encode_v2();
        assert_eq!(&b[8..12], &[2, 0, 0, 0]);
        let want = SegmentHeader { key_id: 0, ..h };
        assert_eq!(SegmentHeader::decode_versioned(&b), Ok((want, 2)));
    }

    #[test]
    fn version_1_segment_headers_are_still_read() {
        let h = SegmentHeader {
            first_seq: 9,
            created_at_nanos: 3,
            wal_id: [7; 16],
            skipped_from: 0,
            key_id: 0,
        };
        let b = h.encode_v1();
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(SegmentHeader::decode_versioned(&b), Ok((h, 1)));
    }

    #[test]
    fn segment_header_rejects_unknown_version_and_damage() {
        let h = SegmentHeader {
            first_seq: 7,
            created_at_nanos: 9,
            wal_id: [1; 16],
            skipped_from: 0,
            key_id: 0,
        };
        let mut b = h.encode();
        b[8] = 4;
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(SegmentHeaderError::UnsupportedVersion { found: 4 })
        );
        let mut b = h.encode();
        b[20] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&b),
            Err(SegmentHeaderError::BadChecksum { .. })
        ));
        assert_eq!(
            SegmentHeader::decode(&b[..10]),
            Err(SegmentHeaderError::Short { len: 10 })
        );
    }

    #[test]
    fn record_frame_known_answer() {
        let mut out = Vec::new();
        encode_record(&mut out, 0x0102, 5, 3, Codec(1), 0x0101, b"k", b"payload");
        assert_eq!(out.len(), 48 + 1 + 7);
        assert_eq!(&out[0..4], b"TSR2");
        assert_eq!(&out[4..8], &[7, 0, 0, 0]);
        assert_eq!(&out[8..16], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[16..24], &[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[24..28], &[3, 0, 0, 0]);
        assert_eq!(&out[28..30], &[1, 0]);
        assert_eq!(out[30], 1);
        assert_eq!(out[31], 0);
        assert_eq!(&out[32..40], &[1, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[40..44], &crc32fast::hash(&out[0..40]).to_le_bytes());
        let mut all = out[0..40].to_vec();
        all.extend_from_slice(b"kpayload");
        assert_eq!(&out[44..48], &crc32fast::hash(&all).to_le_bytes());
        let f = decode_frame(&out).unwrap();
        assert_eq!(f.header.version, 2);
        assert_eq!(f.header.seq, 0x0102);
        assert_eq!(f.header.span_count, 3);
        assert_eq!(f.header.durable_through, 0x0101);
        assert_eq!(f.key, b"k");
        assert_eq!(f.payload, b"payload");
        assert_eq!(f.frame_len(), out.len());
    }

    #[test]
    fn version_1_frames_are_still_read() {
        let mut out = Vec::new();
        encode_record_v1(&mut out, 0x0102, 5, 3, Codec(1), b"k", b"payload");
        assert_eq!(out.len(), 40 + 1 + 7);
        assert_eq!(&out[0..4], b"TSR1");
        assert_eq!(&out[32..36], &crc32fast::hash(&out[0..32]).to_le_bytes());
        let f = decode_frame(&out).unwrap();
        assert_eq!(f.header.version, 1);
        assert_eq!(f.header.durable_through, 0);
        assert_eq!((f.key, f.payload), (&b"k"[..], &b"payload"[..]));
    }

    #[test]
    fn the_sealed_flag_is_the_only_flag_and_only_in_version_2_frames() {
        let mut out = Vec::new();
        encode_head(&mut out, 5, 0, 1, Codec(1), FLAG_SEALED, 4, b"", b"x");
        out.push(b'x');
        assert_eq!(decode_frame(&out).unwrap().header.flags, FLAG_SEALED);
        for flags in [2u8, 0x80, 3] {
            let mut b = out.clone();
            b[31] = flags;
            let crc = crc32fast::hash(&b[0..40]);
            b[40..44].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode_header(&b).unwrap_err(), FrameError::InvalidHeader);
        }
        let mut v1 = Vec::new();
        encode_record_v1(&mut v1, 5, 0, 1, Codec(1), b"", b"x");
        v1[31] = FLAG_SEALED;
        let crc = crc32fast::hash(&v1[0..32]);
        v1[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&v1).unwrap_err(), FrameError::InvalidHeader);
    }

    #[test]
    fn a_frame_claiming_its_own_seq_durable_is_invalid() {
        let mut out = Vec::new();
        encode_record(&mut out, 5, 0, 1, Codec(1), 5, b"", b"x");
        assert_eq!(decode_frame(&out).unwrap_err(), FrameError::InvalidHeader);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        for v1 in [false, true] {
            let mut out = Vec::new();
            if v1 {
                encode_record_v1(&mut out, 42, 1, 1, Codec(1), b"key", &[7u8; 100]);
            } else {
                encode_record(&mut out, 42, 1, 1, Codec(1), 41, b"key", &[7u8; 100]);
            }
            for i in 0..out.len() {
                for bit in 0..8 {
                    let mut c = out.clone();
                    c[i] ^= 1 << bit;
                    assert!(
                        decode_frame(&c).is_err(),
                        "flip of bit {bit} at {i} undetected (v1: {v1})"
                    );
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 1, 1, Codec(1), 0, b"key", &[7u8; 100]);
        for len in 0..out.len() {
            assert!(
                decode_frame(&out[..len]).is_err(),
                "truncation to {len} undetected"
            );
        }
    }

    #[test]
    fn resync_finds_next_valid_frame_after_garbage() {
        let mut out = vec![0x31u8; 13]; // garbage, includes stray 'T'-less bytes
        out.extend_from_slice(b"TSR2 not a header at all................................");
        let at = out.len();
        encode_record(&mut out, 9, 1, 1, Codec(1), 8, b"", b"x");
        assert_eq!(resync(&out, 0, |_| true), Some(at));
        assert_eq!(resync(&out, 0, |s| s > 9), None);
        assert_eq!(resync(&out, at + 1, |_| true), None);
        let at1 = out.len();
        encode_record_v1(&mut out, 10, 1, 1, Codec(1), b"", b"y");
        assert_eq!(resync(&out, at + 1, |_| true), Some(at1));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = decode_frame(&bytes);
            let _ = decode_header(&bytes);
            let _ = SegmentHeader::decode(&bytes);
            let _ = resync(&bytes, 0, |_| true);
        }

        #[test]
        fn frames_round_trip(
            seq in 1u64..u64::MAX,
            at in proptest::prelude::any::<u64>(),
            spans in proptest::prelude::any::<u32>(),
            codec in proptest::prelude::any::<u8>(),
            durable_back in 1u64..1000,
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..MAX_KEY_LEN),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        ) {
            let durable = seq.saturating_sub(durable_back);
            let mut out = vec![0xEEu8; 7];
            encode_record(&mut out, seq, at, spans, Codec(codec), durable, &key, &payload);
            let f = decode_frame(&out[7..]).unwrap();
            proptest::prop_assert_eq!(f.header.seq, seq);
            proptest::prop_assert_eq!(f.header.received_at_nanos, at);
            proptest::prop_assert_eq!(f.header.span_count, spans);
            proptest::prop_assert_eq!(f.header.codec, Codec(codec));
            proptest::prop_assert_eq!(f.header.durable_through, durable);
            proptest::prop_assert_eq!(f.key, &key[..]);
            proptest::prop_assert_eq!(f.payload, &payload[..]);
            proptest::prop_assert_eq!(resync(&out, 0, |_| true), Some(7));
        }
    }
}
