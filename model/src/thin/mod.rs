//! The thin pool (dm-thin), block level: the model behind the `thinpool` driver and, later,
//! under devicemapper.
//!
//! - [`units`]: sectors, block sizes, pool and virtual blocks, 24-bit device ids (THIN1).
//! - `mapping`: each device's block mapping, a persistent radix tree whose nodes snapshots
//!   share, so a snapshot is O(1) and a lookup is one root-to-leaf walk whatever the depth
//!   of the snapshot chain (THIN4, S22).
//! - `space`: reference counts of data blocks and mapping nodes, and the allocator.
//! - [`ThinPool`]: parameters, devices, messages (THIN2), block I/O (allocate on demand,
//!   copy-on-write of a whole block, discard with and without passdown, out of data space;
//!   THIN4-THIN8), and the pure transition that runs one [`ThinOp`].
//! - `status`: the pool and thin status lines as the kernel prints them (THIN3), parsed
//!   back into [`PoolStatus`] and [`ThinStatus`].
//! - [`PoolObservation`]: what the harness compares and snapshots; [`ThinCheck`]: the
//!   `check` assertions of thin-pool scenarios, judged on an observation.
//! - [`check_thin_invariants`]: named invariants, checked by the property tests.
//!
//! ```
//! use layerspec_model::*;
//!
//! let mut pool = ThinPool::new(PoolParams::new(16)).unwrap();
//! let steps = [
//!     ThinOp::CreateThin { dev: 0, sectors: None },
//!     ThinOp::WriteBlocks { dev: 0, block: 0, count: 4 },
//!     ThinOp::CreateSnap { dev: 1, origin: 0 },
//!     ThinOp::WriteBytes { dev: 1, offset: 10, len: 10 },
//! ];
//! for (i, op) in steps.iter().enumerate() {
//!     pool.apply(i, op).unwrap();
//! }
//! // The 10-byte write copied one whole block: 5 in use, the origin untouched.
//! assert_eq!(pool.used_data_blocks(), 5);
//! let read = ThinOp::ReadBlocks { dev: 1, block: 0, count: 2 };
//! assert_eq!(pool.apply(4, &read).unwrap().to_string(), r#"["1+3", "1"]"#);
//! let read = ThinOp::ReadBlocks { dev: 0, block: 0, count: 1 };
//! assert_eq!(pool.apply(5, &read).unwrap().to_string(), r#"["1"]"#);
//! assert_eq!(
//!     pool.status().to_string(),
//!     format!("0 {}/4096 5/16 - rw discard_passdown queue_if_no_space - 1024 ",
//!             pool.status().used_metadata_blocks)
//! );
//! ```

mod data;
mod invariants;
mod io;
mod mapping;
mod observe;
mod paged;
mod pool;
mod space;
mod status;
pub mod units;

pub use data::{valid_sources, BlockData, Piece, Stamp};
pub use invariants::{check as check_thin_invariants, THIN_INVARIANTS};
pub use mapping::{BlockTime, Mapping, MappingMemory};
pub use observe::{DeviceObservation, MappedRange, PoolObservation};
pub use pool::{
    BadParams, Features, PoolParams, ThinPool, DEFAULT_METADATA_BLOCKS, DEFAULT_THIN_SECTORS,
};
pub use status::{DiscardMode, NoSpaceMode, PoolMode, PoolStatus, StatusError, ThinStatus};

use crate::driver::DriverError;
use crate::errno::Errno;
use serde::Serialize;
use std::fmt;
use units::Sectors;

/// One thin-pool step. Device ids are as written in the message or table (`u64`): ids over
/// 24 bits are representable so that the step can fail with EINVAL as the kernel's does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThinOp {
    /// `create_thin <dev>`, then the device activated with `sectors` (default
    /// [`DEFAULT_THIN_SECTORS`]; the harness uses whole blocks, so it must be a positive
    /// multiple of the block size, else EINVAL).
    CreateThin {
        /// New device id.
        dev: u64,
        /// Length of its table.
        sectors: Option<Sectors>,
    },
    /// `create_snap <dev> <origin>` (scenario op `snapshot`); the snapshot gets the
    /// origin's length.
    CreateSnap {
        /// New device id.
        dev: u64,
        /// The device it snapshots.
        origin: u64,
    },
    /// `delete <dev>` (scenario op `delete_thin`).
    Delete {
        /// The device.
        dev: u64,
    },
    /// `set_transaction_id <current> <new>`.
    SetTransactionId {
        /// The id the pool must have now.
        current: u64,
        /// The id to set.
        new: u64,
    },
    /// `count` whole blocks from `block`, written with `O_DIRECT`.
    WriteBlocks {
        /// The device.
        dev: u64,
        /// First virtual block.
        block: u64,
        /// Blocks.
        count: u64,
    },
    /// `len` bytes at byte `offset`, written through the page cache and synced.
    WriteBytes {
        /// The device.
        dev: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `count` whole blocks from `block`, read with `O_DIRECT`.
    ReadBlocks {
        /// The device.
        dev: u64,
        /// First virtual block.
        block: u64,
        /// Blocks.
        count: u64,
    },
    /// `BLKDISCARD` of `count` whole blocks from `block`.
    DiscardBlocks {
        /// The device.
        dev: u64,
        /// First virtual block.
        block: u64,
        /// Blocks.
        count: u64,
    },
}

impl ThinOp {
    /// The scenario-file name of the step.
    pub fn name(&self) -> &'static str {
        match self {
            ThinOp::CreateThin { .. } => "create_thin",
            ThinOp::CreateSnap { .. } => "snapshot",
            ThinOp::Delete { .. } => "delete_thin",
            ThinOp::SetTransactionId { .. } => "set_transaction_id",
            ThinOp::WriteBlocks { .. } => "write_blocks",
            ThinOp::WriteBytes { .. } => "write_bytes",
            ThinOp::ReadBlocks { .. } => "read_blocks",
            ThinOp::DiscardBlocks { .. } => "discard_blocks",
        }
    }
}

/// What a successful thin-pool step returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ThinValue {
    /// Nothing.
    Unit,
    /// `read_blocks`: each block's contents.
    Blocks(Vec<BlockData>),
}

impl fmt::Display for ThinValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThinValue::Unit => f.write_str("ok"),
            ThinValue::Blocks(b) => {
                let s: Vec<String> = b.iter().map(BlockData::sources).collect();
                write!(f, "{s:?}")
            }
        }
    }
}

/// The result of one thin-pool step.
pub type ThinOutcome = Result<ThinValue, Errno>;

/// A `check` assertion of a thin-pool scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThinCheck {
    /// Data blocks in use, as the pool status reports them.
    PoolDataBlocks(u64),
    /// Blocks device `dev` maps.
    MappedBlocks {
        /// The device.
        dev: u64,
        /// Mapped blocks.
        count: u64,
    },
    /// Data blocks devices `a` and `b` both map.
    SharedBlocks {
        /// One device.
        a: u64,
        /// The other.
        b: u64,
        /// Shared data blocks.
        count: u64,
    },
}

impl fmt::Display for ThinCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThinCheck::PoolDataBlocks(n) => write!(f, "pool_data_blocks = {n}"),
            ThinCheck::MappedBlocks { dev, count } => {
                write!(f, "mapped_blocks = {{ dev = {dev}, count = {count} }}")
            }
            ThinCheck::SharedBlocks { a, b, count } => {
                write!(f, "shared_blocks = {{ a = {a}, b = {b}, count = {count} }}")
            }
        }
    }
}

impl ThinCheck {
    /// Judges the assertion on an observation; `Err` says what was found instead.
    pub fn evaluate(&self, obs: &PoolObservation) -> Result<(), String> {
        let device = |d: u64| {
            units::ThinId::new(d)
                .ok()
                .and_then(|id| obs.devices.get(&id))
                .ok_or_else(|| format!("there is no thin device {d}"))
        };
        let (got, what) = match self {
            ThinCheck::PoolDataBlocks(n) => (obs.used_data_blocks, *n),
            ThinCheck::MappedBlocks { dev, count } => (device(*dev)?.mapped_blocks, *count),
            ThinCheck::SharedBlocks { a, b, count } => {
                let da = device(*a)?.data_blocks();
                let n = device(*b)?.data_blocks().intersection(&da).count() as u64;
                (n, *count)
            }
        };
        if got == what {
            Ok(())
        } else {
            Err(format!("it is {got}"))
        }
    }
}

/// A thin pool the harness can drive: the model, or (later) dm-thin through device-mapper.
pub trait ThinDriver {
    /// The backend name: `model`, `vm`, ...
    fn backend(&self) -> &'static str;
    /// Runs step `step` of the trace.
    fn apply(&mut self, step: usize, op: &ThinOp) -> Result<ThinOutcome, DriverError>;
    /// Observes the pool.
    fn observe(&mut self) -> Result<PoolObservation, DriverError>;
}

impl ThinDriver for ThinPool {
    fn backend(&self) -> &'static str {
        "model"
    }

    fn apply(&mut self, step: usize, op: &ThinOp) -> Result<ThinOutcome, DriverError> {
        Ok(ThinPool::apply(self, step, op))
    }

    fn observe(&mut self) -> Result<PoolObservation, DriverError> {
        Ok(ThinPool::observe(self))
    }
}
