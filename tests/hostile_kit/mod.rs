//! What the hostile-input tests share (issue 9): a canary tree outside every sandbox and its
//! byte-for-byte snapshot, scenario templates rendered against it, and the `layerspec`
//! binary run as a child with a private `TMPDIR`, resource limits and a deadline.
//!
//! Layout of one case, all removed when its [`Case`] drops (a panic included):
//!
//! ```text
//! $TMPDIR/canary-<pid>-<n>/            the canary (its name never starts with `layerspec-`)
//! $TMPDIR/hostile-<pid>-<n>/case/      the rendered scenario file
//! $TMPDIR/hostile-<pid>-<n>/tmp/       the child's TMPDIR: its sandboxes go here, nothing
//!                                      may be left in it after the child exits
//! ```

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `../` repeated: enough to reach `/` from any directory a sandbox makes.
pub const UP: &str = "../../../../../../../../../../../../../../../../../../../../\
../../../../../../../../../../../../../../../../../../../../";

/// Deadline of a `check`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Address space of a child: a scenario may not make `layerspec` allocate without bound.
const CHILD_AS_BYTES: u64 = 4 << 30;
/// Largest file a child may write: a scenario may not fill the machine's tmpfs or disk. A
/// write past it fails with EFBIG (SIGXFSZ is ignored in the child).
const CHILD_FSIZE_BYTES: u64 = 1 << 30;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One hostile case: a fresh canary and a fresh workspace.
pub struct Case {
    /// The canary directory.
    pub canary: PathBuf,
    /// The workspace (`case/`, `tmp/`).
    pub work: PathBuf,
}

impl Case {
    /// Makes the canary tree and an empty workspace.
    pub fn new() -> Case {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tmp = std::env::temp_dir();
        let case = Case {
            canary: tmp.join(format!("canary-{pid}-{n}")),
            work: tmp.join(format!("hostile-{pid}-{n}")),
        };
        for d in [&case.canary, &case.work] {
            if d.exists() {
                let _ = fs::remove_dir_all(d);
            }
        }
        fs::create_dir_all(case.work.join("case")).expect("workspace");
        fs::create_dir_all(case.child_tmp()).expect("child TMPDIR");
        make_canary(&case.canary).expect("canary tree");
        case
    }

    /// The child's `TMPDIR`.
    pub fn child_tmp(&self) -> PathBuf {
        self.work.join("tmp")
    }

    /// Renders `template` (`@CANARY@`, `@UP@`) into `case/<name>` and returns its path.
    pub fn write_scenario(&self, name: &str, template: &str) -> PathBuf {
        let path = self.work.join("case").join(name);
        fs::write(&path, render(template, &self.canary)).expect("write scenario");
        path
    }

    /// What the child left in its `TMPDIR`: sandbox directories of any process
    /// (`layerspec-*`) and anything else (an escape by a relative id lands here).
    pub fn tmp_leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.child_tmp()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("layerspec-") {
                    out.push(format!("sandbox directory left behind: $TMPDIR/{name}"));
                } else {
                    out.push(format!("stray entry in the child's $TMPDIR: {name}"));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        for d in [&self.canary, &self.work] {
            // An attack may have left a directory without permissions; root removes it
            // anyway, but make it searchable first for a non-root run.
            let _ = make_writable(d);
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn make_writable(d: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(d)?;
    if m.is_dir() {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        for e in fs::read_dir(d)?.flatten() {
            let _ = make_writable(&e.path());
        }
    }
    Ok(())
}

/// Replaces `@CANARY@` with the canary's absolute path and `@UP@` with [`UP`].
pub fn render(template: &str, canary: &Path) -> String {
    template
        .replace("@CANARY@", &canary.display().to_string())
        .replace("@UP@", UP)
}

/// The canary tree: files with content and modes, directories with various modes, a
/// `user.*` xattr, a symlink, a hard link, a FIFO, and `victim/` (what deletion attacks
/// aim at).
fn make_canary(c: &Path) -> io::Result<()> {
    fs::create_dir(c)?;
    fs::set_permissions(c, fs::Permissions::from_mode(0o755))?;
    let file = |rel: &str, data: &[u8], mode: u32| -> io::Result<()> {
        let p = c.join(rel);
        fs::write(&p, data)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
    };
    let dir = |rel: &str, mode: u32| -> io::Result<()> {
        let p = c.join(rel);
        fs::create_dir(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
    };
    file("file.txt", b"canary\n", 0o644)?;
    file("secret", b"do not read me\n", 0o600)?;
    file("exec.sh", b"#!/bin/sh\nexit 0\n", 0o755)?;
    dir("dir0755", 0o755)?;
    file("dir0755/inner.txt", b"inner\n", 0o644)?;
    dir("dir0700", 0o700)?;
    dir("dir1777", 0o1777)?;
    dir("victim", 0o755)?;
    file("victim/keep.txt", b"keep\n", 0o644)?;
    dir("victim/sub", 0o750)?;
    file("xattr.txt", b"xattr\n", 0o640)?;
    // A filesystem without user xattrs (tmpfs before 6.6) has a canary without one.
    match set_xattr(&c.join("xattr.txt"), "user.canary", b"1") {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        other => other?,
    }
    symlink("file.txt", c.join("link"))?;
    fs::hard_link(c.join("file.txt"), c.join("hardlink"))?;
    let fifo = CString::new(c.join("fifo").as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let cp = CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    let cn = CString::new(name).expect("no NUL");
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every xattr of `p` (not following a symlink), in every namespace this process can read.
fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let cp = CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    let mut names = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).expect("split at NUL");
        let mut val = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let m = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len())
        };
        let v = if m < 0 {
            format!("<unreadable: {}>", io::Error::last_os_error()).into_bytes()
        } else {
            val[..m as usize].to_vec()
        };
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

/// One path of the canary as it is on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    kind: &'static str,
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    rdev: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The canary, path by path (`""` is its root).
pub type Snapshot = BTreeMap<String, Node>;

/// Takes the canary's snapshot: every path (no symlink followed), kind, inode, mode, owner,
/// link count, size, content of regular files, symlink target, xattrs, mtime and ctime
/// (which moves on chmod, chown, xattr and link changes even when they are undone).
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn walk(p: &Path, rel: &str, out: &mut Snapshot) {
    use std::os::unix::fs::FileTypeExt;
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => {
            out.insert(
                rel.to_string(),
                Node {
                    kind: "unreadable",
                    dev: 0,
                    ino: 0,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    nlink: 0,
                    size: 0,
                    rdev: e.raw_os_error().unwrap_or(0) as u64,
                    content: None,
                    target: None,
                    xattrs: BTreeMap::new(),
                    mtime: (0, 0),
                    ctime: (0, 0),
                },
            );
            return;
        }
    };
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "socket"
    };
    // Never open anything but a regular file (a FIFO would block), and never more of it
    // than the canary wrote plus a little (an attack may have grown it).
    let content = ft.is_file().then(|| {
        let mut buf = Vec::new();
        match fs::File::open(p) {
            Ok(f) => {
                let _ = f.take(1 << 20).read_to_end(&mut buf);
            }
            Err(e) => buf = format!("<unreadable: {e}>").into_bytes(),
        }
        buf
    });
    out.insert(
        rel.to_string(),
        Node {
            kind,
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            size: m.size(),
            rdev: m.rdev(),
            content,
            target: ft
                .is_symlink()
                .then(|| fs::read_link(p).unwrap_or_default()),
            xattrs: xattrs(p),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        },
    );
    if ft.is_dir() {
        let mut names: Vec<_> = match fs::read_dir(p) {
            Ok(rd) => rd.flatten().map(|e| e.file_name()).collect(),
            Err(_) => return,
        };
        names.sort();
        for n in names {
            let r = format!("{rel}/{}", n.to_string_lossy());
            walk(&p.join(&n), &r, out);
        }
    }
}

/// How `after` differs from `before`, one line per path and field.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let name = |p: &str| {
        if p.is_empty() {
            "<canary root>".to_string()
        } else {
            p.to_string()
        }
    };
    for (p, b) in before {
        match after.get(p) {
            None => out.push(format!("{}: removed", name(p))),
            Some(a) if a != b => {
                let mut fields = Vec::new();
                macro_rules! cmp {
                    ($($f:ident),*) => {$(
                        if a.$f != b.$f {
                            fields.push(format!(
                                concat!(stringify!($f), " {:?} -> {:?}"),
                                short(&b.$f),
                                short(&a.$f)
                            ));
                        }
                    )*};
                }
                cmp!(
                    kind, dev, ino, mode, uid, gid, nlink, size, rdev, content, target, xattrs,
                    mtime, ctime
                );
                out.push(format!("{}: {}", name(p), fields.join(", ")));
            }
            Some(_) => {}
        }
    }
    for (p, a) in after {
        if !before.contains_key(p) {
            out.push(format!(
                "{}: created ({}, mode {:o}, {} bytes)",
                name(p),
                a.kind,
                a.mode,
                a.size
            ));
        }
    }
    out
}

fn short<T: std::fmt::Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

/// How a child ended.
#[derive(Debug)]
pub struct Ran {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did (ours after the deadline included).
    pub signal: Option<i32>,
    /// Whether it was killed at the deadline.
    pub timed_out: bool,
    /// Its stdout (the first MiB).
    pub stdout: String,
    /// Its stderr (the first MiB).
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// Its peak resident memory (KiB).
    pub peak_rss_kib: u64,
}

impl Ran {
    /// `exit 2`, `signal 9 (killed at the 120 s deadline)`, ...
    pub fn describe(&self) -> String {
        let mut s = match (self.code, self.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "no status".to_string(),
        };
        if self.timed_out {
            s.push_str(" (at the deadline: it did not finish)");
        }
        s
    }

    /// The last lines of stderr, for a report.
    pub fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let from = lines.len().saturating_sub(6);
        lines[from..].join("\n      ")
    }
}

/// Runs `layerspec` with `args`, `TMPDIR` set to `tmp`, in its own process group, with an
/// address-space and a file-size limit, and kills it (its group) at `timeout`.
// The child is reaped by wait4(2) below, which `Child` does not know about.
#[allow(clippy::zombie_processes)]
pub fn layerspec(args: &[&std::ffi::OsStr], tmp: &Path, timeout: Duration) -> Ran {
    layerspec_limited(args, tmp, timeout, true)
}

/// Like [`layerspec`]; `limit_as` false leaves the address space unlimited (the VM tier's
/// qemu reserves more than the limit for its guest and code buffer).
// The child is reaped by wait4(2) below, which `Child` does not know about.
#[allow(clippy::zombie_processes)]
pub fn layerspec_limited(
    args: &[&std::ffi::OsStr],
    tmp: &Path,
    timeout: Duration,
    limit_as: bool,
) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerspec"));
    cmd.args(args)
        .env("TMPDIR", tmp)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = |r, v: u64| {
                let l = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(r, &l) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            };
            if limit_as {
                lim(libc::RLIMIT_AS, CHILD_AS_BYTES)?;
            }
            lim(libc::RLIMIT_FSIZE, CHILD_FSIZE_BYTES)?;
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn layerspec");
    let pid = child.id() as i32;
    let grab = |r: Option<Box<dyn Read + Send>>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::clone(&buf);
        if let Some(mut r) = r {
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut b = b.lock().expect("buffer");
                    if b.len() < 1 << 20 {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            });
        }
        buf
    };
    let out = grab(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = grab(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    // wait4(2), not `Child::try_wait`: it also gives the child's peak resident memory.
    let mut timed_out = false;
    let mut raw = 0;
    // SAFETY: a zeroed rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "wait4: {e}");
            continue;
        }
        if !timed_out && start.elapsed() > timeout {
            timed_out = true;
            // SAFETY: kill(2) on the process group this call made (its leader is our
            // child, not reaped yet).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::ExitStatus::from_raw(raw);
    let elapsed = start.elapsed();
    // The readers end when the pipes close; a grandchild holding one open is not waited for
    // long.
    let settle = Instant::now();
    while Arc::strong_count(&out) + Arc::strong_count(&err) > 2
        && settle.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text =
        |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().expect("buffer")).into_owned();
    Ran {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: text(&out),
        stderr: text(&err),
        elapsed,
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    }
}

/// Whether `line` is a located error about `file`: `<file>:<line>:<col>: <message>`.
pub fn located(line: &str, file: &Path) -> bool {
    let Some(rest) = line.strip_prefix(&format!("{}:", file.display())) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let num =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    let (l, c, m) = (parts.next(), parts.next(), parts.next());
    num(l) && num(c) && m.is_some_and(|m| m.starts_with(' ') && m.trim().len() > 1)
}

/// The failed rows of `run --json` output: `driver/backend: first line of the detail`.
pub fn failed_rows(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("status").and_then(|s| s.as_str()) == Some("fail"))
        .map(|v| {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
            let detail = s("detail");
            let first: String = detail
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect();
            format!("{}/{}: {first}", s("driver"), s("backend"))
        })
        .collect()
}

/// Rows of `run --json` output that pass on a real backend while the model's row of the
/// same scenario and driver failed (the contract: such a row is never a pass).
pub fn passes_over_failed_model(stdout: &str) -> Vec<String> {
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let s = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string()
    };
    let mut out = Vec::new();
    for m in rows
        .iter()
        .filter(|v| s(v, "backend") == "model" && s(v, "status") == "fail")
    {
        for r in rows.iter().filter(|v| {
            s(v, "backend") != "model"
                && s(v, "status") == "pass"
                && s(v, "scenario") == s(m, "scenario")
                && s(v, "driver") == s(m, "driver")
        }) {
            out.push(format!(
                "{}/{} passes while the model failed: {}",
                s(r, "driver"),
                s(r, "backend"),
                s(m, "detail").lines().next().unwrap_or("")
            ));
        }
    }
    out
}

/// The backends that ran (rows neither skipped nor unparsable) in `run --json` output, and
/// the lines that are not JSON objects of the contract.
pub fn backends_ran(stdout: &str) -> (Vec<String>, Vec<String>) {
    let mut ran = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    for l in stdout.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => {
                let status = v.get("status").and_then(|s| s.as_str());
                let backend = v.get("backend").and_then(|s| s.as_str());
                match (status, backend) {
                    (Some("skip"), Some(_)) => {}
                    (Some("pass" | "fail"), Some(b)) => {
                        ran.insert(b.to_string());
                    }
                    _ => bad.push(l.to_string()),
                }
            }
            Err(_) => bad.push(l.to_string()),
        }
    }
    (ran.into_iter().collect(), bad)
}
