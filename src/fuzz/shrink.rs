//! Shrinking a diverging trace to a small one that still diverges (delta debugging).
//!
//! Any divergence counts as "still diverges", not only the first one found: a smaller trace
//! that shows another difference is as good a report. The passes, repeated while any of them
//! makes progress and the replay budget lasts:
//! 1. drop everything after the diverging step;
//! 2. drop chunks of steps, halving the chunk size down to single steps;
//! 3. drop layer entries (last first), and clear the modes and xattrs of those kept;
//! 4. drop whole layers (the layers above are re-linked, the container moves to the new top).
//!
//! A candidate the model itself rejects (a step naming a container or layer that a dropped
//! step would have made) is not a divergence and is not kept.

use super::generate::Trace;
use super::replay::{replay, Divergence, Phase, Replay};
use layerspec_model::Driver;

/// Opens a fresh driver of the kind under test (a new sandbox for a real backend).
pub type Factory<'a> = dyn Fn() -> Result<Box<dyn Driver + Send>, String> + Sync + 'a;

/// A shrunk trace and what it shows.
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// The smallest diverging trace found.
    pub trace: Trace,
    /// Its divergence.
    pub divergence: Divergence,
    /// Replays spent.
    pub replays: usize,
    /// Whether the budget ran out before no pass could make progress.
    pub budget_exhausted: bool,
}

struct Shrinker<'a> {
    open: &'a Factory<'a>,
    budget: usize,
    replays: usize,
}

impl Shrinker<'_> {
    /// Replays `t`; `Some` when it still diverges.
    fn diverges(&mut self, t: &Trace) -> Option<Divergence> {
        if self.replays >= self.budget {
            return None;
        }
        self.replays += 1;
        let mut d = (self.open)().ok()?;
        match replay(t, d.as_mut()) {
            Replay::Diverged(div) => Some(div),
            Replay::Agree { .. } | Replay::Invalid(_) | Replay::Stopped { .. } => None,
        }
    }

    fn out_of_budget(&self) -> bool {
        self.replays >= self.budget
    }

    /// Keeps `cand` if it still diverges.
    fn try_keep(&mut self, cand: Trace, cur: &mut Trace, div: &mut Divergence) -> bool {
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

    fn steps(&mut self, cur: &mut Trace, div: &mut Divergence) -> bool {
        remove_chunks(
            cur,
            |t| t.steps.len(),
            |t, r| {
                t.steps.drain(r);
            },
            |cand, cur| (!self.out_of_budget()).then(|| self.try_keep(cand, cur, div)),
        )
    }

    fn entries(&mut self, cur: &mut Trace, div: &mut Divergence) -> bool {
        let mut progress = false;
        for li in (0..cur.layers.len()).rev() {
            let mut ei = cur.layers.get(li).map_or(0, |l| l.entries.len());
            while ei > 0 && !self.out_of_budget() {
                ei -= 1;
                if li >= cur.layers.len() || ei >= cur.layers[li].entries.len() {
                    continue;
                }
                let mut cand = cur.clone();
                cand.layers[li].entries.remove(ei);
                if self.try_keep(cand, cur, div) {
                    progress = true;
                    continue;
                }
                let e = &cur.layers[li].entries[ei];
                if e.mode.is_some() || !e.xattrs.is_empty() {
                    let mut cand = cur.clone();
                    let e = &mut cand.layers[li].entries[ei];
                    e.mode = None;
                    e.xattrs.clear();
                    progress |= self.try_keep(cand, cur, div);
                }
            }
        }
        progress
    }

    fn layers(&mut self, cur: &mut Trace, div: &mut Divergence) -> bool {
        let mut progress = false;
        let mut li = cur.layers.len();
        while li > 0 && !self.out_of_budget() {
            li -= 1;
            if li >= cur.layers.len() {
                continue;
            }
            let mut cand = cur.clone();
            cand.layers.remove(li);
            cand.relink();
            progress |= self.try_keep(cand, cur, div);
        }
        progress
    }
}

/// Drops the steps after the one where `d` shows (all of them when it shows in the set-up).
pub fn truncate(t: &mut Trace, d: &Divergence) {
    match d.phase {
        Phase::Step(k) => t.steps.truncate(k + 1),
        Phase::Layer(_) | Phase::Setup => t.steps.clear(),
    }
}

/// Shrinks `trace`, which diverges as `first` says, replaying candidates on drivers from
/// `open`, at most `budget` times.
pub fn shrink(trace: &Trace, first: Divergence, open: &Factory<'_>, budget: usize) -> Shrunk {
    let mut s = Shrinker {
        open,
        budget,
        replays: 0,
    };
    let mut cur = trace.clone();
    let mut div = first;
    truncate(&mut cur, &div);
    loop {
        let mut progress = s.steps(&mut cur, &mut div);
        progress |= s.entries(&mut cur, &mut div);
        progress |= s.layers(&mut cur, &mut div);
        if !progress || s.out_of_budget() {
            break;
        }
    }
    Shrunk {
        trace: cur,
        divergence: div,
        replays: s.replays,
        budget_exhausted: s.out_of_budget(),
    }
}

/// Delta debugging over a list inside `cur`: removes chunks of it, halving the chunk size
/// down to single elements, keeping each removal `attempt` accepts (`Some(true)`); stops
/// when `attempt` says the budget is spent (`None`). Returns whether anything was removed.
/// The file-level and the thin-pool shrinkers both use it.
pub(crate) fn remove_chunks<T: Clone>(
    cur: &mut T,
    len: impl Fn(&T) -> usize,
    remove: impl Fn(&mut T, std::ops::Range<usize>),
    mut attempt: impl FnMut(T, &mut T) -> Option<bool>,
) -> bool {
    let mut progress = false;
    let mut chunk = (len(cur) / 2).max(1);
    loop {
        let mut changed = false;
        let mut i = 0;
        while i < len(cur) {
            let mut cand = cur.clone();
            let end = (i + chunk).min(len(&cand));
            remove(&mut cand, i..end);
            match attempt(cand, cur) {
                None => return progress | changed,
                Some(true) => changed = true,
                Some(false) => i += chunk,
            }
        }
        progress |= changed;
        if len(cur) == 0 {
            return progress;
        }
        if chunk > 1 {
            chunk = (chunk / 2).max(1);
        } else if !changed {
            return progress;
        }
    }
}
