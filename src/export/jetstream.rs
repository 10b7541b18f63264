//! The JetStream destination: each log record is one message on the stream, its
//! idempotency key as `Nats-Msg-Id`, so a record published again (a retry, a
//! redelivery after a crash) within the stream's `duplicate_window` is stored once.
//! Only the stream's PubAck counts as delivery; `duplicate: true` counts too (the
//! stream already holds it).
//!
//! Failures sort as for OTLP: no responders (a leader election, a stream not yet
//! created), timeouts and disconnects are transient, retried with the same id for
//! as long as the record is in the log; a stream that is full is transient too, and
//! counted apart (`outcome="full"`); a message larger than the servers take is
//! permanent (a dead letter).

use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use tokio::sync::{Mutex, OnceCell};

use super::client::{Export, Receipt, Sent};
use crate::config::jetstream::{check_subject_template, Discard};
use crate::config::DestinationConfig;
use crate::nats::{connect, Servers};
use crate::otlp::wire::first_service_name;

/// The headers every message carries besides `Nats-Msg-Id`.
pub const HEADER_SPANS: &str = "Tracespool-Spans";
pub const HEADER_TENANT: &str = "Tracespool-Tenant";
pub const HEADER_INSTANCE: &str = "Tracespool-Instance";
pub const HEADER_SEQ: &str = "Tracespool-Seq";
pub const CONTENT_TYPE: &str = "application/x-protobuf";

/// A stream found missing is looked for again at most this often.
const STREAM_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct StreamCheck {
    ready: bool,
    failed: Option<(Instant, String)>,
}

pub struct JetStreamClient {
    cfg: DestinationConfig,
    instance_id: String,
    /// Connected on the first export (the connection itself is made and remade in
    /// the background).
    context: OnceCell<Context>,
    /// Whether the stream is known to exist (checked, or created with
    /// `create_stream`); while it is not, the last failed check and when, so that
    /// every record in flight does not ask the servers again at once.
    stream: Mutex<StreamCheck>,
    /// `max_egress_bytes_per_s`, on the message bytes.
    limit: Option<super::ratelimit::TokenBucket>,
}

impl JetStreamClient {
    pub fn new(cfg: &DestinationConfig, instance_id: &str) -> Self {
        Self {
            cfg: cfg.clone(),
            instance_id: instance_id.to_string(),
            context: OnceCell::new(),
            stream: Mutex::new(StreamCheck::default()),
            limit: cfg.egress_limit(),
        }
    }

    async fn context(&self) -> Result<&Context, String> {
        self.context
            .get_or_try_init(|| async {
                let client = connect(&Servers {
                    name: format!("tracespool {} → {}", self.instance_id, self.cfg.name),
                    urls: &self.cfg.urls,
                    credentials: &self.cfg.credentials,
                    tls: &self.cfg.tls,
                    timeout: self.cfg.timeout.0,
                })
                .await?;
                let mut js = async_nats::jetstream::new(client);
                js.set_timeout(self.cfg.timeout.0);
                Ok(js)
            })
            .await
    }

    /// The subject for a record: the template with its placeholders filled.
    fn subject(&self, payload: &[u8]) -> String {
        let mut out = String::with_capacity(self.cfg.subject.len() + 16);
        for (i, t) in self.cfg.subject.split('.').enumerate() {
            if i > 0 {
                out.push('.');
            }
            match t {
                "{tenant}" => out.push_str(self.cfg.tenant.as_deref().unwrap_or("default")),
                "{instance}" => push_token(&mut out, &self.instance_id),
                "{service}" => push_token(
                    &mut out,
                    first_service_name(payload).unwrap_or("unknown_service"),
                ),
                literal => out.push_str(literal),
            }
        }
        out
    }

    /// Checks the stream exists, creating it when configured to. A missing stream
    /// is an error the worker retries (and logs) until someone creates it.
    async fn ensure_stream(&self, js: &Context) -> Result<(), Sent> {
        let mut check = self.stream.lock().await;
        if check.ready {
            return Ok(());
        }
        let transient = |reason: String| Sent::Transient {
            reason,
            retry_after: None,
        };
        if let Some((at, why)) = &check.failed {
            if at.elapsed() < STREAM_CHECK_EVERY {
                return Err(transient(why.clone()));
            }
        }
        let r = self.check_stream(js).await;
        match &r {
            Ok(()) => check.ready = true,
            Err(Sent::Transient { reason, .. }) => {
                check.failed = Some((Instant::now(), reason.clone()))
            }
            Err(_) => {}
        }
        r
    }

    async fn check_stream(&self, js: &Context) -> Result<(), Sent> {
        let transient = |reason: String| Sent::Transient {
            reason,
            retry_after: None,
        };
        match js.get_stream(&self.cfg.stream).await {
            Ok(_) => {}
            Err(e) if !self.cfg.create_stream => {
                return Err(transient(format!(
                    "stream {:?}: {e}; create it, or set create_stream = true",
                    self.cfg.stream
                )))
            }
            Err(_) => {
                let s = &self.cfg.stream_config;
                let subject = check_subject_template("subject", &self.cfg.subject)
                    .map_err(|e| Sent::Permanent { reason: e.0 })?;
                let config = stream::Config {
                    name: self.cfg.stream.clone(),
                    subjects: vec![subject],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    num_replicas: s.replicas,
                    duplicate_window: s.duplicate_window.0,
                    max_bytes: if s.max_bytes.0 == 0 {
                        -1
                    } else {
                        s.max_bytes.0 as i64
                    },
                    max_age: s.max_age.0,
                    discard: match s.discard {
                        Discard::New => stream::DiscardPolicy::New,
                        Discard::Old => stream::DiscardPolicy::Old,
                    },
                    ..Default::default()
                };
                js.get_or_create_stream(config).await.map_err(|e| {
                    transient(format!("creating stream {:?}: {e}", self.cfg.stream))
                })?;
                tracing::info!(
                    destination = %self.cfg.name,
                    stream = %self.cfg.stream,
                    replicas = s.replicas,
                    duplicate_window = %humantime::format_duration(s.duplicate_window.0),
                    "created the JetStream stream"
                );
            }
        }
        Ok(())
    }

    pub async fn send(&self, export: Export<'_>) -> (Sent, u64) {
        let wire = export.payload.len() as u64;
        let js = match self.context().await {
            Ok(js) => js,
            Err(reason) => {
                return (
                    Sent::Transient {
                        reason,
                        retry_after: None,
                    },
                    0,
                )
            }
        };
        if let Err(sent) = self.ensure_stream(js).await {
            return (sent, 0);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", export.key);
        headers.insert("Content-Type", CONTENT_TYPE);
        headers.insert(HEADER_SPANS, export.spans.to_string().as_str());
        headers.insert(HEADER_INSTANCE, self.instance_id.as_str());
        headers.insert(HEADER_SEQ, export.seq.to_string().as_str());
        if let Some(t) = &self.cfg.tenant {
            headers.insert(HEADER_TENANT, t.as_str());
        }
        // The stored bytes go as they are: a zstd record stays zstd in the stream
        // (and in the gateway's spool, which stores it as it comes).
        if export.codec == crate::payload::PROTOBUF_ZSTD {
            headers.insert("Content-Encoding", "zstd");
        }
        let subject =
            if self.cfg.subject.contains("{service}") && export.codec != crate::payload::PROTOBUF {
                match crate::payload::protobuf(export.codec, &export.payload) {
                    Ok(plain) => self.subject(&plain),
                    Err(e) => {
                        return (
                            Sent::Permanent {
                                reason: format!(
                                    "the stored payload of seq {} cannot be read: {e}",
                                    export.seq
                                ),
                            },
                            0,
                        )
                    }
                }
            } else {
                self.subject(&export.payload)
            };
        if let Some(l) = &self.limit {
            l.take(export.payload.len() as u64, export.lane).await;
        }
        let sent = match js
            .publish_with_headers(subject, headers, export.payload)
            .await
        {
            Err(e) => classify(e.kind(), &e.to_string()),
            Ok(ack) => match ack.await {
                Ok(ack) if ack.stream != self.cfg.stream => Sent::Permanent {
                    reason: format!(
                        "the subject belongs to stream {:?}, not {:?}",
                        ack.stream, self.cfg.stream
                    ),
                },
                Ok(ack) => Sent::Ok {
                    rejected: 0,
                    message: String::new(),
                    receipt: Some(Receipt {
                        stream: ack.stream,
                        stream_seq: ack.sequence,
                        duplicate: ack.duplicate,
                    }),
                },
                Err(e) => classify(e.kind(), &format!("{e}: {}", source_text(&e))),
            },
        };
        (sent, wire)
    }
}

/// What the source error says (the server's JetStream error, with its code).
fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

/// Sorts a failed publish. The server's error text is all the client gives for
/// most of them; codes appear in it (`err_code=10077`).
fn classify(kind: PublishErrorKind, text: &str) -> Sent {
    let transient = |reason: String| Sent::Transient {
        reason,
        retry_after: None,
    };
    match kind {
        PublishErrorKind::StreamNotFound => transient(format!(
            "no responders (a leader election, or no stream for the subject): {text}"
        )),
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => transient(text.to_string()),
        PublishErrorKind::MaxPayloadExceeded => Sent::Permanent {
            reason: text.to_string(),
        },
        _ => {
            let t = text.to_ascii_lowercase();
            if t.contains("maximum bytes")
                || t.contains("maximum messages")
                || t.contains("resources exceeded")
                || t.contains("10077")
                || t.contains("10047")
                || t.contains("10028")
            {
                Sent::Full {
                    reason: text.to_string(),
                }
            } else if t.contains("message size exceeds") || t.contains("10054") {
                Sent::Permanent {
                    reason: text.to_string(),
                }
            } else {
                transient(text.to_string())
            }
        }
    }
}

/// Appends `s` as one subject token: characters a subject cannot hold become '_'.
fn push_token(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push('_');
    }
    for c in s.chars().take(128) {
        out.push(
            if c.is_whitespace() || c.is_control() || "./*>".contains(c) {
                '_'
            } else {
                c
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_fill_placeholders_with_safe_tokens() {
        let cfg = DestinationConfig {
            subject: "traces.{tenant}.{service}.{instance}".into(),
            tenant: Some("shop-1".into()),
            ..Default::default()
        };
        let c = JetStreamClient::new(&cfg, "edge-1");
        assert_eq!(c.subject(b""), "traces.shop-1.unknown_service.edge-1");
        let mut out = String::new();
        push_token(&mut out, "a.b c*>");
        assert_eq!(out, "a_b_c__");
    }

    #[test]
    fn full_streams_and_elections_are_retried_oversized_messages_are_not() {
        let full = classify(
            PublishErrorKind::Other,
            "publish failed: maximum bytes exceeded (code 503, error code 10077)",
        );
        assert!(matches!(full, Sent::Full { .. }), "{full:?}");
        assert!(matches!(
            classify(PublishErrorKind::StreamNotFound, "no responders"),
            Sent::Transient { .. }
        ));
        assert!(matches!(
            classify(PublishErrorKind::TimedOut, "timed out"),
            Sent::Transient { .. }
        ));
        assert!(matches!(
            classify(PublishErrorKind::MaxPayloadExceeded, "too big"),
            Sent::Permanent { .. }
        ));
    }
}
