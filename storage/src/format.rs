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
/// The segment format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header; the first record frame starts at this offset.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// First four bytes of every record frame (`"TSR1"` when read as ASCII). Recovery
/// resynchronises on it after damage.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TSR1");
/// Size of the fixed record header that precedes the key and the payload.
pub const RECORD_HEADER_LEN: usize = 40;
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
                    "format version {found}, this build reads version {FORMAT_VERSION}"
                )
            }
        }
    }
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_at_nanos.to_le_bytes());
        b[32..48].copy_from_slice(&self.wal_id);
        // 48..60 reserved, zero.
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, SegmentHeaderError> {
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
        if version != FORMAT_VERSION {
            return Err(SegmentHeaderError::UnsupportedVersion { found: version });
        }
        let mut wal_id = [0u8; 16];
        wal_id.copy_from_slice(&b[32..48]);
        Ok(Self {
            first_seq: le_u64(&b[16..24]),
            created_at_nanos: le_u64(&b[24..32]),
            wal_id,
        })
    }
}

/// The fixed part of a record frame, as decoded from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_len: u32,
    pub seq: u64,
    pub received_at_nanos: u64,
    pub span_count: u32,
    pub key_len: u16,
    pub codec: Codec,
    pub record_crc: u32,
}

impl RecordHeader {
    /// Total bytes of the frame this header starts: header, key and payload.
    pub fn frame_len(&self) -> usize {
        RECORD_HEADER_LEN + self.key_len as usize + self.payload_len as usize
    }
}

/// Bytes a record with this key and payload occupies on disk.
pub fn frame_len(key_len: usize, payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + key_len + payload_len) as u64
}

/// Appends one complete frame to `out`.
///
/// The caller guarantees `key.len() <= MAX_KEY_LEN` and
/// `payload.len() as u64 <= MAX_PAYLOAD_LEN`.
pub fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    received_at_nanos: u64,
    span_count: u32,
    codec: Codec,
    key: &[u8],
    payload: &[u8],
) {
    encode_head(out, seq, received_at_nanos, span_count, codec, key, payload);
    out.extend_from_slice(payload);
}

/// Appends the header and key of a frame to `out`; the payload, which the checksum
/// covers, is written right after them by the caller (the writer hands it to
/// `pwritev` without copying it).
pub fn encode_head(
    out: &mut Vec<u8>,
    seq: u64,
    received_at_nanos: u64,
    span_count: u32,
    codec: Codec,
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
    h[31] = 0; // flags, reserved
    let header_crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&header_crc.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[0..32]);
    hasher.update(key);
    hasher.update(payload);
    h[36..40].copy_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(key);
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

/// Decodes and checks the fixed header at the start of `b` (only the header CRC).
pub fn decode_header(b: &[u8]) -> Result<RecordHeader, FrameError> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(FrameError::TruncatedHeader { available: b.len() });
    }
    let magic = le_u32(&b[0..4]);
    if magic != RECORD_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let expected = le_u32(&b[32..36]);
    let actual = crc32fast::hash(&b[0..32]);
    if expected != actual {
        return Err(FrameError::BadHeaderChecksum { expected, actual });
    }
    let header = RecordHeader {
        payload_len: le_u32(&b[4..8]),
        seq: le_u64(&b[8..16]),
        received_at_nanos: le_u64(&b[16..24]),
        span_count: le_u32(&b[24..28]),
        key_len: u16::from_le_bytes([b[28], b[29]]),
        codec: Codec(b[30]),
        record_crc: le_u32(&b[36..40]),
    };
    if b[31] != 0
        || header.key_len as usize > MAX_KEY_LEN
        || header.payload_len as u64 > MAX_PAYLOAD_LEN
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
    let actual = {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&b[0..32]);
        hasher.update(&b[RECORD_HEADER_LEN..needed]);
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
    let key_end = RECORD_HEADER_LEN + header.key_len as usize;
    Ok(Frame {
        header,
        key: &b[RECORD_HEADER_LEN..key_end],
        payload: &b[key_end..needed],
    })
}

/// Searches `b` from `from` for the next offset holding a fully valid frame whose
/// sequence number satisfies `accept`. Used to resynchronise after damage.
pub fn resync(b: &[u8], from: usize, accept: impl Fn(u64) -> bool) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut pos = from;
    while pos + RECORD_HEADER_LEN <= b.len() {
        let idx = memfind(&b[pos..], &magic)?;
        let at = pos + idx;
        if let Ok(frame) = decode_frame(&b[at..]) {
            if accept(frame.header.seq) {
                return Some(at);
            }
        }
        pos = at + 1;
    }
    None
}

fn memfind(haystack: &[u8], needle: &[u8; 4]) -> Option<usize> {
    // The first byte is rare in payloads; scanning for it and checking the rest is
    // as fast as a general substring search for a 4-byte needle.
    let mut start = 0;
    while start + 4 <= haystack.len() {
        let i = haystack[start..haystack.len() - 3]
            .iter()
            .position(|&c| c == needle[0])?;
        let at = start + i;
        if haystack[at..at + 4] == needle[..] {
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
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"TSPOOLWL");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[12..16], &[64, 0, 0, 0]);
        assert_eq!(&b[16..24], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[60..64], &crc32fast::hash(&b[0..60]).to_le_bytes());
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
    }

    #[test]
    fn segment_header_rejects_unknown_version_and_damage() {
        let h = SegmentHeader {
            first_seq: 7,
            created_at_nanos: 9,
            wal_id: [1; 16],
        };
        let mut b = h.encode();
        b[8] = 2;
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(SegmentHeaderError::UnsupportedVersion { found: 2 })
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
        encode_record(&mut out, 0x0102, 5, 3, Codec(1), b"k", b"payload");
        assert_eq!(out.len(), 40 + 1 + 7);
        assert_eq!(&out[0..4], b"TSR1");
        assert_eq!(&out[4..8], &[7, 0, 0, 0]);
        assert_eq!(&out[8..16], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[16..24], &[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[24..28], &[3, 0, 0, 0]);
        assert_eq!(&out[28..30], &[1, 0]);
        assert_eq!(out[30], 1);
        assert_eq!(out[31], 0);
        assert_eq!(&out[32..36], &crc32fast::hash(&out[0..32]).to_le_bytes());
        let mut all = out[0..32].to_vec();
        all.extend_from_slice(b"kpayload");
        assert_eq!(&out[36..40], &crc32fast::hash(&all).to_le_bytes());
        let f = decode_frame(&out).unwrap();
        assert_eq!(f.header.seq, 0x0102);
        assert_eq!(f.header.span_count, 3);
        assert_eq!(f.key, b"k");
        assert_eq!(f.payload, b"payload");
        assert_eq!(f.frame_len(), out.len());
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 1, 1, Codec(1), b"key", &[7u8; 100]);
        for i in 0..out.len() {
            for bit in 0..8 {
                let mut c = out.clone();
                c[i] ^= 1 << bit;
                assert!(
                    decode_frame(&c).is_err(),
                    "flip of bit {bit} at {i} undetected"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 1, 1, Codec(1), b"key", &[7u8; 100]);
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
        out.extend_from_slice(b"TSR1 not a header at all........................");
        let at = out.len();
        encode_record(&mut out, 9, 1, 1, Codec(1), b"", b"x");
        assert_eq!(resync(&out, 0, |_| true), Some(at));
        assert_eq!(resync(&out, 0, |s| s > 9), None);
        assert_eq!(resync(&out, at + 1, |_| true), None);
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
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..MAX_KEY_LEN),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        ) {
            let mut out = vec![0xEEu8; 7];
            encode_record(&mut out, seq, at, spans, Codec(codec), &key, &payload);
            let f = decode_frame(&out[7..]).unwrap();
            proptest::prop_assert_eq!(f.header.seq, seq);
            proptest::prop_assert_eq!(f.header.received_at_nanos, at);
            proptest::prop_assert_eq!(f.header.span_count, spans);
            proptest::prop_assert_eq!(f.header.codec, Codec(codec));
            proptest::prop_assert_eq!(f.key, &key[..]);
            proptest::prop_assert_eq!(f.payload, &payload[..]);
            proptest::prop_assert_eq!(resync(&out, 0, |_| true), Some(7));
        }
    }
}
