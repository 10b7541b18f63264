//! Failing flash: bad sectors in a sealed segment, in the active segment and under
//! the metadata, and an `fdatasync` that fails (its data really gone from the disk
//! while the page cache still shows it) followed by a restart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use faultfs::harness::MountOptions;
use faultfs::{Action, BadRange, Op, Rule};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tracespool_storage::format::{decode_frame, SEGMENT_HEADER_LEN};

use crate::edge::Edge;
use crate::load::{self, Expect, Load, MayLose};
use crate::power::{dests, sinks};
use crate::support::backend::Mode;
use crate::support::python::PyResult;

const STORAGE: &str = "segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"";

/// A record as it lies in a segment file on the backing disk.
struct OnDisk {
    offset: u64,
    len: u64,
    span_ids: Vec<String>,
}

fn records_in(path: &Path) -> Vec<OnDisk> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while let Ok(f) = decode_frame(&bytes[off..]) {
        let req = ExportTraceServiceRequest::decode(f.payload).unwrap();
        let span_ids = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| crate::support::backend::hex(&s.span_id))
            .collect();
        out.push(OnDisk {
            offset: off as u64,
            len: f.frame_len() as u64,
            span_ids,
        });
        off += f.frame_len();
    }
    out
}

fn segments(backing: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(backing.join("data/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Fills the spool while the backends are down, then stops everything cleanly:
/// what is acknowledged is on disk, undelivered.
async fn spool_undelivered(dir: &Path, edge: &mut Edge, secs: u64) -> Vec<PyResult> {
    edge.power_on();
    let load = Load::start(dir, &edge.spool, 1, 1, 20, 0.02);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let results = load.finish();
    edge.shutdown();
    results
}

/// A 512-byte bad sector at byte `at`: the 4 KiB page(s) around it cannot be
/// read, and every record touching them is lost.
fn bad_sector_at(rel: &str, recs: &[OnDisk], at: u64) -> (BadRange, BTreeSet<String>) {
    let range = BadRange {
        path: rel.to_string(),
        offset: at,
        len: 512,
    };
    let (page_lo, page_hi) = (at / 4096 * 4096, (at + 512).div_ceil(4096) * 4096);
    let lost = recs
        .iter()
        .filter(|r| r.offset < page_hi && r.offset + r.len > page_lo)
        .flat_map(|r| r.span_ids.clone())
        .collect();
    (range, lost)
}

/// `pick` chooses the segment, `at` the byte of it that goes bad.
async fn bad_sector_scenario(name: &str, pick: fn(&[PathBuf]) -> usize, at: fn(&[OnDisk]) -> u64) {
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    g.set_mode(Mode::Unavailable);
    h.set_mode(Mode::Unavailable);
    let mut edge = Edge::new(dir.path(), STORAGE, &dests(&g, &h), MountOptions::default());
    let mut results = spool_undelivered(dir.path(), &mut edge, 4).await;
    // The chosen segment needs records before and after the bad one; the active
    // segment may have just been started: spool a little more until it has.
    let mut round = 0;
    let (seg, recs) = loop {
        let segs = segments(&edge.backing);
        assert!(segs.len() >= 3, "need several segments, got {segs:?}");
        let seg = segs[pick(&segs)].clone();
        let recs = records_in(&seg);
        if recs.len() >= 3 {
            break (seg, recs);
        }
        round += 1;
        assert!(
            round <= 10,
            "{name}: {} never held 3 records",
            seg.display()
        );
        edge.power_on();
        let load = Load::start_round(dir.path(), &edge.spool, 1, 1, 20, 0.02, round);
        // Long enough for the clients to start and send a few batches.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        results.extend(load.finish());
        edge.shutdown();
    };
    let rel = format!("data/wal/{}", seg.file_name().unwrap().to_string_lossy());
    let (bad, lost) = bad_sector_at(&rel, &recs, at(&recs));
    edge.opts.bad = vec![bad];
    // Power on with the bad sector; the uplink is back.
    g.set_mode(Mode::Accept);
    h.set_mode(Mode::Accept);
    edge.power_on();
    let audit = load::settled_audit(&edge.spool).await;
    // Exactly the spans of the unreadable records are missing, and counted.
    for (sink, dest) in [(&g, "grpc-sink"), (&h, "http-sink")] {
        let got: BTreeSet<String> = sink.span_id_counts().into_keys().collect();
        let acked: BTreeSet<String> = results.iter().flat_map(|r| r.span_ids()).collect();
        let missing: BTreeSet<String> = acked.difference(&got).cloned().collect();
        assert_eq!(
            missing, lost,
            "{name}: {dest} misses other spans than the unreadable ones"
        );
        let d = audit["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["destination"] == dest)
            .unwrap()
            .clone();
        assert_eq!(
            d["dropped"]["corruption"]["spans"].as_u64(),
            Some(lost.len() as u64),
            "{name}: {d:#}"
        );
    }
    assert!(edge.spool.log_text().contains("read error (I/O)"));
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles: 1,
            started,
            may_lose: MayLose::AuditDropped,
            max_redelivered: Some(0),
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sector_in_a_sealed_segment_loses_exactly_its_records_and_says_so() {
    bad_sector_scenario(
        "a_bad_sector_in_a_sealed_segment_loses_exactly_its_records_and_says_so",
        |segs| segs.len() / 2,
        middle_of_a_record,
    )
    .await;
}

fn middle_of_a_record(recs: &[OnDisk]) -> u64 {
    let r = &recs[recs.len() / 2];
    r.offset + r.len / 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sector_in_a_segment_header_loses_only_the_records_under_it() {
    bad_sector_scenario(
        "a_bad_sector_in_a_segment_header_loses_only_the_records_under_it",
        |segs| segs.len() / 2,
        |_| 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sector_in_the_active_segment_loses_exactly_its_records_and_says_so() {
    bad_sector_scenario(
        "a_bad_sector_in_the_active_segment_loses_exactly_its_records_and_says_so",
        |segs| segs.len() - 1,
        middle_of_a_record,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sectors_under_the_metadata_do_not_stop_the_start() {
    let name = "bad_sectors_under_the_metadata_do_not_stop_the_start";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    g.set_mode(Mode::Unavailable);
    let mut edge = Edge::new(dir.path(), STORAGE, &dests(&g, &h), MountOptions::default());
    let results = spool_undelivered(dir.path(), &mut edge, 3).await;
    // The sled store's files, the log's state file and one cursor file, each with
    // an unreadable first page.
    let mut bad = Vec::new();
    for e in std::fs::read_dir(edge.backing.join("data/meta")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            bad.push(BadRange {
                path: format!("data/meta/{}", p.file_name().unwrap().to_string_lossy()),
                offset: 0,
                len: 4096,
            });
        }
    }
    bad.push(BadRange {
        path: "data/wal.state".into(),
        offset: 0,
        len: 512,
    });
    bad.push(BadRange {
        path: "data/cursors/*.cursor".into(),
        offset: 0,
        len: 512,
    });
    edge.opts.bad = bad;
    g.set_mode(Mode::Accept);
    edge.power_on();
    let log = edge.run_log();
    assert!(
        log.contains("needed repair at start") || log.contains("damaged"),
        "{name}: the repairs are reported:\n{log}"
    );
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles: 1,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: None,
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_then_a_restart_never_exports_what_the_disk_lost() {
    let name = "a_failed_fsync_then_a_restart_never_exports_what_the_disk_lost";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    let mut edge = Edge::new(dir.path(), STORAGE, &dests(&g, &h), MountOptions::default());
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let cycles = crate::knob("fsync_eio", 2, 20);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(800)).await;
        // The device fails a writeback: the bytes are gone from the disk, the page
        // cache still shows them.
        edge.arm(
            Rule::new(
                &[Op::Fsync],
                Some("data/wal/*.seg"),
                Action::Error {
                    errno: libc_eio(),
                    lose: true,
                },
            )
            .nth(3),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, _) =
                crate::support::spool::get(&format!("http://{}/readyz", edge.spool.admin)).await;
            if code == 503 && edge.spool.log_text().contains("write-ahead log failed") {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: the log never refused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // An operator restarts the process (no reboot: the page cache stays)...
        edge.kill9_and_restart();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // ...and later the power goes (what was only in the cache is gone for good).
        edge.power_cut();
        edge.power_on();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = load.finish();
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: None,
        },
    )
    .await;
    edge.shutdown();
}

fn libc_eio() -> i32 {
    5
}
