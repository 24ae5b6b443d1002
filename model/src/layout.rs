//! Docker's on-disk layouts, rendered from the model: what `ls -lR` of the driver's
//! directory under the data root would show, and the inodes it takes.
//!
//! - aufs (AUFS5): `aufs/diff/<id>` with `.wh.` whiteouts, `aufs/layers/<id>` (parents,
//!   nearest first, one per line), `aufs/mnt/<id>`; writable branches also hold
//!   `.wh..wh.aufs`, `.wh..wh.plnk`, `.wh..wh.orph` (AUFS3).
//! - overlay (DOCK1, S8): `overlay/<id>/root` per image layer, a hard-link farm of its
//!   parent's root plus its diff; containers `lower-id`, `upper`, `work`, `merged`.
//! - overlay2 (DOCK2, S14-S16): `l/<short>` -> `../<id>/diff`, `<id>/{link,lower,diff,work}`,
//!   `committed` in every layer something was created on, `merged` for containers.
//! - devicemapper (S18, S21): loop files, per-device JSON metadata, `mnt/<hash>` per mounted
//!   device (the `devmapper` module holds the device set).
//!
//! Modes are what Docker creates under umask 022.

use crate::container::Container;
use crate::digest::short_name;
use crate::lower::{LowerStack, NodeId};
use crate::observe::{content_text, xattr_text, StorageEntry};
use crate::params::DriverKind;
use crate::space::ext4::Tally as Ext4Tally;
use crate::space::xfs::Tally as XfsTally;
use crate::space::SpaceFs;
use crate::store::Store;
use crate::tree::{Body, Ino, Tree, ROOT};
use std::collections::BTreeMap;

/// The data root the model places the driver under (Docker's default), used for the
/// absolute-path form of overlay mount data.
pub const DATA_ROOT: &str = "/var/lib/docker";

/// Page size: the limit of classic overlay mount data (OVL11).
pub const PAGE_SIZE: usize = 4096;

/// An inode identity while the layout is built: entries with the same key are one inode.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ident {
    Unique(u64),
    Shared(String),
}

/// Builds a storage listing, and counts the space its inodes take ([`crate::space`]).
#[derive(Default)]
struct Disk {
    entries: BTreeMap<String, (Ident, StorageEntry)>,
    next: u64,
    /// The pages each inode takes on tmpfs ([`crate::space`]).
    pages: BTreeMap<Ident, u64>,
    /// Only the space is wanted: file contents are not digested.
    pages_only: bool,
    /// The blocks each inode takes on ext4, when counted (an entry's path may be listed
    /// again, the last listing standing: so the count is made from the entries at the end).
    ext4: Option<BTreeMap<Ident, Result<u64, String>>>,
    /// The same on xfs: each file's data blocks (the rest is counted from the entries).
    xfs: Option<BTreeMap<Ident, Result<u64, String>>>,
    /// xfs: the blocks of copied-up files, by key: the pages written since the copy-up
    /// (a clone shares the rest with its lower file).
    clone_pages: BTreeMap<String, u64>,
}

impl Disk {
    /// Adds an entry; a file takes the pages of its size, a long symlink one page.
    fn add(&mut self, path: String, shared: Option<String>, e: StorageEntry) {
        self.add_data(path, shared, e, None);
    }

    /// Adds an entry whose file data is `data` (else a file's data is its size, whole).
    fn add_data(
        &mut self,
        path: String,
        shared: Option<String>,
        e: StorageEntry,
        data: Option<&crate::data::FileData>,
    ) {
        let size = e.size.unwrap_or(0);
        let metacopy = e.xattrs.contains_key("trusted.overlay.metacopy");
        let runs = match (e.kind.as_str(), data) {
            ("file", _) if metacopy => vec![],
            ("file", Some(d)) => d.page_run_lengths(crate::space::PAGE),
            ("file", None) => vec![size.div_ceil(crate::space::PAGE)],
            _ => vec![],
        };
        let pages = match e.kind.as_str() {
            "file" => runs.iter().sum(),
            "symlink" => crate::space::symlink_pages(size),
            _ => 0,
        };
        let ident = match shared {
            Some(k) => Ident::Shared(k),
            None => {
                self.next += 1;
                Ident::Unique(self.next)
            }
        };
        if let Some(blocks) = &mut self.ext4 {
            let own = match e.kind.as_str() {
                "dir" => Ok(SpaceFs::Ext4.dir_blocks()),
                "symlink" => Ok(SpaceFs::Ext4.symlink_blocks(size)),
                "file" => crate::space::ext4::extent_blocks(&runs).map(|x| x + pages),
                _ => Ok(0),
            };
            blocks.insert(ident.clone(), own);
        }
        if let Some(blocks) = &mut self.xfs {
            let own = if runs.len() > crate::space::xfs::EXACT_RUNS {
                Err(format!(
                    "a file in {} runs of data: whether xfs keeps its extents in the inode \
                     depends on where it places them",
                    runs.len()
                ))
            } else {
                Ok(pages)
            };
            blocks.insert(ident.clone(), own);
        }
        self.pages.insert(ident.clone(), pages);
        self.entries.insert(path, (ident, e));
    }

    /// A file's listing text, unless only pages are wanted.
    fn text(&self, data: &crate::data::FileData) -> Option<String> {
        (!self.pages_only).then(|| data.text())
    }

    fn dir(&mut self, path: String, mode: u32) {
        self.add(path, None, entry("dir", mode));
    }

    fn file(&mut self, path: String, mode: u32, data: &[u8]) {
        let mut e = entry("file", mode);
        e.size = Some(data.len() as u64);
        e.content = Some(content_text(data));
        self.add(path, None, e);
    }

    fn symlink(&mut self, path: String, target: &str) {
        let mut e = entry("symlink", 0o777);
        e.size = Some(target.len() as u64);
        e.target = Some(target.to_string());
        self.add(path, None, e);
    }

    /// Numbers inode groups in path order; returns the listing and the inode count.
    fn finish(self) -> (BTreeMap<String, StorageEntry>, u64) {
        let mut numbers: BTreeMap<Ident, u32> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (path, (ident, mut e)) in self.entries {
            let n = numbers.len() as u32 + 1;
            e.inode = *numbers.entry(ident).or_insert(n);
            out.insert(path, e);
        }
        let count = numbers.len() as u64;
        (out, count)
    }
}

fn entry(kind: &str, mode: u32) -> StorageEntry {
    StorageEntry {
        kind: kind.to_string(),
        mode: format!("0o{mode:o}"),
        size: None,
        content: None,
        target: None,
        xattrs: BTreeMap::new(),
        owner: None,
        inode: 0,
    }
}

/// `e` with the owner of `inode`.
fn owned(mut e: StorageEntry, inode: &crate::tree::Inode) -> StorageEntry {
    e.owner = crate::observe::owner_text(inode.uid, inode.gid);
    e
}

/// How a layer's whiteouts and opaque directories are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// overlayfs: char 0:0, `trusted.overlay.opaque=y` (OVL1, OVL2).
    Overlay,
    /// AUFS / OCI: `.wh.<name>`, `.wh..wh..opq` (AUFS1).
    Aufs,
}

/// Renders a layer tree at `at` in `enc`. `whiteout_key` shares one inode among the
/// whiteouts a filesystem made itself (overlayfs's shared whiteout, AUFS's `.wh..wh.aufs`
/// links); `ident` names the tree's inodes so hard links show.
fn render_tree(
    disk: &mut Disk,
    at: &str,
    tree: &Tree,
    enc: Encoding,
    ident: &str,
    whiteout_key: Option<SharedWhiteout>,
) {
    render_dir(disk, at, tree, ROOT, enc, ident, whiteout_key);
}

fn render_dir(
    disk: &mut Disk,
    at: &str,
    tree: &Tree,
    dir: Ino,
    enc: Encoding,
    ident: &str,
    wk: Option<SharedWhiteout>,
) {
    let Some(children) = tree.get(dir).children() else {
        return;
    };
    for (name, &ino) in children {
        let inode = tree.get(ino);
        let path = format!("{at}/{name}");
        let key = Some(format!("{ident}:{ino}"));
        match &inode.body {
            Body::Whiteout => match enc {
                Encoding::Overlay => {
                    disk.add(path, shared(wk, ino).or(key), entry("whiteout", 0));
                }
                Encoding::Aufs => {
                    let mut e = entry("file", 0o444);
                    e.size = Some(0);
                    e.content = Some(content_text(b""));
                    disk.add(format!("{at}/.wh.{name}"), shared(wk, ino).or(key), e);
                }
            },
            Body::Dir {
                opaque, redirect, ..
            } => {
                let mut e = owned(entry("dir", inode.mode), inode);
                user_xattrs(&mut e, inode);
                if enc == Encoding::Overlay {
                    overlay_dir_xattrs(&mut e, *opaque, redirect.as_deref(), inode);
                }
                disk.add(path.clone(), None, e);
                if enc == Encoding::Aufs && *opaque {
                    let mut m = entry("file", 0o444);
                    m.size = Some(0);
                    m.content = Some(content_text(b""));
                    disk.add(
                        format!("{path}/.wh..wh..opq"),
                        wk.map(|w| w.key.to_string()),
                        m,
                    );
                }
                render_dir(disk, &path, tree, ino, enc, ident, wk);
            }
            Body::File { data, metacopy } => {
                let mut e = owned(entry("file", inode.mode), inode);
                e.size = Some(data.len());
                user_xattrs(&mut e, inode);
                if *metacopy {
                    e.content = Some("<metacopy: no data>".into());
                    e.xattrs
                        .insert("trusted.overlay.metacopy".into(), String::new());
                } else {
                    e.content = disk.text(data);
                }
                if enc == Encoding::Overlay && inode.origin.is_some() {
                    e.xattrs
                        .insert("trusted.overlay.origin".into(), "<handle>".into());
                }
                disk.add_data(path, key, e, Some(data));
            }
            Body::Symlink(t) => {
                let mut e = owned(entry("symlink", 0o777), inode);
                e.size = Some(t.len() as u64);
                e.target = Some(t.clone());
                if enc == Encoding::Overlay && inode.origin.is_some() {
                    e.xattrs
                        .insert("trusted.overlay.origin".into(), "<handle>".into());
                }
                disk.add(path, key, e);
            }
        }
    }
}

/// A layer's root directory: its mode and `user.*` xattrs are the tree root's.
fn root_dir(disk: &mut Disk, path: String, root: &crate::tree::Inode) {
    let mut e = owned(entry("dir", root.mode), root);
    user_xattrs(&mut e, root);
    disk.add(path, None, e);
}

/// overlayfs's own attributes of an upper directory.
fn overlay_dir_xattrs(
    e: &mut StorageEntry,
    opaque: bool,
    redirect: Option<&str>,
    inode: &crate::tree::Inode,
) {
    if opaque {
        e.xattrs.insert("trusted.overlay.opaque".into(), "y".into());
    }
    if let Some(r) = redirect {
        e.xattrs
            .insert("trusted.overlay.redirect".into(), r.to_string());
    }
    if inode.origin.is_some() {
        e.xattrs
            .insert("trusted.overlay.origin".into(), "<handle>".into());
    }
    if inode.impure {
        e.xattrs.insert("trusted.overlay.impure".into(), "y".into());
    }
}

/// The extended attributes of upper directory `inode` as ext4 stores them, in the order
/// overlayfs sets them ([`ext4_xattrs`]).
pub(crate) fn ext4_dir_xattrs(inode: &crate::tree::Inode) -> Vec<(String, u64)> {
    dir_xattrs(inode, crate::space::ext4::ORIGIN_LEN)
}

/// The extended attributes of directory `inode` as xfs stores them.
pub(crate) fn xfs_dir_xattrs(inode: &crate::tree::Inode) -> Vec<(String, u64)> {
    dir_xattrs(inode, XFS_ORIGIN)
}

/// Directory `inode`'s user and overlayfs attributes, lengths in bytes (an origin handle
/// `origin` bytes), in the order overlayfs sets them.
fn dir_xattrs(inode: &crate::tree::Inode, origin: u64) -> Vec<(String, u64)> {
    let mut e = entry("dir", inode.mode);
    user_xattrs(&mut e, inode);
    if let Body::Dir {
        opaque, redirect, ..
    } = &inode.body
    {
        overlay_dir_xattrs(&mut e, *opaque, redirect.as_deref(), inode);
    }
    xattr_lengths(&e, origin)
}

fn user_xattrs(e: &mut StorageEntry, inode: &crate::tree::Inode) {
    for (k, v) in &inode.xattrs {
        e.xattrs.insert(k.clone(), xattr_text(v));
    }
}

/// The storage listing and inode count of a store's driver root.
pub fn render(store: &Store) -> (BTreeMap<String, StorageEntry>, u64) {
    let mut disk = Disk::default();
    match store.driver() {
        DriverKind::Aufs => aufs(store, &mut disk),
        DriverKind::Overlay => overlay(store, &mut disk),
        DriverKind::Overlay2 => overlay2(store, &mut disk),
        DriverKind::Devicemapper => devicemapper(store, &mut disk),
        DriverKind::Thinpool => {}
    }
    disk.finish()
}

/// The space the driver root of an overlay or overlay2 store takes.
pub(crate) struct Used {
    /// Pages of a tmpfs, or blocks of an ext4 beyond what mkfs took.
    pub blocks: u64,
    /// Inodes beyond what mkfs took.
    pub inodes: u64,
    /// Why `blocks` is not exact (ext4), if it is not.
    pub unexact: Option<String>,
    /// ext4: an xattr block holding only `trusted.overlay.impure` exists.
    pub impure_block: bool,
}

/// The space the driver root of an overlay or overlay2 store takes on `fs`: each inode
/// once, whatever its names ([`crate::space`]); nothing for the other drivers.
pub(crate) fn space_used(store: &Store, fs: SpaceFs) -> Used {
    let mut disk = Disk {
        pages_only: true,
        ext4: (fs == SpaceFs::Ext4).then(BTreeMap::new),
        xfs: (fs == SpaceFs::Xfs).then(BTreeMap::new),
        ..Disk::default()
    };
    match store.driver() {
        DriverKind::Overlay => overlay(store, &mut disk),
        DriverKind::Overlay2 => overlay2(store, &mut disk),
        _ => {
            return Used {
                blocks: 0,
                inodes: 0,
                unexact: None,
                impure_block: false,
            }
        }
    }
    if let Some(own) = disk.xfs.take() {
        let mut t = XfsTally::default();
        for (path, (ident, e)) in &disk.entries {
            let key = format!("{ident:?}");
            let copied = e.kind == "file"
                && e.xattrs.contains_key("trusted.overlay.origin")
                && !e.xattrs.contains_key("trusted.overlay.metacopy")
                && e.size.unwrap_or(0) > 0;
            let cloned = match ident {
                Ident::Shared(k) => disk.clone_pages.get(k).copied(),
                Ident::Unique(_) => None,
            };
            // A copy whose lower file the model cannot find: counted whole, not exact.
            let clone = copied && cloned.is_none();
            let data = match cloned {
                Some(n) if copied => Ok(n),
                _ => own[ident].clone(),
            };
            let size = e.size.unwrap_or(0);
            t.inode(
                path,
                &key,
                &e.kind,
                size,
                data,
                clone,
                &xattr_lengths(e, XFS_ORIGIN),
            );
        }
        let (blocks, inodes) = t.total();
        return Used {
            blocks,
            inodes,
            impure_block: false,
            unexact: t.unexact,
        };
    }
    match disk.ext4.take() {
        Some(own) => {
            let mut t = Ext4Tally::default();
            for (path, (ident, e)) in &disk.entries {
                let key = format!("{ident:?}");
                t.inode(path, &key, own[ident].clone(), &ext4_xattrs(e));
            }
            let (blocks, inodes) = t.total();
            Used {
                blocks,
                inodes,
                impure_block: t.has_impure_block(),
                unexact: t.unexact,
            }
        }
        None => Used {
            blocks: disk.pages.values().sum(),
            inodes: disk.pages.len() as u64,
            unexact: None,
            impure_block: false,
        },
    }
}

/// An entry's extended attributes as ext4 stores them, lengths in bytes, in the order
/// overlayfs sets them: copied or user attributes first, then `opaque` (at `mkdir`),
/// `origin` and `metacopy` (at copy-up), `redirect` (at rename), `impure` (when a child
/// is copied up or moved in).
fn ext4_xattrs(e: &StorageEntry) -> Vec<(String, u64)> {
    xattr_lengths(e, crate::space::ext4::ORIGIN_LEN)
}

/// The length of `trusted.overlay.origin` on xfs.
const XFS_ORIGIN: u64 = crate::space::xfs::ORIGIN_LEN;

/// An entry's extended attributes, lengths in bytes (an origin handle `origin` bytes), in
/// the order overlayfs sets them (see [`ext4_xattrs`]).
fn xattr_lengths(e: &StorageEntry, origin: u64) -> Vec<(String, u64)> {
    let rank = |n: &str| match n {
        "trusted.overlay.opaque" => 1,
        "trusted.overlay.origin" => 2,
        "trusted.overlay.metacopy" => 3,
        "trusted.overlay.redirect" => 4,
        "trusted.overlay.impure" => 5,
        _ => 0,
    };
    let mut v: Vec<(String, u64)> = e
        .xattrs
        .iter()
        .map(|(n, text)| {
            let len = match n.as_str() {
                "trusted.overlay.origin" => origin,
                "trusted.overlay.uuid" => 16,
                "trusted.overlay.metacopy" => 0,
                _ => text.len() as u64,
            };
            (n.clone(), len)
        })
        .collect();
    v.sort_by_key(|(n, _)| rank(n));
    v
}

/// The overlay mount data Docker would pass for a container, with the driver under
/// Docker's default data root. See [`overlay_mount_data`].
pub fn mount_data(store: &Store, c: &Container) -> Option<String> {
    let chain = lower_chain(store, c);
    overlay_mount_data(store.driver(), store.options(), &chain, &c.id, DATA_ROOT)
}

/// The layers under container `c`'s writable layer as its driver stacks them, lowest
/// first: its image's, then its init layer (overlay2 and aufs; overlay's container sits
/// on the image's root, a copy of the init layer in its upper).
fn lower_chain(store: &Store, c: &Container) -> Vec<String> {
    let mut chain = store.chain(c.image.as_deref());
    if let Some(init) = store.init_of(&c.id) {
        if store.driver() != DriverKind::Overlay {
            chain.push(init.id.clone());
        }
    }
    chain
}

/// The overlay mount data Docker 20.10 passes for read-write layer `id` on the layers
/// `chain` (lowest first), with the driver under `data_root`; `None` when nothing is
/// mounted (no layer below). Seen with `strace` on dockerd 20.10.24 here, as moby's `Get`
/// builds it:
/// - overlay2 (`overlay2/overlay.go` `Get`): `index=off,` first (`indexOff`, since the
///   kernel has the overlay `index` parameter), then absolute paths of the `l/` links, the
///   topmost first, and of `diff` and `work`. When that is longer than a page less one byte,
///   the same with paths relative to the driver directory, mounted from there
///   (`mountFrom`, DOCK2, OVL11).
/// - overlay (`overlay/overlay.go` `Get`): one absolute `lowerdir`, the top image layer's
///   `root`, and `upper` and `work`; nothing else.
///
/// A scenario's own overlayfs options (which Docker never passes) follow: `index=on` in
/// `index=off`'s place, the rest at the end ([`crate::OverlayOptions::mount_string`]).
pub fn overlay_mount_data(
    driver: DriverKind,
    options: crate::params::OverlayOptions,
    chain: &[String],
    id: &str,
    data_root: &str,
) -> Option<String> {
    let opts = options.mount_string();
    let top = chain.last()?;
    match driver {
        DriverKind::Overlay2 => {
            let index = if options.index {
                "index=on,"
            } else {
                "index=off,"
            };
            let form = |base: &str| {
                format!(
                    "{index}lowerdir={},upperdir={base}{id}/diff,workdir={base}{id}/work{opts}",
                    l_paths(chain, base)
                )
            };
            let absolute = form(&format!("{data_root}/overlay2/"));
            Some(if absolute.len() > PAGE_SIZE - 1 {
                form("")
            } else {
                absolute
            })
        }
        DriverKind::Overlay => {
            let base = format!("{data_root}/overlay");
            let index = if options.index { ",index=on" } else { "" };
            Some(format!(
                "lowerdir={base}/{top}/root,upperdir={base}/{id}/upper,workdir={base}/{id}/work{index}{opts}"
            ))
        }
        _ => None,
    }
}

/// The `l/` paths of `chain` (lowest first), topmost first, below `base`.
fn l_paths(chain: &[String], base: &str) -> String {
    let lowers: Vec<String> = chain
        .iter()
        .rev()
        .map(|l| format!("{base}l/{}", short_name(l)))
        .collect();
    lowers.join(":")
}

/// The mount data of overlay2's read-only mount of layer `id` on `chain`, which moby's
/// `Get` makes of a layer that has `committed` (an init layer Docker's naive diff mounts):
/// `index=off,lowerdir=<id>/diff:<lowers>`, absolute under `data_root`.
pub fn overlay2_readonly_mount_data(chain: &[String], id: &str, data_root: &str) -> String {
    let base = format!("{data_root}/overlay2/");
    format!(
        "index=off,lowerdir={base}{id}/diff:{}",
        l_paths(chain, &base)
    )
}

/// The inode a filesystem's own whiteouts share (`key`, plus the mount generation that made
/// them for overlayfs), and the whiteouts that do not share it.
#[derive(Clone, Copy)]
struct SharedWhiteout<'a> {
    key: &'a str,
    except: &'a std::collections::BTreeSet<Ino>,
    generations: Option<&'a BTreeMap<Ino, u32>>,
}

fn shared(wk: Option<SharedWhiteout>, ino: Ino) -> Option<String> {
    let w = wk.filter(|w| !w.except.contains(&ino))?;
    Some(match w.generations {
        Some(g) => format!("{}:{}", w.key, g.get(&ino)?),
        None => w.key.to_string(),
    })
}

fn container_whiteout_key(c: &Container) -> String {
    format!("whiteout:{}", c.id)
}

fn aufs(store: &Store, disk: &mut Disk) {
    for d in ["aufs", "aufs/diff", "aufs/layers", "aufs/mnt"] {
        disk.dir(d.into(), 0o700);
    }
    let write_layers = |disk: &mut Disk, id: &str, chain: &[String]| {
        let parents: String = chain.iter().rev().map(|p| format!("{p}\n")).collect();
        disk.file(format!("aufs/layers/{id}"), 0o644, parents.as_bytes());
        disk.dir(format!("aufs/mnt/{id}"), 0o755);
    };
    for l in store.layers() {
        disk.dir(format!("aufs/diff/{}", l.id), 0o755);
        render_tree(
            disk,
            &format!("aufs/diff/{}", l.id),
            &l.tree,
            Encoding::Aufs,
            &l.id,
            None,
        );
        write_layers(disk, &l.id, &store.chain(l.parent.as_deref()));
    }
    // Init layers, then containers: writable branches AUFS mounted.
    let branches = store
        .containers()
        .filter_map(|c| {
            store
                .init_of(&c.id)
                .map(|i| (i, store.chain(i.image.as_deref())))
        })
        .chain(store.containers().map(|c| (c, lower_chain(store, c))));
    for (c, chain) in branches {
        let at = format!("aufs/diff/{}", c.id);
        disk.dir(at.clone(), 0o755);
        let wk = container_whiteout_key(c);
        let mut base = entry("file", 0o444);
        base.size = Some(0);
        base.content = Some(content_text(b""));
        disk.add(format!("{at}/.wh..wh.aufs"), Some(wk.clone()), base);
        disk.dir(format!("{at}/.wh..wh.plnk"), 0o700);
        disk.dir(format!("{at}/.wh..wh.orph"), 0o700);
        render_tree(
            disk,
            &at,
            &c.upper,
            Encoding::Aufs,
            &format!("c:{}", c.id),
            Some(SharedWhiteout {
                key: &wk,
                except: &c.own_whiteouts,
                generations: None,
            }),
        );
        write_layers(disk, &c.id, &chain);
    }
}

fn overlay(store: &Store, disk: &mut Disk) {
    disk.dir("overlay".into(), 0o710);
    for l in store.layers() {
        let at = format!("overlay/{}", l.id);
        disk.dir(at.clone(), 0o710);
        // The layer's root: its whole image, regular files hard-linked all the way down
        // from the layer that made them, directories and symlinks made anew (DOCK1).
        let layers = store
            .chain(Some(&l.id))
            .iter()
            .map(|id| std::sync::Arc::clone(store.layer(id).expect("chain")))
            .collect();
        let stack = LowerStack::flattened(layers);
        root_dir(disk, format!("{at}/root"), stack.inode(LowerStack::ROOT));
        farm(disk, &format!("{at}/root"), &stack, LowerStack::ROOT);
    }
    for c in store.containers() {
        if let Some(init) = store.init_of(&c.id) {
            // Docker's `Put` removed the init layer's `merged` after `Setup`.
            let at = format!("overlay/{}", init.id);
            disk.dir(at.clone(), 0o710);
            let image = init.image.as_deref().unwrap_or_default();
            disk.file(format!("{at}/lower-id"), 0o600, image.as_bytes());
            upper_work(disk, init, &at, "upper");
        }
        let at = format!("overlay/{}", c.id);
        disk.dir(at.clone(), 0o710);
        match &c.image {
            Some(image) => {
                disk.file(format!("{at}/lower-id"), 0o600, image.as_bytes());
                upper_work(disk, c, &at, "upper");
                if !c.stopped {
                    // Docker's `Put` removes it (a container it could not start).
                    disk.dir(format!("{at}/merged"), 0o700);
                }
            }
            None => {
                // No parent: Docker makes a plain `root` and mounts nothing.
                root_dir(disk, format!("{at}/root"), c.upper.get(ROOT));
                render_tree(
                    disk,
                    &format!("{at}/root"),
                    &c.upper,
                    Encoding::Overlay,
                    &format!("c:{}", c.id),
                    None,
                );
            }
        }
    }
}

fn farm(disk: &mut Disk, at: &str, stack: &LowerStack, node: NodeId) {
    let Some(children) = &stack.node(node).children else {
        return;
    };
    for (name, &child) in children {
        let n = stack.node(child);
        let inode = stack.inode(child);
        let path = format!("{at}/{name}");
        match &inode.body {
            Body::Dir { .. } => {
                let mut e = owned(entry("dir", inode.mode), inode);
                user_xattrs(&mut e, inode);
                disk.add(path.clone(), None, e);
                farm(disk, &path, stack, child);
            }
            Body::File { data, .. } => {
                let mut e = owned(entry("file", inode.mode), inode);
                e.size = Some(data.len());
                e.content = disk.text(data);
                user_xattrs(&mut e, inode);
                let layer_id = &stack.layers()[n.layer].id;
                disk.add_data(path, Some(format!("{layer_id}:{}", n.ino)), e, Some(data));
            }
            // A symlink of the layer's own diff keeps its hard links (the applier links a
            // tar hard link to a symlink, DOCK6); one from a parent is made anew (DOCK1).
            Body::Symlink(t) if n.layer + 1 == stack.layers().len() => {
                let mut e = owned(entry("symlink", 0o777), inode);
                e.size = Some(t.len() as u64);
                e.target = Some(t.to_string());
                let layer_id = &stack.layers()[n.layer].id;
                disk.add(path, Some(format!("{layer_id}:{}", n.ino)), e);
            }
            Body::Symlink(t) => {
                // Made anew by DirCopy, which gives it its owner (`Lchown`).
                let mut e = owned(entry("symlink", 0o777), inode);
                e.size = Some(t.len() as u64);
                e.target = Some(t.to_string());
                disk.add(path, None, e);
            }
            Body::Whiteout => {}
        }
    }
}

/// A container's writable side: its upper tree, `work/work` (with the shared whiteout once
/// the kernel made one, and `work/index` with index=on).
fn upper_work(disk: &mut Disk, c: &Container, at: &str, upper: &str) {
    let wk = container_whiteout_key(c);
    if disk.xfs.is_some() {
        let ident = format!("c:{}", c.id);
        disk.clone_pages.extend(
            c.clone_pages()
                .into_iter()
                .map(|(i, n)| (format!("{ident}:{i}"), n)),
        );
    }
    disk.dir(format!("{at}/{upper}"), 0o755);
    let root = c.upper.get(ROOT);
    let mut r = owned(entry("dir", root.mode), root);
    user_xattrs(&mut r, root);
    if root.impure {
        r.xattrs.insert("trusted.overlay.impure".into(), "y".into());
    }
    // Since 6.6 the kernel records a generated uuid on the upper root when it first mounts
    // a new overlay (uuid=auto, the default; see `KernelVersion::overlay_upper_uuid`).
    if c.policy.kernel.overlay_upper_uuid() {
        r.xattrs
            .insert("trusted.overlay.uuid".into(), "<uuid>".into());
    }
    disk.add(format!("{at}/{upper}"), None, r);
    render_tree(
        disk,
        &format!("{at}/{upper}"),
        &c.upper,
        Encoding::Overlay,
        &format!("c:{}", c.id),
        Some(SharedWhiteout {
            key: &wk,
            except: &c.own_whiteouts,
            generations: Some(&c.shared_whiteouts),
        }),
    );
    disk.dir(format!("{at}/work"), 0o700);
    disk.dir(format!("{at}/work/work"), 0o0);
    if c.made_whiteout {
        let key = format!("{wk}:{}", c.generation);
        disk.add(
            format!("{at}/work/work/#whiteout"),
            Some(key),
            entry("whiteout", 0),
        );
    }
    if c.policy.keep_hard_links {
        // index=on: the upper root records the lower root it belongs with, `work/index`
        // the upper root, and every indexed copy-up is hard-linked there by origin handle
        // with its overlay link count relative to the upper one (`U+n`).
        if let Some((_, root)) = disk.entries.get_mut(&format!("{at}/{upper}")) {
            root.xattrs
                .insert("trusted.overlay.origin".into(), "<handle>".into());
        }
        let mut index_dir = entry("dir", 0o0);
        index_dir
            .xattrs
            .insert("trusted.overlay.upper".into(), "<handle>".into());
        disk.add(format!("{at}/work/index"), None, index_dir);
        let paths: BTreeMap<Ino, String> =
            c.upper.paths().into_iter().map(|(p, i)| (i, p)).collect();
        for (n, ((layer, ino), e)) in c.index.iter().enumerate() {
            let lower_nlink = c.lower.layer_inode(*layer, *ino).nlink;
            let nlink = format!(
                "U{:+}",
                i64::from(lower_nlink) - i64::from(e.names_gone) - 1
            );
            let Some(path) = paths.get(&e.upper) else {
                continue;
            };
            let key = format!("{at}/{upper}{path}");
            let Some((ident, upper_entry)) = disk.entries.get_mut(&key) else {
                continue;
            };
            upper_entry
                .xattrs
                .insert("trusted.overlay.nlink".into(), nlink);
            let (ident, f) = (ident.clone(), upper_entry.clone());
            disk.entries
                .insert(format!("{at}/work/index/#index-{n}"), (ident, f));
        }
    }
}

fn overlay2(store: &Store, disk: &mut Disk) {
    disk.dir("overlay2".into(), 0o710);
    disk.dir("overlay2/l".into(), 0o700);
    if store.backing() == crate::params::Backing::Xfs {
        // moby overlay2 `Init` on xfs: `quota.NewControl` → `makeBackingFsDev` makes a
        // node for the backing device, whether or not project quotas are on (seen on
        // dockerd 20.10.24: `bounds/xfs_file_size_limit`).
        disk.add(
            "overlay2/backingFsBlockDev".into(),
            None,
            entry("block", 0o600),
        );
    }
    let has_child = store.built_upon();
    let skeleton = |disk: &mut Disk, id: &str, chain: &[String]| {
        let at = format!("overlay2/{id}");
        let short = short_name(id);
        disk.dir(at.clone(), 0o710);
        disk.symlink(format!("overlay2/l/{short}"), &format!("../{id}/diff"));
        disk.file(format!("{at}/link"), 0o644, short.as_bytes());
        if !chain.is_empty() {
            let lower: Vec<String> = chain
                .iter()
                .rev()
                .map(|p| format!("l/{}", short_name(p)))
                .collect();
            disk.file(format!("{at}/lower"), 0o644, lower.join(":").as_bytes());
        }
        if has_child.contains(id) {
            disk.file(format!("{at}/committed"), 0o600, b"");
        }
        at
    };
    for l in store.layers() {
        let at = skeleton(disk, &l.id, &store.chain(l.parent.as_deref()));
        root_dir(disk, format!("{at}/diff"), l.tree.get(ROOT));
        render_tree(
            disk,
            &format!("{at}/diff"),
            &l.tree,
            Encoding::Overlay,
            &l.id,
            None,
        );
        if l.parent.is_some() {
            disk.dir(format!("{at}/work"), 0o700);
        }
    }
    for c in store.containers() {
        if let Some(init) = store.init_of(&c.id) {
            // Docker's `Put` removed the init layer's `merged` after `Setup`.
            let at = skeleton(disk, &init.id, &store.chain(init.image.as_deref()));
            upper_work(disk, init, &at, "diff");
        }
        let at = skeleton(disk, &c.id, &lower_chain(store, c));
        if c.image.is_some() {
            upper_work(disk, c, &at, "diff");
            if !c.stopped {
                // Docker's `Put` removes it (a container it could not start).
                disk.dir(format!("{at}/merged"), 0o700);
            }
        } else {
            // No lower layers: Docker bind-mounts `diff` itself as the root filesystem.
            root_dir(disk, format!("{at}/diff"), c.upper.get(ROOT));
            render_tree(
                disk,
                &format!("{at}/diff"),
                &c.upper,
                Encoding::Overlay,
                &format!("c:{}", c.id),
                None,
            );
        }
    }
}

/// Docker's devicemapper driver root (S18, S21; see the `devmapper` module): the loop files,
/// one JSON file per device under `metadata/` (shown as text, the base filesystem's UUID as
/// `<uuid>`), and `mnt/<hash>` for every mounted device. The mounted filesystems are not
/// listed: a mount point shows as the directory under it.
fn devicemapper(store: &Store, disk: &mut Disk) {
    use crate::devmapper::{DATA_FILE_BYTES, METADATA_FILE_BYTES};
    let Some(ds) = store.devmapper() else {
        return;
    };
    let json = |disk: &mut Disk, path: String, text: &str, len: usize| {
        let mut e = entry("file", 0o600);
        e.size = Some(len as u64);
        e.content = Some(format!("text:{text}"));
        disk.add(path, None, e);
    };
    disk.dir("devicemapper".into(), 0o700);
    disk.dir("devicemapper/devicemapper".into(), 0o700);
    for (name, size) in [("data", DATA_FILE_BYTES), ("metadata", METADATA_FILE_BYTES)] {
        let mut e = entry("file", 0o600);
        e.size = Some(size);
        e.content = Some("<sparse loop file>".into());
        disk.add(format!("devicemapper/devicemapper/{name}"), None, e);
    }
    disk.dir("devicemapper/metadata".into(), 0o700);
    for (hash, d) in &ds.devices {
        let text = format!(
            "{{\"device_id\":{},\"size\":{},\"transaction_id\":{},\"initialized\":{},\"deleted\":false}}",
            d.device_id, d.size, d.transaction_id, d.initialized
        );
        let name = if hash.is_empty() { "base" } else { hash };
        json(
            disk,
            format!("devicemapper/metadata/{name}"),
            &text,
            text.len(),
        );
    }
    // Written when the base filesystem was made, with the base device's id as the last one
    // handed out, and not again before shutdown; mkfs's UUID is 36 characters.
    let text =
        "{\"next_device_id\":1,\"BaseDeviceUUID\":\"<uuid>\",\"BaseDeviceFilesystem\":\"ext4\"}";
    let len = text.len() - "<uuid>".len() + 36;
    json(
        disk,
        "devicemapper/metadata/deviceset-metadata".into(),
        text,
        len,
    );
    let (tx, hash, id) = &ds.open_transaction;
    let text =
        format!("{{\"open_transaction_id\":{tx},\"device_hash\":\"{hash}\",\"device_id\":{id}}}");
    json(
        disk,
        "devicemapper/metadata/transaction-metadata".into(),
        &text,
        text.len(),
    );
    if ds.mnt_made {
        disk.dir("devicemapper/mnt".into(), 0o755);
    }
    for (hash, d) in &ds.devices {
        if d.mounted {
            disk.dir(format!("devicemapper/mnt/{hash}"), 0o755);
        }
    }
}
