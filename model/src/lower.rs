//! The lower stack of a container: its image layers, and the merged index of them.
//!
//! Image layers never change once built, so the union of a stack is computed once, when the
//! stack is made, into a tree of merged dentries (the model's dentry cache). A lookup in the
//! lower stack is then one map probe per path component, however many layers the image
//! has, instead of one probe per layer.

use crate::tree::{Body, Ino, Inode, Tree, ROOT};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An image layer as the model holds it: its changes as a tree, whiteouts and opaque
/// directories kept abstract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The layer id.
    pub id: String,
    /// The parent layer's id.
    pub parent: Option<String>,
    /// The layer's contents (its diff).
    pub tree: Tree,
}

/// A merged dentry of the lower stack.
#[derive(Clone, Debug)]
pub struct LowerNode {
    /// The topmost layer (index in the stack, 0 = lowest) that holds this name.
    pub layer: usize,
    /// The inode in that layer.
    pub ino: Ino,
    /// For a directory: merged children by name.
    pub children: Option<BTreeMap<String, NodeId>>,
    /// A directory that more than one layer contributes to.
    pub merged: bool,
    /// The inode shown instead of the layer's, when layers were combined into it (index in
    /// the stack's own inodes).
    synthetic: Option<u32>,
}

/// Index of a [`LowerNode`] in its stack.
pub type NodeId = u32;

/// A container's image layers, lowest first, with their merged index.
#[derive(Clone, Debug)]
pub struct LowerStack {
    layers: Vec<Arc<Layer>>,
    nodes: Vec<LowerNode>,
    synthetic: Vec<Inode>,
    dir_xattrs: DirXattrs,
}

/// Whose xattrs a directory that several layers list has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirXattrs {
    /// The topmost layer's that lists it (a union mount).
    Top,
    /// The root accumulates every layer's, the others have the top layer's own
    /// ([`LowerStack::flattened`]).
    RootAccumulates,
    /// Every directory accumulates those of each layer that lists it, for as long as it
    /// stays a directory ([`LowerStack::applied`]).
    Accumulate,
}

impl LowerStack {
    /// The root of the index.
    pub const ROOT: NodeId = 0;

    /// Builds the stack and its index from layers given lowest first.
    pub fn new(layers: Vec<Arc<Layer>>) -> LowerStack {
        Self::build(layers, DirXattrs::Top)
    }

    /// The stack as Docker's applier leaves it when it unpacks each layer's tar onto a
    /// snapshot of its parent (devicemapper): a directory already there stays, takes the
    /// header's mode and has the header's xattrs set, none removed (moby 20.10.24
    /// `pkg/archive/archive.go` `createTarFile`: an existing directory is kept, `Lsetxattr`
    /// for each of `hdr.Xattrs`), so it accumulates the xattrs of every layer listing it; an
    /// opaque marker removes its entries, not it (`UnpackLayer`). Found by `fuzz --driver
    /// devicemapper --backend vm --seed 1`, trace 39.
    pub fn applied(layers: Vec<Arc<Layer>>) -> LowerStack {
        Self::build(layers, DirXattrs::Accumulate)
    }

    /// The stack as Docker's overlay driver flattens it into one layer root. Each layer's
    /// root starts as a copy of its parent's (moby overlay `ApplyDiff`:
    /// `copy.DirCopy(parentRootDir, tmpRootDir, copy.Hardlink, true)`), which makes every
    /// directory anew with only the `security.capability` and `trusted.overlay.opaque`
    /// xattrs (`doCopyXattrs`), so a directory below the root has the `user.*` xattrs of the
    /// top layer's own diff, and none when only a layer below lists it (seen on dockerd
    /// 20.10.24: `fuzz --driver overlay --backend docker --seed 1`, 13 of 200 traces). The
    /// root keeps the xattrs of every layer (the applier sets a directory's xattrs on the
    /// copy, it never clears them).
    pub fn flattened(layers: Vec<Arc<Layer>>) -> LowerStack {
        Self::build(layers, DirXattrs::RootAccumulates)
    }

    fn build(layers: Vec<Arc<Layer>>, dir_xattrs: DirXattrs) -> LowerStack {
        let mut stack = LowerStack {
            nodes: vec![LowerNode {
                layer: 0,
                ino: ROOT,
                children: Some(BTreeMap::new()),
                merged: false,
                synthetic: None,
            }],
            layers: Vec::new(),
            synthetic: Vec::new(),
            dir_xattrs,
        };
        stack.layers = layers;
        for i in 0..stack.layers.len() {
            let before = (i > 0).then(|| stack.node_inode(Self::ROOT)).flatten();
            stack.nodes[0].layer = i;
            stack.nodes[0].merged = i > 0;
            stack.nodes[0].synthetic = None;
            if let (true, Some(before)) = (dir_xattrs != DirXattrs::Top, before) {
                let root = stack.layers[i].tree.get(ROOT).clone();
                let mut xattrs = before.xattrs;
                xattrs.extend(root.xattrs.clone());
                if xattrs != root.xattrs {
                    stack.synthetic.push(Inode { xattrs, ..root });
                    stack.nodes[0].synthetic = Some(stack.synthetic.len() as u32 - 1);
                }
            }
            let layer = Arc::clone(&stack.layers[i]);
            stack.apply(i, &layer.tree, ROOT, Self::ROOT);
        }
        if dir_xattrs == DirXattrs::RootAccumulates && !stack.layers.is_empty() {
            let top = stack.layers.len() - 1;
            for id in 1..stack.nodes.len() {
                let n = &stack.nodes[id];
                if n.children.is_none() || n.layer == top {
                    continue;
                }
                let inode = stack.layers[n.layer].tree.get(n.ino).clone();
                if inode.xattrs.is_empty() {
                    continue;
                }
                stack.synthetic.push(Inode {
                    xattrs: BTreeMap::new(),
                    ..inode
                });
                stack.nodes[id].synthetic = Some(stack.synthetic.len() as u32 - 1);
            }
        }
        stack
    }

    /// Applies one layer's directory `dir` onto the merged directory `node`.
    fn apply(&mut self, layer: usize, tree: &Tree, dir: Ino, node: NodeId) {
        let Some(children) = tree.get(dir).children() else {
            return;
        };
        for (name, &ino) in children {
            let inode = tree.get(ino);
            let existing = self.child(node, name);
            match &inode.body {
                Body::Whiteout => {
                    self.children_mut(node).remove(name);
                }
                Body::Dir { opaque, .. } => {
                    let is_dir = |e: NodeId| self.nodes[e as usize].children.is_some();
                    let accumulate = self.dir_xattrs == DirXattrs::Accumulate;
                    let before = existing
                        .filter(|&e| accumulate && is_dir(e))
                        .and_then(|e| self.node_inode(e));
                    let keep = existing.filter(|&e| !*opaque && is_dir(e));
                    let id = match keep {
                        Some(e) => {
                            let n = &mut self.nodes[e as usize];
                            n.layer = layer;
                            n.ino = ino;
                            n.merged = true;
                            n.synthetic = None;
                            e
                        }
                        None => self.push(layer, ino, true, name, node),
                    };
                    if let Some(before) = before {
                        let mut xattrs = before.xattrs;
                        xattrs.extend(inode.xattrs.clone());
                        if xattrs != inode.xattrs {
                            self.synthetic.push(Inode {
                                xattrs,
                                ..inode.clone()
                            });
                            self.nodes[id as usize].synthetic =
                                Some(self.synthetic.len() as u32 - 1);
                        }
                    }
                    self.apply(layer, tree, ino, id);
                }
                _ => {
                    self.push(layer, ino, false, name, node);
                }
            }
        }
    }

    /// While building: the inode node `e` shows so far.
    fn node_inode(&self, e: NodeId) -> Option<Inode> {
        let n = &self.nodes[e as usize];
        Some(match n.synthetic {
            Some(s) => self.synthetic[s as usize].clone(),
            None => self.layers[n.layer].tree.get(n.ino).clone(),
        })
    }

    fn push(&mut self, layer: usize, ino: Ino, dir: bool, name: &str, parent: NodeId) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(LowerNode {
            layer,
            ino,
            children: dir.then(BTreeMap::new),
            merged: false,
            synthetic: None,
        });
        self.children_mut(parent).insert(name.to_string(), id);
        id
    }

    fn children_mut(&mut self, node: NodeId) -> &mut BTreeMap<String, NodeId> {
        self.nodes[node as usize]
            .children
            .as_mut()
            .expect("parent is a directory")
    }

    /// The merged dentry `id`.
    pub fn node(&self, id: NodeId) -> &LowerNode {
        &self.nodes[id as usize]
    }

    /// The inode behind a merged dentry.
    pub fn inode(&self, id: NodeId) -> &Inode {
        let n = self.node(id);
        match n.synthetic {
            Some(s) => &self.synthetic[s as usize],
            None => self.layers[n.layer].tree.get(n.ino),
        }
    }

    /// The inode `ino` of layer `layer`.
    pub fn layer_inode(&self, layer: usize, ino: Ino) -> &Inode {
        self.layers[layer].tree.get(ino)
    }

    /// The child `name` of merged directory `id`.
    pub fn child(&self, id: NodeId, name: &str) -> Option<NodeId> {
        self.node(id).children.as_ref()?.get(name).copied()
    }

    /// Looks up an absolute canonical path in the merged lower view (no symlinks followed).
    pub fn lookup(&self, path: &str) -> Option<NodeId> {
        let mut cur = Self::ROOT;
        for name in crate::path::components(path) {
            cur = self.child(cur, name)?;
        }
        Some(cur)
    }

    /// The layers, lowest first.
    pub fn layers(&self) -> &[Arc<Layer>] {
        &self.layers
    }

    /// Whether the stack has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The merged lower view as one tree, hard links within a layer kept as one inode: what
    /// a devicemapper snapshot of the image holds, or an overlay layer's `root/`.
    pub fn flatten(&self) -> Tree {
        let mut out = Tree::new();
        let mut map: BTreeMap<(usize, Ino), Ino> = BTreeMap::new();
        if !self.layers.is_empty() {
            let root = self.inode(Self::ROOT);
            let r = out.get_mut(ROOT);
            r.mode = root.mode;
            r.xattrs = root.xattrs.clone();
        }
        self.flatten_into(Self::ROOT, ROOT, &mut out, &mut map);
        out
    }

    fn flatten_into(
        &self,
        node: NodeId,
        dir: Ino,
        out: &mut Tree,
        map: &mut BTreeMap<(usize, Ino), Ino>,
    ) {
        let Some(children) = &self.node(node).children else {
            return;
        };
        for (name, &child) in children {
            let n = self.node(child);
            let key = (n.layer, n.ino);
            if let Some(&ino) = map.get(&key) {
                out.attach(dir, name, ino);
                continue;
            }
            let src = self.inode(child);
            let body = match &src.body {
                Body::Dir { .. } => crate::tree::empty_dir(false),
                other => other.clone(),
            };
            let ino = out.alloc(Inode {
                body,
                origin: None,
                ..src.clone()
            });
            if !src.is_dir() {
                map.insert(key, ino);
            }
            out.attach(dir, name, ino);
            self.flatten_into(child, ino, out, map);
        }
    }
}
