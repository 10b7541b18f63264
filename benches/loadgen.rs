//! Load generator: drives a release build of tracespool (fsync = always) with
//! pre-encoded OTLP requests of realistic ~200-byte spans, forwarding to a local
//! sink in this process, and reports:
//!
//! 1. maximum sustained durable ingest (spans/s, MB/s) — closed loop, `--concurrency`
//!    clients, while the sink is down (an outage), until `--backlog` bytes are spooled;
//! 2. drain throughput after the outage — the sink comes back, nothing else runs;
//! 3. ack latency p50/p99 at half the ingest rate — open loop, sink up;
//! 4. peak RSS of the tracespool process (VmHWM), with the backlog on disk;
//!
//! plus the machine's physical baseline measured in the same run (1 MiB
//! `write_all` + `sync_data`), so figures can be read as ratios.
//!
//! ```sh
//! cargo bench --bench loadgen                       # gRPC, 512-span batches, 2 GiB backlog
//! cargo bench --bench loadgen -- --protocol http --backlog 512MiB --duration 10s
//! ```
//!
//! Both processes share the machine (2 cores here): the figures include the load
//! generator's own cost. The sink counts requests and bytes (every request is one
//! of the generator's, of known span count); tracespool's own tests check content.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::net::TcpListener;
use tracespool::otlp::codec::{ExportFuture, ExportHandler, ExportService, RawCodec, EXPORT_PATH};

#[derive(Clone, Debug)]
struct Opts {
    protocol: String,
    concurrency: usize,
    batch: usize,
    backlog: u64,
    max_duration: Duration,
    latency_duration: Duration,
    /// Fractions of the measured ingest rate at which to measure ack latency.
    latency_at: Vec<f64>,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        protocol: "grpc".into(),
        concurrency: 8,
        batch: 512,
        backlog: 2 << 30,
        max_duration: Duration::from_secs(60),
        latency_duration: Duration::from_secs(10),
        latency_at: vec![0.5],
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--protocol" => o.protocol = v,
            "--concurrency" => o.concurrency = v.parse().expect("--concurrency N"),
            "--batch" => o.batch = v.parse().expect("--batch N"),
            "--backlog" => {
                o.backlog = tracespool::config::ByteSize::parse(&v)
                    .expect("--backlog SIZE")
                    .0
            }
            "--duration" => o.max_duration = humantime::parse_duration(&v).expect("--duration 60s"),
            "--latency-duration" => {
                o.latency_duration = humantime::parse_duration(&v).expect("--latency-duration 10s")
            }
            "--latency-at" => {
                o.latency_at = v
                    .split(',')
                    .map(|f| f.parse().expect("--latency-at 0.25,0.5"))
                    .collect()
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A request of `n` spans of about 200 bytes each in protobuf, like an instrumented
/// HTTP service produces.
fn request(n: usize, variant: u64) -> Vec<u8> {
    let s = |v: &str| any_value::Value::StringValue(v.into());
    let spans = (0..n)
        .map(|i| {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&variant.to_be_bytes());
            trace_id[8..].copy_from_slice(&(i as u64 / 8).to_be_bytes());
            let mut span_id = [0u8; 8];
            span_id.copy_from_slice(&((variant << 32) | i as u64).to_be_bytes());
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: if i % 8 == 0 { vec![] } else { span_id.to_vec() },
                name: "GET /api/v1/orders/{id}".into(),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000,
                end_time_unix_nano: 1_700_000_000_000_450_000 + i as u64 * 1000,
                attributes: vec![
                    kv("http.request.method", s("GET")),
                    kv("url.path", s("/api/v1/orders/12345")),
                    kv("http.response.status_code", any_value::Value::IntValue(200)),
                    kv("server.address", s("orders.shop.local")),
                ],
                status: Some(Status {
                    message: String::new(),
                    code: 1,
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("orders")),
                    kv("host.name", s("edge-node-17")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.http".into(),
                    version: "1.0.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

// ---- the sink: counts spans it receives, answers OK ----

#[derive(Default)]
struct SinkStats {
    requests: AtomicU64,
    bytes: AtomicU64,
    up: AtomicBool,
}

#[derive(Clone)]
struct Sink(Arc<SinkStats>);

impl ExportHandler for Sink {
    fn export(&self, req: tonic::Request<Bytes>) -> ExportFuture {
        let stats = self.0.clone();
        Box::pin(async move {
            if !stats.up.load(Ordering::Relaxed) {
                return Err(tonic::Status::unavailable("sink down"));
            }
            // Every request is one of ours, of a known span count: counting bytes
            // and requests keeps the sink's CPU (shared with tracespool) small.
            let body = req.into_inner();
            stats.requests.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

// ---- clients ----

#[derive(Clone)]
enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http(
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Full<Bytes>,
        >,
        String,
    ),
}

impl Client {
    async fn new(protocol: &str, grpc: SocketAddr, http: SocketAddr) -> Self {
        match protocol {
            "grpc" => {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
                    .unwrap()
                    .tcp_nodelay(true)
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(16 << 20)
                    .connect()
                    .await
                    .expect("connect to tracespool");
                Client::Grpc(tonic::client::Grpc::new(ch))
            }
            _ => Client::Http(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
                format!("http://{http}/v1/traces"),
            ),
        }
    }

    /// Sends one request; true when tracespool acknowledged it.
    async fn send(&mut self, body: &Bytes) -> bool {
        match self {
            Client::Grpc(g) => {
                if g.ready().await.is_err() {
                    return false;
                }
                g.unary::<Bytes, Bytes, _>(
                    tonic::Request::new(body.clone()),
                    http::uri::PathAndQuery::from_static(EXPORT_PATH),
                    RawCodec,
                )
                .await
                .is_ok()
            }
            Client::Http(c, url) => {
                let req = http::Request::post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(http_body_util::Full::new(body.clone()))
                    .unwrap();
                match c.request(req).await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

async fn latency(
    o: &Opts,
    fraction: f64,
    ingest_sps: f64,
    pid: u32,
    grpc: SocketAddr,
    http: SocketAddr,
    bodies: &[Bytes],
) {
    let rate = (ingest_sps * fraction / o.batch as f64).max(1.0);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..o.concurrency {
        clients.push(Client::new(&o.protocol, grpc, http).await);
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let (cpu0, own0) = (cpu_time(pid), cpu_time(std::process::id()));
    let mut sent = 0usize;
    let mut inflight = tokio::task::JoinSet::new();
    while started.elapsed() < o.latency_duration {
        tick.tick().await;
        let mut client = clients[sent % clients.len()].clone();
        let body = bodies[sent % bodies.len()].clone();
        let lat = latencies.clone();
        inflight.spawn(async move {
            let t = Instant::now();
            if client.send(&body).await {
                lat.lock().unwrap().push(t.elapsed());
            }
        });
        sent += 1;
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    let cpu3 = cpu_time(pid).saturating_sub(cpu0).as_secs_f64() / secs * 100.0;
    let own3 = cpu_time(std::process::id())
        .saturating_sub(own0)
        .as_secs_f64()
        / secs
        * 100.0;
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "3. ack latency at {:.0} spans/s ({rate:.0} requests/s, {:.0}% of the ingest rate): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} requests",
        rate * o.batch as f64,
        fraction * 100.0,
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        lat.len()
    );
    println!("   CPU: tracespool {cpu3:.0}% of one core (receiving and forwarding), load generator and sink {own3:.0}%");
}

// ---- tracespool process ----

fn tracespool_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", "tracespool"])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building tracespool failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("release").join("tracespool")
}

fn start_tracespool(bin: &Path, dir: &Path, sink: SocketAddr) -> (Child, SocketAddr, SocketAddr) {
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (grpc, http) = (port(()), port(()));
    let cfg = dir.join("tracespool.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\ndir = {:?}\nmax_bytes = \"8GiB\"\nfsync = \"always\"\n\n[receivers.otlp]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\n\n[log]\nlevel = \"warn\"\n\n[[destinations]]\nname = \"sink\"\nendpoint = \"http://{sink}\"\nprotocol = \"grpc\"\nmax_in_flight = 16\nretry.initial_backoff = \"100ms\"\nretry.max_backoff = \"500ms\"\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("tracespool.log")).unwrap(),
        ))
        .spawn()
        .expect("start tracespool");
    for _ in 0..300 {
        if std::net::TcpStream::connect(grpc).is_ok() && std::net::TcpStream::connect(http).is_ok()
        {
            return (child, grpc, http);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "tracespool did not start; see {}",
        dir.join("tracespool.log").display()
    );
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn baseline(dir: &Path) -> f64 {
    let chunk = vec![0xA5u8; 1 << 20];
    let path = dir.join("baseline");
    let mut f = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    for _ in 0..256 {
        f.write_all(&chunk).unwrap();
        f.sync_data().unwrap();
    }
    let mbps = 256.0 * 1048576.0 / start.elapsed().as_secs_f64() / 1e6;
    drop(f);
    let _ = std::fs::remove_file(path);
    mbps
}

fn main() {
    let opts = parse_args();
    let bin = tracespool_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(opts, bin));
}

async fn run(o: Opts, bin: PathBuf) {
    let base_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base_dir).unwrap();
    let dir = tempfile::tempdir_in(&base_dir).unwrap();
    let disk = baseline(dir.path());

    let sink_stats = Arc::new(SinkStats::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = listener.local_addr().unwrap();
    let sink = ExportService::new(Sink(sink_stats.clone()), 64 << 20);
    tokio::spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let _ = tonic::transport::Server::builder()
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .add_service(sink)
            .serve_with_incoming(incoming)
            .await;
    });

    let (mut child, grpc, http) = start_tracespool(&bin, dir.path(), sink_addr);
    let pid = child.id();
    let bodies: Vec<Bytes> = (0..16).map(|v| Bytes::from(request(o.batch, v))).collect();
    let req_bytes = bodies[0].len() as u64;
    println!(
        "tracespool load test: protocol {}, {} clients, {} spans/request ({} bytes, {} bytes/span), fsync = always",
        o.protocol,
        o.concurrency,
        o.batch,
        req_bytes,
        req_bytes / o.batch as u64
    );
    println!("baseline: write_all + sync_data of 1 MiB chunks: {disk:.0} MB/s");

    // 1. Maximum durable ingest during an outage, until the backlog is reached.
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.concurrency {
        let mut client = Client::new(&o.protocol, grpc, http).await;
        let (acked, failed, stop, bodies) =
            (acked.clone(), failed.clone(), stop.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                if client.send(&bodies[i % bodies.len()]).await {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let wal = dir.path().join("data/wal");
    let mut peak_rss = 0;
    let (cpu0, own0) = (cpu_time(pid), cpu_time(std::process::id()));
    while dir_size(&wal) < o.backlog && started.elapsed() < o.max_duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS:"));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let cpu1 = cpu_time(pid).saturating_sub(cpu0).as_secs_f64() / ingest_secs * 100.0;
    let own1 = cpu_time(std::process::id())
        .saturating_sub(own0)
        .as_secs_f64()
        / ingest_secs
        * 100.0;
    let requests = acked.load(Ordering::Relaxed);
    let spans = requests * o.batch as u64;
    let ingest_sps = spans as f64 / ingest_secs;
    let ingest_mbps = (requests * req_bytes) as f64 / ingest_secs / 1e6;
    let backlog = dir_size(&wal);
    println!(
        "1. durable ingest (sink down): {spans} spans in {ingest_secs:.1} s = {:.0} spans/s, {ingest_mbps:.0} MB/s ({:.2} x disk baseline); {} refused; backlog {} MiB",
        ingest_sps,
        ingest_mbps / disk,
        failed.load(Ordering::Relaxed),
        backlog >> 20
    );
    println!("   CPU: tracespool {cpu1:.0}% of one core, load generator {own1:.0}%");

    // 2. Drain after the outage.
    sink_stats.up.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let sink_spans = |s: &SinkStats| s.requests.load(Ordering::Relaxed) * o.batch as u64;
    while sink_spans(&sink_stats) < spans && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS:"));
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let drained = sink_spans(&sink_stats);
    println!(
        "2. drain after the outage: {drained} spans in {drain_secs:.1} s = {:.0} spans/s, {:.0} MB/s",
        drained as f64 / drain_secs,
        sink_stats.bytes.load(Ordering::Relaxed) as f64 / drain_secs / 1e6
    );

    // 3. Ack latency at fractions of the ingest rate (half by default), open loop,
    //    sink up.
    for fraction in o.latency_at.clone() {
        latency(&o, fraction, ingest_sps, pid, grpc, http, &bodies).await;
    }
    let hwm = status_kib(pid, "VmHWM:");
    println!(
        "4. tracespool memory: peak RSS {} MiB (VmHWM), highest sampled RSS {} MiB, with a {} MiB backlog on disk",
        hwm / 1024,
        peak_rss / 1024,
        backlog >> 20
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    if std::env::var_os("LOADGEN_KEEP").is_some() {
        println!("kept {}", dir.keep().display());
    }
}
