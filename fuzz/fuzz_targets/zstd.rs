#![no_main]
//! See `tracespool::fuzzing::zstd` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tracespool::fuzzing::zstd(data);
});
