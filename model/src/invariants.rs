//! Named invariants of the spec's state, checked after every step by the property tests.

use crate::store::Store;
use crate::tree::{Tree, ROOT};
use std::collections::BTreeMap;

/// An invariant that does not hold, with what broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// Where and how.
    pub detail: String,
}

/// Every invariant, by name.
pub const INVARIANTS: &[&str] = &[
    "nlink_counts_names",
    "whiteouts_only_over_lower_names",
    "no_whiteout_in_flat_driver",
    "merged_view_has_no_whiteouts",
];

/// Checks every invariant on `store`.
pub fn check(store: &Store) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in store.containers() {
        nlink_counts_names(&c.upper, &c.id, &mut out);
        for (path, ino) in c.upper.paths() {
            if !c.upper.get(ino).is_whiteout() {
                continue;
            }
            if c.policy.flat {
                out.push(Violation {
                    invariant: "no_whiteout_in_flat_driver",
                    detail: format!("{}: whiteout at {path}", c.id),
                });
            } else if !hides_something(c, &path) {
                out.push(Violation {
                    invariant: "whiteouts_only_over_lower_names",
                    detail: format!("{}: whiteout at {path} hides nothing", c.id),
                });
            }
        }
        for (path, e) in c.merged_view().entries {
            if e.kind == crate::step::Kind::Char {
                out.push(Violation {
                    invariant: "merged_view_has_no_whiteouts",
                    detail: format!("{}: {path} shows a whiteout", c.id),
                });
            }
        }
    }
    out
}

/// Whether the whiteout at `path` hides a name of the lower stack: its parent, looked up
/// through the union (redirects and opaque markers applied), has that name below.
fn hides_something(c: &crate::container::Container, path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    c.resolve(crate::path::parent(path), false)
        .ok()
        .and_then(|r| r.target)
        .is_some_and(|d| c.lower_has(d, name))
}

fn nlink_counts_names(t: &Tree, who: &str, out: &mut Vec<Violation>) {
    let mut names: BTreeMap<u64, u32> = BTreeMap::new();
    for (_, ino) in t.paths() {
        *names.entry(ino).or_default() += 1;
    }
    for (ino, inode) in t.inodes() {
        if ino == ROOT {
            continue;
        }
        let n = names.get(&ino).copied().unwrap_or(0);
        if n != inode.nlink {
            out.push(Violation {
                invariant: "nlink_counts_names",
                detail: format!("{who}: inode {ino} has nlink {} but {n} names", inode.nlink),
            });
        }
    }
}
