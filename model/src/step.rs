//! The language both sides speak: layers to build, steps to run, values steps return.

use crate::errno::Errno;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Identifies an image layer (a directory name in Docker's layout).
pub type LayerId = String;
/// Identifies a container (its writable layer's directory name).
pub type ContainerId = String;

/// What kind of file an entry or a merged path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    Char,
    /// A block device.
    Block,
}

impl Kind {
    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Char => "char",
            Kind::Block => "block",
        }
    }
}

/// File contents as a scenario states them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// `len` deterministic pseudo-random bytes, seeded by `seed` (see [`crate::pseudo_random`]).
    Random {
        /// Number of bytes.
        len: u64,
        /// Seed of the generator.
        seed: u64,
    },
}

impl Content {
    /// The bytes themselves, all in memory: for small contents only (a writer streams
    /// with [`Content::fill`]).
    pub fn materialize(&self) -> Vec<u8> {
        match self {
            Content::Bytes(b) => b.clone(),
            Content::Random { len, seed } => crate::digest::pseudo_random(*seed, *len as usize),
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Random { len, .. } => *len,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` bytes (all of them when there are fewer).
    pub fn prefix(&self, n: u64) -> Content {
        match self {
            Content::Bytes(b) => Content::Bytes(b[..n.min(b.len() as u64) as usize].to_vec()),
            Content::Random { len, seed } => Content::Random {
                len: n.min(*len),
                seed: *seed,
            },
        }
    }

    /// Fills `out` with bytes `pos..pos + out.len()`; the caller keeps them within
    /// [`Content::len`].
    pub fn fill(&self, pos: u64, out: &mut [u8]) {
        match self {
            Content::Bytes(b) => out.copy_from_slice(&b[pos as usize..pos as usize + out.len()]),
            Content::Random { seed, .. } => crate::digest::pseudo_random_at(*seed, pos, out),
        }
    }
}

/// What an image-layer entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File(Content),
    /// A directory; `opaque` hides everything below it in lower layers.
    Dir {
        /// Whether the directory is opaque.
        opaque: bool,
    },
    /// A symbolic link with this target.
    Symlink(String),
    /// A hard link to an entry listed earlier in the same layer.
    HardLink(String),
    /// A whiteout: removes the name from the layers below.
    Whiteout,
}

/// One entry of an image layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path inside the image.
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits; `None` means the default (0o644 files, 0o755 dirs, 0o777 symlinks).
    pub mode: Option<u32>,
    /// Extended attributes (`user.*`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Owner and group, when not root's (`uid`, `gid` in a scenario's entry; a commit keeps
    /// a file's, as Docker's tar does).
    pub owner: Option<(u32, u32)>,
}

/// An image layer: its id, its parent and the changes it makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// The layer id.
    pub id: LayerId,
    /// The parent layer, if any.
    pub parent: Option<LayerId>,
    /// The changes, in file order.
    pub entries: Vec<Entry>,
}

/// The flags of an `open` step: the access mode and the flags that change what `open(2)`
/// does to the file (the ones that only change later I/O, such as `O_SYNC`, are left out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// `O_WRONLY` or `O_RDWR`: the file is opened for writing (default: `O_RDONLY`).
    pub write: bool,
    /// `O_RDWR` (with `write`): for reading too.
    pub read_write: bool,
    /// `O_CREAT`.
    pub creat: bool,
    /// `O_EXCL`.
    pub excl: bool,
    /// `O_TRUNC`.
    pub trunc: bool,
    /// `O_APPEND`.
    pub append: bool,
    /// `O_NOFOLLOW`.
    pub nofollow: bool,
    /// `O_DIRECTORY`.
    pub directory: bool,
}

impl OpenFlags {
    /// The flags by their C names, in a fixed order (`["O_WRONLY", "O_CREAT"]`).
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec![match (self.write, self.read_write) {
            (true, true) => "O_RDWR",
            (true, false) => "O_WRONLY",
            _ => "O_RDONLY",
        }];
        for (on, name) in [
            (self.creat, "O_CREAT"),
            (self.excl, "O_EXCL"),
            (self.trunc, "O_TRUNC"),
            (self.append, "O_APPEND"),
            (self.nofollow, "O_NOFOLLOW"),
            (self.directory, "O_DIRECTORY"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }

    /// Sets the flag with C name `name`; `false` for a name that is not one of them.
    pub fn set(&mut self, name: &str) -> bool {
        match name {
            "O_RDONLY" => {}
            "O_WRONLY" => self.write = true,
            "O_RDWR" => (self.write, self.read_write) = (true, true),
            "O_CREAT" => self.creat = true,
            "O_EXCL" => self.excl = true,
            "O_TRUNC" => self.trunc = true,
            "O_APPEND" => self.append = true,
            "O_NOFOLLOW" => self.nofollow = true,
            "O_DIRECTORY" => self.directory = true,
            _ => return false,
        }
        true
    }

    /// The flag names [`OpenFlags::set`] knows.
    pub const NAMES: [&'static str; 9] = [
        "O_RDONLY",
        "O_WRONLY",
        "O_RDWR",
        "O_CREAT",
        "O_EXCL",
        "O_TRUNC",
        "O_APPEND",
        "O_NOFOLLOW",
        "O_DIRECTORY",
    ];
}

/// A file-level operation on a container's merged view.
#[allow(missing_docs)] // the fields are the system call's arguments
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// `open(path, O_CREAT|O_EXCL|O_WRONLY, mode)`.
    Create { path: String, mode: Option<u32> },
    /// `open(path, flags, mode)` and `close`: the general form.
    Open {
        path: String,
        flags: OpenFlags,
        mode: Option<u32>,
    },
    /// `open(path, O_WRONLY)` and `pwrite` at `offset` (no `O_CREAT`: make files with `create`).
    Write {
        path: String,
        offset: u64,
        data: Content,
    },
    /// `open(path, O_WRONLY|O_APPEND)` and `write`.
    Append { path: String, data: Vec<u8> },
    /// `truncate(path, size)`.
    Truncate { path: String, size: u64 },
    /// `open(path, O_RDONLY)` and `pread`; `len = None` reads to the end.
    Read {
        path: String,
        offset: u64,
        len: Option<u64>,
    },
    /// `unlink(path)`.
    Unlink { path: String },
    /// `mkdir(path, mode)`.
    Mkdir { path: String, mode: Option<u32> },
    /// `rmdir(path)`.
    Rmdir { path: String },
    /// `rename(from, to)`.
    Rename { from: String, to: String },
    /// `link(from, to)`.
    Link { from: String, to: String },
    /// `symlink(target, path)`.
    Symlink { target: String, path: String },
    /// `readlink(path)`.
    Readlink { path: String },
    /// `chmod(path, mode)`.
    Chmod { path: String, mode: u32 },
    /// `utimensat(AT_FDCWD, path, {atime, mtime}, 0)`: sets both times, in whole seconds,
    /// following a symlink as `utimes(2)` does.
    Utimes {
        path: String,
        atime: u64,
        mtime: u64,
    },
    /// `chown(path, uid, gid)`, following a symlink; `None` leaves that id as it is (-1).
    Chown {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// `op` run by another user: the step's thread takes `cred`'s uid and gid (real,
    /// effective, filesystem) with no supplementary groups and no capabilities, as a
    /// process of that user in the container would.
    AsUser { cred: Cred, op: Box<FileOp> },
    /// `lstat(path)`.
    Stat { path: String },
    /// `opendir` + `readdir`, names sorted, without `.` and `..`.
    Readdir { path: String },
    /// `setxattr(path, name, value)`.
    Setxattr {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    /// `getxattr(path, name)`.
    Getxattr { path: String, name: String },
    /// `removexattr(path, name)`.
    Removexattr { path: String, name: String },
}

/// Who runs a step that is not root's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Cred {
    /// User id.
    pub uid: u32,
    /// Group id (the only group: no supplementary groups).
    pub gid: u32,
}

/// One step of a trace, as the model and the real drivers execute it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A file operation on a container (`None`: the most recently created one).
    File {
        /// The container acted on.
        container: Option<ContainerId>,
        /// The operation.
        op: FileOp,
    },
    /// Create a container on an image layer (or on an empty image).
    CreateContainer {
        /// New container id.
        id: ContainerId,
        /// Top image layer.
        image: Option<LayerId>,
    },
    /// Unmount and remove a container and its writable layer.
    RemoveContainer {
        /// The container.
        id: ContainerId,
    },
    /// Turn a container's changes into a new image layer on top of its image.
    Commit {
        /// The container.
        container: Option<ContainerId>,
        /// The new layer's id.
        layer: LayerId,
    },
    /// Unmount and mount again.
    Remount {
        /// The container.
        container: Option<ContainerId>,
    },
    /// Docker's change list of a container.
    Changes {
        /// The container.
        container: Option<ContainerId>,
    },
}

/// `lstat` as scenarios compare it.
#[derive(Clone, Debug, Serialize)]
pub struct StatInfo {
    /// File type.
    pub kind: Kind,
    /// `st_size` (for directories: filesystem-specific, not compared by the harness).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// `st_nlink`.
    pub nlink: u32,
    /// `st_uid`.
    pub uid: u32,
    /// `st_gid`.
    pub gid: u32,
    /// `st_dev`, `st_ino` and `st_mtime`, which only relation checks compare (each side with
    /// itself): they are never equal between the model and a kernel, so `==` leaves them out.
    #[serde(skip)]
    pub id: Identity,
}

impl PartialEq for StatInfo {
    fn eq(&self, o: &StatInfo) -> bool {
        (
            self.kind, self.size, self.mode, self.nlink, self.uid, self.gid,
        ) == (o.kind, o.size, o.mode, o.nlink, o.uid, o.gid)
    }
}

impl Eq for StatInfo {}

/// What `stat` says of an inode's identity and age. The model's values are its own names
/// for inodes, devices and times: only whether two of them are equal means anything, and
/// the kernel's values give the same equalities (`check` with `stat` and `like`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_mtime` in nanoseconds since the epoch.
    pub mtime: u64,
}

impl Identity {
    /// The field `name` (`dev`, `ino`, `mtime`), or `None` for a name it does not have.
    pub fn field(&self, name: &str) -> Option<u64> {
        match name {
            "dev" => Some(self.dev),
            "ino" => Some(self.ino),
            "mtime" => Some(self.mtime),
            _ => None,
        }
    }

    /// The names [`Identity::field`] knows.
    pub const FIELDS: [&'static str; 3] = ["dev", "ino", "mtime"];
}

/// One line of Docker's change list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    /// Path in the container.
    pub path: String,
    /// `A`, `C` or `D`.
    pub kind: ChangeKind,
}

/// Docker's change kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ChangeKind {
    /// Added.
    A,
    /// Changed.
    C,
    /// Deleted.
    D,
}

/// What a successful step returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Nothing.
    Unit,
    /// Bytes read or an xattr value.
    Bytes(Vec<u8>),
    /// A `read` of more than [`crate::SPARSE_DIGEST_MIN`] bytes: their digest text,
    /// `sparse:<len>:<hex>` ([`crate::ContentHasher::text`]), in place of the bytes.
    Digest(String),
    /// A symlink target.
    Target(String),
    /// `lstat` result.
    Stat(StatInfo),
    /// Directory entries, sorted.
    Names(Vec<String>),
    /// Docker's change list, sorted by path.
    Changes(Vec<Change>),
}

/// The result of one step: a value or an errno.
pub type Outcome = Result<Value, Errno>;

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Unit => f.write_str("ok"),
            Value::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::Digest(d) => write!(f, "{d:?}"),
            Value::Target(t) => write!(f, "{t:?}"),
            Value::Stat(s) => {
                write!(
                    f,
                    "{{ kind = {:?}, size = {}, mode = 0o{:o}, nlink = {}",
                    s.kind.name(),
                    s.size,
                    s.mode,
                    s.nlink
                )?;
                if (s.uid, s.gid) != (0, 0) {
                    write!(f, ", uid = {}, gid = {}", s.uid, s.gid)?;
                }
                f.write_str(" }")
            }
            Value::Names(n) => write!(f, "{n:?}"),
            Value::Changes(c) => {
                f.write_str("[")?;
                for (i, ch) in c.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "[\"{:?}\", {:?}]", ch.kind, ch.path)?;
                }
                f.write_str("]")
            }
        }
    }
}

impl FileOp {
    /// The operation itself, without who runs it ([`FileOp::AsUser`]).
    pub fn bare(&self) -> &FileOp {
        match self {
            FileOp::AsUser { op, .. } => op.bare(),
            op => op,
        }
    }

    /// Whether the operation can take pages of the upper filesystem: it writes data, copies
    /// a file up (a directory's copy-up takes none) or makes a symlink.
    pub fn may_take_space(&self) -> bool {
        !matches!(
            self.bare(),
            FileOp::Create { .. }
                | FileOp::Unlink { .. }
                | FileOp::Mkdir { .. }
                | FileOp::Rmdir { .. }
        ) && !self.only_reads()
    }

    /// Whether the operation only reads: it takes no space on any filesystem (ext4's
    /// inodes and directory blocks included).
    pub fn only_reads(&self) -> bool {
        matches!(
            self.bare(),
            FileOp::Read { .. }
                | FileOp::Readlink { .. }
                | FileOp::Stat { .. }
                | FileOp::Readdir { .. }
                | FileOp::Getxattr { .. }
        )
    }

    /// The scenario-file name of the operation.
    pub fn name(&self) -> &'static str {
        match self {
            FileOp::Create { .. } => "create",
            FileOp::Open { .. } => "open",
            FileOp::Write { .. } => "write",
            FileOp::Append { .. } => "append",
            FileOp::Truncate { .. } => "truncate",
            FileOp::Read { .. } => "read",
            FileOp::Unlink { .. } => "unlink",
            FileOp::Mkdir { .. } => "mkdir",
            FileOp::Rmdir { .. } => "rmdir",
            FileOp::Rename { .. } => "rename",
            FileOp::Link { .. } => "link",
            FileOp::Symlink { .. } => "symlink",
            FileOp::Readlink { .. } => "readlink",
            FileOp::Chmod { .. } => "chmod",
            FileOp::Utimes { .. } => "utimes",
            FileOp::Chown { .. } => "chown",
            FileOp::AsUser { op, .. } => op.name(),
            FileOp::Stat { .. } => "stat",
            FileOp::Readdir { .. } => "readdir",
            FileOp::Setxattr { .. } => "setxattr",
            FileOp::Getxattr { .. } => "getxattr",
            FileOp::Removexattr { .. } => "removexattr",
        }
    }
}
