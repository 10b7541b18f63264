#![no_main]
//! See `tracespool::fuzzing::otlp_json` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tracespool::fuzzing::otlp_json(data);
});
