//! `tracespool audit summary | show`: reconciliation and the history of a batch, from
//! the ledger, checked against the log on disk.

use std::collections::{BTreeSet, HashMap};

use memchr::memmem;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;
use tracespool_storage::offline::{for_each_record, list_segments};

use super::{fmt_time, parse_time, table, Ctx, ToolError, Verdict};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::ledger::summary::{self, Count, LogView, Summary};
use crate::ledger::{self, ms, Entry};
use crate::receiver::RELAY_KEY_PREFIX;

fn read_ledger(ctx: &Ctx) -> Result<Vec<Entry>, ToolError> {
    ledger::read_all(&ctx.ledger_dir())
        .map_err(|e| ToolError::io("reading the ledger in", &ctx.ledger_dir(), e))
}

/// What the log says now. Read *before* the ledger: a batch delivered (or dropped)
/// and deleted after this point has its entry in the ledger read afterwards, so
/// nothing is reported missing that is merely recent.
fn log_view(ctx: &Ctx) -> Result<LogView, ToolError> {
    let state = ctx.state()?;
    let segs = list_segments(&ctx.data).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(Vec::new())
        } else {
            Err(ToolError::io("listing segments in", &ctx.data, e))
        }
    })?;
    let first_retained_seq = match segs.first() {
        Some(s) => s.first_seq,
        None => state.as_ref().map(|s| s.wal.last_seq + 1).unwrap_or(1),
    };
    // Cursor positions as last published: never ahead of the real ones, and every
    // delivery up to them is in the ledger (written before the cursor moves).
    let cursors = state
        .iter()
        .flat_map(|s| s.destinations.iter().map(|d| (d.name.clone(), d.position)))
        .collect();
    Ok(LogView {
        first_retained_seq,
        cursors,
    })
}

fn count(c: &Count) -> String {
    format!("{} / {}", c.records, c.spans)
}

pub fn summary(
    ctx: &Ctx,
    since: Option<String>,
    until: Option<String>,
    destination: Option<String>,
) -> Result<Verdict, ToolError> {
    let since = since.as_deref().map(parse_time).transpose()?;
    let until = until.as_deref().map(parse_time).transpose()?;
    let view = log_view(ctx)?;
    let entries = read_ledger(ctx)?;
    let s = summary::summarize(&entries, since, until, destination.as_deref(), Some(&view));
    if let Some(d) = &destination {
        if s.destinations.is_empty() {
            return Err(ToolError(format!(
                "no destination {d:?} in the ledger or the state file"
            )));
        }
    }
    let verdict = if s.balanced {
        Verdict::Fine
    } else {
        Verdict::Problem
    };
    if ctx.json {
        ctx.print_json(&s)?;
    } else {
        print_summary(&s);
    }
    Ok(verdict)
}

fn print_summary(s: &Summary) {
    let window = match (s.since_ms, s.until_ms) {
        (None, None) => "all batches".to_string(),
        (a, b) => format!(
            "batches accepted from {} until {}",
            a.map(fmt_time).unwrap_or_else(|| "the start".into()),
            b.map(fmt_time).unwrap_or_else(|| "now".into())
        ),
    };
    println!(
        "audit summary: {window}; ledger history from {}",
        s.ledger_since_ms
            .map(fmt_time)
            .unwrap_or_else(|| "(empty)".into())
    );
    let rejected: Vec<String> = s
        .rejected
        .iter()
        .map(|(r, c)| format!("{r} {} ({} spans)", c.records, c.spans))
        .collect();
    println!(
        "accepted {} batches ({} spans); deduplicated {} ({} spans); rejected: {}",
        s.accepted.records,
        s.accepted.spans,
        s.deduplicated.records,
        s.deduplicated.spans,
        if rejected.is_empty() {
            "none".into()
        } else {
            rejected.join(", ")
        }
    );
    if !s.removed_by_processors.is_empty() {
        let removed: Vec<String> = s
            .removed_by_processors
            .iter()
            .map(|(why, n)| format!("{why} {n} spans"))
            .collect();
        println!(
            "taken out by processors before storing: {}; requests emptied entirely: {} ({} spans)",
            removed.join(", "),
            s.discarded.records,
            s.discarded.spans
        );
    }
    println!();
    if s.destinations.is_empty() {
        println!("no destinations: accepted batches are kept, not forwarded");
        return;
    }
    let rows: Vec<Vec<String>> = s
        .destinations
        .iter()
        .map(|d| {
            let dropped = d.dropped_total();
            let reasons: Vec<String> = d
                .dropped
                .iter()
                .map(|(r, c)| format!("{r} {}", c.records))
                .collect();
            vec![
                d.destination.clone(),
                count(&d.accepted),
                count(&d.delivered),
                if reasons.is_empty() {
                    count(&dropped)
                } else {
                    format!("{} ({})", count(&dropped), reasons.join(", "))
                },
                count(&d.dead_lettered),
                count(&d.pending),
                if d.balances() { "yes" } else { "NO" }.into(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "DESTINATION",
                "ACCEPTED",
                "DELIVERED",
                "DROPPED",
                "DEAD-LETTERED",
                "PENDING",
                "BALANCED",
            ],
            &rows
        )
    );
    println!("(batches / spans)");
    for u in &s.unverifiable {
        println!(
            "cannot vouch for batches acknowledged from {} to {}: {}",
            fmt_time(u.since_ms),
            fmt_time(u.until_ms),
            u.reason
        );
    }
    for d in s.destinations.iter().filter(|d| !d.balances()) {
        if d.pending_not_in_log > 0 {
            println!(
                "{}: {} pending batches are no longer in the log, and no ledger entry says why",
                d.destination, d.pending_not_in_log
            );
        }
        if d.pending_behind_cursor > 0 {
            println!(
                "{}: {} pending batches are behind the destination's cursor, and no ledger entry says why",
                d.destination, d.pending_behind_cursor
            );
        }
    }
}

#[derive(Serialize)]
struct RecordInfo {
    received: String,
    spans: u32,
    bytes: usize,
    client_key: String,
}

#[derive(Serialize)]
struct Batch {
    seq: u64,
    /// The record, if the log still holds it.
    record: Option<RecordInfo>,
    /// The key exports of this batch carry.
    export_key: Option<String>,
    dead_letters: Vec<DeadLetter>,
    history: Vec<Entry>,
}

pub fn show(
    ctx: &Ctx,
    seq: Option<u64>,
    key: Option<String>,
    trace_id: Option<String>,
) -> Result<Verdict, ToolError> {
    let entries = read_ledger(ctx)?;
    let instance = crate::instance::read(&ctx.data)
        .map_err(|e| ToolError::io("reading the instance id in", &ctx.data, e))?;
    let letters = DeadLetters::new(&ctx.data).with_keys(ctx.keys().clone());
    let all_letters = letters
        .list(None)
        .map_err(|e| ToolError::io("listing dead letters in", &ctx.data, e))?;
    let seqs: BTreeSet<u64> = match (seq, key, trace_id) {
        (Some(s), _, _) => BTreeSet::from([s]),
        (_, Some(k), _) => seqs_of_key(&entries, instance.as_deref(), &k),
        (_, _, Some(t)) => seqs_of_trace(ctx, &letters, &all_letters, &t)?,
        _ => {
            return Err(ToolError(
                "say which batch: --seq N, --key K or --trace-id T".into(),
            ))
        }
    };
    let mut batches = Vec::new();
    for &seq in &seqs {
        let record = tracespool_storage::offline::read_record(&ctx.data, seq, ctx.keys())
            .map_err(|e| ToolError::io("reading the log in", &ctx.data, e))?
            .map(|r| RecordInfo {
                received: fmt_time(ms(r.received_at)),
                spans: r.span_count,
                bytes: r.payload.len(),
                client_key: String::from_utf8_lossy(&r.idempotency_key).into_owned(),
            });
        let relayed = record
            .as_ref()
            .and_then(|r| r.client_key.as_bytes().strip_prefix(RELAY_KEY_PREFIX))
            .map(|k| String::from_utf8_lossy(k).into_owned());
        batches.push(Batch {
            seq,
            record,
            export_key: relayed.or_else(|| instance.as_ref().map(|i| format!("{i}-{seq}"))),
            dead_letters: all_letters
                .iter()
                .filter(|l| l.seq == seq)
                .cloned()
                .collect(),
            history: summary::history(&entries, seq),
        });
    }
    let found = batches
        .iter()
        .any(|b| b.record.is_some() || !b.history.is_empty() || !b.dead_letters.is_empty());
    if ctx.json {
        ctx.print_json(&batches)?;
    } else if !found {
        println!("no such batch in the ledger, the log or the dead letters");
    } else {
        for b in &batches {
            print_batch(b);
        }
    }
    Ok(if found {
        Verdict::Fine
    } else {
        Verdict::Problem
    })
}

fn seqs_of_key(entries: &[Entry], instance: Option<&str>, key: &str) -> BTreeSet<u64> {
    let mut out: BTreeSet<u64> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Accepted {
                seq, key: Some(k), ..
            }
            | Entry::Deduplicated { seq, key: k, .. }
                // Relayed from JetStream: stored as relay:<the edge's key>.
                if k == key || k.as_bytes().strip_prefix(RELAY_KEY_PREFIX) == Some(key.as_bytes()) =>
            {
                Some(*seq)
            }
            _ => None,
        })
        .collect();
    // An export key: <instance-id>-<seq>.
    if let Some(rest) = instance.and_then(|i| key.strip_prefix(i)) {
        if let Some(seq) = rest.strip_prefix('-').and_then(|s| s.parse().ok()) {
            out.insert(seq);
        }
    }
    out
}

fn parse_trace_id(t: &str) -> Result<[u8; 16], ToolError> {
    let bad = || ToolError(format!("{t:?} is not a trace id (32 hex digits)"));
    if t.len() != 32 {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(id)
}

/// Whether an OTLP request holds a span of `trace`: a byte search for the field as
/// protobuf encodes it (tag 1, length 16) picks candidates, decoding confirms.
fn holds_trace(payload: &[u8], finder: &memmem::Finder<'_>, trace: &[u8; 16]) -> bool {
    if finder.find(payload).is_none() {
        return false;
    }
    let Ok(req) = ExportTraceServiceRequest::decode(payload) else {
        return false;
    };
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .any(|s| s.trace_id == trace)
}

fn seqs_of_trace(
    ctx: &Ctx,
    letters: &DeadLetters,
    all_letters: &[DeadLetter],
    t: &str,
) -> Result<BTreeSet<u64>, ToolError> {
    let trace = parse_trace_id(t)?;
    let mut needle = vec![0x0a, 0x10];
    needle.extend_from_slice(&trace);
    let finder = memmem::Finder::new(&needle);
    let mut out = BTreeSet::new();
    let damage = for_each_record(&ctx.data, 0, u64::MAX, true, ctx.keys(), |r| {
        let Ok(payload) = crate::payload::protobuf(r.codec, &r.payload) else {
            return Ok(());
        };
        if holds_trace(&payload, &finder, &trace) {
            out.insert(r.seq);
        }
        Ok(())
    })
    .map_err(|e| ToolError::io("scanning the log in", &ctx.data, e))?;
    for l in all_letters {
        if let Ok(p) = letters.payload(l) {
            if holds_trace(&p, &finder, &trace) {
                out.insert(l.seq);
            }
        }
    }
    if !damage.is_empty() {
        eprintln!(
            "note: {} damaged ranges were not searched (`tracespool wal verify` lists them)",
            damage.len()
        );
    }
    Ok(out)
}

fn print_batch(b: &Batch) {
    println!("batch seq {}", b.seq);
    match &b.record {
        Some(r) => println!(
            "  in the log: received {}, {} spans, {} bytes, {}",
            r.received,
            r.spans,
            r.bytes,
            if r.client_key.is_empty() {
                "no client key".to_string()
            } else {
                format!("client key {:?}", r.client_key)
            }
        ),
        None => println!("  not in the log (deleted after delivery, dropped, or damaged)"),
    }
    if let Some(k) = &b.export_key {
        println!("  exported with idempotency-key {k}");
    }
    for l in &b.dead_letters {
        println!(
            "  dead letter for {}: {} (after {} attempts, {})",
            l.destination,
            l.reason,
            l.attempts,
            fmt_time(l.dead_lettered_at_unix_ms)
        );
    }
    let rows: Vec<Vec<String>> = b.history.iter().map(history_row).collect();
    if rows.is_empty() {
        println!("  no ledger entries (older than the ledger's history?)");
    } else {
        for line in table(&["TIME", "EVENT", "DETAILS"], &rows).lines() {
            println!("  {line}");
        }
    }
    println!();
}

fn history_row(e: &Entry) -> Vec<String> {
    let v = serde_json::to_value(e).unwrap_or_default();
    let mut fields: HashMap<String, serde_json::Value> = match v {
        serde_json::Value::Object(m) => m.into_iter().collect(),
        _ => HashMap::new(),
    };
    let event = fields
        .remove("event")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let t = fields.remove("t").and_then(|v| v.as_u64()).unwrap_or(0);
    let mut rest: Vec<(String, serde_json::Value)> = fields.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    let details: Vec<String> = rest
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    vec![fmt_time(t), event, details.join(" ")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_find_client_keys_and_export_keys() {
        let e = vec![Entry::Accepted {
            t: 1,
            seq: 7,
            key: Some("client-a".into()),
            spans: 1,
            bytes: 1,
            client: None,
            protocol: "grpc".into(),
            recovered: false,
            tenant: None,
            removed: None,
        }];
        assert_eq!(
            seqs_of_key(&e, Some("tsp-1"), "client-a"),
            BTreeSet::from([7])
        );
        assert_eq!(
            seqs_of_key(&e, Some("tsp-1"), "tsp-1-42"),
            BTreeSet::from([42])
        );
        assert!(seqs_of_key(&e, Some("tsp-1"), "tsp-2-42").is_empty());
    }

    #[test]
    fn trace_ids_are_32_hex_digits() {
        assert_eq!(
            parse_trace_id("5b8efff798038103d269b633813fc60c").unwrap()[0],
            0x5b
        );
        assert!(parse_trace_id("5b8e").is_err());
        assert!(parse_trace_id("zz8efff798038103d269b633813fc60c").is_err());
    }
}
