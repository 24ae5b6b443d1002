//! Observations: what a driver shows at a point of a trace, in a form both the model and a
//! real driver can produce and the harness can compare field by field.

use crate::container::{Container, Dentry};
use crate::digest::ContentHasher;
use crate::step::Kind;
use crate::tree::Body;
use serde::Serialize;
use std::collections::BTreeMap;

/// Everything observed of one driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// Each container's merged view, by container id.
    pub merged: BTreeMap<String, MergedView>,
    /// The driver root as Docker would have it on disk, by path from the data root.
    pub storage: BTreeMap<String, StorageEntry>,
    /// Costs.
    pub accounting: Accounting,
}

/// A container's merged view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MergedView {
    /// Every path below `/` (the root itself as `/`).
    pub entries: BTreeMap<String, MergedEntry>,
    /// Groups of paths that are one inode (two or more names), each sorted, in path order.
    pub hard_links: Vec<Vec<String>>,
}

/// One path of a merged view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MergedEntry {
    /// File type.
    pub kind: Kind,
    /// Permission bits, octal.
    pub mode: String,
    /// Size for files and symlinks (directory sizes are the filesystem's business).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Content digest of a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `st_nlink` of a non-directory (directory link counts differ between filesystems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nlink: Option<u32>,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `user.*` xattrs, values as (lossy) text.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// `uid:gid`, when not root's (`0:0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One path of the driver's on-disk storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StorageEntry {
    /// `dir`, `file`, `symlink`, `whiteout` (character device 0:0).
    pub kind: String,
    /// Permission bits, octal.
    pub mode: String,
    /// File size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Content digest of a file, or its text when short and printable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// xattrs: `user.*` with values, `trusted.overlay.*` decoded (opaque handles as
    /// `<handle>`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// `uid:gid`, when not root's (`0:0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Inode group: entries with the same number are one inode (numbered in path order).
    pub inode: u32,
}

/// What the driver's storage costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
pub struct Accounting {
    /// Inodes the storage uses on the backing filesystem, below the driver's directory.
    pub inodes_used: u64,
    /// Bytes copied up from image layers, per container.
    pub copied_up_bytes: BTreeMap<String, u64>,
    /// Length in bytes of each container's overlay mount data (options string), against a
    /// 4096-byte page.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mount_data_len: BTreeMap<String, usize>,
    /// The thin pool (the `thinpool` driver, and devicemapper's): its status fields, and per
    /// device what it maps and shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<crate::thin::PoolObservation>,
    /// devicemapper: the device-mapper devices the driver keeps active, by name, with their
    /// tables as `dmsetup table` prints them (the pool, and every mounted thin device);
    /// see the `devmapper` module for the placeholders in names and tables.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dm_tables: BTreeMap<String, String>,
}

/// Text of a file's contents for observations: `text:` and the text itself when short and
/// printable, else `fnv:` and the content digest.
/// Contents longer than [`crate::SPARSE_DIGEST_MIN`] get the sparse form
/// (`sparse:<len>:<hex>`, see [`ContentHasher`]).
pub fn content_text(data: &[u8]) -> String {
    ContentHasher::of(data).text()
}

/// Lossy text of an xattr value.
pub fn xattr_text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

impl Container {
    /// The merged view, every path with its attributes and inode identity.
    pub fn merged_view(&self) -> MergedView {
        let mut entries = BTreeMap::new();
        let mut idents: BTreeMap<(bool, usize, u64), Vec<String>> = BTreeMap::new();
        let root = self.root();
        entries.insert("/".to_string(), self.entry(root));
        self.view_dir(root, "/", &mut entries, &mut idents);
        let mut hard_links: Vec<Vec<String>> =
            idents.into_values().filter(|g| g.len() > 1).collect();
        for g in &mut hard_links {
            g.sort();
        }
        hard_links.sort();
        MergedView {
            entries,
            hard_links,
        }
    }

    fn view_dir(
        &self,
        d: Dentry,
        path: &str,
        entries: &mut BTreeMap<String, MergedEntry>,
        idents: &mut BTreeMap<(bool, usize, u64), Vec<String>>,
    ) {
        for (name, c) in self.list(d) {
            let p = crate::path::join(path, &name);
            entries.insert(p.clone(), self.entry(c));
            if self.kind(c) == Kind::Dir {
                self.view_dir(c, &p, entries, idents);
            } else {
                let key = match (c.upper, c.lower) {
                    (Some(u), _) => (true, 0, u),
                    (None, Some(l)) => {
                        let n = self.lower.node(l);
                        (false, n.layer, n.ino)
                    }
                    _ => unreachable!(),
                };
                idents.entry(key).or_default().push(p);
            }
        }
    }

    fn entry(&self, d: Dentry) -> MergedEntry {
        let inode = self.inode(d);
        let st = self.stat(d);
        let (size, digest, target) = match &inode.body {
            Body::File { data, .. } => (Some(st.size), Some(data.digest()), None),
            Body::Symlink(t) => (Some(st.size), None, Some(t.clone())),
            _ => (None, None, None),
        };
        MergedEntry {
            kind: st.kind,
            mode: format!("0o{:o}", st.mode),
            size,
            digest,
            nlink: (st.kind != Kind::Dir).then_some(st.nlink),
            target,
            xattrs: inode
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), xattr_text(v)))
                .collect(),
            owner: owner_text(st.uid, st.gid),
        }
    }
}

/// An owner as the observation shows it: `None` for root's `0:0`, else `uid:gid`.
pub fn owner_text(uid: u32, gid: u32) -> Option<String> {
    ((uid, gid) != (0, 0)).then(|| format!("{uid}:{gid}"))
}
