//! The interop matrix: the official OpenTelemetry JavaScript SDK exporters — OTLP/HTTP
//! JSON, OTLP/HTTP protobuf, OTLP/gRPC — each plain and gzip, through tracespool to
//! a backend; every span arrives once and **equal** to the SDK's own protobuf
//! encoding of the same spans (`otlp-transformer`), field by field: attributes of
//! every type (doubles at full precision and at the small extremes included),
//! events, links, tracestate, flags, kinds, unicode statuses, dropped counts. (The
//! Python SDK's exporters are compared the same way below.)

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

/// Every span of a request.
fn spans_of(
    r: &ExportTraceServiceRequest,
) -> impl Iterator<Item = &opentelemetry_proto::tonic::trace::v1::Span> {
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|s| &s.spans)
}

/// Waits for as many requests as `want` holds, then checks each SDK request
/// arrived exactly once (by service and first span) and equal, field by field.
async fn assert_each_arrived_once_and_equal(
    backend: &Backend,
    want: &[(String, ExportTraceServiceRequest)],
) {
    assert!(
        support::eventually(Duration::from_secs(30), || backend.received().len()
            >= want.len())
        .await,
        "{} of {} requests arrived",
        backend.received().len(),
        want.len()
    );
    let received = backend.received();
    assert_eq!(received.len(), want.len(), "each request once");
    for (what, sdk) in want {
        let got: Vec<_> = received
            .iter()
            .filter(|r| batch_of(&r.request) == batch_of(sdk))
            .collect();
        assert_eq!(got.len(), 1, "{what}: arrived {} times", got.len());
        assert!(
            &got[0].request == sdk,
            "{what}: what arrived is not what the SDK sent: {}",
            first_difference(&got[0].request, sdk)
        );
    }
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
    for (exporter, compression, sdk) in &cells {
        assert_eq!(
            spans_of(sdk).count(),
            40,
            "{exporter}/{compression}: the SDK's batch"
        );
    }
    let want: Vec<_> = cells
        .iter()
        .map(|(exporter, compression, sdk)| (format!("{exporter}/{compression}"), sdk.clone()))
        .collect();
    assert_each_arrived_once_and_equal(&backend, &want).await;
    println!(
        "javascript: {} cells of 40 spans, each equal to the SDK's encoding",
        want.len()
    );
    // Dropped counts, tracestate and every kind are in there (the matrix means
    // something only if the spans use them).
    let all: Vec<_> = spans_of(&cells[0].2).collect();
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

/// (service, first span id) of a request: which SDK batch it is.
fn batch_of(r: &ExportTraceServiceRequest) -> (String, Vec<u8>) {
    let first = spans_of(r)
        .next()
        .map(|s| s.span_id.clone())
        .unwrap_or_default();
    (service(r), first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_exporters_deliver_every_span_equal_to_the_sdks_own_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.start();
    // Every attribute type the Python SDK takes, at the edges.
    let extras = dir.path().join("attributes.json");
    std::fs::write(
        &extras,
        r#"{"resource": {"res.unicode": "värde ✓ 日本"},
            "scope": {"scope.n": 7},
            "span": {"int.max": 9223372036854775807, "int.min": -9223372036854775808,
                     "int.past53": 9007199254740993, "double.tiny": 5e-324,
                     "double.max": 1.7976931348623157e308, "double.neg": -8.485828396444299e-16,
                     "arr.int": [1, -2, 9007199254740993], "arr.double": [0.1, 1.5e-300],
                     "arr.bool": [true, false], "unicode": "ü ✓ 日本語 — ß", "empty": ""},
            "event": {"e.d": 1.5e-300, "e.s": "ß"},
            "link": {"l.s": "x", "l.n": -1}}"#,
    )
    .unwrap();
    let (g, h) = (spool.grpc_endpoint(), spool.http_endpoint());
    let extras = extras.display().to_string();
    let mut runs = Vec::new();
    for (proto, endpoint) in [("grpc", &g), ("http", &h)] {
        for gzip in [false, true] {
            let name = format!("py-{proto}-{}", if gzip { "gzip" } else { "plain" });
            let encoding = dir.path().join(&name).display().to_string();
            let mut args = vec![
                "--protocol",
                proto,
                "--endpoint",
                endpoint,
                "--batches",
                "3",
                "--spans",
                "6",
                "--spans-per-trace",
                "3",
                "--prefix",
                &name,
                "--service",
                &name,
                "--attributes-json",
                &extras,
                "--max-attributes",
                "14",
                "--sdk-encoding",
                &encoding,
            ];
            if gzip {
                args.push("--gzip");
            }
            let r = support::python::spawn(dir.path(), &name, &args).wait();
            assert!(r.success, "{name}: {:?}\n{}", r.summary, r.stderr);
            runs.push((name, encoding));
        }
    }
    let want: Vec<(String, ExportTraceServiceRequest)> = runs
        .iter()
        .flat_map(|(name, encoding)| {
            (0..3).map(move |b| {
                let bytes = std::fs::read(format!("{encoding}.{b}.pb")).unwrap();
                (
                    format!("{name} batch {b}"),
                    ExportTraceServiceRequest::decode(&bytes[..]).unwrap(),
                )
            })
        })
        .collect();
    assert_each_arrived_once_and_equal(&backend, &want).await;
    let spans: Vec<_> = want.iter().flat_map(|(_, r)| spans_of(r)).collect();
    assert_eq!(spans.len(), 4 * 3 * 6);
    assert!(
        spans.iter().any(|s| s.dropped_attributes_count > 0),
        "no dropped counts"
    );
    assert!(
        spans.iter().any(|s| !s.links.is_empty()) && spans.iter().any(|s| !s.events.is_empty())
    );
    println!(
        "python: {} batches, {} spans, each equal to the SDK's encoding",
        want.len(),
        spans.len()
    );
    spool.terminate();
}
