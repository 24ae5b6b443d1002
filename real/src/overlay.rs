//! The real `overlay` and `overlay2` drivers on kernel overlayfs or on fuse-overlayfs, with
//! Docker's on-disk layout exactly as the model renders it (`layerspec_model` layout.rs).

use crate::changes;
use crate::commits::Commits;
use crate::confined::Confined;
use crate::copy_up;
use crate::layer;
use crate::observe;
use crate::sandbox::{BackingFs, Sandbox};
use crate::sys;
use crate::ContainerRec;
use layerspec_model::{
    init_layer_id, overlay_mount_data, short_name, Accounting, Driver, DriverError, DriverKind,
    Entry, Errno, KernelVersion, LayerSpec, Observation, Op, Outcome, OverlayOptions, StartError,
    StepError, Value, DATA_ROOT, NAIVE_DIFF_WITH_INIT,
};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

/// Which overlayfs implementation mounts the containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// The host kernel's overlayfs.
    Kernel,
    /// fuse-overlayfs.
    Fuse,
}

impl ContainerRec {
    /// Init layer `id` on `image`, as a read-write layer to mount.
    fn init_layer(id: &str, image: Option<&str>) -> ContainerRec {
        ContainerRec {
            id: id.to_string(),
            image: image.map(String::from),
            init: None,
            stopped: false,
        }
    }
}

/// A real overlay or overlay2 driver root in its own sandbox.
pub struct OverlayDriver {
    kind: DriverKind,
    imp: Implementation,
    options: OverlayOptions,
    layers: BTreeMap<String, Option<String>>,
    containers: Vec<ContainerRec>,
    fuse: Arc<Mutex<BTreeMap<String, Child>>>,
    /// Per container: upper inodes whose copy-up was counted (number and birth time,
    /// `copy_up::measure`), and the bytes copied.
    copied: BTreeMap<String, (std::collections::BTreeSet<u64>, u64)>,
    sandbox: Sandbox,
    /// The running kernel (fuse-overlayfs too writes to this kernel's tmpfs).
    kernel: KernelVersion,
    /// Whether containers get Docker's `-init` layer (`layerspec_model::init_layer_setup`).
    init_layers: bool,
    /// With init layers, the ids of commits that made no layer (`layerspec_model::Store`'s
    /// rule) and each container's last commit, by its entries and its tar's times.
    commits: Commits<CommitPrint>,
}

/// What makes two commits the same tar: the entries, and each upper entry's modification
/// time in whole seconds (Go's tar writer rounds it).
type CommitPrint = (Vec<Entry>, Vec<(String, i64)>);

impl OverlayDriver {
    /// A fresh driver root of `kind` (overlay or overlay2) on `backing`.
    pub fn new(
        kind: DriverKind,
        imp: Implementation,
        options: OverlayOptions,
        backing: BackingFs,
    ) -> io::Result<Self> {
        let kernel = crate::probe::kernel_version()?;
        let on_xfs = matches!(backing, BackingFs::Xfs { .. });
        let sandbox = Sandbox::new(backing)?;
        let name = kind.name();
        sandbox.run(move |inside| -> io::Result<()> {
            let root = inside.root.clone();
            let mut c = inside.confine(&root)?;
            let top = Path::new("/").join(name);
            // Docker 20.10 makes both drivers' directory 0710 (seen on dockerd 20.10.24).
            c.mkdir(&top, 0o710)?;
            if kind == DriverKind::Overlay2 {
                c.mkdir(&top.join("l"), 0o700)?;
                if on_xfs {
                    // moby overlay2 `Init` on xfs: `quota.NewControl` → `makeBackingFsDev`,
                    // a node for the backing device, made whether or not project quotas
                    // are on (seen on dockerd 20.10.24).
                    let dev = fs::metadata(&top)?.dev();
                    c.block_device(&top.join("backingFsBlockDev"), dev)?;
                }
            }
            Ok(())
        })?;
        Ok(OverlayDriver {
            kind,
            imp,
            options,
            layers: BTreeMap::new(),
            containers: Vec::new(),
            fuse: Arc::new(Mutex::new(BTreeMap::new())),
            copied: BTreeMap::new(),
            sandbox,
            kernel,
            init_layers: false,
            commits: Commits::new(),
        })
    }

    /// The layer image id `id` names.
    fn resolve(&self, id: &str) -> String {
        self.commits.resolve(id)
    }

    /// The layers under container `c`'s writable layer, lowest first: its image's, then
    /// (overlay2) its init layer; overlay's container sits on the image's root.
    fn lower_chain(&self, c: &ContainerRec) -> Vec<String> {
        let mut chain = self.chain(c.image.as_deref());
        if let (DriverKind::Overlay2, Some(init)) = (self.kind, &c.init) {
            chain.push(init.clone());
        }
        chain
    }

    fn chain(&self, top: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = top.map(|t| self.resolve(t));
        while let Some(id) = cur {
            cur = self.layers.get(&id).cloned().flatten();
            out.push(id);
        }
        out.reverse();
        out
    }

    fn container(&self, id: Option<&str>) -> Result<ContainerRec, StepError> {
        crate::pick_container(&self.containers, id, |c| c.id.as_str())
    }

    /// Where a container's merged root is, relative to the driver directory.
    fn merged_rel(&self, c: &ContainerRec) -> String {
        match (self.kind, c.image.is_some()) {
            (_, true) => format!("{}/merged", c.id),
            (DriverKind::Overlay2, false) => format!("{}/diff", c.id),
            _ => format!("{}/root", c.id),
        }
    }

    /// Builds a layer (from a scenario or a commit) in the driver's layout.
    /// Builds a layer from `spec`; a scenario's layer (`fixed_times`) gets Docker's applied
    /// times ([`layer::fix_times`]), a commit keeps the times it was written with.
    fn write_layer(
        &mut self,
        spec: LayerSpec,
        fixed_times: bool,
    ) -> Result<Result<(), Errno>, DriverError> {
        layerspec_model::validate_layer(&spec)?;
        if self.taken(&spec.id) {
            return Err(StepError::LayerExists(spec.id.clone()).into());
        }
        if let Some(p) = &spec.parent {
            if !self.layers.contains_key(&self.resolve(p)) {
                return Err(StepError::NoLayer(p.clone()).into());
            }
        }
        let kind = self.kind;
        let lower = self.chain(spec.parent.as_deref());
        let parent = lower.last().cloned();
        let id = spec.id.clone();
        let what = format!("building layer `{}`", spec.id);
        let built = self.build_dirs(spec.id.clone(), what, move |c, top| {
            match kind {
                DriverKind::Overlay2 => {
                    let dir = overlay2_skeleton(c, top, &spec.id, &lower)?;
                    c.mkdir(&dir.join("diff"), 0o755)?;
                    layer::write_entries(c, &dir.join("diff"), &spec)?;
                    if fixed_times {
                        layer::fix_times(c, &dir.join("diff"))?;
                    }
                }
                _ => {
                    let dir = top.join(&spec.id);
                    c.mkdir(&dir, 0o710)?;
                    let root = dir.join("root");
                    // The layer's root: the parent's root as a hard-link farm (or
                    // nothing), then the diff applied as Docker's applier does it:
                    // whiteouts delete, opaque directories replace.
                    match lower.last() {
                        Some(parent) => {
                            let proot = top.join(parent).join("root");
                            c.mkdir(&root, fs::symlink_metadata(&proot)?.mode() & 0o7777)?;
                            layer::farm_copy(c, &proot, &root)?;
                        }
                        None => c.mkdir(&root, 0o755)?,
                    }
                    let staged = dir.join("staged-diff");
                    c.mkdir(&staged, 0o755)?;
                    layer::write_entries(c, &staged, &spec)?;
                    let sm = fs::symlink_metadata(&staged)?;
                    c.set_mode(&root, sm.mode() & 0o7777)?;
                    layer::copy_owner(c, &sm, &root)?;
                    layer::copy_user_xattrs(c, &staged, &root)?;
                    layer::apply_diff(c, &staged, &root)?;
                    c.remove(&staged)?;
                    if fixed_times {
                        layer::fix_times(c, &root)?;
                    }
                }
            }
            Ok(())
        })?;
        if built.is_ok() {
            self.layers.insert(id, parent);
        }
        Ok(built)
    }

    /// Makes the directories of layer or container `id` with `make`, confined to the
    /// driver root (`make` gets the driver directory, `/<driver>`). If it fails, what it
    /// made goes, as Docker removes a half-made layer; running out of space is the step's
    /// ENOSPC (the model predicts it), anything else a backend error naming `what`.
    fn build_dirs(
        &self,
        id: String,
        what: String,
        make: impl FnOnce(&mut Confined, &Path) -> io::Result<()> + Send + 'static,
    ) -> Result<Result<(), Errno>, DriverError> {
        let kind = self.kind;
        self.sandbox
            .run(move |inside| -> Result<Result<(), Errno>, DriverError> {
                let root = inside.root.clone();
                let c = &mut inside
                    .confine(&root)
                    .map_err(|e| DriverError::Backend(format!("confining: {e}")))?;
                let top = Path::new("/").join(kind.name());
                make(c, &top).map(Ok).or_else(|e| {
                    let full = e.raw_os_error() == Some(libc::ENOSPC);
                    let err = c.log().backend_err(&what, e);
                    remove_layer_dirs(c, kind, &top, &id);
                    if full {
                        Ok(Err(Errno::ENOSPC))
                    } else {
                        Err(err)
                    }
                })
            })
    }

    fn create_container(
        &mut self,
        id: &str,
        image: Option<&str>,
    ) -> Result<Result<(), Errno>, DriverError> {
        layerspec_model::check_op_ids(&Op::CreateContainer {
            id: id.to_string(),
            image: image.map(String::from),
        })?;
        if self.taken(id) {
            return Err(StepError::ContainerExists(id.to_string()).into());
        }
        if let Some(i) = image {
            if !self.layers.contains_key(&self.resolve(i)) {
                return Err(StepError::NoLayer(i.to_string()).into());
            }
        }
        let image = image.map(|i| self.resolve(i));
        let image = image.as_deref();
        let init = (self.init_layers && image.is_some()).then(|| init_layer_id(id));
        if let Some(init) = &init {
            if self.taken(init) {
                return Err(StepError::LayerExists(init.clone()).into());
            }
            if let Err(e) = self.make_init_layer(init, image)? {
                return Ok(Err(e));
            }
        }
        let rec = ContainerRec {
            id: id.to_string(),
            image: image.map(String::from),
            init: init.clone(),
            stopped: false,
        };
        let (kind, chain) = (self.kind, self.lower_chain(&rec));
        let id2 = id.to_string();
        let what = format!("creating container `{id2}`");
        let made = self.build_dirs(id2.clone(), what, move |c, top| {
            rw_layer_dirs(c, top, kind, &id2, &chain, init.as_deref())
        })?;
        if let Err(e) = made {
            if let Some(init) = &rec.init {
                self.remove_dirs(init)?;
            }
            return Ok(Err(e));
        }
        if image.is_some() {
            if let Err(e) = self.mount_or_full(&rec)? {
                // The kernel found no room for its work directory's checks (ext4 out of
                // inodes, LS27): the start fails, and the half-made container goes.
                if let Some(init) = &rec.init {
                    self.remove_dirs(init)?;
                }
                self.remove_dirs(id)?;
                return Ok(Err(e));
            }
        }
        self.containers.push(rec.clone());
        if rec.init.is_some() {
            // `docker start` after `docker create`.
            return self.start(&rec);
        }
        Ok(Ok(()))
    }

    /// overlay's naive export (its commit) against an init layer is not modelled: refused,
    /// as the model refuses it.
    fn check_naive_diff(&self, c: &ContainerRec) -> Result<(), StepError> {
        if self.kind == DriverKind::Overlay && c.init.is_some() {
            return Err(StepError::Unsupported(NAIVE_DIFF_WITH_INIT.into()));
        }
        Ok(())
    }

    /// `docker diff` of a container on init layer `init` (Docker 20.10, overlay and
    /// overlay2): the init layer mounted (`Get`, its `merged` made: overlay2 read-only, as
    /// the init layer has `committed`; overlay with its upper), moby's naive walker over
    /// both merged views, the init layer unmounted and its `merged` removed (`Put`).
    fn naive_changes(
        &self,
        c: &ContainerRec,
        init: &str,
    ) -> Result<Vec<layerspec_model::Change>, DriverError> {
        let rec = ContainerRec::init_layer(init, c.image.as_deref());
        self.get_as(&rec, self.kind == DriverKind::Overlay2)?;
        let (kind, cid, iid) = (self.kind, c.id.clone(), init.to_string());
        let walked = self.sandbox.run(move |inside| {
            let top = inside.root.join(kind.name());
            changes::naive_changes(&top.join(iid).join("merged"), &top.join(cid).join("merged"))
        });
        self.put(&rec)?;
        walked.map_err(|e| DriverError::Backend(format!("computing changes: {e}")))
    }

    /// Docker's start of container `c` as its root sees it (`layerspec_model::container_start`).
    /// When it fails, Docker unmounts the root (`Put`: unmount, remove `merged`) and the
    /// container is stopped; the step's outcome is the errno.
    fn start(&mut self, c: &ContainerRec) -> Result<Result<(), Errno>, DriverError> {
        let c = c.clone();
        let r = layerspec_model::container_start(|op| self.file_op(&c, op.clone()));
        let failed = r.is_err();
        if failed {
            self.put(&c)?;
        }
        if let Some(x) = self.containers.iter_mut().find(|x| x.id == c.id) {
            x.stopped = failed;
        }
        match r {
            Ok(()) => Ok(Ok(())),
            Err(StartError::Errno(e)) => Ok(Err(e)),
            Err(StartError::Unmodelled(why)) => Err(StepError::Unsupported(why.into()).into()),
        }
    }

    /// Docker's `Get` of a layer not mounted (a container it did not start, an init layer
    /// for `docker diff`): `merged` made, the root mounted (`readonly`: see [`Self::mount_as`]).
    fn get_as(&self, c: &ContainerRec, readonly: bool) -> Result<(), DriverError> {
        let merged = format!("{}/merged", c.id);
        self.in_driver_dir(format!("making `{merged}`"), move |cf, top| {
            cf.mkdir(&top.join(&merged), 0o700)
        })?;
        self.mount_as(c, readonly)?
            .map_err(|e| DriverError::Backend(format!("mounting container `{}`: {e}", c.id)))
    }

    /// Docker's `Put`: the root unmounted and `merged` removed.
    fn put(&self, c: &ContainerRec) -> Result<(), DriverError> {
        self.unmount(c)?;
        let merged = format!("{}/merged", c.id);
        self.in_driver_dir(format!("removing `{merged}`"), move |cf, top| {
            cf.remove(&top.join(&merged))
        })
    }

    /// Runs `f` on `c` mounted: a stopped container is mounted for it and unmounted after,
    /// as Docker's `docker commit` and `docker diff` do (`Get`, then `Put`).
    fn mounted<T>(
        &mut self,
        c: &ContainerRec,
        f: impl FnOnce(&mut Self) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        if !c.stopped {
            return f(self);
        }
        self.get_as(c, false)?;
        let r = f(self);
        self.put(c)?;
        r
    }

    /// Whether `id` names a layer, a container or a container's init layer.
    fn taken(&self, id: &str) -> bool {
        self.layers.contains_key(id)
            || self.commits.is_alias(id)
            || self
                .containers
                .iter()
                .any(|c| c.id == id || c.init.as_deref() == Some(id))
    }

    /// Docker's `initMount` (moby `layer/layer_store.go`): the init layer `init` created on
    /// `image`, mounted, `Setup` run in it through the step runner, unmounted, and its
    /// `merged` removed (`Put`). A `Setup` call that fails fails the container's creation,
    /// and the init layer goes.
    fn make_init_layer(
        &mut self,
        init: &str,
        image: Option<&str>,
    ) -> Result<Result<(), Errno>, DriverError> {
        let rec = ContainerRec::init_layer(init, image);
        let (kind, chain) = (self.kind, self.chain(image));
        let id2 = init.to_string();
        let what = format!("creating init layer `{id2}`");
        let made = self.build_dirs(id2.clone(), what, move |c, top| {
            rw_layer_dirs(c, top, kind, &id2, &chain, None)
        })?;
        if let Err(e) = made {
            return Ok(Err(e));
        }
        self.mount(&rec)?;
        let set_up = layerspec_model::init_layer_setup(|op| self.file_op(&rec, op.clone()));
        self.copied.remove(init);
        self.unmount(&rec)?;
        let merged = format!("{}/merged", rec.id);
        self.in_driver_dir(format!("removing `{merged}`"), move |c, top| {
            c.remove(&top.join(&merged))
        })?;
        if let Err(e) = set_up {
            self.remove_dirs(init)?;
            return Ok(Err(e));
        }
        Ok(Ok(()))
    }

    /// Runs `f` confined to the driver root, with the driver directory (`/<driver>`).
    fn in_driver_dir(
        &self,
        what: String,
        f: impl FnOnce(&mut Confined, &Path) -> io::Result<()> + Send + 'static,
    ) -> Result<(), DriverError> {
        let kind = self.kind;
        self.sandbox
            .run(move |inside| -> io::Result<()> {
                let root = inside.root.clone();
                let mut c = inside.confine(&root)?;
                f(&mut c, &Path::new("/").join(kind.name()))
            })
            .map_err(|e| DriverError::Backend(format!("{what}: {e}")))
    }

    /// Removes the directories of layer or container `id` (and overlay2's `l/` link).
    fn remove_dirs(&self, id: &str) -> Result<(), DriverError> {
        let (kind, id2) = (self.kind, id.to_string());
        self.in_driver_dir(format!("removing `{id}`"), move |c, top| {
            c.remove(&top.join(&id2))?;
            if kind == DriverKind::Overlay2 {
                c.remove(&top.join("l").join(short_name(&id2)))?;
            }
            Ok(())
        })
    }

    fn mount(&self, c: &ContainerRec) -> Result<(), DriverError> {
        self.mount_as(c, false)?
            .map_err(|e| DriverError::Backend(format!("mounting container `{}`: {e}", c.id)))
    }

    /// [`Self::mount`], with the mount's ENOSPC as the step's.
    fn mount_or_full(&self, c: &ContainerRec) -> Result<Result<(), Errno>, DriverError> {
        self.mount_as(c, false)
    }

    /// Mounts `c` at its `merged`; `readonly` (overlay2): as Docker's `Get` mounts a layer
    /// that has `committed`, its `diff` as the topmost lower, no upper or work directory.
    /// The mount's ENOSPC is `Ok(Err(ENOSPC))`.
    fn mount_as(&self, c: &ContainerRec, readonly: bool) -> Result<Result<(), Errno>, DriverError> {
        let kind = self.kind;
        let imp = self.imp;
        let options = self.options;
        let chain = self.lower_chain(c);
        let id = c.id.clone();
        let fuse = Arc::clone(&self.fuse);
        self.sandbox
            .run(move |inside| -> Result<Result<(), Errno>, DriverError> {
                let top = inside.root.join(kind.name());
                let root_s = inside.root.display().to_string();
                let data = if readonly {
                    layerspec_model::overlay2_readonly_mount_data(&chain, &id, &root_s)
                } else {
                    overlay_mount_data(kind, options, &chain, &id, &root_s)
                        .expect("an image to mount")
                };
                let merged = PathBuf::from(format!("{id}/merged"));
                let log = &mut inside.log;
                let r = (|| -> io::Result<()> {
                    // From the driver directory, as Docker's `mountFrom` does for data past a
                    // page (relative `l/` paths); classic mount(2) data, no fsconfig.
                    sys::chdir(&top)?;
                    match imp {
                        Implementation::Kernel => {
                            sys::mount(log, "overlay", &merged, "overlay", &data)
                        }
                        Implementation::Fuse => {
                            let fuse_data = fuse_options(&data);
                            let mut cmd = Command::new("fuse-overlayfs");
                            cmd.arg("-f")
                                .arg("-o")
                                .arg(&fuse_data)
                                .arg(&merged)
                                .current_dir(&top);
                            unsafe_pre_exec(&mut cmd);
                            log.note(format!("{cmd:?}"));
                            let child = cmd
                                .stdout(std::process::Stdio::null())
                                .stderr(std::process::Stdio::piped())
                                .spawn()?;
                            wait_mounted(&top.join(&merged), child, &id, &fuse)
                        }
                    }
                })();
                match r {
                    Ok(()) => Ok(Ok(())),
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Ok(Err(Errno::ENOSPC)),
                    Err(e) => Err(log.backend_err(&format!("mounting container `{id}`"), e)),
                }
            })
    }

    fn unmount(&self, c: &ContainerRec) -> Result<(), DriverError> {
        if c.image.is_none() {
            return Ok(());
        }
        let kind = self.kind;
        let id = c.id.clone();
        let fuse = Arc::clone(&self.fuse);
        self.sandbox.run(move |inside| -> Result<(), DriverError> {
            let merged = inside.root.join(kind.name()).join(&id).join("merged");
            // `umount` retries a transiently busy mount; if it stays busy, kill our fuse
            // daemon rather than wait for an exit that never comes (a fuse fuzz run hung so).
            let r = sys::umount(&mut inside.log, &merged, false);
            if let Some(mut child) = fuse.lock().expect("fuse map").remove(&id) {
                if r.is_err() {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
            r.map_err(|e| inside.log.backend_err(&format!("unmounting `{id}`"), e))
        })
    }

    fn file_op(&mut self, c: &ContainerRec, op: layerspec_model::FileOp) -> Outcome {
        let root_rel = format!("{}/{}", self.kind.name(), self.merged_rel(c));
        let upper_rel = format!("{}/{}", self.kind.name(), self.upper_rel(c));
        let mounted = c.image.is_some();
        let counted = self.copied.entry(c.id.clone()).or_default().clone();
        let (out, copied) = self.sandbox.run(move |inside| {
            let root = inside.root.join(&root_rel);
            // The upper layer is looked at from the driver root (chrooted there too).
            let upper = Path::new("/").join(&upper_rel);
            let backing = inside.root.clone();
            copy_up::watched_step(inside, &root, &backing, &upper, &op, mounted, &counted)
        });
        if let Some((ino, bytes)) = copied {
            let set = self.copied.get_mut(&c.id).expect("entry made above");
            set.0.insert(ino);
            set.1 += bytes;
        }
        out
    }

    /// Runs `f` once on the sandbox thread, chrooted into the merged root of `container`
    /// (`None`: the most recent one), with none of the harness around it: no per-step
    /// thread hop, copy-up watch or outcome conversion. The replay benchmark
    /// (`benches/replay.rs`) issues a trace's bare system calls with it. The chroot is left
    /// afterwards, even when `f` panics (the panic is passed on).
    pub fn run_in_container<R: Send + 'static>(
        &self,
        container: Option<&str>,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, DriverError> {
        let c = self.container(container)?;
        let root_rel = format!("{}/{}", self.kind.name(), self.merged_rel(&c));
        self.sandbox.run(move |inside| {
            let root = inside.root.join(&root_rel);
            inside.real_root.enter(&root).map_err(|e| {
                DriverError::Backend(format!("cannot chroot into {}: {e}", root.display()))
            })?;
            Ok(f())
        })
    }

    /// Where a container's writable layer is, relative to the driver directory.
    fn upper_rel(&self, c: &ContainerRec) -> String {
        match (self.kind, c.image.is_some()) {
            (DriverKind::Overlay2, _) => format!("{}/diff", c.id),
            (_, true) => format!("{}/upper", c.id),
            _ => format!("{}/root", c.id),
        }
    }

    fn commit(&mut self, c: &ContainerRec, layer: &str) -> Result<Result<(), Errno>, DriverError> {
        layerspec_model::check_id(layer).map_err(StepError::BadId)?;
        if self.taken(layer) {
            return Err(StepError::LayerExists(layer.to_string()).into());
        }
        let kind = self.kind;
        let upper_rel = match (kind, c.image.is_some()) {
            (DriverKind::Overlay2, _) => format!("{}/diff", c.id),
            (_, true) => format!("{}/upper", c.id),
            _ => format!("{}/root", c.id),
        };
        let merged_rel = self.merged_rel(c);
        let (id, parent) = (layer.to_string(), c.image.clone());
        let read = self.sandbox.run(move |inside| -> io::Result<CommitPrint> {
            let root = inside.root.clone();
            let _confined = inside.confine(&root)?;
            let top = Path::new("/").join(kind.name());
            let entries = changes::diff_entries(&top.join(&upper_rel), &top.join(&merged_rel))?;
            Ok((entries, changes::tar_times(&top.join(&upper_rel))?))
        });
        let (mut entries, times) =
            read.map_err(|e| DriverError::Backend(format!("reading the container's diff: {e}")))?;
        // Docker's tar writer carries no `user.*` xattrs, and leaves out the root, which the
        // driver makes 0755 (the model's rules).
        for e in &mut entries {
            e.xattrs.clear();
            if e.path == "/" && self.init_layers {
                e.mode = Some(0o755);
                e.owner = None;
            }
        }
        // The first entry is the root's own (mode and xattrs), which Docker's tar leaves out.
        let no_changes = entries.iter().all(|e| e.path == "/");
        if let (true, Some(top)) = (self.init_layers, &parent) {
            let print = (entries.clone(), times);
            if self.commits.reuses(&c.id, top, &id, no_changes, print) {
                return Ok(Ok(()));
            }
        }
        self.write_layer(
            LayerSpec {
                id,
                parent,
                entries,
            },
            false,
        )
    }

    fn changes(&self, c: &ContainerRec) -> Result<Vec<layerspec_model::Change>, DriverError> {
        if let Some(init) = &c.init {
            return self.naive_changes(c, init);
        }
        let kind = self.kind;
        let chain = self.lower_chain(c);
        let (id, has_image) = (c.id.clone(), c.image.is_some());
        self.sandbox
            .run(move |inside| -> io::Result<Vec<layerspec_model::Change>> {
                let top = inside.root.join(kind.name());
                let (upper, lowers): (PathBuf, Vec<PathBuf>) = match kind {
                    DriverKind::Overlay2 => (
                        top.join(&id).join("diff"),
                        chain
                            .iter()
                            .rev()
                            .map(|l| top.join(l).join("diff"))
                            .collect(),
                    ),
                    _ if has_image => (
                        top.join(&id).join("upper"),
                        chain
                            .last()
                            .map(|l| vec![top.join(l).join("root")])
                            .unwrap_or_default(),
                    ),
                    _ => (top.join(&id).join("root"), Vec::new()),
                };
                changes::overlay_changes(&upper, &lowers)
            })
            .map_err(|e| DriverError::Backend(format!("computing changes: {e}")))
    }
}

/// The directories of a read-write layer `id` (a container, or an init layer) on the
/// layers `chain` (lowest first): overlay2's skeleton, `diff` and `merged`; overlay's
/// `lower-id`, `upper` (with the image root's mode), `work` and `merged`, the upper
/// starting as a copy of init layer `copy_init`'s (moby overlay `Create`); a plain root
/// when there is no image.
fn rw_layer_dirs(
    c: &mut Confined,
    top: &Path,
    kind: DriverKind,
    id: &str,
    chain: &[String],
    copy_init: Option<&str>,
) -> io::Result<()> {
    match kind {
        DriverKind::Overlay2 => {
            let dir = overlay2_skeleton(c, top, id, chain)?;
            c.mkdir(&dir.join("diff"), 0o755)?;
            if !chain.is_empty() {
                c.mkdir(&dir.join("merged"), 0o700)?;
            }
        }
        _ => {
            let dir = top.join(id);
            c.mkdir(&dir, 0o710)?;
            match chain.last() {
                Some(image) => {
                    c.write_file(&dir.join("lower-id"), 0o600, image.as_bytes())?;
                    let from = match copy_init {
                        Some(init) => top.join(init).join("upper"),
                        None => top.join(image).join("root"),
                    };
                    let rootmode = fs::symlink_metadata(&from)?.mode() & 0o7777;
                    c.mkdir(&dir.join("upper"), rootmode)?;
                    c.mkdir(&dir.join("work"), 0o700)?;
                    c.mkdir(&dir.join("merged"), 0o700)?;
                    if copy_init.is_some() {
                        layer::dir_copy(c, &from, &dir.join("upper"))?;
                    }
                }
                None => c.mkdir(&dir.join("root"), 0o755)?,
            }
        }
    }
    Ok(())
}

/// `overlay2/<id>` with `link`, `l/<short>`, `lower` and `work` (when it has a parent), and
/// `committed` in the parent (moby overlay2 `create`).
fn overlay2_skeleton(
    c: &mut Confined,
    top: &Path,
    id: &str,
    lower: &[String],
) -> io::Result<PathBuf> {
    let dir = top.join(id);
    c.mkdir(&dir, 0o710)?;
    let short = short_name(id);
    c.symlink(
        Path::new(&format!("../{id}/diff")),
        &top.join("l").join(&short),
    )?;
    c.write_file(&dir.join("link"), 0o644, short.as_bytes())?;
    if let Some(parent) = lower.last() {
        let l: Vec<String> = lower
            .iter()
            .rev()
            .map(|p| format!("l/{}", short_name(p)))
            .collect();
        c.write_file(&dir.join("lower"), 0o644, l.join(":").as_bytes())?;
        c.mkdir(&dir.join("work"), 0o700)?;
        let committed = top.join(parent).join("committed");
        if fs::symlink_metadata(&committed).is_err() {
            c.write_file(&committed, 0o600, b"")?;
        }
    }
    Ok(dir)
}

/// Removes a layer's or container's directories (and overlay2's `l/` link), whatever state
/// they are in: after a failed build, and on removal.
fn remove_layer_dirs(c: &mut Confined, kind: DriverKind, top: &Path, id: &str) {
    let _ = c.remove(&top.join(id));
    if kind == DriverKind::Overlay2 {
        let _ = c.remove(&top.join("l").join(short_name(id)));
    }
}

/// fuse-overlayfs takes lowerdir/upperdir/workdir only; the kernel's feature options are not
/// its own.
fn fuse_options(data: &str) -> String {
    data.split(',')
        .filter(|o| {
            o.starts_with("lowerdir=") || o.starts_with("upperdir=") || o.starts_with("workdir=")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn unsafe_pre_exec(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL when our thread dies, so a
    // fuse daemon never outlives the sandbox.
    unsafe {
        cmd.pre_exec(sys::die_with_parent);
    }
}

fn wait_mounted(
    merged: &Path,
    mut child: Child,
    id: &str,
    fuse: &Mutex<BTreeMap<String, Child>>,
) -> io::Result<()> {
    let parent_dev = fs::metadata(merged.parent().expect("has parent"))?.dev();
    for _ in 0..500 {
        if fs::metadata(merged).is_ok_and(|m| m.dev() != parent_dev) {
            fuse.lock().expect("fuse map").insert(id.to_string(), child);
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(io::Error::other(format!(
                "fuse-overlayfs exited ({status}): {}",
                err.trim()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    Err(io::Error::other("fuse-overlayfs did not mount within 5 s"))
}

impl Driver for OverlayDriver {
    fn kind(&self) -> DriverKind {
        self.kind
    }

    fn backend(&self) -> &'static str {
        match self.imp {
            Implementation::Kernel => "kernel",
            Implementation::Fuse => "fuse",
        }
    }

    fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), DriverError> {
        match self.write_layer(spec.clone(), true)? {
            Ok(()) => Ok(()),
            Err(e) => Err(DriverError::Backend(format!(
                "building layer `{}`: {e}",
                spec.id
            ))),
        }
    }

    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    fn set_init_layers(&mut self, on: bool) -> Result<(), String> {
        self.init_layers = on;
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<Outcome, DriverError> {
        layerspec_model::check_op_ids(op)?;
        match op {
            Op::File { container, op } => {
                let c = self.container(container.as_deref())?;
                if c.stopped {
                    return Err(StepError::NotRunning(c.id).into());
                }
                Ok(self.file_op(&c, op.clone()))
            }
            Op::CreateContainer { id, image } => {
                Ok(self.create_container(id, image.as_deref())?.map(unit))
            }
            Op::RemoveContainer { id } => {
                let c = self.container(Some(id))?;
                if !c.stopped {
                    self.unmount(&c)?;
                }
                // moby `ReleaseRWLayer`: the container's layer, then its init layer.
                self.remove_dirs(id)?;
                if let Some(init) = &c.init {
                    self.remove_dirs(init)?;
                }
                self.containers.retain(|x| x.id != *id);
                Ok(Ok(Value::Unit))
            }
            Op::Commit { container, layer } => {
                let c = self.container(container.as_deref())?;
                self.check_naive_diff(&c)?;
                Ok(self.mounted(&c, |d| d.commit(&c, layer))?.map(unit))
            }
            Op::Remount { container } => {
                let c = self.container(container.as_deref())?;
                if c.stopped {
                    // `docker start` again.
                    self.get_as(&c, false)?;
                } else {
                    self.unmount(&c)?;
                    if c.image.is_some() {
                        self.mount(&c)?;
                    }
                }
                if c.init.is_some() {
                    return Ok(self.start(&c)?.map(unit));
                }
                Ok(Ok(Value::Unit))
            }
            Op::Changes { container } => {
                let c = self.container(container.as_deref())?;
                Ok(Ok(Value::Changes(self.mounted(&c, |d| d.changes(&c))?)))
            }
        }
    }

    fn observe(&mut self) -> Result<Observation, DriverError> {
        let kind = self.kind;
        let options = self.options;
        let containers: Vec<(ContainerRec, String, Vec<String>)> = self
            .containers
            .iter()
            .map(|c| (c.clone(), self.merged_rel(c), self.lower_chain(c)))
            .collect();
        let copied: BTreeMap<String, (std::collections::BTreeSet<u64>, u64)> = self.copied.clone();
        self.sandbox
            .run(move |inside| -> io::Result<Observation> {
                let top = inside.root.join(kind.name());
                // The driver's directory as it is on disk, without the containers' mounts.
                let view = inside.root.parent().expect("sandbox dir").join("view");
                if fs::symlink_metadata(&view).is_err() {
                    fs::create_dir(&view)?;
                }
                sys::bind(&mut inside.log, &inside.root, &view)?;
                let listed = observe::storage(&view.join(kind.name()), kind.name());
                sys::umount(&mut inside.log, &view, false)?;
                let (storage, inodes_used) = listed?;
                let mut merged = BTreeMap::new();
                let mut accounting = Accounting {
                    inodes_used,
                    ..Accounting::default()
                };
                for (c, merged_rel, chain) in &containers {
                    let copied = copied.get(&c.id).map_or(0, |(_, b)| *b);
                    accounting.copied_up_bytes.insert(c.id.clone(), copied);
                    if c.stopped {
                        continue;
                    }
                    let root = top.join(merged_rel);
                    merged.insert(c.id.clone(), observe::merged_view(&root)?);
                    if let Some(data) = overlay_mount_data(kind, options, chain, &c.id, DATA_ROOT) {
                        accounting.mount_data_len.insert(c.id.clone(), data.len());
                    }
                }
                Ok(Observation {
                    merged,
                    storage,
                    accounting,
                })
            })
            .map_err(|e| DriverError::Backend(format!("observing: {e}")))
    }
}

impl Drop for OverlayDriver {
    fn drop(&mut self) {
        for c in self.containers.clone().iter().rev() {
            let _ = self.unmount(c);
        }
    }
}

fn unit(_: ()) -> Value {
    Value::Unit
}
