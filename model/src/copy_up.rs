//! Copy-up: making a lower file or directory writable by copying it into the upper layer,
//! parents first (OVL3, S4). Whole files by default; metadata only with `metacopy=on`.

use crate::container::{Container, Dentry, IndexEntry};
use crate::errno::Errno;
use crate::space::PAGE;
use crate::tree::{empty_dir, Body, Ino, Inode, Origin};

/// How much of a file a copy-up must bring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyUp {
    /// Data and metadata: open for write, truncate, and any copy-up without `metacopy`.
    Data,
    /// Metadata only if the policy allows it (chmod, xattrs, link, rename).
    Meta,
    /// No data: `open` with `O_TRUNC`, which truncates the copy anyway (measured on 6.18:
    /// a 10-page file copied up with `O_RDONLY|O_TRUNC` when 5 pages were free).
    Trunc,
}

impl Container {
    /// Makes every directory on `dirs` an upper directory, root first; returns the last
    /// one's upper inode. On ext4 each directory copied up takes an inode and a block, and
    /// may find none: ENOSPC, the directories before it staying copied up.
    pub(crate) fn copy_up_dirs(&mut self, dirs: &mut [(String, Dentry)]) -> Result<Ino, Errno> {
        let mut parent = dirs[0].1.upper.expect("upper root");
        for entry in dirs.iter_mut().skip(1) {
            let d = self.copy_up_entry(parent, &entry.0, entry.1, CopyUp::Meta)?;
            entry.1 = d;
            parent = d.upper.expect("copied up");
        }
        Ok(parent)
    }

    /// Copies one entry of upper directory `parent` up (its parents are already there) and
    /// returns the dentry updated. A file whose data does not fit the pages left is ENOSPC,
    /// and nothing of it is left (measured: the kernel removes the half-made copy from
    /// `work/work`).
    pub(crate) fn copy_up_entry(
        &mut self,
        parent: Ino,
        name: &str,
        mut d: Dentry,
        how: CopyUp,
    ) -> Result<Dentry, Errno> {
        if d.in_upper {
            let ino = d.upper.expect("in upper");
            self.complete_copy_up(ino, how)?;
            return Ok(d);
        }
        // Copying up never changes the parent's timestamps (overlayfs restores them), so
        // Docker's change walker does not see the parent as changed.
        let parent_version = self.upper.get(parent).version;
        if let Some(ino) = d.upper {
            // Another name of this lower inode was copied up already (index / pseudo-link).
            self.upper.attach(parent, name, ino);
            self.note_index_name_gone(d);
            self.upper.get_mut(parent).version = parent_version;
            d.in_upper = true;
            self.complete_copy_up(ino, how)?;
            return Ok(d);
        }
        let l = d.lower.expect("a lower dentry");
        let node = self.lower.node(l);
        let origin = Origin {
            layer: node.layer,
            ino: node.ino,
        };
        let src = self.lower.inode(l).clone();
        // `ovl_do_copy_up`: the parent is marked impure first (the mark stays if the copy
        // fails), then the copy is made in the work directory: an inode, a directory's
        // block, the data.
        self.mark_impure(parent)?;
        if src.is_dir() {
            self.take_dir()?;
        } else {
            self.take_inode()?;
        }
        // overlayfs records no origin for a hard-linked lower file unless index=on (seen
        // here; overlay's layer farms make every image file hard-linked): without it,
        // metadata-only copy-up is not possible either.
        let keeps_origin = src.is_dir() || self.stat(d).nlink <= 1 || self.policy.keep_hard_links;
        let body = match src.body {
            Body::Dir { .. } => empty_dir(false),
            Body::File { .. } if how == CopyUp::Trunc => Body::File {
                data: crate::data::FileData::new(),
                metacopy: false,
            },
            Body::File { mut data, .. } => {
                let meta_only = how == CopyUp::Meta && self.policy.metacopy && keeps_origin;
                if !meta_only {
                    self.take_data_pages(&mut data)?;
                    self.copied_up_bytes += data.len();
                }
                Body::File {
                    data,
                    metacopy: meta_only,
                }
            }
            other => other,
        };
        let hard_linked = matches!(body, Body::File { .. }) && src.nlink > 1;
        let ino = self.upper.alloc(Inode {
            body,
            origin: keeps_origin.then_some(origin),
            version: 0,
            ..src
        });
        self.upper.attach(parent, name, ino);
        self.upper.get_mut(ino).version = 0;
        self.upper.get_mut(parent).version = parent_version;
        if hard_linked && self.policy.keep_hard_links {
            self.upper.get_mut(ino).pinned = true;
            self.index.insert(
                (origin.layer, origin.ino),
                IndexEntry {
                    upper: ino,
                    names_gone: 1,
                },
            );
        }
        d.upper = Some(ino);
        d.in_upper = true;
        if !self.upper.get(ino).is_dir() {
            d.lower = None;
        }
        Ok(d)
    }

    /// The blocks each copied-up file owns on xfs, where a copy-up is a reflink clone of
    /// the lower file (`ovl_copy_up_file` → `vfs_clone_file_range`) and a write copies the
    /// blocks it touches: the pages written since the copy-up.
    pub(crate) fn clone_pages(&self) -> std::collections::BTreeMap<Ino, u64> {
        let layers = self.lower.layers();
        self.upper
            .inodes()
            .filter_map(|(ino, inode)| {
                let Body::File {
                    data,
                    metacopy: false,
                } = &inode.body
                else {
                    return None;
                };
                let o = inode.origin?;
                let lower = layers.get(o.layer)?.tree.get(o.ino);
                let Body::File { data: from, .. } = &lower.body else {
                    return None;
                };
                Some((ino, data.pages_not_shared_with(from, PAGE)))
            })
            .collect()
    }

    /// Marks upper directory `parent` impure, as the kernel does on every copy-up into it
    /// (seen here). On ext4 the mark may not fit the inode beside its other attributes
    /// and goes to an xattr block, which directories whose blocks hold only the mark share
    /// ([`crate::space`]'s `ext4`): the first such block is taken here.
    fn mark_impure(&mut self, parent: Ino) -> Result<(), Errno> {
        let p = self.upper.get(parent);
        if p.impure {
            return Ok(());
        }
        if let Some(b) = self.space.filter(|b| b.fs == crate::space::SpaceFs::Ext4) {
            let mut xattrs = crate::layout::ext4_dir_xattrs(p);
            let before = crate::space::ext4::xattr_spill(&xattrs);
            xattrs.push(("trusted.overlay.impure".into(), 1));
            let after = crate::space::ext4::xattr_spill(&xattrs);
            let alone = after.as_ref().is_some_and(|s| s.len() == 1);
            if after.is_some() && before.is_none() && !(alone && b.impure_block) {
                self.take_pages(1)?;
                if let Some(b) = &mut self.space {
                    b.impure_block |= alone;
                }
            }
        }
        // The mark is an xattr: the directory's times do not change.
        let version = self.upper.get(parent).version;
        let p = self.upper.get_mut(parent);
        p.impure = true;
        p.version = version;
        Ok(())
    }

    /// Takes the pages a copy of `data` fills, as a copy-up writes it: every page, since
    /// the lower file has every page (the real side writes layer files whole, so
    /// `ovl_copy_up_file` finds no hole to skip). The copy's holes become zeros held as data.
    /// On xfs the copy is a clone of the lower's whole blocks (`vfs_copy_file_range`), and
    /// only its last partial block is copied.
    fn take_data_pages(&mut self, data: &mut crate::data::FileData) -> Result<(), Errno> {
        if self
            .space
            .is_some_and(|b| b.fs == crate::space::SpaceFs::Xfs)
        {
            // The clone copies the last partial block ([`FileData::pages_not_shared_with`]).
            return self.take_pages(u64::from(!data.len().is_multiple_of(PAGE)));
        }
        if let Some(b) = self.space {
            data.fill_holes();
            // ext4: and the extent block of a copy past 4 extents (512 MiB).
            let extents = match b.fs {
                crate::space::SpaceFs::Ext4 => {
                    crate::space::ext4::extent_blocks(&data.page_run_lengths(PAGE)).unwrap_or(0)
                }
                crate::space::SpaceFs::Tmpfs | crate::space::SpaceFs::Xfs => 0,
            };
            self.take_pages(data.pages(PAGE) + extents)?;
        }
        Ok(())
    }

    /// What an upper file still needs for a copy-up of kind `how`: a metacopy file's data
    /// for [`CopyUp::Data`]; for [`CopyUp::Trunc`] none, it is emptied.
    fn complete_copy_up(&mut self, ino: Ino, how: CopyUp) -> Result<(), Errno> {
        match how {
            CopyUp::Data => self.copy_up_data(ino),
            CopyUp::Trunc => {
                let inode = self.upper.get_mut(ino);
                if let Body::File { data, metacopy } = &mut inode.body {
                    if *metacopy {
                        *data = crate::data::FileData::new();
                        *metacopy = false;
                    }
                }
                Ok(())
            }
            CopyUp::Meta => Ok(()),
        }
    }

    /// Brings a metacopy file's data up (first write after a metadata-only copy-up).
    fn copy_up_data(&mut self, ino: Ino) -> Result<(), Errno> {
        let inode = self.upper.get(ino);
        if let Body::File {
            metacopy: true,
            data,
        } = &inode.body
        {
            let mut data = data.clone();
            let v = inode.version;
            self.take_data_pages(&mut data)?;
            self.copied_up_bytes += data.len();
            let i = self.upper.get_mut(ino);
            i.body = Body::File {
                data,
                metacopy: false,
            };
            i.version = v;
        }
        Ok(())
    }

    /// Records that one more lower name of an indexed inode left the lower view.
    pub(crate) fn note_index_name_gone(&mut self, d: Dentry) {
        if let Some(l) = d.lower {
            let n = self.lower.node(l);
            if let Some(e) = self.index.get_mut(&(n.layer, n.ino)) {
                e.names_gone += 1;
            }
        }
    }

    /// Copies up the entry `name` with chain `dirs`, returning its upper inode.
    pub(crate) fn copy_up_path(
        &mut self,
        dirs: &mut [(String, Dentry)],
        name: &str,
        d: Dentry,
        how: CopyUp,
    ) -> Result<(Ino, Dentry), Errno> {
        let parent = self.copy_up_dirs(dirs)?;
        let d = self.copy_up_entry(parent, name, d, how)?;
        Ok((parent, d))
    }
}
