//! Encryption at rest: sealed records read back exactly, no plaintext on disk, key
//! rotation across restarts, and a missing or wrong key refused at open without a
//! byte on disk changing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use tracespool_storage::format::{decode_frame, encode_head, FLAG_SEALED, SEGMENT_HEADER_LEN};
use tracespool_storage::offline::{list_segments, read_segment};
use tracespool_storage::{GapCause, KeyRing, OpenError, ReadItem, SealError, Wal};

const LEN: usize = 700;

fn ring(keys: &[(u32, u8)], active: Option<u32>) -> KeyRing {
    let mut r = KeyRing::default();
    for &(id, byte) in keys {
        r.insert(id, [byte; 32]).unwrap();
    }
    r.set_active(active).unwrap();
    r
}

async fn append_range(dir: &Path, keys: KeyRing, ids: std::ops::Range<u64>) {
    let mut cfg = small_config(dir);
    cfg.keys = keys;
    let (wal, _) = Wal::open(cfg).unwrap();
    for i in ids {
        wal.append(record(i, LEN, spans_of(i))).await.unwrap();
    }
    wal.close().await;
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn sealed_records_read_back_exactly_and_no_payload_bytes_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    append_range(dir.path(), ring(&[(5, 0x11)], Some(5)), 0..40).await;

    // No 16-byte run of any payload appears in any file of the directory.
    let files = snapshot(dir.path());
    for i in 0..40 {
        let p = payload(i, LEN);
        for chunk in p[8..].chunks(16).filter(|c| c.len() == 16) {
            for (name, bytes) in &files {
                assert!(!contains(bytes, chunk), "payload {i} in clear in {name}");
            }
        }
    }
    // Every segment names the key; every frame is sealed.
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() > 2, "{segments:?}");
    for s in &segments {
        assert_eq!(s.key_id, 5, "{}", s.path.display());
        let bytes = std::fs::read(&s.path).unwrap();
        if bytes.len() > SEGMENT_HEADER_LEN {
            let f = decode_frame(&bytes[SEGMENT_HEADER_LEN..]).unwrap();
            assert_eq!(f.header.flags, FLAG_SEALED);
            assert_eq!(f.payload.len(), LEN + 32);
        }
    }
    // The budget counts the sealed bytes (32 more per record).
    let on_disk = segment_bytes_on_disk(dir.path());
    let mut cfg = small_config(dir.path());
    cfg.keys = ring(&[(5, 0x11)], Some(5));
    let (wal, _) = Wal::open(cfg).unwrap();
    assert_eq!(wal.stats().bytes, on_disk);
    let frames_total: u64 = (0..40u64)
        .map(|i| (48 + format!("key-{i}").len() + LEN + 32) as u64)
        .sum();
    assert_eq!(on_disk, frames_total + 64 * segments.len() as u64);
    let gaps = check_log(&wal, LEN, 40);
    assert!(gaps.is_empty(), "{gaps:?}");
    wal.close().await;

    // The offline readers open them with the keys, and name them without.
    let segments = list_segments(dir.path()).unwrap();
    let keys = ring(&[(5, 0x11)], None);
    let mut opened = 0;
    let mut unopened = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let next = segments.get(i + 1).map(|n| n.first_seq);
        let c = read_segment(s, next, true, &keys).unwrap();
        for r in &c.records {
            assert_record(r, r.seq - 1, LEN, spans_of(r.seq - 1));
        }
        opened += c.records.len();
        assert!(c.unopened.is_empty());
        unopened.extend(
            read_segment(s, next, true, &KeyRing::default())
                .unwrap()
                .unopened,
        );
    }
    assert_eq!(opened, 40);
    assert_eq!(unopened.len(), 40);
    assert!(unopened
        .iter()
        .all(|u| u.error == SealError::MissingKey { key_id: 5 }));
}

#[tokio::test]
async fn rotation_keeps_old_records_readable_and_a_missing_old_key_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // Plaintext, then key 1, then key 2 (key 1 kept to read its records).
    append_range(dir.path(), KeyRing::default(), 0..10).await;
    append_range(dir.path(), ring(&[(1, 0xA1)], Some(1)), 10..25).await;
    append_range(dir.path(), ring(&[(1, 0xA1), (2, 0xB2)], Some(2)), 25..40).await;

    let segments = list_segments(dir.path()).unwrap();
    let ids: Vec<u32> = segments.iter().map(|s| s.key_id).collect();
    let first_of = |k: u32| ids.iter().position(|&i| i == k).unwrap();
    assert!(
        first_of(0) < first_of(1) && first_of(1) < first_of(2),
        "{ids:?}"
    );
    // A segment never mixes keys: the key changes only at a segment boundary.
    for s in &segments {
        let bytes = std::fs::read(&s.path).unwrap();
        let mut off = SEGMENT_HEADER_LEN;
        while let Ok(f) = decode_frame(&bytes[off..]) {
            assert_eq!(f.header.flags == FLAG_SEALED, s.key_id != 0);
            off += f.frame_len();
        }
    }

    let both = ring(&[(1, 0xA1), (2, 0xB2)], Some(2));
    let mut cfg = small_config(dir.path());
    cfg.keys = both.clone();
    let (wal, _) = Wal::open(cfg).unwrap();
    assert!(check_log(&wal, LEN, 40).is_empty());
    wal.close().await;

    // Key 1 dropped from the configuration while its segments remain: refused,
    // naming the key, and not one byte on disk changes.
    let before = snapshot(dir.path());
    let mut cfg = small_config(dir.path());
    cfg.keys = ring(&[(2, 0xB2)], Some(2));
    let err = Wal::open(cfg).unwrap_err();
    assert!(
        matches!(err, OpenError::MissingKey { key_id: 1, .. }),
        "{err}"
    );
    assert!(err.is_refusal());
    assert!(err.to_string().contains("key id 1"), "{err}");
    let after = snapshot(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert!(before == after, "a refused open changed files");

    // A different key under id 2: refused the same way.
    let mut cfg = small_config(dir.path());
    cfg.keys = ring(&[(1, 0xA1), (2, 0xEE)], Some(2));
    let err = Wal::open(cfg).unwrap_err();
    assert!(
        matches!(err, OpenError::WrongKey { key_id: 2, .. }),
        "{err}"
    );
    assert!(
        before == snapshot(dir.path()),
        "a refused open changed files"
    );

    // With both keys all 40 are still there.
    let mut cfg = small_config(dir.path());
    cfg.keys = both;
    let (wal, _) = Wal::open(cfg).unwrap();
    assert!(check_log(&wal, LEN, 40).is_empty());
    wal.close().await;
}

#[tokio::test]
async fn a_sealed_payload_moved_to_another_seq_is_damage_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(3, 0x33)], Some(3));
    append_range(dir.path(), keys.clone(), 0..6).await;
    // Rewrite frame 2 with frame 1's sealed payload and fresh CRCs: the frame is
    // valid, the ciphertext belongs to another seq.
    let seg = &segment_files(dir.path())[0];
    let bytes = std::fs::read(seg).unwrap();
    let fr = frames(seg);
    let f1 = decode_frame(&bytes[fr[0].offset as usize..]).unwrap();
    let f2 = decode_frame(&bytes[fr[1].offset as usize..]).unwrap();
    let mut forged = Vec::new();
    encode_head(
        &mut forged,
        f2.header.seq,
        f2.header.received_at_nanos,
        f2.header.span_count,
        f2.header.codec,
        FLAG_SEALED,
        f2.header.durable_through,
        f2.key,
        f1.payload,
    );
    forged.extend_from_slice(f1.payload);
    assert_eq!(forged.len() as u64, fr[1].len);
    overwrite(seg, fr[1].offset, &forged);

    let mut cfg = small_config(dir.path());
    cfg.keys = keys;
    let (wal, _) = Wal::open(cfg).unwrap();
    let items = read_all(&wal);
    let gaps: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            ReadItem::Gap(g) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].first_seq, gaps[0].last_seq), (2, 2));
    match &gaps[0].cause {
        GapCause::Damaged(l) => assert!(l.reason.contains("cannot be decrypted"), "{l:?}"),
        other => panic!("{other:?}"),
    }
    let ids: Vec<u64> = records(&items).iter().map(|r| id_of(r)).collect();
    assert_eq!(ids, vec![0, 2, 3, 4, 5]);
    wal.close().await;
}

#[tokio::test]
async fn a_log_of_the_previous_format_opens_reads_and_goes_on_in_version_3() {
    use tracespool_storage::format::SegmentHeader;
    let dir = tempfile::tempdir().unwrap();
    // A log as the previous build left it: version-2 segment headers.
    append_range(dir.path(), KeyRing::default(), 0..30).await;
    let old = segment_files(dir.path());
    assert!(old.len() > 1);
    for seg in &old {
        let bytes = std::fs::read(seg).unwrap();
        let (h, v) = SegmentHeader::decode_versioned(&bytes).unwrap();
        assert_eq!(v, 3);
        overwrite(seg, 0, &h.encode_v2());
    }
    // This build reads it all, then writes on in a version-3 segment, sealed.
    append_range(dir.path(), ring(&[(9, 0x99)], Some(9)), 30..40).await;
    let mut cfg = small_config(dir.path());
    cfg.keys = ring(&[(9, 0x99)], Some(9));
    let (wal, _) = Wal::open(cfg).unwrap();
    assert!(check_log(&wal, LEN, 40).is_empty());
    wal.close().await;
    for seg in segment_files(dir.path()) {
        let bytes = std::fs::read(&seg).unwrap();
        let (h, v) = SegmentHeader::decode_versioned(&bytes).unwrap();
        if old.contains(&seg) {
            assert_eq!((v, h.key_id), (2, 0), "{}", seg.display());
        } else {
            assert_eq!((v, h.key_id), (3, 9), "{}", seg.display());
        }
    }
}
