#![no_main]
//! See `tracespool::fuzzing::wal_segment` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tracespool::fuzzing::wal_segment(data);
});
