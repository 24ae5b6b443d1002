//! The driver root's space: what its filesystem holds ([`Capacity`]), the budget a step
//! gets ([`Budget`]), and the checks that stop a run where the model does not know.

use super::{StepError, Store};
use crate::params::DriverKind;
use crate::space::{Budget, Ext4Geometry, SpaceFs, XfsGeometry};
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

    /// The driver root is on an xfs that `mkfs.xfs` made on `bytes`, with the real side's
    /// inode chunks made beforehand: its blocks are accounted ([`crate::space`]'s `xfs`),
    /// and a write that needs more than are free stops where xfs stops it. Only overlay and
    /// overlay2 are accounted.
    pub fn set_xfs(&mut self, bytes: u64) -> Result<(), String> {
        if self.driver.is_overlayfs() {
            let g = XfsGeometry::new(bytes)?;
            self.capacity = Some(Capacity {
                fs: SpaceFs::Xfs,
                blocks: g.usable_blocks(),
                inodes: None,
            });
        }
        Ok(())
    }

    /// Stops the run before `op` when the driver root's xfs is nearly full and `op` makes
    /// a metadata transaction: xfs reserves each transaction's worst case up front
    /// (`xfs_trans_alloc`), so near full a step may be ENOSPC that would fit, which the
    /// model does not follow. Reads, and writes, truncates and unlinks of a file only the
    /// upper layer has, are followed (a write reserves only its data and extent blocks, a
    /// truncate none, an unlink falls back to none: `xfs_remove`). Returns whether `op` is
    /// such a plain step, for [`Store::check_xfs_after`].
    pub(super) fn check_xfs_reservations(&self, op: &crate::step::Op) -> Result<bool, StepError> {
        use crate::step::Op;
        let Some(cap) = self.capacity.filter(|c| c.fs == SpaceFs::Xfs) else {
            return Ok(true);
        };
        let plain = match op {
            Op::File { container, op } => {
                op.only_reads()
                    || self
                        .container_id(container.as_deref())
                        .ok()
                        .and_then(|id| self.containers.get(&id))
                        .is_some_and(|c| c.touches_only_an_upper_file(op))
            }
            Op::RemoveContainer { .. } => true,
            _ => false,
        };
        if plain {
            return Ok(true);
        }
        let used = crate::layout::space_used(self, cap.fs);
        let free = cap.blocks.saturating_sub(used.blocks);
        if free >= crate::space::xfs::NEAR_FULL {
            return Ok(false);
        }
        let what = match op {
            Op::File { op, .. } => op.name(),
            _ => "this step",
        };
        Err(StepError::NotFollowed(format!(
            "{what} with {free} blocks free on the driver root's xfs: near full, xfs reserves \
             each transaction's worst case up front and may refuse what would fit, which the \
             model does not follow"
        )))
    }

    /// Stops the run after a step on an xfs driver root whose outcome the model cannot
    /// vouch for: one that is not `plain` ([`Store::check_xfs_reservations`]) and ran out
    /// or left less than [`crate::space::xfs::NEAR_FULL`] blocks (a copy-on-write extent
    /// of a reflinked copy is reserved 32 blocks at a time, a commit's or a container's
    /// files each reserve their transaction's worst case); or any step after which the
    /// files take more than the filesystem holds (a write to a reflinked copy takes a block
    /// for each shared block it writes, which the step's own count does not see). Returns
    /// the space counted, for [`Store::check_unpredicted`].
    pub(super) fn check_xfs_after(
        &self,
        out: &crate::step::Outcome,
        plain: bool,
    ) -> Result<Option<crate::layout::Used>, StepError> {
        let Some(cap) = self.capacity.filter(|c| c.fs == SpaceFs::Xfs) else {
            return Ok(None);
        };
        let used = crate::layout::space_used(self, cap.fs);
        let free = cap.blocks.saturating_sub(used.blocks);
        let enospc = *out == Err(crate::errno::Errno::ENOSPC);
        if used.blocks > cap.blocks {
            return Err(StepError::NotFollowed(format!(
                "the driver root's files take {} of xfs's {} blocks after this step: a write \
                 to a reflinked copy took blocks the step did not count",
                used.blocks, cap.blocks
            )));
        }
        if !plain && (enospc || free < crate::space::xfs::NEAR_FULL) {
            return Err(StepError::NotFollowed(format!(
                "this step {} on the driver root's xfs ({free} blocks left): what it reserves \
                 there (copy-on-write extents of 32 blocks, each transaction's worst case) \
                 decides, which the model does not follow",
                if enospc { "ran out" } else { "came near full" }
            )));
        }
        if let Some(why) = used.unexact.as_ref().filter(|_| enospc) {
            return Err(StepError::NotFollowed(format!(
                "this step ran out of the driver root's xfs ({} of {} blocks taken), and the \
                 model's count is not exact: {why}",
                used.blocks, cap.blocks
            )));
        }
        Ok(Some(used))
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

    /// Whether container `id` on `image` fits the driver root's filesystem (`with`: this
    /// store with the container added). `Ok(Err(committed))` is ENOSPC, `committed` saying
    /// whether overlay2 had already marked the image `committed` (it stays).
    ///
    /// On tmpfs only the driver's files take pages (`link`, `lower`, `lower-id`), all
    /// written before overlay2's `committed` mark. On ext4 each of the driver's directories
    /// and files takes an inode and (but the empty mark) a block, in the order Docker makes
    /// them (moby overlay2 `create`: the layer directory, `l/<short>`, `link`, `lower`,
    /// `work`, the image's `committed`, `diff`, `merged`; overlay: the directory,
    /// `lower-id`, `upper`, `work`, `merged`), and then the mount makes `work/work` and
    /// tries a tmpfile, a whiteout and a directory in it (`ovl_make_workdir`). Measured on
    /// 6.18 with k inodes free before the mount: k = 0 mounts read-only (no `work/work`), 1
    /// to 3 fail the mount with ENOSPC, 4 or more mount and keep one; with no block free it
    /// mounts read-only. A read-only container is not modelled: the run stops, saying so.
    /// With init layers, only the totals are checked.
    pub(super) fn container_fits(
        &self,
        with: &Store,
        id: &str,
        image: Option<&str>,
    ) -> Result<Result<(), bool>, StepError> {
        let Some(cap) = self.capacity else {
            return Ok(Ok(()));
        };
        if cap.fs != SpaceFs::Ext4 || with.init_layers {
            return Ok(if with.overfull() { Err(false) } else { Ok(()) });
        }
        let Some(mut b) = self.budget() else {
            return Ok(Ok(()));
        };
        let mut committed = false;
        for (blocks, inodes, mark) in self.create_costs(id, image) {
            if b.blocks < blocks || b.inodes.is_some_and(|n| n < inodes) {
                return Ok(Err(committed));
            }
            b.blocks -= blocks;
            b.inodes = b.inodes.map(|n| n - inodes);
            committed |= mark;
        }
        if image.is_none() {
            return Ok(Ok(()));
        }
        let inodes = b.inodes.unwrap_or(u64::MAX);
        if b.blocks == 0 || inodes == 0 {
            return Err(StepError::NoSpace(format!(
                "container `{id}`: its files fit the driver root's ext4 but overlayfs's \
                 `work/work` does not ({} blocks, {inodes} inodes free): the kernel then \
                 mounts the container read-only, which the model does not follow",
                b.blocks
            )));
        }
        if inodes - 1 < 3 {
            return Ok(Err(committed));
        }
        Ok(Ok(()))
    }

    /// What Docker's `create` of container `id` on `image` makes on ext4, in order: (blocks,
    /// inodes, whether it is the image's `committed` mark).
    fn create_costs(&self, id: &str, image: Option<&str>) -> Vec<(u64, u64, bool)> {
        let dir = (SpaceFs::Ext4.dir_blocks(), 1, false);
        let file = (1, 1, false);
        match (self.driver, image) {
            (DriverKind::Overlay2, _) => {
                let target = format!("../{id}/diff").len() as u64;
                let mut v = vec![dir, (SpaceFs::Ext4.symlink_blocks(target), 1, false), file];
                if let Some(i) = image {
                    v.extend([file, dir]);
                    if !self.built_upon.contains(i) {
                        v.push((0, 1, true));
                    }
                    v.extend([dir, dir]);
                } else {
                    v.push(dir);
                }
                v
            }
            (_, Some(_)) => vec![dir, file, dir, dir, dir],
            (_, None) => vec![dir, dir],
        }
    }

    /// Stops the run after an overlay (v1) commit `id` on ext4 (this store has it) when
    /// the layer fits but what is built on the way may not: the real side's layer builder
    /// stages the diff in `staged-diff` beside the hard-link farm of the root and copies it
    /// in (Docker's applier untars into the root directly), so for a while the diff's files
    /// take their inodes and blocks twice (`fuzz --driver overlay --ext4 4M:96`: commits
    /// ENOSPC on the kernel that fit once built). The model predicts the end state only.
    pub(super) fn check_commit_staging(
        &self,
        id: &str,
        diff: &crate::tree::Tree,
    ) -> Result<(), StepError> {
        let Some(cap) = self.capacity.filter(|c| c.fs == SpaceFs::Ext4) else {
            return Ok(());
        };
        if self.driver != DriverKind::Overlay {
            return Ok(());
        }
        let used = crate::layout::space_used(self, cap.fs);
        let (mut blocks, mut inodes) = (0u64, 0u64);
        for (_, inode) in diff.inodes() {
            inodes += 1;
            blocks += match &inode.body {
                crate::tree::Body::Dir { .. } => SpaceFs::Ext4.dir_blocks(),
                crate::tree::Body::File { data, .. } => data.pages(crate::space::PAGE),
                crate::tree::Body::Symlink(t) => SpaceFs::Ext4.symlink_blocks(t.len() as u64),
                _ => 0,
            };
        }
        let free_blocks = cap.blocks.saturating_sub(used.blocks);
        let free_inodes = cap
            .inodes
            .map_or(u64::MAX, |n| n.saturating_sub(used.inodes));
        if free_blocks < blocks || free_inodes < inodes {
            return Err(StepError::NoSpace(format!(
                "commit `{id}`: the layer fits the driver root's ext4 ({free_blocks} blocks, \
                 {free_inodes} inodes left after it), but overlay stages its diff ({blocks} \
                 blocks, {inodes} inodes) while it builds it, which the model does not follow"
            )));
        }
        Ok(())
    }

    /// Stops the run before container `id` is mounted again on an ext4 with fewer than 4
    /// inodes or no block free: the mount's checks in `work/work` (see
    /// [`Store::container_fits`]) then fail it or make it read-only, which the model does not
    /// follow (seen: `fuzz --ext4 4M:64 --seed 3`).
    pub(super) fn check_remount_space(&self, id: &str) -> Result<(), StepError> {
        let Some(cap) = self.capacity.filter(|c| c.fs == SpaceFs::Ext4) else {
            return Ok(());
        };
        if self.containers.get(id).is_none_or(|c| c.image.is_none()) {
            return Ok(());
        }
        let used = crate::layout::space_used(self, cap.fs);
        let blocks = cap.blocks.saturating_sub(used.blocks);
        let inodes = cap
            .inodes
            .map_or(u64::MAX, |n| n.saturating_sub(used.inodes));
        if blocks < 1 || inodes < 4 {
            return Err(StepError::NoSpace(format!(
                "remounting container `{id}` with {blocks} blocks and {inodes} inodes free on \
                 the driver root's ext4: overlayfs's checks in `work/work` may fail the mount \
                 or make it read-only, which the model does not follow"
            )));
        }
        Ok(())
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
            SpaceFs::Xfs => "xfs: its files would take",
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
    /// of an ext4 or xfs whose count the model cannot make exact (say why), or a
    /// devicemapper device or its pool past 4/5 of its size. `device`: the one device a
    /// file step wrote to (`None`: any may have grown); `counted`: the driver root's space
    /// as already counted for this state, if it was.
    pub(super) fn check_unpredicted(
        &self,
        what: &str,
        device: Option<&str>,
        counted: Option<&crate::layout::Used>,
    ) -> Result<(), StepError> {
        if let Some(dm) = &self.dm {
            dm.check_space(device)
                .map_err(|e| StepError::NoSpace(format!("{what}: {e}")))?;
        }
        if let Some(cap) = self.capacity.filter(|c| c.fs != SpaceFs::Tmpfs) {
            let fresh;
            let used = match counted {
                Some(u) => u,
                None => {
                    fresh = crate::layout::space_used(self, cap.fs);
                    &fresh
                }
            };
            if let Some(why) = used
                .unexact
                .as_ref()
                .filter(|_| used.blocks > cap.blocks / 5 * 4)
            {
                return Err(StepError::NoSpace(format!(
                    "{what}: the driver root's files take {} of {}'s {} blocks, and the \
                     model's count is not exact: {why}",
                    used.blocks,
                    cap.fs.name(),
                    cap.blocks
                )));
            }
        }
        Ok(())
    }
}
