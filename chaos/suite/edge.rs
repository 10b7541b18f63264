#![allow(dead_code)]
//! An edge box under test: the real `tracespool` binary whose data directory lives
//! on a faultfs mount, which the scenarios power-cut, fill, and give bad sectors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use faultfs::harness::{Mount, MountOptions};
use faultfs::{CutReport, Rule};

use crate::support::spool::{Dest, Spool};

/// The faultfs binary: next to this test binary's directory (cargo builds it for
/// the workspace's tests), or built now.
pub fn faultfs_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join("faultfs");
    if !bin.exists() {
        let release = profile_dir.ends_with("release");
        let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
        cmd.args([
            "build",
            "-q",
            "-p",
            "tracespool-faultfs",
            "--bin",
            "faultfs",
        ]);
        if release {
            cmd.arg("--release");
        }
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(ok && bin.exists(), "cannot build {}", bin.display());
    }
    bin
}

pub struct Edge {
    pub root: PathBuf,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub spool: Spool,
    pub opts: MountOptions,
    fs: Option<Mount>,
    /// What each power cut reverted.
    pub cuts: Vec<CutReport>,
    /// Starts of the forwarder (the first included).
    pub starts: u32,
    /// Log offset of the current run, to check each start's output.
    run_log_offset: u64,
}

impl Edge {
    /// An edge in `root`; its disk is `root/disk`, mounted at `root/mnt`, data in
    /// `mnt/data`. Not powered on.
    pub fn new(root: &Path, storage: &str, dests: &[Dest], opts: MountOptions) -> Self {
        let backing = root.join("disk");
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let spool = Spool::with_data(root, &mnt.join("data"), storage, dests);
        Self {
            root: root.to_path_buf(),
            backing,
            mnt,
            spool,
            opts,
            fs: None,
            cuts: Vec::new(),
            starts: 0,
            run_log_offset: 0,
        }
    }

    pub fn mount(&mut self) {
        assert!(self.fs.is_none(), "already mounted");
        let m = Mount::start(&faultfs_bin(), &self.backing, &self.mnt, &self.opts)
            .expect("mount faultfs");
        self.fs = Some(m);
    }

    /// Mounts the disk and starts the forwarder (which must come up).
    pub fn power_on(&mut self) {
        self.mount();
        self.run_log_offset = std::fs::metadata(&self.spool.log)
            .map(|m| m.len())
            .unwrap_or(0);
        self.spool.start();
        self.starts += 1;
    }

    pub fn fs(&mut self) -> &mut Mount {
        self.fs.as_mut().expect("powered on")
    }

    pub fn arm(&mut self, rule: Rule) -> u64 {
        self.fs().arm(rule).expect("arm rule")
    }

    /// Waits for a rule to cut the power; its trigger.
    pub fn wait_cut(&mut self, timeout: Duration) -> Option<String> {
        self.fs().client().wait_cut(timeout).expect("wait for cut")
    }

    /// The power goes now (or has gone, by a rule): the disk freezes, the process
    /// dies, the disk keeps only what was durable.
    pub fn power_cut(&mut self) -> CutReport {
        let fs = self.fs.as_mut().expect("powered on");
        fs.cut().expect("cut");
        self.spool.note("power cut");
        self.spool.signal_kill();
        let report = self.fs.take().unwrap().poweroff().expect("poweroff");
        self.spool.reap();
        self.cuts.push(report.clone());
        report
    }

    /// `kill -9` of the forwarder (the disk keeps everything), and a restart.
    pub fn kill9_and_restart(&mut self) {
        self.spool.kill();
        self.run_log_offset = std::fs::metadata(&self.spool.log)
            .map(|m| m.len())
            .unwrap_or(0);
        self.spool.start();
        self.starts += 1;
    }

    /// `kill -9` of the forwarder, `rule` armed, and a restart that is not waited
    /// for: the rule may cut the power while the forwarder opens its log.
    pub fn kill9_and_restart_armed(&mut self, rule: Rule) {
        self.spool.kill();
        self.arm(rule);
        self.run_log_offset = std::fs::metadata(&self.spool.log)
            .map(|m| m.len())
            .unwrap_or(0);
        self.spool.spawn();
        self.starts += 1;
    }

    /// SIGTERM (must exit 0), then unmount keeping everything.
    pub fn shutdown(&mut self) {
        let (status, took) = self.spool.terminate();
        assert!(
            status.success(),
            "exit after SIGTERM: {status} after {took:?}"
        );
        if let Some(m) = self.fs.take() {
            m.unmount().expect("unmount");
        }
    }

    /// The forwarder's log since its last start.
    pub fn run_log(&self) -> String {
        let all = std::fs::read(&self.spool.log).unwrap_or_default();
        String::from_utf8_lossy(&all[(self.run_log_offset as usize).min(all.len())..]).into_owned()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.spool.signal_kill();
        if let Some(m) = self.fs.take() {
            let _ = m.poweroff();
        }
        self.spool.reap();
    }
}
