//! `tracespool run`: open the log, start the receivers and one replay worker per
//! destination, and shut down cleanly on SIGTERM/SIGINT.
//!
//! Shutdown, in order (readable here, in one place):
//! 1. a signal cancels `stop`;
//! 2. the receivers stop accepting connections and finish the requests in flight
//!    (each either durable and answered with success, or refused) — bounded by
//!    `service.shutdown_timeout`;
//! 3. the replay workers stop; exports in flight are abandoned and redone after the
//!    next start (their idempotency keys are the same);
//! 4. the dedup index is checkpointed, cursors are flushed, the log is synced and
//!    closed; the process exits 0.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracespool_storage::{CursorStart, Wal, WalEvent};

use crate::config::Config;
use crate::deadletter::DeadLetters;
use crate::dedup::{self, Dedup};
use crate::export::client::Client;
use crate::export::{DestinationStats, Worker};
use crate::receiver::{grpc, http, Ingest};

/// Why `run` failed to start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

pub async fn run(cfg: Config) -> Result<(), RunError> {
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());

    let wal_cfg = cfg.wal_config();
    let (wal, report) = tokio::task::spawn_blocking(move || Wal::open(wal_cfg))
        .await
        .map_err(|e| RunError(e.to_string()))?
        .map_err(|e| RunError(format!("opening the spool: {e}")))?;
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(
            segment = torn.segment,
            offset = torn.offset,
            bytes = torn.bytes,
            next_seq = torn.first_seq,
            "recovered from an interrupted write"
        );
    }
    for lost in &report.lost {
        log_damage(lost);
    }
    let events = wal.take_events().expect("events taken once");
    let instance_id = crate::instance::load_or_create(&cfg.storage.dir)
        .map_err(|e| RunError(format!("instance id in {}: {e}", cfg.storage.dir.display())))?;
    let dedup = {
        let wal = wal.clone();
        let (window, max_keys) = (cfg.dedup.window.0, cfg.dedup.max_keys);
        tokio::task::spawn_blocking(move || Dedup::open(&wal, window, max_keys))
            .await
            .map_err(|e| RunError(e.to_string()))?
            .map_err(|e| RunError(format!("opening the dedup index: {e}")))?
    };

    // Cursors of destinations no longer configured would hold the spool forever.
    let configured: Vec<&str> = cfg.destinations.iter().map(|d| d.name.as_str()).collect();
    for (name, position) in wal.cursor_positions() {
        if !configured.contains(&name.as_str()) {
            tracing::warn!(destination = %name, position, "destination no longer configured; removing its cursor");
            wal.remove_cursor(&name)
                .map_err(|e| RunError(format!("removing cursor {name}: {e}")))?;
        }
    }

    // Bind before anything is announced, so a busy port fails the start.
    let otlp = &cfg.receivers.otlp;
    let bind = |addr: &str, what: &str| {
        let addr = addr.to_string();
        let what = what.to_string();
        async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|e| RunError(format!("{what} cannot listen on {addr}: {e}")))
        }
    };
    let grpc_listener = if otlp.grpc.is_empty() {
        None
    } else {
        Some(bind(&otlp.grpc, "OTLP/gRPC receiver").await?)
    };
    let http_listener = if otlp.http.is_empty() {
        None
    } else {
        Some(bind(&otlp.http, "OTLP/HTTP receiver").await?)
    };

    let ingest = Arc::new(Ingest::new(wal.clone(), dedup.clone(), otlp.retry_after.0));
    let mut receivers = tokio::task::JoinSet::new();
    let max_req = otlp.max_request_bytes.0 as usize;
    let max_dec = otlp.max_decompressed_bytes.0 as usize;
    if let Some(l) = grpc_listener {
        tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "OTLP/gRPC receiver listening");
        let svc = grpc::trace_service(ingest.clone(), max_req, max_dec);
        receivers.spawn(grpc::serve(l, svc, stop.clone()));
    }
    if let Some(l) = http_listener {
        tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "OTLP/HTTP receiver listening");
        let app = http::router(ingest.clone(), max_req, max_dec);
        receivers.spawn(http::serve(l, app, stop.clone()));
    }

    let dead_letters = DeadLetters::new(&cfg.storage.dir);
    let workers_stop = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    let mut stats = BTreeMap::new();
    for d in &cfg.destinations {
        let cursor = wal
            .cursor(&d.name, CursorStart::Oldest)
            .map_err(|e| RunError(format!("cursor of destination {}: {e}", d.name)))?;
        let client =
            Client::new(d).map_err(|e| RunError(format!("destination {}: {e}", d.name)))?;
        let s = Arc::new(DestinationStats::default());
        stats.insert(d.name.clone(), s.clone());
        let worker = Worker {
            name: d.name.clone(),
            cfg: d.clone(),
            client,
            cursor,
            instance_id: instance_id.clone(),
            dead_letters: dead_letters.clone(),
            stats: s,
        };
        workers.spawn(worker.run(workers_stop.clone()));
    }
    if cfg.destinations.is_empty() {
        tracing::warn!(
            "no destination configured (no [[destinations]] in the config, OTEL_EXPORTER_OTLP_ENDPOINT unset): spooling only, NOTHING IS BEING FORWARDED"
        );
    }
    let maintenance_stop = CancellationToken::new();
    let dedup_task = tokio::spawn(dedup::maintain(dedup.clone(), maintenance_stop.clone()));
    let events_task = tokio::spawn(log_events(events));
    tracing::info!(
        instance_id = %instance_id,
        data_dir = %cfg.storage.dir.display(),
        spool_bytes = wal.stats().bytes,
        max_bytes = cfg.storage.max_bytes.0,
        next_seq = report.next_seq,
        destinations = cfg.destinations.len(),
        "tracespool running"
    );

    // 1–2. Wait for a signal (or a receiver dying), then drain the receivers.
    let mut failure = None;
    tokio::select! {
        _ = stop.cancelled() => {}
        Some(done) = receivers.join_next(), if !stop.is_cancelled() => {
            let msg = match done {
                Ok(Ok(())) => "a receiver stopped unexpectedly".to_string(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            // A receiver that ends on its own (not because of `stop`) has failed.
            if !stop.is_cancelled() {
                tracing::error!(error = %msg, "receiver failed; shutting down");
                failure = Some(msg);
                stop.cancel();
            }
        }
    }
    tracing::info!("shutting down: no new requests; finishing those in flight");
    let grace = cfg.service.shutdown_timeout.0;
    if tokio::time::timeout(grace, async {
        while receivers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(timeout = ?grace, "requests still in flight after the shutdown timeout; closing their connections");
        receivers.shutdown().await;
    }
    // 3. Replay workers.
    workers_stop.cancel();
    while workers.join_next().await.is_some() {}
    // 4. Index, cursors, log.
    maintenance_stop.cancel();
    let _ = dedup_task.await;
    drop(ingest);
    if let Err(e) = wal.flush() {
        tracing::error!(error = %e, "flushing cursor positions at shutdown");
    }
    for (name, s) in &stats {
        tracing::info!(
            destination = %name,
            exported_records = s.exported_records.load(std::sync::atomic::Ordering::Relaxed),
            exported_spans = s.exported_spans.load(std::sync::atomic::Ordering::Relaxed),
            dead_letters = s.dead_letters.load(std::sync::atomic::Ordering::Relaxed),
            "destination totals for this run"
        );
    }
    drop(dedup);
    wal.close().await;
    events_task.abort();
    tracing::info!("stopped");
    match failure {
        None => Ok(()),
        Some(f) => Err(RunError(f)),
    }
}

/// Logs every loss the log reports (evictions under `drop_oldest`, damage found while
/// reading), with seq ranges and span counts.
async fn log_events(mut events: tokio::sync::mpsc::UnboundedReceiver<WalEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            WalEvent::Evicted(e) => {
                if e.undelivered_records == 0 {
                    tracing::info!(
                        first_seq = e.first_seq,
                        last_seq = e.last_seq,
                        "retained delivered segment deleted to make room"
                    );
                    continue;
                }
                tracing::warn!(
                    reason = "drop_oldest",
                    first_seq = e.first_seq,
                    last_seq = e.last_seq,
                    dropped_records = e.undelivered_records,
                    dropped_spans = e.undelivered_spans,
                    "spool full: spans dropped (when_full = drop_oldest)"
                );
                for c in &e.per_cursor {
                    tracing::warn!(
                        reason = "drop_oldest",
                        destination = %c.cursor,
                        first_seq = e.first_seq,
                        last_seq = e.last_seq,
                        dropped_records = c.records,
                        dropped_spans = c.spans,
                        "spans dropped before delivery to this destination"
                    );
                }
            }
            WalEvent::Damaged(l) => log_damage(&l),
        }
    }
}

fn log_damage(l: &tracespool_storage::LostRange) {
    tracing::error!(
        reason = "corruption",
        first_seq = l.first_seq,
        last_seq = l.last_seq,
        records = l.records(),
        spans = ?l.spans,
        segment = l.segment,
        offset = l.offset,
        detail = %l.reason,
        "spans lost to a damaged spool segment"
    );
}

/// SIGTERM or SIGINT cancels `stop`; a second one exits at once.
fn spawn_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for n in 0.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if n == 0 {
                tracing::info!(signal = name, "signal received");
                stop.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}
