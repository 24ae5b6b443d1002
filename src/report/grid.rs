//! What a conformance report shows, whatever its format: the runs' columns (driver x
//! backend x kernel), each scenario's status in them, each claim's status (over the
//! scenarios citing it), per-driver totals, failures and skips.

use crate::catalogue::{Catalogue, Claim};
use crate::results::{Row, RowStatus};
use std::collections::BTreeMap;

/// What a report is made from.
pub struct Input<'a> {
    /// The latest row of each run ([`crate::results::read`]).
    pub rows: &'a [Row],
    /// The claims catalogue.
    pub catalogue: &'a Catalogue,
    /// Scenario name -> the claim ids it cites (from the scenario files; empty when they
    /// were not found).
    pub cited_by: BTreeMap<String, Vec<String>>,
    /// The inputs' names, as given.
    pub inputs: Vec<String>,
}

/// A column of the grids: one driver on one backend at one kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Column {
    /// Driver name.
    pub driver: String,
    /// Backend name.
    pub backend: String,
    /// The kernel, where the rows say.
    pub kernel: Option<String>,
}

impl Column {
    fn of(r: &Row) -> Column {
        Column {
            driver: r.driver.clone(),
            backend: r.backend.clone(),
            kernel: r.kernel.clone(),
        }
    }

    /// `major.minor` of the kernel (`6.1` for `6.1.0-56-cloud-amd64`), or `-`.
    pub fn short_kernel(&self) -> String {
        self.kernel.as_deref().map_or("-".into(), |k| {
            k.split(['.', '-']).take(2).collect::<Vec<_>>().join(".")
        })
    }

    /// `overlay2 on kernel 6.18.0-...`.
    pub fn label(&self) -> String {
        match &self.kernel {
            Some(k) => format!("{} on {} ({k})", self.driver, self.backend),
            None => format!("{} on {}", self.driver, self.backend),
        }
    }

    fn rank(&self) -> (usize, usize, String, String) {
        let driver = ["aufs", "overlay", "overlay2", "devicemapper", "thinpool"]
            .iter()
            .position(|d| *d == self.driver)
            .unwrap_or(9);
        let backend = ["model", "kernel", "fuse", "vm", "docker"]
            .iter()
            .position(|b| *b == self.backend)
            .unwrap_or(9);
        (
            driver,
            backend,
            self.driver.clone(),
            self.kernel.clone().unwrap_or_default(),
        )
    }
}

/// A backend at a kernel (the per-driver totals' columns).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    /// Backend name.
    pub backend: String,
    /// The kernel, where the rows say.
    pub kernel: Option<String>,
}

/// Counts of pass, fail and skip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Skipped.
    pub skip: usize,
}

impl Counts {
    fn add(&mut self, s: RowStatus) {
        match s {
            RowStatus::Pass => self.pass += 1,
            RowStatus::Fail => self.fail += 1,
            RowStatus::Skip => self.skip += 1,
        }
    }

    /// All runs counted.
    pub fn total(&self) -> usize {
        self.pass + self.fail + self.skip
    }

    /// The cell's status: fail if any failed, else pass if any passed, else skip.
    pub fn status(&self) -> Option<RowStatus> {
        if self.fail > 0 {
            Some(RowStatus::Fail)
        } else if self.pass > 0 {
            Some(RowStatus::Pass)
        } else if self.skip > 0 {
            Some(RowStatus::Skip)
        } else {
            None
        }
    }

    /// `3 pass, 1 skip`.
    pub fn text(&self) -> String {
        let parts: Vec<String> = [
            (self.pass, "pass"),
            (self.fail, "fail"),
            (self.skip, "skip"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| format!("{n} {w}"))
        .collect();
        if parts.is_empty() {
            "no runs".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One cell: its status and what hovering over it says.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    /// Pass, fail, skip, or `None`: no run.
    pub status: Option<RowStatus>,
    /// The runs behind it.
    pub counts: Counts,
    /// Why (failure and skip details; for a claim, per scenario).
    pub title: String,
}

/// A row of a grid: a name, a note (a claim's statement, a scenario's claims) and a cell
/// per column.
pub struct GridRow {
    /// Claim id or scenario name.
    pub name: String,
    /// What the row header's hover says.
    pub note: String,
    /// One per column.
    pub cells: Vec<Cell>,
}

/// Everything a report shows.
pub struct Report<'a> {
    /// The inputs.
    pub input: &'a Input<'a>,
    /// The grids' columns, by driver, backend, kernel.
    pub columns: Vec<Column>,
    /// Per driver, per backend at a kernel, and over all.
    pub totals: Vec<(String, BTreeMap<Run, Counts>, Counts)>,
    /// The totals' columns.
    pub runs: Vec<Run>,
    /// Over every row.
    pub all: Counts,
    /// One row per claim (catalogue order, then ids the catalogue lacks).
    pub claims: Vec<GridRow>,
    /// One row per scenario, by name.
    pub scenarios: Vec<GridRow>,
    /// The failed rows.
    pub failures: Vec<&'a Row>,
    /// Skip reason -> the runs skipped for it (`scenario [driver] on backend`).
    pub skips: BTreeMap<String, Vec<String>>,
    /// Claims no passing run shows.
    pub unshown: Vec<String>,
}

/// Builds what the report shows.
pub fn build<'a>(input: &'a Input<'a>) -> Report<'a> {
    let rows = input.rows;
    let mut columns: Vec<Column> = rows.iter().map(Column::of).collect();
    columns.sort_by_key(Column::rank);
    columns.dedup();
    let col_of = |r: &Row| columns.iter().position(|c| *c == Column::of(r));

    let mut by_driver: BTreeMap<String, (BTreeMap<Run, Counts>, Counts)> = BTreeMap::new();
    let mut all = Counts::default();
    for r in rows {
        let (per, total) = by_driver.entry(r.driver.clone()).or_default();
        per.entry(Run {
            backend: r.backend.clone(),
            kernel: r.kernel.clone(),
        })
        .or_default()
        .add(r.status);
        total.add(r.status);
        all.add(r.status);
    }
    let mut runs: Vec<Run> = by_driver
        .values()
        .flat_map(|(per, _)| per.keys().cloned())
        .collect();
    runs.sort_by_key(|r| {
        Column {
            driver: String::new(),
            backend: r.backend.clone(),
            kernel: r.kernel.clone(),
        }
        .rank()
    });
    runs.dedup();
    let mut totals: Vec<(String, BTreeMap<Run, Counts>, Counts)> = by_driver
        .into_iter()
        .map(|(d, (per, total))| (d, per, total))
        .collect();
    totals.sort_by_key(|(d, _, _)| {
        Column {
            driver: d.clone(),
            backend: String::new(),
            kernel: None,
        }
        .rank()
    });

    // Scenario rows.
    let mut by_scenario: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    let scenarios: Vec<GridRow> = by_scenario
        .iter()
        .map(|(name, rs)| {
            let mut cells = vec![Cell::default(); columns.len()];
            for r in rs {
                if let Some(i) = col_of(r) {
                    let c = &mut cells[i];
                    c.counts.add(r.status);
                    c.status = c.counts.status();
                    c.title = row_title(r);
                }
            }
            let ids = input.cited_by.get(*name).cloned().unwrap_or_default();
            GridRow {
                name: name.to_string(),
                note: ids.join(" "),
                cells,
            }
        })
        .collect();

    // Claim rows: over the scenarios citing each claim.
    let mut citing: BTreeMap<String, Vec<&str>> = input
        .catalogue
        .claims
        .iter()
        .map(|c| (c.id.clone(), Vec::new()))
        .collect();
    for (s, ids) in &input.cited_by {
        for id in ids {
            citing.entry(id.clone()).or_default().push(s);
        }
    }
    let order: Vec<String> = {
        let named: BTreeMap<String, Vec<String>> = citing
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        crate::claims::ordered(input.catalogue, &named)
            .into_iter()
            .cloned()
            .collect()
    };
    let mut unshown = Vec::new();
    let claims: Vec<GridRow> = order
        .iter()
        .map(|id| {
            let mut cells = vec![Cell::default(); columns.len()];
            let mut lines: Vec<Vec<String>> = vec![Vec::new(); columns.len()];
            for s in &citing[id] {
                for r in by_scenario.get(s).into_iter().flatten() {
                    if let Some(i) = col_of(r) {
                        cells[i].counts.add(r.status);
                        lines[i].push(match r.status {
                            RowStatus::Pass => format!("pass  {}", r.scenario),
                            _ => format!(
                                "{}  {}: {}",
                                r.status.name(),
                                r.scenario,
                                first_line(&r.detail)
                            ),
                        });
                    }
                }
            }
            for (c, l) in cells.iter_mut().zip(lines) {
                c.status = c.counts.status();
                let mut l = l;
                // Failures first, then skips, then passes.
                l.sort_by_key(|x| (!x.starts_with("fail"), !x.starts_with("skip"), x.clone()));
                let more = l.len().saturating_sub(12);
                l.truncate(12);
                if more > 0 {
                    l.push(format!("... and {more} more"));
                }
                c.title = format!("{}\n{}", c.counts.text(), l.join("\n"));
            }
            if !cells.iter().any(|c| c.counts.pass > 0) {
                unshown.push(id.clone());
            }
            GridRow {
                name: id.clone(),
                note: input
                    .catalogue
                    .get(id)
                    .map_or("(not in the claims catalogue)".into(), |c: &Claim| {
                        c.statement.clone()
                    }),
                cells,
            }
        })
        .collect();

    let failures: Vec<&Row> = rows
        .iter()
        .filter(|r| r.status == RowStatus::Fail)
        .collect();
    let mut skips: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status == RowStatus::Skip) {
        skips
            .entry(r.detail.clone())
            .or_default()
            .push(format!("{} [{}] on {}", r.scenario, r.driver, r.backend));
    }
    Report {
        input,
        columns,
        totals,
        runs,
        all,
        claims,
        scenarios,
        failures,
        skips,
        unshown,
    }
}

/// What hovering over a scenario's cell says.
fn row_title(r: &Row) -> String {
    let head = format!(
        "{} [{}] on {}{}: {}",
        r.scenario,
        r.driver,
        r.backend,
        r.kernel
            .as_deref()
            .map_or(String::new(), |k| format!(" ({k})")),
        r.status.name()
    );
    if r.detail.is_empty() {
        head
    } else {
        format!("{head}\n{}", r.detail)
    }
}

/// The first line of a detail, at most 160 characters.
pub fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.chars().count() > 160 {
        format!("{}...", l.chars().take(160).collect::<String>())
    } else {
        l.to_string()
    }
}

/// The catalogue's claims that hold for some kernel versions only.
pub fn kernel_rules(c: &Catalogue) -> Vec<&Claim> {
    c.claims.iter().filter(|c| c.kernel.is_some()).collect()
}
