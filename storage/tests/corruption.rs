//! Damaged bytes on disk: flipped bytes and truncations in sealed and active
//! segments. Open always succeeds, the lost ranges reported are exact, and every
//! other record reads back byte for byte.

mod common;

use common::*;
use tracespool_storage::{GapCause, OpenError, Wal, WalEvent};

const LEN: usize = 900;
const N: u64 = 60;

/// Damage `seq`'s payload in whichever segment holds it.
fn locate(files: &[std::path::PathBuf], seq: u64) -> (std::path::PathBuf, FrameAt, usize) {
    for f in files {
        let frames = frames(f);
        if let Some(i) = frames.iter().position(|fr| fr.seq == seq) {
            return (f.clone(), frames[i], i);
        }
    }
    panic!("seq {seq} not found");
}

fn damaged(g: &tracespool_storage::Gap) -> &tracespool_storage::LostRange {
    match &g.cause {
        GapCause::Damaged(l) => l,
        other => panic!("expected damage, got {other:?}"),
    }
}

#[tokio::test]
async fn reader_skips_corrupt_record_in_sealed_segment_and_reports_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let (path, frame, _) = locate(&files, 20);
    assert_ne!(
        path,
        *files.last().unwrap(),
        "seq 20 must be in a sealed segment"
    );
    flip_byte(&path, frame.offset + frame.len - 10);

    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert!(
        report.lost.is_empty(),
        "sealed segments are not scanned at open"
    );
    let mut events = wal.take_events().unwrap();
    let gaps = check_log(&wal, LEN, N);
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].first_seq, gaps[0].last_seq), (20, 20));
    let lost = damaged(&gaps[0]);
    assert_eq!(
        lost.spans,
        Some(spans_of(19) as u64),
        "intact header gives the span count"
    );
    assert_eq!(lost.offset, frame.offset);
    // Reported once, however many readers pass it.
    match events.try_recv().unwrap() {
        WalEvent::Damaged(l) => assert_eq!((l.first_seq, l.last_seq), (20, 20)),
        e => panic!("{e:?}"),
    }
    check_log(&wal, LEN, N);
    assert!(events.try_recv().is_err(), "damage reported twice");
    assert_eq!(wal.damage().len(), 1);
    wal.close().await;

    // Known after a restart too: not reported again.
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let mut events = wal.take_events().unwrap();
    check_log(&wal, LEN, N);
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn damaged_record_header_is_resynchronised_past() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let (path, frame, _) = locate(&files, 9);
    flip_byte(&path, frame.offset + 5); // inside payload_len: the length is not trusted
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let gaps = check_log(&wal, LEN, N);
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].first_seq, gaps[0].last_seq), (9, 9));
    assert_eq!(damaged(&gaps[0]).spans, None);
}

#[tokio::test]
async fn garbage_over_several_records_loses_exactly_those_records() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let path = files[2].clone();
    let frames = frames(&path);
    assert!(frames.len() >= 4, "need four records in one segment");
    let (first, last) = (frames[1].seq, frames[3].seq);
    // From the middle of the second record to the middle of the fourth.
    let start = frames[1].offset + 30;
    let end = frames[3].offset + 50;
    overwrite(&path, start, &vec![0xEE; (end - start) as usize]);
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let gaps = check_log(&wal, LEN, N);
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].first_seq, gaps[0].last_seq), (first, last));
}

#[tokio::test]
async fn sealed_segment_truncated_mid_record_loses_the_rest_of_that_segment_only() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let (path, frame, i) = locate(&files, 30);
    let frames = frames(&path);
    let last_in_segment = frames.last().unwrap().seq;
    assert!(i + 1 < frames.len());
    truncate(&path, frame.offset + 100);
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let gaps = check_log(&wal, LEN, N);
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].first_seq, gaps[0].last_seq), (30, last_in_segment));
}

#[tokio::test]
async fn sealed_segment_truncated_at_a_record_boundary_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let (path, frame, _) = locate(&files, 30);
    let last_in_segment = frames(&path).last().unwrap().seq;
    truncate(&path, frame.offset);
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let gaps = check_log(&wal, LEN, N);
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].first_seq, gaps[0].last_seq), (30, last_in_segment));
}

#[tokio::test]
async fn corrupt_record_in_active_segment_is_reported_at_open_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let active = files.last().unwrap();
    let frames = frames(active);
    assert!(
        frames.len() >= 3,
        "need a record in the middle of the active segment"
    );
    let victim = frames[frames.len() - 2];
    flip_byte(active, victim.offset + 60);
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert_eq!(report.lost.len(), 1);
    assert_eq!(
        (report.lost[0].first_seq, report.lost[0].last_seq),
        (victim.seq, victim.seq)
    );
    assert!(report.torn_tail.is_none());
    assert_eq!(report.next_seq, N + 1);
    let gaps = check_log(&wal, LEN, N);
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].first_seq, gaps[0].last_seq),
        (victim.seq, victim.seq)
    );
    assert_eq!(
        wal.append(record(N, LEN, spans_of(N))).await.unwrap().seq,
        N + 1
    );
    check_log(&wal, LEN, N + 1);
}

#[tokio::test]
async fn torn_tail_after_a_crash_is_cut_kept_in_quarantine_and_its_seqs_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    tracespool_storage::__forget_clean_close(dir.path()).unwrap();
    let active = files.last().unwrap();
    let last = *frames(active).last().unwrap();
    assert_eq!(last.seq, N);
    let original = std::fs::read(active).unwrap();
    // A write that stopped half way through the last record.
    let cut = last.offset + last.len / 2;
    truncate(active, cut);
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    let torn = report.torn_tail.clone().expect("torn tail");
    assert_eq!(torn.first_seq, N);
    assert_eq!(torn.offset, last.offset);
    assert_eq!(torn.bytes, cut - last.offset);
    let kept = std::fs::read(torn.quarantined_to.unwrap()).unwrap();
    assert_eq!(&kept[..], &original[last.offset as usize..cut as usize]);
    assert_eq!(std::fs::metadata(active).unwrap().len(), last.offset);
    assert!(report.lost.is_empty());
    // The cut bytes could have held seqs up to this bound: none is assigned again,
    // so an idempotency key made of one can never name another batch.
    let bound = N - 1 + torn.bytes.div_ceil(40);
    assert_eq!(torn.last_seq_bound, bound);
    let skipped = report.skipped.clone().expect("seqs skipped");
    assert_eq!((skipped.first_seq, skipped.last_seq), (N, bound));
    // Under fsync = always an append that never completed was never acknowledged.
    assert!(!skipped.may_hold_acknowledged);
    assert_eq!(report.next_seq, bound + 1);
    let items = read_all(&wal);
    assert_eq!(records(&items).len() as u64, N - 1);
    let seq = wal
        .append(record(N - 1, LEN, spans_of(N - 1)))
        .await
        .unwrap()
        .seq;
    assert_eq!(seq, bound + 1);
    // Readers see the skipped seqs as such, not as damage.
    let items = read_all(&wal);
    let gaps: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            tracespool_storage::ReadItem::Gap(g) => Some(g.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].first_seq, gaps[0].last_seq), (N, bound));
    assert_eq!(gaps[0].cause, GapCause::Skipped);
    assert_eq!(records(&items).last().unwrap().seq, bound + 1);
    assert!(wal.damage().is_empty());
}

#[tokio::test]
async fn a_damaged_last_record_after_a_clean_close_is_damage_and_its_seq_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let active = files.last().unwrap();
    let last = *frames(active).last().unwrap();
    flip_byte(active, last.offset + last.len - 3);
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    // Synced before the close: damage, counted, not a torn tail of a lost append.
    assert_eq!(report.lost.len(), 1, "{report:?}");
    assert_eq!((report.lost[0].first_seq, report.lost[0].last_seq), (N, N));
    assert_eq!(report.lost[0].spans, Some(spans_of(N - 1) as u64));
    assert!(report.skipped.is_none());
    assert_eq!(report.next_seq, N + 1);
    let gaps = check_log(&wal, LEN, N);
    assert_eq!(gaps.len(), 1);
    assert_eq!((damaged(&gaps[0]).first_seq, gaps[0].last_seq), (N, N));
    assert_eq!(
        wal.append(record(N, LEN, spans_of(N))).await.unwrap().seq,
        N + 1
    );
    check_log(&wal, LEN, N + 1);
}

#[tokio::test]
async fn garbage_after_the_last_record_is_cut_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let active = files.last().unwrap();
    let len = std::fs::metadata(active).unwrap().len();
    overwrite(active, len, &[0u8; 4096]);
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    let torn = report.torn_tail.expect("torn tail");
    assert_eq!(
        (torn.offset, torn.bytes, torn.first_seq),
        (len, 4096, N + 1)
    );
    assert!(check_log(&wal, LEN, N).is_empty());
}

#[tokio::test]
async fn damaged_sealed_segment_header_is_reported_and_its_records_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    flip_byte(&files[1], 20);
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert_eq!(report.damaged_headers, vec![files[1].clone()]);
    assert!(check_log(&wal, LEN, N).is_empty());
}

#[tokio::test]
async fn damaged_active_segment_header_moves_appends_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), N, LEN).await;
    let active = files.last().unwrap();
    overwrite(active, 0, b"XXXXXXXX");
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert_eq!(report.damaged_headers, vec![active.clone()]);
    assert!(check_log(&wal, LEN, N).is_empty());
    assert_eq!(segment_files(dir.path()).len(), files.len() + 1);
    wal.append(record(N, LEN, spans_of(N))).await.unwrap();
    wal.close().await;
    // Its records stay readable where they are; appends went elsewhere.
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert_eq!(report.damaged_headers, vec![active.clone()]);
    assert!(check_log(&wal, LEN, N + 1).is_empty());
}

#[tokio::test]
async fn leftover_temporary_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(dir.path(), 5, LEN).await;
    let tmp = dir.path().join("wal/00000000000000000006.seg.tmp");
    std::fs::write(&tmp, b"TSPOOL").unwrap();
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert_eq!(report.removed_temp_files, vec![tmp.clone()]);
    assert!(!tmp.exists());
    check_log(&wal, LEN, 5);
}

#[tokio::test]
async fn segment_of_a_newer_format_version_stops_the_open_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), 5, LEN).await;
    let mut header = std::fs::read(&files[0]).unwrap()[..64].to_vec();
    header[8] = 9;
    let crc = crc32(&header[..60]);
    header[60..64].copy_from_slice(&crc.to_le_bytes());
    overwrite(&files[0], 0, &header);
    let err = Wal::open(small_config(dir.path())).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::UnsupportedVersion {
                found: 9,
                supported: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn segment_of_another_log_is_quarantined() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    fill_and_close(a.path(), 5, LEN).await;
    let files_b = fill_and_close(b.path(), 30, LEN).await;
    // Copy b's second segment into a, under a name after a's segments.
    let stray = a.path().join("wal/00000000000000000100.seg");
    std::fs::copy(&files_b[1], &stray).unwrap();
    let (wal, report) = Wal::open(small_config(a.path())).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    assert!(!stray.exists());
    assert!(report.quarantined[0]
        .file
        .starts_with(a.path().join("quarantine")));
    check_log(&wal, LEN, 5);
}

/// Random damage anywhere: open never fails, nothing panics, every record returned
/// is intact, and records plus gaps cover the log exactly.
#[tokio::test]
async fn random_damage_never_breaks_open_or_returns_a_bad_record() {
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let files = fill_and_close(dir.path(), 40, 500).await;
        for _ in 0..(1 + next() % 4) {
            let f = &files[(next() % files.len() as u64) as usize];
            let len = std::fs::metadata(f).unwrap().len();
            if len == 0 {
                continue;
            }
            match next() % 4 {
                0 => truncate(f, next() % len),
                1 => {
                    let at = next() % len;
                    let n = (1 + next() % 200).min(len - at);
                    overwrite(f, at, &vec![(next() & 0xFF) as u8; n as usize]);
                }
                _ => flip_byte(f, next() % len),
            }
        }
        let (wal, report) = Wal::open(small_config(dir.path()))
            .unwrap_or_else(|e| panic!("round {round}: open failed: {e}"));
        // Whatever the torn tail took is gone for good; everything else is covered.
        let end = report.next_seq - 1;
        let gaps = check_log(&wal, 500, end);
        for g in &gaps {
            damaged(g);
        }
        // The log keeps working.
        let seq = wal
            .append(record(end, 500, spans_of(end)))
            .await
            .unwrap()
            .seq;
        assert_eq!(seq, end + 1);
        check_log(&wal, 500, end + 1);
    }
}

fn crc32(b: &[u8]) -> u32 {
    // CRC-32/IEEE, bitwise, independent of the crate under test.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Readers read a segment a few MiB at a time: records cut by a window's end, a
/// record larger than a window and damage just past a window's start must read as
/// they do within one window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_across_read_windows_and_damage_past_one_read_exactly() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = small_config(dir.path());
        c.segment_bytes = 32 * MIB as u64;
        c.max_bytes = 256 * MIB as u64;
        c
    };
    // 333 KiB records (never aligned to 4 MiB), one of 9 MiB among them.
    let len_of = |id: u64| if id == 20 { 9 * MIB } else { 333 * 1024 };
    let n = 110u64;
    {
        let (wal, _) = Wal::open(cfg()).unwrap();
        for id in 0..n {
            wal.append(record(id, len_of(id), spans_of(id)))
                .await
                .unwrap();
        }
        wal.close().await;
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 2, "a sealed segment and the active one");
    let read_back = |wal: &Wal| {
        let items = read_all(wal);
        let mut seqs = Vec::new();
        let mut gaps = Vec::new();
        for item in &items {
            match item {
                tracespool_storage::ReadItem::Record(r) => {
                    let id = r.seq - 1;
                    assert_record(r, id, len_of(id), spans_of(id));
                    seqs.push(r.seq);
                }
                tracespool_storage::ReadItem::Gap(g) => gaps.push((g.first_seq, g.last_seq)),
            }
        }
        (seqs, gaps)
    };
    {
        let (wal, _) = Wal::open(cfg()).unwrap();
        let (seqs, gaps) = read_back(&wal);
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        assert!(gaps.is_empty());
        wal.close().await;
    }
    // Damage the first record that starts past 4 MiB in the sealed segment.
    let frames = frames(&files[0]);
    let victim = *frames
        .iter()
        .find(|f| f.offset > 4 * MIB as u64)
        .expect("a record past the first window");
    flip_byte(&files[0], victim.offset + victim.len / 2);
    let (wal, _) = Wal::open(cfg()).unwrap();
    let (seqs, gaps) = read_back(&wal);
    assert_eq!(gaps, vec![(victim.seq, victim.seq)]);
    let expect: Vec<u64> = (1..=n).filter(|&s| s != victim.seq).collect();
    assert_eq!(seqs, expect);
    wal.close().await;
}
