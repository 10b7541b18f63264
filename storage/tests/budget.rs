//! The disk budget: backpressure, drop_oldest with exact accounting, the free-space
//! reserve, and out-of-space from the filesystem (injected and real).

mod common;

use std::collections::BTreeMap;

use common::*;
use tracespool_storage::failpoints::Action;
use tracespool_storage::format::{frame_len, SEGMENT_HEADER_LEN};
use tracespool_storage::{
    AppendError, CursorStart, Eviction, FullReason, GapCause, ReadItem, Wal, WalConfig, WalEvent,
    WhenFull,
};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn budget_config(dir: &std::path::Path, max_bytes: u64, when_full: WhenFull) -> WalConfig {
    let mut cfg = small_config(dir);
    cfg.max_bytes = max_bytes;
    cfg.when_full = when_full;
    cfg
}

fn frame_of(id: u64, len: usize) -> u64 {
    frame_len(format!("key-{id}").len(), len)
}

#[tokio::test]
async fn backpressure_fails_fast_at_the_exact_byte_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let max = 40_000;
    let (wal, _) = Wal::open(budget_config(dir.path(), max, WhenFull::Backpressure)).unwrap();
    let mut id = 0;
    let err = loop {
        let before = segment_bytes_on_disk(dir.path());
        match wal.append(record(id, 1000, 1)).await {
            Ok(_) => {
                assert!(segment_bytes_on_disk(dir.path()) <= max);
                id += 1;
            }
            Err(e) => {
                assert_eq!(
                    segment_bytes_on_disk(dir.path()),
                    before,
                    "a refused append wrote bytes"
                );
                // It was refused because it really did not fit: a new segment header
                // plus the frame, or the frame alone, would pass max_bytes.
                let frame = frame_of(id, 1000);
                assert!(
                    before + frame > max,
                    "refused although {before} + {frame} <= {max}"
                );
                break e;
            }
        }
    };
    assert!(err.is_retryable());
    let AppendError::Full(FullReason::Budget {
        used,
        needed,
        max_bytes,
    }) = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*max_bytes, max);
    assert_eq!(*used, segment_bytes_on_disk(dir.path()));
    assert!(used + needed > max);
    // Nothing already stored was touched.
    assert!(check_log_ids(&wal, id).is_empty());
    // Once delivered segments are deleted, appends succeed again.
    let c = wal.cursor("d", CursorStart::Oldest).unwrap();
    c.ack_range(1, id).unwrap();
    wal.maintain().await;
    assert_eq!(wal.append(record(id, 1000, 1)).await.unwrap().seq, id + 1);
}

fn check_log_ids(wal: &Wal, last: u64) -> Vec<tracespool_storage::Gap> {
    let mut gaps = Vec::new();
    let items = read_all(wal);
    let mut expect = 1;
    for it in items {
        match it {
            ReadItem::Record(r) => {
                assert_eq!(r.seq, expect);
                assert_record(&r, r.seq - 1, 1000, 1);
                expect += 1;
            }
            ReadItem::Gap(g) => {
                expect = g.last_seq + 1;
                gaps.push(g);
            }
        }
    }
    assert_eq!(expect, last + 1);
    gaps
}

#[tokio::test]
async fn drop_oldest_evicts_whole_oldest_segments_and_reports_exact_drops() {
    let dir = tempfile::tempdir().unwrap();
    let max = 50_000;
    let (wal, _) = Wal::open(budget_config(dir.path(), max, WhenFull::DropOldest)).unwrap();
    let mut events = wal.take_events().unwrap();
    let fast = wal.cursor("fast", CursorStart::Oldest).unwrap();
    let slow = wal.cursor("slow", CursorStart::Oldest).unwrap();
    let n = 200u64;
    let mut from_appends: Vec<Eviction> = Vec::new();
    // Which segment file held each seq, observed before each append.
    let mut seq_segment: BTreeMap<u64, String> = BTreeMap::new();
    for id in 0..n {
        let spans = spans_of(id);
        let a = wal.append(record(id, 1000, spans)).await.unwrap();
        assert_eq!(a.seq, id + 1);
        assert!(segment_bytes_on_disk(dir.path()) <= max, "budget exceeded");
        from_appends.extend(a.evicted);
        // `fast` keeps up except for the last 10 records; `slow` acks nothing.
        if a.seq > 10 {
            fast.ack(a.seq - 10).unwrap();
        }
        let active = segment_files(dir.path())
            .last()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        seq_segment.insert(a.seq, active);
    }
    let mut from_events = Vec::new();
    while let Ok(WalEvent::Evicted(e)) = events.try_recv() {
        from_events.push(e);
    }
    assert_eq!(
        from_events, from_appends,
        "the event stream and the append answers agree"
    );
    assert!(!from_appends.is_empty());
    // Evictions are the oldest segments, in order, contiguous from seq 1.
    let mut next = 1;
    for e in &from_appends {
        assert_eq!(e.first_seq, next, "{e:?}");
        assert_eq!(e.segment, e.first_seq);
        next = e.last_seq + 1;
        // Exact span count: the spans of the records it held.
        let spans: u64 = (e.first_seq..=e.last_seq)
            .map(|s| spans_of(s - 1) as u64)
            .sum();
        assert_eq!(e.spans, spans);
        // `slow` acknowledged nothing: everything was undelivered to it.
        assert_eq!(e.undelivered_records, e.records());
        assert_eq!(e.undelivered_spans, spans);
        let slow_loss = e.per_cursor.iter().find(|l| l.cursor == "slow").unwrap();
        assert_eq!((slow_loss.records, slow_loss.spans), (e.records(), spans));
        // `fast` lost only what it had not acked when the eviction happened.
        let fast_loss = e.per_cursor.iter().find(|l| l.cursor == "fast");
        if let Some(l) = fast_loss {
            assert!(l.records <= 10);
        }
        // Every seq of the range was in that one segment file.
        for s in e.first_seq..=e.last_seq {
            assert_eq!(seq_segment[&s], format!("{:020}.seg", e.segment));
        }
    }
    let dropped_last = next - 1;
    // The slow reader is told what is gone, then gets every remaining record.
    let items = drain(&mut slow.reader());
    let ReadItem::Gap(g) = &items[0] else {
        panic!("{:?}", items[0])
    };
    assert_eq!(
        (g.first_seq, g.last_seq, &g.cause),
        (1, dropped_last, &GapCause::NotRetained)
    );
    assert_eq!(items.len() as u64, 1 + n - dropped_last);
    for (item, seq) in items[1..].iter().zip(dropped_last + 1..) {
        let ReadItem::Record(r) = item else {
            panic!("{item:?}")
        };
        assert_eq!(r.seq, seq);
        assert_record(r, seq - 1, 1000, spans_of(seq - 1));
    }
}

#[tokio::test]
async fn drop_oldest_with_a_tiny_budget_evicts_the_active_segment_itself() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the header and two 1000-byte records, not three.
    let max = SEGMENT_HEADER_LEN as u64 + 2 * frame_of(10, 1000) + 500;
    let mut cfg = budget_config(dir.path(), max, WhenFull::DropOldest);
    cfg.max_bytes = cfg.max_bytes.max(2200 + 2 * 64);
    let max = cfg.max_bytes;
    let (wal, _) = Wal::open(cfg.clone()).unwrap();
    let mut evicted = Vec::new();
    for id in 0..10 {
        let a = wal.append(record(id, 1000, 1)).await.unwrap();
        assert_eq!(a.seq, id + 1);
        assert!(segment_bytes_on_disk(dir.path()) <= max);
        evicted.extend(a.evicted);
    }
    // Together the evictions and what is left cover 1..=10 exactly.
    let mut next = 1;
    for e in &evicted {
        assert_eq!(e.first_seq, next);
        next = e.last_seq + 1;
    }
    let items = read_all(&wal);
    let recs = records(&items);
    assert_eq!(recs.first().unwrap().seq, next);
    assert_eq!(recs.last().unwrap().seq, 10);
    assert_eq!(recs.len() as u64, 11 - next);
    wal.close().await;
    // Reopen: the seqs continue, never reused.
    let (wal, report) = Wal::open(cfg).unwrap();
    assert_eq!(report.next_seq, 11);
    assert_eq!(wal.append(record(10, 1000, 1)).await.unwrap().seq, 11);
}

#[tokio::test]
async fn min_free_bytes_refuses_appends_that_would_eat_the_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.min_free_bytes = u64::MAX / 4;
    let (wal, _) = Wal::open(cfg).unwrap();
    let err = wal.append(record(0, 100, 1)).await.unwrap_err();
    assert!(
        matches!(err, AppendError::Full(FullReason::MinFree { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("must stay free"), "{err}");
}

#[tokio::test]
async fn append_after_enospc_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let fp = cfg.failpoints.clone();
    let (wal, _) = Wal::open(cfg.clone()).unwrap();
    for id in 0..3 {
        wal.append(record(id, 1000, 1)).await.unwrap();
    }
    let active = segment_files(dir.path()).pop().unwrap();
    let len_before = std::fs::metadata(&active).unwrap().len();
    // The write gets 100 bytes onto disk, then the filesystem is full.
    fp.arm("segment.write", Action::PartialWrite(100, ENOSPC), 1);
    let err = wal.append(record(3, 1000, 1)).await.unwrap_err();
    assert!(
        matches!(err, AppendError::Full(FullReason::NoSpace { .. })),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(
        std::fs::metadata(&active).unwrap().len(),
        len_before,
        "partial write left behind"
    );
    // Space is back: the same seq is assigned, nothing is skipped.
    assert_eq!(wal.append(record(3, 1000, 1)).await.unwrap().seq, 4);
    wal.close().await;
    let (wal, report) = Wal::open(cfg).unwrap();
    assert!(report.torn_tail.is_none());
    assert!(check_log_ids(&wal, 4).is_empty());
}

#[tokio::test]
async fn enospc_creating_a_segment_keeps_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let fp = cfg.failpoints.clone();
    let (wal, _) = Wal::open(cfg).unwrap();
    wal.append(record(0, 1000, 1)).await.unwrap();
    fp.arm("segment.create", Action::Error(ENOSPC), 1);
    let err = wal.rotate().await.unwrap_err();
    assert!(
        matches!(err, AppendError::Full(FullReason::NoSpace { .. })),
        "{err:?}"
    );
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    assert_eq!(wal.append(record(1, 1000, 1)).await.unwrap().seq, 2);
    wal.rotate().await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert!(check_log_ids(&wal, 2).is_empty());
}

#[tokio::test]
async fn failed_fsync_is_final_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let fp = cfg.failpoints.clone();
    let (wal, _) = Wal::open(cfg.clone()).unwrap();
    for id in 0..3 {
        wal.append(record(id, 1000, 1)).await.unwrap();
    }
    fp.arm("segment.sync", Action::Error(EIO), 1);
    let err = wal.append(record(3, 1000, 1)).await.unwrap_err();
    assert!(matches!(err, AppendError::Failed { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("fdatasync"), "{err}");
    // The fault is gone, but the log does not pretend the data is safe.
    let again = wal.append(record(3, 1000, 1)).await.unwrap_err();
    assert!(matches!(again, AppendError::Failed { .. }));
    assert!(wal.stats().failed.is_some());
    // Readers never saw the record whose sync failed.
    assert_eq!(read_all(&wal).len(), 3);
    wal.close().await;
    // A restart recovers; the acknowledged records are all there, and the refused
    // one is not (it was cut off, so it cannot be delivered although it was
    // answered with a failure).
    let (wal, report) = Wal::open(cfg).unwrap();
    let items = read_all(&wal);
    let recs = records(&items);
    assert_eq!(recs.len(), 3, "{items:?}");
    for r in &recs[..3] {
        assert_record(r, r.seq - 1, 1000, 1);
    }
    assert_eq!(
        wal.append(record(9, 1000, 1)).await.unwrap().seq,
        report.next_seq
    );
}

#[tokio::test]
async fn fdatasync_out_of_space_is_backpressure_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let fp = cfg.failpoints.clone();
    let (wal, _) = Wal::open(cfg.clone()).unwrap();
    wal.append(record(0, 1000, 1)).await.unwrap();
    let before = segment_bytes_on_disk(dir.path());
    // Delayed allocation: the write went into the page cache, the sync finds no
    // block for it.
    fp.arm("segment.sync", Action::Error(ENOSPC), 1);
    let err = wal.append(record(1, 1000, 1)).await.unwrap_err();
    assert!(
        matches!(err, AppendError::Full(FullReason::NoSpace { .. })),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(
        segment_bytes_on_disk(dir.path()),
        before,
        "the unsynced bytes are cut off"
    );
    assert!(wal.stats().failed.is_none());
    // Space is back: the same append succeeds, with the seq nobody saw.
    assert_eq!(wal.append(record(1, 1000, 1)).await.unwrap().seq, 2);
    assert!(check_log_ids(&wal, 2).is_empty());
    wal.close().await;
    let (wal, _) = Wal::open(cfg).unwrap();
    assert!(check_log_ids(&wal, 2).is_empty());
}

#[tokio::test]
async fn failed_write_other_than_enospc_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let fp = cfg.failpoints.clone();
    let (wal, _) = Wal::open(cfg).unwrap();
    fp.arm("segment.write", Action::Error(EIO), 1);
    assert!(matches!(
        wal.append(record(0, 10, 1)).await,
        Err(AppendError::Failed { .. })
    ));
    assert!(matches!(
        wal.append(record(0, 10, 1)).await,
        Err(AppendError::Failed { .. })
    ));
}

/// A real full filesystem: a size-limited tmpfs (needs root; skipped otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_enospc_on_a_tiny_tmpfs_corrupts_nothing_and_appends_resume() {
    let Some(mnt) = TinyFs::mount(4 << 20) else {
        return;
    };
    let dir = mnt.path.join("data");
    let mut cfg = small_config(&dir);
    cfg.segment_bytes = 256 * 1024;
    let (wal, _) = Wal::open(cfg.clone()).unwrap();
    // Leave about 600 KiB free.
    let filler = mnt.path.join("filler");
    fill_until_free(&filler, &mnt.path, 600 * 1024);
    let mut acked = 0u64;
    let err = loop {
        match wal.append(record(acked, 4000, 1)).await {
            Ok(a) => {
                assert_eq!(a.seq, acked + 1);
                acked += 1;
            }
            Err(e) => break e,
        }
        assert!(acked < 10_000, "the filesystem never filled up");
    };
    assert!(
        matches!(err, AppendError::Full(FullReason::NoSpace { .. })),
        "{err:?}"
    );
    assert!(acked > 10, "only {acked} records fit");
    // Everything acknowledged reads back intact while the disk is full.
    assert_eq!(read_all(&wal).len() as u64, acked);
    std::fs::remove_file(&filler).unwrap();
    for i in 0..20 {
        assert_eq!(
            wal.append(record(acked + i, 4000, 1)).await.unwrap().seq,
            acked + i + 1
        );
    }
    wal.close().await;
    let (wal, report) = Wal::open(cfg).unwrap();
    assert!(report.lost.is_empty());
    let items = read_all(&wal);
    assert_eq!(items.len() as u64, acked + 20);
    for (i, r) in records(&items).iter().enumerate() {
        assert_record(r, i as u64, 4000, 1);
    }
    drop(wal);
}

fn fill_until_free(filler: &std::path::Path, fs: &std::path::Path, leave: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        let st = rustix::fs::statvfs(fs).unwrap();
        let free = st.f_bavail * st.f_frsize;
        if free <= leave + chunk.len() as u64 {
            break;
        }
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    f.sync_all().unwrap();
}

/// A tmpfs of a fixed size, unmounted on drop.
struct TinyFs {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        if !rustix::process::geteuid().is_root() {
            println!("SKIPPED real ENOSPC test: mounting a tmpfs needs root");
            return None;
        }
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { path, _dir: dir }),
            Ok(o) => {
                println!(
                    "SKIPPED real ENOSPC test: mount failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                None
            }
            Err(e) => {
                println!("SKIPPED real ENOSPC test: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test]
async fn a_record_delivered_after_its_eviction_says_so_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(budget_config(dir.path(), 30_000, WhenFull::DropOldest)).unwrap();
    let c = wal.cursor("d", CursorStart::Oldest).unwrap();
    let mut reader = c.reader();
    wal.append(record(0, 1000, 4)).await.unwrap();
    // The consumer has seq 1 in hand (in flight) when the eviction comes.
    let ReadItem::Record(in_flight) = reader.try_next().unwrap().unwrap() else {
        panic!()
    };
    let mut evicted = Vec::new();
    let mut id = 1;
    while evicted.is_empty() {
        evicted.extend(wal.append(record(id, 1000, 1)).await.unwrap().evicted);
        id += 1;
    }
    let e = &evicted[0];
    assert_eq!(e.first_seq, 1);
    let loss = &e.per_cursor[0];
    assert_eq!((loss.cursor.as_str(), loss.records), ("d", e.records()));
    assert_eq!(
        loss.spans,
        4 + e.records() - 1,
        "seq 1 carries 4 spans, the rest 1 each"
    );
    assert!(c.is_evicted(1));
    // Its delivery completes anyway: the ack says it was counted as lost.
    let ack = c.ack(in_flight.seq).unwrap();
    assert!(ack.after_eviction);
    assert!(
        !c.ack(in_flight.seq).unwrap().after_eviction,
        "reported once"
    );
    // A record acked normally, never evicted, is not flagged.
    assert!(!c.ack(e.last_seq + 1).unwrap().after_eviction);
}

#[tokio::test]
async fn an_eviction_the_audit_trail_cannot_record_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r = refuse.clone();
    let hook: tracespool_storage::EventHook = std::sync::Arc::new(move |e| match e {
        tracespool_storage::WalEvent::Evicted(_) if r.load(std::sync::atomic::Ordering::SeqCst) => {
            Err("ledger: no space".into())
        }
        _ => Ok(()),
    });
    let mut cfg = small_config(dir.path());
    cfg.max_bytes = 40_000;
    cfg.when_full = WhenFull::DropOldest;
    let (wal, _) = Wal::open_with_hook(cfg, Some(hook)).unwrap();
    let mut id = 0;
    let err = loop {
        match wal.append(record(id, 1000, 1)).await {
            Ok(_) => id += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, AppendError::Full(FullReason::NotRecorded { .. })),
        "{err:?}"
    );
    let files = segment_files(dir.path()).len();
    // Nothing was deleted; once the trail takes the entry, room is made.
    assert!(check_log_ids(&wal, id).is_empty());
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    wal.append(record(id, 1000, 1)).await.unwrap();
    assert!(segment_files(dir.path()).len() <= files);
}
