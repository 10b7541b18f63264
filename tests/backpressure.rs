//! Backpressure: a small disk budget fills during an outage. With `backpressure`,
//! clients get RESOURCE_EXHAUSTED (with RetryInfo) / 429 (with Retry-After), never a
//! success for a batch that was not stored, and their retries succeed once the
//! backend is back; nothing acknowledged is lost. With `drop_oldest`, nothing is
//! refused and the drops are counted exactly.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::backend::{Backend, Kind};
use support::raw;
use support::spool::{sum_field, Dest, Spool};

const STORAGE: &str = "max_bytes = \"256KiB\"\nsegment_bytes = \"32KiB\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_refuses_with_retry_hints_and_clients_succeed_after_the_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        STORAGE,
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.start();
    backend.stop();

    // Fill the budget with ~12 KiB batches until the spool refuses.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut batch = 0u64;
    let refusal = loop {
        let (body, ids) = raw::request("fill", batch, 70);
        batch += 1;
        match raw::grpc_export(&spool.grpc_endpoint(), body, None).await {
            Ok(()) => acked.extend(ids),
            Err(status) => break status,
        }
        assert!(batch < 200, "the 256 KiB budget never filled");
    };
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    let hint = tracespool::otlp::retry_delay(&refusal).expect("RetryInfo");
    assert_eq!(hint, Duration::from_secs(1));
    // The same over HTTP: 429 with Retry-After.
    let (body, _) = raw::request("fill", 999, 70);
    let a = raw::http_post(
        &spool.http_endpoint(),
        &[("content-type", "application/x-protobuf")],
        body,
    )
    .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.headers["retry-after"], "1");
    // Health: alive, but not ready while it refuses for lack of space.
    let admin = format!("http://{}", spool.admin);
    assert_eq!(
        support::spool::get(&format!("{admin}/healthz")).await.0,
        200
    );
    let (code, body) = support::spool::get(&format!("{admin}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the spool is full"), "{body}");
    assert!(
        spool
            .metric(r#"tracespool_receiver_requests_total{protocol="grpc",outcome="full"}"#)
            .await
            >= 1.0
    );
    // Python SDK clients meanwhile: refused, retrying on their own.
    let (g, h) = (spool.grpc_endpoint(), spool.http_endpoint());
    let clients = [
        support::python::spawn(
            dir.path(),
            "grpc",
            &[
                "--protocol",
                "grpc",
                "--endpoint",
                &g,
                "--batches",
                "6",
                "--spans",
                "20",
                "--prefix",
                "pyg",
                "--deadline",
                "90",
            ],
        ),
        support::python::spawn(
            dir.path(),
            "http",
            &[
                "--protocol",
                "http",
                "--endpoint",
                &h,
                "--batches",
                "6",
                "--spans",
                "20",
                "--prefix",
                "pyh",
                "--deadline",
                "90",
            ],
        ),
    ];
    // Keep the outage on until both clients have been refused at least once.
    let refused = support::eventually(Duration::from_secs(60), || {
        clients[0].stderr().contains("RESOURCE_EXHAUSTED")
            && (clients[1].stderr().contains("Too Many Requests")
                || clients[1].stderr().contains("429"))
    })
    .await;
    assert!(
        refused,
        "clients were not refused:\n{}\n{}",
        clients[0].stderr(),
        clients[1].stderr()
    );
    spool.note("backend back");
    backend.restart().await;
    let mut codes = Vec::new();
    for c in clients {
        let r = c.wait();
        assert!(r.success, "client failed: {:?}\n{}", r.summary, r.stderr);
        acked.extend(r.span_ids());
        codes.push(r.summary["codes"].clone());
    }
    assert!(
        codes[0]["RESOURCE_EXHAUSTED"].as_u64().unwrap_or(0) > 0,
        "gRPC client never saw RESOURCE_EXHAUSTED: {codes:?}"
    );
    assert!(
        codes[1]["429"].as_u64().unwrap_or(0) + codes[1]["Too Many Requests"].as_u64().unwrap_or(0)
            > 0,
        "HTTP client never saw 429: {codes:?}"
    );
    // Everything acknowledged arrives; nothing arrives that was not acknowledged.
    support::assert_delivered(&backend, &acked, "backend").await;
    // Never over budget.
    assert!(dir_bytes(&spool.data.join("wal")) <= 256 * 1024);
    // Ready again once there is room.
    let ready = support::eventually(Duration::from_secs(30), || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(support::spool::get(&format!("{admin}/readyz")))
                .0
                == 200
        })
    })
    .await;
    assert!(ready, "/readyz stayed unready after the spool drained");
    // The refusals are in the audit; what was stored is delivered, and balances.
    let (code, s) = spool.tool_json(&["audit", "summary"]).await;
    assert_eq!(code, 0, "{s:#}");
    assert!(s["rejected"]["full"]["records"].as_u64().unwrap() >= 1);
    let d = &s["destinations"][0];
    assert_eq!(d["accepted"]["spans"], acked.len());
    assert_eq!(d["delivered"]["spans"], acked.len(), "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_never_refuses_and_counts_every_dropped_span() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::start(Kind::Grpc).await;
    let storage = format!("{STORAGE}\nwhen_full = \"drop_oldest\"");
    // No export may time out (and be sent twice) on a busy machine.
    let mut spool = Spool::new(
        dir.path(),
        &storage,
        &[Dest::new("b", &backend.endpoint(), "grpc").timeout("30s")],
    );
    spool.start();
    backend.stop();
    let mut sent = 0u64;
    for batch in 0..80u64 {
        let (body, _) = raw::request("drop", batch, 70);
        raw::grpc_export(&spool.grpc_endpoint(), body, None)
            .await
            .expect("drop_oldest never refuses");
        sent += 70;
    }
    assert!(dir_bytes(&spool.data.join("wal")) <= 256 * 1024);
    backend.restart().await;
    // Dropped spans for destination "b", net of drops that were delivered after all.
    let net_dropped = |lines: &[serde_json::Value]| {
        let for_b = |l: &serde_json::Value| l["destination"] == "b";
        let dropped = sum_field(
            lines,
            "spans dropped before delivery to this destination",
            "dropped_spans",
            for_b,
        );
        let late = sum_field(lines, "was not dropped after all", "spans", for_b);
        (dropped, late)
    };
    // Settled when delivered + net dropped = sent.
    let settled = support::eventually(Duration::from_secs(60), || {
        let (dropped, late) = net_dropped(&spool.log_lines());
        backend.span_count() as u64 + dropped - late == sent
    })
    .await;
    let (dropped, late) = net_dropped(&spool.log_lines());
    let lines = spool.log_lines();
    assert!(
        settled,
        "delivered {} + dropped {dropped} - late {late} != sent {sent}",
        backend.span_count()
    );
    assert!(dropped > 0, "the budget never overflowed");
    // No span arrived twice, and the dropped ones are exactly the missing ones.
    let counts = backend.span_id_counts();
    assert!(counts.values().all(|&n| n == 1));
    assert_eq!(counts.len() as u64, sent - (dropped - late));
    // The drops are also logged as ranges: every missing batch lies in one.
    let ranges: Vec<(u64, u64)> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("spans dropped before delivery"))
        })
        .map(|l| {
            (
                l["first_seq"].as_u64().unwrap(),
                l["last_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    for batch in 0..80u64 {
        let (_, ids) = raw::request("drop", batch, 70);
        let seq = batch + 1;
        if !counts.contains_key(&ids[0]) {
            assert!(
                ranges.iter().any(|&(a, b)| (a..=b).contains(&seq)),
                "seq {seq} missing but not reported dropped"
            );
        }
    }
    // The metrics say the same, exactly.
    let text = spool.metrics().await;
    let v = |series: &str| support::spool::metric_value(&text, series);
    assert_eq!(
        v(r#"tracespool_spans_dropped_total{reason="drop_oldest",destination="b"}"#),
        dropped as f64
    );
    assert_eq!(
        v(r#"tracespool_spans_delivered_after_eviction_total{destination="b"}"#),
        late as f64
    );
    assert_eq!(
        v(r#"tracespool_spans_delivered_total{destination="b"}"#),
        backend.span_count() as f64
    );
    assert_eq!(v("tracespool_spans_persisted_total"), sent as f64);
    // And the audit: every batch delivered or dropped (a batch dropped and then
    // delivered after all counts as delivered), none pending, balanced.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let s = loop {
        let (code, s) = spool.tool_json(&["audit", "summary"]).await;
        if (code == 0 && s["destinations"][0]["pending"]["records"] == 0)
            || std::time::Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d = &s["destinations"][0];
    assert_eq!(d["accepted"]["spans"], sent, "{s:#}");
    assert_eq!(d["delivered"]["spans"], backend.span_count(), "{s:#}");
    assert_eq!(
        d["dropped"]["drop_oldest"]["spans"],
        dropped - late,
        "{s:#}"
    );
    assert_eq!(d["pending"]["records"], 0, "{s:#}");
    assert_eq!(s["balanced"], true, "{s:#}");
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}
