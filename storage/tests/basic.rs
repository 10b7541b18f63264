//! Appending, reading, rotation, reopening, cursors and retention.

mod common;

use std::time::Duration;

use common::*;
use tracespool_storage::{
    AppendError, CursorStart, FsyncPolicy, OpenError, ReadItem, Wal, WalConfig,
};

#[tokio::test]
async fn appended_records_read_back_in_order_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert_eq!(report.next_seq, 1);
    for i in 0..50u64 {
        let a = wal
            .append(record(i, 100 + i as usize * 7, i as u32 % 5))
            .await
            .unwrap();
        assert_eq!(a.seq, i + 1);
        assert!(a.evicted.is_empty());
    }
    let items = read_all(&wal);
    assert_eq!(items.len(), 50);
    for (i, item) in items.iter().enumerate() {
        let ReadItem::Record(r) = item else {
            panic!("gap {item:?}")
        };
        assert_eq!(r.seq, i as u64 + 1);
        assert_record(r, i as u64, 100 + i * 7, i as u32 % 5);
    }
    // Small segments: the 50 records span several segment files.
    assert!(segment_files(dir.path()).len() >= 2);
    assert_eq!(wal.stats().bytes, segment_bytes_on_disk(dir.path()));
}

#[tokio::test]
async fn concurrent_appends_get_unique_contiguous_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..40u64 {
                let id = t * 1000 + i;
                seqs.push((wal.append(record(id, 300, 1)).await.unwrap().seq, id));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=640).collect::<Vec<_>>()
    );
    let items = read_all(&wal);
    let recs = records(&items);
    assert_eq!(recs.len(), 640);
    for (r, (seq, id)) in recs.iter().zip(&all) {
        assert_eq!(r.seq, *seq);
        assert_record(r, *id, 300, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_every_record_and_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
        for i in 0..30 {
            wal.append(record(i, 500, 2)).await.unwrap();
        }
        wal.close().await;
    }
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert_eq!(report.next_seq, 31);
    assert_eq!(report.first_seq, 1);
    assert!(report.torn_tail.is_none());
    assert!(report.lost.is_empty());
    assert_eq!(wal.append(record(30, 500, 2)).await.unwrap().seq, 31);
    let items = read_all(&wal);
    assert_eq!(items.len(), 31);
    for (i, r) in records(&items).iter().enumerate() {
        assert_record(r, i as u64, 500, 2);
    }
}

#[tokio::test]
async fn reader_waits_for_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let mut reader = wal.reader(1);
    assert!(reader.try_next().unwrap().is_none());
    let w = wal.clone();
    let waiter = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..3 {
            match reader.next().await.unwrap() {
                ReadItem::Record(r) => got.push(r.seq),
                g => panic!("unexpected {g:?}"),
            }
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        w.append(record(i, 64, 1)).await.unwrap();
    }
    assert_eq!(waiter.await.unwrap(), vec![1, 2, 3]);
}

#[tokio::test]
async fn reader_from_the_middle_starts_at_that_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    for i in 0..100 {
        wal.append(record(i, 200, 1)).await.unwrap();
    }
    for from in [1u64, 2, 37, 99, 100] {
        let items = drain(&mut wal.reader(from));
        assert_eq!(items.len() as u64, 101 - from);
        assert_eq!(items[0].last_seq(), from);
    }
    assert!(drain(&mut wal.reader(101)).is_empty());
}

#[tokio::test]
async fn oversized_records_and_keys_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_record_bytes = 1000;
    let (wal, _) = Wal::open(cfg).unwrap();
    let before = segment_bytes_on_disk(dir.path());
    let err = wal.append(record(1, 1001, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::TooLarge {
                bytes: 1001,
                limit: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    let mut r = record(1, 100, 1);
    r.idempotency_key = vec![b'k'; 1025].into();
    assert!(matches!(
        wal.append(r).await,
        Err(AppendError::TooLarge { bytes: 1025, .. })
    ));
    assert_eq!(segment_bytes_on_disk(dir.path()), before);
    assert_eq!(wal.append(record(1, 1000, 1)).await.unwrap().seq, 1);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let err = Wal::open(small_config(dir.path())).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another"), "{err}");
}

#[tokio::test]
async fn invalid_config_is_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = WalConfig::new(dir.path());
    cfg.segment_bytes = 100;
    let err = Wal::open(cfg).unwrap_err();
    assert!(err.to_string().contains("segment_bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_persist_and_resume_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
        for i in 0..20 {
            wal.append(record(i, 100, 1)).await.unwrap();
        }
        let a = wal.cursor("a", CursorStart::Oldest).unwrap();
        let b = wal.cursor("b", CursorStart::Oldest).unwrap();
        assert_eq!(a.position(), 0);
        // Out-of-order acks: the position is the highest contiguous one.
        a.ack(2).unwrap();
        a.ack_range(4, 9).unwrap();
        assert_eq!(a.position(), 0);
        a.ack(1).unwrap();
        assert_eq!(a.position(), 2);
        a.ack(3).unwrap();
        assert_eq!(a.position(), 9);
        b.ack_range(1, 15).unwrap();
        assert!(a.ack(21).is_err(), "ack beyond the end");
        wal.close().await;
    }
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let a = wal.cursor("a", CursorStart::Latest).unwrap();
    let b = wal.cursor("b", CursorStart::Latest).unwrap();
    assert_eq!((a.position(), b.position()), (9, 15));
    let items = drain(&mut a.reader());
    assert_eq!(items.first().unwrap().last_seq(), 10);
    assert_eq!(items.len(), 11);
    let late = wal.cursor("late", CursorStart::Latest).unwrap();
    assert_eq!(late.position(), 20);
    let mut positions = wal.cursor_positions();
    positions.sort();
    assert_eq!(
        positions,
        vec![("a".into(), 9), ("b".into(), 15), ("late".into(), 20)]
    );
}

#[tokio::test]
async fn delivered_segments_are_deleted_and_undelivered_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let a = wal.cursor("a", CursorStart::Oldest).unwrap();
    let b = wal.cursor("b", CursorStart::Oldest).unwrap();
    for i in 0..60 {
        wal.append(record(i, 1000, 1)).await.unwrap();
    }
    let segments = segment_files(dir.path()).len();
    assert!(segments >= 7, "{segments}");
    a.ack_range(1, 60).unwrap();
    wal.maintain().await;
    // b has not passed anything: all kept.
    assert_eq!(segment_files(dir.path()).len(), segments);
    b.ack_range(1, 30).unwrap();
    wal.maintain().await;
    let left = segment_files(dir.path());
    assert!(left.len() < segments);
    // Every record b has not acknowledged is still readable.
    let items = drain(&mut b.reader());
    assert_eq!(items.len(), 30);
    assert_eq!(items[0].last_seq(), 31);
    // The oldest remaining segment holds seq 30 or 31: nothing b needs was deleted,
    // and no segment wholly at or below 30 remains.
    let first = wal.stats().first_seq;
    assert!(first <= 31, "first retained seq {first}");
    b.ack_range(31, 60).unwrap();
    wal.maintain().await;
    // Only the active segment is left.
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(wal.stats().bytes, segment_bytes_on_disk(dir.path()));
}

#[tokio::test]
async fn no_cursor_means_nothing_is_delivered_and_nothing_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    for i in 0..40 {
        wal.append(record(i, 1000, 1)).await.unwrap();
    }
    let before = segment_files(dir.path());
    wal.maintain().await;
    assert_eq!(segment_files(dir.path()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_delivered_keeps_segments_for_the_configured_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.retain_delivered = Duration::from_millis(600);
    let (wal, _) = Wal::open(cfg).unwrap();
    let a = wal.cursor("a", CursorStart::Oldest).unwrap();
    for i in 0..30 {
        wal.append(record(i, 1000, 1)).await.unwrap();
    }
    let segments = segment_files(dir.path()).len();
    a.ack_range(1, 30).unwrap();
    wal.maintain().await;
    assert_eq!(
        segment_files(dir.path()).len(),
        segments,
        "deleted before retention expired"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    wal.maintain().await;
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_cursor_no_longer_holds_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let a = wal.cursor("a", CursorStart::Oldest).unwrap();
    let _gone = wal.cursor("gone", CursorStart::Oldest).unwrap();
    for i in 0..30 {
        wal.append(record(i, 1000, 1)).await.unwrap();
    }
    a.ack_range(1, 30).unwrap();
    wal.maintain().await;
    assert!(segment_files(dir.path()).len() > 1);
    assert!(wal.remove_cursor("gone").unwrap());
    wal.maintain().await;
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_and_never_policies_store_and_recover_everything_on_clean_close() {
    for policy in [
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small_config(dir.path());
        cfg.fsync = policy;
        {
            let (wal, _) = Wal::open(cfg.clone()).unwrap();
            for i in 0..40 {
                wal.append(record(i, 700, 3)).await.unwrap();
            }
            // Under `interval`, readers see records once the periodic sync ran.
            let mut reader = wal.reader(1);
            let mut seen = 0;
            while seen < 40 {
                tokio::time::timeout(Duration::from_secs(5), reader.next())
                    .await
                    .unwrap()
                    .unwrap();
                seen += 1;
            }
            wal.close().await;
        }
        let (wal, report) = Wal::open(cfg).unwrap();
        assert_eq!(report.next_seq, 41, "{policy:?}");
        let items = read_all(&wal);
        for (i, r) in records(&items).iter().enumerate() {
            assert_record(r, i as u64, 700, 3);
        }
        assert_eq!(items.len(), 40);
    }
}

#[tokio::test]
async fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    wal.append(record(0, 100, 1)).await.unwrap();
    wal.append(record(1, 50_000, 1)).await.unwrap();
    wal.append(record(2, 100, 1)).await.unwrap();
    let items = read_all(&wal);
    assert_eq!(items.len(), 3);
    assert_record(records(&items)[1], 1, 50_000, 1);
    assert_eq!(segment_files(dir.path()).len(), 3);
}

#[tokio::test]
async fn rotate_seals_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    wal.rotate().await.unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "empty active segment is not rotated"
    );
    wal.append(record(0, 100, 1)).await.unwrap();
    wal.rotate().await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(wal.append(record(1, 100, 1)).await.unwrap().seq, 2);
    assert!(segment_files(dir.path())[1].ends_with("00000000000000000002.seg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_still_inside_a_deleted_segment_reads_it_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let c = wal.cursor("a", CursorStart::Oldest).unwrap();
    for i in 0..30 {
        wal.append(record(i, 1000, 1)).await.unwrap();
    }
    // An ad-hoc reader (not a cursor) stands in the first segment.
    let mut lagging = wal.reader(1);
    let first = lagging.try_next().unwrap().unwrap();
    assert_eq!(first.last_seq(), 1);
    c.ack_range(1, 30).unwrap();
    wal.maintain().await;
    assert!(
        !segment_files(dir.path())[0].ends_with("00000000000000000001.seg"),
        "first segment deleted"
    );
    // Its mapping keeps the bytes: the rest of that segment reads back intact,
    // then the reader is told the following deleted ones are gone.
    let items = drain(&mut lagging);
    let recs = records(&items);
    assert!(!recs.is_empty());
    for r in &recs {
        assert_record(r, r.seq - 1, 1000, 1);
    }
    assert!(items.iter().all(|i| !matches!(i, ReadItem::Gap(g) if matches!(g.cause, tracespool_storage::GapCause::Damaged(_)))));
}

#[tokio::test]
async fn backlog_counts_records_spans_and_bytes_after_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let start = std::time::SystemTime::now();
    for i in 0..50u64 {
        wal.append(record(i, 700 + i as usize, (i % 4) as u32 + 1))
            .await
            .unwrap();
    }
    let frame =
        |i: u64| tracespool_storage::format::frame_len(format!("key-{i}").len(), 700 + i as usize);
    for after in [0u64, 1, 17, 49, 50] {
        let b = wal.backlog(after);
        let ids = after..50;
        assert_eq!(b.records, ids.clone().count() as u64, "after {after}");
        assert_eq!(
            b.spans,
            ids.clone().map(|i| i % 4 + 1).sum::<u64>(),
            "after {after}"
        );
        assert_eq!(
            b.bytes,
            ids.clone().map(frame).sum::<u64>(),
            "after {after}"
        );
        assert_eq!(b.oldest_received_at.is_some(), after < 50);
        if let Some(t) = b.oldest_received_at {
            assert!(t >= start - std::time::Duration::from_secs(1));
        }
    }
    // Twice: the second time from cached sealed totals, same answer.
    assert_eq!(wal.backlog(3), wal.backlog(3));
}
