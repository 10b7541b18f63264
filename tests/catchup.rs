//! Catching up after an outage without flooding the uplink: a destination's
//! `max_egress_bytes_per_s` holds the bytes on the wire (after compression, retries
//! included) to the limit.

mod support;

use std::time::{Duration, Instant};

use support::backend::{Backend, Kind, Mode};
use support::raw;
use support::spool::{Dest, Spool};

const LIMIT: f64 = 200.0 * 1024.0;

/// Fills a spool while its backend is down, lets it drain under the limit while
/// every fifth request fails and is retried, and returns the rate the backend saw
/// over 8 s (every attempt's bytes, the failed ones too).
async fn drained_rate(dir: &std::path::Path, storage: &str, compression: &str) -> f64 {
    let backend = Backend::start(Kind::Http).await;
    backend.set_mode(Mode::Unavailable);
    let mut spool = Spool::new(
        dir,
        storage,
        &[Dest::new("b", &backend.endpoint(), "http").with(&format!(
            "compression = \"{compression}\"\nmax_egress_bytes_per_s = \"200KiB\"\negress_burst = \"16KiB\"\nmax_in_flight = 4"
        ))],
    );
    spool.start();
    // Enough backlog for more than 10 s at the limit, in requests of 64 spans.
    let mut ids = Vec::new();
    let mut i = 0u64;
    while spool
        .metric("tracespool_backlog_bytes{destination=\"b\"}")
        .await
        < 3.0 * LIMIT * 10.0
        && i < 5000
    {
        for _ in 0..50 {
            let (body, mut got) = raw::realistic(64, 1000 + i);
            raw::grpc_export(&spool.grpc_endpoint(), body, None)
                .await
                .unwrap();
            ids.append(&mut got);
            i += 1;
        }
    }
    let stored = spool
        .metric("tracespool_wal_record_bytes_total{form=\"stored\"}")
        .await;
    assert!(stored > LIMIT * 10.0, "backlog too small: {stored}");
    // The link comes back, flaky: one request in five fails and is retried.
    // Measured from 1 s to 9 s.
    backend.set_mode(Mode::FailEvery(5));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (from, to) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(9));
    let wire = backend.wire();
    let failed = spool
        .metric("tracespool_export_requests_total{destination=\"b\",outcome=\"retryable\"}")
        .await;
    assert!(failed > 10.0, "no retries in the mix: {failed}");
    let bytes: usize = wire
        .iter()
        .filter(|w| w.at >= from && w.at < to)
        .map(|w| w.body.len())
        .sum();
    assert!(
        wire.iter().all(|w| w.encoding
            == if compression == "zstd" {
                "zstd"
            } else {
                "identity"
            }),
        "encodings"
    );
    // Still draining at the end: the limit, not the backlog, set the pace.
    let left = spool
        .metric("tracespool_backlog_bytes{destination=\"b\"}")
        .await;
    assert!(left > 0.0, "the backlog drained before the window closed");
    // Egress counts what the wire carried.
    let egress = spool
        .metric("tracespool_egress_bytes_total{destination=\"b\"}")
        .await;
    let on_wire: usize = wire.iter().map(|w| w.body.len()).sum();
    let in_flight_slack = 4.0 * wire.iter().map(|w| w.body.len()).max().unwrap_or(0) as f64;
    assert!(
        (egress - on_wire as f64).abs() <= in_flight_slack,
        "egress {egress} vs {on_wire} on the wire"
    );
    spool.terminate();
    bytes as f64 / 8.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_within_the_egress_limit_with_and_without_compression() {
    let dir = tempfile::tempdir().unwrap();
    for (name, storage, compression) in [
        ("plain", "", "none"),
        ("zstd", "compression = \"zstd\"", "zstd"),
    ] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let rate = drained_rate(&d, storage, compression).await;
        println!("{name}: {rate:.0} bytes/s on the wire (limit {LIMIT:.0})");
        assert!(
            (rate - LIMIT).abs() <= LIMIT * 0.10,
            "{name}: {rate:.0} bytes/s, limit {LIMIT:.0}"
        );
    }
}
