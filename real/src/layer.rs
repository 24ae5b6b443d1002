//! Writing image layers to disk in overlayfs's encoding, as a layer applied by Docker looks:
//! whiteouts as character devices 0:0, opaque directories with `trusted.overlay.opaque=y`
//! (OVL1, OVL2); and overlay's hard-link farms (DOCK1).

use crate::sys::{self, Log};
use layerspec_model::{Content, EntryKind, LayerSpec};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` with `mode` (umask is 0 on the sandbox thread).
pub fn mkdir(log: &mut Log, dir: &Path, mode: u32) -> io::Result<()> {
    log.note(format!("mkdir -m {mode:o} {}", dir.display()));
    fs::DirBuilder::new().mode(mode).create(dir)
}

/// Writes a regular file with `mode`.
pub fn write_file(log: &mut Log, path: &Path, mode: u32, data: &[u8]) -> io::Result<()> {
    log.note(format!(
        "write {} ({} bytes, mode {mode:o})",
        path.display(),
        data.len()
    ));
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    // An explicit chmod: setuid/setgid/sticky bits are not kept by open's mode on all
    // filesystems.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Writes a regular file with `mode` holding an entry's contents, streamed.
pub fn write_content_file(log: &mut Log, path: &Path, mode: u32, data: &Content) -> io::Result<()> {
    log.note(format!(
        "write {} ({} bytes, mode {mode:o})",
        path.display(),
        data.len()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    crate::content::write_content(&mut f, data)?;
    // An explicit chmod: setuid/setgid/sticky bits are not kept by open's mode on all
    // filesystems.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn ensure_parents(log: &mut Log, root: &Path, rel: &str) -> io::Result<()> {
    let mut cur = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        if fs::symlink_metadata(&cur).is_err() {
            mkdir(log, &cur, 0o755)?;
        }
    }
    Ok(())
}

/// Writes a layer's entries into `dir` (an overlay2 `diff`, or a staging directory) in the
/// overlayfs encoding.
pub fn write_entries(log: &mut Log, dir: &Path, spec: &LayerSpec) -> io::Result<()> {
    for e in &spec.entries {
        let rel = e.path.trim_start_matches('/');
        if rel.is_empty() {
            if let Some(m) = e.mode {
                fs::set_permissions(dir, fs::Permissions::from_mode(m))?;
            }
            for (k, v) in &e.xattrs {
                set_layer_xattr(log, dir, k, v)?;
            }
            continue;
        }
        ensure_parents(log, dir, rel)?;
        let p = dir.join(rel);
        match &e.kind {
            EntryKind::File(c) => write_content_file(log, &p, e.mode.unwrap_or(0o644), c)?,
            EntryKind::Dir { opaque } => {
                let mode = e.mode.unwrap_or(0o755);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
                } else {
                    mkdir(log, &p, mode)?;
                }
                if *opaque {
                    sys::lsetxattr(log, &p, "trusted.overlay.opaque", b"y")?;
                }
            }
            EntryKind::Symlink(t) => {
                log.note(format!("ln -s {t} {}", p.display()));
                symlink(t, &p)?;
            }
            EntryKind::HardLink(to) => {
                log.note(format!("ln {to} {}", p.display()));
                fs::hard_link(dir.join(to.trim_start_matches('/')), &p)?;
            }
            EntryKind::Whiteout => sys::mknod_whiteout(log, &p)?,
        }
        if !matches!(
            e.kind,
            EntryKind::Symlink(_) | EntryKind::HardLink(_) | EntryKind::Whiteout
        ) {
            for (k, v) in &e.xattrs {
                set_layer_xattr(log, &p, k, v)?;
            }
        }
    }
    Ok(())
}

/// Sets an entry's xattr as Docker's layer applier does (moby pkg/archive, createTarFile):
/// one the filesystem does not support (EOPNOTSUPP: `user.*` on tmpfs before 6.6) is
/// skipped, noted in the log where Docker logs a warning.
fn set_layer_xattr(log: &mut Log, p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    match sys::lsetxattr(log, p, name, value) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            log.note(format!(
                "ignored xattr {name} on {}: the filesystem does not support it",
                p.display()
            ));
            Ok(())
        }
        other => other,
    }
}

/// Copies `from` to `to` the way Docker's overlay driver builds a layer root from its
/// parent's: regular files hard-linked, directories and symlinks made anew, xattrs of
/// every directory (the root's too) copied (DOCK1).
pub fn farm_copy(log: &mut Log, from: &Path, to: &Path) -> io::Result<()> {
    copy_xattrs(log, from, to)?;
    farm_copy_dir(log, from, to)
}

fn farm_copy_dir(log: &mut Log, from: &Path, to: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if ft.is_dir() {
            mkdir(log, &dst, m.mode() & 0o7777)?;
            copy_xattrs(log, &src, &dst)?;
            farm_copy_dir(log, &src, &dst)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else {
            fs::hard_link(&src, &dst)?;
        }
    }
    Ok(())
}

/// Sets `src`'s `user.*` xattrs on `dst` (the layer applier on an existing directory).
pub fn copy_user_xattrs(log: &mut Log, src: &Path, dst: &Path) -> io::Result<()> {
    copy_xattrs(log, src, dst)
}

fn copy_xattrs(log: &mut Log, src: &Path, dst: &Path) -> io::Result<()> {
    for name in sys::llistxattr(src)? {
        if name.starts_with("user.") {
            let v = sys::getxattr(src, &name, false)?;
            sys::lsetxattr(log, dst, &name, &v)?;
        }
    }
    Ok(())
}

/// Applies a diff in the overlayfs encoding (`staged`) onto a flattened root, as Docker's
/// layer applier does for the overlay driver: whiteouts delete, opaque directories replace,
/// files replace (unlinking first, so the parent layer's hard-linked copy is untouched).
pub fn apply_diff(log: &mut Log, staged: &Path, root: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(staged)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = root.join(e.file_name());
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        let existing = fs::symlink_metadata(&dst).ok();
        if is_whiteout(&m) {
            remove_any(log, &dst, existing.as_ref())?;
            continue;
        }
        if ft.is_dir() {
            let opaque =
                sys::getxattr(&src, "trusted.overlay.opaque", false).is_ok_and(|v| v == b"y");
            let keep = existing.as_ref().is_some_and(|x| x.is_dir()) && !opaque;
            if !keep {
                remove_any(log, &dst, existing.as_ref())?;
                mkdir(log, &dst, m.mode() & 0o7777)?;
            } else {
                fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
            }
            copy_xattrs(log, &src, &dst)?;
            apply_diff(log, &src, &dst)?;
            continue;
        }
        remove_any(log, &dst, existing.as_ref())?;
        if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else {
            // Files of the diff are hard-linked in too: the staged diff is discarded.
            log.note(format!("ln {} {}", src.display(), dst.display()));
            fs::hard_link(&src, &dst)?;
        }
    }
    Ok(())
}

fn remove_any(log: &mut Log, p: &Path, m: Option<&fs::Metadata>) -> io::Result<()> {
    match m {
        None => Ok(()),
        Some(m) if m.is_dir() => {
            log.note(format!("rm -r {}", p.display()));
            fs::remove_dir_all(p)
        }
        Some(_) => {
            log.note(format!("rm {}", p.display()));
            fs::remove_file(p)
        }
    }
}

/// Whether `m` is an overlayfs whiteout (character device 0:0).
pub fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}
