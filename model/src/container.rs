//! A container: a writable tree over a lower stack, mounted with a driver's policy.

use crate::lower::{LowerStack, NodeId};
use crate::params::Policy;
use crate::tree::{Ino, Tree};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A merged dentry: what a name resolves to in the union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dentry {
    /// The writable layer's inode, if there is one.
    pub upper: Option<Ino>,
    /// The lower stack's merged dentry, if the lower one is visible through this name
    /// (a directory that merges, or a file not yet copied up).
    pub lower: Option<NodeId>,
    /// Whether `upper` is reached by this name in the upper tree; false for a lower hard
    /// link whose inode another name already copied up (index=on, AUFS pseudo-links).
    pub in_upper: bool,
}

/// An entry of the inode index (overlayfs `index=on`, AUFS pseudo-links): a lower inode
/// with several names whose copy lives in the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The upper copy.
    pub upper: Ino,
    /// How many of the lower names have been copied up or removed since.
    pub names_gone: u32,
}

/// A container of the model.
#[derive(Clone, Debug)]
pub struct Container {
    /// The container id.
    pub id: String,
    /// Its image's top layer.
    pub image: Option<String>,
    /// The writable layer (devicemapper: the whole filesystem).
    pub upper: Tree,
    /// The image layers (devicemapper: empty, the image is already in `upper`).
    pub lower: Arc<LowerStack>,
    /// The driver's policy.
    pub policy: Policy,
    /// Bytes copied from image layers into the writable layer.
    pub copied_up_bytes: u64,
    /// Lower hard-linked inodes copied up, by (layer, inode).
    pub index: BTreeMap<(usize, Ino), IndexEntry>,
    /// Whether a whiteout was made since the last mount: overlayfs then keeps the shared
    /// whiteout inode in `work/work` (which every mount empties).
    pub made_whiteout: bool,
    /// The mount generation: bumped by every remount.
    pub generation: u32,
    /// Whiteouts made as links of the shared whiteout, with the mount generation whose
    /// shared inode they link.
    pub shared_whiteouts: BTreeMap<Ino, u32>,
    /// Whiteouts the upper filesystem made itself (rename with `RENAME_WHITEOUT`): not
    /// links of the shared whiteout.
    pub own_whiteouts: BTreeSet<Ino>,
    /// overlay driver: how many image-layer roots in the driver hold each lower file, by
    /// (layer id, inode): its farm of hard links (DOCK1).
    pub farm_roots: Arc<BTreeMap<(String, Ino), u32>>,
    /// Pages the upper filesystem has free while a step runs, when the store accounts for
    /// them (a tmpfs with a size, `crate::space`); `None`: not accounted, never full.
    pub(crate) space: Option<crate::space::Budget>,
    /// The store's clock while a step runs: the last modification time handed out.
    pub clock: u64,
    /// Docker could not start it (`crate::start`): its root is not mounted, and no process
    /// runs in it.
    pub stopped: bool,
    /// Who runs the step under way, when not root ([`crate::FileOp::AsUser`]).
    pub cred: Option<crate::step::Cred>,
}

impl Container {
    /// A container on `lower` with the driver's `policy`.
    pub fn new(id: &str, image: Option<String>, lower: Arc<LowerStack>, policy: Policy) -> Self {
        let (upper, lower) = if policy.flat {
            // devicemapper: the container device is a snapshot of the image device, so it
            // starts as the image's whole filesystem and no union is left to do.
            let mut t = lower.flatten();
            let inos: Vec<Ino> = t.inodes().map(|(i, _)| i).collect();
            for i in inos {
                t.get_mut(i).version = 0;
            }
            (t, Arc::new(LowerStack::new(Vec::new())))
        } else {
            (Tree::new(), lower)
        };
        let mut c = Container {
            id: id.to_string(),
            image,
            upper,
            lower,
            policy,
            copied_up_bytes: 0,
            index: BTreeMap::new(),
            made_whiteout: false,
            generation: 0,
            shared_whiteouts: BTreeMap::new(),
            own_whiteouts: BTreeSet::new(),
            farm_roots: Arc::new(BTreeMap::new()),
            space: None,
            clock: 0,
            stopped: false,
            cred: None,
        };
        // The upper root is the merged root: it has the image root's mode where the driver
        // makes it so (`Policy::upper_root_from_image`), Docker's 0755 otherwise.
        if !c.lower.is_empty() {
            let root = c.lower.inode(LowerStack::ROOT).clone();
            let r = c.upper.get_mut(crate::tree::ROOT);
            r.mode = if policy.upper_root_from_image {
                root.mode
            } else {
                0o755
            };
            r.version = 0;
        }
        c
    }

    /// A container created on init layer `init` (the container `Setup` ran in, on the
    /// image stack `image`), as the driver makes it (`crate::init_layer`):
    /// - devicemapper: the init device's filesystem, snapshotted;
    /// - overlay2 and aufs: the init layer's writable tree is one more lower layer, the
    ///   topmost (moby overlay2 `getLower`: the parent's `l/` name first);
    /// - overlay: the container sits on the image's root like the init layer, and its upper
    ///   starts as a copy of the init layer's upper (moby overlay `Create`:
    ///   `copy.DirCopy(parentUpperDir, upperDir, copy.Content, true)`), which keeps only the
    ///   `security.capability` and `trusted.overlay.opaque` xattrs (moby
    ///   `daemon/graphdriver/copy` `doCopyXattrs`) and makes its whiteouts anew.
    pub fn on_init(id: &str, init: &Container, image: Arc<LowerStack>, policy: Policy) -> Self {
        if policy.flat {
            // devicemapper: a snapshot of the init device, its whole filesystem (the image
            // is in it already: nothing to flatten).
            let empty = Arc::new(LowerStack::new(Vec::new()));
            let mut c = Container::new(id, init.image.clone(), empty, policy);
            c.upper = init.upper.clone();
            return c;
        }
        if !policy.farm_links {
            let mut layers = image.layers().to_vec();
            layers.push(Arc::new(crate::lower::Layer {
                id: init.id.clone(),
                parent: init.image.clone(),
                tree: init.upper.clone(),
            }));
            return Container::new(
                id,
                init.image.clone(),
                Arc::new(LowerStack::new(layers)),
                policy,
            );
        }
        let mut c = Container::new(id, init.image.clone(), image, policy);
        let mut upper = init.upper.clone();
        let inos: Vec<Ino> = upper.inodes().map(|(i, _)| i).collect();
        for i in inos {
            let inode = upper.get_mut(i);
            inode.xattrs.retain(|k, _| k == "security.capability");
            // DirCopy drops `trusted.overlay.origin`, but the runtime's first lookups of
            // the container's root (runc mounting over `/proc`, `/dev`, `/etc/hosts`, ...)
            // store it again on each merge directory (`ovl_lookup` → `ovl_fix_origin`:
            // "If no origin fh is stored in upper of a merge dir, store fh of lower dir"),
            // and the init upper's directories are copy-ups of exactly those.
            if !inode.is_dir() {
                inode.origin = None;
            }
            inode.impure = false;
            inode.version = 0;
            if let crate::tree::Body::Dir { redirect, .. } = &mut inode.body {
                *redirect = None;
            }
            if inode.is_whiteout() {
                c.own_whiteouts.insert(i);
            }
        }
        c.upper = upper;
        c
    }

    /// Unmount and mount again: everything on disk stays, `work/work` is emptied.
    pub fn remount(&mut self) {
        self.generation += 1;
        self.made_whiteout = false;
    }

    /// Takes `n` pages (blocks) of the upper filesystem for a step, or ENOSPC when fewer
    /// are free (nothing taken then).
    pub(crate) fn take_pages(&mut self, n: u64) -> Result<(), crate::errno::Errno> {
        match &mut self.space {
            Some(b) if b.blocks < n => Err(crate::errno::Errno::ENOSPC),
            Some(b) => {
                b.blocks -= n;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Takes an inode of the upper filesystem, or ENOSPC when none is free (ext4:
    /// `ext4_new_inode` finds no free inode).
    pub(crate) fn take_inode(&mut self) -> Result<(), crate::errno::Errno> {
        match self.space.as_mut().and_then(|b| b.inodes.as_mut()) {
            Some(0) => Err(crate::errno::Errno::ENOSPC),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// ENOSPC unless `inodes` inodes and `blocks` blocks are free, taking none: what a step
    /// makes and removes again within itself.
    pub(crate) fn need_room(&self, inodes: u64, blocks: u64) -> Result<(), crate::errno::Errno> {
        match self.space {
            Some(b) if b.blocks < blocks || b.inodes.is_some_and(|n| n < inodes) => {
                Err(crate::errno::Errno::ENOSPC)
            }
            _ => Ok(()),
        }
    }

    /// Takes what a new directory costs: an inode and, on ext4, its first block.
    pub(crate) fn take_dir(&mut self) -> Result<(), crate::errno::Errno> {
        self.take_inode()?;
        let blocks = self.space.map_or(0, |b| b.fs.dir_blocks());
        self.take_pages(blocks)
    }

    /// The root dentry.
    pub fn root(&self) -> Dentry {
        Dentry {
            upper: Some(crate::tree::ROOT),
            lower: (!self.lower.is_empty()).then_some(LowerStack::ROOT),
            in_upper: true,
        }
    }
}
