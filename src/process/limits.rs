//! `limits`: bounds on what one span or request carries. Attributes, events and
//! links beyond the limits are dropped and added to the span's (event's, link's)
//! `dropped_*_count`, as OpenTelemetry SDKs do with their own span limits; long
//! string values are cut at a character boundary; a request with too many spans is
//! refused whole (413 / `RESOURCE_EXHAUSTED`), since cutting it would lose spans
//! the client believes were accepted.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prometheus_client::metrics::counter::Counter;

use super::count_spans;
use crate::config::processors::LimitsConfig;
use crate::metrics::{LimitLabel, Metrics};
use crate::status::Rejection;

pub struct Limits {
    cfg: LimitsConfig,
    attributes_dropped: Counter,
    values_truncated: Counter,
    events_dropped: Counter,
    links_dropped: Counter,
    requests_refused: Counter,
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

impl Limits {
    pub fn new(cfg: &LimitsConfig, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let c = |limit: &'static str| {
            metrics
                .limits_applied
                .get_or_create(&LimitLabel { limit })
                .clone()
        };
        Ok(Self {
            cfg: cfg.clone(),
            attributes_dropped: c("attributes_dropped"),
            values_truncated: c("values_truncated"),
            events_dropped: c("events_dropped"),
            links_dropped: c("links_dropped"),
            requests_refused: c("requests_refused"),
        })
    }

    fn value(&self, v: &mut AnyValue) {
        match &mut v.value {
            Some(any_value::Value::StringValue(s))
                if s.len() > self.cfg.max_attribute_value_length =>
            {
                truncate(s, self.cfg.max_attribute_value_length);
                self.values_truncated.inc();
            }
            Some(any_value::Value::BytesValue(b))
                if b.len() > self.cfg.max_attribute_value_length =>
            {
                b.truncate(self.cfg.max_attribute_value_length);
                self.values_truncated.inc();
            }
            Some(any_value::Value::ArrayValue(a)) => {
                a.values.iter_mut().for_each(|x| self.value(x))
            }
            Some(any_value::Value::KvlistValue(l)) => l
                .values
                .iter_mut()
                .filter_map(|kv| kv.value.as_mut())
                .for_each(|x| self.value(x)),
            _ => {}
        }
    }

    /// Bounds a list of attributes; returns how many were dropped.
    fn attributes(&self, attrs: &mut Vec<KeyValue>) -> u32 {
        let dropped = attrs.len().saturating_sub(self.cfg.max_attributes);
        if dropped > 0 {
            attrs.truncate(self.cfg.max_attributes);
            self.attributes_dropped.inc_by(dropped as u64);
        }
        for kv in attrs.iter_mut() {
            if let Some(v) = kv.value.as_mut() {
                self.value(v);
            }
        }
        dropped as u32
    }

    pub fn apply(&self, req: &mut ExportTraceServiceRequest) -> Result<(), Rejection> {
        let max = self.cfg.max_spans_per_request;
        if max > 0 {
            let n = count_spans(req);
            if n > max as u64 {
                self.requests_refused.inc();
                return Err(Rejection::TooLarge(format!(
                    "request has {n} spans, more than the {max} allowed per request (limits.max_spans_per_request); send smaller batches"
                )));
            }
        }
        for rs in &mut req.resource_spans {
            if let Some(r) = rs.resource.as_mut() {
                r.dropped_attributes_count += self.attributes(&mut r.attributes);
            }
            for ss in &mut rs.scope_spans {
                if let Some(sc) = ss.scope.as_mut() {
                    sc.dropped_attributes_count += self.attributes(&mut sc.attributes);
                }
                for span in &mut ss.spans {
                    span.dropped_attributes_count += self.attributes(&mut span.attributes);
                    let extra = span
                        .events
                        .len()
                        .saturating_sub(self.cfg.max_events_per_span);
                    if extra > 0 {
                        span.events.truncate(self.cfg.max_events_per_span);
                        span.dropped_events_count += extra as u32;
                        self.events_dropped.inc_by(extra as u64);
                    }
                    let extra = span.links.len().saturating_sub(self.cfg.max_links_per_span);
                    if extra > 0 {
                        span.links.truncate(self.cfg.max_links_per_span);
                        span.dropped_links_count += extra as u32;
                        self.links_dropped.inc_by(extra as u64);
                    }
                    for e in &mut span.events {
                        e.dropped_attributes_count += self.attributes(&mut e.attributes);
                    }
                    for l in &mut span.links {
                        l.dropped_attributes_count += self.attributes(&mut l.attributes);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::span::Event;

    #[test]
    fn cuts_and_counts() {
        let m = Metrics::new(&[]);
        let l = Limits::new(
            &LimitsConfig {
                max_attributes: 2,
                max_attribute_value_length: 5,
                max_events_per_span: 1,
                max_links_per_span: 1,
                max_spans_per_request: 0,
            },
            &m,
        )
        .unwrap();
        let mut s = span(
            1,
            "s",
            vec![kv("a", "héllo wörld"), kv("b", "ok"), kv("c", "x")],
        );
        s.events = vec![Event::default(), Event::default(), Event::default()];
        let mut req = request("svc", vec![s]);
        l.apply(&mut req).unwrap();
        let s = spans(&req)[0];
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(s.dropped_attributes_count, 1);
        assert_eq!(
            super::super::text(s.attributes[0].value.as_ref().unwrap()),
            "héll"
        );
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.dropped_events_count, 2);
        let text = m.render();
        for (limit, n) in [
            ("attributes_dropped", 1),
            ("values_truncated", 1),
            ("events_dropped", 2),
            ("links_dropped", 0),
        ] {
            let line = format!("tracespool_limits_applied_total{{limit=\"{limit}\"}} {n}");
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn too_many_spans_is_refused_whole() {
        let m = Metrics::new(&[]);
        let l = Limits::new(
            &LimitsConfig {
                max_spans_per_request: 2,
                ..Default::default()
            },
            &m,
        )
        .unwrap();
        let mut req = request("svc", (0..3).map(|i| span(i, "s", vec![])).collect());
        assert!(matches!(l.apply(&mut req), Err(Rejection::TooLarge(m)) if m.contains("3 spans")));
        assert_eq!(spans(&req).len(), 3);
    }
}
