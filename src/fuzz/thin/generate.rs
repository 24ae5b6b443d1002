//! The thin-pool trace generator: pool parameters and a sequence of [`ThinOp`]s, drawn
//! from one ChaCha8 stream per trace, so that a trace depends only on (seed, trace index).
//!
//! The draw is biased toward what breaks thin provisioning (THIN4-THIN8):
//! - a small data device (16..=64 blocks; 64 KiB blocks mostly, sometimes 128 KiB or
//!   512 KiB) and devices of a few blocks up to twice the pool, so that the pool runs out
//!   of data space and I/O reaches the devices' ends;
//! - features drawn per trace: `error_if_no_space`, `no_discard_passdown`,
//!   `ignore_discard`, `skip_block_zeroing`, a low water mark;
//! - snapshots of the newest device (chains of snapshots of snapshots), writes and partial
//!   writes (unaligned offsets, across block boundaries) onto blocks the generator believes
//!   shared, discards of shared and exclusive ranges, deletes of origins before their
//!   snapshots, reuse of deleted ids, ids near 2^24, wrong and right `set_transaction_id`;
//! - discards and deletes made likelier once the pool is believed full (recovery), and a
//!   read of what was just written or discarded, on the device or a relative, often next.
//!
//! The generator keeps its own rough view of the pool (devices, their sizes, which blocks
//! they map and which of those a snapshot shares); it never asks a driver.

use layerspec_model::{BlockSize, Features, PoolParams, Sectors, ThinOp};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Largest valid thin device id (24 bits, THIN1).
pub const MAX_ID: u64 = (1 << 24) - 1;

/// One generated thin-pool trace: the pool it runs on and its steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinTrace {
    /// The run's seed.
    pub seed: u64,
    /// The trace's index within the run.
    pub index: u64,
    /// The pool both sides are made with.
    pub params: PoolParams,
    /// The steps; step `i` stamps what it writes with `i`.
    pub steps: Vec<ThinOp>,
}

/// The generator's random stream for thin-pool trace `index` of a run seeded with `seed`
/// (ChaCha8, as the file-level generator, with its own domain tag).
pub fn rng_for(seed: u64, index: u64) -> ChaCha8Rng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&index.to_le_bytes());
    s[16..24].copy_from_slice(b"thinpool");
    ChaCha8Rng::from_seed(s)
}

/// Generates thin-pool trace `index` of the run seeded with `seed`, of `steps` steps: the
/// same arguments give the same trace.
pub fn generate_thin(seed: u64, index: u64, steps: usize) -> ThinTrace {
    let mut rng = rng_for(seed, index);
    let params = pool_params(&mut rng);
    let mut g = Gen {
        rng,
        params,
        block_bytes: params.block_size.bytes(),
        devs: BTreeMap::new(),
        newest: None,
        deleted: Vec::new(),
        tid: 0,
        used: 0,
        follow: VecDeque::new(),
        steps: Vec::new(),
    };
    while g.steps.len() < steps {
        g.step();
    }
    g.steps.truncate(steps);
    ThinTrace {
        seed,
        index,
        params,
        steps: g.steps,
    }
}

fn chance(rng: &mut ChaCha8Rng, percent: u32) -> bool {
    rng.random_range(0..100u32) < percent
}

fn pool_params(rng: &mut ChaCha8Rng) -> PoolParams {
    let data_blocks = rng.random_range(16..=64u64);
    let sectors = match rng.random_range(0..100u32) {
        0..75 => 128,
        75..90 => 256,
        _ => 1024,
    };
    let mut p = PoolParams::new(data_blocks);
    p.block_size = BlockSize::new(sectors).unwrap_or(BlockSize::DEFAULT);
    p.features = Features {
        error_if_no_space: chance(rng, 50),
        no_discard_passdown: chance(rng, 25),
        ignore_discard: chance(rng, 10),
        skip_block_zeroing: chance(rng, 10),
    };
    if chance(rng, 20) {
        p.low_water_blocks = rng.random_range(1..=data_blocks / 2);
    }
    p
}

/// One device as the generator believes it is.
#[derive(Clone, Debug, Default)]
struct Dev {
    /// Length in blocks.
    blocks: u64,
    /// Virtual blocks believed mapped.
    mapped: BTreeSet<u64>,
    /// Of those, the ones believed shared with a relative.
    shared: BTreeSet<u64>,
    /// Snapshots taken of it.
    snaps: u32,
    /// The device it was snapshotted from.
    origin: Option<u64>,
}

struct Gen {
    rng: ChaCha8Rng,
    params: PoolParams,
    block_bytes: u64,
    devs: BTreeMap<u64, Dev>,
    /// The device made last (a snapshot of it makes a chain).
    newest: Option<u64>,
    /// Ids deleted, for reuse.
    deleted: Vec<u64>,
    /// The transaction id, as the generator tracks it.
    tid: u64,
    /// Data blocks believed in use.
    used: u64,
    /// Reads queued to follow a write or discard.
    follow: VecDeque<ThinOp>,
    steps: Vec<ThinOp>,
}

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.random_range(0..n.max(1))
    }

    fn chance(&mut self, percent: u32) -> bool {
        chance(&mut self.rng, percent)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> Option<T> {
        if xs.is_empty() {
            None
        } else {
            Some(xs[self.below(xs.len() as u64) as usize])
        }
    }

    fn full(&self) -> bool {
        self.used + 2 >= self.params.data_blocks
    }

    fn live(&self) -> Vec<u64> {
        self.devs.keys().copied().collect()
    }

    /// An id for a new device: mostly the smallest free small id, sometimes a deleted one
    /// again, an id near 2^24 (2^24 itself is invalid), or one in use (EEXIST).
    fn new_id(&mut self) -> u64 {
        match self.below(100) {
            0..15 => {
                let deleted = self.deleted.clone();
                if let Some(d) = self.pick(&deleted) {
                    return d;
                }
            }
            15..21 => {
                let high = [MAX_ID, MAX_ID - 1, MAX_ID + 1, MAX_ID - 7];
                return self.pick(&high).unwrap_or(MAX_ID);
            }
            21..25 => {
                let live = self.live();
                if let Some(d) = self.pick(&live) {
                    return d;
                }
            }
            _ => {}
        }
        (0..).find(|i| !self.devs.contains_key(i)).unwrap_or(0)
    }

    /// A device to do I/O on: mostly a live one (the newest often), sometimes a missing or
    /// invalid id.
    fn io_dev(&mut self) -> u64 {
        let live = self.live();
        if live.is_empty() || self.chance(4) {
            let odd = [0, 1, 9, MAX_ID + 1];
            return self.pick(&odd).unwrap_or(0);
        }
        if self.chance(35) {
            if let Some(n) = self.newest.filter(|n| self.devs.contains_key(n)) {
                return n;
            }
        }
        self.pick(&live).unwrap_or(0)
    }

    fn dev_blocks(&self, dev: u64) -> u64 {
        self.devs
            .get(&dev)
            .map_or(self.params.data_blocks, |d| d.blocks)
    }

    /// A block range on `dev`: from a shared or mapped block, at the device's end, or
    /// anywhere in the first few pools' worth of blocks.
    fn range(&mut self, dev: u64, max_count: u64) -> (u64, u64) {
        let n = self.dev_blocks(dev);
        let count = match self.below(100) {
            0..55 => 1 + self.below(max_count.min(4)),
            55..85 => 1 + self.below(max_count.min(16)),
            _ => 1 + self.below(max_count),
        };
        let d = self.devs.get(&dev).cloned().unwrap_or_default();
        let r = self.below(100);
        let block = if r < 30 && !d.shared.is_empty() {
            let s: Vec<u64> = d.shared.iter().copied().collect();
            self.pick(&s).unwrap_or(0)
        } else if r < 45 && !d.mapped.is_empty() {
            let s: Vec<u64> = d.mapped.iter().copied().collect();
            self.pick(&s).unwrap_or(0)
        } else if r < 60 {
            let near = [n.saturating_sub(1), n, n + 1, n.saturating_sub(2)];
            let b = self.pick(&near).unwrap_or(n);
            // Often a range that starts inside and runs past the end.
            return (b.saturating_sub(self.below(count)), count);
        } else {
            self.below(n.min(self.params.data_blocks * 4))
        };
        (block, count)
    }

    fn step(&mut self) {
        if self.devs.is_empty() && self.chance(85) {
            return self.create();
        }
        if !self.follow.is_empty() && self.chance(45) {
            if let Some(op) = self.follow.pop_front() {
                self.steps.push(op);
                return;
            }
        }
        // Weights: create, snapshot, delete, write_blocks, write_bytes, read, discard, tid,
        // fill.
        let (discard, delete, fill) = if self.full() { (26, 10, 2) } else { (10, 5, 6) };
        let create = if self.devs.len() < 2 { 12 } else { 4 };
        let w = [create, 12, delete, 20, 16, 10, discard, 3, fill];
        let total: u64 = w.iter().sum();
        let mut r = self.below(total);
        let mut which = 0;
        for (i, x) in w.iter().enumerate() {
            if r < *x {
                which = i;
                break;
            }
            r -= x;
        }
        match which {
            0 => self.create(),
            1 => self.snapshot(),
            2 => self.delete(),
            3 => self.write_blocks(),
            4 => self.write_bytes(),
            5 => {
                let dev = self.io_dev();
                let (block, count) = self.range(dev, 16);
                self.steps.push(ThinOp::ReadBlocks { dev, block, count });
            }
            6 => self.discard(),
            7 => self.transaction_id(),
            _ => self.fill(),
        }
    }

    fn create(&mut self) {
        let dev = self.new_id();
        let data = self.params.data_blocks;
        let r = self.below(100);
        let blocks = match r {
            0..30 => 1 + self.below(4),
            30..55 => data / 2 + self.below(data / 2 + 1),
            55..80 => data + self.below(data + 1),
            80..95 => 1 + self.below(2 * data),
            _ => 0,
        };
        let sectors = (blocks > 0).then(|| Sectors(blocks * self.params.block_size.sectors()));
        self.steps.push(ThinOp::CreateThin { dev, sectors });
        if dev <= MAX_ID && !self.devs.contains_key(&dev) {
            let blocks = sectors.map_or(
                layerspec_model::DEFAULT_THIN_SECTORS.0 / self.params.block_size.sectors(),
                |s| s.0 / self.params.block_size.sectors(),
            );
            self.devs.insert(
                dev,
                Dev {
                    blocks,
                    ..Dev::default()
                },
            );
            self.deleted.retain(|d| *d != dev);
            self.newest = Some(dev);
        }
    }

    fn snapshot(&mut self) {
        let live = self.live();
        let origin = if live.is_empty() || self.chance(5) {
            self.pick(&[0, 3, MAX_ID + 1]).unwrap_or(0)
        } else if self.chance(50) && self.newest.is_some_and(|n| self.devs.contains_key(&n)) {
            // A snapshot of the newest device: chains of snapshots of snapshots.
            self.newest.unwrap_or(0)
        } else {
            self.pick(&live).unwrap_or(0)
        };
        let dev = self.new_id();
        self.steps.push(ThinOp::CreateSnap { dev, origin });
        if dev > MAX_ID || self.devs.contains_key(&dev) {
            return;
        }
        let Some(o) = self.devs.get_mut(&origin) else {
            return;
        };
        o.shared = o.mapped.clone();
        o.snaps += 1;
        let snap = Dev {
            blocks: o.blocks,
            mapped: o.mapped.clone(),
            shared: o.mapped.clone(),
            snaps: 0,
            origin: Some(origin),
        };
        self.devs.insert(dev, snap);
        self.deleted.retain(|d| *d != dev);
        self.newest = Some(dev);
        if self.chance(40) {
            // Read the same blocks through the snapshot and its origin.
            let (block, count) = self.range(dev, 8);
            self.follow
                .push_back(ThinOp::ReadBlocks { dev, block, count });
        }
    }

    fn delete(&mut self) {
        let live = self.live();
        let origins: Vec<u64> = self
            .devs
            .iter()
            .filter(|(_, d)| d.snaps > 0)
            .map(|(id, _)| *id)
            .collect();
        let dev = if live.is_empty() || self.chance(6) {
            self.pick(&[0, 5, MAX_ID + 1]).unwrap_or(0)
        } else if !origins.is_empty() && self.chance(60) {
            // Deleting an origin before its snapshots.
            self.pick(&origins).unwrap_or(0)
        } else {
            self.pick(&live).unwrap_or(0)
        };
        self.steps.push(ThinOp::Delete { dev });
        if let Some(d) = self.devs.remove(&dev) {
            let own = d.mapped.difference(&d.shared).count() as u64;
            self.used = self.used.saturating_sub(own);
            self.deleted.push(dev);
            // A relative of a deleted device reads its shared blocks next.
            let relative = self
                .devs
                .iter()
                .find(|(_, x)| x.origin == Some(dev))
                .map(|(id, _)| *id)
                .or(d.origin.filter(|o| self.devs.contains_key(o)));
            if let (Some(r), true) = (relative, self.chance(50)) {
                let (block, count) = self.range(r, 8);
                self.follow.push_back(ThinOp::ReadBlocks {
                    dev: r,
                    block,
                    count,
                });
            }
        }
    }

    fn note_write(&mut self, dev: u64, block: u64, count: u64) {
        let Some(d) = self.devs.get_mut(&dev) else {
            return;
        };
        for v in block..block.saturating_add(count).min(d.blocks) {
            let new = d.mapped.insert(v);
            if d.shared.remove(&v) || new {
                self.used += 1;
            }
        }
    }

    /// Reads of the range just touched: on the device, and on its origin or a snapshot.
    fn follow_up(&mut self, dev: u64, block: u64, count: u64) {
        if self.chance(40) {
            self.follow
                .push_back(ThinOp::ReadBlocks { dev, block, count });
        }
        let relative = self.devs.get(&dev).and_then(|d| d.origin).or_else(|| {
            self.devs
                .iter()
                .find(|(_, x)| x.origin == Some(dev))
                .map(|(id, _)| *id)
        });
        if let (Some(r), true) = (relative, self.chance(30)) {
            self.follow.push_back(ThinOp::ReadBlocks {
                dev: r,
                block,
                count,
            });
        }
    }

    fn write_blocks(&mut self) {
        let dev = self.io_dev();
        let (block, count) = self.range(dev, self.params.data_blocks);
        self.steps.push(ThinOp::WriteBlocks { dev, block, count });
        self.note_write(dev, block, count);
        self.follow_up(dev, block, count);
    }

    /// A partial write: at an unaligned offset in a (often shared) block, often running
    /// into the next block, sometimes at or past the device's end.
    fn write_bytes(&mut self) {
        let dev = self.io_dev();
        let bb = self.block_bytes;
        let (block, _) = self.range(dev, 2);
        let within = match self.below(8) {
            0 => 0,
            1 => bb - 1,
            2 => bb - 1 - self.below(100),
            3 => 512 * self.below(bb / 512),
            4 => 4096 * self.below(bb / 4096) + 1 + self.below(4095),
            _ => self.below(bb),
        };
        let left = bb - within;
        let len = match self.below(8) {
            0 => 1,
            1 => 1 + self.below(64),
            2 => 4096,
            3 => left + 1 + self.below(bb),
            4 => bb,
            5 => left,
            _ => 1 + self.below(2 * bb),
        };
        let offset = block.saturating_mul(bb).saturating_add(within);
        self.steps.push(ThinOp::WriteBytes { dev, offset, len });
        let first = offset / bb;
        let last = (offset + len - 1) / bb;
        self.note_write(dev, first, last - first + 1);
        self.follow_up(dev, first, last - first + 1);
    }

    fn discard(&mut self) {
        let dev = self.io_dev();
        let (block, count) = if self.full() && self.chance(50) {
            // Recovery: discard a good part of a device.
            let n = self.dev_blocks(dev).min(self.params.data_blocks * 2);
            let start = self.below(n / 2 + 1);
            (start, 1 + self.below(n - start))
        } else {
            let (block, count) = self.range(dev, 8);
            let n = self.dev_blocks(dev);
            if block < n && block + count > n && self.chance(60) {
                // Mostly keep discards inside the device (past its end is EINVAL).
                (block, n - block)
            } else {
                (block, count)
            }
        };
        self.steps.push(ThinOp::DiscardBlocks { dev, block, count });
        let ignore = self.params.features.ignore_discard;
        if let Some(d) = self.devs.get_mut(&dev) {
            if !ignore && block.saturating_add(count) <= d.blocks {
                for v in block..block + count {
                    if d.mapped.remove(&v) && !d.shared.remove(&v) {
                        self.used = self.used.saturating_sub(1);
                    }
                }
            }
        }
        self.follow_up(dev, block, count);
    }

    /// A large write: toward filling the pool.
    fn fill(&mut self) {
        let dev = self.io_dev();
        let data = self.params.data_blocks;
        let n = self.dev_blocks(dev).min(data * 2);
        let count = data / 2 + self.below(data / 2 + 1);
        let block = self.below(n.saturating_sub(count).max(1));
        self.steps.push(ThinOp::WriteBlocks { dev, block, count });
        self.note_write(dev, block, count);
        self.follow_up(dev, block, count);
    }

    fn transaction_id(&mut self) {
        let current = if self.chance(75) {
            self.tid
        } else {
            self.tid + 1 + self.below(3)
        };
        let new = match self.below(4) {
            0 => self.below(1 << 32),
            1 => current,
            _ => self.tid + 1,
        };
        self.steps.push(ThinOp::SetTransactionId { current, new });
        if current == self.tid {
            self.tid = new;
        }
    }
}
