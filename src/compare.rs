//! Comparing a real driver's observation with the model's.
//!
//! Every normalisation the comparison makes is listed here, in one place (the real side's
//! decoding of what it reads — whiteout devices, file handles, the kernel's temporary names
//! — is listed in `layerspec_real`'s observe module):
//! - merged view, hard links: overlayfs reports a different `st_ino` for the two names of a
//!   lower file linked after copy-up while index is off (OVL7), so a group of names the model
//!   knows to be one inode may show as several; the real groups must refine the model's.
//! - step outcomes: a directory's `st_size` is the backing filesystem's business: 0 on both
//!   sides (`normalise_outcome`).
//! - `trusted.overlay.impure` on upper directories: overlayfs sets it when an entry with an
//!   origin lands in a directory and clears it when a readdir finds no such entry left, so
//!   whether it is there depends on when the directory was last read — observing changes
//!   it. Present and absent are both allowed: it is not compared.
//! - backend `fuse`: fuse-overlayfs is compared on what a container sees — step outcomes
//!   and merged views — not on its driver root: it keeps its own bookkeeping there
//!   (`user.fuseoverlayfs.*` xattrs, its own work directory, opaque marks on new
//!   directories), none of which the kernel's layout (the model's) has. A directory's
//!   `st_nlink` from `stat` is not compared on fuse either: it counts subdirectories where
//!   the kernel reports 1 for merged directories.
//! - backend `docker`: nothing host-dependent reaches the observation, so nothing is
//!   normalised for it. The merged root Docker mounts holds the init layer's empty
//!   `etc/hosts`, `etc/hostname` and `etc/resolv.conf` (moby daemon/initlayer `Setup`); the
//!   files with the host's and the container's names are written under the data root's
//!   `containers/<id>/` and bind-mounted only inside the container's own namespace, which
//!   the observation (`<data root>/<driver>`, the merged root from the daemon's namespace)
//!   does not see. Docker's random layer ids and `l/` names are mapped to the model's by
//!   the real side (`layerspec_real`'s docker observe module), not here.
//! - devicemapper (an observation whose storage has `devicemapper`): the model's ext4 is a
//!   stand-in (`layerspec_model::devmapper`, its `fs` module): where ext4's allocator puts
//!   blocks, and so how many data blocks the pool uses and what each device maps and
//!   shares, is ext4's business. Those figures — the pool's `used_data_blocks` and every
//!   device's status line, mapped and shared blocks — are not compared here: a scenario
//!   states them as ranges measured on the real thing (`pool_data_blocks = { min, max,
//!   since }`), which the runner checks on each backend. Compared exactly is what the
//!   model decides by rule: the pool's other status fields (transaction id, totals, held
//!   root, mode, discard and no-space handling, needs_check, metadata low watermark,
//!   events), which thin device ids exist, the dm tables, the driver root's tree with
//!   Docker's JSON, and the merged views.

use layerspec_model::{Observation, PoolObservation};
use std::collections::BTreeSet;

/// Differences between the model's observation and a real one (kernel overlayfs), one
/// readable line each; empty when they agree.
pub fn diff_observations(model: &Observation, real: &Observation) -> Vec<String> {
    diff_observations_on("kernel", model, real)
}

/// Like [`diff_observations`], for a real observation made on `backend`.
pub fn diff_observations_on(backend: &str, model: &Observation, real: &Observation) -> Vec<String> {
    let mut out = Vec::new();
    let (model, real) = (normalise(backend, model), normalise(backend, real));
    let containers: BTreeSet<&String> = model.merged.keys().chain(real.merged.keys()).collect();
    for c in containers {
        match (model.merged.get(c), real.merged.get(c)) {
            (Some(m), Some(r)) => {
                diff_maps(&format!("merged {c}"), &m.entries, &r.entries, &mut out);
                if !refines(&r.hard_links, &m.hard_links) {
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
    if let (Some(m), Some(r)) = (&model.accounting.pool, &real.accounting.pool) {
        out.extend(diff_pools(m, r));
        let (mut ma, mut ra) = (model.accounting.clone(), real.accounting.clone());
        (ma.pool, ra.pool) = (None, None);
        if ma != ra {
            out.push(format!(
                "accounting: model {}, real {}",
                serde_json::to_string(&ma).unwrap_or_default(),
                serde_json::to_string(&ra).unwrap_or_default()
            ));
        }
    } else if model.accounting != real.accounting {
        out.push(format!(
            "accounting: model {}, real {}",
            serde_json::to_string(&model.accounting).unwrap_or_default(),
            serde_json::to_string(&real.accounting).unwrap_or_default()
        ));
    }
    out
}

/// Differences between two thin pools' observations, field by field and device by device
/// (the used metadata blocks are not in an observation: see `PoolObservation`).
pub fn diff_pools(model: &PoolObservation, real: &PoolObservation) -> Vec<String> {
    let mut out = Vec::new();
    let json = |v: &PoolObservation| {
        let mut v = serde_json::to_value(v).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("devices");
        }
        v
    };
    let (m, r) = (json(model), json(real));
    if let (Some(m), Some(r)) = (m.as_object(), r.as_object()) {
        for (k, mv) in m {
            if r.get(k) != Some(mv) {
                out.push(format!(
                    "pool {k}: model {mv}, real {}",
                    r.get(k).cloned().unwrap_or_default()
                ));
            }
        }
    }
    let ids: BTreeSet<_> = model.devices.keys().chain(real.devices.keys()).collect();
    for id in ids {
        match (model.devices.get(id), real.devices.get(id)) {
            (Some(m), Some(r)) if m != r => out.push(format!(
                "thin device {id}: model {}, real {}",
                serde_json::to_string(m).unwrap_or_default(),
                serde_json::to_string(r).unwrap_or_default()
            )),
            (Some(_), None) => out.push(format!("thin device {id}: only the model has it")),
            (None, Some(_)) => out.push(format!("thin device {id}: only the real pool has it")),
            _ => {}
        }
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

/// Whether every group of `real` lies within one group of `model` (OVL7).
fn refines(real: &[Vec<String>], model: &[Vec<String>]) -> bool {
    real.iter()
        .all(|g| model.iter().any(|m| g.iter().all(|p| m.contains(p))))
}

/// The one place where observations are made comparable.
fn normalise(backend: &str, o: &Observation) -> Observation {
    let mut o = o.clone();
    for e in o.storage.values_mut() {
        e.xattrs.remove("trusted.overlay.impure");
    }
    if backend == "fuse" {
        o.storage.clear();
        o.accounting.inodes_used = 0;
    }
    if o.storage.contains_key("devicemapper") {
        if let Some(p) = &mut o.accounting.pool {
            p.used_data_blocks = 0;
            for d in p.devices.values_mut() {
                *d = layerspec_model::DeviceObservation {
                    status: String::new(),
                    mapped_blocks: 0,
                    shared_blocks: 0,
                    mappings: Vec::new(),
                };
            }
        }
    }
    o
}

/// A step's outcome made comparable: a directory's size is not specified.
pub fn normalise_outcome(o: &layerspec_model::Outcome) -> layerspec_model::Outcome {
    normalise_outcome_on("kernel", o)
}

/// A step's outcome made comparable for `backend` (see the module docs).
pub fn normalise_outcome_on(
    backend: &str,
    o: &layerspec_model::Outcome,
) -> layerspec_model::Outcome {
    match o {
        Ok(layerspec_model::Value::Stat(s)) if s.kind == layerspec_model::Kind::Dir => {
            let mut s = s.clone();
            s.size = 0;
            if backend == "fuse" {
                s.nlink = 0;
            }
            Ok(layerspec_model::Value::Stat(s))
        }
        other => other.clone(),
    }
}
