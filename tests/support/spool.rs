//! tracespool as a real child process, with its JSON log in a file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A destination in a generated config.
pub struct Dest {
    pub name: String,
    pub endpoint: String,
    pub protocol: String,
    pub timeout: String,
    pub extra: String,
}

impl Dest {
    pub fn new(name: &str, endpoint: &str, protocol: &str) -> Self {
        Self {
            name: name.into(),
            endpoint: endpoint.into(),
            protocol: protocol.into(),
            timeout: "2s".into(),
            extra: "retry.initial_backoff = \"50ms\"\nretry.max_backoff = \"500ms\"\n".into(),
        }
    }

    pub fn timeout(mut self, t: &str) -> Self {
        self.timeout = t.into();
        self
    }

    pub fn with(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }
}

pub struct Spool {
    pub root: PathBuf,
    pub data: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub env: Vec<(String, String)>,
}

/// A config with the given listen addresses (port 0 at first: see
/// [`Spool::wait_running`]), storage settings and destinations.
pub fn config(
    data: &Path,
    grpc: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    storage: &str,
    dests: &[Dest],
) -> String {
    let mut s = format!(
        "[storage]\ndir = {:?}\n{storage}\n\n[receivers.otlp]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\nretry_after = \"1s\"\n\n[admin]\nlisten = \"{admin}\"\n\n[service]\nshutdown_timeout = \"3s\"\n",
        data.display().to_string()
    );
    for d in dests {
        s.push_str(&format!(
            "\n[[destinations]]\nname = {:?}\nendpoint = {:?}\nprotocol = {:?}\ntimeout = {:?}\n{}",
            d.name, d.endpoint, d.protocol, d.timeout, d.extra
        ));
    }
    s
}

impl Spool {
    /// A spool in `root` (data in `root/data`); not started. Its addresses are known
    /// once it has started.
    pub fn new(root: &Path, storage: &str, dests: &[Dest]) -> Self {
        Self::with_data(root, &root.join("data"), storage, dests)
    }

    /// A started spool in `root` with one destination, `b`: `backend` over gRPC.
    pub fn started_to(root: &Path, backend: &super::backend::Backend) -> Self {
        let mut spool = Self::new(root, "", &[Dest::new("b", &backend.endpoint(), "grpc")]);
        spool.start();
        spool
    }

    /// A spool whose config and log are in `root` and whose data directory is
    /// `data` (on a fault filesystem, say); not started.
    pub fn with_data(root: &Path, data: &Path, storage: &str, dests: &[Dest]) -> Self {
        // The forwarder binds port 0 and logs what it got: no port picked here and
        // freed again for someone else to take first.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (grpc, http, admin) = (any, any, any);
        let data = data.to_path_buf();
        let cfg = root.join("tracespool.toml");
        fs::write(&cfg, config(&data, grpc, http, admin, storage, dests)).unwrap();
        Self {
            root: root.to_path_buf(),
            data,
            grpc,
            http,
            admin,
            config: cfg,
            log: root.join("tracespool.log"),
            child: None,
            env: Vec::new(),
        }
    }

    /// Appends TOML to the generated config (before `start`).
    pub fn append_config(&self, text: &str) {
        let mut f = OpenOptions::new().append(true).open(&self.config).unwrap();
        writeln!(f, "\n{text}").unwrap();
    }

    /// Starts the process and waits until it says it is running.
    pub fn start(&mut self) -> &mut Self {
        let offset = self.spawn();
        self.wait_running(offset)
    }

    /// Starts the process without waiting for it to serve; the log offset its
    /// output starts at, for [`Spool::wait_running`].
    pub fn spawn(&mut self) -> u64 {
        assert!(self.child.is_none(), "already running");
        let offset = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .env("RUST_LOG", "info,tracespool=debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn tracespool"));
        offset
    }

    /// Waits until the process spawned at log `offset` serves.
    pub fn wait_running(&mut self, offset: u64) -> &mut Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read(&self.log).unwrap_or_default();
            let new = String::from_utf8_lossy(&text[offset as usize..]);
            if new.contains("tracespool running") {
                self.learn_addresses(&new);
                return self;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tracespool exited during start ({status}):\n{new}");
            }
            if Instant::now() > deadline {
                panic!("tracespool did not start within 30 s:\n{new}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes the addresses the forwarder logged it listens on. After the first start
    /// (port 0) they are written into the config, so restarts listen where the
    /// clients already send.
    fn learn_addresses(&mut self, log: &str) {
        let mut found = [None; 3];
        for line in log.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let i = match v["message"].as_str().unwrap_or("") {
                "OTLP/gRPC receiver listening" => 0,
                "OTLP/HTTP receiver listening" => 1,
                m if m.starts_with("admin listener") => 2,
                _ => continue,
            };
            found[i] = v["address"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok());
        }
        let mut text = fs::read_to_string(&self.config).unwrap();
        for (i, (key, addr)) in [
            ("grpc", &mut self.grpc),
            ("http", &mut self.http),
            ("listen", &mut self.admin),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(got) = found[i] else {
                continue;
            };
            if addr.port() == 0 {
                text = text.replacen(
                    &format!("{key} = \"{addr}\""),
                    &format!("{key} = \"{got}\""),
                    1,
                );
                *addr = got;
            }
            assert_eq!(*addr, got, "tracespool listens elsewhere than before");
        }
        fs::write(&self.config, text).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGKILL without waiting for the process to go: one blocked in a frozen
    /// filesystem dies only once the filesystem answers (see [`Spool::reap`]).
    pub fn signal_kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    /// Waits for a killed process to be gone; its exit status.
    pub fn reap(&mut self) -> Option<ExitStatus> {
        self.child.take().and_then(|mut c| c.wait().ok())
    }

    /// The exit status if the process has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGTERM; returns the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let started = Instant::now();
        unsafe_kill(c.id(), 15);
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("tracespool did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Every JSON log line so far, across restarts.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn instance_id(&self) -> String {
        fs::read_to_string(self.data.join("instance-id"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Appends a line to the log file (marks phases of a test for debugging).
    pub fn note(&self, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let _ = writeln!(f, "{{\"test_note\":{text:?}}}");
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.admin)).await.1
    }

    /// The value of one series of `/metrics` (name with labels as written, e.g.
    /// `tracespool_spans_delivered_total{destination="b"}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Polls one series of `/metrics` until `ok` holds for its value; panics with
    /// the last value after `timeout`.
    pub async fn wait_metric(
        &self,
        series: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(series).await;
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {v} for {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a tool (`status`, `wal verify`, ...) on this spool's config, in a
    /// blocking thread; returns its exit code, stdout and stderr.
    pub async fn tool(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.config.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env = self.env.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(binary())
                .arg("--config")
                .arg(&config)
                .args(&args)
                .envs(env)
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .stdin(Stdio::null())
                .output()
                .expect("run tracespool tool");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }

    /// Runs a tool with `--json`; returns its exit code and parsed output.
    pub async fn tool_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = args.to_vec();
        a.push("--json");
        let (code, out, err) = self.tool(&a).await;
        let v = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("tracespool {args:?} --json printed no JSON ({e}); exit {code}\nstdout: {out}\nstderr: {err}")
        });
        (code, v)
    }

    pub fn grpc_endpoint(&self) -> String {
        assert_ne!(
            self.grpc.port(),
            0,
            "start the spool before asking its address"
        );
        format!("http://{}", self.grpc)
    }

    pub fn http_endpoint(&self) -> String {
        assert_ne!(
            self.http.port(),
            0,
            "start the spool before asking its address"
        );
        format!("http://{}/v1/traces", self.http)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- tracespool log ({}) ---\n{}",
                self.log.display(),
                tail(&self.log_text(), 60)
            );
        }
    }
}

/// The binary under test: this build's, or `TRACESPOOL_BIN` (to run the same
/// scenarios against another build).
pub fn binary() -> String {
    std::env::var("TRACESPOOL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tracespool").into())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Sum of a numeric field over the log lines whose message contains `message`.
pub fn sum_field(
    lines: &[serde_json::Value],
    message: &str,
    field: &str,
    filter: impl Fn(&serde_json::Value) -> bool,
) -> u64 {
    lines
        .iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(message)) && filter(l))
        .map(|l| l[field].as_u64().unwrap_or(0))
        .sum()
}

/// Writes a file (for configs written by hand in a test).
pub fn write(path: &Path, text: &str) {
    File::create(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// GET a URL; returns the status and the body.
pub async fn get(url: &str) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .request(http::Request::get(url).body(Default::default()).unwrap())
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of `series` in a Prometheus text exposition, 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
