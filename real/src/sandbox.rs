//! A sandbox: one OS thread with its own mount namespace (root made private), a fresh
//! temporary directory, and a backing filesystem mounted there. Every real side effect of a
//! driver runs on that thread. Nothing outlives it: on drop the thread unmounts and exits,
//! the namespace dies with it, and the host directory is removed; after a SIGKILL the
//! namespace dies with the process and [`sweep`] removes what is left at the next start.

use crate::confined::Confined;
use crate::sys::{self, Log, RootFd};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;

/// Name prefix of everything a sandbox creates on the host.
pub const PREFIX: &str = "layerspec-";

/// The filesystem under the driver root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingFs {
    /// tmpfs of at most `size` bytes (its pages are memory: a driver root never holds more).
    Tmpfs {
        /// Size, e.g. `"1G"` ([`BackingFs::TMPFS_SIZE`] by default).
        size: String,
    },
    /// ext4 on a loop device over a sparse file, with an optional inode count (`-N`), with
    /// 4 KiB blocks whatever the size (mke2fs takes 1 KiB below 512 MiB, mke2fs.conf
    /// `small`: its files could not grow past 4 TiB; the model's `Backing::Ext4` is 4 KiB).
    Ext4 {
        /// Size, e.g. `"256M"`.
        size: String,
        /// Inode count.
        inodes: Option<u64>,
    },
    /// xfs on a loop device.
    Xfs {
        /// Size.
        size: String,
    },
}

impl BackingFs {
    /// The size of a tmpfs backing when none is asked for.
    pub const TMPFS_SIZE: &'static str = "1G";

    /// tmpfs of [`BackingFs::TMPFS_SIZE`].
    pub fn tmpfs() -> BackingFs {
        BackingFs::Tmpfs {
            size: Self::TMPFS_SIZE.to_string(),
        }
    }
}

/// What a job sees on the sandbox thread.
pub struct Inside {
    /// The mounted backing filesystem's root (inside the namespace).
    pub root: PathBuf,
    /// The side-effect log.
    pub log: Log,
    /// The real root, to leave chroots.
    pub real_root: RootFd,
}

impl Inside {
    /// Chroots the sandbox thread into `dir`, a directory of the backing filesystem (as a
    /// path outside any chroot: [`Inside::root`] or below), for writes through the
    /// [`Confined`] wrappers; dropping the token leaves the chroot.
    pub fn confine(&mut self, dir: &Path) -> io::Result<Confined<'_>> {
        if !dir.starts_with(&self.root) {
            return Err(io::Error::other(format!(
                "{} is not on the sandbox's backing filesystem",
                dir.display()
            )));
        }
        Confined::enter(&mut self.log, &self.real_root, dir)
    }
}

type Job = Box<dyn FnOnce(&mut Inside) + Send>;

/// A running sandbox.
pub struct Sandbox {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    host_dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

impl Sandbox {
    /// Starts a sandbox with `backing` mounted at its root.
    pub fn new(backing: BackingFs) -> io::Result<Sandbox> {
        Self::new_tagged(backing, "")
    }

    /// Like [`Sandbox::new`], its host directory named `layerspec-<pid>-<tag><n>`
    /// ([`owned_temp_dir`]).
    pub fn new_tagged(backing: BackingFs, tag: &str) -> io::Result<Sandbox> {
        let host_dir = owned_temp_dir(tag)?;
        let (tx, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<io::Result<()>>();
        let dir = host_dir.clone();
        let thread = std::thread::Builder::new()
            .name("layerspec-sandbox".into())
            // Walks of the driver root recurse once per directory level: PATH_MAX bounds
            // a tree at 2,048 levels, a few KiB each.
            .stack_size(64 << 20)
            .spawn(move || {
                let mut inside = match setup(&dir, &backing) {
                    Ok(i) => {
                        let _ = ready_tx.send(Ok(()));
                        i
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut inside);
                }
                let _ = inside.real_root.leave();
                let _ = sys::umount(&mut inside.log, &inside.root, true);
            })?;
        let sandbox = Sandbox {
            tx: Some(tx),
            thread: Some(thread),
            host_dir,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(sandbox),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("sandbox thread died while starting")),
        }
    }

    /// Runs `f` on the sandbox thread and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut Inside) -> R + Send + 'static) -> R {
        let (tx, rx) = channel();
        let job: Job = Box::new(move |inside| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(inside)));
            let _ = inside.real_root.leave();
            let _ = tx.send(r);
        });
        self.tx
            .as_ref()
            .expect("sandbox running")
            .send(job)
            .expect("sandbox thread alive");
        match rx.recv().expect("sandbox thread answers") {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// The sandbox's directory on the host (empty there: its contents live in the namespace).
    pub fn host_dir(&self) -> &Path {
        &self.host_dir
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = remove_temp_dir(&self.host_dir);
    }
}

/// The marker every directory [`temp_dir`] makes holds; the sweeper removes a directory
/// only when this file is in it, is a regular file starting with [`MARKER_TEXT`], and its
/// lock is free (the process that made it has gone: a lock dies with its holder).
pub const MARKER: &str = ".layerspec-owner";
/// The first bytes of [`MARKER`].
pub const MARKER_TEXT: &str = "layerspec temporary directory\n";

/// The locks of this process's temporary directories, held until the directory is removed.
static LOCKS: Mutex<BTreeMap<PathBuf, std::fs::File>> = Mutex::new(BTreeMap::new());

/// A fresh directory `layerspec-<pid>-<n>` in the temporary directory (after the first
/// sweep of what killed runs left), for the caller to remove with [`remove_temp_dir`].
pub(crate) fn temp_dir() -> io::Result<PathBuf> {
    owned_temp_dir("")
}

/// A fresh directory `layerspec-<pid>-<tag><n>` in the temporary directory, marked as this
/// process's ([`MARKER`], locked while it lives) so that [`sweep`] can tell it from anyone
/// else's after a kill. Remove it with [`remove_temp_dir`].
pub fn owned_temp_dir(tag: &str) -> io::Result<PathBuf> {
    SWEEP.call_once(|| {
        let _ = sweep();
    });
    let dir = std::env::temp_dir().join(format!(
        "{PREFIX}{}-{tag}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir(&dir)?;
    let marked = (|| -> io::Result<std::fs::File> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(MARKER))?;
        if !sys::try_lock(&f)? {
            return Err(io::Error::other("the marker of a new directory is locked"));
        }
        writeln!(f, "{MARKER_TEXT}pid {}", std::process::id())?;
        Ok(f)
    })();
    match marked {
        Ok(f) => {
            LOCKS.lock().expect("locks").insert(dir.clone(), f);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Removes a directory made by [`owned_temp_dir`] and lets its lock go.
pub fn remove_temp_dir(dir: &Path) -> io::Result<()> {
    let r = match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    LOCKS.lock().expect("locks").remove(dir);
    r
}

/// Whether `dir` is a layerspec temporary directory whose owner is gone: a real directory
/// (not a symlink) holding [`MARKER`] whose lock this call could take. The lock is
/// returned, to hold while the directory is removed.
fn orphaned(dir: &Path) -> Option<std::fs::File> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let m = std::fs::symlink_metadata(dir).ok()?;
    if !m.is_dir() {
        return None;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(MARKER))
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = vec![0u8; MARKER_TEXT.len()];
    f.read_exact(&mut head).ok()?;
    if head != MARKER_TEXT.as_bytes() {
        return None;
    }
    sys::try_lock(&f).ok()?.then_some(f)
}

fn setup(dir: &Path, backing: &BackingFs) -> io::Result<Inside> {
    let mut log = Log::default();
    sys::private_mount_namespace(&mut log)?;
    // Opened after unshare: a root fd from the old namespace would lead back into its
    // mount tree, where the sandbox's mounts are not.
    let real_root = RootFd::open()?;
    let root = dir.join("mnt");
    std::fs::create_dir(&root)?;
    match backing {
        BackingFs::Tmpfs { size } => {
            let bytes =
                parse_size(size).ok_or_else(|| io::Error::other(format!("bad size `{size}`")))?;
            sys::mount(
                &mut log,
                "tmpfs",
                &root,
                "tmpfs",
                &format!("mode=0755,size={bytes}"),
            )?
        }
        BackingFs::Ext4 { size, inodes } => {
            let img = dir.join("backing.img");
            make_image(&img, size)?;
            run(&mut log, &mut mkfs_ext4(&img, *inodes))?;
            loop_mount(&mut log, &img, &root)?;
            ext4_no_group_prealloc(&mut log, &root)?;
        }
        BackingFs::Xfs { size } => {
            let img = dir.join("backing.img");
            make_image(&img, size)?;
            run(
                &mut log,
                Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&img),
            )?;
            loop_mount(&mut log, &img, &root)?;
            xfs_make_inode_chunks(&mut log, &root)?;
        }
    }
    Ok(Inside {
        root,
        log,
        real_root,
    })
}

/// Sets the ext4 mounted at `at` to preallocate one block for small files'
/// locality group (`mb_group_prealloc`, default 512), so that where it runs out of space
/// follows from what its files hold. With 512, a small file written before a large one
/// leaves a block of the group's preallocation that the large write cannot get (seen on
/// 6.18, 16 MiB: a 26-byte file, then 4 KiB writes until ENOSPC: one block less landed
/// than free less the reserve, and that block in the file's `st_blocks`). The model's
/// ext4 space follows the filesystem so set.
fn ext4_no_group_prealloc(log: &mut Log, at: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(at)?.dev();
    let sys = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    let name = std::fs::read_link(&sys)?;
    let name = name
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{sys} names no device")))?;
    let knob = Path::new("/sys/fs/ext4")
        .join(name)
        .join("mb_group_prealloc");
    log.note(format!("echo 1 > {}", knob.display()));
    std::fs::write(&knob, "1")
}

/// Makes inode chunks in every allocation group of the xfs mounted at `at`, so that where
/// it runs out of space follows from what its files hold (`layerspec_model`'s
/// `space::xfs`): a new directory goes to the next AG in turn and takes a chunk of 64
/// inodes (8 blocks) there when the AG has no free inode, so which step pays for a chunk
/// would depend on every directory made since the mount. [`XFS_PREMADE_DIRS`] directories
/// in a holder make about 16 chunks in each AG; the first directory of each chunk is kept
/// (in `.layerspec-inode-chunks`, beside the driver's directory, which is all that is
/// observed), so the chunk stays, and the rest are removed. Every AG then has over a
/// thousand free inodes, and no step of a scenario needs a chunk.
fn xfs_make_inode_chunks(log: &mut Log, at: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let chunk = |p: &Path| -> io::Result<u64> { Ok(std::fs::symlink_metadata(p)?.ino() >> 6) };
    let hold = at.join(".layerspec-inodes");
    let keep = hold.join("keep");
    std::fs::create_dir(&hold)?;
    std::fs::create_dir(&keep)?;
    let mut kept: std::collections::BTreeSet<u64> = [chunk(at)?, chunk(&keep)?].into();
    let mut rest = Vec::new();
    for i in 0..XFS_PREMADE_DIRS {
        let dir = hold.join(i.to_string());
        std::fs::create_dir(&dir)?;
        if kept.insert(chunk(&dir)?) {
            std::fs::rename(&dir, keep.join(i.to_string()))?;
        } else {
            rest.push(dir);
        }
    }
    for dir in &rest {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(&keep, at.join(".layerspec-inode-chunks"))?;
    std::fs::remove_dir(&hold)?;
    log.note(format!(
        "made {XFS_PREMADE_DIRS} directories in {}, kept one per inode chunk ({} chunks)",
        at.display(),
        kept.len()
    ));
    Ok(())
}

/// The directories [`xfs_make_inode_chunks`] makes (the model counts the chunks they take).
const XFS_PREMADE_DIRS: u64 = layerspec_model::XFS_PREMADE_DIRS;

/// Mounts a filesystem image through a loop device (util-linux sets autoclear, so the
/// device goes with the mount).
fn loop_mount(log: &mut Log, img: &Path, at: &Path) -> io::Result<()> {
    run(
        log,
        Command::new("mount").args(["-o", "loop"]).arg(img).arg(at),
    )
}

/// The `mkfs.ext4` of an ext4 backing, whose layout the model's `Ext4Geometry` follows:
/// 4 KiB blocks, no journal, `-N inodes` if given.
fn mkfs_ext4(img: &Path, inodes: Option<u64>) -> Command {
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args([
        "-q",
        "-F",
        "-b",
        "4096",
        "-E",
        "nodiscard",
        "-O",
        "^has_journal",
    ]);
    if let Some(n) = inodes {
        mkfs.args(["-N", &n.to_string()]);
    }
    mkfs.arg(img);
    mkfs
}

fn make_image(img: &Path, size: &str) -> io::Result<()> {
    let bytes = parse_size(size).ok_or_else(|| io::Error::other(format!("bad size `{size}`")))?;
    std::fs::File::create(img)?.set_len(bytes)
}

/// `"256M"` -> bytes: a decimal number with an optional `K`, `M`, `G` or `T` suffix
/// (powers of 1024); `None` for anything else, and for a size past `u64`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 10),
        'M' | 'm' => (&s[..s.len() - 1], 20),
        'G' | 'g' => (&s[..s.len() - 1], 30),
        'T' | 't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Runs a helper program from the sandbox thread (so it shares the namespace).
pub fn run(log: &mut Log, cmd: &mut Command) -> io::Result<()> {
    log.note(format!("{cmd:?}"));
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// What this process has attached and not let go of: device-mapper devices named
/// `layerspec-<own pid>-...` and loop devices backed by files in its temporary
/// directories. Empty between runs when every driver cleaned up after itself. Loop
/// devices with autoclear may go a moment after their last user closes (the kernel may
/// defer it): this looks again for up to a second before it reports one.
pub fn leftovers() -> Vec<String> {
    let mine = format!("{PREFIX}{}-", std::process::id());
    let tmp = std::env::temp_dir();
    let look = || {
        let mut left: Vec<String> = crate::dm::Control::open()
            .and_then(|c| c.list().map_err(|e| io::Error::other(e.to_string())))
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, _)| n.starts_with(&mine))
            .map(|(n, _)| format!("dm device {n}"))
            .collect();
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file"))
                else {
                    continue;
                };
                let backing = backing.trim();
                let ours = Path::new(backing)
                    .strip_prefix(&tmp)
                    .ok()
                    .and_then(|r| r.components().next())
                    .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(&mine));
                if ours {
                    left.push(format!("/dev/{name} ({backing})"));
                }
            }
        }
        left.sort();
        left
    };
    let mut left = look();
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = look();
    }
    left
}

/// Removes what killed runs left: the temporary directories of layerspec processes that
/// are gone — only those holding a layerspec marker whose lock is free ([`orphaned`]; a
/// directory that merely has the name is left alone) — and the loop devices backed by
/// files in them. Returns what it removed.
pub fn sweep() -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut log = Log::default();
    let tmp = std::env::temp_dir();
    // Device-mapper devices first: they hold the loop devices open.
    removed.extend(
        crate::dm::sweep()
            .into_iter()
            .map(|n| format!("dm device {n}")),
    );
    let mut orphans: BTreeMap<String, std::fs::File> = BTreeMap::new();
    for e in std::fs::read_dir(&tmp)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        if let Some(lock) = orphaned(&e.path()) {
            orphans.insert(name, lock);
        }
    }
    // Then loop devices: their backing files live in the directories.
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
                continue;
            };
            let backing = backing.trim();
            let in_orphan = Path::new(backing)
                .strip_prefix(&tmp)
                .ok()
                .and_then(|r| r.components().next())
                .is_some_and(|c| orphans.contains_key(&*c.as_os_str().to_string_lossy()));
            if in_orphan && sys::loop_detach(&mut log, &Path::new("/dev").join(&name)).is_ok() {
                removed.push(format!("/dev/{name} ({backing})"));
            }
        }
    }
    // A docker backend's daemon a killed run left (its sandbox thread died with the
    // process, but dockerd's managed containerd and shims may linger): its pid is in the
    // directory, and it is killed only if that pid still runs dockerd.
    for name in orphans.keys() {
        let pidfile = tmp.join(name).join(crate::docker::PID_FILE);
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == "dockerd") && sys::kill(pid, libc::SIGKILL).is_ok()
        {
            removed.push(format!("dockerd pid {pid} ({})", pidfile.display()));
        }
    }
    // What dockerd started and left running: its containerd and the containers' shims
    // (`containerd-shim-runc-v2 ... -address <dir>/...`: shims detach, so a killed daemon
    // leaves them), and each shim's children, the containers' processes.
    for name in orphans.keys() {
        removed.extend(kill_referencing(&tmp.join(name)));
    }
    for name in orphans.keys() {
        let p = tmp.join(name);
        if std::fs::remove_dir_all(&p).is_ok() {
            removed.push(p.display().to_string());
        }
    }
    removed.sort();
    Ok(removed)
}

/// SIGKILLs every process whose command line names a path under `dir`, and the children of
/// each (a containerd shim's container), children first. Returns what it killed.
fn kill_referencing(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let procs: Vec<(u32, u32, Vec<u8>)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces, so count from the `)`.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid, cmdline))
        })
        .collect();
    let mut killed = Vec::new();
    let own = std::process::id();
    for (pid, _, cmdline) in &procs {
        let names_dir = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg.windows(needle.len()).any(|w| w == needle));
        if !names_dir || *pid == own {
            continue;
        }
        for (child, ppid, _) in &procs {
            if ppid == pid && sys::kill(*child, libc::SIGKILL).is_ok() {
                killed.push(format!("pid {child} (a child of pid {pid})"));
            }
        }
        if sys::kill(*pid, libc::SIGKILL).is_ok() {
            let cmd = String::from_utf8_lossy(cmdline).replace('\0', " ");
            killed.push(format!("pid {pid} ({})", cmd.trim()));
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_device_left_attached_is_reported_until_it_goes() {
        let dir = temp_dir().unwrap();
        let img = dir.join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut log = Log::default();
        let (dev, handle) = match sys::loop_attach(&mut log, &img) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("skipped: no loop device here ({e})");
                remove_temp_dir(&dir).unwrap();
                return;
            }
        };
        let left = leftovers();
        assert!(
            left.iter()
                .any(|l| l.starts_with(&format!("{} ", dev.display()))),
            "{left:?}"
        );
        // Autoclear: closing the last handle detaches it.
        drop(handle);
        let left = leftovers();
        remove_temp_dir(&dir).unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    /// The model's `Ext4Geometry` against what `mkfs.ext4` (as the ext4 backing runs it)
    /// makes, read back with `dumpe2fs -h`: blocks, free blocks and inodes, over sizes from
    /// 1 MiB to 1 TiB (one group, a cut last group, the mke2fs.conf size types, many
    /// groups) and inode counts from 16 to one per KiB (smaller groups).
    #[test]
    fn ext4_geometry_is_what_mkfs_makes() {
        if Command::new("dumpe2fs").arg("-V").output().is_err() {
            eprintln!("skipped: no e2fsprogs here");
            return;
        }
        const K: u64 = 1 << 10;
        const M: u64 = 1 << 20;
        const G: u64 = 1 << 30;
        let cases: &[(u64, Option<u64>)] = &[
            (M, None),
            (2 * M, None),
            (3 * M - 4 * K, None),
            (3 * M, None),
            (16 * M, None),
            (64 * M, None),
            (100 * M, None),
            (128 * M, None),
            (128 * M + 200 * K, None),
            (128 * M + 2 * M, None),
            (256 * M, None),
            (384 * M + 4 * K, None),
            (511 * M, None),
            (512 * M, None),
            (G + 100 * K, None),
            (3 * G, None),
            (10 * G, None),
            (100 * G, None),
            (1 << 40, None),
            (16 * M, Some(16)),
            (16 * M, Some(16 * K)),
            (64 * M, Some(100)),
            (64 * M, Some(64 * K)),
            (256 * M, Some(1000)),
            (256 * M, Some(5000)),
            (256 * M, Some(256 * K)),
            (G, Some(M)),
        ];
        // And sizes and inode counts drawn from a fixed seed (a 4 KiB multiple from 1 MiB
        // to 4 GiB; every third with `-N` of 16 up to one per 4 KiB).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases = cases.to_vec();
        for i in 0..40 {
            let bytes = (M + next() % (4 * G)) & !(4 * K - 1);
            let inodes = (i % 3 == 0).then(|| 16 + next() % (bytes / (4 * K) - 16));
            cases.push((bytes, inodes));
        }
        let dir = temp_dir().unwrap();
        let img = dir.join("img");
        let mut wrong = Vec::new();
        for &(bytes, inodes) in &cases {
            let model = layerspec_model::Ext4Geometry::new(bytes, inodes);
            let _ = std::fs::remove_file(&img);
            std::fs::File::create(&img).unwrap().set_len(bytes).unwrap();
            let made = mkfs_ext4(&img, inodes).output().unwrap();
            let real = if made.status.success() {
                let out = Command::new("dumpe2fs")
                    .arg("-h")
                    .arg(&img)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let field = |name: &str| -> u64 {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or_else(|| panic!("no `{name}` in {text}"))
                };
                Some((
                    field("Block count:"),
                    field("Free blocks:"),
                    field("Inode count:"),
                ))
            } else {
                None
            };
            let model = model.ok().map(|g| (g.blocks, g.free_blocks, g.inodes));
            if model != real {
                wrong.push(format!(
                    "{bytes} bytes, inodes {inodes:?}: model {model:?}, mkfs {real:?}"
                ));
            }
        }
        remove_temp_dir(&dir).unwrap();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// The model's `XfsGeometry` against `mkfs.xfs` and the mount, as the xfs backing makes
    /// them (inode chunks made): `statfs`'s free blocks once the fixture's removals are
    /// done, over sizes from mkfs's smallest (300 MiB) to 1 TiB (odd sizes, a last AG
    /// shorter than the rest, a log past the 16384-block minimum).
    #[test]
    fn xfs_geometry_is_what_mkfs_and_the_mount_make() {
        if Command::new("mkfs.xfs").arg("-V").output().is_err() {
            eprintln!("skipped: no xfsprogs here");
            return;
        }
        if !crate::probe::is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        const M: u64 = 1 << 20;
        const G: u64 = 1 << 30;
        let sizes = [
            300 * M,
            300 * M + 4096,
            300 * M + 12288,
            512 * M,
            796_442_624,
            G,
            3 * G,
            10 * G,
            129 * G,
            1 << 40,
        ];
        let mut wrong = Vec::new();
        for bytes in sizes {
            let g = layerspec_model::XfsGeometry::new(bytes).unwrap();
            let want = g.free_at_mount - g.fixture_blocks();
            let sandbox = Sandbox::new(BackingFs::Xfs {
                size: bytes.to_string(),
            })
            .unwrap();
            let got = sandbox.run(move |inside| -> io::Result<u64> {
                // The fixture's removed directories are freed in the background
                // (`xfs_inodegc`): wait for the count to settle at the model's.
                let mut free = 0;
                for _ in 0..100 {
                    free = sys::statvfs_free_blocks(&inside.root)?;
                    if free == want {
                        break;
                    }
                    sys::sync(&mut inside.log);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(free)
            });
            let got = got.unwrap();
            if got != want {
                wrong.push(format!("{bytes} bytes: model {want} free, statfs {got}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
