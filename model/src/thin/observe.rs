//! What the harness observes of a pool: the status line's fields, and per device its thin
//! status, how many blocks it maps and shares, and its mapping as `thin_dump` would list it
//! (runs of consecutive virtual blocks on consecutive data blocks with one time).

use super::pool::ThinPool;
use super::status::{DiscardMode, NoSpaceMode, PoolMode, PoolStatus};
use super::units::ThinId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A run of mappings: `len` virtual blocks from `virt` on data blocks from `data`, made at
/// pool time `time` (a `thin_dump` `range_mapping`). Shown as `"0-3 -> 0-3 t0"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MappedRange {
    /// First virtual block.
    pub virt: u64,
    /// First data block.
    pub data: u64,
    /// Blocks in the run.
    pub len: u64,
    /// Pool time of the mappings.
    pub time: u32,
}

impl fmt::Display for MappedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 1 {
            write!(f, "{} -> {} t{}", self.virt, self.data, self.time)
        } else {
            let last = self.len - 1;
            write!(
                f,
                "{}-{} -> {}-{} t{}",
                self.virt,
                self.virt + last,
                self.data,
                self.data + last,
                self.time
            )
        }
    }
}

impl Serialize for MappedRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One thin device as observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceObservation {
    /// Its status line (THIN3): mapped sectors, highest mapped sector.
    pub status: String,
    /// Blocks it maps.
    pub mapped_blocks: u64,
    /// Of those, blocks on a data block another device maps too.
    pub shared_blocks: u64,
    /// Its mapping.
    pub mappings: Vec<MappedRange>,
}

impl DeviceObservation {
    /// The data blocks it maps.
    pub fn data_blocks(&self) -> BTreeSet<u64> {
        self.mappings
            .iter()
            .flat_map(|r| r.data..r.data + r.len)
            .collect()
    }
}

/// The pool as observed: the fields of its status line (THIN3) except the used metadata
/// blocks, which depend on how the metadata's B-trees happen to be packed and are not
/// predicted, plus whether the low-water event was sent, plus every device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolObservation {
    /// Transaction id.
    pub transaction_id: u64,
    /// Data blocks in use.
    pub used_data_blocks: u64,
    /// Data blocks in all.
    pub total_data_blocks: u64,
    /// Metadata blocks in all.
    pub total_metadata_blocks: u64,
    /// Held metadata root, or `-`.
    pub held_root: String,
    /// `rw`, `ro` or `out_of_data_space`.
    pub mode: PoolMode,
    /// Discard handling.
    pub discard: DiscardMode,
    /// No-space handling.
    pub no_space: NoSpaceMode,
    /// `needs_check` or `-`.
    pub needs_check: String,
    /// Metadata low watermark.
    pub metadata_low_watermark: u64,
    /// Events the pool sent (`dm_table_event`, the device's event counter): the low-water
    /// event (free data blocks reached the mark, once) and one per mode change, including
    /// the switch to error IO when the no-space timeout fires. dm-thin sends no other.
    pub events: u32,
    /// Every thin device, by id.
    pub devices: BTreeMap<ThinId, DeviceObservation>,
}

impl ThinPool {
    /// The pool's observation.
    pub fn observe(&self) -> PoolObservation {
        self.observe_with(true)
    }

    /// The pool's observation, with or without each device's mapping list (`thin_dump`):
    /// without, when the block placement is a filesystem's business (devicemapper).
    pub(crate) fn observe_with(&self, mapping_lists: bool) -> PoolObservation {
        let st = self.status();
        let mut entries = BTreeMap::new();
        let mut all: Vec<u64> = Vec::new();
        for (id, d) in &self.devices {
            let e = d.mapping.entries();
            all.extend(e.iter().map(|(_, bt)| bt.block().0));
            entries.insert(*id, e);
        }
        // Data blocks more than one mapping points at: counted in a table when the block
        // numbers are dense (next-fit allocation from 0 keeps them so), else by sorting.
        let max = all.iter().copied().max().unwrap_or(0);
        let dense = max < 8 * all.len() as u64 + 1024;
        let mut counts: Vec<u8> = Vec::new();
        let mut sorted_shared: Vec<u64> = Vec::new();
        if dense {
            counts = vec![0; max as usize + 1];
            for &b in &all {
                let c = &mut counts[b as usize];
                *c = c.saturating_add(1);
            }
        } else {
            all.sort_unstable();
            sorted_shared = all
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0])
                .collect();
            sorted_shared.dedup();
        }
        let is_shared = |b: u64| {
            if dense {
                counts[b as usize] > 1
            } else {
                sorted_shared.binary_search(&b).is_ok()
            }
        };
        let mut devices = BTreeMap::new();
        for (id, e) in entries {
            let mut mappings: Vec<MappedRange> = Vec::new();
            for (v, bt) in e.iter().filter(|_| mapping_lists) {
                let (data, time) = (bt.block().0, bt.time());
                match mappings.last_mut() {
                    Some(r)
                        if r.time == time && r.virt + r.len == v.0 && r.data + r.len == data =>
                    {
                        r.len += 1
                    }
                    _ => mappings.push(MappedRange {
                        virt: v.0,
                        data,
                        len: 1,
                        time,
                    }),
                }
            }
            let shared = e.iter().filter(|(_, bt)| is_shared(bt.block().0)).count() as u64;
            let status = self
                .thin_status(id)
                .map(|s| s.to_string())
                .unwrap_or_default();
            devices.insert(
                id,
                DeviceObservation {
                    status,
                    mapped_blocks: e.len() as u64,
                    shared_blocks: shared,
                    mappings,
                },
            );
        }
        PoolObservation::from_status(&st, self.events, devices)
    }
}

impl PoolObservation {
    /// The observation of a pool whose status line reads `st`, with its devices: the model
    /// and the real pool build it the same way.
    pub fn from_status(
        st: &PoolStatus,
        events: u32,
        devices: BTreeMap<ThinId, DeviceObservation>,
    ) -> PoolObservation {
        PoolObservation {
            transaction_id: st.transaction_id,
            used_data_blocks: st.used_data_blocks,
            total_data_blocks: st.total_data_blocks,
            total_metadata_blocks: st.total_metadata_blocks,
            held_root: st.held_root.map_or("-".into(), |r| r.to_string()),
            mode: st.mode,
            discard: st.discard,
            no_space: st.no_space,
            needs_check: if st.needs_check { "needs_check" } else { "-" }.into(),
            metadata_low_watermark: st.metadata_low_watermark,
            events,
            devices,
        }
    }
}
