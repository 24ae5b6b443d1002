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
use layerspec_model::{Change, ChangeKind, FileOp, Outcome};
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

/// The merged root and the writable layer of a running container (inspect's
/// `GraphDriver.Data.MergedDir` and `UpperDir`).
fn dirs(d: &Daemon, id: &str) -> io::Result<Dirs> {
    let c =
        d.rt.block_on(d.client.inspect_container(id, None))
            .map_err(api)?;
    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    if !running {
        return Err(io::Error::other(format!(
            "the container is not running: {:?}",
            c.state
        )));
    }
    let data = c.graph_driver.map(|g| g.data).unwrap_or_default();
    let get = |k: &str| {
        data.get(k)
            .map(PathBuf::from)
            .ok_or_else(|| io::Error::other(format!("inspect gave no GraphDriver.Data.{k}")))
    };
    Ok(Dirs {
        merged: get("MergedDir")?,
        upper: get("UpperDir")?,
    })
}

/// Where a running container's root is.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// The merged root, as the sandbox thread sees it.
    pub merged: PathBuf,
    /// The writable layer.
    pub upper: PathBuf,
}

/// `docker create --network none -v <busybox>:/dev/busybox:ro <image> /dev/busybox sleep
/// infinity` and `docker start`; returns the container's id and directories.
pub fn create_and_start(d: &Daemon, image: &str, busybox: &Path) -> io::Result<(String, Dirs)> {
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
    d.rt.block_on(
        d.client
            .start_container(&id, None::<StartContainerOptions<String>>),
    )
    .map_err(api)?;
    let dirs = dirs(d, &id)?;
    Ok((id, dirs))
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

/// `docker stop -t 0` and `docker start`: Docker unmounts the container's root and mounts
/// it again. Returns the container's directories.
pub fn restart(d: &Daemon, id: &str) -> io::Result<Dirs> {
    d.rt.block_on(
        d.client
            .stop_container(id, Some(StopContainerOptions { t: 0 })),
    )
    .map_err(api)?;
    d.rt.block_on(
        d.client
            .start_container(id, None::<StartContainerOptions<String>>),
    )
    .map_err(api)?;
    dirs(d, id)
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
        let upper = match dirs.upper.strip_prefix(&backing) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => panic!(
                "{} is not under {}",
                dirs.upper.display(),
                backing.display()
            ),
        };
        crate::copy_up::watched_step(inside, &dirs.merged, &backing, &upper, &op, true, &counted)
    })
}
