//! The pool's space maps: a reference count for every data block and for every mapping
//! node, and the data-block allocator.
//!
//! As in dm-thin, a data block's count is the number of mapping *leaves* that point at it,
//! not the number of devices: a snapshot shares its origin's tree, so taking one increments
//! one node's count (O(1)); a leaf's values are incremented only when a write copies that
//! leaf out of the shared tree (shadowing). A block is in use exactly when some device maps
//! it; `thin_check` verifies the same counts against the metadata it reads.
//!
//! Allocation is the kernel's `sm_disk_new_block`: next fit from the block after the last one
//! allocated, wrapping to the start, and only blocks free both now and at the last commit: a
//! block freed in the current transaction is not reused before the next commit.

use super::paged::Paged;
use super::units::PoolBlock;
use std::collections::BTreeSet;

/// Identifies a mapping node within one pool's history (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct NodeId(pub(crate) u64);

/// Reference counts of data blocks and mapping nodes, and the allocator's state.
#[derive(Clone, Debug)]
pub(crate) struct SpaceMaps {
    data_blocks: u64,
    data_refs: Paged<u32>,
    used: u64,
    begin: u64,
    allocated_this_txn: BTreeSet<u64>,
    freed_this_txn: BTreeSet<u64>,
    node_refs: Paged<u32>,
    next_node: u64,
    live_nodes: u64,
}

impl SpaceMaps {
    /// Space maps of a fresh pool with `data_blocks` free data blocks.
    pub(crate) fn new(data_blocks: u64) -> SpaceMaps {
        SpaceMaps {
            data_blocks,
            data_refs: Paged::new(),
            used: 0,
            begin: 0,
            allocated_this_txn: BTreeSet::new(),
            freed_this_txn: BTreeSet::new(),
            node_refs: Paged::new(),
            next_node: 0,
            live_nodes: 0,
        }
    }

    /// Data blocks on the data device.
    pub(crate) fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// Data blocks with a count above zero.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Data blocks with a count of zero (`sm_disk_get_nr_free`).
    pub(crate) fn free(&self) -> u64 {
        self.data_blocks.saturating_sub(self.used)
    }

    /// Mapping nodes with a count above zero.
    pub(crate) fn live_nodes(&self) -> u64 {
        self.live_nodes
    }

    /// A free data block, now counted once; `None` when no block is free both now and at
    /// the last commit (the kernel's ENOSPC from `dm_pool_alloc_data_block`).
    pub(crate) fn alloc(&mut self) -> Option<PoolBlock> {
        let begin = self.begin.min(self.data_blocks);
        let found = self
            .find_free(begin, self.data_blocks)
            .or_else(|| self.find_free(0, begin))?;
        self.data_refs.set(found, 1);
        self.used += 1;
        self.allocated_this_txn.insert(found);
        self.begin = found + 1;
        Some(PoolBlock(found))
    }

    fn find_free(&self, begin: u64, end: u64) -> Option<u64> {
        let mut hit = None;
        let freed = &self.freed_this_txn;
        self.data_refs.scan(begin, end, |i, c| {
            if *c == 0 && !freed.contains(&i) {
                hit = Some(i);
                true
            } else {
                false
            }
        });
        hit
    }

    /// The count of data block `b`.
    pub(crate) fn data_count(&self, b: PoolBlock) -> u32 {
        self.data_refs.get(b.0)
    }

    /// One more reference to data block `b`.
    pub(crate) fn data_inc(&mut self, b: PoolBlock) {
        let c = self.data_refs.get(b.0);
        if c == 0 {
            self.used += 1;
            if !self.freed_this_txn.remove(&b.0) {
                self.allocated_this_txn.insert(b.0);
            }
        }
        self.data_refs.set(b.0, c.saturating_add(1));
    }

    /// One reference fewer to data block `b`; returns the new count (0: the block is free,
    /// reusable after the next commit).
    pub(crate) fn data_dec(&mut self, b: PoolBlock) -> u32 {
        let c = self.data_refs.get(b.0);
        if c == 0 {
            return 0;
        }
        self.data_refs.set(b.0, c - 1);
        if c == 1 {
            self.used -= 1;
            if !self.allocated_this_txn.remove(&b.0) {
                self.freed_this_txn.insert(b.0);
            }
        }
        c - 1
    }

    /// A new mapping node, counted once.
    pub(crate) fn node_new(&mut self) -> NodeId {
        let id = NodeId(self.next_node);
        self.next_node += 1;
        self.node_refs.set(id.0, 1);
        self.live_nodes += 1;
        id
    }

    /// The count of node `n`.
    pub(crate) fn node_count(&self, n: NodeId) -> u32 {
        self.node_refs.get(n.0)
    }

    /// One more reference to node `n`.
    pub(crate) fn node_inc(&mut self, n: NodeId) {
        let c = self.node_refs.get(n.0);
        if c == 0 {
            self.live_nodes += 1;
        }
        self.node_refs.set(n.0, c.saturating_add(1));
    }

    /// One reference fewer to node `n`; returns the new count.
    pub(crate) fn node_dec(&mut self, n: NodeId) -> u32 {
        let c = self.node_refs.get(n.0);
        if c == 0 {
            return 0;
        }
        self.node_refs.set(n.0, c - 1);
        if c == 1 {
            self.live_nodes -= 1;
        }
        c - 1
    }

    /// Ends the transaction: blocks freed in it become allocatable.
    pub(crate) fn commit(&mut self) {
        self.allocated_this_txn.clear();
        self.freed_this_txn.clear();
    }

    /// Whether the current transaction is empty (true after every commit).
    pub(crate) fn committed(&self) -> bool {
        self.allocated_this_txn.is_empty() && self.freed_this_txn.is_empty()
    }

    /// Every data block with a count above zero, with its count, in block order.
    pub(crate) fn data_counts(&self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        self.data_refs.scan(0, self.data_blocks, |i, c| {
            if *c > 0 {
                out.push((i, *c));
            }
            false
        });
        out
    }

    /// Every node with a count above zero, with its count, in id order.
    pub(crate) fn node_counts(&self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        self.node_refs.scan(0, self.next_node, |i, c| {
            if *c > 0 {
                out.push((i, *c));
            }
            false
        });
        out
    }

    /// Heap bytes of the two count tables.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.data_refs.heap_bytes() + self.node_refs.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_and_no_reuse_before_commit() {
        let mut s = SpaceMaps::new(4);
        let a: Vec<u64> = (0..3).map(|_| s.alloc().unwrap().0).collect();
        assert_eq!(a, vec![0, 1, 2]);
        s.commit();
        assert_eq!(s.data_dec(PoolBlock(1)), 0);
        assert_eq!((s.used(), s.free()), (2, 2));
        // 3 is next; 1 was freed in this transaction and waits for the commit.
        assert_eq!(s.alloc(), Some(PoolBlock(3)));
        assert_eq!(s.alloc(), None);
        s.commit();
        assert_eq!(s.alloc(), Some(PoolBlock(1)));
        assert_eq!(s.free(), 0);
    }

    #[test]
    fn a_block_allocated_and_freed_in_one_transaction_is_free_at_once() {
        let mut s = SpaceMaps::new(1);
        let b = s.alloc().unwrap();
        assert_eq!(s.data_dec(b), 0);
        assert_eq!(s.alloc(), Some(b));
    }

    #[test]
    fn node_counts() {
        let mut s = SpaceMaps::new(1);
        let n = s.node_new();
        s.node_inc(n);
        assert_eq!(s.node_count(n), 2);
        assert_eq!(s.node_dec(n), 1);
        assert_eq!(s.node_dec(n), 0);
        assert_eq!(s.live_nodes(), 0);
        assert!(s.node_counts().is_empty());
    }
}
