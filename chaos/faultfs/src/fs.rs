//! The FUSE glue: every kernel request passes the [`Gate`] (fault rules, power
//! state), then becomes one call on the [`Disk`] model.
//!
//! Caching is off (attribute and entry TTL zero, no `keep_cache`): the kernel asks
//! for every lookup and re-reads a file's pages on each open, so what a process sees
//! is what the model holds. Writes go through (no writeback cache), so every
//! `write(2)` reaches the model before it returns.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::disk::{Attr, Disk, Kind};
use crate::rules::{Action, Armed, Op, Rule, When};

const TTL: Duration = Duration::ZERO;
const TRACE_LEN: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    On,
    /// Cut: operations wait (the machine is dead; nothing more reaches the disk).
    Frozen,
    /// After `poweroff`: every operation fails at once.
    Off,
}

struct GateState {
    power: Power,
    trigger: Option<String>,
    rules: Vec<Armed>,
    next_id: u64,
    trace: VecDeque<String>,
}

/// Fault rules and the power switch, shared by the FUSE threads and the control
/// socket.
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    started: Instant,
}

pub(crate) enum Verdict {
    Go(Option<Action>),
    /// The power is off: fail with EIO.
    Dead,
}

impl Gate {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut g = GateState {
            power: Power::On,
            trigger: None,
            rules: Vec::new(),
            next_id: 1,
            trace: VecDeque::new(),
        };
        for r in rules {
            let id = g.next_id;
            g.next_id += 1;
            g.rules.push(Armed {
                id,
                rule: r,
                matched: 0,
            });
        }
        Self {
            state: Mutex::new(g),
            changed: Condvar::new(),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while frozen; the power is off afterwards.
    fn wait_dead<'a>(&'a self, mut g: MutexGuard<'a, GateState>) -> Verdict {
        while g.power == Power::Frozen {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        Verdict::Dead
    }

    pub fn check(&self, op: Op, paths: &[&str]) -> Verdict {
        let mut g = self.lock();
        if g.power != Power::On {
            return self.wait_dead(g);
        }
        let mut action = None;
        let mut fired_by = 0;
        for a in g.rules.iter_mut() {
            if a.rule.matches(op, paths) {
                if let Some(x) = a.hit() {
                    if action.is_none() {
                        action = Some(x);
                        fired_by = a.id;
                    }
                }
            }
        }
        g.rules.retain(|a| !a.spent());
        if op.mutates() {
            let line = format!(
                "{:>9.3}s {:?} {}",
                self.started.elapsed().as_secs_f64(),
                op,
                paths.join(" -> ")
            );
            if g.trace.len() == TRACE_LEN {
                g.trace.pop_front();
            }
            g.trace.push_back(line);
        }
        match action {
            Some(Action::Cut { when: When::Before }) => {
                g.power = Power::Frozen;
                g.trigger = Some(format!(
                    "rule {fired_by}: {op:?} {} (before)",
                    paths.join(" -> ")
                ));
                self.changed.notify_all();
                self.wait_dead(g)
            }
            Some(Action::DelayMs { ms }) => {
                drop(g);
                std::thread::sleep(Duration::from_millis(ms));
                Verdict::Go(None)
            }
            a => Verdict::Go(a),
        }
    }

    /// Cuts the power after an operation happened (`Cut { when: After }`), then
    /// waits like every other operation.
    fn freeze_after(&self, what: String) {
        let mut g = self.lock();
        if g.power == Power::On {
            g.power = Power::Frozen;
            g.trigger = Some(what);
            self.changed.notify_all();
        }
        let _ = self.wait_dead(g);
    }

    pub fn cut(&self, why: &str) {
        let mut g = self.lock();
        if g.power == Power::On {
            g.power = Power::Frozen;
            g.trigger = Some(why.to_string());
            self.changed.notify_all();
        }
    }

    /// Waits for a cut; returns its trigger.
    pub fn wait_cut(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while g.power == Power::On {
            let left = deadline.checked_duration_since(Instant::now())?;
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        g.trigger.clone()
    }

    pub fn power_off(&self) {
        let mut g = self.lock();
        g.power = Power::Off;
        self.changed.notify_all();
    }

    /// What cut the power, once it is cut.
    pub fn trigger(&self) -> Option<String> {
        let g = self.lock();
        (g.power != Power::On).then(|| g.trigger.clone()).flatten()
    }

    pub fn arm(&self, rule: Rule) -> u64 {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.rules.push(Armed {
            id,
            rule,
            matched: 0,
        });
        id
    }

    pub fn disarm(&self, id: Option<u64>) {
        let mut g = self.lock();
        g.rules.retain(|a| id.is_some_and(|i| i != a.id));
    }

    pub fn rules(&self) -> Vec<(u64, Rule, u64)> {
        self.lock()
            .rules
            .iter()
            .map(|a| (a.id, a.rule.clone(), a.matched))
            .collect()
    }

    pub fn trace(&self, last: usize) -> Vec<String> {
        let g = self.lock();
        let skip = g.trace.len().saturating_sub(last);
        g.trace.iter().skip(skip).cloned().collect()
    }
}

/// A directory's entries as (name, inode, kind).
type Listing = Vec<(std::ffi::OsString, u64, Kind)>;

pub(crate) struct FaultFs {
    disk: Arc<Mutex<Disk>>,
    gate: Arc<Gate>,
    /// Directory listings taken at opendir, by handle.
    listings: Mutex<HashMap<u64, Listing>>,
    next_dir_handle: Mutex<u64>,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Other => FileType::Socket,
    }
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

impl FaultFs {
    pub fn new(disk: Arc<Mutex<Disk>>, gate: Arc<Gate>) -> Self {
        Self {
            disk,
            gate,
            listings: Mutex::new(HashMap::new()),
            next_dir_handle: Mutex::new(1),
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes the gate, then runs `f` on the model. Rule errors are answered here
    /// (except for `fsync` and `write`, whose bodies apply them).
    fn run<T>(
        &self,
        op: Op,
        paths: &[String],
        f: impl FnOnce(&mut Disk, Option<&Action>) -> std::io::Result<T>,
    ) -> Result<T, Errno> {
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let action = match self.gate.check(op, &refs) {
            Verdict::Dead => return Err(Errno::EIO),
            Verdict::Go(a) => a,
        };
        if let Some(Action::Error { errno: code, .. }) = &action {
            if op != Op::Fsync {
                return Err(Errno::from_i32(*code));
            }
        }
        let r = f(&mut self.disk(), action.as_ref());
        if matches!(action, Some(Action::Cut { when: When::After })) {
            self.gate
                .freeze_after(format!("{op:?} {} (after)", refs.join(" -> ")));
            return Err(Errno::EIO);
        }
        r.map_err(errno)
    }

    fn rel(&self, ino: INodeNo) -> String {
        self.disk().rel(ino.0)
    }

    fn rel_child(&self, parent: INodeNo, name: &OsStr) -> String {
        self.disk().rel_child(parent.0, name)
    }
}

impl Filesystem for FaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = self.rel_child(parent, name);
        match self.run(Op::Lookup, &[p], |d, _| d.lookup(parent.0, name)) {
            Ok(a) => reply.entry(&TTL, &fattr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let p = self.rel(ino);
        match self.run(Op::Getattr, &[p], |d, _| d.getattr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &fattr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let p = self.rel(ino);
        if let Some(size) = size {
            if let Err(e) = self.run(Op::Truncate, std::slice::from_ref(&p), |d, _| {
                d.truncate(ino.0, size)
            }) {
                return reply.error(e);
            }
        }
        if let Some(mode) = mode {
            if let Err(e) = self.disk().chmod(ino.0, mode) {
                return reply.error(errno(e));
            }
        }
        match self.run(Op::Getattr, &[p], |d, _| d.getattr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &fattr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let p = self.rel(ino);
        match self.run(Op::Lookup, &[p], |d, _| d.readlink(ino.0)) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let p = self.rel_child(parent, name);
        match self.run(Op::Mknod, &[p], |d, _| {
            d.mknod(parent.0, name, mode & !umask, rdev)
        }) {
            Ok(a) => reply.entry(&TTL, &fattr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let p = self.rel_child(parent, name);
        match self.run(Op::Mkdir, &[p], |d, _| {
            d.mkdir(parent.0, name, mode & !umask)
        }) {
            Ok(a) => reply.entry(&TTL, &fattr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = self.rel_child(parent, name);
        match self.run(Op::Unlink, &[p], |d, _| d.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = self.rel_child(parent, name);
        match self.run(Op::Rmdir, &[p], |d, _| d.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let p = self.rel_child(parent, link_name);
        match self.run(Op::Symlink, &[p], |d, _| {
            d.symlink(parent.0, link_name, target)
        }) {
            Ok(a) => reply.entry(&TTL, &fattr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let from = self.rel_child(parent, name);
        let to = self.rel_child(newparent, newname);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self.run(Op::Rename, &[from, to], |d, _| {
            d.rename(parent.0, name, newparent.0, newname, noreplace)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Hard links are not modelled.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let p = self.rel(ino);
        match self.run(Op::Open, &[p], |d, _| d.open(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let p = self.rel(ino);
        match self.run(Op::Read, &[p], |d, _| d.read(ino.0, offset, size)) {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let p = self.rel(ino);
        match self.run(Op::Write, &[p], |d, a| match a {
            Some(Action::Short { bytes }) => {
                let n = (*bytes as usize).min(data.len());
                d.write(ino.0, offset, &data[..n])
            }
            _ => d.write(ino.0, offset, data),
        }) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Always let go of the handle, even with the power off (the process is gone).
        let _ = self.disk().release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let p = self.rel(ino);
        match self.run(Op::Fsync, &[p], |d, a| match a {
            Some(Action::Error { errno, lose }) => d.fsync(ino.0, Some((*errno, *lose))),
            _ => d.fsync(ino.0, None),
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let p = self.rel(ino);
        match self.run(Op::Readdir, &[p], |d, _| d.readdir(ino.0)) {
            Ok(entries) => {
                let mut n = self.next_dir_handle.lock().unwrap();
                let fh = *n;
                *n += 1;
                self.listings.lock().unwrap().insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listings = self.listings.lock().unwrap();
        let Some(entries) = listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let dots = [
            (std::ffi::OsString::from("."), ino.0, Kind::Dir),
            (std::ffi::OsString::from(".."), ino.0, Kind::Dir),
        ];
        for (i, (name, child, kind)) in dots
            .iter()
            .chain(entries.iter())
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(*child), (i + 1) as u64, file_type(*kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let p = self.rel(ino);
        match self.run(Op::Fsyncdir, &[p], |d, _| d.fsyncdir(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run(Op::Statfs, &[String::new()], |d, _| d.statfs()) {
            Ok((blocks, bfree, bavail)) => {
                reply.statfs(blocks, bfree, bavail, 1 << 20, 1 << 20, 4096, 255, 4096)
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let p = self.rel_child(parent, name);
        let exclusive = flags & libc::O_EXCL != 0;
        match self.run(Op::Create, &[p], |d, _| {
            d.create(parent.0, name, mode & !umask, exclusive)
        }) {
            Ok((a, fh)) => reply.created(
                &TTL,
                &fattr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let p = self.rel(ino);
        match self.run(Op::Fallocate, &[p], |d, _| {
            d.fallocate(ino.0, offset, length, mode)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
