//! Docker's start of a container, as its root filesystem sees it: what `dockerd` 20.10 and
//! runc 1.1 look up, make and refuse in the container's merged root before its process runs.
//!
//! A start happens when Docker creates a container (`docker start` after `docker create`)
//! and at every `remount` (stop, then start). In order:
//!
//! 1. **dockerd's user lookup** (moby `daemon/oci_linux.go` `WithUser` → `getUser`): the
//!    paths `/etc/passwd` and `/etc/group` are resolved in the container's scope
//!    (`container.GetResourcePath` → `moby/sys/symlink` `FollowSymlinkInScope`). An `lstat`
//!    error other than ENOENT there fails the start; so does walking more than 255
//!    components ("evalSymlinksInScope: too many links", ELOOP here). Then `passwd` is read
//!    (runc `libcontainer/user` `GetExecUserPath` with the spec's empty user). A directory
//!    fails with EISDIR. When a line names uid 0, `group` is read as well, and a directory
//!    there fails too.
//! 2. **runc's mounts** (runc 1.1 `libcontainer/rootfs_linux.go` `mountToRootfs`), for the
//!    mounts of Docker's spec that lie in the root filesystem itself:
//!    - `proc` at `/proc` and `sysfs` at `/sys`: an existing non-directory, a symlink
//!      included, fails ("must be mounted on ordinary directory", ENOTDIR here). A missing
//!      one is made with `MkdirAll` (0755).
//!    - the `/dev` tmpfs: a missing one is made (0755); a non-directory fails (ENOTDIR).
//!    - the bind mount of `/etc/hostname`: the path is resolved in scope (`SecureJoin`).
//!      When nothing is there, its parents and an empty file (0755) are made
//!      (`createIfNotExists`); a directory there fails (ENOTDIR).
//!
//!    The other mounts (`/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys/fs/cgroup`, the idle
//!    binary) lie inside the `/dev` tmpfs or sysfs. A container with `--network none`, as
//!    layerspec runs them, gets no `/etc/hosts` or `/etc/resolv.conf` mount.
//! 3. **runc's user setup** (`init_linux.go` `setupUser`, user `0:0`): `/etc/group` is
//!    opened by the kernel's lookup inside the container and read; a directory fails
//!    (EISDIR).
//!
//! What runc made before a failure stays. Docker then unmounts the container's root (its
//! `Put`), and the container is stopped.
//!
//! Each rule was seen on dockerd 20.10.24 with runc 1.1.5 here: a probe scenario for every
//! case, run with `--backend docker` (`scenarios/init/start_*.toml`; the first was `fuzz
//! --driver overlay --backend docker --seed 1`, trace 180).
//!
//! Two cases are refused rather than predicted ([`StartError::Unmodelled`]):
//! - A `/dev` that is a symlink. runc mounts the tmpfs where it points, then makes
//!   `/dev/ptmx` through the symlink as the *host* resolves it: outside the container.
//! - A `passwd` or `group` line of 64 KiB or more, or a file over 16 MiB. Go's
//!   `bufio.Scanner` fails on the line with an error that has no errno.

use crate::errno::Errno;
use crate::step::{FileOp, Kind, Outcome, Value};

/// Why a start failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The start fails with this errno: the container is stopped.
    Errno(Errno),
    /// The model does not say what the start does.
    Unmodelled(&'static str),
}

impl From<Errno> for StartError {
    fn from(e: Errno) -> Self {
        StartError::Errno(e)
    }
}

/// Why a start with `/dev` a symlink is refused.
pub const DEV_SYMLINK: &str = "a start with `/dev` a symlink: runc makes `/dev/ptmx` through \
    it as the host resolves it, outside the container; not run";

const LONG_LINE: &str = "a start reading an `/etc/passwd` or `/etc/group` with a line of 64 KiB \
    or more: Go's line scanner fails without an errno";

const LARGE_FILE: &str = "a start reading an `/etc/passwd` or `/etc/group` over 16 MiB";

/// The longest line Go's `bufio.Scanner` takes (`bufio.MaxScanTokenSize`), less one.
const MAX_LINE: usize = 64 * 1024 - 1;

/// The largest `passwd` or `group` the model reads.
const MAX_READ: u64 = 16 << 20;

/// The mode runc makes mount points with (`MkdirAll(dest, 0o755)`, `OpenFile(.., 0o755)`).
const MODE: u32 = 0o755;

/// Whether a start is refused before it runs ([`DEV_SYMLINK`]): the real backends ask this
/// before they let Docker start a container.
pub fn refused(run: &mut impl FnMut(&FileOp) -> Outcome) -> Option<&'static str> {
    match lstat(run, "/dev") {
        Ok(Some(Kind::Symlink)) => Some(DEV_SYMLINK),
        _ => None,
    }
}

/// Docker's start, through `run`, a step runner on the container's merged root. `Ok`: the
/// container runs.
pub fn start(mut run: impl FnMut(&FileOp) -> Outcome) -> Result<(), StartError> {
    let run = &mut run;
    if let Some(why) = refused(run) {
        return Err(StartError::Unmodelled(why));
    }
    // 1. dockerd's `getUser`.
    let passwd = in_scope(run, "/etc/passwd", Walk::Docker)?;
    let group = in_scope(run, "/etc/group", Walk::Docker)?;
    if let Some(data) = read_all(run, &passwd)? {
        if root_user_named(&data)? {
            read_all(run, &group)?;
        }
    }
    // 2. runc's mounts.
    for dir in ["/proc", "/dev", "/sys"] {
        match lstat(run, dir)? {
            Some(Kind::Dir) => {}
            Some(_) => return Err(Errno::ENOTDIR.into()),
            None => {
                run(&FileOp::Mkdir {
                    path: dir.into(),
                    mode: Some(MODE),
                })?;
            }
        }
    }
    let hostname = in_scope(run, "/etc/hostname", Walk::Runc)?;
    match lstat(run, &hostname)? {
        Some(Kind::Dir) => return Err(Errno::ENOTDIR.into()),
        Some(_) => {}
        None => {
            crate::init_layer::mkdir_all(run, crate::path::parent(&hostname))?;
            run(&FileOp::Create {
                path: hostname,
                mode: Some(MODE),
            })?;
        }
    }
    // 3. runc's `setupUser`: the kernel's own lookup, any open error a missing file.
    read_all(run, "/etc/group")?;
    Ok(())
}

/// `lstat`: the kind, `None` when nothing is there.
fn lstat(run: &mut impl FnMut(&FileOp) -> Outcome, path: &str) -> Result<Option<Kind>, Errno> {
    match run(&FileOp::Stat { path: path.into() }) {
        Ok(Value::Stat(s)) => Ok(Some(s.kind)),
        Ok(_) => Ok(None),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a whole file for Go's line scanner: `None` when it cannot be opened; a
/// directory's EISDIR is the read's error.
fn read_all(
    run: &mut impl FnMut(&FileOp) -> Outcome,
    path: &str,
) -> Result<Option<Vec<u8>>, StartError> {
    let size = match run(&FileOp::Stat { path: path.into() }) {
        Ok(Value::Stat(s)) if s.kind == Kind::Dir => return Err(Errno::EISDIR.into()),
        Ok(Value::Stat(s)) if s.kind == Kind::File => s.size,
        // A symlink (the kernel's lookup follows it) or nothing: the read decides.
        _ => 0,
    };
    if size > MAX_READ {
        return Err(StartError::Unmodelled(LARGE_FILE));
    }
    let data = match run(&FileOp::Read {
        path: path.into(),
        offset: 0,
        len: Some(MAX_READ + 1),
    }) {
        Ok(Value::Bytes(b)) => b,
        Ok(_) => return Err(StartError::Unmodelled(LARGE_FILE)),
        Err(Errno::EISDIR) => return Err(Errno::EISDIR.into()),
        Err(_) => return Ok(None),
    };
    if data.len() as u64 > MAX_READ {
        return Err(StartError::Unmodelled(LARGE_FILE));
    }
    if data.split(|b| *b == b'\n').any(|l| l.len() > MAX_LINE) {
        return Err(StartError::Unmodelled(LONG_LINE));
    }
    Ok(Some(data))
}

/// Whether `passwd` has a user with uid 0 and a name: runc `ParsePasswdFilter` (each line
/// trimmed, split at `:`, a field that is no number read as 0) with `GetExecUser`'s filter
/// for the empty user (`u.Uid == 0`); the first match's name then makes it read `group`.
fn root_user_named(passwd: &[u8]) -> Result<bool, StartError> {
    let text = String::from_utf8_lossy(passwd);
    for line in text.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split(':');
        let name = fields.next().unwrap_or_default();
        let uid = fields.nth(1).map_or(0, go_atoi);
        if uid == 0 {
            return Ok(!name.is_empty());
        }
    }
    Ok(false)
}

/// Go's `strconv.Atoi` as runc's `parseParts` uses it (`*e, _ = strconv.Atoi(p)`): a
/// syntax error gives 0, an out-of-range number the nearest limit.
fn go_atoi(s: &str) -> i64 {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    s.parse::<i64>().unwrap_or(if s.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Which walk resolves a path in the container's scope.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// moby `FollowSymlinkInScope`: every component counts towards 255; only ENOENT is a
    /// missing component.
    Docker,
    /// `filepath-securejoin` `SecureJoin` (runc): only symlinks count towards 255; ENOTDIR
    /// is a missing component too.
    Runc,
}

/// `path` with every symlink resolved as if the container's root were `/`.
fn in_scope(
    run: &mut impl FnMut(&FileOp) -> Outcome,
    path: &str,
    walk: Walk,
) -> Result<String, Errno> {
    let mut rest = path.trim_start_matches('/').to_string();
    // The components taken so far, as written (they may hold `..` from a target).
    let mut done = String::new();
    let mut n = 0;
    while !rest.is_empty() {
        if n > 255 {
            return Err(Errno::ELOOP);
        }
        if walk == Walk::Docker {
            n += 1;
        }
        let (p, tail) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
        let (p, tail) = (p.to_string(), tail.to_string());
        rest = tail;
        if p.is_empty() {
            continue;
        }
        let clean = clean(&format!("/{done}{p}"));
        if clean == "/" {
            done.clear();
            continue;
        }
        let kind = match run(&FileOp::Stat {
            path: clean.clone(),
        }) {
            Ok(Value::Stat(s)) => Some(s.kind),
            Err(Errno::ENOENT) => None,
            Err(Errno::ENOTDIR) if walk == Walk::Runc => None,
            Err(e) => return Err(e),
            Ok(_) => None,
        };
        if kind != Some(Kind::Symlink) {
            done.push_str(&p);
            done.push('/');
            continue;
        }
        if walk == Walk::Runc {
            n += 1;
        }
        let target = match run(&FileOp::Readlink { path: clean })? {
            Value::Target(t) => t,
            _ => return Err(Errno::EINVAL),
        };
        if target.starts_with('/') {
            done.clear();
        }
        rest = format!("{target}/{rest}");
    }
    Ok(clean(&format!("/{done}")))
}

/// Go's `filepath.Clean` of an absolute path: `.` dropped, `..` taking the component
/// before (none above `/`), no trailing `/`.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_follows_go() {
        assert_eq!(clean("/a/../../b/./c/"), "/b/c");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("/x/.."), "/");
    }

    #[test]
    fn atoi_reads_as_runc_does() {
        assert_eq!(go_atoi("0"), 0);
        assert_eq!(go_atoi("-0"), 0);
        assert_eq!(go_atoi("x"), 0);
        assert_eq!(go_atoi(""), 0);
        assert_eq!(go_atoi("12"), 12);
        assert_eq!(go_atoi("99999999999999999999"), i64::MAX);
    }

    #[test]
    fn a_passwd_line_without_a_number_is_uid_0() {
        assert!(root_user_named(b"9t\n").unwrap());
        assert!(!root_user_named(b":x\n").unwrap());
        assert!(!root_user_named(b"a:x:1:1\n").unwrap());
        assert!(root_user_named(b"a:x:1:1\n root:x:0:0 \n").unwrap());
        assert!(!root_user_named(b"\n\n").unwrap());
    }
}
