//! Metrics in the Prometheus text format (`prometheus-client`, the Prometheus
//! project's Rust client). Counters and histograms are updated where things happen;
//! gauges about the log, backlogs and the process are read at scrape time.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tracespool_receiver_requests_total` | protocol, outcome | requests by outcome: accepted, duplicate, empty (no span: answered success, not stored), abandoned (the client left before the answer), invalid, too_large, unsupported_media, full, in_flight, unavailable, unauthenticated, timed_out |
//! | `tracespool_spans_received_total` | protocol | spans in valid requests |
//! | `tracespool_spans_persisted_total` | | spans durable in the log |
//! | `tracespool_spans_delivered_total` | destination | spans a backend accepted |
//! | `tracespool_spans_dropped_total` | reason, destination | drop_oldest, corruption, dead_letter, expired |
//! | `tracespool_records_dropped_total` | reason, destination | the same in records (batches) |
//! | `tracespool_spans_delivered_after_eviction_total` | destination | counted as drop_oldest, then delivered after all |
//! | `tracespool_spans_rejected_by_backend_total` | destination | partial success `rejected_spans` |
//! | `tracespool_export_requests_total` | destination, outcome | success, retryable, full, permanent, auth |
//! | `tracespool_export_duplicates_total` | destination | JetStream PubAcks with `duplicate: true` (delivered already) |
//! | `tracespool_jetstream_messages_total` | outcome | source messages: stored, duplicate, discarded, refused (and not acked), invalid (terminated) |
//! | `tracespool_export_duration_seconds` | destination | one export attempt |
//! | `tracespool_export_retries_total` | destination | attempts after a failure |
//! | `tracespool_egress_bytes_total` | destination | bytes sent, after compression |
//! | `tracespool_wal_record_bytes_total` | form | bytes of stored records as OTLP protobuf (`protobuf`) and as written, compressed (`stored`) |
//! | `tracespool_wal_compression_ratio` | | protobuf bytes per stored byte since start |
//! | `tracespool_append_duration_seconds` | | receive → durable (the ack latency) |
//! | `tracespool_wal_bytes`, `_budget_bytes`, `_segments` | | the log on disk |
//! | `tracespool_wal_fsync_duration_seconds` | | each `fdatasync` of the log |
//! | `tracespool_backlog_spans`, `_records`, `_bytes`, `_oldest_age_seconds` | destination | waiting for delivery (not acknowledged) |
//! | `tracespool_lane_backlog_records` | destination, lane | seqs each lane (`live`, `backlog`) still holds (`live_first`) |
//! | `tracespool_drained_bytes_total` | destination | bytes (as stored) of the records that reached their end |
//! | `tracespool_catchup_eta_seconds` | destination | backlog ÷ (drain − arrival rate) over the last 15 s (0: none; +Inf: not shrinking) |
//! | `tracespool_budget_full_eta_seconds` | | budget left ÷ (arrival − slowest drain rate) over the last 15 s (+Inf: not growing) |
//! | `tracespool_dead_letters_total` | destination | records refused permanently |
//! | `tracespool_dedup_keys` | | idempotency keys remembered |
//! | `tracespool_redacted_attributes_total` | rule | attributes a `redact` rule changed |
//! | `tracespool_spans_sampled_out_total` | service | spans a `sample` processor left out (service: a configured one, or `other`) |
//! | `tracespool_sample_rate` | service | the configured rate in effect |
//! | `tracespool_spans_filtered_total` | filter | spans a `filter` processor dropped |
//! | `tracespool_limits_applied_total` | limit | attributes_dropped, values_truncated, events_dropped, links_dropped, requests_refused |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_start_time_seconds` | | the process |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolOutcome {
    pub protocol: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverOutcome {
    pub receiver: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabel {
    pub receiver: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormLabel {
    pub form: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// What became of a message taken from the JetStream source.
pub const JETSTREAM_OUTCOMES: [&str; 5] =
    ["stored", "duplicate", "discarded", "refused", "invalid"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabel {
    pub filter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    pub destination: String,
    pub lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationOutcome {
    pub destination: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonDestination {
    pub reason: &'static str,
    pub destination: String,
}

/// Seconds buckets for latencies from sub-millisecond to a minute.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ]
}

fn histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

pub const PROTOCOLS: [&str; 4] = ["grpc", "http/protobuf", "http/json", "jetstream"];
pub const RECEIVERS: [&str; 2] = ["grpc", "http"];
pub const CONNECTION_OUTCOMES: [&str; 4] = ["accepted", "over_limit", "tls_failed", "timed_out"];
pub const EXPORT_OUTCOMES: [&str; 5] = ["success", "retryable", "full", "permanent", "auth"];

/// The metrics, shared by everything that updates them.
pub struct Metrics {
    registry: Registry,
    pub receiver_requests: Family<ProtocolOutcome, Counter>,
    pub spans_received: Family<ProtocolLabel, Counter>,
    pub spans_persisted: Counter,
    pub spans_delivered: Family<DestinationLabel, Counter>,
    pub spans_dropped: Family<ReasonDestination, Counter>,
    pub records_dropped: Family<ReasonDestination, Counter>,
    pub spans_delivered_after_eviction: Family<DestinationLabel, Counter>,
    pub spans_rejected_by_backend: Family<DestinationLabel, Counter>,
    pub export_requests: Family<DestinationOutcome, Counter>,
    pub export_duration: Family<DestinationLabel, Histogram, fn() -> Histogram>,
    pub export_retries: Family<DestinationLabel, Counter>,
    pub export_duplicates: Family<DestinationLabel, Counter>,
    pub jetstream_messages: Family<OutcomeLabel, Counter>,
    pub egress_bytes: Family<DestinationLabel, Counter>,
    /// Bytes of records stored since start: as OTLP protobuf, and as stored.
    pub record_bytes: Family<FormLabel, Counter>,
    pub compression_ratio: Gauge<f64, AtomicU64>,
    pub dead_letters: Family<DestinationLabel, Counter>,
    pub append_duration: Histogram,
    pub receiver_connections: Family<ReceiverOutcome, Counter>,
    pub receiver_open_connections: Family<ReceiverLabel, Gauge>,
    pub tls_reloads: Family<ResultLabel, Counter>,
    pub redacted_attributes: Family<RuleLabel, Counter>,
    pub spans_sampled_out: Family<ServiceLabel, Counter>,
    pub sample_rate: Family<ServiceLabel, Gauge<f64, AtomicU64>>,
    pub spans_filtered: Family<FilterLabel, Counter>,
    pub limits_applied: Family<LimitLabel, Counter>,
    /// Filled in by the app once the log and destinations exist.
    pub live: Arc<Mutex<Option<LiveState>>>,
}

/// Where scrape-time gauges come from.
pub struct LiveState {
    pub wal: tracespool_storage::Wal,
    pub cursors: Vec<tracespool_storage::Cursor>,
    /// Beside each cursor, its destination's lanes and drained bytes.
    pub statuses: Vec<Arc<crate::export::DestinationStatus>>,
    pub rates: Arc<crate::rates::Rates>,
    pub dedup_keys: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl Metrics {
    /// Bytes of records as written (compressed) since start.
    pub fn stored_bytes(&self) -> u64 {
        self.record_bytes
            .get_or_create(&FormLabel { form: "stored" })
            .get()
    }

    /// A record of `protobuf` bytes was stored as `stored` bytes.
    pub fn record_stored(&self, protobuf: u64, stored: u64) {
        // One guard at a time: a family's guard holds its lock.
        let p = self
            .record_bytes
            .get_or_create(&FormLabel { form: "protobuf" })
            .inc_by(protobuf)
            + protobuf;
        let s = self
            .record_bytes
            .get_or_create(&FormLabel { form: "stored" })
            .inc_by(stored)
            + stored;
        if s > 0 {
            self.compression_ratio.set(p as f64 / s as f64);
        }
    }

    pub fn new(destinations: &[String]) -> Arc<Self> {
        let mut m = Self {
            receiver_requests: Family::default(),
            spans_received: Family::default(),
            spans_persisted: Counter::default(),
            spans_delivered: Family::default(),
            spans_dropped: Family::default(),
            records_dropped: Family::default(),
            spans_delivered_after_eviction: Family::default(),
            spans_rejected_by_backend: Family::default(),
            export_requests: Family::default(),
            export_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            export_retries: Family::default(),
            export_duplicates: Family::default(),
            jetstream_messages: Family::default(),
            egress_bytes: Family::default(),
            record_bytes: Family::default(),
            compression_ratio: Gauge::default(),
            dead_letters: Family::default(),
            append_duration: histogram(),
            receiver_connections: Family::default(),
            receiver_open_connections: Family::default(),
            tls_reloads: Family::default(),
            redacted_attributes: Family::default(),
            spans_sampled_out: Family::default(),
            sample_rate: Family::default(),
            spans_filtered: Family::default(),
            limits_applied: Family::default(),
            live: Arc::new(Mutex::new(None)),
            registry: Registry::default(),
        };
        // Exported from the start (0 bytes, ratio 1), before any record is stored.
        for form in ["protobuf", "stored"] {
            let _ = m.record_bytes.get_or_create(&FormLabel { form });
        }
        m.compression_ratio.set(1.0);
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("tracespool");
        registry.register(
            "receiver_requests",
            "OTLP export requests received, by outcome",
            m.receiver_requests.clone(),
        );
        registry.register(
            "spans_received",
            "Spans in valid requests received",
            m.spans_received.clone(),
        );
        registry.register(
            "wal_record_bytes",
            "Bytes of the records stored since start, as OTLP protobuf (form=protobuf) and as written to the log, compressed (form=stored)",
            m.record_bytes.clone(),
        );
        registry.register(
            "wal_compression_ratio",
            "Protobuf bytes per stored byte of the records stored since start (1 without compression)",
            m.compression_ratio.clone(),
        );
        registry.register(
            "spans_persisted",
            "Spans made durable in the log",
            m.spans_persisted.clone(),
        );
        registry.register(
            "spans_delivered",
            "Spans a destination accepted",
            m.spans_delivered.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans given up for a destination: evicted by drop_oldest, lost to corruption, refused permanently (dead letter), or older than max_age (expired)",
            m.spans_dropped.clone(),
        );
        registry.register(
            "records_dropped",
            "Records (batches) given up for a destination, by reason (spans of damaged records are not always known)",
            m.records_dropped.clone(),
        );
        registry.register(
            "spans_delivered_after_eviction",
            "Spans counted as dropped by drop_oldest that were in flight and delivered after all",
            m.spans_delivered_after_eviction.clone(),
        );
        registry.register(
            "spans_rejected_by_backend",
            "Spans a destination reported rejected in a partial success",
            m.spans_rejected_by_backend.clone(),
        );
        registry.register(
            "export_requests",
            "Export attempts, by outcome",
            m.export_requests.clone(),
        );
        registry.register_with_unit(
            "export_duration",
            "Duration of one export attempt",
            Unit::Seconds,
            m.export_duration.clone(),
        );
        registry.register(
            "export_retries",
            "Export attempts after a failed one",
            m.export_retries.clone(),
        );
        registry.register(
            "export_duplicates",
            "Exports a JetStream stream acknowledged as duplicates of a message it holds",
            m.export_duplicates.clone(),
        );
        registry.register(
            "jetstream_messages",
            "Messages taken from the JetStream source, by what became of them",
            m.jetstream_messages.clone(),
        );
        registry.register_with_unit(
            "egress",
            "Bytes sent to destinations, after compression",
            Unit::Bytes,
            m.egress_bytes.clone(),
        );
        registry.register(
            "dead_letters",
            "Records a destination refused permanently",
            m.dead_letters.clone(),
        );
        registry.register_with_unit(
            "append_duration",
            "From receiving a request to its batch being durable (the ack latency)",
            Unit::Seconds,
            m.append_duration.clone(),
        );
        registry.register(
            "receiver_connections",
            "Connections to the receivers, by outcome: accepted, over_limit (max_connections), tls_failed, timed_out (no handshake or first bytes in time)",
            m.receiver_connections.clone(),
        );
        registry.register(
            "receiver_open_connections",
            "Connections open now",
            m.receiver_open_connections.clone(),
        );
        registry.register(
            "tls_reloads",
            "Reloads of the receivers' TLS certificate, by result",
            m.tls_reloads.clone(),
        );
        registry.register(
            "redacted_attributes",
            "Attributes changed by a redact rule (deny_keys, a built-in pattern or a custom one)",
            m.redacted_attributes.clone(),
        );
        registry.register(
            "spans_sampled_out",
            "Spans left out by head sampling (service: a configured one, or other)",
            m.spans_sampled_out.clone(),
        );
        registry.register(
            "sample_rate",
            "The head-sampling rate in effect, by service (other: the default rate)",
            m.sample_rate.clone(),
        );
        registry.register(
            "spans_filtered",
            "Spans dropped by a filter processor",
            m.spans_filtered.clone(),
        );
        registry.register(
            "limits_applied",
            "What the limits processor cut: attributes_dropped, values_truncated, events_dropped, links_dropped, requests_refused",
            m.limits_applied.clone(),
        );
        registry.register_collector(Box::new(LiveCollector(m.live.clone())));
        root.register_collector(Box::new(ProcessCollector));
        m.registry = root;
        // Every series we know of exists from the start, at zero, so dashboards and
        // alerts see them before the first event.
        for protocol in PROTOCOLS {
            let _ = m.spans_received.get_or_create(&ProtocolLabel { protocol });
            for outcome in crate::accounting::Intake::SUCCESSES
                .into_iter()
                .chain(crate::status::Rejection::KINDS)
            {
                let _ = m
                    .receiver_requests
                    .get_or_create(&ProtocolOutcome { protocol, outcome });
            }
        }
        for receiver in RECEIVERS {
            let _ = m
                .receiver_open_connections
                .get_or_create(&ReceiverLabel { receiver });
            for outcome in CONNECTION_OUTCOMES {
                let _ = m
                    .receiver_connections
                    .get_or_create(&ReceiverOutcome { receiver, outcome });
            }
        }
        for result in ["ok", "error"] {
            let _ = m.tls_reloads.get_or_create(&ResultLabel { result });
        }
        for outcome in JETSTREAM_OUTCOMES {
            let _ = m
                .jetstream_messages
                .get_or_create(&OutcomeLabel { outcome });
        }
        for d in destinations {
            let dest = DestinationLabel {
                destination: d.clone(),
            };
            let _ = m.spans_delivered.get_or_create(&dest);
            let _ = m.spans_delivered_after_eviction.get_or_create(&dest);
            let _ = m.spans_rejected_by_backend.get_or_create(&dest);
            let _ = m.export_duration.get_or_create(&dest);
            let _ = m.export_retries.get_or_create(&dest);
            let _ = m.export_duplicates.get_or_create(&dest);
            let _ = m.egress_bytes.get_or_create(&dest);
            let _ = m.dead_letters.get_or_create(&dest);
            for outcome in EXPORT_OUTCOMES {
                let _ = m.export_requests.get_or_create(&DestinationOutcome {
                    destination: d.clone(),
                    outcome,
                });
            }
            for reason in crate::accounting::DropReason::ALL {
                let label = ReasonDestination {
                    reason: reason.as_str(),
                    destination: d.clone(),
                };
                let _ = m.spans_dropped.get_or_create(&label);
                let _ = m.records_dropped.get_or_create(&label);
            }
        }
        Arc::new(m)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    pub fn received(&self, protocol: &'static str, outcome: &'static str) {
        self.receiver_requests
            .get_or_create(&ProtocolOutcome { protocol, outcome })
            .inc();
    }

    /// `records` (and `spans`, when known) given up for `destination`.
    pub fn dropped(&self, reason: &'static str, destination: &str, records: u64, spans: u64) {
        let label = ReasonDestination {
            reason,
            destination: destination.to_string(),
        };
        self.spans_dropped.get_or_create(&label).inc_by(spans);
        self.records_dropped.get_or_create(&label).inc_by(records);
    }

    pub fn connection(&self, receiver: &'static str, outcome: &'static str) {
        self.receiver_connections
            .get_or_create(&ReceiverOutcome { receiver, outcome })
            .inc();
    }

    pub fn open_connections(&self, receiver: &'static str, delta: i64) {
        self.receiver_open_connections
            .get_or_create(&ReceiverLabel { receiver })
            .inc_by(delta);
    }

    pub fn tls_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn dest(&self, destination: &str) -> DestinationLabel {
        DestinationLabel {
            destination: destination.to_string(),
        }
    }
}

/// Scrape-time gauges of the log and backlogs.
#[derive(Debug)]
struct LiveCollector(Arc<Mutex<Option<LiveState>>>);

impl std::fmt::Debug for LiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveState")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn per_destination(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[(String, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (d, v) in values {
        let label = DestinationLabel {
            destination: d.clone(),
        };
        ConstGauge::new(*v).encode(m.encode_family(&label)?)?;
    }
    Ok(())
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.0.lock().unwrap();
        let Some(live) = guard.as_ref() else {
            return Ok(());
        };
        let stats = live.wal.stats();
        gauge(
            &mut encoder,
            "wal",
            "Bytes of all log segments",
            Some(&Unit::Bytes),
            stats.bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "wal_budget",
            "The log's disk budget (storage.max_bytes)",
            Some(&Unit::Bytes),
            stats.max_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "wal_segments",
            "Log segment files",
            None,
            stats.segments as f64,
        )?;
        gauge(
            &mut encoder,
            "wal_failed",
            "1 when the log stopped accepting appends after an I/O error it cannot recover from",
            None,
            stats.failed.is_some() as u8 as f64,
        )?;
        {
            let m = encoder.encode_descriptor(
                "wal_fsyncs",
                "fdatasync calls of the log",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(stats.syncs).encode(m)?;
        }
        {
            let h = &stats.sync_durations;
            let mut m = encoder.encode_descriptor(
                "wal_fsync_duration",
                "Duration of each fdatasync of the log",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum_seconds,
                h.count,
                &h.buckets,
                None,
            )?;
        }
        let now = SystemTime::now();
        let mut spans = Vec::new();
        let mut records = Vec::new();
        let mut bytes = Vec::new();
        let mut age = Vec::new();
        for c in &live.cursors {
            let b = live.wal.backlog_of(c);
            let name = c.name().to_string();
            spans.push((name.clone(), b.spans as f64));
            records.push((name.clone(), b.records as f64));
            bytes.push((name.clone(), b.bytes as f64));
            let a = b
                .oldest_received_at
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            age.push((name, a.as_secs_f64()));
        }
        per_destination(
            &mut encoder,
            "backlog_spans",
            "Spans stored and not yet delivered to the destination",
            None,
            &spans,
        )?;
        per_destination(
            &mut encoder,
            "backlog_records",
            "Records (batches) not yet delivered",
            None,
            &records,
        )?;
        per_destination(
            &mut encoder,
            "backlog",
            "Bytes of the records not yet delivered",
            Some(&Unit::Bytes),
            &bytes,
        )?;
        per_destination(
            &mut encoder,
            "backlog_oldest_age",
            "Age of the oldest record not yet delivered (0 when none)",
            Some(&Unit::Seconds),
            &age,
        )?;
        {
            let mut m = encoder.encode_descriptor(
                "lane_backlog_records",
                "Seqs each lane still holds (live_first: live and backlog)",
                None,
                MetricType::Gauge,
            )?;
            for (c, st) in live.cursors.iter().zip(&live.statuses) {
                let (l, b) = st.lanes.waiting(c);
                for (lane, v) in [("live", l), ("backlog", b)] {
                    let label = LaneLabel {
                        destination: c.name().to_string(),
                        lane,
                    };
                    ConstGauge::new(v as f64).encode(m.encode_family(&label)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "drained",
                "Bytes (as stored) of the records that reached their end (delivered, dead-lettered, expired)",
                Some(&Unit::Bytes),
                MetricType::Counter,
            )?;
            for (c, st) in live.cursors.iter().zip(&live.statuses) {
                let label = DestinationLabel {
                    destination: c.name().to_string(),
                };
                ConstCounter::new(st.drained_bytes.load(Ordering::Relaxed))
                    .encode(m.encode_family(&label)?)?;
            }
        }
        // Exported from the start: NaN until there is a window to take rates
        // over (a comparison with NaN is false: no alert fires on it).
        let e = live
            .rates
            .estimates()
            .unwrap_or_else(|| crate::rates::Estimates {
                catchup_seconds: live
                    .cursors
                    .iter()
                    .map(|c| (c.name().to_string(), f64::NAN))
                    .collect(),
                budget_full_seconds: f64::NAN,
            });
        {
            per_destination(
                &mut encoder,
                "catchup_eta",
                "Backlog bytes over (its drain rate - the arrival rate) in the last 15 s (0: no backlog; +Inf: not shrinking)",
                Some(&Unit::Seconds),
                &e.catchup_seconds,
            )?;
            gauge(
                &mut encoder,
                "budget_full_eta",
                "Budget left over (the arrival rate - the slowest destination's drain rate) in the last 15 s (+Inf: not growing)",
                Some(&Unit::Seconds),
                e.budget_full_seconds,
            )?;
        }
        gauge(
            &mut encoder,
            "dedup_keys",
            "Idempotency keys remembered",
            None,
            (live.dedup_keys)() as f64,
        )?;
        Ok(())
    }
}

/// `process_*` metrics from /proc, as the Prometheus client libraries name them.
#[derive(Debug)]
struct ProcessCollector;

static START: AtomicU64 = AtomicU64::new(0);

/// Records the process start time (call once, early).
pub fn mark_start() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let _ = START.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
}

fn proc_stat() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let rss_pages = f.get(21)?.parse::<f64>().ok()?;
    Some((ticks / 100.0, rss_pages * 4096.0))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((cpu, rss)) = proc_stat() {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                rss,
            )?;
        }
        gauge(
            &mut encoder,
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            START.load(Ordering::Relaxed) as f64,
        )?;
        Ok(())
    }
}

/// A timer for histograms in seconds.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
