//! A full disk: while appending, while rotating, while writing the audit ledger,
//! while writing a dead letter — and a restart while it is still full.

use std::time::{Duration, Instant};

use faultfs::harness::MountOptions;
use faultfs::{Action, Op, Rule};

use crate::edge::Edge;
use crate::load::{self, Expect, Load, MayLose};
use crate::power::{dests, sinks, MAX_IN_FLIGHT};
use crate::support::backend::Mode;

const ENOSPC: i32 = 28;

/// Small files so a few MiB of disk hold a useful spool: 64 KiB segments, ledger
/// files of 256 KiB (preallocated), a budget larger than the disk so the disk
/// fills first.
const STORAGE: &str = "segment_bytes = \"64KiB\"\nmax_bytes = \"64MiB\"";
const AUDIT: &str =
    "[audit]\nfile_bytes = \"256KiB\"\nmax_bytes = \"2MiB\"\nreserve_bytes = \"256KiB\"";
/// Ledger files so small that their preallocation is soon used up: then only the
/// reserve lets deliveries be recorded on a full disk.
const SMALL_LEDGER: &str =
    "[audit]\nfile_bytes = \"16KiB\"\nmax_bytes = \"2MiB\"\nreserve_bytes = \"256KiB\"";

async fn wait_full(edge: &Edge, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) =
            crate::support::spool::get(&format!("http://{}/readyz", edge.spool.admin)).await;
        if code == 503 && body.contains("full") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the spool never reported full"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_appending_is_backpressure_and_appends_resume() {
    let name = "a_full_disk_while_appending_is_backpressure_and_appends_resume";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    g.set_mode(Mode::Unavailable);
    h.set_mode(Mode::Unavailable);
    let mut edge = Edge::new(
        dir.path(),
        STORAGE,
        &dests(&g, &h),
        MountOptions {
            limit: Some(4 << 20),
            ..Default::default()
        },
    );
    edge.spool.append_config(AUDIT);
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 40, 0.0);
    wait_full(&edge, name).await;
    // The disk ran out under the log (an append, its fdatasync, or the creation of
    // the next segment found ENOSPC), or under the ledger first (it went on in its
    // reserve, and the log then refused appends that would take the reserve's
    // worth of space): either way, ENOSPC reached the process and the refusals are
    // backpressure.
    let log = edge.spool.log_text();
    assert!(
        log.contains("filesystem full")
            || log.contains("no space left on the filesystem")
            || log.contains("the audit ledger goes on in its reserve"),
        "{name}: no ENOSPC reached the log or the ledger"
    );
    assert!(
        log.contains("refusing requests: the spool is full (backpressure)"),
        "{name}: the spool reported full but no refusal was logged"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    g.set_mode(Mode::Accept);
    h.set_mode(Mode::Accept);
    // Drains, frees space, takes appends again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let results = load.finish();
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles: 1,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: Some(0),
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_and_a_restart_still_start_serve_backpressure_and_drain() {
    let name = "a_full_disk_and_a_restart_still_start_serve_backpressure_and_drain";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    g.set_mode(Mode::Unavailable);
    h.set_mode(Mode::Unavailable);
    let mut edge = Edge::new(
        dir.path(),
        STORAGE,
        &dests(&g, &h),
        MountOptions {
            limit: Some(4 << 20),
            ..Default::default()
        },
    );
    edge.spool.append_config(SMALL_LEDGER);
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 40, 0.0);
    let cycles = crate::knob("full_restarts", 3, 20);
    for i in 0..cycles {
        wait_full(&edge, name).await;
        // Down while the disk is full: a power cut, or a kill.
        if i % 2 == 0 {
            edge.power_cut();
            edge.power_on();
        } else {
            edge.kill9_and_restart();
        }
        // It started on a full disk (power_on waits for "running").
    }
    g.set_mode(Mode::Accept);
    h.set_mode(Mode::Accept);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let results = load.finish();
    // The deliveries that drained the full disk could only be recorded thanks to
    // the ledger's reserve (without it: a deadlock, found by the soak).
    assert!(
        edge.spool
            .log_text()
            .contains("the audit ledger goes on in its reserve"),
        "{name}: the disk never got full enough to need the reserve"
    );
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: Some(cycles as usize * MAX_IN_FLIGHT),
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_while_rotating_refuses_appends_until_a_segment_can_be_made() {
    let name = "no_space_while_rotating_refuses_appends_until_a_segment_can_be_made";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    let mut edge = Edge::new(dir.path(), STORAGE, &dests(&g, &h), MountOptions::default());
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let cycles = crate::knob("rotate_enospc", 3, 30);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // C1 fails five times in a row, then C2 once.
        edge.arm(
            Rule::new(
                &[Op::Create],
                Some("data/wal/*.seg.tmp"),
                Action::Error {
                    errno: ENOSPC,
                    lose: false,
                },
            )
            .times(5),
        );
        edge.arm(Rule::new(
            &[Op::Write],
            Some("data/wal/*.seg.tmp"),
            Action::Error {
                errno: ENOSPC,
                lose: false,
            },
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let results = load.finish();
    assert!(
        edge.spool.log_text().contains("RESOURCE_EXHAUSTED")
            || results
                .iter()
                .any(|r| r.summary["failures"].as_u64().unwrap_or(0) > 0)
    );
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: Some(0),
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_for_the_audit_ledger_holds_deliveries_back_and_loses_no_entry() {
    let name = "no_space_for_the_audit_ledger_holds_deliveries_back_and_loses_no_entry";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    let mut edge = Edge::new(dir.path(), STORAGE, &dests(&g, &h), MountOptions::default());
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let cycles = crate::knob("ledger_enospc", 3, 30);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // A write that gets half a line out, then a run of refusals.
        edge.arm(Rule::new(
            &[Op::Write],
            Some("data/ledger/*.jsonl"),
            Action::Short { bytes: 17 },
        ));
        edge.arm(
            Rule::new(
                &[Op::Write],
                Some("data/ledger/*.jsonl"),
                Action::Error {
                    errno: ENOSPC,
                    lose: false,
                },
            )
            .nth(2)
            .times(40),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let results = load.finish();
    // Accepted entries that could not be written come back from the log at the
    // next start; every line in the ledger is whole.
    edge.kill9_and_restart();
    let ledger_dir = edge.spool.data.join("ledger");
    for e in std::fs::read_dir(&ledger_dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            let text = std::fs::read_to_string(&p).unwrap();
            for line in text.lines().filter(|l| !l.is_empty()) {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "{name}: a glued or torn line in {}: {line:?}",
                    p.display()
                );
            }
        }
    }
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: Some(MAX_IN_FLIGHT),
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_for_a_dead_letter_keeps_the_record_until_it_can_be_written() {
    let name = "no_space_for_a_dead_letter_keeps_the_record_until_it_can_be_written";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    // Batches 3 and 7 of the gRPC client are refused for good by both backends.
    let prefix = format!("grpc0-{}", std::process::id());
    for b in [3, 7] {
        g.poison(&format!("{prefix} op {b}.0"));
        h.poison(&format!("{prefix} op {b}.0"));
    }
    let mut edge = Edge::new(dir.path(), STORAGE, &dests(&g, &h), MountOptions::default());
    edge.power_on();
    edge.arm(
        Rule::new(
            &[Op::Create, Op::Write, Op::Mkdir],
            Some("data/dead-letter/**"),
            Action::Error {
                errno: ENOSPC,
                lose: false,
            },
        )
        .times(8),
    );
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.02);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let results = load.finish();
    assert!(
        edge.spool
            .log_text()
            .contains("could not write a dead letter"),
        "{name}: the dead letter never met a full disk"
    );
    // Retried until written (with backoff): two per destination in the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let letters = edge.spool.tool_json(&["dead-letter", "list"]).await.1;
        let n = letters.as_array().map(|a| a.len()).unwrap_or(0);
        if n == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: two dead letters per destination: {letters:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
