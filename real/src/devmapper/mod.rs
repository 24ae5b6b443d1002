//! The real devicemapper graphdriver: Docker's `DeviceSet` (moby
//! `daemon/graphdriver/devmapper`, DOCK3) on kernel dm-thin, producing the layout the
//! model's `devmapper` module states (S18-S21, THIN9):
//!
//! - `devicemapper/devicemapper/{data,metadata}`: the loop-lvm sparse files (100 GiB and
//!   2 GiB, mode 0600) under the pool `docker-<maj>:<min>-<ino>-pool` (64 KiB blocks, low
//!   water mark 32768, `skip_block_zeroing`), `<maj>:<min>-<ino>` being the driver root's
//!   device and inode. Each driver root starts as Docker's first start leaves it: base
//!   device 1 (10 GiB ext4, made once per process and copied: see [`pool`]).
//! - Every image layer a snapshot of its parent's device (the lowest of the base device),
//!   mounted on `mnt/<hash>` while its entries are written ([`apply`]: the overlay drivers'
//!   layer semantics; whiteouts delete, opaque directories replace), then unmounted and
//!   deactivated (Docker's Get/Put). Every container a snapshot of its image's device (of
//!   the base device without one), or with init layers of its `-init` device (a snapshot
//!   of the image's, mounted while moby's `Setup` runs in it, then put; its changes and
//!   commits are taken against it; removed after the container), mounted on `mnt/<hash>`
//!   from creation to removal (or to a failed start: `layerspec_model::container_start`); its
//!   root is `mnt/<hash>/rootfs` (made with the `id` file at the first Get), where file
//!   steps run chrooted. Removal: Put, the whole device discarded (`BLKDISCARD`, Docker's
//!   `dm.blkdiscard`), then deleted. Remount: Put, Get. Commit: the container's changes
//!   against its image ([`diff`]) written as a new layer.
//! - Every create and delete is one transaction: `metadata/transaction-metadata` written,
//!   the pool message, `metadata/<hash>` written or removed, `set_transaction_id`. Docker's
//!   JSON is written by this driver from what it did (device ids it handed out, the
//!   transaction ids the pool took).
//! - Names: dm devices are `<sandbox>-<Docker's name>` (`layerspec-<pid>-<n>-docker-...`) so
//!   the sweeper covers a killed run; the observation reports Docker's name, with the
//!   model's placeholder `docker-<maj>:<min>-<ino>` for this root's numbers, and tables
//!   with `<metadata>`, `<data>` and `<pool>` for the device numbers in them.
//! - Observation: the storage walk of `devicemapper/` without the mounts on it (as the
//!   overlay drivers'), the metadata JSON in full (`text:`, the base UUID as `<uuid>`), each
//!   container's merged view from its mounted rootfs, the pool's figures from its status
//!   line after a `sync` and per device from `thin_dump` (status derived from the mapping:
//!   mapped sectors, last sector of the highest mapped block), mapping lists left out as the
//!   model leaves them out. Nothing is copied up: `copied_up_bytes` is 0.
//! - Looking writes nothing: the observation's merged view and the walks of a change list
//!   or commit read the container's root through a read-only `noatime` bind mount
//!   ([`quietly`]). Read directly, every file and directory read would get its access time
//!   set (relatime, the first read after a change), and the next `sync` would write the
//!   inode table and the journal: seen in the VM, two observations in a row without a step
//!   between them differed by 2 pool blocks. The model's observation has no side effect,
//!   and its change list none either. One write remains that no mount option avoids:
//!   ext4 records where it is mounted in its superblock, through the journal, at the first
//!   open of a file after each mount (`ext4_sample_last_mounted`, fs/ext4/file.c; it
//!   checks the superblock's read-only flag, not the mount's). So the first walk after a
//!   mount that no step opened a file in writes the container's journal chunk (seen:
//!   `thin_dump` showed that chunk copied from the image's between two observations). The
//!   pool is therefore read last, after the walks and a `sync`: that write lands in the
//!   observation that caused it, and figures stay put from one observation to the next
//!   (seen over 3 in a row, and after a remount). A container in Docker opens files as
//!   soon as its process starts, so the write is Docker's too; the model's ext4 stand-in
//!   does not count it, and the measured ranges cover it.
//! - The image a change list or commit compares with is mounted read-only on a directory
//!   outside `devicemapper/`: Docker's naive diff mounts the parent through Get (writing
//!   its superblock); the model counts no such write and shows no such mount.

mod apply;
mod diff;
mod pool;

pub use pool::remove_template;

use crate::commits::Commits;
use crate::confined::metadata::{mkdir, write_file};
use crate::observe;
use crate::ops;
use crate::sandbox::{BackingFs, Inside, Sandbox};
use crate::sys::{self, Log};
use crate::ContainerRec;
use layerspec_model::devmapper::{device_hash, BASE_DEVICE_BYTES, DISCARDED_LAYER};
use layerspec_model::{
    init_layer_id, Accounting, Driver, DriverError, DriverKind, Errno, KernelVersion, LayerSpec,
    Observation, Op, Outcome, PoolObservation, StartError, StepError, Value,
};
use pool::Pool;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Docker's `devInfo` of one device.
#[derive(Clone, Debug)]
struct DevInfo {
    device_id: u32,
    size: u64,
    transaction_id: u64,
    initialized: bool,
    mounted: bool,
}

/// The device set: the pool and Docker's bookkeeping of it. Lives on the sandbox thread's
/// side (every call is made there).
struct DeviceSet {
    pool: Pool,
    next_device_id: u32,
    transaction_id: u64,
    /// Devices by hash; the base device is `""`.
    devices: BTreeMap<String, DevInfo>,
    uuid: String,
}

fn top(root: &Path) -> PathBuf {
    root.join("devicemapper")
}

/// Docker's file name of a device under `metadata/` and its dm name's suffix.
fn file_name(hash: &str) -> &str {
    if hash.is_empty() {
        "base"
    } else {
        hash
    }
}

/// moby `ioutils.AtomicWriteFile(path, data, 0600)`: a temporary file renamed into place.
fn write_json(log: &mut Log, path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("layerspec-tmp");
    let _ = fs::remove_file(&tmp);
    write_file(log, &tmp, 0o600, text.as_bytes())?;
    log.note(format!("mv {} {}", tmp.display(), path.display()));
    fs::rename(&tmp, path)
}

impl DeviceSet {
    /// A driver root as Docker's init leaves it, in `root` (the sandbox's backing fs):
    /// the loop files copied from the base, the pool loaded, the metadata written.
    fn start(log: &mut Log, root: &Path, nodes: &Path, dm_prefix: String) -> io::Result<Self> {
        let t = pool::template().map_err(io::Error::other)?;
        let top = top(root);
        mkdir(log, &top, 0o700)?;
        let files = top.join("devicemapper");
        mkdir(log, &files, 0o700)?;
        mkdir(log, &top.join("metadata"), 0o700)?;
        pool::sparse_copy(log, &t.data(), &files.join("data"))?;
        pool::sparse_copy(log, &t.metadata(), &files.join("metadata"))?;
        let docker_prefix = pool::docker_prefix(&top)?;
        let pool = Pool::open(
            log,
            &files.join("metadata"),
            &files.join("data"),
            dm_prefix,
            docker_prefix,
            nodes.to_path_buf(),
        )?;
        let mut ds = DeviceSet {
            pool,
            next_device_id: 1,
            transaction_id: 1,
            devices: BTreeMap::new(),
            uuid: t.uuid.clone(),
        };
        ds.devices.insert(
            String::new(),
            DevInfo {
                device_id: 1,
                size: BASE_DEVICE_BYTES,
                transaction_id: 1,
                initialized: true,
                mounted: false,
            },
        );
        // What the base's creation left: its transaction, its devInfo, and the device
        // set's metadata (written once the base filesystem was made).
        ds.save_transaction(log, root, 1, "", 1)?;
        ds.save_device(log, root, "")?;
        let text = format!(
            "{{\"next_device_id\":1,\"BaseDeviceUUID\":\"{}\",\"BaseDeviceFilesystem\":\"ext4\"}}",
            ds.uuid
        );
        write_json(log, &top.join("metadata/deviceset-metadata"), &text)?;
        Ok(ds)
    }

    fn save_transaction(
        &self,
        log: &mut Log,
        root: &Path,
        tx: u64,
        hash: &str,
        id: u32,
    ) -> io::Result<()> {
        let text = format!(
            "{{\"open_transaction_id\":{tx},\"device_hash\":\"{hash}\",\"device_id\":{id}}}"
        );
        write_json(log, &top(root).join("metadata/transaction-metadata"), &text)
    }

    fn save_device(&self, log: &mut Log, root: &Path, hash: &str) -> io::Result<()> {
        let d = &self.devices[hash];
        let text = format!(
            "{{\"device_id\":{},\"size\":{},\"transaction_id\":{},\"initialized\":{},\"deleted\":false}}",
            d.device_id, d.size, d.transaction_id, d.initialized
        );
        write_json(
            log,
            &top(root).join("metadata").join(file_name(hash)),
            &text,
        )
    }

    /// Closes the open transaction `new` (moby `closeTransaction`).
    fn close_transaction(&mut self, log: &mut Log, new: u64) -> io::Result<()> {
        self.pool.message(
            log,
            &format!("set_transaction_id {} {new}", self.transaction_id),
        )?;
        self.transaction_id = new;
        Ok(())
    }

    /// moby `getNextFreeDeviceID`: on from the last id handed out, 24 bits, skipping ids
    /// in use.
    fn next_free_id(&mut self) -> u32 {
        loop {
            self.next_device_id = (self.next_device_id + 1) & 0xff_ffff;
            let id = self.next_device_id;
            if !self.devices.values().any(|d| d.device_id == id) {
                return id;
            }
        }
    }

    /// moby `AddDevice`: a snapshot of `origin` in a transaction of its own.
    fn add_device(
        &mut self,
        log: &mut Log,
        root: &Path,
        hash: &str,
        origin: &str,
    ) -> io::Result<()> {
        let o = self.devices[origin].clone();
        let id = self.next_free_id();
        let tx = self.transaction_id + 1;
        self.save_transaction(log, root, tx, hash, id)?;
        self.pool.create_snap(log, id, o.device_id)?;
        self.devices.insert(
            hash.to_string(),
            DevInfo {
                device_id: id,
                size: o.size,
                transaction_id: tx,
                initialized: false,
                mounted: false,
            },
        );
        self.save_device(log, root, hash)?;
        self.close_transaction(log, tx)
    }

    fn activate(&mut self, log: &mut Log, hash: &str) -> io::Result<PathBuf> {
        let d = &self.devices[hash];
        let (id, size) = (d.device_id, d.size);
        self.pool.activate(log, id, file_name(hash), size)
    }

    fn deactivate(&mut self, log: &mut Log, hash: &str) -> io::Result<()> {
        let id = self.devices[hash].device_id;
        self.pool.deactivate(log, id)
    }

    /// Docker's Get: the device activated and mounted on `mnt/<hash>`; `rootfs/` and the
    /// `id` file made the first time.
    fn get(&mut self, log: &mut Log, root: &Path, hash: &str) -> io::Result<PathBuf> {
        let mnt = top(root).join("mnt");
        if fs::symlink_metadata(&mnt).is_err() {
            mkdir(log, &mnt, 0o755)?;
        }
        let mp = mnt.join(hash);
        mkdir(log, &mp, 0o755)?;
        let node = self.activate(log, hash)?;
        // Docker's default `dm.mountopt` is empty.
        sys::mount(log, &node.display().to_string(), &mp, "ext4", "")?;
        self.devices.get_mut(hash).expect("known device").mounted = true;
        let rootfs = mp.join("rootfs");
        if fs::symlink_metadata(&rootfs).is_err() {
            mkdir(log, &rootfs, 0o755)?;
        }
        if fs::symlink_metadata(mp.join("id")).is_err() {
            write_file(log, &mp.join("id"), 0o600, hash.as_bytes())?;
        }
        Ok(rootfs)
    }

    /// Docker's Put: unmounted, deactivated, `mnt/<hash>` removed.
    fn put(&mut self, log: &mut Log, root: &Path, hash: &str) -> io::Result<()> {
        let mp = top(root).join("mnt").join(hash);
        sys::umount(log, &mp, false)?;
        self.devices.get_mut(hash).expect("known device").mounted = false;
        self.deactivate(log, hash)?;
        log.note(format!("rmdir {}", mp.display()));
        fs::remove_dir(&mp)
    }

    /// moby `deleteDevice`: the whole device discarded, then deleted in a transaction.
    fn delete_device(&mut self, log: &mut Log, root: &Path, hash: &str) -> io::Result<()> {
        let d = self.devices[hash].clone();
        let node = self.activate(log, hash)?;
        let f = fs::OpenOptions::new().read(true).write(true).open(&node)?;
        let discarded = sys::blkdiscard(log, &f, 0, d.size);
        drop(f);
        self.deactivate(log, hash)?;
        discarded?;
        let tx = self.transaction_id + 1;
        self.save_transaction(log, root, tx, hash, d.device_id)?;
        self.pool.message(log, &format!("delete {}", d.device_id))?;
        self.devices.remove(hash);
        let file = top(root).join("metadata").join(file_name(hash));
        log.note(format!("rm {}", file.display()));
        fs::remove_file(&file)?;
        self.close_transaction(log, tx)
    }

    /// A layer: a snapshot of `origin`, mounted, `spec`'s entries applied (chrooted in the
    /// device's `rootfs/`, through [`crate::confined`]) with their modification times as
    /// Docker's applier sets them from the tar headers: `times` for a commit (the
    /// container's), else the one time every scenario layer's entries carry
    /// ([`crate::layer::ENTRY_MTIME`]); unmounted.
    fn add_layer(
        &mut self,
        inside: &mut crate::sandbox::Inside,
        hash: &str,
        origin: &str,
        spec: &LayerSpec,
        times: Option<&[(String, i64)]>,
    ) -> io::Result<()> {
        let root = inside.root.clone();
        self.add_device(&mut inside.log, &root, hash, origin)?;
        let rootfs = self.get(&mut inside.log, &root, hash)?;
        let applied = inside.confine(&rootfs).and_then(|mut c| {
            apply::apply_layer(&mut c, spec, Path::new("/"))?;
            let entry_times: Vec<(String, i64)> = match times {
                Some(t) => t.to_vec(),
                None => spec
                    .entries
                    .iter()
                    .filter(|e| !matches!(e.kind, layerspec_model::EntryKind::Whiteout))
                    .map(|e| (e.path.clone(), crate::layer::ENTRY_MTIME))
                    .collect(),
            };
            for (path, t) in entry_times {
                let p = Path::new("/").join(path.trim_start_matches('/'));
                if fs::symlink_metadata(&p).is_ok() {
                    c.set_times(&p, t)?;
                }
            }
            Ok(())
        });
        applied?;
        self.put(&mut inside.log, &root, hash)
    }

    /// Mounts the device of `hash` read-only on `at` (see the module docs), or `None` for
    /// the base device, whose filesystem has no `rootfs/`: an empty image.
    fn mount_image(&mut self, log: &mut Log, hash: &str, at: &Path) -> io::Result<Option<PathBuf>> {
        if hash.is_empty() {
            return Ok(None);
        }
        let node = self.activate(log, hash)?;
        mkdir(log, at, 0o700)?;
        sys::mount_ro(log, &node, at, "ext4")?;
        Ok(Some(at.join("rootfs")))
    }

    fn unmount_image(&mut self, log: &mut Log, hash: &str, at: &Path) -> io::Result<()> {
        if hash.is_empty() {
            return Ok(());
        }
        sys::umount(log, at, false)?;
        fs::remove_dir(at)?;
        self.deactivate(log, hash)
    }

    /// Runs `f` on the image root of container `hash` (whose image device is `image`) and
    /// the container's root.
    fn with_image<R>(
        &mut self,
        log: &mut Log,
        root: &Path,
        image: &str,
        hash: &str,
        f: impl FnOnce(Option<&Path>, &Path) -> io::Result<R>,
    ) -> io::Result<R> {
        let at = root
            .parent()
            .expect("sandbox dir")
            .join(format!("image-{}", file_name(image)));
        let old = self.mount_image(log, image, &at)?;
        let new = top(root).join("mnt").join(hash).join("rootfs");
        let quiet = root.parent().expect("sandbox dir").join("quiet");
        let r = quietly(log, &new, &quiet, |new| f(old.as_deref(), new));
        let u = self.unmount_image(log, image, &at);
        let r = r?;
        u?;
        Ok(r)
    }

    /// Unmounts every mounted device, then closes the pool.
    fn shut_down(self, log: &mut Log, root: &Path) -> io::Result<()> {
        let mounted: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.mounted)
            .map(|(h, _)| h.clone())
            .collect();
        let mut first = None;
        for h in mounted {
            if let Err(e) = sys::umount(log, &top(root).join("mnt").join(&h), false) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.pool.close(log) {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}

/// The pool a dockerd made for its driver directory `top` (the docker backend), as
/// observed, and its devices' tables, named as the model names them.
pub(crate) fn observe_docker_pool(
    log: &mut Log,
    top: &Path,
) -> io::Result<(PoolObservation, BTreeMap<String, String>)> {
    let pool = Pool::attach(&pool::docker_prefix(top)?)?;
    let observed = pool.observe(log)?;
    Ok((observed, pool.model_tables()?))
}

/// Runs `f` on `dir` seen through a read-only `noatime` bind mount on `at` (made and
/// removed here): reading there changes nothing below.
pub(crate) fn quietly<R>(
    log: &mut Log,
    dir: &Path,
    at: &Path,
    f: impl FnOnce(&Path) -> io::Result<R>,
) -> io::Result<R> {
    if fs::symlink_metadata(at).is_err() {
        fs::create_dir(at)?;
    }
    sys::bind_quiet(log, dir, at)?;
    let r = f(at);
    let u = sys::umount(log, at, false);
    let r = r?;
    u?;
    Ok(r)
}

impl ContainerRec {
    /// The device its changes are taken against: its init device, else its image's.
    fn parent_hash(&self) -> String {
        self.init
            .as_deref()
            .or(self.image.as_deref())
            .map(device_hash)
            .unwrap_or_default()
    }
}

/// The tar of a commit, as Docker's layer store tells two apart: by their entries, except
/// that a tar with a whiteout is like no other (moby 20.10.24 `pkg/archive/changes.go`
/// `ExportChanges` gives whiteouts the time of the export; the model's rule in its
/// `Commit`).
#[derive(Debug)]
struct DiffTar(Vec<layerspec_model::Entry>);

impl PartialEq for DiffTar {
    fn eq(&self, other: &DiffTar) -> bool {
        let timed = |t: &DiffTar| {
            t.0.iter()
                .any(|e| matches!(e.kind, layerspec_model::EntryKind::Whiteout))
        };
        !timed(self) && !timed(other) && self.0 == other.0
    }
}

/// A real devicemapper driver root in its own sandbox.
pub struct DmDriver {
    /// Scenario layer id -> parent.
    layers: BTreeMap<String, Option<String>>,
    /// With init layers, the ids of commits that made no layer and each container's last
    /// commit, by its entries (DOCK7).
    commits: Commits<DiffTar>,
    /// Containers, in creation order.
    containers: Vec<ContainerRec>,
    /// Whether containers get Docker's `-init` device.
    init_layers: bool,
    set: Arc<Mutex<Option<DeviceSet>>>,
    sandbox: Sandbox,
    /// The kernel it runs on: the model side of a differential run follows its rules.
    kernel: KernelVersion,
}

impl DmDriver {
    /// A driver root as Docker's first start leaves it, on `backing`.
    pub fn new(backing: BackingFs) -> io::Result<DmDriver> {
        let kernel = crate::probe::kernel_version()?;
        let sandbox = Sandbox::new(backing)?;
        let dm_prefix = format!(
            "{}-",
            sandbox
                .host_dir()
                .file_name()
                .expect("a sandbox dir has a name")
                .to_string_lossy()
        );
        let set = sandbox.run(move |inside| -> io::Result<DeviceSet> {
            let nodes = inside.root.parent().expect("sandbox dir").to_path_buf();
            DeviceSet::start(&mut inside.log, &inside.root, &nodes, dm_prefix).map_err(|e| {
                io::Error::other(format!(
                    "{e} (last actions: {})",
                    inside.log.tail(4).join("; ")
                ))
            })
        })?;
        Ok(DmDriver {
            layers: BTreeMap::new(),
            commits: Commits::new(),
            containers: Vec::new(),
            init_layers: false,
            set: Arc::new(Mutex::new(Some(set))),
            sandbox,
            kernel,
        })
    }

    /// Runs `f` with the device set on the sandbox thread.
    fn with<R: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&mut DeviceSet, &mut Inside) -> io::Result<R> + Send + 'static,
    ) -> Result<R, DriverError> {
        let set = Arc::clone(&self.set);
        self.sandbox.run(move |inside| {
            let mut g = set.lock().unwrap_or_else(|p| p.into_inner());
            let Some(ds) = g.as_mut() else {
                return Err(DriverError::Backend("the driver was shut down".into()));
            };
            f(ds, inside).map_err(|e| inside.log.backend_err(&what, e))
        })
    }

    fn has_device(&self, id: &str) -> bool {
        let hash = device_hash(id);
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        set.as_ref().is_some_and(|s| s.devices.contains_key(&hash))
    }

    fn container(&self, id: Option<&str>) -> Result<ContainerRec, StepError> {
        crate::pick_container(&self.containers, id, |c| c.id.as_str())
    }

    /// The layer a layer id names (itself, or the layer a commit without one aliased).
    fn resolve(&self, id: &str) -> String {
        self.commits.resolve(id)
    }

    fn taken(&self, id: &str) -> bool {
        self.layers.contains_key(id) || self.commits.is_alias(id) || self.has_device(id)
    }

    fn write_layer(
        &mut self,
        spec: LayerSpec,
        times: Option<Vec<(String, i64)>>,
    ) -> Result<(), DriverError> {
        layerspec_model::validate_layer(&spec)?;
        if self.layers.contains_key(&spec.id) || self.has_device(&spec.id) {
            return Err(StepError::LayerExists(spec.id.clone()).into());
        }
        if let Some(p) = &spec.parent {
            if !self.layers.contains_key(p) {
                return Err(StepError::NoLayer(p.clone()).into());
            }
        }
        let (id, parent) = (spec.id.clone(), spec.parent.clone());
        let hash = device_hash(&spec.id);
        let origin = spec.parent.as_deref().map(device_hash).unwrap_or_default();
        self.with(format!("building layer `{id}`"), move |ds, inside| {
            ds.add_layer(inside, &hash, &origin, &spec, times.as_deref())
        })?;
        self.layers.insert(id, parent);
        Ok(())
    }

    fn create_container(&mut self, id: &str, image: Option<&str>) -> Result<Outcome, DriverError> {
        layerspec_model::check_op_ids(&Op::CreateContainer {
            id: id.to_string(),
            image: image.map(String::from),
        })?;
        if self.containers.iter().any(|c| c.id == id) {
            return Err(StepError::ContainerExists(id.to_string()).into());
        }
        let image = image.map(|i| self.resolve(i));
        if let Some(i) = &image {
            if !self.layers.contains_key(i) {
                return Err(StepError::NoLayer(i.to_string()).into());
            }
        }
        if self.has_device(id) {
            return Err(StepError::ContainerExists(id.to_string()).into());
        }
        let hash = device_hash(id);
        let mut origin = image.as_deref().map(device_hash).unwrap_or_default();
        let init = (self.init_layers && image.is_some()).then(|| init_layer_id(id));
        if let Some(init) = &init {
            if self.taken(init) {
                return Err(StepError::LayerExists(init.clone()).into());
            }
            // moby `initMount`: the init device made, mounted, `Setup` run in it, unmounted.
            let (ih, o) = (device_hash(init), origin.clone());
            let made = self.with(format!("making `{init}`"), move |ds, inside| {
                ds.add_device(&mut inside.log, &inside.root, &ih, &o)?;
                let rootfs = ds.get(&mut inside.log, &inside.root, &ih)?;
                let r = inside
                    .real_root
                    .within(&rootfs, || layerspec_model::init_layer_setup(ops::run))?;
                ds.put(&mut inside.log, &inside.root, &ih)?;
                Ok(r)
            })?;
            if let Err(e) = made {
                return Ok(Err(e));
            }
            origin = device_hash(init);
        }
        self.with(format!("creating container `{id}`"), move |ds, inside| {
            ds.add_device(&mut inside.log, &inside.root, &hash, &origin)?;
            ds.get(&mut inside.log, &inside.root, &hash).map(|_| ())
        })?;
        let rec = ContainerRec {
            id: id.to_string(),
            image,
            init,
            stopped: false,
        };
        self.containers.push(rec.clone());
        if rec.init.is_some() {
            // `docker start` after `docker create`.
            return self.start(&rec);
        }
        Ok(Ok(Value::Unit))
    }

    /// Docker's start of container `c` as its root sees it (`layerspec_model::container_start`).
    /// When it fails, Docker puts the device (unmounted, deactivated) and the container is
    /// stopped; the step's outcome is the errno.
    fn start(&mut self, c: &ContainerRec) -> Result<Outcome, DriverError> {
        let mut failed_call = None;
        let r = layerspec_model::container_start(|op| match self.file_op(&c.id, op.clone()) {
            Ok(out) => out,
            Err(e) => {
                failed_call.get_or_insert(e);
                Err(Errno::EIO)
            }
        });
        if let Some(e) = failed_call {
            return Err(e);
        }
        let stopped = r.is_err();
        if stopped {
            let hash = device_hash(&c.id);
            self.with(format!("putting `{}`", c.id), move |ds, inside| {
                ds.put(&mut inside.log, &inside.root, &hash)
            })?;
        }
        if let Some(x) = self.containers.iter_mut().find(|x| x.id == c.id) {
            x.stopped = stopped;
        }
        match r {
            Ok(()) => Ok(Ok(Value::Unit)),
            Err(StartError::Errno(e)) => Ok(Err(e)),
            Err(StartError::Unmodelled(why)) => Err(StepError::Unsupported(why.into()).into()),
        }
    }

    /// Runs `f` with container `c`'s device mounted: a stopped container is mounted for it
    /// and put after, as `docker diff` and `docker commit` do (`Get`, then `Put`).
    fn mounted<R: Send + 'static>(
        &self,
        c: &ContainerRec,
        what: String,
        f: impl FnOnce(&mut DeviceSet, &mut Inside) -> io::Result<R> + Send + 'static,
    ) -> Result<R, DriverError> {
        let (hash, stopped) = (device_hash(&c.id), c.stopped);
        self.with(what, move |ds, inside| {
            if stopped {
                ds.get(&mut inside.log, &inside.root, &hash)?;
            }
            let r = f(ds, inside);
            if stopped {
                ds.put(&mut inside.log, &inside.root, &hash)?;
            }
            r
        })
    }

    fn file_op(&self, id: &str, op: layerspec_model::FileOp) -> Result<Outcome, DriverError> {
        let hash = device_hash(id);
        self.with(format!("a step in `{id}`"), move |_, inside| {
            let rootfs = top(&inside.root).join("mnt").join(&hash).join("rootfs");
            inside.real_root.within(&rootfs, || ops::run(&op))
        })
    }
}

impl Driver for DmDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Devicemapper
    }

    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    fn backend(&self) -> &'static str {
        "kernel"
    }

    fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), DriverError> {
        self.write_layer(spec.clone(), None)
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
                self.file_op(&c.id, op.clone())
            }
            Op::CreateContainer { id, image } => self.create_container(id, image.as_deref()),
            Op::RemoveContainer { id } => {
                let c = self.container(Some(id))?;
                let hash = device_hash(&c.id);
                let init = c.init.as_deref().map(device_hash);
                let stopped = c.stopped;
                // moby `ReleaseRWLayer`: the container's device, then its init device.
                self.with(format!("removing `{id}`"), move |ds, inside| {
                    if !stopped {
                        ds.put(&mut inside.log, &inside.root, &hash)?;
                    }
                    ds.delete_device(&mut inside.log, &inside.root, &hash)?;
                    match init {
                        Some(ih) => ds.delete_device(&mut inside.log, &inside.root, &ih),
                        None => Ok(()),
                    }
                })?;
                self.containers.retain(|x| x.id != c.id);
                Ok(Ok(Value::Unit))
            }
            Op::Commit { container, layer } => {
                if self.taken(layer) {
                    return Err(StepError::LayerExists(layer.clone()).into());
                }
                let c = self.container(container.as_deref())?;
                let hash = device_hash(&c.id);
                let parent = c.parent_hash();
                let what = format!("reading `{}`'s diff", c.id);
                let (entries, times) = self.mounted(&c, what, move |ds, inside| {
                    ds.with_image(&mut inside.log, &inside.root, &parent, &hash, |o, n| {
                        let entries = diff::commit_entries(o, n)?;
                        let times = diff::entry_times(n, &entries)?;
                        Ok((entries, times))
                    })
                })?;
                if let (true, Some(top)) = (self.init_layers, &c.image) {
                    let empty = entries.iter().all(|e| e.path == "/");
                    if self
                        .commits
                        .reuses(&c.id, top, layer, empty, DiffTar(entries.clone()))
                    {
                        // Docker's layer store registers the tar all the same, on the
                        // image, and removes that layer again (the model's
                        // `discarded_layer`).
                        let image = device_hash(&self.commits.resolve(top));
                        let spec = LayerSpec {
                            // A name for messages: the device is `DISCARDED_LAYER`.
                            id: "discarded".into(),
                            parent: None,
                            entries: if empty { Vec::new() } else { entries },
                        };
                        let what = "the layer Docker registers and removes again".to_string();
                        self.with(what, move |ds, inside| {
                            ds.add_layer(inside, DISCARDED_LAYER, &image, &spec, Some(&times))?;
                            let root = inside.root.clone();
                            ds.delete_device(&mut inside.log, &root, DISCARDED_LAYER)
                        })?;
                        return Ok(Ok(Value::Unit));
                    }
                }
                self.write_layer(
                    LayerSpec {
                        id: layer.clone(),
                        parent: c.image.clone(),
                        entries,
                    },
                    Some(times),
                )?;
                Ok(Ok(Value::Unit))
            }
            Op::Remount { container } => {
                let c = self.container(container.as_deref())?;
                let (hash, stopped) = (device_hash(&c.id), c.stopped);
                self.with(format!("remounting `{}`", c.id), move |ds, inside| {
                    if !stopped {
                        ds.put(&mut inside.log, &inside.root, &hash)?;
                    }
                    ds.get(&mut inside.log, &inside.root, &hash).map(|_| ())
                })?;
                if c.init.is_some() {
                    return self.start(&c);
                }
                Ok(Ok(Value::Unit))
            }
            Op::Changes { container } => {
                let c = self.container(container.as_deref())?;
                let hash = device_hash(&c.id);
                let parent = c.parent_hash();
                let what = format!("`{}`'s changes", c.id);
                let changes = self.mounted(&c, what, move |ds, inside| {
                    ds.with_image(&mut inside.log, &inside.root, &parent, &hash, diff::changes)
                })?;
                Ok(Ok(Value::Changes(changes)))
            }
        }
    }

    fn observe(&mut self) -> Result<Observation, DriverError> {
        let containers: Vec<(String, bool)> = self
            .containers
            .iter()
            .map(|c| (c.id.clone(), c.stopped))
            .collect();
        self.with("observing".into(), move |ds, inside| {
            // The driver's directory as it is on disk, without the devices mounted on it.
            let view = inside.root.parent().expect("sandbox dir").join("view");
            if fs::symlink_metadata(&view).is_err() {
                fs::create_dir(&view)?;
            }
            sys::bind(&mut inside.log, &inside.root, &view)?;
            let listed = observe::storage(&view.join("devicemapper"), "devicemapper");
            let listed = listed.and_then(|(mut storage, n)| {
                // Docker's JSON in full, as the model shows it.
                for (path, e) in storage.iter_mut() {
                    if path.starts_with("devicemapper/metadata/") && e.kind == "file" {
                        let text = fs::read_to_string(view.join(path))?;
                        e.content = Some(format!("text:{}", text.replace(&ds.uuid, "<uuid>")));
                    }
                }
                Ok((storage, n))
            });
            sys::umount(&mut inside.log, &view, false)?;
            let (storage, inodes_used) = listed?;
            let mut merged = BTreeMap::new();
            let mut accounting = Accounting {
                inodes_used,
                ..Accounting::default()
            };
            for (c, stopped) in &containers {
                accounting.copied_up_bytes.insert(c.clone(), 0);
                if *stopped {
                    // A container Docker could not start has no mounted root.
                    continue;
                }
                let rootfs = top(&inside.root)
                    .join("mnt")
                    .join(device_hash(c))
                    .join("rootfs");
                let quiet = inside.root.parent().expect("sandbox dir").join("quiet");
                let view = quietly(&mut inside.log, &rootfs, &quiet, observe::merged_view)?;
                merged.insert(c.clone(), view);
            }
            // Last: the pool after a sync of everything above.
            accounting.pool = Some(ds.pool.observe(&mut inside.log)?);
            accounting.dm_tables = ds.pool.model_tables()?;
            Ok(Observation {
                merged,
                storage,
                accounting,
            })
        })
    }
}

impl Drop for DmDriver {
    fn drop(&mut self) {
        let set = Arc::clone(&self.set);
        self.sandbox.run(move |inside| {
            let taken = set.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(ds) = taken {
                if let Err(e) = ds.shut_down(&mut inside.log, &inside.root) {
                    eprintln!(
                        "layerspec: shutting a devicemapper root down: {e} (last actions: {})",
                        inside.log.tail(4).join("; ")
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::DiffTar;
    use layerspec_model::{Entry, EntryKind};

    #[test]
    fn a_commit_tar_with_a_whiteout_is_like_no_other() {
        let e = |path: &str, kind: EntryKind| Entry {
            path: path.into(),
            kind,
            mode: None,
            xattrs: Default::default(),
            owner: None,
        };
        let dir = || e("/d", EntryKind::Dir { opaque: false });
        let plain = DiffTar(vec![dir()]);
        assert_eq!(plain, DiffTar(vec![dir()]));
        let timed = || DiffTar(vec![dir(), e("/d/a", EntryKind::Whiteout)]);
        assert_ne!(timed(), timed());
        assert_ne!(plain, DiffTar(vec![]));
    }
}
