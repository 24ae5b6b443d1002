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

/// The merged root of a running container (inspect's `GraphDriver.Data.MergedDir`).
fn merged_dir(d: &Daemon, id: &str) -> io::Result<PathBuf> {
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
    c.graph_driver
        .and_then(|g| g.data.get("MergedDir").cloned())
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::other("inspect gave no GraphDriver.Data.MergedDir"))
}

/// `docker create --network none -v <busybox>:/dev/busybox:ro <image> /dev/busybox sleep
/// infinity` and `docker start`; returns the container's id and merged root.
pub fn create_and_start(d: &Daemon, image: &str, busybox: &Path) -> io::Result<(String, PathBuf)> {
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
    let merged = merged_dir(d, &id)?;
    Ok((id, merged))
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
/// it again. Returns the merged root.
pub fn restart(d: &Daemon, id: &str) -> io::Result<PathBuf> {
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
    merged_dir(d, id)
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

/// Runs a file step chrooted in `merged` on the sandbox thread (the daemon's namespace).
pub fn file_op(d: &Daemon, merged: &Path, op: FileOp) -> Outcome {
    let merged = merged.to_path_buf();
    d.sandbox.run(move |inside| {
        if let Err(e) = inside.real_root.enter(&merged) {
            panic!("cannot chroot into {}: {e}", merged.display());
        }
        crate::ops::run(&op)
    })
}
