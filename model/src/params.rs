//! Drivers, mount options, and the policies in which the drivers differ.
//!
//! Every file-level driver runs the same union code (`namei`, `dir`, `inode`, `copy_up`,
//! `readdir`); what changes between them is only the [`Policy`] below and the on-disk
//! encoding in `layout/`.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A Docker storage driver, or the bare thin pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// AUFS: branches, `.wh.` whiteouts.
    Aufs,
    /// The original one-lower overlay driver with hard-link layer farms.
    Overlay,
    /// overlay2: multi-lower overlayfs with `l/` short names.
    Overlay2,
    /// devicemapper: every layer a dm-thin snapshot of its parent.
    Devicemapper,
    /// The bare thin pool, block level.
    Thinpool,
}

impl DriverKind {
    /// The file-level drivers, in report order.
    pub const FILE_LEVEL: [DriverKind; 4] = [
        DriverKind::Aufs,
        DriverKind::Overlay,
        DriverKind::Overlay2,
        DriverKind::Devicemapper,
    ];

    /// The name used in scenario files, on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Aufs => "aufs",
            DriverKind::Overlay => "overlay",
            DriverKind::Overlay2 => "overlay2",
            DriverKind::Devicemapper => "devicemapper",
            DriverKind::Thinpool => "thinpool",
        }
    }

    /// Whether the driver is an overlayfs one (the `[options.overlay]` table applies).
    pub fn is_overlayfs(self) -> bool {
        matches!(self, DriverKind::Overlay | DriverKind::Overlay2)
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aufs" => Ok(DriverKind::Aufs),
            "overlay" => Ok(DriverKind::Overlay),
            "overlay2" => Ok(DriverKind::Overlay2),
            "devicemapper" => Ok(DriverKind::Devicemapper),
            "thinpool" => Ok(DriverKind::Thinpool),
            _ => Err(format!(
                "unknown driver `{s}` (expected aufs, overlay, overlay2, devicemapper or thinpool)"
            )),
        }
    }
}

/// overlayfs mount options that change semantics. `Default` is this kernel's built-in
/// default: everything off (REFERENCE "This machine").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OverlayOptions {
    /// `redirect_dir=on`: merged and lower directories can be renamed (OVL4).
    pub redirect_dir: bool,
    /// `metacopy=on`: metadata changes copy up metadata only (OVL3).
    pub metacopy: bool,
    /// `index=on`: hard links of lower files survive copy-up (OVL5).
    pub index: bool,
    /// `xino=on`: inode numbers of all layers in one space. No effect on what is compared.
    pub xino: bool,
}

impl OverlayOptions {
    /// The options as Docker's mount data carries them: Docker always passes `index=off`
    /// (overlay2) unless a scenario turns index on; the rest only when on.
    pub fn mount_string(&self) -> String {
        let mut s = String::new();
        s.push_str(if self.index {
            ",index=on"
        } else {
            ",index=off"
        });
        if self.redirect_dir {
            s.push_str(",redirect_dir=on");
        }
        if self.xino {
            s.push_str(",xino=on");
        }
        if self.metacopy {
            s.push_str(",metacopy=on");
        }
        s
    }
}

/// How a driver renames a directory that has something in the image layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirRename {
    /// overlayfs without `redirect_dir`: EXDEV for any merged or lower directory (OVL4).
    ExdevIfLower,
    /// AUFS without `dirren`: EXDEV when the directory has children on lower branches (AUFS4).
    ExdevIfLowerChildren,
    /// overlayfs with `redirect_dir=on`: the moved directory records where it came from.
    Redirect,
}

/// The filesystem under the driver root. It shows where Docker compares directory sizes:
/// tmpfs sizes a directory at 20 bytes per entry, ext4 and xfs in whole blocks (small
/// directories: one block), so a copied-up directory with fewer entries than its lower
/// copy differs on tmpfs only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// tmpfs (default).
    #[default]
    Tmpfs,
    /// ext4 on a loop device.
    Ext4,
    /// xfs on a loop device.
    Xfs,
}

/// The semantic choices in which file-level drivers differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Which driver this is.
    pub driver: DriverKind,
    /// Directory rename of lower directories.
    pub dir_rename: DirRename,
    /// Metadata-only copy-up (overlayfs `metacopy=on`).
    pub metacopy: bool,
    /// Hard links of lower files stay one inode after copy-up (overlayfs `index=on`; AUFS's
    /// pseudo-links, on by default: `plink`, AUFS3).
    pub keep_hard_links: bool,
    /// A merged directory reports `st_nlink` 1 (overlayfs does not know the real count).
    pub merged_dir_nlink_one: bool,
    /// The layers are whole filesystems (devicemapper snapshots): no union at all.
    pub flat: bool,
    /// Names starting `.wh.` cannot exist: looking one up gives EPERM (AUFS1).
    pub whiteout_names_reserved: bool,
    /// Image layers are hard-link farms (overlay, DOCK1): a lower file has one more link
    /// for every layer root above the one that made it.
    pub farm_links: bool,
    /// The backing filesystem.
    pub backing: Backing,
}

impl Policy {
    /// The policy of `driver` with the given overlay options (ignored by non-overlay drivers).
    pub fn new(driver: DriverKind, overlay: OverlayOptions) -> Policy {
        let ovl = driver.is_overlayfs();
        Policy {
            driver,
            dir_rename: match driver {
                DriverKind::Aufs => DirRename::ExdevIfLowerChildren,
                // metacopy=on turns redirect_dir on when it is not set (kernel
                // ovl_fs_params_verify), so renamed metacopy files keep their data.
                _ if ovl && (overlay.redirect_dir || overlay.metacopy) => DirRename::Redirect,
                _ => DirRename::ExdevIfLower,
            },
            metacopy: ovl && overlay.metacopy,
            keep_hard_links: (ovl && overlay.index) || driver == DriverKind::Aufs,
            merged_dir_nlink_one: ovl,
            flat: driver == DriverKind::Devicemapper,
            whiteout_names_reserved: driver == DriverKind::Aufs,
            farm_links: driver == DriverKind::Overlay,
            backing: Backing::Tmpfs,
        }
    }
}
