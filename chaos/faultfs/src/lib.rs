//! faultfs: a FUSE passthrough filesystem that models what a disk promises and no
//! more, for testing software that claims to survive power cuts and failing disks.
//!
//! The backing directory always holds what a process on the mount would read now;
//! [`Disk`] keeps beside it what is needed to turn it into what was *durable*:
//! the synced bytes of every page written since its file's last `fsync`, and the
//! directory entries as of each directory's last `fsync`. A power cut (on command,
//! or on the N-th matching operation) freezes the mount; `poweroff` then rebuilds
//! the backing directory as the durable state — optionally with torn writes — and
//! unmounts. Mount the same directory again to "power on".
//!
//! | module      | what it holds                                                   |
//! |-------------|-----------------------------------------------------------------|
//! | [`disk`]    | the model: undo pages, durable directory tree, ghosts, space    |
//! | [`rules`]   | fault rules: which operation, which path, the n-th, what to do   |
//! | `fs`        | the FUSE glue: kernel requests → model calls, the freeze gate    |
//! | [`control`] | the control protocol (JSON lines on a Unix socket) and a client |
//! | [`daemon`]  | mount, serve the socket, power off                              |

pub mod control;
pub mod daemon;
pub mod disk;
mod fs;
pub mod harness;
mod rng;
pub mod rules;

pub use control::{Client, Request, Response};
pub use disk::{BadRange, CutReport, Disk, FileCut, Options, Torn};
pub use rules::{Action, Op, Rule, When};
