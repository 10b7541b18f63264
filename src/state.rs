//! `<data>/state.json`: what the running forwarder knows that tools cannot read
//! from disk while it runs (the metadata store is locked) — cursor positions,
//! backlogs, last success and last error per destination. Written atomically every
//! two seconds and at shutdown; read by `tracespool status` and `audit`.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const FILE: &str = "state.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub updated_ms: u64,
    pub pid: u32,
    pub instance_id: String,
    /// False once the forwarder has shut down cleanly.
    pub running: bool,
    pub wal: WalState,
    pub destinations: Vec<DestinationState>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WalState {
    pub bytes: u64,
    pub max_bytes: u64,
    pub segments: usize,
    pub first_seq: u64,
    pub last_seq: u64,
    pub failed: Option<String>,
    /// When the budget fills at the last minute's rate (absent: not known yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_full_eta: Option<Eta>,
}

/// An estimate of when something happens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Eta {
    InSeconds(f64),
    /// Not at the recent rate (the backlog does not shrink, the log does not grow).
    Never,
}

impl Eta {
    pub fn from_seconds(s: f64) -> Self {
        if s.is_finite() {
            Self::InSeconds(s)
        } else {
            Self::Never
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DestinationState {
    pub name: String,
    pub endpoint: String,
    /// Highest seq up to which every record is delivered (or given up).
    pub position: u64,
    pub backlog_records: u64,
    pub backlog_spans: u64,
    pub backlog_bytes: u64,
    pub oldest_undelivered_ms: Option<u64>,
    pub last_success_ms: Option<u64>,
    pub last_error_ms: Option<u64>,
    pub last_error: Option<String>,
    /// When the backlog is drained at the last minute's rate (absent: not known
    /// yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup_eta: Option<Eta>,
    /// `live_first`: the seqs the live lane and the backlog lane still hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<(u64, u64)>,
}

pub fn write(data_dir: &Path, state: &State) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    crate::fsio::write_atomically(data_dir, FILE, &bytes)
}

pub fn read(data_dir: &Path) -> io::Result<Option<State>> {
    match std::fs::read(data_dir.join(FILE)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
