//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (receivers listening, log writable, spool not full).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What readiness depends on.
#[derive(Debug)]
pub struct Readiness {
    pub receivers_up: AtomicBool,
    started: Instant,
    /// Milliseconds since `started` of the last "spool full" refusal, plus one.
    last_full: AtomicU64,
    pub wal: std::sync::Mutex<Option<tracespool_storage::Wal>>,
}

/// How long after the last "spool full" refusal the process reports not ready.
const FULL_GRACE: Duration = Duration::from_secs(5);

impl Default for Readiness {
    fn default() -> Self {
        Self {
            receivers_up: AtomicBool::new(false),
            started: Instant::now(),
            last_full: AtomicU64::new(0),
            wal: Default::default(),
        }
    }
}

impl Readiness {
    pub fn spool_full(&self) {
        self.last_full.store(
            self.started.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
    }

    /// Why the process is not ready, if it is not.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.receivers_up.load(Ordering::Relaxed) {
            out.push("receivers are not listening".to_string());
        }
        if let Some(wal) = self.wal.lock().unwrap().as_ref() {
            if let Some(cause) = wal.stats().failed {
                out.push(format!("the log accepts no writes: {cause}"));
            }
        } else {
            out.push("the log is not open".to_string());
        }
        let last = self.last_full.load(Ordering::Relaxed);
        if last > 0
            && self.started.elapsed().as_millis() as u64 + 1 - last < FULL_GRACE.as_millis() as u64
        {
            out.push("the spool is full (disk budget)".to_string());
        }
        out
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
}

pub fn router(metrics: Arc<Metrics>, ready: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, ready })
}

async fn metrics_handler(State(st): State<AdminState>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || st.metrics.render())
        .await
        .unwrap_or_default();
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn readyz(State(st): State<AdminState>) -> impl IntoResponse {
    let problems = st.ready.problems();
    if problems.is_empty() {
        (http::StatusCode::OK, "ready\n".to_string())
    } else {
        (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> Result<(), String> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(|e| format!("admin listener on {addr:?}: {e}"))
}
