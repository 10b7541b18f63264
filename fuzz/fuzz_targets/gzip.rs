#![no_main]
//! See `tracespool::fuzzing::gzip` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tracespool::fuzzing::gzip(data);
});
