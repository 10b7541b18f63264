//! The chaos suite: the real `tracespool` binary on a fault filesystem of our own
//! (`chaos/faultfs`), under real OpenTelemetry SDK clients, with test backends as
//! independent sinks. Every scenario ends the same way: every acknowledged span
//! delivered, `tracespool audit summary` exact (or saying what it cannot vouch
//! for), the forwarder up after every fault, no panic.
//!
//! `cargo test --test chaos` runs the short profile (a few minutes);
//! `CHAOS_PROFILE=soak` (what `chaos/run --soak` sets) the long one. Scenarios run
//! one at a time (they load both cores). Where FUSE cannot run, each prints
//! `SKIPPED`.

#[path = "../../tests/support/mod.rs"]
mod support;

mod catchup;
mod edge;
mod flash;
mod full;
mod kill;
mod load;
mod power;
mod uplink;

/// `[storage]` settings that turn both record codecs on: zstd, and encryption
/// with a key from the environment ([`codecs_env`]). Goes last in `[storage]`
/// (it opens the `[storage.encryption]` table).
pub const CODECS: &str = "compression = \"zstd\"\n[storage.encryption]\nactive_key = 7\n[[storage.encryption.keys]]\nid = 7\nenv = \"TRACESPOOL_CHAOS_KEY\"\n";

/// The key [`CODECS`] names.
pub fn codecs_env() -> Vec<(String, String)> {
    vec![(
        "TRACESPOOL_CHAOS_KEY".into(),
        "4f1c6a0b2d3e5f708192a3b4c5d6e7f80112233445566778899aabbccddeeff0".into(),
    )]
}

/// Held while a scenario runs: one at a time (a lock on a file, so scenarios in
/// other processes wait too).
pub struct Serial(#[allow(dead_code)] std::fs::File);

/// The profile's size for a knob: (short, soak), overridable by `CHAOS_<NAME>`.
pub fn knob(name: &str, short: u32, soak: u32) -> u32 {
    if let Ok(v) = std::env::var(format!("CHAOS_{}", name.to_uppercase())) {
        if let Ok(n) = v.parse() {
            return n;
        }
    }
    if std::env::var("CHAOS_PROFILE").as_deref() == Ok("soak") {
        soak
    } else {
        short
    }
}

/// `None` (after printing why) when this machine cannot run the suite.
pub fn can_run(scenario: &str) -> Option<Serial> {
    if let Some(why) = faultfs::harness::unavailable() {
        if std::env::var("TRACESPOOL_REQUIRE_FUSE").is_ok() {
            panic!("{scenario}: FUSE is required here but {why}");
        }
        println!("SKIPPED {scenario}: {why}");
        return None;
    }
    let path = format!("{}/target/chaos.lock", env!("CARGO_MANIFEST_DIR"));
    let f = std::fs::File::create(path).expect("chaos lock file");
    f.lock().expect("chaos lock");
    Some(Serial(f))
}

/// A seeded generator for the scenario's random choices; the seed is printed so a
/// failure can be replayed (`CHAOS_SEED`).
pub fn rng(scenario: &str) -> impl FnMut(u64) -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{scenario}: CHAOS_SEED={seed}");
    let mut s = seed;
    move |n: u64| {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}
