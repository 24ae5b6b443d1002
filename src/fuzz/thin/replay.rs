//! Replaying a thin-pool trace on the model ([`ThinPool`]) and on a second [`ThinDriver`],
//! side by side, and finding the first place where they differ.
//!
//! Every step's outcome is compared exactly: the errno, or the value (for `read_blocks`,
//! each block's contents: which writes' bytes lie where). The pools' observations are
//! compared every `observe_every` steps and after the last step; on a real pool an
//! observation costs a `thin_dump`, hence the knob. On the model side the pool's invariants
//! ([`check_thin_invariants`]) can be checked after every step: a violation, like a panic
//! of the model, is reported as the model failing (the other side is then not run).

use super::super::replay::{guarded, Divergence, Phase, NOT_RUN};
use super::generate::ThinTrace;
use layerspec_model::{
    check_thin_invariants, PoolObservation, ThinDriver, ThinOp, ThinOutcome, ThinPool, ThinValue,
};

/// How a replay is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Compare the observations after every this many steps (and always after the last;
    /// 0: after the last only).
    pub observe_every: usize,
    /// Check the model's invariants after every step.
    pub check_invariants: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            observe_every: 10,
            check_invariants: true,
        }
    }
}

/// How a replay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThinReplay {
    /// Both sides agreed on every step and every observation compared.
    Agree {
        /// Steps run.
        steps: usize,
        /// Observations compared.
        observations: usize,
    },
    /// The first difference (or the model failing: `real` is [`NOT_RUN`]).
    Diverged(Divergence),
}

impl ThinReplay {
    /// The divergence, if any.
    pub fn divergence(&self) -> Option<&Divergence> {
        match self {
            ThinReplay::Diverged(d) => Some(d),
            ThinReplay::Agree { .. } => None,
        }
    }
}

/// Text of a step's outcome as reports show it: `ok`, the blocks' sources, or the errno.
pub fn show(o: &ThinOutcome) -> String {
    match o {
        Ok(v) => v.to_string(),
        Err(e) => e.name().to_string(),
    }
}

/// The outcome with every block's pieces, for when two outcomes differ only there.
fn show_pieces(o: &ThinOutcome) -> String {
    match o {
        Ok(ThinValue::Blocks(b)) => format!("{b:?}"),
        other => show(other),
    }
}

/// A short text of a step: `write_bytes dev 1 @70000+100`.
pub fn describe(op: &ThinOp) -> String {
    match op {
        ThinOp::CreateThin { dev, sectors } => match sectors {
            Some(s) => format!("create_thin {dev} ({} sectors)", s.0),
            None => format!("create_thin {dev}"),
        },
        ThinOp::CreateSnap { dev, origin } => format!("snapshot {dev} of {origin}"),
        ThinOp::Delete { dev } => format!("delete_thin {dev}"),
        ThinOp::SetTransactionId { current, new } => format!("set_transaction_id {current} {new}"),
        ThinOp::WriteBlocks { dev, block, count }
        | ThinOp::ReadBlocks { dev, block, count }
        | ThinOp::DiscardBlocks { dev, block, count } => {
            format!("{} dev {dev} blocks {block}+{count}", op.name())
        }
        ThinOp::WriteBytes { dev, offset, len } => {
            format!("write_bytes dev {dev} bytes {offset}+{len}")
        }
    }
}

/// The differences between two pool observations, one readable line each (`path: model
/// X, <backend> Y`), in a fixed order.
pub fn diff_pools(model: &PoolObservation, real: &PoolObservation, backend: &str) -> Vec<String> {
    let (Ok(m), Ok(r)) = (serde_json::to_value(model), serde_json::to_value(real)) else {
        return if model == real {
            Vec::new()
        } else {
            vec![format!(
                "observations differ (model {model:?}, {backend} {real:?})"
            )]
        };
    };
    let mut out = Vec::new();
    diff_json("", &m, &r, backend, &mut out);
    if out.is_empty() && model != real {
        out.push("observations differ in a way their JSON does not show".into());
    }
    out
}

fn diff_json(
    path: &str,
    m: &serde_json::Value,
    r: &serde_json::Value,
    backend: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if m == r {
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (m, r) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) => diff_json(&p, x, y, backend, out),
                (Some(x), None) => out.push(format!("{p}: model {x}, {backend} none")),
                (None, Some(y)) => out.push(format!("{p}: model none, {backend} {y}")),
                (None, None) => {}
            }
        }
        return;
    }
    out.push(format!("{path}: model {m}, {backend} {r}"));
}

fn model_fails(phase: Phase, what: String) -> ThinReplay {
    ThinReplay::Diverged(Divergence {
        phase,
        model: Some(what),
        real: Some(NOT_RUN.into()),
        diff: Vec::new(),
    })
}

/// Replays `trace` on a fresh model pool and on `other` (a fresh pool made with
/// `trace.params`).
pub fn replay_thin(
    trace: &ThinTrace,
    other: &mut dyn ThinDriver,
    opts: ReplayOptions,
) -> ThinReplay {
    let mut model = match ThinPool::new(trace.params) {
        Ok(p) => p,
        Err(e) => return model_fails(Phase::Setup, format!("bad pool parameters: {e}")),
    };
    let backend = other.backend();
    let diverged = |phase, model: String, real: String| {
        ThinReplay::Diverged(Divergence {
            phase,
            model: Some(model),
            real: Some(real),
            diff: Vec::new(),
        })
    };
    let mut observations = 0;
    let last = trace.steps.len().saturating_sub(1);
    for (i, op) in trace.steps.iter().enumerate() {
        let phase = Phase::Step(i);
        let want = match guarded(|| model.apply(i, op)) {
            Err(p) => return model_fails(phase, p),
            Ok(o) => o,
        };
        if opts.check_invariants {
            let v = check_thin_invariants(&model);
            if let Some(first) = v.first() {
                let what = format!(
                    "invariant {} violated: {} ({} violation(s))",
                    first.invariant,
                    first.detail,
                    v.len()
                );
                return model_fails(phase, what);
            }
        }
        match guarded(|| other.apply(i, op)) {
            Err(p) => return diverged(phase, show(&want), p),
            Ok(Err(e)) => return diverged(phase, show(&want), format!("driver error ({e})")),
            Ok(Ok(got)) if got != want => {
                let (w, g) = if show(&got) == show(&want) {
                    (show_pieces(&want), show_pieces(&got))
                } else {
                    (show(&want), show(&got))
                };
                return diverged(phase, w, g);
            }
            Ok(Ok(_)) => {}
        }
        let due = opts.observe_every > 0 && (i + 1) % opts.observe_every == 0;
        if due || i == last {
            observations += 1;
            let m = match guarded(|| model.observe()) {
                Err(p) => return model_fails(phase, format!("{p} (while observing)")),
                Ok(m) => m,
            };
            let r = match guarded(|| other.observe()) {
                Err(p) => {
                    return diverged(
                        phase,
                        "an observation".into(),
                        format!("{p} (while observing)"),
                    )
                }
                Ok(Err(e)) => {
                    return diverged(
                        phase,
                        "an observation".into(),
                        format!("no observation: driver error ({e})"),
                    )
                }
                Ok(Ok(r)) => r,
            };
            let diff = diff_pools(&m, &r, backend);
            if !diff.is_empty() {
                return ThinReplay::Diverged(Divergence {
                    phase,
                    model: None,
                    real: None,
                    diff,
                });
            }
        }
    }
    ThinReplay::Agree {
        steps: trace.steps.len(),
        observations,
    }
}

/// What the model gives for each step of `trace` and its observation at the end (for
/// writing the scenario file); `Err` from the step where the model panics (nothing after).
pub struct ModelRun {
    /// Each step's outcome, or the panic that ended the run.
    pub outcomes: Vec<Result<ThinOutcome, String>>,
    /// The pool at the end, if the model got there.
    pub end: Option<PoolObservation>,
}

/// Runs `trace` on the model alone.
pub fn model_run(trace: &ThinTrace) -> Result<ModelRun, String> {
    let mut model = ThinPool::new(trace.params).map_err(|e| e.to_string())?;
    let mut outcomes = Vec::new();
    for (i, op) in trace.steps.iter().enumerate() {
        match guarded(|| model.apply(i, op)) {
            Ok(o) => outcomes.push(Ok(o)),
            Err(p) => {
                outcomes.push(Err(p));
                return Ok(ModelRun {
                    outcomes,
                    end: None,
                });
            }
        }
    }
    let end = guarded(|| model.observe()).ok();
    Ok(ModelRun { outcomes, end })
}
