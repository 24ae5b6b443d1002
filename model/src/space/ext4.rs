//! Space on an ext4 driver root: the blocks and inodes `mkfs.ext4` leaves free, and what
//! each inode of the driver root takes, so that the model predicts ENOSPC at the step and
//! byte where the kernel gives it.
//!
//! The filesystem is the one the real side makes: `mkfs.ext4 -b 4096 -E nodiscard -O
//! ^has_journal` (e2fsprogs 1.47's `ext4` features otherwise: extents, `flex_bg`,
//! `metadata_csum`, `64bit`, `resize_inode`, `dir_index`, 256-byte inodes), with `-N` when
//! the scenario names `inodes`.
//!
//! **What mkfs leaves** ([`Geometry`]), as e2fsprogs' `ext2fs_initialize` lays it out: block
//! groups of 32768 blocks (a last group too small for its metadata and 50 blocks is cut
//! off); inodes from the size's inode ratio (mke2fs.conf: `floppy` under 3 MiB 8192 bytes
//! per inode, `small` under 512 MiB 4096, else 16384) or `-N`, rounded up to whole inode
//! table blocks per group and a multiple of 8; per group two bitmaps and the inode table;
//! in groups 0, 1 and powers of 3, 5 and 7 (`sparse_super`) a superblock, the descriptor
//! blocks (64 bytes each) and the reserved descriptor blocks (`calc_reserved_gdt_blocks`:
//! room to grow 1024 times); then the root directory (1 block), `lost+found` (4 blocks) and
//! the resize inode's double-indirect block. Inodes 1 to 11 are taken (10 reserved,
//! `lost+found`). Checked against `mkfs.ext4` and `dumpe2fs` over a sweep of sizes and inode
//! counts (`layerspec-real`'s `ext4_geometry_is_what_mkfs_makes`).
//!
//! **What root may take**: every free block but the reserved clusters
//! (`ext4_calculate_resv_clusters`: 2% of the blocks, at most 4096), which
//! `ext4_has_free_clusters` keeps back even from `CAP_SYS_RESOURCE`; the 5% `-m` reserve is
//! root's. Measured on 6.18 (64 MiB: 15343 blocks free, 327 reserved): 4 KiB writes land
//! 15016 blocks, and the next write is ENOSPC. Larger writes stop where the page cache's
//! folio for the piece does not fit (ext4 has large folios since 6.16), so the real side
//! retries a refused piece page by page (`layerspec-real`'s `write_content`).
//!
//! **What an inode takes** (measured here with `statvfs` after `sync`, 6.18):
//! - a directory: one block, which holds 4060 bytes of entries (4096 less the 12-byte
//!   checksum tail and `.` and `..`), each `(8 + name length)` rounded up to 4; one name
//!   more and the directory becomes an htree of 3 blocks, and it never shrinks. Past one
//!   block the model does not follow (`dx` leaf splits hash names with the filesystem's
//!   random seed): the run says so instead of guessing;
//! - a regular file: a block per 4 KiB block holding data (a hole costs nothing), plus
//!   one extent-tree block once it has more than the inode's 4 extents (6 one-block runs:
//!   7 blocks); an extent covers at most 32768 blocks;
//! - a symlink whose target with its NUL passes the inode's 60 bytes of `i_block`: a block
//!   (`ext4_symlink`; 59 bytes: none, 60: one);
//! - a device (overlayfs's whiteout), an empty file: nothing but the inode;
//! - extended attributes: kept in the inode while they fit its 88 bytes (256-byte inode,
//!   `i_extra_isize` 32, a 4-byte header and a 4-byte end mark), each taking `16 + name`
//!   (without its `trusted.`/`user.` prefix) and its value, each rounded up to 4; one that
//!   does not fit goes to an xattr block, which ext4 shares among inodes whose blocks hold
//!   the same attributes (`mbcache`: a second and third directory with a 29-byte
//!   `trusted.overlay.origin` in the inode and `impure` in a block took no block).

use std::collections::BTreeMap;

/// The block size the real side formats with.
pub const BLOCK: u64 = 4096;
/// Bytes of extended attributes a 256-byte inode holds in its body.
pub const IN_INODE_XATTR_ROOM: u64 = 88;
/// Bytes of entries a directory's first block holds.
pub const DIR_BLOCK_ROOM: u64 = 4060;
/// A symlink target this long or longer, its NUL added, does not fit `i_block`.
pub const SLOW_SYMLINK_MIN: u64 = 60;
/// Extents the inode itself holds.
const INODE_EXTENTS: u64 = 4;
/// Extents an extent-tree leaf block holds: (4096 - 12-byte header) / 12.
const LEAF_EXTENTS: u64 = 340;
/// The longest initialized extent, in blocks.
const MAX_EXTENT: u64 = 32768;
/// The first inode a file gets: 1 to 10 are reserved, 11 is `lost+found`.
pub const FIRST_INO: u64 = 11;
/// The length of `trusted.overlay.origin` on an ext4 lower: `struct ovl_fb` (5 bytes and
/// the 16-byte uuid) and ext4's 8-byte `FILEID_INO32_GEN` handle.
pub const ORIGIN_LEN: u64 = 29;

/// The bytes a directory entry for a name of `len` bytes takes (`EXT4_DIR_REC_LEN`).
pub fn dirent_len(len: usize) -> u64 {
    (8 + len as u64 + 3) & !3
}

/// The bytes an extended attribute takes in the inode: its entry (`EXT4_XATTR_LEN`, the
/// name without its namespace prefix) and its value (`EXT4_XATTR_SIZE`).
pub fn xattr_len(name: &str, value_len: u64) -> u64 {
    let bare = ["trusted.", "user.", "security.", "system."]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    ((16 + bare.len() as u64 + 3) & !3) + ((value_len + 3) & !3)
}

/// Where a set of extended attributes goes when set in the order given (`ext4_xattr_set`
/// tries the inode body first): those that spill into the xattr block, in order, or `None`
/// when all fit in the inode.
pub fn xattr_spill(xattrs: &[(String, u64)]) -> Option<Vec<(String, u64)>> {
    let mut room = IN_INODE_XATTR_ROOM;
    let mut spilled = Vec::new();
    for (name, len) in xattrs {
        let need = xattr_len(name, *len);
        if need <= room {
            room -= need;
        } else {
            spilled.push((name.clone(), *len));
        }
    }
    (!spilled.is_empty()).then_some(spilled)
}

/// The extent-tree blocks of a file whose data lies in `runs` of contiguous blocks (each a
/// length in blocks), or `Err` with why it cannot be told: where the allocator puts a run
/// decides whether it crosses a group's backup superblock and splits.
pub fn extent_blocks(runs: &[u64]) -> Result<u64, String> {
    let fewest: u64 = runs.iter().map(|r| r.div_ceil(MAX_EXTENT)).sum();
    // A run of two blocks or more may straddle a group's backup superblock and split.
    let most: u64 = runs
        .iter()
        .map(|&r| r.min(2 * r.div_ceil(MAX_EXTENT)))
        .sum();
    let blocks = |n: u64| u64::from(n > INODE_EXTENTS);
    if blocks(fewest) == blocks(most) && most <= LEAF_EXTENTS {
        Ok(blocks(fewest))
    } else {
        Err(format!(
            "a file in {} runs of data ({} blocks) may or may not need an extent block, \
             depending on where ext4 places it",
            runs.len(),
            runs.iter().sum::<u64>()
        ))
    }
}

/// The extent blocks `data` needs more once `content`'s bytes up to `stop` are written at
/// `at` (0 where either count cannot be told).
pub fn grown_extent_blocks(
    data: &crate::data::FileData,
    at: u64,
    stop: u64,
    content: &crate::step::Content,
) -> u64 {
    if stop <= at {
        return 0;
    }
    let page = crate::space::PAGE;
    let before = extent_blocks(&data.page_run_lengths(page));
    let mut after = data.clone();
    after.write(at, &content.prefix(stop - at));
    let after = extent_blocks(&after.page_run_lengths(page));
    match (before, after) {
        (Ok(b), Ok(a)) => a.saturating_sub(b),
        _ => 0,
    }
}

/// The blocks and inodes a fresh ext4 of a given size offers, as `mkfs.ext4` makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the filesystem (`s_blocks_count`).
    pub blocks: u64,
    /// Blocks free after mkfs (`s_free_blocks_count`).
    pub free_blocks: u64,
    /// Inodes (`s_inodes_count`).
    pub inodes: u64,
    /// Clusters ext4 keeps back from every allocation but its own metadata.
    pub resv_clusters: u64,
}

const BLOCKS_PER_GROUP: u64 = 32768;
const INODE_SIZE: u64 = 256;
const DESC_PER_BLOCK: u64 = BLOCK / 64;

impl Geometry {
    /// The filesystem `mkfs.ext4` makes on `bytes`, with `inodes` (`-N`) if given; `Err`
    /// where mkfs would refuse it.
    pub fn new(bytes: u64, inodes: Option<u64>) -> Result<Geometry, String> {
        let all = bytes / BLOCK;
        let mut blocks = all;
        // mke2fs `parse_fs_type`: the size type by megabytes, and its inode ratio.
        let meg = (1 << 20) / BLOCK;
        let ratio = if all < 3 * meg {
            8192
        } else if all < 512 * meg {
            4096
        } else {
            16384
        };
        let asked = inodes.unwrap_or(all * BLOCK / ratio).max(FIRST_INO + 1);
        let mut bpg = BLOCKS_PER_GROUP;
        loop {
            let groups = blocks.div_ceil(bpg);
            if groups == 0 {
                return Err(format!("{bytes} bytes is too small for ext4"));
            }
            let mut ipg = asked.div_ceil(groups);
            if ipg > BLOCK * 8 {
                // `ext2fs_initialize`: smaller groups, so that more of them hold the inodes,
                // on the whole size again.
                if bpg < 256 {
                    return Err(format!("{asked} inodes do not fit {bytes} bytes"));
                }
                bpg -= 8;
                blocks = all;
                continue;
            }
            ipg = ipg.min(BLOCK * 8);
            let itable = (ipg * INODE_SIZE).div_ceil(BLOCK);
            ipg = (itable * BLOCK / INODE_SIZE) & !7;
            let itable = (ipg * INODE_SIZE).div_ceil(BLOCK);
            let desc = groups.div_ceil(DESC_PER_BLOCK);
            let rsv_gdt = {
                let max = if blocks < 0xffff_ffff / 1024 {
                    blocks * 1024
                } else {
                    0xffff_ffff
                };
                (max.div_ceil(bpg).div_ceil(DESC_PER_BLOCK) - desc).min(BLOCK / 4)
            };
            if 3 + itable + rsv_gdt + desc > bpg {
                return Err(format!("{asked} inodes do not fit {bytes} bytes"));
            }
            // The last group must hold its metadata and 50 blocks, or it goes.
            let last_overhead = 2
                + itable
                + if has_super(groups - 1) {
                    1 + desc + rsv_gdt
                } else {
                    0
                };
            let rem = blocks % bpg;
            if groups == 1 && rem != 0 && rem < last_overhead {
                return Err(format!("{bytes} bytes is too small for ext4"));
            }
            if rem != 0 && rem < last_overhead + 50 {
                blocks -= rem;
                continue;
            }
            let supers = (0..groups).filter(|&g| has_super(g)).count() as u64;
            let overhead = groups * (2 + itable) + supers * (1 + desc + rsv_gdt);
            // The root directory, lost+found (16 KiB), the resize inode's block.
            let files = 1 + 4 + 1;
            return Ok(Geometry {
                blocks,
                free_blocks: blocks - overhead - files,
                inodes: ipg * groups,
                resv_clusters: (blocks / 50).min(4096),
            });
        }
    }

    /// The blocks root's files may take: free less the reserved clusters.
    pub fn usable_blocks(&self) -> u64 {
        self.free_blocks.saturating_sub(self.resv_clusters)
    }

    /// The inodes left for files.
    pub fn free_inodes(&self) -> u64 {
        self.inodes - FIRST_INO
    }
}

/// Whether block group `g` holds a superblock backup (`sparse_super`: 0, 1 and the powers
/// of 3, 5 and 7).
fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut p = b;
        while p < g {
            p *= b;
        }
        p == g
    })
}

/// The blocks of the driver root's inodes on ext4, counted as [`crate::layout`] lists them.
#[derive(Default)]
pub(crate) struct Tally {
    /// Blocks each inode takes itself, by inode key.
    blocks: BTreeMap<String, u64>,
    /// Entry bytes in each directory, by path.
    dirents: BTreeMap<String, u64>,
    /// Distinct xattr blocks (`mbcache` shares equal ones).
    xattr_blocks: std::collections::BTreeSet<Vec<(String, u64)>>,
    /// Why the count is not exact, if it is not.
    pub unexact: Option<String>,
}

impl Tally {
    /// Counts an inode `key` met at `path`: `blocks` of its own, and its xattrs in the order
    /// the kernel sets them. A name met again (a hard link) adds only its directory entry.
    pub fn inode(
        &mut self,
        path: &str,
        key: &str,
        blocks: Result<u64, String>,
        xattrs: &[(String, u64)],
    ) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        *self.dirents.entry(parent.to_string()).or_default() += dirent_len(name.len());
        if self.blocks.contains_key(key) {
            return;
        }
        let own = blocks.unwrap_or_else(|why| {
            self.unexact.get_or_insert(format!("`{path}`: {why}"));
            0
        });
        self.blocks.insert(key.to_string(), own);
        if let Some(spill) = xattr_spill(xattrs) {
            let user = xattrs
                .iter()
                .any(|(n, _)| !n.starts_with("trusted.overlay."));
            if user {
                self.unexact.get_or_insert(format!(
                    "`{path}`: its extended attributes do not all fit the inode, and which go \
                     to a block depends on the order they were set"
                ));
            }
            self.xattr_blocks.insert(spill);
        }
    }

    /// Whether an xattr block holds `trusted.overlay.impure` alone.
    pub fn has_impure_block(&self) -> bool {
        self.xattr_blocks
            .contains(&vec![("trusted.overlay.impure".to_string(), 1)])
    }

    /// The blocks counted, and the inodes.
    pub fn total(&mut self) -> (u64, u64) {
        for (dir, bytes) in &self.dirents {
            if *bytes > DIR_BLOCK_ROOM {
                self.unexact.get_or_insert(format!(
                    "directory `{dir}` holds {bytes} bytes of entries, more than one block's \
                     {DIR_BLOCK_ROOM}: ext4 makes it an htree, whose growth the model does \
                     not follow"
                ));
            }
        }
        let blocks = self.blocks.values().sum::<u64>() + self.xattr_blocks.len() as u64;
        (blocks, self.blocks.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 MiB, measured with `dumpe2fs -h` and writes of 4 KiB until ENOSPC.
    #[test]
    fn a_64_mib_filesystem_gives_root_15016_blocks() {
        let g = Geometry::new(64 << 20, None).unwrap();
        assert_eq!((g.blocks, g.free_blocks, g.inodes), (16384, 15343, 16384));
        assert_eq!(g.resv_clusters, 327);
        assert_eq!(g.usable_blocks(), 15016);
    }

    #[test]
    fn xattrs_spill_past_88_bytes() {
        let origin = ("trusted.overlay.origin".to_string(), ORIGIN_LEN);
        let impure = ("trusted.overlay.impure".to_string(), 1);
        assert_eq!(xattr_len(&origin.0, origin.1), 64);
        assert_eq!(xattr_spill(std::slice::from_ref(&origin)), None);
        assert_eq!(xattr_spill(&[origin, impure.clone()]), Some(vec![impure]));
        // user.a (20) with 68 bytes fits exactly; 69 does not.
        assert_eq!(xattr_spill(&[("user.a".into(), 68)]), None);
        assert!(xattr_spill(&[("user.a".into(), 69)]).is_some());
    }

    #[test]
    fn extents_past_four_take_a_block() {
        assert_eq!(extent_blocks(&[1; 4]), Ok(0));
        assert_eq!(extent_blocks(&[1; 6]), Ok(1));
        assert_eq!(extent_blocks(&[10240]), Ok(0));
        // 5 extents at least: a block, however the runs split.
        assert_eq!(extent_blocks(&[1, 1, 1, 40000]), Ok(1));
        // 3 extents, or 5 if both 2-block runs straddle a backup superblock.
        assert!(extent_blocks(&[2, 2, 1]).is_err());
    }

    #[test]
    fn superblock_backups_follow_sparse_super() {
        let with: Vec<u64> = (0..60).filter(|&g| has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
