//! Reports: a table for people and JSON lines for programs (`layerspec run`), and the
//! conformance report made from those lines (`layerspec report`): one self-contained HTML
//! page ([`html`]) or Markdown ([`markdown`]), both from [`grid`].

pub mod grid;
pub mod html;
pub mod markdown;

use crate::runner::Status;
use crate::suite::Outcome;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One JSON object per outcome: `{"scenario","driver","backend","status","detail"}`, then
/// `"kernel"` where the outcome knows it (the release a real backend ran on; for the model,
/// the version whose rules it followed).
pub fn json_line(o: &Outcome) -> String {
    let (status, detail) = split(&o.result.status);
    // Keys in the contract's order (serde_json's maps would sort them).
    let fields = [
        ("scenario", json!(o.scenario)),
        ("driver", json!(o.driver.name())),
        ("backend", json!(o.backend)),
        ("status", json!(status)),
        ("detail", json!(detail)),
    ];
    // Keys added since the contract come after its keys.
    let kernel = o.kernel.as_ref().map(|k| ("kernel", json!(k)));
    let body: Vec<String> = fields
        .iter()
        .chain(kernel.iter())
        .map(|(k, v)| format!("{}:{v}", json!(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn split(s: &Status) -> (&'static str, &str) {
    match s {
        Status::Pass => ("pass", ""),
        Status::Fail(d) => ("fail", d),
        Status::Skip(d) => ("skip", d),
    }
}

/// The human table: one row per scenario x driver, a column per backend, then the
/// failures and skip reasons in full, then a summary line.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut backends: Vec<String> = outcomes.iter().map(|o| o.backend.clone()).collect();
    backends.sort_by_key(|b| backend_rank(b));
    backends.dedup();
    let mut rows: BTreeMap<(String, String), BTreeMap<String, &Status>> = BTreeMap::new();
    for o in outcomes {
        rows.entry((o.scenario.clone(), o.driver.name().to_string()))
            .or_default()
            .insert(o.backend.clone(), &o.result.status);
    }
    let w = rows
        .keys()
        .map(|(s, d)| s.len() + d.len() + 3)
        .max()
        .unwrap_or(10)
        .max(10);
    let mut out = String::new();
    let _ = write!(out, "{:<w$}", "scenario [driver]");
    for b in &backends {
        let _ = write!(out, " {b:<6}");
    }
    out.push('\n');
    for ((s, d), cols) in &rows {
        let _ = write!(out, "{:<w$}", format!("{s} [{d}]"));
        for b in &backends {
            let cell = match cols.get(b) {
                Some(Status::Pass) => "pass",
                Some(Status::Fail(_)) => "FAIL",
                Some(Status::Skip(_)) => "skip",
                None => "-",
            };
            let _ = write!(out, " {cell:<6}");
        }
        out.push('\n');
    }
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in outcomes {
        match &o.result.status {
            Status::Fail(d) => {
                let _ = writeln!(
                    out,
                    "\nFAIL {} [{}] on {}: {d}",
                    o.scenario, o.driver, o.backend
                );
            }
            Status::Skip(d) => reasons
                .entry(format!("{}: {d}", o.backend))
                .or_default()
                .push(format!("{}[{}]", o.scenario, o.driver)),
            Status::Pass => {}
        }
    }
    for (reason, who) in reasons {
        let _ = writeln!(out, "\nskipped {} run(s) — {reason}", who.len());
    }
    out.push('\n');
    out.push_str(&summary(outcomes));
    out.push('\n');
    out
}

/// `N passed, N failed, N skipped`.
pub fn summary(outcomes: &[Outcome]) -> String {
    let count = |f: fn(&Status) -> bool| outcomes.iter().filter(|o| f(&o.result.status)).count();
    format!(
        "{} passed, {} failed, {} skipped",
        count(|s| matches!(s, Status::Pass)),
        count(|s| matches!(s, Status::Fail(_))),
        count(|s| matches!(s, Status::Skip(_)))
    )
}

fn backend_rank(b: &str) -> usize {
    ["model", "kernel", "fuse", "vm", "docker"]
        .iter()
        .position(|x| *x == b)
        .unwrap_or(9)
}
