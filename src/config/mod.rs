//! Configuration: a TOML file, overridden by `TRACESPOOL__SECTION__KEY` environment
//! variables, with destinations from the standard `OTEL_EXPORTER_OTLP_*` variables
//! when the file names none. Parsed and validated once, here, into typed structs;
//! nothing else reads raw settings or the environment.
//!
//! `config/tracespool.toml` documents every key with its default.

pub mod jetstream;
mod otel_env;
pub mod processors;
pub mod security;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use jetstream::{JetStreamReceiverConfig, NatsAuth, NatsCredentials, StreamSettings};
pub use processors::ProcessorConfig;
pub use security::{DestinationTlsConfig, ReceiverAuthConfig, ReceiverTlsConfig, TokenConfig};
pub use units::{ByteSize, Dur, Endpoint, Listen};

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub storage: StorageConfig,
    pub receivers: ReceiversConfig,
    pub destinations: Vec<DestinationConfig>,
    pub dedup: DedupConfig,
    pub log: LogConfig,
    pub service: ServiceConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
    /// Applied in order to every request before it is stored.
    pub processors: Vec<ProcessorConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address of /metrics, /healthz and /readyz ("" disables).
    pub listen: Listen,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Listen(Some(([127, 0, 0, 1], 8888).into())),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Upper bound on the audit ledger's files; 0 means 5 % of storage.max_bytes
    /// (at least 16MiB).
    pub max_bytes: ByteSize,
    /// A ledger file is closed and a new one started at this size.
    pub file_bytes: ByteSize,
    /// Disk space allocated ahead (`<dir>/ledger/reserve`) that becomes the next
    /// ledger file when the disk is full, so deliveries can still be recorded and
    /// the spool drain; 0 disables.
    pub reserve_bytes: ByteSize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize(0),
            file_bytes: ByteSize(16 << 20),
            reserve_bytes: ByteSize(8 << 20),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory: the log, its metadata, dead letters, the instance id.
    pub dir: PathBuf,
    /// Upper bound on the bytes of all log segments.
    pub max_bytes: ByteSize,
    pub segment_bytes: ByteSize,
    /// Keep at least this much of the filesystem free.
    pub min_free_bytes: ByteSize,
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`: the longest time between syncs.
    pub fsync_interval: Dur,
    pub when_full: WhenFull,
    /// Keep delivered segments this long (for replay and audit) before deleting them.
    pub retain_delivered: Dur,
    /// How records are compressed before they are stored ("none" or "zstd").
    pub compression: StorageCompression,
    /// zstd level, 1 (fastest) to 19.
    pub compression_level: i32,
    /// Encryption at rest (AES-256-GCM); off unless keys are given.
    pub encryption: EncryptionConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageCompression {
    None,
    Zstd,
}

/// `[storage.encryption]`: keys by id, from files or variables (never in the
/// config file), and the one new records are sealed with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Id of the key new records are encrypted with; absent: new records are
    /// stored in plaintext (keys listed still read older records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_key: Option<u32>,
    pub keys: Vec<KeyConfig>,
    /// The keys, read at load (never serialized, never printed).
    #[serde(skip)]
    pub ring: tracespool_storage::KeyRing,
}

/// One key: 32 bytes written as 64 hex digits (`openssl rand -hex 32`), in a file
/// or an environment variable.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data"),
            max_bytes: ByteSize(4 << 30),
            segment_bytes: ByteSize(64 << 20),
            min_free_bytes: ByteSize(0),
            fsync: FsyncMode::Always,
            fsync_interval: Dur(Duration::from_millis(100)),
            when_full: WhenFull::Backpressure,
            retain_delivered: Dur(Duration::ZERO),
            compression: StorageCompression::None,
            compression_level: 1,
            encryption: EncryptionConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    Always,
    Interval,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    Backpressure,
    DropOldest,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiversConfig {
    pub otlp: OtlpReceiverConfig,
    /// A JetStream stream to drain (a gateway); absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamReceiverConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    /// OTLP/gRPC listen address; empty disables the receiver.
    pub grpc: Listen,
    /// OTLP/HTTP listen address; empty disables the receiver.
    pub http: Listen,
    /// Largest request body accepted, as received (compressed).
    pub max_request_bytes: ByteSize,
    /// Largest request after decompression.
    pub max_decompressed_bytes: ByteSize,
    /// The retry delay suggested to clients when the disk budget is full.
    pub retry_after: Dur,
    /// Open connections per receiver; more are closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams (requests) at once per connection.
    pub max_concurrent_streams: u32,
    /// Time a new connection gets to finish its TLS handshake, and an HTTP/1 request
    /// to send its headers; slower clients are disconnected.
    pub header_read_timeout: Dur,
    /// Time a request gets to send its whole body.
    pub body_read_timeout: Dur,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ReceiverTlsConfig>,
    pub auth: ReceiverAuthConfig,
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        Self {
            grpc: Listen(Some(([127, 0, 0, 1], 4317).into())),
            http: Listen(Some(([127, 0, 0, 1], 4318).into())),
            max_request_bytes: ByteSize(16 << 20),
            max_decompressed_bytes: ByteSize(64 << 20),
            retry_after: Dur(Duration::from_secs(2)),
            max_connections: 1024,
            max_concurrent_streams: 256,
            header_read_timeout: Dur(Duration::from_secs(10)),
            body_read_timeout: Dur(Duration::from_secs(30)),
            tls: None,
            auth: ReceiverAuthConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Grpc,
    Http,
    /// Publish each record to a NATS JetStream stream.
    Jetstream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    /// zstd: records stored as zstd are sent as stored, without recompressing.
    Zstd,
}

impl Compression {
    pub fn wire(self) -> crate::payload::Encoding {
        match self {
            Self::None => crate::payload::Encoding::Identity,
            Self::Gzip => crate::payload::Encoding::Gzip,
            Self::Zstd => crate::payload::Encoding::Zstd,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Unique name; also the name of the destination's cursor in the log.
    pub name: String,
    /// `http://host:port` (gRPC, or OTLP/HTTP where `/v1/traces` is added when the
    /// URL has no path) or a full OTLP/HTTP URL. Not for JetStream (`urls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// JetStream: the NATS servers (`nats://host:port`, `tls://host:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// JetStream: the stream the subject belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream: String,
    /// JetStream: the subject each record is published on; may use `{tenant}`,
    /// `{service}` (the first resource's `service.name`) and `{instance}` as tokens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// JetStream: the tenant this edge publishes for (`{tenant}`, and the
    /// `Tracespool-Tenant` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// JetStream: create the stream with `stream_config` when it does not exist
    /// (otherwise a missing stream is an error, retried until it is created).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_stream: bool,
    #[serde(default, skip_serializing_if = "StreamSettings::is_default")]
    pub stream_config: StreamSettings,
    /// JetStream: how we authenticate to the servers.
    #[serde(default, skip_serializing_if = "NatsCredentials::is_default")]
    pub credentials: NatsCredentials,
    /// Sent with every export (e.g. an API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from files (trimmed), at start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header_files: BTreeMap<String, PathBuf>,
    /// Headers whose values are read from environment variables, at start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header_env: BTreeMap<String, String>,
    /// Deadline of one export attempt.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Exports in flight at once; the cursor still advances in seq order.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// At most this many request bytes a second to this destination (after
    /// compression, retries included); absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_egress_bytes_per_s: Option<ByteSize>,
    /// With a limit: bytes that may go at once after a quiet spell (default: one
    /// second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<ByteSize>,
    /// Records older than this (since they were received) when their turn comes
    /// are given up for this destination as `expired` (counted, in the ledger);
    /// absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Dur>,
    /// Two lanes: records the live lane reaches within `live_lag` of their arrival
    /// are sent at once; when it falls further behind (an outage, a restart on a
    /// backlog), what it has not reached becomes backlog, drained by a lane of its
    /// own with what the live lane leaves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live_first: bool,
    /// With `live_first`: how far behind arrival the live lane may be before it
    /// leaves what it has not reached to the backlog lane.
    #[serde(default = "default_live_lag")]
    pub live_lag: Dur,
    /// With `live_first` and a rate limit: the share of `max_egress_bytes_per_s`
    /// the backlog lane gets even while the live lane wants it all (it gets
    /// whatever the live lane leaves besides), 0 < share < 1.
    #[serde(default = "default_backlog_share")]
    pub backlog_share: f64,
    /// With `live_first`: the order the backlog lane sends in.
    #[serde(default)]
    pub backlog_order: BacklogOrder,
    #[serde(default)]
    pub retry: RetryConfig,
    /// For `https://` endpoints.
    #[serde(default, skip_serializing_if = "DestinationTlsConfig::is_default")]
    pub tls: DestinationTlsConfig,
}

impl Default for DestinationConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            endpoint: None,
            protocol: default_protocol(),
            urls: Vec::new(),
            stream: String::new(),
            subject: String::new(),
            tenant: None,
            create_stream: false,
            stream_config: StreamSettings::default(),
            credentials: NatsCredentials::default(),
            headers: BTreeMap::new(),
            header_files: BTreeMap::new(),
            header_env: BTreeMap::new(),
            timeout: default_timeout(),
            compression: default_compression(),
            max_in_flight: default_in_flight(),
            max_egress_bytes_per_s: None,
            egress_burst: None,
            max_age: None,
            live_first: false,
            live_lag: default_live_lag(),
            backlog_share: default_backlog_share(),
            backlog_order: BacklogOrder::default(),
            retry: RetryConfig::default(),
            tls: DestinationTlsConfig::default(),
        }
    }
}

fn default_protocol() -> Protocol {
    Protocol::Grpc
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_compression() -> Compression {
    Compression::None
}
fn default_in_flight() -> usize {
    8
}
fn default_live_lag() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_backlog_share() -> f64 {
    0.2
}

/// The order a destination's backlog lane sends in (`live_first`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BacklogOrder {
    #[default]
    OldestFirst,
    NewestFirst,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial_backoff: Dur,
    pub max_backoff: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Dur(Duration::from_millis(500)),
            max_backoff: Dur(Duration::from_secs(30)),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// How long an idempotency key, once accepted, makes repeats of it no-ops.
    pub window: Dur,
    /// Most keys remembered; the oldest are forgotten first.
    pub max_keys: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window: Dur(Duration::from_secs(600)),
            max_keys: 1_000_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `tracespool=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// On SIGTERM/SIGINT: how long in-flight requests get to finish.
    pub shutdown_timeout: Dur,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Dur(Duration::from_secs(5)),
        }
    }
}

impl Config {
    /// Reads `file` (if any), applies `TRACESPOOL__*` overrides and the OTLP exporter
    /// variables from `env`, and validates the result.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("TRACESPOOL__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("TRACESPOOL")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError(format!("configuration: {e}")))?;
        let mut cfg: Config = raw
            .try_deserialize()
            .map_err(|e| ConfigError(format!("configuration: {}", dotted_keys(&e.to_string()))))?;
        if cfg.destinations.is_empty() {
            if let Some(d) = otel_env::destination_from_env(env)? {
                cfg.destinations.push(d);
            }
        }
        cfg.resolve_secrets(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads tokens, header values and hash keys given as files or variables.
    fn resolve_secrets(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        self.storage.encryption.resolve(env)?;
        self.receivers.otlp.auth.resolve(env)?;
        if let Some(js) = &mut self.receivers.jetstream {
            js.credentials
                .resolve("receivers.jetstream.credentials", env)?;
        }
        for (i, d) in self.destinations.iter_mut().enumerate() {
            d.credentials
                .resolve(&format!("destinations[{i}].credentials"), env)?;
            let files = std::mem::take(&mut d.header_files);
            let vars = std::mem::take(&mut d.header_env);
            for (name, path) in &files {
                let key = format!("destinations[{i}].header_files.{name:?}");
                let v = security::resolve_secret(&key, None, Some(path), None, env)?;
                if d.headers
                    .insert(name.clone(), v.unwrap_or_default())
                    .is_some()
                {
                    return Err(ConfigError(format!("{key}: the header is given twice")));
                }
            }
            for (name, var) in &vars {
                let key = format!("destinations[{i}].header_env.{name:?}");
                let v = security::resolve_secret(&key, None, None, Some(var), env)?;
                if d.headers
                    .insert(name.clone(), v.unwrap_or_default())
                    .is_some()
                {
                    return Err(ConfigError(format!("{key}: the header is given twice")));
                }
            }
            // Keep where they came from, for check-config.
            d.header_files = files;
            d.header_env = vars;
        }
        for (i, p) in self.processors.iter_mut().enumerate() {
            p.resolve(i, env)?;
        }
        Ok(())
    }

    /// Checks relations between settings; every message names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        self.storage.validate()?;
        self.receivers
            .otlp
            .validate(self.receivers.jetstream.is_some())?;
        if let Some(js) = &self.receivers.jetstream {
            js.validate()?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let key = format!("destinations[{i}]");
            d.validate(&key)?;
            if !names.insert(d.name.clone()) {
                return err(format!(
                    "{key}.name {:?} is used by another destination",
                    d.name
                ));
            }
        }
        self.audit.validate()?;
        if self.dedup.max_keys == 0 {
            return err("dedup.max_keys must be at least 1".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return err(format!(
                "log.level {:?} is not a valid filter (e.g. \"info\")",
                self.log.level
            ));
        }
        Ok(())
    }

    /// The audit ledger's size bound.
    pub fn audit_max_bytes(&self) -> u64 {
        match self.audit.max_bytes.0 {
            0 => (self.storage.max_bytes.0 / 20).max(16 << 20),
            n => n,
        }
    }

    /// The storage settings as the log takes them.
    pub fn wal_config(&self) -> tracespool_storage::WalConfig {
        let s = &self.storage;
        let mut w = tracespool_storage::WalConfig::new(s.dir.clone());
        w.max_bytes = s.max_bytes.0;
        w.segment_bytes = s.segment_bytes.0;
        w.min_free_bytes = s.min_free_bytes.0;
        w.fsync = match s.fsync {
            FsyncMode::Always => tracespool_storage::FsyncPolicy::Always,
            FsyncMode::Interval => tracespool_storage::FsyncPolicy::Interval(s.fsync_interval.0),
            FsyncMode::Never => tracespool_storage::FsyncPolicy::Never,
        };
        w.when_full = match s.when_full {
            WhenFull::Backpressure => tracespool_storage::WhenFull::Backpressure,
            WhenFull::DropOldest => tracespool_storage::WhenFull::DropOldest,
        };
        w.retain_delivered = s.retain_delivered.0;
        w.keys = s.encryption.ring.clone();
        w.max_record_bytes = self.receivers.otlp.max_decompressed_bytes.0;
        w
    }

    /// The effective configuration as TOML, with secrets hidden: header values,
    /// tokens, hash keys.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for d in &mut shown.destinations {
            for v in d.headers.values_mut() {
                *v = "<redacted>".into();
            }
            // Shown once, as resolved headers (redacted).
            d.header_files.clear();
            d.header_env.clear();
        }
        for t in &mut shown.receivers.otlp.auth.tokens {
            if t.token.is_some() {
                t.token = Some("<redacted>".into());
            }
        }
        shown.processors = shown.processors.iter().map(|p| p.redacted()).collect();
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        let s = self;
        if s.dir.as_os_str().is_empty() {
            return err("storage.dir must not be empty".into());
        }
        if s.segment_bytes.0 < 4096 {
            return err(format!(
                "storage.segment_bytes must be at least 4KiB, got {}",
                s.segment_bytes
            ));
        }
        if s.max_bytes.0 < s.segment_bytes.0 {
            return err(format!(
                "storage.max_bytes ({}) must be at least storage.segment_bytes ({})",
                s.max_bytes, s.segment_bytes
            ));
        }
        if s.fsync == FsyncMode::Interval && s.fsync_interval.0.is_zero() {
            return err(
                "storage.fsync_interval must be greater than 0 when storage.fsync = \"interval\""
                    .into(),
            );
        }
        if !(1..=19).contains(&s.compression_level) {
            return err(format!(
                "storage.compression_level must be between 1 and 19, got {}",
                s.compression_level
            ));
        }
        Ok(())
    }

    /// How the receivers compress records before they are stored.
    pub fn record_compression(&self) -> crate::payload::Compression {
        match self.compression {
            StorageCompression::None => crate::payload::Compression::None,
            StorageCompression::Zstd => crate::payload::Compression::Zstd {
                level: self.compression_level,
            },
        }
    }
}

impl EncryptionConfig {
    /// Reads every key (each named by its id in errors; no key byte in any message).
    fn resolve(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let mut ring = tracespool_storage::KeyRing::default();
        for (i, k) in self.keys.iter().enumerate() {
            let key = format!("storage.encryption.keys[{i}]");
            if k.id == 0 {
                return Err(ConfigError(format!(
                    "{key}.id: give each key a non-zero id (it is written beside every record it encrypts)"
                )));
            }
            let text = match (&k.file, &k.env) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError(format!(
                        "{key} (key id {}): give exactly one of file or env (keys are never written in the config file)",
                        k.id
                    )))
                }
                (Some(f), None) => {
                    warn_if_readable_by_others(f, k.id);
                    std::fs::read_to_string(f).map_err(|e| {
                        ConfigError(format!("{key}.file (key id {}) {}: {e}", k.id, f.display()))
                    })?
                }
                (None, Some(var)) => env.get(var).cloned().ok_or_else(|| {
                    ConfigError(format!(
                        "{key}.env (key id {}): the variable {var} is not set",
                        k.id
                    ))
                })?,
            };
            let bytes = parse_hex_key(text.trim()).ok_or_else(|| {
                ConfigError(format!(
                    "{key} (key id {}): a key is 32 bytes written as 64 hex digits (e.g. `openssl rand -hex 32`)",
                    k.id
                ))
            })?;
            ring.insert(k.id, bytes)
                .map_err(|e| ConfigError(format!("{key}: {e}")))?;
        }
        ring.set_active(self.active_key).map_err(|e| {
            ConfigError(format!(
                "storage.encryption.active_key: {e} (add it to storage.encryption.keys)"
            ))
        })?;
        self.ring = ring;
        Ok(())
    }
}

fn parse_hex_key(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn warn_if_readable_by_others(path: &Path, id: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(key_id = id, file = %path.display(), mode = format!("{mode:o}"), "an encryption key file is readable by group or others; chmod 600 it");
        }
    }
}

impl OtlpReceiverConfig {
    /// `other_source`: spans also come from elsewhere (a JetStream stream), so both
    /// OTLP receivers may be off.
    fn validate(&self, other_source: bool) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        let r = self;
        if r.grpc.is_off() && r.http.is_off() && !other_source {
            return err(
                "receivers.otlp: both grpc and http are disabled; nothing would receive spans"
                    .into(),
            );
        }
        if r.max_request_bytes.0 == 0 {
            return err("receivers.otlp.max_request_bytes must be greater than 0".into());
        }
        if r.max_decompressed_bytes.0 < r.max_request_bytes.0 {
            return err(format!(
                "receivers.otlp.max_decompressed_bytes ({}) must be at least max_request_bytes ({})",
                r.max_decompressed_bytes, r.max_request_bytes
            ));
        }
        if r.max_decompressed_bytes.0 > (1 << 30) {
            return err("receivers.otlp.max_decompressed_bytes must be at most 1GiB".into());
        }
        if r.max_connections == 0 {
            return err("receivers.otlp.max_connections must be at least 1".into());
        }
        if r.max_concurrent_streams == 0 {
            return err("receivers.otlp.max_concurrent_streams must be at least 1".into());
        }
        for (key, d) in [
            ("receivers.otlp.header_read_timeout", r.header_read_timeout),
            ("receivers.otlp.body_read_timeout", r.body_read_timeout),
        ] {
            if d.0.is_zero() {
                return err(format!("{key} must be greater than 0"));
            }
        }
        if let Some(tls) = &r.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

impl AuditConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.file_bytes.0 < 4096 {
            return err(format!(
                "audit.file_bytes must be at least 4KiB, got {}",
                self.file_bytes
            ));
        }
        if self.max_bytes.0 != 0 && self.max_bytes.0 < 2 * self.file_bytes.0 {
            return err(format!(
                "audit.max_bytes ({}) must be 0 (automatic) or at least twice audit.file_bytes ({})",
                self.max_bytes, self.file_bytes
            ));
        }
        Ok(())
    }
}

/// The `config` crate names a key inside an array `destinations[0]endpoint`; we
/// write it as the rest of our messages do, `destinations[0].endpoint`.
fn dotted_keys(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 4);
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|n| n.is_alphanumeric() || *n == '_')
        {
            out.push('.');
        }
    }
    out
}

impl DestinationConfig {
    /// The egress limit as a token bucket, if one is set.
    pub fn egress_limit(&self) -> Option<crate::export::ratelimit::TokenBucket> {
        let rate = self.max_egress_bytes_per_s?.0;
        let burst = self.egress_burst.map(|b| b.0).unwrap_or(rate);
        let bucket = crate::export::ratelimit::TokenBucket::new(rate, burst);
        Some(if self.live_first {
            bucket.with_backlog_share(self.backlog_share)
        } else {
            bucket
        })
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        let d = self;
        if d.name.is_empty()
            || !d
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return err(format!(
                "{key}.name {:?}: use letters, digits, '-', '_' or '.'",
                d.name
            ));
        }
        if d.max_in_flight == 0 || d.max_in_flight > 1024 {
            return err(format!(
                "{key}.max_in_flight must be between 1 and 1024, got {}",
                d.max_in_flight
            ));
        }
        if d.timeout.0.is_zero() {
            return err(format!("{key}.timeout must be greater than 0"));
        }
        match (d.max_egress_bytes_per_s, d.egress_burst) {
            (Some(ByteSize(0)), _) => {
                return err(format!(
                "{key}.max_egress_bytes_per_s must be greater than 0 (leave it out for no limit)"
            ))
            }
            (None, Some(_)) => {
                return err(format!("{key}.egress_burst needs max_egress_bytes_per_s"))
            }
            (_, Some(ByteSize(0))) => {
                return err(format!("{key}.egress_burst must be greater than 0"))
            }
            _ => {}
        }
        if !(d.backlog_share > 0.0 && d.backlog_share < 1.0) {
            return err(format!(
                "{key}.backlog_share must be between 0 and 1 (exclusive), got {}",
                d.backlog_share
            ));
        }
        if d.live_lag.0.is_zero() {
            return err(format!("{key}.live_lag must be greater than 0"));
        }
        if d.backlog_order == BacklogOrder::NewestFirst && !d.live_first {
            return err(format!(
                "{key}.backlog_order = \"newest_first\" needs live_first = true (the backlog lane is what it orders)"
            ));
        }
        if d.max_age.is_some_and(|a| a.0.is_zero()) {
            return err(format!(
                "{key}.max_age must be greater than 0 (leave it out to keep records until delivered)"
            ));
        }
        if d.retry.initial_backoff.0.is_zero() || d.retry.max_backoff.0 < d.retry.initial_backoff.0
        {
            return err(format!(
                "{key}.retry: need 0 < initial_backoff ({}) <= max_backoff ({})",
                humantime::format_duration(d.retry.initial_backoff.0),
                humantime::format_duration(d.retry.max_backoff.0)
            ));
        }
        for (name, value) in &d.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return err(format!(
                    "{key}.headers: {name:?} is not a valid HTTP header name and value"
                ));
            }
        }
        match d.protocol {
            Protocol::Jetstream => d.validate_jetstream(key)?,
            Protocol::Grpc | Protocol::Http => d.validate_otlp(key)?,
        }
        Ok(())
    }

    fn validate_otlp(&self, key: &str) -> Result<(), ConfigError> {
        if self.endpoint.is_none() {
            return Err(ConfigError(format!(
                "{key}.endpoint is missing: name the backend (http://host:port)"
            )));
        }
        let only_jetstream = [
            ("urls", !self.urls.is_empty()),
            ("stream", !self.stream.is_empty()),
            ("subject", !self.subject.is_empty()),
            ("tenant", self.tenant.is_some()),
            ("create_stream", self.create_stream),
            ("stream_config", !self.stream_config.is_default()),
            ("credentials", !self.credentials.is_default()),
        ];
        if let Some((name, _)) = only_jetstream.iter().find(|(_, set)| *set) {
            return Err(ConfigError(format!(
                "{key}.{name} applies to protocol = \"jetstream\" only"
            )));
        }
        self.validate_tls(key)
    }

    fn validate_jetstream(&self, key: &str) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if let Some(e) = &self.endpoint {
            return err(format!(
                "{key}.endpoint {:?}: a JetStream destination names its servers in urls",
                e.as_str()
            ));
        }
        jetstream::check_urls(key, &self.urls)?;
        jetstream::check_name(&format!("{key}.stream"), &self.stream)?;
        if self.subject.is_empty() {
            return err(format!(
                "{key}.subject is missing: the subject records are published on"
            ));
        }
        jetstream::check_subject_template(&format!("{key}.subject"), &self.subject)?;
        if let Some(t) = &self.tenant {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return err(format!(
                    "{key}.tenant {t:?}: use letters, digits, '-' or '_' (it may be a subject token)"
                ));
            }
        } else if self.subject.contains("{tenant}") {
            return err(format!("{key}.subject uses {{tenant}}: set {key}.tenant"));
        }
        if !self.headers.is_empty() {
            return err(format!(
                "{key}.headers: not sent to JetStream (credentials go in {key}.credentials)"
            ));
        }
        if self.compression != Compression::None {
            return err(format!(
                "{key}.compression: JetStream messages carry the stored bytes; leave it \"none\""
            ));
        }
        if self.tls.server_name.is_some() {
            return err(format!(
                "{key}.tls.server_name: not supported for JetStream (the certificate is verified against the URL's host)"
            ));
        }
        let s = &self.stream_config;
        if !(1..=5).contains(&s.replicas) {
            return err(format!(
                "{key}.stream_config.replicas must be between 1 and 5, got {}",
                s.replicas
            ));
        }
        if s.duplicate_window.0 < Duration::from_millis(100) {
            return err(format!(
                "{key}.stream_config.duplicate_window must be at least 100ms"
            ));
        }
        self.validate_tls(key)
    }

    /// The URI exports go to: the endpoint for gRPC; for OTLP/HTTP the endpoint, with
    /// `/v1/traces` added when it has no path.
    pub fn export_uri(&self) -> http::Uri {
        let Some(endpoint) = &self.endpoint else {
            // Validated: only JetStream destinations have no endpoint.
            return http::Uri::from_static("nats://jetstream");
        };
        let uri = endpoint.uri().clone();
        if self.protocol == Protocol::Http && matches!(uri.path(), "" | "/") {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
            // A scheme and an authority with a path: always a valid URI.
            return http::Uri::from_parts(parts).unwrap_or(uri);
        }
        uri
    }

    /// TLS is used: an `https://` endpoint, or a `tls://` NATS server or TLS settings.
    pub fn is_https(&self) -> bool {
        match &self.endpoint {
            Some(e) => e.is_https(),
            None => jetstream::wants_tls(&self.urls, &self.tls),
        }
    }

    /// Where it sends, for logs and `status`: the endpoint, or the NATS servers and
    /// the stream.
    pub fn target(&self) -> String {
        match &self.endpoint {
            Some(e) => e.to_string(),
            None => format!("{} stream {}", self.urls.join(","), self.stream),
        }
    }

    fn validate_tls(&self, key: &str) -> Result<(), ConfigError> {
        use security::{check_pem, PemKind};
        let t = &self.tls;
        if !self.is_https() {
            if !t.is_default() {
                return Err(ConfigError(format!(
                    "{key}.tls: the endpoint {:?} is plain http://; use https:// for TLS",
                    self.target()
                )));
            }
            return Ok(());
        }
        if let Some(ca) = &t.ca_file {
            check_pem(&format!("{key}.tls.ca_file"), ca, PemKind::Certificates)?;
        }
        match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => {
                check_pem(&format!("{key}.tls.cert_file"), c, PemKind::Certificates)?;
                check_pem(&format!("{key}.tls.key_file"), k, PemKind::PrivateKey)?;
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError(format!(
                    "{key}.tls: cert_file and key_file go together"
                )))
            }
        }
        if let Some(n) = &t.server_name {
            if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
                return Err(ConfigError(format!(
                    "{key}.tls.server_name {n:?} is not a DNS name or IP address"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
