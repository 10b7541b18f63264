//! Reading a log from outside (the tools), and the synchronous loss hook.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tracespool_storage::offline::{
    for_each_record, forwarder_running, list_segments, read_record, read_segment,
};
use tracespool_storage::{CursorStart, GapCause, KeyRing, ReadItem, Wal, WalEvent, WhenFull};

const LEN: usize = 900;

#[tokio::test]
async fn offline_reading_sees_exactly_what_the_log_reader_sees() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), 60, LEN).await;
    let segments = list_segments(dir.path()).unwrap();
    assert_eq!(segments.len(), files.len());
    assert!(segments.iter().all(|s| s.header_error.is_none()));
    let mut seen = Vec::new();
    let damage = for_each_record(dir.path(), 1, u64::MAX, true, &KeyRing::default(), |r| {
        seen.push(r);
        Ok(())
    })
    .unwrap();
    assert!(damage.is_empty());
    assert_eq!(seen.len(), 60);
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_record(r, i as u64, LEN, spans_of(i as u64));
    }
    let r = read_record(dir.path(), 37, &KeyRing::default())
        .unwrap()
        .unwrap();
    assert_record(&r, 36, LEN, spans_of(36));
    assert!(read_record(dir.path(), 61, &KeyRing::default())
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn offline_reading_reports_the_same_damage_as_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let files = fill_and_close(dir.path(), 60, LEN).await;
    // Damage a record in the second segment and truncate the third mid-record.
    let f1 = frames(&files[1]);
    flip_byte(&files[1], f1[1].offset + 5);
    let f2 = frames(&files[2]);
    truncate(&files[2], f2[2].offset + 10);
    let segments = list_segments(dir.path()).unwrap();
    let mut offline = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let next = segments.get(i + 1).map(|n| n.first_seq);
        offline.extend(
            read_segment(s, next, false, &KeyRing::default())
                .unwrap()
                .damage
                .into_iter()
                .map(|l| (l.first_seq, l.last_seq)),
        );
    }
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    let online: Vec<(u64, u64)> = read_all(&wal)
        .into_iter()
        .filter_map(|i| match i {
            ReadItem::Gap(g) if matches!(g.cause, GapCause::Damaged(_)) => {
                Some((g.first_seq, g.last_seq))
            }
            _ => None,
        })
        .collect();
    assert_eq!(offline, online);
    assert_eq!(offline.len(), 2);
    assert_eq!(offline[0], (f1[1].seq, f1[1].seq));
    assert_eq!(offline[1].0, f2[2].seq);
}

#[tokio::test]
async fn the_hook_hears_each_loss_before_it_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let heard: Arc<Mutex<Vec<(WalEvent, bool)>>> = Arc::default();
    let wal_dir = dir.path().join("wal");
    let h = heard.clone();
    let hook: tracespool_storage::EventHook = Arc::new(move |e: &WalEvent| {
        // For an eviction: is the segment still on disk while we are told?
        let present = match e {
            WalEvent::Evicted(ev) => wal_dir.join(format!("{:020}.seg", ev.segment)).exists(),
            _ => true,
        };
        h.lock().unwrap().push((e.clone(), present));
        Ok(())
    });
    let mut cfg = small_config(dir.path());
    cfg.max_bytes = 40_000;
    cfg.when_full = WhenFull::DropOldest;
    let (wal, _) = Wal::open_with_hook(cfg, Some(hook)).unwrap();
    let c = wal.cursor("d", CursorStart::Oldest).unwrap();
    c.ack_range(1, 1).ok();
    let mut evicted = Vec::new();
    for i in 0..60 {
        evicted.extend(wal.append(record(i, 1000, 2)).await.unwrap().evicted);
    }
    let events = heard.lock().unwrap().clone();
    assert_eq!(events.len(), evicted.len());
    for ((e, present), ev) in events.iter().zip(&evicted) {
        assert!(present, "told after the segment was gone");
        let WalEvent::Evicted(got) = e else { panic!() };
        assert_eq!(got, ev);
        // The per-destination ranges add up to the per-destination counts.
        for loss in &got.per_cursor {
            let n: u64 = loss.ranges.iter().map(|(a, b)| b - a + 1).sum();
            assert_eq!(n, loss.records);
        }
    }
}

#[tokio::test]
async fn tools_see_whether_a_forwarder_holds_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!forwarder_running(dir.path()).unwrap(), "no LOCK file yet");
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    assert!(forwarder_running(dir.path()).unwrap());
    // The probe does not keep the lock: a second probe sees the same.
    assert!(forwarder_running(dir.path()).unwrap());
    wal.close().await;
    assert!(!forwarder_running(dir.path()).unwrap());
    // And it never stops a forwarder from starting.
    let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
    wal.close().await;
}
