//! The queue from `append` callers to the writer thread.
//!
//! A mutex-protected list with a condition variable, instead of a channel, so the
//! writer can sleep until a whole group has arrived: it says how many commands it
//! waits for, and callers wake it only when that many are queued (or a control
//! command arrives). A channel would wake it once per message, and on a 2-core
//! machine those wakeups cost more than the fsync they are meant to batch.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::writer::Command;

#[derive(Default)]
pub(crate) struct CommandQueue {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    items: VecDeque<Command>,
    /// The writer sleeps until at least this many commands are queued; 0 when it
    /// is not waiting.
    wake_at: usize,
    /// Set when the writer has stopped: nothing will take commands any more.
    closed: bool,
}

impl CommandQueue {
    /// Queues a command; gives it back if the writer has stopped.
    pub fn push(&self, cmd: Command) -> Result<(), Command> {
        let urgent = !matches!(cmd, Command::Append(_));
        let mut st = self.state.lock().unwrap();
        if st.closed {
            return Err(cmd);
        }
        st.items.push_back(cmd);
        if st.wake_at > 0 && (urgent || st.items.len() >= st.wake_at) {
            st.wake_at = 0;
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits until `want` commands are queued (a control command ends the wait
    /// early) or `timeout` passes, then takes everything queued.
    pub fn take(&self, want: usize, timeout: Duration, out: &mut Vec<Command>) {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        loop {
            let urgent = st.items.iter().any(|c| !matches!(c, Command::Append(_)));
            if st.items.len() >= want.max(1) || urgent {
                break;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            st.wake_at = want.max(1);
            st = self.ready.wait_timeout(st, left).unwrap().0;
        }
        st.wake_at = 0;
        out.extend(st.items.drain(..));
    }

    /// Refuses further commands and hands back what was queued.
    pub fn close(&self) -> Vec<Command> {
        let mut st = self.state.lock().unwrap();
        st.closed = true;
        st.items.drain(..).collect()
    }
}
