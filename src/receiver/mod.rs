//! Receiving: the OTLP/gRPC and OTLP/HTTP receivers only translate their wire
//! format into a [`Request`]; [`Ingest::receive`] does the rest — authenticate,
//! check the key, read and inflate the body, decode, deduplicate, process, append —
//! and answers only once the record is durable. What became of each request is
//! recorded once, by [`crate::accounting`]. Refusals become statuses in
//! [`crate::status`] alone. Receivers never talk to exporters; they meet in the log.

pub mod auth;
pub mod grpc;
pub mod http;
pub mod jetstream;
pub mod server;
pub mod tls;

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracespool_storage::{AppendError, NewRecord, Wal, MAX_KEY_LEN};

use crate::accounting::{Accounts, Intake, RequestOutcome, Stored};
use crate::admin::Readiness;
use crate::config::OtlpReceiverConfig;
use crate::dedup::{Begin, Dedup};
use crate::ledger::Removed;
use crate::otlp::json::json_to_protobuf;
use crate::otlp::wire::inspect_trace_request;
use crate::process::Pipeline;
pub use crate::status::Rejection;
use crate::throttle::Throttle;

/// Where a request came from, and so how its body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Grpc,
    HttpProtobuf,
    HttpJson,
    /// A message from the JetStream source (protobuf, as an edge stored it).
    JetStream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
            Self::HttpJson => "http/json",
            Self::JetStream => "jetstream",
        }
    }
}

/// Keys of records taken from a JetStream stream: `relay:<Nats-Msg-Id>`. Their
/// destinations export them with the message id (the edge's own key), not with a
/// key of ours; clients may not send keys with this prefix.
pub const RELAY_KEY_PREFIX: &[u8] = b"relay:";

/// A request body as the receiver reads it off the connection: bounded by the
/// wire limit, still compressed. Polled only once the request is authenticated and
/// its key is valid, so an unauthenticated client never has its body read.
pub type Body = Pin<Box<dyn Future<Output = Result<Bytes, Rejection>> + Send>>;

/// How a body is compressed on the wire (gRPC bodies arrive inflated by the codec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One OTLP export request, translated from its wire format by a receiver.
pub struct Request {
    pub source: Source,
    pub peer: Option<SocketAddr>,
    /// When the request started arriving (for the ack-latency histogram).
    pub started: Instant,
    /// The `authorization` header or metadata entry.
    pub authorization: Option<Bytes>,
    /// The `idempotency-key` header or metadata entry (JetStream: `Nats-Msg-Id`).
    pub idempotency_key: Option<Bytes>,
    /// The tenant a trusted source names (JetStream: the edge's
    /// `Tracespool-Tenant` header); OTLP requests are given theirs by their token.
    pub tenant: Option<String>,
    pub compression: Compression,
    /// The body's size on the wire when it is known before the body is read (gRPC:
    /// received already; HTTP: `Content-Length`), for the ledger entry of a request
    /// refused before that.
    pub length: Option<u64>,
    pub body: Body,
}

impl Request {
    /// A body that is already read (or a refusal found while translating it).
    pub fn ready(body: Result<Bytes, Rejection>) -> Body {
        Box::pin(std::future::ready(body))
    }
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
    Discarded { removed: Removed },
    /// It held no span (`{"resourceSpans":[]}`, a protobuf without spans):
    /// answered success, not stored, counted as `empty`.
    Empty,
}

/// The one way into the log: [`Ingest::receive`] takes a request through
/// authentication → idempotency key → body → decompression → decoding →
/// dedup → processors → append, and answers once the record is durable.
pub struct Ingest {
    wal: Wal,
    dedup: Arc<Dedup>,
    accounts: Arc<Accounts>,
    ready: Arc<Readiness>,
    auth: Option<auth::Auth>,
    pipeline: Option<Arc<Pipeline>>,
    retry_after: Duration,
    max_decompressed: usize,
    /// How records are compressed before they are stored.
    compression: crate::payload::Compression,
    /// "Spool full" is logged at most once a second.
    full_warning: Throttle,
}

/// Counts one request once, whatever way it ends: settled with its result, or
/// dropped unsettled (the client went away) as abandoned.
struct OutcomeGuard<'a> {
    accounts: &'a Accounts,
    ready: &'a Readiness,
    source: Source,
    peer: Option<SocketAddr>,
    spans: u32,
    bytes: u64,
    key: Option<Bytes>,
    tenant: Option<String>,
    result: Option<Result<Accepted, Rejection>>,
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        let intake = match &self.result {
            None => Intake::Abandoned,
            Some(Ok(Accepted::Stored { seq })) => Intake::Stored { seq: *seq },
            Some(Ok(Accepted::Duplicate { seq })) => Intake::Duplicate { seq: *seq },
            Some(Ok(Accepted::Discarded { removed })) => Intake::Discarded { removed: *removed },
            Some(Ok(Accepted::Empty)) => Intake::Empty,
            Some(Err(r)) => Intake::Refused(r),
        };
        if let Intake::Refused(Rejection::Full { .. }) = intake {
            self.ready.spool_full();
        }
        self.accounts.request(&RequestOutcome {
            protocol: self.source.as_str(),
            peer: self.peer,
            spans: self.spans,
            bytes: self.bytes,
            key: self.key.as_ref(),
            tenant: self.tenant.as_deref(),
            intake,
        });
    }
}

impl Ingest {
    pub fn new(
        wal: Wal,
        dedup: Arc<Dedup>,
        accounts: Arc<Accounts>,
        ready: Arc<Readiness>,
        cfg: &OtlpReceiverConfig,
    ) -> Self {
        Self {
            wal,
            dedup,
            accounts,
            ready,
            auth: auth::Auth::new(&cfg.auth),
            pipeline: None,
            retry_after: cfg.retry_after.0,
            max_decompressed: cfg.max_decompressed_bytes.0 as usize,
            compression: crate::payload::Compression::None,
            full_warning: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Compresses records before they are stored (`storage.compression`).
    pub fn with_compression(mut self, compression: crate::payload::Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Runs every request through `pipeline` before it is stored.
    pub fn with_pipeline(mut self, pipeline: Option<Pipeline>) -> Self {
        self.pipeline = pipeline.map(Arc::new);
        self
    }

    /// Takes one request all the way: resolves once it is durable (or known as a
    /// duplicate, or discarded by the processors), or with why it was refused. It
    /// is counted, and its refusal written to the ledger, exactly once — also when
    /// the client goes away before the answer.
    pub async fn receive(&self, req: Request) -> Result<Accepted, Rejection> {
        let mut guard = OutcomeGuard {
            accounts: &self.accounts,
            ready: &self.ready,
            source: req.source,
            peer: req.peer,
            spans: 0,
            bytes: req.length.unwrap_or(0),
            key: None,
            tenant: None,
            result: None,
        };
        let result = self.admit(req, &mut guard).await;
        guard.result = Some(result.clone());
        result
    }

    async fn admit(
        &self,
        req: Request,
        seen: &mut OutcomeGuard<'_>,
    ) -> Result<Accepted, Rejection> {
        let raw_key = req.idempotency_key.as_deref().unwrap_or_default();
        let key = if req.source == Source::JetStream {
            // The stream is reached with its own credentials: the edge that
            // published the batch authenticated there, and its key is global.
            seen.tenant = req.tenant.clone();
            Self::relay_key(raw_key)?
        } else {
            seen.tenant = self.authenticate(req.authorization.as_deref())?;
            Self::check_key(raw_key, seen.tenant.as_deref())?
        };
        seen.key = key.clone();
        let raw = req.body.await?;
        seen.bytes = raw.len() as u64;
        let limit = self.max_decompressed;
        let inflate = match req.compression {
            Compression::None => None,
            Compression::Gzip => Some(gunzip as fn(&[u8], usize) -> Result<Bytes, Rejection>),
            Compression::Zstd => Some(unzstd as fn(&[u8], usize) -> Result<Bytes, Rejection>),
        };
        // A zstd protobuf body that records its size is stored as it came (when
        // records are stored as zstd and no processor changes them): one
        // compression, at the client.
        let keep_zstd = req.compression == Compression::Zstd
            && req.source != Source::HttpJson
            && self.pipeline.is_none()
            && matches!(self.compression, crate::payload::Compression::Zstd { .. })
            && zstd::bulk::Decompressor::upper_bound(&raw).is_some_and(|n| n <= limit);
        let as_received = keep_zstd.then(|| raw.clone());
        let body = match inflate {
            None => raw,
            Some(f) if raw.len() > 256 * 1024 => {
                tokio::task::spawn_blocking(move || f(&raw, limit))
                    .await
                    .map_err(|e| Rejection::Unavailable(e.to_string()))??
            }
            Some(f) => f(&raw, limit)?,
        };
        let (protobuf, spans) = decode(req.source, body)?;
        seen.spans = spans;
        if spans == 0 {
            // Nothing to keep: a record of no span would only become an empty
            // export downstream.
            return Ok(Accepted::Empty);
        }
        self.store(Batch {
            protobuf,
            as_received,
            spans,
            key,
            source: req.source,
            peer: req.peer,
            started: req.started,
            tenant: seen.tenant.clone(),
        })
        .await
    }

    /// With receiver tokens configured: the tenant of the request's bearer token,
    /// or `Unauthenticated`. Without: `None`.
    fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Option<String>, Rejection> {
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
        if scoped.starts_with(RELAY_KEY_PREFIX) {
            return Err(Rejection::Invalid(
                "idempotency-key: the prefix \"relay:\" is reserved".into(),
            ));
        }
        if scoped.len() > MAX_KEY_LEN {
            return Err(Rejection::Invalid(format!(
                "idempotency-key is {} bytes, at most {} are allowed",
                raw.len(),
                MAX_KEY_LEN - (scoped.len() - raw.len())
            )));
        }
        Ok(Some(Bytes::from(scoped)))
    }

    /// The key a JetStream message is stored and deduplicated under.
    fn relay_key(msg_id: &[u8]) -> Result<Option<Bytes>, Rejection> {
        if msg_id.is_empty() {
            return Ok(None);
        }
        if msg_id.len() + RELAY_KEY_PREFIX.len() > MAX_KEY_LEN {
            return Err(Rejection::Invalid(format!(
                "Nats-Msg-Id is {} bytes, at most {} are allowed",
                msg_id.len(),
                MAX_KEY_LEN - RELAY_KEY_PREFIX.len()
            )));
        }
        Ok(Some(Bytes::from([RELAY_KEY_PREFIX, msg_id].concat())))
    }

    /// Stores a checked batch; resolves once it is durable (or known as a duplicate).
    async fn store(&self, batch: Batch) -> Result<Accepted, Rejection> {
        let guard = match &batch.key {
            None => None,
            Some(key) => match self.dedup.begin(key) {
                Begin::Duplicate(seq) => return Ok(Accepted::Duplicate { seq }),
                Begin::InFlight => return Err(Rejection::InFlight),
                Begin::New(g) => Some(g),
            },
        };
        let received_at = SystemTime::now();
        let compression = self.compression;
        let (payload, codec, plain_bytes, spans, removed) = match &self.pipeline {
            None => {
                let plain_bytes = batch.protobuf.len() as u64;
                let (payload, codec) = match batch.as_received {
                    Some(z) => (z, crate::payload::PROTOBUF_ZSTD),
                    None => compress(batch.protobuf, compression).await?,
                };
                (payload, codec, plain_bytes, batch.spans, None)
            }
            Some(p) => {
                let p = p.clone();
                let body = batch.protobuf;
                // Decoding, encoding and compressing a large request is CPU work:
                // off the runtime's threads.
                let out = tokio::task::spawn_blocking(move || {
                    p.run(&body).map(|out| {
                        let plain_bytes = out.protobuf.len() as u64;
                        let (payload, codec) =
                            crate::payload::store(out.protobuf.clone(), compression);
                        (out, payload, codec, plain_bytes)
                    })
                })
                .await
                .map_err(|e| {
                    Rejection::Unavailable(format!("processing the request failed: {e}"))
                })??;
                let (out, payload, codec, plain_bytes) = out;
                if out.spans == 0 && out.removed.total() > 0 {
                    drop(guard);
                    return Ok(Accepted::Discarded {
                        removed: out.removed,
                    });
                }
                let removed = Some(out.removed).filter(|r| r.total() > 0);
                (payload, codec, plain_bytes, out.spans, removed)
            }
        };
        let record = NewRecord {
            payload,
            span_count: spans,
            codec,
            idempotency_key: batch.key.clone().unwrap_or_default(),
            received_at,
        };
        let wal = self.wal.clone();
        let dedup = self.dedup.clone();
        let accounts = self.accounts.clone();
        let bytes = plain_bytes;
        let stored_bytes = record.payload.len() as u64;
        // The append and its bookkeeping run to completion even if the client goes
        // away meanwhile: a stored record always has its ledger entry and its key
        // indexed, before the client hears of it.
        let task = tokio::spawn(async move {
            let result = wal.append(record).await;
            if let Ok(a) = &result {
                accounts.metrics().record_stored(bytes, stored_bytes);
                let _ = accounts.stored(Stored {
                    seq: a.seq,
                    received_at,
                    started: batch.started,
                    key: batch.key.as_ref(),
                    spans,
                    bytes,
                    peer: batch.peer,
                    protocol: batch.source.as_str(),
                    tenant: batch.tenant.as_deref(),
                    removed,
                });
                if let Some(key) = &batch.key {
                    dedup.record(key, a.seq, received_at);
                }
                dedup.done(a.seq);
            }
            drop(guard);
            result
        });
        match task.await {
            Ok(Ok(a)) => Ok(Accepted::Stored { seq: a.seq }),
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

/// A request checked and decoded, ready to store.
struct Batch {
    /// The `ExportTraceServiceRequest` in protobuf, as the client sent it (or as
    /// converted from JSON).
    protobuf: Bytes,
    /// The same, zstd-compressed as the client sent it, when it can be stored so.
    as_received: Option<Bytes>,
    spans: u32,
    key: Option<Bytes>,
    source: Source,
    peer: Option<SocketAddr>,
    started: Instant,
    tenant: Option<String>,
}

/// The request in protobuf and its span count: protobuf is checked without being
/// decoded (and stored as sent), JSON is converted once.
fn decode(source: Source, body: Bytes) -> Result<(Bytes, u32), Rejection> {
    match source {
        Source::Grpc | Source::HttpProtobuf | Source::JetStream => {
            let summary =
                inspect_trace_request(&body).map_err(|e| Rejection::Invalid(e.to_string()))?;
            Ok((body, summary.spans))
        }
        Source::HttpJson => {
            let (pb, summary) = json_to_protobuf(&body).map_err(Rejection::Invalid)?;
            Ok((Bytes::from(pb), summary.spans))
        }
    }
}

/// Compresses a record for storage: small ones here, large ones off the runtime's
/// threads.
async fn compress(
    protobuf: Bytes,
    compression: crate::payload::Compression,
) -> Result<(Bytes, tracespool_storage::Codec), Rejection> {
    match compression {
        crate::payload::Compression::None => Ok((protobuf, crate::payload::PROTOBUF)),
        _ if protobuf.len() <= 128 * 1024 => Ok(crate::payload::store(protobuf, compression)),
        _ => tokio::task::spawn_blocking(move || crate::payload::store(protobuf, compression))
            .await
            .map_err(|e| Rejection::Unavailable(format!("compressing the request failed: {e}"))),
    }
}

/// Decompresses a zstd body (one or more frames), refusing to produce more than
/// `limit` bytes; memory is bounded the same way as for gzip.
pub fn unzstd(raw: &[u8], limit: usize) -> Result<Bytes, Rejection> {
    let decoder = zstd::stream::read::Decoder::new(raw)
        .map_err(|e| Rejection::Invalid(format!("invalid zstd body: {e}")))?;
    inflate_bounded(decoder, raw.len(), limit, "zstd")
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes. Memory is
/// bounded by the limit: the output grows in steps, never past `limit`, and a bomb
/// is refused as soon as it crosses it.
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, Rejection> {
    inflate_bounded(
        flate2::read::MultiGzDecoder::new(raw),
        raw.len(),
        limit,
        "gzip",
    )
}

fn inflate_bounded(
    mut decoder: impl Read,
    raw_len: usize,
    limit: usize,
    what: &str,
) -> Result<Bytes, Rejection> {
    let mut out: Vec<u8> = Vec::with_capacity((raw_len * 4).min(limit));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = decoder
            .read(&mut chunk)
            .map_err(|e| Rejection::Invalid(format!("invalid {what} body: {e}")))?;
        if n == 0 {
            break;
        }
        if out.len() + n > limit {
            return Err(Rejection::TooLarge(format!(
                "request decompresses to more than receivers.otlp.max_decompressed_bytes ({limit})"
            )));
        }
        if out.capacity() < out.len() + n {
            let want = (out.capacity() * 2).max(out.len() + n).min(limit);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn unzstd_bounds_output_stops_a_bomb_and_reports_damage() {
        let data = vec![7u8; 100_000];
        let z = zstd::bulk::compress(&data, 1).unwrap();
        assert_eq!(&unzstd(&z, 100_000).unwrap()[..], &data[..]);
        assert!(matches!(unzstd(&z, 99_999), Err(Rejection::TooLarge(_))));
        // 256 MiB of zeros in a few KiB, without a recorded size: refused at the
        // limit, having produced no more than it.
        let mut bomb = Vec::new();
        {
            let mut e = zstd::stream::write::Encoder::new(&mut bomb, 3).unwrap();
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..256 {
                e.write_all(&zeros).unwrap();
            }
            e.finish().unwrap();
        }
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert!(matches!(
            unzstd(&bomb, 1 << 20),
            Err(Rejection::TooLarge(_))
        ));
        let e = unzstd(&z[..z.len() / 2], 1 << 20).unwrap_err();
        assert!(
            matches!(&e, Rejection::Invalid(m) if m.starts_with("invalid zstd body")),
            "{e:?}"
        );
    }

    #[test]
    fn gunzip_bounds_output_and_reports_truncation() {
        let data = vec![7u8; 100_000];
        let z = gz(&data);
        assert_eq!(&gunzip(&z, 100_000).unwrap()[..], &data[..]);
        assert!(matches!(gunzip(&z, 99_999), Err(Rejection::TooLarge(_))));
        let e = gunzip(&z[..z.len() / 2], 1 << 20).unwrap_err();
        assert!(
            matches!(&e, Rejection::Invalid(m) if m.starts_with("invalid gzip body")),
            "{e:?}"
        );
    }

    // ---- Ingest::receive, in process: a real log, ledger and metrics ----

    use std::sync::atomic::{AtomicBool, Ordering};

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use tracespool_storage::WalConfig;

    use crate::config::TokenConfig;
    use crate::ledger::{self, Entry, Ledger};
    use crate::metrics::Metrics;

    struct Rig {
        _dir: tempfile::TempDir,
        ledger_dir: std::path::PathBuf,
        ingest: Ingest,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        wal: Wal,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path().join("spool"))).unwrap();
        let dedup = Dedup::open(&wal, Duration::from_secs(600), 1000).unwrap();
        let ledger_dir = dir.path().join("ledger");
        let ledger = Arc::new(Ledger::open(&ledger_dir, 1 << 20, 8 << 20, 0).unwrap());
        let metrics = Metrics::new(&[]);
        let accounts = Arc::new(Accounts::new(ledger.clone(), metrics.clone()));
        let mut cfg = OtlpReceiverConfig::default();
        cfg.auth.tokens = vec![TokenConfig {
            tenant: "shop".into(),
            resolved: "s3cret".into(),
            ..Default::default()
        }];
        let ingest = Ingest::new(
            wal.clone(),
            dedup,
            accounts,
            Arc::new(Readiness::default()),
            &cfg,
        );
        Rig {
            _dir: dir,
            ledger_dir,
            ingest,
            ledger,
            metrics,
            wal,
        }
    }

    impl Rig {
        fn entries(&self) -> Vec<Entry> {
            self.ledger.sync().unwrap();
            ledger::read_all(&self.ledger_dir).unwrap()
        }

        /// The value of a `tracespool_receiver_requests_total` series.
        fn requests(&self, protocol: &str, outcome: &str) -> u64 {
            let want = format!("protocol=\"{protocol}\",outcome=\"{outcome}\"");
            let text = self.metrics.render();
            let line = text
                .lines()
                .find(|l| l.starts_with("tracespool_receiver_requests_total{") && l.contains(&want))
                .unwrap_or_else(|| panic!("no series {want}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        }
    }

    fn spans(n: usize) -> Bytes {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            trace_id: vec![7; 16],
                            span_id: vec![i as u8 + 1; 8],
                            name: format!("span {i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Bytes::from(request.encode_to_vec())
    }

    fn request(auth: Option<&str>, key: Option<&str>, body: Body) -> Request {
        Request {
            source: Source::Grpc,
            peer: None,
            started: Instant::now(),
            authorization: auth.map(|t| Bytes::from(format!("Bearer {t}"))),
            idempotency_key: key.map(|k| Bytes::from(k.to_string())),
            tenant: None,
            compression: Compression::None,
            length: None,
            body,
        }
    }

    /// A body that records whether anyone read it.
    fn watched(bytes: Bytes) -> (Body, Arc<AtomicBool>) {
        let read = Arc::new(AtomicBool::new(false));
        let flag = read.clone();
        let body: Body = Box::pin(async move {
            flag.store(true, Ordering::SeqCst);
            Ok(bytes)
        });
        (body, read)
    }

    #[tokio::test]
    async fn each_request_is_counted_and_written_once_and_refusals_before_the_body_never_read_it() {
        let r = rig();
        // No token: refused before the body is read.
        let (body, read) = watched(spans(3));
        let got = r.ingest.receive(request(None, None, body)).await;
        assert_eq!(got, Err(Rejection::Unauthenticated));
        assert!(
            !read.load(Ordering::SeqCst),
            "an unauthenticated body was read"
        );
        // A key too long: refused before the body too, with the tenant known.
        // Its size, known before the body (gRPC has it, HTTP a Content-Length),
        // goes into the entry.
        let (body, read) = watched(spans(3));
        let long = "k".repeat(MAX_KEY_LEN);
        let mut too_long = request(Some("s3cret"), Some(&long), body);
        too_long.length = Some(1234);
        let got = r.ingest.receive(too_long).await;
        assert!(matches!(got, Err(Rejection::Invalid(_))), "{got:?}");
        assert!(!read.load(Ordering::SeqCst));
        // Stored, then the same key again: a duplicate of the same seq.
        let stored = r
            .ingest
            .receive(request(
                Some("s3cret"),
                Some("k1"),
                Request::ready(Ok(spans(3))),
            ))
            .await
            .unwrap();
        let Accepted::Stored { seq } = stored else {
            panic!("{stored:?}")
        };
        let again = r
            .ingest
            .receive(request(
                Some("s3cret"),
                Some("k1"),
                Request::ready(Ok(spans(3))),
            ))
            .await;
        assert_eq!(again, Ok(Accepted::Duplicate { seq }));
        // Not a trace request: refused once its bytes are known.
        let garbage = Bytes::from_static(b"\xff\xff\xff\xff not protobuf");
        let got = r
            .ingest
            .receive(request(
                Some("s3cret"),
                None,
                Request::ready(Ok(garbage.clone())),
            ))
            .await;
        assert!(matches!(got, Err(Rejection::Invalid(_))), "{got:?}");
        // A gzip body is inflated before it is decoded.
        let mut gzipped = request(
            Some("s3cret"),
            None,
            Request::ready(Ok(gz(&spans(5)).into())),
        );
        gzipped.compression = Compression::Gzip;
        let got = r.ingest.receive(gzipped).await.unwrap();
        assert!(matches!(got, Accepted::Stored { .. }), "{got:?}");

        assert_eq!(r.requests("grpc", "unauthenticated"), 1);
        assert_eq!(r.requests("grpc", "invalid"), 2);
        assert_eq!(r.requests("grpc", "accepted"), 2);
        assert_eq!(r.requests("grpc", "duplicate"), 1);
        assert_eq!(r.requests("grpc", "abandoned"), 0);
        assert_eq!(
            r.wal.stats().last_seq,
            seq + 1,
            "exactly two records stored"
        );

        let entries = r.entries();
        let rejected: Vec<_> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Rejected {
                    reason,
                    bytes,
                    tenant,
                    protocol,
                    ..
                } => Some((
                    reason.as_str(),
                    *bytes,
                    tenant.as_deref(),
                    protocol.as_str(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejected,
            [
                ("unauthenticated", 0, None, "grpc"),
                ("invalid", 1234, Some("shop"), "grpc"),
                ("invalid", garbage.len() as u64, Some("shop"), "grpc"),
            ]
        );
        let accepted: Vec<_> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Accepted {
                    seq,
                    key,
                    spans,
                    tenant,
                    ..
                } => Some((*seq, key.clone(), *spans, tenant.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            accepted,
            [
                (
                    seq,
                    Some("shop:k1".to_string()),
                    3,
                    Some("shop".to_string())
                ),
                (seq + 1, None, 5, Some("shop".to_string())),
            ]
        );
        let deduplicated = entries
            .iter()
            .filter(|e| matches!(e, Entry::Deduplicated { seq: s, key, spans: 3, .. } if *s == seq && key == "shop:k1"))
            .count();
        assert_eq!(deduplicated, 1);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_before_the_answer_is_counted_as_abandoned_once() {
        let r = rig();
        let body: Body = Box::pin(std::future::pending());
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            r.ingest.receive(request(Some("s3cret"), Some("k"), body)),
        )
        .await;
        assert!(waited.is_err(), "a pending body cannot be answered");
        assert_eq!(r.requests("grpc", "abandoned"), 1);
        for outcome in Rejection::KINDS
            .into_iter()
            .chain(["accepted", "duplicate"])
        {
            assert_eq!(r.requests("grpc", outcome), 0, "{outcome}");
        }
        // Nothing was stored or refused: the ledger has no entry for it.
        let entries = r.entries();
        assert!(
            !entries.iter().any(|e| matches!(
                e,
                Entry::Rejected { .. } | Entry::Accepted { .. } | Entry::Deduplicated { .. }
            )),
            "{entries:?}"
        );
        assert_eq!(r.wal.stats().last_seq, 0);
    }
}
