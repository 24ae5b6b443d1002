//! File data and attributes: read, write, append, truncate, chmod, stat, readlink, xattrs.
//! Opening for write, truncating, chmod and setxattr copy up (OVL3); reading never does.

use crate::container::{Container, Dentry};
use crate::copy_up::CopyUp;
use crate::errno::Errno;
use crate::namei::Resolved;
use crate::step::{Content, FileOp, Kind, OpenFlags, Outcome, StatInfo, Value};
use crate::tree::{Body, Ino};

/// Longest xattr name (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65536;

impl Container {
    /// Runs one file operation. On error nothing has changed. A file or directory it makes,
    /// and a file whose data it writes or truncates, gets a new modification time.
    pub fn apply(&mut self, op: &FileOp) -> Outcome {
        if let FileOp::AsUser { cred, op } = op {
            let was = self.cred.replace(*cred);
            let out = self.apply(op);
            self.cred = was;
            return out;
        }
        // What the step changes besides its own effect is looked up as the kernel does it,
        // not as the step's user.
        let user = self.cred.take();
        let stamp = match op {
            FileOp::Create { path, .. } | FileOp::Mkdir { path, .. } => Some((path, false)),
            FileOp::Symlink { path, .. } => Some((path, false)),
            FileOp::Write { path, data, .. } if !data.is_empty() => Some((path, true)),
            FileOp::Append { path, data } if !data.is_empty() => Some((path, true)),
            FileOp::Truncate { path, .. } => Some((path, true)),
            FileOp::Open { path, flags, .. }
                if flags.trunc
                    || (flags.creat
                        && self.resolve(path, true).is_ok_and(|r| r.target.is_none())) =>
            {
                Some((path, true))
            }
            _ => None,
        };
        let parents = self.entry_parents(op);
        self.cred = user;
        let out = self.apply_op(op);
        self.cred = None;
        if out.is_ok() && (stamp.is_some() || !parents.is_empty()) {
            self.clock += 1;
            let now = crate::tree::tick_time(self.clock);
            let targets = stamp
                .and_then(|(path, follow)| self.resolve(path, follow).ok())
                .into_iter()
                .chain(parents.iter().filter_map(|p| self.resolve(p, true).ok()));
            let inos: Vec<Ino> = targets
                .filter_map(|r| r.target.and_then(|d| d.upper))
                .collect();
            for ino in inos {
                self.upper.set_mtime(ino, now);
            }
        }
        self.cred = user;
        out
    }

    /// The directories whose entries `op` changes, when it succeeds: each gets a new
    /// modification time, the upper directory's being the one `stat` shows (POSIX; a
    /// copy-up of the directory keeps the lower's time, `ovl_copy_up_metadata`, and a
    /// copy-up below it puts its time back, `ovl_do_copy_up`'s `pstat`).
    fn entry_parents(&self, op: &FileOp) -> Vec<String> {
        let parent = |p: &str| crate::path::parent(p).to_string();
        match op {
            FileOp::Create { path, .. }
            | FileOp::Mkdir { path, .. }
            | FileOp::Symlink { path, .. }
            | FileOp::Unlink { path }
            | FileOp::Rmdir { path } => vec![parent(path)],
            FileOp::Open { path, flags, .. }
                if flags.creat && self.resolve(path, false).is_ok_and(|r| r.target.is_none()) =>
            {
                vec![parent(path)]
            }
            FileOp::Link { to, .. } => vec![parent(to)],
            FileOp::Rename { from, to } if !self.same_inode(from, to) => {
                vec![parent(from), parent(to)]
            }
            _ => Vec::new(),
        }
    }

    /// Whether two names are the same inode: `rename` between them does nothing.
    fn same_inode(&self, a: &str, b: &str) -> bool {
        let (Ok(ra), Ok(rb)) = (self.resolve(a, false), self.resolve(b, false)) else {
            return false;
        };
        match (ra.target, rb.target) {
            _ if ra.path() == rb.path() => true,
            (Some(x), Some(y)) => crate::dir::same_inode(self, x, y),
            _ => false,
        }
    }

    fn apply_op(&mut self, op: &FileOp) -> Outcome {
        match op {
            FileOp::Create { path, mode } => self.create(path, *mode).map(unit),
            FileOp::Open { path, flags, mode } => self.open(path, *flags, *mode).map(unit),
            FileOp::Write { path, offset, data } => self.write(path, Some(*offset), data).map(unit),
            FileOp::Append { path, data } => self
                .write(path, None, &Content::Bytes(data.clone()))
                .map(unit),
            FileOp::Truncate { path, size } => self.truncate(path, *size).map(unit),
            FileOp::Read { path, offset, len } => self.read(path, *offset, *len),
            FileOp::Unlink { path } => self.unlink(path).map(unit),
            FileOp::Mkdir { path, mode } => self.mkdir(path, *mode).map(unit),
            FileOp::Rmdir { path } => self.rmdir(path).map(unit),
            FileOp::Rename { from, to } => self.rename(from, to).map(unit),
            FileOp::Link { from, to } => self.link(from, to).map(unit),
            FileOp::Symlink { target, path } => self.symlink(target, path).map(unit),
            FileOp::Readlink { path } => self.readlink(path).map(Value::Target),
            FileOp::Chmod { path, mode } => self.chmod(path, *mode).map(unit),
            FileOp::Utimes { path, mtime, .. } => self.utimes(path, *mtime).map(unit),
            FileOp::Chown { path, uid, gid } => self.chown(path, *uid, *gid).map(unit),
            FileOp::AsUser { .. } => self.apply(op),
            FileOp::Stat { path } => {
                let d = self.resolve(path, false)?.existing()?;
                // The identity only a `stat` step returns: observations and copy-ups ask
                // `stat` too, and need none of it.
                Ok(Value::Stat(StatInfo {
                    id: self.identity_of(d),
                    ..self.stat(d)
                }))
            }
            FileOp::Readdir { path } => {
                let d = self.resolve(path, true)?.existing()?;
                if self.kind(d) != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                self.permission(self.inode(d), crate::perm::MAY_READ)?;
                let mut names: Vec<String> = self.list(d).into_keys().collect();
                names.extend(self.listed_whiteouts(d));
                names.sort();
                Ok(Value::Names(names))
            }
            FileOp::Setxattr { path, name, value } => {
                self.setxattr(path, name, Some(value)).map(unit)
            }
            FileOp::Getxattr { path, name } => self.getxattr(path, name).map(Value::Bytes),
            FileOp::Removexattr { path, name } => self.setxattr(path, name, None).map(unit),
        }
    }

    /// `lstat` of a dentry, as the merged view shows it (its [`crate::Identity`] left at
    /// the default: see [`Container::identity_of`]).
    pub fn stat(&self, d: Dentry) -> StatInfo {
        let inode = self.inode(d);
        let kind = inode.kind();
        let nlink = match kind {
            Kind::Dir => self.dir_nlink(d),
            _ => self.file_nlink(d),
        };
        StatInfo {
            kind,
            size: inode.size(),
            mode: inode.mode,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            id: Default::default(),
        }
    }

    /// What `stat` of `d` says of its inode's identity ([`crate::Identity`]).
    ///
    /// - `st_dev`: the container's mount's for every file. Docker's layers and upper are
    ///   on one filesystem (overlayfs's `samefs`, `ovl_map_dev_ino`: the overlay's
    ///   `st_dev`); devicemapper's container is one filesystem; AUFS's is its mount's.
    /// - `st_ino`: the real inode's, which is the lower one until a copy-up; after it, the
    ///   lower origin's where the copy holds `trusted.overlay.origin` (`ovl_getattr`: a
    ///   directory, or a file whose lower had one name, or one `index=on` indexed), else
    ///   the copy's. devicemapper never copies (the inode is in the snapshot) and AUFS
    ///   keeps the number across copy-up (its `xino` table): both report the origin's.
    /// - `st_mtime`: that of the inode `stat` reads, the upper one once there is one.
    pub(crate) fn identity_of(&self, d: Dentry) -> crate::step::Identity {
        use std::hash::{Hash, Hasher};
        let hash = |v: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v(&mut h);
            h.finish()
        };
        let lower_id = |layer: usize, ino: Ino| {
            let id = self.lower.layers()[layer].id.as_str();
            hash(&|h| ("lower", id, ino).hash(h))
        };
        let upper_id = |ino: Ino| hash(&|h| ("upper", &self.id, ino).hash(h));
        let ino = match (d.upper, d.lower) {
            (Some(u), _) => match self.upper.get(u).origin {
                Some(o) => lower_id(o.layer, o.ino),
                None => upper_id(u),
            },
            (None, Some(l)) => {
                let n = self.lower.node(l);
                lower_id(n.layer, n.ino)
            }
            (None, None) => 0,
        };
        crate::step::Identity {
            dev: hash(&|h| ("dev", &self.id).hash(h)),
            ino,
            mtime: self.inode(d).mtime,
        }
    }

    /// `st_nlink` of a non-directory: the inode's own count, except for an indexed copy-up,
    /// which counts the lower names not yet copied up too.
    fn file_nlink(&self, d: Dentry) -> u32 {
        let inode = self.inode(d);
        if let (Some(u), Some(o)) = (d.upper, inode.origin) {
            if let Some(e) = self.index.get(&(o.layer, o.ino)) {
                if e.upper == u {
                    let lower = self.lower.layer_inode(o.layer, o.ino).nlink;
                    return lower.saturating_sub(e.names_gone) + inode.nlink;
                }
            }
        }
        if let (None, Some(l), true) = (d.upper, d.lower, self.policy.farm_links) {
            // Every name of it in every layer root of the driver links it.
            let n = self.lower.node(l);
            let key = (self.lower.layers()[n.layer].id.clone(), n.ino);
            return self.farm_roots.get(&key).copied().unwrap_or(inode.nlink);
        }
        inode.nlink
    }

    /// Opens an existing `path` for writing, copying it up with its data.
    fn open_for_write(&mut self, path: &str) -> Result<Ino, Errno> {
        let mut r = self.resolve(path, true)?;
        match r.target {
            Some(d) if self.kind(d) == Kind::Dir => Err(Errno::EISDIR),
            Some(d) => {
                self.permission(self.inode(d), crate::perm::MAY_WRITE)?;
                self.copy_up_resolved(&mut r, d, CopyUp::Data)
            }
            None => Err(Errno::ENOENT),
        }
    }

    fn copy_up_resolved(&mut self, r: &mut Resolved, d: Dentry, how: CopyUp) -> Result<Ino, Errno> {
        match r.name.clone() {
            Some(name) => {
                let (_, d) = self.copy_up_path(&mut r.dirs, &name, d, how)?;
                Ok(d.upper.expect("copied up"))
            }
            None => Ok(crate::tree::ROOT),
        }
    }

    /// `open(2)` and `close` (fs/namei.c `path_openat`, `do_open`; fs/open.c
    /// `build_open_flags`), root's permissions. As measured on 6.18 through overlayfs:
    /// - `O_CREAT|O_DIRECTORY` is EINVAL before any lookup (`build_open_flags`, commit
    ///   43b450632676 "open: return EINVAL for O_DIRECTORY | O_CREAT", 6.4). Not a version
    ///   rule: Debian's 6.1.0-57 guest gives EINVAL too, the change having reached 6.1
    ///   stable (before it, 5.7 to 6.3 made a missing name a file and failed with ENOTDIR);
    /// - `O_CREAT|O_EXCL` is `create` (a symlink, even dangling, is EEXIST); `O_CREAT`
    ///   alone follows a final symlink and makes a missing target; a missing name with a
    ///   trailing `/` is EISDIR;
    /// - `O_NOFOLLOW` on a symlink is ELOOP; `O_DIRECTORY` on a non-directory ENOTDIR;
    /// - a directory opened with `O_CREAT`, for writing or with `O_TRUNC` is EISDIR, read
    ///   only it opens and copies nothing up;
    /// - a file opened for writing is copied up with its data (`ovl_open`,
    ///   `ovl_maybe_copy_up`), even if nothing is written; with `O_TRUNC` (any access mode)
    ///   it is copied up without its data and emptied; read only, nothing is copied up.
    fn open(&mut self, path: &str, flags: OpenFlags, mode: Option<u32>) -> Result<(), Errno> {
        if flags.creat && flags.directory {
            return Err(Errno::EINVAL);
        }
        if flags.creat && flags.excl {
            return self.create(path, mode);
        }
        let mut r = self.resolve(path, !flags.nofollow)?;
        let Some(d) = r.target else {
            if !flags.creat {
                return Err(Errno::ENOENT);
            }
            if r.trailing_slash {
                return Err(Errno::EISDIR);
            }
            return self.create(&r.path(), mode);
        };
        let mask = match (flags.write, flags.read_write) {
            (true, true) => crate::perm::MAY_READ | crate::perm::MAY_WRITE,
            (true, false) => crate::perm::MAY_WRITE,
            _ if flags.trunc => crate::perm::MAY_READ | crate::perm::MAY_WRITE,
            _ => crate::perm::MAY_READ,
        };
        match self.kind(d) {
            Kind::Symlink => Err(Errno::ELOOP),
            Kind::Dir if flags.creat || flags.write || flags.trunc => Err(Errno::EISDIR),
            Kind::Dir => self.permission(self.inode(d), mask),
            _ if flags.directory => Err(Errno::ENOTDIR),
            _ if self.permission(self.inode(d), mask).is_err() => Err(Errno::EACCES),
            Kind::File if flags.trunc => {
                let ino = self.copy_up_resolved(&mut r, d, CopyUp::Trunc)?;
                if let Body::File { data, .. } = &mut self.upper.get_mut(ino).body {
                    data.truncate(0);
                }
                Ok(())
            }
            Kind::File if flags.write => self.copy_up_resolved(&mut r, d, CopyUp::Data).map(drop),
            _ => Ok(()),
        }
    }

    /// `write`: `open(O_WRONLY)` (a copy-up), `lseek` to `offset` and the data in pieces
    /// ([`write_calls`]); `append` when `offset` is `None`: `open(O_WRONLY|O_APPEND)` and the
    /// pieces. What was written before an error stays: the outcome is the error.
    fn write(&mut self, path: &str, offset: Option<u64>, content: &Content) -> Result<(), Errno> {
        let ino = self.open_for_write(path)?;
        let max = self.policy.max_file_size();
        if offset.is_some_and(|o| o > max) {
            // lseek: `vfs_setpos` refuses a position past the real file's `s_maxbytes`.
            return Err(Errno::EINVAL);
        }
        let Body::File { data, .. } = &self.upper.get(ino).body else {
            return Ok(());
        };
        let (at, mut written, mut outcome) = write_calls(offset, content.len(), data.len(), max);
        if let Some(budget) = self.space {
            // Out of pages (blocks): the write stops at the first page it cannot get, and
            // the write loop's next call is ENOSPC (before any EFBIG further on). On ext4 an
            // extent block the grown file needs comes out of the same blocks (writeback
            // allocates it as the filesystem fills: a 1 GiB file on a 1 GiB ext4 lands a
            // block less than was free).
            let mut avail = budget.blocks;
            let mut stop = data.write_stop(at, at + written, avail, crate::space::PAGE);
            if budget.fs == crate::space::SpaceFs::Ext4 {
                for _ in 0..3 {
                    let extra = crate::space::ext4::grown_extent_blocks(data, at, stop, content);
                    let next = budget.blocks.saturating_sub(extra);
                    if next == avail {
                        break;
                    }
                    avail = next;
                    stop = data.write_stop(at, at + written, avail, crate::space::PAGE);
                }
            }
            if stop < at + written {
                written = stop - at;
                outcome = Err(Errno::ENOSPC);
            }
        }
        if written > 0 {
            if let Body::File { data, .. } = &mut self.upper.get_mut(ino).body {
                data.write(at, &content.prefix(written));
            }
        }
        outcome
    }

    /// `truncate(2)`: a negative length is EINVAL before anything (`do_sys_truncate`); else
    /// a full copy-up (`ovl_setattr`: overlayfs's own `s_maxbytes` is `MAX_LFS_FILESIZE`,
    /// so its `setattr_prepare` lets any length through), then the upper filesystem's
    /// `setattr`, whose `inode_newsize_ok` gives EFBIG past its `s_maxbytes`: the file
    /// stays copied up, unchanged (measured on ext4).
    fn truncate(&mut self, path: &str, size: u64) -> Result<(), Errno> {
        if size > crate::params::MAX_LFS_FILESIZE {
            return Err(Errno::EINVAL);
        }
        let ino = self.open_for_write(path)?;
        if size > self.policy.max_file_size() {
            return Err(Errno::EFBIG);
        }
        let accounted = self.space.is_some();
        if let Body::File { data, .. } = &mut self.upper.get_mut(ino).body {
            if accounted {
                data.truncate_keeping_page(size, crate::space::PAGE);
            } else {
                data.truncate(size);
            }
        }
        Ok(())
    }

    /// `pread`: the bytes, or for more than [`crate::SPARSE_DIGEST_MIN`] of them their
    /// digest text ([`Value::Digest`]).
    fn read(&self, path: &str, offset: u64, len: Option<u64>) -> Result<Value, Errno> {
        let d = self.resolve(path, true)?.existing()?;
        self.permission(self.inode(d), crate::perm::MAY_READ)?;
        match &self.inode(d).body {
            // lseek past `s_maxbytes`: EINVAL (see `write`).
            Body::File { .. } if offset > self.policy.max_file_size() => Err(Errno::EINVAL),
            Body::File { data, .. } => {
                let len = len.unwrap_or(u64::MAX);
                let start = offset.min(data.len());
                let n = len.min(data.len() - start);
                if n > crate::digest::SPARSE_DIGEST_MIN {
                    Ok(Value::Digest(data.hasher(start, n).text()))
                } else {
                    Ok(Value::Bytes(data.read(start, n)))
                }
            }
            Body::Dir { .. } => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn readlink(&self, path: &str) -> Result<String, Errno> {
        let d = self.resolve(path, false)?.existing()?;
        match &self.inode(d).body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn chmod(&mut self, path: &str, mode: u32) -> Result<(), Errno> {
        let mut r = self.resolve(path, true)?;
        let d = r.existing()?;
        self.owner_or_capable(self.inode(d))?;
        let mode = self.chmod_mode(self.inode(d), mode & 0o7777);
        let ino = self.copy_up_resolved(&mut r, d, CopyUp::Meta)?;
        let version = self.upper.get(ino).version;
        let inode = self.upper.get_mut(ino);
        inode.mode = mode;
        if inode.is_dir() {
            // chmod changes ctime, not mtime: Docker's walker sees a directory's mode.
            inode.version = version;
        }
        Ok(())
    }

    /// `utimes`: a copy-up (`ovl_setattr`), then the time given. The access time is not
    /// modelled.
    fn utimes(&mut self, path: &str, mtime: u64) -> Result<(), Errno> {
        let mut r = self.resolve(path, true)?;
        let d = r.existing()?;
        // Explicit times need the owner (`setattr_prepare`, `ATTR_TIMES_SET`).
        self.owner_or_capable(self.inode(d))?;
        let ino = self.copy_up_resolved(&mut r, d, CopyUp::Meta)?;
        self.upper.set_mtime(ino, crate::tree::secs_time(mtime));
        Ok(())
    }

    /// `chown`: root's or the owner's keeping the owner ([`Container::may_chown`]), a
    /// copy-up, the new ids; a non-directory loses setuid (and setgid when
    /// group-executable), as `chown_common` asks even of root.
    fn chown(&mut self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
        let mut r = self.resolve(path, true)?;
        let d = r.existing()?;
        self.may_chown(self.inode(d), uid, gid)?;
        let ino = self.copy_up_resolved(&mut r, d, CopyUp::Meta)?;
        let version = self.upper.get(ino).version;
        let inode = self.upper.get_mut(ino);
        inode.uid = uid.unwrap_or(inode.uid);
        inode.gid = gid.unwrap_or(inode.gid);
        inode.mode = Container::chown_mode(inode);
        if inode.is_dir() {
            // A change of owner is ctime's, as chmod is.
            inode.version = version;
        }
        Ok(())
    }

    fn check_xattr_name(&self, name: &str) -> Result<(), Errno> {
        if name.len() > XATTR_NAME_MAX || name.is_empty() {
            return Err(Errno::ERANGE);
        }
        if name.starts_with("trusted.overlay.") && self.policy.driver.is_overlayfs() {
            // overlayfs keeps its own xattrs private.
            return Err(Errno::EPERM);
        }
        if !name.starts_with("user.") {
            // The spec covers the user namespace only.
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(())
    }

    fn getxattr(&self, path: &str, name: &str) -> Result<Vec<u8>, Errno> {
        self.check_xattr_name(name)?;
        let d = self.resolve(path, true)?.existing()?;
        self.may_user_xattr(self.inode(d), false)?;
        if !self.policy.user_xattrs() {
            // tmpfs before 6.6: no handler for the name (`KernelVersion::tmpfs_user_xattrs`).
            return Err(Errno::EOPNOTSUPP);
        }
        self.inode(d)
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Errno::ENODATA)
    }

    /// `setxattr`, or `removexattr` when `value` is `None`.
    fn setxattr(&mut self, path: &str, name: &str, value: Option<&Vec<u8>>) -> Result<(), Errno> {
        self.check_xattr_name(name)?;
        if value.is_some_and(|v| v.len() > XATTR_SIZE_MAX) {
            return Err(Errno::E2BIG);
        }
        let mut r = self.resolve(path, true)?;
        let d = r.existing()?;
        self.may_user_xattr(self.inode(d), true)?;
        if value.is_none() && !self.policy.user_xattrs() {
            // A removal asks the lower file first (6.1 ovl_xattr_set), and tmpfs before 6.6
            // has no handler for the name: EOPNOTSUPP, nothing copied up.
            return Err(Errno::EOPNOTSUPP);
        }
        if value.is_none() && !self.inode(d).xattrs.contains_key(name) {
            // Removing a missing xattr fails before any copy-up.
            return Err(Errno::ENODATA);
        }
        let ino = self.copy_up_resolved(&mut r, d, CopyUp::Meta)?;
        if !self.policy.user_xattrs() {
            // Setting one copies up first and fails on the upper filesystem (6.1
            // ovl_xattr_set: ovl_copy_up, then the upper's setxattr): the file stays up.
            return Err(Errno::EOPNOTSUPP);
        }
        // An xattr changes ctime only: Docker's walker, which compares a directory's size,
        // mode and mtime, does not see it.
        let version = self.upper.get(ino).version;
        let inode = self.upper.get_mut(ino);
        if inode.is_dir() {
            inode.version = version;
        }
        let x = &mut inode.xattrs;
        match value {
            Some(v) => {
                x.insert(name.to_string(), v.clone());
            }
            None => {
                x.remove(name);
            }
        }
        Ok(())
    }
}

fn unit(_: ()) -> Value {
    Value::Unit
}

/// The largest piece a `write` or `append` step hands the kernel in one write loop: the
/// real side streams the data (it may be gigabytes) in pieces of this size, and writes a
/// piece refused for space again page by page (`layerspec-real`'s `write_content`).
pub const WRITE_PIECE: u64 = 1 << 20;

/// What the system calls of a `write` step (`offset` given: after the `lseek`) or an
/// `append` (`None`) do with `len` bytes on a file of `size` bytes whose filesystem's
/// `s_maxbytes` is `max`: where the data goes, how many bytes land, and the outcome.
///
/// The data goes in pieces of [`WRITE_PIECE`] bytes, each with a write loop (a short write
/// is followed by a write of the rest). Each `write(2)`:
/// - `rw_verify_area` (fs/read_write.c): EINVAL when the file position plus the count
///   passes `LLONG_MAX`; the position is the file's `f_pos`, which for `O_APPEND` is 0
///   before the first write and the end of the file after each one;
/// - `generic_write_checks` (mm/filemap.c): an append writes at the end of the file;
///   `generic_write_check_limits`: EFBIG when that position is at or past `max`, else the
///   count is cut to reach `max` at most.
///
/// So a write crossing `max` lands up to it, and the loop's next call fails: EFBIG, or
/// EINVAL where the rest would pass `LLONG_MAX` (tmpfs and xfs, whose `max` is `LLONG_MAX`,
/// give EINVAL for any write that would cross it). Computed in O(1): only the piece holding
/// byte `max` can fail.
pub fn write_calls(
    offset: Option<u64>,
    len: u64,
    size: u64,
    max: u64,
) -> (u64, u64, Result<(), Errno>) {
    let start = offset.unwrap_or(size);
    let llong_max = u128::from(crate::params::MAX_LFS_FILESIZE);
    if len == 0 || u128::from(start) + u128::from(len) <= u128::from(max) {
        return (start, len, Ok(()));
    }
    // The piece holding byte `max` (the first: the data starts at or past `max`).
    let k = max.saturating_sub(start) / WRITE_PIECE;
    let p = start + k * WRITE_PIECE;
    let count = (len - k * WRITE_PIECE).min(WRITE_PIECE);
    let f_pos = if offset.is_none() && k == 0 { 0 } else { p };
    if u128::from(f_pos) + u128::from(count) > llong_max {
        return (start, p - start, Err(Errno::EINVAL));
    }
    if p >= max {
        return (start, p - start, Err(Errno::EFBIG));
    }
    // Cut short at `max`; the loop writes the rest from there.
    let rest = count - (max - p);
    let e = if u128::from(max) + u128::from(rest) > llong_max {
        Errno::EINVAL
    } else {
        Errno::EFBIG
    };
    (start, max - start, Err(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{EXT4_MAX_FILE_SIZE as EXT4, MAX_LFS_FILESIZE as LFS};

    #[test]
    fn write_calls_as_measured() {
        // tmpfs, xfs: a write that would pass LLONG_MAX is refused whole.
        assert_eq!(
            write_calls(Some(LFS), 1, 3, LFS),
            (LFS, 0, Err(Errno::EINVAL))
        );
        assert_eq!(write_calls(Some(LFS - 1), 1, 3, LFS), (LFS - 1, 1, Ok(())));
        assert_eq!(
            write_calls(Some(LFS - 7), 10, 3, LFS),
            (LFS - 7, 0, Err(Errno::EINVAL))
        );
        // An append to a file one byte short of it lands one byte, then EINVAL.
        assert_eq!(
            write_calls(None, 2, LFS - 1, LFS),
            (LFS - 1, 1, Err(Errno::EINVAL))
        );
        // ext4: at the limit EFBIG; across it cut short, then EFBIG.
        assert_eq!(
            write_calls(Some(EXT4), 1, 3, EXT4),
            (EXT4, 0, Err(Errno::EFBIG))
        );
        assert_eq!(
            write_calls(Some(EXT4 - 2), 4, 3, EXT4),
            (EXT4 - 2, 2, Err(Errno::EFBIG))
        );
        assert_eq!(
            write_calls(None, 3, EXT4 - 1, EXT4),
            (EXT4 - 1, 1, Err(Errno::EFBIG))
        );
        assert_eq!(
            write_calls(None, 3, EXT4, EXT4),
            (EXT4, 0, Err(Errno::EFBIG))
        );
        // Pieces: the ones before the limit land whole.
        let start = EXT4 - 3 * WRITE_PIECE / 2;
        let w = write_calls(Some(start), 4 * WRITE_PIECE, 0, EXT4);
        assert_eq!(w, (start, 3 * WRITE_PIECE / 2, Err(Errno::EFBIG)));
        let start = LFS - 3 * WRITE_PIECE / 2;
        let w = write_calls(Some(start), 4 * WRITE_PIECE, 0, LFS);
        assert_eq!(w, (start, WRITE_PIECE, Err(Errno::EINVAL)));
        assert_eq!(
            write_calls(Some(u64::MAX), 0, 0, LFS),
            (u64::MAX, 0, Ok(()))
        );
        assert_eq!(write_calls(Some(5), 10, 0, LFS), (5, 10, Ok(())));
    }
}
