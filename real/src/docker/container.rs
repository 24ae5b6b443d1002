//! The Engine API calls: load, create and start, commit, diff, stop and start, remove; and
//! file steps in a container's merged root.

use super::daemon::Daemon;
use bollard::container::{
    Config, CreateContainerOptions, RemoveContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use bollard::image::{CommitContainerOptions, ImportImageOptions};
use bollard::models::{ChangeType, HostConfig};
use futures_util::StreamExt;
use layerspec_model::{Change, ChangeKind, Errno, FileOp, Outcome};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

/// Where the idle binary is bind-mounted in a container: under `/dev`, which runc backs
/// with a tmpfs, so the mount point is not made in the container's layers.
const IDLE: &str = "/dev/busybox";

fn api(e: bollard::errors::Error) -> io::Error {
    io::Error::other(format!("{e:?}"))
}

/// `docker load` of a `docker save` archive.
pub fn load(d: &Daemon, archive: Vec<u8>) -> io::Result<()> {
    d.rt.block_on(async {
        let mut s = d.client.import_image(
            ImportImageOptions { quiet: true },
            bytes::Bytes::from(archive),
            None,
        );
        while let Some(r) = s.next().await {
            let info = r.map_err(api)?;
            if let Some(e) = info.error {
                return Err(io::Error::other(e));
            }
        }
        Ok(())
    })
}

/// The merged root and the writable layer of a container (inspect's
/// `GraphDriver.Data.MergedDir` and `UpperDir`; devicemapper: `<data root>/devicemapper/
/// mnt/<mount id>/rootfs`, the mount id ending `GraphDriver.Data.DeviceName`, and no
/// writable layer of its own); `must_run`: it must be running.
fn dirs(d: &Daemon, id: &str, must_run: bool) -> io::Result<Dirs> {
    let c =
        d.rt.block_on(d.client.inspect_container(id, None))
            .map_err(api)?;
    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    if must_run && !running {
        return Err(io::Error::other(format!(
            "the container is not running: {:?}",
            c.state
        )));
    }
    let graph = c.graph_driver.unwrap_or_default();
    let get = |k: &str| {
        graph
            .data
            .get(k)
            .map(PathBuf::from)
            .ok_or_else(|| io::Error::other(format!("inspect gave no GraphDriver.Data.{k}")))
    };
    if graph.name == "devicemapper" {
        let device = get("DeviceName")?.display().to_string();
        let mount_id = device
            .rsplit('-')
            .next()
            .filter(|m| m.len() == 64 && m.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| io::Error::other(format!("device name `{device}` ends in no id")))?;
        return Ok(Dirs {
            merged: d
                .data_root
                .join("devicemapper/mnt")
                .join(mount_id)
                .join("rootfs"),
            upper: None,
        });
    }
    Ok(Dirs {
        merged: get("MergedDir")?,
        upper: Some(get("UpperDir")?),
    })
}

/// Where a running container's root is.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// The merged root, as the sandbox thread sees it.
    pub merged: PathBuf,
    /// The writable layer (`None`: devicemapper, where the container's device is its
    /// root and nothing is copied up).
    pub upper: Option<PathBuf>,
}

/// `docker create --network none -v <busybox>:/dev/busybox:ro <image> /dev/busybox sleep
/// infinity`; returns the container's id.
pub fn create(d: &Daemon, image: &str, busybox: &Path) -> io::Result<String> {
    let config = Config {
        image: Some(image.to_string()),
        cmd: Some(vec![IDLE.into(), "sleep".into(), "infinity".into()]),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            binds: Some(vec![format!("{}:{IDLE}:ro", busybox.display())]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id =
        d.rt.block_on(
            d.client
                .create_container(None::<CreateContainerOptions<String>>, config),
        )
        .map_err(api)?
        .id;
    Ok(id)
}

/// A start the daemon refused: its message, and the errno it names.
#[derive(Debug)]
pub struct StartFailed {
    /// The daemon's message.
    pub message: String,
    /// The errno the message names ([`errno_of`]), if any.
    pub errno: Option<Errno>,
}

/// `docker start`: the container's directories, or the daemon's refusal (status 500 or 400:
/// the start itself failed, in dockerd or runc) with the container left stopped and its
/// directories.
pub fn start(d: &Daemon, id: &str) -> io::Result<Result<Dirs, (StartFailed, Dirs)>> {
    let r = d.rt.block_on(
        d.client
            .start_container(id, None::<StartContainerOptions<String>>),
    );
    match r {
        Ok(()) => Ok(Ok(dirs(d, id, true)?)),
        // 400 when runc's message asks "Are you trying to mount a directory onto a file",
        // which moby classes as the caller's error (`daemon/errors.go`: `translateContainerdStartErr`).
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 400 | 500,
            message,
        }) => {
            let errno = errno_of(&message);
            Ok(Err((StartFailed { message, errno }, dirs(d, id, false)?)))
        }
        Err(e) => Err(api(e)),
    }
}

/// The errno a failed start's message names. dockerd's and runc's messages end in Go's
/// text of the system call's errno (`syscall.Errno.Error`, the C library's `strerror`);
/// two have no errno and are read as the model names them: moby's "evalSymlinksInScope:
/// too many links" (ELOOP), runc's "must be mounted on ordinary directory" (ENOTDIR).
pub fn errno_of(message: &str) -> Option<Errno> {
    const TEXTS: [(&str, Errno); 6] = [
        ("too many links in", Errno::ELOOP),
        ("too many levels of symbolic links", Errno::ELOOP),
        ("must be mounted on ordinary directory", Errno::ENOTDIR),
        ("is a directory", Errno::EISDIR),
        ("not a directory", Errno::ENOTDIR),
        ("no such file or directory", Errno::ENOENT),
    ];
    TEXTS
        .iter()
        .find(|(text, _)| message.contains(text))
        .map(|(_, e)| *e)
}

/// `docker commit` (not paused: the container's process does nothing) tagged `reference`;
/// returns the new image's diff ids.
pub fn commit(d: &Daemon, id: &str, reference: &str) -> io::Result<Vec<String>> {
    let (repo, tag) = reference.split_once(':').expect("repo:tag");
    d.rt.block_on(d.client.commit_container(
        CommitContainerOptions {
            container: id,
            repo,
            tag,
            pause: false,
            ..Default::default()
        },
        Config::<String>::default(),
    ))
    .map_err(api)?;
    let img =
        d.rt.block_on(d.client.inspect_image(reference))
            .map_err(api)?;
    img.root_fs
        .and_then(|r| r.layers)
        .ok_or_else(|| io::Error::other("inspect gave no RootFS.Layers"))
}

/// `docker diff`, sorted by path.
pub fn changes(d: &Daemon, id: &str) -> io::Result<Vec<Change>> {
    let list =
        d.rt.block_on(d.client.container_changes(id))
            .map_err(api)?
            .unwrap_or_default();
    let mut out: Vec<Change> = list
        .into_iter()
        .map(|c| Change {
            path: c.path,
            kind: match c.kind {
                ChangeType::_0 => ChangeKind::C,
                ChangeType::_1 => ChangeKind::A,
                ChangeType::_2 => ChangeKind::D,
            },
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// `docker stop -t 0`: Docker unmounts the container's root.
pub fn stop(d: &Daemon, id: &str) -> io::Result<()> {
    d.rt.block_on(
        d.client
            .stop_container(id, Some(StopContainerOptions { t: 0 })),
    )
    .map_err(api)
}

/// `docker rm -f`.
pub fn remove(d: &Daemon, id: &str) -> io::Result<()> {
    d.rt.block_on(d.client.remove_container(
        id,
        Some(RemoveContainerOptions {
            force: true,
            ..Default::default()
        }),
    ))
    .map_err(api)
}

/// Runs a file step chrooted in the merged root on the sandbox thread (the daemon's
/// namespace), watching copy-up as the kernel backend does (`copy_up.rs`): the upper layer
/// is looked at chrooted in the backing filesystem. Returns the outcome and, when the step
/// brought a file's data up, its upper inode and the bytes copied.
pub fn file_op(
    d: &Daemon,
    dirs: &Dirs,
    op: FileOp,
    counted: (BTreeSet<u64>, u64),
) -> (Outcome, Option<(u64, u64)>) {
    let dirs = dirs.clone();
    d.sandbox.run(move |inside| {
        let backing = inside.root.clone();
        let Some(upper) = &dirs.upper else {
            // devicemapper: nothing to copy up.
            let out = inside
                .real_root
                .within(&dirs.merged, || crate::ops::run(&op))
                .unwrap_or_else(|e| panic!("chroot into {}: {e}", dirs.merged.display()));
            return (out, None);
        };
        let upper = match upper.strip_prefix(&backing) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => panic!("{} is not under {}", upper.display(), backing.display()),
        };
        crate::copy_up::watched_step(inside, &dirs.merged, &backing, &upper, &op, true, &counted)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals dockerd 20.10.24 and runc 1.1.5 gave here (paths shortened).
    #[test]
    fn start_refusals_seen_here_name_their_errno() {
        let seen = [
            ("lstat /d/merged/etc/passwd: not a directory", Errno::ENOTDIR),
            ("evalSymlinksInScope: too many links in /d/merged/etc/passwd", Errno::ELOOP),
            ("unable to find user 0: read /d/merged/etc/passwd: is a directory", Errno::EISDIR),
            ("failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: unable to setup user: unable to find groups for spec : read /etc/group: is a directory: unknown", Errno::EISDIR),
            ("failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"proc\" to rootfs at \"/proc\": filesystem \"proc\" must be mounted on ordinary directory: unknown", Errno::ENOTDIR),
            ("error mounting \"tmpfs\" to rootfs at \"/dev\": mount tmpfs:/dev (via /proc/self/fd/6), flags: 0x1000002, data: mode=755,size=65536k: not a directory: unknown: Are you trying to mount a directory onto a file (or vice-versa)? Check if the specified host path exists and is the expected type", Errno::ENOTDIR),
        ];
        for (message, errno) in seen {
            assert_eq!(errno_of(message), Some(errno), "{message}");
        }
        assert_eq!(errno_of("context deadline exceeded"), None);
    }
}
