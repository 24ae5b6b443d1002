//! Measuring copy-up on the real side: which steps made the kernel copy a file's data into
//! the writable layer, and how many bytes. overlayfs leaves no record of that (a hard-linked
//! lower file is copied up without an origin xattr), so each step that may copy up is
//! watched: the file's size through the merged view and whether the upper layer held its
//! data, before and after.

use crate::sys;
use layerspec_model::FileOp;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What is watched for one step.
pub struct Watch {
    /// The file's canonical path in the container before the step.
    pub before: PathBuf,
    /// Its size through the merged view before the step.
    pub size: u64,
    /// Where it will be after the step, resolved before it: a rename's destination, whose
    /// parent path may pass through the very symlink the rename replaces (`rename /d /c/c`
    /// with `/c -> /`: found by `fuzz --overlay redirect_dir=on`, overlay2 seed 13).
    pub after: Option<PathBuf>,
}

fn canonical(path: &str, follow: bool) -> Option<PathBuf> {
    let p = Path::new(path);
    if follow {
        return fs::canonicalize(p).ok();
    }
    let parent = fs::canonicalize(p.parent()?).ok()?;
    Some(parent.join(p.file_name()?))
}

/// Inside the container's root: the file a copying step acts on, if any.
pub fn before(op: &FileOp) -> Option<Watch> {
    let op = op.bare();
    let (path, follow) = match op {
        FileOp::Write { path, .. }
        | FileOp::Append { path, .. }
        | FileOp::Truncate { path, .. }
        | FileOp::Chmod { path, .. }
        | FileOp::Utimes { path, .. }
        | FileOp::Chown { path, .. }
        | FileOp::Setxattr { path, .. }
        | FileOp::Removexattr { path, .. } => (path, true),
        FileOp::Link { from, .. } | FileOp::Rename { from, .. } => (from, false),
        FileOp::Open { path, flags, .. } if flags.write || flags.trunc => (path, !flags.nofollow),
        _ => return None,
    };
    let before = canonical(path, follow)?;
    let m = fs::symlink_metadata(&before).ok()?;
    // `O_TRUNC` copies the file up without its data (measured on 6.18): nothing is copied.
    let truncating = matches!(op, FileOp::Open { flags, .. } if flags.trunc);
    let after = match op {
        FileOp::Rename { to, .. } => canonical(to, false),
        _ => Some(before.clone()),
    };
    m.is_file().then_some(Watch {
        before,
        size: if truncating { 0 } else { m.size() },
        after,
    })
}

/// Outside: whether the upper layer holds the data of the file at `p` (container path).
pub fn in_upper(upper: &Path, p: &Path) -> bool {
    let u = upper.join(p.strip_prefix("/").unwrap_or(p));
    fs::symlink_metadata(&u).is_ok_and(|m| m.is_file())
        && sys::getxattr(&u, "trusted.overlay.metacopy", false).is_err()
}

/// Outside, after the step: the upper inode and the bytes copied, when the step brought the
/// file's data up and it was not counted before (a second name of an indexed inode).
pub fn measure(
    upper: &Path,
    w: &Watch,
    pre: bool,
    after: &Path,
    counted: &(BTreeSet<u64>, u64),
) -> Option<(u64, u64)> {
    if pre || !in_upper(upper, after) {
        return None;
    }
    let m = fs::symlink_metadata(upper.join(after.strip_prefix("/").unwrap_or(after))).ok()?;
    let key = inode_key(&m);
    (!counted.0.contains(&key)).then_some((key, w.size))
}

/// An upper inode's identity over the run: its number and its birth time. ext4 gives a
/// freed inode's number to the next file made (tmpfs does not), so a file copied up after
/// another was unlinked can have the number the counted one had (`fuzz --ext4 1M --seed 1`,
/// trace 9: a copy-up not counted). Without a birth time (FUSE), the number alone.
fn inode_key(m: &fs::Metadata) -> u64 {
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    m.ino() ^ born.rotate_left(32)
}

/// Runs file step `op` on the sandbox thread chrooted in the container's merged root
/// `merged`, watching copy-up: the watched file is looked up in the container before the
/// step, its upper copy from the backing root (`backing`, where `upper` is absolute) before
/// and after. Returns the outcome and, when the step copied a file's data up that
/// `counted` had not counted, its upper inode and the bytes. The thread is left chrooted
/// in `backing`. Shared by the kernel/fuse drivers and the docker driver.
pub fn watched_step(
    inside: &mut crate::sandbox::Inside,
    merged: &Path,
    backing: &Path,
    upper: &Path,
    op: &FileOp,
    watch: bool,
    counted: &(BTreeSet<u64>, u64),
) -> (layerspec_model::Outcome, Option<(u64, u64)>) {
    let enter = |inside: &mut crate::sandbox::Inside, dir: &Path| {
        if let Err(e) = inside.real_root.enter(dir) {
            panic!("cannot chroot into {}: {e}", dir.display());
        }
    };
    enter(inside, merged);
    let w = if watch { before(op) } else { None };
    enter(inside, backing);
    let pre = w.as_ref().map(|w| in_upper(upper, &w.before));
    enter(inside, merged);
    let out = crate::ops::run(op);
    // A rename that failed after copying its source up (ENOSPC for the whiteout's inode:
    // `fuzz --ext4 4M:128 --seed 1`, trace 83) left the copy at the old name.
    let after = w.as_ref().and_then(|w| match out {
        Err(_) => Some(w.before.clone()),
        Ok(_) => w.after.clone(),
    });
    enter(inside, backing);
    let copied = match (w, pre, after) {
        (Some(w), Some(pre), Some(after)) => measure(upper, &w, pre, &after, counted),
        _ => None,
    };
    (out, copied)
}
