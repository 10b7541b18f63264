//! Scaling out on NATS JetStream, against a real 3-node cluster (`nats-server`
//! 2.15, an R3 stream per test): edges publish their logs into the stream, gateways
//! drain it through a shared durable consumer into their own logs and forward to a
//! backend. Python SDK clients send into the edges; every acknowledged span must
//! reach the backend exactly once (under one idempotency key, the edge's, end to
//! end), through killed stream leaders and followers, killed edges and gateways, an
//! edge cut off for longer than the stream's duplicate window, and a full stream.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use support::backend::{hex, Backend, Kind};
use support::nats::{server_binary, Cluster};
use support::python;
use support::spool::{Dest, Spool};

/// One cluster test at a time: three servers, several forwarders and clients
/// each, on two cores.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An edge: OTLP receivers, one JetStream destination creating the stream.
fn edge(root: &Path, name: &str, urls: &str, stream: &str, extra: &str) -> Spool {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // One edge of the fan-in stores zstd records: they cross the stream as stored
    // (`Content-Encoding: zstd`) among the others' plain ones.
    let storage = if name == "edge-b" {
        "compression = \"zstd\""
    } else {
        ""
    };
    let spool = Spool::new(&dir, storage, &[]);
    let timeout = if extra.contains("timeout =") {
        ""
    } else {
        "timeout = \"3s\""
    };
    spool.append_config(&format!(
        r#"[[destinations]]
name = "stream"
protocol = "jetstream"
urls = {urls}
stream = "{stream}"
subject = "{stream}.{{tenant}}.{{service}}"
tenant = "{name}"
create_stream = true
{timeout}
retry.initial_backoff = "100ms"
retry.max_backoff = "1s"
{extra}"#
    ));
    spool
}

/// A gateway: the JetStream source on `stream`, forwarding to `backend`.
fn gateway(root: &Path, name: &str, urls: &str, stream: &str, backend: &Backend) -> Spool {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // Gateways store zstd too: the zstd edge's messages are stored as they come.
    let spool = Spool::new(
        &dir,
        "compression = \"zstd\"",
        &[Dest::new("sink", &backend.endpoint(), backend.protocol()).timeout("30s")],
    );
    spool.append_config(&format!(
        "[receivers.jetstream]\nurls = {urls}\nstream = \"{stream}\"\nconsumer = \"gateways\"\nack_wait = \"5s\"\nbatch = 32\n"
    ));
    spool
}

/// Python SDK clients' flags: `batches` batches of `spans` spans with per-batch
/// idempotency keys.
fn send(dir: &Path, name: &str, endpoint: &str, batches: u32, spans: u32) -> python::PyClient {
    let (b, s) = (batches.to_string(), spans.to_string());
    python::spawn(
        dir,
        name,
        &[
            "--protocol",
            "grpc",
            "--endpoint",
            endpoint,
            "--batches",
            &b,
            "--spans",
            &s,
            "--keys",
            "--prefix",
            name,
            "--pause",
            "0.05",
            "--attempt-timeout",
            "5",
            "--deadline",
            "240",
        ],
    )
}

fn acked_spans(clients: Vec<python::PyClient>, batches: usize) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    for c in clients {
        let r = c.wait();
        assert!(r.success, "client failed: {:?}\n{}", r.summary, r.stderr);
        assert_eq!(r.acked.len(), batches);
        acked.extend(r.span_ids());
    }
    acked
}

/// Every acknowledged span is at the backend, nothing else is, and each span
/// arrived under exactly one idempotency key (an edge's `<instance>-<seq>`): a
/// redelivery of the same batch under the same key is what a deduplicating
/// backend absorbs; the same span under two keys is a duplicate nothing can undo.
/// Returns how many requests were redeliveries.
async fn assert_once_by_key(
    backend: &Backend,
    acked: &BTreeSet<String>,
    edges: &[&Spool],
) -> usize {
    support::assert_delivered(backend, acked, "at the backend").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let instances: Vec<String> = edges.iter().map(|e| e.instance_id()).collect();
    let mut keys_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in backend.received() {
        let key = r.key.clone().expect("every export carries a key");
        assert!(
            instances.iter().any(|i| key.starts_with(&format!("{i}-"))),
            "the backend got key {key:?}, not an edge's <instance>-<seq>"
        );
        for rs in &r.request.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    keys_of
                        .entry(hex(&s.span_id))
                        .or_default()
                        .insert(key.clone());
                }
            }
        }
    }
    let twice: Vec<_> = keys_of.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(twice.is_empty(), "spans under two keys: {twice:?}");
    let (_, redelivered, conflicts) = backend.key_report();
    assert!(
        conflicts.is_empty(),
        "a key named two batches: {conflicts:?}"
    );
    redelivered
}

/// `audit summary --json` once every destination has nothing pending, asserted
/// balanced and fully delivered.
async fn assert_audit_exact(spool: &Spool, what: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, s) = spool.tool_json(&["audit", "summary"]).await;
        let settled = s["destinations"]
            .as_array()
            .is_some_and(|ds| ds.iter().all(|d| d["pending"]["records"] == 0));
        if code == 0 && settled {
            assert_eq!(s["balanced"], true, "{what}: {s:#}");
            for d in s["destinations"].as_array().unwrap() {
                assert_eq!(d["delivered"], s["accepted"], "{what}: {s:#}");
                assert_eq!(d["dropped"], serde_json::json!({}), "{what}: {s:#}");
            }
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: audit never settled (exit {code}): {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_through_an_r3_stream_and_two_gateways_deliver_every_span_once() {
    let Some(bin) = server_binary("jetstream") else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&bin, dir.path(), 3).await;
    let urls = cluster.urls_toml();
    let backend = Backend::start(Kind::Grpc).await;
    let mut edges: Vec<Spool> = ["edge-a", "edge-b", "edge-c"]
        .iter()
        .map(|n| edge(dir.path(), n, &urls, "FANIN", ""))
        .collect();
    for e in &mut edges {
        e.start();
    }
    let mut gateways: Vec<Spool> = ["gw-1", "gw-2"]
        .iter()
        .map(|n| gateway(dir.path(), n, &urls, "FANIN", &backend))
        .collect();
    for g in &mut gateways {
        g.start();
    }
    let clients: Vec<_> = edges
        .iter()
        .enumerate()
        .map(|(i, e)| send(dir.path(), &format!("c{i}"), &e.grpc_endpoint(), 40, 5))
        .collect();
    let acked = acked_spans(clients, 40);
    assert_eq!(acked.len(), 600);
    let edge_refs: Vec<&Spool> = edges.iter().collect();
    let redelivered = assert_once_by_key(&backend, &acked, &edge_refs).await;
    assert_eq!(redelivered, 0, "nothing crashed: nothing is sent twice");
    assert_eq!(backend.span_count(), 600);

    for e in &edges {
        let s = assert_audit_exact(e, "edge").await;
        assert_eq!(s["accepted"]["spans"], 200, "{s:#}");
    }
    let mut through_gateways = 0;
    for g in &gateways {
        let s = assert_audit_exact(g, "gateway").await;
        through_gateways += s["accepted"]["spans"].as_u64().unwrap();
    }
    assert_eq!(
        through_gateways, 600,
        "the two gateways shared the work, each batch once"
    );
    // edge-b stored (and so published) zstd records; every span of it arrived.
    let ratio = edges[1].metric("tracespool_wal_compression_ratio").await;
    assert!(ratio > 1.2, "edge-b compressed nothing: {ratio}");
    // Both gateways took part (a shared durable consumer is a work queue).
    for g in &gateways {
        assert!(
            g.metric("tracespool_jetstream_messages_total{outcome=\"stored\"}")
                .await
                > 0.0,
            "a gateway stored nothing"
        );
    }
    // The edge's ledger says where in the stream each batch went.
    let key = format!("{}-1", edges[0].instance_id());
    let (code, shown) = edges[0].tool_json(&["audit", "show", "--key", &key]).await;
    assert_eq!(code, 0, "{shown:#}");
    let delivered: Vec<&serde_json::Value> = shown[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{shown:#}");
    assert_eq!(delivered[0]["receipt"]["stream"], "FANIN", "{shown:#}");
    assert!(delivered[0]["receipt"]["stream_seq"].as_u64().unwrap() >= 1);
    // A gateway finds the same batch by the edge's key.
    let mut found = 0;
    for g in &gateways {
        let (code, shown) = g.tool_json(&["audit", "show", "--key", &key]).await;
        if code == 0 {
            assert_eq!(shown[0]["export_key"], key.as_str(), "{shown:#}");
            found += 1;
        }
    }
    assert_eq!(found, 1, "exactly one gateway stored {key}");
    // The work queue is empty: every message was acknowledged.
    let (messages, _) = cluster.stream_state("FANIN").await.unwrap();
    assert_eq!(messages, 0, "messages left unacknowledged in the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_and_a_follower_mid_publish_loses_nothing() {
    let Some(bin) = server_binary("jetstream") else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(&bin, dir.path(), 3).await;
    let urls = cluster.urls_toml();
    let backend = Backend::start(Kind::Grpc).await;
    let mut e = edge(dir.path(), "edge", &urls, "ELECT", "");
    e.start();
    let mut g = gateway(dir.path(), "gw", &urls, "ELECT", &backend);
    g.start();
    let client = send(dir.path(), "c", &e.grpc_endpoint(), 120, 5);
    // Once the stream exists and carries traffic, kill its leader.
    assert!(
        support::eventually(Duration::from_secs(30), || backend.span_count() > 0).await,
        "nothing flowed before the faults"
    );
    let leader = cluster
        .stream_leader("ELECT", Duration::from_secs(30))
        .await;
    e.note(&format!("kill -9 stream leader n{}", leader + 1));
    cluster.kill(leader);
    // A new leader is elected among the other two (seconds); traffic resumes.
    let new_leader = cluster
        .stream_leader("ELECT", Duration::from_secs(60))
        .await;
    assert_ne!(new_leader, leader);
    cluster.start_node(leader);
    cluster.wait_ready(Duration::from_secs(60)).await;
    // Then a follower.
    let follower = (0..3).find(|&i| i != new_leader).unwrap();
    e.note(&format!("kill -9 follower n{}", follower + 1));
    cluster.kill(follower);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_node(follower);
    let acked = acked_spans(vec![client], 120);
    assert_eq!(acked.len(), 600);
    assert_once_by_key(&backend, &acked, &[&e]).await;
    assert_audit_exact(&e, "edge").await;
    assert_audit_exact(&g, "gateway").await;
    let retried = e
        .metric("tracespool_export_requests_total{destination=\"stream\",outcome=\"retryable\"}")
        .await;
    println!(
        "leader n{} and follower n{} killed; {retried} publishes retried",
        leader + 1,
        follower + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_edge_and_of_a_gateway_mid_flight_loses_nothing() {
    let Some(bin) = server_binary("jetstream") else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&bin, dir.path(), 3).await;
    let urls = cluster.urls_toml();
    let backend = Backend::start(Kind::Grpc).await;
    let mut e = edge(dir.path(), "edge", &urls, "KILLS", "max_in_flight = 16");
    e.start();
    let mut g = gateway(dir.path(), "gw", &urls, "KILLS", &backend);
    g.start();
    let client = send(dir.path(), "c", &e.grpc_endpoint(), 120, 5);
    assert!(
        support::eventually(Duration::from_secs(30), || backend.span_count() > 0).await,
        "nothing flowed before the faults"
    );
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        e.note(&format!("kill -9 edge, round {round}"));
        e.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        e.start();
        tokio::time::sleep(Duration::from_millis(400)).await;
        g.note(&format!("kill -9 gateway, round {round}"));
        g.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        g.start();
    }
    let acked = acked_spans(vec![client], 120);
    assert_eq!(acked.len(), 600);
    let redelivered = assert_once_by_key(&backend, &acked, &[&e]).await;
    assert_audit_exact(&e, "edge").await;
    assert_audit_exact(&g, "gateway").await;
    // The edge's re-publishes after its kills were dropped by the stream (same
    // message id) or by the gateway's dedup; what reached the backend twice did so
    // under one key, at most the gateway's in-flight exports per kill.
    assert!(redelivered <= 3 * 8, "{redelivered} redeliveries");
    println!("3 edge and 3 gateway kills; {redelivered} requests redelivered to the backend under their key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cut_off_longer_than_the_duplicate_window_is_still_stored_once() {
    let Some(bin) = server_binary("jetstream") else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&bin, dir.path(), 3).await;
    // The edge reaches the cluster only through a fault proxy in front of n1.
    let n1 = format!("127.0.0.1:{}", cluster.nodes[0].port)
        .parse()
        .unwrap();
    let proxy = netfault::Proxy::start(n1).await.unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut e = edge(
        dir.path(),
        "edge",
        &format!("[\"nats://{}\"]", proxy.addr),
        "CUT",
        "timeout = \"1s\"\n[destinations.stream_config]\nreplicas = 3\nduplicate_window = \"1s\"",
    );
    e.start();
    let mut g = gateway(dir.path(), "gw", &cluster.urls_toml(), "CUT", &backend);
    g.start();
    // The stream exists and the path works.
    let first = acked_spans(vec![send(dir.path(), "warm", &e.grpc_endpoint(), 5, 4)], 5);
    support::assert_delivered(&backend, &first, "before the cut").await;
    // Cut: publishes still reach the stream, but no PubAck comes back, so the edge
    // publishes again after its timeout — later than the 1 s duplicate window, so
    // the stream stores each batch more than once.
    e.note("cut: answers from the cluster lost");
    proxy.set(netfault::Faults {
        black_hole_down: true,
        ..Default::default()
    });
    let during = send(dir.path(), "cut", &e.grpc_endpoint(), 10, 4);
    let mut acked = acked_spans(vec![during], 10);
    tokio::time::sleep(Duration::from_secs(6)).await;
    e.note("healed");
    proxy.set(netfault::Faults::default());
    acked.extend(first);
    assert_once_by_key(&backend, &acked, &[&e]).await;
    assert_eq!(backend.span_count(), acked.len(), "every span exactly once");
    // The stream did hold repeats, and the gateway's dedup stored each once.
    let duplicates = g
        .metric("tracespool_jetstream_messages_total{outcome=\"duplicate\"}")
        .await;
    assert!(
        duplicates > 0.0,
        "the cut produced no repeat past the duplicate window; the test proved nothing"
    );
    assert_audit_exact(&e, "edge").await;
    let s = assert_audit_exact(&g, "gateway").await;
    assert_eq!(s["accepted"]["spans"], acked.len() as u64, "{s:#}");
    println!("{duplicates} repeats past the duplicate window deduplicated by the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_backs_the_edge_up_within_its_budget_and_recovers() {
    let Some(bin) = server_binary("jetstream") else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&bin, dir.path(), 3).await;
    let urls = cluster.urls_toml();
    let backend = Backend::start(Kind::Grpc).await;
    let mut e = edge(
        dir.path(),
        "edge",
        &urls,
        "FULL",
        "[destinations.stream_config]\nreplicas = 3\nmax_bytes = \"48KiB\"\ndiscard = \"new\"",
    );
    e.start();
    // No gateway yet: the stream fills and refuses; the edge keeps acknowledging
    // (its own log holds the batches).
    let acked = acked_spans(vec![send(dir.path(), "c", &e.grpc_endpoint(), 60, 10)], 60);
    assert_eq!(acked.len(), 600);
    let full = "tracespool_export_requests_total{destination=\"stream\",outcome=\"full\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let n = e.metric(full).await;
        if n > 0.0 {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never said it was full"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let backlog = e
        .metric("tracespool_backlog_records{destination=\"stream\"}")
        .await;
    assert!(backlog > 0.0, "the edge holds the backlog");
    let (_, bytes) = cluster.stream_state("FULL").await.unwrap();
    assert!(bytes <= 48 * 1024, "the stream kept its limit: {bytes}");
    // Space returns as a gateway drains the work queue.
    let mut g = gateway(dir.path(), "gw", &urls, "FULL", &backend);
    g.start();
    assert_once_by_key(&backend, &acked, &[&e]).await;
    assert_eq!(backend.span_count(), 600);
    assert_audit_exact(&e, "edge").await;
    assert_audit_exact(&g, "gateway").await;
    println!("{refused} publishes refused by the full stream, retried until it had room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_token_from_a_file_carry_the_flow_and_the_token_is_never_written() {
    let Some(bin) = server_binary("jetstream") else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = support::pki::Ca::new(dir.path(), "nats");
    let server = ca.server("nats", &[]);
    let token = "tok-3f9c1d7e5b2a4c6e8f0a";
    let cluster = Cluster::start_secured(&bin, dir.path(), 1, &server, &ca.file(), token).await;
    let urls = cluster.urls_toml();
    assert!(urls.contains("tls://"), "{urls}");
    let token_file = dir.path().join("nats.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let wrong_file = dir.path().join("wrong.token");
    std::fs::write(&wrong_file, "tok-wrong-0000000000000\n").unwrap();
    let secured = |file: &Path| {
        format!(
            "tls.ca_file = {:?}\n[destinations.credentials]\ntoken_file = {file:?}\n[destinations.stream_config]\nreplicas = 1",
            ca.file()
        )
    };
    let backend = Backend::start(Kind::Grpc).await;
    let mut e = edge(dir.path(), "edge", &urls, "SECURE", &secured(&token_file));
    e.start();
    let mut g = gateway(dir.path(), "gw", &urls, "SECURE", &backend);
    g.append_config(&format!(
        "[receivers.jetstream.tls]\nca_file = {:?}\n[receivers.jetstream.credentials]\ntoken_file = {token_file:?}",
        ca.file()
    ));
    g.start();
    // An edge with the wrong token keeps its batches.
    let mut wrong = edge(dir.path(), "wrong", &urls, "SECURE", &secured(&wrong_file));
    wrong.start();
    let acked = acked_spans(vec![send(dir.path(), "c", &e.grpc_endpoint(), 10, 3)], 10);
    let refused = acked_spans(vec![send(dir.path(), "w", &wrong.grpc_endpoint(), 4, 3)], 4);
    assert_once_by_key(&backend, &acked, &[&e]).await;
    assert_audit_exact(&e, "edge").await;
    assert_audit_exact(&g, "gateway").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_backend: BTreeSet<String> = backend.span_id_counts().into_keys().collect();
    assert!(
        at_backend.is_disjoint(&refused),
        "spans of the edge with the wrong token got through"
    );
    assert_eq!(
        wrong
            .metric("tracespool_backlog_records{destination=\"stream\"}")
            .await,
        4.0,
        "the refused edge holds its batches"
    );
    // No file of any tracespool — logs, ledgers, configs aside — holds the token.
    for s in [&e, &g, &wrong] {
        for entry in walk(&s.root) {
            if entry.ends_with("tracespool.toml") {
                continue;
            }
            let bytes = std::fs::read(&entry).unwrap_or_default();
            let found = bytes.windows(token.len()).any(|w| w == token.as_bytes())
                || bytes.windows(9).any(|w| w == b"tok-wrong");
            assert!(!found, "a token in {}", entry.display());
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
