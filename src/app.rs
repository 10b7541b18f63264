//! The composition root: [`start`] opens the log, starts the receivers, one replay
//! worker per destination and the admin listener, and returns a [`Running`] with
//! the addresses it listens on (port 0 gets a free one, so tests start forwarders
//! in-process); [`Running::wait`] shuts down cleanly once its [`Control`] says stop.
//! Signals belong to `main.rs`: SIGTERM/SIGINT cancel `Control::stop`, SIGHUP
//! notifies `Control::reload`.
//!
//! Start, in order: the audit ledger (so no loss found while opening the log can go
//! unrecorded) → the log (recovery) → the ledger's recovery from the log → the
//! instance id and the dedup index → cursors → listeners (bound before anything is
//! announced) → workers.
//!
//! Tasks run in stages (`Stage`: a token and the tasks that stop on it): the
//! receivers, the replay workers, maintenance (dedup index, ledger, state file), the
//! admin listener. Every task runs until its stage is told to stop, so any that ends
//! on its own stops the forwarder with an error.
//!
//! Shutdown, in order (readable here, in one place):
//! 1. a signal (or [`Running::shutdown`]) cancels `Control::stop`;
//! 2. the receivers stop accepting connections and finish the requests in flight
//!    (each either durable and answered with success, or refused) — bounded by
//!    `service.shutdown_timeout`;
//! 3. the replay workers stop; exports in flight are abandoned and redone after the
//!    next start (their idempotency keys are the same);
//! 4. the dedup index and the ledger are checkpointed, the state file written,
//!    cursors flushed, the log synced and closed; the process exits 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracespool_storage::{Cursor, CursorStart, Wal, WalEvent};

use crate::accounting::Accounts;
use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::deadletter::DeadLetters;
use crate::dedup::{self, Dedup};
use crate::export::client::Client;
use crate::export::{DestinationStatus, Worker};
use crate::ledger::{self, ms, now_ms, Ledger};
use crate::metrics::Metrics;
use crate::receiver::tls::TlsServer;
use crate::receiver::{grpc, http, server, Ingest};
use crate::state::{DestinationState, State, WalState};

/// Why a forwarder failed to start or stopped on its own, and the exit code that
/// says so ([`RunError::exit_code`]): 2 when a restart alone does not fix it (the
/// message names what to fix), 1 when it may.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The start was refused: another process holds the directory, a newer format
    /// wrote the log, a file that must be fixed by hand. Exit 2.
    #[error("{0}")]
    Refused(String),
    /// Part of the configuration cannot be used as it is (a processor, a TLS file,
    /// a destination). Exit 2.
    #[error("{what}: {detail}")]
    Config { what: String, detail: String },
    /// A listener cannot bind (the address is taken, or not ours). Exit 1: it may
    /// be free at the next start.
    #[error("{what} cannot listen on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The data directory failed while opening (an I/O error). Exit 1.
    #[error("{0}")]
    Storage(String),
    /// A stage (receiver, replay worker, admin listener) ended on its own. Exit 1.
    #[error("{stage}: {detail}")]
    StageFailed { stage: &'static str, detail: String },
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) | Self::Config { .. } => 2,
            Self::Bind { .. } | Self::Storage(_) | Self::StageFailed { .. } => 1,
        }
    }

    fn config(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Config {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// How the owner of a forwarder (`main`, with its signals, or a test) stops it and
/// asks it to reload: made before [`start`], so a stop asked for while the log is
/// still being recovered is not lost.
#[derive(Clone, Default)]
pub struct Control {
    /// Cancelled: shut down (see [`Running::wait`]).
    pub stop: CancellationToken,
    /// Notified: reload what can be reloaded without a restart (the receivers' TLS
    /// certificate).
    pub reload: Arc<tokio::sync::Notify>,
}

/// The addresses a started forwarder listens on (a port 0 in the configuration is
/// the port the system chose); `None` for a listener that is off.
#[derive(Clone, Copy, Debug, Default)]
pub struct Addrs {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// A started forwarder: its listeners bound, its workers running. [`Running::wait`]
/// returns once it has stopped (after `Control::stop`, or a receiver failing).
pub struct Running {
    pub addrs: Addrs,
    pub instance_id: String,
    control: Control,
    grace: Duration,
    dir: std::path::PathBuf,
    /// The stages, stopped in this order by [`Running::wait`].
    receivers: Stage,
    tls_task: Option<JoinHandle<()>>,
    workers: Stage,
    maintenance: Stage,
    admin: Stage,
    events_task: JoinHandle<()>,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
    ingest: Arc<Ingest>,
    accounts: Arc<Accounts>,
    ledger: Arc<Ledger>,
    wal: Wal,
    cursors: Vec<Cursor>,
    statuses: Vec<Statuses>,
    dedup: Arc<Dedup>,
}

/// Tasks that start together and are told to stop together, by their own token:
/// stages stop one after another, in the order of the module documentation. Each
/// task runs until it is told to stop, so one that ends on its own has failed
/// ([`Stage::ended`]).
struct Stage {
    name: &'static str,
    stop: CancellationToken,
    tasks: JoinSet<Result<(), String>>,
}

impl Stage {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// The token the stage's tasks stop on.
    fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    fn spawn(&mut self, task: impl Future<Output = Result<(), String>> + Send + 'static) {
        self.tasks.spawn(task);
    }

    fn spawn_unit(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move {
            task.await;
            Ok(())
        });
    }

    /// Why the first of its tasks to end did (never, for a stage without tasks).
    async fn ended(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Ok(Ok(()))) => "stopped unexpectedly".into(),
            Some(Ok(Err(e))) => e,
            Some(Err(e)) => e.to_string(),
            None => std::future::pending().await,
        }
    }

    /// Tells the stage to stop and waits for its tasks; those still running after
    /// `grace` are aborted. False if any had to be.
    async fn stop(&mut self, grace: Option<Duration>) -> bool {
        self.stop.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        match grace {
            None => {
                all.await;
                true
            }
            Some(grace) => {
                if tokio::time::timeout(grace, all).await.is_ok() {
                    return true;
                }
                self.tasks.shutdown().await;
                false
            }
        }
    }
}

type Statuses = (
    crate::config::DestinationConfig,
    Cursor,
    Arc<DestinationStatus>,
);

/// Starts a forwarder, in the order the module documentation gives, and returns
/// once it is serving.
pub async fn start(cfg: Config, control: Control) -> Result<Running, RunError> {
    crate::metrics::mark_start();
    let stop = control.stop.clone();
    let hup = control.reload.clone();
    let names: Vec<String> = cfg.destinations.iter().map(|d| d.name.clone()).collect();
    let metrics = Metrics::new(&names);

    // The ledger first: losses found while the log opens go into it.
    let dir = cfg.storage.dir.clone();
    // Durably: a power cut must not take back the directory that holds the spool.
    crate::fsio::ensure_dir(&dir).map_err(|e| {
        RunError::Refused(format!(
            "creating the data directory {}: {e}",
            dir.display()
        ))
    })?;
    let ledger_dir = dir.join("ledger");
    let ledger = Arc::new(
        Ledger::open_with_reserve(
            &ledger_dir,
            cfg.audit.file_bytes.0,
            cfg.audit_max_bytes(),
            0,
            cfg.audit.reserve_bytes.0,
        )
        .map_err(|e| {
            RunError::Refused(format!(
                "opening the audit ledger {}: {e}",
                ledger_dir.display()
            ))
        })?,
    );
    let last_entry_ms = ledger.last_entry_ms();
    for r in ledger.take_repairs() {
        let _ = ledger.write(&r);
    }
    let accounts = Arc::new(Accounts::new(ledger.clone(), metrics.clone()));
    let hook = accounts.hook();

    let wal_cfg = cfg.wal_config();
    let (wal, report) =
        tokio::task::spawn_blocking(move || Wal::open_with_hook(wal_cfg, Some(hook)))
            .await
            .map_err(|e| RunError::Storage(e.to_string()))?
            .map_err(|e| {
                let msg = format!("opening the spool: {e}");
                if e.is_refusal() {
                    RunError::Refused(msg)
                } else {
                    RunError::Storage(msg)
                }
            })?;
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(
            segment = torn.segment,
            offset = torn.offset,
            bytes = torn.bytes,
            next_seq = torn.first_seq,
            "recovered from an interrupted write"
        );
    }
    for r in &report.repaired {
        tracing::error!(repair = %r, "the data directory needed repair at start");
    }
    if !report.clean_stop {
        let (fsync, window_ms) = match cfg.wal_config().fsync {
            tracespool_storage::FsyncPolicy::Always => ("always", None),
            tracespool_storage::FsyncPolicy::Interval(d) => {
                ("interval", Some(d.as_millis() as u64))
            }
            tracespool_storage::FsyncPolicy::Never => ("never", Some(1000)),
        };
        if window_ms.is_some() {
            tracing::warn!(fsync, window_ms, "the last stop was not clean: batches acknowledged shortly before it may be lost (fsync is not always)");
        }
        accounts.unclean_stop(fsync, last_entry_ms, window_ms);
    }
    // On a full disk the ledger's reserve is released, and appends must leave its
    // room to the ledger until it is back.
    {
        // A weak handle: the log's hook holds the ledger, so a `Wal` in the ledger
        // would keep the log open for ever (found by the in-process test).
        let (headroom, bytes) = (wal.headroom_handle(), ledger.reserve().bytes());
        ledger.reserve().ensure();
        ledger
            .reserve()
            .on_pressure(Box::new(move |p| headroom.set(if p { bytes } else { 0 })));
    }
    let events = wal.take_events().expect("events taken once");
    let instance_id = crate::instance::load_or_create(&dir, &wal.id())
        .map_err(|e| RunError::Refused(format!("instance id in {}: {e}", dir.display())))?;
    // Accepted entries lost to a crash, recovered from the log.
    {
        let (ledger, wal) = (ledger.clone(), wal.clone());
        let recovered = tokio::task::spawn_blocking(move || {
            let n = ledger.recover(&wal);
            ledger.reset_tracker(wal.stats().last_seq);
            n
        })
        .await
        .map_err(|e| RunError::Storage(e.to_string()))?
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not recover accepted entries from the log");
            0
        });
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "audit ledger: accepted entries lost to a crash recovered from the log"
            );
        }
    }
    accounts.started(&instance_id, report.next_seq);
    let dedup = {
        let wal = wal.clone();
        let (window, max_keys) = (cfg.dedup.window.0, cfg.dedup.max_keys);
        tokio::task::spawn_blocking(move || Dedup::open(&wal, window, max_keys))
            .await
            .map_err(|e| RunError::Storage(e.to_string()))?
            .map_err(|e| RunError::Storage(format!("opening the dedup index: {e}")))?
    };

    // Cursors of destinations no longer configured would hold the spool forever.
    // Each change is in the ledger (durably) before it is made.
    let existing = wal.cursor_positions();
    for (name, position) in &existing {
        if !names.contains(name) {
            tracing::warn!(destination = %name, position, "destination no longer configured; removing its cursor");
            accounts
                .destination_removed(name, wal.stats().last_seq)
                .map_err(|e| {
                    RunError::Storage(format!("recording the removal of destination {name}: {e}"))
                })?;
            wal.remove_cursor(name)
                .map_err(|e| RunError::Storage(format!("removing cursor {name}: {e}")))?;
        }
    }
    let mut cursors = Vec::new();
    for d in &cfg.destinations {
        if !existing.iter().any(|(n, _)| n == &d.name) {
            accounts
                .destination_added(&d.name, wal.oldest_retained())
                .map_err(|e| RunError::Storage(format!("recording destination {}: {e}", d.name)))?;
        }
        let cursor = wal
            .cursor(&d.name, CursorStart::Oldest)
            .map_err(|e| RunError::Storage(format!("cursor of destination {}: {e}", d.name)))?;
        if report.damaged_cursors.contains(&d.name) {
            restore_cursor(&cursor, &ledger_dir, wal.stats().last_seq);
        }
        cursors.push(cursor);
    }

    // Bind before anything is announced, so a busy port fails the start.
    let otlp = &cfg.receivers.otlp;
    let grpc_listener = bind(otlp.grpc, "OTLP/gRPC receiver").await?;
    let http_listener = bind(otlp.http, "OTLP/HTTP receiver").await?;
    let admin_listener = bind(cfg.admin.listen, "admin listener").await?;

    let ready = Arc::new(Readiness::default());
    *ready.wal.lock().unwrap() = Some(wal.clone());
    let dest_status: Vec<Arc<DestinationStatus>> = cfg
        .destinations
        .iter()
        .map(|_| Arc::new(DestinationStatus::default()))
        .collect();
    let rates = Arc::new(crate::rates::Rates::new(
        cfg.destinations.iter().map(|d| d.name.clone()).collect(),
    ));
    {
        let dedup = dedup.clone();
        *metrics.live.lock().unwrap() = Some(crate::metrics::LiveState {
            wal: wal.clone(),
            cursors: cursors.clone(),
            statuses: dest_status.clone(),
            rates: rates.clone(),
            dedup_keys: Arc::new(move || dedup.keys()),
        });
    }
    let pipeline = crate::process::Pipeline::new(&cfg.processors, &metrics)
        .map_err(|e| RunError::config("processors", e))?;
    match &pipeline {
        Some(p) => {
            tracing::info!(stages = ?p.describe(), "processors: every request is decoded, processed and re-encoded before it is stored")
        }
        None => tracing::debug!("no processors: requests are stored as received"),
    }
    let ingest = Arc::new(
        Ingest::new(
            wal.clone(),
            dedup.clone(),
            accounts.clone(),
            ready.clone(),
            otlp,
        )
        .with_pipeline(pipeline)
        .with_compression(cfg.storage.record_compression()),
    );
    let mut receivers = Stage::new("receiver");
    let max_req = otlp.max_request_bytes.0 as usize;
    let max_dec = otlp.max_decompressed_bytes.0 as usize;
    let limits = server::Limits {
        max_connections: otlp.max_connections,
        max_concurrent_streams: otlp.max_concurrent_streams,
        header_read_timeout: otlp.header_read_timeout.0,
        body_read_timeout: otlp.body_read_timeout.0,
    };
    let tls = match &otlp.tls {
        Some(t) => Some(TlsServer::load(t).map_err(|e| RunError::config("receivers.otlp.tls", e))?),
        None => None,
    };
    let scheme = if tls.is_some() { "TLS" } else { "plaintext" };
    let exposed = [&grpc_listener, &http_listener]
        .into_iter()
        .flatten()
        .filter_map(|l| l.local_addr().ok())
        .any(|a| !a.ip().is_loopback());
    if exposed && tls.is_none() {
        tracing::warn!("receivers listen beyond localhost without TLS ([receivers.otlp.tls]): spans cross the network in clear text");
    }
    if exposed && otlp.auth.tokens.is_empty() {
        tracing::warn!("receivers listen beyond localhost without authentication ([[receivers.otlp.auth.tokens]]): anyone who reaches the port can send spans");
    }
    if !otlp.auth.tokens.is_empty() {
        tracing::info!(
            tenants = otlp.auth.tokens.len(),
            "receivers require a bearer token"
        );
    }
    let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let addrs = Addrs {
        grpc: addr(&grpc_listener),
        http: addr(&http_listener),
        admin: addr(&admin_listener),
    };
    if let Some(l) = grpc_listener {
        tracing::info!(address = %local(&l), transport = scheme, "OTLP/gRPC receiver listening");
        let svc = grpc::trace_service(ingest.clone(), max_req, max_dec);
        let rx = server::Receiver {
            name: "grpc",
            router: grpc::router(svc),
            tls: tls.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
        };
        receivers.spawn(server::serve(l, rx, receivers.token()));
    }
    if let Some(l) = http_listener {
        tracing::info!(address = %local(&l), transport = scheme, "OTLP/HTTP receiver listening");
        let rx = server::Receiver {
            name: "http",
            router: http::router(ingest.clone(), max_req),
            tls: tls.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
        };
        receivers.spawn(server::serve(l, rx, receivers.token()));
    }
    if let Some(js) = &cfg.receivers.jetstream {
        receivers.spawn(crate::receiver::jetstream::run(
            js.clone(),
            instance_id.clone(),
            ingest.clone(),
            metrics.clone(),
            receivers.token(),
        ));
    }
    let tls_task = tls.clone().map(|t| {
        tokio::spawn(crate::receiver::tls::watch(
            t,
            hup.clone(),
            metrics.clone(),
            stop.clone(),
        ))
    });
    ready.receivers_up.store(true, Ordering::Relaxed);
    let mut admin = Stage::new("admin listener");
    if let Some(l) = admin_listener {
        tracing::info!(address = %local(&l), "admin listener: /metrics /healthz /readyz");
        admin.spawn(admin::serve(
            l,
            admin::router(metrics.clone(), ready.clone()),
            admin.token(),
        ));
    }

    let dead_letters = DeadLetters::new(&dir).with_keys(cfg.storage.encryption.ring.clone());
    let mut workers = Stage::new("replay worker");
    let mut statuses = Vec::new();
    for ((d, cursor), status) in cfg.destinations.iter().zip(&cursors).zip(dest_status) {
        if d.is_https() && d.tls.insecure_skip_verify {
            tracing::error!(
                destination = %d.name,
                endpoint = %d.target(),
                "TLS certificate verification is OFF for this destination (tls.insecure_skip_verify = true): anyone on the path can read and change what is exported"
            );
        }
        let client = Client::new(d, &instance_id)
            .map_err(|e| RunError::config(format!("destination {}", d.name), e))?;
        statuses.push((d.clone(), cursor.clone(), status.clone()));
        let worker = Worker {
            name: d.name.clone(),
            cfg: d.clone(),
            client,
            cursor: cursor.clone(),
            instance_id: instance_id.clone(),
            dead_letters: dead_letters.clone(),
            status,
            accounts: accounts.clone(),
        };
        workers.spawn_unit(worker.run(workers.token()));
    }
    if cfg.destinations.is_empty() {
        tracing::warn!(
            "no destination configured (no [[destinations]] in the config, OTEL_EXPORTER_OTLP_ENDPOINT unset): spooling only, NOTHING IS BEING FORWARDED"
        );
    }
    let mut maintenance = Stage::new("maintenance");
    maintenance.spawn_unit(dedup::maintain(dedup.clone(), maintenance.token()));
    maintenance.spawn_unit(ledger::maintain(ledger.clone(), maintenance.token()));
    maintenance.spawn_unit(crate::rates::run(
        rates.clone(),
        wal.clone(),
        metrics.clone(),
        statuses
            .iter()
            .map(|(_, c, s)| (c.clone(), s.clone()))
            .collect(),
        maintenance.token(),
    ));
    maintenance.spawn_unit(write_state(
        dir.clone(),
        instance_id.clone(),
        wal.clone(),
        statuses.clone(),
        rates.clone(),
        maintenance.token(),
    ));
    let events_task = tokio::spawn(log_events(events));
    tracing::info!(
        instance_id = %instance_id,
        data_dir = %dir.display(),
        spool_bytes = wal.stats().bytes,
        max_bytes = cfg.storage.max_bytes.0,
        next_seq = report.next_seq,
        destinations = cfg.destinations.len(),
        "tracespool running"
    );
    Ok(Running {
        addrs,
        instance_id,
        control,
        grace: cfg.service.shutdown_timeout.0,
        dir,
        receivers,
        tls_task,
        workers,
        maintenance,
        admin,
        events_task,
        ready,
        metrics,
        ingest,
        accounts,
        ledger,
        wal,
        cursors,
        statuses,
        dedup,
    })
}

impl Running {
    /// Stops the forwarder (as a first SIGTERM does) and waits until it has.
    pub async fn shutdown(self) -> Result<(), RunError> {
        self.control.stop.cancel();
        self.wait().await
    }

    /// Waits for `Control::stop` (or a receiver failing), then shuts down in the
    /// order of the module documentation. An error says why it stopped on its own.
    pub async fn wait(self) -> Result<(), RunError> {
        let Running {
            addrs: _,
            instance_id,
            control,
            grace,
            dir,
            mut receivers,
            tls_task,
            mut workers,
            mut maintenance,
            mut admin,
            events_task,
            ready,
            metrics,
            ingest,
            accounts,
            ledger,
            wal,
            cursors,
            statuses,
            dedup,
        } = self;
        let stop = control.stop;
        // 1–2. Wait for a signal, or any stage ending on its own (each task runs
        // until told to stop, so one that ends has failed), then drain the receivers.
        let ended = tokio::select! {
            _ = stop.cancelled() => None,
            e = receivers.ended() => Some((receivers.name, e)),
            e = workers.ended() => Some((workers.name, e)),
            e = maintenance.ended() => Some((maintenance.name, e)),
            e = admin.ended() => Some((admin.name, e)),
        };
        let mut failure = None;
        if let Some((stage, detail)) = ended {
            if !stop.is_cancelled() {
                tracing::error!(stage, error = %detail, "a stage failed; shutting down");
                failure = Some(RunError::StageFailed { stage, detail });
                stop.cancel();
            }
        }
        tracing::info!("shutting down: no new requests; finishing those in flight");
        ready.receivers_up.store(false, Ordering::Relaxed);
        if !receivers.stop(Some(grace)).await {
            tracing::warn!(timeout = ?grace, "requests still in flight after the shutdown timeout; their connections were closed");
        }
        if let Some(t) = tls_task {
            let _ = t.await;
        }
        // 3. Replay workers.
        workers.stop(None).await;
        // 4. Index, ledger, state, cursors, log.
        maintenance.stop(None).await;
        admin.stop(None).await;
        drop(ingest);
        if let Err(e) = ledger.sync() {
            tracing::error!(error = %e, "syncing the audit ledger at shutdown");
        }
        if let Err(e) = wal.flush() {
            tracing::error!(error = %e, "flushing cursor positions at shutdown");
        }
        let _ = crate::state::write(
            &dir,
            &state_now(
                &instance_id,
                &wal,
                &statuses,
                false,
                &crate::rates::Rates::default(),
            ),
        );
        ledger.flush_tally();
        accounts.stopped();
        ledger.checkpoint();
        *metrics.live.lock().unwrap() = None;
        *ready.wal.lock().unwrap() = None;
        drop(cursors);
        drop(statuses);
        drop(dedup);
        wal.close().await;
        events_task.abort();
        tracing::info!("stopped");
        match failure {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }
}

/// A cursor whose file was lost restarts at the oldest record on disk; what the
/// ledger says was delivered (or otherwise settled) is acknowledged again, so it is
/// not all delivered twice.
fn restore_cursor(cursor: &Cursor, ledger_dir: &std::path::Path, last_seq: u64) {
    let entries = match ledger::read_all(ledger_dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(destination = %cursor.name(), error = %e, "cannot read the ledger to rebuild a lost cursor; everything retained is delivered again");
            return;
        }
    };
    let from = cursor.position();
    for (a, b) in ledger::summary::settled_ranges(&entries, cursor.name()) {
        let (a, b) = (a.max(from + 1), b.min(last_seq));
        if a <= b {
            let _ = cursor.ack_range(a, b);
        }
    }
    if let Err(e) = cursor.persist() {
        tracing::warn!(destination = %cursor.name(), error = %e, "cannot persist the rebuilt cursor yet");
    }
    tracing::warn!(
        destination = %cursor.name(),
        from,
        position = cursor.position(),
        acked_above = cursor.acked_above().len(),
        "cursor file was damaged: rebuilt from the audit ledger's deliveries"
    );
}

async fn bind(
    addr: crate::config::Listen,
    what: &'static str,
) -> Result<Option<TcpListener>, RunError> {
    let Some(addr) = addr.addr() else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| RunError::Bind { what, addr, source })
}

fn local(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

fn state_now(
    instance_id: &str,
    wal: &Wal,
    statuses: &[(
        crate::config::DestinationConfig,
        Cursor,
        Arc<DestinationStatus>,
    )],
    running: bool,
    rates: &crate::rates::Rates,
) -> State {
    let stats = wal.stats();
    let estimates = rates.estimates();
    let eta = |i: usize| {
        estimates
            .as_ref()
            .and_then(|e| e.catchup_seconds.get(i))
            .map(|(_, s)| crate::state::Eta::from_seconds(*s))
    };
    State {
        updated_ms: now_ms(),
        pid: std::process::id(),
        instance_id: instance_id.to_string(),
        running,
        wal: WalState {
            bytes: stats.bytes,
            max_bytes: stats.max_bytes,
            segments: stats.segments,
            first_seq: stats.first_seq,
            last_seq: stats.last_seq,
            failed: stats.failed.clone(),
            budget_full_eta: estimates
                .as_ref()
                .map(|e| crate::state::Eta::from_seconds(e.budget_full_seconds)),
        },
        destinations: statuses
            .iter()
            .enumerate()
            .map(|(i, (cfg, cursor, status))| {
                let b = wal.backlog_of(cursor);
                let last_error = status.last_error.lock().unwrap().clone();
                let success = status.last_success_ms.load(Ordering::Relaxed);
                DestinationState {
                    name: cfg.name.clone(),
                    endpoint: cfg.target(),
                    position: cursor.position(),
                    backlog_records: b.records,
                    backlog_spans: b.spans,
                    backlog_bytes: b.bytes,
                    oldest_undelivered_ms: b.oldest_received_at.map(ms),
                    last_success_ms: (success > 0).then_some(success),
                    last_error_ms: last_error.as_ref().map(|e| e.0),
                    last_error: last_error.map(|e| e.1),
                    catchup_eta: eta(i),
                    lanes: cfg.live_first.then(|| status.lanes.waiting(cursor)),
                }
            })
            .collect(),
    }
}

/// Writes `state.json` every two seconds until `stop`.
async fn write_state(
    dir: std::path::PathBuf,
    instance_id: String,
    wal: Wal,
    statuses: Vec<(
        crate::config::DestinationConfig,
        Cursor,
        Arc<DestinationStatus>,
    )>,
    rates: Arc<crate::rates::Rates>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let state = state_now(&instance_id, &wal, &statuses, true, &rates);
        let dir = dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::state::write(&dir, &state) {
                tracing::warn!(error = %e, "cannot write state.json");
            }
        })
        .await;
    }
}

/// Logs every loss the log reports, after the hook recorded it.
async fn log_events(mut events: tokio::sync::mpsc::UnboundedReceiver<WalEvent>) {
    while let Some(event) = events.recv().await {
        Accounts::log(&event);
    }
}
