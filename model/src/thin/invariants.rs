//! Named invariants of a pool, checked after every step by the property tests.

use super::pool::ThinPool;
use super::status::PoolMode;
use super::units::VirtBlock;
use crate::invariants::Violation;
use std::collections::{BTreeMap, BTreeSet};

/// Every thin-pool invariant, by name.
pub const THIN_INVARIANTS: &[&str] = &[
    // A data block's count is the number of distinct mapping leaves holding it (dm-thin
    // counts references from B-tree leaves, which is what makes a snapshot O(1)).
    "data_count_is_leaf_references",
    // A mapping node's count is the devices whose root it is plus the inner nodes
    // (distinct) that hold it.
    "node_count_is_references",
    // A data block is in use exactly when some device maps it, and the used count is the
    // number of such blocks.
    "in_use_iff_mapped",
    // Each device's mapped count is the number of its mappings.
    "mapped_count_matches_mapping",
    // Mappings point inside the data device and lie inside the device's length, and no
    // device maps two virtual blocks to one data block.
    "mappings_in_bounds",
    // A data block two devices map is, in each, older than the device's last snapshot, so
    // a write to it breaks sharing (the timestamp check never misses real sharing).
    "shared_blocks_look_shared",
    // The pool is out of data space only when no data block is free (every step commits).
    "out_of_space_only_when_full",
    // In write mode the live no-space setting is the table's.
    "no_space_mode_restored",
    // Every step ends committed.
    "committed_after_step",
];

fn v(out: &mut Vec<Violation>, invariant: &'static str, detail: String) {
    out.push(Violation { invariant, detail });
}

/// Checks every invariant on `pool`.
pub fn check(pool: &ThinPool) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut node_refs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut data_refs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut mapped_by: BTreeMap<u64, Vec<(u32, VirtBlock, u32)>> = BTreeMap::new();
    let bs = pool.params.block_size.sectors();
    for (id, d) in &pool.devices {
        if let Some(r) = d.mapping.root_id() {
            *node_refs.entry(r.0).or_default() += 1;
        }
        d.mapping.walk(&mut |n, body| {
            if !seen.insert(n) {
                return;
            }
            match body {
                Ok(children) => children
                    .iter()
                    .for_each(|c| *node_refs.entry(c.0).or_default() += 1),
                Err(blocks) => blocks
                    .iter()
                    .for_each(|b| *data_refs.entry(b.0).or_default() += 1),
            }
        });
        let entries = d.mapping.entries();
        if entries.len() as u64 != d.mapping.len() {
            v(
                &mut out,
                "mapped_count_matches_mapping",
                format!(
                    "device {id}: count {} but {} mappings",
                    d.mapping.len(),
                    entries.len()
                ),
            );
        }
        let dev_blocks = d.sectors.0 / bs;
        let mut own = BTreeSet::new();
        for (vb, bt) in entries {
            let b = bt.block().0;
            if b >= pool.params.data_blocks || vb.0 >= dev_blocks || !own.insert(b) {
                v(
                    &mut out,
                    "mappings_in_bounds",
                    format!("device {id}: block {vb} -> data block {b}"),
                );
            }
            mapped_by.entry(b).or_default().push((
                id.get(),
                vb,
                u32::from(bt.time() < d.snapshotted_time),
            ));
        }
    }
    let counts: BTreeMap<u64, u32> = pool.sm.data_counts().into_iter().collect();
    if counts != data_refs {
        let diff: Vec<_> = counts
            .keys()
            .chain(data_refs.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|b| counts.get(b) != data_refs.get(b))
            .take(5)
            .map(|b| (b, counts.get(b).copied(), data_refs.get(b).copied()))
            .collect();
        v(
            &mut out,
            "data_count_is_leaf_references",
            format!("(block, count, leaf references): {diff:?}"),
        );
    }
    let ncounts: BTreeMap<u64, u32> = pool.sm.node_counts().into_iter().collect();
    if ncounts != node_refs {
        v(
            &mut out,
            "node_count_is_references",
            format!(
                "{} nodes counted, {} referenced",
                ncounts.len(),
                node_refs.len()
            ),
        );
    }
    let in_use: BTreeSet<u64> = counts.keys().copied().collect();
    let mapped: BTreeSet<u64> = mapped_by.keys().copied().collect();
    if in_use != mapped || pool.sm.used() != mapped.len() as u64 {
        v(
            &mut out,
            "in_use_iff_mapped",
            format!(
                "used {}, {} blocks counted, {} mapped",
                pool.sm.used(),
                in_use.len(),
                mapped.len()
            ),
        );
    }
    for (b, users) in &mapped_by {
        if users.len() > 1 && users.iter().any(|(_, _, old)| *old == 0) {
            v(
                &mut out,
                "shared_blocks_look_shared",
                format!("data block {b} mapped by {users:?} (dev, block, looks shared)"),
            );
        }
    }
    if pool.mode == PoolMode::OutOfDataSpace && pool.sm.free() > 0 {
        v(
            &mut out,
            "out_of_space_only_when_full",
            format!("{} blocks free", pool.sm.free()),
        );
    }
    if pool.mode == PoolMode::Rw && pool.error_if_no_space != pool.params.features.error_if_no_space
    {
        v(&mut out, "no_space_mode_restored", "in rw mode".into());
    }
    if !pool.sm.committed() {
        v(&mut out, "committed_after_step", "open transaction".into());
    }
    out
}
