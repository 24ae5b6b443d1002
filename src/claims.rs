//! Claims and the scenarios citing them: which ids each scenario cites (located in its
//! file), the check that the catalogue ([`crate::catalogue`]) and the scenarios agree, and
//! each claim's standing in a set of results.

use crate::catalogue::{read_text, Catalogue, Claim, Problem};
use crate::results::{Row, RowStatus};
use crate::scenario::limits::MAX_FILE_BYTES;
use crate::scenario::Scenario;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use toml::Spanned;

/// Whether a claim is id-shaped: capital ASCII letters, then ASCII digits (`S3`, `OVL4`,
/// `LS12`). Anything else is free text (`overlayfs.rst: Redirect dir`, `ENAMETOOLONG`).
pub fn is_id(c: &str) -> bool {
    let digits = c.trim_start_matches(|ch: char| ch.is_ascii_uppercase());
    digits.len() < c.len() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Orders ids as people read them: by prefix, then number.
pub fn sort_key(id: &str) -> (String, u32) {
    let digits = id.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    (
        id[..id.len() - digits.len()].to_string(),
        digits.parse().unwrap_or(0),
    )
}

/// An id-shaped claim cited by a scenario file, with where it stands in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Citation {
    /// The id.
    pub id: String,
    /// Line (1-based).
    pub line: usize,
    /// Column (1-based) of the string's opening quote.
    pub column: usize,
}

#[derive(Deserialize)]
struct ClaimsOnly {
    #[serde(default)]
    claims: Vec<Spanned<String>>,
}

/// The id-shaped claims of `scenario`, located in its file. The file has been parsed
/// already; should it have changed since, the ids of the parsed scenario are returned at
/// line 1.
pub fn citations(scenario: &Scenario) -> Vec<Citation> {
    let located = read_text(&scenario.file, MAX_FILE_BYTES)
        .ok()
        .and_then(|text| {
            let doc: ClaimsOnly = toml::from_str(&text).ok()?;
            Some(
                doc.claims
                    .iter()
                    .filter(|c| is_id(c.get_ref().trim()))
                    .map(|c| {
                        let (line, column) = crate::catalogue::line_col(&text, c.span().start);
                        Citation {
                            id: c.get_ref().trim().to_string(),
                            line,
                            column,
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        });
    let parsed: Vec<&str> = scenario
        .claims
        .iter()
        .map(|c| c.trim())
        .filter(|c| is_id(c))
        .collect();
    match located {
        Some(l) if l.iter().map(|c| c.id.as_str()).eq(parsed.iter().copied()) => l,
        _ => parsed
            .into_iter()
            .map(|id| Citation {
                id: id.to_string(),
                line: 1,
                column: 1,
            })
            .collect(),
    }
}

/// Claim id -> the names of the scenarios citing it: every catalogue id (cited or not),
/// and every id a scenario cites that the catalogue lacks.
pub fn citing(catalogue: &Catalogue, scenarios: &[Scenario]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = catalogue
        .claims
        .iter()
        .map(|c| (c.id.clone(), Vec::new()))
        .collect();
    for s in scenarios {
        let mut seen = BTreeSet::new();
        for c in s.claims.iter().map(|c| c.trim()).filter(|c| is_id(c)) {
            if seen.insert(c) {
                map.entry(c.to_string()).or_default().push(s.name());
            }
        }
    }
    map
}

/// Scenario name -> the ids it cites.
pub fn cited_by(scenarios: &[Scenario]) -> BTreeMap<String, Vec<String>> {
    scenarios
        .iter()
        .map(|s| {
            let mut ids: Vec<String> = Vec::new();
            for c in s.claims.iter().map(|c| c.trim()).filter(|c| is_id(c)) {
                if !ids.iter().any(|i| i == c) {
                    ids.push(c.to_string());
                }
            }
            (s.name(), ids)
        })
        .collect()
}

/// Checks that `scenarios` and `catalogue` agree: every id a scenario cites has an entry
/// (else a problem at the citation, file:line:col). With `complete` (the scenarios are the
/// whole suite) also: every entry is cited by some scenario, and every scenario an entry
/// names as `measured here: <scenario>` exists (else a problem at the entry).
pub fn check(catalogue: &Catalogue, scenarios: &[Scenario], complete: bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    for s in scenarios {
        for c in citations(s) {
            if catalogue.get(&c.id).is_none() {
                problems.push(Problem {
                    file: s.file.clone(),
                    line: c.line,
                    column: c.column,
                    message: format!(
                        "claim `{}` has no entry in the claims catalogue ({}): add one, or \
                         cite it as free text",
                        c.id,
                        catalogue.file.display()
                    ),
                });
            }
        }
    }
    if complete {
        let names: BTreeSet<String> = scenarios.iter().map(|s| s.name()).collect();
        let cited = citing(catalogue, scenarios);
        for claim in &catalogue.claims {
            if cited.get(&claim.id).is_none_or(|w| w.is_empty()) {
                problems.push(catalogue.problem_at(
                    claim,
                    format!(
                        "claim `{}` is cited by no scenario: cite it in the `claims` of the \
                         scenarios that show it, or remove the entry",
                        claim.id
                    ),
                ));
            }
            for m in claim.measured_by() {
                if !names.contains(m) {
                    problems.push(catalogue.problem_at(
                        claim,
                        format!(
                            "claim `{}`: `measured here: {m}` names no scenario",
                            claim.id
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// How the scenarios citing a claim did on one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Runs that passed.
    pub pass: usize,
    /// Runs that failed, as `scenario [driver]`.
    pub fail: Vec<String>,
    /// Runs skipped.
    pub skip: usize,
}

/// A claim's standing in a set of results: per backend label (`model`, `kernel`, or
/// `vm 6.1.0-...` when a backend ran on several kernels), the tally of its scenarios' runs.
pub fn standing(
    claim: &str,
    citing: &BTreeMap<String, Vec<String>>,
    rows: &[Row],
) -> BTreeMap<String, Tally> {
    let who: BTreeSet<&str> = citing
        .get(claim)
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut kernels: BTreeMap<&str, BTreeSet<Option<&str>>> = BTreeMap::new();
    for r in rows {
        kernels
            .entry(&r.backend)
            .or_default()
            .insert(r.kernel.as_deref());
    }
    let mut out: BTreeMap<String, Tally> = BTreeMap::new();
    for r in rows.iter().filter(|r| who.contains(r.scenario.as_str())) {
        let label = match (&r.kernel, kernels[r.backend.as_str()].len() > 1) {
            (Some(k), true) => format!("{} {k}", r.backend),
            _ => r.backend.clone(),
        };
        let t = out.entry(label).or_default();
        match r.status {
            RowStatus::Pass => t.pass += 1,
            RowStatus::Fail => t.fail.push(format!("{} [{}]", r.scenario, r.driver)),
            RowStatus::Skip => t.skip += 1,
        }
    }
    out
}

/// The ids of `citing` in catalogue order, then those the catalogue lacks, by id.
pub fn ordered<'a>(
    catalogue: &'a Catalogue,
    citing: &'a BTreeMap<String, Vec<String>>,
) -> Vec<&'a String> {
    let mut ids: Vec<&String> = catalogue.claims.iter().map(|c| &c.id).collect();
    let mut rest: Vec<&String> = citing
        .keys()
        .filter(|id| catalogue.get(id).is_none())
        .collect();
    rest.sort_by_key(|id| sort_key(id));
    ids.extend(rest);
    ids
}

/// Whether some run of a scenario citing the claim passed.
pub fn shown(standing: &BTreeMap<String, Tally>) -> bool {
    standing.values().any(|t| t.pass > 0)
}

/// `layerspec claims`: each claim with its statement, sources, kernel range, citing
/// scenarios and (with `rows`) their standing per backend. With results, claims that no
/// passing run shows come first, then those with a failing run, then the rest.
pub fn listing(catalogue: &Catalogue, scenarios: &[Scenario], rows: Option<&[Row]>) -> String {
    let citing = citing(catalogue, scenarios);
    let ids = ordered(catalogue, &citing);
    let mut out = String::new();
    let Some(rows) = rows else {
        for id in ids {
            entry(&mut out, id, catalogue.get(id), &citing[id], None);
        }
        return out;
    };
    let standings: BTreeMap<&String, BTreeMap<String, Tally>> = ids
        .iter()
        .map(|id| (*id, standing(id, &citing, rows)))
        .collect();
    let group = |id: &String| {
        let st = &standings[id];
        if !shown(st) {
            0
        } else if st.values().any(|t| !t.fail.is_empty()) {
            1
        } else {
            2
        }
    };
    let titles = [
        "Claims no passing run shows",
        "Claims shown, with failing runs",
        "Claims shown by passing runs",
    ];
    for (g, title) in titles.iter().enumerate() {
        let members: Vec<&&String> = ids.iter().filter(|id| group(id) == g).collect();
        if members.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## {title} ({})\n", members.len());
        for id in members {
            entry(
                &mut out,
                id,
                catalogue.get(id),
                &citing[*id],
                Some(&standings[*id]),
            );
        }
    }
    out
}

fn entry(
    out: &mut String,
    id: &str,
    claim: Option<&Claim>,
    who: &[String],
    standing: Option<&BTreeMap<String, Tally>>,
) {
    const INDENT: &str = "             ";
    let statement = claim.map_or("(not in the claims catalogue)", |c| c.statement.as_str());
    let _ = writeln!(out, "{id}");
    wrap_into(out, "  statement: ", statement);
    if let Some(c) = claim {
        for (i, s) in c.sources.iter().enumerate() {
            let head = if i == 0 { "  sources:   " } else { INDENT };
            let _ = writeln!(out, "{head}{s}");
        }
        if let Some(k) = &c.kernel {
            let _ = writeln!(out, "  kernel:    {k}");
        }
    }
    wrap_into(
        out,
        "  scenarios: ",
        &format!("{}: {}", who.len(), who.join(", ")),
    );
    if let Some(st) = standing {
        let line = if st.is_empty() {
            "no runs of these scenarios in the results".to_string()
        } else {
            st.iter()
                .map(|(b, t)| {
                    let mut parts = Vec::new();
                    for (n, what) in [(t.pass, "pass"), (t.fail.len(), "fail"), (t.skip, "skip")] {
                        if n > 0 {
                            parts.push(format!("{n} {what}"));
                        }
                    }
                    format!("{b}: {}", parts.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        wrap_into(out, "  results:   ", &line);
        for (b, t) in st {
            for f in &t.fail {
                let _ = writeln!(out, "{INDENT}FAIL {f} on {b}");
            }
        }
    }
    out.push('\n');
}

/// Writes `text` after `head`, wrapped at 96 columns, continuation lines indented to
/// `head`'s width.
fn wrap_into(out: &mut String, head: &str, text: &str) {
    let indent = " ".repeat(head.chars().count());
    let mut line = head.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > 96 {
            let _ = writeln!(out, "{line}");
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_capitals_then_digits() {
        for id in ["S3", "OVL12", "LS1", "THIN10"] {
            assert!(is_id(id), "{id}");
        }
        for free in [
            "ENAMETOOLONG",
            "OVL4: the EXDEV limit",
            "ovl4",
            "4",
            "S",
            "S1a",
            "",
        ] {
            assert!(!is_id(free), "{free}");
        }
    }

    #[test]
    fn ids_sort_by_prefix_then_number() {
        let mut v = vec!["S10", "OVL2", "S2", "OVL10"];
        v.sort_by_key(|i| sort_key(i));
        assert_eq!(v, ["OVL2", "OVL10", "S2", "S10"]);
    }
}
