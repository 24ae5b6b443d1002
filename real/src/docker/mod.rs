//! Backend `docker`: Docker 20.10's own graphdrivers (overlay2, overlay) behind a private
//! `dockerd` (README, "The docker backend"): images by `docker load`, containers by `docker
//! create`/`start` (so Docker makes the `-init` layer and mounts the merged root), `docker
//! commit`, `docker diff`, stop + start, `docker rm -f`. File steps run chrooted in the
//! mounted merged root, as on the kernel backend.
//!
//! Modules: `daemon` (starting and stopping dockerd in a sandbox), `image` (the `docker
//! save` archives), `container` (the API calls), `observe` (the driver root with Docker's
//! ids mapped to the model's).

mod container;
mod daemon;
mod image;
mod observe;

pub use daemon::PID_FILE;

use crate::sandbox::BackingFs;
use daemon::Daemon;
use layerspec_model::{
    Driver, DriverError, DriverKind, FileOp, KernelVersion, LayerSpec, Observation, Op, Outcome,
    StepError, Value,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// An image layer as the daemon has it.
#[derive(Clone, Debug)]
struct ImageRec {
    /// `layerspec:<tag>`.
    reference: String,
    diff_ids: Vec<String>,
    /// Made as the n-th image (a layer shared by two images keeps the first one's name).
    seq: usize,
}

#[derive(Clone, Debug)]
struct ContainerRec {
    id: String,
    /// Docker's container id.
    docker_id: String,
    /// Its merged root and writable layer.
    dirs: container::Dirs,
    /// Its start failed: not running, its root not mounted.
    stopped: bool,
}

/// A real Docker daemon's overlay or overlay2 driver.
pub struct DockerDriver {
    kind: DriverKind,
    daemon: Daemon,
    layers: BTreeMap<String, ImageRec>,
    containers: Vec<ContainerRec>,
    /// devicemapper's containers removed: model id and Docker's mount ids (its own, its
    /// init layer's), to name them where Docker still does.
    removed: Vec<(String, (String, String))>,
    /// Per container: upper inodes whose copy-up was counted (number and birth time,
    /// `copy_up::measure`), and the bytes copied.
    copied: BTreeMap<String, (BTreeSet<u64>, u64)>,
    busybox: PathBuf,
    kernel: KernelVersion,
}

impl DockerDriver {
    /// Starts a daemon with `--storage-driver <kind>` on `backing`.
    pub fn new(kind: DriverKind, backing: BackingFs) -> Result<Self, String> {
        if !matches!(
            kind,
            DriverKind::Overlay | DriverKind::Overlay2 | DriverKind::Devicemapper
        ) {
            return Err(format!("the docker backend has no {kind} here"));
        }
        let busybox = crate::probe::docker_missing()?;
        let kernel = crate::probe::kernel_version().map_err(|e| e.to_string())?;
        let daemon =
            Daemon::start(kind.name(), backing).map_err(|e| format!("starting dockerd: {e}"))?;
        Ok(DockerDriver {
            kind,
            daemon,
            layers: BTreeMap::new(),
            containers: Vec::new(),
            removed: Vec::new(),
            copied: BTreeMap::new(),
            busybox,
            kernel,
        })
    }

    /// The image reference of model layer `id`: `layerspec:<id>` when `id` is a valid tag,
    /// else `layerspec:layer-<n>`.
    fn reference_for(&self, id: &str) -> String {
        let ok = id.len() <= 128
            && id
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            format!("layerspec:{id}")
        } else {
            format!("layerspec:layer-{}", self.layers.len())
        }
    }

    fn container(&self, id: Option<&str>) -> Result<ContainerRec, StepError> {
        crate::pick_container(&self.containers, id, |c| c.id.as_str())
    }

    /// A file step in running container `c`, its copy-up counted.
    fn file_op(&mut self, c: &ContainerRec, op: &FileOp) -> Outcome {
        let counted = self.copied.entry(c.id.clone()).or_default().clone();
        let (out, copied) = container::file_op(&self.daemon, &c.dirs, op.clone(), counted);
        if let Some((ino, bytes)) = copied {
            let set = self.copied.get_mut(&c.id).expect("entry made above");
            set.0.insert(ino);
            set.1 += bytes;
        }
        out
    }

    /// The outcome of a start of container `id`: a refusal the daemon gave with an errno is
    /// that errno (the container stays, stopped); one without is the backend's error.
    fn started(
        &self,
        id: &str,
        out: Result<(), container::StartFailed>,
    ) -> Result<Outcome, DriverError> {
        match out {
            Ok(()) => Ok(Ok(Value::Unit)),
            Err(container::StartFailed { errno: Some(e), .. }) => Ok(Err(e)),
            Err(container::StartFailed { message, .. }) => Err(self.backend_err(
                &format!("docker start `{id}`"),
                format!("a refusal naming no errno: {message}"),
            )),
        }
    }

    fn backend_err(&self, what: &str, e: impl std::fmt::Display) -> DriverError {
        DriverError::Backend(format!(
            "{what}: {e}\ndockerd's log ends:\n{}",
            self.daemon.log_tail()
        ))
    }
}

impl Driver for DockerDriver {
    fn kind(&self) -> DriverKind {
        self.kind
    }

    fn backend(&self) -> &'static str {
        "docker"
    }

    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    fn set_init_layers(&mut self, on: bool) -> Result<(), String> {
        if on {
            Ok(())
        } else {
            Err(crate::NO_INIT_LAYER_ON_DOCKER.into())
        }
    }

    fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), DriverError> {
        layerspec_model::validate_layer(spec)?;
        if self.layers.contains_key(&spec.id) {
            return Err(StepError::LayerExists(spec.id.clone()).into());
        }
        let parent_ids = match &spec.parent {
            Some(p) => match self.layers.get(p) {
                Some(l) => l.diff_ids.clone(),
                None => return Err(StepError::NoLayer(p.clone()).into()),
            },
            None => Vec::new(),
        };
        let reference = self.reference_for(&spec.id);
        let tar =
            image::layer_tar(spec).map_err(|e| self.backend_err("building the layer tar", e))?;
        let (archive, diff_ids) = image::save_archive(&parent_ids, &tar, &reference)
            .map_err(|e| self.backend_err("building the image archive", e))?;
        container::load(&self.daemon, archive)
            .map_err(|e| self.backend_err(&format!("docker load of `{}`", spec.id), e))?;
        self.layers.insert(
            spec.id.clone(),
            ImageRec {
                seq: self.layers.len(),
                reference,
                diff_ids,
            },
        );
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<Outcome, DriverError> {
        layerspec_model::check_op_ids(op)?;
        match op {
            Op::File { container, op } => {
                let c = self.container(container.as_deref())?;
                if c.stopped {
                    // Its merged directory is not mounted: a step there would write to the
                    // backing filesystem.
                    return Err(StepError::NotRunning(c.id).into());
                }
                Ok(self.file_op(&c, op))
            }
            Op::CreateContainer { id, image } => {
                if self.containers.iter().any(|c| c.id == *id) || self.layers.contains_key(id) {
                    return Err(StepError::ContainerExists(id.to_string()).into());
                }
                let Some(image) = image else {
                    return Err(DriverError::Backend(
                        "Docker makes no container without an image".into(),
                    ));
                };
                let reference = match self.layers.get(image) {
                    Some(l) => l.reference.clone(),
                    None => return Err(StepError::NoLayer(image.clone()).into()),
                };
                let docker_id = container::create(&self.daemon, &reference, &self.busybox)
                    .map_err(|e| self.backend_err(&format!("creating `{id}`"), e))?;
                let started = container::start(&self.daemon, &docker_id)
                    .map_err(|e| self.backend_err(&format!("starting `{id}`"), e));
                let (dirs, out) = match started {
                    Ok(Ok(dirs)) => (dirs, Ok(())),
                    Ok(Err((failed, dirs))) => (dirs, Err(failed)),
                    Err(e) => {
                        let _ = container::remove(&self.daemon, &docker_id);
                        return Err(e);
                    }
                };
                self.containers.push(ContainerRec {
                    id: id.clone(),
                    docker_id,
                    dirs,
                    stopped: out.is_err(),
                });
                self.started(id, out)
            }
            Op::RemoveContainer { id } => {
                let c = self.container(Some(id))?;
                if self.kind == DriverKind::Devicemapper {
                    // Its device hashes may still show in the last transaction.
                    let names = observe::mount_ids(&self.daemon, self.kind, &c.docker_id)
                        .map_err(|e| self.backend_err(&format!("the mount ids of `{id}`"), e))?;
                    self.removed.push((id.clone(), names));
                }
                container::remove(&self.daemon, &c.docker_id)
                    .map_err(|e| self.backend_err(&format!("docker rm -f `{id}`"), e))?;
                self.containers.retain(|x| x.id != *id);
                self.copied.remove(id);
                Ok(Ok(Value::Unit))
            }
            Op::Commit { container, layer } => {
                let c = self.container(container.as_deref())?;
                layerspec_model::check_id(layer).map_err(StepError::BadId)?;
                if self.layers.contains_key(layer) {
                    return Err(StepError::LayerExists(layer.clone()).into());
                }
                let reference = self.reference_for(layer);
                let diff_ids = container::commit(&self.daemon, &c.docker_id, &reference)
                    .map_err(|e| self.backend_err(&format!("docker commit `{}`", c.id), e))?;
                self.layers.insert(
                    layer.clone(),
                    ImageRec {
                        seq: self.layers.len(),
                        reference,
                        diff_ids,
                    },
                );
                Ok(Ok(Value::Unit))
            }
            Op::Remount { container } => {
                let c = self.container(container.as_deref())?;
                if !c.stopped {
                    // A start that would reach outside the container is not let run.
                    let mut run = |op: &FileOp| self.file_op(&c, op);
                    if let Some(why) = layerspec_model::container_start_refused(&mut run) {
                        return Err(StepError::Unsupported(why.into()).into());
                    }
                    container::stop(&self.daemon, &c.docker_id)
                        .map_err(|e| self.backend_err(&format!("docker stop `{}`", c.id), e))?;
                }
                let started = container::start(&self.daemon, &c.docker_id)
                    .map_err(|e| self.backend_err(&format!("docker start `{}`", c.id), e))?;
                let (dirs, out) = match started {
                    Ok(dirs) => (dirs, Ok(())),
                    Err((failed, dirs)) => (dirs, Err(failed)),
                };
                if let Some(x) = self.containers.iter_mut().find(|x| x.id == c.id) {
                    x.dirs = dirs;
                    x.stopped = out.is_err();
                }
                self.started(&c.id, out)
            }
            Op::Changes { container } => {
                let c = self.container(container.as_deref())?;
                let changes = container::changes(&self.daemon, &c.docker_id)
                    .map_err(|e| self.backend_err(&format!("docker diff `{}`", c.id), e))?;
                Ok(Ok(Value::Changes(changes)))
            }
        }
    }

    fn observe(&mut self) -> Result<Observation, DriverError> {
        let mut made: Vec<(&String, &ImageRec)> = self.layers.iter().collect();
        made.sort_by_key(|(_, l)| l.seq);
        let layers: Vec<(String, Vec<String>)> = made
            .into_iter()
            .map(|(id, l)| (id.clone(), l.diff_ids.clone()))
            .collect();
        let containers: Vec<(String, String, Option<PathBuf>, u64)> = self
            .containers
            .iter()
            .map(|c| {
                let copied = self.copied.get(&c.id).map_or(0, |(_, b)| *b);
                (
                    c.id.clone(),
                    c.docker_id.clone(),
                    (!c.stopped).then(|| c.dirs.merged.clone()),
                    copied,
                )
            })
            .collect();
        observe::observe(&self.daemon, self.kind, &layers, &containers, &self.removed)
            .map_err(|e| self.backend_err("observing", e))
    }
}

impl Drop for DockerDriver {
    fn drop(&mut self) {
        for c in self.containers.iter().rev() {
            let _ = container::remove(&self.daemon, &c.docker_id);
        }
    }
}
