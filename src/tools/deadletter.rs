//! `tracespool dead-letter list | retry`.
//!
//! A retry sends each dead letter with the idempotency key it was first exported
//! with. One that is accepted is recorded in the ledger as delivered (by
//! "dead-letter retry") *before* its files are removed, so the audit moves it from
//! dead-lettered to delivered and a crash in between leaves it listed, not lost.

use std::time::Duration;

use serde::Serialize;

use super::replay::{adhoc_destination, protocol, send, Failure};
use super::{fmt_bytes, fmt_time, table, Ctx, ToolError, Verdict};
use crate::cli::ProtocolArg;
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::export::client::{Client, Export};
use crate::ledger::{self, now_ms, Entry};

fn letters(
    ctx: &Ctx,
    destination: Option<&str>,
    seq: Option<u64>,
) -> Result<(DeadLetters, Vec<DeadLetter>), ToolError> {
    let dl = DeadLetters::new(&ctx.data).with_keys(ctx.keys().clone());
    let mut all = dl
        .list(destination)
        .map_err(|e| ToolError::io("listing dead letters in", &ctx.data, e))?;
    all.retain(|l| seq.is_none_or(|s| l.seq == s));
    Ok((dl, all))
}

pub fn list(ctx: &Ctx, destination: Option<String>) -> Result<Verdict, ToolError> {
    let (_, all) = letters(ctx, destination.as_deref(), None)?;
    if ctx.json {
        ctx.print_json(&all)?;
        return Ok(Verdict::Fine);
    }
    if all.is_empty() {
        println!("no dead letters");
        return Ok(Verdict::Fine);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|l| {
            vec![
                l.destination.clone(),
                l.seq.to_string(),
                l.spans.to_string(),
                fmt_bytes(l.bytes),
                fmt_time(l.received_at_unix_ms),
                fmt_time(l.dead_lettered_at_unix_ms),
                l.attempts.to_string(),
                l.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "DESTINATION",
                "SEQ",
                "SPANS",
                "SIZE",
                "RECEIVED",
                "DEAD-LETTERED",
                "ATTEMPTS",
                "REASON"
            ],
            &rows
        )
    );
    println!(
        "\n{} dead letters, {} spans",
        all.len(),
        all.iter().map(|l| l.spans as u64).sum::<u64>()
    );
    Ok(Verdict::Fine)
}

#[derive(Serialize)]
struct Outcome {
    destination: String,
    seq: u64,
    spans: u32,
    delivered: bool,
    detail: String,
}

pub fn retry(
    ctx: &Ctx,
    destination: Option<String>,
    seq: Option<u64>,
    endpoint: Option<String>,
    proto: Option<ProtocolArg>,
) -> Result<Verdict, ToolError> {
    let (dl, all) = letters(ctx, destination.as_deref(), seq)?;
    if all.is_empty() {
        println!("no dead letters to retry");
        return Ok(Verdict::Fine);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ToolError(format!("cannot start the async runtime: {e}")))?;
    let mut outcomes = Vec::new();
    runtime.block_on(async {
        for l in &all {
            let outcome = |delivered, detail: String| Outcome {
                destination: l.destination.clone(),
                seq: l.seq,
                spans: l.spans,
                delivered,
                detail,
            };
            // Where to: the destination as configured, or where the operator says.
            let configured = ctx
                .cfg
                .destinations
                .iter()
                .find(|d| d.name == l.destination);
            let target = match (&endpoint, configured) {
                (Some(url), c) => {
                    let p = proto
                        .map(protocol)
                        .or(c.map(|c| c.protocol))
                        .unwrap_or(crate::config::Protocol::Grpc);
                    let timeout = c.map(|c| c.timeout.0).unwrap_or(Duration::from_secs(10));
                    adhoc_destination(url, p, &[], timeout).map(|mut d| {
                        if let Some(c) = c {
                            d.headers = c.headers.clone();
                        }
                        d
                    })
                }
                (None, Some(c)) => Ok(c.clone()),
                (None, None) => Err(ToolError(format!(
                    "destination {:?} is not configured; pass --endpoint",
                    l.destination
                ))),
            };
            let target = match target {
                Ok(t) => t,
                Err(e) => {
                    outcomes.push(outcome(false, e.0));
                    continue;
                }
            };
            // The instance that stored it: the key is `<instance-id>-<seq>`.
            let instance = l
                .export_key
                .rsplit_once('-')
                .map_or(l.export_key.as_str(), |(i, _)| i);
            let client = match Client::new(&target, instance) {
                Ok(c) => c,
                Err(e) => {
                    outcomes.push(outcome(false, e));
                    continue;
                }
            };
            let payload = match dl.payload(l) {
                Ok(p) => p,
                Err(e) => {
                    outcomes.push(outcome(false, format!("reading its payload: {e}")));
                    continue;
                }
            };
            let export = Export {
                payload: payload.into(),
                codec: tracespool_storage::Codec(l.codec),
                key: &l.export_key,
                seq: l.seq,
                spans: l.spans,
                lane: crate::export::Lane::Backlog,
            };
            match send(&client, export, 3).await {
                Ok(attempts) => {
                    let by = if endpoint.is_some() {
                        format!("dead-letter retry to {}", target.target())
                    } else {
                        "dead-letter retry".to_string()
                    };
                    let entry = Entry::Delivered {
                        t: now_ms(),
                        destination: l.destination.clone(),
                        first_seq: l.seq,
                        last_seq: l.seq,
                        spans: l.spans as u64,
                        attempts,
                        by: Some(by),
                        receipt: None,
                    };
                    if let Err(e) = ledger::append_external(&ctx.ledger_dir(), &entry) {
                        outcomes.push(outcome(
                            true,
                            format!("delivered, but not recorded in the ledger ({e}); kept"),
                        ));
                        continue;
                    }
                    match dl.remove(l) {
                        Ok(()) => outcomes.push(outcome(true, "delivered".into())),
                        Err(e) => outcomes.push(outcome(
                            true,
                            format!("delivered, but its files could not be removed: {e}"),
                        )),
                    }
                }
                Err(f) => {
                    let stop = matches!(f, Failure::Auth(_));
                    outcomes.push(outcome(false, f.to_string()));
                    if stop {
                        break;
                    }
                }
            }
        }
    });
    let failed = outcomes.iter().filter(|o| !o.delivered).count();
    if ctx.json {
        ctx.print_json(&outcomes)?;
    } else {
        let rows: Vec<Vec<String>> = outcomes
            .iter()
            .map(|o| {
                vec![
                    o.destination.clone(),
                    o.seq.to_string(),
                    o.spans.to_string(),
                    o.detail.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["DESTINATION", "SEQ", "SPANS", "RESULT"], &rows)
        );
        println!(
            "\n{} delivered, {} still dead letters",
            outcomes.len() - failed,
            all.len() - (outcomes.len() - failed)
        );
    }
    Ok(if failed > 0 {
        Verdict::Problem
    } else {
        Verdict::Fine
    })
}
