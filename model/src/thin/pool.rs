//! The pool: its parameters (the `thin-pool` table line, THIN1), its thin devices, its
//! messages (`create_thin`, `create_snap`, `delete`, `set_transaction_id`, THIN2), its mode
//! and the transition that runs one [`ThinOp`].

use super::data::BlockData;
use super::mapping::Mapping;
use super::paged::Paged;
use super::space::SpaceMaps;
use super::status::{DiscardMode, NoSpaceMode, PoolMode, PoolStatus, ThinStatus};
use super::units::{
    BlockSize, Sectors, ThinId, MAX_DATA_BLOCKS, MAX_METADATA_BLOCKS, METADATA_BLOCK_BYTES,
};
use super::{ThinOp, ThinOutcome, ThinValue};
use crate::errno::Errno;
use std::collections::BTreeMap;
use std::fmt;

/// Length of a thin device when a `create_thin` step gives none: 2097152 sectors (1 GiB),
/// the size in the kernel documentation's examples (`dmsetup create thin --table "0 2097152
/// thin /dev/mapper/pool 0"`).
pub const DEFAULT_THIN_SECTORS: Sectors = Sectors(2_097_152);
/// Metadata blocks when a scenario gives none (16 MiB of 4 KiB blocks).
pub const DEFAULT_METADATA_BLOCKS: u64 = 4096;

/// The pool's optional features (the table's feature arguments, THIN1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `skip_block_zeroing`: a newly provisioned block is not zeroed before a partial write,
    /// so the rest of it keeps what the data device held there.
    pub skip_block_zeroing: bool,
    /// `ignore_discard`: the thin devices do not support discard at all.
    pub ignore_discard: bool,
    /// `no_discard_passdown`: discards unmap blocks but are not passed to the data device.
    pub no_discard_passdown: bool,
    /// `error_if_no_space`: fail writes at once when the data device is full, instead of
    /// queueing them.
    pub error_if_no_space: bool,
}

/// What a pool is made with: the data and metadata sizes, the block size, the low water
/// mark and the features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolParams {
    /// Blocks of the data device (the pool target's length over the block size).
    pub data_blocks: u64,
    /// Sectors per block.
    pub block_size: BlockSize,
    /// 4 KiB blocks of the metadata device.
    pub metadata_blocks: u64,
    /// Free data blocks at or below which the pool sends its one low-water event.
    pub low_water_blocks: u64,
    /// Feature arguments.
    pub features: Features,
}

/// Pool parameters the kernel would refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadParams {
    /// The parameter.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl fmt::Display for BadParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for BadParams {}

impl PoolParams {
    /// A pool of `data_blocks` blocks of 64 KiB with the defaults: 4096 metadata blocks, low
    /// water mark 0, no features.
    pub fn new(data_blocks: u64) -> PoolParams {
        PoolParams {
            data_blocks,
            block_size: BlockSize::DEFAULT,
            metadata_blocks: DEFAULT_METADATA_BLOCKS,
            low_water_blocks: 0,
            features: Features::default(),
        }
    }

    /// Checks what the block size type cannot: the sizes.
    pub fn validate(&self) -> Result<(), BadParams> {
        if !(1..=MAX_DATA_BLOCKS).contains(&self.data_blocks) {
            return Err(BadParams {
                field: "data_blocks",
                reason: format!(
                    "{} is not in 1..={MAX_DATA_BLOCKS} (data block numbers are 40-bit)",
                    self.data_blocks
                ),
            });
        }
        if self.metadata_blocks == 0 {
            return Err(BadParams {
                field: "metadata_blocks",
                reason: "the metadata device needs at least one block".into(),
            });
        }
        Ok(())
    }

    /// The feature arguments in the kernel's order (`emit_flags`).
    pub fn feature_args(&self) -> Vec<&'static str> {
        let f = self.features;
        [
            (f.skip_block_zeroing, "skip_block_zeroing"),
            (f.ignore_discard, "ignore_discard"),
            (f.no_discard_passdown, "no_discard_passdown"),
            (f.error_if_no_space, "error_if_no_space"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// The pool's table line (THIN1): `0 <len> thin-pool <metadata dev> <data dev> <block
    /// size> <low water mark> [<n> <features>...]`.
    pub fn table(&self, metadata_dev: &str, data_dev: &str) -> String {
        let len = self.data_blocks.saturating_mul(self.block_size.sectors());
        let mut s = format!(
            "0 {len} thin-pool {metadata_dev} {data_dev} {} {}",
            self.block_size.sectors(),
            self.low_water_blocks
        );
        let feats = self.feature_args();
        if !feats.is_empty() {
            s.push_str(&format!(" {} {}", feats.len(), feats.join(" ")));
        }
        s
    }

    /// Metadata blocks the kernel uses: the device's, capped at its maximum.
    pub fn usable_metadata_blocks(&self) -> u64 {
        self.metadata_blocks.min(MAX_METADATA_BLOCKS)
    }

    /// The metadata low water mark the status reports: a quarter of the metadata device, at
    /// most 1024 blocks (4 MiB) (`calc_metadata_threshold`).
    pub fn metadata_low_watermark(&self) -> u64 {
        (self.metadata_blocks / 4).min(1024)
    }

    /// Bytes of the metadata device.
    pub fn metadata_bytes(&self) -> u64 {
        self.metadata_blocks.saturating_mul(METADATA_BLOCK_BYTES)
    }
}

/// One thin device as the pool's metadata holds it, plus the length its table gives it.
#[derive(Clone, Debug)]
pub(crate) struct Device {
    pub(crate) mapping: Mapping,
    pub(crate) sectors: Sectors,
    /// Pool time when the device was created.
    pub(crate) creation_time: u32,
    /// Pool time of the last snapshot taken of it or as it: a mapping made before this time
    /// may be shared, and a write to it breaks sharing (dm-thin's "timestamp magic").
    pub(crate) snapshotted_time: u32,
}

/// A thin pool: the state of the metadata and data devices.
///
/// [`ThinPool::apply`] runs one [`ThinOp`] and ends with a commit of the metadata, as the
/// harness's status query after every step does on the real side (`dmsetup status` without
/// `--noflush` commits). [`ThinPool::transition`] is the same as a pure function. A failing
/// step changes nothing, with one exception the kernel has too: running out of data space
/// (ENOSPC) switches the pool to `out_of_data_space` and keeps the blocks of the same write
/// that could be served.
#[derive(Clone, Debug)]
pub struct ThinPool {
    pub(crate) params: PoolParams,
    pub(crate) devices: BTreeMap<ThinId, Device>,
    pub(crate) sm: SpaceMaps,
    pub(crate) data: Paged<BlockData>,
    pub(crate) time: u32,
    pub(crate) transaction_id: u64,
    pub(crate) mode: PoolMode,
    /// The live `error_if_no_space` flag: set by the table, and by the no-space timeout.
    pub(crate) error_if_no_space: bool,
    pub(crate) low_water_triggered: bool,
    /// Events the pool sent (`dm_table_event`): the low-water one and every mode change.
    pub(crate) events: u32,
}

impl ThinPool {
    /// A freshly formatted pool (zeroed metadata device, THIN1 table loaded).
    pub fn new(params: PoolParams) -> Result<ThinPool, BadParams> {
        params.validate()?;
        Ok(ThinPool {
            params,
            devices: BTreeMap::new(),
            sm: SpaceMaps::new(params.data_blocks),
            data: Paged::new(),
            time: 0,
            transaction_id: 0,
            mode: PoolMode::Rw,
            error_if_no_space: params.features.error_if_no_space,
            low_water_triggered: false,
            events: 0,
        })
    }

    /// The parameters it was made with.
    pub fn params(&self) -> &PoolParams {
        &self.params
    }

    /// The thin device ids, in order.
    pub fn device_ids(&self) -> Vec<ThinId> {
        self.devices.keys().copied().collect()
    }

    /// A device's mapping.
    pub fn mapping(&self, id: ThinId) -> Option<&Mapping> {
        self.devices.get(&id).map(|d| &d.mapping)
    }

    /// A device's length.
    pub fn device_sectors(&self, id: ThinId) -> Option<Sectors> {
        self.devices.get(&id).map(|d| d.sectors)
    }

    /// The pool's time (incremented by every snapshot).
    pub fn time(&self) -> u32 {
        self.time
    }

    /// Data blocks in use.
    pub fn used_data_blocks(&self) -> u64 {
        self.sm.used()
    }

    /// Whether the low-water event has been sent.
    pub fn low_water_triggered(&self) -> bool {
        self.low_water_triggered
    }

    /// Runs `op` as step `step` of a trace (the step index stamps what it writes).
    pub fn apply(&mut self, step: usize, op: &ThinOp) -> ThinOutcome {
        let out = match op {
            ThinOp::CreateThin { dev, sectors } => self.create_thin(*dev, *sectors),
            ThinOp::CreateSnap { dev, origin } => self.create_snap(*dev, *origin),
            ThinOp::Delete { dev } => self.delete(*dev),
            ThinOp::SetTransactionId { current, new } => self.set_transaction_id(*current, *new),
            ThinOp::WriteBlocks { dev, block, count } => {
                self.write_blocks(step, *dev, *block, *count)
            }
            ThinOp::WriteBytes { dev, offset, len } => self.write_bytes(step, *dev, *offset, *len),
            ThinOp::ReadBlocks { dev, block, count } => self.read_blocks(*dev, *block, *count),
            ThinOp::DiscardBlocks { dev, block, count } => {
                self.discard_blocks(*dev, *block, *count)
            }
        };
        self.commit();
        out
    }

    /// [`ThinPool::apply`] as a pure function: the new state and the outcome.
    pub fn transition(&self, step: usize, op: &ThinOp) -> (ThinPool, ThinOutcome) {
        let mut next = self.clone();
        let out = next.apply(step, op);
        (next, out)
    }

    /// Commits the metadata: blocks freed since the last commit become reusable, and a pool
    /// out of data space that has free blocks again goes back to write mode, with the
    /// table's `error_if_no_space` (`commit` -> `check_for_data_space`).
    pub fn commit(&mut self) {
        self.sm.commit();
        if self.mode == PoolMode::OutOfDataSpace && self.sm.free() > 0 {
            self.mode = PoolMode::Rw;
            self.events += 1;
            self.error_if_no_space = self.params.features.error_if_no_space;
        }
    }

    fn create_thin(&mut self, dev: u64, sectors: Option<Sectors>) -> ThinOutcome {
        let id = ThinId::new(dev)?;
        let sectors = sectors.unwrap_or(DEFAULT_THIN_SECTORS);
        if self.devices.contains_key(&id) {
            return Err(Errno::EEXIST);
        }
        if sectors.0 == 0 || !sectors.0.is_multiple_of(self.params.block_size.sectors()) {
            return Err(Errno::EINVAL);
        }
        self.devices.insert(
            id,
            Device {
                mapping: Mapping::default(),
                sectors,
                creation_time: self.time,
                snapshotted_time: self.time,
            },
        );
        Ok(ThinValue::Unit)
    }

    fn create_snap(&mut self, dev: u64, origin: u64) -> ThinOutcome {
        let id = ThinId::new(dev)?;
        let oid = ThinId::new(origin)?;
        if self.devices.contains_key(&id) {
            return Err(Errno::EEXIST);
        }
        let Some(o) = self.devices.get_mut(&oid) else {
            return Err(Errno::ENODATA);
        };
        let mapping = o.mapping.share(&mut self.sm);
        self.time = self.time.wrapping_add(1);
        o.snapshotted_time = self.time;
        let sectors = o.sectors;
        self.devices.insert(
            id,
            Device {
                mapping,
                sectors,
                creation_time: self.time,
                snapshotted_time: self.time,
            },
        );
        Ok(ThinValue::Unit)
    }

    fn delete(&mut self, dev: u64) -> ThinOutcome {
        let id = ThinId::new(dev)?;
        let d = self.devices.remove(&id).ok_or(Errno::ENODATA)?;
        d.mapping.release(&mut self.sm);
        Ok(ThinValue::Unit)
    }

    fn set_transaction_id(&mut self, current: u64, new: u64) -> ThinOutcome {
        if current != self.transaction_id {
            return Err(Errno::EINVAL);
        }
        self.transaction_id = new;
        Ok(ThinValue::Unit)
    }

    /// The pool's status line fields (THIN3). The used-metadata figure is the model's own
    /// (one block per mapping node plus the superblock): the kernel's B-tree packs mappings
    /// differently, so observations leave that field out.
    pub fn status(&self) -> PoolStatus {
        let f = self.params.features;
        PoolStatus {
            transaction_id: self.transaction_id,
            used_metadata_blocks: (1 + self.sm.live_nodes())
                .min(self.params.usable_metadata_blocks()),
            total_metadata_blocks: self.params.usable_metadata_blocks(),
            used_data_blocks: self.sm.used(),
            total_data_blocks: self.sm.data_blocks(),
            held_root: None,
            mode: self.mode,
            discard: if f.ignore_discard {
                DiscardMode::IgnoreDiscard
            } else if f.no_discard_passdown {
                DiscardMode::NoDiscardPassdown
            } else {
                DiscardMode::DiscardPassdown
            },
            no_space: if self.error_if_no_space {
                NoSpaceMode::ErrorIfNoSpace
            } else {
                NoSpaceMode::QueueIfNoSpace
            },
            needs_check: false,
            metadata_low_watermark: self.params.metadata_low_watermark(),
        }
    }

    /// A thin device's status line fields (THIN3): mapped sectors and the highest mapped
    /// sector.
    pub fn thin_status(&self, id: ThinId) -> Option<ThinStatus> {
        let d = self.devices.get(&id)?;
        let bs = self.params.block_size.sectors();
        Some(ThinStatus {
            mapped_sectors: d.mapping.len().saturating_mul(bs),
            highest_mapped_sector: d
                .mapping
                .highest()
                .map(|h| (h.0.saturating_add(1)).saturating_mul(bs) - 1),
        })
    }

    /// Pool time when device `id` was created, and of its last snapshot.
    pub fn device_times(&self, id: ThinId) -> Option<(u32, u32)> {
        self.devices
            .get(&id)
            .map(|d| (d.creation_time, d.snapshotted_time))
    }

    /// What the pool's structures take in memory: (mapping nodes and their bytes, counted
    /// once however many devices share them; bytes of the reference-count tables; bytes of
    /// the modelled data device contents).
    pub fn memory(&self) -> (super::mapping::MappingMemory, u64, u64) {
        let mut seen = std::collections::BTreeSet::new();
        let mut mem = super::mapping::MappingMemory::default();
        for d in self.devices.values() {
            d.mapping.memory(&mut seen, &mut mem);
        }
        (
            mem,
            self.sm.heap_bytes() as u64,
            self.data.heap_bytes() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_line_and_thresholds() {
        let mut p = PoolParams::new(16);
        assert_eq!(p.table("7:1", "7:2"), "0 2048 thin-pool 7:1 7:2 128 0");
        p.features.error_if_no_space = true;
        p.features.skip_block_zeroing = true;
        p.low_water_blocks = 4;
        assert_eq!(
            p.table("7:1", "7:2"),
            "0 2048 thin-pool 7:1 7:2 128 4 2 skip_block_zeroing error_if_no_space"
        );
        assert_eq!(p.metadata_low_watermark(), 1024);
        p.metadata_blocks = 100;
        assert_eq!(p.metadata_low_watermark(), 25);
        p.data_blocks = 0;
        assert_eq!(p.validate().unwrap_err().field, "data_blocks");
        assert!(ThinPool::new(p).is_err());
    }

    #[test]
    fn messages_follow_the_kernel() {
        let mut p = ThinPool::new(PoolParams::new(8)).unwrap();
        let ok = Ok(ThinValue::Unit);
        let create = |dev| ThinOp::CreateThin { dev, sectors: None };
        assert_eq!(p.apply(0, &create(0)), ok);
        assert_eq!(p.apply(1, &create(0)), Err(Errno::EEXIST));
        assert_eq!(p.apply(2, &create(1 << 24)), Err(Errno::EINVAL));
        let snap = |dev, origin| ThinOp::CreateSnap { dev, origin };
        assert_eq!(
            p.apply(3, &snap(0, 5)),
            Err(Errno::EEXIST),
            "id checked first"
        );
        assert_eq!(p.apply(4, &snap(1, 5)), Err(Errno::ENODATA));
        assert_eq!(p.apply(5, &snap(1, 0)), ok);
        assert_eq!(p.time(), 1);
        assert_eq!(p.device_times(ThinId::new(0).unwrap()), Some((0, 1)));
        assert_eq!(p.device_times(ThinId::new(1).unwrap()), Some((1, 1)));
        assert_eq!(p.apply(6, &ThinOp::Delete { dev: 7 }), Err(Errno::ENODATA));
        assert_eq!(p.apply(7, &ThinOp::Delete { dev: 0 }), ok);
        let tid = |current, new| ThinOp::SetTransactionId { current, new };
        assert_eq!(p.apply(8, &tid(1, 2)), Err(Errno::EINVAL));
        assert_eq!(p.apply(9, &tid(0, 5)), ok);
        assert_eq!(p.status().transaction_id, 5);
        let odd = ThinOp::CreateThin {
            dev: 2,
            sectors: Some(Sectors(100)),
        };
        assert_eq!(p.apply(10, &odd), Err(Errno::EINVAL));
    }
}
