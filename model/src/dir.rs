//! Namespace changes: create, mkdir, unlink, rmdir, rename, link, symlink. Removing a name
//! that the image layers have leaves a whiteout (S3, OVL1); making a directory over a
//! whiteout makes it opaque (OVL2).

use crate::container::{Container, Dentry};
use crate::copy_up::CopyUp;
use crate::errno::Errno;
use crate::params::DirRename;
use crate::path::{self, PATH_MAX};
use crate::step::Kind;
use crate::tree::{empty_dir, file_body, new_inode, Body, Ino};

impl Container {
    /// Removes `name` from the upper directory `parent`, leaving a whiteout if the image
    /// layers have the name.
    /// The whiteout is a link of the mount's shared whiteout once there is one
    /// (`ovl_whiteout`), else a new inode, which may not be free (ENOSPC).
    pub(crate) fn remove_name(
        &mut self,
        parent: Ino,
        name: &str,
        lower_has: bool,
    ) -> Result<(), Errno> {
        if lower_has {
            if !self.made_whiteout {
                self.take_inode()?;
            }
            let wh = self.upper.alloc(new_inode(0, Body::Whiteout));
            self.upper.attach(parent, name, wh);
            self.made_whiteout = true;
            self.shared_whiteouts.insert(wh, self.generation);
        } else {
            self.upper.detach(parent, name);
        }
        Ok(())
    }

    /// Adds a new inode as `name` in upper directory `parent`, over a whiteout if there is
    /// one (a directory made there becomes opaque).
    pub(crate) fn add_name(&mut self, parent: Ino, name: &str, ino: Ino) {
        let over_whiteout = self
            .upper
            .child(parent, name)
            .is_some_and(|w| self.upper.get(w).is_whiteout());
        if over_whiteout {
            if let Body::Dir { opaque, .. } = &mut self.upper.get_mut(ino).body {
                *opaque = true;
            }
        }
        self.upper.attach(parent, name, ino);
    }

    /// Gives the inode `ino` the step made in upper directory `parent` its owner, group and
    /// mode ([`Container::new_owner`]).
    fn own(&mut self, parent: Ino, ino: Ino, is_dir: bool) {
        let mode = self.upper.get(ino).mode;
        let (uid, gid, mode) = self.new_owner(self.upper.get(parent), mode, is_dir);
        let i = self.upper.get_mut(ino);
        (i.uid, i.gid, i.mode) = (uid, gid, mode);
        i.version = 0;
    }

    /// Resolves `path` for creating a new name: its parent's upper inode after copy-up.
    fn new_name_parent(&mut self, path: &str) -> Result<(Ino, String), Errno> {
        self.new_name_parent_merged(path).map(|(p, n, _)| (p, n))
    }

    /// Like [`Container::new_name_parent`], also saying whether the parent is a merged
    /// directory (overlayfs `ovl_type_merge`: it has a lower directory below it).
    fn new_name_parent_merged(&mut self, path: &str) -> Result<(Ino, String, bool), Errno> {
        let mut r = self.resolve(path, false)?;
        let name = r.name.clone().ok_or(Errno::EEXIST)?;
        if r.target.is_some() {
            return Err(Errno::EEXIST);
        }
        self.may_create(self.inode(r.parent()))?;
        let merged = r.parent().lower.is_some();
        Ok((self.copy_up_dirs(&mut r.dirs)?, name, merged))
    }

    /// `open(O_CREAT|O_EXCL)`.
    pub(crate) fn create(&mut self, path: &str, mode: Option<u32>) -> Result<(), Errno> {
        let r = self.resolve(path, false)?;
        if r.target.is_some() || r.name.is_none() {
            return Err(Errno::EEXIST);
        }
        if r.trailing_slash {
            return Err(Errno::EISDIR);
        }
        let (parent, name) = self.new_name_parent(path)?;
        self.take_inode()?;
        let ino = self.upper.alloc(new_inode(
            mode.unwrap_or(0o644) & 0o7777,
            file_body(crate::data::FileData::new()),
        ));
        self.own(parent, ino, false);
        self.add_name(parent, &name, ino);
        Ok(())
    }

    /// `mkdir`.
    pub(crate) fn mkdir(&mut self, path: &str, mode: Option<u32>) -> Result<(), Errno> {
        let (parent, name, merged) = self.new_name_parent_merged(path)?;
        // overlayfs `ovl_create_upper`: a directory made in a merged directory is marked
        // opaque unless the lower layers may change offline (`Policy::offline_changes`).
        let opaque = merged && self.policy.driver.is_overlayfs() && !self.policy.offline_changes;
        self.take_dir()?;
        let ino = self
            .upper
            .alloc(new_inode(mode.unwrap_or(0o755) & 0o7777, empty_dir(opaque)));
        self.own(parent, ino, true);
        self.add_name(parent, &name, ino);
        Ok(())
    }

    /// `symlink`.
    pub(crate) fn symlink(&mut self, target: &str, path: &str) -> Result<(), Errno> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() >= PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let (parent, name) = self.new_name_parent(path)?;
        self.take_inode()?;
        if let Some(b) = self.space {
            // tmpfs keeps a longer target in a page of its own (`shmem_symlink`), ext4 one
            // that does not fit `i_block` in a block (`ext4_symlink`).
            self.take_pages(b.fs.symlink_blocks(target.len() as u64))?;
        }
        let ino = self
            .upper
            .alloc(new_inode(0o777, Body::Symlink(target.to_string())));
        self.own(parent, ino, false);
        self.add_name(parent, &name, ino);
        Ok(())
    }

    /// `unlink`.
    pub(crate) fn unlink(&mut self, path: &str) -> Result<(), Errno> {
        let mut r = self.resolve(path, false)?;
        let d = r.existing()?;
        let Some(name) = r.name.clone() else {
            return Err(Errno::EISDIR);
        };
        self.may_delete(self.inode(r.parent()), self.inode(d))?;
        if self.kind(d) == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let lower_has = self.lower_has(r.parent(), &name);
        if !d.in_upper {
            self.note_index_name_gone(d);
        }
        let parent = self.copy_up_dirs(&mut r.dirs)?;
        self.remove_name(parent, &name, lower_has)
    }

    /// `rmdir`.
    pub(crate) fn rmdir(&mut self, path: &str) -> Result<(), Errno> {
        if path::components(path).last() == Some(".") {
            return Err(Errno::EINVAL);
        }
        let mut r = self.resolve(path, false)?;
        let d = r.existing()?;
        let Some(name) = r.name.clone() else {
            return Err(Errno::EBUSY);
        };
        self.may_delete(self.inode(r.parent()), self.inode(d))?;
        if self.kind(d) != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if !self.is_empty_dir(d) {
            return Err(Errno::ENOTEMPTY);
        }
        let lower_has = self.lower_has(r.parent(), &name);
        let parent = self.copy_up_dirs(&mut r.dirs)?;
        let whiteouts_inside = d.lower.is_some()
            && d.upper
                .and_then(|u| self.upper.get(u).children())
                .is_some_and(|c| !c.is_empty());
        if whiteouts_inside {
            // `ovl_remove_and_whiteout` → `ovl_clear_empty`: an empty opaque directory is
            // made in the work directory and renamed over the upper one, whose whiteouts go
            // with it: an inode and a block while both exist (ENOSPC without them: `fuzz
            // --ext4 4M:96`, overlay2 seeds 11, 13, 16, 17).
            self.need_room(1, self.space.map_or(0, |b| b.fs.dir_blocks()))?;
        }
        self.remove_name(parent, &name, lower_has)
    }

    /// `link`: copies the source up (metadata may do) and adds an upper name for it.
    pub(crate) fn link(&mut self, from: &str, to: &str) -> Result<(), Errno> {
        // linkat: the old path is looked up, then the new name is made ready (its own
        // errors first), and only then does vfs_link refuse a directory.
        let rf = self.resolve(from, false)?;
        let src = rf.existing()?;
        let rt = self.resolve(to, false)?;
        if rt.target.is_some() || rt.name.is_none() {
            return Err(Errno::EEXIST);
        }
        if rt.trailing_slash {
            return Err(Errno::ENOENT);
        }
        // do_linkat: `may_linkat` (protected hardlinks), then vfs_link: `may_create`.
        self.may_link_source(self.inode(src))?;
        self.may_create(self.inode(rt.parent()))?;
        if self.kind(src) == Kind::Dir {
            return Err(Errno::EPERM);
        }
        let from_name = rf.name.clone().expect("non-dir has a name");
        let mut dirs = rf.dirs;
        let (_, src) = self.copy_up_path(&mut dirs, &from_name, src, CopyUp::Meta)?;
        let ino = src.upper.expect("copied up");
        let (parent, name) = self.new_name_parent(to)?;
        if self.upper.get(ino).origin.is_some() {
            self.upper.get_mut(parent).impure = true;
        }
        self.add_name(parent, &name, ino);
        Ok(())
    }

    /// `rename`, with the checks in the kernel's order: same name, subtree traps, type
    /// mismatch, the driver's directory policy (EXDEV), a non-empty target.
    pub(crate) fn rename(&mut self, from: &str, to: &str) -> Result<(), Errno> {
        // renameat2 resolves both parents before it looks at either last name.
        let rf = self.resolve(from, false)?;
        let rt = self.resolve(to, false)?;
        let from_name = rf.name.clone().ok_or(Errno::EBUSY)?;
        let to_name = rt.name.clone().ok_or(Errno::EBUSY)?;
        let src = rf.existing()?;
        let (pf, pt) = (rf.path(), rt.path());
        if pf == pt {
            return Ok(());
        }
        let src_is_dir = self.kind(src) == Kind::Dir;
        if src_is_dir && path::is_below(&pt, &pf) {
            return Err(Errno::EINVAL);
        }
        if path::is_below(&pf, &pt) {
            return Err(Errno::ENOTEMPTY);
        }
        if let Some(t) = rt.target {
            if same_inode(self, src, t) {
                return Ok(());
            }
        } else if rt.trailing_slash && !src_is_dir {
            return Err(Errno::ENOTDIR);
        }
        // vfs_rename: `may_delete` of the source, `may_create` or `may_delete` at the
        // target, and write on a directory that changes parent (its `..`).
        self.may_delete(self.inode(rf.parent()), self.inode(src))?;
        match rt.target {
            Some(t) => self.may_delete(self.inode(rt.parent()), self.inode(t))?,
            None => self.may_create(self.inode(rt.parent()))?,
        }
        if src_is_dir && path::parent(&pf) != path::parent(&pt) {
            self.permission(self.inode(src), crate::perm::MAY_WRITE)?;
        }
        if let Some(t) = rt.target {
            let t_is_dir = self.kind(t) == Kind::Dir;
            if src_is_dir && !t_is_dir {
                return Err(Errno::ENOTDIR);
            }
            if !src_is_dir && t_is_dir {
                return Err(Errno::EISDIR);
            }
        }
        if src_is_dir {
            if let Some(l) = src.lower {
                let exdev = match self.policy.dir_rename {
                    DirRename::ExdevIfLower => true,
                    DirRename::ExdevIfLowerChildren => self
                        .lower
                        .node(l)
                        .children
                        .as_ref()
                        .is_some_and(|c| !c.is_empty()),
                    DirRename::Redirect => false,
                };
                if exdev {
                    return Err(Errno::EXDEV);
                }
            }
        }
        if let Some(t) = rt.target {
            if self.kind(t) == Kind::Dir && !self.is_empty_dir(t) {
                let redirect_first = t.lower.is_none()
                    && src_is_dir
                    && src.lower.is_some()
                    && self.policy.dir_rename == DirRename::Redirect;
                if redirect_first {
                    // ovl_rename copies the source up and writes its redirect
                    // (ovl_set_redirect) before the upper filesystem's rename finds the
                    // pure upper target not empty: the failed rename leaves the redirect
                    // (found by `fuzz --overlay redirect_dir=on`, seed 2).
                    let mut dirs = rf.dirs.clone();
                    let (from_parent, moved) =
                        self.copy_up_path(&mut dirs, &from_name, src, CopyUp::Meta)?;
                    let to_parent = rt.parent().upper.expect("a pure upper target's parent");
                    let moved = moved.upper.expect("copied up");
                    self.set_rename_redirect(&dirs, &from_name, moved, from_parent == to_parent);
                    return Err(Errno::ENOTEMPTY);
                }
                if t.lower.is_none() && src_is_dir && src.lower.is_none() && src.in_upper {
                    // overlayfs leaves the emptiness of a pure upper target to the upper
                    // filesystem, after it has already marked the moved directory opaque
                    // (ovl_rename): the failed rename leaves that mark (seen here).
                    let opaque_mark = self.policy.driver.is_overlayfs()
                        && rt.parent().lower.is_some()
                        && !self.inode(src).is_opaque();
                    if opaque_mark {
                        let ino = src.upper.expect("in upper");
                        let v = self.upper.get(ino).version;
                        let i = self.upper.get_mut(ino);
                        if let Body::Dir { opaque, .. } = &mut i.body {
                            *opaque = true;
                        }
                        i.version = v;
                    }
                }
                return Err(Errno::ENOTEMPTY);
            }
        }

        // Checks done; from here on only the source's copy-up can fail (ENOSPC), first, as
        // `ovl_rename` copies it up before anything else.
        let from_lower_has = self.lower_has(rf.parent(), &from_name);
        let to_lower_has = self.lower_has(rt.parent(), &to_name);
        let to_parent_merged = rt.parent().lower.is_some();
        let src_merged = src_is_dir && src.lower.is_some();
        let mut dirs = rf.dirs;
        let (from_parent, src) = self.copy_up_path(&mut dirs, &from_name, src, CopyUp::Meta)?;
        let mut rt = self.resolve(to, false).expect("resolved before");
        let to_parent = self.copy_up_dirs(&mut rt.dirs)?;
        let moved = src.upper.expect("copied up");
        let target_whiteout = self
            .upper
            .child(to_parent, &to_name)
            .filter(|&w| self.upper.get(w).is_whiteout());
        if target_whiteout.is_some() && from_lower_has {
            // Onto a whiteout, overlayfs renames with RENAME_EXCHANGE: the whiteout that
            // was there (the shared one, if the kernel made it) moves to the old name.
            self.upper
                .exchange(from_parent, &from_name, to_parent, &to_name);
        } else {
            if from_lower_has {
                // `ext4_rename` makes the whiteout's inode before it moves anything.
                self.take_inode()?;
            }
            self.upper
                .move_entry(from_parent, &from_name, to_parent, &to_name);
            if from_lower_has {
                // rename(RENAME_WHITEOUT): the upper filesystem makes this whiteout itself,
                // not as a link of the shared one.
                let wh = self.upper.alloc(new_inode(0, Body::Whiteout));
                self.upper.attach(from_parent, &from_name, wh);
                self.own_whiteouts.insert(wh);
            }
        }
        let moved_origin = self.upper.get(moved).origin.is_some() || src_merged;
        if from_parent != to_parent && moved_origin {
            let v = self.upper.get(to_parent).version;
            let p = self.upper.get_mut(to_parent);
            p.impure = true;
            p.version = v + 1;
        }
        let same_parent = from_parent == to_parent;
        if src_merged && self.policy.dir_rename == DirRename::Redirect {
            self.set_rename_redirect(&dirs, &from_name, moved, same_parent);
        } else if let Body::Dir { opaque, .. } = &mut self.upper.get_mut(moved).body {
            if self.policy.driver.is_overlayfs() {
                // overlayfs marks a pure upper directory opaque when it moves into a merged
                // directory (ovl_rename), so nothing of the image shows through it later.
                if to_parent_merged && !src_merged {
                    *opaque = true;
                }
            } else if to_lower_has {
                // A directory that never had lower contents must not merge with what the
                // image has at its new name.
                *opaque = true;
            }
        }
        Ok(())
    }
}

impl Container {
    /// redirect_dir=on: the moved directory points back at its lower origin
    /// (`ovl_set_redirect`): a redirect it has is kept when it moves within its parent or is
    /// absolute; else a bare name within the parent, or an absolute path built by
    /// `ovl_get_redirect` from the lower names of the directory and its ancestors. `dirs`
    /// are the source's ancestors, `moved` its upper inode.
    fn set_rename_redirect(
        &mut self,
        dirs: &[(String, Dentry)],
        from_name: &str,
        moved: Ino,
        same_parent: bool,
    ) {
        let abs = (!same_parent).then(|| self.absolute_redirect(dirs, from_name, moved));
        // An xattr changes ctime, not mtime: Docker's walker sees the same directory.
        let version = self.upper.get(moved).version;
        let inode = self.upper.get_mut(moved);
        inode.version = version;
        if let Body::Dir { redirect, .. } = &mut inode.body {
            let keep = redirect
                .as_ref()
                .is_some_and(|r| same_parent || r.starts_with('/'));
            if !keep {
                *redirect = Some(abs.unwrap_or_else(|| from_name.to_string()));
            }
        }
    }

    /// `ovl_get_redirect(dentry, abs_redirect = true)` for a directory about to move to
    /// another parent: from the directory up, each component is the directory's own
    /// redirect if it has one (a relative one is the name it had in its lower parent), else
    /// its name; an absolute redirect ends the walk. So the path names the directory's lower
    /// origin, not the merged path it is seen at (`/a/dir104/pop`, not
    /// `/a/empty104/dir104/pop`, after `dir104` moved into `empty104`).
    fn absolute_redirect(&self, dirs: &[(String, Dentry)], name: &str, moved: Ino) -> String {
        let own = |ino: Option<Ino>| match ino.map(|i| &self.upper.get(i).body) {
            Some(Body::Dir {
                redirect: Some(r), ..
            }) => Some(r.clone()),
            _ => None,
        };
        let mut parts: Vec<String> = vec![own(Some(moved)).unwrap_or_else(|| name.to_string())];
        if !parts[0].starts_with('/') {
            for (n, d) in dirs.iter().skip(1).rev() {
                let c = own(d.upper).unwrap_or_else(|| n.clone());
                let abs = c.starts_with('/');
                parts.push(c);
                if abs {
                    break;
                }
            }
        }
        parts.reverse();
        let joined = parts.join("/");
        if joined.starts_with('/') {
            joined
        } else {
            format!("/{joined}")
        }
    }
}

/// Whether two dentries show the same inode (rename between hard links is a no-op). Two
/// names of one lower inode are one overlay inode only with index=on: without it the
/// rename really happens (seen here).
pub(crate) fn same_inode(c: &Container, a: Dentry, b: Dentry) -> bool {
    match (a.upper, b.upper) {
        (Some(x), Some(y)) => x == y,
        (None, None) if c.policy.keep_hard_links || c.policy.flat => {
            a.lower.zip(b.lower).is_some_and(|(x, y)| {
                let (nx, ny) = (c.lower.node(x), c.lower.node(y));
                (nx.layer, nx.ino) == (ny.layer, ny.ino)
            })
        }
        _ => false,
    }
}
