//! Block I/O on thin devices: writes that provision blocks on demand or break sharing,
//! reads, and discards, as dm-thin's bio paths do them (`process_bio`, `break_sharing`,
//! `provision_block`, `process_discard_bio`, and `process_bio_read_only` once the pool is
//! out of data space).
//!
//! The harness does block I/O the way a program does on the thin device node: whole-block
//! steps as `O_DIRECT` I/O, `write_bytes` as a buffered write and `fsync`, discards as
//! `BLKDISCARD`. So the block layer's rules at the device's end apply first: a write
//! starting at or past the end fails with ENOSPC and one running past it is cut short
//! (`blkdev_write_iter`), a read past the end reads nothing, and a discard past the end
//! fails with EINVAL (`blk_ioctl_discard`).
//!
//! dm-thin also commits on its own every second (`COMMIT_PERIOD`, `do_waker`), and a
//! block freed in a transaction is allocatable only after its commit: where such a commit
//! falls inside a long write decides which blocks the write can have (seen in the VM: a
//! write breaking sharing of blocks no other device still held got the blocks it had just
//! freed, or not). So the harness commits after every block it writes (a status query
//! without noflush) and the model does the same: a trace's outcome never depends on the
//! timer. `write_bytes` is a buffered write and `fsync` of each block's part in turn.

use super::data::{BlockData, Stamp};
use super::mapping::BlockTime;
use super::pool::ThinPool;
use super::status::PoolMode;
use super::units::{PoolBlock, ThinId, VirtBlock};
use super::{ThinOutcome, ThinValue};
use crate::errno::Errno;

/// Bytes of a thin device's page-cache buffers: a page, since its size is a multiple of
/// 4 KiB (`set_init_blocksize` picks the largest power of two up to a page dividing it).
const BUFFER_BYTES: u32 = 4096;

impl ThinPool {
    /// The device, opened as its `thin` table line would: EINVAL for an id over 24 bits,
    /// ENODATA when the pool has no such device (`thin_ctr`).
    fn open(&self, dev: u64) -> Result<(ThinId, u64), Errno> {
        let id = ThinId::new(dev)?;
        let d = self.devices.get(&id).ok_or(Errno::ENODATA)?;
        Ok((id, d.sectors.0 / self.params.block_size.sectors()))
    }

    pub(crate) fn write_blocks(
        &mut self,
        step: usize,
        dev: u64,
        block: u64,
        count: u64,
    ) -> ThinOutcome {
        let (id, blocks) = self.open(dev)?;
        if count == 0 {
            return Ok(ThinValue::Unit);
        }
        if block >= blocks {
            return Err(Errno::ENOSPC);
        }
        let end = block.saturating_add(count).min(blocks);
        let bb = self.block_bytes();
        let mut result = Ok(ThinValue::Unit);
        for v in block..end {
            if let Err(e) = self.write_one(id, VirtBlock(v), 0, bb, stamp(step, id, v), None) {
                result = Err(e);
            }
            self.commit();
        }
        result
    }

    pub(crate) fn write_bytes(
        &mut self,
        step: usize,
        dev: u64,
        offset: u64,
        len: u64,
    ) -> ThinOutcome {
        let (id, blocks) = self.open(dev)?;
        if len == 0 {
            return Ok(ThinValue::Unit);
        }
        let bb = u64::from(self.block_bytes());
        let size = blocks.saturating_mul(bb);
        if offset >= size {
            return Err(Errno::ENOSPC);
        }
        let end = offset.saturating_add(len).min(size);
        let mut result = Ok(ThinValue::Unit);
        let mut at = offset;
        while at < end {
            let v = at / bb;
            let block_end = ((v + 1) * bb).min(end);
            let (s, e) = ((at - v * bb) as u32, (block_end - v * bb) as u32);
            // The page cache writes back whole pages (a thin device's buffers are 4 KiB:
            // `set_init_blocksize`); the rest of each page is what it read from the
            // device before the write: zeros where the block was unmapped.
            let unmapped = self
                .devices
                .get(&id)
                .is_some_and(|d| d.mapping.get(VirtBlock(v)).is_none());
            let page = if unmapped {
                let p = BUFFER_BYTES;
                Some((s / p * p, (e.div_ceil(p) * p).min(bb as u32)))
            } else {
                None
            };
            if self
                .write_one(id, VirtBlock(v), s, e, stamp(step, id, v), page)
                .is_err()
            {
                // Write-back errors reach the writer as EIO whatever the bio's status:
                // buffer heads record every failed write as -EIO
                // (`end_buffer_async_write` -> `mark_buffer_write_io_error`), and fsync
                // reports that before it flushes (`blkdev_fsync`).
                result = Err(Errno::EIO);
            } else if let Err(e) = self.flush(id) {
                result = Err(e);
            }
            self.commit();
            at = block_end;
        }
        result
    }

    pub(crate) fn read_blocks(&mut self, dev: u64, block: u64, count: u64) -> ThinOutcome {
        let (id, blocks) = self.open(dev)?;
        let end = block.saturating_add(count).min(blocks);
        let Some(d) = self.devices.get(&id) else {
            return Err(Errno::ENODATA);
        };
        let out = (block..end.max(block))
            .map(|v| match d.mapping.get(VirtBlock(v)) {
                Some(bt) => self.data.get(bt.block().0),
                None => BlockData::Zero,
            })
            .collect();
        Ok(ThinValue::Blocks(out))
    }

    pub(crate) fn discard_blocks(&mut self, dev: u64, block: u64, count: u64) -> ThinOutcome {
        let (id, blocks) = self.open(dev)?;
        if self.params.features.ignore_discard {
            // The thin devices advertise no discard support at all.
            return Err(Errno::EOPNOTSUPP);
        }
        let end = block.checked_add(count).ok_or(Errno::EINVAL)?;
        if end > blocks {
            return Err(Errno::EINVAL);
        }
        let passdown = !self.params.features.no_discard_passdown;
        let ThinPool {
            devices, sm, data, ..
        } = self;
        let Some(d) = devices.get_mut(&id) else {
            return Err(Errno::ENODATA);
        };
        let mut mapped = Vec::new();
        d.mapping
            .for_each_in(block, end, &mut |v, _| mapped.push(v));
        for v in mapped {
            if let Some(old) = d.mapping.remove(v, sm) {
                // Passdown discards on the data device only the blocks no device maps any
                // more (`passdown_double_checking_shared_status`); a loop device over a
                // sparse file then reads them as zeros.
                if passdown && sm.data_count(old.block()) == 0 {
                    data.set(old.block().0, BlockData::Zero);
                }
            }
        }
        Ok(ThinValue::Unit)
    }

    /// The cache flush `fsync` sends after a successful write-back (`blkdev_issue_flush`):
    /// an empty write at sector 0, which dm-thin looks up as virtual block 0. In write mode
    /// it passes (`provision_block` remaps empty bios at once), but out of data space
    /// `process_bio_read_only` checks the size only for a mapped shared block: with block
    /// 0 unmapped the flush is unserviceable, and `fsync` fails with ENOSPC although every
    /// byte was written (seen in the VM, kernel 6.1; the code is the same in 6.18).
    fn flush(&mut self, id: ThinId) -> Result<(), Errno> {
        let unmapped = self
            .devices
            .get(&id)
            .is_some_and(|d| d.mapping.get(VirtBlock(0)).is_none());
        if self.mode == PoolMode::OutOfDataSpace && unmapped {
            return Err(self.unserviceable());
        }
        Ok(())
    }

    fn block_bytes(&self) -> u32 {
        // At most 1 GiB (THIN1), so it fits.
        self.params.block_size.bytes() as u32
    }

    /// Writes bytes `s..e` of virtual block `v` of device `id`; `page`: the span the
    /// device really receives when the write went through the page cache of an unmapped
    /// block (zeros around `s..e`).
    fn write_one(
        &mut self,
        id: ThinId,
        v: VirtBlock,
        s: u32,
        e: u32,
        st: Stamp,
        page: Option<(u32, u32)>,
    ) -> Result<(), Errno> {
        let bb = self.block_bytes();
        let full = s == 0 && e == bb;
        let Some(d) = self.devices.get(&id) else {
            return Err(Errno::ENODATA);
        };
        let found = d.mapping.get(v);
        if let Some(bt) = found {
            if bt.time() >= d.snapshotted_time {
                // Mapped, and made since the last snapshot: not shared, written in place,
                // even when the pool is out of data space (THIN8).
                let now = self.data.get(bt.block().0).overwrite(bb, s, e, st);
                self.data.set(bt.block().0, now);
                return Ok(());
            }
        }
        // Unmapped, or maybe shared: a new block is needed.
        if self.mode == PoolMode::OutOfDataSpace {
            return Err(self.unserviceable());
        }
        let nb = self.alloc_data_block()?;
        let full = full || page == Some((0, bb));
        let content = if full && page.is_some() {
            BlockData::Zero.overwrite(bb, s, e, st)
        } else if full {
            BlockData::Whole(st)
        } else {
            let base = match found {
                // Breaking sharing copies the whole old block first (THIN4, THIN7).
                Some(old) => self.data.get(old.block().0),
                None if self.params.features.skip_block_zeroing => self.data.get(nb.0),
                None => BlockData::Zero,
            };
            let base = match page {
                Some((ps, pe)) => base.zero_range(bb, ps, pe),
                None => base,
            };
            base.overwrite(bb, s, e, st)
        };
        self.data.set(nb.0, content);
        let time = self.time;
        let ThinPool { devices, sm, .. } = self;
        if let Some(d) = devices.get_mut(&id) {
            d.mapping.insert(v, BlockTime::new(nb, time), sm);
        }
        Ok(())
    }

    /// `alloc_data_block`: the low-water event, then a block, or ENOSPC and the pool out of
    /// data space.
    fn alloc_data_block(&mut self) -> Result<PoolBlock, Errno> {
        let free = self.sm.free();
        if free <= self.params.low_water_blocks && !self.low_water_triggered {
            // `check_low_water_mark`: one event, until the pool is reloaded.
            self.low_water_triggered = true;
            self.events += 1;
        }
        if free == 0 {
            // The kernel commits to see whether that frees anything; it cannot here.
            self.sm.commit();
            self.out_of_data_space();
            return Err(self.unserviceable());
        }
        match self.sm.alloc() {
            Some(b) => Ok(b),
            None => {
                // Free blocks exist but were all freed in this transaction.
                self.out_of_data_space();
                Err(self.unserviceable())
            }
        }
    }

    /// `set_pool_mode(PM_OUT_OF_DATA_SPACE)`: a mode change sends an event
    /// (`notify_of_pool_mode_change`).
    fn out_of_data_space(&mut self) {
        if self.mode != PoolMode::OutOfDataSpace {
            self.events += 1;
        }
        self.mode = PoolMode::OutOfDataSpace;
    }

    /// What happens to I/O the pool cannot serve out of data space: with
    /// `error_if_no_space` it fails at once with ENOSPC; in queue mode it waits, and after
    /// `no_space_timeout` (60 s by default) the kernel sets `error_if_no_space` on the pool
    /// and fails it with ENOSPC (`do_no_space_timeout`). The model takes the wait as over.
    fn unserviceable(&mut self) -> Errno {
        if !self.error_if_no_space {
            // `do_no_space_timeout` switches to error IO with an event.
            self.events += 1;
        }
        self.error_if_no_space = true;
        Errno::ENOSPC
    }
}

fn stamp(step: usize, id: ThinId, v: u64) -> Stamp {
    Stamp {
        step: u32::try_from(step).unwrap_or(u32::MAX),
        dev: id.get(),
        block: v,
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::PoolParams;
    use super::super::units::Sectors;
    use super::super::ThinOp;
    use super::*;

    fn pool(blocks: u64, f: impl FnOnce(&mut PoolParams)) -> ThinPool {
        let mut p = PoolParams::new(blocks);
        f(&mut p);
        let mut pool = ThinPool::new(p).unwrap();
        pool.apply(
            0,
            &ThinOp::CreateThin {
                dev: 0,
                sectors: None,
            },
        )
        .unwrap();
        pool
    }

    fn read(p: &mut ThinPool, dev: u64, block: u64, count: u64) -> Vec<String> {
        match p.apply(99, &ThinOp::ReadBlocks { dev, block, count }) {
            Ok(ThinValue::Blocks(b)) => b.iter().map(BlockData::sources).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn thin6_mapping() {
        let mut p = pool(16, |_| {});
        let w = |dev, block, count| ThinOp::WriteBlocks { dev, block, count };
        p.apply(1, &w(0, 0, 4)).unwrap();
        p.apply(2, &w(0, 100, 1)).unwrap();
        p.apply(3, &ThinOp::CreateSnap { dev: 1, origin: 0 })
            .unwrap();
        p.apply(4, &w(1, 1, 1)).unwrap();
        p.apply(5, &w(1, 200, 1)).unwrap();
        assert_eq!(p.used_data_blocks(), 7);
        let m = p.mapping(ThinId::new(1).unwrap()).unwrap();
        let got: Vec<(u64, u64)> = m
            .entries()
            .iter()
            .map(|(v, b)| (v.0, b.block().0))
            .collect();
        assert_eq!(
            got,
            vec![(0, 0), (1, 5), (2, 2), (3, 3), (100, 4), (200, 6)]
        );
        assert_eq!(read(&mut p, 1, 0, 2), vec!["1", "4"]);
    }

    #[test]
    fn small_writes_into_shared_and_unshared_blocks() {
        let mut p = pool(8, |_| {});
        p.apply(
            1,
            &ThinOp::WriteBlocks {
                dev: 0,
                block: 0,
                count: 1,
            },
        )
        .unwrap();
        p.apply(2, &ThinOp::CreateSnap { dev: 1, origin: 0 })
            .unwrap();
        p.apply(
            3,
            &ThinOp::WriteBytes {
                dev: 1,
                offset: 5,
                len: 10,
            },
        )
        .unwrap();
        assert_eq!(p.used_data_blocks(), 2);
        p.apply(
            4,
            &ThinOp::WriteBytes {
                dev: 1,
                offset: 50,
                len: 10,
            },
        )
        .unwrap();
        assert_eq!(p.used_data_blocks(), 2);
        assert_eq!(read(&mut p, 1, 0, 1), vec!["1+3+4"]);
        assert_eq!(read(&mut p, 0, 0, 1), vec!["1"]);
    }

    #[test]
    fn skip_block_zeroing_shows_stale_data() {
        let mut p = pool(1, |p| {
            p.features.skip_block_zeroing = true;
            p.features.no_discard_passdown = true;
        });
        p.apply(
            1,
            &ThinOp::WriteBlocks {
                dev: 0,
                block: 0,
                count: 1,
            },
        )
        .unwrap();
        p.apply(
            2,
            &ThinOp::DiscardBlocks {
                dev: 0,
                block: 0,
                count: 1,
            },
        )
        .unwrap();
        p.apply(
            3,
            &ThinOp::WriteBytes {
                dev: 0,
                offset: 65536,
                len: 1,
            },
        )
        .unwrap();
        // The page cache wrote back the whole 4 KiB page it read from the unmapped block:
        // zeros around the byte, stale data after the page.
        assert_eq!(read(&mut p, 0, 1, 1), vec!["zero+1+3"]);
    }

    #[test]
    fn out_of_space_modes() {
        for error in [false, true] {
            let mut p = pool(1, |p| p.features.error_if_no_space = error);
            p.apply(
                1,
                &ThinOp::WriteBlocks {
                    dev: 0,
                    block: 0,
                    count: 1,
                },
            )
            .unwrap();
            let w = ThinOp::WriteBlocks {
                dev: 0,
                block: 1,
                count: 1,
            };
            assert_eq!(p.apply(2, &w), Err(Errno::ENOSPC));
            let st = p.status();
            assert_eq!(st.mode, PoolMode::OutOfDataSpace);
            // After the no-space timeout a queueing pool errors too.
            assert_eq!(
                st.no_space,
                super::super::status::NoSpaceMode::ErrorIfNoSpace
            );
            assert_eq!(
                p.apply(
                    3,
                    &ThinOp::WriteBlocks {
                        dev: 0,
                        block: 0,
                        count: 1
                    }
                ),
                Ok(ThinValue::Unit)
            );
            p.apply(
                4,
                &ThinOp::DiscardBlocks {
                    dev: 0,
                    block: 0,
                    count: 1,
                },
            )
            .unwrap();
            let st = p.status();
            assert_eq!(st.mode, PoolMode::Rw);
            assert_eq!(
                st.no_space == super::super::status::NoSpaceMode::ErrorIfNoSpace,
                error
            );
        }
    }

    #[test]
    fn device_end_and_discard_rules() {
        let mut p = pool(8, |_| {});
        p.apply(
            1,
            &ThinOp::CreateThin {
                dev: 1,
                sectors: Some(Sectors(256)),
            },
        )
        .unwrap();
        assert_eq!(
            p.apply(
                2,
                &ThinOp::WriteBlocks {
                    dev: 1,
                    block: 2,
                    count: 1
                }
            ),
            Err(Errno::ENOSPC)
        );
        p.apply(
            3,
            &ThinOp::WriteBlocks {
                dev: 1,
                block: 1,
                count: 5,
            },
        )
        .unwrap();
        assert_eq!(p.used_data_blocks(), 1);
        assert_eq!(read(&mut p, 1, 0, 9), vec!["zero", "3"]);
        assert_eq!(
            p.apply(
                4,
                &ThinOp::DiscardBlocks {
                    dev: 1,
                    block: 1,
                    count: 2
                }
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            p.apply(
                5,
                &ThinOp::DiscardBlocks {
                    dev: 1,
                    block: 0,
                    count: u64::MAX
                }
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            p.apply(
                6,
                &ThinOp::ReadBlocks {
                    dev: 7,
                    block: 0,
                    count: 1
                }
            ),
            Err(Errno::ENODATA)
        );
    }
}
