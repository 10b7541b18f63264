//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// A durable, disk-backed forwarder for OpenTelemetry traces.
///
/// tracespool receives OTLP (gRPC on 4317, HTTP on 4318), makes every batch durable
/// in a write-ahead log before answering, and replays the log to OTLP backends with
/// a stable idempotency key per batch, retrying until they accept.
#[derive(Debug, Parser)]
#[command(name = "tracespool", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Without one, tracespool spools to ./data, listens on
    /// 127.0.0.1:4317 and :4318, and forwards to OTEL_EXPORTER_OTLP_ENDPOINT if set.
    /// Any key can be overridden by an environment variable such as
    /// TRACESPOOL__STORAGE__MAX_BYTES=8GiB.
    #[arg(
        long,
        short,
        global = true,
        env = "TRACESPOOL_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the forwarder until SIGTERM or SIGINT.
    Run,
    /// Validate the configuration and print the effective one (secrets hidden).
    CheckConfig,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}
