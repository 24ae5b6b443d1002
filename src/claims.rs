//! Claim coverage: which scenarios cite each seed claim (S1..S26) and REFERENCE.md fact.

use crate::scenario::Scenario;
use std::collections::BTreeMap;

/// The seed's claims, S1..S26.
pub fn seed_claims() -> Vec<String> {
    (1..=26).map(|i| format!("S{i}")).collect()
}

/// Whether a claim string is an id (`S3`, `OVL4`, `THIN5`, `USER1`, `AUFS2`, `DOCK1`).
pub fn is_id(c: &str) -> bool {
    let letters = c.trim_end_matches(|ch: char| ch.is_ascii_digit());
    !letters.is_empty()
        && letters.len() < c.len()
        && ["S", "OVL", "AUFS", "DOCK", "THIN", "USER"].contains(&letters)
}

/// Claim id -> citing scenarios; every seed claim is present, cited or not.
pub fn coverage(scenarios: &[Scenario]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> =
        seed_claims().into_iter().map(|c| (c, Vec::new())).collect();
    for s in scenarios {
        for c in &s.claims {
            let c = c.trim();
            if is_id(c) {
                map.entry(c.to_string()).or_default().push(s.name());
            }
        }
    }
    map
}

/// Orders ids as people read them: by prefix, then number.
pub fn sort_key(id: &str) -> (String, u32) {
    let digits = id.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    (
        id[..id.len() - digits.len()].to_string(),
        digits.parse().unwrap_or(0),
    )
}
