//! Shrinking a diverging thin-pool trace to a small one that still diverges.
//!
//! A candidate counts when it still diverges the same way in kind: if the model itself
//! failed (a panic or a broken invariant), the candidate's model must fail too; otherwise
//! any difference between the model and the other driver will do. The passes, repeated
//! while any makes progress and the replay budget lasts:
//! 1. drop everything after the diverging step;
//! 2. drop chunks of steps, halving the chunk size down to single steps (every thin-pool
//!    trace is valid: a step on a device a dropped step would have made fails the same
//!    way on both sides, so ids stay consistent without bookkeeping);
//! 3. lower each step's numbers: block ranges cut from either end, lengths to 1 or half,
//!    offsets to the block's start, device lengths to half;
//! 4. fold a snapshot into its origin: drop the `snapshot` and send the steps after it that
//!    name the snapshot to the origin instead;
//! 5. rename device ids to the smallest id the trace does not use (every mention at once);
//! 6. simplify the pool: drop each feature, the low water mark, the block size to 64 KiB,
//!    the data blocks to half.

use super::super::replay::{Divergence, Phase, NOT_RUN};
use super::super::shrink::remove_chunks;
use super::generate::ThinTrace;
use super::replay::{replay_thin, ReplayOptions, ThinReplay};
use super::OpenThin;
use layerspec_model::{BlockSize, PoolParams, Sectors, ThinOp};
use std::collections::BTreeSet;

/// A shrunk trace and what it shows.
#[derive(Clone, Debug)]
pub struct ThinShrunk {
    /// The smallest diverging trace found.
    pub trace: ThinTrace,
    /// Its divergence.
    pub divergence: Divergence,
    /// Replays spent.
    pub replays: usize,
    /// Whether the budget ran out before no pass could make progress.
    pub budget_exhausted: bool,
}

fn model_failed(d: &Divergence) -> bool {
    d.real.as_deref() == Some(NOT_RUN)
}

struct Shrinker<'a> {
    open: &'a OpenThin<'a>,
    opts: ReplayOptions,
    budget: usize,
    replays: usize,
    model_fails: bool,
}

impl Shrinker<'_> {
    fn out_of_budget(&self) -> bool {
        self.replays >= self.budget
    }

    fn diverges(&mut self, t: &ThinTrace) -> Option<Divergence> {
        if self.out_of_budget() {
            return None;
        }
        self.replays += 1;
        let mut other = (self.open)(t.params).ok()?;
        match replay_thin(t, other.as_mut(), self.opts) {
            ThinReplay::Diverged(d) if model_failed(&d) == self.model_fails => Some(d),
            _ => None,
        }
    }

    fn try_keep(&mut self, cand: ThinTrace, cur: &mut ThinTrace, div: &mut Divergence) -> bool {
        if cand == *cur {
            return false;
        }
        match self.diverges(&cand) {
            Some(d) => {
                *cur = cand;
                truncate(cur, &d);
                *div = d;
                true
            }
            None => false,
        }
    }

    fn chunks(&mut self, cur: &mut ThinTrace, div: &mut Divergence) -> bool {
        remove_chunks(
            cur,
            |t| t.steps.len(),
            |t, r| {
                t.steps.drain(r);
            },
            |cand, cur| (!self.out_of_budget()).then(|| self.try_keep(cand, cur, div)),
        )
    }

    fn numbers(&mut self, cur: &mut ThinTrace, div: &mut Divergence) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < cur.steps.len() && !self.out_of_budget() {
            let bb = cur.params.block_size.bytes();
            let bs = cur.params.block_size.sectors();
            for op in smaller(&cur.steps[i], bb, bs) {
                let mut cand = cur.clone();
                cand.steps[i] = op;
                if self.try_keep(cand, cur, div) {
                    progress = true;
                    break;
                }
            }
            i += 1;
        }
        progress
    }

    fn fold_snapshots(&mut self, cur: &mut ThinTrace, div: &mut Divergence) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < cur.steps.len() && !self.out_of_budget() {
            if let ThinOp::CreateSnap { dev, origin } = cur.steps[i] {
                let mut cand = cur.clone();
                cand.steps.remove(i);
                for op in &mut cand.steps[i..] {
                    rename(op, dev, origin);
                }
                if self.try_keep(cand, cur, div) {
                    progress = true;
                    continue;
                }
            }
            i += 1;
        }
        progress
    }

    fn ids(&mut self, cur: &mut ThinTrace, div: &mut Divergence) -> bool {
        let mut progress = false;
        let used: BTreeSet<u64> = cur.steps.iter().flat_map(ids_of).collect();
        for id in used.into_iter().rev() {
            if self.out_of_budget() {
                break;
            }
            let now: BTreeSet<u64> = cur.steps.iter().flat_map(ids_of).collect();
            let Some(free) = (0..id).find(|i| !now.contains(i)) else {
                continue;
            };
            let mut cand = cur.clone();
            for op in &mut cand.steps {
                rename(op, id, free);
            }
            progress |= self.try_keep(cand, cur, div);
        }
        progress
    }

    fn pool(&mut self, cur: &mut ThinTrace, div: &mut Divergence) -> bool {
        let mut progress = false;
        for cand_params in simpler_pools(&cur.params) {
            if self.out_of_budget() {
                break;
            }
            let mut cand = cur.clone();
            cand.params = cand_params;
            if cand.params.block_size != cur.params.block_size {
                // Keep device lengths whole blocks of the new size.
                let (old, new) = (
                    cur.params.block_size.sectors(),
                    cand.params.block_size.sectors(),
                );
                for op in &mut cand.steps {
                    if let ThinOp::CreateThin {
                        sectors: Some(s), ..
                    } = op
                    {
                        *s = Sectors(s.0 / old * new);
                    }
                    if let ThinOp::WriteBytes { offset, .. } = op {
                        *offset = *offset / (old * 512) * (new * 512) + *offset % (new * 512);
                    }
                }
            }
            progress |= self.try_keep(cand, cur, div);
        }
        progress
    }
}

/// Smaller versions of a step, most aggressive first.
fn smaller(op: &ThinOp, block_bytes: u64, block_sectors: u64) -> Vec<ThinOp> {
    let mut out = Vec::new();
    let lower = |n: u64| -> Vec<u64> {
        let mut v = Vec::new();
        if n > 1 {
            v.push(1);
        }
        if n > 3 {
            v.push(n / 2);
        }
        if n > 1 {
            v.push(n - 1);
        }
        v
    };
    // A range made shorter from its end, or from its start (its last block kept).
    let ranges = |block: u64, count: u64| -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = lower(count).into_iter().map(|c| (block, c)).collect();
        if count > 1 {
            v.push((block + count - 1, 1));
        }
        if count > 3 {
            v.push((block + count / 2, count - count / 2));
        }
        v
    };
    match *op {
        ThinOp::WriteBlocks { dev, block, count } => {
            for (block, count) in ranges(block, count) {
                out.push(ThinOp::WriteBlocks { dev, block, count });
            }
        }
        ThinOp::ReadBlocks { dev, block, count } => {
            for (block, count) in ranges(block, count) {
                out.push(ThinOp::ReadBlocks { dev, block, count });
            }
        }
        ThinOp::DiscardBlocks { dev, block, count } => {
            for (block, count) in ranges(block, count) {
                out.push(ThinOp::DiscardBlocks { dev, block, count });
            }
        }
        ThinOp::WriteBytes { dev, offset, len } => {
            for l in lower(len) {
                out.push(ThinOp::WriteBytes {
                    dev,
                    offset,
                    len: l,
                });
            }
            let aligned = offset - offset % block_bytes;
            if aligned != offset {
                out.push(ThinOp::WriteBytes {
                    dev,
                    offset: aligned,
                    len,
                });
            }
        }
        ThinOp::CreateThin {
            dev,
            sectors: Some(s),
        } => {
            let blocks = s.0 / block_sectors;
            let mut sizes = vec![1, blocks / 2, blocks * 3 / 4];
            sizes.retain(|b| *b > 0 && *b < blocks);
            sizes.dedup();
            for b in sizes {
                out.push(ThinOp::CreateThin {
                    dev,
                    sectors: Some(Sectors(b * block_sectors)),
                });
            }
        }
        ThinOp::SetTransactionId { current, new } if new > 1 && new != current => {
            out.push(ThinOp::SetTransactionId {
                current,
                new: current + 1,
            });
        }
        _ => {}
    }
    out
}

/// Pools a little simpler than `p`.
fn simpler_pools(p: &PoolParams) -> Vec<PoolParams> {
    let mut out = Vec::new();
    let mut with = |change: &dyn Fn(&mut PoolParams)| {
        let mut q = *p;
        change(&mut q);
        if q != *p && q.validate().is_ok() {
            out.push(q);
        }
    };
    with(&|q| q.features.skip_block_zeroing = false);
    with(&|q| q.features.ignore_discard = false);
    with(&|q| q.features.no_discard_passdown = false);
    with(&|q| q.features.error_if_no_space = false);
    with(&|q| q.low_water_blocks = 0);
    with(&|q| q.block_size = BlockSize::DEFAULT);
    with(&|q| q.data_blocks = (q.data_blocks / 2).max(1));
    out
}

/// The device ids a step names.
fn ids_of(op: &ThinOp) -> Vec<u64> {
    match *op {
        ThinOp::CreateSnap { dev, origin } => vec![dev, origin],
        ThinOp::CreateThin { dev, .. }
        | ThinOp::Delete { dev }
        | ThinOp::WriteBlocks { dev, .. }
        | ThinOp::WriteBytes { dev, .. }
        | ThinOp::ReadBlocks { dev, .. }
        | ThinOp::DiscardBlocks { dev, .. } => vec![dev],
        ThinOp::SetTransactionId { .. } => Vec::new(),
    }
}

fn rename(op: &mut ThinOp, from: u64, to: u64) {
    let swap = |x: &mut u64| {
        if *x == from {
            *x = to;
        }
    };
    match op {
        ThinOp::CreateSnap { dev, origin } => {
            swap(dev);
            swap(origin);
        }
        ThinOp::CreateThin { dev, .. }
        | ThinOp::Delete { dev }
        | ThinOp::WriteBlocks { dev, .. }
        | ThinOp::WriteBytes { dev, .. }
        | ThinOp::ReadBlocks { dev, .. }
        | ThinOp::DiscardBlocks { dev, .. } => swap(dev),
        ThinOp::SetTransactionId { .. } => {}
    }
}

/// Drops the steps after the one where `d` shows (all of them when it shows in the set-up).
pub fn truncate(t: &mut ThinTrace, d: &Divergence) {
    match d.phase {
        Phase::Step(k) => t.steps.truncate(k + 1),
        Phase::Layer(_) | Phase::Setup => t.steps.clear(),
    }
}

/// Shrinks `trace`, which diverges as `first` says, replaying candidates on drivers from
/// `open` at most `budget` times.
pub fn shrink_thin(
    trace: &ThinTrace,
    first: Divergence,
    open: &OpenThin<'_>,
    opts: ReplayOptions,
    budget: usize,
) -> ThinShrunk {
    let mut s = Shrinker {
        open,
        opts,
        budget,
        replays: 0,
        model_fails: model_failed(&first),
    };
    let mut cur = trace.clone();
    let mut div = first;
    truncate(&mut cur, &div);
    loop {
        let mut progress = s.chunks(&mut cur, &mut div);
        progress |= s.numbers(&mut cur, &mut div);
        progress |= s.fold_snapshots(&mut cur, &mut div);
        progress |= s.ids(&mut cur, &mut div);
        progress |= s.pool(&mut cur, &mut div);
        if !progress || s.out_of_budget() {
            break;
        }
    }
    ThinShrunk {
        trace: cur,
        divergence: div,
        replays: s.replays,
        budget_exhausted: s.out_of_budget(),
    }
}
