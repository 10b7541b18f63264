//! The JSON intake's property test: random OTLP trace requests — every field of
//! every message, attribute values of every type nested in arrays and key-value
//! lists — written as the SDKs write OTLP/JSON (hex ids in either case, 64-bit
//! integers as numbers or strings, enums as integers, doubles as the shortest text
//! that reads back as them), read by our intake, come out as protobuf equal to the
//! original field by field.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use serde_json::{json, Value as J};

use super::json_to_protobuf;

fn text() -> impl Strategy<Value = String> {
    // Unicode, quotes, backslashes and control characters included.
    prop_oneof![
        ".{0,10}",
        "[a-z.]{1,8}",
        Just("\"\\\n\t\u{1}é✓日".to_string())
    ]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        any::<f64>(),
        Just(5e-324),
        Just(f64::MAX),
        Just(-0.0),
    ]
    .prop_filter("finite", |d| d.is_finite())
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        text().prop_map(Value::StringValue),
        any::<bool>().prop_map(Value::BoolValue),
        any::<i64>().prop_map(Value::IntValue),
        double().prop_map(Value::DoubleValue),
        vec(any::<u8>(), 0..12).prop_map(Value::BytesValue),
    ]
    .prop_map(|v| AnyValue { value: Some(v) });
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|values| Value::ArrayValue(ArrayValue { values })),
            vec(key_value_with(inner), 0..4)
                .prop_map(|values| Value::KvlistValue(KeyValueList { values })),
        ]
        .prop_map(|v| AnyValue { value: Some(v) })
    })
}

fn key_value_with(v: impl Strategy<Value = AnyValue>) -> impl Strategy<Value = KeyValue> {
    (text(), v).prop_map(|(key, value)| KeyValue {
        key,
        value: Some(value),
        ..Default::default()
    })
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    vec(key_value_with(any_value()), 0..4)
}

fn id(n: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), n..=n)
}

fn span() -> impl Strategy<Value = Span> {
    let event =
        (any::<u64>(), text(), attributes(), any::<u32>()).prop_map(|(t, name, attributes, d)| {
            span::Event {
                time_unix_nano: t,
                name,
                attributes,
                dropped_attributes_count: d,
            }
        });
    let link = (
        id(16),
        id(8),
        text(),
        attributes(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(trace_id, span_id, trace_state, attributes, d, flags)| span::Link {
                trace_id,
                span_id,
                trace_state,
                attributes,
                dropped_attributes_count: d,
                flags,
            },
        );
    (
        (
            id(16),
            id(8),
            text(),
            prop_oneof![Just(vec![]), id(8)],
            any::<u32>(),
            text(),
        ),
        (
            0..=5i32,
            any::<u64>(),
            any::<u64>(),
            attributes(),
            any::<u32>(),
        ),
        (
            vec(event, 0..3),
            any::<u32>(),
            vec(link, 0..2),
            any::<u32>(),
        ),
        proptest::option::of((text(), 0..=2i32)),
    )
        .prop_map(
            |(
                (trace_id, span_id, trace_state, parent_span_id, flags, name),
                (kind, start, end, attributes, dropped_attributes_count),
                (events, dropped_events_count, links, dropped_links_count),
                status,
            )| Span {
                trace_id,
                span_id,
                trace_state,
                parent_span_id,
                flags,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                dropped_attributes_count,
                events,
                dropped_events_count,
                links,
                dropped_links_count,
                status: status.map(|(message, code)| Status { message, code }),
            },
        )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope =
        (text(), text(), attributes(), any::<u32>()).prop_map(|(name, version, attributes, d)| {
            InstrumentationScope {
                name,
                version,
                attributes,
                dropped_attributes_count: d,
            }
        });
    let scope_spans = (proptest::option::of(scope), vec(span(), 0..3), text()).prop_map(
        |(scope, spans, schema_url)| ScopeSpans {
            scope,
            spans,
            schema_url,
        },
    );
    let resource = (attributes(), any::<u32>()).prop_map(|(attributes, d)| Resource {
        attributes,
        dropped_attributes_count: d,
        ..Default::default()
    });
    let resource_spans = (
        proptest::option::of(resource),
        vec(scope_spans, 0..3),
        text(),
    )
        .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        });
    vec(resource_spans, 0..3)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

// ---- an OTLP/JSON writer, as the SDKs write it -------------------------------

/// Hex, upper case for some ids (receivers must take either).
fn hex(b: &[u8]) -> J {
    let upper = b.first().is_some_and(|x| x % 2 == 1);
    J::String(
        b.iter()
            .map(|x| {
                if upper {
                    format!("{x:02X}")
                } else {
                    format!("{x:02x}")
                }
            })
            .collect(),
    )
}

/// A 64-bit integer as a JSON number where it is exact in a double, else as a
/// string (as the JavaScript SDK does); some small ones as strings too.
fn int64(i: i128) -> J {
    if i.unsigned_abs() < (1 << 53) && i % 3 != 0 {
        json!(i as i64)
    } else {
        J::String(i.to_string())
    }
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn value(v: &AnyValue) -> J {
    match &v.value {
        None => json!({}),
        Some(Value::StringValue(s)) => json!({ "stringValue": s }),
        Some(Value::BoolValue(b)) => json!({ "boolValue": b }),
        Some(Value::IntValue(i)) => json!({ "intValue": int64(*i as i128) }),
        Some(Value::DoubleValue(d)) => json!({ "doubleValue": d }),
        Some(Value::BytesValue(b)) => json!({ "bytesValue": base64(b) }),
        Some(Value::ArrayValue(a)) => {
            json!({ "arrayValue": { "values": a.values.iter().map(value).collect::<Vec<_>>() } })
        }
        Some(Value::KvlistValue(l)) => json!({ "kvlistValue": { "values": attrs(&l.values) } }),
        // The profiles signal's string-table index: not in traces, not generated.
        Some(Value::StringValueStrindex(_)) => json!({}),
    }
}

fn attrs(kvs: &[KeyValue]) -> J {
    J::Array(
        kvs.iter()
            .map(|kv| json!({ "key": kv.key, "value": kv.value.as_ref().map(value).unwrap_or(json!({})) }))
            .collect(),
    )
}

fn write(r: &ExportTraceServiceRequest) -> String {
    let spans = |s: &[Span]| -> J {
        J::Array(
            s.iter()
                .map(|s| {
                    json!({
                        "traceId": hex(&s.trace_id), "spanId": hex(&s.span_id),
                        "traceState": s.trace_state, "parentSpanId": hex(&s.parent_span_id),
                        "flags": s.flags, "name": s.name, "kind": s.kind,
                        "startTimeUnixNano": int64(s.start_time_unix_nano as i128),
                        "endTimeUnixNano": int64(s.end_time_unix_nano as i128),
                        "attributes": attrs(&s.attributes),
                        "droppedAttributesCount": s.dropped_attributes_count,
                        "events": s.events.iter().map(|e| json!({
                            "timeUnixNano": int64(e.time_unix_nano as i128), "name": e.name,
                            "attributes": attrs(&e.attributes),
                            "droppedAttributesCount": e.dropped_attributes_count,
                        })).collect::<Vec<_>>(),
                        "droppedEventsCount": s.dropped_events_count,
                        "links": s.links.iter().map(|l| json!({
                            "traceId": hex(&l.trace_id), "spanId": hex(&l.span_id),
                            "traceState": l.trace_state, "attributes": attrs(&l.attributes),
                            "droppedAttributesCount": l.dropped_attributes_count, "flags": l.flags,
                        })).collect::<Vec<_>>(),
                        "droppedLinksCount": s.dropped_links_count,
                        "status": s.status.as_ref().map(|st| json!({ "message": st.message, "code": st.code })),
                    })
                })
                .collect(),
        )
    };
    let doc = json!({
        "resourceSpans": r.resource_spans.iter().map(|rs| json!({
            "resource": rs.resource.as_ref().map(|res| json!({
                "attributes": attrs(&res.attributes),
                "droppedAttributesCount": res.dropped_attributes_count,
            })),
            "scopeSpans": rs.scope_spans.iter().map(|ss| json!({
                "scope": ss.scope.as_ref().map(|sc| json!({
                    "name": sc.name, "version": sc.version, "attributes": attrs(&sc.attributes),
                    "droppedAttributesCount": sc.dropped_attributes_count,
                })),
                "spans": spans(&ss.spans),
                "schemaUrl": ss.schema_url,
            })).collect::<Vec<_>>(),
            "schemaUrl": rs.schema_url,
        })).collect::<Vec<_>>(),
    });
    doc.to_string()
}

#[test]
fn random_requests_written_as_sdks_write_json_come_out_equal_field_by_field() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 10_000,
        ..ProptestConfig::default()
    });
    runner
        .run(&request(), |r| {
            let body = write(&r);
            let (bytes, summary) = json_to_protobuf(body.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?;
            let got = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
            let spans: usize = r
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            prop_assert_eq!(summary.spans as usize, spans);
            prop_assert!(got == r, "{body}\n{got:?}\n!=\n{r:?}");
            Ok(())
        })
        .unwrap();
}
