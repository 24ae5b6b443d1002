//! Every `unsafe` call and raw system call of layerspec: mount namespaces, mounts, chroot,
//! device nodes, xattrs, loop devices. Each one that changes something is logged through
//! [`Log`], so a failing run shows what it did to the real layers.

#![allow(unsafe_code)]

use layerspec_model::Errno;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A record of the side effects a sandbox made, in order.
#[derive(Debug, Default)]
pub struct Log {
    lines: Vec<String>,
}

impl Log {
    /// Records one action.
    pub fn note(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// The last `n` actions, for error reports.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.lines[self.lines.len().saturating_sub(n)..].to_vec()
    }

    /// A real driver's failure while doing `what`, with the last actions it took.
    pub(crate) fn backend_err(&self, what: &str, e: io::Error) -> layerspec_model::DriverError {
        layerspec_model::DriverError::Backend(format!(
            "{what}: {e} (last actions: {})",
            self.tail(4).join("; ")
        ))
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The errno of an I/O error, if the spec knows it.
pub fn errno_of(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().and_then(Errno::from_number)
}

/// Gives the calling thread its own mount namespace with every mount private, its own
/// root, cwd and umask (`CLONE_FS`), and umask 0 so modes are taken as given.
pub fn private_mount_namespace(log: &mut Log) -> io::Result<()> {
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) })?;
    let root = CString::new("/").expect("no NUL");
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    unsafe { libc::umask(0) };
    log.note("unshare(CLONE_NEWNS|CLONE_FS); mount --make-rprivate /; umask 0");
    Ok(())
}

/// `mount(source, target, fstype, 0, data)`.
pub fn mount(
    log: &mut Log,
    source: &str,
    target: &Path,
    fstype: &str,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (
        CString::new(source)?,
        cpath(target)?,
        CString::new(fstype)?,
        CString::new(data)?,
    );
    log.note(format!(
        "mount -t {fstype} {source} {} -o {data}",
        target.display()
    ));
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, d.as_ptr().cast()) })
}

/// A non-recursive bind mount: `target` shows `source`'s filesystem without the mounts
/// on top of it, so the driver's directories read as they are on disk.
pub fn bind(log: &mut Log, source: &Path, target: &Path) -> io::Result<()> {
    let (s, t) = (cpath(source)?, cpath(target)?);
    log.note(format!(
        "mount --bind {} {}",
        source.display(),
        target.display()
    ));
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// `umount2(target, flags)`; a plain (not lazy) unmount that finds the mount busy is retried
/// for up to 2 s. The busy state is transient here, most likely from a child being forked by
/// another thread of this process (a fuse-overlayfs daemon between fork and exec): it holds
/// a copy of every open descriptor, close-on-exec or not, including ones this thread just
/// had open in the mount. Seen with `fuzz --backend fuse`: EBUSY once, then success.
pub fn umount(log: &mut Log, target: &Path, detach: bool) -> io::Result<()> {
    let t = cpath(target)?;
    log.note(format!(
        "umount {}{}",
        target.display(),
        if detach { " (lazy)" } else { "" }
    ));
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    let mut r = check(unsafe { libc::umount2(t.as_ptr(), flags) });
    for _ in 0..200 {
        match &r {
            Err(e) if !detach && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                r = check(unsafe { libc::umount2(t.as_ptr(), flags) });
            }
            _ => break,
        }
    }
    if r.is_err() {
        log.note(format!("umount {}: {:?}", target.display(), r));
    }
    r
}

/// An overlayfs whiteout as a layer builder makes it: `mknod(path, S_IFCHR | 0, 0)`.
pub fn mknod_whiteout(log: &mut Log, path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    log.note(format!("mknod {} c 0 0", path.display()));
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) })
}

/// `lsetxattr` (no symlink following).
pub fn lsetxattr(log: &mut Log, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    log.note(format!(
        "setfattr -h -n {name} -v {:?} {}",
        String::from_utf8_lossy(value),
        path.display()
    ));
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// `setxattr` / `removexattr` (following symlinks), as a step runs it.
pub fn setxattr(path: &Path, name: &str, value: Option<&[u8]>) -> io::Result<()> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    match value {
        Some(v) => {
            check(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) })
        }
        None => check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }),
    }
}

/// `getxattr` (following) or `lgetxattr`.
pub fn getxattr(path: &Path, name: &str, follow: bool) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    let mut buf = vec![0u8; 65536];
    let r = unsafe {
        if follow {
            libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// `llistxattr`: every xattr name of `path` (no symlink following), sorted.
pub fn llistxattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `flock(file, LOCK_EX | LOCK_NB)`: `Ok(true)` when this open file now holds the lock,
/// `Ok(false)` when another open file holds it (a live owner).
pub fn try_lock(file: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A file descriptor of the real root, kept to leave a chroot.
pub struct RootFd(libc::c_int);

impl RootFd {
    /// Opens `/` (before any chroot).
    pub fn open() -> io::Result<RootFd> {
        let r = unsafe {
            libc::open(
                c"/".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RootFd(r))
    }

    /// Makes `dir` the calling thread's root and cwd: paths resolve inside it, absolute
    /// symlinks and `..` included, as in a container.
    pub fn enter(&self, dir: &Path) -> io::Result<()> {
        self.leave()?;
        let d = cpath(dir)?;
        check(unsafe { libc::chroot(d.as_ptr()) })?;
        check(unsafe { libc::chdir(c"/".as_ptr()) })
    }

    /// Runs `f` with `dir` as the thread's root ([`RootFd::enter`]), then back to the real
    /// root.
    pub fn within<R>(&self, dir: &Path, f: impl FnOnce() -> R) -> io::Result<R> {
        self.enter(dir)?;
        let r = f();
        self.leave()?;
        Ok(r)
    }

    /// Back to the real root.
    pub fn leave(&self) -> io::Result<()> {
        check(unsafe { libc::fchdir(self.0) })?;
        check(unsafe { libc::chroot(c".".as_ptr()) })?;
        check(unsafe { libc::chdir(c"/".as_ptr()) })
    }
}

impl Drop for RootFd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

/// Changes the thread's cwd (mounts with relative `l/` paths are made from the driver root).
pub fn chdir(dir: &Path) -> io::Result<()> {
    let d = cpath(dir)?;
    check(unsafe { libc::chdir(d.as_ptr()) })
}

/// Asks the kernel to SIGKILL a child when the thread that started it dies (`pre_exec`).
pub fn die_with_parent() -> io::Result<()> {
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) })
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Sends `sig` to process `pid` (`kill(2)`).
pub fn kill(pid: u32, sig: libc::c_int) -> io::Result<()> {
    check(unsafe { libc::kill(pid as libc::pid_t, sig) })
}

/// Detaches loop device `dev` (`LOOP_CLR_FD`).
pub fn loop_detach(log: &mut Log, dev: &Path) -> io::Result<()> {
    const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
    let f = std::fs::File::open(dev)?;
    log.note(format!("losetup -d {}", dev.display()));
    use std::os::fd::AsRawFd;
    check(unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _, 0) })
}

/// `open(2)` with `flags` and `mode`, then `close`. `O_NONBLOCK`, `O_NOCTTY` and
/// `O_CLOEXEC` are added: a step never waits on a FIFO or takes a terminal.
pub fn open_close(path: &Path, flags: libc::c_int, mode: u32) -> io::Result<()> {
    let p = cpath(path)?;
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            flags | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    check(fd)?;
    check(unsafe { libc::close(fd) })
}

/// `close(2)` of `f`, with its error: a filesystem that caches writes reports their failure
/// here (fuse-overlayfs: ENOSPC at close), which dropping a `File` would lose.
pub fn close(f: std::fs::File) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    check(unsafe { libc::close(fd) })
}

/// `utimensat(AT_FDCWD, path, {secs, secs}, AT_SYMLINK_NOFOLLOW)`: sets the access and
/// modification times of `path` itself (a symlink's own).
pub fn lutimes(path: &Path, secs: i64) -> io::Result<()> {
    utimensat(path, secs, secs, libc::AT_SYMLINK_NOFOLLOW)
}

/// `utimensat(AT_FDCWD, path, {atime, mtime}, 0)`: `utimes(2)`, following a symlink.
pub fn utimes(path: &Path, atime: i64, mtime: i64) -> io::Result<()> {
    utimensat(path, atime, mtime, 0)
}

fn utimensat(path: &Path, atime: i64, mtime: i64, flags: libc::c_int) -> io::Result<()> {
    let p = cpath(path)?;
    let t = |secs: i64| libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t(atime), t(mtime)];
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), flags) })
}

/// Runs `f` as user `uid` and group `gid` on this thread alone: no supplementary groups,
/// real and effective ids (and so the filesystem ids) changed with raw system calls, which
/// act on the calling thread only (glibc's wrappers would change every thread). The
/// saved ids stay 0, so the thread keeps its permitted capabilities and gets them back when
/// it returns to root; the effective ones are gone while it runs as the user.
pub fn as_user<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    const KEEP: libc::c_long = -1;
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups: Vec<libc::gid_t> = vec![0; n.max(0) as usize];
    check(unsafe { libc::getgroups(n, groups.as_mut_ptr()) }.min(0))?;
    let call = |r: libc::c_long| check(r as libc::c_int);
    call(unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) })?;
    call(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, KEEP) })?;
    call(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, KEEP) })?;
    let out = f();
    // Back to root: the user may not stay on a thread that runs the harness.
    let back = call(unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, KEEP) })
        .and_then(|_| call(unsafe { libc::syscall(libc::SYS_setresgid, 0, 0, KEEP) }))
        .and_then(|_| {
            call(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
        });
    if let Err(e) = back {
        // A thread that cannot become root again must not run another step.
        eprintln!("layerspec: could not return to root after a step as uid {uid}: {e}");
        std::process::abort();
    }
    Ok(out)
}

/// `truncate(2)`.
pub fn truncate(path: &CStr, size: u64) -> io::Result<()> {
    check(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) })
}

/// Size of `struct dm_ioctl` (include/uapi/linux/dm-ioctl.h): the header of every
/// device-mapper ioctl buffer. The layout is encoded in `dm.rs`, without unsafe.
pub const DM_IOCTL_SIZE: usize = 312;

/// One device-mapper ioctl on `/dev/mapper/control`: `_IOWR(0xfd, nr, struct dm_ioctl)`
/// with `buf` (a `dm_ioctl` header plus its payload; the kernel writes its answer back into
/// it). Logged by the caller (`dm.rs`), which knows what the command means.
pub fn dm_ioctl(control: &std::fs::File, nr: u8, buf: &mut [u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    assert!(
        buf.len() >= DM_IOCTL_SIZE,
        "a dm ioctl buffer holds a dm_ioctl"
    );
    let request: libc::c_ulong = (3 << 30)
        | ((DM_IOCTL_SIZE as libc::c_ulong) << 16)
        | (0xfd << 8)
        | libc::c_ulong::from(nr);
    check(unsafe { libc::ioctl(control.as_raw_fd(), request as _, buf.as_mut_ptr()) })
}

/// Attaches `file` to a free loop device with `LO_FLAGS_AUTOCLEAR`, so the device goes
/// when its last user closes it. Returns `/dev/loopN` and an open handle: autoclear acts at
/// the last close, so the caller keeps it until something else (a dm table) holds the
/// device, or for as long as it uses it.
pub fn loop_attach(log: &mut Log, file: &Path) -> io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::fd::AsRawFd;
    const LOOP_SET_FD: libc::c_ulong = 0x4C00;
    const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    let ctl = std::fs::File::open("/dev/loop-control")?;
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    // Another process may take the free device between the two calls: try again.
    for _ in 0..16 {
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dev = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let loopf = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)?;
        let r = unsafe { libc::ioctl(loopf.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(e);
        }
        // struct loop_info64: lo_flags is the u32 at byte 52 of its 232.
        let mut info = [0u8; 232];
        info[52..56].copy_from_slice(&LO_FLAGS_AUTOCLEAR.to_ne_bytes());
        let name = file.as_os_str().as_bytes();
        let n = name.len().min(63);
        info[56..56 + n].copy_from_slice(&name[..n]);
        check(unsafe { libc::ioctl(loopf.as_raw_fd(), LOOP_SET_STATUS64 as _, info.as_ptr()) })?;
        log.note(format!("losetup {} {}", dev.display(), file.display()));
        return Ok((dev, loopf));
    }
    Err(io::Error::other("no free loop device after 16 tries"))
}

/// `mknod(path, S_IFBLK | 0600, dev)`: a node for a device the sandbox made (no udev).
pub fn mknod_block(log: &mut Log, path: &Path, dev: u64) -> io::Result<()> {
    let p = cpath(path)?;
    log.note(format!(
        "mknod {} b {} {}",
        path.display(),
        libc::major(dev),
        libc::minor(dev)
    ));
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, dev as libc::dev_t) })
}

/// `ioctl(BLKDISCARD, [start, len])`, in bytes.
pub fn blkdiscard(log: &mut Log, dev: &std::fs::File, start: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const BLKDISCARD: libc::c_ulong = 0x1277;
    log.note(format!("blkdiscard -o {start} -l {len}"));
    let range = [start, len];
    check(unsafe { libc::ioctl(dev.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) })
}

/// `mount(source, target, fstype, MS_RDONLY, "")`: a read-only mount, which writes nothing
/// to the device (ext4 neither replays a clean journal nor updates the superblock).
pub fn mount_ro(log: &mut Log, source: &Path, target: &Path, fstype: &str) -> io::Result<()> {
    let (s, t, f) = (cpath(source)?, cpath(target)?, CString::new(fstype)?);
    log.note(format!(
        "mount -t {fstype} -o ro {} {}",
        source.display(),
        target.display()
    ));
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        )
    })
}

/// `sync(2)`: every dirty page and every filesystem's metadata to its device.
pub fn sync(log: &mut Log) {
    log.note("sync");
    unsafe { libc::sync() }
}

/// `statvfs(2)`'s free blocks (`f_bfree`) of the filesystem holding `path`.
#[cfg(test)]
pub fn statvfs_free_blocks(path: &Path) -> io::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bfree as u64)
}

/// `lseek(fd, from, SEEK_DATA)` (`data = true`) or `SEEK_HOLE`: the next offset at or
/// after `from` that starts data (a hole); `None` past the last data (ENXIO).
pub fn seek(file: &std::fs::File, from: u64, data: bool) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    let r = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// A read-only, `noatime` bind mount of `source` on `target`: reading through it changes
/// nothing on the filesystem below, not even an access time (`atime_needs_update` returns
/// early for a `MNT_NOATIME` mount).
pub fn bind_quiet(log: &mut Log, source: &Path, target: &Path) -> io::Result<()> {
    bind(log, source, target)?;
    let t = cpath(target)?;
    log.note(format!(
        "mount -o remount,bind,ro,noatime {}",
        target.display()
    ));
    let r = check(unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOATIME,
            std::ptr::null(),
        )
    });
    if r.is_err() {
        let _ = umount(log, target, false);
    }
    r
}
