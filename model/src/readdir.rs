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

    /// Whiteouts readdir shows anyway: overlayfs reads a directory that only one lower
    /// layer holds straight from that layer, whiteouts included (lookup of such a name
    /// still gives ENOENT). Seen here with a whiteout in the lowest layer.
    pub fn listed_whiteouts(&self, d: Dentry) -> Vec<String> {
        let (None, Some(l)) = (d.upper, d.lower) else {
            return Vec::new();
        };
        if !self.policy.driver.is_overlayfs() || self.policy.farm_links || self.lower.node(l).merged
        {
            return Vec::new();
        }
        let n = self.lower.node(l);
        let tree = &self.lower.layers()[n.layer].tree;
        tree.get(n.ino)
            .children()
            .map(|c| {
                c.iter()
                    .filter(|(_, &i)| tree.get(i).is_whiteout())
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `st_nlink` of a merged directory: 2 plus its subdirectories, or 1 for a directory
    /// overlayfs merges from several layers (it does not count them).
    pub fn dir_nlink(&self, d: Dentry) -> u32 {
        let merged = match (d.upper, d.lower) {
            (Some(_), Some(_)) => true,
            // overlay has one lower directory: nothing lower-only is merged there.
            (None, Some(l)) => self.lower.node(l).merged && !self.policy.farm_links,
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
