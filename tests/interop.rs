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
use support::spool::Spool;

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

/// Empties the value (an AnyValue without one) of every span attribute of `r`
/// named in `keys`, as a JSON `null` arrives; how many it emptied.
fn empty_values(r: &mut ExportTraceServiceRequest, keys: &[&str]) -> usize {
    let mut emptied = 0;
    for kv in r
        .resource_spans
        .iter_mut()
        .flat_map(|rs| &mut rs.scope_spans)
        .flat_map(|s| &mut s.spans)
        .flat_map(|s| &mut s.attributes)
        .filter(|kv| keys.contains(&kv.key.as_str()))
    {
        kv.value = Some(Default::default());
        emptied += 1;
    }
    emptied
}

/// Waits for as many requests as `want` holds, then checks each SDK request
/// arrived exactly once (by service and first span) and equal, bit for bit.
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
        // Bit for bit: the encodings, not `==` (under which NaN differs from
        // itself and −0.0 equals 0.0).
        assert!(
            got[0].request.encode_to_vec() == sdk.encode_to_vec(),
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
                if a.encode_to_vec() != b.encode_to_vec() {
                    for (x, y) in a.attributes.iter().zip(&b.attributes) {
                        if x.encode_to_vec() != y.encode_to_vec() {
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

/// Sends with the JavaScript SDK's `exporter` (`send.mjs`) to `spool`; the SDK's
/// own encoding of what it sent, or the exporter's error.
async fn js_send(
    node: &std::path::Path,
    spool: &Spool,
    exporter: &'static str,
    compression: &'static str,
    quirk: Option<&'static str>,
) -> Result<ExportTraceServiceRequest, String> {
    let endpoint = match exporter {
        "grpc" => spool.grpc_endpoint(),
        _ => spool.http_endpoint(),
    };
    let node = node.to_path_buf();
    tokio::task::spawn_blocking(move || {
        support::node::send(&node, exporter, &endpoint, compression, quirk)
    })
    .await
    .unwrap()
    .map(|pb| ExportTraceServiceRequest::decode(&pb[..]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_exporters_deliver_every_span_equal_to_the_sdks_own_encoding() {
    let name = "javascript_sdk_exporters_deliver_every_span_equal_to_the_sdks_own_encoding";
    let Some(node) = support::node::available(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::started_to(dir.path(), &backend);
    let mut cells = Vec::new();
    for exporter in ["http-json", "http-proto", "grpc"] {
        for compression in ["none", "gzip"] {
            let sdk = js_send(&node, &spool, exporter, compression, None)
                .await
                .unwrap_or_else(|e| panic!("the SDK's export failed: {e}"));
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
    let mut spool = Spool::started_to(dir.path(), &backend);
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

/// The spans of the Rust cells, made through the Rust SDK's API (a remote parent
/// with a tracestate, every kind, links, events, an error status, more attributes
/// than the limit so that counts are dropped) and collected as the SDK hands them
/// to an exporter.
mod rust_sdk {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry::trace::{
        Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
        TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
    use opentelemetry_sdk::Resource;

    /// What the SDK gives its exporter at each span's end.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// Attributes past the per-span limit (dropped, and counted).
    pub const MAX_ATTRIBUTES: u32 = 24;

    /// The non-finite doubles: the protobuf exporters carry them; the JSON one
    /// writes them as `null` (serde_json), not as the mapping's strings.
    pub const NON_FINITE: [&str; 3] = ["double.nan", "double.inf", "double.neginf"];

    /// `spans` spans of service `service`; `non_finite` adds NaN and ±∞ doubles.
    pub fn spans(service: &str, spans: usize, non_finite: bool) -> (Resource, Vec<SpanData>) {
        let resource = Resource::builder_empty()
            .with_service_name(service.to_string())
            .with_attributes([
                KeyValue::new("res.unicode", "värde ✓ 日本"),
                KeyValue::new("res.int", i64::MIN),
            ])
            .build();
        let collect = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(collect.clone())
            .with_resource(resource.clone())
            .with_max_attributes_per_span(MAX_ATTRIBUTES)
            .with_max_events_per_span(3)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("tracespool-interop")
                .with_version("1.2.3")
                .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
                .with_attributes([KeyValue::new("scope.n", 7)])
                .build(),
        );
        let mut rng = fastrand::Rng::with_seed(service.len() as u64 * 7919);
        let mut double = move || loop {
            let d = f64::from_bits(rng.u64(..));
            if d.is_finite() {
                return d;
            }
        };
        let state = TraceState::from_key_value([("vendor", "v1"), ("other", "x:y")]).unwrap();
        let kinds = [
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        for i in 0..spans {
            let parent = SpanContext::new(
                TraceId::from((i as u128 + 1) << 64 | 0xabc),
                SpanId::from_bytes((i as u64 + 1).to_be_bytes()),
                TraceFlags::SAMPLED,
                true,
                state.clone(),
            );
            let cx = Context::new().with_remote_span_context(parent);
            let linked = SpanContext::new(
                TraceId::from(u128::MAX - i as u128),
                SpanId::from_bytes([0xfe; 8]),
                TraceFlags::default(),
                true,
                TraceState::from_key_value([("l", "1")]).unwrap(),
            );
            let mut attributes = vec![
                KeyValue::new("unicode", "ü ✓ 日本語 — ß"),
                KeyValue::new("empty", ""),
                KeyValue::new("int.max", i64::MAX),
                KeyValue::new("int.min", i64::MIN),
                KeyValue::new("int.past53", (1i64 << 53) + 1),
                KeyValue::new("int.neg53", -((1i64 << 53) - 1)),
                KeyValue::new("double.tiny", 5e-324),
                KeyValue::new("double.max", f64::MAX),
                KeyValue::new("double.neg", -8.485828396444299e-16),
                KeyValue::new("double.small", 1.5e-300),
                KeyValue::new("double.negzero", -0.0),
                KeyValue::new("double.random", double()),
                KeyValue::new("double.random2", double()),
                KeyValue::new("bool", i % 2 == 0),
                KeyValue::new("arr.int", Value::Array(Array::I64(vec![1, -2, i64::MAX]))),
                KeyValue::new(
                    "arr.double",
                    Value::Array(Array::F64(vec![0.1, double(), 1.5e-300])),
                ),
                KeyValue::new("arr.bool", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new(
                    "arr.string",
                    Value::Array(Array::String(vec![
                        StringValue::from("a"),
                        StringValue::from("日本"),
                        StringValue::from(""),
                    ])),
                ),
            ];
            if non_finite {
                attributes.extend([
                    KeyValue::new("double.nan", f64::NAN),
                    KeyValue::new("double.inf", f64::INFINITY),
                    KeyValue::new("double.neginf", f64::NEG_INFINITY),
                ]);
            }
            // Past the limit on every fourth span: dropped and counted.
            if i % 4 == 0 {
                attributes.extend(
                    (0..MAX_ATTRIBUTES).map(|k| KeyValue::new(format!("extra.{k}"), k as i64)),
                );
            }
            let mut span = tracer
                .span_builder(format!("{service} span {i} ✓"))
                .with_kind(kinds[i % kinds.len()].clone())
                .with_attributes(attributes)
                .with_links(vec![Link::new(
                    linked,
                    vec![KeyValue::new("l.s", "x"), KeyValue::new("l.n", -1)],
                    0,
                )])
                .start_with_context(&tracer, &cx);
            for e in 0..(i % 5) {
                span.add_event(
                    format!("event {e} ß"),
                    vec![KeyValue::new("e.d", 1.5e-300), KeyValue::new("e.s", "ß")],
                );
            }
            match i % 3 {
                0 => span.set_status(Status::error(format!("fehlgeschlagen ✗ 失敗 {i}"))),
                1 => span.set_status(Status::Ok),
                _ => {}
            }
            span.end();
        }
        let collected = std::mem::take(&mut *collect.0.lock().unwrap());
        (resource, collected)
    }
}

/// Exports the Rust cell `cell`'s spans with the official exporter (`grpc`,
/// `http-proto` or `http-json`), and returns the SDK's own encoding of them (the
/// function the exporter itself encodes with).
async fn rust_export(
    spool: &Spool,
    exporter: &str,
    gzip: bool,
    cell: &str,
    non_finite: bool,
) -> ExportTraceServiceRequest {
    use opentelemetry_otlp::{
        Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
    };
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::SpanExporter as _;

    let (resource, spans) = rust_sdk::spans(cell, 30, non_finite);
    let compression = gzip.then_some(opentelemetry_otlp::Compression::Gzip);
    let built = if exporter == "grpc" {
        let b = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(spool.grpc_endpoint());
        match compression {
            Some(c) => b.with_compression(c).build(),
            None => b.build(),
        }
    } else {
        let protocol = match exporter {
            "http-json" => Protocol::HttpJson,
            _ => Protocol::HttpBinary,
        };
        let b = SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(spool.http_endpoint());
        match compression {
            Some(c) => b.with_compression(c).build(),
            None => b.build(),
        }
    };
    let mut client = built.unwrap_or_else(|e| panic!("{cell}: building the exporter: {e}"));
    client.set_resource(&resource);
    let sdk = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(spans.clone(), &(&resource).into()),
    };
    client
        .export(spans)
        .await
        .unwrap_or_else(|e| panic!("{cell}: the SDK's export failed: {e}"));
    assert_eq!(spans_of(&sdk).count(), 30, "{cell}: the SDK's batch");
    sdk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_exporters_deliver_every_span_equal_to_the_sdks_own_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::started_to(dir.path(), &backend);
    let mut want = Vec::new();
    for exporter in ["grpc", "http-proto", "http-json"] {
        for gzip in [false, true] {
            let cell = format!("rust-{exporter}-{}", if gzip { "gzip" } else { "plain" });
            // NaN and ±∞ where the encoding can carry them.
            let sdk = rust_export(&spool, exporter, gzip, &cell, exporter != "http-json").await;
            want.push((cell, sdk));
        }
    }
    // The JSON exporter's quirk: NaN and ±∞ leave it as `null`; such a value
    // arrives empty (an AnyValue without a value), and nothing else changes.
    let mut quirk = rust_export(&spool, "http-json", false, "rust-json-non-finite", true).await;
    let emptied = empty_values(&mut quirk, &rust_sdk::NON_FINITE);
    assert_eq!(emptied, 30 * rust_sdk::NON_FINITE.len());
    want.push(("rust-http-json non-finite".into(), quirk));
    assert_each_arrived_once_and_equal(&backend, &want).await;

    let all: Vec<_> = want.iter().flat_map(|(_, r)| spans_of(r)).collect();
    assert!(
        all.iter().any(|s| s.dropped_attributes_count > 0),
        "no dropped attributes"
    );
    assert!(
        all.iter().any(|s| s.dropped_events_count > 0),
        "no dropped events"
    );
    assert!(all.iter().all(|s| s.trace_state == "vendor=v1,other=x:y"));
    assert_eq!(
        all.iter()
            .map(|s| s.kind)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        5
    );
    println!(
        "rust: {} cells of 30 spans, each equal to the SDK's encoding",
        want.len() - 1
    );
    spool.terminate();
}

/// The README's quirks, with the JavaScript SDK itself: what its exporters write
/// for a whole double past 2^53, for NaN and ±∞, and for a lone surrogate, and
/// what tracespool does with each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_quirks_are_handled_as_the_readme_says() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    let name = "javascript_sdk_quirks_are_handled_as_the_readme_says";
    let Some(node) = support::node::available(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::started_to(dir.path(), &backend);
    let mut sent = std::collections::BTreeMap::new();
    for quirk in ["huge-double", "non-finite", "lone-surrogate"] {
        for exporter in ["http-json", "http-proto", "grpc"] {
            let r = js_send(&node, &spool, exporter, "none", Some(quirk)).await;
            sent.insert((quirk, exporter), r);
        }
    }
    // What the SDK's encoders wrote: the one attribute's value.
    let value = |quirk, exporter, key: &str| -> Option<Value> {
        let r = sent[&(quirk, exporter)].as_ref().unwrap();
        spans_of(r)
            .next()?
            .attributes
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .clone()?
            .value
    };
    let refusal = |quirk, exporter| -> &str {
        match &sent[&(quirk, exporter)] {
            Err(e) => e,
            Ok(_) => panic!("{quirk} over {exporter} was accepted"),
        }
    };
    // 1e300 over JSON: written as "intValue": 1e+300, refused naming the path.
    let e = refusal("huge-double", "http-json");
    assert!(e.contains("(code 400)"), "{e}");
    assert!(
        e.contains(r#"attributes[\"huge.double\"].value.intValue: expected a 64-bit integer"#),
        "{e}"
    );
    // ... over protobuf: a double, as given.
    for exporter in ["http-proto", "grpc"] {
        assert_eq!(
            value("huge-double", exporter, "huge.double"),
            Some(Value::DoubleValue(1e300)),
            "{exporter}"
        );
    }
    // A lone surrogate over JSON: written as \ud800, refused naming the key.
    let e = refusal("lone-surrogate", "http-json");
    assert!(
        e.contains(r#"attributes[\"broken\"].value.stringValue: a \\u escape that is not a whole Unicode character"#),
        "{e}"
    );
    // ... over protobuf: the SDK writes U+FFFD in its place (valid UTF-8).
    for exporter in ["http-proto", "grpc"] {
        assert_eq!(
            value("lone-surrogate", exporter, "broken"),
            Some(Value::StringValue("a\u{fffd}b".into())),
            "{exporter}"
        );
    }
    // NaN and ±∞ over protobuf: kept, bit for bit (checked below on arrival).
    for exporter in ["http-proto", "grpc"] {
        assert!(
            matches!(value("non-finite", exporter, "d.nan"), Some(Value::DoubleValue(d)) if d.is_nan())
        );
        assert_eq!(
            value("non-finite", exporter, "d.neginf"),
            Some(Value::DoubleValue(f64::NEG_INFINITY))
        );
    }
    // Everything accepted arrives once, equal to the SDK's encoding; over JSON the
    // non-finite values (written as null) arrive without a value, nothing else
    // changed.
    let mut want = Vec::new();
    for ((quirk, exporter), r) in &sent {
        let Ok(r) = r else { continue };
        let mut r = r.clone();
        if *exporter == "http-json" {
            assert_eq!(empty_values(&mut r, &["d.nan", "d.inf", "d.neginf"]), 3);
        }
        want.push((format!("{quirk} over {exporter}"), r));
    }
    assert_eq!(want.len(), 7, "two refusals of nine");
    assert_each_arrived_once_and_equal(&backend, &want).await;
    assert_eq!(
        spool
            .metric(r#"tracespool_receiver_requests_total{protocol="http/json",outcome="invalid"}"#)
            .await,
        2.0
    );
    spool.terminate();
}
