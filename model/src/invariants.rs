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
    // devicemapper: every layer and container has its thin device, every container's is
    // mounted, the pool holds exactly the device set's devices and its transaction id is
    // the device set's. (The pool's own invariants, `THIN_INVARIANTS`, are checked by the
    // thin-pool property tests and by the devicemapper unit tests.)
    "devicemapper_pool_matches_device_set",
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
    if let Some(ds) = store.devmapper() {
        devicemapper(store, ds, &mut out);
    }
    out
}

fn devicemapper(store: &Store, ds: &crate::devmapper::DeviceSet, out: &mut Vec<Violation>) {
    let mut bad = |detail: String| {
        out.push(Violation {
            invariant: "devicemapper_pool_matches_device_set",
            detail,
        })
    };
    use crate::devmapper::device_hash;
    for l in store.layers() {
        match ds.devices.get(&device_hash(&l.id)) {
            None => bad(format!("layer {} has no device", l.id)),
            Some(d) if d.mounted => bad(format!("layer {} is still mounted", l.id)),
            _ => {}
        }
    }
    for c in store.containers() {
        if !ds
            .devices
            .get(&device_hash(&c.id))
            .is_some_and(|d| d.mounted)
        {
            bad(format!("container {} has no mounted device", c.id));
        }
    }
    let wanted = store.layers().count() + store.containers().count() + 1;
    if ds.devices.len() != wanted {
        bad(format!(
            "{} devices for {wanted} layers, containers and base",
            ds.devices.len()
        ));
    }
    let pool = ds.pool();
    let ids: Vec<u32> = pool.device_ids().iter().map(|i| i.get()).collect();
    let mut set: Vec<u32> = ds.devices.values().map(|d| d.device_id).collect();
    set.sort_unstable();
    if ids != set {
        bad(format!("pool devices {ids:?}, device set {set:?}"));
    }
    if pool.status().transaction_id != ds.transaction_id() {
        bad(format!(
            "pool transaction {}, device set {}",
            pool.status().transaction_id,
            ds.transaction_id()
        ));
    }
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
