//! Reading part of a log, and a part newest first: what a consumer with a live lane
//! and a backlog lane reads. Every seq of the range comes out once — a record byte
//! for byte, or inside a gap — in the order asked for, and nothing the cursor has
//! acknowledged.

mod common;

use std::collections::BTreeSet;

use common::*;
use tracespool_storage::{CursorStart, GapCause, ReadItem, Wal, WalConfig};

const LEN: usize = 3000;

fn config(dir: &std::path::Path, segment_bytes: u64) -> WalConfig {
    let mut cfg = small_config(dir);
    cfg.segment_bytes = segment_bytes;
    cfg
}

async fn fill(dir: &std::path::Path, segment_bytes: u64, n: u64) {
    let (wal, _) = Wal::open(config(dir, segment_bytes)).unwrap();
    for i in 0..n {
        wal.append(record(i, LEN, spans_of(i))).await.unwrap();
    }
    wal.close().await;
}

/// Every item `newest_first` returns, checked to descend without overlap and to
/// cover `first..=last` minus `acked`. Returns (record seqs, gap seqs).
fn read_down(wal: &Wal, first: u64, last: u64, acked: &BTreeSet<u64>) -> (Vec<u64>, BTreeSet<u64>) {
    let cursor = wal.cursor("d", CursorStart::Oldest).unwrap();
    let mut down = cursor.newest_first(first, last);
    let mut records = Vec::new();
    let mut gaps = BTreeSet::new();
    let mut below = last + 1;
    while let Some(item) = down.next_item().unwrap() {
        match item {
            ReadItem::Record(r) => {
                assert!(r.seq < below, "seq {} after {below}", r.seq);
                assert!(!acked.contains(&r.seq), "acked seq {} returned", r.seq);
                assert_record(&r, r.seq - 1, LEN, spans_of(r.seq - 1));
                below = r.seq;
                records.push(r.seq);
            }
            ReadItem::Gap(g) => {
                assert!(
                    g.last_seq < below && g.first_seq >= first,
                    "{g:?} after {below}"
                );
                gaps.extend(g.first_seq..=g.last_seq);
                below = g.first_seq;
            }
        }
    }
    let seen: BTreeSet<u64> = records
        .iter()
        .copied()
        .chain(gaps.iter().copied())
        .collect();
    let want: BTreeSet<u64> = (first..=last).filter(|s| !acked.contains(s)).collect();
    assert_eq!(seen, want, "every seq of the range, once");
    (records, gaps)
}

#[tokio::test]
async fn newest_first_returns_a_range_in_descending_order_across_chunks_and_segments() {
    // 6 000 records of 3 KB in 8 MiB segments: several 3 MiB chunks per segment.
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 8 << 20, 6000).await;
    let (wal, _) = Wal::open(config(dir.path(), 8 << 20)).unwrap();
    assert!(segment_files(dir.path()).len() >= 3);
    let none = BTreeSet::new();
    let (records, gaps) = read_down(&wal, 1, 6000, &none);
    assert_eq!(records, (1..=6000).rev().collect::<Vec<_>>());
    assert!(gaps.is_empty());
    // A part starting and ending inside segments.
    let (records, _) = read_down(&wal, 777, 3333, &none);
    assert_eq!(records, (777..=3333).rev().collect::<Vec<_>>());
    // Acknowledged records (another lane delivered them) are skipped.
    let cursor = wal.cursor("d", CursorStart::Oldest).unwrap();
    let mut acked = BTreeSet::new();
    for (a, b) in [(10, 20), (1500, 2600), (3999, 4000), (5990, 6000)] {
        cursor.ack_range(a, b).unwrap();
        acked.extend(a..=b);
    }
    let (records, _) = read_down(&wal, 1, 6000, &acked);
    assert_eq!(records.len(), 6000 - acked.len());
    wal.close().await;
}

#[tokio::test]
async fn newest_first_reports_damage_inside_a_chunk_as_a_gap_and_reads_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5 << 20, 3000).await;
    let files = segment_files(dir.path());
    // Damage a record in the middle of the first segment and one in the second.
    let mut damaged = Vec::new();
    for (f, i) in [(&files[0], 900), (&files[1], 300)] {
        let frame = frames(f)[i];
        flip_byte(f, frame.offset + frame.len / 2);
        damaged.push(frame.seq);
    }
    let (wal, _) = Wal::open(config(dir.path(), 5 << 20)).unwrap();
    let (records, gaps) = read_down(&wal, 1, 3000, &BTreeSet::new());
    assert_eq!(gaps, damaged.iter().copied().collect::<BTreeSet<_>>());
    assert_eq!(records.len(), 3000 - 2);
    wal.close().await;
}

#[tokio::test]
async fn a_bounded_reader_stops_at_its_last_seq_and_cuts_gaps_there() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 64 << 10, 300).await;
    let files = segment_files(dir.path());
    let frame = frames(&files[1])[3];
    flip_byte(&files[1], frame.offset + frame.len / 2);
    let (wal, _) = Wal::open(config(dir.path(), 64 << 10)).unwrap();
    let cursor = wal.cursor("d", CursorStart::Oldest).unwrap();
    cursor.ack_range(50, 60).unwrap();
    let mut r = cursor.reader_between(40, frame.seq);
    let items = drain(&mut r);
    assert!(r.is_done());
    let mut seen = Vec::new();
    for item in &items {
        match item {
            ReadItem::Record(rec) => {
                assert_record(rec, rec.seq - 1, LEN, spans_of(rec.seq - 1));
                seen.push(rec.seq);
            }
            ReadItem::Gap(g) => {
                assert!(matches!(g.cause, GapCause::Damaged(_)), "{g:?}");
                assert_eq!((g.first_seq, g.last_seq), (frame.seq, frame.seq));
                seen.push(g.first_seq);
            }
        }
    }
    let want: Vec<u64> = (40..=frame.seq)
        .filter(|s| !(50..=60).contains(s))
        .collect();
    assert_eq!(seen, want);
    // A bound inside a segment: exactly up to it.
    let mut r = cursor.reader_between(1, 5);
    let items = drain(&mut r);
    assert_eq!(records(&items).len(), 5);
    assert!(r.is_done());
    wal.close().await;
}
