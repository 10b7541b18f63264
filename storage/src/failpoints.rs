//! Fault injection for tests (feature `failpoints`). Each log has its own set, so
//! tests running in parallel do not disturb each other.
//!
//! Points: `segment.write` (a chunk of records), `segment.sync` (fdatasync of the
//! active segment), `segment.create` (writing a new segment's header).

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

/// What an armed point does.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Fail with this OS error (e.g. `libc::EIO` = 5, `ENOSPC` = 28).
    Error(i32),
    /// For `segment.write`: write this many bytes of the chunk, then fail with the
    /// OS error (a short write that leaves a partial record on disk).
    PartialWrite(usize, i32),
}

#[derive(Debug, Default)]
pub struct Failpoints {
    armed: Mutex<HashMap<&'static str, (Action, u32)>>,
}

impl Failpoints {
    /// Arms `point` to fire `times` times.
    pub fn arm(&self, point: &'static str, action: Action, times: u32) {
        self.armed.lock().unwrap().insert(point, (action, times));
    }

    pub fn disarm(&self, point: &'static str) {
        self.armed.lock().unwrap().remove(point);
    }

    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) fn fire(&self, point: &'static str) -> Option<Action> {
        let mut armed = self.armed.lock().unwrap();
        let (action, left) = armed.get_mut(point)?;
        let action = *action;
        *left -= 1;
        if *left == 0 {
            armed.remove(point);
        }
        Some(action)
    }
}

pub(crate) fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}
