//! Power cuts: at random moments under load (with and without torn writes), at
//! every labelled step of the write-ahead log's fsync order (`storage/FORMAT.md`)
//! and of delivery, during eviction (`drop_oldest`), and under `fsync = never`.

use std::time::{Duration, Instant};

use faultfs::harness::MountOptions;
use faultfs::{Action, Op, Rule, When};

use crate::edge::Edge;
use crate::load::{self, Expect, Load, MayLose};
use crate::support::backend::{Backend, Kind, Mode};
use crate::support::spool::Dest;

const STORAGE: &str = "segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"";
/// The destinations' `max_in_flight` (the default): what one cut may redeliver.
pub const MAX_IN_FLIGHT: usize = 8;

/// Two sinks, one per export protocol.
pub async fn sinks() -> (Backend, Backend) {
    (
        Backend::start(Kind::Grpc).await,
        Backend::start(Kind::Http).await,
    )
}

pub fn dests(g: &Backend, h: &Backend) -> Vec<Dest> {
    vec![
        Dest::new("grpc-sink", &g.endpoint(), "grpc"),
        Dest::new("http-sink", &h.endpoint(), "http"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_moments_under_load() {
    random_power_cuts("power_cuts_at_random_moments_under_load", "", &[]).await;
}

/// The same with records stored as zstd and encrypted (`crate::CODECS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_zstd_and_encryption_lose_nothing() {
    random_power_cuts(
        "power_cuts_with_zstd_and_encryption_lose_nothing",
        crate::CODECS,
        &crate::codecs_env(),
    )
    .await;
}

async fn random_power_cuts(name: &str, storage: &str, env: &[(String, String)]) {
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let mut rnd = crate::rng(name);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    let mut edge = Edge::new(
        dir.path(),
        &format!("{STORAGE}\n{storage}"),
        &dests(&g, &h),
        MountOptions {
            seed: rnd(u64::MAX),
            ..Default::default()
        },
    );
    edge.spool.env.extend(env.iter().cloned());
    edge.power_on();
    // Several clients of each protocol.
    let load = Load::start(dir.path(), &edge.spool, 2, 2, 20, 0.02);
    let cycles = crate::knob("power_cuts", 6, 100);
    for i in 0..cycles {
        tokio::time::sleep(Duration::from_millis(300 + rnd(1700))).await;
        edge.power_cut();
        tokio::time::sleep(Duration::from_millis(rnd(400))).await;
        // Every other power-up finds torn writes: unsynced pages that half made it.
        edge.opts.seed = rnd(u64::MAX);
        edge.opts.torn_keep_percent = if i % 2 == 1 { 50 } else { 0 };
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
            max_redelivered: Some(cycles as usize * MAX_IN_FLIGHT),
        },
    )
    .await;
    edge.shutdown();
}

/// When a step happens: while the forwarder serves, or while it opens its log
/// after a restart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Serving,
    Starting,
}

/// Where a rule can cut the power: the labelled steps of FORMAT.md, and the
/// writes delivery and the audit make durable.
pub fn steps() -> Vec<(&'static str, Op, &'static str, Phase)> {
    use Phase::*;
    vec![
        ("W1 write a group", Op::Write, "data/wal/*.seg", Serving),
        (
            "W2 fdatasync the group",
            Op::Fsync,
            "data/wal/*.seg",
            Serving,
        ),
        (
            "C1 create .seg.tmp",
            Op::Create,
            "data/wal/*.seg.tmp",
            Serving,
        ),
        (
            "C2 write the header",
            Op::Write,
            "data/wal/*.seg.tmp",
            Serving,
        ),
        (
            "C3 fdatasync the header",
            Op::Fsync,
            "data/wal/*.seg.tmp",
            Serving,
        ),
        (
            "C4 rename to .seg",
            Op::Rename,
            "data/wal/*.seg.tmp",
            Serving,
        ),
        ("C5 fsync wal/", Op::Fsyncdir, "data/wal", Serving),
        (
            "D1 unlink a delivered segment",
            Op::Unlink,
            "data/wal/*.seg",
            Serving,
        ),
        // The bound moves every 4096 seqs while serving, and at every start
        // (with the clean-close marker cleared): cut the start.
        (
            "seq bound in wal.state",
            Op::Fsync,
            "data/wal.state",
            Starting,
        ),
        (
            "audit ledger fdatasync",
            Op::Fsync,
            "data/ledger/*.jsonl",
            Serving,
        ),
        (
            "cursor persist",
            Op::Fsync,
            "data/cursors/*.cursor",
            Serving,
        ),
        (
            "state.json rename",
            Op::Rename,
            "data/state.json.tmp",
            Serving,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_every_step_of_the_fsync_order() {
    let name = "power_cuts_at_every_step_of_the_fsync_order";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let mut rnd = crate::rng(name);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    let mut edge = Edge::new(
        dir.path(),
        STORAGE,
        &dests(&g, &h),
        MountOptions {
            seed: rnd(u64::MAX),
            ..Default::default()
        },
    );
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let rounds = crate::knob("step_rounds", 1, 6);
    let mut cuts = 0;
    let mut missed = Vec::new();
    for round in 0..rounds {
        for (label, op, path, phase) in steps() {
            let when = if (round + rnd(2) as u32).is_multiple_of(2) {
                When::Before
            } else {
                When::After
            };
            let rule = |nth| Rule::new(&[op], Some(path), Action::Cut { when }).nth(nth);
            match phase {
                Phase::Serving => {
                    edge.arm(rule(1 + rnd(4)));
                }
                // A start syncs wal.state once or twice (the bound, a migration).
                Phase::Starting => edge.kill9_and_restart_armed(rule(1)),
            }
            match edge.wait_cut(Duration::from_secs(20)) {
                Some(trigger) => {
                    edge.spool
                        .note(&format!("cut at {label} ({when:?}): {trigger}"));
                    edge.power_cut();
                    cuts += 1;
                }
                None => {
                    // Not reached in time (a step that needs a rotation or a
                    // deletion): cut anyway, at a random moment.
                    missed.push(label);
                    edge.power_cut();
                    cuts += 1;
                }
            }
            edge.opts.seed = rnd(u64::MAX);
            edge.opts.torn_keep_percent = if rnd(2) == 0 { 50 } else { 0 };
            edge.power_on();
        }
    }
    println!("{name}: {cuts} cuts; steps not reached within 20 s: {missed:?}");
    assert!(
        missed.len() <= rounds as usize * steps().len() / 3,
        "too many steps never reached: {missed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = load.finish();
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles: cuts,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: Some(cuts as usize * MAX_IN_FLIGHT),
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_during_eviction_drop_only_what_the_audit_says() {
    let name = "power_cuts_during_eviction_drop_only_what_the_audit_says";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let mut rnd = crate::rng(name);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    // Both backends down: the 1 MiB spool fills and drops its oldest segments.
    g.set_mode(Mode::Unavailable);
    h.set_mode(Mode::Unavailable);
    let mut edge = Edge::new(
        dir.path(),
        "segment_bytes = \"64KiB\"\nmax_bytes = \"1MiB\"\nwhen_full = \"drop_oldest\"",
        &dests(&g, &h),
        MountOptions {
            seed: rnd(u64::MAX),
            ..Default::default()
        },
    );
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 40, 0.0);
    let cycles = crate::knob("eviction_cuts", 4, 40);
    for i in 0..cycles {
        if i % 2 == 0 {
            // At an eviction's unlink (D1), or just after it.
            let when = if rnd(2) == 0 {
                When::Before
            } else {
                When::After
            };
            edge.arm(Rule::new(
                &[Op::Unlink],
                Some("data/wal/*.seg"),
                Action::Cut { when },
            ));
            let _ = edge.wait_cut(Duration::from_secs(20));
        } else {
            tokio::time::sleep(Duration::from_millis(300 + rnd(1500))).await;
        }
        edge.power_cut();
        edge.power_on();
    }
    // The uplink comes back; what is left is delivered.
    g.set_mode(Mode::Accept);
    h.set_mode(Mode::Accept);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let results = load.finish();
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles,
            started,
            may_lose: MayLose::AuditDropped,
            max_redelivered: None,
        },
    )
    .await;
    edge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_under_fsync_never_lose_only_what_the_audit_says_it_cannot_vouch_for() {
    let name = "power_cuts_under_fsync_never_lose_only_what_the_audit_says_it_cannot_vouch_for";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let mut rnd = crate::rng(name);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    let mut edge = Edge::new(
        dir.path(),
        "segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"\nfsync = \"never\"",
        &dests(&g, &h),
        MountOptions {
            seed: rnd(u64::MAX),
            ..Default::default()
        },
    );
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let cycles = crate::knob("never_cuts", 4, 60);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(500 + rnd(2000))).await;
        edge.power_cut();
        edge.opts.seed = rnd(u64::MAX);
        edge.opts.torn_keep_percent = if rnd(2) == 0 { 50 } else { 0 };
        edge.power_on();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = load.finish();
    // Keys stay unique (checked for every scenario): the seqs of acknowledged
    // records the cut took are never given to other records.
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles,
            started,
            may_lose: MayLose::UnverifiableWindows,
            max_redelivered: None,
        },
    )
    .await;
    edge.shutdown();
}
