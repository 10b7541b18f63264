//! Receiving: both OTLP receivers hand a checked request to [`Ingest`], which
//! deduplicates it by idempotency key, appends it to the log, and answers only once
//! the record is durable. Receivers never talk to exporters; they meet in the log.

pub mod grpc;
pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tracespool_storage::{AppendError, NewRecord, Wal, MAX_KEY_LEN};

use crate::dedup::{Begin, Dedup};
use crate::otlp::CODEC_OTLP_TRACES_PROTOBUF;
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
}

/// A request answered with success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Durable in the log as this seq.
    Stored { seq: u64 },
    /// Its idempotency key was accepted before (as this seq); not stored again.
    Duplicate { seq: u64 },
}

pub struct Ingest {
    wal: Wal,
    dedup: Arc<Dedup>,
    retry_after: Duration,
    /// "Spool full" is logged at most once a second.
    full_warning: Throttle,
}

impl Ingest {
    pub fn new(wal: Wal, dedup: Arc<Dedup>, retry_after: Duration) -> Self {
        Self {
            wal,
            dedup,
            retry_after,
            full_warning: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Checks an idempotency key as received in a header or metadata entry.
    pub fn check_key(raw: &[u8]) -> Result<Option<Bytes>, Rejection> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > MAX_KEY_LEN {
            return Err(Rejection::Invalid(format!(
                "idempotency-key is {} bytes, at most {MAX_KEY_LEN} are allowed",
                raw.len()
            )));
        }
        Ok(Some(Bytes::copy_from_slice(raw)))
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
        let record = NewRecord {
            payload: batch.protobuf,
            span_count: batch.spans,
            codec: CODEC_OTLP_TRACES_PROTOBUF,
            idempotency_key: batch.key.clone().unwrap_or_default(),
            received_at,
        };
        let wal = self.wal.clone();
        let dedup = self.dedup.clone();
        let key = batch.key;
        // The append and its bookkeeping run to completion even if the client goes
        // away meanwhile: a stored record always has its key indexed.
        let task = tokio::spawn(async move {
            let result = wal.append(record).await;
            if let Ok(a) = &result {
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
                tracing::trace!(seq = a.seq, spans = batch.spans, source = batch.source.as_str(), peer = ?batch.peer, "stored");
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
