//! The reader of an OTLP/JSON trace request: the proto3 JSON mapping, as the OTLP
//! specification narrows it, for the trace messages, read into the protobuf types.
//!
//! What the mapping allows, a sender may write, and it is read as the protobuf
//! it stands for:
//! - any field absent or `null`: its default (an empty list, `""`, 0, unset);
//! - keys lowerCamelCase (`traceId`) or as the `.proto` spells them (`trace_id`);
//!   unknown keys ignored, at every level, inside values too;
//! - integers (64-bit and 32-bit, signed and not) as JSON numbers — whole, in
//!   exponent form too — or as strings of decimal digits;
//! - doubles as numbers, as decimal strings, or as `"NaN"`, `"Infinity"`,
//!   `"-Infinity"`; read with correct rounding (serde_json's `float_roundtrip`):
//!   every finite double comes back bit for bit;
//! - enums (`kind`, `status.code`) as numbers or by name (`"SPAN_KIND_SERVER"`);
//! - trace and span ids as hex, in either case (OTLP's exception to base64);
//!   `bytesValue` as base64, standard or URL-safe, padded or not.
//!
//! A value that fits none of these is refused with what was expected, and where
//! (the caller turns serde's path into the OTLP path).

use std::fmt;

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::{Event, Link, SpanKind},
    status::StatusCode,
    ResourceSpans, ScopeSpans, Span, Status,
};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// One request, read from a deserializer (which the caller wraps to track the path).
pub struct Read(pub ExportTraceServiceRequest);

impl<'de> Deserialize<'de> for Read {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Request::deserialize(de).map(|r| Read(r.into()))
    }
}

// ---- the messages --------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Request {
    #[serde(alias = "resource_spans", deserialize_with = "or_default")]
    resource_spans: Vec<ResourceSpansJ>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ResourceSpansJ {
    #[serde(deserialize_with = "or_default")]
    resource: Option<ResourceJ>,
    #[serde(alias = "scope_spans", deserialize_with = "or_default")]
    scope_spans: Vec<ScopeSpansJ>,
    #[serde(alias = "schema_url", deserialize_with = "or_default")]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ResourceJ {
    #[serde(deserialize_with = "attributes")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "uint32")]
    dropped_attributes_count: u32,
    #[serde(alias = "entity_refs", deserialize_with = "or_default")]
    entity_refs: Vec<EntityRefJ>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct EntityRefJ {
    #[serde(alias = "schema_url", deserialize_with = "or_default")]
    schema_url: String,
    #[serde(rename = "type", deserialize_with = "or_default")]
    kind: String,
    #[serde(alias = "id_keys", deserialize_with = "or_default")]
    id_keys: Vec<String>,
    #[serde(alias = "description_keys", deserialize_with = "or_default")]
    description_keys: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ScopeSpansJ {
    #[serde(deserialize_with = "or_default")]
    scope: Option<ScopeJ>,
    #[serde(deserialize_with = "or_default")]
    spans: Vec<SpanJ>,
    #[serde(alias = "schema_url", deserialize_with = "or_default")]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ScopeJ {
    #[serde(deserialize_with = "or_default")]
    name: String,
    #[serde(deserialize_with = "or_default")]
    version: String,
    #[serde(deserialize_with = "attributes")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "uint32")]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SpanJ {
    #[serde(alias = "trace_id", deserialize_with = "hex_id")]
    trace_id: Vec<u8>,
    #[serde(alias = "span_id", deserialize_with = "hex_id")]
    span_id: Vec<u8>,
    #[serde(alias = "trace_state", deserialize_with = "or_default")]
    trace_state: String,
    #[serde(alias = "parent_span_id", deserialize_with = "hex_id")]
    parent_span_id: Vec<u8>,
    #[serde(deserialize_with = "uint32")]
    flags: u32,
    #[serde(deserialize_with = "or_default")]
    name: String,
    #[serde(deserialize_with = "span_kind")]
    kind: i32,
    #[serde(alias = "start_time_unix_nano", deserialize_with = "uint64")]
    start_time_unix_nano: u64,
    #[serde(alias = "end_time_unix_nano", deserialize_with = "uint64")]
    end_time_unix_nano: u64,
    #[serde(deserialize_with = "attributes")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "uint32")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "or_default")]
    events: Vec<EventJ>,
    #[serde(alias = "dropped_events_count", deserialize_with = "uint32")]
    dropped_events_count: u32,
    #[serde(deserialize_with = "or_default")]
    links: Vec<LinkJ>,
    #[serde(alias = "dropped_links_count", deserialize_with = "uint32")]
    dropped_links_count: u32,
    #[serde(deserialize_with = "or_default")]
    status: Option<StatusJ>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct EventJ {
    #[serde(alias = "time_unix_nano", deserialize_with = "uint64")]
    time_unix_nano: u64,
    #[serde(deserialize_with = "or_default")]
    name: String,
    #[serde(deserialize_with = "attributes")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "uint32")]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LinkJ {
    #[serde(alias = "trace_id", deserialize_with = "hex_id")]
    trace_id: Vec<u8>,
    #[serde(alias = "span_id", deserialize_with = "hex_id")]
    span_id: Vec<u8>,
    #[serde(alias = "trace_state", deserialize_with = "or_default")]
    trace_state: String,
    #[serde(deserialize_with = "attributes")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "uint32")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "uint32")]
    flags: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct StatusJ {
    #[serde(deserialize_with = "or_default")]
    message: String,
    #[serde(deserialize_with = "status_code")]
    code: i32,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct KeyValueJ {
    #[serde(deserialize_with = "or_default")]
    key: String,
    #[serde(deserialize_with = "or_default")]
    value: Option<Any>,
    #[serde(alias = "key_strindex", deserialize_with = "int32")]
    key_strindex: i32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ArrayJ {
    #[serde(deserialize_with = "or_default")]
    values: Vec<Any>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct KvListJ {
    #[serde(deserialize_with = "attributes")]
    values: Vec<KeyValue>,
}

// ---- into the protobuf types ----------------------------------------------

fn all<A, B: From<A>>(v: Vec<A>) -> Vec<B> {
    v.into_iter().map(B::from).collect()
}

impl From<Request> for ExportTraceServiceRequest {
    fn from(r: Request) -> Self {
        Self {
            resource_spans: all(r.resource_spans),
        }
    }
}

impl From<ResourceSpansJ> for ResourceSpans {
    fn from(r: ResourceSpansJ) -> Self {
        Self {
            resource: r.resource.map(|r| Resource {
                attributes: r.attributes,
                dropped_attributes_count: r.dropped_attributes_count,
                entity_refs: all(r.entity_refs),
            }),
            scope_spans: all(r.scope_spans),
            schema_url: r.schema_url,
        }
    }
}

impl From<EntityRefJ> for EntityRef {
    fn from(e: EntityRefJ) -> Self {
        Self {
            schema_url: e.schema_url,
            r#type: e.kind,
            id_keys: e.id_keys,
            description_keys: e.description_keys,
        }
    }
}

impl From<ScopeSpansJ> for ScopeSpans {
    fn from(s: ScopeSpansJ) -> Self {
        Self {
            scope: s.scope.map(|s| InstrumentationScope {
                name: s.name,
                version: s.version,
                attributes: s.attributes,
                dropped_attributes_count: s.dropped_attributes_count,
            }),
            spans: all(s.spans),
            schema_url: s.schema_url,
        }
    }
}

impl From<SpanJ> for Span {
    fn from(s: SpanJ) -> Self {
        Self {
            trace_id: s.trace_id,
            span_id: s.span_id,
            trace_state: s.trace_state,
            parent_span_id: s.parent_span_id,
            flags: s.flags,
            name: s.name,
            kind: s.kind,
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: s.attributes,
            dropped_attributes_count: s.dropped_attributes_count,
            events: all(s.events),
            dropped_events_count: s.dropped_events_count,
            links: all(s.links),
            dropped_links_count: s.dropped_links_count,
            status: s.status.map(|s| Status {
                message: s.message,
                code: s.code,
            }),
        }
    }
}

impl From<EventJ> for Event {
    fn from(e: EventJ) -> Self {
        Self {
            time_unix_nano: e.time_unix_nano,
            name: e.name,
            attributes: e.attributes,
            dropped_attributes_count: e.dropped_attributes_count,
        }
    }
}

impl From<LinkJ> for Link {
    fn from(l: LinkJ) -> Self {
        Self {
            trace_id: l.trace_id,
            span_id: l.span_id,
            trace_state: l.trace_state,
            attributes: l.attributes,
            dropped_attributes_count: l.dropped_attributes_count,
            flags: l.flags,
        }
    }
}

impl From<KeyValueJ> for KeyValue {
    fn from(kv: KeyValueJ) -> Self {
        Self {
            key: kv.key,
            value: kv.value.map(|v| v.0),
            key_strindex: kv.key_strindex,
        }
    }
}

// ---- fields ---------------------------------------------------------------

/// Any field: `null` is its default.
fn or_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// A list of key-value pairs (`attributes`, a kvlist's `values`).
fn attributes<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<KeyValue>, D::Error> {
    Ok(all(or_default::<D, Vec<KeyValueJ>>(de)?))
}

/// An integer field of any protobuf width, as a number or a string of digits.
struct Int {
    /// What the field holds, for the refusal ("a 64-bit integer").
    what: &'static str,
    min: i128,
    max: i128,
}

impl Int {
    fn error<E: de::Error>(&self) -> E {
        E::custom(format!(
            "expected {}, as a JSON number or a string of decimal digits",
            self.what
        ))
    }

    fn check<E: de::Error>(&self, n: i128) -> Result<Option<i128>, E> {
        if (self.min..=self.max).contains(&n) {
            Ok(Some(n))
        } else {
            Err(self.error())
        }
    }
}

impl<'de> Visitor<'de> for &Int {
    type Value = Option<i128>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}, as a JSON number or a string of decimal digits",
            self.what
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.check(v.into())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.check(v.into())
    }

    /// A whole number written with a fraction or an exponent (`1e3`, `5.0`).
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v.fract() == 0.0 && v.abs() < 2f64.powi(64) {
            self.check(v as i128)
        } else {
            Err(self.error())
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let digits = v.strip_prefix('-').unwrap_or(v);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 20 {
            return Err(self.error());
        }
        self.check(v.parse().map_err(|_| self.error())?)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

const fn int(what: &'static str, min: i128, max: i128) -> Int {
    Int { what, min, max }
}

const INT64: Int = int("a 64-bit integer", i64::MIN as i128, i64::MAX as i128);
const UINT64: Int = int("an unsigned 64-bit integer", 0, u64::MAX as i128);
const INT32: Int = int("a 32-bit integer", i32::MIN as i128, i32::MAX as i128);
const UINT32: Int = int("an unsigned 32-bit integer", 0, u32::MAX as i128);

fn integer<'de, D: Deserializer<'de>>(de: D, int: &Int) -> Result<i128, D::Error> {
    Ok(de.deserialize_option(int)?.unwrap_or(0))
}

fn uint64<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    integer(de, &UINT64).map(|n| n as u64)
}

fn uint32<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    integer(de, &UINT32).map(|n| n as u32)
}

fn int32<'de, D: Deserializer<'de>>(de: D) -> Result<i32, D::Error> {
    integer(de, &INT32).map(|n| n as i32)
}

/// An enum: its number, or its name as the `.proto` spells it.
struct Enum {
    what: &'static str,
    by_name: fn(&str) -> Option<i32>,
}

impl<'de> Visitor<'de> for &Enum {
    type Value = i32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}, as a number or by name", self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
        (self.by_name)(v).ok_or_else(|| E::custom(format!("not the name of {}", self.what)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
        (&INT32).visit_u64(v).map(|n| n.unwrap_or(0) as i32)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
        (&INT32).visit_i64(v).map(|n| n.unwrap_or(0) as i32)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i32, E> {
        (&INT32).visit_f64(v).map(|n| n.unwrap_or(0) as i32)
    }

    fn visit_unit<E: de::Error>(self) -> Result<i32, E> {
        Ok(0)
    }
}

fn span_kind<'de, D: Deserializer<'de>>(de: D) -> Result<i32, D::Error> {
    de.deserialize_any(&Enum {
        what: "a span kind",
        by_name: |s| SpanKind::from_str_name(s).map(|k| k as i32),
    })
}

fn status_code<'de, D: Deserializer<'de>>(de: D) -> Result<i32, D::Error> {
    de.deserialize_any(&Enum {
        what: "a status code",
        by_name: |s| StatusCode::from_str_name(s).map(|c| c as i32),
    })
}

/// A trace or span id: hex digits, either case (`""` or `null`: none).
fn hex_id<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<u8>, D::Error> {
    struct Id;
    impl<'de> Visitor<'de> for Id {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an id in hex digits")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
            let refuse = || E::custom("expected an id in hex digits (an even number of them)");
            if !v.len().is_multiple_of(2) {
                return Err(refuse());
            }
            v.as_bytes()
                .chunks(2)
                .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(refuse)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<u8>, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Vec<u8>, E> {
            Ok(Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Vec<u8>, D::Error> {
            de.deserialize_str(self)
        }
    }
    de.deserialize_option(Id)
}

// ---- values ---------------------------------------------------------------

/// An AnyValue: an object with (at most) one of its value fields.
#[derive(Default)]
struct Any(AnyValue);

/// The value fields of an AnyValue, in either spelling.
enum Field {
    String,
    Bool,
    Int,
    Double,
    Array,
    Kvlist,
    Bytes,
    StringStrindex,
    Unknown,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Names;
        impl Visitor<'_> for Names {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the name of a value field")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "stringValue" | "string_value" => Field::String,
                    "boolValue" | "bool_value" => Field::Bool,
                    "intValue" | "int_value" => Field::Int,
                    "doubleValue" | "double_value" => Field::Double,
                    "arrayValue" | "array_value" => Field::Array,
                    "kvlistValue" | "kvlist_value" => Field::Kvlist,
                    "bytesValue" | "bytes_value" => Field::Bytes,
                    "stringValueStrindex" | "string_value_strindex" => Field::StringStrindex,
                    _ => Field::Unknown,
                })
            }
        }
        de.deserialize_identifier(Names)
    }
}

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_map(AnyVisitor)
    }
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Any;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AnyValue object (stringValue, intValue, doubleValue, ...)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Any, A::Error> {
        use any_value::Value as V;
        let mut value = None;
        while let Some(field) = map.next_key::<Field>()? {
            let v = match field {
                Field::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Field::String => map.next_value::<Option<String>>()?.map(V::StringValue),
                Field::Bool => map.next_value::<Option<bool>>()?.map(V::BoolValue),
                Field::Int => map
                    .next_value_seed(IntSeed(&INT64))?
                    .map(|n| V::IntValue(n as i64)),
                Field::Double => map
                    .next_value::<Option<Double>>()?
                    .map(|d| V::DoubleValue(d.0)),
                Field::Array => map.next_value::<Option<ArrayJ>>()?.map(|a| {
                    V::ArrayValue(ArrayValue {
                        values: a.values.into_iter().map(|v| v.0).collect(),
                    })
                }),
                Field::Kvlist => map
                    .next_value::<Option<KvListJ>>()?
                    .map(|l| V::KvlistValue(KeyValueList { values: l.values })),
                Field::Bytes => map
                    .next_value::<Option<Bytes>>()?
                    .map(|b| V::BytesValue(b.0)),
                Field::StringStrindex => map
                    .next_value_seed(IntSeed(&INT32))?
                    .map(|n| V::StringValueStrindex(n as i32)),
            };
            if v.is_some() && value.is_some() {
                return Err(de::Error::custom(
                    "more than one value in an AnyValue (it holds one of stringValue, intValue, ...)",
                ));
            }
            value = value.or(v);
        }
        Ok(Any(AnyValue { value }))
    }
}

/// An integer value that may be `null` (then: no value).
struct IntSeed<'a>(&'a Int);

impl<'de> de::DeserializeSeed<'de> for IntSeed<'_> {
    type Value = Option<i128>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_option(self.0)
    }
}

/// A double: a number, a decimal string, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
struct Double(f64);

impl<'de> Deserialize<'de> for Double {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Double;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a double: a JSON number, a decimal string, \"NaN\", \"Infinity\" or \"-Infinity\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Double, E> {
                Ok(Double(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Double, E> {
                Ok(Double(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Double, E> {
                Ok(Double(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Double, E> {
                let refuse = || {
                    E::custom("expected a double: a JSON number, a decimal string, \"NaN\", \"Infinity\" or \"-Infinity\"")
                };
                match v {
                    "NaN" => Ok(Double(f64::NAN)),
                    "Infinity" => Ok(Double(f64::INFINITY)),
                    "-Infinity" => Ok(Double(f64::NEG_INFINITY)),
                    // Only what a JSON number looks like (Rust would also read
                    // "inf" and "nan").
                    _ if !v.is_empty()
                        && v.bytes()
                            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
                    {
                        v.parse().map(Double).map_err(|_| refuse())
                    }
                    _ => Err(refuse()),
                }
            }
        }
        de.deserialize_any(V)
    }
}

/// A `bytesValue`: base64, standard or URL-safe, padded or not.
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
        const INDIFFERENT: general_purpose::GeneralPurposeConfig =
            general_purpose::GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent);
        const STANDARD: GeneralPurpose =
            GeneralPurpose::new(&base64::alphabet::STANDARD, INDIFFERENT);
        const URL_SAFE: GeneralPurpose =
            GeneralPurpose::new(&base64::alphabet::URL_SAFE, INDIFFERENT);
        let s = std::borrow::Cow::<str>::deserialize(de)?;
        let engine = if s.contains(['-', '_']) {
            &URL_SAFE
        } else {
            &STANDARD
        };
        engine
            .decode(s.as_bytes())
            .map(Bytes)
            .map_err(|_| de::Error::custom("expected base64 (standard or URL-safe)"))
    }
}
