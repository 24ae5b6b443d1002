//! devicemapper's change list and commit diff: the container's whole filesystem compared
//! with its parent's (its init device's, else its image's; moby `archive.ChangesDirs`, used
//! through the naive diff driver), as the model's `changes::diff_trees` does it.
//!
//! What counts as changed is moby's `statDifferent` ([`differs`]): another file type,
//! permission bits, owner or device number; for a non-directory also another size or
//! modification time. A layer's files carry one time (the applier's, [`super::apply`]),
//! a commit's the container's; the model tells times apart by its clock
//! (`Inode::mtime`). Two distinct files the kernel stamped within one clock tick would
//! look the same here and different to the model: the model's abstraction of time.

use layerspec_model::{Change, ChangeKind, Content, Entry, EntryKind};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn names(dir: &Path) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// moby `statDifferent` (pkg/archive/changes_unix.go, 20.10): type and permission bits,
/// owner, device number, and for a non-directory its size and modification time (seconds
/// and nanoseconds). xattrs other than `security.capability`, which scenarios cannot set,
/// inode numbers and ctime are not looked at.
fn differs(o: &fs::Metadata, n: &fs::Metadata) -> bool {
    o.mode() != n.mode()
        || o.uid() != n.uid()
        || o.gid() != n.gid()
        || o.rdev() != n.rdev()
        || (!n.is_dir()
            && ((o.mtime(), o.mtime_nsec()) != (n.mtime(), n.mtime_nsec()) || o.size() != n.size()))
}

fn add_all(dir: &Path, path: &str, out: &mut Vec<Change>) -> io::Result<()> {
    for name in names(dir)? {
        let p = join(path, &name);
        out.push(Change {
            path: p.clone(),
            kind: ChangeKind::A,
        });
        let child = dir.join(&name);
        if fs::symlink_metadata(&child)?.is_dir() {
            add_all(&child, &p, out)?;
        }
    }
    Ok(())
}

/// `old` (the image's root; `None`: an empty image) against `new` (the container's).
fn diff_dirs(old: Option<&Path>, new: &Path, path: &str, out: &mut Vec<Change>) -> io::Result<()> {
    let at_entry = out.len();
    let old_names = match old {
        Some(o) => names(o)?,
        None => Vec::new(),
    };
    let new_names = names(new)?;
    for name in &new_names {
        let p = join(path, name);
        let np = new.join(name);
        let n = fs::symlink_metadata(&np)?;
        match old.filter(|_| old_names.contains(name)) {
            Some(o) => {
                let op = o.join(name);
                let om = fs::symlink_metadata(&op)?;
                if differs(&om, &n) {
                    out.push(Change {
                        path: p.clone(),
                        kind: ChangeKind::C,
                    });
                }
                if n.is_dir() && om.is_dir() {
                    diff_dirs(Some(&op), &np, &p, out)?;
                } else if n.is_dir() {
                    add_all(&np, &p, out)?;
                }
            }
            None => {
                out.push(Change {
                    path: p.clone(),
                    kind: ChangeKind::A,
                });
                if n.is_dir() {
                    add_all(&np, &p, out)?;
                }
            }
        }
    }
    for name in old_names.iter().filter(|n| !new_names.contains(n)) {
        out.push(Change {
            path: join(path, name),
            kind: ChangeKind::D,
        });
    }
    if out.len() > at_entry && path != "/" && !out.iter().any(|c| c.path == path) {
        out.push(Change {
            path: path.to_string(),
            kind: ChangeKind::C,
        });
    }
    Ok(())
}

/// Docker's change list of the container root `new` against the image root `old`, sorted.
pub(crate) fn changes(old: Option<&Path>, new: &Path) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    diff_dirs(old, new, "/", &mut out)?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// The layer a commit makes: every changed or added entry of `new` as it is there, every
/// deleted one as a whiteout, in path order (Docker's diff tar); `.wh.` names become what
/// the layer applier makes of them; names of one inode stay hard links. No entry carries an
/// xattr: Docker's tar writer writes none but `security.capability` (moby 20.10.24
/// `pkg/archive/archive.go` `ReadSecurityXattrToTarHeader`), which the model's commit
/// leaves out too (seen on dockerd's devicemapper in the VM:
/// `init/commit_twice_without_a_change_is_one_layer`).
pub(crate) fn commit_entries(old: Option<&Path>, new: &Path) -> io::Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut links: BTreeMap<u64, String> = BTreeMap::new();
    let plain = |path: String, kind: EntryKind| Entry {
        path,
        kind,
        mode: None,
        xattrs: BTreeMap::new(),
        owner: None,
    };
    for ch in changes(old, new)? {
        let (dir, name) = ch.path.rsplit_once('/').expect("absolute");
        let dir = if dir.is_empty() { "/" } else { dir };
        if let Some(target) = name.strip_prefix(".wh.") {
            if ch.kind == ChangeKind::D {
                continue;
            }
            if name == ".wh..wh..opq" {
                // The directory's entry comes first in path order (it is changed too).
                if let Some(EntryKind::Dir { opaque }) = out
                    .iter_mut()
                    .rev()
                    .find(|e| e.path == dir)
                    .map(|e| &mut e.kind)
                {
                    *opaque = true;
                }
            } else if !name.starts_with(".wh..wh.") && !target.is_empty() {
                out.push(plain(join(dir, target), EntryKind::Whiteout));
            }
            continue;
        }
        if ch.kind == ChangeKind::D {
            out.push(plain(ch.path, EntryKind::Whiteout));
            continue;
        }
        let p: PathBuf = new.join(ch.path.trim_start_matches('/'));
        let m = fs::symlink_metadata(&p)?;
        let ft = m.file_type();
        if ft.is_dir() {
            out.push(Entry {
                path: ch.path,
                kind: EntryKind::Dir { opaque: false },
                mode: Some(m.mode() & 0o7777),
                xattrs: BTreeMap::new(),
                owner: crate::changes::owner_of(&m),
            });
        } else if let Some(first) = links.get(&m.ino()) {
            // Any non-directory, a symlink too (moby `addTarFile`: a second name of an
            // inode with more than one link is a `TypeLink`; DOCK6).
            out.push(plain(ch.path, EntryKind::HardLink(first.clone())));
        } else if ft.is_symlink() {
            links.insert(m.ino(), ch.path.clone());
            let t = fs::read_link(&p)?.to_string_lossy().into_owned();
            let mut e = plain(ch.path, EntryKind::Symlink(t));
            e.owner = crate::changes::owner_of(&m);
            out.push(e);
        } else {
            links.insert(m.ino(), ch.path.clone());
            out.push(Entry {
                path: ch.path,
                kind: EntryKind::File(Content::Bytes(fs::read(&p)?)),
                mode: Some(m.mode() & 0o7777),
                xattrs: BTreeMap::new(),
                owner: crate::changes::owner_of(&m),
            });
        }
    }
    Ok(out)
}

/// The modification time each entry of a commit carries in Docker's tar: the container's,
/// in whole seconds (`changes::tar_mtime`), for every entry but whiteouts.
pub(crate) fn entry_times(new: &Path, entries: &[Entry]) -> io::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for e in entries {
        if matches!(e.kind, EntryKind::Whiteout) {
            continue;
        }
        let m = fs::symlink_metadata(new.join(e.path.trim_start_matches('/')))?;
        out.push((e.path.clone(), crate::changes::tar_mtime(&m)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, path: &str) -> Change {
        Change {
            path: path.into(),
            kind,
        }
    }

    #[test]
    fn changes_between_two_roots_follow_changes_dirs() {
        let dir = crate::sandbox::temp_dir().unwrap();
        let (old, new) = (dir.join("old"), dir.join("new"));
        for root in [&old, &new] {
            fs::create_dir_all(root.join("etc/conf.d")).unwrap();
            fs::create_dir_all(root.join("var/lib")).unwrap();
        }
        fs::write(old.join("etc/hosts"), "a").unwrap();
        fs::write(old.join("etc/conf.d/gone"), "x").unwrap();
        fs::write(old.join("var/lib/same"), "s").unwrap();
        // The "snapshot": the unchanged file is the same inode on both sides.
        fs::hard_link(old.join("var/lib/same"), new.join("var/lib/same")).unwrap();
        fs::write(new.join("etc/hosts"), "b").unwrap();
        // The image's file carries its layer's time (the applier's): moby tells the two
        // same-sized files apart by mtime.
        crate::sys::lutimes(&old.join("etc/hosts"), crate::layer::ENTRY_MTIME).unwrap();
        fs::create_dir_all(new.join("opt/app")).unwrap();
        fs::write(new.join("opt/app/run"), "r").unwrap();
        let got = changes(Some(&old), &new).unwrap();
        use ChangeKind::*;
        assert_eq!(
            got,
            vec![
                change(C, "/etc"),
                change(C, "/etc/conf.d"),
                change(D, "/etc/conf.d/gone"),
                change(C, "/etc/hosts"),
                change(A, "/opt"),
                change(A, "/opt/app"),
                change(A, "/opt/app/run"),
            ]
        );
        let entries = commit_entries(Some(&old), &new).unwrap();
        let kinds: Vec<(&str, bool)> = entries
            .iter()
            .map(|e| (e.path.as_str(), matches!(e.kind, EntryKind::Whiteout)))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("/etc", false),
                ("/etc/conf.d", false),
                ("/etc/conf.d/gone", true),
                ("/etc/hosts", false),
                ("/opt", false),
                ("/opt/app", false),
                ("/opt/app/run", false),
            ]
        );
        // Without an image everything is added.
        assert!(changes(None, &new).unwrap().iter().all(|c| c.kind == A));
        crate::sandbox::remove_temp_dir(&dir).unwrap();
    }
}
