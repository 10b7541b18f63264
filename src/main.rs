//! The `tracespool` binary. The forwarder is built on the write-ahead log in
//! `storage/`; until its receivers and replay workers land, this binary only
//! reports that.

fn main() -> std::process::ExitCode {
    eprintln!(
        "tracespool {}: the forwarder is not built yet; the write-ahead log is in storage/",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
