//! What OTLP/JSON intake costs: our reader (`json_to_protobuf`: the whole proto3
//! JSON mapping, exact doubles, then the protobuf encoding and the checks every
//! request gets) against parsing the same bytes with the same JSON engine into an
//! untyped tree (`serde_json::Value`), the least any JSON intake does. Rounds are
//! interleaved (baseline, ours) so both see the same machine; medians reported.
//!
//! ```sh
//! cargo bench --bench json_intake
//! ```

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[path = "common/spans.rs"]
mod spans;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!("OTLP/JSON intake: spans per second on one core, median of 15 interleaved rounds");
    println!(
        "{:>6} {:>10} {:>16} {:>16} {:>8}",
        "spans", "JSON B/sp", "serde_json Value", "json_to_protobuf", "ratio"
    );
    for &batch in &[8usize, 64, 512] {
        // JSON as the SDKs write it (hex ids, 64-bit integers as strings).
        let bodies: Vec<Vec<u8>> = (0..64)
            .map(|v| {
                let req = ExportTraceServiceRequest::decode(&spans::request(batch, v)[..]).unwrap();
                serde_json::to_vec(&req).unwrap()
            })
            .collect();
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        let (mut base, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let t = Instant::now();
            for b in &bodies {
                std::hint::black_box(serde_json::from_slice::<serde_json::Value>(b).unwrap());
            }
            base.push(t.elapsed());
            let t = Instant::now();
            for b in &bodies {
                std::hint::black_box(tracespool::otlp::json::json_to_protobuf(b).unwrap());
            }
            ours.push(t.elapsed());
        }
        let spans = (bodies.len() * batch) as f64;
        let (b, o) = (median(base), median(ours));
        println!(
            "{batch:>6} {:>10.0} {:>16.0} {:>16.0} {:>7.2}x",
            bytes as f64 / spans,
            spans / b.as_secs_f64(),
            spans / o.as_secs_f64(),
            o.as_secs_f64() / b.as_secs_f64()
        );
    }
    println!("(ratio: our time / the untyped parse's time for the same bytes)");
}
