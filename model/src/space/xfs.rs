//! Space on an xfs driver root: the blocks `mkfs.xfs` and the mount leave free, what the
//! real side's fixture takes, and what each inode of the driver root takes, so that the
//! model predicts where a write runs out, to the block.
//!
//! The filesystem is the one the real side makes: `mkfs.xfs -q -f` (xfsprogs 6.1 defaults:
//! 4 KiB blocks, 512-byte inodes, `crc`, `finobt`, `reflink`, `sparse`, no `rmapbt`).
//!
//! **What mkfs lays out** ([`Geometry`]), checked against `mkfs.xfs`, `xfs_db` and
//! `statfs` over a sweep of sizes from 300 MiB to 1 TiB (`layerspec-real`'s
//! `xfs_geometry_is_what_mkfs_and_the_mount_make`): 4 allocation groups of
//! ceil(blocks / 4) (the last one takes the rest); an internal log of max(16384,
//! blocks / 2048) blocks, at most (2 GiB − 10 MiB) / 4 KiB, in AG 2; free after mkfs, the
//! blocks less the log and 32 (each AG's 4 header sectors and 5 btree roots, and the first
//! inode chunk, 8 blocks). mkfs refuses less than 300 MiB.
//!
//! **What the mount keeps back** (`statfs`'s `f_bfree` is what a write may take):
//! - the reserve pool, min(blocks / 20, 8192) (`xfs_default_resblks`);
//! - 8 blocks per AG for the free-list refill (`xfs_alloc_set_aside`);
//! - each AG's metadata reservation, less the root blocks its btrees already hold
//!   (`xfs_ag_resv_init`): the largest refcount btree the AG could need
//!   (`xfs_refcountbt_calc_reserves`: one record per block, 168 per leaf at least, 252 per
//!   node) and the largest free-inode btree (`xfs_finobt_calc_reserves`: a record per 64
//!   inodes, 8 inodes per block, 126 per leaf, 252 per node), over the AG's blocks, the
//!   log's taken out of AG 2's.
//!
//! **The fixture.** Inodes come in chunks of 64 (8 blocks) per AG, and a new directory
//! goes to the next AG in turn (`xfs_dialloc`'s rotor), a file to its parent's: where a
//! chunk is needed depends on every directory made since the mount. So the real side makes
//! the chunks first: [`PREMADE_DIRS`] directories in a holder, one kept per chunk (the rest
//! removed), so that every AG holds about a thousand free inodes and no step needs a
//! chunk. It takes 65 chunks and one directory block, and the model counts them
//! ([`Geometry::fixture_blocks`]); past [`EXACT_INODES`] inodes it no longer claims to know.
//!
//! **Where a write stops.** A buffered write reserves its blocks and the worst-case
//! extent-tree blocks for a new delayed extent (`xfs_bmapi_reserve_delalloc`:
//! `xfs_bmap_worst_indlen` of one block is [`WORST_INDLEN`]); on ENOSPC xfs writes back
//! and frees speculative preallocations, then tries again. So a file grows until
//! [`WORST_INDLEN`] blocks are left. Measured on 6.18, 512 MiB with the fixture: 106,748
//! blocks free, 106,743 landed, 5 left.
//!
//! **What an inode takes**, as `xfs_db` and `statfs` show it here:
//! - a directory: nothing while its short-form entries (a 6-byte header, `8 + name` each)
//!   fit the inode's data fork (336 bytes less the attribute fork; 192 when the inode was
//!   made with one, as where a security module keeps a blob on the superblock); one block (a block
//!   directory) while its entries (`12 + name` rounded to 8, `.` and `..` included, and 8
//!   bytes of leaf each) fit 4096 less a 64-byte header and 8-byte tail; past that the
//!   model does not follow (leaf and node directories, and holes left by removed names);
//! - a symlink: nothing while its target fits the data fork, else a block;
//! - a regular file: its data blocks; its extents stay in the inode;
//! - a copied-up file: a copy-up clones the lower file's whole blocks and copies its last
//!   partial one (`ovl_copy_up_file`: `vfs_clone_file_range`, then `vfs_copy_file_range`,
//!   which clones whole blocks and copies the tail; measured: a 4-byte file's copy owns
//!   its block, a 100,000-byte file's copy shares 24 blocks and owns the 25th), and a
//!   write to a shared block gives the copy its own: the copy owns its tail and the pages
//!   written since (`FileData::pages_not_shared_with`);
//! - a device (a whiteout), an empty file: nothing;
//! - extended attributes: the inode's attribute fork (a 4-byte header, `3 + name + value`
//!   each, the name without its namespace), which takes room from the data fork.
//!
//! **What the model does not follow**, stopping the run past 4/5 of the space (with the
//! reason) rather than guessing: directories past one block; attribute forks near the
//! data fork's limit, or a data fork whose size depends on whether the kernel's security
//! modules give new inodes an attribute fork; files in many pieces. And **near full**:
//! every metadata transaction reserves blocks up front (`xfs_trans_alloc` with
//! `XFS_CREATE_SPACE_RES` and the like), whether or not it uses them, and a write to a
//! shared block reserves a copy-on-write extent of 32 blocks: below [`NEAR_FULL`] free
//! blocks the model follows only reads, and writes, truncates and unlinks of files that
//! only the upper layer has; any other step that runs out, or leaves less than that,
//! stops the run.

use std::collections::BTreeMap;

/// The block size.
pub const BLOCK: u64 = 4096;
/// Bytes of an inode's literal area (512-byte inodes less the 176-byte v3 core).
pub const LITINO: u64 = 336;
/// `xfs_bmap_worst_indlen` of a one-block delayed extent: one block per level of a
/// data-fork extent tree (5 levels here).
pub const WORST_INDLEN: u64 = 5;
/// Directories the fixture makes in a holder to have inode chunks made in every AG.
pub const PREMADE_DIRS: u64 = 4096;
/// Inodes past which the model does not claim that no AG needs a new chunk (each AG has
/// at least 1008 free after the fixture; the rest is room for inodes being freed).
pub const EXACT_INODES: u64 = 500;
/// Runs of data past which a file's extents may not all fit its inode (12 extents in a
/// 192-byte data fork; a run may split where free space does, at AG ends among others).
pub const EXACT_RUNS: usize = 4;
/// Free blocks below which the model follows only reads and data writes.
pub const NEAR_FULL: u64 = 1024;
/// Smallest filesystem `mkfs.xfs` makes.
pub const MIN_BYTES: u64 = 300 << 20;
/// Largest size the model follows: inode numbers stay below 2^32 (AGs of at most 2^27
/// blocks), so short-form directories hold 4-byte numbers.
pub const MAX_BYTES: u64 = 1 << 41;
/// Inodes per chunk.
const CHUNK_INODES: u64 = 64;
/// Blocks per chunk (64 inodes of 512 bytes).
const CHUNK_BLOCKS: u64 = 8;
/// Free inodes in AG 0's first chunk after mkfs (the root and two realtime inodes).
const ROOT_CHUNK_FREE: u64 = 61;
/// Allocation groups mkfs makes below 4 TiB.
const AGS: u64 = 4;
/// The length of `trusted.overlay.origin` on xfs: `struct ovl_fb` (5 bytes and the
/// 16-byte uuid) and xfs's 8-byte `FILEID_INO32_GEN` handle.
pub const ORIGIN_LEN: u64 = 29;

/// The blocks a fresh xfs of a given size offers, as `mkfs.xfs` makes it and the mount
/// keeps back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the filesystem (`sb_dblocks`).
    pub blocks: u64,
    /// Blocks per AG (`sb_agblocks`).
    pub ag_blocks: u64,
    /// Log blocks (`sb_logblocks`).
    pub log_blocks: u64,
    /// Free blocks in the superblock after mkfs (`sb_fdblocks`).
    pub sb_free: u64,
    /// `statfs`'s `f_bfree` after the mount.
    pub free_at_mount: u64,
}

/// `xfs_btree_calc_size`: the blocks of a btree of `records` with at least `leaf` records
/// per leaf and `node` pointers per node.
fn btree_size(leaf: u64, node: u64, records: u64) -> u64 {
    let mut level = records.div_ceil(leaf);
    let mut blocks = level;
    while level > 1 {
        level = level.div_ceil(node);
        blocks += level;
    }
    blocks
}

impl Geometry {
    /// The filesystem `mkfs.xfs` makes on `bytes`; `Err` where mkfs refuses it or where
    /// the model does not follow its layout.
    pub fn new(bytes: u64) -> Result<Geometry, String> {
        if bytes < MIN_BYTES {
            return Err(format!(
                "{bytes} bytes: mkfs.xfs makes no filesystem under 300 MiB"
            ));
        }
        if bytes > MAX_BYTES {
            return Err(format!(
                "{bytes} bytes: the model follows xfs's space up to 2 TiB"
            ));
        }
        let blocks = bytes / BLOCK;
        let ag_blocks = blocks.div_ceil(AGS);
        let log_blocks = (blocks / 2048).clamp(16384, ((2 << 30) - (10 << 20)) / BLOCK);
        let sb_free = blocks - log_blocks - 32;
        let resblks = (blocks / 20).min(8192);
        let set_aside = AGS * 8;
        let mut ag_resv = 0;
        for ag in 0..AGS {
            let mut len = if ag < AGS - 1 {
                ag_blocks
            } else {
                blocks - (AGS - 1) * ag_blocks
            };
            if ag == AGS / 2 {
                len -= log_blocks;
            }
            let refcount = btree_size(168, 252, len);
            let finobt = btree_size(126, 252, len * 8 / CHUNK_INODES);
            // Less each tree's root block, already counted as used.
            ag_resv += refcount + finobt - 2;
        }
        Ok(Geometry {
            blocks,
            ag_blocks,
            log_blocks,
            sb_free,
            free_at_mount: sb_free - resblks - set_aside - ag_resv,
        })
    }

    /// The inode chunks the fixture makes: the holder, its `keep` directory and
    /// [`PREMADE_DIRS`] directories go to AGs 0, 1, 2, 3, 0, … in turn; AG 0 starts with 61
    /// free inodes in mkfs's chunk.
    pub fn fixture_chunks(&self) -> u64 {
        let dirs = PREMADE_DIRS + 2;
        (0..AGS)
            .map(|ag| {
                let n = dirs / AGS + u64::from(ag < dirs % AGS);
                if ag == 0 {
                    n.saturating_sub(ROOT_CHUNK_FREE).div_ceil(CHUNK_INODES)
                } else {
                    n.div_ceil(CHUNK_INODES)
                }
            })
            .sum()
    }

    /// The blocks the fixture leaves taken: its chunks, and the block directory holding
    /// one kept directory per chunk (but `keep`'s own).
    pub fn fixture_blocks(&self) -> u64 {
        self.fixture_chunks() * CHUNK_BLOCKS + 1
    }

    /// The blocks the driver root's files may take: free after the mount and the fixture,
    /// less what the last block written reserves besides itself.
    pub fn usable_blocks(&self) -> u64 {
        self.free_at_mount - self.fixture_blocks() - WORST_INDLEN
    }
}

/// The bytes of an attribute fork in short form holding `xattrs` (name, value length).
pub fn attr_fork_bytes(xattrs: &[(String, u64)]) -> u64 {
    if xattrs.is_empty() {
        return 0;
    }
    4 + xattrs
        .iter()
        .map(|(name, len)| {
            let bare = ["trusted.", "user.", "security.", "system."]
                .iter()
                .find_map(|p| name.strip_prefix(p))
                .unwrap_or(name);
            3 + bare.len() as u64 + len
        })
        .sum::<u64>()
}

/// The data fork's room in an inode whose attribute fork holds `attr` bytes, set on a
/// small data fork (`xfs_attr_shortform_bytesfit`: the fork offset rounds down to 8 bytes
/// and leaves the attribute fork at least a 36-byte btree root).
fn data_room(attr: u64) -> u64 {
    if attr == 0 {
        LITINO
    } else {
        (LITINO.saturating_sub(attr) / 8 * 8).min(LITINO - 40)
    }
}

/// The data fork's room when the inode was made with an attribute fork (`xfs_init_new_inode`
/// with `init_xattrs`, which `xfs_create_need_xattr` sets when the superblock carries a
/// security module's blob: on this machine's 6.18, with landlock and bpf, a directory goes
/// to a block past 192 bytes of short-form entries, measured): the default fork offset,
/// 196 bytes rounded down to 8 (`xfs_bmap_compute_attr_offset`), while the attributes fit
/// the 144 left.
fn data_room_lsm(attr: u64) -> u64 {
    if attr <= LITINO - DEFAULT_DATA_FORK {
        DEFAULT_DATA_FORK
    } else {
        data_room(attr)
    }
}

/// The data fork of an inode made with an attribute fork.
const DEFAULT_DATA_FORK: u64 = 192;

/// Whether inline data of `len` bytes stays in an inode with `attr` bytes of attributes:
/// `Ok(true)` inline, `Ok(false)` not, `Err` when it depends on what the model does not
/// know: whether the kernel's security modules give new inodes an attribute fork, and the
/// order the attributes were set in.
fn inline(len: u64, attr: u64, what: &str) -> Result<bool, String> {
    let (a, b) = (data_room(attr), data_room_lsm(attr));
    let (lo, hi) = (a.min(b), a.max(b));
    let lo = if attr == 0 { lo } else { lo.saturating_sub(16) };
    if len <= lo {
        Ok(true)
    } else if len > hi {
        Ok(false)
    } else {
        Err(format!(
            "{what} of {len} bytes beside {attr} bytes of attributes: whether it stays in \
             the inode depends on whether the kernel's security modules give new inodes an \
             attribute fork ({DEFAULT_DATA_FORK} bytes left for data, or {a}) and on the \
             order the attributes were set in"
        ))
    }
}

/// The blocks of the driver root's inodes on xfs, counted as [`crate::layout`] lists them.
#[derive(Default)]
pub(crate) struct Tally {
    /// Blocks each inode takes, by inode key.
    blocks: BTreeMap<String, u64>,
    /// Each directory's names' lengths and its attribute bytes, by path.
    dirs: BTreeMap<String, (Vec<u64>, u64)>,
    /// Why the count is not exact, if it is not.
    pub unexact: Option<String>,
}

impl Tally {
    /// Counts an inode `key` met at `path`, of `kind` (the listing's), `size` bytes (a
    /// symlink's target), `data` blocks of its own (a file's: a copy-up's, those written
    /// since), and `xattrs`. `clone`: a copied-up file whose shared blocks are not known.
    /// A name met again (a hard link) adds only its directory entry.
    #[allow(clippy::too_many_arguments)]
    pub fn inode(
        &mut self,
        path: &str,
        key: &str,
        kind: &str,
        size: u64,
        data: Result<u64, String>,
        clone: bool,
        xattrs: &[(String, u64)],
    ) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        self.dirs
            .entry(parent.to_string())
            .or_default()
            .0
            .push(name.len() as u64);
        if self.blocks.contains_key(key) {
            return;
        }
        let attr = attr_fork_bytes(xattrs);
        if attr > LITINO / 2 {
            self.note(format!(
                "`{path}` has {attr} bytes of extended attributes: whether xfs keeps them in \
                 the inode or a block depends on its data fork when they were set"
            ));
        }
        let own = match kind {
            "dir" => {
                self.dirs.entry(path.to_string()).or_default().1 = attr;
                0
            }
            "symlink" => match inline(size, attr, "a symlink target") {
                Ok(i) => u64::from(!i),
                Err(why) => {
                    self.note(format!("`{path}`: {why}"));
                    0
                }
            },
            "file" if clone => {
                self.note(format!(
                    "`{path}` was copied up from a lower file the model does not find: which \
                     of its blocks it shares (a reflink clone) is not known"
                ));
                // At most its own blocks, once every one is written: counted so, the
                // model stops before the kernel can run out.
                data.unwrap_or(0)
            }
            "file" => data.unwrap_or_else(|why| {
                self.note(format!("`{path}`: {why}"));
                0
            }),
            _ => 0,
        };
        self.blocks.insert(key.to_string(), own);
    }

    fn note(&mut self, why: String) {
        self.unexact.get_or_insert(why);
    }

    /// The blocks counted, and the inodes.
    pub fn total(&mut self) -> (u64, u64) {
        let mut dir_blocks = 0;
        for (dir, (names, attr)) in std::mem::take(&mut self.dirs) {
            match dir_blocks_for(&names, attr) {
                Ok(n) => dir_blocks += n,
                Err(why) => self.note(format!("directory `{dir}`: {why}")),
            }
        }
        let inodes = self.blocks.len() as u64;
        if inodes > EXACT_INODES {
            self.note(format!(
                "{inodes} inodes: past {EXACT_INODES} the model does not claim that no AG \
                 needs a new inode chunk"
            ));
        }
        (self.blocks.values().sum::<u64>() + dir_blocks, inodes)
    }
}

/// A directory's `st_size` on xfs with names of `names` lengths beside `xattrs`: its
/// short-form bytes while they stay in the inode, else its one block's 4096 (`Err` where
/// the model cannot tell, or past one block). Measured: an empty directory 6, ten one-byte
/// names 96, a block 4096.
pub fn dir_size(names: &[usize], xattrs: &[(String, u64)]) -> Result<u64, String> {
    let names: Vec<u64> = names.iter().map(|&n| n as u64).collect();
    let short = 6 + names.iter().map(|n| 8 + n).sum::<u64>();
    let attr = attr_fork_bytes(xattrs);
    if inline(short, attr, "a short-form directory")? {
        return Ok(short);
    }
    dir_blocks_for(&names, attr)?;
    Ok(BLOCK)
}

/// The blocks of a directory holding names of `names` lengths beside `attr` bytes of
/// attributes.
fn dir_blocks_for(names: &[u64], attr: u64) -> Result<u64, String> {
    let short = 6 + names.iter().map(|n| 8 + n).sum::<u64>();
    if inline(short, attr, "a short-form directory")? {
        return Ok(0);
    }
    let entry = |n: u64| (12 + n).div_ceil(8) * 8 + 8;
    let block = 64 + 8 + entry(1) + entry(2) + names.iter().map(|&n| entry(n)).sum::<u64>();
    if block <= BLOCK - 64 {
        Ok(1)
    } else {
        Err(format!(
            "{} names take {block} bytes of a block directory's 4096: near or past one \
             block, xfs's layout of leaf and node directories is not followed",
            names.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measured here with `mkfs.xfs`, `xfs_db` and `statfs` (xfsprogs 6.1, 6.18).
    #[test]
    fn geometry_is_what_was_measured() {
        let cases: &[(u64, u64, u64, u64, u64)] = &[
            // bytes, agblocks, logblocks, sb fdblocks, f_bfree at mount
            (300 << 20, 19200, 16384, 60384, 56087),
            (512 << 20, 32768, 16384, 114656, 107269),
            (1 << 30, 65536, 16384, 245728, 235783),
            (796442624, 48611, 16384, 178028, 168557),
            (129 << 30, 8454144, 16512, 33800032, 33556144),
            (1 << 40, 67108864, 131072, 268304352, 266425462),
        ];
        for &(bytes, ag, log, sb, free) in cases {
            let g = Geometry::new(bytes).unwrap();
            assert_eq!(
                (g.ag_blocks, g.log_blocks, g.sb_free, g.free_at_mount),
                (ag, log, sb, free),
                "{bytes}"
            );
        }
        assert!(Geometry::new((300 << 20) - 4096).is_err());
    }

    /// 512 MiB: the fixture made 66 chunks (65 new) and a directory block, 106,748 free,
    /// and a file grew to 106,743 blocks.
    #[test]
    fn a_512_mib_filesystem_gives_a_file_106743_blocks() {
        let g = Geometry::new(512 << 20).unwrap();
        assert_eq!(g.fixture_chunks(), 65);
        assert_eq!(g.free_at_mount - g.fixture_blocks(), 106_748);
        assert_eq!(g.usable_blocks(), 106_743);
    }

    #[test]
    fn directories_are_short_form_then_one_block() {
        // Measured on 6.18 (landlock, bpf): 20 one-byte names (6 + 20 * 9 = 186 bytes)
        // inline, 21 a block. Without an attribute fork made with the inode, 36 (330)
        // would stay inline: between the two the model does not say.
        assert_eq!(dir_blocks_for(&[1; 20], 0), Ok(0));
        assert!(dir_blocks_for(&[1; 21], 0).is_err());
        assert!(dir_blocks_for(&[1; 36], 0).is_err());
        assert_eq!(dir_blocks_for(&[1; 37], 0), Ok(1));
        // Beside an origin handle and `impure` (a 68-byte fork): 264 bytes of room.
        let attr = attr_fork_bytes(&[
            ("trusted.overlay.origin".into(), ORIGIN_LEN),
            ("trusted.overlay.impure".into(), 1),
        ]);
        assert_eq!(attr, 68);
        assert_eq!(data_room(attr), 264);
        assert_eq!(dir_blocks_for(&[1; 18], attr), Ok(0));
        assert!(dir_blocks_for(&[1; 19], attr).is_err());
        assert_eq!(dir_blocks_for(&[1; 37], attr), Ok(1));
        assert!(dir_blocks_for(&[10; 200], 0).is_err());
    }
}
