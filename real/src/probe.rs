//! What this machine offers: root, kernel filesystems, device-mapper, helper programs.

use layerspec_model::{DriverKind, KernelVersion};
use std::path::{Path, PathBuf};

/// Facts about the host that decide which backends can run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Running as root (uid 0).
    pub root: bool,
    /// `/proc/filesystems` lists overlay.
    pub overlay: bool,
    /// `/proc/filesystems` lists aufs.
    pub aufs: bool,
    /// `/proc/misc` lists device-mapper.
    pub device_mapper: bool,
    /// `/sys/module/dm_thin_pool` exists: the thin-pool target is loaded or built in.
    pub thin_pool: bool,
    /// `/proc/filesystems` lists ext4.
    pub ext4: bool,
    /// `fuse-overlayfs` is on the PATH.
    pub fuse_overlayfs: bool,
    /// `qemu-system-x86_64` is on the PATH.
    pub qemu: bool,
}

impl HostFacts {
    /// Reads the facts from `/proc` and the PATH.
    pub fn read() -> HostFacts {
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        let has_fs = |name: &str| {
            fs.lines()
                .any(|l| l.split_whitespace().last() == Some(name))
        };
        let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
        HostFacts {
            root: is_root(),
            overlay: has_fs("overlay"),
            aufs: has_fs("aufs"),
            device_mapper: misc.lines().any(|l| l.ends_with(" device-mapper")),
            thin_pool: Path::new("/sys/module/dm_thin_pool").exists(),
            ext4: has_fs("ext4"),
            fuse_overlayfs: on_path("fuse-overlayfs"),
            qemu: on_path("qemu-system-x86_64"),
        }
    }
}

/// The version of the running kernel (`uname -r`; inside the VM tier, the guest's).
pub fn kernel_version() -> std::io::Result<KernelVersion> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    KernelVersion::from_release(&release).map_err(std::io::Error::other)
}

pub(crate) fn is_root() -> bool {
    // The owner of /proc/self is the process's effective uid.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(prog).is_file()))
}

/// A real backend for a driver, and why it cannot run here if it cannot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `kernel`, `fuse`, `vm` or `docker`.
    pub name: &'static str,
    /// `None` when it can run; otherwise the reason.
    pub unavailable: Option<String>,
}

/// The real backends for `driver` (README, "Status"), with this machine's verdict on each.
pub fn backends_for(driver: DriverKind) -> Vec<Backend> {
    let h = HostFacts::read();
    let need_root = (!h.root).then(|| "needs root (mount namespaces, mounts)".to_string());
    match driver {
        DriverKind::Overlay | DriverKind::Overlay2 => {
            let kernel = need_root
                .clone()
                .or_else(|| (!h.overlay).then(|| "/proc/filesystems has no overlay".into()));
            let mut v = vec![Backend {
                name: "kernel",
                unavailable: kernel,
            }];
            if driver == DriverKind::Overlay2 {
                let fuse = need_root
                    .clone()
                    .or_else(|| {
                        (!h.fuse_overlayfs).then(|| "fuse-overlayfs is not installed".into())
                    })
                    .or_else(|| {
                        (!Path::new("/dev/fuse").exists()).then(|| "/dev/fuse is missing".into())
                    });
                v.push(Backend {
                    name: "fuse",
                    unavailable: fuse,
                });
            }
            v.push(Backend {
                name: "vm",
                unavailable: vm_kit().err(),
            });
            v.push(Backend {
                name: "docker",
                unavailable: need_root
                    .or_else(|| (!h.overlay).then(|| "/proc/filesystems has no overlay".into()))
                    .or_else(|| docker_missing().err()),
            });
            v
        }
        DriverKind::Aufs => vec![Backend {
            name: "kernel",
            unavailable: Some(if h.aufs {
                "aufs is in /proc/filesystems, but the aufs backend is not built".into()
            } else {
                "/proc/filesystems has no aufs: it was never merged into Linux, and this kernel \
                 was not built with its patches"
                    .into()
            }),
        }],
        DriverKind::Devicemapper | DriverKind::Thinpool => {
            let kernel = if !h.device_mapper {
                Some("/proc/misc has no device-mapper on this kernel".to_string())
            } else if driver == DriverKind::Devicemapper {
                need_root.clone().or_else(|| devicemapper_missing(&h))
            } else {
                need_root.clone().or_else(|| {
                    (!on_path("thin_dump"))
                        .then(|| "thin_dump (thin-provisioning-tools) is not installed".into())
                })
            };
            let mut v = vec![
                Backend {
                    name: "kernel",
                    unavailable: kernel.clone(),
                },
                Backend {
                    name: "vm",
                    unavailable: vm_kit().err(),
                },
            ];
            if driver == DriverKind::Devicemapper {
                // dockerd's devicemapper here, or in the VM's guest where this kernel has
                // no device-mapper (the binaries are this machine's either way).
                let docker = if h.device_mapper {
                    kernel
                } else {
                    vm_kit().err()
                };
                v.push(Backend {
                    name: "docker",
                    unavailable: docker.or_else(|| docker_missing().err()),
                });
            }
            v
        }
    }
}

/// `dockerd` (Debian: docker.io), if installed.
pub(crate) fn dockerd() -> Option<PathBuf> {
    find_program("dockerd")
}

/// The static busybox the docker backend's containers run (`sleep infinity`, bind-mounted
/// under `/dev`, so the container's process writes nothing into its layers), or why the
/// backend cannot run.
/// A statically linked busybox, or why there is none: `who` (the containers, the guest)
/// runs it with no shared libraries beside it.
fn static_busybox(who: &str) -> Result<PathBuf, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .chain(find_program("busybox"))
        .find(|p| p.is_file())
        .ok_or("busybox is not installed (Debian: busybox-static)")?;
    if has_interpreter(&busybox)? {
        return Err(format!(
            "{} is dynamically linked; {who} need a static one (Debian: busybox-static)",
            busybox.display()
        ));
    }
    Ok(busybox)
}

/// Whether backend `docker` runs `driver` in the VM tier's guest: devicemapper, where this
/// kernel has no device-mapper.
pub fn docker_in_vm(driver: DriverKind) -> bool {
    driver == DriverKind::Devicemapper && !HostFacts::read().device_mapper
}

pub(crate) fn docker_missing() -> Result<PathBuf, String> {
    dockerd().ok_or("dockerd is not installed (Debian: docker.io)")?;
    let busybox = static_busybox("the containers")?;
    Ok(busybox)
}

/// Why the real devicemapper driver cannot run on a kernel with device-mapper, if it
/// cannot: it needs the thin-pool target (loaded, built in, or a module `modprobe` can
/// load is not enough: nothing here loads modules), ext4, and mkfs.ext4, tune2fs and
/// thin_dump.
fn devicemapper_missing(h: &HostFacts) -> Option<String> {
    if !h.thin_pool {
        return Some(
            "device-mapper has no thin-pool target (/sys/module/dm_thin_pool is missing: \
             load dm-thin-pool)"
                .into(),
        );
    }
    if !h.ext4 {
        return Some("/proc/filesystems has no ext4".into());
    }
    ["mkfs.ext4", "tune2fs", "thin_dump"]
        .into_iter()
        .find(|p| find_program(p).is_none())
        .map(|p| match p {
            "thin_dump" => "thin_dump (thin-provisioning-tools) is not installed".to_string(),
            _ => format!("{p} (e2fsprogs) is not installed"),
        })
}

/// What the VM tier (README, "The VM tier") needs from this machine, found: qemu, a
/// Debian kernel image with its modules, a static busybox, and the kernel modules to load in
/// the guest, in dependency order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmKit {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The kernel image, `/boot/vmlinuz-<kver>`.
    pub kernel: PathBuf,
    /// Its release, the name of its directory under `/lib/modules`.
    pub kver: String,
    /// A statically linked busybox (`busybox-static`).
    pub busybox: PathBuf,
    /// The `.ko` files to load at boot, dependencies first, each once (from
    /// `modprobe --show-depends -S <kver>`): dm-thin-pool, loop, overlay, ext4 (the ones
    /// built into the kernel are not listed).
    pub modules: Vec<PathBuf>,
    /// The `.ko` files to load, in order, before a scenario on xfs (those of xfs not
    /// loaded at boot).
    pub xfs_modules: Vec<PathBuf>,
}

/// Modules the guest loads: (name, required, at boot). The required ones must exist (as a
/// module or built in); without xfs or ext4 only scenarios on that backing filesystem
/// fail, with the mount error. xfs is loaded when a scenario asks for it: its 4 MB take
/// about a second to load under TCG.
const VM_MODULES: &[(&str, bool, bool)] = &[
    ("dm-thin-pool", true, true),
    ("loop", true, true),
    ("overlay", true, true),
    ("ext4", false, true),
    ("xfs", false, false),
];

/// The VM tier's kit on this machine, or why there is none (the `vm` backend's skip
/// reason). Found once per process. `LAYERSPEC_VM_KERNEL=<kver>` picks a kernel; by default
/// the newest `/boot/vmlinuz-*` whose modules include dm-thin-pool.
pub fn vm_kit() -> Result<VmKit, String> {
    static KIT: std::sync::OnceLock<Result<VmKit, String>> = std::sync::OnceLock::new();
    KIT.get_or_init(find_vm_kit).clone()
}

fn find_vm_kit() -> Result<VmKit, String> {
    let qemu = find_program("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 is not installed (Debian: qemu-system-x86)")?;
    let busybox = static_busybox("the guest")?;
    let modprobe = find_program("modprobe").ok_or("modprobe is not installed (Debian: kmod)")?;
    let (kver, kernel) = pick_kernel()?;
    std::fs::File::open(&kernel).map_err(|e| {
        format!(
            "cannot read {}: {e} (Debian installs kernel images readable by root only)",
            kernel.display()
        )
    })?;
    let mut modules: Vec<PathBuf> = Vec::new();
    let mut xfs_modules: Vec<PathBuf> = Vec::new();
    for &(name, required, at_boot) in VM_MODULES {
        let out = std::process::Command::new(&modprobe)
            .args(["--show-depends", "-S", &kver, name])
            .output()
            .map_err(|e| format!("running {}: {e}", modprobe.display()))?;
        if !out.status.success() {
            if required {
                return Err(format!(
                    "kernel {kver} has no {name} module (`modprobe --show-depends -S {kver} {name}`: {})",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            continue;
        }
        // Lines are `insmod <path> [params]` or `builtin <name>`.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("insmod") {
                continue;
            }
            let Some(ko) = w.next().map(PathBuf::from) else {
                continue;
            };
            if ko.extension().is_none_or(|x| x != "ko") {
                return Err(format!(
                    "{} is compressed; the guest's busybox insmod needs plain .ko files",
                    ko.display()
                ));
            }
            if modules.contains(&ko) || xfs_modules.contains(&ko) {
                continue;
            }
            if at_boot {
                modules.push(ko);
            } else {
                xfs_modules.push(ko);
            }
        }
    }
    Ok(VmKit {
        qemu,
        kernel,
        kver,
        busybox,
        modules,
        xfs_modules,
    })
}

/// A program on the PATH, or in /usr/sbin or /sbin (not on a user's PATH on Debian).
fn find_program(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Whether an ELF file asks for a program interpreter (`PT_INTERP`): dynamically linked.
fn has_interpreter(path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let bad = || format!("{} is not a 64-bit little-endian ELF file", path.display());
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(0x38).ok_or_else(bad)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let ty = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(bad)?;
        if ty == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `(kver, /boot/vmlinuz-<kver>)`: `LAYERSPEC_VM_KERNEL`, else the newest kernel whose
/// `/lib/modules/<kver>/modules.dep` has dm-thin-pool.
fn pick_kernel() -> Result<(String, PathBuf), String> {
    let has_thin = |kver: &str| {
        std::fs::read_to_string(format!("/lib/modules/{kver}/modules.dep"))
            .is_ok_and(|d| d.contains("/dm-thin-pool.ko"))
    };
    if let Ok(kver) = std::env::var("LAYERSPEC_VM_KERNEL") {
        let image = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
        if !image.is_file() {
            return Err(format!(
                "LAYERSPEC_VM_KERNEL={kver}: no {}",
                image.display()
            ));
        }
        if !Path::new(&format!("/lib/modules/{kver}")).is_dir() {
            return Err(format!(
                "LAYERSPEC_VM_KERNEL={kver}: no /lib/modules/{kver}"
            ));
        }
        return Ok((kver, image));
    }
    let mut kvers: Vec<String> = std::fs::read_dir("/boot")
        .map_err(|e| format!("/boot: {e}"))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    if kvers.is_empty() {
        return Err("no kernel image /boot/vmlinuz-* (Debian: linux-image-cloud-amd64)".into());
    }
    kvers.sort_by(|a, b| version_cmp(b, a));
    kvers
        .iter()
        .find(|k| has_thin(k))
        .map(|k| (k.clone(), PathBuf::from(format!("/boot/vmlinuz-{k}"))))
        .ok_or_else(|| {
            format!(
                "no kernel in /boot has dm-thin-pool in /lib/modules/<kver> (looked at {})",
                kvers.join(", ")
            )
        })
}

/// Compares release strings the way people read them: digit runs as numbers.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<Result<u64, String>> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut digits = false;
        for c in s.chars() {
            if !cur.is_empty() && c.is_ascii_digit() != digits {
                out.push(std::mem::take(&mut cur));
            }
            digits = c.is_ascii_digit();
            cur.push(c);
        }
        out.push(cur);
        out.into_iter()
            .map(|c| c.parse::<u64>().map_err(|_| c))
            .collect()
    }
    chunks(a).cmp(&chunks(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_numbers() {
        assert!(version_cmp("6.10.0-1-amd64", "6.9.0-1-amd64").is_gt());
        assert!(version_cmp("6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64").is_gt());
    }

    #[test]
    fn elf_headers_are_read() {
        assert!(has_interpreter(Path::new("/proc/self/exe")).is_ok());
        assert!(has_interpreter(Path::new("/proc/self/status")).is_err());
    }
}
