//! Comparing a real driver's observation with the model's.
//!
//! Every normalisation the comparison makes is listed here, in one place:
//! - nothing yet beyond exact equality of the observation types; the real backends add
//!   theirs as they land (see `normalise`).

use layerspec_model::Observation;
use std::collections::BTreeSet;

/// Differences between the model's observation and a real one, one readable line each;
/// empty when they agree.
pub fn diff_observations(model: &Observation, real: &Observation) -> Vec<String> {
    let mut out = Vec::new();
    let (model, real) = (normalise(model), normalise(real));
    let containers: BTreeSet<&String> = model.merged.keys().chain(real.merged.keys()).collect();
    for c in containers {
        match (model.merged.get(c), real.merged.get(c)) {
            (Some(m), Some(r)) => {
                diff_maps(&format!("merged {c}"), &m.entries, &r.entries, &mut out);
                if m.hard_links != r.hard_links {
                    out.push(format!(
                        "merged {c}: hard links: model {:?}, real {:?}",
                        m.hard_links, r.hard_links
                    ));
                }
            }
            (m, _) => out.push(format!(
                "container {c}: only the {} has it",
                if m.is_some() { "model" } else { "real driver" }
            )),
        }
    }
    diff_maps("storage", &model.storage, &real.storage, &mut out);
    if model.accounting != real.accounting {
        out.push(format!(
            "accounting: model {}, real {}",
            serde_json::to_string(&model.accounting).unwrap_or_default(),
            serde_json::to_string(&real.accounting).unwrap_or_default()
        ));
    }
    out
}

fn diff_maps<V: PartialEq + serde::Serialize>(
    what: &str,
    model: &std::collections::BTreeMap<String, V>,
    real: &std::collections::BTreeMap<String, V>,
    out: &mut Vec<String>,
) {
    let keys: BTreeSet<&String> = model.keys().chain(real.keys()).collect();
    for k in keys {
        let show = |v: &V| serde_json::to_string(v).unwrap_or_default();
        match (model.get(k), real.get(k)) {
            (Some(m), Some(r)) if m == r => {}
            (Some(m), Some(r)) => {
                out.push(format!("{what} {k}: model {}, real {}", show(m), show(r)))
            }
            (Some(m), None) => out.push(format!("{what} {k}: only in the model: {}", show(m))),
            (None, Some(r)) => {
                out.push(format!("{what} {k}: only in the real driver: {}", show(r)))
            }
            (None, None) => {}
        }
    }
}

/// The one place where observations are made comparable.
fn normalise(o: &Observation) -> Observation {
    o.clone()
}
