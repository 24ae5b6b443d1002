//! The spec's state machine: image layers and containers of one driver, and the transition
//! that runs one [`Op`].

use crate::container::Container;
use crate::devmapper::DeviceSet;
use crate::lower::{Layer, LowerStack};
use crate::params::{DriverKind, OverlayOptions, Policy};
use crate::start::StartError;
use crate::step::{EntryKind, LayerSpec, Op, Outcome, Value};
use crate::tree::{empty_dir, file_body, new_inode, Body, Ino, Tree, ROOT};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

mod space;

/// A step the scenario itself got wrong (as opposed to an errno the filesystem returns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    /// No container with this id (or none at all for a step without `container`).
    NoContainer(Option<String>),
    /// A container with this id exists already.
    ContainerExists(String),
    /// No image layer with this id.
    NoLayer(String),
    /// An image layer with this id exists already.
    LayerExists(String),
    /// A layer entry cannot be built.
    BadEntry {
        /// The layer.
        layer: String,
        /// Index of the entry in the layer's list.
        entry: usize,
        /// What is wrong.
        reason: String,
    },
    /// The driver does not support this step.
    Unsupported(String),
    /// An id that is not a name ([`crate::check_id`]).
    BadId(crate::path::BadId),
    /// The image layers do not fit the driver root's filesystem.
    NoSpace(String),
    /// The model does not follow what the kernel does here (it says why): the run stops
    /// rather than guess.
    NotFollowed(String),
    /// A file step on a container Docker could not start: no process runs in it.
    NotRunning(String),
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::NoContainer(None) => f.write_str("no container exists for this step"),
            StepError::NoContainer(Some(c)) => write!(f, "no container `{c}`"),
            StepError::ContainerExists(c) => write!(f, "container `{c}` exists already"),
            StepError::NoLayer(l) => write!(f, "no layer `{l}`"),
            StepError::LayerExists(l) => write!(f, "layer `{l}` exists already"),
            StepError::BadEntry {
                layer,
                entry,
                reason,
            } => write!(f, "layer `{layer}`, entry {entry}: {reason}"),
            StepError::Unsupported(s) => write!(f, "unsupported: {s}"),
            StepError::BadId(b) => b.fmt(f),
            StepError::NoSpace(s) | StepError::NotFollowed(s) => f.write_str(s),
            StepError::NotRunning(c) => write!(
                f,
                "container `{c}` is not running (its start failed): no file step can run in it"
            ),
        }
    }
}

impl std::error::Error for StepError {}

/// All state of one driver in the model: its image layers and its containers.
#[derive(Clone, Debug)]
pub struct Store {
    driver: DriverKind,
    options: OverlayOptions,
    layers: BTreeMap<String, Arc<Layer>>,
    layer_order: Vec<String>,
    containers: BTreeMap<String, Container>,
    container_order: Vec<String>,
    stacks: BTreeMap<String, Arc<LowerStack>>,
    backing: crate::params::Backing,
    kernel: crate::params::KernelVersion,
    built_upon: std::collections::BTreeSet<String>,
    /// devicemapper: the device set and its thin pool.
    dm: Option<Box<DeviceSet>>,
    /// What the driver root's filesystem holds, when its space is accounted
    /// (`crate::space`).
    capacity: Option<space::Capacity>,
    /// Whether a container on an image gets Docker's `-init` layer (`crate::init_layer`).
    init_layers: bool,
    /// Each container's init layer, by container id: the container `Setup` ran in, left
    /// as its unmount left it.
    inits: BTreeMap<String, Container>,
    /// Image ids that name an existing layer: a commit with no changes (with init layers).
    aliases: BTreeMap<String, String>,
    /// The last modification time handed out (`Inode::mtime`).
    clock: u64,
    /// With init layers: each container's last commit, as (its tree, the layer it made).
    last_commit: BTreeMap<String, (Tree, String)>,
}

impl Store {
    /// An empty driver root.
    pub fn new(driver: DriverKind, options: OverlayOptions) -> Store {
        Store {
            driver,
            options,
            layers: BTreeMap::new(),
            layer_order: Vec::new(),
            containers: BTreeMap::new(),
            container_order: Vec::new(),
            stacks: BTreeMap::new(),
            backing: crate::params::Backing::default(),
            kernel: crate::params::KernelVersion::DEFAULT,
            built_upon: std::collections::BTreeSet::new(),
            dm: (driver == DriverKind::Devicemapper).then(|| Box::new(DeviceSet::new())),
            capacity: None,
            init_layers: false,
            inits: BTreeMap::new(),
            aliases: BTreeMap::new(),
            clock: 0,
            last_commit: BTreeMap::new(),
        }
    }

    /// Whether containers made from now on get Docker's `-init` layer (devicemapper: an
    /// `-init` device), as Docker makes one for every container. Off (the default, which
    /// scenario files written before it rely on), a container sits right on its image: a
    /// bare union mount, as the kernel mechanisms alone make it.
    pub fn set_init_layers(&mut self, on: bool) {
        self.init_layers = on;
    }

    /// The init layer of container `id`: the container `Setup` ran in.
    pub fn init_of(&self, id: &str) -> Option<&Container> {
        self.inits.get(id)
    }

    /// Whether `id` names a layer or container of the store, an init layer included.
    fn id_taken(&self, id: &str) -> bool {
        self.layers.contains_key(id)
            || self.aliases.contains_key(id)
            || self.containers.contains_key(id)
            || self.inits.values().any(|i| i.id == id)
    }

    /// devicemapper: the device set and the thin pool under the layers and containers.
    pub(crate) fn devmapper(&self) -> Option<&DeviceSet> {
        self.dm.as_deref()
    }

    /// Layers something (a layer or a container) was ever created on: overlay2 marks them
    /// with a `committed` file that stays when the child goes.
    pub fn built_upon(&self) -> &std::collections::BTreeSet<String> {
        &self.built_upon
    }

    /// Sets the backing filesystem for containers created from now on.
    pub fn set_backing(&mut self, backing: crate::params::Backing) {
        self.backing = backing;
    }

    /// The backing filesystem.
    pub fn backing(&self) -> crate::params::Backing {
        self.backing
    }

    /// Sets the kernel whose rules apply to containers created from now on.
    pub fn set_kernel(&mut self, kernel: crate::params::KernelVersion) {
        self.kernel = kernel;
    }

    /// The kernel whose rules apply.
    pub fn kernel(&self) -> crate::params::KernelVersion {
        self.kernel
    }

    /// The driver.
    pub fn driver(&self) -> DriverKind {
        self.driver
    }

    /// The overlay options.
    pub fn options(&self) -> OverlayOptions {
        self.options
    }

    /// Image layers in creation order.
    pub fn layers(&self) -> impl Iterator<Item = &Arc<Layer>> {
        self.layer_order.iter().map(|id| &self.layers[id])
    }

    /// The layer `id`.
    pub fn layer(&self, id: &str) -> Option<&Arc<Layer>> {
        self.layers.get(self.resolve(id))
    }

    /// The layer an image id names: itself, or the layer a commit without changes left the
    /// image on (`aliases`).
    pub fn resolve<'a>(&'a self, id: &'a str) -> &'a str {
        self.aliases.get(id).map_or(id, String::as_str)
    }

    /// Containers in creation order.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.container_order.iter().map(|id| &self.containers[id])
    }

    /// The container `id`, or the most recently created one.
    pub fn container(&self, id: Option<&str>) -> Result<&Container, StepError> {
        let id = self.container_id(id)?;
        Ok(&self.containers[&id])
    }

    fn container_id(&self, id: Option<&str>) -> Result<String, StepError> {
        match id {
            Some(id) if self.containers.contains_key(id) => Ok(id.to_string()),
            Some(id) => Err(StepError::NoContainer(Some(id.to_string()))),
            None => self
                .container_order
                .last()
                .cloned()
                .ok_or(StepError::NoContainer(None)),
        }
    }

    /// The ids of `top` and its ancestors, lowest first.
    pub fn chain(&self, top: Option<&str>) -> Vec<String> {
        let mut chain = Vec::new();
        let mut cur = top.map(|t| self.resolve(t).to_string());
        while let Some(id) = cur {
            cur = self.layers.get(&id).and_then(|l| l.parent.clone());
            chain.push(id);
        }
        chain.reverse();
        chain
    }

    /// The lower stack of image `top` (cached: image layers never change).
    pub fn stack(&mut self, top: Option<&str>) -> Arc<LowerStack> {
        let key = top.map_or("", |t| self.resolve(t)).to_string();
        if let Some(s) = self.stacks.get(&key) {
            return Arc::clone(s);
        }
        let layers = self
            .chain(top)
            .iter()
            .map(|id| Arc::clone(&self.layers[id]))
            .collect();
        let policy = Policy::new(self.driver, self.options);
        let s = Arc::new(if policy.farm_links {
            LowerStack::flattened(layers)
        } else if policy.flat {
            LowerStack::applied(layers)
        } else {
            LowerStack::new(layers)
        });
        self.stacks.insert(key, Arc::clone(&s));
        s
    }

    /// Builds an image layer from its entries.
    pub fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), StepError> {
        check_ids(spec.id.as_str(), spec.parent.as_deref())?;
        if self.id_taken(&spec.id) {
            return Err(StepError::LayerExists(spec.id.clone()));
        }
        if let Some(p) = &spec.parent {
            if !self.layers.contains_key(self.resolve(p)) {
                return Err(StepError::NoLayer(p.clone()));
            }
        }
        let mut spec = spec.clone();
        spec.parent = spec.parent.map(|p| self.resolve(&p).to_string());
        let spec = &spec;
        let policy = Policy {
            backing: self.backing,
            kernel: self.kernel,
            ..Policy::new(self.driver, self.options)
        };
        let tree = if policy.user_xattrs() {
            build_tree(spec)?
        } else {
            // Docker's layer applier (moby pkg/archive, createTarFile) skips an xattr the
            // filesystem refuses with ENOTSUP, with a warning ("ignored xattrs in archive:
            // underlying filesystem doesn't support them"): tmpfs before 6.6 keeps none.
            let mut spec = spec.clone();
            for e in &mut spec.entries {
                e.xattrs.retain(|k, _| !k.starts_with("user."));
            }
            build_tree(&spec)?
        };
        let layer = Layer {
            id: spec.id.clone(),
            parent: spec.parent.clone(),
            tree,
        };
        if self.capacity.is_some() {
            let mut with = self.clone();
            with.insert_layer(layer.clone())?;
            with.check_layer_fits(&spec.id)?;
        }
        self.insert_layer(layer)?;
        self.check_unpredicted(&format!("layer `{}`", spec.id), None, None)
    }

    /// devicemapper: the layer a commit that adds no layer registers and removes again
    /// ([`crate::devmapper`]'s `discarded_layer`), on image `image` with the files of
    /// image `applied` (the image itself for an empty tar, an earlier commit for the same
    /// tar again). Nothing on the other drivers: their layer directory comes and goes.
    fn discarded_layer(&mut self, image: &str, applied: &str) {
        if self.dm.is_none() {
            return;
        }
        let stack = self.stack(Some(applied));
        if let Some(dm) = &mut self.dm {
            dm.discarded_layer(image, &stack);
        }
    }

    fn insert_layer(&mut self, layer: Layer) -> Result<(), StepError> {
        if let Some(dm) = &self.dm {
            if dm.has_device(&layer.id) {
                return Err(StepError::LayerExists(layer.id));
            }
        }
        if let Some(p) = &layer.parent {
            self.built_upon.insert(p.clone());
        }
        let (id, parent) = (layer.id.clone(), layer.parent.clone());
        self.layer_order.push(layer.id.clone());
        self.layers.insert(layer.id.clone(), Arc::new(layer));
        self.refresh_farm_roots();
        if self.dm.is_some() {
            let stack = self.stack(Some(&id));
            if let Some(dm) = &mut self.dm {
                dm.add_layer(&id, parent.as_deref(), &stack);
            }
        }
        Ok(())
    }

    /// overlay driver: counts, for every file of every layer, the layer roots (hard-link
    /// farms) that hold it, and hands the counts to the containers (their lower files'
    /// `st_nlink`).
    fn refresh_farm_roots(&mut self) {
        if !Policy::new(self.driver, self.options).farm_links {
            return;
        }
        let mut roots: BTreeMap<(String, Ino), u32> = BTreeMap::new();
        for id in self.layer_order.clone() {
            let stack = self.stack(Some(&id));
            count_files(&stack, LowerStack::ROOT, &mut roots);
        }
        let roots = Arc::new(roots);
        for c in self.containers.values_mut() {
            c.farm_roots = Arc::clone(&roots);
        }
    }

    /// The transition: runs `op`, returning its outcome; on an errno nothing has changed,
    /// except after Docker's failed start ([`crate::start`]).
    pub fn apply(&mut self, op: &Op) -> Result<Outcome, StepError> {
        let plain = self.check_xfs_reservations(op)?;
        let out = self.transition(op)?;
        let counted = self.check_xfs_after(&out, plain)?;
        let (may_take_space, touched) = match op {
            Op::File { container, op } => (
                self.may_take_space(op),
                self.container_id(container.as_deref()).ok(),
            ),
            Op::Commit { .. } | Op::CreateContainer { .. } => (true, None),
            _ => (false, None),
        };
        if may_take_space {
            let device = touched.as_deref().map(crate::devmapper::device_hash);
            self.check_unpredicted("this step", device.as_deref(), counted.as_ref())?;
        }
        Ok(out)
    }

    fn transition(&mut self, op: &Op) -> Result<Outcome, StepError> {
        check_op_ids(op)?;
        match op {
            Op::File { container, op } => {
                let id = self.container_id(container.as_deref())?;
                let free = if self.may_take_space(op) {
                    self.budget()
                } else {
                    None
                };
                let c = self.containers.get_mut(&id).expect("exists");
                if c.stopped {
                    return Err(StepError::NotRunning(id));
                }
                c.space = free;
                c.clock = self.clock;
                let out = c.apply(op);
                c.space = None;
                self.clock = c.clock;
                if let Some(dm) = &mut self.dm {
                    dm.file_step(c, op, &out);
                }
                Ok(out)
            }
            Op::CreateContainer { id, image } => {
                if self.id_taken(id) {
                    return Err(StepError::ContainerExists(id.clone()));
                }
                if let Some(i) = image {
                    if !self.layers.contains_key(self.resolve(i)) {
                        return Err(StepError::NoLayer(i.clone()));
                    }
                }
                let image = &image.as_ref().map(|i| self.resolve(i).to_string());
                if self.dm.as_ref().is_some_and(|dm| dm.has_device(id)) {
                    return Err(StepError::ContainerExists(id.clone()));
                }
                let stack = self.stack(image.as_deref());
                let policy = Policy {
                    backing: self.backing,
                    kernel: self.kernel,
                    ..Policy::new(self.driver, self.options)
                };
                let init = match image {
                    Some(_) if self.init_layers => {
                        let init_id = crate::init_layer::init_layer_id(id);
                        if self.id_taken(&init_id) || self.inits.contains_key(id) {
                            return Err(StepError::LayerExists(init_id));
                        }
                        let mut ic = Container::new(&init_id, image.clone(), stack.clone(), policy);
                        ic.clock = self.clock;
                        // devicemapper: the init device, a snapshot of the image's, mounted
                        // for `Setup` (`Get`) and unmounted after (`Put`).
                        let mut dm = self.dm.clone();
                        if let Some(dm) = &mut dm {
                            dm.create_container(&init_id, image.as_deref(), &ic);
                        }
                        let made = crate::init_layer::setup(|op| {
                            let out = ic.apply(op);
                            if let Some(dm) = &mut dm {
                                dm.file_step(&ic, op, &out);
                            }
                            out
                        });
                        if let Err(e) = made {
                            return Ok(Err(e));
                        }
                        if let Some(dm) = &mut dm {
                            dm.put_device(&init_id);
                        }
                        self.dm = dm;
                        self.clock = ic.clock;
                        Some(ic)
                    }
                    _ => None,
                };
                let mut c = match &init {
                    Some(ic) => Container::on_init(id, ic, stack, policy),
                    None => Container::new(id, image.clone(), stack, policy),
                };
                if self.capacity.is_some() {
                    let mut with = self.clone();
                    with.containers.insert(id.clone(), c.clone());
                    with.container_order.push(id.clone());
                    if let Some(ic) = &init {
                        with.inits.insert(id.clone(), ic.clone());
                    }
                    if let Err(committed) = self.container_fits(&with, id, image.as_deref())? {
                        if let (true, Some(i)) = (committed, image) {
                            // overlay2 marked the image `committed` before it ran out.
                            self.built_upon.insert(i.clone());
                        }
                        return Ok(Err(crate::errno::Errno::ENOSPC));
                    }
                }
                if let Some(i) = image {
                    self.built_upon.insert(i.clone());
                }
                let has_init = init.is_some();
                let init_id = init.as_ref().map(|ic| ic.id.clone());
                if let Some(ic) = init {
                    self.built_upon.insert(ic.id.clone());
                    self.inits.insert(id.clone(), ic);
                }
                if let Some(dm) = &mut self.dm {
                    // On its init device when it has one.
                    let origin = init_id.as_deref().or(image.as_deref());
                    dm.create_container(id, origin, &c);
                }
                let first = self.containers.is_empty();
                if let Some(other) = self.containers.values().next() {
                    c.farm_roots = Arc::clone(&other.farm_roots);
                }
                self.containers.insert(id.clone(), c);
                self.container_order.push(id.clone());
                if first && policy.farm_links {
                    self.refresh_farm_roots();
                }
                if has_init {
                    // `docker start` after `docker create`.
                    return self.start(id);
                }
                Ok(Ok(Value::Unit))
            }
            Op::RemoveContainer { id } => {
                if self.containers.remove(id).is_none() {
                    return Err(StepError::NoContainer(Some(id.clone())));
                }
                // moby `ReleaseRWLayer` removes the container's layer, then its init layer.
                let init = self.inits.remove(id);
                if let Some(dm) = &mut self.dm {
                    dm.remove_container(id);
                    if let Some(ic) = init {
                        dm.remove_container(&ic.id);
                    }
                }
                self.container_order.retain(|c| c != id);
                Ok(Ok(Value::Unit))
            }
            Op::Commit { container, layer } => {
                if self.id_taken(layer) {
                    return Err(StepError::LayerExists(layer.clone()));
                }
                let c = self.container(container.as_deref())?;
                self.check_naive_diff(c)?;
                let id = c.id.clone();
                self.get_put(&id);
                let c = self.container(Some(&id))?;
                let image = self.parent_tree(c);
                let c_flat = c.policy.flat;
                let image_layer = c.image.as_deref().map(|i| self.resolve(i).to_string());
                let mut new = c.commit_layer(layer, &image);
                if let (true, Some(top), true) = (
                    self.init_layers,
                    &c.image,
                    new.tree.get(ROOT).children().is_some_and(|c| c.is_empty()),
                ) {
                    // Docker adds no layer for a commit without changes: the new image
                    // has the old one's layers (moby 20.10.24 `image/image.go`
                    // `NewChildImage`: a `layer.IsEmpty` diff is not appended to the
                    // RootFS; seen on dockerd 20.10.24, `fuzz --backend docker --seed 1`,
                    // trace 0; DOCK7).
                    let top = self.resolve(top).to_string();
                    self.discarded_layer(&top, &top);
                    self.aliases.insert(layer.clone(), top);
                    return Ok(Ok(Value::Unit));
                }
                // The layer's files are written whole (Docker's applier writes a tar's
                // bytes): no hole is left in them. Docker's tar writer carries no xattr but
                // `security.capability` (moby 20.10.24 pkg/archive/archive.go
                // `ReadSecurityXattrToTarHeader`), so the union drivers' commits lose the
                // `user.*` ones (seen on dockerd 20.10.24: `fuzz --backend docker --seed 1`,
                // traces 10, 11, 16; devicemapper's too, in the VM:
                // `init/commit_twice_without_a_change_is_one_layer`).
                if self.init_layers && !c_flat {
                    // The tar leaves out the writable layer's root (moby `TarWithOptions`:
                    // `IncludeSourceDir` false): the new layer's root is the directory the
                    // driver makes for it, 0755 (moby overlay2 `create`, aufs `Create`;
                    // seen on dockerd 20.10.24: `fuzz --backend docker --seed 1`, trace 77).
                    // And root's (seen: `fuzz --backend docker --users --seed 1`, trace 86).
                    let r = new.tree.get_mut(ROOT);
                    (r.mode, r.uid, r.gid) = (0o755, 0, 0);
                }
                let files: Vec<Ino> = new.tree.inodes().map(|(i, _)| i).collect();
                for i in files {
                    let inode = new.tree.get_mut(i);
                    inode.xattrs.clear();
                    if let Body::File { data, .. } = &mut inode.body {
                        data.fill_holes();
                    }
                }
                if self.capacity.is_some() {
                    let mut with = self.clone();
                    with.insert_layer(new.clone())?;
                    if with.overfull() {
                        // Docker removes the half-made layer.
                        return Ok(Err(crate::errno::Errno::ENOSPC));
                    }
                    with.check_commit_staging(layer, &new.tree)?;
                }
                // devicemapper's diff is the naive driver's `ExportChanges`, which gives each
                // whiteout the time of the export (moby 20.10.24 `pkg/archive/changes.go`
                // `ExportChanges`: `time.Now()` in a PAX header): a commit with a deletion is
                // never the same tar as another (seen on dockerd's devicemapper in the VM:
                // `init/commit_twice_without_a_change_is_one_layer`). The union drivers tar
                // their upper directory, whose whiteouts keep their times.
                let unique = self.driver == DriverKind::Devicemapper
                    && new.tree.inodes().any(|(_, i)| i.is_whiteout());
                if self.init_layers {
                    if let Some((tree, made)) = self.last_commit.get(&id).filter(|_| !unique) {
                        if *tree == new.tree {
                            // The same tar again: Docker's layer store has that layer (same
                            // chain id) and makes no other (moby `layer_store.go` `Register`
                            // returns the existing layer; seen on dockerd 20.10.24: two
                            // commits without a change between, `fuzz --backend docker
                            // --seed 1`, traces 34, 49, 112, 119).
                            let made = made.clone();
                            if let Some(image) = image_layer.as_deref() {
                                self.discarded_layer(image, &made);
                            }
                            self.aliases.insert(layer.clone(), made);
                            return Ok(Ok(Value::Unit));
                        }
                    }
                    self.last_commit
                        .insert(id, (new.tree.clone(), layer.clone()));
                }
                self.insert_layer(new)?;
                Ok(Ok(Value::Unit))
            }
            Op::Remount { container } => {
                let id = self.container_id(container.as_deref())?;
                self.check_remount_space(&id)?;
                let has_init = self.inits.contains_key(&id);
                let c = self.containers.get_mut(&id).expect("exists");
                c.remount();
                if let Some(dm) = &mut self.dm {
                    dm.remount(&id);
                }
                if has_init {
                    // Docker's stop and start.
                    return self.start(&id);
                }
                Ok(Ok(Value::Unit))
            }
            Op::Changes { container } => {
                let id = self.container_id(container.as_deref())?;
                self.get_put(&id);
                let c = self.container(Some(&id))?;
                if let (true, Some(init)) = (self.driver.is_overlayfs(), self.inits.get(&c.id)) {
                    // Docker's naive walker against the init layer, which it mounts for
                    // that (`Get(parent)`): overlay2 read-only (the init layer has
                    // `committed`, so moby's `Get` leaves out upper and work; seen on
                    // dockerd 20.10.24: its `work/work` keeps the shared whiteout), overlay
                    // with its upper, which empties `work/work`.
                    let changes = c.naive_changes(init);
                    if self.driver == DriverKind::Overlay {
                        let id = c.id.clone();
                        self.inits.get_mut(&id).expect("just read").remount();
                    }
                    return Ok(Ok(Value::Changes(changes)));
                }
                let image = self.parent_tree(c);
                let changes = c.changes(&image).map_err(StepError::NotFollowed)?;
                Ok(Ok(Value::Changes(changes)))
            }
        }
    }

    /// Docker's start of container `id` ([`crate::start`]). When it fails, the container
    /// is stopped and the step's outcome is the errno; what runc made before the failure
    /// stays (the one errno after which the state has changed).
    fn start(&mut self, id: &str) -> Result<Outcome, StepError> {
        let c = self.containers.get_mut(id).expect("exists");
        c.clock = self.clock;
        let dm = &mut self.dm;
        let r = crate::start::start(|op| {
            let out = c.apply(op);
            if let Some(dm) = dm.as_mut() {
                dm.file_step(c, op, &out);
            }
            out
        });
        self.clock = c.clock;
        c.stopped = r.is_err();
        if let (true, Some(dm)) = (c.stopped, &mut self.dm) {
            // Docker's `Put` of the container it could not start.
            dm.put_device(id);
        }
        match r {
            Ok(()) => Ok(Ok(Value::Unit)),
            Err(StartError::Errno(e)) => Ok(Err(e)),
            Err(StartError::Unmodelled(why)) => Err(StepError::Unsupported(why.into())),
        }
    }

    /// Docker's `Get` and `Put` of a container it did not start, around `docker commit` and
    /// `docker diff` (moby `exportContainerRw`, `NaiveDiffDriver.Changes`): a mount, which
    /// empties `work/work`. A running container is mounted already.
    fn get_put(&mut self, id: &str) {
        if let Some(c) = self.containers.get_mut(id).filter(|c| c.stopped) {
            c.remount();
            if let Some(dm) = &mut self.dm {
                dm.get_put(id);
            }
        }
    }

    /// overlay (v1) commits a container naively (moby wraps it in
    /// `graphdriver.NewNaiveDiffDriver`): with an init layer, the changes against the init
    /// layer's mount (`Container::naive_changes`) exported as a tar from the container's.
    /// That export (hard links, whiteouts for deletions) is not modelled yet, so the step
    /// is refused rather than answered with the upper layer, which holds the init layer's
    /// copy.
    fn check_naive_diff(&self, c: &Container) -> Result<(), StepError> {
        if self.driver == DriverKind::Overlay && self.inits.contains_key(&c.id) {
            return Err(StepError::Unsupported(NAIVE_DIFF_WITH_INIT.into()));
        }
        Ok(())
    }

    /// What devicemapper's naive diff (`docker diff`, `docker commit`) compares a
    /// container with: its parent device's whole filesystem, the init device's when it has
    /// one (moby `NaiveDiffDriver` against `Get(parent)`), else the image's.
    fn parent_tree(&self, c: &Container) -> Tree {
        match self.inits.get(&c.id) {
            Some(init) if c.policy.flat => init.upper.clone(),
            _ => self.image_tree(c),
        }
    }

    /// The image's whole filesystem under a container (what devicemapper compares with).
    pub fn image_tree(&self, c: &Container) -> Tree {
        if !c.policy.flat {
            return Tree::new();
        }
        let layers = self
            .chain(c.image.as_deref())
            .iter()
            .map(|id| Arc::clone(&self.layers[id]))
            .collect();
        let flat = LowerStack::applied(layers).flatten();
        // Same inode numbers as the container's snapshot: both flatten the same stack.
        flat
    }

    /// Runs an op that must not fail with an errno (for trace setup); a convenience for
    /// tests and benchmarks.
    pub fn apply_ok(&mut self, op: &Op) -> Result<Value, String> {
        match self.apply(op) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{op:?}: {e}")),
            Err(e) => Err(format!("{op:?}: {e}")),
        }
    }
}

/// Why overlay's `changes` and `commit` are refused on a container with an init layer.
pub const NAIVE_DIFF_WITH_INIT: &str = "overlay (v1) `commit` of a container with an init \
    layer: Docker's naive export against the init layer's mount is not modelled yet";

/// Parent directories made for an entry: 0o755.
const IMPLIED_DIR_MODE: u32 = 0o755;

/// Checks ids before anything is built: each must be a name ([`crate::check_id`]).
pub(crate) fn check_ids<'a>(
    id: &'a str,
    more: impl IntoIterator<Item = &'a str>,
) -> Result<(), StepError> {
    std::iter::once(id)
        .chain(more)
        .try_for_each(|i| crate::path::check_id(i).map_err(StepError::BadId))
}

/// Checks every id an operation names (container, image, new layer): each must be a name
/// ([`crate::check_id`]). The model and every real driver call this before acting.
pub fn check_op_ids(op: &Op) -> Result<(), StepError> {
    let ids: Vec<&str> = match op {
        Op::File { container, .. } | Op::Remount { container } | Op::Changes { container } => {
            container.as_deref().into_iter().collect()
        }
        Op::CreateContainer { id, image } => std::iter::once(id.as_str())
            .chain(image.as_deref())
            .collect(),
        Op::RemoveContainer { id } => vec![id.as_str()],
        Op::Commit { container, layer } => std::iter::once(layer.as_str())
            .chain(container.as_deref())
            .collect(),
    };
    ids.into_iter()
        .try_for_each(|i| crate::path::check_id(i).map_err(StepError::BadId))
}

/// Checks a layer as the model builds it, without building it: ids are names, paths are
/// canonical, no entry lies below a non-directory entry of the same layer, hard links name
/// an earlier file or symlink. The real drivers call this before they write anything, so a
/// layer the model refuses never reaches a disk, and the parser calls it to refuse such a
/// file with a located error.
pub fn validate_layer(spec: &LayerSpec) -> Result<(), StepError> {
    check_ids(spec.id.as_str(), spec.parent.as_deref())?;
    // The shape only: file contents do not change whether a layer can be built.
    let shape = LayerSpec {
        id: spec.id.clone(),
        parent: spec.parent.clone(),
        entries: spec
            .entries
            .iter()
            .map(|e| crate::step::Entry {
                path: e.path.clone(),
                kind: match &e.kind {
                    EntryKind::File(_) => EntryKind::File(crate::step::Content::Bytes(Vec::new())),
                    k => k.clone(),
                },
                mode: e.mode,
                xattrs: e.xattrs.clone(),
                owner: e.owner,
            })
            .collect(),
    };
    build_tree(&shape).map(|_| ())
}

fn build_tree(spec: &LayerSpec) -> Result<Tree, StepError> {
    let mut t = Tree::new();
    let mut explicit: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in spec.entries.iter().enumerate() {
        let bad = |reason: String| StepError::BadEntry {
            layer: spec.id.clone(),
            entry: i,
            reason,
        };
        if let Err(b) = crate::path::validate_scenario_path(&e.path) {
            return Err(bad(format!("`{}`: {b}", e.path)));
        }
        let names: Vec<&str> = crate::path::components(&e.path).collect();
        let Some((last, dirs)) = names.split_last() else {
            // `/` itself: only its mode and xattrs can be set.
            if let EntryKind::Dir { .. } = e.kind {
                let r = t.get_mut(ROOT);
                r.mode = e.mode.unwrap_or(0o755);
                r.xattrs = e.xattrs.clone();
                (r.uid, r.gid) = e.owner.unwrap_or((0, 0));
                continue;
            }
            return Err(bad("`/` can only be a directory".into()));
        };
        if let Some(prev) = explicit.insert(e.path.clone(), i) {
            return Err(bad(format!(
                "`{}` is listed twice (first as entry {prev})",
                e.path
            )));
        }
        let mut cur = ROOT;
        for d in dirs {
            cur = match t.child(cur, d) {
                Some(c) if t.get(c).is_dir() => c,
                Some(_) => return Err(bad(format!("a parent of `{}` is not a directory", e.path))),
                None => {
                    let n = t.alloc(new_inode(IMPLIED_DIR_MODE, empty_dir(false)));
                    t.attach(cur, d, n);
                    n
                }
            };
        }
        if let Some(existing) = t.child(cur, last) {
            // A directory made implicitly by an earlier entry, now listed itself.
            let ok = t.get(existing).is_dir() && matches!(e.kind, EntryKind::Dir { .. });
            if !ok {
                return Err(bad(format!("`{}` clashes with an earlier entry", e.path)));
            }
            let inode = t.get_mut(existing);
            inode.mode = e.mode.unwrap_or(0o755);
            inode.xattrs = e.xattrs.clone();
            (inode.uid, inode.gid) = e.owner.unwrap_or((0, 0));
            if let (Body::Dir { opaque, .. }, EntryKind::Dir { opaque: o }) =
                (&mut inode.body, &e.kind)
            {
                *opaque = *o;
            }
            continue;
        }
        let ino: Ino = match &e.kind {
            EntryKind::File(c) => t.alloc(new_inode(
                e.mode.unwrap_or(0o644),
                file_body(crate::data::FileData::from_content(c)),
            )),
            EntryKind::Dir { opaque } => {
                t.alloc(new_inode(e.mode.unwrap_or(0o755), empty_dir(*opaque)))
            }
            EntryKind::Symlink(target) => {
                if target.is_empty() {
                    return Err(bad("a symlink target must not be empty".into()));
                }
                t.alloc(new_inode(0o777, Body::Symlink(target.clone())))
            }
            EntryKind::Whiteout => t.alloc(new_inode(0, Body::Whiteout)),
            EntryKind::HardLink(to) => {
                if !explicit.contains_key(to) || explicit[to] >= i {
                    return Err(bad(format!(
                        "hard link to `{to}`, which is not an earlier entry of this layer"
                    )));
                }
                let target = t.lookup(to).expect("earlier entry exists");
                match t.get(target).body {
                    Body::File { .. } | Body::Symlink(_) => {}
                    _ => return Err(bad(format!("cannot hard-link `{to}`: not a file"))),
                }
                t.attach(cur, last, target);
                continue;
            }
        };
        if !e.xattrs.is_empty() {
            t.get_mut(ino).xattrs = e.xattrs.clone();
        }
        if let Some((uid, gid)) = e.owner {
            let i = t.get_mut(ino);
            (i.uid, i.gid) = (uid, gid);
        }
        t.attach(cur, last, ino);
    }
    Ok(t)
}

/// Counts the names a layer root shows for each regular file, by (layer id, inode).
fn count_files(
    stack: &LowerStack,
    node: crate::lower::NodeId,
    out: &mut BTreeMap<(String, Ino), u32>,
) {
    if let Some(children) = &stack.node(node).children {
        for &c in children.values() {
            let n = stack.node(c);
            match stack.inode(c).body {
                Body::File { .. } => {
                    *out.entry((stack.layers()[n.layer].id.clone(), n.ino))
                        .or_default() += 1;
                }
                Body::Dir { .. } => count_files(stack, c, out),
                _ => {}
            }
        }
    }
}
