//! The control protocol: one JSON object per line on a Unix socket, each request
//! answered by one response line. [`Client`] is the tests' side of it.
//!
//! ```text
//! {"op":"arm","rule":{"ops":["rename"],"path":"wal/*.seg.tmp","action":{"cut":{}}}}
//! {"armed":{"id":1}}
//! {"op":"wait_cut","timeout_ms":30000}
//! {"cut":{"trigger":"rule 1: rename wal/00000000000000000065.seg.tmp -> wal/00000000000000000065.seg (before)"}}
//! {"op":"poweroff"}
//! {"report":{"report":{"files":[...],"vanished":[...],"restored":[...]}}}
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::disk::{BadRange, CutReport, Stats};
use crate::rules::Rule;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Counters, whether the power is cut, and the armed rules.
    Status,
    Arm {
        rule: Rule,
    },
    Disarm {
        id: u64,
    },
    /// Disarms every rule.
    Clear,
    /// Cuts the power now: every operation from here on waits for `poweroff`.
    Cut,
    /// Waits until the power has been cut (by a rule or a `cut`).
    WaitCut {
        timeout_ms: u64,
    },
    /// After a cut (or instead of one): reverts the disk to its durable state,
    /// unmounts, answers with the report and exits.
    Poweroff,
    /// An orderly shutdown: unmounts keeping everything (a clean shutdown syncs all).
    Unmount,
    /// Reads of this range fail with EIO from now on.
    Bad {
        range: BadRange,
    },
    ClearBad,
    /// The filesystem holds this many bytes (`null`: no limit).
    Limit {
        bytes: Option<u64>,
    },
    /// The last `last` operations that changed the disk, oldest first.
    Trace {
        last: usize,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok,
    Armed {
        id: u64,
    },
    Status {
        stats: Stats,
        cut: Option<String>,
        rules: Vec<(u64, Rule, u64)>,
    },
    Cut {
        trigger: String,
    },
    Timeout,
    Report {
        report: CutReport,
    },
    Trace {
        ops: Vec<String>,
    },
    Error {
        message: String,
    },
}

/// A connection to a running faultfs.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> io::Result<Self> {
        let s = UnixStream::connect(socket)?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one request and waits for its answer (at most `timeout`).
    pub fn call_with_timeout(&mut self, req: &Request, timeout: Duration) -> io::Result<Response> {
        let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "faultfs closed the control connection",
            ));
        }
        match serde_json::from_str(&answer).map_err(io::Error::other)? {
            Response::Error { message } => Err(io::Error::other(message)),
            r => Ok(r),
        }
    }

    pub fn call(&mut self, req: &Request) -> io::Result<Response> {
        let wait = match req {
            Request::WaitCut { timeout_ms } => Duration::from_millis(*timeout_ms + 10_000),
            _ => Duration::from_secs(120),
        };
        self.call_with_timeout(req, wait)
    }

    pub fn arm(&mut self, rule: Rule) -> io::Result<u64> {
        match self.call(&Request::Arm { rule })? {
            Response::Armed { id } => Ok(id),
            r => Err(unexpected(r)),
        }
    }

    /// Waits for a cut; `None` if none came within `timeout`.
    pub fn wait_cut(&mut self, timeout: Duration) -> io::Result<Option<String>> {
        match self.call(&Request::WaitCut {
            timeout_ms: timeout.as_millis() as u64,
        })? {
            Response::Cut { trigger } => Ok(Some(trigger)),
            Response::Timeout => Ok(None),
            r => Err(unexpected(r)),
        }
    }

    pub fn poweroff(&mut self) -> io::Result<CutReport> {
        match self.call(&Request::Poweroff)? {
            Response::Report { report } => Ok(report),
            r => Err(unexpected(r)),
        }
    }

    pub fn ok(&mut self, req: &Request) -> io::Result<()> {
        match self.call(req)? {
            Response::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }
}

fn unexpected(r: Response) -> io::Error {
    io::Error::other(format!("unexpected answer from faultfs: {r:?}"))
}
