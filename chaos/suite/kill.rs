//! `kill -9` loops: the process dies at random moments under load, again and again;
//! the disk keeps everything (no power cut).

use std::time::{Duration, Instant};

use faultfs::harness::MountOptions;

use crate::edge::Edge;
use crate::load::{self, Expect, Load, MayLose};
use crate::power::{dests, sinks, MAX_IN_FLIGHT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loops_under_load_lose_nothing() {
    kill_loops("kill_9_loops_under_load_lose_nothing", "", &[]).await;
}

/// The same with records stored as zstd and encrypted (`crate::codecs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loops_with_zstd_and_encryption_lose_nothing() {
    kill_loops(
        "kill_9_loops_with_zstd_and_encryption_lose_nothing",
        crate::CODECS,
        &crate::codecs_env(),
    )
    .await;
}

/// `storage`: more `[storage]` settings; `env`: variables for the forwarder.
async fn kill_loops(name: &str, storage: &str, env: &[(String, String)]) {
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let mut rnd = crate::rng(name);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    let mut edge = Edge::new(
        dir.path(),
        &format!("segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"\n{storage}"),
        &dests(&g, &h),
        MountOptions::default(),
    );
    edge.spool.env.extend(env.iter().cloned());
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let cycles = crate::knob("kills", 15, 1000);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(100 + rnd(600))).await;
        edge.kill9_and_restart();
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
