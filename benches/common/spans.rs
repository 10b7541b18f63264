//! Realistic OTLP requests: spans like an instrumented HTTP service makes them.
//! Shared by the benchmarks (`loadgen`, `zstd_dict`) and the tests
//! (`tests/support/raw.rs`), so compression figures of both are of the same spans.
#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

const ROUTES: [&str; 5] = [
    "/api/v1/orders/{id}",
    "/api/v1/cart",
    "/api/v1/users/{id}/profile",
    "/healthz",
    "/api/v1/payments",
];

/// A request of `n` spans of about 200 bytes each in protobuf, like an instrumented
/// HTTP service produces.
///
/// Trace and span ids are random, as the SDKs make them (a trace per 8 spans), so
/// compression is measured on what real ids leave it.
pub fn request(n: usize, variant: u64) -> Vec<u8> {
    request_with_ids(n, variant).0
}

/// [`request`], and the span ids it holds, in order.
pub fn request_with_ids(n: usize, variant: u64) -> (Vec<u8>, Vec<[u8; 8]>) {
    let s = |v: &str| any_value::Value::StringValue(v.into());
    let mut ids = Vec::with_capacity(n);
    let mut rng = fastrand::Rng::with_seed(variant);
    let mut trace_id = [0u8; 16];
    let mut root = [0u8; 8];
    let spans = (0..n)
        .map(|i| {
            if i % 8 == 0 {
                rng.fill(&mut trace_id);
                rng.fill(&mut root);
            }
            let mut span_id = [0u8; 8];
            rng.fill(&mut span_id);
            ids.push(span_id);
            // Timestamps with real jitter, routes, ids and codes that vary.
            let start = 1_700_000_000_000_000_000 + i as u64 * 1_000_000 + rng.u64(0..1_000_000);
            let route = ROUTES[rng.usize(0..ROUTES.len())];
            let code = [200, 200, 200, 201, 404, 500][rng.usize(0..6)];
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: if i % 8 == 0 { vec![] } else { root.to_vec() },
                name: format!("GET {route}"),
                kind: if i % 8 == 0 { 2 } else { 3 },
                start_time_unix_nano: start,
                end_time_unix_nano: start + rng.u64(50_000..5_000_000),
                attributes: vec![
                    kv("http.request.method", s("GET")),
                    kv(
                        "url.path",
                        s(&route.replace("{id}", &rng.u32(1..99_999).to_string())),
                    ),
                    kv(
                        "http.response.status_code",
                        any_value::Value::IntValue(code),
                    ),
                    kv("server.address", s("orders.shop.local")),
                ],
                status: Some(Status {
                    message: String::new(),
                    code: if code >= 500 { 2 } else { 1 },
                }),
                ..Default::default()
            }
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("orders")),
                    kv("host.name", s("edge-node-17")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.http".into(),
                    version: "1.0.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    (request, ids)
}
