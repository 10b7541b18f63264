//! Catching up after an outage without flooding the uplink: a destination's
//! `max_egress_bytes_per_s` holds the bytes on the wire (after compression, retries
//! included) to the limit.

mod support;

use std::time::{Duration, Instant};

use support::backend::{Backend, Kind, Mode};
use support::raw;
use support::spool::{Dest, Spool};

const LIMIT: f64 = 200.0 * 1024.0;
const EXPIRED: &str = "tracespool_records_dropped_total{reason=\"expired\",destination=\"b\"}";
const BACKLOG: &str = "tracespool_backlog_records{destination=\"b\"}";

/// Fills a spool while its backend is down, lets it drain under the limit while
/// every fifth request fails and is retried, and returns the rate the backend saw
/// over 30 s (every attempt's bytes, the failed ones too).
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
    // Enough backlog for more than the 32 s at the limit, in requests of 64 spans.
    let mut ids = Vec::new();
    let mut i = 0u64;
    while spool
        .metric("tracespool_backlog_bytes{destination=\"b\"}")
        .await
        < LIMIT * 40.0
        && i < 10_000
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
    assert!(stored > LIMIT * 36.0, "backlog too small: {stored}");
    // The link comes back, flaky: one request in five fails and is retried.
    // Measured from 1 s to 31 s.
    backend.set_mode(Mode::FailEvery(5));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(32)).await;
    let (from, to) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(31));
    let egress = spool
        .metric("tracespool_egress_bytes_total{destination=\"b\"}")
        .await;
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
    // Egress counts what the wire carried (read a moment apart while draining at
    // the limit: within a quarter second of it).
    let on_wire: usize = wire.iter().map(|w| w.body.len()).sum();
    assert!(
        (egress - on_wire as f64).abs() <= LIMIT / 4.0,
        "egress {egress} vs {on_wire} on the wire"
    );
    spool.terminate();
    bytes as f64 / 30.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_within_the_egress_limit_with_and_without_compression() {
    let dir = tempfile::tempdir().unwrap();
    // Both at once (the limit, not the machine, sets the pace).
    let (plain, zstd) = (dir.path().join("plain"), dir.path().join("zstd"));
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::create_dir_all(&zstd).unwrap();
    let rates = tokio::join!(
        drained_rate(&plain, "", "none"),
        drained_rate(&zstd, "compression = \"zstd\"", "zstd"),
    );
    for (name, rate) in [("plain", rates.0), ("zstd", rates.1)] {
        println!("{name}: {rate:.0} bytes/s on the wire over 30 s (limit {LIMIT:.0})");
        assert!(
            (rate - LIMIT).abs() <= LIMIT * 0.10,
            "{name}: {rate:.0} bytes/s, limit {LIMIT:.0}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_max_age_expire_counted_logged_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Http).await;
    backend.set_mode(Mode::Unavailable);
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "http").with("max_age = \"3s\"")],
    );
    spool.start();
    let mut old = Vec::new();
    for b in 0..4 {
        let (body, ids) = raw::request("old", b, 3);
        raw::grpc_export(&spool.grpc_endpoint(), body, None)
            .await
            .unwrap();
        old.extend(ids);
    }
    // The link stays down past their age; they expire while being retried.
    spool
        .wait_metric(EXPIRED, Duration::from_secs(15), |n| n >= 4.0)
        .await;
    let mut fresh = Vec::new();
    for b in 10..14 {
        let (body, ids) = raw::request("fresh", b, 3);
        raw::grpc_export(&spool.grpc_endpoint(), body, None)
            .await
            .unwrap();
        fresh.extend(ids);
    }
    backend.set_mode(Mode::Accept);
    let want: std::collections::BTreeSet<String> = fresh.iter().cloned().collect();
    support::assert_delivered(&backend, &want, "fresh spans").await;
    // Exactly the old ones expired: counted, in the log as ranges, in the audit.
    let dropped = spool
        .metric("tracespool_spans_dropped_total{reason=\"expired\",destination=\"b\"}")
        .await;
    assert_eq!(dropped, 12.0);
    let records = spool
        .metric("tracespool_records_dropped_total{reason=\"expired\",destination=\"b\"}")
        .await;
    assert_eq!(records, 4.0);
    // Logged as runs (the rest of a run when the next fresh record comes).
    let logged: Vec<(u64, u64, u64)> = spool
        .log_lines()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("records older than max_age"))
        })
        .map(|l| {
            let n = |k: &str| l[k].as_u64().unwrap();
            (n("first_seq"), n("last_seq"), n("records"))
        })
        .collect();
    // (Records expire in parallel, up to max_in_flight: runs may interleave.)
    assert_eq!(logged.iter().map(|r| r.0).min(), Some(1), "{logged:?}");
    assert_eq!(logged.iter().map(|r| r.1).max(), Some(4), "{logged:?}");
    assert_eq!(logged.iter().map(|r| r.2).sum::<u64>(), 4, "{logged:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let (code, s) = spool.tool_json(&["audit", "summary"]).await;
        if code == 0 && s["destinations"][0]["pending"]["records"] == 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "audit never settled: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(summary["balanced"], true, "{summary:#}");
    let d = &summary["destinations"][0];
    assert_eq!(d["dropped"]["expired"]["records"], 4, "{summary:#}");
    assert_eq!(d["dropped"]["expired"]["spans"], 12, "{summary:#}");
    assert_eq!(d["delivered"]["spans"], 12, "{summary:#}");
    assert_eq!(d["accepted"]["spans"], 24, "{summary:#}");
    spool.terminate();
}

/// The seq of a record from the idempotency key it was exported with
/// (`<instance-id>-<seq>`).
fn seq_of(key: &Option<String>) -> u64 {
    key.as_deref()
        .and_then(|k| k.rsplit('-').next())
        .and_then(|s| s.parse().ok())
        .expect("export key ends in the seq")
}

/// Fills `spool` with copies of a few realistic 512-span requests (each stored as
/// its own record) until its log holds `bytes`; returns the records stored.
async fn fill_backlog(spool: &Spool, bytes: f64) -> u64 {
    let bodies: Vec<Vec<u8>> = (0..16).map(|i| raw::realistic(512, 7000 + i).0).collect();
    let endpoint = spool.grpc_endpoint();
    let mut records = 0u64;
    while spool.metric("tracespool_wal_bytes").await < bytes {
        let mut batch = tokio::task::JoinSet::new();
        for c in 0..4 {
            let (endpoint, bodies) = (endpoint.clone(), bodies.clone());
            batch.spawn(async move {
                for b in 0..25 {
                    raw::grpc_export(&endpoint, bodies[(c * 25 + b) % 16].clone(), None)
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(r) = batch.join_next().await {
            r.unwrap();
        }
        records += 100;
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_first_sends_fresh_spans_within_two_seconds_while_a_gigabyte_backlog_drains() {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Http).await;
    backend.lean();
    backend.set_mode(Mode::Unavailable);
    let mut spool = Spool::new(
        dir.path(),
        "max_bytes = \"2GiB\"",
        &[Dest::new("b", &backend.endpoint(), "http").with(
            "live_first = true\nlive_lag = \"1s\"\nbacklog_share = 0.2\nmax_egress_bytes_per_s = \"32MiB\"",
        )],
    );
    spool.start();
    // The outage leaves more than a gigabyte behind.
    let records = fill_backlog(&spool, GIB).await;
    let backlog = spool
        .metric("tracespool_backlog_bytes{destination=\"b\"}")
        .await;
    assert!(backlog >= GIB, "backlog {backlog}");
    // The link returns; once the backlog drains, fresh spans are sent, one
    // request a second.
    backend.set_mode(Mode::Accept);
    assert!(
        support::eventually(Duration::from_secs(30), || !backend.arrivals().is_empty()).await,
        "nothing delivered after the link returned"
    );
    let mut fresh = Vec::new();
    for i in 0..6u64 {
        let (body, ids) = raw::realistic(8, 900_000 + i);
        let sent = Instant::now();
        raw::grpc_export(&spool.grpc_endpoint(), body, None)
            .await
            .unwrap();
        fresh.push((sent, ids));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Each fresh request arrived within 2 s of being sent…
    let ids_at = |id: &str| backend.arrival_of(id);
    let mut latest = Instant::now();
    for (sent, ids) in &fresh {
        assert!(
            support::eventually(Duration::from_secs(5), || ids_at(&ids[0]).is_some()).await,
            "a fresh span never arrived"
        );
        let at = ids_at(&ids[0]).unwrap();
        let took = at.duration_since(*sent);
        println!("fresh request delivered {took:?} after it was sent");
        assert!(took < Duration::from_secs(2), "fresh spans took {took:?}");
        latest = at;
    }
    // …while the backlog was still draining: records older than the last fresh
    // arrival came after it.
    let arrivals = backend.arrivals();
    let later_old = arrivals
        .iter()
        .filter(|a| a.at > latest && seq_of(&a.key) <= records)
        .count();
    assert!(
        later_old > 0,
        "the backlog was through before the fresh spans"
    );
    let lanes = spool
        .metric("tracespool_lane_backlog_records{destination=\"b\",lane=\"backlog\"}")
        .await;
    println!("backlog lane holds {lanes} records after the fresh spans");
    // The catch-up ETA, once the rates' window holds only the drain, is about
    // what is left at the limit.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let eta = spool
            .metric("tracespool_catchup_eta_seconds{destination=\"b\"}")
            .await;
        let left = spool
            .metric("tracespool_backlog_bytes{destination=\"b\"}")
            .await;
        let at_limit = left / (32.0 * 1024.0 * 1024.0);
        println!("catch-up ETA {eta:.1} s with {left} bytes left ({at_limit:.1} s at the limit)");
        if eta > at_limit * 0.5 && eta < at_limit * 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline && left > 0.0,
            "the catch-up ETA never came near the time left: {eta} s for {at_limit} s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // `tracespool status` says when (state.json is rewritten every 2 s).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, st) = spool.tool_json(&["status"]).await;
    assert_eq!(code, 0, "{st:#}");
    let eta = &st["destinations"][0]["catchup_eta"]["in_seconds"];
    assert!(eta.as_f64().is_some_and(|s| s > 0.0), "{st:#}");
    assert!(
        st["destinations"][0]["backlog_lane_records"].as_u64() > Some(0),
        "{st:#}"
    );
    assert!(!st["wal"]["budget_full_eta"].is_null(), "{st:#}");
    let (_, text, _) = spool.tool(&["status"]).await;
    assert!(
        text.contains("CAUGHT UP") && text.contains("budget full: "),
        "{text}"
    );
    // The backlog finishes; every record arrived once.
    spool
        .wait_metric(BACKLOG, Duration::from_secs(120), |n| n == 0.0)
        .await;
    let arrivals = backend.arrivals();
    let mut seqs: Vec<u64> = arrivals.iter().map(|a| seq_of(&a.key)).collect();
    seqs.sort_unstable();
    let total = records + fresh.len() as u64;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "every record once");
    let spans: usize = arrivals.iter().map(|a| a.span_ids.len()).sum();
    assert_eq!(spans as u64, records * 512 + 6 * 8);
    let (code, s) = spool.tool_json(&["audit", "summary"]).await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["balanced"], true, "{s:#}");
    let d = &s["destinations"][0];
    assert_eq!(d["delivered"]["spans"], spans as u64, "{s:#}");
    assert_eq!(d["accepted"]["spans"], spans as u64, "{s:#}");
    spool.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_first_sends_the_backlog_in_descending_seq_order_and_expires_the_stale() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Http).await;
    backend.set_mode(Mode::Unavailable);
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "http").with(
            "live_first = true\nlive_lag = \"500ms\"\nbacklog_order = \"newest_first\"\nmax_age = \"4s\"\nmax_in_flight = 1",
        )],
    );
    spool.start();
    let send = |prefix: &'static str, from: u64, to: u64| {
        let endpoint = spool.grpc_endpoint();
        async move {
            for b in from..to {
                let (body, _) = raw::request(prefix, b, 3);
                raw::grpc_export(&endpoint, body, None).await.unwrap();
            }
        }
    };
    // Ten records go stale during the outage.
    send("stale", 0, 10).await;
    spool
        .wait_metric(EXPIRED, Duration::from_secs(20), |n| n >= 10.0)
        .await;
    // Thirty more while the link is still down; it returns when they are older
    // than live_lag but younger than max_age.
    send("recent", 10, 40).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    backend.set_mode(Mode::Accept);
    spool
        .wait_metric(BACKLOG, Duration::from_secs(20), |n| n == 0.0)
        .await;
    // The first of them was in flight in the live lane; the rest came newest
    // first.
    let seqs: Vec<u64> = backend.received().iter().map(|r| seq_of(&r.key)).collect();
    assert_eq!(seqs.first(), Some(&11), "{seqs:?}");
    assert_eq!(
        seqs[1..],
        (12..=40).rev().collect::<Vec<_>>()[..],
        "{seqs:?}"
    );
    // Exactly the stale ones expired, and the audit balances.
    let expired = spool
        .metric("tracespool_spans_dropped_total{reason=\"expired\",destination=\"b\"}")
        .await;
    assert_eq!(expired, 30.0);
    let (code, s) = spool.tool_json(&["audit", "summary"]).await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["balanced"], true, "{s:#}");
    let d = &s["destinations"][0];
    assert_eq!(d["dropped"]["expired"]["records"], 10, "{s:#}");
    assert_eq!(d["delivered"]["spans"], 90, "{s:#}");
    spool.terminate();
}
