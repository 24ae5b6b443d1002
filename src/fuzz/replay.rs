//! Replaying a trace on the model and on a second driver, side by side, and finding the
//! first place where they differ.
//!
//! Every step's outcome is compared exactly (a value or an errno), after
//! [`crate::compare::normalise_outcome_on`] for the backend under test: a directory's `size`
//! in a `stat` result is the backing filesystem's business, and on fuse its `nlink` too.
//!
//! After the layers are built and the container made, and after every step, both sides are
//! observed and the observations compared with [`crate::compare::diff_observations_on`] for
//! that backend. These are the comparisons `layerspec run` makes against the model, with the
//! same documented normalisations (on fuse: what containers see, not the driver root); a
//! fuse difference beyond them is a divergence, to be written up, not normalised away.

use super::generate::Trace;
use layerspec_model::{
    Driver, DriverError, FileOp, KernelVersion, ModelDriver, Op, Outcome, StepError,
};
use std::cell::Cell;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

/// What [`Divergence::real`] says when the model failed first and the other side was not run.
pub const NOT_RUN: &str = "(not run)";

/// What the model gives for a file step in a container Docker could not start.
const NOT_RUNNING: &str = "(not running: its start failed)";

/// Where in a trace a divergence shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Building image layer `n` (0-based).
    Layer(usize),
    /// Making the first container, or observing the result of the set-up.
    Setup,
    /// Step `n` (0-based), or the observation right after it.
    Step(usize),
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Layer(n) => write!(f, "layer {n}"),
            Phase::Setup => f.write_str("set-up"),
            Phase::Step(n) => write!(f, "step {n}"),
        }
    }
}

/// The first difference between the model and the other driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// Where.
    pub phase: Phase,
    /// What the model did there (its outcome, or `None` when only the observations differ).
    pub model: Option<String>,
    /// What the other driver did there.
    pub real: Option<String>,
    /// Observation differences, one readable line each (empty when the outcomes differ).
    pub diff: Vec<String>,
}

impl Divergence {
    /// One line saying what differed.
    pub fn summary(&self) -> String {
        match (&self.model, &self.real) {
            (Some(m), Some(r)) if r == NOT_RUN => format!("{}: the model fails: {m}", self.phase),
            (Some(m), Some(r)) => format!("{}: model {m}, real {r}", self.phase),
            (Some(m), None) => format!("{}: model {m}", self.phase),
            _ => {
                let first = self.diff.first().map_or("", String::as_str);
                let more = match self.diff.len() {
                    0 | 1 => String::new(),
                    n => format!(" (+{} more)", n - 1),
                };
                format!("after {}: observations differ: {first}{more}", self.phase)
            }
        }
    }

    /// The lines that say what the other driver did (for a comment in a scenario file).
    pub fn real_lines(&self, backend: &str, limit: usize) -> Vec<String> {
        match (&self.model, &self.real) {
            (Some(m), Some(r)) if r == NOT_RUN => {
                vec![format!("the model fails here: {m} ({backend} not run)")]
            }
            (Some(m), Some(r)) => vec![format!("{backend}: {r} (the model: {m})")],
            _ => {
                let mut out = vec![format!(
                    "{backend}: the observation after this differs from the model's:"
                )];
                out.extend(self.diff.iter().take(limit).map(|l| format!("  {l}")));
                if self.diff.len() > limit {
                    out.push(format!("  ... {} more", self.diff.len() - limit));
                }
                out
            }
        }
    }
}

/// How a replay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Both sides agreed on every step and every observation.
    Agree {
        /// Steps run.
        steps: usize,
        /// Steps both sides failed with ENOSPC.
        no_space: usize,
    },
    /// The first difference.
    Diverged(Divergence),
    /// The trace itself is wrong for the model (a missing container or layer, a bad entry):
    /// nothing can be concluded about the other driver.
    Invalid(String),
    /// Both sides agreed up to a step whose outcome the model does not predict (a space
    /// limit it does not follow): the trace ends there, with why.
    Stopped {
        /// Steps run before it.
        steps: usize,
        /// Steps before it both sides failed with ENOSPC.
        no_space: usize,
        /// Why the model stopped.
        why: String,
    },
}

/// Text of a step's outcome as reports show it: the value, `ok`, or the errno name.
pub fn show_outcome(o: &Outcome) -> String {
    match o {
        Ok(v) => v.to_string(),
        Err(e) => e.name().to_string(),
    }
}

/// Step outcomes are normalised in [`crate::compare`] (`normalise_outcome_on` per backend).
pub use crate::compare::normalise_outcome;

/// The model `trace` runs on, following `kernel`: its options, init layers and driver
/// root's filesystem.
fn model_for(trace: &Trace, kernel: KernelVersion) -> Result<ModelDriver, String> {
    let m = ModelDriver::new(trace.driver, trace.options)
        .with_kernel(kernel)
        .with_init_layers(trace.init);
    crate::fuzz::on_loop(m, trace.loop_root)
}

/// Replays `trace` on a fresh model and on `other` (a fresh driver of the same kind), the
/// model following the rules of `other`'s kernel.
pub fn replay(trace: &Trace, other: &mut dyn Driver) -> Replay {
    let mut model = match model_for(trace, other.kernel()) {
        Ok(m) => m,
        Err(e) => return Replay::Invalid(e),
    };
    if let Err(e) = other.set_init_layers(trace.init) {
        return Replay::Invalid(e);
    }
    if trace.init && trace.layers.is_empty() {
        // Docker makes no container without an image (a shrunk trace may lose them all).
        return Replay::Invalid("a container with an init layer needs an image".into());
    }
    replay_with(trace, &mut model, other)
}

fn driver_error(e: &DriverError) -> String {
    format!("driver error ({e})")
}

thread_local! {
    /// Set while a driver call runs under [`guarded`]: its panic is caught and reported.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs a driver call, turning a panic into `Err(message)`. The panic hook stays quiet for
/// panics caught here (they are reported as divergences); other panics print as usual.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        format!("panic: {msg}")
    })
}

fn replay_with(trace: &Trace, model: &mut ModelDriver, other: &mut dyn Driver) -> Replay {
    let diverged = |phase, model: &str, real: &str| {
        Replay::Diverged(Divergence {
            phase,
            model: Some(model.to_string()),
            real: Some(real.to_string()),
            diff: Vec::new(),
        })
    };
    for (i, l) in trace.layers.iter().enumerate() {
        match guarded(|| model.add_layer(l)) {
            Err(p) => return diverged(Phase::Layer(i), &p, NOT_RUN),
            Ok(Err(e)) => return Replay::Invalid(format!("layer `{}`: {e}", l.id)),
            Ok(Ok(())) => {}
        }
        match guarded(|| other.add_layer(l)) {
            Err(p) => return diverged(Phase::Layer(i), "ok", &p),
            Ok(Err(e)) => return diverged(Phase::Layer(i), "ok", &driver_error(&e)),
            Ok(Ok(())) => {}
        }
    }
    let create = Op::CreateContainer {
        id: trace.container.clone(),
        image: trace.image(),
    };
    let steps = std::iter::once((Phase::Setup, &create)).chain(
        trace
            .steps
            .iter()
            .enumerate()
            .map(|(i, op)| (Phase::Step(i), op)),
    );
    let mut no_space = 0;
    for (phase, op) in steps {
        let want = match guarded(|| model.apply(op)) {
            Err(p) => return diverged(phase, &p, NOT_RUN),
            Ok(Err(DriverError::Step(StepError::NotRunning(_)))) => {
                // Docker could not start the container: no step runs in it, on either side.
                match guarded(|| other.apply(op)) {
                    Ok(Err(DriverError::Step(StepError::NotRunning(_)))) => continue,
                    Err(p) => return diverged(phase, NOT_RUNNING, &p),
                    Ok(Err(e)) => return diverged(phase, NOT_RUNNING, &driver_error(&e)),
                    Ok(Ok(got)) => return diverged(phase, NOT_RUNNING, &show_outcome(&got)),
                }
            }
            Ok(Err(DriverError::Step(StepError::NoSpace(why) | StepError::NotFollowed(why)))) => {
                let steps = match phase {
                    Phase::Step(i) => i,
                    _ => 0,
                };
                return Replay::Stopped {
                    steps,
                    no_space,
                    why,
                };
            }
            Ok(Err(DriverError::Step(e @ (StepError::NoContainer(_) | StepError::NoLayer(_)))))
                if matches!(phase, Phase::Step(_)) =>
            {
                // A container or layer an earlier step could not make (ENOSPC): both sides
                // refuse the step alike, and the trace goes on.
                match guarded(|| other.apply(op)) {
                    Ok(Err(DriverError::Step(r)))
                        if std::mem::discriminant(&r) == std::mem::discriminant(&e) =>
                    {
                        continue
                    }
                    Err(p) => return diverged(phase, &e.to_string(), &p),
                    Ok(Err(r)) => return diverged(phase, &e.to_string(), &driver_error(&r)),
                    Ok(Ok(got)) => return diverged(phase, &e.to_string(), &show_outcome(&got)),
                }
            }
            Ok(Err(e)) => return Replay::Invalid(format!("{phase}: {e}")),
            Ok(Ok(o)) => o,
        };
        if phase == Phase::Setup && want.is_err() {
            return Replay::Invalid(format!("{phase}: creating the container: {want:?}"));
        }
        let w = show_outcome(&want);
        match guarded(|| other.apply(op)) {
            Err(p) => return diverged(phase, &w, &p),
            Ok(Err(e)) => return diverged(phase, &w, &driver_error(&e)),
            Ok(Ok(got))
                if crate::compare::normalise_outcome_on(other.backend(), &got)
                    != crate::compare::normalise_outcome_on(other.backend(), &want) =>
            {
                return diverged(phase, &w, &show_outcome(&got))
            }
            Ok(Ok(_)) => {}
        }
        if want == Err(layerspec_model::Errno::ENOSPC) {
            no_space += 1;
        }
        let m = match guarded(|| model.observe()) {
            Err(p) => return diverged(phase, &format!("{p} (while observing)"), NOT_RUN),
            Ok(Err(e)) => return Replay::Invalid(format!("{phase}: observing the model: {e}")),
            Ok(Ok(m)) => m,
        };
        let r = match guarded(|| other.observe()) {
            Err(p) => return diverged(phase, "an observation", &format!("{p} (while observing)")),
            Ok(Err(e)) => {
                let e = format!("no observation: {}", driver_error(&e));
                return diverged(phase, "an observation", &e);
            }
            Ok(Ok(r)) => r,
        };
        let diff = crate::compare::diff_observations_on(other.backend(), &m, &r);
        if !diff.is_empty() {
            return Replay::Diverged(Divergence {
                phase,
                model: None,
                real: None,
                diff,
            });
        }
    }
    Replay::Agree {
        steps: trace.steps.len(),
        no_space,
    }
}

/// What the model following `kernel` gives for each step of `trace` (for writing the
/// scenario file): the outcomes, up to a step where the model panics (`Err` with the
/// message; nothing after).
pub fn model_outcomes(
    trace: &Trace,
    kernel: KernelVersion,
) -> Result<Vec<Result<Outcome, String>>, String> {
    let mut model = model_for(trace, kernel)?;
    for l in &trace.layers {
        guarded(|| model.add_layer(l))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| format!("layer `{}`: {e}", l.id))?;
    }
    let create = Op::CreateContainer {
        id: trace.container.clone(),
        image: trace.image(),
    };
    match guarded(|| model.apply(&create)) {
        Ok(Ok(Ok(_))) => {}
        other => return Err(format!("creating the container: {other:?}")),
    }
    let mut out = Vec::new();
    for (i, op) in trace.steps.iter().enumerate() {
        match guarded(|| model.apply(op)) {
            Ok(Ok(o)) => out.push(Ok(o)),
            Ok(Err(e)) => return Err(format!("step {i}: {e}")),
            Err(p) => {
                out.push(Err(p));
                break;
            }
        }
    }
    Ok(out)
}

/// A short text of a step, for reports: `rename /a -> /b`.
pub fn describe(op: &Op) -> String {
    let on = |c: &Option<String>| c.as_ref().map_or(String::new(), |c| format!(" on {c}"));
    match op {
        Op::File { container, op } => {
            let user = match op {
                FileOp::AsUser { cred, .. } => format!(" as {}:{}", cred.uid, cred.gid),
                _ => String::new(),
            };
            let op = op.bare();
            let what = match op {
                FileOp::Rename { from, to } | FileOp::Link { from, to } => {
                    format!("{} {from} -> {to}", op.name())
                }
                FileOp::Symlink { target, path } => format!("symlink {path} -> {target}"),
                FileOp::Open { path, flags, .. } => {
                    format!("open {path} {}", flags.names().join("|"))
                }
                FileOp::Create { path, .. }
                | FileOp::Write { path, .. }
                | FileOp::Append { path, .. }
                | FileOp::Truncate { path, .. }
                | FileOp::Read { path, .. }
                | FileOp::Unlink { path }
                | FileOp::Mkdir { path, .. }
                | FileOp::Rmdir { path }
                | FileOp::Readlink { path }
                | FileOp::Chmod { path, .. }
                | FileOp::Utimes { path, .. }
                | FileOp::Chown { path, .. }
                | FileOp::Stat { path }
                | FileOp::Readdir { path }
                | FileOp::Setxattr { path, .. }
                | FileOp::Getxattr { path, .. }
                | FileOp::Removexattr { path, .. } => format!("{} {path}", op.name()),
                FileOp::AsUser { .. } => unreachable!("bare() unwraps it"),
            };
            format!("{what}{user}{}", on(container))
        }
        Op::CreateContainer { id, image } => format!(
            "create_container {id}{}",
            image.as_ref().map_or(String::new(), |i| format!(" on {i}"))
        ),
        Op::RemoveContainer { id } => format!("remove_container {id}"),
        Op::Commit { container, layer } => format!("commit {layer}{}", on(container)),
        Op::Remount { container } => format!("remount{}", on(container)),
        Op::Changes { container } => format!("changes{}", on(container)),
    }
}
