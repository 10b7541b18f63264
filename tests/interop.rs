//! The interop matrix: the official OpenTelemetry JavaScript SDK exporters — OTLP/HTTP
//! JSON, OTLP/HTTP protobuf, OTLP/gRPC — each plain and gzip, through tracespool to
//! a backend; every span arrives once and **equal** to the SDK's own protobuf
//! encoding of the same spans (`otlp-transformer`), field by field: attributes of
//! every type (doubles at full precision and at the small extremes included),
//! events, links, tracestate, flags, kinds, unicode statuses, dropped counts. (The
//! Python SDK's exporters are in `tests/e2e_clients.rs`.)

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use support::backend::{Backend, Kind};
use support::spool::{Dest, Spool};

/// The `service.name` of a request's first resource.
fn service(r: &ExportTraceServiceRequest) -> String {
    r.resource_spans
        .first()
        .and_then(|rs| rs.resource.as_ref())
        .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .unwrap_or_default()
}

/// Where two requests first differ, span by span.
fn first_difference(got: &ExportTraceServiceRequest, want: &ExportTraceServiceRequest) -> String {
    for (g, w) in got.resource_spans.iter().zip(&want.resource_spans) {
        if g.resource != w.resource {
            return format!("resource: {:?}\nvs SDK: {:?}", g.resource, w.resource);
        }
        for (gs, ws) in g.scope_spans.iter().zip(&w.scope_spans) {
            for (a, b) in gs.spans.iter().zip(&ws.spans) {
                if a != b {
                    for (x, y) in a.attributes.iter().zip(&b.attributes) {
                        if x != y {
                            return format!("span {:?} attribute {x:?}\nvs SDK: {y:?}", a.name);
                        }
                    }
                    return format!("span {a:?}\nvs SDK: {b:?}");
                }
            }
            if gs.spans.len() != ws.spans.len() || gs.scope != ws.scope {
                return format!(
                    "scope {:?}: {} spans vs {}",
                    gs.scope,
                    gs.spans.len(),
                    ws.spans.len()
                );
            }
        }
    }
    "resource spans differ in number".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_exporters_deliver_every_span_equal_to_the_sdks_own_encoding() {
    let name = "javascript_sdk_exporters_deliver_every_span_equal_to_the_sdks_own_encoding";
    let Some(node) = support::node::available(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.start();
    let http = format!("http://{}/v1/traces", spool.http);
    let grpc = spool.grpc_endpoint();
    let mut cells = Vec::new();
    for exporter in ["http-json", "http-proto", "grpc"] {
        for compression in ["none", "gzip"] {
            let endpoint = if exporter == "grpc" { &grpc } else { &http };
            let (node, endpoint) = (node.clone(), endpoint.clone());
            let sdk = tokio::task::spawn_blocking(move || {
                support::node::send(&node, exporter, &endpoint, compression)
            })
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the SDK's export failed: {e}"));
            let sdk = ExportTraceServiceRequest::decode(&sdk[..]).unwrap();
            cells.push((exporter, compression, sdk));
        }
    }
    assert!(
        support::eventually(Duration::from_secs(30), || backend.received().len()
            >= cells.len())
        .await,
        "{} of {} requests arrived",
        backend.received().len(),
        cells.len()
    );
    let received = backend.received();
    assert_eq!(received.len(), cells.len(), "one request per cell, once");
    for (exporter, compression, sdk) in &cells {
        let spans: usize = sdk
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        assert_eq!(spans, 40, "{exporter}/{compression}: the SDK's batch");
        let got: Vec<_> = received
            .iter()
            .filter(|r| service(&r.request) == service(sdk))
            .collect();
        assert_eq!(
            got.len(),
            1,
            "{exporter}/{compression}: arrived {} times",
            got.len()
        );
        let got = &got[0].request;
        assert!(
            got == sdk,
            "{exporter}/{compression}: what arrived is not what the SDK sent: {}",
            first_difference(got, sdk)
        );
        println!("{exporter}/{compression}: {spans} spans, equal to the SDK's encoding");
    }
    // Dropped counts, tracestate and every kind are in there (the matrix means
    // something only if the spans use them).
    let all: Vec<_> = cells[0]
        .2
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    assert!(all.iter().any(|s| s.dropped_attributes_count > 0));
    assert!(all.iter().any(|s| s.trace_state == "vendor=v1,other=x:y"));
    assert!(all
        .iter()
        .any(|s| !s.links.is_empty() && !s.events.is_empty()));
    assert_eq!(
        all.iter()
            .map(|s| s.kind)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        5
    );
    spool.terminate();
}
