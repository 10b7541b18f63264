//! `faultfs`: mount a fault-injecting filesystem, or talk to a mounted one.
//!
//! ```sh
//! faultfs mount --backing /tmp/disk --mountpoint /mnt/edge --control /tmp/ffs.sock \
//!     --seed 7 --torn-keep-percent 50 --limit 64MiB --bad wal/00000000000000000001.seg:4096:4096
//! faultfs ctl --control /tmp/ffs.sock '{"op":"arm","rule":{"ops":["fsync"],"path":"wal/*.seg","nth":3,"action":{"cut":{}}}}'
//! faultfs ctl --control /tmp/ffs.sock '{"op":"poweroff"}'
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use faultfs::{BadRange, Options, Request, Rule, Torn};

#[derive(Parser)]
#[command(
    name = "faultfs",
    about = "A FUSE filesystem that models what a disk promises and no more"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount BACKING at MOUNTPOINT; serve the control socket until poweroff/unmount.
    Mount {
        #[arg(long)]
        backing: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
        #[arg(long)]
        control: PathBuf,
        /// Seed for torn writes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// At a power cut, each unsynced page survives with this probability (0: none).
        #[arg(long, default_value_t = 0)]
        torn_keep_percent: u8,
        /// Bytes the filesystem holds (e.g. 64MiB); default: the backing filesystem's.
        #[arg(long, value_parser = parse_bytes)]
        limit: Option<u64>,
        /// PATH:OFFSET:LEN — reads of these bytes fail with EIO (a bad sector).
        #[arg(long, value_parser = parse_bad)]
        bad: Vec<BadRange>,
        /// A fault rule as JSON (see rules.rs), armed from the start.
        #[arg(long, value_parser = parse_rule)]
        rule: Vec<Rule>,
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Send one JSON request to a running faultfs and print the answer.
    Ctl {
        #[arg(long)]
        control: PathBuf,
        request: String,
    },
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("{s:?}: {e}"))
}

fn parse_bad(s: &str) -> Result<BadRange, String> {
    let mut it = s.rsplitn(3, ':');
    let (len, off, path) = (it.next(), it.next(), it.next());
    match (path, off, len) {
        (Some(p), Some(o), Some(l)) => Ok(BadRange {
            path: p.to_string(),
            offset: parse_bytes(o)?,
            len: parse_bytes(l)?,
        }),
        _ => Err(format!("{s:?}: expected PATH:OFFSET:LEN")),
    }
}

fn parse_rule(s: &str) -> Result<Rule, String> {
    serde_json::from_str(s).map_err(|e| format!("rule {s:?}: {e}"))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Mount {
            backing,
            mountpoint,
            control,
            seed,
            torn_keep_percent,
            limit,
            bad,
            rule,
            threads,
        } => {
            let torn = if torn_keep_percent == 0 {
                Torn::None
            } else {
                Torn::Pages {
                    keep_percent: torn_keep_percent.min(100),
                }
            };
            let args = faultfs::daemon::Args {
                backing,
                mountpoint,
                control,
                options: Options { seed, torn, limit },
                bad,
                rules: rule,
                threads,
            };
            match faultfs::daemon::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("faultfs: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Ctl { control, request } => {
            let req: Request = match serde_json::from_str(&request) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("faultfs: bad request: {e}");
                    return ExitCode::from(2);
                }
            };
            let answer = faultfs::Client::connect(&control).and_then(|mut c| c.call(&req));
            match answer {
                Ok(r) => {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("faultfs: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
