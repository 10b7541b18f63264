//! `tracespool replay`: re-send retained records — still in the log (delivered or
//! not, e.g. kept by `storage.retain_delivered`) or kept as dead letters — to any
//! OTLP endpoint, with the idempotency keys they were first exported with
//! (`<instance-id>-<seq>`), so a backend that deduplicates keeps one copy.
//!
//! A reader thread walks the log one segment at a time (plain reads) and hands
//! records over a small channel; up to [`IN_FLIGHT`] exports run at once, paced by
//! `--rate`. Transient failures are retried with backoff; a refused credential
//! stops the replay. The run is recorded in the ledger as one `replayed` entry.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tracespool_storage::offline::for_each_record;

use super::{fmt_bytes, parse_point, Ctx, Point, ToolError, Verdict};
use crate::cli::{ProtocolArg, ReplayArgs};
use crate::config::{Compression, DestinationConfig, Dur, Endpoint, Protocol};
use crate::deadletter::DeadLetters;
use crate::export::client::{Client, Export, Sent};
use crate::export::retry::Backoff;
use crate::ledger::{self, ms, now_ms, Entry};

/// Exports in flight at once.
const IN_FLIGHT: usize = 8;

pub(super) fn protocol(p: ProtocolArg) -> Protocol {
    match p {
        ProtocolArg::Grpc => Protocol::Grpc,
        ProtocolArg::Http => Protocol::Http,
    }
}

/// A destination for a one-off send.
pub(super) fn adhoc_destination(
    endpoint: &str,
    protocol: Protocol,
    headers: &[String],
    timeout: Duration,
) -> Result<DestinationConfig, ToolError> {
    let mut map = std::collections::BTreeMap::new();
    for h in headers {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| ToolError(format!("--header {h:?}: expected NAME=VALUE")))?;
        map.insert(k.trim().to_string(), v.trim().to_string());
    }
    let endpoint = Endpoint::parse(endpoint)
        .map_err(|e| ToolError(format!("--endpoint {endpoint:?}: {e}")))?;
    let d = DestinationConfig {
        name: "replay".into(),
        endpoint: Some(endpoint),
        protocol,
        headers: map,
        timeout: Dur(timeout),
        compression: Compression::None,
        max_in_flight: IN_FLIGHT,
        ..Default::default()
    };
    Ok(d)
}

/// Why a record was not accepted.
#[derive(Debug)]
pub(super) enum Failure {
    /// The backend refused it for good (it would be a dead letter again).
    Refused(String),
    /// The credentials were refused: nothing else will get through either.
    Auth(String),
    /// Still failing after every attempt.
    GaveUp(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(r) => write!(f, "refused: {r}"),
            Self::Auth(r) => write!(f, "credentials refused: {r}"),
            Self::GaveUp(r) => write!(f, "gave up: {r}"),
        }
    }
}

/// Sends one record, retrying transient failures up to `attempts` times. Returns
/// the attempts it took.
pub(super) async fn send(
    client: &Client,
    export: Export<'_>,
    attempts: u32,
) -> Result<u32, Failure> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let (sent, _) = client.send(export.clone()).await;
        let n = backoff.attempts() + 1;
        match sent {
            Sent::Ok { .. } => return Ok(n),
            Sent::Permanent { reason } => return Err(Failure::Refused(reason)),
            Sent::Auth { reason } => return Err(Failure::Auth(reason)),
            Sent::Full { reason } => {
                if n >= attempts.max(1) {
                    return Err(Failure::GaveUp(format!("{reason} (after {n} attempts)")));
                }
                tokio::time::sleep(backoff.next(None)).await;
            }
            Sent::Transient {
                reason,
                retry_after,
            } => {
                if n >= attempts.max(1) {
                    return Err(Failure::GaveUp(format!("{reason} (after {n} attempts)")));
                }
                let wait = backoff.next(retry_after).min(Duration::from_secs(30));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One record to send.
struct Item {
    seq: u64,
    spans: u64,
    /// Its idempotency key, as the forwarder exports it.
    key: String,
    payload: Bytes,
    codec: tracespool_storage::Codec,
}

/// The progress line: redrawn in place on a terminal, a line every few seconds
/// otherwise (logs).
struct Progress {
    started: Instant,
    last: Instant,
    tty: bool,
    records: u64,
    spans: u64,
    bytes: u64,
    failed: u64,
    seq: u64,
    first_seq: u64,
    last_seq: Option<u64>,
}

impl Progress {
    fn tick(&mut self, done: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !done && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let pct = self
            .last_seq
            .filter(|l| *l >= self.first_seq && self.seq >= self.first_seq)
            .map(|l| {
                let part = (self.seq - self.first_seq + 1) as f64 / (l - self.first_seq + 1) as f64;
                format!(" {:>3.0}%", (part * 100.0).min(100.0))
            })
            .unwrap_or_default();
        let line = format!(
            "replay{pct}: {} records, {} spans, {} sent ({:.0} spans/s), {} failed, at seq {}",
            self.records,
            self.spans,
            fmt_bytes(self.bytes),
            self.spans as f64 / secs,
            self.failed,
            self.seq
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            if done {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    }
}

pub fn run(ctx: &Ctx, args: ReplayArgs) -> Result<Verdict, ToolError> {
    let from = parse_point(&args.from)?;
    let to = args.to.as_deref().map(parse_point).transpose()?;
    let timeout = humantime::parse_duration(&args.timeout)
        .map_err(|e| ToolError(format!("--timeout {:?}: {e}", args.timeout)))?;
    let dest = adhoc_destination(
        &args.endpoint,
        protocol(args.protocol),
        &args.header,
        timeout,
    )?;
    let instance = crate::instance::read(&ctx.data)
        .map_err(|e| ToolError::io("reading the instance id in", &ctx.data, e))?
        .ok_or_else(|| {
            ToolError(format!(
                "no instance-id in {}: no forwarder has run here",
                ctx.data.display()
            ))
        })?;
    let lo = match from {
        Point::Seq(s) => s,
        Point::Time(_) => 0,
    };
    let hi = match to {
        Some(Point::Seq(s)) => s,
        _ => u64::MAX,
    };
    let since = match from {
        Point::Time(t) => Some(t),
        _ => None,
    };
    let until = match to {
        Some(Point::Time(t)) => Some(t),
        _ => None,
    };
    let in_time = move |received_ms: u64| {
        since.is_none_or(|s| received_ms >= s) && until.is_none_or(|u| received_ms <= u)
    };
    let last_seq = ctx.state()?.map(|s| s.wal.last_seq.min(hi));

    // The reader: the log, then dead letters whose record the log no longer has.
    let (tx, mut rx) = mpsc::channel::<Item>(IN_FLIGHT * 2);
    let data = ctx.data.clone();
    let keys = ctx.keys().clone();
    let reader_instance = instance.clone();
    let reader = std::thread::spawn(move || -> Result<usize, String> {
        let mut seen = BTreeSet::new();
        let damage = for_each_record(&data, lo, hi, true, &keys, |r| {
            if in_time(ms(r.received_at)) {
                seen.insert(r.seq);
                let item = Item {
                    seq: r.seq,
                    spans: r.span_count as u64,
                    key: crate::export::export_key(&r, &reader_instance),
                    payload: r.payload,
                    codec: r.codec,
                };
                if tx.blocking_send(item).is_err() {
                    return Err(std::io::Error::other("replay stopped"));
                }
            }
            Ok(())
        });
        let damage = match damage {
            Ok(d) => d.len(),
            Err(e) if e.to_string() == "replay stopped" => return Ok(0),
            Err(e) => return Err(format!("reading the log in {}: {e}", data.display())),
        };
        let letters = DeadLetters::new(&data).with_keys(keys.clone());
        for l in letters.list(None).map_err(|e| e.to_string())? {
            if (lo..=hi).contains(&l.seq) && in_time(l.received_at_unix_ms) && seen.insert(l.seq) {
                let payload = letters.payload(&l).map_err(|e| e.to_string())?;
                let item = Item {
                    seq: l.seq,
                    spans: l.spans as u64,
                    key: l.export_key.clone(),
                    payload: payload.into(),
                    codec: tracespool_storage::Codec(l.codec),
                };
                if tx.blocking_send(item).is_err() {
                    break;
                }
            }
        }
        Ok(damage)
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ToolError(format!("cannot start the async runtime: {e}")))?;
    let attempts = args.attempts;
    let rate = args.rate.filter(|r| *r > 0);
    let mut progress = Progress {
        started: Instant::now(),
        last: Instant::now(),
        tty: std::io::stderr().is_terminal(),
        records: 0,
        spans: 0,
        bytes: 0,
        failed: 0,
        seq: lo,
        first_seq: lo.max(1),
        last_seq,
    };
    let mut first_sent = None;
    let mut last_sent = 0;
    let mut auth_error = None;
    runtime.block_on(async {
        let client = match Client::new(&dest, &instance) {
            Ok(c) => c,
            Err(e) => {
                auth_error = Some(format!("--endpoint: {e}"));
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, u64, u64, Result<u32, Failure>)>();
        let mut pace = tokio::time::Instant::now();
        let mut outstanding = 0usize;
        let mut receiving = true;
        loop {
            tokio::select! {
                item = rx.recv(), if receiving && auth_error.is_none() => {
                    let Some(item) = item else { receiving = false; continue };
                    if let Some(r) = rate {
                        let now = tokio::time::Instant::now();
                        pace = pace.max(now - Duration::from_secs(1));
                        tokio::time::sleep_until(pace).await;
                        pace += Duration::from_secs_f64(item.spans as f64 / r as f64);
                    }
                    let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                    let client = client.clone();
                    let key = item.key.clone();
                    let done = done_tx.clone();
                    outstanding += 1;
                    tokio::spawn(async move {
                        let len = item.payload.len() as u64;
                        let export = Export {
                            payload: item.payload,
                            codec: item.codec,
                            key: &key,
                            seq: item.seq,
                            spans: item.spans as u32,
                            lane: crate::export::Lane::Backlog,
                        };
                        let r = send(&client, export, attempts).await;
                        let _ = done.send((item.seq, item.spans, len, r));
                        drop(permit);
                    });
                }
                Some((seq, spans, len, r)) = done_rx.recv(), if outstanding > 0 => {
                    outstanding -= 1;
                    progress.seq = progress.seq.max(seq);
                    match r {
                        Ok(_) => {
                            progress.records += 1;
                            progress.spans += spans;
                            progress.bytes += len;
                            first_sent = Some(first_sent.map_or(seq, |f: u64| f.min(seq)));
                            last_sent = last_sent.max(seq);
                        }
                        Err(f) => {
                            progress.failed += 1;
                            if progress.tty {
                                eprint!("\r\x1b[2K");
                            }
                            eprintln!("seq {seq}: {f}");
                            if let Failure::Auth(r) = f {
                                auth_error = Some(format!("the endpoint refused the credentials: {r}"));
                            }
                        }
                    }
                    progress.tick(false);
                }
                else => break,
            }
            if !receiving && outstanding == 0 {
                break;
            }
            if auth_error.is_some() && outstanding == 0 {
                break;
            }
        }
    });
    drop(rx);
    progress.tick(true);
    let damaged = match reader.join() {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Err(ToolError(e)),
        Err(_) => return Err(ToolError("the log reader panicked".into())),
    };
    if damaged > 0 {
        eprintln!(
            "note: {damaged} damaged ranges in the log were skipped (`tracespool wal verify`)"
        );
    }
    if let Some(first) = first_sent {
        let entry = Entry::Replayed {
            t: now_ms(),
            endpoint: args.endpoint.clone(),
            first_seq: first,
            last_seq: last_sent,
            records: progress.records,
            spans: progress.spans,
            failed: progress.failed,
        };
        if let Err(e) = ledger::append_external(&ctx.ledger_dir(), &entry) {
            eprintln!("warning: could not record the replay in the ledger: {e}");
        }
    }
    if let Some(e) = auth_error {
        return Err(ToolError(e));
    }
    if progress.records == 0 && progress.failed == 0 {
        eprintln!("no retained record in that range");
        return Ok(Verdict::Problem);
    }
    Ok(if progress.failed > 0 {
        Verdict::Problem
    } else {
        Verdict::Fine
    })
}
