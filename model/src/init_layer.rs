//! Docker's `<container>-init` layer: the layer every container of an image gets between
//! the image and its own writable layer (DOCK4, DOCK5).
//!
//! moby 20.10 `layer/layer_store.go` `CreateRWLayer` → `initMount`: the driver creates a
//! read-write layer `<id>-init` on the image's top layer (`CreateReadWrite`), mounts it
//! (`Get`), runs `daemon/initlayer/setup_unix.go` `Setup` on the mount, and unmounts it
//! (`Put`); the container's own layer is then created with the init layer as its parent.
//!
//! `Setup` makes the paths a container runtime mounts over (`/proc`, `/sys`, `/dev/*`,
//! `/etc/hosts`, …). For each, it first unlinks every component of the path (so an image's
//! file or symlink there is removed, a directory stays), then, when the path does not
//! exist, makes its parents (`MkdirAll`, 0755) and the path: a directory (0755), an empty
//! file (`os.OpenFile(O_CREATE, 0755)`), or the symlink `/etc/mtab -> /proc/mounts`. The
//! daemon runs with umask 022, which leaves these modes as they are.
//!
//! [`setup`] is that function once, as a list of system calls given to a step runner: the
//! model runs it on its own container, the real drivers on the mounted init layer, so the
//! calls are the same on both sides and each side's filesystem decides what they do. Go
//! walks `Setup`'s map in random order; the spec takes the order of the source (the final
//! tree is the same in any order).

use crate::errno::Errno;
use crate::step::{FileOp, Outcome, Value};

/// The init layer's id for container `id` (moby `CreateRWLayer`: `initID := fmt.Sprintf("%s-init", ...)`).
pub fn init_layer_id(container: &str) -> String {
    format!("{container}-init")
}

/// What `Setup` makes at a path.
#[derive(Clone, Copy)]
enum Make {
    Dir,
    File,
    Symlink(&'static str),
}

/// `Setup`'s table, in the order of moby 20.10's source.
const SETUP: [(&str, Make); 10] = [
    ("/dev/pts", Make::Dir),
    ("/dev/shm", Make::Dir),
    ("/proc", Make::Dir),
    ("/sys", Make::Dir),
    ("/.dockerenv", Make::File),
    ("/etc/resolv.conf", Make::File),
    ("/etc/hosts", Make::File),
    ("/etc/hostname", Make::File),
    ("/dev/console", Make::File),
    ("/etc/mtab", Make::Symlink("/proc/mounts")),
];

/// The mode `Setup` gives what it makes (0755, under the daemon's umask 022).
const MODE: u32 = 0o755;

/// Runs `Setup` through `run`, a step runner on the mounted init layer. An error it
/// returns (moby returns it from `CreateRWLayer`, and the container is not created) is the
/// errno of the call that failed.
pub fn setup(mut run: impl FnMut(&FileOp) -> Outcome) -> Result<(), Errno> {
    for (path, make) in SETUP {
        // `unix.Unlink` of every component, its error ignored.
        let mut prefix = String::new();
        for part in path.split('/').skip(1) {
            prefix.push('/');
            prefix.push_str(part);
            let _ = run(&FileOp::Unlink {
                path: prefix.clone(),
            });
        }
        // `os.Stat(path)`: every component left is a directory (files and symlinks were
        // unlinked), so lstat sees what stat would.
        match run(&FileOp::Stat { path: path.into() }) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent = crate::path::parent(path);
        mkdir_all(&mut run, parent)?;
        let op = match make {
            Make::Dir => FileOp::Mkdir {
                path: path.into(),
                mode: Some(MODE),
            },
            Make::File => FileOp::Create {
                path: path.into(),
                mode: Some(MODE),
            },
            Make::Symlink(target) => FileOp::Symlink {
                target: target.into(),
                path: path.into(),
            },
        };
        run(&op)?;
    }
    Ok(())
}

/// Go's `os.MkdirAll(path, 0755)`: each missing component made, an existing non-directory
/// ENOTDIR.
pub(crate) fn mkdir_all(run: &mut impl FnMut(&FileOp) -> Outcome, path: &str) -> Result<(), Errno> {
    let mut prefix = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        match run(&FileOp::Stat {
            path: prefix.clone(),
        }) {
            Ok(Value::Stat(s)) if s.kind == crate::step::Kind::Dir => {}
            Ok(_) => return Err(Errno::ENOTDIR),
            Err(Errno::ENOENT) => {
                run(&FileOp::Mkdir {
                    path: prefix.clone(),
                    mode: Some(MODE),
                })?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
