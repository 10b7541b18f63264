//! Faults during a catch-up: the link returns after an outage and the backlog
//! drains through both lanes (`live_first`, one destination oldest first and one
//! newest first, under an egress limit) while the forwarder is killed or loses
//! power again and again. Nothing acknowledged is lost, each cut redelivers at
//! most what both lanes had in flight, and the audit is exact: the cursor's
//! acknowledged ranges, far out of order, are persisted and honoured.

use std::time::{Duration, Instant};

use faultfs::harness::MountOptions;

use crate::edge::Edge;
use crate::load::{self, Expect, Load, MayLose};
use crate::power::{sinks, MAX_IN_FLIGHT};
use crate::support::backend::Mode;
use crate::support::spool::Dest;

const LANES: &str = "live_first = true\nlive_lag = \"300ms\"\nmax_egress_bytes_per_s = \"256KiB\"";

#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Power,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_catch_up_loses_nothing() {
    catch_up_under("kill_9_during_catch_up_loses_nothing", Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_during_catch_up_lose_nothing() {
    catch_up_under("power_cuts_during_catch_up_lose_nothing", Fault::Power).await;
}

async fn catch_up_under(name: &str, fault: Fault) {
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let mut rnd = crate::rng(name);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (g, h) = sinks().await;
    g.set_mode(Mode::Unavailable);
    h.set_mode(Mode::Unavailable);
    let dests = [
        Dest::new("grpc-sink", &g.endpoint(), "grpc").with(LANES),
        Dest::new("http-sink", &h.endpoint(), "http")
            .with(LANES)
            .with("backlog_order = \"newest_first\""),
    ];
    let mut edge = Edge::new(
        dir.path(),
        "segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"",
        &dests,
        MountOptions {
            seed: rnd(u64::MAX),
            ..Default::default()
        },
    );
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    // The outage leaves a backlog; then the link returns and catch-up begins.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let backlog = edge
        .spool
        .metric("tracespool_backlog_records{destination=\"http-sink\"}")
        .await;
    assert!(backlog > 20.0, "{name}: too small a backlog: {backlog}");
    g.set_mode(Mode::Accept);
    h.set_mode(Mode::Accept);
    let cycles = crate::knob("catchup_faults", 8, 200);
    for i in 0..cycles {
        tokio::time::sleep(Duration::from_millis(200 + rnd(500))).await;
        match fault {
            Fault::Kill => edge.kill9_and_restart(),
            Fault::Power => {
                edge.power_cut();
                edge.opts.seed = rnd(u64::MAX);
                edge.opts.torn_keep_percent = if i % 2 == 1 { 50 } else { 0 };
                edge.power_on();
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = load.finish();
    let handed = edge
        .spool
        .log_lines()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("live lane behind"))
        })
        .count();
    assert!(
        handed > 0,
        "{name}: no backlog was ever handed to the backlog lane"
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
            // Both lanes' exports in flight, per cut.
            max_redelivered: Some(cycles as usize * 2 * MAX_IN_FLIGHT),
        },
    )
    .await;
    edge.shutdown();
}
