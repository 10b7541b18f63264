//! The OTLP/HTTP receiver: `POST /v1/traces` with `application/x-protobuf` or
//! `application/json`, optionally `Content-Encoding: gzip`. Protobuf bodies are
//! stored as sent; JSON is converted to protobuf once. Responses follow the OTLP
//! specification: 200 with an `ExportTraceServiceResponse` in the request's
//! encoding, or an error status with a `google.rpc.Status` body and, when a retry
//! makes sense, `Retry-After`.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Limited};

use std::time::Instant;

use super::{Accepted, Batch, Ingest, Rejection, RequestInfo, Source};
use crate::otlp::json::json_to_protobuf;
use crate::otlp::wire::inspect_trace_request;

#[derive(Clone)]
struct HttpState {
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
}

pub fn router(
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .with_state(HttpState {
            ingest,
            max_request_bytes,
            max_decompressed_bytes,
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// What the handler learned of a request, for metrics and the ledger.
struct Seen {
    source: Source,
    spans: u32,
    bytes: u64,
    key: Option<Bytes>,
    tenant: Option<String>,
}

async fn export(
    State(st): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut seen = Seen {
        source: Source::HttpProtobuf,
        spans: 0,
        bytes: 0,
        key: None,
        tenant: None,
    };
    // Errors before the content type is known answer in protobuf.
    let (encoding, result) = match content_type(&headers) {
        Ok(e) => {
            if e == Encoding::Json {
                seen.source = Source::HttpJson;
            }
            (
                e,
                handle(&st, peer, &headers, body, e, started, &mut seen).await,
            )
        }
        Err(r) => (Encoding::Protobuf, Err(r)),
    };
    let info = RequestInfo {
        source: seen.source,
        peer: Some(peer),
        spans: seen.spans,
        bytes: seen.bytes,
        key: seen.key.as_ref(),
        tenant: seen.tenant.as_deref(),
    };
    st.ingest.outcome(info, &result);
    match result {
        Ok(_) => {
            let (ct, body): (&'static str, &'static [u8]) = match encoding {
                // An empty ExportTraceServiceResponse.
                Encoding::Protobuf => ("application/x-protobuf", b""),
                Encoding::Json => ("application/json", b"{}"),
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(r) => reject(r, encoding, peer),
    }
}

fn reject(r: Rejection, encoding: Encoding, peer: SocketAddr) -> Response {
    tracing::debug!(reason = r.kind(), detail = %r.message(), %peer, "http request refused");
    let json = encoding == Encoding::Json;
    let mut response = (
        r.http_status(),
        [(
            header::CONTENT_TYPE,
            if json {
                "application/json"
            } else {
                "application/x-protobuf"
            },
        )],
        r.http_body(json),
    )
        .into_response();
    if let Some(secs) = r.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn content_type(headers: &HeaderMap) -> Result<Encoding, Rejection> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(Rejection::UnsupportedMedia(format!(
            "unsupported Content-Type {raw:?}: use application/x-protobuf or application/json"
        ))),
    }
}

async fn handle(
    st: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
    started: Instant,
    seen: &mut Seen,
) -> Result<Accepted, Rejection> {
    // Who is asking, before anything is read.
    seen.tenant = st
        .ingest
        .authenticate(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))?;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(Rejection::UnsupportedMedia(format!(
                "unsupported Content-Encoding {other:?}: use gzip or none"
            )))
        }
    };
    let key = Ingest::check_key(
        headers
            .get("idempotency-key")
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
        seen.tenant.as_deref(),
    )?;
    seen.key = key.clone();
    let too_large = |n: String| {
        Rejection::TooLarge(format!(
            "request body of {n} bytes exceeds receivers.otlp.max_request_bytes ({})",
            st.max_request_bytes
        ))
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > st.max_request_bytes as u64 {
            return Err(too_large(len.to_string()));
        }
    }
    let raw = Limited::new(body, st.max_request_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large("more than that".into())
            } else if let Some(t) = find_cause::<super::server::BodyTimeout>(&*e) {
                Rejection::TimedOut(t.to_string())
            } else {
                Rejection::Invalid(format!("reading the request body failed: {e}"))
            }
        })?
        .to_bytes();
    seen.bytes = raw.len() as u64;
    let body = if gzip {
        let limit = st.max_decompressed_bytes;
        if raw.len() > 256 * 1024 {
            tokio::task::spawn_blocking(move || gunzip(&raw, limit))
                .await
                .map_err(|e| Rejection::Unavailable(e.to_string()))??
        } else {
            gunzip(&raw, limit)?
        }
    } else {
        raw
    };
    let (protobuf, spans, source) = match encoding {
        Encoding::Protobuf => {
            let summary =
                inspect_trace_request(&body).map_err(|e| Rejection::Invalid(e.to_string()))?;
            (body, summary.spans, Source::HttpProtobuf)
        }
        Encoding::Json => {
            let (pb, summary) = json_to_protobuf(&body).map_err(Rejection::Invalid)?;
            (Bytes::from(pb), summary.spans, Source::HttpJson)
        }
    };
    seen.spans = spans;
    st.ingest
        .store(Batch {
            protobuf,
            spans,
            key,
            source,
            peer: Some(peer),
            started,
            tenant: seen.tenant.clone(),
        })
        .await
}

/// `e` or one of its sources, as a `T`.
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes. Memory is
/// bounded by the limit: the output grows in steps, never past `limit`, and a bomb
/// is refused as soon as it crosses it.
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, Rejection> {
    let mut out: Vec<u8> = Vec::with_capacity((raw.len() * 4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = decoder
            .read(&mut chunk)
            .map_err(|e| Rejection::Invalid(format!("invalid gzip body: {e}")))?;
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

    #[test]
    fn content_types_are_recognised_with_parameters() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(content_type(&h).is_ok_and(|e| e == Encoding::Json));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            content_type(&h),
            Err(Rejection::UnsupportedMedia(_))
        ));
    }
}
