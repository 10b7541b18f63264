//! Receiving: both OTLP receivers hand a checked request to [`Ingest`], which
//! deduplicates it by idempotency key, appends it to the log, and answers only once
//! the record is durable. Receivers never talk to exporters; they meet in the log.

pub mod auth;
pub mod grpc;
pub mod http;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracespool_storage::{AppendError, NewRecord, Wal, MAX_KEY_LEN};

use crate::admin::Readiness;
use crate::dedup::{Begin, Dedup};
use crate::ledger::{ms, now_ms, Entry, Ledger};
use crate::metrics::{Metrics, ProtocolLabel};
use crate::otlp::CODEC_OTLP_TRACES_PROTOBUF;
use crate::process::Pipeline;
pub use crate::status::Rejection;
use crate::throttle::Throttle;

/// Where a request came from, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
            Self::HttpJson => "http/json",
        }
    }
}

/// A checked request, ready to store.
pub struct Batch {
    /// The `ExportTraceServiceRequest` in protobuf, as the client sent it (or as
    /// converted from JSON).
    pub protobuf: Bytes,
    pub spans: u32,
    pub key: Option<Bytes>,
    pub source: Source,
    pub peer: Option<SocketAddr>,
    /// When the request started arriving (for the ack-latency histogram).
    pub started: Instant,
    /// Who sent it, when receivers authenticate.
    pub tenant: Option<String>,
}

/// A request answered with success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Durable in the log as this seq.
    Stored { seq: u64 },
    /// Its idempotency key was accepted before (as this seq); not stored again.
    Duplicate { seq: u64 },
    /// The processors left no span in it (all sampled out or filtered): nothing to
    /// store, and the ledger says why.
    Discarded,
}

pub struct Ingest {
    wal: Wal,
    dedup: Arc<Dedup>,
    retry_after: Duration,
    /// "Spool full" is logged at most once a second.
    full_warning: Throttle,
    metrics: Arc<Metrics>,
    ledger: Arc<Ledger>,
    ready: Arc<Readiness>,
    auth: Option<auth::Auth>,
    pipeline: Option<Arc<Pipeline>>,
}

/// What a receiver knows of a request, for metrics and the ledger.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub source: Source,
    pub peer: Option<SocketAddr>,
    /// Spans, when the request was valid enough to count them.
    pub spans: u32,
    pub bytes: u64,
    pub key: Option<&'a Bytes>,
    pub tenant: Option<&'a str>,
}

impl Ingest {
    pub fn new(
        wal: Wal,
        dedup: Arc<Dedup>,
        retry_after: Duration,
        metrics: Arc<Metrics>,
        ledger: Arc<Ledger>,
        ready: Arc<Readiness>,
        auth: Option<auth::Auth>,
    ) -> Self {
        Self {
            wal,
            dedup,
            retry_after,
            full_warning: Throttle::new(Duration::from_secs(1)),
            metrics,
            ledger,
            ready,
            auth,
            pipeline: None,
        }
    }

    /// Runs every request through `pipeline` before it is stored.
    pub fn with_pipeline(mut self, pipeline: Option<Pipeline>) -> Self {
        self.pipeline = pipeline.map(Arc::new);
        self
    }

    /// Counts a request's outcome and writes refusals and duplicates to the ledger
    /// (stored batches are written where they are stored).
    pub fn outcome(&self, req: RequestInfo<'_>, result: &Result<Accepted, Rejection>) {
        let protocol = req.source.as_str();
        let kind = match result {
            Ok(Accepted::Stored { .. } | Accepted::Discarded) => "accepted",
            Ok(Accepted::Duplicate { .. }) => "duplicate",
            Err(r) => r.kind(),
        };
        self.metrics.received(protocol, kind);
        if req.spans > 0 {
            self.metrics
                .spans_received
                .get_or_create(&ProtocolLabel { protocol })
                .inc_by(req.spans as u64);
        }
        let client = req.peer.map(|p| p.to_string());
        match result {
            Ok(Accepted::Stored { .. } | Accepted::Discarded) => {}
            Ok(Accepted::Duplicate { seq }) => self.ledger.write_or_tally(&Entry::Deduplicated {
                t: now_ms(),
                seq: *seq,
                key: req
                    .key
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                spans: req.spans,
                client,
                protocol: protocol.into(),
                tenant: req.tenant.map(str::to_string),
            }),
            Err(r) => {
                if matches!(r, Rejection::Full { .. }) {
                    self.ready.spool_full();
                }
                self.ledger.write_or_tally(&Entry::Rejected {
                    t: now_ms(),
                    reason: r.kind().into(),
                    spans: req.spans,
                    bytes: req.bytes,
                    client,
                    protocol: protocol.into(),
                    detail: r.message(),
                    tenant: req.tenant.map(str::to_string),
                });
            }
        }
    }

    /// With receiver tokens configured: the tenant of the request's bearer token,
    /// or `Unauthenticated`. Without: `None`.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Option<String>, Rejection> {
        match &self.auth {
            None => Ok(None),
            Some(a) => a
                .tenant(authorization)
                .map(|t| Some(t.to_string()))
                .ok_or(Rejection::Unauthenticated),
        }
    }

    /// Checks an idempotency key as received in a header or metadata entry. With a
    /// tenant, the key is scoped to it (`<tenant>:<key>`): tenants cannot
    /// deduplicate each other's batches away.
    pub fn check_key(raw: &[u8], tenant: Option<&str>) -> Result<Option<Bytes>, Rejection> {
        if raw.is_empty() {
            return Ok(None);
        }
        let scoped = match tenant {
            Some(t) => [t.as_bytes(), b":", raw].concat(),
            None => raw.to_vec(),
        };
        if scoped.len() > MAX_KEY_LEN {
            return Err(Rejection::Invalid(format!(
                "idempotency-key is {} bytes, at most {} are allowed",
                raw.len(),
                MAX_KEY_LEN - (scoped.len() - raw.len())
            )));
        }
        Ok(Some(Bytes::from(scoped)))
    }

    /// Stores a batch; resolves once it is durable (or known as a duplicate).
    pub async fn store(&self, batch: Batch) -> Result<Accepted, Rejection> {
        let guard = match &batch.key {
            None => None,
            Some(key) => match self.dedup.begin(key) {
                Begin::Duplicate(seq) => {
                    tracing::debug!(
                        seq,
                        source = batch.source.as_str(),
                        "duplicate idempotency key; not stored again"
                    );
                    return Ok(Accepted::Duplicate { seq });
                }
                Begin::InFlight => return Err(Rejection::InFlight),
                Begin::New(g) => Some(g),
            },
        };
        let received_at = SystemTime::now();
        let (payload, spans, removed) = match &self.pipeline {
            None => (batch.protobuf, batch.spans, None),
            Some(p) => {
                let p = p.clone();
                let body = batch.protobuf;
                // Decoding and encoding a large request is CPU work: off the
                // runtime's threads.
                let out = tokio::task::spawn_blocking(move || p.run(&body))
                    .await
                    .map_err(|e| {
                        Rejection::Unavailable(format!("processing the request failed: {e}"))
                    })??;
                if out.spans == 0 && out.removed.total() > 0 {
                    let _ = self.ledger.write(&Entry::Discarded {
                        t: ms(received_at),
                        spans: batch.spans,
                        removed: out.removed,
                        client: batch.peer.map(|p| p.to_string()),
                        protocol: batch.source.as_str().into(),
                        tenant: batch.tenant,
                    });
                    drop(guard);
                    return Ok(Accepted::Discarded);
                }
                let removed = Some(out.removed).filter(|r| r.total() > 0);
                (out.protobuf, out.spans, removed)
            }
        };
        let record = NewRecord {
            payload,
            span_count: spans,
            codec: CODEC_OTLP_TRACES_PROTOBUF,
            idempotency_key: batch.key.clone().unwrap_or_default(),
            received_at,
        };
        let wal = self.wal.clone();
        let dedup = self.dedup.clone();
        let ledger = self.ledger.clone();
        let metrics = self.metrics.clone();
        let key = batch.key;
        let bytes = record.payload.len() as u64;
        let (protocol, client) = (batch.source.as_str(), batch.peer.map(|p| p.to_string()));
        let started = batch.started;
        let tenant = batch.tenant;
        // The append and its bookkeeping run to completion even if the client goes
        // away meanwhile: a stored record always has its ledger entry and its key
        // indexed, before the client hears of it.
        let task = tokio::spawn(async move {
            let result = wal.append(record).await;
            if let Ok(a) = &result {
                metrics
                    .append_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics.spans_persisted.inc_by(spans as u64);
                // Not written (a failing disk): the checkpoint does not pass this
                // seq, and the next start recovers the entry from the log.
                let _ = ledger.write(&Entry::Accepted {
                    t: ms(received_at),
                    seq: a.seq,
                    key: key
                        .as_ref()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    spans,
                    bytes,
                    client,
                    protocol: protocol.into(),
                    recovered: false,
                    tenant,
                    removed,
                });
                if let Some(key) = &key {
                    dedup.record(key, a.seq, received_at);
                }
                dedup.done(a.seq);
            }
            drop(guard);
            result
        });
        match task.await {
            Ok(Ok(a)) => {
                tracing::trace!(seq = a.seq, spans, source = batch.source.as_str(), peer = ?batch.peer, "stored");
                Ok(Accepted::Stored { seq: a.seq })
            }
            Ok(Err(e)) => Err(self.rejection(e)),
            Err(e) => Err(Rejection::Unavailable(format!(
                "storing the request failed: {e}"
            ))),
        }
    }

    fn rejection(&self, e: AppendError) -> Rejection {
        match e {
            AppendError::Full(reason) => {
                if self.full_warning.allow() {
                    tracing::warn!(reason = %reason, "refusing requests: the spool is full (backpressure)");
                }
                Rejection::Full {
                    retry_after: self.retry_after,
                    detail: format!("tracespool spool is full ({reason}); retry later"),
                }
            }
            AppendError::TooLarge { .. } => Rejection::TooLarge(e.to_string()),
            AppendError::Failed { .. } | AppendError::Closed => {
                Rejection::Unavailable(e.to_string())
            }
        }
    }
}
