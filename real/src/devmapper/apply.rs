//! Applying an image layer to a devicemapper device's root, as Docker's applier unpacks a
//! layer tar onto a snapshot of the parent: the same semantics as the overlay driver's
//! layer application (`layer::write_entries` into a staging directory, then
//! `layer::apply_diff`: whiteouts delete, opaque directories replace, files and symlinks
//! replace, directories listed keep their entries and take the listed mode and `user.*`
//! xattrs, implied parents count as listed with mode 0755), with the staged diff held in
//! memory instead of on disk: the backing tmpfs of kernels before 6.6 (the VM's 6.1) has no
//! `user.*` xattrs to stage them on, and staging on the device itself would write blocks
//! Docker's applier does not write.

use crate::confined::Confined;
use layerspec_model::{Content, EntryKind, LayerSpec};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

type Xattrs = BTreeMap<String, Vec<u8>>;

/// One staged entry.
#[derive(Clone, Debug)]
enum Node {
    Dir {
        mode: u32,
        xattrs: Xattrs,
        opaque: bool,
        children: BTreeMap<String, Node>,
        owner: (u32, u32),
    },
    /// A file; `inode` is shared by the names of one file (hard links).
    File {
        mode: u32,
        xattrs: Xattrs,
        data: Content,
        inode: usize,
        owner: (u32, u32),
    },
    /// A symlink; `inode` as for files (Docker's tar keeps a symlink's hard links, DOCK6).
    Symlink {
        target: String,
        inode: usize,
        owner: (u32, u32),
    },
    Whiteout,
}

fn exists() -> io::Error {
    io::Error::from_raw_os_error(libc::EEXIST)
}

fn new_dir(mode: u32) -> Node {
    Node::Dir {
        mode,
        xattrs: Xattrs::new(),
        opaque: false,
        children: BTreeMap::new(),
        owner: (0, 0),
    }
}

/// The directory `comps` names below `root`, made (0755) where missing.
fn dir_at<'a>(root: &'a mut Node, comps: &[&str]) -> io::Result<&'a mut Node> {
    let mut cur = root;
    for c in comps {
        let Node::Dir { children, .. } = cur else {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        };
        cur = children
            .entry(c.to_string())
            .or_insert_with(|| new_dir(0o755));
    }
    match cur {
        Node::Dir { .. } => Ok(cur),
        _ => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
    }
}

fn lookup<'a>(root: &'a Node, path: &str) -> Option<&'a Node> {
    let mut cur = root;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let Node::Dir { children, .. } = cur else {
            return None;
        };
        cur = children.get(c)?;
    }
    Some(cur)
}

/// The layer's entries staged as `layer::write_entries` stages them.
fn stage(spec: &LayerSpec) -> io::Result<Node> {
    let mut root = new_dir(0o755);
    let mut inodes = 0;
    for e in &spec.entries {
        let comps: Vec<&str> = e.path.split('/').filter(|c| !c.is_empty()).collect();
        let Some((name, parents)) = comps.split_last() else {
            if let Node::Dir {
                mode,
                xattrs,
                owner,
                ..
            } = &mut root
            {
                if let Some(m) = e.mode {
                    *mode = m;
                }
                xattrs.extend(e.xattrs.clone());
                *owner = e.owner.unwrap_or((0, 0));
            }
            continue;
        };
        let node = match &e.kind {
            EntryKind::File(c) => {
                inodes += 1;
                Node::File {
                    mode: e.mode.unwrap_or(0o644),
                    xattrs: e.xattrs.clone(),
                    data: c.clone(),
                    inode: inodes,
                    owner: e.owner.unwrap_or((0, 0)),
                }
            }
            EntryKind::Dir { opaque } => {
                let Node::Dir { children, .. } = dir_at(&mut root, parents)? else {
                    unreachable!("dir_at returns a directory");
                };
                match children.get_mut(*name) {
                    Some(Node::Dir {
                        mode,
                        xattrs,
                        opaque: o,
                        owner,
                        ..
                    }) => {
                        *mode = e.mode.unwrap_or(0o755);
                        xattrs.extend(e.xattrs.clone());
                        *o |= *opaque;
                        *owner = e.owner.unwrap_or((0, 0));
                    }
                    Some(_) => return Err(exists()),
                    None => {
                        children.insert(
                            name.to_string(),
                            Node::Dir {
                                mode: e.mode.unwrap_or(0o755),
                                xattrs: e.xattrs.clone(),
                                opaque: *opaque,
                                children: BTreeMap::new(),
                                owner: e.owner.unwrap_or((0, 0)),
                            },
                        );
                    }
                }
                continue;
            }
            EntryKind::Symlink(t) => {
                inodes += 1;
                Node::Symlink {
                    target: t.clone(),
                    inode: inodes,
                    owner: e.owner.unwrap_or((0, 0)),
                }
            }
            EntryKind::HardLink(to) => match lookup(&root, to) {
                Some(n @ (Node::File { .. } | Node::Symlink { .. })) => n.clone(),
                Some(_) => return Err(io::Error::from_raw_os_error(libc::EPERM)),
                None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
            },
            EntryKind::Whiteout => Node::Whiteout,
        };
        let Node::Dir { children, .. } = dir_at(&mut root, parents)? else {
            unreachable!("dir_at returns a directory");
        };
        if children.contains_key(*name) {
            return Err(exists());
        }
        children.insert(name.to_string(), node);
    }
    Ok(root)
}

fn set_xattrs(c: &mut Confined, p: &Path, xattrs: &Xattrs) -> io::Result<()> {
    for (k, v) in xattrs {
        if k.starts_with("user.") {
            c.set_xattr(p, k, v)?;
        }
    }
    Ok(())
}

fn remove_any(c: &mut Confined, p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(_) => c.remove(p),
    }
}

fn apply_dir(
    log: &mut Confined,
    children: &BTreeMap<String, Node>,
    root: &Path,
    seen: &mut BTreeMap<usize, PathBuf>,
) -> io::Result<()> {
    for (name, node) in children {
        let dst = root.join(name);
        match node {
            Node::Whiteout => remove_any(log, &dst)?,
            Node::Dir {
                mode,
                xattrs,
                opaque,
                children,
                owner,
            } => {
                let keep = !opaque && fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir());
                if keep {
                    log.set_mode(&dst, *mode)?;
                } else {
                    remove_any(log, &dst)?;
                    log.mkdir(&dst, *mode)?;
                }
                crate::layer::give_owner(log, &dst, *owner, Some(*mode))?;
                set_xattrs(log, &dst, xattrs)?;
                apply_dir(log, children, &dst, seen)?;
            }
            Node::Symlink {
                target,
                inode,
                owner,
            } => {
                remove_any(log, &dst)?;
                match seen.get(inode) {
                    Some(first) => log.hard_link(first, &dst)?,
                    None => {
                        log.symlink(Path::new(target), &dst)?;
                        crate::layer::give_owner(log, &dst, *owner, None)?;
                        seen.insert(*inode, dst.clone());
                    }
                }
            }
            Node::File {
                mode,
                xattrs,
                data,
                inode,
                owner,
            } => {
                remove_any(log, &dst)?;
                match seen.get(inode) {
                    Some(first) => log.hard_link(first, &dst)?,
                    None => {
                        log.write_content(&dst, *mode, data)?;
                        crate::layer::give_owner(log, &dst, *owner, Some(*mode))?;
                        set_xattrs(log, &dst, xattrs)?;
                        seen.insert(*inode, dst.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Applies `spec` onto `root` (the layer's `rootfs/`, holding its parent's files).
pub(crate) fn apply_layer(c: &mut Confined, spec: &LayerSpec, root: &Path) -> io::Result<()> {
    layerspec_model::validate_layer(spec)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let Node::Dir {
        mode,
        xattrs,
        children,
        owner,
        ..
    } = stage(spec)?
    else {
        unreachable!("the staged root is a directory");
    };
    c.set_mode(root, mode)?;
    crate::layer::give_owner(c, root, owner, Some(mode))?;
    set_xattrs(c, root, &xattrs)?;
    apply_dir(c, &children, root, &mut BTreeMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerspec_model::{Content, Entry};

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: None,
            xattrs: BTreeMap::new(),
            owner: None,
        }
    }

    #[test]
    fn staging_follows_write_entries() {
        let spec = LayerSpec {
            id: "l".into(),
            parent: None,
            entries: vec![
                entry("/a/f", EntryKind::File(Content::Bytes(b"x".to_vec()))),
                entry("/a/g", EntryKind::HardLink("/a/f".into())),
                entry("/a", EntryKind::Dir { opaque: true }),
                entry("/w", EntryKind::Whiteout),
            ],
        };
        let root = stage(&spec).unwrap();
        let Some(Node::Dir {
            opaque, children, ..
        }) = lookup(&root, "/a")
        else {
            panic!("/a is a directory");
        };
        assert!(opaque, "a later entry for an implied parent marks it");
        let inode = |n: &Node| match n {
            Node::File { inode, .. } => *inode,
            _ => panic!("a file"),
        };
        assert_eq!(inode(&children["f"]), inode(&children["g"]));
        assert!(matches!(lookup(&root, "/w"), Some(Node::Whiteout)));
        let dup = LayerSpec {
            entries: vec![
                entry("/w", EntryKind::Whiteout),
                entry("/w", EntryKind::Whiteout),
            ],
            ..spec
        };
        assert!(
            stage(&dup).is_err(),
            "a name listed twice is EEXIST, as mknod says"
        );
    }
}
