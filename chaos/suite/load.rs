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
        Self::start_round(dir, spool, grpc, http, spans, pause, 0)
    }

    /// As [`Load::start`], for a later round of clients in the same scenario: their
    /// prefix (and so their idempotency keys) differ from earlier rounds'.
    pub fn start_round(
        dir: &Path,
        spool: &Spool,
        grpc: usize,
        http: usize,
        spans: usize,
        pause: f64,
        round: u32,
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
                let mut prefix = format!("{name}-{}", std::process::id());
                if round > 0 {
                    prefix.push_str(&format!("-r{round}"));
                }
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
                // A client that cannot finish its batch means the forwarder never took
                // it again: fail with what it saw rather than hang.
                let r = c.wait_for(Duration::from_secs(300));
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

/// One scenario's figures, for `chaos/README.md`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub cycles: u32,
    pub acked_spans: usize,
    /// Acknowledged spans that never arrived and nothing explains: must be 0.
    pub lost: usize,
    /// Acknowledged spans that never arrived, each explained: dropped or damaged per
    /// the audit, or acknowledged inside a window the audit says it cannot vouch for.
    pub explained: usize,
    /// Batches a sink received more than once (at-least-once after a crash).
    pub redelivered: usize,
    pub audit: String,
    pub seconds: f64,
}

/// Which acknowledged spans a scenario may legitimately not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MayLose {
    /// None: every acknowledged span must arrive.
    Nothing,
    /// At most the spans the audit counts as dropped or damaged for the sink's
    /// destination.
    AuditDropped,
    /// Only spans acknowledged inside a window the audit lists as unverifiable
    /// (an unclean stop under `fsync = never`/`interval`).
    UnverifiableWindows,
}

pub struct Expect<'a> {
    pub scenario: &'a str,
    pub cycles: u32,
    pub started: Instant,
    pub may_lose: MayLose,
    /// Redelivered batches allowed per sink (e.g. `max_in_flight` per cut).
    pub max_redelivered: Option<usize>,
}

/// Waits until every acknowledged span reached every sink (`(sink, destination
/// name)`), then checks the audit ledger, the keys and the log. Panics on a lost
/// span, a key naming two batches, an unbalanced audit or a panic.
pub async fn check(
    spool: &Spool,
    sinks: &[(&Backend, &str)],
    results: &[PyResult],
    e: Expect<'_>,
) -> Outcome {
    let scenario = e.scenario;
    let mut acked_at: BTreeMap<String, f64> = BTreeMap::new();
    for r in results {
        for a in &r.acked {
            for s in &a.spans {
                acked_at.insert(s["span_id"].as_str().unwrap().to_string(), a.t);
            }
        }
    }
    let acked: BTreeSet<String> = acked_at.keys().cloned().collect();
    if e.may_lose == MayLose::Nothing {
        for (sink, _) in sinks {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let got = sink.span_id_counts();
                if acked.iter().all(|s| got.contains_key(s)) || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // (Where spans may be missing for a reason, wait for the audit instead: once
    // nothing is pending, what has not arrived never will.)
    let audit = settled_audit(spool).await;
    let balanced = audit["balanced"] == true;
    assert!(
        balanced,
        "{scenario}: audit summary does not balance:\n{audit:#}"
    );
    let windows: Vec<(f64, f64)> = audit["unverifiable"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    (
                        w["since_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                        w["until_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (mut lost, mut explained, mut redelivered) = (0, 0, 0);
    for (sink, dest) in sinks {
        let got = sink.span_id_counts();
        let missing: Vec<&String> = acked.iter().filter(|s| !got.contains_key(*s)).collect();
        let (keys, again, conflicts) = sink.key_report();
        assert!(
            conflicts.is_empty(),
            "{scenario}: idempotency keys naming two different batches at {dest}: {conflicts:?}"
        );
        redelivered += again;
        if let Some(max) = e.max_redelivered {
            assert!(
                again <= max,
                "{scenario}: {again} batches of {keys} delivered again to {dest}, more than {max}"
            );
        }
        let unexplained: Vec<&String> = match e.may_lose {
            MayLose::Nothing => missing.clone(),
            MayLose::AuditDropped => {
                let d = audit["destinations"]
                    .as_array()
                    .and_then(|ds| ds.iter().find(|d| d["destination"] == *dest))
                    .cloned()
                    .unwrap_or_default();
                let dropped: u64 = d["dropped"]
                    .as_object()
                    .map(|m| m.values().map(|c| c["spans"].as_u64().unwrap_or(0)).sum())
                    .unwrap_or(0)
                    + d["dead_lettered"]["spans"].as_u64().unwrap_or(0);
                if missing.len() as u64 <= dropped {
                    vec![]
                } else {
                    missing.clone()
                }
            }
            MayLose::UnverifiableWindows => missing
                .iter()
                .copied()
                .filter(|s| {
                    let t = acked_at[*s];
                    !windows.iter().any(|&(a, b)| t >= a - 2.0 && t <= b + 2.0)
                })
                .collect(),
        };
        explained += missing.len() - unexplained.len();
        lost += unexplained.len();
        assert!(
            unexplained.is_empty(),
            "{scenario}: {} acknowledged spans never reached {dest} and nothing explains it (first: {:?}); audit:\n{audit:#}",
            unexplained.len(),
            &unexplained[..unexplained.len().min(5)]
        );
    }
    let log = spool.log_text();
    assert!(
        !log.contains("panicked"),
        "{scenario}: the forwarder panicked:\n{}",
        tail(&log)
    );
    let outcome = Outcome {
        scenario: scenario.to_string(),
        cycles: e.cycles,
        acked_spans: acked.len(),
        lost,
        explained,
        redelivered,
        audit: if windows.is_empty() {
            "exact".into()
        } else {
            format!("explicit ({} unverifiable windows)", windows.len())
        },
        seconds: e.started.elapsed().as_secs_f64(),
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
