//! The VM tier (README, "The VM tier"): the real backends run inside Debian's kernel
//! under qemu, as backend `vm`, where the host kernel lacks dm-thin, and as a second kernel
//! version for overlayfs.
//!
//! One boot serves a whole command: the host packs an initramfs ([`initramfs`]) with
//! busybox, the kernel's modules, this very binary and its shared libraries, the helper
//! programs the real drivers run, and the input files; `/init` loads the modules and runs
//! `layerspec guest <args>` ([`guest`]), whose results come back as JSON lines between two
//! markers ([`protocol`]) on a serial port of their own; the host watches qemu with a
//! timeout ([`qemu`]) and turns every way a boot can go wrong into a [`VmError`] that says
//! which. [`host`] uses that for `layerspec run` and `layerspec fuzz`.
//!
//! The guest binary is the running executable (`std::env::current_exe`, or
//! `LAYERSPEC_VM_BINARY`) with the libraries `ldd` lists for it, at the same paths: the
//! code under test exactly, no second build. A static build (`-C target-feature=+crt-static`)
//! works too: `ldd` lists nothing then.
//!
//! Everything a boot makes on the host lives in one directory, `$TMPDIR/layerspec-<pid>-vm-<n>`,
//! removed when the boot ends, fails or panics; qemu is killed then too, and when this
//! thread dies. What a killed run leaves is removed by [`layerspec_real::sweep`].
//!
//! Environment: `LAYERSPEC_VM_TIMEOUT` (seconds, the whole boot), `LAYERSPEC_VM_KERNEL`
//! (a release under `/boot`), `LAYERSPEC_VM_MEMORY` (MiB; default 4096, less on small
//! hosts), `LAYERSPEC_VM_CPUS`, `LAYERSPEC_VM_ACCEL` (`tcg`; `kvm` where it works),
//! `LAYERSPEC_VM_BINARY`, `LAYERSPEC_VM_APPEND` (more kernel parameters),
//! `LAYERSPEC_VM_KEEP` (keep the run's directory: initramfs, console.log, results.log;
//! printed on stderr).

pub mod guest;
pub mod host;
pub mod initramfs;
pub mod protocol;
pub mod qemu;

use initramfs::{shared_libs, Archive};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a guest command sent back.
#[derive(Clone, Debug)]
pub struct GuestOutput {
    /// The guest kernel's release.
    pub kernel: String,
    /// The JSON lines between the markers, in order.
    pub lines: Vec<Value>,
    /// The guest command's exit code.
    pub exit: u8,
    /// From qemu's start to the begin marker.
    pub boot: Duration,
    /// From qemu's start to the end.
    pub total: Duration,
}

/// Why a VM run gave no (complete) results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The VM tier cannot run here (no qemu, no kernel, ...): a skip, not a failure.
    Unavailable,
    /// Making the run's directory or initramfs failed.
    Setup,
    /// qemu did not start.
    NotStarted,
    /// The guest kernel panicked.
    Panic,
    /// qemu ended before the guest sent anything.
    NoResults,
    /// The guest began sending and stopped before the end marker (or sent a damaged
    /// stream).
    Cut,
    /// The timeout passed.
    TimedOut,
}

/// A failed VM run: what went wrong, in words, with the console's last lines, and the
/// lines that did come back.
#[derive(Clone, Debug)]
pub struct VmError {
    /// Which failure.
    pub failure: Failure,
    /// What to tell the user.
    pub message: String,
    /// Lines received before it went wrong.
    pub partial: Vec<Value>,
    /// The boot time, when the guest got that far.
    pub boot: Option<Duration>,
}

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VmError {}

impl VmError {
    fn new(failure: Failure, message: impl Into<String>) -> VmError {
        VmError {
            failure,
            message: message.into(),
            partial: Vec::new(),
            boot: None,
        }
    }
}

static IN_GUEST: AtomicBool = AtomicBool::new(false);

/// Whether `backend` runs `driver` in the VM, a whole command in one boot: backend `vm`,
/// and `docker` where dockerd's driver needs what this kernel lacks (devicemapper).
pub fn runs_in_vm(backend: &str, driver: layerspec_model::DriverKind) -> bool {
    backend == "vm" || (backend == "docker" && layerspec_real::docker_in_vm(driver))
}

/// Whether this process is `layerspec guest` (inside the VM).
pub fn in_guest() -> bool {
    IN_GUEST.load(Ordering::Relaxed)
}

/// Seconds from `LAYERSPEC_VM_TIMEOUT`, else `default`.
pub fn timeout_or(default: Duration) -> Duration {
    std::env::var("LAYERSPEC_VM_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

/// The directory of one boot, removed on drop; named with the sandbox prefix and this
/// process's id so that [`layerspec_real::sweep`] removes it after a kill.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> std::io::Result<RunDir> {
        layerspec_real::owned_temp_dir("vm-").map(RunDir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var_os("LAYERSPEC_VM_KEEP").is_some() {
            eprintln!("vm: kept {} (LAYERSPEC_VM_KEEP)", self.0.display());
            return;
        }
        let _ = layerspec_real::remove_temp_dir(&self.0);
    }
}

/// Helper programs the real drivers (and people debugging a guest) run: guest path, the
/// program's name on the host, and the names linked to it. Missing ones are left out: a
/// scenario that needs one fails with the error of running it.
const HELPERS: &[(&str, &str, &[&str])] = &[
    ("/usr/sbin/mke2fs", "mke2fs", &["mkfs.ext4"]),
    // The devicemapper driver runs `tune2fs -c -1 -i 0` on its base device, as Docker does.
    ("/usr/sbin/tune2fs", "tune2fs", &[]),
    ("/usr/sbin/mkfs.xfs", "mkfs.xfs", &[]),
    (
        "/usr/sbin/pdata_tools",
        "pdata_tools",
        &[
            "thin_check",
            "thin_delta",
            "thin_dump",
            "thin_ls",
            "thin_repair",
            "thin_restore",
            "thin_rmap",
        ],
    ),
    ("/usr/sbin/dmsetup", "dmsetup", &[]),
];

/// What the `docker` backend runs in the guest (devicemapper, which the host kernel may
/// lack): guest path and the program's name on the host. Debian's `docker.io` links
/// `docker-init` to tini's static build; the archive holds the file it names.
const DOCKER_PROGRAMS: &[(&str, &str)] = &[
    ("/usr/sbin/dockerd", "dockerd"),
    ("/usr/bin/containerd", "containerd"),
    (
        "/usr/bin/containerd-shim-runc-v2",
        "containerd-shim-runc-v2",
    ),
    ("/usr/sbin/runc", "runc"),
    ("/usr/bin/docker-init", "docker-init"),
    // The devicemapper driver reads its base device's UUID with `blkid -s UUID -o value`
    // (busybox's applet has no options).
    ("/usr/sbin/blkid", "blkid"),
];

/// mke2fs's configuration, copied into the guest when the host has one.
const MKE2FS_CONF: &str = "/etc/mke2fs.conf";

/// Kernel module parameters set in the guest.
fn module_params(ko: &Path) -> &'static str {
    match ko.file_name().and_then(|n| n.to_str()) {
        // A pool out of data space in `queue` mode holds the I/O for no_space_timeout
        // seconds (default 60) and then fails it; 1 s keeps such a scenario short with the
        // same outcome (the I/O fails, the pool goes out-of-data-space).
        Some("dm-thin-pool.ko") => "no_space_timeout=1",
        _ => "",
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `'…'` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What `/init` adds for dockerd: the cgroup2 hierarchy runc puts containers in, `/run`,
/// and `DOCKER_RAMDISK`, which makes runc move the container's root into place and chroot
/// (no `pivot_root`, which cannot leave the initramfs's rootfs: moby `daemon/runtime_unix.go`
/// sets `NoPivotRoot` from it).
const DOCKER_INIT: &str = r#"mkdir -p /sys/fs/cgroup /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 run /run
export DOCKER_RAMDISK=true
ulimit -n 1048576
"#;

/// The guest's `/init`: mounts, modules, then `layerspec guest <args>` with its stdout on
/// the results port, then power off. `docker`: also what dockerd needs ([`DOCKER_INIT`]).
fn init_script(args: &[String], lib_dirs: &[String], docker: bool) -> String {
    let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/ TMPDIR=/tmp
export LD_LIBRARY_PATH={libs}
# No udev in the guest: device-mapper must not wait for it.
export DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=1777,size=90% tmp /tmp
while read -r ko params; do
  insmod "$ko" $params || echo "layerspec-vm: insmod $ko failed"
done < /etc/layerspec-modules
{docker}cd /work
/layerspec guest {args} > /dev/ttyS1
echo "layerspec-vm: guest exit $?"
sync
poweroff -f
"#,
        libs = lib_dirs.join(":"),
        args = args.join(" "),
        docker = if docker { DOCKER_INIT } else { "" },
    )
}

/// The guest path of an input file: relative paths (without `..`) stay as they are, below
/// the guest's working directory `/work`; others go below `/work/inputs` with their
/// absolute path.
pub fn guest_path(host: &Path) -> PathBuf {
    let plain = host.is_relative()
        && host
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        return host.to_path_buf();
    }
    let abs = std::fs::canonicalize(host)
        .or_else(|_| std::path::absolute(host))
        .unwrap_or_else(|_| host.to_path_buf());
    let mut out = PathBuf::from("inputs");
    for c in abs.components() {
        if let std::path::Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

fn build(
    dir: &Path,
    kit: &layerspec_real::VmKit,
    args: &[String],
    files: &[(PathBuf, PathBuf)],
    docker: bool,
) -> std::io::Result<(PathBuf, u64)> {
    let mut a = Archive::default();
    for d in [
        "proc", "sys", "dev", "tmp", "work", "etc", "usr/sbin", "usr/bin", "sbin",
    ] {
        a.dir(Path::new(d))?;
    }
    // The kernel opens /dev/console for /init before devtmpfs is mounted.
    a.char_dev(Path::new("dev/console"), 5, 1)?;
    a.symlink(Path::new("etc/mtab"), "/proc/mounts")?;
    a.file(Path::new("bin/busybox"), &kit.busybox)?;
    let mut list = String::new();
    for ko in &kit.modules {
        a.file(ko, ko)?;
        list.push_str(&format!("{} {}\n", ko.display(), module_params(ko)));
    }
    a.data(Path::new("etc/layerspec-modules"), list, 0o644)?;
    let mut later = String::new();
    for ko in &kit.xfs_modules {
        a.file(ko, ko)?;
        later.push_str(&format!("{}\n", ko.display()));
    }
    a.data(Path::new(guest::XFS_MODULES), later, 0o644)?;
    let exe = match std::env::var_os("LAYERSPEC_VM_BINARY") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?,
    };
    a.file(Path::new("layerspec"), &stripped(&exe, dir))?;
    let mut programs = vec![exe];
    for (at, name, links) in HELPERS {
        let Some(p) = find_program(name) else {
            continue;
        };
        a.file(Path::new(at), &p)?;
        for l in *links {
            a.symlink(&Path::new(at).with_file_name(l), name)?;
        }
        programs.push(p);
    }
    if docker {
        for (at, name) in DOCKER_PROGRAMS {
            // Missing ones fail the docker runs with dockerd's own error.
            let Some(p) = find_program(name) else {
                continue;
            };
            a.file(Path::new(at), &p)?;
            programs.push(p);
        }
    }
    // mke2fs reads its defaults (features, inode size) from here; without it the
    // compiled-in profile applies, which need not be the host's, where the devicemapper
    // figures were measured.
    if Path::new(MKE2FS_CONF).is_file() {
        a.file(Path::new(MKE2FS_CONF), Path::new(MKE2FS_CONF))?;
    }
    let mut lib_dirs: Vec<String> = Vec::new();
    for p in &programs {
        for lib in shared_libs(p)? {
            if !a.has(&lib) {
                a.file(&lib, &lib)?;
            }
            let d = lib.parent().unwrap_or(Path::new("/")).display().to_string();
            if !lib_dirs.contains(&d) {
                lib_dirs.push(d);
            }
        }
    }
    for (host, guest) in files {
        let at = if guest.is_absolute() {
            guest.clone()
        } else {
            Path::new("work").join(guest)
        };
        a.file(&at, host)?;
    }
    a.data(
        Path::new("init"),
        init_script(args, &lib_dirs, docker),
        0o755,
    )?;
    let path = dir.join("initramfs.cpio");
    let size = a.write(&path)?;
    Ok((path, size))
}

/// `exe` without its debug information (`strip --strip-debug`, from binutils, when it is
/// there: a release build's 31 MB become 5, which the guest unpacks in a fraction of the
/// time; the symbols stay, so backtraces keep function names); else `exe` itself.
fn stripped(exe: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("layerspec");
    let ok = find_program("strip").is_some_and(|strip| {
        std::process::Command::new(strip)
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(exe)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        out
    } else {
        exe.to_path_buf()
    }
}

/// Guest memory: 4 GiB where the host has 8 or more, else half the host's, at least 1 GiB
/// and room for the archive (held twice while the kernel unpacks it). The guest's /tmp
/// (tmpfs, 90% of it) holds the loop files under the driver roots and thin pools: a
/// thin pool of 1 GiB blocks zeroes whole blocks. qemu takes host memory only as the
/// guest touches it.
fn default_memory_mib(archive_mib: u64) -> u64 {
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(2048, |kb| kb / 1024);
    (host_mib / 2).clamp(1024, 4096).max(512 + 3 * archive_mib)
}

/// The last `n` lines of `text`, indented, for error messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "    (nothing)".into();
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `layerspec guest <args>` in one boot of the VM, with `files` (host path, guest
/// path; a relative guest path is below the guest's working directory `/work`) in its
/// initramfs, within `timeout` from qemu's start. Returns the JSON lines the guest command
/// printed between the markers. `docker`: the archive carries dockerd and what it runs
/// ([`DOCKER_PROGRAMS`]), and `/init` prepares for it.
pub fn run_guest(
    args: &[String],
    files: &[(PathBuf, PathBuf)],
    timeout: Duration,
    docker: bool,
) -> Result<GuestOutput, VmError> {
    let kit = layerspec_real::vm_kit().map_err(|why| VmError::new(Failure::Unavailable, why))?;
    let setup = |what: &str, e: std::io::Error| {
        VmError::new(Failure::Setup, format!("VM tier: {what}: {e}"))
    };
    let dir = RunDir::new().map_err(|e| setup("making the run directory", e))?;
    let (initrd, size) =
        build(&dir.0, &kit, args, files, docker).map_err(|e| setup("making the initramfs", e))?;
    let size_mib = size.div_ceil(1 << 20);
    let memory_mib = std::env::var("LAYERSPEC_VM_MEMORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default_memory_mib(size_mib));
    let cpus = std::env::var("LAYERSPEC_VM_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().min(2))
                .unwrap_or(1)
        });
    let ended = qemu::boot(&qemu::Boot {
        qemu: kit.qemu.clone(),
        kernel: kit.kernel.clone(),
        initrd,
        memory_mib,
        cpus,
        dir: dir.0.clone(),
        timeout,
    });
    drop(dir);
    let console = tail(&ended.console, 25);
    let fail = |failure: Failure, message: String| VmError {
        failure,
        message,
        partial: ended.stream.lines.clone(),
        boot: ended.boot,
    };
    let kernel = format!("{} ({})", kit.kver, kit.kernel.display());
    let complete = ended.how == qemu::How::Done && ended.stream.complete();
    if !complete && ended.console.contains("Kernel panic") {
        return Err(fail(
            Failure::Panic,
            format!("the guest kernel {kernel} panicked; its console ends with:\n{console}"),
        ));
    }
    match ended.how {
        qemu::How::NotStarted(why) => Err(fail(Failure::NotStarted, why)),
        qemu::How::TimedOut => Err(fail(
            Failure::TimedOut,
            format!(
                "the VM did not finish within {:.0} s (LAYERSPEC_VM_TIMEOUT raises it); {}; \
                 {} result line(s) came back; its console ends with:\n{console}",
                timeout.as_secs_f64(),
                match ended.boot {
                    Some(b) => format!("it booted in {:.1} s", b.as_secs_f64()),
                    None => "the guest never started sending".into(),
                },
                ended.stream.lines.len()
            ),
        )),
        qemu::How::Exited(status) if ended.stream.header.is_none() => Err(fail(
            Failure::NoResults,
            format!(
                "qemu ({status}) ended before the guest sent any result (kernel {kernel}); \
                 qemu said:\n{}\nthe console ends with:\n{console}",
                tail(&ended.stderr, 10)
            ),
        )),
        _ if !ended.stream.complete() => Err(fail(
            Failure::Cut,
            format!(
                "the guest stopped sending after {} result line(s), without the end marker{}; \
                 its console ends with:\n{console}",
                ended.stream.lines.len(),
                if ended.stream.garbled.is_empty() {
                    String::new()
                } else {
                    format!(" ({} damaged line(s))", ended.stream.garbled.len())
                }
            ),
        )),
        _ => Ok(GuestOutput {
            kernel: ended.stream.kernel(),
            exit: ended
                .stream
                .trailer
                .as_ref()
                .and_then(|t| t["exit"].as_u64())
                .unwrap_or(0) as u8,
            lines: ended.stream.lines,
            boot: ended.boot.unwrap_or_default(),
            total: ended.total,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_keep_relative_names() {
        assert_eq!(
            guest_path(Path::new("scenarios/a/b.toml")),
            PathBuf::from("scenarios/a/b.toml")
        );
        assert_eq!(
            guest_path(Path::new("/tmp/x/scenarios/b.toml")),
            PathBuf::from("inputs/tmp/x/scenarios/b.toml")
        );
        assert!(guest_path(Path::new("../x.toml")).starts_with("inputs"));
    }

    #[test]
    fn init_quotes_arguments() {
        let s = init_script(&["run".into(), "it's".into()], &["/lib".into()], false);
        assert!(
            s.contains(r"/layerspec guest 'run' 'it'\''s' > /dev/ttyS1"),
            "{s}"
        );
        assert!(s.contains("LD_LIBRARY_PATH=/lib"));
    }
}
