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
//! cargo bench --bench loadgen -- --codecs --duration 20s   # none vs zstd vs zstd + AES-GCM
//! cargo bench --bench loadgen -- --lanes --duration 20s    # one lane vs live_first lanes
//! ```
//!
//! `--codecs` runs ingest and drain three times in the same run — records stored
//! plain, as zstd, and as zstd sealed with AES-256-GCM (the zstd runs drain to a
//! zstd destination: sent as stored) — each for `--duration` of ingest, and prints
//! the figures as ratios to the plain run, with tracespool's CPU per span.
//! `--lanes` does the same for a destination's lanes — one lane in seq order (as
//! before `live_first`), `live_first` oldest first, and newest first — with no
//! egress limit: the drain after the outage goes through the backlog lane.
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
use tokio::net::TcpListener;
use tracespool::otlp::codec::{ExportFuture, ExportHandler, ExportService, RawCodec, EXPORT_PATH};

#[path = "common/spans.rs"]
mod spans;
use spans::request;

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
    /// Compare record codecs instead (see the module doc).
    codecs: bool,
    /// Compare a destination's lanes instead.
    lanes: bool,
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
        codecs: false,
        lanes: false,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        if args[i] == "--codecs" || args[i] == "--lanes" {
            o.codecs |= args[i] == "--codecs";
            o.lanes |= args[i] == "--lanes";
            i += 1;
            continue;
        }
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

/// The sink on a port of its own: its counters, its address, its task.
async fn start_sink() -> (Arc<SinkStats>, SocketAddr, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(SinkStats::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = ExportService::new(Sink(stats.clone()), 64 << 20);
    let server = tokio::spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let _ = tonic::transport::Server::builder()
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .add_service(sink)
            .serve_with_incoming(incoming)
            .await;
    });
    (stats, addr, server)
}

/// `--concurrency` clients each sending the next request as soon as the last is
/// answered, until stopped.
struct ClosedLoop {
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClosedLoop {
    async fn start(o: &Opts, grpc: SocketAddr, http: SocketAddr, bodies: &[Bytes]) -> Self {
        let acked = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..o.concurrency {
            let mut client = Client::new(&o.protocol, grpc, http).await;
            let (acked, refused, stop, bodies) = (
                acked.clone(),
                refused.clone(),
                stop.clone(),
                bodies.to_vec(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    if client.send(&bodies[i % bodies.len()]).await {
                        acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        Self {
            acked,
            refused,
            stop,
            tasks,
        }
    }

    /// Stops the clients; requests acknowledged and refused.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.acked.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
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
    start_tracespool_with(bin, dir, sink, "", "", &[])
}

/// `storage`: more `[storage]` settings; `dest`: more destination settings; `env`:
/// variables for the process.
fn start_tracespool_with(
    bin: &Path,
    dir: &Path,
    sink: SocketAddr,
    storage: &str,
    dest: &str,
    env: &[(&str, &str)],
) -> (Child, SocketAddr, SocketAddr) {
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
            "[storage]\ndir = {:?}\nmax_bytes = \"8GiB\"\nfsync = \"always\"\n{storage}\n\n[receivers.otlp]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\n\n[log]\nlevel = \"warn\"\n\n[[destinations]]\nname = \"sink\"\nendpoint = \"http://{sink}\"\nprotocol = \"grpc\"\nmax_in_flight = 16\nretry.initial_backoff = \"100ms\"\nretry.max_backoff = \"500ms\"\n{dest}\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .envs(env.iter().copied())
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
    if o.codecs || o.lanes {
        return compare(o, bin).await;
    }
    let base_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base_dir).unwrap();
    let dir = tempfile::tempdir_in(&base_dir).unwrap();
    let disk = baseline(dir.path());

    let (sink_stats, sink_addr, _sink) = start_sink().await;

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
    let started = Instant::now();
    let clients = ClosedLoop::start(&o, grpc, http, &bodies).await;
    let wal = dir.path().join("data/wal");
    let mut peak_rss = 0;
    let (cpu0, own0) = (cpu_time(pid), cpu_time(std::process::id()));
    while dir_size(&wal) < o.backlog && started.elapsed() < o.max_duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS:"));
    }
    let (requests, refused) = clients.stop().await;
    let ingest_secs = started.elapsed().as_secs_f64();
    let cpu1 = cpu_time(pid).saturating_sub(cpu0).as_secs_f64() / ingest_secs * 100.0;
    let own1 = cpu_time(std::process::id())
        .saturating_sub(own0)
        .as_secs_f64()
        / ingest_secs
        * 100.0;
    let spans = requests * o.batch as u64;
    let ingest_sps = spans as f64 / ingest_secs;
    let ingest_mbps = (requests * req_bytes) as f64 / ingest_secs / 1e6;
    let backlog = dir_size(&wal);
    println!(
        "1. durable ingest (sink down): {spans} spans in {ingest_secs:.1} s = {:.0} spans/s, {ingest_mbps:.0} MB/s ({:.2} x disk baseline); {} refused; backlog {} MiB",
        ingest_sps,
        ingest_mbps / disk,
        refused,
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

// ---- record codecs, or a destination's lanes, compared in one run ----

struct CodecFigures {
    ingest_sps: f64,
    drain_sps: f64,
    /// tracespool's CPU per span while ingesting, and while draining.
    ingest_cpu_ns: f64,
    drain_cpu_ns: f64,
    disk_bytes_per_span: f64,
}

async fn compare(o: Opts, bin: PathBuf) {
    let base_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base_dir).unwrap();
    let probe = tempfile::tempdir_in(&base_dir).unwrap();
    let disk = baseline(probe.path());
    let bodies: Vec<Bytes> = (0..16).map(|v| Bytes::from(request(o.batch, v))).collect();
    println!(
        "{}: {} clients, {} spans/request ({} bytes), {} of ingest each, fsync = always; disk baseline {disk:.0} MB/s",
        if o.lanes { "lanes" } else { "record codecs" },
        o.concurrency,
        o.batch,
        bodies[0].len(),
        humantime::format_duration(o.max_duration)
    );
    let key = "3c1f0a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3";
    let encryption = "[storage.encryption]\nactive_key = 1\n[[storage.encryption.keys]]\nid = 1\nenv = \"LOADGEN_KEY\"\n";
    let codec_runs = [
        ("none", String::new(), ""),
        (
            "zstd",
            "compression = \"zstd\"".to_string(),
            "compression = \"zstd\"",
        ),
        (
            "zstd + AES-256-GCM",
            format!("compression = \"zstd\"\n{encryption}"),
            "compression = \"zstd\"",
        ),
    ];
    let lane_runs = [
        ("one lane", String::new(), ""),
        ("live_first", String::new(), "live_first = true"),
        (
            "newest_first",
            String::new(),
            "live_first = true\nbacklog_order = \"newest_first\"",
        ),
    ];
    let runs = if o.lanes { lane_runs } else { codec_runs };
    let mut results: Vec<(&str, CodecFigures)> = Vec::new();
    for (name, storage, dest) in &runs {
        let f = codec_run(
            &o,
            &bin,
            &base_dir,
            &bodies,
            storage,
            dest,
            &[("LOADGEN_KEY", key)],
        )
        .await;
        println!(
            "{name:>20}: ingest {:.0} spans/s ({:.0} ns CPU/span), drain {:.0} spans/s ({:.0} ns CPU/span), {:.1} bytes/span on disk",
            f.ingest_sps, f.ingest_cpu_ns, f.drain_sps, f.drain_cpu_ns, f.disk_bytes_per_span
        );
        results.push((name, f));
    }
    let base = &results[0].1;
    for (name, f) in &results[1..] {
        println!(
            "{name:>20} / {}: ingest {:.2}x, drain {:.2}x, CPU/span ingest {:.2}x drain {:.2}x, disk per span {:.3}x ({:.1}x more spans per byte)",
            results[0].0,
            f.ingest_sps / base.ingest_sps,
            f.drain_sps / base.drain_sps,
            f.ingest_cpu_ns / base.ingest_cpu_ns,
            f.drain_cpu_ns / base.drain_cpu_ns,
            f.disk_bytes_per_span / base.disk_bytes_per_span,
            base.disk_bytes_per_span / f.disk_bytes_per_span
        );
    }
}

async fn codec_run(
    o: &Opts,
    bin: &Path,
    base_dir: &Path,
    bodies: &[Bytes],
    storage: &str,
    dest: &str,
    env: &[(&str, &str)],
) -> CodecFigures {
    let dir = tempfile::tempdir_in(base_dir).unwrap();
    let (sink_stats, sink_addr, server) = start_sink().await;
    let (mut child, grpc, http) =
        start_tracespool_with(bin, dir.path(), sink_addr, storage, dest, env);
    let pid = child.id();
    let started = Instant::now();
    let cpu0 = cpu_time(pid);
    let clients = ClosedLoop::start(o, grpc, http, bodies).await;
    tokio::time::sleep(o.max_duration).await;
    let (requests, _) = clients.stop().await;
    let secs = started.elapsed().as_secs_f64();
    let spans = requests * o.batch as u64;
    let ingest_cpu = cpu_time(pid).saturating_sub(cpu0).as_secs_f64();
    let disk_bytes = dir_size(&dir.path().join("data/wal"));

    sink_stats.up.store(true, Ordering::Relaxed);
    let drain_started = Instant::now();
    let cpu1 = cpu_time(pid);
    let sink_spans = |s: &SinkStats| s.requests.load(Ordering::Relaxed) * o.batch as u64;
    while sink_spans(&sink_stats) < spans && drain_started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let drain_cpu = cpu_time(pid).saturating_sub(cpu1).as_secs_f64();
    let drained = sink_spans(&sink_stats);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    server.abort();
    CodecFigures {
        ingest_sps: spans as f64 / secs,
        drain_sps: drained as f64 / drain_secs,
        ingest_cpu_ns: ingest_cpu * 1e9 / spans.max(1) as f64,
        drain_cpu_ns: drain_cpu * 1e9 / drained.max(1) as f64,
        disk_bytes_per_span: disk_bytes as f64 / spans.max(1) as f64,
    }
}
