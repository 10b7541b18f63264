//! Crash: tracespool is SIGKILLed again and again while concurrent Python SDK clients
//! send to it, and restarted each time. Every acknowledged span reaches the backend
//! at least once; through a second tracespool acting as dedup tier, exactly once.
//!
//! The clients send a per-batch `idempotency-key`, so their own retries after a kill
//! are deduplicated by the edge; the edge exports with `<instance-id>-<seq>`, so its
//! re-exports after a restart are deduplicated by the gateway.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::backend::{Backend, Kind};
use support::python;
use support::spool::{Dest, Spool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_and_a_dedup_tier_makes_delivery_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let direct = Backend::start(Kind::Grpc).await;
    let behind_gateway = Backend::start(Kind::Http).await;
    let gw_dir = dir.path().join("gateway");
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&gw_dir).unwrap();
    std::fs::create_dir_all(&edge_dir).unwrap();
    // A generous timeout: the gateway's own export must not time out and resend
    // on a busy machine (its hop to the final backend is at-least-once itself).
    let mut gateway = Spool::new(
        &gw_dir,
        "",
        &[Dest::new("final", &behind_gateway.endpoint(), "http").timeout("60s")],
    );
    gateway.start();
    let mut edge = Spool::new(
        &edge_dir,
        "segment_bytes = \"64KiB\"",
        &[
            Dest::new("direct", &direct.endpoint(), "grpc"),
            Dest::new("gateway", &gateway.grpc_endpoint(), "grpc"),
        ],
    );
    edge.start();

    let (g, h) = (edge.grpc_endpoint(), edge.http_endpoint());
    let common = [
        "--batches",
        "40",
        "--spans",
        "5",
        "--keys",
        "--pause",
        "0.05",
        "--attempt-timeout",
        "3",
        "--deadline",
        "180",
    ];
    let mut a = vec!["--protocol", "grpc", "--endpoint", &g, "--prefix", "kg"];
    a.extend(common);
    let mut b = vec!["--protocol", "http", "--endpoint", &h, "--prefix", "kh"];
    b.extend(common);
    let clients = [
        python::spawn(dir.path(), "grpc", &a),
        python::spawn(dir.path(), "http", &b),
    ];

    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut kills = 0;
    while kills < 8 {
        tokio::time::sleep(Duration::from_millis(300 + next() % 900)).await;
        edge.note(&format!("kill {kills}"));
        edge.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(50 + next() % 300)).await;
        edge.start();
    }
    let mut acked = BTreeSet::new();
    for c in clients {
        let r = c.wait();
        assert!(r.success, "client failed: {:?}\n{}", r.summary, r.stderr);
        assert_eq!(r.acked.len(), 40);
        acked.extend(r.span_ids());
    }
    assert_eq!(acked.len(), 400);

    support::assert_delivered(&direct, &acked, "direct").await;
    support::assert_delivered(&behind_gateway, &acked, "behind the gateway").await;
    // Let any late re-export land before counting duplicates.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = behind_gateway.span_id_counts();
    let dups: Vec<_> = counts.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        dups.is_empty(),
        "behind the dedup tier, spans arrived more than once: {dups:?}"
    );
    let direct_dups = direct.span_id_counts().values().filter(|&&n| n > 1).count();
    println!("{kills} kills; direct backend saw {direct_dups} spans more than once (at-least-once), the gateway's backend none");

    // The audit ledger survived the kills exactly: every one of the 80 batches
    // accepted once (the clients' retries deduplicated), delivered to both
    // destinations, nothing pending, nothing unaccounted for.
    let s = audit_settled(&edge).await;
    assert_eq!(s["balanced"], true, "{s:#}");
    assert_eq!(
        s["accepted"],
        serde_json::json!({"records": 80, "spans": 400}),
        "{s:#}"
    );
    for d in s["destinations"].as_array().unwrap() {
        assert_eq!(d["delivered"], s["accepted"], "{s:#}");
        assert_eq!(d["pending"]["records"], 0, "{s:#}");
        assert_eq!(d["dropped"], serde_json::json!({}), "{s:#}");
    }
    assert_eq!(s["destinations"].as_array().unwrap().len(), 2);
    let (status, took) = edge.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status} after {took:?}"
    );
    // The same from the stopped forwarder's directory.
    let (code, stopped) = edge.tool_json(&["audit", "summary"]).await;
    assert_eq!(code, 0, "{stopped:#}");
    assert_eq!(stopped["accepted"], s["accepted"]);
    // The gateway, which only ever saw the edge's exports (re-sent after kills,
    // with the same keys), stored each batch once.
    let g = audit_settled(&gateway).await;
    assert_eq!(g["balanced"], true, "{g:#}");
    assert_eq!(g["accepted"], s["accepted"], "{g:#}");
}

/// `audit summary --json` once every destination's pending count is zero (the
/// ledger hears of a delivery just after the backend has it).
async fn audit_settled(spool: &Spool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, s) = spool.tool_json(&["audit", "summary"]).await;
        let settled = s["destinations"]
            .as_array()
            .is_some_and(|ds| ds.iter().all(|d| d["pending"]["records"] == 0));
        if (code == 0 && settled) || std::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
