//! Running thin-pool scenarios (`[pool]`, driver `thinpool`): each step on a
//! [`ThinDriver`], judged against the file, and the pool's observation at the end.

use super::{RunResult, Status};
use crate::scenario::{Action, Expected, Scenario, Step, ThinStep};
use layerspec_model::{
    Accounting, Driver, DriverKind, Observation, PoolParams, ThinDriver, ThinPool, ThinValue,
};
use std::collections::BTreeMap;

/// Runs a thin-pool scenario for `driver`'s kind and backend: on the model's [`ThinPool`]
/// for the `model` backend; other backends have no thin pool yet and skip.
pub(super) fn run_on(scenario: &Scenario, pool: &PoolParams, driver: &mut dyn Driver) -> RunResult {
    let fail = |msg: String| RunResult {
        status: Status::Fail(msg),
        observation: None,
    };
    if driver.kind() != DriverKind::Thinpool {
        return fail(format!(
            "a thin-pool scenario runs on the thinpool driver, not {}",
            driver.kind()
        ));
    }
    match driver.backend() {
        "model" => match ThinPool::new(*pool) {
            Ok(mut p) => run_thin(scenario, &mut p),
            Err(e) => fail(format!("[pool]: {e}")),
        },
        other => RunResult {
            status: Status::Skip(format!("no thin pool on the {other} backend yet")),
            observation: None,
        },
    }
}

/// Runs a thin-pool scenario's steps on `driver` and observes the pool at the end. The
/// observation carries the pool in `accounting.pool`; the file-level parts stay empty.
pub fn run_thin(scenario: &Scenario, driver: &mut dyn ThinDriver) -> RunResult {
    for step in &scenario.steps {
        if let Err(msg) = run_step(step, driver) {
            return RunResult {
                status: Status::Fail(format!(
                    "step {} (`{}`, line {}): {msg}",
                    step.index, step.text, step.line
                )),
                observation: None,
            };
        }
    }
    match driver.observe() {
        Ok(pool) => RunResult {
            status: Status::Pass,
            observation: Some(Observation {
                merged: BTreeMap::new(),
                storage: BTreeMap::new(),
                accounting: Accounting {
                    pool: Some(pool),
                    ..Accounting::default()
                },
            }),
        },
        Err(e) => RunResult {
            status: Status::Fail(format!("observing at the end: {e}")),
            observation: None,
        },
    }
}

fn run_step(step: &Step, driver: &mut dyn ThinDriver) -> Result<(), String> {
    let backend = driver.backend();
    let kind = DriverKind::Thinpool;
    let op = match &step.action {
        Action::Thin(ThinStep::Check(checks)) => {
            let obs = driver.observe().map_err(|e| e.to_string())?;
            for c in checks {
                c.evaluate(&obs)
                    .map_err(|got| format!("expected {c}, but {got}"))?;
            }
            return Ok(());
        }
        Action::Thin(ThinStep::Op(op)) => op,
        _ => return Err("a file-level step cannot run on the bare thin pool".into()),
    };
    let outcome = driver.apply(step.index, op).map_err(|e| e.to_string())?;
    let Some(value) = super::judge_expect(step, kind, backend, outcome)? else {
        return Ok(());
    };
    let Some(want) = super::wanted(step, kind, backend)? else {
        return Ok(());
    };
    match (want, &value) {
        (Expected::Blocks(w), ThinValue::Blocks(got)) => {
            let got: Vec<String> = got.iter().map(|b| b.sources()).collect();
            if &got == w {
                Ok(())
            } else {
                Err(format!("expected {w:?}, got {got:?}"))
            }
        }
        _ => Err(format!(
            "`{}` returned {value}, nothing to compare with `returns`",
            op.name()
        )),
    }
}
