//! OTLP/JSON: converted once, on receipt, to the protobuf bytes the log stores.
//!
//! The JSON mapping (OTLP specification, "JSON Protobuf Encoding") — hex trace and
//! span ids in either case, enums as integers, 64-bit integers as strings or numbers,
//! lowerCamelCase keys, unknown keys ignored — is implemented by the
//! `opentelemetry-proto` crate's serde support; this module adds the checks and the
//! error messages.
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

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::wire::{inspect_trace_request, Summary};

/// Converts an OTLP/JSON trace request to protobuf bytes and counts its spans.
pub fn json_to_protobuf(body: &[u8]) -> Result<(Vec<u8>, Summary), String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| format!("invalid OTLP JSON: {}", explain(body, &e)))
        .and_then(|req: ExportTraceServiceRequest| {
            de.end()
                .map_err(|e| format!("invalid OTLP JSON: {}", describe(&e)))?;
            Ok(req)
        });
    let req = match parsed {
        Ok(req) => req,
        // Read again only if spelled-out doubles were in the way; then its own
        // error (past them) is the one that counts.
        Err(e) => non_finite::read(body).unwrap_or(Err(e))?,
    };
    let bytes = req.encode_to_vec();
    // The same checks as a protobuf request (id lengths, for instance).
    let summary =
        inspect_trace_request(&bytes).map_err(|e| format!("invalid OTLP JSON: {}", e.what))?;
    Ok((bytes, summary))
}

/// The proto3 JSON mapping spells non-finite doubles as strings (`"NaN"`,
/// `"Infinity"`, `"-Infinity"`, as Go's protojson and the Collector write them);
/// the crate's AnyValue reader takes numbers only. A request that failed for that
/// is read again with each such value replaced by a sentinel double the document
/// does not hold anywhere else, and the sentinels put back as NaN and ±∞.
mod non_finite {
    use std::collections::HashSet;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use serde_json::Value as J;

    const SPELLED: [(&str, f64); 3] = [
        ("NaN", f64::NAN),
        ("Infinity", f64::INFINITY),
        ("-Infinity", f64::NEG_INFINITY),
    ];

    /// `None` when the document spells no double out; else the request read with
    /// them, or what else is wrong with it.
    pub fn read(body: &[u8]) -> Option<Result<ExportTraceServiceRequest, String>> {
        if memchr::memmem::find(body, b"NaN").is_none()
            && memchr::memmem::find(body, b"Infinity").is_none()
        {
            return None;
        }
        let mut doc: J = serde_json::from_slice(body).ok()?;
        let mut present = HashSet::new();
        numbers(&doc, &mut present);
        // Three subnormals the document does not hold.
        let mut sentinels = [0u64; 3];
        let mut candidate = 0x000f_ade0_0000_0001u64;
        for s in &mut sentinels {
            while present.contains(&candidate) {
                candidate += 1;
            }
            *s = candidate;
            candidate += 1;
        }
        if !replace(&mut doc, &sentinels) {
            return None;
        }
        let mut req: ExportTraceServiceRequest = match serde_path_to_error::deserialize(doc) {
            Ok(r) => r,
            Err(e) => {
                return Some(Err(format!(
                    "invalid OTLP JSON: {}",
                    super::explain(body, &e)
                )))
            }
        };
        for rs in &mut req.resource_spans {
            if let Some(r) = rs.resource.as_mut() {
                restore_all(&mut r.attributes, &sentinels);
            }
            for ss in &mut rs.scope_spans {
                if let Some(sc) = ss.scope.as_mut() {
                    restore_all(&mut sc.attributes, &sentinels);
                }
                for span in &mut ss.spans {
                    restore_all(&mut span.attributes, &sentinels);
                    for e in &mut span.events {
                        restore_all(&mut e.attributes, &sentinels);
                    }
                    for l in &mut span.links {
                        restore_all(&mut l.attributes, &sentinels);
                    }
                }
            }
        }
        Some(Ok(req))
    }

    /// The bit patterns of every number in the document.
    fn numbers(v: &J, out: &mut HashSet<u64>) {
        match v {
            J::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(f.to_bits());
                }
            }
            J::Array(a) => a.iter().for_each(|v| numbers(v, out)),
            J::Object(o) => o.values().for_each(|v| numbers(v, out)),
            _ => {}
        }
    }

    /// Puts a sentinel in for every spelled-out `doubleValue`; whether there was one.
    fn replace(v: &mut J, sentinels: &[u64; 3]) -> bool {
        match v {
            J::Array(a) => a
                .iter_mut()
                .fold(false, |any, v| replace(v, sentinels) | any),
            J::Object(o) => {
                let mut any = false;
                if let Some(d) = o.get_mut("doubleValue") {
                    let spelled = d
                        .as_str()
                        .and_then(|s| SPELLED.iter().position(|(w, _)| *w == s));
                    if let Some(i) = spelled {
                        let n = serde_json::Number::from_f64(f64::from_bits(sentinels[i]));
                        if let Some(n) = n {
                            *d = J::Number(n);
                            any = true;
                        }
                    }
                }
                o.values_mut()
                    .fold(any, |any, v| replace(v, sentinels) | any)
            }
            _ => false,
        }
    }

    fn restore_all(kvs: &mut [KeyValue], sentinels: &[u64; 3]) {
        for kv in kvs {
            if let Some(v) = kv.value.as_mut() {
                restore(v, sentinels);
            }
        }
    }

    fn restore(v: &mut AnyValue, sentinels: &[u64; 3]) {
        match v.value.as_mut() {
            Some(Value::DoubleValue(d)) => {
                if let Some(i) = sentinels.iter().position(|s| *s == d.to_bits()) {
                    *d = SPELLED[i].1;
                }
            }
            Some(Value::ArrayValue(a)) => a.values.iter_mut().for_each(|v| restore(v, sentinels)),
            Some(Value::KvlistValue(l)) => restore_all(&mut l.values, sentinels),
            _ => {}
        }
    }
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
    // The crate's AnyValue reader is one step: name the field that failed.
    if out.ends_with(".value") {
        if let Some(field) = at.and_then(|v| v.as_object()).and_then(|o| o.keys().next()) {
            out.push('.');
            out.push_str(field);
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

/// What is wrong, in words (serde's messages name our types, not the mapping's).
fn reason(e: &serde_json::Error) -> String {
    let msg = describe(e);
    // (No position when the document was read again as a tree.)
    let at = match e.line() {
        0 => String::new(),
        line => format!(" (at line {line} column {})", e.column()),
    };
    if msg.contains("untagged enum StringOrInt") {
        format!("expected a 64-bit integer, as a JSON number or a string of decimal digits{at}")
    } else if msg.contains("surrogate") || msg.contains("hex escape") {
        format!(
            "a \\u escape that is not a whole Unicode character (a lone UTF-16 surrogate such as \\ud800, which JavaScript's JSON.stringify writes for a broken string); OTLP strings must be valid Unicode{at}"
        )
    } else if msg.contains("invalid digit found in string") || msg.contains("number too large") {
        format!("expected a 64-bit integer, got a string that is not one{at}")
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
        // The first sentinel candidate is also in the document as a real value:
        // it stays as it is.
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
