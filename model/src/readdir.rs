//! Merged directory listings (OVL9): names from every layer, whiteouts hidden.

use crate::container::{Container, Dentry};
use crate::step::Kind;
use std::collections::BTreeMap;

impl Container {
    /// The merged entries of directory `d`, by name.
    pub fn list(&self, d: Dentry) -> BTreeMap<String, Dentry> {
        let mut out = BTreeMap::new();
        if let Some(children) = d.upper.and_then(|u| self.upper.get(u).children()) {
            for name in children.keys() {
                if let Some(c) = self.child(d, name) {
                    out.insert(name.clone(), c);
                }
            }
        }
        if let Some(children) = d.lower.and_then(|l| self.lower.node(l).children.as_ref()) {
            for name in children.keys() {
                if out.contains_key(name) {
                    continue;
                }
                if let Some(c) = self.child(d, name) {
                    out.insert(name.clone(), c);
                }
            }
        }
        out
    }

    /// Whether the merged directory `d` is empty; whiteouts do not count (OVL10).
    pub fn is_empty_dir(&self, d: Dentry) -> bool {
        if let Some(children) = d.upper.and_then(|u| self.upper.get(u).children()) {
            if children.keys().any(|n| self.child(d, n).is_some()) {
                return false;
            }
        }
        match d.lower.and_then(|l| self.lower.node(l).children.as_ref()) {
            Some(children) => children.keys().all(|n| self.child(d, n).is_none()),
            None => true,
        }
    }

    /// `st_nlink` of a merged directory: 2 plus its subdirectories, or 1 for a directory
    /// overlayfs merges from several layers (it does not count them).
    pub fn dir_nlink(&self, d: Dentry) -> u32 {
        let merged = match (d.upper, d.lower) {
            (Some(_), Some(_)) => true,
            (None, Some(l)) => self.lower.node(l).merged,
            _ => false,
        };
        if merged && self.policy.merged_dir_nlink_one {
            return 1;
        }
        2 + self
            .list(d)
            .values()
            .filter(|c| self.kind(**c) == Kind::Dir)
            .count() as u32
    }
}
