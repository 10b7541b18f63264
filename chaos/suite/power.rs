//! Power cuts: at random moments under load, and at every labelled step of the
//! write-ahead log's fsync order (`storage/FORMAT.md`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use faultfs::harness::MountOptions;

use crate::edge::Edge;
use crate::load::{self, Load};
use crate::support::backend::{Backend, Kind};
use crate::support::spool::Dest;

const STORAGE: &str = "segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_moments_under_load() {
    let name = "power_cuts_at_random_moments_under_load";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let mut rnd = crate::rng(name);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let grpc_sink = Backend::start(Kind::Grpc).await;
    let http_sink = Backend::start(Kind::Http).await;
    let mut edge = Edge::new(
        dir.path(),
        STORAGE,
        &[
            Dest::new("grpc-sink", &grpc_sink.endpoint(), "grpc"),
            Dest::new("http-sink", &http_sink.endpoint(), "http"),
        ],
        MountOptions {
            seed: rnd(u64::MAX),
            ..Default::default()
        },
    );
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let cycles = crate::knob("power_cuts", 5, 100);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(500 + rnd(2000))).await;
        edge.power_cut();
        tokio::time::sleep(Duration::from_millis(rnd(500))).await;
        edge.power_on();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = load.finish();
    let acked: BTreeSet<String> = load::acked_span_ids(&results);
    assert!(!acked.is_empty());
    load::check(
        name,
        &edge.spool,
        &[&grpc_sink, &http_sink],
        &acked,
        cycles,
        started,
    )
    .await;
    edge.shutdown();
}
