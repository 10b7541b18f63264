//! `filter`: drops spans matching any of its rules (health checks, noisy
//! background jobs). A rule matches when all its conditions do; an attribute
//! condition looks at the span's attributes first, then the resource's.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prometheus_client::metrics::counter::Counter;
use regex::Regex;

use super::{attribute, retain_spans, service_name, text};
use crate::config::processors::{FilterConfig, Pattern};
use crate::metrics::{FilterLabel, Metrics};

struct Rule {
    span_name: Option<String>,
    span_name_regex: Option<Regex>,
    service: Option<String>,
    attributes: Vec<(String, String)>,
    attributes_regex: Vec<(String, Regex)>,
}

fn lookup<'a>(resource: Option<&'a Resource>, span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    attribute(&span.attributes, key).or_else(|| attribute(&resource?.attributes, key))
}

impl Rule {
    fn matches(&self, resource: Option<&Resource>, span: &Span) -> bool {
        self.span_name.as_ref().is_none_or(|n| *n == span.name)
            && self
                .span_name_regex
                .as_ref()
                .is_none_or(|re| re.is_match(&span.name))
            && self
                .service
                .as_ref()
                .is_none_or(|s| service_name(resource) == Some(s.as_str()))
            && self
                .attributes
                .iter()
                .all(|(k, want)| lookup(resource, span, k).is_some_and(|v| text(v) == *want))
            && self
                .attributes_regex
                .iter()
                .all(|(k, re)| lookup(resource, span, k).is_some_and(|v| re.is_match(&text(v))))
    }
}

pub struct Filter {
    rules: Vec<Rule>,
    filtered: Counter,
}

impl Filter {
    pub fn new(cfg: &FilterConfig, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let re = |r: &Pattern| {
            r.regex()
                .cloned()
                .map_err(|e| format!("{:?}: {e}", r.as_str()))
        };
        let mut rules = Vec::new();
        for d in &cfg.drop {
            rules.push(Rule {
                span_name: d.span_name.clone(),
                span_name_regex: d.span_name_regex.as_ref().map(re).transpose()?,
                service: d.service.clone(),
                attributes: d.attributes.clone().into_iter().collect(),
                attributes_regex: d
                    .attributes_regex
                    .iter()
                    .map(|(k, r)| Ok((k.clone(), re(r)?)))
                    .collect::<Result<_, String>>()?,
            });
        }
        Ok(Self {
            rules,
            filtered: metrics
                .spans_filtered
                .get_or_create(&FilterLabel {
                    filter: cfg.name.clone(),
                })
                .clone(),
        })
    }

    /// Removes the matching spans; returns how many.
    pub fn apply(&self, req: &mut ExportTraceServiceRequest) -> u64 {
        let gone = retain_spans(req, |resource, span| {
            !self.rules.iter().any(|r| r.matches(resource, span))
        });
        self.filtered.inc_by(gone);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::config::processors::DropRule;

    #[test]
    fn rules_match_all_their_conditions() {
        let m = Metrics::new(&[]);
        let f = Filter::new(
            &FilterConfig {
                name: "noise".into(),
                drop: vec![
                    DropRule {
                        span_name_regex: Some("^GET /(healthz|readyz)$".into()),
                        ..Default::default()
                    },
                    DropRule {
                        service: Some("cron".into()),
                        attributes: [("job.kind".to_string(), "poll".to_string())].into(),
                        ..Default::default()
                    },
                    DropRule {
                        attributes_regex: [("http.route".to_string(), "^/internal/".into())].into(),
                        ..Default::default()
                    },
                ],
            },
            &m,
        )
        .unwrap();
        let mut req = request(
            "cron",
            vec![
                span(1, "GET /healthz", vec![]),
                span(2, "tick", vec![kv("job.kind", "poll")]),
                span(3, "tick", vec![kv("job.kind", "report")]),
                span(4, "GET /x", vec![kv("http.route", "/internal/metrics")]),
                span(5, "GET /healthz/deep", vec![]),
            ],
        );
        req.resource_spans.extend(
            request("web", vec![span(6, "tick", vec![kv("job.kind", "poll")])]).resource_spans,
        );
        assert_eq!(f.apply(&mut req), 3);
        let names: Vec<_> = spans(&req).iter().map(|s| s.span_id.clone()).collect();
        let ids: Vec<_> = [3u128, 5, 6]
            .iter()
            .map(|t| (*t as u64 | 1).to_be_bytes().to_vec())
            .collect();
        assert_eq!(names, ids);
        assert!(m
            .render()
            .contains("tracespool_spans_filtered_total{filter=\"noise\"} 3"));
    }

    #[test]
    fn resource_attributes_are_looked_up_when_the_span_has_none() {
        let m = Metrics::new(&[]);
        let f = Filter::new(
            &FilterConfig {
                name: "f".into(),
                drop: vec![DropRule {
                    attributes: [("service.name".to_string(), "noisy".to_string())].into(),
                    ..Default::default()
                }],
            },
            &m,
        )
        .unwrap();
        let mut req = request("noisy", vec![span(1, "a", vec![])]);
        assert_eq!(f.apply(&mut req), 1);
    }
}
