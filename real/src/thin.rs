//! The `thinpool` driver on real dm-thin: a pool on two loop devices over sparse files,
//! thin devices and snapshots made with pool messages, block steps as I/O on the devices,
//! and the observation read back from the kernel (the pool and thin status lines) and from
//! `thin_dump` of a metadata snapshot (the mappings).
//!
//! What a block holds is decoded from its bytes, not taken from the model: every write fills
//! its bytes with a pattern keyed by its stamp (step, device, virtual block) and the byte's
//! offset in the block. A block read back is cut at every offset where some write of the
//! trace began or ended, and each piece is matched against the zero pattern and the patterns
//! of the writes that covered that range; a piece no write explains is an error.
//!
//! Where the harness itself decides (a device it has not activated), it does what a user
//! would: it loads a `thin` table for that id, and the kernel's refusal is the outcome.

use crate::dm::{Control, DmError, Target};
use crate::sys::{self, Log};
use layerspec_model::{
    BlockData, DeviceObservation, DriverError, Errno, MappedRange, Piece, PoolMode,
    PoolObservation, PoolParams, PoolStatus, Sectors, Stamp, ThinDriver, ThinId, ThinOp,
    ThinOutcome, ThinStatus, ThinValue, DEFAULT_THIN_SECTORS,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// I/O is done in windows of at most this many bytes, so a 1 GiB block never needs a
/// buffer of its size.
const WINDOW: u64 = 1 << 20;
/// Alignment for `O_DIRECT` buffers.
const ALIGN: usize = 4096;

/// A thin device the harness activated.
struct Active {
    name: String,
    node: PathBuf,
    sectors: Sectors,
}

/// The bytes one write put in one block: `start..end` of virtual block `stamp.block`.
#[derive(Clone, Copy, Debug)]
struct Extent {
    stamp: Stamp,
    start: u64,
    end: u64,
}

/// A dm-thin pool driven through device-mapper.
pub struct DmThinPool {
    params: PoolParams,
    dir: PathBuf,
    ctl: Control,
    log: Log,
    pool: String,
    pool_dev: u64,
    meta_loop: PathBuf,
    /// Open handles of the two loop devices (autoclear: they go when these close after
    /// the pool's table is gone).
    _loops: [File; 2],
    devices: BTreeMap<u64, Active>,
    extents: Vec<Extent>,
    /// A commit between blocks that failed: the step's result cannot be trusted.
    commit_failed: Option<String>,
}

fn dm(e: DmError) -> io::Error {
    io::Error::other(e.to_string())
}

fn maj_min(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

impl DmThinPool {
    /// Makes the pool: sparse metadata and data files in a fresh temporary directory, a loop
    /// device on each, and the `thin-pool` table (THIN1) from `params`.
    pub fn new(params: PoolParams) -> io::Result<DmThinPool> {
        params
            .validate()
            .map_err(|e| io::Error::other(e.to_string()))?;
        crate::dm::sweep();
        let dir = crate::sandbox::temp_dir()?;
        let name = dir
            .file_name()
            .expect("a temp dir has a name")
            .to_string_lossy()
            .into_owned();
        let mut log = Log::default();
        let built = (|| {
            let meta = dir.join("metadata");
            let data = dir.join("data");
            // The metadata device must start zeroed: a new sparse file is.
            File::create(&meta)?.set_len(params.metadata_bytes())?;
            let data_bytes = params.data_blocks * params.block_size.bytes();
            File::create(&data)?.set_len(data_bytes)?;
            let (meta_loop, meta_handle) = sys::loop_attach(&mut log, &meta)?;
            let (data_loop, data_handle) = sys::loop_attach(&mut log, &data)?;
            let ctl = Control::open()?;
            let pool = format!("{name}-pool");
            let table = params.table(
                &meta_loop.display().to_string(),
                &data_loop.display().to_string(),
            );
            let target = parse_table_line(&table).ok_or_else(|| io::Error::other(table.clone()))?;
            ctl.create(&mut log, &pool).map_err(dm)?;
            let loaded = ctl
                .load(&mut log, &pool, &[target])
                .and_then(|()| ctl.resume(&mut log, &pool));
            let info = match loaded {
                Ok(i) => i,
                Err(e) => {
                    // The loop devices go when their handles close (autoclear).
                    let _ = ctl.remove(&mut log, &pool);
                    return Err(dm(e));
                }
            };
            Ok((ctl, pool, info, meta_loop, [meta_handle, data_handle]))
        })();
        match built {
            Ok((ctl, pool, info, meta_loop, loops)) => Ok(DmThinPool {
                _loops: loops,
                params,
                dir,
                ctl,
                log,
                pool,
                pool_dev: info.dev,
                meta_loop,
                devices: BTreeMap::new(),
                extents: Vec::new(),
                commit_failed: None,
            }),
            Err(e) => {
                let _ = crate::sandbox::remove_temp_dir(&dir);
                Err(io::Error::other(format!(
                    "{e} (after: {})",
                    log.tail(4).join("; ")
                )))
            }
        }
    }

    fn block_bytes(&self) -> u64 {
        self.params.block_size.bytes()
    }

    fn message(&mut self, msg: &str) -> Result<(), Errno> {
        self.ctl
            .message(&mut self.log, &self.pool, 0, msg)
            .map(|_| ())
            .map_err(|e| errno_or_eio(e.errno()))
    }

    /// Loads and resumes a `thin` table for `id` under a fresh name with a device node.
    fn activate(&mut self, id: u64, sectors: Sectors) -> Result<Active, DmError> {
        let name = format!("{}-thin{id}", self.pool.trim_end_matches("-pool"));
        let target = Target {
            start: 0,
            length: sectors.0,
            kind: "thin".into(),
            params: format!("{} {id}", maj_min(self.pool_dev)),
        };
        let info = self.ctl.create(&mut self.log, &name)?;
        let live = self
            .ctl
            .load(&mut self.log, &name, &[target])
            .and_then(|()| self.ctl.resume(&mut self.log, &name));
        if let Err(e) = live {
            let _ = self.ctl.remove(&mut self.log, &name);
            return Err(e);
        }
        let node = self.dir.join(&name);
        let _ = std::fs::remove_file(&node);
        sys::mknod_block(&mut self.log, &node, info.dev).map_err(|source| DmError {
            what: format!("mknod {}", node.display()),
            source,
        })?;
        Ok(Active {
            name,
            node,
            sectors,
        })
    }

    fn deactivate(&mut self, a: Active) {
        let _ = self.ctl.remove(&mut self.log, &a.name);
        let _ = std::fs::remove_file(&a.node);
    }

    /// The device node for `dev`. One the harness did not make is tried as a user would
    /// try it: a `thin` table for the id, whose refusal (EINVAL for an id over 24 bits,
    /// ENODATA for no such device) is the step's outcome.
    fn device(&mut self, dev: u64) -> Result<(PathBuf, u64), Errno> {
        if let Some(a) = self.devices.get(&dev) {
            return Ok((a.node.clone(), a.sectors.0 * 512));
        }
        match self.activate(dev, DEFAULT_THIN_SECTORS) {
            Ok(a) => {
                // The pool has a device the harness did not know: keep it.
                let r = (a.node.clone(), a.sectors.0 * 512);
                self.devices.insert(dev, a);
                Ok(r)
            }
            Err(e) => Err(errno_or_eio(e.errno())),
        }
    }

    fn create_thin(&mut self, dev: u64, sectors: Option<Sectors>) -> ThinOutcome {
        self.message(&format!("create_thin {dev}"))?;
        let sectors = sectors.unwrap_or(DEFAULT_THIN_SECTORS);
        // The harness's own rule: devices are whole blocks (see `ThinOp::CreateThin`).
        if sectors.0 == 0 || !sectors.0.is_multiple_of(self.params.block_size.sectors()) {
            self.message(&format!("delete {dev}"))?;
            return Err(Errno::EINVAL);
        }
        let a = self
            .activate(dev, sectors)
            .map_err(|e| errno_or_eio(e.errno()))?;
        self.devices.insert(dev, a);
        Ok(ThinValue::Unit)
    }

    fn create_snap(&mut self, dev: u64, origin: u64) -> ThinOutcome {
        // An active origin is suspended around the message (THIN2), so its in-flight
        // writes reach the metadata first.
        let origin_name = self.devices.get(&origin).map(|a| a.name.clone());
        if let Some(n) = &origin_name {
            self.ctl
                .suspend(&mut self.log, n)
                .map_err(|e| errno_or_eio(e.errno()))?;
        }
        let r = self.message(&format!("create_snap {dev} {origin}"));
        if let Some(n) = &origin_name {
            self.ctl
                .resume(&mut self.log, n)
                .map_err(|e| errno_or_eio(e.errno()))?;
        }
        r?;
        let sectors = self
            .devices
            .get(&origin)
            .map_or(DEFAULT_THIN_SECTORS, |a| a.sectors);
        let a = self
            .activate(dev, sectors)
            .map_err(|e| errno_or_eio(e.errno()))?;
        self.devices.insert(dev, a);
        Ok(ThinValue::Unit)
    }

    fn delete(&mut self, dev: u64) -> ThinOutcome {
        if let Some(a) = self.devices.remove(&dev) {
            self.deactivate(a);
        }
        self.message(&format!("delete {dev}"))?;
        Ok(ThinValue::Unit)
    }

    fn write_blocks(&mut self, step: usize, dev: u64, block: u64, count: u64) -> ThinOutcome {
        let bb = self.block_bytes();
        let (node, size) = self.device(dev)?;
        if count == 0 {
            return Ok(ThinValue::Unit);
        }
        let f = open(&node, true).map_err(|e| io_errno(&e))?;
        let start = block.saturating_mul(bb);
        if start >= size {
            return Err(Errno::ENOSPC);
        }
        let end = block.saturating_add(count).saturating_mul(bb).min(size);
        let id = dev as u32;
        let mut result = Ok(ThinValue::Unit);
        let mut buf = AlignedBuf::new(WINDOW.min(bb) as usize);
        for v in block..end / bb {
            let stamp = stamp(step, id, v);
            self.extents.push(Extent {
                stamp,
                start: 0,
                end: bb,
            });
            let mut at = 0;
            while at < bb {
                let n = WINDOW.min(bb - at);
                let b = buf.slice(n as usize);
                fill(b, stamp, at);
                if let Err(e) = f.write_all_at(b, v * bb + at) {
                    result = Err(io_errno(&e));
                }
                at += n;
            }
            self.commit_between_blocks();
        }
        result
    }

    /// After a discard that freed blocks of a pool out of data space, waits (at most 3 s,
    /// polling the status without committing) for the pool's worker to commit and go back
    /// to write mode on its own, before the harness's committing status query.
    ///
    /// Why: the worker commits right after it processed the discard when its last commit is
    /// a second old (`process_deferred_bios`), and the status query commits too; both run
    /// `check_for_data_space`, and `set_pool_mode` is not serialised, so both can switch
    /// the pool to write mode and send two events instead of one. Seen in the VM (6.1):
    /// "switching pool to write mode" twice 6 µs apart (fuzz seed 1, trace 15). Letting
    /// the worker do it alone gives the one event the model counts.
    fn let_the_worker_commit(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let Ok(line) = self.ctl.status_noflush(&self.pool) else {
                return;
            };
            let Ok(st) = line.parse::<PoolStatus>() else {
                return;
            };
            let recovering =
                st.mode == PoolMode::OutOfDataSpace && st.used_data_blocks < st.total_data_blocks;
            if !recovering || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Commits the pool's metadata between two blocks of a step, so that what a block can
    /// allocate never depends on where dm-thin's own once-a-second commit falls (see the
    /// model's `thin::io`).
    fn commit_between_blocks(&mut self) {
        if let Err(e) = self.ctl.status(&self.pool, false) {
            self.commit_failed.get_or_insert(e.to_string());
        }
    }

    fn write_bytes(&mut self, step: usize, dev: u64, offset: u64, len: u64) -> ThinOutcome {
        let bb = self.block_bytes();
        let (node, size) = self.device(dev)?;
        if len == 0 {
            return Ok(ThinValue::Unit);
        }
        if offset >= size {
            return Err(Errno::ENOSPC);
        }
        let f = open(&node, false).map_err(|e| io_errno(&e))?;
        let end = offset.saturating_add(len).min(size);
        let mut at = offset;
        let mut result = Ok(ThinValue::Unit);
        while at < end {
            let v = at / bb;
            let block_end = ((v + 1) * bb).min(end);
            let s = stamp(step, dev as u32, v);
            self.extents.push(Extent {
                stamp: s,
                start: at - v * bb,
                end: block_end - v * bb,
            });
            let mut p = at;
            while p < block_end {
                let n = WINDOW.min(block_end - p);
                let mut b = vec![0u8; n as usize];
                fill(&mut b, s, p - v * bb);
                if let Err(e) = f.write_all_at(&b, p) {
                    result = Err(io_errno(&e));
                }
                p += n;
            }
            // Through the page cache, as a program writes, and synced block by block: the
            // write-back's error (EIO) or the flush's (ENOSPC out of data space) comes
            // from fsync.
            if let Err(e) = f.sync_all() {
                result = Err(io_errno(&e));
            }
            self.commit_between_blocks();
            at = block_end;
        }
        result
    }

    fn read_blocks(&mut self, dev: u64, block: u64, count: u64) -> ThinOutcome {
        let bb = self.block_bytes();
        let (node, size) = self.device(dev)?;
        let f = open(&node, true).map_err(|e| io_errno(&e))?;
        let end = block.saturating_add(count).min(size / bb);
        let mut out = Vec::new();
        for v in block..end.max(block) {
            out.push(self.decode_block(&f, v).map_err(|e| io_errno(&e))?);
        }
        Ok(ThinValue::Blocks(out))
    }

    fn discard_blocks(&mut self, dev: u64, block: u64, count: u64) -> ThinOutcome {
        let bb = self.block_bytes();
        let (node, _) = self.device(dev)?;
        let f = open(&node, true).map_err(|e| io_errno(&e))?;
        let start = block.checked_mul(bb).ok_or(Errno::EINVAL)?;
        let len = count.checked_mul(bb).ok_or(Errno::EINVAL)?;
        sys::blkdiscard(&mut self.log, &f, start, len).map_err(|e| io_errno(&e))?;
        Ok(ThinValue::Unit)
    }

    /// Reads virtual block `v` and says which write each part of it holds.
    fn decode_block(&self, f: &File, v: u64) -> io::Result<BlockData> {
        let bb = self.block_bytes();
        let mut cuts: BTreeSet<u64> = [0, bb].into();
        for e in &self.extents {
            for x in [e.start, e.end] {
                cuts.insert(x);
                // A buffered write reaches the device in whole buffers and pages, the rest
                // of them as the page cache read it: cut there too.
                for g in [512, 4096] {
                    cuts.insert(x / g * g);
                    cuts.insert((x.div_ceil(g) * g).min(bb));
                }
            }
        }
        let cuts: Vec<u64> = cuts.into_iter().collect();
        // For each piece between two cuts: is it still all zeros, and which extents (most
        // recent first) still match it.
        let mut pieces: Vec<(u64, u64, bool, Vec<usize>)> = cuts
            .windows(2)
            .map(|w| {
                let live = (0..self.extents.len())
                    .rev()
                    .filter(|&i| self.extents[i].start <= w[0] && w[1] <= self.extents[i].end)
                    .collect();
                (w[0], w[1], true, live)
            })
            .collect();
        let mut buf = AlignedBuf::new(WINDOW.min(bb) as usize);
        let mut pattern = vec![0u8; WINDOW.min(bb) as usize];
        let mut at = 0;
        while at < bb {
            let n = WINDOW.min(bb - at);
            let b = buf.slice(n as usize);
            f.read_exact_at(b, v * bb + at)?;
            for (s, e, zero, live) in pieces.iter_mut() {
                let (lo, hi) = ((*s).max(at), (*e).min(at + n));
                if lo >= hi {
                    continue;
                }
                let got = &b[(lo - at) as usize..(hi - at) as usize];
                if *zero && got.iter().any(|x| *x != 0) {
                    *zero = false;
                }
                live.retain(|&i| {
                    let p = &mut pattern[..got.len()];
                    fill(p, self.extents[i].stamp, lo);
                    p == got
                });
            }
            at += n;
        }
        // Each piece's possible sources: zeros, or the writes whose pattern it holds (the
        // read block's own writes first, then the most recent). A short piece can match
        // more than one write by chance, and a cut where some write began or ended need not
        // be a boundary in this block: take the reading with the fewest changes of source.
        let mut options: Vec<Vec<Option<Stamp>>> = Vec::with_capacity(pieces.len());
        for (s, e, zero, live) in &pieces {
            let mut o: Vec<Option<Stamp>> = if *zero {
                vec![None]
            } else {
                let mut own: Vec<Option<Stamp>> = Vec::new();
                let mut other: Vec<Option<Stamp>> = Vec::new();
                for &i in live {
                    let st = self.extents[i].stamp;
                    if st.block == v { &mut own } else { &mut other }.push(Some(st));
                }
                own.extend(other);
                own
            };
            let mut seen = BTreeSet::new();
            o.retain(|x| seen.insert(*x));
            if o.is_empty() {
                return Err(io::Error::other(format!(
                    "bytes {s}..{e} of virtual block {v} hold what no write of the trace wrote"
                )));
            }
            options.push(o);
        }
        let choice = fewest_changes(&options);
        let mut out: Vec<Piece> = Vec::new();
        for ((s, e, _, _), stamp) in pieces.iter().zip(choice) {
            match out.last_mut() {
                Some(l) if l.stamp == stamp => l.end = *e as u32,
                _ => out.push(Piece {
                    start: *s as u32,
                    end: *e as u32,
                    stamp,
                }),
            }
        }
        Ok(match out.as_slice() {
            [one] => one.stamp.map_or(BlockData::Zero, BlockData::Whole),
            _ => BlockData::Pieces(out.into()),
        })
    }

    fn observe_pool(&mut self) -> Result<PoolObservation, String> {
        let (info, targets) = self
            .ctl
            .status(&self.pool, false)
            .map_err(|e| e.to_string())?;
        let line = targets
            .first()
            .ok_or("the pool has no target")?
            .params
            .clone();
        let st: PoolStatus = line
            .parse()
            .map_err(|e| format!("pool status `{line}`: {e}"))?;
        let dump = self.thin_dump()?;
        let counts = mapped_and_shared(&dump);
        let mut devices = BTreeMap::new();
        for (id, ranges) in dump {
            let status = match self.devices.get(&id) {
                Some(a) => {
                    let (_, t) = self.ctl.status(&a.name, false).map_err(|e| e.to_string())?;
                    let text = t.first().map(|t| t.params.clone()).unwrap_or_default();
                    let ts: ThinStatus = text
                        .parse()
                        .map_err(|e| format!("thin status `{text}`: {e}"))?;
                    ts.to_string()
                }
                None => String::new(),
            };
            let (mapped, shared) = counts.get(&id).copied().unwrap_or_default();
            let tid = ThinId::new(id).map_err(|_| format!("thin_dump lists device {id}"))?;
            devices.insert(
                tid,
                DeviceObservation {
                    status,
                    mapped_blocks: mapped,
                    shared_blocks: shared,
                    mappings: ranges,
                },
            );
        }
        // The events the pool sent: the counter `dm_table_event` bumps.
        Ok(PoolObservation::from_status(&st, info.event_nr, devices))
    }

    /// Every device's mapping, from `thin_dump` of a metadata snapshot (the live metadata
    /// device is in use by the pool; the snapshot is a consistent copy inside it).
    fn thin_dump(&mut self) -> Result<BTreeMap<u64, Vec<MappedRange>>, String> {
        self.message("reserve_metadata_snap")
            .map_err(|e| format!("reserve_metadata_snap: {e}"))?;
        self.log
            .note(format!("thin_dump -m {}", self.meta_loop.display()));
        let out = Command::new("thin_dump")
            .arg("-m")
            .arg(&self.meta_loop)
            .output();
        let released = self.message("release_metadata_snap");
        let out = out.map_err(|e| format!("thin_dump: {e}"))?;
        released.map_err(|e| format!("release_metadata_snap: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "thin_dump failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        parse_thin_dump(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Picks one option per position so that consecutive picks differ as rarely as possible;
/// among equally good readings, the earlier options (the preferred ones) win.
fn fewest_changes(options: &[Vec<Option<Stamp>>]) -> Vec<Option<Stamp>> {
    // cost[k], and for each position the option of the previous one it came from.
    let mut cost: Vec<u32> = vec![0; options.first().map_or(0, Vec::len)];
    let mut back: Vec<Vec<usize>> = vec![Vec::new()];
    for w in options.windows(2) {
        let (prev, cur) = (&w[0], &w[1]);
        let mut next = Vec::with_capacity(cur.len());
        let mut from = Vec::with_capacity(cur.len());
        for c in cur {
            let (best, j) = prev
                .iter()
                .enumerate()
                .map(|(j, p)| (cost[j] + u32::from(p != c), j))
                .min()
                .expect("every position has an option");
            next.push(best);
            from.push(j);
        }
        cost = next;
        back.push(from);
    }
    let Some((_, mut k)) = cost.iter().enumerate().map(|(k, c)| (*c, k)).min() else {
        return Vec::new();
    };
    let mut picked = vec![None; options.len()];
    for i in (0..options.len()).rev() {
        picked[i] = options[i][k];
        if i > 0 {
            k = back[i][k];
        }
    }
    picked
}

fn errno_or_eio(n: Option<i32>) -> Errno {
    n.and_then(Errno::from_number).unwrap_or(Errno::EIO)
}

fn io_errno(e: &io::Error) -> Errno {
    errno_or_eio(e.raw_os_error())
}

fn stamp(step: usize, dev: u32, v: u64) -> Stamp {
    Stamp {
        step: u32::try_from(step).unwrap_or(u32::MAX),
        dev,
        block: v,
    }
}

fn open(node: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(node)
}

/// The pattern a write with `stamp` puts at bytes `from..from + buf.len()` of its block:
/// splitmix64 of the stamp and the 8-byte word index, never a zero byte (zero is "never
/// written").
fn fill(buf: &mut [u8], stamp: Stamp, from: u64) {
    let key = (u64::from(stamp.step) << 40) ^ (u64::from(stamp.dev) << 16) ^ stamp.block;
    let mut word_index = u64::MAX;
    let mut word = [0u8; 8];
    for (i, b) in buf.iter_mut().enumerate() {
        let off = from + i as u64;
        if off / 8 != word_index {
            word_index = off / 8;
            word = splitmix(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ word_index).to_le_bytes();
        }
        let x = word[(off % 8) as usize];
        *b = if x == 0 { 0xa5 } else { x };
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A buffer aligned for `O_DIRECT`, without unsafe: a larger vector and an aligned window.
struct AlignedBuf {
    raw: Vec<u8>,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        AlignedBuf {
            raw: vec![0u8; len + ALIGN],
        }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        let skip = self.raw.as_ptr().align_offset(ALIGN);
        &mut self.raw[skip..skip + len]
    }
}

/// `0 <len> thin-pool <args>` -> a [`Target`].
fn parse_table_line(line: &str) -> Option<Target> {
    let mut w = line.splitn(4, ' ');
    Some(Target {
        start: w.next()?.parse().ok()?,
        length: w.next()?.parse().ok()?,
        kind: w.next()?.to_string(),
        params: w.next()?.to_string(),
    })
}

fn attr(tag: &str, name: &str) -> Option<u64> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let end = tag[at..].find('"')? + at;
    tag[at..end].parse().ok()
}

/// Parses `thin_dump`'s XML: `<device dev_id=..>` holding `<range_mapping origin_begin
/// data_begin length time>` and `<single_mapping origin_block data_block time>`, into
/// runs merged as the model lists them (consecutive virtual and data blocks, one time).
/// Per device of a `thin_dump`: (blocks mapped, of those the ones another mapping also
/// points at).
pub(crate) fn mapped_and_shared(
    dump: &BTreeMap<u64, Vec<MappedRange>>,
) -> BTreeMap<u64, (u64, u64)> {
    let mut users: BTreeMap<u64, u32> = BTreeMap::new();
    for r in dump.values().flatten() {
        for b in r.data..r.data + r.len {
            *users.entry(b).or_default() += 1;
        }
    }
    dump.iter()
        .map(|(id, ranges)| {
            let mapped: u64 = ranges.iter().map(|r| r.len).sum();
            let shared = ranges
                .iter()
                .flat_map(|r| r.data..r.data + r.len)
                .filter(|b| users.get(b).is_some_and(|n| *n > 1))
                .count() as u64;
            (*id, (mapped, shared))
        })
        .collect()
}

pub(crate) fn parse_thin_dump(xml: &str) -> Result<BTreeMap<u64, Vec<MappedRange>>, String> {
    let mut out: BTreeMap<u64, Vec<MappedRange>> = BTreeMap::new();
    let mut current: Option<u64> = None;
    for (n, line) in xml.lines().enumerate() {
        let t = line.trim();
        let bad = |what: &str| format!("thin_dump line {}: {what}: `{t}`", n + 1);
        let range = if t.starts_with("<device ") {
            let id = attr(t, "dev_id").ok_or_else(|| bad("no dev_id"))?;
            out.entry(id).or_default();
            current = Some(id);
            continue;
        } else if t.starts_with("</device") {
            current = None;
            continue;
        } else if t.starts_with("<range_mapping ") {
            MappedRange {
                virt: attr(t, "origin_begin").ok_or_else(|| bad("no origin_begin"))?,
                data: attr(t, "data_begin").ok_or_else(|| bad("no data_begin"))?,
                len: attr(t, "length").ok_or_else(|| bad("no length"))?,
                time: attr(t, "time").ok_or_else(|| bad("no time"))? as u32,
            }
        } else if t.starts_with("<single_mapping ") {
            MappedRange {
                virt: attr(t, "origin_block").ok_or_else(|| bad("no origin_block"))?,
                data: attr(t, "data_block").ok_or_else(|| bad("no data_block"))?,
                len: 1,
                time: attr(t, "time").ok_or_else(|| bad("no time"))? as u32,
            }
        } else {
            continue;
        };
        let id = current.ok_or_else(|| bad("a mapping outside a device"))?;
        let v = out.entry(id).or_default();
        match v.last_mut() {
            Some(r)
                if r.time == range.time
                    && r.virt + r.len == range.virt
                    && r.data + r.len == range.data =>
            {
                r.len += range.len
            }
            _ => v.push(range),
        }
    }
    Ok(out)
}

impl ThinDriver for DmThinPool {
    fn backend(&self) -> &'static str {
        "kernel"
    }

    fn apply(&mut self, step: usize, op: &ThinOp) -> Result<ThinOutcome, DriverError> {
        let out = self.apply_op(step, op);
        if matches!(op, ThinOp::DiscardBlocks { .. }) {
            self.let_the_worker_commit();
        }
        if let Some(e) = self.commit_failed.take() {
            return Err(DriverError::Backend(format!(
                "committing between blocks of step {step}: {e}"
            )));
        }
        // The model takes each step as followed by the pool's periodic commit (every
        // second): blocks freed become allocatable and a pool out of data space with free
        // blocks goes back to write mode (`commit` -> `check_for_data_space`). Asking the
        // status commits the same way (`pool_status` without noflush), so no sleep is needed.
        self.ctl
            .status(&self.pool, false)
            .map_err(|e| DriverError::Backend(format!("committing after step {step}: {e}")))?;
        Ok(out)
    }

    fn observe(&mut self) -> Result<PoolObservation, DriverError> {
        self.observe_pool().map_err(|e| {
            let mut msg = e;
            for l in self.log.tail(6) {
                msg.push_str("\n      did: ");
                msg.push_str(&l);
            }
            DriverError::Backend(msg)
        })
    }
}

impl DmThinPool {
    fn apply_op(&mut self, step: usize, op: &ThinOp) -> ThinOutcome {
        match *op {
            ThinOp::CreateThin { dev, sectors } => self.create_thin(dev, sectors),
            ThinOp::CreateSnap { dev, origin } => self.create_snap(dev, origin),
            ThinOp::Delete { dev } => self.delete(dev),
            ThinOp::SetTransactionId { current, new } => self
                .message(&format!("set_transaction_id {current} {new}"))
                .map(|()| ThinValue::Unit),
            ThinOp::WriteBlocks { dev, block, count } => self.write_blocks(step, dev, block, count),
            ThinOp::WriteBytes { dev, offset, len } => self.write_bytes(step, dev, offset, len),
            ThinOp::ReadBlocks { dev, block, count } => self.read_blocks(dev, block, count),
            ThinOp::DiscardBlocks { dev, block, count } => self.discard_blocks(dev, block, count),
        }
    }
}

impl Drop for DmThinPool {
    fn drop(&mut self) {
        let active = std::mem::take(&mut self.devices);
        for (_, a) in active {
            self.deactivate(a);
        }
        let _ = self.ctl.remove(&mut self.log, &self.pool);
        // The loop devices were attached with autoclear: they go when `self.loops` closes.
        let _ = crate::sandbox::remove_temp_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_dump_xml_becomes_runs() {
        let xml = r#"<superblock uuid="" time="1" transaction="0" flags="0" version="2" data_block_size="128" nr_data_blocks="0">
  <device dev_id="0" mapped_blocks="6" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="4" data_block="4" time="0"/>
    <single_mapping origin_block="100" data_block="9" time="1"/>
  </device>
  <device dev_id="1" mapped_blocks="0" transaction="0" creation_time="1" snap_time="1">
  </device>
</superblock>"#;
        let d = parse_thin_dump(xml).unwrap();
        let s: Vec<String> = d[&0].iter().map(|r| r.to_string()).collect();
        assert_eq!(s, ["0-4 -> 0-4 t0", "100 -> 9 t1"]);
        assert!(d[&1].is_empty());
        assert!(parse_thin_dump(
            "<single_mapping origin_block=\"1\" data_block=\"2\" time=\"0\"/>"
        )
        .is_err());
    }

    #[test]
    fn a_short_piece_matching_two_writes_continues_its_neighbour() {
        let st = |block| {
            Some(Stamp {
                step: 16,
                dev: 2,
                block,
            })
        };
        // Seen in the VM: the last byte of a block also matched another block's pattern.
        let options = vec![vec![st(0)], vec![st(2), st(0)]];
        assert_eq!(fewest_changes(&options), vec![st(0), st(0)]);
        // A real change of source stays a change.
        let options = vec![vec![st(0)], vec![None], vec![st(0)]];
        assert_eq!(fewest_changes(&options), vec![st(0), None, st(0)]);
        // Ties go to the preferred (first) option.
        assert_eq!(fewest_changes(&[vec![st(1), st(3)]]), vec![st(1)]);
    }

    #[test]
    fn patterns_differ_by_stamp_and_offset_and_have_no_zero() {
        let s = |step| Stamp {
            step,
            dev: 0,
            block: 0,
        };
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        fill(&mut a, s(1), 0);
        fill(&mut b, s(2), 0);
        fill(&mut c, s(1), 8);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a[8..],
            {
                let mut d = vec![0u8; 4088];
                fill(&mut d, s(1), 8);
                d
            }[..]
        );
        assert!(a.iter().all(|x| *x != 0));
    }
}
