//! The faultfs process: mount, serve the control socket, and on `poweroff` revert
//! the disk to its durable state and exit; on `unmount` (or SIGTERM/SIGINT) unmount
//! keeping everything, as an orderly shutdown would.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::{Request, Response};
use crate::disk::{BadRange, Disk, Options};
use crate::fs::{FaultFs, Gate};
use crate::rules::Rule;

pub struct Args {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
    pub options: Options,
    pub bad: Vec<BadRange>,
    pub rules: Vec<Rule>,
    /// FUSE request threads.
    pub threads: usize,
}

enum Shutdown {
    /// Revert to the durable state (a power cut) or keep everything (`unmount`).
    Stop {
        revert: bool,
        answer: mpsc::Sender<Response>,
    },
}

/// Mounts and serves until `poweroff` or `unmount`. Prints `ready` on stdout once
/// the mount is live.
pub fn run(args: Args) -> io::Result<()> {
    block_stop_signals();
    let mut disk = Disk::load(&args.backing, &args.options)?;
    for b in &args.bad {
        disk.add_bad(b.clone());
    }
    let disk = Arc::new(Mutex::new(disk));
    let gate = Arc::new(Gate::new(args.rules.clone()));
    let fs = FaultFs::new(disk.clone(), gate.clone());
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("faultfs".into()),
        fuser::MountOption::Subtype("faultfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(args.threads.max(1));
    let mountpoint = args.mountpoint.canonicalize()?;
    let mut session = fuser::Session::new(fs, &mountpoint, &cfg)?;
    let mut unmounter = session.unmount_callable();
    let serving = std::thread::Builder::new()
        .name("faultfs-session".into())
        .spawn(move || session.run())?;
    // (A stat of the mountpoint is a request to this filesystem: only once it serves.)
    let conn = connection_id(&mountpoint);

    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control)?;
    let (tx, rx) = mpsc::channel::<Shutdown>();
    {
        let (gate, disk, tx) = (gate.clone(), disk.clone(), tx.clone());
        std::thread::Builder::new()
            .name("faultfs-control".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (gate, disk, tx) = (gate.clone(), disk.clone(), tx.clone());
                    std::thread::spawn(move || serve(stream, &gate, &disk, &tx));
                }
            })?;
    }
    spawn_signal_waiter(tx);
    println!("ready {}", mountpoint.display());
    io::stdout().flush()?;

    let Ok(Shutdown::Stop { revert, answer }) = rx.recv() else {
        return Ok(());
    };
    // Nothing more reaches the disk; operations waiting in a cut fail now (their
    // process has been killed, or is about to be).
    gate.power_off();
    unmount(&mountpoint, &mut unmounter, conn);
    let _ = serving.join();
    let response = if revert {
        let mut d = disk.lock().unwrap_or_else(|p| p.into_inner());
        match d.power_cut() {
            Ok(mut report) => {
                report.trigger = Some(gate.trigger().unwrap_or_else(|| "poweroff".into()));
                Response::Report { report }
            }
            Err(e) => Response::Error {
                message: format!("reverting the disk: {e}"),
            },
        }
    } else {
        Response::Ok
    };
    // faultfs's bookkeeping leaves the backing directory with it.
    let _ = std::fs::remove_dir_all(args.backing.join(crate::disk::INTERNAL));
    let _ = std::fs::remove_file(&args.control);
    let _ = answer.send(response);
    // Let the control thread write the answer before the process ends.
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

fn serve(stream: UnixStream, gate: &Gate, disk: &Mutex<Disk>, stop: &mpsc::Sender<Shutdown>) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = write_half;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
            Ok(req) => handle(req, gate, disk, stop),
        };
        let mut bytes = serde_json::to_vec(&resp).unwrap_or_default();
        bytes.push(b'\n');
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

fn handle(
    req: Request,
    gate: &Gate,
    disk: &Mutex<Disk>,
    stop: &mpsc::Sender<Shutdown>,
) -> Response {
    let disk = || disk.lock().unwrap_or_else(|p| p.into_inner());
    match req {
        Request::Status => Response::Status {
            stats: disk().stats(),
            cut: gate.trigger(),
            rules: gate.rules(),
        },
        Request::Arm { rule } => Response::Armed { id: gate.arm(rule) },
        Request::Disarm { id } => {
            gate.disarm(Some(id));
            Response::Ok
        }
        Request::Clear => {
            gate.disarm(None);
            Response::Ok
        }
        Request::Cut => {
            gate.cut("cut command");
            Response::Ok
        }
        Request::WaitCut { timeout_ms } => match gate.wait_cut(Duration::from_millis(timeout_ms)) {
            Some(trigger) => Response::Cut { trigger },
            None => Response::Timeout,
        },
        Request::Poweroff | Request::Unmount => {
            let (tx, rx) = mpsc::channel();
            let revert = matches!(req, Request::Poweroff);
            if stop.send(Shutdown::Stop { revert, answer: tx }).is_err() {
                return Response::Error {
                    message: "already shutting down".into(),
                };
            }
            rx.recv().unwrap_or(Response::Error {
                message: "shutdown did not answer".into(),
            })
        }
        Request::Bad { range } => {
            disk().add_bad(range);
            Response::Ok
        }
        Request::ClearBad => {
            disk().clear_bad();
            Response::Ok
        }
        Request::Limit { bytes } => {
            disk().set_limit(bytes);
            Response::Ok
        }
        Request::Trace { last } => Response::Trace {
            ops: gate.trace(last),
        },
    }
}

/// The FUSE connection number of the mount (`/sys/fs/fuse/connections/<n>`).
fn connection_id(mountpoint: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint).ok()?.dev();
    Some(libc::minor(dev) as u64)
}

/// Unmounts; if something still holds the mount, detaches it and aborts the FUSE
/// connection so the session ends regardless.
fn unmount(mountpoint: &Path, unmounter: &mut fuser::SessionUnmounter, conn: Option<u64>) {
    if unmounter.unmount().is_ok() {
        return;
    }
    if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    if let Some(n) = conn {
        let ctl = Path::new("/sys/fs/fuse/connections");
        let mounted = std::fs::read_dir(ctl).is_ok_and(|mut d| d.next().is_some());
        if !mounted {
            let _ = std::process::Command::new("mount")
                .args(["-t", "fusectl", "none"])
                .arg(ctl)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        // Gone already if the detach released the last reference.
        let _ = std::fs::write(ctl.join(n.to_string()).join("abort"), b"1");
    }
}

fn block_stop_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// SIGTERM or SIGINT: an orderly unmount (nothing reverted).
fn spawn_signal_waiter(tx: mpsc::Sender<Shutdown>) {
    std::thread::spawn(move || unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let mut sig = 0;
        if libc::sigwait(&set, &mut sig) == 0 {
            let (answer, _rx) = mpsc::channel();
            let _ = tx.send(Shutdown::Stop {
                revert: false,
                answer,
            });
        }
    });
}
