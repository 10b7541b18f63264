//! faultfs as a child process, for tests: mount, talk to it, cut the power, mount
//! again.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control::{Client, Request};
use crate::disk::{BadRange, CutReport};
use crate::rules::Rule;

/// Why faultfs cannot run here, if it cannot: no `/dev/fuse`, or neither root nor
/// `fusermount3` to mount with.
pub fn unavailable() -> Option<String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Some("/dev/fuse cannot be opened (no FUSE in this kernel or container)".into());
    }
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = ["fusermount3", "fusermount"].iter().any(|b| {
        Command::new(b)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !root && !fusermount {
        return Some("not root and no fusermount3 (Debian package fuse3) to mount with".into());
    }
    None
}

/// How to start a mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub seed: u64,
    /// 0: no torn writes.
    pub torn_keep_percent: u8,
    pub limit: Option<u64>,
    pub bad: Vec<BadRange>,
    pub rules: Vec<Rule>,
}

/// A mounted faultfs. Dropping it unmounts (keeping everything, as an orderly
/// shutdown).
pub struct Mount {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
    child: Option<Child>,
    client: Option<Client>,
}

impl Mount {
    /// Mounts `backing` at `mountpoint` (both must exist) with the faultfs binary
    /// `bin`, and waits until it serves.
    pub fn start(
        bin: &Path,
        backing: &Path,
        mountpoint: &Path,
        opts: &MountOptions,
    ) -> io::Result<Self> {
        let control = backing.with_extension("faultfs.sock");
        let mut cmd = Command::new(bin);
        cmd.arg("mount")
            .arg("--backing")
            .arg(backing)
            .arg("--mountpoint")
            .arg(mountpoint)
            .arg("--control")
            .arg(&control)
            .arg("--seed")
            .arg(opts.seed.to_string())
            .arg("--torn-keep-percent")
            .arg(opts.torn_keep_percent.to_string());
        if let Some(l) = opts.limit {
            cmd.arg("--limit").arg(l.to_string());
        }
        for b in &opts.bad {
            cmd.arg("--bad")
                .arg(format!("{}:{}:{}", b.path, b.offset, b.len));
        }
        for r in &opts.rules {
            cmd.arg("--rule")
                .arg(serde_json::to_string(r).map_err(io::Error::other)?);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        if !line.starts_with("ready") {
            let _ = child.kill();
            let status = child.wait()?;
            return Err(io::Error::other(format!(
                "faultfs did not mount {} ({status})",
                mountpoint.display()
            )));
        }
        let client = Client::connect(&control)?;
        Ok(Self {
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            control,
            child: Some(child),
            client: Some(client),
        })
    }

    pub fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("connected")
    }

    /// A second connection (e.g. to wait for a cut on another thread).
    pub fn connect(&self) -> io::Result<Client> {
        Client::connect(&self.control)
    }

    pub fn arm(&mut self, rule: Rule) -> io::Result<u64> {
        self.client().arm(rule)
    }

    pub fn cut(&mut self) -> io::Result<()> {
        self.client().ok(&Request::Cut)
    }

    /// Reverts the disk to its durable state and unmounts; the faultfs process ends.
    pub fn poweroff(mut self) -> io::Result<CutReport> {
        let report = self.client().poweroff();
        self.reap();
        report
    }

    /// Unmounts keeping everything.
    pub fn unmount(mut self) -> io::Result<()> {
        let r = self.client().ok(&Request::Unmount);
        self.reap();
        r
    }

    fn reap(&mut self) {
        self.client = None;
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    force_unmount(&self.mountpoint);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Some(c) = self.client.as_mut() {
                let _ = c.call_with_timeout(&Request::Unmount, Duration::from_secs(10));
            }
            self.reap();
        }
    }
}

/// Lazily unmounts whatever is mounted at `path` (a faultfs that died).
pub fn force_unmount(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(path)
        .stderr(Stdio::null())
        .status();
}
