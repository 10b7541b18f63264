//! What a record's payload is, and turning stored bytes into what a consumer takes.
//!
//! The codec registry (`storage/FORMAT.md`, "Codec registry"): the log stores the
//! byte and hands it back; this module is the only place that gives it meaning.
//!
//! | codec | payload                                                          |
//! |------:|------------------------------------------------------------------|
//! | 1     | OTLP `ExportTraceServiceRequest`, protobuf                        |
//! | 2     | the same, as one zstd frame that records its content size        |
//!
//! Compression happens once, on the way in (`storage.compression`), never on the
//! writer thread. On the way out a destination that takes zstd gets the stored
//! bytes as they are ([`Wire::for_destination`]); others get them decompressed
//! (and gzipped, if they ask for gzip).

use std::cell::RefCell;

use bytes::Bytes;
use tracespool_storage::Codec;

/// Codec 1: OTLP protobuf as received.
pub const PROTOBUF: Codec = Codec(1);
/// Codec 2: OTLP protobuf in one zstd frame.
pub const PROTOBUF_ZSTD: Codec = Codec(2);

/// Largest payload a stored zstd frame may claim to expand to (the log's own
/// bound on a payload): a frame claiming more is damage, not a reason to allocate.
const MAX_PLAIN: usize = 1 << 30;

/// How records are compressed before they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// The stored form of an OTLP protobuf request. A request zstd cannot shrink is
/// stored as it is (codec 1), so compression never costs disk.
pub fn store(protobuf: Bytes, compression: Compression) -> (Bytes, Codec) {
    match compression {
        Compression::None => (protobuf, PROTOBUF),
        Compression::Zstd { level } => match zstd_compress(&protobuf, level) {
            Some(z) if z.len() < protobuf.len() => (Bytes::from(z), PROTOBUF_ZSTD),
            _ => (protobuf, PROTOBUF),
        },
    }
}

/// zstd level 1..=19 with a context kept per thread (a fresh context per record
/// costs more than compressing a small one).
pub fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut z = zstd::bulk::Compressor::new(level).ok()?;
            z.include_contentsize(true).ok()?;
            z.include_checksum(false).ok()?;
            *c = Some((level, z));
        }
        let (_, z) = c.as_mut().expect("set above");
        z.compress(data).ok()
    })
}

/// Decompresses one zstd frame that records its size, refusing to produce more
/// than `limit` bytes.
pub fn zstd_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let size = zstd::bulk::Decompressor::upper_bound(data)
        .ok_or("the zstd frame does not record its content size")?;
    if size > limit {
        return Err(format!(
            "the zstd frame expands to {size} bytes, over the limit of {limit}"
        ));
    }
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        d.as_mut()
            .expect("set above")
            .decompress(data, size)
            .map_err(|e| format!("invalid zstd frame: {e}"))
    })
}

/// Whether this build knows the codec.
pub fn known(codec: Codec) -> bool {
    codec == PROTOBUF || codec == PROTOBUF_ZSTD
}

/// The OTLP protobuf request a stored payload holds.
pub fn protobuf(codec: Codec, stored: &Bytes) -> Result<Bytes, String> {
    match codec {
        PROTOBUF => Ok(stored.clone()),
        PROTOBUF_ZSTD => zstd_decompress(stored, MAX_PLAIN).map(Bytes::from),
        Codec(other) => Err(format!("unknown record codec {other}")),
    }
}

/// A content encoding on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` / `grpc-encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// A request body ready for a destination: its bytes, their encoding, and whether
/// they are the stored bytes themselves (no decompression, no recompression).
#[derive(Clone, Debug)]
pub struct Wire {
    pub body: Bytes,
    pub encoding: Encoding,
    pub as_stored: bool,
}

impl Wire {
    /// What a destination asking for `want` is sent for a record stored as
    /// `codec`: zstd records go to zstd destinations as stored; everything else is
    /// decompressed and, for gzip or zstd destinations, compressed again.
    pub fn for_destination(codec: Codec, stored: &Bytes, want: Encoding) -> Result<Self, String> {
        if codec == PROTOBUF_ZSTD && want == Encoding::Zstd {
            return Ok(Self {
                body: stored.clone(),
                encoding: Encoding::Zstd,
                as_stored: true,
            });
        }
        if codec == PROTOBUF && want == Encoding::Identity {
            return Ok(Self {
                body: stored.clone(),
                encoding: Encoding::Identity,
                as_stored: true,
            });
        }
        let plain = protobuf(codec, stored)?;
        let body = match want {
            Encoding::Identity => plain,
            Encoding::Gzip => gzip(&plain),
            Encoding::Zstd => {
                Bytes::from(zstd_compress(&plain, 1).ok_or("zstd compression failed")?)
            }
        };
        Ok(Self {
            body,
            encoding: want,
            as_stored: false,
        })
    }
}

pub fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    let _ = e.write_all(data);
    Bytes::from(e.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Bytes {
        // Repetitive enough to compress, like real spans.
        let mut v = Vec::new();
        for i in 0..400u32 {
            v.extend_from_slice(b"\x0a\x10service.name\x12");
            v.extend_from_slice(format!("checkout-{}", i % 7).as_bytes());
        }
        Bytes::from(v)
    }

    #[test]
    fn zstd_records_round_trip_and_pass_through_only_to_zstd_destinations() {
        let plain = request();
        let (stored, codec) = store(plain.clone(), Compression::Zstd { level: 1 });
        assert_eq!(codec, PROTOBUF_ZSTD);
        assert!(stored.len() * 5 < plain.len(), "{}", stored.len());
        assert_eq!(protobuf(codec, &stored).unwrap(), plain);

        let z = Wire::for_destination(codec, &stored, Encoding::Zstd).unwrap();
        assert!(z.as_stored);
        assert_eq!(z.body, stored);
        let id = Wire::for_destination(codec, &stored, Encoding::Identity).unwrap();
        assert!(!id.as_stored);
        assert_eq!(id.body, plain);
        let gz = Wire::for_destination(codec, &stored, Encoding::Gzip).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz.body[..]), &mut out)
            .unwrap();
        assert_eq!(out, plain);
        // A plain record to a zstd destination is compressed for it.
        let z = Wire::for_destination(PROTOBUF, &plain, Encoding::Zstd).unwrap();
        assert!(!z.as_stored);
        assert_eq!(zstd_decompress(&z.body, 1 << 20).unwrap(), plain);
    }

    #[test]
    fn incompressible_requests_are_stored_as_they_are() {
        let mut noise = vec![0u8; 4096];
        getrandom::fill(&mut noise).unwrap();
        let (stored, codec) = store(Bytes::from(noise.clone()), Compression::Zstd { level: 3 });
        assert_eq!(codec, PROTOBUF);
        assert_eq!(&stored[..], &noise[..]);
    }

    #[test]
    fn truncated_or_oversized_frames_are_errors_not_allocations() {
        let plain = request();
        let z = zstd_compress(&plain, 1).unwrap();
        assert!(zstd_decompress(&z, plain.len() - 1)
            .unwrap_err()
            .contains("over the limit"));
        assert!(zstd_decompress(&z[..z.len() / 2], 1 << 20).is_err());
        assert!(zstd_decompress(b"not zstd", 1 << 20).is_err());
        assert!(protobuf(Codec(9), &Bytes::new())
            .unwrap_err()
            .contains("codec 9"));
    }
}
