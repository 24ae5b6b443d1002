//! The conformance report as Markdown (GitHub's tables): the same sections as the HTML
//! page; what the page shows on hover is written out (failures in full, skips by reason).

use super::grid::{build, first_line, kernel_rules, Cell, GridRow, Input, Report};
use crate::results::RowStatus;
use std::fmt::Write;

/// The document.
pub fn render(input: &Input) -> String {
    let r = build(input);
    let mut o = String::new();
    let _ = writeln!(o, "# layerspec conformance report\n");
    let _ = writeln!(
        o,
        "{} runs from {}: **{} pass, {} fail, {} skip**. {} scenarios; {} of {} claims \
         (spec/claims.toml) shown by a passing run.\n",
        r.all.total(),
        cell_text(&r.input.inputs.join(", ")),
        r.all.pass,
        r.all.fail,
        r.all.skip,
        r.scenarios.len(),
        r.claims.len() - r.unshown.len(),
        r.claims.len()
    );
    if !r.unshown.is_empty() {
        let _ = writeln!(o, "No passing run shows: {}.\n", r.unshown.join(", "));
    }
    totals(&mut o, &r);
    failures(&mut o, &r);
    let _ = writeln!(
        o,
        "## Claims × runs\n\n✓ some run of a scenario citing the claim passed and none \
         failed, ✗ one failed, – all skipped, blank: no run.\n"
    );
    grid(&mut o, &r, &r.claims, true);
    let _ = writeln!(o, "## Scenarios × runs\n");
    grid(&mut o, &r, &r.scenarios, false);
    skips(&mut o, &r);
    kernel(&mut o, &r);
    catalogue(&mut o, &r);
    o
}

/// Text safe in a table cell: no pipes, no line breaks.
fn cell_text(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn totals(o: &mut String, r: &Report) {
    let _ = writeln!(o, "## Per driver\n");
    let mut head = String::from("| driver |");
    let mut rule = String::from("| --- |");
    for run in &r.runs {
        let _ = write!(
            head,
            " {} {} |",
            run.backend,
            cell_text(run.kernel.as_deref().unwrap_or(""))
        );
        rule.push_str(" --- |");
    }
    let _ = writeln!(o, "{head} all |\n{rule} --- |");
    for (driver, per, total) in &r.totals {
        let _ = write!(o, "| {driver} |");
        for run in &r.runs {
            let _ = write!(
                o,
                " {} |",
                per.get(run).map(|c| c.text()).unwrap_or_default()
            );
        }
        let _ = writeln!(o, " {} |", total.text());
    }
    o.push('\n');
}

fn failures(o: &mut String, r: &Report) {
    let _ = writeln!(o, "## Failures ({})\n", r.failures.len());
    if r.failures.is_empty() {
        let _ = writeln!(o, "No run failed.\n");
    }
    for f in &r.failures {
        let kernel = f
            .kernel
            .as_deref()
            .map_or(String::new(), |k| format!(" ({k})"));
        let _ = writeln!(
            o,
            "### {} [{}] on {}{kernel}\n\n```text\n{}\n```\n",
            f.scenario,
            f.driver,
            f.backend,
            f.detail.replace("```", "'''")
        );
    }
}

fn grid(o: &mut String, r: &Report, rows: &[GridRow], claims: bool) {
    let mut head = String::from(if claims { "| claim |" } else { "| scenario |" });
    let mut rule = String::from("| --- |");
    for c in &r.columns {
        let _ = write!(
            head,
            " {}<br>{}<br>{} |",
            c.driver,
            c.backend,
            c.short_kernel()
        );
        rule.push_str(" :-: |");
    }
    let _ = writeln!(o, "{head}\n{rule}");
    for row in rows {
        let name = if claims {
            format!("**{}** {}", row.name, cell_text(&first_line(&row.note)))
        } else {
            row.name.clone()
        };
        let _ = write!(o, "| {name} |");
        for c in &row.cells {
            let _ = write!(o, " {} |", mark(c));
        }
        o.push('\n');
    }
    o.push('\n');
}

fn mark(c: &Cell) -> &'static str {
    match c.status {
        Some(RowStatus::Pass) => "✓",
        Some(RowStatus::Fail) => "✗",
        Some(RowStatus::Skip) => "–",
        None => "",
    }
}

fn skips(o: &mut String, r: &Report) {
    let _ = writeln!(o, "## Skipped runs, by reason ({})\n", r.all.skip);
    if r.skips.is_empty() {
        let _ = writeln!(o, "No run was skipped.\n");
        return;
    }
    let _ = writeln!(o, "| runs | reason | for example |\n| --: | --- | --- |");
    for (reason, who) in &r.skips {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            who.len(),
            cell_text(reason),
            cell_text(&who.iter().take(3).cloned().collect::<Vec<_>>().join("; "))
        );
    }
    o.push('\n');
}

fn kernel(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "## Kernel-version rules\n\nClaims that hold for some kernel versions only; a \
         scenario stating such behaviour says so with its `kernel` key, and a backend running \
         another kernel skips it, saying why.\n\n| claim | kernel | statement | sources |\n\
         | --- | --- | --- | --- |"
    );
    for c in kernel_rules(r.input.catalogue) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            c.id,
            c.kernel.as_ref().map(|k| k.to_string()).unwrap_or_default(),
            cell_text(&c.statement),
            cell_text(&c.sources.join("; "))
        );
    }
    o.push('\n');
}

fn catalogue(o: &mut String, r: &Report) {
    let _ = writeln!(o, "## The claims\n");
    for c in &r.input.catalogue.claims {
        let kernel = c
            .kernel
            .as_ref()
            .map_or(String::new(), |k| format!(" (kernel {k})"));
        let _ = writeln!(
            o,
            "- **{}**{kernel}: {} *Sources:* {}.",
            c.id,
            c.statement,
            c.sources.join("; ")
        );
    }
}
