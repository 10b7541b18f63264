//! The OTLP/HTTP receiver: `POST /v1/traces` with `application/x-protobuf` or
//! `application/json`, optionally `Content-Encoding: gzip`. Protobuf bodies are
//! stored as sent; JSON is converted to protobuf once. Responses follow the OTLP
//! specification: 200 with an `ExportTraceServiceResponse` in the request's
//! encoding, or an error status with a `google.rpc.Status` body and, when a retry
//! makes sense, `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, Limited};

use super::{Compression, Ingest, Rejection, Request, Source};

#[derive(Clone)]
struct HttpState {
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
}

pub fn router(ingest: Arc<Ingest>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .with_state(HttpState {
            ingest,
            max_request_bytes,
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// Translates one `POST /v1/traces` into a [`Request`], and its result into a
/// response in the request's encoding.
async fn export(
    State(st): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
    };
    // A refusal found in the headers still goes through the ingest (after the
    // authentication), so it is counted like any other; it answers in protobuf
    // when the content type is not known.
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (encoding, body) = match content_type(&headers) {
        Ok(encoding) => (encoding, read_body(&st, &headers, length, body)),
        Err(r) => (Encoding::Protobuf, Err(r)),
    };
    let (compression, body) = match body {
        Ok((compression, body)) => (compression, body),
        Err(r) => (Compression::None, Request::ready(Err(r))),
    };
    let result = st
        .ingest
        .receive(Request {
            source: match encoding {
                Encoding::Protobuf => Source::HttpProtobuf,
                Encoding::Json => Source::HttpJson,
            },
            peer: Some(peer),
            started,
            authorization: header(header::AUTHORIZATION.as_str()),
            idempotency_key: header("idempotency-key"),
            tenant: None,
            compression,
            length,
            body,
        })
        .await;
    match result {
        Ok(_) => {
            let (ct, body): (&'static str, &'static [u8]) = match encoding {
                // An empty ExportTraceServiceResponse.
                Encoding::Protobuf => ("application/x-protobuf", b""),
                Encoding::Json => ("application/json", b"{}"),
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(r) => reject(r, encoding),
    }
}

/// The body's compression, and a reader of it bounded by `max_request_bytes`
/// (`length`: the request's `Content-Length`).
fn read_body(
    st: &HttpState,
    headers: &HeaderMap,
    length: Option<u64>,
    body: Body,
) -> Result<(Compression, super::Body), Rejection> {
    let compression = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Compression::None,
        Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::Zstd,
        Some(other) => {
            return Err(Rejection::UnsupportedMedia(format!(
                "unsupported Content-Encoding {other:?}: use gzip, zstd or none"
            )))
        }
    };
    let max = st.max_request_bytes;
    let too_large = move |n: String| {
        Rejection::TooLarge(format!(
            "request body of {n} bytes exceeds receivers.otlp.max_request_bytes ({max})"
        ))
    };
    if let Some(len) = length.filter(|&len| len > max as u64) {
        return Err(too_large(len.to_string()));
    }
    let read = async move {
        let raw = Limited::new(body, max).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large("more than that".into())
            } else if let Some(t) = find_cause::<super::server::BodyTimeout>(&*e) {
                Rejection::TimedOut(t.to_string())
            } else {
                Rejection::Invalid(format!("reading the request body failed: {e}"))
            }
        })?;
        Ok(raw.to_bytes())
    };
    Ok((compression, Box::pin(read)))
}

fn reject(r: Rejection, encoding: Encoding) -> Response {
    r.http_response(encoding == Encoding::Json)
        .map(Body::from)
        .into_response()
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
