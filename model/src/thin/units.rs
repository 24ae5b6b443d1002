//! The thin pool's units, each its own type so a sector count is never taken for a block
//! number: [`Sectors`], [`BlockSize`], [`PoolBlock`] (a data-device block), [`VirtBlock`]
//! (a block of a thin device) and [`ThinId`] (a 24-bit device id, THIN1).

use crate::errno::Errno;
use serde::Serialize;
use std::fmt;

/// Bytes in a sector.
pub const SECTOR_BYTES: u64 = 512;
/// Smallest pool block size, in sectors (64 KiB, THIN1).
pub const MIN_BLOCK_SECTORS: u64 = 128;
/// Largest pool block size, in sectors (1 GiB, THIN1).
pub const MAX_BLOCK_SECTORS: u64 = 2_097_152;
/// Largest thin device id: ids are 24-bit (THIN1, `MAX_DEV_ID` in dm-thin.c).
pub const MAX_THIN_ID: u64 = (1 << 24) - 1;
/// Bytes in a metadata block (`THIN_METADATA_BLOCK_SIZE`).
pub const METADATA_BLOCK_BYTES: u64 = 4096;
/// Metadata blocks the kernel uses at most, whatever the device's size
/// (`THIN_METADATA_MAX_SECTORS` = 255 * 2^14 * 8 sectors).
pub const MAX_METADATA_BLOCKS: u64 = 255 * (1 << 14);
/// Data block numbers are stored in 40 bits of a mapping entry (`pack_block_time`).
pub const MAX_DATA_BLOCKS: u64 = 1 << 40;

/// A count of 512-byte sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(transparent)]
pub struct Sectors(pub u64);

impl Sectors {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0.saturating_mul(SECTOR_BYTES)
    }
}

impl fmt::Display for Sectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block of the pool's data device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(transparent)]
pub struct PoolBlock(pub u64);

impl fmt::Display for PoolBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block of a thin device's virtual address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(transparent)]
pub struct VirtBlock(pub u64);

impl fmt::Display for VirtBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A thin device id: 0 ..= 2^24 - 1. The kernel rejects larger ids in `create_thin`,
/// `create_snap` and `delete` messages with EINVAL (`read_dev_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ThinId(u32);

impl ThinId {
    /// The id, if it fits in 24 bits; EINVAL otherwise, as the pool's message handler says.
    pub fn new(id: u64) -> Result<ThinId, Errno> {
        if id <= MAX_THIN_ID {
            Ok(ThinId(id as u32))
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The pool's block size: a multiple of 128 sectors in 128 ..= 2097152 (64 KiB .. 1 GiB),
/// fixed when the pool is made (THIN1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BlockSize(u32);

/// A block size the kernel refuses ("Invalid block size", EINVAL at table load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadBlockSize(pub u64);

impl fmt::Display for BadBlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block size {} sectors: must be a multiple of {MIN_BLOCK_SECTORS} in \
             {MIN_BLOCK_SECTORS}..={MAX_BLOCK_SECTORS} (64 KiB .. 1 GiB, THIN1)",
            self.0
        )
    }
}

impl std::error::Error for BadBlockSize {}

impl BlockSize {
    /// The kernel's default in Docker's devicemapper and LVM: 128 sectors, 64 KiB (THIN9).
    pub const DEFAULT: BlockSize = BlockSize(128);

    /// A block size of `sectors`, if the kernel accepts it.
    pub fn new(sectors: u64) -> Result<BlockSize, BadBlockSize> {
        if (MIN_BLOCK_SECTORS..=MAX_BLOCK_SECTORS).contains(&sectors)
            && sectors.is_multiple_of(MIN_BLOCK_SECTORS)
        {
            Ok(BlockSize(sectors as u32))
        } else {
            Err(BadBlockSize(sectors))
        }
    }

    /// Sectors per block.
    pub fn sectors(self) -> u64 {
        u64::from(self.0)
    }

    /// Bytes per block.
    pub fn bytes(self) -> u64 {
        self.sectors() * SECTOR_BYTES
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        BlockSize::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_ids_are_24_bit() {
        assert_eq!(ThinId::new(0).map(ThinId::get), Ok(0));
        assert_eq!(ThinId::new(MAX_THIN_ID).map(ThinId::get), Ok(16_777_215));
        assert_eq!(ThinId::new(1 << 24), Err(Errno::EINVAL));
        assert_eq!(ThinId::new(u64::MAX), Err(Errno::EINVAL));
    }

    #[test]
    fn block_sizes_follow_thin1() {
        assert_eq!(BlockSize::new(128).map(BlockSize::bytes), Ok(65536));
        assert_eq!(BlockSize::new(2_097_152).map(BlockSize::bytes), Ok(1 << 30));
        assert!(BlockSize::new(256).is_ok());
        for bad in [0, 64, 127, 192 + 1, 200, 2_097_152 + 128, u64::MAX] {
            assert_eq!(BlockSize::new(bad), Err(BadBlockSize(bad)), "{bad}");
        }
        assert!(BadBlockSize(200).to_string().contains("multiple of 128"));
    }
}
