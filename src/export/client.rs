//! Sending one stored record to a destination, over OTLP/gRPC (tonic, pass-through
//! codec) or OTLP/HTTP protobuf (hyper), and sorting the answer into what the replay
//! worker does next.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use tracespool_storage::Codec;

use super::jetstream::JetStreamClient;
use super::ratelimit::{Lane, TokenBucket};
use crate::config::{Compression, DestinationConfig, Protocol};
use crate::otlp::codec::{RawCodec, EXPORT_PATH};
use crate::otlp::partial_success;
use crate::payload::{Encoding, Wire};

/// One record to export: its stored bytes, its idempotency key, and what a
/// destination may put beside them (JetStream headers).
#[derive(Clone, Debug)]
pub struct Export<'a> {
    /// The record's payload as stored (decrypted), in `codec`.
    pub payload: Bytes,
    pub codec: Codec,
    pub key: &'a str,
    pub seq: u64,
    pub spans: u32,
    /// The lane it is sent from (the egress limit serves live first).
    pub lane: Lane,
}

pub use crate::ledger::Receipt;

/// The outcome of one export attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Accepted; `rejected` spans were refused by the backend (partial success).
    Ok {
        rejected: i64,
        message: String,
        receipt: Option<Receipt>,
    },
    /// The destination has no room (a full stream): retried like a transient
    /// failure, counted apart.
    Full { reason: String },
    /// Worth retrying: unavailable, overloaded, timed out, connection refused/reset.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The credentials were refused: retried (credentials get fixed), loudly.
    Auth { reason: String },
    /// The backend will never accept this record: dead-letter it.
    Permanent { reason: String },
}

/// Largest response body read from an OTLP/HTTP backend.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub enum Client {
    Grpc(GrpcClient),
    Http(Box<HttpClient>),
    JetStream(Arc<JetStreamClient>),
}

impl Client {
    /// A client for `cfg`; `instance_id` names us to destinations that carry it.
    pub fn new(cfg: &DestinationConfig, instance_id: &str) -> Result<Self, String> {
        let uri = cfg.export_uri();
        let timeout = cfg.timeout.0;
        match cfg.protocol {
            Protocol::Grpc => {
                let https = uri.scheme_str() == Some("https");
                let endpoint = Endpoint::from(uri)
                    .connect_timeout(timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(16 << 20)
                    .keep_alive_while_idle(true);
                let mut headers = MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    let value = AsciiMetadataValue::try_from(v.as_str())
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    headers.insert(key, value);
                }
                let channel = if https {
                    // Our own rustls connector (tonic's TLS features are off): one
                    // TLS setup for both protocols.
                    let mut http = HttpConnector::new();
                    http.enforce_http(false);
                    http.set_nodelay(true);
                    http.set_connect_timeout(Some(timeout));
                    endpoint.connect_with_connector_lazy(super::tls::connector(cfg, http, true)?)
                } else {
                    endpoint.connect_lazy()
                };
                Ok(Self::Grpc(GrpcClient {
                    channel,
                    headers,
                    timeout,
                    compression: cfg.compression,
                    limit: cfg.egress_limit().map(Arc::new),
                }))
            }
            Protocol::Jetstream => Ok(Self::JetStream(Arc::new(JetStreamClient::new(
                cfg,
                instance_id,
            )))),
            Protocol::Http => {
                let mut connector = HttpConnector::new();
                connector.enforce_http(false);
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(timeout));
                let connector = super::tls::connector(cfg, connector, false)?;
                let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector);
                let mut headers = http::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    headers.insert(
                        http::HeaderName::from_bytes(k.as_bytes())
                            .map_err(|e| format!("header {k:?}: {e}"))?,
                        http::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?,
                    );
                }
                Ok(Self::Http(Box::new(HttpClient {
                    client,
                    uri,
                    headers,
                    timeout,
                    encoding: cfg.compression.wire(),
                    limit: cfg.egress_limit().map(Arc::new),
                })))
            }
        }
    }

    /// Sends one `ExportTraceServiceRequest` (protobuf bytes) with its idempotency key.
    /// Returns the outcome and the bytes put on the wire (after compression).
    pub async fn send(&self, export: Export<'_>) -> (Sent, u64) {
        match self {
            Self::Grpc(c) => c.send(export).await,
            Self::Http(c) => c.send(export).await,
            Self::JetStream(c) => c.send(export).await,
        }
    }
}

/// No answer within the destination's timeout: retried.
fn no_answer(timeout: Duration) -> Sent {
    Sent::Transient {
        reason: format!("no answer within {}", humantime::format_duration(timeout)),
        retry_after: None,
    }
}

/// Accepted; with the partial-success detail of the answer's body, if any.
fn accepted(response: Option<&[u8]>) -> Sent {
    let (rejected, message) = response.and_then(partial_success).unwrap_or_default();
    Sent::Ok {
        rejected,
        message,
        receipt: None,
    }
}

/// A stored payload this build cannot turn into a request is never accepted by
/// any backend: permanent.
fn unreadable(seq: u64, e: String) -> (Sent, u64) {
    (
        Sent::Permanent {
            reason: format!("the stored payload of seq {seq} cannot be read: {e}"),
        },
        0,
    )
}

#[derive(Clone)]
pub struct GrpcClient {
    channel: Channel,
    headers: MetadataMap,
    timeout: Duration,
    compression: Compression,
    limit: Option<Arc<TokenBucket>>,
}

/// Waits for the egress limit (if any) to allow `bytes`.
async fn pace(limit: &Option<Arc<TokenBucket>>, bytes: usize, lane: Lane) {
    if let Some(l) = limit {
        l.take(bytes as u64, lane).await;
    }
}

impl GrpcClient {
    async fn send(&self, export: Export<'_>) -> (Sent, u64) {
        // Compressed messages are framed here (zstd records as stored), so the
        // bytes counted are the bytes sent.
        if self.compression != Compression::None {
            let want = self.compression.wire();
            return match Wire::for_destination(export.codec, &export.payload, want) {
                Ok(wire) => {
                    self.send_framed(wire.body, wire.encoding, export.key, export.lane)
                        .await
                }
                Err(e) => unreadable(export.seq, e),
            };
        }
        let payload = match crate::payload::protobuf(export.codec, &export.payload) {
            Ok(p) => p,
            Err(e) => return unreadable(export.seq, e),
        };
        let key = export.key;
        let wire = payload.len() as u64;
        pace(&self.limit, payload.len(), export.lane).await;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut req = tonic::Request::new(payload);
        *req.metadata_mut() = self.headers.clone();
        if let Ok(v) = AsciiMetadataValue::try_from(key) {
            req.metadata_mut().insert("idempotency-key", v);
        }
        req.set_timeout(self.timeout);
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
            grpc.unary::<Bytes, Bytes, _>(
                req,
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                RawCodec,
            )
            .await
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => no_answer(self.timeout),
            Ok(Ok(response)) => accepted(Some(&response.into_inner())),
            Ok(Err(status)) => classify_grpc(&status),
        };
        (outcome, wire)
    }
}

impl GrpcClient {
    /// One unary call whose message is already compressed (for zstd, the stored
    /// bytes): framed with the compressed flag and its `grpc-encoding`, sent as
    /// given. tonic would compress the message itself, so this call is made on
    /// the same channel by hand (gRPC over HTTP/2, "Length-Prefixed-Message").
    async fn send_framed(
        &self,
        message: Bytes,
        encoding: Encoding,
        key: &str,
        lane: Lane,
    ) -> (Sent, u64) {
        use tower::{Service, ServiceExt};
        let wire = message.len() as u64;
        pace(&self.limit, message.len(), lane).await;
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(u8::from(encoding != Encoding::Identity));
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let mut req = http::Request::post(EXPORT_PATH);
        if let Some(h) = req.headers_mut() {
            *h = self.headers.clone().into_headers();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
            if encoding != Encoding::Identity {
                h.insert(
                    "grpc-encoding",
                    http::HeaderValue::from_static(encoding.token()),
                );
            }
            h.insert(
                "grpc-accept-encoding",
                http::HeaderValue::from_static("identity,gzip,zstd"),
            );
            if let Ok(v) =
                http::HeaderValue::from_str(&format!("{}m", self.timeout.as_millis().max(1)))
            {
                h.insert("grpc-timeout", v);
            }
            if let Ok(v) = http::HeaderValue::from_str(key) {
                h.insert("idempotency-key", v);
            }
        }
        let req = match req.body(tonic::body::Body::new(Full::new(Bytes::from(frame)))) {
            Ok(r) => r,
            Err(e) => {
                return (
                    Sent::Permanent {
                        reason: format!("building request: {e}"),
                    },
                    0,
                )
            }
        };
        let mut channel = self.channel.clone();
        let call = async {
            let response = channel
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?
                .call(req)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("transport: {e}")))?;
            let (parts, body) = response.into_parts();
            if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
                if status.code() != Code::Ok {
                    return Err(status); // trailers-only answer
                }
            }
            if parts.status != http::StatusCode::OK {
                return Err(tonic::Status::unavailable(format!(
                    "HTTP {} from the gRPC server",
                    parts.status
                )));
            }
            let collected = Limited::new(body, MAX_RESPONSE_BYTES + 5)
                .collect()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("reading the answer: {e}")))?;
            let status = collected
                .trailers()
                .and_then(tonic::Status::from_header_map)
                .ok_or_else(|| tonic::Status::unknown("the answer carried no grpc-status"))?;
            if status.code() != Code::Ok {
                return Err(status);
            }
            let encoding = parts
                .headers
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity")
                .to_string();
            Ok::<_, tonic::Status>(unframe(&collected.to_bytes(), &encoding))
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => no_answer(self.timeout),
            Ok(Ok(message)) => accepted(message.as_deref()),
            Ok(Err(status)) => classify_grpc(&status),
        };
        (outcome, wire)
    }
}

/// The message of a gRPC answer body (`None` when there is none, or it cannot be
/// read: the call succeeded, only its partial-success detail is lost).
fn unframe(body: &[u8], encoding: &str) -> Option<Vec<u8>> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let msg = rest.get(4..4 + len)?;
    match (flag, encoding) {
        (0, _) => Some(msg.to_vec()),
        (_, "gzip") => crate::receiver::gunzip(msg, MAX_RESPONSE_BYTES)
            .ok()
            .map(|b| b.to_vec()),
        (_, "zstd") => crate::receiver::unzstd(msg, MAX_RESPONSE_BYTES)
            .ok()
            .map(|b| b.to_vec()),
        _ => None,
    }
}

/// Sorts a gRPC status (OTLP specification, "Failures"): the retryable codes are
/// retried (RESOURCE_EXHAUSTED only with `RetryInfo`); UNAUTHENTICATED and
/// PERMISSION_DENIED are retried as auth failures; codes that say the request itself
/// is wrong are permanent. Codes not named by the
/// specification are retried rather than risk dead-lettering data over a transport
/// hiccup (tonic reports some connection failures as UNKNOWN or INTERNAL).
pub fn classify_grpc(status: &tonic::Status) -> Sent {
    let reason = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Sent::Auth { reason },
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Unimplemented => Sent::Permanent { reason },
        // Retryable only when the server says recovery is possible (RetryInfo).
        Code::ResourceExhausted => match crate::otlp::retry_delay(status) {
            None => Sent::Permanent { reason },
            hint => Sent::Transient {
                reason,
                retry_after: hint,
            },
        },
        _ => Sent::Transient {
            retry_after: crate::otlp::retry_delay(status),
            reason,
        },
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<HttpConnector>,
        Full<Bytes>,
    >,
    uri: http::Uri,
    headers: http::HeaderMap,
    timeout: Duration,
    encoding: Encoding,
    limit: Option<Arc<TokenBucket>>,
}

impl HttpClient {
    async fn send(&self, export: Export<'_>) -> (Sent, u64) {
        let key = export.key;
        let body = match Wire::for_destination(export.codec, &export.payload, self.encoding) {
            Ok(w) => w.body,
            Err(e) => return unreadable(export.seq, e),
        };
        let wire = body.len() as u64;
        pace(&self.limit, body.len(), export.lane).await;
        let mut req = http::Request::post(self.uri.clone());
        if let Some(h) = req.headers_mut() {
            *h = self.headers.clone();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            if self.encoding != Encoding::Identity {
                h.insert(
                    http::header::CONTENT_ENCODING,
                    http::HeaderValue::from_static(self.encoding.token()),
                );
            }
            if let Ok(v) = http::HeaderValue::from_str(key) {
                h.insert("idempotency-key", v);
            }
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return (
                    Sent::Permanent {
                        reason: format!("building request: {e}"),
                    },
                    0,
                )
            }
        };
        let call = async {
            let response = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                msg
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, retry_after, body))
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => no_answer(self.timeout),
            Ok(Err(e)) => Sent::Transient {
                reason: e,
                retry_after: None,
            },
            Ok(Ok((status, retry_after, body))) => classify_http(status, retry_after, &body),
        };
        (outcome, wire)
    }
}

/// Sorts an OTLP/HTTP answer (OTLP specification): 2xx accepted (maybe partially);
/// 429, 502, 503, 504 retried (honouring `Retry-After`); 401 and 403 retried as auth
/// failures; every other status is permanent.
pub fn classify_http(status: http::StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Sent {
    let code = status.as_u16();
    let detail = || {
        let text = crate::otlp::RpcStatus::decode_message(body)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        format!("HTTP {code}: {text}")
    };
    match code {
        200..=299 => accepted(Some(body)),
        429 | 502 | 503 | 504 => Sent::Transient {
            reason: detail(),
            retry_after,
        },
        401 | 403 => Sent::Auth { reason: detail() },
        _ => Sent::Permanent { reason: detail() },
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate(v)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn httpdate(v: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(&rfc1123_to_rfc3339(v)?).ok()
}

/// "Sun, 06 Nov 1994 08:49:37 GMT" → "1994-11-06 08:49:37".
fn rfc1123_to_rfc3339(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2])? + 1;
    let day: u32 = parts[1].parse().ok()?;
    let year: u32 = parts[3].parse().ok()?;
    Some(format!("{year:04}-{month:02}-{day:02} {}", parts[4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_sort_as_the_specification_says() {
        use tonic::Status;
        assert!(matches!(
            classify_grpc(&Status::unavailable("x")),
            Sent::Transient { .. }
        ));
        assert!(matches!(
            classify_grpc(&Status::deadline_exceeded("x")),
            Sent::Transient { .. }
        ));
        assert!(matches!(
            classify_grpc(&Status::aborted("x")),
            Sent::Transient { .. }
        ));
        assert!(matches!(
            classify_grpc(&Status::unknown("transport error")),
            Sent::Transient { .. }
        ));
        assert!(matches!(
            classify_grpc(&Status::invalid_argument("x")),
            Sent::Permanent { .. }
        ));
        assert!(matches!(
            classify_grpc(&Status::unauthenticated("x")),
            Sent::Auth { .. }
        ));
        assert!(matches!(
            classify_grpc(&Status::permission_denied("x")),
            Sent::Auth { .. }
        ));
        let full = crate::status::Rejection::Full {
            retry_after: Duration::from_secs(3),
            detail: "full".into(),
        }
        .grpc_status();
        assert_eq!(
            classify_grpc(&full),
            Sent::Transient {
                reason: "ResourceExhausted: full".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let too_large =
            crate::status::Rejection::TooLarge("request exceeds the limit".into()).grpc_status();
        assert!(matches!(classify_grpc(&too_large), Sent::Permanent { .. }));
    }

    #[test]
    fn http_statuses_sort_as_the_specification_says() {
        use http::StatusCode as S;
        assert!(matches!(
            classify_http(S::OK, None, b""),
            Sent::Ok { rejected: 0, .. }
        ));
        let partial = crate::otlp::partial_success_response(3, "bad spans");
        assert_eq!(
            classify_http(S::OK, None, &partial),
            Sent::Ok {
                rejected: 3,
                message: "bad spans".into(),
                receipt: None,
            }
        );
        for s in [429, 502, 503, 504] {
            assert!(matches!(
                classify_http(S::from_u16(s).unwrap(), Some(Duration::from_secs(2)), b""),
                Sent::Transient {
                    retry_after: Some(_),
                    ..
                }
            ));
        }
        assert!(matches!(
            classify_http(S::UNAUTHORIZED, None, b""),
            Sent::Auth { .. }
        ));
        assert!(matches!(
            classify_http(S::FORBIDDEN, None, b""),
            Sent::Auth { .. }
        ));
        assert!(matches!(
            classify_http(S::BAD_REQUEST, None, b""),
            Sent::Permanent { .. }
        ));
        assert!(matches!(
            classify_http(S::PAYLOAD_TOO_LARGE, None, b""),
            Sent::Permanent { .. }
        ));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
