//! Does a zstd dictionary pay for itself on spool records? Trains one from the
//! spool's own kind of records (realistic requests, `common/spans.rs`) and
//! compares, at several batch sizes, the bytes per span and the time per record
//! with and without it, at the levels tracespool offers. Records in the spool are
//! compressed without a dictionary; this is the measurement behind that choice.
//!
//! ```sh
//! cargo bench --bench zstd_dict
//! ```

use std::time::Instant;

#[path = "common/spans.rs"]
mod spans;

fn main() {
    println!("zstd, with and without a dictionary trained on 200 other records of the same size");
    println!(
        "{:>6} {:>5} {:>10} {:>11} {:>11} {:>9} {:>10} {:>10}",
        "spans", "level", "protobuf", "plain B/sp", "dict B/sp", "gain", "plain µs", "dict µs"
    );
    for &batch in &[1usize, 8, 64, 512] {
        // Training samples and test records are different requests.
        let samples: Vec<Vec<u8>> = (0..200)
            .map(|v| spans::request(batch, 10_000 + v))
            .collect();
        let tests: Vec<Vec<u8>> = (0..50).map(|v| spans::request(batch, v)).collect();
        let dict = zstd::dict::from_samples(&samples, 32 * 1024).expect("train a dictionary");
        let raw: usize = tests.iter().map(|t| t.len()).sum();
        for level in [1, 3] {
            let mut plain = zstd::bulk::Compressor::new(level).unwrap();
            let mut with = zstd::bulk::Compressor::with_dictionary(level, &dict).unwrap();
            let t = Instant::now();
            let a: usize = tests.iter().map(|r| plain.compress(r).unwrap().len()).sum();
            let ta = t.elapsed();
            let t = Instant::now();
            let b: usize = tests.iter().map(|r| with.compress(r).unwrap().len()).sum();
            let tb = t.elapsed();
            let spans = (tests.len() * batch) as f64;
            println!(
                "{batch:>6} {level:>5} {:>10.1} {:>11.1} {:>11.1} {:>8.2}x {:>10.1} {:>10.1}",
                raw as f64 / spans,
                a as f64 / spans,
                b as f64 / spans,
                a as f64 / b as f64,
                ta.as_secs_f64() * 1e6 / tests.len() as f64,
                tb.as_secs_f64() * 1e6 / tests.len() as f64,
            );
        }
    }
    println!("(gain: bytes without the dictionary / bytes with it; the dictionary itself is 32 KiB per segment)");
}
