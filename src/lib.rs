//! tracespool: a durable, disk-backed forwarder for OpenTelemetry traces.
//!
//! The data path reads one way: receive → check → append (durable) → answer;
//! log → export → cursor. Receivers and exporters never call each other.
//!
//! | module       | what it holds                                                        |
//! |--------------|----------------------------------------------------------------------|
//! | [`config`]   | typed configuration: file, environment overrides, OTEL variables     |
//! | [`receiver`] | the receivers translate wire formats; `Ingest::receive` does the rest |
//! | [`accounting`] | every audited event: its ledger entry, metrics and log line, once   |
//! | [`status`]   | how refusals become gRPC and HTTP statuses (one place)               |
//! | [`otlp`]     | protobuf check without decoding, JSON conversion, pass-through codec |
//! | [`payload`]  | the codec registry: zstd on the way in, pass-through or transcoding out |
//! | [`dedup`]    | idempotency keys seen within the window, crash-consistent            |
//! | [`export`]   | replay workers, OTLP clients, retry with backoff                     |
//! | [`deadletter`] | records refused permanently, kept on disk                          |
//! | [`instance`] | the instance id used in export idempotency keys                      |
//! | [`metrics`]  | Prometheus metrics; [`admin`]: /metrics, /healthz, /readyz           |
//! | [`ledger`]   | the audit ledger and its reconciliation                              |
//! | [`rates`]    | recent drain and growth rates: the catch-up and budget-full ETAs     |
//! | [`state`]    | state.json: what a running forwarder publishes for the tools         |
//! | [`tools`]    | `status`, `wal`, `audit`, `replay`, `dead-letter`                    |
//! | [`pem`]      | PEM certificates, keys and CA bundles; the crypto provider (both sides) |
//! | [`app`]      | the composition root: `start` → `Running` (addresses, `wait`, `shutdown`) |
//!
//! The write-ahead log itself is the `tracespool-storage` crate in `storage/`.

pub mod accounting;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod dedup;
pub mod export;
pub mod fsio;
#[doc(hidden)]
pub mod fuzzing;
pub mod instance;
pub mod ledger;
pub mod metrics;
pub mod nats;
pub mod otlp;
pub mod payload;
pub mod pem;
pub mod process;
pub mod rates;
pub mod receiver;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod throttle;
pub mod tools;
