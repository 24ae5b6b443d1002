//! The driver root's space: what its filesystem holds ([`Capacity`]), the budget a step
//! gets ([`Budget`]), and the checks that stop a run where the model does not know.

use super::{StepError, Store};
use crate::space::{Budget, Ext4Geometry, SpaceFs};
use crate::step::FileOp;

/// What the driver root's filesystem gives its files.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capacity {
    fs: SpaceFs,
    /// Pages (tmpfs) or blocks (ext4) the files may take.
    blocks: u64,
    /// Inodes the files may take, where they run out (ext4).
    inodes: Option<u64>,
}

impl Store {
    /// Accounts for the space of the driver root's filesystem: a tmpfs of `bytes` (its
    /// `size=`). From then on a step that needs more pages than are free is ENOSPC, the
    /// way the kernel cuts it (`crate::space`). Only overlay and overlay2 are accounted.
    pub fn set_tmpfs_size(&mut self, bytes: u64) {
        if self.driver.is_overlayfs() {
            self.capacity = Some(Capacity {
                fs: SpaceFs::Tmpfs,
                blocks: bytes.div_ceil(crate::space::PAGE),
                inodes: None,
            });
        }
    }

    /// The driver root is on an ext4 that `mkfs.ext4` made on `bytes`, with `inodes` if
    /// given: its blocks and inodes are accounted ([`crate::space`]'s `ext4`), and a step
    /// that needs more than are free is ENOSPC. Only overlay and overlay2 are accounted.
    pub fn set_ext4(&mut self, bytes: u64, inodes: Option<u64>) -> Result<(), String> {
        if self.driver.is_overlayfs() {
            let g = Ext4Geometry::new(bytes, inodes)?;
            self.capacity = Some(Capacity {
                fs: SpaceFs::Ext4,
                blocks: g.usable_blocks(),
                inodes: Some(g.free_inodes()),
            });
        }
        Ok(())
    }

    /// The driver root is on an xfs of `bytes`. Its space is not predicted: a step after
    /// which the driver root's files would take more than 4/5 of it (a bound below which
    /// xfs has not run out here: its metadata and reserves take less) stops the model's run
    /// with [`StepError::NoSpace`], a failure, rather than a guess.
    pub fn set_loop_size(&mut self, bytes: u64) {
        if self.driver.is_overlayfs() {
            self.unpredicted_above = Some(bytes / 5 * 4 / crate::space::PAGE);
        }
    }

    /// Whether file step `op` may take space that is accounted: on tmpfs pages
    /// ([`FileOp::may_take_space`]), on ext4 also inodes and directory blocks (anything but
    /// a read).
    pub(super) fn may_take_space(&self, op: &FileOp) -> bool {
        match self.capacity {
            Some(c) if c.fs == SpaceFs::Ext4 => !op.only_reads(),
            _ => op.may_take_space(),
        }
    }

    /// What a step may take: the blocks and inodes free, when they are accounted.
    pub(crate) fn budget(&self) -> Option<Budget> {
        let cap = self.capacity?;
        let used = crate::layout::space_used(self, cap.fs);
        Some(Budget {
            fs: cap.fs,
            blocks: cap.blocks.saturating_sub(used.blocks),
            inodes: cap.inodes.map(|n| n.saturating_sub(used.inodes)),
            impure_block: used.impure_block,
        })
    }

    /// Whether the driver root's files take more than its filesystem holds.
    pub(super) fn overfull(&self) -> bool {
        self.capacity.is_some_and(|cap| {
            let used = crate::layout::space_used(self, cap.fs);
            used.blocks > cap.blocks || cap.inodes.is_some_and(|n| used.inodes > n)
        })
    }

    /// `Err` when a layer just added (`id`) does not fit the driver root's filesystem.
    pub(super) fn check_layer_fits(&self, id: &str) -> Result<(), StepError> {
        let Some(cap) = self.capacity else {
            return Ok(());
        };
        let used = crate::layout::space_used(self, cap.fs);
        let what = match cap.fs {
            SpaceFs::Tmpfs => "tmpfs: its files would take",
            SpaceFs::Ext4 => "ext4: its files would take",
        };
        if used.blocks > cap.blocks {
            return Err(StepError::NoSpace(format!(
                "layer `{id}` does not fit the driver root's {what} {} blocks of 4 KiB, \
                 {} are free",
                used.blocks, cap.blocks
            )));
        }
        if let Some(n) = cap.inodes.filter(|&n| used.inodes > n) {
            return Err(StepError::NoSpace(format!(
                "layer `{id}` does not fit the driver root's {what} {} inodes, {n} are free",
                used.inodes
            )));
        }
        Ok(())
    }

    /// Stops the run where the model does not predict the space: the driver root past 4/5
    /// of an xfs, or of an ext4 whose count the model cannot make exact (say why), or a
    /// devicemapper device or its pool past 4/5 of its size. `device`: the one device a
    /// file step wrote to (`None`: any may have grown).
    pub(super) fn check_unpredicted(
        &self,
        what: &str,
        device: Option<&str>,
    ) -> Result<(), StepError> {
        if let Some(dm) = &self.dm {
            dm.check_space(device)
                .map_err(|e| StepError::NoSpace(format!("{what}: {e}")))?;
        }
        if let Some(limit) = self.unpredicted_above {
            let used = crate::layout::pages_used(self);
            if used > limit {
                return Err(StepError::NoSpace(format!(
                    "{what}: the driver root's files would take {used} pages of 4 KiB, more \
                     than 4/5 of its {} filesystem ({limit} pages), where the model does not \
                     predict its space (only tmpfs's and ext4's are)",
                    format!("{:?}", self.backing).to_lowercase()
                )));
            }
        }
        if let Some(cap) = self.capacity.filter(|c| c.fs == SpaceFs::Ext4) {
            let used = crate::layout::space_used(self, cap.fs);
            if let Some(why) = used.unexact.filter(|_| used.blocks > cap.blocks / 5 * 4) {
                return Err(StepError::NoSpace(format!(
                    "{what}: the driver root's files take {} of ext4's {} blocks, and the \
                     model's count is not exact: {why}",
                    used.blocks, cap.blocks
                )));
            }
        }
        Ok(())
    }
}
