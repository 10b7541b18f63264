//! `tracespool status`: per destination, what is waiting and since when, and how the
//! last attempts went; the disk budget. From `state.json`, which a running forwarder
//! rewrites every two seconds and at shutdown.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{fmt_ago, fmt_bytes, fmt_span, fmt_time, table, Ctx, ToolError, Verdict};
use crate::deadletter::DeadLetters;
use crate::ledger::now_ms;
use crate::state::Eta;

#[derive(Serialize)]
struct Report {
    data_dir: String,
    forwarder_running: bool,
    /// False when the state file says "running" but nobody holds the directory: the
    /// forwarder stopped without a clean shutdown, and the figures are from before.
    clean: bool,
    pid: u32,
    instance_id: String,
    state_updated: String,
    state_age_seconds: f64,
    wal: Wal,
    destinations: Vec<Destination>,
    dead_letters: BTreeMap<String, usize>,
}

#[derive(Serialize)]
struct Wal {
    bytes: u64,
    budget_bytes: u64,
    budget_used_ratio: f64,
    segments: usize,
    first_seq: u64,
    last_seq: u64,
    failed: Option<String>,
    /// When the budget fills at the last minute's rate.
    budget_full_eta: Option<Eta>,
}

#[derive(Serialize)]
struct Destination {
    name: String,
    endpoint: String,
    position: u64,
    backlog_records: u64,
    backlog_spans: u64,
    backlog_bytes: u64,
    oldest_undelivered: Option<String>,
    oldest_undelivered_age_seconds: Option<f64>,
    last_success: Option<String>,
    last_error_time: Option<String>,
    last_error: Option<String>,
    /// When the backlog is drained at the last minute's rate.
    catchup_eta: Option<Eta>,
    /// `live_first`: seqs the live lane holds.
    live_lane_records: Option<u64>,
    /// `live_first`: seqs the backlog lane holds.
    backlog_lane_records: Option<u64>,
}

/// "in 2h 5m", "never", or "-" (not known yet: a forwarder a few seconds up, or
/// stopped).
fn fmt_eta(eta: Option<Eta>, running: bool) -> String {
    match eta {
        _ if !running => "-".into(),
        None => "-".into(),
        Some(Eta::Never) => "never".into(),
        Some(Eta::InSeconds(s)) if s <= 0.0 => "now".into(),
        Some(Eta::InSeconds(s)) => format!("in {}", fmt_span((s * 1000.0) as u64)),
    }
}

pub fn run(ctx: &Ctx) -> Result<Verdict, ToolError> {
    let Some(state) = ctx.state()? else {
        return Err(ToolError(format!(
            "no {} in {}: no forwarder has run on this data directory yet",
            crate::state::FILE,
            ctx.data.display()
        )));
    };
    let running = ctx.running()?;
    let now = now_ms();
    let letters = DeadLetters::new(&ctx.data)
        .with_keys(ctx.keys().clone())
        .list(None)
        .map_err(|e| ToolError::io("listing dead letters in", &ctx.data, e))?;
    let mut dead_letters: BTreeMap<String, usize> = BTreeMap::new();
    for l in &letters {
        *dead_letters.entry(l.destination.clone()).or_default() += 1;
    }
    let w = &state.wal;
    let report = Report {
        data_dir: ctx.data.display().to_string(),
        forwarder_running: running,
        clean: running || !state.running,
        pid: state.pid,
        instance_id: state.instance_id.clone(),
        state_updated: fmt_time(state.updated_ms),
        state_age_seconds: now.saturating_sub(state.updated_ms) as f64 / 1000.0,
        wal: Wal {
            bytes: w.bytes,
            budget_bytes: w.max_bytes,
            budget_used_ratio: if w.max_bytes == 0 {
                0.0
            } else {
                w.bytes as f64 / w.max_bytes as f64
            },
            segments: w.segments,
            first_seq: w.first_seq,
            last_seq: w.last_seq,
            failed: w.failed.clone(),
            budget_full_eta: w.budget_full_eta,
        },
        destinations: state
            .destinations
            .iter()
            .map(|d| Destination {
                name: d.name.clone(),
                endpoint: d.endpoint.to_string(),
                position: d.position,
                backlog_records: d.backlog_records,
                backlog_spans: d.backlog_spans,
                backlog_bytes: d.backlog_bytes,
                oldest_undelivered: d.oldest_undelivered_ms.map(fmt_time),
                oldest_undelivered_age_seconds: d
                    .oldest_undelivered_ms
                    .map(|t| now.saturating_sub(t) as f64 / 1000.0),
                last_success: d.last_success_ms.map(fmt_time),
                last_error_time: d.last_error_ms.map(fmt_time),
                last_error: d.last_error.clone(),
                catchup_eta: d.catchup_eta,
                live_lane_records: d.lanes.map(|l| l.0),
                backlog_lane_records: d.lanes.map(|l| l.1),
            })
            .collect(),
        dead_letters,
    };
    if ctx.json {
        ctx.print_json(&report)?;
        return Ok(Verdict::Fine);
    }
    let who = if running {
        format!("running (pid {})", state.pid)
    } else if report.clean {
        "stopped".to_string()
    } else {
        format!(
            "NOT running and did not shut down cleanly (pid {} was killed or crashed); figures are from before",
            state.pid
        )
    };
    println!("forwarder: {who}; instance {}", state.instance_id);
    println!(
        "state as of {} ({})",
        report.state_updated,
        fmt_ago(state.updated_ms, now)
    );
    println!(
        "log: {} of {} budget ({:.1} %), {} segments, {}{}",
        fmt_bytes(w.bytes),
        fmt_bytes(w.max_bytes),
        report.wal.budget_used_ratio * 100.0,
        w.segments,
        if w.last_seq >= w.first_seq {
            format!("seq {}..{}", w.first_seq, w.last_seq)
        } else {
            "empty".to_string()
        },
        w.failed
            .as_ref()
            .map(|f| format!("; FAILED: {f}"))
            .unwrap_or_default()
    );
    if running {
        println!(
            "budget full: {}",
            match w.budget_full_eta {
                Some(Eta::Never) =>
                    "never at the last minute's rate (the log is not growing)".into(),
                eta => format!("{} at the last minute's rate", fmt_eta(eta, running)),
            }
        );
    }
    println!();
    let rows: Vec<Vec<String>> = state
        .destinations
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.backlog_spans.to_string(),
                d.backlog_records.to_string(),
                fmt_bytes(d.backlog_bytes),
                d.oldest_undelivered_ms
                    .map(|t| fmt_span(now.saturating_sub(t)))
                    .unwrap_or_else(|| "-".into()),
                match d.lanes {
                    Some((live, backlog)) => {
                        format!(
                            "{} (live {live}, backlog {backlog})",
                            fmt_eta(d.catchup_eta, running)
                        )
                    }
                    None => fmt_eta(d.catchup_eta, running),
                },
                d.last_success_ms
                    .map(|t| fmt_ago(t, now))
                    .unwrap_or_else(|| "never".into()),
                match (&d.last_error_ms, &d.last_error) {
                    (Some(t), Some(e)) => format!("{}: {e}", fmt_ago(*t, now)),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no destinations configured: records are kept, not forwarded");
    } else {
        print!(
            "{}",
            table(
                &[
                    "DESTINATION",
                    "BACKLOG SPANS",
                    "RECORDS",
                    "BYTES",
                    "OLDEST UNDELIVERED",
                    "CAUGHT UP",
                    "LAST SUCCESS",
                    "LAST ERROR",
                ],
                &rows
            )
        );
    }
    if !report.dead_letters.is_empty() {
        let list: Vec<String> = report
            .dead_letters
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        println!(
            "\ndead letters: {} (see `tracespool dead-letter list`)",
            list.join(", ")
        );
    }
    Ok(Verdict::Fine)
}
