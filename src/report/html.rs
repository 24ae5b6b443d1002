//! The conformance report as one self-contained HTML page: inline CSS, no script, no
//! external resource; a cell's reason shows on hover (its `title`).

use super::grid::{build, kernel_rules, Cell, Column, GridRow, Input, Report};
use crate::results::RowStatus;
use std::fmt::Write;

/// The page.
pub fn render(input: &Input) -> String {
    let r = build(input);
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    o.push_str("<title>layerspec conformance report</title>\n<style>\n");
    o.push_str(CSS);
    o.push_str("</style>\n</head>\n<body>\n");
    header(&mut o, &r);
    totals(&mut o, &r);
    failures(&mut o, &r);
    grid(
        &mut o,
        &r,
        "claims",
        "Claims × runs",
        "Each claim's cell sums up the runs of the scenarios citing it: a failure if any \
         failed, a pass if any passed, else a skip. Hover a cell for the runs behind it, a \
         claim for its statement.",
        &r.claims,
        true,
    );
    grid(
        &mut o,
        &r,
        "scenarios",
        "Scenarios × runs",
        "Hover a cell for the run's reason; a scenario's name for the claims it cites.",
        &r.scenarios,
        false,
    );
    skips(&mut o, &r);
    kernel(&mut o, &r);
    catalogue(&mut o, &r);
    o.push_str("</body>\n</html>\n");
    o
}

/// HTML text and attribute escaping.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
    out
}

fn header(o: &mut String, r: &Report) {
    let i = r.input;
    let _ = writeln!(o, "<header>\n<h1>layerspec conformance report</h1>");
    let _ = writeln!(
        o,
        "<p class=\"sub\">{} runs from {} · {} scenarios · {} claims (spec/claims.toml)</p>",
        r.all.total(),
        esc(&i.inputs.join(", ")),
        r.scenarios.len(),
        r.claims.len()
    );
    let _ = writeln!(
        o,
        "<p class=\"chips\"><span class=\"chip pass\">{} pass</span>\
         <span class=\"chip fail{}\">{} fail</span><span class=\"chip skip\">{} skip</span>\
         <span class=\"chip plain\">{} of {} claims shown by a passing run</span></p>",
        r.all.pass,
        if r.all.fail == 0 { " zero" } else { "" },
        r.all.fail,
        r.all.skip,
        r.claims.len() - r.unshown.len(),
        r.claims.len()
    );
    if !r.unshown.is_empty() {
        let links: Vec<String> = r
            .unshown
            .iter()
            .map(|id| format!("<a href=\"#claim-{0}\">{0}</a>", esc(id)))
            .collect();
        let _ = writeln!(
            o,
            "<p class=\"unshown\">No passing run shows: {}</p>",
            links.join(" ")
        );
    }
    o.push_str(
        "<nav><a href=\"#totals\">Per driver</a> <a href=\"#failures\">Failures</a> \
         <a href=\"#claims\">Claims</a> <a href=\"#scenarios\">Scenarios</a> \
         <a href=\"#skips\">Skips</a> <a href=\"#kernel\">Kernel versions</a> \
         <a href=\"#catalogue\">The claims</a></nav>\n</header>\n",
    );
}

fn counts_cell(c: &super::grid::Counts) -> String {
    let mut parts = Vec::new();
    if c.pass > 0 {
        parts.push(format!("<span class=\"n pass\">{} pass</span>", c.pass));
    }
    if c.fail > 0 {
        parts.push(format!("<span class=\"n fail\">{} fail</span>", c.fail));
    }
    if c.skip > 0 {
        parts.push(format!("<span class=\"n skip\">{} skip</span>", c.skip));
    }
    parts.join(" ")
}

fn totals(o: &mut String, r: &Report) {
    o.push_str(
        "<section id=\"totals\">\n<h2>Per driver</h2>\n<table class=\"totals\">\n\
         <tr><th>driver</th>",
    );
    for run in &r.runs {
        let col = Column {
            driver: String::new(),
            backend: run.backend.clone(),
            kernel: run.kernel.clone(),
        };
        let _ = write!(
            o,
            "<th title=\"{}\">{}<br><small>{}</small></th>",
            esc(run.kernel.as_deref().unwrap_or("kernel not stated")),
            esc(&run.backend),
            esc(&col.short_kernel())
        );
    }
    o.push_str("<th>all</th></tr>\n");
    for (driver, per, total) in &r.totals {
        let _ = write!(o, "<tr><th>{}</th>", esc(driver));
        for run in &r.runs {
            let _ = write!(
                o,
                "<td>{}</td>",
                per.get(run).map(counts_cell).unwrap_or_default()
            );
        }
        let _ = writeln!(o, "<td>{}</td></tr>", counts_cell(total));
    }
    o.push_str("</table>\n</section>\n");
}

fn failures(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "<section id=\"failures\">\n<h2>Failures ({})</h2>",
        r.failures.len()
    );
    if r.failures.is_empty() {
        o.push_str("<p class=\"none\">No run failed.</p>\n");
    }
    if !r.failures.is_empty() {
        o.push_str(
            "<table class=\"failures\">\n<tr><th>scenario</th><th>run</th><th>detail</th></tr>\n",
        );
    }
    for f in &r.failures {
        let col = Column {
            driver: f.driver.clone(),
            backend: f.backend.clone(),
            kernel: f.kernel.clone(),
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"scenario\">{}</td><td class=\"run\">{}</td>\
             <td><pre>{}</pre></td></tr>",
            esc(&f.scenario),
            esc(&col.label()),
            esc(&f.detail)
        );
    }
    if !r.failures.is_empty() {
        o.push_str("</table>\n");
    }
    o.push_str("</section>\n");
}

fn grid(
    o: &mut String,
    r: &Report,
    id: &str,
    title: &str,
    note: &str,
    rows: &[GridRow],
    claims: bool,
) {
    let _ = writeln!(
        o,
        "<section id=\"{id}\">\n<h2>{}</h2>\n<p class=\"note\">{}</p>",
        esc(title),
        esc(note)
    );
    let _ = write!(
        o,
        "<div class=\"scroll\"><table class=\"grid\">\n<thead>\n<tr><th class=\"corner\" \
         rowspan=\"3\">{}</th>",
        if claims {
            "claim"
        } else {
            "scenario (claims it cites)"
        }
    );
    // Driver spans, then backends, then kernels.
    let mut i = 0;
    while i < r.columns.len() {
        let d = &r.columns[i].driver;
        let n = r.columns[i..].iter().take_while(|c| &c.driver == d).count();
        let _ = write!(o, "<th class=\"driver\" colspan=\"{n}\">{}</th>", esc(d));
        i += n;
    }
    o.push_str("</tr>\n<tr>");
    for c in &r.columns {
        let _ = write!(o, "<th class=\"backend\">{}</th>", esc(&c.backend));
    }
    o.push_str("</tr>\n<tr>");
    for c in &r.columns {
        let _ = write!(
            o,
            "<th class=\"kernel\" title=\"{}\">{}</th>",
            esc(c.kernel.as_deref().unwrap_or("kernel not stated")),
            esc(&c.short_kernel())
        );
    }
    o.push_str("</tr>\n</thead>\n<tbody>\n");
    let mut topic = String::new();
    for row in rows {
        if !claims {
            let t = row.name.split('/').next().unwrap_or("").to_string();
            if t != topic {
                let _ = writeln!(
                    o,
                    "<tr class=\"topic\"><th colspan=\"{}\">{}</th></tr>",
                    r.columns.len() + 1,
                    esc(&t)
                );
                topic = t;
            }
        }
        if claims {
            let short = shorten(&row.note, 90);
            let _ = write!(
                o,
                "<tr><th class=\"name\" title=\"{}\"><a href=\"#claim-{1}\">{1}</a> \
                 <span class=\"gist\">{2}</span></th>",
                esc(&row.note),
                esc(&row.name),
                esc(&short)
            );
        } else {
            let name = row
                .name
                .split_once('/')
                .map_or(row.name.as_str(), |(_, n)| n);
            let _ = write!(
                o,
                "<tr><th class=\"name\" title=\"{}\">{} <span class=\"ids\">{}</span></th>",
                esc(&format!("{}\nclaims: {}", row.name, row.note)),
                esc(name),
                esc(&row.note)
            );
        }
        for c in &row.cells {
            o.push_str(&cell(c));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</tbody>\n</table></div>\n</section>\n");
}

fn cell(c: &Cell) -> String {
    let (class, mark) = match c.status {
        Some(RowStatus::Pass) => ("pass", "✓"),
        Some(RowStatus::Fail) => ("fail", "✗"),
        Some(RowStatus::Skip) => ("skip", "–"),
        None => return "<td class=\"empty\"></td>".into(),
    };
    format!(
        "<td class=\"{class}\" title=\"{}\">{mark}</td>",
        esc(c.title.trim_end())
    )
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let cut: String = s.chars().take(n).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(a, _)| a);
    format!("{cut} …")
}

fn skips(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "<section id=\"skips\">\n<h2>Skipped runs, by reason ({})</h2>",
        r.all.skip
    );
    if r.skips.is_empty() {
        o.push_str("<p class=\"none\">No run was skipped.</p>\n");
    } else {
        o.push_str(
            "<table class=\"list\">\n<tr><th>runs</th><th>reason</th><th>for example</th></tr>\n",
        );
        for (reason, who) in &r.skips {
            let _ = writeln!(
                o,
                "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"who\">{}</td></tr>",
                who.len(),
                esc(reason),
                esc(&who.iter().take(3).cloned().collect::<Vec<_>>().join("; "))
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("</section>\n");
}

fn kernel(o: &mut String, r: &Report) {
    o.push_str("<section id=\"kernel\">\n<h2>Kernel-version rules</h2>\n");
    o.push_str(
        "<p class=\"note\">Claims that hold for some kernel versions only. The model takes \
         the kernel version as a parameter and asks it for each of these; a scenario stating \
         such behaviour says so with its <code>kernel</code> key, and a backend running \
         another kernel skips it, saying why.</p>\n",
    );
    o.push_str(
        "<table class=\"list\">\n<tr><th>claim</th><th>kernel</th><th>statement</th>\
         <th>sources</th></tr>\n",
    );
    for c in kernel_rules(r.input.catalogue) {
        let _ = writeln!(
            o,
            "<tr><td><a href=\"#claim-{0}\">{0}</a></td><td class=\"range\">{1}</td>\
             <td>{2}</td><td class=\"src\">{3}</td></tr>",
            esc(&c.id),
            esc(&c.kernel.as_ref().map(|k| k.to_string()).unwrap_or_default()),
            esc(&c.statement),
            c.sources
                .iter()
                .map(|s| esc(s))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    o.push_str("</table>\n</section>\n");
}

fn catalogue(o: &mut String, r: &Report) {
    o.push_str("<section id=\"catalogue\">\n<h2>The claims</h2>\n<dl class=\"claims\">\n");
    let mut citing: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (s, ids) in &r.input.cited_by {
        for id in ids {
            citing.entry(id).or_default().push(s);
        }
    }
    for c in &r.input.catalogue.claims {
        let who = citing.get(c.id.as_str()).cloned().unwrap_or_default();
        let _ = writeln!(
            o,
            "<dt id=\"claim-{0}\">{0}{1}</dt><dd><p>{2}</p><p class=\"src\">{3}</p>\
             <p class=\"who\">{4} scenario(s): {5}</p></dd>",
            esc(&c.id),
            c.kernel.as_ref().map_or(String::new(), |k| {
                format!(
                    " <span class=\"range\">kernel {}</span>",
                    esc(&k.to_string())
                )
            }),
            esc(&c.statement),
            c.sources
                .iter()
                .map(|s| esc(s))
                .collect::<Vec<_>>()
                .join(" · "),
            who.len(),
            esc(&who.join(", "))
        );
    }
    o.push_str("</dl>\n</section>\n");
}

const CSS: &str = r#"
:root { --pass: #1b7f3b; --pass-bg: #dcf2e3; --fail: #b3261e; --fail-bg: #fbdcd9;
  --skip: #6b6b6b; --skip-bg: #ececec; --line: #d8dce3; --ink: #1d2430; --muted: #5d6675; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system,
  "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink); background: #fafbfc; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 0 0 6px; }
small { color: var(--muted); font-weight: normal; }
a { color: #1f5fbf; text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
.sub, .note { color: var(--muted); margin: 4px 0 8px; max-width: 110ch; }
.chips { margin: 12px 0 6px; }
.chip { display: inline-block; padding: 3px 10px; margin-right: 6px; border-radius: 12px;
  font-weight: 600; font-size: 13px; }
.chip.pass { background: var(--pass-bg); color: var(--pass); }
.chip.fail { background: var(--fail-bg); color: var(--fail); }
.chip.fail.zero { background: var(--skip-bg); color: var(--skip); }
.chip.skip { background: var(--skip-bg); color: var(--skip); }
.chip.plain { background: #e6ecf7; color: #234a86; }
.unshown { margin: 6px 0; color: var(--fail); }
.unshown a { margin-right: 6px; font-weight: 600; }
nav { margin-top: 12px; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; background: #fff; }
.totals th, .totals td, .list th, .list td { border: 1px solid var(--line); padding: 5px 10px;
  text-align: left; vertical-align: top; }
.totals th { background: #f1f3f6; }
.n { white-space: nowrap; margin-right: 6px; font-weight: 600; }
.n.pass { color: var(--pass); } .n.fail { color: var(--fail); } .n.skip { color: var(--skip); }
.none { color: var(--pass); font-weight: 600; }
.failures { border-left: 4px solid var(--fail); font-size: 13px; max-width: 100%; }
.failures th, .failures td { border: 1px solid var(--line); padding: 4px 10px; text-align: left;
  vertical-align: top; }
.failures th { background: #f1f3f6; }
.failures td.scenario { font-weight: 600; white-space: nowrap; }
.failures td.run { color: var(--muted); white-space: nowrap; }
.failures pre { margin: 0; white-space: pre-wrap;
  font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
.scroll { overflow-x: auto; max-width: 100%; }
.grid { font-size: 12px; }
.grid th, .grid td { border: 1px solid var(--line); }
.grid thead th { position: sticky; background: #f1f3f6; font-weight: 600; padding: 2px 4px;
  text-align: center; white-space: nowrap; }
.grid thead tr:nth-child(1) th { top: 0; }
.grid thead tr:nth-child(2) th { top: 22px; }
.grid thead tr:nth-child(3) th { top: 42px; }
.grid th.driver { border-bottom: 2px solid #aab3c2; }
.grid th.kernel { color: var(--muted); font-weight: normal; }
.grid th.corner { background: #fafbfc; text-align: left; vertical-align: bottom;
  padding: 2px 8px; color: var(--muted); font-weight: normal; }
.grid th.name { text-align: left; font-weight: normal; padding: 2px 8px; white-space: nowrap;
  max-width: 720px; overflow: hidden; text-overflow: ellipsis; background: #fff; }
.grid th.name a { font-weight: 700; display: inline-block; min-width: 44px; }
.gist, .ids { color: var(--muted); }
.ids { font-size: 11px; margin-left: 4px; }
.grid td { width: 30px; min-width: 30px; height: 20px; text-align: center; font-weight: 700;
  cursor: default; }
.grid td.pass { background: var(--pass-bg); color: var(--pass); }
.grid td.fail { background: var(--fail); color: #fff; }
.grid td.skip { background: var(--skip-bg); color: var(--skip); }
.grid td.empty { background: #fff; }
.grid tr:hover th.name, .grid tr:hover td.empty { background: #f4f7fb; }
.grid tr.topic th { text-align: left; background: #eef1f5; padding: 4px 8px; font-size: 12px;
  letter-spacing: .04em; text-transform: uppercase; color: #3b4555; }
.list { font-size: 13px; max-width: 1300px; }
.list th { background: #f1f3f6; }
.num { text-align: right; font-weight: 600; }
.who { color: var(--muted); font-size: 12px; }
.range { white-space: nowrap; font-weight: 600; color: #6a3fa0; }
.src { color: var(--muted); font-size: 12px; }
dl.claims { max-width: 110ch; }
dl.claims dt { font-weight: 700; margin-top: 14px; }
dl.claims dd { margin: 2px 0 0 0; padding-left: 14px; border-left: 3px solid var(--line); }
dl.claims dd p { margin: 2px 0; }
dl.claims dt:target + dd { border-left-color: #1f5fbf; background: #eef4ff; }
"#;
