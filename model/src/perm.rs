//! Who may do what: the kernel's discretionary access checks for a step run by a user other
//! than root ([`crate::FileOp::AsUser`]). Root (the default) has every capability and passes
//! them all.
//!
//! The checks and their order are the VFS's, which runs them on the overlay inode before
//! overlayfs does anything (so a refused step copies nothing up): fs/namei.c
//! `generic_permission` (owner, group, other bits; no ACLs), `may_lookup` (search on each
//! directory walked), `may_create` (write and search on the parent), `may_delete` (the same,
//! then the sticky bit: only the file's or the directory's owner, EPERM), `may_open` (read
//! or write on the file), `may_linkat` (`fs.protected_hardlinks`: a link to a file the user
//! neither owns nor may read and write is EPERM); fs/attr.c `setattr_prepare` (chmod, chown
//! and explicit times need the owner, EPERM; `chown_ok`, `chgrp_ok`); fs/xattr.c
//! `xattr_permission` (`user.*` only on files and directories, write on the inode, and the
//! owner in a sticky directory). overlayfs checks the real inode again with the mounter's
//! credentials (`ovl_permission`), which are root's here, and copies up with them, so a
//! copy keeps its owner (`ovl_copy_up_inode`).

use crate::container::Container;
use crate::errno::Errno;
use crate::step::Cred;
use crate::tree::Inode;

/// `MAY_EXEC`: search a directory.
pub const MAY_EXEC: u32 = 1;
/// `MAY_WRITE`.
pub const MAY_WRITE: u32 = 2;
/// `MAY_READ`.
pub const MAY_READ: u32 = 4;

/// `S_ISVTX`: the sticky bit.
const STICKY: u32 = 0o1000;
/// `S_ISGID`.
const SETGID: u32 = 0o2000;
/// `S_ISUID`.
const SETUID: u32 = 0o4000;

impl Container {
    /// `generic_permission`: whether the step's user may `mask` the inode (EACCES).
    pub(crate) fn permission(&self, inode: &Inode, mask: u32) -> Result<(), Errno> {
        let Some(c) = self.cred else { return Ok(()) };
        let bits = if c.uid == inode.uid {
            inode.mode >> 6
        } else if c.gid == inode.gid {
            inode.mode >> 3
        } else {
            inode.mode
        };
        if bits & mask & 7 == mask {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    /// `may_create`: write and search on the parent directory.
    pub(crate) fn may_create(&self, dir: &Inode) -> Result<(), Errno> {
        self.permission(dir, MAY_WRITE | MAY_EXEC)
    }

    /// `may_delete`'s permission part: write and search on the parent, then the sticky
    /// bit (EPERM unless the user owns the file or the directory).
    pub(crate) fn may_delete(&self, dir: &Inode, victim: &Inode) -> Result<(), Errno> {
        self.may_create(dir)?;
        match self.cred {
            Some(c) if dir.mode & STICKY != 0 && c.uid != victim.uid && c.uid != dir.uid => {
                Err(Errno::EPERM)
            }
            _ => Ok(()),
        }
    }

    /// `inode_owner_or_capable`: chmod, explicit times (EPERM).
    pub(crate) fn owner_or_capable(&self, inode: &Inode) -> Result<(), Errno> {
        match self.cred {
            Some(c) if c.uid != inode.uid => Err(Errno::EPERM),
            _ => Ok(()),
        }
    }

    /// `may_linkat` with `fs.protected_hardlinks = 1` (Debian's default): a user may link
    /// a file they own, or a regular file they may read and write that is neither setuid
    /// nor setgid-executable (`safe_hardlink_source`).
    pub(crate) fn may_link_source(&self, inode: &Inode) -> Result<(), Errno> {
        if self.owner_or_capable(inode).is_ok() {
            return Ok(());
        }
        let safe = matches!(inode.body, crate::tree::Body::File { .. })
            && inode.mode & SETUID == 0
            && inode.mode & (SETGID | 0o010) != (SETGID | 0o010)
            && self.permission(inode, MAY_READ | MAY_WRITE).is_ok();
        if safe {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }

    /// `setattr_prepare` for `chown(uid, gid)`: root may give anything away; a user may
    /// only keep the owner and set the group to their own (`chown_ok`, `chgrp_ok`).
    pub(crate) fn may_chown(
        &self,
        inode: &Inode,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let Some(c) = self.cred else { return Ok(()) };
        let owner = c.uid == inode.uid;
        let uid_ok = uid.is_none_or(|u| owner && u == inode.uid);
        let gid_ok = gid.is_none_or(|g| owner && (g == inode.gid || g == c.gid));
        if uid_ok && gid_ok {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }

    /// The owner of an inode the step makes in a directory (`inode_init_owner`): the
    /// user's uid, and the directory's group when it is setgid (a new directory then is
    /// setgid too), else the user's gid. Returns (uid, gid, mode).
    pub(crate) fn new_owner(&self, dir: &Inode, mode: u32, is_dir: bool) -> (u32, u32, u32) {
        let c = self.cred.unwrap_or(Cred { uid: 0, gid: 0 });
        if dir.mode & SETGID == 0 {
            return (c.uid, c.gid, mode);
        }
        let mode = if is_dir {
            mode | SETGID
        } else if mode & (SETGID | 0o010) == (SETGID | 0o010)
            && self.cred.is_some_and(|c| c.gid != dir.gid)
        {
            // Not in the group the file gets: no setgid (`inode_init_owner`).
            mode & !SETGID
        } else {
            mode
        };
        (c.uid, dir.gid, mode)
    }

    /// The mode chmod leaves: a user not in the file's group cannot set setgid
    /// (`setattr_prepare`).
    pub(crate) fn chmod_mode(&self, inode: &Inode, mode: u32) -> u32 {
        match self.cred {
            Some(c) if c.gid != inode.gid => mode & !SETGID,
            _ => mode,
        }
    }

    /// The mode after a chown of a non-directory (`chown_common`: `ATTR_KILL_SUID`, and
    /// `ATTR_KILL_SGID` for a group-executable setgid file), even by root.
    pub(crate) fn chown_mode(inode: &Inode) -> u32 {
        if inode.is_dir() {
            return inode.mode;
        }
        let mut mode = inode.mode & !SETUID;
        if mode & (SETGID | 0o010) == (SETGID | 0o010) {
            mode &= !SETGID;
        }
        mode
    }

    /// `xattr_permission` for a `user.*` attribute: files and directories only (EPERM to
    /// set, ENODATA to read elsewhere), the owner in a sticky directory, then read or write
    /// permission on the inode.
    pub(crate) fn may_user_xattr(&self, inode: &Inode, write: bool) -> Result<(), Errno> {
        let file_or_dir = matches!(
            inode.body,
            crate::tree::Body::File { .. } | crate::tree::Body::Dir { .. }
        );
        if !file_or_dir {
            return Err(if write { Errno::EPERM } else { Errno::ENODATA });
        }
        if write && inode.is_dir() && inode.mode & STICKY != 0 {
            self.owner_or_capable(inode)?;
        }
        self.permission(inode, if write { MAY_WRITE } else { MAY_READ })
    }
}
