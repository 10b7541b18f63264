//! The operator's tools: `status`, `wal`, `audit`, `replay`, `dead-letter`.
//!
//! They work on a stopped forwarder's data directory and beside a running one,
//! without disturbing it: they never open the log's metadata store (a running
//! forwarder holds it), never map or lock segments, and read what the forwarder
//! publishes for them — `state.json` (cursor positions, backlogs, last errors) and
//! the audit ledger. Only `dead-letter retry` and `replay` write: a ledger line each,
//! and `retry` removes the dead letters it delivered.
//!
//! Output is a table for people and, with `--json`, JSON for machines. Exit codes:
//! 0 — done, nothing wrong; 1 — done, and something is wrong (damage, an audit that
//! does not balance, records that could not be sent); 2 — could not run.

mod audit;
mod deadletter;
mod replay;
mod status;
mod wal;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::{AuditCommand, Command, DeadLetterCommand, WalCommand};
use crate::config::Config;
use crate::state::State;

/// Why a tool could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

impl ToolError {
    pub fn io(what: &str, path: &Path, e: std::io::Error) -> Self {
        Self(format!("{what} {}: {e}", path.display()))
    }
}

/// What every tool needs.
pub struct Ctx {
    pub cfg: Config,
    pub data: PathBuf,
    pub json: bool,
}

/// The result of a tool that ran: whether it found something wrong.
pub enum Verdict {
    Fine,
    Problem,
}

pub fn main(cmd: Command, cfg: Config, json: bool) -> ExitCode {
    let data = cfg.storage.dir.clone();
    let ctx = Ctx { cfg, data, json };
    let result = if !ctx.data.is_dir() {
        Err(ToolError(format!(
            "no data directory at {} (set storage.dir in the config, or pass --data-dir)",
            ctx.data.display()
        )))
    } else {
        match cmd {
            Command::Status => status::run(&ctx),
            Command::Wal(WalCommand::Inspect) => wal::inspect(&ctx),
            Command::Wal(WalCommand::Verify) => wal::verify(&ctx),
            Command::Wal(WalCommand::Dump { seq }) => wal::dump(&ctx, seq),
            Command::Audit(AuditCommand::Summary {
                since,
                until,
                destination,
            }) => audit::summary(&ctx, since, until, destination),
            Command::Audit(AuditCommand::Show { seq, key, trace_id }) => {
                audit::show(&ctx, seq, key, trace_id)
            }
            Command::Replay(args) => replay::run(&ctx, args),
            Command::DeadLetter(DeadLetterCommand::List { destination }) => {
                deadletter::list(&ctx, destination)
            }
            Command::DeadLetter(DeadLetterCommand::Retry {
                destination,
                seq,
                endpoint,
                protocol,
            }) => deadletter::retry(&ctx, destination, seq, endpoint, protocol),
            Command::Run | Command::CheckConfig => unreachable!("not a tool"),
        }
    };
    match result {
        Ok(Verdict::Fine) => ExitCode::SUCCESS,
        Ok(Verdict::Problem) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tracespool: {e}");
            ExitCode::from(2)
        }
    }
}

impl Ctx {
    /// The keys the configuration gives for an encrypted spool.
    pub fn keys(&self) -> &tracespool_storage::KeyRing {
        &self.cfg.storage.encryption.ring
    }

    /// What the forwarder last published, if it ever ran here.
    pub fn state(&self) -> Result<Option<State>, ToolError> {
        crate::state::read(&self.data)
            .map_err(|e| ToolError::io("reading", &self.data.join(crate::state::FILE), e))
    }

    /// Whether a forwarder holds the data directory now.
    pub fn running(&self) -> Result<bool, ToolError> {
        tracespool_storage::offline::forwarder_running(&self.data)
            .map_err(|e| ToolError::io("probing the lock of", &self.data, e))
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.data.join("ledger")
    }

    pub fn print_json<T: serde::Serialize>(&self, v: &T) -> Result<(), ToolError> {
        let s = serde_json::to_string_pretty(v).map_err(|e| ToolError(e.to_string()))?;
        println!("{s}");
        Ok(())
    }
}

/// A seq or a time, as `--from`/`--to` take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Seq(u64),
    /// Milliseconds since the epoch.
    Time(u64),
}

pub fn parse_point(s: &str) -> Result<Point, ToolError> {
    if let Ok(seq) = s.parse::<u64>() {
        return Ok(Point::Seq(seq));
    }
    parse_time(s).map(Point::Time)
}

/// An RFC 3339 time ("2026-11-25T10:00:00Z", date-only allowed) or a duration ago
/// ("90m", "2h 30m"), as milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<u64, ToolError> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(crate::ledger::ms(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        return Ok(crate::ledger::ms(t));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(crate::ledger::ms(SystemTime::now() - d));
    }
    Err(ToolError(format!(
        "{s:?} is neither an RFC 3339 time (2026-11-25T10:00:00Z) nor a duration ago (2h)"
    )))
}

pub fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// "5m 2s" for a span of milliseconds (to the second; "0s" under one).
pub fn fmt_span(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

pub fn fmt_ago(ms: u64, now: u64) -> String {
    format!("{} ago", fmt_span(now.saturating_sub(ms)))
}

pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Columns aligned on the widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            let _ = write!(l, "{c:<w$}  ", w = widths[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut headers.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_seqs_or_times() {
        assert_eq!(parse_point("42").unwrap(), Point::Seq(42));
        assert_eq!(
            parse_point("2026-11-25T10:00:00Z").unwrap(),
            Point::Time(1_795_600_800_000)
        );
        assert_eq!(
            parse_point("2026-11-25").unwrap(),
            Point::Time(1_795_564_800_000)
        );
        let ago = parse_time("1h").unwrap();
        let expect = crate::ledger::now_ms() - 3_600_000;
        assert!(ago.abs_diff(expect) < 5_000, "{ago} vs {expect}");
        assert!(parse_point("yesterday").is_err());
    }

    #[test]
    fn tables_align_and_sizes_read_well() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["x".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nx    22\n");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 << 20), "3.0 MiB");
        assert_eq!(fmt_span(302_400), "5m 2s");
    }
}
