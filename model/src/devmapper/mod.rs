//! The devicemapper graphdriver on the thin-pool model: Docker's `DeviceSet` (moby
//! `daemon/graphdriver/devmapper/deviceset.go` and `driver.go`, removed in 25.0, DOCK3).
//!
//! - The pool (S18, THIN9): loop-lvm, sparse files `devicemapper/devicemapper/data` (100
//!   GiB) and `.../metadata` (2 GiB) under the driver root, 64 KiB blocks (128 sectors),
//!   low water mark 32768 blocks, feature `skip_block_zeroing` (`CreatePool`).
//! - Names (S19): the prefix is `docker-<maj>:<min>-<ino>`, the device and inode of the
//!   driver root (`stat` of `/var/lib/docker/devicemapper`); the pool is `<prefix>-pool`, a
//!   thin device `<prefix>-<hash>`, the base device `<prefix>-base`. The model cannot know
//!   the numbers: it writes the placeholder [`PREFIX`] and a real driver puts its own
//!   `<maj>:<min>-<ino>` back to the placeholder before comparing.
//! - Devices (S20): at start the base device (id 1, 10 GiB) with an ext4 filesystem (the
//!   model's `FsImage`), `initialized` once mkfs ran. Every image layer is a snapshot of
//!   its parent, the lowest of the base device; every container a snapshot of its image
//!   (of the base device without one), or with `init = true` of its `-init` device: a
//!   snapshot of the image's, mounted while Docker's `Setup` runs in it (DOCK4), then
//!   unmounted; removed after the container. Device ids count up from the last one handed out (`NextDeviceID`,
//!   24-bit, freed ids are not reused before wrapping); every create and every delete is one
//!   transaction: the pool's transaction id goes up by one (`set_transaction_id`).
//! - Metadata (S21): per device `metadata/<hash>` (`base` for the base device), the JSON
//!   of `devInfo`: `{"device_id":..,"size":..,"transaction_id":..,"initialized":..,
//!   "deleted":false}`; `metadata/transaction-metadata`, the last transaction opened:
//!   `{"open_transaction_id":..,"device_hash":..,"device_id":..}`;
//!   `metadata/deviceset-metadata`, written when the base filesystem was made and not
//!   again before shutdown: `{"next_device_id":1,"BaseDeviceUUID":"<uuid>",
//!   "BaseDeviceFilesystem":"ext4"}` (the UUID is mkfs's, random: shown as `<uuid>`).
//! - Mounts (S21): Docker's Get mounts a device on `mnt/<hash>` (0755, `mnt/` 0755 too),
//!   makes `rootfs/` in its filesystem and an `id` file holding the hash, once; Put
//!   unmounts and removes `mnt/<hash>`. Layers are mounted only while their diff is
//!   applied; a container is mounted from its creation to its removal. Removing one
//!   discards the whole device (`dm.blkdiscard`, on by default for loop-lvm), then deletes
//!   it: exactly its own blocks go back to the pool.
//! - Scenario ids are Docker's hashes ([`device_hash`]).
//! - Pool figures are those after a `sync` of every mounted filesystem: a real driver
//!   syncs before it reads the pool's status.
//!
//! The filesystem on the devices is ext4 (`dm.fs=ext4`, which the docker backend passes
//! to dockerd; without it Docker takes xfs when `mkfs.xfs` exists and xfs is loaded), made
//! as Docker makes it: `mkfs.ext4 -E
//! nodiscard,lazy_itable_init=0,lazy_journal_init=0`, `tune2fs -c -1 -i 0`.

mod fs;
mod runs;

use crate::container::Container;
use crate::lower::LowerStack;
use crate::step::{FileOp, Outcome};
use crate::thin::units::{BlockSize, Sectors};
use crate::thin::{Features, PoolObservation, PoolParams, ThinOp, ThinPool};
use crate::tree::Tree;
use fs::{FsImage, FS_BLOCK, MKFS_CHUNKS};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Docker's device-name prefix with the driver root's device and inode left as a
/// placeholder (S19): a real driver replaces its `<major>:<minor>-<inode>` by it.
pub const PREFIX: &str = "docker-<maj>:<min>-<ino>";

/// The hash of the layer a commit that adds no layer makes and deletes again (Docker's
/// random cache id, which nothing reports: a real driver shows a hash it cannot name as
/// this).
pub const DISCARDED_LAYER: &str = "<discarded-layer>";

/// The loop-lvm data file: 100 GiB (`defaultDataLoopbackSize`).
pub const DATA_FILE_BYTES: u64 = 100 << 30;
/// The loop-lvm metadata file: 2 GiB (`defaultMetaDataLoopbackSize`).
pub const METADATA_FILE_BYTES: u64 = 2 << 30;
/// The base device's size, and so every device's: 10 GiB (`defaultBaseFsSize`).
pub const BASE_DEVICE_BYTES: u64 = 10 << 30;
/// The pool's low water mark in blocks, as `CreatePool` writes the table.
pub const LOW_WATER_BLOCKS: u64 = 32_768;

/// The names Docker's metadata directory gives meaning to besides device hashes.
const RESERVED: [&str; 3] = ["base", "deviceset-metadata", "transaction-metadata"];

/// The hash (Docker's graphdriver id) the model gives a scenario's layer or container: the
/// scenario id, except the names `metadata/` reserves (`base`, the base device's file;
/// `deviceset-metadata`; `transaction-metadata`), which get a `_` in front.
pub fn device_hash(id: &str) -> String {
    if RESERVED.contains(&id) {
        format!("_{id}")
    } else {
        id.to_string()
    }
}

/// Docker's `devInfo` of one device.
#[derive(Clone, Debug)]
pub(crate) struct DevInfo {
    pub(crate) device_id: u32,
    pub(crate) size: u64,
    pub(crate) transaction_id: u64,
    pub(crate) initialized: bool,
    /// Mounted on `mnt/<hash>` (a container).
    pub(crate) mounted: bool,
    fs: FsImage,
    /// A layer device's filesystem as the model's tree (the image up to that layer).
    tree: Arc<Tree>,
}

/// The devicemapper driver's state: Docker's device set and the pool under it.
#[derive(Clone, Debug)]
pub(crate) struct DeviceSet {
    pool: ThinPool,
    next_device_id: u32,
    transaction_id: u64,
    /// The last transaction opened: (id, device hash, device id).
    pub(crate) open_transaction: (u64, String, u32),
    /// Devices by hash; the base device is `""`.
    pub(crate) devices: BTreeMap<String, DevInfo>,
    /// Whether anything was ever mounted (Docker makes `mnt/` at the first Get).
    pub(crate) mnt_made: bool,
    writes: usize,
    /// The pool's observation, kept until the pool changes (it walks every mapping).
    observed: std::sync::OnceLock<PoolObservation>,
}

impl DeviceSet {
    /// The pool of Docker's loop-lvm setup.
    pub(crate) fn pool_params() -> PoolParams {
        let block = BlockSize::DEFAULT.bytes();
        PoolParams {
            data_blocks: DATA_FILE_BYTES / block,
            block_size: BlockSize::DEFAULT,
            metadata_blocks: METADATA_FILE_BYTES / crate::thin::units::METADATA_BLOCK_BYTES,
            low_water_blocks: LOW_WATER_BLOCKS,
            features: Features {
                skip_block_zeroing: true,
                ..Features::default()
            },
        }
    }

    /// A driver root as Docker's init leaves it: the pool, and the base device with its
    /// filesystem.
    pub(crate) fn new() -> DeviceSet {
        let pool = ThinPool::new(Self::pool_params()).expect("Docker's pool parameters are valid");
        let mut ds = DeviceSet {
            pool,
            next_device_id: 0,
            transaction_id: 0,
            open_transaction: (0, String::new(), 0),
            devices: BTreeMap::new(),
            mnt_made: false,
            writes: 0,
            observed: std::sync::OnceLock::new(),
        };
        let id = ds.open(String::new());
        ds.run(ThinOp::CreateThin {
            dev: u64::from(id),
            sectors: Some(Sectors(BASE_DEVICE_BYTES / 512)),
        });
        ds.close();
        for (first, count) in MKFS_CHUNKS {
            ds.run(ThinOp::WriteBlocks {
                dev: u64::from(id),
                block: first,
                count,
            });
        }
        ds.devices.insert(
            String::new(),
            DevInfo {
                device_id: id,
                size: BASE_DEVICE_BYTES,
                transaction_id: ds.transaction_id,
                initialized: true,
                mounted: false,
                fs: FsImage::new(),
                tree: Arc::new(Tree::new()),
            },
        );
        ds
    }

    /// Opens a transaction for a new device: the next free id (`getNextFreeDeviceID`).
    fn open(&mut self, hash: String) -> u32 {
        let used: BTreeSet<u32> = self.devices.values().map(|d| d.device_id).collect();
        loop {
            self.next_device_id = (self.next_device_id + 1) & 0xff_ffff;
            if !used.contains(&self.next_device_id) {
                break;
            }
        }
        let id = self.next_device_id;
        self.open_transaction = (self.transaction_id + 1, hash, id);
        id
    }

    /// Closes the open transaction: the pool's transaction id becomes its id.
    fn close(&mut self) {
        let new = self.open_transaction.0;
        self.run(ThinOp::SetTransactionId {
            current: self.transaction_id,
            new,
        });
        self.transaction_id = new;
    }

    fn run(&mut self, op: ThinOp) {
        let step = self.writes;
        self.writes += 1;
        self.observed = std::sync::OnceLock::new();
        let out = self.pool.apply(step, &op);
        debug_assert!(out.is_ok(), "{op:?}: {out:?}");
    }

    /// Writes filesystem blocks `blocks` of device `id`.
    fn write(&mut self, id: u32, blocks: &runs::RunSet) {
        for (first, n) in blocks.runs() {
            self.run(ThinOp::WriteBytes {
                dev: u64::from(id),
                offset: first * FS_BLOCK,
                len: n * FS_BLOCK,
            });
        }
    }

    /// The thin pool.
    pub(crate) fn pool(&self) -> &ThinPool {
        &self.pool
    }

    /// The pool's transaction id as Docker knows it.
    pub(crate) fn transaction_id(&self) -> u64 {
        self.transaction_id
    }

    /// Whether the device of scenario id `id` exists (Docker refuses to add it again).
    pub(crate) fn has_device(&self, id: &str) -> bool {
        self.devices.contains_key(&device_hash(id))
    }

    /// `AddDevice`: a snapshot of `origin` (a hash, `""` for the base device). The store
    /// has checked that `hash` is new and `origin` exists.
    fn add_device(&mut self, hash: &str, origin: &str) -> u32 {
        let o = self.devices[origin].clone();
        let id = self.open(hash.to_string());
        self.run(ThinOp::CreateSnap {
            dev: u64::from(id),
            origin: u64::from(o.device_id),
        });
        self.close();
        self.devices.insert(
            hash.to_string(),
            DevInfo {
                device_id: id,
                size: o.size,
                transaction_id: self.transaction_id,
                initialized: false,
                mounted: false,
                fs: o.fs,
                tree: o.tree,
            },
        );
        id
    }

    /// Runs `f` on device `hash`'s filesystem and writes what it wrote.
    fn on_fs(&mut self, hash: &str, f: impl FnOnce(&mut DevInfo) -> runs::RunSet) {
        let Some(d) = self.devices.get_mut(hash) else {
            return;
        };
        let id = d.device_id;
        let blocks = f(d);
        self.write(id, &blocks);
    }

    /// Docker's Get: mount on `mnt/<hash>`, `rootfs/` and `id` the first time. A mounted
    /// device is only counted again (moby `MountDevice`: `info.mountCount`).
    fn get(&mut self, hash: &str) {
        if self.devices.get(hash).is_none_or(|d| d.mounted) {
            return;
        }
        self.mnt_made = true;
        let len = hash.len();
        self.on_fs(hash, |d| {
            d.mounted = true;
            let mut w = d.fs.mount();
            w.extend(&d.fs.docker_get(len));
            w
        });
    }

    /// Docker's Put: unmount, `mnt/<hash>` removed (nothing for a device not mounted).
    fn put(&mut self, hash: &str) {
        if self.devices.get(hash).is_none_or(|d| !d.mounted) {
            return;
        }
        self.on_fs(hash, |d| {
            d.mounted = false;
            d.fs.unmount()
        });
    }

    /// A new image layer `id` on `parent`: a snapshot of the parent's device (of the base
    /// device for the lowest), mounted, the layer applied, unmounted. `stack` is the image
    /// up to the new layer.
    pub(crate) fn add_layer(&mut self, id: &str, parent: Option<&str>, stack: &LowerStack) {
        let origin = parent.map(device_hash).unwrap_or_default();
        self.make_layer(&device_hash(id), &origin, stack);
    }

    /// Device `hash`, a snapshot of `origin`'s, mounted, made to hold `stack`'s files,
    /// unmounted (moby `Create` and `ApplyDiff`).
    fn make_layer(&mut self, hash: &str, origin: &str, stack: &LowerStack) {
        self.add_device(hash, origin);
        self.get(hash);
        let new = Arc::new(stack.flatten());
        self.on_fs(hash, |d| {
            let w = d.fs.apply_layer(&d.tree, &new, stack);
            d.tree = new;
            w
        });
        self.put(hash);
    }

    /// A new container `id` on `image`: a snapshot of the image's device, mounted.
    pub(crate) fn create_container(&mut self, id: &str, image: Option<&str>, c: &Container) {
        let hash = device_hash(id);
        let origin = image.map(device_hash).unwrap_or_default();
        self.add_device(&hash, &origin);
        self.get(&hash);
        if let Some(d) = self.devices.get_mut(&hash) {
            d.fs.adopt(&c.upper);
            d.tree = Arc::new(Tree::new());
        }
    }

    /// Docker's Put of device `id` (a container it could not start, an init device after
    /// `Setup`).
    pub(crate) fn put_device(&mut self, id: &str) {
        self.put(&device_hash(id));
    }

    /// Docker's Get and Put of device `id` around `docker diff` or `docker commit` of a
    /// container it could not start.
    pub(crate) fn get_put(&mut self, id: &str) {
        let hash = device_hash(id);
        self.get(&hash);
        self.put(&hash);
    }

    /// Removing container `id` (or an init device): Put, then `DeleteDevice`: the whole
    /// device discarded, then deleted, in a transaction of its own.
    pub(crate) fn remove_container(&mut self, id: &str) {
        let hash = device_hash(id);
        self.put(&hash);
        self.delete_device(&hash);
    }

    /// A `docker commit` that adds no layer (DOCK7) still has the layer store register its
    /// tar, on the container's image (moby 20.10.24 `layer/layer_store.go`
    /// `registerWithDescriptor`: `driver.Create`, the tar applied, and `driver.Remove`
    /// when its chain id exists; `daemon/images/image_commit.go` `CommitImage`: an empty
    /// layer, which the image leaves out, is released and so removed). On devicemapper
    /// that is a snapshot of the image's device, mounted while the tar is applied,
    /// unmounted, discarded and deleted: a device id and two transactions are spent (seen
    /// on dockerd 20.10.24 in the VM: `init/commit_without_changes_adds_no_layer`). Its
    /// random cache id is [`DISCARDED_LAYER`] here.
    pub(crate) fn discarded_layer(&mut self, image: &str, applied: &LowerStack) {
        self.make_layer(DISCARDED_LAYER, &device_hash(image), applied);
        self.delete_device(DISCARDED_LAYER);
    }

    /// `DeleteDevice` of a device not mounted: discarded whole, then deleted, in a
    /// transaction of its own.
    fn delete_device(&mut self, hash: &str) {
        let hash = hash.to_string();
        let Some((device_id, size)) = self.devices.get(&hash).map(|d| (d.device_id, d.size)) else {
            return;
        };
        let dev = u64::from(device_id);
        let blocks = size / BlockSize::DEFAULT.bytes();
        self.run(ThinOp::DiscardBlocks {
            dev,
            block: 0,
            count: blocks,
        });
        self.open_transaction = (self.transaction_id + 1, hash.clone(), device_id);
        self.run(ThinOp::Delete { dev });
        self.close();
        self.devices.remove(&hash);
    }

    /// After a file step on container `c`: what the filesystem wrote for it.
    pub(crate) fn file_step(&mut self, c: &Container, op: &FileOp, outcome: &Outcome) {
        let hash = device_hash(&c.id);
        let read = match op {
            FileOp::Read { path, len, .. } if *len != Some(0) => Some((path, true)),
            FileOp::Readdir { path } => Some((path, true)),
            FileOp::Readlink { path } => Some((path, false)),
            _ => None,
        };
        let accessed = match (read, outcome) {
            (Some((path, follow)), Ok(_)) => c
                .resolve(path, follow)
                .ok()
                .and_then(|r| r.target)
                .and_then(|d| d.upper),
            _ => None,
        };
        self.on_fs(&hash, |d| {
            let mut w = d.fs.sync_tree(&c.upper);
            if let Some(ino) = accessed {
                w.extend(&d.fs.access(ino));
            }
            w
        });
    }

    /// Whether every device's files and the pool stay within 4/5 of their size, where the
    /// model's ext4 inside the devices is not followed to running out (its metadata and
    /// reserves are not modelled): past it the error says so, instead of a guess.
    /// Only `device` is looked at when given (a file step writes to one device).
    pub(crate) fn check_space(&self, device: Option<&str>) -> Result<(), String> {
        let limit = BASE_DEVICE_BYTES / 5 * 4;
        let devices = self
            .devices
            .iter()
            .filter(|(hash, _)| device.is_none_or(|d| d == hash.as_str()));
        for (hash, d) in devices {
            let bytes = d.fs.data_bytes();
            if bytes > limit {
                return Err(format!(
                    "device `{hash}` would hold {bytes} bytes of file data, more than 4/5 of \
                     its {BASE_DEVICE_BYTES}: the model does not predict where its ext4 runs out"
                ));
            }
        }
        let (used, total) = (self.pool.used_data_blocks(), self.pool.params().data_blocks);
        if used > total / 5 * 4 {
            return Err(format!(
                "the thin pool would map {used} of its {total} data blocks, more than 4/5: the \
                 model does not predict where it runs out"
            ));
        }
        Ok(())
    }

    /// Unmount and mount again (Put, Get).
    pub(crate) fn remount(&mut self, id: &str) {
        let hash = device_hash(id);
        self.put(&hash);
        self.get(&hash);
    }

    /// The pool as observed. Where blocks lie is the filesystem's choice, which the model
    /// does not predict: the devices' mapping lists are left out.
    pub(crate) fn observe(&self) -> PoolObservation {
        self.observed
            .get_or_init(|| self.pool.observe_with(false))
            .clone()
    }

    /// The device-mapper devices the driver keeps active, by name, with their tables: the
    /// pool (`<metadata>` and `<data>` stand for its loop devices) and every mounted
    /// device (`<pool>` for the pool's device number).
    pub(crate) fn tables(&self) -> BTreeMap<String, String> {
        let p = self.pool.params();
        let mut out = BTreeMap::new();
        out.insert(
            format!("{PREFIX}-pool"),
            format!(
                "0 {} thin-pool <metadata> <data> {} {} 1 skip_block_zeroing",
                DATA_FILE_BYTES / 512,
                p.block_size.sectors(),
                p.low_water_blocks
            ),
        );
        for (hash, d) in &self.devices {
            if d.mounted {
                out.insert(
                    format!("{PREFIX}-{}", if hash.is_empty() { "base" } else { hash }),
                    format!("0 {} thin <pool> {}", d.size / 512, d.device_id),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Driver, ModelDriver};
    use crate::params::{DriverKind, OverlayOptions};
    use crate::step::{Content, Entry, EntryKind, LayerSpec, Op};

    fn driver() -> ModelDriver {
        let mut d = ModelDriver::new(DriverKind::Devicemapper, OverlayOptions::default());
        let file = |p: &str, n: usize| Entry {
            path: p.into(),
            kind: EntryKind::File(Content::Bytes(vec![7; n])),
            mode: None,
            xattrs: Default::default(),
            owner: None,
        };
        d.add_layer(&LayerSpec {
            id: "base".into(),
            parent: None,
            entries: vec![file("/big", 1 << 20)],
        })
        .unwrap();
        d.add_layer(&LayerSpec {
            id: "app".into(),
            parent: Some("base".into()),
            entries: vec![file("/etc/conf", 4)],
        })
        .unwrap();
        d
    }

    fn ds(d: &ModelDriver) -> &DeviceSet {
        d.store().devmapper().unwrap()
    }

    fn used(d: &ModelDriver) -> u64 {
        ds(d).pool.used_data_blocks()
    }

    #[test]
    fn ids_transactions_and_names_follow_docker() {
        let mut d = driver();
        let s = ds(&d);
        assert_eq!(s.devices[""].device_id, 1);
        assert!(s.devices[""].initialized);
        assert_eq!(
            s.devices["_base"].device_id, 2,
            "the layer `base` is `_base`"
        );
        assert_eq!(s.devices["app"].device_id, 3);
        assert_eq!(s.open_transaction, (3, "app".to_string(), 3));
        let c = |id: &str| Op::CreateContainer {
            id: id.into(),
            image: Some("app".into()),
        };
        d.apply(&c("c1")).unwrap().unwrap();
        d.apply(&Op::RemoveContainer { id: "c1".into() })
            .unwrap()
            .unwrap();
        assert_eq!(ds(&d).open_transaction, (5, "c1".to_string(), 4));
        d.apply(&c("c2")).unwrap().unwrap();
        // Ids count on from the last one handed out: 4 is free again but not reused.
        assert_eq!(ds(&d).devices["c2"].device_id, 5);
        assert_eq!(ds(&d).pool.status().transaction_id, 6);
        let t = ds(&d).tables();
        assert_eq!(t.len(), 2, "the pool and the mounted container: {t:?}");
        assert_eq!(t["docker-<maj>:<min>-<ino>-c2"], "0 20971520 thin <pool> 5");
        assert!(crate::thin::check_thin_invariants(&ds(&d).pool).is_empty());
    }

    #[test]
    fn a_commit_that_adds_no_layer_spends_a_device_and_two_transactions() {
        let mut d = driver().with_init_layers(true);
        d.apply(&Op::CreateContainer {
            id: "c1".into(),
            image: Some("app".into()),
        })
        .unwrap()
        .unwrap();
        // c1-init is device 4, c1 device 5, transactions 4 and 5.
        assert_eq!(ds(&d).devices["c1"].device_id, 5);
        let before = used(&d);
        let commit = |layer: &str| Op::Commit {
            container: Some("c1".into()),
            layer: layer.into(),
        };
        d.apply(&commit("k0")).unwrap().unwrap();
        let s = ds(&d);
        assert!(!s.devices.contains_key("k0"), "no layer: k0 names `app`");
        assert!(!s.devices.contains_key(DISCARDED_LAYER), "deleted again");
        assert_eq!(s.open_transaction, (7, DISCARDED_LAYER.to_string(), 6));
        assert_eq!(s.pool.status().transaction_id, 7);
        assert_eq!(used(&d), before, "its blocks went back with it");
        // The next device is 7, not 6.
        d.apply(&Op::CreateContainer {
            id: "c2".into(),
            image: Some("k0".into()),
        })
        .unwrap()
        .unwrap();
        assert_eq!(ds(&d).devices["c2-init"].device_id, 7);
        assert!(crate::thin::check_thin_invariants(&ds(&d).pool).is_empty());
    }

    #[test]
    fn snapshots_take_no_block_and_removal_gives_back_exactly() {
        let mut d = driver();
        let before = used(&d);
        // A bare snapshot (AddDevice without a Get) maps nothing of its own.
        let mut s = ds(&d).clone();
        s.add_device("x", "app");
        assert_eq!(s.pool.used_data_blocks(), before);
        d.apply(&Op::CreateContainer {
            id: "c".into(),
            image: Some("app".into()),
        })
        .unwrap()
        .unwrap();
        let write = Op::File {
            container: None,
            op: crate::step::FileOp::Write {
                path: "/big".into(),
                offset: 70_000,
                data: Content::Bytes(b"x".to_vec()),
            },
        };
        d.apply(&write).unwrap().unwrap();
        assert!(used(&d) > before, "the Get and the write took blocks");
        d.apply(&Op::RemoveContainer { id: "c".into() })
            .unwrap()
            .unwrap();
        assert_eq!(used(&d), before);
        assert!(crate::thin::check_thin_invariants(&ds(&d).pool).is_empty());
        let obs = d.observe().unwrap();
        assert!(!obs.storage.contains_key("devicemapper/mnt/c"));
        assert!(!obs.storage.contains_key("devicemapper/metadata/c"));
    }
}
