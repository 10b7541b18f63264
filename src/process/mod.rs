//! The processor pipeline (`[[processors]]`): an ordered list of stages a request
//! goes through before it is stored. What is stored is the processed request.
//!
//! Without processors the receivers never decode a request (the wire check in
//! [`crate::otlp::wire`] is enough); with them, the request is decoded once, every
//! stage works on the decoded form, and it is encoded once.
//!
//! | stage | what it does |
//! |---|---|
//! | [`redact`] | masks or hashes attribute values by key and by value pattern |
//! | [`sample`] | head sampling by trace id, consistent with OpenTelemetry's `TraceIdRatioBased` |
//! | [`filter`] | drops spans matching conditions |
//! | [`limits`] | bounds attributes, value lengths, events, links and spans per request |

pub mod filter;
pub mod limits;
pub mod redact;
pub mod sample;

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::config::ProcessorConfig;
pub use crate::ledger::Removed;
use crate::metrics::Metrics;
use crate::status::Rejection;

/// A request after the pipeline.
pub struct Processed {
    /// The processed `ExportTraceServiceRequest`, encoded.
    pub protobuf: Bytes,
    /// Spans left in it.
    pub spans: u32,
    pub removed: Removed,
}

enum Stage {
    Redact(redact::Redactor),
    Sample(sample::Sampler),
    Filter(filter::Filter),
    Limits(limits::Limits),
}

pub struct Pipeline {
    stages: Vec<Stage>,
}

impl Pipeline {
    /// The pipeline for `configs` (already checked by the config loader), or `None`
    /// when there are no processors: then nothing is decoded.
    pub fn new(
        configs: &[ProcessorConfig],
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Self>, String> {
        if configs.is_empty() {
            return Ok(None);
        }
        let mut stages = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let stage = match c {
                ProcessorConfig::Redact(r) => redact::Redactor::new(r, metrics).map(Stage::Redact),
                ProcessorConfig::Sample(s) => sample::Sampler::new(s, metrics).map(Stage::Sample),
                ProcessorConfig::Filter(f) => filter::Filter::new(f, metrics).map(Stage::Filter),
                ProcessorConfig::Limits(l) => limits::Limits::new(l, metrics).map(Stage::Limits),
            }
            .map_err(|e| format!("processors[{i}] ({}): {e}", c.kind()))?;
            stages.push(stage);
        }
        Ok(Some(Self { stages }))
    }

    /// Stage names in order, for the log line at start.
    pub fn describe(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .map(|s| match s {
                Stage::Redact(_) => "redact",
                Stage::Sample(_) => "sample",
                Stage::Filter(_) => "filter",
                Stage::Limits(_) => "limits",
            })
            .collect()
    }

    /// Runs every stage over an `ExportTraceServiceRequest` that passed the wire
    /// check. Resources and scopes left without spans are removed.
    pub fn run(&self, protobuf: &[u8]) -> Result<Processed, Rejection> {
        let mut req = ExportTraceServiceRequest::decode(protobuf)
            .map_err(|e| Rejection::Invalid(format!("decoding the request: {e}")))?;
        let mut removed = Removed::default();
        for stage in &self.stages {
            match stage {
                Stage::Redact(r) => r.apply(&mut req),
                Stage::Sample(s) => removed.sampled += s.apply(&mut req),
                Stage::Filter(f) => removed.filtered += f.apply(&mut req),
                Stage::Limits(l) => l.apply(&mut req)?,
            }
        }
        prune(&mut req);
        let spans = count_spans(&req);
        Ok(Processed {
            protobuf: Bytes::from(req.encode_to_vec()),
            spans: u32::try_from(spans).unwrap_or(u32::MAX),
            removed,
        })
    }
}

pub(crate) fn count_spans(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

fn prune(req: &mut ExportTraceServiceRequest) {
    for rs in &mut req.resource_spans {
        rs.scope_spans.retain(|s| !s.spans.is_empty());
    }
    req.resource_spans.retain(|r| !r.scope_spans.is_empty());
}

/// Keeps the spans for which `keep(resource, span)` is true; returns how many went.
pub(crate) fn retain_spans(
    req: &mut ExportTraceServiceRequest,
    mut keep: impl FnMut(Option<&Resource>, &Span) -> bool,
) -> u64 {
    let mut gone = 0;
    for rs in &mut req.resource_spans {
        let resource = rs.resource.as_ref();
        for ss in &mut rs.scope_spans {
            let before = ss.spans.len();
            ss.spans.retain(|span| keep(resource, span));
            gone += (before - ss.spans.len()) as u64;
        }
    }
    gone
}

/// The value of `key` among `attrs`.
pub(crate) fn attribute<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// A resource's `service.name`, when it is a string.
pub(crate) fn service_name(resource: Option<&Resource>) -> Option<&str> {
    match attribute(&resource?.attributes, "service.name")?
        .value
        .as_ref()?
    {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A value as text, for matching and hashing: strings as they are, numbers and
/// booleans as written in JSON, bytes in hex, arrays and maps as JSON-like text.
pub(crate) fn text(v: &AnyValue) -> String {
    use any_value::Value;
    match &v.value {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        // An index into a profile's string table; not used in traces.
        Some(Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(text).collect();
            format!("[{}]", items.join(","))
        }
        Some(Value::KvlistValue(l)) => {
            let items: Vec<String> = l
                .values
                .iter()
                .map(|kv| {
                    format!(
                        "{}={}",
                        kv.key,
                        kv.value.as_ref().map(text).unwrap_or_default()
                    )
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
pub(crate) mod testing {
    //! Requests to process in unit tests.
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    pub fn kv(key: &str, v: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    pub fn span(trace: u128, name: &str, attrs: Vec<KeyValue>) -> Span {
        Span {
            trace_id: trace.to_be_bytes().to_vec(),
            span_id: (trace as u64 | 1).to_be_bytes().to_vec(),
            name: name.into(),
            attributes: attrs,
            ..Default::default()
        }
    }

    pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    pub fn spans(req: &ExportTraceServiceRequest) -> Vec<&Span> {
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::config::processors::{FilterConfig, SampleConfig};

    fn pipeline(toml_text: &str) -> Pipeline {
        #[derive(serde::Deserialize)]
        struct P {
            processors: Vec<ProcessorConfig>,
        }
        let p: P = toml::from_str(toml_text).unwrap();
        Pipeline::new(&p.processors, &Metrics::new(&[]))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn no_processors_no_pipeline() {
        assert!(Pipeline::new(&[], &Metrics::new(&[])).unwrap().is_none());
    }

    #[test]
    fn empty_resources_and_scopes_are_pruned_and_counts_are_exact() {
        let _ = (SampleConfig::default(), FilterConfig::default());
        let p = pipeline(
            r#"
            [[processors]]
            type = "filter"
            name = "health"
            drop = [{ span_name = "GET /healthz" }]
            "#,
        );
        let mut req = request("a", vec![span(1, "GET /healthz", vec![])]);
        req.resource_spans.extend(
            request(
                "b",
                vec![span(2, "work", vec![]), span(3, "GET /healthz", vec![])],
            )
            .resource_spans,
        );
        let out = p.run(&req.encode_to_vec()).unwrap();
        assert_eq!(out.spans, 1);
        assert_eq!(
            out.removed,
            Removed {
                sampled: 0,
                filtered: 2
            }
        );
        let back = ExportTraceServiceRequest::decode(&out.protobuf[..]).unwrap();
        assert_eq!(back.resource_spans.len(), 1);
        assert_eq!(spans(&back)[0].name, "work");
    }

    #[test]
    fn undecodable_input_is_invalid_not_a_panic() {
        let p = pipeline("[[processors]]\ntype = \"redact\"\n");
        for bad in [
            &b"\x0a\xff\xff\xff\xff\x0f"[..],
            b"\x0a\x05\x0a\x03\x0a\x01",
            b"\xff",
        ] {
            assert!(matches!(p.run(bad), Err(Rejection::Invalid(_))));
        }
    }
}
