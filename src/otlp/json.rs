//! OTLP/JSON: converted once, on receipt, to the protobuf bytes the log stores.
//!
//! The JSON mapping (OTLP specification, "JSON Protobuf Encoding") — hex trace and
//! span ids in either case, enums as integers, 64-bit integers as strings or numbers,
//! lowerCamelCase keys, unknown keys ignored — is implemented by the
//! `opentelemetry-proto` crate's serde support; this module adds the checks and the
//! error messages.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::wire::{inspect_trace_request, Summary};

/// Converts an OTLP/JSON trace request to protobuf bytes and counts its spans.
pub fn json_to_protobuf(body: &[u8]) -> Result<(Vec<u8>, Summary), String> {
    let req: ExportTraceServiceRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid OTLP JSON: {}", describe(&e)))?;
    let bytes = req.encode_to_vec();
    // The same checks as a protobuf request (id lengths, for instance).
    let summary =
        inspect_trace_request(&bytes).map_err(|e| format!("invalid OTLP JSON: {}", e.what))?;
    Ok((bytes, summary))
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
}
