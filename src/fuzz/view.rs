//! A rough merged view of a container, kept by the generator without asking any driver.

use layerspec_model::{FileOp, Kind};
use std::collections::{BTreeMap, BTreeSet};

/// A rough merged view: live paths with their kinds, and paths removed since (for
/// re-creation). Updated as if every plausible step succeeded.
#[derive(Clone, Debug)]
pub(super) struct View {
    pub(super) live: BTreeMap<String, Kind>,
    pub(super) gone: BTreeSet<String>,
}

impl View {
    pub(super) fn empty() -> View {
        View {
            live: BTreeMap::from([("/".to_string(), Kind::Dir)]),
            gone: BTreeSet::new(),
        }
    }

    pub(super) fn kind(&self, p: &str) -> Option<Kind> {
        self.live.get(p).copied()
    }

    pub(super) fn remove_tree(&mut self, p: &str) {
        let below = format!("{p}/");
        self.live.retain(|k, _| k != p && !k.starts_with(&below));
        self.gone.insert(p.to_string());
    }

    pub(super) fn has_children(&self, p: &str) -> bool {
        if p == "/" {
            return self.live.len() > 1;
        }
        let below = format!("{p}/");
        self.live
            .range(below.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&below))
    }

    /// Adds `p` of `kind`, its ancestors becoming directories.
    pub(super) fn put(&mut self, p: &str, kind: Kind) {
        let mut cur = String::new();
        for c in comps(p) {
            cur.push('/');
            cur.push_str(c);
            if cur.len() < p.len() && self.kind(&cur) != Some(Kind::Dir) {
                self.live.insert(cur.clone(), Kind::Dir);
            }
        }
        if kind != Kind::Dir {
            self.remove_tree(p);
        }
        self.gone.remove(p);
        self.live.insert(p.to_string(), kind);
    }

    pub(super) fn rename(&mut self, from: &str, to: &str) {
        let below = format!("{from}/");
        let moved: Vec<(String, Kind)> = self
            .live
            .iter()
            .filter(|(k, _)| *k == from || k.starts_with(&below))
            .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), *v))
            .collect();
        self.remove_tree(from);
        self.remove_tree(to);
        for (k, v) in moved {
            self.live.insert(k, v);
        }
        self.gone.remove(to);
    }

    pub(super) fn apply(&mut self, op: &FileOp) {
        let parent_dir = |v: &View, p: &str| v.kind(parent(p)) == Some(Kind::Dir);
        match op {
            FileOp::Create { path, .. } | FileOp::Mkdir { path, .. }
                if parent_dir(self, path) && self.kind(path).is_none() =>
            {
                let k = if matches!(op, FileOp::Mkdir { .. }) {
                    Kind::Dir
                } else {
                    Kind::File
                };
                self.put(path, k);
            }
            FileOp::Symlink { path, .. } if parent_dir(self, path) && self.kind(path).is_none() => {
                self.put(path, Kind::Symlink)
            }
            FileOp::Link { from, to } if parent_dir(self, to) && self.kind(to).is_none() => {
                if let Some(k) = self.kind(from).filter(|k| *k != Kind::Dir) {
                    self.put(to, k);
                }
            }
            FileOp::Unlink { path } if self.kind(path).is_some_and(|k| k != Kind::Dir) => {
                self.remove_tree(path)
            }
            FileOp::Rmdir { path }
                if path != "/"
                    && self.kind(path) == Some(Kind::Dir)
                    && !self.has_children(path) =>
            {
                self.remove_tree(path)
            }
            FileOp::Rename { from, to }
                if from != "/"
                    && self.kind(from).is_some()
                    && parent_dir(self, to)
                    && !to.starts_with(&format!("{from}/")) =>
            {
                self.rename(from, to)
            }
            _ => {}
        }
    }

    pub(super) fn paths(&self, want: impl Fn(&str, Kind) -> bool) -> Vec<String> {
        self.live
            .iter()
            .filter(|(p, k)| want(p, **k))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

pub(super) fn comps(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty())
}

pub(super) fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

pub(super) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}
