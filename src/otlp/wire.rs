//! A check of an OTLP `ExportTraceServiceRequest` in protobuf wire format, without
//! decoding it: the hot path stores what the client sent, byte for byte, so it only
//! needs to know that the bytes are a well-formed request and how many spans they
//! hold.
//!
//! The walk follows the OTLP trace schema: every field of a known message must have
//! the wire type the schema gives it, every length must fit, strings must be UTF-8,
//! trace ids 16 bytes and span ids 8 (or empty), and nesting is bounded. Unknown
//! fields (newer schema versions) are skipped, as protobuf requires. It allocates
//! nothing and reads every byte at most once.

use std::fmt;

/// What a valid request holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub resource_spans: u32,
    pub spans: u32,
}

/// Why the bytes are not a valid request: what, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub offset: usize,
    pub what: String,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed OTLP protobuf at byte {}: {}",
            self.offset, self.what
        )
    }
}

impl std::error::Error for WireError {}

/// Deepest nesting of messages accepted (AnyValue arrays and maps nest).
const MAX_DEPTH: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Msg {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    EntityRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Message(Msg),
    Str,
    Bytes,
    /// Bytes that are an id of this many bytes, or empty.
    Id(usize),
    Varint,
    Fixed64,
    Fixed32,
    Unknown,
}

fn kind(msg: Msg, field: u32) -> Kind {
    use Kind::*;
    use Msg::*;
    match (msg, field) {
        (Request, 1) => Message(ResourceSpans),
        (ResourceSpans, 1) => Message(Resource),
        (ResourceSpans, 2) => Message(ScopeSpans),
        (ResourceSpans, 3) => Str,
        (Resource, 1) => Message(KeyValue),
        (Resource, 2) => Varint,
        (Resource, 3) => Message(EntityRef),
        (ScopeSpans, 1) => Message(Scope),
        (ScopeSpans, 2) => Message(Span),
        (ScopeSpans, 3) => Str,
        (Scope, 1 | 2) => Str,
        (Scope, 3) => Message(KeyValue),
        (Scope, 4) => Varint,
        (Span, 1) => Id(16),
        (Span, 2 | 4) => Id(8),
        (Span, 3 | 5) => Str,
        (Span, 6 | 10 | 12 | 14) => Varint,
        (Span, 7 | 8) => Fixed64,
        (Span, 9) => Message(KeyValue),
        (Span, 11) => Message(Event),
        (Span, 13) => Message(Link),
        (Span, 15) => Message(Status),
        (Span, 16) => Fixed32,
        (Event, 1) => Fixed64,
        (Event, 2) => Str,
        (Event, 3) => Message(KeyValue),
        (Event, 4) => Varint,
        (Link, 1) => Id(16),
        (Link, 2) => Id(8),
        (Link, 3) => Str,
        (Link, 4) => Message(KeyValue),
        (Link, 5) => Varint,
        (Link, 6) => Fixed32,
        (Status, 2) => Str,
        (Status, 3) => Varint,
        (KeyValue, 1) => Str,
        (KeyValue, 2) => Message(AnyValue),
        (KeyValue, 3) => Varint,
        (AnyValue, 1) => Str,
        (AnyValue, 2 | 3 | 8) => Varint,
        (AnyValue, 4) => Fixed64,
        (AnyValue, 5) => Message(ArrayValue),
        (AnyValue, 6) => Message(KeyValueList),
        (AnyValue, 7) => Bytes,
        (ArrayValue, 1) => Message(AnyValue),
        (KeyValueList, 1) => Message(KeyValue),
        (EntityRef, 1..=4) => Str,
        _ => Unknown,
    }
}

/// Checks `buf` is a well-formed `ExportTraceServiceRequest` and counts its spans.
pub fn inspect_trace_request(buf: &[u8]) -> Result<Summary, WireError> {
    let mut summary = Summary::default();
    walk(Msg::Request, buf, 0, 0, &mut summary)?;
    Ok(summary)
}

fn err(offset: usize, what: impl Into<String>) -> WireError {
    WireError {
        offset,
        what: what.into(),
    }
}

/// Reads a varint at `*pos`, advancing it.
#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize, base: usize) -> Result<u64, WireError> {
    // Tags and short lengths are one byte.
    if let Some(&b) = buf.get(*pos) {
        if b < 0x80 {
            *pos += 1;
            return Ok(b as u64);
        }
    }
    varint_slow(buf, pos, base)
}

#[inline(never)]
fn varint_slow(buf: &[u8], pos: &mut usize, base: usize) -> Result<u64, WireError> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some(&b) = buf.get(*pos) else {
            return Err(err(base + *pos, "truncated varint"));
        };
        *pos += 1;
        if i == 9 && b > 1 {
            return Err(err(base + *pos - 1, "varint longer than 64 bits"));
        }
        v |= ((b & 0x7F) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(err(base + *pos, "varint longer than 10 bytes"))
}

fn walk(
    msg: Msg,
    buf: &[u8],
    base: usize,
    depth: u32,
    summary: &mut Summary,
) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(err(
            base,
            format!("messages nested deeper than {MAX_DEPTH}"),
        ));
    }
    let mut pos = 0;
    while pos < buf.len() {
        let at = pos;
        let tag = varint(buf, &mut pos, base)?;
        let field = tag >> 3;
        let wire = (tag & 7) as u8;
        if field == 0 || field > u32::MAX as u64 >> 3 {
            return Err(err(base + at, format!("invalid field number {field}")));
        }
        let field = field as u32;
        let k = kind(msg, field);
        let expected = match k {
            Kind::Message(_) | Kind::Str | Kind::Bytes | Kind::Id(_) => Some(2),
            Kind::Varint => Some(0),
            Kind::Fixed64 => Some(1),
            Kind::Fixed32 => Some(5),
            Kind::Unknown => None,
        };
        if let Some(want) = expected {
            if wire != want {
                return Err(err(
                    base + at,
                    format!("{msg:?} field {field} has wire type {wire}, the schema says {want}"),
                ));
            }
        }
        match wire {
            0 => {
                varint(buf, &mut pos, base)?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if buf.len() - pos < n {
                    return Err(err(
                        base + pos,
                        format!("truncated {}-byte field {field}", n),
                    ));
                }
                pos += n;
            }
            2 => {
                let len = varint(buf, &mut pos, base)?;
                if len > (buf.len() - pos) as u64 {
                    return Err(err(
                        base + pos,
                        format!(
                            "{msg:?} field {field} claims {len} bytes, {} remain",
                            buf.len() - pos
                        ),
                    ));
                }
                let body = &buf[pos..pos + len as usize];
                match k {
                    Kind::Message(inner) => {
                        if inner == Msg::ResourceSpans {
                            summary.resource_spans = summary.resource_spans.saturating_add(1);
                        }
                        if inner == Msg::Span {
                            summary.spans = summary
                                .spans
                                .checked_add(1)
                                .ok_or_else(|| err(base + at, "more than 2^32 spans"))?;
                        }
                        walk(inner, body, base + pos, depth + 1, summary)?;
                    }
                    Kind::Str if std::str::from_utf8(body).is_err() => {
                        return Err(err(
                            base + pos,
                            format!("{msg:?} field {field} is not valid UTF-8"),
                        ));
                    }
                    Kind::Id(n) if !body.is_empty() && body.len() != n => {
                        return Err(err(
                            base + pos,
                            format!(
                                "{msg:?} field {field} is an id of {} bytes, expected {n}",
                                body.len()
                            ),
                        ));
                    }
                    _ => {}
                }
                pos += len as usize;
            }
            3 | 4 => return Err(err(base + at, "protobuf groups are not supported")),
            _ => return Err(err(base + at, format!("invalid wire type {wire}"))),
        }
    }
    Ok(())
}

/// The length-delimited fields of one message, in order, as `(field number,
/// bytes)`; other wire types are skipped. Stops at the first malformed byte.
fn delimited(mut buf: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    std::iter::from_fn(move || loop {
        let tag = varint(&mut buf)?;
        let skip = match tag & 7 {
            0 => {
                varint(&mut buf)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let body = buf.get(..len)?;
                buf = &buf[len..];
                return Some((tag >> 3, body));
            }
            _ => return None,
        };
        buf = buf.get(skip..)?;
    })
}

/// The `service.name` of the request's first resource, if it is a string.
pub fn first_service_name(request: &[u8]) -> Option<&str> {
    let (_, resource_spans) = delimited(request).find(|(f, _)| *f == 1)?;
    let (_, resource) = delimited(resource_spans).find(|(f, _)| *f == 1)?;
    for (_, kv) in delimited(resource).filter(|(f, _)| *f == 1) {
        let mut key = None;
        let mut value = None;
        for (f, b) in delimited(kv) {
            match f {
                1 => key = Some(b),
                2 => value = Some(b),
                _ => {}
            }
        }
        if key == Some(b"service.name".as_slice()) {
            let (_, s) = delimited(value?).find(|(f, _)| *f == 1)?;
            return std::str::from_utf8(s).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    pub(crate) fn request(resources: usize, spans_each: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..resources)
                .map(|r| ResourceSpans {
                    resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                        attributes: vec![kv(
                            "service.name",
                            any_value::Value::StringValue(format!("svc{r}")),
                        )],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: (0..spans_each)
                            .map(|i| Span {
                                trace_id: vec![r as u8 + 1; 16],
                                span_id: vec![i as u8 + 1; 8],
                                name: format!("span {i}"),
                                kind: 2,
                                start_time_unix_nano: 1,
                                end_time_unix_nano: 2,
                                attributes: vec![
                                    kv("n", any_value::Value::IntValue(i as i64)),
                                    kv(
                                        "arr",
                                        any_value::Value::ArrayValue(ArrayValue {
                                            values: vec![AnyValue {
                                                value: Some(any_value::Value::DoubleValue(1.5)),
                                            }],
                                        }),
                                    ),
                                ],
                                events: vec![span::Event {
                                    name: "e".into(),
                                    ..Default::default()
                                }],
                                links: vec![span::Link {
                                    trace_id: vec![9; 16],
                                    span_id: vec![9; 8],
                                    ..Default::default()
                                }],
                                status: Some(Status {
                                    message: "ok".into(),
                                    code: 1,
                                }),
                                flags: 0x101,
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn counts_spans_of_a_valid_request() {
        let bytes = request(3, 7).encode_to_vec();
        assert_eq!(
            inspect_trace_request(&bytes).unwrap(),
            Summary {
                resource_spans: 3,
                spans: 21
            }
        );
        assert_eq!(inspect_trace_request(&[]).unwrap().spans, 0);
    }

    #[test]
    fn every_truncation_of_a_valid_request_is_caught_or_still_valid() {
        // Cutting at a field boundary leaves a valid, shorter request; anywhere
        // else must be reported. Either way the walk must agree with prost.
        let bytes = request(2, 3).encode_to_vec();
        for len in 0..bytes.len() {
            let ours = inspect_trace_request(&bytes[..len]);
            let prost = ExportTraceServiceRequest::decode(&bytes[..len]);
            assert_eq!(ours.is_ok(), prost.is_ok(), "cut at {len}: ours {ours:?}");
        }
    }

    #[test]
    fn garbage_is_reported_with_its_offset() {
        let e = inspect_trace_request(b"\x0a\xff\xff\xff\xff\x0f").unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
        let e = inspect_trace_request(b"\x08\x01").unwrap_err();
        assert!(e.what.contains("wire type 0"), "{e}");
        assert_eq!(e.offset, 0);
        let e = inspect_trace_request(b"not protobuf at all").unwrap_err();
        assert!(
            e.to_string().starts_with("malformed OTLP protobuf at byte"),
            "{e}"
        );
    }

    #[test]
    fn wrong_id_lengths_and_bad_utf8_are_rejected() {
        let mut r = request(1, 1);
        r.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1; 15];
        let e = inspect_trace_request(&r.encode_to_vec()).unwrap_err();
        assert!(e.what.contains("id of 15 bytes"), "{e}");
        let mut r = request(1, 1);
        r.resource_spans[0].scope_spans[0].spans[0].name = "\u{fffd}".into();
        let mut bytes = r.encode_to_vec();
        let at = bytes
            .windows(3)
            .position(|w| w == "\u{fffd}".as_bytes())
            .unwrap();
        bytes[at] = 0xff;
        let e = inspect_trace_request(&bytes).unwrap_err();
        assert!(e.what.contains("UTF-8"), "{e}");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut v = AnyValue {
            value: Some(any_value::Value::StringValue("leaf".into())),
        };
        for _ in 0..100 {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let mut r = request(1, 1);
        r.resource_spans[0].scope_spans[0].spans[0].attributes = vec![KeyValue {
            key: "deep".into(),
            value: Some(v),
            ..Default::default()
        }];
        let e = inspect_trace_request(&r.encode_to_vec()).unwrap_err();
        assert!(e.what.contains("nested deeper"), "{e}");
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = request(1, 2).encode_to_vec();
        // Field 99, LEN, 3 bytes — a field from a future schema.
        bytes.extend_from_slice(&[0x9a, 0x06, 3, 1, 2, 3]);
        assert_eq!(inspect_trace_request(&bytes).unwrap().spans, 2);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = inspect_trace_request(&bytes);
        }

        #[test]
        fn single_byte_changes_never_panic_and_valid_results_decode(
            at in 0usize..2000, val in proptest::prelude::any::<u8>()
        ) {
            let mut bytes = request(2, 4).encode_to_vec();
            let at = at % bytes.len();
            bytes[at] = val;
            if let Ok(s) = inspect_trace_request(&bytes) {
                // Whatever we accept, prost (what backends use) decodes too, with
                // the span count we report.
                let decoded = ExportTraceServiceRequest::decode(&bytes[..]);
                proptest::prop_assert!(decoded.is_ok(), "accepted but prost fails: {:?}", decoded);
                let n: usize = decoded.unwrap().resource_spans.iter()
                    .flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                proptest::prop_assert_eq!(n as u32, s.spans);
            }
        }
    }

    #[test]
    fn first_service_name_reads_the_first_resource() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
        use prost::Message;
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let rs = |attrs: Vec<KeyValue>| ResourceSpans {
            resource: Some(Resource {
                attributes: attrs,
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                rs(vec![kv("host.name", "a"), kv("service.name", "checkout")]),
                rs(vec![kv("service.name", "other")]),
            ],
        }
        .encode_to_vec();
        assert_eq!(first_service_name(&req), Some("checkout"));
        let none = ExportTraceServiceRequest {
            resource_spans: vec![rs(vec![kv("host.name", "a")])],
        }
        .encode_to_vec();
        assert_eq!(first_service_name(&none), None);
        assert_eq!(first_service_name(&req[..req.len() / 2]), None);
        assert_eq!(first_service_name(&[0xff; 12]), None);
    }
}
