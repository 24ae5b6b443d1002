//! Writing image layers to disk in overlayfs's encoding, as a layer applied by Docker looks:
//! whiteouts as character devices 0:0, opaque directories with `trusted.overlay.opaque=y`
//! (OVL1, OVL2); and overlay's hard-link farms (DOCK1). Every change goes through
//! [`Confined`] (`confined.rs`): these functions run chrooted in the driver root.

use crate::confined::Confined;
use crate::sys;
use layerspec_model::{Content, EntryKind, LayerSpec};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn ensure_parents(c: &mut Confined, root: &Path, rel: &str) -> io::Result<()> {
    let mut cur = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            // The layer was validated: a parent is never a file or symlink of the layer.
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(_) => c.mkdir(&cur, 0o755)?,
        }
    }
    Ok(())
}

/// A file's contents as a reader, without holding them in memory.
pub(crate) fn content_reader(content: &Content) -> (u64, Box<dyn io::Read>) {
    match content {
        Content::Bytes(b) => (b.len() as u64, Box::new(io::Cursor::new(b.clone()))),
        Content::Random { len, seed } => (*len, Box::new(RandomReader::new(*seed, *len))),
    }
}

/// [`layerspec_model::pseudo_random`]'s bytes, streamed in chunks.
struct RandomReader {
    seed: u64,
    pos: u64,
    len: u64,
    chunk: Vec<u8>,
    at: usize,
}

impl RandomReader {
    const CHUNK: u64 = 1 << 20;

    fn new(seed: u64, len: u64) -> Self {
        RandomReader {
            seed,
            pos: 0,
            len,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl io::Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() {
            if self.pos >= self.len {
                return Ok(0);
            }
            let n = Self::CHUNK.min(self.len - self.pos);
            self.chunk = vec![0; n as usize];
            layerspec_model::pseudo_random_at(self.seed, self.pos, &mut self.chunk);
            self.pos += n;
            self.at = 0;
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Writes a layer's entries into `dir` (an overlay2 `diff`, or a staging directory) in the
/// overlayfs encoding.
///
/// The layer is checked first as the model checks it ([`layerspec_model::validate_layer`]):
/// a layer the model refuses is refused here with the same error, before anything is written.
pub fn write_entries(c: &mut Confined, dir: &Path, spec: &LayerSpec) -> io::Result<()> {
    layerspec_model::validate_layer(spec)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    for e in &spec.entries {
        let rel = e.path.trim_start_matches('/');
        if rel.is_empty() {
            if let Some(m) = e.mode {
                c.set_mode(dir, m)?;
            }
            if let Some(owner) = e.owner {
                give_owner(c, dir, owner, e.mode)?;
            }
            for (k, v) in &e.xattrs {
                set_layer_xattr(c, dir, k, v)?;
            }
            continue;
        }
        ensure_parents(c, dir, rel)?;
        let p = dir.join(rel);
        match &e.kind {
            EntryKind::File(content) => c.write_content(&p, e.mode.unwrap_or(0o644), content)?,
            EntryKind::Dir { opaque } => {
                let mode = e.mode.unwrap_or(0o755);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    c.set_mode(&p, mode)?;
                } else {
                    c.mkdir(&p, mode)?;
                }
                if *opaque {
                    c.set_xattr(&p, "trusted.overlay.opaque", b"y")?;
                }
            }
            EntryKind::Symlink(t) => c.symlink(Path::new(t), &p)?,
            EntryKind::HardLink(to) => c.hard_link(&dir.join(to.trim_start_matches('/')), &p)?,
            EntryKind::Whiteout => c.whiteout(&p)?,
        }
        if let (Some(owner), false) = (
            e.owner,
            matches!(e.kind, EntryKind::HardLink(_) | EntryKind::Whiteout),
        ) {
            let mode = e.mode.filter(|_| !matches!(e.kind, EntryKind::Symlink(_)));
            give_owner(c, &p, owner, mode)?;
        }
        if !matches!(
            e.kind,
            EntryKind::Symlink(_) | EntryKind::HardLink(_) | EntryKind::Whiteout
        ) {
            for (k, v) in &e.xattrs {
                set_layer_xattr(c, &p, k, v)?;
            }
        }
    }
    Ok(())
}

/// The modification time every entry of a scenario's layer gets: the time the docker
/// backend's layer tars carry (0, the epoch), which Docker's applier sets on each entry it
/// extracts (moby 20.10 pkg/archive `createTarFile`: `system.Chtimes`, `LUtimesNano` for
/// symlinks; `UnpackLayer` sets directories' times after their contents). So two entries
/// of a layer have the same mtime, as the model has it, and a directory moved onto another
/// looks unchanged to Docker's change walker (found by `fuzz --overlay redirect_dir=on`,
/// overlay2 seed 10: the builder had left creation times, nanoseconds apart).
pub const ENTRY_MTIME: i64 = 0;

/// Sets every entry under `dir` (and `dir`) to [`ENTRY_MTIME`], contents before their
/// directory, never following a symlink.
pub fn fix_times(c: &mut Confined, dir: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if e.file_type()?.is_dir() {
            fix_times(c, &p)?;
        } else {
            c.set_times(&p, ENTRY_MTIME)?;
        }
    }
    c.set_times(dir, ENTRY_MTIME)
}

/// Sets an entry's xattr as Docker's layer applier does (moby pkg/archive, createTarFile):
/// one the filesystem does not support (EOPNOTSUPP: `user.*` on tmpfs before 6.6) is
/// skipped, noted in the log where Docker logs a warning.
fn set_layer_xattr(c: &mut Confined, p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    match c.set_xattr(p, name, value) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            c.note(format!(
                "ignored xattr {name} on {}: the filesystem does not support it",
                p.display()
            ));
            Ok(())
        }
        other => other,
    }
}

/// Copies `from` to `to` the way Docker's overlay driver builds a layer root from its
/// parent's (`copy.DirCopy(..., copy.Hardlink, true)`): regular files hard-linked,
/// directories and symlinks made anew, with no `user.*` xattrs below the root (DirCopy
/// carries `security.capability` and `trusted.overlay.opaque` only; DOCK1). The root's
/// are copied.
pub fn farm_copy(c: &mut Confined, from: &Path, to: &Path) -> io::Result<()> {
    copy_xattrs(c, from, to)?;
    copy_owner(c, &fs::symlink_metadata(from)?, to)?;
    farm_copy_dir(c, from, to)
}

fn farm_copy_dir(c: &mut Confined, from: &Path, to: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if ft.is_dir() {
            c.mkdir(&dst, m.mode() & 0o7777)?;
            copy_owner(c, &m, &dst)?;
            farm_copy_dir(c, &src, &dst)?;
        } else if ft.is_symlink() {
            c.symlink(&fs::read_link(&src)?, &dst)?;
            copy_owner(c, &m, &dst)?;
        } else {
            c.hard_link(&src, &dst)?;
        }
    }
    Ok(())
}

/// Gives `dst` the owner `(uid, gid)`, as moby's `DirCopy` and layer applier `Lchown` every
/// entry they make, then `mode` again where given: a change of owner clears a file's setuid
/// and setgid bits. Nothing to do when `dst` has that owner already.
pub fn give_owner(
    c: &mut Confined,
    dst: &Path,
    owner: (u32, u32),
    mode: Option<u32>,
) -> io::Result<()> {
    let now = fs::symlink_metadata(dst)?;
    if (now.uid(), now.gid()) == owner {
        return Ok(());
    }
    c.set_owner(dst, owner.0, owner.1)?;
    match mode {
        Some(m) => c.set_mode(dst, m),
        None => Ok(()),
    }
}

/// [`give_owner`] with the owner and mode of `m`.
pub fn copy_owner(c: &mut Confined, m: &fs::Metadata, dst: &Path) -> io::Result<()> {
    let mode = (!m.file_type().is_symlink()).then_some(m.mode() & 0o7777);
    give_owner(c, dst, (m.uid(), m.gid()), mode)
}

/// Sets `src`'s `user.*` xattrs on `dst` (the layer applier on an existing directory).
pub fn copy_user_xattrs(c: &mut Confined, src: &Path, dst: &Path) -> io::Result<()> {
    copy_xattrs(c, src, dst)
}

fn copy_xattrs(c: &mut Confined, src: &Path, dst: &Path) -> io::Result<()> {
    for name in sys::llistxattr(src)? {
        if name.starts_with("user.") {
            let v = sys::getxattr(src, &name, false)?;
            c.set_xattr(dst, &name, &v)?;
        }
    }
    Ok(())
}

/// Applies a diff in the overlayfs encoding (`staged`) onto a flattened root, as Docker's
/// layer applier does for the overlay driver: whiteouts delete, opaque directories replace,
/// files replace (unlinking first, so the parent layer's hard-linked copy is untouched).
pub fn apply_diff(c: &mut Confined, staged: &Path, root: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(staged)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = root.join(e.file_name());
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        let existing = fs::symlink_metadata(&dst).ok();
        if is_whiteout(&m) {
            if existing.is_some() {
                c.remove(&dst)?;
            }
            continue;
        }
        if ft.is_dir() {
            let opaque =
                sys::getxattr(&src, "trusted.overlay.opaque", false).is_ok_and(|v| v == b"y");
            let keep = existing.as_ref().is_some_and(|x| x.is_dir()) && !opaque;
            if !keep {
                if existing.is_some() {
                    c.remove(&dst)?;
                }
                c.mkdir(&dst, m.mode() & 0o7777)?;
            } else {
                c.set_mode(&dst, m.mode() & 0o7777)?;
            }
            copy_owner(c, &m, &dst)?;
            copy_xattrs(c, &src, &dst)?;
            apply_diff(c, &src, &dst)?;
            continue;
        }
        if existing.is_some() {
            c.remove(&dst)?;
        }
        if ft.is_symlink() && m.nlink() == 1 {
            c.symlink(&fs::read_link(&src)?, &dst)?;
            copy_owner(c, &m, &dst)?;
        } else {
            // A symlink with two names in the diff came as a tar hard link: it stays one
            // inode (DOCK6). Files of the diff are hard-linked in too: the staged diff is discarded.
            c.hard_link(&src, &dst)?;
        }
    }
    Ok(())
}

/// Whether `m` is an overlayfs whiteout (character device 0:0).
pub fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Copies a container's init upper `from` into its own upper `to` as Docker's overlay
/// driver does (moby `daemon/graphdriver/copy` `DirCopy(from, to, Content, true)`): file
/// contents copied, directories, symlinks and whiteouts made anew, hard links kept as
/// links, only the `security.capability` and `trusted.overlay.opaque` xattrs carried
/// (`doCopyXattrs`), and modification times kept (whole seconds here).
pub fn dir_copy(c: &mut Confined, from: &Path, to: &Path) -> io::Result<()> {
    let mut links = std::collections::BTreeMap::new();
    copy_owner(c, &fs::symlink_metadata(from)?, to)?;
    copy_docker_xattrs(c, from, to)?;
    dir_copy_in(c, from, to, &mut links)?;
    c.set_times(to, fs::symlink_metadata(from)?.mtime())
}

fn dir_copy_in(
    c: &mut Confined,
    from: &Path,
    to: &Path,
    links: &mut std::collections::BTreeMap<u64, std::path::PathBuf>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if !ft.is_dir() {
            if let Some(first) = links.get(&m.ino()) {
                c.hard_link(first, &dst)?;
                continue;
            }
            if m.nlink() > 1 {
                links.insert(m.ino(), dst.clone());
            }
        }
        if ft.is_dir() {
            c.mkdir(&dst, m.mode() & 0o7777)?;
            dir_copy_in(c, &src, &dst, links)?;
        } else if ft.is_symlink() {
            c.symlink(&fs::read_link(&src)?, &dst)?;
        } else if is_whiteout(&m) {
            c.whiteout(&dst)?;
        } else {
            c.write_file(&dst, m.mode() & 0o7777, &fs::read(&src)?)?;
        }
        copy_owner(c, &m, &dst)?;
        copy_docker_xattrs(c, &src, &dst)?;
        c.set_times(&dst, m.mtime())?;
    }
    Ok(())
}

/// The xattrs `DirCopy` carries (moby `doCopyXattrs`).
fn copy_docker_xattrs(c: &mut Confined, src: &Path, dst: &Path) -> io::Result<()> {
    for name in ["security.capability", "trusted.overlay.opaque"] {
        if let Ok(v) = sys::getxattr(src, name, false) {
            c.set_xattr(dst, name, &v)?;
        }
    }
    Ok(())
}
