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

/// A Linux kernel release, as far as the rules of the model depend on it: the model takes
/// it as a parameter, and every version-dependent rule asks it through one of the methods
/// below, each naming the kernel change it follows. `Default` is the kernel the model has
/// followed all along, this machine's (REFERENCE "This machine": 6.18); the VM tier's is 6.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KernelVersion {
    /// Major version (`6` in 6.1.0-56-cloud-amd64).
    pub major: u32,
    /// Minor version (`1` in 6.1.0-56-cloud-amd64).
    pub minor: u32,
}

impl KernelVersion {
    /// The kernel the model follows unless told otherwise.
    pub const DEFAULT: KernelVersion = KernelVersion::new(6, 18);

    /// Linux 6.6: overlayfs `uuid=auto`, tmpfs `user.*` xattrs.
    pub const V6_6: KernelVersion = KernelVersion::new(6, 6);

    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> KernelVersion {
        KernelVersion { major, minor }
    }

    /// The version of a release string as `uname -r` prints it (`6.1.0-56-cloud-amd64`,
    /// `6.18.44-fc-v669`): its first two numbers.
    pub fn from_release(release: &str) -> Result<KernelVersion, BadKernelVersion> {
        let bad = || BadKernelVersion(release.to_string());
        let mut parts = release.trim().split(['.', '-', '+']);
        let mut number = || -> Result<u32, BadKernelVersion> {
            parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)
        };
        Ok(KernelVersion::new(number()?, number()?))
    }

    /// Whether overlayfs writes `trusted.overlay.uuid` on the upper root when a new overlay
    /// is first mounted (Docker always mounts a fresh upper dir). Since 6.6 the default
    /// `uuid=auto` upgrades a new overlay, one whose upper root is not yet impure, to
    /// `uuid=on`, which stores the generated uuid there (kernel cbb44f093597 "ovl: auto
    /// generate uuid for new overlay filesystems" on d9544c1b0d9e "ovl: store persistent
    /// uuid/fsid with uuid=on"; overlayfs.rst, "UUID and fsid"). Before (6.1 included)
    /// the option was `uuid=on|off` only (5830fb6b54f7 added `off`), default `on`: the
    /// layers' own uuids in file handles, nothing written on the upper root, whatever
    /// `index` says (Docker mounts with `index=off`).
    pub fn overlay_upper_uuid(self) -> bool {
        self >= KernelVersion::V6_6
    }

    /// Whether tmpfs stores `user.*` xattrs. Before 6.6 its xattr handlers were `trusted.*`,
    /// `security.*` and the ACLs only: a `user.*` name fails with EOPNOTSUPP (kernel
    /// 2daf18a7884d "tmpfs,xattr: enable limited user extended attributes";
    /// tmpfs.rst). overlayfs passes the error through from the upper (or, for a removal,
    /// the lower) filesystem.
    pub fn tmpfs_user_xattrs(self) -> bool {
        self >= KernelVersion::V6_6
    }
}

impl Default for KernelVersion {
    fn default() -> Self {
        KernelVersion::DEFAULT
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for KernelVersion {
    type Err = BadKernelVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KernelVersion::from_release(s)
    }
}

/// A kernel version that does not start with `major.minor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadKernelVersion(pub String);

impl fmt::Display for BadKernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a kernel version (expected major.minor, e.g. 6.1)",
            self.0
        )
    }
}

impl std::error::Error for BadKernelVersion {}

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
    /// The options past the three directories, each `,name=on` when on (Docker passes
    /// none of them; `index` is placed by [`crate::overlay_mount_data`]).
    pub fn mount_string(&self) -> String {
        let mut s = String::new();
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

/// `MAX_LFS_FILESIZE` on 64-bit kernels (include/linux/fs.h): `LLONG_MAX`, the largest
/// `off_t`.
pub const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// The largest file on ext4 with 4 KiB blocks and extents: `ext4_max_size(12, 1)`
/// (fs/ext4/super.c) is `(2^32 - 1) << 12`, 16 TiB - 4 KiB: a 32-bit logical block number,
/// one block less so an extent's length can reach the end.
pub const EXT4_MAX_FILE_SIZE: u64 = ((1 << 32) - 1) << 12;

impl Backing {
    /// The largest file size the filesystem allows, its superblock's `s_maxbytes`
    /// (measured here, a 6.18 kernel, through overlayfs):
    /// - tmpfs: `MAX_LFS_FILESIZE` (`shmem_fill_super`, mm/shmem.c);
    /// - ext4: [`EXT4_MAX_FILE_SIZE`] (`ext4_fill_super` with `ext4_max_size`; the sandbox
    ///   makes it with 4 KiB blocks: mke2fs picks 1 KiB below 512 MiB, a 4 TiB limit);
    /// - xfs: `MAX_LFS_FILESIZE` (`xfs_fs_fill_super`, fs/xfs/xfs_super.c).
    ///
    /// What it decides (see `Container::write` and `truncate` in `inode.rs`): an `lseek`
    /// past it is EINVAL (`vfs_setpos` from `generic_file_llseek_size`; overlayfs seeks the
    /// real file, `ovl_llseek`); a write at or past it is EFBIG, and one crossing it is cut
    /// short there (`generic_write_check_limits`, mm/filemap.c); a `truncate` past it is
    /// EFBIG (`inode_newsize_ok` from the upper filesystem's `setattr`).
    pub fn max_file_size(self) -> u64 {
        match self {
            Backing::Tmpfs | Backing::Xfs => MAX_LFS_FILESIZE,
            Backing::Ext4 => EXT4_MAX_FILE_SIZE,
        }
    }
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
    /// overlayfs `ovl_allow_offline_changes()`: none of `index`, `metacopy`,
    /// `redirect_dir` or `xino=on` is in use, so the lower layers may change offline.
    /// Without it, a directory made in a merged directory is marked opaque at once
    /// (`ovl_create_upper`: "setting opaque here is just an optimization"; kernel commit
    /// "ovl: do not set overlay.opaque for new directories", 5.7, made the mark depend on
    /// this; measured here on 6.18: `mkdir` in a merged dir gives `trusted.overlay.opaque=y`
    /// with `redirect_dir=on` and no xattr with it off).
    pub offline_changes: bool,
    /// A container's writable root starts with the image root's mode, which the merged
    /// root shows: overlay makes `upper` with it (moby 20.10 overlay `Create`: the parent
    /// root's `Stat`, then `MkdirAndChown(upper, mode)`). overlay2 makes `diff` 0755
    /// (moby overlay2 `create`), so its merged root is 0755 whatever the image's (seen on
    /// dockerd 20.10 here, found by `fuzz --overlay redirect_dir=on`, overlay2 seed 26).
    pub upper_root_from_image: bool,
    /// The backing filesystem.
    pub backing: Backing,
    /// The kernel whose rules apply.
    pub kernel: KernelVersion,
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
            offline_changes: !(overlay.index
                || overlay.metacopy
                || overlay.redirect_dir
                || overlay.xino),
            upper_root_from_image: driver != DriverKind::Overlay2,
            backing: Backing::Tmpfs,
            kernel: KernelVersion::DEFAULT,
        }
    }

    /// Whether the filesystem holding the container's writable layer stores `user.*`
    /// xattrs: devicemapper's is ext4 on a thin device; the others write to the backing
    /// filesystem, and tmpfs has them only on newer kernels.
    pub fn user_xattrs(&self) -> bool {
        self.flat || self.backing != Backing::Tmpfs || self.kernel.tmpfs_user_xattrs()
    }

    /// The largest file size where the container's files live: devicemapper's filesystem is
    /// ext4 with 4 KiB blocks (Docker's mkfs on a 10 GiB device), the others write to the
    /// backing filesystem ([`Backing::max_file_size`]).
    pub fn max_file_size(&self) -> u64 {
        if self.flat {
            Backing::Ext4.max_file_size()
        } else {
            self.backing.max_file_size()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_from_releases_and_their_rules() {
        let guest = KernelVersion::from_release("6.1.0-56-cloud-amd64\n").unwrap();
        assert_eq!(guest, KernelVersion::new(6, 1));
        let host: KernelVersion = "6.18.44-fc-v669".parse().unwrap();
        assert_eq!(host, KernelVersion::DEFAULT);
        assert_eq!(
            KernelVersion::from_release("5.4").unwrap().to_string(),
            "5.4"
        );
        assert!(KernelVersion::from_release("6").is_err());
        assert!(KernelVersion::from_release("linux").is_err());
        assert!(!guest.overlay_upper_uuid() && !guest.tmpfs_user_xattrs());
        assert!(
            KernelVersion::V6_6.overlay_upper_uuid() && KernelVersion::V6_6.tmpfs_user_xattrs()
        );
        assert!(KernelVersion::new(6, 10) > KernelVersion::new(6, 9));
    }

    #[test]
    fn user_xattrs_depend_on_backing_and_kernel() {
        let old = KernelVersion::new(6, 1);
        let p = |d, backing| Policy {
            backing,
            kernel: old,
            ..Policy::new(d, OverlayOptions::default())
        };
        assert!(!p(DriverKind::Overlay2, Backing::Tmpfs).user_xattrs());
        assert!(p(DriverKind::Overlay2, Backing::Ext4).user_xattrs());
        // devicemapper's files live on ext4 in a thin device, whatever the driver root.
        assert!(p(DriverKind::Devicemapper, Backing::Tmpfs).user_xattrs());
        assert!(Policy::new(DriverKind::Overlay2, OverlayOptions::default()).user_xattrs());
    }
}
