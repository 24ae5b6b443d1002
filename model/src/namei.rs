//! Lookup: one name in a merged directory, and whole paths with symlinks resolved inside
//! the container's root.

use crate::container::{Container, Dentry};
use crate::errno::Errno;
use crate::path::{self, MAX_SYMLINKS};
use crate::step::Kind;
use crate::tree::{Body, Inode};
use std::collections::VecDeque;

/// A resolved path: the chain of directories leading to it and what the last name is.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// `(name, dentry)` from the root (name `""`) to the parent directory of the last name.
    pub dirs: Vec<(String, Dentry)>,
    /// The last name; `None` when the path is `/` itself.
    pub name: Option<String>,
    /// What the last name is, if it exists.
    pub target: Option<Dentry>,
    /// The path as written ended in `/`.
    pub trailing_slash: bool,
}

impl Resolved {
    /// The parent directory's dentry.
    pub fn parent(&self) -> Dentry {
        self.dirs.last().expect("root is always there").1
    }

    /// The canonical path of the last name (after symlink resolution).
    pub fn path(&self) -> String {
        let mut p = String::new();
        for (name, _) in self.dirs.iter().skip(1) {
            p.push('/');
            p.push_str(name);
        }
        match &self.name {
            Some(n) => {
                p.push('/');
                p.push_str(n);
            }
            None if p.is_empty() => p.push('/'),
            None => {}
        }
        p
    }

    /// The existing target or ENOENT.
    pub fn existing(&self) -> Result<Dentry, Errno> {
        self.target.ok_or(Errno::ENOENT)
    }
}

impl Container {
    /// The inode a dentry shows: the upper one if any, else the lower one.
    pub fn inode(&self, d: Dentry) -> &Inode {
        match (d.upper, d.lower) {
            (Some(u), _) => self.upper.get(u),
            (None, Some(l)) => self.lower.inode(l),
            (None, None) => unreachable!("a dentry always has an inode"),
        }
    }

    /// The file type a dentry shows.
    pub fn kind(&self, d: Dentry) -> Kind {
        self.inode(d).kind()
    }

    /// Looks `name` up in the merged directory `dir` (overlayfs `ovl_lookup`): the upper
    /// layer first; a whiteout ends the search; an opaque or non-merging upper entry hides
    /// the lower stack; otherwise the lower stack's merged dentry.
    pub fn child(&self, dir: Dentry, name: &str) -> Option<Dentry> {
        let upper = dir.upper.and_then(|u| self.upper.child(u, name));
        if let Some(ui) = upper {
            let inode = self.upper.get(ui);
            return match &inode.body {
                Body::Whiteout => None,
                Body::Dir {
                    opaque, redirect, ..
                } => {
                    let lower = if *opaque {
                        None
                    } else if let Some(r) = redirect {
                        if r.starts_with('/') {
                            self.lower.lookup(r)
                        } else {
                            dir.lower.and_then(|l| self.lower.child(l, r))
                        }
                    } else {
                        dir.lower.and_then(|l| self.lower.child(l, name))
                    };
                    let lower = lower.filter(|&l| self.lower.inode(l).is_dir());
                    Some(Dentry {
                        upper: Some(ui),
                        lower,
                        in_upper: true,
                    })
                }
                _ => Some(Dentry {
                    upper: Some(ui),
                    lower: None,
                    in_upper: true,
                }),
            };
        }
        let l = dir.lower.and_then(|l| self.lower.child(l, name))?;
        let n = self.lower.node(l);
        let indexed = self.index.get(&(n.layer, n.ino)).map(|e| e.upper);
        Some(Dentry {
            upper: indexed,
            lower: Some(l),
            in_upper: false,
        })
    }

    /// Whether file step `op` only writes, truncates or unlinks a regular file that the
    /// upper layer alone has: no copy-up, no whiteout, no shared (cloned) blocks. Used where
    /// only such steps are followed (a nearly full xfs).
    pub fn touches_only_an_upper_file(&self, op: &crate::step::FileOp) -> bool {
        use crate::step::FileOp;
        let (path, follow) = match op.bare() {
            FileOp::Write { path, .. }
            | FileOp::Append { path, .. }
            | FileOp::Truncate { path, .. } => (path, true),
            FileOp::Unlink { path } => (path, false),
            _ => return false,
        };
        let Ok(r) = self.resolve(path, follow) else {
            return false;
        };
        let (Some(d), Some(name)) = (r.target, r.name.as_deref()) else {
            return false;
        };
        d.in_upper
            && d.lower.is_none()
            && self.kind(d) == Kind::File
            && self.inode(d).origin.is_none()
            && !self.lower_has(r.parent(), name)
    }

    /// Whether the lower stack has `name` in `dir`, whatever the upper layer says: the name
    /// needs a whiteout when it is removed or renamed away.
    pub fn lower_has(&self, dir: Dentry, name: &str) -> bool {
        dir.lower.and_then(|l| self.lower.child(l, name)).is_some()
    }

    /// Resolves `path` inside the container's root. Symlinks in the middle are followed;
    /// the last one only when `follow` (or the path ends in `/`). An absolute target starts
    /// again at the container's `/`, and `..` at `/` stays at `/`: nothing resolves outside.
    pub fn resolve(&self, path: &str, follow: bool) -> Result<Resolved, Errno> {
        path::check_limits(path)?;
        let trailing_slash = path.len() > 1 && path.ends_with('/');
        let mut pending: VecDeque<String> = path::components(path).map(String::from).collect();
        let mut dirs: Vec<(String, Dentry)> = vec![(String::new(), self.root())];
        let mut hops = 0u32;
        let mut last: Option<(String, Option<Dentry>)> = None;
        while let Some(name) = pending.pop_front() {
            if let Some((n, d)) = last.take() {
                // The previous name was not last after all: it must be a directory.
                let d = d.ok_or(Errno::ENOENT)?;
                if self.kind(d) != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                dirs.push((n, d));
            }
            // `may_lookup`: search permission on the directory walked, before the name
            // (root passes: nothing to look up on the common path).
            if self.cred.is_some() {
                let here = dirs.last().expect("root").1;
                self.permission(self.inode(here), crate::perm::MAY_EXEC)?;
            }
            if name == "." {
                continue;
            }
            if name == ".." {
                if dirs.len() > 1 {
                    dirs.pop();
                }
                continue;
            }
            if self.policy.whiteout_names_reserved && name.starts_with(".wh.") {
                return Err(Errno::EPERM);
            }
            let parent = dirs.last().expect("root").1;
            let found = self.child(parent, &name);
            let is_last = pending.is_empty();
            if let Some(d) = found {
                if self.kind(d) == Kind::Symlink && (!is_last || follow || trailing_slash) {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(Errno::ELOOP);
                    }
                    let Body::Symlink(target) = &self.inode(d).body else {
                        unreachable!()
                    };
                    if target.is_empty() {
                        return Err(Errno::ENOENT);
                    }
                    if target.starts_with('/') {
                        dirs.truncate(1);
                    }
                    for c in path::components(target)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                    {
                        pending.push_front(c.to_string());
                    }
                    continue;
                }
            } else if !is_last {
                return Err(Errno::ENOENT);
            }
            last = Some((name, found));
        }
        let (name, target) = match last {
            Some((n, t)) => (Some(n), t),
            None => {
                // The path ended at a directory already on the chain (`/`, `.`, `..`, or a
                // symlink to a directory): its parent becomes the chain's end.
                if dirs.len() == 1 {
                    (None, Some(self.root()))
                } else {
                    let (n, d) = dirs.pop().expect("len > 1");
                    (Some(n), Some(d))
                }
            }
        };
        if trailing_slash {
            if let Some(t) = target {
                if self.kind(t) != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
            }
        }
        Ok(Resolved {
            dirs,
            name,
            target,
            trailing_slash,
        })
    }
}
