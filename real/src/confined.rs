//! Confined I/O: every change the real side makes to a layer — building it from a
//! scenario's entries, applying a diff, committing a container, removing one — goes through
//! the logged wrappers here, in the manner of the kernel's `ovl_do_*` helpers.
//!
//! # Invariant
//!
//! A [`Confined`] exists only while the sandbox thread's root (`chroot`) is a directory of
//! the sandbox's own backing filesystem (a driver root, or a device's mounted root), and
//! every wrapper takes one. So every path a wrapper is given resolves inside that root: an
//! absolute symlink means the root, `..` stops at it, and no `/proc` lies below it for a
//! magic link to lead out. Nothing a scenario names — an entry path, a symlink target, an
//! id — can make a wrapper act outside the sandbox.
//!
//! Inside the root, the last component is never followed: a name that is a symlink is
//! acted on itself (`lsetxattr`, `unlink`, `linkat` without `AT_SYMLINK_FOLLOW`) or refused
//! with `ELOOP` (creating a file through it, changing a mode through it), never written
//! through. Parents are directories the same layer made: layers whose entries lie below a
//! non-directory entry are refused before anything runs ([`layerspec_model::validate_layer`]),
//! with the error the model gives.
//!
//! Leaving the root is [`Confined`]'s `Drop`: the thread returns to the real root, so a
//! panic inside does not leave it chrooted.

use crate::sys::{self, Log, RootFd};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The right to change files, held while the sandbox thread is chrooted inside the
/// sandbox (module doc). Paths given to its methods are absolute in that root.
pub struct Confined<'a> {
    log: &'a mut Log,
    real_root: &'a RootFd,
}

impl<'a> Confined<'a> {
    /// Chroots the calling thread into `dir` (a path on the sandbox's backing filesystem,
    /// as the thread sees it now) and returns the token; dropping it leaves the chroot.
    pub(crate) fn enter(log: &'a mut Log, real_root: &'a RootFd, dir: &Path) -> io::Result<Self> {
        real_root.enter(dir)?;
        log.note(format!("chroot {}", dir.display()));
        Ok(Confined { log, real_root })
    }

    /// The side-effect log.
    pub fn log(&mut self) -> &mut Log {
        self.log
    }

    /// Records a note in the log.
    pub fn note(&mut self, line: impl Into<String>) {
        self.log.note(line);
    }

    /// `mkdir(dir, mode)` (umask is 0 on the sandbox thread).
    pub fn mkdir(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        self.log
            .note(format!("mkdir -m {mode:o} {}", dir.display()));
        fs::DirBuilder::new().mode(mode).create(dir)
    }

    /// Creates a regular file with `mode` and `data`: `O_CREAT|O_EXCL|O_NOFOLLOW`, so an
    /// existing name (a symlink included) is never opened.
    pub fn write_file(&mut self, path: &Path, mode: u32, data: &[u8]) -> io::Result<()> {
        self.write_content(path, mode, &layerspec_model::Content::Bytes(data.to_vec()))
    }

    /// Creates a regular file with `mode` holding `data`, streamed in pieces (a file of any
    /// size is written without being held in memory); `O_CREAT|O_EXCL|O_NOFOLLOW`.
    pub fn write_content(
        &mut self,
        path: &Path,
        mode: u32,
        data: &layerspec_model::Content,
    ) -> io::Result<()> {
        self.log.note(format!(
            "write {} ({} bytes, mode {mode:o})",
            path.display(),
            data.len()
        ));
        let mut f = create_new(path, mode)?;
        crate::content::write_content(&mut f, data, false)?;
        // An explicit chmod of the open file: setuid/setgid/sticky bits are not kept by
        // open's mode on all filesystems.
        f.set_permissions(fs::Permissions::from_mode(mode))
    }

    /// Sets the permission bits of an existing file or directory. A symlink is refused
    /// (`ELOOP`): `chmod` would follow it.
    pub fn set_mode(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        self.log.note(format!("chmod {mode:o} {}", path.display()));
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
    }

    /// `lchown(path, uid, gid)`: on the name itself, never through a symlink. The kernel
    /// clears a file's setuid and setgid bits on a change of owner: set the mode after it.
    pub fn set_owner(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.log
            .note(format!("chown -h {uid}:{gid} {}", path.display()));
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    /// `lsetxattr`: on the name itself, never through a symlink.
    pub fn set_xattr(&mut self, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        sys::lsetxattr(self.log, path, name, value)
    }

    /// `symlink(target, path)`: the target is stored, not resolved.
    pub fn symlink(&mut self, target: &Path, path: &Path) -> io::Result<()> {
        self.log
            .note(format!("ln -s {} {}", target.display(), path.display()));
        std::os::unix::fs::symlink(target, path)
    }

    /// `link(from, to)` (`linkat` without `AT_SYMLINK_FOLLOW`: a symlink is linked itself).
    pub fn hard_link(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.log
            .note(format!("ln {} {}", from.display(), to.display()));
        fs::hard_link(from, to)
    }

    /// Sets the access and modification times of `path` itself to `secs` (a symlink is
    /// not followed).
    pub fn set_times(&mut self, path: &Path, secs: i64) -> io::Result<()> {
        self.log
            .note(format!("touch -h -d @{secs} {}", path.display()));
        sys::lutimes(path, secs)
    }

    /// An overlayfs whiteout: a character device 0:0.
    pub fn whiteout(&mut self, path: &Path) -> io::Result<()> {
        sys::mknod_whiteout(self.log, path)
    }

    /// A block device node (mode 0600) for device `dev`.
    pub fn block_device(&mut self, path: &Path, dev: u64) -> io::Result<()> {
        sys::mknod_block(self.log, path, dev)
    }

    /// Removes a file, a symlink or a whole directory tree. Symlinks inside are removed,
    /// never followed (std's `remove_dir_all` opens each directory `O_NOFOLLOW`).
    pub fn remove(&mut self, path: &Path) -> io::Result<()> {
        let m = fs::symlink_metadata(path)?;
        if m.is_dir() {
            self.log.note(format!("rm -r {}", path.display()));
            fs::remove_dir_all(path)
        } else {
            self.log.note(format!("rm {}", path.display()));
            fs::remove_file(path)
        }
    }
}

/// `open(path, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW, mode)`.
fn create_new(path: &Path, mode: u32) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

/// Driver metadata outside a chroot: the devicemapper driver's own directories and files
/// (`metadata/<hash>`, `mnt/<hash>/id`), made on the sandbox thread between dm ioctls and
/// helper programs that need the real root. Their paths are built from the driver root and
/// validated ids only ([`layerspec_model::check_id`]), never from a scenario's entries;
/// they are still never followed: `mkdir` fails on any existing name, files are created
/// `O_CREAT|O_EXCL|O_NOFOLLOW`.
pub mod metadata {
    use crate::sys::Log;
    use std::fs;
    use std::io::{self, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    /// `mkdir(dir, mode)`.
    pub fn mkdir(log: &mut Log, dir: &Path, mode: u32) -> io::Result<()> {
        log.note(format!("mkdir -m {mode:o} {}", dir.display()));
        fs::DirBuilder::new().mode(mode).create(dir)
    }

    /// Creates `path` with `mode` and `data`; an existing name is an error.
    pub fn write_file(log: &mut Log, path: &Path, mode: u32, data: &[u8]) -> io::Result<()> {
        log.note(format!(
            "write {} ({} bytes, mode {mode:o})",
            path.display(),
            data.len()
        ));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(path)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
    }
}

impl Drop for Confined<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.real_root.leave() {
            // Staying chrooted would confine later jobs wrongly, not unsafely; say so.
            self.log.note(format!("leaving the chroot failed: {e}"));
        }
    }
}
