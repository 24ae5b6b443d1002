//! A thin device's block mapping: a persistent radix tree from virtual block to
//! (data block, time), with nodes shared between devices and between versions of the pool.
//!
//! This is dm-thin's design (THIN4, and the comment at the top of dm-thin.c) with a radix
//! tree in place of the kernel's B-tree: a snapshot is a second reference to the origin's
//! root node, so taking one is O(1); a lookup walks one root-to-leaf path of at most 11
//! nodes (6 bits of the block number per level), so its cost does not depend on how many
//! snapshots lie between a device and the write it reads. Nothing here searches a chain of
//! layers one by one (the seed's S22 wording is how it is *not* done).
//!
//! A write into a tree whose nodes other devices share copies ("shadows") each shared node
//! on its path first, exactly as the kernel's transaction manager does, and counts the
//! copy's children (or, for a leaf, its data blocks) once more in the space maps; a node
//! only this device holds is changed in place. Nodes are also shared, through `Arc`, with
//! older versions of the pool, which stay valid: every transition is pure.

use super::space::{NodeId, SpaceMaps};
use super::units::{PoolBlock, VirtBlock};
use std::sync::Arc;

const BITS: u32 = 6;
const FANOUT_MASK: u64 = (1 << BITS) - 1;
const TIME_BITS: u32 = 24;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// One mapping as dm-thin stores it: the data block in the high 40 bits, the pool's time
/// when the mapping was made in the low 24 (`pack_block_time`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockTime(u64);

impl BlockTime {
    /// `block` mapped at pool time `time` (only the low 24 bits of the time are kept).
    pub fn new(block: PoolBlock, time: u32) -> BlockTime {
        BlockTime((block.0 << TIME_BITS) | (u64::from(time) & TIME_MASK))
    }

    /// The data block.
    pub fn block(self) -> PoolBlock {
        PoolBlock(self.0 >> TIME_BITS)
    }

    /// The pool time the mapping was made at.
    pub fn time(self) -> u32 {
        (self.0 & TIME_MASK) as u32
    }
}

#[derive(Clone, Debug)]
struct Node {
    id: NodeId,
    /// Bit `i` set: slot `i` is present; present slots are stored densely in slot order.
    bitmap: u64,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Leaf(Vec<BlockTime>),
    Inner(Vec<Arc<Node>>),
}

impl Node {
    fn empty(id: NodeId, leaf: bool) -> Node {
        Node {
            id,
            bitmap: 0,
            body: if leaf {
                Body::Leaf(Vec::new())
            } else {
                Body::Inner(Vec::new())
            },
        }
    }
}

fn index(v: u64, level: u8) -> u32 {
    let shift = BITS * u32::from(level);
    if shift >= 64 {
        0
    } else {
        ((v >> shift) & FANOUT_MASK) as u32
    }
}

fn rank(bitmap: u64, idx: u32) -> usize {
    (bitmap & ((1u64 << idx) - 1)).count_ones() as usize
}

/// Levels needed so that block `v` has a slot (a single leaf holds blocks 0..64).
fn height_for(v: u64) -> u8 {
    let mut h = 1u8;
    while u32::from(h) * BITS < 64 && v >> (u32::from(h) * BITS) != 0 {
        h += 1;
    }
    h
}

/// A thin device's mapping. Cloning it shares every node (use [`Mapping::share`] to count
/// the clone in the pool's space maps, as a snapshot does).
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    root: Option<Arc<Node>>,
    height: u8,
    len: u64,
}

/// How many nodes and bytes a set of mappings holds (each shared node counted once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingMemory {
    /// Distinct nodes.
    pub nodes: u64,
    /// Bytes: node headers with their reference-counted allocation, plus slot arrays.
    pub bytes: u64,
}

impl Mapping {
    /// Mapped blocks.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping of `v`, if any: one walk from the root, whatever the snapshot history.
    pub fn get(&self, v: VirtBlock) -> Option<BlockTime> {
        let mut node = self.root.as_ref()?;
        if height_for(v.0) > self.height {
            return None;
        }
        let mut level = self.height.checked_sub(1)?;
        loop {
            let idx = index(v.0, level);
            if node.bitmap & (1u64 << idx) == 0 {
                return None;
            }
            let pos = rank(node.bitmap, idx);
            match &node.body {
                Body::Leaf(es) => return es.get(pos).copied(),
                Body::Inner(cs) => {
                    node = cs.get(pos)?;
                    level = level.checked_sub(1)?;
                }
            }
        }
    }

    /// A second reference to this tree, counted in `sm`: what `create_snap` does (O(1)).
    pub(crate) fn share(&self, sm: &mut SpaceMaps) -> Mapping {
        if let Some(r) = &self.root {
            sm.node_inc(r.id);
        }
        self.clone()
    }

    /// Drops this reference; nodes (and data blocks) no other tree holds are freed, as
    /// `delete` does.
    pub(crate) fn release(self, sm: &mut SpaceMaps) {
        if let Some(r) = &self.root {
            release(r, sm);
        }
    }

    /// Maps `v` to `bt`, whose data block the caller has counted already; the replaced
    /// mapping, if any, is returned and its data block counted once fewer.
    pub(crate) fn insert(
        &mut self,
        v: VirtBlock,
        bt: BlockTime,
        sm: &mut SpaceMaps,
    ) -> Option<BlockTime> {
        let need = height_for(v.0);
        let mut root = match self.root.take() {
            Some(r) => r,
            None => {
                self.height = need;
                Arc::new(Node::empty(sm.node_new(), need == 1))
            }
        };
        while self.height < need {
            // The device's reference moves from the old root to the new root's slot 0.
            root = Arc::new(Node {
                id: sm.node_new(),
                bitmap: 1,
                body: Body::Inner(vec![root]),
            });
            self.height += 1;
        }
        let old = insert_rec(&mut root, self.height - 1, v.0, bt, sm);
        self.root = Some(root);
        match old {
            Some(o) => {
                if o.block() != bt.block() {
                    sm.data_dec(o.block());
                }
            }
            None => self.len += 1,
        }
        old
    }

    /// Unmaps `v`; the removed mapping, if any, is returned and its data block counted once
    /// fewer. An unmapped `v` changes nothing (no node is copied).
    pub(crate) fn remove(&mut self, v: VirtBlock, sm: &mut SpaceMaps) -> Option<BlockTime> {
        self.get(v)?;
        let mut root = self.root.take()?;
        let (old, empty) = remove_rec(&mut root, self.height - 1, v.0, sm);
        if empty {
            release(&root, sm);
            self.height = 0;
        } else {
            self.root = Some(root);
        }
        if let Some(o) = old {
            self.len -= 1;
            sm.data_dec(o.block());
        }
        old
    }

    /// Calls `f` on every mapping with `begin <= v < end`, in block order, visiting only
    /// subtrees that hold some.
    pub fn for_each_in(&self, begin: u64, end: u64, f: &mut dyn FnMut(VirtBlock, BlockTime)) {
        if let (Some(r), Some(level)) = (&self.root, self.height.checked_sub(1)) {
            visit(r, level, 0, begin, end, f);
        }
    }

    /// Every mapping in block order.
    pub fn entries(&self) -> Vec<(VirtBlock, BlockTime)> {
        let mut out = Vec::new();
        self.for_each_in(0, u64::MAX, &mut |v, bt| out.push((v, bt)));
        if let Some(bt) = self.get(VirtBlock(u64::MAX)) {
            out.push((VirtBlock(u64::MAX), bt));
        }
        out
    }

    /// The highest mapped block (`dm_thin_get_highest_mapped_block`).
    pub fn highest(&self) -> Option<VirtBlock> {
        let mut node = self.root.as_ref()?;
        let mut level = self.height.checked_sub(1)?;
        let mut v = 0u64;
        loop {
            if node.bitmap == 0 {
                return None;
            }
            let idx = 63 - node.bitmap.leading_zeros();
            let shift = BITS * u32::from(level);
            if shift < 64 {
                v |= u64::from(idx) << shift;
            }
            match &node.body {
                Body::Leaf(_) => return Some(VirtBlock(v)),
                Body::Inner(cs) => {
                    node = cs.last()?;
                    level = level.checked_sub(1)?;
                }
            }
        }
    }

    /// Visits every node once per path that reaches it: its id, and either the ids of its
    /// children or its data blocks.
    pub(crate) fn walk(&self, f: &mut dyn FnMut(NodeId, Result<Vec<NodeId>, Vec<PoolBlock>>)) {
        fn go(n: &Node, f: &mut dyn FnMut(NodeId, Result<Vec<NodeId>, Vec<PoolBlock>>)) {
            match &n.body {
                Body::Leaf(es) => f(n.id, Err(es.iter().map(|e| e.block()).collect())),
                Body::Inner(cs) => {
                    f(n.id, Ok(cs.iter().map(|c| c.id).collect()));
                    for c in cs {
                        go(c, f);
                    }
                }
            }
        }
        if let Some(r) = &self.root {
            go(r, f);
        }
    }

    /// The root node's id.
    pub(crate) fn root_id(&self) -> Option<NodeId> {
        self.root.as_ref().map(|r| r.id)
    }

    /// Adds this tree's nodes not in `seen` to `mem`.
    pub(crate) fn memory(
        &self,
        seen: &mut std::collections::BTreeSet<NodeId>,
        mem: &mut MappingMemory,
    ) {
        fn go(n: &Node, seen: &mut std::collections::BTreeSet<NodeId>, mem: &mut MappingMemory) {
            if !seen.insert(n.id) {
                return;
            }
            // An Arc allocation holds two counters beside the node.
            let header = std::mem::size_of::<Node>() + 2 * std::mem::size_of::<usize>();
            let slots = match &n.body {
                Body::Leaf(es) => es.capacity() * std::mem::size_of::<BlockTime>(),
                Body::Inner(cs) => cs.capacity() * std::mem::size_of::<Arc<Node>>(),
            };
            mem.nodes += 1;
            mem.bytes += (header + slots) as u64;
            if let Body::Inner(cs) = &n.body {
                for c in cs {
                    go(c, seen, mem);
                }
            }
        }
        if let Some(r) = &self.root {
            go(r, seen, mem);
        }
    }
}

/// Makes `slot` a node this tree alone holds, copying it when other trees share it (and
/// counting the copy's children once more), then copying it from older pool versions too.
fn shadow<'a>(slot: &'a mut Arc<Node>, sm: &mut SpaceMaps) -> &'a mut Node {
    if sm.node_count(slot.id) > 1 {
        let mut copy = Node::clone(slot);
        copy.id = sm.node_new();
        match &copy.body {
            Body::Leaf(es) => es.iter().for_each(|e| sm.data_inc(e.block())),
            Body::Inner(cs) => cs.iter().for_each(|c| sm.node_inc(c.id)),
        }
        sm.node_dec(slot.id);
        *slot = Arc::new(copy);
    }
    Arc::make_mut(slot)
}

fn release(n: &Arc<Node>, sm: &mut SpaceMaps) {
    if sm.node_dec(n.id) > 0 {
        return;
    }
    match &n.body {
        Body::Leaf(es) => es.iter().for_each(|e| {
            sm.data_dec(e.block());
        }),
        Body::Inner(cs) => cs.iter().for_each(|c| release(c, sm)),
    }
}

fn insert_rec(
    slot: &mut Arc<Node>,
    level: u8,
    v: u64,
    bt: BlockTime,
    sm: &mut SpaceMaps,
) -> Option<BlockTime> {
    let Node { bitmap, body, .. } = shadow(slot, sm);
    let idx = index(v, level);
    let bit = 1u64 << idx;
    let pos = rank(*bitmap, idx);
    match body {
        Body::Leaf(es) => {
            if *bitmap & bit != 0 {
                Some(std::mem::replace(&mut es[pos], bt))
            } else {
                *bitmap |= bit;
                es.insert(pos, bt);
                None
            }
        }
        Body::Inner(cs) => {
            if *bitmap & bit == 0 {
                let child = Node::empty(sm.node_new(), level == 1);
                *bitmap |= bit;
                cs.insert(pos, Arc::new(child));
            }
            insert_rec(&mut cs[pos], level - 1, v, bt, sm)
        }
    }
}

fn remove_rec(
    slot: &mut Arc<Node>,
    level: u8,
    v: u64,
    sm: &mut SpaceMaps,
) -> (Option<BlockTime>, bool) {
    let Node { bitmap, body, .. } = shadow(slot, sm);
    let idx = index(v, level);
    let bit = 1u64 << idx;
    if *bitmap & bit == 0 {
        return (None, false);
    }
    let pos = rank(*bitmap, idx);
    match body {
        Body::Leaf(es) => {
            let old = es.remove(pos);
            *bitmap &= !bit;
            (Some(old), *bitmap == 0)
        }
        Body::Inner(cs) => {
            let (old, child_empty) = match level.checked_sub(1) {
                Some(l) => remove_rec(&mut cs[pos], l, v, sm),
                None => (None, false),
            };
            if child_empty {
                let c = cs.remove(pos);
                *bitmap &= !bit;
                release(&c, sm);
            }
            (old, *bitmap == 0)
        }
    }
}

fn visit(
    n: &Node,
    level: u8,
    prefix: u64,
    begin: u64,
    end: u64,
    f: &mut dyn FnMut(VirtBlock, BlockTime),
) {
    let shift = BITS * u32::from(level);
    let span: u128 = 1u128 << shift.min(127);
    let mut bits = n.bitmap;
    let mut pos = 0usize;
    while bits != 0 {
        let idx = bits.trailing_zeros();
        bits &= bits - 1;
        let lo = u128::from(prefix) + u128::from(idx) * span;
        let hi = lo + span; // exclusive
        let this = pos;
        pos += 1;
        if hi <= u128::from(begin) || lo >= u128::from(end) {
            continue;
        }
        match &n.body {
            Body::Leaf(es) => {
                if let Some(e) = es.get(this) {
                    f(VirtBlock(lo as u64), *e);
                }
            }
            Body::Inner(cs) => {
                if let (Some(c), Some(l)) = (cs.get(this), level.checked_sub(1)) {
                    visit(c, l, lo as u64, begin, end, f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bt(b: u64, t: u32) -> BlockTime {
        BlockTime::new(PoolBlock(b), t)
    }

    #[test]
    fn block_time_packs_like_the_kernel() {
        let x = bt(0xAB_CDEF_0123, 0x12_3456);
        assert_eq!(
            (x.block(), x.time()),
            (PoolBlock(0xAB_CDEF_0123), 0x12_3456)
        );
        assert_eq!(x.0, (0xAB_CDEF_0123 << 24) | 0x12_3456);
    }

    #[test]
    fn insert_get_remove_across_heights() {
        let mut sm = SpaceMaps::new(1 << 20);
        let mut m = Mapping::default();
        let keys = [0u64, 1, 63, 64, 4095, 4096, 1 << 30, u64::MAX - 1, u64::MAX];
        for (i, k) in keys.iter().enumerate() {
            let b = sm.alloc().unwrap();
            assert_eq!(b, PoolBlock(i as u64));
            assert_eq!(m.insert(VirtBlock(*k), bt(b.0, 0), &mut sm), None);
        }
        assert_eq!(m.len(), keys.len() as u64);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(VirtBlock(*k)).map(|x| x.block().0), Some(i as u64));
        }
        assert_eq!(m.get(VirtBlock(2)), None);
        assert_eq!(m.highest(), Some(VirtBlock(u64::MAX)));
        let all: Vec<u64> = m.entries().iter().map(|(v, _)| v.0).collect();
        assert_eq!(all, keys.to_vec());
        let mut some = Vec::new();
        m.for_each_in(60, 4097, &mut |v, _| some.push(v.0));
        assert_eq!(some, vec![63, 64, 4095, 4096]);
        for k in keys {
            assert!(m.remove(VirtBlock(k), &mut sm).is_some());
        }
        assert!(m.is_empty());
        assert_eq!(sm.used(), 0);
        assert_eq!(sm.live_nodes(), 0, "empty nodes are freed");
        assert_eq!(m.highest(), None);
    }

    #[test]
    fn a_snapshot_is_one_count_and_a_write_copies_one_path() {
        let mut sm = SpaceMaps::new(1 << 16);
        let mut origin = Mapping::default();
        for v in 0..5000u64 {
            let b = sm.alloc().unwrap();
            origin.insert(VirtBlock(v), bt(b.0, 0), &mut sm);
        }
        let nodes = sm.live_nodes();
        let mut snap = origin.share(&mut sm);
        assert_eq!(sm.live_nodes(), nodes, "taking a snapshot copies nothing");
        assert!(sm.data_counts().iter().all(|(_, c)| *c == 1));
        // A write in the snapshot copies the root-to-leaf path (3 nodes for 5000 blocks).
        let nb = sm.alloc().unwrap();
        let old = snap.insert(VirtBlock(4000), bt(nb.0, 1), &mut sm);
        assert_eq!(old.map(|o| o.block()), Some(PoolBlock(4000)));
        assert_eq!(sm.live_nodes(), nodes + 3);
        assert_eq!(
            origin.get(VirtBlock(4000)).map(|o| o.block()),
            Some(PoolBlock(4000))
        );
        assert_eq!(snap.get(VirtBlock(4000)).map(|o| o.block()), Some(nb));
        // Deleting the origin frees only what the snapshot does not map: block 4000.
        origin.release(&mut sm);
        assert_eq!(sm.used(), 5000);
        assert_eq!(sm.data_count(PoolBlock(4000)), 0);
        snap.release(&mut sm);
        assert_eq!((sm.used(), sm.live_nodes()), (0, 0));
    }
}
