//! Space on the driver root's filesystem: the pages a size-capped tmpfs gives out, and the
//! blocks and inodes of an ext4 ([`ext4`]), so that the model predicts ENOSPC where the
//! kernel returns it (a file larger than the backing filesystem, a copy-up, a directory, a
//! whiteout or a container that does not fit).
//!
//! tmpfs counts pages, not bytes (`shmem_inode_acct_blocks`, mm/shmem.c; `size=` sets
//! `max_blocks` in pages). Measured here (6.18, `mount -t tmpfs -o size=64k`, 16 pages,
//! `statvfs`'s `f_bfree` after each call):
//! - a regular file's page costs one page when first written; a hole costs nothing (so
//!   `truncate` never runs out), one byte written in a hole costs its page; rewriting a page
//!   the file holds costs nothing; shrinking to the middle of a page keeps that page;
//! - a symlink whose target with its NUL passes [`SHORT_SYMLINK_LEN`] bytes costs a page
//!   (`shmem_symlink`), a shorter one, a directory, a device and an xattr nothing;
//! - a write that runs out is cut short at the last page it got (8 pages asked, 5 free:
//!   20480 bytes written) and the write loop's next call is ENOSPC; with no page free the
//!   write is ENOSPC at once; unlinking gives the pages back.
//!
//! Through overlayfs on such a tmpfs (lower, upper and work on it):
//! - a copy-up writes every page of the lower file, holes included when the copy chunk
//!   (`OVL_COPY_UP_CHUNK_SIZE`, 1 MiB from each data position `SEEK_DATA` finds) covers
//!   them: a 10 MiB file with data in its first page and at 5 MiB took 512 pages. The real
//!   side writes layer files whole, so a lower file has no hole and its copy takes all
//!   its pages;
//! - a copy-up that does not fit fails the step with ENOSPC (open for write, truncate, chmod
//!   of a 10-page file with 4 pages free) and leaves nothing of the file in the upper or
//!   work directory, its pages given back; the parent directories copied up before it stay;
//! - `statfs` through the overlay shows the upper filesystem's free pages.
//!
//! The pages in use are those of every inode under the driver root, counted once however
//! many names it has: the layers' files, the containers' upper files, and the driver's own
//! files (overlay2's `link` and `lower`, overlay's `lower-id`), as the storage listing
//! renders them (`layout::space_used`). On ext4 the same listing is costed in blocks and
//! inodes ([`ext4`]), on xfs in blocks ([`xfs`]).

/// The page size tmpfs allocates in (x86-64).
pub const PAGE: u64 = crate::layout::PAGE_SIZE as u64;

/// `SHORT_SYMLINK_LEN` (mm/shmem.c): a target of fewer bytes than this, its NUL included,
/// is kept in the inode.
pub const SHORT_SYMLINK_LEN: usize = 128;

/// The pages a symlink with a `len`-byte target takes on tmpfs.
pub fn symlink_pages(len: u64) -> u64 {
    u64::from(len + 1 > SHORT_SYMLINK_LEN as u64)
}

pub(crate) mod ext4;
pub(crate) mod xfs;

pub use ext4::Geometry as Ext4Geometry;
pub use xfs::Geometry as XfsGeometry;

/// The filesystem whose space the model accounts for, and what each kind of inode costs
/// on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpaceFs {
    /// A size-capped tmpfs: pages.
    Tmpfs,
    /// ext4 with 4 KiB blocks ([`ext4`]): blocks and inodes.
    Ext4,
    /// xfs with 4 KiB blocks ([`xfs`]): blocks (inodes come from chunks made beforehand).
    Xfs,
}

impl SpaceFs {
    /// The filesystem's name.
    pub fn name(self) -> &'static str {
        match self {
            SpaceFs::Tmpfs => "tmpfs",
            SpaceFs::Ext4 => "ext4",
            SpaceFs::Xfs => "xfs",
        }
    }

    /// The blocks a new directory takes.
    pub fn dir_blocks(self) -> u64 {
        u64::from(self == SpaceFs::Ext4)
    }

    /// The blocks a symlink with a `len`-byte target takes.
    pub fn symlink_blocks(self, len: u64) -> u64 {
        match self {
            SpaceFs::Tmpfs => symlink_pages(len),
            SpaceFs::Ext4 => u64::from(len + 1 > ext4::SLOW_SYMLINK_MIN),
            SpaceFs::Xfs => u64::from(len > xfs::LITINO),
        }
    }
}

/// What a step may still take of the driver root's filesystem: blocks (tmpfs pages), and
/// inodes where they are counted (ext4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The filesystem.
    pub fs: SpaceFs,
    /// Blocks (pages) left.
    pub blocks: u64,
    /// Inodes left, where they run out.
    pub inodes: Option<u64>,
    /// ext4: an xattr block holding only `trusted.overlay.impure` exists, which a directory
    /// that spills `impure` shares (`mbcache`).
    pub impure_block: bool,
}
