//! The JetStream source (a gateway): a durable pull consumer on a stream that edges
//! publish their logs into. Each message goes through [`Ingest::receive`] like any
//! OTLP request — its `Nats-Msg-Id` through our receive-side dedup — and is
//! acknowledged only once it is durable in our log, with the server's confirmation
//! of the ack awaited (`double_ack`). Custody passes edge log → stream → our log
//! with no moment where one crash loses a batch: a crash before the ack makes the
//! stream deliver the message again (after `ack_wait`), and the dedup index stores
//! it once.
//!
//! The message id is kept with the record as a relay key (`relay:<id>`), and our
//! destinations export the record with that id as its idempotency key: the edge's
//! key, end to end. Two gateways that both stored a repeat (an edge that re-sent
//! after an outage longer than the stream's `duplicate_window`, drained by two
//! gateways) export it under the same key, which a deduplicating backend keeps once.
//!
//! A message we refuse for now (the spool is full) is negatively acknowledged with
//! the delay the receivers suggest; one we can never store (not an OTLP request) is
//! terminated, and its refusal is in the ledger like any other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::AckKind;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Accepted, Compression, Ingest, Rejection, Request, Source};
use crate::config::JetStreamReceiverConfig;
use crate::export::jetstream::HEADER_TENANT;
use crate::export::retry::Backoff;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::throttle::Throttle;

/// Runs until `stop`: (re)connects, binds the durable consumer (creating it if it
/// does not exist) and stores what it delivers. Never gives up: servers that are
/// down, a stream not yet created, a lost connection are logged and retried.
pub async fn run(
    cfg: JetStreamReceiverConfig,
    instance_id: String,
    ingest: Arc<Ingest>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), String> {
    let client = crate::nats::connect(&crate::nats::Servers {
        name: format!("tracespool {instance_id} ← {}", cfg.stream),
        urls: &cfg.urls,
        credentials: &cfg.credentials,
        tls: &cfg.tls,
        timeout: Duration::from_secs(10),
    })
    .await?;
    let js = async_nats::jetstream::new(client);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let warn = Throttle::new(Duration::from_secs(10));
    tracing::info!(
        stream = %cfg.stream,
        consumer = %cfg.consumer,
        urls = %cfg.urls.join(","),
        "JetStream source started"
    );
    while !stop.is_cancelled() {
        let consumer = match bind(&js, &cfg).await {
            Ok(c) => c,
            Err(e) => {
                let wait = backoff.next(None);
                if warn.allow() {
                    tracing::warn!(stream = %cfg.stream, consumer = %cfg.consumer, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot bind the JetStream consumer; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        match drain(&consumer, &cfg, &ingest, &metrics, &stop).await {
            Ok(()) => break,
            Err(e) => {
                let wait = backoff.next(None);
                if warn.allow() {
                    tracing::warn!(stream = %cfg.stream, consumer = %cfg.consumer, error = %e, retry_in_ms = wait.as_millis() as u64, "JetStream pull failed; pulling again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(stream = %cfg.stream, "JetStream source stopped");
    Ok(())
}

async fn bind(
    js: &async_nats::jetstream::Context,
    cfg: &JetStreamReceiverConfig,
) -> Result<PullConsumer, String> {
    let stream = js
        .get_stream_no_info(&cfg.stream)
        .await
        .map_err(|e| format!("stream {:?}: {e}", cfg.stream))?;
    stream
        .get_or_create_consumer(
            &cfg.consumer,
            pull::Config {
                durable_name: Some(cfg.consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: cfg.ack_wait.0,
                max_ack_pending: cfg.max_ack_pending,
                filter_subject: cfg.filter_subject.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {:?}: {e}", cfg.consumer))
}

/// Pulls and stores until `stop` (Ok) or the pull fails (Err: bind again). Up to
/// `batch` messages are stored at once, so they share the log's group commits.
async fn drain(
    consumer: &PullConsumer,
    cfg: &JetStreamReceiverConfig,
    ingest: &Arc<Ingest>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(cfg.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let slots = Arc::new(Semaphore::new(cfg.batch));
    let mut tasks = JoinSet::new();
    let result = loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.cancelled() => break Ok(()),
        };
        let next = tokio::select! {
            m = messages.next() => m,
            _ = stop.cancelled() => break Ok(()),
        };
        while tasks.try_join_next().is_some() {}
        let message = match next {
            None => break Err("the pull subscription ended".to_string()),
            Some(Err(e)) => break Err(e.to_string()),
            Some(Ok(m)) => m,
        };
        let ingest = ingest.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            take(message, &ingest, &metrics).await;
            drop(permit);
        });
    };
    // Messages being stored finish (their acks follow their appends); the rest
    // are delivered again after ack_wait.
    let grace = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    });
    if grace.await.is_err() {
        tasks.shutdown().await;
    }
    result
}

/// Stores one message, then acknowledges it (or not) by what became of it.
async fn take(message: async_nats::jetstream::Message, ingest: &Ingest, metrics: &Metrics) {
    let (stream_seq, delivered) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 0));
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let msg_id = header("Nats-Msg-Id");
    let request = Request {
        source: Source::JetStream,
        peer: None,
        started: Instant::now(),
        authorization: None,
        idempotency_key: msg_id.clone().map(Bytes::from),
        tenant: header(HEADER_TENANT),
        compression: match header("Content-Encoding").as_deref() {
            Some("zstd") => Compression::Zstd,
            _ => Compression::None,
        },
        length: Some(message.payload.len() as u64),
        body: Request::ready(Ok(message.payload.clone())),
    };
    let result = ingest.receive(request).await;
    let count = |outcome: &'static str| {
        metrics
            .jetstream_messages
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    };
    let ack = match &result {
        Ok(accepted) => {
            count(match accepted {
                Accepted::Stored { .. } => "stored",
                Accepted::Duplicate { .. } => "duplicate",
                Accepted::Discarded { .. } => "discarded",
                Accepted::Empty => "empty",
            });
            AckKind::Ack
        }
        Err(Rejection::Invalid(why)) | Err(Rejection::TooLarge(why)) => {
            count("invalid");
            tracing::warn!(
                stream_seq,
                msg_id = msg_id.as_deref().unwrap_or(""),
                reason = %why,
                "JetStream message is not an OTLP trace request; terminated (its refusal is in the ledger)"
            );
            AckKind::Term
        }
        Err(r) => {
            count("refused");
            let delay = match r {
                Rejection::Full { retry_after, .. } => *retry_after,
                _ => Duration::from_secs(1),
            };
            tracing::debug!(stream_seq, delivered, reason = ?r, "JetStream message not stored yet; delivered again later");
            AckKind::Nak(Some(delay))
        }
    };
    // The ack is confirmed by the server; if it is lost, the message comes again
    // after ack_wait, and the dedup index answers for it.
    let confirm = matches!(ack, AckKind::Ack);
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=5 {
        let r = if confirm {
            message.double_ack().await
        } else {
            message.ack_with(ack).await
        };
        match r {
            Ok(()) => return,
            Err(e) if attempt == 5 => {
                tracing::warn!(stream_seq, error = %e, "could not acknowledge a JetStream message; it will be delivered again and deduplicated");
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}
