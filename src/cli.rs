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

    /// Data directory (overrides storage.dir): for the tools, e.g. on a copy.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Tools: print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the forwarder until SIGTERM or SIGINT.
    Run,
    /// Validate the configuration and print the effective one (secrets hidden).
    CheckConfig,
    /// Per destination: backlog, oldest undelivered batch, last success and error;
    /// disk budget use. Reads what a running forwarder publishes (state.json).
    Status,
    /// Look into the write-ahead log: segments, damage, single records.
    #[command(subcommand)]
    Wal(WalCommand),
    /// The audit ledger: reconciliation and the history of a batch.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Re-send retained records (delivered or dead-lettered) with their original
    /// idempotency keys.
    Replay(ReplayArgs),
    /// Records a destination refused permanently.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Segments: seq ranges, records, spans, sizes, delivered state.
    Inspect,
    /// Check every record's CRC; exit 1 and name the damaged ranges if any.
    Verify,
    /// One record as OTLP JSON (an ExportTraceServiceRequest) on stdout.
    Dump {
        #[arg(long)]
        seq: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// accepted = delivered + dropped + dead-lettered + pending, per destination, for
    /// batches accepted in the window; exit 1 if it does not balance.
    Summary {
        /// Start of the window: RFC 3339 time, or a duration ago ("2h").
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// End of the window (exclusive): RFC 3339 time, or a duration ago.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
    },
    /// The history of a batch: by seq, by idempotency key, or by a trace id found
    /// in retained records.
    Show {
        #[arg(long, group = "what")]
        seq: Option<u64>,
        /// The client's idempotency key, or an export key (<instance-id>-<seq>).
        #[arg(long, group = "what")]
        key: Option<String>,
        /// 32 hex digits.
        #[arg(long, group = "what", value_name = "TRACE_ID")]
        trace_id: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// First record: a seq, or an RFC 3339 time (records received from then on).
    #[arg(long, value_name = "SEQ|TIME")]
    pub from: String,
    /// Last record (inclusive): a seq, or an RFC 3339 time.
    #[arg(long, value_name = "SEQ|TIME")]
    pub to: Option<String>,
    /// Where to send: http://host:4317 (gRPC) or http://host:4318[/v1/traces] (HTTP).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    #[arg(long, value_enum, default_value = "grpc")]
    pub protocol: ProtocolArg,
    /// Header sent with every request, e.g. --header authorization="Bearer x".
    #[arg(long, value_name = "NAME=VALUE")]
    pub header: Vec<String>,
    /// At most this many spans per second.
    #[arg(long, value_name = "SPANS_PER_SEC")]
    pub rate: Option<u64>,
    /// Deadline of one request.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub timeout: String,
    /// Attempts per record before it is reported as failed (transient errors).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Every dead letter: destination, seq, spans, when and why.
    List {
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
    },
    /// Send dead letters again, to their destination (as configured) or to
    /// --endpoint; each one accepted is recorded as delivered and removed.
    Retry {
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        #[arg(long)]
        seq: Option<u64>,
        /// Send here instead of the destination's configured endpoint.
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProtocolArg {
    Grpc,
    Http,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}
