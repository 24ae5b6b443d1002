//! What this machine offers: root, kernel filesystems, device-mapper, helper programs.

use layerspec_model::DriverKind;
use std::path::Path;

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
            fuse_overlayfs: on_path("fuse-overlayfs"),
            qemu: on_path("qemu-system-x86_64"),
        }
    }
}

fn is_root() -> bool {
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
    /// `kernel`, `fuse` or `vm`.
    pub name: &'static str,
    /// `None` when it can run; otherwise the reason.
    pub unavailable: Option<String>,
}

/// The real backends DESIGN.md lists for `driver`, with this machine's verdict on each.
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
            v
        }
        DriverKind::Aufs => vec![Backend {
            name: "kernel",
            unavailable: Some(if h.aufs {
                "aufs is in /proc/filesystems, but the aufs backend is not built".into()
            } else {
                "/proc/filesystems has no aufs (never upstream; DESIGN.md: nowhere here)".into()
            }),
        }],
        DriverKind::Devicemapper | DriverKind::Thinpool => {
            let kernel = if !h.device_mapper {
                Some("/proc/misc has no device-mapper on this kernel".to_string())
            } else if driver == DriverKind::Devicemapper {
                Some("the real devicemapper graphdriver is not built yet (issue 4)".to_string())
            } else {
                need_root.clone().or_else(|| {
                    (!on_path("thin_dump"))
                        .then(|| "thin_dump (thin-provisioning-tools) is not installed".into())
                })
            };
            let vm = if h.qemu {
                "the VM tier is not built yet (issue 4)".to_string()
            } else {
                "qemu-system-x86_64 is not installed, and the VM tier is not built yet (issue 4)"
                    .to_string()
            };
            vec![
                Backend {
                    name: "kernel",
                    unavailable: kernel,
                },
                Backend {
                    name: "vm",
                    unavailable: Some(vm),
                },
            ]
        }
    }
}
