//! The disk model: a backing directory that always holds the *current* view of the
//! filesystem, plus exactly what is needed to turn it back into the *durable* view
//! when the power goes.
//!
//! - **File data.** The first write to a 4 KiB page since the file's last `fsync`
//!   saves the page's previous bytes (`saved`); an `fsync`/`fdatasync` of the file
//!   forgets them and records the size as durable. A power cut writes the saved
//!   pages back and truncates to the durable size — or, in torn mode, keeps a
//!   seeded random subset of the new pages and possibly the new size (the kernel may
//!   have written some dirty pages back, in any order, and journaled the size).
//! - **Directory entries.** Every create, mkdir, mknod, symlink, rename, unlink and
//!   rmdir is applied to the backing directory at once and logged as pending. An
//!   `fsync` of a directory commits the pending operations that touch it (with the
//!   earlier operations on the same inodes they depend on, so a rename across two
//!   directories commits atomically) into the durable tree. A power cut rebuilds the
//!   backing directory from the durable tree: unsynced creations vanish, unsynced
//!   unlinks and renames are undone. Unlinked files are kept in a graveyard
//!   (`.faultfs/grave/<ino>`) until no durable entry can bring them back.
//! - **Failed fsync.** With `lose`, the file's unsynced pages are dropped from the
//!   disk while reads keep returning them ("ghost" pages, as Linux's page cache keeps
//!   pages it marked clean after a failed writeback) until the next power cycle or a
//!   write to the page.
//! - **Bad sectors**: reads overlapping a listed range fail with EIO (mapped pages too:
//!   the process gets SIGBUS). **Full disk**: space is counted in 4 KiB blocks
//!   (`fallocate` reserves); past `limit`, writes are short, then fail with ENOSPC.
//!
//! The model is the filesystem minus FUSE: `fs.rs` translates kernel requests into
//! these calls, and the unit tests call them directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

pub type Ino = u64;
pub const ROOT: Ino = 1;
pub const PAGE: u64 = 4096;
/// faultfs's own directory inside the backing directory (hidden from the mount).
pub const INTERNAL: &str = ".faultfs";

/// How unsynced writes survive a power cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Torn {
    /// Every unsynced write is lost: files go back to their last synced bytes.
    #[default]
    None,
    /// Each unsynced page survives with probability `keep_percent`, independently
    /// (so a later page can survive without an earlier one), and a grown file keeps
    /// its new size half of the time (the rest of it reads as zeros).
    Pages { keep_percent: u8 },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Options {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub torn: Torn,
    /// Bytes the filesystem holds; `None`: the backing filesystem's own space.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// A range of a file whose reads fail with EIO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRange {
    /// Glob over the path relative to the mount root.
    pub path: String,
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Other,
}

impl Kind {
    fn of(md: &fs::Metadata) -> Self {
        use std::os::unix::fs::FileTypeExt;
        let t = md.file_type();
        if t.is_file() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Other
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Loc {
    Root,
    Named { parent: Ino, name: OsString },
    Grave,
}

/// Undo state of a regular file since its last successful sync.
#[derive(Debug, Default)]
struct Undo {
    durable_size: u64,
    /// Page index → its bytes as of the last sync (shorter than a page at the end
    /// of the file, empty beyond it).
    saved: BTreeMap<u64, Vec<u8>>,
    /// Pages a failed fsync dropped from the disk that reads still return.
    ghost: BTreeMap<u64, Vec<u8>>,
    /// The size reads see while ghost pages exist (the disk's may differ).
    ghost_size: Option<u64>,
}

struct Node {
    kind: Kind,
    loc: Loc,
    mode: u32,
    /// Open handles (files) from the kernel.
    open: u32,
    undo: Undo,
    /// Blocks counted against the limit, in bytes.
    alloc: u64,
    /// End of space reserved by `fallocate(KEEP_SIZE)`.
    prealloc_end: u64,
    /// faultfs's own handle on the backing file (files only), opened on first use.
    file: Option<File>,
}

/// A namespace operation not yet made durable by an fsync of its directory.
#[derive(Clone, Debug)]
enum NsOp {
    Link {
        parent: Ino,
        name: OsString,
        ino: Ino,
        dir: bool,
    },
    Unlink {
        parent: Ino,
        name: OsString,
        ino: Ino,
    },
    Rename {
        from: (Ino, OsString),
        to: (Ino, OsString),
        ino: Ino,
        replaced: Option<Ino>,
    },
}

impl NsOp {
    fn touches(&self, dir: Ino) -> bool {
        match self {
            NsOp::Link { parent, .. } | NsOp::Unlink { parent, .. } => *parent == dir,
            NsOp::Rename { from, to, .. } => from.0 == dir || to.0 == dir,
        }
    }

    fn inos(&self) -> Vec<Ino> {
        match self {
            NsOp::Link { ino, .. } | NsOp::Unlink { ino, .. } => vec![*ino],
            NsOp::Rename { ino, replaced, .. } => {
                let mut v = vec![*ino];
                v.extend(*replaced);
                v
            }
        }
    }
}

/// What survived in the durable tree: directory → entries, and where each inode is.
#[derive(Default)]
struct Durable {
    children: HashMap<Ino, BTreeMap<OsString, Ino>>,
    loc: HashMap<Ino, (Ino, OsString)>,
}

impl Durable {
    fn apply(&mut self, op: &NsOp) {
        match op {
            NsOp::Link {
                parent,
                name,
                ino,
                dir,
            } => {
                if let Some(old) = self
                    .children
                    .entry(*parent)
                    .or_default()
                    .insert(name.clone(), *ino)
                {
                    if old != *ino {
                        self.loc.remove(&old);
                    }
                }
                self.loc.insert(*ino, (*parent, name.clone()));
                if *dir {
                    self.children.entry(*ino).or_default();
                }
            }
            NsOp::Unlink { parent, name, ino } => {
                self.remove_entry(*parent, name, *ino);
            }
            NsOp::Rename {
                from,
                to,
                ino,
                replaced: _,
            } => {
                self.remove_entry(from.0, &from.1, *ino);
                if let Some(old) = self
                    .children
                    .entry(to.0)
                    .or_default()
                    .insert(to.1.clone(), *ino)
                {
                    if old != *ino {
                        self.loc.remove(&old);
                    }
                }
                self.loc.insert(*ino, to.clone());
            }
        }
    }

    fn remove_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        if let Some(c) = self.children.get_mut(&parent) {
            if c.get(name) == Some(&ino) {
                c.remove(name);
            }
        }
        if self
            .loc
            .get(&ino)
            .is_some_and(|(p, n)| *p == parent && n == name)
        {
            self.loc.remove(&ino);
        }
    }
}

/// Attributes of a node as the mount shows them.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub blocks: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub atime: std::time::SystemTime,
    pub mtime: std::time::SystemTime,
    pub ctime: std::time::SystemTime,
}

/// What a power cut did, for the test that caused it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutReport {
    /// Files whose content went back (some or all of it).
    pub files: Vec<FileCut>,
    /// Paths that existed before the cut and not after (unsynced creations/renames).
    pub vanished: Vec<String>,
    /// Paths that exist after the cut and did not before (unsynced unlinks/renames).
    pub restored: Vec<String>,
    /// The rule or command that cut the power.
    #[serde(default)]
    pub trigger: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCut {
    pub path: String,
    pub durable_size: u64,
    pub size_before: u64,
    pub size_after: u64,
    /// Unsynced pages written back to their synced content.
    pub pages_reverted: u64,
    /// Unsynced pages that survived (torn mode).
    pub pages_kept: u64,
}

/// Counters, for `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub nodes: usize,
    pub used_bytes: u64,
    pub limit: Option<u64>,
    pub unsynced_pages: u64,
    pub pending_dir_ops: usize,
    pub writes: u64,
    pub fsyncs: u64,
    pub fsyncdirs: u64,
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Reads as many bytes as the file has at `offset` into `buf`; returns how many.
fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

pub struct Disk {
    root: PathBuf,
    nodes: HashMap<Ino, Node>,
    by_backing: HashMap<u64, Ino>,
    next_ino: Ino,
    handles: HashMap<u64, Ino>,
    next_fh: u64,
    durable: Durable,
    pending: Vec<NsOp>,
    used: u64,
    limit: Option<u64>,
    bad: Vec<BadRange>,
    torn: Torn,
    rng: Rng,
    stats: Stats,
}

impl Disk {
    /// Takes over `root` as the disk: everything in it now is durable.
    pub fn load(root: &Path, opts: &Options) -> io::Result<Self> {
        let root = root.canonicalize()?;
        let internal = root.join(INTERNAL);
        if internal.exists() {
            fs::remove_dir_all(&internal)?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(internal.join("grave"))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(internal.join("stage"))?;
        let md = fs::metadata(&root)?;
        let mut d = Self {
            root,
            nodes: HashMap::new(),
            by_backing: HashMap::new(),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            durable: Durable::default(),
            pending: Vec::new(),
            used: 0,
            limit: opts.limit,
            bad: Vec::new(),
            torn: opts.torn,
            rng: Rng::new(opts.seed),
            stats: Stats::default(),
        };
        d.nodes.insert(
            ROOT,
            Node {
                kind: Kind::Dir,
                loc: Loc::Root,
                mode: md.mode(),
                open: 0,
                undo: Undo::default(),
                alloc: 0,
                prealloc_end: 0,
                file: None,
            },
        );
        d.by_backing.insert(md.ino(), ROOT);
        d.durable.children.insert(ROOT, BTreeMap::new());
        d.load_dir(ROOT)?;
        Ok(d)
    }

    fn load_dir(&mut self, dir: Ino) -> io::Result<()> {
        let path = self.path(dir);
        let mut names: Vec<OsString> = fs::read_dir(&path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            if dir == ROOT && name == INTERNAL {
                continue;
            }
            let md = fs::symlink_metadata(path.join(&name))?;
            let ino = self.register(
                &md,
                Loc::Named {
                    parent: dir,
                    name: name.clone(),
                },
            );
            let kind = Kind::of(&md);
            self.durable.apply(&NsOp::Link {
                parent: dir,
                name,
                ino,
                dir: kind == Kind::Dir,
            });
            if kind == Kind::Dir {
                self.load_dir(ino)?;
            }
        }
        Ok(())
    }

    fn register(&mut self, md: &fs::Metadata, loc: Loc) -> Ino {
        if let Some(&ino) = self.by_backing.get(&md.ino()) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if n.loc != Loc::Grave {
                    n.loc = loc;
                }
            }
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let kind = Kind::of(md);
        let mut node = Node {
            kind,
            loc,
            mode: md.mode(),
            open: 0,
            undo: Undo {
                durable_size: md.len(),
                ..Default::default()
            },
            alloc: 0,
            prealloc_end: 0,
            file: None,
        };
        node.alloc = Self::alloc_of(kind, md.len(), md.blocks() * 512);
        self.used += node.alloc;
        self.nodes.insert(ino, node);
        self.by_backing.insert(md.ino(), ino);
        ino
    }

    fn alloc_of(kind: Kind, size: u64, prealloc_end: u64) -> u64 {
        match kind {
            Kind::File => round_up(size.max(prealloc_end)),
            Kind::Dir => PAGE,
            _ => 0,
        }
    }

    // ---- paths ----------------------------------------------------------------

    fn grave_path(&self, ino: Ino) -> PathBuf {
        self.root.join(INTERNAL).join("grave").join(ino.to_string())
    }

    fn stage_path(&self, ino: Ino) -> PathBuf {
        self.root.join(INTERNAL).join("stage").join(ino.to_string())
    }

    /// Where a node is in the backing directory now.
    fn path(&self, ino: Ino) -> PathBuf {
        match self.nodes.get(&ino).map(|n| &n.loc) {
            Some(Loc::Root) | None => self.root.clone(),
            Some(Loc::Grave) => self.grave_path(ino),
            Some(Loc::Named { parent, name }) => self.path(*parent).join(name),
        }
    }

    /// The path relative to the mount root, for rules and reports (`<unlinked>` for
    /// a file in the graveyard).
    pub fn rel(&self, ino: Ino) -> String {
        fn go(d: &Disk, ino: Ino, out: &mut Vec<String>) -> bool {
            match d.nodes.get(&ino).map(|n| &n.loc) {
                Some(Loc::Root) => true,
                Some(Loc::Named { parent, name }) => {
                    let ok = go(d, *parent, out);
                    out.push(name.to_string_lossy().into_owned());
                    ok
                }
                _ => false,
            }
        }
        let mut parts = Vec::new();
        if go(self, ino, &mut parts) {
            parts.join("/")
        } else {
            format!("<unlinked {ino}>")
        }
    }

    /// `rel` of a child that may not exist yet.
    pub fn rel_child(&self, parent: Ino, name: &OsStr) -> String {
        let p = self.rel(parent);
        let n = name.to_string_lossy();
        if p.is_empty() {
            n.into_owned()
        } else {
            format!("{p}/{n}")
        }
    }

    pub fn rel_of_handle(&self, fh: u64) -> Option<String> {
        self.handles.get(&fh).map(|&i| self.rel(i))
    }

    fn node(&self, ino: Ino) -> io::Result<&Node> {
        self.nodes.get(&ino).ok_or_else(|| err(libc::ENOENT))
    }

    fn node_mut(&mut self, ino: Ino) -> io::Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or_else(|| err(libc::ENOENT))
    }

    fn check_name(parent: Ino, name: &OsStr) -> io::Result<()> {
        if parent == ROOT && name == INTERNAL {
            return Err(err(libc::EPERM));
        }
        if name.is_empty() || name.as_bytes().contains(&b'/') {
            return Err(err(libc::EINVAL));
        }
        Ok(())
    }

    /// faultfs's own read-write handle on a file's backing bytes.
    fn file(&mut self, ino: Ino) -> io::Result<&File> {
        let path = self.path(ino);
        let node = self.node_mut(ino)?;
        if node.kind != Kind::File {
            return Err(err(libc::EISDIR));
        }
        if node.file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .or_else(|_| File::open(&path))?;
            node.file = Some(f);
        }
        Ok(node.file.as_ref().unwrap())
    }

    fn backing_size(&mut self, ino: Ino) -> io::Result<u64> {
        Ok(self.file(ino)?.metadata()?.len())
    }

    /// The size reads see.
    fn visible_size(&mut self, ino: Ino) -> io::Result<u64> {
        let b = self.backing_size(ino)?;
        Ok(self.node(ino)?.undo.ghost_size.unwrap_or(b))
    }

    fn live(n: &Node) -> bool {
        n.loc != Loc::Grave || n.open > 0
    }

    /// Re-counts a node's blocks after a change.
    fn recount(&mut self, ino: Ino) -> io::Result<()> {
        let (kind, pre) = {
            let n = self.node(ino)?;
            (n.kind, n.prealloc_end)
        };
        let size = if kind == Kind::File {
            self.backing_size(ino)?
        } else {
            0
        };
        let n = self.node_mut(ino)?;
        let new = Self::alloc_of(kind, size, pre);
        let old = std::mem::replace(&mut n.alloc, new);
        if Self::live(n) {
            self.used = (self.used + new).saturating_sub(old);
        }
        Ok(())
    }

    fn space_left(&self) -> u64 {
        self.limit.map_or(u64::MAX, |l| l.saturating_sub(self.used))
    }

    // ---- lookups and attributes -----------------------------------------------

    pub fn lookup(&mut self, parent: Ino, name: &OsStr) -> io::Result<Attr> {
        if parent == ROOT && name == INTERNAL {
            return Err(err(libc::ENOENT));
        }
        let path = self.path(parent).join(name);
        let md = fs::symlink_metadata(&path)?;
        let ino = self.register(
            &md,
            Loc::Named {
                parent,
                name: name.to_os_string(),
            },
        );
        self.attr_from(ino, &md)
    }

    pub fn getattr(&mut self, ino: Ino) -> io::Result<Attr> {
        let md = fs::symlink_metadata(self.path(ino))?;
        self.attr_from(ino, &md)
    }

    fn attr_from(&mut self, ino: Ino, md: &fs::Metadata) -> io::Result<Attr> {
        let kind = Kind::of(md);
        let size = if kind == Kind::File {
            self.visible_size(ino)?
        } else {
            md.len()
        };
        let t = |s: i64, ns: i64| {
            std::time::UNIX_EPOCH + std::time::Duration::new(s.max(0) as u64, ns.max(0) as u32)
        };
        Ok(Attr {
            ino,
            kind,
            size,
            blocks: md.blocks(),
            mode: md.mode(),
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            atime: t(md.atime(), md.atime_nsec()),
            mtime: t(md.mtime(), md.mtime_nsec()),
            ctime: t(md.ctime(), md.ctime_nsec()),
        })
    }

    pub fn chmod(&mut self, ino: Ino, mode: u32) -> io::Result<()> {
        let path = self.path(ino);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        self.node_mut(ino)?.mode = mode;
        Ok(())
    }

    pub fn readlink(&mut self, ino: Ino) -> io::Result<PathBuf> {
        fs::read_link(self.path(ino))
    }

    /// Entries of a directory: (name, inode, kind).
    pub fn readdir(&mut self, dir: Ino) -> io::Result<Vec<(OsString, Ino, Kind)>> {
        let path = self.path(dir);
        let mut names: Vec<OsString> = fs::read_dir(&path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if dir == ROOT && name == INTERNAL {
                continue;
            }
            if let Ok(a) = self.lookup(dir, &name) {
                out.push((name, a.ino, a.kind));
            }
        }
        Ok(out)
    }

    pub fn statfs(&self) -> io::Result<(u64, u64, u64)> {
        match self.limit {
            Some(l) => {
                let free = l.saturating_sub(self.used) / PAGE;
                Ok((l / PAGE, free, free))
            }
            None => {
                let st = unsafe {
                    let mut st: libc::statvfs = std::mem::zeroed();
                    let c = std::ffi::CString::new(self.root.as_os_str().as_bytes()).unwrap();
                    if libc::statvfs(c.as_ptr(), &mut st) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    st
                };
                let f = st.f_frsize.max(1);
                Ok((
                    st.f_blocks * f / PAGE,
                    st.f_bfree * f / PAGE,
                    st.f_bavail * f / PAGE,
                ))
            }
        }
    }

    // ---- namespace --------------------------------------------------------------

    fn need_inode_space(&self) -> io::Result<()> {
        if self.space_left() < PAGE {
            return Err(err(libc::ENOSPC));
        }
        Ok(())
    }

    fn linked(&mut self, parent: Ino, name: &OsStr, path: &Path) -> io::Result<Attr> {
        let md = fs::symlink_metadata(path)?;
        let ino = self.register(
            &md,
            Loc::Named {
                parent,
                name: name.to_os_string(),
            },
        );
        let kind = Kind::of(&md);
        self.pending.push(NsOp::Link {
            parent,
            name: name.to_os_string(),
            ino,
            dir: kind == Kind::Dir,
        });
        self.attr_from(ino, &md)
    }

    /// Creates (and opens) a regular file; returns its attributes and a handle.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        exclusive: bool,
    ) -> io::Result<(Attr, u64)> {
        Self::check_name(parent, name)?;
        let path = self.path(parent).join(name);
        if let Ok(md) = fs::symlink_metadata(&path) {
            if exclusive {
                return Err(err(libc::EEXIST));
            }
            let ino = self.register(
                &md,
                Loc::Named {
                    parent,
                    name: name.to_os_string(),
                },
            );
            let fh = self.open(ino)?;
            return Ok((self.attr_from(ino, &md)?, fh));
        }
        self.need_inode_space()?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&path)?;
        let attr = self.linked(parent, name, &path)?;
        let fh = self.open(attr.ino)?;
        Ok((attr, fh))
    }

    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, mode: u32) -> io::Result<Attr> {
        Self::check_name(parent, name)?;
        self.need_inode_space()?;
        let path = self.path(parent).join(name);
        fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        let a = self.linked(parent, name, &path)?;
        self.durable.children.entry(a.ino).or_default();
        Ok(a)
    }

    pub fn mknod(&mut self, parent: Ino, name: &OsStr, mode: u32, rdev: u32) -> io::Result<Attr> {
        Self::check_name(parent, name)?;
        self.need_inode_space()?;
        let path = self.path(parent).join(name);
        let c =
            std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| err(libc::EINVAL))?;
        if unsafe { libc::mknod(c.as_ptr(), mode, rdev as libc::dev_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.linked(parent, name, &path)
    }

    pub fn symlink(&mut self, parent: Ino, name: &OsStr, target: &Path) -> io::Result<Attr> {
        Self::check_name(parent, name)?;
        self.need_inode_space()?;
        let path = self.path(parent).join(name);
        std::os::unix::fs::symlink(target, &path)?;
        self.linked(parent, name, &path)
    }

    fn child(&mut self, parent: Ino, name: &OsStr) -> io::Result<Ino> {
        Ok(self.lookup(parent, name)?.ino)
    }

    /// Moves a node to the graveyard (it stays until nothing durable refers to it).
    fn bury(&mut self, ino: Ino) -> io::Result<()> {
        let from = self.path(ino);
        let to = self.grave_path(ino);
        fs::rename(&from, &to)?;
        let n = self.node_mut(ino)?;
        n.loc = Loc::Grave;
        let (open, alloc) = (n.open, n.alloc);
        if open == 0 {
            self.used = self.used.saturating_sub(alloc);
        }
        Ok(())
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> io::Result<()> {
        Self::check_name(parent, name)?;
        let ino = self.child(parent, name)?;
        if self.node(ino)?.kind == Kind::Dir {
            return Err(err(libc::EISDIR));
        }
        self.bury(ino)?;
        self.pending.push(NsOp::Unlink {
            parent,
            name: name.to_os_string(),
            ino,
        });
        self.collect(ino);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> io::Result<()> {
        Self::check_name(parent, name)?;
        let ino = self.child(parent, name)?;
        if self.node(ino)?.kind != Kind::Dir {
            return Err(err(libc::ENOTDIR));
        }
        if fs::read_dir(self.path(ino))?.next().is_some() {
            return Err(err(libc::ENOTEMPTY));
        }
        self.bury(ino)?;
        self.pending.push(NsOp::Unlink {
            parent,
            name: name.to_os_string(),
            ino,
        });
        Ok(())
    }

    fn is_ancestor(&self, a: Ino, mut b: Ino) -> bool {
        loop {
            if a == b {
                return true;
            }
            match self.nodes.get(&b).map(|n| &n.loc) {
                Some(Loc::Named { parent, .. }) => b = *parent,
                _ => return false,
            }
        }
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> io::Result<()> {
        Self::check_name(parent, name)?;
        Self::check_name(newparent, newname)?;
        let ino = self.child(parent, name)?;
        let kind = self.node(ino)?.kind;
        if kind == Kind::Dir && self.is_ancestor(ino, newparent) {
            return Err(err(libc::EINVAL));
        }
        let replaced = match self.lookup(newparent, newname) {
            Ok(a) if a.ino == ino => return Ok(()),
            Ok(a) => {
                if noreplace {
                    return Err(err(libc::EEXIST));
                }
                match (kind == Kind::Dir, a.kind == Kind::Dir) {
                    (true, false) => return Err(err(libc::ENOTDIR)),
                    (false, true) => return Err(err(libc::EISDIR)),
                    (true, true) if fs::read_dir(self.path(a.ino))?.next().is_some() => {
                        return Err(err(libc::ENOTEMPTY));
                    }
                    _ => {}
                }
                Some(a.ino)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        if let Some(r) = replaced {
            self.bury(r)?;
        }
        let from = self.path(ino);
        let to = self.path(newparent).join(newname);
        if let Err(e) = fs::rename(&from, &to) {
            if let Some(r) = replaced {
                // Put the victim back.
                let _ = fs::rename(self.grave_path(r), &to);
                let _ = self.node_mut(r).map(|n| {
                    n.loc = Loc::Named {
                        parent: newparent,
                        name: newname.to_os_string(),
                    }
                });
            }
            return Err(e);
        }
        self.node_mut(ino)?.loc = Loc::Named {
            parent: newparent,
            name: newname.to_os_string(),
        };
        self.pending.push(NsOp::Rename {
            from: (parent, name.to_os_string()),
            to: (newparent, newname.to_os_string()),
            ino,
            replaced,
        });
        if let Some(r) = replaced {
            self.collect(r);
        }
        Ok(())
    }

    /// Deletes a buried node for good once nothing durable or open refers to it.
    fn collect(&mut self, ino: Ino) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if n.loc != Loc::Grave || n.open > 0 || self.durable.loc.contains_key(&ino) {
            return;
        }
        let path = self.grave_path(ino);
        let res = if n.kind == Kind::Dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if res.is_ok() {
            self.nodes.remove(&ino);
            self.by_backing.retain(|_, v| *v != ino);
        }
    }

    /// An `fsync` of directory `dir`: its pending entry changes become durable.
    pub fn fsyncdir(&mut self, dir: Ino) -> io::Result<()> {
        self.stats.fsyncdirs += 1;
        let n = self.pending.len();
        let mut take = vec![false; n];
        for (i, op) in self.pending.iter().enumerate() {
            take[i] = op.touches(dir);
        }
        // Earlier operations on the same inodes come along (a rename needs its
        // file's creation), until nothing more is pulled in.
        loop {
            let mut changed = false;
            for i in (0..n).rev() {
                if !take[i] {
                    continue;
                }
                let inos = self.pending[i].inos();
                for (j, earlier) in self.pending[..i].iter().enumerate() {
                    if !take[j] && earlier.inos().iter().any(|x| inos.contains(x)) {
                        take[j] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut keep = Vec::new();
        let mut committed = Vec::new();
        for (op, t) in self.pending.drain(..).zip(take) {
            if t {
                committed.push(op);
            } else {
                keep.push(op);
            }
        }
        self.pending = keep;
        for op in &committed {
            self.durable.apply(op);
        }
        for op in committed {
            for ino in op.inos() {
                self.collect(ino);
            }
        }
        Ok(())
    }

    // ---- file data ----------------------------------------------------------------

    pub fn open(&mut self, ino: Ino) -> io::Result<u64> {
        let n = self.node_mut(ino)?;
        n.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, ino);
        Ok(fh)
    }

    pub fn handle(&self, fh: u64) -> io::Result<Ino> {
        self.handles
            .get(&fh)
            .copied()
            .ok_or_else(|| err(libc::EBADF))
    }

    pub fn release(&mut self, fh: u64) -> io::Result<()> {
        let Some(ino) = self.handles.remove(&fh) else {
            return Ok(());
        };
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
            if n.open == 0 && n.loc == Loc::Grave {
                self.used = self.used.saturating_sub(n.alloc);
                n.file = None;
            }
        }
        self.collect(ino);
        Ok(())
    }

    fn bad_overlap(&self, rel: &str, off: u64, end: u64) -> Option<BadRange> {
        self.bad
            .iter()
            .find(|b| off < b.offset + b.len && b.offset < end && crate::rules::glob(&b.path, rel))
            .cloned()
    }

    pub fn read(&mut self, ino: Ino, off: u64, size: u32) -> io::Result<Vec<u8>> {
        let vis = self.visible_size(ino)?;
        if off >= vis {
            return Ok(Vec::new());
        }
        let end = (off + size as u64).min(vis);
        let rel = self.rel(ino);
        if self.bad_overlap(&rel, off, end).is_some() {
            return Err(err(libc::EIO));
        }
        let mut buf = vec![0u8; (end - off) as usize];
        read_full_at(self.file(ino)?, &mut buf, off)?;
        let undo = &self.node(ino)?.undo;
        for (&p, g) in undo.ghost.range(off / PAGE..=(end - 1) / PAGE) {
            let (ps, pe) = (p * PAGE, p * PAGE + PAGE);
            let (s, e) = (ps.max(off), pe.min(end));
            for x in s..e {
                let i = (x - ps) as usize;
                buf[(x - off) as usize] = g.get(i).copied().unwrap_or(0);
            }
        }
        Ok(buf)
    }

    /// Saves a page's synced bytes before its first change since the last sync.
    fn capture(&mut self, ino: Ino, page: u64) -> io::Result<()> {
        if self.node(ino)?.undo.saved.contains_key(&page) {
            return Ok(());
        }
        let mut buf = vec![0u8; PAGE as usize];
        let n = read_full_at(self.file(ino)?, &mut buf, page * PAGE)?;
        buf.truncate(n);
        self.node_mut(ino)?.undo.saved.insert(page, buf);
        Ok(())
    }

    fn capture_range(&mut self, ino: Ino, from: u64, to: u64) -> io::Result<()> {
        if to <= from {
            return Ok(());
        }
        for p in from / PAGE..to.div_ceil(PAGE) {
            self.capture(ino, p)?;
        }
        Ok(())
    }

    /// Makes the disk's size agree with what reads see before it changes again.
    fn settle_ghost_size(&mut self, ino: Ino) -> io::Result<()> {
        let Some(vis) = self.node(ino)?.undo.ghost_size else {
            return Ok(());
        };
        let disk = self.backing_size(ino)?;
        if vis != disk {
            self.capture_range(ino, vis.min(disk), vis.max(disk))?;
            self.file(ino)?.set_len(vis)?;
        }
        self.node_mut(ino)?.undo.ghost_size = None;
        Ok(())
    }

    /// Writes at `off`; returns the bytes written (short when the disk is full).
    pub fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> io::Result<usize> {
        self.stats.writes += 1;
        self.settle_ghost_size(ino)?;
        let size = self.backing_size(ino)?;
        let pre = self.node(ino)?.prealloc_end;
        let have = round_up(size.max(pre));
        let end = off + data.len() as u64;
        let mut len = data.len();
        if round_up(end) > have {
            let room = have.saturating_add(self.space_left() / PAGE * PAGE);
            if room <= off {
                return Err(err(libc::ENOSPC));
            }
            len = len.min((room - off) as usize);
        }
        let data = &data[..len];
        let end = off + len as u64;
        self.capture_range(ino, off, end)?;
        let mut at = off;
        while at < end {
            let p = at / PAGE;
            let page_end = ((p + 1) * PAGE).min(end);
            let chunk = &data[(at - off) as usize..(page_end - off) as usize];
            let ghost = self.node_mut(ino)?.undo.ghost.remove(&p);
            match ghost {
                Some(mut g) => {
                    // The page cache held the ghost bytes: the write changes part
                    // of that page, and the whole page is dirty again.
                    let lo = (at - p * PAGE) as usize;
                    let hi = lo + chunk.len();
                    if g.len() < hi {
                        g.resize(hi, 0);
                    }
                    g[lo..hi].copy_from_slice(chunk);
                    self.file(ino)?.write_all_at(&g, p * PAGE)?;
                }
                None => self.file(ino)?.write_all_at(chunk, at)?,
            }
            at = page_end;
        }
        self.recount(ino)?;
        Ok(len)
    }

    pub fn truncate(&mut self, ino: Ino, new: u64) -> io::Result<()> {
        self.settle_ghost_size(ino)?;
        let cur = self.backing_size(ino)?;
        if new > cur {
            let pre = self.node(ino)?.prealloc_end;
            let need = round_up(new).saturating_sub(round_up(cur.max(pre)));
            if need > self.space_left() {
                return Err(err(libc::ENOSPC));
            }
        }
        self.capture_range(ino, new.min(cur), new.max(cur))?;
        self.file(ino)?.set_len(new)?;
        let undo = &mut self.node_mut(ino)?.undo;
        undo.ghost.retain(|&p, _| p * PAGE < new);
        if let Some((&p, g)) = undo.ghost.iter_mut().next_back() {
            let keep = (new - p * PAGE).min(PAGE) as usize;
            g.truncate(keep);
        }
        self.recount(ino)
    }

    pub fn fallocate(&mut self, ino: Ino, off: u64, len: u64, mode: i32) -> io::Result<()> {
        let end = off + len;
        let size = self.backing_size(ino)?;
        let content = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if content {
            self.capture_range(ino, off, end.min(size.max(end)))?;
        } else {
            let pre = self.node(ino)?.prealloc_end;
            let need = round_up(end).saturating_sub(round_up(size.max(pre)));
            if need > self.space_left() {
                return Err(err(libc::ENOSPC));
            }
            if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size {
                self.capture_range(ino, size, end)?;
            }
        }
        let fd = {
            use std::os::fd::AsRawFd;
            self.file(ino)?.as_raw_fd()
        };
        if unsafe { libc::fallocate(fd, mode, off as i64, len as i64) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if !content && mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
            let n = self.node_mut(ino)?;
            n.prealloc_end = n.prealloc_end.max(end);
        }
        for p in off / PAGE..end.div_ceil(PAGE) {
            self.node_mut(ino)?.undo.ghost.remove(&p);
        }
        self.recount(ino)
    }

    /// An `fsync`/`fdatasync` of a file. `fail = Some((errno, lose))` makes it fail;
    /// with `lose`, the unsynced pages leave the disk (reads still see them).
    pub fn fsync(&mut self, ino: Ino, fail: Option<(i32, bool)>) -> io::Result<()> {
        if self.node(ino)?.kind != Kind::File {
            return Ok(());
        }
        self.stats.fsyncs += 1;
        match fail {
            None => {
                let size = self.backing_size(ino)?;
                let undo = &mut self.node_mut(ino)?.undo;
                undo.saved.clear();
                undo.durable_size = size;
                Ok(())
            }
            Some((errno, false)) => Err(err(errno)),
            Some((errno, true)) => {
                let size = self.backing_size(ino)?;
                let vis = self.node(ino)?.undo.ghost_size.unwrap_or(size);
                let saved = std::mem::take(&mut self.node_mut(ino)?.undo.saved);
                for (p, orig) in saved {
                    let mut cur = vec![0u8; PAGE as usize];
                    let n = read_full_at(self.file(ino)?, &mut cur, p * PAGE)?;
                    cur.truncate(n);
                    let mut back = orig;
                    back.resize(PAGE as usize, 0);
                    self.file(ino)?.write_all_at(&back, p * PAGE)?;
                    self.node_mut(ino)?.undo.ghost.insert(p, cur);
                }
                let durable = self.node(ino)?.undo.durable_size;
                self.file(ino)?.set_len(durable)?;
                let undo = &mut self.node_mut(ino)?.undo;
                undo.ghost_size = (vis != durable).then_some(vis);
                self.recount(ino)?;
                Err(err(errno))
            }
        }
    }

    // ---- faults ------------------------------------------------------------------

    pub fn add_bad(&mut self, b: BadRange) {
        self.bad.push(b);
    }

    pub fn clear_bad(&mut self) {
        self.bad.clear();
    }

    pub fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.nodes = self.nodes.len();
        s.used_bytes = self.used;
        s.limit = self.limit;
        s.unsynced_pages = self.nodes.values().map(|n| n.undo.saved.len() as u64).sum();
        s.pending_dir_ops = self.pending.len();
        s
    }

    /// Forgets every open handle (the process that held them is gone).
    pub fn drop_handles(&mut self) {
        let fhs: Vec<u64> = self.handles.keys().copied().collect();
        for fh in fhs {
            let _ = self.release(fh);
        }
    }

    // ---- power cut ---------------------------------------------------------------

    /// The power goes: the backing directory becomes what was durable. Call only
    /// while nothing uses the mount (it is unmounted, or frozen).
    pub fn power_cut(&mut self) -> io::Result<CutReport> {
        self.drop_handles();
        let before = self.current_files();
        let mut report = CutReport::default();
        // 1. File data, in inode order (reproducible for a seed and a history).
        let mut files: Vec<Ino> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::File)
            .map(|(&i, _)| i)
            .collect();
        files.sort_unstable();
        for ino in files {
            let size = self.backing_size(ino)?;
            let (durable, saved, changed) = {
                let u = &mut self.node_mut(ino)?.undo;
                u.ghost.clear();
                u.ghost_size = None;
                let changed = !u.saved.is_empty() || size != u.durable_size;
                (u.durable_size, std::mem::take(&mut u.saved), changed)
            };
            if !changed {
                continue;
            }
            let torn = match self.torn {
                Torn::None => None,
                Torn::Pages { keep_percent } => Some(keep_percent),
            };
            let final_size = match torn {
                Some(_) if size > durable && self.rng.below(2) == 0 => size,
                _ => durable,
            };
            let (mut reverted, mut kept) = (0, 0);
            for (p, orig) in saved {
                let keep = torn.is_some_and(|k| self.rng.below(100) < k as u64);
                if keep {
                    kept += 1;
                    continue;
                }
                reverted += 1;
                let mut back = orig;
                back.resize(PAGE as usize, 0);
                self.file(ino)?.write_all_at(&back, p * PAGE)?;
            }
            self.file(ino)?.set_len(final_size)?;
            report.files.push(FileCut {
                path: self.rel(ino),
                durable_size: durable,
                size_before: size,
                size_after: final_size,
                pages_reverted: reverted,
                pages_kept: kept,
            });
        }
        for n in self.nodes.values_mut() {
            n.file = None;
        }
        // 2. The durable tree, from the root (first place wins if the per-directory
        // history left an inode in two).
        let mut target: Vec<(Ino, PathBuf)> = Vec::new();
        let mut seen = BTreeSet::from([ROOT]);
        let mut stack = vec![(ROOT, PathBuf::new())];
        while let Some((dir, at)) = stack.pop() {
            let Some(children) = self.durable.children.get(&dir) else {
                continue;
            };
            for (name, &ino) in children {
                if !self.nodes.contains_key(&ino) || !seen.insert(ino) {
                    continue;
                }
                let rel = at.join(name);
                if self.nodes[&ino].kind == Kind::Dir {
                    stack.push((ino, rel.clone()));
                }
                target.push((ino, rel));
            }
        }
        target.sort_by_key(|(_, p)| p.components().count());
        // 3. Stage everything that survives, 4. clear the rest, 5. rebuild.
        for (ino, _) in &target {
            if self.nodes[ino].kind != Kind::Dir {
                fs::rename(self.path(*ino), self.stage_path(*ino))?;
            }
        }
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            if e.file_name() == INTERNAL {
                continue;
            }
            if e.file_type()?.is_dir() {
                fs::remove_dir_all(e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
        }
        let grave = self.root.join(INTERNAL).join("grave");
        fs::remove_dir_all(&grave)?;
        fs::DirBuilder::new().mode(0o700).create(&grave)?;
        for (ino, rel) in &target {
            let to = self.root.join(rel);
            let node = &self.nodes[ino];
            if node.kind == Kind::Dir {
                fs::DirBuilder::new().mode(node.mode & 0o7777).create(&to)?;
            } else {
                fs::rename(self.stage_path(*ino), &to)?;
            }
        }
        let after: BTreeSet<String> = target
            .iter()
            .filter(|(i, _)| self.nodes[i].kind != Kind::Dir)
            .map(|(_, p)| p.to_string_lossy().into_owned())
            .collect();
        report.vanished = before.difference(&after).cloned().collect();
        report.restored = after.difference(&before).cloned().collect();
        // The disk is now exactly the durable state: start over from it.
        let opts = Options {
            seed: self.rng.next(),
            torn: self.torn,
            limit: self.limit,
        };
        let bad = std::mem::take(&mut self.bad);
        *self = Disk::load(&self.root.clone(), &opts)?;
        self.bad = bad;
        Ok(report)
    }

    fn current_files(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.kind != Kind::Dir && n.loc != Loc::Grave)
            .map(|(&i, _)| self.rel(i))
            .collect()
    }
}

#[cfg(test)]
mod tests;
