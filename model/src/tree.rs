//! One in-memory file tree: an image layer, a container's writable layer, or a whole
//! filesystem (devicemapper). Names map to inode numbers; hard links are several names of one
//! inode. Whiteouts and opaque directories are stored abstractly; each driver's encoding
//! (`.wh.` files, char 0:0, xattrs) is applied only when its on-disk layout is rendered.

use crate::data::FileData;
use crate::step::Kind;
use std::collections::BTreeMap;

/// An inode number inside one tree.
pub type Ino = u64;

/// The root directory's inode number in every tree.
pub const ROOT: Ino = 1;

/// Where a copied-up inode came from: a layer of the container's lower stack and the inode
/// there. Overlayfs keeps the lower inode's number for copied-up files (OVL6) and reads a
/// metacopy file's data from it (OVL3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// Index in the lower stack, 0 = lowest.
    pub layer: usize,
    /// Inode in that layer.
    pub ino: Ino,
}

/// What an inode holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A directory.
    Dir {
        /// Children by name.
        children: BTreeMap<String, Ino>,
        /// Hides the lower layers' entries below this directory.
        opaque: bool,
        /// overlayfs `redirect_dir`: the lower directory this one continues, as the kernel
        /// writes it: a bare name when renamed within its parent, else an absolute path.
        redirect: Option<String>,
    },
    /// A regular file.
    File {
        /// The contents; shared until written.
        data: FileData,
        /// overlayfs metacopy: only metadata was copied up; the data is still the origin's.
        metacopy: bool,
    },
    /// A symbolic link.
    Symlink(String),
    /// A whiteout: the name is deleted for the layers below.
    Whiteout,
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Permission bits.
    pub mode: u32,
    /// Extended attributes visible to users (`user.*`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Contents.
    pub body: Body,
    /// Number of names.
    pub nlink: u32,
    /// The lower inode this one was copied up from.
    pub origin: Option<Origin>,
    /// Held by something other than a name (overlayfs `work/index`, AUFS pseudo-links):
    /// not freed when its last name goes.
    pub pinned: bool,
    /// overlayfs `trusted.overlay.impure`: this upper directory may hold entries that were
    /// copied up or moved in, so readdir must look up their real inode numbers. Set by the
    /// kernel and never cleared.
    pub impure: bool,
    /// Monotonic change counter, bumped on every change of this inode's data, metadata or
    /// entries; Docker's change walker compares it in place of mtime.
    pub version: u64,
    /// The modification time, as the model tells times apart: 0 for what a layer applier
    /// wrote (every layer entry has the same time, the epoch, `Store` docs), a time a
    /// `utimes` set ([`secs_time`]), else the tick of the store's clock at which a
    /// container made the inode, changed its data or its entries ([`tick_time`]; copy-up
    /// keeps it, as the kernel does). Docker's naive change walker compares it.
    pub mtime: u64,
    /// The owner (`st_uid`).
    pub uid: u32,
    /// The group (`st_gid`).
    pub gid: u32,
}

/// Where the model's "now" starts: a step's time is later than any `utimes` sets.
const NOW: u64 = 1 << 62;

/// The modification time the store's clock tick `tick` gives.
pub fn tick_time(tick: u64) -> u64 {
    NOW + tick
}

/// The modification time `secs` seconds after the epoch, in nanoseconds (a real
/// `st_mtim` as one number). `secs` is below [`MAX_UTIME`].
pub fn secs_time(secs: u64) -> u64 {
    secs.min(MAX_UTIME) * 1_000_000_000
}

/// The largest time a `utimes` step gives, in seconds (the year 2286, 10^10 s).
pub const MAX_UTIME: u64 = 9_999_999_999;

impl Inode {
    /// The file type.
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Dir { .. } => Kind::Dir,
            Body::File { .. } => Kind::File,
            Body::Symlink(_) => Kind::Symlink,
            Body::Whiteout => Kind::Char,
        }
    }

    /// Whether this is a whiteout.
    pub fn is_whiteout(&self) -> bool {
        matches!(self.body, Body::Whiteout)
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir { .. })
    }

    /// Children, for a directory.
    pub fn children(&self) -> Option<&BTreeMap<String, Ino>> {
        match &self.body {
            Body::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    /// Whether this directory is opaque.
    pub fn is_opaque(&self) -> bool {
        matches!(self.body, Body::Dir { opaque: true, .. })
    }

    /// The file size as `st_size` shows it (symlink: target length; dirs: 0 here).
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File { data, .. } => data.len(),
            Body::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }
}

/// A file tree with its inode table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    inodes: BTreeMap<Ino, Inode>,
    next: Ino,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// A tree holding only its root directory (mode 0o755).
    pub fn new() -> Tree {
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, new_inode(0o755, empty_dir(false)));
        Tree {
            inodes,
            next: ROOT + 1,
        }
    }

    /// The inode `ino`. Panics if it does not exist: inode numbers only come from this tree.
    pub fn get(&self, ino: Ino) -> &Inode {
        &self.inodes[&ino]
    }

    /// The inode `ino`, mutably; bumps its change counter.
    pub fn get_mut(&mut self, ino: Ino) -> &mut Inode {
        let inode = self.inodes.get_mut(&ino).expect("inode of this tree");
        inode.version += 1;
        inode
    }

    /// Sets the modification time of `ino` (a change of ctime only: not counted in
    /// `version`).
    pub fn set_mtime(&mut self, ino: Ino, mtime: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.mtime = mtime;
        }
    }

    /// Every inode, in number order.
    pub fn inodes(&self) -> impl Iterator<Item = (Ino, &Inode)> {
        self.inodes.iter().map(|(i, n)| (*i, n))
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: Ino, name: &str) -> Option<Ino> {
        self.get(dir).children().and_then(|c| c.get(name).copied())
    }

    /// Allocates an inode with no names yet.
    pub fn alloc(&mut self, inode: Inode) -> Ino {
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(ino, Inode { nlink: 0, ..inode });
        ino
    }

    /// Adds the name `name` for `ino` in `dir`, replacing (and releasing) what was there.
    pub fn attach(&mut self, dir: Ino, name: &str, ino: Ino) {
        let old = match &mut self.get_mut(dir).body {
            Body::Dir { children, .. } => children.insert(name.to_string(), ino),
            _ => panic!("attach into a non-directory"),
        };
        self.get_mut(ino).nlink += 1;
        if let Some(old) = old {
            self.release(old);
        }
    }

    /// Removes the name `name` from `dir` and returns the inode it named.
    pub fn detach(&mut self, dir: Ino, name: &str) -> Option<Ino> {
        let old = match &mut self.get_mut(dir).body {
            Body::Dir { children, .. } => children.remove(name),
            _ => None,
        }?;
        self.release(old);
        Some(old)
    }

    /// Moves a name without changing link counts (rename within this tree).
    pub fn move_entry(&mut self, from_dir: Ino, from: &str, to_dir: Ino, to: &str) {
        let ino = match &mut self.get_mut(from_dir).body {
            Body::Dir { children, .. } => children.remove(from).expect("source of move"),
            _ => panic!("move out of a non-directory"),
        };
        let old = match &mut self.get_mut(to_dir).body {
            Body::Dir { children, .. } => children.insert(to.to_string(), ino),
            _ => panic!("move into a non-directory"),
        };
        if let Some(old) = old {
            self.release(old);
        }
    }

    /// Swaps what two names point at (`rename(RENAME_EXCHANGE)`); both must exist.
    pub fn exchange(&mut self, a_dir: Ino, a: &str, b_dir: Ino, b: &str) {
        let ia = self.child(a_dir, a).expect("first name of exchange");
        let ib = self.child(b_dir, b).expect("second name of exchange");
        for (dir, name, ino) in [(a_dir, a, ib), (b_dir, b, ia)] {
            if let Body::Dir { children, .. } = &mut self.get_mut(dir).body {
                children.insert(name.to_string(), ino);
            }
        }
    }

    /// Drops one name of `ino`; frees it (and a directory's subtree) at zero.
    fn release(&mut self, ino: Ino) {
        let inode = self.inodes.get_mut(&ino).expect("released inode exists");
        inode.nlink = inode.nlink.saturating_sub(1);
        if inode.nlink == 0 && !inode.pinned {
            let inode = self.inodes.remove(&ino).expect("present");
            if let Body::Dir { children, .. } = inode.body {
                for (_, child) in children {
                    self.release(child);
                }
            }
        }
    }

    /// Looks up an absolute, already-resolved path (no symlinks followed).
    pub fn lookup(&self, path: &str) -> Option<Ino> {
        let mut cur = ROOT;
        for name in crate::path::components(path) {
            cur = self.child(cur, name)?;
        }
        Some(cur)
    }

    /// Depth-first walk: `(path, ino)` for every name below `dir`, parents before children,
    /// siblings in name order. Hard-linked inodes appear once per name.
    pub fn walk(&self, dir: Ino, prefix: &str, out: &mut Vec<(String, Ino)>) {
        if let Some(children) = self.get(dir).children() {
            for (name, &ino) in children {
                let path = crate::path::join(prefix, name);
                out.push((path.clone(), ino));
                self.walk(ino, &path, out);
            }
        }
    }

    /// Every `(path, ino)` in the tree, root excluded.
    pub fn paths(&self) -> Vec<(String, Ino)> {
        let mut out = Vec::new();
        self.walk(ROOT, "/", &mut out);
        out
    }

    /// Whether the tree holds nothing but its root.
    pub fn is_empty(&self) -> bool {
        self.get(ROOT).children().is_none_or(|c| c.is_empty())
    }
}

/// An inode with no xattrs, no origin and no names.
pub fn new_inode(mode: u32, body: Body) -> Inode {
    Inode {
        mode,
        xattrs: BTreeMap::new(),
        body,
        nlink: 0,
        origin: None,
        pinned: false,
        impure: false,
        version: 0,
        mtime: 0,
        uid: 0,
        gid: 0,
    }
}

/// An empty directory body.
pub fn empty_dir(opaque: bool) -> Body {
    Body::Dir {
        children: BTreeMap::new(),
        opaque,
        redirect: None,
    }
}

/// A regular-file body.
pub fn file_body(data: FileData) -> Body {
    Body::File {
        data,
        metacopy: false,
    }
}
