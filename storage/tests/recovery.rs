//! Opening a log after what edge boxes die of: unclean stops under every fsync
//! policy, an empty or missing active segment, odd files named like segments, a
//! damaged metadata store or state file. The open always succeeds (unless a newer
//! format wrote the log), no seq is ever assigned twice, and every record that was
//! on disk reads back intact.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use common::*;
use tracespool_storage::{CursorStart, FsyncPolicy, GapCause, ReadItem, Wal, WalEvent};

const LEN: usize = 700;

fn gaps(items: &[ReadItem]) -> Vec<tracespool_storage::Gap> {
    items
        .iter()
        .filter_map(|i| match i {
            ReadItem::Gap(g) => Some(g.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_unclean_stop_under_fsync_always_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(dir.path(), 20, LEN).await;
    tracespool_storage::__forget_clean_close(dir.path()).unwrap();
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert!(!report.clean_stop);
    assert!(report.skipped.is_none(), "{:?}", report.skipped);
    assert_eq!(report.next_seq, 21);
    assert_eq!(wal.append(record(20, LEN, 1)).await.unwrap().seq, 21);
}

#[tokio::test]
async fn an_unclean_stop_under_fsync_never_skips_every_seq_that_may_have_been_given_out() {
    for policy in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_millis(50)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small_config(dir.path());
        cfg.fsync = policy;
        let (wal, _) = Wal::open(cfg.clone()).unwrap();
        for i in 0..10 {
            wal.append(record(i, LEN, spans_of(i))).await.unwrap();
        }
        wal.close().await;
        tracespool_storage::__forget_clean_close(dir.path()).unwrap();
        let (wal, report) = Wal::open(cfg.clone()).unwrap();
        // Acknowledged records may have been lost with the page cache: their seqs
        // (and idempotency keys) are never given to other records.
        let s = report.skipped.clone().expect("skipped");
        assert_eq!(s.first_seq, 11);
        assert!(s.last_seq >= 11 + 4095 - 10, "{s:?}");
        assert!(s.may_hold_acknowledged);
        assert!(s.reason.contains("fsync"), "{}", s.reason);
        let seq = wal.append(record(10, LEN, spans_of(10))).await.unwrap().seq;
        assert_eq!(seq, s.last_seq + 1);
        wal.close().await;
        // Readers see a skip, not damage, and every record intact.
        let (wal, report) = Wal::open(cfg).unwrap();
        assert!(report.skipped.is_none(), "a clean close skips nothing");
        let items = read_all(&wal);
        let g = gaps(&items);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].cause, GapCause::Skipped);
        assert_eq!((g[0].first_seq, g[0].last_seq), (11, seq - 1));
        let recs = records(&items);
        assert_eq!(recs.len(), 11);
        for r in &recs[..10] {
            assert_record(r, r.seq - 1, LEN, spans_of(r.seq - 1));
        }
        assert!(wal.damage().is_empty());
    }
}

#[tokio::test]
async fn a_zero_length_active_segment_is_reported_as_possible_loss_and_its_seqs_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), 60, LEN).await;
    assert!(files.len() >= 3);
    tracespool_storage::__forget_clean_close(dir.path()).unwrap();
    let active = files.last().unwrap().clone();
    let active_first = first_seq_of(&active);
    truncate(&active, 0);
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = heard.clone();
    let hook: tracespool_storage::EventHook = std::sync::Arc::new(move |e: &WalEvent| {
        h.lock().unwrap().push(e.clone());
        Ok(())
    });
    let (wal, report) = Wal::open_with_hook(small_config(dir.path()), Some(hook)).unwrap();
    let s = report.skipped.clone().expect("a loss line");
    assert_eq!(s.first_seq, active_first);
    assert!(s.may_hold_acknowledged);
    assert!(s.reason.contains("active segment"), "{}", s.reason);
    assert_eq!(report.quarantined.len(), 1);
    assert!(!active.exists());
    // The audit trail heard of it before any new seq was assigned.
    assert!(heard
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, WalEvent::Skipped(x) if x.first_seq == active_first)));
    let seq = wal.append(record(99, LEN, 1)).await.unwrap().seq;
    assert!(seq > s.last_seq);
    // Everything before the lost segment reads back.
    let items = read_all(&wal);
    assert_eq!(records(&items).len() as u64, active_first); // ..=active_first-1, plus the new one
}

#[tokio::test]
async fn a_garbage_file_named_like_a_high_segment_is_moved_aside_without_phantom_loss() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(dir.path(), 10, LEN).await;
    let stray = dir.path().join("wal/00000000000000900000.seg");
    std::fs::write(&stray, vec![0xA5u8; 5000]).unwrap();
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert!(!stray.exists());
    assert_eq!(report.quarantined.len(), 1);
    assert!(report.lost.is_empty() && report.skipped.is_none());
    assert_eq!(report.next_seq, 11);
    assert!(check_log(&wal, LEN, 10).is_empty());
    assert!(wal.damage().is_empty());
}

#[tokio::test]
async fn directories_symlinks_and_fifos_named_like_segments_are_quarantined_without_opening_them() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(dir.path(), 10, LEN).await;
    let wal_dir = dir.path().join("wal");
    std::fs::create_dir(wal_dir.join("00000000000000000100.seg")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", wal_dir.join("00000000000000000200.seg")).unwrap();
    let fifo = wal_dir.join("00000000000000000300.seg");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // Opening a FIFO for reading would block forever: the open must not.
    let opened = std::thread::spawn({
        let cfg = small_config(dir.path());
        move || Wal::open(cfg).map(|(_, r)| r)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !opened.is_finished() {
        assert!(std::time::Instant::now() < deadline, "open hangs on a FIFO");
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = opened.join().unwrap().unwrap();
    assert_eq!(report.quarantined.len(), 3, "{:?}", report.quarantined);
    assert_eq!(report.next_seq, 11);
    let names: Vec<String> = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(".not-a-file")),
        "{names:?}"
    );
}

extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::os::raw::c_char, mode: u32) -> i32;
}

#[tokio::test]
async fn a_damaged_metadata_store_is_moved_aside_and_the_log_opens() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(dir.path(), 10, LEN).await;
    // Garbage over sled's files.
    for e in std::fs::read_dir(dir.path().join("meta")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::write(&p, vec![0x5Au8; 4096]).unwrap();
        }
    }
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert!(
        report.repaired.iter().any(|r| r.contains("metadata store")),
        "{:?}",
        report.repaired
    );
    assert_eq!(report.next_seq, 11);
    assert!(check_log(&wal, LEN, 10).is_empty());
}

#[tokio::test]
async fn a_damaged_state_file_skips_far_past_every_seq_known() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(dir.path(), 10, LEN).await;
    std::fs::write(dir.path().join("wal.state"), vec![0u8; 1024]).unwrap();
    let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
    assert!(report.repaired.iter().any(|r| r.contains("wal.state")));
    let s = report.skipped.expect("skipped");
    assert_eq!(s.first_seq, 11);
    assert!(s.last_seq >= 11 + (1 << 20) - 2);
    assert!(check_log(&wal, LEN, s.last_seq).len() == 1);
}

#[tokio::test]
async fn acks_far_beyond_a_stuck_record_survive_a_restart_and_are_not_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (wal, _) = Wal::open(cfg.clone()).unwrap();
    for i in 0..50 {
        wal.append(record(i, 100, 1)).await.unwrap();
    }
    let c = wal.cursor("central", CursorStart::Oldest).unwrap();
    // Seq 3 is stuck; everything else was delivered, out of order.
    c.ack_range(1, 2).unwrap();
    for seq in (4..=50).rev() {
        c.ack(seq).unwrap();
    }
    assert_eq!(c.position(), 2);
    c.persist().unwrap();
    // A crash: no close.
    drop(c);
    std::mem::forget(wal);
    let (wal, _) = {
        // The old writer thread still holds the lock; a child process would be
        // cleaner, but a second directory copy does the same.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let mut cfg2 = cfg.clone();
        cfg2.dir = copy.path().to_path_buf();
        let opened = Wal::open(cfg2).unwrap();
        std::mem::forget(copy);
        opened
    };
    let c = wal.cursor("central", CursorStart::Oldest).unwrap();
    assert_eq!(c.position(), 2);
    assert_eq!(c.acked_above(), vec![(4, 50)]);
    let mut r = c.reader();
    let items = drain(&mut r);
    let seqs: Vec<u64> = records(&items).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![3], "only the stuck record is delivered again");
    c.ack(3).unwrap();
    assert_eq!(c.position(), 50);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&e.path(), &dest);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn first_seq_of(path: &std::path::Path) -> u64 {
    path.file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".seg")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_tool_probing_the_lock_does_not_make_a_starting_forwarder_fail() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(dir.path(), 3, LEN).await;
    // A tool's probe: a shared lock held for a moment.
    let lock = std::fs::File::open(dir.path().join("LOCK")).unwrap();
    lock.try_lock_shared().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(lock);
    });
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    release.join().unwrap();
    assert!(check_log(&wal, LEN, 3).is_empty());
}
