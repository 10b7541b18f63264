//! `tracespool wal inspect | verify | dump`: the log as files, read with plain reads
//! (never mapped, never locked) so a running forwarder is not disturbed.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;
use tracespool_storage::offline::{list_segments, read_record, read_segment, SegmentFile};

use super::{fmt_bytes, fmt_time, table, Ctx, ToolError, Verdict};
use crate::ledger::{self, ms, Entry};
use tracespool_storage::SealError;

fn segments(ctx: &Ctx) -> Result<Vec<SegmentFile>, ToolError> {
    list_segments(&ctx.data).map_err(|e| ToolError::io("listing segments in", &ctx.data, e))
}

fn file_name(s: &SegmentFile) -> String {
    s.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct SegmentReport {
    file: String,
    first_seq: u64,
    /// Last seq the segment holds (sealed: up to the next segment's first).
    last_seq: Option<u64>,
    records: u64,
    spans: u64,
    bytes: u64,
    oldest_received: Option<String>,
    newest_received: Option<String>,
    damaged_ranges: usize,
    header_error: Option<String>,
    /// The key its records are encrypted with (0: not encrypted).
    key_id: u32,
    active: bool,
    delivered_to: Vec<String>,
    pending_for: Vec<String>,
}

pub fn inspect(ctx: &Ctx) -> Result<Verdict, ToolError> {
    let segs = segments(ctx)?;
    let state = ctx.state()?;
    let positions: Vec<(String, u64)> = state
        .iter()
        .flat_map(|s| s.destinations.iter().map(|d| (d.name.clone(), d.position)))
        .collect();
    let mut reports = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let next = segs.get(i + 1).map(|s| s.first_seq);
        let contents = match read_segment(seg, next, false, ctx.keys()) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(ToolError::io("reading", &seg.path, e)),
        };
        let last_record = contents.records.last().map(|r| r.seq);
        let last_seq = match next {
            Some(n) => Some(n - 1),
            None => last_record,
        };
        let (mut delivered_to, mut pending_for) = (Vec::new(), Vec::new());
        for (name, pos) in &positions {
            if last_seq.is_none_or(|l| *pos >= l) {
                delivered_to.push(name.clone());
            } else {
                pending_for.push(name.clone());
            }
        }
        reports.push(SegmentReport {
            file: file_name(seg),
            first_seq: seg.first_seq,
            last_seq,
            records: (contents.records.len() + contents.unopened.len()) as u64,
            spans: contents
                .records
                .iter()
                .map(|r| r.span_count as u64)
                .sum::<u64>()
                + contents
                    .unopened
                    .iter()
                    .map(|u| u.spans as u64)
                    .sum::<u64>(),
            key_id: seg.key_id,
            bytes: seg.len,
            oldest_received: contents
                .records
                .first()
                .map(|r| fmt_time(ms(r.received_at))),
            newest_received: contents.records.last().map(|r| fmt_time(ms(r.received_at))),
            damaged_ranges: contents.damage.len(),
            header_error: seg.header_error.clone(),
            active: next.is_none(),
            delivered_to,
            pending_for,
        });
    }
    if ctx.json {
        ctx.print_json(&reports)?;
        return Ok(Verdict::Fine);
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let state = if let Some(e) = &r.header_error {
                format!("BAD HEADER: {e}")
            } else if positions.is_empty() {
                "-".into()
            } else if r.pending_for.is_empty() {
                "delivered".into()
            } else {
                format!("pending: {}", r.pending_for.join(","))
            };
            vec![
                r.file.clone(),
                match r.last_seq {
                    Some(l) if l >= r.first_seq => format!("{}..{l}", r.first_seq),
                    _ => format!("{}..", r.first_seq),
                },
                r.records.to_string(),
                r.spans.to_string(),
                fmt_bytes(r.bytes),
                r.oldest_received.clone().unwrap_or_else(|| "-".into()),
                if r.damaged_ranges > 0 {
                    format!("{} damaged", r.damaged_ranges)
                } else {
                    "ok".into()
                },
                format!("{state}{}", if r.active { " (active)" } else { "" }),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "SEGMENT",
                "SEQS",
                "RECORDS",
                "SPANS",
                "SIZE",
                "OLDEST RECEIVED",
                "CRC",
                "STATE"
            ],
            &rows
        )
    );
    let total: u64 = reports.iter().map(|r| r.bytes).sum();
    println!(
        "\n{} segments, {} records, {} spans, {}{}",
        reports.len(),
        reports.iter().map(|r| r.records).sum::<u64>(),
        reports.iter().map(|r| r.spans).sum::<u64>(),
        fmt_bytes(total),
        if state.is_some() {
            " (delivered state as of state.json)"
        } else {
            ""
        }
    );
    Ok(Verdict::Fine)
}

#[derive(Serialize)]
struct Damage {
    first_seq: u64,
    last_seq: u64,
    segment: String,
    offset: u64,
    spans: Option<u64>,
    reason: String,
    /// Already in the audit ledger (the forwarder found and accounted for it).
    in_ledger: bool,
}

#[derive(Serialize)]
struct VerifyReport {
    segments: usize,
    records: u64,
    bytes: u64,
    damage: Vec<Damage>,
    /// The last segment ends in bytes that hold no complete record: an append in
    /// progress, or (stopped) a torn write that the next start cuts off. Never an
    /// acknowledged record.
    incomplete_tail: Option<(u64, u64)>,
    /// Intact records encrypted with a key the configuration does not give (or a
    /// different key under that id): kept on disk, unreadable until it is added.
    undecryptable: Vec<Undecryptable>,
    ok: bool,
}

#[derive(Serialize)]
struct Undecryptable {
    seq: u64,
    segment: String,
    spans: u32,
    key_id: Option<u32>,
    reason: String,
}

pub fn verify(ctx: &Ctx) -> Result<Verdict, ToolError> {
    let running = ctx.running()?;
    let segs = segments(ctx)?;
    let known: Vec<(u64, u64)> = ledger::read_all(&ctx.ledger_dir())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Damaged {
                first_seq,
                last_seq,
                ..
            } => Some((first_seq, last_seq)),
            _ => None,
        })
        .collect();
    let mut report = VerifyReport {
        segments: 0,
        records: 0,
        bytes: 0,
        damage: Vec::new(),
        incomplete_tail: None,
        undecryptable: Vec::new(),
        ok: true,
    };
    for (i, seg) in segs.iter().enumerate() {
        let next = segs.get(i + 1).map(|s| s.first_seq);
        let mut found = Vec::new();
        let mut records = 0;
        if let Some(e) = &seg.header_error {
            found.push(Damage {
                first_seq: seg.first_seq,
                last_seq: next.map(|n| n - 1).unwrap_or(seg.first_seq),
                segment: file_name(seg),
                offset: 0,
                spans: None,
                reason: format!("segment header: {e}"),
                in_ledger: false,
            });
        } else {
            let contents = match read_segment(seg, next, false, ctx.keys()) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ToolError::io("reading", &seg.path, e)),
            };
            records = (contents.records.len() + contents.unopened.len()) as u64;
            for u in contents.unopened {
                let key_id = match &u.error {
                    SealError::MissingKey { key_id } | SealError::Unauthentic { key_id } => {
                        Some(*key_id)
                    }
                    SealError::Malformed(_) => None,
                };
                report.undecryptable.push(Undecryptable {
                    seq: u.seq,
                    segment: file_name(seg),
                    spans: u.spans,
                    key_id,
                    reason: u.error.to_string(),
                });
            }
            for d in contents.damage {
                found.push(Damage {
                    first_seq: d.first_seq,
                    last_seq: d.last_seq,
                    segment: file_name(seg),
                    offset: d.offset,
                    spans: d.spans,
                    reason: d.reason,
                    in_ledger: false,
                });
            }
            if next.is_none() && !running {
                report.incomplete_tail = contents.incomplete_tail;
            }
        }
        if !found.is_empty() && running {
            // A delivered segment being released by a running forwarder reads as
            // zeros for the moment before it is unlinked: not damage.
            std::thread::sleep(Duration::from_millis(300));
            if !seg.path.exists() {
                continue;
            }
        }
        for d in &mut found {
            d.in_ledger = known
                .iter()
                .any(|&(a, b)| a <= d.first_seq && d.last_seq <= b);
        }
        report.segments += 1;
        report.records += records;
        report.bytes += seg.len;
        report.damage.extend(found);
    }
    report.ok = report.damage.is_empty() && report.undecryptable.is_empty();
    let verdict = if report.ok {
        Verdict::Fine
    } else {
        Verdict::Problem
    };
    if ctx.json {
        ctx.print_json(&report)?;
        return Ok(verdict);
    }
    println!(
        "checked {} segments, {} records, {}: {}",
        report.segments,
        report.records,
        fmt_bytes(report.bytes),
        if report.damage.is_empty() {
            "every CRC matches".to_string()
        } else {
            format!("{} DAMAGED RANGES", report.damage.len())
        }
    );
    if !report.undecryptable.is_empty() {
        let mut by_key: std::collections::BTreeMap<Option<u32>, (u64, u64, usize)> =
            Default::default();
        for u in &report.undecryptable {
            let e = by_key.entry(u.key_id).or_insert((u.seq, u.seq, 0));
            e.0 = e.0.min(u.seq);
            e.1 = e.1.max(u.seq);
            e.2 += 1;
        }
        for (key, (lo, hi, n)) in by_key {
            let key = key
                .map(|k| format!("key id {k}"))
                .unwrap_or("no key id".into());
            println!(
                "{n} RECORDS CANNOT BE DECRYPTED ({key}), seqs {lo}..{hi}: add the key to storage.encryption.keys"
            );
        }
        let rows: Vec<Vec<String>> = report
            .undecryptable
            .iter()
            .map(|u| {
                vec![
                    u.seq.to_string(),
                    u.segment.clone(),
                    u.spans.to_string(),
                    u.reason.clone(),
                ]
            })
            .collect();
        println!();
        print!("{}", table(&["SEQ", "SEGMENT", "SPANS", "REASON"], &rows));
    }
    if !report.damage.is_empty() {
        let rows: Vec<Vec<String>> = report
            .damage
            .iter()
            .map(|d| {
                vec![
                    format!("{}..{}", d.first_seq, d.last_seq),
                    d.segment.clone(),
                    d.offset.to_string(),
                    d.spans.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    if d.in_ledger { "yes" } else { "no" }.into(),
                    d.reason.clone(),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table(
                &["SEQS", "SEGMENT", "OFFSET", "SPANS", "IN LEDGER", "REASON"],
                &rows
            )
        );
        println!(
            "\nRecords in these ranges cannot be delivered. The forwarder skips them, counts them \
             (tracespool_spans_dropped_total{{reason=\"corruption\"}}) and records them in the \
             ledger when it reads them; see ops/runbooks/corrupt-segment.md."
        );
    }
    if let Some((offset, len)) = report.incomplete_tail {
        println!(
            "note: the last segment ends in {len} bytes at offset {offset} that hold no complete \
             record (a write cut by a crash); the next start moves them to quarantine/. No \
             acknowledged record is in them."
        );
    }
    Ok(verdict)
}

pub fn dump(ctx: &Ctx, seq: u64) -> Result<Verdict, ToolError> {
    let record = read_record(&ctx.data, seq, ctx.keys())
        .map_err(|e| ToolError::io("reading the log in", &ctx.data, e))?;
    let Some(record) = record else {
        let segs = segments(ctx)?;
        let first = segs.first().map(|s| s.first_seq);
        return Err(ToolError(format!(
            "record {seq} is not in the log{}: delivered and deleted, dropped, damaged, or not \
             written yet (`tracespool audit show --seq {seq}` tells which)",
            first
                .map(|f| format!(", which starts at seq {f}"))
                .unwrap_or_default()
        )));
    };
    let protobuf = crate::payload::protobuf(record.codec, &record.payload)
        .map_err(|e| ToolError(format!("record {seq}: {e}")))?;
    let request = ExportTraceServiceRequest::decode(&protobuf[..])
        .map_err(|e| ToolError(format!("record {seq} is not a valid OTLP request: {e}")))?;
    eprintln!(
        "# seq {seq}: received {}, {} spans, {} bytes, client idempotency key {:?}",
        fmt_time(ms(record.received_at)),
        record.span_count,
        protobuf.len(),
        String::from_utf8_lossy(&record.idempotency_key)
    );
    // The request itself, as OTLP/JSON: `curl -d @- .../v1/traces` takes it back.
    let s = serde_json::to_string_pretty(&request).map_err(|e| ToolError(e.to_string()))?;
    println!("{s}");
    Ok(Verdict::Fine)
}
