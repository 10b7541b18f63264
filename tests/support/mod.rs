//! Shared pieces of the integration tests: a test OTLP backend, tracespool as a real
//! child process, the Python SDK client, and raw OTLP requests.
#![allow(dead_code)]

pub mod backend;
pub mod nats;
pub mod node;
pub mod pki;
pub mod python;
pub mod raw;
pub mod spool;

use std::time::{Duration, Instant};

/// Runs `cmd` (no stdin) to its end; `Err` with its exit status and output when it
/// fails. For the tests' own installs and clients.
pub fn run(cmd: &mut std::process::Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `backend` has every span of `acked`, then checks it has nothing
/// else (span ids). Panics with what is missing or extra.
pub async fn assert_delivered(
    backend: &backend::Backend,
    acked: &std::collections::BTreeSet<String>,
    what: &str,
) {
    let all_there = eventually(Duration::from_secs(60), || {
        let got: std::collections::BTreeSet<String> =
            backend.span_id_counts().into_keys().collect();
        acked.is_subset(&got)
    })
    .await;
    let got: std::collections::BTreeSet<String> = backend.span_id_counts().into_keys().collect();
    assert!(
        all_there,
        "{what}: {} acknowledged spans never arrived",
        acked.difference(&got).count()
    );
    assert_eq!(
        &got, acked,
        "{what}: spans arrived that nobody acknowledged"
    );
}
