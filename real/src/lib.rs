//! The kernel-backed side of layerspec: real drivers implementing
//! [`layerspec_model::Driver`] like the model does, each in its own sandbox (a thread with a
//! private mount namespace and a fresh driver root), and the probe of which backends this
//! machine can run.
//!
//! ```no_run
//! use layerspec_model::{Driver, DriverKind, OverlayOptions};
//! let mut d = layerspec_real::open_backend(DriverKind::Overlay2, "kernel", OverlayOptions::default())
//!     .expect("root and overlayfs");
//! let obs = d.observe().unwrap();
//! assert!(obs.storage.contains_key("overlay2/l"));
//! ```
#![deny(missing_docs)]

mod changes;
mod commits;
mod confined;
mod content;
mod copy_up;
mod devmapper;
mod dm;
mod docker;
mod layer;
mod observe;
mod ops;
mod overlay;
mod probe;
mod sandbox;
mod sys;
mod thin;

pub use confined::Confined;
pub use devmapper::{remove_template as remove_devmapper_base, DmDriver};
pub use docker::DockerDriver;
pub use ops::open_bits;
pub use overlay::{Implementation, OverlayDriver};
pub use probe::{backends_for, docker_in_vm, kernel_version, vm_kit, Backend, HostFacts, VmKit};
pub use sandbox::{
    leftovers, owned_temp_dir, parse_size, remove_temp_dir, sweep, BackingFs, Sandbox, MARKER,
    PREFIX,
};
pub use thin::DmThinPool;

use layerspec_model::{Driver, DriverKind, OverlayOptions};

/// Opens a real driver of `kind` on `backend` (`kernel` or `fuse`) over tmpfs, or says why
/// it cannot run here.
pub fn open_backend(
    kind: DriverKind,
    backend: &str,
    options: OverlayOptions,
) -> Result<Box<dyn Driver + Send>, String> {
    open_backend_on(kind, backend, options, BackingFs::tmpfs())
}

/// Why `backend` cannot run `kind` with `options` on this machine, if it cannot: the
/// backend is missing here, or it lacks an option. Such a run is a skip; an error from
/// [`open_backend_on`] for a backend and options that pass here is a failure.
pub fn cannot_run(kind: DriverKind, backend: &str, options: OverlayOptions) -> Option<String> {
    match backends_for(kind).into_iter().find(|b| b.name == backend) {
        None => return Some(format!("{kind} has no `{backend}` backend")),
        Some(Backend {
            unavailable: Some(why),
            ..
        }) => return Some(why),
        Some(_) => {}
    }
    if backend == "fuse" && options != OverlayOptions::default() {
        return Some("fuse-overlayfs has no redirect_dir/index/metacopy/xino options".into());
    }
    if backend == "docker" && options != OverlayOptions::default() {
        return Some(
            "dockerd mounts with its own overlay options (no redirect_dir/index/metacopy/xino)"
                .into(),
        );
    }
    None
}

/// Why the `docker` backend runs no container without Docker's `-init` layer.
pub const NO_INIT_LAYER_ON_DOCKER: &str = "Docker makes an `-init` layer for every container; \
    the file states containers without one (`[options] init = true` states Docker's)";

/// Like [`open_backend`], on the given backing filesystem.
pub fn open_backend_on(
    kind: DriverKind,
    backend: &str,
    options: OverlayOptions,
    backing: BackingFs,
) -> Result<Box<dyn Driver + Send>, String> {
    if let Some(why) = cannot_run(kind, backend, options) {
        return Err(why);
    }
    if backend == "vm" {
        return Err(
            "backend `vm` runs a whole command in one VM boot (`layerspec run --backend vm`, \
             `layerspec fuzz --backend vm`), not a driver in this process"
                .into(),
        );
    }
    if backend == "docker" && docker_in_vm(kind) {
        return Err(format!(
            "backend `docker` runs {kind} in the VM tier's guest (this kernel has no \
             device-mapper): a whole command in one boot (`layerspec run --backend docker`)"
        ));
    }
    if backend == "docker" {
        return DockerDriver::new(kind, backing).map(|d| Box::new(d) as Box<dyn Driver + Send>);
    }
    if kind == DriverKind::Devicemapper {
        return DmDriver::new(backing)
            .map(|d| Box::new(d) as Box<dyn Driver + Send>)
            .map_err(|e| format!("cannot start a devicemapper root: {e}"));
    }
    let imp = match backend {
        "kernel" => Implementation::Kernel,
        "fuse" => Implementation::Fuse,
        _ => return Err(format!("backend `{backend}` is not built")),
    };
    OverlayDriver::new(kind, imp, options, backing)
        .map(|d| Box::new(d) as Box<dyn Driver + Send>)
        .map_err(|e| format!("cannot start a {backend} sandbox: {e}"))
}

/// Opens a real thin pool (dm-thin on loop devices) with `params`, or says why it cannot
/// run here.
pub fn open_thin(
    params: layerspec_model::PoolParams,
) -> Result<Box<dyn layerspec_model::ThinDriver + Send>, String> {
    if let Some(Backend {
        unavailable: Some(why),
        ..
    }) = backends_for(DriverKind::Thinpool)
        .into_iter()
        .find(|b| b.name == "kernel")
    {
        return Err(why);
    }
    DmThinPool::new(params)
        .map(|p| Box::new(p) as Box<dyn layerspec_model::ThinDriver + Send>)
        .map_err(|e| format!("cannot make a thin pool: {e}"))
}

/// A container of a kernel-side driver (overlay, overlay2 and fuse; devicemapper in the VM).
#[derive(Clone, Debug)]
pub(crate) struct ContainerRec {
    pub(crate) id: String,
    pub(crate) image: Option<String>,
    /// Its `-init` layer or device, when the driver makes them.
    pub(crate) init: Option<String>,
    /// Docker could not start it: its root is not mounted (`layerspec_model::container_start`).
    pub(crate) stopped: bool,
}

/// The container a step names (`None`: the most recently created), from a driver's list,
/// or the step error the model gives for it. `id_of` reads a record's id.
pub(crate) fn pick_container<T: Clone>(
    records: &[T],
    id: Option<&str>,
    id_of: impl Fn(&T) -> &str,
) -> Result<T, layerspec_model::StepError> {
    use layerspec_model::StepError;
    match id {
        Some(id) => records
            .iter()
            .find(|c| id_of(c) == id)
            .cloned()
            .ok_or_else(|| StepError::NoContainer(Some(id.to_string()))),
        None => records.last().cloned().ok_or(StepError::NoContainer(None)),
    }
}

/// Makes the child `cmd` starts get SIGKILL when the thread that starts it dies
/// (`PR_SET_PDEATHSIG`), so that a run killed by a signal leaves no helper process behind
/// (the VM tier's qemu). Call from the thread that waits for the child.
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(sys::die_with_parent);
    }
}
