//! Load from real clients (the OpenTelemetry Python SDK's exporters, with an
//! idempotency key per batch), and the end-of-scenario checks: every acknowledged
//! span at every sink, the audit balanced, the forwarder healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::backend::Backend;
use crate::support::python::{self, PyClient, PyResult};
use crate::support::spool::Spool;

/// Clients sending until told to stop.
pub struct Load {
    stop: PathBuf,
    clients: Vec<(String, PyClient)>,
}

impl Load {
    /// `grpc` + `http` clients against `spool`, each sending batches of `spans`
    /// spans with a pause of `pause` seconds, until [`Load::finish`].
    pub fn start(
        dir: &Path,
        spool: &Spool,
        grpc: usize,
        http: usize,
        spans: usize,
        pause: f64,
    ) -> Self {
        let stop = dir.join("stop-clients");
        let _ = std::fs::remove_file(&stop);
        let mut clients = Vec::new();
        let spans = spans.to_string();
        let pause = pause.to_string();
        let stop_s = stop.display().to_string();
        for (proto, n, endpoint) in [
            ("grpc", grpc, spool.grpc_endpoint()),
            ("http", http, spool.http_endpoint()),
        ] {
            for i in 0..n {
                let name = format!("{proto}{i}");
                let prefix = format!("{name}-{}", std::process::id());
                let args = [
                    "--protocol",
                    proto,
                    "--endpoint",
                    &endpoint,
                    "--prefix",
                    &prefix,
                    "--batches",
                    "0",
                    "--stop-file",
                    &stop_s,
                    "--spans",
                    &spans,
                    "--keys",
                    "--pause",
                    &pause,
                    "--attempt-timeout",
                    "3",
                    "--deadline",
                    "3600",
                ];
                clients.push((name.clone(), python::spawn(dir, &name, &args)));
            }
        }
        Self { stop, clients }
    }

    /// Stops the clients (each finishes the batch in hand) and collects what they
    /// had acknowledged.
    pub fn finish(self) -> Vec<PyResult> {
        std::fs::write(&self.stop, b"stop").unwrap();
        self.clients
            .into_iter()
            .map(|(name, c)| {
                let r = c.wait();
                assert!(
                    r.success,
                    "client {name} failed: {:?}\n{}",
                    r.summary, r.stderr
                );
                r
            })
            .collect()
    }
}

pub fn acked_span_ids(results: &[PyResult]) -> BTreeSet<String> {
    results.iter().flat_map(|r| r.span_ids()).collect()
}

/// One scenario's figures, for `chaos/README.md`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub cycles: u32,
    pub acked_spans: usize,
    pub lost: usize,
    pub redelivered: usize,
    pub audit: String,
    pub seconds: f64,
}

/// Waits until every acknowledged span reached every sink, then checks the audit
/// ledger and the log. Panics on a lost span, an unbalanced audit or a panic.
pub async fn check(
    scenario: &str,
    spool: &Spool,
    sinks: &[&Backend],
    acked: &BTreeSet<String>,
    cycles: u32,
    started: Instant,
) -> Outcome {
    let mut lost = 0;
    let mut redelivered = 0;
    for sink in sinks {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut got: BTreeMap<String, usize>;
        loop {
            got = sink.span_id_counts();
            if acked.iter().all(|s| got.contains_key(s)) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let missing: Vec<&String> = acked.iter().filter(|s| !got.contains_key(*s)).collect();
        lost += missing.len();
        redelivered += got.values().map(|&n| n - 1).sum::<usize>();
        assert!(
            missing.is_empty(),
            "{scenario}: {} acknowledged spans never reached {} (first: {:?})",
            missing.len(),
            sink.endpoint(),
            &missing[..missing.len().min(5)]
        );
    }
    let audit = settled_audit(spool).await;
    let balanced = audit["balanced"] == true;
    assert!(
        balanced,
        "{scenario}: audit summary does not balance:\n{audit:#}"
    );
    let log = spool.log_text();
    assert!(
        !log.contains("panicked"),
        "{scenario}: the forwarder panicked:\n{}",
        tail(&log)
    );
    let outcome = Outcome {
        scenario: scenario.to_string(),
        cycles,
        acked_spans: acked.len(),
        lost,
        redelivered,
        audit: "exact".into(),
        seconds: started.elapsed().as_secs_f64(),
    };
    record(&outcome);
    println!("{}", serde_json::to_string(&outcome).unwrap());
    outcome
}

/// `audit summary --json` once nothing is pending any more (or after 60 s).
pub async fn settled_audit(spool: &Spool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, s) = spool.tool_json(&["audit", "summary"]).await;
        let settled = s["destinations"]
            .as_array()
            .is_some_and(|ds| ds.iter().all(|d| d["pending"]["records"] == 0));
        if (code == 0 && settled) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Appends an outcome to `$CHAOS_RESULTS` (default `target/chaos-results.jsonl`).
fn record(o: &Outcome) {
    let path = std::env::var("CHAOS_RESULTS")
        .unwrap_or_else(|_| format!("{}/target/chaos-results.jsonl", env!("CARGO_MANIFEST_DIR")));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        let _ = writeln!(f, "{}", serde_json::to_string(o).unwrap());
    }
}
