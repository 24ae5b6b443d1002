//! Runs a scenario on one driver backend: builds its layers and containers, replays the
//! trace, judges every step against the file's expectations, and returns the final
//! observation.

use crate::scenario::{Action, Expect, Expected, Scenario, StatRelation, Step};
use layerspec_model::{
    evaluate_check_since, pool_data_blocks, Check, Driver, DriverError, DriverKind, Errno, FileOp,
    Identity, Observation, Op, Outcome, Value,
};
use serde::Serialize;
use std::collections::BTreeMap;

mod thin;

pub use thin::run_thin;

/// How a scenario went on one driver and backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "detail")]
pub enum Status {
    /// Every step as expected.
    Pass,
    /// A step did not do what the file says; the detail names it.
    Fail(String),
    /// Not run, with the reason.
    Skip(String),
}

/// The result of one scenario x driver x backend.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Pass, fail or skip.
    pub status: Status,
    /// The observation at the end (when the run got that far).
    pub observation: Option<Observation>,
}

/// Runs `scenario` on `driver`.
pub fn run(scenario: &Scenario, driver: &mut dyn Driver) -> RunResult {
    let kind = driver.kind();
    let backend = driver.backend();
    if let Some(pool) = &scenario.options.pool {
        return thin::run_on(scenario, pool, driver);
    }
    let fail = |msg: String| RunResult {
        status: Status::Fail(msg),
        observation: None,
    };
    for l in &scenario.layers {
        if let Err(e) = driver.add_layer(l) {
            return fail(format!("building layer `{}`: {e}", l.id));
        }
    }
    // Containers: id -> has an image; `current` is the most recently created.
    let mut containers: Vec<(String, bool)> = Vec::new();
    for (id, image) in &scenario.containers {
        let op = Op::CreateContainer {
            id: id.clone(),
            image: image.clone(),
        };
        match driver.apply(&op) {
            Ok(Ok(_)) => containers.push((id.clone(), image.is_some())),
            Ok(Err(e)) => return fail(format!("creating container `{id}`: {e}")),
            Err(e) => return fail(format!("creating container `{id}`: {e}")),
        }
    }
    // The pool figure each `check` step with `pool_data_blocks` observed, by step index.
    let mut pool_marks: BTreeMap<usize, u64> = BTreeMap::new();
    // What each `check` with `stat` and `mark` saw, by the mark's name.
    let mut stat_marks: BTreeMap<String, Identity> = BTreeMap::new();
    for step in &scenario.steps {
        let marks = Marks {
            pool: &mut pool_marks,
            stat: &mut stat_marks,
        };
        if let Err(msg) = run_step(step, driver, kind, backend, &mut containers, marks) {
            return fail(format!(
                "step {} (`{}`, line {}): {msg}",
                step.index, step.text, step.line
            ));
        }
    }
    match driver.observe() {
        Ok(obs) => RunResult {
            status: Status::Pass,
            observation: Some(obs),
        },
        Err(e) => fail(format!("observing at the end: {e}")),
    }
}

/// Runs a `check` with `stat` ([`StatRelation`]): `lstat`s the path, compares the fields
/// with the earlier mark, and remembers what it saw.
fn relate(
    r: &StatRelation,
    driver: &mut dyn Driver,
    (kind, backend): (DriverKind, &str),
    marks: &mut BTreeMap<String, Identity>,
) -> Result<(), String> {
    let op = Op::File {
        container: r.container.clone(),
        op: FileOp::Stat {
            path: r.path.clone(),
        },
    };
    let id = match driver.apply(&op).map_err(|e| e.to_string())? {
        Ok(Value::Stat(s)) => s.id,
        Ok(v) => return Err(format!("stat {} returned {v}", r.path)),
        Err(e) => return Err(format!("stat {}: {e}", r.path)),
    };
    if let Some(like) = &r.like {
        let was = marks
            .get(like)
            .ok_or_else(|| format!("no mark `{like}` was taken (its step failed?)"))?;
        let value = |i: &Identity, f: &str| i.field(f).expect("field names checked when parsed");
        let none = Vec::new();
        let pick = |p: &'_ crate::scenario::PerDriver<Vec<String>>| -> Vec<String> {
            p.get(kind, backend).unwrap_or(&none).clone()
        };
        for (fields, equal, word) in [
            (&pick(&r.same), true, "be the same as"),
            (&pick(&r.differ), false, "differ from"),
        ] {
            let wrong: Vec<&str> = fields
                .iter()
                .filter(|f| (value(&id, f) == value(was, f)) != equal)
                .map(String::as_str)
                .collect();
            if !wrong.is_empty() {
                return Err(format!(
                    "expected {} of {} to {word} mark `{like}`'s, but {} did not",
                    fields.join(", "),
                    r.path,
                    wrong.join(", ")
                ));
            }
        }
    }
    if let Some(m) = &r.mark {
        marks.insert(m.clone(), id);
    }
    Ok(())
}

/// What earlier steps saw, for later ones to compare with.
struct Marks<'a> {
    /// The pool figure each `check` with `pool_data_blocks` observed, by step index.
    pool: &'a mut BTreeMap<usize, u64>,
    /// What each `check` with `stat` and `mark` saw, by the mark's name.
    stat: &'a mut BTreeMap<String, Identity>,
}

fn run_step(
    step: &Step,
    driver: &mut dyn Driver,
    kind: DriverKind,
    backend: &str,
    containers: &mut Vec<(String, bool)>,
    marks: Marks,
) -> Result<(), String> {
    let pool_marks = marks.pool;
    match &step.action {
        Action::Thin(_) => Err("thin-pool steps run only in a scenario with a `[pool]`".into()),
        Action::Relate(r) => relate(r, driver, (kind, backend), marks.stat),
        Action::Check { container, checks } => {
            let (id, has_image) = match container {
                Some(c) => containers
                    .iter()
                    .find(|(id, _)| id == c)
                    .cloned()
                    .ok_or_else(|| format!("no container `{c}`"))?,
                None => containers
                    .last()
                    .cloned()
                    .ok_or("no container exists for this check")?,
            };
            let obs = driver.observe().map_err(|e| e.to_string())?;
            for c in checks {
                evaluate_check_since(&obs, kind, &id, has_image, c, pool_marks)
                    .map_err(|got| format!("expected {c}, but {got}"))?;
            }
            if checks.iter().any(|c| matches!(c, Check::PoolDataBlocks(_))) {
                if let Some(n) = pool_data_blocks(&obs) {
                    pool_marks.insert(step.index, n);
                }
            }
            Ok(())
        }
        Action::Op(op) => {
            let outcome: Outcome = driver.apply(op).map_err(|e: DriverError| e.to_string())?;
            track_containers(op, &outcome, containers);
            let Some(value) = judge_expect(step, kind, backend, outcome)? else {
                return Ok(());
            };
            match wanted(step, kind, backend)? {
                Some(want) => compare(want, &value),
                None => Ok(()),
            }
        }
    }
}

/// The value the step's `returns` states for this driver and backend, if it has one.
pub(crate) fn wanted<'s>(
    step: &'s Step,
    kind: DriverKind,
    backend: &str,
) -> Result<Option<&'s Expected>, String> {
    let Some(returns) = &step.returns else {
        return Ok(None);
    };
    returns
        .get(kind, backend)
        .map(Some)
        .ok_or_else(|| format!("`returns` has no value for {kind} and no default"))
}

/// Judges a step's outcome against its `expect`: `Ok(Some(value))` when it succeeded as
/// expected (its value still to be compared), `Ok(None)` when it failed as expected.
pub(crate) fn judge_expect<V: std::fmt::Display>(
    step: &Step,
    kind: DriverKind,
    backend: &str,
    outcome: Result<V, Errno>,
) -> Result<Option<V>, String> {
    let expect = step
        .expect
        .get(kind, backend)
        .copied()
        .ok_or_else(|| format!("`expect` has no value for {kind} and no default"))?;
    match (expect, outcome) {
        (Expect::Ok, Ok(v)) => Ok(Some(v)),
        (Expect::Ok, Err(e)) => Err(format!("expected ok, got {e}")),
        (Expect::Errno(want), Err(got)) if want == got => Ok(None),
        (Expect::Errno(want), Err(got)) => Err(format!("expected {want}, got {got}")),
        (Expect::Errno(want), Ok(v)) => Err(format!("expected {want}, got ok ({v})")),
    }
}

fn track_containers(op: &Op, outcome: &Outcome, containers: &mut Vec<(String, bool)>) {
    if outcome.is_err() {
        return;
    }
    match op {
        Op::CreateContainer { id, image } => containers.push((id.clone(), image.is_some())),
        Op::RemoveContainer { id } => containers.retain(|(c, _)| c != id),
        _ => {}
    }
}

/// Compares a returned value with what the file states; `Err` says how they differ.
pub fn compare(want: &Expected, got: &Value) -> Result<(), String> {
    let mismatch = || Err(format!("expected {}, got {got}", show(want)));
    match (want, got) {
        (Expected::Text(t), Value::Bytes(b)) if t.as_bytes() == b.as_slice() => Ok(()),
        (Expected::Text(t), Value::Target(s) | Value::Digest(s)) if t == s => Ok(()),
        (Expected::Names(n), Value::Names(g)) if n == g => Ok(()),
        (Expected::Changes(c), Value::Changes(g)) => {
            let g: Vec<(String, String)> = g
                .iter()
                .map(|c| (format!("{:?}", c.kind), c.path.clone()))
                .collect();
            if &g == c {
                Ok(())
            } else {
                mismatch()
            }
        }
        (
            Expected::Stat {
                kind,
                size,
                mode,
                nlink,
                uid,
                gid,
            },
            Value::Stat(s),
        ) => {
            let ok = kind.as_deref().is_none_or(|k| k == s.kind.name())
                && size.is_none_or(|v| v == s.size)
                && mode.is_none_or(|v| v == s.mode)
                && nlink.is_none_or(|v| v == s.nlink)
                && uid.is_none_or(|v| v == s.uid)
                && gid.is_none_or(|v| v == s.gid);
            if ok {
                Ok(())
            } else {
                mismatch()
            }
        }
        _ => mismatch(),
    }
}

fn show(want: &Expected) -> String {
    match want {
        Expected::Text(t) => format!("{t:?}"),
        Expected::Names(n) => format!("{n:?}"),
        Expected::Changes(c) => format!(
            "{:?}",
            c.iter()
                .map(|(k, p)| [k.as_str(), p.as_str()])
                .collect::<Vec<_>>()
        ),
        Expected::Blocks(b) => format!("{b:?}"),
        Expected::Stat {
            kind,
            size,
            mode,
            nlink,
            uid,
            gid,
        } => {
            let mut parts = Vec::new();
            if let Some(k) = kind {
                parts.push(format!("kind = {k:?}"));
            }
            if let Some(s) = size {
                parts.push(format!("size = {s}"));
            }
            if let Some(m) = mode {
                parts.push(format!("mode = 0o{m:o}"));
            }
            if let Some(n) = nlink {
                parts.push(format!("nlink = {n}"));
            }
            if let Some(u) = uid {
                parts.push(format!("uid = {u}"));
            }
            if let Some(g) = gid {
                parts.push(format!("gid = {g}"));
            }
            format!("{{ {} }}", parts.join(", "))
        }
    }
}
