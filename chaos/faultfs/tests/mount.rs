//! faultfs through a real FUSE mount: what a process on the mount sees, and what is
//! left on the disk after a power cut. Skipped (with a note) where FUSE cannot run.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use faultfs::harness::{unavailable, Mount, MountOptions};
use faultfs::{Action, BadRange, Op, Rule, When};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_faultfs"))
}

struct Setup {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
}

fn setup(name: &str) -> Option<Setup> {
    if let Some(why) = unavailable() {
        println!("SKIPPED {name}: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    Some(Setup {
        _dir: dir,
        backing,
        mnt,
    })
}

fn mount(s: &Setup, opts: &MountOptions) -> Mount {
    Mount::start(&bin(), &s.backing, &s.mnt, opts).expect("mount faultfs")
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

#[test]
fn power_cut_keeps_synced_bytes_and_names_and_drops_the_rest() {
    let Some(s) = setup("power_cut_keeps_synced_bytes_and_names_and_drops_the_rest") else {
        return;
    };
    let m = mount(&s, &MountOptions::default());
    fs::create_dir(s.mnt.join("wal")).unwrap();
    sync_dir(&s.mnt);
    let mut f = File::create(s.mnt.join("wal/1.seg")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_data().unwrap();
    sync_dir(&s.mnt.join("wal"));
    f.write_all(b" but this is not").unwrap();
    drop(f);
    // A file whose data is synced but whose name is not.
    let mut g = File::create(s.mnt.join("wal/2.seg")).unwrap();
    g.write_all(b"nameless").unwrap();
    g.sync_all().unwrap();
    drop(g);
    assert_eq!(
        fs::read(s.mnt.join("wal/1.seg")).unwrap(),
        b"durable but this is not"
    );
    let report = m.poweroff().unwrap();
    assert_eq!(fs::read(s.backing.join("wal/1.seg")).unwrap(), b"durable");
    assert!(!s.backing.join("wal/2.seg").exists());
    assert_eq!(report.vanished, vec!["wal/2.seg".to_string()]);
    // Power on again: the mount shows the durable state.
    let m = mount(&s, &MountOptions::default());
    assert_eq!(fs::read(s.mnt.join("wal/1.seg")).unwrap(), b"durable");
    m.unmount().unwrap();
}

#[test]
fn a_cut_rule_stops_the_disk_between_two_steps_of_a_segment_creation() {
    let Some(s) = setup("a_cut_rule_stops_the_disk_between_two_steps_of_a_segment_creation") else {
        return;
    };
    let mut m = mount(&s, &MountOptions::default());
    // C1 create .tmp, C2 header, C3 fdatasync, C4 rename, C5 fsync dir: cut at C4.
    m.arm(Rule::new(
        &[Op::Rename],
        Some("*.seg.tmp"),
        Action::Cut { when: When::Before },
    ))
    .unwrap();
    let mnt = s.mnt.clone();
    let worker = std::thread::spawn(move || -> std::io::Result<()> {
        let tmp = mnt.join("7.seg.tmp");
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(b"header")?;
        f.sync_data()?;
        sync_dir(&mnt);
        fs::rename(&tmp, mnt.join("7.seg"))?; // waits here, then fails
        sync_dir(&mnt);
        Ok(())
    });
    let trigger = m.client().wait_cut(Duration::from_secs(20)).unwrap();
    assert!(
        trigger.as_deref().is_some_and(|t| t.contains("7.seg.tmp")),
        "{trigger:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !worker.is_finished(),
        "the rename must wait while the power is cut"
    );
    let report = m.poweroff().unwrap();
    let err = worker.join().unwrap().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs::read(s.backing.join("7.seg.tmp")).unwrap(), b"header");
    assert!(!s.backing.join("7.seg").exists());
    assert!(report.trigger.unwrap().contains("Rename"));
}

#[test]
fn an_fsync_that_completes_just_before_the_cut_is_durable() {
    let Some(s) = setup("an_fsync_that_completes_just_before_the_cut_is_durable") else {
        return;
    };
    let mut m = mount(&s, &MountOptions::default());
    let mut f = File::create(s.mnt.join("ledger")).unwrap();
    sync_dir(&s.mnt);
    m.arm(
        Rule::new(
            &[Op::Fsync],
            Some("ledger"),
            Action::Cut { when: When::After },
        )
        .nth(2),
    )
    .unwrap();
    f.write_all(b"one\n").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"two\n").unwrap();
    let waiter = std::thread::spawn(move || f.sync_data());
    assert!(m
        .client()
        .wait_cut(Duration::from_secs(20))
        .unwrap()
        .is_some());
    m.poweroff().unwrap();
    assert!(
        waiter.join().unwrap().is_err(),
        "the caller never hears of it"
    );
    assert_eq!(fs::read(s.backing.join("ledger")).unwrap(), b"one\ntwo\n");
}

#[test]
fn a_bad_sector_fails_reads_and_kills_a_process_that_maps_it() {
    let Some(s) = setup("a_bad_sector_fails_reads_and_kills_a_process_that_maps_it") else {
        return;
    };
    fs::write(s.backing.join("seg"), vec![7u8; 4 * 4096]).unwrap();
    let m = mount(
        &s,
        &MountOptions {
            bad: vec![BadRange {
                path: "seg".into(),
                offset: 8192,
                len: 512,
            }],
            ..Default::default()
        },
    );
    let f = File::open(s.mnt.join("seg")).unwrap();
    let mut buf = [0u8; 100];
    f.read_exact_at(&mut buf, 100).unwrap();
    assert_eq!(buf, [7u8; 100]);
    let e = f.read_exact_at(&mut buf, 8200).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    drop(f);
    // A reader that maps the file dies of SIGBUS on the bad page.
    let script = format!(
        "import mmap,os\nf=open({:?},'rb')\nm=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ)\nprint(m[0])\nprint(m[8192])\n",
        s.mnt.join("seg").display().to_string()
    );
    match Command::new("python3").arg("-c").arg(&script).output() {
        Ok(out) => {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGBUS),
                "{:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
        }
        Err(e) => println!("SKIPPED the mmap part: no python3 ({e})"),
    }
    m.unmount().unwrap();
}

#[test]
fn a_failed_fsync_loses_the_data_on_disk_while_reads_still_return_it() {
    let Some(s) = setup("a_failed_fsync_loses_the_data_on_disk_while_reads_still_return_it") else {
        return;
    };
    fs::write(s.backing.join("seg"), b"synced;").unwrap();
    let mut m = mount(&s, &MountOptions::default());
    m.arm(Rule::new(
        &[Op::Fsync],
        Some("seg"),
        Action::Error {
            errno: libc::EIO,
            lose: true,
        },
    ))
    .unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(s.mnt.join("seg"))
        .unwrap();
    f.write_all(b"never durable").unwrap();
    let e = f.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    drop(f);
    // A process that opens the file again (a restart, no reboot) still reads it...
    assert_eq!(
        fs::read(s.mnt.join("seg")).unwrap(),
        b"synced;never durable"
    );
    // ...but the disk does not have it.
    assert_eq!(fs::read(s.backing.join("seg")).unwrap(), b"synced;");
    m.poweroff().unwrap();
    assert_eq!(fs::read(s.backing.join("seg")).unwrap(), b"synced;");
}

#[test]
fn the_limit_shows_in_statfs_and_gives_enospc() {
    let Some(s) = setup("the_limit_shows_in_statfs_and_gives_enospc") else {
        return;
    };
    let m = mount(
        &s,
        &MountOptions {
            limit: Some(256 * 1024),
            ..Default::default()
        },
    );
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        let c = std::ffi::CString::new(s.mnt.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        st
    };
    assert_eq!(st.f_blocks * st.f_frsize, 256 * 1024);
    let mut f = File::create(s.mnt.join("big")).unwrap();
    let e = f.write_all(&vec![1u8; 512 * 1024]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    drop(f);
    let len = fs::metadata(s.mnt.join("big")).unwrap().len();
    assert!(len > 200 * 1024 && len <= 256 * 1024, "{len}");
    let mut back = Vec::new();
    File::open(s.mnt.join("big"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back.iter().all(|&b| b == 1));
    m.unmount().unwrap();
}

#[test]
fn a_delay_rule_makes_every_matching_operation_slow() {
    let Some(s) = setup("a_delay_rule_makes_every_matching_operation_slow") else {
        return;
    };
    fs::write(s.backing.join("seg"), b"x").unwrap();
    let mut m = mount(&s, &MountOptions::default());
    m.arm(Rule::new(&[Op::Fsync], Some("seg"), Action::DelayMs { ms: 300 }).times(0))
        .unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(s.mnt.join("seg"))
        .unwrap();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        f.sync_data().unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }
    // Other operations are not slowed.
    let t = std::time::Instant::now();
    fs::read(s.mnt.join("seg")).unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));
    drop(f);
    m.unmount().unwrap();
}
