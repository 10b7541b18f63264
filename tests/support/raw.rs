//! Raw OTLP requests from Rust, for checking exact status codes.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tracespool::otlp::codec::{RawCodec, EXPORT_PATH};

/// A request of `spans` spans whose span ids encode (`batch`, index), with a
/// ~200-byte payload per span.
pub fn request(prefix: &str, batch: u64, spans: usize) -> (Vec<u8>, Vec<String>) {
    let mut ids = Vec::new();
    let spans: Vec<Span> = (0..spans)
        .map(|i| {
            let mut span_id = [0u8; 8];
            span_id[..4].copy_from_slice(&(batch as u32).to_be_bytes());
            span_id[4..].copy_from_slice(&(i as u32 + 1).to_be_bytes());
            let mut trace_id = [7u8; 16];
            trace_id[..8].copy_from_slice(&batch.to_be_bytes());
            ids.push(super::backend::hex(&span_id));
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                name: format!("{prefix} {batch}.{i}"),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                end_time_unix_nano: 1_700_000_000_000_100_000 + i as u64,
                attributes: vec![
                    kv("http.route", "/api/v1/orders/{id}"),
                    kv("http.method", "GET"),
                    kv("batch.prefix", prefix),
                ],
                ..Default::default()
            }
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "raw-client")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (req.encode_to_vec(), ids)
}

pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// Sends raw bytes to `TraceService/Export`; returns the status (OK as `Ok`).
pub async fn grpc_export(
    endpoint: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(Bytes::from(body));
    if let Some(k) = key {
        req.metadata_mut()
            .insert("idempotency-key", k.parse().unwrap());
    }
    req.set_timeout(Duration::from_secs(10));
    grpc.unary::<Bytes, Bytes, _>(
        req,
        http::uri::PathAndQuery::from_static(EXPORT_PATH),
        RawCodec,
    )
    .await
    .map(|_| ())
}

/// Like [`grpc_export`], with the message gzip-compressed by the client.
pub async fn grpc_export_gzip(endpoint: &str, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(Bytes::from(body));
    req.set_timeout(Duration::from_secs(30));
    grpc.unary::<Bytes, Bytes, _>(
        req,
        http::uri::PathAndQuery::from_static(EXPORT_PATH),
        RawCodec,
    )
    .await
    .map(|_| ())
}

/// An HTTP response, as the test sees it.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// POSTs `body` to `url` with the given headers.
pub async fn http_post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> HttpAnswer {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut req = http::Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(
            req.body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .expect("http request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    HttpAnswer {
        status,
        headers,
        body,
    }
}

#[path = "../../benches/common/spans.rs"]
mod spans;

/// A request of `n` spans as an instrumented HTTP service sends them (the
/// benchmarks' generator, `benches/common/spans.rs`): random trace ids (a trace per
/// 8 spans), random span ids, jittered timestamps, varying routes and status codes.
/// Returns the request and its span ids.
pub fn realistic(n: usize, seed: u64) -> (Vec<u8>, Vec<String>) {
    let (request, ids) = spans::request_with_ids(n, seed);
    (
        request,
        ids.iter().map(|id| super::backend::hex(id)).collect(),
    )
}
