//! Reading a real driver back into the model's observation types: the merged view through
//! the mount, and the driver's directory with whiteouts and `trusted.overlay.*` decoded.
//!
//! Decoding done here (the rest of the normalisations are in the harness's `compare`):
//! - a character device 0:0 is kind `whiteout`; other devices are `char`/`block`;
//! - `trusted.overlay.origin` and `.upper` hold opaque file handles: shown as `<handle>`;
//!   `.metacopy` is shown empty (newer kernels may store a digest there);
//! - the kernel's shared whiteout in `work/work` has a counter name (`#1f`): shown as
//!   `#whiteout`; entries of `work/index` are named by file handle: shown as `#index`
//!   plus their position;
//! - a metacopy file's upper copy holds no data: its content is shown as such;
//! - devicemapper's loop files (`LOOP_FILES`, by path) are shown as `<sparse loop file>`;
//!   every other file's contents are read with `SEEK_DATA`/`SEEK_HOLE` into the model's
//!   `ContentHasher` (`content.rs`), so a file past 64 MiB gets the same hole-aware
//!   `sparse:` text as the model's whatever the filesystem's holes;
//! - an entry of the driver root that vanishes while it is walked is left out:
//!   fuse-overlayfs moves removed names into its work directory and deletes them there
//!   when the kernel forgets the node, asynchronously: the likely cause of the observations
//!   that failed with ENOENT in `fuzz --backend fuse`. The kernel deletes nothing behind the
//!   walk's back.

use crate::content::hash_range;
use crate::layer::is_whiteout;
use crate::sys;
use layerspec_model::{Kind, MergedEntry, MergedView, StorageEntry};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The file type of `m` in the spec's vocabulary.
pub(crate) fn kind_of(m: &fs::Metadata) -> Kind {
    let ft = m.file_type();
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else {
        Kind::File
    }
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let mut v: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// The merged view of a container mounted at `merged`, walked from the host side.
pub fn merged_view(merged: &Path) -> io::Result<MergedView> {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let m = fs::symlink_metadata(merged)?;
    entries.insert("/".to_string(), merged_entry(merged, &m)?);
    walk_merged(merged, "", &mut entries, &mut inodes)?;
    let mut hard_links: Vec<Vec<String>> = inodes.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut hard_links {
        g.sort();
    }
    hard_links.sort();
    Ok(MergedView {
        entries,
        hard_links,
    })
}

fn walk_merged(
    dir: &Path,
    rel: &str,
    out: &mut BTreeMap<String, MergedEntry>,
    inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
) -> io::Result<()> {
    for e in sorted_entries(dir)? {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let r = format!("{rel}/{name}");
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // readdir may list a whiteout of a directory read straight from one lower
            // layer; the name does not exist.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.insert(r.clone(), merged_entry(&p, &m)?);
        if m.is_dir() {
            walk_merged(&p, &r, out, inodes)?;
        } else {
            inodes.entry((m.dev(), m.ino())).or_default().push(r);
        }
    }
    Ok(())
}

fn merged_entry(p: &Path, m: &fs::Metadata) -> io::Result<MergedEntry> {
    let kind = kind_of(m);
    let (size, digest, target) = match kind {
        Kind::File => (
            Some(m.size()),
            Some(hash_range(&fs::File::open(p)?, 0, m.size())?.digest()),
            None,
        ),
        Kind::Symlink => (
            Some(m.size()),
            None,
            Some(fs::read_link(p)?.to_string_lossy().into_owned()),
        ),
        _ => (None, None, None),
    };
    let mut xattrs = BTreeMap::new();
    if matches!(kind, Kind::File | Kind::Dir) {
        for name in sys::llistxattr(p)? {
            if name.starts_with("user.") {
                let v = sys::getxattr(p, &name, false)?;
                xattrs.insert(name, String::from_utf8_lossy(&v).into_owned());
            }
        }
    }
    Ok(MergedEntry {
        kind,
        mode: format!("0o{:o}", m.mode() & 0o7777),
        size,
        digest,
        nlink: (kind != Kind::Dir).then_some(m.nlink() as u32),
        target,
        xattrs,
        owner: layerspec_model::owner_text(m.uid(), m.gid()),
    })
}

/// The storage listing of the driver directory `top` (named `name`, e.g. `overlay2`) and
/// the number of distinct inodes in it.
pub fn storage(top: &Path, name: &str) -> io::Result<(BTreeMap<String, StorageEntry>, u64)> {
    let mut raw: BTreeMap<String, (u64, StorageEntry)> = BTreeMap::new();
    let m = fs::symlink_metadata(top)?;
    raw.insert(name.to_string(), (m.ino(), storage_entry(top, name, &m)?));
    walk_storage(top, name, &mut raw)?;
    let mut numbers: BTreeMap<u64, u32> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (path, (ino, mut e)) in raw {
        let n = numbers.len() as u32 + 1;
        e.inode = *numbers.entry(ino).or_insert(n);
        out.insert(path, e);
    }
    let count = numbers.len() as u64;
    Ok((out, count))
}

fn walk_storage(
    dir: &Path,
    rel: &str,
    out: &mut BTreeMap<String, (u64, StorageEntry)>,
) -> io::Result<()> {
    let in_workwork = rel.ends_with("/work/work");
    let in_index = rel.ends_with("/work/index");
    let entries = match sorted_entries(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for (i, e) in entries.into_iter().enumerate() {
        let mut name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if in_workwork && name.starts_with('#') && is_whiteout(&m) {
            name = "#whiteout".into();
        } else if in_index {
            name = format!("#index-{i}");
        }
        let r = format!("{rel}/{name}");
        let entry = match storage_entry(&p, &r, &m) {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.insert(r.clone(), (m.ino(), entry));
        if m.is_dir() {
            walk_storage(&p, &r, out)?;
        }
    }
    Ok(())
}

/// devicemapper's loop files, by path from the data root: their contents are the pool's
/// (compared through its status, not byte by byte), shown as `<sparse loop file>`.
pub const LOOP_FILES: [&str; 2] = [
    "devicemapper/devicemapper/data",
    "devicemapper/devicemapper/metadata",
];

fn storage_entry(p: &Path, rel: &str, m: &fs::Metadata) -> io::Result<StorageEntry> {
    let kind = kind_of(m);
    let mut xattrs = BTreeMap::new();
    {
        for name in sys::llistxattr(p).unwrap_or_default() {
            let v = sys::getxattr(p, &name, false).unwrap_or_default();
            let shown = match name.as_str() {
                "trusted.overlay.origin" | "trusted.overlay.upper" => "<handle>".to_string(),
                "trusted.overlay.metacopy" => String::new(),
                "trusted.overlay.uuid" => "<uuid>".to_string(),
                _ if name.starts_with("user.") || name.starts_with("trusted.overlay.") => {
                    String::from_utf8_lossy(&v).into_owned()
                }
                _ => continue,
            };
            xattrs.insert(name, shown);
        }
    }
    let metacopy = xattrs.contains_key("trusted.overlay.metacopy");
    let (kind_s, size, content, target) = match kind {
        _ if is_whiteout(m) => ("whiteout", None, None, None),
        Kind::Dir => ("dir", None, None, None),
        Kind::Symlink => (
            "symlink",
            Some(m.size()),
            None,
            Some(fs::read_link(p)?.to_string_lossy().into_owned()),
        ),
        Kind::File if metacopy => (
            "file",
            Some(m.size()),
            Some("<metacopy: no data>".to_string()),
            None,
        ),
        Kind::File if LOOP_FILES.contains(&rel) => (
            "file",
            Some(m.size()),
            Some("<sparse loop file>".to_string()),
            None,
        ),
        Kind::File => (
            "file",
            Some(m.size()),
            Some(hash_range(&fs::File::open(p)?, 0, m.size())?.text()),
            None,
        ),
        Kind::Char => ("char", None, None, None),
        Kind::Block => ("block", None, None, None),
        Kind::Fifo => ("fifo", None, None, None),
    };
    Ok(StorageEntry {
        kind: kind_s.to_string(),
        mode: format!("0o{:o}", m.mode() & 0o7777),
        size,
        content,
        target,
        xattrs,
        owner: layerspec_model::owner_text(m.uid(), m.gid()),
        inode: 0,
    })
}
