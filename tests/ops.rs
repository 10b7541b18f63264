//! ops/: the dashboard and the alerts name only metrics a running tracespool
//! exports; the alert rules pass promtool (syntax and unit tests); the configs in
//! the Kubernetes manifests and config/ pass `check-config`; the systemd unit passes
//! `systemd-analyze verify`; every runbook the alerts link exists.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::backend::{Backend, Kind};
use support::spool::Spool;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Metric names (tracespool_* and process_*) in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("tracespool_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

/// What a Prometheus text exposition offers: every sample name, and for each
/// histogram its `_bucket`, `_sum` and `_count` series.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            out.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_dashboard_and_the_alerts_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let spool = Spool::started_to(dir.path(), &backend);
    let exposition = spool.metrics().await;
    let have = exported(&exposition);
    // What the issue asks for, at least.
    for name in [
        "tracespool_receiver_requests_total",
        "tracespool_spans_received_total",
        "tracespool_spans_persisted_total",
        "tracespool_spans_delivered_total",
        "tracespool_spans_dropped_total",
        "tracespool_export_requests_total",
        "tracespool_export_duration_seconds_bucket",
        "tracespool_export_retries_total",
        "tracespool_egress_bytes_total",
        "tracespool_append_duration_seconds_bucket",
        "tracespool_wal_bytes",
        "tracespool_wal_budget_bytes",
        "tracespool_wal_segments",
        "tracespool_backlog_spans",
        "tracespool_backlog_oldest_age_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(have.contains(name), "{name} is not exported:\n{exposition}");
    }
    let dashboard = read("ops/grafana/tracespool.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let alerts = read("ops/prometheus/alerts.yml");
    let named_dash = metric_names(&dashboard);
    let named_alerts = metric_names(&alerts);
    assert!(named_dash.len() >= 20, "{named_dash:?}");
    assert!(named_alerts.len() >= 10, "{named_alerts:?}");
    let missing: Vec<&String> = named_dash
        .iter()
        .chain(&named_alerts)
        .filter(|n| !have.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "named in ops/ but not exported: {missing:?}"
    );
}

#[test]
fn every_alert_links_a_runbook_that_exists() {
    let alerts = read("ops/prometheus/alerts.yml");
    let n_alerts = alerts.matches("- alert:").count();
    let links: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert_eq!(links.len(), n_alerts, "every alert has a runbook_url");
    for link in links {
        let file = link
            .trim_matches('"')
            .split("/blob/main/")
            .nth(1)
            .unwrap_or_else(|| panic!("{link} does not point into the repository"));
        assert!(repo(file).is_file(), "{link}: no {file}");
    }
    // One runbook per failure mode the issue names, each with the three parts.
    for name in [
        "oom-restart-loop",
        "slow-export",
        "auth-failure",
        "drops",
        "partial-traces",
        "egress-spike",
        "sensitive-data",
        "protocol-mismatch",
        "disk-full",
        "corrupt-segment",
        "stream-full",
        "encryption-keys",
        "catch-up",
    ] {
        let text = read(&format!("ops/runbooks/{name}.md"));
        for part in ["**Symptoms.**", "## Confirm", "## Fix"] {
            assert!(text.contains(part), "{name}.md lacks {part}");
        }
    }
}

/// promtool from the Debian package `prometheus`; `.ci/run` installs it and sets
/// TRACESPOOL_REQUIRE_PROMTOOL so CI cannot skip this.
#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        assert!(
            std::env::var_os("TRACESPOOL_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here but not installed"
        );
        eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
        return;
    };
    assert!(out.status.success());
    for args in [
        ["check", "rules", "ops/prometheus/alerts.yml"],
        ["test", "rules", "ops/prometheus/alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `tracespool.toml: |` blocks of a Kubernetes manifest.
fn embedded_configs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = yaml.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "tracespool.toml: |" {
            let indent = l.len() - l.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|b| b.trim().is_empty() || b.len() - b.trim_start().len() > indent)
                .map(|b| b.get(indent + 2..).unwrap_or(""))
                .collect();
            out.push(block.join("\n"));
        }
    }
    out
}

#[test]
fn shipped_configs_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs: Vec<(String, String)> = Vec::new();
    for manifest in [
        "ops/kubernetes/daemonset.yaml",
        "ops/kubernetes/sidecar.yaml",
    ] {
        let found = embedded_configs(&read(manifest));
        assert_eq!(found.len(), 1, "{manifest}");
        configs.extend(found.into_iter().map(|c| (manifest.to_string(), c)));
    }
    for example in [
        "config/tracespool.toml",
        "config/edge.toml",
        "config/gateway.toml",
        "config/edge-jetstream.toml",
        "config/gateway-jetstream.toml",
    ] {
        configs.push((example.to_string(), read(example)));
    }
    for (i, (name, text)) in configs.iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tracespool"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4317",
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_systemd_unit_is_sandboxed_and_verifies() {
    let unit = read("ops/systemd/tracespool.service");
    for directive in [
        "User=tracespool",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/tracespool",
        "NoNewPrivileges=true",
        "Restart=always",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == directive),
            "the unit lacks {directive}"
        );
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    // Verify a copy that runs this build's binary (the unit's path is an install
    // location).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tracespool.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/tracespool",
            env!("CARGO_BIN_EXE_tracespool"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Complaints about the host (no systemd running, other units) are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("tracespool")).collect();
    assert!(
        out.status.success() || ours.is_empty(),
        "systemd-analyze verify:\n{err}"
    );
    assert!(ours.is_empty(), "systemd-analyze verify:\n{err}");
}
