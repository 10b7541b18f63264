//! OTLP/JSON: converted once, on receipt, to the protobuf bytes the log stores.
//!
//! The JSON mapping (OTLP specification, "JSON Protobuf Encoding", on the proto3
//! JSON mapping) is read by [`super::json_reader`], all of it: hex ids in either
//! case, integers and doubles as numbers or strings, enums as numbers or names,
//! either spelling of keys, `null` and absent fields as defaults, unknown keys
//! ignored. This module adds the checks and the error messages.
//!
//! **Doubles are exact.** serde_json is built with `float_roundtrip`: every
//! finite double an SDK writes (the shortest text that reads back as it) is read
//! back bit for bit. (Without it, 1 in 5 of the doubles a JavaScript SDK wrote came
//! out 1–2 ULP off.)
//!
//! **Refusals say where.** A request that does not fit the mapping is refused with
//! the OTLP path of the value (`resourceSpans[0].scopeSpans[0].spans[17]
//! .attributes["http.status"].value.intValue`, attribute keys by name) and what is
//! wrong with it in words, never with the value itself (the message goes back to
//! the client and into the audit ledger, which must not hold payload data).

use prost::Message;

use super::json_reader::Read;
use super::wire::{inspect_trace_request, Summary};

/// Converts an OTLP/JSON trace request to protobuf bytes and counts its spans.
pub fn json_to_protobuf(body: &[u8]) -> Result<(Vec<u8>, Summary), String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let read: Read = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| format!("invalid OTLP JSON: {}", explain(body, &e)))?;
    de.end()
        .map_err(|e| format!("invalid OTLP JSON: {}", describe(&e)))?;
    let bytes = read.0.encode_to_vec();
    // The same checks as a protobuf request (id lengths, for instance).
    let summary =
        inspect_trace_request(&bytes).map_err(|e| format!("invalid OTLP JSON: {}", e.what))?;
    Ok((bytes, summary))
}

/// `<path>: <what is wrong>`, for a value that does not fit the mapping.
fn explain(body: &[u8], e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let what = reason(e.inner());
    match otlp_path(body, e.path()) {
        p if p.is_empty() => what,
        p => format!("{p}: {what}"),
    }
}

/// The path in the OTLP/JSON document, with the elements of `attributes` (and of
/// key-value lists) named by their key when the document can be read that far.
fn otlp_path(body: &[u8], path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    // The document as a tree, to look the keys up: as it is, or with its lone
    // surrogates mended (the one syntax error a client's JSON.stringify makes);
    // when it cannot be read, elements go by index.
    let doc: Option<serde_json::Value> = serde_json::from_slice(body)
        .ok()
        .or_else(|| serde_json::from_slice(&mend_lone_surrogates(body)?).ok());
    let mut at = doc.as_ref();
    let mut out = String::new();
    let mut last_key = "";
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                let element = at.and_then(|v| v.get(*index));
                let key = element
                    .filter(|_| last_key == "attributes" || last_key == "values")
                    .and_then(|e| e.get("key"))
                    .and_then(|k| k.as_str());
                match key {
                    Some(k) => out.push_str(&format!("[{k:?}]")),
                    None => out.push_str(&format!("[{index}]")),
                }
                at = element;
            }
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
                at = at.and_then(|v| v.get(key.as_str()));
                last_key = key.as_str();
            }
            Segment::Enum { variant } => {
                out.push_str(&format!("::{variant}"));
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// `body` with each `\u` escape of a lone UTF-16 surrogate written as `\ufffd`
/// (a pair stays), or `None` when it has none. Only to name the keys on the path
/// of a refusal: what is stored is never mended.
fn mend_lone_surrogates(body: &[u8]) -> Option<Vec<u8>> {
    /// The code unit of a `\uXXXX` escape at `at` (which holds the backslash).
    fn unit(body: &[u8], at: usize) -> Option<u16> {
        let hex = body.get(at + 2..at + 6)?;
        (body.get(at + 1) == Some(&b'u'))
            .then(|| u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
            .flatten()
    }
    let is_high = |u: u16| (0xD800..0xDC00).contains(&u);
    let is_low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out = body.to_vec();
    let mut mended = false;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(body, i) {
            Some(u) if is_high(u) && unit(body, i + 6).is_some_and(is_low) => i += 12,
            Some(u) if is_high(u) || is_low(u) => {
                out[i + 2..i + 6].copy_from_slice(b"fffd");
                mended = true;
                i += 6;
            }
            // Another escape (`\\` among them): two bytes, or six for `\u`.
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    mended.then_some(out)
}

/// What is wrong, in words (the reader's own messages say what was expected; a
/// broken escape is the JSON parser's, and gets a word on where it comes from).
fn reason(e: &serde_json::Error) -> String {
    let msg = describe(e);
    if msg.contains("surrogate") || msg.contains("hex escape") {
        format!(
            "a \\u escape that is not a whole Unicode character (a lone UTF-16 surrogate such as \\ud800, which JavaScript's JSON.stringify writes for a broken string); OTLP strings must be valid Unicode (at line {} column {})",
            e.line(),
            e.column()
        )
    } else {
        msg
    }
}

/// serde_json's message without the values it quotes: it goes back to the client
/// and into the audit ledger, which must not hold payload data.
fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let mut out = String::with_capacity(msg.len());
    let mut quoted = false;
    for c in msg.chars() {
        match c {
            '"' if !quoted => {
                quoted = true;
                out.push_str("\"…");
            }
            '"' => {
                quoted = false;
                out.push('"');
            }
            _ if quoted => {}
            c => out.push(c),
        }
    }
    if quoted {
        out.push('"');
    }
    out
}

#[cfg(test)]
#[path = "json_roundtrip.rs"]
mod roundtrip;

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    const EXAMPLE: &str = include_str!("../../tests/data/otlp/trace.json");

    #[test]
    fn the_specification_example_is_accepted_with_upper_case_ids() {
        let (bytes, summary) = json_to_protobuf(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(summary.spans, 1);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, hex("5B8EFFF798038103D269B633813FC60C"));
        assert_eq!(span.span_id, hex("EEE19B7EC3C1B174"));
        assert_eq!(span.parent_span_id, hex("EEE19B7EC3C1B173"));
        assert_eq!(span.start_time_unix_nano, 1544712660000000000);
        assert_eq!(span.kind, 2);
        assert_eq!(span.name, "I'm a server span");
    }

    #[test]
    fn lower_case_ids_and_string_integers_are_accepted() {
        let body = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
            "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "name":"s","kind":3,"startTimeUnixNano":"1544712660000000000",
            "endTimeUnixNano":1544712661000000000,
            "attributes":[{"key":"n","value":{"intValue":"42"}}],
            "unknownField": true}]}]}]}"#;
        let (bytes, summary) = json_to_protobuf(body.as_bytes()).unwrap();
        assert_eq!(summary.spans, 1);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, hex("5B8EFFF798038103D269B633813FC60C"));
        assert_eq!(span.start_time_unix_nano, 1544712660000000000);
        assert_eq!(span.end_time_unix_nano, 1544712661000000000);
    }

    #[test]
    fn malformed_json_says_where() {
        let e = json_to_protobuf(b"{\"resourceSpans\": [").unwrap_err();
        assert!(
            e.starts_with("invalid OTLP JSON") && e.contains("line 1"),
            "{e}"
        );
        let e = json_to_protobuf(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"abc"}]}]}]}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("invalid OTLP JSON"), "{e}");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn errors_do_not_repeat_the_payload() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":{"secret":"hunter2@example.com"}}]}]}]}"#;
        let e = json_to_protobuf(body).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            e.starts_with("invalid OTLP JSON:") && e.contains("line 1"),
            "{e}"
        );
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not-hex-secret-value"}]}]}]}"#;
        let e = json_to_protobuf(body).unwrap_err();
        assert!(!e.contains("secret-value"), "{e}");
    }

    #[test]
    fn refusals_name_the_otlp_path_and_attribute_keys() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"a"},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","name":"b",
             "attributes":[{"key":"ok","value":{"intValue":"1"}},
                           {"key":"huge.double","value":{"intValue":1.5e300}}]}]}]}]}"#;
        let e = json_to_protobuf(body).unwrap_err();
        assert!(
            e.starts_with(
                "invalid OTLP JSON: resourceSpans[0].scopeSpans[0].spans[1].attributes[\"huge.double\"].value.intValue: expected a 64-bit integer"
            ),
            "{e}"
        );
        assert!(!e.contains("StringOrInt"), "{e}");
        // A lone surrogate, as JSON.stringify writes one.
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"a\ud800b"}]}]}]}"#;
        let e = json_to_protobuf(body).unwrap_err();
        assert!(
            e.starts_with("invalid OTLP JSON: resourceSpans[0].scopeSpans[0].spans[0].name: a \\u escape that is not a whole Unicode character"),
            "{e}"
        );
        // In an attribute, behind a surrogate pair and an escaped backslash: the
        // attribute by its key (the document read again, lone surrogates mended).
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"\ud83d\ude00 \\ud800",
             "attributes":[{"key":"ok \ud83d\ude00","value":{"stringValue":"\\udc00"}},
                           {"key":"broken","value":{"stringValue":"a\ud800b"}}]}]}]}]}"#;
        let e = json_to_protobuf(body).unwrap_err();
        assert!(
            e.starts_with("invalid OTLP JSON: resourceSpans[0].scopeSpans[0].spans[0].attributes[\"broken\"].value.stringValue: a \\u escape that is not a whole Unicode character"),
            "{e}"
        );
    }

    #[test]
    fn only_lone_surrogates_are_mended_for_naming_keys() {
        let mend =
            |s: &str| mend_lone_surrogates(s.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(mend(r#""\ud83d\ude00 \\ud800 \n""#), None);
        assert_eq!(mend(r#""a\ud800b""#).as_deref(), Some(r#""a\ufffdb""#));
        assert_eq!(
            mend(r#""\udc00\ud800""#).as_deref(),
            Some(r#""\ufffd\ufffd""#)
        );
        assert_eq!(
            mend(r#""\ud800\ud800\udc00""#).as_deref(),
            Some(r#""\ufffd\ud800\udc00""#)
        );
        assert_eq!(mend(r#""\ud8"#), None);
    }

    #[test]
    fn every_finite_double_reads_back_bit_for_bit() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 10_000,
            ..ProptestConfig::default()
        });
        // Any bit pattern that is a finite double: subnormals, extremes, both
        // zeros; written as the SDKs write them (the shortest text that reads
        // back as the same double, as JavaScript's and Python's repr do).
        let doubles = any::<u64>()
            .prop_map(f64::from_bits)
            .prop_filter("finite", |d| d.is_finite());
        runner
            .run(&(doubles, any::<i64>()), |(d, i)| {
                let body = format!(
                    r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"s","attributes":[{{"key":"d","value":{{"doubleValue":{d:?}}}}},{{"key":"i","value":{{"intValue":"{i}"}}}},{{"key":"n","value":{{"intValue":{i}}}}}]}}]}}]}}]}}"#
                );
                let (bytes, _) = json_to_protobuf(body.as_bytes()).map_err(TestCaseError::fail)?;
                let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
                let attrs = &req.resource_spans[0].scope_spans[0].spans[0].attributes;
                let value = |k: usize| attrs[k].value.as_ref().and_then(|v| v.value.clone());
                match value(0) {
                    Some(Value::DoubleValue(got)) => prop_assert_eq!(got.to_bits(), d.to_bits(), "{} read as {}", d, got),
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert_eq!(value(1), Some(Value::IntValue(i)));
                prop_assert_eq!(value(2), Some(Value::IntValue(i)));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn non_finite_doubles_spelled_as_the_mapping_spells_them_are_read() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        // A subnormal beside them stays as it is (the earlier reader put
        // sentinels like it in their place).
        let sentinel = f64::from_bits(0x000f_ade0_0000_0001);
        let body = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"s",
            "attributes":[{{"key":"nan","value":{{"doubleValue":"NaN"}}}},{{"key":"inf","value":{{"doubleValue":"Infinity"}}}},
                          {{"key":"real","value":{{"doubleValue":{sentinel:?}}}}},
                          {{"key":"arr","value":{{"arrayValue":{{"values":[{{"doubleValue":"-Infinity"}},{{"doubleValue":0.5}}]}}}}}},
                          {{"key":"kv","value":{{"kvlistValue":{{"values":[{{"key":"k","value":{{"doubleValue":"NaN"}}}}]}}}}}}],
            "events":[{{"name":"e","attributes":[{{"key":"d","value":{{"doubleValue":"Infinity"}}}}]}}]}}]}}]}}]}}"#
        );
        let (bytes, _) = json_to_protobuf(body.as_bytes()).unwrap();
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        let double = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::DoubleValue(d)) => *d,
            other => panic!("{other:?}"),
        };
        assert!(double(&span.attributes[0].value).is_nan());
        assert_eq!(double(&span.attributes[1].value), f64::INFINITY);
        assert_eq!(
            double(&span.attributes[2].value).to_bits(),
            sentinel.to_bits()
        );
        match span.attributes[3]
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::ArrayValue(a)) => {
                assert_eq!(double(&Some(a.values[0].clone())), f64::NEG_INFINITY);
                assert_eq!(double(&Some(a.values[1].clone())), 0.5);
            }
            other => panic!("{other:?}"),
        }
        match span.attributes[4]
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::KvlistValue(l)) => assert!(double(&l.values[0].value).is_nan()),
            other => panic!("{other:?}"),
        }
        assert_eq!(double(&span.events[0].attributes[0].value), f64::INFINITY);
        // Something else wrong past them is what the refusal names.
        let e =
            json_to_protobuf(body.replace("\"name\":\"s\"", "\"name\":7").as_bytes()).unwrap_err();
        assert!(e.contains("spans[0].name"), "{e}");
        // Other spellings are still refused, with the path.
        let e = json_to_protobuf(body.replace("\"NaN\"", "\"nan\"").as_bytes()).unwrap_err();
        assert!(e.contains("attributes[\"nan\"].value.doubleValue"), "{e}");
    }

    #[test]
    fn the_whole_proto3_json_mapping_is_read() {
        use opentelemetry_proto::tonic::common::v1::{any_value::Value, ArrayValue, KeyValueList};
        // What Go's protojson and hand-written clients write, all of it allowed by
        // the mapping: empty lists left out, nulls, a missing key, snake_case keys,
        // enums by name, 32-bit counts and doubles as strings, URL-safe base64.
        let body = br#"{"resource_spans":[{"resource":null,"scope_spans":[{"scope":{"name":null},"spans":[{
            "trace_id":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174","parentSpanId":null,
            "name":"s","kind":"SPAN_KIND_SERVER","trace_state":"a=b","start_time_unix_nano":1.5e18,
            "droppedAttributesCount":"3","dropped_events_count":4,"flags":"257","links":null,
            "status":{"code":"STATUS_CODE_ERROR","message":null},
            "attributes":[{"key":"arr","value":{"arrayValue":{}}},{"key":"kv","value":{"kvlistValue":{}}},
                          {"value":{"stringValue":"no key"}},{"key":"d","value":{"doubleValue":"-1.5e-3"}},
                          {"key":"one","value":{"doubleValue":1}},{"key":"b64","value":{"bytesValue":"-_8"}},
                          {"key":"b64std","value":{"bytes_value":"+/8="}},{"key":"none","value":{"stringValue":null}},
                          {"key":"big","value":{"int_value":"-9223372036854775808"}}],
            "events":[{"name":"e","attributes":null}]}]}]}]}"#;
        let (bytes, summary) = json_to_protobuf(body).unwrap();
        assert_eq!(summary.spans, 1);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let rs = &req.resource_spans[0];
        assert_eq!(rs.resource, None);
        assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "");
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.trace_id, hex("5B8EFFF798038103D269B633813FC60C"));
        assert!(span.parent_span_id.is_empty() && span.links.is_empty());
        assert_eq!((span.kind, span.trace_state.as_str()), (2, "a=b"));
        assert_eq!(span.start_time_unix_nano, 1_500_000_000_000_000_000);
        assert_eq!(
            (
                span.dropped_attributes_count,
                span.dropped_events_count,
                span.flags
            ),
            (3, 4, 257)
        );
        let status = span.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, ""));
        let values: Vec<_> = span
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().and_then(|v| v.value.clone()),
                )
            })
            .collect();
        assert_eq!(
            values,
            [
                (
                    "arr",
                    Some(Value::ArrayValue(ArrayValue { values: vec![] }))
                ),
                (
                    "kv",
                    Some(Value::KvlistValue(KeyValueList { values: vec![] }))
                ),
                ("", Some(Value::StringValue("no key".into()))),
                ("d", Some(Value::DoubleValue(-1.5e-3))),
                ("one", Some(Value::DoubleValue(1.0))),
                ("b64", Some(Value::BytesValue(vec![0xfb, 0xff]))),
                ("b64std", Some(Value::BytesValue(vec![0xfb, 0xff]))),
                ("none", None),
                ("big", Some(Value::IntValue(i64::MIN))),
            ]
        );
        assert_eq!(span.events[0].name, "e");
    }

    #[test]
    fn values_the_mapping_does_not_allow_are_refused_with_what_was_expected() {
        let span = |extra: &str| {
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"s"{extra}}}]}}]}}]}}"#
            )
        };
        for (extra, path, expected) in [
            (
                r#","kind":"SERVER""#,
                "spans[0].kind",
                "not the name of a span kind",
            ),
            (
                r#","status":{"code":"ERROR"}"#,
                "spans[0].status.code",
                "not the name of a status code",
            ),
            (
                r#","droppedAttributesCount":4294967296"#,
                "spans[0].droppedAttributesCount",
                "expected an unsigned 32-bit integer",
            ),
            (
                r#","droppedAttributesCount":-1"#,
                "spans[0].droppedAttributesCount",
                "expected an unsigned 32-bit integer",
            ),
            (
                r#","startTimeUnixNano":"1.5""#,
                "spans[0].startTimeUnixNano",
                "expected an unsigned 64-bit integer",
            ),
            (
                r#","attributes":[{"key":"i","value":{"intValue":"9223372036854775808"}}]"#,
                r#"attributes["i"].value.intValue"#,
                "expected a 64-bit integer",
            ),
            (
                r#","attributes":[{"key":"i","value":{"intValue":""}}]"#,
                r#"attributes["i"].value.intValue"#,
                "expected a 64-bit integer",
            ),
            (
                r#","attributes":[{"key":"d","value":{"doubleValue":"inf"}}]"#,
                r#"attributes["d"].value.doubleValue"#,
                "expected a double",
            ),
            (
                r#","attributes":[{"key":"b","value":{"bytesValue":"not base64!"}}]"#,
                r#"attributes["b"].value.bytesValue"#,
                "expected base64",
            ),
            (
                r#","attributes":[{"key":"two","value":{"stringValue":"a","intValue":1}}]"#,
                r#"attributes["two"].value"#,
                "more than one value in an AnyValue",
            ),
            (r#","traceState":7"#, "spans[0].traceState", "invalid type"),
        ] {
            let e = json_to_protobuf(span(extra).as_bytes()).unwrap_err();
            assert!(e.contains(&format!("{path}: {expected}")), "{extra}: {e}");
        }
    }

    #[test]
    fn unknown_fields_inside_a_value_are_ignored() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        // The mapping: unknown fields are ignored — here inside an AnyValue, before
        // and after the known one (a newer proto's field, say).
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"s",
            "attributes":[{"key":"a","value":{"futureField":{"x":[1,2]},"stringValue":"v","other":7}}]}]}]}]}"#;
        let (bytes, _) = json_to_protobuf(body).unwrap();
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let v = &req.resource_spans[0].scope_spans[0].spans[0].attributes[0].value;
        assert_eq!(
            v.as_ref().and_then(|v| v.value.clone()),
            Some(Value::StringValue("v".into()))
        );
    }
}
