//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use tracespool_storage::{Codec, NewRecord, ReadItem, Reader, Record, Wal, WalConfig};

pub const CODEC: Codec = Codec(1);

/// A config with small segments so tests reach rotation quickly.
pub fn small_config(dir: &Path) -> WalConfig {
    let mut cfg = WalConfig::new(dir);
    cfg.segment_bytes = 8 * 1024;
    cfg.max_bytes = 64 * 1024 * 1024;
    cfg
}

/// Deterministic, self-describing payload: `id` as 8 bytes, then `len - 8` bytes
/// derived from it, so any record can be checked byte for byte.
pub fn payload(id: u64, len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&id.to_le_bytes());
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

pub fn record(id: u64, len: usize, spans: u32) -> NewRecord {
    NewRecord {
        payload: Bytes::from(payload(id, len)),
        span_count: spans,
        codec: CODEC,
        idempotency_key: Bytes::from(format!("key-{id}")),
        received_at: SystemTime::now(),
    }
}

/// Checks a record carries exactly what `record(id, len, spans)` appended.
pub fn assert_record(r: &Record, id: u64, len: usize, spans: u32) {
    assert_eq!(r.payload.len(), len, "payload length of seq {}", r.seq);
    assert_eq!(
        &r.payload[..],
        &payload(id, len)[..],
        "payload of seq {}",
        r.seq
    );
    assert_eq!(r.span_count, spans, "span count of seq {}", r.seq);
    assert_eq!(r.codec, CODEC);
    assert_eq!(&r.idempotency_key[..], format!("key-{id}").as_bytes());
}

/// Everything a reader returns until it is caught up.
pub fn drain(reader: &mut Reader) -> Vec<ReadItem> {
    let mut out = Vec::new();
    while let Some(item) = reader.try_next().expect("read") {
        out.push(item);
    }
    out
}

pub fn records(items: &[ReadItem]) -> Vec<&Record> {
    items
        .iter()
        .filter_map(|i| match i {
            ReadItem::Record(r) => Some(r),
            ReadItem::Gap(_) => None,
        })
        .collect()
}

pub fn read_all(wal: &Wal) -> Vec<ReadItem> {
    drain(&mut wal.reader(1))
}

/// The id a payload was generated from.
pub fn id_of(r: &Record) -> u64 {
    u64::from_le_bytes(r.payload[..8].try_into().unwrap())
}

pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

pub fn segment_bytes_on_disk(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Location of a frame inside a segment file.
#[derive(Clone, Copy, Debug)]
pub struct FrameAt {
    pub offset: u64,
    pub seq: u64,
    pub len: u64,
}

/// The valid frames of a segment file, in order (stops at the first invalid one).
pub fn frames(path: &Path) -> Vec<FrameAt> {
    use tracespool_storage::format::{decode_frame, SEGMENT_HEADER_LEN};
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while let Ok(f) = decode_frame(&bytes[off..]) {
        out.push(FrameAt {
            offset: off as u64,
            seq: f.header.seq,
            len: f.frame_len() as u64,
        });
        off += f.frame_len();
    }
    out
}

pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, offset).unwrap();
}

pub fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

pub fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Appends `n` records with ids `0..n`, payload `len` bytes and `id % 7 + 1` spans,
/// closes the log, and returns the segment files.
pub async fn fill_and_close(dir: &Path, n: u64, len: usize) -> Vec<std::path::PathBuf> {
    let (wal, _) = Wal::open(small_config(dir)).unwrap();
    for i in 0..n {
        wal.append(record(i, len, spans_of(i))).await.unwrap();
    }
    wal.close().await;
    segment_files(dir)
}

pub fn spans_of(id: u64) -> u32 {
    (id % 7 + 1) as u32
}

/// Reads the whole log and checks that every record is the one appended with the
/// id `seq - 1`, that items are in order without overlap, and that together they
/// cover `1..=last`. Returns the gaps.
pub fn check_log(wal: &Wal, len: usize, last: u64) -> Vec<tracespool_storage::Gap> {
    let mut gaps = Vec::new();
    let mut expect = 1;
    for item in read_all(wal) {
        match item {
            ReadItem::Record(r) => {
                assert_eq!(r.seq, expect, "records out of order");
                assert_record(&r, r.seq - 1, len, spans_of(r.seq - 1));
                expect += 1;
            }
            ReadItem::Gap(g) => {
                assert_eq!(
                    g.first_seq, expect,
                    "gap does not start where reading stood: {g:?}"
                );
                assert!(g.last_seq >= g.first_seq, "{g:?}");
                expect = g.last_seq + 1;
                gaps.push(g);
            }
        }
    }
    assert_eq!(expect, last + 1, "log does not cover 1..={last}");
    gaps
}
