//! `sample`: head sampling by trace id.
//!
//! The decision is OpenTelemetry's `TraceIdRatioBased` sampler's, as the SDKs
//! implement it (Python: `trace_id & (2^64 - 1) < round(rate * 2^64)`): a span is
//! kept when the lower 64 bits of its trace id, read big-endian, are below the
//! rate's bound. It depends on nothing but the trace id and the rate, so every span
//! of a trace gets the same decision in every tracespool, in every tier, and in an
//! SDK sampling with the same rate. Lowering the rate along a chain only removes
//! traces, never adds different ones.
//!
//! Spans without a valid (16-byte) trace id are kept: they cannot be sampled
//! consistently, and dropping them silently would be worse.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prometheus_client::metrics::counter::Counter;

use super::{retain_spans, service_name};
use crate::config::processors::SampleConfig;
use crate::metrics::{Metrics, ServiceLabel};

/// Keeps a trace when the lower 64 bits of its id are below `bound`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    bound: u128,
}

impl Ratio {
    pub fn new(rate: f64) -> Self {
        // As Python's round(): to nearest, ties to even. 2^64 fits in u128; the
        // cast saturates (rate is checked to lie in 0..=1).
        let bound = (rate.clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0).round_ties_even();
        Self {
            bound: bound as u128,
        }
    }

    pub fn keeps(&self, trace_id: &[u8]) -> bool {
        let Ok(id) = <[u8; 16]>::try_from(trace_id) else {
            return true;
        };
        let low = u64::from_be_bytes(id[8..].try_into().expect("8 bytes")) as u128;
        low < self.bound
    }
}

struct Rule {
    ratio: Ratio,
    sampled_out: Counter,
}

pub struct Sampler {
    default: Rule,
    services: HashMap<String, Rule>,
}

impl Sampler {
    pub fn new(cfg: &SampleConfig, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let rule = |service: &str, rate: f64| {
            let label = ServiceLabel {
                service: service.into(),
            };
            metrics.sample_rate.get_or_create(&label).set(rate);
            Rule {
                ratio: Ratio::new(rate),
                sampled_out: metrics.spans_sampled_out.get_or_create(&label).clone(),
            }
        };
        Ok(Self {
            default: rule("other", cfg.rate),
            services: cfg
                .service_rates
                .iter()
                .map(|(s, r)| (s.clone(), rule(s, *r)))
                .collect(),
        })
    }

    /// Removes the spans sampled out; returns how many.
    pub fn apply(&self, req: &mut ExportTraceServiceRequest) -> u64 {
        retain_spans(req, |resource, span| {
            let rule = service_name(resource)
                .and_then(|s| self.services.get(s))
                .unwrap_or(&self.default);
            let keep = rule.ratio.keeps(&span.trace_id);
            if !keep {
                rule.sampled_out.inc();
            }
            keep
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn bounds_match_python_round() {
        assert_eq!(Ratio::new(0.0).bound, 0);
        assert_eq!(Ratio::new(1.0).bound, 1u128 << 64);
        assert_eq!(Ratio::new(0.5).bound, 1u128 << 63);
        assert_eq!(Ratio::new(0.25).bound, 1u128 << 62);
        // Python: round(0.1 * 2**64) == 1844674407370955264
        assert_eq!(Ratio::new(0.1).bound, 1_844_674_407_370_955_264);
    }

    #[test]
    fn decision_reads_the_lower_64_bits_big_endian() {
        let r = Ratio::new(0.5);
        assert!(r.keeps(&(0xffff_ffff_ffff_ffff_0000_0000_0000_0000u128).to_be_bytes()));
        assert!(r.keeps(&(0x7fff_ffff_ffff_ffffu128).to_be_bytes()));
        assert!(!r.keeps(&(0x8000_0000_0000_0000u128).to_be_bytes()));
        assert!(Ratio::new(1.0).keeps(&u128::MAX.to_be_bytes()));
        assert!(!Ratio::new(0.0).keeps(&0u128.to_be_bytes()));
        assert!(r.keeps(b"short"), "invalid ids are kept");
    }

    #[test]
    fn per_service_rates_and_counts() {
        let m = Metrics::new(&[]);
        let s = Sampler::new(
            &SampleConfig {
                rate: 0.0,
                service_rates: [("checkout".to_string(), 1.0)].into(),
            },
            &m,
        )
        .unwrap();
        let mut req = request("checkout", vec![span(1, "a", vec![]), span(2, "b", vec![])]);
        req.resource_spans
            .extend(request("batch", vec![span(3, "c", vec![])]).resource_spans);
        assert_eq!(s.apply(&mut req), 1);
        assert_eq!(spans(&req).len(), 2);
        let text = m.render();
        assert!(
            text.contains("tracespool_spans_sampled_out_total{service=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tracespool_spans_sampled_out_total{service=\"checkout\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tracespool_sample_rate{service=\"checkout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tracespool_sample_rate{service=\"other\"} 0"),
            "{text}"
        );
    }
}
