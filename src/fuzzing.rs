//! What the fuzz targets in `fuzz/` check, here so that `cargo test` replays the
//! committed corpus (`fuzz/corpus/<target>/`) through the same checks
//! (`tests/fuzz_corpus.rs`). Each function takes any bytes; a panic is a bug.

use std::sync::OnceLock;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::config::processors::{
    BuiltinPattern, DropRule, FilterConfig, LimitsConfig, RedactAction, RedactConfig, SampleConfig,
    ALL_SCOPES,
};
use crate::config::ProcessorConfig;
use crate::metrics::Metrics;
use crate::otlp::json::json_to_protobuf;
use crate::otlp::wire::inspect_trace_request;
use crate::process::Pipeline;
use crate::receiver::gunzip;
use crate::status::Rejection;

/// Every processor type, with every redaction pattern.
fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let configs = [
            ProcessorConfig::Limits(LimitsConfig {
                max_attributes: 8,
                max_attribute_value_length: 24,
                max_events_per_span: 4,
                max_links_per_span: 4,
                max_spans_per_request: 1000,
            }),
            ProcessorConfig::Redact(RedactConfig {
                scopes: ALL_SCOPES.to_vec(),
                deny_keys: vec!["secret.*".into()],
                patterns: vec![
                    BuiltinPattern::Email,
                    BuiltinPattern::CardNumber,
                    BuiltinPattern::Ipv4,
                    BuiltinPattern::Ipv6,
                    BuiltinPattern::BearerToken,
                    BuiltinPattern::Jwt,
                ],
                action: RedactAction::Hash,
                resolved_hash_key: Some("fuzzing-key-0123456789".into()),
                ..Default::default()
            }),
            ProcessorConfig::Sample(SampleConfig {
                rate: 0.5,
                service_rates: [("keep".to_string(), 1.0)].into(),
            }),
            ProcessorConfig::Filter(FilterConfig {
                name: "fuzz".into(),
                drop: vec![DropRule {
                    span_name_regex: Some("^health".into()),
                    attributes: [("drop".to_string(), "true".to_string())].into(),
                    ..Default::default()
                }],
            }),
        ];
        Pipeline::new(&configs, &Metrics::new(&[]))
            .expect("fuzz pipeline")
            .expect("processors configured")
    })
}

/// An OTLP protobuf request: the wire check, and for what passes it, the decoder
/// and the whole processor pipeline.
pub fn otlp_protobuf(data: &[u8]) {
    let Ok(summary) = inspect_trace_request(data) else {
        return;
    };
    // What the wire check accepts, the decoder accepts, with the same span count.
    let decoded = ExportTraceServiceRequest::decode(data)
        .expect("a request that passed the wire check decodes");
    assert_eq!(crate::process::count_spans(&decoded), summary.spans as u64);
    match pipeline().run(data) {
        Ok(out) => {
            assert!(out.spans as u64 + out.removed.total() == summary.spans as u64);
            let again = inspect_trace_request(&out.protobuf)
                .expect("processed output passes the wire check");
            assert_eq!(again.spans, out.spans);
        }
        Err(Rejection::TooLarge(_)) => assert!(summary.spans > 1000),
        Err(other) => panic!("pipeline refused a valid request: {other:?}"),
    }
}

/// An OTLP/JSON body: what converts passes the wire check with the same count.
pub fn otlp_json(data: &[u8]) {
    if let Ok((pb, summary)) = json_to_protobuf(data) {
        let again = inspect_trace_request(&pb).expect("converted JSON passes the wire check");
        assert_eq!(again.spans, summary.spans);
    }
}

/// A gzip body: never more than the limit comes out.
pub fn gzip(data: &[u8]) {
    const LIMIT: usize = 256 * 1024;
    if let Ok(out) = gunzip(data, LIMIT) {
        assert!(out.len() <= LIMIT);
    }
}

/// A zstd body (a request, or a stored record): never more than the limit comes
/// out, and a record that decompresses is the same whichever way it is read.
pub fn zstd(data: &[u8]) {
    const LIMIT: usize = 256 * 1024;
    let streamed = crate::receiver::unzstd(data, LIMIT);
    if let Ok(out) = &streamed {
        assert!(out.len() <= LIMIT);
    }
    if let Ok(out) = crate::payload::zstd_decompress(data, LIMIT) {
        assert!(out.len() <= LIMIT);
        let streamed = streamed.expect("a frame one decoder reads, the other reads too");
        assert_eq!(out[..], streamed[..]);
    }
}

/// The key the fuzz target and its seeds seal records with (id 1).
pub const FUZZ_KEY: [u8; 32] = [0x5E; 32];

/// A segment file's bytes, as recovery and the tools read them: records come out
/// in strictly increasing seq order, at or after the segment's first seq, and
/// never inside a range reported as damaged.
pub fn wal_segment(data: &[u8]) {
    use tracespool_storage::format::SegmentHeader;
    use tracespool_storage::offline::scan_segment;
    let _ = SegmentHeader::decode(data);
    let first = match data.first() {
        Some(b) => u64::from(*b % 8) + 1,
        None => 1,
    };
    let next = data.get(1).map(|b| first + u64::from(*b % 16));
    // Sealed frames are opened with a fixed key under the id and log the header
    // names (so inputs built from a real sealed segment reach the decryption).
    let mut ring = tracespool_storage::KeyRing::default();
    ring.insert(1, FUZZ_KEY).expect("a non-zero id");
    let wal_id = SegmentHeader::decode(data)
        .map(|h| h.wal_id)
        .unwrap_or([0; 16]);
    let keys = tracespool_storage::offline::Keys {
        ring: &ring,
        wal_id,
    };
    let out = scan_segment(data, first, next, true, Some(keys));
    for u in &out.unopened {
        assert!(u.seq >= first, "{u:?}");
        assert!(
            !out.records.iter().any(|r| r.seq == u.seq),
            "seq {} both opened and not",
            u.seq
        );
    }
    let mut last = first - 1;
    for r in &out.records {
        assert!(r.seq > last, "seq {} after {last}", r.seq);
        last = r.seq;
        for d in &out.damage {
            assert!(
                !(d.first_seq..=d.last_seq).contains(&r.seq),
                "record {} inside damage {d:?}",
                r.seq
            );
        }
    }
    for d in &out.damage {
        assert!(d.first_seq <= d.last_seq && d.first_seq >= first, "{d:?}");
    }
}
