//! Known flows, counted exactly: what was sent, what the backend received, the
//! metrics and the audit ledger (through the command-line tools) all agree — with an
//! outage, a dead letter, a duplicate, a malformed request, and a corrupted segment.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::backend::{Backend, Kind, Mode};
use support::raw;
use support::spool::{Dest, Spool};

fn trace_hex(batch: u64) -> String {
    let mut t = [7u8; 16];
    t[..8].copy_from_slice(&batch.to_be_bytes());
    support::backend::hex(&t)
}

fn count(records: u64, spans: u64) -> Value {
    json!({ "records": records, "spans": spans })
}

/// Polls a `--json` tool until `f` holds (state.json and the ledger trail the data
/// path by up to two seconds); returns the last output.
async fn tool_until(spool: &Spool, args: &[&str], f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = spool.tool_json(args).await;
        if f(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_flow_shows_exactly_in_the_metrics_and_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    backend.set_mode(Mode::Unavailable);
    // Batch 4 (seq 5) will be refused for good once the backend is back.
    backend.poison("flow 4.1");
    let mut spool = Spool::started_to(dir.path(), &backend);
    let g = spool.grpc_endpoint();
    let h = spool.http_endpoint();
    let pb = [("content-type", "application/x-protobuf")];

    // In: six gRPC batches (seqs 1-6), the first with a key and sent twice; two
    // HTTP batches (seqs 7-8); one malformed request. Three spans each.
    for b in 0..6 {
        let key = (b == 0).then_some("key-0");
        raw::grpc_export(&g, raw::request("flow", b, 3).0, key)
            .await
            .unwrap();
    }
    raw::grpc_export(&g, raw::request("flow", 0, 3).0, Some("key-0"))
        .await
        .unwrap();
    for b in 6..8 {
        let a = raw::http_post(&h, &pb, raw::request("flow", b, 3).0).await;
        assert_eq!(a.status, 200);
    }
    let bad = raw::http_post(&h, &pb, b"\x0a\xff\xff\xff".to_vec()).await;
    assert_eq!(bad.status, 400);

    // The outage: every attempt fails until the backend comes back.
    assert!(
        support::eventually(Duration::from_secs(20), || backend.attempt_keys().len()
            >= 10)
        .await
    );
    backend.set_mode(Mode::Accept);
    assert!(
        support::eventually(Duration::from_secs(30), || backend.received().len() == 7).await,
        "7 batches delivered, one refused"
    );
    assert!(
        support::eventually(Duration::from_secs(10), || {
            tracespool::deadletter::DeadLetters::new(&spool.data)
                .list(None)
                .unwrap()
                .len()
                == 1
        })
        .await
    );

    // Metrics: exact.
    let delivered = r#"tracespool_spans_delivered_total{destination="b"}"#;
    assert!(
        support::eventually(Duration::from_secs(10), || {
            block_on(spool.metric(delivered)) == 21.0
        })
        .await
    );
    let text = spool.metrics().await;
    let v = |series: &str| support::spool::metric_value(&text, series);
    let expect = [
        (
            r#"tracespool_receiver_requests_total{protocol="grpc",outcome="accepted"}"#,
            6.0,
        ),
        (
            r#"tracespool_receiver_requests_total{protocol="grpc",outcome="duplicate"}"#,
            1.0,
        ),
        (
            r#"tracespool_receiver_requests_total{protocol="http/protobuf",outcome="accepted"}"#,
            2.0,
        ),
        (
            r#"tracespool_receiver_requests_total{protocol="http/protobuf",outcome="invalid"}"#,
            1.0,
        ),
        (r#"tracespool_spans_received_total{protocol="grpc"}"#, 21.0),
        (
            r#"tracespool_spans_received_total{protocol="http/protobuf"}"#,
            6.0,
        ),
        ("tracespool_spans_persisted_total", 24.0),
        ("tracespool_append_duration_seconds_count", 8.0),
        (delivered, 21.0),
        (
            r#"tracespool_export_requests_total{destination="b",outcome="success"}"#,
            7.0,
        ),
        (
            r#"tracespool_export_requests_total{destination="b",outcome="permanent"}"#,
            1.0,
        ),
        (
            r#"tracespool_spans_dropped_total{reason="dead_letter",destination="b"}"#,
            3.0,
        ),
        (
            r#"tracespool_records_dropped_total{reason="dead_letter",destination="b"}"#,
            1.0,
        ),
        (r#"tracespool_dead_letters_total{destination="b"}"#, 1.0),
        (r#"tracespool_backlog_spans{destination="b"}"#, 0.0),
        (r#"tracespool_backlog_records{destination="b"}"#, 0.0),
        (
            r#"tracespool_backlog_oldest_age_seconds{destination="b"}"#,
            0.0,
        ),
        (
            r#"tracespool_spans_dropped_total{reason="drop_oldest",destination="b"}"#,
            0.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(v(series), want, "{series}");
    }
    // Every attempt the backend saw is counted, with its bytes; every failed one
    // was retried exactly once.
    let attempts = backend.attempt_keys().len() as f64;
    let retryable = v(r#"tracespool_export_requests_total{destination="b",outcome="retryable"}"#);
    assert_eq!(retryable + 8.0, attempts);
    assert_eq!(
        v(r#"tracespool_export_retries_total{destination="b"}"#),
        retryable
    );
    assert_eq!(
        v(r#"tracespool_export_duration_seconds_count{destination="b"}"#),
        attempts
    );
    assert_eq!(
        v(r#"tracespool_egress_bytes_total{destination="b"}"#),
        backend.attempt_bytes() as f64
    );
    assert!(v("process_resident_memory_bytes") > 1e6);

    // The audit: exact, balanced.
    let (code, s) = spool.tool_json(&["audit", "summary"]).await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["accepted"], count(8, 24));
    assert_eq!(s["deduplicated"], count(1, 3));
    assert_eq!(s["rejected"], json!({ "invalid": count(1, 0) }));
    let d = &s["destinations"][0];
    assert_eq!(d["destination"], "b");
    assert_eq!(d["accepted"], count(8, 24));
    assert_eq!(d["delivered"], count(7, 21));
    assert_eq!(d["dead_lettered"], count(1, 3));
    assert_eq!(d["dropped"], json!({}));
    assert_eq!(d["pending"], count(0, 0));
    assert_eq!(s["balanced"], true);
    let (code, table, _) = spool.tool(&["audit", "summary"]).await;
    assert_eq!(code, 0);
    assert!(table.contains("accepted 8 batches (24 spans)"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("b ") && l.contains("7 / 21") && l.ends_with("yes")),
        "{table}"
    );

    // The history of a batch, by client key, export key and trace id.
    let instance = spool.instance_id();
    let (code, by_key) = spool.tool_json(&["audit", "show", "--key", "key-0"]).await;
    assert_eq!(code, 0);
    assert_eq!(by_key[0]["seq"], 1);
    let events: Vec<&str> = by_key[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["accepted", "deduplicated", "delivered"]);
    assert_eq!(by_key[0]["history"][0]["protocol"], "grpc");
    assert!(by_key[0]["history"][0]["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let (_, by_export_key) = spool
        .tool_json(&["audit", "show", "--key", &format!("{instance}-5")])
        .await;
    assert_eq!(by_export_key[0]["seq"], 5);
    assert_eq!(
        by_export_key[0]["history"][1]["event"], "dead_lettered",
        "{by_export_key:#}"
    );
    let (code, by_trace) = spool
        .tool_json(&["audit", "show", "--trace-id", &trace_hex(6)])
        .await;
    assert_eq!(code, 0);
    assert_eq!(by_trace.as_array().unwrap().len(), 1);
    assert_eq!(
        by_trace[0]["seq"], 7,
        "batch 6 is seq 7 (the first over HTTP)"
    );
    assert_eq!(by_trace[0]["history"][0]["protocol"], "http/protobuf");
    let (code, none) = spool
        .tool_json(&["audit", "show", "--trace-id", &trace_hex(99)])
        .await;
    assert_eq!((code, none), (1, json!([])));

    // A record as OTLP JSON: the spans that were sent.
    let (code, dumped, _) = spool.tool(&["wal", "dump", "--seq", "7"]).await;
    assert_eq!(code, 0);
    let dumped: Value = serde_json::from_str(&dumped).unwrap();
    let span_ids: Vec<&str> = dumped["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spanId"].as_str().unwrap())
        .collect();
    assert_eq!(span_ids, raw::request("flow", 6, 3).1);
    assert_eq!(
        dumped["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"],
        trace_hex(6)
    );

    // Status: nothing waiting, a success, and the outage's error.
    let st = tool_until(&spool, &["status"], |v| {
        v["destinations"][0]["backlog_spans"] == 0
            && !v["destinations"][0]["last_success"].is_null()
    })
    .await;
    let d = &st["destinations"][0];
    assert_eq!(d["backlog_spans"], 0, "{st:#}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("poisoned span name"),
        "{st:#}"
    );
    assert_eq!(st["forwarder_running"], true);
    assert_eq!(st["dead_letters"], json!({ "b": 1 }));
    assert_eq!(st["wal"]["last_seq"], 8);

    // The log: one segment, intact, delivered.
    let (code, v) = spool.tool_json(&["wal", "verify"]).await;
    assert_eq!(
        (code, &v["records"], &v["ok"]),
        (0, &json!(8), &json!(true))
    );
    let ins = tool_until(&spool, &["wal", "inspect"], |v| {
        v[0]["delivered_to"] == json!(["b"])
    })
    .await;
    assert_eq!(ins[0]["records"], 8);
    assert_eq!(ins[0]["spans"], 24);
    assert_eq!(ins[0]["delivered_to"], json!(["b"]), "{ins:#}");

    // The dead letter, listed, then retried once the cause is fixed: recorded as
    // delivered, with the key it was first exported with.
    let (code, letters) = spool.tool_json(&["dead-letter", "list"]).await;
    assert_eq!(code, 0);
    assert_eq!(letters[0]["seq"], 5);
    assert!(letters[0]["reason"]
        .as_str()
        .unwrap()
        .contains("poisoned span name"));
    // Still refused: it stays a dead letter and the tool says so.
    let (code, out) = spool.tool_json(&["dead-letter", "retry"]).await;
    assert_eq!(code, 1, "{out:#}");
    assert_eq!(out[0]["delivered"], false);
    backend.clear_poison();
    let (code, out) = spool.tool_json(&["dead-letter", "retry"]).await;
    assert_eq!(code, 0, "{out:#}");
    assert_eq!(out[0]["seq"], 5);
    let last = backend.received().pop().unwrap();
    assert_eq!(last.key.as_deref(), Some(format!("{instance}-5").as_str()));
    assert_eq!(backend.span_count(), 24);
    let (_, letters) = spool.tool_json(&["dead-letter", "list"]).await;
    assert_eq!(letters, json!([]));
    let (code, s) = spool.tool_json(&["audit", "summary"]).await;
    assert_eq!(code, 0);
    assert_eq!(s["destinations"][0]["delivered"], count(8, 24));
    assert_eq!(s["destinations"][0]["dead_lettered"], count(0, 0));

    // Replay to another backend, over HTTP, at 12 spans/s: the original keys.
    let other = Backend::start(Kind::Http).await;
    let started = Instant::now();
    let (code, out, err) = spool
        .tool(&[
            "replay",
            "--from",
            "1",
            "--to",
            "8",
            "--endpoint",
            &other.endpoint(),
            "--protocol",
            "http",
            "--rate",
            "12",
        ])
        .await;
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("8 records, 24 spans"), "{err}");
    let mut keys: Vec<String> = other
        .received()
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect();
    keys.sort_by_key(|k| k.rsplit('-').next().unwrap().parse::<u64>().unwrap());
    let want: Vec<String> = (1..=8).map(|s| format!("{instance}-{s}")).collect();
    assert_eq!(keys, want);
    assert_eq!(other.span_count(), 24);
    // 24 spans at 12/s: the first batch goes at once, the other seven wait 0.25 s each.
    assert!(
        took >= Duration::from_millis(1700),
        "rate not applied: {took:?}"
    );
    let (_, h) = spool.tool_json(&["audit", "show", "--seq", "3"]).await;
    let replayed = h[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "replayed")
        .expect("the replay is in the ledger");
    assert_eq!(replayed["records"], 8);
    assert_eq!(replayed["endpoint"], other.endpoint());

    // Stopped: the tools still work, and say so.
    let (status, _) = spool.terminate();
    assert!(status.success());
    let (code, st) = spool.tool_json(&["status"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        (&st["forwarder_running"], &st["clean"]),
        (&json!(false), &json!(true))
    );
    let (code, s) = spool.tool_json(&["audit", "summary"]).await;
    assert_eq!((code, &s["balanced"]), (0, &json!(true)));
}

/// Blocks on a future from synchronous code inside the test runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_record_is_named_skipped_counted_and_the_audit_balances() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::start(Kind::Grpc).await;
    backend.stop();
    let mut spool = Spool::new(
        dir.path(),
        "segment_bytes = \"64KiB\"",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.start();
    for b in 0..40 {
        raw::grpc_export(
            &spool.grpc_endpoint(),
            raw::request("corrupt", b, 20).0,
            None,
        )
        .await
        .unwrap();
    }
    let (status, _) = spool.terminate();
    assert!(status.success());
    let (code, v) = spool.tool_json(&["wal", "verify"]).await;
    assert_eq!((code, &v["records"]), (0, &json!(40)));
    assert!(v["segments"].as_u64().unwrap() >= 2, "{v:#}");

    // Flip one byte inside batch 10's payload (seq 11), on disk.
    let wal = spool.data.join("wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (path, at) = files
        .iter()
        .find_map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let at = bytes.windows(12).position(|w| w == b"corrupt 10.5")?;
            Some((p.clone(), at))
        })
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at + 3] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let segment = path.file_name().unwrap().to_str().unwrap().to_string();

    // The tools name it.
    let (code, v) = spool.tool_json(&["wal", "verify"]).await;
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false);
    let damage = v["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 1, "{v:#}");
    assert_eq!(
        (
            &damage[0]["first_seq"],
            &damage[0]["last_seq"],
            &damage[0]["segment"],
            &damage[0]["spans"],
            &damage[0]["in_ledger"]
        ),
        (
            &json!(11),
            &json!(11),
            &json!(segment),
            &json!(20),
            &json!(false)
        )
    );
    let (code, out, _) = spool.tool(&["wal", "verify"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("1 DAMAGED RANGES") && out.contains("11..11"),
        "{out}"
    );
    let (code, _, err) = spool.tool(&["wal", "dump", "--seq", "11"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("record 11 is not in the log"), "{err}");
    let (code, _, _) = spool.tool(&["wal", "dump", "--seq", "12"]).await;
    assert_eq!(code, 0);
    let (_, ins) = spool.tool_json(&["wal", "inspect"]).await;
    let damaged: Vec<&Value> = ins
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["damaged_ranges"] != 0)
        .collect();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0]["file"], segment);

    // Delivered: everything but the damaged record, which is counted and audited.
    backend.restart().await;
    spool.start();
    assert!(
        support::eventually(Duration::from_secs(30), || backend.span_count() == 39 * 20).await,
        "{} spans delivered",
        backend.span_count()
    );
    let (_, ids) = raw::request("corrupt", 10, 20);
    assert!(!backend.span_id_counts().contains_key(&ids[0]));
    let dropped = r#"tracespool_spans_dropped_total{reason="corruption",destination="b"}"#;
    assert!(
        support::eventually(Duration::from_secs(10), || block_on(spool.metric(dropped))
            == 20.0)
        .await
    );
    assert_eq!(
        spool
            .metric(r#"tracespool_records_dropped_total{reason="corruption",destination="b"}"#)
            .await,
        1.0
    );
    let s = tool_until(&spool, &["audit", "summary"], |s| {
        s["destinations"][0]["pending"]["records"] == 0
    })
    .await;
    let d = &s["destinations"][0];
    assert_eq!(d["accepted"], count(40, 800));
    assert_eq!(d["delivered"], count(39, 780));
    assert_eq!(d["dropped"], json!({ "corruption": count(1, 20) }));
    assert_eq!(s["balanced"], true, "{s:#}");
    let (_, h) = spool.tool_json(&["audit", "show", "--seq", "11"]).await;
    let events: Vec<&str> = h[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"accepted") && events.contains(&"damaged"),
        "{events:?}"
    );
    assert!(!events.contains(&"delivered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_beside_a_busy_forwarder_see_no_damage_and_disturb_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    // Small segments: many are sealed, delivered and deleted while the tools read.
    let mut spool = Spool::new(
        dir.path(),
        "segment_bytes = \"32KiB\"",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.start();
    let g = spool.grpc_endpoint();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_load = stop.clone();
    // Load until the tools have had three rounds, and at least 300 batches.
    let load = tokio::spawn(async move {
        let mut acked = std::collections::BTreeSet::new();
        let mut b = 0;
        while b < 300 || !stop_load.load(std::sync::atomic::Ordering::Relaxed) {
            let (body, ids) = raw::request("busy", b, 20);
            raw::grpc_export(&g, body, None).await.unwrap();
            acked.extend(ids);
            b += 1;
        }
        acked
    });
    for _ in 0..3 {
        let (code, v) = spool.tool_json(&["wal", "verify"]).await;
        assert_eq!(code, 0, "verify beside a running forwarder: {v:#}");
        assert_eq!(v["damage"], json!([]));
        let (code, s) = spool.tool_json(&["audit", "summary"]).await;
        assert_eq!(code, 0, "audit beside a running forwarder: {s:#}");
        let (code, _) = spool.tool_json(&["wal", "inspect"]).await;
        assert_eq!(code, 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = load.await.unwrap();
    support::assert_delivered(&backend, &acked, "backend").await;
    assert!(
        support::eventually(Duration::from_secs(10), || {
            std::fs::read_dir(spool.data.join("wal")).unwrap().count() <= 2
        })
        .await,
        "delivered segments were deleted while the tools read"
    );
}
