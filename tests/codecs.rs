//! Record codecs end to end: zstd holds five times more spans in the same budget,
//! zstd destinations get the stored bytes as they are (others equivalent
//! requests), and with encryption at rest no attribute value reaches any file of
//! the data directory; keys rotate, and a missing key stops the start without a
//! byte on disk changing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use support::backend::{Backend, Kind, Mode};
use support::python;
use support::raw;
use support::spool::{Dest, Spool};
use tracespool::payload::{PROTOBUF, PROTOBUF_ZSTD};
use tracespool_storage::{Codec, KeyRing};

const KEY_1: &str = "8d1c02a6f4b3e5d7c9a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566";
const KEY_2: &str = "11f0e1d2c3b4a5968778695a4b3c2d1e0f00ffeeddccbbaa9988776655443322";

/// Every span of `ids` arrived at `backend`, once, and nothing else.
async fn delivered_once(backend: &Backend, ids: &[String], what: &str) {
    let want: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(want.len(), ids.len(), "{what}: span ids repeat");
    support::assert_delivered(backend, &want, what).await;
    let twice: Vec<_> = backend
        .span_id_counts()
        .into_iter()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{what}: delivered more than once: {twice:?}"
    );
}

/// Every intact record on disk: seq, codec and payload as stored (decrypted).
fn stored(data: &Path, keys: &KeyRing) -> Vec<(u64, Codec, Vec<u8>)> {
    let mut out = Vec::new();
    tracespool_storage::offline::for_each_record(data, 0, u64::MAX, true, keys, |r| {
        out.push((r.seq, r.codec, r.payload.to_vec()));
        Ok(())
    })
    .unwrap();
    out
}

fn ring(keys: &[(u32, &str)]) -> KeyRing {
    let mut r = KeyRing::default();
    for (id, hex) in keys {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        r.insert(*id, k).unwrap();
    }
    r
}

/// Spans a spool with this `[storage]` takes before it answers "full".
async fn fill(root: &Path, storage: &str) -> (u64, Spool) {
    std::fs::create_dir_all(root).unwrap();
    let mut spool = Spool::new(
        root,
        storage,
        // Unreachable: everything stays in the spool.
        &[Dest::new("nowhere", "http://127.0.0.1:9/v1/traces", "http")],
    );
    spool.start();
    let mut spans = 0;
    for i in 0..5000u64 {
        let (body, _) = raw::realistic(512, i);
        match raw::grpc_export(&spool.grpc_endpoint(), body, None).await {
            Ok(()) => spans += 512,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                return (spans, spool);
            }
        }
    }
    panic!("the spool never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_holds_five_times_more_spans_in_the_same_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = "max_bytes = \"2MiB\"\nsegment_bytes = \"64KiB\"\n";
    let (plain, mut a) = fill(&dir.path().join("none"), budget).await;
    let (zstd, mut b) = fill(
        &dir.path().join("zstd"),
        &format!("{budget}compression = \"zstd\""),
    )
    .await;
    let ratio = zstd as f64 / plain as f64;
    println!("same 2 MiB budget: {plain} spans plain, {zstd} with zstd ({ratio:.2}x)");
    assert!(ratio >= 5.0, "{ratio:.2}x: {plain} plain, {zstd} zstd");
    // Both were refused only for the budget, and counted as full.
    for s in [&a, &b] {
        let full = s
            .metric("tracespool_receiver_requests_total{protocol=\"grpc\",outcome=\"full\"}")
            .await;
        assert!(full >= 1.0, "{full}");
    }
    let m = b.metrics().await;
    let series = |name: &str| support::spool::metric_value(&m, name);
    let pb = series("tracespool_wal_record_bytes_total{form=\"protobuf\"}");
    let st = series("tracespool_wal_record_bytes_total{form=\"stored\"}");
    assert!(pb > 0.0 && st > 0.0 && pb / st >= 5.0, "{pb} / {st}");
    let gauge = series("tracespool_wal_compression_ratio");
    assert!((gauge - pb / st).abs() < 0.01, "{gauge} vs {}", pb / st);
    // Every record on disk is zstd and decompresses to a request with its spans.
    let records = stored(&b.data, &KeyRing::default());
    assert_eq!(records.len() as u64 * 512, zstd);
    for (seq, codec, payload) in &records {
        assert_eq!(*codec, PROTOBUF_ZSTD, "seq {seq}");
        let plain = tracespool::payload::protobuf(*codec, &payload.clone().into()).unwrap();
        let req =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                &plain[..],
            )
            .unwrap();
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 512);
    }
    a.terminate();
    b.terminate();

    // The OpenTelemetry Python SDK's spans (512 a batch, its batch processor's
    // default; traces of 8 spans, a root and its children): stored at a fifth or
    // less of their protobuf size.
    let backend = Backend::start(Kind::Grpc).await;
    std::fs::create_dir_all(dir.path().join("sdk")).unwrap();
    let mut c = Spool::new(
        &dir.path().join("sdk"),
        "compression = \"zstd\"",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    c.start();
    let endpoint = c.grpc_endpoint();
    let r = python::spawn(
        dir.path(),
        "sdk",
        &[
            "--protocol",
            "grpc",
            "--endpoint",
            &endpoint,
            "--batches",
            "6",
            "--spans",
            "512",
            "--spans-per-trace",
            "8",
            "--prefix",
            "sdk",
        ],
    )
    .wait_for(Duration::from_secs(120));
    assert!(r.success, "{:?}\n{}", r.summary, r.stderr);
    let ids = r.span_ids();
    assert_eq!(ids.len(), 6 * 512);
    delivered_once(&backend, &ids, "sdk").await;
    let m = c.metrics().await;
    let pb =
        support::spool::metric_value(&m, "tracespool_wal_record_bytes_total{form=\"protobuf\"}");
    let st = support::spool::metric_value(&m, "tracespool_wal_record_bytes_total{form=\"stored\"}");
    println!(
        "Python SDK spans: {pb} protobuf bytes stored as {st} ({:.2}x)",
        pb / st
    );
    assert!(pb / st >= 5.0, "{pb} / {st}");
    c.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_destinations_get_the_stored_bytes_and_others_equivalent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = [
        ("http-zstd", Backend::start(Kind::Http).await, "zstd"),
        ("grpc-zstd", Backend::start(Kind::Grpc).await, "zstd"),
        ("http-gzip", Backend::start(Kind::Http).await, "gzip"),
        ("grpc-gzip", Backend::start(Kind::Grpc).await, "gzip"),
        ("grpc-none", Backend::start(Kind::Grpc).await, "none"),
    ];
    let dests: Vec<Dest> = sinks
        .iter()
        .map(|(name, b, c)| {
            Dest::new(name, &b.endpoint(), b.protocol()).with(&format!("compression = \"{c}\""))
        })
        .collect();
    let mut spool = Spool::new(
        dir.path(),
        "compression = \"zstd\"\nretain_delivered = \"1h\"",
        &dests,
    );
    spool.start();
    let mut sent = Vec::new();
    for i in 0..6u64 {
        let (body, ids) = raw::realistic(200, 100 + i);
        raw::grpc_export(&spool.grpc_endpoint(), body, None)
            .await
            .unwrap();
        sent.extend(ids);
    }
    // A client that compresses with zstd itself: its body is stored as it came.
    let (body, ids) = raw::realistic(300, 7);
    let client_zstd = zstd::bulk::compress(&body, 3).unwrap();
    let answer = raw::http_post(
        &format!("http://{}/v1/traces", spool.http),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "zstd"),
        ],
        client_zstd.clone(),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    sent.extend(ids);
    // A tiny request zstd cannot shrink is stored plain (codec 1).
    let (tiny, ids) = raw::request("tiny", 1, 1);
    raw::grpc_export(&spool.grpc_endpoint(), tiny, None)
        .await
        .unwrap();
    sent.extend(ids);

    for (name, b, _) in &sinks {
        delivered_once(b, &sent, name).await;
    }
    let records = stored(&spool.data, &KeyRing::default());
    assert_eq!(records.len(), 8);
    assert!(
        records.iter().any(|(_, _, p)| p == &client_zstd),
        "the client's zstd body is not stored as it came"
    );
    let zstd_records: Vec<&Vec<u8>> = records
        .iter()
        .filter(|(_, c, _)| *c == PROTOBUF_ZSTD)
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(zstd_records.len(), 7, "the tiny request is not compressed");
    assert!(records.iter().any(|(_, c, _)| *c == PROTOBUF));
    let plain_of = |c: Codec, p: &Vec<u8>| {
        tracespool::payload::protobuf(c, &p.clone().into())
            .unwrap()
            .to_vec()
    };
    let mut want_plain: Vec<Vec<u8>> = records.iter().map(|(_, c, p)| plain_of(*c, p)).collect();
    want_plain.sort();

    for (name, b, compression) in &sinks {
        let wire = b.wire();
        assert_eq!(wire.len(), 8, "{name}: {} requests", wire.len());
        let mut got_plain: Vec<Vec<u8>> = Vec::new();
        for w in &wire {
            let plain = match w.encoding.as_str() {
                "zstd" => zstd::stream::decode_all(&w.body[..]).unwrap(),
                "gzip" => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut flate2::read::MultiGzDecoder::new(&w.body[..]),
                        &mut out,
                    )
                    .unwrap();
                    out
                }
                "identity" => w.body.clone(),
                other => panic!("{name}: encoding {other}"),
            };
            got_plain.push(plain);
        }
        got_plain.sort();
        assert!(
            got_plain == want_plain,
            "{name}: requests differ from the stored ones"
        );
        match *compression {
            "zstd" => {
                assert!(wire.iter().all(|w| w.encoding == "zstd"), "{name}");
                // The zstd records went as stored, byte for byte.
                for z in &zstd_records {
                    assert!(
                        wire.iter().any(|w| &&w.body == z),
                        "{name}: a stored zstd record was not sent as stored"
                    );
                }
                let egress = spool
                    .metric(&format!(
                        "tracespool_egress_bytes_total{{destination=\"{name}\"}}"
                    ))
                    .await;
                let sent_bytes: usize = wire.iter().map(|w| w.body.len()).sum();
                assert_eq!(egress as usize, sent_bytes, "{name}");
            }
            "gzip" => assert!(wire.iter().all(|w| w.encoding == "gzip"), "{name}"),
            _ => assert!(wire.iter().all(|w| w.encoding == "identity"), "{name}"),
        }
    }
    spool.terminate();
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.insert(
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    out
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn encryption(keys: &[u32], active: u32) -> String {
    let mut s = format!("[storage.encryption]\nactive_key = {active}\n");
    for k in keys {
        s.push_str(&format!(
            "[[storage.encryption.keys]]\nid = {k}\nenv = \"TEST_SPOOL_KEY_{k}\"\n"
        ));
    }
    s
}

fn python_batch(dir: &Path, name: &str, endpoint: &str, attrs: &Path) -> Vec<String> {
    let r = python::spawn(
        dir,
        name,
        &[
            "--protocol",
            "grpc",
            "--endpoint",
            endpoint,
            "--batches",
            "4",
            "--spans",
            "50",
            "--prefix",
            name,
            "--service",
            "svc-0f9c3b7e1a",
            "--attributes-json",
            attrs.to_str().unwrap(),
            "--deadline",
            "90",
        ],
    )
    .wait_for(Duration::from_secs(120));
    assert!(r.success, "{:?}\n{}", r.summary, r.stderr);
    r.span_ids()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_spools_hold_no_attribute_value_in_any_file_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    // Values that must never appear in clear on disk.
    let secrets = [
        "card-4929-1111-2222-9f3k2q",
        "patient-name-Erika-Mustermann-77",
        "svc-0f9c3b7e1a",
        "event-detail-zq81x",
    ];
    let attrs = dir.path().join("attrs.json");
    std::fs::write(
        &attrs,
        serde_json::json!({
            "resource": {"deployment.secret": secrets[1]},
            "span": {"payment.card": secrets[0]},
            "event": {"detail": secrets[3]},
        })
        .to_string(),
    )
    .unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    // The first batch is refused for good: a dead letter.
    backend.poison("enc1 op 0.0");
    backend.set_mode(Mode::Unavailable);
    let storage = format!(
        "compression = \"zstd\"\nretain_delivered = \"1h\"\nsegment_bytes = \"16KiB\"\n{}",
        encryption(&[1], 1)
    );
    let mut spool = Spool::new(
        dir.path(),
        &storage,
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.env.push(("TEST_SPOOL_KEY_1".into(), KEY_1.into()));
    spool.env.push(("TEST_SPOOL_KEY_2".into(), KEY_2.into()));
    spool.start();
    // Key 1, while the backend is down: these wait in the spool.
    let first = python_batch(dir.path(), "enc1", &spool.grpc_endpoint(), &attrs);
    spool.terminate();

    // Rotation: key 2 encrypts new records, key 1 still reads the old ones.
    let cfg = std::fs::read_to_string(&spool.config).unwrap();
    std::fs::write(
        &spool.config,
        cfg.replace(&encryption(&[1], 1), &encryption(&[1, 2], 2)),
    )
    .unwrap();
    spool.start();
    let second = python_batch(dir.path(), "enc2", &spool.grpc_endpoint(), &attrs);
    backend.set_mode(Mode::Accept);
    let delivered: Vec<String> = first[50..].iter().chain(&second).cloned().collect();
    delivered_once(&backend, &delivered, "after rotation").await;
    assert!(
        support::eventually(Duration::from_secs(10), || {
            tracespool::deadletter::DeadLetters::new(&spool.data)
                .list(Some("b"))
                .is_ok_and(|l| l.len() == 1)
        })
        .await
    );
    let (code, inspect) = spool.tool_json(&["wal", "inspect"]).await;
    assert_eq!(code, 0, "{inspect}");
    let key_ids: Vec<u64> = inspect
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key_id"].as_u64().unwrap())
        .collect();
    assert!(key_ids.contains(&1) && key_ids.contains(&2), "{key_ids:?}");
    let (code, out, err) = spool.tool(&["audit", "summary"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // The dead letter opens with the keys (tools read it like the forwarder).
    let (code, out, err) = spool.tool(&["dead-letter", "list"]).await;
    assert_eq!(code, 0, "{out}{err}");
    spool.terminate();

    // A segment of another encrypted log dropped into this one is quarantined:
    // its bytes move, still sealed.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut o = Spool::new(
        &other,
        &storage,
        &[Dest::new("x", "http://127.0.0.1:9/v1/traces", "http")],
    );
    o.env = spool.env.clone();
    o.start();
    python_batch(dir.path(), "other", &o.grpc_endpoint(), &attrs);
    o.terminate();
    let foreign = std::fs::read_dir(other.join("data/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 1024)
        .unwrap();
    // Named into a gap between two of this log's segments.
    let mut ours: Vec<u64> = std::fs::read_dir(spool.data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".seg").and_then(|n| n.parse().ok()))
        .collect();
    ours.sort();
    let gap = ours
        .windows(2)
        .find(|w| w[1] - w[0] >= 2)
        .map(|w| w[0] + 1)
        .expect("two segments with seqs between them");
    std::fs::copy(&foreign, spool.data.join(format!("wal/{gap:020}.seg"))).unwrap();
    spool.start();
    assert!(
        support::eventually(Duration::from_secs(10), || {
            std::fs::read_dir(spool.data.join("quarantine")).is_ok_and(|mut d| d.next().is_some())
        })
        .await
    );
    spool.terminate();

    // Not one secret in any file: segments, dead letters, quarantine, ledger,
    // metadata, state.
    let all = files(&spool.data);
    let kinds = [
        "/wal/",
        "/dead-letter/",
        "/quarantine/",
        "/ledger/",
        "/meta/",
    ];
    for k in kinds {
        assert!(
            all.keys().any(|p| p.contains(k)),
            "no file under {k}: {:?}",
            all.keys()
        );
    }
    for (path, bytes) in &all {
        for s in &secrets {
            assert!(!holds(bytes, s.as_bytes()), "{s} in clear in {path}");
        }
    }
    // ...while the same spans sent without encryption do show them (the check
    // can fail).
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let mut p = Spool::new(
        &plain_dir,
        "",
        &[Dest::new("x", "http://127.0.0.1:9/v1/traces", "http")],
    );
    p.start();
    python_batch(dir.path(), "plain", &p.grpc_endpoint(), &attrs);
    p.terminate();
    let plain_files = files(&p.data);
    for s in &secrets {
        assert!(
            plain_files.values().any(|b| holds(b, s.as_bytes())),
            "{s} not found even without encryption"
        );
    }

    // Key 1 removed while its segments remain: the start is refused, naming the
    // key, and nothing on disk changes.
    let before = files(&spool.data);
    let cfg = std::fs::read_to_string(&spool.config).unwrap();
    let only_2 = "[storage.encryption]\nactive_key = 2\n[[storage.encryption.keys]]\nid = 2\nenv = \"TEST_SPOOL_KEY_2\"\n";
    std::fs::write(&spool.config, cfg.replace(&encryption(&[1, 2], 2), only_2)).unwrap();
    let offset = spool.spawn();
    let status = loop {
        if let Some(s) = spool.exited() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(2), "{}", spool.log_text());
    let log = &spool.log_text()[offset as usize..];
    assert!(log.contains("key id 1"), "{log}");
    assert!(
        !log.contains(&KEY_1[..16]) && !log.contains(&KEY_2[..16]),
        "{log}"
    );
    let after = files(&spool.data);
    assert!(
        before == after,
        "a refused start changed the data directory"
    );
    // `wal verify` names the records it cannot decrypt, and their key.
    let (code, out, err) = spool.tool(&["wal", "verify"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("CANNOT BE DECRYPTED (key id 1)"), "{out}");
    let (_, v) = spool.tool_json(&["wal", "verify"]).await;
    let missing = v["undecryptable"].as_array().unwrap();
    assert!(!missing.is_empty());
    assert!(missing.iter().all(|u| u["key_id"] == 1), "{v}");

    // With both keys again it starts, and every record reads.
    std::fs::write(&spool.config, cfg).unwrap();
    spool.start();
    let (code, out, err) = spool.tool(&["wal", "verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let records = stored(&spool.data, &ring(&[(1, KEY_1), (2, KEY_2)]));
    assert!(records.len() >= 8, "{}", records.len());
    spool.terminate();
}
