//! The pool under the real devicemapper driver: Docker's loop-lvm pool on two loop devices
//! over sparse files, its thin devices, and the base image every driver root starts from.
//!
//! - The base (`Template`): made once per process, as Docker's first start makes it once
//!   per host: a pool over fresh sparse files, thin device 1 (10 GiB) created in transaction
//!   1, `mkfs.ext4 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0` and `tune2fs -c -1 -i
//!   0` on it, then everything deactivated, and the two files compacted (all-zero 64 KiB
//!   chunks left as holes: they read as zeros, which is what mkfs wrote there). Each driver
//!   root gets a copy ([`sparse_copy`]: SEEK_DATA/SEEK_HOLE, zero chunks skipped), so a
//!   scenario costs a copy of the few MiB mkfs really wrote, not a mkfs of 10 GiB.
//! - Names: every device-mapper device this crate makes is `layerspec-<pid>-<n>-...`, so
//!   the sweeper (`dm::sweep`) removes what a killed run left. A driver root's devices are
//!   `<sandbox>-<docker name>`: the sandbox's directory name, then Docker's own name
//!   (`docker-<maj>:<min>-<ino>-pool`, `...-<hash>`, `...-base`). The observation strips
//!   the sandbox part and puts the model's placeholder in for `<maj>:<min>-<ino>`.

use crate::dm::{Control, DmError, Target};
use crate::sys::{self, Log};
use layerspec_model::devmapper::{BASE_DEVICE_BYTES, DATA_FILE_BYTES, LOW_WATER_BLOCKS, PREFIX};
use layerspec_model::{DeviceObservation, PoolObservation, PoolStatus, ThinId};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Docker's name prefix for the driver directory `top`: `docker-<major>:<minor>-<inode>`
/// of it (moby `NewDeviceSet`).
pub(crate) fn docker_prefix(top: &Path) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::metadata(top)?;
    Ok(format!(
        "docker-{}:{}-{}",
        libc::major(st.dev()),
        libc::minor(st.dev()),
        st.ino()
    ))
}

/// `DM_DEFERRED_REMOVE` in a device's flags (linux/dm-ioctl.h): removal is pending until
/// its last opener closes it (Debian's dockerd turns deferred removal on).
const DM_DEFERRED_REMOVE: u32 = 1 << 17;

/// Docker's pool block: 128 sectors, 64 KiB.
pub(crate) const BLOCK_SECTORS: u64 = 128;
/// Bytes in a pool block.
const BLOCK_BYTES: u64 = BLOCK_SECTORS * 512;

pub(crate) fn dm(e: DmError) -> io::Error {
    io::Error::other(e.to_string())
}

pub(crate) fn maj_min(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// The pool's table (S18, THIN1): `thin-pool <metadata> <data> 128 32768 1
/// skip_block_zeroing` over the whole data file (moby `CreatePool`).
fn pool_target(meta_dev: u64, data_dev: u64) -> Target {
    Target {
        start: 0,
        length: DATA_FILE_BYTES / 512,
        kind: "thin-pool".into(),
        params: format!(
            "{} {} {BLOCK_SECTORS} {LOW_WATER_BLOCKS} 1 skip_block_zeroing",
            maj_min(meta_dev),
            maj_min(data_dev)
        ),
    }
}

/// The `dev_t` of a block device node.
fn rdev(node: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(node)?.rdev())
}

/// A pool on two loop devices, with the thin devices it has active.
pub(crate) struct Pool {
    ctl: Control,
    /// `<sandbox>-`: what every dm name of this pool starts with.
    pub(crate) dm_prefix: String,
    /// Docker's `docker-<maj>:<min>-<ino>`.
    pub(crate) docker_prefix: String,
    pool_name: String,
    pub(crate) pool_dev: u64,
    pub(crate) meta_dev: u64,
    pub(crate) data_dev: u64,
    meta_loop: PathBuf,
    /// The loop devices' handles: autoclear detaches them once these close after the
    /// pool's table is gone.
    loops: Vec<File>,
    /// Where device nodes are made (no udev).
    nodes: PathBuf,
    /// Active thin devices by id: dm name and node.
    active: BTreeMap<u32, (String, PathBuf)>,
}

impl Pool {
    /// Loads the pool over `metadata` and `data` (files holding a pool's metadata and
    /// data), named `<dm_prefix><docker_prefix>-pool`.
    pub(crate) fn open(
        log: &mut Log,
        metadata: &Path,
        data: &Path,
        dm_prefix: String,
        docker_prefix: String,
        nodes: PathBuf,
    ) -> io::Result<Pool> {
        let (meta_loop, meta_handle) = sys::loop_attach(log, metadata)?;
        let (data_loop, data_handle) = sys::loop_attach(log, data)?;
        let (meta_dev, data_dev) = (rdev(&meta_loop)?, rdev(&data_loop)?);
        let ctl = Control::open()?;
        let pool_name = format!("{dm_prefix}{docker_prefix}-pool");
        ctl.create(log, &pool_name).map_err(dm)?;
        let live = ctl
            .load(log, &pool_name, &[pool_target(meta_dev, data_dev)])
            .and_then(|()| ctl.resume(log, &pool_name));
        let info = match live {
            Ok(i) => i,
            Err(e) => {
                let _ = ctl.remove(log, &pool_name);
                return Err(dm(e));
            }
        };
        Ok(Pool {
            ctl,
            dm_prefix,
            docker_prefix,
            pool_name,
            pool_dev: info.dev,
            meta_dev,
            data_dev,
            meta_loop,
            loops: vec![meta_handle, data_handle],
            nodes,
            active: BTreeMap::new(),
        })
    }

    /// Docker's own pool `<docker_prefix>-pool`, made by a dockerd (the docker backend): for
    /// looking only. Its metadata device is found from its table; dropping the handle
    /// leaves the pool and its devices to the daemon.
    pub(crate) fn attach(docker_prefix: &str) -> io::Result<Pool> {
        let ctl = Control::open()?;
        let pool_name = format!("{docker_prefix}-pool");
        let (info, targets) = ctl.status(&pool_name, true).map_err(dm)?;
        let params = targets
            .first()
            .map(|t| t.params.clone())
            .ok_or_else(|| io::Error::other(format!("{pool_name} has no table")))?;
        let dev = |i: usize| -> io::Result<u64> {
            let mm = params.split(' ').nth(i).unwrap_or_default();
            let (maj, min) = mm
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| io::Error::other(format!("{pool_name}'s table `{params}`")))?;
            Ok(libc::makedev(maj, min))
        };
        let (meta_dev, data_dev) = (dev(0)?, dev(1)?);
        // The node: `DEVNAME` of the device in sysfs (devtmpfs makes `/dev/<DEVNAME>`).
        let uevent = format!("/sys/dev/block/{}/uevent", maj_min(meta_dev));
        let name = std::fs::read_to_string(&uevent)?
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
            .ok_or_else(|| io::Error::other(format!("{uevent} names no device")))?;
        Ok(Pool {
            ctl,
            dm_prefix: String::new(),
            docker_prefix: docker_prefix.to_string(),
            pool_name,
            pool_dev: info.dev,
            meta_dev,
            data_dev,
            meta_loop: Path::new("/dev").join(name),
            loops: Vec::new(),
            nodes: PathBuf::new(),
            active: BTreeMap::new(),
        })
    }

    /// The pool as observed (see the driver's module docs), after a sync: its status line's
    /// figures, and each device's from `thin_dump`.
    pub(crate) fn observe(&self, log: &mut Log) -> io::Result<PoolObservation> {
        sys::sync(log);
        let (line, events) = self.status()?;
        let st: PoolStatus = line
            .parse()
            .map_err(|e| io::Error::other(format!("pool status `{line}`: {e}")))?;
        let dump = self.thin_dump(log)?;
        let counts = crate::thin::mapped_and_shared(&dump);
        let mut devices = BTreeMap::new();
        for (id, ranges) in dump {
            let (mapped, shared) = counts.get(&id).copied().unwrap_or_default();
            let highest = ranges.iter().map(|r| r.virt + r.len).max();
            let status = match highest {
                Some(h) => format!("{} {}", mapped * BLOCK_SECTORS, h * BLOCK_SECTORS - 1),
                None => "0 -".to_string(),
            };
            let tid = ThinId::new(id)
                .map_err(|_| io::Error::other(format!("thin_dump lists device {id}")))?;
            devices.insert(
                tid,
                DeviceObservation {
                    status,
                    mapped_blocks: mapped,
                    shared_blocks: shared,
                    mappings: Vec::new(),
                },
            );
        }
        Ok(PoolObservation::from_status(&st, events, devices))
    }

    /// The active dm devices of this pool as the model names them: without the sandbox's
    /// prefix, the model's placeholder for `<maj>:<min>-<ino>`, and `<metadata>`, `<data>`
    /// and `<pool>` for the device numbers in their tables.
    pub(crate) fn model_tables(&self) -> io::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (name, table) in self.tables()? {
            if !name[self.dm_prefix.len()..].starts_with(&self.docker_prefix) {
                continue;
            }
            let name = name
                .strip_prefix(&self.dm_prefix)
                .unwrap_or(&name)
                .replace(&self.docker_prefix, PREFIX);
            let table = table
                .replace(&format!(" {} ", maj_min(self.meta_dev)), " <metadata> ")
                .replace(&format!(" {} ", maj_min(self.data_dev)), " <data> ")
                .replace(&format!(" {} ", maj_min(self.pool_dev)), " <pool> ");
            out.insert(name, table);
        }
        Ok(out)
    }

    /// `dmsetup message <pool> 0 <msg>`.
    pub(crate) fn message(&self, log: &mut Log, msg: &str) -> io::Result<()> {
        self.ctl
            .message(log, &self.pool_name, 0, msg)
            .map(|_| ())
            .map_err(dm)
    }

    /// The dm name of the thin device Docker calls `<docker prefix>-<suffix>`.
    pub(crate) fn thin_name(&self, suffix: &str) -> String {
        format!("{}{}-{suffix}", self.dm_prefix, self.docker_prefix)
    }

    /// Activates thin device `id` as `<docker prefix>-<suffix>` (moby `activateDevice`:
    /// a `thin` table of the device's size) and makes its node; the node if already active.
    pub(crate) fn activate(
        &mut self,
        log: &mut Log,
        id: u32,
        suffix: &str,
        bytes: u64,
    ) -> io::Result<PathBuf> {
        if let Some((_, node)) = self.active.get(&id) {
            return Ok(node.clone());
        }
        let name = self.thin_name(suffix);
        let target = Target {
            start: 0,
            length: bytes / 512,
            kind: "thin".into(),
            params: format!("{} {id}", maj_min(self.pool_dev)),
        };
        let info = self.ctl.create(log, &name).map_err(dm)?;
        let live = self
            .ctl
            .load(log, &name, &[target])
            .and_then(|()| self.ctl.resume(log, &name));
        if let Err(e) = live {
            let _ = self.ctl.remove(log, &name);
            return Err(dm(e));
        }
        let node = self.nodes.join(&name);
        let _ = std::fs::remove_file(&node);
        if let Err(e) = sys::mknod_block(log, &node, info.dev) {
            let _ = self.ctl.remove(log, &name);
            return Err(e);
        }
        self.active.insert(id, (name, node.clone()));
        Ok(node)
    }

    /// Removes thin device `id`'s mapping and node (moby `deactivateDevice`).
    pub(crate) fn deactivate(&mut self, log: &mut Log, id: u32) -> io::Result<()> {
        if let Some((name, node)) = self.active.remove(&id) {
            let _ = std::fs::remove_file(&node);
            self.ctl.remove(log, &name).map_err(dm)?;
        }
        Ok(())
    }

    /// `create_snap <id> <origin>`, the origin suspended around it when active (THIN2,
    /// moby `CreateSnapDevice`).
    pub(crate) fn create_snap(&self, log: &mut Log, id: u32, origin: u32) -> io::Result<()> {
        let active = self.active.get(&origin).map(|(n, _)| n.clone());
        if let Some(n) = &active {
            self.ctl.suspend(log, n).map_err(dm)?;
        }
        let r = self.message(log, &format!("create_snap {id} {origin}"));
        if let Some(n) = &active {
            self.ctl.resume(log, n).map_err(dm)?;
        }
        r
    }

    /// The pool's status line (a pool commits its metadata before it answers) and its
    /// event counter.
    pub(crate) fn status(&self) -> io::Result<(String, u32)> {
        let (info, targets) = self.ctl.status(&self.pool_name, false).map_err(dm)?;
        let line = targets
            .first()
            .map(|t| t.params.trim().to_string())
            .ok_or_else(|| io::Error::other("the pool has no target"))?;
        Ok((line, info.event_nr))
    }

    /// Every device-mapper device of this pool, by dm name, with its table as `dmsetup
    /// table` prints it.
    pub(crate) fn tables(&self) -> io::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (name, _) in self.ctl.list().map_err(dm)? {
            if !name.starts_with(&self.dm_prefix) {
                continue;
            }
            let (info, targets) = match self.ctl.status(&name, true) {
                Ok(r) => r,
                // Gone since the list: a deferred remove (dockerd's `RemoveDeviceDeferred`)
                // finished in between.
                Err(e) if matches!(e.errno(), Some(libc::ENXIO | libc::ENODEV)) => continue,
                Err(e) => return Err(dm(e)),
            };
            if info.flags & DM_DEFERRED_REMOVE != 0 {
                // Removed as soon as its last opener closes it: Docker counts it gone.
                continue;
            }
            let lines: Vec<String> = targets
                .iter()
                .map(|t| format!("{} {} {} {}", t.start, t.length, t.kind, t.params.trim()))
                .collect();
            out.insert(name, lines.join("\n"));
        }
        Ok(out)
    }

    /// `thin_dump` of a metadata snapshot: every device's mapping.
    pub(crate) fn thin_dump(
        &self,
        log: &mut Log,
    ) -> io::Result<BTreeMap<u64, Vec<layerspec_model::MappedRange>>> {
        self.message(log, "reserve_metadata_snap")?;
        log.note(format!("thin_dump -m {}", self.meta_loop.display()));
        let out = Command::new("thin_dump")
            .arg("-m")
            .arg(&self.meta_loop)
            .output();
        let released = self.message(log, "release_metadata_snap");
        let out = out?;
        released?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "thin_dump failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        crate::thin::parse_thin_dump(&String::from_utf8_lossy(&out.stdout))
            .map_err(io::Error::other)
    }

    /// Deactivates every thin device, then removes the pool; the loop devices go when
    /// their handles close (here). Errors are logged; every step is tried.
    pub(crate) fn close(mut self, log: &mut Log) -> io::Result<()> {
        self.teardown(log)
    }

    fn teardown(&mut self, log: &mut Log) -> io::Result<()> {
        if self.loops.is_empty() {
            return Ok(());
        }
        let mut first: Option<io::Error> = None;
        let ids: Vec<u32> = self.active.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.deactivate(log, id) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.ctl.remove(log, &self.pool_name) {
            first.get_or_insert(dm(e));
        }
        self.loops.clear();
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Pool {
    /// A pool dropped without [`Pool::close`] (a driver root that failed to start) is
    /// taken down all the same.
    fn drop(&mut self) {
        let _ = self.teardown(&mut Log::default());
    }
}

/// The base every driver root starts from (see the module docs).
pub(crate) struct Template {
    dir: PathBuf,
    /// The base filesystem's UUID (mkfs's, random).
    pub(crate) uuid: String,
}

impl Template {
    /// The compacted pool metadata file.
    pub(crate) fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// The compacted pool data file.
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();

/// The process's base pool, made at the first call.
pub(crate) fn template() -> Result<&'static Template, String> {
    TEMPLATE
        .get_or_init(|| {
            let mut log = Log::default();
            make_template(&mut log).map_err(|e| {
                format!(
                    "making the base device: {e} (last actions: {})",
                    log.tail(4).join("; ")
                )
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Removes the base pool's files (the sweeper removes them after a killed run, or a
/// process that never called this: the directory is `layerspec-<pid>-<n>`). Call when no
/// devicemapper driver will be opened any more: `layerspec run` does after its real runs,
/// the guest after its scenarios.
pub fn remove_template() {
    if let Some(Ok(t)) = TEMPLATE.get() {
        let _ = crate::sandbox::remove_temp_dir(&t.dir);
    }
}

fn make_template(log: &mut Log) -> io::Result<Template> {
    let dir = crate::sandbox::temp_dir()?;
    let r = build_template(log, &dir);
    if r.is_err() {
        let _ = crate::sandbox::remove_temp_dir(&dir);
    }
    r
}

fn build_template(log: &mut Log, dir: &Path) -> io::Result<Template> {
    let name = dir
        .file_name()
        .expect("a temp dir has a name")
        .to_string_lossy()
        .into_owned();
    let (meta, data) = (dir.join("metadata.raw"), dir.join("data.raw"));
    // The metadata device must start zeroed: a new sparse file is.
    File::create(&meta)?.set_len(layerspec_model::devmapper::METADATA_FILE_BYTES)?;
    File::create(&data)?.set_len(DATA_FILE_BYTES)?;
    let mut pool = Pool::open(
        log,
        &meta,
        &data,
        format!("{name}-"),
        "template".into(),
        dir.to_path_buf(),
    )?;
    let made = (|| -> io::Result<String> {
        // Docker's first transaction: the base device, id 1 (moby `createBaseImage`).
        pool.message(log, "create_thin 1")?;
        pool.message(log, "set_transaction_id 0 1")?;
        let node = pool.activate(log, 1, "base", BASE_DEVICE_BYTES)?;
        crate::sandbox::run(
            log,
            Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-E",
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                ])
                .arg(&node),
        )?;
        crate::sandbox::run(
            log,
            Command::new("tune2fs")
                .args(["-c", "-1", "-i", "0"])
                .arg(&node),
        )?;
        ext4_uuid(&node)
    })();
    let closed = pool.close(log);
    let uuid = made?;
    closed?;
    sparse_copy(log, &meta, &dir.join("metadata"))?;
    sparse_copy(log, &data, &dir.join("data"))?;
    std::fs::remove_file(&meta)?;
    std::fs::remove_file(&data)?;
    Ok(Template {
        dir: dir.to_path_buf(),
        uuid,
    })
}

/// The UUID in an ext4 superblock (`s_uuid`, 16 bytes at 0x68 of the superblock at 1024),
/// as blkid prints it.
fn ext4_uuid(node: &Path) -> io::Result<String> {
    let mut b = [0u8; 16];
    File::open(node)?.read_exact_at(&mut b, 1024 + 0x68)?;
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

/// Copies `from` to a new file `to` (mode 0600, as Docker makes its loop files) of the same
/// length, writing only what is data (SEEK_DATA/SEEK_HOLE) and not all zeros, in 64 KiB
/// chunks: the copy reads exactly as the original. Returns the bytes written.
pub(crate) fn sparse_copy(log: &mut Log, from: &Path, to: &Path) -> io::Result<u64> {
    log.note(format!(
        "cp --sparse=always {} {}",
        from.display(),
        to.display()
    ));
    let src = File::open(from)?;
    let len = src.metadata()?.len();
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0;
    let mut at = 0;
    while let Some(data) = sys::seek(&src, at, true)? {
        // Whole chunks of the file: the data's start and end rounded out to 64 KiB.
        let end = sys::seek(&src, data, false)?.unwrap_or(len);
        let end = end
            .div_ceil(BLOCK_BYTES)
            .saturating_mul(BLOCK_BYTES)
            .min(len);
        let mut p = (data / BLOCK_BYTES * BLOCK_BYTES).max(at);
        while p < end {
            let n = (buf.len() as u64).min(end - p) as usize;
            src.read_exact_at(&mut buf[..n], p)?;
            for (i, chunk) in buf[..n].chunks(BLOCK_BYTES as usize).enumerate() {
                if chunk.iter().any(|b| *b != 0) {
                    dst.write_all_at(chunk, p + (i as u64) * BLOCK_BYTES)?;
                    written += chunk.len() as u64;
                }
            }
            p += n as u64;
        }
        at = end;
        if at >= len {
            break;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_copy_reads_the_same_and_leaves_zero_chunks_out() {
        let dir = crate::sandbox::temp_dir().unwrap();
        let (from, to) = (dir.join("from"), dir.join("to"));
        let f = File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        // Data at 1 MiB, a written chunk of zeros at 8 MiB, data again at the very end.
        f.write_all_at(&[7u8; 5000], 1 << 20).unwrap();
        f.write_all_at(&vec![0u8; BLOCK_BYTES as usize], 8 << 20)
            .unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        let mut log = Log::default();
        let written = sparse_copy(&mut log, &from, &to).unwrap();
        // The chunks holding the two pieces of data; the zeros are not copied.
        assert_eq!(written, 2 * BLOCK_BYTES);
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        let m = std::fs::metadata(&to).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert!(
            m.blocks() * 512 <= 2 * BLOCK_BYTES,
            "{} sectors",
            m.blocks()
        );
        crate::sandbox::remove_temp_dir(&dir).unwrap();
    }

    #[test]
    fn the_pool_table_is_dockers() {
        let t = pool_target(libc::makedev(7, 1), libc::makedev(7, 0));
        assert_eq!(
            format!("{} {} {} {}", t.start, t.length, t.kind, t.params),
            "0 209715200 thin-pool 7:1 7:0 128 32768 1 skip_block_zeroing"
        );
    }
}
