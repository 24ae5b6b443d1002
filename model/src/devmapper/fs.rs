//! A stand-in for ext4 on a thin device: which 4 KiB filesystem blocks each step writes, so
//! that the thin pool beneath allocates and copies what dm-thin would (S17, S23, S24).
//!
//! Where ext4 puts things is its allocator's business and the model does not predict it.
//! This stand-in lays a filesystem out the way a fresh ext4 of Docker's base size does in
//! its first flex group, and writes per step what ext4 writes: the changed 4 KiB data
//! blocks; for every changed inode its inode-table block (relatime included: the first read
//! after a change updates the access time); the block of every changed directory; the
//! block and inode bitmaps and the group descriptors when blocks or inodes are allocated or
//! freed; those metadata blocks once more in the journal, with a descriptor and a commit
//! block; the superblock at mount and unmount. Data blocks come from a bump allocator and
//! are not reused; a directory has one block, a symlink longer than 59 bytes one block, a
//! file one block for each 4 KiB page that holds data (a hole takes none, as in ext4).
//!
//! Not modelled: ext4 also writes its superblock through the journal at the first open of
//! a file after each mount, to record the mount point (`ext4_sample_last_mounted`,
//! fs/ext4/file.c): seen in the VM as one more journal chunk for a container that no step
//! had opened a file in; the measured ranges cover it.
//!
//! So the pool figures of a devicemapper scenario are the model's own where the filesystem
//! decides; scenarios state them as ranges measured on the real thing
//! (`tests/measure/dm_ext4_chunks.py`). What a rule decides is exact: a snapshot takes no
//! block, a second read writes nothing, deleting a device frees exactly its own blocks.

use super::runs::RunSet;
use crate::data::FileData;
use crate::lower::LowerStack;
use crate::tree::{Body, Ino, Inode, Tree, ROOT};
use std::collections::{BTreeMap, BTreeSet};

/// Bytes in a filesystem block.
pub(crate) const FS_BLOCK: u64 = 4096;

// Geometry of `mkfs.ext4 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0` on 10 GiB
// (e2fsprogs 1.47.0, `dumpe2fs`): 4 KiB blocks, 32768 blocks and 8192 inodes of 256 bytes
// per group, flex groups of 16; group 0 holds the superblock (block 0), the group
// descriptors (1-2) and 1024 reserved descriptor blocks, then the flex group's 16 block
// bitmaps (1027), 16 inode bitmaps (1043) and 16 inode tables of 512 blocks (1059); the
// root directory is block 9251, lost+found 9252-9255; the first free block is 9257; the
// journal (inode 8) is blocks 1081344-1097727. Flex group k > 0 starts its bitmaps and
// tables at its first block.
const SUPERBLOCK: u64 = 0;
const GROUP_DESCRIPTORS: u64 = 1;
const FLEX0_METADATA: u64 = 1027;
const BLOCKS_PER_GROUP: u64 = 32_768;
const INODES_PER_GROUP: u64 = 8192;
const GROUPS_PER_FLEX: u64 = 16;
const INODE_TABLE_BLOCKS: u64 = 512;
const INODES_PER_BLOCK: u64 = FS_BLOCK / 256;
const ROOT_DIR_BLOCK: u64 = 9251;
const FIRST_FREE_BLOCK: u64 = 9257;
const FIRST_INO: u64 = 12;
const JOURNAL: u64 = 1_081_344;
const JOURNAL_BLOCKS: u64 = 16_384;
/// ext4 keeps a symlink target of up to 59 bytes in the inode ("fast symlink").
const FAST_SYMLINK_MAX: usize = 59;

/// The 64 KiB chunks (first, count) Docker's mkfs and tune2fs write on the 10 GiB base
/// device: 3664 in 19 runs. Measured with `tests/measure/dm_ext4_chunks.py` (e2fsprogs
/// 1.47.0, kernel 6.18): the first flex group's metadata and inode tables, the backup
/// superblocks of groups 1, 3, 5, 7, 9, 25, 27, 49, the other flex groups' bitmaps and
/// inode tables, the 64 MiB journal, and the device's last chunk.
pub(crate) const MKFS_CHUNKS: [(u64, u64); 19] = [
    (0, 579),
    (2048, 1),
    (6144, 1),
    (10240, 1),
    (14336, 1),
    (18432, 1),
    (32768, 1),
    (32770, 512),
    (51200, 1),
    (55296, 1),
    (65536, 1),
    (65538, 512),
    (67584, 1024),
    (98304, 1),
    (98306, 512),
    (100352, 1),
    (131072, 1),
    (131074, 512),
    (163839, 1),
];

/// One inode of the stand-in filesystem.
#[derive(Clone, Debug)]
struct FsInode {
    /// Its blocks, as runs of pages `first page -> (first block, count)`: a file's data, a
    /// directory's one block, a slow symlink's target.
    blocks: BTreeMap<u64, (u64, u64)>,
    /// A file's contents as last written, to find the blocks a write changed.
    data: Option<FileData>,
    /// The model inode's change counter when last seen.
    version: u64,
    is_dir: bool,
    /// relatime: the access time is newer than the last change, so a read writes nothing.
    atime_fresh: bool,
}

/// The filesystem of one thin device, as far as block writes go. A snapshot starts with a
/// copy of its origin's.
#[derive(Clone, Debug)]
pub(crate) struct FsImage {
    inodes: BTreeMap<u64, FsInode>,
    /// The model's tree inode -> the filesystem inode holding it (its `rootfs/` for the
    /// tree's root).
    by_model: BTreeMap<Ino, u64>,
    next_ino: u64,
    next_block: u64,
    journal_head: u64,
    /// Docker's `rootfs/` directory, once a Get made it.
    rootfs: Option<u64>,
}

/// What one filesystem transaction dirtied.
#[derive(Default)]
struct Txn {
    data: RunSet,
    meta: BTreeSet<u64>,
    block_groups: BTreeSet<u64>,
    inode_groups: BTreeSet<u64>,
}

/// Flex group `k`'s first metadata block (its block bitmaps).
fn flex_metadata(k: u64) -> u64 {
    if k == 0 {
        FLEX0_METADATA
    } else {
        k * GROUPS_PER_FLEX * BLOCKS_PER_GROUP
    }
}

fn block_bitmap(group: u64) -> u64 {
    flex_metadata(group / GROUPS_PER_FLEX) + group % GROUPS_PER_FLEX
}

fn inode_bitmap(group: u64) -> u64 {
    block_bitmap(group) + GROUPS_PER_FLEX
}

fn inode_table_block(ino: u64) -> u64 {
    let group = (ino - 1) / INODES_PER_GROUP;
    let index = (ino - 1) % INODES_PER_GROUP;
    flex_metadata(group / GROUPS_PER_FLEX)
        + 2 * GROUPS_PER_FLEX
        + (group % GROUPS_PER_FLEX) * INODE_TABLE_BLOCKS
        + index / INODES_PER_BLOCK
}

impl Txn {
    fn inode(&mut self, ino: u64) {
        self.meta.insert(inode_table_block(ino));
    }

    fn inode_allocated(&mut self, ino: u64) {
        self.inode(ino);
        self.inode_groups.insert((ino - 1) / INODES_PER_GROUP);
    }

    /// Blocks `first..first + n` were allocated or freed.
    fn blocks_allocated(&mut self, first: u64, n: u64) {
        if n > 0 {
            let (a, b) = (first / BLOCKS_PER_GROUP, (first + n - 1) / BLOCKS_PER_GROUP);
            self.block_groups.extend(a..=b);
        }
    }
}

impl FsImage {
    /// The bytes of the blocks its inodes map (file data, directories, slow symlinks).
    pub(crate) fn data_bytes(&self) -> u64 {
        let blocks: u64 = self
            .inodes
            .values()
            .flat_map(|i| i.blocks.values())
            .map(|&(_, n)| n)
            .sum();
        blocks * FS_BLOCK
    }

    /// The filesystem mkfs leaves: the root directory and lost+found, nothing else.
    pub(crate) fn new() -> FsImage {
        FsImage {
            inodes: BTreeMap::new(),
            by_model: BTreeMap::new(),
            next_ino: FIRST_INO,
            next_block: FIRST_FREE_BLOCK,
            journal_head: JOURNAL + 1,
            rootfs: None,
        }
    }

    /// Mounting: the superblock is written (mount count, state) and the journal starts
    /// again after its superblock.
    pub(crate) fn mount(&mut self) -> RunSet {
        self.journal_head = JOURNAL + 1;
        RunSet::from([SUPERBLOCK])
    }

    /// Unmounting: the superblock and the journal's superblock are written.
    pub(crate) fn unmount(&mut self) -> RunSet {
        RunSet::from([SUPERBLOCK, JOURNAL])
    }

    /// Docker's Get after the mount: `rootfs/` and the `id` file (holding `id_len` bytes)
    /// are made the first time; the model's tree root is `rootfs/`.
    pub(crate) fn docker_get(&mut self, id_len: usize) -> RunSet {
        if let Some(r) = self.rootfs {
            self.by_model.insert(ROOT, r);
            return RunSet::new();
        }
        let mut txn = Txn::default();
        txn.meta.insert(ROOT_DIR_BLOCK);
        let rootfs = self.alloc_inode(&mut txn, true, RunSet::from([0]), None, 0);
        let id_pages = if id_len > 0 {
            RunSet::from([0])
        } else {
            RunSet::new()
        };
        self.alloc_inode(&mut txn, false, id_pages, None, 0);
        self.rootfs = Some(rootfs);
        self.by_model.insert(ROOT, rootfs);
        self.commit(txn)
    }

    /// Records the model's change counters as the filesystem's current state (a new
    /// container's tree starts them again).
    pub(crate) fn adopt(&mut self, tree: &Tree) {
        for (ino, inode) in tree.inodes() {
            if let Some(f) = self.by_model.get(&ino) {
                if let Some(rec) = self.inodes.get_mut(f) {
                    rec.version = inode.version;
                }
            }
        }
    }

    fn alloc_inode(
        &mut self,
        txn: &mut Txn,
        is_dir: bool,
        pages: RunSet,
        data: Option<FileData>,
        version: u64,
    ) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        txn.inode_allocated(ino);
        let mut blocks = BTreeMap::new();
        self.map_pages(txn, &mut blocks, &pages, is_dir);
        self.inodes.insert(
            ino,
            FsInode {
                blocks,
                data,
                version,
                is_dir,
                atime_fresh: false,
            },
        );
        ino
    }

    /// Gives `pages` blocks, one bump allocation in page order, and writes them (a
    /// directory's as metadata).
    fn map_pages(
        &mut self,
        txn: &mut Txn,
        blocks: &mut BTreeMap<u64, (u64, u64)>,
        pages: &RunSet,
        is_dir: bool,
    ) {
        let mut next = self.alloc_blocks(txn, pages.count());
        for (p, n) in pages.runs() {
            blocks.insert(p, (next, n));
            if is_dir {
                txn.meta.extend(next..next + n);
            } else {
                txn.data.insert_run(next, n);
            }
            next += n;
        }
    }

    /// `n` new blocks, consecutive: the first.
    fn alloc_blocks(&mut self, txn: &mut Txn, n: u64) -> u64 {
        let start = self.next_block;
        self.next_block += n;
        txn.blocks_allocated(start, n);
        start
    }

    /// A new inode for a model inode.
    fn create(&mut self, txn: &mut Txn, inode: &Inode) -> u64 {
        let (is_dir, pages, data) = match &inode.body {
            Body::Dir { .. } => (true, RunSet::from([0]), None),
            Body::File { data, .. } => (false, data_pages(data), Some(data.clone())),
            Body::Symlink(t) if t.len() > FAST_SYMLINK_MAX => (false, RunSet::from([0]), None),
            Body::Symlink(_) | Body::Whiteout => (false, RunSet::new(), None),
        };
        self.alloc_inode(txn, is_dir, pages, data, inode.version)
    }

    fn free(&mut self, txn: &mut Txn, f: u64) {
        if let Some(rec) = self.inodes.remove(&f) {
            txn.inode_allocated(f);
            for (b, n) in rec.blocks.into_values() {
                txn.blocks_allocated(b, n);
            }
        }
    }

    /// A model inode changed: its inode is written, a directory's block, and a file's
    /// blocks whose bytes differ (pages that came to hold data are allocated, in page order,
    /// pages that no longer do freed).
    fn change(&mut self, txn: &mut Txn, f: u64, inode: &Inode) {
        txn.inode(f);
        let mut rec = self.inodes.remove(&f).expect("known inode");
        rec.version = inode.version;
        rec.atime_fresh = false;
        if rec.is_dir {
            for &(b, n) in rec.blocks.values() {
                txn.meta.extend(b..b + n);
            }
        }
        if let Body::File { data, .. } = &inode.body {
            let old = rec.data.replace(data.clone());
            if !old.as_ref().is_some_and(|o| o.shares(data)) {
                let had = mapped(&rec.blocks);
                let pages = data_pages(data);
                for (p, n) in had.minus(&pages).runs() {
                    for (b, k) in unmap(&mut rec.blocks, p, n) {
                        txn.blocks_allocated(b, k);
                    }
                }
                let kept = had.intersect(&pages);
                for p in candidate_pages(old.as_ref(), data).intersect(&kept).runs() {
                    for page in p.0..p.0 + p.1 {
                        if !same_page(old.as_ref(), data, page) {
                            txn.data.insert(block_of(&rec.blocks, page));
                        }
                    }
                }
                self.map_pages(txn, &mut rec.blocks, &pages.minus(&had), false);
            }
        }
        self.inodes.insert(f, rec);
    }

    /// A container step: brings the filesystem in line with the container's tree, which
    /// the step changed; returns the blocks written.
    pub(crate) fn sync_tree(&mut self, tree: &Tree) -> RunSet {
        let mut txn = Txn::default();
        let mut live = BTreeSet::new();
        for (ino, inode) in tree.inodes() {
            if inode.nlink == 0 && ino != ROOT && !inode.pinned {
                continue;
            }
            live.insert(ino);
            match self.by_model.get(&ino).copied() {
                None => {
                    let f = self.create(&mut txn, inode);
                    self.by_model.insert(ino, f);
                }
                Some(f) => {
                    if self
                        .inodes
                        .get(&f)
                        .is_some_and(|r| r.version != inode.version)
                    {
                        self.change(&mut txn, f, inode);
                    }
                }
            }
        }
        let gone: Vec<Ino> = self
            .by_model
            .keys()
            .filter(|i| !live.contains(i))
            .copied()
            .collect();
        for ino in gone {
            if let Some(f) = self.by_model.remove(&ino) {
                if !self.by_model.values().any(|&g| g == f) {
                    self.free(&mut txn, f);
                }
            }
        }
        self.commit(txn)
    }

    /// A read of model inode `ino` (file data, a directory's entries, a symlink's target):
    /// relatime writes the access time on the first read after a change.
    pub(crate) fn access(&mut self, ino: Ino) -> RunSet {
        let mut txn = Txn::default();
        if let Some(&f) = self.by_model.get(&ino) {
            if let Some(rec) = self.inodes.get_mut(&f) {
                if !rec.atime_fresh {
                    rec.atime_fresh = true;
                    txn.inode(f);
                }
            }
        }
        self.commit(txn)
    }

    /// Docker applying a layer (`new`, the image with the layer on top, whose stack is
    /// `stack`) on a snapshot of its parent (`old`): what the top layer lists is made anew,
    /// directories it lists are updated in place, what it whites out is freed; everything
    /// else keeps its inode and blocks.
    pub(crate) fn apply_layer(&mut self, old: &Tree, new: &Tree, stack: &LowerStack) -> RunSet {
        let mut txn = Txn::default();
        let top = stack.layers().len().saturating_sub(1);
        let root = self.rootfs.expect("Docker's Get made rootfs/");
        let mut map: BTreeMap<Ino, u64> = BTreeMap::from([(ROOT, root)]);
        // Docker's applier sets the attributes of every directory it extracts, `/` too.
        self.change(&mut txn, root, new.get(ROOT));
        for (path, ino) in new.paths() {
            if map.contains_key(&ino) {
                continue;
            }
            let inode = new.get(ino);
            let from_below = stack
                .lookup(&path)
                .is_some_and(|n| stack.node(n).layer < top);
            let before = old
                .lookup(&path)
                .filter(|&o| old.get(o).is_dir() == inode.is_dir())
                .and_then(|o| self.by_model.get(&o).copied());
            let f = match before {
                Some(f) if from_below => f,
                Some(f) if inode.is_dir() => {
                    self.change(&mut txn, f, inode);
                    f
                }
                _ => {
                    let parent = crate::path::parent(&path);
                    if let Some(p) = new.lookup(parent).and_then(|p| map.get(&p)) {
                        let p = *p;
                        self.change(&mut txn, p, new.get(new.lookup(parent).expect("parent")));
                    }
                    self.create(&mut txn, inode)
                }
            };
            map.insert(ino, f);
        }
        let kept: BTreeSet<u64> = map.values().copied().collect();
        let gone: BTreeSet<u64> = self
            .by_model
            .values()
            .filter(|f| !kept.contains(f))
            .copied()
            .collect();
        for f in gone {
            self.free(&mut txn, f);
        }
        self.by_model = map;
        self.commit(txn)
    }

    /// Ends a transaction: its metadata blocks go to the journal (with a descriptor and a
    /// commit block) and in place, its data blocks in place.
    fn commit(&mut self, txn: Txn) -> RunSet {
        let mut meta = txn.meta;
        for g in &txn.block_groups {
            meta.insert(block_bitmap(*g));
        }
        for g in &txn.inode_groups {
            meta.insert(inode_bitmap(*g));
        }
        if !txn.block_groups.is_empty() || !txn.inode_groups.is_empty() {
            meta.insert(GROUP_DESCRIPTORS);
        }
        let mut writes = txn.data;
        if !meta.is_empty() {
            for _ in 0..meta.len() + 2 {
                writes.insert(self.journal_head);
                self.journal_head += 1;
                if self.journal_head >= JOURNAL + JOURNAL_BLOCKS {
                    self.journal_head = JOURNAL + 1;
                }
            }
        }
        for b in meta {
            writes.insert(b);
        }
        writes
    }
}

/// The pages of a file that hold data: those its data extents touch.
fn data_pages(data: &FileData) -> RunSet {
    let mut pages = RunSet::new();
    for (s, e) in data.data_ranges() {
        pages.insert_run(s / FS_BLOCK, e.div_ceil(FS_BLOCK) - s / FS_BLOCK);
    }
    pages
}

/// The pages an inode's blocks map.
fn mapped(blocks: &BTreeMap<u64, (u64, u64)>) -> RunSet {
    let mut r = RunSet::new();
    for (&p, &(_, n)) in blocks {
        r.insert_run(p, n);
    }
    r
}

/// The block mapping `page` (mapped).
fn block_of(blocks: &BTreeMap<u64, (u64, u64)>, page: u64) -> u64 {
    let (&p, &(b, _)) = blocks.range(..=page).next_back().expect("a mapped page");
    b + (page - p)
}

/// Unmaps pages `first..first + n` (all mapped): returns their block runs.
fn unmap(blocks: &mut BTreeMap<u64, (u64, u64)>, first: u64, n: u64) -> Vec<(u64, u64)> {
    let end = first + n;
    let start = blocks
        .range(..=first)
        .next_back()
        .map_or(first, |(&p, _)| p);
    let hit: Vec<(u64, (u64, u64))> = blocks.range(start..end).map(|(&p, &v)| (p, v)).collect();
    let mut freed = Vec::new();
    for (p, (b, k)) in hit {
        let (lo, hi) = (p.max(first), (p + k).min(end));
        if lo >= hi {
            continue;
        }
        blocks.remove(&p);
        if p < lo {
            blocks.insert(p, (b, lo - p));
        }
        if p + k > hi {
            blocks.insert(hi, (b + (hi - p), p + k - hi));
        }
        freed.push((b + (lo - p), hi - lo));
    }
    freed
}

/// The pages whose bytes may differ between `old` and `new`: those the extents that are
/// not shared touch, and the pages holding either end of the file.
fn candidate_pages(old: Option<&FileData>, new: &FileData) -> RunSet {
    let mut r = RunSet::new();
    let Some(old) = old else {
        return data_pages(new);
    };
    for (s, e) in old.maybe_differ(new) {
        r.insert_run(s / FS_BLOCK, e.div_ceil(FS_BLOCK) - s / FS_BLOCK);
    }
    if old.len() != new.len() {
        for len in [old.len(), new.len()] {
            if len > 0 {
                r.insert((len - 1) / FS_BLOCK);
            }
        }
    }
    r
}

/// Page `p` as the file's block holds it: its bytes up to the end of the file.
fn page_bytes(data: &FileData, p: u64) -> Vec<u8> {
    data.read(p * FS_BLOCK, FS_BLOCK)
}

/// Whether page `p` holds the same bytes (and the same length) in `old` as in `new`.
fn same_page(old: Option<&FileData>, new: &FileData, p: u64) -> bool {
    old.is_some_and(|o| page_bytes(o, p) == page_bytes(new, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_dumpe2fs() {
        assert_eq!(block_bitmap(0), 1027);
        assert_eq!(inode_bitmap(0), 1043);
        assert_eq!(inode_table_block(1), 1059);
        assert_eq!(inode_table_block(12), 1059);
        assert_eq!(inode_table_block(17), 1060);
        // Group 16 (flex group 1): bitmaps at 524288 and 524304, inode table at 524320.
        assert_eq!(block_bitmap(16), 524_288);
        assert_eq!(inode_bitmap(16), 524_304);
        assert_eq!(inode_table_block(16 * 8192 + 1), 524_320);
        assert_eq!(MKFS_CHUNKS.iter().map(|r| r.1).sum::<u64>(), 3664);
    }

    #[test]
    fn first_get_makes_rootfs_and_id() {
        let mut fs = FsImage::new();
        let w = fs.docker_get(4);
        // rootfs dir block and the id block, the root dir, inode table, bitmaps,
        // descriptors, and the journal.
        assert!(w.contains(9257) && w.contains(9258) && w.contains(ROOT_DIR_BLOCK));
        assert!(w.contains(1059) && w.contains(1027) && w.contains(1043));
        assert!(w.contains(JOURNAL + 1));
        assert!(fs.docker_get(4).is_empty(), "only the first Get writes");
    }
}
