//! Docker's change list (`docker diff`) and `commit`'s new layer.
//!
//! Union drivers walk the writable layer (moby `archive.OverlayChanges` / aufs `Changes`):
//! a whiteout is `D`; an opaque directory that an image layer has is `D` too (Docker's
//! overlay walker reports it so); an entry an image layer has is `C` (a directory only when
//! its own metadata or entries changed); anything else `A`; the parent of an `A` or `D`
//! is `C`. devicemapper compares the container's filesystem with the image's (moby
//! `archive.ChangesDirs`): added subtrees are `A` throughout, a removed subtree is one `D`,
//! and every directory above a change is `C`.

use crate::container::Container;
use crate::lower::Layer;
use crate::step::{Change, ChangeKind};
use crate::tree::{empty_dir, new_inode, Body, Ino, Inode, Tree, ROOT};
use std::collections::{BTreeMap, BTreeSet};

impl Container {
    /// Docker's change list, sorted by path; `Err` (why) where it depends on what the
    /// model does not follow.
    pub fn changes(&self, image: &Tree) -> Result<Vec<Change>, String> {
        let mut out = if self.policy.flat {
            let mut out = Vec::new();
            diff_trees(image, ROOT, &self.upper, ROOT, "/", &mut out);
            out
        } else {
            self.union_changes()?
        };
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Docker 20.10's `docker diff` of a container on an init layer, for overlay and overlay2:
    /// moby's naive walker (`graphdriver.NaiveDiffDriver.Changes` → `archive.ChangesDirs`;
    /// overlay2's `Changes` calls it always since 20.10) over the container's merged view
    /// against the init layer's (`init`). An entry is changed when its type or mode
    /// differs, or for a non-directory its size or modification time (`statDifferent`);
    /// xattrs other than `security.capability`, which the model has not, are not looked
    /// at. A new entry is added with all below it, a gone one deleted alone, and a
    /// directory with changes below it is changed itself (`addChanges`). Sorted by path.
    pub fn naive_changes(&self, init: &Container) -> Vec<Change> {
        let mut out = Vec::new();
        naive_walk(init, Some(init.root()), self, self.root(), "/", &mut out);
        out.sort();
        out
    }

    fn in_any_layer(&self, path: &str) -> bool {
        if self.policy.farm_links {
            // overlay: the one lower directory is the image's flattened root.
            return self.lower.lookup(path).is_some();
        }
        // Docker's walker stats the path in each layer directory: a whiteout there is an
        // entry too.
        self.lower
            .layers()
            .iter()
            .any(|l| l.tree.lookup(path).is_some())
    }

    /// Whether Docker's walker sees a different size for upper directory `path` than for
    /// the same directory in the first lower layer that has it (moby compares size, mode
    /// and mtime; copy-up keeps the other two). ext4 sizes a directory in blocks (one for
    /// these); tmpfs at 20 bytes an entry; xfs by its short-form entries while they fit
    /// the inode, else in blocks ([`crate::space`]'s `xfs`).
    fn dir_size_differs(&self, path: &str, upper: &crate::tree::Inode) -> Result<bool, String> {
        match self.policy.backing {
            crate::params::Backing::Ext4 => Ok(false),
            crate::params::Backing::Xfs => self.xfs_dir_size_differs(path, upper),
            crate::params::Backing::Tmpfs => Ok(self.tmpfs_dir_size_differs(path, upper)),
        }
    }

    /// [`Container::dir_size_differs`] on xfs.
    fn xfs_dir_size_differs(&self, path: &str, upper: &crate::tree::Inode) -> Result<bool, String> {
        let size = |names: Vec<usize>, i: &crate::tree::Inode| {
            crate::space::xfs::dir_size(&names, &crate::layout::xfs_dir_xattrs(i))
                .map_err(|why| format!("the size Docker compares of directory `{path}`: {why}"))
        };
        let lower = if self.policy.farm_links {
            self.lower.lookup(path).map(|n| {
                let names = name_lens(self.lower.node(n).children.iter().flat_map(|c| c.keys()));
                size(names, self.lower.inode(n))
            })
        } else {
            self.lower.layers().iter().rev().find_map(|l| {
                let i = l.tree.get(l.tree.lookup(path)?);
                Some(size(
                    name_lens(i.children().into_iter().flat_map(|c| c.keys())),
                    i,
                ))
            })
        };
        let Some(lower) = lower else {
            return Ok(false);
        };
        Ok(size(
            name_lens(upper.children().into_iter().flat_map(|c| c.keys())),
            upper,
        )? != lower?)
    }

    /// [`Container::dir_size_differs`] on tmpfs.
    fn tmpfs_dir_size_differs(&self, path: &str, upper: &crate::tree::Inode) -> bool {
        let entries = |i: &crate::tree::Inode| {
            i.children().map_or(0, |c| c.len())
                + usize::from(
                    i.is_opaque() && self.policy.driver == crate::params::DriverKind::Aufs,
                )
        };
        let lower = if self.policy.farm_links {
            // overlay: one lower directory, the image's flattened root.
            self.lower
                .lookup(path)
                .and_then(|n| self.lower.node(n).children.as_ref().map(|c| c.len()))
        } else {
            self.lower.layers().iter().rev().find_map(|l| {
                let i = l.tree.lookup(path)?;
                Some(entries(l.tree.get(i)))
            })
        };
        lower.is_some_and(|n| n != entries(upper))
    }

    /// Whether the entry Docker's walker compares an upper directory with — `path` in the
    /// topmost lower layer that has it, a whiteout included — is a directory: a directory
    /// renamed onto a whited-out name (redirect_dir=on) is compared with a character device
    /// and shows as changed (found by `fuzz --overlay redirect_dir=on`, seed 9).
    fn top_lower_is_dir(&self, path: &str) -> bool {
        if self.policy.farm_links {
            return self
                .lower
                .lookup(path)
                .is_some_and(|n| self.lower.inode(n).is_dir());
        }
        self.lower
            .layers()
            .iter()
            .rev()
            .find_map(|l| l.tree.lookup(path).map(|i| l.tree.get(i).is_dir()))
            .unwrap_or(false)
    }

    fn union_changes(&self) -> Result<Vec<Change>, String> {
        let mut out = Vec::new();
        let mut changed_dirs = BTreeSet::new();
        for (path, ino) in self.upper.paths() {
            let inode = self.upper.get(ino);
            let kind = if inode.is_whiteout()
                || (inode.is_opaque()
                    && self.in_any_layer(&path)
                    && self.policy.driver.is_overlayfs())
            {
                ChangeKind::D
            } else if self.in_any_layer(&path) {
                let lower = self.lower.lookup(&path).map(|l| self.lower.inode(l));
                let same_mode = lower.is_none_or(|l| l.mode == inode.mode);
                // moby `changes`: a directory with the lower's size, mode and modification
                // time is left out, whatever its owner (a `utimes` of it is a change, a
                // `chown` not; fuzz --users seeds 2 and 5).
                let same_mtime = lower.is_none_or(|l| l.mtime == inode.mtime);
                if inode.is_dir()
                    && inode.version == 0
                    && same_mode
                    && same_mtime
                    && self.top_lower_is_dir(&path)
                    && !self.dir_size_differs(&path, inode)?
                {
                    continue;
                }
                ChangeKind::C
            } else {
                ChangeKind::A
            };
            if inode.is_dir() {
                changed_dirs.insert(path.clone());
            }
            out.push(Change {
                path: path.clone(),
                kind,
            });
            if kind != ChangeKind::C {
                let parent = crate::path::parent(&path).to_string();
                if parent != "/" && changed_dirs.insert(parent.clone()) {
                    out.push(Change {
                        path: parent,
                        kind: ChangeKind::C,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The new image layer `commit` makes: the writable layer as Docker's diff carries it,
    /// with metacopy files given their data and redirected directories made whole.
    pub fn commit_layer(&self, id: &str, image_tree: &Tree) -> Layer {
        let tree = if self.policy.flat {
            diff_as_layer(image_tree, &self.upper)
        } else {
            let mut t = Tree::new();
            let root = self.upper.get(ROOT);
            let r = t.get_mut(ROOT);
            r.mode = root.mode;
            r.xattrs = root.xattrs.clone();
            (r.uid, r.gid) = (root.uid, root.gid);
            let mut links = BTreeMap::new();
            self.copy_layer_dir(self.root(), ROOT, &mut t, &mut links);
            t
        };
        Layer {
            id: id.to_string(),
            parent: self.image.clone(),
            tree,
        }
    }

    fn copy_layer_dir(
        &self,
        d: crate::container::Dentry,
        to: Ino,
        out: &mut Tree,
        links: &mut BTreeMap<Ino, Ino>,
    ) {
        let Some(u) = d.upper else { return };
        let Some(children) = self.upper.get(u).children() else {
            return;
        };
        for (name, &ino) in children {
            let inode = self.upper.get(ino);
            if name.starts_with(".wh.") {
                // The diff travels as a tar: a file named `.wh.<x>` in it *is* a whiteout
                // of `<x>` to the layer applier (moby UnpackLayer, AUFS6).
                apply_wh_name(out, to, name);
                continue;
            }
            if let Some(&done) = links.get(&ino) {
                out.attach(to, name, done);
                continue;
            }
            let body = match &inode.body {
                Body::Dir {
                    opaque, redirect, ..
                } => Body::Dir {
                    children: BTreeMap::new(),
                    opaque: *opaque || redirect.is_some(),
                    redirect: None,
                },
                Body::File { data, .. } => Body::File {
                    data: data.clone(),
                    metacopy: false,
                },
                other => other.clone(),
            };
            let new = out.alloc(Inode {
                body,
                origin: None,
                impure: false,
                pinned: false,
                version: 0,
                ..inode.clone()
            });
            links.insert(ino, new);
            out.attach(to, name, new);
            if inode.is_dir() {
                let child = self.child(d, name).expect("upper dir is visible");
                if matches!(
                    &inode.body,
                    Body::Dir {
                        redirect: Some(_),
                        ..
                    }
                ) {
                    // A redirected directory's lower contents travel with it.
                    self.copy_merged_dir(child, new, out);
                } else {
                    self.copy_layer_dir(child, new, out, links);
                }
            }
        }
    }

    fn copy_merged_dir(&self, d: crate::container::Dentry, to: Ino, out: &mut Tree) {
        for (name, c) in self.list(d) {
            let inode = self.inode(c).clone();
            let body = match &inode.body {
                Body::Dir { .. } => empty_dir(false),
                other => other.clone(),
            };
            let new = out.alloc(Inode {
                body,
                origin: None,
                impure: false,
                pinned: false,
                version: 0,
                ..inode
            });
            out.attach(to, &name, new);
            if out.get(new).is_dir() {
                self.copy_merged_dir(c, new, out);
            }
        }
    }
}

/// moby `FileInfo.addChanges` for the merged directory `nd` of `new` at `path`, against
/// `od` of `old` (`None`: none there).
fn naive_walk(
    old: &Container,
    od: Option<crate::container::Dentry>,
    new: &Container,
    nd: crate::container::Dentry,
    path: &str,
    out: &mut Vec<Change>,
) {
    use crate::step::Kind;
    let is_dir = new.kind(nd) == Kind::Dir;
    let olds = match od {
        Some(o) if is_dir && old.kind(o) == Kind::Dir => old.list(o),
        _ => BTreeMap::new(),
    };
    let mut recorded = BTreeSet::new();
    for (name, nc) in new.list(nd) {
        let p = crate::path::join(path, &name);
        let oc = olds.get(&name).copied();
        match oc {
            Some(oc) if stat_different(old.inode(oc), new.inode(nc)) => {
                out.push(Change {
                    path: p.clone(),
                    kind: ChangeKind::C,
                });
                recorded.insert(p.clone());
            }
            Some(_) => {}
            None => {
                out.push(Change {
                    path: p.clone(),
                    kind: ChangeKind::A,
                });
                recorded.insert(p.clone());
            }
        }
        if new.kind(nc) == Kind::Dir {
            naive_walk_child(old, oc, new, nc, &p, recorded.contains(&p), out);
        }
    }
    let new_names = new.list(nd);
    for name in olds.keys().filter(|n| !new_names.contains_key(*n)) {
        out.push(Change {
            path: crate::path::join(path, name),
            kind: ChangeKind::D,
        });
    }
}

/// A directory's own walk: its changes, and itself as changed when something below it
/// changed and it was not recorded already (`added`), the root excepted.
fn naive_walk_child(
    old: &Container,
    od: Option<crate::container::Dentry>,
    new: &Container,
    nd: crate::container::Dentry,
    path: &str,
    recorded: bool,
    out: &mut Vec<Change>,
) {
    let at_entry = out.len();
    naive_walk(old, od, new, nd, path, out);
    if out.len() > at_entry && !recorded {
        out.insert(
            at_entry,
            Change {
                path: path.to_string(),
                kind: ChangeKind::C,
            },
        );
    }
}

/// moby `statDifferent`: type, mode and owner, and for a non-directory size and
/// modification time (device numbers, which the model does not vary, left out).
fn stat_different(old: &Inode, new: &Inode) -> bool {
    let size = |i: &Inode| match &i.body {
        Body::File { data, .. } => data.len(),
        Body::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    old.kind() != new.kind()
        || old.mode != new.mode
        || (old.uid, old.gid) != (new.uid, new.gid)
        || (!new.is_dir() && (size(old) != size(new) || old.mtime != new.mtime))
}

/// moby's `ChangesDirs` over two whole filesystems (devicemapper).
fn diff_trees(old: &Tree, od: Ino, new: &Tree, nd: Ino, path: &str, out: &mut Vec<Change>) {
    let at_entry = out.len();
    let empty = BTreeMap::new();
    let oc = old.get(od).children().unwrap_or(&empty);
    let nc = new.get(nd).children().unwrap_or(&empty);
    for (name, &n) in nc {
        let p = crate::path::join(path, name);
        match oc.get(name) {
            Some(&o) => {
                let (oi, ni) = (old.get(o), new.get(n));
                if stat_different(oi, ni) {
                    out.push(Change {
                        path: p.clone(),
                        kind: ChangeKind::C,
                    });
                }
                if ni.is_dir() && oi.is_dir() {
                    diff_trees(old, o, new, n, &p, out);
                } else if ni.is_dir() {
                    add_all(new, n, &p, out);
                }
            }
            None => {
                out.push(Change {
                    path: p.clone(),
                    kind: ChangeKind::A,
                });
                add_all(new, n, &p, out);
            }
        }
    }
    for name in oc.keys().filter(|n| !nc.contains_key(*n)) {
        out.push(Change {
            path: crate::path::join(path, name),
            kind: ChangeKind::D,
        });
    }
    if out.len() > at_entry && path != "/" && !out.iter().any(|c| c.path == path) {
        out.push(Change {
            path: path.to_string(),
            kind: ChangeKind::C,
        });
    }
}

fn add_all(t: &Tree, dir: Ino, path: &str, out: &mut Vec<Change>) {
    let mut v = Vec::new();
    t.walk(dir, path, &mut v);
    out.extend(v.into_iter().map(|(p, _)| Change {
        path: p,
        kind: ChangeKind::A,
    }));
}

/// A devicemapper commit as a diff layer: the changed and added entries, deletions as
/// whiteouts (what Docker's diff tar of the container carries).
fn diff_as_layer(image: &Tree, fs: &Tree) -> Tree {
    let mut changes = Vec::new();
    diff_trees(image, ROOT, fs, ROOT, "/", &mut changes);
    changes.sort();
    let mut out = Tree::new();
    let mut links: BTreeMap<Ino, Ino> = BTreeMap::new();
    for ch in changes {
        let parent = ensure_dirs(&mut out, fs, crate::path::parent(&ch.path));
        let name = ch.path.rsplit('/').next().expect("non-root").to_string();
        if name.starts_with(".wh.") {
            if ch.kind != ChangeKind::D {
                apply_wh_name(&mut out, parent, &name);
            }
            continue;
        }
        let new = match ch.kind {
            ChangeKind::D => out.alloc(new_inode(0, Body::Whiteout)),
            _ => {
                let src_ino = fs.lookup(&ch.path).expect("changed path exists");
                if let Some(&done) = links.get(&src_ino) {
                    done
                } else {
                    let src = fs.get(src_ino);
                    let body = match &src.body {
                        Body::Dir { .. } => empty_dir(false),
                        other => other.clone(),
                    };
                    let n = out.alloc(Inode {
                        body,
                        origin: None,
                        impure: false,
                        pinned: false,
                        version: 0,
                        ..src.clone()
                    });
                    links.insert(src_ino, n);
                    n
                }
            }
        };
        // A later entry replaces an earlier one of the same name, as in a tar.
        if out.child(parent, &name) != Some(new) {
            out.attach(parent, &name, new);
        }
    }
    out
}

fn ensure_dirs(out: &mut Tree, fs: &Tree, path: &str) -> Ino {
    let mut cur = ROOT;
    let mut p = String::from("/");
    for name in crate::path::components(path) {
        p = crate::path::join(&p, name);
        cur = match out.child(cur, name) {
            Some(i) if out.get(i).is_dir() => i,
            // Missing, or a whiteout a `.wh.` name made: a later tar entry below it makes
            // the directory (the applier replaces what is there).
            _ => {
                let mode = fs.lookup(&p).map_or(0o755, |i| fs.get(i).mode);
                let n = out.alloc(new_inode(mode, empty_dir(false)));
                out.attach(cur, name, n);
                n
            }
        };
    }
    cur
}

/// What the layer applier makes of a tar entry named `.wh.*` in directory `dir`.
fn apply_wh_name(out: &mut Tree, dir: Ino, name: &str) {
    if name == ".wh..wh..opq" {
        if let Body::Dir { opaque, .. } = &mut out.get_mut(dir).body {
            *opaque = true;
        }
    } else if !name.starts_with(".wh..wh.") {
        let target = &name[".wh.".len()..];
        if !target.is_empty() {
            let wh = out.alloc(new_inode(0, Body::Whiteout));
            out.attach(dir, target, wh);
        }
    }
}

/// The lengths of a directory's names.
fn name_lens<'a>(names: impl Iterator<Item = &'a String>) -> Vec<usize> {
    names.map(String::len).collect()
}
